// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The server's table of DMA windows.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use vfio_user_client::protocol::DmaMap;

use crate::device::Errno;
use crate::memory::Mmap;
const MAP_READ: u32 = DmaMap::FLAG_READ;
const MAP_WRITE: u32 = DmaMap::FLAG_WRITE;
const MAP_ACCESS_MMAP: u32 = DmaMap::FLAG_ACCESS_MMAP;
const MAP_ACCESS_FILE_IO: u32 = DmaMap::FLAG_ACCESS_FILE_IO;
const MAP_KNOWN: u32 = MAP_READ | MAP_WRITE | MAP_ACCESS_MMAP | MAP_ACCESS_FILE_IO;

/// How the server reaches a DMA window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaAccessMode {
    /// The window's fd is mmapped.
    Mmap,
    /// The window's fd is read and written with `pread`/`pwrite` (the FILE_IO access bit).
    FileIo,
    /// No fd: DMA_READ / DMA_WRITE messages to the client.
    Message,
}

/// The server's view of one DMA window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMapInfo {
    /// Guest (IOVA) address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset into the client's fd (0 without one).
    pub offset: u64,
    /// The DMA_MAP flags as received.
    pub flags: u32,
    /// How the server accesses it.
    pub mode: DmaAccessMode,
}

impl DmaMapInfo {
    fn end(&self) -> u64 {
        self.address.saturating_add(self.size)
    }

    fn contains(&self, address: u64) -> bool {
        address >= self.address && address < self.end()
    }
}

#[derive(Debug)]
enum Backing {
    Mmap(Mmap),
    File(File),
    Message,
    /// Recorded only ([`crate::ServerConfig::mmap_dma_windows`] off): not reachable.
    Unmapped,
}

#[derive(Debug)]
struct Entry {
    info: DmaMapInfo,
    /// Device and inode of the fd, to recognise an identical re-map.
    identity: Option<(u64, u64)>,
    backing: Backing,
}

/// What a device access found at an address.
pub(crate) enum Segment {
    /// Copied already, this many bytes.
    Done(usize),
    /// This many bytes lie in a message-based window.
    Message(usize),
}

/// The DMA windows of the current connection, by address.
#[derive(Debug, Default)]
pub(crate) struct DmaTable {
    entries: BTreeMap<u64, Entry>,
}

impl DmaTable {
    /// The window overlapping `address..end`, if any.
    fn overlapping(&self, address: u64, end: u64) -> Option<&Entry> {
        if let Some((_, e)) = self.entries.range(..=address).next_back() {
            if e.info.end() > address {
                return Some(e);
            }
        }
        self.entries
            .range(address..)
            .next()
            .map(|(_, e)| e)
            .filter(|e| e.info.address < end)
    }

    /// Number of windows.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds a window (libvfio-user rules: identical re-map succeeds, any overlap is `EINVAL`).
    /// Returns the new window, or `None` for an identical re-map. Without `mmap_fd`, a
    /// fd-backed window is checked and recorded but not mapped.
    pub(crate) fn map(
        &mut self,
        flags: u32,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<OwnedFd>,
        mmap_fd: bool,
    ) -> Result<Option<DmaMapInfo>, Errno> {
        if flags & !MAP_KNOWN != 0 || size == 0 || address.checked_add(size).is_none() {
            return Err(Errno::INVAL);
        }
        let access = flags & (MAP_ACCESS_MMAP | MAP_ACCESS_FILE_IO);
        if access == (MAP_ACCESS_MMAP | MAP_ACCESS_FILE_IO) || (access != 0 && fd.is_none()) {
            return Err(Errno::INVAL);
        }
        let file = fd.map(File::from);
        let identity = match &file {
            Some(f) => {
                let m = f.metadata().map_err(|e| Errno::from_io(&e))?;
                // A window past the end of a regular file would SIGBUS the server.
                if m.is_file() && offset.checked_add(size).is_none_or(|end| end > m.len()) {
                    return Err(Errno::INVAL);
                }
                Some((m.dev(), m.ino()))
            }
            None => None,
        };
        let mode = match (&file, access) {
            (None, _) => DmaAccessMode::Message,
            (Some(_), MAP_ACCESS_FILE_IO) => DmaAccessMode::FileIo,
            (Some(_), _) => DmaAccessMode::Mmap,
        };
        let info = DmaMapInfo {
            address,
            size,
            offset,
            flags,
            mode,
        };
        if let Some(e) = self.overlapping(info.address, info.end()) {
            if e.info == info && e.identity == identity {
                return Ok(None);
            }
            return Err(Errno::INVAL);
        }
        let backing = match (file, mode) {
            (Some(_), DmaAccessMode::Mmap) if !mmap_fd => Backing::Unmapped,
            (Some(f), DmaAccessMode::Mmap) => {
                let mut prot = 0;
                if flags & MAP_READ != 0 {
                    prot |= libc::PROT_READ;
                }
                if flags & MAP_WRITE != 0 {
                    prot |= libc::PROT_WRITE;
                }
                Backing::Mmap(Mmap::new(&f, offset, size, prot).map_err(|e| Errno::from_io(&e))?)
            }
            (Some(f), _) => Backing::File(f),
            (None, _) => Backing::Message,
        };
        self.entries.insert(
            address,
            Entry {
                info,
                identity,
                backing,
            },
        );
        Ok(Some(info))
    }

