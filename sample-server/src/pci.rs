// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A minimal type-0 PCI config space: ids, class, BAR sizing, interrupt pin.

const SIZE: usize = 256;
const COMMAND: usize = 0x04;
const REVISION: usize = 0x08;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR: usize = 0x2c;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;
/// Command bits a driver may set: I/O, memory, bus master, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0407;

/// 256 bytes of PCI config space with per-byte write masks, for region 7.
///
/// BARs are 32-bit memory BARs; writing all ones reads back the size mask, as on hardware.
/// Writes to read-only bits are ignored.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
    wmask: Vec<u8>,
    initial: Vec<u8>,
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
        };
        c.put(0x00, &vendor.to_le_bytes());
        c.put(0x02, &device.to_le_bytes());
        c.put(REVISION, &[revision]);
        c.put(0x09, &class.to_le_bytes()[..3]);
        c.put(SUBSYSTEM_VENDOR, &vendor.to_le_bytes());
        c.put(SUBSYSTEM_VENDOR + 2, &device.to_le_bytes());
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        c.wmask[INTERRUPT_LINE] = 0xff;
        c.initial = c.bytes.clone();
        c
    }

    fn put(&mut self, offset: usize, data: &[u8]) {
        self.bytes[offset..offset + data.len()].copy_from_slice(data);
    }

    /// Declares BAR `bar` (0-5) as a 32-bit memory BAR of `size` bytes (a power of two,
    /// at least 16).
    pub fn with_bar(mut self, bar: usize, size: u32) -> ConfigSpace {
        assert!(bar < 6 && size.is_power_of_two() && size >= 16, "bad BAR");
        let at = BAR0 + 4 * bar;
        let mask = !(size - 1) & !0xf;
        self.wmask[at..at + 4].copy_from_slice(&mask.to_le_bytes());
        self.initial = self.bytes.clone();
        self
    }

    /// Sets the interrupt pin (1 = INTA).
    pub fn with_interrupt_pin(mut self, pin: u8) -> ConfigSpace {
        self.bytes[INTERRUPT_PIN] = pin;
        self.initial = self.bytes.clone();
        self
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

    /// The value of 32-bit BAR `bar` as last written.
    pub fn bar(&self, bar: usize) -> u32 {
        let at = BAR0 + 4 * bar;
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    /// Restores the state after construction.
    pub fn reset(&mut self) {
        self.bytes.clone_from(&self.initial);
    }
}
