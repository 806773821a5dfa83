// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! PCI configuration space, decoded the way `lspci -vv` shows it: ids and names, class,
//! command and status, BARs (address from config space, size from the vfio-user region),
//! and the capability list (power management, MSI, MSI-X, PCI Express; others by name).
//!
//! Decoding never trusts the bytes: every read is bounds-checked, and the capability list is
//! followed at most 48 steps (the most a 256-byte space can hold), so a loop ends.

use serde::Serialize;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX,
};
use vfio_user_client::VfioUserDevice;

/// A vendor id, its name, and the names of some of its devices.
type VendorEntry = (u16, &'static str, &'static [(u16, &'static str)]);

/// Vendor and device names this tool knows without a system `pci.ids`.
const KNOWN_IDS: &[VendorEntry] = &[
    (
        0x1af4,
        "Red Hat, Inc.",
        &[
            (0x1000, "Virtio network device"),
            (0x1001, "Virtio block device"),
            (0x1041, "Virtio 1.0 network device"),
            (0x1042, "Virtio 1.0 block device"),
        ],
    ),
    (
        0x1b36,
        "Red Hat, Inc.",
        &[(0x0010, "QEMU NVM Express Controller")],
    ),
    (
        0x4e58,
        "Nutanix Inc.",
        &[(0x0001, "Virtual NVMe Controller")],
    ),
    (0x8086, "Intel Corporation", &[]),
    (0x1022, "Advanced Micro Devices, Inc. [AMD]", &[]),
    (0x10de, "NVIDIA Corporation", &[]),
    (0x144d, "Samsung Electronics Co Ltd", &[]),
    (0x15b3, "Mellanox Technologies", &[]),
    (0x1d0f, "Amazon.com, Inc.", &[]),
    (
        0x494f,
        "ACCES I/O Products, Inc.",
        &[(0x0dc8, "PCI-IDIO-16")],
    ),
];

/// Where a system copy of the PCI id database may be.
const PCI_IDS_PATHS: &[&str] = &["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

/// Looks up vendor and device names: the built-in table first (so that the names this
/// tool prints for the sample devices do not depend on the machine), then the system's
/// `pci.ids` if there is one.
pub fn names(vendor: u16, device: u16) -> (Option<String>, Option<String>) {
    let builtin = KNOWN_IDS.iter().find(|(v, _, _)| *v == vendor);
    if let Some((_, vname, devices)) = builtin {
        if let Some((_, dname)) = devices.iter().find(|(d, _)| *d == device) {
            return (Some((*vname).to_string()), Some((*dname).to_string()));
        }
    }
    for path in PCI_IDS_PATHS {
        if let Ok(text) = std::fs::read_to_string(path) {
            let found = lookup_pci_ids(&text, vendor, device);
            if found.0.is_some() {
                return found;
            }
        }
    }
    (builtin.map(|(_, n, _)| (*n).to_string()), None)
}

/// Looks `vendor` and `device` up in the text of a `pci.ids` file.
pub fn lookup_pci_ids(text: &str, vendor: u16, device: u16) -> (Option<String>, Option<String>) {
    let vkey = format!("{vendor:04x}  ");
    let dkey = format!("\t{device:04x}  ");
    let mut vname = None;
    for line in text.lines() {
        if vname.is_none() {
            if let Some(name) = line.strip_prefix(&vkey) {
                vname = Some(name.trim().to_string());
            }
            continue;
        }
        if let Some(name) = line.strip_prefix(&dkey) {
            return (vname, Some(name.trim().to_string()));
        }
        if !line.starts_with('\t') && !line.starts_with('#') && !line.is_empty() {
            break;
        }
    }
    (vname, None)
}

/// The class name for a base class and subclass, as lspci words it.
pub fn class_name(base: u8, sub: u8) -> &'static str {
    match (base, sub) {
        (0x00, _) => "Unclassified device",
        (0x01, 0x00) => "SCSI storage controller",
        (0x01, 0x01) => "IDE interface",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x08) => "Non-Volatile memory controller",
        (0x01, _) => "Mass storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, _) => "Network controller",
        (0x03, 0x00) => "VGA compatible controller",
        (0x03, _) => "Display controller",
        (0x04, 0x01) => "Multimedia audio controller",
        (0x04, 0x03) => "Audio device",
        (0x04, _) => "Multimedia controller",
        (0x05, _) => "Memory controller",
        (0x06, 0x00) => "Host bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, _) => "Bridge",
        (0x07, _) => "Communication controller",
        (0x08, 0x80) => "System peripheral",
        (0x08, _) => "Generic system peripheral",
        (0x09, _) => "Input device controller",
        (0x0c, 0x03) => "USB controller",
        (0x0c, _) => "Serial bus controller",
        (0x0d, _) => "Wireless controller",
        (0x10, _) => "Encryption controller",
        (0x11, _) => "Signal processing controller",
        (0x12, _) => "Processing accelerators",
        (0xff, _) => "Unassigned class",
        _ => "Unknown class",
    }
}

/// One BAR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bar {
    /// BAR number (0-5).
    pub index: u32,
    /// `memory` or `io`.
    pub kind: &'static str,
    /// 32 or 64 (memory BARs).
    pub bits: u32,
    /// Prefetchable (memory BARs).
    pub prefetchable: bool,
    /// The address programmed in config space (0 until a driver assigns one).
    pub address: u64,
    /// The size, from the vfio-user region of the same index (0 when unknown).
    pub size: u64,
}

/// A decoded capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CapDetails {
    /// Power management.
    PowerManagement {
        /// Version from the PMC register.
        version: u8,
        /// Supported D states beyond D0 and D3: `D1`, `D2`.
        d1: bool,
        /// D2 supported.
        d2: bool,
        /// Current power state (0-3).
        state: u8,
        /// PME enabled.
        pme_enable: bool,
    },
    /// MSI.
    Msi {
        /// MSI enabled.
        enable: bool,
        /// Vectors enabled (power of two).
        count: u32,
        /// Vectors the device can use.
        max_count: u32,
        /// 64-bit addresses.
        addr64: bool,
        /// Per-vector masking.
        maskable: bool,
        /// Message address.
        address: u64,
        /// Message data.
        data: u16,
    },
    /// MSI-X.
    MsiX {
        /// MSI-X enabled.
        enable: bool,
        /// Function mask set.
        masked: bool,
        /// Table size (vectors).
        count: u32,
        /// BAR of the vector table.
        table_bar: u8,
        /// Offset of the vector table in its BAR.
        table_offset: u32,
        /// BAR of the pending bit array.
        pba_bar: u8,
        /// Offset of the PBA in its BAR.
        pba_offset: u32,
    },
    /// PCI Express.
    Express {
        /// Capability version.
        version: u8,
        /// Device/port type name.
        port_type: &'static str,
        /// Max payload the device supports, bytes.
        max_payload_supported: u32,
        /// Max payload configured, bytes.
        max_payload: u32,
        /// Max read request configured, bytes.
        max_read_request: u32,
        /// Link speed supported (GT/s text, e.g. `8GT/s`).
        link_speed_cap: String,
        /// Link width supported.
        link_width_cap: u32,
        /// Link speed negotiated.
        link_speed: String,
        /// Link width negotiated.
        link_width: u32,
    },
    /// Any other capability, by name.
    Other,
}

