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
//! Then the ratios of the means are printed. Run with `cargo bench --bench region_read`; see
//! BENCHMARKS.md.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use criterion::Criterion;
use vfio_user_client::protocol::{Command, RegionAccess};
use vfio_user_client::{ConnectOptions, Connection};
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

fn gpio_server() -> ServerHandle {
    let (dev, _handle) = GpioDevice::new(Default::default()).expect("GPIO device");
    Server::new(ServerConfig::default(), Box::new(dev))
        .listen_temp()
        .expect("sample server")
}

fn bench_ours(c: &mut Criterion) {
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

    let read = || {
        let reply = conn
            .proxy()
            .request(Command::RegionRead, &payload, &[])
            .expect("REGION_READ");
        let (_, data) = RegionAccess::decode_with_data(&reply.payload).expect("reply");
        let mut value = [0u8; 4];
        value.copy_from_slice(data);
        value
    };
    assert_eq!(u32::from_ne_bytes(read()), GpioDevice::ID);

    c.benchmark_group(GROUP)
        .bench_function(OURS, |b| b.iter(|| black_box(read())));
    drop(conn);
    server.stop();
}

fn bench_crates_io(c: &mut Criterion) {
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

    c.benchmark_group(GROUP)
        .bench_function(CRATES_IO, |b| b.iter(|| black_box(read())));
    drop(client);
    server.stop();
}

fn bench_floor(c: &mut Criterion) {
    let (mut client, mut server) = UnixStream::pair().expect("socket pair");
    let echo = std::thread::spawn(move || {
        let mut request = [0u8; REQUEST_SIZE];
        let mut reply = [0u8; REPLY_SIZE];
        while server.read_exact(&mut request).is_ok() {
            // Echo the header and the access head; 4 bytes of "data" follow.
            reply[..REQUEST_SIZE].copy_from_slice(&request);
            if server.write_all(&reply).is_err() {
                break;
            }
        }
    });
    let request = [0x5au8; REQUEST_SIZE];
    let mut reply = [0u8; REPLY_SIZE];

    c.benchmark_group(GROUP).bench_function(FLOOR, |b| {
        b.iter(|| {
            client.write_all(black_box(&request)).expect("write");
            client.read_exact(&mut reply).expect("read");
            black_box(&reply[REQUEST_SIZE..]);
        })
    });
    drop(client);
    echo.join().expect("echo thread");
}

/// Where criterion writes its results: the same choice criterion makes (`CRITERION_HOME`,
/// else `$CARGO_TARGET_DIR/criterion`), falling back to the workspace's `target/criterion`
/// instead of asking `cargo metadata`.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// Criterion's estimates of one benchmark, in ns per iteration.
#[derive(Clone, Copy)]
struct Estimate {
    mean: f64,
    slope: Option<f64>,
}

/// The estimates of `id` from this run, or `None` if it did not run now (filtered
/// out, skipped, or not in benchmark mode): older estimates are ignored.
fn estimates_ns(dir: &Path, id: &str, started: SystemTime) -> Option<Estimate> {
    let file = dir.join(GROUP).join(id).join("new").join("estimates.json");
    let modified = std::fs::metadata(&file).ok()?.modified().ok()?;
    if modified < started {
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mean = json["mean"]["point_estimate"].as_f64()?;
    Some(Estimate {
        mean,
        slope: json["slope"]["point_estimate"].as_f64(),
    })
}

fn main() {
    // Coarse file systems may store mtimes slightly in the past.
    let started = SystemTime::now() - Duration::from_secs(1);
    let mut criterion = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    bench_ours(&mut criterion);
    bench_crates_io(&mut criterion);
    bench_floor(&mut criterion);
    criterion.final_summary();

    let dir = criterion_dir();
    let estimates: Vec<(&str, Option<Estimate>)> = [OURS, CRATES_IO, FLOOR]
        .into_iter()
        .map(|id| (id, estimates_ns(&dir, id, started)))
        .collect();
    if estimates.iter().all(|(_, e)| e.is_none()) {
        // --test, --list, a filter matching nothing, or results written elsewhere.
        return;
    }
    println!();
    for (id, estimate) in &estimates {
        match estimate {
            Some(Estimate {
                mean,
                slope: Some(slope),
            }) => println!(
                "mean {GROUP}/{id} = {:.3} µs (slope {:.3} µs)",
                mean / 1000.0,
                slope / 1000.0
            ),
            Some(Estimate { mean, slope: None }) => {
                println!("mean {GROUP}/{id} = {:.3} µs", mean / 1000.0)
            }
            None => println!("mean {GROUP}/{id} = (not measured in this run)"),
        }
    }
    let mean = |id| {
        estimates
            .iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, e)| e.map(|e| e.mean))
    };
    for (num, den) in [(OURS, FLOOR), (OURS, CRATES_IO), (CRATES_IO, FLOOR)] {
        if let (Some(n), Some(d)) = (mean(num), mean(den)) {
            println!("ratio {num}/{den} = {:.2}", n / d);
        }
    }
}
