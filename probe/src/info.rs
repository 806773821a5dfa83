// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `info`: what the server negotiated and what the device looks like.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX,
    VFIO_PCI_VGA_REGION_INDEX, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::protocol::{
    IO_FD_TYPE_IOEVENTFD, IO_FD_TYPE_IOEVENTFD_SHADOW, IO_FD_TYPE_IOREGIONFD,
};
use vfio_user_client::{ConnectionCause, VfioUserDevice};

use crate::error::ProbeError;
use crate::pci::{self, size_text};
use crate::session;

/// Largest config space read (PCI Express extended space).
const MAX_CONFIG: u64 = 4096;

/// The negotiated version and capabilities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Negotiated {
    /// Server's major version.
    pub major: u16,
    /// Server's minor version.
    pub minor: u16,
    /// fds the server accepts per message.
    pub max_msg_fds: u32,
    /// Data bytes the server accepts per message.
    pub max_data_xfer_size: u32,
    /// DMA windows the server can hold.
    pub max_dma_maps: u32,
    /// DMA page sizes.
    pub pgsizes: u64,
    /// The `migration` capability's page size, if sent.
    pub migration_pgsize: Option<u64>,
    /// The server agreed to twin-socket mode (absent: not offered by us).
    pub twin_socket: Option<bool>,
    /// The server accepts REGION_WRITE_MULTI.
    pub write_multiple: bool,
}

/// DEVICE_GET_INFO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceFlags {
    /// Raw flags.
    pub flags: u32,
    /// `VFIO_DEVICE_FLAGS_PCI`.
    pub pci: bool,
    /// `VFIO_DEVICE_FLAGS_RESET`.
    pub reset: bool,
    /// Regions.
    pub num_regions: u32,
    /// IRQ indexes.
    pub num_irqs: u32,
}

/// One sparse mmap area.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Area {
    /// Offset in the region.
    pub offset: u64,
    /// Size.
    pub size: u64,
}

/// One I/O fd of a region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IoFd {
    /// Offset in the region.
    pub offset: u64,
    /// Access size that triggers it (0: any).
    pub size: u64,
    /// `ioeventfd`, `ioregionfd` or `ioeventfd-shadow`.
    pub kind: String,
    /// Flags.
    pub flags: u32,
    /// Datamatch or user data, when the entry layout has it.
    pub data: Option<u64>,
}

/// DEVICE_GET_REGION_IO_FDS for one region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum IoFds {
    /// Not asked (region absent or without access).
    NotAsked,
    /// The server answered.
    Supported {
        /// The entries.
        fds: Vec<IoFd>,
    },
    /// The server refused or failed.
    Unsupported {
        /// Why.
        reason: String,
    },
}

/// One region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegionReport {
    /// Index.
    pub index: u32,
    /// PCI name (`BAR0`, `ROM`, `config`, `VGA`), or `region N`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Raw flags.
    pub flags: u32,
    /// `read`, `write`, `mmap`, `caps`.
    pub flag_names: Vec<&'static str>,
    /// MMAP set and the fd came.
    pub mappable: bool,
    /// The SPARSE_MMAP areas.
    pub sparse_areas: Option<Vec<Area>>,
    /// The TYPE capability (type, subtype).
    pub region_type: Option<(u32, u32)>,
    /// The region's I/O fds.
    pub io_fds: IoFds,
}

/// One IRQ index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IrqReport {
    /// Index.
    pub index: u32,
    /// PCI name (`INTx`, `MSI`, `MSI-X`, `ERR`, `REQ`), or `irq N`.
    pub name: String,
    /// Vectors.
    pub count: u32,
    /// Raw flags.
    pub flags: u32,
    /// `eventfd`, `maskable`, `automasked`, `noresize`.
    pub flag_names: Vec<&'static str>,
}

/// Everything `info` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InfoReport {
    /// The socket.
    pub socket: String,
    /// Version and capabilities.
    pub negotiated: Negotiated,
    /// Device flags and counts.
    pub device: DeviceFlags,
    /// Every region.
    pub regions: Vec<RegionReport>,
    /// Every IRQ index.
    pub irqs: Vec<IrqReport>,
    /// The decoded PCI config space (PCI devices with a readable config region).
    pub pci: Option<pci::ConfigSpace>,
    /// Why the config space could not be read, if it could not.
    pub pci_error: Option<String>,
}

fn region_name(pci: bool, index: u32) -> String {
    match (pci, index) {
        (true, 0..=5) => format!("BAR{index}"),
        (true, VFIO_PCI_ROM_REGION_INDEX) => "ROM".into(),
        (true, VFIO_PCI_CONFIG_REGION_INDEX) => "config".into(),
        (true, VFIO_PCI_VGA_REGION_INDEX) => "VGA".into(),
        _ => format!("region {index}"),
    }
}

