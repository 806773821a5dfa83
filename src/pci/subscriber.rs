// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's event-manager subscriber: the connection's events, and INTx end of
//! interrupt.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::status::DeviceStatus;
use super::Error;
use crate::connection::{self, ConnectionSubscriber};
use crate::sync::lock;

/// Hands a reconnected connection's subscriber to the [`PciSubscriber`], on the event
/// loop's thread: the reconnect supervisor puts it here and signals `kick`, which the
/// subscriber watches; in `process` it drops the old connection's subscriber and registers
/// the new one's fds through its `EventOps` (event-manager lets a subscriber change its
/// registrations only there).
pub(crate) struct SubscriberSwap {
    kick: EventFd,
    next: Mutex<Option<(ConnectionSubscriber, connection::Handle)>>,
}

impl SubscriberSwap {
    pub(crate) fn new() -> Result<SubscriberSwap, Error> {
        Ok(SubscriberSwap {
            kick: EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
                what: "creating the subscriber's reconnect eventfd",
                source,
            })?,
            next: Mutex::new(None),
        })
    }

    /// Gives the event loop the subscriber of a new connection.
    pub(crate) fn hand_over(
        &self,
        subscriber: ConnectionSubscriber,
        connection: connection::Handle,
    ) -> Result<(), Error> {
        *lock(&self.next) = Some((subscriber, connection));
        self.kick.write(1).map_err(|source| Error::Io {
            what: "waking the event loop for a new connection",
            source,
        })
    }
}

/// Drives one [`VfioUserPciDevice`](super::VfioUserPciDevice) from an event loop: the
/// connection (its sockets and send queue, see [`ConnectionSubscriber`]) and the INTx resample
/// eventfd, on which the device unmasks INTx at the server (end of interrupt).
///
/// A VMM registers it in its `EventManager` after
/// [`attach_with_subscriber`](super::VfioUserPciDevice::attach_with_subscriber) and removes
/// it after detaching; [`attach`](super::VfioUserPciDevice::attach) runs it on a thread of
/// the device's own.
pub struct PciSubscriber {
    pub(crate) connection_subscriber: ConnectionSubscriber,
    pub(crate) connection: connection::Handle,
    pub(super) status: Arc<DeviceStatus>,
    pub(crate) resample: Option<Arc<EventFd>>,
    /// With a reconnect policy: where a new connection's subscriber comes from.
    pub(crate) swap: Option<Arc<SubscriberSwap>>,
}

impl fmt::Debug for PciSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciSubscriber")
            .field("resample", &self.resample.as_ref().map(|e| e.as_raw_fd()))
            .finish_non_exhaustive()
    }
}

impl MutEventSubscriber for PciSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        self.connection_subscriber.init(ops);
        if let Some(r) = &self.resample {
            if let Err(e) = ops.add(Events::new(&**r, EventSet::IN)) {
                log::error!("cannot watch the INTx resample eventfd: {e:?}");
            }
        }
        if let Some(swap) = &self.swap {
            if let Err(e) = ops.add(Events::new(&swap.kick, EventSet::IN)) {
                log::error!("cannot watch the reconnect eventfd: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if let Some(r) = &self.resample {
            if events.fd() == r.as_raw_fd() {
                // Non-blocking or not, a readable eventfd reads at once.
                let _ = r.read();
                self.status.post_intx_unmask(&self.connection);
                return;
            }
        }
        if let Some(swap) = &self.swap {
            if events.fd() == swap.kick.as_raw_fd() {
                let _ = swap.kick.read();
                let next = lock(&swap.next).take();
                if let Some((subscriber, connection)) = next {
                    self.connection_subscriber.retire(ops);
                    self.connection_subscriber = subscriber;
                    self.connection = connection;
                    self.connection_subscriber.init(ops);
                }
                return;
            }
        }
        self.connection_subscriber.process(events, ops);
    }
}
