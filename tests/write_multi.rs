// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Posted writes coalesced into REGION_WRITE_MULTI while the socket is backed up: only then,
//! only for a server that offers it, at most 200 writes a message, closed by anything queued
//! behind, and in order with every other message.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use vfio_user_client::protocol::Command;
use vfio_user_client::{ConnectOptions, Connection, DeviceOptions, VfioUserDevice};
use vfio_user_sample_server::{GpioConfig, GpioDevice, Probe, Server, ServerConfig, ServerHandle};

const SCRATCH: u32 = 1;
/// Where the writes that fill the socket go, away from the offsets checked.
const FILL_AT: u64 = 1 << 20;

struct Setup {
    dev: VfioUserDevice,
    probe: Probe,
    _server: ServerHandle,
}

fn setup(write_multiple: bool) -> Setup {
    let (device, _handle) = GpioDevice::new(GpioConfig {
        mappable_bar2: false,
        ..GpioConfig::default()
    })
    .unwrap();
    let config = ServerConfig {
        write_multiple,
        ..ServerConfig::default()
    };
    let server = Server::new(config, Box::new(device));
    let probe = server.probe();
    let (client, server_end) = UnixStream::pair().unwrap();
    let running = server.serve_stream(server_end);
    let conn = Connection::connect(client, &ConnectOptions::default()).unwrap();
    let dev = VfioUserDevice::new(conn, &DeviceOptions::default()).unwrap();
    assert!(dev.posted_writes());
    Setup {
        dev,
        probe,
        _server: running,
    }
}

impl Setup {
    fn queued(&self) -> usize {
        self.dev.connection().queued_messages()
    }

    fn post(&self, offset: u64, data: &[u8]) {
        self.dev.write_posted(SCRATCH, offset, data).unwrap();
    }

    /// Pauses the server and posts writes until one has to wait in the send queue.
    fn back_up(&self) {
        self.probe.pause();
        // A message the server read before it paused makes it hold.
        self.post(FILL_AT, &[0; 4]);
        assert!(self.probe.wait_holding(Duration::from_secs(5)));
        let mut posted = 0u32;
        while self.queued() == 0 {
            self.post(FILL_AT, &posted.to_le_bytes());
            posted += 1;
            assert!(posted < 1_000_000, "the socket never filled");
        }
        assert_eq!(self.queued(), 1);
    }

    fn read_u32(&self, offset: u64) -> u32 {
        let mut v = [0u8; 4];
        self.dev.read(SCRATCH, offset, &mut v).unwrap();
        u32::from_le_bytes(v)
    }

    fn multis_seen(&self) -> usize {
        self.probe
            .recent_commands()
            .iter()
            .filter(|c| **c == Command::RegionWriteMulti)
            .count()
    }
}

#[test]
fn a_write_that_can_go_at_once_is_sent_alone() {
    let s = setup(true);
    s.post(8, &7u32.to_le_bytes());
    assert_eq!(s.queued(), 0);
    assert_eq!(s.read_u32(8), 7);
    assert_eq!(s.multis_seen(), 0);
    assert_eq!(
        s.probe.recent_commands().last(),
        Some(&Command::RegionRead),
        "{:?}",
        s.probe.recent_commands()
    );
}

#[test]
fn queued_writes_coalesce_up_to_the_limit_and_keep_their_order() {
    let s = setup(true);
    s.back_up();
    // 450 writes: multis of 200, 200 and 50 behind the write that filled the socket.
    for k in 1..=450u32 {
        s.post(4 * u64::from(k), &k.to_le_bytes());
    }
    assert_eq!(s.queued(), 4);
    // A write too large for an entry closes the open multi; the next small one starts
    // another. Both overlap offset 4, so their order shows.
    s.post(0, &[0xee; 16]);
    s.post(4, &0x1234u32.to_le_bytes());
    assert_eq!(s.queued(), 6);
    s.probe.resume();
    assert_eq!(s.read_u32(4), 0x1234);
    assert_eq!(s.multis_seen(), 4, "{:?}", s.probe.recent_commands());
    assert_eq!(
        s.read_u32(8),
        0xeeee_eeee,
        "the 16-byte write came after the multi"
    );
    assert_eq!(s.read_u32(16), 4);
    for k in 5..=450u32 {
        assert_eq!(s.read_u32(4 * u64::from(k)), k);
    }
    assert_eq!(s.queued(), 0);
}

#[test]
fn a_request_closes_the_multi_and_sees_the_writes_before_it() {
    let s = setup(true);
    s.back_up();
    s.post(0, &1u32.to_le_bytes());
    s.post(0, &2u32.to_le_bytes());
    assert_eq!(s.queued(), 2);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| s.read_u32(0));
        // The read waits in the queue behind the multi.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while s.queued() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the read was not queued"
            );
            std::thread::yield_now();
        }
        // So this write starts a new multi behind the read, instead of joining the first.
        s.post(0, &3u32.to_le_bytes());
        assert_eq!(s.queued(), 4);
        s.probe.resume();
        assert_eq!(reader.join().unwrap(), 2);
    });
    assert_eq!(s.read_u32(0), 3);
    assert_eq!(s.multis_seen(), 2, "{:?}", s.probe.recent_commands());
}

#[test]
fn a_server_without_write_multiple_gets_plain_writes() {
    let s = setup(false);
    s.back_up();
    for k in 1..=20u32 {
        s.post(4 * u64::from(k), &k.to_le_bytes());
    }
    assert_eq!(s.queued(), 21);
    s.probe.resume();
    for k in 1..=20u32 {
        assert_eq!(s.read_u32(4 * u64::from(k)), k);
    }
    assert_eq!(s.multis_seen(), 0);
    assert_eq!(s.probe.client().map(|c| c.twin_socket), Some(true));
}
