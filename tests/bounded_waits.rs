// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Bounded waits against a server that stops answering: a reply timeout makes the
//! connection unresponsive, later requests fail at once, the late reply makes it healthy
//! again; teardown and a guest config access wait one reply timeout in total. Scripted
//! peers over socketpairs, and the sample server paused over a real socket.

mod common;

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use vfio_user_client::connection::{DisconnectReason, Error, Health, Overdue};
use vfio_user_client::pci::{InterruptKind, PciConfig, VfioUserPciDevice};
use vfio_user_client::protocol::{Command, Header};
use vfio_user_client::{
    AttachOptions, Connection, ConnectionCause, ConnectionSubscriber, DmaMapper,
};
use vfio_user_sample_server::test_support::guest::guest_memory;
use vfio_user_sample_server::test_support::pci::{cfg_write, find_cap, Irqs};
use vfio_user_sample_server::test_support::script::echo_forever;
use vfio_user_sample_server::wire::RawMsg;
use vfio_user_sample_server::{GpioConfig, GpioDevice, Probe, Server, ServerConfig, ServerHandle};

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
    let RawMsg {
        header: h,
        payload: body,
        ..
    } = peer.recv().unwrap();
    assert_eq!((h.id, body.as_slice()), (id, &b"a"[..]));
    assert!(
        !readable_within(peer.socket().as_raw_fd(), 0),
        "the peer got more than the request it owes"
    );

    // The late reply: healthy again (told by the event), and the stream is in step.
    peer.reply(&h, b"late", &[]).unwrap();
    assert!(healthy_within(&conn, PATIENCE));
    let t = thread::spawn(move || echo_forever(peer));
    let reply = conn.request(Command::RegionRead, b"e", &[]).unwrap();
    assert_eq!(reply.payload, b"e");
    conn.shutdown();
    assert_eq!(conn.health(), Health::Lost(DisconnectReason::Shutdown));
    t.join().unwrap();
}

#[test]
fn a_late_error_reply_on_a_twin_socket_connection_is_read_by_the_event_loop() {
    // The main socket of a twin-socket connection carries only replies and is normally out
    // of the event loop's view; the late reply must still be noticed while nobody sends
    // anything.
    let (conn, mut peer, _twin) = pair_with_twin(&short_timeout());
    let e = conn.request(Command::DeviceReset, b"", &[]).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(overdue(&conn).command, Command::DeviceReset);
    let RawMsg { header: h, .. } = peer.recv().unwrap();
    peer.send_message(&Header::error_reply(&h, libc::EIO as u32), &[], &[])
        .unwrap();
    assert!(healthy_within(&conn, PATIENCE));
    let t = thread::spawn(move || echo_forever(peer));
    let reply = conn.request(Command::RegionRead, b"f", &[]).unwrap();
    assert_eq!(reply.payload, b"f");
    conn.shutdown();
    t.join().unwrap();
}