/// One entry of the capability list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Capability {
    /// Offset in config space.
    pub offset: u16,
    /// Capability id.
    pub id: u16,
    /// Its name.
    pub name: &'static str,
    /// What it says.
    pub details: CapDetails,
}

/// A decoded config space header and capability list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigSpace {
    /// Vendor id.
    pub vendor_id: u16,
    /// Vendor name, where known.
    pub vendor_name: Option<String>,
    /// Device id.
    pub device_id: u16,
    /// Device name, where known.
    pub device_name: Option<String>,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: u16,
    /// Subsystem id.
    pub subsystem_id: u16,
    /// Revision.
    pub revision: u8,
    /// Class code: base << 16 | sub << 8 | prog-if.
    pub class_code: u32,
    /// Class name.
    pub class_name: &'static str,
    /// Header type (low 7 bits).
    pub header_type: u8,
    /// Command register.
    pub command: u16,
    /// Status register.
    pub status: u16,
    /// Interrupt pin (0 none, 1 INTA, ...).
    pub interrupt_pin: u8,
    /// Interrupt line.
    pub interrupt_line: u8,
    /// The BARs (type 0 headers).
    pub bars: Vec<Bar>,
    /// The capability list.
    pub capabilities: Vec<Capability>,
    /// Extended capabilities (offset 0x100 on), when the space is 4 KiB.
    pub extended_capabilities: Vec<Capability>,
    /// Problems met while decoding (a looping or out-of-range capability pointer, ...).
    pub warnings: Vec<String>,
}

