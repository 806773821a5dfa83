// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Entry points for the fuzz targets in `fuzz/`: thin wrappers around internals that no
//! public API reaches without a server.
//!
//! Not an API: hidden, compiled only with the `fuzzing` feature, and free to change with
//! the internals it wraps. Everything here delegates; the logic lives in the modules the
//! device itself uses.

use std::ops::RangeInclusive;

use crate::pci::shadow::{self, ConfigRead, ConfigShadow};
use crate::pci::{BarInfo, BarReprogramming, Error, InterruptKind, InterruptMode, MsiMessage};

/// The config-space shadow of a PCI device (`VfioUserPciDevice` answers guest config
/// accesses through one), without the device.
#[derive(Clone, Debug)]
pub struct PciConfigShadow(ConfigShadow);

/// What a guest config write did: the BAR moves, whether the interrupt setup may have
/// changed, and the config offset the device forwards the write to.
pub type ConfigWrite = (Vec<BarReprogramming>, bool, Option<usize>);

impl PciConfigShadow {
    /// Discovery at attach, from the standard config space `config` read from the device,
    /// the `size` of config space it serves, and its regions' (size, flags).
    pub fn discover(
        config: &[u8],
        size: usize,
        region: impl Fn(u32) -> (u64, u32),
    ) -> Result<PciConfigShadow, Error> {
        ConfigShadow::discover(config, size, region).map(PciConfigShadow)
    }

    /// A guest read of register `reg`, as the device answers it; `server(offset)` is the
    /// server's answer for what is not the shadow's alone.
    pub fn read(&self, reg: usize, server: impl FnOnce(usize) -> [u8; 4]) -> u32 {
        match self.0.read(reg) {
            ConfigRead::Invalid => u32::MAX,
            ConfigRead::Local(value) => value,
            ConfigRead::Server(offset) => {
                let mut b = server(offset);
                self.0.overlay(offset, &mut b);
                u32::from_le_bytes(b)
            }
        }
    }

    /// A guest write; `None` when the device ignores it.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<ConfigWrite> {
        self.0
            .write(reg, offset, data)
            .map(|w| (w.moves, w.interrupts, w.forward))
    }

    /// `PciConfig::move_bar`.
    pub fn move_bar(&mut self, bar: u32, base: u64) -> Result<(), Error> {
        self.0.bars.place(bar, base)
    }

    /// `PciConfig::unmap_bar`.
    pub fn unmap_bar(&mut self, bar: u32) -> Result<(), Error> {
        self.0.bars.unplace(bar)
    }

    /// `PciConfig::bars`.
    pub fn bars(&self) -> Vec<BarInfo> {
        self.0.bars.infos()
    }

    /// Whether BAR `bar`'s window decodes guest accesses now.
    pub fn decodes(&self, bar: u32) -> bool {
        self.0
            .bars
            .get(bar)
            .is_some_and(|info| self.0.decodes(&info))
    }

    /// The shadow after a device reset.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// The interrupt mode and vectors (message, masked) the guest set up.
    pub fn interrupts(
        &self,
        intx_pin: bool,
        device_vectors: impl Fn(InterruptKind) -> u32,
    ) -> (InterruptMode, Vec<(MsiMessage, bool)>) {
        let wanted = self.0.interrupts(intx_pin, device_vectors);
        (wanted.mode, wanted.vectors)
    }

    /// The MSI-X table's (offset, length) when it lives in BAR `bar`.
    pub fn msix_table(&self, bar: u32) -> Option<(u64, u64)> {
        self.0.msix_table(bar)
    }

    /// Reads MSI-X table bytes at `offset` from the table's start.
    pub fn read_msix_table(&self, offset: u64, data: &mut [u8]) {
        if let Some(m) = &self.0.msix {
            m.read_table(offset, data);
        }
    }

    /// Writes MSI-X table bytes at `offset` from the table's start; returns the vectors
    /// written.
    pub fn write_msix_table(&mut self, offset: u64, data: &[u8]) -> RangeInclusive<u32> {
        self.0.write_msix_table(offset, data)
    }
}

/// How a BAR access at `at` of `len` bytes splits at the MSI-X table (offset, length):
/// the length of the next piece, and whether it lies in the table.
pub fn bar_piece(at: u64, len: usize, table: Option<(u64, u64)>) -> (usize, bool) {
    shadow::piece(at, len, table)
}
