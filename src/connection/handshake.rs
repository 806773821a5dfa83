// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VERSION handshake, the first exchange of every connection, and the limits it sets.
//!
//! Capability values describe what their sender can receive: what we offer bounds what the
//! server may send us (our receive limits, [`Settings`]), and the server's answer bounds
//! what we send.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::twin::TwinSubscriber;
use super::{ConnectOptions, Inner, Settings};
use crate::negotiate::{Capabilities, NegotiateError, TwinSocketGrant};
use crate::protocol::Command;
use crate::Error;

/// Room for the fixed heads of data-carrying messages (REGION_WRITE, DMA_READ reply, ...)
/// on top of `max_data_xfer_size`, and for capability chains and other bounded replies.
const MESSAGE_HEAD_ROOM: usize = 64 << 10;

/// `max_data_xfer_size` bytes of data and the room for a message's head.
fn message_limit(max_data_xfer_size: u32) -> usize {
    (max_data_xfer_size as usize).saturating_add(MESSAGE_HEAD_ROOM)
}

impl From<&ConnectOptions> for Settings {
    fn from(options: &ConnectOptions) -> Self {
        let max = message_limit(options.offer.max_data_xfer_size);
        Settings {
            reply_timeout: options.reply_timeout,
            max_recv_size: u32::try_from(max).unwrap_or(u32::MAX),
            max_recv_fds: options.offer.max_msg_fds as usize,
            busy_poll: options.busy_poll,
        }
    }
}

/// Sends VERSION (the first message of a connection) and applies the server's answer: the
/// connection then sends at most `max_msg_fds` fds and `max_data_xfer_size` data bytes per
/// message. When we offered twin-socket mode and the server granted it, returns the
/// subscriber serving the second socket, which must run beside the connection's own.
pub(super) fn handshake(
    inner: &Arc<Inner>,
    options: &ConnectOptions,
) -> Result<(Capabilities, Option<TwinSubscriber>), Error> {
    let payload = options.offer.version_payload();
    let mut reply =
        inner.request_with_timeout(Command::Version, &payload, &[], options.handshake_timeout)?;
    let capabilities = Capabilities::from_reply(&options.offer, &reply.payload)?;
    let fd_index = match capabilities.twin_socket_grant() {
        TwinSocketGrant::Granted { fd_index } => Some(fd_index),
        TwinSocketGrant::GrantedWithoutFd => None,
        // Any fd the server sent is closed with the reply.
        TwinSocketGrant::NotGranted => return Ok(finish(inner, capabilities, None)),
    };
    if !options.offer.twin_socket {
        return Ok(finish(inner, capabilities, None));
    }
    let fds = reply.fds.len();
    let bad = || NegotiateError::TwinSocketFd { fd_index, fds };
    let index = fd_index
        .and_then(|i| usize::try_from(i).ok())
        .filter(|&i| i < fds)
        .ok_or_else(bad)?;
    let sock = UnixStream::from(reply.fds.swap_remove(index));
    let twin = inner.attach_twin_socket(sock).map_err(|e| {
        log::warn!("twin socket unusable: {e}");
        bad()
    })?;
    Ok(finish(inner, capabilities, Some(twin)))
}

/// Applies the server's limits to what we send.
fn finish(
    inner: &Inner,
    capabilities: Capabilities,
    twin: Option<TwinSubscriber>,
) -> (Capabilities, Option<TwinSubscriber>) {
    inner.set_send_limits(
        capabilities.max_msg_fds as usize,
        message_limit(capabilities.max_data_xfer_size),
    );
    log::debug!("negotiated {capabilities:?}");
    (capabilities, twin)
}
