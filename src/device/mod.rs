// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The transport-level device: discovery, region access, mappable areas, I/O fds,
//! interrupts and reset, over one negotiated [`Connection`].
//!
//! [`VfioUserDevice::new`] discovers the device (DEVICE_GET_INFO, every region and IRQ
//! index) and maps the areas of mappable regions. Every later call checks its arguments
//! against what was discovered before anything is sent, splits transfers by the negotiated
//! limits, and checks that each reply answers its request.

mod error;
mod mmap;

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::connection::ConnectOptions;
use crate::negotiate::{host_page_size, Capabilities};
use crate::protocol::{
    Command, DeviceInfo, IrqInfo, RegionAccess, RegionCap, RegionInfo, RegionIoFds, SetIrqs,
    SparseMmapArea, WriteMultiEntry, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, HEADER_SIZE,
    IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL,
    IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ,
    REGION_INFO_FLAG_WRITE,
};
use crate::proxy::{self, Proxy, Reply, Ticket};
use crate::Connection;

pub use error::Error;
pub use mmap::MappedArea;

/// Most regions a device may report (QEMU's limit).
pub const MAX_REGIONS: u32 = 100;
/// Most IRQ indexes a device may report (QEMU's limit).
pub const MAX_IRQ_INDEXES: u32 = 50;
/// Largest `argsz` accepted for a REGION_INFO or REGION_IO_FDS re-query.
pub const MAX_INFO_ARGSZ: u32 = 64 << 10;
/// Default cap on the data of one REGION_WRITE message (libvfio-user issue #306).
pub const DEFAULT_WRITE_CHUNK: u32 = 32 << 10;

/// Default cap on the data of one REGION_READ message.
pub const DEFAULT_READ_CHUNK: u32 = 128 << 10;

/// `argsz` of the first REGION_IO_FDS query: room for 16 libvfio-user entries.
const IO_FDS_FIRST_ARGSZ: u32 = 16 + 16 * 48;
/// Requests of one large transfer in flight at once.
const PIPELINE_WINDOW: usize = 8;

/// PCI region indexes.
pub mod pci_region {
    /// BAR 0; BARs 1 to 5 follow.
    pub const BAR0: u32 = 0;
    /// The expansion ROM.
    pub const ROM: u32 = 6;
    /// PCI configuration space.
    pub const CONFIG: u32 = 7;
    /// VGA.
    pub const VGA: u32 = 8;
}

/// PCI IRQ indexes.
pub mod pci_irq {
    /// INTx.
    pub const INTX: u32 = 0;
    /// MSI.
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// Error notification.
    pub const ERR: u32 = 3;
    /// Device request notification.
    pub const REQ: u32 = 4;
}

/// How the device layer behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Most data bytes in one REGION_WRITE message (also bounded by the server's
    /// `max_data_xfer_size`). Default 32 KiB: libvfio-user can fail larger single writes
    /// (its issue #306).
    pub write_chunk: u32,
    /// Most data bytes asked for in one REGION_READ message (also bounded by the server's
    /// `max_data_xfer_size` and our receive limit). Larger reads are split and pipelined,
    /// so the server's work on one part overlaps ours on the previous part.
    pub read_chunk: u32,
    /// Allow posted (No_reply) writes for [`VfioUserDevice::write_posted`]. Even when set,
    /// posted writes are off for a device with any mappable region: a posted write could
    /// then be overtaken by an access through the mapping.
    pub posted_writes: bool,
    /// Map the mappable areas of regions with MMAP at discovery.
    pub map_regions: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            write_chunk: DEFAULT_WRITE_CHUNK,
            read_chunk: DEFAULT_READ_CHUNK,
            posted_writes: true,
            map_regions: true,
        }
    }
}

/// One region of the device, as DEVICE_GET_REGION_INFO described it.
#[derive(Debug)]
pub struct Region {
    index: u32,
    flags: u32,
    size: u64,
    fd_offset: u64,
    caps: Vec<RegionCap>,
    fd: Option<Arc<File>>,
    areas: Vec<MappedArea>,
}

impl Region {
    /// The region's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// `REGION_INFO_FLAG_*` as the server reported them.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Size in bytes (0 for an absent region).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the region can be read.
    pub fn readable(&self) -> bool {
        self.flags & REGION_INFO_FLAG_READ != 0
    }

    /// Whether the region can be written.
    pub fn writable(&self) -> bool {
        self.flags & REGION_INFO_FLAG_WRITE != 0
    }

    /// Whether (parts of) the region can be mmapped: the server set MMAP and sent the fd.
    pub fn mappable(&self) -> bool {
        self.fd.is_some()
    }

