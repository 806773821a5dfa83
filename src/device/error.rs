// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Errors of the device access layer.

use crate::connection;
use crate::error::{iter_causes, ConnectionCause};
use crate::protocol::Command;

/// Errors of [`VfioUserDevice`](super::VfioUserDevice).
///
/// Requests the server refused carry its errno ([`ConnectionCause::server_errno`]);
/// requests refused locally (bad index, out of range, unsupported) never reach the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A REGION_READ or REGION_WRITE failed on the connection or was refused by the server.
    #[error("{command} of region {index} at {offset:#x}, {len} bytes: {source}")]
    RegionAccess {
        /// REGION_READ or REGION_WRITE.
        command: Command,
        /// The region.
        index: u32,
        /// Offset of the message's data in the region.
        offset: u64,
        /// Bytes of the message.
        len: usize,
        /// What went wrong.
        source: connection::Error,
    },
    /// A DEVICE_SET_IRQS failed on the connection or was refused by the server.
    #[error("DEVICE_SET_IRQS of IRQ index {index}, vectors {start}+{count}: {source}")]
    SetIrqs {
        /// The IRQ index.
        index: u32,
        /// First vector of the message.
        start: u32,
        /// Vectors of the message.
        count: u32,
        /// What went wrong.
        source: connection::Error,
    },
    /// Another request (discovery, I/O fds, reset) failed on the connection or was refused
    /// by the server.
    #[error("{}: {source}", request_text(*command, *index))]
    Request {
        /// The request's command.
        command: Command,
        /// The region (or, for DEVICE_GET_IRQ_INFO, the IRQ index) the request names.
        index: Option<u32>,
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
    /// DEVICE_GET_IRQ_INFO reports more vectors for an IRQ index than that index can have
    /// (see [`VfioUserDevice::max_vectors`](super::VfioUserDevice::max_vectors)).
    #[error("IRQ index {index} reports {count} vectors; at most {limit} are accepted")]
    TooManyVectors {
        /// The IRQ index.
        index: u32,
        /// The vectors the server reports.
        count: u32,
        /// The most the index can have.
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
    /// The server does not support `DEVICE_GET_REGION_IO_FDS` for this region: it refused
    /// the request with `EINVAL`, `ENOTSUP` or `ENOSYS`.
    #[error("the server does not support I/O fds for region {index}: {source}")]
    IoFdsNotSupported {
        /// The region.
        index: u32,
        /// The server's refusal (a [`connection::Error::Server`] with its errno).
        source: connection::Error,
    },
}

impl Error {
    /// The connection error behind this error, if the request reached the connection.
    pub(crate) fn connection_error(&self) -> Option<&connection::Error> {
        match self {
            Error::RegionAccess { source, .. }
            | Error::SetIrqs { source, .. }
            | Error::Request { source, .. }
            | Error::IoFdsNotSupported { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl ConnectionCause for Error {
    fn connection_errors(&self) -> impl Iterator<Item = &connection::Error> {
        iter_causes((self.connection_error(), &[]))
    }
}

fn request_text(command: Command, index: Option<u32>) -> String {
    match (command, index) {
        (_, None) => command.to_string(),
        (Command::DeviceGetIrqInfo, Some(i)) => format!("{command} of IRQ index {i}"),
        (_, Some(i)) => format!("{command} of region {i}"),
    }
}
