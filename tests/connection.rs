// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The connection layer against a scripted peer over a real socketpair.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::json;
use vfio_user_client::connection::{DisconnectReason, Error, ServerRequestHandler};
use vfio_user_client::protocol::{Command, Header};
use vfio_user_client::ConnectOptions;
use vfio_user_sample_server::test_support::script::echo_forever;
use vfio_user_sample_server::wire::RawMsg;
use vmm_sys_util::eventfd::EventFd;

/// Options whose offer makes the client refuse any message of more than 70,000 bytes:
/// 4 KiB of data and the 64 KiB of room it keeps for a message's head.
fn small_receive_limit() -> ConnectOptions {
    let mut options = short_timeout();
    options.offer.max_data_xfer_size = 4096;
    options
}

/// More than [`small_receive_limit`] lets in.
const OVERSIZED: usize = 70_000;

#[test]
fn wait_request_gets_its_reply() {
    let (conn, peer) = pair();
    let t = thread::spawn(move || echo_forever(peer));
    let r = conn.request(Command::RegionRead, b"hello", &[]).unwrap();
    assert_eq!(r.payload, b"hello");
    assert_eq!(r.header.command, Command::RegionRead as u16);
    conn.shutdown();
    t.join().unwrap();
}

#[test]
fn eight_threads_ten_thousand_requests_each() {
    let (conn, peer) = pair();
    let t = thread::spawn(move || echo_forever(peer));
    thread::scope(|s| {
        for w in 0..8u32 {
            let p = &conn;
            s.spawn(move || {
                for i in 0..10_000u32 {
                    let mut body = w.to_ne_bytes().to_vec();
                    body.extend_from_slice(&i.to_ne_bytes());
                    let r = p.request(Command::RegionRead, &body, &[]).unwrap();
                    assert_eq!(r.payload, body, "worker {w} request {i}");
                }
            });
        }
    });
    conn.shutdown();
    t.join().unwrap();
}

#[test]
fn error_reply_carries_errno_and_stream_stays_in_step() {
    let (conn, mut peer) = pair();
    let t = thread::spawn(move || {
        let RawMsg { header: h, .. } = peer.recv().unwrap();
        peer.send_message(&Header::error_reply(&h, libc::ENOSPC as u32), &[], &[])
            .unwrap();
        let RawMsg { header: h, .. } = peer.recv().unwrap();
        peer.send_message(&Header::error_reply(&h, 0), &[], &[])
            .unwrap();
        // rust-vmm servers before 2026-04: type command with only the Error bit.
        let RawMsg { header: h, .. } = peer.recv().unwrap();
        peer.send_bytes(
            &raw_header(h.id, Command::DmaMap, 16, Header::FLAG_ERROR, 22),
            &[],
        )
        .unwrap();
        echo_forever(peer);
    });
    let e = conn.request(Command::DmaMap, &[0; 32], &[]).unwrap_err();
    assert_eq!(
        e,
        Error::Server {
            command: Command::DmaMap,
            errno: libc::ENOSPC as u32
        }
    );
    assert_eq!(e.server_errno(), Some(libc::ENOSPC as u32));
    assert!(e.to_string().contains("DMA_MAP"), "{e}");
    let e = conn.request(Command::DmaMap, &[0; 32], &[]).unwrap_err();
    assert_eq!(
        e,
        Error::Server {
            command: Command::DmaMap,
            errno: 0
        }
    );
    let e = conn.request(Command::DmaMap, &[0; 32], &[]).unwrap_err();
    assert_eq!(
        e,
        Error::Server {
            command: Command::DmaMap,
            errno: 22
        }
    );
    assert_eq!(
        conn.request(Command::RegionRead, b"ok", &[])
            .unwrap()
            .payload,
        b"ok"
    );
    conn.shutdown();
    t.join().unwrap();
}

