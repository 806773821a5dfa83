// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The state behind a [`Connection`](super::Connection), shared with its subscriber and
//! with the layers' handles ([`Handle`](super::Handle)): how it is set up, and how it ends.
//! Either end may end it: a local shutdown, or the first socket error, hang-up or protocol
//! violation any reader or writer meets. Every waiter then fails at once, later requests
//! fail fast, and the owner is told (callbacks and an eventfd). Short of that, a server
//! that leaves a request unanswered makes the connection unresponsive (see `health.rs`).

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::framer::{Framer, MAIN_READ_SIZE};
use super::health::Overdue;
use super::pending::{Completion, PendingTable};
use super::send::SendQueue;
use super::serve::Responder;
use super::solo::NO_SOLO;
use super::subscriber::MainSubscriber;
use super::wait::BLOCKING_READ_SLICE;
use super::watch::SocketWatch;
use super::{DisconnectReason, Error, Settings};
use crate::sync::lock;

type DisconnectCallback = Box<dyn Fn(&DisconnectReason) + Send + Sync>;

/// See [`Handle`](super::Handle).
pub(crate) struct Inner {
    pub(super) sock: UnixStream,
    pub(super) settings: Settings,
    /// Ids of requests that get a reply: `0..NO_REPLY_ID_BIT`, skipping ids still waiting.
    pub(super) next_id: AtomicU16,
    /// Ids of `No_reply` messages: `NO_REPLY_ID_BIT..`. Kept apart so that a server which
    /// replies to them anyway can never complete a waiter with such a reply.
    pub(super) next_no_reply_id: AtomicU16,
    pub(super) send: Mutex<SendQueue>,
    pub(super) recv: Mutex<Framer>,
    /// Whether the subscriber is told about incoming data (only while no caller waits).
    pub(super) watch: SocketWatch,
    /// Bumped whenever a reader lets go of the receive lock.
    pub(super) reader_epoch: AtomicU64,
    /// Waiters asleep on their condvars (who must be woken when a reader lets go).
    pub(super) sleepers: AtomicUsize,
    pub(super) waiters: Mutex<PendingTable>,
    /// The id of the request a caller makes outside the pending table (`solo.rs`), or
    /// `NO_SOLO`; set and read under the table's lock.
    pub(super) solo_id: AtomicU32,
    /// A solo request's reader is in a read that takes no fds (`solo.rs`): meanwhile no
    /// request whose reply may carry fds enters the table. Set under the table's lock.
    pub(super) plain_read: AtomicBool,
    /// Requests waiting on `plain_done` for a plain read to end.
    pub(super) plain_waiters: AtomicUsize,
    /// Signalled (under the table's lock) when a plain read that has waiters ends.
    pub(super) plain_done: Condvar,
    pub(super) connected: AtomicBool,
    reason: Mutex<Option<DisconnectReason>>,
    /// `false` while a request is overdue (the fast path's view of `overdue`).
    pub(super) responsive: AtomicBool,
    /// The request whose late reply the connection waits for, while unresponsive.
    pub(super) overdue: Mutex<Option<Overdue>>,
    /// Signalled on every change of health (unresponsive, healthy again, lost).
    pub(super) health_event: EventFd,
    /// Kicks the subscriber (queue to drain, disconnect to process).
    pub(super) kick: EventFd,
    /// Signalled once when the connection ends, for owners that poll.
    pub(super) disconnect_event: EventFd,
    pub(super) handler: Mutex<Option<Arc<dyn Responder>>>,
    /// The DMA layer's state for this connection (its one table of windows, shared by every
    /// mapper), kept here untyped because the connection sits below the DMA layer.
    pub(crate) dma_space: Mutex<Option<Arc<dyn std::any::Any + Send + Sync>>>,
    on_disconnect: Mutex<Vec<DisconnectCallback>>,
    /// fd limit for messages we send (the server's `max_msg_fds`).
    pub(super) max_send_fds: AtomicUsize,
    /// Payload limit for messages we send.
    pub(super) max_send_size: AtomicUsize,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.sock.as_raw_fd())
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

pub(super) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

