// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The small VMM example's guest flows: a Rust guest driver on the buses everywhere, and
//! real-mode code in a KVM vCPU where `/dev/kvm` is usable.
//!
//! Without KVM the KVM test says so on the terminal (not only in captured output) and
//! passes; with `VFIO_USER_REQUIRE_KVM=1` (set where KVM is expected, as in CI) it fails.
//! With KVM it checks that the guest's accesses to the engine's mappable buffer (a KVM
//! memory slot) and its doorbell writes (a KVM ioeventfd) cause no exit to the VMM, and
//! prints the exit counts.
//!
//! The `--migrate` scenario too: the guest loops on the engine, is live-migrated mid-loop
//! (pre-copy, stop, device data, PCI state, vCPU registers, guest memory) to a second VMM
//! with a second server, finishes its loop there with every copy checked, and the
//! downtime is printed. The KVM variant follows the same rule for a missing `/dev/kvm`.

use std::io::Write;

#[path = "common/kvm.rs"]
mod kvm;
#[allow(dead_code)]
#[path = "../examples/vmm/main.rs"]
mod vmm;

use vfio_user_client::pci::BarKind;

fn check(report: &vmm::Report) {
    assert_eq!(report.slot, 3, "{report}");
    assert_eq!(report.status, 1, "engine done: {report}");
    assert!(report.copied, "{report}");
    assert!(report.msix_fired, "{report}");
    assert_eq!(report.buffer_read, 0x5a17_cafe, "{report}");
    assert_eq!(
        report.buffer_seen, 0x5a17_cafe,
        "the server sees it: {report}"
    );
    assert!(report.ok(), "{report}");
}

#[test]
fn rust_guest_driver_drives_the_hot_plugged_dma_engine() {
    let report = vmm::run(false).unwrap();
    assert_eq!(report.guest, "Rust");
    check(&report);
    // Without KVM every access is a bus access.
    assert_eq!(
        (report.exits.buffer, report.exits.doorbell),
        (2, 1),
        "{report}"
    );
}

#[test]
fn kvm_guest_drives_the_hot_plugged_dma_engine() {
    if kvm::skip(
        "kvm_guest_drives_the_hot_plugged_dma_engine",
        vmm::kvm_unavailable(),
    ) {
        return;
    }
    let report = vmm::run(true).unwrap();
    assert_eq!(report.guest, "KVM");
    check(&report);
    // Config cycles and the status read exit: found, placed, enabled, copied.
    assert!(report.exits.total > 20, "{report}");
    // The buffer is a KVM memory slot and the doorbell a KVM ioeventfd: no exit for either.
    assert_eq!(
        (report.exits.buffer, report.exits.doorbell),
        (0, 0),
        "{report}"
    );
    // The device installed both when the guest turned decoding on, and removed them at
    // unplug.
    assert_eq!(
        report.slot_calls,
        [
            "+ioeventfd at 0xd0018",
            "+slot 1 at 0xe0000 (0x1000 bytes)",
            "-ioeventfd at 0xd0018",
            "-slot 1 at 0xe0000"
        ],
        "{report}"
    );
    // Straight to stderr: the figures are the point of the run.
    let _ = writeln!(std::io::stderr(), "{report}");
}

/// Config mechanism #1: selects register `offset` of bus 0, slot 3, function 0.
fn config_write(vmm: &mut vmm::Vmm, offset: u32, value: u32) {
    vmm.pio_write(0xcf8, &(0x8000_0000 | 3 << 11 | offset).to_le_bytes());
    vmm.pio_write(0xcfc, &value.to_le_bytes());
    vmm.apply_bar_moves();
}

