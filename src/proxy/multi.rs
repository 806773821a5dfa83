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

use super::{command_header, lock, Error, Inner, Outgoing, Proxy, SendQueue, POSTED_ID_BIT};
use crate::protocol::{Command, Header, RegionWriteMulti, WriteMultiEntry, HEADER_SIZE};
use std::sync::atomic::Ordering;

/// Most entries in one REGION_WRITE_MULTI (QEMU's `VFIO_USER_MULTI_MAX`).
const MAX_ENTRIES: usize = 200;

impl Proxy {
    /// Posts a REGION_WRITE (`No_reply`) whose payload is `payload`; see [`Proxy::post`].
    ///
    /// With `entry` (the same write as a REGION_WRITE_MULTI entry, for a server that
    /// accepts those) and messages waiting in the send queue, the write joins a
    /// REGION_WRITE_MULTI at the queue's tail instead (see the module comment).
    pub(crate) fn post_write(
        &self,
        payload: &[u8],
        entry: Option<&WriteMultiEntry>,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        inner.check_send(Command::RegionWrite, payload.len(), 0)?;
        let mut q = lock(&inner.send);
        if let Some(entry) = entry {
            if !q.queue.is_empty() && inner.coalesce(&mut q, entry) {
                return Ok(());
            }
        }
        let id = inner.next_posted_id.fetch_add(1, Ordering::Relaxed) | POSTED_ID_BIT;
        let header = command_header(id, Command::RegionWrite, payload.len(), true)?;
        inner.send_locked(q, &header, payload, &[])
    }
}

impl Inner {
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
        if let Some(tail) = q.queue.back_mut() {
            if tail.multi > 0 && tail.multi < limit && tail.sent == 0 {
                let entries = tail.multi + 1;
                let Some(header) = multi_header(tail_id(&tail.buf), entries) else {
                    return false;
                };
                let wr_cnt = (entries as u64).to_ne_bytes();
                let head = tail.buf.get_mut(..HEADER_SIZE + wr_cnt.len());
                let Some((hdr, count)) = head.map(|h| h.split_at_mut(HEADER_SIZE)) else {
                    return false;
                };
                hdr.copy_from_slice(&header.to_bytes());
                count.copy_from_slice(&wr_cnt);
                entry.encode_into(&mut tail.buf);
                tail.multi = entries;
                q.bytes += WriteMultiEntry::SIZE;
                return true;
            }
        }
        let id = self.next_posted_id.fetch_add(1, Ordering::Relaxed) | POSTED_ID_BIT;
        let Some(header) = multi_header(id, 1) else {
            return false;
        };
        let mut buf = Vec::with_capacity(
            HEADER_SIZE + RegionWriteMulti::HEAD_SIZE + limit * WriteMultiEntry::SIZE,
        );
        buf.extend_from_slice(&header.to_bytes());
        buf.extend_from_slice(&1u64.to_ne_bytes());
        entry.encode_into(&mut buf);
        q.bytes += buf.len();
        // The queue was not empty: the subscriber has been told to drain it already.
        q.queue.push_back(Outgoing {
            buf,
            data: None,
            sent: 0,
            fds: Vec::new(),
            multi: 1,
        });
        true
    }
}

/// The header of a posted REGION_WRITE_MULTI with `entries` entries.
fn multi_header(id: u16, entries: usize) -> Option<Header> {
    let len = RegionWriteMulti::HEAD_SIZE + entries * WriteMultiEntry::SIZE;
    Header::command(id, Command::RegionWriteMulti, len, true)
}

/// The message id in an encoded header.
fn tail_id(buf: &[u8]) -> u16 {
    let mut id = [0u8; 2];
    if let Some(b) = buf.get(..2) {
        id.copy_from_slice(b);
    }
    u16::from_ne_bytes(id)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::protocol::RegionAccess;
    use crate::proxy::{socket, ProxyConfig};

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

    fn read_msg(sock: &mut UnixStream) -> (Header, Vec<u8>) {
        let mut hdr = [0u8; HEADER_SIZE];
        sock.read_exact(&mut hdr).unwrap();
        let h = Header::from_bytes(&hdr);
        let mut body = vec![0u8; h.payload_len()];
        sock.read_exact(&mut body).unwrap();
        (h, body)
    }

    #[test]
    fn queued_writes_coalesce_in_order_up_to_the_limit() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (proxy, _sub) = Proxy::from_stream(ours, ProxyConfig::default()).unwrap();
        // Nobody reads: posted writes go at once until the socket is full.
        let mut filled = 0;
        while proxy.queued_messages() == 0 {
            let (p, e) = write(0, filled);
            proxy.post_write(&p, Some(&e)).unwrap();
            filled += 1;
        }
        // Then they coalesce: 250 make a multi of 200 and one of 50.
        for k in 0..250 {
            let (p, e) = write(8 * u64::from(k), k);
            proxy.post_write(&p, Some(&e)).unwrap();
        }
        assert_eq!(proxy.queued_messages(), 3);
        // A write that may not coalesce closes the open multi; the next starts one.
        let (p, _) = write(4, 7);
        proxy.post_write(&p, None).unwrap();
        let (p, e) = write(4, 8);
        proxy.post_write(&p, Some(&e)).unwrap();
        assert_eq!(proxy.queued_messages(), 5);

        let reader = std::thread::spawn(move || {
            (0..filled + 4)
                .map(|_| read_msg(&mut theirs))
                .collect::<Vec<_>>()
        });
        while !proxy.inner.drain_send_queue().unwrap() {
            socket::poll_fd(proxy.inner.sock.as_raw_fd(), true, 1000).unwrap();
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
            assert!(h.no_reply() && h.id & POSTED_ID_BIT != 0);
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
        assert_eq!(proxy.inner.send.lock().unwrap().bytes, 0);
    }

    #[test]
    fn no_multi_past_the_servers_message_limit() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (proxy, _sub) = Proxy::from_stream(ours, ProxyConfig::default()).unwrap();
        // Room for one entry only: coalescing is pointless, writes queue one by one.
        proxy.set_send_limits(1, RegionWriteMulti::HEAD_SIZE + WriteMultiEntry::SIZE);
        while proxy.queued_messages() == 0 {
            let (p, e) = write(0, 0);
            proxy.post_write(&p, Some(&e)).unwrap();
        }
        for k in 0..3 {
            let (p, e) = write(0, k);
            proxy.post_write(&p, Some(&e)).unwrap();
        }
        assert_eq!(proxy.queued_messages(), 4);
    }
}
