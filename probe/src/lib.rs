// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vfio-user-probe`: look at a vfio-user server the way a VMM would, without booting one.
//!
//! * [`info`]: the negotiated version and capabilities, the device's regions and IRQs, and
//!   its PCI config space decoded like `lspci -vv`, its migration flags and whether DMA
//!   dirty logging is offered;
//! * [`check`]: a conformance run of what the protocol requires of a server, each check
//!   PASS, FAIL or SKIP with its reason;
//! * [`bench`](mod@bench): region access latency and throughput, and the DMA map rate;
//! * [`demo`]: all three against the built-in sample server.
//!
//! Each returns a report that renders as text (`render_text`) or serialises to JSON
//! (`serde_json`); the binary is a thin argument parser around them. Failures to reach a
//! usable server are [`ProbeError`]s, one line each.

#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod bench;
pub mod check;
pub mod demo;
mod error;
pub mod info;
pub mod migration;
pub mod pci;
pub mod session;
pub mod wire;

pub use error::{errno_text, ProbeError};
