// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

mod connection;
pub mod device;
pub mod dma;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod negotiate;
pub mod pci;
pub mod protocol;
pub mod proxy;
mod sync;

pub use connection::{handshake, ConnectOptions, Connection};
pub use device::{DeviceOptions, VfioUserDevice};
pub use dma::DmaMapper;
pub use error::{ConnectionCause, Error};
pub use negotiate::{Capabilities, Offer};
pub use pci::{AttachOptions, VfioUserPciDevice};
