// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A raw vfio-user endpoint: one end of a stream driven by hand, whole messages in and out,
//! every header bit visible, every wait bounded by a deadline.
//!
//! The client library (rightly) hides what a test or a conformance run has to see or to
//! provoke: error replies without the Error flag, replies to `No_reply` commands, stray
//! messages, malformed headers. [`RawEndpoint`] shows and sends them. It works on either
//! side of a connection: as a client it sends commands and collects their replies
//! ([`request`](RawEndpoint::request)); as a scripted server it receives commands and
//! answers them ([`reply`](RawEndpoint::reply)).
//!
//! It leaves the socket's blocking mode alone: it waits with `poll` before each read, so a
//! caller may still use [`socket`](RawEndpoint::socket) directly. On a blocking socket a
//! send waits as the socket does; on a non-blocking one it waits until the deadline.
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::time::Duration;
//! use vfio_user_client::protocol::Command;
//! use vfio_user_sample_server::wire::RawEndpoint;
//!
//! let (a, b) = UnixStream::pair().unwrap();
//! let mut client = RawEndpoint::new(a, Duration::from_secs(5));
//! let mut server = RawEndpoint::new(b, Duration::from_secs(5));
//! let id = client.send_command(Command::DeviceReset, &[], &[]).unwrap();
//! let request = server.recv().unwrap();
//! server.reply(&request.header, &[], &[]).unwrap();
//! let exchange = client.await_reply(id);
//! assert!(!exchange.reply.unwrap().is_error());
//! ```

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vfio_user_client::protocol::{Command, Header};

use crate::socket::{self, MAX_RECV_FDS};

/// One message as received.
#[derive(Debug)]
pub struct RawMsg {
    /// The header, checked only for a size and type bits that can start a message.
    pub header: Header,
    /// The bytes after the header.
    pub payload: Vec<u8>,
    /// fds that came with the message.
    pub fds: Vec<OwnedFd>,
}

impl RawMsg {
    /// Whether the type bits say "reply".
    pub fn is_reply(&self) -> bool {
        self.header.is_reply()
    }

    /// Whether the Error bit is set.
    pub fn is_error(&self) -> bool {
        self.header.flags & Header::FLAG_ERROR != 0
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
    /// The peer closed the connection.
    Closed {
        /// Bytes of an incomplete message received before the end.
        partial: Vec<u8>,
    },
    /// The header cannot start a vfio-user message (size below 16 or above the limit, or
    /// undefined type bits); the stream cannot be followed past it.
    BadHeader {
        /// The 16 header bytes.
        bytes: [u8; Header::SIZE],
        /// What is wrong with them.
        why: String,
    },
    /// A socket error.
    Io(io::Error),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Timeout { partial } if partial.is_empty() => f.write_str("no reply"),
            RecvError::Timeout { partial } => {
                write!(f, "an incomplete message ({} bytes)", partial.len())
            }
            RecvError::Closed { .. } => f.write_str("the peer closed the connection"),
            RecvError::BadHeader { why, .. } => write!(f, "a malformed header ({why})"),
            RecvError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for RecvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecvError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// What came back for one request: its reply (if any), and every other message that
/// arrived before it (replies to other ids, the peer's own commands).
#[derive(Debug)]
pub struct Exchange {
    /// The request's message id.
    pub id: u16,
    /// The reply with the request's id, or why none came.
    pub reply: Result<RawMsg, RecvError>,
    /// Messages that arrived before the reply and were not it.
    pub others: Vec<RawMsg>,
}

/// One end of a vfio-user stream, driven by hand; see the [module docs](self).
#[derive(Debug)]
pub struct RawEndpoint {
    sock: UnixStream,
    timeout: Duration,
    next_id: u16,
    max_message: u32,
    /// Set once the stream cannot be followed any more (bad header, closed, I/O error).
    broken: Option<String>,
}

impl RawEndpoint {
    /// The largest message accepted unless [`set_max_message`](Self::set_max_message)
    /// says otherwise: 64 MiB.
    pub const DEFAULT_MAX_MESSAGE: u32 = 64 << 20;

    /// An endpoint on a connected socket; every wait is bounded by `timeout`
    /// (`Duration::MAX`: no bound). Message ids start at 1.
    pub fn new(sock: UnixStream, timeout: Duration) -> RawEndpoint {
        RawEndpoint {
            sock,
            timeout,
            next_id: 1,
            max_message: Self::DEFAULT_MAX_MESSAGE,
            broken: None,
        }
    }

    /// Connects to the socket at `path`, waiting at most `timeout` for room in a full
    /// listen backlog (a busy or stuck server); the socket is non-blocking.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<RawEndpoint> {
        let sock = socket::connect_with_timeout(path, timeout)?;
        Ok(RawEndpoint::new(sock, timeout))
    }

    /// The socket, for what the endpoint does not do (raw reads, shutdown, `FIONREAD`).
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// The socket, giving up the endpoint.
    pub fn into_socket(self) -> UnixStream {
        self.sock
    }

    /// The bound of every wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the bound of every later wait.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Changes the largest message size (header included) accepted from the peer; a larger
    /// one is a [`RecvError::BadHeader`].
    pub fn set_max_message(&mut self, max: u32) {
        self.max_message = max;
    }

    /// Why the stream can no longer be followed, if it cannot.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    fn deadline(&self) -> Option<Instant> {
        Instant::now().checked_add(self.timeout)
    }

