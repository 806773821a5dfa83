// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The connection ("proxy", QEMU's name): socket I/O with fd passing, the send queue, the
//! receive state machine, the pending-reply table and the event-manager subscriber.
//!
//! # Sending
//!
//! Three kinds of message, as in QEMU's client: WAIT ([`Proxy::request`]: the caller waits
//! for the reply, with a deadline), NOWAIT ([`Proxy::send_nowait`] then [`Proxy::wait`] or
//! [`Proxy::wait_all`]) and ASYNC ([`Proxy::post`]: `No_reply` commands, and replies to
//! server requests). When the send queue is empty the caller's thread writes the message
//! itself with one non-blocking send; on `EAGAIN` or a partial write the rest is queued
//! (fds only ever ride with a message's first byte) and the [`ProxySubscriber`] is kicked to
//! drain the queue when the socket becomes writable.
//!
//! # Receiving
//!
//! Whoever holds the receive lock reads: a caller waiting for its reply takes the lock when
//! nobody else reads and reads its own reply (no thread hop); replies for other waiters are
//! handed to them, server requests are answered through the [`ServerRequestHandler`]. The
//! subscriber reads only when no caller waits (server requests while idle): the socket sits
//! in a private epoll set that the subscriber watches, and callers take it out of the
//! subscriber's view while they wait (see `watch.rs`), so a reply wakes only its waiter.
//! A caller waiting with [`Proxy::wait_into`] may have its reply's data read straight into
//! its own buffer while it reads (see `recv.rs`).

mod error;
mod multi;
mod recv;
mod reuse;
pub mod socket;
mod subscriber;
mod twin;
mod watch;

pub use error::{DisconnectReason, Error};
pub(crate) use reuse::recycle_reply;
pub use subscriber::{EventLoop, ProxySubscriber};
use twin::WRITE_WAIT;
pub use twin::{ConnectionSubscriber, ReplyData, TwinSubscriber, UnbufferedReply};

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::protocol::{Command, Header, MessageType, HEADER_SIZE};
use crate::sync::{lock, try_lock};
use recv::{Incoming, Received, Receiver, Sink};
use watch::SocketWatch;

/// Message ids with this bit set are used for `No_reply` messages only; at most this many
/// requests can wait for replies at once.
pub const POSTED_ID_BIT: u16 = 0x8000;

/// How long a waiting caller polls for its reply before it sleeps, by default: long enough
/// for a server on another CPU to answer a small request, so that the caller's thread is not
/// put to sleep and woken again (a wake-up on another CPU costs tens of microseconds on a
/// VM). Nothing when the process may run on one CPU only: polling there only delays the
/// server.
pub fn default_busy_poll() -> Duration {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() > 1 => DEFAULT_BUSY_POLL,
        _ => Duration::ZERO,
    }
}

/// [`default_busy_poll`] on a machine with more than one CPU.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(25);

/// Default deadline for a reply.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket's receive timeout: the longest a waiting caller sleeps in `recvmsg` before it
/// looks at its deadline again. Closer to the deadline than twice this (the kernel rounds
/// the timeout up to its tick), it waits in `poll` with the exact remaining time instead.
const BLOCKING_READ_SLICE: Duration = Duration::from_millis(50);

/// A fresh token for a [`Sink`]: tells its transfers apart from every other sink's.
fn next_sink_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Settings of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Deadline of each WAIT request unless given per call.
    pub reply_timeout: Duration,
    /// Largest message (header included) accepted from the server; larger ones are drained
    /// and dropped, and a waiter for them fails.
    pub max_recv_size: u32,
    /// Most fds accepted with one message from the server.
    pub max_recv_fds: usize,
    /// How long a caller waiting for its reply polls the socket (yielding the CPU between
    /// polls) before it sleeps: [`default_busy_poll`] unless set. Zero never polls. Polling
    /// spends CPU for latency: a reply that comes within this time costs no sleep and
    /// wake-up of the caller's thread.
    pub busy_poll: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            max_recv_size: (1 << 20) + (64 << 10),
            max_recv_fds: 16,
            busy_poll: default_busy_poll(),
        }
    }
}

/// A reply from the server.
#[derive(Debug)]
pub struct Reply {
    /// The reply's header.
    pub header: Header,
    /// The bytes after the header.
    pub payload: Vec<u8>,
    /// fds that came with the reply (owned: dropped fds are closed).
    pub fds: Vec<OwnedFd>,
    /// The reply's data went straight into the sink passed to [`Proxy::wait_into`] or
    /// [`Proxy::request_into`], and `payload` holds only the head before it. Always `false`
    /// otherwise.
    pub data_in_sink: bool,
}

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

    /// Optionally answers a request whose reply carries bulk data without copying that data
    /// into a buffer: returns the reply payload's head and a [`ReplyData`] that sends the
    /// rest straight from the handler's memory ([`UnbufferedReply`]). `None` (the default) means "use
    /// [`handle`](Self::handle)". Used on the twin socket, and on the main socket when no
    /// message is queued before the reply; the data may be sent after the call returns (a
    /// reply that does not fit the socket keeps the [`ReplyData`] until it is written).
    fn handle_unbuffered(
        &self,
        _header: &Header,
        _payload: &[u8],
        _fds: &[OwnedFd],
    ) -> Option<Result<UnbufferedReply, u32>> {
        None
    }
}

/// A NOWAIT request whose reply has not been collected yet.
#[derive(Debug)]
#[must_use = "a ticket's reply must be collected with Proxy::wait or Proxy::wait_all"]
pub struct Ticket {
    id: u16,
    started: Instant,
    completion: Arc<Completion>,
}

