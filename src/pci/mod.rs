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
//!   MSI-X registers are forwarded too, so the server sees the guest enable them.
//! * A **BAR** is one of the device's regions 0 to 5 (or 6, the ROM) seen as a window on the
//!   VMM's memory or I/O bus. Its kind (32/64-bit, prefetchable, I/O) comes from the
//!   device's original BAR value, its size from the region. The VMM **places** it at attach
//!   (fixed addresses or an allocator callback); when the guest writes a new address the
//!   device returns a [`BarReprogramming`], the VMM moves the window and calls
//!   [`PciConfig::move_bar`]. Accesses through the window reach the server as region
//!   messages (through [`VfioUserDevice`], so splitting and posted writes apply); mappable
//!   areas are offered to the VMM as memory slots ([`VfioUserPciDevice::bar_mappings`]).
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
//!   BARs and connects INTx, ERR and REQ; [`VfioUserPciDevice::detach`] undoes that. A lost connection makes guest reads return
//!   all ones, is logged once, and signals [`VfioUserPciDevice::event`].
//!
//! rust-vmm has no PCI crate, so the config-space side is our own small trait,
//! [`PciConfig`], modelled on Cloud Hypervisor's `PciDevice`. BAR windows implement
//! vm-device's `MutDeviceMmio` and `MutDevicePio`; a VMM puts the device in a `Mutex`
//! (vm-device's blanket impls then give the shared `DeviceMmio` / `DevicePio` its
//! `IoManager` wants), registering each BAR's window at the BAR's base.

mod caps;
mod config;
mod error;
mod interrupts;
mod memory;
mod msi;
mod msix;
mod subscriber;

pub use config::{BarInfo, BarKind, BarReprogramming, PciConfig, ROM_BAR_INDEX};
pub use error::{Activity, CapabilityProblem, Error};
pub use interrupts::{InterruptKind, InterruptMode, InterruptProvider, MsiMessage};
pub use subscriber::PciSubscriber;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{MutDeviceMmio, MutDevicePio};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::connection::{ConnectOptions, Connection};
use crate::device::{self, DeviceOptions, IrqAction, VfioUserDevice};
use crate::dma::DmaRegion;
use crate::error::ConnectionCause;
use crate::protocol::{Command, SetIrqs};
use crate::proxy::{self, DisconnectReason, EventLoop, Proxy};
use crate::sync::lock;
use caps::SnapshotOverlay;
use config::{
    merge, Bars, COMMAND, COMMAND_INTX_DISABLE, COMMAND_IO, COMMAND_MEMORY, CONFIG_SIZE,
    HEADER_TYPE,
};
use interrupts::{reconcile, server_masks, update_vectors, GuestInterrupts, WiredInterrupts};
use memory::GuestDma;
use msi::Msi;
use msix::Msix;

/// Largest config space the device serves (PCI Express extended config space).
const MAX_CONFIG_SIZE: u64 = 4096;

/// Where the BARs go at attach.
#[derive(Clone, Default)]
pub enum BarPlacement {
    /// Nowhere yet: the guest (its firmware) programs them, and each first placement comes
    /// back as a [`BarReprogramming`] without an old base.
    #[default]
    Guest,
    /// These `(bar, base)` pairs; BARs not named are left to the guest.
    Fixed(Vec<(u32, u64)>),
    /// The VMM's allocator is asked for each BAR in turn; `None` leaves it to the guest.
    Allocator(BarAllocator),
}

/// A VMM's BAR allocator: the base for a BAR, or `None` to leave it to the guest.
pub type BarAllocator = Arc<dyn Fn(&BarInfo) -> Option<u64> + Send + Sync>;

impl fmt::Debug for BarPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BarPlacement::Guest => f.write_str("Guest"),
            BarPlacement::Fixed(v) => f.debug_tuple("Fixed").field(v).finish(),
            BarPlacement::Allocator(_) => f.write_str("Allocator(..)"),
        }
    }
}

/// How to attach a device.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// How to connect and what to offer.
    pub connect: ConnectOptions,
    /// The device access layer's settings (transfer chunks, posted writes, mapping).
    pub device: DeviceOptions,
    /// Reset the device at attach when it supports reset (default `true`).
    pub reset: bool,
    /// Where the BARs go.
    pub bars: BarPlacement,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            connect: ConnectOptions::default(),
            device: DeviceOptions::default(),
            reset: true,
            bars: BarPlacement::default(),
        }
    }
}

