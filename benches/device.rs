// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Region reads and writes through `VfioUserDevice`, measured against the crates.io
//! `vfio_user` client on an identical sample server and against a raw socketpair
//! ping-pong of the same message sizes, in one run; then posted versus synchronous 4-byte
//! writes.
//!
//! Groups `device_read_<size>` and `device_write_<size>` for 4 B, 64 KiB and 1 MiB, each
//! with `ours`, `crates.io` and `floor`; group `device_posted_4B_x1000` with `posted` (1000
//! posted writes and one read that waits for them), `posted-multi` (the same against a
//! server that offers REGION_WRITE_MULTI, into which writes that find the socket backed up
//! are coalesced) and `sync` (1000 synchronous writes). Ratios are printed at the end,
//! followed by `paired_4B`: the 4 B read and write of ours and the crates.io client measured
//! in alternating blocks, whose ratio does not drift with the machine as two criterion
//! measurements taken seconds apart do. Run
//! with `cargo bench --bench device`; see BENCHMARKS.md. `BENCH_ONLY` (a comma-separated
//! list of group-name substrings) sets up only the groups it names.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use criterion::Criterion;
use support::Placement;
use vfio_user_client::{ConnectOptions, DeviceOptions, VfioUserDevice};
use vfio_user_sample_server::test_support::bench as support;
use vfio_user_sample_server::{GpioConfig, GpioDevice, Server, ServerConfig, ServerHandle};

const OURS: &str = "ours";
const CRATES_IO: &str = "crates.io";
const FLOOR: &str = "floor";
const POSTED: &str = "posted";
const POSTED_MULTI: &str = "posted-multi";
const SYNC: &str = "sync";
const POSTED_GROUP: &str = "device_posted_4B_x1000";
const POSTED_BATCH: u32 = 1000;

/// BAR1 of the GPIO device: 4 MiB of scratch RAM.
const SCRATCH: u32 = 1;
/// Header (16) + region access head (16).
const HEAD: usize = 32;

const SIZES: [(usize, &str); 3] = [(4, "4B"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];

fn gpio_server(gpio: GpioConfig) -> ServerHandle {
    gpio_server_with(gpio, support::server_config())
}

fn gpio_server_with(gpio: GpioConfig, config: ServerConfig) -> ServerHandle {
    let (dev, _handle) = GpioDevice::new(gpio).expect("GPIO device");
    Server::new(config, Box::new(dev))
        .listen_temp()
        .expect("sample server")
}

fn group(op: &str, name: &str) -> String {
    format!("device_{op}_{name}")
}

/// The sizes whose read or write group `BENCH_ONLY` selects: the sizes to set up for.
fn selected_sizes() -> Vec<(usize, &'static str)> {
    SIZES
        .into_iter()
        .filter(|(_, name)| {
            ["read", "write"]
                .iter()
                .any(|op| support::selected(&group(op, name)))
        })
        .collect()
}

fn bench_ours(c: &mut Criterion, at: &Placement, sizes: &[(usize, &str)]) {
    let server = at.server(|| gpio_server(GpioConfig::default()));
    let options = DeviceOptions::default();
    let dev = VfioUserDevice::connect(
        server.socket_path().expect("socket path"),
        &ConnectOptions::default(),
        &options,
    )
    .expect("attach");
    for &(size, name) in sizes {
        let data = vec![0x5au8; size];
        let mut buf = vec![0u8; size];
        dev.write(SCRATCH, 0, &data).expect("write");
        dev.read(SCRATCH, 0, &mut buf).expect("read");
        assert_eq!(buf, data);
        at.client(|| {
            if support::selected(&group("read", name)) {
                c.benchmark_group(group("read", name))
                    .bench_function(OURS, |b| {
                        b.iter(|| dev.read(SCRATCH, 0, black_box(&mut buf)).expect("read"))
                    });
            }
            if support::selected(&group("write", name)) {
                c.benchmark_group(group("write", name))
                    .bench_function(OURS, |b| {
                        b.iter(|| dev.write(SCRATCH, 0, black_box(&data)).expect("write"))
                    });
            }
        });
    }
    drop(dev);
    server.stop();
}

fn bench_crates_io(c: &mut Criterion, at: &Placement, sizes: &[(usize, &str)]) {
    let server = at.server(|| gpio_server(GpioConfig::default()));
    let path = server.socket_path().expect("socket path");
    let mut client = match vfio_user::Client::new(path) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("{CRATES_IO}: skipped, vfio_user::Client::new failed: {e:?}");
            return;
        }
    };
    for &(size, name) in sizes {
        let data = vec![0x5au8; size];
        let mut buf = vec![0u8; size];
        client.region_write(SCRATCH, 0, &data).expect("write");
        client.region_read(SCRATCH, 0, &mut buf).expect("read");
        assert_eq!(buf, data);
        at.client(|| {
            if support::selected(&group("read", name)) {
                c.benchmark_group(group("read", name))
                    .bench_function(CRATES_IO, |b| {
                        b.iter(|| {
                            client
                                .region_read(SCRATCH, 0, black_box(&mut buf))
                                .expect("read")
                        })
                    });
            }
            if support::selected(&group("write", name)) {
                c.benchmark_group(group("write", name))
                    .bench_function(CRATES_IO, |b| {
                        b.iter(|| {
                            client
                                .region_write(SCRATCH, 0, black_box(&data))
                                .expect("write")
                        })
                    });
            }
        });
    }
    drop(client);
    server.stop();
}

