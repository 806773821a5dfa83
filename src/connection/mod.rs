// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The connection to a vfio-user server: connecting and negotiating, requests and their
//! replies, the server's own requests (DMA), and the end of the connection.
//!
//! A [`Connection`] is made by [`Connection::connect`] (its event loop on a thread of its
//! own) or [`Connection::connect_with_subscriber`] (the [`ConnectionSubscriber`] goes into
//! the VMM's own `EventManager`). The event loop does what no caller does: it drains the
//! send queue when the socket becomes writable, serves the server's requests while no
//! caller waits, and notices a hang-up.
//!
//! # Sending
//!
//! Three kinds of message, as in QEMU's client: WAIT ([`Connection::request`]: the caller
//! waits for the reply, with a deadline), NOWAIT ([`Connection::send_request`] then
//! [`Connection::wait`] or [`Connection::wait_all`]) and ASYNC ([`Connection::send_no_reply`]:
//! `No_reply` commands, and replies to server requests). When the send queue is empty the
//! caller's thread writes the message itself with one non-blocking send; on `EAGAIN` or a
//! partial write the rest is queued (fds only ever ride with a message's first byte) and
//! the event loop is kicked to drain the queue when the socket becomes writable.
//!
//! # Receiving
//!
//! Whoever holds the receive lock reads: a caller waiting for its reply takes the lock when
//! nobody else reads and reads its own reply (no thread hop); replies for other waiters are
//! handed to them, server requests are answered through the [`ServerRequestHandler`]. A
//! WAIT request made while nobody reads takes the lock before it is sent, and its reply
//! skips the pending table (see `solo.rs`). The event loop reads only when no caller waits
//! (server requests while idle): the socket sits in a private epoll set that the event loop
//! watches, and callers take it out of the event loop's view while they wait (see
//! `watch.rs`), so a reply wakes only its waiter.
//! A caller waiting with [`Connection::wait_into`] may have its reply's data read straight
//! into its own buffer while it reads (see `framer.rs`).
//!
//! # Deadlines and health
//!
//! Every wait for a reply has a deadline: the reply timeout after the request was sent
//! ([`ConnectOptions::reply_timeout`], or per call). The layers above bound an operation
//! made of several requests (a detach, a guest config write that also sets interrupts up)
//! by one reply timeout in total (`budget.rs`): each wait takes the sooner of its own
//! deadline and the operation's.
//!
//! A server processes its messages in order, so a request that goes unanswered past its
//! deadline holds up everything sent after it. The connection's [`Health`] then changes:
//!
//! ```text
//!            a reply times out               the late reply to that request arrives
//!  Healthy ----------------------> Unresponsive ---------------------------------> Healthy
//!     |                                 |
//!     +---------------------------------+--> Lost (EOF, hang-up, socket error, protocol
//!                                             violation, shutdown: final)
//! ```
//!
//! * **Unresponsive** ([`Health::Unresponsive`], naming the overdue request): nothing new is
//!   sent. [`Connection::request`] and the other requests, and `No_reply` messages, fail at
//!   once with [`Error::Unresponsive`], which names the overdue request, so that an
//!   operation of several requests (a teardown, a guest config access) waits for one reply
//!   timeout at most, not one per request. Callers already waiting keep their own deadlines,
//!   and the server's own requests are still answered (it may need a DMA reply to finish
//!   the overdue one). The late replies of timed-out requests are dropped, as before.
//! * **Healthy again** when the overdue request's late reply arrives (read whole, or
//!   drained): the server has processed everything sent before it, and the stream is in
//!   step. It is read as soon as it comes, by a waiting caller or by the event loop.
//! * **Lost** when the connection ends; it stays lost. Reconnecting means a new connection:
//!   [`Connection::health`] and [`Connection::health_event`] (signalled on every change)
//!   are where an owner's reconnect policy would start.

mod budget;
mod error;
mod framer;
mod handshake;
mod health;
mod inner;
mod multi;
mod pending;
mod reuse;
mod send;
mod serve;
pub(crate) mod socket;
mod solo;
mod subscriber;
#[cfg(test)]
mod testing;
mod twin;
mod wait;
mod watch;

pub(crate) use budget::Budget;
pub use error::{DisconnectReason, Error};
pub use health::{Health, Overdue};
pub use pending::PendingReply;
pub(crate) use reuse::recycle_reply;
use serve::OwnersHandler;
pub use serve::ServerRequestHandler;
pub(crate) use serve::{ReplyData, Responder, UnbufferedReply};
pub use subscriber::ConnectionSubscriber;
pub(crate) use subscriber::EventLoop;

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::negotiate::{Capabilities, Offer};
use crate::protocol::{Command, Header};
use inner::Inner;
use wait::default_busy_poll;

