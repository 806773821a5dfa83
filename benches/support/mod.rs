// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the benchmarks share: criterion settings, reading back this run's estimates, and
//! printing means and ratios.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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

/// Where criterion writes its results: the same choice criterion makes (`CRITERION_HOME`,
/// else `$CARGO_TARGET_DIR/criterion`), falling back to the workspace's `target/criterion`
/// instead of asking `cargo metadata`.
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
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
