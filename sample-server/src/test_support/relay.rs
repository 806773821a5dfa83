// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A relay between a client and a real sample server that breaks what passes on purpose.
//!
//! It comes in two forms. [`Relay`] faults one chosen reply of a pipelined conversation;
//! [`serve_in_step`] handles one request at a time and lets hooks decide each request's
//! fate ([`Step`]: forward, refuse with an errno, hang up, swallow) and edit its reply.
//!
//! [`Relay::start`] listens on a socket path and serves one client: everything the client
//! sends goes to the server unchanged (with its fds), everything the server sends comes
//! back unchanged, except the reply named by the [`Injection`], which suffers its
//! [`Fault`]: cut short by the end of the stream, a wrong id or command, the Error flag, a
//! payload too long or too short, fds nobody asked for, silence, or lateness.
//! [`Relay::finish`] waits for both sides to end and returns the [`Log`] of the replies that
//! passed, so that a test can first record a clean run and then aim at any reply of it.
//!
//! The two directions run on threads of their own: requests may be pipelined and the
//! server's own commands (DMA_READ, DMA_WRITE) pass as they come. Only replies are
//! counted and faulted. The relay and the server run in the test's process; once
//! [`Relay::finish`] returns, every fd either of them held is closed, so a test can count
//! the process's fds around a case.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vfio_user_client::protocol::{Command, Header};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

use crate::test_support::script::PATIENCE;
use crate::wire::{RawEndpoint, RawMsg};
use crate::Server;

/// What happens to the faulted reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The first `n` bytes of the message (header included) are sent, then the relay closes
    /// both sides: the server died mid-reply.
    EofAt(usize),
    /// The id is changed to one the client never used.
    WrongId,
    /// The command is changed to another valid command.
    WrongCommand,
    /// The reply becomes a header-only error reply carrying this errno (0 included).
    ErrorFlag(u32),
    /// `n` zero bytes are appended to the payload.
    Oversize(usize),
    /// The payload loses its last `n` bytes (all of them if it is shorter).
    Undersize(usize),
    /// `n` eventfds nobody asked for come with the reply.
    StrayFds(usize),
    /// The reply is dropped; the relay goes on.
    Silence,
    /// The reply is held this long, then sent unchanged (so is everything the server sends
    /// meanwhile): a server that answers after the client's deadline.
    Late(Duration),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::EofAt(n) => write!(f, "EOF after {n} bytes"),
            Fault::WrongId => f.write_str("wrong id"),
            Fault::WrongCommand => f.write_str("wrong command"),
            Fault::ErrorFlag(errno) => write!(f, "Error flag, errno {errno}"),
            Fault::Oversize(n) => write!(f, "{n} bytes too many"),
            Fault::Undersize(n) => write!(f, "{n} bytes too few"),
            Fault::StrayFds(n) => write!(f, "{n} stray fds"),
            Fault::Silence => f.write_str("silence"),
            Fault::Late(d) => write!(f, "late by {d:?}"),
        }
    }
}

/// Which reply to fault, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// The command the reply answers.
    pub command: Command,
    /// Which reply to that command, counting from 0 in the order they pass.
    pub nth: usize,
    /// What happens to it.
    pub fault: Fault,
}

/// One reply that passed the relay (or was faulted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Passed {
    /// The command number the server's reply carried.
    pub command: u16,
    /// Which reply to that command it was, counting from 0.
    pub nth: usize,
    /// Its size in bytes, header included, as the server sent it.
    pub size: usize,
    /// Whether the server sent it with the Error flag.
    pub error: bool,
}

/// What passed the relay.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Every reply from the server, in order (the faulted one included).
    pub replies: Vec<Passed>,
    /// The reply the injection hit, if it came.
    pub faulted: Option<Passed>,
}

