// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The capability chain that follows a `DEVICE_GET_REGION_INFO` reply.
//!
//! Each capability starts with an 8-byte header {`id` u16, `version` u16, `next` u32}; `next`
//! is the payload offset of the following capability, 0 at the end. The parser requires every
//! `next` to lie at or past the end of the capability holding it (its header and the body
//! read for it), so capabilities never overlap: a cyclic chain is rejected rather than
//! followed, and what a chain decodes to is never more than the bytes it occupies (a chain
//! of overlapping capabilities could make a 64 KiB reply decode to gigabytes of areas).

use std::mem::size_of;

use vfio_bindings::bindings::vfio::{
    vfio_info_cap_header, vfio_region_info_cap_sparse_mmap, vfio_region_info_cap_type,
    vfio_region_sparse_mmap_area, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_CAP_TYPE,
};

use super::wire::{len_u32, put_u16, put_u32, put_u64, Reader};
use super::DecodeError;

const HEADER_SIZE: usize = size_of::<vfio_info_cap_header>();
const SPARSE_MMAP_HEAD_SIZE: usize = size_of::<vfio_region_info_cap_sparse_mmap>();
const SPARSE_MMAP_AREA_SIZE: usize = size_of::<vfio_region_sparse_mmap_area>();
const TYPE_SIZE: usize = size_of::<vfio_region_info_cap_type>();

// The wire carries capability ids in 16 bits.
const SPARSE_MMAP: u16 = VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16;
const TYPE: u16 = VFIO_REGION_INFO_CAP_TYPE as u16;
const MSIX_MAPPABLE: u16 = VFIO_REGION_INFO_CAP_MSIX_MAPPABLE as u16;

/// One capability of a region.
#[derive(Clone, Debug, PartialEq)]
pub enum RegionCap {
    /// `SPARSE_MMAP` (id 1): the areas that may be mmapped. The mmap offset of an area in
    /// the region's fd is the region's `offset` plus the area's `offset`.
    SparseMmap(Vec<vfio_region_sparse_mmap_area>),
    /// `TYPE` (id 2): a device-specific region's type.
    Type {
        /// The region type.
        region_type: u32,
        /// The region subtype.
        subtype: u32,
    },
    /// `MSIX_MAPPABLE` (id 3): no body.
    MsixMappable,
    /// A capability this crate does not interpret; skipped.
    Unknown {
        /// The capability id.
        id: u16,
        /// The capability version.
        version: u16,
    },
}

// The bindings' area type has no `Eq`, but it is two integers: equality is total.
impl Eq for RegionCap {}

impl RegionCap {
    /// Bytes this capability occupies when encoded.
    pub fn encoded_len(&self) -> usize {
        match self {
            RegionCap::SparseMmap(areas) => SPARSE_MMAP_HEAD_SIZE
                .saturating_add(areas.len().saturating_mul(SPARSE_MMAP_AREA_SIZE)),
            RegionCap::Type { .. } => TYPE_SIZE,
            RegionCap::MsixMappable | RegionCap::Unknown { .. } => HEADER_SIZE,
        }
    }
}

/// Parses the capability chain starting at payload offset `cap_offset`.
///
/// Offsets are from the start of `payload`; the caller bounds `payload` (for example to
/// `argsz`). A `cap_offset` of 0 means no capabilities. Errors: a `next` before the end of
/// the capability holding it ([`DecodeError::InvalidField`]), a capability or its body past the
/// end of `payload` ([`DecodeError::OutOfBounds`] / [`DecodeError::Short`]), and an
/// `nr_areas` that the bytes present cannot hold ([`DecodeError::TooLarge`]).
pub(super) fn parse_region_caps(
    payload: &[u8],
    cap_offset: u32,
) -> Result<Vec<RegionCap>, DecodeError> {
    let mut caps = Vec::new();
    let mut at = cap_offset;
    while at != 0 {
        let start = usize::try_from(at).unwrap_or(usize::MAX);
        let cap = payload.get(start..).ok_or(DecodeError::OutOfBounds {
            field: "region cap offset",
            value: u64::from(at),
            len: payload.len(),
        })?;
        let mut r = Reader::new(cap, "region cap");
        let id = r.u16()?;
        let version = r.u16()?;
        let next = r.u32()?;
        let body = r.rest();
        let (parsed, body_len) = parse_body(id, version, body)?;
        caps.push(parsed);
        let end = u64::from(at) + (HEADER_SIZE + body_len) as u64;
        if next != 0 && u64::from(next) < end {
            return Err(DecodeError::InvalidField {
                field: "region cap next (must not point into the capability holding it)",
                value: u64::from(next),
            });
        }
        at = next;
    }
    Ok(caps)
}