    /// Offset of the region's data in its fd.
    pub fn fd_offset(&self) -> u64 {
        self.fd_offset
    }

    /// The region fd, when the region is mappable.
    pub fn fd(&self) -> Option<&File> {
        self.fd.as_deref()
    }

    /// The capability chain.
    pub fn caps(&self) -> &[RegionCap] {
        &self.caps
    }

    /// The SPARSE_MMAP areas, when the region has that capability.
    pub fn sparse_areas(&self) -> Option<&[SparseMmapArea]> {
        self.caps.iter().find_map(|c| match c {
            RegionCap::SparseMmap(areas) => Some(areas.as_slice()),
            _ => None,
        })
    }

    /// The TYPE capability: `(type, subtype)`.
    pub fn region_type(&self) -> Option<(u32, u32)> {
        self.caps.iter().find_map(|c| match c {
            RegionCap::Type {
                region_type,
                subtype,
            } => Some((*region_type, *subtype)),
            _ => None,
        })
    }

    /// The areas that are mapped into this process, sorted by offset.
    pub fn mapped_areas(&self) -> &[MappedArea] {
        &self.areas
    }

    /// The areas the server allows to be mapped: the sparse areas, or the whole region.
    fn mappable_areas(&self) -> Vec<SparseMmapArea> {
        match self.sparse_areas() {
            Some(areas) => areas.to_vec(),
            None => vec![SparseMmapArea {
                offset: 0,
                size: self.size,
            }],
        }
    }

    fn check(&self, offset: u64, len: u64, write: bool) -> Result<(), Error> {
        let (allowed, access) = if write {
            (self.writable(), "writable")
        } else {
            (self.readable(), "readable")
        };
        if !allowed {
            return Err(Error::AccessDenied {
                index: self.index,
                access,
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange {
                index: self.index,
                offset,
                len,
                size: self.size,
            }),
        }
    }
}

/// One IRQ index of the device, as DEVICE_GET_IRQ_INFO described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irq {
    /// The IRQ index.
    pub index: u32,
    /// `IRQ_INFO_*` flags.
    pub flags: u32,
    /// Number of vectors.
    pub count: u32,
}

/// What a SET_IRQS request does to the vectors it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask the vectors (or, with eventfds, register mask notifiers).
    Mask,
    /// Unmask the vectors (or, with eventfds, register unmask eventfds, e.g. INTx resample).
    Unmask,
    /// Raise the vectors (or, with eventfds, assign the eventfds the server signals).
    Trigger,
}

impl IrqAction {
    fn flag(self) -> u32 {
        match self {
            IrqAction::Mask => IRQ_SET_ACTION_MASK,
            IrqAction::Unmask => IRQ_SET_ACTION_UNMASK,
            IrqAction::Trigger => IRQ_SET_ACTION_TRIGGER,
        }
    }
}

/// One ioeventfd (or ioregionfd) of a region, from DEVICE_GET_REGION_IO_FDS.
#[derive(Debug)]
pub struct RegionIoFd {
    /// Offset in the region.
    pub offset: u64,
    /// Size of the access that triggers it (0: any).
    pub size: u64,
    /// `IO_FD_TYPE_*` from [`crate::protocol`].
    pub kind: u32,
    /// `IOEVENTFD_FLAG_*` (or ioregionfd flags).
    pub flags: u32,
    /// The value to match (ioeventfd) or the user data (ioregionfd), when the reply's entry
    /// layout has it.
    pub data: Option<u64>,
    /// The fd; several entries may share one fd.
    pub fd: Arc<OwnedFd>,
    /// libvfio-user's shadow memory (fd, offset) for `IOEVENTFD_SHADOW` entries.
    pub shadow: Option<(Arc<OwnedFd>, u64)>,
}

/// A vfio-user device over one connection.
#[derive(Debug)]
pub struct VfioUserDevice {
    connection: Connection,
    info: DeviceInfo,
    regions: Vec<Region>,
    irqs: Vec<Irq>,
    read_chunk: usize,
    write_chunk: usize,
    posted_writes: bool,
    /// The server accepts REGION_WRITE_MULTI: posted writes may be coalesced.
    write_multi: bool,
}

impl VfioUserDevice {
    /// Connects to the server at `path`, negotiates and discovers the device.
    pub fn connect(
        path: impl AsRef<Path>,
        connect: &ConnectOptions,
        options: &DeviceOptions,
    ) -> Result<VfioUserDevice, crate::Error> {
        let connection = Connection::connect(path, connect)?;
        Ok(VfioUserDevice::new(connection, options)?)
    }

