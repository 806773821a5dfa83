// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The PCI and interrupt state the client owns about a device, saved and restored: what a
//! reconnect replays to a restarted server and what migration carries to the destination.
//!
//! The state is the config-space shadow (command register, BAR bases and registers, the MSI
//! registers, MSI-X message control and table) plus the pending bits of vectors whose
//! masking is emulated here. INTx needs nothing of its own: it follows the command
//! register's Interrupt Disable bit and the interrupt pin. The device's internal state (its
//! registers behind the BARs, its queues) is the server's, not part of this.
//!
//! A [`DeviceIdentity`] goes with it: vendor, device and subsystem ids, class, revision,
//! config size, BAR kinds and sizes, the MSI and MSI-X layouts, the IRQ counts and the
//! region layout. A state is applied only to a device of the same identity, and a
//! reconnect accepts only a server offering the same identity.
//!
//! **Replay** pushes the shadow to a server that holds nothing of it (a new connection, a
//! restarted server, a migration destination): ERR and REQ are armed again, the interrupt
//! setup is rewired from scratch (every eventfd, the server's masks when it can mask; the
//! VMM is told every route again), the emulated pending bits are carried over, and only
//! then are the command register and the MSI / MSI-X message control registers forwarded,
//! so that the server holds its eventfds before it sees an enable (as for a guest write).

use std::fmt;

use serde::{Deserialize, Serialize};
use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;

use super::config::COMMAND;
use super::interrupts::{self, WiredInterrupts};
use super::shadow::ConfigShadow;
use super::{Activity, BarKind, Core, Error, InterruptKind};
use crate::connection::Health;
use crate::device::VfioUserDevice;

/// What a device is, as far as its state goes: two devices of the same identity take each
/// other's [`PciState`], and a reconnect accepts only a server offering the same identity.
/// Compared as a whole; [`DeviceIdentity::difference`] names the first field that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeviceIdentity {
    vendor_id: u16,
    device_id: u16,
    subsystem_vendor_id: u16,
    subsystem_id: u16,
    /// Class code (base, sub, programming interface) in the low 24 bits.
    class_code: u32,
    revision: u8,
    config_size: u64,
    /// (index, kind, prefetchable, size) per BAR.
    bars: Vec<(u32, String, bool, u64)>,
    /// (capability offset, vectors capable, 64-bit, per-vector mask).
    msi: Option<(usize, u32, bool, bool)>,
    /// (capability offset, table size, table BAR, table offset, PBA BAR, PBA offset).
    msix: Option<(usize, u32, u32, u64, u32, u64)>,
    /// Vectors per IRQ index, by index.
    irq_counts: Vec<u32>,
    /// (index, size, flags) per region.
    regions: Vec<(u32, u64, u32)>,
}

fn kind_name(kind: BarKind) -> String {
    match kind {
        BarKind::Io => "io",
        BarKind::Memory32 => "mem32",
        BarKind::Memory64 => "mem64",
        BarKind::Rom => "rom",
    }
    .to_string()
}

impl DeviceIdentity {
    /// The identity of `device`, whose config space read `config` (at least the 64-byte
    /// header) and gave `shadow`.
    pub(super) fn of(
        device: &VfioUserDevice,
        config: &[u8],
        shadow: &ConfigShadow,
    ) -> DeviceIdentity {
        DeviceIdentity::from_parts(
            config,
            shadow,
            device.irqs().iter().map(|i| i.count).collect(),
            device
                .regions()
                .iter()
                .map(|r| (r.index(), r.size(), r.flags()))
                .collect(),
        )
    }

