// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The config-space trait a VMM's PCI bus drives, the BAR types it speaks, and the BAR
//! shadow: sizing answered locally, relocation reported.
//!
//! A BAR moves only while its window decodes, as in QEMU's `pci_bar_address`. Firmware and
//! Linux turn decoding off to size and program BARs, so those writes move nothing, and
//! turning decoding on reports every BAR whose address changed. With decoding on, a 64-bit
//! BAR's new low half waits for its high half (Linux writes low, then high). So no
//! intermediate address is ever reported. Cloud Hypervisor does report a 64-bit BAR's
//! intermediate addresses while the guest restores it after sizing: windows that can land
//! on guest RAM or on another BAR. A window stays at its old base until the VMM calls
//! [`PciConfig::move_bar`], so accesses that race the move still land.

use vfio_bindings::bindings::vfio::VFIO_PCI_ROM_REGION_INDEX;

use super::Error;

/// Offset of the command register.
pub(crate) const COMMAND: usize = 0x04;
/// Command register: I/O space decoding.
pub(crate) const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space decoding.
pub(crate) const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: INTx disable.
pub(crate) const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Offset of the status register.
pub(crate) const STATUS: usize = 0x06;
/// Status register: a capability list is present.
pub(crate) const STATUS_CAP_LIST: u16 = 1 << 4;
/// Offset of the header type byte.
pub(crate) const HEADER_TYPE: usize = 0x0e;
/// Offset of BAR 0; BARs 1 to 5 follow, four bytes each.
pub(crate) const BAR0: usize = 0x10;
/// Offset of the expansion ROM BAR.
pub(crate) const ROM_BAR: usize = 0x30;
/// Offset of the capability pointer.
pub(crate) const CAP_POINTER: usize = 0x34;
/// Offset of the interrupt pin.
pub(crate) const INTERRUPT_PIN: usize = 0x3d;
/// Size of the standard config space the shadow covers.
pub(crate) const CONFIG_SIZE: usize = 256;
/// Register index of BAR 0.
pub(crate) const BAR0_REG: usize = BAR0 / 4;
/// Register index of the expansion ROM BAR.
pub(crate) const ROM_REG: usize = ROM_BAR / 4;

/// What kind of window a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// Memory below 4 GiB.
    Memory32,
    /// Memory anywhere (the BAR uses two registers).
    Memory64,
    /// The expansion ROM.
    Rom,
}

impl BarKind {
    /// Whether the window is in memory space (the ROM included).
    pub fn is_memory(self) -> bool {
        self != BarKind::Io
    }

    /// The address space the window is in.
    pub fn space(self) -> BarSpace {
        if self.is_memory() {
            BarSpace::Memory
        } else {
            BarSpace::Io
        }
    }
}

/// The address space of a BAR's window: a VMM's MMIO bus or its port bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarSpace {
    /// Memory space (memory BARs and the expansion ROM).
    Memory,
    /// I/O (port) space.
    Io,
}

/// One BAR of the device: what the VMM needs to place it on a bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR number: 0 to 5, or 6 for the expansion ROM (the region index of its window).
    pub index: u32,
    /// What the BAR decodes.
    pub kind: BarKind,
    /// Whether the BAR is prefetchable (memory BARs only).
    pub prefetchable: bool,
    /// Size of the window: a power of two, and the BAR's alignment.
    pub size: u64,
    /// Where the window is on the bus now; `None` until placed.
    pub base: Option<u64>,
}

/// A BAR relocation: where the window was and where it goes.
///
/// A config write returns one when the guest moves a BAR; the VMM moves the window on its
/// bus (and, without [`GuestSlots`](super::GuestSlots), any memory slots of its mappable
/// areas), then calls [`PciConfig::move_bar`]. [`PciConfig::move_bar`] and
/// [`VfioUserPciDevice::allocate_bars`](super::VfioUserPciDevice::allocate_bars) return one
/// for the relocation they record, the first placement included (no old base), and
/// [`PciConfig::restore_bar`] undoes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarReprogramming {
    /// The BAR.
    pub bar: u32,
    /// Where the window was; `None` when it was not on a bus yet.
    pub old_base: Option<u64>,
    /// Where the guest put it.
    pub new_base: u64,
    /// Size of the window.
    pub len: u64,
    /// What the BAR decodes.
    pub kind: BarKind,
}

