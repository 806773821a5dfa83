// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! MSI emulation: the VMM owns the capability's registers (except the pending bits, which
//! the server reports); the interrupt layer turns them into vectors.

use super::config::CONFIG_SIZE;
use super::interrupts::MsiMessage;
use super::{CapabilityProblem, Error};

const CONTROL_ENABLE: u16 = 1 << 0;
const CONTROL_64BIT: u16 = 1 << 7;
const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;

/// The MSI capability's shadow.
#[derive(Clone, Debug)]
pub(crate) struct Msi {
    /// Offset of the capability in config space.
    cap: usize,
    addr64: bool,
    per_vector_mask: bool,
    /// log2 of the vectors the device can use (Multiple Message Capable).
    capable: u8,
    /// The capability's bytes after the header (`cap + 2 ..`), as the guest wrote them.
    regs: Vec<u8>,
    /// Write masks of `regs`.
    wmask: Vec<u8>,
    /// The original bytes, for reset.
    initial: Vec<u8>,
}

impl Msi {
    /// The capability at `cap` of a config snapshot.
    pub(crate) fn parse(config: &[u8], cap: usize) -> Result<Msi, Error> {
        let control = u16::from_le_bytes([
            config.get(cap + 2).copied().unwrap_or(0),
            config.get(cap + 3).copied().unwrap_or(0),
        ]);
        let addr64 = control & CONTROL_64BIT != 0;
        let per_vector_mask = control & CONTROL_PER_VECTOR_MASK != 0;
        let capable = ((control >> 1) & 7) as u8;
        if capable > 5 {
            return Err(Error::Capability {
                offset: cap,
                problem: CapabilityProblem::MsiVectors { log2: capable },
            });
        }
        let len = 10 + if addr64 { 4 } else { 0 } + if per_vector_mask { 10 } else { 0 };
        if cap + len > CONFIG_SIZE || cap + len > config.len() {
            return Err(Error::Capability {
                offset: cap,
                problem: CapabilityProblem::PastConfigSpace { name: "MSI", len },
            });
        }
        let regs = config[cap + 2..cap + len].to_vec();
        let mut wmask = vec![0u8; regs.len()];
        wmask[0] = 0x71;
        wmask[2..6].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
        let data = if addr64 {
            wmask[6..10].copy_from_slice(&[0xff; 4]);
            10
        } else {
            6
        };
        wmask[data..data + 2].copy_from_slice(&[0xff; 2]);
        if per_vector_mask {
            let bits: u32 = if capable == 5 {
                u32::MAX
            } else {
                (1 << (1u32 << capable)) - 1
            };
            wmask[data + 4..data + 8].copy_from_slice(&bits.to_le_bytes());
        }
        let mut msi = Msi {
            cap,
            addr64,
            per_vector_mask,
            capable,
            initial: regs.clone(),
            regs,
            wmask,
        };
        // The device comes out of reset disabled.
        msi.regs[0] &= !0x71;
        msi.initial = msi.regs.clone();
        Ok(msi)
    }

    fn data_at(&self) -> usize {
        if self.addr64 {
            10
        } else {
            6
        }
    }

    /// The config range the shadow answers for: control to mask bits. The pending bits
    /// (after the mask bits) stay the server's.
    fn owned(&self) -> std::ops::Range<usize> {
        let end = if self.per_vector_mask {
            self.data_at() + 8
        } else {
            self.regs.len()
        };
        self.cap + 2..self.cap + 2 + end
    }

