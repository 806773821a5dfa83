// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`DmaHandle`]: a device's DMA windows for the VMM to control, not generic over the guest
//! memory type.

use std::fmt;
use std::sync::{Arc, RwLock};

use vm_memory::{GuestAddressSpace, GuestMemoryBackend};

use super::{DirtyLog, DmaMapper, DmaMapping, DmaMode, DmaRegion, Error};
use crate::connection::Connection;

/// What a [`DmaHandle`] needs of a mapper.
trait Windows: Send + Sync {
    fn map(&self, iova: u64, gpa: u64, size: u64) -> Result<(), Error>;
    fn unmap(&self, iova: u64, size: u64) -> Result<(), Error>;
    fn unmap_all(&self) -> Result<(), Error>;
    fn sync_guest_memory(&self) -> Result<(), Error>;
    fn mappings(&self) -> Vec<DmaMapping>;
    fn mode(&self) -> DmaMode;
    fn dirty_log(&self) -> &Arc<DirtyLog>;
    fn replay_on(&self, conn: &Connection) -> Result<DmaHandle, Error>;
}

impl<AS> Windows for DmaMapper<AS>
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    fn map(&self, iova: u64, gpa: u64, size: u64) -> Result<(), Error> {
        DmaMapper::map(self, iova, gpa, size)
    }

    fn unmap(&self, iova: u64, size: u64) -> Result<(), Error> {
        DmaMapper::unmap(self, iova, size)
    }

    fn unmap_all(&self) -> Result<(), Error> {
        DmaMapper::unmap_all(self)
    }

    fn sync_guest_memory(&self) -> Result<(), Error> {
        DmaMapper::sync_guest_memory(self)
    }

    fn mappings(&self) -> Vec<DmaMapping> {
        DmaMapper::mappings(self)
    }

    fn mode(&self) -> DmaMode {
        DmaMapper::mode(self)
    }

    fn dirty_log(&self) -> &Arc<DirtyLog> {
        DmaMapper::dirty_log(self)
    }

    fn replay_on(&self, conn: &Connection) -> Result<DmaHandle, Error> {
        Ok(DmaHandle::from(DmaMapper::replay_on(self, conn)?))
    }
}

/// A device's DMA windows, for the VMM to control: map an IOVA range onto a guest-physical
/// range and unmap it (the shape of a vIOMMU's, or virtio-mem's, needs), from any thread,
/// without holding the device's lock. Cheap to clone; every clone controls the same
/// windows, and keeps doing so when the device moves them to a new connection. [`VfioUserPciDevice::dma`](crate::VfioUserPciDevice::dma) hands one out;
/// any [`DmaMapper`] becomes one with `DmaHandle::from`.
///
/// The connection's one DMA request handler serves these windows with the others of the
/// connection: DMA_READ and DMA_WRITE outside every window get `EFAULT` (without the
/// window's access, `EPERM`) and touch nothing.
///
/// ```
/// use std::sync::Arc;
///
/// use vfio_user_client::dma::{DmaHandle, DmaMapper};
/// use vfio_user_client::{ConnectOptions, Connection};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// # use vfio_user_sample_server::{GpioDevice, Server, ServerConfig};
/// # let (gpio, _) = GpioDevice::new(Default::default())?;
/// # let server = Server::new(ServerConfig::default(), Box::new(gpio)).listen_temp()?;
/// # let probe = server.probe();
/// # let socket = server.socket_path().ok_or("no socket")?;
/// let conn = Connection::connect(socket, &ConnectOptions::default())?;
/// let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(
///     GuestAddress(0),
///     16 << 20,
/// )])?);
/// let dma = DmaHandle::from(DmaMapper::new(&conn, memory));
///
/// // The guest's IOMMU maps IOVA 0x1_0000_0000 onto guest page 0x20_0000, then unmaps it.
/// dma.map(0x1_0000_0000, 0x20_0000, 0x1000)?;
/// # assert_eq!(probe.dma_map_count(), 1);
/// dma.unmap(0x1_0000_0000, 0x1000)?;
/// # assert!(dma.mappings().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct DmaHandle {
    /// The mapper behind every clone; replaced when the windows move to a new connection.
    current: Arc<RwLock<Arc<dyn Windows>>>,
}

impl fmt::Debug for DmaHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaHandle")
            .field("mode", &self.mode())
            .field("mappings", &self.windows().mappings().len())
            .finish()
    }
}

impl<AS> From<DmaMapper<AS>> for DmaHandle
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    fn from(mapper: DmaMapper<AS>) -> DmaHandle {
        DmaHandle {
            current: Arc::new(RwLock::new(Arc::new(mapper))),
        }
    }
}

impl DmaHandle {
    fn windows(&self) -> Arc<dyn Windows> {
        Arc::clone(&crate::sync::read(&self.current))
    }

    /// A new handle with these windows mapped again on `conn` (after a reconnect; see
    /// [`DmaMapper::replay_on`]).
    pub(crate) fn replay_on(&self, conn: &Connection) -> Result<DmaHandle, Error> {
        self.windows().replay_on(conn)
    }

    /// Makes this handle, and every clone of it, control `next`'s windows from now on
    /// (after a reconnect replayed them on a new connection).
    pub(crate) fn redirect(&self, next: &DmaHandle) {
        let windows = next.windows();
        *crate::sync::write(&self.current) = windows;
    }

    /// Maps `iova..iova + size` onto guest memory `gpa..gpa + size`, which must lie inside
    /// one guest memory region, is page aligned and overlaps no live window (see
    /// [`DmaMapper::map`]). Refusals name the rule broken, and nothing is sent.
    pub fn map(&self, iova: u64, gpa: u64, size: u64) -> Result<(), Error> {
        self.windows().map(iova, gpa, size)
    }

    /// Unmaps the window that is exactly `iova..iova + size` (no partial unmaps); it stops
    /// being served at once.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<(), Error> {
        self.windows().unmap(iova, size)
    }

    /// Unmaps every window of this handle, the guest memory shared at attach included.
    pub fn unmap_all(&self) -> Result<(), Error> {
        self.windows().unmap_all()
    }

    /// Follows guest memory hot-plug for the regions the sharing selects (see
    /// [`DmaMapper::sync_guest_memory`]); windows mapped with [`DmaHandle::map`] are left
    /// alone.
    pub fn sync_guest_memory(&self) -> Result<(), Error> {
        self.windows().sync_guest_memory()
    }

    /// The live windows of this handle, by IOVA.
    pub fn mappings(&self) -> Vec<DmaMapping> {
        self.windows().mappings()
    }

    /// How the server reaches guest memory through them.
    pub fn mode(&self) -> DmaMode {
        self.windows().mode()
    }

    /// Pages written by the server's DMA_WRITE messages on this connection.
    pub fn dirty_log(&self) -> Arc<DirtyLog> {
        Arc::clone(self.windows().dirty_log())
    }
}
