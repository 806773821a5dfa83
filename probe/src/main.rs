// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `vfio-user-probe` command line. Exit status: 0 success; 1 a check failed, or a
//! section of `info` hit an error reply or a protocol violation; 2 the server could not be
//! used, or went away part way (or the command line is wrong).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use vfio_user_probe::bench::BenchOptions;
use vfio_user_probe::check::CheckOptions;
use vfio_user_probe::{bench, check, demo, info, ProbeError};

/// Exit status when the server could not be used or the command line is wrong.
const UNUSABLE: u8 = 2;

const EXIT_STATUS: &str = "Exit status: 0 success, 1 a check failed or info could not read a \
     section, 2 the server could not be used or went away part way, or bad usage";

/// Inspect, conformance-check and benchmark a vfio-user server without booting a VMM.
#[derive(Debug, Parser)]
#[command(
    name = "vfio-user-probe",
    version,
    subcommand_required = true,
    arg_required_else_help = true,
    args_override_self = true,
    after_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Negotiated version and capabilities, regions, IRQs, PCI config space
    #[command(after_help = EXIT_STATUS)]
    Info {
        /// The server's Unix socket
        socket: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Conformance checks, each PASS / FAIL / SKIP with its reason
    #[command(after_help = EXIT_STATUS)]
    Check {
        /// The server's Unix socket
        socket: PathBuf,
        /// Also run the checks that write to device registers
        #[arg(long)]
        destructive: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Region access latency and throughput, DMA map and unmap rate
    #[command(after_help = EXIT_STATUS)]
    Bench {
        /// The server's Unix socket
        socket: PathBuf,
        #[command(flatten)]
        bench: BenchArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Start the built-in sample server and run info, check and bench on it
    #[command(after_help = EXIT_STATUS)]
    Demo {
        #[command(flatten)]
        common: Common,
    },
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
struct Common {
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Deadline for connecting and for every reply (e.g. 200ms, 2s)
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

/// What `bench` measures; the defaults are those of [`BenchOptions::default`].
#[derive(Debug, Args)]
struct BenchArgs {
    /// The region to use [default: the largest read/write region]
    #[arg(long, value_name = "N")]
    region: Option<u32>,
    /// Samples per latency figure
    #[arg(long, value_name = "N", default_value = "10000")]
    samples: usize,
    /// Bytes per throughput figure (e.g. 64M, 1G)
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    bytes: u64,
    /// DMA windows to map and unmap
    #[arg(long, value_name = "N", default_value = "1000")]
    dma_maps: u32,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| Duration::from_secs_f64(v * scale))
        .ok_or_else(|| "expected a positive duration such as 200ms, 2s or 1.5".into())
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| "expected a size such as 4096, 64K, 256M or 1G".into())
}

/// Whether `bench` draws its progress line: only for a person watching a terminal.
fn progress_wanted(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

impl BenchArgs {
    fn options(&self, common: &Common) -> BenchOptions {
        BenchOptions {
            timeout: common.timeout,
            region: self.region,
            samples: self.samples,
            bytes: self.bytes,
            dma_maps: self.dma_maps,
            progress: progress_wanted(common.json),
        }
    }
}

fn print<T: Serialize>(json: bool, report: &T, text: impl FnOnce(&T) -> String) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("vfio-user-probe: error: serialising the report: {e}"),
        }
    } else {
        print!("{}", text(report));
    }
}

/// How a subcommand that reached the server ended.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Everything read, measured or checked: exit status 0.
    Success,
    /// A check failed, or a section of `info` hit an error reply or a protocol violation:
    /// exit status 1.
    Failed,
    /// The server went away part way (the report shows what came before): exit status 2,
    /// with this line on stderr.
    Lost(String),
}

impl Verdict {
    fn of(ok: bool, socket: &str, lost: &Option<String>) -> Verdict {
        match lost {
            Some(why) => Verdict::Lost(format!("{socket}: {why}")),
            None if ok => Verdict::Success,
            None => Verdict::Failed,
        }
    }
}

