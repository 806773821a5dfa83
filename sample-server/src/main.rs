// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vfio-user-sample-server --socket PATH [--device gpio|dma] [--write-multiple]
//! [--migration]`: serves a sample device on a Unix socket until killed, one client at a
//! time. `--write-multiple` offers and accepts REGION_WRITE_MULTI; `--migration` offers
//! migration v2 and DMA logging.

use std::process::ExitCode;

use vfio_user_sample_server::{
    Device, DmaEngine, GpioDevice, MigrationConfig, Server, ServerConfig,
};

const USAGE: &str = "usage: vfio-user-sample-server --socket PATH [--device gpio|dma] \
                     [--write-multiple] [--migration]";

fn main() -> ExitCode {
    let mut socket = None;
    let mut device = String::from("gpio");
    let mut config = ServerConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (arg, None),
        };
        match key.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--socket" | "--socket-path" => socket = inline.or_else(|| args.next()),
            "--write-multiple" => config.write_multiple = true,
            "--migration" => config.migration = Some(MigrationConfig::default()),
            "--device" => match inline.or_else(|| args.next()) {
                Some(d) => device = d,
                None => socket = None,
            },
            _ => {
                eprintln!("unknown argument {key}\n{USAGE}");
                return ExitCode::FAILURE;
            }
        }
    }
    let Some(socket) = socket else {
        eprintln!("{USAGE}");
        return ExitCode::FAILURE;
    };
    let device: Box<dyn Device> = match device.as_str() {
        "gpio" => match GpioDevice::new(Default::default()) {
            Ok((d, _)) => Box::new(d),
            Err(e) => {
                eprintln!("creating the device: {e}");
                return ExitCode::FAILURE;
            }
        },
        "dma" => Box::new(DmaEngine::new().0),
        other => {
            eprintln!("unknown device {other}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match Server::new(config, device).listen(&socket) {
        Ok(handle) => {
            println!("listening on {socket}");
            handle.join();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("listening on {socket}: {e}");
            ExitCode::FAILURE
        }
    }
}
