// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Errors of the connection layer. [`Error::server_errno`] and [`Error::is_disconnected`]
//! answer the two questions every error of the crate answers about the connection
//! ([`ConnectionCause`](crate::ConnectionCause)); the other layers' errors answer them
//! from the connection errors they carry.

use std::fmt;
use std::io;
use std::time::Duration;

use super::health::Overdue;
use crate::protocol::{Command, DecodeError};

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server closed the connection (EOF or hang-up).
    PeerClosed,
    /// A socket error, with its errno.
    Io(i32),
    /// The server broke the protocol in a way the stream cannot recover from.
    ProtocolViolation(String),
    /// The connection was shut down locally.
    Shutdown,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::PeerClosed => f.write_str("the server closed the connection"),
            DisconnectReason::Io(errno) => {
                write!(f, "socket error: {}", io::Error::from_raw_os_error(*errno))
            }
            DisconnectReason::ProtocolViolation(what) => {
                write!(f, "protocol violation by the server: {what}")
            }
            DisconnectReason::Shutdown => f.write_str("the connection was shut down"),
        }
    }
}

/// Errors of the connection layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting to the server's socket failed.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The underlying error (`TimedOut` when the server did not accept in time).
        source: io::Error,
    },
    /// The connection is gone; every waiter fails with this at once.
    #[error("disconnected: {0}")]
    Disconnected(DisconnectReason),
    /// No reply arrived before the request's deadline.
    #[error("reply to {command} (id {id}) timed out after {after:?}")]
    Timeout {
        /// The request's command.
        command: Command,
        /// The request's message id.
        id: u16,
        /// The deadline that passed.
        after: Duration,
    },
    /// `command` was not sent: the connection is unresponsive, because the server left
    /// `overdue` unanswered past its deadline. Every request fails this way at once until
    /// that late reply arrives (see [`Health`](super::Health)).
    #[error(
        "{command} not sent: the server is unresponsive ({} (id {}) went unanswered)",
        overdue.command,
        overdue.id
    )]
    Unresponsive {
        /// The command that was not sent.
        command: Command,
        /// The request whose reply is overdue.
        overdue: Overdue,
    },
    /// The server answered with an error reply.
    #[error("server refused {command}: {}", errno_text(*errno))]
    Server {
        /// The request's command.
        command: Command,
        /// The errno the server sent (0: the server gave no reason).
        errno: u32,
    },
    /// The server's reply could not be decoded.
    #[error("malformed {command} reply: {source}")]
    Decode {
        /// The request's command.
        command: Command,
        /// What was wrong.
        source: DecodeError,
    },
    /// The server's reply violated the protocol (wrong command, oversized, bad type bits).
    #[error("bad reply to {command}: {what}")]
    BadReply {
        /// The request's command.
        command: Command,
        /// What was wrong.
        what: String,
    },
    /// A message to send is larger than the protocol or the server allows.
    #[error("{command} message of {len} bytes exceeds the limit of {limit}")]
    MessageTooLarge {
        /// The command.
        command: Command,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// More fds than the server accepts in one message.
    #[error("{command} carries {count} fds; the server accepts at most {limit}")]
    TooManyFds {
        /// The command.
        command: Command,
        /// fds offered.
        count: usize,
        /// The server's `max_msg_fds`.
        limit: usize,
    },
    /// 32,768 requests (every id of the replied-to half) are waiting for replies.
    #[error("too many requests waiting for replies")]
    TooManyPending,
    /// A local I/O error outside the socket stream (fd duplication, event setup).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl Error {
    /// The server's errno, when the error is an error reply.
    pub fn server_errno(&self) -> Option<u32> {
        match self {
            Error::Server { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether the connection is broken (a new connection is needed to go on).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Disconnected(_))
    }
}

fn errno_text(errno: u32) -> String {
    if errno == 0 {
        return "no errno given".to_string();
    }
    match i32::try_from(errno) {
        Ok(e) => {
            // io::Error's text ends in " (os error N)"; say the number once.
            let text = io::Error::from_raw_os_error(e).to_string();
            let text = text
                .strip_suffix(&format!(" (os error {e})"))
                .unwrap_or(&text);
            format!("{text} (errno {errno})")
        }
        Err(_) => format!("errno {errno}"),
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        use Error::*;
        match (self, other) {
            (Disconnected(a), Disconnected(b)) => a == b,
            (
                Timeout {
                    command: c1,
                    id: i1,
                    after: a1,
                },
                Timeout {
                    command: c2,
                    id: i2,
                    after: a2,
                },
            ) => c1 == c2 && i1 == i2 && a1 == a2,
            (
                Server {
                    command: c1,
                    errno: e1,
                },
                Server {
                    command: c2,
                    errno: e2,
                },
            ) => c1 == c2 && e1 == e2,
            (
                Decode {
                    command: c1,
                    source: s1,
                },
                Decode {
                    command: c2,
                    source: s2,
                },
            ) => c1 == c2 && s1 == s2,
            (TooManyPending, TooManyPending) => true,
            (
                Unresponsive {
                    command: c1,
                    overdue: o1,
                },
                Unresponsive {
                    command: c2,
                    overdue: o2,
                },
            ) => c1 == c2 && o1 == o2,
            _ => false,
        }
    }
}

pub(crate) fn io_reason(e: &io::Error) -> DisconnectReason {
    match e.raw_os_error() {
        Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => {
            DisconnectReason::PeerClosed
        }
        Some(errno) => DisconnectReason::Io(errno),
        None => DisconnectReason::Io(libc::EIO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_happened() {
        let cases: Vec<(Error, &str)> = vec![
            (
                Error::Timeout {
                    command: Command::RegionRead,
                    id: 7,
                    after: Duration::from_secs(5),
                },
                "reply to REGION_READ (id 7) timed out after 5s",
            ),
            (
                Error::Server {
                    command: Command::DmaMap,
                    errno: libc::EINVAL as u32,
                },
                "server refused DMA_MAP: Invalid argument (errno 22)",
            ),
            (
                Error::Server {
                    command: Command::DmaMap,
                    errno: 0,
                },
                "server refused DMA_MAP: no errno given",
            ),
            (
                Error::Server {
                    command: Command::DmaMap,
                    errno: u32::MAX,
                },
                "server refused DMA_MAP: errno 4294967295",
            ),
            (
                Error::Disconnected(DisconnectReason::PeerClosed),
                "disconnected: the server closed the connection",
            ),
            (
                Error::Disconnected(DisconnectReason::Io(libc::EIO)),
                "disconnected: socket error: Input/output error (os error 5)",
            ),
            (
                Error::Disconnected(DisconnectReason::ProtocolViolation("x".into())),
                "disconnected: protocol violation by the server: x",
            ),
            (
                Error::Disconnected(DisconnectReason::Shutdown),
                "disconnected: the connection was shut down",
            ),
            (
                Error::TooManyFds {
                    command: Command::DeviceSetIrqs,
                    count: 9,
                    limit: 8,
                },
                "DEVICE_SET_IRQS carries 9 fds; the server accepts at most 8",
            ),
            (
                Error::MessageTooLarge {
                    command: Command::RegionWrite,
                    len: 10,
                    limit: 5,
                },
                "REGION_WRITE message of 10 bytes exceeds the limit of 5",
            ),
            (
                Error::TooManyPending,
                "too many requests waiting for replies",
            ),
            (
                Error::Decode {
                    command: Command::DeviceGetInfo,
                    source: DecodeError::Short {
                        what: "device info",
                        need: 16,
                        got: 3,
                    },
                },
                "malformed DEVICE_GET_INFO reply: device info: need 16 bytes, got 3",
            ),
        ];
        let overdue = crate::connection::Overdue {
            command: Command::DeviceSetIrqs,
            id: 3,
            since: std::time::Instant::now(),
        };
        let unresponsive = || Error::Unresponsive {
            command: Command::RegionRead,
            overdue,
        };
        assert_eq!(
            unresponsive().to_string(),
            "REGION_READ not sent: the server is unresponsive (DEVICE_SET_IRQS (id 3) went \
             unanswered)"
        );
        assert_eq!(unresponsive(), unresponsive());
        assert!(!unresponsive().is_disconnected());
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
            let comparable = !matches!(e, Error::TooManyFds { .. } | Error::MessageTooLarge { .. });
            assert_eq!(e == e_clone(&e), comparable, "{e}");
        }
    }

    fn e_clone(e: &Error) -> Error {
        match e {
            Error::Timeout { command, id, after } => Error::Timeout {
                command: *command,
                id: *id,
                after: *after,
            },
            Error::Server { command, errno } => Error::Server {
                command: *command,
                errno: *errno,
            },
            Error::Disconnected(r) => Error::Disconnected(r.clone()),
            Error::Decode { command, source } => Error::Decode {
                command: *command,
                source: source.clone(),
            },
            Error::TooManyPending => Error::TooManyPending,
            // Variants without equality compare unequal to themselves by design.
            _ => Error::TooManyPending,
        }
    }

    #[test]
    fn only_error_replies_carry_an_errno_and_only_disconnects_are_final() {
        let refused = Error::Server {
            command: Command::DmaMap,
            errno: 0,
        };
        assert_eq!(
            (refused.server_errno(), refused.is_disconnected()),
            (Some(0), false)
        );
        let gone = Error::Disconnected(DisconnectReason::Shutdown);
        assert_eq!((gone.server_errno(), gone.is_disconnected()), (None, true));
        let late = Error::Timeout {
            command: Command::DmaMap,
            id: 1,
            after: Duration::from_secs(1),
        };
        assert_eq!((late.server_errno(), late.is_disconnected()), (None, false));
    }

    #[test]
    fn io_errors_map_to_reasons() {
        let r = |errno| io_reason(&io::Error::from_raw_os_error(errno));
        assert_eq!(r(libc::EPIPE), DisconnectReason::PeerClosed);
        assert_eq!(r(libc::ECONNRESET), DisconnectReason::PeerClosed);
        assert_eq!(r(libc::EBADF), DisconnectReason::Io(libc::EBADF));
        assert_eq!(
            io_reason(&io::Error::other("x")),
            DisconnectReason::Io(libc::EIO)
        );
    }
}
