// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device discovery and control: `DEVICE_GET_INFO` (4), `DEVICE_GET_REGION_INFO` (5),
//! `DEVICE_GET_REGION_IO_FDS` (6), `DEVICE_GET_IRQ_INFO` (7) and `DEVICE_SET_IRQS` (8).
//! `DEVICE_RESET` (13) has no payload in either direction.

use vfio_bindings::bindings::vfio::{VFIO_IRQ_SET_DATA_BOOL, VFIO_REGION_INFO_FLAG_CAPS};

use super::region_caps::{encode_region_caps, parse_region_caps, RegionCap};
use super::wire::{exact_data, len_u32, put_u32, put_u64, Reader};
use super::DecodeError;

/// The `DEVICE_GET_INFO` request and reply payload (16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Request: largest reply payload accepted (at least 16); reply: 16.
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ types.
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// Size of the payload.
    pub const SIZE: usize = 16;

    /// The request: `argsz` 16, everything else 0.
    pub fn request() -> Self {
        DeviceInfo {
            argsz: Self::SIZE as u32,
            ..DeviceInfo::default()
        }
    }

    /// Appends the payload.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags);
        put_u32(out, self.num_regions);
        put_u32(out, self.num_irqs);
    }

    /// Decodes a payload; bytes past the structure are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "device info");
        Ok(DeviceInfo {
            argsz: r.u32()?,
            flags: r.u32()?,
            num_regions: r.u32()?,
            num_irqs: r.u32()?,
        })
    }
}