/// Parses the body of capability `id` (the bytes after its header, up to the end of the
/// payload); returns it and the bytes it occupies.
fn parse_body(id: u16, version: u16, body: &[u8]) -> Result<(RegionCap, usize), DecodeError> {
    Ok(match id {
        SPARSE_MMAP => {
            let mut r = Reader::new(body, "sparse mmap cap");
            let nr_areas = r.u32()?;
            let _reserved = r.u32()?;
            let limit = r.remaining() / SPARSE_MMAP_AREA_SIZE;
            let n = usize::try_from(nr_areas).unwrap_or(usize::MAX);
            if n > limit {
                return Err(DecodeError::TooLarge {
                    field: "sparse mmap nr_areas",
                    value: u64::from(nr_areas),
                    limit: u64::try_from(limit).unwrap_or(u64::MAX),
                });
            }
            let mut areas = Vec::with_capacity(n);
            for _ in 0..n {
                areas.push(vfio_region_sparse_mmap_area {
                    offset: r.u64()?,
                    size: r.u64()?,
                });
            }
            let len = body.len().saturating_sub(r.remaining());
            (RegionCap::SparseMmap(areas), len)
        }
        TYPE => {
            let mut r = Reader::new(body, "type cap");
            let cap = RegionCap::Type {
                region_type: r.u32()?,
                subtype: r.u32()?,
            };
            (cap, TYPE_SIZE - HEADER_SIZE)
        }
        MSIX_MAPPABLE => (RegionCap::MsixMappable, 0),
        _ => (RegionCap::Unknown { id, version }, 0),
    })
}

