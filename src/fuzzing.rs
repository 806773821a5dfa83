// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Entry points for the fuzz targets in `fuzz/`: thin wrappers around internals that no
//! public API reaches without a server.
//!
//! Not an API: hidden, compiled only with the `fuzzing` feature, and free to change with
//! the internals it wraps. Everything here delegates; the logic lives in the modules the
//! device itself uses.

use std::ops::RangeInclusive;

use crate::migration::{self, DirtyBitmap, DirtyRange};
use crate::pci::shadow::{self, ConfigRead, ConfigShadow};
use crate::pci::{migrate, state};
use crate::pci::{BarInfo, BarReprogramming, Error, InterruptKind, MsiMessage, PciState};
use crate::protocol::DmaLoggingReport;

/// The config-space shadow of a PCI device (`VfioUserPciDevice` answers guest config
/// accesses through one), without the device.
#[derive(Clone, Debug)]
pub struct PciConfigShadow(ConfigShadow);

/// What a device is, as far as its [`PciState`] goes (the check a restore and a reconnect
/// make).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity(state::DeviceIdentity);

impl DeviceIdentity {
    /// The identity of the device `state` was taken from.
    pub fn of_state(state: &PciState) -> DeviceIdentity {
        DeviceIdentity(state.identity().clone())
    }

    /// The first field in which `other` differs; `None` when they are the same device.
    pub fn difference(&self, other: &DeviceIdentity) -> Option<String> {
        self.0.difference(&other.0)
    }
}

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

    /// The interrupt mode (`None`: no interrupt) and vectors (message, masked) the guest
    /// set up.
    pub fn interrupts(
        &self,
        intx_pin: bool,
        device_vectors: impl Fn(InterruptKind) -> u32,
    ) -> (Option<InterruptKind>, Vec<(MsiMessage, bool)>) {
        let wanted = self.0.interrupts(intx_pin, device_vectors);
        (crate::pci::interrupts::kind_of(wanted.mode), wanted.vectors)
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

    /// The identity of the device the shadow was discovered from (`config` its config
    /// space), with `irq_counts` vectors per IRQ index and `regions` (index, size, flags).
    pub fn identity(
        &self,
        config: &[u8],
        irq_counts: Vec<u32>,
        regions: Vec<(u32, u64, u32)>,
    ) -> DeviceIdentity {
        DeviceIdentity(state::DeviceIdentity::from_parts(
            config, &self.0, irq_counts, regions,
        ))
    }

    /// `VfioUserPciDevice::pci_state` of a device of `identity` with this shadow and no
    /// pending vectors.
    pub fn pci_state(&self, identity: &DeviceIdentity) -> PciState {
        state::capture(&identity.0, &self.0, Vec::new())
    }

    /// What `VfioUserPciDevice::restore_pci_state` does to the shadow of a device of
    /// `identity`: checks `state`'s version and identity, then loads it (the shadow is left
    /// as it was on an error).
    pub fn restore_pci_state(
        &mut self,
        identity: &DeviceIdentity,
        state: &PciState,
    ) -> Result<(), Error> {
        self.0 = state::checked_load(&identity.0, &self.0, state)?;
        Ok(())
    }

    /// Loads `state` without the version and identity checks: the parts that do not fit
    /// this shadow are still refused (the shadow is then partly loaded).
    pub fn load_pci_state(&mut self, state: &PciState) -> Result<(), Error> {
        state::load(&mut self.0, state)
    }

    /// The MSI message control and MSI-X message control as a replay forwards them.
    pub fn replayed_controls(&self) -> (Option<Vec<u8>>, Option<(usize, u16)>) {
        (
            self.0
                .msi
                .as_ref()
                .map(|m| m.regs().get(..2).unwrap_or_default().to_vec()),
            self.0.msix.as_ref().map(|m| m.control_register()),
        )
    }
}

/// How a BAR access at `at` of `len` bytes splits at the MSI-X table (offset, length):
/// the length of the next piece, and whether it lies in the table.
pub fn bar_piece(at: u64, len: usize, table: Option<(u64, u64)>) -> (usize, bool) {
    shadow::piece(at, len, table)
}

/// Checks a DMA_LOGGING_REPORT reply to `rq` (`pages` pages from page `first`, a multiple
/// of 64, of `range`) and copies its bitmap into `range`, as a dirty report does: from
/// `in_buffer` where the bitmap was received into the report buffer, else from `payload`.
pub fn take_report(
    payload: &[u8],
    in_buffer: Option<&[u8]>,
    rq: &DmaLoggingReport,
    range: &mut DirtyRange,
    first: u64,
    pages: u64,
) -> Result<(), migration::Error> {
    migration::take_report(payload, in_buffer, rq, range, first, pages)
}

/// A dirty bitmap of `ranges` at `page_size`, as `Migration::dirty_report` returns.
pub fn dirty_bitmap(page_size: u64, ranges: Vec<DirtyRange>) -> DirtyBitmap {
    DirtyBitmap::new(page_size, ranges)
}

/// Reads a saved device's container as `VfioUserPciDevice::restore` does, without the
/// device: the head's PCI state, then the device data into `data`. Returns the state, the
/// device data bytes, and how many bytes of `input` the container took.
pub fn read_snapshot(input: &[u8], data: &mut Vec<u8>) -> Result<(PciState, u64, usize), Error> {
    let mut rest = input;
    let state = migrate::read_head(&mut rest)?;
    let total = migrate::load_data(&mut rest, data)?;
    Ok((state, total, input.len() - rest.len()))
}

/// The container `VfioUserPciDevice::save` writes for `state` and the device data `data`.
pub fn write_snapshot(state: &PciState, data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    migrate::write_head(&mut out, state)?;
    migrate::save_data(&mut { data }, &mut out)?;
    Ok(out)
}
