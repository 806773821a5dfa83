// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every subcommand, in process, against the sample server: conforming, and configured to
//! break the protocol on purpose.

use std::time::Duration;

use vfio_user_probe::bench::{self, BenchOptions};
use vfio_user_probe::check::{self, CheckOptions, CheckReport, Status};
use vfio_user_probe::info::{self, IoFds};
use vfio_user_probe::{demo, ProbeError};
use vfio_user_sample_server::test_support::peers::{path_of, sample, SHORT};
use vfio_user_sample_server::{GpioDevice, Quirks, ServerConfig, VersionPayload};

const TIMEOUT: Duration = Duration::from_secs(5);

fn check(config: ServerConfig, destructive: bool, timeout: Duration) -> CheckReport {
    let server = sample(config);
    check::run(
        &path_of(&server),
        &CheckOptions {
            timeout,
            destructive,
        },
    )
    .unwrap()
}

fn status(r: &CheckReport, id: &str) -> Status {
    r.get(id).unwrap_or_else(|| panic!("no check {id}")).status
}

fn reason<'a>(r: &'a CheckReport, id: &str) -> &'a str {
    &r.get(id).unwrap().reason
}

#[test]
fn info_describes_the_gpio_device() {
    let server = sample(ServerConfig::default());
    let r = info::run(&path_of(&server), TIMEOUT).unwrap();
    assert_eq!((r.negotiated.major, r.negotiated.minor), (0, 0));
    assert_eq!(r.negotiated.max_msg_fds, 8);
    assert_eq!(r.negotiated.max_data_xfer_size, 1 << 20);
    let device = r.device.as_ref().unwrap();
    assert!(device.pci && device.reset);
    assert_eq!((device.num_regions, device.num_irqs), (9, 5));
    assert!(r.ok() && r.failed.is_empty(), "{:?}", r.failed);
    let bar2 = &r.regions[2];
    assert!(bar2.mappable);
    assert_eq!(bar2.flag_names, ["read", "write", "mmap", "caps"]);
    assert_eq!(bar2.sparse_areas.as_ref().unwrap().len(), 2);
    match &r.regions[0].io_fds {
        IoFds::Supported { fds } => {
            assert_eq!(fds.len(), 2);
            assert_eq!(fds[0].offset, GpioDevice::REG_OUTPUT);
            assert_eq!(fds[0].data, Some(u64::from(GpioDevice::OUTPUT_DATAMATCH)));
        }
        other => panic!("BAR0 io fds: {other:?}"),
    }
    assert_eq!(r.regions[3].io_fds, IoFds::NotAsked);
    assert_eq!(r.irqs[2].name, "MSI-X");
    assert_eq!(r.irqs[2].count, 4);
    let pci = r.pci.as_ref().unwrap();
    assert_eq!((pci.vendor_id, pci.device_id), (0x494f, 0x0dc8));
    assert_eq!(pci.vendor_name.as_deref(), Some("ACCES I/O Products, Inc."));
    // BAR0, BAR1, the 64-bit BAR2 and the MSI-X BAR4.
    assert_eq!(pci.bars.len(), 4);
    assert_eq!(pci.bars[1].size, 4 << 20);
    let ids: Vec<u16> = pci.capabilities.iter().map(|c| c.id).collect();
    assert_eq!(ids, [0x01, 0x05, 0x11, 0x10], "PM, MSI, MSI-X, PCI Express");
    assert!(pci.warnings.is_empty(), "{:?}", pci.warnings);

    let text = r.render_text();
    for needle in [
        "Version 0.0",
        "max_msg_fds 8, max_data_xfer_size 1M",
        "flags 0x3 (PCI RESET), 9 regions, 5 IRQ indexes",
        "sparse [0x0+0x4000, 0x8000+0x8000]",
        "io-fds: ioeventfd @0x4/4=0xa5a50001",
        "2 MSI-X  count 4",
        "System peripheral [0880]: ACCES I/O Products, Inc. [494f] PCI-IDIO-16 [0dc8]",
        "Region 1: Memory at 00000000 (32-bit, non-prefetchable) [size=4M]",
        "Region 2: Memory at 00000000 (64-bit, prefetchable) [size=64K]",
        "Capabilities: [60] MSI-X: Enable- Count=4 Masked-",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["pci"]["vendor_id"], 0x494f);
    assert_eq!(json["regions"][0]["io_fds"]["status"], "supported");
    assert_eq!(json["negotiated"]["max_msg_fds"], 8);
}