fn u8_at(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([u8_at(b, at), u8_at(b, at + 1)])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([
        u8_at(b, at),
        u8_at(b, at + 1),
        u8_at(b, at + 2),
        u8_at(b, at + 3),
    ])
}

fn cap_name(id: u8) -> &'static str {
    match id {
        0x01 => "Power Management",
        0x03 => "Vital Product Data",
        0x05 => "MSI",
        0x09 => "Vendor Specific Information",
        0x0d => "PCI Bridge Subsystem Vendor ID",
        0x10 => "Express",
        0x11 => "MSI-X",
        0x12 => "SATA HBA",
        0x13 => "PCI Advanced Features",
        _ => "Unknown",
    }
}

fn ext_cap_name(id: u16) -> &'static str {
    match id {
        0x0001 => "Advanced Error Reporting",
        0x0002 => "Virtual Channel",
        0x0003 => "Device Serial Number",
        0x000b => "Vendor Specific",
        0x000d => "Access Control Services",
        0x000e => "Alternative Routing-ID Interpretation",
        0x0010 => "Single Root I/O Virtualization",
        0x0015 => "Resizable BAR",
        0x0018 => "Latency Tolerance Reporting",
        0x001e => "L1 PM Substates",
        _ => "Unknown",
    }
}

fn link_speed(code: u32) -> String {
    match code {
        1 => "2.5GT/s".into(),
        2 => "5GT/s".into(),
        3 => "8GT/s".into(),
        4 => "16GT/s".into(),
        5 => "32GT/s".into(),
        6 => "64GT/s".into(),
        other => format!("unknown ({other})"),
    }
}

fn port_type(t: u16) -> &'static str {
    match t {
        0x0 => "Endpoint",
        0x1 => "Legacy Endpoint",
        0x4 => "Root Port",
        0x5 => "Upstream Port",
        0x6 => "Downstream Port",
        0x7 => "PCI-Express to PCI/PCI-X Bridge",
        0x8 => "PCI/PCI-X to PCI-Express Bridge",
        0x9 => "Root Complex Integrated Endpoint",
        0xa => "Root Complex Event Collector",
        _ => "Unknown",
    }
}

fn decode_cap(b: &[u8], at: usize, id: u8) -> CapDetails {
    match id {
        0x01 => {
            let pmc = u16_at(b, at + 2);
            let csr = u16_at(b, at + 4);
            CapDetails::PowerManagement {
                version: (pmc & 0x7) as u8,
                d1: pmc & (1 << 9) != 0,
                d2: pmc & (1 << 10) != 0,
                state: (csr & 0x3) as u8,
                pme_enable: csr & (1 << 8) != 0,
            }
        }
        0x05 => {
            let ctl = u16_at(b, at + 2);
            let addr64 = ctl & (1 << 7) != 0;
            let (address, data) = if addr64 {
                (
                    u64::from(u32_at(b, at + 4)) | u64::from(u32_at(b, at + 8)) << 32,
                    u16_at(b, at + 12),
                )
            } else {
                (u64::from(u32_at(b, at + 4)), u16_at(b, at + 8))
            };
            CapDetails::Msi {
                enable: ctl & 1 != 0,
                count: 1 << ((ctl >> 4) & 0x7).min(5),
                max_count: 1 << ((ctl >> 1) & 0x7).min(5),
                addr64,
                maskable: ctl & (1 << 8) != 0,
                address,
                data,
            }
        }
        0x11 => {
            let ctl = u16_at(b, at + 2);
            let table = u32_at(b, at + 4);
            let pba = u32_at(b, at + 8);
            CapDetails::MsiX {
                enable: ctl & (1 << 15) != 0,
                masked: ctl & (1 << 14) != 0,
                count: u32::from(ctl & 0x7ff) + 1,
                table_bar: (table & 0x7) as u8,
                table_offset: table & !0x7,
                pba_bar: (pba & 0x7) as u8,
                pba_offset: pba & !0x7,
            }
        }
        0x10 => {
            let caps = u16_at(b, at + 2);
            let devcap = u32_at(b, at + 4);
            let devctl = u16_at(b, at + 8);
            let lnkcap = u32_at(b, at + 12);
            let lnksta = u16_at(b, at + 18);
            CapDetails::Express {
                version: (caps & 0xf) as u8,
                port_type: port_type((caps >> 4) & 0xf),
                max_payload_supported: 128 << (devcap & 0x7).min(5),
                max_payload: 128 << ((devctl >> 5) & 0x7).min(5),
                max_read_request: 128 << ((devctl >> 12) & 0x7).min(5),
                link_speed_cap: link_speed(lnkcap & 0xf),
                link_width_cap: (lnkcap >> 4) & 0x3f,
                link_speed: link_speed(u32::from(lnksta & 0xf)),
                link_width: u32::from((lnksta >> 4) & 0x3f),
            }
        }
        _ => CapDetails::Other,
    }
}

