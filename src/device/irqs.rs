// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A device's interrupts: what DEVICE_GET_IRQ_INFO describes, and DEVICE_SET_IRQS to
//! assign eventfds to vectors, mask, unmask, trigger and disable them.

use std::os::fd::{AsRawFd, RawFd};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX,
};
use vmm_sys_util::eventfd::EventFd;

use super::{Error, VfioUserDevice};
use crate::connection::{self, Connection};
use crate::protocol::{Command, IrqInfo, SetIrqs};

impl VfioUserDevice {
    /// Most vectors of any IRQ index that is not one of the PCI ones (a non-PCI device's,
    /// or a PCI device's device-specific index): as many as the largest VFIO interrupt type
    /// has (MSI-X's 2048). No known server has such indexes: libvfio-user (and so SPDK and
    /// QEMU's server) reports the five PCI ones, as the kernel's vfio-pci does.
    pub const MAX_VECTORS: u32 = 2048;

    /// Most vectors IRQ index `index` may report: for a PCI device (`pci`), INTx 1, MSI 32
    /// (the MSI capability's Multiple Message Capable field tops out at 2^5), MSI-X 2048
    /// (an 11-bit table size), ERR 1 and REQ 1; any other index, and every index of a
    /// non-PCI device (whose numbering is not the PCI one), [`VfioUserDevice::MAX_VECTORS`].
    ///
    /// Real servers stay within these: libvfio-user reports ERR 1, REQ 1 and the count its
    /// application configured for INTx, MSI and MSI-X (0 when unused), e.g. SPDK's NVMe
    /// controller INTx 1 and MSI-X 512; QEMU's server INTx 1 and the device's MSI-X table
    /// size (or else its MSI vectors).
    pub fn max_vectors(pci: bool, index: u32) -> u32 {
        if !pci {
            return VfioUserDevice::MAX_VECTORS;
        }
        match index {
            VFIO_PCI_INTX_IRQ_INDEX | VFIO_PCI_ERR_IRQ_INDEX | VFIO_PCI_REQ_IRQ_INDEX => 1,
            VFIO_PCI_MSI_IRQ_INDEX => 32,
            VFIO_PCI_MSIX_IRQ_INDEX => 2048,
            _ => VfioUserDevice::MAX_VECTORS,
        }
    }
}

/// What a SET_IRQS request does to the vectors it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask the vectors (or, with eventfds, register mask notifiers).
    Mask,
    /// Unmask the vectors (or, with eventfds, register unmask eventfds, e.g. INTx resample).
    Unmask,
    /// Raise the vectors (or, with eventfds, assign the eventfds the server signals).
    Trigger,
}

impl IrqAction {
    fn flag(self) -> u32 {
        match self {
            IrqAction::Mask => VFIO_IRQ_SET_ACTION_MASK,
            IrqAction::Unmask => VFIO_IRQ_SET_ACTION_UNMASK,
            IrqAction::Trigger => VFIO_IRQ_SET_ACTION_TRIGGER,
        }
    }
}

