// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The single caller's fast path: a WAIT request made while nobody reads.
//!
//! A caller that finds the receive lock free takes it *before* it sends, and keeps it until
//! its reply has come (or its deadline has passed). Nobody else can read meanwhile, so
//! nobody else can meet its reply: the request needs no completion and no entry in the
//! pending table, and its reply is taken straight off the framer by the caller ([`Solo`])
//! instead of going through the table and a completion's mutex. Everything else it reads
//! is dispatched as any reader does: other waiters' replies to them (they sleep as
//! followers meanwhile, woken when the lock is let go, as after any reader), the server's
//! requests to the handler.
//!
//! The request's id is reserved ([`Inner::solo_id`]) under the table's lock while it is
//! picked, among the ids not in the table and not overdue, so that no request registered
//! meanwhile gets it. Everything else is as on the usual path: the send checks
//! (`check_send` fails fast while the connection is unresponsive), the deadline capped by
//! the thread's budget, and a request whose deadline passes is overdue and makes the
//! connection unresponsive before the receive lock is let go, so that its late reply, by
//! whoever reads it, makes the connection healthy again.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use super::budget;
use super::framer::{Framer, Incoming, Quick, ReplyBuffer};
use super::inner::Inner;
use super::pending::{reply_may_carry_fds, reply_result, NO_REPLY_ID_BIT};
use super::send::command_header;
use super::wait::{next_buffer_token, Awaited, BLOCKING_READ_SLICE};
use super::{Error, Reply};
use crate::protocol::{Command, Header, MessageType};
use crate::sync::lock;

/// A solo reader's plain read, ended when this is dropped (see
/// [`Inner::end_plain_read`]), so that no path can leave it on.
pub(super) struct PlainRead<'a>(&'a Inner);

impl Drop for PlainRead<'_> {
    fn drop(&mut self) {
        self.0.end_plain_read();
    }
}

/// [`Inner::solo_id`] when no solo request is under way.
pub(super) const NO_SOLO: u32 = u32::MAX;

/// A solo request waiting for its reply: its id, its command, and the result once read.
#[derive(Debug)]
struct Solo {
    id: u16,
    command: Command,
    result: Option<Result<Reply, Error>>,
}

/// Whether a message with the request's id answers it, as `dispatch` decides: a reply, or
/// (older rust-vmm servers) a command with the Error bit.
fn answers(header: &Header) -> bool {
    header.message_type() == Some(MessageType::Reply) || header.is_error()
}

impl Awaited for Solo {
    fn is_done(&self) -> bool {
        self.result.is_some()
    }

    fn claim(&mut self, incoming: Incoming) -> Option<Incoming> {
        if self.result.is_some() {
            // A second answer is dropped by `dispatch` as unsolicited.
            return Some(incoming);
        }
        match incoming {
            Incoming::Message(msg) if msg.header.id == self.id && answers(&msg.header) => {
                log::debug!("recv {} fds={}", msg.header, msg.fds.len());
                self.result = Some(reply_result(self.command, msg));
                None
            }
            Incoming::Discarded { header, why }
                if header.id == self.id && header.message_type() != Some(MessageType::Command) =>
            {
                log::warn!("dropped message {header}: {why}");
                self.result = Some(Err(Error::BadReply {
                    command: self.command,
                    what: why,
                }));
                None
            }
            other => Some(other),
        }
    }
}

impl Inner {
    /// A WAIT request on the fast path, with the receive lock (`framer`) taken before the
    /// send; with `into`, the reply's data may go straight into the caller's buffer (see
    /// [`Connection::wait_into`](super::Connection::wait_into)).
    ///
    /// The caller must hold a `Waiting` guard.
    pub(super) fn request_solo(
        &self,
        mut framer: MutexGuard<'_, Framer>,
        command: Command,
        payload: &[u8],
        fds: &[std::os::fd::RawFd],
        timeout: Duration,
        into: Option<(usize, &mut [u8])>,
    ) -> Result<Reply, Error> {
        let result = self.solo_round_trip(&mut framer, command, payload, fds, timeout, into);
        drop(framer);
        // As after any reader: followers that found the lock taken try it again.
        self.after_reading();
        result
    }

