// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `snapshot`: a saved device's container (`VfioUserPciDevice::save`'s format) read from
//! arbitrary bytes as `restore` reads it: magic, version, flags, the PCI state as JSON, the
//! device data chunks and the trailer.

use vfio_user_client::fuzzing::{read_snapshot, write_snapshot};

/// The `snapshot` target.
pub fn snapshot(input: &[u8]) {
    let mut data = Vec::new();
    let Ok((state, total, used)) = read_snapshot(input, &mut data) else {
        return;
    };
    assert_eq!(
        total,
        data.len() as u64,
        "the device data and its count differ"
    );
    assert!(used <= input.len());
    // What was read, written again, reads back the same and ends where it was written.
    let mut container = write_snapshot(&state, &data).expect("a read state is written");
    let len = container.len();
    container.extend_from_slice(&input[used..]);
    let mut again = Vec::new();
    let read = read_snapshot(&container, &mut again).expect("a written container reads");
    assert_eq!(read, (state, total, len));
    assert_eq!(again, data);
}
