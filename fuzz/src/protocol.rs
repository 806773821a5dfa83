// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `protocol_decode`: every decoder of `vfio_user_client::protocol`, chosen by the first
//! byte. A decoder must not panic or allocate more than the bytes present justify, and
//! what it accepts must survive encode → decode unchanged.

use std::fmt::Debug;

use vfio_user_client::protocol::{
    DecodeError, DeviceFeature, DeviceInfo, DmaAccess, DmaLoggingReport, DmaLoggingStart, DmaMap,
    DmaUnmap, Header, IrqInfo, MigData, MigDeviceState, MigrationFeature, RegionAccess,
    RegionIoFds, RegionWriteMulti, SetIrqs, Version, WriteMultiEntry,
};

/// The decoders, in selector order (the first input byte modulo the count).
pub const DECODERS: &[(&str, super::Body)] = &[
    ("header", header),
    ("version", |p| {
        round_trip(p, Version::decode, Version::encode_into);
    }),
    ("device_info", |p| {
        round_trip(p, DeviceInfo::decode, DeviceInfo::encode_into);
    }),
    ("region_info", super::region_info::region_info_payload),
    ("region_io_fds", region_io_fds),
    ("irq_info", |p| {
        round_trip(p, IrqInfo::decode, IrqInfo::encode_into);
    }),
    ("set_irqs", set_irqs),
    ("dma_map", |p| {
        round_trip(p, DmaMap::decode, DmaMap::encode_into);
    }),
    ("dma_unmap", dma_unmap),
    ("dma_access", dma_access),
    ("region_access", region_access),
    ("region_write_multi", region_write_multi),
    ("region_write_multi_reply", |p| {
        round_trip(p, RegionWriteMulti::decode_reply, |c, out| {
            RegionWriteMulti::encode_reply(*c, out)
        });
    }),
    ("device_feature", |p| {
        if let Some(f) = round_trip(p, DeviceFeature::decode, DeviceFeature::encode_into) {
            assert_eq!(f.feature(), f.flags & 0xffff);
        }
    }),
    ("migration_feature", |p| {
        round_trip(p, MigrationFeature::decode, MigrationFeature::encode_into);
    }),
    ("mig_device_state", |p| {
        if let Some(s) = round_trip(p, MigDeviceState::decode, MigDeviceState::encode_into) {
            if let Some(state) = s.state() {
                assert_eq!(state as u32, s.device_state);
            }
        }
    }),
    ("dma_logging_start", dma_logging_start),
    ("dma_logging_report", |p| {
        round_trip(p, DmaLoggingReport::decode, DmaLoggingReport::encode_into);
    }),
    ("mig_data", mig_data),
];

/// The `protocol_decode` target.
pub fn protocol_decode(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let (_, decode) = DECODERS[usize::from(selector) % DECODERS.len()];
    decode(payload);
}

/// Decodes `payload`; when that succeeds, encodes the value and checks that it decodes to
/// the same value. Errors must format.
pub(crate) fn round_trip<T: PartialEq + Debug>(
    payload: &[u8],
    decode: fn(&[u8]) -> Result<T, DecodeError>,
    encode: fn(&T, &mut Vec<u8>),
) -> Option<T> {
    match decode(payload) {
        Ok(value) => {
            let mut out = Vec::new();
            encode(&value, &mut out);
            assert_eq!(decode(&out).as_ref(), Ok(&value), "re-decoding {out:02x?}");
            Some(value)
        }
        Err(e) => {
            let _ = e.to_string();
            None
        }
    }
}

fn header(p: &[u8]) {
    let strict = Header::decode(p, 4096);
    match Header::decode(p, u32::MAX) {
        Ok(h) => {
            assert!(h.size as usize >= Header::SIZE);
            assert_eq!(Header::decode(&h.to_bytes(), u32::MAX), Ok(h));
            let mut out = Vec::new();
            h.encode_into(&mut out);
            assert_eq!(out, h.to_bytes());
            assert_eq!(h.payload_len(), h.size as usize - Header::SIZE);
            let _ = (
                h.to_string(),
                h.is_command(),
                h.is_reply(),
                h.known_command(),
            );
            match strict {
                Ok(s) => assert_eq!(s, h),
                Err(e) => assert!(h.size > 4096, "{e}"),
            }
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(strict.is_err());
        }
    }
}

fn region_io_fds(p: &[u8]) {
    let Some(io) = round_trip(p, RegionIoFds::decode, RegionIoFds::encode_into) else {
        return;
    };
    assert!(io.subregions.len() <= io.count as usize);
    if io.count > 0 {
        assert!(io.layout.stride() >= 28);
        let entries = io.subregions.len() * io.layout.stride() as usize;
        assert!(RegionIoFds::HEAD_SIZE + entries <= p.len());
    }
}

fn set_irqs(p: &[u8]) {
    if let Some(s) = round_trip(p, SetIrqs::decode, SetIrqs::encode_into) {
        assert!(s.bools.is_empty() || s.bools.len() == s.count as usize);
    }
}

fn dma_unmap(p: &[u8]) {
    if let Some(u) = round_trip(p, DmaUnmap::decode, DmaUnmap::encode_into) {
        if let Some(b) = &u.bitmap {
            assert!(b.data.is_empty() || b.data.len() as u64 == b.size);
        }
    }
}

fn dma_access(p: &[u8]) {
    let head = DmaAccess::decode(p);
    let Ok((a, data)) = DmaAccess::decode_with_data(p) else {
        return;
    };
    assert_eq!(head, Ok(a));
    assert_eq!(data.len() as u64, a.count);
    let mut out = Vec::new();
    a.encode_with_data(data, &mut out);
    assert_eq!(out, p);
}

fn region_access(p: &[u8]) {
    let head = RegionAccess::decode(p);
    let Ok((a, data)) = RegionAccess::decode_with_data(p) else {
        return;
    };
    assert_eq!(head, Ok(a));
    assert_eq!(data.len(), a.count as usize);
    let mut out = Vec::new();
    a.encode_with_data(data, &mut out);
    assert_eq!(out, p);
}

fn region_write_multi(p: &[u8]) {
    if let Some(m) = round_trip(p, RegionWriteMulti::decode, RegionWriteMulti::encode_into) {
        assert_eq!(8 + m.writes.len() * WriteMultiEntry::SIZE, p.len());
        for w in &m.writes {
            assert_eq!(w.bytes().len(), w.count as usize);
        }
    }
}

fn dma_logging_start(p: &[u8]) {
    if let Some(s) = round_trip(p, DmaLoggingStart::decode, DmaLoggingStart::encode_into) {
        assert!(16 + s.ranges.len() * 16 <= p.len());
    }
}

fn mig_data(p: &[u8]) {
    let head = MigData::decode(p);
    if let Ok((m, data)) = MigData::decode_with_data(p) {
        assert_eq!(head, Ok(m));
        assert_eq!(data.len(), m.size as usize);
        let mut out = Vec::new();
        m.encode_with_data(data, &mut out);
        assert_eq!(out, p);
    }
    if let Ok((m, data)) = MigData::decode_with_data_prefix(p) {
        assert_eq!(head, Ok(m));
        assert_eq!(data.len(), m.size as usize);
        let mut out = Vec::new();
        m.encode_with_data(data, &mut out);
        assert_eq!(MigData::decode_with_data(&out), Ok((m, data)));
    }
}
