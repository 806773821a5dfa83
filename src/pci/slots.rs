// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest memory slots and doorbells: the mappable areas of the BARs and the server's
//! ioeventfds, kept installed in the VMM's hypervisor through [`GuestSlots`].
//!
//! What should be installed is derived from the config-space shadow alone, every time:
//! a BAR's areas and ioeventfds are installed while the BAR is placed and its window
//! decodes (the command register's memory or I/O bit), at the BAR's current base. After
//! anything that may change that (a config write, a BAR move or rollback, reset, restore)
//! the device compares the derived set with what the VMM holds, removes what went and adds
//! what came, removals first. Detach removes everything before the areas are unmapped.
//!
//! A slot never covers a page that must trap: the MSI-X table's and pending bits' pages
//! (the table is emulated here, the pending bits are ORed with the emulated ones), nor the
//! page of an ioeventfd (a write to memory in a slot does not exit, so the hypervisor
//! would never see the doorbell).

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::config::{BarInfo, BarSpace};
use super::msix::Msix;
use super::{Activity, Core, Error, VfioUserPciDevice};
use crate::device::{self, VfioUserDevice};
use crate::protocol::IoSubregion;

/// A mappable area of a placed BAR: host memory the VMM may install as a guest memory slot
/// so that guest accesses there do not exit. The MSI-X table's and pending bits' pages are
/// left out (they must trap), and so are the pages of the doorbells the device manages.
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

/// A doorbell: one of the server's ioeventfds (DEVICE_GET_REGION_IO_FDS) at its BAR's
/// current guest address. A guest write there signals `fd` in the hypervisor, with no exit
/// to the VMM and no message on the socket (KVM's `KVM_IOEVENTFD`).
#[derive(Clone, Debug)]
pub struct Doorbell {
    /// The BAR.
    pub bar: u32,
    /// The bus: MMIO (KVM's MMIO bus) or port I/O (`KVM_IOEVENTFD_FLAG_PIO`).
    pub space: BarSpace,
    /// Guest address (or port) of the register.
    pub guest_addr: u64,
    /// Size of the write that triggers it, in bytes (1, 2, 4 or 8); 0 for any size.
    pub size: u64,
    /// The value a write must carry to trigger it; `None` for any value.
    pub datamatch: Option<u64>,
    /// The eventfd the server reads.
    pub fd: Arc<OwnedFd>,
}

impl PartialEq for Doorbell {
    fn eq(&self, other: &Doorbell) -> bool {
        (
            self.bar,
            self.space,
            self.guest_addr,
            self.size,
            self.datamatch,
        ) == (
            other.bar,
            other.space,
            other.guest_addr,
            other.size,
            other.datamatch,
        ) && self.fd.as_raw_fd() == other.fd.as_raw_fd()
    }
}

impl Eq for Doorbell {}

