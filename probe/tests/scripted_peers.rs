// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `check`, `info` and `bench` against peers that break one rule at a time (the sample
//! server behind a relay, see `support`): each breach is named, and the rest still runs.

mod support;

use std::time::Duration;

use vfio_user_probe::check::{self, CheckOptions, CheckReport, Status};
use vfio_user_sample_server::test_support::peers::ScriptedServer;

use support::*;

const TIMEOUT: Duration = Duration::from_secs(5);

fn check(script: fn(std::os::unix::net::UnixStream)) -> CheckReport {
    let peer = ScriptedServer::start(script);
    check::run(
        &peer.path,
        &CheckOptions {
            timeout: TIMEOUT,
            destructive: true,
        },
    )
    .unwrap()
}

fn failed<'a>(r: &'a CheckReport, id: &str) -> &'a str {
    let c = r.get(id).unwrap_or_else(|| panic!("no check {id}"));
    assert_eq!(c.status, Status::Fail, "{id}\n{}", r.render_text());
    &c.reason
}

/// Only `ids` failed.
fn only_failed(r: &CheckReport, ids: &[&str]) {
    let failed: Vec<&str> = r
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(failed, ids, "{}", r.render_text());
}

#[test]
fn the_relay_alone_breaks_nothing() {
    let r = check(|s| relay(s, |_| Step::Forward, |_, _| {}));
    assert!(r.ok(), "{}", r.render_text());
    assert_eq!(r.skipped, 0, "{}", r.render_text());
}

#[test]
fn check_fails_short_config_reads() {
    let r = check(short_config_reads);
    let reason = failed(&r, "region.config-read");
    assert!(
        reason.contains(
            "64 bytes at 0: the REGION_READ reply carries 62 data bytes for a count of 64 (short)"
        ),
        "{reason}"
    );
    only_failed(&r, &["region.config-read"]);
}

#[test]
fn check_fails_long_config_reads() {
    let r = check(long_config_reads);
    let reason = failed(&r, "region.config-read");
    assert!(
        reason.contains("carries 68 data bytes for a count of 64 (long)"),
        "{reason}"
    );
    only_failed(&r, &["region.config-read"]);
}

#[test]
fn check_fails_config_reads_that_echo_another_offset() {
    let r = check(config_reads_echo_another_offset);
    let reason = failed(&r, "region.config-read");
    assert!(
        reason.contains("answers region 7 at 0x4, 64 bytes (asked: region 7 at 0x0, 64 bytes)"),
        "{reason}"
    );
    only_failed(&r, &["region.config-read"]);
}

#[test]
fn check_fails_refused_config_reads() {
    let r = check(config_reads_refused);
    let reason = failed(&r, "region.config-read");
    assert!(
        reason.contains("REGION_READ refused: Input/output error (errno 5)"),
        "{reason}"
    );
    only_failed(&r, &["region.config-read"]);
}

#[test]
fn check_fails_irq_counts_beyond_pci() {
    let r = check(too_many_msix_vectors);
    let reason = failed(&r, "irq.counts");
    assert_eq!(
        reason,
        "MSI-X (IRQ index 2) has 4096 vectors; PCI allows at most 2048"
    );
    // The reply itself is well-formed.
    assert_eq!(r.get("irq.info").unwrap().status, Status::Pass);
    only_failed(&r, &["irq.counts"]);
}
