// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A 4-byte `REGION_READ` round trip, measured three ways in one run:
//!
//! - `ours`: this crate's [`Connection`] against the sample server's GPIO device;
//! - `crates.io`: the `vfio_user` crate's `Client` against a second, identical server;
//! - `floor`: a raw `UnixStream::pair()` ping-pong with the same message sizes (32-byte
//!   request, 36-byte reply) and a thread doing blocking `read_exact` / `write_all` on the
//!   other end: what any client and minimal server pay for the socket and the wake-ups.
//!
//! Then the ratios of the means are printed, and for each variant the context switches and
//! CPU time per round trip of every thread involved (counted over a further run of round
//! trips, from `/proc/self/task/*/{status,schedstat}`). Run with
//! `cargo bench --bench region_read`; see BENCHMARKS.md.
//!
//! `REGION_READ_COUNT_ONLY=<n>` skips criterion and only counts, over `n` round trips of
//! each variant (or of the one named by `REGION_READ_VARIANT`): for `strace -c -f`, `perf`
//! and the like, which should not see criterion's own work.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use vfio_user_client::protocol::{Command, RegionAccess};
use vfio_user_client::{ConnectOptions, Connection};
use vfio_user_sample_server::test_support::bench as support;
use vfio_user_sample_server::{GpioDevice, Server, ServerConfig, ServerHandle};

const GROUP: &str = "region_read_4B";
const OURS: &str = "ours";
const CRATES_IO: &str = "crates.io";
const FLOOR: &str = "floor";

/// Region 0 (BAR0) register read by every variant: the read-only identification register.
const REGION: u32 = 0;
const OFFSET: u64 = GpioDevice::REG_ID;

/// Header (16) + region access head (16).
const REQUEST_SIZE: usize = 32;
/// Header (16) + region access head (16) + 4 data bytes.
const REPLY_SIZE: usize = 36;

/// Round trips over which context switches and CPU time are counted after the timings.
const COUNTED_ROUND_TRIPS: u32 = 20_000;

fn gpio_server() -> ServerHandle {
    support::placement().server(|| {
        let (dev, _handle) = GpioDevice::new(Default::default()).expect("GPIO device");
        Server::new(ServerConfig::default(), Box::new(dev))
            .listen_temp()
            .expect("sample server")
    })
}

/// Runs `f` with a 4-byte read through this crate's [`Connection`].
fn with_ours(f: impl FnOnce(&mut dyn FnMut() -> [u8; 4])) {
    let server = gpio_server();
    let path = server.socket_path().expect("socket path");
    let conn = Connection::connect(path, &ConnectOptions::default()).expect("connect");
    let mut payload = Vec::with_capacity(RegionAccess::HEAD_SIZE);
    RegionAccess {
        offset: OFFSET,
        region: REGION,
        count: 4,
    }
    .encode_into(&mut payload);

    let mut read = || {
        let reply = conn
            .request(Command::RegionRead, &payload, &[])
            .expect("REGION_READ");
        let (_, data) = RegionAccess::decode_with_data(&reply.payload).expect("reply");
        let mut value = [0u8; 4];
        value.copy_from_slice(data);
        value
    };
    assert_eq!(u32::from_ne_bytes(read()), GpioDevice::ID);
    f(&mut read);
    drop(conn);
    server.stop();
}

/// Runs `f` with a 4-byte read through the crates.io `vfio_user` client (not at all if it
/// cannot connect).
fn with_crates_io(f: impl FnOnce(&mut dyn FnMut() -> [u8; 4])) {
    let server = gpio_server();
    let path = server.socket_path().expect("socket path");
    let mut client = match vfio_user::Client::new(path) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("{GROUP}/{CRATES_IO}: skipped, vfio_user::Client::new failed: {e:?}");
            return;
        }
    };
    let mut read = || {
        let mut value = [0u8; 4];
        client
            .region_read(REGION, OFFSET, &mut value)
            .expect("REGION_READ");
        value
    };
    assert_eq!(u32::from_ne_bytes(read()), GpioDevice::ID);
    f(&mut read);
    drop(client);
    server.stop();
}

/// Runs `f` with a raw socketpair ping-pong of the same sizes.
fn with_floor(f: impl FnOnce(&mut dyn FnMut() -> [u8; 4])) {
    let (mut client, mut server) = UnixStream::pair().expect("socket pair");
    let spawn = std::thread::Builder::new().name("floor-echo".into());
    let echo = support::placement()
        .server(|| {
            spawn.spawn(move || {
                let mut request = [0u8; REQUEST_SIZE];
                let mut reply = [0u8; REPLY_SIZE];
                while server.read_exact(&mut request).is_ok() {
                    // Echo the header and the access head; 4 bytes of "data" follow.
                    reply[..REQUEST_SIZE].copy_from_slice(&request);
                    if server.write_all(&reply).is_err() {
                        break;
                    }
                }
            })
        })
        .expect("echo thread");
    let request = [0x5au8; REQUEST_SIZE];
    let mut reply = [0u8; REPLY_SIZE];
    let mut read = || {
        client.write_all(black_box(&request)).expect("write");
        client.read_exact(&mut reply).expect("read");
        let mut value = [0u8; 4];
        value.copy_from_slice(&reply[REQUEST_SIZE..]);
        value
    };
    f(&mut read);
    drop(client);
    echo.join().expect("echo thread");
}