/// The `DEVICE_GET_REGION_INFO` request and reply payload: a 32-byte head and, in a reply,
/// the capability chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Request: largest reply payload accepted; reply: payload size of the full answer. A
    /// reply `argsz` above the request's means the caps (and fd) were left out: ask again.
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*` (0 in a request).
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Payload offset of the first capability; 0 for none.
    pub cap_offset: u32,
    /// Region size in bytes.
    pub size: u64,
    /// Offset of the region in its fd; base of the sparse mmap areas.
    pub offset: u64,
    /// The capabilities (empty in a request).
    pub caps: Vec<RegionCap>,
}

impl RegionInfo {
    /// Size of the head.
    pub const HEAD_SIZE: usize = 32;

    /// The request for region `index`, accepting a reply payload of up to `argsz` bytes.
    pub fn request(index: u32, argsz: u32) -> Self {
        RegionInfo {
            argsz,
            index,
            ..RegionInfo::default()
        }
    }

    /// Bytes [`RegionInfo::encode_into`] appends: what a server puts in a full reply's `argsz`.
    pub fn encoded_len(&self) -> usize {
        self.caps
            .iter()
            .fold(Self::HEAD_SIZE, |n, c| n.saturating_add(c.encoded_len()))
    }

    /// Appends the head and, if `caps` is not empty, the chain right after it.
    ///
    /// With caps, the `CAPS` flag is set and `cap_offset` written as 32, whatever the fields
    /// hold; without, both are written as set.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let (flags, cap_offset) = if self.caps.is_empty() {
            (self.flags, self.cap_offset)
        } else {
            (
                self.flags | VFIO_REGION_INFO_FLAG_CAPS,
                Self::HEAD_SIZE as u32,
            )
        };
        put_u32(out, self.argsz);
        put_u32(out, flags);
        put_u32(out, self.index);
        put_u32(out, cap_offset);
        put_u64(out, self.size);
        put_u64(out, self.offset);
        encode_region_caps(&self.caps, Self::HEAD_SIZE as u32, out);
    }

    /// Decodes the 32-byte head only, leaving `caps` empty: for a reply whose `argsz` asks
    /// for more room, where a server may set CAPS and `cap_offset` without sending the chain
    /// (the crates.io `vfio_user` server does).
    pub fn decode_head(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "region info");
        Ok(RegionInfo {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            cap_offset: r.u32()?,
            size: r.u64()?,
            offset: r.u64()?,
            caps: Vec::new(),
        })
    }

    /// Decodes a request or reply.
    ///
    /// Caps are parsed only when the `CAPS` flag is set and `cap_offset` is not 0; the chain
    /// must then start at or after the head (`cap_offset` ≥ 32) and lie within
    /// min(`argsz`, bytes present).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let head = Self::decode_head(payload)?;
        let RegionInfo {
            argsz,
            flags,
            index,
            cap_offset,
            size,
            offset,
            ..
        } = head;
        let caps = if flags & VFIO_REGION_INFO_FLAG_CAPS != 0 && cap_offset != 0 {
            if (cap_offset as usize) < Self::HEAD_SIZE {
                return Err(DecodeError::InvalidField {
                    field: "region info cap_offset",
                    value: u64::from(cap_offset),
                });
            }
            let bound = payload
                .len()
                .min(usize::try_from(argsz).unwrap_or(usize::MAX));
            parse_region_caps(payload.get(..bound).unwrap_or(payload), cap_offset)?
        } else {
            Vec::new()
        };
        Ok(RegionInfo {
            argsz,
            flags,
            index,
            cap_offset,
            size,
            offset,
            caps,
        })
    }
}

/// The size of one sub-region entry in a `DEVICE_GET_REGION_IO_FDS` reply.
///
/// The spec describes 40-byte entries; libvfio-user sends 48-byte ones (a union with shadow
/// memory fields). The decoder takes the stride from the reply, `(argsz - 16) / count`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoFdsLayout {
    /// 40 bytes, as the spec describes: `datamatch` / `user_data` at +32.
    #[default]
    Spec,
    /// 48 bytes, as libvfio-user sends: ioregionfd `user_data` at +32; for other types
    /// `shadow_mem_fd_index` at +28, `shadow_offset` at +32 and `datamatch` at +40.
    LibVfioUser,
    /// Any other stride of at least 28 bytes: only the common fields are read.
    Other {
        /// Entry size in bytes.
        stride: u32,
    },
}

impl IoFdsLayout {
    const COMMON_SIZE: u32 = 28;

    /// The entry size in bytes.
    pub fn stride(self) -> u32 {
        match self {
            IoFdsLayout::Spec => 40,
            IoFdsLayout::LibVfioUser => 48,
            IoFdsLayout::Other { stride } => stride,
        }
    }

    fn from_stride(stride: u32) -> Self {
        match stride {
            40 => IoFdsLayout::Spec,
            48 => IoFdsLayout::LibVfioUser,
            stride => IoFdsLayout::Other { stride },
        }
    }
}

/// One sub-region of a `DEVICE_GET_REGION_IO_FDS` reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoSubregion {
    /// Offset in the region.
    pub offset: u64,
    /// Size of the access (0 = any).
    pub size: u64,
    /// Index of the fd among the reply's fds.
    pub fd_index: u32,
    /// `IoSubregion::TYPE_*`.
    pub kind: u32,
    /// `IoSubregion::FLAG_*` (ioeventfd) or ioregionfd flags.
    pub flags: u32,
    /// `datamatch` (ioeventfd) or `user_data` (ioregionfd); `None` for an unknown stride.
    pub data: Option<u64>,
    /// Shadow memory, as (index of its fd among the reply's fds, offset in that fd): only
    /// for [`IoSubregion::TYPE_IOEVENTFD_SHADOW`] in the libvfio-user layout.
    pub shadow: Option<(u32, u64)>,
}

impl IoSubregion {
    /// [`kind`](Self::kind): an ioeventfd.
    pub const TYPE_IOEVENTFD: u32 = 0;
    /// [`kind`](Self::kind): an ioregionfd.
    pub const TYPE_IOREGIONFD: u32 = 1;
    /// [`kind`](Self::kind) (libvfio-user only): an ioeventfd with shadow memory.
    pub const TYPE_IOEVENTFD_SHADOW: u32 = 2;
    /// ioeventfd [`flags`](Self::flags): `KVM_IOEVENTFD_FLAG_DATAMATCH`.
    pub const FLAG_DATAMATCH: u32 = 1 << 0;
    /// ioeventfd [`flags`](Self::flags): `KVM_IOEVENTFD_FLAG_PIO`.
    pub const FLAG_PIO: u32 = 1 << 1;
    /// ioeventfd [`flags`](Self::flags): `KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY`.
    pub const FLAG_VIRTIO_CCW_NOTIFY: u32 = 1 << 3;
}

impl IoSubregion {
    /// Decodes one entry of `layout`'s stride.
    fn decode(entry: &[u8], layout: IoFdsLayout) -> Result<Self, DecodeError> {
        let mut e = Reader::new(entry, "region io fds entry");
        let offset = e.u64()?;
        let size = e.u64()?;
        let fd_index = e.u32()?;
        let kind = e.u32()?;
        let flags = e.u32()?;
        let (data, shadow) = match layout {
            IoFdsLayout::Spec => {
                e.u32()?;
                (Some(e.u64()?), None)
            }
            IoFdsLayout::LibVfioUser if kind == IoSubregion::TYPE_IOREGIONFD => {
                e.u32()?;
                (Some(e.u64()?), None)
            }
            IoFdsLayout::LibVfioUser => {
                let shadow = (e.u32()?, e.u64()?);
                let data = e.u64()?;
                let shadow = (kind == IoSubregion::TYPE_IOEVENTFD_SHADOW).then_some(shadow);
                (Some(data), shadow)
            }
            IoFdsLayout::Other { .. } => (None, None),
        };
        Ok(IoSubregion {
            offset,
            size,
            fd_index,
            kind,
            flags,
            data,
            shadow,
        })
    }
}

/// The `DEVICE_GET_REGION_IO_FDS` request and reply payload: a 16-byte head and, in a reply,
/// `count` sub-region entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionIoFds {
    /// Request: largest reply payload accepted; reply: payload size of the full answer.
    pub argsz: u32,
    /// Must be 0.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Request: 0; reply: number of sub-regions.
    pub count: u32,
    /// Entry size used by the reply.
    pub layout: IoFdsLayout,
    /// The entries present (fewer than `count` when the reply was truncated).
    pub subregions: Vec<IoSubregion>,
}

impl RegionIoFds {
    /// Size of the head.
    pub const HEAD_SIZE: usize = 16;

    /// The request for region `index`, accepting a reply payload of up to `argsz` bytes.
    pub fn request(index: u32, argsz: u32) -> Self {
        RegionIoFds {
            argsz,
            index,
            ..RegionIoFds::default()
        }
    }

    /// Appends the head as set and every entry in `layout`'s stride (fields a layout does
    /// not have are dropped; an `Other` stride below 28 is written as 28).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags);
        put_u32(out, self.index);
        put_u32(out, self.count);
        for s in &self.subregions {
            let start = out.len();
            put_u64(out, s.offset);
            put_u64(out, s.size);
            put_u32(out, s.fd_index);
            put_u32(out, s.kind);
            put_u32(out, s.flags);
            let data = s.data.unwrap_or(0);
            match self.layout {
                IoFdsLayout::Spec => {
                    put_u32(out, 0);
                    put_u64(out, data);
                }
                IoFdsLayout::LibVfioUser if s.kind == IoSubregion::TYPE_IOREGIONFD => {
                    put_u32(out, 0);
                    put_u64(out, data);
                    put_u64(out, 0);
                }
                IoFdsLayout::LibVfioUser => {
                    let (fd_index, offset) = s.shadow.unwrap_or_default();
                    put_u32(out, fd_index);
                    put_u64(out, offset);
                    put_u64(out, data);
                }
                IoFdsLayout::Other { stride } => {
                    let end = start.saturating_add(stride as usize);
                    if out.len() < end {
                        out.resize(end, 0);
                    }
                }
            }
        }
    }

    /// Decodes a request or reply.
    ///
    /// With `count` > 0 the stride is `(argsz - 16) / count`; it must be at least 28 bytes
    /// ([`DecodeError::InvalidField`]). `datamatch`/`user_data` is read for the 40- and
    /// 48-byte strides only. The entries wholly present are returned, at most `count`; a
    /// truncated reply thus yields fewer entries than `count`.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "region io fds");
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let index = r.u32()?;
        let count = r.u32()?;
        let mut layout = IoFdsLayout::Spec;
        let mut subregions = Vec::new();
        if let Some(stride) = argsz
            .saturating_sub(Self::HEAD_SIZE as u32)
            .checked_div(count)
        {
            if stride < IoFdsLayout::COMMON_SIZE {
                return Err(DecodeError::InvalidField {
                    field: "region io fds stride ((argsz - 16) / count)",
                    value: u64::from(stride),
                });
            }
            layout = IoFdsLayout::from_stride(stride);
            let stride = stride as usize;
            let present = r.remaining() / stride;
            let n = present.min(count as usize);
            subregions.reserve_exact(n);
            for _ in 0..n {
                subregions.push(IoSubregion::decode(r.bytes(stride)?, layout)?);
            }
        }
        Ok(RegionIoFds {
            argsz,
            flags,
            index,
            count,
            layout,
            subregions,
        })
    }
}

/// The `DEVICE_GET_IRQ_INFO` request and reply payload (16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqInfo {
    /// 16.
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*` (0 in a request).
    pub flags: u32,
    /// IRQ type index (PCI: INTX 0, MSI 1, MSIX 2, ERR 3, REQ 4).
    pub index: u32,
    /// Number of vectors (0 in a request).
    pub count: u32,
}

