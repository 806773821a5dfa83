// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! PCI config-space images for servers whose config space is a fixed byte array (the
//! crates.io server's backend, the probe's decoder). A device whose config space answers
//! writes uses [`ConfigSpace`](crate::ConfigSpace) instead.

/// A 256-byte config space of an NVMe-class function: BAR0 32-bit memory at 0xfe000000,
/// BAR1 64-bit prefetchable memory, BAR3 I/O ports at 0xc000; PM at 0x40, MSI (64-bit,
/// maskable, 4 vectors) at 0x50, MSI-X (4 vectors, table in BAR0 at 0x800, PBA at 0xc00)
/// at 0x70 and PCI Express (v2 endpoint, x1 8GT/s) at 0x90.
pub fn with_capabilities(vendor: u16, device: u16) -> Vec<u8> {
    let mut c = vec![0u8; 256];
    let mut put = |at: usize, v: &[u8]| c[at..at + v.len()].copy_from_slice(v);
    put(0, &vendor.to_le_bytes());
    put(2, &device.to_le_bytes());
    put(6, &0x0010u16.to_le_bytes());
    put(8, &[0x01, 0x02, 0x08, 0x01]);
    put(0x10, &0xfe00_0000u32.to_le_bytes());
    put(0x14, &0x0000_000cu32.to_le_bytes());
    put(0x1c, &0x0000_c001u32.to_le_bytes());
    put(0x2c, &vendor.to_le_bytes());
    put(0x2e, &device.to_le_bytes());
    put(0x34, &[0x40]);
    put(0x3d, &[1]);
    // PM: version 3, next 0x50.
    put(0x40, &[0x01, 0x50, 0x03, 0x00, 0x00, 0x00]);
    // MSI: 64-bit, maskable, 4 vectors capable, next 0x70.
    put(0x50, &[0x05, 0x70]);
    put(0x52, &((1u16 << 7) | (1 << 8) | (2 << 1)).to_le_bytes());
    // MSI-X: 4 vectors, table BAR0+0x800, PBA BAR0+0xc00, next 0x90.
    put(0x70, &[0x11, 0x90]);
    put(0x72, &3u16.to_le_bytes());
    put(0x74, &0x800u32.to_le_bytes());
    put(0x78, &0xc00u32.to_le_bytes());
    // Express v2 endpoint: MPS 256 supported, x1 8GT/s, end of list.
    put(0x90, &[0x10, 0x00]);
    put(0x92, &0x0002u16.to_le_bytes());
    put(0x94, &1u32.to_le_bytes());
    put(0x98, &(2u16 << 12).to_le_bytes());
    put(0x9c, &(3u32 | (1 << 4)).to_le_bytes());
    put(0xa2, &(3u16 | (1 << 4)).to_le_bytes());
    c
}
