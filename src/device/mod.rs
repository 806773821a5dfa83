// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The transport-level device: discovery, region access, mappable areas, I/O fds,
//! interrupts and reset, over one negotiated [`Connection`].
//!
//! [`VfioUserDevice::new`] discovers the device (DEVICE_GET_INFO, every region and IRQ
//! index) and maps the areas of mappable regions. Every later call checks its arguments
//! against what was discovered before anything is sent, splits transfers by the negotiated
//! limits, and checks that each reply answers its request.
//!
//! Regions and IRQ indexes are numbered as in VFIO; for a PCI device the indexes are
//! vfio-bindings' `VFIO_PCI_*_REGION_INDEX` and `VFIO_PCI_*_IRQ_INDEX`
//! (`vfio_bindings::bindings::vfio`), and flags are its `VFIO_REGION_INFO_FLAG_*` and
//! `VFIO_IRQ_INFO_*`.
//!
//! Two readings differ from the crates.io `vfio_user` client's. `VFIO_DEVICE_FLAGS_RESET`
//! means what the spec says: the device supports DEVICE_RESET (that client inverts it). A
//! region flagged MMAP whose REGION_INFO reply brings no fd is kept, and reached by
//! messages, but nothing of it is mapped (that crate's server sends the fd only with sparse
//! mmap capabilities).

mod access;
mod error;
mod io_fds;
mod irqs;
mod mmap;
mod region;

use std::path::Path;

use vfio_bindings::bindings::vfio::{VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET};

use crate::connection::{ConnectOptions, Connection};
use crate::negotiate::{host_page_size, Capabilities};
use crate::protocol::{Command, DeviceInfo, Header, IrqInfo, RegionAccess};
use irqs::{check_count, get_irq};
use region::{get_region, map_region};

pub use error::Error;
pub use io_fds::RegionIoFd;
pub use irqs::IrqAction;
pub use mmap::MappedArea;
pub use region::Region;

/// Most regions a device may report (QEMU's limit).
const MAX_REGIONS: u32 = 100;
/// Most IRQ indexes a device may report (QEMU's limit).
const MAX_IRQ_INDEXES: u32 = 50;
/// Largest `argsz` accepted for a REGION_INFO or REGION_IO_FDS re-query.
const MAX_INFO_ARGSZ: u32 = 64 << 10;
/// Default cap on the data of one REGION_WRITE message (libvfio-user issue #306).
const DEFAULT_WRITE_CHUNK: u32 = 32 << 10;

/// Default cap on the data of one REGION_READ message.
const DEFAULT_READ_CHUNK: u32 = 128 << 10;

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

