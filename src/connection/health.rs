// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Whether the server answers: the connection's [`Health`], and what it changes.
//!
//! A server processes its messages in order. So when one request's deadline passes without
//! a reply, every request sent after it would wait behind it too: the connection becomes
//! **unresponsive**, and from then on nothing new is sent. Requests and `No_reply`
//! messages fail at once with [`Error::Unresponsive`], which names the overdue request;
//! callers that were already waiting keep their own deadlines. Replies to the server's own
//! requests still go out (the server may need a DMA reply to finish the overdue request).
//!
//! The connection is **healthy** again when the overdue request's late reply arrives
//! (success or error, read whole or drained): the server has then processed everything
//! sent before it, and the stream is in step. The reply itself is dropped, as every reply
//! whose waiter gave up is. Its id is not handed out again while it is overdue, so the late
//! reply cannot complete another request. Other late replies change nothing.
//!
//! The late reply is read as soon as it comes: by a waiting caller, or else by the event
//! loop (on a twin-socket connection, whose main socket normally wakes the event loop only
//! on a hang-up, data wakes it again while the connection is unresponsive). A WAIT request
//! ([`Connection::request`](super::Connection::request)) about to fail fast first reads
//! what the socket holds, if nobody else reads, so a late reply that came before it is not
//! missed even when no event loop runs. A connection that ends is **lost**, whatever its
//! health was; reconnecting is for the owner (a new connection).
//!
//! Each change of state signals [`Connection::health_event`](super::Connection::health_event).

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::error::io_reason;
use super::inner::Inner;
use super::{DisconnectReason, Error};
use crate::protocol::{Command, Header, MessageType};
use crate::sync::{lock, try_lock};

/// Most framer steps (messages, or reads of a large one) a caller takes to look for the late
/// reply before it fails fast.
const LATE_READ_STEPS: usize = 64;

/// How the connection is doing (see [`Connection::health`](super::Connection::health)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Requests are sent and answered.
    Healthy,
    /// A request went unanswered past its deadline: nothing new is sent (requests fail with
    /// [`Error::Unresponsive`]) until its late reply arrives.
    Unresponsive(Overdue),
    /// The connection has ended; a new one is needed.
    Lost(DisconnectReason),
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::Unresponsive(o) => write!(
                f,
                "unresponsive: {} (id {}) unanswered for {:?}",
                o.command,
                o.id,
                o.since.elapsed()
            ),
            Health::Lost(reason) => write!(f, "lost: {reason}"),
        }
    }
}

/// The request whose reply made the connection unresponsive by not coming in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overdue {
    /// The request's command.
    pub command: Command,
    /// The request's message id.
    pub id: u16,
    /// When its deadline passed.
    pub since: Instant,
}

impl Inner {
    /// See [`Connection::health`](super::Connection::health).
    pub(crate) fn health(&self) -> Health {
        if let Some(reason) = self.disconnect_reason() {
            return Health::Lost(reason);
        }
        match *lock(&self.overdue) {
            Some(overdue) => Health::Unresponsive(overdue),
            None => Health::Healthy,
        }
    }

    /// A request's deadline passed without its reply: the connection is unresponsive from
    /// now on, until that reply comes (unless it already was, for an earlier request: the
    /// server answers that one first). Called with the pending table locked, before the
    /// request leaves it; returns whether the connection became unresponsive, which the
    /// caller then announces ([`announce_unresponsive`](Self::announce_unresponsive)) once
    /// it has let go of the table.
    pub(super) fn mark_overdue(&self, command: Command, id: u16) -> bool {
        let mut overdue = lock(&self.overdue);
        if overdue.is_some() || !self.is_connected() {
            return false;
        }
        *overdue = Some(Overdue {
            command,
            id,
            since: Instant::now(),
        });
        self.responsive.store(false, Ordering::Release);
        true
    }

    /// After [`mark_overdue`](Self::mark_overdue): tells the owner, and has the late reply
    /// watched for.
    pub(super) fn announce_unresponsive(&self) {
        let overdue = lock(&self.overdue);
        // Unless the late reply came meanwhile.
        let Some(o) = *overdue else {
            return;
        };
        log::warn!(
            "vfio-user server unresponsive: {} (id {}) unanswered; requests fail at once \
             until it answers",
            o.command,
            o.id
        );
        // Under the lock, so that a recovery cannot overtake this change of the watch.
        let watched = self.watch.expect_late_reply(true);
        drop(overdue);
        let _ = self.health_event.write(1);
        if let Err(e) = watched {
            // The late reply would go unnoticed while nobody waits.
            self.fail(io_reason(&e));
        }
    }

