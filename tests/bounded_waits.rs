// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Bounded waits against a server that stops answering: a reply timeout makes the
//! connection unresponsive, later requests fail at once, the late reply makes it healthy
//! again. Scripted peers over socketpairs.

mod common;

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use vfio_user_client::connection::{DisconnectReason, Error, Health, Overdue};
use vfio_user_client::protocol::{Command, Header};
use vfio_user_client::{Connection, ConnectionCause, ConnectionSubscriber, DmaMapper};
use vfio_user_sample_server::test_support::guest::guest_memory;

/// How long a test waits for what must happen (not a pacing device).
const PATIENCE: Duration = Duration::from_secs(10);

/// The reply timeout of every connection here ([`short_timeout`]).
fn timeout() -> Duration {
    short_timeout().reply_timeout
}

/// The connection's overdue request; panics unless it is unresponsive.
fn overdue(conn: &Connection) -> Overdue {
    match conn.health() {
        Health::Unresponsive(o) => o,
        other => panic!("expected an unresponsive connection, got {other}"),
    }
}

#[test]
fn a_timeout_makes_requests_fail_fast_until_the_late_reply_arrives() {
    let (conn, mut peer) = pair_with(short_timeout());
    assert_eq!(conn.health(), Health::Healthy);
    let e = conn.request(Command::RegionRead, b"a", &[]).unwrap_err();
    let Error::Timeout { id, .. } = e else {
        panic!("expected a timeout, got {e}");
    };
    let late = overdue(&conn);
    assert_eq!((late.command, late.id), (Command::RegionRead, id));
    assert!(readable_within(conn.health_event().as_raw_fd(), 0));

    // Nothing new is sent: requests and posted messages fail at once, naming the overdue
    // request, and the connection stays up.
    let started = Instant::now();
    let e = conn.request(Command::RegionWrite, b"b", &[]).unwrap_err();
    assert_eq!(
        e,
        Error::Unresponsive {
            command: Command::RegionWrite,
            overdue: late
        }
    );
    assert_eq!(
        e.to_string(),
        format!(
            "REGION_WRITE not sent: the server is unresponsive (REGION_READ (id {id}) went \
             unanswered)"
        )
    );
    assert!(!e.is_disconnected());
    let e = conn
        .send_no_reply(Command::RegionWrite, b"c", &[])
        .unwrap_err();
    assert!(matches!(e, Error::Unresponsive { .. }), "{e}");
    let e = conn
        .send_request(Command::RegionRead, b"d", &[])
        .unwrap_err();
    assert!(matches!(e, Error::Unresponsive { .. }), "{e}");
    assert!(
        started.elapsed() < timeout() / 2,
        "failing fast took {:?}",
        started.elapsed()
    );
    assert!(conn.is_connected());
    let (h, body, _) = peer.read_msg().unwrap();
    assert_eq!((h.id, body.as_slice()), (id, &b"a"[..]));
    assert!(
        !readable_within(peer.sock.as_raw_fd(), 0),
        "the peer got more than the request it owes"
    );

    // The late reply: healthy again (told by the event), and the stream is in step.
    peer.reply(&h, b"late");
    assert!(healthy_within(&conn, PATIENCE));
    let t = thread::spawn(move || peer.echo_forever());
    let reply = conn.request(Command::RegionRead, b"e", &[]).unwrap();
    assert_eq!(reply.payload, b"e");
    conn.shutdown();
    assert_eq!(conn.health(), Health::Lost(DisconnectReason::Shutdown));
    t.join().unwrap();
}

#[test]
fn a_late_error_reply_on_a_twin_socket_connection_is_read_by_the_event_loop() {
    // The main socket of a twin-socket connection carries only replies and normally wakes
    // the event loop for a hang-up only; the late reply must still be noticed while
    // nobody sends anything.
    let (conn, mut peer, _twin) = pair_with_twin(&short_timeout());
    let e = conn.request(Command::DeviceReset, b"", &[]).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(overdue(&conn).command, Command::DeviceReset);
    let (h, _, _) = peer.read_msg().unwrap();
    peer.send(&Header::error_reply(&h, libc::EIO as u32), &[], &[]);
    assert!(healthy_within(&conn, PATIENCE));
    let t = thread::spawn(move || peer.echo_forever());
    let reply = conn.request(Command::RegionRead, b"f", &[]).unwrap();
    assert_eq!(reply.payload, b"f");
    conn.shutdown();
    t.join().unwrap();
}

