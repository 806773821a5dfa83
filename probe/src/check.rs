// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `check`: a conformance run of what the protocol requires of a server, over one raw
//! connection ([`RawEndpoint`]), each check PASS, FAIL or SKIP with its reason.
//!
//! One connection only, because some servers serve a single client and exit (or delete
//! themselves) when it hangs up. The order is chosen so that the checks that may break the
//! stream come last: invalid requests, then `No_reply`, then the unknown command (the
//! crates.io `vfio_user` server answers it without reading its body). Every invalid request
//! is followed by a valid DEVICE_GET_INFO whose reply must come back intact and with nothing
//! in front of it: that is what "the stream stays in step" means here. The server processes
//! commands in order, so a reply that should not exist (to a `No_reply` command, or to a
//! body read as a header) always arrives before that reply; no waiting on silence is needed.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::negotiate::{Capabilities, Offer};
use vfio_user_client::protocol::{
    Command, DeviceInfo, DmaMap, DmaUnmap, Header, IrqInfo, RegionAccess, RegionCap, RegionInfo,
    SetIrqs,
};
use vfio_user_sample_server::SharedMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{errno_text, ProbeError};
use crate::pci;
use crate::wire::{self, Exchange, RawEndpoint, RawMsg};

mod migration;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// The server behaves as required.
    Pass,
    /// It does not; the reason says how.
    Fail,
    /// Not run; the reason says why.
    Skip,
}

impl Status {
    fn text(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// Stable identifier, e.g. `version.minor`.
    pub id: String,
    /// The outcome.
    pub status: Status,
    /// Why.
    pub reason: String,
}

/// The whole run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The socket.
    pub socket: String,
    /// Whether the checks that write to device registers ran.
    pub destructive: bool,
    /// Every check, in the order run.
    pub checks: Vec<CheckResult>,
    /// Checks that passed.
    pub passed: usize,
    /// Checks that failed.
    pub failed: usize,
    /// Checks skipped.
    pub skipped: usize,
}

impl CheckReport {
    /// The result of check `id`.
    pub fn get(&self, id: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// Whether no check failed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    /// The report as text: one line per check, then the totals.
    pub fn render_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
        let mut out = format!(
            "Conformance check of {}{}\n",
            self.socket,
            if self.destructive {
                " (destructive)"
            } else {
                ""
            }
        );
        for c in &self.checks {
            out.push_str(&format!(
                "  {}  {:<width$}  {}\n",
                c.status.text(),
                c.id,
                c.reason
            ));
        }
        out.push_str(&format!(
            "{} passed, {} failed, {} skipped\n",
            self.passed, self.failed, self.skipped
        ));
        out
    }
}

/// How to run the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Deadline of every reply.
    pub timeout: Duration,
    /// Also run checks that write to device registers.
    pub destructive: bool,
}

/// A command number no revision of the protocol defines.
pub const UNKNOWN_COMMAND: u16 = 255;
/// Guest address of the fd-backed test window.
const DMA_FD_ADDRESS: u64 = 1 << 32;
/// Guest address of the fd-less test window.
const DMA_NO_FD_ADDRESS: u64 = (1 << 32) + (4 << 20);
/// Size of each test window (2 MiB: usable even by servers that need huge-page windows).
const DMA_WINDOW: u64 = 2 << 20;
/// Largest REGION_INFO `argsz` followed on re-query.
const MAX_REGION_ARGSZ: u32 = 64 << 10;
/// The config space read check.
const CONFIG_READ: &str = "region.config-read";
/// The PCI bounds of IRQ counts check.
const IRQ_COUNTS: &str = "irq.counts";
/// Bytes of the type 0 config space header.
const CONFIG_HEADER: u64 = 64;
/// A word inside the header read on its own (revision and class code).
const CONFIG_WORD: u64 = 0x8;

/// What discovery found.
#[derive(Debug, Default)]
struct Found {
    info: Option<DeviceInfo>,
    regions: Vec<RegionInfo>,
    irqs: Vec<IrqInfo>,
}

struct Checker<'a> {
    conn: RawEndpoint,
    path: &'a Path,
    options: &'a CheckOptions,
    caps: Capabilities,
    found: Found,
    results: Vec<CheckResult>,
}

/// Runs every check against the server at `path`.
///
/// Connection-level failures (no socket, nobody listening, no answer, not a vfio-user
/// server, version refused) are errors; everything the server does after answering
/// VERSION is a check result.
pub fn run(path: &Path, options: &CheckOptions) -> Result<CheckReport, ProbeError> {
    let mut conn = wire::connect(path, options.timeout)?;
    let version = wire::version(&mut conn, path)?;
    let mut c = Checker {
        conn,
        path,
        options,
        caps: Capabilities::default(),
        found: Found::default(),
        results: Vec::new(),
    };
    c.version(&version);
    c.discovery();
    c.irq_eventfds();
    c.dma_map(true);
    c.dma_map(false);
    c.reset();
    c.destructive_writes();
    c.migration();
    c.invalid_requests();
    c.no_reply();
    c.unknown_command();
    let count = |s| c.results.iter().filter(|r| r.status == s).count();
    Ok(CheckReport {
        socket: c.path.display().to_string(),
        destructive: options.destructive,
        passed: count(Status::Pass),
        failed: count(Status::Fail),
        skipped: count(Status::Skip),
        checks: c.results,
    })
}