/// Decodes `bytes` (the start of config space, normally 256 or 4096 bytes).
/// `bar_sizes[i]` is the size of vfio-user region `i` (BAR `i`).
pub fn decode(bytes: &[u8], bar_sizes: &[u64]) -> ConfigSpace {
    let b = bytes;
    let vendor_id = u16_at(b, 0);
    let device_id = u16_at(b, 2);
    let (vendor_name, device_name) = names(vendor_id, device_id);
    let class_code = u32_at(b, 8) >> 8;
    let header_type = u8_at(b, 0x0e) & 0x7f;
    let status = u16_at(b, 6);
    let mut warnings = Vec::new();
    let bars = if header_type == 0 {
        decode_bars(b, bar_sizes)
    } else {
        Vec::new()
    };
    let capabilities = if status & (1 << 4) != 0 {
        decode_capabilities(b, &mut warnings)
    } else {
        Vec::new()
    };
    let extended_capabilities = if b.len() >= 4096 {
        decode_extended_capabilities(b, &mut warnings)
    } else {
        Vec::new()
    };
    ConfigSpace {
        vendor_id,
        vendor_name,
        device_id,
        device_name,
        subsystem_vendor_id: u16_at(b, 0x2c),
        subsystem_id: u16_at(b, 0x2e),
        revision: u8_at(b, 8),
        class_code,
        class_name: class_name((class_code >> 16) as u8, (class_code >> 8) as u8),
        header_type,
        command: u16_at(b, 4),
        status,
        interrupt_pin: u8_at(b, 0x3d),
        interrupt_line: u8_at(b, 0x3c),
        bars,
        capabilities,
        extended_capabilities,
        warnings,
    }
}

/// The six BARs of a type 0 header: I/O BARs, and memory BARs that are programmed or have
/// a size (a 64-bit BAR takes two slots).
fn decode_bars(b: &[u8], bar_sizes: &[u64]) -> Vec<Bar> {
    let mut bars = Vec::new();
    let mut i = 0usize;
    while i < 6 {
        let raw = u32_at(b, 0x10 + 4 * i);
        let size = bar_sizes.get(i).copied().unwrap_or(0);
        if raw & 1 == 1 {
            bars.push(Bar {
                index: i as u32,
                kind: "io",
                bits: 32,
                prefetchable: false,
                address: u64::from(raw & !0x3),
                size,
            });
            i += 1;
            continue;
        }
        let is64 = (raw >> 1) & 0x3 == 0x2;
        let mut address = u64::from(raw & !0xf);
        if is64 {
            address |= u64::from(u32_at(b, 0x10 + 4 * (i + 1))) << 32;
        }
        if raw != 0 || size != 0 {
            bars.push(Bar {
                index: i as u32,
                kind: "memory",
                bits: if is64 { 64 } else { 32 },
                prefetchable: raw & 0x8 != 0,
                address,
                size,
            });
        }
        i += if is64 { 2 } else { 1 };
    }
    bars
}