/// Default deadline for connecting, for the handshake and for a reply.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to connect, what to offer, and how long to wait.
///
/// ```
/// use std::time::Duration;
///
/// use vfio_user_client::{ConnectOptions, Offer};
///
/// let options = ConnectOptions {
///     reply_timeout: Duration::from_secs(1),
///     // The default polls only where this thread may use more than one CPU; a VMM that
///     // makes its options on a pinned thread, its servers running elsewhere, sets it.
///     busy_poll: Duration::from_micros(25),
///     // Server messages of up to 256 KiB of data (DMA_READ / DMA_WRITE are split to fit).
///     offer: Offer {
///         max_data_xfer_size: 256 << 10,
///         ..Offer::default()
///     },
///     ..ConnectOptions::default()
/// };
/// # assert!(options.offer.twin_socket);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    /// How long to wait for the server to accept the connection (5 s by default).
    pub connect_timeout: Duration,
    /// Deadline of the VERSION handshake (5 s by default).
    pub handshake_timeout: Duration,
    /// Deadline of each later request's reply, unless given per call (5 s by default).
    pub reply_timeout: Duration,
    /// The capabilities we advertise. They are our own limits too: a message from the
    /// server larger than `max_data_xfer_size` (plus room for its head) or with more than
    /// `max_msg_fds` fds is refused.
    pub offer: Offer,
    /// How long a caller waiting for its reply polls the socket (yielding the CPU between
    /// polls) before it sleeps. Zero never polls. Polling spends CPU for latency: a reply
    /// that comes within this time costs no sleep and wake-up of the caller's thread. By
    /// default 25 µs when the process may run on more than one CPU, zero otherwise (polling
    /// on one CPU only delays the server).
    pub busy_poll: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: DEFAULT_TIMEOUT,
            handshake_timeout: DEFAULT_TIMEOUT,
            reply_timeout: DEFAULT_TIMEOUT,
            offer: Offer::default(),
            busy_poll: default_busy_poll(),
        }
    }
}

/// Where the server is: the path of its listening socket, or a stream already connected to
/// it (for example one end of a socketpair, or a socket a management process handed over).
///
/// Made from a path (`&str`, `String`, `&Path`, `PathBuf`) or a [`UnixStream`] with
/// `into()`, as [`Connection::connect`] does. A stream is switched to blocking mode with a
/// receive timeout (the connection's non-blocking calls say so per call); nothing else
/// should use it afterwards.
#[derive(Debug)]
pub enum Endpoint {
    /// The path of the server's listening socket.
    Path(PathBuf),
    /// A stream already connected to the server.
    Stream(UnixStream),
}

impl From<&str> for Endpoint {
    fn from(path: &str) -> Self {
        Endpoint::Path(path.into())
    }
}

impl From<String> for Endpoint {
    fn from(path: String) -> Self {
        Endpoint::Path(path.into())
    }
}

impl From<&Path> for Endpoint {
    fn from(path: &Path) -> Self {
        Endpoint::Path(path.to_path_buf())
    }
}

impl From<PathBuf> for Endpoint {
    fn from(path: PathBuf) -> Self {
        Endpoint::Path(path)
    }
}

impl From<&PathBuf> for Endpoint {
    fn from(path: &PathBuf) -> Self {
        Endpoint::Path(path.clone())
    }
}

impl From<UnixStream> for Endpoint {
    fn from(stream: UnixStream) -> Self {
        Endpoint::Stream(stream)
    }
}

/// What a connection keeps of its [`ConnectOptions`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Settings {
    /// Deadline of each WAIT request unless given per call.
    reply_timeout: Duration,
    /// Largest message (header included) accepted from the server; larger ones are drained
    /// and dropped, and a waiter for them fails.
    max_recv_size: u32,
    /// Most fds accepted with one message from the server.
    max_recv_fds: usize,
    /// How long a caller waiting for its reply polls before it sleeps.
    busy_poll: Duration,
}

#[cfg(test)]
impl Default for Settings {
    fn default() -> Self {
        Settings::from(&ConnectOptions::default())
    }
}

