// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The DMA mapping layer: guest memory (vm-memory) in, DMA_MAP / DMA_UNMAP out, and the
//! server's DMA_READ / DMA_WRITE served from the same mapping table.
//!
//! # Vocabulary
//!
//! * **Guest memory** is anything implementing vm-memory's [`GuestMemoryBackend`] (for
//!   example a [`vm_memory::GuestMemoryMmap`]) reached through a [`GuestAddressSpace`] (an
//!   `Arc`, or a [`vm_memory::GuestMemoryAtomic`] for memory hot-plug). Its regions implement
//!   [`DmaRegion`], which says whether the server may read or write them and which file
//!   backs them.
//! * A **mapping** (window) is `iova..iova + size` of the server's DMA address space, backed
//!   by `gpa..gpa + size` of guest memory, lying inside one guest memory region. When that
//!   region is a shared file mapping, DMA_MAP carries its fd and offset and the server maps
//!   it; otherwise (or in [`DmaMode::MessageOnly`], always) no fd is sent and the server
//!   reaches the window through DMA_READ / DMA_WRITE messages, answered from the same table.
//! * The **DMA space** of a connection: the server has one DMA address space per
//!   connection, so a connection has one table of windows and one request handler, shared
//!   by every [`DmaMapper`] made on it. Each mapper owns its windows (they reach its guest
//!   memory; only it unmaps them); no two windows overlap, whoever made them.
//! * **Sharing** ([`GuestMemorySharing`]) chooses the guest memory regions mapped whole at
//!   their own addresses: all, those a filter selects, or none. The rest is the VMM's to map
//!   through a [`DmaHandle`], an IOVA range onto a guest-physical range: virtio-mem blocks as
//!   they are plugged, a vIOMMU's mappings as the guest makes them.
//! * A **transaction** pipelines maps and unmaps (NOWAIT) and waits once, at commit. Each
//!   operation is checked locally before it is sent (page alignment, overlap, the server's
//!   `max_dma_maps`, guest memory bounds), enters the table when it is sent (the server may
//!   use a window as soon as it has processed the map), and leaves it again if the server
//!   refuses it: the table always ends up as the server accepted it.
//!
//! [`DmaMapper`] shows guest memory shared with a server, [`DmaHandle`] IOVA windows and
//! [`DmaOptions`] the choices of an attach.

mod dirty;
mod error;
mod handle;
mod handler;
mod options;
mod replay;
mod table;

pub use dirty::DirtyLog;
pub use error::{DmaFailure, DmaOp, Error};
pub use handle::DmaHandle;
pub use options::{DmaMode, DmaOptions, GuestMemorySharing, GuestRegionInfo};
pub use table::{Access, DmaMapping};

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, RwLock};

