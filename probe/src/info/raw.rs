// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device described over a raw connection, for when the client library refuses it
//! after the handshake (an error reply or a reply it cannot use, anywhere in discovery):
//! each region and IRQ index is asked for on its own, so that the report shows everything
//! the server does answer and names each section it does not. As with a handshake the
//! library cannot complete ([`session`]), the second connection says what
//! the peer actually sent.

use std::path::Path;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
};
use vfio_user_client::device::Error as DeviceError;
use vfio_user_client::protocol::{Command, DeviceInfo, IrqInfo, RegionAccess, RegionInfo};

use super::{config_len, region_report, ConfigError, DeviceFlags, InfoReport, IoFds, Negotiated};
use crate::check::{judge_read_reply, judge_success};
use crate::session;
use crate::wire::{self, RawEndpoint, RawMsg};

/// Largest REGION_INFO `argsz` followed on re-query.
const MAX_ARGSZ: u32 = 64 << 10;
/// Most regions described (QEMU's limit).
const MAX_REGIONS: u32 = 100;
/// Most IRQ indexes described (QEMU's limit).
const MAX_IRQS: u32 = 50;

/// Why a raw request brought nothing usable.
enum Trouble {
    /// No reply, or a stream that can no longer be followed: the server is lost.
    Lost(String),
    /// An error reply, or a reply that breaks the protocol.
    Failed(String),
}

/// The report when the library refused the device with `error`: the negotiated section,
/// the refusal, and the device as read again over a raw connection.
pub(super) fn salvage(
    path: &Path,
    timeout: Duration,
    negotiated: Negotiated,
    error: &DeviceError,
) -> InfoReport {
    let max_xfer = negotiated.max_data_xfer_size;
    let mut report = InfoReport::new(path, negotiated);
    if session::device_lost(error) {
        report.lose("the device", error);
        return report;
    }
    let connected = wire::connect(path, timeout)
        .and_then(|mut conn| wire::version(&mut conn, path).map(|_| conn));
    let mut conn = match connected {
        Ok(conn) => conn,
        Err(e) => {
            report.fail(
                "device discovery",
                format!("{error} (connecting again to show the rest failed: {e})"),
            );
            return report;
        }
    };
    report.fail(
        "device discovery",
        format!(
            "the client library refused the device: {error}; the sections below were read \
             again on a raw connection"
        ),
    );
    if let Err(t) = describe(&mut conn, &mut report, max_xfer) {
        match t {
            Trouble::Lost(why) => report.lost = Some(format!("the server was lost: {why}")),
            Trouble::Failed(why) => report.fail("device info", why),
        }
    }
    report
}

/// Fills `report` from DEVICE_GET_INFO, every REGION_INFO and IRQ_INFO, and config space;
/// `Err` when DEVICE_GET_INFO fails or the server is lost.
fn describe(conn: &mut RawEndpoint, report: &mut InfoReport, max_xfer: u32) -> Result<(), Trouble> {
    let info = device_info(conn)?;
    let is_pci = info.flags & VFIO_DEVICE_FLAGS_PCI != 0;
    report.device = Some(DeviceFlags {
        flags: info.flags,
        pci: is_pci,
        reset: info.flags & VFIO_DEVICE_FLAGS_RESET != 0,
        num_regions: info.num_regions,
        num_irqs: info.num_irqs,
    });
    for index in 0..info.num_regions.min(MAX_REGIONS) {
        match region(conn, index) {
            Ok((r, fds)) => {
                let mappable = r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 && fds > 0;
                report.regions.push(region_report(
                    is_pci,
                    index,
                    r.size,
                    r.flags,
                    mappable,
                    &r.caps,
                    IoFds::NotAsked,
                ));
            }
            Err(Trouble::Failed(why)) => report.fail(format!("region {index}"), why),
            Err(lost) => return Err(lost),
        }
    }
    for index in 0..info.num_irqs.min(MAX_IRQS) {
        match irq(conn, index) {
            Ok(i) => report.add_irq(is_pci, index, i.count, i.flags),
            Err(Trouble::Failed(why)) => report.fail(format!("IRQ index {index}"), why),
            Err(lost) => return Err(lost),
        }
    }
    if is_pci {
        let config = report
            .regions
            .iter()
            .find(|r| r.index == VFIO_PCI_CONFIG_REGION_INDEX)
            .map(|r| (r.size, r.flags & VFIO_REGION_INFO_FLAG_READ != 0));
        // By index: a region that did not answer leaves a hole.
        let sizes: Vec<u64> = (0..6)
            .map(|i| {
                report
                    .regions
                    .iter()
                    .find(|r| r.index == i)
                    .map_or(0, |r| r.size)
            })
            .collect();
        let bytes = match config {
            None => Err(ConfigError::Region(
                "the device has no config space region".into(),
            )),
            Some((size, readable)) => match config_len(size, readable) {
                Err(why) => Err(ConfigError::Region(why)),
                Ok(len) => match read_config(conn, len, max_xfer) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(Trouble::Failed(why)) => Err(ConfigError::Reply(why)),
                    Err(lost) => return Err(lost),
                },
            },
        };
        report.set_config(bytes, &sizes);
    }
    Ok(())
}

