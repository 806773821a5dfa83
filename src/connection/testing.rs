// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The server's end of a socket pair, for the connection's unit tests.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::inner::Inner;
use super::subscriber::MainSubscriber;
use super::Settings;
use crate::protocol::Header;

/// A connection over a socket pair with `timeout` as its reply timeout and no busy poll,
/// and the server's end. No event loop runs the subscriber: only callers read.
pub(super) fn pair(timeout: Duration) -> (Arc<Inner>, MainSubscriber, UnixStream) {
    let (client, server) = UnixStream::pair().unwrap();
    let settings = Settings {
        reply_timeout: timeout,
        busy_poll: Duration::ZERO,
        ..Settings::default()
    };
    let (inner, sub) = Inner::new(client, settings).unwrap();
    (inner, sub, server)
}

/// Reads one whole message on the server's end.
pub(super) fn read_msg(sock: &mut UnixStream) -> (Header, Vec<u8>) {
    let mut hdr = [0u8; Header::SIZE];
    sock.read_exact(&mut hdr).unwrap();
    let h = Header::from_bytes(&hdr);
    let mut body = vec![0u8; h.payload_len()];
    sock.read_exact(&mut body).unwrap();
    (h, body)
}

/// Reads one request on the server's end; returns its header.
pub(super) fn read_request(sock: &mut UnixStream) -> Header {
    read_msg(sock).0
}
