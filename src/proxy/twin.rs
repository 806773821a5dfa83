// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Twin-socket mode: the server sends its own requests (DMA_READ, DMA_WRITE) on a second
//! socket, handed to us with the VERSION reply, so they never interleave with our requests
//! on the main socket (libvfio-user issue #279).
//!
//! The second socket is read by a [`TwinSubscriber`] in the same event loop as the main
//! socket's subscriber ([`ConnectionSubscriber`] holds both). Requests are answered through
//! the connection's [`ServerRequestHandler`](super::ServerRequestHandler); replies go back on
//! the second socket, queued when it is full. Either socket failing ends the connection: a
//! lost main connection shuts the twin socket down, and an error or hang-up on the twin
//! socket fails the connection.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::recv::{Incoming, Received, Receiver};
use super::MAX_QUEUED_BYTES;
use super::{error, io_err, lock, socket, DisconnectReason, Error, Inner, Proxy, ProxySubscriber};
use crate::protocol::{Header, MessageType, HEADER_SIZE};

const TWIN_EVENTS: EventSet = EventSet::IN.union(EventSet::READ_HANG_UP);

/// How long answering a request may wait for the server to make room for the reply before
/// the rest is left to the event loop (a server that stops reading must not stall the loop).
const WRITE_WAIT: Duration = Duration::from_millis(20);

/// Bulk reply data sent straight from memory its owner keeps alive, without being copied
/// into a buffer first (see
/// [`ServerRequestHandler::handle_unbuffered`](super::ServerRequestHandler::handle_unbuffered)).
pub trait ReplyData: Send {
    /// Bytes of data.
    fn len(&self) -> usize;

    /// Whether there is no data.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends the bytes of `prefix`, then the data from `offset` on, in one non-blocking write
    /// (see [`socket::send_volatile`]); returns the bytes written, `prefix` included.
    fn send(&self, sock: &UnixStream, prefix: &[&[u8]], offset: usize) -> io::Result<usize>;
}

/// A reply whose bulk data is not copied into a buffer: the payload's head, then the data.
pub struct UnbufferedReply {
    /// The start of the reply payload (for DMA_READ, the 16-byte address/count head).
    pub head: Vec<u8>,
    /// The rest of the payload.
    pub data: Box<dyn ReplyData>,
}

impl fmt::Debug for UnbufferedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnbufferedReply")
            .field("head", &self.head)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// A reply being written: header, buffered payload, then any unbuffered data.
struct Outgoing {
    header: [u8; HEADER_SIZE],
    body: Vec<u8>,
    data: Option<Box<dyn ReplyData>>,
    sent: usize,
}

impl Outgoing {
    fn len(&self) -> usize {
        HEADER_SIZE + self.body.len() + self.data.as_ref().map_or(0, |d| d.len())
    }

