// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The receive state machine.
//!
//! Small messages are read in one `recvmsg` into a reused buffer ([`SMALL_BUFFER`] bytes),
//! header and body together, and parsed from there: a typical reply costs one call. The
//! read may take in the start of the next message too; it stays buffered until parsed. A
//! message larger than the buffer gets a body buffer of its own (its size bounded before
//! allocating, and not zeroed: the kernel fills it) and the rest of its body is read into
//! it with exact lengths. The machine survives partial reads at any byte, and drains
//! (without storing) the body of a message it cannot accept, so that the stream stays in
//! step.
//!
//! Sinks: a reader waiting for one particular reply may offer a [`Sink`], the caller's own
//! buffer. When the header of that reply comes (its id and command, not an error, payload
//! exactly `head_len + data.len()` bytes), the first `head_len` payload bytes go to the
//! message's payload and the rest straight into the sink. The sink is borrowed per call
//! only; the state between calls is a count, never a pointer. A transfer into a sink must
//! not outlive its owner's hold of the receive lock: the owner either finishes it or
//! abandons it ([`Receiver::abandon_sink`]), which turns the rest into a drain. A reader
//! that finds a transfer whose sink it does not hold drains the rest too (defensive: an
//! owner that panicked).
//!
//! fds: the kernel ends a read at the end of the first data segment that carried fds, so
//! the fds of a read belong to the message that holds the read's last byte. They are kept
//! apart (`tail_fds`) until parsing reaches that message.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use super::error::DisconnectReason;
use super::socket;
use crate::protocol::{DecodeError, Header, MessageType, HEADER_SIZE};

/// Bytes read at once for messages that fit (header included); larger messages get a
/// buffer of their own.
pub(crate) const SMALL_BUFFER: usize = 4096;

/// A complete message read from the socket.
#[derive(Debug)]
pub(crate) struct Received {
    pub header: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// The payload holds only the head; the rest went into the reader's [`Sink`].
    pub data_in_sink: bool,
}

/// A reader's own buffer for the data of the reply it waits for (see the module comment).
#[derive(Debug)]
pub(crate) struct Sink<'a> {
    /// Tells this sink's transfers apart from any other's (unique per waiting call).
    pub token: u64,
    /// Id of the awaited reply.
    pub id: u16,
    /// Its command.
    pub command: u16,
    /// Payload bytes before the data (kept in the message's payload).
    pub head_len: usize,
    /// Where the data goes.
    pub data: &'a mut [u8],
}