    /// The identity of a device whose config space read `config` and gave `shadow`, with
    /// `irq_counts` vectors per IRQ index and `regions` as (index, size, flags).
    pub(crate) fn from_parts(
        config: &[u8],
        shadow: &ConfigShadow,
        irq_counts: Vec<u32>,
        regions: Vec<(u32, u64, u32)>,
    ) -> DeviceIdentity {
        let u16_at = |o: usize| {
            u16::from_le_bytes([
                config.get(o).copied().unwrap_or(0),
                config.get(o + 1).copied().unwrap_or(0),
            ])
        };
        let byte = |o: usize| u32::from(config.get(o).copied().unwrap_or(0));
        DeviceIdentity {
            vendor_id: u16_at(0x00),
            device_id: u16_at(0x02),
            subsystem_vendor_id: u16_at(0x2c),
            subsystem_id: u16_at(0x2e),
            class_code: byte(0x0b) << 16 | byte(0x0a) << 8 | byte(0x09),
            revision: config.get(0x08).copied().unwrap_or(0),
            config_size: shadow.size as u64,
            bars: shadow
                .bars
                .infos()
                .iter()
                .map(|b| (b.index, kind_name(b.kind), b.prefetchable, b.size))
                .collect(),
            msi: shadow.msi.as_ref().map(|m| m.layout()),
            msix: shadow.msix.as_ref().map(|m| m.layout()),
            irq_counts,
            regions,
        }
    }

    /// The first field in which `other` differs, with both values; `None` when they are
    /// the same device.
    pub(crate) fn difference(&self, other: &DeviceIdentity) -> Option<String> {
        macro_rules! field {
            ($name:ident) => {
                if self.$name != other.$name {
                    return Some(format!(
                        "{}: {:x?} here, {:x?} there",
                        stringify!($name),
                        self.$name,
                        other.$name
                    ));
                }
            };
        }
        field!(vendor_id);
        field!(device_id);
        field!(subsystem_vendor_id);
        field!(subsystem_id);
        field!(class_code);
        field!(revision);
        field!(config_size);
        field!(bars);
        field!(msi);
        field!(msix);
        field!(irq_counts);
        field!(regions);
        None
    }

    /// `Ok` when `other` is the same device, [`Error::DifferentDevice`] otherwise.
    pub(super) fn check(&self, other: &DeviceIdentity) -> Result<(), Error> {
        match self.difference(other) {
            Some(what) => Err(Error::DifferentDevice { what }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:04x} (subsystem {:04x}:{:04x}, class {:06x}, revision {:#x})",
            self.vendor_id,
            self.device_id,
            self.subsystem_vendor_id,
            self.subsystem_id,
            self.class_code,
            self.revision
        )
    }
}

/// One BAR's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BarState {
    index: u32,
    /// Where the VMM placed the window.
    base: Option<u64>,
    /// The register as the guest last wrote it.
    reg: u64,
    rom_enable: bool,
}

/// The MSI capability's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MsiState {
    /// The capability's registers after its header, as the guest wrote them.
    regs: Vec<u8>,
}

/// The MSI-X capability's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MsixState {
    /// Message control's enable and function mask bits.
    control: u16,
    /// The table, 16 bytes a vector.
    table: Vec<u8>,
}

/// The PCI and interrupt state of a device: taken with
/// [`VfioUserPciDevice::pci_state`](super::VfioUserPciDevice::pci_state), applied with
/// [`VfioUserPciDevice::restore_pci_state`](super::VfioUserPciDevice::restore_pci_state) to
/// the same device (same config-space identity, BARs, capabilities, regions and IRQ
/// counts). Serialisable (serde); versioned
/// ([`PciState::VERSION`]), and a state of another version is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciState {
    version: u32,
    identity: DeviceIdentity,
    command: u16,
    bars: Vec<BarState>,
    msi: Option<MsiState>,
    msix: Option<MsixState>,
    /// Vectors of the MSI or MSI-X mode that fired while masked (emulated masking).
    pending: Vec<u32>,
}

impl PciState {
    /// The version of [`PciState`] this client writes, and the only one it restores.
    pub const VERSION: u32 = 1;

