// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Who is told that the socket has data: the event loop only while no caller waits.
//!
//! The socket's read interest lives in a private epoll set of the connection; the event
//! loop watches that set's fd, which is readable while the set has a ready entry.
//!
//! While no caller waits the entry is armed level-triggered: the set's fd is readable for
//! as long as the socket has data, so the event loop reads once per wake-up and returns
//! (more data means another wake-up). Nothing needs to be collected from the set or armed
//! again per message: a server request costs the event loop one `epoll_wait`, one read and
//! the reply.
//!
//! A caller that starts waiting disarms the entry (once, however many callers wait),
//! because waiting callers read the socket themselves; the last caller to stop waiting arms
//! it again. So a reply wakes only the thread that waits for it. Arming an entry whose
//! socket already has data makes the set readable at once, so data that a departing caller
//! left unread is never missed. The disarmed entry is `EPOLLONESHOT` with no events: it
//! still reports a hang-up or an error (the kernel always adds `EPOLLHUP | EPOLLERR`), once,
//! and the event loop collects that event from the set ([`SocketWatch::collect`]).
//!
//! With a twin socket the server sends its requests there, and the main socket carries
//! only replies, which their waiters read. The entry then watches for a hang-up only and is
//! never disarmed or re-armed: requests cost no `epoll_ctl` at all, and do not even take
//! the watch's lock (they count themselves in an atomic, which is all a change of mode
//! needs to know). Stray data (a reply that came after its waiter gave up) waits for the
//! next caller to read and drop it; a server that sent a request on the main socket anyway
//! would be served by the next caller too. Except while the connection is unresponsive
//! (see `health.rs`): the late reply that makes it healthy again must be read when it
//! comes, not when the next caller reads (callers fail fast meanwhile), so the entry then
//! watches data as it does without a twin socket ([`SocketWatch::expect_late_reply`]).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::sync::lock;

/// Level-triggered: readable while the socket has data.
const ARMED: EventSet = EventSet::IN.union(EventSet::READ_HANG_UP);
const DISARMED: EventSet = EventSet::ONE_SHOT;
const HANG_UP_ONLY: EventSet = EventSet::READ_HANG_UP.union(EventSet::ONE_SHOT);

#[derive(Debug)]
struct State {
    /// Whether the entry is armed (level-triggered, or for a hang-up only).
    armed: bool,
    /// Data on the socket need not wake the event loop (a twin socket carries the server's
    /// requests, and no late reply is awaited): the entry watches for a hang-up only.
    hang_up_only: bool,
    /// The connection has a twin socket.
    twin: bool,
}

#[derive(Debug)]
pub(super) struct SocketWatch {
    epoll: Epoll,
    sock: RawFd,
    state: Mutex<State>,
    /// Callers waiting for replies (between `enter` and `leave`), counted without the lock.
    callers: AtomicUsize,
    /// `state.hang_up_only`, readable without the lock: callers then skip the lock.
    ///
    /// Both are sequentially consistent: a change of mode stores this, then reads
    /// `callers`; a caller changes `callers`, then reads this. So either the change of mode
    /// sees the caller, or the caller sees the new mode and takes the lock to act on it.
    hang_up_only: AtomicBool,
}

