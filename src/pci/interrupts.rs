// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Interrupts: what the VMM provides (eventfds, routing), and the bookkeeping that turns
//! the guest's MSI / MSI-X / INTx state into the fewest SET_IRQS messages.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::msi::Msi;
use super::msix::Msix;
use super::Error;
use crate::device::{pci_irq, IrqAction, VfioUserDevice};

/// Which of the device's interrupt sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptKind {
    /// Legacy INTx (the pin in config space).
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
    /// Error notification (vfio's ERR index).
    Err,
    /// Device request notification (vfio's REQ index: the device asks to be unplugged).
    Req,
}

impl InterruptKind {
    /// The vfio IRQ index.
    pub fn irq_index(self) -> u32 {
        match self {
            InterruptKind::Intx => pci_irq::INTX,
            InterruptKind::Msi => pci_irq::MSI,
            InterruptKind::Msix => pci_irq::MSIX,
            InterruptKind::Err => pci_irq::ERR,
            InterruptKind::Req => pci_irq::REQ,
        }
    }
}

/// The message an MSI or MSI-X vector sends, as the guest programmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// What a VMM gives a device for its interrupts.
///
/// The device never talks to the hypervisor: it hands the server the eventfds it gets here
/// (a KVM VMM passes its irqfds) and tells the VMM how the guest routes and masks each
/// vector, so that the VMM can program its MSI routing. Calls come from the thread that
/// handles the guest's config or MSI-X table write (a vCPU thread), under the device's lock.
pub trait InterruptProvider: Send + Sync {
    /// The eventfd the server signals for `vector` of `kind`; `None` leaves the vector
    /// unconnected. Asked when the guest enables `kind` (INTx, ERR and REQ at attach).
    fn eventfd(&self, kind: InterruptKind, vector: u32) -> Option<Arc<EventFd>>;

    /// MSI or MSI-X vector `vector` now sends `message` and is `masked` or not. Called
    /// before the server may signal an unmasked vector, so the route is ready first.
    fn update(
        &self,
        _kind: InterruptKind,
        _vector: u32,
        _message: MsiMessage,
        _masked: bool,
    ) -> io::Result<()> {
        Ok(())
    }

    /// The guest disabled MSI or MSI-X: its vectors' routes are no longer used.
    fn disable(&self, _kind: InterruptKind) -> io::Result<()> {
        Ok(())
    }

    /// An eventfd the VMM signals when the guest ends an INTx interrupt (KVM's irqfd
    /// resample fd). The device's subscriber then unmasks INTx at the server. Without one,
    /// the VMM calls [`VfioUserPciDevice::end_of_interrupt`](super::VfioUserPciDevice::end_of_interrupt).
    fn intx_resample(&self) -> Option<Arc<EventFd>> {
        None
    }
}

/// How the device interrupts the guest now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InterruptMode {
    /// No interrupts are connected.
    #[default]
    None,
    /// INTx.
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
}

/// What the server and the VMM were last told.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) mode: InterruptMode,
    /// Per vector of the mode (MSI / MSI-X): message and mask.
    vectors: Vec<(MsiMessage, bool)>,
}

/// The guest's interrupt state, read from the shadows.
pub(crate) struct Wanted {
    pub(crate) mode: InterruptMode,
    vectors: Vec<(MsiMessage, bool)>,
}

impl Wanted {
    /// MSI-X wins over MSI, MSI over INTx (the spec forbids enabling two at once; a guest
    /// that does gets the most capable).
    pub(crate) fn from(
        msi: Option<&Msi>,
        msix: Option<&Msix>,
        intx: bool,
        device_vectors: impl Fn(InterruptKind) -> u32,
    ) -> Wanted {
        if let Some(m) = msix.filter(|m| m.enabled()) {
            let n = m.size().min(device_vectors(InterruptKind::Msix));
            return Wanted {
                mode: InterruptMode::Msix,
                vectors: (0..n).map(|v| (m.message(v), m.masked(v))).collect(),
            };
        }
        if let Some(m) = msi.filter(|m| m.enabled()) {
            let n = m.vectors().min(device_vectors(InterruptKind::Msi));
            return Wanted {
                mode: InterruptMode::Msi,
                vectors: (0..n).map(|v| (m.message(v), m.masked(v))).collect(),
            };
        }
        Wanted {
            mode: if intx {
                InterruptMode::Intx
            } else {
                InterruptMode::None
            },
            vectors: Vec::new(),
        }
    }
}

fn kind_of(mode: InterruptMode) -> Option<InterruptKind> {
    match mode {
        InterruptMode::None => None,
        InterruptMode::Intx => Some(InterruptKind::Intx),
        InterruptMode::Msi => Some(InterruptKind::Msi),
        InterruptMode::Msix => Some(InterruptKind::Msix),
    }
}

