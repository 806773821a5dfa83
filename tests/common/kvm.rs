// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Skipping a KVM test where `/dev/kvm` is not usable, saying so. Included with `#[path]`
//! by the tests that run a KVM guest.

use std::io::Write;

/// Whether `test` must be skipped because KVM is unusable (`unavailable` says why, as
/// `kvm_unavailable` of the example VMM does): the reason goes to stderr, and with
/// `VFIO_USER_REQUIRE_KVM=1` the test fails instead.
pub fn skip(test: &str, unavailable: Option<String>) -> bool {
    let Some(reason) = unavailable else {
        return false;
    };
    let required = std::env::var("VFIO_USER_REQUIRE_KVM").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "VFIO_USER_REQUIRE_KVM=1 but KVM is not usable: {reason}"
    );
    // Straight to stderr: the test harness captures print! and eprint!.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {reason} (VFIO_USER_REQUIRE_KVM=1 makes this a failure)"
    );
    true
}
