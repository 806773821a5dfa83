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
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;
use vfio_user_client::connection::{self, Connection};
use vfio_user_client::device::Error as DeviceError;
use vfio_user_client::protocol::{Command, DmaMap, DmaUnmap};
use vfio_user_client::{ConnectionCause, VfioUserDevice};
use vfio_user_sample_server::SharedMemory;

use crate::error::{errno_text, ProbeError};
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
    /// Windows asked for (more than `windows` when the server refused one).
    pub requested: u32,
    /// Size of each window.
    pub window_size: u64,
    /// Whether the windows were backed by a memfd.
    pub with_fd: bool,
    /// DMA_MAPs per second.
    pub maps_per_s: f64,
    /// DMA_UNMAPs per second.
    pub unmaps_per_s: f64,
    /// Why mapping stopped before `requested` windows: the limit the server hit.
    pub stopped: Option<String>,
}

/// A figure the server refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The figure: `read_latency`, `write_latency`, `read_throughput`, `write_throughput`
    /// or `dma`.
    pub figure: &'static str,
    /// The errno of the server's error reply.
    pub errno: u32,
    /// `refused by the server (Invalid argument (errno 22))`.
    pub reason: String,
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
    /// The figures the server refused; the run went on to the next.
    pub refused: Vec<Refusal>,
    /// Why a measurement is missing otherwise.
    pub notes: Vec<String>,
    /// Why the run stopped part way: the server closed the connection or stopped answering
    /// (exit status 2).
    pub lost: Option<String>,
}

/// One figure of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Figure {
    ReadLatency,
    WriteLatency,
    ReadThroughput,
    WriteThroughput,
    Dma,
}

impl Figure {
    /// Its name in JSON.
    fn id(self) -> &'static str {
        match self {
            Figure::ReadLatency => "read_latency",
            Figure::WriteLatency => "write_latency",
            Figure::ReadThroughput => "read_throughput",
            Figure::WriteThroughput => "write_throughput",
            Figure::Dma => "dma",
        }
    }

    /// Its name in text.
    fn label(self) -> &'static str {
        match self {
            Figure::ReadLatency => "4 B read latency",
            Figure::WriteLatency => "4 B write latency",
            Figure::ReadThroughput => "read throughput",
            Figure::WriteThroughput => "write throughput",
            Figure::Dma => "DMA map / unmap",
        }
    }
}

/// Why a figure's requests did not all succeed.
#[derive(Debug)]
enum Stop {
    /// The server answered with an error reply.
    Refused(u32),
    /// The connection is gone, or a reply did not come in time.
    Lost(String),
    /// Anything else (a reply the library cannot use, a local error).
    Other(String),
}

impl Stop {
    fn of(e: &DeviceError) -> Stop {
        if session::device_lost(e) {
            Stop::Lost(e.to_string())
        } else if let Some(errno) = e.server_errno() {
            Stop::Refused(errno)
        } else {
            Stop::Other(e.to_string())
        }
    }

    fn of_request(e: &connection::Error) -> Stop {
        if session::request_lost(e) {
            Stop::Lost(e.to_string())
        } else if let Some(errno) = e.server_errno() {
            Stop::Refused(errno)
        } else {
            Stop::Other(e.to_string())
        }
    }
}

fn refused_text(errno: u32) -> String {
    format!("refused by the server ({})", errno_text(errno))
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

/// Measures on an open device. Each figure stands alone: one the server refuses is
/// reported as such and the run goes on; a server that goes away ends the run
/// ([`BenchReport::lost`]).
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
        refused: Vec::new(),
        notes: Vec::new(),
        lost: None,
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
            let region = Target {
                device,
                index,
                size,
                writable,
            };
            region.latencies(options, &mut progress, &mut report);
            if report.lost.is_none() {
                region.throughputs(options, &mut progress, &mut report);
            }
        }
    }
    if report.lost.is_none() {
        dma(device, options, &mut progress, &mut report);
    }
    progress.finish();
    report
}

impl BenchReport {
    /// Records why `figure` is missing; `false` when the run cannot go on.
    fn stopped(&mut self, figure: Figure, stop: Stop) -> bool {
        match stop {
            Stop::Refused(errno) => {
                self.refused.push(Refusal {
                    figure: figure.id(),
                    errno,
                    reason: refused_text(errno),
                });
                true
            }
            Stop::Lost(why) => {
                self.lost = Some(format!(
                    "the server was lost during the {}: {why}",
                    figure.label()
                ));
                false
            }
            Stop::Other(why) => {
                self.notes
                    .push(format!("{} not measured: {why}", figure.label()));
                true
            }
        }
    }
}

/// `n` timings of `op`, or its first failure.
fn sample(
    n: usize,
    progress: &mut Progress,
    what: &str,
    mut op: impl FnMut() -> Result<(), DeviceError>,
) -> Result<Vec<u64>, DeviceError> {
    let mut ns = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        op()?;
        ns.push(t.elapsed().as_nanos() as u64);
        progress.step(what, 1);
    }
    Ok(ns)
}