    /// Writes what the socket takes; `Ok(())` once all of it has gone.
    fn write(&mut self, sock: &UnixStream) -> io::Result<()> {
        while self.sent < self.len() {
            let buffered = HEADER_SIZE + self.body.len();
            let mut prefix: Vec<&[u8]> = Vec::with_capacity(2);
            if self.sent < HEADER_SIZE {
                prefix.push(self.header.get(self.sent..).unwrap_or_default());
            }
            if self.sent < buffered {
                let from = self.sent.saturating_sub(HEADER_SIZE);
                prefix.push(self.body.get(from..).unwrap_or_default());
            }
            let n = match &self.data {
                Some(d) => d.send(sock, &prefix, self.sent.saturating_sub(buffered))?,
                None => socket::send_with_fds(sock, &prefix, &[])?,
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.sent += n;
        }
        Ok(())
    }
}

/// Reads the server's requests from the twin socket and answers them there.
pub struct TwinSubscriber {
    inner: Arc<Inner>,
    sock: Arc<UnixStream>,
    receiver: Receiver,
    /// Replies not yet completely written, in order.
    out: VecDeque<Outgoing>,
    out_bytes: usize,
    out_armed: bool,
    watching: bool,
}

impl fmt::Debug for TwinSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwinSubscriber")
            .field("fd", &self.sock.as_raw_fd())
            .field("queued", &self.out.len())
            .field("watching", &self.watching)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Takes `sock` as the connection's twin socket (the fd the server sent with its VERSION
    /// reply) and returns the subscriber that serves it; it must run in the same event loop
    /// as the main subscriber (see [`ConnectionSubscriber`]).
    ///
    /// The socket is shut down when the connection ends.
    pub fn attach_twin_socket(&self, sock: UnixStream) -> Result<TwinSubscriber, Error> {
        // getsockname fails with ENOTSOCK on anything but a socket.
        sock.local_addr()
            .map_err(io_err("checking the twin socket fd"))?;
        sock.set_nonblocking(true)
            .map_err(io_err("setting the twin socket non-blocking"))?;
        let sock = Arc::new(sock);
        let on_end = Arc::clone(&sock);
        self.on_disconnect(move |_| {
            let _ = on_end.shutdown(std::net::Shutdown::Both);
        });
        let config = &self.inner.config;
        Ok(TwinSubscriber {
            inner: Arc::clone(&self.inner),
            receiver: Receiver::new(config.max_recv_size, config.max_recv_fds),
            sock,
            out: VecDeque::new(),
            out_bytes: 0,
            out_armed: false,
            watching: false,
        })
    }
}

impl TwinSubscriber {
    fn events(&self, out: bool) -> Events {
        let set = if out {
            TWIN_EVENTS | EventSet::OUT
        } else {
            TWIN_EVENTS
        };
        Events::new(&*self.sock, set)
    }

    fn stop_watching(&mut self, ops: &mut EventOps) {
        if self.watching {
            let _ = ops.remove(self.events(self.out_armed));
            self.watching = false;
        }
        self.out.clear();
        self.out_bytes = 0;
    }

