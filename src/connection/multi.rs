// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Posted region writes, coalesced into REGION_WRITE_MULTI while the socket is backed up
//! (as QEMU's client does, when the server offers `write_multiple`).
//!
//! A posted write that finds the send queue empty is written at once as a REGION_WRITE:
//! coalescing never delays a write. One that finds messages queued (the socket is full)
//! would wait behind them anyway; if it carries at most 8 bytes it joins the
//! REGION_WRITE_MULTI at the queue's tail, or starts one there. A multi message takes
//! entries while it is the queue's last message, none of it has been written yet, and it
//! holds fewer than [`MAX_ENTRIES`]; so anything queued behind it (a request that waits for
//! a reply, a larger write, a reply to the server) closes it, and every write keeps its
//! place in the order of messages. It goes out as soon as the queue ahead of it drains,
//! sooner than its writes would have one by one.

use std::sync::atomic::Ordering;

use super::inner::Inner;
use super::pending::NO_REPLY_ID_BIT;
use super::send::{command_header, Outgoing, SendQueue};
use super::Error;
use crate::protocol::{Command, Header, RegionWriteMulti, WriteMultiEntry};
use crate::sync::lock;

/// Most entries in one REGION_WRITE_MULTI (QEMU's `VFIO_USER_MULTI_MAX`).
const MAX_ENTRIES: usize = 200;

impl Inner {
    /// Posts a REGION_WRITE (`No_reply`) whose payload is `payload`; see
    /// [`Connection::send_no_reply`](super::Connection::send_no_reply), whose checks it
    /// makes first (an unresponsive connection fails fast).
    ///
    /// With `entry` (the same write as a REGION_WRITE_MULTI entry, for a server that
    /// accepts those) and messages waiting in the send queue, the write joins a
    /// REGION_WRITE_MULTI at the queue's tail instead (see the module comment).
    pub(crate) fn post_write(
        &self,
        payload: &[u8],
        entry: Option<&WriteMultiEntry>,
    ) -> Result<(), Error> {
        self.check_send(Command::RegionWrite, payload.len(), 0)?;
        let mut q = lock(&self.send);
        if let Some(entry) = entry {
            if !q.is_empty() && self.coalesce(&mut q, entry) {
                return Ok(());
            }
        }
        let id = self.next_no_reply_id.fetch_add(1, Ordering::Relaxed) | NO_REPLY_ID_BIT;
        let header = command_header(id, Command::RegionWrite, payload.len(), true)?;
        self.send_locked(q, &header, payload, &[])
    }

    /// Adds `entry` to the open REGION_WRITE_MULTI at the tail of the (non-empty) queue, or
    /// queues a new one; `false` when the connection is down or a multi message would not
    /// fit the server's limit.
    fn coalesce(&self, q: &mut SendQueue, entry: &WriteMultiEntry) -> bool {
        let room = self
            .max_send_size
            .load(Ordering::Relaxed)
            .saturating_sub(RegionWriteMulti::HEAD_SIZE)
            / WriteMultiEntry::SIZE;
        let limit = room.min(MAX_ENTRIES);
        if limit < 2 || !self.connected.load(Ordering::Acquire) {
            return false;
        }
        if let Some(tail) = q.open_multi(limit) {
            let entries = tail.multi + 1;
            let id = Header::from_bytes(&tail.head).id;
            let Some(header) = multi_header(id, entries) else {
                return false;
            };
            let Some(count) = tail.body.get_mut(..RegionWriteMulti::HEAD_SIZE) else {
                return false;
            };
            count.copy_from_slice(&(entries as u64).to_ne_bytes());
            tail.head = header.to_bytes();
            entry.encode_into(&mut tail.body);
            tail.multi = entries;
            q.add_bytes(WriteMultiEntry::SIZE);
            return true;
        }
        let id = self.next_no_reply_id.fetch_add(1, Ordering::Relaxed) | NO_REPLY_ID_BIT;
        let Some(header) = multi_header(id, 1) else {
            return false;
        };
        let mut body =
            Vec::with_capacity(RegionWriteMulti::HEAD_SIZE + limit * WriteMultiEntry::SIZE);
        body.extend_from_slice(&1u64.to_ne_bytes());
        entry.encode_into(&mut body);
        let mut out = Outgoing::new(&header, body, None);
        out.multi = 1;
        // The queue was not empty: the subscriber has been told to drain it already.
        q.push(out);
        true
    }
}

