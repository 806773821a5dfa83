// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The framer: cuts the byte stream of a socket into messages. One type serves both
//! sockets; they differ in how much they read at once ([`MAIN_READ_SIZE`],
//! [`TWIN_READ_SIZE`]) and in that only the main socket's readers offer a [`ReplyBuffer`].
//!
//! Messages that fit the read buffer are read in one `recvmsg`, header and body together,
//! and parsed from there: a typical message costs one call. The read may take in the start
//! of the next message too; it stays buffered until parsed. A message larger than the read
//! buffer gets a body buffer of its own (its size bounded before allocating, and not
//! zeroed: the kernel fills it) and the rest of its body is read into it with exact lengths
//! (a [`Transfer`]). The framer survives partial reads at any byte, and drains (without
//! storing) the body of a message it cannot accept, so that the stream stays in step.
//!
//! Reply buffers: a reader waiting for one particular reply may offer a [`ReplyBuffer`], its
//! caller's own memory. When the header of that reply comes (its id and command, not an
//! error, payload exactly `head_len + data.len()` bytes), the first `head_len` payload
//! bytes go to the message's payload and the rest straight into the buffer. The buffer is
//! borrowed per call only; the state between calls is a count, never a pointer. A transfer
//! into a reply buffer must not outlive its owner's hold of the receive lock: the owner
//! either finishes it or abandons it ([`Framer::abandon_buffer`]), which turns the rest
//! into a drain. A reader that finds a transfer whose buffer it does not hold drains the
//! rest too (defensive: an owner that panicked).
//!
//! fds: the kernel ends a read at the end of the first data segment that carried fds, so
//! the fds of a read belong to the message that holds the read's last byte. They are kept
//! apart (`tail_fds`) until parsing reaches that message.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use super::error::DisconnectReason;
use super::socket;
use crate::protocol::{DecodeError, Header, MessageType};

/// Bytes read at once from the main socket, for messages that fit (header included): a
/// typical reply, and a small server request, in one read.
pub(super) const MAIN_READ_SIZE: usize = 4096;

/// Bytes read at once from the twin socket: a DMA_READ request, or a DMA_WRITE of a few
/// KiB, arrives whole in one read instead of a header read and a body read.
pub(super) const TWIN_READ_SIZE: usize = 16 << 10;

/// A complete message read from the socket.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) header: Header,
    pub(super) payload: Vec<u8>,
    pub(super) fds: Vec<OwnedFd>,
    /// The payload holds only the head; the rest went into the reader's [`ReplyBuffer`].
    pub(super) data_in_buffer: bool,
}

/// A reader's own buffer for the data of the reply it waits for (see the module comment).
#[derive(Debug)]
pub(super) struct ReplyBuffer<'a> {
    /// Tells this buffer's transfers apart from any other's (unique per waiting call).
    pub(super) token: u64,
    /// Id of the awaited reply.
    pub(super) id: u16,
    /// Its command.
    pub(super) command: u16,
    /// Payload bytes before the data (kept in the message's payload).
    pub(super) head_len: usize,
    /// Where the data goes.
    pub(super) data: &'a mut [u8],
}

impl ReplyBuffer<'_> {
    fn accepts(&self, header: &Header) -> bool {
        header.id == self.id
            && header.command == self.command
            && header.message_type() == Some(MessageType::Reply)
            && !header.is_error()
            && Some(header.payload_len()) == self.head_len.checked_add(self.data.len())
    }
}

/// What one step of the framer produced.
#[derive(Debug)]
pub(super) enum Incoming {
    /// A whole message.
    Message(Received),
    /// A message whose body was drained and dropped, with the reason.
    Discarded { header: Header, why: String },
}

/// What [`Framer::quick_reply`] found.
#[derive(Debug)]
pub(super) enum Quick {
    /// The awaited reply, whole, from one read.
    Reply(Received),
    /// Anything else. What was read, if anything, is buffered as `fill` leaves it, for the
    /// general path to take from there.
    Fallback,
    /// The stream is unusable.
    Failed(DisconnectReason),
}

/// A message whose body is read past the read buffer, with exact lengths.
#[derive(Debug)]
enum Transfer {
    /// Into `body`'s spare capacity until it holds `want` bytes.
    Owned {
        header: Header,
        body: Vec<u8>,
        want: usize,
    },
    /// Into the reply buffer with this `token`: `head` until it holds `head_len` bytes,
    /// then the buffer until `got == data_len`.
    IntoReplyBuffer {
        header: Header,
        token: u64,
        head: Vec<u8>,
        head_len: usize,
        got: usize,
        data_len: usize,
    },
    /// Nowhere: `left` more bytes are read and dropped.
    Drain {
        header: Header,
        left: usize,
        why: String,
    },
}

impl Transfer {
    fn is_complete(&self) -> bool {
        match self {
            Transfer::Owned { body, want, .. } => body.len() >= *want,
            Transfer::IntoReplyBuffer {
                head,
                head_len,
                got,
                data_len,
                ..
            } => head.len() >= *head_len && got >= data_len,
            Transfer::Drain { left, .. } => *left == 0,
        }
    }

