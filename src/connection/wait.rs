// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Waiting for replies: who reads the socket, and for how long.
//!
//! A caller waiting for its reply takes the receive lock when nobody else reads and reads
//! itself (the leader); callers that find the lock taken sleep until their reply is handed
//! to them or the reader lets go (followers), and one of them then takes over. A leader
//! first polls for [`busy_poll`](super::ConnectOptions::busy_poll) (yielding the CPU
//! between reads), then sleeps in a blocking `recvmsg` in slices of [`BLOCKING_READ_SLICE`],
//! and waits in `poll` with the exact time left near its deadline. While no caller waits the
//! event loop reads instead ([`Inner::read_idle`]).
//!
//! A wait ends at its request's deadline (the reply timeout after the send), or sooner at
//! the end of the thread's [`Budget`](super::budget::Budget); a wait that ends without its
//! reply makes the connection unresponsive (see `health.rs`).
//!
//! # No lost wake-up
//!
//! A follower must not sleep through the moment the reader lets go: its reply would then
//! wait for a reader that never comes. It reads the reader epoch *before* it tries the
//! receive lock, and sleeps only while its slot is empty and the epoch unchanged, checked
//! under its slot's mutex (which the condvar wait releases atomically). A reader that lets
//! go bumps the epoch, then nudges every sleeping waiter under that waiter's mutex. So a
//! follower either sees the new epoch and tries the lock again, or is asleep when the nudge
//! comes.
//!
//! Completions and nudges notify a condvar only when its waiter sleeps (the slot's
//! `sleeping` flag, under its mutex), and a reader skips the nudges when the count of
//! sleepers, read after the bump, is zero. Both the count and the epoch are sequentially
//! consistent, so a follower that counts itself after that read sees the new epoch. An
//! unconditional `notify_one` would be a `futex` call per request.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget;
use super::framer::{Framer, Incoming, ReplyBuffer};
use super::inner::Inner;
use super::pending::{Completion, PendingReply, Slot};
use super::{error, reuse, socket, Error, Reply};
use crate::protocol::Command;
use crate::sync::{lock, try_lock};

/// How long a waiting caller polls for its reply before it sleeps, by default: long enough
/// for a server on another CPU to answer a small request, so that the caller's thread is not
/// put to sleep and woken again (a wake-up on another CPU costs tens of microseconds on a
/// VM). Nothing when the process may run on one CPU only: polling there only delays the
/// server.
pub(super) fn default_busy_poll() -> Duration {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() > 1 => DEFAULT_BUSY_POLL,
        _ => Duration::ZERO,
    }
}

/// [`default_busy_poll`] on a machine with more than one CPU.
const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(25);

/// The socket's receive timeout: the longest a waiting caller sleeps in `recvmsg` before it
/// looks at its deadline again. Closer to the deadline than twice this (the kernel rounds
/// the timeout up to its tick), it waits in `poll` with the exact remaining time instead.
pub(super) const BLOCKING_READ_SLICE: Duration = Duration::from_millis(50);

/// A fresh token for a [`ReplyBuffer`]: tells its transfers apart from every other buffer's.
pub(super) fn next_buffer_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What a reader reads for: the completion of a request in the pending table, to which
/// whoever reads hands its reply, or a request outside the table (`solo.rs`), whose reply
/// only its own caller, the reader, can take.
pub(super) trait Awaited {
    /// Whether the result is there.
    fn is_done(&self) -> bool;
    /// Keeps `incoming` if it is the awaited reply; otherwise gives it back, to be
    /// dispatched.
    fn claim(&mut self, incoming: Incoming) -> Option<Incoming>;
}

impl Awaited for Option<&Completion> {
    fn is_done(&self) -> bool {
        self.is_some_and(Completion::is_done)
    }