impl SendQueue {
    /// The REGION_WRITE_MULTI at the queue's tail, if it still takes entries: fewer than
    /// `limit`, and none of it written yet.
    fn open_multi(&mut self, limit: usize) -> Option<&mut Outgoing> {
        self.back_mut()
            .filter(|tail| tail.multi > 0 && tail.multi < limit && tail.sent == 0)
    }
}

/// The header of a posted REGION_WRITE_MULTI with `entries` entries.
fn multi_header(id: u16, entries: usize) -> Option<Header> {
    let len = RegionWriteMulti::HEAD_SIZE + entries * WriteMultiEntry::SIZE;
    Header::command(id, Command::RegionWriteMulti, len, true)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::connection::testing::read_msg;
    use crate::connection::{socket, Settings};
    use crate::protocol::RegionAccess;

    fn write(at: u64, v: u32) -> (Vec<u8>, WriteMultiEntry) {
        let data = v.to_ne_bytes();
        let mut payload = Vec::new();
        RegionAccess {
            offset: at,
            region: 1,
            count: 4,
        }
        .encode_with_data(&data, &mut payload);
        (payload, WriteMultiEntry::new(1, at, &data).unwrap())
    }

    #[test]
    fn queued_writes_coalesce_in_order_up_to_the_limit() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (inner, _sub) = Inner::new(ours, Settings::default()).unwrap();
        // Nobody reads: posted writes go at once until the socket is full.
        let mut filled = 0;
        while inner.queued_messages() == 0 {
            let (p, e) = write(0, filled);
            inner.post_write(&p, Some(&e)).unwrap();
            filled += 1;
        }
        // Then they coalesce: 250 make a multi of 200 and one of 50.
        for k in 0..250 {
            let (p, e) = write(8 * u64::from(k), k);
            inner.post_write(&p, Some(&e)).unwrap();
        }
        assert_eq!(inner.queued_messages(), 3);
        // A write that may not coalesce closes the open multi; the next starts one.
        let (p, _) = write(4, 7);
        inner.post_write(&p, None).unwrap();
        let (p, e) = write(4, 8);
        inner.post_write(&p, Some(&e)).unwrap();
        assert_eq!(inner.queued_messages(), 5);

        let reader = std::thread::spawn(move || {
            (0..filled + 4)
                .map(|_| read_msg(&mut theirs))
                .collect::<Vec<_>>()
        });
        while !inner.drain_send_queue().unwrap() {
            socket::poll_fd(inner.sock.as_raw_fd(), true, 1000).unwrap();
        }
        let msgs = reader.join().unwrap();
        let (plain, rest) = msgs.split_at(filled as usize);
        for (i, (h, body)) in plain.iter().enumerate() {
            assert_eq!(h.command, Command::RegionWrite as u16);
            assert!(h.no_reply());
            assert_eq!(body, &write(0, i as u32).0);
        }
        let multi = |(h, body): &(Header, Vec<u8>)| {
            assert_eq!(h.command, Command::RegionWriteMulti as u16);
            assert!(h.no_reply() && h.id & NO_REPLY_ID_BIT != 0);
            RegionWriteMulti::decode(body).unwrap().writes
        };
        let first = multi(&rest[0]);
        assert_eq!(first.len(), MAX_ENTRIES);
        let second = multi(&rest[1]);
        assert_eq!(second.len(), 50);
        for (k, w) in first.iter().chain(&second).enumerate() {
            assert_eq!(*w, write(8 * k as u64, k as u32).1);
        }
        assert_eq!(rest[2].0.command, Command::RegionWrite as u16);
        assert_eq!(rest[2].1, write(4, 7).0);
        assert_eq!(multi(&rest[3]), vec![write(4, 8).1]);
        assert_eq!(inner.send.lock().unwrap().bytes(), 0);
    }

    #[test]
    fn no_multi_past_the_servers_message_limit() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (inner, _sub) = Inner::new(ours, Settings::default()).unwrap();
        // Room for one entry only: coalescing is pointless, writes queue one by one.
        inner.set_send_limits(1, RegionWriteMulti::HEAD_SIZE + WriteMultiEntry::SIZE);
        while inner.queued_messages() == 0 {
            let (p, e) = write(0, 0);
            inner.post_write(&p, Some(&e)).unwrap();
        }
        for k in 0..3 {
            let (p, e) = write(0, k);
            inner.post_write(&p, Some(&e)).unwrap();
        }
        assert_eq!(inner.queued_messages(), 4);
    }
}
