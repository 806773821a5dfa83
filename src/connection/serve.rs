// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Serving the server's requests (DMA_READ, DMA_WRITE, ...) through the connection's
//! [`Responder`]: the owner's [`ServerRequestHandler`], or the DMA layer's handler.
//!
//! The handler runs on whichever thread reads the request: a waiting caller, or the event
//! loop. A reply whose bulk data the handler can send straight from its own memory
//! ([`Responder::handle_unbuffered`], the crate's DMA handler) is not copied into a buffer.
//!
//! A handler that panics takes down neither that thread nor the connection: the panic is
//! caught and logged, and the server gets an `EIO` error reply for that request (the
//! client failed to carry it out; `EFAULT` would blame the request's address, which the
//! client cannot claim). Then the next request is served as usual. A panic in
//! [`ReplyData::send`] is different: part of the reply may be on the socket already, so
//! the stream cannot be kept in step and the connection ends (`Io(EIO)`).

use std::any::Any;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use super::framer::Received;
use super::inner::Inner;
use super::send::{Outgoing, MAX_QUEUED_BYTES};
use super::DisconnectReason;
use crate::protocol::Header;
use crate::sync::lock;

/// Serves requests the server sends to the client (DMA_READ, DMA_WRITE, ...).
///
/// Called on whichever thread is reading the socket, so it must not block for long and must
/// not wait for a reply on the same connection.
pub trait ServerRequestHandler: Send + Sync {
    /// Handles one request. On success the reply payload (after the header) is appended to
    /// `reply`; an `Err(errno)` becomes an error reply.
    fn handle(
        &self,
        header: &Header,
        payload: &[u8],
        fds: Vec<OwnedFd>,
        reply: &mut Vec<u8>,
    ) -> Result<(), u32>;
}

/// What the connection asks to answer a server request: an owner's
/// [`ServerRequestHandler`], or the crate's DMA handler, which can also send a reply's bulk
/// data straight from guest memory.
pub(crate) trait Responder: Send + Sync {
    /// See [`ServerRequestHandler::handle`].
    fn handle(
        &self,
        header: &Header,
        payload: &[u8],
        fds: Vec<OwnedFd>,
        reply: &mut Vec<u8>,
    ) -> Result<(), u32>;

    /// Optionally answers a request whose reply carries bulk data without copying that data
    /// into a buffer: returns the reply payload's head and a [`ReplyData`] that sends the
    /// rest straight from the responder's memory ([`UnbufferedReply`]). `None` (the default)
    /// means "use [`handle`](Self::handle)". Used on the twin socket, and on the main socket
    /// when no message is queued before the reply; the data may be sent after the call
    /// returns (a reply that does not fit the socket keeps the [`ReplyData`] until it is
    /// written).
    fn handle_unbuffered(
        &self,
        _header: &Header,
        _payload: &[u8],
        _fds: &[OwnedFd],
    ) -> Option<Result<UnbufferedReply, u32>> {
        None
    }
}

/// An owner's [`ServerRequestHandler`] as the connection's [`Responder`].
pub(crate) struct OwnersHandler(pub(crate) Arc<dyn ServerRequestHandler>);

impl Responder for OwnersHandler {
    fn handle(
        &self,
        header: &Header,
        payload: &[u8],
        fds: Vec<OwnedFd>,
        reply: &mut Vec<u8>,
    ) -> Result<(), u32> {
        self.0.handle(header, payload, fds, reply)
    }
}

/// Bulk reply data sent straight from memory its owner keeps alive, without being copied
/// into a buffer first (see [`Responder::handle_unbuffered`]).
pub(crate) trait ReplyData: Send {
    /// Bytes of data.
    fn len(&self) -> usize;

    /// Sends the bytes of `prefix`, then the data from `offset` on, in one non-blocking write
    /// (`MSG_DONTWAIT`, whatever the socket's mode); returns the bytes written, `prefix`
    /// included.
    fn send(&self, sock: &UnixStream, prefix: &[&[u8]], offset: usize) -> io::Result<usize>;
}

