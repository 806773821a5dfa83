// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One deadline for several requests: a [`Budget`] bounds every reply wait on its thread,
//! so that an operation made of several round trips (a guest config write that also sets
//! interrupts up, a detach) waits at most one reply timeout in total, however the server
//! spreads its answers, rather than one per request.
//!
//! The budget lives in a thread-local, so the layers need not pass a deadline through
//! every call between the operation and the connection; a wait takes the sooner of its own
//! deadline and the budget's. Budgets nest (the inner one cannot extend the outer one), and
//! a [`Budget`] is not `Send`: it is dropped on the thread that started it.
//!
//! A wait cut short by the budget times out like any other: the request is overdue and the
//! connection unresponsive until its late reply comes (see `health.rs`). The server did
//! not answer within what the operation could afford; a server that is merely slow is
//! healthy again as soon as it answers.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

thread_local! {
    /// The deadline of the innermost budget of this thread, if any.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Bounds every reply wait on this thread until dropped (see the module documentation).
#[derive(Debug)]
#[must_use = "a budget bounds the waits only while it is alive"]
pub(crate) struct Budget {
    /// The enclosing budget's deadline, restored on drop.
    outer: Option<Instant>,
    /// Not `Send`: the deadline belongs to this thread.
    _thread: PhantomData<*const ()>,
}

impl Budget {
    /// A budget of `timeout` from now (or what is left of an enclosing one, if less).
    pub(crate) fn start(timeout: Duration) -> Budget {
        let outer = DEADLINE.get();
        let mine = Instant::now().checked_add(timeout);
        let deadline = match (outer, mine) {
            (Some(o), Some(m)) => Some(o.min(m)),
            (o, m) => o.or(m),
        };
        DEADLINE.set(deadline);
        Budget {
            outer,
            _thread: PhantomData,
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        DEADLINE.set(self.outer);
    }
}

/// `deadline`, or the deadline of this thread's budget if that comes first.
pub(super) fn cap(deadline: Instant) -> Instant {
    DEADLINE.get().map_or(deadline, |b| b.min(deadline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::testing::read_request;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use crate::connection::inner::Inner;
    use crate::connection::{Error, Health, Settings};
    use crate::protocol::{Command, Header};

    #[test]
    fn a_budget_bounds_several_requests_together() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let settings = Settings {
            reply_timeout: Duration::from_secs(60),
            busy_poll: Duration::ZERO,
            ..Settings::default()
        };
        let (inner, _sub) = Inner::new(client, settings).unwrap();
        // Answers the first request at once, then owes the second one.
        let peer = std::thread::spawn(move || {
            let first = read_request(&mut server);
            let reply = Header::reply(&first, 0).unwrap();
            server.write_all(&reply.to_bytes()).unwrap();
            read_request(&mut server);
            server
        });
        let budget = Duration::from_millis(200);
        let started = Instant::now();
        let _budget = Budget::start(budget);
        inner.request(Command::RegionRead, b"1", &[]).unwrap();
        let e = inner.request(Command::RegionRead, b"2", &[]).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(e, Error::Timeout { after, .. } if after < budget),
            "{e}"
        );
        assert!(
            took >= budget && took < 2 * budget,
            "two requests took {took:?} on a budget of {budget:?}"
        );
        assert!(
            matches!(inner.health(), Health::Unresponsive(o) if o.command == Command::RegionRead)
        );
        drop(peer.join().unwrap());
    }

    #[test]
    fn budgets_nest_and_never_extend() {
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(cap(far), far);
        let outer = Budget::start(Duration::from_secs(10));
        let outer_deadline = cap(far);
        assert!(outer_deadline < far);
        {
            let _inner = Budget::start(Duration::from_secs(60));
            assert_eq!(cap(far), outer_deadline, "an inner budget cannot extend");
            let _innermost = Budget::start(Duration::ZERO);
            assert!(cap(far) < outer_deadline);
        }
        assert_eq!(cap(far), outer_deadline);
        let soon = Instant::now();
        assert_eq!(cap(soon), soon, "a sooner own deadline stands");
        drop(outer);
        assert_eq!(cap(far), far);
        // Other threads are not bound.
        let _b = Budget::start(Duration::ZERO);
        assert_eq!(std::thread::spawn(move || cap(far)).join().unwrap(), far);
    }
}
