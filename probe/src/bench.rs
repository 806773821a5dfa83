// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `bench`: what a VMM would see through the client library. Latency of 4-byte region reads
//! and writes, throughput of large reads and writes, and the rate of DMA map and unmap.
//!
//! The writes put back the bytes read from the same place, so that a RAM-like region keeps
//! its contents; on a register they still have whatever side effect a write has, so choose
//! the region with `--region` when the default (the largest readable and writable region
//! that is not PCI config space) is not harmless.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;
use vfio_user_client::protocol::{
    Command, DmaMap, DmaUnmap, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE,
};
use vfio_user_client::VfioUserDevice;
use vfio_user_sample_server::SharedMemory;

use crate::error::ProbeError;
use crate::pci::size_text;
use crate::session;

/// Progress units of one large read or write call.
const CALL_UNITS: u64 = 100;

/// What to measure and how much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// Deadline of every reply.
    pub timeout: Duration,
    /// The region to use; `None` picks one.
    pub region: Option<u32>,
    /// Samples per latency measurement.
    pub samples: usize,
    /// Bytes moved per throughput measurement.
    pub bytes: u64,
    /// DMA windows mapped (and unmapped) for the rate.
    pub dma_maps: u32,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            timeout: session::DEFAULT_TIMEOUT,
            region: None,
            samples: 10_000,
            bytes: 256 << 20,
            dma_maps: 1000,
            progress: false,
        }
    }
}

/// Latency of one kind of access, in nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Samples taken.
    pub samples: usize,
    /// Fastest.
    pub min_ns: u64,
    /// Median.
    pub median_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
}

/// Throughput of one direction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Throughput {
    /// Bytes moved.
    pub bytes: u64,
    /// Bytes per call of the library (split by it into messages).
    pub chunk: u64,
    /// Time taken, seconds.
    pub seconds: f64,
    /// MiB per second.
    pub mib_per_s: f64,
}

/// DMA map and unmap rate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DmaRate {
    /// Windows mapped, then unmapped.
    pub windows: u32,
    /// Size of each window.
    pub window_size: u64,
    /// Whether the windows were backed by a memfd.
    pub with_fd: bool,
    /// DMA_MAPs per second.
    pub maps_per_s: f64,
    /// DMA_UNMAPs per second.
    pub unmaps_per_s: f64,
}

/// Everything `bench` reports. A measurement that could not be made is `None` and its
/// reason is in `notes`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// The socket.
    pub socket: String,
    /// The region measured.
    pub region: Option<u32>,
    /// Its size.
    pub region_size: u64,
    /// 4-byte REGION_READ.
    pub read_latency: Option<Latency>,
    /// 4-byte REGION_WRITE.
    pub write_latency: Option<Latency>,
    /// Large reads.
    pub read_throughput: Option<Throughput>,
    /// Large writes.
    pub write_throughput: Option<Throughput>,
    /// DMA map/unmap.
    pub dma: Option<DmaRate>,
    /// Why a measurement is missing.
    pub notes: Vec<String>,
}

/// A progress bar on stderr, drawn only when asked for.
struct Progress {
    enabled: bool,
    total: u64,
    done: u64,
    shown: u64,
}

impl Progress {
    fn new(enabled: bool, total: u64) -> Progress {
        Progress {
            enabled,
            total: total.max(1),
            done: 0,
            shown: u64::MAX,
        }
    }

    fn step(&mut self, what: &str, n: u64) {
        self.done = (self.done + n).min(self.total);
        let pct = self.done * 100 / self.total;
        if !self.enabled || pct == self.shown {
            return;
        }
        self.shown = pct;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}", progress_line(pct, what));
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.enabled {
            let _ = write!(std::io::stderr(), "\r{:70}\r", "");
        }
    }
}

/// The progress line at `pct` percent (at most 100) in the phase `what`, without the `\r`
/// that returns to its start.
fn progress_line(pct: u64, what: &str) -> String {
    let filled = (pct.min(100) / 4) as usize;
    format!(
        "  bench [{}{}] {pct:>3}% {what:<16}",
        "#".repeat(filled),
        ".".repeat(25 - filled)
    )
}

fn latency(mut ns: Vec<u64>) -> Option<Latency> {
    if ns.is_empty() {
        return None;
    }
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize];
    Some(Latency {
        samples: ns.len(),
        min_ns: ns[0],
        median_ns: at(0.5),
        p99_ns: at(0.99),
    })
}

