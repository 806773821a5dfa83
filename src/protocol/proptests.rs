// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Property tests: every message survives encode → decode, and no decoder panics on
//! arbitrary bytes.

use proptest::collection::vec;
use proptest::prelude::*;

use super::region_caps::{encode_region_caps, parse_region_caps};
use super::*;
use vfio_bindings::bindings::vfio::{
    vfio_device_feature_dma_logging_range, vfio_region_sparse_mmap_area,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_IRQ_SET_DATA_BOOL, VFIO_REGION_INFO_FLAG_CAPS,
};

fn round_trip<T, E, D>(value: &T, encode: E, decode: D)
where
    T: PartialEq + std::fmt::Debug,
    E: Fn(&T, &mut Vec<u8>),
    D: Fn(&[u8]) -> Result<T, DecodeError>,
{
    let mut out = Vec::new();
    encode(value, &mut out);
    assert_eq!(decode(&out).as_ref(), Ok(value));
}

fn region_cap() -> impl Strategy<Value = RegionCap> {
    prop_oneof![
        vec((any::<u64>(), any::<u64>()), 0..4).prop_map(|a| RegionCap::SparseMmap(
            a.into_iter()
                .map(|(offset, size)| vfio_region_sparse_mmap_area { offset, size })
                .collect()
        )),
        (any::<u32>(), any::<u32>()).prop_map(|(region_type, subtype)| RegionCap::Type {
            region_type,
            subtype
        }),
        Just(RegionCap::MsixMappable),
        (4u16.., any::<u16>()).prop_map(|(id, version)| RegionCap::Unknown { id, version }),
    ]
}

fn io_fds_layout() -> impl Strategy<Value = IoFdsLayout> {
    prop_oneof![
        Just(IoFdsLayout::Spec),
        Just(IoFdsLayout::LibVfioUser),
        (28u32..80)
            .prop_filter("not a known stride", |s| *s != 40 && *s != 48)
            .prop_map(|stride| IoFdsLayout::Other { stride }),
    ]
}

/// A sub-region as the decoder reports it for `layout`.
fn canonical(layout: IoFdsLayout, mut s: IoSubregion) -> IoSubregion {
    match layout {
        IoFdsLayout::Spec => s.shadow = None,
        IoFdsLayout::LibVfioUser if s.kind == IoSubregion::TYPE_IOEVENTFD_SHADOW => {
            s.shadow = Some(s.shadow.unwrap_or_default())
        }
        IoFdsLayout::LibVfioUser => s.shadow = None,
        IoFdsLayout::Other { .. } => {
            s.data = None;
            s.shadow = None;
        }
    }
    if !matches!(layout, IoFdsLayout::Other { .. }) {
        s.data = Some(s.data.unwrap_or(0));
    }
    s
}

fn io_subregion() -> impl Strategy<Value = IoSubregion> {
    (
        (any::<u64>(), any::<u64>(), any::<u32>()),
        prop_oneof![Just(0u32), Just(1), Just(2), any::<u32>()],
        any::<u32>(),
        any::<Option<u64>>(),
        any::<Option<(u32, u64)>>(),
    )
        .prop_map(
            |((offset, size, fd_index), kind, flags, data, shadow)| IoSubregion {
                offset,
                size,
                fd_index,
                kind,
                flags,
                data,
                shadow,
            },
        )
}

/// An optional bitmap: `(size, data)` where data is empty (request) or `size` bytes (reply).
fn bitmap() -> impl Strategy<Value = (u64, Vec<u8>)> {
    prop_oneof![
        any::<u64>().prop_map(|size| (size, Vec::new())),
        vec(any::<u8>(), 1..32).prop_map(|d| (d.len() as u64, d)),
    ]
}