/// Appends `caps` as a chain whose first capability sits at payload offset `start`, which
/// must be the payload offset that corresponds to `out`'s current end.
///
/// Known capabilities are written with version 1; [`RegionCap::Unknown`] as a bare header.
pub(super) fn encode_region_caps(caps: &[RegionCap], start: u32, out: &mut Vec<u8>) {
    let mut at = start;
    for (i, cap) in caps.iter().enumerate() {
        let len = len_u32(cap.encoded_len());
        let next = if i + 1 == caps.len() {
            0
        } else {
            at.saturating_add(len)
        };
        let (id, version) = match cap {
            RegionCap::SparseMmap(_) => (SPARSE_MMAP, 1),
            RegionCap::Type { .. } => (TYPE, 1),
            RegionCap::MsixMappable => (MSIX_MAPPABLE, 1),
            RegionCap::Unknown { id, version } => (*id, *version),
        };
        put_u16(out, id);
        put_u16(out, version);
        put_u32(out, next);
        match cap {
            RegionCap::SparseMmap(areas) => {
                put_u32(out, len_u32(areas.len()));
                put_u32(out, 0);
                for a in areas {
                    put_u64(out, a.offset);
                    put_u64(out, a.size);
                }
            }
            RegionCap::Type {
                region_type,
                subtype,
            } => {
                put_u32(out, *region_type);
                put_u32(out, *subtype);
            }
            RegionCap::MsixMappable | RegionCap::Unknown { .. } => {}
        }
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap_header(out: &mut Vec<u8>, id: u16, next: u32) {
        put_u16(out, id);
        put_u16(out, 1);
        put_u32(out, next);
    }

    #[test]
    fn round_trip_chain() {
        let caps = vec![
            RegionCap::SparseMmap(vec![
                vfio_region_sparse_mmap_area {
                    offset: 0,
                    size: 0x1000,
                },
                vfio_region_sparse_mmap_area {
                    offset: 0x3000,
                    size: 0x1000,
                },
            ]),
            RegionCap::Unknown { id: 99, version: 7 },
            RegionCap::Type {
                region_type: 3,
                subtype: 1,
            },
            RegionCap::MsixMappable,
        ];
        let mut out = vec![0u8; 32];
        encode_region_caps(&caps, 32, &mut out);
        assert_eq!(parse_region_caps(&out, 32), Ok(caps));
        assert_eq!(parse_region_caps(&out, 0), Ok(vec![]));
    }

    #[test]
    fn cyclic_chain_is_rejected() {
        let mut p = vec![0u8; 8];
        cap_header(&mut p, 2, 24);
        p.extend_from_slice(&[0; 8]);
        cap_header(&mut p, 2, 8);
        p.extend_from_slice(&[0; 8]);
        assert!(matches!(
            parse_region_caps(&p, 8),
            Err(DecodeError::InvalidField { value: 8, .. })
        ));
        let mut p = vec![0u8; 8];
        cap_header(&mut p, 3, 8);
        assert!(matches!(
            parse_region_caps(&p, 8),
            Err(DecodeError::InvalidField { .. })
        ));
    }

    #[test]
    fn overlapping_capabilities_are_rejected() {
        // Found by the region_info fuzz target: headers one byte apart each decoded as a
        // capability, so that N bytes made up to N capabilities, and sparse areas shared by
        // overlapping capabilities were decoded once for each (quadratic in the reply).
        let mut p = vec![0u8; 8];
        cap_header(&mut p, 3, 9);
        p.extend_from_slice(&[0; 8]);
        assert_eq!(
            parse_region_caps(&p, 8),
            Err(DecodeError::InvalidField {
                field: "region cap next (must not point into the capability holding it)",
                value: 9
            })
        );
        // The next capability inside the areas of a SPARSE_MMAP one.
        let mut p = vec![0u8; 8];
        cap_header(&mut p, 1, 24);
        put_u32(&mut p, 2);
        put_u32(&mut p, 0);
        for _ in 0..2 {
            put_u64(&mut p, 0);
            put_u64(&mut p, 0x1000);
        }
        assert!(matches!(
            parse_region_caps(&p, 8),
            Err(DecodeError::InvalidField { value: 24, .. })
        ));
        // Right after it: accepted.
        p[12..16].copy_from_slice(&56u32.to_ne_bytes());
        cap_header(&mut p, 3, 0);
        assert_eq!(parse_region_caps(&p, 8).map(|c| c.len()), Ok(2));
    }

    #[test]
    fn a_chain_decodes_to_no_more_than_its_bytes() {
        // 64 KiB (the largest REGION_INFO reply discovery accepts) of SPARSE_MMAP headers
        // 16 bytes apart, each claiming every area after it, decoded to about 128 million
        // areas (2 GiB) before overlapping was refused; now the first one fails.
        const LEN: usize = 64 << 10;
        let mut p = vec![0u8; LEN];
        for at in (16..LEN - 16).step_by(16) {
            let areas = ((LEN - at - 16) / 16) as u32;
            p[at..at + 2].copy_from_slice(&1u16.to_ne_bytes());
            p[at + 4..at + 8].copy_from_slice(&((at + 16) as u32).to_ne_bytes());
            p[at + 8..at + 12].copy_from_slice(&areas.to_ne_bytes());
        }
        assert!(matches!(
            parse_region_caps(&p, 16),
            Err(DecodeError::InvalidField { value: 32, .. })
        ));
    }

    #[test]
    fn out_of_bounds_next_and_offset() {
        let mut p = Vec::new();
        cap_header(&mut p, 3, 100);
        assert!(matches!(
            parse_region_caps(&p, 200),
            Err(DecodeError::OutOfBounds { value: 200, .. })
        ));
        let mut p = vec![0u8; 4];
        cap_header(&mut p, 3, 100);
        assert!(matches!(
            parse_region_caps(&p, 4),
            Err(DecodeError::OutOfBounds { value: 100, .. })
        ));
        // A header straddling the end.
        let p = [0u8; 6];
        assert!(matches!(
            parse_region_caps(&p, 2),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn nr_areas_too_large() {
        let mut p = Vec::new();
        cap_header(&mut p, 1, 0);
        put_u32(&mut p, u32::MAX);
        put_u32(&mut p, 0);
        put_u64(&mut p, 0);
        put_u64(&mut p, 0x1000);
        assert_eq!(
            parse_region_caps(&p, 0).map(|c| c.len()),
            Ok(0),
            "offset 0 means no caps"
        );
        let mut q = vec![0u8; 8];
        q.extend_from_slice(&p);
        assert_eq!(
            parse_region_caps(&q, 8),
            Err(DecodeError::TooLarge {
                field: "sparse mmap nr_areas",
                value: u64::from(u32::MAX),
                limit: 1
            })
        );
    }
}