/// The time `calls` calls of `op` take, or its first failure.
fn timed(
    calls: u64,
    progress: &mut Progress,
    what: &str,
    mut op: impl FnMut() -> Result<(), DeviceError>,
) -> Result<Duration, DeviceError> {
    let t = Instant::now();
    for _ in 0..calls {
        op()?;
        progress.step(what, CALL_UNITS);
    }
    Ok(t.elapsed())
}

/// Bytes read back in 4-byte reads for the write throughput when the large reads fail:
/// writes put back what was read, and never anything else.
const FALLBACK_CHUNK: u64 = 4096;

/// The region measured.
struct Target<'a> {
    device: &'a VfioUserDevice,
    index: u32,
    size: u64,
    writable: bool,
}

impl Target<'_> {
    /// 4-byte read and write latency.
    fn latencies(&self, options: &BenchOptions, progress: &mut Progress, report: &mut BenchReport) {
        let samples = options.samples.max(1);
        let (device, index) = (self.device, self.index);
        let mut value = [0u8; 4];
        let read = sample(samples, progress, "read latency", || {
            device.read(index, 0, &mut value)
        });
        let have_value = match read {
            Ok(ns) => {
                report.read_latency = latency(ns);
                true
            }
            Err(e) if !report.stopped(Figure::ReadLatency, Stop::of(&e)) => return,
            Err(_) => false,
        };
        if !self.writable {
            report.notes.push(format!(
                "region {index} is not writable: no writes measured"
            ));
            return;
        }
        if !have_value {
            report.notes.push(
                "4 B write latency not measured: the writes put back what a 4-byte read \
                 returns, and the read failed"
                    .into(),
            );
            return;
        }
        match sample(samples, progress, "write latency", || {
            device.write(index, 0, &value)
        }) {
            Ok(ns) => report.write_latency = latency(ns),
            Err(e) => {
                report.stopped(Figure::WriteLatency, Stop::of(&e));
            }
        }
    }

    /// Large read and write throughput.
    fn throughputs(
        &self,
        options: &BenchOptions,
        progress: &mut Progress,
        report: &mut BenchReport,
    ) {
        let (device, index) = (self.device, self.index);
        let chunk = self.size.min(1 << 20);
        if chunk < FALLBACK_CHUNK || options.bytes == 0 {
            report.notes.push(format!(
                "region {index} ({}) is too small for throughput",
                size_text(self.size)
            ));
            return;
        }
        let mut buf = vec![0u8; chunk as usize];
        let calls = options.bytes.div_ceil(chunk).max(1);
        let read = timed(calls, progress, "read throughput", || {
            device.read(index, 0, &mut buf)
        });
        let chunk = match read {
            Ok(elapsed) => {
                report.read_throughput = Some(throughput(calls * chunk, chunk, elapsed));
                chunk
            }
            Err(e) if !report.stopped(Figure::ReadThroughput, Stop::of(&e)) => return,
            Err(_) if !self.writable => return,
            // The bytes to put back, in the small reads the server takes.
            Err(_) => match self.read_in_words(&mut buf[..FALLBACK_CHUNK as usize]) {
                Ok(()) => FALLBACK_CHUNK,
                Err(e) if session::device_lost(&e) => {
                    report.stopped(Figure::WriteThroughput, Stop::of(&e));
                    return;
                }
                Err(e) => {
                    report.notes.push(format!(
                        "write throughput not measured: the writes put back what was read, \
                         and reading {} in 4-byte reads failed: {e}",
                        size_text(FALLBACK_CHUNK)
                    ));
                    return;
                }
            },
        };
        if !self.writable {
            return;
        }
        let calls = options.bytes.div_ceil(chunk).max(1);
        let data = &buf[..chunk as usize];
        match timed(calls, progress, "write throughput", || {
            device.write(index, 0, data)
        }) {
            Ok(elapsed) => {
                report.write_throughput = Some(throughput(calls * chunk, chunk, elapsed));
            }
            Err(e) => {
                report.stopped(Figure::WriteThroughput, Stop::of(&e));
            }
        }
    }

    /// Fills `buf` from offset 0 of the region in 4-byte reads.
    fn read_in_words(&self, buf: &mut [u8]) -> Result<(), DeviceError> {
        for (i, word) in buf.chunks_mut(4).enumerate() {
            self.device.read(self.index, i as u64 * 4, word)?;
        }
        Ok(())
    }
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

fn per_second(n: u32, elapsed: Duration) -> f64 {
    f64::from(n) / elapsed.as_secs_f64().max(1e-9)
}

