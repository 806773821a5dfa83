// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The connection: socket I/O with fd passing, the send queue, the receive state machine,
//! the pending-reply table and the event-manager subscriber.

pub mod socket;
