// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Running a server on a thread, stopping it, and looking inside it from a test.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vfio_user_client::protocol::Command;
use vmm_sys_util::tempdir::TempDir;

use crate::config::{MigrationConfig, ServerConfig};
use crate::conn::{lock, serve};
use crate::device::{Device, Errno};
use crate::dma::{DmaMapInfo, DmaTable, Segment};
use crate::irq::{IrqTable, IrqVectorState};
use crate::migration::{log_write, DirtyLog, MigrationState};

/// What the client sent in VERSION, as the server understood it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// Proposed major version.
    pub major: u16,
    /// Proposed minor version.
    pub minor: u16,
    /// The capability JSON without its NUL, if any was sent.
    pub json: Option<String>,
    /// The client's `max_msg_fds` (1 when absent).
    pub max_msg_fds: u64,
    /// The client's `max_data_xfer_size` (1 MiB when absent).
    pub max_data_xfer_size: u64,
    /// Twin-socket mode was granted: the server's DMA requests go over a second socket.
    pub twin_socket: bool,
}

#[derive(Debug, Default)]
struct Status {
    connections: u64,
    disconnects: u64,
    commands: u64,
    client: Option<ClientInfo>,
    paused: bool,
    /// The connection thread holds a message at the pause.
    holding: bool,
    /// Commands to refuse: (command, errno, how many more times).
    failures: Vec<(Command, Errno, u32)>,
    /// The last [`RECENT_COMMANDS`] known commands received.
    recent: VecDeque<Command>,
}

/// How many of the last commands a probe can list.
const RECENT_COMMANDS: usize = 64;

/// Server state shared by the connection thread, the handle and probes.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) device: Mutex<Box<dyn Device>>,
    pub(crate) dma: Mutex<DmaTable>,
    pub(crate) irqs: Mutex<IrqTable>,
    pub(crate) migration: Mutex<MigrationState>,
    pub(crate) dirty: Mutex<Option<DirtyLog>>,
    /// The device can move its state (asked once, at construction).
    migratable: bool,
    status: Mutex<Status>,
    changed: Condvar,
}

impl Shared {
    /// The migration configuration, when migration is offered for this device.
    pub(crate) fn migration_config(&self) -> Option<&MigrationConfig> {
        self.config.migration.as_ref().filter(|_| self.migratable)
    }

    pub(crate) fn connection_started(&self) {
        let mut s = lock(&self.status);
        s.connections += 1;
        s.client = None;
        self.changed.notify_all();
    }

    pub(crate) fn connection_ended(&self) {
        lock(&self.status).disconnects += 1;
        self.changed.notify_all();
    }

    pub(crate) fn command_seen(&self, command: Option<Command>) {
        let mut status = lock(&self.status);
        status.commands += 1;
        if let Some(c) = command {
            if status.recent.len() == RECENT_COMMANDS {
                status.recent.pop_front();
            }
            status.recent.push_back(c);
        }
    }

    pub(crate) fn set_client(&self, client: ClientInfo) {
        lock(&self.status).client = Some(client);
        self.changed.notify_all();
    }

    /// Blocks the connection thread while a probe has the server paused.
    pub(crate) fn wait_while_paused(&self) {
        let mut status = lock(&self.status);
        if !status.paused {
            return;
        }
        status.holding = true;
        self.changed.notify_all();
        while status.paused {
            status = self.changed.wait(status).unwrap_or_else(|e| e.into_inner());
        }
        status.holding = false;
    }

    /// The errno to refuse `command` with, if a probe asked for that (counting it down).
    pub(crate) fn injected_failure(&self, command: Command) -> Option<Errno> {
        let mut status = lock(&self.status);
        let (_, errno, left) = status
            .failures
            .iter_mut()
            .find(|(c, _, left)| *c == command && *left > 0)?;
        *left -= 1;
        Some(*errno)
    }

    fn set_paused(&self, paused: bool) {
        lock(&self.status).paused = paused;
        self.changed.notify_all();
    }
}

/// A vfio-user server for one device.
pub struct Server {
    shared: Arc<Shared>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server for `device`. The device outlives connections: a client that reconnects
    /// finds its state (after the reset that follows every disconnect, as in libvfio-user).
    pub fn new(config: ServerConfig, device: Box<dyn Device>) -> Server {
        let migratable = device.migratable();
        Server {
            shared: Arc::new(Shared {
                config,
                device: Mutex::new(device),
                dma: Mutex::new(DmaTable::default()),
                irqs: Mutex::new(IrqTable::default()),
                migration: Mutex::new(MigrationState::default()),
                dirty: Mutex::new(None),
                migratable,
                status: Mutex::new(Status::default()),
                changed: Condvar::new(),
            }),
        }
    }

    /// A probe into this server's state.
    pub fn probe(&self) -> Probe {
        Probe {
            shared: self.shared.clone(),
        }
    }