    /// A reply that no waiter claimed (`header` as read, possibly undecodable): if it is the
    /// overdue request's, the server has caught up and the connection is healthy again.
    /// Returns whether it was.
    pub(super) fn late_reply(&self, header: &Header) -> bool {
        if self.responsive.load(Ordering::Acquire)
            || (header.message_type() == Some(MessageType::Command) && !header.is_error())
        {
            return false;
        }
        let mut overdue = lock(&self.overdue);
        let Some(o) = *overdue else {
            return false;
        };
        if o.id != header.id || o.command as u16 != header.command {
            return false;
        }
        *overdue = None;
        self.responsive.store(true, Ordering::Release);
        log::info!(
            "vfio-user server answered {} (id {}) {:?} late: healthy again",
            o.command,
            o.id,
            o.since.elapsed()
        );
        let watched = self.watch.expect_late_reply(false);
        drop(overdue);
        let _ = self.health_event.write(1);
        if let Err(e) = watched {
            self.fail(io_reason(&e));
        }
        true
    }

    /// Whether `id` belongs to the overdue request (not to be handed out again until its
    /// reply has come).
    pub(super) fn is_overdue_id(&self, id: u16) -> bool {
        !self.responsive.load(Ordering::Acquire) && lock(&self.overdue).is_some_and(|o| o.id == id)
    }

    /// Fails fast with [`Error::Unresponsive`] while the connection is unresponsive.
    pub(super) fn check_responsive(&self, command: Command) -> Result<(), Error> {
        if self.responsive.load(Ordering::Acquire) {
            return Ok(());
        }
        match *lock(&self.overdue) {
            Some(overdue) => Err(Error::Unresponsive { command, overdue }),
            None => Ok(()),
        }
    }

    /// While the connection is unresponsive, reads whatever the socket holds if nobody else
    /// reads: the late reply may be there, unread (the event loop has not run yet, or does
    /// not run), and a request about to fail fast would rather be sent. For callers about
    /// to wait, which read anyway: what is read is dispatched, and server requests among it
    /// are served, so the caller must hold no lock the handler takes (a DMA transaction
    /// sends under its mapping table's lock, and must not come here).
    #[inline]
    pub(super) fn read_late_reply(&self) {
        if !self.responsive.load(Ordering::Acquire) {
            self.read_late_reply_now();
        }
    }

    /// [`read_late_reply`](Self::read_late_reply) once the connection is known unresponsive.
    #[cold]
    fn read_late_reply_now(&self) {
        let Some(mut framer) = try_lock(&self.recv) else {
            return;
        };
        // Bounded, so that a server that keeps sending cannot keep this caller reading;
        // the event loop reads the rest.
        for _ in 0..LATE_READ_STEPS {
            match framer.step(&self.sock, false, None) {
                Ok(Some(incoming)) => self.dispatch(incoming),
                Ok(None) => break,
                Err(reason) => {
                    self.fail(reason);
                    break;
                }
            }
            if self.responsive.load(Ordering::Acquire) {
                break;
            }
        }
        // As every reader does before letting go (see `lead`).
        self.dispatch_buffered(&mut framer, None);
        drop(framer);
        self.after_reading();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::connection::pending::Completion;
    use crate::connection::Settings;

    #[test]
    fn the_overdue_id_is_not_handed_out_again() {
        let (client, _server) = UnixStream::pair().unwrap();
        let settings = Settings {
            reply_timeout: Duration::from_millis(1),
            ..Settings::default()
        };
        let (inner, _sub) = Inner::new(client, settings).unwrap();
        let pending = inner.send_request(Command::RegionRead, b"", &[]).unwrap();
        let id = pending.id();
        assert!(matches!(inner.wait(pending), Err(Error::Timeout { .. })));
        assert!(matches!(inner.health(), Health::Unresponsive(o) if o.id == id));
        assert!(inner.is_overdue_id(id));
        // Even when the ids come round to it (and a request raced past the check).
        inner.next_id.store(id, Ordering::Relaxed);
        let completion = Arc::new(Completion::new(Command::RegionRead));
        assert_eq!(inner.register(&completion).unwrap(), id.wrapping_add(1));
        assert!(format!("{}", inner.health()).starts_with("unresponsive: REGION_READ"));
    }
}
