// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Errors of the PCI layer.

use std::io;

use crate::device;

/// Errors of [`VfioUserPciDevice`](super::VfioUserPciDevice).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting or negotiating failed.
    #[error("connecting to the device failed: {0}")]
    Connect(Box<crate::Error>),
    /// A request to the device failed (the server's errno is kept in the source).
    #[error(transparent)]
    Device(#[from] device::Error),
    /// The device does not report `VFIO_DEVICE_FLAGS_PCI`.
    #[error("the device is not a PCI device")]
    NotPci,
    /// The config space region is missing, too small, or not readable and writable.
    #[error("unusable config space region: {0}")]
    ConfigRegion(String),
    /// The config space header is not a type-0 (endpoint) header.
    #[error("config space header type {0:#x} is not an endpoint's (0)")]
    HeaderType(u8),
    /// A BAR's config register and region disagree or cannot be used.
    #[error("BAR {bar}: {what}")]
    Bar {
        /// The BAR (6 is the expansion ROM).
        bar: u32,
        /// What is wrong.
        what: String,
    },
    /// A capability in config space is malformed.
    #[error("capability at {offset:#x}: {what}")]
    Capability {
        /// Offset of the capability (or of the bad pointer) in config space.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// A BAR address the VMM gave is not usable.
    #[error("BAR {bar} cannot be placed at {base:#x}: {what}")]
    Placement {
        /// The BAR.
        bar: u32,
        /// The address given.
        base: u64,
        /// Why not.
        what: &'static str,
    },
    /// No such BAR.
    #[error("the device has no BAR {0}")]
    NoSuchBar(u32),
    /// The VMM's interrupt provider failed.
    #[error("interrupt routing of {what} failed: {source}")]
    Interrupt {
        /// The vector concerned.
        what: String,
        /// The provider's error.
        source: io::Error,
    },
    /// Sharing guest memory with the server failed (the DMA layer says why).
    #[error("sharing guest memory with the server failed: {0}")]
    Dma(#[from] crate::dma::Error),
    /// Setting up the device's own events failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The connection to the server is gone; the device answers all-ones until detached.
    #[error("the device is lost: {0}")]
    Lost(String),
}

impl Error {
    /// The server's errno, when the server answered with an error reply.
    pub fn server_errno(&self) -> Option<u32> {
        match self {
            Error::Connect(e) => e.server_errno(),
            Error::Device(e) => e.server_errno(),
            Error::Dma(e) => e.failures().iter().find_map(|f| f.error.server_errno()),
            _ => None,
        }
    }

    /// Whether the connection is gone.
    pub fn is_disconnected(&self) -> bool {
        match self {
            Error::Connect(e) => e.is_disconnected(),
            Error::Device(e) => e.is_disconnected(),
            Error::Dma(e) => e.failures().iter().any(|f| f.error.is_disconnected()),
            Error::Lost(_) => true,
            _ => false,
        }
    }
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Error {
        match e {
            crate::Error::Device(d) => Error::Device(d),
            crate::Error::Dma(d) => Error::Dma(d),
            crate::Error::Pci(p) => p,
            other => Error::Connect(Box::new(other)),
        }
    }
}
