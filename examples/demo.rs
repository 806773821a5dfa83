// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The README's main job: start the sample GPIO-like device server in-process, connect to
//! it over its Unix socket, negotiate, and print what was negotiated and who the device is.

use std::error::Error;
use std::process::ExitCode;

use vfio_bindings::bindings::vfio::{VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET};
use vfio_user_client::protocol::{Command, DeviceInfo, RegionAccess, RegionInfo};
use vfio_user_client::{ConnectOptions, Connection};
use vfio_user_sample_server::{GpioDevice, Server, ServerConfig, PCI_CONFIG_REGION};

fn read_config(conn: &Connection, offset: u64, count: u32) -> Result<Vec<u8>, Box<dyn Error>> {
    let mut payload = Vec::new();
    RegionAccess {
        offset,
        region: PCI_CONFIG_REGION,
        count,
    }
    .encode_into(&mut payload);
    let reply = conn.request(Command::RegionRead, &payload, &[])?;
    let (head, data) = RegionAccess::decode_with_data(&reply.payload)?;
    if head.count != count {
        return Err(format!("server returned {} bytes, asked for {count}", head.count).into());
    }
    Ok(data.to_vec())
}

fn run() -> Result<(), Box<dyn Error>> {
    let (device, _gpio) = GpioDevice::new(Default::default())?;
    let server = Server::new(ServerConfig::default(), Box::new(device)).listen_temp()?;
    let path = server
        .socket_path()
        .ok_or("sample server has no socket path")?;
    println!("sample server listening on {}", path.display());

    let conn = Connection::connect(path, &ConnectOptions::default())?;
    let caps = conn.capabilities();
    println!("negotiated vfio-user {}.{}", caps.major, caps.minor);
    println!("  max_msg_fds        {}", caps.max_msg_fds);
    println!("  max_data_xfer_size {}", caps.max_data_xfer_size);
    println!("  pgsizes            {:#x}", caps.pgsizes);
    println!("  max_dma_maps       {}", caps.max_dma_maps);
    match &caps.migration {
        Some(m) => println!(
            "  migration          pgsize {:#x}, max_bitmap_size {}",
            m.pgsize, m.max_bitmap_size
        ),
        None => println!("  migration          not offered"),
    }
    println!("  write_multiple     {}", caps.write_multiple);

    let mut payload = Vec::new();
    DeviceInfo::request().encode_into(&mut payload);
    let reply = conn.request(Command::DeviceGetInfo, &payload, &[])?;
    let info = DeviceInfo::decode(&reply.payload)?;
    println!(
        "device: {} regions, {} IRQ indexes, {}{}",
        info.num_regions,
        info.num_irqs,
        if info.flags & VFIO_DEVICE_FLAGS_PCI != 0 {
            "PCI"
        } else {
            "not PCI"
        },
        if info.flags & VFIO_DEVICE_FLAGS_RESET != 0 {
            ", resettable"
        } else {
            ""
        },
    );

    payload.clear();
    RegionInfo::request(PCI_CONFIG_REGION, 32).encode_into(&mut payload);
    let reply = conn.request(Command::DeviceGetRegionInfo, &payload, &[])?;
    let config = RegionInfo::decode(&reply.payload)?;
    let ids = read_config(&conn, 0, 4)?;
    let class = read_config(&conn, 8, 4)?;
    println!(
        "PCI identity: vendor {:04x} device {:04x}, class {:02x}{:02x}{:02x} rev {:02x} (config space {} bytes)",
        u16::from_le_bytes([ids[0], ids[1]]),
        u16::from_le_bytes([ids[2], ids[3]]),
        class[3],
        class[2],
        class[1],
        class[0],
        config.size,
    );
    drop(conn);
    server.stop();
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
