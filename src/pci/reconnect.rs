// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reconnect and restore: the owner's policy, the connection states, and the supervisor
//! thread that brings a device back after its server restarted.
//!
//! # States
//!
//! ```text
//!            disconnect (policy set)           restored
//! Connected ------------------------> Reconnecting ---------> Connected
//!     |                                   |  \
//!     | disconnect (no policy)            |   `-- deadline passed, or a different
//!     v                                   v       device: Lost (for good)
//!   Lost <--------------------------------'
//! ```
//!
//! Each change signals [`VfioUserPciDevice::state_event`](super::VfioUserPciDevice::state_event).
//! While reconnecting, guest accesses do not reach the server and never wait for the
//! supervisor: reads answer all ones, writes are dropped, each is counted
//! ([`dropped_accesses`](super::VfioUserPciDevice::dropped_accesses)) and logged
//! (rate-limited: the 1st, 2nd, 4th, 8th... of each kind).
//!
//! # The supervisor
//!
//! A thread per device, started at attach only when [`AttachOptions::reconnect`] is set
//! (reconnecting blocks, and the event loop may be the VMM's, shared with other devices).
//! The disconnect callback marks the device reconnecting and wakes it. Each attempt:
//!
//! 1. connects to the path the policy gives and negotiates;
//! 2. discovers the device and checks its [`DeviceIdentity`]
//!    (device info, region layout, IRQ counts, config-space identity): a different device
//!    ends reconnecting at once ([`Error::DifferentDevice`], lost);
//! 3. hands the new connection's subscriber to the device's
//!    [`PciSubscriber`](super::PciSubscriber) (an eventfd wakes it on its event loop, where
//!    it moves its registrations);
//! 4. takes the device's lock, and decides whether the server kept the device's state:
//!    **the rule** is that a server whose command register (I/O, memory, bus master and
//!    INTx disable bits) differs from the one the guest last wrote restarted empty (a
//!    fresh server comes up with decoding off; a guest that drives the device has it on);
//!    it is then reset (DEVICE_RESET, when it supports reset) and the owner learns it as
//!    [`Reconnected::Restarted`]; otherwise [`Reconnected::Resumed`];
//! 5. replays the DMA mapping table (same windows, same fds), swaps the new connection in,
//!    replays the PCI state (see [`state`](super::state): interrupt eventfds, masks,
//!    command register, MSI / MSI-X enables), maps guest memory that was hot-plugged
//!    meanwhile and, with managed slots, installs the new server's slots and doorbells;
//! 6. marks the device connected.
//!
//! A failed attempt is retried after a backoff (doubling from
//! [`ReconnectPolicy::initial_backoff`] up to [`ReconnectPolicy::max_backoff`]) until
//! [`ReconnectPolicy::give_up_after`] has passed since the disconnect; then the device is
//! lost ([`Error::GaveUp`], [`VfioUserPciDevice::event`](super::VfioUserPciDevice::event)).
//! Detach and drop stop the supervisor (waiting for an attempt under way, at most its
//! connect and reply timeouts).
//!
//! Memory slots and REGION_IO_FDS: the new server maps the BARs' areas anew and hands out
//! ioeventfds of its own. With [`manage_slots`](super::VfioUserPciDevice::manage_slots)
//! this happens automatically: the supervisor withdraws the VMM's slots and doorbells as
//! soon as it is woken (guest accesses there then exit, and are dropped like the others),
//! and at the end of step 5 asks the new server for its ioeventfds (DEVICE_GET_REGION_IO_FDS)
//! and installs the new mappings and doorbells at the BARs' bases, with no call from the
//! VMM. Without it, that is the VMM's job: after [`ConnectionState::Connected`] it asks
//! [`VfioUserDevice::region_io_fds`](crate::device::VfioUserDevice::region_io_fds) of the
//! new [`device`](super::VfioUserPciDevice::device) again and refreshes its slots from
//! [`bar_mappings`](super::VfioUserPciDevice::bar_mappings) (the old mappings stay until
//! the next reconnect, so its slots stay backed meanwhile).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::attach::{connect_error, discover, watch_loss};
use super::config::{COMMAND_INTX_DISABLE, COMMAND_IO, COMMAND_MEMORY};
use super::state::DeviceIdentity;
use super::status::DeviceStatus;
use super::subscriber::SubscriberSwap;
use super::{Activity, AttachOptions, Core, Error};
use crate::connection::{ConnectOptions, Connection};
use crate::device::{DeviceOptions, VfioUserDevice};
use crate::sync::lock;

/// Bus master enable: part of the command register bits compared after a reconnect.
const COMMAND_BUS_MASTER: u16 = 1 << 2;

/// The state of a device's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectionState {
    /// Guest accesses reach the server.
    Connected = 0,
    /// The connection was lost and the supervisor is bringing it back: guest reads answer
    /// all ones and writes are dropped (both counted).
    Reconnecting = 1,
    /// The connection is gone for good (no policy, the policy's deadline passed, or the
    /// server came back as another device).
    Lost = 2,
}