/// Judges a reply that must be the protocol's error reply to `command`.
fn judge_error_reply(command: u16, ex: &Exchange) -> Result<String, String> {
    let m = match &ex.reply {
        Ok(m) => m,
        Err(e) => return Err(format!("{e} to the invalid request")),
    };
    let h = &m.header;
    if !m.is_error() {
        if h.error != 0 {
            return Err(format!(
                "error reply without the Error flag (flags {:#x}, errno {})",
                h.flags, h.error
            ));
        }
        return Err(format!(
            "the server accepted the invalid request (success reply: {})",
            m.describe()
        ));
    }
    if !m.is_reply() {
        return Err(format!(
            "error reply typed as a command (flags {:#x}; must be type reply)",
            h.flags
        ));
    }
    if h.command != command {
        return Err(format!(
            "error reply names command {} instead of {command}",
            h.command
        ));
    }
    if h.size as usize != Header::SIZE {
        return Err(format!(
            "error reply carries {} payload bytes (must be header only)",
            h.payload_len()
        ));
    }
    if h.error == 0 {
        Ok("error reply, errno 0 (allowed; an errno such as EINVAL tells the client more)".into())
    } else {
        Ok(format!("error reply, {}", errno_text(h.error)))
    }
}

/// Judges a reply that must be a success.
pub(crate) fn judge_success(command: Command, ex: &Exchange) -> Result<&RawMsg, String> {
    let m = match &ex.reply {
        Ok(m) => m,
        Err(e) => return Err(format!("{command}: {e}")),
    };
    if let Some(o) = ex.others.first() {
        return Err(format!(
            "{command}: an unexpected message arrived before its reply ({})",
            o.describe()
        ));
    }
    if m.is_error() || m.header.error != 0 {
        return Err(format!("{command} refused: {}", errno_text(m.header.error)));
    }
    if !m.is_reply() {
        return Err(format!(
            "{command}: reply typed as a command (flags {:#x})",
            m.header.flags
        ));
    }
    if m.header.command != command as u16 {
        return Err(format!(
            "{command}: reply names command {}",
            m.header.command
        ));
    }
    Ok(m)
}

