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
use vfio_user_client::device::{Error as DeviceError, Region, RegionIoFd};
use vfio_user_client::protocol::{IoSubregion, RegionCap};
use vfio_user_client::{Capabilities, ConnectionCause, VfioUserDevice};

use crate::error::{errno_text, ProbeError};
use crate::migration::{self, MigrationReport, Trouble};
use crate::pci::{self, size_text};
use crate::session;

mod raw;

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
    /// The `migration` capability's `max_bitmap_size` (as the library uses it), if sent.
    pub migration_max_bitmap_size: Option<u64>,
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

impl RegionReport {
    /// The region's line in the text report.
    fn line(&self) -> String {
        if self.size == 0 && self.flags == 0 {
            return format!("  {:>2} {:<7} absent", self.index, self.name);
        }
        let mut line = format!(
            "  {:>2} {:<7} size {:<6} flags {:<20}",
            self.index,
            self.name,
            size_text(self.size),
            if self.flag_names.is_empty() {
                "none".to_string()
            } else {
                self.flag_names.join(",")
            }
        );
        if self.mappable {
            line.push_str(" mappable");
        }
        if let Some(areas) = &self.sparse_areas {
            let list: Vec<String> = areas
                .iter()
                .map(|a| format!("{:#x}+{:#x}", a.offset, a.size))
                .collect();
            line.push_str(&format!(" sparse [{}]", list.join(", ")));
        }
        if let Some((t, s)) = self.region_type {
            line.push_str(&format!(" type {t:#x}/{s:#x}"));
        }
        match &self.io_fds {
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
        line.trim_end().to_string()
    }
}

/// A section that hit an error reply or a protocol violation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The section: `device discovery`, `device info`, `region 3`, `region 0 I/O fds`,
    /// `IRQ index 2 (MSI-X)`, `PCI config space`.
    pub section: String,
    /// What went wrong.
    pub reason: String,
}