type Variant = for<'a> fn(Box<dyn FnOnce(&mut dyn FnMut() -> [u8; 4]) + 'a>);

const VARIANTS: [(&str, Variant); 3] = [
    (OURS, |f| with_ours(f)),
    (CRATES_IO, |f| with_crates_io(f)),
    (FLOOR, |f| with_floor(f)),
];

/// One thread's counters: context switches (voluntary, involuntary) and time on a CPU.
struct ThreadStats {
    tid: u32,
    name: String,
    voluntary: u64,
    involuntary: u64,
    cpu_ns: u64,
}

/// The counters of every thread of this process.
fn thread_stats() -> Vec<ThreadStats> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let read = |file: &str| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
        let status = read("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        out.push(ThreadStats {
            tid,
            name: read("comm").trim().to_string(),
            voluntary: field("voluntary_ctxt_switches:"),
            involuntary: field("nonvoluntary_ctxt_switches:"),
            // schedstat: time on a CPU (ns), time waiting to run (ns), timeslices.
            cpu_ns: read("schedstat")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        });
    }
    out
}

/// Runs `n` round trips and prints, per round trip, each busy thread's context switches
/// (voluntary+involuntary) and time on a CPU; the calling thread is "caller". The switch
/// counts hardly depend on what else runs on the machine; the CPU times do, less than the
/// timings.
fn count_per_round_trip(id: &str, read: &mut dyn FnMut() -> [u8; 4], n: u32) {
    // "/proc/thread-self" links to "<pid>/task/<tid>".
    let me: Option<u32> = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|l| l.file_name()?.to_str()?.parse().ok());
    let before = thread_stats();
    for _ in 0..n {
        black_box(read());
    }
    let after = thread_stats();
    let mut line = format!("per round trip {GROUP}/{id}:");
    let mut total = 0.0;
    let per = |x: u64| x as f64 / f64::from(n);
    for t in &after {
        let b = before.iter().find(|b| b.tid == t.tid);
        let delta = |f: fn(&ThreadStats) -> u64| f(t).saturating_sub(b.map_or(0, f));
        let (v, i) = (delta(|s| s.voluntary), delta(|s| s.involuntary));
        let cpu = delta(|s| s.cpu_ns);
        if v + i == 0 && per(cpu) < 10.0 {
            continue;
        }
        let name = if Some(t.tid) == me {
            "caller"
        } else {
            t.name.as_str()
        };
        total += per(v + i);
        line += &format!(
            " | {name} {:.2}+{:.2} switches, {:.2} µs CPU",
            per(v),
            per(i),
            per(cpu) / 1000.0
        );
    }
    println!("{line} | {total:.2} switches in all");
}

fn main() {
    let started = support::run_started();
    let mut criterion = support::criterion();
    let at = support::placement();
    println!("{}", at.describe());

    if let Some(n) = std::env::var("REGION_READ_COUNT_ONLY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // For `strace -c -f` and the like: no criterion, just `n` round trips of each variant
        // (or of the one named by REGION_READ_VARIANT).
        let only = std::env::var("REGION_READ_VARIANT").ok();
        for (id, variant) in VARIANTS {
            if only.as_deref().is_none_or(|o| o == id) {
                variant(Box::new(|read| {
                    at.client(|| count_per_round_trip(id, read, n))
                }));
            }
        }
        return;
    }
    for (id, variant) in VARIANTS {
        variant(Box::new(|read| {
            at.client(|| {
                criterion
                    .benchmark_group(GROUP)
                    .bench_function(id, |b| b.iter(|| black_box(read())));
            })
        }));
    }
    criterion.final_summary();

    support::report(
        GROUP,
        &[OURS, CRATES_IO, FLOOR],
        &[(OURS, FLOOR), (OURS, CRATES_IO), (CRATES_IO, FLOOR)],
        None,
        started,
    );
    let measured = |id| support::estimate(GROUP, id, started).is_some();
    if !VARIANTS.iter().any(|(id, _)| measured(id)) {
        // --test, --list, a filter matching nothing, or results written elsewhere.
        return;
    }
    println!();
    for (id, variant) in VARIANTS {
        if measured(id) {
            variant(Box::new(|read| {
                at.client(|| count_per_round_trip(id, read, COUNTED_ROUND_TRIPS))
            }));
        }
    }
}
