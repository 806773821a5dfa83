// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `pci_config`: a PCI device's config-space shadow, discovered from an arbitrary config
//! space and region layout, then driven by arbitrary guest accesses: config reads and
//! writes, BAR accesses that reach the MSI-X table, BAR moves, resets.
//!
//! The server is a plain byte array that takes every forwarded write; the VMM carries out
//! the BAR moves it is asked for, or declines them.

use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::fuzzing::{bar_piece, PciConfigShadow};
use vfio_user_client::pci::InterruptKind;

use super::input::Input;

/// Regions of a PCI device: BARs 0 to 5, the ROM, config space, VGA.
pub const REGIONS: usize = 9;
/// Bytes of standard config space that follow the region table (per region, a shift, a
/// 16-bit mantissa and a flags byte).
pub const CONFIG_LEN: usize = 256;

/// Guest operations, chosen by an op byte after the config space.
pub const OP_WRITE: u8 = 0;
/// A config read.
pub const OP_READ: u8 = 1;
/// A BAR window access (reaches the MSI-X table when it lies there).
pub const OP_BAR: u8 = 2;
/// A device reset.
pub const OP_RESET: u8 = 3;
/// The interrupt setup, read against arbitrary server vector counts.
pub const OP_INTERRUPTS: u8 = 4;
/// The VMM moves or unmaps a BAR by itself.
pub const OP_MOVE: u8 = 5;
const OPS: u8 = 6;

/// The region flags a flags byte stands for: bit 0 read, bit 1 write, bit 2 mmap.
pub fn region_flags(b: u8) -> u32 {
    let mut flags = 0;
    if b & 1 != 0 {
        flags |= VFIO_REGION_INFO_FLAG_READ;
    }
    if b & 2 != 0 {
        flags |= VFIO_REGION_INFO_FLAG_WRITE;
    }
    if b & 4 != 0 {
        flags |= VFIO_REGION_INFO_FLAG_MMAP;
    }
    flags
}

/// A device as the front of a `pci_config` (or `pci_state`) input describes it: the region
/// table, then standard config space.
pub(crate) struct Device {
    /// (size, flags) per region.
    pub(crate) regions: [(u64, u32); REGIONS],
    /// The server's config space, as large as the config region (256 B to 4 KiB).
    pub(crate) server: Vec<u8>,
}

impl Device {
    /// Reads the region table and config space off `input`.
    pub(crate) fn read(input: &mut Input) -> Device {
        let mut regions = [(0u64, 0u32); REGIONS];
        for r in &mut regions {
            let shift = u32::from(input.u8() % 64);
            let mantissa = u64::from(input.u16());
            *r = (
                mantissa.checked_shl(shift).unwrap_or(0),
                region_flags(input.u8()),
            );
        }
        let size = regions[7].0.clamp(CONFIG_LEN as u64, 4096) as usize;
        let mut server = input.bytes(CONFIG_LEN).to_vec();
        server.resize(size, 0);
        Device { regions, server }
    }

    /// The shadow a device attach discovers, if the device is one it accepts.
    pub(crate) fn discover(&self) -> Option<PciConfigShadow> {
        let region = |i: u32| self.regions.get(i as usize).copied().unwrap_or((0, 0));
        PciConfigShadow::discover(&self.server[..CONFIG_LEN], self.server.len(), region).ok()
    }
}

/// The `pci_config` target.
pub fn pci_config(data: &[u8]) {
    let mut input = Input::new(data);
    let device = Device::read(&mut input);
    let Some(mut shadow) = device.discover() else {
        return;
    };
    let mut server = device.server;
    let size = server.len();
    let frozen = Frozen::of(&server);
    while !input.is_empty() {
        match input.u8() % OPS {
            OP_WRITE => write(&mut shadow, &mut server, &mut input),
            OP_READ => {
                let reg = usize::from(input.u16()) % (size / 4 + 2);
                let value = shadow.read(reg, |o| read_server(&server, o));
                frozen.check(reg, value);
            }
            OP_BAR => bar_access(&mut shadow, &mut input),
            OP_RESET => shadow.reset(),
            OP_INTERRUPTS => interrupts(&shadow, &mut input),
            _ => {
                let bar = u32::from(input.u8() % 8);
                let base = input.u64();
                let _ = if base & 1 != 0 {
                    shadow.unmap_bar(bar)
                } else {
                    shadow.move_bar(bar, base)
                };
            }
        }
    }
}

fn read_server(server: &[u8], offset: usize) -> [u8; 4] {
    let mut b = [0xff; 4];
    if let Some(s) = server.get(offset..offset + 4) {
        b.copy_from_slice(s);
    }
    b
}