impl Inner {
    /// Takes over a connected stream, before the handshake: one fd per message (the
    /// protocol's default) and no size limit apply to what we send until
    /// [`set_send_limits`](Self::set_send_limits). Returns the subscriber that must run in
    /// an event loop.
    pub(super) fn new(
        sock: UnixStream,
        settings: Settings,
    ) -> Result<(Arc<Inner>, MainSubscriber), Error> {
        // Blocking, so that a waiting caller can sleep in `recvmsg` (bounded by the receive
        // timeout); every other read and every write says MSG_DONTWAIT.
        sock.set_nonblocking(false)
            .map_err(io_err("setting the socket blocking"))?;
        sock.set_read_timeout(Some(BLOCKING_READ_SLICE))
            .map_err(io_err("setting the socket's receive timeout"))?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating the kick eventfd"))?;
        let disconnect_event =
            EventFd::new(EFD_NONBLOCK).map_err(io_err("creating the disconnect eventfd"))?;
        let health_event =
            EventFd::new(EFD_NONBLOCK).map_err(io_err("creating the health eventfd"))?;
        let watch = SocketWatch::new(&sock).map_err(io_err("creating the socket's epoll set"))?;
        let inner = Arc::new(Inner {
            recv: Mutex::new(Framer::new(
                MAIN_READ_SIZE,
                settings.max_recv_size,
                settings.max_recv_fds,
            )),
            watch,
            sock,
            settings,
            next_id: AtomicU16::new(0),
            next_no_reply_id: AtomicU16::new(0),
            send: Mutex::new(SendQueue::default()),
            reader_epoch: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            waiters: Mutex::new(PendingTable::default()),
            solo_id: AtomicU32::new(NO_SOLO),
            plain_read: AtomicBool::new(false),
            plain_waiters: AtomicUsize::new(0),
            plain_done: Condvar::new(),
            connected: AtomicBool::new(true),
            reason: Mutex::new(None),
            responsive: AtomicBool::new(true),
            overdue: Mutex::new(None),
            health_event,
            kick,
            disconnect_event,
            handler: Mutex::new(None),
            dma_space: Mutex::new(None),
            on_disconnect: Mutex::new(Vec::new()),
            max_send_fds: AtomicUsize::new(1),
            max_send_size: AtomicUsize::new(usize::MAX),
        });
        let subscriber = MainSubscriber::new(Arc::clone(&inner));
        Ok((inner, subscriber))
    }

    /// Sets the limits the server negotiated for what we send: fds per message and message
    /// payload bytes.
    pub(super) fn set_send_limits(&self, max_fds: usize, max_payload: usize) {
        self.max_send_fds.store(max_fds, Ordering::Relaxed);
        self.max_send_size.store(max_payload, Ordering::Relaxed);
    }

    /// See [`Connection::on_disconnect`](super::Connection::on_disconnect).
    pub(crate) fn on_disconnect(
        &self,
        callback: impl Fn(&DisconnectReason) + Send + Sync + 'static,
    ) {
        let mut callbacks = lock(&self.on_disconnect);
        if let Some(reason) = self.disconnect_reason() {
            drop(callbacks);
            callback(&reason);
            return;
        }
        callbacks.push(Box::new(callback));
    }

    /// See [`Connection::is_connected`](super::Connection::is_connected).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// See [`Connection::disconnect_reason`](super::Connection::disconnect_reason).
    pub(crate) fn disconnect_reason(&self) -> Option<DisconnectReason> {
        lock(&self.reason).clone()
    }

    pub(super) fn reason(&self) -> DisconnectReason {
        lock(&self.reason)
            .clone()
            .unwrap_or(DisconnectReason::Shutdown)
    }

    /// Ends the connection: every waiter fails with `Disconnected`, later requests fail fast,
    /// the owner is told.
    pub(super) fn fail(&self, reason: DisconnectReason) {
        if !self.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        if reason == DisconnectReason::Shutdown {
            log::debug!("vfio-user connection closed");
        } else {
            log::warn!("vfio-user connection lost: {reason}");
        }
        *lock(&self.reason) = Some(reason.clone());
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        lock(&self.send).clear();
        let waiters: Vec<Arc<Completion>> = lock(&self.waiters).drain().map(|(_, c)| c).collect();
        for c in waiters {
            c.complete(Err(Error::Disconnected(reason.clone())));
        }
        let _ = self.disconnect_event.write(1);
        let _ = self.health_event.write(1);
        let _ = self.kick.write(1);
        let callbacks = std::mem::take(&mut *lock(&self.on_disconnect));
        for cb in callbacks {
            cb(&reason);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}
