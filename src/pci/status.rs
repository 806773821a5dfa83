// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's status, shared with its event loop: lost or detaching, the errors met
//! where they could not be returned, and the INTx end of interrupt.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_INTX_IRQ_INDEX,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
        })
    }

    /// The connection is gone: log once and tell the VMM (unless it is detaching).
    pub(super) fn lose(&self, reason: DisconnectReason) {
        if self.lost.swap(true, Ordering::AcqRel) || self.detaching.load(Ordering::Acquire) {
            return;
        }
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