/// A guest config write; every BAR move it reports is carried out (or declined, by the
/// op's flag) the way a VMM would.
fn write(shadow: &mut PciConfigShadow, server: &mut [u8], input: &mut Input) {
    let size = server.len();
    let reg = usize::from(input.u16()) % (size / 4 + 2);
    let shape = input.u8();
    let offset = u64::from(shape % 5);
    let len = [1, 2, 4, 3][usize::from(shape >> 3) % 4];
    let value = input.u32().to_le_bytes();
    let data = &value[..len];
    let Some((moves, _, forward)) = shadow.write(reg, offset, data) else {
        return;
    };
    if let Some(at) = forward {
        let slot = server
            .get_mut(at..at + len)
            .expect("a forwarded write lies in config space");
        slot.copy_from_slice(data);
    }
    let bars = shadow.bars();
    for m in moves {
        let info = bars
            .iter()
            .find(|b| b.index == m.bar)
            .expect("a move names a BAR the device has");
        assert_eq!(
            (m.len, m.kind, m.old_base),
            (info.size, info.kind, info.base)
        );
        assert!(m.len.is_power_of_two() && m.new_base % m.len == 0, "{m:?}");
        if shape & 0x80 != 0 {
            shadow.unmap_bar(m.bar).expect("unmap a BAR that moved");
        } else {
            // A move the shadow asked for is one it accepts.
            shadow
                .move_bar(m.bar, m.new_base)
                .expect("carry out a move");
        }
    }
}

/// A BAR window access split at the MSI-X table the way the device splits it.
fn bar_access(shadow: &mut PciConfigShadow, input: &mut Input) {
    let bar = u32::from(input.u8() % 8);
    let shape = input.u8();
    let offset = if shape & 0x80 != 0 {
        u64::MAX - u64::from(input.u8())
    } else {
        u64::from(input.u32())
    };
    let len = usize::from(shape % 16) + 1;
    let write = shape & 0x40 != 0;
    if !shadow.decodes(bar) || offset.checked_add(len as u64).is_none() {
        return;
    }
    let table = shadow.msix_table(bar);
    let mut data = input.bytes(len).to_vec();
    data.resize(len, 0);
    let mut buf = vec![0xffu8; len];
    let mut done = 0;
    while done < len {
        let at = offset + done as u64;
        let (n, in_table) = bar_piece(at, len - done, table);
        assert!(n > 0 && n <= len - done, "piece of {n} at {at:#x}");
        if let (true, Some((start, tlen))) = (in_table, table) {
            assert!(at >= start && at - start + n as u64 <= tlen);
            if write {
                let vectors = shadow.write_msix_table(at - start, &data[done..done + n]);
                let first = (at - start) / 16;
                let last = (at - start + n as u64 - 1) / 16;
                assert_eq!(vectors, first as u32..=last as u32);
            } else {
                shadow.read_msix_table(at - start, &mut buf[done..done + n]);
            }
        }
        done += n;
    }
}

/// The interrupt setup against server vector counts from the input.
fn interrupts(shadow: &PciConfigShadow, input: &mut Input) {
    let intx = input.u8() & 1 != 0;
    let msi = u32::from(input.u16());
    let msix = input.u32();
    let (mode, vectors) = shadow.interrupts(intx, |k| match k {
        InterruptKind::Msi => msi,
        InterruptKind::Msix => msix,
        _ => 1,
    });
    match mode {
        Some(InterruptKind::Msi) => assert!(vectors.len() <= 32 && vectors.len() as u32 <= msi),
        Some(InterruptKind::Msix) => {
            assert!(vectors.len() <= 2048 && vectors.len() as u32 <= msix)
        }
        _ => assert!(vectors.is_empty()),
    }
}

/// Config bits frozen at attach: whatever the server says later, the guest reads these.
struct Frozen {
    cap_pointer: u8,
    cap_list: bool,
}

impl Frozen {
    fn of(config: &[u8]) -> Frozen {
        Frozen {
            cap_pointer: config[0x34],
            cap_list: config[0x06] & 0x10 != 0,
        }
    }

    fn check(&self, reg: usize, value: u32) {
        match reg {
            // Header type: never multi-function.
            3 => assert_eq!(value & 0x0080_0000, 0, "header type {value:#x}"),
            1 => assert_eq!(value & 0x0010_0000 != 0, self.cap_list, "status {value:#x}"),
            0xd => assert_eq!(value as u8, self.cap_pointer, "cap pointer {value:#x}"),
            _ => {}
        }
    }
}