    /// Discovers the device behind a negotiated connection: DEVICE_GET_INFO, then every
    /// region (re-asking with the larger `argsz` the server names) and every IRQ index, and
    /// maps the mappable areas when `options.map_regions` is set.
    pub fn new(connection: Connection, options: &DeviceOptions) -> Result<VfioUserDevice, Error> {
        let proxy = connection.proxy();
        let info = get_info(proxy)?;
        let mut regions = Vec::with_capacity(info.num_regions as usize);
        for index in 0..info.num_regions {
            regions.push(get_region(proxy, index)?);
        }
        if options.map_regions {
            let page_size = host_page_size();
            for region in &mut regions {
                map_region(region, page_size);
            }
        }
        let mut irqs = Vec::with_capacity(info.num_irqs as usize);
        for index in 0..info.num_irqs {
            irqs.push(get_irq(proxy, index)?);
        }
        let caps = connection.capabilities();
        let max_xfer = caps.max_data_xfer_size as usize;
        // Our own receive limit bounds read replies too (head room for the headers).
        let recv_limit = (proxy.config().max_recv_size as usize)
            .saturating_sub(HEADER_SIZE + RegionAccess::HEAD_SIZE);
        let read_chunk = max_xfer
            .min(recv_limit)
            .min(options.read_chunk as usize)
            .max(1);
        let write_chunk = max_xfer.min(options.write_chunk as usize).max(1);
        let posted_writes = options.posted_writes && !regions.iter().any(Region::mappable);
        let write_multi = caps.write_multiple;
        log::debug!(
            "device: flags {:#x}, {} regions, {} IRQ indexes, read chunk {read_chunk}, \
             write chunk {write_chunk}, posted writes {posted_writes}, \
             write multi {write_multi}",
            info.flags,
            regions.len(),
            irqs.len()
        );
        Ok(VfioUserDevice {
            connection,
            info,
            regions,
            irqs,
            read_chunk,
            write_chunk,
            posted_writes,
            write_multi,
        })
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// What was negotiated.
    pub fn capabilities(&self) -> &Capabilities {
        self.connection.capabilities()
    }

    /// DEVICE_GET_INFO's flags (`DEVICE_FLAGS_*`).
    pub fn flags(&self) -> u32 {
        self.info.flags
    }

    /// Whether the device supports DEVICE_RESET.
    pub fn resettable(&self) -> bool {
        self.info.flags & DEVICE_FLAGS_RESET != 0
    }

    /// Whether the device is a PCI device.
    pub fn is_pci(&self) -> bool {
        self.info.flags & DEVICE_FLAGS_PCI != 0
    }

    /// Every region, by index.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Region `index`.
    pub fn region(&self, index: u32) -> Result<&Region, Error> {
        self.regions.get(index as usize).ok_or(Error::NoSuchRegion {
            index,
            count: self.info.num_regions,
        })
    }

    /// Every IRQ index.
    pub fn irqs(&self) -> &[Irq] {
        &self.irqs
    }

    /// IRQ index `index`.
    pub fn irq(&self, index: u32) -> Result<Irq, Error> {
        self.irqs
            .get(index as usize)
            .copied()
            .ok_or(Error::NoSuchIrq {
                index,
                count: self.info.num_irqs,
            })
    }

    /// Whether [`VfioUserDevice::write_posted`] posts writes (see
    /// [`DeviceOptions::posted_writes`]).
    pub fn posted_writes(&self) -> bool {
        self.posted_writes
    }

    /// Reads `data.len()` bytes at `offset` of region `index`, in as many REGION_READ
    /// messages as the negotiated transfer size requires (pipelined).
    ///
    /// The data is read from the socket straight into `data` when this thread reads the
    /// reply itself ([`Proxy::wait_into`]). After an error, `data`'s content is
    /// unspecified.
    pub fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Error> {
        self.region(index)?
            .check(offset, data.len() as u64, false)?;
        if data.is_empty() {
            return Ok(());
        }
        let proxy = self.connection.proxy();
        if data.len() <= self.read_chunk {
            let head = access_head(index, offset, data.len());
            let reply = proxy
                .request_into(
                    Command::RegionRead,
                    &head,
                    &[],
                    RegionAccess::HEAD_SIZE,
                    data,
                )
                .map_err(|e| access_error(Command::RegionRead, index, offset, data.len(), e))?;
            let copied = copy_read_reply(&reply, index, offset, data);
            proxy::recycle_reply(reply);
            return copied;
        }
        let chunk = self.read_chunk;
        let parts = data.chunks_mut(chunk).scan(offset, |at, out| {
            let part = (*at, out);
            *at += part.1.len() as u64;
            Some(part)
        });
        pipeline(
            parts,
            |(at, out)| {
                let head = access_head(index, *at, out.len());
                proxy
                    .send_nowait(Command::RegionRead, &head, &[])
                    .map_err(|e| access_error(Command::RegionRead, index, *at, out.len(), e))
            },
            |(at, out), ticket| {
                let len = out.len();
                let reply = proxy
                    .wait_into(ticket, RegionAccess::HEAD_SIZE, out)
                    .map_err(|e| access_error(Command::RegionRead, index, at, len, e))?;
                let copied = copy_read_reply(&reply, index, at, out);
                proxy::recycle_reply(reply);
                copied
            },
        )
    }

    /// Writes `data` at `offset` of region `index` and waits for the server to confirm, in
    /// messages of at most the write chunk (pipelined).
    pub fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.region(index)?.check(offset, data.len() as u64, true)?;
        if data.is_empty() {
            return Ok(());
        }
        let proxy = self.connection.proxy();
        let mut payload = Vec::new();
        if data.len() <= self.write_chunk {
            let reply = with_write_payload(&mut payload, index, offset, data, |p| {
                proxy.request(Command::RegionWrite, p, &[])
            })
            .map_err(|e| access_error(Command::RegionWrite, index, offset, data.len(), e))?;
            let checked = check_write_reply(&reply, index, offset, data.len());
            proxy::recycle_reply(reply);
            return checked;
        }
        payload.reserve(RegionAccess::HEAD_SIZE + self.write_chunk);
        let parts = data.chunks(self.write_chunk).scan(offset, |at, chunk| {
            let part = (*at, chunk);
            *at += chunk.len() as u64;
            Some(part)
        });
        pipeline(
            parts,
            |(at, chunk)| {
                write_payload(&mut payload, index, *at, chunk);
                proxy
                    .send_nowait(Command::RegionWrite, &payload, &[])
                    .map_err(|e| access_error(Command::RegionWrite, index, *at, chunk.len(), e))
            },
            |(at, chunk), ticket| {
                let reply = proxy
                    .wait(ticket)
                    .map_err(|e| access_error(Command::RegionWrite, index, at, chunk.len(), e))?;
                let checked = check_write_reply(&reply, index, at, chunk.len());
                proxy::recycle_reply(reply);
                checked
            },
        )
    }

