// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Interrupts: what the VMM provides (eventfds, routing), and the bookkeeping that turns
//! the guest's MSI / MSI-X / INTx state into the fewest SET_IRQS messages, masking vectors
//! at the server when it can and emulating the mask here when it cannot.

use std::io;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_MASKABLE, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::msi::Msi;
use super::msix::Msix;
use super::Error;
use crate::device::{IrqAction, VfioUserDevice};

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
            InterruptKind::Intx => VFIO_PCI_INTX_IRQ_INDEX,
            InterruptKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            InterruptKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
            InterruptKind::Err => VFIO_PCI_ERR_IRQ_INDEX,
            InterruptKind::Req => VFIO_PCI_REQ_IRQ_INDEX,
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
/// vector, so that the VMM can program its MSI routing.
///
/// Masking is the device's business, not the provider's: a masked vector never signals the
/// provider's eventfd. When the server can mask (IRQ_INFO `MASKABLE`) the device masks it
/// there; otherwise (libvfio-user, SPDK, the kernel's MSI/MSI-X) it takes the provider's
/// eventfd away from the server while the vector is masked, keeps the vector's pending bit
/// itself, and signals the provider's eventfd on unmask if the vector fired meanwhile.
///
/// Calls come from the thread that handles the guest's config or MSI-X table write (a vCPU
/// thread), under the device's lock, interleaved with round trips to the server: enabling
/// MSI-X with N vectors costs N `update` calls and about N / `max_msg_fds` SET_IRQS
/// messages, each waited for (up to the reply timeout when the server is slow).
pub trait InterruptProvider: Send + Sync {
    /// The eventfd the server signals for `vector` of `kind`; `None` leaves the vector
    /// unconnected. Asked when the guest enables `kind` (INTx, ERR and REQ at attach and
    /// after a reset), and again when a vector is unmasked while its masking is emulated:
    /// return the same eventfd for the same vector.
    fn eventfd(&self, kind: InterruptKind, vector: u32) -> Option<Arc<EventFd>>;

    /// MSI or MSI-X vector `vector` now sends `message` and is `masked` or not. Called
    /// before the server may signal an unmasked vector, so the route is ready first, and
    /// after a masked vector can no longer signal. `masked` is for the VMM's information
    /// (a KVM VMM may keep or drop the route); nothing needs detaching.
    fn update(
        &self,
        _kind: InterruptKind,
        _vector: u32,
        _message: MsiMessage,
        _masked: bool,
    ) -> io::Result<()> {
        Ok(())
    }

    /// MSI or MSI-X is off (the guest disabled it, switched modes, reset or detached the
    /// device, or enabling it failed): its vectors' routes are no longer used.
    fn disable(&self, _kind: InterruptKind) -> io::Result<()> {
        Ok(())
    }

    /// An eventfd the VMM signals when the guest ends an INTx interrupt (KVM's irqfd
    /// resample fd). The device's subscriber then unmasks INTx at the server (when the
    /// server can mask INTx; otherwise there is nothing to unmask). Without one, the VMM
    /// calls [`VfioUserPciDevice::end_of_interrupt`](super::VfioUserPciDevice::end_of_interrupt).
    fn intx_resample(&self) -> Option<Arc<EventFd>> {
        None
    }
}

/// How the device interrupts the guest now
/// ([`VfioUserPciDevice::interrupt_mode`](super::VfioUserPciDevice::interrupt_mode)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum InterruptMode {
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

/// One MSI or MSI-X vector as the server and the VMM were last told.
#[derive(Debug, Default)]
struct Vector {
    message: MsiMessage,
    masked: bool,
    /// Masking emulated here (the server cannot mask): while the vector is masked the server
    /// signals this eventfd of ours instead of the provider's.
    parked: Option<Arc<EventFd>>,
    /// Masking emulated here: the vector fired while masked (its pending bit).
    pending: bool,
}

