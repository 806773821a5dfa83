// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A raw vfio-user connection: whole messages in and out, every header bit visible, every
//! wait bounded by a deadline. `check` drives the server through it, because the client
//! library (rightly) hides the very misbehaviour a conformance run has to see: error replies
//! without the Error flag, replies to `No_reply` commands, stray messages.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vfio_user_client::__socket as socket;
use vfio_user_client::negotiate::Offer;
use vfio_user_client::protocol::{
    Command, Header, FLAGS_ERROR, FLAGS_NO_REPLY, FLAGS_TYPE_COMMAND, FLAGS_TYPE_MASK,
    FLAGS_TYPE_REPLY, HEADER_SIZE,
};

use crate::error::ProbeError;

/// Largest message accepted from the server (1 MiB of data plus room for heads).
pub const MAX_MESSAGE: u32 = (1 << 20) + (64 << 10);

/// One message as received.
#[derive(Debug)]
pub struct RawMsg {
    /// The header, unvalidated beyond its size.
    pub header: Header,
    /// The bytes after the header.
    pub payload: Vec<u8>,
    /// fds that came with the message.
    pub fds: Vec<OwnedFd>,
}

impl RawMsg {
    /// Whether the type bits say "reply".
    pub fn is_reply(&self) -> bool {
        self.header.flags & FLAGS_TYPE_MASK == FLAGS_TYPE_REPLY
    }

    /// Whether the Error bit is set.
    pub fn is_error(&self) -> bool {
        self.header.flags & FLAGS_ERROR != 0
    }

    /// A short description for reasons: `id 3, command 4, flags 0x21, errno 22, 16 bytes`.
    pub fn describe(&self) -> String {
        let h = &self.header;
        format!(
            "id {}, command {}, flags {:#x}, errno {}, {} bytes",
            h.id, h.command, h.flags, h.error, h.size
        )
    }
}

/// Why no (whole) message arrived.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing, or only part of a message, arrived before the deadline.
    Timeout {
        /// Bytes of the incomplete message received so far.
        partial: Vec<u8>,
    },
    /// The server closed the connection.
    Closed {
        /// Bytes of an incomplete message received before the end.
        partial: Vec<u8>,
    },
    /// The header cannot start a vfio-user message (size below 16 or above the limit, or
    /// undefined type bits); the stream cannot be followed past it.
    BadHeader {
        /// The 16 header bytes.
        bytes: [u8; HEADER_SIZE],
        /// What is wrong with them.
        why: String,
    },
    /// A socket error.
    Io(io::Error),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Timeout { partial } if partial.is_empty() => f.write_str("no reply"),
            RecvError::Timeout { partial } => {
                write!(f, "an incomplete message ({} bytes)", partial.len())
            }
            RecvError::Closed { .. } => f.write_str("the server closed the connection"),
            RecvError::BadHeader { why, .. } => write!(f, "a malformed header ({why})"),
            RecvError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

/// What came back for one request: its reply (if any), and every other message that
/// arrived before it (replies to other ids, server commands).
#[derive(Debug)]
pub struct Exchange {
    /// The request's message id.
    pub id: u16,
    /// The reply with the request's id, or why none came.
    pub reply: Result<RawMsg, RecvError>,
    /// Messages that arrived before the reply and were not it.
    pub others: Vec<RawMsg>,
}

/// A raw connection to a server.
#[derive(Debug)]
pub struct RawConn {
    sock: UnixStream,
    next_id: u16,
    timeout: Duration,
    /// Set once the stream cannot be followed any more (bad header, closed, I/O error).
    broken: Option<String>,
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

impl RawConn {
    /// Connects to `path`; every later wait is bounded by `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<RawConn, ProbeError> {
        crate::session::check_path(path)?;
        let sock = socket::connect_with_timeout(path, timeout)
            .map_err(|e| ProbeError::from_connect(path, timeout, e))?;
        Ok(RawConn {
            sock,
            next_id: 1,
            timeout,
            broken: None,
        })
    }

    /// The deadline of every wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Why the stream can no longer be followed, if it cannot.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Sends a message with a raw command number and flags; returns its id.
    pub fn send(
        &mut self,
        command: u16,
        flags: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<u16> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let header = Header {
            id,
            command,
            size: u32::try_from(HEADER_SIZE + payload.len())
                .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
            flags,
            error: 0,
        };
        let mut buf = header.to_bytes().to_vec();
        buf.extend_from_slice(payload);
        let deadline = Instant::now() + self.timeout;
        let mut sent = 0;
        while sent < buf.len() {
            let fds_now = if sent == 0 { fds } else { &[] };
            match socket::send_with_fds(&self.sock, &[&buf[sent..]], fds_now) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait(&self.sock, true, deadline)? {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                Err(e) => {
                    self.broken = Some(format!("sending failed: {e}"));
                    return Err(e);
                }
            }
        }
        Ok(id)
    }

