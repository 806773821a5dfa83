// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Region access: `REGION_READ` (9), `REGION_WRITE` (10) and `REGION_WRITE_MULTI` (15).

use super::wire::{exact_data, len_u64, put_u32, put_u64, Reader};
use super::DecodeError;

/// The 16-byte head of `REGION_READ` / `REGION_WRITE`, in requests and replies.
///
/// Data follows in a REGION_READ reply and a REGION_WRITE request: use
/// [`RegionAccess::decode_with_data`] (borrows the data) and
/// [`RegionAccess::encode_with_data`] for those, so a small access costs one buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionAccess {
    /// Offset within the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes to access.
    pub count: u32,
}

impl RegionAccess {
    /// Size of the head.
    pub const HEAD_SIZE: usize = 16;

    /// Appends the head.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u64(out, self.offset);
        put_u32(out, self.region);
        put_u32(out, self.count);
    }

    /// Appends the head and `data`. `count` is written as set; callers keep it equal to
    /// `data.len()`.
    pub fn encode_with_data(&self, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(Self::HEAD_SIZE.saturating_add(data.len()));
        self.encode_into(out);
        out.extend_from_slice(data);
    }

    /// Decodes the head of a REGION_READ request or REGION_WRITE reply; later bytes are
    /// ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "region access");
        Ok(RegionAccess {
            offset: r.u64()?,
            region: r.u32()?,
            count: r.u32()?,
        })
    }

    /// Decodes a REGION_READ reply or REGION_WRITE request: the head and exactly `count`
    /// bytes of data ([`DecodeError::LengthMismatch`] otherwise), borrowed from `payload`.
    pub fn decode_with_data(payload: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        let head = Self::decode(payload)?;
        let data = payload.get(Self::HEAD_SIZE..).unwrap_or(&[]);
        let data = exact_data(
            "region access",
            Self::HEAD_SIZE,
            data,
            u64::from(head.count),
        )?;
        Ok((head, data))
    }
}

/// One write of a `REGION_WRITE_MULTI` request (24 bytes on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteMultiEntry {
    /// Offset within the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes to write, at most [`WriteMultiEntry::MAX_DATA`].
    pub count: u32,
    /// The data, in the first `count` bytes.
    pub data: [u8; 8],
}

impl WriteMultiEntry {
    /// Largest `count`.
    pub const MAX_DATA: u32 = 8;
    /// Size of an entry on the wire.
    pub const SIZE: usize = 24;

    /// The entry writing `bytes` (at most [`WriteMultiEntry::MAX_DATA`]) at `offset` of
    /// region `region`; `None` for more bytes.
    pub fn new(region: u32, offset: u64, bytes: &[u8]) -> Option<Self> {
        let mut data = [0u8; 8];
        data.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(WriteMultiEntry {
            offset,
            region,
            count: bytes.len() as u32,
            data,
        })
    }

    /// The bytes to write: the first `count` bytes of `data`.
    pub fn bytes(&self) -> &[u8] {
        self.data.get(..self.count as usize).unwrap_or(&self.data)
    }

    /// Appends the entry's 24 wire bytes.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u64(out, self.offset);
        put_u32(out, self.region);
        put_u32(out, self.count);
        out.extend_from_slice(&self.data);
    }
}

/// The `REGION_WRITE_MULTI` request payload: `wr_cnt` u64 and the entries. Only send it to a
/// server that advertised `write_multiple`. The reply payload is the `wr_cnt` of the writes
/// completed alone ([`RegionWriteMulti::encode_reply`], [`RegionWriteMulti::decode_reply`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionWriteMulti {
    /// The writes, in order.
    pub writes: Vec<WriteMultiEntry>,
}

impl RegionWriteMulti {
    /// Size of the head (`wr_cnt`) before the entries.
    pub const HEAD_SIZE: usize = 8;

