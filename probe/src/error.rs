// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Why the probe could not talk to a server: one line each, saying what to look at.

use std::io;
use std::time::Duration;

/// A failure that ends a subcommand (exit status 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The socket path does not exist.
    #[error("{socket}: no such file (is the server running, and is this its socket path?)")]
    NoSuchSocket {
        /// The path.
        socket: String,
    },
    /// The path exists but is not a Unix socket.
    #[error("{socket}: not a Unix socket")]
    NotASocket {
        /// The path.
        socket: String,
    },
    /// Nobody accepts connections on the socket (a server that exited left it behind).
    #[error("{socket}: nobody is listening (connection refused; the server may have exited)")]
    NotListening {
        /// The path.
        socket: String,
    },
    /// The server's listen backlog stayed full.
    #[error("{socket}: the server did not accept the connection within {timeout:?}")]
    ConnectTimeout {
        /// The path.
        socket: String,
        /// The deadline.
        timeout: Duration,
    },
    /// Connecting failed otherwise.
    #[error("{socket}: cannot connect: {source}")]
    Connect {
        /// The path.
        socket: String,
        /// The error.
        source: io::Error,
    },
    /// Nothing came back for VERSION in time.
    #[error("{socket}: no reply to VERSION within {timeout:?} (server busy with another client, or not a vfio-user server)")]
    NoAnswer {
        /// The path.
        socket: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The peer closed the connection instead of answering VERSION.
    #[error("{socket}: the peer closed the connection without answering VERSION")]
    ClosedDuringVersion {
        /// The path.
        socket: String,
    },
    /// The peer answered, but not as a vfio-user server.
    #[error("{socket}: not a vfio-user server: {what}")]
    NotVfioUser {
        /// The path.
        socket: String,
        /// What it sent.
        what: String,
    },
    /// The server refused our version with an error reply.
    #[error("{socket}: the server refused version 0.0: {}", errno_text(*errno))]
    VersionRefused {
        /// The path.
        socket: String,
        /// The errno of its error reply.
        errno: u32,
    },
    /// The server's VERSION reply cannot be used.
    #[error("{socket}: unusable VERSION reply: {what}")]
    BadVersion {
        /// The path.
        socket: String,
        /// What is wrong.
        what: String,
    },
    /// A request after VERSION failed.
    #[error("{socket}: {what}")]
    Device {
        /// The path.
        socket: String,
        /// What failed.
        what: String,
    },
    /// A local I/O error.
    #[error("{socket}: {what}: {source}")]
    Io {
        /// The path.
        socket: String,
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The sample server for `demo` could not be started.
    #[error("starting the sample server: {0}")]
    Demo(io::Error),
}

impl ProbeError {
    /// Classifies an error of `connect(2)` on `path`.
    pub fn from_connect(path: &std::path::Path, timeout: Duration, e: io::Error) -> ProbeError {
        let socket = path.display().to_string();
        match e.raw_os_error() {
            Some(libc::ENOENT) => ProbeError::NoSuchSocket { socket },
            Some(libc::ECONNREFUSED) => ProbeError::NotListening { socket },
            Some(libc::ENOTSOCK) => ProbeError::NotASocket { socket },
            Some(libc::EAGAIN) | Some(libc::ETIMEDOUT) => {
                ProbeError::ConnectTimeout { socket, timeout }
            }
            _ if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
                ProbeError::ConnectTimeout { socket, timeout }
            }
            _ => ProbeError::Connect { socket, source: e },
        }
    }
}

/// `Invalid argument (errno 22)`, or `no errno given` for 0.
pub fn errno_text(errno: u32) -> String {
    if errno == 0 {
        return "no errno given".into();
    }
    match i32::try_from(errno) {
        Ok(e) => {
            let text = io::Error::from_raw_os_error(e).to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            format!("{text} (errno {errno})")
        }
        Err(_) => format!("errno {errno}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_names_the_errno() {
        assert_eq!(errno_text(22), "Invalid argument (errno 22)");
        assert_eq!(errno_text(0), "no errno given");
    }
}
