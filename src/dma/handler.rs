// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Serving the server's DMA_READ and DMA_WRITE from guest memory.
//!
//! Runs on whichever thread reads the socket (a caller waiting for its own reply, the event
//! loop, or the twin socket's reader), so it never blocks on anything but the mapping
//! table's read lock, and never sends a request of its own.
//!
//! A connection has one [`DmaSpace`]: one table and one handler for the windows of every
//! mapper made on it. A request is translated through the table into pieces, each tagged
//! with the mapper that owns its window; each run of one owner's pieces is checked against,
//! and copied from or into, that mapper's guest memory ([`GuestSource`], which hides the
//! memory's type). Every piece is checked before anything is copied, under the table's read
//! lock, which is held until the copy is done (an unmap waits for it). A large DMA_READ
//! within one owner's windows is sent straight from guest memory, except in message-only
//! mode (see `handle_unbuffered`); one spanning several owners is copied into the reply
//! buffer.

use std::any::Any;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use vm_memory::{
    Address, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion,
    MemoryRegionAddress, WriteVolatile,
};

use super::dirty::DirtyLog;
use super::table::{Access, Piece, Table};
use super::DmaRegion;
use crate::connection::{socket, Handle, ReplyData, Responder, UnbufferedReply};
use crate::protocol::{Command, DmaAccess, Header};

/// DMA_READ replies from this size up are sent straight from guest memory where the
/// connection can (the twin socket, and the main socket when nothing is queued before the
/// reply): one `sendmsg` either way, minus an allocation and a copy. Below it the
/// bookkeeping costs more than the copy.
const UNBUFFERED_MIN: u64 = 512;

const READ: Access = Access {
    read: true,
    write: false,
};
const WRITE: Access = Access {
    read: false,
    write: true,
};

/// The DMA state a connection's mappers share: the server has one DMA address space per
/// connection, so there is one table of windows, one handler serving all of them (whichever
/// mapper made them) and one dirty log.
#[derive(Debug)]
pub(crate) struct DmaSpace {
    pub(super) table: Arc<RwLock<Table>>,
    pub(super) dirty: Arc<DirtyLog>,
    /// Our `max_data_xfer_size`, as the latest mapper saw it.
    max_data_xfer_size: AtomicU64,
    /// No fd is sent with any DMA_MAP on this connection (sticky: see `DmaMode`).
    message_only: AtomicBool,
    next_owner: AtomicU64,
}

impl DmaSpace {
    /// The connection's space, created on first use; (re)installs its request handler,
    /// replacing any other, as a mapper always did.
    /// A new space starts with `dirty` when given (a successor keeps its predecessor's log).
    pub(super) fn of(
        connection: &Handle,
        max_data_xfer_size: u64,
        dirty: Option<Arc<DirtyLog>>,
    ) -> Arc<DmaSpace> {
        let mut slot = crate::sync::lock(&connection.dma_space);
        let existing = slot.clone().and_then(|any| any.downcast::<DmaSpace>().ok());
        let space = existing.unwrap_or_else(|| {
            let space = Arc::new(DmaSpace {
                table: Arc::new(RwLock::new(Table::default())),
                dirty: dirty.unwrap_or_default(),
                max_data_xfer_size: AtomicU64::new(max_data_xfer_size),
                message_only: AtomicBool::new(false),
                next_owner: AtomicU64::new(0),
            });
            *slot = Some(Arc::clone(&space) as Arc<dyn Any + Send + Sync>);
            space
        });
        drop(slot);
        space
            .max_data_xfer_size
            .store(max_data_xfer_size, Ordering::Relaxed);
        connection.set_request_handler(Some(Arc::new(DmaRequestHandler {
            space: Arc::clone(&space),
        })));
        space
    }

    /// A fresh owner id for a mapper.
    pub(super) fn new_owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes every later DMA_MAP on the connection go without an fd.
    pub(super) fn set_message_only(&self) {
        self.message_only.store(true, Ordering::Release);
    }

    pub(super) fn message_only(&self) -> bool {
        self.message_only.load(Ordering::Acquire)
    }
}

/// One mapper's guest memory, as the handler reaches it (not generic, so that mappers of
/// different memory types share a handler).
pub(crate) trait GuestSource: Send + Sync {
    /// `Err(EFAULT)` unless every piece lies in guest memory granting `need`.
    fn check(&self, pieces: &[Piece], need: Access) -> Result<(), u32>;

    /// Appends the bytes of `pieces` to `out`.
    fn read(&self, pieces: &[Piece], out: &mut Vec<u8>) -> Result<(), u32>;

    /// Writes `data` (as long as the pieces together) into `pieces`, marking them dirty;
    /// nothing is written unless every piece is in guest memory that allows it.
    fn write(&self, pieces: &[Piece], data: &[u8], dirty: &DirtyLog) -> Result<(), u32>;

    /// The bytes of `pieces`, to be sent later straight from guest memory.
    fn reply_data(&self, pieces: Vec<Piece>, len: usize) -> Box<dyn ReplyData>;
}