use vm_memory::bitmap::Bitmap;
use vm_memory::{
    FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use crate::connection::{self, Connection, Handle, PendingReply};
use crate::protocol::{Command, DmaMap, DmaUnmap};
use handler::{DmaSpace, MemorySource};
pub(crate) use table::MappingKind;
use table::Table;

/// Outstanding NOWAIT operations of one transaction before the older half is collected.
/// Few enough that they fit the socket's buffer (about 270 small messages with Linux's
/// default `wmem_default`): past that, messages wait in the connection's send queue (a copy
/// and an fd `dup` each, and the event loop's thread to drain them) for no gain, since the
/// server has this many operations to work through meanwhile. Measured on one CPU, 8,192
/// cost about 8% more CPU per map than 128.
const WINDOW: usize = 128;

/// A guest memory region as the DMA layer needs to see it.
///
/// Implemented for vm-memory's [`GuestRegionMmap`]; a VMM with its own region type implements
/// it to say what the server may do with the region.
pub trait DmaRegion: GuestMemoryRegion {
    /// What the server may be granted: reading needs the region readable, writing needs it
    /// writable (a server write to read-only host memory would fault in the client).
    fn dma_access(&self) -> Access;

    /// The file and offset backing the region when the server can share it (a `MAP_SHARED`
    /// file mapping); `None` for anonymous or private memory, which the server then reaches
    /// through DMA_READ / DMA_WRITE messages.
    fn shared_file(&self) -> Option<&FileOffset>;

    /// The host address of the region's first byte, to tell a region from a new one at the
    /// same guest address; 0 when there is none.
    fn host_base(&self) -> usize {
        self.get_host_address(MemoryRegionAddress(0))
            .map(|p| p as usize)
            .unwrap_or(0)
    }
}

impl<B: Bitmap> DmaRegion for GuestRegionMmap<B> {
    fn dma_access(&self) -> Access {
        Access {
            read: self.prot() & libc::PROT_READ != 0,
            write: self.prot() & libc::PROT_WRITE != 0,
        }
    }

    fn shared_file(&self) -> Option<&FileOffset> {
        self.file_offset()
            .filter(|_| self.flags() & libc::MAP_SHARED != 0)
    }
}

/// The negotiated limits the DMA layer works within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DmaLimits {
    /// Smallest page size the server supports ([`Capabilities::min_page_size`]): every
    /// window's IOVA, size and guest address must be multiples of it.
    ///
    /// [`Capabilities::min_page_size`]: crate::Capabilities::min_page_size
    page_size: u64,
    /// Most live windows the server holds.
    max_dma_maps: u32,
    /// Our `max_data_xfer_size`: the largest DMA_READ / DMA_WRITE we serve.
    max_data_xfer_size: u64,
}

impl DmaLimits {
    /// The limits of a negotiated connection.
    fn of(conn: &Connection) -> DmaLimits {
        let caps = conn.capabilities();
        DmaLimits {
            page_size: caps.min_page_size(),
            max_dma_maps: caps.max_dma_maps,
            max_data_xfer_size: u64::from(conn.offer().max_data_xfer_size),
        }
    }
}

/// Maps guest memory for one connection's server and serves its DMA requests.
///
/// A connection has one table of windows and one DMA_READ / DMA_WRITE handler, shared by
/// every mapper made on it: the first mapper installs the handler (replacing any other), and
/// each mapper's windows are served from its own guest memory. Windows of different mappers
/// may not overlap (the server has one DMA address space), and the server's `max_dma_maps`
/// counts them all. [`DmaMapper::mappings`] and [`DmaMapper::unmap_all`] see only the
/// mapper's own windows.
///
/// Operations take the table's write lock only briefly and never across a wait, so DMA
/// requests keep being served while a transaction waits for its replies. Dropping the
/// mapper leaves the windows mapped and served (the server may still use them); call
/// [`DmaMapper::unmap_all`] first to tear them down.
///
/// ```
/// use std::sync::Arc;
///
/// use vfio_user_client::{ConnectOptions, Connection, DmaMapper};
/// use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
/// use vmm_sys_util::tempfile::TempFile;
///
/// # use vfio_user_sample_server::{GpioDevice, Server, ServerConfig};
/// # let (gpio, _) = GpioDevice::new(Default::default())?;
/// # let server = Server::new(ServerConfig::default(), Box::new(gpio)).listen_temp()?;
/// # let probe = server.probe();
/// # let socket = server.socket_path().ok_or("no socket")?;
/// let conn = Connection::connect(socket, &ConnectOptions::default())?;
///
/// // Guest RAM: 64 MiB on a shared file, which the server maps by fd, and 1 MiB of anonymous
/// // memory, which it reaches through DMA_READ / DMA_WRITE served by the mapper.
/// let ram = TempFile::new()?.into_file();
/// ram.set_len(64 << 20)?;
/// let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges_with_files([
///     (GuestAddress(0), 64 << 20, Some(FileOffset::new(ram, 0))),
///     (GuestAddress(1 << 32), 1 << 20, None),
/// ])?);
/// let mapper = DmaMapper::new(&conn, memory);
/// mapper.map_guest_memory()?; // one DMA_MAP per region, all checked first, pipelined
/// # assert_eq!(probe.dma_map_count(), 2);
///
/// // A vIOMMU window onto guest memory, and its removal.
/// mapper.map(0x10_0000_0000, 0x20_0000, 0x1000)?;
/// # assert_eq!(probe.dma_map_count(), 3);
/// mapper.unmap(0x10_0000_0000, 0x1000)?;
///
/// mapper.unmap_all()?; // before the device goes away
/// # assert_eq!(probe.dma_map_count(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DmaMapper<AS> {
    connection: Handle,
    limits: DmaLimits,
    memory: AS,
    /// The connection's one table (in `space`), shared with its other mappers.
    table: Arc<RwLock<Table>>,
    dirty: Arc<DirtyLog>,
    space: Arc<DmaSpace>,
    /// This mapper's id in the table: its windows, and the guest memory they reach.
    owner: u64,
    /// Which guest memory regions [`DmaMapper::sync_guest_memory`] shares.
    sharing: GuestMemorySharing,
    /// Serialises hot-plug syncs so two of them do not both map a new region.
    sync: Mutex<()>,
}