    /// The message a complete transfer read, with its `fds`.
    fn into_incoming(self, fds: Vec<OwnedFd>) -> Incoming {
        match self {
            Transfer::Owned { header, body, .. } => Incoming::Message(Received {
                header,
                payload: body,
                fds,
                data_in_buffer: false,
            }),
            Transfer::IntoReplyBuffer { header, head, .. } => Incoming::Message(Received {
                header,
                payload: head,
                fds,
                data_in_buffer: true,
            }),
            Transfer::Drain { header, why, .. } => Incoming::Discarded { header, why },
        }
    }

    /// Reads once, at most what is left of the message: into its own buffer, the reply
    /// buffer (only the one the transfer was started for is passed in), or `scratch` for a
    /// drain. The outer error means a state that cannot happen (see [`full`]).
    fn read(
        &mut self,
        sock: &UnixStream,
        block: bool,
        max_fds: usize,
        scratch: &mut [u8],
        reply_buffer: Option<&mut ReplyBuffer<'_>>,
    ) -> Result<io::Result<(usize, Vec<OwnedFd>)>, DisconnectReason> {
        match self {
            Transfer::Owned { body, want, .. } => {
                let limit = want.saturating_sub(body.len());
                if limit == 0 {
                    return Err(full());
                }
                Ok(socket::recv_into_spare(sock, body, limit, max_fds, block))
            }
            Transfer::IntoReplyBuffer {
                head,
                head_len,
                got,
                data_len,
                ..
            } => {
                if head.len() < *head_len {
                    let limit = *head_len - head.len();
                    return Ok(socket::recv_into_spare(sock, head, limit, max_fds, block));
                }
                let Some(dst) = reply_buffer.and_then(|b| b.data.get_mut(*got..*data_len)) else {
                    return Err(full());
                };
                if dst.is_empty() {
                    return Err(full());
                }
                let r = recv(sock, dst, max_fds, block);
                if let Ok((n, _)) = &r {
                    *got += n;
                }
                Ok(r)
            }
            Transfer::Drain { left, .. } => {
                let n = (*left).min(scratch.len());
                let dst = scratch.get_mut(..n).unwrap_or_default();
                if dst.is_empty() {
                    return Err(full());
                }
                let r = recv(sock, dst, max_fds, block);
                if let Ok((n, _)) = &r {
                    *left = left.saturating_sub(*n);
                }
                Ok(r)
            }
        }
    }
}

/// Cuts one socket's byte stream into messages (see the module comment).
#[derive(Debug)]
pub(super) struct Framer {
    /// Bytes read and not parsed yet are `buf[start..end]`; they begin at a message
    /// boundary (the head message) unless a transfer is under way, in which case the
    /// buffer is empty.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// fds of the head message.
    fds: Vec<OwnedFd>,
    /// fds of the message holding the buffer's last byte (see the module comment).
    tail_fds: Vec<OwnedFd>,
    transfer: Option<Transfer>,
    max_size: u32,
    max_fds: usize,
}