/// A mapper's guest memory behind [`GuestSource`].
pub(crate) struct MemorySource<AS> {
    pub(super) memory: AS,
}

impl<AS> GuestSource for MemorySource<AS>
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    fn check(&self, pieces: &[Piece], need: Access) -> Result<(), u32> {
        let guard = self.memory.memory();
        let mem: &AS::M = &guard;
        for p in pieces {
            region_for(mem, p, need).ok_or(libc::EFAULT as u32)?;
        }
        Ok(())
    }

    fn read(&self, pieces: &[Piece], out: &mut Vec<u8>) -> Result<(), u32> {
        let guard = self.memory.memory();
        let mem: &AS::M = &guard;
        for p in pieces {
            let (region, offset) = region_for(mem, p, READ).ok_or(libc::EFAULT as u32)?;
            let slice = region
                .get_slice(offset, p.len)
                .map_err(|_| libc::EFAULT as u32)?;
            out.write_all_volatile(&slice)
                .map_err(|_| libc::EFAULT as u32)?;
        }
        Ok(())
    }

    fn write(&self, pieces: &[Piece], data: &[u8], dirty: &DirtyLog) -> Result<(), u32> {
        let guard = self.memory.memory();
        let mem: &AS::M = &guard;
        // Checked again in this snapshot, all before the first byte is written.
        for p in pieces {
            region_for(mem, p, WRITE).ok_or(libc::EFAULT as u32)?;
        }
        let mut rest = data;
        for p in pieces {
            let (region, offset) = region_for(mem, p, WRITE).ok_or(libc::EFAULT as u32)?;
            let (now, later) = rest.split_at(p.len.min(rest.len()));
            let slice = region
                .get_slice(offset, now.len())
                .map_err(|_| libc::EFAULT as u32)?;
            slice.copy_from(now);
            dirty.mark(p.gpa, now.len() as u64);
            rest = later;
        }
        Ok(())
    }

    fn reply_data(&self, pieces: Vec<Piece>, len: usize) -> Box<dyn ReplyData> {
        Box::new(GuestData {
            memory: self.memory.clone(),
            pieces,
            len,
        })
    }
}

/// Answers DMA_READ and DMA_WRITE through the connection's one mapping table, whichever
/// [`DmaMapper`](super::DmaMapper) made the windows; installed on the connection by the
/// first mapper.
///
/// Errors, each answered with an error reply and with guest memory left untouched:
/// `EINVAL` for a malformed request or one that carries fds, `E2BIG` for a `count` above
/// our `max_data_xfer_size`, `EFAULT` for a range not wholly inside live mappings (or whose
/// guest memory has gone), `EPERM` for a mapping without the needed access, `ENOSYS` for
/// other server requests.
#[derive(Debug)]
pub(crate) struct DmaRequestHandler {
    space: Arc<DmaSpace>,
}

impl DmaRequestHandler {
    /// Translates and checks a request's range: every byte in a live mapping granting
    /// `need`.
    fn pieces(
        &self,
        table: &Table,
        address: u64,
        count: u64,
        need: Access,
    ) -> Result<Vec<Piece>, u32> {
        if count > self.space.max_data_xfer_size.load(Ordering::Relaxed) {
            return Err(libc::E2BIG as u32);
        }
        table.translate(address, count, need).map_err(|e| e as u32)
    }

    /// Checks every run of pieces of one owner against that owner's guest memory.
    fn check_runs(table: &Table, pieces: &[Piece], need: Access) -> Result<(), u32> {
        for run in runs(pieces) {
            source_of(table, run)?.check(run, need)?;
        }
        Ok(())
    }

    /// Decodes a DMA_READ request.
    fn read_request(payload: &[u8]) -> Result<DmaAccess, u32> {
        if payload.len() != DmaAccess::HEAD_SIZE {
            return Err(libc::EINVAL as u32);
        }
        DmaAccess::decode(payload).map_err(|_| libc::EINVAL as u32)
    }

    fn dma_read(&self, payload: &[u8], reply: &mut Vec<u8>) -> Result<(), u32> {
        let head = Self::read_request(payload)?;
        let table = crate::sync::read(&self.space.table);
        let pieces = self.pieces(&table, head.address, head.count, READ)?;
        Self::check_runs(&table, &pieces, READ)?;
        // `count` is bounded by max_data_xfer_size above.
        reply.reserve(DmaAccess::HEAD_SIZE + head.count as usize);
        head.encode_into(reply);
        for run in runs(&pieces) {
            source_of(&table, run)?.read(run, reply)?;
        }
        Ok(())
    }

    fn dma_write(&self, payload: &[u8], reply: &mut Vec<u8>) -> Result<(), u32> {
        let (head, data) = DmaAccess::decode_with_data(payload).map_err(|_| libc::EINVAL as u32)?;
        let table = crate::sync::read(&self.space.table);
        let pieces = self.pieces(&table, head.address, head.count, WRITE)?;
        // Every piece is checked before the first byte is written.
        Self::check_runs(&table, &pieces, WRITE)?;
        let mut rest = data;
        for run in runs(&pieces) {
            let len = run.iter().map(|p| p.len).sum::<usize>().min(rest.len());
            let (now, later) = rest.split_at(len);
            source_of(&table, run)?.write(run, now, &self.space.dirty)?;
            rest = later;
        }
        head.encode_into(reply);
        Ok(())
    }
}