    /// Reads and answers one request (the socket is level-triggered: more data means another
    /// event, and stopping here saves the read that would only say `EAGAIN`).
    fn read(&mut self) -> Result<(), DisconnectReason> {
        loop {
            match self.receiver.step(&self.sock)? {
                None => return Ok(()),
                Some(Incoming::Message(msg)) => {
                    log::debug!("recv (twin) {} fds={}", msg.header, msg.fds.len());
                    if msg.header.message_type() != Some(MessageType::Command) {
                        log::debug!(
                            "dropped unexpected message on the twin socket {}",
                            msg.header
                        );
                        continue;
                    }
                    if let Some(out) = answer(&self.inner, msg) {
                        self.queue(out)?;
                    }
                    return Ok(());
                }
                Some(Incoming::Discarded { header, why }) => {
                    log::warn!("dropped message {header} on the twin socket: {why}");
                    if header.message_type() == Some(MessageType::Command) && !header.no_reply() {
                        let errno = if header.size > self.inner.config.max_recv_size {
                            libc::E2BIG
                        } else {
                            libc::EINVAL
                        };
                        let reply = Header::error_reply(&header, errno as u32);
                        self.queue(outgoing(&reply, Vec::new(), None))?;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Sends a reply at once if nothing waits before it, queues what does not fit.
    fn queue(&mut self, mut out: Outgoing) -> Result<(), DisconnectReason> {
        if self.out.is_empty() {
            let deadline = Instant::now() + WRITE_WAIT;
            loop {
                match out.write(&self.sock) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(error::io_reason(&e)),
                }
                // A server reads the reply to the request it just sent: wait for it briefly
                // here (as a blocking write would) rather than through the event loop.
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                match socket::poll_fd(self.sock.as_raw_fd(), true, ms) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return Err(error::io_reason(&e)),
                }
            }
        }
        if self.out_bytes > MAX_QUEUED_BYTES {
            return Err(DisconnectReason::ProtocolViolation(
                "the server sends requests on the twin socket but does not read our replies".into(),
            ));
        }
        self.out_bytes += out.len();
        self.out.push_back(out);
        Ok(())
    }

    /// Writes queued replies; `Ok(true)` when the queue is empty.
    fn drain(&mut self) -> Result<bool, DisconnectReason> {
        while let Some(out) = self.out.front_mut() {
            match out.write(&self.sock) {
                Ok(()) => {
                    self.out_bytes = self.out_bytes.saturating_sub(out.len());
                    self.out.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(error::io_reason(&e)),
            }
        }
        Ok(true)
    }

    fn step(&mut self, set: EventSet) -> Result<bool, DisconnectReason> {
        if set
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            self.read()?;
        }
        self.drain()
    }
}

fn outgoing(header: &Header, body: Vec<u8>, data: Option<Box<dyn ReplyData>>) -> Outgoing {
    log::debug!("send (twin) {header}");
    Outgoing {
        header: header.to_bytes(),
        body,
        data,
        sent: 0,
    }
}

/// The answer to a server request: from the connection's handler (`ENOSYS` without one),
/// unbuffered when the handler offers that; `None` for a `No_reply` request.
fn answer(inner: &Inner, msg: Received) -> Option<Outgoing> {
    let header = msg.header;
    let handler = lock(&inner.handler).clone();
    let known = header.known_command().is_some();
    let result = match handler {
        Some(h) if known => match h.handle_unbuffered(&header, &msg.payload, &msg.fds) {
            Some(r) => r.map(|u| (u.head, Some(u.data))),
            None => {
                let mut payload = Vec::new();
                h.handle(&header, &msg.payload, msg.fds, &mut payload)
                    .map(|()| (payload, None))
            }
        },
        _ => Err(libc::ENOSYS as u32),
    };
    if header.no_reply() {
        return None;
    }
    let error = |errno| outgoing(&Header::error_reply(&header, errno), Vec::new(), None);
    Some(match result {
        Ok((body, data)) => {
            let len = body.len() + data.as_ref().map_or(0, |d| d.len());
            match Header::reply(&header, len) {
                Some(reply) => outgoing(&reply, body, data),
                None => error(libc::E2BIG as u32),
            }
        }
        Err(errno) => error(errno),
    })
}

impl MutEventSubscriber for TwinSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        match ops.add(self.events(false)) {
            Ok(()) => self.watching = true,
            Err(e) => log::error!("cannot watch the vfio-user twin socket: {e:?}"),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if !self
            .inner
            .connected
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.stop_watching(ops);
            return;
        }
        match self.step(events.event_set()) {
            Ok(true) if self.out_armed => {
                if ops.modify(self.events(false)).is_ok() {
                    self.out_armed = false;
                }
            }
            Ok(false) if !self.out_armed => {
                if ops.modify(self.events(true)).is_ok() {
                    self.out_armed = true;
                }
            }
            Ok(_) => {}
            Err(reason) => {
                self.inner.fail(reason);
                self.stop_watching(ops);
            }
        }
    }
}

/// Everything a connection needs watched: the main socket's [`ProxySubscriber`] and, in
/// twin-socket mode, the [`TwinSubscriber`]. Register it in the VMM's event manager (or run
/// it with an [`EventLoop`](super::EventLoop)).
pub struct ConnectionSubscriber {
    main: ProxySubscriber,
    twin: Option<TwinSubscriber>,
}

impl fmt::Debug for ConnectionSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSubscriber")
            .field("main", &self.main)
            .field("twin", &self.twin)
            .finish()
    }
}

impl ConnectionSubscriber {
    /// Both subscribers of a connection; `twin` is `None` without twin-socket mode.
    pub fn new(main: ProxySubscriber, twin: Option<TwinSubscriber>) -> Self {
        ConnectionSubscriber { main, twin }
    }

    /// Whether a twin socket is served.
    pub fn has_twin(&self) -> bool {
        self.twin.is_some()
    }
}

impl MutEventSubscriber for ConnectionSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        self.main.init(ops);
        if let Some(t) = &mut self.twin {
            t.init(ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match &mut self.twin {
            Some(t) if events.fd() == t.sock.as_raw_fd() => t.process(events, ops),
            _ => self.main.process(events, ops),
        }
    }
}
