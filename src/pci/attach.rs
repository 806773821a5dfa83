// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Attaching: the options, and the steps from a connection to a device on the VMM's buses
//! (discovery, config space and its shadows, BAR placement, guest memory, notifiers).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend};

use super::config::{self, CONFIG_SIZE, HEADER_TYPE};
use super::interrupts::{server_masks, WiredInterrupts};
use super::irq_counts::{self, Offered};
use super::memory;
use super::msi::Msi;
use super::msix::Msix;
use super::shadow::ConfigShadow;
use super::state::DeviceIdentity;
use super::status::DeviceStatus;
use super::subscriber::SubscriberSwap;
use super::ReconnectPolicy;
use super::{
    BarInfo, BarReprogramming, Core, Error, InterruptKind, InterruptProvider, PciSubscriber,
    VfioUserPciDevice,
};
use crate::connection::{ConnectOptions, Connection};
use crate::device::{DeviceOptions, IrqAction, VfioUserDevice};
use crate::dma::{DmaOptions, DmaRegion};

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
    /// The VMM's allocator is asked for each BAR in turn: it returns the BAR's base, or
    /// `None` to leave it to the guest.
    Allocator(AllocateBar),
}

/// The VMM's BAR allocator of [`BarPlacement::Allocator`].
type AllocateBar = Arc<dyn Fn(&BarInfo) -> Option<u64> + Send + Sync>;

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
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// use vfio_user_client::pci::{AttachOptions, BarInfo, BarPlacement};
/// use vfio_user_client::{ConnectOptions, DeviceOptions};
///
/// // The VMM's allocator for the PCI memory hole; I/O BARs are left to the guest.
/// let next = Mutex::new(0xc000_0000_u64);
/// let allocate = move |bar: &BarInfo| {
///     if !bar.kind.is_memory() {
///         return None;
///     }
///     let mut next = next.lock().ok()?;
///     let base = next.next_multiple_of(bar.size);
///     *next = base + bar.size;
///     Some(base)
/// };
/// let options = AttachOptions {
///     connect: ConnectOptions {
///         reply_timeout: Duration::from_secs(2),
///         ..ConnectOptions::default()
///     },
///     device: DeviceOptions {
///         posted_writes: false,
///         ..DeviceOptions::default()
///     },
///     bars: BarPlacement::Allocator(Arc::new(allocate)),
///     ..AttachOptions::default()
/// };
/// # assert!(options.reset);
/// ```
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
    /// Reconnect when the connection is lost, and restore the device; `None` (the
    /// default): a lost device stays lost.
    pub reconnect: Option<ReconnectPolicy>,
    /// Which guest memory the server may reach, and how (default: all of it, shared files
    /// by fd). See [`DmaOptions`] and [`VfioUserPciDevice::dma`] for the windows the VMM
    /// maps itself.
    pub dma: DmaOptions,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            connect: ConnectOptions::default(),
            device: DeviceOptions::default(),
            reset: true,
            bars: BarPlacement::default(),
            reconnect: None,
            dma: DmaOptions::default(),
        }
    }
}

