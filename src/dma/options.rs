// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a VMM chooses about DMA: which guest memory is shared with the server, and whether
//! the server may map it at all.

use std::fmt;
use std::sync::Arc;

use super::Access;

/// How the server reaches guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DmaMode {
    /// A window onto a shared file mapping (`MAP_SHARED` with a file, such as a memfd) goes
    /// with the file's fd and offset, and the server maps it: its DMA then costs a memory
    /// copy. Other windows are reached with DMA_READ / DMA_WRITE messages.
    #[default]
    Mapped,
    /// No guest memory fd is ever sent, even for shared memory: every DMA_MAP goes without
    /// one, and the server reaches guest memory only through DMA_READ / DMA_WRITE messages,
    /// which the client checks against the live windows (bytes outside them, or without the
    /// window's access, get an errno and touch nothing). DMA_READ data is copied while the
    /// request is checked, so a server that is slow to read its socket cannot receive memory
    /// unmapped meanwhile (in [`DmaMode::Mapped`] large replies are sent straight from guest
    /// memory, read as the socket takes them).
    ///
    /// Use it when the server is not trusted with guest memory: a server holding an fd can
    /// read and write the whole region behind it, whatever the windows say, and keeps doing
    /// so after an unmap or a vIOMMU change until it chooses to unmap. With messages, what it
    /// reaches is exactly what is mapped now (with [`GuestMemorySharing::None`] and a vIOMMU,
    /// exactly what the guest's IOMMU mapped), and guest memory need not be a shared file at
    /// all. The cost is one message round trip and a copy per DMA access: about the socket's
    /// throughput (a few GB/s for large accesses, much less for small ones; BENCHMARKS.md),
    /// against memory speed when mapped. Servers that cannot work without mapping guest
    /// memory (SPDK, DPDK-based ones) refuse such windows or fail their DMA; libvfio-user
    /// and QEMU's server handle them.
    ///
    /// Once set on a connection it holds for every mapper on it, and for the mappers a
    /// reconnect makes. Set it before the first map: windows mapped earlier with an fd keep
    /// it at the server until they are unmapped.
    MessageOnly,
}

/// Facts about one guest memory region, for a [`GuestMemorySharing::Filter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuestRegionInfo {
    /// Guest physical address of the first byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// What the region's permissions allow the server.
    pub access: Access,
    /// The region is a shared file mapping (it would go with its fd in [`DmaMode::Mapped`]).
    pub shared_file: bool,
}

/// Which guest memory is shared with the server at attach and after each
/// `sync_guest_memory` (memory hot-plug).
#[derive(Clone, Default)]
pub enum GuestMemorySharing {
    /// Every region, each mapped whole at its own guest address.
    #[default]
    All,
    /// The regions the filter selects (`true`), each whole at its own guest address. The
    /// others (`false`) are the VMM's to map, in whatever pieces it likes, through a
    /// [`DmaHandle`](super::DmaHandle): a hot-pluggable region such as virtio-mem's is left
    /// out and mapped block by block as the VMM plugs blocks (and unmapped as it unplugs
    /// them), so that no two windows ever overlap.
    Filter(Arc<dyn Fn(&GuestRegionInfo) -> bool + Send + Sync>),
    /// None: the VMM maps every window itself through a [`DmaHandle`](super::DmaHandle),
    /// an IOVA range onto a guest-physical range, as a vIOMMU's mappings come and go. The
    /// server then reaches only what the guest's IOMMU mapped.
    None,
}

impl fmt::Debug for GuestMemorySharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestMemorySharing::All => f.write_str("All"),
            GuestMemorySharing::Filter(_) => f.write_str("Filter(..)"),
            GuestMemorySharing::None => f.write_str("None"),
        }
    }
}

/// The DMA choices of an attach ([`AttachOptions::dma`](crate::pci::AttachOptions::dma)) or
/// of a [`DmaMapper`](super::DmaMapper) ([`DmaMapper::with_options`](super::DmaMapper::with_options)).
///
/// ```
/// use std::sync::Arc;
///
/// use vfio_user_client::dma::{DmaMode, DmaOptions, GuestMemorySharing, GuestRegionInfo};
///
/// // virtio-mem's region at 4 GiB is mapped block by block by the VMM; the rest is shared
/// // whole, and the server never gets an fd.
/// const VIRTIO_MEM: u64 = 1 << 32;
/// let options = DmaOptions {
///     guest_memory: GuestMemorySharing::Filter(Arc::new(|r: &GuestRegionInfo| {
///         r.gpa != VIRTIO_MEM
///     })),
///     mode: DmaMode::MessageOnly,
/// };
/// # assert_eq!(DmaOptions::default().mode, DmaMode::Mapped);
/// # let _ = options;
/// ```
#[derive(Clone, Debug, Default)]
pub struct DmaOptions {
    /// Which guest memory is shared (default: all of it).
    pub guest_memory: GuestMemorySharing,
    /// Whether the server may map guest memory (default) or reaches it only through
    /// messages.
    pub mode: DmaMode,
}
