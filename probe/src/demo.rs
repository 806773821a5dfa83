// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `demo`: the built-in sample server, started in this process, put through `info`, `check`
//! (with the destructive checks: the device is ours) and a short `bench`. The server offers
//! migration v2 and DMA dirty logging, so that the migration section and checks run too.

use std::time::Duration;

use serde::Serialize;
use vfio_user_sample_server::{GpioDevice, MigrationConfig, Server, ServerConfig};

use crate::bench::{self, BenchOptions, BenchReport};
use crate::check::{self, CheckOptions, CheckReport};
use crate::error::ProbeError;
use crate::info::{self, InfoReport};

/// The three reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DemoReport {
    /// `info`.
    pub info: InfoReport,
    /// `check --destructive`.
    pub check: CheckReport,
    /// `bench` with small counts.
    pub bench: BenchReport,
}

impl DemoReport {
    /// Whether `info` read every section, every check passed, and the server stayed to
    /// the end.
    pub fn ok(&self) -> bool {
        self.info.ok() && self.check.ok() && self.bench.lost.is_none()
    }

    /// The reports as text, one after the other.
    pub fn render_text(&self) -> String {
        format!(
            "== info ==\n{}\n== check ==\n{}\n== bench ==\n{}",
            self.info.render_text(),
            self.check.render_text(),
            self.bench.render_text()
        )
    }
}

/// The bench settings of the demo: a few seconds at most on a small machine.
pub fn bench_options(timeout: Duration, progress: bool) -> BenchOptions {
    BenchOptions {
        timeout,
        region: None,
        samples: 2000,
        bytes: 32 << 20,
        dma_maps: 200,
        progress,
    }
}

/// Starts a sample GPIO server (with migration) on a temporary socket and runs the three subcommands
/// against it; the server stops when this returns.
pub fn run(timeout: Duration, bench: &BenchOptions) -> Result<DemoReport, ProbeError> {
    let (device, _handle) = GpioDevice::new(Default::default()).map_err(ProbeError::Demo)?;
    let config = ServerConfig {
        migration: Some(MigrationConfig::default()),
        ..ServerConfig::default()
    };
    let server = Server::new(config, Box::new(device))
        .listen_temp()
        .map_err(ProbeError::Demo)?;
    let path = server
        .socket_path()
        .ok_or_else(|| ProbeError::Demo(std::io::Error::other("no socket path")))?
        .to_path_buf();
    // The server serves one client at a time: each step's connection ends before the next.
    let info = info::run(&path, timeout)?;
    let check = check::run(
        &path,
        &CheckOptions {
            timeout,
            destructive: true,
        },
    )?;
    let bench = bench::run(&path, bench)?;
    server.stop();
    Ok(DemoReport { info, check, bench })
}
