// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Walking the capability list of a config snapshot, every pointer bounded.

use super::config::{CAP_POINTER, CONFIG_SIZE, HEADER_TYPE, STATUS, STATUS_CAP_LIST};
use super::{CapabilityProblem, Error};

/// Capability id of MSI.
pub(crate) const CAP_ID_MSI: u8 = 0x05;
/// Capability id of MSI-X.
pub(crate) const CAP_ID_MSIX: u8 = 0x11;

/// Most capabilities a 256-byte config space can hold (192 bytes after the header, four
/// bytes each at least): a longer chain is a loop.
const MAX_CAPS: usize = 48;

/// The `(id, offset)` of every capability in the standard config space, in chain order.
///
/// Pointers have their low two bits ignored (the spec reserves them); a pointer into the
/// header, past the end, or to a capability already seen is an error.
pub(crate) fn walk(config: &[u8]) -> Result<Vec<(u8, usize)>, Error> {
    let status = u16::from_le_bytes([
        config.get(STATUS).copied().unwrap_or(0),
        config.get(STATUS + 1).copied().unwrap_or(0),
    ]);
    let mut caps = Vec::new();
    if status & STATUS_CAP_LIST == 0 {
        return Ok(caps);
    }
    let mut at = usize::from(config.get(CAP_POINTER).copied().unwrap_or(0) & !3);
    let mut from = CAP_POINTER;
    while at != 0 {
        let bad = |problem| Error::Capability {
            offset: from,
            problem,
        };
        if at < 0x40 || at + 2 > config.len() {
            return Err(bad(CapabilityProblem::PointsOutside {
                to: at,
                end: config.len(),
            }));
        }
        if caps.iter().any(|&(_, o)| o == at) {
            return Err(bad(CapabilityProblem::Loops { to: at }));
        }
        if caps.len() == MAX_CAPS {
            return Err(bad(CapabilityProblem::TooMany));
        }
        caps.push((config[at], at));
        from = at + 1;
        at = usize::from(config[at + 1] & !3);
    }
    Ok(caps)
}

/// Config-space bits answered from the attach snapshot whatever the server says later: the
/// capability chain (the status bit, the pointer, every capability's id and next pointer),
/// the MSI-X capability's read-only registers (table size, table and PBA location) and the
/// header type (single function). The VMM set up its MSI and MSI-X emulation from these;
/// a server that changed them would have the guest program registers the VMM does not
/// emulate.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotOverlay {
    mask: Vec<u8>,
    value: Vec<u8>,
}

impl SnapshotOverlay {
    /// The bits of `config` (a snapshot of at least [`CONFIG_SIZE`] bytes) to keep, given its
    /// capabilities and the offset of its MSI-X capability.
    pub(crate) fn new(config: &[u8], caps: &[(u8, usize)], msix: Option<usize>) -> SnapshotOverlay {
        let mut f = SnapshotOverlay {
            mask: vec![0; CONFIG_SIZE],
            value: config.get(..CONFIG_SIZE).unwrap_or_default().to_vec(),
        };
        f.value.resize(CONFIG_SIZE, 0);
        // One function per device: never claim to be multi-function.
        f.keep(HEADER_TYPE, 0xff);
        f.value[HEADER_TYPE] &= 0x7f;
        f.keep(STATUS, STATUS_CAP_LIST as u8);
        f.keep(CAP_POINTER, 0xff);
        for &(_, at) in caps {
            f.keep(at, 0xff);
            f.keep(at + 1, 0xff);
        }
        if let Some(at) = msix {
            f.keep(at + 2, 0xff);
            // Table size (bits 8-10) and reserved bits; enable and function mask are the
            // MSI-X shadow's.
            f.keep(at + 3, 0x3f);
            for i in 4..12 {
                f.keep(at + i, 0xff);
            }
        }
        f
    }

    fn keep(&mut self, offset: usize, bits: u8) {
        if let Some(m) = self.mask.get_mut(offset) {
            *m |= bits;
        }
    }

    /// Replaces the kept bits of a config read at `offset`.
    pub(crate) fn overlay(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let Some(at) = offset.checked_add(i) else {
                return;
            };
            if let (Some(m), Some(v)) = (self.mask.get(at), self.value.get(at)) {
                *b = (*b & !m) | (v & m);
            }
        }
    }
}

/// The first capability with `id`.
pub(crate) fn find(caps: &[(u8, usize)], id: u8) -> Option<usize> {
    caps.iter().find(|(i, _)| *i == id).map(|(_, o)| *o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(chain: &[(usize, u8, u8)]) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[STATUS] = STATUS_CAP_LIST as u8;
        c[CAP_POINTER] = chain.first().map_or(0, |x| x.0 as u8);
        for &(at, id, next) in chain {
            c[at] = id;
            c[at + 1] = next;
        }
        c
    }

    #[test]
    fn walks_the_chain() {
        let c = space(&[(0x40, 1, 0x50), (0x50, 5, 0x63), (0x60, 0x11, 0)]);
        let caps = walk(&c).unwrap();
        assert_eq!(caps, [(1, 0x40), (5, 0x50), (0x11, 0x60)]);
        assert_eq!(find(&caps, CAP_ID_MSIX), Some(0x60));
        let mut none = c.clone();
        none[STATUS] = 0;
        assert!(walk(&none).unwrap().is_empty());
    }

    #[test]
    fn bad_chains_are_errors() {
        for c in [
            space(&[(0x40, 1, 0x40)]),
            space(&[(0x40, 1, 0x50), (0x50, 5, 0x40)]),
            space(&[(0x40, 1, 0x20)]),
        ] {
            assert!(walk(&c).is_err());
        }
        let mut c = space(&[(0x30 + 0x10, 1, 0)]);
        c[CAP_POINTER] = 0x10;
        assert!(walk(&c).is_err());
        // 0xfc + 2 is within 256 bytes; 0xff & !3 = 0xfc is a valid last capability.
        let c = space(&[(0x40, 1, 0xfc)]);
        assert_eq!(walk(&c).unwrap().len(), 2);
    }

    #[test]
    fn the_chain_and_msix_location_are_frozen() {
        let mut c = space(&[(0x40, 1, 0x50), (0x50, 0x11, 0)]);
        c[HEADER_TYPE] = 0x80;
        c[0x52..0x54].copy_from_slice(&0x0003u16.to_le_bytes());
        c[0x54..0x58].copy_from_slice(&0x0000_2004u32.to_le_bytes());
        let f = SnapshotOverlay::new(&c, &walk(&c).unwrap(), Some(0x50));
        // The server later says something else everywhere.
        let mut read = [0xa5u8; 16];
        f.overlay(0x50, &mut read);
        assert_eq!(&read[..8], &[0x11, 0, 0x03, 0x80, 0x04, 0x20, 0, 0]);
        assert_eq!(
            read[3] & 0xc0,
            0xa5 & 0xc0,
            "enable and mask bits not frozen"
        );
        let mut header = [0u8; 4];
        f.overlay(0x0c, &mut header);
        assert_eq!(header[2], 0, "single function");
        let mut tail = [7u8; 4];
        f.overlay(usize::MAX - 1, &mut tail);
        assert_eq!(tail, [7; 4]);
    }
}
