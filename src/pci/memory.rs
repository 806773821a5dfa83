// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Sharing guest memory with the server: the one function attach calls, and what detach
//! undoes.
//!
//! This is a stand-in until the crate's DMA layer (`dma`) is available on this branch: it
//! maps every guest memory region that is backed by a file with one DMA_MAP carrying the
//! fd (the server mmaps it), pipelined, and unmaps them at detach. Regions without a file
//! are refused: reaching them needs message-based DMA (the server's DMA_READ / DMA_WRITE),
//! which the DMA layer serves.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};

use super::Error;
use crate::connection::Connection;
use crate::protocol::{Command, DmaMap, DmaUnmap, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE};
use crate::proxy::{Proxy, Ticket};

/// Guest memory shared with one server, as detach needs to undo it.
pub(crate) trait GuestDma: Send + Sync + fmt::Debug {
    /// Unmaps everything that was mapped.
    fn unmap_all(&self) -> Result<(), Error>;
}

/// Shares `memory` with the server behind `connection`.
pub(crate) fn map_guest_memory<AS>(
    connection: &Connection,
    memory: AS,
) -> Result<Box<dyn GuestDma>, Error>
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
{
    let page = connection.capabilities().min_page_size();
    let guard = memory.memory();
    let mut windows = Vec::new();
    for region in guard.iter() {
        let (gpa, size) = (region.start_addr().0, region.len());
        let Some(file) = region.file_offset() else {
            return Err(Error::GuestMemory(format!(
                "region {gpa:#x}+{size:#x} is not backed by a file; sharing it needs \
                 message-based DMA"
            )));
        };
        if gpa % page != 0 || size % page != 0 || file.start() % page != 0 {
            return Err(Error::GuestMemory(format!(
                "region {gpa:#x}+{size:#x} (file offset {:#x}) is not aligned to the server's \
                 page size {page:#x}",
                file.start()
            )));
        }
        windows.push((gpa, size, file.start(), file.file().as_raw_fd()));
    }
    let dma = FdDma {
        proxy: connection.proxy().clone(),
        maps: Mutex::new(Vec::new()),
    };
    let mut tickets: Vec<(Ticket, u64, u64)> = Vec::with_capacity(windows.len());
    let mut first_error = None;
    for (gpa, size, offset, fd) in windows {
        let mut payload = Vec::with_capacity(DmaMap::SIZE);
        DmaMap::new(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE, offset, gpa, size)
            .encode_into(&mut payload);
        match dma.proxy.send_nowait(Command::DmaMap, &payload, &[fd]) {
            Ok(t) => tickets.push((t, gpa, size)),
            Err(e) => {
                first_error = Some(map_error("DMA_MAP", gpa, size, e));
                break;
            }
        }
    }
    for (ticket, gpa, size) in tickets {
        match dma.proxy.wait(ticket) {
            Ok(_) => dma.lock().push((gpa, size)),
            Err(e) => {
                first_error.get_or_insert(map_error("DMA_MAP", gpa, size, e));
            }
        }
    }
    if let Some(e) = first_error {
        // Leave nothing behind: the server keeps what it accepted until unmapped.
        if let Err(u) = dma.unmap_all() {
            log::warn!("undoing a failed guest memory mapping: {u}");
        }
        return Err(e);
    }
    log::debug!("guest memory: {} windows mapped", dma.lock().len());
    Ok(Box::new(dma))
}

fn map_error(what: &str, gpa: u64, size: u64, e: crate::proxy::Error) -> Error {
    Error::GuestMemory(format!(
        "{what} of {gpa:#x}..{:#x}: {e}",
        gpa.saturating_add(size)
    ))
}

#[derive(Debug)]
struct FdDma {
    proxy: Proxy,
    maps: Mutex<Vec<(u64, u64)>>,
}

impl FdDma {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, u64)>> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl GuestDma for FdDma {
    fn unmap_all(&self) -> Result<(), Error> {
        let maps = std::mem::take(&mut *self.lock());
        let mut tickets = Vec::with_capacity(maps.len());
        let mut first_error = None;
        for (gpa, size) in maps {
            let mut payload = Vec::with_capacity(DmaUnmap::SIZE);
            DmaUnmap::new(gpa, size).encode_into(&mut payload);
            match self.proxy.send_nowait(Command::DmaUnmap, &payload, &[]) {
                Ok(t) => tickets.push((t, gpa, size)),
                Err(e) => {
                    first_error.get_or_insert(map_error("DMA_UNMAP", gpa, size, e));
                }
            }
        }
        for (ticket, gpa, size) in tickets {
            if let Err(e) = self.proxy.wait(ticket) {
                first_error.get_or_insert(map_error("DMA_UNMAP", gpa, size, e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