impl Vector {
    /// Whether the vector fired while masked; a signal waiting on its parking eventfd is
    /// taken into the pending bit.
    fn poll_pending(&mut self) -> bool {
        if let Some(fd) = &self.parked {
            // A non-blocking eventfd read fails only when nothing was signalled.
            if fd.read().is_ok() {
                self.pending = true;
            }
        }
        self.pending
    }
}

/// The interrupts as wired: what the server (eventfds, masks) and the VMM (routes) were
/// last told.
#[derive(Debug, Default)]
pub(crate) struct WiredInterrupts {
    pub(crate) mode: InterruptMode,
    /// The vectors of the mode (MSI / MSI-X).
    vectors: Vec<Vector>,
}

impl WiredInterrupts {
    /// The number of vectors of the mode (MSI / MSI-X), 0 otherwise.
    pub(crate) fn vector_count(&self) -> usize {
        self.vectors.len()
    }

    /// Whether vector `v` of the current MSI or MSI-X mode is pending in the VMM's emulation
    /// of masking (the server's own pending bits are not included).
    pub(crate) fn pending(&mut self, v: u32) -> bool {
        self.vectors
            .get_mut(v as usize)
            .is_some_and(Vector::poll_pending)
    }
}

impl WiredInterrupts {
    /// The vectors of the current MSI or MSI-X mode pending in the VMM's emulation of
    /// masking.
    pub(crate) fn pending_vectors(&mut self) -> Vec<u32> {
        (0..self.vectors.len() as u32)
            .filter(|&v| self.pending(v))
            .collect()
    }

    /// Marks `vectors` pending where masking is emulated and the vector is masked (its
    /// parking eventfd is the server's); others are left alone.
    pub(crate) fn set_pending(&mut self, vectors: &[u32]) {
        for &v in vectors {
            if let Some(vector) = self
                .vectors
                .get_mut(v as usize)
                .filter(|x| x.parked.is_some())
            {
                vector.pending = true;
            }
        }
    }
}

/// The guest's interrupt setup, read from the MSI and MSI-X shadows and the command
/// register: what [`reconcile`] wires.
pub(crate) struct GuestInterrupts {
    pub(crate) mode: InterruptMode,
    /// Per vector of the mode (MSI / MSI-X): message and mask.
    pub(crate) vectors: Vec<(MsiMessage, bool)>,
}

impl GuestInterrupts {
    /// MSI-X wins over MSI, MSI over INTx (the spec forbids enabling two at once; a guest
    /// that does gets the most capable). `intx` is whether INTx may be used (the device has
    /// it and the command register does not disable it).
    pub(crate) fn read(
        msi: Option<&Msi>,
        msix: Option<&Msix>,
        intx: bool,
        device_vectors: impl Fn(InterruptKind) -> u32,
    ) -> GuestInterrupts {
        if let Some(m) = msix.filter(|m| m.enabled()) {
            let n = m.size().min(device_vectors(InterruptKind::Msix));
            return GuestInterrupts {
                mode: InterruptMode::Msix,
                vectors: (0..n).map(|v| (m.message(v), m.masked(v))).collect(),
            };
        }
        if let Some(m) = msi.filter(|m| m.enabled()) {
            let n = m.vectors().min(device_vectors(InterruptKind::Msi));
            return GuestInterrupts {
                mode: InterruptMode::Msi,
                vectors: (0..n).map(|v| (m.message(v), m.masked(v))).collect(),
            };
        }
        GuestInterrupts {
            mode: if intx {
                InterruptMode::Intx
            } else {
                InterruptMode::None
            },
            vectors: Vec::new(),
        }
    }
}

pub(crate) fn kind_of(mode: InterruptMode) -> Option<InterruptKind> {
    match mode {
        InterruptMode::None => None,
        InterruptMode::Intx => Some(InterruptKind::Intx),
        InterruptMode::Msi => Some(InterruptKind::Msi),
        InterruptMode::Msix => Some(InterruptKind::Msix),
    }
}

