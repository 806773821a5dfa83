// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `vfio-user-probe` command line. Exit status: 0 success, 1 a check failed, 2 the
//! server could not be used (or the command line is wrong).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use vfio_user_probe::bench::BenchOptions;
use vfio_user_probe::check::CheckOptions;
use vfio_user_probe::session::DEFAULT_TIMEOUT;
use vfio_user_probe::{bench, check, demo, info, ProbeError};

const USAGE: &str = "\
usage: vfio-user-probe <command> [options]

commands:
  info SOCKET      negotiated version and capabilities, regions, IRQs, PCI config space
  check SOCKET     conformance checks, each PASS / FAIL / SKIP with its reason
  bench SOCKET     region access latency and throughput, DMA map and unmap rate
  demo             start the built-in sample server and run info, check and bench on it

options:
  --json           print the report as JSON
  --timeout DUR    deadline for connecting and for every reply (default 5s; e.g. 200ms, 2s)
  --destructive    check: also run checks that write to device registers
  --region N       bench: the region to use (default: the largest read/write region)
  --samples N      bench: samples per latency figure (default 10000)
  --bytes SIZE     bench: bytes per throughput figure (default 256M; e.g. 64M, 1G)
  --dma-maps N     bench: DMA windows to map and unmap (default 1000)

exit status: 0 success, 1 a check failed, 2 the server could not be used or bad usage";

#[derive(Debug)]
struct Args {
    command: String,
    socket: Option<PathBuf>,
    json: bool,
    timeout: Duration,
    destructive: bool,
    bench: BenchOptions,
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v > 0.0).then(|| Duration::from_secs_f64(v * scale))
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 10),
        (i, 'M' | 'm') => (&s[..i], 20),
        (i, 'G' | 'g') => (&s[..i], 30),
        _ => (s, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let command = argv.next().ok_or("no command given")?;
    if !matches!(command.as_str(), "info" | "check" | "bench" | "demo") {
        return Err(format!("unknown command {command:?}"));
    }
    let mut args = Args {
        command,
        socket: None,
        json: false,
        timeout: DEFAULT_TIMEOUT,
        destructive: false,
        bench: BenchOptions::default(),
    };
    while let Some(arg) = argv.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or(format!("{name} needs a value"))
        };
        match key.as_str() {
            "--json" => args.json = true,
            "--destructive" if args.command == "check" => args.destructive = true,
            "--timeout" => {
                let v = value("--timeout")?;
                args.timeout = parse_duration(&v).ok_or(format!("--timeout: cannot read {v:?}"))?;
            }
            "--region" if args.command == "bench" => {
                let v = value("--region")?;
                args.bench.region = Some(v.parse().map_err(|_| format!("--region: {v:?}"))?);
            }
            "--samples" if args.command == "bench" => {
                let v = value("--samples")?;
                args.bench.samples = v.parse().map_err(|_| format!("--samples: {v:?}"))?;
            }
            "--bytes" if args.command == "bench" => {
                let v = value("--bytes")?;
                args.bench.bytes = parse_size(&v).ok_or(format!("--bytes: {v:?}"))?;
            }
            "--dma-maps" if args.command == "bench" => {
                let v = value("--dma-maps")?;
                args.bench.dma_maps = v.parse().map_err(|_| format!("--dma-maps: {v:?}"))?;
            }
            k if k.starts_with('-') => {
                return Err(format!("unknown option {k} for {}", args.command))
            }
            _ if args.socket.is_none() && args.command != "demo" => {
                args.socket = Some(PathBuf::from(arg))
            }
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    if args.socket.is_none() && args.command != "demo" {
        return Err(format!("{} needs a SOCKET", args.command));
    }
    args.bench.timeout = args.timeout;
    args.bench.progress = !args.json && std::io::stderr().is_terminal();
    Ok(args)
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

fn run(args: &Args) -> Result<bool, ProbeError> {
    let socket = args.socket.clone().unwrap_or_default();
    match args.command.as_str() {
        "info" => {
            let r = info::run(&socket, args.timeout)?;
            print(args.json, &r, info::InfoReport::render_text);
            Ok(true)
        }
        "check" => {
            let r = check::run(
                &socket,
                &CheckOptions {
                    timeout: args.timeout,
                    destructive: args.destructive,
                },
            )?;
            print(args.json, &r, check::CheckReport::render_text);
            Ok(r.ok())
        }
        "bench" => {
            let r = bench::run(&socket, &args.bench)?;
            print(args.json, &r, bench::BenchReport::render_text);
            Ok(true)
        }
        _ => {
            let options = demo::bench_options(args.timeout, args.bench.progress);
            let r = demo::run(args.timeout, &options)?;
            print(args.json, &r, demo::DemoReport::render_text);
            Ok(r.check.ok())
        }
    }
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    if matches!(
        argv.peek().map(String::as_str),
        Some("-h" | "--help" | "help")
    ) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vfio-user-probe: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vfio-user-probe: error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("M"), None);
    }

    #[test]
    fn arguments() {
        let a = |v: &[&str]| parse(v.iter().map(|s| s.to_string()));
        let args = a(&["check", "/s", "--destructive", "--timeout=200ms", "--json"]).unwrap();
        assert!(args.destructive && args.json);
        assert_eq!(args.timeout, Duration::from_millis(200));
        let args = a(&[
            "bench",
            "/s",
            "--region",
            "1",
            "--bytes",
            "1M",
            "--samples=5",
        ])
        .unwrap();
        assert_eq!(
            (args.bench.region, args.bench.bytes, args.bench.samples),
            (Some(1), 1 << 20, 5)
        );
        assert!(a(&["info"]).unwrap_err().contains("needs a SOCKET"));
        assert!(a(&["info", "/s", "--destructive"]).is_err());
        assert!(a(&["frob"]).is_err());
        assert!(a(&["demo", "extra"]).is_err());
        assert!(a(&["bench", "/s", "--region"])
            .unwrap_err()
            .contains("needs a value"));
    }
}
