// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! MSI-X emulation: the table lives in the VMM; the capability's message control is the
//! VMM's; the pending bit array is read from the server.

use super::config::{dword, merge, BarInfo, BarKind, CONFIG_SIZE};
use super::interrupts::MsiMessage;
use super::{CapabilityProblem, Error};

const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes of the capability: header, message control, table and PBA locations.
const CAP_SIZE: usize = 12;
/// Bytes of one table entry.
const ENTRY: usize = 16;
/// Vector control: masked.
const VECTOR_MASKED: u32 = 1;

/// The MSI-X capability, its table and where they live.
#[derive(Clone, Debug)]
pub(crate) struct Msix {
    /// Offset of the capability in config space.
    cap: usize,
    /// Table size from the capability.
    size: u32,
    /// Message control as the guest wrote it (enable, function mask).
    control: u16,
    /// The BAR and offset of the table.
    pub(crate) table_bar: u32,
    pub(crate) table_offset: u64,
    /// The BAR and offset of the pending bit array.
    pub(crate) pba_bar: u32,
    pub(crate) pba_offset: u64,
    table: Vec<u8>,
}

impl Msix {
    /// The capability at `cap` of a config snapshot, checked against the BARs and their
    /// regions (`region_size(i)` is region `i`'s size): the table and the pending bits must
    /// lie inside the region, not just inside the BAR's rounded-up window.
    pub(crate) fn parse(
        config: &[u8],
        cap: usize,
        bars: &[BarInfo],
        region_size: impl Fn(u32) -> u64,
    ) -> Result<Msix, Error> {
        let bad = |problem| Error::Capability {
            offset: cap,
            problem,
        };
        if cap + CAP_SIZE > CONFIG_SIZE.min(config.len()) {
            return Err(bad(CapabilityProblem::PastConfigSpace {
                name: "MSI-X",
                len: CAP_SIZE,
            }));
        }
        let control = u16::from_le_bytes([config[cap + 2], config[cap + 3]]);
        let size = u32::from(control & 0x7ff) + 1;
        let table = dword(config, cap + 4);
        let pba = dword(config, cap + 8);
        let (table_bar, table_offset) = (table & 7, u64::from(table & !7));
        let (pba_bar, pba_offset) = (pba & 7, u64::from(pba & !7));
        let check = |structure: &'static str, bar: u32, offset: u64, len: u64| {
            let info = bars
                .iter()
                .find(|b| b.index == bar)
                .ok_or(bad(CapabilityProblem::MsixNoSuchBar { structure, bar }))?;
            if !matches!(info.kind, BarKind::Memory32 | BarKind::Memory64) {
                return Err(bad(CapabilityProblem::MsixNotMemory { structure, bar }));
            }
            let size = region_size(bar).min(info.size);
            if offset + len > size {
                return Err(bad(CapabilityProblem::MsixPastRegion {
                    structure,
                    bar,
                    offset,
                    len,
                    size,
                }));
            }
            Ok(())
        };
        let table_len = u64::from(size) * ENTRY as u64;
        check("table", table_bar, table_offset, table_len)?;
        check(
            "pending bits",
            pba_bar,
            pba_offset,
            u64::from(size).div_ceil(64) * 8,
        )?;
        if table_bar == pba_bar
            && table_offset < pba_offset + u64::from(size).div_ceil(64) * 8
            && pba_offset < table_offset + table_len
        {
            return Err(bad(CapabilityProblem::MsixOverlap));
        }
        let mut msix = Msix {
            cap,
            size,
            control: 0,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
            table: Vec::new(),
        };
        msix.reset();
        Ok(msix)
    }

    /// Vectors in the table.
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    pub(crate) fn table_len(&self) -> u64 {
        self.table.len() as u64
    }

    pub(crate) fn pba_len(&self) -> u64 {
        u64::from(self.size).div_ceil(64) * 8
    }

    /// The vector range of table bytes `offset..offset + len` (offsets from the table's
    /// start).
    pub(crate) fn entries(offset: u64, len: u64) -> std::ops::RangeInclusive<u32> {
        let first = offset / ENTRY as u64;
        let last = (offset + len.max(1) - 1) / ENTRY as u64;
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        clamp(first)..=clamp(last)
    }

    pub(crate) fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    pub(crate) fn function_masked(&self) -> bool {
        self.control & CONTROL_FUNCTION_MASK != 0
    }

    /// Whether vector `v` is masked, by its own bit or the function mask.
    pub(crate) fn masked(&self, v: u32) -> bool {
        self.function_masked() || self.entry(v, 12) & VECTOR_MASKED != 0
    }

    pub(crate) fn message(&self, v: u32) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.entry(v, 4)) << 32 | u64::from(self.entry(v, 0)),
            data: self.entry(v, 8),
        }
    }

    fn entry(&self, v: u32, field: usize) -> u32 {
        dword(&self.table, v as usize * ENTRY + field)
    }

    /// Replaces the bytes of a config read at `offset` that the shadow owns: message
    /// control's enable and function mask bits.
    pub(crate) fn overlay(&self, offset: usize, data: &mut [u8]) {
        let control = self.cap + 3;
        if let Some(b) = control.checked_sub(offset).and_then(|i| data.get_mut(i)) {
            *b = (*b & 0x3f) | (self.control >> 8) as u8;
        }
    }

    /// Applies a config write at `offset`; returns whether it touched message control.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let control = self.cap + 3;
        match control.checked_sub(offset).and_then(|i| data.get(i)) {
            Some(b) => {
                self.control = u16::from(b & 0xc0) << 8;
                true
            }
            None => false,
        }
    }

    /// Reads table bytes at `offset` from the table's start.
    pub(crate) fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            *b = self.table.get(at).copied().unwrap_or(0);
        }
    }

    /// Writes table bytes at `offset` from the table's start; reserved vector control bits
    /// stay zero.
    pub(crate) fn write_table(&mut self, offset: u64, data: &[u8]) {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, b) in data.iter().enumerate() {
            let at = start.saturating_add(i);
            let Some(slot) = self.table.get_mut(at) else {
                return;
            };
            *slot = if at % ENTRY == 12 {
                b & VECTOR_MASKED as u8
            } else if at % ENTRY > 12 {
                0
            } else {
                *b
            };
        }
    }

    /// The layout: capability offset, table size, table BAR and offset, PBA BAR and offset.
    pub(crate) fn layout(&self) -> (usize, u32, u32, u64, u32, u64) {
        (
            self.cap,
            self.size,
            self.table_bar,
            self.table_offset,
            self.pba_bar,
            self.pba_offset,
        )
    }

    /// Message control's guest bits, and the table (saved state).
    pub(crate) fn saved(&self) -> (u16, &[u8]) {
        (self.control, &self.table)
    }

    /// Loads saved message control and table; `false` (nothing loaded) when the table's
    /// length is not this one's.
    pub(crate) fn load(&mut self, control: u16, table: &[u8]) -> bool {
        if table.len() != self.table.len() {
            return false;
        }
        self.control = control & 0xc000;
        self.write_table(0, table);
        true
    }

    /// The config offset of message control, and its value as the server should see it
    /// (the table size bits with the guest's enable and function mask).
    pub(crate) fn control_register(&self) -> (usize, u16) {
        (self.cap + 2, self.control | (self.size - 1) as u16)
    }

    /// Every vector masked, message control cleared: the state after reset.
    pub(crate) fn reset(&mut self) {
        self.control = 0;
        self.table = vec![0; self.size as usize * ENTRY];
        for v in 0..self.size as usize {
            let at = v * ENTRY + 12;
            let ctrl = merge(0, 0, &VECTOR_MASKED.to_le_bytes());
            self.table[at..at + 4].copy_from_slice(&ctrl.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(index: u32, size: u64) -> BarInfo {
        BarInfo {
            index,
            kind: BarKind::Memory32,
            prefetchable: false,
            size,
            base: None,
        }
    }

    fn cap(vectors: u16, table: u32, pba: u32) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0x70] = 0x11;
        c[0x72..0x74].copy_from_slice(&(vectors - 1).to_le_bytes());
        c[0x74..0x78].copy_from_slice(&table.to_le_bytes());
        c[0x78..0x7c].copy_from_slice(&pba.to_le_bytes());
        c
    }

    #[test]
    fn table_and_control() {
        let c = cap(4, 0x800 | 2, 0xc00 | 2);
        let mut m = Msix::parse(&c, 0x70, &[bar(2, 4096)], |_| 4096).unwrap();
        assert_eq!((m.size(), m.table_len(), m.pba_len()), (4, 64, 8));
        assert!(!m.enabled() && (0..4).all(|v| m.masked(v)));
        m.write_table(16, &0xfee0_0000u32.to_le_bytes());
        m.write_table(20, &0u32.to_le_bytes());
        m.write_table(24, &0x31u32.to_le_bytes());
        m.write_table(28, &0xffff_fff0u32.to_le_bytes());
        assert!(!m.masked(1));
        assert_eq!(
            m.message(1),
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x31
            }
        );
        let mut ctrl = [0u8; 4];
        m.read_table(28, &mut ctrl);
        assert_eq!(ctrl, [0; 4], "reserved bits stay zero");
        // Enable with the function mask, through a 16-bit write of message control.
        assert!(m.write(0x72, &0xc003u16.to_le_bytes()));
        assert!(m.enabled() && m.masked(1));
        let mut read = [0x03u8, 0x00];
        m.overlay(0x72, &mut read);
        assert_eq!(read, [0x03, 0xc0]);
        assert!(!m.write(0x74, &[0; 4]));
        m.write(0x73, &[0x80]);
        assert!(m.enabled() && !m.masked(1) && m.masked(0));
        m.reset();
        assert!(!m.enabled() && m.masked(1));
    }

    #[test]
    fn placement_is_checked() {
        let parse = |c: &[u8], at, bars: &[BarInfo]| Msix::parse(c, at, bars, |_| 4096);
        assert!(parse(&cap(4, 0x800 | 3, 0xc00 | 2), 0x70, &[bar(2, 4096)]).is_err());
        assert!(parse(&cap(4, 0xfc8 | 2, 0xc00 | 2), 0x70, &[bar(2, 4096)]).is_err());
        assert!(parse(&cap(4, 0x800 | 2, 0x820 | 2), 0x70, &[bar(2, 4096)]).is_err());
        let io = BarInfo {
            kind: BarKind::Io,
            ..bar(2, 4096)
        };
        assert!(parse(&cap(4, 0x800 | 2, 0xc00 | 2), 0x70, &[io]).is_err());
        assert!(parse(&cap(4, 0, 0x40), 0xf8, &[bar(0, 4096)]).is_err());
        // A region of 0x1100 bytes in a BAR of 0x2000: the pending bits at 0x1800 are in
        // the BAR's window but past the region.
        let c = cap(4, 2, 0x1800 | 2);
        assert!(Msix::parse(&c, 0x70, &[bar(2, 0x2000)], |_| 0x1100).is_err());
        assert!(Msix::parse(&c, 0x70, &[bar(2, 0x2000)], |_| 0x2000).is_ok());
        // 2048 vectors: 32 KiB of table, 256 bytes of pending bits.
        let c = cap(2048, 2, 0x8000 | 2);
        let m = Msix::parse(&c, 0x70, &[bar(2, 0x10000)], |_| 0x8100).unwrap();
        assert_eq!(
            (m.size(), m.table_len(), m.pba_len()),
            (2048, 0x8000, 0x100)
        );
        assert!(Msix::parse(&c, 0x70, &[bar(2, 0x10000)], |_| 0x80ff).is_err());
    }
}