#[test]
fn nowait_batch_reports_every_error() {
    let (conn, mut peer) = pair();
    let t = thread::spawn(move || {
        for i in 0..10 {
            let RawMsg {
                header: h,
                payload: body,
                ..
            } = peer.recv().unwrap();
            if i % 3 == 0 {
                peer.send_message(&Header::error_reply(&h, libc::EINVAL as u32), &[], &[])
                    .unwrap();
            } else {
                peer.reply(&h, &body, &[]).unwrap();
            }
        }
    });
    let pending: Vec<_> = (0..10u8)
        .map(|i| conn.send_request(Command::DmaMap, &[i; 32], &[]).unwrap())
        .collect();
    let results = conn.wait_all(pending);
    for (i, r) in results.iter().enumerate() {
        if i % 3 == 0 {
            assert_eq!(
                r.as_ref().unwrap_err().server_errno(),
                Some(libc::EINVAL as u32)
            );
        } else {
            assert_eq!(r.as_ref().unwrap().payload, vec![i as u8; 32]);
        }
    }
    t.join().unwrap();
}

#[test]
fn posted_writes_overflowing_the_socket_drain_in_order() {
    const N: u32 = 100_000;
    let (conn, mut peer) = pair();
    let (go_tx, go_rx) = mpsc::channel();
    let t = thread::spawn(move || {
        go_rx.recv().unwrap();
        for i in 0..N {
            let RawMsg {
                header: h,
                payload: body,
                ..
            } = peer.recv().unwrap();
            assert!(h.no_reply());
            assert_eq!(body, i.to_ne_bytes(), "posted write {i} out of order");
        }
        // The request after the posted writes is answered: nothing was lost.
        let RawMsg {
            header: h,
            payload: body,
            ..
        } = peer.recv().unwrap();
        assert!(!h.no_reply());
        peer.reply(&h, &body, &[]).unwrap();
        peer
    });
    for i in 0..N {
        conn.send_no_reply(Command::RegionWrite, &i.to_ne_bytes(), &[])
            .unwrap();
    }
    // The peer has not read anything yet, so the socket buffer overflowed into the queue.
    assert!(conn.queued_messages() > 0);
    go_tx.send(()).unwrap();
    let r = conn.request(Command::RegionRead, b"last", &[]).unwrap();
    assert_eq!(r.payload, b"last");
    assert_eq!(conn.queued_messages(), 0);
    drop(t.join().unwrap());
}

#[test]
fn disconnect_fails_every_waiter_at_once() {
    let (conn, mut peer) = pair();
    let (tx, rx) = mpsc::channel();
    let told = Arc::new(EventFd::new(0).unwrap());
    thread::scope(|s| {
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let p = &conn;
                let tx = tx.clone();
                s.spawn(move || {
                    let r = p.request(Command::RegionRead, b"x", &[]);
                    tx.send(()).unwrap();
                    r
                })
            })
            .collect();
        for _ in 0..8 {
            peer.recv().unwrap();
        }
        let told2 = Arc::clone(&told);
        conn.on_disconnect(move |_| told2.write(1).unwrap());
        drop(peer);
        for w in waiters {
            let e = w.join().unwrap().unwrap_err();
            assert!(e.is_disconnected(), "{e}");
        }
    });
    drop(rx);
    assert_eq!(told.read().unwrap(), 1);
    assert_eq!(conn.disconnect_event().read().unwrap(), 1);
    // Later requests fail fast.
    assert!(conn
        .request(Command::RegionRead, b"x", &[])
        .unwrap_err()
        .is_disconnected());
    assert!(!conn.is_connected());
}

#[test]
fn silent_peer_times_out_and_late_reply_is_dropped() {
    let (conn, mut peer) = pair_with(short_timeout());
    let e = conn.request(Command::RegionRead, b"a", &[]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                command: Command::RegionRead,
                ..
            }
        ),
        "{e}"
    );
    // The late reply arrives, then the answer to the next request: the late one is dropped,
    // and makes the connection healthy again.
    let RawMsg { header: h1, .. } = peer.recv().unwrap();
    peer.reply(&h1, b"late", &[]).unwrap();
    assert!(healthy_within(&conn, Duration::from_secs(10)));
    let t = thread::spawn(move || echo_forever(peer));
    assert_eq!(
        conn.request(Command::RegionRead, b"b", &[])
            .unwrap()
            .payload,
        b"b"
    );
    conn.shutdown();
    t.join().unwrap();
}

