// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A bounds-checked cursor over a received payload, shared by every decoder.

use super::DecodeError;

/// Reads native-endian integers and byte runs from a payload, front to back.
///
/// Every read checks the bytes present and reports [`DecodeError::Short`] naming `what`, the
/// structure being decoded, so a decoder never indexes received data directly.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`, reporting errors against `what`.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos = self.pos.saturating_add(n);
                Ok(s)
            }
            None => Err(DecodeError::Short {
                what: self.what,
                need: end.unwrap_or(usize::MAX),
                got: self.buf.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// The next native-endian `u16`.
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_ne_bytes)
    }

    /// The next native-endian `u32`.
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_ne_bytes)
    }

    /// The next native-endian `u64`.
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_ne_bytes)
    }

    /// Every byte not yet read; the cursor moves to the end.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        rest
    }

    /// How many bytes have not been read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// Appends a native-endian `u16`.
pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// Appends a native-endian `u32`.
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// Appends a native-endian `u64`.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// A length as the `u32` a wire field holds, saturating: callers bound lengths well below 4 GiB.
pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// A length as the `u64` a wire field holds.
pub(crate) fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// Checks that exactly `expected` bytes follow a head, returning them.
///
/// `head_len` is only used to report the whole payload's expected and actual size.
pub(crate) fn exact_data<'a>(
    what: &'static str,
    head_len: usize,
    data: &'a [u8],
    expected: u64,
) -> Result<&'a [u8], DecodeError> {
    if len_u64(data.len()) == expected {
        Ok(data)
    } else {
        Err(DecodeError::LengthMismatch {
            what,
            expected: usize::try_from(expected)
                .ok()
                .and_then(|e| e.checked_add(head_len))
                .unwrap_or(usize::MAX),
            got: head_len.saturating_add(data.len()),
        })
    }
}
