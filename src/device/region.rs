// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A device's regions: what DEVICE_GET_REGION_INFO describes, and the mapping of their
//! mappable areas.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    vfio_region_sparse_mmap_area, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

use super::mmap::{self, MappedArea};
use super::{Error, MAX_INFO_ARGSZ};
use crate::connection::Connection;
use crate::protocol::{Command, RegionCap, RegionInfo};

/// One region of the device, as DEVICE_GET_REGION_INFO described it.
#[derive(Debug)]
pub struct Region {
    index: u32,
    flags: u32,
    size: u64,
    fd_offset: u64,
    caps: Vec<RegionCap>,
    fd: Option<Arc<File>>,
    areas: Vec<MappedArea>,
}

impl Region {
    /// The region's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// `VFIO_REGION_INFO_FLAG_*` as the server reported them.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Size in bytes (0 for an absent region).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the region can be read.
    pub fn readable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_READ != 0
    }

    /// Whether the region can be written.
    pub fn writable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_WRITE != 0
    }

    /// Whether (parts of) the region can be mmapped: the server set MMAP and sent the fd.
    pub fn mappable(&self) -> bool {
        self.fd.is_some()
    }

    /// Offset of the region's data in its fd.
    pub fn fd_offset(&self) -> u64 {
        self.fd_offset
    }

    /// The region fd, when the region is mappable.
    pub fn fd(&self) -> Option<&File> {
        self.fd.as_deref()
    }

    /// The capability chain.
    pub fn caps(&self) -> &[RegionCap] {
        &self.caps
    }

    /// The SPARSE_MMAP areas, when the region has that capability.
    pub fn sparse_areas(&self) -> Option<&[vfio_region_sparse_mmap_area]> {
        self.caps.iter().find_map(|c| match c {
            RegionCap::SparseMmap(areas) => Some(areas.as_slice()),
            _ => None,
        })
    }

    /// The TYPE capability: `(type, subtype)`.
    pub fn region_type(&self) -> Option<(u32, u32)> {
        self.caps.iter().find_map(|c| match c {
            RegionCap::Type {
                region_type,
                subtype,
            } => Some((*region_type, *subtype)),
            _ => None,
        })
    }

    /// The areas that are mapped into this process, sorted by offset.
    pub fn mapped_areas(&self) -> &[MappedArea] {
        &self.areas
    }

    /// The areas the server allows to be mapped: the sparse areas, or the whole region.
    fn mappable_areas(&self) -> Vec<vfio_region_sparse_mmap_area> {
        match self.sparse_areas() {
            Some(areas) => areas.to_vec(),
            None => vec![vfio_region_sparse_mmap_area {
                offset: 0,
                size: self.size,
            }],
        }
    }

    pub(super) fn check(&self, offset: u64, len: u64, write: bool) -> Result<(), Error> {
        let (allowed, access) = if write {
            (self.writable(), "writable")
        } else {
            (self.readable(), "readable")
        };
        if !allowed {
            return Err(Error::AccessDenied {
                index: self.index,
                access,
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange {
                index: self.index,
                offset,
                len,
                size: self.size,
            }),
        }
    }
}

/// Region `index` as DEVICE_GET_REGION_INFO describes it (not mapped yet).
pub(super) fn get_region(conn: &Connection, index: u32) -> Result<Region, Error> {
    let (info, mut fds) = query(conn, index)?;
    if info.size > 0 {
        let areas = info.caps.iter().filter_map(|cap| match cap {
            RegionCap::SparseMmap(areas) => Some(areas),
            _ => None,
        });
        for a in areas.flatten() {
            if a.offset
                .checked_add(a.size)
                .is_none_or(|end| end > info.size)
            {
                return Err(bad(
                    index,
                    format!(
                        "sparse area {:#x}+{:#x} outside the region of {:#x} bytes",
                        a.offset, a.size, info.size
                    ),
                ));
            }
        }
    }
    let fd = if info.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 {
        match fds.pop() {
            Some(fd) => Some(Arc::new(File::from(fd))),
            None => {
                log::warn!("region {index} is MMAP but came without an fd: not mappable");
                None
            }
        }
    } else {
        None
    };
    Ok(Region {
        index,
        flags: info.flags,
        size: info.size,
        fd_offset: info.offset,
        caps: info.caps,
        fd,
        areas: Vec::new(),
    })
}

/// Asks for region `index`'s info, once more with the `argsz` the server names when the
/// capability chain (and with it libvfio-user's fd) did not fit; returns the complete
/// answer and its fds.
fn query(conn: &Connection, index: u32) -> Result<(RegionInfo, Vec<OwnedFd>), Error> {
    let mut argsz = RegionInfo::HEAD_SIZE as u32;
    loop {
        let mut payload = Vec::with_capacity(RegionInfo::HEAD_SIZE);
        RegionInfo::request(index, argsz).encode_into(&mut payload);
        let reply = conn
            .request(Command::DeviceGetRegionInfo, &payload, &[])
            .map_err(|source| Error::Request {
                command: Command::DeviceGetRegionInfo,
                index: Some(index),
                source,
            })?;
        let head =
            RegionInfo::decode_head(&reply.payload).map_err(|e| bad(index, e.to_string()))?;
        if head.index != index {
            return Err(bad(index, format!("answers region {}", head.index)));
        }
        if head.argsz > argsz {
            if argsz != RegionInfo::HEAD_SIZE as u32 || head.argsz > MAX_INFO_ARGSZ {
                return Err(bad(
                    index,
                    format!("asks for argsz {} after {argsz}", head.argsz),
                ));
            }
            argsz = head.argsz;
            continue;
        }
        // The whole answer fitted: now the capability chain is there to parse.
        let info = RegionInfo::decode(&reply.payload).map_err(|e| bad(index, e.to_string()))?;
        return Ok((info, reply.fds));
    }
}

fn bad(index: u32, what: String) -> Error {
    Error::BadReply {
        command: Command::DeviceGetRegionInfo,
        what: format!("region {index}: {what}"),
    }
}

pub(super) fn map_region(region: &mut Region, page_size: u64) {
    let Some(file) = region.fd.clone() else {
        return;
    };
    let mut areas: Vec<MappedArea> = Vec::new();
    for area in region.mappable_areas() {
        if area.size == 0 {
            continue;
        }
        match mmap::map_area(
            &file,
            region.fd_offset,
            region.size,
            area,
            region.readable(),
            region.writable(),
            page_size,
        ) {
            Ok(mapped) => areas.push(mapped),
            Err(why) => log::warn!(
                "region {} area {:#x}+{:#x} not mapped ({why}); accesses stay messages",
                region.index,
                area.offset,
                area.size
            ),
        }
    }
    areas.sort_by_key(MappedArea::offset);
    region.areas = areas;
}
