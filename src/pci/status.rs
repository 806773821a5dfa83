// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's status, shared with its event loop: lost or detaching, the errors met
//! where they could not be returned, and the INTx end of interrupt.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_INTX_IRQ_INDEX,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::reconnect::{ConnectionState, Reconnected, Wake};
use super::{Activity, Error};
use crate::connection::{self, DisconnectReason};
use crate::device;
use crate::error::ConnectionCause;
use crate::protocol::{Command, SetIrqs};
use crate::sync::lock;

/// The device's status, shared with its subscriber and the disconnect callback: lost or
/// detaching, the errors met where they could not be returned, and whether an end of
/// interrupt unmasks INTx.
pub(super) struct DeviceStatus {
    pub(super) lost: AtomicBool,
    pub(super) detaching: AtomicBool,
    /// Signalled once when the device is lost.
    pub(super) event: EventFd,
    pub(super) errors: AtomicU64,
    pub(super) last_error: Mutex<Option<Arc<Error>>>,
    /// INTx is the mode and the server masks it: an end of interrupt unmasks it there.
    pub(super) eoi_unmasks_intx: AtomicBool,
    /// [`ConnectionState`] as a number: connected, reconnecting, lost.
    state: AtomicU8,
    /// Signalled on every change of `state`.
    pub(super) state_event: EventFd,
    /// The connection's generation: a disconnect callback of an older connection is stale.
    generation: AtomicU64,
    /// The reconnect supervisor, when the owner set a policy.
    pub(super) supervisor: Mutex<Option<Sender<Wake>>>,
    /// Guest reads answered all ones and writes dropped while reconnecting.
    pub(super) dropped_reads: AtomicU64,
    pub(super) dropped_writes: AtomicU64,
    /// How the last reconnect found the server.
    pub(super) last_reconnect: Mutex<Option<Reconnected>>,
    /// An interrupt setup or config write timed out or failed fast while the server was
    /// unresponsive: the PCI state is replayed once the connection is healthy again.
    pub(super) resync: AtomicBool,
}