fn provider_error(kind: InterruptKind, vector: u32) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Interrupt {
        kind,
        vector,
        source,
    }
}

/// Whether the server can mask vectors of `kind` (IRQ_INFO reports `MASKABLE`).
/// libvfio-user, and so SPDK and QEMU's server, never do; the kernel's vfio-pci does only
/// for INTx.
pub(crate) fn server_masks(device: &VfioUserDevice, kind: InterruptKind) -> bool {
    device
        .irq(kind.irq_index())
        .is_ok_and(|i| i.flags & VFIO_IRQ_INFO_MASKABLE != 0)
}

/// Runs of consecutive vectors: `(start, count)`.
fn runs(vectors: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &v in vectors {
        match out.last_mut() {
            Some((start, count)) if start.checked_add(*count) == Some(v) => *count += 1,
            _ => out.push((v, 1)),
        }
    }
    out
}

fn parking_eventfd() -> Result<Arc<EventFd>, Error> {
    EventFd::new(EFD_NONBLOCK)
        .map(Arc::new)
        .map_err(|source| Error::Io {
            what: "creating an eventfd for a masked vector",
            source,
        })
}

/// Takes the current mode down: the server's index is disabled and, for MSI and MSI-X, the
/// VMM is told. `wired` is left empty whatever fails; the first error is returned.
pub(crate) fn disable(
    device: &VfioUserDevice,
    provider: &dyn InterruptProvider,
    wired: &mut WiredInterrupts,
) -> Result<(), Error> {
    let old = std::mem::take(wired);
    let Some(kind) = kind_of(old.mode) else {
        return Ok(());
    };
    let server = device.disable_irqs(kind.irq_index()).map_err(Error::from);
    let vmm = if kind == InterruptKind::Intx {
        Ok(())
    } else {
        provider.disable(kind).map_err(provider_error(kind, 0))
    };
    server.and(vmm)
}

/// Takes the interrupts down at the VMM only (its MSI / MSI-X routes), leaving the server
/// alone: a device [`save`](super::VfioUserPciDevice::save) stopped refuses SET_IRQS, and
/// drops its eventfds when the connection closes.
pub(crate) fn disable_vmm(
    provider: &dyn InterruptProvider,
    wired: &mut WiredInterrupts,
) -> Result<(), Error> {
    match kind_of(std::mem::take(wired).mode) {
        Some(kind) if kind != InterruptKind::Intx => {
            provider.disable(kind).map_err(provider_error(kind, 0))
        }
        _ => Ok(()),
    }
}

/// Brings the server and the VMM in step with the `guest` setup, sending only what changed.
///
/// A mode change disables the old mode (server, then VMM), tells the VMM every route of the
/// new one, sets the server's masks when it can mask, and only then connects the eventfds,
/// so that no vector fires unrouted or while the guest has it masked. Within a mode see
/// [`update_vectors`]. What fails is left unapplied, so that the next sync sends it again;
/// a failed mode change is undone at the server and the VMM.
pub(crate) fn reconcile(
    device: &VfioUserDevice,
    provider: &dyn InterruptProvider,
    wired: &mut WiredInterrupts,
    guest: GuestInterrupts,
) -> Result<(), Error> {
    if guest.mode == wired.mode && guest.vectors.len() == wired.vectors.len() {
        let Some(kind) = kind_of(guest.mode).filter(|k| *k != InterruptKind::Intx) else {
            return Ok(());
        };
        let changes = guest
            .vectors
            .into_iter()
            .enumerate()
            .map(|(v, (message, masked))| (v as u32, message, masked));
        return update_vectors(device, provider, wired, kind, changes);
    }
    disable(device, provider, wired)?;
    let Some(kind) = kind_of(guest.mode) else {
        return Ok(());
    };
    if let Err(e) = enable(device, provider, wired, guest) {
        // Nothing of the new mode may stay half connected.
        if let Err(undo) = device.disable_irqs(kind.irq_index()) {
            log::debug!("undoing a failed {kind:?} setup at the server: {undo}");
        }
        if kind != InterruptKind::Intx {
            if let Err(undo) = provider.disable(kind) {
                log::debug!("undoing a failed {kind:?} setup in the VMM: {undo}");
            }
        }
        return Err(e);
    }
    Ok(())
}

