// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `info` and `check` on migration v2 and DMA dirty logging: against the sample server with
//! and without migration, and against scripted peers whose migration replies break the
//! protocol (the sample server behind the relay of `support`).

mod support;

use std::os::unix::net::UnixStream;
use std::process::{Command, Output};
use std::time::Duration;

use vfio_user_probe::check::{self, CheckOptions, CheckReport, Status};
use vfio_user_probe::info::{self, InfoReport};
use vfio_user_probe::migration::{DmaLogging, MigrationReport};
use vfio_user_sample_server::test_support::peers::{path_of, path_str, sample, ScriptedServer};
use vfio_user_sample_server::{MigrationConfig, ServerConfig};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The migration checks that change the device's state.
const DESTRUCTIVE: [&str; 4] = [
    "migration.arcs",
    "migration.arcs-precopy",
    "migration.illegal-arcs",
    "migration.round-trip",
];

fn with_migration(migration: MigrationConfig) -> ServerConfig {
    ServerConfig {
        migration: Some(migration),
        ..ServerConfig::default()
    }
}

fn info_of(config: ServerConfig) -> InfoReport {
    let server = sample(config);
    info::run(&path_of(&server), TIMEOUT).unwrap()
}

fn run_check(path: &std::path::Path, destructive: bool) -> CheckReport {
    check::run(
        path,
        &CheckOptions {
            timeout: TIMEOUT,
            destructive,
        },
    )
    .unwrap()
}

fn check_of(config: ServerConfig, destructive: bool) -> CheckReport {
    let server = sample(config);
    run_check(&path_of(&server), destructive)
}

fn check_of_peer(script: fn(UnixStream)) -> CheckReport {
    let peer = ScriptedServer::start(script);
    run_check(&peer.path, true)
}

fn info_of_peer(script: fn(UnixStream)) -> InfoReport {
    let peer = ScriptedServer::start(script);
    info::run(&peer.path, TIMEOUT).unwrap()
}

/// The check's status and reason.
fn result<'a>(r: &'a CheckReport, id: &str) -> (Status, &'a str) {
    let c = r
        .get(id)
        .unwrap_or_else(|| panic!("no check {id}\n{}", r.render_text()));
    (c.status, &c.reason)
}

fn failed_ids(r: &CheckReport) -> Vec<&str> {
    r.checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.id.as_str())
        .collect()
}

/// The destructive check against `script`, whose failed checks must be exactly `failed`:
/// the report, and the reason the first of them gives.
fn failing_check(script: fn(UnixStream), failed: &[&str]) -> (CheckReport, String) {
    let r = check_of_peer(script);
    assert_eq!(failed_ids(&r), failed, "{}", r.render_text());
    let reason = result(&r, failed[0]).1.to_owned();
    (r, reason)
}

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfio-user-probe"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn info_shows_the_migration_flags_and_dma_logging() {
    let r = info_of(with_migration(MigrationConfig::default()));
    assert!(r.ok(), "{}", r.render_text());
    let Some(MigrationReport::Supported {
        flags,
        flag_names,
        state,
        dma_logging,
    }) = &r.migration
    else {
        panic!("{:?}", r.migration);
    };
    assert_eq!(*flags, 0x5);
    assert_eq!(flag_names, &["STOP_COPY", "PRE_COPY"]);
    assert_eq!(*state, "RUNNING");
    assert_eq!(dma_logging, &DmaLogging::Offered);
    let text = r.render_text();
    for needle in [
        "\nMigration: v2, STOP_COPY+ P2P- PRE_COPY+ (flags 0x5), device state RUNNING\n",
        "\n  DMA dirty logging: offered (DMA_LOGGING_START, DMA_LOGGING_REPORT, max_bitmap_size 1M)\n",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["migration"]["status"], "supported");
    assert_eq!(json["migration"]["flags"], 5);
    assert_eq!(json["migration"]["dma_logging"]["status"], "offered");
    assert_eq!(json["negotiated"]["migration_max_bitmap_size"], 1 << 20);
}

#[test]
fn info_says_unsupported_without_migration_and_that_is_no_failure() {
    let r = info_of(ServerConfig::default());
    assert!(r.ok(), "{}", r.render_text());
    let Some(MigrationReport::Unsupported { reason }) = &r.migration else {
        panic!("{:?}", r.migration);
    };
    assert_eq!(
        reason,
        "the server did not offer the migration capability in VERSION"
    );
    assert!(r.render_text().contains(
        "\nMigration: unsupported (the server did not offer the migration capability in VERSION)\n"
    ));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["migration"]["status"], "unsupported");
}

