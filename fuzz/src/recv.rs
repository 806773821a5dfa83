// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `recv_stream`: the connection's receive side (framing, reply matching, the server's own
//! requests, fds, the twin socket) fed an arbitrary byte stream with fds.
//!
//! Through the public API only: a [`Connection`] over a socketpair whose other end is a
//! peer thread. The peer answers VERSION properly (granting a twin socket when the input
//! asks), waits for the client's requests, then sends the input's chunks, each with the
//! number of fds it names, on the main or the twin socket, and closes. Whatever arrives,
//! every request must end (with a reply or an error) and the connection must close
//! cleanly; a hang is a finding too (libFuzzer's `-timeout`).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vfio_user_client::connection::ServerRequestHandler;
use vfio_user_client::negotiate::Offer;
use vfio_user_client::protocol::{Command, DmaAccess, Header, RegionAccess, Version};
use vfio_user_client::{ConnectOptions, Connection};
use vfio_user_sample_server::wire::RawEndpoint;
use vmm_sys_util::eventfd::EventFd;

use super::input::Input;

/// Flags byte: the client offers, and the peer grants, a twin socket.
pub const TWIN: u8 = 0x10;
/// Chunk byte: the chunk goes to the twin socket (when there is one).
pub const CHUNK_TWIN: u8 = 0x80;
/// The errno of every refusal.
const EINVAL: u32 = 22;
/// Largest DMA_READ the handler answers.
const MAX_DMA: u64 = 64 << 10;

/// One piece of the stream: bytes, how many fds go with them, which socket.
struct Chunk {
    bytes: Vec<u8>,
    fds: usize,
    twin: bool,
}

/// The input: a flags byte (bits 0-1: the client's requests in flight; [`TWIN`]), then
/// chunks of a length byte pair (u16), a byte with the fd count (bits 0-1) and
/// [`CHUNK_TWIN`], and the bytes.
fn parse(data: &[u8]) -> (u8, Vec<Chunk>) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let mut chunks = Vec::new();
    while !input.is_empty() {
        let len = usize::from(input.u16());
        let shape = input.u8();
        chunks.push(Chunk {
            bytes: input.bytes(len).to_vec(),
            fds: usize::from(shape & 3),
            twin: shape & CHUNK_TWIN != 0,
        });
    }
    (flags, chunks)
}

/// A VMM's handler for the server's DMA requests: reads return zeros, writes are dropped.
struct Dma;

impl ServerRequestHandler for Dma {
    fn handle(
        &self,
        header: &Header,
        payload: &[u8],
        _fds: Vec<OwnedFd>,
        reply: &mut Vec<u8>,
    ) -> Result<(), u32> {
        let einval = EINVAL;
        match Command::from_u16(header.command) {
            Some(Command::DmaRead) => {
                let a = DmaAccess::decode(payload).map_err(|_| einval)?;
                if a.count > MAX_DMA {
                    return Err(einval);
                }
                a.encode_with_data(&vec![0; a.count as usize], reply);
                Ok(())
            }
            Some(Command::DmaWrite) => {
                let (a, _) = DmaAccess::decode_with_data(payload).map_err(|_| einval)?;
                DmaAccess { count: 0, ..a }.encode_into(reply);
                Ok(())
            }
            _ => Err(einval),
        }
    }
}

/// The peer: a well-formed VERSION exchange, the client's requests read, then the chunks.
fn peer(sock: UnixStream, requests: usize, twin: bool, chunks: Vec<Chunk>) {
    let mut main = RawEndpoint::new(sock, Duration::from_secs(2));
    let Ok(version) = main.recv() else {
        return;
    };
    let (twin_client, twin_peer) = if twin {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let json = if twin {
        r#"{"capabilities":{"max_msg_fds":4,"twin_socket":{"supported":true,"fd_index":0}}}"#
    } else {
        r#"{"capabilities":{"max_msg_fds":4}}"#
    };
    let mut payload = Vec::new();
    Version {
        major: 0,
        minor: 0,
        json: Some(json.to_owned()),
    }
    .encode_into(&mut payload);
    let fds: Vec<RawFd> = twin_client.iter().map(AsRawFd::as_raw_fd).collect();
    if main.reply(&version.header, &payload, &fds).is_err() {
        return;
    }
    drop(twin_client);
    for _ in 0..requests {
        if main.recv().is_err() {
            return;
        }
    }
    let mut twin_peer = twin_peer.map(|s| RawEndpoint::new(s, Duration::from_secs(2)));
    for chunk in chunks {
        let fds: Vec<EventFd> = (0..chunk.fds)
            .map(|_| EventFd::new(0).expect("eventfd"))
            .collect();
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let end = match &mut twin_peer {
            Some(t) if chunk.twin => t,
            _ => &mut main,
        };
        if end.send_bytes(&chunk.bytes, &raw).is_err() {
            break;
        }
    }
}

/// The `recv_stream` target.
pub fn recv_stream(data: &[u8]) {
    let (flags, chunks) = parse(data);
    let requests = usize::from(flags & 3);
    let twin = flags & TWIN != 0;
    let (client, server) = UnixStream::pair().expect("socketpair");
    let peer = thread::spawn(move || peer(server, requests, twin, chunks));
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        reply_timeout: Duration::from_secs(2),
        offer: Offer {
            max_msg_fds: 4,
            max_data_xfer_size: 1 << 16,
            twin_socket: twin,
            ..Offer::default()
        },
        busy_poll: Duration::ZERO,
    };
    let conn = Connection::connect(client, &options).expect("VERSION exchange");
    assert_eq!(conn.twin_socket(), twin);
    conn.set_request_handler(Some(Arc::new(Dma)));
    let mut head = Vec::new();
    RegionAccess {
        offset: 0,
        region: 0,
        count: 4,
    }
    .encode_into(&mut head);
    let pending: Vec<_> = (0..requests)
        .map(|_| conn.send_request(Command::RegionRead, &head, &[]))
        .collect();
    // The peer closes after its chunks: every request ends with a reply or an error.
    for request in pending.into_iter().flatten() {
        if let Ok(reply) = conn.wait(request) {
            assert!(reply.payload.len() <= 1 << 20);
        }
    }
    peer.join().expect("peer thread");
    drop(conn);
}
