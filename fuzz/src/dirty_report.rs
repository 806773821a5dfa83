// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `dirty_report`: a DMA_LOGGING_REPORT reply, checked and copied into the bitmap of a
//! range of guest memory as `Migration::dirty_report` does, for one of the reports the
//! range is split into. The reply is arbitrary, or a well-formed head (echoing the request)
//! with an arbitrary bitmap; its bitmap comes with the payload or, as when it had the size
//! asked, in the report buffer.

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_GET,
};
use vfio_user_client::fuzzing::{dirty_bitmap, take_report};
use vfio_user_client::migration::DirtyRange;
use vfio_user_client::protocol::{DeviceFeature, DmaLoggingReport};

use super::input::Input;

/// Mode bit: the reply's head is made well-formed; the input's rest is its bitmap.
pub const WELL_FORMED: u8 = 1;
/// Mode bit: the bitmap arrives in the report buffer, apart from the payload.
pub const IN_BUFFER: u8 = 2;
/// Bytes of a reply before its bitmap.
const HEAD: usize = DeviceFeature::HEAD_SIZE + DmaLoggingReport::HEAD_SIZE;

/// The `dirty_report` target.
pub fn dirty_report(data: &[u8]) {
    let mut input = Input::new(data);
    let page_size = 1u64 << (12 + input.u8() % 10);
    let pages = u64::from(input.u16() % 4096) + 1;
    let per_report = 64 * (u64::from(input.u8() % 8) + 1);
    let first = u64::from(input.u8()) % pages.div_ceil(per_report) * per_report;
    let n = (pages - first).min(per_report);
    let mode = input.u8();
    let iova = u64::from(input.u32()) * page_size;
    let gpa = u64::from(input.u32()) * page_size;
    let rest = input.rest();
    let mut range = DirtyRange {
        iova,
        gpa,
        len: pages * page_size,
        bitmap: vec![0; pages.div_ceil(64) as usize],
    };
    let rq = DmaLoggingReport {
        iova: iova + first * page_size,
        length: n * page_size,
        page_size,
        bitmap: Vec::new(),
    };
    let (payload, in_buffer) = reply(&rq, mode, rest);
    let result = take_report(&payload, in_buffer, &rq, &mut range, first, n);
    if result.is_err() {
        assert!(
            range.bitmap.iter().all(|w| *w == 0),
            "{result:?}: bits kept"
        );
        return;
    }
    let expected = n.div_ceil(64) as usize * 8;
    let bits = in_buffer.unwrap_or_else(|| &payload[HEAD.min(payload.len())..]);
    assert_eq!(bits.len(), expected, "a bitmap of another size accepted");
    check_bits(&range, first, n, bits);
    let bitmap = dirty_bitmap(page_size, vec![range]);
    let dirty: Vec<u64> = bitmap.dirty_pages().collect();
    assert_eq!(dirty.len() as u64, bitmap.count());
    assert!(bitmap.count() <= n);
    for page in dirty {
        assert!(page >= gpa + first * page_size && page < gpa + (first + n) * page_size);
        assert!(bitmap.is_dirty(page), "{page:#x}");
    }
}

/// The reply payload and, with [`IN_BUFFER`], the bitmap received apart.
fn reply<'a>(rq: &DmaLoggingReport, mode: u8, rest: &'a [u8]) -> (Vec<u8>, Option<&'a [u8]>) {
    if mode & WELL_FORMED == 0 {
        if mode & IN_BUFFER == 0 {
            return (rest.to_vec(), None);
        }
        let (head, bits) = rest.split_at(HEAD.min(rest.len()));
        return (head.to_vec(), Some(bits));
    }
    let mut data = Vec::new();
    rq.encode_into(&mut data);
    if mode & IN_BUFFER == 0 {
        data.extend_from_slice(rest);
    }
    let mut payload = Vec::new();
    DeviceFeature::new(
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
        VFIO_DEVICE_FEATURE_GET,
        data,
        0,
    )
    .encode_into(&mut payload);
    (payload, (mode & IN_BUFFER != 0).then_some(rest))
}

/// The range's bitmap holds `bits` (native-endian words) for pages `first..first + n`,
/// and nothing elsewhere.
fn check_bits(range: &DirtyRange, first: u64, n: u64, bits: &[u8]) {
    for (w, word) in range.bitmap.iter().enumerate() {
        for b in 0..64u64 {
            let page = w as u64 * 64 + b;
            let set = word & (1 << b) != 0;
            let want = page >= first && page < first + n && {
                let at = ((page - first) / 64 * 8) as usize;
                let mut sent = [0u8; 8];
                sent.copy_from_slice(&bits[at..at + 8]);
                u64::from_ne_bytes(sent) & (1 << ((page - first) % 64)) != 0
            };
            assert_eq!(set, want, "page {page}");
        }
    }
}
