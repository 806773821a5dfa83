// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Replaying a mapper's table on a new connection (after a reconnect): the same windows,
//! with the same guest memory and fds, for a server that holds none of them.

use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryBackend};

use super::{DmaMapper, DmaRegion, Error};
use crate::connection::Connection;

impl<AS> DmaMapper<AS>
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    /// A mapper on `conn` (a new connection to a server that holds no mapping) with this
    /// mapper's windows mapped again there, in one pipelined transaction: each window onto
    /// the same guest memory, with its region's fd when it is a shared file mapping (never
    /// in [`DmaMode::MessageOnly`](super::DmaMode::MessageOnly), which carries over). The
    /// new mapper serves the server's DMA_READ / DMA_WRITE on `conn` (the connection's one
    /// handler) and shares this one's dirty log and sharing choice. A window whose guest memory region went meanwhile (hot-unplug) is left
    /// out; [`DmaMapper::sync_guest_memory`] maps regions that appeared.
    ///
    /// On failure the new mapper is dropped: the server keeps what it accepted until the
    /// caller closes the new connection (a failed replay is a failed reconnect attempt).
    pub fn replay_on(&self, conn: &Connection) -> Result<DmaMapper<AS>, Error> {
        // Same memory, sharing, mode (message-only stays so) and dirty log.
        let mapper = self.successor(conn);
        let windows = self.mappings();
        let guard = self.memory.memory();
        let mem: &AS::M = &guard;
        let mut tx = mapper.transaction();
        for m in windows {
            let region = mem
                .find_region(GuestAddress(m.gpa))
                .filter(|r| r.host_base() == m.host_region);
            let Some(region) = region else {
                log::debug!(
                    "DMA window {:#x}+{:#x}: its memory went, not replayed",
                    m.iova,
                    m.size
                );
                continue;
            };
            tx.map_region(region, m.iova, m.gpa, m.size, m.kind)?;
        }
        tx.commit()?;
        drop(guard);
        Ok(mapper)
    }
}