impl Core {
    /// Attaches the device behind a negotiated connection: discovery, reset, config space
    /// and its shadows, BAR placement, guest memory, notifiers and interrupts.
    pub(super) fn build<AS>(
        (connection, status): (Connection, Arc<DeviceStatus>),
        memory: AS,
        interrupts: Arc<dyn InterruptProvider>,
        options: &AttachOptions,
    ) -> Result<Core, Error>
    where
        AS: GuestAddressSpace + Send + Sync + 'static,
        AS::M: GuestMemoryBackend,
        <AS::M as GuestMemoryBackend>::R: DmaRegion,
    {
        let device = VfioUserDevice::new(connection, &options.device)?;
        if options.reset && device.is_pci() && device.resettable() {
            device.reset()?;
        }
        let (identity, config, shadow) = discover(&device)?;
        let intx = config[config::INTERRUPT_PIN] != 0
            && device
                .irq(VFIO_PCI_INTX_IRQ_INDEX)
                .is_ok_and(|i| i.count > 0);
        let intx_maskable = server_masks(&device, InterruptKind::Intx);
        log::debug!(
            "PCI device: {:04x}:{:04x}, BARs {:?}, MSI {}, MSI-X {}, INTx {intx}",
            u16::from_le_bytes([config[0], config[1]]),
            u16::from_le_bytes([config[2], config[3]]),
            shadow.bars.infos(),
            shadow.msi.is_some(),
            shadow.msix.as_ref().map_or(0, Msix::size),
        );
        let mut dev = Core {
            device: Arc::new(device),
            status,
            interrupts,
            dma: None,
            shadow,
            identity,
            intx,
            intx_maskable,
            notifiers: Vec::new(),
            saved: false,
            wired: WiredInterrupts::default(),
            retired: None,
            slots: Default::default(),
            event_loop: None,
        };
        dev.place_bars(&options.bars)?;
        dev.dma = Some(memory::map_guest_memory(
            dev.device.connection(),
            memory,
            &options.dma,
        )?);
        dev.arm_notifiers()?;
        dev.try_sync_interrupts()?;
        Ok(dev)
    }

