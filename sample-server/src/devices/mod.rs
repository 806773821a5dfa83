// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The sample devices.

pub(crate) mod dma_engine;
pub(crate) mod gpio;
pub(crate) mod state;

use crate::conn::DeviceContext;
use crate::device::{Errno, IRQ_MSI, IRQ_MSIX};
use crate::pci::ConfigSpace;

/// Splits a register write into aligned 32-bit values: `(offset, value)` pairs.
/// Writes that are not whole, aligned dwords are `EINVAL`.
pub(crate) fn dwords(offset: u64, data: &[u8]) -> Result<Vec<(u64, u32)>, Errno> {
    if offset % 4 != 0 || data.len() % 4 != 0 {
        return Err(Errno::INVAL);
    }
    Ok(data
        .chunks_exact(4)
        .enumerate()
        .map(|(i, c)| {
            (
                offset + 4 * i as u64,
                u32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
            )
        })
        .collect())
}

/// Reads a byte range out of a register file laid out as native-endian dwords.
pub(crate) fn read_regs(offset: u64, data: &mut [u8], reg: impl Fn(u64) -> u32) {
    for (i, b) in data.iter_mut().enumerate() {
        let at = offset + i as u64;
        let word = reg(at & !3).to_ne_bytes();
        *b = word[(at % 4) as usize];
    }
}

/// Reads a byte range of a BAR whose MSI-X pending bit array starts at `pba`: bytes before
/// it read as zeros (the table is the client's), bit `v` of the array is MSI-X vector `v`'s
/// pending state.
pub(crate) fn read_pba(ctx: &DeviceContext<'_>, pba: u64, offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        let at = offset + i as u64;
        *b = 0;
        if at < pba {
            continue;
        }
        let first = (at - pba) * 8;
        for bit in 0..8u64 {
            let vector = u32::try_from(first + bit).unwrap_or(u32::MAX);
            if ctx.irq_pending(IRQ_MSIX, vector) {
                *b |= 1 << bit;
            }
        }
    }
}

/// Reads config space bytes: `pci`'s, with the MSI pending bits register showing the MSI
/// vectors raised while the client masked them.
pub(crate) fn read_config(
    ctx: &DeviceContext<'_>,
    pci: &ConfigSpace,
    offset: u64,
    data: &mut [u8],
) {
    pci.read(offset, data);
    let Some(pending) = pci.msi_pending_offset() else {
        return;
    };
    for (i, b) in data.iter_mut().enumerate() {
        let at = offset as usize + i;
        let Some(byte) = at.checked_sub(pending).filter(|o| *o < 4) else {
            continue;
        };
        for bit in 0..8u32 {
            if ctx.irq_pending(IRQ_MSI, byte as u32 * 8 + bit) {
                *b |= 1 << bit;
            }
        }
    }
}