    /// Serves the single client on `stream` (e.g. one end of `UnixStream::pair()`) on a new
    /// thread, until the client disconnects or the handle stops it.
    pub fn serve_stream(self, stream: UnixStream) -> ServerHandle {
        let stop = Arc::new(StopState::default());
        let shared = self.shared.clone();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vfio-user-server".into())
            .spawn(move || {
                if stop2.register(&stream) {
                    serve(&shared, stream);
                    lock(&stop2.inner).active = None;
                }
            })
            .ok();
        ServerHandle {
            shared: self.shared,
            stop,
            thread,
            path: None,
            _dir: None,
        }
    }

    /// Listens on a new socket at `path` and serves one client at a time on a new thread,
    /// accepting the next client after each disconnect. `path` must not exist.
    pub fn listen(self, path: impl AsRef<Path>) -> io::Result<ServerHandle> {
        self.listen_inner(path.as_ref().to_path_buf(), None)
    }

    /// Like [`Server::listen`], on a socket in a new temporary directory that is removed
    /// when the server stops; see [`ServerHandle::socket_path`].
    pub fn listen_temp(self) -> io::Result<ServerHandle> {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vfio-user-sample-"))
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        let path = dir.as_path().join("sock");
        self.listen_inner(path, Some(dir))
    }

    fn listen_inner(self, path: PathBuf, dir: Option<TempDir>) -> io::Result<ServerHandle> {
        let listener = UnixListener::bind(&path)?;
        let stop = Arc::new(StopState::default());
        let shared = self.shared.clone();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vfio-user-listener".into())
            .spawn(move || accept_loop(&shared, &listener, &stop2))?;
        Ok(ServerHandle {
            shared: self.shared,
            stop,
            thread: Some(thread),
            path: Some(path),
            _dir: dir,
        })
    }
}

fn accept_loop(shared: &Shared, listener: &UnixListener, stop: &StopState) {
    loop {
        if lock(&stop.inner).stopping {
            return;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("accept: {e}");
                return;
            }
        };
        if !stop.register(&stream) {
            return;
        }
        serve(shared, stream);
        lock(&stop.inner).active = None;
    }
}

#[derive(Debug, Default)]
struct StopInner {
    stopping: bool,
    active: Option<UnixStream>,
}

#[derive(Debug, Default)]
struct StopState {
    inner: Mutex<StopInner>,
}

impl StopState {
    /// Records the connection being served so that a stop can shut it down; `false` if the
    /// server is stopping.
    fn register(&self, stream: &UnixStream) -> bool {
        let mut inner = lock(&self.inner);
        if inner.stopping {
            return false;
        }
        inner.active = stream.try_clone().ok();
        true
    }
}

/// A running server; dropping it stops the server.
pub struct ServerHandle {
    shared: Arc<Shared>,
    stop: Arc<StopState>,
    thread: Option<JoinHandle<()>>,
    path: Option<PathBuf>,
    _dir: Option<TempDir>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The listening socket's path (`None` for [`Server::serve_stream`]).
    pub fn socket_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A probe into the server's state.
    pub fn probe(&self) -> Probe {
        Probe {
            shared: self.shared.clone(),
        }
    }