impl ConnectionState {
    pub(super) fn from_u8(v: u8) -> ConnectionState {
        match v {
            0 => ConnectionState::Connected,
            1 => ConnectionState::Reconnecting,
            _ => ConnectionState::Lost,
        }
    }
}

/// How a reconnect found the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconnected {
    /// The server kept the device's state (its command register matched the guest's): the
    /// client's state was replayed, the device was not reset.
    Resumed,
    /// The server restarted empty: the device was reset (`reset`: DEVICE_RESET was sent; a
    /// device without reset is left as the server started it) and the client's state
    /// replayed. What the device held itself (its registers behind the BARs, its queues) is
    /// gone: the guest's driver has to set it up again.
    Restarted {
        /// DEVICE_RESET was sent.
        reset: bool,
    },
}

/// How a device reconnects when its connection is lost: after a disconnect the device is
/// [`ConnectionState::Reconnecting`] while a supervisor thread connects again, checks that
/// the server offers the same device, replays the DMA mappings, interrupt eventfds and PCI
/// state, and reports how it found the server ([`Reconnected`]).
///
/// ```
/// use std::time::Duration;
///
/// use vfio_user_client::pci::ReconnectPolicy;
/// use vfio_user_client::AttachOptions;
///
/// let options = AttachOptions {
///     reconnect: Some(ReconnectPolicy {
///         give_up_after: Duration::from_secs(60),
///         ..ReconnectPolicy::new("/run/vfio-user/nvme0.sock")
///     }),
///     ..AttachOptions::default()
/// };
/// # assert!(options.reconnect.is_some());
/// ```
#[derive(Clone)]
pub struct ReconnectPolicy {
    /// The path of the server's socket, asked before every attempt; `None` skips the attempt
    /// (the server is not there yet).
    pub socket: SocketPath,
    /// The wait after the first failed attempt (default 10 ms); it doubles after each.
    pub initial_backoff: Duration,
    /// The longest wait between attempts (default 1 s).
    pub max_backoff: Duration,
    /// Reconnecting gives up this long after the disconnect (default 30 s).
    pub give_up_after: Duration,
}

/// Where a reconnect finds the server's socket ([`ReconnectPolicy::socket`]).
type SocketPath = Arc<dyn Fn() -> Option<PathBuf> + Send + Sync>;

impl ReconnectPolicy {
    /// A policy reconnecting to `path`, with the default backoff and deadline.
    pub fn new(path: impl Into<PathBuf>) -> ReconnectPolicy {
        let path = path.into();
        ReconnectPolicy::with_socket(move || Some(path.clone()))
    }

    /// A policy that asks `socket` for the server's socket path before every attempt
    /// (`None` skips the attempt: the server is not there yet), with the default backoff and
    /// deadline.
    pub fn with_socket(
        socket: impl Fn() -> Option<PathBuf> + Send + Sync + 'static,
    ) -> ReconnectPolicy {
        ReconnectPolicy {
            socket: Arc::new(socket),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            give_up_after: Duration::from_secs(30),
        }
    }

    fn path(&self) -> Option<PathBuf> {
        (self.socket)()
    }
}

impl fmt::Debug for ReconnectPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectPolicy")
            .field("socket", &format_args!(".."))
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("give_up_after", &self.give_up_after)
            .finish()
    }
}

/// What wakes the supervisor.
#[derive(Debug)]
pub(super) enum Wake {
    /// The connection was lost.
    Disconnected,
    /// The device is detached or dropped.
    Stop,
}

