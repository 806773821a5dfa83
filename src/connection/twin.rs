// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Twin-socket mode: the server sends its own requests (DMA_READ, DMA_WRITE) on a second
//! socket, handed to us with the VERSION reply, so they never interleave with our requests
//! on the main socket (libvfio-user issue #279).
//!
//! The second socket is read by a [`TwinSubscriber`] in the same event loop as the main
//! socket's subscriber ([`ConnectionSubscriber`](super::ConnectionSubscriber) holds both). Requests are answered through
//! the connection's [`ServerRequestHandler`](super::ServerRequestHandler); replies go back on
//! the second socket, queued when it is full. Either socket failing ends the connection: a
//! lost main connection shuts the twin socket down, and an error or hang-up on the twin
//! socket fails the connection.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::inner::{io_err, Inner};
use super::recv::{Incoming, Received};
use super::send::{MAX_QUEUED_BYTES, WRITE_WAIT};
use super::serve::ReplyData;
use super::{error, socket, DisconnectReason, Error};
use crate::protocol::DecodeError;
use crate::protocol::{Header, MessageType, HEADER_SIZE};
use crate::sync::lock;

const TWIN_EVENTS: EventSet = EventSet::IN.union(EventSet::READ_HANG_UP);

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

/// Bytes read from the twin socket at a time: a DMA_READ request, or a DMA_WRITE of a few
/// KiB, arrives whole in one read instead of a header read and a body read.
const CHUNK: usize = 16 << 10;

/// The twin socket's framing: reads up to [`CHUNK`] bytes at a time and cuts messages out of
/// them; the body of a message too large for that is read straight into its own buffer (or
/// drained, when it is over the size limit). Sizes are bounded before anything is allocated,
/// as in the main socket's receiver.
struct Framer {
    stash: Vec<u8>,
    start: usize,
    end: usize,
    fds: Vec<OwnedFd>,
    large: Option<Large>,
    max_size: u32,
    max_fds: usize,
}

/// A message whose body did not fit the stash.
enum Large {
    Keep {
        header: Header,
        /// Allocated at `want` bytes and filled by the kernel (never zeroed first).
        buf: Vec<u8>,
        want: usize,
        fds: Vec<OwnedFd>,
    },
    Discard {
        header: Header,
        left: usize,
        why: String,
    },
}

impl Framer {
    pub(super) fn new(max_size: u32, max_fds: usize) -> Framer {
        Framer {
            stash: vec![0; CHUNK],
            start: 0,
            end: 0,
            fds: Vec::new(),
            large: None,
            max_size: max_size.max(HEADER_SIZE as u32),
            max_fds,
        }
    }

    /// Whether bytes already read are waiting to be cut into messages (no event will come
    /// for them).
    fn holds_data(&self) -> bool {
        self.start < self.end
    }