/// The capability list from the pointer at 0x34, at most 48 steps; a pointer outside the
/// capability area or a loop ends it with a warning.
fn decode_capabilities(b: &[u8], warnings: &mut Vec<String>) -> Vec<Capability> {
    let mut capabilities = Vec::new();
    let mut ptr = usize::from(u8_at(b, 0x34) & !0x3);
    let mut seen = Vec::new();
    while ptr != 0 {
        if ptr < 0x40 || ptr + 2 > b.len().min(256) {
            warnings.push(format!(
                "capability pointer {ptr:#x} outside the capability area"
            ));
            break;
        }
        if seen.contains(&ptr) || seen.len() >= 48 {
            warnings.push(format!("capability list loops at {ptr:#x}"));
            break;
        }
        seen.push(ptr);
        let id = u8_at(b, ptr);
        capabilities.push(Capability {
            offset: ptr as u16,
            id: u16::from(id),
            name: cap_name(id),
            details: decode_cap(b, ptr, id),
        });
        ptr = usize::from(u8_at(b, ptr + 1) & !0x3);
    }
    capabilities
}

/// The extended capability list of a 4 KiB space, from 0x100; an invalid next pointer ends
/// it with a warning.
fn decode_extended_capabilities(b: &[u8], warnings: &mut Vec<String>) -> Vec<Capability> {
    let mut extended_capabilities = Vec::new();
    let mut ptr = 0x100usize;
    let mut steps = 0;
    loop {
        let header = u32_at(b, ptr);
        if header == 0 || header == 0xffff_ffff {
            break;
        }
        let id = (header & 0xffff) as u16;
        extended_capabilities.push(Capability {
            offset: ptr as u16,
            id,
            name: ext_cap_name(id),
            details: CapDetails::Other,
        });
        let next = (header >> 20) as usize & !0x3;
        steps += 1;
        if next == 0 {
            break;
        }
        if next < 0x100 || next + 4 > b.len() || next <= ptr || steps >= 960 {
            warnings.push(format!("extended capability pointer {next:#x} is invalid"));
            break;
        }
        ptr = next;
    }
    extended_capabilities
}

/// The name and PCI bound of IRQ index `index` of a PCI device (`None` past REQ): one INTx
/// pin, 32 MSI vectors (Multiple Message Capable), 2048 MSI-X table entries (Table Size is 11
/// bits), and one ERR and one REQ notification, as the client library bounds them
/// ([`VfioUserDevice::max_vectors`]).
pub fn irq_bound(index: u32) -> Option<(&'static str, u32)> {
    let name = match index {
        VFIO_PCI_INTX_IRQ_INDEX => "INTx",
        VFIO_PCI_MSI_IRQ_INDEX => "MSI",
        VFIO_PCI_MSIX_IRQ_INDEX => "MSI-X",
        VFIO_PCI_ERR_IRQ_INDEX => "ERR",
        VFIO_PCI_REQ_IRQ_INDEX => "REQ",
        _ => return None,
    };
    Some((name, VfioUserDevice::max_vectors(true, index)))
}

/// Why IRQ index `index` of a PCI device with `count` vectors breaks its PCI bound, if it
/// does.
pub fn irq_count_problem(index: u32, count: u32) -> Option<String> {
    let (name, bound) = irq_bound(index)?;
    (count > bound).then(|| {
        format!("{name} (IRQ index {index}) has {count} vectors; PCI allows at most {bound}")
    })
}

fn flag(name: &str, on: bool) -> String {
    format!("{name}{}", if on { '+' } else { '-' })
}

/// A size the way lspci prints it: `256`, `4K`, `64M`.
pub fn size_text(size: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (unit, suffix) in UNITS {
        if size >= unit && size % unit == 0 {
            return format!("{}{suffix}", size / unit);
        }
    }
    size.to_string()
}

impl ConfigSpace {
    /// lspci -vv style lines, each indented by `indent`.
    pub fn render(&self, indent: &str) -> Vec<String> {
        let mut out = self.render_header(indent);
        out.extend(self.bars.iter().map(|bar| bar.render(indent)));
        if self.capabilities.is_empty() {
            out.push(format!("{indent}Capabilities: none"));
        }
        let more = format!("{indent}        ");
        for cap in &self.capabilities {
            let head = format!("{indent}Capabilities: [{:02x}] {}", cap.offset, cap.name);
            out.extend(cap.details.render(&head, &more, cap.id));
        }
        for cap in &self.extended_capabilities {
            out.push(format!(
                "{indent}Capabilities: [{:03x} v?] {} (id {:04x})",
                cap.offset, cap.name, cap.id
            ));
        }
        for w in &self.warnings {
            out.push(format!("{indent}Warning: {w}"));
        }
        out
    }