/// Sets up `guest`'s mode (not `None`) on a `wired` state that has none.
fn enable(
    device: &VfioUserDevice,
    provider: &dyn InterruptProvider,
    wired: &mut WiredInterrupts,
    GuestInterrupts {
        mode,
        vectors: guest,
    }: GuestInterrupts,
) -> Result<(), Error> {
    let Some(kind) = kind_of(mode) else {
        return Ok(());
    };
    let index = kind.irq_index();
    if kind == InterruptKind::Intx {
        let fd = provider.eventfd(kind, 0);
        device.set_irq_eventfds(index, IrqAction::Trigger, 0, &[fd.as_deref()])?;
        wired.mode = mode;
        return Ok(());
    }
    for (v, &(message, masked)) in guest.iter().enumerate() {
        provider
            .update(kind, v as u32, message, masked)
            .map_err(provider_error(kind, v as u32))?;
    }
    let emulate = !server_masks(device, kind);
    let mut vectors: Vec<Vector> = Vec::with_capacity(guest.len());
    let mut fds: Vec<Option<Arc<EventFd>>> = Vec::with_capacity(guest.len());
    for (v, (message, masked)) in guest.into_iter().enumerate() {
        let parked = (emulate && masked).then(parking_eventfd).transpose()?;
        fds.push(match &parked {
            Some(fd) => Some(fd.clone()),
            None => provider.eventfd(kind, v as u32),
        });
        vectors.push(Vector {
            message,
            masked,
            parked,
            pending: false,
        });
    }
    if !emulate {
        let masked: Vec<u32> = (0..vectors.len() as u32)
            .filter(|&v| vectors[v as usize].masked)
            .collect();
        let unmasked: Vec<u32> = (0..vectors.len() as u32)
            .filter(|&v| !vectors[v as usize].masked)
            .collect();
        for (start, count) in runs(&masked) {
            device.irq_action(index, IrqAction::Mask, start, count)?;
        }
        for (start, count) in runs(&unmasked) {
            device.irq_action(index, IrqAction::Unmask, start, count)?;
        }
    }
    let refs: Vec<Option<&EventFd>> = fds.iter().map(|f| f.as_deref()).collect();
    device.set_irq_eventfds(index, IrqAction::Trigger, 0, &refs)?;
    wired.mode = mode;
    wired.vectors = vectors;
    Ok(())
}

