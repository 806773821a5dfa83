// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the benchmarks share: criterion settings, where the two sides of a benchmark run,
//! reading back this run's estimates, and printing means and ratios.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::ServerConfig;
use criterion::Criterion;

/// Criterion with the settings every benchmark here uses.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

/// When this run started (a second early: coarse file systems may store mtimes slightly in
/// the past).
pub fn run_started() -> SystemTime {
    SystemTime::now() - Duration::from_secs(1)
}

/// The sample servers' configuration: the default (reading as many waiting messages as fit
/// at once), or, with `BENCH_SERVER=libvfio-user`, reading each message as libvfio-user
/// does, its header and then its body ([`ServerConfig::read_ahead`] off): what a real
/// server costs per message.
pub fn server_config() -> ServerConfig {
    let exact = match std::env::var("BENCH_SERVER") {
        Ok(v) if v == "libvfio-user" => true,
        Ok(v) => panic!("BENCH_SERVER is `libvfio-user` or unset, not `{v}`"),
        Err(_) => false,
    };
    ServerConfig {
        read_ahead: !exact,
        ..ServerConfig::default()
    }
}

/// A line saying how the sample servers read, for the report.
pub fn describe_server() -> String {
    if server_config().read_ahead {
        "server: sample server, reading ahead".into()
    } else {
        "server: sample server, reading each message as libvfio-user does".into()
    }
}

/// Where criterion writes its results: the same choice criterion makes (`CRITERION_HOME`,
/// else `$CARGO_TARGET_DIR/criterion`), falling back to the workspace's `target/criterion`
/// instead of asking `cargo metadata` (this crate sits one level below the workspace root).
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join("criterion")
}

/// Criterion's estimates of one benchmark, in ns per iteration.
#[derive(Clone, Copy, Debug)]
pub struct Estimate {
    /// Mean.
    pub mean: f64,
    /// Slope of the linear regression, when criterion computed one.
    pub slope: Option<f64>,
}

/// The estimates of `group/id` from this run, or `None` if it did not run now (filtered
/// out, skipped, or not in benchmark mode): older estimates are ignored.
pub fn estimate(group: &str, id: &str, started: SystemTime) -> Option<Estimate> {
    let file = criterion_dir()
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    let modified = std::fs::metadata(&file).ok()?.modified().ok()?;
    if modified < started {
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(Estimate {
        mean: json["mean"]["point_estimate"].as_f64()?,
        slope: json["slope"]["point_estimate"].as_f64(),
    })
}

fn pretty(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.3} ms", ns / 1_000_000.0)
    } else {
        format!("{:.3} µs", ns / 1000.0)
    }
}

/// Prints the means of `ids` in `group` measured in this run, then the ratio of each pair
/// in `ratios` (numerator id, denominator id). `bytes`, when given, adds a throughput.
/// Prints nothing when nothing of the group ran now.
pub fn report(
    group: &str,
    ids: &[&str],
    ratios: &[(&str, &str)],
    bytes: Option<u64>,
    started: SystemTime,
) {
    let found: Vec<(&str, Option<Estimate>)> = ids
        .iter()
        .map(|id| (*id, estimate(group, id, started)))
        .collect();
    if found.iter().all(|(_, e)| e.is_none()) {
        return;
    }
    println!();
    for (id, e) in &found {
        match e {
            Some(e) => {
                let rate = bytes
                    .map(|b| format!(", {:.0} MiB/s", b as f64 / e.mean * 1e9 / (1 << 20) as f64))
                    .unwrap_or_default();
                let slope = e
                    .slope
                    .map(|s| format!(" (slope {})", pretty(s)))
                    .unwrap_or_default();
                println!("mean {group}/{id} = {}{slope}{rate}", pretty(e.mean));
            }
            None => println!("mean {group}/{id} = (not measured in this run)"),
        }
    }
    let mean = |id: &str| {
        found
            .iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, e)| e.map(|e| e.mean))
    };
    for (num, den) in ratios {
        if let (Some(n), Some(d)) = (mean(num), mean(den)) {
            println!("ratio {group}: {num}/{den} = {:.2}", n / d);
        }
    }
}

/// Whether the benchmark group `group` should be set up in this run: always, unless the
/// `BENCH_ONLY` environment variable names a substring the group does not contain. Lets a
/// profiler (strace, perf) watch one group without the set-up of the others (criterion's
/// own filter only skips the measuring, not what `main` does before it).
pub fn selected(group: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(only) => only.split(',').any(|o| group.contains(o)),
        Err(_) => true,
    }
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable `cpu_set_t` of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below `CPU_SETSIZE`, the set's capacity.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Restricts the calling thread to `cpus` (threads it spawns afterwards inherit this).
fn set_cpus(cpus: &[usize]) {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `cpu` came from `allowed_cpus`, so it is below `CPU_SETSIZE`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed; it is only read.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// Which CPUs the two sides of a benchmark run on.
///
/// With `BENCH_CPUS` unset or `split`, and at least two CPUs allowed, the client side
/// (whatever issues the measured requests, or serves them for the DMA benchmarks' client)
/// runs on the first allowed CPU and the server side (sample servers, echo threads,
/// requesters) on the second: a device server on its own CPU, as deployed, and figures that
/// do not depend on where the scheduler happens to put the threads. With `BENCH_CPUS=none`,
/// or when only one CPU is allowed (`taskset -c 0 cargo bench`: both sides share it),
/// nothing is pinned.
#[derive(Clone, Debug)]
pub struct Placement {
    client: Option<usize>,
    server: Option<usize>,
}

impl Placement {
    /// The placement for this run, from `BENCH_CPUS` and the CPUs allowed.
    pub fn from_env() -> Placement {
        let cpus = allowed_cpus();
        let mode = std::env::var("BENCH_CPUS").unwrap_or_else(|_| "split".into());
        if mode == "none" || cpus.len() < 2 {
            return Placement {
                client: None,
                server: None,
            };
        }
        assert_eq!(mode, "split", "BENCH_CPUS is `split` or `none`");
        Placement {
            client: Some(cpus[0]),
            server: Some(cpus[1]),
        }
    }

    /// A line saying where the sides run, for the report.
    pub fn describe(&self) -> String {
        match (self.client, self.server) {
            (Some(c), Some(s)) => {
                format!("placement: client side on CPU {c}, server side on CPU {s}")
            }
            _ => format!(
                "placement: not pinned ({} CPUs allowed)",
                allowed_cpus().len()
            ),
        }
    }

    fn run_on<T>(cpu: Option<usize>, f: impl FnOnce() -> T) -> T {
        let Some(cpu) = cpu else {
            return f();
        };
        let before = allowed_cpus();
        set_cpus(&[cpu]);
        let out = f();
        set_cpus(&before);
        out
    }

    /// Runs `f` on the client side's CPU; threads it spawns stay there.
    pub fn client<T>(&self, f: impl FnOnce() -> T) -> T {
        Self::run_on(self.client, f)
    }

    /// Runs `f` on the server side's CPU; threads it spawns stay there.
    pub fn server<T>(&self, f: impl FnOnce() -> T) -> T {
        Self::run_on(self.server, f)
    }
}

/// This run's [`Placement`], decided once.
pub fn placement() -> &'static Placement {
    static PLACEMENT: std::sync::OnceLock<Placement> = std::sync::OnceLock::new();
    PLACEMENT.get_or_init(Placement::from_env)
}