    /// The lines before the BARs: ids and class, subsystem, command and status registers,
    /// and the interrupt pin if there is one.
    fn render_header(&self, indent: &str) -> Vec<String> {
        let name = |id: u16, n: &Option<String>| match n {
            Some(n) => format!("{n} [{id:04x}]"),
            None => format!("[{id:04x}]"),
        };
        let mut out = vec![
            format!(
                "{indent}{} [{:04x}]: {} {} (rev {:02x})",
                self.class_name,
                self.class_code >> 8,
                name(self.vendor_id, &self.vendor_name),
                name(self.device_id, &self.device_name),
                self.revision
            ),
            format!(
                "{indent}Subsystem: [{:04x}:{:04x}]  prog-if {:02x}  header type {}",
                self.subsystem_vendor_id,
                self.subsystem_id,
                self.class_code & 0xff,
                self.header_type
            ),
        ];
        let c = self.command;
        out.push(format!(
            "{indent}Control: {} {} {} {} {} {}",
            flag("I/O", c & 1 != 0),
            flag("Mem", c & 2 != 0),
            flag("BusMaster", c & 4 != 0),
            flag("ParErr", c & 0x40 != 0),
            flag("SERR", c & 0x100 != 0),
            flag("DisINTx", c & 0x400 != 0)
        ));
        let s = self.status;
        out.push(format!(
            "{indent}Status: {} {} {} {} {} {} {}",
            flag("Cap", s & 0x10 != 0),
            flag("66MHz", s & 0x20 != 0),
            flag(">TAbort", s & 0x800 != 0),
            flag("<TAbort", s & 0x1000 != 0),
            flag("<MAbort", s & 0x2000 != 0),
            flag(">SERR", s & 0x4000 != 0),
            flag("INTx", s & 0x8 != 0)
        ));
        if self.interrupt_pin != 0 {
            let pin = (b'A' + (self.interrupt_pin - 1).min(25)) as char;
            out.push(format!(
                "{indent}Interrupt: pin {pin} routed to IRQ {}",
                self.interrupt_line
            ));
        }
        out
    }
}

impl Bar {
    /// Its `Region` line, indented by `indent`.
    fn render(&self, indent: &str) -> String {
        let size = if self.size > 0 {
            format!(" [size={}]", size_text(self.size))
        } else {
            String::new()
        };
        if self.kind == "io" {
            return format!(
                "{indent}Region {}: I/O ports at {:04x}{size}",
                self.index, self.address
            );
        }
        format!(
            "{indent}Region {}: Memory at {:08x} ({}-bit, {}){size}",
            self.index,
            self.address,
            self.bits,
            if self.prefetchable {
                "prefetchable"
            } else {
                "non-prefetchable"
            }
        )
    }
}

