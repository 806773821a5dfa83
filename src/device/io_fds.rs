// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! DEVICE_GET_REGION_IO_FDS: the ioeventfds (and ioregionfds) of a region, for a VMM to
//! register with its hypervisor.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::{Error, VfioUserDevice, MAX_INFO_ARGSZ};
use crate::connection::{self, Connection};
use crate::protocol::{Command, RegionIoFds};

/// `argsz` of the first REGION_IO_FDS query: room for 16 libvfio-user entries.
const IO_FDS_FIRST_ARGSZ: u32 = 16 + 16 * 48;

/// One ioeventfd (or ioregionfd) of a region, from DEVICE_GET_REGION_IO_FDS.
#[derive(Debug)]
pub struct RegionIoFd {
    /// Offset in the region.
    pub offset: u64,
    /// Size of the access that triggers it (0: any).
    pub size: u64,
    /// `IoSubregion::TYPE_*` from [`crate::protocol`].
    pub kind: u32,
    /// `IoSubregion::FLAG_*` (or ioregionfd flags).
    pub flags: u32,
    /// The value to match (ioeventfd) or the user data (ioregionfd), when the reply's entry
    /// layout has it.
    pub data: Option<u64>,
    /// The fd; several entries may share one fd.
    pub fd: Arc<OwnedFd>,
    /// libvfio-user's shadow memory (fd, offset) for `IOEVENTFD_SHADOW` entries.
    pub shadow: Option<(Arc<OwnedFd>, u64)>,
}

impl VfioUserDevice {
    /// DEVICE_GET_REGION_IO_FDS: the ioeventfds of region `index`, for a VMM to register
    /// with its hypervisor. A server without support answers
    /// [`Error::IoFdsNotSupported`].
    pub fn region_io_fds(&self, index: u32) -> Result<Vec<RegionIoFd>, Error> {
        let size = self.region(index)?.size();
        let (io, fds) = query(&self.connection, index)?;
        let fds: Vec<Arc<OwnedFd>> = fds.into_iter().map(Arc::new).collect();
        let fd = |i: u32| {
            fds.get(i as usize)
                .cloned()
                .ok_or_else(|| bad(format!("fd index {i} of {} fds", fds.len())))
        };
        let mut out = Vec::with_capacity(io.subregions.len());
        for s in io.subregions {
            if s.offset.checked_add(s.size).is_none_or(|end| end > size) {
                return Err(bad(format!(
                    "sub-region {:#x}+{:#x} outside region {index} of {size:#x} bytes",
                    s.offset, s.size,
                )));
            }
            let shadow = match s.shadow {
                Some((fd_index, offset)) => Some((fd(fd_index)?, offset)),
                None => None,
            };
            out.push(RegionIoFd {
                offset: s.offset,
                size: s.size,
                kind: s.kind,
                flags: s.flags,
                data: s.data,
                fd: fd(s.fd_index)?,
                shadow,
            });
        }
        Ok(out)
    }
}

/// Asks for the I/O fds of region `index`, once more with the `argsz` the server names when
/// the first answer did not fit; returns the complete answer and its fds.
fn query(conn: &Connection, index: u32) -> Result<(RegionIoFds, Vec<OwnedFd>), Error> {
    let mut argsz = IO_FDS_FIRST_ARGSZ;
    loop {
        let mut payload = Vec::with_capacity(RegionIoFds::HEAD_SIZE);
        RegionIoFds::request(index, argsz).encode_into(&mut payload);
        let reply = match conn.request(Command::DeviceGetRegionIoFds, &payload, &[]) {
            Ok(reply) => reply,
            Err(source @ connection::Error::Server { errno, .. })
                if errno == libc::EINVAL as u32
                    || errno == libc::ENOTSUP as u32
                    || errno == libc::ENOSYS as u32 =>
            {
                return Err(Error::IoFdsNotSupported { index, source });
            }
            Err(source) => {
                return Err(Error::Request {
                    command: Command::DeviceGetRegionIoFds,
                    index: Some(index),
                    source,
                })
            }
        };
        let io = RegionIoFds::decode(&reply.payload).map_err(|e| bad(e.to_string()))?;
        if io.index != index {
            return Err(bad(format!("for region {} instead of {index}", io.index)));
        }
        if io.argsz > argsz {
            if io.argsz > MAX_INFO_ARGSZ || argsz != IO_FDS_FIRST_ARGSZ {
                return Err(bad(format!("asks for argsz {} after {argsz}", io.argsz)));
            }
            argsz = io.argsz;
            continue;
        }
        if io.subregions.len() != io.count as usize {
            return Err(bad(format!(
                "{} entries present of {}",
                io.subregions.len(),
                io.count
            )));
        }
        return Ok((io, reply.fds));
    }
}

fn bad(what: String) -> Error {
    Error::BadReply {
        command: Command::DeviceGetRegionIoFds,
        what,
    }
}
