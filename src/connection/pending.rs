// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The pending-reply table: every request that waits for a reply has a [`Completion`] under
//! its message id until the reply (or an error) is handed to it, and the waiter collects it
//! through its [`PendingReply`]. Replies that readers take off the socket are routed here
//! ([`Inner::dispatch`]); server requests go on to the handler.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::framer::{Incoming, Received};
use super::inner::Inner;
use super::solo::NO_SOLO;
use super::{DisconnectReason, Error, Reply};
use crate::protocol::{Command, MessageType};
use crate::sync::lock;

/// Message ids with this bit set are used for `No_reply` messages only; at most this many
/// requests can wait for replies at once.
pub(super) const NO_REPLY_ID_BIT: u16 = 0x8000;

/// A NOWAIT request whose reply has not been collected yet.
#[derive(Debug)]
#[must_use = "a pending reply must be collected with Connection::wait or Connection::wait_all"]
pub struct PendingReply {
    pub(super) id: u16,
    pub(super) started: Instant,
    pub(super) completion: Arc<Completion>,
}

impl PendingReply {
    /// The request's message id.
    pub fn id(&self) -> u16 {
        self.id
    }
}

/// Where a waiting request's result is: not there yet, handed over, or collected.
#[derive(Debug)]
pub(super) enum Slot {
    Waiting,
    Done(Result<Reply, Error>),
    Taken,
}

/// A completion's slot, and whether its waiter sleeps.
#[derive(Debug)]
pub(super) struct SlotState {
    pub(super) slot: Slot,
    /// Whether the waiter sleeps on the condvar (only then is it notified: a notification
    /// is a `futex` call even when nobody sleeps).
    pub(super) sleeping: bool,
}

/// Where a reader hands a waiting request its result, and wakes the waiter.
#[derive(Debug)]
pub(super) struct Completion {
    pub(super) command: Command,
    pub(super) slot: Mutex<SlotState>,
    pub(super) cv: Condvar,
}

impl Completion {
    pub(super) fn new(command: Command) -> Self {
        Completion {
            command,
            slot: Mutex::new(SlotState {
                slot: Slot::Waiting,
                sleeping: false,
            }),
            cv: Condvar::new(),
        }
    }

    pub(super) fn complete(&self, result: Result<Reply, Error>) {
        let mut state = lock(&self.slot);
        if matches!(state.slot, Slot::Waiting) {
            state.slot = Slot::Done(result);
        }
        let sleeping = state.sleeping;
        drop(state);
        if sleeping {
            self.cv.notify_one();
        }
    }

    pub(super) fn is_done(&self) -> bool {
        !matches!(lock(&self.slot).slot, Slot::Waiting)
    }

    /// Wakes the waiter if it sleeps.
    pub(super) fn nudge(&self) {
        if lock(&self.slot).sleeping {
            self.cv.notify_one();
        }
    }
}

/// Hashes the pending table's keys, message ids we chose ourselves, with one
/// multiplication: the default SipHash guards against keys an attacker picks, and costs a
/// measurable part of a round trip.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Waiting requests by message id.
pub(super) type PendingTable = HashMap<u16, Arc<Completion>, BuildHasherDefault<IdHasher>>;

