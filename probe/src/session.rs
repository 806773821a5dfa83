// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Opening a device through the client library, with failures turned into [`ProbeError`]s
//! that say what the peer did.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use vfio_user_client::device::Error as DeviceError;
use vfio_user_client::negotiate::NegotiateError;
use vfio_user_client::protocol::Command;
use vfio_user_client::{
    connection, ConnectOptions, Connection, ConnectionCause, DeviceOptions, Error, VfioUserDevice,
};

use crate::error::ProbeError;
use crate::wire;

/// Default deadline for connecting and for every reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Fails early, with a clear error, for a path that does not exist or is not a socket.
pub fn check_path(path: &Path) -> Result<(), ProbeError> {
    let socket = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(ProbeError::NotASocket { socket }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ProbeError::NoSuchSocket { socket })
        }
        Err(e) => Err(ProbeError::Connect { socket, source: e }),
    }
}

/// Connects and negotiates.
pub fn open_connection(path: &Path, timeout: Duration) -> Result<Connection, ProbeError> {
    check_path(path)?;
    let connect = ConnectOptions {
        connect_timeout: timeout,
        handshake_timeout: timeout,
        reply_timeout: timeout,
        ..ConnectOptions::default()
    };
    Connection::connect(path, &connect).map_err(|e| classify(path, timeout, e))
}

/// How the probe opens a device: its regions are not mapped.
pub fn device_options() -> DeviceOptions {
    DeviceOptions {
        map_regions: false,
        ..DeviceOptions::default()
    }
}

/// Connects, negotiates and discovers the device, without mapping its regions.
pub fn open_device(path: &Path, timeout: Duration) -> Result<VfioUserDevice, ProbeError> {
    let connection = open_connection(path, timeout)?;
    VfioUserDevice::new(connection, &device_options())
        .map_err(|e| classify(path, timeout, e.into()))
}

/// Whether a request's failure means the server is gone or no longer answers: the
/// connection is lost, or the reply did not come in time.
pub fn request_lost(e: &connection::Error) -> bool {
    e.is_disconnected() || matches!(e, connection::Error::Timeout { .. })
}

/// [`request_lost`] for an error of the device layer.
pub fn device_lost(e: &DeviceError) -> bool {
    e.connection_errors().any(request_lost)
}

fn classify(path: &Path, timeout: Duration, e: Error) -> ProbeError {
    let socket = path.display().to_string();
    match e {
        Error::Connection(connection::Error::Connect { source, .. }) => {
            ProbeError::from_connect(path, timeout, source)
        }
        Error::Connection(connection::Error::Timeout {
            command: Command::Version,
            ..
        }) => ProbeError::NoAnswer { socket, timeout },
        Error::Connection(connection::Error::Server {
            command: Command::Version,
            errno,
        }) => ProbeError::VersionRefused { socket, errno },
        Error::Negotiate(n @ NegotiateError::MajorMismatch { .. })
        | Error::Negotiate(n @ NegotiateError::MinorTooHigh { .. }) => ProbeError::BadVersion {
            socket,
            what: format!("incompatible version: {n}"),
        },
        Error::Negotiate(n) => ProbeError::BadVersion {
            socket,
            what: n.to_string(),
        },
        // The handshake broke in a way the library does not describe byte by byte: ask
        // again on a raw connection and say what the peer sent.
        Error::Connection(other) => match diagnose(path, timeout) {
            Some(e) => e,
            None => ProbeError::Device {
                socket,
                what: other.to_string(),
            },
        },
        other => ProbeError::Device {
            socket,
            what: other.to_string(),
        },
    }
}

/// Runs VERSION on a raw connection; `Some` with the reason when the peer is unusable.
fn diagnose(path: &Path, timeout: Duration) -> Option<ProbeError> {
    let mut conn = match wire::connect(path, timeout) {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    wire::version(&mut conn, path).err()
}