/// The reconnect supervisor of one device.
pub(super) struct Supervisor {
    wake: Sender<Wake>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    pub(super) fn start(
        policy: ReconnectPolicy,
        options: &AttachOptions,
        core: Arc<Mutex<Core>>,
        status: Arc<DeviceStatus>,
        swap: Arc<SubscriberSwap>,
    ) -> Result<Supervisor, Error> {
        let identity = lock(&core).identity.clone();
        let (wake, waiting) = mpsc::channel();
        let context = Context {
            policy,
            connect: options.connect.clone(),
            device: options.device.clone(),
            identity,
            core,
            status: Arc::clone(&status),
            swap,
        };
        let thread = std::thread::Builder::new()
            .name("vfio-user-reconnect".into())
            .spawn(move || context.run(&waiting))
            .map_err(|source| Error::Io {
                what: "starting the reconnect supervisor",
                source,
            })?;
        *lock(&status.supervisor) = Some(wake.clone());
        // A loss before the supervisor was installed is reported as any other.
        if status.lost.load(std::sync::atomic::Ordering::Acquire) {
            status.set_state(super::ConnectionState::Reconnecting);
            let _ = wake.send(Wake::Disconnected);
        }
        Ok(Supervisor {
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the supervisor, waiting for an attempt under way.
    pub(super) fn stop(mut self) {
        let _ = self.wake.send(Wake::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the supervisor thread works with.
struct Context {
    policy: ReconnectPolicy,
    connect: ConnectOptions,
    device: DeviceOptions,
    identity: DeviceIdentity,
    core: Arc<Mutex<Core>>,
    status: Arc<DeviceStatus>,
    swap: Arc<SubscriberSwap>,
}

/// Why reconnecting stopped without restoring the device.
enum Stopped {
    /// Detach or drop: nothing to report.
    Asked,
    /// Lost for good.
    Failed(Error),
}

impl Context {
    fn run(&self, waiting: &Receiver<Wake>) {
        loop {
            match waiting.recv() {
                Ok(Wake::Disconnected) => {}
                Ok(Wake::Stop) | Err(_) => return,
            }
            // The dead server's mappings and ioeventfds: out of the VMM until restored.
            lock(&self.core).withdraw_slots();
            match self.reconnect(waiting) {
                Ok(how) => {
                    log::info!("vfio-user PCI device reconnected: {how:?}");
                    self.status.restored(how);
                    // A connection that died while being restored reported its loss
                    // while the device was still lost: report it again.
                    let device = Arc::clone(&lock(&self.core).device);
                    if let Some(reason) = device.connection().disconnect_reason() {
                        self.status.lose(reason);
                    }
                }
                Err(Stopped::Asked) => return,
                Err(Stopped::Failed(e)) => {
                    self.status.give_up(e);
                    return;
                }
            }
        }
    }

    /// Attempts until one succeeds, the deadline passes, the server is another device, or
    /// the device is detached.
    fn reconnect(&self, waiting: &Receiver<Wake>) -> Result<Reconnected, Stopped> {
        let deadline = Instant::now() + self.policy.give_up_after;
        let mut backoff = self.policy.initial_backoff;
        let mut attempts = 0u32;
        loop {
            if self
                .status
                .detaching
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return Err(Stopped::Asked);
            }
            attempts += 1;
            let last = match self.attempt() {
                Ok(how) => return Ok(how),
                Err(e @ Error::DifferentDevice { .. }) => return Err(Stopped::Failed(e)),
                Err(e) => e,
            };
            log::debug!("reconnect attempt {attempts} failed: {last}");
            let now = Instant::now();
            if now >= deadline {
                return Err(Stopped::Failed(Error::GaveUp {
                    attempts,
                    last: Box::new(last),
                }));
            }
            match waiting.recv_timeout(backoff.min(deadline - now)) {
                Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return Err(Stopped::Asked),
                Ok(Wake::Disconnected) | Err(RecvTimeoutError::Timeout) => {}
            }
            backoff = backoff.saturating_mul(2).min(self.policy.max_backoff);
        }
    }

    /// One attempt: connect, check the device, restore it.
    fn attempt(&self) -> Result<Reconnected, Error> {
        let path = self.policy.path().ok_or_else(|| Error::Io {
            what: "asking the reconnect callback for the socket",
            source: io::Error::new(io::ErrorKind::NotFound, "no socket path yet"),
        })?;
        let (connection, subscriber) =
            Connection::connect_with_subscriber(&path, &self.connect).map_err(connect_error)?;
        watch_loss(&connection, &self.status);
        let handle = connection.handle();
        let device = VfioUserDevice::new(connection, &self.device)?;
        let (identity, config, _) = discover(&device)?;
        self.identity.check(&identity)?;
        self.swap.hand_over(subscriber, handle)?;
        let mut core = lock(&self.core);
        if self
            .status
            .detaching
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(Error::Io {
                what: "reconnecting",
                source: io::Error::other("the device is being detached"),
            });
        }
        let server_command = u16::from_le_bytes([config[4], config[5]]);
        core.reconnected(device, server_command)
    }
}

impl Core {
    /// Restores the device on a new connection to the same device, whose server reads
    /// `server_command` in its command register (see the [module documentation](self)).
    fn reconnected(
        &mut self,
        device: VfioUserDevice,
        server_command: u16,
    ) -> Result<Reconnected, Error> {
        let bits = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        let restarted = server_command & bits != self.shadow.command & bits;
        let reset = restarted && device.resettable();
        if reset {
            device.reset()?;
        }
        let dma = match &self.dma {
            Some(dma) => Some(dma.replay_on(device.connection())?),
            None => None,
        };
        let pending = self.wired.pending_vectors();
        // The VMM's slots and doorbells belong to the old device's mappings and fds.
        self.withdraw_slots();
        self.retired = Some(std::mem::replace(&mut self.device, Arc::new(device)));
        if dma.is_some() {
            self.dma = dma;
        }
        self.replay(&pending)?;
        // The new connection's device took the interrupts: it runs.
        self.saved = false;
        if let Some(dma) = &self.dma {
            dma.sync()?;
        }
        // The device is restored: a failure here leaves the areas trapped, not it lost.
        if let Err(e) = self.reload_slots() {
            self.status.record(Activity::GuestSlots, e);
        }
        Ok(if restarted {
            Reconnected::Restarted { reset }
        } else {
            Reconnected::Resumed
        })
    }
}