impl SocketWatch {
    /// A private epoll set holding `sock`, armed.
    pub(super) fn new(sock: &UnixStream) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let fd = sock.as_raw_fd();
        epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(ARMED, fd as u64))?;
        Ok(SocketWatch {
            epoll,
            sock: fd,
            state: Mutex::new(State {
                armed: true,
                hang_up_only: false,
                twin: false,
            }),
            callers: AtomicUsize::new(0),
            hang_up_only: AtomicBool::new(false),
        })
    }

    fn set(&self, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            self.sock,
            EpollEvent::new(events, self.sock as u64),
        )
    }

    /// From now on only a hang-up wakes the event loop (the server's requests come on a
    /// twin socket).
    pub(super) fn watch_hang_up_only(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        self.set(HANG_UP_ONLY)?;
        state.hang_up_only = true;
        state.twin = true;
        state.armed = true;
        self.hang_up_only.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// While `expect` (the connection is unresponsive), data wakes the event loop even with
    /// a twin socket, so that the late reply is read when it comes; then a hang-up only
    /// again. Nothing changes without a twin socket, where data always wakes it.
    pub(super) fn expect_late_reply(&self, expect: bool) -> io::Result<()> {
        let mut state = lock(&self.state);
        if !state.twin || state.hang_up_only != expect {
            return Ok(());
        }
        if expect {
            // Disarmed while callers wait (they read), level-triggered once none does.
            self.set(DISARMED)?;
            state.hang_up_only = false;
            state.armed = false;
            // Before `arm_if_idle` reads the count (see `hang_up_only`).
            self.hang_up_only.store(false, Ordering::SeqCst);
            self.arm_if_idle(&mut state)
        } else {
            self.set(HANG_UP_ONLY)?;
            state.hang_up_only = true;
            state.armed = true;
            self.hang_up_only.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A caller starts waiting for a reply: data no longer wakes the event loop.
    #[inline]
    pub(super) fn enter(&self) {
        self.callers.fetch_add(1, Ordering::SeqCst);
        // Watching for a hang-up only, the entry stays as it is: no lock needed.
        if !self.hang_up_only.load(Ordering::SeqCst) {
            self.disarm();
        }
    }

    /// [`enter`](Self::enter) for an entry that may be armed: disarms it.
    fn disarm(&self) {
        let mut state = lock(&self.state);
        if state.hang_up_only {
            return;
        }
        // If disarming fails the entry stays armed: the event loop is woken needlessly, but
        // nothing is lost.
        if state.armed && self.set(DISARMED).is_ok() {
            state.armed = false;
        }
    }

    /// A caller stops waiting (after letting go of the receive state); the last one arms
    /// the entry again. An error means the event loop can no longer be told about data.
    #[inline]
    pub(super) fn leave(&self) -> io::Result<()> {
        self.callers.fetch_sub(1, Ordering::SeqCst);
        if self.hang_up_only.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.arm_if_idle(&mut lock(&self.state))
    }

    /// For the event loop: whether the entry is armed level-triggered, so that a wake-up
    /// means the socket has data (or hung up) and nothing needs collecting. Otherwise the
    /// wake-up came from a one-shot event that [`collect`](Self::collect) must take.
    pub(super) fn level_triggered(&self) -> bool {
        let state = lock(&self.state);
        state.armed && !state.hang_up_only
    }

    /// For the event loop: collects the entry's one-shot event, if any (a hang-up or error
    /// of the disarmed entry, or the hang-up of a twin-socket connection), which disarms it.
    /// Returns whether there was one.
    pub(super) fn collect(&self) -> io::Result<bool> {
        let mut events = [EpollEvent::default()];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n > 0 {
            let mut state = lock(&self.state);
            // A level-triggered entry stays armed when it reports; a one-shot one (disarmed,
            // or for a hang-up only) does not.
            if state.hang_up_only {
                state.armed = false;
            }
        }
        Ok(n > 0)
    }

    /// For the event loop, after it has collected an event: arms the entry again unless
    /// callers wait.
    pub(super) fn rearm(&self) -> io::Result<()> {
        self.arm_if_idle(&mut lock(&self.state))
    }

    /// Arms the entry unless callers wait (they read); a hang-up-only entry whether or not
    /// they do (its callers do not take the lock to arm it when they leave, and a hang-up
    /// does not get in their way).
    fn arm_if_idle(&self, state: &mut State) -> io::Result<()> {
        let idle = state.hang_up_only || self.callers.load(Ordering::SeqCst) == 0;
        if idle && !state.armed {
            self.set(if state.hang_up_only {
                HANG_UP_ONLY
            } else {
                ARMED
            })?;
            state.armed = true;
        }
        Ok(())
    }
}

impl AsRawFd for SocketWatch {
    /// The private epoll set's fd, readable while the socket's entry has an event.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_that_skipped_the_lock_still_count_when_data_is_watched() {
        let (sock, _peer) = UnixStream::pair().unwrap();
        let watch = SocketWatch::new(&sock).unwrap();
        watch.watch_hang_up_only().unwrap();
        // Enters without the lock (hang-up only), then the late reply is awaited.
        watch.enter();
        watch.expect_late_reply(true).unwrap();
        assert!(
            !watch.level_triggered(),
            "a caller waits: it reads, not the loop"
        );
        watch.enter();
        watch.leave().unwrap();
        assert!(!watch.level_triggered());
        watch.leave().unwrap();
        assert!(watch.level_triggered(), "the last caller to leave arms it");
        // Back to a hang-up only: callers skip the lock again, and leave it armed.
        watch.expect_late_reply(false).unwrap();
        watch.enter();
        watch.leave().unwrap();
        assert!(lock(&watch.state).armed);
        assert_eq!(watch.callers.load(Ordering::SeqCst), 0);
    }
}