impl Sink<'_> {
    fn accepts(&self, header: &Header) -> bool {
        header.id == self.id
            && header.command == self.command
            && header.message_type() == Some(MessageType::Reply)
            && !header.is_error()
            && Some(header.payload_len()) == self.head_len.checked_add(self.data.len())
    }
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
    /// Read into `buf`'s spare capacity until it holds `want` bytes.
    Keep {
        header: Header,
        buf: Vec<u8>,
        want: usize,
    },
    /// Read into the sink with this `token`: `head` until it holds `head_len` bytes, then
    /// the sink until `got == data_len`.
    Sink {
        header: Header,
        token: u64,
        head: Vec<u8>,
        head_len: usize,
        got: usize,
        data_len: usize,
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
    ///
    /// With a `sink`, the reply it waits for is read into it (see the module comment).
    pub fn step(
        &mut self,
        sock: &UnixStream,
        block: bool,
        mut sink: Option<&mut Sink<'_>>,
    ) -> Result<Option<Incoming>, DisconnectReason> {
        loop {
            if let Some(incoming) = self.buffered(sink.as_deref_mut())? {
                return Ok(Some(incoming));
            }
            if !self.fill(sock, block, sink.as_deref_mut())? {
                return Ok(None);
            }
        }
    }

    /// Reads once without waiting, for whoever then takes the complete messages with
    /// [`buffered`](Self::buffered); `false` when the socket had no data.
    pub fn read_once(&mut self, sock: &UnixStream) -> Result<bool, DisconnectReason> {
        self.fill(sock, false, None)
    }

    /// Whether a transfer into the sink with `token` is under way.
    pub fn sink_busy(&self, token: u64) -> bool {
        matches!(&self.large, Some(Large::Sink { token: t, .. }) if *t == token)
    }

    /// Gives up the transfer into the sink with `token`, if one is under way: the rest of
    /// the message is drained by whoever reads next, and nothing more is written to the
    /// sink. Returns whether there was one. The sink's owner calls this before it lets go
    /// of the receive lock.
    pub fn abandon_sink(&mut self, token: u64) -> bool {
        if !self.sink_busy(token) {
            return false;
        }
        self.orphan_sink(None, "the waiter gave up while its reply was arriving");
        true
    }

    /// Turns a transfer into a sink other than `owner`'s into a drain of the rest.
    fn orphan_sink(&mut self, owner: Option<u64>, why: &str) {
        let Some(Large::Sink {
            header,
            token,
            head,
            head_len,
            got,
            data_len,
        }) = &self.large
        else {
            return;
        };
        if Some(*token) == owner {
            return;
        }
        let left = head_len.saturating_sub(head.len()) + data_len.saturating_sub(*got);
        self.large = Some(Large::Discard {
            header: *header,
            left,
            why: why.to_string(),
        });
    }

    /// Returns the next message that is complete in the buffer, without reading.
    ///
    /// Whoever stops reading must first take every buffered message, so that an empty
    /// socket always means that there is nothing to dispatch.
    pub fn buffered(
        &mut self,
        sink: Option<&mut Sink<'_>>,
    ) -> Result<Option<Incoming>, DisconnectReason> {
        if self.large.is_some() {
            self.orphan_sink(
                sink.as_ref().map(|s| s.token),
                "the reader of its sink went away",
            );
        }
        if let Some(large) = &mut self.large {
            let done = match large {
                Large::Keep { buf, want, .. } => buf.len() >= *want,
                Large::Sink {
                    head,
                    head_len,
                    got,
                    data_len,
                    ..
                } => head.len() >= *head_len && got >= data_len,
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
                    data_in_sink: false,
                })),
                Some(Large::Sink { header, head, .. }) => Some(Incoming::Message(Received {
                    header,
                    payload: head,
                    fds,
                    data_in_sink: true,
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
                let sink = sink.filter(|s| s.accepts(&header));
                if size > avail && size <= self.buf.len() {
                    // Fits: more reads into the small buffer complete it.
                    return Ok(None);
                }
                // The body, or the part of it that is here.
                let have = self
                    .buf
                    .get(self.start + HEADER_SIZE..self.start + size.min(avail))
                    .unwrap_or_default();
                let got = have.len();
                let whole = size <= avail;
                if let Some(sink) = sink {
                    // `accepts` checked that the payload is `head_len + data.len()` bytes.
                    let head_len = sink.head_len;
                    let (in_head, in_data) = have.split_at(got.min(head_len));
                    let mut head = super::reuse::buffer();
                    head.reserve(head_len);
                    head.extend_from_slice(in_head);
                    if let Some(dst) = sink.data.get_mut(..in_data.len()) {
                        dst.copy_from_slice(in_data);
                    }
                    let data_len = sink.data.len();
                    let data_got = in_data.len();
                    self.consume(HEADER_SIZE + got);
                    if whole {
                        let fds = std::mem::take(&mut self.fds);
                        return Ok(Some(Incoming::Message(Received {
                            header,
                            payload: head,
                            fds,
                            data_in_sink: true,
                        })));
                    }
                    self.large = Some(Large::Sink {
                        header,
                        token: sink.token,
                        head,
                        head_len,
                        got: data_got,
                        data_len,
                    });
                    return Ok(None);
                }
                if whole {
                    let mut payload = super::reuse::buffer();
                    payload.extend_from_slice(have);
                    let fds = std::mem::take(&mut self.fds);
                    self.consume(size);
                    return Ok(Some(Incoming::Message(Received {
                        header,
                        payload,
                        fds,
                        data_in_sink: false,
                    })));
                }
                // `decode` bounded `size` by `max_size`, so this allocation is bounded too.
                // Not zeroed: reads go into its spare capacity.
                let want = header.payload_len();
                let mut body = Vec::with_capacity(want);
                body.extend_from_slice(have);
                self.consume(avail);
                self.large = Some(Large::Keep {
                    header,
                    buf: body,
                    want,
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
    fn fill(
        &mut self,
        sock: &UnixStream,
        block: bool,
        sink: Option<&mut Sink<'_>>,
    ) -> Result<bool, DisconnectReason> {
        self.orphan_sink(
            sink.as_ref().map(|s| s.token),
            "the reader of its sink went away",
        );
        let max_fds = self.max_fds;
        let recv = |buf: &mut [u8]| {
            if block {
                socket::recv_with_fds(sock, buf, max_fds)
            } else {
                socket::try_recv_with_fds(sock, buf, max_fds)
            }
        };
        let received = match &mut self.large {
            Some(Large::Keep { buf, want, .. }) => {
                let limit = want.saturating_sub(buf.len());
                if limit == 0 {
                    return Err(full());
                }
                socket::recv_into_spare(sock, buf, limit, max_fds, block)
            }
            Some(Large::Sink {
                head,
                head_len,
                got,
                data_len,
                ..
            }) => {
                if head.len() < *head_len {
                    let limit = *head_len - head.len();
                    socket::recv_into_spare(sock, head, limit, max_fds, block)
                } else {
                    // `orphan_sink` left a transfer only for the sink passed in.
                    let Some(dst) = sink.and_then(|s| s.data.get_mut(*got..*data_len)) else {
                        return Err(full());
                    };
                    if dst.is_empty() {
                        return Err(full());
                    }
                    let r = recv(dst);
                    if let Ok((n, _)) = &r {
                        *got += n;
                    }
                    r
                }
            }
            Some(Large::Discard { left, .. }) => {
                let n = (*left).min(self.buf.len());
                let dst = self.buf.get_mut(..n).unwrap_or_default();
                if dst.is_empty() {
                    return Err(full());
                }
                let r = recv(dst);
                if let Ok((n, _)) = &r {
                    *left = left.saturating_sub(*n);
                }
                r
            }
            None => {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                }
                let dst = self.buf.get_mut(self.end..).unwrap_or_default();
                if dst.is_empty() {
                    return Err(full());
                }
                let r = recv(dst);
                if let Ok((n, _)) = &r {
                    self.end += n;
                }
                r
            }
        };
        let fds = match received {
            Ok((0, _)) => return Err(DisconnectReason::PeerClosed),
            Ok((_, fds)) => fds,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(disconnect(e)),
        };
        if self.large.is_some() {
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

/// Cannot happen: a message that fits is incomplete only while there is room, and a large
/// one is complete when its buffer is full.
fn full() -> DisconnectReason {
    DisconnectReason::ProtocolViolation("receive buffer full".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command, FLAGS_ERROR, FLAGS_TYPE_REPLY};
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
            assert!(r.step(&b, false, None).unwrap().is_none());
            a.write_all(&[*byte]).unwrap();
            if i + 1 < bytes.len() {
                assert!(r.step(&b, false, None).unwrap().is_none());
            }
        }
        match r.step(&b, false, None).unwrap() {
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
            r.step(&b, false, None).unwrap(),
            Some(Incoming::Discarded { header, .. }) if header.id == 1
        ));
        assert!(matches!(
            r.step(&b, false, None).unwrap(),
            Some(Incoming::Discarded { header, .. }) if header.id == 2
        ));
        match r.step(&b, false, None).unwrap() {
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
            r.step(&b, false, None),
            Err(DisconnectReason::ProtocolViolation(_))
        ));
        let mut r = Receiver::new(64, 4);
        a.write_all(&msg(1, &[1; 8], 1)[..20]).unwrap();
        drop(a);
        assert_eq!(
            r.step(&b, false, None).unwrap_err(),
            DisconnectReason::PeerClosed
        );
    }

    fn message(r: &mut Receiver, sock: &UnixStream) -> Received {
        match r.step(sock, false, None).unwrap() {
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
        assert_eq!(r.buffered(None).unwrap().map(|_| ()), Some(()));
        assert_eq!(message(&mut r, &b).payload, vec![7; 300]);
        assert!(r.buffered(None).unwrap().is_none());
        assert!(r.step(&b, false, None).unwrap().is_none());
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
            if let Some(Incoming::Message(m)) = r.step(&b, false, None).unwrap() {
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
            if let Some(incoming) = r.step(&b, false, None).unwrap() {
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
            r.step(&b, false, None).unwrap_err(),
            DisconnectReason::ProtocolViolation("more fds than allowed in one message".into())
        );
    }

    fn sink<'a>(token: u64, id: u16, data: &'a mut [u8]) -> Sink<'a> {
        Sink {
            token,
            id,
            command: Command::RegionRead as u16,
            head_len: 16,
            data,
        }
    }

    /// A reply of id `id`: a 16-byte head then `len` bytes of data.
    fn reply(id: u16, len: usize) -> (Vec<u8>, Vec<u8>) {
        let payload: Vec<u8> = (0..16 + len).map(|i| (i * 7 + 3) as u8).collect();
        (msg(id, &payload, FLAGS_TYPE_REPLY), payload)
    }

    #[test]
    fn sink_takes_a_reply_written_in_many_pieces() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(1 << 20, 4);
        let (bytes, payload) = reply(5, 50_000);
        let mut bytes = bytes;
        bytes.extend(msg(6, b"after", FLAGS_TYPE_REPLY));
        let mut out = vec![0u8; 50_000];
        let mut got = None;
        // Pieces that straddle the head, the small buffer and the data.
        let mut at = 0;
        for len in [3, 20, 1, 4000, 9, 777]
            .into_iter()
            .chain(std::iter::repeat(4096))
        {
            if at >= bytes.len() {
                break;
            }
            let end = (at + len).min(bytes.len());
            a.write_all(&bytes[at..end]).unwrap();
            at = end;
            let mut s = sink(1, 5, &mut out);
            if let Some(incoming) = r.step(&b, false, Some(&mut s)).unwrap() {
                assert!(got.is_none());
                got = Some(incoming);
            }
        }
        match got {
            Some(Incoming::Message(m)) => {
                assert!(m.data_in_sink);
                assert_eq!(m.header.id, 5);
                assert_eq!(m.payload, payload[..16]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(out == payload[16..]);
        let m = message(&mut r, &b);
        assert_eq!((m.header.id, m.data_in_sink), (6, false));
        assert_eq!(m.payload, b"after");
    }

    #[test]
    fn sink_takes_a_small_reply_from_the_buffer() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(1 << 20, 4);
        let (bytes, payload) = reply(9, 100);
        a.write_all(&bytes).unwrap();
        let mut out = [0u8; 100];
        let mut s = sink(1, 9, &mut out);
        match r.step(&b, false, Some(&mut s)).unwrap() {
            Some(Incoming::Message(m)) => {
                assert!(m.data_in_sink);
                assert_eq!(m.payload, payload[..16]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(out[..], payload[16..]);
    }

    #[test]
    fn sink_refuses_other_replies() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(1 << 20, 4);
        let (good, _) = reply(5, 20_000);
        let mut wrong_command = good.clone();
        wrong_command[2..4].copy_from_slice(&(Command::RegionWrite as u16).to_ne_bytes());
        let mut error = good.clone();
        error[8..12].copy_from_slice(&(FLAGS_TYPE_REPLY | FLAGS_ERROR).to_ne_bytes());
        let cases = [
            ("other size", reply(5, 20_001).0),
            ("other id", reply(4, 20_000).0),
            ("other command", wrong_command),
            ("error reply", error),
            ("a command", msg(5, &[1; 20_016], 0)),
        ];
        for (what, bytes) in cases {
            let mut out = vec![0u8; 20_000];
            let mut s = sink(1, 5, &mut out);
            let mut got = None;
            for piece in bytes.chunks(5000) {
                a.write_all(piece).unwrap();
                if let Some(incoming) = r.step(&b, false, Some(&mut s)).unwrap() {
                    got = Some(incoming);
                }
            }
            match got {
                Some(Incoming::Message(m)) => {
                    assert!(!m.data_in_sink, "{what}");
                    assert_eq!(m.payload, bytes[HEADER_SIZE..], "{what}");
                }
                other => panic!("{what}: unexpected {other:?}"),
            }
            assert!(out.iter().all(|&b| b == 0), "{what}: sink written");
        }
    }

    #[test]
    fn abandoned_sink_is_drained() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(1 << 20, 4);
        let (bytes, payload) = reply(5, 30_000);
        let mut out = vec![0u8; 30_000];
        a.write_all(&bytes[..10_000]).unwrap();
        {
            let mut s = sink(7, 5, &mut out);
            assert!(r.step(&b, false, Some(&mut s)).unwrap().is_none());
        }
        assert!(r.sink_busy(7));
        assert!(!r.abandon_sink(8));
        assert!(r.abandon_sink(7));
        assert!(!r.sink_busy(7));
        assert_eq!(out[..10_000 - 32], payload[16..10_000 - HEADER_SIZE]);
        // Nothing more goes to the sink; the rest is drained, and what follows is read.
        let before = out.clone();
        a.write_all(&bytes[10_000..]).unwrap();
        a.write_all(&msg(6, b"next", FLAGS_TYPE_REPLY)).unwrap();
        assert!(matches!(
            r.step(&b, false, None).unwrap(),
            Some(Incoming::Discarded { header, .. }) if header.id == 5
        ));
        assert_eq!(message(&mut r, &b).payload, b"next");
        assert!(out == before);
    }

    #[test]
    fn transfer_without_its_sink_is_drained() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(1 << 20, 4);
        let (bytes, _) = reply(5, 30_000);
        let mut out = vec![0u8; 30_000];
        a.write_all(&bytes[..20]).unwrap();
        let mut s = sink(1, 5, &mut out);
        assert!(r.step(&b, false, Some(&mut s)).unwrap().is_none());
        // Header and part of the head: the head is read with exact lengths next.
        a.write_all(&bytes[20..32]).unwrap();
        assert!(r.step(&b, false, Some(&mut s)).unwrap().is_none());
        assert!(r.sink_busy(1));
        // Another reader (another sink, or none) does not write into it.
        let mut other = vec![0u8; 30_000];
        let mut s2 = sink(2, 5, &mut other);
        a.write_all(&bytes[32..]).unwrap();
        assert!(matches!(
            r.step(&b, false, Some(&mut s2)).unwrap(),
            Some(Incoming::Discarded { header, .. }) if header.id == 5
        ));
        assert!(other.iter().all(|&b| b == 0));
        assert!(out.iter().all(|&b| b == 0));
        a.write_all(&msg(6, b"next", FLAGS_TYPE_REPLY)).unwrap();
        assert_eq!(message(&mut r, &b).payload, b"next");
    }

    #[test]
    fn fds_of_a_sink_reply() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut r = Receiver::new(1 << 20, 2);
        let (bytes, payload) = reply(5, 10_000);
        let _f = send_fds(&a, &bytes[..100], 1);
        let _g = send_fds(&a, &bytes[100..], 1);
        let mut out = vec![0u8; 10_000];
        let mut s = sink(1, 5, &mut out);
        let m = loop {
            if let Some(Incoming::Message(m)) = r.step(&b, false, Some(&mut s)).unwrap() {
                break m;
            }
        };
        assert_eq!((m.data_in_sink, m.fds.len()), (true, 2));
        assert!(out == payload[16..]);
    }
}
