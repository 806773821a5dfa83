// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A negotiated connection: connect, VERSION handshake, and the resulting [`Capabilities`].

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::negotiate::{negotiate_reply, Capabilities, Offer};
use crate::protocol::Command;
use crate::proxy::{EventLoop, Proxy, ProxyConfig, ProxySubscriber, DEFAULT_REPLY_TIMEOUT};
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
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: DEFAULT_REPLY_TIMEOUT,
            handshake_timeout: DEFAULT_REPLY_TIMEOUT,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            offer: Offer::default(),
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
        }
    }
}

/// A connection to a vfio-user server whose VERSION handshake succeeded.
#[derive(Debug)]
pub struct Connection {
    proxy: Proxy,
    capabilities: Capabilities,
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
    /// own [`event_manager::EventManager`]. The handshake does not need the subscriber to
    /// run yet: the caller's thread reads its own reply.
    ///
    /// When the connection ends (dropped, or lost) the subscriber stops watching the socket
    /// by itself, but it keeps the socket open until the VMM removes it from its event
    /// manager (`SubscriberOps::remove_subscriber`).
    pub fn connect_with_subscriber(
        path: impl AsRef<Path>,
        options: &ConnectOptions,
    ) -> Result<(Connection, ProxySubscriber), Error> {
        let (proxy, subscriber) = Proxy::connect(
            path.as_ref(),
            options.connect_timeout,
            options.proxy_config(),
        )?;
        let capabilities = handshake(&proxy, options)?;
        Ok((
            Connection {
                proxy,
                capabilities,
                event_loop: None,
            },
            subscriber,
        ))
    }

    fn standalone(
        proxy: Proxy,
        subscriber: ProxySubscriber,
        options: &ConnectOptions,
    ) -> Result<Connection, Error> {
        let event_loop = EventLoop::spawn(subscriber)?;
        let capabilities = handshake(&proxy, options)?;
        Ok(Connection {
            proxy,
            capabilities,
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
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.proxy.shutdown();
        self.event_loop.take();
    }
}

/// Sends VERSION (the first message of a connection) and applies the server's answer:
/// the proxy then sends at most `max_msg_fds` fds and `max_data_xfer_size` data bytes per
/// message.
pub fn handshake(proxy: &Proxy, options: &ConnectOptions) -> Result<Capabilities, Error> {
    let payload = options.offer.version_payload();
    let reply =
        proxy.request_with_timeout(Command::Version, &payload, &[], options.handshake_timeout)?;
    // We do not offer twin_socket yet; any fd the server sent is closed with the reply.
    let capabilities = negotiate_reply(&options.offer, &reply.payload)?;
    proxy.set_send_limits(
        capabilities.max_msg_fds as usize,
        (capabilities.max_data_xfer_size as usize).saturating_add(MESSAGE_HEAD_ROOM),
    );
    log::debug!("negotiated {capabilities:?}");
    Ok(capabilities)
}