/// A connection to a vfio-user server whose VERSION handshake succeeded. Safe to use from
/// many threads at once; dropping it shuts the connection down.
///
/// ```
/// use vfio_user_client::protocol::{Command, DeviceInfo};
/// use vfio_user_client::{ConnectOptions, Connection};
///
/// # use vfio_user_sample_server::{GpioDevice, Server, ServerConfig};
/// # let (gpio, _) = GpioDevice::new(Default::default())?;
/// # let server = Server::new(ServerConfig::default(), Box::new(gpio)).listen_temp()?;
/// # let socket = server.socket_path().ok_or("no socket")?;
/// let conn = Connection::connect(socket, &ConnectOptions::default())?;
/// println!(
///     "the server takes {} fds per message",
///     conn.capabilities().max_msg_fds
/// );
///
/// // A request and its reply, within the reply timeout; an error reply is `Error::Server`.
/// let mut request = Vec::new();
/// DeviceInfo::request().encode_into(&mut request);
/// let reply = conn.request(Command::DeviceGetInfo, &request, &[])?;
/// let info = DeviceInfo::decode(&reply.payload)?;
/// println!(
///     "{} regions, {} IRQ indexes",
///     info.num_regions, info.num_irqs
/// );
///
/// // The same request pipelined: sent now, its reply collected later.
/// let pending = conn.send_request(Command::DeviceGetInfo, &request, &[])?;
/// let reply = conn.wait(pending)?;
/// # assert_eq!(DeviceInfo::decode(&reply.payload)?, info);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Connection {
    inner: Arc<Inner>,
    capabilities: Capabilities,
    offer: Offer,
    twin_socket: bool,
    // Dropped after `inner` is shut down (see `Drop`): declared last.
    event_loop: Option<EventLoop>,
}

/// The state of a connection, shared by its [`Connection`], its subscriber and the layers
/// that keep a handle to it beyond a borrow (the DMA mapper, the PCI subscriber). Requests
/// through a handle fail with `Disconnected` once the [`Connection`] is dropped.
pub(crate) type Handle = Arc<Inner>;

impl Connection {
    /// Connects to the server at `endpoint`, negotiates, and runs the connection's event
    /// loop on a thread of its own, stopped when the connection is dropped. For tools,
    /// tests and VMMs without an event manager; a VMM with one uses
    /// [`Connection::connect_with_subscriber`].
    pub fn connect(
        endpoint: impl Into<Endpoint>,
        options: &ConnectOptions,
    ) -> Result<Connection, crate::Error> {
        let (mut connection, subscriber) = Connection::connect_with_subscriber(endpoint, options)?;
        // As with a VMM's event manager, the loop starts after the handshake, whose reply
        // the caller reads itself; the twin socket (if granted) is then served in the same
        // loop.
        connection.event_loop = Some(EventLoop::spawn(subscriber)?);
        Ok(connection)
    }

    /// Connects and negotiates, returning the subscriber for the caller to register in its
    /// own [`event_manager::EventManager`]: it watches the main socket and, in twin-socket
    /// mode, the second socket on which the server sends its DMA requests. The handshake does
    /// not need the subscriber to run yet: the caller's thread reads its own reply.
    ///
    /// When the connection ends (dropped, or lost) the subscriber stops watching the sockets
    /// by itself, but it keeps them open until the VMM removes it from its event manager
    /// (`SubscriberOps::remove_subscriber`).
    pub fn connect_with_subscriber(
        endpoint: impl Into<Endpoint>,
        options: &ConnectOptions,
    ) -> Result<(Connection, ConnectionSubscriber), crate::Error> {
        let sock = match endpoint.into() {
            Endpoint::Path(path) => socket::connect_with_timeout(&path, options.connect_timeout)
                .map_err(|source| Error::Connect {
                    path: path.display().to_string(),
                    source,
                })?,
            Endpoint::Stream(stream) => stream,
        };
        let (inner, main) = Inner::new(sock, Settings::from(options))?;
        let (capabilities, twin) = match handshake::handshake(&inner, options) {
            Ok(negotiated) => negotiated,
            Err(e) => {
                inner.fail(DisconnectReason::Shutdown);
                return Err(e);
            }
        };
        let connection = Connection {
            inner,
            capabilities,
            offer: options.offer.clone(),
            twin_socket: twin.is_some(),
            event_loop: None,
        };
        Ok((connection, ConnectionSubscriber::new(main, twin)))
    }

    /// What was negotiated.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// What we offered (our own limits: the largest DMA request we serve, fds we accept).
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Whether the server's requests arrive on a second socket (twin-socket mode).
    pub fn twin_socket(&self) -> bool {
        self.twin_socket
    }

    /// Sends a command and waits for its reply (WAIT), with the connection's reply timeout.
    ///
    /// An error reply becomes [`Error::Server`] with the server's errno.
    pub fn request(&self, command: Command, payload: &[u8], fds: &[RawFd]) -> Result<Reply, Error> {
        self.inner.request(command, payload, fds)
    }

    /// Like [`Connection::request`] with an explicit deadline.
    pub fn request_with_timeout(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
        timeout: Duration,
    ) -> Result<Reply, Error> {
        self.inner
            .request_with_timeout(command, payload, fds, timeout)
    }

    /// Like [`Connection::request`], but the reply's data may be read straight into `data`:
    /// see [`Connection::wait_into`].
    pub fn request_into(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
        head_len: usize,
        data: &mut [u8],
    ) -> Result<Reply, Error> {
        self.inner
            .request_into(command, payload, fds, head_len, data)
    }