/// A mappable area of a placed BAR: host memory the VMM may install as a guest memory slot
/// so that guest accesses there do not exit. The MSI-X table's and pending bits' pages are
/// left out (they must trap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMapping {
    /// The BAR.
    pub bar: u32,
    /// Guest physical address of the area.
    pub guest_addr: u64,
    /// Host virtual address of the area (mapped for as long as the device is attached).
    pub host_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Whether the guest may write it.
    pub writable: bool,
}

/// The device's status, shared with its subscriber and the disconnect callback: lost or
/// detaching, the errors met where they could not be returned, and whether an end of
/// interrupt unmasks INTx.
pub(crate) struct DeviceStatus {
    lost: AtomicBool,
    detaching: AtomicBool,
    /// Signalled once when the device is lost.
    event: EventFd,
    errors: AtomicU64,
    last_error: Mutex<Option<Arc<Error>>>,
    /// INTx is the mode and the server masks it: an end of interrupt unmasks it there.
    eoi_unmasks_intx: AtomicBool,
}

impl DeviceStatus {
    fn new() -> Result<DeviceStatus, Error> {
        Ok(DeviceStatus {
            lost: AtomicBool::new(false),
            detaching: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
                what: "creating the device event",
                source,
            })?,
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            eoi_unmasks_intx: AtomicBool::new(false),
        })
    }

    /// The connection is gone: log once and tell the VMM (unless it is detaching).
    fn lose(&self, reason: DisconnectReason) {
        if self.lost.swap(true, Ordering::AcqRel) || self.detaching.load(Ordering::Acquire) {
            return;
        }
        log::error!("vfio-user PCI device lost ({reason}): guest reads return all ones");
        *lock(&self.last_error) = Some(Arc::new(Error::Lost(proxy::Error::Disconnected(reason))));
        if let Err(e) = self.event.write(1) {
            log::error!("cannot signal the device event: {e}");
        }
    }

    /// Records an error met on a path that cannot return it (a guest access).
    fn record(&self, activity: Activity, e: Error) {
        let gone = e.connection_errors().find_map(|c| match c {
            proxy::Error::Disconnected(reason) => Some(reason.clone()),
            _ => None,
        });
        if let Some(reason) = gone {
            self.lose(reason);
            return;
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        let e = Error::During {
            activity,
            source: Box::new(e),
        };
        log::warn!("vfio-user PCI device: {e}");
        *lock(&self.last_error) = Some(Arc::new(e));
    }

    /// Sends the INTx unmask from the event loop with `No_reply`: the event loop, which
    /// may be the VMM's shared one, never waits for the server (a slow or hung server would
    /// stall every device it drives). The price is that the server's errno for a refused
    /// unmask is not seen; a connection that fails is.
    pub(crate) fn post_intx_unmask(&self, proxy: &Proxy) {
        if !self.eoi_unmasks_intx.load(Ordering::Acquire) || self.lost.load(Ordering::Acquire) {
            return;
        }
        let mut payload = Vec::with_capacity(SetIrqs::HEAD_SIZE);
        SetIrqs::new(
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            VFIO_PCI_INTX_IRQ_INDEX,
            0,
            1,
            Vec::new(),
        )
        .encode_into(&mut payload);
        if let Err(source) = proxy.post(Command::DeviceSetIrqs, &payload, &[]) {
            self.record(
                Activity::IntxUnmask,
                Error::Device(device::Error::SetIrqs {
                    index: VFIO_PCI_INTX_IRQ_INDEX,
                    start: 0,
                    count: 1,
                    source,
                }),
            );
        }
    }
}

/// A vfio-user device on a VMM's PCI bus. See the [module documentation](self).
pub struct VfioUserPciDevice {
    device: Arc<VfioUserDevice>,
    status: Arc<DeviceStatus>,
    interrupts: Arc<dyn InterruptProvider>,
    dma: Option<Box<dyn GuestDma>>,
    config_size: usize,
    /// Config bits answered from the attach snapshot.
    snapshot: SnapshotOverlay,
    bars: Bars,
    msi: Option<Msi>,
    msix: Option<Msix>,
    /// The device has an interrupt pin and an INTx vector.
    intx: bool,
    /// The server masks INTx (so an end of interrupt unmasks it there).
    intx_maskable: bool,
    /// ERR and REQ were connected at attach.
    notifiers: Vec<InterruptKind>,
    command: u16,
    wired: WiredInterrupts,
    // Declared last: stopped after the connection is shut down.
    event_loop: Option<EventLoop>,
}