#[test]
fn info_without_dma_logging_or_pre_copy() {
    let r = info_of(with_migration(MigrationConfig {
        dma_logging: false,
        pre_copy: false,
        ..MigrationConfig::default()
    }));
    assert!(r.ok(), "{}", r.render_text());
    let text = r.render_text();
    assert!(
        text.contains("Migration: v2, STOP_COPY+ P2P- PRE_COPY- (flags 0x1), device state RUNNING"),
        "{text}"
    );
    assert!(
        text.contains(
            "  DMA dirty logging: unsupported (server answered Invalid argument (errno 22))"
        ),
        "{text}"
    );
}

#[test]
fn check_destructive_walks_every_arc_and_round_trips_the_data() {
    let r = check_of(with_migration(MigrationConfig::default()), true);
    assert!(r.ok(), "{}", r.render_text());
    assert_eq!(r.skipped, 0, "{}", r.render_text());
    let (_, feature) = result(&r, "migration.feature");
    assert!(
        feature.starts_with("MIGRATION: STOP_COPY+ P2P- PRE_COPY+ (flags 0x5); device state RUNNING; DMA dirty logging offered"),
        "{feature}"
    );
    assert!(result(&r, "migration.arcs")
        .1
        .starts_with("RUNNING -> STOP -> RESUMING -> STOP -> RUNNING: each SET accepted"));
    assert!(result(&r, "migration.arcs-precopy")
        .1
        .starts_with("RUNNING -> PRE_COPY -> STOP_COPY -> STOP -> RUNNING"));
    assert_eq!(
        result(&r, "migration.illegal-arcs").1,
        "STOP_COPY -> PRE_COPY refused (EINVAL), the device still STOP_COPY; \
         RUNNING -> state 8 refused (EINVAL), the device still RUNNING"
    );
    let (_, trip) = result(&r, "migration.round-trip");
    assert!(
        trip.contains("written back in RESUMING")
            && trip.ends_with("RUNNING again, the device answers, config space header unchanged"),
        "{trip}"
    );
    // The checks after them still find the device running and the stream in step.
    assert_eq!(result(&r, "error.unknown-command").0, Status::Pass);
}

#[test]
fn check_without_pre_copy_or_logging_says_so() {
    let r = check_of(
        with_migration(MigrationConfig {
            dma_logging: false,
            pre_copy: false,
            ..MigrationConfig::default()
        }),
        true,
    );
    assert!(r.ok(), "{}", r.render_text());
    let (status, feature) = result(&r, "migration.feature");
    assert_eq!(status, Status::Pass);
    assert!(
        feature.ends_with(
            "DMA dirty logging not offered (PROBE of DMA_LOGGING_START: Invalid argument (errno 22))"
        ),
        "{feature}"
    );
    assert_eq!(
        result(&r, "migration.arcs-precopy"),
        (Status::Skip, "the device does not offer PRE_COPY")
    );
    // STOP_COPY -> PRE_COPY is refused all the more.
    assert_eq!(result(&r, "migration.illegal-arcs").0, Status::Pass);
    assert_eq!(result(&r, "migration.round-trip").0, Status::Pass);
}

#[test]
fn check_skips_migration_when_the_server_has_none() {
    let r = check_of(ServerConfig::default(), true);
    assert!(r.ok(), "{}", r.render_text());
    for id in std::iter::once("migration.feature").chain(DESTRUCTIVE) {
        assert_eq!(
            result(&r, id),
            (
                Status::Skip,
                "migration unsupported: the server did not offer the migration capability in VERSION"
            ),
            "{id}"
        );
    }
    assert_eq!(r.skipped, 5, "{}", r.render_text());
}

#[test]
fn check_without_destructive_only_probes() {
    let r = check_of(with_migration(MigrationConfig::default()), false);
    assert!(r.ok(), "{}", r.render_text());
    assert_eq!(result(&r, "migration.feature").0, Status::Pass);
    for id in DESTRUCTIVE {
        let (status, reason) = result(&r, id);
        assert_eq!(status, Status::Skip, "{id}");
        assert!(reason.contains("run with --destructive"), "{reason}");
    }
}

#[test]
fn the_migration_relay_alone_breaks_nothing() {
    let r = check_of_peer(support::migrating_server);
    assert!(r.ok(), "{}", r.render_text());
    assert_eq!(r.skipped, 0, "{}", r.render_text());
    assert!(info_of_peer(support::migrating_server).ok());
}