/// `pieces` in runs of one owner each.
fn runs(pieces: &[Piece]) -> impl Iterator<Item = &[Piece]> {
    pieces.chunk_by(|a, b| a.owner == b.owner)
}

/// The guest memory of the owner of a run of pieces.
fn source_of<'a>(table: &'a Table, run: &[Piece]) -> Result<&'a Arc<dyn GuestSource>, u32> {
    let owner = run.first().map_or(0, |p| p.owner);
    table.source(owner).ok_or(libc::EFAULT as u32)
}

/// The guest memory region holding all of `p`, if it grants `need`, with `p`'s offset in it.
fn region_for<'a, M>(mem: &'a M, p: &Piece, need: Access) -> Option<(&'a M::R, MemoryRegionAddress)>
where
    M: GuestMemoryBackend,
    M::R: DmaRegion,
{
    let gpa = GuestAddress(p.gpa);
    let region = mem.find_region(gpa)?;
    let offset = region.to_region_addr(gpa)?;
    let last = offset.checked_add(p.len.checked_sub(1)? as u64)?;
    region.check_address(last)?;
    region.dma_access().allows(need).then_some((region, offset))
}

/// DMA_READ data sent from guest memory without a copy. The memory snapshot is taken again
/// for each write, so a queued reply does not hold up memory hot-plug; a region that went
/// meanwhile fails the write (and with it the connection, whose stream cannot be resumed).
struct GuestData<AS> {
    memory: AS,
    pieces: Vec<Piece>,
    len: usize,
}

impl<AS> ReplyData for GuestData<AS>
where
    AS: GuestAddressSpace + Send + Sync,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    fn len(&self) -> usize {
        self.len
    }

    fn send(&self, sock: &UnixStream, prefix: &[&[u8]], offset: usize) -> io::Result<usize> {
        let fault = || io::Error::from_raw_os_error(libc::EFAULT);
        let guard = self.memory.memory();
        let mem: &AS::M = &guard;
        let mut skip = offset;
        let mut slices = Vec::with_capacity(self.pieces.len());
        for p in &self.pieces {
            if skip >= p.len {
                skip -= p.len;
                continue;
            }
            let (region, at) = region_for(mem, p, READ).ok_or_else(fault)?;
            let slice = region.get_slice(at, p.len).map_err(|_| fault())?;
            slices.push(slice.offset(skip).map_err(|_| fault())?);
            skip = 0;
        }
        socket::send_volatile(sock, prefix, &slices)
    }
}

impl Responder for DmaRequestHandler {
    fn handle_unbuffered(
        &self,
        header: &Header,
        payload: &[u8],
        fds: &[OwnedFd],
    ) -> Option<Result<UnbufferedReply, u32>> {
        if header.known_command() != Some(Command::DmaRead) || !fds.is_empty() {
            return None;
        }
        // Data sent straight from guest memory is read when it is sent: for a server that
        // does not read its socket, possibly after the window was unmapped and the guest
        // reused the memory. A server trusted with no fd gets a copy made now, under the
        // table's lock, so that it reads nothing outside what is mapped.
        if self.space.message_only() {
            return None;
        }
        // Small, refused, or spanning the windows of several mappers: the buffered path
        // answers (and reports a refusal).
        let head = Self::read_request(payload).ok()?;
        if head.count < UNBUFFERED_MIN {
            return None;
        }
        let table = crate::sync::read(&self.space.table);
        let pieces = self.pieces(&table, head.address, head.count, READ).ok()?;
        let owner = pieces.first()?.owner;
        if pieces.iter().any(|p| p.owner != owner) {
            return None;
        }
        let source = table.source(owner)?;
        source.check(&pieces, READ).ok()?;
        let mut reply = Vec::with_capacity(DmaAccess::HEAD_SIZE);
        head.encode_into(&mut reply);
        // `count` is bounded by max_data_xfer_size.
        let data = source.reply_data(pieces, head.count as usize);
        Some(Ok(UnbufferedReply { head: reply, data }))
    }

    fn handle(
        &self,
        header: &Header,
        payload: &[u8],
        fds: Vec<OwnedFd>,
        reply: &mut Vec<u8>,
    ) -> Result<(), u32> {
        let command = header.known_command();
        if !fds.is_empty() && matches!(command, Some(Command::DmaRead | Command::DmaWrite)) {
            log::warn!("server sent {} fds with {header}; refused", fds.len());
            return Err(libc::EINVAL as u32);
        }
        let result = match command {
            Some(Command::DmaRead) => self.dma_read(payload, reply),
            Some(Command::DmaWrite) => self.dma_write(payload, reply),
            _ => Err(libc::ENOSYS as u32),
        };
        if let Err(errno) = result {
            log::debug!("server request {header} refused with errno {errno}");
        }
        result
    }
}