    fn claim(&mut self, incoming: Incoming) -> Option<Incoming> {
        // Dispatching hands the reply to the completion, through the pending table.
        Some(incoming)
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
    /// See [`Connection::request`](super::Connection::request).
    pub(crate) fn request(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<Reply, Error> {
        self.request_with_timeout(command, payload, fds, self.settings.reply_timeout)
    }

    /// See [`Connection::request_with_timeout`](super::Connection::request_with_timeout).
    pub(crate) fn request_with_timeout(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
        timeout: Duration,
    ) -> Result<Reply, Error> {
        // Waiting from before the send, so that even a reply that comes at once does not
        // wake the subscriber.
        let _waiting = self.waiting();
        self.read_late_reply();
        if let Some(framer) = try_lock(&self.recv) {
            // Nobody reads: the fast path (`solo.rs`).
            return self.request_solo(framer, command, payload, fds, timeout, None);
        }
        let pending = self.send_request(command, payload, fds)?;
        let sent = pending.started;
        self.wait_reply(pending, timeout, None, sent)
    }

    /// See [`Connection::request_into`](super::Connection::request_into).
    pub(crate) fn request_into(
        &self,
        command: Command,
        payload: &[u8],
        fds: &[RawFd],
        head_len: usize,
        data: &mut [u8],
    ) -> Result<Reply, Error> {
        let _waiting = self.waiting();
        self.read_late_reply();
        let timeout = self.settings.reply_timeout;
        if let Some(framer) = try_lock(&self.recv) {
            let into = Some((head_len, data));
            return self.request_solo(framer, command, payload, fds, timeout, into);
        }
        let pending = self.send_request(command, payload, fds)?;
        let sent = pending.started;
        self.wait_reply(pending, timeout, Some((head_len, data)), sent)
    }

    /// See [`Connection::wait`](super::Connection::wait).
    pub(crate) fn wait(&self, pending: PendingReply) -> Result<Reply, Error> {
        let _waiting = self.waiting();
        let timeout = self.settings.reply_timeout;
        self.wait_reply(pending, timeout, None, Instant::now())
    }

    /// See [`Connection::wait_into`](super::Connection::wait_into).
    pub(crate) fn wait_into(
        &self,
        pending: PendingReply,
        head_len: usize,
        data: &mut [u8],
    ) -> Result<Reply, Error> {
        let _waiting = self.waiting();
        let timeout = self.settings.reply_timeout;
        self.wait_reply(pending, timeout, Some((head_len, data)), Instant::now())
    }

    /// See [`Connection::wait_all`](super::Connection::wait_all).
    pub(crate) fn wait_all(&self, pending: Vec<PendingReply>) -> Vec<Result<Reply, Error>> {
        let _waiting = self.waiting();
        let timeout = self.settings.reply_timeout;
        pending
            .into_iter()
            .map(|t| self.wait_reply(t, timeout, None, Instant::now()))
            .collect()
    }

    /// Marks the calling thread as waiting for replies until the guard is dropped: while
    /// any caller waits, callers read the socket and the subscriber is not woken by data.
    fn waiting(&self) -> Waiting<'_> {
        self.watch.enter();
        Waiting(self)
    }

    /// Waits for a pending reply, reading the socket itself when no other thread does;
    /// with `into` (`head_len`, buffer), a reply this thread reads may go into the buffer (see
    /// [`Connection::wait_into`](super::Connection::wait_into)). `now` is the time of the
    /// call, or the request's start when it was sent just now. The completion is kept for
    /// this thread's next request once the wait is over (see `reuse.rs`).
    ///
    /// The caller must hold a [`Waiting`] guard.
    fn wait_reply(
        &self,
        pending: PendingReply,
        timeout: Duration,
        into: Option<(usize, &mut [u8])>,
        now: Instant,
    ) -> Result<Reply, Error> {
        let result = self.wait_for(&pending, timeout, into, now);
        reuse::recycle_completion(pending.completion);
        result
    }

    /// [`wait_reply`](Self::wait_reply)'s wait. The clock is read once per turn, after a
    /// look at the completion: not again when the reply has come.
    fn wait_for(
        &self,
        pending: &PendingReply,
        timeout: Duration,
        into: Option<(usize, &mut [u8])>,
        mut now: Instant,
    ) -> Result<Reply, Error> {
        // The sooner of the request's own deadline and the thread's budget's.
        let deadline = budget::cap(pending.started + timeout);
        let timeout = deadline.saturating_duration_since(pending.started);
        let mut buffer = into.map(|(head_len, data)| ReplyBuffer {
            token: next_buffer_token(),
            id: pending.id,
            command: pending.completion.command as u16,
            head_len,
            data,
        });
        loop {
            if let Some(result) = self.take(&pending.completion) {
                return result;
            }
            if now >= deadline {
                return self.timed_out(pending, timeout);
            }
            let step = self.wait_step(pending, deadline, timeout, buffer.as_mut(), now);
            if let Some(result) = step {
                return result;
            }
            if let Some(result) = self.take(&pending.completion) {
                return result;
            }
            now = Instant::now();
        }
    }

    /// One turn of [`wait_for`](Self::wait_for): reads as the leader if nobody else reads,
    /// otherwise sleeps until the reply is handed over or the reader lets go (then we may
    /// have to read ourselves). Returns the result when the wait ends here: a reply
    /// abandoned half-way through its data at the deadline.
    fn wait_step(
        &self,
        pending: &PendingReply,
        deadline: Instant,
        timeout: Duration,
        mut buffer: Option<&mut ReplyBuffer<'_>>,
        now: Instant,
    ) -> Option<Result<Reply, Error>> {
        let completion = &pending.completion;
        let epoch = self.reader_epoch.load(Ordering::SeqCst);
        if let Some(mut framer) = try_lock(&self.recv) {
            self.lead(
                &mut framer,
                &mut Some(&**completion),
                deadline,
                now,
                buffer.as_deref_mut(),
            );
            // The buffer must not outlive this hold of the lock. `lead` stops half-way
            // through our reply only at the deadline (or on a disconnect): the rest is
            // drained by the next reader, and we time out. Leave the pending table
            // first, so that the drained reply fails nobody (it is the late reply).
            let abandoned = buffer
                .as_ref()
                .is_some_and(|s| framer.abandon_buffer(s.token));
            let timed_out = abandoned.then(|| self.timed_out(pending, timeout));
            drop(framer);
            self.after_reading();
            return timed_out;
        }
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

    /// Reads while holding the receive lock until `awaited` is done or the deadline, then
    /// dispatches whatever else is buffered.
    ///
    /// A leader usually arrives straight after sending, when a non-blocking read could
    /// only say `EAGAIN`, so it sleeps in a blocking `recvmsg` (at most the socket's receive
    /// timeout, [`BLOCKING_READ_SLICE`]); near its deadline it waits in `poll` with the
    /// exact remaining time instead. A shutdown of the socket (`fail`) wakes it either way.
    /// Every reader dispatches all complete buffered messages before it lets go of the
    /// lock, so an empty socket means that there is nothing to dispatch.
    pub(super) fn lead<A: Awaited>(
        &self,
        framer: &mut Framer,
        awaited: &mut A,
        deadline: Instant,
        mut now: Instant,
        mut buffer: Option<&mut ReplyBuffer<'_>>,
    ) {
        // Without busy polling (one CPU), no spinning at all: not even a time to compare.
        let spin_until = if self.settings.busy_poll.is_zero() {
            now
        } else {
            now.checked_add(self.settings.busy_poll).unwrap_or(deadline)
        };
        // Past this, a blocking read could overshoot the deadline: wait in `poll` instead.
        let block_until = deadline.checked_sub(2 * BLOCKING_READ_SLICE);
        // Another reader may have handed the reply over between our last look and taking
        // the lock.
        let mut done = awaited.is_done();
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
            if !self.read_until(framer, awaited, block, buffer.as_deref_mut()) {
                return;
            }
            done = awaited.is_done();
            if !done {
                if spinning {
                    // Let the server run if it shares our CPU.
                    std::thread::yield_now();
                }
                now = Instant::now();
            }
        }
        self.dispatch_buffered_for(framer, awaited, buffer);
    }

    /// Reads and dispatches messages until the socket has no more data (with `block`: until
    /// a read times out), or until `awaited` is done; what it claims is not dispatched.
    /// Returns `false` if the connection failed.
    fn read_until<A: Awaited>(
        &self,
        framer: &mut Framer,
        awaited: &mut A,
        block: bool,
        mut buffer: Option<&mut ReplyBuffer<'_>>,
    ) -> bool {
        loop {
            match framer.step(&self.sock, block, buffer.as_deref_mut()) {
                Ok(Some(incoming)) => {
                    if let Some(other) = awaited.claim(incoming) {
                        self.dispatch(other);
                    }
                    if awaited.is_done() {
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
    pub(super) fn dispatch_buffered(
        &self,
        framer: &mut Framer,
        buffer: Option<&mut ReplyBuffer<'_>>,
    ) {
        self.dispatch_buffered_for(framer, &mut None::<&Completion>, buffer);
    }

    /// [`dispatch_buffered`](Self::dispatch_buffered), but what `awaited` claims is not
    /// dispatched.
    fn dispatch_buffered_for<A: Awaited>(
        &self,
        framer: &mut Framer,
        awaited: &mut A,
        mut buffer: Option<&mut ReplyBuffer<'_>>,
    ) {
        loop {
            match framer.buffered(buffer.as_deref_mut()) {
                Ok(Some(incoming)) => {
                    if let Some(other) = awaited.claim(incoming) {
                        self.dispatch(other);
                    }
                }
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
    #[inline]
    pub(super) fn after_reading(&self) {
        self.reader_epoch.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            self.nudge_sleepers();
        }
    }

    /// Wakes every sleeping waiter (see [`after_reading`](Self::after_reading)).
    fn nudge_sleepers(&self) {
        let waiters: Vec<Arc<Completion>> = lock(&self.waiters).values().cloned().collect();
        for c in waiters {
            c.nudge();
        }
    }

    /// For the subscriber, when the socket has data (or hung up) and no caller waits:
    /// reads once and dispatches what is complete, unless a caller has started waiting and
    /// reads already. Whatever is left keeps the entry reported once the subscriber has
    /// armed it (it is level-triggered), so the read that would only say `EAGAIN` is saved.
    pub(super) fn read_idle(&self) {
        let Some(mut framer) = try_lock(&self.recv) else {
            return;
        };
        self.dispatch_buffered(&mut framer, None);
        match framer.read_once(&self.sock) {
            Ok(true) => self.dispatch_buffered(&mut framer, None),
            Ok(false) => {}
            Err(reason) => self.fail(reason),
        }
        drop(framer);
        self.after_reading();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::testing::{pair, read_request};
    use std::os::unix::net::UnixStream;

    use crate::connection::{Health, DEFAULT_TIMEOUT};
    use crate::protocol::Header;
    use std::io::Write;

    const DATA: usize = 50_000;

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

    fn send(inner: &Inner, server: &mut UnixStream) -> (PendingReply, Header) {
        let pending = inner
            .send_request(Command::RegionRead, &[0; 16], &[])
            .unwrap();
        let request = read_request(server);
        assert_eq!(request.id, pending.id());
        (pending, request)
    }

    #[test]
    fn wait_into_reads_data_into_the_buffer() {
        let (inner, _sub, mut server) = pair(DEFAULT_TIMEOUT);
        // Two requests in flight, both replies written in pieces before anyone reads.
        let (t1, r1) = send(&inner, &mut server);
        let (t2, r2) = send(&inner, &mut server);
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
            let reply = inner.wait_into(t, 16, &mut out).unwrap();
            assert!(reply.data_in_buffer);
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
        let r = inner
            .request_into(Command::RegionRead, &[0; 16], &[], 16, &mut out)
            .unwrap();
        assert!(r.data_in_buffer);
        assert!(out.iter().any(|&b| b != 0));
        server_thread.join().unwrap();
    }

    #[test]
    fn wait_into_falls_back_on_other_sizes_and_errors() {
        let (inner, _sub, mut server) = pair(DEFAULT_TIMEOUT);
        let (t, r) = send(&inner, &mut server);
        let (bytes, payload) = reply(&r, DATA + 1);
        write_in_pieces(&mut server, &bytes);
        let mut out = vec![0u8; DATA];
        let reply = inner.wait_into(t, 16, &mut out).unwrap();
        assert!(!reply.data_in_buffer);
        assert!(reply.payload == payload);
        assert!(out.iter().all(|&b| b == 0));
        // An error reply of exactly the awaited size is still an error.
        let (t, r) = send(&inner, &mut server);
        let mut header = Header::error_reply(&r, libc::EIO as u32);
        header.size = (Header::SIZE + 16 + DATA) as u32;
        let mut bytes = header.to_bytes().to_vec();
        bytes.resize(Header::SIZE + 16 + DATA, 0xaa);
        write_in_pieces(&mut server, &bytes);
        let e = inner.wait_into(t, 16, &mut out).unwrap_err();
        assert!(
            matches!(e, Error::Server { errno, .. } if errno == libc::EIO as u32),
            "{e:?}"
        );
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn timeout_half_way_through_the_data_keeps_the_stream_in_step() {
        let (inner, _sub, mut server) = pair(Duration::from_millis(150));
        let (t, r) = send(&inner, &mut server);
        let (bytes, _) = reply(&r, DATA);
        let half = bytes.len() / 2;
        write_in_pieces(&mut server, &bytes[..half]);
        let mut out = vec![0u8; DATA];
        let e = inner.wait_into(t, 16, &mut out).unwrap_err();
        assert!(
            matches!(e, Error::Timeout { id, .. } if id == r.id),
            "{e:?}"
        );
        assert!(matches!(inner.health(), Health::Unresponsive(o) if o.id == r.id));
        // The rest comes late, then the next request's reply: the late data is drained (here
        // as a WAIT request about to be sent does it; with no event loop), which makes the
        // connection healthy.
        write_in_pieces(&mut server, &bytes[half..]);
        inner.read_late_reply();
        let before = out.clone();
        let (t, r) = send(&inner, &mut server);
        let (bytes, payload) = reply(&r, DATA);
        write_in_pieces(&mut server, &bytes);
        let mut out2 = vec![0u8; DATA];
        let reply = inner.wait_into(t, 16, &mut out2).unwrap();
        assert!(reply.data_in_buffer);
        assert!(out2 == payload[16..]);
        assert!(out == before);
        assert!(inner.is_connected());
        assert_eq!(inner.health(), Health::Healthy);
    }

    #[test]
    fn follower_gets_a_buffered_reply() {
        let (inner, _sub, mut server) = pair(DEFAULT_TIMEOUT);
        let (t, r) = send(&inner, &mut server);
        // This thread reads: the waiter below must follow.
        let mut framer = lock(&inner.recv);
        let waiter = {
            let inner = Arc::clone(&inner);
            std::thread::spawn(move || {
                let mut out = vec![0u8; DATA];
                let reply = inner.wait_into(t, 16, &mut out).unwrap();
                (reply, out)
            })
        };
        while inner.sleepers.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let (bytes, payload) = reply(&r, DATA);
        write_in_pieces(&mut server, &bytes);
        assert!(inner.read_until(&mut framer, &mut None::<&Completion>, false, None));
        drop(framer);
        inner.after_reading();
        let (reply, out) = waiter.join().unwrap();
        assert!(!reply.data_in_buffer);
        assert!(reply.payload == payload);
        assert!(out.iter().all(|&b| b == 0));
    }
}
