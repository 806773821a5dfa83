// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Sharing guest memory with the server: the one function attach calls, and what the device
//! keeps of it.
//!
//! The work is the DMA layer's ([`crate::dma`]): a [`DmaMapper`] maps every guest memory
//! region at its own guest address in one pipelined transaction, with the region's fd when
//! it is a shared file mapping (the server mmaps it) and without one otherwise (the server
//! then reaches it with DMA_READ / DMA_WRITE, which the mapper's handler, installed on the
//! connection, serves). The device keeps the mapper behind [`GuestDma`] so that it need not
//! be generic over the guest memory type.

use std::fmt;
use std::sync::Arc;

use vm_memory::{GuestAddressSpace, GuestMemoryBackend};

use super::Error;
use crate::connection::Connection;
use crate::dma::{DirtyLog, DmaMapper, DmaMapping, DmaRegion};

/// Guest memory shared with one server.
pub(crate) trait GuestDma: Send + Sync + fmt::Debug {
    /// Follows guest memory hot-plug: maps regions that appeared, unmaps those that went.
    fn sync(&self) -> Result<(), Error>;

    /// Unmaps everything that was mapped.
    fn unmap_all(&self) -> Result<(), Error>;

    /// The same mappings on a new connection (see [`DmaMapper::replay_on`]).
    fn replay_on(&self, connection: &Connection) -> Result<Box<dyn GuestDma>, Error>;

    /// The windows mapped now (for DMA dirty logging).
    fn mappings(&self) -> Vec<DmaMapping>;

    /// The mapper's log of the pages the client wrote for the server.
    fn dirty_log(&self) -> Arc<DirtyLog>;
}

impl<AS> GuestDma for DmaMapper<AS>
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    fn sync(&self) -> Result<(), Error> {
        Ok(self.sync_guest_memory()?)
    }

    fn unmap_all(&self) -> Result<(), Error> {
        Ok(DmaMapper::unmap_all(self)?)
    }

    fn replay_on(&self, connection: &Connection) -> Result<Box<dyn GuestDma>, Error> {
        Ok(Box::new(DmaMapper::replay_on(self, connection)?))
    }

    fn mappings(&self) -> Vec<DmaMapping> {
        DmaMapper::mappings(self)
    }

    fn dirty_log(&self) -> Arc<DirtyLog> {
        Arc::clone(DmaMapper::dirty_log(self))
    }
}

/// Shares `memory` with the server behind `connection`; on failure nothing stays mapped.
pub(crate) fn map_guest_memory<AS>(
    connection: &Connection,
    memory: AS,
) -> Result<Box<dyn GuestDma>, Error>
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    let mapper = DmaMapper::new(connection, memory);
    if let Err(e) = mapper.map_guest_memory() {
        // The table holds what the server accepted: undo exactly that.
        if let Err(u) = mapper.unmap_all() {
            log::warn!("undoing a failed guest memory mapping: {u}");
        }
        return Err(e.into());
    }
    log::debug!("guest memory: {} windows mapped", mapper.len());
    Ok(Box::new(mapper))
}
