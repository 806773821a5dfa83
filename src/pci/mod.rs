// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `VfioUserPciDevice`: a vfio-user device as a VMM's PCI bus sees it.
//!
//! # Vocabulary
//!
//! * **Config space** is region 7 of the server. Guest reads and writes go there, except for
//!   what the VMM owns, which a **shadow** answers: the six BAR registers and the expansion
//!   ROM BAR (sizing is answered from the region sizes, without a round trip), the MSI
//!   capability (its pending bits excepted) and MSI-X message control. Writes to the MSI and
//!   MSI-X registers are forwarded too, so the server sees the guest enable them. They set
//!   up the interrupts first and are forwarded after, so that the server holds its eventfds
//!   before it sees the enable; a forward that fails is recorded, and the new setup stays.
//! * A **BAR** is one of the device's regions 0 to 5 (or 6, the ROM) seen as a window on the
//!   VMM's memory or I/O bus. Its kind (32/64-bit, prefetchable, I/O) comes from the
//!   device's original BAR value, its size from the region. The VMM **places** it at attach
//!   (fixed addresses or an allocator callback); when the guest writes a new address the
//!   device returns a [`BarReprogramming`], the VMM moves the window and calls
//!   [`PciConfig::move_bar`]. Accesses through the window reach the server as region
//!   messages (through [`VfioUserDevice`], so splitting and posted writes apply); mappable
//!   areas are offered to the VMM as memory slots ([`VfioUserPciDevice::bar_mappings`]),
//!   or installed by the device itself through the VMM's [`GuestSlots`], together with the
//!   server's ioeventfds ([`VfioUserPciDevice::manage_slots`]).
//! * **Interrupts**: the VMM's [`InterruptProvider`] hands out eventfds (its irqfds) and
//!   hears how the guest routes and masks each MSI/MSI-X vector. The MSI-X table is emulated
//!   here. A masked vector never signals the guest: when the server can mask (IRQ_INFO
//!   `MASKABLE`) it is masked there (SET_IRQS MASK) and the server's pending bits are what
//!   the guest reads; when it cannot (libvfio-user and SPDK never can; the kernel's vfio
//!   cannot for MSI/MSI-X), no MASK or UNMASK is sent and the mask is emulated: the vector's
//!   eventfd at the server is swapped for one of the device's own while masked, a signal
//!   there sets the vector's pending bit (ORed into guest reads of the PBA and of MSI's
//!   pending bits), and unmasking delivers it. INTx follows the command register's
//!   Interrupt Disable bit, and is unmasked at the server when the guest ends the
//!   interrupt (if the server masks INTx), not on every BAR access.
//! * **Lifecycle**: [`VfioUserPciDevice::attach`] connects, negotiates, discovers, resets the
//!   device when it can, shares guest memory through the DMA layer ([`crate::dma`]: shared
//!   file-backed regions by fd, the rest served through DMA_READ / DMA_WRITE), places the
//!   BARs and connects INTx, ERR and REQ; [`VfioUserPciDevice::detach`] undoes that. A lost
//!   connection makes guest reads return all ones, is logged once, and signals
//!   [`VfioUserPciDevice::event`]; with a [`ReconnectPolicy`] a supervisor thread connects
//!   again instead, checks that the server offers the same device (config-space identity,
//!   BARs, capabilities, regions and IRQ counts) and replays the DMA mappings and the
//!   [`PciState`] ([`ConnectionState`] says where it is); managed slots
//!   ([`VfioUserPciDevice::manage_slots`]) follow the new server's mappings and ioeventfds
//!   by themselves.
//! * **State**: [`VfioUserPciDevice::pci_state`] captures what the client owns (command
//!   register, BARs, MSI / MSI-X registers and table, emulated pending bits) and
//!   [`VfioUserPciDevice::restore_pci_state`] applies it to another attach of the same
//!   device (migration's destination), replaying it to the server.
//! * **Save and restore**: [`VfioUserPciDevice::save`] writes the [`PciState`] and the
//!   device data stream (migration v2) to any `Write`, [`VfioUserPciDevice::restore`] reads
//!   them back into a device attached to another server; a live migration drives the
//!   pre-copy rounds with its own [`Migration`](crate::migration::Migration) handle and
//!   [`VfioUserPciDevice::start_dirty_logging`] (the order a VMM follows is on
//!   [`VfioUserPciDevice::save`], the container on [`VfioUserPciDevice::SNAPSHOT_VERSION`]).
//!
//! rust-vmm has no PCI crate, so the config-space side is our own small trait,
//! [`PciConfig`], modelled on Cloud Hypervisor's `PciDevice`. BAR windows implement
//! vm-device's `MutDeviceMmio` and `MutDevicePio`; a VMM puts the device in a `Mutex`
//! (vm-device's blanket impls then give the shared `DeviceMmio` / `DevicePio` its
//! `IoManager` wants), registering each BAR's window at the BAR's base.

