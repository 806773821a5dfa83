// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A scripted peer: the server end of a socketpair, driven by hand, for fault injection.

#![allow(dead_code)]

pub mod guest;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vfio_user_client::protocol::{Command, Header, RegionAccess, HEADER_SIZE};
use vfio_user_client::proxy::{self, socket, EventLoop, Proxy, ProxyConfig};

pub struct Peer {
    pub sock: UnixStream,
}

impl Peer {
    pub fn read_msg(&mut self) -> Option<(Header, Vec<u8>, Vec<OwnedFd>)> {
        let mut hdr = [0u8; HEADER_SIZE];
        let mut got = 0;
        let mut fds = Vec::new();
        while got < HEADER_SIZE {
            let (n, f) = socket::recv_with_fds(&self.sock, &mut hdr[got..], 32).ok()?;
            if n == 0 {
                return None;
            }
            got += n;
            fds.extend(f);
        }
        let h = Header::from_bytes(&hdr);
        let mut body = vec![0u8; h.payload_len()];
        self.sock.read_exact(&mut body).ok()?;
        Some((h, body, fds))
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).unwrap();
    }

    pub fn reply(&mut self, rq: &Header, payload: &[u8]) {
        let h = Header::reply(rq, payload.len()).unwrap();
        self.send(&h, payload, &[]);
    }

    pub fn send(&mut self, h: &Header, payload: &[u8], fds: &[RawFd]) {
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        let n = socket::send_with_fds(&self.sock, &[&v], fds).unwrap();
        self.sock.write_all(&v[n..]).unwrap();
    }

    /// Answers every request with its own payload until the client goes away.
    pub fn echo_forever(mut self) {
        while let Some((h, body, _)) = self.read_msg() {
            if !h.no_reply() {
                self.reply(&h, &body);
            }
        }
    }
}

pub fn pair_with(config: ProxyConfig) -> (Proxy, EventLoop, Peer) {
    let (a, b) = UnixStream::pair().unwrap();
    let (proxy, sub) = Proxy::from_stream(a, config).unwrap();
    let lp = EventLoop::spawn(sub).unwrap();
    (proxy, lp, Peer { sock: b })
}

pub fn pair() -> (Proxy, EventLoop, Peer) {
    pair_with(ProxyConfig::default())
}

pub fn short_timeout() -> ProxyConfig {
    ProxyConfig {
        reply_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    }
}

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
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
pub fn write_region(p: &Proxy, region: u32, offset: u64, data: &[u8]) -> Result<(), proxy::Error> {
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
    p: &Proxy,
    region: u32,
    offset: u64,
    count: u32,
) -> Result<Vec<u8>, proxy::Error> {
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
pub fn read_u32(p: &Proxy, region: u32, offset: u64) -> u32 {
    let data = read_region(p, region, offset, 4).unwrap();
    u32::from_ne_bytes(data.try_into().unwrap())
}