/// The VMM's guest memory slots and ioeventfds, driven by the device (see
/// [`VfioUserPciDevice::manage_slots`]). A KVM VMM implements it with
/// `KVM_SET_USER_MEMORY_REGION` and `KVM_IOEVENTFD`; `examples/vmm` has one.
///
/// Calls come from whatever thread drives the device (a vCPU's config write, the VMM's
/// `move_bar`), with the device's lock held: an implementation takes only locks of its own
/// and does not call back into the device. A failing call is logged and counted
/// ([`VfioUserPciDevice::error_count`]); the device carries on (the area stays trapped, the
/// doorbell a message), and tries again at the next change.
///
/// With a [`ReconnectPolicy`](super::ReconnectPolicy), a lost connection withdraws
/// everything at once (the reconnect supervisor does it), and a reconnect installs the new
/// server's mappings and ioeventfds (it asks DEVICE_GET_REGION_IO_FDS again); restoring a
/// [`PciState`](super::PciState) moves them to the restored BAR bases. Without a policy,
/// what the VMM holds after a loss stays until the next change (a config write, a BAR
/// call, detach), which withdraws it all: until then guest accesses to a slot reach the
/// dead server's memory, which stays mapped, instead of reading all ones.
///
/// ```
/// use std::io;
/// use std::sync::{Arc, Mutex};
///
/// use vfio_user_client::pci::{
///     BarMapping, BarPlacement, Doorbell, GuestSlots, InterruptKind, InterruptProvider,
///     PciConfig,
/// };
/// use vfio_user_client::{AttachOptions, VfioUserPciDevice};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
/// use vmm_sys_util::eventfd::EventFd;
///
/// /// A VMM's hypervisor state; a KVM VMM calls KVM_SET_USER_MEMORY_REGION and
/// /// KVM_IOEVENTFD here.
/// #[derive(Default)]
/// struct Hypervisor {
///     slots: Mutex<Vec<BarMapping>>,
///     doorbells: Mutex<Vec<Doorbell>>,
/// }
///
/// impl GuestSlots for Hypervisor {
///     fn add_slot(&self, slot: &BarMapping) -> io::Result<()> {
///         self.slots.lock().unwrap().push(*slot);
///         Ok(())
///     }
///     fn remove_slot(&self, slot: &BarMapping) -> io::Result<()> {
///         self.slots.lock().unwrap().retain(|s| s != slot);
///         Ok(())
///     }
///     fn add_ioeventfd(&self, doorbell: &Doorbell) -> io::Result<()> {
///         self.doorbells.lock().unwrap().push(doorbell.clone());
///         Ok(())
///     }
///     fn remove_ioeventfd(&self, doorbell: &Doorbell) -> io::Result<()> {
///         self.doorbells.lock().unwrap().retain(|d| d != doorbell);
///         Ok(())
///     }
/// }
/// # struct NoInterrupts;
/// # impl InterruptProvider for NoInterrupts {
/// #     fn eventfd(&self, _kind: InterruptKind, _vector: u32) -> Option<Arc<EventFd>> {
/// #         None
/// #     }
/// # }
///
/// # use vfio_user_sample_server::{GpioDevice, Server, ServerConfig};
/// # let (gpio, _) = GpioDevice::new(Default::default())?;
/// # let server = Server::new(ServerConfig::default(), Box::new(gpio)).listen_temp()?;
/// # let socket = server.socket_path().ok_or("no socket")?;
/// # let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?);
/// let options = AttachOptions {
///     bars: BarPlacement::Fixed(vec![(0, 0xc000_0000), (2, 0x1_0000_0000)]),
///     ..AttachOptions::default()
/// };
/// let mut device = VfioUserPciDevice::attach(socket, memory, Arc::new(NoInterrupts), &options)?;
/// let hypervisor = Arc::new(Hypervisor::default());
/// device.manage_slots(hypervisor.clone())?;
///
/// // Nothing decodes yet. The guest turns memory decoding on: BAR2's mappable areas become
/// // slots, BAR0's doorbells ioeventfds.
/// device.write_config_register(1, 0, &[0x02]);
/// assert_eq!(hypervisor.slots.lock().unwrap().len(), 2);
/// assert_eq!(hypervisor.doorbells.lock().unwrap().len(), 2);
///
/// // The VMM moves BAR2: its slots follow.
/// device.move_bar(2, 0x2_0000_0000)?;
/// assert_eq!(hypervisor.slots.lock().unwrap()[0].guest_addr, 0x2_0000_0000);
///
/// device.detach()?;
/// assert!(hypervisor.slots.lock().unwrap().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait GuestSlots: Send + Sync {
    /// Installs `slot`: guest accesses to `guest_addr .. guest_addr + size` reach the host
    /// memory at `host_addr` directly (read-only when not `writable`). Guest and host
    /// addresses and the size are multiples of the host page size.
    fn add_slot(&self, slot: &BarMapping) -> io::Result<()>;

    /// Removes a slot added with [`GuestSlots::add_slot`] (the same value).
    fn remove_slot(&self, slot: &BarMapping) -> io::Result<()>;

    /// Registers `doorbell`'s eventfd for guest writes at its address.
    fn add_ioeventfd(&self, doorbell: &Doorbell) -> io::Result<()>;

    /// Unregisters a doorbell added with [`GuestSlots::add_ioeventfd`] (the same value).
    fn remove_ioeventfd(&self, doorbell: &Doorbell) -> io::Result<()>;
}

/// One of the server's ioeventfds, where it is in its region.
#[derive(Clone, Debug)]
pub(crate) struct IoEventFd {
    pub(crate) bar: u32,
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) datamatch: Option<u64>,
    pub(crate) fd: Arc<OwnedFd>,
}