    /// Sends `bytes` as they are, `fds` with the first byte: a message built by hand, a
    /// malformed one, or several at once.
    pub fn send_bytes(&mut self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let deadline = self.deadline();
        let mut sent = 0;
        while sent < bytes.len() {
            let fds_now = if sent == 0 { fds } else { &[] };
            match socket::send_with_fds(&self.sock, &[&bytes[sent..]], fds_now) {
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
        Ok(())
    }

    /// Sends `header` (as given, whatever its size says) and `payload`, `fds` with the
    /// first byte.
    pub fn send_message(
        &mut self,
        header: &Header,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(Header::SIZE + payload.len());
        buf.extend_from_slice(&header.to_bytes());
        buf.extend_from_slice(payload);
        self.send_bytes(&buf, fds)
    }

    /// Sends a message with the next message id, a raw command number and flags; returns
    /// the id.
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
            size: u32::try_from(Header::SIZE + payload.len())
                .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
            flags,
            error: 0,
        };
        self.send_message(&header, payload, fds)?;
        Ok(id)
    }

    /// Sends a command (type 0, no flags); returns its id.
    pub fn send_command(
        &mut self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<u16> {
        self.send(command as u16, Header::TYPE_COMMAND, payload, fds)
    }

    /// Sends a command with `No_reply`; returns its id.
    pub fn post(&mut self, command: Command, payload: &[u8]) -> io::Result<u16> {
        self.send(
            command as u16,
            Header::TYPE_COMMAND | Header::FLAG_NO_REPLY,
            payload,
            &[],
        )
    }

    /// Answers `request` with a successful reply carrying `payload` and `fds`.
    pub fn reply(&mut self, request: &Header, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let header = Header::reply(request, payload.len())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::E2BIG))?;
        self.send_message(&header, payload, fds)
    }

    /// Answers `request` with a header-only error reply carrying `errno`.
    pub fn reply_error(&mut self, request: &Header, errno: u32) -> io::Result<()> {
        self.send_message(&Header::error_reply(request, errno), &[], &[])
    }

    /// Receives one whole message, waiting at most the endpoint's timeout.
    pub fn recv(&mut self) -> Result<RawMsg, RecvError> {
        let deadline = self.deadline();
        self.recv_until(deadline)
    }

    /// Receives one whole message, waiting until `deadline`.
    pub fn recv_by(&mut self, deadline: Instant) -> Result<RawMsg, RecvError> {
        self.recv_until(Some(deadline))
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<RawMsg, RecvError> {
        if let Some(why) = &self.broken {
            return Err(RecvError::Io(io::Error::other(why.clone())));
        }
        let result = self.recv_message(deadline);
        match &result {
            Err(RecvError::Timeout { partial }) if !partial.is_empty() => {
                self.broken = Some("a message arrived only in part".into());
            }
            Err(RecvError::Timeout { .. }) | Ok(_) => {}
            Err(e) => self.broken = Some(e.to_string()),
        }
        result
    }

    fn recv_message(&mut self, deadline: Option<Instant>) -> Result<RawMsg, RecvError> {
        let mut hdr = [0u8; Header::SIZE];
        let mut fds = Vec::new();
        self.recv_exact(&mut hdr, &[], &mut fds, deadline)?;
        let header = Header::from_bytes(&hdr);
        let why = if (header.size as usize) < Header::SIZE {
            Some(format!("message size {} is below 16", header.size))
        } else if header.size > self.max_message {
            Some(format!(
                "message size {} is above {}",
                header.size, self.max_message
            ))
        } else if header.flags & Header::TYPE_MASK > Header::TYPE_REPLY {
            Some(format!("undefined type bits in flags {:#x}", header.flags))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(RecvError::BadHeader { bytes: hdr, why });
        }
        let mut payload = vec![0u8; header.payload_len()];
        self.recv_exact(&mut payload, &hdr, &mut fds, deadline)?;
        Ok(RawMsg {
            header,
            payload,
            fds,
        })
    }

    /// Fills `buf`, collecting fds into `fds`; on failure the partial message is `before`
    /// followed by what arrived of `buf`.
    fn recv_exact(
        &mut self,
        buf: &mut [u8],
        before: &[u8],
        fds: &mut Vec<OwnedFd>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvError> {
        let mut got = 0;
        let partial = |buf: &[u8], got: usize| [before, &buf[..got]].concat();
        while got < buf.len() {
            match wait(&self.sock, false, deadline) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(RecvError::Timeout {
                        partial: partial(buf, got),
                    })
                }
                Err(e) => return Err(RecvError::Io(e)),
            }
            match socket::recv_with_fds(&self.sock, &mut buf[got..], MAX_RECV_FDS) {
                Ok((0, _)) => {
                    return Err(RecvError::Closed {
                        partial: partial(buf, got),
                    })
                }
                Ok((n, more)) => {
                    got += n;
                    fds.extend(more);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
        Ok(())
    }

    /// Reads messages until the reply to `id` arrives (or the deadline passes); the others
    /// are collected. A message with `id` that carries `No_reply` is not the reply.
    pub fn await_reply(&mut self, id: u16) -> Exchange {
        let deadline = self.deadline();
        let mut others = Vec::new();
        loop {
            match self.recv_until(deadline) {
                Ok(m) if m.header.id == id && m.header.flags & Header::FLAG_NO_REPLY == 0 => {
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
        self.exchange(command as u16, Header::TYPE_COMMAND, payload, fds)
    }

    /// Collects whatever arrives within `window` (for messages that should *not* come).
    pub fn drain_for(&mut self, window: Duration) -> Vec<RawMsg> {
        let deadline = Instant::now().checked_add(window);
        let mut out = Vec::new();
        while let Ok(m) = self.recv_until(deadline) {
            out.push(m);
        }
        out
    }
}

/// Waits until the socket is ready or the deadline (if any) passes (`false`). Past the
/// deadline it still looks once, so that what already arrived is read.
fn wait(sock: &UnixStream, writable: bool, deadline: Option<Instant>) -> io::Result<bool> {
    let ms = match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                0
            } else {
                i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX)
            }
        }
    };
    socket::poll_fd(sock.as_raw_fd(), writable, ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn pair() -> (RawEndpoint, RawEndpoint) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = Duration::from_millis(200);
        (RawEndpoint::new(a, t), RawEndpoint::new(b, t))
    }

    #[test]
    fn request_reply_with_fds_and_strays() {
        let (mut client, mut server) = pair();
        let e = EventFd::new(0).unwrap();
        let id = client
            .send_command(Command::DmaMap, b"body", &[e.as_raw_fd()])
            .unwrap();
        let rq = server.recv().unwrap();
        assert_eq!((rq.header.id, rq.payload.as_slice()), (id, &b"body"[..]));
        assert_eq!(rq.fds.len(), 1);
        assert!(!rq.is_reply());
        server.post(Command::DmaRead, b"stray").unwrap();
        server.reply_error(&rq.header, 22).unwrap();
        let ex = client.await_reply(id);
        let reply = ex.reply.unwrap();
        assert!(reply.is_reply() && reply.is_error());
        assert_eq!(
            reply.describe(),
            format!("id {id}, command 2, flags 0x21, errno 22, 16 bytes")
        );
        assert_eq!(ex.others.len(), 1);
        assert_eq!(ex.others[0].payload, b"stray");
        // Ids count from 1.
        assert_eq!(id, 1);
        assert_eq!(client.request(Command::DeviceReset, &[], &[]).id, 2);
    }

    #[test]
    fn timeouts_partials_and_end_of_stream() {
        let (mut client, mut server) = pair();
        assert!(matches!(
            client.recv(),
            Err(RecvError::Timeout { ref partial }) if partial.is_empty()
        ));
        assert!(client.broken().is_none());
        server.send_bytes(&[1, 2, 3], &[]).unwrap();
        let e = client.recv().unwrap_err();
        assert!(matches!(e, RecvError::Timeout { ref partial } if partial == &[1, 2, 3]));
        assert_eq!(e.to_string(), "an incomplete message (3 bytes)");
        // The stream cannot be followed past a partial message.
        assert!(client.broken().is_some());
        assert!(matches!(client.recv(), Err(RecvError::Io(_))));

        let (mut client, server) = pair();
        drop(server);
        let e = client.recv().unwrap_err();
        assert!(matches!(e, RecvError::Closed { ref partial } if partial.is_empty()));
        assert_eq!(e.to_string(), "the peer closed the connection");
        assert!(client.drain_for(Duration::from_millis(1)).is_empty());
    }

    #[test]
    fn bad_headers_are_reported_with_their_bytes() {
        for (size, flags, why) in [
            (15, 0, "message size 15 is below 16"),
            (1 << 20, 0, "message size 1048576 is above 65536"),
            (16, 2, "undefined type bits in flags 0x2"),
        ] {
            let (mut client, mut server) = pair();
            client.set_max_message(64 << 10);
            let h = Header {
                id: 9,
                command: 1,
                size,
                flags,
                error: 0,
            };
            server.send_message(&h, &[], &[]).unwrap();
            match client.recv() {
                Err(RecvError::BadHeader { bytes, why: got }) => {
                    assert_eq!(bytes, h.to_bytes());
                    assert_eq!(got, why);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unbounded_wait_and_socket_access() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut server = RawEndpoint::new(b, Duration::MAX);
        assert_eq!(server.timeout(), Duration::MAX);
        let mut client = RawEndpoint::new(a, Duration::from_secs(5));
        let t = std::thread::spawn(move || {
            client.post(Command::RegionWrite, b"x").unwrap();
            client.into_socket()
        });
        let m = server.recv().unwrap();
        assert!(m.header.flags & Header::FLAG_NO_REPLY != 0);
        drop(t.join().unwrap());
        server.set_timeout(Duration::from_millis(10));
        assert!(server.socket().peer_addr().is_ok());
        assert!(matches!(server.recv(), Err(RecvError::Closed { .. })));
    }
}
