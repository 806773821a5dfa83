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
//! only replies, which their waiters read. The socket then leaves the set altogether: a
//! server that goes away closes both sockets, and the twin socket's hang-up, which its own
//! subscriber watches, ends the connection. Requests cost no `epoll_ctl` at all, do not
//! even take the watch's lock (they count themselves in an atomic, which is all a change of
//! mode needs to know), and a reply wakes no epoll entry on its way to its waiter. Stray
//! data (a reply that came after its waiter gave up) waits for the next caller to read and
//! drop it; a server that sent a request on the main socket anyway would be served by the
//! next caller too, and one that closed the main socket alone is noticed by the next
//! request. Except while the connection is unresponsive (see `health.rs`): the late reply
//! that makes it healthy again must be read when it comes, not when the next caller reads
//! (callers fail fast meanwhile), so the socket is then in the set, as it is without a twin
//! socket ([`SocketWatch::expect_late_reply`]).

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

#[derive(Debug)]
struct State {
    /// Whether the entry is armed (level-triggered); always `true` while `left_to_twin`.
    armed: bool,
    /// The socket is out of the set: a twin socket carries the server's requests and
    /// reports its hang-up, and no late reply is awaited.
    left_to_twin: bool,
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
    /// `state.left_to_twin`, readable without the lock: callers then skip the lock.
    ///
    /// Both are sequentially consistent: a change of mode stores this, then reads
    /// `callers`; a caller changes `callers`, then reads this. So either the change of mode
    /// sees the caller, or the caller sees the new mode and takes the lock to act on it.
    left_to_twin: AtomicBool,
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
                left_to_twin: false,
                twin: false,
            }),
            callers: AtomicUsize::new(0),
            left_to_twin: AtomicBool::new(false),
        })
    }

    fn set(&self, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            self.sock,
            EpollEvent::new(events, self.sock as u64),
        )
    }

    fn remove(&self) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, self.sock, EpollEvent::default())
    }

    /// From now on the socket is out of the set: a twin socket carries the server's
    /// requests and reports its hang-up.
    pub(super) fn leave_to_twin(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        self.remove()?;
        state.left_to_twin = true;
        state.twin = true;
        state.armed = true;
        self.left_to_twin.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// While `expect` (the connection is unresponsive), data wakes the event loop even with
    /// a twin socket, so that the late reply is read when it comes; then the socket leaves
    /// the set again. Nothing changes without a twin socket, where data always wakes it.
    pub(super) fn expect_late_reply(&self, expect: bool) -> io::Result<()> {
        let mut state = lock(&self.state);
        if !state.twin || state.left_to_twin != expect {
            return Ok(());
        }
        if expect {
            // Disarmed while callers wait (they read), level-triggered once none does.
            self.epoll.ctl(
                ControlOperation::Add,
                self.sock,
                EpollEvent::new(DISARMED, self.sock as u64),
            )?;
            state.left_to_twin = false;
            state.armed = false;
            // Before `arm_if_idle` reads the count (see `left_to_twin`).
            self.left_to_twin.store(false, Ordering::SeqCst);
            self.arm_if_idle(&mut state)
        } else {
            self.remove()?;
            state.left_to_twin = true;
            state.armed = true;
            self.left_to_twin.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A caller starts waiting for a reply: data no longer wakes the event loop.
    #[inline]
    pub(super) fn enter(&self) {
        self.callers.fetch_add(1, Ordering::SeqCst);
        // Out of the set, the socket stays so: no lock needed.
        if !self.left_to_twin.load(Ordering::SeqCst) {
            self.disarm();
        }
    }

    /// [`enter`](Self::enter) for an entry that may be armed: disarms it.
    fn disarm(&self) {
        let mut state = lock(&self.state);
        if state.left_to_twin {
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
        if self.left_to_twin.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.arm_if_idle(&mut lock(&self.state))
    }

    /// For the event loop: whether the entry is armed level-triggered, so that a wake-up
    /// means the socket has data (or hung up) and nothing needs collecting. Otherwise the
    /// wake-up came from a one-shot event that [`collect`](Self::collect) must take.
    pub(super) fn level_triggered(&self) -> bool {
        let state = lock(&self.state);
        state.armed && !state.left_to_twin
    }

    /// For the event loop: collects the entry's one-shot event, if any (a hang-up or error
    /// of the disarmed entry), which disarms it. Returns whether there was one.
    pub(super) fn collect(&self) -> io::Result<bool> {
        let mut events = [EpollEvent::default()];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        // A disarmed entry reports once and stays disarmed; a level-triggered one stays armed.
        Ok(n > 0)
    }

    /// For the event loop, after it has collected an event: arms the entry again unless
    /// callers wait.
    pub(super) fn rearm(&self) -> io::Result<()> {
        self.arm_if_idle(&mut lock(&self.state))
    }

    /// Arms the entry unless callers wait (they read), or the socket is out of the set.
    fn arm_if_idle(&self, state: &mut State) -> io::Result<()> {
        if !state.armed && self.callers.load(Ordering::SeqCst) == 0 {
            self.set(ARMED)?;
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
        use std::io::Write;

        use super::super::socket::poll_fd;

        let (sock, mut peer) = UnixStream::pair().unwrap();
        let watch = SocketWatch::new(&sock).unwrap();
        let set_readable = |watch: &SocketWatch| poll_fd(watch.as_raw_fd(), false, 0).unwrap();
        watch.leave_to_twin().unwrap();
        peer.write_all(b"x").unwrap();
        assert!(!set_readable(&watch), "out of the set: data wakes nobody");
        // Enters without the lock (out of the set), then the late reply is awaited.
        watch.enter();
        watch.expect_late_reply(true).unwrap();
        assert!(
            !watch.level_triggered(),
            "a caller waits: it reads, not the loop"
        );
        assert!(!set_readable(&watch));
        watch.enter();
        watch.leave().unwrap();
        assert!(!watch.level_triggered());
        watch.leave().unwrap();
        assert!(watch.level_triggered(), "the last caller to leave arms it");
        assert!(set_readable(&watch), "armed, the data left unread shows");
        // Out of the set again: callers skip the lock, and nothing is armed.
        watch.expect_late_reply(false).unwrap();
        assert!(!set_readable(&watch));
        watch.enter();
        watch.leave().unwrap();
        assert!(lock(&watch.state).armed);
        assert_eq!(watch.callers.load(Ordering::SeqCst), 0);
    }
}
