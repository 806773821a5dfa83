// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device data stream: MIG_DATA_READ as [`Read`], MIG_DATA_WRITE as [`Write`].

use std::io::{self, Read, Write};

use super::{Error, Migration};
use crate::connection::{self, Connection, PendingReply};
use crate::protocol::{Command, DeviceState, Header, MigData};

/// The largest read and write of one message: what we accept (our `max_data_xfer_size` and
/// receive limit) and what the server accepts (its `max_data_xfer_size`).
pub(super) fn chunks(conn: &Connection) -> (u32, u32) {
    let recv = conn
        .max_recv_size()
        .saturating_sub((Header::SIZE + MigData::HEAD_SIZE) as u32);
    let read = conn.offer().max_data_xfer_size.min(recv).max(1);
    let write = conn.capabilities().max_data_xfer_size.max(1);
    (read, write)
}

impl Error {
    /// The migration error inside an [`io::Error`] of a [`DataReader`] or [`DataWriter`].
    pub fn from_io(e: &io::Error) -> Option<&Error> {
        e.get_ref().and_then(|e| e.downcast_ref::<Error>())
    }
}

fn read_failed(source: connection::Error) -> Error {
    Error::Request {
        command: Command::MigDataRead,
        feature: None,
        source,
    }
}

fn io_error(e: Error) -> io::Error {
    let kind = if crate::ConnectionCause::is_disconnected(&e) {
        io::ErrorKind::BrokenPipe
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl<'d> Migration<'d> {
    /// The device data of the source, in PRE_COPY, PRE_COPY_P2P or STOP_COPY
    /// ([`Error::DataState`] otherwise, nothing sent).
    pub fn reader(&mut self) -> Result<DataReader<'_, 'd>, Error> {
        match self.state {
            DeviceState::PreCopy | DeviceState::PreCopyP2p | DeviceState::StopCopy => {
                Ok(DataReader { migration: self })
            }
            state => Err(Error::DataState { op: "read", state }),
        }
    }

    /// The device data of the destination, in RESUMING ([`Error::DataState`] otherwise,
    /// nothing sent).
    pub fn writer(&mut self) -> Result<DataWriter<'_, 'd>, Error> {
        match self.state {
            DeviceState::Resuming => Ok(DataWriter { migration: self }),
            state => Err(Error::DataState { op: "write", state }),
        }
    }

    /// Reads into `buf`: first what an earlier MIG_DATA_READ left over, then one
    /// MIG_DATA_READ, straight into `buf` when it holds a whole chunk, else into the staging
    /// buffer (so that small reads, such as `io::copy`'s, still move whole chunks).
    fn read_into(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if let Some(e) = self.read_error.take() {
            return Err(e);
        }
        if self.staged_at < self.staged.len() {
            let left = self.staged.get(self.staged_at..).unwrap_or_default();
            let n = left.len().min(buf.len());
            buf.get_mut(..n)
                .unwrap_or_default()
                .copy_from_slice(left.get(..n).unwrap_or_default());
            self.staged_at += n;
            return Ok(n);
        }
        let chunk = self.read_chunk as usize;
        if buf.len() >= chunk {
            return self.read_data(buf);
        }
        let mut staged = std::mem::take(&mut self.staged);
        staged.resize(chunk, 0);
        let r = self.read_data(&mut staged);
        let size = *r.as_ref().unwrap_or(&0);
        staged.truncate(size);
        self.staged = staged;
        self.staged_at = 0;
        r?;
        if size == 0 {
            return Ok(0);
        }
        self.read_into(buf)
    }

    /// Sends a MIG_DATA_READ of a chunk.
    fn send_read(&self) -> Result<PendingReply, Error> {
        let asked = self.read_chunk;
        let mut payload = Vec::with_capacity(MigData::HEAD_SIZE);
        MigData {
            argsz: asked.saturating_add(MigData::HEAD_SIZE as u32),
            size: asked,
        }
        .encode_into(&mut payload);
        self.device
            .connection()
            .send_request(Command::MigDataRead, &payload, &[])
            .map_err(read_failed)
    }

    /// One MIG_DATA_READ of a chunk into `buf` (at least a chunk long). While the server
    /// fills whole chunks, the next one is asked for before this one is waited for, so that
    /// the server prepares it meanwhile ([`Migration::settle_reads`] keeps its data).
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let current = match self.ahead.take() {
            Some(p) => p,
            None => self.send_read()?,
        };
        if self.streaming {
            // Nothing is lost if this fails: nothing was sent.
            self.ahead = self.send_read().ok();
        }
        self.streaming = false;
        let size = self.finish_read(current, buf)?;
        self.streaming = size == self.read_chunk as usize;
        Ok(size)
    }

    /// Waits for a MIG_DATA_READ of a chunk, its data into `buf` (at least a chunk long).
    fn finish_read(&mut self, pending: PendingReply, buf: &mut [u8]) -> Result<usize, Error> {
        let asked = self.read_chunk;
        let dst = buf.get_mut(..asked as usize).unwrap_or_default();
        let reply = self
            .device
            .connection()
            .wait_into(pending, MigData::HEAD_SIZE, dst)
            .map_err(read_failed)?;
        let head = MigData::decode(&reply.payload).map_err(|e| Error::BadReply {
            command: Command::MigDataRead,
            what: e.to_string(),
        })?;
        if head.size > asked {
            return Err(Error::DataOversized {
                asked,
                got: head.size,
            });
        }
        let size = head.size as usize;
        if !reply.data_in_buffer {
            // A reply of another length than asked: its data is in the payload.
            let data = reply.payload.get(MigData::HEAD_SIZE..).unwrap_or_default();
            let data = data.get(..size).ok_or(Error::DataTruncated {
                size: head.size,
                present: data.len(),
            })?;
            dst.get_mut(..size)
                .unwrap_or_default()
                .copy_from_slice(data);
        }
        self.bytes_read = self.bytes_read.saturating_add(size as u64);
        Ok(size)
    }

    /// Collects a MIG_DATA_READ sent ahead, before the state changes: its data goes to the
    /// staging buffer, for the next reader; an error is kept for the next read.
    pub(super) fn settle_reads(&mut self) {
        self.streaming = false;
        let Some(pending) = self.ahead.take() else {
            return;
        };
        let mut chunk = vec![0u8; self.read_chunk as usize];
        match self.finish_read(pending, &mut chunk) {
            Ok(n) => {
                self.staged.drain(..self.staged_at.min(self.staged.len()));
                self.staged_at = 0;
                self.staged
                    .extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            Err(e) => {
                log::warn!("migration: a MIG_DATA_READ sent ahead failed: {e}");
                self.read_error = Some(e);
            }
        }
    }

    /// One MIG_DATA_WRITE of at most `buf.len()` bytes (and of one message).
    fn write_data(&mut self, buf: &[u8]) -> Result<usize, Error> {
        let len = buf.len().min(self.write_chunk as usize);
        let data = buf.get(..len).unwrap_or_default();
        let size = u32::try_from(len).unwrap_or(u32::MAX);
        let mut payload = Vec::with_capacity(MigData::HEAD_SIZE + len);
        MigData {
            argsz: size.saturating_add(MigData::HEAD_SIZE as u32),
            size,
        }
        .encode_with_data(data, &mut payload);
        let reply = self
            .device
            .connection()
            .request(Command::MigDataWrite, &payload, &[])
            .map_err(|source| Error::Request {
                command: Command::MigDataWrite,
                feature: None,
                source,
            })?;
        // Spec 0.9.2 replies without a payload; later drafts echo `argsz` and `size`.
        if !reply.payload.is_empty() {
            let head = MigData::decode(&reply.payload).map_err(|e| Error::BadReply {
                command: Command::MigDataWrite,
                what: e.to_string(),
            })?;
            if head.size != size {
                return Err(Error::BadReply {
                    command: Command::MigDataWrite,
                    what: format!("{} bytes written of {size}", head.size),
                });
            }
        }
        self.bytes_written = self.bytes_written.saturating_add(len as u64);
        Ok(len)
    }
}

/// The source's device data ([`Migration::reader`]).
///
/// Each MIG_DATA_READ asks for a whole chunk (the largest a message may carry either way);
/// a `read` into a buffer of at least a chunk receives it in place, a smaller `read` gets
/// it through a staging buffer that later reads (through this or a later reader) empty
/// first. While the server fills whole chunks, the next MIG_DATA_READ is sent before the
/// current one is waited for; if the state changes meanwhile, its data is kept for the
/// next reader. `Ok(0)` means the server has nothing more for now: the end of a pre-copy round,
/// or in STOP_COPY the end of the data; read until then before changing state. Errors wrap
/// an [`Error`] ([`Error::from_io`]).
#[derive(Debug)]
pub struct DataReader<'m, 'd> {
    migration: &'m mut Migration<'d>,
}

impl DataReader<'_, '_> {
    /// Device data bytes received through this device's migration so far.
    pub fn bytes_read(&self) -> u64 {
        self.migration.bytes_read
    }
}

impl Read for DataReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.migration.read_into(buf).map_err(io_error)
    }
}

/// The destination's device data ([`Migration::writer`]): each `write` is one
/// MIG_DATA_WRITE of at most the server's `max_data_xfer_size`. Errors wrap an [`Error`]
/// ([`Error::from_io`]).
#[derive(Debug)]
pub struct DataWriter<'m, 'd> {
    migration: &'m mut Migration<'d>,
}

impl DataWriter<'_, '_> {
    /// Device data bytes written through this device's migration so far.
    pub fn bytes_written(&self) -> u64 {
        self.migration.bytes_written
    }
}

impl Write for DataWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.migration.write_data(buf).map_err(io_error)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
