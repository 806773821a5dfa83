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
//!
//! Values vfio-user takes from VFIO (region and IRQ indexes and flags, capability ids and
//! layouts, SET_IRQS flags, device flags, DMA_UNMAP and DIRTY_PAGES flags, migration states
//! and features) are not repeated here: use `vfio_bindings::bindings::vfio` (for example
//! `VFIO_PCI_CONFIG_REGION_INDEX`, `VFIO_REGION_INFO_FLAG_MMAP`, `VFIO_IRQ_SET_DATA_EVENTFD`).
//! This module defines what only vfio-user has: the header and its flags, the commands, the
//! message layouts, and the DMA_MAP and REGION_IO_FDS values.

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

pub use device::{DeviceInfo, IoFdsLayout, IoSubregion, IrqInfo, RegionInfo, RegionIoFds, SetIrqs};
pub use dma::{DmaAccess, DmaMap, DmaUnmap, UnmapBitmap};
pub(crate) use header::MessageType;
pub use header::{Command, DecodeError, Header};
pub use migration::{
    DeviceFeature, DeviceState, DmaLoggingReport, DmaLoggingStart, MigData, MigDeviceState,
    MigrationFeature,
};
pub use region::{RegionAccess, RegionWriteMulti, WriteMultiEntry};
pub use region_caps::RegionCap;
pub use version::Version;
