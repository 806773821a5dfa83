// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod connection;
pub mod device;
pub mod dma;
mod error;
pub mod negotiate;
pub mod pci;
pub mod protocol;
mod sync;

pub use connection::{ConnectOptions, Connection, ConnectionSubscriber};
pub use device::{DeviceOptions, VfioUserDevice};
pub use dma::DmaMapper;
pub use error::Error;
pub use negotiate::{Capabilities, Offer};
pub use pci::{AttachOptions, VfioUserPciDevice};

/// Not part of the API: the socket helpers that the sample server and the probe borrow
/// until they have their own copy.
#[doc(hidden)]
pub mod __socket {
    pub use crate::connection::socket::{
        connect_with_timeout, poll_fd, recv, recv_with_fds, send_with_fds, MAX_RECV_FDS,
    };
}
