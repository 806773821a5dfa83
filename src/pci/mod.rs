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
//!   here; masking a vector masks it at the server too (SET_IRQS MASK), so the server's
//!   pending bit array, which guest reads of the PBA return, stays true. INTx is unmasked at
//!   the server when the guest ends the interrupt, not on every BAR access.
//! * **Lifecycle**: [`VfioUserPciDevice::attach`] connects, negotiates, discovers, resets the
//!   device when it can, shares guest memory, places the BARs and connects INTx, ERR and REQ;
//!   [`VfioUserPciDevice::detach`] undoes that. A lost connection makes guest reads return
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
pub use error::Error;
pub use interrupts::{InterruptKind, InterruptMode, InterruptProvider, MsiMessage};
pub use subscriber::PciSubscriber;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{MutDeviceMmio, MutDevicePio};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::connection::{ConnectOptions, Connection};
use crate::device::{self, pci_irq, pci_region, DeviceOptions, IrqAction, VfioUserDevice};
use crate::protocol::{
    Command, SetIrqs, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_NONE, REGION_INFO_FLAG_READ,
    REGION_INFO_FLAG_WRITE,
};
use crate::proxy::{EventLoop, Proxy, Ticket};
use config::{merge, Bars, COMMAND, COMMAND_IO, COMMAND_MEMORY, CONFIG_SIZE, HEADER_TYPE};
use interrupts::{reconcile, Applied, Wanted};
use memory::GuestDma;
use msi::Msi;
use msix::Msix;

/// Largest config space the device serves (PCI Express extended config space).
const MAX_CONFIG_SIZE: u64 = 4096;
/// INTx unmask requests sent from the event loop and not yet collected, past which the
/// oldest is waited for there.
const MAX_PENDING_UNMASKS: usize = 64;

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

/// State shared with the subscriber and the disconnect callback.
pub(crate) struct Shared {
    lost: AtomicBool,
    detaching: AtomicBool,
    event: EventFd,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    intx_active: AtomicBool,
    unmasks: Mutex<Vec<Ticket>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn new() -> Result<Shared, Error> {
        Ok(Shared {
            lost: AtomicBool::new(false),
            detaching: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
                what: "creating the device event",
                source,
            })?,
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            intx_active: AtomicBool::new(false),
            unmasks: Mutex::new(Vec::new()),
        })
    }

    /// The connection is gone: log once and tell the VMM (unless it is detaching).
    fn lose(&self, why: &str) {
        if self.lost.swap(true, Ordering::AcqRel) || self.detaching.load(Ordering::Acquire) {
            return;
        }
        log::error!("vfio-user PCI device lost ({why}): guest reads return all ones");
        *lock(&self.last_error) = Some(format!("device lost: {why}"));
        if let Err(e) = self.event.write(1) {
            log::error!("cannot signal the device event: {e}");
        }
    }

    /// Records an error met on a path that cannot return it (a guest access).
    fn record(&self, what: &str, e: &Error) {
        if e.is_disconnected() {
            self.lose(&e.to_string());
            return;
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        let text = format!("{what}: {e}");
        log::warn!("vfio-user PCI device: {text}");
        *lock(&self.last_error) = Some(text);
    }

    /// Sends the INTx unmask from the event loop without waiting for its reply; the reply
    /// is collected by the next guest access (whose own reply comes later on the stream).
    pub(crate) fn post_intx_unmask(&self, proxy: &Proxy) {
        if !self.intx_active.load(Ordering::Acquire) || self.lost.load(Ordering::Acquire) {
            return;
        }
        let mut payload = Vec::with_capacity(SetIrqs::HEAD_SIZE);
        SetIrqs::new(
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
            pci_irq::INTX,
            0,
            1,
            Vec::new(),
        )
        .encode_into(&mut payload);
        match proxy.send_nowait(Command::DeviceSetIrqs, &payload, &[]) {
            Ok(ticket) => {
                let oldest = {
                    let mut q = lock(&self.unmasks);
                    q.push(ticket);
                    (q.len() > MAX_PENDING_UNMASKS).then(|| q.remove(0))
                };
                if let Some(t) = oldest {
                    self.collect(proxy, t);
                }
            }
            Err(e) => self.record("INTx unmask", &unmask_error(e)),
        }
    }

    /// Collects the replies of INTx unmasks sent from the event loop.
    fn reap(&self, proxy: &Proxy) {
        let tickets = std::mem::take(&mut *lock(&self.unmasks));
        for t in tickets {
            self.collect(proxy, t);
        }
    }

    fn collect(&self, proxy: &Proxy, ticket: Ticket) {
        if let Err(e) = proxy.wait(ticket) {
            self.record("INTx unmask", &unmask_error(e));
        }
    }
}

