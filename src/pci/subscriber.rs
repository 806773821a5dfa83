// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's event-manager subscriber: the connection's events, and INTx end of
//! interrupt.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::status::DeviceStatus;
use crate::connection::{self, ConnectionSubscriber};

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
        self.connection_subscriber.process(events, ops);
    }
}