/// Everything `info` reports: every section it could read, and the ones it could not.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InfoReport {
    /// The socket.
    pub socket: String,
    /// Version and capabilities.
    pub negotiated: Negotiated,
    /// Device flags and counts (`None`: DEVICE_GET_INFO did not succeed).
    pub device: Option<DeviceFlags>,
    /// Every region described.
    pub regions: Vec<RegionReport>,
    /// Every IRQ index described.
    pub irqs: Vec<IrqReport>,
    /// Migration v2 and DMA dirty logging (`None`: not asked, as when the device was
    /// described over a raw connection).
    pub migration: Option<MigrationReport>,
    /// The decoded PCI config space (PCI devices with a readable config region).
    pub pci: Option<pci::ConfigSpace>,
    /// Why the config space could not be read, if it could not.
    pub pci_error: Option<String>,
    /// The sections that hit an error reply or a protocol violation, in the order read
    /// (exit status 1).
    pub failed: Vec<Failure>,
    /// Why the report stops short: the server closed the connection or stopped answering
    /// (exit status 2).
    pub lost: Option<String>,
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
    match (pci, crate::pci::irq_bound(index)) {
        (true, Some((name, _))) => name.into(),
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

const REGION_FLAGS: [(u32, &str); 4] = [
    (VFIO_REGION_INFO_FLAG_READ, "read"),
    (VFIO_REGION_INFO_FLAG_WRITE, "write"),
    (VFIO_REGION_INFO_FLAG_MMAP, "mmap"),
    (VFIO_REGION_INFO_FLAG_CAPS, "caps"),
];

const IRQ_FLAGS: [(u32, &str); 4] = [
    (VFIO_IRQ_INFO_EVENTFD, "eventfd"),
    (VFIO_IRQ_INFO_MASKABLE, "maskable"),
    (VFIO_IRQ_INFO_AUTOMASKED, "automasked"),
    (VFIO_IRQ_INFO_NORESIZE, "noresize"),
];

/// Connects to `path` and gathers the report. When the client library refuses the device
/// after the handshake, the device is described again over a raw connection, section by
/// section, so that the report shows what the server does answer.
pub fn run(path: &Path, timeout: Duration) -> Result<InfoReport, ProbeError> {
    let connection = session::open_connection(path, timeout)?;
    let negotiated = negotiated(connection.capabilities());
    match VfioUserDevice::new(connection, &session::device_options()) {
        Ok(device) => Ok(report(&device, path)),
        Err(e) => Ok(raw::salvage(path, timeout, negotiated, &e)),
    }
}

/// Gathers the report from an open device.
pub fn report(device: &VfioUserDevice, path: &Path) -> InfoReport {
    let is_pci = device.is_pci();
    let mut report = InfoReport::new(path, negotiated(device.capabilities()));
    report.device = Some(DeviceFlags {
        flags: device.flags(),
        pci: is_pci,
        reset: device.resettable(),
        num_regions: device.regions().len() as u32,
        num_irqs: device.irqs().len() as u32,
    });
    for r in device.regions() {
        let io_fds = report.io_fds(device, r);
        report.regions.push(region_report(
            is_pci,
            r.index(),
            r.size(),
            r.flags(),
            r.mappable(),
            r.caps(),
            io_fds,
        ));
    }
    for i in device.irqs() {
        report.add_irq(is_pci, i.index, i.count, i.flags);
    }
    report.add_migration(device);
    if report.lost.is_none() {
        let sizes: Vec<u64> = device.regions().iter().take(6).map(|r| r.size()).collect();
        let config = read_config(device);
        report.set_config(config, &sizes);
    }
    report
}

fn negotiated(caps: &Capabilities) -> Negotiated {
    Negotiated {
        major: caps.major,
        minor: caps.minor,
        max_msg_fds: caps.max_msg_fds,
        max_data_xfer_size: caps.max_data_xfer_size,
        max_dma_maps: caps.max_dma_maps,
        pgsizes: caps.pgsizes,
        migration_pgsize: caps.migration.map(|m| m.pgsize),
        migration_max_bitmap_size: caps.migration.map(|m| m.max_bitmap_size),
        twin_socket: caps.twin_socket.map(|t| t.supported),
        write_multiple: caps.write_multiple,
    }
}

/// One region's line, from its REGION_INFO.
fn region_report(
    is_pci: bool,
    index: u32,
    size: u64,
    flags: u32,
    mappable: bool,
    caps: &[RegionCap],
    io_fds: IoFds,
) -> RegionReport {
    let sparse_areas = caps.iter().find_map(|c| match c {
        RegionCap::SparseMmap(areas) => Some(
            areas
                .iter()
                .map(|a| Area {
                    offset: a.offset,
                    size: a.size,
                })
                .collect(),
        ),
        _ => None,
    });
    let region_type = caps.iter().find_map(|c| match c {
        RegionCap::Type {
            region_type,
            subtype,
        } => Some((*region_type, *subtype)),
        _ => None,
    });
    RegionReport {
        index,
        name: region_name(is_pci, index),
        size,
        flags,
        flag_names: names(flags, &REGION_FLAGS),
        mappable,
        sparse_areas,
        region_type,
        io_fds,
    }
}

fn io_fd(f: &RegionIoFd) -> IoFd {
    IoFd {
        offset: f.offset,
        size: f.size,
        kind: match f.kind {
            IoSubregion::TYPE_IOEVENTFD => "ioeventfd".into(),
            IoSubregion::TYPE_IOREGIONFD => "ioregionfd".into(),
            IoSubregion::TYPE_IOEVENTFD_SHADOW => "ioeventfd-shadow".into(),
            other => format!("type {other}"),
        },
        flags: f.flags,
        data: f.data,
    }
}

/// Why the config space could not be read: the request's failure, or what is wrong with
/// the region.
#[derive(Debug)]
enum ConfigError {
    /// The region is missing or unusable.
    Region(String),
    /// The read failed.
    Read(DeviceError),
    /// The reply to a raw read was an error reply or broke the protocol.
    Reply(String),
}

fn read_config(device: &VfioUserDevice) -> Result<Option<Vec<u8>>, ConfigError> {
    if !device.is_pci() {
        return Ok(None);
    }
    let Ok(region) = device.region(VFIO_PCI_CONFIG_REGION_INDEX) else {
        return Err(ConfigError::Region(
            "the device has no config space region".into(),
        ));
    };
    let len = config_len(region.size(), region.readable()).map_err(ConfigError::Region)?;
    let mut bytes = vec![0u8; len];
    device
        .read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut bytes)
        .map_err(ConfigError::Read)?;
    Ok(Some(bytes))
}

/// How much of a config space region of `size` bytes to read, or why it cannot be.
fn config_len(size: u64, readable: bool) -> Result<usize, String> {
    if size < 64 || !readable {
        return Err(format!(
            "config space region is {size} bytes{}",
            if readable { "" } else { " and not readable" }
        ));
    }
    Ok(size.min(MAX_CONFIG) as usize)
}

impl InfoReport {
    fn new(path: &Path, negotiated: Negotiated) -> InfoReport {
        InfoReport {
            socket: path.display().to_string(),
            negotiated,
            device: None,
            regions: Vec::new(),
            irqs: Vec::new(),
            migration: None,
            pci: None,
            pci_error: None,
            failed: Vec::new(),
            lost: None,
        }
    }

