// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Twin-socket mode: the server sends its own requests (DMA_READ, DMA_WRITE) on a second
//! socket, handed to us with the VERSION reply, so they never interleave with our requests
//! on the main socket (libvfio-user issue #279).
//!
//! The second socket is read by a [`TwinSubscriber`] in the same event loop as the main
//! socket's subscriber ([`ConnectionSubscriber`](super::ConnectionSubscriber) holds both). Requests are answered through
//! the connection's [`Responder`](super::Responder); replies go back on
//! the second socket, queued when it is full. Either socket failing ends the connection: a
//! lost main connection shuts the twin socket down, and an error or hang-up on the twin
//! socket fails the connection.

use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::framer::{Framer, Incoming, TWIN_READ_SIZE};
use super::inner::{io_err, Inner};
use super::send::{Outgoing, SendQueue, MAX_QUEUED_BYTES, WRITE_WAIT};
use super::{error, DisconnectReason, Error};
use crate::protocol::MessageType;

const TWIN_EVENTS: EventSet = EventSet::IN.union(EventSet::READ_HANG_UP);

/// Reads the server's requests from the twin socket and answers them there.
pub(super) struct TwinSubscriber {
    inner: Arc<Inner>,
    sock: Arc<UnixStream>,
    framer: Framer,
    /// Replies not yet completely written, in order.
    out: SendQueue,
    out_armed: bool,
    watching: bool,
    /// How long a reply may wait for room before it is queued ([`WRITE_WAIT`]).
    write_wait: Duration,
}

impl fmt::Debug for TwinSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwinSubscriber")
            .field("fd", &self.sock.as_raw_fd())
            .field("queued", &self.out.len())
            .field("watching", &self.watching)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Takes `sock` as the connection's twin socket (the fd the server sent with its VERSION
    /// reply) and returns the subscriber that serves it; it must run in the same event loop
    /// as the main subscriber (see [`ConnectionSubscriber`](super::ConnectionSubscriber)).
    ///
    /// The socket is shut down when the connection ends.
    pub(super) fn attach_twin_socket(
        self: &Arc<Self>,
        sock: UnixStream,
    ) -> Result<TwinSubscriber, Error> {
        // getsockname fails with ENOTSOCK on anything but a socket.
        sock.local_addr()
            .map_err(io_err("checking the twin socket fd"))?;
        sock.set_nonblocking(true)
            .map_err(io_err("setting the twin socket non-blocking"))?;
        // Server requests now come on the twin socket, which reports the server's hang-up:
        // the main socket leaves the event loop's view, and callers need not touch it.
        self.watch.leave_to_twin().map_err(io_err(
            "taking the main socket out of the event loop's view",
        ))?;
        let sock = Arc::new(sock);
        let on_end = Arc::clone(&sock);
        self.on_disconnect(move |_| {
            let _ = on_end.shutdown(std::net::Shutdown::Both);
        });
        let settings = &self.settings;
        Ok(TwinSubscriber {
            inner: Arc::clone(self),
            framer: Framer::new(
                TWIN_READ_SIZE,
                settings.max_recv_size,
                settings.max_recv_fds,
            ),
            sock,
            out: SendQueue::default(),
            out_armed: false,
            watching: false,
            write_wait: WRITE_WAIT,
        })
    }
}

impl TwinSubscriber {
    /// The twin socket's fd, to tell its events apart.
    pub(super) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn events(&self, out: bool) -> Events {
        let set = if out {
            TWIN_EVENTS | EventSet::OUT
        } else {
            TWIN_EVENTS
        };
        Events::new(&*self.sock, set)
    }

    pub(super) fn stop_watching(&mut self, ops: &mut EventOps) {
        if self.watching {
            let _ = ops.remove(self.events(self.out_armed));
            self.watching = false;
        }
        self.out.clear();
    }