    /// Writes `data` at `offset` of region `index` without waiting for the server (posted,
    /// No_reply) when [`VfioUserDevice::posted_writes`] allows it; otherwise like
    /// [`VfioUserDevice::write`]. The server's refusal of a posted write is not reported; a
    /// lost connection is.
    ///
    /// When the server accepts REGION_WRITE_MULTI, writes of up to 8 bytes that would wait
    /// behind other messages (the socket is backed up) are coalesced into one message; a
    /// write that can go at once is never held back.
    pub fn write_posted(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        if !self.posted_writes {
            return self.write(index, offset, data);
        }
        self.region(index)?.check(offset, data.len() as u64, true)?;
        let proxy = self.connection.proxy();
        let mut payload = Vec::new();
        let mut at = offset;
        for chunk in data.chunks(self.write_chunk) {
            let entry = WriteMultiEntry::new(index, at, chunk).filter(|_| self.write_multi);
            with_write_payload(&mut payload, index, at, chunk, |p| {
                proxy.post_write(p, entry.as_ref())
            })
            .map_err(|e| access_error(Command::RegionWrite, index, at, chunk.len(), e))?;
            at += chunk.len() as u64;
        }
        Ok(())
    }

    /// DEVICE_GET_REGION_IO_FDS: the ioeventfds of region `index`, for a VMM to register
    /// with its hypervisor. A server without support answers
    /// [`Error::IoFdsNotSupported`].
    pub fn region_io_fds(&self, index: u32) -> Result<Vec<RegionIoFd>, Error> {
        let region = self.region(index)?;
        let proxy = self.connection.proxy();
        let mut argsz = IO_FDS_FIRST_ARGSZ;
        loop {
            let mut payload = Vec::with_capacity(RegionIoFds::HEAD_SIZE);
            RegionIoFds::request(index, argsz).encode_into(&mut payload);
            let reply = match proxy.request(Command::DeviceGetRegionIoFds, &payload, &[]) {
                Ok(reply) => reply,
                Err(proxy::Error::Server { errno, .. })
                    if errno == libc::EINVAL as u32
                        || errno == libc::ENOTSUP as u32
                        || errno == libc::ENOSYS as u32 =>
                {
                    return Err(Error::IoFdsNotSupported { index, errno });
                }
                Err(e) => {
                    return Err(Error::Request {
                        what: format!("DEVICE_GET_REGION_IO_FDS of region {index}"),
                        source: e,
                    })
                }
            };
            let bad = |what: String| Error::BadReply {
                command: Command::DeviceGetRegionIoFds,
                what,
            };
            let io = RegionIoFds::decode(&reply.payload).map_err(|e| bad(e.to_string()))?;
            if io.index != index {
                return Err(bad(format!("for region {} instead of {index}", io.index)));
            }
            if io.argsz > argsz {
                if io.argsz > MAX_INFO_ARGSZ || argsz != IO_FDS_FIRST_ARGSZ {
                    return Err(bad(format!("asks for argsz {} after {argsz}", io.argsz)));
                }
                argsz = io.argsz;
                continue;
            }
            if io.subregions.len() != io.count as usize {
                return Err(bad(format!(
                    "{} entries present of {}",
                    io.subregions.len(),
                    io.count
                )));
            }
            let fds: Vec<Arc<OwnedFd>> = reply.fds.into_iter().map(Arc::new).collect();
            let fd = |i: u32| {
                fds.get(i as usize)
                    .cloned()
                    .ok_or_else(|| bad(format!("fd index {i} of {} fds", fds.len())))
            };
            let mut out = Vec::with_capacity(io.subregions.len());
            for s in io.subregions {
                let end = s.offset.checked_add(s.size);
                if end.is_none_or(|end| end > region.size) {
                    return Err(bad(format!(
                        "sub-region {:#x}+{:#x} outside region {index} of {:#x} bytes",
                        s.offset, s.size, region.size
                    )));
                }
                let shadow = match s.shadow {
                    Some(sh) => Some((fd(sh.fd_index)?, sh.offset)),
                    None => None,
                };
                out.push(RegionIoFd {
                    offset: s.offset,
                    size: s.size,
                    kind: s.kind,
                    flags: s.flags,
                    data: s.data,
                    fd: fd(s.fd_index)?,
                    shadow,
                });
            }
            return Ok(out);
        }
    }