#[test]
fn oversized_reply_fails_its_waiter_and_is_drained() {
    let (conn, mut peer) = pair_with(small_receive_limit());
    let t = thread::spawn(move || {
        let RawMsg { header: h, .. } = peer.recv().unwrap();
        peer.reply(&h, &[0xaa; OVERSIZED], &[]).unwrap();
        // Unknown reply id, then bad type bits: both drained.
        peer.send_bytes(&raw_header(999, Command::RegionRead, 20, 1, 0), &[])
            .unwrap();
        peer.send_bytes(&[1, 2, 3, 4], &[]).unwrap();
        peer.send_bytes(&raw_header(998, Command::RegionRead, 20, 0xe, 0), &[])
            .unwrap();
        peer.send_bytes(&[1, 2, 3, 4], &[]).unwrap();
        echo_forever(peer);
    });
    let e = conn.request(Command::RegionRead, b"x", &[]).unwrap_err();
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
    assert_eq!(
        conn.request(Command::RegionRead, b"y", &[])
            .unwrap()
            .payload,
        b"y"
    );
    conn.shutdown();
    t.join().unwrap();
}

#[test]
fn undersized_header_is_a_protocol_violation() {
    let (conn, mut peer) = pair();
    let t = thread::spawn(move || {
        let RawMsg { header: h, .. } = peer.recv().unwrap();
        peer.send_bytes(&raw_header(h.id, Command::RegionRead, 8, 1, 0), &[])
            .unwrap();
        peer
    });
    let e = conn.request(Command::RegionRead, b"x", &[]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Disconnected(DisconnectReason::ProtocolViolation(_))
        ),
        "{e}"
    );
    drop(t.join().unwrap());
}

#[test]
fn server_request_without_handler_gets_enosys() {
    let (conn, mut peer) = pair();
    // Unknown command number and a DMA_READ with no handler installed.
    let mut h = Header::command(5, Command::DmaRead, 16, false).unwrap();
    peer.send_message(&h, &[0; 16], &[]).unwrap();
    let RawMsg { header: r, .. } = peer.recv().unwrap();
    assert!(r.is_error());
    assert_eq!(r.error, libc::ENOSYS as u32);
    assert_eq!(r.id, 5);
    h.command = 77;
    h.flags = Header::TYPE_COMMAND;
    peer.send_message(&h, &[0; 16], &[]).unwrap();
    let RawMsg { header: r, .. } = peer.recv().unwrap();
    assert_eq!((r.error, r.command), (libc::ENOSYS as u32, 77));
    // The stream is in step: a request still works.
    let t = thread::spawn(move || echo_forever(peer));
    assert_eq!(
        conn.request(Command::RegionRead, b"z", &[])
            .unwrap()
            .payload,
        b"z"
    );
    conn.shutdown();
    t.join().unwrap();
}

struct Doubler;

impl ServerRequestHandler for Doubler {
    fn handle(
        &self,
        _h: &Header,
        payload: &[u8],
        _fds: Vec<std::os::fd::OwnedFd>,
        reply: &mut Vec<u8>,
    ) -> Result<(), u32> {
        if payload.is_empty() {
            return Err(libc::EINVAL as u32);
        }
        reply.extend_from_slice(payload);
        reply.extend_from_slice(payload);
        Ok(())
    }
}

#[test]
fn server_request_while_caller_waits_is_served() {
    let (conn, mut peer) = pair();
    conn.set_request_handler(Some(Arc::new(Doubler)));
    let t = thread::spawn(move || {
        let RawMsg { header: rq, .. } = peer.recv().unwrap();
        // Before answering, the server asks the client for something.
        let h = Header::command(40, Command::DmaRead, 2, false).unwrap();
        peer.send_message(&h, b"ab", &[]).unwrap();
        let RawMsg {
            header: r,
            payload: body,
            ..
        } = peer.recv().unwrap();
        assert_eq!((r.id, body.as_slice()), (40, &b"abab"[..]));
        let h = Header::command(41, Command::DmaRead, 0, false).unwrap();
        peer.send_message(&h, b"", &[]).unwrap();
        let RawMsg { header: r, .. } = peer.recv().unwrap();
        assert_eq!((r.id, r.error), (41, libc::EINVAL as u32));
        peer.reply(&rq, b"done", &[]).unwrap();
        peer
    });
    assert_eq!(
        conn.request(Command::RegionWrite, b"go", &[])
            .unwrap()
            .payload,
        b"done"
    );
    drop(t.join().unwrap());
}

