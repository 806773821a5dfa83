// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A type-0 PCI config space: ids, class, BARs of every kind, the expansion ROM BAR, the
//! interrupt pin and a capability list (power management, MSI, MSI-X, PCI Express).

const SIZE: usize = 256;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION: usize = 0x08;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR: usize = 0x2c;
const ROM: usize = 0x30;
const CAPABILITIES: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;
/// Command bits a driver may set: I/O, memory, bus master, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0407;
/// Command register: Interrupt Disable.
const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status bit: the capability list is present.
const STATUS_CAP_LIST: u16 = 0x10;
/// The first capability goes here; later ones follow.
const FIRST_CAP: usize = 0x40;

/// Capability id of power management.
pub const CAP_ID_PM: u8 = 0x01;
/// Capability id of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability id of PCI Express.
pub const CAP_ID_PCIE: u8 = 0x10;
/// Capability id of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// 256 bytes of PCI config space with per-byte write masks, for region 7.
///
/// BARs behave as on hardware: writing all ones reads back the size mask with the type bits.
/// Writes to read-only bits are ignored. Capabilities are chained from offset 0x40 in the
/// order they are added.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
    wmask: Vec<u8>,
    initial: Vec<u8>,
    /// Where the next capability goes, and the pointer to patch to reach it.
    next_cap: usize,
    last_next_ptr: usize,
}

impl ConfigSpace {
    /// Size of the config space region.
    pub const SIZE: u64 = SIZE as u64;

