// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A `ServerRequestHandler` that panics: the reading thread (the event loop, a waiting
//! caller, the twin socket's reader) survives, the server gets an `EIO` error reply for
//! that request, and the next requests are served as usual.

mod common;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;
use vfio_user_client::connection::{Health, ServerRequestHandler};
use vfio_user_client::protocol::{Command, Header};
use vfio_user_sample_server::test_support::script::echo_forever;
use vfio_user_sample_server::wire::RawMsg;

/// Echoes every request, except that it panics on the payload `boom`.
#[derive(Default)]
struct Fragile {
    served: AtomicUsize,
}

impl ServerRequestHandler for Fragile {
    fn handle(
        &self,
        _header: &Header,
        payload: &[u8],
        _fds: Vec<OwnedFd>,
        reply: &mut Vec<u8>,
    ) -> Result<(), u32> {
        assert_ne!(payload, b"boom", "the handler fell over");
        self.served.fetch_add(1, Ordering::SeqCst);
        reply.extend_from_slice(payload);
        Ok(())
    }
}

/// Sends a DMA_READ with `payload` as request `id` and returns the reply's header and body.
fn dma_read(peer: &mut RawEndpoint, id: u16, payload: &[u8]) -> (Header, Vec<u8>) {
    let h = Header::command(id, Command::DmaRead, payload.len(), false).unwrap();
    peer.send_message(&h, payload, &[]).unwrap();
    let RawMsg {
        header: r,
        payload: body,
        ..
    } = peer.recv().unwrap();
    assert_eq!(r.id, id);
    (r, body)
}

/// The panicking request gets `EIO`, the next one its answer.
fn panic_then_serve(peer: &mut RawEndpoint, id: u16) {
    let (r, _) = dma_read(peer, id, b"boom");
    assert!(r.is_error());
    assert_eq!(r.error, libc::EIO as u32);
    let (r, body) = dma_read(peer, id + 1, b"fine");
    assert!(!r.is_error());
    assert_eq!(body, b"fine");
}

#[test]
fn on_the_main_socket_the_event_loop_and_a_waiting_caller_survive() {
    let (conn, mut peer) = pair();
    let handler = Arc::new(Fragile::default());
    conn.set_request_handler(Some(Arc::clone(&handler) as Arc<dyn ServerRequestHandler>));

    // Nobody waits: the event loop reads and serves.
    panic_then_serve(&mut peer, 1);

    // A caller waits: its own thread reads the server's requests before its reply.
    let server = thread::spawn(move || {
        let RawMsg {
            header: request, ..
        } = peer.recv().unwrap();
        panic_then_serve(&mut peer, 3);
        peer.reply(&request, b"done", &[]).unwrap();
        peer
    });
    let reply = conn.request(Command::RegionRead, b"x", &[]).unwrap();
    assert_eq!(reply.payload, b"done");
    let mut peer = server.join().unwrap();

    // And the event loop once more, after both panics.
    panic_then_serve(&mut peer, 5);
    assert_eq!(handler.served.load(Ordering::SeqCst), 3);
    assert!(conn.is_connected());
    assert_eq!(conn.health(), Health::Healthy);
}

#[test]
fn on_the_twin_socket_the_event_loop_survives() {
    let (conn, peer, mut twin) = pair_with_twin(&short_timeout());
    let handler = Arc::new(Fragile::default());
    conn.set_request_handler(Some(Arc::clone(&handler) as Arc<dyn ServerRequestHandler>));
    panic_then_serve(&mut twin, 1);
    panic_then_serve(&mut twin, 3);
    assert_eq!(handler.served.load(Ordering::SeqCst), 2);
    // The connection goes on: a request on the main socket is answered.
    let server = thread::spawn(move || echo_forever(peer));
    let reply = conn.request(Command::RegionRead, b"y", &[]).unwrap();
    assert_eq!(reply.payload, b"y");
    assert!(conn.is_connected());
    conn.shutdown();
    server.join().unwrap();
}