/// A mappable area of a region: its offset and size in the region, its host address, and
/// whether it is writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Area {
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) host_addr: u64,
    pub(crate) writable: bool,
}

/// What the device holds about the VMM's slots: the VMM's [`GuestSlots`] (when it gave
/// one), the server's ioeventfds, and what is installed now.
#[derive(Default)]
pub(crate) struct Slots {
    vmm: Option<Arc<dyn GuestSlots>>,
    io_fds: Vec<IoEventFd>,
    slots: Vec<BarMapping>,
    doorbells: Vec<Doorbell>,
}

impl fmt::Debug for Slots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slots")
            .field("managed", &self.vmm.is_some())
            .field("slots", &self.slots)
            .field("doorbells", &self.doorbells)
            .finish()
    }
}

/// The page-aligned span `[start, end)` covering `len` bytes at `offset`.
pub(crate) fn page_span(offset: u64, len: u64, page: u64) -> (u64, u64) {
    let start = offset / page * page;
    let end = offset
        .saturating_add(len)
        .div_ceil(page)
        .saturating_mul(page);
    (start, end)
}

/// The spans of BAR `bar` that no slot may cover: the pages of the MSI-X structures
/// (`(bar, offset, length)` of the table and of the pending bits) that live there, and of
/// the ioeventfds in it.
pub(crate) fn trapped_pages(
    bar: u32,
    msix: &[(u32, u64, u64)],
    io_fds: &[IoEventFd],
    page: u64,
) -> Vec<(u64, u64)> {
    let structures = msix
        .iter()
        .filter(|(b, _, _)| *b == bar)
        .map(|&(_, offset, len)| page_span(offset, len, page));
    let doorbells = io_fds
        .iter()
        .filter(|fd| fd.bar == bar)
        .map(|fd| page_span(fd.offset, fd.size.max(1), page));
    structures.chain(doorbells).collect()
}

/// The MSI-X table's and pending bits' `(bar, offset, length)`.
fn msix_structures(msix: Option<&Msix>) -> Vec<(u32, u64, u64)> {
    msix.map_or_else(Vec::new, |m| {
        vec![
            (m.table_bar, m.table_offset, m.table_len()),
            (m.pba_bar, m.pba_offset, m.pba_len()),
        ]
    })
}

/// The slots of BAR `bar` placed at `base`: its mappable `areas` minus the `holes`.
pub(crate) fn mappings(
    bar: u32,
    base: u64,
    areas: &[Area],
    holes: &[(u64, u64)],
) -> Vec<BarMapping> {
    let mut out = Vec::new();
    for area in areas {
        let Some(area_end) = area.offset.checked_add(area.size) else {
            continue;
        };
        let mut pieces = vec![(area.offset, area_end)];
        for &(hs, he) in holes {
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
            let Some(guest_addr) = base.checked_add(s) else {
                continue;
            };
            out.push(BarMapping {
                bar,
                guest_addr,
                host_addr: area.host_addr + (s - area.offset),
                size: e - s,
                writable: area.writable,
            });
        }
    }
    out
}

/// The doorbells of BAR `info` placed at `base`.
pub(crate) fn doorbells(info: &BarInfo, base: u64, io_fds: &[IoEventFd]) -> Vec<Doorbell> {
    io_fds
        .iter()
        .filter(|fd| fd.bar == info.index)
        .filter_map(|fd| {
            Some(Doorbell {
                bar: info.index,
                space: info.kind.space(),
                guest_addr: base.checked_add(fd.offset)?,
                size: fd.size,
                datamatch: fd.datamatch,
                fd: fd.fd.clone(),
            })
        })
        .collect()
}

