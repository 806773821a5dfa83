// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The eventfds a client attached with DEVICE_SET_IRQS, and their mask state.
//!
//! INTx is level-triggered, as the kernel's vfio-pci and QEMU serve it: when the server
//! masks INTx ([`IrqMasking::masks`]), signalling it masks it (auto-mask), so that the
//! client's UNMASK (the guest's end of interrupt) comes before the next signal. A line
//! held by [`IrqTable::set_level`] signals again at each unmask while it stays held, and
//! when a trigger eventfd is attached to it; a line raised while masked is delivered on
//! unmask. [`IrqTable::raise`] is a pulse: it signals (or leaves pending) once.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK as SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER as SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK as SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL as SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD as SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE as SET_DATA_NONE,
};
use vfio_user_client::protocol::SetIrqs;

use crate::config::IrqMasking;
use crate::device::{Errno, IRQ_ERR, IRQ_INTX, IRQ_REQ};
const SET_DATA: u32 = SET_DATA_NONE | SET_DATA_BOOL | SET_DATA_EVENTFD;
const SET_ACTION: u32 = SET_ACTION_MASK | SET_ACTION_UNMASK | SET_ACTION_TRIGGER;

/// A test's view of one interrupt vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqVectorState {
    /// A trigger eventfd is attached.
    pub assigned: bool,
    /// An unmask eventfd is attached.
    pub unmask_assigned: bool,
    /// The client masked the vector.
    pub masked: bool,
    /// Raised while masked; delivered on unmask.
    pub pending: bool,
    /// Times the vector was signalled on its eventfd.
    pub signalled: u64,
    /// The device holds the line (level-triggered INTx, see [`Probe::set_irq_level`]).
    ///
    /// [`Probe::set_irq_level`]: crate::Probe::set_irq_level
    pub level: bool,
}

#[derive(Debug, Default)]
struct Vector {
    trigger: Option<File>,
    unmask: Option<File>,
    masked: bool,
    pending: bool,
    signalled: u64,
    /// The device holds the line.
    level: bool,
    /// Signalling masks the vector (INTx at a server that masks it).
    automask: bool,
}

impl Vector {
    fn fire(&mut self) -> bool {
        if self.masked {
            self.pending = true;
            return false;
        }
        match &self.trigger {
            Some(f) => {
                let mut f: &File = f;
                // An eventfd write only fails when the counter would overflow, in which case
                // the client has a signal pending anyway.
                let _ = f.write_all(&1u64.to_ne_bytes());
                self.signalled += 1;
                self.masked = self.automask;
                true
            }
            None => false,
        }
    }

    /// Back to the state before any SET_IRQS (the signal count, the line and the
    /// auto-mask are the device's and are kept).
    fn disconnect(&mut self) {
        *self = Vector {
            signalled: self.signalled,
            level: self.level,
            automask: self.automask,
            ..Vector::default()
        };
    }

    fn state(&self) -> IrqVectorState {
        IrqVectorState {
            assigned: self.trigger.is_some(),
            unmask_assigned: self.unmask.is_some(),
            masked: self.masked,
            pending: self.pending,
            signalled: self.signalled,
            level: self.level,
        }
    }
}

/// Vectors per IRQ index.
#[derive(Debug, Default)]
pub(crate) struct IrqTable {
    indexes: Vec<Vec<Vector>>,
    masking: IrqMasking,
}

impl IrqTable {
    /// A table with `counts[i]` vectors for index `i`, nothing attached, whose MASK and
    /// UNMASK behave as `masking` says.
    pub(crate) fn new(counts: &[u32], masking: IrqMasking) -> IrqTable {
        IrqTable {
            indexes: counts
                .iter()
                .enumerate()
                .map(|(index, &n)| {
                    let automask = index as u32 == IRQ_INTX && masking.masks(IRQ_INTX);
                    (0..n)
                        .map(|_| Vector {
                            automask,
                            ..Vector::default()
                        })
                        .collect()
                })
                .collect(),
            masking,
        }
    }

    /// Disconnects every vector and drops every line, as a device reset (signal counts
    /// kept).
    pub(crate) fn clear(&mut self) {
        self.indexes.iter_mut().flatten().for_each(|v| {
            v.disconnect();
            v.level = false;
        });
    }

    /// Signals `vector` of `index`: `Ok(true)` if an eventfd was written.
    pub(crate) fn raise(&mut self, index: u32, vector: u32) -> Result<bool, Errno> {
        self.vector(index, vector).map(Vector::fire)
    }

    /// Holds (`level`) or releases the line of `vector` of `index`. Raising a line that was
    /// released signals it as [`IrqTable::raise`] does (`Ok(true)` if an eventfd was
    /// written); releasing it withdraws a pending signal. Setting the level it has does
    /// nothing.
    pub(crate) fn set_level(
        &mut self,
        index: u32,
        vector: u32,
        level: bool,
    ) -> Result<bool, Errno> {
        let v = self.vector(index, vector)?;
        if v.level == level {
            return Ok(false);
        }
        v.level = level;
        if level {
            return Ok(v.fire());
        }
        v.pending = false;
        Ok(false)
    }

