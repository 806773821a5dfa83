// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Region access: REGION_READ and REGION_WRITE of any length, split by the negotiated
//! transfer size and pipelined, every reply checked against its request.

use std::collections::VecDeque;

use super::{Error, VfioUserDevice};
use crate::connection::{self, PendingReply, Reply};
use crate::protocol::{Command, DecodeError, RegionAccess};

/// Requests of one large transfer in flight at once.
const PIPELINE_WINDOW: usize = 8;

impl VfioUserDevice {
    /// Reads `data.len()` bytes at `offset` of region `index`, in as many REGION_READ
    /// messages as the negotiated transfer size requires (pipelined).
    ///
    /// The data is read from the socket straight into `data` when this thread reads the
    /// reply itself ([`Connection::wait_into`]). After an error, `data`'s content is
    /// unspecified.
    ///
    /// [`Connection::wait_into`]: crate::connection::Connection::wait_into
    pub fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Error> {
        self.region(index)?
            .check(offset, data.len() as u64, false)?;
        if data.is_empty() {
            return Ok(());
        }
        let conn = &self.connection;
        if data.len() <= self.read_chunk {
            let head = access_head(index, offset, data.len());
            let reply = conn
                .request_into(
                    Command::RegionRead,
                    &head,
                    &[],
                    RegionAccess::HEAD_SIZE,
                    data,
                )
                .map_err(|e| access_error(Command::RegionRead, index, offset, data.len(), e))?;
            return copy_read_reply(&reply, index, offset, data);
        }
        let chunk = self.read_chunk;
        let parts = data.chunks_mut(chunk).scan(offset, |at, out| {
            let part = (*at, out);
            *at += part.1.len() as u64;
            Some(part)
        });
        pipeline(
            parts,
            |(at, out)| {
                let head = access_head(index, *at, out.len());
                conn.send_request(Command::RegionRead, &head, &[])
                    .map_err(|e| access_error(Command::RegionRead, index, *at, out.len(), e))
            },
            |(at, out), ticket| {
                let len = out.len();
                let reply = conn
                    .wait_into(ticket, RegionAccess::HEAD_SIZE, out)
                    .map_err(|e| access_error(Command::RegionRead, index, at, len, e))?;
                copy_read_reply(&reply, index, at, out)
            },
        )
    }

    /// Writes `data` at `offset` of region `index` and waits for the server to confirm, in
    /// messages of at most the write chunk (pipelined).
    pub fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.region(index)?.check(offset, data.len() as u64, true)?;
        if data.is_empty() {
            return Ok(());
        }
        let conn = &self.connection;
        let mut payload =
            Vec::with_capacity(RegionAccess::HEAD_SIZE + data.len().min(self.write_chunk));
        if data.len() <= self.write_chunk {
            write_payload(&mut payload, index, offset, data);
            let reply = conn
                .request(Command::RegionWrite, &payload, &[])
                .map_err(|e| access_error(Command::RegionWrite, index, offset, data.len(), e))?;
            return check_write_reply(&reply, index, offset, data.len());
        }
        let parts = data.chunks(self.write_chunk).scan(offset, |at, chunk| {
            let part = (*at, chunk);
            *at += chunk.len() as u64;
            Some(part)
        });
        pipeline(
            parts,
            |(at, chunk)| {
                write_payload(&mut payload, index, *at, chunk);
                conn.send_request(Command::RegionWrite, &payload, &[])
                    .map_err(|e| access_error(Command::RegionWrite, index, *at, chunk.len(), e))
            },
            |(at, chunk), ticket| {
                let reply = conn
                    .wait(ticket)
                    .map_err(|e| access_error(Command::RegionWrite, index, at, chunk.len(), e))?;
                check_write_reply(&reply, index, at, chunk.len())
            },
        )
    }

    /// Writes `data` at `offset` of region `index` without waiting for the server (posted,
    /// No_reply) when [`VfioUserDevice::posted_writes`] allows it; otherwise like
    /// [`VfioUserDevice::write`]. The server's refusal of a posted write is not reported; a
    /// lost connection is.
    pub fn write_posted(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        if !self.posted_writes {
            return self.write(index, offset, data);
        }
        self.region(index)?.check(offset, data.len() as u64, true)?;
        let conn = &self.connection;
        let mut payload =
            Vec::with_capacity(RegionAccess::HEAD_SIZE + data.len().min(self.write_chunk));
        let mut at = offset;
        for chunk in data.chunks(self.write_chunk) {
            write_payload(&mut payload, index, at, chunk);
            conn.send_no_reply(Command::RegionWrite, &payload, &[])
                .map_err(|e| access_error(Command::RegionWrite, index, at, chunk.len(), e))?;
            at += chunk.len() as u64;
        }
        Ok(())
    }
}