/// A connection whose subscriber is not run: no event loop reads, the callers are the only
/// readers, so what each one reads is known.
fn pair_without_event_loop() -> (Connection, ConnectionSubscriber, Peer) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut peer = Peer { sock: b };
    let answer = thread::spawn(move || {
        peer.answer_version(&serde_json::json!({}), &[]);
        peer
    });
    let (conn, subscriber) = Connection::connect_with_subscriber(a, &short_timeout()).unwrap();
    (conn, subscriber, answer.join().unwrap())
}

#[test]
fn only_the_overdue_reply_makes_the_connection_healthy() {
    // A request about to fail fast reads the socket first.
    let (conn, _unregistered, mut peer) = pair_without_event_loop();
    let first = conn.send_request(Command::RegionRead, b"1", &[]).unwrap();
    let second = conn.send_request(Command::RegionRead, b"2", &[]).unwrap();
    let (id1, id2) = (first.id(), second.id());
    for r in conn.wait_all(vec![first, second]) {
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    }
    assert_eq!(overdue(&conn).id, id1, "the first request to time out");
    let (h1, _, _) = peer.read_msg().unwrap();
    let (h2, _, _) = peer.read_msg().unwrap();
    assert_eq!((h1.id, h2.id), (id1, id2));

    // The second reply alone proves nothing: the first is still owed.
    peer.reply(&h2, b"2");
    let e = conn.request(Command::RegionRead, b"3", &[]).unwrap_err();
    assert!(
        matches!(e, Error::Unresponsive { overdue, .. } if overdue.id == id1),
        "{e}"
    );
    assert!(!readable_within(peer.sock.as_raw_fd(), 0));

    // The first one: the next request reads it before it would fail, and is sent.
    peer.reply(&h1, b"1");
    let t = thread::spawn(move || peer.echo_forever());
    let reply = conn.request(Command::RegionRead, b"4", &[]).unwrap();
    assert_eq!(reply.payload, b"4");
    assert_eq!(conn.health(), Health::Healthy);
    conn.shutdown();
    t.join().unwrap();
}

#[test]
fn a_dma_transaction_fails_fast_without_serving_under_its_table_lock() {
    // A DMA_READ waits unread on the socket of an unresponsive connection. A DMA map sends
    // under its mapping table's lock: failing fast must not read (and serve the DMA_READ,
    // whose handler takes that lock) on the way.
    let (conn, _unregistered, mut peer) = pair_without_event_loop();
    let mapper = DmaMapper::new(&conn, guest_memory(1 << 20));
    let e = conn.request(Command::RegionRead, b"a", &[]).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    let (overdue_request, _, _) = peer.read_msg().unwrap();
    let mut dma_read = Vec::new();
    dma_read.extend_from_slice(&0u64.to_ne_bytes());
    dma_read.extend_from_slice(&4u64.to_ne_bytes());
    let h = Header::command(70, Command::DmaRead, dma_read.len(), false).unwrap();
    peer.send(&h, &dma_read, &[]);
    let (done_tx, done_rx) = mpsc::channel();
    let mapping = thread::spawn(move || {
        let result = mapper.map(0, 0, 4096);
        done_tx.send(()).unwrap();
        (result, mapper)
    });
    done_rx
        .recv_timeout(PATIENCE)
        .expect("the DMA map deadlocked");
    let (result, mapper) = mapping.join().unwrap();
    let e = result.unwrap_err();
    assert!(
        e.connection_errors()
            .any(|c| matches!(c, Error::Unresponsive { .. })),
        "{e}"
    );
    assert!(mapper.is_empty());

    // A WAIT request reads both: the DMA_READ is served, the late reply recovers, and the
    // request goes out.
    peer.reply(&overdue_request, b"late");
    let t = thread::spawn(move || {
        let (r, _, _) = peer.read_msg().unwrap();
        assert_eq!((r.id, r.is_error()), (70, true), "nothing is mapped");
        peer.echo_forever();
    });
    let reply = conn.request(Command::RegionRead, b"b", &[]).unwrap();
    assert_eq!(reply.payload, b"b");
    conn.shutdown();
    t.join().unwrap();
}