    /// A header with these ids and 24-bit class code (base, sub, prog-if).
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> ConfigSpace {
        let mut c = ConfigSpace {
            bytes: vec![0; SIZE],
            wmask: vec![0; SIZE],
            initial: Vec::new(),
            next_cap: FIRST_CAP,
            last_next_ptr: CAPABILITIES,
        };
        c.put(0x00, &vendor.to_le_bytes());
        c.put(0x02, &device.to_le_bytes());
        c.put(REVISION, &[revision]);
        c.put(0x09, &class.to_le_bytes()[..3]);
        c.put(SUBSYSTEM_VENDOR, &vendor.to_le_bytes());
        c.put(SUBSYSTEM_VENDOR + 2, &device.to_le_bytes());
        c.mask(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        c.wmask[INTERRUPT_LINE] = 0xff;
        c.initial = c.bytes.clone();
        c
    }

    fn put(&mut self, offset: usize, data: &[u8]) {
        self.bytes[offset..offset + data.len()].copy_from_slice(data);
    }

    fn mask(&mut self, offset: usize, mask: &[u8]) {
        self.wmask[offset..offset + mask.len()].copy_from_slice(mask);
    }

    fn done(mut self) -> ConfigSpace {
        self.initial = self.bytes.clone();
        self
    }

    /// Declares BAR `bar` (0-5) as a 32-bit, non-prefetchable memory BAR of `size` bytes (a
    /// power of two, at least 16).
    pub fn with_bar(mut self, bar: usize, size: u32) -> ConfigSpace {
        assert!(bar < 6 && size.is_power_of_two() && size >= 16, "bad BAR");
        let at = BAR0 + 4 * bar;
        self.mask(at, &(!(size - 1) & !0xf).to_le_bytes());
        self.done()
    }

    /// Declares BARs `bar` and `bar + 1` as one 64-bit memory BAR of `size` bytes (a power of
    /// two, at least 16), prefetchable or not.
    pub fn with_bar64(mut self, bar: usize, size: u64, prefetchable: bool) -> ConfigSpace {
        assert!(bar < 5 && size.is_power_of_two() && size >= 16, "bad BAR");
        let at = BAR0 + 4 * bar;
        let mask = !(size - 1) & !0xf;
        let kind = 0x4 | if prefetchable { 0x8 } else { 0 };
        self.put(at, &[kind]);
        self.mask(at, &mask.to_le_bytes());
        self.done()
    }

    /// Declares BAR `bar` (0-5) as an I/O BAR of `size` bytes (a power of two, 4 to 256).
    pub fn with_io_bar(mut self, bar: usize, size: u32) -> ConfigSpace {
        assert!(
            bar < 6 && size.is_power_of_two() && (4..=256).contains(&size),
            "bad BAR"
        );
        let at = BAR0 + 4 * bar;
        self.put(at, &[0x1]);
        self.mask(at, &(!(size - 1) & 0xffff & !0x3).to_le_bytes());
        self.done()
    }

    /// Declares an expansion ROM of `size` bytes (a power of two, at least 2 KiB).
    pub fn with_rom(mut self, size: u32) -> ConfigSpace {
        assert!(size.is_power_of_two() && size >= 2048, "bad ROM");
        self.mask(ROM, &((!(size - 1) & !0x7ff) | 1).to_le_bytes());
        self.done()
    }

    /// Sets the interrupt pin (1 = INTA).
    pub fn with_interrupt_pin(mut self, pin: u8) -> ConfigSpace {
        self.bytes[INTERRUPT_PIN] = pin;
        self.done()
    }

    /// Appends a capability of `len` bytes (header included) and returns its offset.
    fn add_cap(&mut self, id: u8, len: usize) -> usize {
        let at = self.next_cap;
        assert!(at + len <= SIZE, "config space full");
        self.bytes[self.last_next_ptr] = at as u8;
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.last_next_ptr = at + 1;
        // Dword-aligned, as the spec requires.
        self.next_cap = (at + len + 3) & !3;
        let status = u16::from_le_bytes([self.bytes[STATUS], self.bytes[STATUS + 1]]);
        self.put(STATUS, &(status | STATUS_CAP_LIST).to_le_bytes());
        at
    }

    /// Adds a power management capability (version 3, D0 only; PMCSR power state writable).
    pub fn with_pm(mut self) -> ConfigSpace {
        let at = self.add_cap(CAP_ID_PM, 8);
        self.put(at + 2, &0x0003u16.to_le_bytes());
        self.mask(at + 4, &0x0003u16.to_le_bytes());
        self.done()
    }

    /// Adds an MSI capability for `vectors` vectors (1 to 32, a power of two), with 64-bit
    /// addresses and per-vector masking as asked.
    pub fn with_msi(mut self, vectors: u32, addr64: bool, per_vector_mask: bool) -> ConfigSpace {
        assert!(
            vectors.is_power_of_two() && vectors <= 32,
            "bad MSI vectors"
        );
        let len = 10 + if addr64 { 4 } else { 0 } + if per_vector_mask { 10 } else { 0 };
        let at = self.add_cap(CAP_ID_MSI, len);
        let mmc = vectors.trailing_zeros() as u16;
        let control =
            (mmc << 1) | if addr64 { 1 << 7 } else { 0 } | if per_vector_mask { 1 << 8 } else { 0 };
        self.put(at + 2, &control.to_le_bytes());
        // Enable and Multiple Message Enable.
        self.mask(at + 2, &0x0071u16.to_le_bytes());
        self.mask(at + 4, &0xffff_fffcu32.to_le_bytes());
        let data = if addr64 {
            self.mask(at + 8, &u32::MAX.to_le_bytes());
            at + 12
        } else {
            at + 8
        };
        self.mask(data, &u16::MAX.to_le_bytes());
        if per_vector_mask {
            let bits = if vectors == 32 {
                u32::MAX
            } else {
                (1 << vectors) - 1
            };
            self.mask(data + 4, &bits.to_le_bytes());
        }
        self.done()
    }

    /// Adds an MSI-X capability for `vectors` vectors (1 to 2048) whose table lies at
    /// `table_offset` of BAR `table_bar` and whose pending bit array lies at `pba_offset` of
    /// BAR `pba_bar` (offsets 8-byte aligned).
    pub fn with_msix(
        mut self,
        vectors: u32,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> ConfigSpace {
        assert!((1..=2048).contains(&vectors), "bad MSI-X vectors");
        assert!(table_bar < 6 && pba_bar < 6, "bad MSI-X BIR");
        assert!(
            table_offset % 8 == 0 && pba_offset % 8 == 0,
            "bad MSI-X offset"
        );
        let at = self.add_cap(CAP_ID_MSIX, 12);
        self.put(at + 2, &((vectors - 1) as u16).to_le_bytes());
        // Function Mask and MSI-X Enable.
        self.mask(at + 2, &0xc000u16.to_le_bytes());
        self.put(at + 4, &(table_offset | u32::from(table_bar)).to_le_bytes());
        self.put(at + 8, &(pba_offset | u32::from(pba_bar)).to_le_bytes());
        self.done()
    }

    /// Adds a PCI Express capability (version 2, endpoint) with its device control register
    /// writable.
    pub fn with_pcie(mut self) -> ConfigSpace {
        let at = self.add_cap(CAP_ID_PCIE, 0x3c);
        self.put(at + 2, &0x0002u16.to_le_bytes());
        self.mask(at + 8, &0x7cffu16.to_le_bytes());
        self.done()
    }

    /// Reads `data.len()` bytes at `offset`; the caller bounds the access by [`Self::SIZE`].
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        if let Some(src) = self.bytes.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
    }

    /// Writes `data` at `offset` through the write masks.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let start = offset as usize;
        for (i, b) in data.iter().enumerate() {
            let Some(mask) = self.wmask.get(start + i) else {
                return;
            };
            let cur = &mut self.bytes[start + i];
            *cur = (*cur & !mask) | (b & mask);
        }
    }

