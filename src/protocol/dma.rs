// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest memory: `DMA_MAP` (2), `DMA_UNMAP` (3) and the server-to-client `DMA_READ` (11) /
//! `DMA_WRITE` (12).

use vfio_bindings::bindings::vfio::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;

use super::wire::{exact_data, put_u32, put_u64, Reader};
use super::DecodeError;

/// The `DMA_MAP` request payload (32 bytes). The reply has no payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaMap {
    /// Size of this structure: [`DmaMap::SIZE`].
    pub argsz: u32,
    /// `DmaMap::FLAG_*`.
    pub flags: u32,
    /// Offset into the accompanying fd (0 without one).
    pub offset: u64,
    /// Guest (IOVA) address of the window.
    pub address: u64,
    /// Size of the window in bytes.
    pub size: u64,
}

impl DmaMap {
    /// Size of the payload.
    pub const SIZE: usize = 32;
    /// [`flags`](Self::flags): the server may read the window.
    pub const FLAG_READ: u32 = 1 << 0;
    /// [`flags`](Self::flags): the server may write the window.
    pub const FLAG_WRITE: u32 = 1 << 1;
    /// [`flags`](Self::flags) (newer spec revision): access the fd by mmap. Older servers
    /// reject it.
    pub const FLAG_ACCESS_MMAP: u32 = 1 << 2;
    /// [`flags`](Self::flags) (newer spec revision): access the fd by file I/O. Older
    /// servers reject it.
    pub const FLAG_ACCESS_FILE_IO: u32 = 1 << 3;

    /// A request with `argsz` set to [`DmaMap::SIZE`].
    pub fn new(flags: u32, offset: u64, address: u64, size: u64) -> Self {
        DmaMap {
            argsz: Self::SIZE as u32,
            flags,
            offset,
            address,
            size,
        }
    }

    /// Appends the payload.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags);
        put_u64(out, self.offset);
        put_u64(out, self.address);
        put_u64(out, self.size);
    }

    /// Decodes a payload; bytes past the structure are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "dma map");
        Ok(DmaMap {
            argsz: r.u32()?,
            flags: r.u32()?,
            offset: r.u64()?,
            address: r.u64()?,
            size: r.u64()?,
        })
    }
}

/// The deprecated dirty bitmap of a `DMA_UNMAP` with [`VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnmapBitmap {
    /// Page size each bit stands for.
    pub pgsize: u64,
    /// Size of the bitmap in bytes.
    pub size: u64,
    /// The bitmap: empty in a request, `size` bytes in a reply.
    pub data: Vec<u8>,
}

/// The `DMA_UNMAP` request and reply payload (the reply echoes the request).
///
/// With [`VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`] a 16-byte bitmap header {`pgsize`, `size`} follows
/// the 24-byte entry and, in the reply, `size` bytes of bitmap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DmaUnmap {
    /// Request: largest reply payload accepted; reply: payload size of the full answer.
    pub argsz: u32,
    /// `VFIO_DMA_UNMAP_FLAG_*` (0 in 0.9.2).
    pub flags: u32,
    /// Guest address of the window (0 with `VFIO_DMA_UNMAP_FLAG_ALL`).
    pub address: u64,
    /// Size of the window (0 with `VFIO_DMA_UNMAP_FLAG_ALL`).
    pub size: u64,
    /// The bitmap; present exactly when the GET_DIRTY_BITMAP flag is set.
    pub bitmap: Option<UnmapBitmap>,
}

impl DmaUnmap {
    /// Size of the entry without a bitmap.
    pub const SIZE: usize = 24;
    const BITMAP_HEAD_SIZE: usize = 16;

    /// A plain unmap request for one window.
    pub fn new(address: u64, size: u64) -> Self {
        DmaUnmap {
            argsz: Self::SIZE as u32,
            flags: 0,
            address,
            size,
            bitmap: None,
        }
    }

    /// Appends the payload. The bitmap header is written when `bitmap` is `Some`, whatever
    /// `flags` says.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags);
        put_u64(out, self.address);
        put_u64(out, self.size);
        if let Some(b) = &self.bitmap {
            put_u64(out, b.pgsize);
            put_u64(out, b.size);
            out.extend_from_slice(&b.data);
        }
    }

    /// Decodes a request or a reply.
    ///
    /// With the GET_DIRTY_BITMAP flag, the bitmap header must be present and the bytes after
    /// it must be none (a request) or exactly `size` ([`DecodeError::LengthMismatch`]).
    /// Without the flag, bytes past the entry are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "dma unmap");
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let address = r.u64()?;
        let size = r.u64()?;
        let bitmap = if flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
            let pgsize = r.u64()?;
            let bsize = r.u64()?;
            let rest = r.rest();
            let data = if rest.is_empty() {
                Vec::new()
            } else {
                let head = Self::SIZE + Self::BITMAP_HEAD_SIZE;
                exact_data("dma unmap dirty bitmap", head, rest, bsize)?.to_vec()
            };
            Some(UnmapBitmap {
                pgsize,
                size: bsize,
                data,
            })
        } else {
            None
        };
        Ok(DmaUnmap {
            argsz,
            flags,
            address,
            size,
            bitmap,
        })
    }
}