/// The config-space side of a PCI function, as a VMM's PCI bus drives it.
///
/// rust-vmm has no PCI crate yet, so this small trait stands in for one. It follows Cloud
/// Hypervisor's `PciDevice` (`read_config_register`, `write_config_register` returning BAR
/// reprogramming requests, `move_bar`), without the barrier Cloud Hypervisor threads through
/// config writes, and with the BAR named in each request instead of found by its old address
/// (a BAR that was never placed has none). BAR window accesses go through vm-device's
/// `MutDeviceMmio` / `MutDevicePio`.
///
/// # Alignment
///
/// A BAR's window is a power of two (its region rounded up, at least 16 bytes for memory,
/// 4 for I/O and 2 KiB for the ROM) and is aligned to its own size: a 64 KiB BAR starts at
/// a multiple of 64 KiB. I/O BARs too: a 64-byte I/O BAR starts at a multiple of 64. The
/// guest cannot write anything else (the low address bits read as zero), and
/// [`PciConfig::move_bar`] refuses a base that is not aligned, or that lies outside the
/// BAR's address space (32-bit memory and ROM below 4 GiB, I/O below 4 GiB, of which an x86
/// port bus takes only the first 64 KiB). A VMM allocator hands out bases with
/// `base.next_multiple_of(bar.size)`.
///
/// # Placement in a VMM's shape
///
/// A VMM that allocates BAR addresses itself, as Cloud Hypervisor does, maps its calls so:
/// `allocate_bars` is [`VfioUserPciDevice::allocate_bars`](super::VfioUserPciDevice::allocate_bars)
/// (and `free_bars` is [`VfioUserPciDevice::free_bars`](super::VfioUserPciDevice::free_bars));
/// `detect_bar_reprogramming` is the [`BarReprogramming`] a config write returns;
/// `move_bar(old_base, new_base)` is [`PciConfig::bar_at`] on the old base, then
/// [`PciConfig::move_bar`]; `restore_bar_addr` is [`PciConfig::restore_bar`].
pub trait PciConfig {
    /// Reads the 32-bit config register `reg_idx` (config offset `reg_idx * 4`).
    fn read_config_register(&mut self, reg_idx: usize) -> u32;

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` (0 to 3) of register `reg_idx`;
    /// other writes are ignored. Returns the BAR moves the write asks for; the VMM carries
    /// each out and confirms it with [`PciConfig::move_bar`] (or, when it cannot, takes the
    /// window off its bus and calls [`PciConfig::unmap_bar`]).
    ///
    /// A BAR moves only while its window decodes (the command register's memory or I/O
    /// bit, and the ROM's enable bit): writes to a BAR while decoding is off, as firmware
    /// and drivers make them, move nothing, and turning decoding on reports every BAR whose
    /// address changed. A BAR at address 0, or with either half in its sizing state (all
    /// address bits set), is unassigned and never reported. A 64-bit BAR whose low half is
    /// written while decoding is on moves when its high half is written.
    ///
    /// A write may cost round trips to the server (one for a plain forward, more when it
    /// changes the interrupt setup), each bounded by the reply timeout; a VMM should not
    /// hold locks that other devices need across the call.
    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Vec<BarReprogramming>;

    /// Records that BAR `bar`'s window is now at `new_base` on the VMM's bus: after a
    /// [`BarReprogramming`], or when the VMM moves the BAR on its own (the guest then reads
    /// the new address). Returns the relocation recorded: the old base (`None` for a first
    /// placement) and the new one. `new_base` must be aligned to the BAR's size and lie in
    /// its address space (see [the alignment rules](PciConfig#alignment)).
    fn move_bar(&mut self, bar: u32, new_base: u64) -> Result<BarReprogramming, Error>;

    /// Rolls `relocation` back: BAR `relocation.bar` is at `relocation.old_base` again, on
    /// the bus and in its register (the guest reads the old address back), or on no bus
    /// with its register 0 when there was no old base. For a VMM that could not carry out
    /// a [`BarReprogramming`] (Cloud Hypervisor's `restore_bar_addr`), or that undoes a move
    /// it recorded with [`PciConfig::move_bar`]. Nothing is reported for the rollback.
    fn restore_bar(&mut self, relocation: &BarReprogramming) -> Result<(), Error>;

    /// Records that BAR `bar`'s window is on no bus: the VMM could not carry out a
    /// [`BarReprogramming`] (the address overlaps something, or lies outside the bus). The
    /// guest keeps reading the address it wrote; when that address next decodes (the guest
    /// writes the BAR or turns decoding on again) the move is reported again, without an
    /// old base.
    fn unmap_bar(&mut self, bar: u32) -> Result<(), Error>;

    /// The BARs the function has.
    fn bars(&self) -> Vec<BarInfo>;

    /// The placed BAR whose window in `space` holds `addr`, and `addr`'s offset in it: how
    /// a VMM that routes by address (Cloud Hypervisor's `read_bar(base, offset)`, or its
    /// `move_bar(old_base, new_base)`) finds the BAR.
    fn bar_at(&self, space: BarSpace, addr: u64) -> Option<(BarInfo, u64)> {
        self.bars().into_iter().find_map(|bar| {
            let offset = addr.checked_sub(bar.base?)?;
            (bar.kind.space() == space && offset < bar.size).then_some((bar, offset))
        })
    }
}

/// Replaces bytes `offset..offset + data.len()` of a little-endian dword.
pub(crate) fn merge(old: u32, offset: usize, data: &[u8]) -> u32 {
    let mut bytes = old.to_le_bytes();
    for (i, b) in data.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(offset + i) {
            *slot = *b;
        }
    }
    u32::from_le_bytes(bytes)
}

/// A little-endian dword of a config snapshot (0 past its end).
pub(crate) fn dword(config: &[u8], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = config.get(offset + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

#[derive(Clone, Debug)]
struct Bar {
    info: BarInfo,
    /// The address bits of the register(s), as the guest last wrote them.
    reg: u64,
    /// The ROM's enable bit.
    rom_enable: bool,
    /// A 64-bit BAR's low half was written while its window decoded: the address is
    /// incomplete until the high half is written.
    low_only: bool,
    /// The address last reported as a move (or placed), so that a move the VMM did not
    /// carry out is not reported again on every config write.
    reported: Option<u64>,
}

impl Bar {
    /// A BAR on no bus, its register 0.
    fn new(info: BarInfo) -> Bar {
        Bar {
            info,
            reg: 0,
            rom_enable: false,
            low_only: false,
            reported: None,
        }
    }

    fn addr_mask(&self) -> u64 {
        let low = match self.info.kind {
            BarKind::Io => !0x3u64,
            BarKind::Memory32 | BarKind::Memory64 => !0xfu64,
            BarKind::Rom => !0x7ffu64,
        };
        let width = if self.info.kind == BarKind::Memory64 {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        !(self.info.size - 1) & low & width
    }

    fn type_bits(&self) -> u32 {
        let prefetch = if self.info.prefetchable { 0x8 } else { 0 };
        match self.info.kind {
            BarKind::Io => 0x1,
            BarKind::Memory32 => prefetch,
            BarKind::Memory64 => 0x4 | prefetch,
            BarKind::Rom => u32::from(self.rom_enable),
        }
    }

    /// Whether a half of the register holds the all-ones sizing pattern: the guest is
    /// sizing the BAR, not placing it.
    fn sizing(&self) -> bool {
        // A half without address bits (the low half of a BAR of 4 GiB or more) tells
        // nothing.
        let mask = self.addr_mask();
        let (low, high) = (mask & 0xffff_ffff, mask >> 32);
        let low_sizing = low != 0 && self.reg & low == low;
        let high_sizing =
            self.info.kind == BarKind::Memory64 && high != 0 && (self.reg >> 32) == high;
        low_sizing || high_sizing
    }

    /// The address the register holds, when it is a placement: not 0 (unassigned), not the
    /// sizing pattern in either half, not a 64-bit address missing its high half, and a
    /// window that ends inside the BAR's address space.
    fn address(&self) -> Option<u64> {
        let limit = if self.info.kind == BarKind::Memory64 {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        let placed = self.reg != 0 && !self.sizing() && !self.low_only;
        let fits = self
            .reg
            .checked_add(self.info.size - 1)
            .is_some_and(|last| last <= limit);
        (placed && fits).then_some(self.reg)
    }
}

/// The BAR registers (and the ROM BAR), answered from what discovery found and what the
/// guest wrote; never forwarded to the server.
#[derive(Clone, Debug, Default)]
pub(crate) struct Bars {
    bars: Vec<Bar>,
}

impl Bars {
    /// Reads the BARs from the device's original config values and its region sizes
    /// (`region_size(i)` is region `i`'s size, 0 when absent).
    pub(crate) fn discover(config: &[u8], region_size: impl Fn(u32) -> u64) -> Result<Bars, Error> {
        let mut bars = Vec::new();
        let mut i = 0u32;
        while i < 6 {
            let size = region_size(i);
            if size == 0 {
                i += 1;
                continue;
            }
            let info = bar_info(i, dword(config, BAR0 + 4 * i as usize), size)?;
            if info.kind == BarKind::Memory64 && (i == 5 || region_size(i + 1) != 0) {
                return Err(Error::BarUpperHalf { bar: i });
            }
            bars.push(Bar::new(info));
            i += if info.kind == BarKind::Memory64 { 2 } else { 1 };
        }
        let rom = region_size(VFIO_PCI_ROM_REGION_INDEX);
        if rom != 0 {
            bars.push(Bar::new(window(
                VFIO_PCI_ROM_REGION_INDEX,
                BarKind::Rom,
                false,
                rom,
            )?));
        }
        Ok(Bars { bars })
    }

    pub(crate) fn infos(&self) -> Vec<BarInfo> {
        self.bars.iter().map(|b| b.info).collect()
    }

    pub(crate) fn get(&self, index: u32) -> Option<BarInfo> {
        self.bars
            .iter()
            .find(|b| b.info.index == index)
            .map(|b| b.info)
    }

    /// The placed BAR of `kind`'s space (memory or I/O) whose window starts at `base`.
    pub(crate) fn at(&self, base: u64, memory: bool) -> Option<BarInfo> {
        self.bars
            .iter()
            .find(|b| b.info.base == Some(base) && b.info.kind.is_memory() == memory)
            .map(|b| b.info)
    }

    pub(crate) fn rom_enabled(&self) -> bool {
        self.bars
            .iter()
            .any(|b| b.info.kind == BarKind::Rom && b.rom_enable)
    }

    /// Whether config register `reg` belongs to the BAR shadow.
    pub(crate) fn owns(reg: usize) -> bool {
        (BAR0_REG..BAR0_REG + 6).contains(&reg) || reg == ROM_REG
    }

    /// The BAR and half (`true`: upper) that register `reg` holds.
    fn slot(&self, reg: usize) -> Option<(usize, bool)> {
        let index = if reg == ROM_REG {
            VFIO_PCI_ROM_REGION_INDEX
        } else {
            u32::try_from(reg.checked_sub(BAR0_REG)?).ok()?
        };
        self.bars.iter().enumerate().find_map(|(i, b)| {
            if b.info.index == index {
                Some((i, false))
            } else if b.info.kind == BarKind::Memory64 && b.info.index + 1 == index {
                Some((i, true))
            } else {
                None
            }
        })
    }

    /// The value of BAR register `reg`: address bits as written, the type bits, and the size
    /// mask after the guest wrote all ones. Unimplemented BARs read 0.
    pub(crate) fn read(&self, reg: usize) -> u32 {
        let Some((i, upper)) = self.slot(reg) else {
            return 0;
        };
        let bar = &self.bars[i];
        let addr = bar.reg & bar.addr_mask();
        if upper {
            (addr >> 32) as u32
        } else {
            addr as u32 | bar.type_bits()
        }
    }

    /// Writes BAR register `reg`. `memory` is whether memory decoding is on now.
    pub(crate) fn write(&mut self, reg: usize, offset: usize, data: &[u8], memory: bool) {
        let Some((i, upper)) = self.slot(reg) else {
            return;
        };
        let value = merge(self.read(reg), offset, data);
        let bar = &mut self.bars[i];
        let mask = bar.addr_mask();
        if upper {
            bar.reg = (bar.reg & 0xffff_ffff) | (u64::from(value) << 32);
            bar.low_only = false;
        } else {
            bar.reg = (bar.reg & !0xffff_ffff) | u64::from(value);
            if bar.info.kind == BarKind::Rom {
                bar.rom_enable = value & 1 != 0;
            }
            bar.low_only = bar.info.kind == BarKind::Memory64 && memory;
        }
        bar.reg &= mask;
    }

    /// The moves the registers ask for now. `io` and `memory` are the command register's
    /// decode bits; a BAR that does not decode, or whose register holds no placement, moves
    /// nothing (and a move reported before is reported again once it decodes again).
    pub(crate) fn moves(&mut self, io: bool, memory: bool) -> Vec<BarReprogramming> {
        let mut out = Vec::new();
        for bar in &mut self.bars {
            let decodes = match bar.info.kind {
                BarKind::Io => io,
                BarKind::Rom => memory && bar.rom_enable,
                BarKind::Memory32 | BarKind::Memory64 => memory,
            };
            if !decodes {
                // A 64-bit BAR's low half written with decoding on waits for its high
                // half, or for decoding to go off and on again.
                bar.low_only = false;
            }
            let wanted = if decodes { bar.address() } else { None };
            let Some(new_base) = wanted else {
                bar.reported = None;
                continue;
            };
            if bar.info.base != Some(new_base) && bar.reported != Some(new_base) {
                out.push(BarReprogramming {
                    bar: bar.info.index,
                    old_base: bar.info.base,
                    new_base,
                    len: bar.info.size,
                    kind: bar.info.kind,
                });
            }
            bar.reported = Some(new_base);
        }
        out
    }

    /// Places BAR `index` at `base` (the register follows); returns the relocation.
    pub(crate) fn relocate(&mut self, index: u32, base: u64) -> Result<BarReprogramming, Error> {
        let old_base = self.get(index).and_then(|info| info.base);
        self.place(index, base)?;
        let info = self.get(index).ok_or(Error::NoSuchBar(index))?;
        Ok(BarReprogramming {
            bar: index,
            old_base,
            new_base: base,
            len: info.size,
            kind: info.kind,
        })
    }

    /// Puts BAR `relocation.bar` back at its old base, or on no bus with its register 0.
    pub(crate) fn restore(&mut self, relocation: &BarReprogramming) -> Result<(), Error> {
        match relocation.old_base {
            Some(old) => self.place(relocation.bar, old),
            None => {
                let bar = self.find_mut(relocation.bar)?;
                bar.info.base = None;
                bar.reg = 0;
                bar.low_only = false;
                bar.reported = None;
                Ok(())
            }
        }
    }

    fn find_mut(&mut self, index: u32) -> Result<&mut Bar, Error> {
        self.bars
            .iter_mut()
            .find(|b| b.info.index == index)
            .ok_or(Error::NoSuchBar(index))
    }

    /// Places BAR `index` at `base` (the register follows).
    pub(crate) fn place(&mut self, index: u32, base: u64) -> Result<(), Error> {
        let bar = self
            .bars
            .iter_mut()
            .find(|b| b.info.index == index)
            .ok_or(Error::NoSuchBar(index))?;
        let bad = |what| Error::Placement {
            bar: index,
            base,
            what,
        };
        if base % bar.info.size != 0 {
            return Err(bad("not aligned to the BAR's size"));
        }
        if base & !bar.addr_mask() != 0 {
            return Err(bad("outside the BAR's address space"));
        }
        bar.info.base = Some(base);
        bar.reg = base;
        bar.low_only = false;
        bar.reported = Some(base);
        Ok(())
    }

    /// Takes BAR `index` off the bus; its register keeps what the guest wrote.
    pub(crate) fn unplace(&mut self, index: u32) -> Result<(), Error> {
        let bar = self
            .bars
            .iter_mut()
            .find(|b| b.info.index == index)
            .ok_or(Error::NoSuchBar(index))?;
        bar.info.base = None;
        Ok(())
    }

    /// Each BAR's saved state: index, base, register, ROM enable.
    pub(crate) fn saved(&self) -> Vec<(u32, Option<u64>, u64, bool)> {
        self.bars
            .iter()
            .map(|b| (b.info.index, b.info.base, b.reg, b.rom_enable))
            .collect()
    }

    /// Loads BAR `index`'s saved base, register and ROM enable (the register through the
    /// BAR's address mask); `false` when the device has no such BAR.
    pub(crate) fn load(&mut self, index: u32, base: Option<u64>, reg: u64, rom: bool) -> bool {
        let Some(bar) = self.bars.iter_mut().find(|b| b.info.index == index) else {
            return false;
        };
        bar.reg = reg & bar.addr_mask();
        bar.info.base = base.map(|b| b & bar.addr_mask());
        bar.rom_enable = rom && bar.info.kind == BarKind::Rom;
        bar.low_only = false;
        bar.reported = bar.info.base;
        true
    }

    /// Restores every register to the placed address (after a device reset).
    pub(crate) fn reset(&mut self) {
        for bar in &mut self.bars {
            bar.reg = bar.info.base.unwrap_or(0);
            bar.rom_enable = false;
            bar.low_only = false;
            bar.reported = bar.info.base;
        }
    }
}

/// BAR `index` of the kind its original register value `orig` names, sized for a region of
/// `region` bytes.
fn bar_info(index: u32, orig: u32, region: u64) -> Result<BarInfo, Error> {
    if orig & 1 == 1 {
        return window(index, BarKind::Io, false, region);
    }
    let kind = match (orig >> 1) & 3 {
        0 => BarKind::Memory32,
        2 => BarKind::Memory64,
        memory_type => {
            return Err(Error::BarReservedType {
                bar: index,
                memory_type,
            })
        }
    };
    window(index, kind, orig & 0x8 != 0, region)
}

/// The window of BAR `index` for a region of `region` bytes: the region rounded up to a
/// power of two, at least the kind's smallest window, at most its largest.
fn window(index: u32, kind: BarKind, prefetchable: bool, region: u64) -> Result<BarInfo, Error> {
    // A 32-bit memory BAR holds at most 2 GiB: at 4 GiB no address bit is left.
    let (min, limit) = match kind {
        BarKind::Io => (4, 1 << 16),
        BarKind::Memory32 => (16, 1 << 31),
        BarKind::Memory64 => (16, 1 << 63),
        BarKind::Rom => (2048, 1 << 31),
    };
    let size = region
        .max(min)
        .checked_next_power_of_two()
        .filter(|size| *size <= limit)
        .ok_or(Error::BarTooLarge {
            bar: index,
            size: region,
            limit,
        })?;
    Ok(BarInfo {
        index,
        kind,
        prefetchable,
        size,
        base: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bars: &[(usize, u32)]) -> Vec<u8> {
        let mut c = vec![0u8; CONFIG_SIZE];
        for (i, v) in bars {
            c[BAR0 + 4 * i..BAR0 + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        c
    }

    fn sizes(s: &[(u32, u64)]) -> impl Fn(u32) -> u64 + '_ {
        move |i| s.iter().find(|(j, _)| *j == i).map_or(0, |(_, s)| *s)
    }

    #[test]
    fn sizing_and_types() {
        let c = config(&[(0, 0), (1, 0xc), (3, 0x1)]);
        let mut b =
            Bars::discover(&c, sizes(&[(0, 256), (1, 1 << 33), (3, 30), (6, 100)])).unwrap();
        let kinds: Vec<(u32, BarKind, bool, u64)> = b
            .infos()
            .iter()
            .map(|i| (i.index, i.kind, i.prefetchable, i.size))
            .collect();
        assert_eq!(
            kinds,
            [
                (0, BarKind::Memory32, false, 256),
                (1, BarKind::Memory64, true, 1 << 33),
                (3, BarKind::Io, false, 32),
                (6, BarKind::Rom, false, 2048)
            ]
        );
        for reg in [4, 5, 6, 7, 12] {
            b.write(reg, 0, &[0xff; 4], true);
            assert!(b.moves(true, true).is_empty(), "sizing moves nothing");
        }
        assert_eq!(b.read(4), 0xffff_ff00);
        assert_eq!(b.read(5), 0x0000_000c);
        assert_eq!(b.read(6), 0xffff_fffe);
        assert_eq!(b.read(7), 0xffff_ffe1);
        assert_eq!(b.read(8), 0, "BAR 4 is not implemented");
        assert_eq!(b.read(12), 0xffff_f801);
        // Restoring the low half of a 64-bit BAR while the high half still sizes: no move.
        b.write(5, 0, &0u32.to_le_bytes(), true);
        assert!(b.moves(true, true).is_empty());
        b.write(6, 0, &2u32.to_le_bytes(), true);
        let m = b.moves(true, true);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].bar, m[0].old_base, m[0].new_base), (1, None, 2 << 32));
        assert!(b.moves(true, true).is_empty(), "reported once");
        b.place(1, 2 << 32).unwrap();
        b.write(6, 0, &2u32.to_le_bytes(), true);
        assert!(b.moves(true, true).is_empty(), "already there");
        // Byte writes merge into the register.
        b.write(7, 1, &[0x10], true);
        let m = b.moves(true, true);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(
            (m[0].bar, m[0].new_base, m[0].kind),
            (3, 0xffff_10e0, BarKind::Io)
        );
        assert!(b.moves(false, true).is_empty(), "I/O off");
    }

    #[test]
    fn moves_wait_for_decoding_and_whole_addresses() {
        let c = config(&[(0, 0), (2, 0x4)]);
        let mut b = Bars::discover(&c, sizes(&[(0, 4096), (2, 1 << 20)])).unwrap();
        // Firmware with decoding off: size, restore 0, place.
        for reg in [4, 6, 7] {
            b.write(reg, 0, &[0xff; 4], false);
        }
        for reg in [4, 6, 7] {
            b.write(reg, 0, &[0; 4], false);
        }
        assert!(b.moves(false, false).is_empty());
        assert!(b.moves(false, true).is_empty(), "address 0 is unassigned");
        b.write(4, 0, &0xe000_0000u32.to_le_bytes(), false);
        b.write(6, 0, &0x8000_0000u32.to_le_bytes(), false);
        assert!(b.moves(false, false).is_empty());
        b.write(7, 0, &1u32.to_le_bytes(), false);
        let m = b.moves(false, true);
        let got: Vec<(u32, Option<u64>, u64)> =
            m.iter().map(|m| (m.bar, m.old_base, m.new_base)).collect();
        assert_eq!(got, [(0, None, 0xe000_0000), (2, None, 0x1_8000_0000)]);
        b.place(0, 0xe000_0000).unwrap();
        b.place(2, 0x1_8000_0000).unwrap();
        // With decoding on, a 64-bit move waits for the high half.
        b.write(6, 0, &0x4000_0000u32.to_le_bytes(), true);
        assert!(b.moves(false, true).is_empty(), "no intermediate move");
        b.write(7, 0, &2u32.to_le_bytes(), true);
        let m = b.moves(false, true);
        assert_eq!(
            (m[0].old_base, m[0].new_base),
            (Some(0x1_8000_0000), 0x2_4000_0000)
        );
        // The VMM could not move it: not reported again until it decodes again.
        b.unplace(2).unwrap();
        assert!(b.moves(false, true).is_empty());
        assert!(b.moves(false, false).is_empty());
        let m = b.moves(false, true);
        assert_eq!((m[0].old_base, m[0].new_base), (None, 0x2_4000_0000));
        // A low half alone with decoding on is applied when decoding goes off and on.
        b.place(2, 0x2_4000_0000).unwrap();
        b.write(6, 0, &0x8000_0000u32.to_le_bytes(), true);
        assert!(b.moves(false, true).is_empty());
        assert!(b.moves(false, false).is_empty());
        assert_eq!(b.moves(false, true)[0].new_base, 0x2_8000_0000);
        // A 32-bit window may not end past 4 GiB - 1 (all-ones is the sizing pattern).
        b.write(4, 0, &0xffff_f000u32.to_le_bytes(), true);
        assert!(b.moves(false, true).is_empty());
    }

    #[test]
    fn bad_bars_are_refused() {
        let c = config(&[(5, 0x4)]);
        assert!(Bars::discover(&c, sizes(&[(5, 4096)])).is_err());
        let c = config(&[(0, 0x4)]);
        assert!(Bars::discover(&c, sizes(&[(0, 4096), (1, 4096)])).is_err());
        let c = config(&[(0, 0x2)]);
        assert!(Bars::discover(&c, sizes(&[(0, 4096)])).is_err());
        let c = config(&[(0, 0x1)]);
        assert!(Bars::discover(&c, sizes(&[(0, 1 << 20)])).is_err());
        let c = config(&[(0, 0x0)]);
        assert!(
            Bars::discover(&c, sizes(&[(0, 1 << 32)])).is_err(),
            "4 GiB in 32 bits"
        );
        assert!(Bars::discover(&c, sizes(&[(0, 1 << 31)])).is_ok());
        let c = config(&[]);
        let mut b = Bars::discover(&c, sizes(&[(0, 4096)])).unwrap();
        assert!(b.place(0, 0x1800).is_err());
        assert!(b.place(0, 1 << 32).is_err());
        assert!(b.place(1, 0x1000).is_err());
        b.place(0, 0x2000).unwrap();
        assert_eq!(b.read(4), 0x2000);
    }

    #[test]
    fn relocations_report_and_roll_back() {
        let c = config(&[(0, 0), (1, 0x1)]);
        let mut b = Bars::discover(&c, sizes(&[(0, 4096), (1, 64)])).unwrap();
        let first = b.relocate(1, 0xc040).unwrap();
        assert_eq!(
            (first.old_base, first.new_base, first.len, first.kind),
            (None, 0xc040, 64, BarKind::Io)
        );
        assert!(b.relocate(1, 0xc020).is_err(), "I/O BARs are aligned too");
        let moved = b.relocate(1, 0xc080).unwrap();
        assert_eq!((moved.old_base, moved.new_base), (Some(0xc040), 0xc080));
        b.restore(&moved).unwrap();
        assert_eq!(b.get(1).unwrap().base, Some(0xc040));
        assert_eq!(b.read(5), 0xc041);
        // A guest move the VMM could not carry out: the register goes back too.
        b.write(5, 0, &0xd000u32.to_le_bytes(), true);
        let m = b.moves(true, true);
        assert_eq!((m[0].old_base, m[0].new_base), (Some(0xc040), 0xd000));
        b.restore(&m[0]).unwrap();
        assert_eq!(b.read(5), 0xc041);
        assert!(b.moves(true, true).is_empty(), "nothing to move any more");
        // Rolling back a first placement leaves the BAR unassigned.
        b.restore(&first).unwrap();
        assert_eq!((b.get(1).unwrap().base, b.read(5)), (None, 0x1));
        assert!(b.moves(true, true).is_empty());
    }
}