mod attach;
mod caps;
mod config;
mod error;
mod guest;
pub(crate) mod interrupts;
mod irq_counts;
mod memory;
pub(crate) mod migrate;
mod msi;
mod msix;
mod reconnect;
pub(crate) mod shadow;
mod slots;
pub(crate) mod state;
mod status;
mod subscriber;

pub use attach::{AttachOptions, BarPlacement};
pub use config::{BarInfo, BarKind, BarReprogramming, BarSpace, PciConfig};
pub use error::{Activity, CapabilityProblem, Error};
use interrupts::InterruptMode;
pub use interrupts::{InterruptKind, InterruptProvider, MsiMessage};
pub use reconnect::{ConnectionState, ReconnectPolicy, Reconnected};
pub use slots::{BarMapping, Doorbell, GuestSlots};
use state::DeviceIdentity;
pub use state::PciState;
pub use subscriber::PciSubscriber;

use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use vfio_bindings::bindings::vfio::VFIO_PCI_INTX_IRQ_INDEX;
use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{MutDeviceMmio, MutDevicePio};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::connection::EventLoop;
use crate::device::{self, IrqAction, VfioUserDevice};
use crate::dma::{DmaHandle, DmaRegion};
use crate::error::ConnectionCause;
use crate::migration::DeviceState;
use crate::sync::{lock, try_lock};
use attach::connect;
use interrupts::WiredInterrupts;
use memory::GuestDma;
use reconnect::Supervisor;
use shadow::ConfigShadow;
use status::DeviceStatus;
use subscriber::SubscriberSwap;

/// A vfio-user device on a VMM's PCI bus. See the [module documentation](self), and the
/// [crate documentation](crate#attaching-a-device) for a device in a VMM's `EventManager`.
///
/// ```
/// use std::sync::Arc;
///
/// use vfio_user_client::pci::{BarPlacement, InterruptKind, InterruptProvider, PciConfig};
/// use vfio_user_client::{AttachOptions, VfioUserPciDevice};
/// use vm_device::bus::MmioAddress;
/// use vm_device::MutDeviceMmio;
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
/// use vmm_sys_util::eventfd::EventFd;
///
/// struct NoInterrupts;
///
/// impl InterruptProvider for NoInterrupts {
///     fn eventfd(&self, _kind: InterruptKind, _vector: u32) -> Option<Arc<EventFd>> {
///         None
///     }
/// }
///
/// # use vfio_user_sample_server::{GpioDevice, Server, ServerConfig};
/// # let (gpio, _) = GpioDevice::new(Default::default())?;
/// # let server = Server::new(ServerConfig::default(), Box::new(gpio)).listen_temp()?;
/// # let socket = server.socket_path().ok_or("no socket")?;
/// let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(
///     GuestAddress(0),
///     64 << 20,
/// )])?);
/// let options = AttachOptions {
///     bars: BarPlacement::Fixed(vec![(0, 0xc000_0000)]),
///     ..AttachOptions::default()
/// };
/// // The device's event loop runs on a thread of its own.
/// let mut device = VfioUserPciDevice::attach(socket, memory, Arc::new(NoInterrupts), &options)?;
///
/// // The guest turns memory decoding on; then a vCPU's MMIO exit at 0xc000_0018 reaches the
/// // device through the bus, at offset 0x18 of BAR 0's window.
/// device.write_config_register(1, 0, &[0x02]);
/// let mut register = [0u8; 4];
/// device.mmio_read(MmioAddress(0xc000_0000), 0x18, &mut register);
/// # assert_eq!(u32::from_le_bytes(register), GpioDevice::ID);
/// # assert_eq!(device.error_count(), 0);
///
/// device.detach()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct VfioUserPciDevice {
    core: Arc<Mutex<Core>>,
    status: Arc<DeviceStatus>,
    /// The reconnect supervisor (with a policy only); stopped before the core goes.
    supervisor: Option<Supervisor>,
}