#[test]
fn server_request_while_idle_is_served_by_the_event_loop() {
    let (conn, mut peer) = pair();
    conn.set_request_handler(Some(Arc::new(Doubler)));
    let h = Header::command(9, Command::DmaWrite, 3, false).unwrap();
    peer.send_message(&h, b"xyz", &[]).unwrap();
    let RawMsg {
        header: r,
        payload: body,
        ..
    } = peer.recv().unwrap();
    assert_eq!((r.id, body.as_slice()), (9, &b"xyzxyz"[..]));
    drop(conn);
}

#[test]
fn idle_server_requests_in_bursts_and_pieces_are_all_served() {
    // While no caller waits, the event loop reads once per wake-up: whatever one read
    // leaves on the socket (a burst larger than the receive buffer, the rest of a message
    // written in pieces, a message larger than the buffer) must wake it again.
    let (conn, mut peer) = pair();
    conn.set_request_handler(Some(Arc::new(Doubler)));
    // A reply that never comes fails the test instead of hanging it.
    peer.set_timeout(std::time::Duration::from_secs(10));
    let mut burst = Vec::new();
    let mut expected = Vec::new();
    for id in 0..300u16 {
        let body = id.to_le_bytes().repeat(1 + usize::from(id % 7));
        let h = Header::command(id, Command::DmaWrite, body.len(), false).unwrap();
        burst.extend_from_slice(&h.to_bytes());
        burst.extend_from_slice(&body);
        expected.push((id, body.repeat(2)));
    }
    // One request larger than the receive buffer.
    let big = vec![0x5a; 40 << 10];
    let h = Header::command(300, Command::DmaWrite, big.len(), false).unwrap();
    burst.extend_from_slice(&h.to_bytes());
    burst.extend_from_slice(&big);
    expected.push((300, big.repeat(2)));
    // The whole burst at once, then once more in odd-sized pieces.
    peer.send_bytes(&burst, &[]).unwrap();
    for piece in burst.chunks(997) {
        peer.send_bytes(piece, &[]).unwrap();
    }
    for (id, body) in expected.iter().chain(expected.iter()) {
        let RawMsg {
            header: r,
            payload: got,
            ..
        } = peer.recv().expect("reply");
        assert_eq!((r.id, r.error), (*id, 0));
        assert!(got == *body, "reply {id} carries other data");
    }
    // A hang-up while idle is noticed too.
    drop(peer);
    let event = std::os::fd::AsRawFd::as_raw_fd(conn.disconnect_event());
    let noticed = readable_within(event, 10_000);
    assert!(noticed, "the hang-up was not noticed");
    assert!(!conn.is_connected());
}

#[test]
fn fds_travel_with_requests_and_replies() {
    let (conn, mut peer) = pair_granting(
        &ConnectOptions::default(),
        json!({"capabilities": {"max_msg_fds": 2}}),
    );
    let e1 = EventFd::new(0).unwrap();
    let e2 = EventFd::new(0).unwrap();
    use std::os::fd::AsRawFd;
    let (mut read_end, write_end) = std::io::pipe().unwrap();
    let t = thread::spawn(move || {
        let RawMsg { header: h, fds, .. } = peer.recv().unwrap();
        assert_eq!(fds.len(), 2);
        // SET_IRQS replies carry no fds: one that comes anyway is closed.
        let rh = Header::reply(&h, 0).unwrap();
        peer.send_message(&rh, &[], &[write_end.as_raw_fd()])
            .unwrap();
        drop(write_end);
        // GET_REGION_INFO's may (a region's mmap fd).
        let RawMsg { header: h, .. } = peer.recv().unwrap();
        let back = EventFd::new(0).unwrap();
        back.write(5).unwrap();
        let rh = Header::reply(&h, 0).unwrap();
        peer.send_message(&rh, &[], &[back.as_raw_fd()]).unwrap();
        peer
    });
    let r = conn
        .request(
            Command::DeviceSetIrqs,
            &[0; 20],
            &[e1.as_raw_fd(), e2.as_raw_fd()],
        )
        .unwrap();
    assert!(r.fds.is_empty());
    let r = conn
        .request(Command::DeviceGetRegionInfo, &[0; 32], &[])
        .unwrap();
    assert_eq!(r.fds.len(), 1);
    let mut value = [0u8; 8];
    let mut back = std::fs::File::from(r.fds.into_iter().next().unwrap());
    std::io::Read::read_exact(&mut back, &mut value).unwrap();
    assert_eq!(u64::from_ne_bytes(value), 5);
    // The write end that came with the SET_IRQS reply was closed: the pipe is at its end.
    let mut rest = Vec::new();
    assert_eq!(
        std::io::Read::read_to_end(&mut read_end, &mut rest).unwrap(),
        0
    );
    let e3 = EventFd::new(0).unwrap();
    let err = conn
        .request(
            Command::DeviceSetIrqs,
            &[0; 20],
            &[e1.as_raw_fd(), e2.as_raw_fd(), e3.as_raw_fd()],
        )
        .unwrap_err();
    assert!(matches!(
        err,
        Error::TooManyFds {
            count: 3,
            limit: 2,
            ..
        }
    ));
    drop(t.join().unwrap());
}