/// A relay serving one client; see the [module docs](self).
#[derive(Debug)]
pub struct Relay {
    path: PathBuf,
    log: Arc<Mutex<Log>>,
    accepted: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

impl Relay {
    /// Listens on a socket in a new temporary directory; the first client to connect is
    /// served by `server` (on a socket pair) through the relay, with `injection` applied.
    pub fn start(server: Server, injection: Option<Injection>) -> Relay {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vfio-user-relay-"))
            .expect("temporary directory");
        let path = dir.as_path().join("sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let log = Arc::new(Mutex::new(Log::default()));
        let accepted = Arc::new(AtomicBool::new(false));
        let (log2, accepted2) = (log.clone(), accepted.clone());
        let thread = thread::Builder::new()
            .name("vfio-user-relay".into())
            .spawn(move || {
                let Ok((client, _)) = listener.accept() else {
                    return;
                };
                accepted2.store(true, Ordering::SeqCst);
                drop(listener);
                serve(server, client, injection, &log2);
            })
            .expect("relay thread");
        Relay {
            path,
            log,
            accepted,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Where the relay listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The replies that passed so far.
    pub fn log(&self) -> Log {
        lock(&self.log).clone()
    }

    /// Waits until the client and the server are gone (the client must have closed its
    /// connection, or the relay must have closed it on an EOF fault) and returns the log.
    pub fn finish(mut self) -> Log {
        self.stop();
        self.log()
    }

    fn stop(&mut self) {
        if !self.accepted.load(Ordering::SeqCst) {
            // Nobody connected: wake the accept with a client that leaves at once.
            drop(UnixStream::connect(&self.path));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Relays between `client` and `server` until either side ends.
fn serve(server: Server, client: UnixStream, injection: Option<Injection>, log: &Mutex<Log>) {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let handle = server.serve_stream(theirs);
    let (Ok(client_up), Ok(ours_up)) = (client.try_clone(), ours.try_clone()) else {
        return;
    };
    let up = thread::Builder::new()
        .name("vfio-user-relay-up".into())
        .spawn(move || forward_requests(client_up, ours_up))
        .expect("relay thread");
    forward_replies(ours, client, injection, log);
    let _ = up.join();
    handle.join();
}

/// The endpoint's fds as raw numbers.
fn raw_fds(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}

/// Client to server, untouched, until the client leaves; then the server is told.
fn forward_requests(client: UnixStream, server: UnixStream) {
    let mut from = RawEndpoint::new(client, Duration::MAX);
    let mut to = RawEndpoint::new(server, Duration::MAX);
    while let Ok(m) = from.recv() {
        if to
            .send_message(&m.header, &m.payload, &raw_fds(&m.fds))
            .is_err()
        {
            break;
        }
    }
    let _ = to.socket().shutdown(std::net::Shutdown::Both);
    let _ = from.socket().shutdown(std::net::Shutdown::Both);
}

/// Server to client, faulting the injected reply, until the server leaves (or the relay
/// closes both sides on an EOF fault).
fn forward_replies(
    server: UnixStream,
    client: UnixStream,
    injection: Option<Injection>,
    log: &Mutex<Log>,
) {
    let mut from = RawEndpoint::new(server, Duration::MAX);
    let mut to = RawEndpoint::new(client, Duration::MAX);
    let mut counts: HashMap<u16, usize> = HashMap::new();
    while let Ok(m) = from.recv() {
        if !(m.is_reply() || m.is_error()) {
            // The server's own command.
            if to
                .send_message(&m.header, &m.payload, &raw_fds(&m.fds))
                .is_err()
            {
                break;
            }
            continue;
        }
        let command = m.header.command;
        let nth = counts.entry(command).or_default();
        let passed = Passed {
            command,
            nth: *nth,
            size: Header::SIZE + m.payload.len(),
            error: m.is_error(),
        };
        *nth += 1;
        let hit = injection.filter(|i| i.command as u16 == command && i.nth == passed.nth);
        {
            let mut log = lock(log);
            log.replies.push(passed);
            if hit.is_some() {
                log.faulted = Some(passed);
            }
        }
        let sent = match hit {
            Some(i) => apply(i.fault, m, &mut to),
            None => to
                .send_message(&m.header, &m.payload, &raw_fds(&m.fds))
                .map(|()| true),
        };
        if !matches!(sent, Ok(true)) {
            break;
        }
    }
    let _ = to.socket().shutdown(std::net::Shutdown::Both);
    let _ = from.socket().shutdown(std::net::Shutdown::Both);
}

/// Another valid command than `command`.
fn other_command(command: u16) -> u16 {
    if command == Command::RegionRead as u16 {
        Command::RegionWrite as u16
    } else {
        Command::RegionRead as u16
    }
}

/// Sends `m` with `fault` applied; `Ok(false)` when the relay is to close both sides.
fn apply(fault: Fault, mut m: RawMsg, to: &mut RawEndpoint) -> std::io::Result<bool> {
    let mut extra = Vec::new();
    match fault {
        Fault::EofAt(n) => {
            let mut bytes = m.header.to_bytes().to_vec();
            bytes.extend_from_slice(&m.payload);
            bytes.truncate(n);
            if !bytes.is_empty() {
                to.send_bytes(&bytes, &raw_fds(&m.fds))?;
            }
            return Ok(false);
        }
        Fault::Silence => return Ok(true),
        Fault::Late(delay) => thread::sleep(delay),
        Fault::WrongId => m.header.id ^= 0x8000,
        Fault::WrongCommand => m.header.command = other_command(m.header.command),
        Fault::ErrorFlag(errno) => {
            m.header.flags |= Header::FLAG_ERROR;
            m.header.error = errno;
            m.payload.clear();
            m.fds.clear();
        }
        Fault::Oversize(n) => m.payload.resize(m.payload.len() + n, 0),
        Fault::Undersize(n) => m.payload.truncate(m.payload.len().saturating_sub(n)),
        Fault::StrayFds(n) => {
            extra = (0..n)
                .map(|_| EventFd::new(0).expect("eventfd"))
                .collect::<Vec<_>>();
        }
    }
    m.header.size = u32::try_from(Header::SIZE + m.payload.len()).expect("message size");
    let mut fds = raw_fds(&m.fds);
    fds.extend(extra.iter().map(AsRawFd::as_raw_fd));
    to.send_message(&m.header, &m.payload, &fds)?;
    Ok(true)
}

/// What [`serve_in_step`] does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Forward it, and pass its reply back.
    Forward,
    /// Answer it with an error reply carrying this errno, without forwarding it.
    Refuse(u32),
    /// Close the connection instead (the server died).
    HangUp,
    /// Read it and never answer (the server hangs).
    Swallow,
}

/// Serves `client` with `server` behind a relay that handles one message at a time, in
/// order, as a server does: `on_request` decides the fate of each request; a forwarded
/// request (with its fds) has its reply (with its fds) passed to `on_reply`, which may edit
/// it (the header's size is then set to the edited payload's), and sent back before the
/// next request is read. Replies to `No_reply` commands are not waited for. Returns when
/// either side ends or a hook hangs up; the server is stopped by then.
pub fn serve_in_step(
    server: Server,
    client: UnixStream,
    on_request: impl FnMut(&RawMsg) -> Step,
    on_reply: impl FnMut(&RawMsg, &mut RawMsg),
) {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let handle = server.serve_stream(theirs);
    let mut server = RawEndpoint::new(ours, PATIENCE);
    let mut client = RawEndpoint::new(client, PATIENCE);
    step(&mut client, &mut server, on_request, on_reply);
    drop(client);
    drop(server);
    handle.stop();
}

/// The loop of [`serve_in_step`].
fn step(
    client: &mut RawEndpoint,
    server: &mut RawEndpoint,
    mut on_request: impl FnMut(&RawMsg) -> Step,
    mut on_reply: impl FnMut(&RawMsg, &mut RawMsg),
) {
    while let Ok(request) = client.recv() {
        let h = request.header;
        match on_request(&request) {
            Step::HangUp => return,
            Step::Refuse(errno) => {
                if !h.no_reply() && client.reply_error(&h, errno).is_err() {
                    return;
                }
                continue;
            }
            Step::Swallow => continue,
            Step::Forward => {}
        }
        if server
            .send_message(&h, &request.payload, &raw_fds(&request.fds))
            .is_err()
        {
            return;
        }
        if h.no_reply() {
            continue;
        }
        let Ok(mut reply) = server.recv() else { return };
        on_reply(&request, &mut reply);
        reply.header.size = u32::try_from(Header::SIZE + reply.payload.len()).expect("size");
        if client
            .send_message(&reply.header, &reply.payload, &raw_fds(&reply.fds))
            .is_err()
        {
            return;
        }
    }
}
