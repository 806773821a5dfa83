// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vfio-user wire format: no I/O, no threads.
//!
//! Every message starts with a 16-byte [`Header`]; the payload that follows is described by
//! one request type and one reply type per [`Command`]. All integers are in the host's byte
//! order (vfio-user 0.9.2). Decoders take the payload (the bytes after the header) and never
//! trust a length, count or offset in it beyond the bytes actually present.

mod header;

pub use header::{
    Command, DecodeError, Header, MessageType, HEADER_SIZE, FLAGS_ERROR, FLAGS_NO_REPLY,
    FLAGS_TYPE_COMMAND, FLAGS_TYPE_MASK, FLAGS_TYPE_REPLY,
};