fn provider_error(kind: InterruptKind, vector: u32) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Interrupt {
        what: format!("{kind:?} vector {vector}"),
        source,
    }
}

/// Runs of consecutive vectors with the same flag: `(start, count, flag)`.
fn runs(flags: impl Iterator<Item = (u32, bool)>) -> Vec<(u32, u32, bool)> {
    let mut out: Vec<(u32, u32, bool)> = Vec::new();
    for (v, f) in flags {
        match out.last_mut() {
            Some((start, count, flag)) if *flag == f && *start + *count == v => *count += 1,
            _ => out.push((v, 1, f)),
        }
    }
    out
}

/// Sends MASK for the runs of masked vectors and UNMASK for the others among `changed`.
fn send_masks(
    device: &VfioUserDevice,
    index: u32,
    changed: impl Iterator<Item = (u32, bool)>,
) -> Result<(), Error> {
    for (start, count, masked) in runs(changed) {
        let action = if masked {
            IrqAction::Mask
        } else {
            IrqAction::Unmask
        };
        device.irq_action(index, action, start, count)?;
    }
    Ok(())
}

/// Brings the server and the VMM in step with `wanted`, sending only what changed.
///
/// A mode change disables the old index at the server first, then, for MSI and MSI-X, tells
/// the VMM every route, sets the server's mask state, and only then connects the eventfds,
/// so that no vector fires unrouted or while the guest has it masked. Within a mode, a
/// vector being unmasked is routed before the server is told; one being masked is masked at
/// the server before the VMM is told.
pub(crate) fn reconcile(
    device: &VfioUserDevice,
    provider: &dyn InterruptProvider,
    applied: &mut Applied,
    wanted: Wanted,
) -> Result<(), Error> {
    if wanted.mode != applied.mode || wanted.vectors.len() != applied.vectors.len() {
        if let Some(kind) = kind_of(applied.mode) {
            applied.mode = InterruptMode::None;
            applied.vectors.clear();
            device.disable_irqs(kind.irq_index())?;
            if kind != InterruptKind::Intx {
                provider.disable(kind).map_err(provider_error(kind, 0))?;
            }
        }
        let Some(kind) = kind_of(wanted.mode) else {
            return Ok(());
        };
        let index = kind.irq_index();
        let count = if kind == InterruptKind::Intx {
            1
        } else {
            wanted.vectors.len() as u32
        };
        for (v, (message, masked)) in wanted.vectors.iter().enumerate() {
            provider
                .update(kind, v as u32, *message, *masked)
                .map_err(provider_error(kind, v as u32))?;
        }
        if kind != InterruptKind::Intx {
            send_masks(
                device,
                index,
                wanted
                    .vectors
                    .iter()
                    .enumerate()
                    .map(|(v, w)| (v as u32, w.1)),
            )?;
        }
        let fds: Vec<Option<Arc<EventFd>>> =
            (0..count).map(|v| provider.eventfd(kind, v)).collect();
        let refs: Vec<Option<&EventFd>> = fds.iter().map(|f| f.as_deref()).collect();
        device.set_irq_eventfds(index, IrqAction::Trigger, 0, &refs)?;
        applied.mode = wanted.mode;
        applied.vectors = wanted.vectors;
        return Ok(());
    }
    let Some(kind) = kind_of(wanted.mode).filter(|k| *k != InterruptKind::Intx) else {
        return Ok(());
    };
    let index = kind.irq_index();
    let changed: Vec<(u32, MsiMessage, bool, bool)> = wanted
        .vectors
        .iter()
        .zip(&applied.vectors)
        .enumerate()
        .filter(|(_, (w, a))| w != a)
        .map(|(v, (w, a))| (v as u32, w.0, w.1, a.1))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    // Masking: the server first.
    send_masks(
        device,
        index,
        changed.iter().filter(|c| c.2 && !c.3).map(|c| (c.0, true)),
    )?;
    for &(v, message, masked, _) in &changed {
        provider
            .update(kind, v, message, masked)
            .map_err(provider_error(kind, v))?;
        applied.vectors[v as usize] = (message, masked);
    }
    // Unmasking: the server last (it may deliver a pending vector at once).
    send_masks(
        device,
        index,
        changed.iter().filter(|c| !c.2 && c.3).map(|c| (c.0, false)),
    )
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_split_by_flag_and_gaps() {
        let r = runs([(0, true), (1, true), (2, false), (4, false), (5, true)].into_iter());
        assert_eq!(
            r,
            [(0, 2, true), (2, 1, false), (4, 1, false), (5, 1, true)]
        );
        assert!(runs(std::iter::empty()).is_empty());
    }
}