/// A connection whose subscriber is not run: no event loop reads, the callers are the only
/// readers, so what each one reads is known.
fn pair_without_event_loop() -> (Connection, ConnectionSubscriber, RawEndpoint) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut peer = common::peer(b);
    let answer = thread::spawn(move || {
        answer_version(&mut peer, &serde_json::json!({}), &[]);
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
    let RawMsg { header: h1, .. } = peer.recv().unwrap();
    let RawMsg { header: h2, .. } = peer.recv().unwrap();
    assert_eq!((h1.id, h2.id), (id1, id2));

    // The second reply alone proves nothing: the first is still owed.
    peer.reply(&h2, b"2", &[]).unwrap();
    let e = conn.request(Command::RegionRead, b"3", &[]).unwrap_err();
    assert!(
        matches!(e, Error::Unresponsive { overdue, .. } if overdue.id == id1),
        "{e}"
    );
    assert!(!readable_within(peer.socket().as_raw_fd(), 0));

    // The first one: the next request reads it before it would fail, and is sent.
    peer.reply(&h1, b"1", &[]).unwrap();
    let t = thread::spawn(move || echo_forever(peer));
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
    let RawMsg {
        header: overdue_request,
        ..
    } = peer.recv().unwrap();
    let mut dma_read = Vec::new();
    dma_read.extend_from_slice(&0u64.to_ne_bytes());
    dma_read.extend_from_slice(&4u64.to_ne_bytes());
    let h = Header::command(70, Command::DmaRead, dma_read.len(), false).unwrap();
    peer.send_message(&h, &dma_read, &[]).unwrap();
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
    peer.reply(&overdue_request, b"late", &[]).unwrap();
    let t = thread::spawn(move || {
        let RawMsg { header: r, .. } = peer.recv().unwrap();
        assert_eq!((r.id, r.is_error()), (70, true), "nothing is mapped");
        echo_forever(peer);
    });
    let reply = conn.request(Command::RegionRead, b"b", &[]).unwrap();
    assert_eq!(reply.payload, b"b");
    conn.shutdown();
    t.join().unwrap();
}

// ---------------------------------------------------------------------------------------
// A PCI device whose server stops answering
// ---------------------------------------------------------------------------------------

struct Attached {
    dev: VfioUserPciDevice,
    probe: Probe,
    _server: ServerHandle,
}

/// The sample GPIO device, attached over a real socket with a short reply timeout.
fn attach_gpio() -> Attached {
    let (device, _) = GpioDevice::new(GpioConfig::default()).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(device));
    let probe = server.probe();
    let server = server.listen_temp().unwrap();
    let options = AttachOptions {
        connect: short_timeout(),
        ..AttachOptions::default()
    };
    let dev = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        guest_memory(1 << 20),
        Irqs::new(),
        &options,
    )
    .unwrap();
    Attached {
        dev,
        probe,
        _server: server,
    }
}

/// Sets MSI-X Enable; returns the capability's offset.
fn enable_msix(dev: &mut VfioUserPciDevice) -> usize {
    let cap = find_cap(dev, 0x11).unwrap();
    cfg_write(dev, cap + 3, &[0x80]);
    cap
}

#[test]
fn detach_of_a_silent_server_takes_one_reply_timeout() {
    let mut a = attach_gpio();
    // Detach then has interrupts (MSI-X, ERR, REQ) and guest memory to undo: four round
    // trips, each of which would wait a whole reply timeout.
    enable_msix(&mut a.dev);
    assert_eq!(a.dev.interrupt_mode(), Some(InterruptKind::Msix));
    assert_eq!(a.dev.error_count(), 0, "{:?}", a.dev.last_error());
    a.probe.pause();
    let started = Instant::now();
    let e = a.dev.detach().unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= timeout() && took < 2 * timeout(),
        "detach took {took:?} with a reply timeout of {:?}",
        timeout()
    );
    assert!(
        e.connection_errors()
            .any(|c| matches!(c, Error::Timeout { .. })),
        "{e}"
    );
    a.probe.resume();
}

#[test]
fn dropping_a_device_whose_server_is_silent_does_not_wait_for_it() {
    let mut a = attach_gpio();
    enable_msix(&mut a.dev);
    a.probe.pause();
    let started = Instant::now();
    drop(a.dev);
    assert!(
        started.elapsed() < timeout(),
        "drop took {:?}",
        started.elapsed()
    );
    a.probe.resume();
}

#[test]
fn a_config_write_waits_one_reply_timeout_and_the_device_recovers() {
    let mut a = attach_gpio();
    let cap = find_cap(&mut a.dev, 0x11).unwrap();
    a.probe.pause();
    // MSI-X Enable: SET_IRQS to change the interrupt mode, then the config write itself.
    let started = Instant::now();
    cfg_write(&mut a.dev, cap + 3, &[0x80]);
    let took = started.elapsed();
    assert!(
        took < 2 * timeout(),
        "the config write took {took:?} with a reply timeout of {:?}",
        timeout()
    );
    assert!(a.dev.error_count() >= 1);
    let device = a.dev.device();
    let conn = device.connection();
    assert_eq!(overdue(conn).command, Command::DeviceSetIrqs);

    // Later accesses fail at once: all ones.
    let started = Instant::now();
    assert_eq!(a.dev.read_config_register(0), u32::MAX);
    assert!(started.elapsed() < timeout() / 2);

    // The server answers what it holds: healthy again, and config space answers.
    a.probe.resume();
    assert!(healthy_within(a.dev.device().connection(), PATIENCE));
    let id = a.dev.read_config_register(0);
    assert_eq!(id & 0xffff, u32::from(GpioDevice::VENDOR_ID));
    a.dev.detach().unwrap();
}