    /// Reads and answers requests until what was read is used up (the socket is
    /// level-triggered: more data means another event, and stopping here saves the read that
    /// would only say `EAGAIN`).
    fn read(&mut self) -> Result<(), DisconnectReason> {
        loop {
            let Some(incoming) = self.framer.step(&self.sock, false, None)? else {
                return Ok(());
            };
            let reply = match incoming {
                Incoming::Message(msg) => {
                    log::debug!("recv (twin) {} fds={}", msg.header, msg.fds.len());
                    if msg.header.message_type() != Some(MessageType::Command) {
                        log::debug!(
                            "dropped unexpected message on the twin socket {}",
                            msg.header
                        );
                        continue;
                    }
                    self.inner.answer(msg, true)
                }
                Incoming::Discarded { header, why } => {
                    log::warn!("dropped message {header} on the twin socket: {why}");
                    if header.message_type() == Some(MessageType::Command) {
                        self.inner.refusal(&header)
                    } else {
                        None
                    }
                }
            };
            if let Some(out) = reply {
                self.queue(out)?;
            }
            if !self.framer.holds_data() {
                return Ok(());
            }
        }
    }

    /// Sends a reply at once if nothing waits before it, waiting briefly for room (a server
    /// reads the reply to the request it just sent: as a blocking write would, rather than
    /// through the event loop); queues what does not fit.
    fn queue(&mut self, out: Outgoing) -> Result<(), DisconnectReason> {
        log::debug!("send (twin) {}", out.header());
        if self.out.bytes() > MAX_QUEUED_BYTES {
            return Err(DisconnectReason::ProtocolViolation(
                "the server sends requests on the twin socket but does not read our replies".into(),
            ));
        }
        self.out
            .send(&self.sock, out, self.write_wait)
            .map(|_| ())
            .map_err(|e| error::io_reason(&e))
    }

    /// Writes queued replies; `Ok(true)` when the queue is empty.
    fn drain(&mut self) -> Result<bool, DisconnectReason> {
        self.out.drain(&self.sock).map_err(|e| error::io_reason(&e))
    }

    fn step(&mut self, set: EventSet) -> Result<bool, DisconnectReason> {
        if set
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            self.read()?;
        }
        self.drain()
    }
}

