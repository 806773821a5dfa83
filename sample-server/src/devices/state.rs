// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The sample devices' migration data.
//!
//! A device's data is a sequence of records: `tag` u16, `flags` u16 (0), `len` u32, then
//! `len` bytes; every integer little-endian, so the data can move between hosts. Each part
//! the server hands out (pre-copy data, then the state) starts with a header record (tag 0:
//! magic `VUSD`, format version u16 1, device kind u16). The destination gets the parts back
//! to back and reads them in order, a later record replacing an earlier one of its tag.

use crate::device::Errno;

/// Tag of the header record.
const TAG_HEADER: u16 = 0;
const MAGIC: &[u8; 4] = b"VUSD";
const VERSION: u16 = 1;
const RECORD_HEAD: usize = 8;

/// Device kind of the GPIO device.
pub(crate) const KIND_GPIO: u16 = 1;
/// Device kind of the DMA engine.
pub(crate) const KIND_DMA_ENGINE: u16 = 2;

/// Builds one part of a device's data.
#[derive(Debug)]
pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// A part for a device of `kind`, its header written.
    pub(crate) fn new(kind: u16) -> Writer {
        let mut w = Writer { out: Vec::new() };
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&kind.to_le_bytes());
        w.record(TAG_HEADER, &header);
        w
    }

    /// Appends a record (of at most 4 GiB: the sample devices' records are far smaller).
    pub(crate) fn record(&mut self, tag: u16, data: &[u8]) -> &mut Writer {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.out.reserve(RECORD_HEAD + data.len());
        self.out.extend_from_slice(&tag.to_le_bytes());
        self.out.extend_from_slice(&0u16.to_le_bytes());
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&data[..len as usize]);
        self
    }

    /// The bytes.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// The records of `data` (header records checked and left out), in order; `EINVAL` for
/// data that is cut short, has no header first, a header of another format or device kind,
/// or a record with flags.
pub(crate) fn records(data: &[u8], kind: u16) -> Result<Vec<(u16, &[u8])>, Errno> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut first = true;
    while !rest.is_empty() {
        let head = rest.get(..RECORD_HEAD).ok_or(Errno::INVAL)?;
        let tag = u16::from_le_bytes([head[0], head[1]]);
        let flags = u16::from_le_bytes([head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let body = rest
            .get(RECORD_HEAD..RECORD_HEAD.saturating_add(len))
            .ok_or(Errno::INVAL)?;
        rest = &rest[RECORD_HEAD + len..];
        if flags != 0 || (first && tag != TAG_HEADER) {
            return Err(Errno::INVAL);
        }
        first = false;
        if tag == TAG_HEADER {
            let mut f = Fields::new(body);
            let magic = f.bytes(4)?;
            if magic != MAGIC || f.u16()? != VERSION || f.u16()? != kind {
                return Err(Errno::INVAL);
            }
            f.end()?;
        } else {
            out.push((tag, body));
        }
    }
    Ok(out)
}

/// Little-endian fields of a record, read in order.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Fields of `data`.
    pub(crate) fn new(data: &'a [u8]) -> Fields<'a> {
        Fields { data }
    }

    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Errno> {
        let b = self.data.get(..n).ok_or(Errno::INVAL)?;
        self.data = &self.data[n..];
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, Errno> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// The next u32.
    pub(crate) fn u32(&mut self) -> Result<u32, Errno> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next u64.
    pub(crate) fn u64(&mut self) -> Result<u64, Errno> {
        let b = self.bytes(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }

    /// `EINVAL` unless every byte was read.
    pub(crate) fn end(&self) -> Result<(), Errno> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(Errno::INVAL)
        }
    }
}

/// Little-endian fields, appended.
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// See [`put_u32`].
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let mut w = Writer::new(KIND_GPIO);
        w.record(3, &[1, 2, 3]).record(4, &[]);
        let mut data = w.finish();
        let mut second = Writer::new(KIND_GPIO);
        second.record(3, &[9]);
        data.extend_from_slice(&second.finish());
        assert_eq!(
            records(&data, KIND_GPIO).unwrap(),
            vec![(3, &[1u8, 2, 3][..]), (4, &[][..]), (3, &[9][..])]
        );
        assert_eq!(records(&data, KIND_DMA_ENGINE), Err(Errno::INVAL));
        assert_eq!(
            records(&data[..data.len() - 1], KIND_GPIO),
            Err(Errno::INVAL)
        );
        assert_eq!(records(&data[16..], KIND_GPIO), Err(Errno::INVAL));
        assert_eq!(records(&[], KIND_GPIO), Ok(Vec::new()));
        let mut f = Fields::new(&[1, 0, 0, 0, 2]);
        assert_eq!(f.u32(), Ok(1));
        assert_eq!(f.end(), Err(Errno::INVAL));
        assert_eq!(f.u64(), Err(Errno::INVAL));
    }
}
