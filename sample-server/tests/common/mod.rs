// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A raw-bytes vfio-user client for driving the server in tests.

#![allow(dead_code)]

use std::io::Read;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vfio_user_client::__socket::{recv_with_fds, send_with_fds};
use vfio_user_client::protocol::{Command, Header, FLAGS_NO_REPLY, HEADER_SIZE};
use vfio_user_sample_server::{Device, Server, ServerConfig, ServerHandle};

pub const EINVAL: u32 = libc::EINVAL as u32;

#[derive(Debug)]
pub struct Msg {
    pub header: Header,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Msg {
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.body[at..at + 4].try_into().unwrap())
    }

    pub fn u64_at(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.body[at..at + 8].try_into().unwrap())
    }

    /// Asserts the spec's error reply form and returns the errno.
    pub fn errno(&self) -> u32 {
        assert_eq!(
            self.header.size as usize, HEADER_SIZE,
            "error replies are header only"
        );
        assert_eq!(self.header.flags, 0x21, "type reply + Error");
        self.header.error
    }

    pub fn assert_ok(&self) {
        assert_eq!(self.header.flags, 0x1, "success reply: {}", self.header);
    }
}

pub struct RawClient {
    pub sock: UnixStream,
    next_id: u16,
}

impl RawClient {
    pub fn new(sock: UnixStream) -> RawClient {
        // A guard against a hung test, not a pacing device: every read is expected to
        // complete at once.
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        RawClient { sock, next_id: 100 }
    }

    pub fn send_raw(&mut self, header: Header, payload: &[u8], fds: &[RawFd]) {
        let hdr = header.to_bytes();
        let n = send_with_fds(&self.sock, &[&hdr, payload], fds).unwrap();
        assert_eq!(n, HEADER_SIZE + payload.len());
    }

    pub fn send(&mut self, cmd: Command, payload: &[u8], fds: &[RawFd], no_reply: bool) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let h = Header::command(id, cmd, payload.len(), no_reply).unwrap();
        self.send_raw(h, payload, fds);
        id
    }

    pub fn recv(&mut self) -> Msg {
        self.try_recv().expect("unexpected EOF")
    }

    /// `None` at EOF.
    pub fn try_recv(&mut self) -> Option<Msg> {
        let mut hdr = [0u8; HEADER_SIZE];
        let (n, fds) = recv_with_fds(&self.sock, &mut hdr, 8).unwrap();
        if n == 0 {
            return None;
        }
        (&self.sock).read_exact(&mut hdr[n..]).unwrap();
        let header = Header::decode(&hdr, 64 << 20).unwrap();
        let mut body = vec![0u8; header.payload_len()];
        (&self.sock).read_exact(&mut body).unwrap();
        Some(Msg { header, body, fds })
    }

    pub fn call_fds(&mut self, cmd: Command, payload: &[u8], fds: &[RawFd]) -> Msg {
        let id = self.send(cmd, payload, fds, false);
        let m = self.recv();
        assert_eq!(m.header.id, id, "reply id");
        assert_eq!(m.header.command, cmd as u16, "reply command");
        m
    }

    pub fn call(&mut self, cmd: Command, payload: &[u8]) -> Msg {
        self.call_fds(cmd, payload, &[])
    }

    pub fn version_with(&mut self, minor: u16, json: &str) -> Msg {
        let mut p = vec![];
        p.extend_from_slice(&0u16.to_ne_bytes());
        p.extend_from_slice(&minor.to_ne_bytes());
        p.extend_from_slice(json.as_bytes());
        p.push(0);
        self.call(Command::Version, &p)
    }

    pub fn version(&mut self) -> Msg {
        let m = self.version_with(0, r#"{"capabilities":{"max_msg_fds":16}}"#);
        m.assert_ok();
        m
    }

    pub fn region_read(&mut self, region: u32, offset: u64, count: u32) -> Msg {
        self.call(Command::RegionRead, &access(region, offset, count, &[]))
    }

    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Msg {
        self.call(
            Command::RegionWrite,
            &access(region, offset, data.len() as u32, data),
        )
    }

    pub fn read_u32(&mut self, region: u32, offset: u64) -> u32 {
        let m = self.region_read(region, offset, 4);
        m.assert_ok();
        m.u32_at(16)
    }

    pub fn write_u32(&mut self, region: u32, offset: u64, v: u32) {
        self.region_write(region, offset, &v.to_ne_bytes())
            .assert_ok();
    }

    pub fn expect_eof(&mut self) {
        assert!(self.try_recv().is_none(), "expected the server to close");
    }
}

pub fn access(region: u32, offset: u64, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = vec![];
    p.extend_from_slice(&offset.to_ne_bytes());
    p.extend_from_slice(&region.to_ne_bytes());
    p.extend_from_slice(&count.to_ne_bytes());
    p.extend_from_slice(data);
    p
}

pub fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

pub fn dma_map(flags: u32, offset: u64, address: u64, size: u64) -> Vec<u8> {
    let mut p = words(&[32, flags]);
    for v in [offset, address, size] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p
}

pub fn dma_unmap(flags: u32, address: u64, size: u64) -> Vec<u8> {
    let mut p = words(&[24, flags]);
    p.extend_from_slice(&address.to_ne_bytes());
    p.extend_from_slice(&size.to_ne_bytes());
    p
}

pub fn start(config: ServerConfig, device: Box<dyn Device>) -> (RawClient, ServerHandle) {
    let (a, b) = UnixStream::pair().unwrap();
    let handle = Server::new(config, device).serve_stream(b);
    (RawClient::new(a), handle)
}

pub fn no_reply_flag() -> u32 {
    FLAGS_NO_REPLY
}
