// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the guest does to the device: config space and BAR window accesses, and the
//! interrupt changes they cause.

use std::ops::RangeInclusive;
use std::sync::atomic::Ordering;

use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;

use super::interrupts::{reconcile, update_vectors};
use super::msi::Msi;
use super::shadow::{piece, ConfigRead};
use super::{Activity, BarKind, BarReprogramming, Error, InterruptKind};
use super::{Core, InterruptMode};

impl Core {
    pub(super) fn try_sync_interrupts(&mut self) -> Result<(), Error> {
        let device = &self.device;
        let wanted = self.shadow.interrupts(self.intx, |k| {
            device.irq(k.irq_index()).map_or(0, |i| i.count)
        });
        if wanted.mode != self.wired.mode {
            // No INTx unmask may go out while INTx is being taken down.
            self.status.eoi_unmasks_intx.store(false, Ordering::Release);
        }
        let result = reconcile(device, &*self.interrupts, &mut self.wired, wanted);
        self.status.eoi_unmasks_intx.store(
            self.wired.mode == InterruptMode::Intx && self.intx_maskable,
            Ordering::Release,
        );
        result
    }

    pub(super) fn sync_interrupts(&mut self) {
        if let Err(e) = self.try_sync_interrupts() {
            self.status.record(Activity::InterruptSetup, e);
        }
    }

    /// After a write to MSI-X table entries `vectors`: only those are compared and sent,
    /// unless the mode itself is not set up yet.
    fn sync_msix_vectors(&mut self, vectors: RangeInclusive<u32>) {
        let Some(m) = self.shadow.msix.as_ref().filter(|m| m.enabled()) else {
            return;
        };
        if self.wired.mode != InterruptMode::Msix {
            self.sync_interrupts();
            return;
        }
        let count = self.wired.vector_count() as u32;
        let changes = vectors
            .filter(|&v| v < count)
            .map(|v| (v, m.message(v), m.masked(v)));
        if let Err(e) = update_vectors(
            &self.device,
            &*self.interrupts,
            &mut self.wired,
            InterruptKind::Msix,
            changes,
        ) {
            self.status.record(Activity::InterruptSetup, e);
        }
    }

    pub(super) fn config_read(&mut self, reg: usize) -> u32 {
        let offset = match self.shadow.read(reg) {
            ConfigRead::Invalid => return u32::MAX,
            _ if self.is_lost() => return u32::MAX,
            ConfigRead::Local(value) => return value,
            ConfigRead::Server(offset) => offset,
        };
        let _budget = self.device.connection().budget();
        let mut b = [0u8; 4];
        if let Err(e) = self
            .device
            .read(VFIO_PCI_CONFIG_REGION_INDEX, offset as u64, &mut b)
        {
            self.status
                .record(Activity::ConfigRead { offset }, e.into());
            return u32::MAX;
        }
        self.shadow.overlay(offset, &mut b);
        let mut value = u32::from_le_bytes(b);
        let msi_pending = self.shadow.msi.as_ref().and_then(Msi::pending_offset);
        if msi_pending == Some(offset) && self.wired.mode == InterruptMode::Msi {
            for v in 0..(self.wired.vector_count() as u32).min(32) {
                if self.wired.pending(v) {
                    value |= 1 << v;
                }
            }
        }
        value
    }

    pub(super) fn config_write(
        &mut self,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) -> Vec<BarReprogramming> {
        if self.is_lost() {
            return Vec::new();
        }
        let Some(write) = self.shadow.write(reg, offset, data) else {
            log::debug!(
                "config write of {} bytes at register {reg} + {offset} ignored",
                data.len()
            );
            return Vec::new();
        };
        let Some(at) = write.forward else {
            return write.moves;
        };
        // One reply timeout for the whole access, however many requests it sends.
        let _budget = self.device.connection().budget();
        if write.interrupts {
            self.sync_interrupts();
        }
        if let Err(e) = self
            .device
            .write(VFIO_PCI_CONFIG_REGION_INDEX, at as u64, data)
        {
            self.status
                .record(Activity::ConfigWrite { offset: at }, e.into());
        }
        write.moves
    }