    /// The identity of the device the state was taken from.
    pub(crate) fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// The version of the state.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The command register as the guest last wrote it.
    pub fn command(&self) -> u16 {
        self.command
    }
}

impl Core {
    /// Captures the state (the emulated pending bits are polled first).
    pub(super) fn pci_state(&mut self) -> PciState {
        capture(&self.identity, &self.shadow, self.wired.pending_vectors())
    }

    /// Applies `state` to the shadow and replays it to the server, after checking its
    /// version and identity. The interrupts wired now are taken down first (the server
    /// is told; a fresh attach has INTx connected).
    pub(super) fn restore_pci_state(&mut self, state: &PciState) -> Result<(), Error> {
        let shadow = checked_load(&self.identity, &self.shadow, state)?;
        let _budget = self.device.connection().budget();
        self.status
            .eoi_unmasks_intx
            .store(false, std::sync::atomic::Ordering::Release);
        interrupts::disable(&self.device, &*self.interrupts, &mut self.wired)?;
        self.shadow = shadow;
        let replayed = self.replay(&state.pending);
        // The BARs moved and the command register changed: the VMM's slots follow.
        self.sync_slots();
        replayed
    }

    /// After the server recovered from being unresponsive (a late reply may have applied
    /// an interrupt change the device recorded as failed, and what failed fast was never
    /// sent): every interrupt index is taken down at the server, and the state replayed.
    /// Done at the next guest access once the connection is healthy; within one reply
    /// timeout of its own.
    pub(super) fn resync(&mut self) {
        if !matches!(self.device.connection().health(), Health::Healthy)
            || !self
                .status
                .resync
                .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        log::info!("vfio-user PCI device: the server recovered, replaying the PCI state");
        let _budget = self.device.connection().budget();
        let pending = self.wired.pending_vectors();
        let mut result = interrupts::disable(&self.device, &*self.interrupts, &mut self.wired);
        for kind in [InterruptKind::Intx, InterruptKind::Msi, InterruptKind::Msix] {
            if self.device.irq(kind.irq_index()).is_ok_and(|i| i.count > 0) {
                let taken = self.device.disable_irqs(kind.irq_index());
                result = result.and(taken.map_err(Error::from));
            }
        }
        if let Err(e) = result.and_then(|()| self.replay(&pending)) {
            self.status.record(Activity::InterruptSetup, e);
        }
    }

    /// Pushes the shadow to a server that holds none of it; `pending` are the vectors
    /// whose emulated pending bits carry over. See the [module documentation](self).
    pub(super) fn replay(&mut self, pending: &[u32]) -> Result<(), Error> {
        // What was wired belonged to a server that dropped it: start from nothing.
        self.wired = WiredInterrupts::default();
        self.arm_notifiers()?;
        self.try_sync_interrupts()?;
        self.wired.set_pending(pending);
        let config = VFIO_PCI_CONFIG_REGION_INDEX;
        let command = self.shadow.command;
        self.device
            .write(config, COMMAND as u64, &command.to_le_bytes())?;
        if let Some(m) = &self.shadow.msi {
            let at = m.control_offset();
            let control = m.regs().get(..2).unwrap_or_default();
            self.device.write(config, at as u64, control)?;
        }
        if let Some(m) = &self.shadow.msix {
            let (at, control) = m.control_register();
            self.device
                .write(config, at as u64, &control.to_le_bytes())?;
        }
        Ok(())
    }
}

/// The state of the device of `identity` whose shadow is `shadow`, with the emulated
/// `pending` vectors.
pub(crate) fn capture(
    identity: &DeviceIdentity,
    shadow: &ConfigShadow,
    pending: Vec<u32>,
) -> PciState {
    PciState {
        version: PciState::VERSION,
        identity: identity.clone(),
        command: shadow.command,
        bars: shadow
            .bars
            .saved()
            .into_iter()
            .map(|(index, base, reg, rom_enable)| BarState {
                index,
                base,
                reg,
                rom_enable,
            })
            .collect(),
        msi: shadow.msi.as_ref().map(|m| MsiState {
            regs: m.regs().to_vec(),
        }),
        msix: shadow.msix.as_ref().map(|m| {
            let (control, table) = m.saved();
            MsixState {
                control,
                table: table.to_vec(),
            }
        }),
        pending,
    }
}