fn pick_region(device: &VfioUserDevice, asked: Option<u32>) -> Result<u32, String> {
    if let Some(index) = asked {
        let r = device.region(index).map_err(|e| e.to_string())?;
        if !r.readable() || r.size() < 4 {
            return Err(format!(
                "region {index} is not a readable region of 4 bytes or more"
            ));
        }
        return Ok(index);
    }
    device
        .regions()
        .iter()
        .filter(|r| r.readable() && r.writable() && r.size() >= 4)
        .filter(|r| !(device.is_pci() && r.index() == VFIO_PCI_CONFIG_REGION_INDEX))
        .max_by_key(|r| r.size())
        .or_else(|| {
            device
                .regions()
                .iter()
                .filter(|r| r.readable() && r.size() >= 4)
                .max_by_key(|r| r.size())
        })
        .map(|r| r.index())
        .ok_or_else(|| "no readable region of 4 bytes or more".into())
}

/// Connects to `path` and measures.
pub fn run(path: &Path, options: &BenchOptions) -> Result<BenchReport, ProbeError> {
    let device = session::open_device(path, options.timeout)?;
    Ok(measure(&device, path, options))
}

/// Measures on an open device.
pub fn measure(device: &VfioUserDevice, path: &Path, options: &BenchOptions) -> BenchReport {
    let mut report = BenchReport {
        socket: path.display().to_string(),
        region: None,
        region_size: 0,
        read_latency: None,
        write_latency: None,
        read_throughput: None,
        write_throughput: None,
        dma: None,
        notes: Vec::new(),
    };
    let samples = options.samples.max(1);
    // Progress units: one per small request; a 1 MiB call takes about a hundred times as long.
    let calls = options.bytes.div_ceil(1 << 20);
    let total = 2 * samples as u64 + 2 * calls * CALL_UNITS + 2 * u64::from(options.dma_maps);
    let mut progress = Progress::new(options.progress, total);
    match pick_region(device, options.region) {
        Err(e) => report
            .notes
            .push(format!("region accesses not measured: {e}")),
        Ok(index) => {
            report.region = Some(index);
            let (size, writable) = device
                .region(index)
                .map(|r| (r.size(), r.writable()))
                .unwrap_or((0, false));
            report.region_size = size;
            regions(
                device,
                index,
                size,
                writable,
                options,
                &mut progress,
                &mut report,
            );
        }
    }
    dma(device, options, &mut progress, &mut report);
    progress.finish();
    report
}

fn regions(
    device: &VfioUserDevice,
    index: u32,
    size: u64,
    writable: bool,
    options: &BenchOptions,
    progress: &mut Progress,
    report: &mut BenchReport,
) {
    let samples = options.samples.max(1);
    let mut value = [0u8; 4];
    let mut ns = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        if let Err(e) = device.read(index, 0, &mut value) {
            report.notes.push(format!("4-byte reads failed: {e}"));
            return;
        }
        ns.push(t.elapsed().as_nanos() as u64);
        progress.step("read latency", 1);
    }
    report.read_latency = latency(ns);
    if writable {
        let mut ns = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            if let Err(e) = device.write(index, 0, &value) {
                report.notes.push(format!("4-byte writes failed: {e}"));
                ns.clear();
                break;
            }
            ns.push(t.elapsed().as_nanos() as u64);
            progress.step("write latency", 1);
        }
        report.write_latency = latency(ns);
    } else {
        report.notes.push(format!(
            "region {index} is not writable: no writes measured"
        ));
    }
    let chunk = size.min(1 << 20);
    if chunk < 4096 || options.bytes == 0 {
        report.notes.push(format!(
            "region {index} ({}) is too small for throughput",
            size_text(size)
        ));
        return;
    }
    let mut buf = vec![0u8; chunk as usize];
    let calls = options.bytes.div_ceil(chunk).max(1);
    let t = Instant::now();
    for _ in 0..calls {
        if let Err(e) = device.read(index, 0, &mut buf) {
            report.notes.push(format!("large reads failed: {e}"));
            return;
        }
        progress.step("read throughput", CALL_UNITS);
    }
    report.read_throughput = Some(throughput(calls * chunk, chunk, t.elapsed()));
    if !writable {
        return;
    }
    let t = Instant::now();
    for _ in 0..calls {
        // Writes back what was just read: the region keeps its contents.
        if let Err(e) = device.write(index, 0, &buf) {
            report.notes.push(format!("large writes failed: {e}"));
            return;
        }
        progress.step("write throughput", CALL_UNITS);
    }
    report.write_throughput = Some(throughput(calls * chunk, chunk, t.elapsed()));
}

fn throughput(bytes: u64, chunk: u64, elapsed: Duration) -> Throughput {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Throughput {
        bytes,
        chunk,
        seconds,
        mib_per_s: bytes as f64 / (1 << 20) as f64 / seconds,
    }
}