#[test]
fn pending_table_is_bounded_by_the_replied_id_half() {
    // Ids with the top bit set are kept for posted (`No_reply`) messages.
    const NO_REPLY_ID_BIT: u16 = 0x8000;
    let (conn, peer) = pair();
    let pending: Vec<_> = (0..NO_REPLY_ID_BIT)
        .map(|_| conn.send_request(Command::RegionRead, b"q", &[]).unwrap())
        .collect();
    assert!(pending.iter().all(|t| t.id() < NO_REPLY_ID_BIT));
    assert_eq!(
        conn.send_request(Command::RegionRead, b"q", &[])
            .unwrap_err(),
        Error::TooManyPending
    );
    // Posted messages do not need an id from the waiting half.
    conn.send_no_reply(Command::RegionWrite, b"p", &[]).unwrap();
    drop(peer);
    for r in conn.wait_all(pending) {
        assert!(r.unwrap_err().is_disconnected());
    }
}

#[test]
fn oversized_server_request_gets_an_error_reply() {
    let (conn, mut peer) = pair_with(small_receive_limit());
    conn.set_request_handler(Some(Arc::new(Doubler)));
    let h = Header::command(12, Command::DmaWrite, OVERSIZED, false).unwrap();
    peer.send_message(&h, &[5; OVERSIZED], &[]).unwrap();
    let RawMsg { header: r, .. } = peer.recv().unwrap();
    assert_eq!((r.id, r.error), (12, libc::E2BIG as u32));
    assert!(r.is_error());
    let t = thread::spawn(move || echo_forever(peer));
    assert_eq!(
        conn.request(Command::RegionRead, b"k", &[])
            .unwrap()
            .payload,
        b"k"
    );
    conn.shutdown();
    t.join().unwrap();
}

#[test]
fn server_request_after_a_burst_of_leader_reads_is_served_by_the_event_loop() {
    let (conn, mut peer) = pair();
    conn.set_request_handler(Some(Arc::new(Doubler)));
    let (idle_tx, idle_rx) = mpsc::channel();
    let t = thread::spawn(move || {
        for _ in 0..1000 {
            let RawMsg {
                header: h,
                payload: body,
                ..
            } = peer.recv().unwrap();
            peer.reply(&h, &body, &[]).unwrap();
        }
        // Only once the caller has its last reply: nobody waits now.
        idle_rx.recv().unwrap();
        let h = Header::command(7, Command::DmaWrite, 2, false).unwrap();
        peer.send_message(&h, b"hi", &[]).unwrap();
        let RawMsg {
            header: r,
            payload: body,
            ..
        } = peer.recv().unwrap();
        assert_eq!((r.id, body.as_slice()), (7, &b"hihi"[..]));
    });
    for i in 0..1000u32 {
        let r = conn
            .request(Command::RegionRead, &i.to_ne_bytes(), &[])
            .unwrap();
        assert_eq!(r.payload, i.to_ne_bytes());
    }
    idle_tx.send(()).unwrap();
    t.join().unwrap();
}