impl VfioUserDevice {
    /// Assigns eventfds to vectors `start..start + fds.len()` of IRQ index `index` for
    /// `action` (usually [`IrqAction::Trigger`]); `None` de-assigns a vector.
    ///
    /// The request is split into runs of assigned and de-assigned vectors (a de-assigned run
    /// is DATA_EVENTFD without fds) and each message carries at most the server's
    /// `max_msg_fds` fds; the messages are pipelined and every reply is checked.
    pub fn set_irq_eventfds(
        &self,
        index: u32,
        action: IrqAction,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> Result<(), Error> {
        self.check_vectors(index, start, fds.len() as u64)?;
        let max_fds = (self.capabilities().max_msg_fds as usize).max(1);
        let flags = VFIO_IRQ_SET_DATA_EVENTFD | action.flag();
        let mut messages: Vec<(u32, u32, Vec<RawFd>)> = Vec::new();
        let mut i = 0;
        while i < fds.len() {
            let assigned = fds[i].is_some();
            let run = fds[i..]
                .iter()
                .take_while(|f| f.is_some() == assigned)
                .count();
            let chunk = if assigned { run.min(max_fds) } else { run };
            let raw: Vec<RawFd> = fds[i..i + chunk]
                .iter()
                .flatten()
                .map(|f| f.as_raw_fd())
                .collect();
            messages.push((start + i as u32, chunk as u32, raw));
            i += chunk;
        }
        self.send_set_irqs(index, flags, messages)
    }

    /// Masks, unmasks or triggers vectors `start..start + count` of IRQ index `index`
    /// (DATA_NONE).
    pub fn irq_action(
        &self,
        index: u32,
        action: IrqAction,
        start: u32,
        count: u32,
    ) -> Result<(), Error> {
        self.check_vectors(index, start, u64::from(count))?;
        if count == 0 {
            return Ok(());
        }
        let flags = VFIO_IRQ_SET_DATA_NONE | action.flag();
        self.send_set_irqs(index, flags, vec![(start, count, Vec::new())])
    }

    /// Masks, unmasks or triggers the vectors `start + i` for which `selected[i]` is true,
    /// in one message (DATA_BOOL). The crates.io `vfio_user` server does not support
    /// DATA_BOOL.
    pub fn irq_action_selected(
        &self,
        index: u32,
        action: IrqAction,
        start: u32,
        selected: &[bool],
    ) -> Result<(), Error> {
        self.check_vectors(index, start, selected.len() as u64)?;
        if selected.is_empty() {
            return Ok(());
        }
        let set = SetIrqs::new(
            VFIO_IRQ_SET_DATA_BOOL | action.flag(),
            index,
            start,
            selected.len() as u32,
            selected.to_vec(),
        );
        let mut payload = Vec::new();
        set.encode_into(&mut payload);
        self.connection
            .request(Command::DeviceSetIrqs, &payload, &[])
            .map(drop)
            .map_err(|e| set_irqs_error(index, start, selected.len() as u32, e))
    }

    /// Disables every vector of IRQ index `index` (DATA_NONE | TRIGGER, count 0). An index
    /// without vectors has nothing to disable: nothing is sent.
    pub fn disable_irqs(&self, index: u32) -> Result<(), Error> {
        if self.irq(index)?.count == 0 {
            return Ok(());
        }
        let flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
        self.send_set_irqs(index, flags, vec![(0, 0, Vec::new())])
    }

    fn check_vectors(&self, index: u32, start: u32, count: u64) -> Result<(), Error> {
        let irq = self.irq(index)?;
        let end = u64::from(start) + count;
        if end > u64::from(irq.count) {
            return Err(Error::IrqOutOfRange {
                index,
                start,
                end,
                count: irq.count,
            });
        }
        Ok(())
    }

    fn send_set_irqs(
        &self,
        index: u32,
        flags: u32,
        messages: Vec<(u32, u32, Vec<RawFd>)>,
    ) -> Result<(), Error> {
        let conn = &self.connection;
        let mut payload = Vec::with_capacity(SetIrqs::HEAD_SIZE);
        let mut tickets = Vec::with_capacity(messages.len());
        let mut first_error = None;
        for (start, count, fds) in messages {
            payload.clear();
            SetIrqs::new(flags, index, start, count, Vec::new()).encode_into(&mut payload);
            match conn.send_request(Command::DeviceSetIrqs, &payload, &fds) {
                Ok(ticket) => tickets.push((ticket, start, count)),
                Err(e) => {
                    first_error = Some(set_irqs_error(index, start, count, e));
                    break;
                }
            }
        }
        for (ticket, start, count) in tickets {
            if let Err(e) = conn.wait(ticket) {
                first_error.get_or_insert(set_irqs_error(index, start, count, e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

pub(super) fn get_irq(conn: &Connection, index: u32) -> Result<IrqInfo, Error> {
    let mut payload = Vec::with_capacity(IrqInfo::SIZE);
    IrqInfo::request(index).encode_into(&mut payload);
    let reply = conn
        .request(Command::DeviceGetIrqInfo, &payload, &[])
        .map_err(|source| Error::Request {
            command: Command::DeviceGetIrqInfo,
            index: Some(index),
            source,
        })?;
    let info = IrqInfo::decode(&reply.payload).map_err(|e| Error::BadReply {
        command: Command::DeviceGetIrqInfo,
        what: e.to_string(),
    })?;
    if info.index != index {
        return Err(Error::BadReply {
            command: Command::DeviceGetIrqInfo,
            what: format!("answers IRQ index {} instead of {index}", info.index),
        });
    }
    Ok(info)
}

/// Refuses an IRQ index whose vector count is above [`VfioUserDevice::max_vectors`] (0 is always accepted:
/// libvfio-user reports 0 for every interrupt type its application does not use).
pub(super) fn check_count(pci: bool, irq: &IrqInfo) -> Result<(), Error> {
    let limit = VfioUserDevice::max_vectors(pci, irq.index);
    if irq.count > limit {
        return Err(Error::TooManyVectors {
            index: irq.index,
            count: irq.count,
            limit,
        });
    }
    Ok(())
}

pub(super) fn set_irqs_error(
    index: u32,
    start: u32,
    count: u32,
    source: connection::Error,
) -> Error {
    Error::SetIrqs {
        index,
        start,
        count,
        source,
    }
}