fn dma(
    device: &VfioUserDevice,
    options: &BenchOptions,
    progress: &mut Progress,
    report: &mut BenchReport,
) {
    const WINDOW: u64 = 4096;
    const BASE: u64 = 1 << 40;
    let caps = device.capabilities();
    let windows = options.dma_maps.min(caps.max_dma_maps);
    if windows == 0 {
        report
            .notes
            .push("DMA map rate not measured (0 windows)".into());
        return;
    }
    let with_fd = caps.max_msg_fds > 0;
    let memory = if with_fd {
        match SharedMemory::new("vfio-user-probe-bench", u64::from(windows) * WINDOW) {
            Ok(m) => Some(m),
            Err(e) => {
                report
                    .notes
                    .push(format!("DMA map rate not measured: memfd: {e}"));
                return;
            }
        }
    } else {
        None
    };
    let conn = device.connection();
    let fds: Vec<_> = memory.iter().map(|m| m.as_raw_fd()).collect();
    let mut payload = Vec::with_capacity(DmaMap::SIZE);
    let mut mapped = 0u32;
    let t = Instant::now();
    for i in 0..windows {
        let offset = if with_fd { u64::from(i) * WINDOW } else { 0 };
        payload.clear();
        DmaMap::new(
            DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
            offset,
            BASE + u64::from(i) * WINDOW,
            WINDOW,
        )
        .encode_into(&mut payload);
        if let Err(e) = conn.request(Command::DmaMap, &payload, &fds) {
            report
                .notes
                .push(format!("DMA_MAP of window {i} failed: {e}"));
            break;
        }
        mapped += 1;
        progress.step("dma map", 1);
    }
    let map_time = t.elapsed();
    let t = Instant::now();
    for i in 0..mapped {
        payload.clear();
        DmaUnmap::new(BASE + u64::from(i) * WINDOW, WINDOW).encode_into(&mut payload);
        if let Err(e) = conn.request(Command::DmaUnmap, &payload, &[]) {
            report
                .notes
                .push(format!("DMA_UNMAP of window {i} failed: {e}"));
            return;
        }
        progress.step("dma unmap", 1);
    }
    let unmap_time = t.elapsed();
    if mapped == windows {
        report.dma = Some(DmaRate {
            windows,
            window_size: WINDOW,
            with_fd,
            maps_per_s: f64::from(windows) / map_time.as_secs_f64().max(1e-9),
            unmaps_per_s: f64::from(windows) / unmap_time.as_secs_f64().max(1e-9),
        });
    }
}

fn us(ns: u64) -> String {
    format!("{:.1} us", ns as f64 / 1000.0)
}

impl BenchReport {
    /// The report as text.
    pub fn render_text(&self) -> String {
        let mut out = format!("Benchmark of {}\n", self.socket);
        if let Some(r) = self.region {
            out.push_str(&format!(
                "  Region {r} ({}) through the client library, messages only\n",
                size_text(self.region_size)
            ));
        }
        for (what, l) in [
            ("4 B read latency ", &self.read_latency),
            ("4 B write latency", &self.write_latency),
        ] {
            if let Some(l) = l {
                out.push_str(&format!(
                    "  {what}  min {:>9}  median {:>9}  p99 {:>9}  ({} samples)\n",
                    us(l.min_ns),
                    us(l.median_ns),
                    us(l.p99_ns),
                    l.samples
                ));
            }
        }
        for (what, t) in [
            ("read throughput  ", &self.read_throughput),
            ("write throughput ", &self.write_throughput),
        ] {
            if let Some(t) = t {
                out.push_str(&format!(
                    "  {what}  {:>8.1} MiB/s  ({} in {} calls of {})\n",
                    t.mib_per_s,
                    size_text(t.bytes),
                    t.bytes / t.chunk.max(1),
                    size_text(t.chunk)
                ));
            }
        }
        if let Some(d) = &self.dma {
            out.push_str(&format!(
                "  DMA map / unmap    {:>8.0} / {:.0} per second  ({} windows of {}, {})\n",
                d.maps_per_s,
                d.unmaps_per_s,
                d.windows,
                size_text(d.window_size),
                if d.with_fd {
                    "memfd-backed"
                } else {
                    "without fd"
                }
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_fills_the_bar() {
        assert_eq!(
            progress_line(0, "read latency"),
            "  bench [.........................]   0% read latency    "
        );
        assert_eq!(
            progress_line(48, "dma map"),
            "  bench [############.............]  48% dma map         "
        );
        let full = progress_line(100, "write throughput");
        assert_eq!(
            full,
            "  bench [#########################] 100% write throughput"
        );
        // `finish` blanks 70 columns: every line fits.
        assert!(full.len() <= 70);
    }

    #[test]
    fn progress_counts_to_the_total() {
        let mut p = Progress::new(false, 3);
        p.step("read latency", 2);
        assert_eq!((p.done, p.shown), (2, u64::MAX));
        p.step("read latency", 5);
        assert_eq!(p.done, 3);
    }
}