/// Brings vectors of the current MSI or MSI-X mode in step with `changes` (vector, message,
/// masked), sending only what differs from `wired`.
///
/// Masking goes to the server first, then to the VMM; unmasking to the VMM first (the route
/// is ready), then to the server, which may deliver a pending vector at once. When the
/// server cannot mask, masking is emulated: a masked vector's eventfd at the server is
/// swapped for a parking eventfd of ours, whose signals become the vector's pending bit;
/// on unmask the provider's eventfd goes back and a pending vector is delivered by
/// signalling it. Each vector's state is committed only after its server step succeeded.
pub(crate) fn update_vectors(
    device: &VfioUserDevice,
    provider: &dyn InterruptProvider,
    wired: &mut WiredInterrupts,
    kind: InterruptKind,
    changes: impl Iterator<Item = (u32, MsiMessage, bool)>,
) -> Result<(), Error> {
    let changed: Vec<(u32, MsiMessage, bool)> = changes
        .filter(|&(v, message, masked)| {
            wired
                .vectors
                .get(v as usize)
                .is_some_and(|a| (a.message, a.masked) != (message, masked))
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let step = VectorStep {
        device,
        provider,
        kind,
        emulate: !server_masks(device, kind),
    };
    let vectors = &mut wired.vectors;
    let masking: Vec<u32> = changed
        .iter()
        .filter(|c| c.2 && !vectors[c.0 as usize].masked)
        .map(|c| c.0)
        .collect();
    for (start, count) in runs(&masking) {
        step.mask(vectors, start, count)?;
    }
    for &(v, message, masked) in &changed {
        provider
            .update(kind, v, message, masked)
            .map_err(provider_error(kind, v))?;
        vectors[v as usize].message = message;
    }
    let unmasking: Vec<u32> = changed
        .iter()
        .filter(|c| !c.2 && vectors[c.0 as usize].masked)
        .map(|c| c.0)
        .collect();
    for (start, count) in runs(&unmasking) {
        step.unmask(vectors, start, count)?;
    }
    Ok(())
}

/// What masking and unmasking a run of vectors needs to know.
struct VectorStep<'a> {
    device: &'a VfioUserDevice,
    provider: &'a dyn InterruptProvider,
    kind: InterruptKind,
    /// The server cannot mask: masking is emulated with parking eventfds.
    emulate: bool,
}

impl VectorStep<'_> {
    /// Masks vectors `start..start + count` at the server, or parks them.
    fn mask(&self, vectors: &mut [Vector], start: u32, count: u32) -> Result<(), Error> {
        let index = self.kind.irq_index();
        let range = start as usize..(start + count) as usize;
        if !self.emulate {
            self.device
                .irq_action(index, IrqAction::Mask, start, count)?;
            vectors[range].iter_mut().for_each(|v| v.masked = true);
            return Ok(());
        }
        let parked = (0..count)
            .map(|_| parking_eventfd())
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<Option<&EventFd>> = parked.iter().map(|f| Some(&**f)).collect();
        self.device
            .set_irq_eventfds(index, IrqAction::Trigger, start, &refs)?;
        for (vector, fd) in vectors[range].iter_mut().zip(parked) {
            vector.parked = Some(fd);
            vector.masked = true;
        }
        Ok(())
    }

    /// Unmasks vectors `start..start + count` at the server, or gives the server the
    /// provider's eventfds back and delivers what fired while they were parked.
    fn unmask(&self, vectors: &mut [Vector], start: u32, count: u32) -> Result<(), Error> {
        let index = self.kind.irq_index();
        let range = start as usize..(start + count) as usize;
        if !self.emulate {
            self.device
                .irq_action(index, IrqAction::Unmask, start, count)?;
            vectors[range].iter_mut().for_each(|v| v.masked = false);
            return Ok(());
        }
        let fds: Vec<Option<Arc<EventFd>>> = (start..start + count)
            .map(|v| self.provider.eventfd(self.kind, v))
            .collect();
        let refs: Vec<Option<&EventFd>> = fds.iter().map(|f| f.as_deref()).collect();
        self.device
            .set_irq_eventfds(index, IrqAction::Trigger, start, &refs)?;
        // From the reply on, the server signals the provider's eventfds: whatever came
        // before is on the parking eventfds.
        for (vector, fd) in vectors[range].iter_mut().zip(&fds) {
            let pending = vector.poll_pending();
            *vector = Vector {
                message: vector.message,
                ..Vector::default()
            };
            if let (true, Some(fd)) = (pending, fd) {
                fd.write(1).map_err(|source| Error::Io {
                    what: "delivering a vector that fired while masked",
                    source,
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_split_at_gaps() {
        assert_eq!(runs(&[0, 1, 2, 4, 5, 7]), [(0, 3), (4, 2), (7, 1)]);
        assert_eq!(runs(&[u32::MAX - 1, u32::MAX]), [(u32::MAX - 1, 2)]);
        assert!(runs(&[]).is_empty());
    }
}