/// The device's state behind its lock, shared with the reconnect supervisor (which swaps
/// the connection and replays the state). A vCPU takes it uncontended: the VMM's lock on
/// the device already serialises guest accesses, and the supervisor holds it only while it
/// restores the device, when guest accesses are dropped rather than waiting (see
/// [`VfioUserPciDevice::for_guest`]).
pub(crate) struct Core {
    device: Arc<VfioUserDevice>,
    status: Arc<DeviceStatus>,
    interrupts: Arc<dyn InterruptProvider>,
    dma: Option<Box<dyn GuestDma>>,
    /// The config space answered here: BARs, MSI, MSI-X, the attach snapshot's bits.
    shadow: ConfigShadow,
    /// What the device is: checked after a reconnect and on a restore.
    identity: DeviceIdentity,
    /// The device has an interrupt pin and an INTx vector.
    intx: bool,
    /// The server masks INTx (so an end of interrupt unmasks it there).
    intx_maskable: bool,
    /// ERR and REQ were connected at attach.
    notifiers: Vec<InterruptKind>,
    wired: WiredInterrupts,
    /// [`VfioUserPciDevice::save`] stopped the device (STOP_COPY, then STOP), and no
    /// restore or reconnect took it back to RUNNING since (the VMM's own `Migration`
    /// doing so is found out when the server is asked: [`Core::stopped_by_save`]).
    saved: bool,
    /// The device the last reconnect replaced: its mapped areas stay mapped until the next
    /// reconnect, so memory slots the VMM installed from [`VfioUserPciDevice::bar_mappings`]
    /// itself (without managed slots) stay backed until it installs the new ones.
    retired: Option<Arc<VfioUserDevice>>,
    /// The VMM's guest memory slots and ioeventfds, when the device manages them.
    slots: slots::Slots,
    // Declared last: stopped after the connection is shut down.
    event_loop: Option<EventLoop>,
}

impl fmt::Debug for VfioUserPciDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("VfioUserPciDevice");
        if let Some(core) = try_lock(&self.core) {
            d.field("bars", &core.shadow.bars.infos())
                .field("mode", &core.wired.mode);
        }
        d.field("state", &self.status.state())
            .finish_non_exhaustive()
    }
}

impl VfioUserPciDevice {
    /// Attaches the device served at `path`, with its event loop on a thread of its own
    /// (tools, tests, VMMs without an event manager).
    ///
    /// Connects and negotiates, discovers the device (refusing one that is not PCI), resets
    /// it when it supports reset and `options.reset` is set, reads its config space (BARs,
    /// capabilities), shares `memory` with the server (every region, with its fd when it is
    /// a shared file mapping; the server reaches the others with DMA_READ / DMA_WRITE,
    /// served from the connection's event loop), places the BARs and connects INTx, ERR and
    /// REQ to the provider's eventfds. With [`AttachOptions::reconnect`] set, a supervisor
    /// thread reconnects when the connection is lost (see [`ReconnectPolicy`]).
    ///
    /// A device whose config space offers more interrupt vectors than the server reports
    /// (an interrupt pin without INTx, an MSI-X table or MSI capability larger than its
    /// count) is refused with [`Error::IrqCount`]; fewer is fine.
    pub fn attach<AS>(
        path: impl AsRef<Path>,
        memory: AS,
        interrupts: Arc<dyn InterruptProvider>,
        options: &AttachOptions,
    ) -> Result<VfioUserPciDevice, Error>
    where
        AS: GuestAddressSpace + Send + Sync + 'static,
        AS::M: GuestMemoryBackend,
        <AS::M as GuestMemoryBackend>::R: DmaRegion,
    {
        let (connection, subscriber, swap) = connect(path.as_ref(), options, &interrupts)?;
        let event_loop = EventLoop::spawn(subscriber).map_err(Error::Connect)?;
        let mut core = Core::build(connection, memory, interrupts, options)?;
        core.event_loop = Some(event_loop);
        VfioUserPciDevice::assemble(core, options, swap)
    }

