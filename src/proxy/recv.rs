// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The receive state machine.
//!
//! Small messages are read in one `recvmsg` into a reused buffer ([`SMALL_BUFFER`] bytes),
//! header and body together, and parsed from there: a typical reply costs one call. The
//! read may take in the start of the next message too; it stays buffered until parsed. A
//! message larger than the buffer gets a body buffer of its own (its size bounded before
//! allocating) and the rest of its body is read into it with exact lengths. The machine
//! survives partial reads at any byte, and drains (without storing) the body of a message
//! it cannot accept, so that the stream stays in step.
//!
//! fds: the kernel ends a read at the end of the first data segment that carried fds, so
//! the fds of a read belong to the message that holds the read's last byte. They are kept
//! apart (`tail_fds`) until parsing reaches that message.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use super::error::DisconnectReason;
use super::socket;
use crate::protocol::{DecodeError, Header, HEADER_SIZE};

/// Bytes read at once for messages that fit (header included); larger messages get a
/// buffer of their own.
pub(crate) const SMALL_BUFFER: usize = 4096;

/// A complete message read from the socket.
#[derive(Debug)]
pub(crate) struct Received {
    pub header: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// What one step of the state machine produced.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A whole message.
    Message(Received),
    /// A message whose body was drained and dropped, with the reason.
    Discarded { header: Header, why: String },
}

/// A message whose body does not fit the small buffer (or is being thrown away).
#[derive(Debug)]
enum Large {
    Keep {
        header: Header,
        buf: Vec<u8>,
        got: usize,
    },
    Discard {
        header: Header,
        left: usize,
        why: String,
    },
}

#[derive(Debug)]
pub(crate) struct Receiver {
    /// Bytes read and not parsed yet are `buf[start..end]`; they begin at a message
    /// boundary (the head message) unless `large` is set, in which case the buffer is empty.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// fds of the head message.
    fds: Vec<OwnedFd>,
    /// fds of the message holding the buffer's last byte (see the module comment).
    tail_fds: Vec<OwnedFd>,
    large: Option<Large>,
    max_size: u32,
    max_fds: usize,
}

fn disconnect(e: io::Error) -> DisconnectReason {
    if e.raw_os_error() == Some(libc::ENOBUFS) {
        return too_many_fds();
    }
    super::error::io_reason(&e)
}

fn too_many_fds() -> DisconnectReason {
    DisconnectReason::ProtocolViolation("more fds than allowed in one message".into())
}