fn json_type_ok(v: &Value, kind: &str) -> bool {
    match kind {
        "number" => v.is_u64(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        _ => false,
    }
}

/// Checks the types of the known capability keys; `Ok` with a summary, `Err` with the
/// problems.
fn capability_types(caps: &serde_json::Map<String, Value>) -> Result<String, String> {
    const KNOWN: &[(&str, &str)] = &[
        ("max_msg_fds", "number"),
        ("max_data_xfer_size", "number"),
        ("max_dma_maps", "number"),
        ("pgsizes", "number"),
        ("write_multiple", "boolean"),
        ("twin_socket", "object"),
        ("migration", "object"),
    ];
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    let mut unknown = Vec::new();
    for (key, v) in caps {
        match KNOWN.iter().find(|(k, _)| k == key) {
            Some((_, kind)) if json_type_ok(v, kind) => seen.push(format!("{key} {v}")),
            Some((_, kind)) => problems.push(format!("{key} is {v}, not a {kind}")),
            None => unknown.push(key.clone()),
        }
    }
    let sub = |obj: &str, key: &str, kind: &str, required: bool, problems: &mut Vec<String>| {
        if let Some(Value::Object(o)) = caps.get(obj) {
            match o.get(key) {
                Some(v) if !json_type_ok(v, kind) => {
                    problems.push(format!("{obj}.{key} is {v}, not a {kind}"))
                }
                None if required => problems.push(format!("{obj}.{key} is missing")),
                _ => {}
            }
        }
    };
    sub("migration", "pgsize", "number", true, &mut problems);
    sub(
        "migration",
        "max_bitmap_size",
        "number",
        false,
        &mut problems,
    );
    sub("twin_socket", "supported", "boolean", false, &mut problems);
    sub("twin_socket", "fd_index", "number", false, &mut problems);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let mut s = if seen.is_empty() {
        "no known keys (spec defaults apply)".to_string()
    } else {
        seen.join(", ")
    };
    if !unknown.is_empty() {
        s.push_str(&format!(
            "; unknown keys (clients ignore them): {}",
            unknown.join(", ")
        ));
    }
    Ok(s)
}

/// Judges the payload of a REGION_READ success reply to `count` bytes at `offset` of
/// `region`: the head must echo the access and exactly `count` bytes must follow it.
pub(crate) fn judge_read_reply(
    payload: &[u8],
    region: u32,
    offset: u64,
    count: u32,
) -> Result<Vec<u8>, String> {
    let Some(data) = payload.get(RegionAccess::HEAD_SIZE..) else {
        return Err(format!(
            "the REGION_READ reply has {} payload bytes, no room for its 16-byte head",
            payload.len()
        ));
    };
    let h = RegionAccess::decode(payload).map_err(|e| e.to_string())?;
    if (h.region, h.offset, h.count) != (region, offset, count) {
        return Err(format!(
            "the REGION_READ reply answers region {} at {:#x}, {} bytes (asked: region \
             {region} at {offset:#x}, {count} bytes)",
            h.region, h.offset, h.count
        ));
    }
    if data.len() != count as usize {
        return Err(format!(
            "the REGION_READ reply carries {} data bytes for a count of {count} ({})",
            data.len(),
            if data.len() < count as usize {
                "short"
            } else {
                "long"
            }
        ));
    }
    Ok(data.to_vec())
}

/// The JSON after the version numbers of a VERSION reply: `None` when there is none, the
/// object when it is NUL-terminated UTF-8 JSON holding an object, why not otherwise.
fn version_json(json: &[u8]) -> Result<Option<Value>, String> {
    if json.is_empty() {
        return Ok(None);
    }
    if json.last() != Some(&0) {
        return Err(format!(
            "the {}-byte JSON is not NUL-terminated (last byte {:#04x})",
            json.len(),
            json.last().copied().unwrap_or(0)
        ));
    }
    if json[..json.len() - 1].contains(&0) {
        return Err("the JSON contains a NUL before its end".into());
    }
    let text = std::str::from_utf8(&json[..json.len() - 1])
        .map_err(|e| format!("the JSON is not UTF-8: {e}"))?;
    let v =
        serde_json::from_str::<Value>(text).map_err(|e| format!("the JSON does not parse: {e}"))?;
    if v.is_object() {
        Ok(Some(v))
    } else {
        Err(format!("the JSON is {v}, not an object"))
    }
}

/// Adds to `problems` what is inconsistent in region `index`, described as `r` with `fds`
/// file descriptors: MMAP without an fd, CAPS with a capability offset inside the head,
/// sparse areas outside the region.
fn region_problems(index: u32, r: &RegionInfo, fds: usize, problems: &mut Vec<String>) {
    if r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 && fds == 0 {
        problems.push(format!("region {index}: MMAP set but no fd came"));
    }
    if r.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 && r.cap_offset < RegionInfo::HEAD_SIZE as u32 {
        problems.push(format!(
            "region {index}: CAPS set with cap_offset {}",
            r.cap_offset
        ));
    }
    for cap in &r.caps {
        if let RegionCap::SparseMmap(areas) = cap {
            for a in areas {
                if a.offset.checked_add(a.size).is_none_or(|e| e > r.size) {
                    problems.push(format!(
                        "region {index}: sparse area {:#x}+{:#x} outside its {:#x} bytes",
                        a.offset, a.size, r.size
                    ));
                }
            }
        }
    }
}

/// Judges the reply `ex` to a REGION_WRITE of 4 bytes at 0 of `region`: a well-formed
/// refusal, or a success that echoes the access.
fn judge_write_reply(region: u32, ex: &Exchange) -> Result<String, String> {
    if let Ok(m) = &ex.reply {
        if m.is_error() {
            return judge_error_reply(Command::RegionWrite as u16, ex)
                .map(|s| format!("the device refused the write ({s}); the reply is well-formed"));
        }
    }
    let m = judge_success(Command::RegionWrite, ex)?;
    match RegionAccess::decode(&m.payload) {
        Ok(h) if h.region == region && h.offset == 0 && h.count == 4 => Ok(format!(
            "4 bytes written back to region {region} at 0; the reply echoes the access"
        )),
        Ok(h) => Err(format!(
            "the REGION_WRITE reply answers region {} at {:#x}, {} bytes",
            h.region, h.offset, h.count
        )),
        Err(e) => Err(format!("the REGION_WRITE reply: {e}")),
    }
}

fn head_u32(payload: &[u8], at: usize) -> u32 {
    payload
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

impl Checker<'_> {
    fn record(&mut self, id: &str, result: Result<String, String>) {
        let (status, reason) = match result {
            Ok(r) => (Status::Pass, r),
            Err(r) => (Status::Fail, r),
        };
        self.results.push(CheckResult {
            id: id.into(),
            status,
            reason,
        });
    }

    fn skip(&mut self, id: &str, reason: impl Into<String>) {
        self.results.push(CheckResult {
            id: id.into(),
            status: Status::Skip,
            reason: reason.into(),
        });
    }

    /// `Some(reason)` when the checks cannot go on (stream lost or no device info).
    fn blocked(&self) -> Option<String> {
        if let Some(b) = self.conn.broken() {
            return Some(format!("the connection can no longer be followed ({b})"));
        }
        if self.found.info.is_none() {
            return Some("DEVICE_GET_INFO did not succeed".into());
        }
        None
    }

    fn version(&mut self, reply: &RawMsg) {
        self.record(
            "version.reply",
            if reply.is_reply() {
                Ok("reply to VERSION with our message id".into())
            } else {
                Err(format!(
                    "VERSION reply typed as a command (flags {:#x})",
                    reply.header.flags
                ))
            },
        );
        let p = &reply.payload;
        if p.len() < 4 {
            self.record(
                "version.major",
                Err(format!(
                    "the reply's {} payload bytes hold no version",
                    p.len()
                )),
            );
            for id in ["version.minor", "version.json", "version.capabilities"] {
                self.skip(id, "no version in the reply");
            }
            return;
        }
        self.version_numbers(
            u16::from_ne_bytes([p[0], p[1]]),
            u16::from_ne_bytes([p[2], p[3]]),
        );
        let json = &p[4..];
        let parsed = version_json(json);
        match &parsed {
            Ok(None) => self.record(
                "version.json",
                Ok("no JSON (allowed; the spec's defaults apply)".into()),
            ),
            Ok(Some(_)) => self.record(
                "version.json",
                Ok(format!(
                    "{} bytes of NUL-terminated JSON, an object",
                    json.len()
                )),
            ),
            Err(e) => self.record("version.json", Err(e.clone())),
        }
        self.version_capabilities(p, parsed);
    }

    /// The major and minor version the server answered, against the 0.0 proposed.
    fn version_numbers(&mut self, major: u16, minor: u16) {
        self.record(
            "version.major",
            if major == 0 {
                Ok("major 0, as proposed".into())
            } else {
                Err(format!("major {major} differs from the proposed 0"))
            },
        );
        self.record(
            "version.minor",
            if minor == 0 {
                Ok("minor 0, not above the proposed 0".into())
            } else {
                Err(format!("minor {minor} is above the proposed 0"))
            },
        );
    }

    /// The "capabilities" object of the VERSION reply `payload`, whose JSON parsed as
    /// `parsed`: its member types, then the library's own judgement of its values.
    fn version_capabilities(&mut self, payload: &[u8], parsed: Result<Option<Value>, String>) {
        let v = match parsed {
            Ok(None) => return self.skip("version.capabilities", "no JSON"),
            Err(_) => return self.skip("version.capabilities", "the JSON is unusable"),
            Ok(Some(v)) => v,
        };
        let result = match v.get("capabilities") {
            None => Ok("no \"capabilities\" object (spec defaults apply)".into()),
            Some(Value::Object(caps)) => capability_types(caps),
            Some(other) => Err(format!("\"capabilities\" is {other}, not an object")),
        };
        // The library's own judgement (bounds, impossible values), on the
        // capabilities alone: the version is checked above.
        let mut patched = payload.to_vec();
        patched[..4].copy_from_slice(&[0; 4]);
        let result = match (
            result,
            Capabilities::from_reply(&Offer::default(), &patched),
        ) {
            (Ok(s), Ok(caps)) => {
                self.caps = caps;
                Ok(s)
            }
            (Ok(_), Err(e)) => Err(e.to_string()),
            (Err(e), _) => Err(e),
        };
        self.record("version.capabilities", result);
    }

    fn get_info(&mut self) -> Exchange {
        let mut payload = Vec::new();
        DeviceInfo::request().encode_into(&mut payload);
        self.conn.request(Command::DeviceGetInfo, &payload, &[])
    }

    /// Sends a valid DEVICE_GET_INFO and checks that its reply comes back, alone and equal
    /// to the first one.
    fn in_step(&mut self) -> Result<(), String> {
        let ex = self.get_info();
        if let Some(o) = ex.others.first() {
            return Err(format!(
                "stream out of step: an unexpected message ({}) came before the reply to the \
                 next DEVICE_GET_INFO",
                o.describe()
            ));
        }
        let m = judge_success(Command::DeviceGetInfo, &ex)
            .map_err(|e| format!("stream out of step: {e}"))?;
        match DeviceInfo::decode(&m.payload) {
            Ok(i) if Some(i) == self.found.info => Ok(()),
            Ok(i) => Err(format!(
                "stream out of step: the next DEVICE_GET_INFO answered {i:?}"
            )),
            Err(e) => Err(format!(
                "stream out of step: the next DEVICE_GET_INFO reply: {e}"
            )),
        }
    }

    fn discovery(&mut self) {
        let ex = self.get_info();
        let info = judge_success(Command::DeviceGetInfo, &ex).and_then(|m| {
            let i = DeviceInfo::decode(&m.payload).map_err(|e| e.to_string())?;
            if (i.argsz as usize) < DeviceInfo::SIZE {
                return Err(format!("reply argsz {} is below 16", i.argsz));
            }
            if i.flags & VFIO_DEVICE_FLAGS_PCI != 0 && i.num_regions < 9 {
                return Err(format!(
                    "a PCI device with {} regions (at least 9)",
                    i.num_regions
                ));
            }
            if i.num_regions > 100 || i.num_irqs > 50 {
                return Err(format!(
                    "{} regions and {} IRQ indexes (QEMU refuses more than 100 and 50)",
                    i.num_regions, i.num_irqs
                ));
            }
            Ok(i)
        });
        match info {
            Ok(i) => {
                self.record(
                    "device.info",
                    Ok(format!(
                        "flags {:#x}, {} regions, {} IRQ indexes",
                        i.flags, i.num_regions, i.num_irqs
                    )),
                );
                self.found.info = Some(i);
            }
            Err(e) => {
                self.record("device.info", Err(e));
                for id in [
                    "region.info",
                    "region.requery",
                    CONFIG_READ,
                    "irq.info",
                    IRQ_COUNTS,
                ] {
                    self.skip(id, "DEVICE_GET_INFO did not succeed");
                }
                return;
            }
        }
        self.regions();
        self.config_read();
        self.irqs();
        self.irq_counts();
    }

    fn region_query(&mut self, index: u32, argsz: u32) -> Result<RawMsg, String> {
        let mut payload = Vec::new();
        RegionInfo::request(index, argsz).encode_into(&mut payload);
        let ex = self
            .conn
            .request(Command::DeviceGetRegionInfo, &payload, &[]);
        judge_success(Command::DeviceGetRegionInfo, &ex)?;
        ex.reply.map_err(|e| e.to_string())
    }

    fn regions(&mut self) {
        let Some(info) = self.found.info else { return };
        let mut problems = Vec::new();
        let mut requeried = Vec::new();
        for index in 0..info.num_regions {
            let first = match self.region_query(index, RegionInfo::HEAD_SIZE as u32) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("region {index}: {e}"));
                    break;
                }
            };
            let Some((full, fds)) = self.region_reply(index, first, &mut problems, &mut requeried)
            else {
                continue;
            };
            match RegionInfo::decode(&full) {
                Ok(r) => {
                    region_problems(index, &r, fds, &mut problems);
                    self.found.regions.push(r);
                }
                Err(e) => problems.push(format!("region {index}: {e}")),
            }
        }
        let n = self.found.regions.len();
        self.record(
            "region.info",
            if problems.is_empty() {
                Ok(format!("{n} regions described consistently"))
            } else {
                Err(problems.join("; "))
            },
        );
        self.record_requery(&requeried);
    }

    /// The whole reply (payload and fd count) describing region `index`, given the `first`
    /// answer to a query with the 32-byte head: that one, or the answer to a query with the
    /// argsz it asked for (noted in `requeried`). `None`, with the reason in `problems`, when
    /// the first answer is unusable or the re-query fails.
    fn region_reply(
        &mut self,
        index: u32,
        first: RawMsg,
        problems: &mut Vec<String>,
        requeried: &mut Vec<String>,
    ) -> Option<(Vec<u8>, usize)> {
        let head = RegionInfo::HEAD_SIZE as u32;
        let p = &first.payload;
        if p.len() < RegionInfo::HEAD_SIZE {
            problems.push(format!("region {index}: reply of {} bytes", p.len()));
            return None;
        }
        let (argsz, reply_index) = (head_u32(p, 0), head_u32(p, 8));
        if reply_index != index {
            problems.push(format!(
                "region {index}: reply describes region {reply_index}"
            ));
            return None;
        }
        if p.len() > head as usize {
            problems.push(format!(
                "region {index}: {} payload bytes, more than the {head} offered",
                p.len()
            ));
        }
        if argsz <= head {
            let fds = first.fds.len();
            return Some((first.payload, fds));
        }
        if argsz > MAX_REGION_ARGSZ {
            problems.push(format!("region {index}: asks for argsz {argsz}"));
            return None;
        }
        match self.region_query(index, argsz) {
            Ok(m) => {
                let again = head_u32(&m.payload, 0);
                if again > argsz {
                    problems.push(format!(
                        "region {index}: asks for argsz {again} after {argsz}"
                    ));
                }
                requeried.push(format!("region {index} (argsz {head} -> {argsz})"));
                let fds = m.fds.len();
                Some((m.payload, fds))
            }
            Err(e) => {
                problems.push(format!("region {index} re-query: {e}"));
                None
            }
        }
    }

    /// Records whether the regions with capabilities sent them (and their fds) only when
    /// asked with a larger argsz, the re-queries being those in `requeried`.
    fn record_requery(&mut self, requeried: &[String]) {
        if !requeried.is_empty() {
            self.record(
                "region.requery",
                Ok(format!(
                    "capabilities (and fds) came on re-query with the argsz named: {}",
                    requeried.join(", ")
                )),
            );
        } else if self.found.regions.iter().any(|r| !r.caps.is_empty()) {
            self.record(
                "region.requery",
                Err("capabilities were sent in a 32-byte argsz without asking for more".into()),
            );
        } else {
            self.skip("region.requery", "no region has capabilities");
        }
    }

    fn irqs(&mut self) {
        let Some(info) = self.found.info else { return };
        let mut problems = Vec::new();
        for index in 0..info.num_irqs {
            let mut payload = Vec::new();
            IrqInfo::request(index).encode_into(&mut payload);
            let ex = self.conn.request(Command::DeviceGetIrqInfo, &payload, &[]);
            let irq = judge_success(Command::DeviceGetIrqInfo, &ex)
                .and_then(|m| IrqInfo::decode(&m.payload).map_err(|e| e.to_string()));
            match irq {
                Ok(i) => {
                    if i.index != index {
                        problems.push(format!("IRQ {index}: reply describes index {}", i.index));
                    }
                    if (i.argsz as usize) < IrqInfo::SIZE {
                        problems.push(format!("IRQ {index}: argsz {}", i.argsz));
                    }
                    if i.flags & !0xf != 0 {
                        problems.push(format!("IRQ {index}: undefined flags {:#x}", i.flags));
                    }
                    self.found.irqs.push(i);
                }
                Err(e) => {
                    problems.push(format!("IRQ {index}: {e}"));
                    break;
                }
            }
        }
        let summary: Vec<String> = self
            .found
            .irqs
            .iter()
            .map(|i| format!("{}:{}", i.index, i.count))
            .collect();
        self.record(
            "irq.info",
            if problems.is_empty() {
                Ok(format!("index:vectors {}", summary.join(" ")))
            } else {
                Err(problems.join("; "))
            },
        );
    }

    fn irq_eventfds(&mut self) {
        const ID: &str = "irq.set-eventfds";
        if let Some(why) = self.blocked() {
            return self.skip(ID, why);
        }
        if self.caps.max_msg_fds == 0 {
            return self.skip(ID, "the server accepts no fds (max_msg_fds 0)");
        }
        let usable = |i: &&IrqInfo| i.flags & VFIO_IRQ_INFO_EVENTFD != 0 && i.count > 0;
        let pick = [2, 1, 0]
            .iter()
            .find_map(|&n| self.found.irqs.iter().filter(usable).find(|i| i.index == n))
            .or_else(|| self.found.irqs.iter().find(usable))
            .copied();
        let Some(irq) = pick else {
            return self.skip(ID, "no IRQ index with EVENTFD and vectors");
        };
        let efd = match EventFd::new(EFD_NONBLOCK) {
            Ok(e) => e,
            Err(e) => return self.skip(ID, format!("cannot create an eventfd: {e}")),
        };
        let mut payload = Vec::new();
        SetIrqs::new(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            irq.index,
            0,
            1,
            Vec::new(),
        )
        .encode_into(&mut payload);
        let ex = self
            .conn
            .request(Command::DeviceSetIrqs, &payload, &[efd.as_raw_fd()]);
        if let Err(e) = judge_success(Command::DeviceSetIrqs, &ex) {
            return self.record(
                ID,
                Err(format!(
                    "assigning an eventfd to IRQ {} vector 0: {e}",
                    irq.index
                )),
            );
        }
        payload.clear();
        SetIrqs::new(
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            irq.index,
            0,
            0,
            Vec::new(),
        )
        .encode_into(&mut payload);
        let ex = self.conn.request(Command::DeviceSetIrqs, &payload, &[]);
        let result = judge_success(Command::DeviceSetIrqs, &ex)
            .map(|_| {
                format!(
                    "an eventfd assigned to IRQ {} vector 0 (DATA_EVENTFD|TRIGGER), then the index disabled (DATA_NONE|TRIGGER, count 0)",
                    irq.index
                )
            })
            .map_err(|e| format!("disabling IRQ {}: {e}", irq.index));
        self.record(ID, result);
    }

    fn dma_map(&mut self, with_fd: bool) {
        let id = if with_fd {
            "dma.map-fd"
        } else {
            "dma.map-no-fd"
        };
        if let Some(why) = self.blocked() {
            return self.skip(id, why);
        }
        if with_fd && self.caps.max_msg_fds == 0 {
            return self.skip(id, "the server accepts no fds (max_msg_fds 0)");
        }
        let memory = if with_fd {
            match SharedMemory::new("vfio-user-probe-dma", DMA_WINDOW) {
                Ok(m) => Some(m),
                Err(e) => return self.skip(id, format!("cannot create a memfd: {e}")),
            }
        } else {
            None
        };
        let address = if with_fd {
            DMA_FD_ADDRESS
        } else {
            DMA_NO_FD_ADDRESS
        };
        let mut payload = Vec::new();
        DmaMap::new(
            DmaMap::FLAG_READ | DmaMap::FLAG_WRITE,
            0,
            address,
            DMA_WINDOW,
        )
        .encode_into(&mut payload);
        let fds: Vec<_> = memory.iter().map(|m| m.as_raw_fd()).collect();
        let ex = self.conn.request(Command::DmaMap, &payload, &fds);
        if let Err(e) = judge_success(Command::DmaMap, &ex) {
            let hint = if with_fd {
                ""
            } else {
                " (VMMs map guest RAM that is not shared this way; the server must then use DMA_READ/DMA_WRITE)"
            };
            return self.record(id, Err(format!("{e}{hint}")));
        }
        payload.clear();
        DmaUnmap::new(address, DMA_WINDOW).encode_into(&mut payload);
        let ex = self.conn.request(Command::DmaUnmap, &payload, &[]);
        let result = judge_success(Command::DmaUnmap, &ex).and_then(|m| {
            match DmaUnmap::decode(&m.payload) {
                Ok(u) if u.address == address && u.size == DMA_WINDOW => Ok(format!(
                    "{} MiB at {address:#x} mapped {} and unmapped; the unmap reply echoes the entry",
                    DMA_WINDOW >> 20,
                    if with_fd { "with a memfd" } else { "without an fd" }
                )),
                Ok(u) => Err(format!(
                    "the DMA_UNMAP reply echoes {:#x}+{:#x} instead of {address:#x}+{DMA_WINDOW:#x}",
                    u.address, u.size
                )),
                Err(_) => Err(format!(
                    "the DMA_UNMAP reply has {} payload bytes; it must echo the 24-byte entry",
                    m.payload.len()
                )),
            }
        });
        self.record(id, result);
    }

    fn reset(&mut self) {
        const ID: &str = "device.reset";
        if let Some(why) = self.blocked() {
            return self.skip(ID, why);
        }
        let advertised = self
            .found
            .info
            .is_some_and(|i| i.flags & VFIO_DEVICE_FLAGS_RESET != 0);
        if !advertised {
            return self.skip(ID, "the device does not advertise VFIO_DEVICE_FLAGS_RESET");
        }
        let ex = self.conn.request(Command::DeviceReset, &[], &[]);
        let result = judge_success(Command::DeviceReset, &ex).and_then(|m| {
            if m.payload.is_empty() {
                Ok("DEVICE_RESET answered with a header-only reply".into())
            } else {
                Err(format!(
                    "the DEVICE_RESET reply carries {} payload bytes",
                    m.payload.len()
                ))
            }
        });
        self.record(ID, result);
    }

    /// A region readable, writable and at least 4 bytes long, other than PCI config space.
    fn rw_region(&self) -> Option<RegionInfo> {
        let pci = self
            .found
            .info
            .is_some_and(|i| i.flags & VFIO_DEVICE_FLAGS_PCI != 0);
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        self.found
            .regions
            .iter()
            .find(|r| r.flags & rw == rw && r.size >= 4 && !(pci && r.index == 7))
            .cloned()
    }

    /// A REGION_READ of `count` bytes at `offset` of `region`: the exchange, and the data
    /// of a success reply that echoes the access and carries exactly `count` bytes.
    fn read(
        &mut self,
        region: u32,
        offset: u64,
        count: u32,
    ) -> (Exchange, Result<Vec<u8>, String>) {
        let mut head = Vec::new();
        RegionAccess {
            offset,
            region,
            count,
        }
        .encode_into(&mut head);
        let ex = self.conn.request(Command::RegionRead, &head, &[]);
        let data = judge_success(Command::RegionRead, &ex)
            .and_then(|m| judge_read_reply(&m.payload, region, offset, count));
        (ex, data)
    }

    fn read4(&mut self, region: u32, offset: u64) -> (Exchange, Result<[u8; 4], String>) {
        let (ex, data) = self.read(region, offset, 4);
        let data = data.and_then(|d| {
            <[u8; 4]>::try_from(d.as_slice())
                .map_err(|_| format!("the REGION_READ reply has {} data bytes", d.len()))
        });
        (ex, data)
    }

    /// Config space read twice, its header and then a word inside it: each reply must echo
    /// the access and carry exactly the bytes asked for, and the two must agree.
    fn config_read(&mut self) {
        if let Some(why) = self.blocked() {
            return self.skip(CONFIG_READ, why);
        }
        if !self.is_pci() {
            return self.skip(CONFIG_READ, "not a PCI device");
        }
        let config = self
            .found
            .regions
            .iter()
            .find(|r| r.index == VFIO_PCI_CONFIG_REGION_INDEX)
            .cloned();
        let Some(config) = config else {
            return self.skip(CONFIG_READ, "the config space region was not described");
        };
        if config.flags & VFIO_REGION_INFO_FLAG_READ == 0 || config.size < CONFIG_HEADER {
            return self.record(
                CONFIG_READ,
                Err(format!(
                    "a PCI device's config space (region 7) must be readable and hold the \
                     64-byte header: flags {:#x}, size {}",
                    config.flags, config.size
                )),
            );
        }
        let index = config.index;
        let result = self
            .read(index, 0, CONFIG_HEADER as u32)
            .1
            .map_err(|e| format!("{CONFIG_HEADER} bytes at 0: {e}"))
            .and_then(|header| {
                let word = self
                    .read(index, CONFIG_WORD, 4)
                    .1
                    .map_err(|e| format!("4 bytes at {CONFIG_WORD:#x}: {e}"))?;
                let at = CONFIG_WORD as usize;
                if header.get(at..at + 4) != Some(&word[..]) {
                    return Err(format!(
                        "4 bytes at {CONFIG_WORD:#x} read {word:02x?}, the header read had \
                         {:02x?} there",
                        header.get(at..at + 4).unwrap_or_default()
                    ));
                }
                Ok(format!(
                    "{CONFIG_HEADER} bytes at 0 and 4 at {CONFIG_WORD:#x} of region {index}; \
                     each reply echoes region, offset and count with exactly that much data, \
                     and the two agree"
                ))
            });
        self.record(CONFIG_READ, result);
    }

    /// Every IRQ index of a PCI device within what PCI allows.
    fn irq_counts(&mut self) {
        if let Some(why) = self.blocked() {
            return self.skip(IRQ_COUNTS, why);
        }
        if !self.is_pci() {
            return self.skip(IRQ_COUNTS, "not a PCI device: the bounds are PCI's");
        }
        if self.found.irqs.is_empty() {
            return self.skip(IRQ_COUNTS, "no IRQ index was described");
        }
        let problems: Vec<String> = self
            .found
            .irqs
            .iter()
            .filter_map(|i| pci::irq_count_problem(i.index, i.count))
            .collect();
        let result = if problems.is_empty() {
            let counts: Vec<String> = self
                .found
                .irqs
                .iter()
                .filter_map(|i| {
                    pci::irq_bound(i.index).map(|(n, b)| format!("{n} {}/{b}", i.count))
                })
                .collect();
            Ok(format!(
                "vectors within the PCI bounds: {}",
                counts.join(", ")
            ))
        } else {
            Err(problems.join("; "))
        };
        self.record(IRQ_COUNTS, result);
    }

    fn is_pci(&self) -> bool {
        self.found
            .info
            .is_some_and(|i| i.flags & VFIO_DEVICE_FLAGS_PCI != 0)
    }

    fn destructive_writes(&mut self) {
        const WRITE: &str = "region.write";
        const POSTED: &str = "region.posted-write";
        if !self.options.destructive {
            self.skip(WRITE, "writes to a device register; run with --destructive");
            self.skip(
                POSTED,
                "writes to a device register; run with --destructive",
            );
            return;
        }
        if let Some(why) = self.blocked() {
            self.skip(WRITE, why.clone());
            self.skip(POSTED, why);
            return;
        }
        let Some(r) = self.rw_region() else {
            self.skip(WRITE, "no readable and writable region");
            self.skip(POSTED, "no readable and writable region");
            return;
        };
        let (_, value) = self.read4(r.index, 0);
        let value = match value {
            Ok(v) => v,
            Err(e) => {
                self.record(
                    WRITE,
                    Err(format!("reading region {} at 0 first: {e}", r.index)),
                );
                self.skip(POSTED, "the region could not be read");
                return;
            }
        };
        let mut payload = Vec::new();
        RegionAccess {
            offset: 0,
            region: r.index,
            count: 4,
        }
        .encode_with_data(&value, &mut payload);
        let ex = self.conn.request(Command::RegionWrite, &payload, &[]);
        self.record(WRITE, judge_write_reply(r.index, &ex));
        let result = self.posted_write(r.index, &payload);
        self.record(POSTED, result);
    }

    /// Sends the REGION_WRITE `payload` (4 bytes at 0 of `region`) with No_reply, then reads
    /// the same bytes: the read must be answered in order, and the write not at all.
    fn posted_write(&mut self, region: u32, payload: &[u8]) -> Result<String, String> {
        let posted = self
            .conn
            .send(
                Command::RegionWrite as u16,
                Header::TYPE_COMMAND | Header::FLAG_NO_REPLY,
                payload,
                &[],
            )
            .map_err(|e| format!("sending: {e}"))?;
        let (ex, data) = self.read4(region, 0);
        if let Some(o) = ex.others.iter().find(|o| o.header.id == posted) {
            return Err(format!(
                "the server replied to a No_reply REGION_WRITE ({})",
                o.describe()
            ));
        }
        data.map(|_| {
            format!(
                "a posted write to region {region} got no reply; the read after it was answered in order"
            )
        })
    }

    fn invalid(&mut self, id: &str, command: u16, payload: &[u8]) {
        if let Some(why) = self.blocked() {
            return self.skip(id, why);
        }
        let ex = self
            .conn
            .exchange(command, Header::TYPE_COMMAND, payload, &[]);
        let mut result = judge_error_reply(command, &ex);
        if let (Ok(_), Some(o)) = (&result, ex.others.first()) {
            result = Err(format!(
                "an unexpected message ({}) came before the error reply",
                o.describe()
            ));
        }
        let result = match (result, self.in_step()) {
            (Ok(s), Ok(())) => Ok(format!("{s}; the next request was answered in step")),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(s)) => Err(format!("{e}; {s}")),
        };
        self.record(id, result);
    }

    fn invalid_requests(&mut self) {
        let info = self.found.info.unwrap_or_default();
        let mut p = Vec::new();
        RegionInfo::request(info.num_regions, RegionInfo::HEAD_SIZE as u32).encode_into(&mut p);
        self.invalid(
            "error.region-info-index",
            Command::DeviceGetRegionInfo as u16,
            &p,
        );
        let mut p = Vec::new();
        RegionAccess {
            offset: 0,
            region: info.num_regions,
            count: 4,
        }
        .encode_into(&mut p);
        self.invalid("error.region-read-index", Command::RegionRead as u16, &p);
        match self
            .found
            .regions
            .iter()
            .find(|r| r.flags & VFIO_REGION_INFO_FLAG_READ != 0 && r.size >= 4)
            .cloned()
        {
            Some(r) => {
                let mut p = Vec::new();
                RegionAccess {
                    offset: r.size - 2,
                    region: r.index,
                    count: 4,
                }
                .encode_into(&mut p);
                self.invalid("error.out-of-bounds", Command::RegionRead as u16, &p);
            }
            None => self.skip(
                "error.out-of-bounds",
                "no readable region of 4 bytes or more",
            ),
        }
        let mut p = Vec::new();
        IrqInfo::request(info.num_irqs).encode_into(&mut p);
        self.invalid("error.irq-info-index", Command::DeviceGetIrqInfo as u16, &p);
        self.bad_argsz();
    }

    /// DEVICE_GET_INFO offering 8 bytes for its 16-byte answer: an error reply, or a reply
    /// that stays within the 8 bytes and names the size needed.
    fn bad_argsz(&mut self) {
        const ID: &str = "error.argsz";
        if let Some(why) = self.blocked() {
            return self.skip(ID, why);
        }
        let mut p = Vec::new();
        DeviceInfo {
            argsz: 8,
            ..DeviceInfo::default()
        }
        .encode_into(&mut p);
        let ex = self.conn.request(Command::DeviceGetInfo, &p, &[]);
        let result = match &ex.reply {
            Ok(m) if !m.is_error() && m.header.error == 0 && m.is_reply() => {
                let argsz = head_u32(&m.payload, 0);
                if m.payload.len() <= 8 && argsz as usize >= DeviceInfo::SIZE {
                    Ok(format!("a truncated reply naming argsz {argsz}"))
                } else {
                    Err(format!(
                        "DEVICE_GET_INFO with argsz 8 was answered with {} payload bytes \
                         (an error reply, or a reply within argsz, is required)",
                        m.payload.len()
                    ))
                }
            }
            _ => judge_error_reply(Command::DeviceGetInfo as u16, &ex),
        };
        let result = match (result, self.in_step()) {
            (Ok(s), Ok(())) => Ok(format!("{s}; the next request was answered in step")),
            (Ok(_), Err(e)) | (Err(e), Ok(())) => Err(e),
            (Err(e), Err(s)) => Err(format!("{e}; {s}")),
        };
        self.record(ID, result);
    }

    /// A DEVICE_GET_INFO with `No_reply` must get no reply (not even an error reply).
    fn no_reply(&mut self) {
        const ID: &str = "no-reply";
        if let Some(why) = self.blocked() {
            return self.skip(ID, why);
        }
        let mut p = Vec::new();
        DeviceInfo::request().encode_into(&mut p);
        let posted = match self.conn.post(Command::DeviceGetInfo, &p) {
            Ok(id) => id,
            Err(e) => return self.record(ID, Err(format!("sending: {e}"))),
        };
        let ex = self.get_info();
        let result = if let Some(o) = ex.others.iter().find(|o| o.header.id == posted) {
            let mut e = format!(
                "the server replied to a No_reply DEVICE_GET_INFO ({})",
                o.describe()
            );
            if ex.others.len() > 1 {
                e.push_str(&format!(
                    "; and sent {} more unexpected message(s): stream out of step",
                    ex.others.len() - 1
                ));
            }
            Err(e)
        } else if let Some(o) = ex.others.first() {
            Err(format!(
                "stream out of step: an unexpected message ({})",
                o.describe()
            ))
        } else {
            judge_success(Command::DeviceGetInfo, &ex).map(|_| {
                "no reply to a No_reply DEVICE_GET_INFO; the next request was answered in step"
                    .into()
            })
        };
        self.record(ID, result);
    }

    /// An undefined command with a 16-byte body: an error reply, and the body skipped.
    fn unknown_command(&mut self) {
        self.invalid("error.unknown-command", UNKNOWN_COMMAND, &[0xff; 16]);
        if let Some(r) = self.results.last_mut() {
            if r.status == Status::Fail && r.reason.contains("out of step") {
                r.reason.push_str(
                    " (the server did not skip the unknown command's body; a client that sends \
                     a command this server does not know loses the connection)",
                );
            }
        }
    }
}
