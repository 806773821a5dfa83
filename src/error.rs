// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The crate-level error: one variant per layer, each carrying that layer's own error.

use crate::device;
use crate::negotiate::NegotiateError;
use crate::pci;
use crate::{connection, dma};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection failed: connect, socket I/O, timeout, disconnect, or an error reply.
    #[error(transparent)]
    Connection(#[from] connection::Error),
    /// The server's VERSION reply was not acceptable.
    #[error("version negotiation failed: {0}")]
    Negotiate(#[from] NegotiateError),
    /// Discovering or using the device failed.
    #[error(transparent)]
    Device(#[from] device::Error),
    /// Attaching or using the device as a PCI device failed.
    #[error(transparent)]
    Pci(#[from] pci::Error),
    /// A DMA map or unmap was refused, locally or by the server.
    #[error(transparent)]
    Dma(#[from] dma::Error),
}

impl Error {
    /// The server's errno, when the server answered with an error reply.
    pub fn server_errno(&self) -> Option<u32> {
        self.layer().server_errno()
    }

    /// Whether the connection is gone (a new connection is needed to go on).
    pub fn is_disconnected(&self) -> bool {
        self.layer().is_disconnected()
    }

    /// The layer's own error, which answers the questions about the connection.
    fn layer(&self) -> &dyn ConnectionFacts {
        match self {
            Error::Connection(e) => e,
            Error::Negotiate(e) => e,
            Error::Device(e) => e,
            Error::Pci(e) => e,
            Error::Dma(e) => e,
        }
    }
}

/// What every layer's error tells about the connection. The answers come from the
/// connection errors a layer's error carries: [`connection::Error`] holds the logic, and
/// every other layer forwards to it.
trait ConnectionFacts {
    /// The server's errno, when the server answered with an error reply.
    fn server_errno(&self) -> Option<u32>;
    /// Whether the connection is gone.
    fn is_disconnected(&self) -> bool;
}

impl ConnectionFacts for connection::Error {
    fn server_errno(&self) -> Option<u32> {
        connection::Error::server_errno(self)
    }

    fn is_disconnected(&self) -> bool {
        connection::Error::is_disconnected(self)
    }
}

/// The VERSION reply was refused before the connection carried anything else.
impl ConnectionFacts for NegotiateError {
    fn server_errno(&self) -> Option<u32> {
        None
    }

    fn is_disconnected(&self) -> bool {
        false
    }
}

impl ConnectionFacts for device::Error {
    fn server_errno(&self) -> Option<u32> {
        device::Error::server_errno(self)
    }

    fn is_disconnected(&self) -> bool {
        device::Error::is_disconnected(self)
    }
}

impl ConnectionFacts for pci::Error {
    fn server_errno(&self) -> Option<u32> {
        pci::Error::server_errno(self)
    }

    fn is_disconnected(&self) -> bool {
        pci::Error::is_disconnected(self)
    }
}

/// A DMA batch carries one connection error per failed operation: the first errno, and
/// whether any says the connection is gone.
impl ConnectionFacts for dma::Error {
    fn server_errno(&self) -> Option<u32> {
        self.failures().iter().find_map(|f| f.error.server_errno())
    }

    fn is_disconnected(&self) -> bool {
        self.failures().iter().any(|f| f.error.is_disconnected())
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Error::Connection(a), Error::Connection(b)) => a == b,
            (Error::Negotiate(a), Error::Negotiate(b)) => a == b,
            (Error::Dma(a), Error::Dma(b)) => a == b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::{DmaFailure, DmaOp};
    use crate::protocol::Command;

    #[test]
    fn errno_and_disconnect_through_every_layer() {
        let refused = connection::Error::Server {
            command: Command::DmaMap,
            errno: 22,
        };
        let gone = connection::Error::Disconnected(connection::DisconnectReason::PeerClosed);
        let op = DmaOp::Map {
            iova: 0,
            size: 0x1000,
        };
        let e = Error::from(NegotiateError::ZeroPgsizes);
        assert_eq!((e.server_errno(), e.is_disconnected()), (None, false));
        assert_eq!(e, Error::Negotiate(NegotiateError::ZeroPgsizes));
        let e = Error::from(connection::Error::TooManyPending);
        assert_eq!((e.server_errno(), e.is_disconnected()), (None, false));
        assert_ne!(e, Error::Negotiate(NegotiateError::ZeroPgsizes));
        let e = Error::from(dma::Error::Batch {
            total: 2,
            failures: vec![
                DmaFailure { op, error: gone },
                DmaFailure { op, error: refused },
            ],
        });
        assert_eq!((e.server_errno(), e.is_disconnected()), (Some(22), true));
        let local = Error::from(dma::Error::Empty { op });
        assert_eq!(
            (local.server_errno(), local.is_disconnected()),
            (None, false)
        );
        assert_eq!(local, Error::Dma(dma::Error::Empty { op }));
    }
}