    /// Like [`VfioUserPciDevice::attach`], returning the subscriber for the VMM to register
    /// in its own `EventManager` (hot-plug at runtime: nothing here blocks other devices).
    /// The subscriber need not run during attach: the attaching thread reads its own replies.
    /// After a reconnect the subscriber moves its registrations to the new connection by
    /// itself (the supervisor wakes it through an eventfd it watches).
    /// The [crate documentation](crate#attaching-a-device) has an example.
    pub fn attach_with_subscriber<AS>(
        path: impl AsRef<Path>,
        memory: AS,
        interrupts: Arc<dyn InterruptProvider>,
        options: &AttachOptions,
    ) -> Result<(VfioUserPciDevice, PciSubscriber), Error>
    where
        AS: GuestAddressSpace + Send + Sync + 'static,
        AS::M: GuestMemoryBackend,
        <AS::M as GuestMemoryBackend>::R: DmaRegion,
    {
        let (connection, subscriber, swap) = connect(path.as_ref(), options, &interrupts)?;
        let core = Core::build(connection, memory, interrupts, options)?;
        let dev = VfioUserPciDevice::assemble(core, options, swap)?;
        Ok((dev, subscriber))
    }

    fn assemble(
        core: Core,
        options: &AttachOptions,
        swap: Option<Arc<SubscriberSwap>>,
    ) -> Result<VfioUserPciDevice, Error> {
        let status = Arc::clone(&core.status);
        let core = Arc::new(Mutex::new(core));
        let supervisor = match (&options.reconnect, swap) {
            (Some(policy), Some(swap)) => Some(Supervisor::start(
                policy.clone(),
                options,
                Arc::clone(&core),
                Arc::clone(&status),
                swap,
            )?),
            _ => None,
        };
        Ok(VfioUserPciDevice {
            core,
            status,
            supervisor,
        })
    }

