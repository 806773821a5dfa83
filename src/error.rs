// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The crate-level error (one variant per layer, each carrying that layer's own error) and
//! [`ConnectionCause`], the one home of the questions every error of the crate answers.
//!
//! The layers' errors nest one way only: the connection's error ([`connection::Error`]) and the
//! negotiation's ([`NegotiateError`]) wrap nothing of the crate; the device's, the DMA
//! layer's and the PCI layer's wrap those below them; [`Error`] wraps them all.

use crate::connection;
use crate::device;
use crate::dma::{self, DmaFailure};
use crate::negotiate::NegotiateError;
use crate::pci;

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

/// What an error of this crate says about the connection: the server's errno, and whether
/// the connection is gone.
///
/// Both are answered once, by the connection errors ([`connection::Error`]) the error carries:
/// an error refused locally carries none, a failed DMA transaction one per failed
/// operation. Implemented by every error of the crate that can carry one.
pub trait ConnectionCause {
    /// The connection errors behind this error, in the order they happened.
    fn connection_errors(&self) -> impl Iterator<Item = &connection::Error>;

    /// The server's errno, when the server answered with an error reply (the first such
    /// reply, when several operations failed).
    fn server_errno(&self) -> Option<u32> {
        self.connection_errors()
            .find_map(connection::Error::server_errno)
    }

    /// Whether the connection is gone (a new connection is needed to go on).
    fn is_disconnected(&self) -> bool {
        self.connection_errors()
            .any(connection::Error::is_disconnected)
    }
}

/// The connection errors an error carries, as at most one error of its own and the failures
/// of a DMA transaction: the shape every error of the crate fits, without boxing.
pub(crate) type Causes<'a> = (Option<&'a connection::Error>, &'a [DmaFailure]);

/// Iterates over [`Causes`].
pub(crate) fn iter_causes<'a>(
    (own, failures): Causes<'a>,
) -> impl Iterator<Item = &'a connection::Error> {
    own.into_iter().chain(failures.iter().map(|f| &f.error))
}

impl ConnectionCause for connection::Error {
    fn connection_errors(&self) -> impl Iterator<Item = &connection::Error> {
        std::iter::once(self)
    }
}

impl ConnectionCause for Error {
    fn connection_errors(&self) -> impl Iterator<Item = &connection::Error> {
        let causes: Causes<'_> = match self {
            Error::Connection(e) => (Some(e), &[]),
            Error::Negotiate(_) => (None, &[]),
            Error::Device(e) => (e.connection_error(), &[]),
            Error::Pci(e) => e.causes(),
            Error::Dma(e) => (None, e.failures()),
        };
        iter_causes(causes)
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
    use crate::dma::DmaOp;
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

    #[test]
    fn every_layer_answers_from_the_connection_errors_it_carries() {
        let refused = || connection::Error::Server {
            command: Command::DeviceReset,
            errno: 5,
        };
        let gone = || connection::Error::Disconnected(connection::DisconnectReason::PeerClosed);
        let device = device::Error::Request {
            command: Command::DeviceReset,
            index: None,
            source: refused(),
        };
        assert_eq!(
            (device.server_errno(), device.is_disconnected()),
            (Some(5), false)
        );
        let pci = pci::Error::Device(device);
        assert_eq!(
            (pci.server_errno(), pci.is_disconnected()),
            (Some(5), false)
        );
        let e = Error::from(pci);
        assert_eq!((e.server_errno(), e.is_disconnected()), (Some(5), false));
        let lost = pci::Error::Lost(gone());
        assert_eq!((lost.server_errno(), lost.is_disconnected()), (None, true));
        let during = pci::Error::During {
            activity: pci::Activity::InterruptSetup,
            source: Box::new(pci::Error::Connect(gone())),
        };
        assert!(during.is_disconnected());
        assert_eq!(during.connection_errors().count(), 1);
        assert!(!pci::Error::NotPci.is_disconnected());
        assert_eq!(gone().connection_errors().count(), 1);
    }
}
