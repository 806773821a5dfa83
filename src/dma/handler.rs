// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Serving the server's DMA_READ and DMA_WRITE from guest memory.
//!
//! Runs on whichever thread reads the socket (a caller waiting for its own reply, the event
//! loop, or the twin socket's reader), so it never blocks on anything but the mapping
//! table's read lock, and never sends a request of its own.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, RwLock};

use vm_memory::{
    Address, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion,
    MemoryRegionAddress, WriteVolatile,
};

use super::dirty::DirtyLog;
use super::table::{Access, Piece, Table};
use super::DmaRegion;
use crate::connection::{socket, ReplyData, ServerRequestHandler, UnbufferedReply};
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

/// Answers DMA_READ and DMA_WRITE through the mapping table of a
/// [`DmaMapper`](super::DmaMapper); installed on the connection by the mapper.
///
/// Errors, each answered with an error reply and with guest memory left untouched:
/// `EINVAL` for a malformed request or one that carries fds, `E2BIG` for a `count` above
/// our `max_data_xfer_size`, `EFAULT` for a range not wholly inside live mappings (or whose
/// guest memory has gone), `EPERM` for a mapping without the needed access, `ENOSYS` for
/// other server requests.
pub(crate) struct DmaRequestHandler<AS> {
    pub(super) table: Arc<RwLock<Table>>,
    pub(super) memory: AS,
    pub(super) dirty: Arc<DirtyLog>,
    pub(super) max_data_xfer_size: u64,
}

impl<AS> fmt::Debug for DmaRequestHandler<AS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaRequestHandler")
            .field("max_data_xfer_size", &self.max_data_xfer_size)
            .finish_non_exhaustive()
    }
}

impl<AS> DmaRequestHandler<AS>
where
    AS: GuestAddressSpace,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    /// Translates and checks a request's range: every byte in a live mapping granting
    /// `need`, and in guest memory that still allows it.
    fn pieces(
        &self,
        mem: &AS::M,
        address: u64,
        count: u64,
        need: Access,
    ) -> Result<Vec<Piece>, u32> {
        if count > self.max_data_xfer_size {
            return Err(libc::E2BIG as u32);
        }
        let pieces = crate::sync::read(&self.table)
            .translate(address, count, need)
            .map_err(|e| e as u32)?;
        for p in &pieces {
            region_for(mem, p, need).ok_or(libc::EFAULT as u32)?;
        }
        Ok(pieces)
    }

    /// Decodes and checks a DMA_READ request.
    fn read_request(&self, mem: &AS::M, payload: &[u8]) -> Result<(DmaAccess, Vec<Piece>), u32> {
        if payload.len() != DmaAccess::HEAD_SIZE {
            return Err(libc::EINVAL as u32);
        }
        let head = DmaAccess::decode(payload).map_err(|_| libc::EINVAL as u32)?;
        let pieces = self.pieces(mem, head.address, head.count, READ)?;
        Ok((head, pieces))
    }

    fn dma_read(&self, payload: &[u8], reply: &mut Vec<u8>) -> Result<(), u32> {
        let guard = self.memory.memory();
        let mem: &AS::M = &guard;
        let (head, pieces) = self.read_request(mem, payload)?;
        // `count` is bounded by max_data_xfer_size above.
        reply.reserve(DmaAccess::HEAD_SIZE + head.count as usize);
        head.encode_into(reply);
        for p in &pieces {
            let (region, offset) = region_for(mem, p, READ).ok_or(libc::EFAULT as u32)?;
            let slice = region
                .get_slice(offset, p.len)
                .map_err(|_| libc::EFAULT as u32)?;
            reply
                .write_all_volatile(&slice)
                .map_err(|_| libc::EFAULT as u32)?;
        }
        Ok(())
    }

    fn dma_write(&self, payload: &[u8], reply: &mut Vec<u8>) -> Result<(), u32> {
        let (head, data) = DmaAccess::decode_with_data(payload).map_err(|_| libc::EINVAL as u32)?;
        let guard = self.memory.memory();
        let mem: &AS::M = &guard;
        let pieces = self.pieces(mem, head.address, head.count, WRITE)?;
        // Every piece was checked before the first byte is written.
        let mut rest = data;
        for p in &pieces {
            let (region, offset) = region_for(mem, p, WRITE).ok_or(libc::EFAULT as u32)?;
            let (now, later) = rest.split_at(p.len.min(rest.len()));
            let slice = region
                .get_slice(offset, now.len())
                .map_err(|_| libc::EFAULT as u32)?;
            slice.copy_from(now);
            self.dirty.mark(p.gpa, now.len() as u64);
            rest = later;
        }
        head.encode_into(reply);
        Ok(())
    }
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

impl<AS> ServerRequestHandler for DmaRequestHandler<AS>
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    fn handle_unbuffered(
        &self,
        header: &Header,
        payload: &[u8],
        fds: &[OwnedFd],
    ) -> Option<Result<UnbufferedReply, u32>> {
        if header.known_command() != Some(Command::DmaRead) || !fds.is_empty() {
            return None;
        }
        let guard = self.memory.memory();
        let mem: &AS::M = &guard;
        let (head, pieces) = match self.read_request(mem, payload) {
            Ok(r) if r.0.count >= UNBUFFERED_MIN => r,
            // Small, or refused: the buffered path answers (and reports the refusal).
            _ => return None,
        };
        let mut reply = Vec::with_capacity(DmaAccess::HEAD_SIZE);
        head.encode_into(&mut reply);
        // `count` is bounded by max_data_xfer_size.
        let data = GuestData {
            memory: self.memory.clone(),
            pieces,
            len: head.count as usize,
        };
        Some(Ok(UnbufferedReply {
            head: reply,
            data: Box::new(data),
        }))
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