    /// Reads `data.len()` bytes at `offset` of BAR `bar`'s window, as a guest access would:
    /// all ones when the window does not decode (command register, ROM enable), lies past
    /// the region or the end of the address space, or the server failed (the error is
    /// recorded). MSI-X table reads are answered here; pending bits the VMM keeps are ORed
    /// into the server's.
    pub(super) fn bar_read(&mut self, bar: u32, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(info) = self.shadow.bars.get(bar) else {
            return;
        };
        if self.is_lost() || !self.shadow.decodes(&info) {
            return;
        }
        if offset.checked_add(data.len() as u64).is_none() {
            log::debug!("BAR {bar} read at {offset:#x} wraps around: dropped");
            return;
        }
        let table = self.shadow.msix_table(bar);
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (len, in_table) = piece(at, data.len() - done, table);
            let buf = &mut data[done..done + len];
            match (in_table, &self.shadow.msix, table) {
                (true, Some(m), Some((start, _))) => m.read_table(at - start, buf),
                _ => {
                    self.region_read(bar, at, buf);
                    self.overlay_pba(bar, at, buf);
                }
            }
            done += len;
        }
    }

    /// Whether `len` bytes at `at` lie inside region `bar`. The rest of a BAR's window (a BAR
    /// is the region rounded up to a power of two) reads all ones and drops writes.
    fn in_region(&self, bar: u32, at: u64, len: usize) -> bool {
        let size = self.device.region(bar).map_or(0, |r| r.size());
        let inside = at.checked_add(len as u64).is_some_and(|end| end <= size);
        if !inside {
            log::debug!("BAR {bar} access of {len} bytes at {at:#x}: past the region");
        }
        inside
    }

    fn region_read(&mut self, bar: u32, at: u64, buf: &mut [u8]) {
        if !self.in_region(bar, at, buf.len()) {
            return;
        }
        if let Err(e) = self.device.read(bar, at, buf) {
            buf.fill(0xff);
            self.status
                .record(Activity::BarRead { bar, offset: at }, e.into());
        }
    }

    fn region_write(&mut self, bar: u32, at: u64, buf: &[u8]) {
        if !self.in_region(bar, at, buf.len()) {
            return;
        }
        if let Err(e) = self.device.write_posted(bar, at, buf) {
            self.status
                .record(Activity::BarWrite { bar, offset: at }, e.into());
        }
    }

    /// ORs the MSI-X pending bits the VMM keeps (masking emulated) into bytes of BAR `bar`
    /// read at `at`.
    fn overlay_pba(&mut self, bar: u32, at: u64, buf: &mut [u8]) {
        let Some((pba, len)) = self
            .shadow
            .msix
            .as_ref()
            .filter(|m| m.pba_bar == bar)
            .map(|m| (m.pba_offset, m.pba_len()))
        else {
            return;
        };
        if self.wired.mode != InterruptMode::Msix {
            return;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let Some(byte) = (at + i as u64).checked_sub(pba).filter(|o| *o < len) else {
                continue;
            };
            for bit in 0..8 {
                let v = u32::try_from(byte * 8 + bit).unwrap_or(u32::MAX);
                if self.wired.pending(v) {
                    *b |= 1 << bit;
                }
            }
        }
    }

    /// Writes `data` at `offset` of BAR `bar`'s window, as a guest access would: dropped
    /// when the window does not decode or the access wraps around; MSI-X table writes are
    /// emulated here; the rest goes to the server, posted when the device layer allows (a
    /// refused posted write cannot be reported; [`DeviceOptions::posted_writes`] turns
    /// posting off).
    ///
    /// [`DeviceOptions::posted_writes`]: crate::device::DeviceOptions::posted_writes
    pub(super) fn bar_write(&mut self, bar: u32, offset: u64, data: &[u8]) {
        let Some(info) = self.shadow.bars.get(bar) else {
            return;
        };
        if self.is_lost() || !self.shadow.decodes(&info) || info.kind == BarKind::Rom {
            return;
        }
        if offset.checked_add(data.len() as u64).is_none() {
            log::debug!("BAR {bar} write at {offset:#x} wraps around: dropped");
            return;
        }
        let table = self.shadow.msix_table(bar);
        let mut done = 0usize;
        let mut written: Option<RangeInclusive<u32>> = None;
        while done < data.len() {
            let at = offset + done as u64;
            let (len, in_table) = piece(at, data.len() - done, table);
            let buf = &data[done..done + len];
            match (in_table, table) {
                (true, Some((start, _))) => {
                    let entries = self.shadow.write_msix_table(at - start, buf);
                    written = Some(match written {
                        Some(w) => *w.start().min(entries.start())..=*w.end().max(entries.end()),
                        None => entries,
                    });
                }
                _ => self.region_write(bar, at, buf),
            }
            done += len;
        }
        if let Some(vectors) = written {
            self.sync_msix_vectors(vectors);
        }
    }
}
