// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `region_info`: a DEVICE_GET_REGION_INFO reply and its capability chain, decoded the way
//! discovery decodes them (the head first, then the whole reply).

use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_CAPS;
use vfio_user_client::protocol::{RegionCap, RegionInfo};

use super::input::Input;

/// The `region_info` target. The first byte chooses the shape: even, the rest is a whole
/// reply payload; odd, a head with CAPS set is made from the next 3 bytes (`argsz` as an
/// offset from the end, `cap_offset` past the head) and the rest is the chain area, so
/// the fuzzer spends its time on chains.
pub fn region_info(data: &[u8]) {
    let mut input = Input::new(data);
    if input.u8() & 1 == 0 {
        region_info_payload(input.rest());
        return;
    }
    let shrink = u32::from(input.u8());
    let cap_offset = RegionInfo::HEAD_SIZE as u32 + u32::from(input.u16() & 0x3ff);
    let chain = input.rest();
    let len = RegionInfo::HEAD_SIZE + chain.len();
    let mut payload = Vec::with_capacity(len);
    RegionInfo {
        argsz: (len as u32).saturating_sub(shrink),
        flags: VFIO_REGION_INFO_FLAG_CAPS,
        index: 0,
        cap_offset,
        size: 0x1_0000,
        offset: 0,
        caps: Vec::new(),
    }
    .encode_into(&mut payload);
    payload.extend_from_slice(chain);
    region_info_payload(&payload);
}

/// Decodes a REGION_INFO payload as discovery does and checks what comes out.
pub(crate) fn region_info_payload(p: &[u8]) {
    let head = RegionInfo::decode_head(p);
    let info = match RegionInfo::decode(p) {
        Ok(info) => info,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let head = head.expect("decode succeeded where decode_head failed");
    assert_eq!(
        (head.argsz, head.flags, head.index, head.cap_offset),
        (info.argsz, info.flags, info.index, info.cap_offset)
    );
    assert_eq!((head.size, head.offset), (info.size, info.offset));
    // Each capability has an 8-byte header inside the bytes present, at distinct,
    // increasing offsets: no more of them than fit, and no area more than the bytes hold.
    assert!(info.caps.len() * 8 <= p.len().saturating_sub(RegionInfo::HEAD_SIZE));
    for cap in &info.caps {
        if let RegionCap::SparseMmap(areas) = cap {
            assert!(16 + areas.len() * 16 <= p.len());
        }
    }
    // Re-encoded (the chain laid out after the head, argsz covering it), the reply decodes
    // to the same value.
    let mut expect = info.clone();
    if !expect.caps.is_empty() {
        let len = u32::try_from(expect.encoded_len()).expect("chain fits in u32");
        expect.argsz = expect.argsz.max(len);
        expect.cap_offset = RegionInfo::HEAD_SIZE as u32;
        expect.flags |= VFIO_REGION_INFO_FLAG_CAPS;
    }
    let mut out = Vec::new();
    expect.encode_into(&mut out);
    assert_eq!(RegionInfo::decode(&out).as_ref(), Ok(&expect));
}
