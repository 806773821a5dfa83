// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Walking the capability list of a config snapshot, every pointer bounded.

use super::config::{CAP_POINTER, STATUS, STATUS_CAP_LIST};
use super::Error;

/// Capability id of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability id of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

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
        let bad = |what: &str| Error::Capability {
            offset: from,
            what: what.to_string(),
        };
        if at < 0x40 || at + 2 > config.len() {
            return Err(bad(&format!(
                "points to {at:#x}, outside 0x40..{:#x}",
                config.len()
            )));
        }
        if caps.iter().any(|&(_, o)| o == at) {
            return Err(bad(&format!("points back to {at:#x}: the list loops")));
        }
        if caps.len() == MAX_CAPS {
            return Err(bad("more capabilities than fit in config space"));
        }
        caps.push((config[at], at));
        from = at + 1;
        at = usize::from(config[at + 1] & !3);
    }
    Ok(caps)
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
}
