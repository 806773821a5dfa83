// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The built binary: exit status, one-line errors, text and JSON output.

mod support;

use std::process::{Command, Output};

use vfio_user_sample_server::test_support::peers::{
    closing_peer, dead_socket, http_peer, missing_socket, path_of, path_str, sample, silent_peer,
    ScriptedServer,
};
use vfio_user_sample_server::test_support::rust_vmm::RustVmmServer;
use vfio_user_sample_server::{Quirks, ServerConfig};

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfio-user-probe"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit status 2 and a single line on stderr containing `needle`.
fn assert_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("vfio-user-probe: error: "), "{err}");
    assert!(err.contains(needle), "{needle:?} missing from {err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn socket_path_that_does_not_exist() {
    let (_dir, path) = missing_socket();
    for cmd in ["info", "check", "bench"] {
        let o = probe(&[cmd, &path_str(&path)]);
        assert_error(&o, "no such file");
    }
}

#[test]
fn socket_nobody_listens_on() {
    let (_dir, path) = dead_socket();
    for cmd in ["info", "check", "bench"] {
        let o = probe(&[cmd, &path_str(&path), "--timeout", "200ms"]);
        assert_error(&o, "nobody is listening (connection refused");
    }
}

#[test]
fn path_that_is_not_a_socket() {
    let (dir, _) = missing_socket();
    let file = dir.as_path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert_error(&probe(&["info", &path_str(&file)]), "not a Unix socket");
}

#[test]
fn peer_that_does_not_answer_in_time() {
    let peer = ScriptedServer::start(silent_peer);
    for cmd in ["info", "check"] {
        let o = probe(&[cmd, &path_str(&peer.path), "--timeout", "200ms"]);
        assert_error(&o, "no reply to VERSION within 200ms");
    }
}