/// A raw ping-pong: `request` bytes one way, `reply` bytes back, a thread doing blocking
/// `read_exact` / `write_all` on the other end.
fn floor(c: &mut Criterion, at: &Placement, group: &str, request: usize, reply: usize) {
    let (mut client, mut server) = UnixStream::pair().expect("socket pair");
    let echo = at.server(|| {
        std::thread::spawn(move || {
            let mut rq = vec![0u8; request];
            let rp = vec![0xa5u8; reply];
            while server.read_exact(&mut rq).is_ok() {
                if server.write_all(&rp).is_err() {
                    break;
                }
            }
        })
    });
    let rq = vec![0x5au8; request];
    let mut rp = vec![0u8; reply];
    at.client(|| {
        c.benchmark_group(group).bench_function(FLOOR, |b| {
            b.iter(|| {
                client.write_all(black_box(&rq)).expect("write");
                client.read_exact(&mut rp).expect("read");
            })
        });
    });
    drop(client);
    echo.join().expect("echo thread");
}

fn bench_floor(c: &mut Criterion, at: &Placement, sizes: &[(usize, &str)]) {
    for &(size, name) in sizes {
        let (read, write) = (group("read", name), group("write", name));
        if support::selected(&read) {
            floor(c, at, &read, HEAD, HEAD + size);
        }
        if support::selected(&write) {
            floor(c, at, &write, HEAD + size, HEAD);
        }
    }
}

/// Posted writes against a server without REGION_WRITE_MULTI (`posted`, and `sync` for
/// synchronous writes), then against one that offers it (`posted-multi`: writes that find
/// the socket backed up are coalesced).
fn bench_posted(c: &mut Criterion, at: &Placement) {
    for write_multiple in [false, true] {
        // No mappable region: posted writes are allowed.
        let server = at.server(|| {
            let gpio = GpioConfig {
                mappable_bar2: false,
                ..GpioConfig::default()
            };
            let config = ServerConfig {
                write_multiple,
                ..support::server_config()
            };
            gpio_server_with(gpio, config)
        });
        let dev = VfioUserDevice::connect(
            server.socket_path().expect("socket path"),
            &ConnectOptions::default(),
            &DeviceOptions::default(),
        )
        .expect("attach");
        assert!(dev.posted_writes());
        at.client(|| bench_posted_on(c, &dev, write_multiple));
        drop(dev);
        server.stop();
    }
}

fn bench_posted_on(c: &mut Criterion, dev: &VfioUserDevice, write_multiple: bool) {
    let mut g = c.benchmark_group(POSTED_GROUP);
    let id = if write_multiple { POSTED_MULTI } else { POSTED };
    g.bench_function(id, |b| {
        b.iter(|| {
            for v in 0..POSTED_BATCH {
                dev.write_posted(SCRATCH, 0, black_box(&v.to_le_bytes()))
                    .expect("posted write");
            }
            // Waits until the server handled every write before it.
            let mut last = [0u8; 4];
            dev.read(SCRATCH, 0, &mut last).expect("read");
            assert_eq!(u32::from_le_bytes(last), POSTED_BATCH - 1);
        })
    });
    if !write_multiple {
        g.bench_function(SYNC, |b| {
            b.iter(|| {
                for v in 0..POSTED_BATCH {
                    dev.write(SCRATCH, 0, black_box(&v.to_le_bytes()))
                        .expect("write");
                }
            })
        });
    }
    g.finish();
}

