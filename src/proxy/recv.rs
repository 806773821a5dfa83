// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The receive state machine: header (with any fds), then `size - 16` bytes of body.
//!
//! It survives partial reads at any byte, bounds the body size before allocating, and
//! drains (without storing) the body of a message it cannot accept, so that the stream
//! stays in step.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use super::error::DisconnectReason;
use super::socket;
use crate::protocol::{DecodeError, Header, HEADER_SIZE};

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

#[derive(Debug)]
enum Body {
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
    hdr: [u8; HEADER_SIZE],
    hdr_len: usize,
    fds: Vec<OwnedFd>,
    body: Option<Body>,
    max_size: u32,
    max_fds: usize,
}

fn disconnect(e: io::Error) -> DisconnectReason {
    if e.raw_os_error() == Some(libc::ENOBUFS) {
        return DisconnectReason::ProtocolViolation("more fds than allowed in one message".into());
    }
    super::error::io_reason(&e)
}

impl Receiver {
    /// A receiver accepting messages of at most `max_size` bytes (header included) and at
    /// most `max_fds` fds each.
    pub fn new(max_size: u32, max_fds: usize) -> Self {
        Receiver {
            hdr: [0; HEADER_SIZE],
            hdr_len: 0,
            fds: Vec::new(),
            body: None,
            max_size: max_size.max(HEADER_SIZE as u32),
            max_fds,
        }
    }

    /// Reads until one message is complete (`Ok(Some)`) or the socket has no more data for
    /// now (`Ok(None)`). An error means the stream is unusable.
    pub fn step(&mut self, sock: &UnixStream) -> Result<Option<Incoming>, DisconnectReason> {
        if self.body.is_none() {
            if !self.read_header(sock)? {
                return Ok(None);
            }
            if let Some(done) = self.start_body()? {
                return Ok(Some(done));
            }
        }
        self.read_body(sock)
    }

    /// Returns whether the header is complete.
    fn read_header(&mut self, sock: &UnixStream) -> Result<bool, DisconnectReason> {
        while self.hdr_len < HEADER_SIZE {
            let room = self.max_fds.saturating_sub(self.fds.len());
            let buf = self.hdr.get_mut(self.hdr_len..).unwrap_or_default();
            match socket::recv_with_fds(sock, buf, room) {
                Ok((0, _)) => return Err(DisconnectReason::PeerClosed),
                Ok((n, fds)) => {
                    self.hdr_len += n;
                    self.fds.extend(fds);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(disconnect(e)),
            }
        }
        Ok(true)
    }

    /// Validates the completed header and sets up the body; returns a message at once when
    /// it has no body.
    fn start_body(&mut self) -> Result<Option<Incoming>, DisconnectReason> {
        self.hdr_len = 0;
        let fds = std::mem::take(&mut self.fds);
        let raw = Header::from_bytes(&self.hdr);
        let body = match Header::decode(&self.hdr, self.max_size) {
            Ok(header) => Body::Keep {
                header,
                buf: vec![0; header.payload_len()],
                got: 0,
            },
            Err(DecodeError::InvalidField {
                field: "header.msg_size",
                value,
            }) => {
                return Err(DisconnectReason::ProtocolViolation(format!(
                    "message size {value} is smaller than the header ({raw})"
                )))
            }
            Err(e) => Body::Discard {
                header: raw,
                left: raw.payload_len(),
                why: e.to_string(),
            },
        };
        if let Body::Keep { header, .. } = &body {
            if header.payload_len() == 0 {
                return Ok(Some(Incoming::Message(Received {
                    header: *header,
                    payload: Vec::new(),
                    fds,
                })));
            }
        }
        if let Body::Discard {
            header,
            left: 0,
            why,
        } = body
        {
            return Ok(Some(Incoming::Discarded { header, why }));
        }
        // fds belong to the message's first bytes; keep them with the body until it is done.
        self.fds = fds;
        self.body = Some(body);
        Ok(None)
    }

    fn read_body(&mut self, sock: &UnixStream) -> Result<Option<Incoming>, DisconnectReason> {
        let mut scratch = [0u8; 4096];
        loop {
            let (buf, finished) = match self.body.as_mut() {
                None => return Ok(None),
                Some(Body::Keep { buf, got, .. }) => {
                    let len = buf.len();
                    (buf.get_mut(*got..).unwrap_or_default(), *got >= len)
                }
                Some(Body::Discard { left, .. }) => {
                    let n = (*left).min(scratch.len());
                    (scratch.get_mut(..n).unwrap_or_default(), *left == 0)
                }
            };
            if finished {
                return Ok(self.finish());
            }
            match socket::recv(sock, buf) {
                Ok(0) => return Err(DisconnectReason::PeerClosed),
                Ok(n) => match self.body.as_mut() {
                    Some(Body::Keep { got, .. }) => *got += n,
                    Some(Body::Discard { left, .. }) => *left = left.saturating_sub(n),
                    None => {}
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(disconnect(e)),
            }
        }
    }

    fn finish(&mut self) -> Option<Incoming> {
        let fds = std::mem::take(&mut self.fds);
        match self.body.take()? {
            Body::Keep { header, buf, .. } => Some(Incoming::Message(Received {
                header,
                payload: buf,
                fds,
            })),
            Body::Discard { header, why, .. } => Some(Incoming::Discarded { header, why }),
        }
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
            assert!(r.step(&b).unwrap().is_none());
            a.write_all(&[*byte]).unwrap();
            if i + 1 < bytes.len() {
                assert!(r.step(&b).unwrap().is_none());
            }
        }
        match r.step(&b).unwrap() {
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
            r.step(&b).unwrap(),
            Some(Incoming::Discarded { header, .. }) if header.id == 1
        ));
        assert!(matches!(
            r.step(&b).unwrap(),
            Some(Incoming::Discarded { header, .. }) if header.id == 2
        ));
        match r.step(&b).unwrap() {
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
            r.step(&b),
            Err(DisconnectReason::ProtocolViolation(_))
        ));
        let mut r = Receiver::new(64, 4);
        a.write_all(&msg(1, &[1; 8], 1)[..20]).unwrap();
        drop(a);
        assert_eq!(r.step(&b).unwrap_err(), DisconnectReason::PeerClosed);
    }
}