#[test]
fn guest_bar_values_never_stop_the_vmm() {
    let (server, mut vmm) = vmm::start(false).unwrap();
    // The engine's BAR1 is its 64-byte I/O BAR. Above 0xffff (the register is 32 bits
    // wide): no port window can take it.
    config_write(&mut vmm, 0x14, 0x1_0000);
    config_write(&mut vmm, 0x04, 0x0001);
    let refused: Vec<(u32, u64, BarKind)> = vmm
        .refused_moves()
        .iter()
        .map(|(m, _)| (m.bar, m.new_base, m.kind))
        .collect();
    assert_eq!(refused, [(1, 0x1_0000, BarKind::Io)]);
    assert!(vmm.refused_moves()[0].1.contains("above 0xffff"));
    // Over the host bridge's own ports: refused too, and the bridge still answers.
    config_write(&mut vmm, 0x04, 0);
    config_write(&mut vmm, 0x14, 0xcc0);
    config_write(&mut vmm, 0x04, 0x0001);
    assert_eq!(vmm.refused_moves().len(), 2);
    assert_eq!(vmm.refused_moves()[1].0.new_base, 0xcc0);
    // A good address now: the window is mapped and the registers answer through it.
    config_write(&mut vmm, 0x04, 0);
    config_write(&mut vmm, 0x14, 0xc000);
    config_write(&mut vmm, 0x04, 0x0001);
    assert_eq!(vmm.refused_moves().len(), 2);
    vmm.pio_write(0xc000, &0x1234u32.to_le_bytes());
    let mut back = [0u8; 4];
    vmm.pio_read(0xc000, &mut back);
    assert_eq!(
        u32::from_le_bytes(back),
        0x1234,
        "the source register, through BAR1"
    );
    // And the guest's usual run still works.
    let report = vmm::drive(&mut vmm, false).unwrap();
    check(&report);
    vmm.unplug().unwrap();
    server.stop();
}

#[test]
fn a_stalled_device_does_not_hold_up_the_host_bridge() {
    let (server, mut vmm) = vmm::start(false).unwrap();
    let probe = server.probe();
    vmm.pio_write(0xcf8, &(0x8000_0000u32 | 3 << 11).to_le_bytes());
    probe.pause();
    let shared = &vmm;
    std::thread::scope(|s| {
        // vCPU 1 reads the device's config space: it waits for the stalled server.
        let stalled = s.spawn(|| {
            let mut id = [0u8; 4];
            shared.pio_read(0xcfc, &mut id);
            u32::from_le_bytes(id)
        });
        assert!(probe.wait_holding(std::time::Duration::from_secs(5)));
        // vCPU 2 reaches the host bridge meanwhile.
        let (tx, rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let mut address = [0u8; 4];
            shared.pio_read(0xcf8, &mut address);
            let _ = tx.send(u32::from_le_bytes(address));
        });
        let bridge = rx.recv_timeout(std::time::Duration::from_secs(2));
        probe.resume();
        assert_eq!(
            bridge,
            Ok(0x8000_0000 | 3 << 11),
            "the bridge waited for the device"
        );
        assert_eq!(stalled.join().unwrap(), 0x0d4a_494f);
    });
    vmm.unplug().unwrap();
    server.stop();
}

fn check_migration(report: &vmm::migrate::MigrationReport) {
    assert_eq!(report.mailbox, 0x600d, "every copy checked: {report}");
    assert_eq!(report.iterations, vmm::migrate::ITERATIONS, "{report}");
    assert!(
        report.stopped_at > vmm::migrate::PRE_COPY_FROM
            && report.stopped_at < vmm::migrate::ITERATIONS,
        "moved mid-loop: {report}"
    );
    assert_eq!(report.rounds, vmm::migrate::PRE_COPY_ROUNDS, "{report}");
    assert!(report.device_bytes.1 > 0, "device data moved: {report}");
    assert!(report.in_flight, "a copy in flight at the stop: {report}");
    assert!(
        report.interrupts.1 > 0,
        "MSI-X on the destination: {report}"
    );
    assert_eq!(
        report.interrupts.0 + report.interrupts.1,
        u64::from(vmm::migrate::ITERATIONS),
        "one interrupt per copy: {report}"
    );
    assert!(report.ok(), "{report}");
    // Straight to stderr: the downtime is the point of the run.
    let _ = writeln!(std::io::stderr(), "{report}");
}

#[test]
fn rust_guest_is_migrated_mid_loop_to_a_second_vmm() {
    let report = vmm::migrate::run(false).unwrap();
    assert_eq!(report.guest, "Rust");
    assert!(!report.kvm_dirty_log);
    // Without a log of the guest's writes, all of memory is copied at the stop.
    assert!(report.pages.1 >= 16, "{report}");
    check_migration(&report);
}

#[test]
fn kvm_guest_is_migrated_mid_loop_to_a_second_vmm() {
    if kvm::skip(
        "kvm_guest_is_migrated_mid_loop_to_a_second_vmm",
        vmm::kvm_unavailable(),
    ) {
        return;
    }
    let report = vmm::migrate::run(true).unwrap();
    assert_eq!(report.guest, "KVM");
    if !report.kvm_dirty_log {
        let _ = writeln!(
            std::io::stderr(),
            "kvm_guest_is_migrated_mid_loop_to_a_second_vmm: KVM gives no dirty log here; \
             guest memory was copied whole at the stop"
        );
    }
    check_migration(&report);
}