proptest! {
    #[test]
    fn version_round_trip(major: u16, minor: u16, json in proptest::option::of("[^\u{0}]{0,40}")) {
        round_trip(&Version { major, minor, json }, Version::encode_into, Version::decode);
    }

    #[test]
    fn dma_map_round_trip(argsz: u32, flags: u32, offset: u64, address: u64, size: u64) {
        round_trip(&DmaMap { argsz, flags, offset, address, size }, DmaMap::encode_into, DmaMap::decode);
    }

    #[test]
    fn dma_unmap_round_trip(argsz: u32, flags: u32, address: u64, size: u64, pgsize: u64, bm in bitmap()) {
        let bitmap = (flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0)
            .then_some(UnmapBitmap { pgsize, size: bm.0, data: bm.1 });
        round_trip(&DmaUnmap { argsz, flags, address, size, bitmap }, DmaUnmap::encode_into, DmaUnmap::decode);
    }

    #[test]
    fn dma_access_round_trip(address: u64, count: u64, data in vec(any::<u8>(), 0..64)) {
        round_trip(&DmaAccess { address, count }, DmaAccess::encode_into, DmaAccess::decode);
        let head = DmaAccess { address, count: data.len() as u64 };
        let mut out = Vec::new();
        head.encode_with_data(&data, &mut out);
        prop_assert_eq!(DmaAccess::decode_with_data(&out), Ok((head, &data[..])));
    }

    #[test]
    fn device_info_round_trip(argsz: u32, flags: u32, num_regions: u32, num_irqs: u32) {
        round_trip(&DeviceInfo { argsz, flags, num_regions, num_irqs }, DeviceInfo::encode_into, DeviceInfo::decode);
    }

    #[test]
    fn region_info_round_trip(
        slack in 0u32..64, flags: u32, index: u32, cap_offset: u32, size: u64, offset: u64,
        caps in vec(region_cap(), 0..4),
    ) {
        let mut info = RegionInfo { argsz: 0, flags, index, cap_offset, size, offset, caps };
        if info.caps.is_empty() {
            info.flags &= !VFIO_REGION_INFO_FLAG_CAPS;
        } else {
            info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
            info.cap_offset = RegionInfo::HEAD_SIZE as u32;
        }
        info.argsz = info.encoded_len() as u32 + slack;
        round_trip(&info, RegionInfo::encode_into, RegionInfo::decode);
    }

    #[test]
    fn region_caps_round_trip(pad in 1usize..40, caps in vec(region_cap(), 0..5)) {
        let mut out = vec![0u8; pad];
        encode_region_caps(&caps, pad as u32, &mut out);
        let start = if caps.is_empty() { 0 } else { pad as u32 };
        prop_assert_eq!(parse_region_caps(&out, start), Ok(caps));
    }

    #[test]
    fn region_io_fds_round_trip(
        layout in io_fds_layout(), flags: u32, index: u32, slack in 0u32..4,
        subs in vec(io_subregion(), 0..4), argsz: u32,
    ) {
        let n = subs.len() as u32;
        let (layout, argsz) = if n == 0 {
            (IoFdsLayout::Spec, argsz)
        } else {
            // Slack below one entry per entry keeps (argsz - 16) / count at the stride.
            (layout, 16 + layout.stride() * n + slack.min(n - 1))
        };
        let subregions = subs.into_iter().map(|s| canonical(layout, s)).collect();
        let msg = RegionIoFds { argsz, flags, index, count: n, layout, subregions };
        round_trip(&msg, RegionIoFds::encode_into, RegionIoFds::decode);
    }

    #[test]
    fn irq_info_round_trip(argsz: u32, flags: u32, index: u32, count: u32) {
        round_trip(&IrqInfo { argsz, flags, index, count }, IrqInfo::encode_into, IrqInfo::decode);
    }

    #[test]
    fn set_irqs_round_trip(argsz: u32, flags: u32, index: u32, start: u32, count: u32, bools in vec(any::<bool>(), 0..40)) {
        let (count, bools) = if flags & VFIO_IRQ_SET_DATA_BOOL != 0 {
            (bools.len() as u32, bools)
        } else {
            (count, Vec::new())
        };
        round_trip(&SetIrqs { argsz, flags, index, start, count, bools }, SetIrqs::encode_into, SetIrqs::decode);
    }

    #[test]
    fn region_access_round_trip(offset: u64, region: u32, count: u32, data in vec(any::<u8>(), 0..64)) {
        round_trip(&RegionAccess { offset, region, count }, RegionAccess::encode_into, RegionAccess::decode);
        let head = RegionAccess { offset, region, count: data.len() as u32 };
        let mut out = Vec::new();
        head.encode_with_data(&data, &mut out);
        prop_assert_eq!(RegionAccess::decode_with_data(&out), Ok((head, &data[..])));
    }

    #[test]
    fn region_write_multi_round_trip(
        writes in vec((any::<u64>(), any::<u32>(), 0u32..=8, any::<[u8; 8]>()), 0..8),
        wr_cnt: u64,
    ) {
        let writes = writes
            .into_iter()
            .map(|(offset, region, count, data)| WriteMultiEntry { offset, region, count, data })
            .collect();
        round_trip(&RegionWriteMulti { writes }, RegionWriteMulti::encode_into, RegionWriteMulti::decode);
        let mut out = Vec::new();
        RegionWriteMulti::encode_reply(wr_cnt, &mut out);
        prop_assert_eq!(RegionWriteMulti::decode_reply(&out), Ok(wr_cnt));
    }

    #[test]
    fn device_feature_round_trip(argsz: u32, flags: u32, data in vec(any::<u8>(), 0..64)) {
        round_trip(&DeviceFeature { argsz, flags, data }, DeviceFeature::encode_into, DeviceFeature::decode);
    }

    #[test]
    fn feature_data_round_trip(
        mflags: u64, device_state: u32, data_fd: u32, page_size: u64,
        ranges in vec((any::<u64>(), any::<u64>()), 0..5),
        iova: u64, length: u64, bitmap in vec(any::<u8>(), 0..32),
    ) {
        round_trip(&MigrationFeature { flags: mflags }, MigrationFeature::encode_into, MigrationFeature::decode);
        round_trip(&MigDeviceState { device_state, data_fd }, MigDeviceState::encode_into, MigDeviceState::decode);
        let ranges = ranges.into_iter().map(|(iova, length)| vfio_device_feature_dma_logging_range { iova, length }).collect();
        round_trip(&DmaLoggingStart { page_size, ranges }, DmaLoggingStart::encode_into, DmaLoggingStart::decode);
        round_trip(
            &DmaLoggingReport { iova, length, page_size, bitmap },
            DmaLoggingReport::encode_into,
            DmaLoggingReport::decode,
        );
    }

    #[test]
    fn mig_data_round_trip(argsz: u32, size: u32, data in vec(any::<u8>(), 0..64), pad in vec(any::<u8>(), 0..8)) {
        round_trip(&MigData { argsz, size }, MigData::encode_into, MigData::decode);
        let head = MigData { argsz, size: data.len() as u32 };
        let mut out = Vec::new();
        head.encode_with_data(&data, &mut out);
        prop_assert_eq!(MigData::decode_with_data(&out), Ok((head, &data[..])));
        out.extend_from_slice(&pad);
        prop_assert_eq!(MigData::decode_with_data_prefix(&out), Ok((head, &data[..])));
    }

    #[test]
    fn decoders_never_panic(bytes in vec(any::<u8>(), 0..512), cap_offset: u32, small_offset in 0u32..520) {
        let _ = Version::decode(&bytes);
        let _ = DmaMap::decode(&bytes);
        let _ = DmaUnmap::decode(&bytes);
        let _ = DmaAccess::decode(&bytes);
        let _ = DmaAccess::decode_with_data(&bytes);
        let _ = DeviceInfo::decode(&bytes);
        let _ = RegionInfo::decode(&bytes);
        let _ = parse_region_caps(&bytes, cap_offset);
        let _ = parse_region_caps(&bytes, small_offset);
        let _ = RegionIoFds::decode(&bytes);
        let _ = IrqInfo::decode(&bytes);
        let _ = SetIrqs::decode(&bytes);
        let _ = RegionAccess::decode(&bytes);
        let _ = RegionAccess::decode_with_data(&bytes);
        let _ = RegionWriteMulti::decode(&bytes);
        let _ = RegionWriteMulti::decode_reply(&bytes);
        let _ = DeviceFeature::decode(&bytes);
        let _ = MigrationFeature::decode(&bytes);
        let _ = MigDeviceState::decode(&bytes);
        let _ = DmaLoggingStart::decode(&bytes);
        let _ = DmaLoggingReport::decode(&bytes);
        let _ = MigData::decode(&bytes);
        let _ = MigData::decode_with_data(&bytes);
        let _ = MigData::decode_with_data_prefix(&bytes);
        let _ = crate::negotiate::Capabilities::from_reply(&crate::negotiate::Offer::default(), &bytes);
    }

    #[test]
    fn region_info_with_arbitrary_chain_never_panics(
        head in vec(any::<u8>(), 32..33), chain in vec(any::<u8>(), 0..256), flags: u32, cap_offset in 0u32..300,
    ) {
        let mut p = head;
        p.splice(4..8, (flags | VFIO_REGION_INFO_FLAG_CAPS).to_ne_bytes());
        p.splice(12..16, cap_offset.to_ne_bytes());
        p.extend_from_slice(&chain);
        let _ = RegionInfo::decode(&p);
    }

    #[test]
    fn negotiation_never_panics_on_json(json in "\\PC{0,80}", major in 0u16..2, minor in 0u16..2) {
        let mut p = Vec::new();
        Version { major, minor, json: Some(json) }.encode_into(&mut p);
        let _ = crate::negotiate::Capabilities::from_reply(&crate::negotiate::Offer::default(), &p);
    }
}