/// A reply whose bulk data is not copied into a buffer: the payload's head, then the data.
pub(crate) struct UnbufferedReply {
    /// The start of the reply payload (for DMA_READ, the 16-byte address/count head).
    pub(crate) head: Vec<u8>,
    /// The rest of the payload.
    pub(crate) data: Box<dyn ReplyData>,
}

impl fmt::Debug for UnbufferedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnbufferedReply")
            .field("head", &self.head)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl Inner {
    /// See [`Connection::set_request_handler`](super::Connection::set_request_handler).
    pub(crate) fn set_request_handler(&self, handler: Option<Arc<dyn Responder>>) {
        *lock(&self.handler) = handler;
    }

    /// Answers a request from the server that came on the main socket.
    pub(super) fn serve_request(&self, msg: Received) {
        let header = msg.header;
        let q = lock(&self.send);
        let (over, queued) = (q.bytes() > MAX_QUEUED_BYTES, !q.is_empty());
        drop(q);
        if over {
            self.fail(DisconnectReason::ProtocolViolation(format!(
                "the server sends requests ({header}) but does not read our replies"
            )));
            return;
        }
        // Bulk data straight from the handler's memory, unless the reply would only join
        // the queue: then it is copied into a buffer, so that the handler's memory is read
        // now rather than when the queue drains.
        let Some(reply) = self.answer(msg, !queued) else {
            return;
        };
        if let Err(e) = self.send_reply(reply) {
            log::warn!("cannot reply to server request {header}: {e}");
        }
    }

    /// The reply to a server request, from the connection's handler (`ENOSYS` without
    /// one); `None` for a `No_reply` request. With `unbuffered`, a handler that can send
    /// the reply's bulk data straight from its own memory does so.
    pub(super) fn answer(&self, msg: Received, unbuffered: bool) -> Option<Outgoing> {
        let header = msg.header;
        let handler = lock(&self.handler).clone();
        let result = match handler.filter(|_| header.known_command().is_some()) {
            Some(h) => handle_guarded(&*h, msg, unbuffered && !header.no_reply()),
            None => Err(libc::ENOSYS as u32),
        };
        if header.no_reply() {
            return None;
        }
        let error = |errno| Outgoing::new(&Header::error_reply(&header, errno), Vec::new(), None);
        Some(match result {
            Ok((body, data)) => {
                let len = body.len() + data.as_ref().map_or(0, |d| d.len());
                match Header::reply(&header, len) {
                    Some(reply) => Outgoing::new(&reply, body, data),
                    None => error(libc::E2BIG as u32),
                }
            }
            Err(errno) => error(errno),
        })
    }

    /// The error reply to a server request that was drained unread (too large, or
    /// malformed), unless it asked for none.
    pub(super) fn refusal(&self, header: &Header) -> Option<Outgoing> {
        if header.no_reply() {
            return None;
        }
        let errno = if header.size > self.settings.max_recv_size {
            libc::E2BIG
        } else {
            libc::EINVAL
        };
        let reply = Header::error_reply(header, errno as u32);
        Some(Outgoing::new(&reply, Vec::new(), None))
    }
}

/// A reply's payload: the buffered part, then any data sent from the handler's memory.
type ReplyPayload = (Vec<u8>, Option<Box<dyn ReplyData>>);

/// [`handle`], with a panic of the handler caught: logged, and answered with `EIO` (see the
/// module documentation).
fn handle_guarded(
    handler: &dyn Responder,
    msg: Received,
    unbuffered: bool,
) -> Result<ReplyPayload, u32> {
    let header = msg.header;
    // `AssertUnwindSafe`: nothing of the connection is borrowed by the call or left
    // half-updated by an unwind out of it (the handler was cloned out of its slot, no lock
    // of ours is held, and `msg` is moved in and dropped). What the handler leaves
    // half-done is its own state, which it must tolerate: the crate's handler only reads its
    // mapping table, under a lock that the crate takes ignoring poisoning (`crate::sync`).
    match panic::catch_unwind(AssertUnwindSafe(|| handle(handler, msg, unbuffered))) {
        Ok(result) => result,
        Err(panic) => {
            log::error!(
                "the server request handler panicked on {header} ({}); answering EIO",
                panic_message(&*panic)
            );
            Err(libc::EIO as u32)
        }
    }
}