impl DeviceStatus {
    pub(super) fn new() -> Result<DeviceStatus, Error> {
        Ok(DeviceStatus {
            lost: AtomicBool::new(false),
            detaching: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
                what: "creating the device event",
                source,
            })?,
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            eoi_unmasks_intx: AtomicBool::new(false),
            state: AtomicU8::new(ConnectionState::Connected as u8),
            state_event: EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
                what: "creating the connection state event",
                source,
            })?,
            generation: AtomicU64::new(0),
            supervisor: Mutex::new(None),
            dropped_reads: AtomicU64::new(0),
            dropped_writes: AtomicU64::new(0),
            last_reconnect: Mutex::new(None),
            resync: AtomicBool::new(false),
        })
    }

    pub(super) fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether guest accesses are dropped because a reconnect is under way.
    pub(super) fn reconnecting(&self) -> bool {
        self.state.load(Ordering::Acquire) == ConnectionState::Reconnecting as u8
    }

    pub(super) fn set_state(&self, state: ConnectionState) {
        if self.state.swap(state as u8, Ordering::AcqRel) == state as u8 {
            return;
        }
        if let Err(e) = self.state_event.write(1) {
            log::error!("cannot signal the connection state event: {e}");
        }
    }

    /// A new connection takes over: disconnects of older ones are stale from now on.
    pub(super) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The disconnect callback of the connection of generation `generation`.
    pub(super) fn lose_generation(&self, generation: u64, reason: DisconnectReason) {
        if self.generation.load(Ordering::Acquire) == generation {
            self.lose(reason);
        }
    }

    /// A reconnect restored the device: guest accesses reach the server again.
    pub(super) fn restored(&self, how: Reconnected) {
        *lock(&self.last_reconnect) = Some(how);
        self.lost.store(false, Ordering::Release);
        self.set_state(ConnectionState::Connected);
    }

    /// Reconnecting gave up: the device is lost for good.
    pub(super) fn give_up(&self, e: Error) {
        log::error!("vfio-user PCI device lost: {e}");
        *lock(&self.last_error) = Some(Arc::new(e));
        self.lost.store(true, Ordering::Release);
        self.set_state(ConnectionState::Lost);
        if let Err(e) = self.event.write(1) {
            log::error!("cannot signal the device event: {e}");
        }
    }

    /// Counts (and logs, rate-limited: the 1st, 2nd, 4th, 8th... of each kind) a guest
    /// access dropped while reconnecting.
    pub(super) fn dropped(&self, write: bool, what: &str) {
        let counter = if write {
            &self.dropped_writes
        } else {
            &self.dropped_reads
        };
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            let verb = if write {
                "write dropped"
            } else {
                "read as all ones"
            };
            log::warn!("vfio-user PCI device reconnecting: {what} {verb} ({n} so far)");
        }
    }

    /// The connection is gone: log once and tell the VMM (unless it is detaching). With a
    /// reconnect policy the supervisor is woken instead, and the device is reconnecting.
    pub(super) fn lose(&self, reason: DisconnectReason) {
        let detaching = self.detaching.load(Ordering::Acquire);
        if let (Some(wake), false) = (lock(&self.supervisor).as_ref(), detaching) {
            if !self.lost.swap(true, Ordering::AcqRel) {
                log::warn!("vfio-user PCI device disconnected ({reason}): reconnecting");
                self.set_state(ConnectionState::Reconnecting);
                let _ = wake.send(Wake::Disconnected);
            }
            return;
        }
        if self.lost.swap(true, Ordering::AcqRel) || self.detaching.load(Ordering::Acquire) {
            return;
        }
        self.set_state(ConnectionState::Lost);
        log::error!("vfio-user PCI device lost ({reason}): guest reads return all ones");
        *lock(&self.last_error) = Some(Arc::new(Error::Lost(connection::Error::Disconnected(
            reason,
        ))));
        if let Err(e) = self.event.write(1) {
            log::error!("cannot signal the device event: {e}");
        }
    }

    /// Records an error met on a path that cannot return it (a guest access).
    pub(super) fn record(&self, activity: Activity, e: Error) {
        let gone = e.connection_errors().find_map(|c| match c {
            connection::Error::Disconnected(reason) => Some(reason.clone()),
            _ => None,
        });
        if let Some(reason) = gone {
            self.lose(reason);
            return;
        }
        // Logged once, as the timeout that made the connection unresponsive: not again for
        // every access that fails fast meanwhile.
        let unresponsive = e
            .connection_errors()
            .any(|c| matches!(c, connection::Error::Unresponsive { .. }));
        let timed_out = unresponsive
            || e.connection_errors()
                .any(|c| matches!(c, connection::Error::Timeout { .. }));
        if timed_out
            && matches!(
                activity,
                Activity::InterruptSetup | Activity::ConfigWrite { .. }
            )
        {
            // A late reply may have applied what the device thinks failed, and what failed
            // fast was never sent: the server and the shadow may differ from here on.
            self.resync.store(true, Ordering::Release);
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        let e = Error::During {
            activity,
            source: Box::new(e),
        };
        if unresponsive {
            log::debug!("vfio-user PCI device: {e}");
        } else {
            log::warn!("vfio-user PCI device: {e}");
        }
        *lock(&self.last_error) = Some(Arc::new(e));
    }

    /// Sends the INTx unmask from the event loop with `No_reply`: the event loop, which
    /// may be the VMM's shared one, never waits for the server (a slow or hung server would
    /// stall every device it drives). The price is that the server's errno for a refused
    /// unmask is not seen; a connection that fails is.
    pub(super) fn post_intx_unmask(&self, connection: &connection::Handle) {
        if !self.eoi_unmasks_intx.load(Ordering::Acquire) || self.lost.load(Ordering::Acquire) {
            return;
        }
        let mut payload = Vec::with_capacity(SetIrqs::HEAD_SIZE);
        SetIrqs::new(
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            VFIO_PCI_INTX_IRQ_INDEX,
            0,
            1,
            Vec::new(),
        )
        .encode_into(&mut payload);
        if let Err(source) = connection.send_no_reply(Command::DeviceSetIrqs, &payload, &[]) {
            self.record(
                Activity::IntxUnmask,
                Error::Device(device::Error::SetIrqs {
                    index: VFIO_PCI_INTX_IRQ_INDEX,
                    start: 0,
                    count: 1,
                    source,
                }),
            );
        }
    }
}