impl IrqInfo {
    /// Size of the payload.
    pub const SIZE: usize = 16;

    /// The request for IRQ type `index`.
    pub fn request(index: u32) -> Self {
        IrqInfo {
            argsz: Self::SIZE as u32,
            index,
            ..IrqInfo::default()
        }
    }

    /// Appends the payload.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags);
        put_u32(out, self.index);
        put_u32(out, self.count);
    }

    /// Decodes a payload; bytes past the structure are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "irq info");
        Ok(IrqInfo {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            count: r.u32()?,
        })
    }
}

/// The `DEVICE_SET_IRQS` request payload. The reply has no payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetIrqs {
    /// Size of the request payload: 20 plus the bool bytes.
    pub argsz: u32,
    /// One `VFIO_IRQ_SET_DATA_*` and one `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// IRQ type index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// With [`VFIO_IRQ_SET_DATA_BOOL`]: one per vector. Empty otherwise.
    pub bools: Vec<bool>,
}

impl SetIrqs {
    /// Size of the payload without bool data.
    pub const HEAD_SIZE: usize = 20;

    /// A request with `argsz` computed from `bools`.
    pub fn new(flags: u32, index: u32, start: u32, count: u32, bools: Vec<bool>) -> Self {
        SetIrqs {
            argsz: len_u32(Self::HEAD_SIZE.saturating_add(bools.len())),
            flags,
            index,
            start,
            count,
            bools,
        }
    }