impl Receiver {
    /// A receiver accepting messages of at most `max_size` bytes (header included) and at
    /// most `max_fds` fds each.
    pub fn new(max_size: u32, max_fds: usize) -> Self {
        Receiver {
            buf: vec![0; SMALL_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            fds: Vec::new(),
            tail_fds: Vec::new(),
            large: None,
            max_size: max_size.max(HEADER_SIZE as u32),
            max_fds,
        }
    }

    /// Returns the next message, reading from the socket only when no complete message is
    /// buffered; `Ok(None)` when the socket has no more data for now (with `block`: when a
    /// read timed out). An error means the stream is unusable.
    pub fn step(
        &mut self,
        sock: &UnixStream,
        block: bool,
    ) -> Result<Option<Incoming>, DisconnectReason> {
        loop {
            if let Some(incoming) = self.buffered()? {
                return Ok(Some(incoming));
            }
            if !self.fill(sock, block)? {
                return Ok(None);
            }
        }
    }

    /// Returns the next message that is complete in the buffer, without reading.
    ///
    /// Whoever stops reading must first take every buffered message, so that an empty
    /// socket always means that there is nothing to dispatch.
    pub fn buffered(&mut self) -> Result<Option<Incoming>, DisconnectReason> {
        if let Some(large) = &mut self.large {
            let done = match large {
                Large::Keep { buf, got, .. } => *got >= buf.len(),
                Large::Discard { left, .. } => *left == 0,
            };
            if !done {
                return Ok(None);
            }
            let fds = std::mem::take(&mut self.fds);
            return Ok(match self.large.take() {
                Some(Large::Keep { header, buf, .. }) => Some(Incoming::Message(Received {
                    header,
                    payload: buf,
                    fds,
                })),
                Some(Large::Discard { header, why, .. }) => {
                    Some(Incoming::Discarded { header, why })
                }
                None => None,
            });
        }
        let avail = self.end.saturating_sub(self.start);
        let Some(hdr) = self
            .buf
            .get(self.start..self.end)
            .and_then(|b| b.get(..HEADER_SIZE))
            .and_then(|b| <[u8; HEADER_SIZE]>::try_from(b).ok())
        else {
            // The head message holds the buffer's last byte.
            self.adopt_tail_fds()?;
            return Ok(None);
        };
        let raw = Header::from_bytes(&hdr);
        if raw.size as usize >= avail {
            self.adopt_tail_fds()?;
        }
        match Header::decode(&hdr, self.max_size) {
            Ok(header) => {
                let size = header.size as usize;
                if size <= avail {
                    let payload = self
                        .buf
                        .get(self.start + HEADER_SIZE..self.start + size)
                        .unwrap_or_default()
                        .to_vec();
                    let fds = std::mem::take(&mut self.fds);
                    self.consume(size);
                    return Ok(Some(Incoming::Message(Received {
                        header,
                        payload,
                        fds,
                    })));
                }
                if size <= self.buf.len() {
                    // Fits: more reads into the small buffer complete it.
                    return Ok(None);
                }
                // `decode` bounded `size` by `max_size`, so this allocation is bounded too.
                let mut body = vec![0; header.payload_len()];
                let have = self
                    .buf
                    .get(self.start + HEADER_SIZE..self.end)
                    .unwrap_or_default();
                let got = have.len();
                if let Some(dst) = body.get_mut(..got) {
                    dst.copy_from_slice(have);
                }
                self.consume(avail);
                self.large = Some(Large::Keep {
                    header,
                    buf: body,
                    got,
                });
                Ok(None)
            }
            Err(DecodeError::InvalidField {
                field: "header.msg_size",
                value,
            }) => Err(DisconnectReason::ProtocolViolation(format!(
                "message size {value} is smaller than the header ({raw})"
            ))),
            Err(e) => {
                let left = raw.payload_len();
                let skip = left.min(avail - HEADER_SIZE);
                self.consume(HEADER_SIZE + skip);
                let left = left - skip;
                let why = e.to_string();
                if left == 0 {
                    self.fds.clear();
                    return Ok(Some(Incoming::Discarded { header: raw, why }));
                }
                self.large = Some(Large::Discard {
                    header: raw,
                    left,
                    why,
                });
                Ok(None)
            }
        }
    }

    /// The head message holds the buffer's last byte: the last read's fds are its own.
    fn adopt_tail_fds(&mut self) -> Result<(), DisconnectReason> {
        if !self.tail_fds.is_empty() {
            self.fds.append(&mut self.tail_fds);
            if self.fds.len() > self.max_fds {
                return Err(too_many_fds());
            }
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once (waiting for data if `block`, up to the socket's receive timeout);
    /// returns `false` when there is no data.
    fn fill(&mut self, sock: &UnixStream, block: bool) -> Result<bool, DisconnectReason> {
        let (buf, large) = match &mut self.large {
            Some(Large::Keep { buf, got, .. }) => (buf.get_mut(*got..).unwrap_or_default(), true),
            Some(Large::Discard { left, .. }) => {
                let n = (*left).min(self.buf.len());
                (self.buf.get_mut(..n).unwrap_or_default(), true)
            }
            None => {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                }
                (self.buf.get_mut(self.end..).unwrap_or_default(), false)
            }
        };
        if buf.is_empty() {
            // Cannot happen: a message that fits is incomplete only while there is room,
            // and a large one is complete when its buffer is full.
            return Err(DisconnectReason::ProtocolViolation(
                "receive buffer full".into(),
            ));
        }
        let received = if block {
            socket::recv_with_fds(sock, buf, self.max_fds)
        } else {
            socket::try_recv_with_fds(sock, buf, self.max_fds)
        };
        let (n, fds) = match received {
            Ok((0, _)) => return Err(DisconnectReason::PeerClosed),
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(disconnect(e)),
        };
        match &mut self.large {
            Some(Large::Keep { got, .. }) => *got += n,
            Some(Large::Discard { left, .. }) => *left = left.saturating_sub(n),
            None => self.end += n,
        }
        if large {
            // Exact reads never reach past the large message: the fds are its own.
            self.fds.extend(fds);
            if self.fds.len() > self.max_fds {
                return Err(too_many_fds());
            }
        } else {
            self.tail_fds.extend(fds);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;
    use std::io::Write;

    fn msg(id: u16, payload: &[u8], flags: u32) -> Vec<u8> {
        let mut h = Header::command(id, Command::RegionRead, payload.len(), false).unwrap();
        h.flags = flags;
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn survives_byte_at_a_time() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut r = Receiver::new(1024, 4);
        let bytes = msg(3, &[1, 2, 3, 4, 5], 1);
        for (i, byte) in bytes.iter().enumerate() {
            assert!(r.step(&b, false).unwrap().is_none());
            a.write_all(&[*byte]).unwrap();
            if i + 1 < bytes.len() {
                assert!(r.step(&b, false).unwrap().is_none());
            }
        }
        match r.step(&b, false).unwrap() {
            Some(Incoming::Message(m)) => {
                assert_eq!(m.header.id, 3);
                assert_eq!(m.payload, vec![1, 2, 3, 4, 5]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_and_bad_type_are_drained() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut r = Receiver::new(64, 4);
        a.write_all(&msg(1, &[7; 100], 1)).unwrap();
        a.write_all(&msg(2, &[7; 8], 0xe)).unwrap();
        a.write_all(&msg(3, &[9; 8], 1)).unwrap();
        assert!(matches!(
            r.step(&b, false).unwrap(),
            Some(Incoming::Discarded { header, .. }) if header.id == 1
        ));
        assert!(matches!(
            r.step(&b, false).unwrap(),
            Some(Incoming::Discarded { header, .. }) if header.id == 2
        ));
        match r.step(&b, false).unwrap() {
            Some(Incoming::Message(m)) => assert_eq!(m.payload, vec![9; 8]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn undersized_header_and_eof_disconnect() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut r = Receiver::new(64, 4);
        let mut bad = msg(1, &[], 1);
        bad[4..8].copy_from_slice(&8u32.to_ne_bytes());
        a.write_all(&bad).unwrap();
        assert!(matches!(
            r.step(&b, false),
            Err(DisconnectReason::ProtocolViolation(_))
        ));
        let mut r = Receiver::new(64, 4);
        a.write_all(&msg(1, &[1; 8], 1)[..20]).unwrap();
        drop(a);
        assert_eq!(r.step(&b, false).unwrap_err(), DisconnectReason::PeerClosed);
    }

    fn message(r: &mut Receiver, sock: &UnixStream) -> Received {
        match r.step(sock, false).unwrap() {
            Some(Incoming::Message(m)) => m,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn one_read_takes_several_messages() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(1 << 20, 4);
        let mut bytes = msg(1, b"first", 1);
        bytes.extend(msg(2, b"", 1));
        bytes.extend(msg(3, &[7; 300], 1));
        // The start of a fourth message: stays buffered until the rest comes.
        let fourth = msg(4, &[8; 40], 1);
        bytes.extend(&fourth[..20]);
        a.write_all(&bytes).unwrap();
        assert_eq!(message(&mut r, &b).payload, b"first");
        assert_eq!(r.buffered().unwrap().map(|_| ()), Some(()));
        assert_eq!(message(&mut r, &b).payload, vec![7; 300]);
        assert!(r.buffered().unwrap().is_none());
        assert!(r.step(&b, false).unwrap().is_none());
        a.write_all(&fourth[20..]).unwrap();
        let m = message(&mut r, &b);
        assert_eq!((m.header.id, m.payload), (4, vec![8; 40]));
    }

    #[test]
    fn large_message_gets_its_own_buffer() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(1 << 20, 4);
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut bytes = msg(1, &big, 1);
        bytes.extend(msg(2, b"after", 1));
        // In pieces that straddle the small buffer's size.
        for piece in bytes.chunks(3000) {
            a.write_all(piece).unwrap();
            if let Some(Incoming::Message(m)) = r.step(&b, false).unwrap() {
                assert_eq!((m.header.id, m.payload.len()), (1, big.len()));
                assert_eq!(m.payload, big);
            }
        }
        let m = message(&mut r, &b);
        assert_eq!((m.header.id, m.payload.as_slice()), (2, &b"after"[..]));
    }

    #[test]
    fn oversized_message_is_drained_across_reads() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(64, 4);
        let mut bytes = msg(1, &[1; 10_000], 1);
        bytes.extend(msg(2, b"ok", 1));
        for piece in bytes.chunks(1000) {
            a.write_all(piece).unwrap();
            if let Some(incoming) = r.step(&b, false).unwrap() {
                assert!(
                    matches!(incoming, Incoming::Discarded { header, .. } if header.id == 1),
                    "{incoming:?}"
                );
            }
        }
        assert_eq!(message(&mut r, &b).payload, b"ok");
    }

    fn send_fds(a: &UnixStream, bytes: &[u8], n: usize) -> Vec<vmm_sys_util::eventfd::EventFd> {
        use std::os::fd::AsRawFd;
        let evs: Vec<_> = (0..n)
            .map(|_| vmm_sys_util::eventfd::EventFd::new(0).unwrap())
            .collect();
        let raw: Vec<_> = evs.iter().map(|e| e.as_raw_fd()).collect();
        assert_eq!(
            socket::send_with_fds(a, &[bytes], &raw).unwrap(),
            bytes.len()
        );
        evs
    }

    #[test]
    fn fds_belong_to_the_message_they_came_with() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(1 << 20, 4);
        // No fds, then two fds, then one: the first read takes the first two messages (the
        // kernel ends a read after the data that carried fds), the second the third.
        send_fds(&a, &msg(1, b"none", 1), 0);
        let _two = send_fds(&a, &msg(2, b"two", 1), 2);
        let _one = send_fds(&a, &msg(3, b"one", 1), 1);
        let counts: Vec<(u16, usize)> = (0..3)
            .map(|_| {
                let m = message(&mut r, &b);
                (m.header.id, m.fds.len())
            })
            .collect();
        assert_eq!(counts, [(1, 0), (2, 2), (3, 1)]);
        // fds on the later half of a message sent in two parts still belong to it.
        let whole = msg(4, &[3; 64], 1);
        send_fds(&a, &whole[..10], 0);
        let _late = send_fds(&a, &whole[10..], 1);
        let m = message(&mut r, &b);
        assert_eq!((m.header.id, m.fds.len()), (4, 1));
    }

    #[test]
    fn fds_of_a_large_message_and_too_many_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(1 << 20, 2);
        let big = msg(1, &[5; 20_000], 1);
        let _fds = send_fds(&a, &big[..100], 1);
        let _more = send_fds(&a, &big[100..], 1);
        let m = message(&mut r, &b);
        assert_eq!((m.payload.len(), m.fds.len()), (20_000, 2));
        // Three fds in two parts of one message: more than the limit of two.
        let small = msg(2, &[6; 32], 1);
        let _x = send_fds(&a, &small[..8], 2);
        let _y = send_fds(&a, &small[8..], 1);
        assert_eq!(
            r.step(&b, false).unwrap_err(),
            DisconnectReason::ProtocolViolation("more fds than allowed in one message".into())
        );
    }
}
