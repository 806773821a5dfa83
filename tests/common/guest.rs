// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest memory for DMA tests: memfd-backed and anonymous vm-memory regions.

use std::fs::File;
use std::os::fd::AsFd;

use vfio_user_sample_server::SharedMemory;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// A zero-filled memfd of `size` bytes.
pub fn memfd(size: u64) -> File {
    let m = SharedMemory::new("guest-ram", size).unwrap();
    File::from(m.as_fd().try_clone_to_owned().unwrap())
}

/// A region at `gpa`: shared on `file` at `offset` when given, anonymous otherwise.
pub fn region(gpa: u64, size: usize, file: Option<(File, u64)>, writable: bool) -> GuestRegionMmap {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let builder = MmapRegionBuilder::new(size).with_mmap_prot(prot);
    let builder = match file {
        Some((f, offset)) => builder
            .with_mmap_flags(libc::MAP_SHARED)
            .with_file_offset(FileOffset::new(f, offset)),
        None => {
            builder.with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        }
    };
    GuestRegionMmap::new(builder.build().unwrap(), GuestAddress(gpa)).unwrap()
}

/// A memfd-backed read-write region.
pub fn shared(gpa: u64, size: usize) -> GuestRegionMmap {
    region(gpa, size, Some((memfd(size as u64), 0)), true)
}

/// An anonymous (fd-less) read-write region.
pub fn anon(gpa: u64, size: usize) -> GuestRegionMmap {
    region(gpa, size, None, true)
}

pub fn memory(regions: Vec<GuestRegionMmap>) -> GuestMemoryMmap {
    GuestMemoryMmap::from_regions(regions).unwrap()
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}