/// Runs the subcommand.
fn run(command: &Cmd) -> Result<Verdict, ProbeError> {
    match command {
        Cmd::Info { socket, common } => {
            let r = info::run(socket, common.timeout)?;
            print(common.json, &r, info::InfoReport::render_text);
            Ok(Verdict::of(r.ok(), &r.socket, &r.lost))
        }
        Cmd::Check {
            socket,
            destructive,
            common,
        } => {
            let options = CheckOptions {
                timeout: common.timeout,
                destructive: *destructive,
            };
            let r = check::run(socket, &options)?;
            print(common.json, &r, check::CheckReport::render_text);
            Ok(Verdict::of(r.ok(), &r.socket, &None))
        }
        Cmd::Bench {
            socket,
            bench,
            common,
        } => {
            let r = bench::run(socket, &bench.options(common))?;
            print(common.json, &r, bench::BenchReport::render_text);
            Ok(Verdict::of(true, &r.socket, &r.lost))
        }
        Cmd::Demo { common } => {
            let options = demo::bench_options(common.timeout, progress_wanted(common.json));
            let r = demo::run(common.timeout, &options)?;
            print(common.json, &r, demo::DemoReport::render_text);
            let lost = r.info.lost.as_ref().or(r.bench.lost.as_ref()).cloned();
            Ok(Verdict::of(r.ok(), &r.info.socket, &lost))
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0; usage errors to stderr.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(UNUSABLE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli.command) {
        Ok(Verdict::Success) => ExitCode::SUCCESS,
        Ok(Verdict::Failed) => ExitCode::from(1),
        Ok(Verdict::Lost(why)) => {
            eprintln!("vfio-user-probe: error: {why}");
            ExitCode::from(UNUSABLE)
        }
        Err(e) => {
            eprintln!("vfio-user-probe: error: {e}");
            ExitCode::from(UNUSABLE)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use vfio_user_probe::session::DEFAULT_TIMEOUT;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        let argv = std::iter::once("vfio-user-probe").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.command)
    }

    #[test]
    fn command_definition() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("inf").is_err());
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("M").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn defaults_match_the_library() {
        let Ok(Cmd::Bench { bench, common, .. }) = parse(&["bench", "/s"]) else {
            panic!("bench /s does not parse");
        };
        assert_eq!(common.timeout, DEFAULT_TIMEOUT);
        assert!(!common.json);
        let options = bench.options(&common);
        let expected = BenchOptions {
            progress: options.progress,
            ..BenchOptions::default()
        };
        assert_eq!(options, expected);
    }

    #[test]
    fn arguments() {
        let Ok(Cmd::Check {
            destructive,
            common,
            ..
        }) = parse(&["check", "/s", "--destructive", "--timeout=200ms", "--json"])
        else {
            panic!("check does not parse");
        };
        assert!(destructive && common.json);
        assert_eq!(common.timeout, Duration::from_millis(200));
        let Ok(Cmd::Bench { socket, bench, .. }) = parse(&[
            "bench",
            "/s",
            "--region",
            "1",
            "--bytes",
            "1M",
            "--samples=5",
            "--samples=6",
        ]) else {
            panic!("bench does not parse");
        };
        assert_eq!(socket, PathBuf::from("/s"));
        assert_eq!(
            (bench.region, bench.bytes, bench.samples),
            (Some(1), 1 << 20, 6)
        );
        assert!(matches!(parse(&["demo", "--json"]), Ok(Cmd::Demo { .. })));
    }

    #[test]
    fn usage_errors() {
        for args in [
            &[][..],
            &["frob"][..],
            &["info"][..],
            &["info", "/s", "--destructive"][..],
            &["demo", "extra"][..],
            &["demo", "--samples", "5"][..],
            &["bench", "/s", "--region"][..],
            &["bench", "/s", "--bytes", "lots"][..],
            &["--json", "info", "/s"][..],
        ] {
            let e = parse(args).expect_err(&format!("{args:?} parsed"));
            assert!(e.use_stderr(), "{args:?}: {e}");
        }
    }
}