/// One read of at most `dst.len()` bytes, waiting for data only if `block`.
fn recv(
    sock: &UnixStream,
    dst: &mut [u8],
    max_fds: usize,
    block: bool,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    if block {
        socket::recv_with_fds(sock, dst, max_fds)
    } else {
        socket::try_recv_with_fds(sock, dst, max_fds)
    }
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

/// Cannot happen: a message that fits is incomplete only while there is room, and a large
/// one is complete when its buffer is full.
fn full() -> DisconnectReason {
    DisconnectReason::ProtocolViolation("receive buffer full".into())
}

impl Framer {
    /// A framer reading up to `read_size` bytes at once and accepting messages of at most
    /// `max_size` bytes (header included) and at most `max_fds` fds each.
    pub(super) fn new(read_size: usize, max_size: u32, max_fds: usize) -> Self {
        Framer {
            buf: vec![0; read_size.max(Header::SIZE)].into_boxed_slice(),
            start: 0,
            end: 0,
            fds: Vec::new(),
            tail_fds: Vec::new(),
            transfer: None,
            max_size: max_size.max(Header::SIZE as u32),
            max_fds,
        }
    }

    /// Returns the next message, reading from the socket only when no complete message is
    /// buffered; `Ok(None)` when the socket has no more data for now (with `block`: when a
    /// read timed out). An error means the stream is unusable.
    ///
    /// With a `reply_buffer`, the reply it waits for is read into it (see the module
    /// comment).
    pub(super) fn step(
        &mut self,
        sock: &UnixStream,
        block: bool,
        mut reply_buffer: Option<&mut ReplyBuffer<'_>>,
    ) -> Result<Option<Incoming>, DisconnectReason> {
        loop {
            if let Some(incoming) = self.buffered(reply_buffer.as_deref_mut())? {
                return Ok(Some(incoming));
            }
            if !self.fill(sock, block, reply_buffer.as_deref_mut())? {
                return Ok(None);
            }
        }
    }

    /// The common case of a request waited for alone: the framer holds nothing, and one
    /// read (waiting for data if `block`) brings exactly the reply with `id` and `command`,
    /// whole, not an error, and without fds; with a `buffer`, the reply it waits for. That
    /// costs one read, one header check and the copies; a typical small reply needs nothing
    /// else. Anything else leaves the framer as [`fill`](Self::fill) does (the bytes
    /// buffered, the fds kept for the message that holds the last byte), and the general
    /// path takes it from there.
    ///
    /// With `plain`, the read takes no fds (see [`socket::recv_plain`]); the caller makes
    /// sure that no message which may carry fds can come meanwhile.
    pub(super) fn quick_reply(
        &mut self,
        sock: &UnixStream,
        (block, plain): (bool, bool),
        (id, command): (u16, u16),
        buffer: Option<&mut ReplyBuffer<'_>>,
    ) -> Quick {
        if !self.is_idle() {
            return Quick::Fallback;
        }
        let received = if plain {
            socket::recv_plain(sock, &mut self.buf, block).map(|n| (n, Vec::new()))
        } else {
            recv(sock, &mut self.buf, self.max_fds, block)
        };
        let (n, fds) = match received {
            Ok((0, _)) => return Quick::Failed(DisconnectReason::PeerClosed),
            Ok(received) => received,
            // A receive timeout, or a signal (the general path reads again, watching the
            // deadline).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Quick::Fallback
            }
            Err(e) => return Quick::Failed(disconnect(e)),
        };
        let answers = |h: &Header| match &buffer {
            Some(b) => b.accepts(h),
            None => {
                h.id == id
                    && h.command == command
                    && h.message_type() == Some(MessageType::Reply)
                    && !h.is_error()
            }
        };
        let header = self
            .buf
            .get(..Header::SIZE)
            .and_then(|b| Header::decode(b, self.max_size).ok())
            .filter(|h| fds.is_empty() && h.size as usize == n && answers(h));
        let (Some(header), Some(body)) = (header, self.buf.get(Header::SIZE..n)) else {
            // An idle framer's buffer starts at 0 (`consume` resets it).
            self.start = 0;
            self.end = n;
            self.tail_fds = fds;
            return Quick::Fallback;
        };
        let mut payload = super::reuse::buffer();
        let data_in_buffer = buffer.is_some();
        match buffer {
            Some(b) => {
                // `accepts` checked that the body is `head_len + data.len()` bytes.
                let (head, data) = body.split_at(b.head_len.min(body.len()));
                payload.extend_from_slice(head);
                if let Some(dst) = b.data.get_mut(..data.len()) {
                    dst.copy_from_slice(data);
                }
            }
            None => payload.extend_from_slice(body),
        }
        Quick::Reply(Received {
            header,
            payload,
            fds,
            data_in_buffer,
        })
    }

    /// Reads once without waiting, for whoever then takes the complete messages with
    /// [`buffered`](Self::buffered); `false` when the socket had no data.
    pub(super) fn read_once(&mut self, sock: &UnixStream) -> Result<bool, DisconnectReason> {
        self.fill(sock, false, None)
    }

    /// Whether bytes already read wait to be parsed (a level-triggered watch reports only
    /// what is still on the socket).
    pub(super) fn holds_data(&self) -> bool {
        self.start < self.end
    }

    /// Whether the framer holds nothing at all: no bytes, no fds, no transfer. The common
    /// state between messages, checked first so that looking for a buffered message there
    /// costs a few instructions.
    #[inline]
    fn is_idle(&self) -> bool {
        self.start == self.end && self.transfer.is_none() && self.tail_fds.is_empty()
    }

    /// Whether a transfer into the reply buffer with `token` is under way.
    #[inline]
    pub(super) fn buffer_busy(&self, token: u64) -> bool {
        matches!(&self.transfer, Some(Transfer::IntoReplyBuffer { token: t, .. }) if *t == token)
    }

    /// Gives up the transfer into the reply buffer with `token`, if one is under way: the
    /// rest of the message is drained by whoever reads next, and nothing more is written to
    /// the buffer. Returns whether there was one. The buffer's owner calls this before it
    /// lets go of the receive lock.
    #[inline]
    pub(super) fn abandon_buffer(&mut self, token: u64) -> bool {
        if !self.buffer_busy(token) {
            return false;
        }
        self.orphan_buffer(None, "the waiter gave up while its reply was arriving");
        true
    }

    /// Turns a transfer into a reply buffer other than `owner`'s into a drain of the rest.
    fn orphan_buffer(&mut self, owner: Option<u64>, why: &str) {
        let Some(Transfer::IntoReplyBuffer {
            header,
            token,
            head,
            head_len,
            got,
            data_len,
        }) = &self.transfer
        else {
            return;
        };
        if Some(*token) == owner {
            return;
        }
        let left = head_len.saturating_sub(head.len()) + data_len.saturating_sub(*got);
        self.transfer = Some(Transfer::Drain {
            header: *header,
            left,
            why: why.to_string(),
        });
    }

    /// Returns the next message that is complete in the buffer, without reading.
    ///
    /// Whoever stops reading must first take every buffered message, so that an empty
    /// socket always means that there is nothing to dispatch.
    #[inline]
    pub(super) fn buffered(
        &mut self,
        reply_buffer: Option<&mut ReplyBuffer<'_>>,
    ) -> Result<Option<Incoming>, DisconnectReason> {
        if self.is_idle() {
            return Ok(None);
        }
        self.parse_buffered(reply_buffer)
    }

    /// [`buffered`](Self::buffered) when the framer holds something.
    fn parse_buffered(
        &mut self,
        reply_buffer: Option<&mut ReplyBuffer<'_>>,
    ) -> Result<Option<Incoming>, DisconnectReason> {
        if self.transfer.is_some() {
            self.orphan_buffer(
                reply_buffer.as_ref().map(|b| b.token),
                "the reader of its buffer went away",
            );
            return Ok(self.finish_transfer());
        }
        let avail = self.end.saturating_sub(self.start);
        let Some(hdr) = self
            .buf
            .get(self.start..self.end)
            .and_then(|b| b.get(..Header::SIZE))
            .and_then(|b| <[u8; Header::SIZE]>::try_from(b).ok())
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
            Ok(header) => Ok(self.take_message(header, avail, reply_buffer)),
            Err(DecodeError::InvalidField {
                field: "header.msg_size",
                value,
            }) => Err(DisconnectReason::ProtocolViolation(format!(
                "message size {value} is smaller than the header ({raw})"
            ))),
            Err(e) => Ok(self.discard(raw, avail, e.to_string())),
        }
    }

    /// The message of the transfer under way, if it is complete.
    fn finish_transfer(&mut self) -> Option<Incoming> {
        if !self.transfer.as_ref().is_some_and(Transfer::is_complete) {
            return None;
        }
        let fds = std::mem::take(&mut self.fds);
        self.transfer.take().map(|t| t.into_incoming(fds))
    }

    /// The head message, whose header is valid (`avail` bytes of it are buffered): whole
    /// from the buffer, or the start of a transfer; `None` while more reads into the buffer
    /// will complete it.
    fn take_message(
        &mut self,
        header: Header,
        avail: usize,
        reply_buffer: Option<&mut ReplyBuffer<'_>>,
    ) -> Option<Incoming> {
        let size = header.size as usize;
        let reply_buffer = reply_buffer.filter(|b| b.accepts(&header));
        if size > avail && size <= self.buf.len() {
            // Fits: more reads into the buffer complete it.
            return None;
        }
        if let Some(reply_buffer) = reply_buffer {
            return self.start_reply_transfer(header, avail, reply_buffer);
        }
        // The body, or the part of it that is here.
        let have = self
            .buf
            .get(self.start + Header::SIZE..self.start + size.min(avail))
            .unwrap_or_default();
        if size <= avail {
            // A spare of this thread's if it has one (see `reuse.rs`).
            let mut payload = super::reuse::buffer();
            payload.extend_from_slice(have);
            let fds = std::mem::take(&mut self.fds);
            self.consume(size);
            return Some(Incoming::Message(Received {
                header,
                payload,
                fds,
                data_in_buffer: false,
            }));
        }
        // `decode` bounded `size` by `max_size`, so this allocation is bounded too.
        // Not zeroed: reads go into its spare capacity.
        let want = header.payload_len();
        let mut body = Vec::with_capacity(want);
        body.extend_from_slice(have);
        self.consume(avail);
        self.transfer = Some(Transfer::Owned { header, body, want });
        None
    }

    /// The head message is the reply `buffer` waits for (`accepts` checked that its payload
    /// is `head_len + data.len()` bytes): what is buffered goes to the head and the buffer,
    /// and the rest follows in a transfer unless the whole reply is here.
    fn start_reply_transfer(
        &mut self,
        header: Header,
        avail: usize,
        buffer: &mut ReplyBuffer<'_>,
    ) -> Option<Incoming> {
        let size = header.size as usize;
        let have = self
            .buf
            .get(self.start + Header::SIZE..self.start + size.min(avail))
            .unwrap_or_default();
        let got = have.len();
        let head_len = buffer.head_len;
        let (in_head, in_data) = have.split_at(got.min(head_len));
        let mut head = super::reuse::buffer();
        head.reserve(head_len);
        head.extend_from_slice(in_head);
        if let Some(dst) = buffer.data.get_mut(..in_data.len()) {
            dst.copy_from_slice(in_data);
        }
        let data_len = buffer.data.len();
        let data_got = in_data.len();
        self.consume(Header::SIZE + got);
        if size <= avail {
            let fds = std::mem::take(&mut self.fds);
            return Some(Incoming::Message(Received {
                header,
                payload: head,
                fds,
                data_in_buffer: true,
            }));
        }
        self.transfer = Some(Transfer::IntoReplyBuffer {
            header,
            token: buffer.token,
            head,
            head_len,
            got: data_got,
            data_len,
        });
        None
    }

    /// The head message cannot be accepted (`raw` is its undecoded header): what is
    /// buffered of it is dropped, and the rest drained.
    fn discard(&mut self, raw: Header, avail: usize, why: String) -> Option<Incoming> {
        let left = raw.payload_len();
        let skip = left.min(avail - Header::SIZE);
        self.consume(Header::SIZE + skip);
        let left = left - skip;
        if left == 0 {
            self.fds.clear();
            return Some(Incoming::Discarded { header: raw, why });
        }
        self.transfer = Some(Transfer::Drain {
            header: raw,
            left,
            why,
        });
        None
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
        reply_buffer: Option<&mut ReplyBuffer<'_>>,
    ) -> Result<bool, DisconnectReason> {
        self.orphan_buffer(
            reply_buffer.as_ref().map(|b| b.token),
            "the reader of its buffer went away",
        );
        let received = match &mut self.transfer {
            // `orphan_buffer` left a transfer into a reply buffer only for the one passed in.
            Some(t) => t.read(sock, block, self.max_fds, &mut self.buf, reply_buffer)?,
            None => self.read_into_buffer(sock, block)?,
        };
        let fds = match received {
            Ok((0, _)) => return Err(DisconnectReason::PeerClosed),
            Ok((_, fds)) => fds,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(disconnect(e)),
        };
        if self.transfer.is_some() {
            // Exact reads never reach past the transfer's message: the fds are its own.
            self.fds.extend(fds);
            if self.fds.len() > self.max_fds {
                return Err(too_many_fds());
            }
        } else {
            self.tail_fds.extend(fds);
        }
        Ok(true)
    }

    /// Reads once into the buffer, after the bytes not parsed yet (moved to its start).
    fn read_into_buffer(
        &mut self,
        sock: &UnixStream,
        block: bool,
    ) -> Result<io::Result<(usize, Vec<OwnedFd>)>, DisconnectReason> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let dst = self.buf.get_mut(self.end..).unwrap_or_default();
        if dst.is_empty() {
            return Err(full());
        }
        let r = recv(sock, dst, self.max_fds, block);
        if let Ok((n, _)) = &r {
            self.end += n;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command, Header, MessageType};
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
        let mut r = Framer::new(MAIN_READ_SIZE, 1024, 4);
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
        let mut r = Framer::new(MAIN_READ_SIZE, 64, 4);
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
        let mut r = Framer::new(MAIN_READ_SIZE, 64, 4);
        let mut bad = msg(1, &[], 1);
        bad[4..8].copy_from_slice(&8u32.to_ne_bytes());
        a.write_all(&bad).unwrap();
        assert!(matches!(
            r.step(&b, false, None),
            Err(DisconnectReason::ProtocolViolation(_))
        ));
        let mut r = Framer::new(MAIN_READ_SIZE, 64, 4);
        a.write_all(&msg(1, &[1; 8], 1)[..20]).unwrap();
        drop(a);
        assert_eq!(
            r.step(&b, false, None).unwrap_err(),
            DisconnectReason::PeerClosed
        );
    }

    fn message(r: &mut Framer, sock: &UnixStream) -> Received {
        match r.step(sock, false, None).unwrap() {
            Some(Incoming::Message(m)) => m,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn one_read_takes_several_messages() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 4);
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
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 4);
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
        let mut r = Framer::new(MAIN_READ_SIZE, 64, 4);
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
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 4);
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
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 2);
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

    fn buffer<'a>(token: u64, id: u16, data: &'a mut [u8]) -> ReplyBuffer<'a> {
        ReplyBuffer {
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
        (msg(id, &payload, MessageType::Reply as u32), payload)
    }

    #[test]
    fn reply_buffer_takes_a_reply_written_in_many_pieces() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 4);
        let (bytes, payload) = reply(5, 50_000);
        let mut bytes = bytes;
        bytes.extend(msg(6, b"after", MessageType::Reply as u32));
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
            let mut s = buffer(1, 5, &mut out);
            if let Some(incoming) = r.step(&b, false, Some(&mut s)).unwrap() {
                assert!(got.is_none());
                got = Some(incoming);
            }
        }
        match got {
            Some(Incoming::Message(m)) => {
                assert!(m.data_in_buffer);
                assert_eq!(m.header.id, 5);
                assert_eq!(m.payload, payload[..16]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(out == payload[16..]);
        let m = message(&mut r, &b);
        assert_eq!((m.header.id, m.data_in_buffer), (6, false));
        assert_eq!(m.payload, b"after");
    }

    const RR: u16 = Command::RegionRead as u16;

    /// The message `step` returns next, without waiting.
    fn stepped(r: &mut Framer, sock: &UnixStream) -> Received {
        match r.step(sock, false, None).unwrap() {
            Some(Incoming::Message(m)) => m,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn quick_reply_takes_a_whole_reply_in_one_read() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 4);
        let (bytes, payload) = reply(9, 100);
        for plain in [false, true] {
            a.write_all(&bytes).unwrap();
            let mut out = [0u8; 100];
            let mut s = buffer(1, 9, &mut out);
            let Quick::Reply(m) = r.quick_reply(&b, (true, plain), (9, RR), Some(&mut s)) else {
                panic!("not taken");
            };
            assert!(m.data_in_buffer);
            assert_eq!(m.payload, payload[..16]);
            assert_eq!(out[..], payload[16..]);
            assert!(r.is_idle());
            // Without a buffer, the whole payload.
            a.write_all(&bytes).unwrap();
            let Quick::Reply(m) = r.quick_reply(&b, (true, plain), (9, RR), None) else {
                panic!("not taken");
            };
            assert!(!m.data_in_buffer);
            assert_eq!(m.payload, payload);
        }
        // No data, not waiting: nothing read, nothing changed.
        assert!(matches!(
            r.quick_reply(&b, (false, true), (9, RR), None),
            Quick::Fallback
        ));
        assert!(r.is_idle());
        drop(a);
        assert!(matches!(
            r.quick_reply(&b, (true, false), (9, RR), None),
            Quick::Failed(DisconnectReason::PeerClosed)
        ));
    }

    #[test]
    fn quick_reply_leaves_anything_else_to_the_general_path() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 4);
        let (bytes, payload) = reply(9, 4);
        // Another reply, an error reply, half a reply, a server request: each is left
        // buffered as `fill` leaves it, and `step` takes it from there.
        let mut error = Header::error_reply(
            &Header::from_bytes(&msg(9, &[], 0)[..16].try_into().unwrap()),
            5,
        );
        error.command = RR;
        let server_request = msg(3, b"dma", 0);
        for (first, rest) in [
            (reply(8, 4).0, vec![]),
            (error.to_bytes().to_vec(), vec![]),
            (bytes[..20].to_vec(), bytes[20..].to_vec()),
            (server_request.clone(), vec![]),
        ] {
            a.write_all(&first).unwrap();
            assert!(matches!(
                r.quick_reply(&b, (true, false), (9, RR), None),
                Quick::Fallback
            ));
            a.write_all(&rest).unwrap();
            let m = stepped(&mut r, &b);
            assert_eq!(m.header.to_bytes()[..], first[..16]);
            assert!(r.is_idle());
        }
        // A reply with fds is the general path's too, fds and all.
        let _evs = send_fds(&a, &bytes, 2);
        let mut out = [0u8; 4];
        let mut s = buffer(1, 9, &mut out);
        assert!(matches!(
            r.quick_reply(&b, (true, false), (9, RR), Some(&mut s)),
            Quick::Fallback
        ));
        let m = stepped(&mut r, &b);
        assert_eq!((m.payload.as_slice(), m.fds.len()), (&payload[..], 2));
    }

    #[test]
    fn reply_buffer_takes_a_small_reply_from_the_buffer() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 4);
        let (bytes, payload) = reply(9, 100);
        a.write_all(&bytes).unwrap();
        let mut out = [0u8; 100];
        let mut s = buffer(1, 9, &mut out);
        match r.step(&b, false, Some(&mut s)).unwrap() {
            Some(Incoming::Message(m)) => {
                assert!(m.data_in_buffer);
                assert_eq!(m.payload, payload[..16]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(out[..], payload[16..]);
    }

    #[test]
    fn reply_buffer_refuses_other_replies() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 4);
        let (good, _) = reply(5, 20_000);
        let mut wrong_command = good.clone();
        wrong_command[2..4].copy_from_slice(&(Command::RegionWrite as u16).to_ne_bytes());
        let mut error = good.clone();
        error[8..12]
            .copy_from_slice(&(MessageType::Reply as u32 | Header::FLAG_ERROR).to_ne_bytes());
        let cases = [
            ("other size", reply(5, 20_001).0),
            ("other id", reply(4, 20_000).0),
            ("other command", wrong_command),
            ("error reply", error),
            ("a command", msg(5, &[1; 20_016], 0)),
        ];
        for (what, bytes) in cases {
            let mut out = vec![0u8; 20_000];
            let mut s = buffer(1, 5, &mut out);
            let mut got = None;
            for piece in bytes.chunks(5000) {
                a.write_all(piece).unwrap();
                if let Some(incoming) = r.step(&b, false, Some(&mut s)).unwrap() {
                    got = Some(incoming);
                }
            }
            match got {
                Some(Incoming::Message(m)) => {
                    assert!(!m.data_in_buffer, "{what}");
                    assert_eq!(m.payload, bytes[Header::SIZE..], "{what}");
                }
                other => panic!("{what}: unexpected {other:?}"),
            }
            assert!(out.iter().all(|&b| b == 0), "{what}: buffer written");
        }
    }

    #[test]
    fn abandoned_reply_buffer_is_drained() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 4);
        let (bytes, payload) = reply(5, 30_000);
        let mut out = vec![0u8; 30_000];
        a.write_all(&bytes[..10_000]).unwrap();
        {
            let mut s = buffer(7, 5, &mut out);
            assert!(r.step(&b, false, Some(&mut s)).unwrap().is_none());
        }
        assert!(r.buffer_busy(7));
        assert!(!r.abandon_buffer(8));
        assert!(r.abandon_buffer(7));
        assert!(!r.buffer_busy(7));
        assert_eq!(out[..10_000 - 32], payload[16..10_000 - Header::SIZE]);
        // Nothing more goes to the buffer; the rest is drained, and what follows is read.
        let before = out.clone();
        a.write_all(&bytes[10_000..]).unwrap();
        a.write_all(&msg(6, b"next", MessageType::Reply as u32))
            .unwrap();
        assert!(matches!(
            r.step(&b, false, None).unwrap(),
            Some(Incoming::Discarded { header, .. }) if header.id == 5
        ));
        assert_eq!(message(&mut r, &b).payload, b"next");
        assert!(out == before);
    }

    #[test]
    fn transfer_without_its_reply_buffer_is_drained() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 4);
        let (bytes, _) = reply(5, 30_000);
        let mut out = vec![0u8; 30_000];
        a.write_all(&bytes[..20]).unwrap();
        let mut s = buffer(1, 5, &mut out);
        assert!(r.step(&b, false, Some(&mut s)).unwrap().is_none());
        // Header and part of the head: the head is read with exact lengths next.
        a.write_all(&bytes[20..32]).unwrap();
        assert!(r.step(&b, false, Some(&mut s)).unwrap().is_none());
        assert!(r.buffer_busy(1));
        // Another reader (another buffer, or none) does not write into it.
        let mut other = vec![0u8; 30_000];
        let mut s2 = buffer(2, 5, &mut other);
        a.write_all(&bytes[32..]).unwrap();
        assert!(matches!(
            r.step(&b, false, Some(&mut s2)).unwrap(),
            Some(Incoming::Discarded { header, .. }) if header.id == 5
        ));
        assert!(other.iter().all(|&b| b == 0));
        assert!(out.iter().all(|&b| b == 0));
        a.write_all(&msg(6, b"next", MessageType::Reply as u32))
            .unwrap();
        assert_eq!(message(&mut r, &b).payload, b"next");
    }

    #[test]
    fn fds_of_a_reply_buffer_reply() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut r = Framer::new(MAIN_READ_SIZE, 1 << 20, 2);
        let (bytes, payload) = reply(5, 10_000);
        let _f = send_fds(&a, &bytes[..100], 1);
        let _g = send_fds(&a, &bytes[100..], 1);
        let mut out = vec![0u8; 10_000];
        let mut s = buffer(1, 5, &mut out);
        let m = loop {
            if let Some(Incoming::Message(m)) = r.step(&b, false, Some(&mut s)).unwrap() {
                break m;
            }
        };
        assert_eq!((m.data_in_buffer, m.fds.len()), (true, 2));
        assert!(out == payload[16..]);
    }

    /// The twin socket's reads: a larger read buffer, a non-blocking socket, no reply
    /// buffers.
    mod twin_reads {
        use super::super::*;
        use crate::protocol::Command;
        use std::io::Write;
        use std::os::fd::AsRawFd;

        fn msg(id: u16, payload: &[u8]) -> Vec<u8> {
            let h = Header::command(id, Command::DmaRead, payload.len(), false).unwrap();
            let mut v = h.to_bytes().to_vec();
            v.extend_from_slice(payload);
            v
        }

        fn pair() -> (UnixStream, UnixStream) {
            let (a, b) = UnixStream::pair().unwrap();
            b.set_nonblocking(true).unwrap();
            (a, b)
        }

        fn next(f: &mut Framer, sock: &UnixStream) -> Option<(u16, Vec<u8>)> {
            match f.step(sock, false, None).unwrap() {
                Some(Incoming::Message(m)) => Some((m.header.id, m.payload)),
                Some(Incoming::Discarded { header, .. }) => Some((header.id | 0x8000, Vec::new())),
                None => None,
            }
        }

        #[test]
        fn small_messages_arrive_whole_or_byte_by_byte() {
            let (mut a, b) = pair();
            let mut f = Framer::new(TWIN_READ_SIZE, 1 << 20, 4);
            let mut all = msg(1, &[1; 16]);
            all.extend(msg(2, &[]));
            all.extend(msg(3, &[3; 100]));
            a.write_all(&all).unwrap();
            assert_eq!(next(&mut f, &b), Some((1, vec![1; 16])));
            assert!(f.holds_data());
            assert_eq!(next(&mut f, &b), Some((2, vec![])));
            assert_eq!(next(&mut f, &b), Some((3, vec![3; 100])));
            assert!(!f.holds_data());
            assert_eq!(next(&mut f, &b), None);
            for byte in msg(4, &[4; 5]) {
                assert_eq!(next(&mut f, &b), None);
                a.write_all(&[byte]).unwrap();
            }
            assert_eq!(next(&mut f, &b), Some((4, vec![4; 5])));
        }

        #[test]
        fn large_messages_are_read_in_place_and_oversized_ones_drained() {
            let (mut a, b) = pair();
            let mut f = Framer::new(TWIN_READ_SIZE, 256 << 10, 4);
            let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
            let huge = vec![9u8; 300 << 10];
            let writer = std::thread::spawn(move || {
                a.write_all(&msg(1, &big)).unwrap();
                a.write_all(&msg(2, &huge)).unwrap();
                a.write_all(&msg(3, &[3])).unwrap();
                a
            });
            let mut got = Vec::new();
            while got.len() < 3 {
                socket::poll_fd(b.as_raw_fd(), false, -1).unwrap();
                while let Some(m) = next(&mut f, &b) {
                    got.push(m);
                }
            }
            let _a = writer.join().unwrap();
            let expected: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
            assert_eq!(got[0], (1, expected));
            assert_eq!(got[1], (2 | 0x8000, vec![]));
            assert_eq!(got[2], (3, vec![3]));
        }

        #[test]
        fn fds_with_the_rest_of_a_large_message_stay_with_it() {
            let (a, b) = pair();
            let mut f = Framer::new(TWIN_READ_SIZE, 1 << 20, 2);
            let whole = msg(1, &[7u8; 100 << 10]);
            // The header and a first part, then the rest with two fds, then too many fds.
            socket::send_with_fds(&a, &[&whole[..1000]], &[]).unwrap();
            assert!(next(&mut f, &b).is_none());
            let e1 = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
            let e2 = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
            let fds = [e1.as_raw_fd(), e2.as_raw_fd()];
            // 99 KiB fit the socket's buffer: one blocking send.
            let n = socket::send_with_fds(&a, &[&whole[1000..]], &fds).unwrap();
            assert_eq!(n, whole.len() - 1000);
            let m = loop {
                socket::poll_fd(b.as_raw_fd(), false, -1).unwrap();
                if let Some(Incoming::Message(m)) = f.step(&b, false, None).unwrap() {
                    break m;
                }
            };
            assert_eq!(m.payload, vec![7u8; 100 << 10]);
            assert_eq!(m.fds.len(), 2);
            let many = [e1.as_raw_fd(), e2.as_raw_fd(), e1.as_raw_fd()];
            socket::send_with_fds(&a, &[&whole[..1000]], &[]).unwrap();
            assert!(next(&mut f, &b).is_none());
            socket::send_with_fds(&a, &[&whole[1000..2000]], &many).unwrap();
            assert!(f.step(&b, false, None).is_err(), "more fds than allowed");
        }

        #[test]
        fn bad_headers_and_eof() {
            let (mut a, b) = pair();
            let mut f = Framer::new(TWIN_READ_SIZE, 1024, 4);
            let mut bad = msg(1, &[]);
            bad[4..8].copy_from_slice(&8u32.to_ne_bytes());
            a.write_all(&bad).unwrap();
            assert!(matches!(
                f.step(&b, false, None),
                Err(DisconnectReason::ProtocolViolation(_))
            ));
            let (mut a, b) = pair();
            let mut f = Framer::new(TWIN_READ_SIZE, 1024, 4);
            // Undefined type bits: drained, not served.
            let mut odd = msg(5, &[1, 2]);
            odd[8..12].copy_from_slice(&0xeu32.to_ne_bytes());
            a.write_all(&odd).unwrap();
            assert_eq!(next(&mut f, &b), Some((5 | 0x8000, vec![])));
            a.write_all(&msg(6, &[6; 8])[..20]).unwrap();
            drop(a);
            assert_eq!(
                f.step(&b, false, None).unwrap_err(),
                DisconnectReason::PeerClosed
            );
        }

        #[test]
        fn eof_in_the_middle_of_a_large_message() {
            let (mut a, b) = pair();
            let mut f = Framer::new(TWIN_READ_SIZE, 1 << 20, 4);
            a.write_all(&msg(1, &vec![1; 100_000])[..50_000]).unwrap();
            drop(a);
            let mut r = Ok(None);
            for _ in 0..4 {
                r = f.step(&b, false, None);
                if r.is_err() {
                    break;
                }
            }
            assert_eq!(r.unwrap_err(), DisconnectReason::PeerClosed);
            let (mut a, b) = pair();
            let mut f = Framer::new(TWIN_READ_SIZE, 20_000, 4);
            a.write_all(&msg(1, &vec![1; 100_000])[..50_000]).unwrap();
            drop(a);
            let mut r = Ok(None);
            for _ in 0..4 {
                r = f.step(&b, false, None);
                if r.is_err() {
                    break;
                }
            }
            assert_eq!(r.unwrap_err(), DisconnectReason::PeerClosed);
        }

        proptest::proptest! {
            /// Whatever the sizes and however the stream is cut into writes, the framer yields
            /// the messages sent, in order, and drains the oversized ones.
            #[test]
            fn framing_survives_any_split(
                sizes in proptest::collection::vec(0usize..40_000, 1..8),
                cuts in proptest::collection::vec(1usize..50_000, 1..20),
            ) {
                let max = 32 << 10;
                let (mut a, b) = pair();
                let mut stream = Vec::new();
                for (i, &n) in sizes.iter().enumerate() {
                    stream.extend(msg(i as u16, &vec![i as u8; n]));
                }
                let writer = std::thread::spawn(move || {
                    let mut at = 0;
                    for c in cuts.iter().cycle() {
                        if at >= stream.len() {
                            break;
                        }
                        let end = (at + c).min(stream.len());
                        a.write_all(&stream[at..end]).unwrap();
                        at = end;
                    }
                    a
                });
                let mut f = Framer::new(TWIN_READ_SIZE, max as u32, 4);
                let mut got = Vec::new();
                while got.len() < sizes.len() {
                    socket::poll_fd(b.as_raw_fd(), false, -1).unwrap();
                    while let Some(m) = next(&mut f, &b) {
                        got.push(m);
                    }
                }
                let _a = writer.join().unwrap();
                for (i, &n) in sizes.iter().enumerate() {
                    let id = i as u16;
                    if Header::SIZE + n > max {
                        proptest::prop_assert_eq!(&got[i], &(id | 0x8000, vec![]));
                    } else {
                        proptest::prop_assert_eq!(&got[i], &(id, vec![i as u8; n]));
                    }
                }
            }
        }
    }
}
