// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The small VMM example's guest flows: a Rust guest driver on the buses everywhere, and
//! real-mode code in a KVM vCPU where `/dev/kvm` is usable.

#[allow(dead_code)]
#[path = "../examples/vmm/main.rs"]
mod vmm;

fn check(report: &vmm::Report) {
    assert_eq!(report.slot, 3, "{report}");
    assert_eq!(report.status, 1, "engine done: {report}");
    assert!(report.copied, "{report}");
    assert!(report.msix_fired, "{report}");
}

#[test]
fn rust_guest_driver_drives_the_hot_plugged_dma_engine() {
    let report = vmm::run(false).unwrap();
    assert_eq!(report.guest, "Rust");
    check(&report);
}

#[test]
fn kvm_guest_drives_the_hot_plugged_dma_engine() {
    if let Some(reason) = vmm::kvm_unavailable() {
        println!("skipping the KVM guest: {reason}");
        return;
    }
    let report = vmm::run(true).unwrap();
    assert_eq!(report.guest, "KVM");
    check(&report);
    // Every bus access of the guest is an exit: found, placed, enabled, copied.
    assert!(report.exits > 20, "{report}");
}