    fn solo_round_trip(
        &self,
        framer: &mut Framer,
        command: Command,
        payload: &[u8],
        fds: &[std::os::fd::RawFd],
        timeout: Duration,
        into: Option<(usize, &mut [u8])>,
    ) -> Result<Reply, Error> {
        let started = Instant::now();
        self.check_send(command, payload.len(), fds.len())?;
        let deadline = budget::cap(started + timeout);
        // Without busy polling, the first read may wait for the reply at once, as `lead`
        // would (it waits in `poll` instead only this close to the deadline).
        let quick = self.settings.busy_poll.is_zero()
            && deadline
                .checked_sub(2 * BLOCKING_READ_SLICE)
                .is_some_and(|b| started <= b);
        let (id, plain) = self.reserve_solo_id(command, quick)?;
        // Ends the plain read, if any, whichever way this call goes on.
        let plain = plain.then_some(PlainRead(self));
        let sent = command_header(id, command, payload.len(), false)
            .and_then(|header| self.send(&header, payload, fds));
        if let Err(e) = sent {
            drop(plain);
            self.solo_id.store(NO_SOLO, Ordering::Relaxed);
            return Err(e);
        }
        let mut solo = Solo {
            id,
            command,
            result: None,
        };
        let mut buffer = into.map(|(head_len, data)| ReplyBuffer {
            token: next_buffer_token(),
            id,
            command: command as u16,
            head_len,
            data,
        });
        let mut now = started;
        if quick {
            self.quick_read(framer, &mut solo, plain, buffer.as_mut());
            if solo.result.is_none() {
                // The read may have waited up to the receive timeout.
                now = Instant::now();
            }
        }
        // Every reader leaves nothing complete in the framer: with the reply taken, or the
        // connection lost, there is nothing left to read or dispatch.
        while solo.result.is_none() && self.is_connected() {
            self.lead(framer, &mut solo, deadline, now, buffer.as_mut());
            if solo.result.is_some() {
                break;
            }
            now = Instant::now();
            if now >= deadline {
                break;
            }
        }
        // The buffer must not outlive this hold of the lock: the rest of a reply cut short
        // is drained by the next reader (it is the late reply).
        if let Some(b) = &buffer {
            framer.abandon_buffer(b.token);
        }
        let result = match solo.result.take() {
            Some(result) => result,
            None if !self.is_connected() => Err(Error::Disconnected(self.reason())),
            None => Err(self.solo_timed_out(&solo, deadline.saturating_duration_since(started))),
        };
        self.solo_id.store(NO_SOLO, Ordering::Relaxed);
        result
    }

    /// The first read of a solo request, waiting for data: usually the whole reply (see
    /// [`Framer::quick_reply`]); `lead` takes over otherwise. A plain read ends here,
    /// before anything is dispatched.
    fn quick_read(
        &self,
        framer: &mut Framer,
        solo: &mut Solo,
        plain: Option<PlainRead<'_>>,
        buffer: Option<&mut ReplyBuffer<'_>>,
    ) {
        let expected = (solo.id, solo.command as u16);
        let quick = framer.quick_reply(&self.sock, (true, plain.is_some()), expected, buffer);
        drop(plain);
        match quick {
            Quick::Reply(msg) => {
                log::debug!("recv {} fds={}", msg.header, msg.fds.len());
                solo.result = Some(reply_result(solo.command, msg));
            }
            Quick::Failed(reason) => self.fail(reason),
            Quick::Fallback => {}
        }
    }