    /// Removes the window that exactly matches `address` and `size`.
    pub(crate) fn unmap(&mut self, address: u64, size: u64) -> Result<DmaMapInfo, Errno> {
        match self.entries.get(&address) {
            Some(e) if e.info.size == size => {}
            _ => return Err(Errno::NOENT),
        }
        self.entries
            .remove(&address)
            .map(|e| e.info)
            .ok_or(Errno::NOENT)
    }

    /// Removes every window.
    pub(crate) fn unmap_all(&mut self) -> Vec<DmaMapInfo> {
        std::mem::take(&mut self.entries)
            .into_values()
            .map(|e| e.info)
            .collect()
    }

    /// Every window.
    pub(crate) fn list(&self) -> Vec<DmaMapInfo> {
        self.entries.values().map(|e| e.info).collect()
    }

    fn find(&self, address: u64, need: u32) -> Result<(&Entry, u64), Errno> {
        let e = self
            .entries
            .range(..=address)
            .next_back()
            .map(|(_, e)| e)
            .filter(|e| e.info.contains(address))
            .ok_or(Errno::FAULT)?;
        if e.info.flags & need == 0 {
            return Err(Errno::PERM);
        }
        Ok((e, e.info.end() - address))
    }

    /// Reads as much of `buf` as the window holding `address` covers, when that window is
    /// fd-backed; reports the length of a message-based stretch otherwise.
    pub(crate) fn read(&self, address: u64, buf: &mut [u8]) -> Result<Segment, Errno> {
        let (e, avail) = self.find(address, MAP_READ)?;
        let n = usize::try_from(avail).unwrap_or(usize::MAX).min(buf.len());
        let off = address - e.info.address;
        let dst = &mut buf[..n];
        match &e.backing {
            Backing::Mmap(m) => m
                .read(off, dst)
                .then_some(Segment::Done(n))
                .ok_or(Errno::PERM),
            Backing::File(f) => f
                .read_exact_at(dst, e.info.offset + off)
                .map(|()| Segment::Done(n))
                .map_err(|e| Errno::from_io(&e)),
            Backing::Message => Ok(Segment::Message(n)),
            Backing::Unmapped => Err(Errno::FAULT),
        }
    }

    /// Writes as much of `data` as the window holding `address` covers; see [`Self::read`].
    pub(crate) fn write(&self, address: u64, data: &[u8]) -> Result<Segment, Errno> {
        let (e, avail) = self.find(address, MAP_WRITE)?;
        let n = usize::try_from(avail).unwrap_or(usize::MAX).min(data.len());
        let off = address - e.info.address;
        let src = &data[..n];
        match &e.backing {
            Backing::Mmap(m) => m
                .write(off, src)
                .then_some(Segment::Done(n))
                .ok_or(Errno::PERM),
            Backing::File(f) => f
                .write_all_at(src, e.info.offset + off)
                .map(|()| Segment::Done(n))
                .map_err(|e| Errno::from_io(&e)),
            Backing::Message => Ok(Segment::Message(n)),
            Backing::Unmapped => Err(Errno::FAULT),
        }
    }
}