    /// Sends a command (type 0, no flags).
    pub fn send_command(
        &mut self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<u16> {
        self.send(command as u16, FLAGS_TYPE_COMMAND, payload, fds)
    }

    /// Sends a command with `No_reply`.
    pub fn post(&mut self, command: Command, payload: &[u8]) -> io::Result<u16> {
        self.send(
            command as u16,
            FLAGS_TYPE_COMMAND | FLAGS_NO_REPLY,
            payload,
            &[],
        )
    }

    /// Receives one whole message, waiting until `deadline`.
    pub fn recv(&mut self, deadline: Instant) -> Result<RawMsg, RecvError> {
        if let Some(why) = &self.broken {
            return Err(RecvError::Io(io::Error::other(why.clone())));
        }
        let result = self.recv_inner(deadline);
        match &result {
            Err(RecvError::Timeout { partial }) if !partial.is_empty() => {
                self.broken = Some("a message arrived only in part".into());
            }
            Err(RecvError::Timeout { .. }) | Ok(_) => {}
            Err(e) => self.broken = Some(e.to_string()),
        }
        result
    }

    fn recv_inner(&mut self, deadline: Instant) -> Result<RawMsg, RecvError> {
        let mut hdr = [0u8; HEADER_SIZE];
        let mut got = 0;
        let mut fds = Vec::new();
        while got < HEADER_SIZE {
            match socket::recv_with_fds(&self.sock, &mut hdr[got..], 16) {
                Ok((0, _)) => {
                    return Err(RecvError::Closed {
                        partial: hdr[..got].to_vec(),
                    })
                }
                Ok((n, f)) => {
                    got += n;
                    fds.extend(f);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match wait(&self.sock, false, deadline) {
                        Ok(true) => {}
                        Ok(false) => {
                            return Err(RecvError::Timeout {
                                partial: hdr[..got].to_vec(),
                            })
                        }
                        Err(e) => return Err(RecvError::Io(e)),
                    }
                }
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
        let header = Header::from_bytes(&hdr);
        let why = if (header.size as usize) < HEADER_SIZE {
            Some(format!("message size {} is below 16", header.size))
        } else if header.size > MAX_MESSAGE {
            Some(format!(
                "message size {} is above {MAX_MESSAGE}",
                header.size
            ))
        } else if header.flags & FLAGS_TYPE_MASK > FLAGS_TYPE_REPLY {
            Some(format!("undefined type bits in flags {:#x}", header.flags))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(RecvError::BadHeader { bytes: hdr, why });
        }
        let mut payload = vec![0u8; header.payload_len()];
        let mut done = 0;
        while done < payload.len() {
            match socket::recv(&self.sock, &mut payload[done..]) {
                Ok(0) => {
                    let mut partial = hdr.to_vec();
                    partial.extend_from_slice(&payload[..done]);
                    return Err(RecvError::Closed { partial });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match wait(&self.sock, false, deadline) {
                        Ok(true) => {}
                        Ok(false) => {
                            let mut partial = hdr.to_vec();
                            partial.extend_from_slice(&payload[..done]);
                            return Err(RecvError::Timeout { partial });
                        }
                        Err(e) => return Err(RecvError::Io(e)),
                    }
                }
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
        Ok(RawMsg {
            header,
            payload,
            fds,
        })
    }

    /// Reads messages until the one with `id` arrives (or the deadline passes); the others
    /// are collected.
    pub fn await_reply(&mut self, id: u16) -> Exchange {
        let deadline = Instant::now() + self.timeout;
        let mut others = Vec::new();
        loop {
            match self.recv(deadline) {
                Ok(m) if m.header.id == id && m.header.flags & FLAGS_NO_REPLY == 0 => {
                    return Exchange {
                        id,
                        reply: Ok(m),
                        others,
                    }
                }
                Ok(m) => others.push(m),
                Err(e) => {
                    return Exchange {
                        id,
                        reply: Err(e),
                        others,
                    }
                }
            }
        }
    }

    /// Sends a message and waits for its reply.
    pub fn exchange(
        &mut self,
        command: u16,
        flags: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Exchange {
        match self.send(command, flags, payload, fds) {
            Ok(id) => self.await_reply(id),
            Err(e) => Exchange {
                id: 0,
                reply: Err(RecvError::Io(e)),
                others: Vec::new(),
            },
        }
    }

    /// Sends a command and waits for its reply.
    pub fn request(&mut self, command: Command, payload: &[u8], fds: &[RawFd]) -> Exchange {
        self.exchange(command as u16, FLAGS_TYPE_COMMAND, payload, fds)
    }

    /// Collects whatever arrives within `window` (for messages that should *not* come).
    pub fn drain_for(&mut self, window: Duration) -> Vec<RawMsg> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(m) = self.recv(deadline) {
            out.push(m);
        }
        out
    }

    /// The VERSION exchange that opens a connection, with our library's offer (0.0, 16 fds,
    /// 1 MiB, the host page size): the reply, or the reason the peer is unusable as a
    /// vfio-user server.
    pub fn version(&mut self, path: &Path) -> Result<RawMsg, ProbeError> {
        let payload = Offer::default().version_payload();
        let ex = self.request(Command::Version, &payload, &[]);
        let socket = path.display().to_string();
        let timeout = self.timeout;
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
}

/// Waits until the socket is ready or the deadline passes (`false`).
fn wait(sock: &UnixStream, writable: bool, deadline: Instant) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(false);
    }
    let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
    socket::poll_fd(sock.as_raw_fd(), writable, ms)
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
