// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Connecting and negotiating against scripted servers: every failure is an error with a
//! reason, none hangs.

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use vfio_user_client::connection::{self, DisconnectReason};
use vfio_user_client::negotiate::NegotiateError;
use vfio_user_client::protocol::{Command, Header, Version};
use vfio_user_client::ConnectionCause;
use vfio_user_client::{ConnectOptions, Connection, Error};
use vfio_user_sample_server::wire::{RawEndpoint, RawMsg};

fn sock_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vuc-connect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn quick() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_millis(100),
        handshake_timeout: Duration::from_millis(200),
        ..ConnectOptions::default()
    }
}

/// Runs `script` as the server for one connection over a socketpair and returns what the
/// client made of it.
fn against(script: impl FnOnce(RawEndpoint) + Send + 'static) -> Result<Connection, Error> {
    let (a, b) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || script(common::peer(b)));
    let r = Connection::connect(a, &quick());
    t.join().unwrap();
    r
}

fn version_reply(major: u16, minor: u16, json: Option<&[u8]>) -> impl FnOnce(RawEndpoint) + Send {
    let json = json.map(<[u8]>::to_vec);
    move |mut peer: RawEndpoint| {
        let RawMsg {
            header: h,
            payload: body,
            fds,
        } = peer.recv().unwrap();
        assert_eq!(h.command, Command::Version as u16);
        assert!(fds.is_empty());
        let offer = Version::decode(&body).unwrap();
        assert_eq!((offer.major, offer.minor), (0, 0));
        let json_text = offer.json.unwrap();
        let v: serde_json::Value = serde_json::from_str(&json_text).unwrap();
        assert!(v["capabilities"]["max_msg_fds"].is_u64(), "{json_text}");
        assert!(
            v["capabilities"]["migration"]["pgsize"].is_u64(),
            "{json_text}"
        );
        let mut payload = Vec::new();
        payload.extend_from_slice(&major.to_ne_bytes());
        payload.extend_from_slice(&minor.to_ne_bytes());
        if let Some(j) = json {
            payload.extend_from_slice(&j);
        }
        // The reply stays readable after the socket closes: the client reads it before EOF.
        peer.reply(&h, &payload, &[]).unwrap();
    }
}

#[test]
fn libvfio_user_style_reply_is_accepted() {
    let conn = against(version_reply(
        0,
        0,
        Some(b"{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}\0"),
    ))
    .unwrap();
    let caps = conn.capabilities();
    assert_eq!(caps.max_msg_fds, 8);
    assert_eq!(caps.max_data_xfer_size, 1 << 20);
    assert_eq!(caps.pgsizes, 4096);
    assert_eq!(caps.max_dma_maps, 65535);
}

#[test]
fn absent_json_takes_spec_defaults() {
    let conn = against(version_reply(0, 0, None)).unwrap();
    assert_eq!(conn.capabilities().max_msg_fds, 1);
    assert_eq!(conn.capabilities().max_data_xfer_size, 1 << 20);
}

#[test]
fn refused_version_carries_errno() {
    let e = against(|mut peer| {
        let RawMsg { header: h, .. } = peer.recv().unwrap();
        peer.send_message(&Header::error_reply(&h, libc::EINVAL as u32), &[], &[])
            .unwrap();
    })
    .unwrap_err();
    assert_eq!(e.server_errno(), Some(libc::EINVAL as u32));
    assert!(e.to_string().contains("VERSION"), "{e}");
}

#[test]
fn each_bad_reply_has_its_own_error() {
    type Case = (u16, u16, &'static [u8], fn(&NegotiateError) -> bool);
    let cases: Vec<Case> = vec![
        (1, 0, b"{}\0", |e| {
            matches!(e, NegotiateError::MajorMismatch { .. })
        }),
        (0, 3, b"{}\0", |e| {
            matches!(e, NegotiateError::MinorTooHigh { .. })
        }),
        (0, 0, b"{}", |e| {
            matches!(e, NegotiateError::JsonNotNulTerminated)
        }),
        (0, 0, b"[1]\0", |e| {
            matches!(e, NegotiateError::JsonNotObject)
        }),
        (0, 0, b"{\"capabilities\":{\"max_msg_fds\":\"8\"}}\0", |e| {
            matches!(e, NegotiateError::WrongType { .. })
        }),
        (
            0,
            0,
            b"{\"capabilities\":{\"max_data_xfer_size\":0}}\0",
            |e| matches!(e, NegotiateError::ZeroMaxDataXferSize),
        ),
        (0, 0, b"{\"capabilities\":{\"pgsizes\":4097}}\0", |e| {
            matches!(e, NegotiateError::PgsizesBelowMinimum { .. })
        }),
    ];
    for (major, minor, json, check) in cases {
        let e = against(version_reply(major, minor, Some(json))).unwrap_err();
        match &e {
            Error::Negotiate(n) => assert!(check(n), "{major}.{minor} {json:?}: {n:?}"),
            other => panic!("{major}.{minor} {json:?}: unexpected {other:?}"),
        }
    }
}

#[test]
fn missing_socket_is_a_connect_error() {
    let p = sock_path("nobody-here");
    let e = Connection::connect(&p, &quick()).unwrap_err();
    assert!(
        matches!(e, Error::Connection(connection::Error::Connect { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("nobody-here"), "{e}");
}

#[test]
fn full_backlog_times_out_instead_of_hanging() {
    let p = sock_path("busy");
    let _listener = UnixListener::bind(&p).unwrap();
    // Nobody accepts: connections pile up in the backlog until one has to wait.
    // Each connection that gets in waits for its VERSION reply no time at all, and closes;
    // it keeps its place in the backlog until accepted.
    let fill = ConnectOptions {
        connect_timeout: Duration::from_millis(20),
        handshake_timeout: Duration::ZERO,
        ..ConnectOptions::default()
    };
    let mut queued = 0;
    let timeout = loop {
        match Connection::connect(&p, &fill).unwrap_err() {
            Error::Connection(connection::Error::Connect { source, .. }) => break source,
            e => assert!(
                matches!(e, Error::Connection(connection::Error::Timeout { .. })),
                "{e}"
            ),
        }
        queued += 1;
        assert!(queued < 10_000, "backlog never filled");
    };
    assert_eq!(timeout.kind(), std::io::ErrorKind::TimedOut);
    let e = Connection::connect(&p, &quick()).unwrap_err();
    assert!(
        matches!(e, Error::Connection(connection::Error::Connect { .. })),
        "{e}"
    );
}

#[test]
fn silent_server_hits_the_handshake_deadline() {
    let p = sock_path("silent");
    let _listener = UnixListener::bind(&p).unwrap();
    let e = Connection::connect(&p, &quick()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Connection(connection::Error::Timeout {
                command: Command::Version,
                ..
            })
        ),
        "{e}"
    );
}

#[test]
fn server_closing_during_handshake_is_a_disconnect() {
    let e = against(|mut peer| {
        peer.recv().unwrap();
    })
    .unwrap_err();
    assert!(e.is_disconnected(), "{e}");
    assert_eq!(
        e,
        Error::Connection(connection::Error::Disconnected(
            DisconnectReason::PeerClosed
        ))
    );
}