/// DMA_MAP and DMA_UNMAP of `options.dma_maps` windows (at most the negotiated
/// `max_dma_maps`); a map the server refuses ends the mapping, and the rate is that of
/// the maps that succeeded.
fn dma(
    device: &VfioUserDevice,
    options: &BenchOptions,
    progress: &mut Progress,
    report: &mut BenchReport,
) {
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
        match SharedMemory::new("vfio-user-probe-bench", u64::from(windows) * DMA_WINDOW) {
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
    let t = Instant::now();
    let (mapped, refusal) = map_windows(conn, windows, &fds, progress);
    let map_time = t.elapsed();
    let stopped = match refusal {
        None => None,
        Some(Stop::Refused(errno)) if mapped > 0 => Some(format!(
            "stopped at map {} of {windows}: {}, below the max_dma_maps of {} negotiated",
            mapped + 1,
            refused_text(errno),
            caps.max_dma_maps
        )),
        Some(Stop::Other(why)) if mapped > 0 => {
            Some(format!("stopped at map {} of {windows}: {why}", mapped + 1))
        }
        // Nothing mapped, or the server is gone.
        Some(stop) => {
            report.stopped(Figure::Dma, stop);
            return;
        }
    };
    let t = Instant::now();
    for i in 0..mapped {
        let mut payload = Vec::with_capacity(DmaUnmap::SIZE);
        DmaUnmap::new(window_address(i), DMA_WINDOW).encode_into(&mut payload);
        if let Err(e) = conn.request(Command::DmaUnmap, &payload, &[]) {
            let what = format!("DMA_UNMAP of window {}", i + 1);
            match Stop::of_request(&e) {
                Stop::Lost(why) => {
                    report.lost = Some(format!("the server was lost during {what}: {why}"))
                }
                _ => report.notes.push(format!("{what} failed: {e}")),
            }
            return;
        }
        progress.step("dma unmap", 1);
    }
    report.dma = Some(DmaRate {
        windows: mapped,
        requested: windows,
        window_size: DMA_WINDOW,
        with_fd,
        maps_per_s: per_second(mapped, map_time),
        unmaps_per_s: per_second(mapped, t.elapsed()),
        stopped,
    });
}

/// Size of each DMA window.
const DMA_WINDOW: u64 = 4096;

fn window_address(i: u32) -> u64 {
    const BASE: u64 = 1 << 40;
    BASE + u64::from(i) * DMA_WINDOW
}

/// Maps windows until `windows` are mapped or one fails: how many were, and why not more.
fn map_windows(
    conn: &Connection,
    windows: u32,
    fds: &[RawFd],
    progress: &mut Progress,
) -> (u32, Option<Stop>) {
    let mut payload = Vec::with_capacity(DmaMap::SIZE);
    for i in 0..windows {
        let offset = if fds.is_empty() {
            0
        } else {
            u64::from(i) * DMA_WINDOW
        };
        payload.clear();
        DmaMap::new(
            DmaMap::FLAG_READ | DmaMap::FLAG_WRITE,
            offset,
            window_address(i),
            DMA_WINDOW,
        )
        .encode_into(&mut payload);
        if let Err(e) = conn.request(Command::DmaMap, &payload, fds) {
            return (i, Some(Stop::of_request(&e)));
        }
        progress.step("dma map", 1);
    }
    (windows, None)
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
        let refused = |figure: Figure| {
            self.refused
                .iter()
                .find(|r| r.figure == figure.id())
                .map(|r| format!("  {:<17}  {}\n", figure.label(), r.reason))
        };
        for (figure, l) in [
            (Figure::ReadLatency, &self.read_latency),
            (Figure::WriteLatency, &self.write_latency),
        ] {
            match l {
                Some(l) => out.push_str(&format!(
                    "  {:<17}  min {:>9}  median {:>9}  p99 {:>9}  ({} samples)\n",
                    figure.label(),
                    us(l.min_ns),
                    us(l.median_ns),
                    us(l.p99_ns),
                    l.samples
                )),
                None => out.extend(refused(figure)),
            }
        }
        for (figure, t) in [
            (Figure::ReadThroughput, &self.read_throughput),
            (Figure::WriteThroughput, &self.write_throughput),
        ] {
            match t {
                Some(t) => out.push_str(&format!(
                    "  {:<17}  {:>8.1} MiB/s  ({} in {} calls of {})\n",
                    figure.label(),
                    t.mib_per_s,
                    size_text(t.bytes),
                    t.bytes / t.chunk.max(1),
                    size_text(t.chunk)
                )),
                None => out.extend(refused(figure)),
            }
        }
        match &self.dma {
            Some(d) => out.push_str(&format!(
                "  {:<17}  {:>8.0} / {:.0} per second  ({} windows of {}, {}{})\n",
                Figure::Dma.label(),
                d.maps_per_s,
                d.unmaps_per_s,
                d.windows,
                size_text(d.window_size),
                if d.with_fd {
                    "memfd-backed"
                } else {
                    "without fd"
                },
                d.stopped
                    .as_ref()
                    .map(|s| format!("; {s}"))
                    .unwrap_or_default()
            )),
            None => out.extend(refused(Figure::Dma)),
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        if let Some(lost) = &self.lost {
            out.push_str(&format!("  stopped: {lost}\n"));
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