    /// The core for a guest access; `None` (the access is dropped, counted and logged)
    /// while a reconnect is under way, so that a vCPU never waits for the supervisor.
    fn for_guest(&self, write: bool, what: &'static str) -> Option<MutexGuard<'_, Core>> {
        if !self.status.reconnecting() {
            // Held by a caller of a `&self` method when not by the supervisor.
            let core = try_lock(&self.core)
                .or_else(|| (!self.status.reconnecting()).then(|| lock(&self.core)));
            if let Some(mut core) = core {
                if self.status.resync.load(Ordering::Acquire) {
                    core.resync();
                }
                return Some(core);
            }
        }
        self.status.dropped(write, what);
        None
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// Detaches the device: disconnects its interrupts, unmaps guest memory and closes the
    /// connection. With the connection already lost there is nothing to undo at the server
    /// (it dropped both on disconnect), and detach just closes. The first error met is
    /// returned; everything is closed regardless. A reconnect under way is abandoned first.
    ///
    /// Detach waits for the server for one reply timeout in total, not one per request: a
    /// server that does not answer in time makes the connection unresponsive, and what is
    /// left fails at once ([`connection::Error::Unresponsive`](crate::connection::Error::Unresponsive)).
    ///
    /// A device [`save`](VfioUserPciDevice::save) left stopped (the server, asked, still
    /// says STOP or STOP_COPY) refuses SET_IRQS and DMA_UNMAP, and drops its eventfds and
    /// DMA mappings when the connection closes: only the VMM's side is undone (the
    /// provider's [`InterruptProvider::disable`], managed slots), and the device is not
    /// resumed.
    pub fn detach(mut self) -> Result<(), Error> {
        self.status.detaching.store(true, Ordering::Release);
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.stop();
        }
        self.core().detach()
    }

    /// Follows a change of guest memory (hot-plug through a `GuestMemoryAtomic` given at
    /// attach): regions that appeared are mapped for the server, regions that went are
    /// unmapped. A reconnect under way does this itself once it has replayed the mappings.
    pub fn sync_guest_memory(&self) -> Result<(), Error> {
        match &self.core().dma {
            Some(dma) => dma.sync(),
            None => Ok(()),
        }
    }

    /// The device's DMA windows, for the VMM to map and unmap its own (a vIOMMU's IOVA
    /// mappings, virtio-mem blocks) next to the guest memory shared at attach
    /// ([`AttachOptions::dma`]); usable from any thread without the device's lock. The
    /// handle follows the windows across reconnects. `None` only while no guest memory is
    /// set up.
    pub fn dma(&self) -> Option<DmaHandle> {
        self.core().dma.as_ref().map(|d| d.handle())
    }

    /// The transport-level device underneath (a new one after each reconnect).
    pub fn device(&self) -> Arc<VfioUserDevice> {
        Arc::clone(&self.core().device)
    }

    /// An eventfd signalled once when the device is lost (the server closed the connection
    /// or broke the protocol, and no reconnect policy brings it back). Not signalled by
    /// detach.
    pub fn event(&self) -> &EventFd {
        &self.status.event
    }

    /// Whether the connection to the server is gone (for good, or until a reconnect
    /// completes).
    pub fn is_lost(&self) -> bool {
        self.status.lost.load(Ordering::Acquire)
    }

    /// Errors met on paths that cannot return them (guest accesses, end of interrupt), not
    /// counting the loss of the connection. Each is also logged.
    pub fn error_count(&self) -> u64 {
        self.status.errors.load(Ordering::Relaxed)
    }

    /// The last such error (an [`Error::During`] naming what the device was doing), or
    /// why the device was lost ([`Error::Lost`], [`Error::GaveUp`],
    /// [`Error::DifferentDevice`]).
    pub fn last_error(&self) -> Option<Arc<Error>> {
        lock(&self.status.last_error).clone()
    }

    /// How the device interrupts the guest now: INTx, MSI or MSI-X, or `None` while no
    /// interrupt is connected.
    pub fn interrupt_mode(&self) -> Option<InterruptKind> {
        interrupts::kind_of(self.core().wired.mode)
    }

    /// Unmasks INTx at the server: the guest ended an INTx interrupt. For VMMs whose
    /// interrupt controller notices the end of interrupt itself; with a resample eventfd
    /// from the [`InterruptProvider`] the subscriber does this. Nothing is sent unless the
    /// device is in INTx mode and the server masks INTx.
    pub fn end_of_interrupt(&self) -> Result<(), Error> {
        if self.status.reconnecting() {
            return Ok(());
        }
        self.core().end_of_interrupt()
    }

    /// Resets the device and the VMM-side state with it, in the order QEMU uses: the
    /// interrupts are disconnected (server and VMM), DEVICE_RESET is sent, ERR and REQ are
    /// connected again, and the interrupt setup starts over from the reset state (MSI and
    /// MSI-X disabled, every MSI-X vector masked, INTx as the command register allows).
    /// The BARs keep their placement. When DEVICE_RESET fails the shadows are kept and the
    /// interrupts reconnected as they were.
    ///
    /// A device [`save`](VfioUserPciDevice::save) left stopped is [`Error::Saved`], with
    /// nothing changed: a reset would run it again.
    pub fn reset(&mut self) -> Result<(), Error> {
        self.core().reset()
    }

    /// The PCI and interrupt state the client owns (command register, BARs, MSI and MSI-X
    /// registers and table, emulated pending bits), with the device's identity: what
    /// [`VfioUserPciDevice::restore_pci_state`] applies to another attach of the same device.
    pub fn pci_state(&self) -> PciState {
        self.core().pci_state()
    }

    /// Applies a [`PciState`] taken from a device of the same identity (refused with
    /// [`Error::DifferentDevice`] otherwise, or [`Error::StateVersion`]) and replays it to the
    /// server: the interrupts wired now are taken down, ERR and REQ armed, every interrupt
    /// eventfd connected as the state says (the VMM is told every route), then the command
    /// register and the MSI / MSI-X controls are forwarded. The BARs take the state's bases:
    /// the VMM moves its windows to where [`PciConfig::bars`] says afterwards; with
    /// [`VfioUserPciDevice::manage_slots`] the slots and doorbells follow by themselves (a
    /// failing [`GuestSlots`] call is counted in [`VfioUserPciDevice::error_count`], not
    /// returned), without it the VMM installs [`VfioUserPciDevice::bar_mappings`] again. The
    /// device's own internal state is the server's business (migration carries it).
    pub fn restore_pci_state(&mut self, state: &PciState) -> Result<(), Error> {
        self.core().restore_pci_state(state)
    }

    /// The connection's state: connected, reconnecting (with a [`ReconnectPolicy`]) or lost.
    pub fn connection_state(&self) -> ConnectionState {
        self.status.state()
    }

    /// An eventfd signalled on every change of [`VfioUserPciDevice::connection_state`]
    /// (non-blocking; read it, then read the state).
    pub fn state_event(&self) -> &EventFd {
        &self.status.state_event
    }

    /// How the last reconnect found the server (`None` before the first).
    pub fn last_reconnect(&self) -> Option<Reconnected> {
        *lock(&self.status.last_reconnect)
    }

    /// Guest accesses dropped while reconnecting: (reads answered all ones, writes dropped).
    pub fn dropped_accesses(&self) -> (u64, u64) {
        (
            self.status.dropped_reads.load(Ordering::Relaxed),
            self.status.dropped_writes.load(Ordering::Relaxed),
        )
    }

    /// Reads `data.len()` bytes at `offset` of BAR `bar`'s window, as a guest access would:
    /// all ones when the window does not decode (command register, ROM enable), lies past
    /// the region or the end of the address space, the server failed (the error is
    /// recorded) or a reconnect is under way (counted). MSI-X table reads are answered
    /// here; pending bits the VMM keeps are ORed into the server's.
    pub fn bar_read(&mut self, bar: u32, offset: u64, data: &mut [u8]) {
        match self.for_guest(false, "BAR") {
            Some(mut core) => core.bar_read(bar, offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes `data` at `offset` of BAR `bar`'s window, as a guest access would: dropped
    /// when the window does not decode, the access wraps around or a reconnect is under
    /// way (counted); MSI-X table writes are emulated here; the rest goes to the server,
    /// posted when the device layer allows (a refused posted write cannot be reported;
    /// [`DeviceOptions::posted_writes`] turns posting off).
    ///
    /// [`DeviceOptions::posted_writes`]: crate::device::DeviceOptions::posted_writes
    pub fn bar_write(&mut self, bar: u32, offset: u64, data: &[u8]) {
        if let Some(mut core) = self.for_guest(true, "BAR") {
            core.bar_write(bar, offset, data);
        }
    }
}

impl Core {
    fn detach(&mut self) -> Result<(), Error> {
        self.status.eoi_unmasks_intx.store(false, Ordering::Release);
        self.withdraw_slots();
        if self.is_lost() {
            return Ok(());
        }
        let _budget = self.device.connection().budget();
        if self.stopped_by_save() {
            // A stopped device refuses SET_IRQS and DMA_UNMAP; closing the connection
            // drops its eventfds and DMA mappings, so only the VMM's side is undone.
            self.notifiers.clear();
            return interrupts::disable_vmm(&*self.interrupts, &mut self.wired);
        }
        let mut first_error =
            interrupts::disable(&self.device, &*self.interrupts, &mut self.wired).err();
        for kind in std::mem::take(&mut self.notifiers) {
            if let Err(e) = self.device.disable_irqs(kind.irq_index()) {
                first_error.get_or_insert(e.into());
            }
        }
        if let Some(dma) = self.dma.take() {
            if let Err(e) = dma.unmap_all() {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) if !e.is_disconnected() => Err(e),
            _ => Ok(()),
        }
    }

    fn is_lost(&self) -> bool {
        self.status.lost.load(Ordering::Acquire)
    }

    /// Whether [`VfioUserPciDevice::save`] left the device stopped and it still is. The
    /// server is asked (the VMM may have taken the device back to RUNNING through its own
    /// [`Migration`](crate::migration::Migration) since); without an answer the device is
    /// taken to be stopped.
    fn stopped_by_save(&mut self) -> bool {
        if !self.saved {
            return false;
        }
        match crate::migration::Migration::new(&self.device).map(|m| m.state()) {
            Ok(DeviceState::Stop | DeviceState::StopCopy) => true,
            Ok(state) => {
                log::debug!("the saved device is in {state:?} again");
                self.saved = false;
                false
            }
            Err(e) => {
                log::warn!("the saved device's migration state is unknown ({e}): taken as stopped");
                true
            }
        }
    }

    fn end_of_interrupt(&self) -> Result<(), Error> {
        if self.wired.mode != InterruptMode::Intx || !self.intx_maskable || self.is_lost() {
            return Ok(());
        }
        self.device
            .irq_action(VFIO_PCI_INTX_IRQ_INDEX, IrqAction::Unmask, 0, 1)
            .map_err(Error::from)
    }

    fn reset(&mut self) -> Result<(), Error> {
        if !self.device.resettable() {
            return Err(device::Error::ResetNotSupported.into());
        }
        if self.stopped_by_save() {
            return Err(Error::Saved);
        }
        self.status.eoi_unmasks_intx.store(false, Ordering::Release);
        let disabled = interrupts::disable(&self.device, &*self.interrupts, &mut self.wired);
        let reset = self.device.reset().map_err(Error::from);
        if reset.is_ok() {
            self.shadow.reset();
            self.sync_slots();
        }
        let armed = self.arm_notifiers();
        let synced = self.try_sync_interrupts();
        reset.and(disabled).and(armed).and(synced)
    }
}

impl Drop for VfioUserPciDevice {
    fn drop(&mut self) {
        // Closing is not losing: the disconnect callback stays quiet.
        self.status.detaching.store(true, Ordering::Release);
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.stop();
        }
        // The BARs' mappings go with the device: the VMM's slots must go first.
        self.core().withdraw_slots();
    }
}

impl PciConfig for VfioUserPciDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        match self.for_guest(false, "config") {
            Some(mut core) => core.config_read(reg_idx),
            None => u32::MAX,
        }
    }

    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Vec<BarReprogramming> {
        match self.for_guest(true, "config") {
            Some(mut core) => {
                let moves = core.config_write(reg_idx, offset, data);
                core.sync_slots();
                moves
            }
            None => Vec::new(),
        }
    }

    fn move_bar(&mut self, bar: u32, new_base: u64) -> Result<BarReprogramming, Error> {
        let mut core = self.core();
        let relocation = core.shadow.bars.relocate(bar, new_base)?;
        core.sync_slots();
        Ok(relocation)
    }

    fn restore_bar(&mut self, relocation: &BarReprogramming) -> Result<(), Error> {
        let mut core = self.core();
        core.shadow.bars.restore(relocation)?;
        core.sync_slots();
        Ok(())
    }

    fn unmap_bar(&mut self, bar: u32) -> Result<(), Error> {
        let mut core = self.core();
        core.shadow.bars.unplace(bar)?;
        core.sync_slots();
        Ok(())
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.core().shadow.bars.infos()
    }
}

impl MutDeviceMmio for VfioUserPciDevice {
    fn mmio_read(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let Some(mut core) = self.for_guest(false, "MMIO") else {
            data.fill(0xff);
            return;
        };
        match core.shadow.bars.at(base.0, true) {
            Some(bar) => core.bar_read(bar.index, offset, data),
            None => {
                log::debug!("MMIO read at {:#x}+{offset:#x}: no BAR there", base.0);
                data.fill(0xff);
            }
        }
    }

    fn mmio_write(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        let Some(mut core) = self.for_guest(true, "MMIO") else {
            return;
        };
        match core.shadow.bars.at(base.0, true) {
            Some(bar) => core.bar_write(bar.index, offset, data),
            None => log::debug!("MMIO write at {:#x}+{offset:#x}: no BAR there", base.0),
        }
    }
}

impl MutDevicePio for VfioUserPciDevice {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let Some(mut core) = self.for_guest(false, "port") else {
            data.fill(0xff);
            return;
        };
        match core.shadow.bars.at(u64::from(base.0), false) {
            Some(bar) => core.bar_read(bar.index, u64::from(offset), data),
            None => {
                log::debug!("port read at {:#x}+{offset:#x}: no BAR there", base.0);
                data.fill(0xff);
            }
        }
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let Some(mut core) = self.for_guest(true, "port") else {
            return;
        };
        match core.shadow.bars.at(u64::from(base.0), false) {
            Some(bar) => core.bar_write(bar.index, u64::from(offset), data),
            None => log::debug!("port write at {:#x}+{offset:#x}: no BAR there", base.0),
        }
    }
}
