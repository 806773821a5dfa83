// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The mapping table: live DMA windows sorted by IOVA, and the translation of a server's
//! DMA request into guest-physical pieces.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::handler::GuestSource;

/// What the server may do with a window (the DMA_MAP READ/WRITE flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Access {
    /// The server may read guest memory through the window.
    pub read: bool,
    /// The server may write guest memory through the window.
    pub write: bool,
}

impl Access {
    /// Read and write.
    pub const READ_WRITE: Access = Access {
        read: true,
        write: true,
    };
    /// Read only.
    pub const READ_ONLY: Access = Access {
        read: true,
        write: false,
    };

    /// Whether `self` grants everything `need` asks for.
    pub fn allows(&self, need: Access) -> bool {
        (self.read || !need.read) && (self.write || !need.write)
    }
}

/// Where a mapping came from ([`DmaMapping::is_guest_region`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MappingKind {
    /// A whole guest memory region mapped at its own address
    /// ([`DmaMapper::map_guest_memory`](super::DmaMapper::map_guest_memory)); kept in step with
    /// memory hot-plug by [`DmaMapper::sync_guest_memory`](super::DmaMapper::sync_guest_memory).
    GuestRegion,
    /// An IOVA window mapped by [`DmaMapper::map`](super::DmaMapper::map) (vIOMMU,
    /// virtio-mem).
    Iova,
}

/// One live DMA window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaMapping {
    /// First IOVA (the address the server uses).
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
    /// Guest physical address of the first byte.
    pub gpa: u64,
    /// What the server was granted.
    pub access: Access,
    /// The window was sent with the region's fd (the server maps it); otherwise the server
    /// reaches it through DMA_READ / DMA_WRITE messages.
    pub fd_backed: bool,
    /// Where the mapping came from.
    pub(crate) kind: MappingKind,
    /// Host address of the guest memory region the window lies in, to recognise the region
    /// across memory snapshots (0 when the region has no host mapping).
    pub(crate) host_region: usize,
    /// The mapper that made the window (whose guest memory it reaches): a connection's
    /// mappers share one table, as the server has one DMA address space per connection.
    pub(crate) owner: u64,
}

impl DmaMapping {
    /// Whether the window is a whole guest memory region mapped at its own address
    /// ([`DmaMapper::map_guest_memory`](super::DmaMapper::map_guest_memory)), kept in step
    /// with memory hot-plug by
    /// [`DmaMapper::sync_guest_memory`](super::DmaMapper::sync_guest_memory); otherwise an
    /// IOVA window mapped by [`DmaMapper::map`](super::DmaMapper::map) (vIOMMU, virtio-mem).
    pub fn is_guest_region(&self) -> bool {
        self.kind == MappingKind::GuestRegion
    }

    /// One past the last IOVA.
    pub fn end(&self) -> u64 {
        self.iova.saturating_add(self.size)
    }
}

/// A contiguous piece of a translated DMA request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) gpa: u64,
    pub(crate) len: usize,
    /// The window's owner, whose guest memory holds the piece.
    pub(crate) owner: u64,
}

/// Live windows by first IOVA (windows never overlap), and the guest memory of each mapper
/// that owns windows, so that one handler serves every window of a connection.
#[derive(Default)]
pub(crate) struct Table {
    map: BTreeMap<u64, DmaMapping>,
    sources: BTreeMap<u64, Arc<dyn GuestSource>>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("map", &self.map)
            .field("owners", &self.sources.len())
            .finish()
    }
}

impl Table {
    /// Registers the guest memory of mapper `owner`.
    pub(crate) fn add_source(&mut self, owner: u64, source: Arc<dyn GuestSource>) {
        self.sources.insert(owner, source);
    }

    /// Forgets mapper `owner`'s guest memory, unless windows of its are still live (a mapper
    /// dropped without unmapping leaves them served).
    pub(crate) fn release_source(&mut self, owner: u64) {
        if !self.map.values().any(|m| m.owner == owner) {
            self.sources.remove(&owner);
        }
    }