fn irq_name(pci: bool, index: u32) -> String {
    match (pci, index) {
        (true, 0) => "INTx".into(),
        (true, 1) => "MSI".into(),
        (true, 2) => "MSI-X".into(),
        (true, 3) => "ERR".into(),
        (true, 4) => "REQ".into(),
        _ => format!("irq {index}"),
    }
}

fn names(flags: u32, table: &[(u32, &'static str)]) -> Vec<&'static str> {
    table
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Connects to `path` and gathers the report.
pub fn run(path: &Path, timeout: Duration) -> Result<InfoReport, ProbeError> {
    let device = session::open_device(path, timeout)?;
    Ok(report(&device, path))
}

/// Gathers the report from an open device.
pub fn report(device: &VfioUserDevice, path: &Path) -> InfoReport {
    let caps = device.capabilities();
    let negotiated = Negotiated {
        major: caps.major,
        minor: caps.minor,
        max_msg_fds: caps.max_msg_fds,
        max_data_xfer_size: caps.max_data_xfer_size,
        max_dma_maps: caps.max_dma_maps,
        pgsizes: caps.pgsizes,
        migration_pgsize: caps.migration.map(|m| m.pgsize),
        twin_socket: caps.twin_socket.map(|t| t.supported),
        write_multiple: caps.write_multiple,
    };
    let is_pci = device.is_pci();
    let dev = DeviceFlags {
        flags: device.flags(),
        pci: is_pci,
        reset: device.resettable(),
        num_regions: device.regions().len() as u32,
        num_irqs: device.irqs().len() as u32,
    };
    let region_flags = [
        (VFIO_REGION_INFO_FLAG_READ, "read"),
        (VFIO_REGION_INFO_FLAG_WRITE, "write"),
        (VFIO_REGION_INFO_FLAG_MMAP, "mmap"),
        (VFIO_REGION_INFO_FLAG_CAPS, "caps"),
    ];
    let regions = device
        .regions()
        .iter()
        .map(|r| {
            let io_fds = if r.size() > 0 && (r.readable() || r.writable()) {
                match device.region_io_fds(r.index()) {
                    Ok(list) => IoFds::Supported {
                        fds: list
                            .iter()
                            .map(|f| IoFd {
                                offset: f.offset,
                                size: f.size,
                                kind: match f.kind {
                                    IO_FD_TYPE_IOEVENTFD => "ioeventfd".into(),
                                    IO_FD_TYPE_IOREGIONFD => "ioregionfd".into(),
                                    IO_FD_TYPE_IOEVENTFD_SHADOW => "ioeventfd-shadow".into(),
                                    other => format!("type {other}"),
                                },
                                flags: f.flags,
                                data: f.data,
                            })
                            .collect(),
                    },
                    Err(e) => IoFds::Unsupported {
                        reason: match e.server_errno() {
                            Some(errno) => {
                                format!("server answered {}", crate::error::errno_text(errno))
                            }
                            None => e.to_string(),
                        },
                    },
                }
            } else {
                IoFds::NotAsked
            };
            RegionReport {
                index: r.index(),
                name: region_name(is_pci, r.index()),
                size: r.size(),
                flags: r.flags(),
                flag_names: names(r.flags(), &region_flags),
                mappable: r.mappable(),
                sparse_areas: r.sparse_areas().map(|a| {
                    a.iter()
                        .map(|a| Area {
                            offset: a.offset,
                            size: a.size,
                        })
                        .collect()
                }),
                region_type: r.region_type(),
                io_fds,
            }
        })
        .collect::<Vec<_>>();
    let irq_flags = [
        (VFIO_IRQ_INFO_EVENTFD, "eventfd"),
        (VFIO_IRQ_INFO_MASKABLE, "maskable"),
        (VFIO_IRQ_INFO_AUTOMASKED, "automasked"),
        (VFIO_IRQ_INFO_NORESIZE, "noresize"),
    ];
    let irqs = device
        .irqs()
        .iter()
        .map(|i| IrqReport {
            index: i.index,
            name: irq_name(is_pci, i.index),
            count: i.count,
            flags: i.flags,
            flag_names: names(i.flags, &irq_flags),
        })
        .collect();
    let (pci, pci_error) = match read_config(device) {
        Ok(Some(bytes)) => {
            let sizes: Vec<u64> = device.regions().iter().take(6).map(|r| r.size()).collect();
            (Some(pci::decode(&bytes, &sizes)), None)
        }
        Ok(None) => (None, None),
        Err(e) => (None, Some(e)),
    };
    InfoReport {
        socket: path.display().to_string(),
        negotiated,
        device: dev,
        regions,
        irqs,
        pci,
        pci_error,
    }
}

fn read_config(device: &VfioUserDevice) -> Result<Option<Vec<u8>>, String> {
    if !device.is_pci() {
        return Ok(None);
    }
    let Ok(region) = device.region(VFIO_PCI_CONFIG_REGION_INDEX) else {
        return Err("the device has no config space region".into());
    };
    if region.size() < 64 || !region.readable() {
        return Err(format!(
            "config space region is {} bytes{}",
            region.size(),
            if region.readable() {
                ""
            } else {
                " and not readable"
            }
        ));
    }
    let len = region.size().min(MAX_CONFIG) as usize;
    let mut bytes = vec![0u8; len];
    device
        .read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(Some(bytes))
}

impl InfoReport {
    /// The report as text.
    pub fn render_text(&self) -> String {
        let mut out = Vec::new();
        let n = &self.negotiated;
        out.push(format!("Server {}", self.socket));
        out.push(format!("  Version {}.{}", n.major, n.minor));
        out.push(format!(
            "  Capabilities: max_msg_fds {}, max_data_xfer_size {}, max_dma_maps {}, pgsizes {:#x}{}{}{}",
            n.max_msg_fds,
            size_text(u64::from(n.max_data_xfer_size)),
            n.max_dma_maps,
            n.pgsizes,
            n.migration_pgsize
                .map(|p| format!(", migration pgsize {p}"))
                .unwrap_or_default(),
            match n.twin_socket {
                Some(t) => format!(", twin_socket {t}"),
                None => String::new(),
            },
            if n.write_multiple { ", write_multiple" } else { "" }
        ));
        let d = &self.device;
        let mut kinds = Vec::new();
        if d.pci {
            kinds.push("PCI");
        }
        if d.reset {
            kinds.push("RESET");
        }
        out.push(format!(
            "Device: flags {:#x} ({}), {} regions, {} IRQ indexes",
            d.flags,
            if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(" ")
            },
            d.num_regions,
            d.num_irqs
        ));
        out.push("Regions:".into());
        for r in &self.regions {
            if r.size == 0 && r.flags == 0 {
                out.push(format!("  {:>2} {:<7} absent", r.index, r.name));
                continue;
            }
            let mut line = format!(
                "  {:>2} {:<7} size {:<6} flags {:<20}",
                r.index,
                r.name,
                size_text(r.size),
                if r.flag_names.is_empty() {
                    "none".to_string()
                } else {
                    r.flag_names.join(",")
                }
            );
            if r.mappable {
                line.push_str(" mappable");
            }
            if let Some(areas) = &r.sparse_areas {
                let list: Vec<String> = areas
                    .iter()
                    .map(|a| format!("{:#x}+{:#x}", a.offset, a.size))
                    .collect();
                line.push_str(&format!(" sparse [{}]", list.join(", ")));
            }
            if let Some((t, s)) = r.region_type {
                line.push_str(&format!(" type {t:#x}/{s:#x}"));
            }
            match &r.io_fds {
                IoFds::NotAsked => {}
                IoFds::Supported { fds } if fds.is_empty() => line.push_str(" io-fds: none"),
                IoFds::Supported { fds } => {
                    let list: Vec<String> = fds
                        .iter()
                        .map(|f| {
                            let data = f.data.map(|d| format!("={d:#x}")).unwrap_or_default();
                            format!("{} @{:#x}/{}{data}", f.kind, f.offset, f.size)
                        })
                        .collect();
                    line.push_str(&format!(" io-fds: {}", list.join(", ")));
                }
                IoFds::Unsupported { reason } => {
                    line.push_str(&format!(" io-fds: unsupported ({reason})"))
                }
            }
            out.push(line.trim_end().to_string());
        }
        out.push("IRQs:".into());
        for i in &self.irqs {
            out.push(format!(
                "  {:>2} {:<6} count {:<4} flags {}",
                i.index,
                i.name,
                i.count,
                if i.flag_names.is_empty() {
                    "none".to_string()
                } else {
                    i.flag_names.join(",")
                }
            ));
        }
        if let Some(p) = &self.pci {
            out.push("PCI config space:".into());
            out.extend(p.render("  "));
        }
        if let Some(e) = &self.pci_error {
            out.push(format!("PCI config space: not readable: {e}"));
        }
        out.join("\n") + "\n"
    }
}