/// Group of the interleaved 4 B comparison (see [`paired_4b`]).
const PAIRED_GROUP: &str = "paired_4B";
/// Round trips per block, and blocks per client, of the interleaved comparison.
const PAIRED_BLOCK: u32 = 20_000;
const PAIRED_BLOCKS: usize = 15;

/// Nanoseconds per call of `f`, over `n` calls.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let t = std::time::Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The 4 B read and write, ours against the crates.io client, measured in alternating
/// blocks of [`PAIRED_BLOCK`] round trips, each client on its own sample server, both
/// connected throughout. Criterion measures one client after the other, seconds apart, and
/// on one CPU the machine drifts by more than the difference being measured (±5% between
/// runs); alternating blocks see the same drift on both sides, and the median of the
/// blocks' ratios is steady to about 1%.
fn paired_4b(at: &Placement) {
    let ours_server = at.server(|| gpio_server(GpioConfig::default()));
    let theirs_server = at.server(|| gpio_server(GpioConfig::default()));
    let dev = VfioUserDevice::connect(
        ours_server.socket_path().expect("socket path"),
        &ConnectOptions::default(),
        &DeviceOptions::default(),
    )
    .expect("attach");
    let mut client = match vfio_user::Client::new(theirs_server.socket_path().expect("path")) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("{PAIRED_GROUP}: skipped, vfio_user::Client::new failed: {e:?}");
            return;
        }
    };
    let mut buf = [0u8; 4];
    let data = [0x5au8; 4];
    at.client(|| {
        for op in ["read", "write"] {
            let mut ratios = Vec::with_capacity(PAIRED_BLOCKS);
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            // One block each first, not counted: both sides warm.
            for block in 0..=PAIRED_BLOCKS {
                let (o, t) = if op == "read" {
                    (
                        per_call(PAIRED_BLOCK, || {
                            dev.read(SCRATCH, 0, black_box(&mut buf)).expect("read")
                        }),
                        per_call(PAIRED_BLOCK, || {
                            client
                                .region_read(SCRATCH, 0, black_box(&mut buf))
                                .expect("read")
                        }),
                    )
                } else {
                    (
                        per_call(PAIRED_BLOCK, || {
                            dev.write(SCRATCH, 0, black_box(&data)).expect("write")
                        }),
                        per_call(PAIRED_BLOCK, || {
                            client
                                .region_write(SCRATCH, 0, black_box(&data))
                                .expect("write")
                        }),
                    )
                };
                if block > 0 {
                    ratios.push(o / t);
                    ours.push(o);
                    theirs.push(t);
                }
            }
            let (lo, hi) = ratios
                .iter()
                .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
            println!(
                "paired device_{op}_4B: ours {:.0} ns, crates.io {:.0} ns (medians of {PAIRED_BLOCKS} \
                 alternating blocks of {PAIRED_BLOCK}); ours/crates.io = {:.3} \
                 (median of the blocks' ratios; {lo:.3}..{hi:.3})",
                median(ours),
                median(theirs),
                median(ratios),
            );
        }
    });
    drop(dev);
    drop(client);
    ours_server.stop();
    theirs_server.stop();
}

fn main() {
    let started = support::run_started();
    let mut criterion = support::criterion();
    let at = support::placement();
    println!("{}", at.describe());
    println!("{}", support::describe_server());
    let sizes = selected_sizes();
    if !sizes.is_empty() {
        bench_ours(&mut criterion, at, &sizes);
        bench_crates_io(&mut criterion, at, &sizes);
        bench_floor(&mut criterion, at, &sizes);
    }
    if support::selected(POSTED_GROUP) {
        bench_posted(&mut criterion, at);
    }
    criterion.final_summary();
    if support::selected(PAIRED_GROUP) {
        paired_4b(at);
    }

    let ids = [OURS, CRATES_IO, FLOOR];
    let ratios = [(OURS, CRATES_IO), (OURS, FLOOR), (CRATES_IO, FLOOR)];
    for op in ["read", "write"] {
        for (size, name) in SIZES {
            let bytes = (size > 4).then_some(size as u64);
            support::report(&group(op, name), &ids, &ratios, bytes, started);
        }
    }
    support::report(
        POSTED_GROUP,
        &[POSTED, POSTED_MULTI, SYNC],
        &[(SYNC, POSTED), (SYNC, POSTED_MULTI), (POSTED, POSTED_MULTI)],
        None,
        started,
    );
}