impl CapDetails {
    /// Its lines: the first after `head` (the capability's offset and name), the others
    /// after `more`; `id` is the capability id, shown for one not decoded.
    fn render(&self, head: &str, more: &str, id: u16) -> Vec<String> {
        match self {
            CapDetails::PowerManagement {
                version,
                d1,
                d2,
                state,
                pme_enable,
            } => vec![
                format!("{head} version {version}"),
                format!("{more}Flags: {} {}", flag("D1", *d1), flag("D2", *d2)),
                format!("{more}Status: D{state} {}", flag("PME-Enable", *pme_enable)),
            ],
            CapDetails::Msi {
                enable,
                count,
                max_count,
                addr64,
                maskable,
                address,
                data,
            } => vec![
                format!(
                    "{head}: {} Count={count}/{max_count} {} {}",
                    flag("Enable", *enable),
                    flag("Maskable", *maskable),
                    flag("64bit", *addr64)
                ),
                format!("{more}Address: {address:016x}  Data: {data:04x}"),
            ],
            CapDetails::MsiX {
                enable,
                masked,
                count,
                table_bar,
                table_offset,
                pba_bar,
                pba_offset,
            } => vec![
                format!(
                    "{head}: {} Count={count} {}",
                    flag("Enable", *enable),
                    flag("Masked", *masked)
                ),
                format!("{more}Vector table: BAR={table_bar} offset={table_offset:08x}"),
                format!("{more}PBA: BAR={pba_bar} offset={pba_offset:08x}"),
            ],
            CapDetails::Express {
                version,
                port_type,
                max_payload_supported,
                max_payload,
                max_read_request,
                link_speed_cap,
                link_width_cap,
                link_speed,
                link_width,
            } => vec![
                format!("{head} (v{version}) {port_type}"),
                format!("{more}DevCap: MaxPayload {max_payload_supported} bytes"),
                format!(
                    "{more}DevCtl: MaxPayload {max_payload} bytes, MaxReadReq {max_read_request} bytes"
                ),
                format!("{more}LnkCap: Speed {link_speed_cap}, Width x{link_width_cap}"),
                format!("{more}LnkSta: Speed {link_speed}, Width x{link_width}"),
            ],
            CapDetails::Other => vec![format!("{head} (id {id:02x})")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_user_sample_server::test_support::config::with_capabilities;

    #[test]
    fn irq_counts_are_bounded_per_index() {
        assert_eq!(irq_bound(2), Some(("MSI-X", 2048)));
        assert_eq!(irq_bound(5), None);
        assert_eq!(irq_count_problem(2, 2048), None);
        assert_eq!(
            irq_count_problem(2, 2049).as_deref(),
            Some("MSI-X (IRQ index 2) has 2049 vectors; PCI allows at most 2048")
        );
        assert!(irq_count_problem(1, 33).is_some());
        assert!(irq_count_problem(0, 2).is_some());
        assert!(irq_count_problem(4, 1).is_none());
        // Indexes past REQ are not PCI's.
        assert_eq!(irq_count_problem(7, u32::MAX), None);
    }

    #[test]
    fn decodes_header_bars_and_capabilities() {
        let c = decode(&with_capabilities(0x1b36, 0x0010), &[4096, 1 << 20, 256]);
        assert_eq!(c.vendor_name.as_deref(), Some("Red Hat, Inc."));
        assert_eq!(
            c.device_name.as_deref(),
            Some("QEMU NVM Express Controller")
        );
        assert_eq!(c.class_name, "Non-Volatile memory controller");
        assert_eq!(c.bars.len(), 3);
        assert_eq!(c.bars[0].address, 0xfe00_0000);
        assert_eq!((c.bars[1].bits, c.bars[1].prefetchable), (64, true));
        assert_eq!(
            (c.bars[2].index, c.bars[2].kind, c.bars[2].address),
            (3, "io", 0xc000)
        );
        let names: Vec<_> = c.capabilities.iter().map(|c| c.name).collect();
        assert_eq!(names, ["Power Management", "MSI", "MSI-X", "Express"]);
        assert!(matches!(
            c.capabilities[2].details,
            CapDetails::MsiX {
                count: 4,
                table_offset: 0x800,
                pba_offset: 0xc00,
                ..
            }
        ));
        let text = c.render("").join("\n");
        assert!(
            text.contains("Vector table: BAR=0 offset=00000800"),
            "{text}"
        );
        assert!(text.contains("LnkCap: Speed 8GT/s, Width x1"), "{text}");
        assert!(text.contains("Region 0: Memory at fe000000 (32-bit, non-prefetchable) [size=4K]"));
    }

    #[test]
    fn survives_looping_and_wild_pointers() {
        let mut b = with_capabilities(1, 2);
        b[0x91] = 0x40; // Express points back to PM.
        let c = decode(&b, &[]);
        assert_eq!(c.capabilities.len(), 4);
        assert!(c.warnings[0].contains("loops"));
        b[0x34] = 0x10;
        assert!(decode(&b, &[]).warnings[0].contains("outside"));
        let short = decode(&[0xff; 8], &[]);
        assert_eq!(short.vendor_id, 0xffff);
    }

    #[test]
    fn pci_ids_lookup() {
        let text =
            "# c\n1234  Vendor A\n\t0001  Dev One\n\t\t1 2  sub\n5678  Vendor B\n\t0002  Two\n";
        assert_eq!(
            lookup_pci_ids(text, 0x1234, 1),
            (Some("Vendor A".into()), Some("Dev One".into()))
        );
        assert_eq!(
            lookup_pci_ids(text, 0x1234, 2),
            (Some("Vendor A".into()), None)
        );
        assert_eq!(lookup_pci_ids(text, 0x9999, 2), (None, None));
    }
}
