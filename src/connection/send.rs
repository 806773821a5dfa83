// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Sending: one message type and one send queue, for requests and for replies to the
//! server's requests, on the main socket and on the twin socket.
//!
//! When the queue is empty the caller's thread writes the message itself with one
//! non-blocking send; on `EAGAIN` or a partial write the rest is queued (fds only ever ride
//! with a message's first byte) and the event loop drains the queue when the socket becomes
//! writable. A reply whose bulk data is sent straight from the handler's memory
//! ([`UnbufferedReply`](super::UnbufferedReply)) keeps that memory, not a copy, while it waits in the queue.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use super::inner::{io_err, Inner};
use super::pending::{PendingReply, NO_REPLY_ID_BIT};
use super::serve::{panic_message, ReplyData};
use super::{error, reuse, socket, DisconnectReason, Error};
use crate::protocol::{Command, Header};
use crate::sync::lock;

/// How long answering a request may wait for the server to make room for the reply before
/// the rest is left to the event loop (a server that stops reading must not stall the loop).
pub(super) const WRITE_WAIT: Duration = Duration::from_millis(20);

/// Queued bytes past which a server that keeps sending requests without reading our
/// replies is disconnected, instead of growing the queue without limit.
pub(super) const MAX_QUEUED_BYTES: usize = 256 << 20;

/// A message being written, on either socket: the header, the buffered payload (`body`),
/// then any unbuffered reply data, sent straight from its owner's memory. fds ride with the
/// first byte.
pub(super) struct Outgoing {
    pub(super) head: [u8; Header::SIZE],
    pub(super) body: Vec<u8>,
    data: Option<Box<dyn ReplyData>>,
    fds: Vec<OwnedFd>,
    /// Bytes already written.
    pub(super) sent: usize,
    /// Entries of a REGION_WRITE_MULTI built by coalescing posted writes (`multi.rs`); 0
    /// for every other message.
    pub(super) multi: usize,
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("len", &self.len())
            .field("sent", &self.sent)
            .field("fds", &self.fds.len())
            .finish()
    }
}

impl Outgoing {
    /// A message of `header` and `body`, then `data` if any, nothing of it written yet.
    pub(super) fn new(header: &Header, body: Vec<u8>, data: Option<Box<dyn ReplyData>>) -> Self {
        Outgoing {
            head: header.to_bytes(),
            body,
            data,
            fds: Vec::new(),
            sent: 0,
            multi: 0,
        }
    }

    /// The message's header (for logs).
    pub(super) fn header(&self) -> Header {
        Header::from_bytes(&self.head)
    }

    fn len(&self) -> usize {
        Header::SIZE + self.body.len() + self.data.as_ref().map_or(0, |d| d.len())
    }