    /// Stops the server: shuts down the current connection (the device is reset as on any
    /// disconnect), stops accepting, joins the thread and removes the socket.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    /// Waits for the server thread to finish without stopping it: for
    /// [`Server::serve_stream`] that is when the client disconnects; a listening server runs
    /// until stopped.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.set_paused(false);
        {
            let mut inner = lock(&self.stop.inner);
            inner.stopping = true;
            if let Some(s) = inner.active.take() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        if let Some(path) = &self.path {
            // Wakes the accept loop; it sees `stopping` and returns.
            let _ = UnixStream::connect(path);
        }
        let _ = thread.join();
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A test's view into a server: raise interrupts, list DMA windows, see what the client
/// negotiated, wait for disconnects. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Probe {
    shared: Arc<Shared>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

impl Probe {
    /// Raises `vector` of IRQ type `index` as the device would: `Ok(true)` when an eventfd
    /// was signalled, `Ok(false)` when none is attached (or the vector is masked, which
    /// leaves it pending), `EINVAL` for a vector the device does not have or when no client
    /// is connected.
    pub fn raise_irq(&self, index: u32, vector: u32) -> Result<bool, Errno> {
        lock(&self.shared.irqs).raise(index, vector)
    }

    /// Holds (`true`) or releases the line of `vector` of IRQ type `index`, as a device
    /// with a level-triggered interrupt condition (INTx) does. Raising a released line
    /// signals it as [`Probe::raise_irq`] does; while it is held, every unmask signals it
    /// again, and so does attaching a trigger eventfd. Releasing it withdraws a signal left
    /// pending.
    ///
    /// INTx is level-triggered as the kernel's vfio-pci and QEMU serve it: a server that
    /// masks INTx ([`IrqMasking::Implemented`](crate::IrqMasking::Implemented) or
    /// [`IrqMasking::Rejected`](crate::IrqMasking::Rejected)) masks it when it signals it
    /// (auto-mask), so the client's UNMASK, the guest's end of interrupt, comes before the
    /// next signal.
    pub fn set_irq_level(&self, index: u32, vector: u32, level: bool) -> Result<bool, Errno> {
        lock(&self.shared.irqs).set_level(index, vector, level)
    }

    /// The state of every vector of IRQ type `index` (empty when no client is connected).
    pub fn irq_state(&self, index: u32) -> Vec<IrqVectorState> {
        lock(&self.shared.irqs).states(index)
    }

    /// The DMA windows the client mapped, by address.
    pub fn dma_maps(&self) -> Vec<DmaMapInfo> {
        lock(&self.shared.dma).list()
    }

    /// Number of DMA windows mapped.
    pub fn dma_map_count(&self) -> usize {
        lock(&self.shared.dma).len()
    }

    /// Reads guest memory at `address` as the server sees it, through fd-backed windows
    /// (their mmap or file): `EFAULT` outside every window, `EPERM` without READ access,
    /// `EOPNOTSUPP` for a window without an fd (only the connection thread can send
    /// DMA_READ; ring the DMA engine to go through messages).
    pub fn dma_read(&self, address: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let table = lock(&self.shared.dma);
        let mut done = 0;
        while done < buf.len() {
            let at = address.checked_add(done as u64).ok_or(Errno::FAULT)?;
            match table.read(at, &mut buf[done..])? {
                Segment::Done(n) => done += n,
                Segment::Message(_) => return Err(Errno(libc::EOPNOTSUPP)),
            }
        }
        Ok(())
    }

    /// Writes guest memory at `address` as the server would, through fd-backed windows;
    /// errors as [`Probe::dma_read`] (`EPERM` without WRITE access). DMA logging sees the
    /// write as the device's.
    pub fn dma_write(&self, address: u64, data: &[u8]) -> Result<(), Errno> {
        log_write(&self.shared.dirty, address, data.len());
        let table = lock(&self.shared.dma);
        let mut done = 0;
        while done < data.len() {
            let at = address.checked_add(done as u64).ok_or(Errno::FAULT)?;
            match table.write(at, &data[done..])? {
                Segment::Done(n) => done += n,
                Segment::Message(_) => return Err(Errno(libc::EOPNOTSUPP)),
            }
        }
        Ok(())
    }

    /// The device's migration state (RUNNING when the server offers no migration).
    pub fn migration_state(&self) -> vfio_user_client::protocol::DeviceState {
        lock(&self.shared.migration).state()
    }

    /// Whether DMA logging is on.
    pub fn dma_logging(&self) -> bool {
        lock(&self.shared.dirty).is_some()
    }

    /// What the current (or last) client sent in VERSION; `None` before a valid VERSION.
    pub fn client(&self) -> Option<ClientInfo> {
        lock(&self.shared.status).client.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        lock(&self.shared.status).connections
    }

    /// Connections that ended so far (the server's cleanup after each is complete).
    pub fn disconnects(&self) -> u64 {
        lock(&self.shared.status).disconnects
    }

    /// The last commands received (at most 64, oldest first), over all connections.
    pub fn recent_commands(&self) -> Vec<Command> {
        lock(&self.shared.status).recent.iter().copied().collect()
    }

    /// Commands received so far, over all connections.
    pub fn commands(&self) -> u64 {
        lock(&self.shared.status).commands
    }

    /// Stops handling messages: the server keeps what it reads but answers nothing until
    /// [`Probe::resume`] (or until it is stopped), as a server busy in a long device call
    /// would. The message being handled, if any, completes.
    pub fn pause(&self) {
        self.shared.set_paused(true);
    }

    /// Refuses the next `times` `command` messages with `errno` once they pass VERSION (the
    /// message is read and answered with an error reply, nothing else happens). Adds to
    /// the failures already asked for.
    pub fn fail_next(&self, command: Command, errno: Errno, times: u32) {
        lock(&self.shared.status)
            .failures
            .push((command, errno, times));
    }

    /// Waits until the paused server holds a message it has read and not answered; `false`
    /// on timeout.
    pub fn wait_holding(&self, timeout: Duration) -> bool {
        self.wait_status(timeout, |s| s.holding)
    }

    /// Handles messages again after [`Probe::pause`], in the order they arrived.
    pub fn resume(&self) {
        self.shared.set_paused(false);
    }

    /// Waits until at least `n` connections have ended; `false` on timeout.
    pub fn wait_disconnects(&self, n: u64, timeout: Duration) -> bool {
        self.wait_status(timeout, |s| s.disconnects >= n)
    }

    fn wait_status(&self, timeout: Duration, done: impl Fn(&Status) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut status = lock(&self.shared.status);
        while !done(&status) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            status = self
                .shared
                .changed
                .wait_timeout(status, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}
