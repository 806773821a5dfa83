// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! memfd-backed memory and the mmaps of DMA windows.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

/// Memory backed by a memfd: what a device exposes through a mappable region.
///
/// The device reads and writes it with file I/O (coherent with the client's mmap of the same
/// fd), so no `unsafe` is needed on the device side.
#[derive(Debug)]
pub struct SharedMemory {
    file: File,
    size: u64,
}

impl SharedMemory {
    /// A zero-filled memfd of `size` bytes; `name` shows in `/proc/self/fd`.
    pub fn new(name: &str, size: u64) -> io::Result<SharedMemory> {
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the call
        // creates a new fd and touches no memory of ours.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create; nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        Ok(SharedMemory { file, size })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, offset)
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        self.file.write_all_at(data, offset)
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        let end = u64::try_from(len).ok().and_then(|l| offset.checked_add(l));
        match end {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for SharedMemory {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The host page size (4 KiB if the system cannot tell).
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// A shared mapping of (part of) a file: the server's view of a fd-backed DMA window.
///
/// The memory is shared with the client process, which may change it at any time; it is only
/// ever touched through raw byte copies bounded by `len`, never through references.
#[derive(Debug)]
pub(crate) struct Mmap {
    base: NonNull<u8>,
    map_len: usize,
    /// Offset of the window's first byte from `base` (the file offset rounded down to a page).
    skew: usize,
    len: usize,
    prot: i32,
}

// SAFETY: the mapping is process-wide memory not tied to the creating thread, and `Mmap`
// hands out no references to it, only copies; moving or sharing the handle between threads
// is therefore as safe as sharing the address range, which the kernel allows.
unsafe impl Send for Mmap {}
// SAFETY: see `Send`; `&Mmap` only allows bounded copies in and out.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Maps `len` bytes of `file` from `offset` with `prot` (`PROT_READ`/`PROT_WRITE`).
    pub(crate) fn new(file: &File, offset: u64, len: u64, prot: i32) -> io::Result<Mmap> {
        let inval = || io::Error::from_raw_os_error(libc::EINVAL);
        let page = page_size();
        let aligned = offset - offset % page;
        let skew = offset - aligned;
        let map_len = len.checked_add(skew).ok_or_else(inval)?;
        let map_len = usize::try_from(map_len).map_err(|_| inval())?;
        let len = usize::try_from(len).map_err(|_| inval())?;
        let file_offset = libc::off_t::try_from(aligned).map_err(|_| inval())?;
        if len == 0 {
            return Err(inval());
        }
        // SAFETY: a null address lets the kernel pick a fresh range, so no existing mapping
        // of this process is replaced; the fd is valid for the duration of the call; the
        // result is checked for MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                file_offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(inval)?;
        Ok(Mmap {
            base,
            map_len,
            skew: usize::try_from(skew).map_err(|_| inval())?,
            len,
            prot,
        })
    }

    /// Start of `[offset, offset + n)` within the mapping, if it is in bounds.
    fn range(&self, offset: u64, n: usize) -> Option<usize> {
        let offset = usize::try_from(offset).ok()?;
        (offset.checked_add(n)? <= self.len).then_some(self.skew + offset)
    }

    /// Copies out of the window; `false` when out of bounds or not readable.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(start) = self.range(offset, buf.len()) else {
            return false;
        };
        if self.prot & libc::PROT_READ == 0 {
            return false;
        }
        // SAFETY: `start + buf.len() <= skew + len <= map_len`, so the source lies inside our
        // live, readable mapping; `buf` is an exclusively borrowed buffer of that length that
        // cannot overlap the mapping (which no Rust reference points into). The client may
        // change the bytes concurrently; they are plain data, so a torn copy is still a
        // valid `[u8]`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(start),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        true
    }

    /// Copies into the window; `false` when out of bounds or not writable.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> bool {
        let Some(start) = self.range(offset, data.len()) else {
            return false;
        };
        if self.prot & libc::PROT_WRITE == 0 {
            return false;
        }
        // SAFETY: as in `read`: the destination range is inside our live, writable mapping,
        // which no Rust reference points into, and `data` is a separate buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.as_ptr().add(start), data.len())
        };
        true
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` describe exactly the mapping created in `new`, which is
        // unmapped only here, once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}