fn unmask_error(source: crate::proxy::Error) -> Error {
    Error::Device(device::Error::Request {
        what: "DEVICE_SET_IRQS UNMASK of INTx".to_string(),
        source,
    })
}

/// A vfio-user device on a VMM's PCI bus. See the [module documentation](self).
pub struct VfioUserPciDevice {
    device: Arc<VfioUserDevice>,
    shared: Arc<Shared>,
    interrupts: Arc<dyn InterruptProvider>,
    dma: Option<Box<dyn GuestDma>>,
    config_size: usize,
    bars: Bars,
    msi: Option<Msi>,
    msix: Option<Msix>,
    /// The device has an interrupt pin and an INTx vector.
    intx: bool,
    /// ERR and REQ were connected at attach.
    notifiers: Vec<InterruptKind>,
    command: u16,
    applied: Applied,
    // Declared last: stopped after the connection is shut down.
    event_loop: Option<EventLoop>,
}

impl fmt::Debug for VfioUserPciDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioUserPciDevice")
            .field("bars", &self.bars.infos())
            .field("mode", &self.applied.mode)
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
    /// capabilities), shares `memory` with the server, places the BARs and connects INTx,
    /// ERR and REQ to the provider's eventfds.
    pub fn attach<AS>(
        path: impl AsRef<Path>,
        memory: AS,
        interrupts: Arc<dyn InterruptProvider>,
        options: &AttachOptions,
    ) -> Result<VfioUserPciDevice, Error>
    where
        AS: GuestAddressSpace + Send + Sync + 'static,
        AS::M: GuestMemoryBackend,
    {
        let (connection, subscriber) = connect(path.as_ref(), &options.connect, &interrupts)?;
        let event_loop = EventLoop::spawn(subscriber).map_err(crate::Error::from)?;
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
    {
        let (connection, subscriber) = connect(path.as_ref(), &options.connect, &interrupts)?;
        let dev = VfioUserPciDevice::build(connection, memory, interrupts, options)?;
        Ok((dev, subscriber))
    }

    fn build<AS>(
        (connection, shared): (Connection, Arc<Shared>),
        memory: AS,
        interrupts: Arc<dyn InterruptProvider>,
        options: &AttachOptions,
    ) -> Result<VfioUserPciDevice, Error>
    where
        AS: GuestAddressSpace + Send + Sync + 'static,
        AS::M: GuestMemoryBackend,
    {
        let device = VfioUserDevice::new(connection, &options.device)?;
        if !device.is_pci() {
            return Err(Error::NotPci);
        }
        let region = device.region(pci_region::CONFIG)?;
        let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
        if region.size() < CONFIG_SIZE as u64 || region.flags() & rw != rw {
            return Err(Error::ConfigRegion(format!(
                "region {} has {} bytes and flags {:#x}; needs at least {CONFIG_SIZE} bytes, \
                 readable and writable",
                pci_region::CONFIG,
                region.size(),
                region.flags()
            )));
        }
        let config_size = region.size().min(MAX_CONFIG_SIZE) as usize;
        if options.reset && device.resettable() {
            device.reset()?;
        }
        let mut config = vec![0u8; CONFIG_SIZE];
        device.read(pci_region::CONFIG, 0, &mut config)?;
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
        let msix = caps::find(&found, caps::CAP_ID_MSIX)
            .map(|at| Msix::parse(&config, at, &bars.infos()))
            .transpose()?;
        let intx = config[config::INTERRUPT_PIN] != 0
            && device.irq(pci_irq::INTX).is_ok_and(|i| i.count > 0);
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
            shared,
            interrupts,
            dma: None,
            config_size,
            bars,
            msi,
            msix,
            intx,
            notifiers: Vec::new(),
            command,
            applied: Applied::default(),
            event_loop: None,
        };
        dev.place_bars(&options.bars)?;
        dev.dma = Some(memory::map_guest_memory(dev.device.connection(), memory)?);
        for kind in [InterruptKind::Err, InterruptKind::Req] {
            if dev.device.irq(kind.irq_index()).is_ok_and(|i| i.count > 0) {
                if let Some(fd) = dev.interrupts.eventfd(kind, 0) {
                    dev.device.set_irq_eventfds(
                        kind.irq_index(),
                        IrqAction::Trigger,
                        0,
                        &[Some(&fd)],
                    )?;
                    dev.notifiers.push(kind);
                }
            }
        }
        dev.try_sync_interrupts()?;
        Ok(dev)
    }

    fn place_bars(&mut self, placement: &BarPlacement) -> Result<(), Error> {
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
        self.shared.detaching.store(true, Ordering::Release);
        if self.is_lost() {
            return Ok(());
        }
        let proxy = self.device.connection().proxy().clone();
        self.shared.reap(&proxy);
        let mut first_error: Option<Error> = None;
        let mode = std::mem::take(&mut self.applied.mode);
        let kinds = match mode {
            InterruptMode::None => None,
            InterruptMode::Intx => Some(InterruptKind::Intx),
            InterruptMode::Msi => Some(InterruptKind::Msi),
            InterruptMode::Msix => Some(InterruptKind::Msix),
        };
        for kind in kinds.into_iter().chain(self.notifiers.drain(..)) {
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

    /// The transport-level device underneath.
    pub fn device(&self) -> &VfioUserDevice {
        &self.device
    }

    /// An eventfd signalled once when the device is lost (the server closed the connection
    /// or broke the protocol). Not signalled by detach.
    pub fn event(&self) -> &EventFd {
        &self.shared.event
    }

    /// Whether the connection to the server is gone.
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::Acquire)
    }

    /// Errors met on paths that cannot return them (guest accesses, end of interrupt), not
    /// counting the loss of the connection. Each is also logged.
    pub fn error_count(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// The last such error, or why the device was lost.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// How the device interrupts the guest now.
    pub fn interrupt_mode(&self) -> InterruptMode {
        self.applied.mode
    }

    /// Unmasks INTx at the server: the guest ended an INTx interrupt. For VMMs whose
    /// interrupt controller notices the end of interrupt itself; with a resample eventfd
    /// from the [`InterruptProvider`] the subscriber does this. Nothing is sent unless the
    /// device is in INTx mode.
    pub fn end_of_interrupt(&self) -> Result<(), Error> {
        if self.applied.mode != InterruptMode::Intx || self.is_lost() {
            return Ok(());
        }
        self.shared.reap(self.device.connection().proxy());
        self.device
            .irq_action(pci_irq::INTX, IrqAction::Unmask, 0, 1)
            .map_err(Error::from)
    }

    /// Resets the device (DEVICE_RESET) and the VMM-side state with it: MSI and MSI-X are
    /// disabled, every MSI-X vector masked, the BARs keep their placement.
    pub fn reset(&mut self) -> Result<(), Error> {
        self.device.reset()?;
        if let Some(m) = &mut self.msi {
            m.reset();
        }
        if let Some(m) = &mut self.msix {
            m.reset();
        }
        self.bars.reset();
        self.command = 0;
        self.try_sync_interrupts()
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
        let wanted = Wanted::from(self.msi.as_ref(), self.msix.as_ref(), self.intx, |k| {
            device.irq(k.irq_index()).map_or(0, |i| i.count)
        });
        let result = reconcile(device, &*self.interrupts, &mut self.applied, wanted);
        self.shared
            .intx_active
            .store(self.applied.mode == InterruptMode::Intx, Ordering::Release);
        result
    }

    fn sync_interrupts(&mut self) {
        if let Err(e) = self.try_sync_interrupts() {
            self.shared.record("interrupt setup", &e);
        }
    }

    fn after_request(&self) {
        self.shared.reap(self.device.connection().proxy());
    }

    fn config_read(&mut self, reg: usize) -> u32 {
        let offset = reg.saturating_mul(4);
        if offset + 4 > self.config_size || self.is_lost() {
            return u32::MAX;
        }
        if Bars::owns(reg) {
            return self.bars.read(reg);
        }
        let mut b = [0u8; 4];
        if let Err(e) = self.device.read(pci_region::CONFIG, offset as u64, &mut b) {
            self.shared
                .record(&format!("config read at {offset:#x}"), &e.into());
            return u32::MAX;
        }
        self.after_request();
        if let Some(m) = &self.msi {
            m.overlay(offset, &mut b);
        }
        if let Some(m) = &self.msix {
            m.overlay(offset, &mut b);
        }
        if offset == HEADER_TYPE & !3 {
            // One function per device: never claim to be multi-function.
            b[HEADER_TYPE % 4] &= 0x7f;
        }
        u32::from_le_bytes(b)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarReprogramming> {
        let at = reg.saturating_mul(4).saturating_add(offset as usize);
        let valid = matches!(data.len(), 1 | 2 | 4)
            && offset as usize + data.len() <= 4
            && reg.saturating_mul(4) + 4 <= self.config_size;
        if !valid {
            log::debug!(
                "config write of {} bytes at register {reg} + {offset} ignored",
                data.len()
            );
            return Vec::new();
        }
        if self.is_lost() {
            return Vec::new();
        }
        if Bars::owns(reg) {
            return self
                .bars
                .write(reg, offset as usize, data)
                .into_iter()
                .collect();
        }
        let mut interrupts = false;
        if let Some(m) = &mut self.msi {
            interrupts |= m.write(at, data);
        }
        if let Some(m) = &mut self.msix {
            interrupts |= m.write(at, data);
        }
        if reg == COMMAND / 4 && (offset as usize) < 2 {
            let merged = merge(u32::from(self.command), offset as usize, data);
            self.command = merged as u16;
        }
        if interrupts {
            self.sync_interrupts();
        }
        match self.device.write(pci_region::CONFIG, at as u64, data) {
            Ok(()) => self.after_request(),
            Err(e) => self
                .shared
                .record(&format!("config write at {at:#x}"), &e.into()),
        }
        Vec::new()
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
    /// the region, or the server failed (the error is recorded).
    pub fn bar_read(&mut self, bar: u32, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(info) = self.bars.get(bar) else {
            return;
        };
        if self.is_lost() || !self.decodes(&info) {
            return;
        }
        let table = self
            .msix
            .as_ref()
            .filter(|m| m.table_bar == bar)
            .map(|m| (m.table_offset, m.table_len()));
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (len, in_table) = piece(at, data.len() - done, table);
            let buf = &mut data[done..done + len];
            if in_table {
                if let Some(m) = &self.msix {
                    m.read_table(at - table.map_or(0, |t| t.0), buf);
                }
            } else {
                self.region_read(bar, at, buf);
            }
            done += len;
        }
    }

    fn region_read(&mut self, bar: u32, at: u64, buf: &mut [u8]) {
        let size = self.device.region(bar).map_or(0, |r| r.size());
        if at + buf.len() as u64 > size {
            return;
        }
        match self.device.read(bar, at, buf) {
            Ok(()) => self.after_request(),
            Err(e) => {
                buf.fill(0xff);
                self.shared
                    .record(&format!("BAR {bar} read at {at:#x}"), &e.into());
            }
        }
    }

    /// Writes `data` at `offset` of BAR `bar`'s window, as a guest access would: dropped
    /// when the window does not decode; MSI-X table writes are emulated here; the rest goes
    /// to the server, posted when the device layer allows (a refused posted write cannot be
    /// reported; [`DeviceOptions::posted_writes`] turns posting off).
    pub fn bar_write(&mut self, bar: u32, offset: u64, data: &[u8]) {
        let Some(info) = self.bars.get(bar) else {
            return;
        };
        if self.is_lost() || !self.decodes(&info) || info.kind == BarKind::Rom {
            return;
        }
        let table = self
            .msix
            .as_ref()
            .filter(|m| m.table_bar == bar)
            .map(|m| (m.table_offset, m.table_len()));
        let mut done = 0usize;
        let mut table_written = false;
        while done < data.len() {
            let at = offset + done as u64;
            let (len, in_table) = piece(at, data.len() - done, table);
            let buf = &data[done..done + len];
            if in_table {
                if let Some(m) = &mut self.msix {
                    m.write_table(at - table.map_or(0, |t| t.0), buf);
                    table_written = true;
                }
            } else {
                let size = self.device.region(bar).map_or(0, |r| r.size());
                if at + buf.len() as u64 <= size {
                    if let Err(e) = self.device.write_posted(bar, at, buf) {
                        self.shared
                            .record(&format!("BAR {bar} write at {at:#x}"), &e.into());
                    }
                }
            }
            done += len;
        }
        if table_written && self.msix.as_ref().is_some_and(Msix::enabled) {
            self.sync_interrupts();
        }
    }
}

/// The length of the next piece of an access at `at` of `len` bytes that lies wholly inside
/// or wholly outside `table` (offset, length), and which it is.
fn piece(at: u64, len: usize, table: Option<(u64, u64)>) -> (usize, bool) {
    let Some((start, tlen)) = table else {
        return (len, false);
    };
    let end = start + tlen;
    let len64 = len as u64;
    if at >= start && at < end {
        ((end - at).min(len64) as usize, true)
    } else if at < start && at + len64 > start {
        ((start - at) as usize, false)
    } else {
        (len, false)
    }
}

fn page_span(offset: u64, len: u64, page: u64) -> (u64, u64) {
    let start = offset / page * page;
    let end = (offset + len).div_ceil(page) * page;
    (start, end)
}

/// Connects, negotiates, and hooks the connection's loss to the device's state.
fn connect(
    path: &Path,
    options: &ConnectOptions,
    interrupts: &Arc<dyn InterruptProvider>,
) -> Result<((Connection, Arc<Shared>), PciSubscriber), Error> {
    let (connection, proxy_subscriber) = Connection::connect_with_subscriber(path, options)?;
    let shared = Arc::new(Shared::new()?);
    let for_callback = Arc::clone(&shared);
    connection
        .proxy()
        .on_disconnect(move |reason| for_callback.lose(&reason.to_string()));
    let subscriber = PciSubscriber {
        proxy_subscriber,
        proxy: connection.proxy().clone(),
        shared: Arc::clone(&shared),
        resample: interrupts.intx_resample(),
    };
    Ok(((connection, shared), subscriber))
}

impl Drop for VfioUserPciDevice {
    fn drop(&mut self) {
        // Closing is not losing: the disconnect callback stays quiet.
        self.shared.detaching.store(true, Ordering::Release);
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