    /// Writes what the socket takes without waiting; `Ok(true)` once all of it has gone.
    fn write(&mut self, sock: &UnixStream) -> io::Result<bool> {
        while self.sent < self.len() {
            // What is left of the header and of the body, without empty pieces.
            let head = self.head.get(self.sent..).unwrap_or_default();
            let body_sent = self.sent.saturating_sub(Header::SIZE);
            let body = self.body.get(body_sent..).unwrap_or_default();
            let mut parts: [&[u8]; 2] = [&[], &[]];
            let mut count = 0;
            for part in [head, body] {
                if let Some(slot) = parts.get_mut(count).filter(|_| !part.is_empty()) {
                    *slot = part;
                    count += 1;
                }
            }
            let parts = parts.get(..count).unwrap_or_default();
            let result = match &self.data {
                Some(d) => send_data(&**d, sock, parts, body_sent.saturating_sub(self.body.len())),
                None => {
                    let raw: Vec<RawFd> = if self.sent == 0 {
                        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
                    } else {
                        Vec::new()
                    };
                    socket::try_send_with_fds(sock, parts, &raw)
                }
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.fds.clear();
                    self.sent += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Like [`write`](Self::write), but waits up to `wait` for room, as a blocking write
    /// would.
    fn write_within(&mut self, sock: &UnixStream, wait: Duration) -> io::Result<bool> {
        if wait.is_zero() {
            return self.write(sock);
        }
        let deadline = Instant::now() + wait;
        loop {
            if self.write(sock)? {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            if !socket::poll_fd(sock.as_raw_fd(), true, ms)? {
                return Ok(false);
            }
        }
    }
}

/// [`ReplyData::send`], with a panic turned into an error that ends the connection: part of
/// the reply may be on the socket already, so it cannot be replaced by an error reply.
fn send_data(
    data: &dyn ReplyData,
    sock: &UnixStream,
    prefix: &[&[u8]],
    offset: usize,
) -> io::Result<usize> {
    // `AssertUnwindSafe`: the call borrows only the socket and the bytes to send, and the
    // half-sent message it belongs to is dropped with its send queue when this error ends
    // the connection.
    panic::catch_unwind(AssertUnwindSafe(|| data.send(sock, prefix, offset))).unwrap_or_else(
        |panic| {
            let what = panic_message(&*panic);
            log::error!("sending reply data panicked ({what}): ending the connection");
            Err(io::Error::from_raw_os_error(libc::EIO))
        },
    )
}

/// Messages waiting for room on a socket, in order, with what they hold in total.
#[derive(Debug, Default)]
pub(super) struct SendQueue {
    queue: VecDeque<Outgoing>,
    /// Bytes held by `queue`.
    bytes: usize,
}

impl SendQueue {
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Messages queued.
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Bytes queued.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The last message queued.
    pub(super) fn back_mut(&mut self) -> Option<&mut Outgoing> {
        self.queue.back_mut()
    }

    /// Counts `n` more bytes, added to a queued message.
    pub(super) fn add_bytes(&mut self, n: usize) {
        self.bytes += n;
    }

    pub(super) fn push(&mut self, out: Outgoing) {
        self.bytes += out.len();
        self.queue.push_back(out);
    }

    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    /// Writes queued messages until the queue is empty (`Ok(true)`) or the socket is full.
    pub(super) fn drain(&mut self, sock: &UnixStream) -> io::Result<bool> {
        while let Some(out) = self.queue.front_mut() {
            if !out.write(sock)? {
                return Ok(false);
            }
            let len = out.len();
            self.queue.pop_front();
            self.bytes = self.bytes.saturating_sub(len);
        }
        Ok(true)
    }

    /// Sends `out` at once if nothing waits before it, waiting up to `wait` for room;
    /// queues what does not fit, with its progress. `Ok(true)` once all of it has gone,
    /// `Ok(false)` if it was queued.
    pub(super) fn send(
        &mut self,
        sock: &UnixStream,
        mut out: Outgoing,
        wait: Duration,
    ) -> io::Result<bool> {
        if self.is_empty() && out.write_within(sock, wait)? {
            return Ok(true);
        }
        self.push(out);
        Ok(false)
    }
}

/// A command header; `check_send` has bounded `len`, so the size always fits.
pub(super) fn command_header(
    id: u16,
    command: Command,
    len: usize,
    no_reply: bool,
) -> Result<Header, Error> {
    Header::command(id, command, len, no_reply).ok_or(Error::MessageTooLarge {
        command,
        len,
        limit: u32::MAX as usize - Header::SIZE,
    })
}

impl Inner {
    /// See [`Connection::send_request`](super::Connection::send_request).
    pub(crate) fn send_request(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<PendingReply, Error> {
        let started = Instant::now();
        self.check_send(command, payload.len(), fds.len())?;
        let completion = reuse::completion(command);
        let id = self.register(&completion)?;
        let header = command_header(id, command, payload.len(), false)?;
        if let Err(e) = self.send(&header, payload, fds) {
            lock(&self.waiters).remove(&id);
            return Err(e);
        }
        Ok(PendingReply {
            id,
            started,
            completion,
        })
    }

    /// See [`Connection::send_no_reply`](super::Connection::send_no_reply).
    pub(crate) fn send_no_reply(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(), Error> {
        self.check_send(command, payload.len(), fds.len())?;
        let id = self.next_no_reply_id.fetch_add(1, Ordering::Relaxed) | NO_REPLY_ID_BIT;
        let header = command_header(id, command, payload.len(), true)?;
        self.send(&header, payload, fds)
    }

    /// See [`Connection::queued_messages`](super::Connection::queued_messages).
    pub(crate) fn queued_messages(&self) -> usize {
        lock(&self.send).queue.len()
    }

    pub(super) fn check_send(
        &self,
        command: Command,
        len: usize,
        nfds: usize,
    ) -> Result<(), Error> {
        if !self.connected.load(Ordering::Acquire) {
            return Err(Error::Disconnected(self.reason()));
        }
        self.check_responsive(command)?;
        let limit = self.max_send_fds.load(Ordering::Relaxed);
        if nfds > limit {
            return Err(Error::TooManyFds {
                command,
                count: nfds,
                limit,
            });
        }
        let max = self
            .max_send_size
            .load(Ordering::Relaxed)
            .min(u32::MAX as usize - Header::SIZE);
        if len > max {
            return Err(Error::MessageTooLarge {
                command,
                len,
                limit: max,
            });
        }
        Ok(())
    }

    /// Sends one message: inline when the queue is empty, queued otherwise.
    pub(super) fn send(&self, header: &Header, payload: &[u8], fds: &[RawFd]) -> Result<(), Error> {
        self.send_locked(lock(&self.send), header, payload, fds)
    }

    /// [`send`](Self::send) with the send lock already held (`q`), so that a posted write
    /// can decide whether to coalesce and send under one lock (`multi.rs`).
    pub(super) fn send_locked(
        &self,
        q: MutexGuard<'_, SendQueue>,
        header: &Header,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(), Error> {
        let hdr = header.to_bytes();
        log::debug!("send {header} fds={}", fds.len());
        if !self.connected.load(Ordering::Acquire) {
            return Err(Error::Disconnected(self.reason()));
        }
        let mut sent = 0;
        if q.queue.is_empty() {
            match socket::try_send_with_fds(&self.sock, &[&hdr, payload], fds) {
                Ok(n) if n == Header::SIZE + payload.len() => return Ok(()),
                Ok(n) => sent = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    drop(q);
                    let reason = error::io_reason(&e);
                    self.fail(reason.clone());
                    return Err(Error::Disconnected(reason));
                }
            }
        }
        let fds = if sent > 0 {
            Vec::new()
        } else {
            socket::dup_fds(fds).map_err(io_err("duplicating fds to queue a message"))?
        };
        let out = Outgoing {
            head: hdr,
            body: payload.to_vec(),
            data: None,
            fds,
            sent,
            multi: 0,
        };
        self.enqueue(q, out);
        Ok(())
    }

    /// Appends a message to the send queue and has the subscriber drain it.
    fn enqueue(&self, mut q: MutexGuard<'_, SendQueue>, out: Outgoing) {
        let was_empty = q.is_empty();
        q.push(out);
        drop(q);
        if was_empty {
            // The subscriber arms EPOLLOUT and drains; a failed kick can only mean the
            // counter is saturated, in which case a kick is pending anyway.
            let _ = self.kick.write(1);
        }
    }

    /// Sends a reply to a server request. When the queue is empty it is written at once,
    /// with the send lock held so that nothing interleaves with it; a reply whose bulk data
    /// goes straight from the handler's memory ([`UnbufferedReply`](super::UnbufferedReply)) waits up to
    /// [`WRITE_WAIT`] for room as a blocking write would (the server reads the reply to the
    /// request it just sent). Whatever is left after that, or the whole reply when messages
    /// are queued before it, is queued with its progress, without a copy.
    pub(super) fn send_reply(&self, out: Outgoing) -> Result<(), Error> {
        log::debug!(
            "send {}{}",
            out.header(),
            if out.data.is_some() {
                " (unbuffered)"
            } else {
                ""
            }
        );
        let wait = if out.data.is_some() {
            WRITE_WAIT
        } else {
            Duration::ZERO
        };
        let mut q = lock(&self.send);
        if !self.connected.load(Ordering::Acquire) {
            return Err(Error::Disconnected(self.reason()));
        }
        match q.send(&self.sock, out, wait) {
            Ok(true) => Ok(()),
            Ok(false) => {
                // Queued behind nothing: the subscriber must drain it.
                if q.len() == 1 {
                    drop(q);
                    let _ = self.kick.write(1);
                }
                Ok(())
            }
            Err(e) => {
                drop(q);
                let reason = error::io_reason(&e);
                self.fail(reason.clone());
                Err(Error::Disconnected(reason))
            }
        }
    }

    /// Writes queued messages until the queue is empty (`Ok(true)`) or the socket is full.
    pub(super) fn drain_send_queue(&self) -> Result<bool, DisconnectReason> {
        lock(&self.send)
            .drain(&self.sock)
            .map_err(|e| error::io_reason(&e))
    }
}