impl fmt::Debug for VfioUserPciDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioUserPciDevice")
            .field("bars", &self.bars.infos())
            .field("mode", &self.wired.mode)
            .field("lost", &self.is_lost())
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
    /// REQ to the provider's eventfds.
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
        let (connection, subscriber) = connect(path.as_ref(), &options.connect, &interrupts)?;
        let event_loop = EventLoop::spawn(subscriber).map_err(Error::Connect)?;
        let mut dev = VfioUserPciDevice::build(connection, memory, interrupts, options)?;
        dev.event_loop = Some(event_loop);
        Ok(dev)
    }

    /// Like [`VfioUserPciDevice::attach`], returning the subscriber for the VMM to register
    /// in its own `EventManager` (hot-plug at runtime: nothing here blocks other devices).
    /// The subscriber need not run during attach: the attaching thread reads its own replies.
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
        let (connection, subscriber) = connect(path.as_ref(), &options.connect, &interrupts)?;
        let dev = VfioUserPciDevice::build(connection, memory, interrupts, options)?;
        Ok((dev, subscriber))
    }

    fn build<AS>(
        (connection, status): (Connection, Arc<DeviceStatus>),
        memory: AS,
        interrupts: Arc<dyn InterruptProvider>,
        options: &AttachOptions,
    ) -> Result<VfioUserPciDevice, Error>
    where
        AS: GuestAddressSpace + Send + Sync + 'static,
        AS::M: GuestMemoryBackend,
        <AS::M as GuestMemoryBackend>::R: DmaRegion,
    {
        let device = VfioUserDevice::new(connection, &options.device)?;
        if !device.is_pci() {
            return Err(Error::NotPci);
        }
        let region = device.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        if region.size() < CONFIG_SIZE as u64 || region.flags() & rw != rw {
            return Err(Error::ConfigRegion {
                size: region.size(),
                flags: region.flags(),
            });
        }
        let config_size = region.size().min(MAX_CONFIG_SIZE) as usize;
        if options.reset && device.resettable() {
            device.reset()?;
        }
        let mut config = vec![0u8; CONFIG_SIZE];
        device.read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut config)?;
        let header = config[HEADER_TYPE] & 0x7f;
        if header != 0 {
            return Err(Error::HeaderType(header));
        }
        let bars = Bars::discover(&config, |i| {
            device
                .region(i)
                .map_or(0, |r| if r.flags() & rw != 0 { r.size() } else { 0 })
        })?;
        let found = caps::walk(&config)?;
        let msi = caps::find(&found, caps::CAP_ID_MSI)
            .map(|at| Msi::parse(&config, at))
            .transpose()?;
        let msix_at = caps::find(&found, caps::CAP_ID_MSIX);
        let msix = msix_at
            .map(|at| {
                Msix::parse(&config, at, &bars.infos(), |i| {
                    device.region(i).map_or(0, |r| r.size())
                })
            })
            .transpose()?;
        let snapshot = SnapshotOverlay::new(&config, &found, msix_at);
        let intx = config[config::INTERRUPT_PIN] != 0
            && device
                .irq(VFIO_PCI_INTX_IRQ_INDEX)
                .is_ok_and(|i| i.count > 0);
        let intx_maskable = server_masks(&device, InterruptKind::Intx);
        let command = u16::from_le_bytes([config[COMMAND], config[COMMAND + 1]]);
        log::debug!(
            "PCI device: {:04x}:{:04x}, BARs {:?}, MSI {}, MSI-X {}, INTx {intx}",
            u16::from_le_bytes([config[0], config[1]]),
            u16::from_le_bytes([config[2], config[3]]),
            bars.infos(),
            msi.is_some(),
            msix.as_ref().map_or(0, Msix::size),
        );
        let mut dev = VfioUserPciDevice {
            device: Arc::new(device),
            status,
            interrupts,
            dma: None,
            config_size,
            snapshot,
            bars,
            msi,
            msix,
            intx,
            intx_maskable,
            notifiers: Vec::new(),
            command,
            wired: WiredInterrupts::default(),
            event_loop: None,
        };
        dev.place_bars(&options.bars)?;
        dev.dma = Some(memory::map_guest_memory(dev.device.connection(), memory)?);
        dev.arm_notifiers()?;
        dev.try_sync_interrupts()?;
        Ok(dev)
    }

    /// Connects ERR and REQ to the provider's eventfds (at attach, and again after a reset,
    /// which may have dropped them at the server).
    fn arm_notifiers(&mut self) -> Result<(), Error> {
        self.notifiers.clear();
        for kind in [InterruptKind::Err, InterruptKind::Req] {
            if !self.device.irq(kind.irq_index()).is_ok_and(|i| i.count > 0) {
                continue;
            }
            if let Some(fd) = self.interrupts.eventfd(kind, 0) {
                self.device.set_irq_eventfds(
                    kind.irq_index(),
                    IrqAction::Trigger,
                    0,
                    &[Some(&fd)],
                )?;
                self.notifiers.push(kind);
            }
        }
        Ok(())
    }

    fn place_bars(&mut self, placement: &BarPlacement) -> Result<(), Error> {
        if let BarPlacement::Fixed(list) = placement {
            if let Some((bar, _)) = list.iter().find(|(b, _)| self.bars.get(*b).is_none()) {
                return Err(Error::NoSuchBar(*bar));
            }
        }
        for bar in self.bars.infos() {
            let base = match placement {
                BarPlacement::Guest => None,
                BarPlacement::Fixed(list) => {
                    list.iter().find(|(b, _)| *b == bar.index).map(|(_, a)| *a)
                }
                BarPlacement::Allocator(alloc) => alloc(&bar),
            };
            if let Some(base) = base {
                self.bars.place(bar.index, base)?;
            }
        }
        Ok(())
    }

    /// Detaches the device: disconnects its interrupts, unmaps guest memory and closes the
    /// connection. With the connection already lost there is nothing to undo at the server
    /// (it dropped both on disconnect), and detach just closes. The first error met is
    /// returned; everything is closed regardless.
    pub fn detach(mut self) -> Result<(), Error> {
        self.status.detaching.store(true, Ordering::Release);
        self.status.eoi_unmasks_intx.store(false, Ordering::Release);
        if self.is_lost() {
            return Ok(());
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

    /// Follows a change of guest memory (hot-plug through a `GuestMemoryAtomic` given at
    /// attach): regions that appeared are mapped for the server, regions that went are
    /// unmapped.
    pub fn sync_guest_memory(&self) -> Result<(), Error> {
        match &self.dma {
            Some(dma) => dma.sync(),
            None => Ok(()),
        }
    }

    /// The transport-level device underneath.
    pub fn device(&self) -> &VfioUserDevice {
        &self.device
    }

    /// An eventfd signalled once when the device is lost (the server closed the connection
    /// or broke the protocol). Not signalled by detach.
    pub fn event(&self) -> &EventFd {
        &self.status.event
    }

    /// Whether the connection to the server is gone.
    pub fn is_lost(&self) -> bool {
        self.status.lost.load(Ordering::Acquire)
    }

    /// Errors met on paths that cannot return them (guest accesses, end of interrupt), not
    /// counting the loss of the connection. Each is also logged.
    pub fn error_count(&self) -> u64 {
        self.status.errors.load(Ordering::Relaxed)
    }

    /// The last such error (an [`Error::During`] naming what the device was doing), or
    /// why the device was lost ([`Error::Lost`]).
    pub fn last_error(&self) -> Option<Arc<Error>> {
        lock(&self.status.last_error).clone()
    }

    /// How the device interrupts the guest now.
    pub fn interrupt_mode(&self) -> InterruptMode {
        self.wired.mode
    }

    /// Unmasks INTx at the server: the guest ended an INTx interrupt. For VMMs whose
    /// interrupt controller notices the end of interrupt itself; with a resample eventfd
    /// from the [`InterruptProvider`] the subscriber does this. Nothing is sent unless the
    /// device is in INTx mode and the server masks INTx.
    pub fn end_of_interrupt(&self) -> Result<(), Error> {
        if self.wired.mode != InterruptMode::Intx || !self.intx_maskable || self.is_lost() {
            return Ok(());
        }
        self.device
            .irq_action(VFIO_PCI_INTX_IRQ_INDEX, IrqAction::Unmask, 0, 1)
            .map_err(Error::from)
    }

    /// Resets the device and the VMM-side state with it, in the order QEMU uses: the
    /// interrupts are disconnected (server and VMM), DEVICE_RESET is sent, ERR and REQ are
    /// connected again, and the interrupt setup starts over from the reset state (MSI and
    /// MSI-X disabled, every MSI-X vector masked, INTx as the command register allows).
    /// The BARs keep their placement. When DEVICE_RESET fails the shadows are kept and the
    /// interrupts reconnected as they were.
    pub fn reset(&mut self) -> Result<(), Error> {
        if !self.device.resettable() {
            return Err(device::Error::ResetNotSupported.into());
        }
        self.status.eoi_unmasks_intx.store(false, Ordering::Release);
        let disabled = interrupts::disable(&self.device, &*self.interrupts, &mut self.wired);
        let reset = self.device.reset().map_err(Error::from);
        if reset.is_ok() {
            if let Some(m) = &mut self.msi {
                m.reset();
            }
            if let Some(m) = &mut self.msix {
                m.reset();
            }
            self.bars.reset();
            self.command = 0;
        }
        let armed = self.arm_notifiers();
        let synced = self.try_sync_interrupts();
        reset.and(disabled).and(armed).and(synced)
    }

    /// The mappable areas of BAR `bar` at its current base (none while it is unplaced).
    /// After a move, the VMM removes the slots it installed for the old base and installs
    /// these.
    pub fn bar_mappings(&self, bar: u32) -> Vec<BarMapping> {
        let Some(info) = self.bars.get(bar) else {
            return Vec::new();
        };
        let (Some(base), true) = (info.base, info.kind.is_memory()) else {
            return Vec::new();
        };
        let Ok(region) = self.device.region(bar) else {
            return Vec::new();
        };
        let page = crate::negotiate::host_page_size();
        // Pages that must trap: the MSI-X table's and the pending bits'.
        let mut holes = Vec::new();
        if let Some(m) = &self.msix {
            if m.table_bar == bar {
                holes.push(page_span(m.table_offset, m.table_len(), page));
            }
            if m.pba_bar == bar {
                holes.push(page_span(m.pba_offset, m.pba_len(), page));
            }
        }
        let mut out = Vec::new();
        for area in region.mapped_areas() {
            let mut pieces = vec![(area.offset(), area.offset() + area.size())];
            for &(hs, he) in &holes {
                pieces = pieces
                    .into_iter()
                    .flat_map(|(s, e)| {
                        if he <= s || hs >= e {
                            vec![(s, e)]
                        } else {
                            [(s, hs), (he, e)]
                                .into_iter()
                                .filter(|(a, b)| a < b)
                                .collect()
                        }
                    })
                    .collect();
            }
            for (s, e) in pieces {
                out.push(BarMapping {
                    bar,
                    guest_addr: base + s,
                    host_addr: area.host_addr() as u64 + (s - area.offset()),
                    size: e - s,
                    writable: area.writable(),
                });
            }
        }
        out
    }

    fn try_sync_interrupts(&mut self) -> Result<(), Error> {
        let device = &self.device;
        let intx = self.intx && self.command & COMMAND_INTX_DISABLE == 0;
        let wanted = GuestInterrupts::read(self.msi.as_ref(), self.msix.as_ref(), intx, |k| {
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

    fn sync_interrupts(&mut self) {
        if let Err(e) = self.try_sync_interrupts() {
            self.status.record(Activity::InterruptSetup, e);
        }
    }

    /// After a write to MSI-X table entries `vectors`: only those are compared and sent,
    /// unless the mode itself is not set up yet.
    fn sync_msix_vectors(&mut self, vectors: std::ops::RangeInclusive<u32>) {
        let Some(m) = self.msix.as_ref().filter(|m| m.enabled()) else {
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

    fn config_read(&mut self, reg: usize) -> u32 {
        let Some(offset) = reg
            .checked_mul(4)
            .filter(|o| o.checked_add(4).is_some_and(|end| end <= self.config_size))
        else {
            return u32::MAX;
        };
        if self.is_lost() {
            return u32::MAX;
        }
        if Bars::owns(reg) {
            return self.bars.read(reg);
        }
        let mut b = [0u8; 4];
        if let Err(e) = self
            .device
            .read(VFIO_PCI_CONFIG_REGION_INDEX, offset as u64, &mut b)
        {
            self.status
                .record(Activity::ConfigRead { offset }, e.into());
            return u32::MAX;
        }
        self.snapshot.overlay(offset, &mut b);
        if let Some(m) = &self.msi {
            m.overlay(offset, &mut b);
        }
        if let Some(m) = &self.msix {
            m.overlay(offset, &mut b);
        }
        let mut value = u32::from_le_bytes(b);
        let msi_pending = self.msi.as_ref().and_then(Msi::pending_offset);
        if msi_pending == Some(offset) && self.wired.mode == InterruptMode::Msi {
            for v in 0..(self.wired.vector_count() as u32).min(32) {
                if self.wired.pending(v) {
                    value |= 1 << v;
                }
            }
        }
        value
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarReprogramming> {
        let start = reg
            .checked_mul(4)
            .filter(|s| s.checked_add(4).is_some_and(|end| end <= self.config_size));
        let within = usize::try_from(offset)
            .ok()
            .filter(|o| *o < 4 && o + data.len() <= 4);
        let (Some(start), Some(offset), true) = (start, within, matches!(data.len(), 1 | 2 | 4))
        else {
            log::debug!(
                "config write of {} bytes at register {reg} + {offset} ignored",
                data.len()
            );
            return Vec::new();
        };
        if self.is_lost() {
            return Vec::new();
        }
        if Bars::owns(reg) {
            let memory = self.command & COMMAND_MEMORY != 0;
            self.bars.write(reg, offset, data, memory);
            return self.bar_moves();
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
        if interrupts {
            self.sync_interrupts();
        }
        if let Err(e) = self
            .device
            .write(VFIO_PCI_CONFIG_REGION_INDEX, at as u64, data)
        {
            self.status
                .record(Activity::ConfigWrite { offset: at }, e.into());
        }
        moves
    }

    fn bar_moves(&mut self) -> Vec<BarReprogramming> {
        self.bars.moves(
            self.command & COMMAND_IO != 0,
            self.command & COMMAND_MEMORY != 0,
        )
    }

    fn decodes(&self, info: &BarInfo) -> bool {
        match info.kind {
            BarKind::Io => self.command & COMMAND_IO != 0,
            BarKind::Rom => self.command & COMMAND_MEMORY != 0 && self.bars.rom_enabled(),
            _ => self.command & COMMAND_MEMORY != 0,
        }
    }

    /// Reads `data.len()` bytes at `offset` of BAR `bar`'s window, as a guest access would:
    /// all ones when the window does not decode (command register, ROM enable), lies past
    /// the region or the end of the address space, or the server failed (the error is
    /// recorded). MSI-X table reads are answered here; pending bits the VMM keeps are ORed
    /// into the server's.
    pub fn bar_read(&mut self, bar: u32, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(info) = self.bars.get(bar) else {
            return;
        };
        if self.is_lost() || !self.decodes(&info) {
            return;
        }
        if offset.checked_add(data.len() as u64).is_none() {
            log::debug!("BAR {bar} read at {offset:#x} wraps around: dropped");
            return;
        }
        let table = self.msix_table(bar);
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (len, in_table) = piece(at, data.len() - done, table);
            let buf = &mut data[done..done + len];
            match (in_table, &self.msix, table) {
                (true, Some(m), Some((start, _))) => m.read_table(at - start, buf),
                _ => {
                    self.region_read(bar, at, buf);
                    self.overlay_pba(bar, at, buf);
                }
            }
            done += len;
        }
    }

    /// The MSI-X table's (offset, length) when it lives in BAR `bar`.
    fn msix_table(&self, bar: u32) -> Option<(u64, u64)> {
        self.msix
            .as_ref()
            .filter(|m| m.table_bar == bar)
            .map(|m| (m.table_offset, m.table_len()))
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
    pub fn bar_write(&mut self, bar: u32, offset: u64, data: &[u8]) {
        let Some(info) = self.bars.get(bar) else {
            return;
        };
        if self.is_lost() || !self.decodes(&info) || info.kind == BarKind::Rom {
            return;
        }
        if offset.checked_add(data.len() as u64).is_none() {
            log::debug!("BAR {bar} write at {offset:#x} wraps around: dropped");
            return;
        }
        let table = self.msix_table(bar);
        let mut done = 0usize;
        let mut written: Option<std::ops::RangeInclusive<u32>> = None;
        while done < data.len() {
            let at = offset + done as u64;
            let (len, in_table) = piece(at, data.len() - done, table);
            let buf = &data[done..done + len];
            match (in_table, &mut self.msix, table) {
                (true, Some(m), Some((start, _))) => {
                    m.write_table(at - start, buf);
                    let entries = Msix::entries(at - start, len as u64);
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

/// The length of the next piece of an access at `at` of `len` bytes that lies wholly inside
/// or wholly outside `table` (offset, length), and which it is.
fn piece(at: u64, len: usize, table: Option<(u64, u64)>) -> (usize, bool) {
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

fn page_span(offset: u64, len: u64, page: u64) -> (u64, u64) {
    let start = offset / page * page;
    let end = offset
        .saturating_add(len)
        .div_ceil(page)
        .saturating_mul(page);
    (start, end)
}

/// Connects, negotiates, and hooks the connection's loss to the device's state.
fn connect(
    path: &Path,
    options: &ConnectOptions,
    interrupts: &Arc<dyn InterruptProvider>,
) -> Result<((Connection, Arc<DeviceStatus>), PciSubscriber), Error> {
    let (connection, proxy_subscriber) =
        Connection::connect_with_subscriber(path, options).map_err(connect_error)?;
    let status = Arc::new(DeviceStatus::new()?);
    let for_callback = Arc::clone(&status);
    connection
        .proxy()
        .on_disconnect(move |reason| for_callback.lose(reason.clone()));
    let subscriber = PciSubscriber {
        proxy_subscriber,
        proxy: connection.proxy().clone(),
        status: Arc::clone(&status),
        resample: interrupts.intx_resample(),
    };
    Ok(((connection, status), subscriber))
}

/// The error of connecting: the connection's or the negotiation's. (The crate-level error
/// has room for every layer's; connecting produces only those two.)
fn connect_error(e: crate::Error) -> Error {
    match e {
        crate::Error::Proxy(e) => Error::Connect(e),
        crate::Error::Negotiate(e) => Error::Negotiate(e),
        crate::Error::Device(e) => Error::Device(e),
        crate::Error::Dma(e) => Error::Dma(e),
        crate::Error::Pci(e) => e,
    }
}

impl Drop for VfioUserPciDevice {
    fn drop(&mut self) {
        // Closing is not losing: the disconnect callback stays quiet.
        self.status.detaching.store(true, Ordering::Release);
    }
}

impl PciConfig for VfioUserPciDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.config_read(reg_idx)
    }

    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Vec<BarReprogramming> {
        self.config_write(reg_idx, offset, data)
    }

    fn move_bar(&mut self, bar: u32, new_base: u64) -> Result<(), Error> {
        self.bars.place(bar, new_base)
    }

    fn unmap_bar(&mut self, bar: u32) -> Result<(), Error> {
        self.bars.unplace(bar)
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.bars.infos()
    }
}

impl MutDeviceMmio for VfioUserPciDevice {
    fn mmio_read(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        match self.bars.at(base.0, true) {
            Some(bar) => self.bar_read(bar.index, offset, data),
            None => {
                log::debug!("MMIO read at {:#x}+{offset:#x}: no BAR there", base.0);
                data.fill(0xff);
            }
        }
    }

    fn mmio_write(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        match self.bars.at(base.0, true) {
            Some(bar) => self.bar_write(bar.index, offset, data),
            None => log::debug!("MMIO write at {:#x}+{offset:#x}: no BAR there", base.0),
        }
    }
}

impl MutDevicePio for VfioUserPciDevice {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match self.bars.at(u64::from(base.0), false) {
            Some(bar) => self.bar_read(bar.index, u64::from(offset), data),
            None => {
                log::debug!("port read at {:#x}+{offset:#x}: no BAR there", base.0);
                data.fill(0xff);
            }
        }
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match self.bars.at(u64::from(base.0), false) {
            Some(bar) => self.bar_write(bar.index, u64::from(offset), data),
            None => log::debug!("port write at {:#x}+{offset:#x}: no BAR there", base.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{page_span, piece};

    #[test]
    fn pieces_split_at_the_table() {
        let t = Some((0x800, 0x40));
        assert_eq!(piece(0, 8, t), (8, false));
        assert_eq!(piece(0x7fc, 8, t), (4, false));
        assert_eq!(piece(0x800, 8, t), (8, true));
        assert_eq!(piece(0x83c, 8, t), (4, true));
        assert_eq!(piece(0x840, 8, t), (8, false));
        assert_eq!(piece(0x10, 4, None), (4, false));
        assert_eq!(page_span(0x800, 0x40, 0x1000), (0, 0x1000));
        assert_eq!(page_span(0xff8, 0x10, 0x1000), (0, 0x2000));
    }
}
