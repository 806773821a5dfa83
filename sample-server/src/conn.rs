// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One client connection: framing, command dispatch and server-to-client DMA requests.
//!
//! I/O is blocking, on the connection's own thread. Every reply is one `sendmsg` (header and
//! payload as two iovecs, fds attached) unless the kernel takes it in parts.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

use vfio_bindings::bindings::vfio::{
    vfio_region_sparse_mmap_area as SparseMmapArea, VFIO_DEVICE_FLAGS_RESET,
    VFIO_DMA_UNMAP_FLAG_ALL, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::protocol::{
    Command, DecodeError, DeviceInfo, DmaAccess, DmaMap, DmaUnmap, Header, IoSubregion, IrqInfo,
    RegionAccess, RegionCap, RegionInfo, RegionIoFds, RegionWriteMulti, SetIrqs, Version,
};

use crate::device::Errno;
use crate::device::ResetReason;
use crate::dma::Segment;
use crate::irq::IrqTable;
use crate::migration;
use crate::server::{ClientInfo, Shared};
use crate::socket::{recv_with_fds, send_with_fds, MAX_RECV_FDS};

/// Commands that may arrive while the server waits for a DMA reply; more is a flood.
const MAX_QUEUED: usize = 4096;
const REGION_INFO_SIZE: u32 = RegionInfo::HEAD_SIZE as u32;
const LIBVFIO_USER_MAX_MINOR: u16 = 2;
const MAX_CLIENT_MSG_FDS: u64 = 1024;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A received message with its body and the fds that came with its header.
#[derive(Debug)]
struct Message {
    header: Header,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// More fds came than the server's `max_msg_fds`; they were closed and `fds` is empty.
    too_many_fds: bool,
}

/// What one framed read produced.
#[derive(Debug)]
enum Incoming {
    Message(Message),
    /// A message over the size limit; its body was drained unread.
    Oversized(Header),
}

/// Something whose fd a reply may carry.
trait ReplyFd: AsRawFd + fmt::Debug {}

impl<T: AsRawFd + fmt::Debug> ReplyFd for T {}

/// A successful reply's payload and the fds to attach, kept open until it is sent.
#[derive(Debug, Default)]
struct Reply {
    payload: Vec<u8>,
    fds: Vec<Arc<dyn ReplyFd>>,
}

impl Reply {
    fn with(payload: Vec<u8>) -> Reply {
        Reply {
            payload,
            fds: Vec::new(),
        }
    }
}

/// The socket side of a connection, shared by the command loop and device DMA.
#[derive(Debug)]
pub(crate) struct Link {
    stream: UnixStream,
    /// Twin-socket mode: our DMA requests and their replies use this socket.
    twin: Option<UnixStream>,
    /// What was read from `stream` (index 0) and `twin` (index 1) ahead of the message
    /// being taken apart.
    ahead: [ReadAhead; 2],
    queue: VecDeque<Incoming>,
    next_id: u16,
    max_msg_size: u32,
    recv_max_fds: usize,
    client_max_fds: u64,
    client_max_xfer: u64,
    broken: bool,
}

/// Sends one message (blocking), fds with its first byte.
fn send_on(stream: &UnixStream, header: &Header, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let hdr = header.to_bytes();
    let total = Header::SIZE + payload.len();
    let mut sent = send_with_fds(stream, &[&hdr, payload], fds)?;
    while sent < total {
        let n = if sent < Header::SIZE {
            send_with_fds(stream, &[&hdr[sent..], payload], &[])?
        } else {
            send_with_fds(stream, &[&payload[sent - Header::SIZE..]], &[])?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// Bytes read from a socket ahead of the message being taken apart: one `recvmsg` takes as
/// many (small) messages as are waiting, where reading each header and body on its own
/// took two calls per message. With `exact` set it does just that, as libvfio-user does
/// ([`ServerConfig::read_ahead`](crate::ServerConfig::read_ahead) off).
#[derive(Debug, Default)]
struct ReadAhead {
    /// Read only what the message being taken apart still lacks: its header, then its body.
    exact: bool,
    /// Allocated (twice [`READ_AHEAD`]) at the first read; `start..end` is unread.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// fds not yet given to a message, each with the position in `buf` of the last byte
    /// of the read that brought it: they belong to the message holding that byte (the
    /// kernel ends a read at the data that carries fds).
    fds: Vec<(usize, OwnedFd)>,
}

/// How much one read asks for at least.
const READ_AHEAD: usize = 64 << 10;

impl ReadAhead {
    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads once more (blocking), wanting `want` bytes buffered in all (an exact reader
    /// reads no more than that); `false` at the end of the stream.
    fn fill(&mut self, stream: &UnixStream, want: usize) -> io::Result<bool> {
        if self.buf.is_empty() {
            self.buf = vec![0; 2 * READ_AHEAD];
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < READ_AHEAD {
            self.buf.copy_within(self.start..self.end, 0);
            for (at, _) in &mut self.fds {
                *at -= self.start;
            }
            self.end -= self.start;
            self.start = 0;
        }
        // Room for more fds than allowed, so that an excess is refused (EINVAL) rather
        // than fatal; beyond MAX_RECV_FDS the kernel drops the rest, which still counts as
        // excess.
        let room = self.buf.len() - self.end;
        let len = if self.exact {
            want.saturating_sub(self.buffered()).clamp(1, room)
        } else {
            room
        };
        let (n, fds) = recv_with_fds(stream, &mut self.buf[self.end..][..len], MAX_RECV_FDS)?;
        self.end += n;
        let last = self.end.saturating_sub(1);
        self.fds.extend(fds.into_iter().map(|fd| (last, fd)));
        Ok(n > 0)
    }

    /// Reads until `want` bytes are buffered; `false` if the stream ends first.
    fn fill_to(&mut self, stream: &UnixStream, want: usize) -> io::Result<bool> {
        while self.buffered() < want {
            if !self.fill(stream, want)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Passes over the next `len` (at most [`buffered`](Self::buffered)) bytes; returns
    /// the fds that came with them.
    fn skip(&mut self, len: usize) -> Vec<OwnedFd> {
        self.start += len;
        let mut fds = Vec::new();
        while self.fds.first().is_some_and(|(at, _)| *at < self.start) {
            fds.push(self.fds.remove(0).1);
        }
        fds
    }

    /// Takes the next `len` (at most [`buffered`](Self::buffered)) bytes and the fds that
    /// came with them.
    fn take(&mut self, len: usize) -> (Vec<u8>, Vec<OwnedFd>) {
        let bytes = self.buf[self.start..][..len].to_vec();
        (bytes, self.skip(len))
    }

    /// The next message; `Ok(None)` is a clean end of stream between messages.
    fn message(
        &mut self,
        stream: &UnixStream,
        max_msg_size: u32,
        max_fds: usize,
    ) -> io::Result<Option<Incoming>> {
        if !self.fill_to(stream, Header::SIZE)? {
            return if self.buffered() == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let mut hdr = [0u8; Header::SIZE];
        hdr.copy_from_slice(&self.buf[self.start..][..Header::SIZE]);
        let header = match Header::decode(&hdr, max_msg_size) {
            Ok(header) => header,
            Err(DecodeError::TooLarge { .. }) => {
                // Drained unread, in steps of at most one read.
                let header = Header::from_bytes(&hdr);
                let mut left = Header::SIZE + header.payload_len();
                while left > 0 {
                    if self.buffered() == 0 && !self.fill(stream, left)? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let n = left.min(self.buffered());
                    drop(self.skip(n));
                    left -= n;
                }
                return Ok(Some(Incoming::Oversized(header)));
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        let total = Header::SIZE + header.payload_len();
        if total <= READ_AHEAD && !self.fill_to(stream, total)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut fds = self.skip(Header::SIZE);
        let (mut body, more) = self.take(self.buffered().min(header.payload_len()));
        fds.extend(more);
        // What is buffered; the rest of a message larger than a read goes straight into
        // place.
        let mut got = body.len();
        body.resize(header.payload_len(), 0);
        while got < body.len() {
            match recv_with_fds(stream, &mut body[got..], MAX_RECV_FDS)? {
                (0, _) => return Err(io::ErrorKind::UnexpectedEof.into()),
                (n, more) => {
                    got += n;
                    fds.extend(more);
                }
            }
        }
        let too_many_fds = fds.len() > max_fds;
        if too_many_fds {
            fds.clear();
        }
        Ok(Some(Incoming::Message(Message {
            header,
            body,
            fds,
            too_many_fds,
        })))
    }
}

impl Link {
    /// Reads one message from the main socket; `Ok(None)` is a clean end of stream between
    /// messages.
    fn read_message(&mut self) -> io::Result<Option<Incoming>> {
        self.read_message_from(false)
    }

    /// Reads one message from the main socket, or from the twin socket when `twin` is set.
    fn read_message_from(&mut self, twin: bool) -> io::Result<Option<Incoming>> {
        let (stream, ahead) = match (&self.twin, twin) {
            (Some(t), true) => (t, &mut self.ahead[1]),
            _ => (&self.stream, &mut self.ahead[0]),
        };
        ahead.message(stream, self.max_msg_size, self.recv_max_fds)
    }

    fn send(&mut self, header: &Header, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        send_on(&self.stream, header, payload, fds)
    }

    /// Sends a server command and waits for its reply: on the twin socket when there is one
    /// (client commands then wait in the main socket), otherwise on the main socket, queueing
    /// client commands that arrive meanwhile.
    fn request(&mut self, command: Command, payload: &[u8]) -> Result<Message, Errno> {
        if self.broken {
            return Err(Errno::NOTCONN);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let header = Header::command(id, command, payload.len(), false).ok_or(Errno::INVAL)?;
        let twin = self.twin.is_some();
        let sent = match &self.twin {
            Some(t) => send_on(t, &header, payload, &[]),
            None => self.send(&header, payload, &[]),
        };
        if let Err(e) = sent {
            log::debug!("sending {command}: {e}");
            self.broken = true;
            return Err(Errno::NOTCONN);
        }
        loop {
            match self.read_message_from(twin) {
                Ok(Some(Incoming::Message(m))) if m.header.is_reply() => {
                    if m.header.id == id && m.header.command == command as u16 {
                        return Ok(m);
                    }
                    log::debug!("discarding unexpected reply {}", m.header);
                }
                Ok(Some(incoming)) if twin => {
                    log::warn!("client sent {incoming:?} on the twin socket; discarded");
                }
                Ok(Some(incoming)) => {
                    if self.queue.len() >= MAX_QUEUED {
                        log::warn!("client flooded the server during {command}");
                        self.broken = true;
                        return Err(Errno::IO);
                    }
                    self.queue.push_back(incoming);
                }
                Ok(None) | Err(_) => {
                    self.broken = true;
                    return Err(Errno::NOTCONN);
                }
            }
        }
    }

    fn chunk(&self) -> usize {
        // A DMA_READ reply (header, 16-byte head, data) must also fit what we accept.
        let ours = (self.max_msg_size as usize).saturating_sub(Header::SIZE + DmaAccess::HEAD_SIZE);
        usize::try_from(self.client_max_xfer)
            .unwrap_or(usize::MAX)
            .min(ours)
            .max(1)
    }

    fn dma_read_messages(&mut self, address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let chunk = self.chunk();
        let mut at = address;
        for part in buf.chunks_mut(chunk) {
            let head = DmaAccess {
                address: at,
                count: part.len() as u64,
            };
            let mut payload = Vec::with_capacity(DmaAccess::HEAD_SIZE);
            head.encode_into(&mut payload);
            let reply = self.request(Command::DmaRead, &payload)?;
            check_reply_error(&reply.header)?;
            let (got, data) = DmaAccess::decode_with_data(&reply.body).map_err(|_| Errno::PROTO)?;
            if got != head || data.len() != part.len() {
                log::warn!(
                    "DMA_READ reply {got:?} with {} bytes for {head:?}",
                    data.len()
                );
                return Err(Errno::PROTO);
            }
            part.copy_from_slice(data);
            at = at.wrapping_add(head.count);
        }
        Ok(())
    }

    fn dma_write_messages(&mut self, address: u64, data: &[u8]) -> Result<(), Errno> {
        let chunk = self.chunk();
        let mut at = address;
        for part in data.chunks(chunk) {
            let head = DmaAccess {
                address: at,
                count: part.len() as u64,
            };
            let mut payload = Vec::with_capacity(DmaAccess::HEAD_SIZE + part.len());
            head.encode_with_data(part, &mut payload);
            let reply = self.request(Command::DmaWrite, &payload)?;
            check_reply_error(&reply.header)?;
            let got = DmaAccess::decode(&reply.body).map_err(|_| Errno::PROTO)?;
            if got != head {
                log::warn!("DMA_WRITE reply {got:?} for {head:?}");
                return Err(Errno::PROTO);
            }
            at = at.wrapping_add(head.count);
        }
        Ok(())
    }
}

/// What the server takes from a client's VERSION capabilities.
struct ClientCaps {
    max_fds: u64,
    max_xfer: u64,
    wants_twin: bool,
}

/// Reads the client's VERSION JSON (spec defaults without it). Known keys with the wrong
/// type are fatal (`EINVAL`), as in libvfio-user and QEMU.
fn client_caps(
    json: Option<&str>,
    migration: Option<&crate::config::MigrationConfig>,
) -> Result<ClientCaps, Errno> {
    let mut c = ClientCaps {
        max_fds: 1,
        max_xfer: 1 << 20,
        wants_twin: false,
    };
    let Some(text) = json else {
        return Ok(c);
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| Errno::INVAL)?;
    let obj = value.as_object().ok_or(Errno::INVAL)?;
    let Some(caps) = obj.get("capabilities") else {
        return Ok(c);
    };
    for (key, v) in caps.as_object().ok_or(Errno::INVAL)? {
        let ok = match key.as_str() {
            "max_msg_fds" => v
                .as_u64()
                .filter(|n| *n <= MAX_CLIENT_MSG_FDS)
                .map(|n| c.max_fds = n)
                .is_some(),
            "max_data_xfer_size" => v
                .as_u64()
                .filter(|n| *n > 0)
                .map(|n| c.max_xfer = n)
                .is_some(),
            "max_dma_maps" | "pgsizes" => v.is_u64(),
            "write_multiple" => v.is_boolean(),
            "twin_socket" => v
                .as_object()
                .map(|t| c.wants_twin = t.get("supported") == Some(&serde_json::Value::Bool(true)))
                .is_some(),
            "migration" => client_migration_ok(v, migration),
            _ => true,
        };
        if !ok {
            return Err(Errno::INVAL);
        }
    }
    Ok(c)
}

/// The client's `migration` capability: an object whose `pgsize`, if any, is a number, equal
/// to ours when the server offers migration (libvfio-user fails VERSION otherwise).
fn client_migration_ok(
    value: &serde_json::Value,
    ours: Option<&crate::config::MigrationConfig>,
) -> bool {
    let Some(obj) = value.as_object() else {
        return false;
    };
    match (obj.get("pgsize"), ours) {
        (None, _) => true,
        (Some(p), None) => p.is_u64(),
        (Some(p), Some(m)) => p.as_u64() == Some(m.pgsize),
    }
}

fn check_reply_error(h: &Header) -> Result<(), Errno> {
    if h.is_error() {
        let errno = i32::try_from(h.error).ok().filter(|e| *e > 0 && *e < 4096);
        return Err(Errno(errno.unwrap_or(libc::EIO)));
    }
    Ok(())
}

/// What a device may do while the server runs one of its callbacks: DMA to guest memory and
/// raise interrupts.
pub struct DeviceContext<'a> {
    link: &'a mut Link,
    shared: &'a Shared,
}

impl fmt::Debug for DeviceContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceContext")
            .field("client_max_data_xfer_size", &self.link.client_max_xfer)
            .finish_non_exhaustive()
    }
}

impl DeviceContext<'_> {
    /// Reads guest memory at `address` into `buf`.
    ///
    /// Goes through the mmap (or file) of fd-backed windows, and through DMA_READ messages
    /// chunked by the client's `max_data_xfer_size` for fd-less ones; may span windows.
    /// Errors: `EFAULT` outside every window, `EPERM` without READ access, the client's errno
    /// or `EPROTO` for a failed or malformed DMA_READ reply, `ENOTCONN` if the client left.
    pub fn dma_read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0;
        while done < buf.len() {
            let at = address.checked_add(done as u64).ok_or(Errno::FAULT)?;
            let seg = lock(&self.shared.dma).read(at, &mut buf[done..])?;
            done += match seg {
                Segment::Done(n) => n,
                Segment::Message(n) => {
                    self.link.dma_read_messages(at, &mut buf[done..done + n])?;
                    n
                }
            };
        }
        Ok(())
    }

    /// Writes `data` to guest memory at `address`; see [`DeviceContext::dma_read`]. While
    /// DMA logging is on, the pages written are logged, whichever way they are reached.
    pub fn dma_write(&mut self, address: u64, data: &[u8]) -> Result<(), Errno> {
        crate::migration::log_write(&self.shared.dirty, address, data.len());
        let mut done = 0;
        while done < data.len() {
            let at = address.checked_add(done as u64).ok_or(Errno::FAULT)?;
            let seg = lock(&self.shared.dma).write(at, &data[done..])?;
            done += match seg {
                Segment::Done(n) => n,
                Segment::Message(n) => {
                    self.link.dma_write_messages(at, &data[done..done + n])?;
                    n
                }
            };
        }
        Ok(())
    }

    /// Raises `vector` of IRQ type `index`; `Ok(true)` when an eventfd was signalled,
    /// `Ok(false)` when none is attached or the vector is masked (then it is left pending).
    pub fn raise_irq(&mut self, index: u32, vector: u32) -> Result<bool, Errno> {
        lock(&self.shared.irqs).raise(index, vector)
    }

    /// Whether the client attached a trigger eventfd to `vector` of `index`.
    pub fn irq_assigned(&self, index: u32, vector: u32) -> bool {
        lock(&self.shared.irqs).assigned(index, vector)
    }

    /// Whether `vector` of `index` is pending: raised while the client had it masked (the
    /// bit a device shows in its MSI-X pending bit array).
    pub fn irq_pending(&self, index: u32, vector: u32) -> bool {
        lock(&self.shared.irqs).pending(index, vector)
    }

    /// The client's `max_data_xfer_size` (1 MiB when it sent none).
    pub fn client_max_data_xfer_size(&self) -> u64 {
        self.link.client_max_xfer
    }
}

/// Serves one client on `stream` until it disconnects or the stream is shut down.
pub(crate) fn serve(shared: &Shared, stream: UnixStream) {
    let config = &shared.config;
    if let Err(e) = stream.set_nonblocking(false) {
        log::warn!("connection setup: {e}");
        return;
    }
    let counts: Vec<u32> = {
        let device = lock(&shared.device);
        (0..device.info().num_irqs)
            .map(|i| device.irq_count(i))
            .collect()
    };
    *lock(&shared.irqs) = IrqTable::new(&counts, config.irq_masking);
    shared.connection_started();
    let mut conn = Conn {
        shared,
        link: Link {
            stream,
            twin: None,
            ahead: [(); 2].map(|()| ReadAhead {
                exact: !config.read_ahead,
                ..ReadAhead::default()
            }),
            queue: VecDeque::new(),
            next_id: 0,
            max_msg_size: config.max_msg_size,
            recv_max_fds: config.recv_max_fds(),
            client_max_fds: 1,
            client_max_xfer: 1 << 20,
            broken: false,
        },
        version_done: false,
        close: false,
    };
    conn.run();
    // Clones of the stream (kept to stop the server) must not keep the client waiting.
    let _ = conn.link.stream.shutdown(std::net::Shutdown::Both);
    if let Some(t) = conn.link.twin.take() {
        let _ = t.shutdown(std::net::Shutdown::Both);
    }
    conn.teardown();
    shared.connection_ended();
}

struct Conn<'a> {
    shared: &'a Shared,
    link: Link,
    version_done: bool,
    close: bool,
}

impl Conn<'_> {
    fn run(&mut self) {
        while !self.link.broken && !self.close {
            let incoming = match self.link.queue.pop_front() {
                Some(m) => m,
                None => match self.link.read_message() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        log::debug!("connection closed: {e}");
                        break;
                    }
                },
            };
            match incoming {
                Incoming::Oversized(h) if h.is_command() => {
                    log::warn!("oversized message {h}");
                    self.reply(&h, Err(Errno::INVAL));
                }
                Incoming::Oversized(_) => {}
                Incoming::Message(m) => {
                    self.shared.wait_while_paused();
                    self.handle(m);
                    self.step_device();
                }
            }
        }
    }

    /// Lets a running device work between messages.
    fn step_device(&mut self) {
        if !self.version_done || self.link.broken || !migration::device_running(self.shared) {
            return;
        }
        let shared = self.shared;
        let mut ctx = DeviceContext {
            link: &mut self.link,
            shared,
        };
        lock(&shared.device).step(&mut ctx);
    }

    fn teardown(&mut self) {
        let maps = lock(&self.shared.dma).unmap_all();
        *lock(&self.shared.irqs) = IrqTable::default();
        let mut device = lock(&self.shared.device);
        for m in &maps {
            device.dma_unmapped(m);
        }
        if let Err(e) = device.reset(ResetReason::LostConnection) {
            log::warn!("reset after disconnect: {e:?}");
        }
        drop(device);
        migration::reset(self.shared, true);
    }

    fn handle(&mut self, m: Message) {
        if !m.header.is_command() {
            log::debug!("discarding unsolicited reply {}", m.header);
            return;
        }
        let header = m.header;
        self.shared.command_seen(header.known_command());
        if m.too_many_fds {
            log::warn!("{header} carried more than max_msg_fds fds");
            self.reply(&header, Err(Errno::INVAL));
            self.close = !self.version_done;
            return;
        }
        if !self.version_done {
            let result = if header.known_command() == Some(Command::Version) {
                self.version(m)
            } else {
                log::warn!("{header} before VERSION");
                Err(Errno::INVAL)
            };
            let ok = result.is_ok();
            self.reply(&header, result);
            self.version_done = ok;
            self.close = !ok || self.shared.config.quirks.close_after_version;
            return;
        }
        if let Some(errno) = header
            .known_command()
            .and_then(|c| self.shared.injected_failure(c))
        {
            log::debug!("{header} refused on request: {errno:?}");
            self.reply(&header, Err(errno));
            return;
        }
        if !migration::command_allowed(self.shared, header.known_command()) {
            log::debug!("{header} refused while the device is stopped");
            self.reply(&header, Err(Errno::INVAL));
            return;
        }
        let result = match header.known_command() {
            Some(Command::DmaMap) => self.dma_map(m),
            Some(Command::DmaUnmap) => self.dma_unmap(&m),
            Some(Command::DeviceGetInfo) => self.device_info(&m),
            Some(Command::DeviceGetRegionInfo) => self.region_info(&m),
            Some(Command::DeviceGetRegionIoFds) => self.region_io_fds(&m),
            Some(Command::DeviceGetIrqInfo) => self.irq_info(&m),
            Some(Command::DeviceSetIrqs) => self.set_irqs(m),
            Some(Command::RegionRead) => self.region_read(&m),
            Some(Command::RegionWrite) => self.region_write(&m),
            Some(Command::RegionWriteMulti) => self.region_write_multi(&m),
            Some(Command::DeviceReset) => self.reset(),
            Some(Command::DeviceFeature) => {
                migration::device_feature(self.shared, &m.body).map(Reply::with)
            }
            Some(Command::MigDataRead) => {
                migration::data_read(self.shared, &m.body, self.link.client_max_xfer)
                    .map(Reply::with)
            }
            Some(Command::MigDataWrite) => {
                migration::data_write(self.shared, &m.body).map(Reply::with)
            }
            _ => {
                log::debug!("unsupported command {header}");
                Err(Errno::INVAL)
            }
        };
        if let Err(e) = result {
            log::debug!("{header} failed: {e:?}");
        }
        self.reply(&header, result);
    }

    fn reply(&mut self, request: &Header, result: Result<Reply, Errno>) {
        let quirks = &self.shared.config.quirks;
        if quirks.never_reply || (quirks.never_reply_after_version && self.version_done) {
            return;
        }
        if request.no_reply() && !quirks.reply_to_no_reply {
            return;
        }
        let (header, reply) = match result {
            Ok(reply) => match Header::reply(request, reply.payload.len()) {
                Some(h) => (h, reply),
                None => (
                    Header::error_reply(request, libc::EINVAL as u32),
                    Reply::default(),
                ),
            },
            Err(e) => {
                let mut h = Header::error_reply(request, e.0 as u32);
                if quirks.error_without_error_flag {
                    h.flags &= !Header::FLAG_ERROR;
                }
                if quirks.error_as_command_type {
                    h.flags = (h.flags & !Header::TYPE_MASK) | Header::TYPE_COMMAND;
                }
                (h, Reply::default())
            }
        };
        let fds: Vec<RawFd> = reply.fds.iter().map(|f| f.as_raw_fd()).collect();
        if let Err(e) = self.link.send(&header, &reply.payload, &fds) {
            log::debug!("sending reply {header}: {e}");
            self.link.broken = true;
        }
    }

    fn version(&mut self, m: Message) -> Result<Reply, Errno> {
        let config = &self.shared.config;
        if !m.fds.is_empty() {
            return Err(Errno::INVAL);
        }
        let request = Version::decode(&m.body)?;
        if request.major != config.major {
            return Err(Errno::INVAL);
        }
        let ClientCaps {
            max_fds,
            max_xfer,
            wants_twin,
        } = client_caps(request.json.as_deref(), self.shared.migration_config())?;
        self.link.client_max_fds = max_fds;
        self.link.client_max_xfer = max_xfer;
        // As libvfio-user: only for a client that asked and accepts fds.
        let twin = if config.twin_socket && wants_twin && max_fds > 0 {
            let (ours, theirs) = UnixStream::pair().map_err(|e| Errno::from_io(&e))?;
            self.link.twin = Some(ours);
            Some(theirs)
        } else {
            None
        };
        self.shared.set_client(ClientInfo {
            major: request.major,
            minor: request.minor,
            json: request.json,
            max_msg_fds: max_fds,
            max_data_xfer_size: max_xfer,
            twin_socket: twin.is_some(),
        });
        let mut payload = Vec::new();
        Version {
            major: config.major,
            minor: config
                .minor
                .unwrap_or(request.minor.min(LIBVFIO_USER_MAX_MINOR)),
            json: None,
        }
        .encode_into(&mut payload);
        // Appended raw: the configuration may ask for malformed JSON.
        payload.extend_from_slice(
            &config.version_json_bytes(twin.as_ref().map(|_| 0), self.shared.migration_config()),
        );
        let fds: Vec<Arc<dyn ReplyFd>> = match twin {
            Some(t) => vec![Arc::new(t)],
            None => Vec::new(),
        };
        Ok(Reply { payload, fds })
    }

    fn device_info(&mut self, m: &Message) -> Result<Reply, Errno> {
        let request = DeviceInfo::decode(&m.body)?;
        if (request.argsz as usize) < DeviceInfo::SIZE {
            return Err(Errno::INVAL);
        }
        let info = lock(&self.shared.device).info();
        let mut payload = Vec::with_capacity(DeviceInfo::SIZE);
        DeviceInfo {
            argsz: DeviceInfo::SIZE as u32,
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        }
        .encode_into(&mut payload);
        Ok(Reply::with(payload))
    }

    /// libvfio-user's behaviour: a mappable region always has a SPARSE_MMAP cap; when the
    /// request's `argsz` cannot hold it the reply says the `argsz` needed, with MMAP but
    /// without CAPS and without the fd.
    fn region_info(&mut self, m: &Message) -> Result<Reply, Errno> {
        let request = RegionInfo::decode(&m.body)?;
        if request.argsz < REGION_INFO_SIZE {
            return Err(Errno::INVAL);
        }
        let index = request.index;
        let spec = {
            let device = lock(&self.shared.device);
            if index >= device.info().num_regions {
                return Err(Errno::INVAL);
            }
            device.region(index)
        };
        let mut info = RegionInfo {
            argsz: REGION_INFO_SIZE,
            index,
            ..RegionInfo::default()
        };
        let mut fds: Vec<Arc<dyn ReplyFd>> = Vec::new();
        if let Some(spec) = spec {
            info.flags = spec.flags & (VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE);
            info.size = spec.size;
            // A client that accepts no fds cannot mmap; it gets a trapped region.
            if let Some(mm) = spec.mmap.filter(|_| self.link.client_max_fds > 0) {
                let areas = if mm.areas.is_empty() {
                    vec![SparseMmapArea {
                        offset: 0,
                        size: spec.size,
                    }]
                } else {
                    mm.areas
                };
                info.flags |= VFIO_REGION_INFO_FLAG_MMAP;
                info.offset = mm.offset;
                info.caps = vec![RegionCap::SparseMmap(areas)];
                info.argsz = u32::try_from(info.encoded_len()).map_err(|_| Errno::INVAL)?;
                if request.argsz >= info.argsz {
                    fds.push(mm.memory);
                } else {
                    info.caps.clear();
                }
            }
        }
        let mut payload = Vec::with_capacity(info.encoded_len());
        info.encode_into(&mut payload);
        Ok(Reply { payload, fds })
    }

    /// libvfio-user's behaviour: a region the device reports answers with its sub-regions
    /// (`count` 0 when it has none); when the request's `argsz` cannot hold them all the
    /// reply is the head alone, with the `argsz` needed and the full `count`, and no fds.
    /// An fd shared by several entries is sent once. Entries needing more fds than the
    /// client's `max_msg_fds` are left out (not in libvfio-user, which ignores that limit):
    /// an ioeventfd is an optimisation the client can do without, as REGION_INFO treats a
    /// client that takes no fds as unable to mmap.
    fn region_io_fds(&mut self, m: &Message) -> Result<Reply, Errno> {
        let request = RegionIoFds::decode(&m.body)?;
        if request.flags != 0 || request.count != 0 {
            return Err(Errno::INVAL);
        }
        let io_fds = {
            let device = lock(&self.shared.device);
            if request.index >= device.info().num_regions {
                return Err(Errno::INVAL);
            }
            let spec = device.region(request.index).ok_or(Errno::INVAL)?;
            if spec.flags & (VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE) == 0 {
                return Err(Errno::INVAL);
            }
            device.region_io_fds(request.index)?
        };
        if (request.argsz as usize) < RegionIoFds::HEAD_SIZE
            || u64::from(request.argsz) > self.shared.config.recv_max_data()
        {
            return Err(Errno::INVAL);
        }
        let max_fds = usize::try_from(self.link.client_max_fds).unwrap_or(usize::MAX);
        let mut fds: Vec<Arc<dyn ReplyFd>> = Vec::new();
        let mut raw: Vec<RawFd> = Vec::new();
        let mut subregions = Vec::with_capacity(io_fds.len());
        for e in io_fds {
            let fd = e.fd.as_raw_fd();
            let fd_index = match raw.iter().position(|&r| r == fd) {
                Some(i) => i,
                None if raw.len() < max_fds => {
                    raw.push(fd);
                    fds.push(e.fd);
                    raw.len() - 1
                }
                None => continue,
            };
            subregions.push(IoSubregion {
                offset: e.offset,
                size: e.size,
                fd_index: u32::try_from(fd_index).map_err(|_| Errno::INVAL)?,
                kind: e.kind,
                flags: e.flags,
                data: Some(e.datamatch),
                shadow: None,
            });
        }
        let reply = RegionIoFds {
            argsz: 0,
            flags: 0,
            index: request.index,
            count: u32::try_from(subregions.len()).map_err(|_| Errno::INVAL)?,
            layout: self.shared.config.io_fds_layout,
            subregions,
        };
        let mut payload = Vec::new();
        reply.encode_into(&mut payload);
        let argsz = u32::try_from(payload.len()).map_err(|_| Errno::INVAL)?;
        payload[..4].copy_from_slice(&argsz.to_ne_bytes());
        if request.argsz < argsz {
            payload.truncate(RegionIoFds::HEAD_SIZE);
            fds.clear();
        }
        Ok(Reply { payload, fds })
    }

    fn irq_info(&mut self, m: &Message) -> Result<Reply, Errno> {
        let request = IrqInfo::decode(&m.body)?;
        if (request.argsz as usize) < IrqInfo::SIZE {
            return Err(Errno::INVAL);
        }
        let count = {
            let device = lock(&self.shared.device);
            if request.index >= device.info().num_irqs {
                return Err(Errno::INVAL);
            }
            device.irq_count(request.index)
        };
        let maskable = if self.shared.config.irq_masking.masks(request.index) {
            VFIO_IRQ_INFO_MASKABLE
        } else {
            0
        };
        let mut payload = Vec::with_capacity(IrqInfo::SIZE);
        IrqInfo {
            argsz: IrqInfo::SIZE as u32,
            flags: VFIO_IRQ_INFO_EVENTFD | maskable,
            index: request.index,
            count,
        }
        .encode_into(&mut payload);
        Ok(Reply::with(payload))
    }

    fn set_irqs(&mut self, m: Message) -> Result<Reply, Errno> {
        let request = SetIrqs::decode(&m.body)?;
        if (request.argsz as usize) < SetIrqs::HEAD_SIZE {
            return Err(Errno::INVAL);
        }
        lock(&self.shared.irqs).set(&request, m.fds)?;
        Ok(Reply::default())
    }

    /// Validates a region access head against the device and the size limits.
    fn check_access(&self, head: &RegionAccess, need: u32) -> Result<(), Errno> {
        if u64::from(head.count) > self.shared.config.recv_max_data() {
            return Err(Errno::INVAL);
        }
        let device = lock(&self.shared.device);
        if head.region >= device.info().num_regions {
            return Err(Errno::INVAL);
        }
        let spec = device.region(head.region).ok_or(Errno::INVAL)?;
        let end = head
            .offset
            .checked_add(u64::from(head.count))
            .ok_or(Errno::INVAL)?;
        if spec.flags & need == 0 || end > spec.size {
            return Err(Errno::INVAL);
        }
        Ok(())
    }

    fn region_read(&mut self, m: &Message) -> Result<Reply, Errno> {
        if m.body.len() != RegionAccess::HEAD_SIZE {
            return Err(Errno::INVAL);
        }
        let head = RegionAccess::decode(&m.body)?;
        self.check_access(&head, VFIO_REGION_INFO_FLAG_READ)?;
        if head.count == 0 {
            return Ok(Reply::default());
        }
        let len = RegionAccess::HEAD_SIZE + head.count as usize;
        let mut payload = Vec::with_capacity(len);
        head.encode_into(&mut payload);
        payload.resize(len, 0);
        let shared = self.shared;
        let mut ctx = DeviceContext {
            link: &mut self.link,
            shared,
        };
        lock(&shared.device).region_read(
            &mut ctx,
            head.region,
            head.offset,
            &mut payload[RegionAccess::HEAD_SIZE..],
        )?;
        Ok(Reply::with(payload))
    }

    fn region_write(&mut self, m: &Message) -> Result<Reply, Errno> {
        let (head, data) = RegionAccess::decode_with_data(&m.body)?;
        self.check_access(&head, VFIO_REGION_INFO_FLAG_WRITE)?;
        if head.count == 0 {
            return Ok(Reply::default());
        }
        let shared = self.shared;
        let mut ctx = DeviceContext {
            link: &mut self.link,
            shared,
        };
        lock(&shared.device).region_write(&mut ctx, head.region, head.offset, data)?;
        let mut payload = Vec::with_capacity(RegionAccess::HEAD_SIZE);
        head.encode_into(&mut payload);
        Ok(Reply::with(payload))
    }

    /// REGION_WRITE_MULTI, when offered: the writes in order, each checked as a
    /// REGION_WRITE would be. The first that fails ends the message with its error (the
    /// writes before it stay done); the reply counts the writes done.
    fn region_write_multi(&mut self, m: &Message) -> Result<Reply, Errno> {
        if !self.shared.config.write_multiple {
            return Err(Errno::INVAL);
        }
        // Bounded by the message: exactly `wr_cnt` 24-byte entries, each at most 8 bytes.
        let multi = RegionWriteMulti::decode(&m.body)?;
        for w in &multi.writes {
            let head = RegionAccess {
                offset: w.offset,
                region: w.region,
                count: w.count,
            };
            self.check_access(&head, VFIO_REGION_INFO_FLAG_WRITE)?;
            if w.count == 0 {
                continue;
            }
            let shared = self.shared;
            let mut ctx = DeviceContext {
                link: &mut self.link,
                shared,
            };
            lock(&shared.device).region_write(&mut ctx, w.region, w.offset, w.bytes())?;
        }
        let mut payload = Vec::with_capacity(8);
        RegionWriteMulti::encode_reply(multi.writes.len() as u64, &mut payload);
        Ok(Reply::with(payload))
    }

    fn dma_map(&mut self, mut m: Message) -> Result<Reply, Errno> {
        let request = DmaMap::decode(&m.body)?;
        if (request.argsz as usize) < DmaMap::SIZE || m.fds.len() > 1 {
            return Err(Errno::INVAL);
        }
        let fd = m.fds.pop();
        let config = &self.shared.config;
        if config.refuse_fdless_maps && fd.is_none() {
            log::debug!(
                "refusing fd-less DMA_MAP {:#x}+{:#x}",
                request.address,
                request.size
            );
            return Err(Errno::INVAL);
        }
        const TWO_MIB: u64 = 2 << 20;
        if config.require_2mib_alignment
            && (request.address | request.size | request.offset) % TWO_MIB != 0
        {
            return Err(Errno::INVAL);
        }
        let mut table = lock(&self.shared.dma);
        if table.len() as u64 >= config.dma_map_limit() {
            return Err(Errno(libc::ENOSPC));
        }
        let added = table.map(
            request.flags,
            request.offset,
            request.address,
            request.size,
            fd,
            config.mmap_dma_windows,
        )?;
        drop(table);
        if let Some(info) = added {
            lock(&self.shared.device).dma_mapped(&info);
        }
        Ok(Reply::default())
    }

    fn dma_unmap(&mut self, m: &Message) -> Result<Reply, Errno> {
        let request = DmaUnmap::decode(&m.body)?;
        // GET_DIRTY_BITMAP needs dirty tracking, which this server does not do.
        if (request.argsz as usize) < DmaUnmap::SIZE
            || request.flags & !VFIO_DMA_UNMAP_FLAG_ALL != 0
        {
            return Err(Errno::INVAL);
        }
        let removed = if request.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0 {
            if request.address != 0 || request.size != 0 {
                return Err(Errno::INVAL);
            }
            lock(&self.shared.dma).unmap_all()
        } else {
            vec![lock(&self.shared.dma).unmap(request.address, request.size)?]
        };
        let mut device = lock(&self.shared.device);
        for info in &removed {
            device.dma_unmapped(info);
        }
        let mut payload = Vec::with_capacity(DmaUnmap::SIZE);
        DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            ..request
        }
        .encode_into(&mut payload);
        Ok(Reply::with(payload))
    }

    fn reset(&mut self) -> Result<Reply, Errno> {
        let mut device = lock(&self.shared.device);
        if device.info().flags & VFIO_DEVICE_FLAGS_RESET == 0 {
            return Err(Errno::INVAL);
        }
        device.reset(ResetReason::Client)?;
        drop(device);
        migration::reset(self.shared, false);
        if self.shared.config.reset_clears_irqs {
            lock(&self.shared.irqs).clear();
        }
        Ok(Reply::default())
    }
}