#[test]
fn peer_that_is_not_a_vfio_user_server() {
    let peer = ScriptedServer::start(http_peer);
    for cmd in ["info", "check", "bench"] {
        let o = probe(&[cmd, &path_str(&peer.path), "--timeout", "200ms"]);
        assert_error(&o, "not a vfio-user server: it answered 48 54 54 50");
        assert!(
            stderr(&o).contains("(\"HTTP/1.1 400 Bad\")"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn peer_that_hangs_up() {
    let peer = ScriptedServer::start(closing_peer);
    let o = probe(&["info", &path_str(&peer.path), "--timeout", "200ms"]);
    assert_error(&o, "closed the connection without answering VERSION");
}

#[test]
fn server_that_refuses_the_version() {
    let server = sample(ServerConfig {
        major: 1,
        ..ServerConfig::default()
    });
    let path = path_str(&path_of(&server));
    for cmd in ["info", "check", "bench"] {
        let o = probe(&[cmd, &path]);
        assert_error(
            &o,
            "the server refused version 0.0: Invalid argument (errno 22)",
        );
    }
}

#[test]
fn info_text_and_json() {
    let server = sample(ServerConfig::default());
    let path = path_str(&path_of(&server));
    let o = probe(&["info", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("Version 0.0"));
    assert!(text.contains("ACCES I/O Products, Inc. [494f] PCI-IDIO-16 [0dc8]"));
    let o = probe(&["info", &path, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["device"]["num_irqs"], 5);
    assert_eq!(v["regions"][2]["mappable"], true);
    assert_eq!(v["pci"]["device_id"], 0x0dc8);
}

/// Asserts exit status 2 with the report on stdout and one line on stderr that names the
/// socket and contains `needle`.
fn assert_lost(o: &Output, socket: &str, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    let prefix = format!("vfio-user-probe: error: {socket}: ");
    assert!(err.starts_with(&prefix), "{err}");
    assert!(err.contains(needle), "{needle:?} missing from {err}");
    assert!(!o.stdout.is_empty(), "the report of what came before");
}

#[test]
fn info_exit_status_names_the_failed_sections() {
    let peer = ScriptedServer::start(support::short_config_reads);
    let path = path_str(&peer.path);
    let o = probe(&["info", &path]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("\nRegions:\n") && text.contains("\nIRQs:\n"),
        "{text}"
    );
    assert!(
        text.contains("1 section failed:\n  PCI config space: bad REGION_READ reply"),
        "{text}"
    );
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    let o = probe(&["info", &path, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failed"][0]["section"], "PCI config space");
    assert_eq!(v["device"]["num_regions"], 9);
}

#[test]
fn info_exits_2_when_the_server_dies_part_way() {
    let peer = ScriptedServer::start(support::dies_at_the_first_config_read);
    let path = path_str(&peer.path);
    let o = probe(&["info", &path]);
    assert_lost(
        &o,
        &path,
        "the server was lost while reading PCI config space: ",
    );
    assert!(stdout(&o).contains("\nIRQs:\n"), "{}", stdout(&o));
}

#[test]
fn bench_exits_2_when_the_server_dies_part_way() {
    let peer = ScriptedServer::start(support::dies_during_large_writes);
    let path = path_str(&peer.path);
    let args = ["bench", &path, "--samples=5", "--bytes=1M", "--dma-maps=5"];
    let o = probe(&args);
    assert_lost(
        &o,
        &path,
        "the server was lost during the write throughput: ",
    );
    assert!(
        stderr(&o).ends_with("disconnected: the server closed the connection\n"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("read throughput"), "{}", stdout(&o));
    let o = probe(&[&args[..], &["--json"]].concat());
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["lost"].as_str().unwrap().contains("write throughput"));
}

#[test]
fn bench_goes_on_past_what_the_server_refuses() {
    let peer = ScriptedServer::start(support::dword_only_bars);
    let path = path_str(&peer.path);
    let o = probe(&["bench", &path, "--samples=5", "--bytes=1M", "--dma-maps=5"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "read throughput    refused by the server (Invalid argument (errno 22))",
        "write throughput   refused by the server (Invalid argument (errno 22))",
        "DMA map / unmap",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }

    let peer = ScriptedServer::start(support::dma_regions_capped_at_64);
    let path = path_str(&peer.path);
    let o = probe(&[
        "bench",
        &path,
        "--samples=5",
        "--bytes=1M",
        "--dma-maps=100",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("(64 windows of 4K, memfd-backed; stopped at map 65 of 100: "),
        "{}",
        stdout(&o)
    );
}

#[test]
fn check_exit_status_follows_the_verdict() {
    let good = sample(ServerConfig::default());
    let o = probe(&["check", &path_str(&path_of(&good)), "--destructive"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // The migration checks are skipped: this server has no migration.
    assert!(stdout(&o).contains("0 failed, 5 skipped"));

    let bad = sample(ServerConfig {
        quirks: Quirks {
            error_without_error_flag: true,
            ..Quirks::default()
        },
        ..ServerConfig::default()
    });
    let o = probe(&["check", &path_str(&path_of(&bad))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("FAIL  error.unknown-command"),
        "{}",
        stdout(&o)
    );

    let o = probe(&["check", &path_str(&path_of(&bad)), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["failed"].as_u64().unwrap() > 0);
    let first = &v["checks"][0];
    assert_eq!(first["id"], "version.reply");
    assert_eq!(first["status"], "PASS");
}

#[test]
fn every_subcommand_against_the_rust_vmm_server() {
    let server = RustVmmServer::start(false);
    let path = path_str(&server.path);
    let o = probe(&["info", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("Capabilities: [70] MSI-X: Enable- Count=4 Masked-"));
    let o = probe(&["check", &path, "--timeout", "500ms"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("FAIL  error.unknown-command    stream out of step"),
        "{}",
        stdout(&o)
    );
    let o = probe(&[
        "bench",
        &path,
        "--samples",
        "10",
        "--bytes",
        "64K",
        "--dma-maps",
        "5",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["read_latency"]["samples"], 10);
    assert_eq!(v["dma"]["windows"], 5);
}

#[test]
fn bench_text() {
    let server = sample(ServerConfig::default());
    let o = probe(&[
        "bench",
        &path_str(&path_of(&server)),
        "--samples=10",
        "--bytes=1M",
        "--dma-maps=5",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("4 B read latency"), "{text}");
    assert!(text.contains("DMA map / unmap"), "{text}");
    // No progress bar when stderr is not a terminal.
    assert!(o.stderr.is_empty());
}

#[test]
fn demo_runs_info_check_and_bench() {
    let o = probe(&["demo"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "== info ==",
        "PCI-IDIO-16",
        "== check ==",
        "0 failed, 0 skipped",
        "PASS  migration.round-trip",
        "Migration: v2, STOP_COPY+ P2P- PRE_COPY+",
        "== bench ==",
        "DMA map / unmap",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    // Nothing on stderr: no progress line when it is not a terminal.
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    let o = probe(&["demo", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["check"]["failed"], 0);
}

#[test]
fn usage_errors() {
    for (args, needle) in [
        (&["frob"][..], "unrecognized subcommand 'frob'"),
        (&["info"][..], "<SOCKET>"),
        (
            &["info", "/x", "--frob"][..],
            "unexpected argument '--frob'",
        ),
        (&["info", "/x", "--destructive"][..], "'--destructive'"),
        (&["demo", "extra"][..], "unexpected argument 'extra'"),
        (
            &["bench", "/x", "--region"][..],
            "a value is required for '--region <N>'",
        ),
        (
            &["check", "/x", "--timeout", "soon"][..],
            "invalid value 'soon' for '--timeout <DUR>'",
        ),
    ] {
        let o = probe(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: {needle:?} missing from {err}"
        );
        assert!(err.contains("try '--help'"), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    // No command at all: the help, on stderr, and the same status.
    let o = probe(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Commands:"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn help_on_every_subcommand() {
    for args in [&["--help"][..], &["-h"][..], &["help"][..]] {
        let o = probe(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        let text = stdout(&o);
        for command in ["info", "check", "bench", "demo"] {
            assert!(
                text.contains(command),
                "{args:?}: {command} missing from\n{text}"
            );
        }
        assert!(text.contains("Exit status: 0 success"), "{text}");
        assert!(o.stderr.is_empty());
    }
    for (command, options) in [
        ("info", &["<SOCKET>", "--json", "--timeout <DUR>"][..]),
        (
            "check",
            &["<SOCKET>", "--destructive", "--json", "--timeout"][..],
        ),
        (
            "bench",
            &[
                "<SOCKET>",
                "--region <N>",
                "--samples <N>",
                "[default: 10000]",
                "--bytes <SIZE>",
                "[default: 256M]",
                "--dma-maps <N>",
                "[default: 1000]",
                "[default: 5s]",
            ][..],
        ),
        ("demo", &["--json", "--timeout <DUR>"][..]),
    ] {
        for args in [[command, "--help"], ["help", command]] {
            let o = probe(&args);
            assert_eq!(o.status.code(), Some(0), "{args:?}");
            let text = stdout(&o);
            let usage = format!("Usage: vfio-user-probe {command}");
            assert!(text.contains(&usage), "{args:?}:\n{text}");
            for option in options {
                assert!(
                    text.contains(option),
                    "{args:?}: {option} missing from\n{text}"
                );
            }
            assert!(o.stderr.is_empty());
        }
    }
    let o = probe(&["demo", "-h"]);
    assert!(!stdout(&o).contains("--destructive"), "{}", stdout(&o));
}

#[test]
fn version() {
    let expected = format!("vfio-user-probe {}\n", env!("CARGO_PKG_VERSION"));
    for args in [&["--version"][..], &["-V"][..]] {
        let o = probe(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert_eq!(stdout(&o), expected, "{args:?}");
        assert!(o.stderr.is_empty());
    }
}