#[test]
fn leader_timing_out_with_half_a_message_leaves_the_event_loop_watching() {
    let (conn, mut peer) = pair_with(short_timeout());
    conn.set_request_handler(Some(Arc::new(Doubler)));
    let (timed_out_tx, timed_out_rx) = mpsc::channel();
    let (served_tx, served_rx) = mpsc::channel();
    let t = thread::spawn(move || {
        let RawMsg { header: rq, .. } = peer.recv().unwrap();
        // Half a server request while the caller waits: it reads that much, then gives up.
        let h = Header::command(30, Command::DmaWrite, 3, false).unwrap();
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        peer.send_bytes(&bytes[..10], &[]).unwrap();
        timed_out_rx.recv().unwrap();
        // The rest arrives while nobody waits.
        peer.send_bytes(&bytes[10..], &[]).unwrap();
        let RawMsg {
            header: r,
            payload: body,
            ..
        } = peer.recv().unwrap();
        assert_eq!((r.id, body.as_slice()), (30, &b"abcabc"[..]));
        peer.reply(&rq, b"late", &[]).unwrap();
        served_tx.send(()).unwrap();
        echo_forever(peer);
    });
    let e = conn.request(Command::RegionRead, b"a", &[]).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    timed_out_tx.send(()).unwrap();
    served_rx.recv().unwrap();
    assert!(healthy_within(&conn, Duration::from_secs(10)));
    // Served and still in step: the late reply is dropped, the next request answered.
    assert_eq!(
        conn.request(Command::RegionRead, b"b", &[])
            .unwrap()
            .payload,
        b"b"
    );
    conn.shutdown();
    t.join().unwrap();
}

#[test]
fn server_request_read_together_with_a_reply_is_served() {
    for request_first in [false, true] {
        let (conn, mut peer) = pair();
        conn.set_request_handler(Some(Arc::new(Doubler)));
        // A missed server request would leave the peer waiting: fail instead of hanging.
        peer.set_timeout(std::time::Duration::from_secs(10));
        let t = thread::spawn(move || {
            let RawMsg { header: rq, .. } = peer.recv().unwrap();
            let reply = Header::reply(&rq, 2).unwrap();
            let request = Header::command(50, Command::DmaRead, 1, false).unwrap();
            let mut reply_bytes = reply.to_bytes().to_vec();
            reply_bytes.extend_from_slice(b"ok");
            let mut request_bytes = request.to_bytes().to_vec();
            request_bytes.push(b'z');
            // One write: the caller's one read takes both messages.
            let bytes = if request_first {
                [request_bytes, reply_bytes].concat()
            } else {
                [reply_bytes, request_bytes].concat()
            };
            peer.send_bytes(&bytes, &[]).unwrap();
            let RawMsg {
                header: r,
                payload: body,
                ..
            } = peer.recv().expect("no answer to the server request");
            assert_eq!((r.id, body.as_slice()), (50, &b"zz"[..]));
        });
        assert_eq!(
            conn.request(Command::RegionRead, b"q", &[])
                .unwrap()
                .payload,
            b"ok"
        );
        t.join().unwrap();
    }
}

#[test]
fn busy_polling_keeps_deadlines_and_replies() {
    use std::time::Instant;
    // Polling for longer than the deadline: the deadline still wins.
    let options = ConnectOptions {
        busy_poll: Duration::MAX,
        ..short_timeout()
    };
    let (conn, mut peer) = pair_with(options);
    let (timed_out_tx, timed_out_rx) = mpsc::channel();
    let t = thread::spawn(move || {
        // Answers the first request only after its deadline, then the rest at once.
        let RawMsg { header: h, .. } = peer.recv().unwrap();
        timed_out_rx.recv().unwrap();
        peer.reply(&h, b"late", &[]).unwrap();
        echo_forever(peer);
    });
    let started = Instant::now();
    let e = conn.request(Command::RegionRead, b"lost", &[]).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(started.elapsed() >= short_timeout().reply_timeout);
    timed_out_tx.send(()).unwrap();
    assert!(healthy_within(&conn, Duration::from_secs(10)));
    // Replies that come while polling are taken.
    for i in 0..100u8 {
        assert_eq!(
            conn.request(Command::RegionRead, &[i], &[])
                .unwrap()
                .payload,
            [i]
        );
    }
    conn.shutdown();
    t.join().unwrap();

    // The default polls only where the server can run beside us.
    let polls = ConnectOptions::default().busy_poll;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(polls.is_zero(), cpus == 1);
}