    /// Appends the payload; `wr_cnt` is the number of entries.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u64(out, len_u64(self.writes.len()));
        for w in &self.writes {
            w.encode_into(out);
        }
    }

    /// Decodes a payload: exactly `wr_cnt` entries must follow
    /// ([`DecodeError::LengthMismatch`]), each with `count` ≤ 8 ([`DecodeError::TooLarge`]).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "region write multi");
        let wr_cnt = r.u64()?;
        let rest = r.rest();
        let bytes = wr_cnt.saturating_mul(WriteMultiEntry::SIZE as u64);
        let rest = exact_data("region write multi", 8, rest, bytes)?;
        let mut writes = Vec::with_capacity(rest.len() / WriteMultiEntry::SIZE);
        let mut r = Reader::new(rest, "region write multi entry");
        while r.remaining() > 0 {
            let offset = r.u64()?;
            let region = r.u32()?;
            let count = r.u32()?;
            if count > WriteMultiEntry::MAX_DATA {
                return Err(DecodeError::TooLarge {
                    field: "region write multi count",
                    value: u64::from(count),
                    limit: u64::from(WriteMultiEntry::MAX_DATA),
                });
            }
            let mut data = [0u8; 8];
            data.copy_from_slice(r.bytes(8)?);
            writes.push(WriteMultiEntry {
                offset,
                region,
                count,
                data,
            });
        }
        Ok(RegionWriteMulti { writes })
    }

    /// Appends the reply payload: `wr_cnt`, the number of writes completed.
    pub fn encode_reply(wr_cnt: u64, out: &mut Vec<u8>) {
        put_u64(out, wr_cnt);
    }

    /// Decodes a reply payload into its `wr_cnt`; bytes past the count are ignored.
    pub fn decode_reply(payload: &[u8]) -> Result<u64, DecodeError> {
        Reader::new(payload, "region write multi reply").u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_byte_read_reply_is_zero_copy() {
        let head = RegionAccess {
            offset: 0x10,
            region: 7,
            count: 4,
        };
        let mut out = Vec::new();
        head.encode_with_data(&[1, 2, 3, 4], &mut out);
        assert_eq!(out.len(), 20);
        let (h, data) = RegionAccess::decode_with_data(&out).unwrap();
        assert_eq!(h, head);
        assert_eq!(data, &[1, 2, 3, 4]);
        assert!(std::ptr::eq(data.as_ptr(), out[16..].as_ptr()));
    }

    #[test]
    fn count_must_match_data() {
        let mut out = Vec::new();
        RegionAccess {
            offset: 0,
            region: 0,
            count: 8,
        }
        .encode_with_data(&[0; 4], &mut out);
        assert_eq!(
            RegionAccess::decode_with_data(&out),
            Err(DecodeError::LengthMismatch {
                what: "region access",
                expected: 24,
                got: 20
            })
        );
        assert!(matches!(
            RegionAccess::decode(&out[..15]),
            Err(DecodeError::Short { .. })
        ));
        assert!(matches!(
            RegionAccess::decode_with_data(&out[..15]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn write_multi_round_trip_and_limits() {
        let m = RegionWriteMulti {
            writes: vec![
                WriteMultiEntry {
                    offset: 4,
                    region: 0,
                    count: 4,
                    data: [1, 2, 3, 4, 0, 0, 0, 0],
                },
                WriteMultiEntry {
                    offset: 8,
                    region: 2,
                    count: 8,
                    data: [9; 8],
                },
            ],
        };
        let mut out = Vec::new();
        m.encode_into(&mut out);
        assert_eq!(out.len(), 8 + 48);
        assert_eq!(RegionWriteMulti::decode(&out), Ok(m.clone()));
        assert_eq!(m.writes[0].bytes(), &[1, 2, 3, 4]);
        assert_eq!(WriteMultiEntry::new(0, 4, &[1, 2, 3, 4]), Some(m.writes[0]));
        assert_eq!(WriteMultiEntry::new(2, 8, &[9; 8]), Some(m.writes[1]));
        assert_eq!(WriteMultiEntry::new(0, 0, &[0; 9]), None);
        out[..8].copy_from_slice(&u64::MAX.to_ne_bytes());
        assert!(matches!(
            RegionWriteMulti::decode(&out),
            Err(DecodeError::LengthMismatch { .. })
        ));
        out[..8].copy_from_slice(&2u64.to_ne_bytes());
        out[20..24].copy_from_slice(&9u32.to_ne_bytes());
        assert!(matches!(
            RegionWriteMulti::decode(&out),
            Err(DecodeError::TooLarge { value: 9, .. })
        ));
        let mut out = Vec::new();
        RegionWriteMulti::encode_reply(2, &mut out);
        assert_eq!(out, 2u64.to_ne_bytes());
        assert_eq!(RegionWriteMulti::decode_reply(&out), Ok(2));
        assert!(matches!(
            RegionWriteMulti::decode_reply(&out[..7]),
            Err(DecodeError::Short { .. })
        ));
    }
}