/// The message a panic carried, when it is text.
pub(super) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// A reply's payload from `handler`: unbuffered when allowed and offered, buffered
/// otherwise; `Err(errno)` for an error reply.
fn handle(handler: &dyn Responder, msg: Received, unbuffered: bool) -> Result<ReplyPayload, u32> {
    if unbuffered {
        if let Some(result) = handler.handle_unbuffered(&msg.header, &msg.payload, &msg.fds) {
            return result.map(|u| (u.head, Some(u.data)));
        }
    }
    let mut payload = Vec::new();
    handler
        .handle(&msg.header, &msg.payload, msg.fds, &mut payload)
        .map(|()| (payload, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::testing::read_msg;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use crate::connection::send::WRITE_WAIT;
    use crate::connection::{socket, Settings};
    use crate::protocol::{Command, Header};

    /// Answers DMA_READ with `U` and 1 MiB of 7s sent unbuffered, or (buffered) with `B`
    /// and the request's payload; counts which path served.
    #[derive(Default)]
    struct Handler {
        unbuffered: AtomicUsize,
        buffered: AtomicUsize,
    }

    struct Sevens(Vec<u8>);

    impl ReplyData for Sevens {
        fn len(&self) -> usize {
            self.0.len()
        }

        fn send(&self, sock: &UnixStream, prefix: &[&[u8]], offset: usize) -> io::Result<usize> {
            let mut parts = prefix.to_vec();
            parts.push(self.0.get(offset..).unwrap_or_default());
            socket::try_send_with_fds(sock, &parts, &[])
        }
    }

    impl Responder for Handler {
        fn handle(
            &self,
            _header: &Header,
            payload: &[u8],
            _fds: Vec<OwnedFd>,
            reply: &mut Vec<u8>,
        ) -> Result<(), u32> {
            self.buffered.fetch_add(1, Ordering::SeqCst);
            reply.push(b'B');
            reply.extend_from_slice(payload);
            Ok(())
        }

        fn handle_unbuffered(
            &self,
            _header: &Header,
            _payload: &[u8],
            _fds: &[OwnedFd],
        ) -> Option<Result<UnbufferedReply, u32>> {
            self.unbuffered.fetch_add(1, Ordering::SeqCst);
            Some(Ok(UnbufferedReply {
                head: vec![b'U'],
                data: Box::new(Sevens(vec![7; 1 << 20])),
            }))
        }
    }

    fn dma_read(id: u16) -> Received {
        Received {
            header: Header::command(id, Command::DmaRead, 2, false).unwrap(),
            payload: vec![1, 2],
            fds: Vec::new(),
            data_in_buffer: false,
        }
    }

    #[test]
    fn unbuffered_when_nothing_is_queued_buffered_behind_queued_messages() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (inner, _sub) = Inner::new(ours, Settings::default()).unwrap();
        let handler = Arc::new(Handler::default());
        inner.set_request_handler(Some(Arc::clone(&handler) as Arc<dyn Responder>));

        // The queue is empty: 1 MiB goes from the handler's memory while the server reads,
        // within the wait for room, and nothing is queued.
        let reader = std::thread::spawn(move || {
            let got = read_msg(&mut theirs);
            (theirs, got)
        });
        inner.serve_request(dma_read(1));
        assert_eq!(inner.queued_messages(), 0);
        let (mut theirs, (h, body)) = reader.join().unwrap();
        assert_eq!((h.id, h.payload_len()), (1, 1 + (1 << 20)));
        assert_eq!(body.first(), Some(&b'U'));
        assert!(body.get(1..).unwrap().iter().all(|&b| b == 7));
        assert_eq!(handler.unbuffered.load(Ordering::SeqCst), 1);

        // Nobody reads: fill the socket until messages queue, then the reply is buffered and
        // goes behind them.
        let mut posted = 0u8;
        while inner.queued_messages() == 0 {
            inner
                .send_no_reply(Command::RegionWrite, &[posted; 60 << 10], &[])
                .unwrap();
            posted += 1;
        }
        inner.serve_request(dma_read(2));
        assert_eq!(inner.queued_messages(), 2);
        assert_eq!(handler.unbuffered.load(Ordering::SeqCst), 1);
        assert_eq!(handler.buffered.load(Ordering::SeqCst), 1);
        let reader = std::thread::spawn(move || {
            let msgs: Vec<_> = (0..=posted).map(|_| read_msg(&mut theirs)).collect();
            msgs
        });
        while !inner.drain_send_queue().unwrap() {
            socket::poll_fd(inner.sock.as_raw_fd(), true, 1000).unwrap();
        }
        let msgs = reader.join().unwrap();
        for (i, (h, body)) in msgs.iter().take(posted.into()).enumerate() {
            assert_eq!(h.command, Command::RegionWrite as u16);
            assert!(body.iter().all(|&b| b == i as u8));
        }
        let (h, body) = msgs.last().unwrap();
        assert_eq!((h.id, body.as_slice()), (2, &b"B\x01\x02"[..]));
        assert_eq!(inner.queued_messages(), 0);
    }

    /// Panics while the reply data is being sent.
    struct Treacherous;

    impl ReplyData for Treacherous {
        fn len(&self) -> usize {
            8
        }

        fn send(&self, _: &UnixStream, _: &[&[u8]], _: usize) -> io::Result<usize> {
            panic!("treacherous reply data");
        }
    }

    struct HandsOutTreacherousData;

    impl Responder for HandsOutTreacherousData {
        fn handle(
            &self,
            _: &Header,
            _: &[u8],
            _: Vec<OwnedFd>,
            _: &mut Vec<u8>,
        ) -> Result<(), u32> {
            Ok(())
        }

        fn handle_unbuffered(
            &self,
            _: &Header,
            _: &[u8],
            _: &[OwnedFd],
        ) -> Option<Result<UnbufferedReply, u32>> {
            Some(Ok(UnbufferedReply {
                head: Vec::new(),
                data: Box::new(Treacherous),
            }))
        }
    }

    #[test]
    fn reply_data_that_panics_ends_the_connection_not_the_thread() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (inner, _sub) = Inner::new(ours, Settings::default()).unwrap();
        inner.set_request_handler(Some(Arc::new(HandsOutTreacherousData)));
        inner.serve_request(dma_read(1));
        assert_eq!(
            inner.disconnect_reason(),
            Some(DisconnectReason::Io(libc::EIO))
        );
    }

    #[test]
    fn an_unbuffered_reply_left_unread_is_queued_with_its_progress() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (inner, _sub) = Inner::new(ours, Settings::default()).unwrap();
        inner.set_request_handler(Some(Arc::new(Handler::default())));
        let started = Instant::now();
        inner.serve_request(dma_read(3));
        // Waited for room (bounded), then left the rest to the queue.
        assert!(started.elapsed() >= WRITE_WAIT);
        assert!(started.elapsed() < WRITE_WAIT * 50);
        assert_eq!(inner.queued_messages(), 1);
        assert_eq!(lock(&inner.send).bytes(), Header::SIZE + 1 + (1 << 20));
        inner
            .send_no_reply(Command::RegionWrite, b"after", &[])
            .unwrap();
        let reader = std::thread::spawn(move || (read_msg(&mut theirs), read_msg(&mut theirs)));
        while !inner.drain_send_queue().unwrap() {
            socket::poll_fd(inner.sock.as_raw_fd(), true, 1000).unwrap();
        }
        let ((h, body), (next, after)) = reader.join().unwrap();
        assert_eq!(h.id, 3);
        assert_eq!(body.first(), Some(&b'U'));
        assert!(body.get(1..).unwrap().iter().all(|&b| b == 7));
        assert_eq!(
            (next.command, after.as_slice()),
            (Command::RegionWrite as u16, &b"after"[..])
        );
        assert_eq!(lock(&inner.send).bytes(), 0);
    }
}