    /// Picks an id for a solo request, as `register` does, and reserves it. With `quick`
    /// (its first read is [`quick_read`](Self::quick_read)), also says whether that
    /// read may be plain, taking no fds: when the command's reply carries none and no other
    /// request waits; [`Inner::plain_read`] then keeps requests whose replies may carry fds
    /// out of the table until the read is over.
    fn reserve_solo_id(&self, command: Command, quick: bool) -> Result<(u16, bool), Error> {
        let table = lock(&self.waiters);
        if table.len() + self.reserved_ids() >= usize::from(NO_REPLY_ID_BIT) {
            return Err(Error::TooManyPending);
        }
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) & !NO_REPLY_ID_BIT;
            if self.is_overdue_id(id) || table.contains_key(&id) {
                continue;
            }
            self.solo_id.store(u32::from(id), Ordering::Relaxed);
            // Not while a request waits for a plain read to end: it would wait for ever
            // behind a caller that keeps making requests.
            let plain = quick
                && table.is_empty()
                && self.plain_waiters.load(Ordering::SeqCst) == 0
                && !reply_may_carry_fds(command);
            if plain {
                self.plain_read.store(true, Ordering::SeqCst);
            }
            return Ok((id, plain));
        }
    }

    /// Whether `id` is a solo request's (called with the table's lock held).
    pub(super) fn is_solo_id(&self, id: u16) -> bool {
        self.solo_id.load(Ordering::Relaxed) == u32::from(id)
    }

    /// The solo request's deadline passed: as `timed_out` for a request in the table, it is
    /// overdue (before the receive lock is let go, so before anyone can read its reply).
    fn solo_timed_out(&self, solo: &Solo, timeout: Duration) -> Error {
        let newly = self.mark_overdue(solo.command, solo.id);
        log::warn!(
            "reply to {} (id {}) timed out after {:?}",
            solo.command,
            solo.id,
            timeout
        );
        if newly {
            self.announce_unresponsive();
        }
        Error::Timeout {
            command: solo.command,
            id: solo.id,
            after: timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;
    use crate::connection::pending::Completion;
    use crate::connection::testing::{pair, read_request};
    use crate::connection::Health;

    /// A reply to `request` with a 16-byte head and `len` bytes of data.
    fn reply(request: &Header, len: usize) -> Vec<u8> {
        let payload: Vec<u8> = (0..16 + len).map(|i| (i * 7 + 3) as u8).collect();
        let mut bytes = Header::reply(request, payload.len())
            .unwrap()
            .to_bytes()
            .to_vec();
        bytes.extend_from_slice(&payload);
        bytes
    }

    #[test]
    fn a_solo_request_hands_other_replies_over_and_leaves_no_trace() {
        let (inner, _sub, mut server) = pair(Duration::from_secs(5));
        let pending = inner.send_request(Command::RegionRead, b"p", &[]).unwrap();
        let peer = std::thread::spawn(move || {
            let first = read_request(&mut server);
            let second = read_request(&mut server);
            // The pipelined request's reply first, then the solo one's.
            server.write_all(&reply(&first, 4)).unwrap();
            server.write_all(&reply(&second, 8)).unwrap();
            (first, second, server)
        });
        let got = inner.request(Command::RegionRead, b"s", &[]).unwrap();
        let (first, second, _server) = peer.join().unwrap();
        assert_eq!(got.header.id, second.id);
        assert_eq!(got.payload.len(), 24);
        assert_ne!(first.id, second.id);
        assert_eq!(inner.solo_id.load(Ordering::Relaxed), NO_SOLO);
        assert!(
            pending.completion.is_done(),
            "handed over by the solo reader"
        );
        assert_eq!(inner.wait(pending).unwrap().payload.len(), 20);
        assert!(lock(&inner.waiters).is_empty());
    }

    #[test]
    fn a_solo_request_cut_short_leaves_the_stream_in_step() {
        let (inner, _sub, mut server) = pair(Duration::from_millis(150));
        let peer = std::thread::spawn(move || {
            let request = read_request(&mut server);
            (request, server)
        });
        let mut out = vec![0u8; 50_000];
        // The reply's first half comes in time, the rest late.
        let writer = {
            let inner = Arc::clone(&inner);
            std::thread::spawn(move || {
                let (request, mut server) = peer.join().unwrap();
                let bytes = reply(&request, 50_000);
                server.write_all(&bytes[..bytes.len() / 2]).unwrap();
                while inner.health() == Health::Healthy {
                    std::thread::sleep(Duration::from_millis(5));
                }
                server.write_all(&bytes[bytes.len() / 2..]).unwrap();
                server
            })
        };
        let e = inner
            .request_into(Command::RegionRead, b"r", &[], 16, &mut out)
            .unwrap_err();
        let Error::Timeout { id, .. } = e else {
            panic!("{e:?}");
        };
        assert!(matches!(inner.health(), Health::Unresponsive(o) if o.id == id));
        assert!(matches!(
            inner.request(Command::RegionRead, b"x", &[]),
            Err(Error::Unresponsive { .. })
        ));
        let mut server = writer.join().unwrap();
        // The late rest is drained by the next reader: healthy again, and in step.
        while inner.health() != Health::Healthy {
            inner.read_late_reply();
            std::thread::sleep(Duration::from_millis(5));
        }
        let peer = std::thread::spawn(move || {
            let request = read_request(&mut server);
            server.write_all(&reply(&request, 1000)).unwrap();
            server
        });
        let mut out = vec![0u8; 1000];
        let got = inner
            .request_into(Command::RegionRead, b"r", &[], 16, &mut out)
            .unwrap();
        assert!(got.data_in_buffer);
        drop(peer.join().unwrap());
        assert_eq!(inner.solo_id.load(Ordering::Relaxed), NO_SOLO);
    }

    #[test]
    fn requests_whose_replies_carry_fds_wait_out_a_plain_read() {
        use crate::connection::socket::send_with_fds;
        use std::os::fd::AsRawFd;

        let (inner, _sub, mut server) = pair(Duration::from_secs(5));
        let solo = {
            let inner = Arc::clone(&inner);
            std::thread::spawn(move || inner.request(Command::RegionWrite, b"w", &[]))
        };
        let first = read_request(&mut server);
        // Its reader now reads without taking fds, until its reply comes.
        assert!(inner.plain_read.load(Ordering::SeqCst));
        // A request whose reply carries no fds goes out meanwhile ...
        let other = inner.send_request(Command::RegionRead, b"r", &[]).unwrap();
        assert_eq!(
            read_request(&mut server).command,
            Command::RegionRead as u16
        );
        // ... one whose reply may carry fds waits until the read is over: the reader's
        // receive timeout ends it, and the reader goes on with reads that take fds.
        let info = {
            let inner = Arc::clone(&inner);
            std::thread::spawn(move || {
                let pending = inner
                    .send_request(Command::DeviceGetRegionInfo, b"i", &[])
                    .unwrap();
                inner.wait(pending)
            })
        };
        let request = read_request(&mut server);
        assert_eq!(request.command, Command::DeviceGetRegionInfo as u16);
        assert!(!inner.plain_read.load(Ordering::SeqCst));
        // Its reply, fd and all, comes before the solo one's, to the solo reader.
        let fd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        send_with_fds(&server, &[&reply(&request, 0)], &[fd.as_raw_fd()]).unwrap();
        server.write_all(&reply(&first, 0)).unwrap();
        assert_eq!(info.join().unwrap().unwrap().fds.len(), 1);
        assert_eq!(solo.join().unwrap().unwrap().header.id, first.id);
        drop(other);
    }

    #[test]
    fn registered_requests_never_get_the_solo_id() {
        let (inner, _sub, _server) = pair(Duration::from_secs(5));
        inner.next_id.store(7, Ordering::Relaxed);
        inner.solo_id.store(7, Ordering::Relaxed);
        let completion = Arc::new(Completion::new(Command::RegionRead));
        assert_eq!(inner.register(&completion).unwrap(), 8);
    }
}
