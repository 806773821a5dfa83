// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A test's side of a [`RawEndpoint`]: calls that check the reply's form and panic
//! otherwise ([`ScriptExt`], [`MsgExt`]), payloads encoded by hand (independently of the
//! client's encoders), and a sample server on a socket pair ([`serve_pair`]).

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vfio_user_client::protocol::{Command, Header};

use crate::wire::{RawEndpoint, RawMsg, RecvError};
use crate::{Device, Server, ServerConfig, ServerHandle};

/// `EINVAL` as the protocol carries it.
pub const EINVAL: u32 = libc::EINVAL as u32;

/// How long a scripted side waits for each message: a guard against a hung test, not a
/// pacing device (every read is expected to complete at once).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What a test does with a [`RawEndpoint`]; every failure panics.
pub trait ScriptExt {
    /// Sends `cmd` with `fds` and returns its reply, asserting the reply's id and command.
    fn call_fds(&mut self, cmd: Command, payload: &[u8], fds: &[RawFd]) -> RawMsg;

    /// Sends `cmd` and returns its reply, asserting the reply's id and command.
    fn call(&mut self, cmd: Command, payload: &[u8]) -> RawMsg {
        self.call_fds(cmd, payload, &[])
    }

    /// VERSION 0.`minor` with `json` (NUL added).
    fn version_with(&mut self, minor: u16, json: &str) -> RawMsg {
        let mut p = Vec::new();
        p.extend_from_slice(&0u16.to_ne_bytes());
        p.extend_from_slice(&minor.to_ne_bytes());
        p.extend_from_slice(json.as_bytes());
        p.push(0);
        self.call(Command::Version, &p)
    }

    /// VERSION 0.0 offering 16 fds; asserts success.
    fn version(&mut self) -> RawMsg {
        let m = self.version_with(0, r#"{"capabilities":{"max_msg_fds":16}}"#);
        m.assert_ok();
        m
    }

    /// REGION_READ of `count` bytes.
    fn region_read(&mut self, region: u32, offset: u64, count: u32) -> RawMsg {
        self.call(Command::RegionRead, &access(region, offset, count, &[]))
    }

    /// REGION_WRITE of `data`.
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> RawMsg {
        let count = u32::try_from(data.len()).expect("region write size");
        self.call(Command::RegionWrite, &access(region, offset, count, data))
    }

    /// A 4-byte register read; asserts success.
    fn read_u32(&mut self, region: u32, offset: u64) -> u32 {
        let m = self.region_read(region, offset, 4);
        m.assert_ok();
        m.u32_at(16)
    }

    /// A 4-byte register write; asserts success.
    fn write_u32(&mut self, region: u32, offset: u64, v: u32) {
        self.region_write(region, offset, &v.to_ne_bytes())
            .assert_ok();
    }

    /// Asserts that the peer closes the connection next, between messages.
    fn expect_eof(&mut self);
}

impl ScriptExt for RawEndpoint {
    fn call_fds(&mut self, cmd: Command, payload: &[u8], fds: &[RawFd]) -> RawMsg {
        let id = self.send_command(cmd, payload, fds).expect("send");
        let m = self.recv().expect("reply");
        assert_eq!(m.header.id, id, "reply id");
        assert_eq!(m.header.command, cmd as u16, "reply command");
        m
    }

    fn expect_eof(&mut self) {
        match self.recv() {
            Err(RecvError::Closed { partial }) if partial.is_empty() => {}
            other => panic!("expected the peer to close, got {other:?}"),
        }
    }
}

/// Reading and checking a received message; every failure panics.
pub trait MsgExt {
    /// The native-endian `u32` at `at` of the payload.
    fn u32_at(&self, at: usize) -> u32;
    /// The native-endian `u64` at `at` of the payload.
    fn u64_at(&self, at: usize) -> u64;
    /// Asserts the spec's error reply form (header only, type reply + Error) and returns
    /// the errno.
    fn errno(&self) -> u32;
    /// Asserts a success reply (type reply, no Error).
    fn assert_ok(&self);
}

impl MsgExt for RawMsg {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.payload[at..at + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.payload[at..at + 8].try_into().expect("8 bytes"))
    }

    fn errno(&self) -> u32 {
        assert_eq!(
            self.header.size as usize,
            Header::SIZE,
            "error replies are header only"
        );
        assert_eq!(self.header.flags, 0x21, "type reply + Error");
        self.header.error
    }

    fn assert_ok(&self) {
        assert_eq!(self.header.flags, 0x1, "success reply: {}", self.header);
    }
}

/// A REGION_READ/REGION_WRITE payload: offset, region, count, then `data`.
pub fn access(region: u32, offset: u64, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&offset.to_ne_bytes());
    p.extend_from_slice(&region.to_ne_bytes());
    p.extend_from_slice(&count.to_ne_bytes());
    p.extend_from_slice(data);
    p
}

/// Native-endian words, back to back.
pub fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// A DMA_MAP payload.
pub fn dma_map(flags: u32, offset: u64, address: u64, size: u64) -> Vec<u8> {
    let mut p = words(&[32, flags]);
    for v in [offset, address, size] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p
}

/// A DMA_UNMAP payload.
pub fn dma_unmap(flags: u32, address: u64, size: u64) -> Vec<u8> {
    let mut p = words(&[24, flags]);
    p.extend_from_slice(&address.to_ne_bytes());
    p.extend_from_slice(&size.to_ne_bytes());
    p
}

/// A sample server with `device` on one end of a socket pair, and a scripted client on the
/// other (waits bounded by [`PATIENCE`]).
pub fn serve_pair(config: ServerConfig, device: Box<dyn Device>) -> (RawEndpoint, ServerHandle) {
    let (a, b) = UnixStream::pair().expect("socket pair");
    let handle = Server::new(config, device).serve_stream(b);
    (RawEndpoint::new(a, PATIENCE), handle)
}

/// Answers every request with its own payload until the peer goes away (or sends what is
/// not a message).
pub fn echo_forever(mut endpoint: RawEndpoint) {
    while let Ok(m) = endpoint.recv() {
        if !m.header.no_reply() && endpoint.reply(&m.header, &m.payload, &[]).is_err() {
            return;
        }
    }
}
