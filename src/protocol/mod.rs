// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vfio-user wire format: no I/O, no threads.
//!
//! Every message starts with a 16-byte [`Header`]; the payload that follows is described by
//! one request type and one reply type per [`Command`]. All integers are in the host's byte
//! order (vfio-user 0.9.2). Decoders take the payload (the bytes after the header) and never
//! trust a length, count or offset in it beyond the bytes actually present.
//!
//! Conventions shared by the message types:
//!
//! * `encode_into(&self, out)` appends the payload (no header); `decode(payload)` reads it.
//!   Fields are carried as sent (e.g. `argsz`), so a server and a client use the same types.
//! * Fixed-size decoders ignore bytes after the structure; decoders whose structure says how
//!   much data follows (bitmaps, bools, write entries) require exactly that much.
//! * Data-carrying messages have a head type ([`RegionAccess`], [`DmaAccess`], [`MigData`])
//!   with `decode_with_data`, which borrows the data from the payload, and
//!   `encode_with_data`, which appends head and data into the caller's buffer.
//! * Counts in received data are checked against the bytes present before anything is
//!   allocated for them.

mod device;
mod dma;
mod header;
mod migration;
mod region;
mod region_caps;
mod version;
mod wire;

#[cfg(test)]
mod proptests;

pub use device::{
    DeviceInfo, DeviceReset, IoFdsLayout, IoSubregion, IrqInfo, RegionInfo, RegionIoFds, SetIrqs,
    ShadowMem, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, IOEVENTFD_FLAG_DATAMATCH, IOEVENTFD_FLAG_PIO,
    IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY, IO_FD_TYPE_IOEVENTFD, IO_FD_TYPE_IOEVENTFD_SHADOW,
    IO_FD_TYPE_IOREGIONFD, IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE,
    IRQ_INFO_NORESIZE, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK,
    IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, REGION_INFO_FLAG_CAPS,
    REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE,
};
pub use dma::{
    DirtyBitmap, DmaAccess, DmaMap, DmaUnmap, DMA_MAP_FLAG_ACCESS_FILE_IO,
    DMA_MAP_FLAG_ACCESS_MMAP, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, DMA_UNMAP_FLAG_ALL,
    DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
};
pub use header::{
    Command, DecodeError, Header, MessageType, FLAGS_ERROR, FLAGS_NO_REPLY, FLAGS_TYPE_COMMAND,
    FLAGS_TYPE_MASK, FLAGS_TYPE_REPLY, HEADER_SIZE,
};
pub use migration::{
    DeviceFeature, DeviceState, DirtyPages, DirtyPagesRange, DmaLoggingRange, DmaLoggingReport,
    DmaLoggingStart, MigData, MigDeviceState, MigrationFeature, DEVICE_FEATURE_GET,
    DEVICE_FEATURE_MASK, DEVICE_FEATURE_PROBE, DEVICE_FEATURE_SET, DIRTY_PAGES_GET_BITMAP,
    DIRTY_PAGES_START, DIRTY_PAGES_STOP, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START,
    FEATURE_DMA_LOGGING_STOP, FEATURE_MIGRATION, FEATURE_MIG_DEVICE_STATE, MIGRATION_P2P,
    MIGRATION_PRE_COPY, MIGRATION_STOP_COPY,
};
pub use region::{RegionAccess, RegionWriteMulti, RegionWriteMultiReply, WriteMultiEntry};
pub use region_caps::{
    encode_region_caps, parse_region_caps, RegionCap, SparseMmapArea, REGION_CAP_HEADER_SIZE,
    REGION_CAP_MSIX_MAPPABLE, REGION_CAP_SPARSE_MMAP, REGION_CAP_TYPE, SPARSE_MMAP_AREA_SIZE,
};
pub use version::Version;