impl Inner {
    /// Picks an id not used by any waiting request and enters the completion under it.
    pub(super) fn register(&self, completion: &Arc<Completion>) -> Result<u16, Error> {
        let mut table = lock(&self.waiters);
        if reply_may_carry_fds(completion.command) {
            table = self.wait_out_plain_read(table);
        }
        if table.len() + self.reserved_ids() >= usize::from(NO_REPLY_ID_BIT) {
            return Err(Error::TooManyPending);
        }
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) & !NO_REPLY_ID_BIT;
            if self.is_overdue_id(id) || self.is_solo_id(id) {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(v) = table.entry(id) {
                v.insert(Arc::clone(completion));
                return Ok(id);
            }
        }
    }

    /// Waits, with the table's lock (`table`), until no solo reader is in a plain read,
    /// which would close the fds of any reply it read (`solo.rs`). A plain read lasts one
    /// read, at most the socket's receive timeout. Whoever ends one stores `false` in
    /// `plain_read` and then reads `plain_waiters`, and a waiter counts itself in and then
    /// reads `plain_read` (both sequentially consistent), so either the waiter sees the end
    /// or the reader sees the waiter and signals `plain_done` under the lock.
    fn wait_out_plain_read<'a>(
        &self,
        mut table: MutexGuard<'a, PendingTable>,
    ) -> MutexGuard<'a, PendingTable> {
        if !self.plain_read.load(Ordering::SeqCst) {
            return table;
        }
        self.plain_waiters.fetch_add(1, Ordering::SeqCst);
        while self.plain_read.load(Ordering::SeqCst) {
            table = self
                .plain_done
                .wait(table)
                .unwrap_or_else(|p| p.into_inner());
        }
        self.plain_waiters.fetch_sub(1, Ordering::SeqCst);
        table
    }

    /// Ends a solo reader's plain read (see [`wait_out_plain_read`](Self::wait_out_plain_read)).
    pub(super) fn end_plain_read(&self) {
        self.plain_read.store(false, Ordering::SeqCst);
        if self.plain_waiters.load(Ordering::SeqCst) != 0 {
            let _table = lock(&self.waiters);
            self.plain_done.notify_all();
        }
    }

    /// Takes a completion's result if it is there (a second take is a `Disconnected`).
    pub(super) fn take(&self, completion: &Completion) -> Option<Result<Reply, Error>> {
        let mut state = lock(&completion.slot);
        match std::mem::replace(&mut state.slot, Slot::Taken) {
            Slot::Done(result) => Some(result),
            Slot::Taken => Some(Err(Error::Disconnected(DisconnectReason::Shutdown))),
            Slot::Waiting => {
                state.slot = Slot::Waiting;
                None
            }
        }
    }

    /// The request's deadline, `timeout` after it was sent, has passed: its reply, if it
    /// comes, is dropped, and the connection is unresponsive until then. Unless the reply
    /// has come after all: a reader that has taken the request out of the table is handing
    /// it over, and it is returned.
    pub(super) fn timed_out(
        &self,
        pending: &PendingReply,
        timeout: Duration,
    ) -> Result<Reply, Error> {
        let mut table = lock(&self.waiters);
        if let Some(result) = self.take(&pending.completion) {
            return result;
        }
        let waiting = table
            .get(&pending.id)
            .is_some_and(|c| Arc::ptr_eq(c, &pending.completion));
        if !waiting {
            drop(table);
            return self.take_when_handed_over(&pending.completion);
        }
        // Marked overdue before it leaves the table, under the table's lock: its reply,
        // whenever a reader finds it without a waiter, is taken for the late reply.
        let newly = self.mark_overdue(pending.completion.command, pending.id);
        table.remove(&pending.id);
        drop(table);
        log::warn!(
            "reply to {} (id {}) timed out after {:?}",
            pending.completion.command,
            pending.id,
            timeout
        );
        if newly {
            self.announce_unresponsive();
        }
        Err(Error::Timeout {
            command: pending.completion.command,
            id: pending.id,
            after: timeout,
        })
    }

    /// The result of a completion that a reader has taken out of the table, which it
    /// completes right after (with the reply, or an error).
    fn take_when_handed_over(&self, completion: &Completion) -> Result<Reply, Error> {
        let mut state = lock(&completion.slot);
        state.sleeping = true;
        while matches!(state.slot, Slot::Waiting) {
            state = completion.cv.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.sleeping = false;
        drop(state);
        self.take(completion)
            .unwrap_or(Err(Error::Disconnected(DisconnectReason::Shutdown)))
    }

    pub(super) fn dispatch(&self, incoming: Incoming) {
        match incoming {
            Incoming::Message(msg) => {
                log::debug!("recv {} fds={}", msg.header, msg.fds.len());
                let is_reply = msg.header.message_type() == Some(MessageType::Reply);
                // Older rust-vmm servers mark error replies as commands with the Error bit.
                let legacy_error = !is_reply && msg.header.is_error();
                if is_reply || legacy_error {
                    self.complete_reply(msg, legacy_error);
                } else {
                    self.serve_request(msg);
                }
            }
            Incoming::Discarded { header, why } => {
                log::warn!("dropped message {header}: {why}");
                if header.message_type() == Some(MessageType::Command) {
                    if let Some(refusal) = self.refusal(&header) {
                        let _ = self.send_reply(refusal);
                    }
                } else {
                    let waiter = lock(&self.waiters).remove(&header.id);
                    match waiter {
                        Some(c) => c.complete(Err(Error::BadReply {
                            command: c.command,
                            what: why,
                        })),
                        None => {
                            self.late_reply(&header);
                        }
                    }
                }
            }
        }
    }

    /// Ids that are in use but not in the table (the table's lock is held): the overdue
    /// request's and a solo request's.
    pub(super) fn reserved_ids(&self) -> usize {
        usize::from(!self.responsive.load(Ordering::Acquire))
            + usize::from(self.solo_id.load(Ordering::Relaxed) != NO_SOLO)
    }

    fn complete_reply(&self, msg: Received, legacy_error: bool) {
        let header = msg.header;
        let Some(c) = lock(&self.waiters).remove(&header.id) else {
            if self.late_reply(&header) {
                log::debug!("dropped the overdue reply {header}");
            } else if !legacy_error {
                log::debug!("dropped unsolicited reply {header}");
            } else {
                // Not ours: a server request with the Error bit is still a request.
                self.serve_request(msg);
            }
            return;
        };
        c.complete(reply_result(c.command, msg));
    }
}

/// Whether the reply to `command` may carry fds: VERSION's (the twin socket),
/// GET_REGION_INFO's (a region's mmap fd) and GET_REGION_IO_FDS's. No other reply of the
/// protocol carries fds; any that come with one are closed ([`reply_result`]).
pub(super) fn reply_may_carry_fds(command: Command) -> bool {
    matches!(
        command,
        Command::Version | Command::DeviceGetRegionInfo | Command::DeviceGetRegionIoFds
    )
}

/// What a reply (one with the request's id) means for a request of `command`: an error for
/// another command or an error reply, else the reply, without fds its command's replies
/// cannot carry.
pub(super) fn reply_result(command: Command, msg: Received) -> Result<Reply, Error> {
    let header = msg.header;
    if header.command != command as u16 {
        Err(Error::BadReply {
            command,
            what: format!("reply carries command {}", header.command),
        })
    } else if header.is_error() {
        Err(Error::Server {
            command,
            errno: header.error,
        })
    } else {
        let mut fds = msg.fds;
        if !fds.is_empty() && !reply_may_carry_fds(command) {
            // Closed here as a plain read would have closed them: whichever way the reply
            // was read, such fds never reach the caller.
            log::warn!("closed {} fds that came with a {command} reply", fds.len());
            fds.clear();
        }
        Ok(Reply {
            header,
            payload: msg.payload,
            fds,
            data_in_buffer: msg.data_in_buffer,
        })
    }
}
