// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Our client against our sample server over real Unix sockets: negotiation of every
//! capability combination the server can send, region access, posted writes, concurrency,
//! error replies, a silent or vanishing server, reconnects and fd hygiene.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::Duration;

use common::{read_region, read_u32, write_region};
use serde_json::{json, Value};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD,
};
use vfio_user_client::connection::{self, DisconnectReason};
use vfio_user_client::negotiate::{MigrationCaps, NegotiateError, TwinSocket};
use vfio_user_client::protocol::{Command, DeviceInfo, RegionAccess, SetIrqs};
use vfio_user_client::ConnectionCause;
use vfio_user_client::{Capabilities, ConnectOptions, Connection, Error};
use vfio_user_sample_server::test_support::guest::pattern;
use vfio_user_sample_server::test_support::pci::open_fds;
use vfio_user_sample_server::{
    GpioConfig, GpioDevice, GpioHandle, Probe, Quirks, Server, ServerConfig, ServerHandle,
    VersionPayload, IRQ_MSIX,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Tests run in parallel in one process; the fd-leak test counts the process's fds, so it
/// takes this lock exclusively and every other test takes it shared.
static FD_LOCK: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    FD_LOCK.read().unwrap_or_else(|p| p.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    FD_LOCK.write().unwrap_or_else(|p| p.into_inner())
}

/// A guard against a hung test, never a pacing device.
const LONG: Duration = Duration::from_secs(20);

const SCRATCH: u32 = 1;
const BAR0: u32 = 0;
const EINVAL: u32 = libc::EINVAL as u32;

fn gpio() -> (GpioDevice, GpioHandle) {
    GpioDevice::new(GpioConfig::default()).unwrap()
}

/// A GPIO server on a socketpair, and our connection to it.
fn pair(config: ServerConfig) -> (Result<Connection, Error>, ServerHandle, GpioHandle, Probe) {
    let (device, handle) = gpio();
    let server = Server::new(config, Box::new(device));
    let probe = server.probe();
    let (client, server_end) = UnixStream::pair().unwrap();
    let running = server.serve_stream(server_end);
    let conn = Connection::connect(client, &ConnectOptions::default());
    (conn, running, handle, probe)
}

/// A GPIO server listening on a temporary socket.
fn listening(config: ServerConfig) -> (ServerHandle, GpioHandle, Probe) {
    let (device, handle) = gpio();
    let server = Server::new(config, Box::new(device));
    let probe = server.probe();
    (server.listen_temp().unwrap(), handle, probe)
}

fn connect(server: &ServerHandle) -> Connection {
    Connection::connect(server.socket_path().unwrap(), &ConnectOptions::default()).unwrap()
}

/// Negotiates with a server configured as `config` and returns what we made of its reply;
/// on success, checks the connection works by asking for the device info.
fn negotiate(config: ServerConfig) -> Result<Capabilities, Error> {
    let (conn, _server, _gpio, _probe) = pair(config);
    let conn = conn?;
    let info = device_info(&conn);
    assert_eq!(info.num_regions, 9);
    Ok(*conn.capabilities())
}

fn with_caps(extra: Value) -> ServerConfig {
    let Value::Object(extra) = extra else {
        panic!("not an object: {extra}")
    };
    ServerConfig {
        extra_capabilities: extra,
        ..ServerConfig::default()
    }
}

fn device_info(p: &Connection) -> DeviceInfo {
    let mut payload = Vec::new();
    DeviceInfo::request().encode_into(&mut payload);
    let reply = p.request(Command::DeviceGetInfo, &payload, &[]).unwrap();
    DeviceInfo::decode(&reply.payload).unwrap()
}

fn region_write_payload(region: u32, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    RegionAccess {
        offset,
        region,
        count: u32::try_from(data.len()).unwrap(),
    }
    .encode_with_data(data, &mut payload);
    payload
}

// ---------------------------------------------------------------------------------------
// Negotiation
// ---------------------------------------------------------------------------------------

#[test]
fn default_libvfio_user_like_reply() {
    let _g = shared();
    let (conn, _server, _gpio, probe) = pair(ServerConfig::default());
    let conn = conn.unwrap();
    assert_eq!(
        *conn.capabilities(),
        Capabilities {
            major: 0,
            minor: 0,
            max_msg_fds: 8,
            max_data_xfer_size: 1 << 20,
            pgsizes: 4096,
            max_dma_maps: 65535,
            migration: None,
            // We offer twin-socket mode and libvfio-user grants it.
            twin_socket: Some(TwinSocket {
                supported: true,
                fd_index: Some(0)
            }),
            write_multiple: false,
        }
    );
    assert!(conn.twin_socket());
    // The server understood our offer.
    let client = probe.client().unwrap();
    assert!(client.twin_socket);
    assert_eq!((client.major, client.minor), (0, 0));
    assert_eq!(client.max_msg_fds, 16);
    assert_eq!(client.max_data_xfer_size, 1 << 20);
    let info = device_info(&conn);
    assert_eq!(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
}

#[test]
fn absent_max_msg_fds_defaults_to_one() {
    let _g = shared();
    let caps = negotiate(ServerConfig {
        max_msg_fds: None,
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(caps.max_msg_fds, 1);
    assert_eq!(caps.max_data_xfer_size, 1 << 20);
}

#[test]
fn absent_max_data_xfer_size_defaults_to_one_mib() {
    let _g = shared();
    // Present values are taken as sent...
    let caps = negotiate(ServerConfig {
        max_data_xfer_size: Some(4096),
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(caps.max_data_xfer_size, 4096);
    // ...and an absent one is the spec default.
    let caps = negotiate(ServerConfig {
        max_data_xfer_size: None,
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(caps.max_data_xfer_size, 1 << 20);
    assert_eq!(caps.max_msg_fds, 8);
}

#[test]
fn absent_pgsizes_and_max_dma_maps_take_defaults() {
    let _g = shared();
    let caps = negotiate(with_caps(
        json!({"pgsizes": 4096u64 | (2 << 20), "max_dma_maps": 100}),
    ))
    .unwrap();
    assert_eq!(caps.pgsizes, 4096 | (2 << 20));
    assert_eq!(caps.max_dma_maps, 100);
    let caps = negotiate(ServerConfig::default()).unwrap();
    assert_eq!(caps.pgsizes, 4096);
    assert_eq!(caps.max_dma_maps, 65535);
}

#[test]
fn all_keys_absent_or_no_json_at_all() {
    let _g = shared();
    let defaults = Capabilities::default();
    assert_eq!(defaults.max_msg_fds, 1);
    let caps = negotiate(ServerConfig {
        max_msg_fds: None,
        max_data_xfer_size: None,
        twin_socket: false,
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(caps, defaults);
    let caps = negotiate(ServerConfig {
        version_payload: VersionPayload::Raw(Vec::new()),
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(caps, defaults);
    let caps = negotiate(ServerConfig {
        version_payload: VersionPayload::Json(json!({})),
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(caps, defaults);
}

#[test]
fn values_above_our_bounds_are_clamped() {
    let _g = shared();
    let caps = negotiate(ServerConfig {
        max_msg_fds: Some(1000),
        max_data_xfer_size: Some(1 << 30),
        extra_capabilities: match json!({"max_dma_maps": 100_000}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        },
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(caps.max_msg_fds, 16);
    assert_eq!(caps.max_data_xfer_size, 64 << 20);
    assert_eq!(caps.max_dma_maps, 65535);
}

#[test]
fn clamped_max_msg_fds_still_bounds_what_we_send() {
    let _g = shared();
    let (conn, _server, _gpio, _probe) = pair(ServerConfig {
        max_msg_fds: Some(1000),
        ..ServerConfig::default()
    });
    let conn = conn.unwrap();
    let efds: Vec<EventFd> = (0..17)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let raw: Vec<i32> = efds.iter().map(AsRawFd::as_raw_fd).collect();
    let e = conn
        .request(Command::DeviceSetIrqs, &[0; 20], &raw)
        .unwrap_err();
    assert!(
        matches!(
            e,
            connection::Error::TooManyFds {
                count: 17,
                limit: 16,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn migration_object_is_parsed() {
    let _g = shared();
    let caps = negotiate(with_caps(json!({"migration": {"pgsize": 4096}}))).unwrap();
    assert_eq!(
        caps.migration,
        Some(MigrationCaps {
            pgsize: 4096,
            max_bitmap_size: 256 << 20
        })
    );
    let caps = negotiate(with_caps(
        json!({"migration": {"pgsize": 65536, "max_bitmap_size": 1 << 20}}),
    ))
    .unwrap();
    assert_eq!(
        caps.migration,
        Some(MigrationCaps {
            pgsize: 65536,
            max_bitmap_size: 1 << 20
        })
    );
}

#[test]
fn unknown_keys_are_ignored() {
    let _g = shared();
    let caps = negotiate(with_caps(json!({
        "future_feature": {"x": [1, 2, 3]},
        "max_msg_fds": 4,
        "migration": {"pgsize": 4096, "flavour": "new"},
    })))
    .unwrap();
    assert_eq!(caps.max_msg_fds, 4);
    assert_eq!(caps.migration.map(|m| m.pgsize), Some(4096));
    let caps = negotiate(ServerConfig {
        version_payload: VersionPayload::Json(json!({
            "vendor": "someone",
            "capabilities": {"max_msg_fds": 2, "write_multiple": true, "x": null}
        })),
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(caps.max_msg_fds, 2);
    assert!(caps.write_multiple);
}

#[test]
fn twin_socket_granted_but_not_offered_is_ignored() {
    let _g = shared();
    let (device, _gpio) = gpio();
    let config = ServerConfig {
        twin_socket: false,
        ..with_caps(json!({"twin_socket": {"supported": true, "fd_index": 0}}))
    };
    let server = Server::new(config, Box::new(device));
    let (client, server_end) = UnixStream::pair().unwrap();
    let _running = server.serve_stream(server_end);
    let mut options = ConnectOptions::default();
    options.offer.twin_socket = false;
    let conn = Connection::connect(client, &options).unwrap();
    assert_eq!(
        conn.capabilities().twin_socket,
        Some(TwinSocket {
            supported: true,
            fd_index: Some(0)
        })
    );
    assert!(!conn.twin_socket());
    // The one socket still carries requests and replies.
    assert_eq!(device_info(&conn).num_regions, 9);
}

fn negotiate_error(config: ServerConfig) -> NegotiateError {
    match negotiate(config) {
        Err(Error::Negotiate(e)) => e,
        other => panic!("expected a negotiation error, got {other:?}"),
    }
}

#[test]
fn json_without_nul_is_refused() {
    let _g = shared();
    let e = negotiate_error(ServerConfig {
        version_payload: VersionPayload::Raw(br#"{"capabilities":{}}"#.to_vec()),
        ..ServerConfig::default()
    });
    assert_eq!(e, NegotiateError::JsonNotNulTerminated);
}

#[test]
fn malformed_json_is_refused_with_its_own_reason() {
    let _g = shared();
    let e = negotiate_error(ServerConfig {
        version_payload: VersionPayload::Raw(b"{not json\0".to_vec()),
        ..ServerConfig::default()
    });
    assert!(matches!(e, NegotiateError::InvalidJson(_)), "{e:?}");
    let e = negotiate_error(ServerConfig {
        version_payload: VersionPayload::Raw(vec![b'{', 0xff, 0xfe, b'}', 0]),
        ..ServerConfig::default()
    });
    assert!(matches!(e, NegotiateError::JsonNotUtf8(_)), "{e:?}");
    let e = negotiate_error(ServerConfig {
        version_payload: VersionPayload::Json(json!([1, 2])),
        ..ServerConfig::default()
    });
    assert_eq!(e, NegotiateError::JsonNotObject);
}

#[test]
fn wrong_types_are_refused() {
    let _g = shared();
    let cases = [
        (json!({"max_msg_fds": "8"}), "capabilities.max_msg_fds"),
        (json!({"max_msg_fds": -1}), "capabilities.max_msg_fds"),
        (
            json!({"max_data_xfer_size": 1.5}),
            "capabilities.max_data_xfer_size",
        ),
        (json!({"pgsizes": null}), "capabilities.pgsizes"),
        (json!({"max_dma_maps": true}), "capabilities.max_dma_maps"),
        (json!({"write_multiple": 1}), "capabilities.write_multiple"),
        (json!({"migration": 4096}), "capabilities.migration"),
        (
            json!({"migration": {"pgsize": "4096"}}),
            "capabilities.migration.pgsize",
        ),
        (json!({"twin_socket": true}), "capabilities.twin_socket"),
    ];
    for (extra, key) in cases {
        let what = extra.to_string();
        match negotiate_error(with_caps(extra)) {
            NegotiateError::WrongType { key: k, .. } => assert_eq!(k, key, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    let e = negotiate_error(ServerConfig {
        version_payload: VersionPayload::Json(json!({"capabilities": 5})),
        ..ServerConfig::default()
    });
    assert!(
        matches!(
            e,
            NegotiateError::WrongType {
                key: "capabilities",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn impossible_values_are_refused() {
    let _g = shared();
    assert_eq!(
        negotiate_error(ServerConfig {
            max_data_xfer_size: Some(0),
            ..ServerConfig::default()
        }),
        NegotiateError::ZeroMaxDataXferSize
    );
    assert_eq!(
        negotiate_error(with_caps(json!({"pgsizes": 0}))),
        NegotiateError::ZeroPgsizes
    );
    assert_eq!(
        negotiate_error(with_caps(json!({"pgsizes": 4096 | 512}))),
        NegotiateError::PgsizesBelowMinimum {
            pgsizes: 4096 | 512
        }
    );
    assert_eq!(
        negotiate_error(with_caps(json!({"migration": {"max_bitmap_size": 1}}))),
        NegotiateError::MissingKey {
            key: "capabilities.migration.pgsize"
        }
    );
}

#[test]
fn minor_above_ours_is_refused() {
    let _g = shared();
    assert_eq!(
        negotiate_error(ServerConfig {
            minor: Some(5),
            ..ServerConfig::default()
        }),
        NegotiateError::MinorTooHigh {
            major: 0,
            minor: 5,
            our_major: 0,
            our_minor: 0
        }
    );
}

/// The sample server *requires* its major of the client too, so a server configured with
/// major 1 refuses our 0.0 VERSION with EINVAL rather than replying 1.x: the client sees
/// the server's error reply, and the handshake fails without a connection.
#[test]
fn major_one_server_refuses_our_version() {
    let _g = shared();
    let e = negotiate(ServerConfig {
        major: 1,
        ..ServerConfig::default()
    })
    .unwrap_err();
    assert_eq!(
        e,
        Error::Connection(connection::Error::Server {
            command: Command::Version,
            errno: EINVAL
        })
    );
    assert_eq!(e.server_errno(), Some(EINVAL));
}

#[test]
fn server_max_msg_fds_limits_what_we_send() {
    let _g = shared();
    for max_msg_fds in [Some(1), None] {
        let (conn, _server, _gpio, probe) = pair(ServerConfig {
            max_msg_fds,
            ..ServerConfig::default()
        });
        let conn = conn.unwrap();
        assert_eq!(conn.capabilities().max_msg_fds, 1);
        let p = &conn;
        let a = EventFd::new(EFD_NONBLOCK).unwrap();
        let b = EventFd::new(EFD_NONBLOCK).unwrap();

        // Two fds: refused locally, nothing sent.
        let commands = probe.commands();
        let mut two = Vec::new();
        SetIrqs::new(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            IRQ_MSIX,
            0,
            2,
            Vec::new(),
        )
        .encode_into(&mut two);
        let e = p
            .request(
                Command::DeviceSetIrqs,
                &two,
                &[a.as_raw_fd(), b.as_raw_fd()],
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                connection::Error::TooManyFds {
                    command: Command::DeviceSetIrqs,
                    count: 2,
                    limit: 1
                }
            ),
            "{e:?}"
        );
        assert!(p.is_connected());

        // One fd: accepted and attached.
        let mut one = Vec::new();
        SetIrqs::new(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            IRQ_MSIX,
            0,
            1,
            Vec::new(),
        )
        .encode_into(&mut one);
        p.request(Command::DeviceSetIrqs, &one, &[a.as_raw_fd()])
            .unwrap();
        // Exactly one command reached the server since: the refused one was never sent.
        assert_eq!(probe.commands(), commands + 1);
        assert_eq!(probe.raise_irq(IRQ_MSIX, 0), Ok(true));
        assert_eq!(a.read().unwrap(), 1);
        assert!(b.read().is_err(), "the second eventfd was never sent");
    }
}

#[test]
fn server_max_data_xfer_size_limits_what_we_send() {
    let _g = shared();
    let (conn, _server, gpio, _probe) = pair(ServerConfig {
        max_data_xfer_size: Some(4096),
        ..ServerConfig::default()
    });
    let conn = conn.unwrap();
    let p = &conn;
    // At the server's limit: fine.
    let data = pattern(4096, 7);
    write_region(p, SCRATCH, 0, &data).unwrap();
    assert_eq!(gpio.scratch(0, 4096).unwrap(), data);
    assert_eq!(read_region(p, SCRATCH, 0, 4096).unwrap(), data);
    // Above it the server refuses...
    assert_eq!(
        read_region(p, SCRATCH, 0, 4097).unwrap_err(),
        connection::Error::Server {
            command: Command::RegionRead,
            errno: EINVAL
        }
    );
    // ...and far above it (past our head room) we do not even send.
    let big = vec![0u8; 4096 + (64 << 10)];
    let e = p
        .request(
            Command::RegionWrite,
            &region_write_payload(SCRATCH, 0, &big),
            &[],
        )
        .unwrap_err();
    assert!(
        matches!(e, connection::Error::MessageTooLarge { limit, .. } if limit == 4096 + (64 << 10)),
        "{e:?}"
    );
    assert!(p.is_connected());
    assert_eq!(read_region(p, SCRATCH, 0, 16).unwrap(), data[..16]);
}

// ---------------------------------------------------------------------------------------
// Region access
// ---------------------------------------------------------------------------------------

#[test]
fn scratch_round_trips_of_every_size() {
    let _g = shared();
    let (server, gpio, _probe) = listening(ServerConfig::default());
    let conn = connect(&server);
    let p = &conn;
    let max = conn.capabilities().max_data_xfer_size as usize;
    assert_eq!(max, 1 << 20);
    let scratch_size = 4usize << 20;
    let mut seed = 0u8;
    for size in [1usize, 2, 3, 4, 7, 8, 4096, 4097, 65536, max - 1, max] {
        for offset in [0usize, 3, 4096 + 5, scratch_size - size] {
            seed = seed.wrapping_add(1);
            let data = pattern(size, seed);
            write_region(p, SCRATCH, offset as u64, &data).unwrap();
            assert_eq!(
                gpio.scratch(offset, size).unwrap(),
                data,
                "server side, {size} bytes at {offset}"
            );
            let back = read_region(p, SCRATCH, offset as u64, size as u32).unwrap();
            assert_eq!(back, data, "read back, {size} bytes at {offset}");
        }
    }
}

#[test]
fn registers_and_config_space() {
    let _g = shared();
    let (conn, _server, gpio, _probe) = pair(ServerConfig::default());
    let conn = conn.unwrap();
    let p = &conn;
    assert_eq!(read_u32(p, BAR0, GpioDevice::REG_ID), GpioDevice::ID);
    gpio.set_input(0xa5a5_0f0f);
    assert_eq!(read_u32(p, BAR0, GpioDevice::REG_INPUT), 0xa5a5_0f0f);
    write_region(
        p,
        BAR0,
        GpioDevice::REG_OUTPUT,
        &0x1234_5678u32.to_ne_bytes(),
    )
    .unwrap();
    assert_eq!(gpio.output(), 0x1234_5678);
    assert_eq!(read_u32(p, BAR0, GpioDevice::REG_OUTPUT), 0x1234_5678);
    let ids = read_u32(p, 7, 0);
    assert_eq!(ids & 0xffff, u32::from(GpioDevice::VENDOR_ID));
    assert_eq!(ids >> 16, u32::from(GpioDevice::DEVICE_ID));
}

#[test]
fn too_large_accesses_are_refused_and_the_stream_stays_in_step() {
    let _g = shared();
    let (conn, _server, gpio, _probe) = pair(ServerConfig::default());
    let conn = conn.unwrap();
    let p = &conn;
    let max = 1usize << 20;
    assert_eq!(
        read_region(p, SCRATCH, 0, max as u32 + 1).unwrap_err(),
        connection::Error::Server {
            command: Command::RegionRead,
            errno: EINVAL
        }
    );
    // Larger than the server's message limit: it drains the body and refuses.
    let data = pattern(max + 1, 3);
    assert_eq!(
        write_region(p, SCRATCH, 0, &data).unwrap_err(),
        connection::Error::Server {
            command: Command::RegionWrite,
            errno: EINVAL
        }
    );
    assert_eq!(gpio.scratch(0, 16).unwrap(), vec![0; 16]);
    write_region(p, SCRATCH, 0, &data[..max]).unwrap();
    assert_eq!(
        read_region(p, SCRATCH, max as u64 - 4, 4).unwrap(),
        data[max - 4..max]
    );
}

// ---------------------------------------------------------------------------------------
// Posted writes and concurrency
// ---------------------------------------------------------------------------------------

const SEQUENCE_POSTS: u32 = 100_000;

fn post_sequence(p: &Connection, from: u32, to: u32) {
    for v in from..=to {
        let payload = region_write_payload(BAR0, GpioDevice::REG_SEQUENCE, &v.to_ne_bytes());
        p.send_no_reply(Command::RegionWrite, &payload, &[])
            .unwrap();
    }
}

#[test]
fn hundred_thousand_posted_writes_arrive_in_order() {
    let _g = shared();
    let (server, gpio, _probe) = listening(ServerConfig::default());
    let conn = connect(&server);
    let p = &conn;
    post_sequence(p, 1, SEQUENCE_POSTS);
    // One WAIT request: the server handles commands in order, so every write came first.
    assert_eq!(read_u32(p, BAR0, GpioDevice::REG_SEQUENCE), SEQUENCE_POSTS);
    assert_eq!(gpio.sequence_writes(), u64::from(SEQUENCE_POSTS));
    assert_eq!(gpio.sequence_errors(), 0);
    assert_eq!(gpio.sequence(), SEQUENCE_POSTS);
    assert_eq!(p.queued_messages(), 0);
}

#[test]
fn eight_threads_ten_thousand_wait_requests_each() {
    let _g = shared();
    let (server, gpio, _probe) = listening(ServerConfig::default());
    let conn = Arc::new(connect(&server));
    let workers: Vec<_> = (0..8u64)
        .map(|w| {
            let p = Arc::clone(&conn);
            thread::spawn(move || {
                let offset = w * 4096 + w;
                for i in 0..10_000u64 {
                    let value = (w << 56) | i;
                    write_region(&p, SCRATCH, offset, &value.to_ne_bytes()).unwrap();
                    let back = read_region(&p, SCRATCH, offset, 8).unwrap();
                    assert_eq!(back, value.to_ne_bytes(), "worker {w} request {i}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    for w in 0..8u64 {
        let offset = (w * 4096 + w) as usize;
        let last = (w << 56) | 9_999;
        assert_eq!(gpio.scratch(offset, 8).unwrap(), last.to_ne_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// Error replies
// ---------------------------------------------------------------------------------------

fn assert_error_replies(p: &Connection) {
    let einval = |command| connection::Error::Server {
        command,
        errno: EINVAL,
    };
    let end = 4u64 << 20;
    // Out of bounds.
    assert_eq!(
        read_region(p, SCRATCH, end - 2, 4).unwrap_err(),
        einval(Command::RegionRead)
    );
    assert_eq!(
        write_region(p, SCRATCH, end, &[1]).unwrap_err(),
        einval(Command::RegionWrite)
    );
    assert_eq!(
        read_region(p, SCRATCH, u64::MAX - 1, 4).unwrap_err(),
        einval(Command::RegionRead)
    );
    // A region the device does not have, and one past the device's count.
    assert_eq!(
        read_region(p, 5, 0, 4).unwrap_err(),
        einval(Command::RegionRead)
    );
    assert_eq!(
        write_region(p, 100, 0, &[1, 2, 3, 4]).unwrap_err(),
        einval(Command::RegionWrite)
    );
    // Unaligned register write (BAR0 takes aligned dwords only).
    assert_eq!(
        write_region(p, BAR0, GpioDevice::REG_OUTPUT + 1, &[1, 2, 3, 4]).unwrap_err(),
        einval(Command::RegionWrite)
    );
    // The stream is still in step.
    assert_eq!(read_u32(p, BAR0, GpioDevice::REG_ID), GpioDevice::ID);
    assert!(p.is_connected());
}

#[test]
fn error_replies_carry_the_errno() {
    let _g = shared();
    let (conn, _server, _gpio, _probe) = pair(ServerConfig::default());
    let conn = conn.unwrap();
    assert_error_replies(&conn);
    let e: Error = read_region(&conn, 5, 0, 4).unwrap_err().into();
    assert_eq!(e.server_errno(), Some(EINVAL));
    assert!(!e.is_disconnected());
}

#[test]
fn legacy_error_replies_typed_as_commands_are_still_errors() {
    let _g = shared();
    let (conn, _server, _gpio, _probe) = pair(ServerConfig {
        quirks: Quirks {
            error_as_command_type: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    });
    let conn = conn.unwrap();
    assert_error_replies(&conn);
}

#[test]
fn replies_to_posted_writes_are_drained() {
    let _g = shared();
    let (conn, _server, gpio, _probe) = pair(ServerConfig {
        quirks: Quirks {
            reply_to_no_reply: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    });
    let conn = conn.unwrap();
    let p = &conn;
    post_sequence(p, 1, 1000);
    assert_eq!(read_u32(p, BAR0, GpioDevice::REG_SEQUENCE), 1000);
    assert_eq!(read_u32(p, BAR0, GpioDevice::REG_SEQUENCE_WRITES), 1000);
    // Requests after the unsolicited replies still get their own replies.
    for i in 0..100u32 {
        write_region(p, SCRATCH, 0, &i.to_ne_bytes()).unwrap();
        assert_eq!(read_u32(p, SCRATCH, 0), i);
    }
    assert_eq!(gpio.sequence_errors(), 0);
}

/// More posts than there are message ids, to a server that replies to `No_reply`: the
/// unsolicited reply to a post whose id wrapped onto a waiting request's id must not be
/// taken for that request's reply.
#[test]
fn replies_to_wrapped_post_ids_do_not_complete_waiters() {
    let _g = shared();
    let (conn, _server, gpio, _probe) = pair(ServerConfig {
        quirks: Quirks {
            reply_to_no_reply: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    });
    let conn = conn.unwrap();
    let p = &conn;
    post_sequence(p, 1, SEQUENCE_POSTS);
    assert_eq!(read_u32(p, BAR0, GpioDevice::REG_SEQUENCE), SEQUENCE_POSTS);
    assert_eq!(gpio.sequence_writes(), u64::from(SEQUENCE_POSTS));
}

// ---------------------------------------------------------------------------------------
// A silent server, a vanishing server
// ---------------------------------------------------------------------------------------

#[test]
fn silent_server_times_out_per_call() {
    let _g = shared();
    let (conn, _server, _gpio, _probe) = pair(ServerConfig {
        quirks: Quirks {
            never_reply_after_version: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    });
    let conn = conn.unwrap();
    let p = &conn;
    let mut payload = Vec::new();
    DeviceInfo::request().encode_into(&mut payload);
    let timeout = Duration::from_millis(100);
    let e = p
        .request_with_timeout(Command::DeviceGetInfo, &payload, &[], timeout)
        .unwrap_err();
    assert!(
        matches!(
            e,
            connection::Error::Timeout {
                command: Command::DeviceGetInfo,
                after,
                ..
            } if after == timeout
        ),
        "{e:?}"
    );
    // A timeout does not end the connection.
    assert!(p.is_connected());
    assert!(p.disconnect_reason().is_none());
}

#[test]
fn server_stop_fails_every_waiter_with_disconnected() {
    let _g = shared();
    let (server, _gpio, _probe) = listening(ServerConfig {
        quirks: Quirks {
            never_reply_after_version: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    });
    let conn = Arc::new(connect(&server));
    let (reason_tx, reason_rx) = mpsc::channel();
    conn.on_disconnect(move |r| {
        let _ = reason_tx.send(r.clone());
    });
    let (sent_tx, sent_rx) = mpsc::channel();
    let waiters: Vec<_> = (0..8u32)
        .map(|w| {
            let p = Arc::clone(&conn);
            let sent = sent_tx.clone();
            thread::spawn(move || {
                let mut payload = Vec::new();
                RegionAccess {
                    offset: u64::from(w) * 8,
                    region: SCRATCH,
                    count: 8,
                }
                .encode_into(&mut payload);
                let pending = p.send_request(Command::RegionRead, &payload, &[]).unwrap();
                sent.send(()).unwrap();
                p.wait(pending)
            })
        })
        .collect();
    for _ in 0..8 {
        sent_rx.recv_timeout(LONG).unwrap();
    }
    server.stop();
    for w in waiters {
        let e = w.join().unwrap().unwrap_err();
        assert_eq!(
            e,
            connection::Error::Disconnected(DisconnectReason::PeerClosed),
            "{e:?}"
        );
    }
    assert_eq!(
        reason_rx.recv_timeout(LONG).unwrap(),
        DisconnectReason::PeerClosed
    );
    assert!(!conn.is_connected());
    assert_eq!(conn.disconnect_event().read().unwrap(), 1);
    // Later requests fail fast.
    let e = conn
        .request(Command::DeviceGetInfo, &[0; 16], &[])
        .unwrap_err();
    assert!(e.is_disconnected(), "{e:?}");
}

#[test]
fn server_closing_after_version_is_noticed() {
    let _g = shared();
    let (conn, server, _gpio, probe) = pair(ServerConfig {
        quirks: Quirks {
            close_after_version: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    });
    let conn = conn.unwrap();
    assert!(probe.wait_disconnects(1, LONG));
    let (tx, rx) = mpsc::channel();
    conn.on_disconnect(move |r| {
        let _ = tx.send(r.clone());
    });
    let e = conn
        .request(
            Command::DeviceGetInfo,
            &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[],
        )
        .unwrap_err();
    assert!(e.is_disconnected(), "{e:?}");
    assert_eq!(rx.recv_timeout(LONG).unwrap(), DisconnectReason::PeerClosed);
    server.join();
}

// ---------------------------------------------------------------------------------------
// Reconnects and fds
// ---------------------------------------------------------------------------------------

#[test]
fn reconnect_after_disconnect() {
    let _g = shared();
    let (server, gpio, probe) = listening(ServerConfig::default());
    let conn = connect(&server);
    write_region(&conn, SCRATCH, 64, b"persists").unwrap();
    post_sequence(&conn, 1, 3);
    assert_eq!(read_u32(&conn, BAR0, GpioDevice::REG_SEQUENCE), 3);
    drop(conn);
    assert!(probe.wait_disconnects(1, LONG));
    // The disconnect reset the registers, not the RAM.
    assert_eq!(gpio.sequence(), 0);

    let conn = connect(&server);
    assert_eq!(probe.connections(), 2);
    assert_eq!(conn.capabilities().max_msg_fds, 8);
    assert_eq!(read_region(&conn, SCRATCH, 64, 8).unwrap(), b"persists");
    // The sequence starts over after the reset.
    post_sequence(&conn, 1, 2);
    assert_eq!(read_u32(&conn, BAR0, GpioDevice::REG_SEQUENCE), 2);
    assert_eq!(gpio.sequence_errors(), 0);
}

#[test]
fn no_fd_leak_over_fifty_connections() {
    let _g = exclusive();
    let (server, _gpio, probe) = listening(ServerConfig::default());
    // Counted while a negotiated connection is up: the server accepts a connection only
    // after it has cleaned up the previous one, so both counts see exactly one connection.
    let first = connect(&server);
    assert_eq!(device_info(&first).num_regions, 9);
    let before = open_fds();
    drop(first);
    for _ in 0..50 {
        let conn = connect(&server);
        assert_eq!(read_u32(&conn, BAR0, GpioDevice::REG_ID), GpioDevice::ID);
    }
    let last = connect(&server);
    assert_eq!(device_info(&last).num_regions, 9);
    assert!(probe.wait_disconnects(51, LONG));
    assert_eq!(probe.connections(), 52);
    let after = open_fds();
    assert_eq!(before, after, "fds before and after 50 connections");
    drop(last);
    assert!(probe.wait_disconnects(52, LONG));
}