impl<AS> fmt::Debug for DmaMapper<AS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaMapper")
            .field("limits", &self.limits)
            .field("mappings", &read(&self.table).len())
            .finish_non_exhaustive()
    }
}

use crate::sync::{read, write};

/// What a map will send (its payload aside), decided under the table lock.
struct Planned {
    mapping: DmaMapping,
    fd: Option<RawFd>,
}

impl<AS> DmaMapper<AS>
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    /// A mapper for `memory` on a negotiated connection, within the connection's limits:
    /// the server's smallest page size ([`Capabilities::min_page_size`]) and `max_dma_maps`,
    /// and our offer's `max_data_xfer_size` for the DMA_READ / DMA_WRITE it serves.
    ///
    /// [`Capabilities::min_page_size`]: crate::Capabilities::min_page_size
    pub fn new(conn: &Connection, memory: AS) -> DmaMapper<AS> {
        DmaMapper::on(conn, DmaLimits::of(conn), memory, None)
    }

    /// A mapper on `conn` (a new connection, after a reconnect) for the same guest memory,
    /// with this one's sharing, mode and dirty log (when the connection has no DMA space
    /// yet) and no windows: what a replay of [`DmaMapper::mappings`] starts from. The mode
    /// must carry over: a message-only device stays message-only on its new connection.
    pub(crate) fn successor(&self, conn: &Connection) -> DmaMapper<AS> {
        let options = DmaOptions {
            guest_memory: self.sharing.clone(),
            mode: self.mode(),
        };
        let dirty = Some(Arc::clone(&self.dirty));
        DmaMapper::on(conn, DmaLimits::of(conn), self.memory.clone(), dirty).with_options(&options)
    }

    fn on(
        conn: &Connection,
        limits: DmaLimits,
        memory: AS,
        dirty: Option<Arc<DirtyLog>>,
    ) -> DmaMapper<AS> {
        let connection = conn.handle();
        let space = DmaSpace::of(&connection, limits.max_data_xfer_size, dirty);
        let owner = space.new_owner();
        let source = MemorySource {
            memory: memory.clone(),
        };
        write(&space.table).add_source(owner, Arc::new(source));
        DmaMapper {
            connection,
            limits,
            memory,
            table: Arc::clone(&space.table),
            dirty: Arc::clone(&space.dirty),
            space,
            owner,
            sharing: GuestMemorySharing::All,
            sync: Mutex::new(()),
        }
    }

    /// Applies `options`: which guest memory [`DmaMapper::map_guest_memory`] and
    /// [`DmaMapper::sync_guest_memory`] share, and the [`DmaMode`]. Call it before mapping
    /// anything. [`DmaMode::MessageOnly`] holds for the whole connection from then on,
    /// whichever mapper maps.
    pub fn with_options(mut self, options: &DmaOptions) -> DmaMapper<AS> {
        self.sharing = options.guest_memory.clone();
        if options.mode == DmaMode::MessageOnly {
            self.space.set_message_only();
        }
        self
    }

    /// How the server reaches guest memory through this connection's windows.
    pub fn mode(&self) -> DmaMode {
        if self.space.message_only() {
            DmaMode::MessageOnly
        } else {
            DmaMode::Mapped
        }
    }

    /// Pages written by the server's DMA_WRITE messages.
    pub fn dirty_log(&self) -> &Arc<DirtyLog> {
        &self.dirty
    }

    /// The live mappings this mapper made, by IOVA.
    pub fn mappings(&self) -> Vec<DmaMapping> {
        read(&self.table)
            .iter()
            .filter(|m| m.owner == self.owner)
            .copied()
            .collect()
    }

    /// Number of live mappings this mapper made.
    pub fn len(&self) -> usize {
        read(&self.table)
            .iter()
            .filter(|m| m.owner == self.owner)
            .count()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a transaction: its operations are sent as they are added and their replies
    /// collected at [`Transaction::commit`].
    pub fn transaction(&self) -> Transaction<'_, AS> {
        Transaction {
            mapper: self,
            pending: VecDeque::new(),
            failures: Vec::new(),
            total: 0,
            payload: Vec::with_capacity(DmaMap::SIZE.max(DmaUnmap::SIZE)),
        }
    }

    /// Maps every region of the current guest memory that the [`GuestMemorySharing`]
    /// selects (all of them by default) at its own guest address, in one transaction. Every
    /// region is checked before anything is sent; regions already mapped this way are left
    /// alone.
    pub fn map_guest_memory(&self) -> Result<(), Error> {
        self.sync_guest_memory()
    }

    /// Brings the guest-memory mappings in step with the current snapshot of guest memory
    /// (after a hot-plug through a [`vm_memory::GuestMemoryAtomic`]): regions that appeared
    /// are mapped, regions that went are unmapped, in one transaction. A region counts as the
    /// same when its guest address, size, host address and permissions are. Only regions the
    /// [`GuestMemorySharing`] selects are mapped (a region it stops selecting is unmapped);
    /// windows mapped with [`DmaMapper::map`] are left alone.
    pub fn sync_guest_memory(&self) -> Result<(), Error> {
        let _sync = crate::sync::lock(&self.sync);
        let guard = self.memory.memory();
        let mem: &AS::M = &guard;
        let shared: Vec<&<AS::M as GuestMemoryBackend>::R> =
            mem.iter().filter(|r| self.shares(*r)).collect();
        let current: HashSet<(u64, u64, usize, Access)> = shared
            .iter()
            .map(|r| (r.start_addr().0, r.len(), r.host_base(), r.dma_access()))
            .collect();
        let mapped: Vec<DmaMapping> = read(&self.table)
            .iter()
            .filter(|m| m.kind == MappingKind::GuestRegion && m.owner == self.owner)
            .copied()
            .collect();
        let known: HashSet<(u64, u64, usize, Access)> = mapped
            .iter()
            .map(|m| (m.gpa, m.size, m.host_region, m.access))
            .collect();
        let gone: Vec<&DmaMapping> = mapped
            .iter()
            .filter(|m| !current.contains(&(m.gpa, m.size, m.host_region, m.access)))
            .collect();
        let new: Vec<&<AS::M as GuestMemoryBackend>::R> = shared
            .into_iter()
            .filter(|r| {
                !known.contains(&(r.start_addr().0, r.len(), r.host_base(), r.dma_access()))
            })
            .collect();
        // Check the new regions on their own before sending anything; overlaps with other
        // mappings and the map count are checked again as each map is sent.
        for r in &new {
            let op = DmaOp::Map {
                iova: r.start_addr().0,
                size: r.len(),
            };
            self.check_window(op)?;
            if r.dma_access() == Access::default() {
                return Err(Error::NoAccess {
                    op,
                    gpa: r.start_addr().0,
                });
            }
        }
        let mut tx = self.transaction();
        for m in gone {
            tx.unmap(m.iova, m.size)?;
        }
        for r in new {
            tx.map_region(
                r,
                r.start_addr().0,
                r.start_addr().0,
                r.len(),
                MappingKind::GuestRegion,
            )?;
        }
        tx.commit()
    }

    /// Maps `iova..iova + size` onto guest memory `gpa..gpa + size`, which must lie inside
    /// one guest memory region (the role of Cloud Hypervisor's `ExternalDmaMapping`).
    pub fn map(&self, iova: u64, gpa: u64, size: u64) -> Result<(), Error> {
        let mut tx = self.transaction();
        tx.map(iova, gpa, size)?;
        tx.commit()
    }

    /// Unmaps the window that is exactly `iova..iova + size`.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<(), Error> {
        let mut tx = self.transaction();
        tx.unmap(iova, size)?;
        tx.commit()
    }

    /// Unmaps every live window, pipelined. (One DMA_UNMAP per window rather than the
    /// deprecated UNMAP_ALL flag, which the 0.9.2 spec no longer defines and some servers
    /// misread.)
    pub fn unmap_all(&self) -> Result<(), Error> {
        let all = self.mappings();
        let mut tx = self.transaction();
        for m in all {
            match tx.unmap(m.iova, m.size) {
                // Unmapped by another thread meanwhile.
                Err(Error::NoSuchMapping { .. }) => {}
                r => r?,
            }
        }
        tx.commit()
    }

    /// Whether the sharing selects guest memory region `r`.
    fn shares(&self, r: &<AS::M as GuestMemoryBackend>::R) -> bool {
        match &self.sharing {
            GuestMemorySharing::All => true,
            GuestMemorySharing::None => false,
            GuestMemorySharing::Filter(filter) => filter(&GuestRegionInfo {
                gpa: r.start_addr().0,
                size: r.len(),
                access: r.dma_access(),
                shared_file: r.shared_file().is_some(),
            }),
        }
    }

    /// The checks that need no table: non-empty, no wrap-around, page alignment.
    fn check_window(&self, op: DmaOp) -> Result<(), Error> {
        let (DmaOp::Map { iova, size } | DmaOp::Unmap { iova, size }) = op;
        if size == 0 {
            return Err(Error::Empty { op });
        }
        if iova.checked_add(size).is_none() {
            return Err(Error::Overflow { op });
        }
        let page = self.limits.page_size.max(1);
        if iova % page != 0 || size % page != 0 {
            return Err(Error::Unaligned {
                op,
                page_size: page,
            });
        }
        Ok(())
    }

    /// Checks a map against the table and enters it; the caller sends it while still
    /// holding the lock, so that the server sees operations in table order.
    fn plan_map(
        &self,
        table: &mut Table,
        mapping: DmaMapping,
        file: Option<(RawFd, u64)>,
        payload: &mut Vec<u8>,
    ) -> Result<Planned, Error> {
        let op = DmaOp::Map {
            iova: mapping.iova,
            size: mapping.size,
        };
        if let Some(m) = table.overlapping(mapping.iova, mapping.end()) {
            return Err(Error::Overlap {
                op,
                start: m.iova,
                end: m.end(),
            });
        }
        let count = table.len() + 1;
        if count > self.limits.max_dma_maps as usize {
            return Err(Error::TooManyMappings {
                op,
                count,
                limit: self.limits.max_dma_maps,
            });
        }
        let mut flags = 0;
        if mapping.access.read {
            flags |= DmaMap::FLAG_READ;
        }
        if mapping.access.write {
            flags |= DmaMap::FLAG_WRITE;
        }
        let offset = file.map_or(0, |(_, o)| o);
        payload.clear();
        DmaMap::new(flags, offset, mapping.iova, mapping.size).encode_into(payload);
        table.insert(mapping);
        Ok(Planned {
            mapping,
            fd: file.map(|(fd, _)| fd),
        })
    }
}

