// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The config space the VMM answers itself: what a guest config access does before (and
//! instead of) any message to the server. No I/O: the device forwards what this says to.

use std::ops::RangeInclusive;

use vfio_bindings::bindings::vfio::{VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE};

use super::caps::{self, SnapshotOverlay};
use super::config::{merge, Bars, COMMAND, COMMAND_INTX_DISABLE, COMMAND_IO, COMMAND_MEMORY};
use super::interrupts::GuestInterrupts;
use super::msi::Msi;
use super::msix::Msix;
use super::{BarInfo, BarKind, BarReprogramming, Error, InterruptKind};

/// Where a guest config read is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConfigRead {
    /// Not a register of the config space: all ones.
    Invalid,
    /// By the shadow alone (the BARs).
    Local(u32),
    /// By the server's register at this offset, then [`ConfigShadow::overlay`].
    Server(usize),
}

/// What a guest config write did to the shadow.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfigWrite {
    /// BAR moves the VMM is to carry out.
    pub(crate) moves: Vec<BarReprogramming>,
    /// The interrupt setup (MSI, MSI-X, INTx disable) may have changed.
    pub(crate) interrupts: bool,
    /// The config offset to forward the write to; `None` for the BARs' registers.
    pub(crate) forward: Option<usize>,
}

/// The config-space shadow: the attach snapshot's frozen bits, the BARs, MSI and MSI-X
/// registers, and the command register as the guest last wrote it.
#[derive(Clone, Debug)]
pub(crate) struct ConfigShadow {
    /// Bytes of config space the device serves.
    pub(crate) size: usize,
    pub(crate) snapshot: SnapshotOverlay,
    pub(crate) bars: Bars,
    pub(crate) msi: Option<Msi>,
    pub(crate) msix: Option<Msix>,
    pub(crate) command: u16,
}

impl ConfigShadow {
    /// The shadow of a device whose standard config space reads `config` (at least the
    /// 64-byte header; shorter reads as zeros) and serves `size` bytes of config space.
    /// `region(i)` is region `i`'s (size, `VFIO_REGION_INFO_FLAG_*`), (0, 0) when absent.
    pub(crate) fn discover(
        config: &[u8],
        size: usize,
        region: impl Fn(u32) -> (u64, u32),
    ) -> Result<ConfigShadow, Error> {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        let bars = Bars::discover(config, |i| match region(i) {
            (size, flags) if flags & rw != 0 => size,
            _ => 0,
        })?;
        let found = caps::walk(config)?;
        let msi = caps::find(&found, caps::CAP_ID_MSI)
            .map(|at| Msi::parse(config, at))
            .transpose()?;
        let msix_at = caps::find(&found, caps::CAP_ID_MSIX);
        let msix = msix_at
            .map(|at| Msix::parse(config, at, &bars.infos(), |i| region(i).0))
            .transpose()?;
        let command = u16::from_le_bytes([
            config.get(COMMAND).copied().unwrap_or(0),
            config.get(COMMAND + 1).copied().unwrap_or(0),
        ]);
        Ok(ConfigShadow {
            size,
            snapshot: SnapshotOverlay::new(config, &found, msix_at),
            bars,
            msi,
            msix,
            command,
        })
    }

    /// The config offset of register `reg`, when the whole register lies in config space.
    fn register(&self, reg: usize) -> Option<usize> {
        reg.checked_mul(4)
            .filter(|o| o.checked_add(4).is_some_and(|end| end <= self.size))
    }

    /// Where a guest read of register `reg` is answered.
    pub(crate) fn read(&self, reg: usize) -> ConfigRead {
        match self.register(reg) {
            None => ConfigRead::Invalid,
            Some(_) if Bars::owns(reg) => ConfigRead::Local(self.bars.read(reg)),
            Some(offset) => ConfigRead::Server(offset),
        }
    }

    /// Replaces the bits the shadow owns in the server's answer `b` to a read at `offset`.
    pub(crate) fn overlay(&self, offset: usize, b: &mut [u8; 4]) {
        self.snapshot.overlay(offset, b);
        if let Some(m) = &self.msi {
            m.overlay(offset, b);
        }
        if let Some(m) = &self.msix {
            m.overlay(offset, b);
        }
    }