    /// Sends a command whose reply is collected later (NOWAIT).
    pub fn send_request(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<PendingReply, Error> {
        self.inner.send_request(command, payload, fds)
    }

    /// Waits for a NOWAIT request's reply, until the connection's reply timeout has passed
    /// since it was sent.
    pub fn wait(&self, pending: PendingReply) -> Result<Reply, Error> {
        self.inner.wait(pending)
    }

    /// Like [`Connection::wait`], but when this thread reads the reply itself and its
    /// payload is exactly `head_len + data.len()` bytes (and it is not an error reply), the
    /// first `head_len` bytes go to the reply's `payload` and the rest straight from the
    /// socket into `data`, without a copy in between: the reply then says
    /// [`data_in_buffer`](Reply::data_in_buffer). Otherwise (another thread read the reply, it
    /// has another size, it is an error) the reply comes buffered as from `wait`, and
    /// `data` is left alone.
    ///
    /// `data` is written only during this call, by this thread. After an error its content
    /// is unspecified (a reply that times out half-way through its data leaves part of it
    /// there; the rest is drained from the socket by whoever reads next).
    pub fn wait_into(
        &self,
        pending: PendingReply,
        head_len: usize,
        data: &mut [u8],
    ) -> Result<Reply, Error> {
        self.inner.wait_into(pending, head_len, data)
    }

    /// Waits for every reply of a batch, in order. The server processes commands in order,
    /// so this waits in effect for the youngest; every request's result is returned, errors
    /// included.
    pub fn wait_all(&self, pending: Vec<PendingReply>) -> Vec<Result<Reply, Error>> {
        self.inner.wait_all(pending)
    }

    /// Sends a command with `No_reply` set (ASYNC): nobody waits, and an error the server
    /// meets is not reported.
    pub fn send_no_reply(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(), Error> {
        self.inner.send_no_reply(command, payload, fds)
    }

    /// Installs the handler for server requests. Without one, every server request gets an
    /// `ENOSYS` error reply.
    pub fn set_request_handler(&self, handler: Option<Arc<dyn ServerRequestHandler>>) {
        self.inner
            .set_request_handler(handler.map(|h| Arc::new(OwnersHandler(h)) as Arc<dyn Responder>))
    }

    /// Registers a callback run once, on the thread that notices, when the connection ends.
    /// Runs at once if it has already ended.
    pub fn on_disconnect(&self, callback: impl Fn(&DisconnectReason) + Send + Sync + 'static) {
        self.inner.on_disconnect(callback)
    }

    /// An eventfd that becomes readable when the connection ends (for an owner's event loop).
    pub fn disconnect_event(&self) -> &EventFd {
        &self.inner.disconnect_event
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    /// Why the connection ended, if it has.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.inner.disconnect_reason()
    }

    /// How the connection is doing: healthy, unresponsive (a request went unanswered past
    /// its deadline, and requests fail at once until its late reply arrives), or lost. See
    /// the [module documentation](self#deadlines-and-health).
    pub fn health(&self) -> Health {
        self.inner.health()
    }

    /// An eventfd signalled whenever [`Connection::health`] changes (for an owner's event
    /// loop: read it, then look at the health).
    pub fn health_event(&self) -> &EventFd {
        &self.inner.health_event
    }

    /// Shuts the connection down: waiters fail with `Disconnected(Shutdown)`.
    pub fn shutdown(&self) {
        self.inner.fail(DisconnectReason::Shutdown);
    }

    /// Number of messages waiting in the send queue (for tests and statistics).
    pub fn queued_messages(&self) -> usize {
        self.inner.queued_messages()
    }

    /// Posts a REGION_WRITE (`No_reply`), coalesced into a REGION_WRITE_MULTI with `entry`
    /// when messages wait in the send queue (see `multi.rs`).
    pub(crate) fn post_write(
        &self,
        payload: &[u8],
        entry: Option<&crate::protocol::WriteMultiEntry>,
    ) -> Result<(), Error> {
        self.inner.post_write(payload, entry)
    }

    /// Bounds every reply wait of this thread to one reply timeout from now, until dropped:
    /// for an operation made of several requests (see `budget.rs`).
    pub(crate) fn budget(&self) -> Budget {
        Budget::start(self.inner.settings.reply_timeout)
    }

    /// A handle on the connection for a layer that keeps it (see [`Handle`]).
    pub(crate) fn handle(&self) -> Handle {
        Arc::clone(&self.inner)
    }

    /// Largest message (header included) accepted from the server.
    pub(crate) fn max_recv_size(&self) -> u32 {
        self.inner.settings.max_recv_size
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.inner.fail(DisconnectReason::Shutdown);
        self.event_loop.take();
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
    /// The reply's data went straight into the `data` passed to [`Connection::wait_into`] or
    /// [`Connection::request_into`], and `payload` holds only the head before it. Always
    /// `false` otherwise.
    pub data_in_buffer: bool,
}