/// `shadow` (of the device of `identity`) with `state` loaded, after checking the state's
/// version and identity.
pub(crate) fn checked_load(
    identity: &DeviceIdentity,
    shadow: &ConfigShadow,
    state: &PciState,
) -> Result<ConfigShadow, Error> {
    if state.version != PciState::VERSION {
        return Err(Error::StateVersion {
            found: state.version,
            supported: PciState::VERSION,
        });
    }
    identity.check(&state.identity)?;
    let mut shadow = shadow.clone();
    load(&mut shadow, state)?;
    Ok(shadow)
}

/// Loads `state` into `shadow` (a device of the same identity): every part must fit.
pub(crate) fn load(shadow: &mut ConfigShadow, state: &PciState) -> Result<(), Error> {
    let mismatch = |what: &str| Error::DifferentDevice {
        what: format!("the saved state's {what} does not fit this device"),
    };
    for b in &state.bars {
        if !shadow.bars.load(b.index, b.base, b.reg, b.rom_enable) {
            return Err(mismatch("BARs"));
        }
    }
    let msi = match (&mut shadow.msi, &state.msi) {
        (Some(m), Some(s)) => m.load(&s.regs),
        (None, None) => true,
        _ => false,
    };
    if !msi {
        return Err(mismatch("MSI capability"));
    }
    let msix = match (&mut shadow.msix, &state.msix) {
        (Some(m), Some(s)) => m.load(s.control, &s.table),
        (None, None) => true,
        _ => false,
    };
    if !msix {
        return Err(mismatch("MSI-X capability"));
    }
    shadow.command = state.command;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> DeviceIdentity {
        DeviceIdentity {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 1,
            class_code: 0x02_00_00,
            revision: 1,
            config_size: 256,
            bars: vec![(0, "mem32".into(), false, 0x1000)],
            msi: None,
            msix: Some((0x40, 2, 0, 0x800, 0, 0xc00)),
            irq_counts: vec![1, 1, 2, 1, 1],
            regions: vec![(0, 0x1000, 3), (7, 256, 3)],
        }
    }

    #[test]
    fn identities_name_their_first_difference() {
        let a = identity();
        assert_eq!(a.difference(&a.clone()), None);
        assert!(a.check(&a.clone()).is_ok());
        let mut b = a.clone();
        b.irq_counts[2] = 4;
        b.revision = 2;
        let what = a.difference(&b).unwrap();
        assert!(what.starts_with("revision"), "{what}");
        assert!(matches!(a.check(&b), Err(Error::DifferentDevice { .. })));
        assert_eq!(
            a.to_string(),
            "1af4:1041 (subsystem 1af4:0001, class 020000, revision 0x1)"
        );
    }

    #[test]
    fn a_state_survives_serde_and_keeps_its_version() {
        let state = PciState {
            version: PciState::VERSION,
            identity: identity(),
            command: 0x0406,
            bars: vec![BarState {
                index: 0,
                base: Some(0xc000_0000),
                reg: 0xc000_0000,
                rom_enable: false,
            }],
            msi: None,
            msix: Some(MsixState {
                control: 0x8000,
                table: vec![0; 32],
            }),
            pending: vec![1],
        };
        let json = serde_json::to_string(&state).unwrap();
        let back: PciState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!((back.version(), back.command()), (1, 0x0406));
        assert_eq!(back.identity(), &identity());
        // Hostile or truncated input is a serde error, not a panic.
        assert!(serde_json::from_str::<PciState>(&json[..json.len() / 2]).is_err());
    }
}