    /// Applies a guest write of `data` (1, 2 or 4 bytes) at byte `offset` (0 to 3) of
    /// register `reg`; `None` when that is no such write (it is ignored).
    pub(crate) fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<ConfigWrite> {
        let start = self.register(reg)?;
        let offset = usize::try_from(offset)
            .ok()
            .filter(|o| *o < 4 && o + data.len() <= 4 && matches!(data.len(), 1 | 2 | 4))?;
        if Bars::owns(reg) {
            let memory = self.command & COMMAND_MEMORY != 0;
            self.bars.write(reg, offset, data, memory);
            return Some(ConfigWrite {
                moves: self.bar_moves(),
                ..ConfigWrite::default()
            });
        }
        let at = start + offset;
        let mut interrupts = false;
        if let Some(m) = &mut self.msi {
            interrupts |= m.write(at, data);
        }
        if let Some(m) = &mut self.msix {
            interrupts |= m.write(at, data);
        }
        let mut moves = Vec::new();
        if reg == COMMAND / 4 && offset < 2 {
            let old = self.command;
            self.command = merge(u32::from(old), offset, data) as u16;
            interrupts |= (old ^ self.command) & COMMAND_INTX_DISABLE != 0;
            moves = self.bar_moves();
        }
        Some(ConfigWrite {
            moves,
            interrupts,
            forward: Some(at),
        })
    }

    /// The BAR moves the registers and the command register's decode bits ask for now.
    pub(crate) fn bar_moves(&mut self) -> Vec<BarReprogramming> {
        self.bars.moves(
            self.command & COMMAND_IO != 0,
            self.command & COMMAND_MEMORY != 0,
        )
    }

    /// Whether BAR `info`'s window decodes guest accesses.
    pub(crate) fn decodes(&self, info: &BarInfo) -> bool {
        match info.kind {
            BarKind::Io => self.command & COMMAND_IO != 0,
            BarKind::Rom => self.command & COMMAND_MEMORY != 0 && self.bars.rom_enabled(),
            _ => self.command & COMMAND_MEMORY != 0,
        }
    }

    /// The guest's interrupt setup. `intx_pin`: the device has INTx; `device_vectors`: the
    /// vectors the server reports per kind.
    pub(crate) fn interrupts(
        &self,
        intx_pin: bool,
        device_vectors: impl Fn(InterruptKind) -> u32,
    ) -> GuestInterrupts {
        let intx = intx_pin && self.command & COMMAND_INTX_DISABLE == 0;
        GuestInterrupts::read(self.msi.as_ref(), self.msix.as_ref(), intx, device_vectors)
    }

    /// The MSI-X table's (offset, length) when it lives in BAR `bar`.
    pub(crate) fn msix_table(&self, bar: u32) -> Option<(u64, u64)> {
        self.msix
            .as_ref()
            .filter(|m| m.table_bar == bar)
            .map(|m| (m.table_offset, m.table_len()))
    }

    /// Writes MSI-X table bytes at `offset` from the table's start; returns the vectors
    /// written.
    pub(crate) fn write_msix_table(&mut self, offset: u64, data: &[u8]) -> RangeInclusive<u32> {
        if let Some(m) = &mut self.msix {
            m.write_table(offset, data);
        }
        Msix::entries(offset, data.len() as u64)
    }

    /// The state after a device reset: MSI and MSI-X disabled, every MSI-X vector masked,
    /// the BARs at their placement, the command register 0.
    pub(crate) fn reset(&mut self) {
        if let Some(m) = &mut self.msi {
            m.reset();
        }
        if let Some(m) = &mut self.msix {
            m.reset();
        }
        self.bars.reset();
        self.command = 0;
    }
}

/// The length of the next piece of an access at `at` of `len` bytes that lies wholly inside
/// or wholly outside `table` (offset, length), and which it is.
pub(crate) fn piece(at: u64, len: usize, table: Option<(u64, u64)>) -> (usize, bool) {
    let Some((start, tlen)) = table else {
        return (len, false);
    };
    let end = start.saturating_add(tlen);
    let len64 = len as u64;
    if at >= start && at < end {
        ((end - at).min(len64) as usize, true)
    } else if at < start && at.saturating_add(len64) > start {
        ((start - at) as usize, false)
    } else {
        (len, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_the_table() {
        let t = Some((0x800, 0x40));
        assert_eq!(piece(0, 8, t), (8, false));
        assert_eq!(piece(0x7fc, 8, t), (4, false));
        assert_eq!(piece(0x800, 8, t), (8, true));
        assert_eq!(piece(0x83c, 8, t), (4, true));
        assert_eq!(piece(0x840, 8, t), (8, false));
        assert_eq!(piece(0x10, 4, None), (4, false));
    }
}