impl<AS> Drop for DmaMapper<AS> {
    fn drop(&mut self) {
        // Windows left mapped stay served from this mapper's memory.
        write(&self.table).release_source(self.owner);
    }
}

/// Why an operation is waiting, and how to undo its table change if the server refuses it.
#[derive(Debug)]
enum Undo {
    /// Remove the window the map entered.
    Map(DmaMapping),
    /// Put back the window the unmap removed.
    Unmap(DmaMapping),
}

#[derive(Debug)]
struct Sent {
    op: DmaOp,
    undo: Undo,
    ticket: PendingReply,
}

/// A batch of maps and unmaps, pipelined: each is checked and sent when added, and
/// [`Transaction::commit`] waits once for all replies.
///
/// Dropping a transaction without committing still collects its replies (so that the table
/// matches the server) and logs the failures.
#[must_use = "a transaction reports its failures only through commit"]
pub struct Transaction<'a, AS> {
    mapper: &'a DmaMapper<AS>,
    pending: VecDeque<Sent>,
    failures: Vec<DmaFailure>,
    total: usize,
    /// The payload being sent, reused from one operation to the next.
    payload: Vec<u8>,
}

impl<AS> fmt::Debug for Transaction<'_, AS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("pending", &self.pending.len())
            .field("failures", &self.failures.len())
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl<AS> Transaction<'_, AS>
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    /// Adds a map of `iova..iova + size` onto guest memory `gpa..gpa + size` (inside one
    /// region) and sends it. A local refusal is returned at once and sends nothing.
    pub fn map(&mut self, iova: u64, gpa: u64, size: u64) -> Result<(), Error> {
        let mapper = self.mapper;
        let op = DmaOp::Map { iova, size };
        mapper.check_window(op)?;
        let guard = mapper.memory.memory();
        let mem: &AS::M = &guard;
        let region = gpa
            .checked_add(size - 1)
            .and_then(|last| {
                let r = mem.find_region(GuestAddress(gpa))?;
                r.check_address(r.to_region_addr(GuestAddress(last))?)?;
                Some(r)
            })
            .ok_or(Error::NotInGuestMemory { op, gpa, size })?;
        self.map_region(region, iova, gpa, size, MappingKind::Iova)
    }

    fn map_region(
        &mut self,
        region: &<AS::M as GuestMemoryBackend>::R,
        iova: u64,
        gpa: u64,
        size: u64,
        kind: MappingKind,
    ) -> Result<(), Error> {
        let mapper = self.mapper;
        let op = DmaOp::Map { iova, size };
        mapper.check_window(op)?;
        let page = mapper.limits.page_size.max(1);
        if gpa % page != 0 {
            return Err(Error::Unaligned {
                op,
                page_size: page,
            });
        }
        let access = region.dma_access();
        if access == Access::default() {
            return Err(Error::NoAccess { op, gpa });
        }
        let in_region = gpa - region.start_addr().0;
        let shared_file = region
            .shared_file()
            .filter(|_| !mapper.space.message_only());
        let file = match shared_file {
            Some(fo) => Some((
                fo.file().as_raw_fd(),
                fo.start()
                    .checked_add(in_region)
                    .ok_or(Error::Overflow { op })?,
            )),
            None => None,
        };
        let mapping = DmaMapping {
            iova,
            size,
            gpa,
            access,
            fd_backed: file.is_some(),
            kind,
            host_region: region.host_base(),
            owner: mapper.owner,
        };
        let mut table = write(&mapper.table);
        let planned = mapper.plan_map(&mut table, mapping, file, &mut self.payload)?;
        let sent =
            mapper
                .connection
                .send_request(Command::DmaMap, &self.payload, planned.fd.as_slice());
        self.record(&mut table, op, Undo::Map(planned.mapping), sent);
        drop(table);
        self.collect_if_full();
        Ok(())
    }

    /// Adds an unmap of the window that is exactly `iova..iova + size` and sends it. The
    /// window stops being served at once.
    pub fn unmap(&mut self, iova: u64, size: u64) -> Result<(), Error> {
        let mapper = self.mapper;
        let op = DmaOp::Unmap { iova, size };
        let mut table = write(&mapper.table);
        // Only the mapper's own windows: another mapper's are not its to take down.
        if table.owner_at(iova) != Some(mapper.owner) {
            return Err(Error::NoSuchMapping { op });
        }
        let removed = table
            .remove_exact(iova, size)
            .ok_or(Error::NoSuchMapping { op })?;
        self.payload.clear();
        DmaUnmap::new(iova, size).encode_into(&mut self.payload);
        let sent = mapper
            .connection
            .send_request(Command::DmaUnmap, &self.payload, &[]);
        self.record(&mut table, op, Undo::Unmap(removed), sent);
        drop(table);
        self.collect_if_full();
        Ok(())
    }

    fn record(
        &mut self,
        table: &mut Table,
        op: DmaOp,
        undo: Undo,
        sent: Result<PendingReply, connection::Error>,
    ) {
        self.total += 1;
        match sent {
            Ok(ticket) => self.pending.push_back(Sent { op, undo, ticket }),
            Err(error) => {
                undo_in(table, undo);
                self.failures.push(DmaFailure { op, error });
            }
        }
    }

    /// Keeps the outstanding operations within [`WINDOW`]: collects the older half.
    fn collect_if_full(&mut self) {
        if self.pending.len() >= WINDOW {
            self.collect(WINDOW / 2);
        }
    }

    /// Waits for the `n` oldest replies (in order; the server answers in order).
    fn collect(&mut self, n: usize) {
        for _ in 0..n {
            let Some(sent) = self.pending.pop_front() else {
                return;
            };
            let result = self.mapper.connection.wait(sent.ticket).and_then(|reply| {
                let checked = check_reply(sent.op, &reply.payload);
                connection::recycle_reply(reply);
                checked
            });
            if let Err(error) = result {
                log::debug!("{} failed: {error}", sent.op);
                undo_in(&mut write(&self.mapper.table), sent.undo);
                self.failures.push(DmaFailure { op: sent.op, error });
            }
        }
    }

    /// Waits for every reply. `Ok` when the server accepted every operation; otherwise
    /// [`Error::Failed`] (one failure) or [`Error::Batch`] (several) lists each failed
    /// operation, and the table holds exactly what the server accepted.
    pub fn commit(mut self) -> Result<(), Error> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), Error> {
        self.collect(self.pending.len());
        let mut failures = std::mem::take(&mut self.failures);
        if failures.len() > 1 {
            return Err(Error::Batch {
                total: self.total,
                failures,
            });
        }
        failures.pop().map_or(Ok(()), |f| Err(Error::Failed(f)))
    }
}