impl Ticket {
    /// The request's message id.
    pub fn id(&self) -> u16 {
        self.id
    }
}

#[derive(Debug)]
enum Slot {
    Waiting,
    Done(Result<Reply, Error>),
    Taken,
}

#[derive(Debug)]
struct SlotState {
    slot: Slot,
    /// Whether the waiter sleeps on the condvar (only then is it notified: a notification
    /// is a `futex` call even when nobody sleeps).
    sleeping: bool,
}

#[derive(Debug)]
struct Completion {
    command: Command,
    slot: Mutex<SlotState>,
    cv: Condvar,
}

impl Completion {
    fn new(command: Command) -> Self {
        Completion {
            command,
            slot: Mutex::new(SlotState {
                slot: Slot::Waiting,
                sleeping: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn complete(&self, result: Result<Reply, Error>) {
        let mut state = lock(&self.slot);
        if matches!(state.slot, Slot::Waiting) {
            state.slot = Slot::Done(result);
        }
        let sleeping = state.sleeping;
        drop(state);
        if sleeping {
            self.cv.notify_one();
        }
    }

    fn is_done(&self) -> bool {
        !matches!(lock(&self.slot).slot, Slot::Waiting)
    }

    /// Wakes the waiter if it sleeps.
    fn nudge(&self) {
        if lock(&self.slot).sleeping {
            self.cv.notify_one();
        }
    }
}

/// A message being written: `buf` (header and buffered payload), then any unbuffered reply
/// data, sent straight from its owner's memory.
struct Outgoing {
    buf: Vec<u8>,
    data: Option<Box<dyn ReplyData>>,
    sent: usize,
    fds: Vec<OwnedFd>,
    /// Entries of a REGION_WRITE_MULTI built by coalescing posted writes (`multi.rs`);
    /// 0 for every other message.
    multi: usize,
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
struct SendQueue {
    queue: VecDeque<Outgoing>,
    /// Bytes held by `queue`.
    bytes: usize,
}

/// Hashes the pending table's keys, message ids we chose ourselves, with one
/// multiplication: the default SipHash guards against keys an attacker picks, and costs a
/// measurable part of a round trip.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Waiting requests by message id.
type Pending = HashMap<u16, Arc<Completion>, BuildHasherDefault<IdHasher>>;

/// Queued bytes past which a server that keeps sending requests without reading our
/// replies is disconnected, instead of growing the queue without limit.
const MAX_QUEUED_BYTES: usize = 256 << 20;

type DisconnectCallback = Box<dyn Fn(&DisconnectReason) + Send + Sync>;

struct Inner {
    sock: UnixStream,
    config: ProxyConfig,
    /// Ids of requests that get a reply: `0..POSTED_ID_BIT`, skipping ids still waiting.
    next_id: AtomicU16,
    /// Ids of `No_reply` messages: `POSTED_ID_BIT..`. Kept apart so that a server which
    /// replies to them anyway can never complete a waiter with such a reply.
    next_posted_id: AtomicU16,
    send: Mutex<SendQueue>,
    recv: Mutex<Receiver>,
    /// Whether the subscriber is told about incoming data (only while no caller waits).
    watch: SocketWatch,
    /// Bumped whenever a reader lets go of the receive lock.
    reader_epoch: AtomicU64,
    /// Waiters asleep on their condvars (who must be woken when a reader lets go).
    sleepers: AtomicUsize,
    pending: Mutex<Pending>,
    connected: AtomicBool,
    reason: Mutex<Option<DisconnectReason>>,
    /// Kicks the subscriber (queue to drain, disconnect to process).
    kick: EventFd,
    /// Signalled once when the connection ends, for owners that poll.
    disconnect_event: EventFd,
    handler: Mutex<Option<Arc<dyn ServerRequestHandler>>>,
    on_disconnect: Mutex<Vec<DisconnectCallback>>,
    /// fd limit for messages we send (the server's `max_msg_fds`).
    max_send_fds: AtomicUsize,
    /// Payload limit for messages we send.
    max_send_size: AtomicUsize,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("fd", &self.sock.as_raw_fd())
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One connection to a vfio-user server. Cheap to clone; safe to use from many threads.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

/// A command header; `check_send` has bounded `len`, so the size always fits.
fn command_header(id: u16, command: Command, len: usize, no_reply: bool) -> Result<Header, Error> {
    Header::command(id, command, len, no_reply).ok_or(Error::MessageTooLarge {
        command,
        len,
        limit: u32::MAX as usize - HEADER_SIZE,
    })
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

impl Proxy {
    /// Connects to the server socket at `path`, waiting at most `timeout` for the server to
    /// accept. Returns the proxy and the subscriber that must run in an event loop (a VMM's
    /// own [`event_manager::EventManager`], or an [`EventLoop`]).
    pub fn connect(
        path: &Path,
        timeout: Duration,
        config: ProxyConfig,
    ) -> Result<(Proxy, ProxySubscriber), Error> {
        let sock =
            socket::connect_with_timeout(path, timeout).map_err(|source| Error::Connect {
                path: path.display().to_string(),
                source,
            })?;
        Proxy::from_stream(sock, config)
    }

    /// Wraps an already connected stream (for example one end of a socketpair).
    ///
    /// The connection switches the stream to blocking mode with a receive timeout (its own
    /// non-blocking calls say so per call); nothing else should use it afterwards.
    pub fn from_stream(
        sock: UnixStream,
        config: ProxyConfig,
    ) -> Result<(Proxy, ProxySubscriber), Error> {
        // Blocking, so that a waiting caller can sleep in `recvmsg` (bounded by the receive
        // timeout); every other read and every write says MSG_DONTWAIT.
        sock.set_nonblocking(false)
            .map_err(io_err("setting the socket blocking"))?;
        sock.set_read_timeout(Some(BLOCKING_READ_SLICE))
            .map_err(io_err("setting the socket's receive timeout"))?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating the kick eventfd"))?;
        let disconnect_event =
            EventFd::new(EFD_NONBLOCK).map_err(io_err("creating the disconnect eventfd"))?;
        let watch = SocketWatch::new(&sock).map_err(io_err("creating the socket's epoll set"))?;
        let inner = Arc::new(Inner {
            recv: Mutex::new(Receiver::new(config.max_recv_size, config.max_recv_fds)),
            watch,
            sock,
            config,
            next_id: AtomicU16::new(0),
            next_posted_id: AtomicU16::new(0),
            send: Mutex::new(SendQueue::default()),
            reader_epoch: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            pending: Mutex::new(Pending::default()),
            connected: AtomicBool::new(true),
            reason: Mutex::new(None),
            kick,
            disconnect_event,
            handler: Mutex::new(None),
            on_disconnect: Mutex::new(Vec::new()),
            max_send_fds: AtomicUsize::new(1),
            max_send_size: AtomicUsize::new(usize::MAX),
        });
        let subscriber = ProxySubscriber::new(Arc::clone(&inner));
        Ok((Proxy { inner }, subscriber))
    }

    /// The connection's settings.
    pub fn config(&self) -> &ProxyConfig {
        &self.inner.config
    }

    /// Sets the limits the server negotiated for what we send: fds per message and message
    /// payload bytes. Before this, one fd per message (the protocol's default) and no size
    /// limit apply.
    pub fn set_send_limits(&self, max_fds: usize, max_payload: usize) {
        self.inner.max_send_fds.store(max_fds, Ordering::Relaxed);
        self.inner
            .max_send_size
            .store(max_payload, Ordering::Relaxed);
    }

    /// Installs the handler for server requests. Without one, every server request gets an
    /// `ENOSYS` error reply.
    pub fn set_request_handler(&self, handler: Option<Arc<dyn ServerRequestHandler>>) {
        *lock(&self.inner.handler) = handler;
    }

    /// Registers a callback run once, on the thread that notices, when the connection ends.
    /// Runs at once if it has already ended.
    pub fn on_disconnect(&self, callback: impl Fn(&DisconnectReason) + Send + Sync + 'static) {
        let mut callbacks = lock(&self.inner.on_disconnect);
        if let Some(reason) = self.disconnect_reason() {
            drop(callbacks);
            callback(&reason);
            return;
        }
        callbacks.push(Box::new(callback));
    }

    /// An eventfd that becomes readable when the connection ends (for an owner's event loop).
    pub fn disconnect_event(&self) -> &EventFd {
        &self.inner.disconnect_event
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Why the connection ended, if it has.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        lock(&self.inner.reason).clone()
    }

    /// Shuts the connection down: waiters fail with `Disconnected(Shutdown)`.
    pub fn shutdown(&self) {
        self.inner.fail(DisconnectReason::Shutdown);
    }

    /// Sends a command and waits for its reply (WAIT), with the connection's reply timeout.
    ///
    /// An error reply becomes [`Error::Server`] with the server's errno.
    pub fn request(&self, command: Command, payload: &[u8], fds: &[RawFd]) -> Result<Reply, Error> {
        self.request_with_timeout(command, payload, fds, self.inner.config.reply_timeout)
    }

    /// Like [`Proxy::request`] with an explicit deadline.
    pub fn request_with_timeout(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
        timeout: Duration,
    ) -> Result<Reply, Error> {
        // Waiting from before the send, so that even a reply that comes at once does not
        // wake the subscriber.
        let _waiting = self.inner.waiting();
        let ticket = self.send_nowait(command, payload, fds)?;
        let sent = ticket.started;
        self.inner.wait(ticket, timeout, None, sent)
    }

    /// Like [`Proxy::request`], but the reply's data may be read straight into `sink`: see
    /// [`Proxy::wait_into`].
    pub fn request_into(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
        head_len: usize,
        sink: &mut [u8],
    ) -> Result<Reply, Error> {
        let _waiting = self.inner.waiting();
        let ticket = self.send_nowait(command, payload, fds)?;
        let timeout = self.inner.config.reply_timeout;
        let sent = ticket.started;
        self.inner
            .wait(ticket, timeout, Some((head_len, sink)), sent)
    }

    /// Sends a command whose reply is collected later (NOWAIT).
    pub fn send_nowait(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<Ticket, Error> {
        let started = Instant::now();
        self.inner.check_send(command, payload.len(), fds.len())?;
        let completion = reuse::completion(command);
        let id = self.inner.register(&completion)?;
        let header = command_header(id, command, payload.len(), false)?;
        if let Err(e) = self.inner.send(&header, payload, fds) {
            lock(&self.inner.pending).remove(&id);
            return Err(e);
        }
        Ok(Ticket {
            id,
            started,
            completion,
        })
    }

    /// Waits for a NOWAIT request's reply, until the connection's reply timeout has passed
    /// since it was sent.
    pub fn wait(&self, ticket: Ticket) -> Result<Reply, Error> {
        let _waiting = self.inner.waiting();
        let timeout = self.inner.config.reply_timeout;
        self.inner.wait(ticket, timeout, None, Instant::now())
    }

    /// Like [`Proxy::wait`], but when this thread reads the reply itself and its payload is
    /// exactly `head_len + sink.len()` bytes (and it is not an error reply), the first
    /// `head_len` bytes go to the reply's `payload` and the rest straight from the socket
    /// into `sink`, without a buffer in between: the reply then says
    /// [`data_in_sink`](Reply::data_in_sink). Otherwise (another thread read the reply, it
    /// has another size, it is an error) the reply comes buffered as from `wait`, and
    /// `sink` is left alone.
    ///
    /// `sink` is written only during this call, by this thread. After an error its content
    /// is unspecified (a reply that times out half-way through its data leaves part of it
    /// there; the rest is drained from the socket by whoever reads next).
    pub fn wait_into(
        &self,
        ticket: Ticket,
        head_len: usize,
        sink: &mut [u8],
    ) -> Result<Reply, Error> {
        let _waiting = self.inner.waiting();
        let timeout = self.inner.config.reply_timeout;
        self.inner
            .wait(ticket, timeout, Some((head_len, sink)), Instant::now())
    }

    /// Waits for every reply of a batch, in order. The server processes commands in order,
    /// so this waits in effect for the youngest; every request's result is returned, errors
    /// included.
    pub fn wait_all(&self, tickets: Vec<Ticket>) -> Vec<Result<Reply, Error>> {
        let _waiting = self.inner.waiting();
        let timeout = self.inner.config.reply_timeout;
        tickets
            .into_iter()
            .map(|t| self.inner.wait(t, timeout, None, Instant::now()))
            .collect()
    }

    /// Sends a command with `No_reply` set (ASYNC): nobody waits, and an error the server
    /// meets is not reported.
    pub fn post(&self, command: Command, payload: &[u8], fds: &[RawFd]) -> Result<(), Error> {
        self.inner.check_send(command, payload.len(), fds.len())?;
        let id = self.inner.next_posted_id.fetch_add(1, Ordering::Relaxed) | POSTED_ID_BIT;
        let header = command_header(id, command, payload.len(), true)?;
        self.inner.send(&header, payload, fds)
    }

    /// Number of messages waiting in the send queue (for tests and statistics).
    pub fn queued_messages(&self) -> usize {
        lock(&self.inner.send).queue.len()
    }
}

/// A caller waiting for replies, from `Inner::waiting` until dropped.
struct Waiting<'a>(&'a Inner);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.watch.leave() {
            // Data arriving while nobody waits would go unnoticed from now on.
            self.0.fail(error::io_reason(&e));
        }
    }
}

impl Inner {
    /// Marks the calling thread as waiting for replies until the guard is dropped: while
    /// any caller waits, callers read the socket and the subscriber is not woken by data.
    fn waiting(&self) -> Waiting<'_> {
        self.watch.enter();
        Waiting(self)
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

    fn reason(&self) -> DisconnectReason {
        lock(&self.reason)
            .clone()
            .unwrap_or(DisconnectReason::Shutdown)
    }

    /// Picks an id not used by any waiting request and enters the completion under it.
    fn register(&self, completion: &Arc<Completion>) -> Result<u16, Error> {
        let mut pending = lock(&self.pending);
        if pending.len() >= usize::from(POSTED_ID_BIT) {
            return Err(Error::TooManyPending);
        }
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) & !POSTED_ID_BIT;
            if let std::collections::hash_map::Entry::Vacant(v) = pending.entry(id) {
                v.insert(Arc::clone(completion));
                return Ok(id);
            }
        }
    }

    /// Sends one message: inline when the queue is empty, queued otherwise.
    fn send(&self, header: &Header, payload: &[u8], fds: &[RawFd]) -> Result<(), Error> {
        self.send_locked(lock(&self.send), header, payload, fds)
    }

    /// [`send`](Self::send) with the send lock already held.
    fn send_locked(
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
                multi: 0,
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
    fn send_unbuffered(&self, header: &Header, reply: UnbufferedReply) -> Result<(), Error> {
        log::debug!("send {header} (unbuffered)");
        let mut buf = Vec::with_capacity(HEADER_SIZE + reply.head.len());
        buf.extend_from_slice(&header.to_bytes());
        buf.extend_from_slice(&reply.head);
        let mut out = Outgoing {
            buf,
            data: Some(reply.data),
            sent: 0,
            fds: Vec::new(),
            multi: 0,
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
    fn drain_send_queue(&self) -> Result<bool, DisconnectReason> {
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

    /// Waits for a ticket's reply, reading the socket itself when no other thread does;
    /// with `into` (`head_len`, sink), a reply this thread reads may go into the sink (see
    /// [`Proxy::wait_into`]).
    ///
    /// The caller must hold a [`Waiting`] guard.
    /// `now` is the time of the call, or the ticket's start when it was sent just now.
    fn wait(
        &self,
        ticket: Ticket,
        timeout: Duration,
        into: Option<(usize, &mut [u8])>,
        now: Instant,
    ) -> Result<Reply, Error> {
        let result = self.wait_for(&ticket, timeout, into, now);
        reuse::recycle_completion(ticket.completion);
        result
    }

    fn wait_for(
        &self,
        ticket: &Ticket,
        timeout: Duration,
        into: Option<(usize, &mut [u8])>,
        mut now: Instant,
    ) -> Result<Reply, Error> {
        let deadline = ticket.started + timeout;
        let completion = &ticket.completion;
        let mut sink = into.map(|(head_len, data)| Sink {
            token: next_sink_token(),
            id: ticket.id,
            command: completion.command as u16,
            head_len,
            data,
        });
        loop {
            if let Some(result) = self.take(completion) {
                return result;
            }
            if now >= deadline {
                return self.timed_out(ticket, timeout);
            }
            if let Some(result) = self.wait_step(ticket, timeout, sink.as_mut(), now) {
                return result;
            }
            if let Some(result) = self.take(completion) {
                return result;
            }
            now = Instant::now();
        }
    }

    /// One step of [`wait_for`](Self::wait_for): reads as the leader if nobody else reads,
    /// otherwise sleeps until the reply is handed over or the reader lets go. Returns the
    /// result when the wait ends here: a reply abandoned half-way through its data at the
    /// deadline.
    fn wait_step(
        &self,
        ticket: &Ticket,
        timeout: Duration,
        mut sink: Option<&mut Sink<'_>>,
        now: Instant,
    ) -> Option<Result<Reply, Error>> {
        let deadline = ticket.started + timeout;
        let completion = &ticket.completion;
        let epoch = self.reader_epoch.load(Ordering::SeqCst);
        if let Some(mut receiver) = try_lock(&self.recv) {
            self.lead(
                &mut receiver,
                completion,
                deadline,
                now,
                sink.as_deref_mut(),
            );
            // The sink must not outlive this hold of the lock. `lead` stops half-way
            // through our reply only at the deadline (or on a disconnect): the rest is
            // drained by the next reader, and we time out. Leave the pending table first,
            // so that the drained reply fails nobody.
            let abandoned = sink
                .as_ref()
                .is_some_and(|s| receiver.abandon_sink(s.token));
            if abandoned {
                self.forget(ticket);
            }
            drop(receiver);
            self.after_reading();
            return abandoned.then(|| self.timed_out(ticket, timeout));
        }
        // Someone else reads: sleep until our reply is handed to us or the reader lets go
        // of the lock (then we may have to read ourselves).
        let mut state = lock(&completion.slot);
        state.sleeping = true;
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while matches!(state.slot, Slot::Waiting)
            && self.reader_epoch.load(Ordering::SeqCst) == epoch
        {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = completion
                .cv
                .wait_timeout(state, deadline - now)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        state.sleeping = false;
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        None
    }

    fn take(&self, completion: &Completion) -> Option<Result<Reply, Error>> {
        let mut state = lock(&completion.slot);
        match std::mem::replace(&mut state.slot, Slot::Taken) {
            Slot::Done(result) => Some(result),
            Slot::Taken => Some(Err(Error::Disconnected(DisconnectReason::Shutdown))),
            Slot::Waiting => {
                state.slot = Slot::Waiting;
                None
            }
        }
    }

    fn timed_out(&self, ticket: &Ticket, timeout: Duration) -> Result<Reply, Error> {
        let mut pending = lock(&self.pending);
        // The reply may have raced in just now.
        if let Some(result) = self.take(&ticket.completion) {
            return result;
        }
        Self::forget_locked(&mut pending, ticket);
        drop(pending);
        log::warn!(
            "reply to {} (id {}) timed out after {:?}",
            ticket.completion.command,
            ticket.id,
            timeout
        );
        Err(Error::Timeout {
            command: ticket.completion.command,
            id: ticket.id,
            after: timeout,
        })
    }

    /// Takes a ticket out of the pending table: its reply, if it comes, is dropped.
    fn forget(&self, ticket: &Ticket) {
        Self::forget_locked(&mut lock(&self.pending), ticket);
    }

    fn forget_locked(pending: &mut Pending, ticket: &Ticket) {
        if pending
            .get(&ticket.id)
            .is_some_and(|c| Arc::ptr_eq(c, &ticket.completion))
        {
            pending.remove(&ticket.id);
        }
    }

    /// Reads while holding the receive lock until `completion` is done or the deadline,
    /// then dispatches whatever else is buffered.
    ///
    /// A leader usually arrives straight after sending, when a non-blocking read could
    /// only say `EAGAIN`, so it sleeps in a blocking `recvmsg` (at most the socket's receive
    /// timeout, [`BLOCKING_READ_SLICE`]); near its deadline it waits in `poll` with the
    /// exact remaining time instead. A shutdown of the socket (`fail`) wakes it either way.
    /// Every reader dispatches all complete buffered messages before it lets go of the
    /// lock, so an empty socket means that there is nothing to dispatch.
    fn lead(
        &self,
        receiver: &mut Receiver,
        completion: &Completion,
        deadline: Instant,
        mut now: Instant,
        mut sink: Option<&mut Sink<'_>>,
    ) {
        let spin_until = now.checked_add(self.config.busy_poll).unwrap_or(deadline);
        // Past this, a blocking read could overshoot the deadline: wait in `poll` instead.
        let block_until = deadline.checked_sub(2 * BLOCKING_READ_SLICE);
        // Another reader may have handed the reply over between our last look and taking
        // the lock.
        let mut done = completion.is_done();
        while !done && now < deadline && self.connected.load(Ordering::Acquire) {
            let spinning = now < spin_until;
            let block = !spinning && block_until.is_some_and(|b| now <= b);
            if !spinning && !block {
                let left = deadline - now;
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                match socket::poll_fd(self.sock.as_raw_fd(), false, ms) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        self.fail(error::io_reason(&e));
                        return;
                    }
                }
            }
            if !self.read_available(receiver, Some(completion), block, sink.as_deref_mut()) {
                return;
            }
            done = completion.is_done();
            if !done {
                if spinning {
                    // Let the server run if it shares our CPU.
                    std::thread::yield_now();
                }
                now = Instant::now();
            }
        }
        self.dispatch_buffered(receiver, sink);
    }

    /// Reads and dispatches messages until the socket has no more data (with `block`: until
    /// a read times out), or (when `until` is given) until that completion is done. Returns
    /// `false` if the connection failed.
    fn read_available(
        &self,
        receiver: &mut Receiver,
        until: Option<&Completion>,
        block: bool,
        mut sink: Option<&mut Sink<'_>>,
    ) -> bool {
        loop {
            match receiver.step(&self.sock, block, sink.as_deref_mut()) {
                Ok(Some(incoming)) => {
                    self.dispatch(incoming);
                    if until.is_some_and(Completion::is_done) {
                        return true;
                    }
                }
                Ok(None) => return true,
                Err(reason) => {
                    self.fail(reason);
                    return false;
                }
            }
        }
    }

    /// Dispatches the messages that are complete in the receive buffer, without reading.
    fn dispatch_buffered(&self, receiver: &mut Receiver, mut sink: Option<&mut Sink<'_>>) {
        loop {
            match receiver.buffered(sink.as_deref_mut()) {
                Ok(Some(incoming)) => self.dispatch(incoming),
                Ok(None) => return,
                Err(reason) => {
                    self.fail(reason);
                    return;
                }
            }
        }
    }

    /// Called after letting go of the receive lock: wakes every sleeping waiter so that one
    /// of them takes over reading if its reply has not come yet.
    fn after_reading(&self) {
        self.reader_epoch.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let waiters: Vec<Arc<Completion>> = lock(&self.pending).values().cloned().collect();
        for c in waiters {
            c.nudge();
        }
    }

    /// For the subscriber, when the socket has data (or hung up) and no caller waits:
    /// reads once and dispatches what is complete, unless a caller has started waiting and
    /// reads already. Whatever is left keeps the entry reported once the subscriber has
    /// armed it (it is level-triggered), so the read that would only say `EAGAIN` is saved.
    fn read_idle(&self) {
        let Some(mut receiver) = try_lock(&self.recv) else {
            return;
        };
        self.dispatch_buffered(&mut receiver, None);
        match receiver.read_once(&self.sock) {
            Ok(true) => self.dispatch_buffered(&mut receiver, None),
            Ok(false) => {}
            Err(reason) => self.fail(reason),
        }
        drop(receiver);
        self.after_reading();
    }

    fn dispatch(&self, incoming: Incoming) {
        match incoming {
            Incoming::Message(msg) => {
                log::debug!("recv {} fds={}", msg.header, msg.fds.len());
                let is_reply = msg.header.message_type() == Some(MessageType::Reply);
                // Older rust-vmm servers mark error replies as commands with the Error bit.
                let legacy_error = !is_reply && msg.header.is_error();
                if is_reply || legacy_error {
                    self.complete_reply(msg, legacy_error);
                } else {
                    self.serve_request(msg);
                }
            }
            Incoming::Discarded { header, why } => {
                log::warn!("dropped message {header}: {why}");
                if header.message_type() == Some(MessageType::Command) {
                    if !header.no_reply() {
                        let errno = if header.size > self.config.max_recv_size {
                            libc::E2BIG
                        } else {
                            libc::EINVAL
                        };
                        let _ = self.send(&Header::error_reply(&header, errno as u32), &[], &[]);
                    }
                } else {
                    if let Some(c) = lock(&self.pending).remove(&header.id) {
                        c.complete(Err(Error::BadReply {
                            command: c.command,
                            what: why,
                        }));
                    }
                }
            }
        }
    }

    fn complete_reply(&self, msg: Received, legacy_error: bool) {
        let header = msg.header;
        let Some(c) = lock(&self.pending).remove(&header.id) else {
            if !legacy_error {
                log::debug!("dropped unsolicited reply {header}");
            } else {
                // Not ours: a server request with the Error bit is still a request.
                self.serve_request(msg);
            }
            return;
        };
        let result = if header.command != c.command as u16 {
            Err(Error::BadReply {
                command: c.command,
                what: format!("reply carries command {}", header.command),
            })
        } else if header.is_error() {
            Err(Error::Server {
                command: c.command,
                errno: header.error,
            })
        } else {
            Ok(Reply {
                header,
                payload: msg.payload,
                fds: msg.fds,
                data_in_sink: msg.data_in_sink,
            })
        };
        c.complete(result);
    }

    fn serve_request(&self, msg: Received) {
        let header = msg.header;
        let q = lock(&self.send);
        let (over, queued) = (q.bytes > MAX_QUEUED_BYTES, !q.queue.is_empty());
        drop(q);
        if over {
            self.fail(DisconnectReason::ProtocolViolation(format!(
                "the server sends requests ({header}) but does not read our replies"
            )));
            return;
        }
        let handler = lock(&self.handler).clone();
        let known = header.known_command().is_some();
        // Bulk data straight from the handler's memory, unless the reply would only join
        // the queue (then it is copied once, as before, and the handler's memory is read
        // now rather than when the queue drains).
        if let Some(h) = handler
            .as_ref()
            .filter(|_| known && !queued && !header.no_reply())
        {
            if let Some(result) = h.handle_unbuffered(&header, &msg.payload, &msg.fds) {
                let sent = match result {
                    Ok(u) => {
                        let len = u.head.len() + u.data.len();
                        match Header::reply(&header, len) {
                            Some(reply) => self.send_unbuffered(&reply, u),
                            None => {
                                let e = Header::error_reply(&header, libc::E2BIG as u32);
                                self.send(&e, &[], &[])
                            }
                        }
                    }
                    Err(errno) => self.send(&Header::error_reply(&header, errno), &[], &[]),
                };
                if let Err(e) = sent {
                    log::warn!("cannot reply to server request {header}: {e}");
                }
                return;
            }
        }
        let mut payload = Vec::new();
        let result = match (handler, known) {
            (Some(h), true) => h.handle(&header, &msg.payload, msg.fds, &mut payload),
            (_, _) => Err(libc::ENOSYS as u32),
        };
        if header.no_reply() {
            return;
        }
        let reply = match result {
            Ok(()) => Header::reply(&header, payload.len()),
            Err(errno) => {
                payload.clear();
                Some(Header::error_reply(&header, errno))
            }
        };
        let Some(reply) = reply else {
            payload.clear();
            let e = Header::error_reply(&header, libc::E2BIG as u32);
            let _ = self.send(&e, &[], &[]);
            return;
        };
        if let Err(e) = self.send(&reply, &payload, &[]) {
            log::warn!("cannot reply to server request {header}: {e}");
        }
    }

    /// Ends the connection: every waiter fails with `Disconnected`, later requests fail fast,
    /// the owner is told.
    fn fail(&self, reason: DisconnectReason) {
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
        let mut q = lock(&self.send);
        q.queue.clear();
        q.bytes = 0;
        drop(q);
        let waiters: Vec<Arc<Completion>> = lock(&self.pending).drain().map(|(_, c)| c).collect();
        for c in waiters {
            c.complete(Err(Error::Disconnected(reason.clone())));
        }
        let _ = self.disconnect_event.write(1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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

    impl ServerRequestHandler for Handler {
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
            data_in_sink: false,
        }
    }

    fn read_msg(sock: &mut UnixStream) -> (Header, Vec<u8>) {
        let mut hdr = [0u8; HEADER_SIZE];
        sock.read_exact(&mut hdr).unwrap();
        let h = Header::from_bytes(&hdr);
        let mut body = vec![0u8; h.payload_len()];
        sock.read_exact(&mut body).unwrap();
        (h, body)
    }

    #[test]
    fn unbuffered_when_nothing_is_queued_buffered_behind_queued_messages() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (proxy, _sub) = Proxy::from_stream(ours, ProxyConfig::default()).unwrap();
        let handler = Arc::new(Handler::default());
        proxy.set_request_handler(Some(Arc::clone(&handler) as Arc<dyn ServerRequestHandler>));
        let inner = &proxy.inner;

        // The queue is empty: 1 MiB goes from the handler's memory while the server reads,
        // within the wait for room, and nothing is queued.
        let reader = std::thread::spawn(move || {
            let got = read_msg(&mut theirs);
            (theirs, got)
        });
        inner.serve_request(dma_read(1));
        assert_eq!(proxy.queued_messages(), 0);
        let (mut theirs, (h, body)) = reader.join().unwrap();
        assert_eq!((h.id, h.payload_len()), (1, 1 + (1 << 20)));
        assert_eq!(body.first(), Some(&b'U'));
        assert!(body.get(1..).unwrap().iter().all(|&b| b == 7));
        assert_eq!(handler.unbuffered.load(Ordering::SeqCst), 1);

        // Nobody reads: fill the socket until messages queue, then the reply is buffered and
        // goes behind them.
        let mut posted = 0u8;
        while proxy.queued_messages() == 0 {
            proxy
                .post(Command::RegionWrite, &[posted; 60 << 10], &[])
                .unwrap();
            posted += 1;
        }
        inner.serve_request(dma_read(2));
        assert_eq!(proxy.queued_messages(), 2);
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
        assert_eq!(proxy.queued_messages(), 0);
    }

    #[test]
    fn an_unbuffered_reply_left_unread_is_queued_with_its_progress() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (proxy, _sub) = Proxy::from_stream(ours, ProxyConfig::default()).unwrap();
        proxy.set_request_handler(Some(Arc::new(Handler::default())));
        let inner = &proxy.inner;
        let started = Instant::now();
        inner.serve_request(dma_read(3));
        // Waited for room (bounded), then left the rest to the queue.
        assert!(started.elapsed() >= WRITE_WAIT);
        assert!(started.elapsed() < WRITE_WAIT * 50);
        assert_eq!(proxy.queued_messages(), 1);
        assert_eq!(lock(&inner.send).bytes, HEADER_SIZE + 1 + (1 << 20));
        proxy.post(Command::RegionWrite, b"after", &[]).unwrap();
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
        assert_eq!(lock(&inner.send).bytes, 0);
    }

    use std::io::Write;

    const DATA: usize = 50_000;

    fn pair(timeout: Duration) -> (Proxy, ProxySubscriber, UnixStream) {
        let (client, server) = UnixStream::pair().unwrap();
        let config = ProxyConfig {
            reply_timeout: timeout,
            busy_poll: Duration::ZERO,
            ..ProxyConfig::default()
        };
        let (proxy, sub) = Proxy::from_stream(client, config).unwrap();
        (proxy, sub, server)
    }

    /// Reads one request on the server's end; returns its header.
    fn read_request(server: &mut UnixStream) -> Header {
        let mut hdr = [0u8; HEADER_SIZE];
        server.read_exact(&mut hdr).unwrap();
        let header = Header::from_bytes(&hdr);
        let mut payload = vec![0u8; header.payload_len()];
        server.read_exact(&mut payload).unwrap();
        header
    }

    /// A reply to `request`: a 16-byte head then `len` bytes of data.
    fn reply(request: &Header, len: usize) -> (Vec<u8>, Vec<u8>) {
        let payload: Vec<u8> = (0..16 + len).map(|i| (i * 13 + 1) as u8).collect();
        let header = Header::reply(request, payload.len()).unwrap();
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        (bytes, payload)
    }

    fn write_in_pieces(server: &mut UnixStream, bytes: &[u8]) {
        for piece in bytes.chunks(4000) {
            server.write_all(piece).unwrap();
        }
    }

    fn send(proxy: &Proxy, server: &mut UnixStream) -> (Ticket, Header) {
        let ticket = proxy
            .send_nowait(Command::RegionRead, &[0; 16], &[])
            .unwrap();
        let request = read_request(server);
        assert_eq!(request.id, ticket.id());
        (ticket, request)
    }

    #[test]
    fn wait_into_reads_data_into_the_sink() {
        let (proxy, _sub, mut server) = pair(DEFAULT_REPLY_TIMEOUT);
        // Two requests in flight, both replies written in pieces before anyone reads.
        let (t1, r1) = send(&proxy, &mut server);
        let (t2, r2) = send(&proxy, &mut server);
        let (b1, p1) = reply(&r1, DATA);
        let (b2, p2) = reply(&r2, DATA);
        // From another thread: both may not fit the socket's buffer at once.
        let writer = std::thread::spawn(move || {
            write_in_pieces(&mut server, &b1);
            write_in_pieces(&mut server, &b2);
            server
        });
        for (t, p) in [(t1, p1), (t2, p2)] {
            let mut out = vec![0u8; DATA];
            let reply = proxy.wait_into(t, 16, &mut out).unwrap();
            assert!(reply.data_in_sink);
            assert_eq!(reply.payload, p[..16]);
            assert!(out == p[16..]);
        }
        let mut server = writer.join().unwrap();
        // And through request_into, with a reply that comes while the caller waits.
        let server_thread = std::thread::spawn(move || {
            let request = read_request(&mut server);
            write_in_pieces(&mut server, &reply(&request, DATA).0);
            server
        });
        let mut out = vec![0u8; DATA];
        let r = proxy
            .request_into(Command::RegionRead, &[0; 16], &[], 16, &mut out)
            .unwrap();
        assert!(r.data_in_sink);
        assert!(out.iter().any(|&b| b != 0));
        server_thread.join().unwrap();
    }

    #[test]
    fn wait_into_falls_back_on_other_sizes_and_errors() {
        let (proxy, _sub, mut server) = pair(DEFAULT_REPLY_TIMEOUT);
        let (t, r) = send(&proxy, &mut server);
        let (bytes, payload) = reply(&r, DATA + 1);
        write_in_pieces(&mut server, &bytes);
        let mut out = vec![0u8; DATA];
        let reply = proxy.wait_into(t, 16, &mut out).unwrap();
        assert!(!reply.data_in_sink);
        assert!(reply.payload == payload);
        assert!(out.iter().all(|&b| b == 0));
        // An error reply of exactly the awaited size is still an error.
        let (t, r) = send(&proxy, &mut server);
        let mut header = Header::error_reply(&r, libc::EIO as u32);
        header.size = (HEADER_SIZE + 16 + DATA) as u32;
        let mut bytes = header.to_bytes().to_vec();
        bytes.resize(HEADER_SIZE + 16 + DATA, 0xaa);
        write_in_pieces(&mut server, &bytes);
        let e = proxy.wait_into(t, 16, &mut out).unwrap_err();
        assert!(
            matches!(e, Error::Server { errno, .. } if errno == libc::EIO as u32),
            "{e:?}"
        );
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn timeout_half_way_through_the_data_keeps_the_stream_in_step() {
        let (proxy, _sub, mut server) = pair(Duration::from_millis(150));
        let (t, r) = send(&proxy, &mut server);
        let (bytes, _) = reply(&r, DATA);
        let half = bytes.len() / 2;
        write_in_pieces(&mut server, &bytes[..half]);
        let mut out = vec![0u8; DATA];
        let e = proxy.wait_into(t, 16, &mut out).unwrap_err();
        assert!(
            matches!(e, Error::Timeout { id, .. } if id == r.id),
            "{e:?}"
        );
        // The rest comes late, then the next request's reply: the late data is drained.
        write_in_pieces(&mut server, &bytes[half..]);
        let before = out.clone();
        let (t, r) = send(&proxy, &mut server);
        let (bytes, payload) = reply(&r, DATA);
        write_in_pieces(&mut server, &bytes);
        let mut out2 = vec![0u8; DATA];
        let reply = proxy.wait_into(t, 16, &mut out2).unwrap();
        assert!(reply.data_in_sink);
        assert!(out2 == payload[16..]);
        assert!(out == before);
        assert!(proxy.is_connected());
    }

    #[test]
    fn follower_gets_a_buffered_reply() {
        let (proxy, _sub, mut server) = pair(DEFAULT_REPLY_TIMEOUT);
        let (t, r) = send(&proxy, &mut server);
        // This thread reads: the waiter below must follow.
        let mut receiver = lock(&proxy.inner.recv);
        let waiter = {
            let proxy = proxy.clone();
            std::thread::spawn(move || {
                let mut out = vec![0u8; DATA];
                let reply = proxy.wait_into(t, 16, &mut out).unwrap();
                (reply, out)
            })
        };
        while proxy.inner.sleepers.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let (bytes, payload) = reply(&r, DATA);
        write_in_pieces(&mut server, &bytes);
        assert!(proxy.inner.read_available(&mut receiver, None, false, None));
        drop(receiver);
        proxy.inner.after_reading();
        let (reply, out) = waiter.join().unwrap();
        assert!(!reply.data_in_sink);
        assert!(reply.payload == payload);
        assert!(out.iter().all(|&b| b == 0));
    }
}