impl MutEventSubscriber for TwinSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        match ops.add(self.events(false)) {
            Ok(()) => self.watching = true,
            Err(e) => log::error!("cannot watch the vfio-user twin socket: {e:?}"),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if !self
            .inner
            .connected
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.stop_watching(ops);
            return;
        }
        match self.step(events.event_set()) {
            Ok(true) if self.out_armed => {
                if ops.modify(self.events(false)).is_ok() {
                    self.out_armed = false;
                }
            }
            Ok(false) if !self.out_armed => {
                if ops.modify(self.events(true)).is_ok() {
                    self.out_armed = true;
                }
            }
            Ok(_) => {}
            Err(reason) => {
                self.inner.fail(reason);
                self.stop_watching(ops);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::testing::read_msg as read_reply;
    use crate::connection::{socket, ReplyData, Responder, UnbufferedReply};
    use crate::protocol::{Command, Header};
    use std::io::{self, Write};
    use std::os::fd::OwnedFd;

    /// Echoes buffered requests, refuses DMA_WRITE, answers DMA_READ with 1 MiB of 7s sent
    /// unbuffered.
    struct TestHandler;

    struct Bulk(Vec<u8>);

    impl ReplyData for Bulk {
        fn len(&self) -> usize {
            self.0.len()
        }

        fn send(&self, sock: &UnixStream, prefix: &[&[u8]], offset: usize) -> io::Result<usize> {
            let mut parts = prefix.to_vec();
            parts.push(self.0.get(offset..).unwrap_or_default());
            socket::send_with_fds(sock, &parts, &[])
        }
    }

    impl Responder for TestHandler {
        fn handle(
            &self,
            header: &Header,
            payload: &[u8],
            _fds: Vec<OwnedFd>,
            reply: &mut Vec<u8>,
        ) -> Result<(), u32> {
            if header.known_command() == Some(Command::DmaWrite) {
                return Err(libc::EPERM as u32);
            }
            reply.extend_from_slice(payload);
            Ok(())
        }

        fn handle_unbuffered(
            &self,
            header: &Header,
            payload: &[u8],
            _fds: &[OwnedFd],
        ) -> Option<Result<UnbufferedReply, u32>> {
            (header.known_command() == Some(Command::DmaRead)).then(|| {
                Ok(UnbufferedReply {
                    head: payload.to_vec(),
                    data: Box::new(Bulk(vec![7; 1 << 20])),
                })
            })
        }
    }

    fn request(command: Command, id: u16, payload: &[u8], flags: u32) -> Vec<u8> {
        let mut h = Header::command(id, command, payload.len(), false).unwrap();
        h.flags |= flags;
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn requests_are_answered_queued_and_drained() {
        let (main, _server_main) = UnixStream::pair().unwrap();
        let settings = super::super::Settings {
            max_recv_size: 4096,
            ..Default::default()
        };
        let (inner, _sub) = Inner::new(main, settings).unwrap();
        inner.set_request_handler(Some(Arc::new(TestHandler)));
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut twin = inner.attach_twin_socket(ours).unwrap();
        assert!(format!("{twin:?}").contains("TwinSubscriber"));
        twin.write_wait = Duration::ZERO;

        // A reply that does not fit waits in the queue until the server reads.
        theirs
            .write_all(&request(Command::DmaRead, 1, &[1; 16], 0))
            .unwrap();
        assert_eq!(twin.step(EventSet::IN), Ok(false));
        assert_eq!(twin.out.len(), 1);
        let mut reader = theirs.try_clone().unwrap();
        let t = std::thread::spawn(move || read_reply(&mut reader));
        while !twin.step(EventSet::OUT).unwrap() {
            crate::connection::socket::poll_fd(twin.sock.as_raw_fd(), true, -1).unwrap();
        }
        let (h, body) = t.join().unwrap();
        assert_eq!((h.id, h.is_error(), body.len()), (1, false, 16 + (1 << 20)));
        assert!(body[16..].iter().all(|&b| b == 7));
        assert_eq!(twin.out.bytes(), 0);

        // A reply (not a request) is dropped; No_reply requests get no answer; other
        // failures get their errno.
        let mut stray = request(Command::DmaRead, 2, &[], 0);
        stray[8] = 1;
        theirs.write_all(&stray).unwrap();
        theirs
            .write_all(&request(
                Command::RegionRead,
                3,
                &[3; 4],
                crate::protocol::Header::FLAG_NO_REPLY,
            ))
            .unwrap();
        theirs
            .write_all(&request(Command::DmaWrite, 4, &[4; 20], 0))
            .unwrap();
        let mut unknown = request(Command::DmaRead, 5, &[], 0);
        unknown[2..4].copy_from_slice(&99u16.to_ne_bytes());
        theirs.write_all(&unknown).unwrap();
        theirs
            .write_all(&request(Command::RegionWrite, 6, &vec![6; 8000], 0))
            .unwrap();
        theirs
            .write_all(&request(Command::RegionRead, 7, &[7; 4], 0))
            .unwrap();
        let mut replies = Vec::new();
        while replies.len() < 4 {
            assert!(twin.step(EventSet::IN).unwrap());
            if crate::connection::socket::poll_fd(theirs.as_raw_fd(), false, 0).unwrap() {
                replies.push(read_reply(&mut theirs));
            } else {
                crate::connection::socket::poll_fd(twin.sock.as_raw_fd(), false, -1).unwrap();
            }
        }
        let summary: Vec<(u16, u32)> = replies.iter().map(|(h, _)| (h.id, h.error)).collect();
        assert_eq!(
            summary,
            vec![
                (4, libc::EPERM as u32),
                (5, libc::ENOSYS as u32),
                (6, libc::E2BIG as u32),
                (7, 0)
            ]
        );
        assert_eq!(replies[3].1, vec![7; 4]);

        // The server hanging up ends the connection.
        drop(theirs);
        assert_eq!(twin.step(EventSet::IN), Err(DisconnectReason::PeerClosed));
        let sub = super::super::ConnectionSubscriber::new(_sub, Some(twin));
        assert!(format!("{sub:?}").contains("twin: Some"));
        let reply = UnbufferedReply {
            head: vec![1],
            data: Box::new(Bulk(vec![])),
        };
        assert_eq!(reply.data.len(), 0);
        assert!(format!("{reply:?}").contains("data_len: 0"));
    }
}