/// Sends `parts` as NOWAIT requests, at most [`PIPELINE_WINDOW`] in flight, and finishes
/// each in order. After the first error nothing more is sent, but every request already sent
/// is still collected (so no reply is left behind); the first error is returned.
fn pipeline<P>(
    parts: impl Iterator<Item = P>,
    mut send: impl FnMut(&P) -> Result<PendingReply, Error>,
    mut finish: impl FnMut(P, PendingReply) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut parts = parts;
    let mut window = VecDeque::with_capacity(PIPELINE_WINDOW);
    let mut first_error = None;
    loop {
        if window.len() < PIPELINE_WINDOW && first_error.is_none() {
            if let Some(part) = parts.next() {
                match send(&part) {
                    Ok(ticket) => window.push_back((part, ticket)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
                continue;
            }
        }
        let Some((part, ticket)) = window.pop_front() else {
            break;
        };
        if let Err(e) = finish(part, ticket) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn access_head(index: u32, offset: u64, len: usize) -> [u8; RegionAccess::HEAD_SIZE] {
    let mut head = [0u8; RegionAccess::HEAD_SIZE];
    head[..8].copy_from_slice(&offset.to_le_bytes());
    head[8..12].copy_from_slice(&index.to_le_bytes());
    // `len` is at most a chunk, which fits u32 (max_data_xfer_size is a u32).
    head[12..].copy_from_slice(&(len as u32).to_le_bytes());
    head
}

fn write_payload(payload: &mut Vec<u8>, index: u32, offset: u64, data: &[u8]) {
    payload.clear();
    payload.extend_from_slice(&access_head(index, offset, data.len()));
    payload.extend_from_slice(data);
}

fn access_error(
    command: Command,
    index: u32,
    offset: u64,
    len: usize,
    source: connection::Error,
) -> Error {
    Error::RegionAccess {
        command,
        index,
        offset,
        len,
        source,
    }
}

fn check_access_head(
    command: Command,
    head: &RegionAccess,
    index: u32,
    offset: u64,
    len: usize,
) -> Result<(), Error> {
    if head.region != index || head.offset != offset || head.count as usize != len {
        return Err(Error::BadReply {
            command,
            what: format!(
                "answers region {} at {:#x}, {} bytes instead of region {index} at {offset:#x}, \
                 {len} bytes",
                head.region, head.offset, head.count
            ),
        });
    }
    Ok(())
}

/// Checks a REGION_READ reply and puts its data into `out`, unless it is there already
/// (`data_in_buffer`: the connection read it into `out` and checked that exactly `out.len()` bytes
/// follow the head).
fn copy_read_reply(reply: &Reply, index: u32, offset: u64, out: &mut [u8]) -> Result<(), Error> {
    if reply.data_in_buffer {
        if reply.payload.len() != RegionAccess::HEAD_SIZE {
            return Err(Error::BadReply {
                command: Command::RegionRead,
                what: format!("{} bytes of head in the reply", reply.payload.len()),
            });
        }
        let head = RegionAccess::decode(&reply.payload).map_err(|e| Error::BadReply {
            command: Command::RegionRead,
            what: e.to_string(),
        })?;
        // The data length must match `count`, as `decode_with_data` requires (same error).
        if head.count as usize != out.len() {
            let e = DecodeError::LengthMismatch {
                what: "region access",
                expected: (head.count as usize).saturating_add(RegionAccess::HEAD_SIZE),
                got: RegionAccess::HEAD_SIZE + out.len(),
            };
            return Err(Error::BadReply {
                command: Command::RegionRead,
                what: e.to_string(),
            });
        }
        return check_access_head(Command::RegionRead, &head, index, offset, out.len());
    }
    let (head, data) =
        RegionAccess::decode_with_data(&reply.payload).map_err(|e| Error::BadReply {
            command: Command::RegionRead,
            what: e.to_string(),
        })?;
    check_access_head(Command::RegionRead, &head, index, offset, out.len())?;
    out.copy_from_slice(data);
    Ok(())
}

fn check_write_reply(reply: &Reply, index: u32, offset: u64, len: usize) -> Result<(), Error> {
    let head = RegionAccess::decode(&reply.payload).map_err(|e| Error::BadReply {
        command: Command::RegionWrite,
        what: e.to_string(),
    })?;
    check_access_head(Command::RegionWrite, &head, index, offset, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_heads_are_little_endian() {
        let head = access_head(7, 0x0102_0304_0506_0708, 0x1234);
        let decoded = RegionAccess::decode(&head).unwrap();
        assert_eq!(
            decoded,
            RegionAccess {
                offset: 0x0102_0304_0506_0708,
                region: 7,
                count: 0x1234
            }
        );
    }
}
