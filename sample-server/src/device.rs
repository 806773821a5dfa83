// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device model a server serves.

use std::fmt;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::vfio_region_sparse_mmap_area as SparseMmapArea;
use vfio_user_client::protocol::DecodeError;
use vmm_sys_util::eventfd::EventFd;

use crate::conn::DeviceContext;
use crate::dma::DmaMapInfo;
use crate::memory::SharedMemory;

/// Index of the PCI config space region.
pub const PCI_CONFIG_REGION: u32 = 7;
/// Number of regions of a PCI device (BAR0-5, ROM, config, VGA).
pub const PCI_NUM_REGIONS: u32 = 9;
/// Number of IRQ types of a PCI device.
pub const PCI_NUM_IRQS: u32 = 5;
/// IRQ index: legacy INTx.
pub const IRQ_INTX: u32 = 0;
/// IRQ index: MSI.
pub const IRQ_MSI: u32 = 1;
/// IRQ index: MSI-X.
pub const IRQ_MSIX: u32 = 2;
/// IRQ index: error notification.
pub const IRQ_ERR: u32 = 3;
/// IRQ index: device request.
pub const IRQ_REQ: u32 = 4;

/// An errno sent to the client in an error reply.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// `EINVAL`.
    pub const INVAL: Errno = Errno(libc::EINVAL);
    /// `EFAULT`: an address outside every DMA window.
    pub const FAULT: Errno = Errno(libc::EFAULT);
    /// `EPERM`: a DMA window without the needed access right.
    pub const PERM: Errno = Errno(libc::EPERM);
    /// `ENOENT`: no such DMA window.
    pub const NOENT: Errno = Errno(libc::ENOENT);
    /// `EIO`: a failed transfer.
    pub const IO: Errno = Errno(libc::EIO);
    /// `ENOTCONN`: the client went away.
    pub const NOTCONN: Errno = Errno(libc::ENOTCONN);
    /// `EPROTO`: the client answered a DMA request wrongly.
    pub const PROTO: Errno = Errno(libc::EPROTO);

    pub(crate) fn from_io(e: &std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<DecodeError> for Errno {
    /// A payload that does not decode is `EINVAL`, as in libvfio-user.
    fn from(_: DecodeError) -> Errno {
        Errno::INVAL
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Errno({}: {})",
            self.0,
            std::io::Error::from_raw_os_error(self.0)
        )
    }
}

/// What DEVICE_GET_INFO reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `DEVICE_FLAGS_*` from [`vfio_user_client::protocol`].
    pub flags: u32,
    /// Number of regions (indexes `0..num_regions`).
    pub num_regions: u32,
    /// Number of IRQ types (indexes `0..num_irqs`).
    pub num_irqs: u32,
}

/// How a region may be mmapped by the client.
#[derive(Clone, Debug)]
pub struct RegionMmap {
    /// The memory whose fd is sent with the region info.
    pub memory: Arc<SharedMemory>,
    /// Offset of the region's start in `memory` (the reply's `offset` field).
    pub offset: u64,
    /// The mappable areas; empty means the whole region (sent as one area, as libvfio-user
    /// does).
    pub areas: Vec<SparseMmapArea>,
}

/// One region as GET_REGION_INFO reports it.
#[derive(Clone, Debug)]
pub struct RegionSpec {
    /// `VFIO_REGION_INFO_FLAG_READ` and/or `VFIO_REGION_INFO_FLAG_WRITE` from
    /// [`vfio_user_client::protocol`]; the server adds the others.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Present when (parts of) the region may be mmapped.
    pub mmap: Option<RegionMmap>,
}

