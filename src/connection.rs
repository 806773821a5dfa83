// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A negotiated connection: connect, VERSION handshake, and the resulting [`Capabilities`].

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::negotiate::{negotiate_reply, Capabilities, NegotiateError, Offer};
use crate::protocol::Command;
use crate::proxy::{
    default_busy_poll, ConnectionSubscriber, EventLoop, Proxy, ProxyConfig, ProxySubscriber,
    TwinSubscriber, DEFAULT_REPLY_TIMEOUT,
};
use crate::Error;

/// Room for the fixed heads of data-carrying messages (REGION_WRITE, DMA_READ reply, ...)
/// on top of `max_data_xfer_size`, and for capability chains and other bounded replies.
const MESSAGE_HEAD_ROOM: usize = 64 << 10;

/// How to connect and what to offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    /// How long to wait for the server to accept the connection.
    pub connect_timeout: Duration,
    /// Deadline of the VERSION handshake.
    pub handshake_timeout: Duration,
    /// Deadline of each later request's reply.
    pub reply_timeout: Duration,
    /// The capabilities we advertise.
    pub offer: Offer,
    /// How long a caller polls for its reply before it sleeps
    /// ([`ProxyConfig::busy_poll`]; by default [`default_busy_poll`]).
    pub busy_poll: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: DEFAULT_REPLY_TIMEOUT,
            handshake_timeout: DEFAULT_REPLY_TIMEOUT,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            offer: Offer::default(),
            busy_poll: default_busy_poll(),
        }
    }
}

impl ConnectOptions {
    fn proxy_config(&self) -> ProxyConfig {
        let max = (self.offer.max_data_xfer_size as usize).saturating_add(MESSAGE_HEAD_ROOM);
        ProxyConfig {
            reply_timeout: self.reply_timeout,
            max_recv_size: u32::try_from(max).unwrap_or(u32::MAX),
            max_recv_fds: self.offer.max_msg_fds as usize,
            busy_poll: self.busy_poll,
        }
    }
}

/// A connection to a vfio-user server whose VERSION handshake succeeded.
#[derive(Debug)]
pub struct Connection {
    proxy: Proxy,
    capabilities: Capabilities,
    offer: Offer,
    twin_socket: bool,
    // Dropped after `proxy`'s fields are no longer needed by it: declared last.
    event_loop: Option<EventLoop>,
}

impl Connection {
    /// Connects to the server at `path`, runs the connection's subscriber on a thread of its
    /// own, and negotiates. For tools and tests; a VMM uses
    /// [`Connection::connect_with_subscriber`].
    pub fn connect(path: impl AsRef<Path>, options: &ConnectOptions) -> Result<Connection, Error> {
        let (proxy, subscriber) = Proxy::connect(
            path.as_ref(),
            options.connect_timeout,
            options.proxy_config(),
        )?;
        Connection::standalone(proxy, subscriber, options)
    }

    /// Like [`Connection::connect`] over an already connected stream.
    pub fn from_stream(stream: UnixStream, options: &ConnectOptions) -> Result<Connection, Error> {
        let (proxy, subscriber) = Proxy::from_stream(stream, options.proxy_config())?;
        Connection::standalone(proxy, subscriber, options)
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
        path: impl AsRef<Path>,
        options: &ConnectOptions,
    ) -> Result<(Connection, ConnectionSubscriber), Error> {
        let (proxy, subscriber) = Proxy::connect(
            path.as_ref(),
            options.connect_timeout,
            options.proxy_config(),
        )?;
        let (capabilities, twin) = handshake(&proxy, options)?;
        Ok((
            Connection {
                proxy,
                capabilities,
                offer: options.offer.clone(),
                twin_socket: twin.is_some(),
                event_loop: None,
            },
            ConnectionSubscriber::new(subscriber, twin),
        ))
    }

    fn standalone(
        proxy: Proxy,
        subscriber: ProxySubscriber,
        options: &ConnectOptions,
    ) -> Result<Connection, Error> {
        // As with a VMM's event manager, the loop starts after the handshake, whose reply the
        // caller reads itself; the twin socket (if granted) is then served in the same loop.
        let result = handshake(&proxy, options);
        let (capabilities, twin) = match result {
            Ok(r) => r,
            Err(e) => {
                proxy.shutdown();
                return Err(e);
            }
        };
        let twin_socket = twin.is_some();
        let event_loop = EventLoop::spawn(ConnectionSubscriber::new(subscriber, twin))?;
        Ok(Connection {
            proxy,
            capabilities,
            offer: options.offer.clone(),
            twin_socket,
            event_loop: Some(event_loop),
        })
    }

    /// The connection, for sending requests.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
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
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.proxy.shutdown();
        self.event_loop.take();
    }
}

/// Sends VERSION (the first message of a connection) and applies the server's answer:
/// the proxy then sends at most `max_msg_fds` fds and `max_data_xfer_size` data bytes per
/// message. When we offered twin-socket mode and the server granted it, returns the
/// subscriber serving the second socket, which must run beside the connection's own
/// ([`ConnectionSubscriber`]).
pub fn handshake(
    proxy: &Proxy,
    options: &ConnectOptions,
) -> Result<(Capabilities, Option<TwinSubscriber>), Error> {
    let payload = options.offer.version_payload();
    let mut reply =
        proxy.request_with_timeout(Command::Version, &payload, &[], options.handshake_timeout)?;
    let capabilities = negotiate_reply(&options.offer, &reply.payload)?;
    let twin = match capabilities.twin_socket_granted() {
        Some(fd_index) if options.offer.twin_socket => {
            let fds = reply.fds.len();
            let bad = || NegotiateError::TwinSocketFd { fd_index, fds };
            let index = fd_index
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < fds)
                .ok_or_else(bad)?;
            let sock = UnixStream::from(reply.fds.swap_remove(index));
            Some(proxy.attach_twin_socket(sock).map_err(|e| {
                log::warn!("twin socket unusable: {e}");
                bad()
            })?)
        }
        // Any other fd the server sent is closed with the reply.
        _ => None,
    };
    proxy.set_send_limits(
        capabilities.max_msg_fds as usize,
        (capabilities.max_data_xfer_size as usize).saturating_add(MESSAGE_HEAD_ROOM),
    );
    log::debug!("negotiated {capabilities:?}");
    Ok((capabilities, twin))
}