#[test]
fn a_state_reply_without_a_state_fails_info_and_check() {
    let r = info_of_peer(support::state_replies_without_a_state);
    assert!(!r.ok() && r.lost.is_none());
    assert_eq!(r.failed.len(), 1, "{}", r.render_text());
    assert_eq!(r.failed[0].section, "migration");
    assert!(
        r.failed[0].reason.contains("bad DEVICE_FEATURE reply"),
        "{}",
        r.failed[0].reason
    );
    // Every other section is there.
    assert!(r.pci.is_some() && r.regions.len() == 9);
    assert!(matches!(r.migration, Some(MigrationReport::Failed { .. })));

    let (r, reason) = failing_check(
        support::state_replies_without_a_state,
        &["migration.feature"],
    );
    assert!(
        reason.starts_with("GET of MIG_DEVICE_STATE: "),
        "{}",
        r.render_text()
    );
    for id in DESTRUCTIVE {
        assert_eq!(
            result(&r, id),
            (Status::Skip, "migration.feature failed"),
            "{id}"
        );
    }
}

#[test]
fn a_set_reply_naming_another_state_fails_the_arc_and_the_device_is_taken_back() {
    // The round trip goes through RESUMING too.
    let (r, reason) = failing_check(
        support::resuming_echoed_as_stop_copy,
        &["migration.arcs", "migration.round-trip"],
    );
    assert!(
        reason.starts_with("STOP -> RESUMING: the SET reply names STOP_COPY (then taken back RESUMING -> STOP -> RUNNING)"),
        "{reason}"
    );
    // The device came back: the checks that follow pass.
    assert_eq!(result(&r, "migration.illegal-arcs").0, Status::Pass);
    assert_eq!(result(&r, "error.unknown-command").0, Status::Pass);
}

#[test]
fn an_accepted_illegal_arc_fails() {
    let (r, reason) = failing_check(support::illegal_arc_accepted, &["migration.illegal-arcs"]);
    assert!(
        reason.starts_with(
            "STOP_COPY -> PRE_COPY was accepted; it must be refused (EINVAL) (then taken back"
        ),
        "{reason}"
    );
    assert_eq!(result(&r, "migration.round-trip").0, Status::Pass);
}

#[test]
fn oversized_data_reads_fail_the_round_trip() {
    let (_, reason) = failing_check(support::oversized_data_reads, &["migration.round-trip"]);
    assert!(
        reason.starts_with("MIG_DATA_READ returned 1048577 bytes; 1048576 were asked for (then taken back STOP_COPY -> STOP -> RUNNING)"),
        "{reason}"
    );
}

#[test]
fn a_logging_probe_answered_for_another_feature_fails_info() {
    let r = info_of_peer(support::logging_probe_names_another_feature);
    assert_eq!(r.failed.len(), 1, "{}", r.render_text());
    assert_eq!(r.failed[0].section, "DMA dirty logging");
    assert!(
        r.failed[0].reason.contains("reply names feature 7, not 6"),
        "{}",
        r.failed[0].reason
    );
    let (_, reason) = failing_check(
        support::logging_probe_names_another_feature,
        &["migration.feature"],
    );
    assert!(reason.contains("PROBE of DMA_LOGGING_START: the reply names feature 7 instead of 6"));
}

#[test]
fn exit_status_of_a_malformed_migration_reply() {
    let peer = ScriptedServer::start(support::state_replies_without_a_state);
    let path = path_str(&peer.path);
    let o = probe(&["info", &path]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("\n1 section failed:\n  migration: bad DEVICE_FEATURE reply"),
        "{text}"
    );
    assert!(text.contains("\nMigration: not known (bad DEVICE_FEATURE reply"));
    assert!(o.stderr.is_empty());
    let o = probe(&["check", &path, "--destructive"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL  migration.feature"));
}

#[test]
fn exit_status_with_and_without_migration() {
    let server = sample(with_migration(MigrationConfig::default()));
    let path = path_str(&path_of(&server));
    let o = probe(&["check", &path, "--destructive", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "PASS")
        .filter_map(|c| c["id"].as_str())
        .filter(|id| id.starts_with("migration."))
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    let server = sample(ServerConfig::default());
    let path = path_str(&path_of(&server));
    let o = probe(&["info", &path]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\nMigration: unsupported ("));
}

#[test]
fn data_the_device_cannot_load_fails_the_round_trip_and_the_device_is_reset() {
    let (r, reason) = failing_check(support::corrupted_data_reads, &["migration.round-trip"]);
    assert!(
        reason.starts_with("loading the ")
            && reason.ends_with(
                "RESUMING -> STOP: refused: Invalid argument (errno 22) (then reset out of ERROR \
                 to RUNNING)"
            ),
        "{reason}"
    );
    // Back in RUNNING: the invalid requests that follow are answered in step.
    assert_eq!(result(&r, "error.unknown-command").0, Status::Pass);
}
