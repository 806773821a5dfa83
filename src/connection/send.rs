// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Sending: one message type and one send queue, for requests and for replies to the
//! server's requests, on the main socket and on the twin socket.
//!
//! When the queue is empty the caller's thread writes the message itself with one
//! non-blocking send; on `EAGAIN` or a partial write the rest is queued (fds only ever ride
//! with a message's first byte) and the event loop drains the queue when the socket becomes
//! writable. A reply whose bulk data is sent straight from the handler's memory
//! ([`UnbufferedReply`]) keeps that memory, not a copy, while it waits in the queue.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::inner::{io_err, Inner};
use super::pending::{Completion, PendingReply, NO_REPLY_ID_BIT};
use super::serve::{ReplyData, UnbufferedReply};
use super::{error, socket, DisconnectReason, Error};
use crate::protocol::{Command, Header, HEADER_SIZE};
use crate::sync::lock;

/// How long answering a request may wait for the server to make room for the reply before
/// the rest is left to the event loop (a server that stops reading must not stall the loop).
pub(super) const WRITE_WAIT: Duration = Duration::from_millis(20);

/// Queued bytes past which a server that keeps sending requests without reading our
/// replies is disconnected, instead of growing the queue without limit.
pub(super) const MAX_QUEUED_BYTES: usize = 256 << 20;

/// A message being written: `buf` (header and buffered payload), then any unbuffered reply
/// data, sent straight from its owner's memory.
pub(super) struct Outgoing {
    buf: Vec<u8>,
    data: Option<Box<dyn ReplyData>>,
    sent: usize,
    fds: Vec<OwnedFd>,
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
    fn len(&self) -> usize {
        self.buf.len() + self.data.as_ref().map_or(0, |d| d.len())
    }

    /// Writes what the socket takes without waiting; `Ok(true)` once all of it has gone.
    fn write(&mut self, sock: &UnixStream) -> io::Result<bool> {
        while self.sent < self.len() {
            let rest = self.buf.get(self.sent..).unwrap_or_default();
            let result = match &self.data {
                Some(d) => {
                    let prefix: &[&[u8]] = if rest.is_empty() { &[] } else { &[rest] };
                    d.send(sock, prefix, self.sent.saturating_sub(self.buf.len()))
                }
                None => {
                    let raw: Vec<RawFd> = if self.sent == 0 {
                        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
                    } else {
                        Vec::new()
                    };
                    socket::try_send_with_fds(sock, &[rest], &raw)
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
}

#[derive(Debug, Default)]
pub(super) struct SendQueue {
    pub(super) queue: VecDeque<Outgoing>,
    /// Bytes held by `queue`.
    pub(super) bytes: usize,
}

/// A command header; `check_send` has bounded `len`, so the size always fits.
fn command_header(id: u16, command: Command, len: usize, no_reply: bool) -> Result<Header, Error> {
    Header::command(id, command, len, no_reply).ok_or(Error::MessageTooLarge {
        command,
        len,
        limit: u32::MAX as usize - HEADER_SIZE,
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
        let completion = Arc::new(Completion::new(command));
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

    fn check_send(&self, command: Command, len: usize, nfds: usize) -> Result<(), Error> {
        if !self.connected.load(Ordering::Acquire) {
            return Err(Error::Disconnected(self.reason()));
        }
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
            .min(u32::MAX as usize - HEADER_SIZE);
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
        let hdr = header.to_bytes();
        log::debug!("send {header} fds={}", fds.len());
        let q = lock(&self.send);
        if !self.connected.load(Ordering::Acquire) {
            return Err(Error::Disconnected(self.reason()));
        }
        let mut sent = 0;
        if q.queue.is_empty() {
            match socket::try_send_with_fds(&self.sock, &[&hdr, payload], fds) {
                Ok(n) if n == HEADER_SIZE + payload.len() => return Ok(()),
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
        let mut buf = Vec::with_capacity(HEADER_SIZE + payload.len());
        buf.extend_from_slice(&hdr);
        buf.extend_from_slice(payload);
        self.enqueue(
            q,
            Outgoing {
                buf,
                data: None,
                sent,
                fds,
            },
        );
        Ok(())
    }

    /// Appends a message to the send queue and has the subscriber drain it.
    fn enqueue(&self, mut q: MutexGuard<'_, SendQueue>, out: Outgoing) {
        let was_empty = q.queue.is_empty();
        q.bytes += out.len();
        q.queue.push_back(out);
        drop(q);
        if was_empty {
            // The subscriber arms EPOLLOUT and drains; a failed kick can only mean the
            // counter is saturated, in which case a kick is pending anyway.
            let _ = self.kick.write(1);
        }
    }

    /// Sends a reply whose bulk data goes straight from the handler's memory
    /// ([`UnbufferedReply`]). When the queue is empty it is written at once, waiting up to
    /// [`WRITE_WAIT`] for room as a blocking write would (the server reads the reply to the
    /// request it just sent), with the send lock held so that nothing interleaves with it;
    /// whatever is left after that, or the whole reply when messages are queued before it,
    /// is queued with its progress, without a copy.
    pub(super) fn send_unbuffered(
        &self,
        header: &Header,
        reply: UnbufferedReply,
    ) -> Result<(), Error> {
        log::debug!("send {header} (unbuffered)");
        let mut buf = Vec::with_capacity(HEADER_SIZE + reply.head.len());
        buf.extend_from_slice(&header.to_bytes());
        buf.extend_from_slice(&reply.head);
        let mut out = Outgoing {
            buf,
            data: Some(reply.data),
            sent: 0,
            fds: Vec::new(),
        };
        let q = lock(&self.send);
        if !self.connected.load(Ordering::Acquire) {
            return Err(Error::Disconnected(self.reason()));
        }
        if q.queue.is_empty() {
            let deadline = Instant::now() + WRITE_WAIT;
            loop {
                let step = match out.write(&self.sock) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                        socket::poll_fd(self.sock.as_raw_fd(), true, ms)
                    }
                    Err(e) => Err(e),
                };
                match step {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        drop(q);
                        let reason = error::io_reason(&e);
                        self.fail(reason.clone());
                        return Err(Error::Disconnected(reason));
                    }
                }
            }
        }
        self.enqueue(q, out);
        Ok(())
    }

    /// Writes queued messages until the queue is empty (`Ok(true)`) or the socket is full.
    pub(super) fn drain_send_queue(&self) -> Result<bool, DisconnectReason> {
        let mut q = lock(&self.send);
        while let Some(out) = q.queue.front_mut() {
            match out.write(&self.sock) {
                Ok(true) => {
                    let len = out.len();
                    q.queue.pop_front();
                    q.bytes = q.bytes.saturating_sub(len);
                }
                Ok(false) => return Ok(false),
                Err(e) => return Err(error::io_reason(&e)),
            }
        }
        Ok(true)
    }
}
