// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `negotiate_reply`: the server's VERSION reply checked against an arbitrary offer
//! (`Capabilities::from_reply`).

use vfio_user_client::negotiate::{Capabilities, MigrationCaps, Offer};
use vfio_user_client::protocol::Version;

use super::input::Input;

/// Bytes of the offer at the front of an input: flags, then the offer's fields.
pub const OFFER_LEN: usize = 1 + 4 + 4 + 8 + 4 + 8 + 8;

/// Flag: the offer has a migration capability.
pub const OFFER_MIGRATION: u8 = 1;
/// Flag: the offer asks for twin-socket mode.
pub const OFFER_TWIN: u8 = 2;
/// Flag: the rest of the input is the JSON text alone, wrapped here in version 0.0 and a
/// NUL (so that the fuzzer spends its time on the JSON).
pub const JSON_ONLY: u8 = 4;

/// The `negotiate_reply` target: an [`Offer`] from the first [`OFFER_LEN`] bytes, then the
/// reply payload (or its JSON, with [`JSON_ONLY`]).
pub fn negotiate_reply(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let offer = Offer {
        max_msg_fds: input.u32(),
        max_data_xfer_size: input.u32(),
        pgsizes: input.u64(),
        max_dma_maps: input.u32(),
        migration: Some(MigrationCaps {
            pgsize: input.u64(),
            max_bitmap_size: input.u64(),
        })
        .filter(|_| flags & OFFER_MIGRATION != 0),
        twin_socket: flags & OFFER_TWIN != 0,
    };
    let rest = input.rest();
    let payload = if flags & JSON_ONLY != 0 {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(rest);
        p.push(0);
        p
    } else {
        rest.to_vec()
    };

    // Our own offer is a well-formed VERSION payload with a JSON object in it.
    let ours = Version::decode(&offer.version_payload()).expect("our VERSION payload");
    let json: serde_json::Value =
        serde_json::from_str(ours.json.as_deref().expect("our JSON")).expect("our JSON parses");
    assert!(json["capabilities"].is_object());

    let caps = match Capabilities::from_reply(&offer, &payload) {
        Ok(caps) => caps,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    // What a reply grants is within the bounds the rest of the crate relies on.
    assert_eq!((caps.major, caps.minor), (0, 0));
    assert!(caps.max_msg_fds <= 16);
    assert!((1..=64 << 20).contains(&caps.max_data_xfer_size));
    assert!(caps.pgsizes != 0 && caps.pgsizes % 4096 == 0);
    assert!(caps.max_dma_maps <= 65535);
    let page = caps.min_page_size();
    assert!(page.is_power_of_two() && page >= 4096 && caps.pgsizes & page != 0);
    if let Some(m) = caps.migration {
        assert!(m.pgsize != 0 && m.pgsize % 4096 == 0);
        assert!(m.max_bitmap_size <= 256 << 20);
    }
}