/// A vfio-user device over one connection.
///
/// ```
/// use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR1_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX};
/// use vfio_user_client::device::IrqAction;
/// use vfio_user_client::{ConnectOptions, DeviceOptions, VfioUserDevice};
/// use vmm_sys_util::eventfd::EventFd;
///
/// # use vfio_user_sample_server::{GpioDevice, Server, ServerConfig};
/// # let (gpio, _) = GpioDevice::new(Default::default())?;
/// # let server = Server::new(ServerConfig::default(), Box::new(gpio)).listen_temp()?;
/// # let probe = server.probe();
/// # let socket = server.socket_path().ok_or("no socket")?;
/// let (connect, options) = (ConnectOptions::default(), DeviceOptions::default());
/// let dev = VfioUserDevice::connect(socket, &connect, &options)?;
/// for region in dev.regions() {
///     println!("region {}: {} bytes", region.index(), region.size());
/// }
///
/// // Region access of any length: checked against the region first, split by the
/// // negotiated transfer size, every reply checked.
/// dev.write(VFIO_PCI_BAR1_REGION_INDEX, 0x100, b"hello")?;
/// let mut data = [0u8; 5];
/// dev.read(VFIO_PCI_BAR1_REGION_INDEX, 0x100, &mut data)?;
/// assert_eq!(&data, b"hello");
///
/// // MSI-X vectors 0 and 1 signal these eventfds (a VMM passes its irqfds).
/// let (v0, v1) = (EventFd::new(0)?, EventFd::new(0)?);
/// dev.set_irq_eventfds(
///     VFIO_PCI_MSIX_IRQ_INDEX,
///     IrqAction::Trigger,
///     0,
///     &[Some(&v0), Some(&v1)],
/// )?;
/// # assert_eq!(probe.raise_irq(VFIO_PCI_MSIX_IRQ_INDEX, 1), Ok(true));
/// # assert_eq!(v1.read()?, 1);
/// dev.disable_irqs(VFIO_PCI_MSIX_IRQ_INDEX)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct VfioUserDevice {
    connection: Connection,
    info: DeviceInfo,
    regions: Vec<Region>,
    irqs: Vec<IrqInfo>,
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
        let connection = Connection::connect(path.as_ref(), connect)?;
        Ok(VfioUserDevice::new(connection, options)?)
    }

    /// Discovers the device behind a negotiated connection: DEVICE_GET_INFO, then every
    /// region (re-asking with the larger `argsz` the server names) and every IRQ index, and
    /// maps the mappable areas when `options.map_regions` is set.
    ///
    /// An IRQ index with more vectors than [`VfioUserDevice::max_vectors`] allows is
    /// [`Error::TooManyVectors`].
    pub fn new(connection: Connection, options: &DeviceOptions) -> Result<VfioUserDevice, Error> {
        let conn = &connection;
        let info = get_info(conn)?;
        let mut regions = Vec::with_capacity(info.num_regions as usize);
        for index in 0..info.num_regions {
            regions.push(get_region(conn, index)?);
        }
        if options.map_regions {
            let page_size = host_page_size();
            for region in &mut regions {
                map_region(region, page_size);
            }
        }
        let mut irqs = Vec::with_capacity(info.num_irqs as usize);
        for index in 0..info.num_irqs {
            irqs.push(get_irq(conn, index)?);
        }
        // Bounded before anything sizes itself by a count.
        let pci = info.flags & VFIO_DEVICE_FLAGS_PCI != 0;
        irqs.iter().try_for_each(|irq| check_count(pci, irq))?;
        let caps = connection.capabilities();
        let max_xfer = caps.max_data_xfer_size as usize;
        // Our own receive limit bounds read replies too (head room for the headers).
        let recv_limit =
            (conn.max_recv_size() as usize).saturating_sub(Header::SIZE + RegionAccess::HEAD_SIZE);
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

    /// DEVICE_GET_INFO's flags (`VFIO_DEVICE_FLAGS_*`).
    pub fn flags(&self) -> u32 {
        self.info.flags
    }

    /// Whether the device supports DEVICE_RESET.
    pub fn resettable(&self) -> bool {
        self.info.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// Whether the device is a PCI device.
    pub fn is_pci(&self) -> bool {
        self.info.flags & VFIO_DEVICE_FLAGS_PCI != 0
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

    /// Every IRQ index, as DEVICE_GET_IRQ_INFO described it (`VFIO_IRQ_INFO_*` flags and
    /// the number of vectors).
    pub fn irqs(&self) -> &[IrqInfo] {
        &self.irqs
    }

    /// IRQ index `index`.
    pub fn irq(&self, index: u32) -> Result<IrqInfo, Error> {
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

    /// DEVICE_RESET, when the device advertises it.
    pub fn reset(&self) -> Result<(), Error> {
        if !self.resettable() {
            return Err(Error::ResetNotSupported);
        }
        self.connection
            .request(Command::DeviceReset, &[], &[])
            .map(drop)
            .map_err(|source| Error::Request {
                command: Command::DeviceReset,
                index: None,
                source,
            })
    }
}

fn get_info(conn: &Connection) -> Result<DeviceInfo, Error> {
    let mut payload = Vec::with_capacity(DeviceInfo::SIZE);
    DeviceInfo::request().encode_into(&mut payload);
    let reply = conn
        .request(Command::DeviceGetInfo, &payload, &[])
        .map_err(|source| Error::Request {
            command: Command::DeviceGetInfo,
            index: None,
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
}
