// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The crate-level error: one variant per layer, each carrying that layer's own error.

use crate::device;
use crate::negotiate::NegotiateError;
use crate::pci;
use crate::proxy;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection failed: connect, socket I/O, timeout, disconnect, or an error reply.
    #[error(transparent)]
    Proxy(#[from] proxy::Error),
    /// The server's VERSION reply was not acceptable.
    #[error("version negotiation failed: {0}")]
    Negotiate(#[from] NegotiateError),
    /// Discovering or using the device failed.
    #[error(transparent)]
    Device(#[from] device::Error),
    /// Attaching or using the device as a PCI device failed.
    #[error(transparent)]
    Pci(#[from] pci::Error),
}

impl Error {
    /// The server's errno, when the server answered with an error reply.
    pub fn server_errno(&self) -> Option<u32> {
        match self {
            Error::Proxy(e) => e.server_errno(),
            Error::Negotiate(_) => None,
            Error::Device(e) => e.server_errno(),
            Error::Pci(e) => e.server_errno(),
        }
    }

    /// Whether the connection is gone (a new connection is needed to go on).
    pub fn is_disconnected(&self) -> bool {
        match self {
            Error::Proxy(e) => e.is_disconnected(),
            Error::Device(e) => e.is_disconnected(),
            Error::Pci(e) => e.is_disconnected(),
            Error::Negotiate(_) => false,
        }
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Error::Proxy(a), Error::Proxy(b)) => a == b,
            (Error::Negotiate(a), Error::Negotiate(b)) => a == b,
            _ => false,
        }
    }
}