    /// Whether every section was read without an error reply or a protocol violation, and
    /// the server stayed to the end.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.lost.is_none()
    }

    fn fail(&mut self, section: impl Into<String>, reason: impl Into<String>) {
        self.failed.push(Failure {
            section: section.into(),
            reason: reason.into(),
        });
    }

    /// Records that the server went away while `section` was read.
    fn lose(&mut self, section: &str, reason: impl std::fmt::Display) {
        self.lost = Some(format!(
            "the server was lost while reading {section}: {reason}"
        ));
    }

    /// DEVICE_GET_REGION_IO_FDS of a region. The command is optional: a server's refusal
    /// says "unsupported"; a reply the library cannot use is a failed section.
    fn io_fds(&mut self, device: &VfioUserDevice, r: &Region) -> IoFds {
        if self.lost.is_some() || r.size() == 0 || !(r.readable() || r.writable()) {
            return IoFds::NotAsked;
        }
        match device.region_io_fds(r.index()) {
            Ok(list) => IoFds::Supported {
                fds: list.iter().map(io_fd).collect(),
            },
            Err(e) if session::device_lost(&e) => {
                self.lose(&format!("the I/O fds of region {}", r.index()), &e);
                IoFds::Unsupported {
                    reason: e.to_string(),
                }
            }
            Err(e) => match e.server_errno() {
                Some(errno) => IoFds::Unsupported {
                    reason: format!("server answered {}", errno_text(errno)),
                },
                None => {
                    self.fail(format!("region {} I/O fds", r.index()), e.to_string());
                    IoFds::Unsupported {
                        reason: e.to_string(),
                    }
                }
            },
        }
    }

    /// Asks for migration v2 and DMA dirty logging. A device that cannot migrate is no
    /// failure; an error reply other than the refusal of the feature, or a reply that breaks
    /// the protocol, is.
    fn add_migration(&mut self, device: &VfioUserDevice) {
        if self.lost.is_some() {
            return;
        }
        let (section, trouble) = migration::describe(device);
        self.migration = section;
        match trouble {
            None => {}
            Some(Trouble::Lost(why)) => self.lose("the migration features", why),
            Some(Trouble::Failed(section, why)) => self.fail(section, why),
        }
    }

    /// Adds an IRQ index; a PCI device's count beyond what PCI allows is a failed section.
    fn add_irq(&mut self, is_pci: bool, index: u32, count: u32, flags: u32) {
        let name = irq_name(is_pci, index);
        if let Some(problem) = crate::pci::irq_count_problem(index, count).filter(|_| is_pci) {
            self.fail(format!("IRQ index {index} ({name})"), problem);
        }
        self.irqs.push(IrqReport {
            index,
            name,
            count,
            flags,
            flag_names: names(flags, &IRQ_FLAGS),
        });
    }

    /// Decodes the config space read, or records why there is none.
    fn set_config(&mut self, config: Result<Option<Vec<u8>>, ConfigError>, bar_sizes: &[u64]) {
        const SECTION: &str = "PCI config space";
        match config {
            Ok(Some(bytes)) => self.pci = Some(pci::decode(&bytes, bar_sizes)),
            Ok(None) => {}
            Err(ConfigError::Read(e)) if session::device_lost(&e) => {
                self.lose(SECTION, &e);
                self.pci_error = Some(e.to_string());
            }
            Err(e) => {
                let reason = match e {
                    ConfigError::Region(why) | ConfigError::Reply(why) => why,
                    ConfigError::Read(e) => e.to_string(),
                };
                self.fail(SECTION, reason.clone());
                self.pci_error = Some(reason);
            }
        }
    }
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
        let Some(d) = &self.device else {
            out.push("Device: not described (DEVICE_GET_INFO did not succeed)".into());
            self.render_endings(&mut out);
            return out.join("\n") + "\n";
        };
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
        out.extend(self.regions.iter().map(RegionReport::line));
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
        if let Some(m) = &self.migration {
            out.extend(m.lines(self.negotiated.migration_max_bitmap_size));
        }
        if let Some(p) = &self.pci {
            out.push("PCI config space:".into());
            out.extend(p.render("  "));
        }
        if let Some(e) = &self.pci_error {
            out.push(format!("PCI config space: not readable: {e}"));
        }
        self.render_endings(&mut out);
        out.join("\n") + "\n"
    }

    /// The failed sections, then why the report stops short.
    fn render_endings(&self, out: &mut Vec<String>) {
        if !self.failed.is_empty() {
            let n = self.failed.len();
            out.push(format!(
                "{n} section{} failed:",
                if n == 1 { "" } else { "s" }
            ));
            for f in &self.failed {
                out.push(format!("  {}: {}", f.section, f.reason));
            }
        }
        if let Some(lost) = &self.lost {
            out.push(format!("Stopped: {lost}"));
        }
    }
}
