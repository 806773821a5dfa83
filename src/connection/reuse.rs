// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Per-thread spares, so that a request in the steady state allocates nothing: the
//! completion a request waits on, and the buffers that small reply payloads are read into.
//!
//! A waiter puts its completion back when its wait is over, if nothing else holds it (the
//! pending table and the reader have let go), and the thread's next request takes it. A
//! reply's payload comes back through [`recycle_reply`] from whoever consumed the reply (the
//! device layer does, for region accesses); the framer takes the next small payload's
//! buffer from the reading thread's spares. Buffers migrate between threads when one reads
//! for another; the spares per thread are bounded, so that is harmless.

use std::cell::RefCell;
use std::sync::Arc;

use super::pending::{Completion, Slot, SlotState};
use super::Reply;
use crate::protocol::Command;

/// Spares of each kind kept per thread: what a DMA transaction collects at a time (half its
/// window of 128), more than a pipelined region transfer's window of 8.
const MAX_SPARES: usize = 64;

/// Buffers with more capacity than this are not kept (a large reply's body).
const MAX_SPARE_CAPACITY: usize = 256;

struct Spares {
    completions: Vec<Arc<Completion>>,
    buffers: Vec<Vec<u8>>,
}

thread_local! {
    static SPARES: RefCell<Spares> = const {
        RefCell::new(Spares {
            completions: Vec::new(),
            buffers: Vec::new(),
        })
    };
}

/// Runs `f` on this thread's spares; `None` while the thread is being torn down.
fn with_spares<T>(f: impl FnOnce(&mut Spares) -> T) -> Option<T> {
    SPARES
        .try_with(|s| s.try_borrow_mut().ok().map(|mut s| f(&mut s)))
        .ok()
        .flatten()
}

/// A completion for a new request of `command`: a spare if this thread has one.
pub(super) fn completion(command: Command) -> Arc<Completion> {
    let spare = with_spares(|s| s.completions.pop()).flatten();
    if let Some(mut c) = spare {
        // Spares are kept only while nothing else holds them, so this always succeeds.
        if let Some(m) = Arc::get_mut(&mut c) {
            m.command = command;
            *m.slot.get_mut().unwrap_or_else(|p| p.into_inner()) = SlotState {
                slot: Slot::Waiting,
                sleeping: false,
            };
            return c;
        }
    }
    Arc::new(Completion::new(command))
}

/// Keeps a completion whose wait is over for this thread's next request, if nothing else
/// holds it any more.
pub(super) fn recycle_completion(mut c: Arc<Completion>) {
    let Some(m) = Arc::get_mut(&mut c) else {
        return;
    };
    // Drop whatever result was not taken now, not when the spare is next used.
    m.slot.get_mut().unwrap_or_else(|p| p.into_inner()).slot = Slot::Taken;
    let _ = with_spares(|s| {
        if s.completions.len() < MAX_SPARES {
            s.completions.push(c);
        }
    });
}

/// An empty buffer for a small payload: a spare if this thread has one.
pub(super) fn buffer() -> Vec<u8> {
    with_spares(|s| s.buffers.pop())
        .flatten()
        .unwrap_or_default()
}

/// Gives a reply's payload buffer back for later replies read by this thread, once its
/// consumer is done with it. Replies dropped instead cost only an allocation later.
pub(crate) fn recycle_reply(reply: Reply) {
    let mut payload = reply.payload;
    if payload.capacity() == 0 || payload.capacity() > MAX_SPARE_CAPACITY {
        return;
    }
    payload.clear();
    let _ = with_spares(|s| {
        if s.buffers.len() < MAX_SPARES {
            s.buffers.push(payload);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(payload: Vec<u8>) -> Reply {
        Reply {
            header: crate::protocol::Header::default(),
            payload,
            fds: Vec::new(),
            data_in_buffer: false,
        }
    }

    #[test]
    fn a_completion_is_reused_only_when_nothing_else_holds_it() {
        let c = completion(Command::RegionRead);
        let held = Arc::clone(&c);
        recycle_completion(c);
        let fresh = completion(Command::DmaMap);
        assert!(!Arc::ptr_eq(&fresh, &held), "was still held: not kept");
        let ptr = Arc::as_ptr(&fresh);
        fresh.complete(Err(crate::connection::Error::TooManyPending));
        recycle_completion(fresh);
        let again = completion(Command::RegionWrite);
        assert_eq!(Arc::as_ptr(&again), ptr);
        assert_eq!(again.command, Command::RegionWrite);
        assert!(!again.is_done(), "reset to waiting");
    }

    #[test]
    fn small_buffers_are_reused_large_ones_dropped() {
        let mut small = Vec::with_capacity(16);
        small.extend_from_slice(b"head");
        let ptr = small.as_ptr();
        recycle_reply(reply(small));
        let b = buffer();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr);
        recycle_reply(reply(vec![0; MAX_SPARE_CAPACITY + 1]));
        assert_eq!(buffer().capacity(), 0);
    }
}