    /// The value of 32-bit BAR register `bar` as last written.
    pub fn bar(&self, bar: usize) -> u32 {
        self.dword(BAR0 + 4 * bar)
    }

    /// The dword at `offset` (at most `SIZE - 4`).
    pub fn dword(&self, offset: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[offset],
            self.bytes[offset + 1],
            self.bytes[offset + 2],
            self.bytes[offset + 3],
        ])
    }

    /// Offset of the first capability with this id.
    pub fn find_cap(&self, id: u8) -> Option<usize> {
        let mut at = usize::from(self.bytes[CAPABILITIES] & !3);
        // At most 48 capabilities fit in 192 bytes: a longer chain is a loop.
        for _ in 0..48 {
            if at < FIRST_CAP {
                return None;
            }
            if *self.bytes.get(at)? == id {
                return Some(at);
            }
            at = usize::from(*self.bytes.get(at + 1)? & !3);
        }
        None
    }

    /// The offset of the MSI capability's pending bits register, when it has one
    /// (per-vector masking).
    pub fn msi_pending_offset(&self) -> Option<usize> {
        let at = self.find_cap(CAP_ID_MSI)?;
        let control = u16::from_le_bytes([self.bytes[at + 2], self.bytes[at + 3]]);
        let addr64 = control & (1 << 7) != 0;
        let per_vector_mask = control & (1 << 8) != 0;
        per_vector_mask.then_some(at + if addr64 { 0x14 } else { 0x10 })
    }

    /// Whether the command register's Interrupt Disable bit is set: the function must not
    /// assert INTx.
    pub fn intx_disabled(&self) -> bool {
        u16::from_le_bytes([self.bytes[COMMAND], self.bytes[COMMAND + 1]]) & COMMAND_INTX_DISABLE
            != 0
    }

    /// The register bytes, for a device's migration data.
    pub(crate) fn snapshot(&self) -> &[u8] {
        &self.bytes
    }

    /// Loads register bytes saved by [`Self::snapshot`]; `EINVAL` unless they are
    /// [`Self::SIZE`] bytes whose read-only bits (ids, BAR types and sizes, capability
    /// layout), which no write changes, match this device's.
    pub(crate) fn load(&mut self, bytes: &[u8]) -> Result<(), crate::Errno> {
        if bytes.len() != self.bytes.len() {
            return Err(crate::Errno::INVAL);
        }
        let other_device = bytes
            .iter()
            .zip(&self.initial)
            .zip(&self.wmask)
            .any(|((b, init), mask)| (b & !mask) != (init & !mask));
        if other_device {
            return Err(crate::Errno::INVAL);
        }
        self.bytes.copy_from_slice(bytes);
        Ok(())
    }

    /// Restores the state after construction.
    pub fn reset(&mut self) {
        self.bytes.clone_from(&self.initial);
    }
}