/// Sends `command` and returns its success reply.
fn ask(conn: &mut RawEndpoint, command: Command, payload: &[u8]) -> Result<RawMsg, Trouble> {
    let ex = conn.request(command, payload, &[]);
    if let Err(e) = &ex.reply {
        return Err(Trouble::Lost(format!("{command}: {e}")));
    }
    judge_success(command, &ex).map_err(Trouble::Failed)?;
    ex.reply
        .map_err(|e| Trouble::Lost(format!("{command}: {e}")))
}

fn device_info(conn: &mut RawEndpoint) -> Result<DeviceInfo, Trouble> {
    let mut payload = Vec::new();
    DeviceInfo::request().encode_into(&mut payload);
    let m = ask(conn, Command::DeviceGetInfo, &payload)?;
    DeviceInfo::decode(&m.payload).map_err(|e| Trouble::Failed(e.to_string()))
}

/// REGION_INFO of region `index` (asked again with the `argsz` the server names): the
/// region and the number of fds that came with it.
fn region(conn: &mut RawEndpoint, index: u32) -> Result<(RegionInfo, usize), Trouble> {
    let mut argsz = RegionInfo::HEAD_SIZE as u32;
    loop {
        let mut payload = Vec::new();
        RegionInfo::request(index, argsz).encode_into(&mut payload);
        let m = ask(conn, Command::DeviceGetRegionInfo, &payload)?;
        let r = RegionInfo::decode(&m.payload).map_err(|e| Trouble::Failed(e.to_string()))?;
        if r.index != index {
            return Err(Trouble::Failed(format!(
                "the reply describes region {}",
                r.index
            )));
        }
        if r.argsz <= argsz {
            return Ok((r, m.fds.len()));
        }
        if argsz != RegionInfo::HEAD_SIZE as u32 || r.argsz > MAX_ARGSZ {
            return Err(Trouble::Failed(format!(
                "asks for argsz {} after {argsz}",
                r.argsz
            )));
        }
        argsz = r.argsz;
    }
}

fn irq(conn: &mut RawEndpoint, index: u32) -> Result<IrqInfo, Trouble> {
    let mut payload = Vec::new();
    IrqInfo::request(index).encode_into(&mut payload);
    let m = ask(conn, Command::DeviceGetIrqInfo, &payload)?;
    let i = IrqInfo::decode(&m.payload).map_err(|e| Trouble::Failed(e.to_string()))?;
    if i.index != index {
        return Err(Trouble::Failed(format!(
            "the reply describes IRQ index {}",
            i.index
        )));
    }
    Ok(i)
}

/// The first `len` bytes of config space, in reads of at most `max_xfer` bytes.
fn read_config(conn: &mut RawEndpoint, len: usize, max_xfer: u32) -> Result<Vec<u8>, Trouble> {
    let chunk = (max_xfer as usize).clamp(4, len.max(4));
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let offset = bytes.len() as u64;
        let count = chunk.min(len - bytes.len()) as u32;
        let mut payload = Vec::new();
        RegionAccess {
            offset,
            region: VFIO_PCI_CONFIG_REGION_INDEX,
            count,
        }
        .encode_into(&mut payload);
        let m = ask(conn, Command::RegionRead, &payload)?;
        let data = judge_read_reply(&m.payload, VFIO_PCI_CONFIG_REGION_INDEX, offset, count)
            .map_err(Trouble::Failed)?;
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}
