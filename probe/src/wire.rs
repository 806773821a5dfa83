// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The raw connection `check` drives the server through: the sample server crate's
//! [`RawEndpoint`] (whole messages in and out, every header bit visible, every wait bounded
//! by a deadline), opened and greeted with the probe's errors. The client library (rightly)
//! hides the very misbehaviour a conformance run has to see: error replies without the
//! Error flag, replies to `No_reply` commands, stray messages.

use std::path::Path;
use std::time::Duration;

use vfio_user_client::negotiate::Offer;
use vfio_user_client::protocol::Command;
pub use vfio_user_sample_server::wire::{Exchange, RawEndpoint, RawMsg, RecvError};

use crate::error::ProbeError;

/// Largest message accepted from the server (1 MiB of data plus room for heads).
pub const MAX_MESSAGE: u32 = (1 << 20) + (64 << 10);

/// Connects to `path`; every later wait is bounded by `timeout`, and messages above
/// [`MAX_MESSAGE`] are malformed.
pub fn connect(path: &Path, timeout: Duration) -> Result<RawEndpoint, ProbeError> {
    crate::session::check_path(path)?;
    let mut conn = RawEndpoint::connect(path, timeout)
        .map_err(|e| ProbeError::from_connect(path, timeout, e))?;
    conn.set_max_message(MAX_MESSAGE);
    Ok(conn)
}

/// A printable preview of bytes: hex, and the ASCII text when it is mostly printable.
pub fn preview(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(16)];
    let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
    let printable = shown
        .iter()
        .filter(|b| b.is_ascii_graphic() || **b == b' ')
        .count();
    let mut s = hex.join(" ");
    if printable * 4 >= shown.len() * 3 {
        let text: String = shown
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        s.push_str(&format!(" (\"{text}\")"));
    }
    s
}

/// The VERSION exchange that opens a connection, with our library's offer (0.0, 16 fds,
/// 1 MiB, the host page size): the reply, or the reason the peer is unusable as a
/// vfio-user server.
pub fn version(conn: &mut RawEndpoint, path: &Path) -> Result<RawMsg, ProbeError> {
    let payload = Offer::default().version_payload();
    let ex = conn.request(Command::Version, &payload, &[]);
    let socket = path.display().to_string();
    let timeout = conn.timeout();
    let first = ex.others.into_iter().next();
    let reply = match (ex.reply, first) {
        // Anything else first: the peer answered, but not with a VERSION reply.
        (_, Some(m)) => {
            return Err(ProbeError::NotVfioUser {
                socket,
                what: format!(
                    "its first message does not answer VERSION ({})",
                    m.describe()
                ),
            })
        }
        (Ok(m), None) => m,
        (Err(RecvError::Timeout { partial }), None) if partial.is_empty() => {
            return Err(ProbeError::NoAnswer { socket, timeout })
        }
        (Err(RecvError::Timeout { partial }), None) => {
            return Err(ProbeError::NotVfioUser {
                socket,
                what: format!("it sent {} without completing a message", preview(&partial)),
            })
        }
        (Err(RecvError::Closed { partial }), None) if partial.is_empty() => {
            return Err(ProbeError::ClosedDuringVersion { socket })
        }
        (Err(RecvError::Closed { partial }), None) => {
            return Err(ProbeError::NotVfioUser {
                socket,
                what: format!("it sent {} and closed the connection", preview(&partial)),
            })
        }
        (Err(RecvError::BadHeader { bytes, why }), None) => {
            return Err(ProbeError::NotVfioUser {
                socket,
                what: format!("it answered {} ({why})", preview(&bytes)),
            })
        }
        (Err(RecvError::Io(e)), None)
            if matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)) =>
        {
            return Err(ProbeError::ClosedDuringVersion { socket })
        }
        (Err(RecvError::Io(e)), None) => {
            return Err(ProbeError::Io {
                socket,
                what: "the VERSION exchange".into(),
                source: e,
            })
        }
    };
    if reply.header.command != Command::Version as u16 {
        return Err(ProbeError::NotVfioUser {
            socket,
            what: format!(
                "its reply to VERSION is for command {}",
                reply.header.command
            ),
        });
    }
    if reply.is_error() {
        return Err(ProbeError::VersionRefused {
            socket,
            errno: reply.header.error,
        });
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_shows_text_when_printable() {
        assert_eq!(preview(b"HTTP"), "48 54 54 50 (\"HTTP\")");
        assert_eq!(preview(&[0, 1, 2]), "00 01 02");
    }
}