    /// Whether a trigger eventfd is attached to `vector` of `index`.
    pub(crate) fn assigned(&self, index: u32, vector: u32) -> bool {
        self.indexes
            .get(index as usize)
            .and_then(|v| v.get(vector as usize))
            .is_some_and(|v| v.trigger.is_some())
    }

    /// Whether `vector` of `index` was raised while masked and is still pending.
    pub(crate) fn pending(&self, index: u32, vector: u32) -> bool {
        self.indexes
            .get(index as usize)
            .and_then(|v| v.get(vector as usize))
            .is_some_and(|v| v.pending)
    }

    pub(crate) fn states(&self, index: u32) -> Vec<IrqVectorState> {
        self.indexes
            .get(index as usize)
            .map(|v| v.iter().map(Vector::state).collect())
            .unwrap_or_default()
    }

    fn vector(&mut self, index: u32, vector: u32) -> Result<&mut Vector, Errno> {
        self.indexes
            .get_mut(index as usize)
            .and_then(|v| v.get_mut(vector as usize))
            .ok_or(Errno::INVAL)
    }

    /// Applies DEVICE_SET_IRQS with libvfio-user's validation: one DATA and one ACTION
    /// flag; `start` below the index's vector count even when `count` is 0; `start + count`
    /// within it; `count` 0 only with DATA_NONE + TRIGGER and `start` 0 (disables the
    /// index); ERR/REQ: TRIGGER with `count` at most 1; fds only with DATA_EVENTFD, and then
    /// none (de-assign the range) or exactly `count`.
    pub(crate) fn set(&mut self, req: &SetIrqs, fds: Vec<OwnedFd>) -> Result<(), Errno> {
        let data = req.flags & SET_DATA;
        let action = req.flags & SET_ACTION;
        if req.flags & !(SET_DATA | SET_ACTION) != 0
            || data.count_ones() != 1
            || action.count_ones() != 1
        {
            return Err(Errno::INVAL);
        }
        let vectors = self
            .indexes
            .get_mut(req.index as usize)
            .ok_or(Errno::INVAL)?;
        let max = u32::try_from(vectors.len()).unwrap_or(u32::MAX);
        if (req.index == IRQ_ERR || req.index == IRQ_REQ)
            && (action != SET_ACTION_TRIGGER || req.count > 1)
        {
            return Err(Errno::INVAL);
        }
        if req.start >= max || req.start.checked_add(req.count).is_none_or(|end| end > max) {
            return Err(Errno::INVAL);
        }
        // An empty range only as DATA_NONE + TRIGGER from vector 0: "disable the index".
        if req.count == 0
            && (req.start != 0 || data != SET_DATA_NONE || action != SET_ACTION_TRIGGER)
        {
            return Err(Errno::INVAL);
        }
        if data != SET_DATA_EVENTFD && !fds.is_empty() {
            return Err(Errno::INVAL);
        }
        if data == SET_DATA_EVENTFD && !fds.is_empty() && fds.len() != req.count as usize {
            return Err(Errno::INVAL);
        }
        if data == SET_DATA_BOOL && req.bools.len() != req.count as usize {
            return Err(Errno::INVAL);
        }
        let mask_action = action == SET_ACTION_MASK || action == SET_ACTION_UNMASK;
        if mask_action && data != SET_DATA_EVENTFD && !self.masking.masks(req.index) {
            // libvfio-user answers 0 and does nothing; the kernel refuses MSI/MSI-X masking.
            return match self.masking {
                IrqMasking::Rejected => Err(Errno::INVAL),
                _ => Ok(()),
            };
        }
        let range = req.start as usize..(req.start + req.count) as usize;
        if data == SET_DATA_NONE && action == SET_ACTION_TRIGGER && req.count == 0 {
            vectors.iter_mut().for_each(Vector::disconnect);
            return Ok(());
        }
        let selected = |i: usize| -> bool {
            data != SET_DATA_BOOL || req.bools.get(i - range.start).copied().unwrap_or(false)
        };
        let mut fds = fds.into_iter();
        for i in range.clone() {
            let v = &mut vectors[i];
            match (data, action) {
                (SET_DATA_EVENTFD, _) => {
                    let fd = fds.next().map(File::from);
                    if action == SET_ACTION_TRIGGER {
                        v.trigger = fd;
                        // A held line signals its new eventfd.
                        if v.level && v.trigger.is_some() {
                            v.fire();
                        }
                    } else {
                        v.unmask = fd;
                    }
                }
                (_, SET_ACTION_TRIGGER) if selected(i) => {
                    v.fire();
                }
                (_, SET_ACTION_MASK) if selected(i) => v.masked = true,
                (_, SET_ACTION_UNMASK) if selected(i) => {
                    let was_masked = std::mem::replace(&mut v.masked, false);
                    // Level-triggered: a line still held signals again (as vfio-pci's
                    // unmask does); an unmask of an unmasked line does nothing.
                    if std::mem::take(&mut v.pending) || (was_masked && v.level) {
                        v.fire();
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
