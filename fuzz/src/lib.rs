// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The bodies of the fuzz targets, one function per target.
//!
//! cargo-fuzz builds each `fuzz_targets/<name>.rs` as a one-line `fuzz_target!` calling
//! the function here; the root crate's `tests/fuzz_corpus.rs` includes this file as a
//! module (so child modules are named with `#[path]`) and runs every file of
//! `corpus/<name>/` through the same function on stable. A body panics on any finding.

#[path = "dirty_report.rs"]
pub mod dirty_report;
#[path = "input.rs"]
mod input;
#[path = "negotiate.rs"]
pub mod negotiate;
#[path = "pci_config.rs"]
pub mod pci_config;
#[path = "pci_state.rs"]
pub mod pci_state;
#[path = "protocol.rs"]
pub mod protocol;
#[path = "recv.rs"]
pub mod recv;
#[path = "region_info.rs"]
pub mod region_info;
#[path = "seeds.rs"]
pub mod seeds;
#[path = "snapshot.rs"]
pub mod snapshot;

/// A target's body: takes one input, panics on a finding.
pub type Body = fn(&[u8]);

/// Every target: its name (of its `fuzz_targets/` file and `corpus/` directory) and body.
pub const TARGETS: &[(&str, Body)] = &[
    ("protocol_decode", protocol::protocol_decode),
    ("negotiate_reply", negotiate::negotiate_reply),
    ("region_info", region_info::region_info),
    ("pci_config", pci_config::pci_config),
    ("recv_stream", recv::recv_stream),
    ("dirty_report", dirty_report::dirty_report),
    ("pci_state", pci_state::pci_state),
    ("snapshot", snapshot::snapshot),
];