    /// The guest memory of mapper `owner`.
    pub(crate) fn source(&self, owner: u64) -> Option<&Arc<dyn GuestSource>> {
        self.sources.get(&owner)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &DmaMapping> {
        self.map.values()
    }

    /// The live window overlapping `iova..end`, if any (the first one, by address).
    pub(crate) fn overlapping(&self, iova: u64, end: u64) -> Option<&DmaMapping> {
        if let Some((_, m)) = self.map.range(..=iova).next_back() {
            if m.end() > iova {
                return Some(m);
            }
        }
        self.map
            .range(iova..)
            .next()
            .map(|(_, m)| m)
            .filter(|m| m.iova < end)
    }

    /// Adds a window; the caller checked that it overlaps nothing.
    pub(crate) fn insert(&mut self, m: DmaMapping) {
        self.map.insert(m.iova, m);
    }

    /// The owner of the window starting at `iova`.
    pub(crate) fn owner_at(&self, iova: u64) -> Option<u64> {
        self.map.get(&iova).map(|m| m.owner)
    }

    /// Removes the window that is exactly `iova..iova + size`.
    pub(crate) fn remove_exact(&mut self, iova: u64, size: u64) -> Option<DmaMapping> {
        match self.map.get(&iova) {
            Some(m) if m.size == size => self.map.remove(&iova),
            _ => None,
        }
    }

    /// Splits `address..address + count` into guest-physical pieces, one per window crossed.
    ///
    /// `Err(EFAULT)` when part of the range lies outside every window (or the range wraps);
    /// `Err(EPERM)` when a window does not grant `need`.
    pub(crate) fn translate(
        &self,
        address: u64,
        count: u64,
        need: Access,
    ) -> Result<Vec<Piece>, i32> {
        let end = address.checked_add(count).ok_or(libc::EFAULT)?;
        let mut pieces = Vec::new();
        let mut at = address;
        while at < end {
            let m = self
                .map
                .range(..=at)
                .next_back()
                .map(|(_, m)| m)
                .filter(|m| m.end() > at)
                .ok_or(libc::EFAULT)?;
            if !m.access.allows(need) {
                return Err(libc::EPERM);
            }
            let n = m.end().min(end) - at;
            let gpa = m.gpa.checked_add(at - m.iova).ok_or(libc::EFAULT)?;
            let len = usize::try_from(n).map_err(|_| libc::EFAULT)?;
            // One piece per window even when guest addresses run on: each window lies in one
            // guest memory region, the next may lie in another.
            pieces.push(Piece {
                gpa,
                len,
                owner: m.owner,
            });
            at += n;
        }
        Ok(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(iova: u64, size: u64, gpa: u64, access: Access) -> DmaMapping {
        DmaMapping {
            iova,
            size,
            gpa,
            access,
            fd_backed: false,
            kind: MappingKind::Iova,
            host_region: 0,
            owner: 0,
        }
    }

    #[test]
    fn overlap_lookup() {
        let mut t = Table::default();
        t.insert(m(0x1000, 0x1000, 0, Access::READ_WRITE));
        t.insert(m(0x4000, 0x2000, 0, Access::READ_WRITE));
        assert!(t.overlapping(0, 0x1000).is_none());
        assert!(t.overlapping(0x2000, 0x4000).is_none());
        assert_eq!(t.overlapping(0, 0x1001).map(|m| m.iova), Some(0x1000));
        assert_eq!(t.overlapping(0x1fff, 0x2000).map(|m| m.iova), Some(0x1000));
        assert_eq!(t.overlapping(0x5000, 0x9000).map(|m| m.iova), Some(0x4000));
        assert_eq!(t.overlapping(0, u64::MAX).map(|m| m.iova), Some(0x1000));
        assert!(t.remove_exact(0x4000, 0x1000).is_none());
        assert!(t.remove_exact(0x4000, 0x2000).is_some());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn translate_across_windows() {
        let mut t = Table::default();
        t.insert(m(0x1000, 0x1000, 0x10000, Access::READ_WRITE));
        t.insert(m(0x2000, 0x1000, 0x11000, Access::READ_ONLY));
        t.insert(m(0x3000, 0x1000, 0x50000, Access::READ_WRITE));
        let read = Access::READ_ONLY;
        let write = Access {
            read: false,
            write: true,
        };
        assert_eq!(
            t.translate(0x1800, 0x2000, read),
            Ok(vec![
                Piece {
                    gpa: 0x10800,
                    len: 0x800,
                    owner: 0
                },
                Piece {
                    gpa: 0x11000,
                    len: 0x1000,
                    owner: 0
                },
                Piece {
                    gpa: 0x50000,
                    len: 0x800,
                    owner: 0
                }
            ])
        );
        assert_eq!(t.translate(0x1800, 0x1000, write), Err(libc::EPERM));
        assert_eq!(t.translate(0x3800, 0x1000, read), Err(libc::EFAULT));
        assert_eq!(t.translate(0x800, 0x1000, read), Err(libc::EFAULT));
        assert_eq!(t.translate(u64::MAX, 2, read), Err(libc::EFAULT));
        assert_eq!(t.translate(0x1000, 0, read), Ok(vec![]));
    }

    proptest::proptest! {
        /// `translate` agrees with a byte-by-byte model: every byte of the range in a window
        /// granting the access, mapped to that window's guest address and owner, or the first byte's
        /// error (EFAULT outside every window, EPERM in a window without the access).
        #[test]
        fn translate_matches_a_byte_model(
            windows in proptest::collection::vec((0u64..64, 1u64..8, 0u64..1000, proptest::bool::ANY), 0..12),
            address in 0u64..80,
            count in 0u64..40,
            write_access in proptest::bool::ANY,
        ) {
            let mut t = Table::default();
            for (iova, size, gpa, writable) in windows {
                let access = Access { read: true, write: writable };
                if t.overlapping(iova, iova + size).is_none() {
                    // Windows of three owners (mappers sharing the connection's table).
                    t.insert(DmaMapping { owner: iova % 3, ..m(iova, size, gpa, access) });
                }
            }
            let need = Access { read: !write_access, write: write_access };
            let mut model = Ok(Vec::new());
            for byte in address..address + count {
                let w = t.iter().find(|w| w.iova <= byte && byte < w.end());
                match (w, &mut model) {
                    (None, Ok(_)) => model = Err(libc::EFAULT),
                    (Some(w), Ok(_)) if !w.access.allows(need) => model = Err(libc::EPERM),
                    (Some(w), Ok(bytes)) => bytes.push((w.gpa + (byte - w.iova), w.owner)),
                    (_, Err(_)) => {}
                }
            }
            let got = t.translate(address, count, need).map(|pieces| {
                pieces
                    .iter()
                    .flat_map(|p| (p.gpa..p.gpa + p.len as u64).map(move |g| (g, p.owner)))
                    .collect::<Vec<_>>()
            });
            proptest::prop_assert_eq!(got, model);
        }
    }
}