    /// Assigns eventfds to vectors `start..start + fds.len()` of IRQ index `index` for
    /// `action` (usually [`IrqAction::Trigger`]); `None` de-assigns a vector.
    ///
    /// The request is split into runs of assigned and de-assigned vectors (a de-assigned run
    /// is DATA_EVENTFD without fds) and each message carries at most the server's
    /// `max_msg_fds` fds; the messages are pipelined and every reply is checked.
    pub fn set_irq_eventfds(
        &self,
        index: u32,
        action: IrqAction,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> Result<(), Error> {
        self.check_vectors(index, start, fds.len() as u64)?;
        let max_fds = (self.capabilities().max_msg_fds as usize).max(1);
        let flags = IRQ_SET_DATA_EVENTFD | action.flag();
        let mut messages: Vec<(u32, u32, Vec<RawFd>)> = Vec::new();
        let mut i = 0;
        while i < fds.len() {
            let assigned = fds[i].is_some();
            let run = fds[i..]
                .iter()
                .take_while(|f| f.is_some() == assigned)
                .count();
            let chunk = if assigned { run.min(max_fds) } else { run };
            let raw: Vec<RawFd> = fds[i..i + chunk]
                .iter()
                .flatten()
                .map(|f| f.as_raw_fd())
                .collect();
            messages.push((start + i as u32, chunk as u32, raw));
            i += chunk;
        }
        self.send_set_irqs(index, flags, messages)
    }

    /// Masks, unmasks or triggers vectors `start..start + count` of IRQ index `index`
    /// (DATA_NONE).
    pub fn irq_action(
        &self,
        index: u32,
        action: IrqAction,
        start: u32,
        count: u32,
    ) -> Result<(), Error> {
        self.check_vectors(index, start, u64::from(count))?;
        if count == 0 {
            return Ok(());
        }
        let flags = IRQ_SET_DATA_NONE | action.flag();
        self.send_set_irqs(index, flags, vec![(start, count, Vec::new())])
    }

    /// Masks, unmasks or triggers the vectors `start + i` for which `values[i]` is true
    /// (DATA_BOOL). The crates.io `vfio_user` server does not support DATA_BOOL.
    pub fn irq_action_bool(
        &self,
        index: u32,
        action: IrqAction,
        start: u32,
        values: &[bool],
    ) -> Result<(), Error> {
        self.check_vectors(index, start, values.len() as u64)?;
        if values.is_empty() {
            return Ok(());
        }
        let set = SetIrqs::new(
            IRQ_SET_DATA_BOOL | action.flag(),
            index,
            start,
            values.len() as u32,
            values.to_vec(),
        );
        let mut payload = Vec::new();
        set.encode_into(&mut payload);
        self.connection
            .proxy()
            .request(Command::DeviceSetIrqs, &payload, &[])
            .map(drop)
            .map_err(|e| set_irqs_error(index, start, values.len() as u32, e))
    }

    /// Disables every vector of IRQ index `index` (DATA_NONE | TRIGGER, count 0). An index
    /// without vectors has nothing to disable: nothing is sent.
    pub fn disable_irqs(&self, index: u32) -> Result<(), Error> {
        if self.irq(index)?.count == 0 {
            return Ok(());
        }
        let flags = IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER;
        self.send_set_irqs(index, flags, vec![(0, 0, Vec::new())])
    }

    /// DEVICE_RESET, when the device advertises it.
    pub fn reset(&self) -> Result<(), Error> {
        if !self.resettable() {
            return Err(Error::ResetNotSupported);
        }
        self.connection
            .proxy()
            .request(Command::DeviceReset, &[], &[])
            .map(drop)
            .map_err(|source| Error::Request {
                what: "DEVICE_RESET".to_string(),
                source,
            })
    }

    fn check_vectors(&self, index: u32, start: u32, count: u64) -> Result<(), Error> {
        let irq = self.irq(index)?;
        let end = u64::from(start) + count;
        if end > u64::from(irq.count) {
            return Err(Error::IrqOutOfRange {
                index,
                start,
                end,
                count: irq.count,
            });
        }
        Ok(())
    }

    fn send_set_irqs(
        &self,
        index: u32,
        flags: u32,
        messages: Vec<(u32, u32, Vec<RawFd>)>,
    ) -> Result<(), Error> {
        let proxy = self.connection.proxy();
        let mut payload = Vec::with_capacity(SetIrqs::HEAD_SIZE);
        let mut tickets = Vec::with_capacity(messages.len());
        let mut first_error = None;
        for (start, count, fds) in messages {
            payload.clear();
            SetIrqs::new(flags, index, start, count, Vec::new()).encode_into(&mut payload);
            match proxy.send_nowait(Command::DeviceSetIrqs, &payload, &fds) {
                Ok(ticket) => tickets.push((ticket, start, count)),
                Err(e) => {
                    first_error = Some(set_irqs_error(index, start, count, e));
                    break;
                }
            }
        }
        for (ticket, start, count) in tickets {
            if let Err(e) = proxy.wait(ticket) {
                first_error.get_or_insert(set_irqs_error(index, start, count, e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Sends `parts` as NOWAIT requests, at most [`PIPELINE_WINDOW`] in flight, and finishes
/// each in order. After the first error nothing more is sent, but every request already sent
/// is still collected (so no reply is left behind); the first error is returned.
fn pipeline<P>(
    parts: impl Iterator<Item = P>,
    mut send: impl FnMut(&P) -> Result<Ticket, Error>,
    mut finish: impl FnMut(P, Ticket) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut parts = parts;
    let mut window = VecDeque::with_capacity(PIPELINE_WINDOW);
    let mut first_error = None;
    loop {
        if window.len() < PIPELINE_WINDOW && first_error.is_none() {
            if let Some(part) = parts.next() {
                match send(&part) {
                    Ok(ticket) => window.push_back((part, ticket)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
                continue;
            }
        }
        let Some((part, ticket)) = window.pop_front() else {
            break;
        };
        if let Err(e) = finish(part, ticket) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn access_head(index: u32, offset: u64, len: usize) -> [u8; RegionAccess::HEAD_SIZE] {
    let mut head = [0u8; RegionAccess::HEAD_SIZE];
    head[..8].copy_from_slice(&offset.to_le_bytes());
    head[8..12].copy_from_slice(&index.to_le_bytes());
    // `len` is at most a chunk, which fits u32 (max_data_xfer_size is a u32).
    head[12..].copy_from_slice(&(len as u32).to_le_bytes());
    head
}

fn write_payload(payload: &mut Vec<u8>, index: u32, offset: u64, data: &[u8]) {
    payload.clear();
    payload.extend_from_slice(&access_head(index, offset, data.len()));
    payload.extend_from_slice(data);
}

/// Data bytes of a write whose message is built on the stack (an MMIO or config access is
/// 1 to 8 bytes).
const SMALL_WRITE: usize = 64;

/// Runs `f` on the REGION_WRITE payload for `data` at `offset` of region `index`: built on
/// the stack for a small write, so that it costs no allocation, else in `spare`.
fn with_write_payload<R>(
    spare: &mut Vec<u8>,
    index: u32,
    offset: u64,
    data: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    let mut small = [0u8; RegionAccess::HEAD_SIZE + SMALL_WRITE];
    let len = RegionAccess::HEAD_SIZE + data.len();
    if let Some(buf) = small.get_mut(..len) {
        let (head, rest) = buf.split_at_mut(RegionAccess::HEAD_SIZE);
        head.copy_from_slice(&access_head(index, offset, data.len()));
        rest.copy_from_slice(data);
        return f(buf);
    }
    write_payload(spare, index, offset, data);
    f(spare)
}

fn access_error(
    command: Command,
    index: u32,
    offset: u64,
    len: usize,
    source: proxy::Error,
) -> Error {
    Error::Request {
        what: format!("{command} of region {index} at {offset:#x}, {len} bytes"),
        source,
    }
}

fn set_irqs_error(index: u32, start: u32, count: u32, source: proxy::Error) -> Error {
    Error::Request {
        what: format!("DEVICE_SET_IRQS of IRQ index {index}, vectors {start}+{count}"),
        source,
    }
}

fn check_access_head(
    command: Command,
    head: &RegionAccess,
    index: u32,
    offset: u64,
    len: usize,
) -> Result<(), Error> {
    if head.region != index || head.offset != offset || head.count as usize != len {
        return Err(Error::BadReply {
            command,
            what: format!(
                "answers region {} at {:#x}, {} bytes instead of region {index} at {offset:#x}, \
                 {len} bytes",
                head.region, head.offset, head.count
            ),
        });
    }
    Ok(())
}

/// Checks a REGION_READ reply and puts its data into `out`, unless it is there already
/// (`data_in_sink`: the proxy read it into `out` and checked that exactly `out.len()` bytes
/// follow the head).
fn copy_read_reply(reply: &Reply, index: u32, offset: u64, out: &mut [u8]) -> Result<(), Error> {
    if reply.data_in_sink {
        if reply.payload.len() != RegionAccess::HEAD_SIZE {
            return Err(Error::BadReply {
                command: Command::RegionRead,
                what: format!("{} bytes of head in the reply", reply.payload.len()),
            });
        }
        let head = RegionAccess::decode(&reply.payload).map_err(|e| Error::BadReply {
            command: Command::RegionRead,
            what: e.to_string(),
        })?;
        // The data length must match `count`, as `decode_with_data` requires (same error).
        if head.count as usize != out.len() {
            let e = crate::protocol::DecodeError::LengthMismatch {
                what: "region access",
                expected: (head.count as usize).saturating_add(RegionAccess::HEAD_SIZE),
                got: RegionAccess::HEAD_SIZE + out.len(),
            };
            return Err(Error::BadReply {
                command: Command::RegionRead,
                what: e.to_string(),
            });
        }
        return check_access_head(Command::RegionRead, &head, index, offset, out.len());
    }
    let (head, data) =
        RegionAccess::decode_with_data(&reply.payload).map_err(|e| Error::BadReply {
            command: Command::RegionRead,
            what: e.to_string(),
        })?;
    check_access_head(Command::RegionRead, &head, index, offset, out.len())?;
    out.copy_from_slice(data);
    Ok(())
}

fn check_write_reply(reply: &Reply, index: u32, offset: u64, len: usize) -> Result<(), Error> {
    let head = RegionAccess::decode(&reply.payload).map_err(|e| Error::BadReply {
        command: Command::RegionWrite,
        what: e.to_string(),
    })?;
    check_access_head(Command::RegionWrite, &head, index, offset, len)
}

fn get_info(proxy: &Proxy) -> Result<DeviceInfo, Error> {
    let mut payload = Vec::with_capacity(DeviceInfo::SIZE);
    DeviceInfo::request().encode_into(&mut payload);
    let reply = proxy
        .request(Command::DeviceGetInfo, &payload, &[])
        .map_err(|source| Error::Request {
            what: "DEVICE_GET_INFO".to_string(),
            source,
        })?;
    let info = DeviceInfo::decode(&reply.payload).map_err(|e| Error::BadReply {
        command: Command::DeviceGetInfo,
        what: e.to_string(),
    })?;
    if info.num_regions > MAX_REGIONS {
        return Err(Error::TooMany {
            what: "regions",
            count: info.num_regions,
            limit: MAX_REGIONS,
        });
    }
    if info.num_irqs > MAX_IRQ_INDEXES {
        return Err(Error::TooMany {
            what: "IRQ indexes",
            count: info.num_irqs,
            limit: MAX_IRQ_INDEXES,
        });
    }
    Ok(info)
}

fn get_region(proxy: &Proxy, index: u32) -> Result<Region, Error> {
    let bad = |what: String| Error::BadReply {
        command: Command::DeviceGetRegionInfo,
        what: format!("region {index}: {what}"),
    };
    let mut argsz = RegionInfo::HEAD_SIZE as u32;
    loop {
        let mut payload = Vec::with_capacity(RegionInfo::HEAD_SIZE);
        RegionInfo::request(index, argsz).encode_into(&mut payload);
        let mut reply = proxy
            .request(Command::DeviceGetRegionInfo, &payload, &[])
            .map_err(|source| Error::Request {
                what: format!("DEVICE_GET_REGION_INFO of region {index}"),
                source,
            })?;
        let head = RegionInfo::decode_head(&reply.payload).map_err(|e| bad(e.to_string()))?;
        if head.index != index {
            return Err(bad(format!("answers region {}", head.index)));
        }
        if head.argsz > argsz {
            let info = head;
            // The caps (and with them libvfio-user's fd) did not fit: ask once more.
            if argsz != RegionInfo::HEAD_SIZE as u32 || info.argsz > MAX_INFO_ARGSZ {
                return Err(bad(format!("asks for argsz {} after {argsz}", info.argsz)));
            }
            argsz = info.argsz;
            continue;
        }
        // The whole answer fitted: now the capability chain is there to parse.
        let info = RegionInfo::decode(&reply.payload).map_err(|e| bad(e.to_string()))?;
        let fd = if info.flags & REGION_INFO_FLAG_MMAP != 0 {
            match reply.fds.pop() {
                Some(fd) => Some(Arc::new(File::from(fd))),
                None => {
                    log::warn!("region {index} is MMAP but came without an fd: not mappable");
                    None
                }
            }
        } else {
            None
        };
        if info.size > 0 {
            for cap in &info.caps {
                if let RegionCap::SparseMmap(areas) = cap {
                    for a in areas {
                        if a.offset
                            .checked_add(a.size)
                            .is_none_or(|end| end > info.size)
                        {
                            return Err(bad(format!(
                                "sparse area {:#x}+{:#x} outside the region of {:#x} bytes",
                                a.offset, a.size, info.size
                            )));
                        }
                    }
                }
            }
        }
        return Ok(Region {
            index,
            flags: info.flags,
            size: info.size,
            fd_offset: info.offset,
            caps: info.caps,
            fd,
            areas: Vec::new(),
        });
    }
}

fn map_region(region: &mut Region, page_size: u64) {
    let Some(file) = region.fd.clone() else {
        return;
    };
    let mut areas: Vec<MappedArea> = Vec::new();
    for area in region.mappable_areas() {
        if area.size == 0 {
            continue;
        }
        match mmap::map_area(
            &file,
            region.fd_offset,
            region.size,
            area,
            region.readable(),
            region.writable(),
            page_size,
        ) {
            Ok(mapped) => areas.push(mapped),
            Err(why) => log::warn!(
                "region {} area {:#x}+{:#x} not mapped ({why}); accesses stay messages",
                region.index,
                area.offset,
                area.size
            ),
        }
    }
    areas.sort_by_key(MappedArea::offset);
    region.areas = areas;
}

fn get_irq(proxy: &Proxy, index: u32) -> Result<Irq, Error> {
    let mut payload = Vec::with_capacity(IrqInfo::SIZE);
    IrqInfo::request(index).encode_into(&mut payload);
    let reply = proxy
        .request(Command::DeviceGetIrqInfo, &payload, &[])
        .map_err(|source| Error::Request {
            what: format!("DEVICE_GET_IRQ_INFO of IRQ index {index}"),
            source,
        })?;
    let info = IrqInfo::decode(&reply.payload).map_err(|e| Error::BadReply {
        command: Command::DeviceGetIrqInfo,
        what: e.to_string(),
    })?;
    if info.index != index {
        return Err(Error::BadReply {
            command: Command::DeviceGetIrqInfo,
            what: format!("answers IRQ index {} instead of {index}", info.index),
        });
    }
    Ok(Irq {
        index,
        flags: info.flags,
        count: info.count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_can_be_shared_between_vcpu_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<VfioUserDevice>();
        shared::<Region>();
        shared::<RegionIoFd>();
    }

    #[test]
    fn access_heads_are_little_endian() {
        let head = access_head(7, 0x0102_0304_0506_0708, 0x1234);
        let decoded = RegionAccess::decode(&head).unwrap();
        assert_eq!(
            decoded,
            RegionAccess {
                offset: 0x0102_0304_0506_0708,
                region: 7,
                count: 0x1234
            }
        );
    }
}