    /// Connects ERR and REQ to the provider's eventfds (at attach, and again after a reset,
    /// which may have dropped them at the server).
    pub(super) fn arm_notifiers(&mut self) -> Result<(), Error> {
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

    pub(super) fn place_bars(&mut self, placement: &BarPlacement) -> Result<(), Error> {
        if let BarPlacement::Fixed(list) = placement {
            if let Some((bar, _)) = list
                .iter()
                .find(|(b, _)| self.shadow.bars.get(*b).is_none())
            {
                return Err(Error::NoSuchBar(*bar));
            }
        }
        for bar in self.shadow.bars.infos() {
            let base = match placement {
                BarPlacement::Guest => None,
                BarPlacement::Fixed(list) => {
                    list.iter().find(|(b, _)| *b == bar.index).map(|(_, a)| *a)
                }
                BarPlacement::Allocator(alloc) => alloc(&bar),
            };
            if let Some(base) = base {
                self.shadow.bars.place(bar.index, base)?;
            }
        }
        Ok(())
    }
}

/// Discovers what the device is from its config space (the standard header and
/// capabilities), regions and IRQs: its identity, the config bytes read and a fresh shadow.
/// Checks that config space does not offer more vectors than the server reports.
pub(super) fn discover(
    device: &VfioUserDevice,
) -> Result<(DeviceIdentity, Vec<u8>, ConfigShadow), Error> {
    let config_size = config_size(device)?;
    let config = read_config(device)?;
    let shadow = ConfigShadow::discover(&config, config_size, |i| {
        device.region(i).map_or((0, 0), |r| (r.size(), r.flags()))
    })?;
    let offered = Offered {
        pin: config[config::INTERRUPT_PIN],
        msi: shadow.msi.as_ref().map(Msi::capable_vectors),
        msix: shadow.msix.as_ref().map(Msix::size),
    };
    irq_counts::check(offered, |kind| {
        device.irq(kind.irq_index()).map_or(0, |irq| irq.count)
    })?;
    let identity = DeviceIdentity::of(device, &config, &shadow);
    Ok((identity, config, shadow))
}

impl VfioUserPciDevice {
    /// Places every BAR that is not placed yet at the base `allocator` gives it (`None`
    /// leaves it to the guest), as Cloud Hypervisor's `allocate_bars`, and returns the
    /// first placements (relocations without an old base) for the VMM to register on its
    /// buses. A base must be aligned to the BAR's size, I/O BARs included (see
    /// [`PciConfig`](super::PciConfig#alignment)); on an error, the BARs placed before it
    /// stay placed.
    pub fn allocate_bars(
        &mut self,
        mut allocator: impl FnMut(&BarInfo) -> Option<u64>,
    ) -> Result<Vec<BarReprogramming>, Error> {
        let mut core = self.core();
        let mut placed = Vec::new();
        let mut result = Ok(());
        for bar in core.shadow.bars.infos() {
            if bar.base.is_some() {
                continue;
            }
            let Some(base) = allocator(&bar) else {
                continue;
            };
            match core.shadow.bars.relocate(bar.index, base) {
                Ok(relocation) => placed.push(relocation),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        core.sync_slots();
        result.map(|()| placed)
    }

    /// Takes every placed BAR off the bus and returns them as they were placed (bases
    /// included), for the VMM to free their addresses (Cloud Hypervisor's `free_bars`) and
    /// take the windows off its buses. The registers keep what the guest wrote.
    pub fn free_bars(&mut self) -> Vec<BarInfo> {
        let mut core = self.core();
        let placed: Vec<BarInfo> = core
            .shadow
            .bars
            .infos()
            .into_iter()
            .filter(|b| b.base.is_some())
            .collect();
        for bar in &placed {
            // Every BAR listed exists.
            let _ = core.shadow.bars.unplace(bar.index);
        }
        core.sync_slots();
        placed
    }
}

/// The size of config space the device serves, after checking that it is a PCI device with
/// a usable config space region.
fn config_size(device: &VfioUserDevice) -> Result<usize, Error> {
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
    Ok(region.size().min(MAX_CONFIG_SIZE) as usize)
}

/// The standard config space, which must have an endpoint's (type 0) header.
fn read_config(device: &VfioUserDevice) -> Result<Vec<u8>, Error> {
    let mut config = vec![0u8; CONFIG_SIZE];
    device.read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut config)?;
    let header = config[HEADER_TYPE] & 0x7f;
    if header != 0 {
        return Err(Error::HeaderType(header));
    }
    Ok(config)
}

/// What [`connect`] returns: the connection and the device status it reports its loss
/// to, the subscriber, and with a reconnect policy the subscriber's swap slot.
pub(super) type Connected = (
    (Connection, Arc<DeviceStatus>),
    PciSubscriber,
    Option<Arc<SubscriberSwap>>,
);

/// Connects, negotiates, and hooks the connection's loss to the device's state.
pub(super) fn connect(
    path: &Path,
    options: &AttachOptions,
    interrupts: &Arc<dyn InterruptProvider>,
) -> Result<Connected, Error> {
    let (connection, connection_subscriber) =
        Connection::connect_with_subscriber(path, &options.connect).map_err(connect_error)?;
    let status = Arc::new(DeviceStatus::new()?);
    watch_loss(&connection, &status);
    let swap = match options.reconnect {
        Some(_) => Some(Arc::new(SubscriberSwap::new()?)),
        None => None,
    };
    let subscriber = PciSubscriber {
        connection_subscriber,
        connection: connection.handle(),
        status: Arc::clone(&status),
        resample: interrupts.intx_resample(),
        swap: swap.clone(),
    };
    Ok(((connection, status), subscriber, swap))
}

/// Reports the loss of `connection`, the newest, to `status`.
pub(super) fn watch_loss(connection: &Connection, status: &Arc<DeviceStatus>) {
    let generation = status.next_generation();
    let for_callback = Arc::clone(status);
    connection
        .on_disconnect(move |reason| for_callback.lose_generation(generation, reason.clone()));
}

/// The error of connecting: the connection's or the negotiation's. (The crate-level error
/// has room for every layer's; connecting produces only those two.)
pub(super) fn connect_error(e: crate::Error) -> Error {
    match e {
        crate::Error::Connection(e) => Error::Connect(e),
        crate::Error::Negotiate(e) => Error::Negotiate(e),
        crate::Error::Device(e) => Error::Device(e),
        crate::Error::Dma(e) => Error::Dma(e),
        crate::Error::Pci(e) => e,
    }
}
