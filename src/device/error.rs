// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Errors of the device access layer.

use crate::connection;
use crate::protocol::Command;

/// Errors of [`VfioUserDevice`](super::VfioUserDevice).
///
/// Requests the server refused carry its errno ([`Error::server_errno`]); requests refused
/// locally (bad index, out of range, unsupported) never reach the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request failed on the connection or was refused by the server.
    #[error("{what}: {source}")]
    Request {
        /// The request, in the user's terms ("REGION_READ of region 0 at 0x18, 4 bytes").
        what: String,
        /// What went wrong.
        source: connection::Error,
    },
    /// The server's reply was well-formed but not an answer to the request.
    #[error("bad {command} reply: {what}")]
    BadReply {
        /// The request's command.
        command: Command,
        /// What was wrong.
        what: String,
    },
    /// The device describes more regions or IRQ indexes than this client accepts.
    #[error("the device reports {count} {what}; at most {limit} are accepted")]
    TooMany {
        /// "regions" or "IRQ indexes".
        what: &'static str,
        /// What the device reported.
        count: u32,
        /// Our limit.
        limit: u32,
    },
    /// No region with this index.
    #[error("region {index} does not exist (the device has {count})")]
    NoSuchRegion {
        /// The index asked for.
        index: u32,
        /// Regions of the device.
        count: u32,
    },
    /// The region does not allow the access.
    #[error("region {index} is not {access}")]
    AccessDenied {
        /// The region.
        index: u32,
        /// "readable" or "writable".
        access: &'static str,
    },
    /// The access does not lie within the region.
    #[error("access at {offset:#x} of {len} bytes is outside region {index} of {size:#x} bytes")]
    OutOfRange {
        /// The region.
        index: u32,
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Size of the region.
        size: u64,
    },
    /// No IRQ index with this number.
    #[error("IRQ index {index} does not exist (the device has {count})")]
    NoSuchIrq {
        /// The index asked for.
        index: u32,
        /// IRQ indexes of the device.
        count: u32,
    },
    /// The vectors do not lie within the IRQ index.
    #[error("vectors {start}..{end} are outside IRQ index {index} with {count} vectors")]
    IrqOutOfRange {
        /// The IRQ index.
        index: u32,
        /// First vector.
        start: u32,
        /// One past the last vector.
        end: u64,
        /// Vectors of the index.
        count: u32,
    },
    /// The device did not advertise `VFIO_DEVICE_FLAGS_RESET`.
    #[error("the device does not support reset")]
    ResetNotSupported,
    /// The server does not support `DEVICE_GET_REGION_IO_FDS` for this region.
    #[error("the server does not support I/O fds for region {index} (errno {errno})")]
    IoFdsNotSupported {
        /// The region.
        index: u32,
        /// The server's errno.
        errno: u32,
    },
}

impl Error {
    /// The server's errno, when the server answered with an error reply.
    pub fn server_errno(&self) -> Option<u32> {
        match self {
            Error::Request { source, .. } => source.server_errno(),
            Error::IoFdsNotSupported { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether the connection is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Request { source, .. } if source.is_disconnected())
    }
}
