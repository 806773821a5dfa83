// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Sharing guest memory with the server: the one function attach calls, and what the device
//! keeps of it.
//!
//! The work is the DMA layer's ([`crate::dma`]): a [`DmaMapper`] maps the guest memory
//! regions the [`DmaOptions`] select at their own guest addresses in one pipelined
//! transaction, with the region's fd when it is a shared file mapping and the mode allows
//! (the server mmaps it) and without one otherwise (the server then reaches it with
//! DMA_READ / DMA_WRITE, which the connection's one DMA handler serves). The device keeps
//! the mapper as a [`DmaHandle`], which it also hands to the VMM for the windows it maps
//! itself (vIOMMU, virtio-mem blocks).

use std::fmt;
use std::sync::Arc;

use vm_memory::{GuestAddressSpace, GuestMemoryBackend};

use super::Error;
use crate::connection::Connection;
use crate::dma::{DirtyLog, DmaHandle, DmaMapper, DmaMapping, DmaOptions, DmaRegion};

/// Guest memory shared with one server.
pub(crate) trait GuestDma: Send + Sync + fmt::Debug {
    /// Follows guest memory hot-plug: maps regions that appeared, unmaps those that went.
    fn sync(&self) -> Result<(), Error>;

    /// Unmaps everything that was mapped.
    fn unmap_all(&self) -> Result<(), Error>;

    /// The windows, for the VMM.
    fn handle(&self) -> DmaHandle;

    /// The same mappings on a new connection (see [`DmaMapper::replay_on`]); the handles
    /// the VMM holds follow them there.
    fn replay_on(&self, connection: &Connection) -> Result<Box<dyn GuestDma>, Error>;

    /// The windows mapped now (for DMA dirty logging).
    fn mappings(&self) -> Vec<DmaMapping>;

    /// The mapper's log of the pages the client wrote for the server.
    fn dirty_log(&self) -> Arc<DirtyLog>;
}

impl GuestDma for DmaHandle {
    fn sync(&self) -> Result<(), Error> {
        Ok(self.sync_guest_memory()?)
    }

    fn unmap_all(&self) -> Result<(), Error> {
        Ok(DmaHandle::unmap_all(self)?)
    }

    fn handle(&self) -> DmaHandle {
        self.clone()
    }

    fn replay_on(&self, connection: &Connection) -> Result<Box<dyn GuestDma>, Error> {
        let next = DmaHandle::replay_on(self, connection)?;
        // Every clone the VMM holds now controls the windows on the new connection.
        self.redirect(&next);
        Ok(Box::new(self.clone()))
    }

    fn mappings(&self) -> Vec<DmaMapping> {
        DmaHandle::mappings(self)
    }

    fn dirty_log(&self) -> Arc<DirtyLog> {
        DmaHandle::dirty_log(self)
    }
}

/// Shares `memory` with the server behind `connection` as `options` say; on failure
/// nothing stays mapped.
pub(crate) fn map_guest_memory<AS>(
    connection: &Connection,
    memory: AS,
    options: &DmaOptions,
) -> Result<Box<dyn GuestDma>, Error>
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    let mapper = DmaMapper::new(connection, memory).with_options(options);
    if let Err(e) = mapper.map_guest_memory() {
        // The table holds what the server accepted: undo exactly that.
        if let Err(u) = mapper.unmap_all() {
            log::warn!("undoing a failed guest memory mapping: {u}");
        }
        return Err(e.into());
    }
    log::debug!(
        "guest memory: {} windows mapped, {:?}",
        mapper.len(),
        mapper.mode()
    );
    Ok(Box::new(DmaHandle::from(mapper)))
}