    /// Appends the payload; `bools` is written as bytes 0/1 when not empty.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags);
        put_u32(out, self.index);
        put_u32(out, self.start);
        put_u32(out, self.count);
        out.extend(self.bools.iter().map(|&b| u8::from(b)));
    }

    /// Decodes a payload. With [`VFIO_IRQ_SET_DATA_BOOL`] exactly `count` bytes must follow the
    /// head ([`DecodeError::LengthMismatch`]); any non-zero byte is `true`. Without it, bytes
    /// past the head are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "set irqs");
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let index = r.u32()?;
        let start = r.u32()?;
        let count = r.u32()?;
        let bools = if flags & VFIO_IRQ_SET_DATA_BOOL != 0 {
            let data = exact_data(
                "set irqs bools",
                Self::HEAD_SIZE,
                r.rest(),
                u64::from(count),
            )?;
            data.iter().map(|&b| b != 0).collect()
        } else {
            Vec::new()
        };
        Ok(SetIrqs {
            argsz,
            flags,
            index,
            start,
            count,
            bools,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_bindings::bindings::vfio::{
        vfio_region_sparse_mmap_area, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET,
        VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
        VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_REGION_INFO_FLAG_CAPS,
        VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
    };

    #[test]
    fn device_info_and_irq_info() {
        let d = DeviceInfo {
            argsz: 16,
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: 9,
            num_irqs: 5,
        };
        let mut out = Vec::new();
        d.encode_into(&mut out);
        assert_eq!(out.len(), DeviceInfo::SIZE);
        assert_eq!(DeviceInfo::decode(&out), Ok(d));
        assert!(matches!(
            DeviceInfo::decode(&out[..12]),
            Err(DecodeError::Short { .. })
        ));
        let i = IrqInfo {
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: 32,
            ..IrqInfo::request(2)
        };
        let mut out = Vec::new();
        i.encode_into(&mut out);
        assert_eq!(IrqInfo::decode(&out), Ok(i));
    }

    #[test]
    fn region_info_request_and_reply_with_caps() {
        let rq = RegionInfo::request(7, 32);
        let mut out = Vec::new();
        rq.encode_into(&mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(RegionInfo::decode(&out), Ok(rq));

        let mut reply = RegionInfo {
            argsz: 0,
            flags: VFIO_REGION_INFO_FLAG_READ
                | VFIO_REGION_INFO_FLAG_WRITE
                | VFIO_REGION_INFO_FLAG_MMAP
                | VFIO_REGION_INFO_FLAG_CAPS,
            index: 0,
            cap_offset: 32,
            size: 0x4000,
            offset: 0,
            caps: vec![RegionCap::SparseMmap(vec![vfio_region_sparse_mmap_area {
                offset: 0,
                size: 0x4000,
            }])],
        };
        reply.argsz = reply.encoded_len() as u32;
        let mut out = Vec::new();
        reply.encode_into(&mut out);
        assert_eq!(out.len(), 32 + 16 + 16);
        assert_eq!(RegionInfo::decode(&out), Ok(reply.clone()));
        // argsz smaller than the chain: the chain is cut off at argsz.
        let mut cut = out.clone();
        cut[..4].copy_from_slice(&40u32.to_ne_bytes());
        assert!(RegionInfo::decode(&cut).is_err());
        // CAPS not set: the chain is not parsed.
        cut[4..8].copy_from_slice(&VFIO_REGION_INFO_FLAG_MMAP.to_ne_bytes());
        assert_eq!(RegionInfo::decode(&cut).map(|r| r.caps), Ok(vec![]));
        // cap_offset inside the head.
        let mut bad = out.clone();
        bad[12..16].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(
            RegionInfo::decode(&bad),
            Err(DecodeError::InvalidField { value: 8, .. })
        ));
    }

    fn io_fds_head(out: &mut Vec<u8>, argsz: u32, count: u32) {
        put_u32(out, argsz);
        put_u32(out, 0);
        put_u32(out, 3);
        put_u32(out, count);
    }

    #[test]
    fn io_fds_spec_40_byte_entries() {
        let mut p = Vec::new();
        io_fds_head(&mut p, 16 + 2 * 40, 2);
        for (i, kind) in [IoSubregion::TYPE_IOEVENTFD, IoSubregion::TYPE_IOREGIONFD]
            .into_iter()
            .enumerate()
        {
            put_u64(&mut p, 0x100 * i as u64);
            put_u64(&mut p, 4);
            put_u32(&mut p, i as u32);
            put_u32(&mut p, kind);
            put_u32(&mut p, IoSubregion::FLAG_DATAMATCH);
            put_u32(&mut p, 0);
            put_u64(&mut p, 0xdead + i as u64);
        }
        let d = RegionIoFds::decode(&p).unwrap();
        assert_eq!(d.layout, IoFdsLayout::Spec);
        assert_eq!(d.subregions.len(), 2);
        assert_eq!(d.subregions[0].data, Some(0xdead));
        assert_eq!(d.subregions[1].offset, 0x100);
        assert_eq!(d.subregions[1].kind, IoSubregion::TYPE_IOREGIONFD);
        assert_eq!(d.subregions[1].data, Some(0xdeae));
        let mut out = Vec::new();
        d.encode_into(&mut out);
        assert_eq!(out, p);
    }

    #[test]
    fn io_fds_libvfio_user_48_byte_entries() {
        // As libvfio-user's vfio_user_sub_region_ioeventfd: shadow fields at +28 and +32,
        // datamatch at +40.
        let mut p = Vec::new();
        io_fds_head(&mut p, 16 + 2 * 48, 2);
        put_u64(&mut p, 0x10);
        put_u64(&mut p, 4);
        put_u32(&mut p, 0);
        put_u32(&mut p, IoSubregion::TYPE_IOEVENTFD);
        put_u32(&mut p, IoSubregion::FLAG_DATAMATCH);
        put_u32(&mut p, 0);
        put_u64(&mut p, 0);
        put_u64(&mut p, 0x1234);
        put_u64(&mut p, 0x20);
        put_u64(&mut p, 8);
        put_u32(&mut p, 1);
        put_u32(&mut p, IoSubregion::TYPE_IOEVENTFD_SHADOW);
        put_u32(&mut p, 0);
        put_u32(&mut p, 2);
        put_u64(&mut p, 0x3000);
        put_u64(&mut p, 0x5678);
        let d = RegionIoFds::decode(&p).unwrap();
        assert_eq!(d.layout, IoFdsLayout::LibVfioUser);
        assert_eq!(d.subregions[0].data, Some(0x1234));
        assert_eq!(d.subregions[0].shadow, None);
        assert_eq!(d.subregions[1].data, Some(0x5678));
        assert_eq!(d.subregions[1].shadow, Some((2, 0x3000)));
        let mut out = Vec::new();
        d.encode_into(&mut out);
        assert_eq!(out, p);
    }

    #[test]
    fn io_fds_truncated_odd_stride_and_bad_stride() {
        // The server needs 16 + 3 * 40 bytes but sent only the head: no entries, count 3.
        let mut p = Vec::new();
        io_fds_head(&mut p, 16 + 3 * 40, 3);
        let d = RegionIoFds::decode(&p).unwrap();
        assert_eq!((d.count, d.subregions.len()), (3, 0));
        // A 32-byte stride: common fields only.
        let mut p = Vec::new();
        io_fds_head(&mut p, 16 + 32, 1);
        p.extend_from_slice(&[0; 32]);
        let d = RegionIoFds::decode(&p).unwrap();
        assert_eq!(d.layout, IoFdsLayout::Other { stride: 32 });
        assert_eq!(d.subregions[0].data, None);
        // count larger than argsz allows.
        let mut p = Vec::new();
        io_fds_head(&mut p, 16 + 40, u32::MAX);
        assert!(matches!(
            RegionIoFds::decode(&p),
            Err(DecodeError::InvalidField { value: 0, .. })
        ));
    }

    #[test]
    fn set_irqs_bools_and_eventfds() {
        let s = SetIrqs::new(
            VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_MASK,
            2,
            4,
            3,
            vec![true, false, true],
        );
        let mut out = Vec::new();
        s.encode_into(&mut out);
        assert_eq!(out.len(), 23);
        assert_eq!(out[20..], [1, 0, 1]);
        assert_eq!(SetIrqs::decode(&out), Ok(s));
        assert!(matches!(
            SetIrqs::decode(&out[..22]),
            Err(DecodeError::LengthMismatch {
                expected: 23,
                got: 22,
                ..
            })
        ));
        let e = SetIrqs::new(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            2,
            0,
            8,
            vec![],
        );
        let mut out = Vec::new();
        e.encode_into(&mut out);
        assert_eq!(SetIrqs::decode(&out), Ok(e));
    }
}
