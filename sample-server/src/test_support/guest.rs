// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest memory for DMA and PCI tests and benchmarks: memfd-backed regions (shareable with
//! a server) and anonymous ones (which a server can only reach by DMA messages), and the
//! host's page size.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::SharedMemory;

/// A zero-filled memfd of `size` bytes.
pub fn memfd(size: u64) -> File {
    let m = SharedMemory::new("guest-ram", size).expect("memfd");
    File::from(m.as_fd().try_clone_to_owned().expect("dup"))
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
    GuestRegionMmap::new(builder.build().expect("mmap"), GuestAddress(gpa)).expect("region")
}

/// A memfd-backed read-write region.
pub fn shared(gpa: u64, size: usize) -> GuestRegionMmap {
    region(gpa, size, Some((memfd(size as u64), 0)), true)
}

/// An anonymous (fd-less) read-write region.
pub fn anon(gpa: u64, size: usize) -> GuestRegionMmap {
    region(gpa, size, None, true)
}

/// Guest memory made of `regions`.
pub fn memory(regions: Vec<GuestRegionMmap>) -> GuestMemoryMmap {
    GuestMemoryMmap::from_regions(regions).expect("guest memory")
}

/// Guest RAM of `size` bytes at guest address 0, memfd-backed, as a VMM shares it.
pub fn guest_memory(size: usize) -> Arc<GuestMemoryMmap> {
    Arc::new(memory(vec![shared(0, size)]))
}

/// `len` bytes that differ from one `seed` to another and repeat only every 64 KiB.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

/// The host's page size in bytes.
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf takes no pointers and only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).expect("page size")
}