/// The 16-byte head of `DMA_READ` / `DMA_WRITE` (server to client), in requests and replies.
///
/// Data follows in a DMA_READ reply and a DMA_WRITE request; use
/// [`DmaAccess::decode_with_data`] and [`DmaAccess::encode_with_data`] for those. Replies must
/// carry the full head with a 64-bit `count` (libvfio-user checks both fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaAccess {
    /// Guest address.
    pub address: u64,
    /// Bytes to transfer (or transferred, in a reply).
    pub count: u64,
}

impl DmaAccess {
    /// Size of the head.
    pub const HEAD_SIZE: usize = 16;

    /// Appends the head.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u64(out, self.address);
        put_u64(out, self.count);
    }

    /// Appends the head and `data`. `count` is written as set; callers keep it equal to
    /// `data.len()`.
    pub fn encode_with_data(&self, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(Self::HEAD_SIZE.saturating_add(data.len()));
        self.encode_into(out);
        out.extend_from_slice(data);
    }

    /// Decodes the head of a DMA_READ request or DMA_WRITE reply; later bytes are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "dma access");
        Ok(DmaAccess {
            address: r.u64()?,
            count: r.u64()?,
        })
    }

    /// Decodes a DMA_READ reply or DMA_WRITE request: the head and exactly `count` bytes of
    /// data, borrowed from `payload`.
    pub fn decode_with_data(payload: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        let head = Self::decode(payload)?;
        let data = payload.get(Self::HEAD_SIZE..).unwrap_or(&[]);
        let data = exact_data("dma access", Self::HEAD_SIZE, data, head.count)?;
        Ok((head, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_bindings::bindings::vfio::VFIO_DMA_UNMAP_FLAG_ALL;

    #[test]
    fn dma_map_layout() {
        let m = DmaMap::new(DmaMap::FLAG_READ | DmaMap::FLAG_WRITE, 0x10, 0x2000, 0x3000);
        let mut out = Vec::new();
        m.encode_into(&mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(out.get(16..24), Some(&0x2000u64.to_ne_bytes()[..]));
        assert_eq!(DmaMap::decode(&out), Ok(m));
        assert!(matches!(
            DmaMap::decode(&out[..31]),
            Err(DecodeError::Short {
                need: 32,
                got: 31,
                ..
            })
        ));
    }

    #[test]
    fn dma_unmap_plain_all_and_bitmap() {
        let u = DmaUnmap::new(0x1000, 0x2000);
        let mut out = Vec::new();
        u.encode_into(&mut out);
        assert_eq!(out.len(), 24);
        assert_eq!(DmaUnmap::decode(&out), Ok(u));

        let all = DmaUnmap {
            flags: VFIO_DMA_UNMAP_FLAG_ALL,
            ..DmaUnmap::new(0, 0)
        };
        let mut out = Vec::new();
        all.encode_into(&mut out);
        assert_eq!(DmaUnmap::decode(&out), Ok(all));

        let mut req = DmaUnmap {
            argsz: 24 + 16 + 2,
            flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
            address: 0,
            size: 16 * 4096,
            bitmap: Some(UnmapBitmap {
                pgsize: 4096,
                size: 2,
                data: vec![],
            }),
        };
        let mut out = Vec::new();
        req.encode_into(&mut out);
        assert_eq!(out.len(), 40);
        assert_eq!(DmaUnmap::decode(&out), Ok(req.clone()));
        req.bitmap.as_mut().unwrap().data = vec![0xff, 0x01];
        let mut out = Vec::new();
        req.encode_into(&mut out);
        assert_eq!(DmaUnmap::decode(&out), Ok(req));
        out.push(0);
        assert!(matches!(
            DmaUnmap::decode(&out),
            Err(DecodeError::LengthMismatch {
                expected: 42,
                got: 43,
                ..
            })
        ));
        // Flag set but no bitmap header.
        assert!(matches!(
            DmaUnmap::decode(&out[..30]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn dma_unmap_huge_bitmap_size_does_not_allocate() {
        let mut out = Vec::new();
        DmaUnmap {
            flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
            bitmap: Some(UnmapBitmap {
                pgsize: 4096,
                size: u64::MAX,
                data: vec![1],
            }),
            ..DmaUnmap::default()
        }
        .encode_into(&mut out);
        assert!(matches!(
            DmaUnmap::decode(&out),
            Err(DecodeError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn dma_access_with_data() {
        let a = DmaAccess {
            address: 0x1000,
            count: 3,
        };
        let mut out = Vec::new();
        a.encode_with_data(&[1, 2, 3], &mut out);
        assert_eq!(out.len(), 19);
        assert_eq!(DmaAccess::decode_with_data(&out), Ok((a, &[1u8, 2, 3][..])));
        assert_eq!(DmaAccess::decode(&out), Ok(a));
        assert_eq!(
            DmaAccess::decode_with_data(&out[..18]),
            Err(DecodeError::LengthMismatch {
                what: "dma access",
                expected: 19,
                got: 18
            })
        );
        let reply = DmaAccess {
            address: 0x1000,
            count: 0,
        };
        let mut out = Vec::new();
        reply.encode_into(&mut out);
        assert_eq!(DmaAccess::decode_with_data(&out), Ok((reply, &[][..])));
    }
}
