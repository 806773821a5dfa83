// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The migration layer end to end against the sample server: every arc and refusal, the
//! configurations without migration, pre-copy or logging, a device moved from one server to
//! another (with and without the twin socket), and the dirty set of the DMA engine's writes.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use proptest::prelude::*;
use vfio_bindings::bindings::vfio::{
    VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY, VFIO_PCI_BAR0_REGION_INDEX as BAR0,
};
use vfio_user_client::dma::DmaMapper;
use vfio_user_client::migration::{DeviceState, Error, Migration};
use vfio_user_client::protocol::{Command, DeviceFeature};
use vfio_user_client::{
    ConnectOptions, Connection, ConnectionCause, DeviceOptions, VfioUserDevice,
};
use vfio_user_sample_server::test_support::guest::{anon, memory, pattern, shared};
use vfio_user_sample_server::{
    Device, DmaEngine, DmaEngineHandle, DmaEngineStatus, GpioDevice, GpioHandle, MigrationConfig,
    Server, ServerConfig, ServerHandle,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use DeviceState::{PreCopy, Resuming, Running, Stop, StopCopy};

const EINVAL: u32 = libc::EINVAL as u32;
const PAGE: u64 = 4096;

fn with_migration(config: MigrationConfig) -> ServerConfig {
    ServerConfig {
        migration: Some(config),
        ..ServerConfig::default()
    }
}

fn options(twin: bool) -> ConnectOptions {
    let mut o = ConnectOptions::default();
    o.offer.twin_socket = twin;
    o
}

/// A sample server for `device` on a socket pair, and our device attached to it.
fn attach(
    config: ServerConfig,
    device: Box<dyn Device>,
    twin: bool,
) -> (VfioUserDevice, ServerHandle) {
    let (client, server_end) = UnixStream::pair().unwrap();
    let running = Server::new(config, device).serve_stream(server_end);
    let conn = Connection::connect(client, &options(twin)).unwrap();
    assert_eq!(conn.twin_socket(), twin);
    let dev = VfioUserDevice::new(conn, &DeviceOptions::default()).unwrap();
    (dev, running)
}

fn gpio(config: ServerConfig, twin: bool) -> (VfioUserDevice, ServerHandle, GpioHandle) {
    let (d, h) = GpioDevice::new(Default::default()).unwrap();
    let (dev, s) = attach(config, Box::new(d), twin);
    (dev, s, h)
}

fn engine(config: ServerConfig, twin: bool) -> (VfioUserDevice, ServerHandle, DmaEngineHandle) {
    let (d, h) = DmaEngine::new();
    let (dev, s) = attach(config, Box::new(d), twin);
    (dev, s, h)
}

const STATES: [DeviceState; 5] = [Stop, Running, StopCopy, Resuming, PreCopy];

/// Every pair of the sample server's states (no P2P), through our walk, and every target
/// the flags rule out refused before anything is sent.
#[test]
fn every_arc_and_every_refusal() {
    for pre_copy in [true, false] {
        let config = with_migration(MigrationConfig {
            pre_copy,
            ..MigrationConfig::default()
        });
        let (dev, _s, _h) = gpio(config, true);
        let mut m = Migration::new(&dev).unwrap();
        let mut flags = u64::from(VFIO_MIGRATION_STOP_COPY);
        if pre_copy {
            flags |= u64::from(VFIO_MIGRATION_PRE_COPY);
        }
        assert_eq!(m.flags(), flags);
        assert_eq!(m.state(), Running);
        for from in STATES {
            for to in STATES {
                if !m.can_reach(from) {
                    let e = m.set_state(from).unwrap_err();
                    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
                    continue;
                }
                m.set_state(from).unwrap();
                let r = m.set_state(to);
                let refused = to == PreCopy && (from == StopCopy || !pre_copy);
                if refused {
                    let e = r.unwrap_err();
                    assert!(
                        matches!(e, Error::Unreachable { .. }),
                        "{from:?}->{to:?}: {e:?}"
                    );
                    assert_eq!(m.state(), from);
                } else {
                    r.unwrap();
                    assert_eq!(m.state(), to);
                }
                // The server agrees.
                assert_eq!(m.read_state().unwrap(), m.state());
            }
        }
        m.set_state(Running).unwrap();
    }
}

/// The server itself refuses an arc it does not have, with EINVAL.
#[test]
fn the_server_refuses_an_illegal_arc() {
    let (dev, _s, _h) = gpio(with_migration(MigrationConfig::default()), false);
    let mut m = Migration::new(&dev).unwrap();
    m.set_state(StopCopy).unwrap();
    let mut payload = Vec::new();
    DeviceFeature::set_mig_device_state(PreCopy as u32).encode_into(&mut payload);
    let e = dev
        .connection()
        .request(Command::DeviceFeature, &payload, &[])
        .unwrap_err();
    assert_eq!(e.server_errno(), Some(EINVAL));
    assert_eq!(m.read_state().unwrap(), StopCopy);
    m.set_state(Running).unwrap();
}

#[test]
fn data_that_does_not_load_leaves_error_and_reset_leaves_it() {
    let (dev, _s, h) = gpio(with_migration(MigrationConfig::default()), false);
    let mut m = Migration::new(&dev).unwrap();
    m.set_state(Resuming).unwrap();
    m.writer()
        .unwrap()
        .write_all(b"not a device state")
        .unwrap();
    let e = m.set_state(Running).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Transition {
                from: Resuming,
                step: Stop,
                to: Running,
                now: Some(DeviceState::Error),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.server_errno(), Some(EINVAL));
    let resets = h.resets();
    m.set_state(Running).unwrap();
    assert_eq!(h.resets(), resets + 1);
    assert_eq!(m.read_state().unwrap(), Running);
}

#[test]
fn without_migration_the_device_is_unsupported() {
    let (dev, _s, _h) = gpio(ServerConfig::default(), true);
    let e = Migration::new(&dev).unwrap_err();
    assert!(matches!(e, Error::NotNegotiated), "{e:?}");
    // The device goes on working.
    let mut b = [0u8; 4];
    dev.read(BAR0, GpioDevice::REG_ID, &mut b).unwrap();
    assert_eq!(u32::from_ne_bytes(b), GpioDevice::ID);
}

#[test]
fn without_logging_start_is_refused_with_the_errno() {
    let config = with_migration(MigrationConfig {
        dma_logging: false,
        ..MigrationConfig::default()
    });
    let (dev, _s, _h) = engine(config, false);
    let mem = Arc::new(memory(vec![shared(0, 1 << 20)]));
    let mapper = DmaMapper::new(dev.connection(), mem);
    mapper.map_guest_memory().unwrap();
    let mut m = Migration::new(&dev).unwrap();
    let e = m.start_dirty_logging(&mapper).unwrap_err();
    assert!(matches!(e, Error::LoggingUnsupported(_)), "{e:?}");
    assert_eq!(e.server_errno(), Some(EINVAL));
    assert!(!m.is_logging() && !mapper.dirty_log().is_on());
}

/// Moves the state of `src` into `dst` as a VMM does: pre-copy rounds while running, then
/// STOP_COPY to the end; RESUMING on the destination, then RUNNING. Returns the bytes moved.
fn migrate(src: &VfioUserDevice, dst: &VfioUserDevice) -> u64 {
    let mut out = Migration::new(src).unwrap();
    let mut into = Migration::new(dst).unwrap();
    into.set_state(Resuming).unwrap();
    out.set_state(PreCopy).unwrap();
    let mut stream = Vec::new();
    for _ in 0..2 {
        out.reader().unwrap().read_to_end(&mut stream).unwrap();
    }
    out.set_state(StopCopy).unwrap();
    out.reader().unwrap().read_to_end(&mut stream).unwrap();
    out.set_state(Stop).unwrap();
    let mut w = into.writer().unwrap();
    w.write_all(&stream).unwrap();
    w.flush().unwrap();
    into.set_state(Running).unwrap();
    assert_eq!(out.bytes_read(), stream.len() as u64);
    assert_eq!(into.bytes_written(), stream.len() as u64);
    stream.len() as u64
}

fn gpio_moves(twin: bool) {
    let config = with_migration(MigrationConfig::default());
    let (a, _sa, ha) = gpio(config.clone(), twin);
    let (b, _sb, hb) = gpio(config, twin);
    a.write(BAR0, GpioDevice::REG_OUTPUT, &0x1234_5678u32.to_ne_bytes())
        .unwrap();
    assert_eq!(ha.output(), 0x1234_5678);
    assert_ne!(hb.output(), 0x1234_5678);
    assert!(migrate(&a, &b) > 0);
    assert_eq!(hb.output(), 0x1234_5678);
    let mut v = [0u8; 4];
    b.read(BAR0, GpioDevice::REG_OUTPUT, &mut v).unwrap();
    assert_eq!(u32::from_ne_bytes(v), 0x1234_5678);
}

#[test]
fn a_gpio_moves_to_another_server() {
    gpio_moves(false);
}

#[test]
fn a_gpio_moves_to_another_server_twin_socket() {
    gpio_moves(true);
}

/// Programs the engine and rings its doorbell; the doorbell write returns after the copy.
fn engine_copy(dev: &VfioUserDevice, source: u64, destination: u64, length: u64) {
    dev.write(BAR0, DmaEngine::REG_SOURCE, &source.to_ne_bytes())
        .unwrap();
    dev.write(BAR0, DmaEngine::REG_DESTINATION, &destination.to_ne_bytes())
        .unwrap();
    dev.write(BAR0, DmaEngine::REG_LENGTH, &length.to_ne_bytes())
        .unwrap();
    dev.write(BAR0, DmaEngine::REG_DOORBELL, &1u32.to_ne_bytes())
        .unwrap();
}

fn engine_moves(twin: bool) {
    let config = with_migration(MigrationConfig::default());
    let (a, _sa, ha) = engine(config.clone(), twin);
    let (b, _sb, hb) = engine(config, twin);
    let mem = Arc::new(memory(vec![shared(0, 1 << 20)]));
    let mapper = DmaMapper::new(a.connection(), Arc::clone(&mem));
    mapper.map_guest_memory().unwrap();
    mem.write_slice(&pattern(64, 4), GuestAddress(0x1000))
        .unwrap();
    engine_copy(&a, 0x1000, 0x8000, 64);
    assert_eq!(ha.status(), DmaEngineStatus::Done);
    migrate(&a, &b);
    assert_eq!(hb.completions(), ha.completions());
    assert_eq!(hb.status(), DmaEngineStatus::Done);
}

#[test]
fn a_dma_engine_moves_to_another_server() {
    engine_moves(false);
}

#[test]
fn a_dma_engine_moves_to_another_server_twin_socket() {
    engine_moves(true);
}

/// Guest memory of the dirty-set test: 1 MiB shared by fd (the engine writes through its
/// mapping, the server logs it) and 1 MiB anonymous right after it (the engine's writes
/// come as DMA_WRITE messages, the client's log has them).
const SHARED: u64 = 0;
const ANON: u64 = 1 << 20;
const GUEST: u64 = 2 << 20;

fn dirty_guest() -> Arc<GuestMemoryMmap> {
    Arc::new(memory(vec![shared(SHARED, 1 << 20), anon(ANON, 1 << 20)]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// The reported dirty set holds every page the DMA engine wrote while logging was on,
    /// through its mapping or by DMA_WRITE, whatever the twin socket.
    #[test]
    fn reported_pages_cover_the_engines_writes(
        before in proptest::collection::vec((0u64..GUEST - 0x4000, 1u64..0x4000), 0..3),
        during in proptest::collection::vec((0u64..GUEST - 0x4000, 1u64..0x4000), 1..6),
        twin in any::<bool>(),
    ) {
        let (dev, _s, h) = engine(with_migration(MigrationConfig::default()), twin);
        let mem = dirty_guest();
        let mapper = DmaMapper::new(dev.connection(), Arc::clone(&mem));
        mapper.map_guest_memory().unwrap();
        // Source bytes: the last page of the anonymous half (never a destination below).
        let source = GUEST - 0x4000;
        for (to, len) in before {
            engine_copy(&dev, source, to.min(source - len), len);
        }
        let mut m = Migration::new(&dev).unwrap();
        m.start_dirty_logging(&mapper).unwrap();
        let mut written = std::collections::BTreeSet::new();
        for (to, len) in during {
            let to = to.min(source - len);
            engine_copy(&dev, source, to, len);
            prop_assert_eq!(h.status(), DmaEngineStatus::Done);
            written.extend((to / PAGE..=(to + len - 1) / PAGE).map(|p| p * PAGE));
        }
        let report = m.dirty_report().unwrap();
        let reported: std::collections::BTreeSet<u64> = report.dirty_pages().collect();
        let missing: Vec<&u64> = written.difference(&reported).collect();
        prop_assert!(missing.is_empty(), "missing {:x?}", missing);
        // Reported and cleared: the next report has nothing new.
        prop_assert_eq!(m.dirty_report().unwrap().count(), 0);
        m.stop_dirty_logging().unwrap();
    }
}
