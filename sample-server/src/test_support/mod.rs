// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Scaffolding shared by the workspace's tests and benchmarks, behind the `test-support`
//! feature the way event-manager shares its `utilities`. It is not part of the sample
//! server's API: it may panic, and it changes with the tests.
//!
//! * [`script`]: a test's side of a [`RawEndpoint`](crate::wire::RawEndpoint): calls that
//!   check the reply's form, hand-encoded payloads, a sample server on a socket pair;
//! * [`peers`]: listeners run by a script (including peers that are not vfio-user servers),
//!   socket paths nobody listens on, the sample GPIO server on a path;
//! * [`relay`]: a relay in front of the sample server that breaks one chosen reply (cut
//!   short, wrong id or command, Error flag, wrong size, stray fds, silence, lateness), or
//!   that refuses, drops, swallows or edits requests and replies one at a time;
//! * [`restart`]: a sample server killed and started again on the same socket path (a
//!   fresh device, or another one), for reconnect tests;
//! * [`rust_vmm`]: the crates.io `vfio_user` server with a small backend, an independent
//!   peer for the client and the probe, in a fixed layout or in one a test chooses (region
//!   sizes, a [`ConfigSpace`](crate::ConfigSpace), vector counts);
//! * [`config`]: a PCI config-space image with a capability of every common kind;
//! * [`guest`]: guest memory, memfd-backed or anonymous;
//! * [`pci`]: an interrupt provider that records what the device asks for, config-space
//!   access as a bus does it, waits on eventfds, and counts of open fds and mappings;
//! * [`bench`]: criterion settings, where the two sides of a benchmark run, and reading
//!   back this run's estimates.

pub mod bench;
pub mod config;
pub mod guest;
pub mod pci;
pub mod peers;
pub mod relay;
pub mod restart;
pub mod rust_vmm;
pub mod script;
