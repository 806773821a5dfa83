// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A scripted peer: the server end of a socketpair, a [`RawEndpoint`] driven by hand, for
//! fault injection. [`pair`] connects a [`Connection`] to it; the peer answers the VERSION
//! request first. Waits on the peer are unbounded unless a test bounds them
//! ([`RawEndpoint::set_timeout`]).

#![allow(dead_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use vfio_user_client::connection::{self, Health};
use vfio_user_client::protocol::{Command, Header, RegionAccess, Version};
use vfio_user_client::{ConnectOptions, Connection};
pub use vfio_user_sample_server::wire::RawEndpoint;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Whether `fd` becomes readable within `timeout_ms` milliseconds.
pub fn readable_within(fd: RawFd, timeout_ms: i32) -> bool {
    let epoll = Epoll::new().unwrap();
    epoll
        .ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, fd as u64),
        )
        .unwrap();
    let mut events = [EpollEvent::default()];
    epoll.wait(timeout_ms, &mut events).unwrap() > 0
}

/// A scripted peer on `sock` whose waits are unbounded.
pub fn peer(sock: UnixStream) -> RawEndpoint {
    RawEndpoint::new(sock, Duration::MAX)
}

/// Answers the client's VERSION request with version 0.0 and `json` (the whole capability
/// object, `{"capabilities": ...}`), sending `fds` with the reply.
pub fn answer_version(peer: &mut RawEndpoint, json: &serde_json::Value, fds: &[RawFd]) {
    let m = peer.recv().unwrap();
    assert_eq!(m.header.command, Command::Version as u16);
    let mut payload = Vec::new();
    Version {
        major: 0,
        minor: 0,
        json: Some(json.to_string()),
    }
    .encode_into(&mut payload);
    peer.reply(&m.header, &payload, fds).unwrap();
}

/// A connection over a socketpair, with its event loop, whose peer granted `json` (the
/// whole capability object); the peer is handed back for scripting.
pub fn pair_granting(
    options: &ConnectOptions,
    json: serde_json::Value,
) -> (Connection, RawEndpoint) {
    let (a, b) = UnixStream::pair().unwrap();
    let mut peer = peer(b);
    let answer = thread::spawn(move || {
        answer_version(&mut peer, &json, &[]);
        peer
    });
    let conn = Connection::connect(a, options).unwrap();
    (conn, answer.join().unwrap())
}

/// Like [`pair_granting`], with twin-socket mode granted: returns the connection, the peer
/// on the main socket and the peer's end of the twin socket.
pub fn pair_with_twin(options: &ConnectOptions) -> (Connection, RawEndpoint, RawEndpoint) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let mut peer = peer(b);
    let answer = thread::spawn(move || {
        let json = serde_json::json!({
            "capabilities": {"twin_socket": {"supported": true, "fd_index": 0}}
        });
        answer_version(&mut peer, &json, &[ours.as_raw_fd()]);
        peer
    });
    let conn = Connection::connect(a, options).unwrap();
    assert!(conn.twin_socket());
    (conn, answer.join().unwrap(), self::peer(theirs))
}

/// Like [`pair`] with `options`.
pub fn pair_with(options: ConnectOptions) -> (Connection, RawEndpoint) {
    // The spec's defaults: one fd and 1 MiB of data per message.
    pair_granting(&options, serde_json::json!({}))
}

/// A connection whose peer granted the spec's defaults, and the peer.
pub fn pair() -> (Connection, RawEndpoint) {
    pair_with(ConnectOptions::default())
}

pub fn short_timeout() -> ConnectOptions {
    ConnectOptions {
        reply_timeout: Duration::from_millis(200),
        ..ConnectOptions::default()
    }
}

pub fn raw_header(id: u16, command: Command, size: u32, flags: u32, error: u32) -> [u8; 16] {
    Header {
        id,
        command: command as u16,
        size,
        flags,
        error,
    }
    .to_bytes()
}

pub fn fd_of(s: &UnixStream) -> RawFd {
    s.as_raw_fd()
}

/// REGION_WRITE through a connection, checking the echoed head.
pub fn write_region(
    p: &Connection,
    region: u32,
    offset: u64,
    data: &[u8],
) -> Result<(), connection::Error> {
    let head = RegionAccess {
        offset,
        region,
        count: u32::try_from(data.len()).unwrap(),
    };
    let mut payload = Vec::new();
    head.encode_with_data(data, &mut payload);
    let reply = p.request(Command::RegionWrite, &payload, &[])?;
    assert_eq!(RegionAccess::decode(&reply.payload).unwrap(), head);
    Ok(())
}

/// REGION_READ through a connection, checking the echoed head.
pub fn read_region(
    p: &Connection,
    region: u32,
    offset: u64,
    count: u32,
) -> Result<Vec<u8>, connection::Error> {
    let head = RegionAccess {
        offset,
        region,
        count,
    };
    let mut payload = Vec::new();
    head.encode_into(&mut payload);
    let reply = p.request(Command::RegionRead, &payload, &[])?;
    let (got, data) = RegionAccess::decode_with_data(&reply.payload).unwrap();
    assert_eq!(got, head);
    Ok(data.to_vec())
}

/// A 4-byte register read.
pub fn read_u32(p: &Connection, region: u32, offset: u64) -> u32 {
    let data = read_region(p, region, offset, 4).unwrap();
    u32::from_ne_bytes(data.try_into().unwrap())
}

/// Waits, on the connection's health eventfd (no sleeping), until `done` holds for its
/// health; `false` if it does not within `timeout`.
pub fn health_within(conn: &Connection, timeout: Duration, done: impl Fn(&Health) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done(&conn.health()) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        if readable_within(conn.health_event().as_raw_fd(), ms) {
            let _ = conn.health_event().read();
        }
    }
}

/// Waits until the connection is healthy again (see [`health_within`]).
pub fn healthy_within(conn: &Connection, timeout: Duration) -> bool {
    health_within(conn, timeout, |h| *h == Health::Healthy)
}