#[test]
fn check_passes_a_conforming_server() {
    let r = check(ServerConfig::default(), true, TIMEOUT);
    assert!(r.ok(), "{}", r.render_text());
    // Only the migration checks, which this server (without migration) skips.
    assert_eq!((r.failed, r.skipped), (0, 5), "{}", r.render_text());
    assert!(r
        .checks
        .iter()
        .filter(|c| c.status == Status::Skip)
        .all(|c| c.id.starts_with("migration.")));
    assert!(reason(&r, "region.requery").contains("region 2 (argsz 32 -> 80)"));
    assert!(reason(&r, "error.unknown-command").contains("Invalid argument (errno 22)"));
    assert!(
        reason(&r, "region.config-read").contains("64 bytes at 0 and 4 at 0x8 of region 7"),
        "{}",
        r.render_text()
    );
    assert_eq!(
        reason(&r, "irq.counts"),
        "vectors within the PCI bounds: INTx 1/1, MSI 1/32, MSI-X 4/2048, ERR 1/1, REQ 1/1"
    );
    let text = r.render_text();
    assert!(text.contains("PASS  version.json"), "{text}");
    assert!(text.ends_with(&format!("{} passed, 0 failed, 5 skipped\n", r.passed)));
}

#[test]
fn check_without_destructive_skips_register_writes() {
    let r = check(ServerConfig::default(), false, TIMEOUT);
    assert!(r.ok());
    for id in ["region.write", "region.posted-write"] {
        assert_eq!(status(&r, id), Status::Skip);
        assert!(reason(&r, id).contains("--destructive"));
    }
    // And the five migration checks: this server has no migration.
    assert_eq!(r.skipped, 7);
}

