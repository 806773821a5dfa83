// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every subcommand against an independent server: the crates.io `vfio_user` crate's
//! `Server`, with a small backend (see `test_support::rust_vmm`). That server is known to break the
//! protocol in places (it replies to some `No_reply` commands, ignores `argsz`, and answers
//! unknown commands without reading their body); `check` must say so, and must not hang.

use std::time::Duration;

use vfio_user_probe::bench::{self, BenchOptions};
use vfio_user_probe::check::{self, CheckOptions, Status};
use vfio_user_probe::info::{self, IoFds};
use vfio_user_probe::pci::CapDetails;
use vfio_user_sample_server::test_support::rust_vmm::{
    RustVmmServer, MAPPED, RAM, RAM_SIZE, REGS, REGS_SIZE,
};

const TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn info_reads_the_rust_vmm_server() {
    let server = RustVmmServer::start(false);
    let r = info::run(&server.path, TIMEOUT).unwrap();
    assert_eq!((r.negotiated.major, r.negotiated.minor), (0, 0));
    assert_eq!(r.negotiated.max_msg_fds, 1);
    assert!(r.negotiated.migration_pgsize.is_some());
    let device = r.device.as_ref().unwrap();
    assert!(device.pci && device.reset);
    assert_eq!(r.regions[RAM as usize].size, RAM_SIZE);
    assert!(!r.regions[RAM as usize].mappable);
    // REGION_IO_FDS is not implemented there: reported, and the stream survives it.
    assert!(matches!(
        r.regions[REGS as usize].io_fds,
        IoFds::Unsupported { .. }
    ));
    assert_eq!(r.irqs.len(), 5);
    let pci = r.pci.as_ref().unwrap();
    assert_eq!(pci.vendor_name.as_deref(), Some("Red Hat, Inc."));
    assert_eq!(pci.class_name, "Non-Volatile memory controller");
    let names: Vec<_> = pci.capabilities.iter().map(|c| c.name).collect();
    assert_eq!(names, ["Power Management", "MSI", "MSI-X", "Express"]);
    assert!(matches!(
        pci.capabilities[2].details,
        CapDetails::MsiX {
            count: 4,
            table_bar: 0,
            table_offset: 0x800,
            pba_offset: 0xc00,
            ..
        }
    ));
    assert_eq!(pci.bars[0].size, REGS_SIZE);
    let text = r.render_text();
    for needle in [
        "Capabilities: [40] Power Management version 3",
        "Capabilities: [50] MSI: Enable- Count=1/4 Maskable+ 64bit+",
        "Capabilities: [70] MSI-X: Enable- Count=4 Masked-",
        "Vector table: BAR=0 offset=00000800",
        "PBA: BAR=0 offset=00000c00",
        "Capabilities: [90] Express (v2) Endpoint",
        "Region 1: Memory at 00000000 (64-bit, prefetchable)",
        "Region 3: I/O ports at c000",
        "io-fds: unsupported (server answered no errno given)",
        // It sends the migration capability but knows no DEVICE_FEATURE: no failure.
        "\nMigration: unsupported (the server refused DEVICE_FEATURE MIGRATION: no errno given)\n",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    assert!(r.ok(), "{text}");
}

#[test]
fn check_reports_where_the_rust_vmm_server_breaks_the_protocol() {
    let server = RustVmmServer::start(true);
    let r = check::run(
        &server.path,
        &CheckOptions {
            timeout: Duration::from_millis(500),
            destructive: true,
        },
    )
    .unwrap();
    let text = r.render_text();
    let status = |id: &str| r.get(id).unwrap_or_else(|| panic!("{id}")).status;
    let reason = |id: &str| r.get(id).unwrap().reason.as_str();
    for id in [
        "version.reply",
        "version.major",
        "version.minor",
        "version.json",
        "version.capabilities",
        "device.info",
        "region.info",
        "region.requery",
        "region.config-read",
        "irq.info",
        "irq.counts",
        "irq.set-eventfds",
        "dma.map-fd",
        "dma.map-no-fd",
        "device.reset",
        "error.region-info-index",
        "error.region-read-index",
        "error.out-of-bounds",
        "error.irq-info-index",
    ] {
        assert_eq!(status(id), Status::Pass, "{id}\n{text}");
    }
    assert!(reason("region.requery").contains(&format!("region {MAPPED}")));
    assert!(reason("error.out-of-bounds").contains("errno 0"));
    // Register writes the backend refuses are answered with well-formed error replies...
    assert_eq!(status("region.write"), Status::Pass, "{text}");
    assert!(reason("region.write").contains("the device refused the write"));
    // ...but the refusal of a posted write is sent although No_reply was set.
    assert_eq!(status("region.posted-write"), Status::Fail, "{text}");
    assert_eq!(status("error.argsz"), Status::Fail);
    assert!(reason("error.argsz").contains("answered with 16 payload bytes"));
    assert_eq!(status("no-reply"), Status::Fail);
    assert_eq!(status("error.unknown-command"), Status::Fail, "{text}");
    assert!(
        reason("error.unknown-command").contains("out of step"),
        "{text}"
    );
    // It sends the migration capability but knows no DEVICE_FEATURE, and reads the probe's
    // body as a command of its own; the stream stays in step.
    for id in [
        "migration.feature",
        "migration.arcs",
        "migration.arcs-precopy",
        "migration.illegal-arcs",
        "migration.round-trip",
    ] {
        assert_eq!(status(id), Status::Skip, "{id}\n{text}");
        assert!(reason(id).starts_with("migration unsupported: the server refused DEVICE_FEATURE PROBE of MIGRATION: no errno given (it answered the probe's body"), "{text}");
    }
    assert_eq!(status("error.region-info-index"), Status::Pass, "{text}");
    assert!(!r.ok());
    // Every window mapped by the check was unmapped again.
    assert!(server.state().dma_maps.is_empty());
    assert_eq!(server.state().resets, 1);
}

#[test]
fn bench_measures_the_rust_vmm_server() {
    let server = RustVmmServer::start(false);
    let r = bench::run(
        &server.path,
        &BenchOptions {
            timeout: TIMEOUT,
            region: None,
            samples: 30,
            bytes: 256 << 10,
            dma_maps: 10,
            progress: false,
        },
    )
    .unwrap();
    assert_eq!(r.region, Some(RAM));
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert_eq!(r.read_latency.as_ref().unwrap().samples, 30);
    assert_eq!(r.write_throughput.as_ref().unwrap().bytes, 256 << 10);
    // max_msg_fds 1: the windows carry a memfd each.
    assert!(r.dma.as_ref().unwrap().with_fd);
    assert!(server.state().dma_maps.is_empty());
}

/// This server's short REGION_INFO reply sets CAPS and `cap_offset` 32 without the chain
/// (the chain comes on the re-query); the library re-asks before it parses caps.
#[test]
fn info_reads_a_rust_vmm_server_with_a_sparse_region() {
    let server = RustVmmServer::start(true);
    let r = info::run(&server.path, TIMEOUT).unwrap();
    assert!(r.regions[MAPPED as usize].mappable);
}