    /// A complete message, or `None` when the socket has no more data for now.
    fn step(&mut self, sock: &UnixStream) -> Result<Option<Incoming>, DisconnectReason> {
        loop {
            if self.large.is_some() {
                return self.read_large(sock);
            }
            if let Some(done) = self.cut()? {
                return Ok(Some(done));
            }
            if self.large.is_some() {
                continue;
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 {
                self.stash.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let room = self.max_fds.saturating_sub(self.fds.len());
            let buf = self.stash.get_mut(self.end..).unwrap_or_default();
            match socket::recv_with_fds(sock, buf, room) {
                Ok((0, _)) => return Err(DisconnectReason::PeerClosed),
                Ok((n, fds)) => {
                    self.end += n;
                    self.fds.extend(fds);
                }
                Err(e) => return would_block(e),
            }
        }
    }

    /// Cuts a whole message out of the stash, or starts reading a large one.
    fn cut(&mut self) -> Result<Option<Incoming>, DisconnectReason> {
        if self.end - self.start < HEADER_SIZE {
            return Ok(None);
        }
        let Some(hdr) = self
            .stash
            .get(self.start..self.start + HEADER_SIZE)
            .and_then(|h| <&[u8; HEADER_SIZE]>::try_from(h).ok())
        else {
            return Ok(None);
        };
        let raw = Header::from_bytes(hdr);
        let decoded = match Header::decode(hdr, self.max_size) {
            Ok(h) => Ok(h),
            Err(DecodeError::InvalidField {
                field: "header.msg_size",
                value,
            }) => {
                return Err(DisconnectReason::ProtocolViolation(format!(
                    "message size {value} is smaller than the header ({raw})"
                )))
            }
            Err(e) => Err(e.to_string()),
        };
        let len = raw.payload_len();
        let body_at = self.start + HEADER_SIZE;
        let held = self.end - body_at;
        if held >= len {
            let body = self.stash.get(body_at..body_at + len).unwrap_or_default();
            let done = match decoded {
                Ok(header) => Incoming::Message(Received {
                    header,
                    payload: body.to_vec(),
                    fds: std::mem::take(&mut self.fds),
                    data_in_buffer: false,
                }),
                Err(why) => {
                    self.fds.clear();
                    Incoming::Discarded { header: raw, why }
                }
            };
            self.start = body_at + len;
            return Ok(Some(done));
        }
        if HEADER_SIZE + len <= self.stash.len() {
            // The rest fits the stash: read more.
            return Ok(None);
        }
        let first = self.stash.get(body_at..self.end).unwrap_or_default();
        self.large = Some(match decoded {
            Ok(header) => {
                let mut buf = Vec::with_capacity(len);
                buf.extend_from_slice(first);
                Large::Keep {
                    header,
                    buf,
                    want: len,
                    fds: std::mem::take(&mut self.fds),
                }
            }
            Err(why) => {
                self.fds.clear();
                Large::Discard {
                    header: raw,
                    left: len - held,
                    why,
                }
            }
        });
        self.start = 0;
        self.end = 0;
        Ok(None)
    }

    fn read_large(&mut self, sock: &UnixStream) -> Result<Option<Incoming>, DisconnectReason> {
        loop {
            let done = match &mut self.large {
                None => return Ok(None),
                Some(Large::Keep { buf, want, fds, .. }) => {
                    if buf.len() < *want {
                        let room = self.max_fds.saturating_sub(fds.len());
                        let limit = *want - buf.len();
                        match socket::recv_into_spare(sock, buf, limit, room, false) {
                            Ok((0, _)) => return Err(DisconnectReason::PeerClosed),
                            Ok((_, more)) => fds.extend(more),
                            Err(e) => return would_block(e),
                        }
                    }
                    buf.len() >= *want
                }
                Some(Large::Discard { left, .. }) => {
                    if *left > 0 {
                        let n = (*left).min(self.stash.len());
                        let scratch = self.stash.get_mut(..n).unwrap_or_default();
                        match socket::recv(sock, scratch) {
                            Ok(0) => return Err(DisconnectReason::PeerClosed),
                            Ok(n) => *left = left.saturating_sub(n),
                            Err(e) => return would_block(e),
                        }
                    }
                    *left == 0
                }
            };
            if done {
                return Ok(self.large.take().map(|l| match l {
                    Large::Keep {
                        header, buf, fds, ..
                    } => Incoming::Message(Received {
                        header,
                        payload: buf,
                        fds,
                        data_in_buffer: false,
                    }),
                    Large::Discard { header, why, .. } => Incoming::Discarded { header, why },
                }));
            }
        }
    }
}

fn would_block<T>(e: io::Error) -> Result<Option<T>, DisconnectReason> {
    match e.kind() {
        io::ErrorKind::WouldBlock => Ok(None),
        _ if e.raw_os_error() == Some(libc::ENOBUFS) => Err(DisconnectReason::ProtocolViolation(
            "more fds than allowed in one message".into(),
        )),
        _ => Err(error::io_reason(&e)),
    }
}

/// Reads the server's requests from the twin socket and answers them there.
pub(super) struct TwinSubscriber {
    inner: Arc<Inner>,
    sock: Arc<UnixStream>,
    receiver: Framer,
    /// Replies not yet completely written, in order.
    out: VecDeque<Outgoing>,
    out_bytes: usize,
    out_armed: bool,
    watching: bool,
    /// How long a reply may wait for room before it is queued ([`WRITE_WAIT`]).
    write_wait: Duration,
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

impl Inner {
    /// Takes `sock` as the connection's twin socket (the fd the server sent with its VERSION
    /// reply) and returns the subscriber that serves it; it must run in the same event loop
    /// as the main subscriber (see [`ConnectionSubscriber`](super::ConnectionSubscriber)).
    ///
    /// The socket is shut down when the connection ends.
    pub(super) fn attach_twin_socket(
        self: &Arc<Self>,
        sock: UnixStream,
    ) -> Result<TwinSubscriber, Error> {
        // getsockname fails with ENOTSOCK on anything but a socket.
        sock.local_addr()
            .map_err(io_err("checking the twin socket fd"))?;
        sock.set_nonblocking(true)
            .map_err(io_err("setting the twin socket non-blocking"))?;
        // Server requests now come on the twin socket: data on the main socket need not
        // wake the event loop, so callers need not take the socket out of its view.
        self.watch
            .watch_hang_up_only()
            .map_err(io_err("watching the main socket for hang-ups only"))?;
        let sock = Arc::new(sock);
        let on_end = Arc::clone(&sock);
        self.on_disconnect(move |_| {
            let _ = on_end.shutdown(std::net::Shutdown::Both);
        });
        let settings = &self.settings;
        Ok(TwinSubscriber {
            inner: Arc::clone(self),
            receiver: Framer::new(settings.max_recv_size, settings.max_recv_fds),
            sock,
            out: VecDeque::new(),
            out_bytes: 0,
            out_armed: false,
            watching: false,
            write_wait: WRITE_WAIT,
        })
    }
}

impl TwinSubscriber {
    /// The twin socket's fd, to tell its events apart.
    pub(super) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

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

    /// Reads and answers requests until what was read is used up (the socket is
    /// level-triggered: more data means another event, and stopping here saves the read that
    /// would only say `EAGAIN`).
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
                    if !self.receiver.holds_data() {
                        return Ok(());
                    }
                }
                Some(Incoming::Discarded { header, why }) => {
                    log::warn!("dropped message {header} on the twin socket: {why}");
                    if header.message_type() == Some(MessageType::Command) && !header.no_reply() {
                        let errno = if header.size > self.inner.settings.max_recv_size {
                            libc::E2BIG
                        } else {
                            libc::EINVAL
                        };
                        let reply = Header::error_reply(&header, errno as u32);
                        self.queue(outgoing(&reply, Vec::new(), None))?;
                    }
                    if !self.receiver.holds_data() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Sends a reply at once if nothing waits before it, queues what does not fit.
    fn queue(&mut self, mut out: Outgoing) -> Result<(), DisconnectReason> {
        if self.out.is_empty() {
            let deadline = Instant::now() + self.write_wait;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::UnbufferedReply;
    use crate::protocol::Command;
    use std::io::Write;

    fn msg(id: u16, payload: &[u8]) -> Vec<u8> {
        let h = Header::command(id, Command::DmaRead, payload.len(), false).unwrap();
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn next(f: &mut Framer, sock: &UnixStream) -> Option<(u16, Vec<u8>)> {
        match f.step(sock).unwrap() {
            Some(Incoming::Message(m)) => Some((m.header.id, m.payload)),
            Some(Incoming::Discarded { header, .. }) => Some((header.id | 0x8000, Vec::new())),
            None => None,
        }
    }

    #[test]
    fn small_messages_arrive_whole_or_byte_by_byte() {
        let (mut a, b) = pair();
        let mut f = Framer::new(1 << 20, 4);
        let mut all = msg(1, &[1; 16]);
        all.extend(msg(2, &[]));
        all.extend(msg(3, &[3; 100]));
        a.write_all(&all).unwrap();
        assert_eq!(next(&mut f, &b), Some((1, vec![1; 16])));
        assert!(f.holds_data());
        assert_eq!(next(&mut f, &b), Some((2, vec![])));
        assert_eq!(next(&mut f, &b), Some((3, vec![3; 100])));
        assert!(!f.holds_data());
        assert_eq!(next(&mut f, &b), None);
        for byte in msg(4, &[4; 5]) {
            assert_eq!(next(&mut f, &b), None);
            a.write_all(&[byte]).unwrap();
        }
        assert_eq!(next(&mut f, &b), Some((4, vec![4; 5])));
    }

    #[test]
    fn large_messages_are_read_in_place_and_oversized_ones_drained() {
        let (mut a, b) = pair();
        let mut f = Framer::new(256 << 10, 4);
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let huge = vec![9u8; 300 << 10];
        let writer = std::thread::spawn(move || {
            a.write_all(&msg(1, &big)).unwrap();
            a.write_all(&msg(2, &huge)).unwrap();
            a.write_all(&msg(3, &[3])).unwrap();
            a
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            crate::connection::socket::poll_fd(b.as_raw_fd(), false, -1).unwrap();
            while let Some(m) = next(&mut f, &b) {
                got.push(m);
            }
        }
        let _a = writer.join().unwrap();
        let expected: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        assert_eq!(got[0], (1, expected));
        assert_eq!(got[1], (2 | 0x8000, vec![]));
        assert_eq!(got[2], (3, vec![3]));
    }

    #[test]
    fn fds_with_the_rest_of_a_large_message_stay_with_it() {
        let (a, b) = pair();
        let mut f = Framer::new(1 << 20, 2);
        let whole = msg(1, &[7u8; 100 << 10]);
        // The header and a first part, then the rest with two fds, then too many fds.
        socket::send_with_fds(&a, &[&whole[..1000]], &[]).unwrap();
        assert!(next(&mut f, &b).is_none());
        let e1 = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let e2 = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let fds = [e1.as_raw_fd(), e2.as_raw_fd()];
        // 99 KiB fit the socket's buffer: one blocking send.
        let n = socket::send_with_fds(&a, &[&whole[1000..]], &fds).unwrap();
        assert_eq!(n, whole.len() - 1000);
        let m = loop {
            socket::poll_fd(b.as_raw_fd(), false, -1).unwrap();
            if let Some(Incoming::Message(m)) = f.step(&b).unwrap() {
                break m;
            }
        };
        assert_eq!(m.payload, vec![7u8; 100 << 10]);
        assert_eq!(m.fds.len(), 2);
        let many = [e1.as_raw_fd(), e2.as_raw_fd(), e1.as_raw_fd()];
        socket::send_with_fds(&a, &[&whole[..1000]], &[]).unwrap();
        assert!(next(&mut f, &b).is_none());
        socket::send_with_fds(&a, &[&whole[1000..2000]], &many).unwrap();
        assert!(f.step(&b).is_err(), "more fds than allowed");
    }

    #[test]
    fn bad_headers_and_eof() {
        let (mut a, b) = pair();
        let mut f = Framer::new(1024, 4);
        let mut bad = msg(1, &[]);
        bad[4..8].copy_from_slice(&8u32.to_ne_bytes());
        a.write_all(&bad).unwrap();
        assert!(matches!(
            f.step(&b),
            Err(DisconnectReason::ProtocolViolation(_))
        ));
        let (mut a, b) = pair();
        let mut f = Framer::new(1024, 4);
        // Undefined type bits: drained, not served.
        let mut odd = msg(5, &[1, 2]);
        odd[8..12].copy_from_slice(&0xeu32.to_ne_bytes());
        a.write_all(&odd).unwrap();
        assert_eq!(next(&mut f, &b), Some((5 | 0x8000, vec![])));
        a.write_all(&msg(6, &[6; 8])[..20]).unwrap();
        drop(a);
        assert_eq!(f.step(&b).unwrap_err(), DisconnectReason::PeerClosed);
    }

    /// Echoes buffered requests, refuses DMA_WRITE, answers DMA_READ with 1 MiB of 7s sent
    /// unbuffered.
    struct TestHandler;

    struct Bulk(Vec<u8>);

    impl ReplyData for Bulk {
        fn len(&self) -> usize {
            self.0.len()
        }

        fn send(&self, sock: &UnixStream, prefix: &[&[u8]], offset: usize) -> io::Result<usize> {
            let mut parts = prefix.to_vec();
            parts.push(self.0.get(offset..).unwrap_or_default());
            socket::send_with_fds(sock, &parts, &[])
        }
    }

    impl crate::connection::ServerRequestHandler for TestHandler {
        fn handle(
            &self,
            header: &Header,
            payload: &[u8],
            _fds: Vec<OwnedFd>,
            reply: &mut Vec<u8>,
        ) -> Result<(), u32> {
            if header.known_command() == Some(Command::DmaWrite) {
                return Err(libc::EPERM as u32);
            }
            reply.extend_from_slice(payload);
            Ok(())
        }

        fn handle_unbuffered(
            &self,
            header: &Header,
            payload: &[u8],
            _fds: &[OwnedFd],
        ) -> Option<Result<UnbufferedReply, u32>> {
            (header.known_command() == Some(Command::DmaRead)).then(|| {
                Ok(UnbufferedReply {
                    head: payload.to_vec(),
                    data: Box::new(Bulk(vec![7; 1 << 20])),
                })
            })
        }
    }

    fn request(command: Command, id: u16, payload: &[u8], flags: u32) -> Vec<u8> {
        let mut h = Header::command(id, command, payload.len(), false).unwrap();
        h.flags |= flags;
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn read_reply(sock: &mut UnixStream) -> (Header, Vec<u8>) {
        use std::io::Read;
        let mut hdr = [0u8; HEADER_SIZE];
        sock.read_exact(&mut hdr).unwrap();
        let h = Header::from_bytes(&hdr);
        let mut body = vec![0u8; h.payload_len()];
        sock.read_exact(&mut body).unwrap();
        (h, body)
    }

    #[test]
    fn requests_are_answered_queued_and_drained() {
        let (main, _server_main) = UnixStream::pair().unwrap();
        let settings = super::super::Settings {
            max_recv_size: 4096,
            ..Default::default()
        };
        let (inner, _sub) = Inner::new(main, settings).unwrap();
        inner.set_request_handler(Some(Arc::new(TestHandler)));
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut twin = inner.attach_twin_socket(ours).unwrap();
        assert!(format!("{twin:?}").contains("TwinSubscriber"));
        twin.write_wait = Duration::ZERO;

        // A reply that does not fit waits in the queue until the server reads.
        theirs
            .write_all(&request(Command::DmaRead, 1, &[1; 16], 0))
            .unwrap();
        assert_eq!(twin.step(EventSet::IN), Ok(false));
        assert_eq!(twin.out.len(), 1);
        let mut reader = theirs.try_clone().unwrap();
        let t = std::thread::spawn(move || read_reply(&mut reader));
        while !twin.step(EventSet::OUT).unwrap() {
            crate::connection::socket::poll_fd(twin.sock.as_raw_fd(), true, -1).unwrap();
        }
        let (h, body) = t.join().unwrap();
        assert_eq!((h.id, h.is_error(), body.len()), (1, false, 16 + (1 << 20)));
        assert!(body[16..].iter().all(|&b| b == 7));
        assert_eq!(twin.out_bytes, 0);

        // A reply (not a request) is dropped; No_reply requests get no answer; other
        // failures get their errno.
        let mut stray = request(Command::DmaRead, 2, &[], 0);
        stray[8] = 1;
        theirs.write_all(&stray).unwrap();
        theirs
            .write_all(&request(
                Command::RegionRead,
                3,
                &[3; 4],
                crate::protocol::FLAGS_NO_REPLY,
            ))
            .unwrap();
        theirs
            .write_all(&request(Command::DmaWrite, 4, &[4; 20], 0))
            .unwrap();
        let mut unknown = request(Command::DmaRead, 5, &[], 0);
        unknown[2..4].copy_from_slice(&99u16.to_ne_bytes());
        theirs.write_all(&unknown).unwrap();
        theirs
            .write_all(&request(Command::RegionWrite, 6, &vec![6; 8000], 0))
            .unwrap();
        theirs
            .write_all(&request(Command::RegionRead, 7, &[7; 4], 0))
            .unwrap();
        let mut replies = Vec::new();
        while replies.len() < 4 {
            assert!(twin.step(EventSet::IN).unwrap());
            if crate::connection::socket::poll_fd(theirs.as_raw_fd(), false, 0).unwrap() {
                replies.push(read_reply(&mut theirs));
            } else {
                crate::connection::socket::poll_fd(twin.sock.as_raw_fd(), false, -1).unwrap();
            }
        }
        let summary: Vec<(u16, u32)> = replies.iter().map(|(h, _)| (h.id, h.error)).collect();
        assert_eq!(
            summary,
            vec![
                (4, libc::EPERM as u32),
                (5, libc::ENOSYS as u32),
                (6, libc::E2BIG as u32),
                (7, 0)
            ]
        );
        assert_eq!(replies[3].1, vec![7; 4]);

        // The server hanging up ends the connection.
        drop(theirs);
        assert_eq!(twin.step(EventSet::IN), Err(DisconnectReason::PeerClosed));
        let sub = super::super::ConnectionSubscriber::new(_sub, Some(twin));
        assert!(format!("{sub:?}").contains("twin: Some"));
        let reply = UnbufferedReply {
            head: vec![1],
            data: Box::new(Bulk(vec![])),
        };
        assert!(reply.data.is_empty());
        assert!(format!("{reply:?}").contains("data_len: 0"));
    }

    #[test]
    fn eof_in_the_middle_of_a_large_message() {
        let (mut a, b) = pair();
        let mut f = Framer::new(1 << 20, 4);
        a.write_all(&msg(1, &vec![1; 100_000])[..50_000]).unwrap();
        drop(a);
        let mut r = Ok(None);
        for _ in 0..4 {
            r = f.step(&b);
            if r.is_err() {
                break;
            }
        }
        assert_eq!(r.unwrap_err(), DisconnectReason::PeerClosed);
        let (mut a, b) = pair();
        let mut f = Framer::new(20_000, 4);
        a.write_all(&msg(1, &vec![1; 100_000])[..50_000]).unwrap();
        drop(a);
        let mut r = Ok(None);
        for _ in 0..4 {
            r = f.step(&b);
            if r.is_err() {
                break;
            }
        }
        assert_eq!(r.unwrap_err(), DisconnectReason::PeerClosed);
    }

    proptest::proptest! {
        /// Whatever the sizes and however the stream is cut into writes, the framer yields
        /// the messages sent, in order, and drains the oversized ones.
        #[test]
        fn framing_survives_any_split(
            sizes in proptest::collection::vec(0usize..40_000, 1..8),
            cuts in proptest::collection::vec(1usize..50_000, 1..20),
        ) {
            let max = 32 << 10;
            let (mut a, b) = pair();
            let mut stream = Vec::new();
            for (i, &n) in sizes.iter().enumerate() {
                stream.extend(msg(i as u16, &vec![i as u8; n]));
            }
            let writer = std::thread::spawn(move || {
                let mut at = 0;
                for c in cuts.iter().cycle() {
                    if at >= stream.len() {
                        break;
                    }
                    let end = (at + c).min(stream.len());
                    a.write_all(&stream[at..end]).unwrap();
                    at = end;
                }
                a
            });
            let mut f = Framer::new(max as u32, 4);
            let mut got = Vec::new();
            while got.len() < sizes.len() {
                crate::connection::socket::poll_fd(b.as_raw_fd(), false, -1).unwrap();
                while let Some(m) = next(&mut f, &b) {
                    got.push(m);
                }
            }
            let _a = writer.join().unwrap();
            for (i, &n) in sizes.iter().enumerate() {
                let id = i as u16;
                if HEADER_SIZE + n > max {
                    proptest::prop_assert_eq!(&got[i], &(id | 0x8000, vec![]));
                } else {
                    proptest::prop_assert_eq!(&got[i], &(id, vec![i as u8; n]));
                }
            }
        }
    }
}