/// Checks a successful reply's payload. A DMA_UNMAP reply echoes the window (libvfio-user
/// and rust-vmm's server both send the 24-byte entry back); one that is shorter or names
/// another window is a protocol violation. A DMA_MAP reply has nothing to check.
fn check_reply(op: DmaOp, payload: &[u8]) -> Result<(), connection::Error> {
    let DmaOp::Unmap { iova, size } = op else {
        return Ok(());
    };
    let what = match DmaUnmap::decode(payload) {
        Ok(echo) if (echo.address, echo.size) == (iova, size) => return Ok(()),
        Ok(echo) => format!("reply echoes window {:#x}+{:#x}", echo.address, echo.size),
        Err(e) => e.to_string(),
    };
    Err(connection::Error::BadReply {
        command: Command::DmaUnmap,
        what,
    })
}

fn undo_in(table: &mut Table, undo: Undo) {
    match undo {
        Undo::Map(m) => {
            table.remove_exact(m.iova, m.size);
        }
        Undo::Unmap(m) => {
            if table.overlapping(m.iova, m.end()).is_none() {
                table.insert(m);
            }
        }
    }
}

impl<AS> Drop for Transaction<'_, AS> {
    fn drop(&mut self) {
        if self.pending.is_empty() && self.failures.is_empty() {
            return;
        }
        // Not committed: still collect the replies so that the table matches the server.
        while let Some(sent) = self.pending.pop_front() {
            if let Err(error) = self.mapper.connection.wait(sent.ticket) {
                undo_in(&mut write(&self.mapper.table), sent.undo);
                self.failures.push(DmaFailure { op: sent.op, error });
            }
        }
        for f in self.failures.drain(..) {
            log::warn!("uncommitted DMA transaction: {f}");
        }
    }
}