    /// Replaces the bytes of a config read at `offset` that the shadow owns.
    pub(crate) fn overlay(&self, offset: usize, data: &mut [u8]) {
        let owned = self.owned();
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i;
            if owned.contains(&at) {
                *b = self.regs[at - self.cap - 2];
            }
        }
    }

    /// Applies a config write at `offset`; returns whether it touched the shadow.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let owned = self.owned();
        let mut touched = false;
        for (i, b) in data.iter().enumerate() {
            let at = offset + i;
            if owned.contains(&at) {
                let r = at - self.cap - 2;
                self.regs[r] = (self.regs[r] & !self.wmask[r]) | (b & self.wmask[r]);
                touched = true;
            }
        }
        touched
    }

    fn u16_at(&self, r: usize) -> u16 {
        u16::from_le_bytes([self.regs[r], self.regs[r + 1]])
    }

    fn u32_at(&self, r: usize) -> u32 {
        u32::from_le_bytes([
            self.regs[r],
            self.regs[r + 1],
            self.regs[r + 2],
            self.regs[r + 3],
        ])
    }

    pub(crate) fn enabled(&self) -> bool {
        self.u16_at(0) & CONTROL_ENABLE != 0
    }

    /// Vectors the device can use (Multiple Message Capable).
    pub(crate) fn capable_vectors(&self) -> u32 {
        1 << self.capable
    }

    /// Vectors the guest enabled (Multiple Message Enable, bounded by what the device can).
    pub(crate) fn vectors(&self) -> u32 {
        let enabled = ((self.u16_at(0) >> 4) & 7) as u8;
        1 << enabled.min(self.capable)
    }

    /// Vector `v`'s message: the guest's address, and its data with the low bits replaced
    /// by the vector number.
    pub(crate) fn message(&self, v: u32) -> MsiMessage {
        let low = u64::from(self.u32_at(2));
        let high = if self.addr64 {
            u64::from(self.u32_at(6))
        } else {
            0
        };
        let data = u32::from(self.u16_at(self.data_at()));
        let n = self.vectors();
        MsiMessage {
            address: (high << 32) | low,
            data: (data & !(n - 1)) | (v & (n - 1)),
        }
    }

    /// Config offset of the pending bits register, when the capability has one
    /// (per-vector masking).
    pub(crate) fn pending_offset(&self) -> Option<usize> {
        self.per_vector_mask
            .then(|| self.cap + 2 + self.data_at() + 8)
    }

    pub(crate) fn masked(&self, v: u32) -> bool {
        self.per_vector_mask && v < 32 && self.u32_at(self.data_at() + 4) & (1 << v) != 0
    }

    pub(crate) fn reset(&mut self) {
        self.regs.clone_from(&self.initial);
    }

    /// The layout: capability offset, vectors capable, 64-bit addresses, per-vector mask.
    pub(crate) fn layout(&self) -> (usize, u32, bool, bool) {
        (
            self.cap,
            self.capable_vectors(),
            self.addr64,
            self.per_vector_mask,
        )
    }

    /// The registers as the guest wrote them (saved state).
    pub(crate) fn regs(&self) -> &[u8] {
        &self.regs
    }

    /// Loads saved registers through the write masks; `false` (nothing loaded) when their
    /// length is not this capability's.
    pub(crate) fn load(&mut self, regs: &[u8]) -> bool {
        if regs.len() != self.regs.len() {
            return false;
        }
        for (r, b) in regs.iter().enumerate() {
            self.regs[r] = (self.initial[r] & !self.wmask[r]) | (b & self.wmask[r]);
        }
        true
    }

    /// The config offset of message control.
    pub(crate) fn control_offset(&self) -> usize {
        self.cap + 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_vectors() {
        let mut c = vec![0u8; 256];
        // 64-bit, per-vector mask, 4 vectors capable; enabled by the device (ignored).
        c[0x50] = 0x05;
        c[0x52..0x54].copy_from_slice(&(0x0180u16 | 2 << 1 | 1).to_le_bytes());
        let mut m = Msi::parse(&c, 0x50).unwrap();
        assert!(!m.enabled());
        assert!(m.write(0x54, &0xfee0_1003u32.to_le_bytes()));
        m.write(0x58, &1u32.to_le_bytes());
        m.write(0x5c, &0x4123u16.to_le_bytes());
        m.write(0x60, &0xffu32.to_le_bytes());
        // Enable with 8 vectors asked: 4 granted.
        m.write(0x52, &[0x31]);
        assert!(m.enabled());
        assert_eq!(m.vectors(), 4);
        assert_eq!(
            m.message(2),
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4122
            }
        );
        assert!(m.masked(3));
        assert!(!m.masked(4), "beyond the mask bits the device has");
        let mut read = [0u8; 4];
        m.overlay(0x60, &mut read);
        assert_eq!(u32::from_le_bytes(read), 0xf);
        // The pending bits are not the shadow's.
        let mut pending = [9u8; 4];
        m.overlay(0x64, &mut pending);
        assert_eq!(pending, [9; 4]);
        assert!(!m.write(0x64, &[1; 4]));
        m.reset();
        assert!(!m.enabled());
    }

    #[test]
    fn too_long_is_an_error() {
        let mut c = vec![0u8; 256];
        c[0xf0 + 2] = 0x80;
        c[0xf0 + 3] = 0x01;
        assert!(Msi::parse(&c, 0xf0).is_err());
    }
}
