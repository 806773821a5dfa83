// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A connection driven by the VMM's own event manager rather than the standalone loop.

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vfio_user_client::connection::ServerRequestHandler;
use vfio_user_client::protocol::{Command, Header, RegionAccess};
use vfio_user_client::{ConnectOptions, Connection, ConnectionSubscriber};
use vfio_user_sample_server::wire::RawMsg;
use vfio_user_sample_server::{GpioDevice, Server, ServerConfig};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// The VMM's own subscriber that ends its event loop.
struct Quit(Arc<EventFd>, Arc<AtomicBool>);

impl MutEventSubscriber for Quit {
    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(&*self.0, EventSet::IN)).unwrap();
    }
    fn process(&mut self, _: Events, _: &mut EventOps) {
        self.0.read().unwrap();
        self.1.store(true, Ordering::Release);
    }
}

#[test]
fn vmm_event_manager_drains_posted_writes() {
    const N: u32 = 50_000;
    let (dev, gpio) = GpioDevice::new(Default::default()).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(dev))
        .listen_temp()
        .unwrap();
    let (conn, subscriber) = Connection::connect_with_subscriber(
        server.socket_path().unwrap(),
        &ConnectOptions::default(),
    )
    .unwrap();

    let quit = Arc::new(EventFd::new(0).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut manager = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
    manager.add_subscriber(Box::new(subscriber));
    manager.add_subscriber(Box::new(Quit(Arc::clone(&quit), Arc::clone(&stop))));
    let vmm = thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            manager.run().unwrap();
        }
    });

    let mut payload = Vec::new();
    for i in 1..=N {
        payload.clear();
        RegionAccess {
            offset: GpioDevice::REG_SEQUENCE,
            region: 0,
            count: 4,
        }
        .encode_with_data(&i.to_le_bytes(), &mut payload);
        conn.send_no_reply(Command::RegionWrite, &payload, &[])
            .unwrap();
    }
    // A WAIT request after the posted writes: the server answers it only after them all.
    payload.clear();
    RegionAccess {
        offset: GpioDevice::REG_SEQUENCE,
        region: 0,
        count: 4,
    }
    .encode_into(&mut payload);
    conn.request(Command::RegionRead, &payload, &[]).unwrap();
    assert_eq!(gpio.sequence_writes(), u64::from(N));
    assert_eq!(gpio.sequence_errors(), 0);
    assert_eq!(conn.queued_messages(), 0);

    drop(conn);
    quit.write(1).unwrap();
    vmm.join().unwrap();
    server.stop();
}

struct Echo;

impl ServerRequestHandler for Echo {
    fn handle(
        &self,
        _h: &Header,
        payload: &[u8],
        _fds: Vec<OwnedFd>,
        reply: &mut Vec<u8>,
    ) -> Result<(), u32> {
        reply.extend_from_slice(payload);
        Ok(())
    }
}

/// The VMM's event manager, on a thread of its own, with `subscriber` and a way to stop.
fn vmm_loop(subscriber: ConnectionSubscriber) -> (Arc<EventFd>, thread::JoinHandle<()>) {
    let quit = Arc::new(EventFd::new(0).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut manager = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
    manager.add_subscriber(Box::new(subscriber));
    manager.add_subscriber(Box::new(Quit(Arc::clone(&quit), Arc::clone(&stop))));
    let vmm = thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            manager.run().unwrap();
        }
    });
    (quit, vmm)
}

#[test]
fn vmm_event_manager_serves_server_requests_between_caller_reads() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut peer = common::peer(b);
    let answer = thread::spawn(move || {
        common::answer_version(&mut peer, &serde_json::json!({}), &[]);
        peer
    });
    let (conn, subscriber) =
        Connection::connect_with_subscriber(a, &ConnectOptions::default()).unwrap();
    let mut peer = answer.join().unwrap();
    conn.set_request_handler(Some(Arc::new(Echo)));
    let (quit, vmm) = vmm_loop(subscriber);
    for round in 0..3u16 {
        // Callers read their own replies...
        let echo = thread::spawn(move || {
            for _ in 0..100 {
                let RawMsg {
                    header: h,
                    payload: body,
                    ..
                } = peer.recv().unwrap();
                peer.reply(&h, &body, &[]).unwrap();
            }
            peer
        });
        for i in 0..100u32 {
            let r = conn
                .request(Command::RegionRead, &i.to_ne_bytes(), &[])
                .unwrap();
            assert_eq!(r.payload, i.to_ne_bytes());
        }
        peer = echo.join().unwrap();
        // ...and while nobody waits, the VMM's event manager serves the server.
        let h = Header::command(round, Command::DmaRead, 4, false).unwrap();
        peer.send_message(&h, b"data", &[]).unwrap();
        let RawMsg {
            header: r,
            payload: body,
            ..
        } = peer.recv().unwrap();
        assert_eq!((r.id, body.as_slice()), (round, &b"data"[..]));
    }
    drop(conn);
    quit.write(1).unwrap();
    vmm.join().unwrap();
}