/// The plain ioeventfds of region `bar` (ioregionfds and libvfio-user's shadow ioeventfds
/// need more than an eventfd from the hypervisor and are left out, as are sizes KVM cannot
/// match); none when the server does not support the query.
fn query_io_fds(device: &VfioUserDevice, bar: u32) -> Result<Vec<IoEventFd>, device::Error> {
    let fds = match device.region_io_fds(bar) {
        Ok(fds) => fds,
        Err(device::Error::IoFdsNotSupported { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for fd in fds {
        if fd.kind != IoSubregion::TYPE_IOEVENTFD || !matches!(fd.size, 0 | 1 | 2 | 4 | 8) {
            log::debug!("BAR {bar}: io fd {fd:?} is not a plain ioeventfd: left out");
            continue;
        }
        let datamatch = fd
            .data
            .filter(|_| fd.flags & IoSubregion::FLAG_DATAMATCH != 0);
        if datamatch.is_some() && fd.size == 0 {
            log::debug!("BAR {bar}: io fd {fd:?} matches data of any size: left out");
            continue;
        }
        out.push(IoEventFd {
            bar,
            offset: fd.offset,
            size: fd.size,
            datamatch,
            fd: fd.fd,
        });
    }
    Ok(out)
}

impl Slots {
    /// Brings what the VMM holds to `slots` and `doorbells`: removals first, then
    /// additions. Returns the first error; the rest is still tried.
    fn apply(&mut self, slots: Vec<BarMapping>, doorbells: Vec<Doorbell>) -> Result<(), Error> {
        let Some(vmm) = self.vmm.clone() else {
            return Ok(());
        };
        let mut first: Option<Error> = None;
        let mut fail = |what: &'static str, e: io::Error| {
            log::warn!("{what}: {e}");
            first.get_or_insert(Error::Io { what, source: e });
        };
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.doorbells)
            .into_iter()
            .partition(|d| !doorbells.contains(d));
        self.doorbells = kept;
        for d in gone {
            if let Err(e) = vmm.remove_ioeventfd(&d) {
                fail("removing an ioeventfd", e);
            }
        }
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.slots)
            .into_iter()
            .partition(|s| !slots.contains(s));
        self.slots = kept;
        for s in gone {
            if let Err(e) = vmm.remove_slot(&s) {
                fail("removing a guest memory slot", e);
            }
        }
        for s in slots {
            if self.slots.contains(&s) {
                continue;
            }
            match vmm.add_slot(&s) {
                Ok(()) => self.slots.push(s),
                Err(e) => fail("adding a guest memory slot", e),
            }
        }
        for d in doorbells {
            if self.doorbells.contains(&d) {
                continue;
            }
            match vmm.add_ioeventfd(&d) {
                Ok(()) => self.doorbells.push(d),
                Err(e) => fail("adding an ioeventfd", e),
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// What the VMM holds now.
    pub(crate) fn installed(&self) -> (&[BarMapping], &[Doorbell]) {
        (&self.slots, &self.doorbells)
    }
}

impl VfioUserPciDevice {
    /// Lets the device manage its guest memory slots and doorbells through the VMM's
    /// `vmm`, from now until detach: the mappable areas of its BARs become slots and the
    /// server's ioeventfds (DEVICE_GET_REGION_IO_FDS, when the server has any) are
    /// registered, each at its BAR's current base while the BAR is placed and decodes. BAR
    /// moves ([`PciConfig::move_bar`](super::PciConfig::move_bar),
    /// [`restore_bar`](super::PciConfig::restore_bar),
    /// [`unmap_bar`](super::PciConfig::unmap_bar)), decode changes in the command register,
    /// reset and detach keep them right; the VMM only moves BAR windows on its buses.
    ///
    /// Installs what the current state asks for before it returns. Errors: the server's
    /// answer to the ioeventfd query, or the VMM's first failing call (the rest is tried).
    /// A VMM that does not call this installs [`VfioUserPciDevice::bar_mappings`] itself.
    pub fn manage_slots(&mut self, vmm: Arc<dyn GuestSlots>) -> Result<(), Error> {
        self.core().manage_slots(vmm)
    }

    /// The slots and doorbells installed in the VMM now (none without
    /// [`VfioUserPciDevice::manage_slots`]).
    pub fn installed_slots(&self) -> (Vec<BarMapping>, Vec<Doorbell>) {
        let core = self.core();
        let (slots, doorbells) = core.slots.installed();
        (slots.to_vec(), doorbells.to_vec())
    }

    /// The mappable areas of BAR `bar` at its current base (none while it is unplaced),
    /// without the pages that must trap. After a move, the VMM removes the slots it
    /// installed for the old base and installs these; after a reconnect
    /// ([`ConnectionState::Connected`](super::ConnectionState::Connected) again) too, since
    /// the new connection maps the areas anew. With [`VfioUserPciDevice::manage_slots`] the
    /// device does that itself.
    pub fn bar_mappings(&self, bar: u32) -> Vec<BarMapping> {
        self.core().bar_mappings(bar)
    }
}

impl Core {
    fn manage_slots(&mut self, vmm: Arc<dyn GuestSlots>) -> Result<(), Error> {
        // Another VMM handle: what the old one holds goes first.
        self.withdraw_slots();
        self.slots.vmm = Some(vmm);
        self.reload_slots()
    }

    /// Asks the server for its ioeventfds again and re-derives everything: for a server
    /// that is new (reconnect) or whose fds changed. What the VMM holds is withdrawn first,
    /// so nothing stays registered on a stale fd or mapping. Nothing happens without
    /// [`VfioUserPciDevice::manage_slots`].
    pub(crate) fn reload_slots(&mut self) -> Result<(), Error> {
        if self.slots.vmm.is_none() {
            return Ok(());
        }
        self.withdraw_slots();
        self.slots.io_fds.clear();
        let _budget = self.device.connection().budget();
        let mut io_fds = Vec::new();
        for bar in self.shadow.bars.infos() {
            if bar.index < 6 {
                io_fds.extend(query_io_fds(&self.device, bar.index)?);
            }
        }
        self.slots.io_fds = io_fds;
        self.resync_slots()
    }

    /// The mappable areas of BAR `bar` at its current base, without the pages that must
    /// trap.
    pub(super) fn bar_mappings(&self, bar: u32) -> Vec<BarMapping> {
        let Some(info) = self.shadow.bars.get(bar) else {
            return Vec::new();
        };
        let (Some(base), true) = (info.base, info.kind.is_memory()) else {
            return Vec::new();
        };
        let Ok(region) = self.device.region(bar) else {
            return Vec::new();
        };
        let areas: Vec<Area> = region
            .mapped_areas()
            .iter()
            .map(|a| Area {
                offset: a.offset(),
                size: a.size(),
                host_addr: a.host_addr() as u64,
                writable: a.writable(),
            })
            .collect();
        let page = crate::negotiate::host_page_size();
        let msix = msix_structures(self.shadow.msix.as_ref());
        let holes = trapped_pages(bar, &msix, &self.slots.io_fds, page);
        mappings(bar, base, &areas, &holes)
    }

    /// The slots and doorbells the shadow asks for now: those of every placed BAR whose
    /// window decodes.
    fn wanted_slots(&self) -> (Vec<BarMapping>, Vec<Doorbell>) {
        let mut slots = Vec::new();
        let mut doorbells = Vec::new();
        if self.is_lost() && self.device.connection().disconnect_reason().is_some() {
            // Guest accesses are to read all ones now: everything traps again. (A reconnect
            // restoring the device on a new connection is still marked lost: it installs.)
            return (slots, doorbells);
        }
        for info in self.shadow.bars.infos() {
            let Some(base) = info.base.filter(|_| self.shadow.decodes(&info)) else {
                continue;
            };
            slots.extend(self.bar_mappings(info.index));
            doorbells.extend(self.slots_doorbells(&info, base));
        }
        (slots, doorbells)
    }

    fn slots_doorbells(&self, info: &BarInfo, base: u64) -> Vec<Doorbell> {
        doorbells(info, base, &self.slots.io_fds)
    }

    /// Re-derives the slots and doorbells from the current shadow and brings the VMM's in
    /// step: after anything that changed BAR bases or decoding (a restored or replayed
    /// shadow included). Nothing happens without [`VfioUserPciDevice::manage_slots`].
    pub(crate) fn resync_slots(&mut self) -> Result<(), Error> {
        if self.slots.vmm.is_none() {
            return Ok(());
        }
        let (slots, doorbells) = self.wanted_slots();
        self.slots.apply(slots, doorbells)
    }

    /// [`Core::resync_slots`] from a path that cannot return its error.
    pub(crate) fn sync_slots(&mut self) {
        if let Err(e) = self.resync_slots() {
            self.status.record(Activity::GuestSlots, e);
        }
    }

    /// Removes every slot and doorbell from the VMM (detach, or before the mappings or the
    /// server's fds are replaced); the VMM's handle is kept for a later resync.
    pub(crate) fn withdraw_slots(&mut self) {
        if let Err(e) = self.slots.apply(Vec::new(), Vec::new()) {
            self.status.record(Activity::GuestSlots, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::BarKind;

    const PAGE: u64 = 0x1000;

    fn area(offset: u64, size: u64) -> Area {
        Area {
            offset,
            size,
            host_addr: 0x7f00_0000_0000 + offset,
            writable: true,
        }
    }

    fn spans(m: &[BarMapping]) -> Vec<(u64, u64, u64)> {
        m.iter()
            .map(|m| (m.guest_addr, m.size, m.host_addr))
            .collect()
    }

    fn fd(bar: u32, offset: u64) -> IoEventFd {
        let file = std::fs::File::open("/dev/null").unwrap();
        IoEventFd {
            bar,
            offset,
            size: 4,
            datamatch: Some(1),
            fd: Arc::new(OwnedFd::from(file)),
        }
    }

    #[test]
    fn holes_cover_whole_pages() {
        assert_eq!(page_span(0x800, 0x40, PAGE), (0, 0x1000));
        assert_eq!(page_span(0xff8, 0x10, PAGE), (0, 0x2000));
        assert_eq!(page_span(0x1000, 0x1000, PAGE), (0x1000, 0x2000));
    }

    #[test]
    fn holes_split_areas() {
        let base = 0xc000_0000;
        // No hole: the areas as they are, at the base.
        let m = mappings(2, base, &[area(0, 0x4000), area(0x8000, 0x8000)], &[]);
        assert_eq!(
            spans(&m),
            [
                (base, 0x4000, 0x7f00_0000_0000),
                (base + 0x8000, 0x8000, 0x7f00_0000_8000)
            ]
        );
        // A hole in the middle of an area splits it; at its edge it trims it.
        let holes = [(0x1000, 0x2000), (0x8000, 0x9000)];
        let m = mappings(2, base, &[area(0, 0x4000), area(0x8000, 0x8000)], &holes);
        assert_eq!(
            spans(&m),
            [
                (base, 0x1000, 0x7f00_0000_0000),
                (base + 0x2000, 0x2000, 0x7f00_0000_2000),
                (base + 0x9000, 0x7000, 0x7f00_0000_9000)
            ]
        );
        // A hole over a whole area leaves nothing of it.
        assert!(mappings(2, base, &[area(0, 0x1000)], &[(0, 0x1000)]).is_empty());
    }

    #[test]
    fn msix_and_doorbell_pages_trap() {
        let msix = [(4, 0x2000, 0x40), (4, 0x3800, 8)];
        let holes = trapped_pages(4, &msix, &[fd(4, 0x5004), fd(0, 0x18)], PAGE);
        assert_eq!(
            holes,
            [(0x2000, 0x3000), (0x3000, 0x4000), (0x5000, 0x6000)]
        );
        let m = mappings(4, 0x10_0000, &[area(0, 0x8000)], &holes);
        assert_eq!(
            m.iter().map(|m| (m.guest_addr, m.size)).collect::<Vec<_>>(),
            [
                (0x10_0000, 0x2000),
                (0x10_4000, 0x1000),
                (0x10_6000, 0x2000)
            ]
        );
        assert!(trapped_pages(1, &msix, &[], PAGE).is_empty(), "another BAR");
    }

    #[test]
    fn doorbells_follow_the_base_and_the_bus() {
        let io = BarInfo {
            index: 1,
            kind: BarKind::Io,
            prefetchable: false,
            size: 64,
            base: Some(0xc040),
        };
        let fds = [fd(1, 0x18), fd(0, 0x18)];
        let d = doorbells(&io, 0xc040, &fds);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].space, d[0].guest_addr, d[0].size, d[0].datamatch),
            (BarSpace::Io, 0xc058, 4, Some(1))
        );
        let moved = doorbells(&io, 0xc080, &fds);
        assert_ne!(d, moved, "a move changes the doorbell");
        assert_eq!(moved[0].guest_addr, 0xc098);
        assert!(
            doorbells(&io, u64::MAX - 4, &fds).is_empty(),
            "no wrap-around"
        );
    }

    proptest::proptest! {
        /// Slots lie inside the areas, outside every hole, do not overlap, and cover every
        /// byte of the areas that no hole covers.
        #[test]
        fn slots_are_the_areas_minus_the_holes(
            raw_areas in proptest::collection::vec((0u64..16, 1u64..8), 0..4),
            raw_holes in proptest::collection::vec((0u64..24, 1u64..4), 0..4),
            base_page in 0u64..1024,
        ) {
            let mut areas = Vec::new();
            let mut at = 0;
            for (gap, pages) in raw_areas {
                areas.push(area((at + gap) * PAGE, pages * PAGE));
                at += gap + pages;
            }
            let holes: Vec<(u64, u64)> =
                raw_holes.iter().map(|&(s, n)| (s * PAGE, (s + n) * PAGE)).collect();
            let base = base_page * PAGE;
            let m = mappings(2, base, &areas, &holes);
            let in_slot = |off: u64| m.iter().filter(|s| {
                s.guest_addr - base <= off && off < s.guest_addr - base + s.size
            }).count();
            for page in 0..(at + 1) {
                let off = page * PAGE;
                let in_area = areas.iter().any(|a| a.offset <= off && off < a.offset + a.size);
                let in_hole = holes.iter().any(|&(s, e)| s <= off && off < e);
                proptest::prop_assert_eq!(in_slot(off), usize::from(in_area && !in_hole));
            }
            for s in &m {
                let a = areas.iter().find(|a| {
                    a.offset <= s.guest_addr - base && s.guest_addr - base < a.offset + a.size
                });
                let a = a.expect("in an area");
                proptest::prop_assert_eq!(s.host_addr - a.host_addr, s.guest_addr - base - a.offset);
            }
        }
    }

    /// Records the VMM's calls.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    impl GuestSlots for Recorder {
        fn add_slot(&self, s: &BarMapping) -> io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("+slot {:#x}", s.guest_addr));
            Ok(())
        }
        fn remove_slot(&self, s: &BarMapping) -> io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("-slot {:#x}", s.guest_addr));
            Ok(())
        }
        fn add_ioeventfd(&self, d: &Doorbell) -> io::Result<()> {
            if d.guest_addr == 0xbad {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            self.0
                .lock()
                .unwrap()
                .push(format!("+fd {:#x}", d.guest_addr));
            Ok(())
        }
        fn remove_ioeventfd(&self, d: &Doorbell) -> io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("-fd {:#x}", d.guest_addr));
            Ok(())
        }
    }

    #[test]
    fn apply_removes_first_and_keeps_what_stays() {
        let rec = Arc::new(Recorder::default());
        let mut slots = Slots {
            vmm: Some(rec.clone()),
            ..Slots::default()
        };
        let info = BarInfo {
            index: 0,
            kind: BarKind::Memory32,
            prefetchable: false,
            size: 0x1000,
            base: None,
        };
        let fds = [fd(0, 0x18)];
        let at = |base| {
            (
                mappings(0, base, &[area(0x800, 0x800)], &[]),
                doorbells(&info, base, &fds),
            )
        };
        let (s, d) = at(0x10_0000);
        slots.apply(s, d).unwrap();
        let (s, d) = at(0x10_0000);
        slots.apply(s, d).unwrap();
        let (s, d) = at(0x20_0000);
        slots.apply(s, d).unwrap();
        slots.apply(Vec::new(), Vec::new()).unwrap();
        assert_eq!(
            *rec.0.lock().unwrap(),
            [
                "+slot 0x100800",
                "+fd 0x100018",
                "-fd 0x100018",
                "-slot 0x100800",
                "+slot 0x200800",
                "+fd 0x200018",
                "-fd 0x200018",
                "-slot 0x200800"
            ]
        );
        // A refused doorbell is not recorded as installed, and is tried again.
        let (s, mut d) = at(0);
        d[0].guest_addr = 0xbad;
        assert!(slots.apply(s.clone(), d.clone()).is_err());
        assert_eq!(slots.installed().1.len(), 0);
        assert!(slots.apply(s, d).is_err());
    }
}
