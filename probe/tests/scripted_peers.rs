// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `check`, `info` and `bench` against peers that break one rule at a time (the sample
//! server behind the shared `test_support::relay`, with the peers in `support`): each breach
//! is named, and the rest still runs.

mod support;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use vfio_user_probe::bench::{self, BenchOptions, BenchReport};
use vfio_user_probe::check::{self, CheckOptions, CheckReport, Status};
use vfio_user_probe::info::{self, InfoReport};
use vfio_user_sample_server::test_support::peers::{ScriptedServer, SHORT};
use vfio_user_sample_server::test_support::relay::Step;

use support::*;

const TIMEOUT: Duration = Duration::from_secs(5);

fn check(script: fn(UnixStream)) -> CheckReport {
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
    // The relay's server has no migration: its checks are skipped (tests/migration.rs
    // relays one that has).
    let skipped: Vec<&str> = r
        .checks
        .iter()
        .filter(|c| c.status == Status::Skip)
        .map(|c| c.id.as_str())
        .collect();
    assert!(
        skipped.len() == 5 && skipped.iter().all(|id| id.starts_with("migration.")),
        "{}",
        r.render_text()
    );
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

fn info(script: fn(UnixStream)) -> InfoReport {
    let peer = ScriptedServer::start(script);
    info::run(&peer.path, TIMEOUT).unwrap()
}

fn sections(r: &InfoReport) -> Vec<&str> {
    r.failed.iter().map(|f| f.section.as_str()).collect()
}

#[test]
fn info_names_short_and_long_config_reads_and_shows_the_rest() {
    for (script, needle) in [
        (short_config_reads as fn(UnixStream), "272 were expected"),
        (long_config_reads, "272 were expected"),
    ] {
        let r = info(script);
        assert_eq!(sections(&r), ["PCI config space"], "{}", r.render_text());
        assert!(!r.ok() && r.lost.is_none());
        let reason = &r.failed[0].reason;
        assert!(reason.contains("bad REGION_READ reply"), "{reason}");
        assert!(reason.contains(needle), "{reason}");
        // Every other section is there.
        assert_eq!((r.regions.len(), r.irqs.len()), (9, 5));
        assert!(r.pci.is_none());
        let text = r.render_text();
        assert!(text.contains("PCI config space: not readable: "), "{text}");
        assert!(
            text.ends_with(&format!(
                "1 section failed:\n  PCI config space: {reason}\n"
            )),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["failed"][0]["section"], "PCI config space");
        assert_eq!(json["lost"], serde_json::Value::Null);
    }
}

#[test]
fn info_names_a_refused_config_read() {
    let r = info(config_reads_refused);
    assert_eq!(sections(&r), ["PCI config space"]);
    assert!(r.failed[0].reason.contains("(errno 5)"), "{:?}", r.failed);
}

/// DEVICE_GET_REGION_IO_FDS is optional: a refusal says "unsupported" (the ROM here), but
/// a reply the library cannot use is a failed section.
#[test]
fn info_names_an_unusable_io_fds_reply() {
    let r = info(io_fds_for_another_region);
    assert_eq!(sections(&r), ["region 0 I/O fds"], "{}", r.render_text());
    assert!(
        r.failed[0].reason.contains("for region 5 instead of 0"),
        "{}",
        r.failed[0].reason
    );
    assert!(r.pci.is_some());
    let text = r.render_text();
    assert!(
        text.contains("6 ROM     size 2K     flags read                 io-fds: unsupported"),
        "{text}"
    );
}

#[test]
fn info_names_irq_counts_beyond_pci() {
    let r = info(too_many_msix_vectors);
    let f = r
        .failed
        .iter()
        .find(|f| f.section == "IRQ index 2 (MSI-X)")
        .unwrap_or_else(|| panic!("{}", r.render_text()));
    assert_eq!(
        f.reason,
        "MSI-X (IRQ index 2) has 4096 vectors; PCI allows at most 2048"
    );
    assert_eq!(r.irqs[2].count, 4096);
    assert!(r.pci.is_some(), "{}", r.render_text());
}

/// The library refuses the device: the report still shows every region and IRQ index the
/// server describes, read again on a raw connection, and names the one it does not.
#[test]
fn info_shows_what_it_can_when_the_library_refuses_the_device() {
    let r = info(region_3_info_refused);
    assert_eq!(
        sections(&r),
        ["device discovery", "region 3"],
        "{}",
        r.render_text()
    );
    assert!(
        r.failed[0]
            .reason
            .contains("the client library refused the device"),
        "{}",
        r.failed[0].reason
    );
    assert!(
        r.failed[1].reason.contains("Invalid argument (errno 22)"),
        "{}",
        r.failed[1].reason
    );
    let indexes: Vec<u32> = r.regions.iter().map(|r| r.index).collect();
    assert_eq!(indexes, [0, 1, 2, 4, 5, 6, 7, 8]);
    assert!(r.regions[2].mappable, "the fd came with the re-query");
    assert_eq!(r.regions[2].sparse_areas.as_ref().unwrap().len(), 2);
    assert_eq!(r.irqs.len(), 5);
    let pci = r.pci.as_ref().expect("config space");
    assert_eq!(pci.vendor_id, 0x494f);
    // BAR sizes by index, around the region that did not answer.
    let bars: Vec<(u32, u64)> = pci.bars.iter().map(|b| (b.index, b.size)).collect();
    assert_eq!(bars, [(0, 256), (1, 4 << 20), (2, 64 << 10), (4, 4 << 10)]);
    assert!(r.lost.is_none());
    let text = r.render_text();
    for needle in [
        "Version 0.0",
        "9 regions, 5 IRQ indexes",
        "2 MSI-X  count 4",
        "PCI-IDIO-16",
        "2 sections failed:\n  device discovery: ",
        "\n  region 3: ",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
}

#[test]
fn info_without_device_info_shows_the_negotiated_section() {
    let r = info(device_info_refused);
    assert_eq!(sections(&r), ["device discovery", "device info"]);
    assert!(r.device.is_none() && r.regions.is_empty() && r.irqs.is_empty());
    let text = r.render_text();
    assert!(text.contains("Capabilities: max_msg_fds 8"), "{text}");
    assert!(
        text.contains("Device: not described (DEVICE_GET_INFO did not succeed)"),
        "{text}"
    );
    assert!(!text.contains("Regions:"), "{text}");
}

#[test]
fn info_stops_when_the_server_dies() {
    let r = info(dies_at_the_first_config_read);
    let lost = r.lost.as_deref().expect("lost");
    assert!(
        lost.starts_with("the server was lost while reading PCI config space: "),
        "{lost}"
    );
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.regions.len(), 9);
    assert!(r.render_text().contains("\nStopped: the server was lost"));
}

fn bench(script: fn(UnixStream), dma_maps: u32) -> BenchReport {
    let peer = ScriptedServer::start(script);
    bench::run(
        &peer.path,
        &BenchOptions {
            timeout: TIMEOUT,
            region: None,
            samples: 20,
            bytes: 2 << 20,
            dma_maps,
            progress: false,
        },
    )
    .unwrap()
}

/// SPDK's BAR0 takes 4- and 8-byte accesses only: the latencies are measured, each
/// throughput figure says the server refused it, and the run goes on to DMA.
#[test]
fn bench_reports_refused_figures_and_goes_on() {
    let r = bench(dword_only_bars, 10);
    assert!(r.lost.is_none(), "{:?}", r.lost);
    assert!(r.read_latency.is_some() && r.write_latency.is_some());
    assert!(r.read_throughput.is_none() && r.write_throughput.is_none());
    let refused: Vec<(&str, u32)> = r.refused.iter().map(|f| (f.figure, f.errno)).collect();
    assert_eq!(
        refused,
        [("read_throughput", EINVAL), ("write_throughput", EINVAL)]
    );
    assert_eq!(r.dma.as_ref().unwrap().windows, 10);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let text = r.render_text();
    for needle in [
        "  read throughput    refused by the server (Invalid argument (errno 22))\n",
        "  write throughput   refused by the server (Invalid argument (errno 22))\n",
        "  DMA map / unmap    ",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["refused"][0]["figure"], "read_throughput");
    assert_eq!(json["refused"][1]["errno"], 22);
}

/// libvfio-user holds 64 DMA regions without advertising `max_dma_maps`: the rate is that
/// of the 64 maps, and the limit is named.
#[test]
fn bench_reports_the_dma_rate_up_to_the_servers_limit() {
    let r = bench(dma_regions_capped_at_64, 100);
    let d = r.dma.as_ref().expect("a DMA figure");
    assert_eq!((d.windows, d.requested), (64, 100));
    assert!(d.maps_per_s > 0.0 && d.unmaps_per_s > 0.0);
    let stopped = d.stopped.as_deref().unwrap();
    assert_eq!(
        stopped,
        "stopped at map 65 of 100: refused by the server (Invalid argument (errno 22)), \
         below the max_dma_maps of 65535 negotiated"
    );
    assert!(r.lost.is_none() && r.refused.is_empty());
    let text = r.render_text();
    assert!(
        text.contains(&format!("(64 windows of 4K, memfd-backed; {stopped})\n")),
        "{text}"
    );
}

#[test]
fn bench_stops_when_the_server_dies() {
    let r = bench(dies_during_large_writes, 10);
    let lost = r.lost.as_deref().expect("lost");
    assert!(
        lost.starts_with("the server was lost during the write throughput: "),
        "{lost}"
    );
    assert!(lost.contains("disconnected"), "{lost}");
    // What came before is kept; nothing after is tried.
    assert!(r.read_throughput.is_some() && r.write_throughput.is_none());
    assert!(r.dma.is_none());
    assert!(r.render_text().contains("\n  stopped: the server was lost"));

    let r = bench(dies_at_the_first_dma_map, 10);
    assert!(r.write_throughput.is_some());
    assert!(r.dma.is_none());
    assert!(
        r.lost
            .as_deref()
            .is_some_and(|l| l.starts_with("the server was lost during the DMA map / unmap: ")),
        "{:?}",
        r.lost
    );
}

/// The writes put back what was read: when large reads are refused, the write throughput
/// writes 4 KiB read in 4-byte reads.
#[test]
fn bench_writes_back_what_small_reads_returned_when_large_reads_are_refused() {
    let r = bench(large_bar_reads_refused, 0);
    assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
    assert_eq!(r.refused[0].figure, "read_throughput");
    let w = r.write_throughput.as_ref().expect("write throughput");
    assert_eq!((w.chunk, w.bytes), (4096, 2 << 20));
    assert!(r.render_text().contains("(2M in 512 calls of 4K)"));
}

#[test]
fn bench_stops_when_the_server_stops_answering() {
    let peer = ScriptedServer::start(hangs_at_the_first_dma_map);
    let r = bench::run(
        &peer.path,
        &BenchOptions {
            timeout: SHORT,
            samples: 5,
            bytes: 1 << 20,
            dma_maps: 10,
            ..BenchOptions::default()
        },
    )
    .unwrap();
    let lost = r.lost.as_deref().expect("lost");
    assert!(
        lost.starts_with("the server was lost during the DMA map / unmap: "),
        "{lost}"
    );
    assert!(lost.contains("timed out after 200ms"), "{lost}");
    assert!(r.write_throughput.is_some() && r.dma.is_none());
}