#[test]
fn check_fails_a_server_that_replies_to_no_reply() {
    let config = ServerConfig {
        quirks: Quirks {
            reply_to_no_reply: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    };
    let r = check(config, true, TIMEOUT);
    assert!(!r.ok());
    assert_eq!(status(&r, "no-reply"), Status::Fail);
    assert!(reason(&r, "no-reply").contains("replied to a No_reply DEVICE_GET_INFO"));
    assert_eq!(status(&r, "region.posted-write"), Status::Fail);
    assert_eq!(status(&r, "error.unknown-command"), Status::Pass);
}

#[test]
fn check_fails_error_replies_without_the_error_flag() {
    let config = ServerConfig {
        quirks: Quirks {
            error_without_error_flag: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    };
    let r = check(config, false, TIMEOUT);
    for id in [
        "error.region-info-index",
        "error.region-read-index",
        "error.out-of-bounds",
        "error.irq-info-index",
        "error.argsz",
        "error.unknown-command",
    ] {
        assert_eq!(status(&r, id), Status::Fail, "{id}");
        assert!(
            reason(&r, id).contains("error reply without the Error flag (flags 0x1, errno 22)"),
            "{id}: {}",
            reason(&r, id)
        );
    }
    assert_eq!(status(&r, "device.info"), Status::Pass);
    assert!(r.render_text().contains("FAIL  error.argsz"));
}

#[test]
fn check_fails_error_replies_typed_as_commands() {
    let config = ServerConfig {
        quirks: Quirks {
            error_as_command_type: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    };
    let r = check(config, false, TIMEOUT);
    assert_eq!(status(&r, "error.region-read-index"), Status::Fail);
    assert!(reason(&r, "error.region-read-index").contains("typed as a command"));
}

#[test]
fn check_reports_each_version_rule() {
    // Minor above the proposal, and a wrongly typed capability.
    let mut extra = serde_json::Map::new();
    extra.insert("max_dma_maps".into(), "many".into());
    let r = check(
        ServerConfig {
            minor: Some(3),
            extra_capabilities: extra,
            ..ServerConfig::default()
        },
        false,
        TIMEOUT,
    );
    assert_eq!(status(&r, "version.major"), Status::Pass);
    assert_eq!(status(&r, "version.minor"), Status::Fail);
    assert!(reason(&r, "version.minor").contains("minor 3 is above the proposed 0"));
    assert_eq!(status(&r, "version.capabilities"), Status::Fail);
    assert!(reason(&r, "version.capabilities").contains("max_dma_maps is \"many\", not a number"));
    // The rest still runs.
    assert_eq!(status(&r, "device.info"), Status::Pass);

    // JSON without its NUL.
    let r = check(
        ServerConfig {
            version_payload: VersionPayload::Raw(br#"{"capabilities":{}}"#.to_vec()),
            ..ServerConfig::default()
        },
        false,
        TIMEOUT,
    );
    assert_eq!(status(&r, "version.json"), Status::Fail);
    assert!(reason(&r, "version.json").contains("not NUL-terminated"));
    assert_eq!(status(&r, "version.capabilities"), Status::Skip);

    // No JSON at all is allowed.
    let r = check(
        ServerConfig {
            version_payload: VersionPayload::Raw(Vec::new()),
            ..ServerConfig::default()
        },
        false,
        TIMEOUT,
    );
    assert_eq!(status(&r, "version.json"), Status::Pass);
    assert!(r.ok(), "{}", r.render_text());

    // JSON that is not an object.
    let r = check(
        ServerConfig {
            version_payload: VersionPayload::Json(serde_json::json!([1, 2])),
            ..ServerConfig::default()
        },
        false,
        TIMEOUT,
    );
    assert_eq!(status(&r, "version.json"), Status::Fail);
}

#[test]
fn check_reports_a_server_that_stops_answering() {
    let config = ServerConfig {
        quirks: Quirks {
            never_reply_after_version: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    };
    let r = check(config, false, SHORT);
    assert_eq!(status(&r, "device.info"), Status::Fail);
    assert!(reason(&r, "device.info").contains("no reply"));
    for id in [
        "region.info",
        "region.config-read",
        "irq.info",
        "irq.counts",
        "dma.map-fd",
        "error.unknown-command",
    ] {
        assert_eq!(status(&r, id), Status::Skip, "{id}");
    }
    assert_eq!(r.checks.len(), 29, "every check is reported");
    assert!(!r.ok());
}

#[test]
fn info_reports_a_server_that_stops_answering_after_the_handshake() {
    let server = sample(ServerConfig {
        quirks: Quirks {
            never_reply_after_version: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    });
    let r = info::run(&path_of(&server), SHORT).unwrap();
    let lost = r.lost.as_deref().expect("lost");
    assert!(
        lost.starts_with("the server was lost while reading the device: "),
        "{lost}"
    );
    assert!(lost.contains("timed out after 200ms"), "{lost}");
    // What the handshake said is still shown.
    assert_eq!(r.negotiated.max_msg_fds, 8);
    assert!(r.device.is_none() && r.failed.is_empty());
}

#[test]
fn refused_version_is_an_error() {
    let server = sample(ServerConfig {
        major: 1,
        ..ServerConfig::default()
    });
    let path = path_of(&server);
    let e = info::run(&path, TIMEOUT).unwrap_err();
    assert!(
        matches!(e, ProbeError::VersionRefused { errno: 22, .. }),
        "{e}"
    );
    assert!(e
        .to_string()
        .ends_with("the server refused version 0.0: Invalid argument (errno 22)"));
    let e = check::run(
        &path,
        &CheckOptions {
            timeout: TIMEOUT,
            destructive: false,
        },
    )
    .unwrap_err();
    assert!(matches!(e, ProbeError::VersionRefused { .. }), "{e}");
}

#[test]
fn silent_server_times_out() {
    let server = sample(ServerConfig {
        quirks: Quirks {
            never_reply: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    });
    let e = bench::run(
        &path_of(&server),
        &BenchOptions {
            timeout: SHORT,
            ..BenchOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, ProbeError::NoAnswer { .. }), "{e}");
    assert!(e.to_string().contains("no reply to VERSION within 200ms"));
}

#[test]
fn bench_measures_every_figure() {
    let server = sample(ServerConfig::default());
    let r = bench::run(
        &path_of(&server),
        &BenchOptions {
            timeout: TIMEOUT,
            region: None,
            samples: 50,
            bytes: 2 << 20,
            dma_maps: 20,
            progress: false,
        },
    )
    .unwrap();
    assert_eq!(r.region, Some(1), "the 4 MiB scratch BAR");
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let l = r.read_latency.as_ref().unwrap();
    assert_eq!(l.samples, 50);
    assert!(l.min_ns <= l.median_ns && l.median_ns <= l.p99_ns);
    assert!(r.write_latency.is_some());
    assert_eq!(r.read_throughput.as_ref().unwrap().bytes, 2 << 20);
    assert_eq!(r.write_throughput.as_ref().unwrap().chunk, 1 << 20);
    let d = r.dma.as_ref().unwrap();
    assert_eq!((d.windows, d.with_fd), (20, true));
    let text = r.render_text();
    for needle in [
        "4 B read latency",
        "4 B write latency",
        "read throughput",
        "write throughput",
        "DMA map / unmap",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["read_latency"]["samples"], 50);
    assert_eq!(json["dma"]["windows"], 20);
}

#[test]
fn bench_on_a_chosen_register_region_notes_what_it_cannot_measure() {
    let server = sample(ServerConfig::default());
    let r = bench::run(
        &path_of(&server),
        &BenchOptions {
            timeout: TIMEOUT,
            region: Some(0),
            samples: 5,
            bytes: 1 << 20,
            dma_maps: 0,
            progress: false,
        },
    )
    .unwrap();
    assert!(r.read_latency.is_some() && r.write_latency.is_some());
    assert!(r.read_throughput.is_none());
    assert!(r.dma.is_none());
    assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
    let e = bench::run(
        &path_of(&server),
        &BenchOptions {
            region: Some(5),
            ..BenchOptions::default()
        },
    )
    .unwrap();
    assert!(
        e.notes[0].contains("region 5 is not a readable region"),
        "{:?}",
        e.notes
    );
}

#[test]
fn demo_runs_everything_against_the_sample_server() {
    let r = demo::run(
        TIMEOUT,
        &BenchOptions {
            samples: 20,
            bytes: 1 << 20,
            dma_maps: 10,
            ..demo::bench_options(TIMEOUT, false)
        },
    )
    .unwrap();
    assert!(r.check.ok(), "{}", r.check.render_text());
    assert!(r.check.destructive);
    assert_eq!(r.check.skipped, 0);
    let text = r.render_text();
    assert!(text.starts_with("== info ==\n"));
    assert!(text.contains("== check ==\n") && text.contains("== bench ==\n"));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["check"]["failed"], 0);
    assert_eq!(json["info"]["device"]["num_regions"], 9);
}