/// One fd-backed sub-region of a region, as DEVICE_GET_REGION_IO_FDS reports it.
///
/// The client (or the VMM's hypervisor on its behalf) signals `fd` instead of sending a
/// REGION_WRITE for a matching write; the device reads the eventfd to learn of it.
#[derive(Clone, Debug)]
pub struct RegionIoFd {
    /// Offset in the region.
    pub offset: u64,
    /// Size of the write (0 = any).
    pub size: u64,
    /// `IoSubregion::TYPE_*` from [`vfio_user_client::protocol`] (an ioeventfd is
    /// `IoSubregion::TYPE_IOEVENTFD`).
    pub kind: u32,
    /// `IoSubregion::FLAG_*` from [`vfio_user_client::protocol`], e.g.
    /// `IoSubregion::FLAG_DATAMATCH`.
    pub flags: u32,
    /// The value a write must carry to signal `fd`, with `IoSubregion::FLAG_DATAMATCH`.
    pub datamatch: u64,
    /// The eventfd, owned by the device; the reply carries a duplicate.
    pub fd: Arc<EventFd>,
}

/// Why [`Device::reset`] is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The client sent DEVICE_RESET.
    Client,
    /// The client disconnected (libvfio-user's "lost connection").
    LostConnection,
}

/// A device served over vfio-user.
///
/// The server validates every access before calling the device: the region exists and has
/// the needed READ/WRITE flag, and `offset + data.len()` lies within its size. The server
/// calls the device from its connection thread only, one call at a time.
pub trait Device: Send {
    /// Flags and counts reported by DEVICE_GET_INFO.
    fn info(&self) -> DeviceInfo;

    /// Region `index` (below `info().num_regions`); `None` reports an absent region (size 0,
    /// no flags).
    fn region(&self, index: u32) -> Option<RegionSpec>;

    /// Number of vectors of IRQ type `index` (below `info().num_irqs`).
    fn irq_count(&self, index: u32) -> u32;

    /// Reads `data.len()` bytes at `offset` of region `index`.
    fn region_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno>;

    /// Writes `data` at `offset` of region `index`.
    fn region_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno>;

    /// The sub-regions of region `index` (a region the device reports) that have an
    /// ioeventfd, for DEVICE_GET_REGION_IO_FDS. An empty list answers `count` 0; the default
    /// `EINVAL` means the device does not support the command.
    fn region_io_fds(&self, _index: u32) -> Result<Vec<RegionIoFd>, Errno> {
        Err(Errno::INVAL)
    }

    /// Resets the device.
    fn reset(&mut self, reason: ResetReason) -> Result<(), Errno>;

    /// A DMA window was added.
    fn dma_mapped(&mut self, _map: &DmaMapInfo) {}

    /// A DMA window was removed; the device must not use it any more.
    fn dma_unmapped(&mut self, _map: &DmaMapInfo) {}

    /// Whether the device can move its state (the default `false`: the server then offers
    /// no migration for it, whatever [`ServerConfig::migration`](crate::ServerConfig::migration)
    /// says).
    fn migratable(&self) -> bool {
        false
    }

    /// The device runs (`true`: RUNNING, PRE_COPY) or stops (every other migration state).
    /// A stopped device must not touch guest memory nor raise interrupts; register
    /// accesses are still served.
    fn set_running(&mut self, _running: bool) {}

    /// Work the device does between messages while it runs: called once after each message
    /// the server handled (its reply sent). The default does nothing.
    fn step(&mut self, _ctx: &mut DeviceContext<'_>) {}

    /// Migration data offered on entering PRE_COPY, read while the device keeps running
    /// (default: none).
    fn save_precopy(&mut self) -> Result<Vec<u8>, Errno> {
        Ok(Vec::new())
    }

    /// The device's state, taken on entering STOP_COPY (the device is stopped). The
    /// destination gets it after the pre-copy data, if any.
    fn save_state(&mut self) -> Result<Vec<u8>, Errno> {
        Err(Errno::INVAL)
    }

    /// Loads everything the client wrote in RESUMING (pre-copy data, then the state), on
    /// leaving RESUMING. An error leaves the device as it was and the migration state ERROR.
    fn load_state(&mut self, _data: &[u8]) -> Result<(), Errno> {
        Err(Errno::INVAL)
    }

    /// The most migration data the device accepts in RESUMING; more is `EINVAL`.
    fn migration_data_limit(&self) -> u64 {
        64 << 20
    }
}
