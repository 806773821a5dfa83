// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The migration checks of `check`: DEVICE_FEATURE discovery (always), then with
//! `--destructive` the legal v2 arcs, the refusal of illegal ones, and a save/restore round
//! trip of the device's own data. Everything is sent raw, one arc per SET, so that the
//! server's answer to each step is seen (the client library walks paths and refuses illegal
//! arcs before sending them). The stopped states only take region access, DEVICE_FEATURE
//! and MIG_DATA_READ at libvfio-user, so while the device is stopped the stream is followed
//! with GET MIG_DEVICE_STATE, not DEVICE_GET_INFO; every destructive check leaves the device
//! RUNNING (through DEVICE_RESET out of ERROR if it has to).

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET, VFIO_DEVICE_FLAGS_RESET,
    VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY, VFIO_PCI_CONFIG_REGION_INDEX,
};
use vfio_user_client::protocol::{
    Command, DeviceFeature, DeviceState, MigData, MigDeviceState, MigrationFeature,
};

use super::{judge_error_reply, judge_success, Checker};
use crate::error::errno_text;
use crate::migration::{flags_text, raw_state_name, state_name};
use crate::wire::Exchange;

/// DEVICE_FEATURE discovery.
pub(super) const FEATURE: &str = "migration.feature";
/// RUNNING → STOP → RESUMING → STOP → RUNNING.
pub(super) const ARCS: &str = "migration.arcs";
/// RUNNING → PRE_COPY → STOP_COPY → STOP → RUNNING.
pub(super) const ARCS_PRE_COPY: &str = "migration.arcs-precopy";
/// STOP_COPY → PRE_COPY and an undefined state refused.
pub(super) const ILLEGAL: &str = "migration.illegal-arcs";
/// STOP_COPY data read, written back in RESUMING, RUNNING again.
pub(super) const ROUND_TRIP: &str = "migration.round-trip";
/// The checks that change the device's state.
const DESTRUCTIVE: [&str; 4] = [ARCS, ARCS_PRE_COPY, ILLEGAL, ROUND_TRIP];
/// Most device data the round trip takes (a device that never ends its stream fails).
const MAX_DATA: usize = 64 << 20;
/// Largest MIG_DATA_READ asked for (our receive limit holds it with room for the heads).
const MAX_READ: u32 = 1 << 20;
/// `argsz` of the PROBE of MIGRATION, as the client library sends it (see
/// [`Checker::probe_migration`]).
const PROBE_ARGSZ: u32 = 0x8010;
/// A state value no revision of the uAPI defines.
const UNDEFINED_STATE: u32 = 8;

use DeviceState::{PreCopy, Resuming, Running, Stop, StopCopy};

/// How the server answered a DEVICE_FEATURE request.
enum Answer {
    /// A success reply naming the feature asked for.
    Reply(DeviceFeature),
    /// A well-formed error reply with this errno.
    Refused(u32),
    /// No reply, or one that breaks the protocol.
    Broken(String),
}

fn feature_name(feature: u32) -> &'static str {
    match feature {
        VFIO_DEVICE_FEATURE_MIGRATION => "MIGRATION",
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => "MIG_DEVICE_STATE",
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START => "DMA_LOGGING_START",
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => "DMA_LOGGING_REPORT",
        _ => "feature",
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn path_text(path: &[DeviceState]) -> String {
    let names: Vec<&str> = path.iter().map(|s| state_name(*s)).collect();
    names.join(" -> ")
}

impl Checker<'_> {
    /// The migration checks.
    pub(super) fn migration(&mut self) {
        let flags = match self.migration_feature() {
            Ok(flags) => flags,
            Err(why) => {
                for id in DESTRUCTIVE {
                    self.skip(id, why.clone());
                }
                return;
            }
        };
        if !self.options.destructive {
            for id in DESTRUCTIVE {
                self.skip(
                    id,
                    "changes the device's migration state; run with --destructive",
                );
            }
            return;
        }
        let result = self.walk(&[Running, Stop, Resuming, Stop, Running]);
        self.record_restoring(ARCS, result);
        if flags & u64::from(VFIO_MIGRATION_PRE_COPY) == 0 {
            self.skip(ARCS_PRE_COPY, "the device does not offer PRE_COPY");
        } else {
            let result = self.walk(&[Running, PreCopy, StopCopy, Stop, Running]);
            self.record_restoring(ARCS_PRE_COPY, result);
        }
        let result = self.illegal_arcs();
        self.record_restoring(ILLEGAL, result);
        let result = self.round_trip();
        self.record_restoring(ROUND_TRIP, result);
    }

    /// `migration.feature`: PROBE and GET of MIGRATION, GET of MIG_DEVICE_STATE, PROBE of
    /// DMA logging. The flags when the device migrates; otherwise (the check recorded as
    /// SKIP or FAIL) why the other migration checks are skipped.
    fn migration_feature(&mut self) -> Result<u64, String> {
        if let Some(why) = self.blocked() {
            self.skip(FEATURE, why.clone());
            return Err(why);
        }
        if self.caps.migration.is_none() {
            let why = "migration unsupported: the server did not offer the migration \
                       capability in VERSION";
            self.skip(FEATURE, why);
            return Err(why.into());
        }
        match self.discover() {
            Ok(Ok((flags, text))) => {
                self.record(FEATURE, Ok(text));
                Ok(flags)
            }
            Ok(Err(unsupported)) => {
                let why = format!("migration unsupported: {unsupported}");
                self.skip(FEATURE, why.clone());
                Err(why)
            }
            Err(e) => {
                self.record(FEATURE, Err(e));
                Err(format!("{FEATURE} failed"))
            }
        }
    }

    /// The feature check's work: `Ok(Ok((flags, summary)))` for a device that migrates,
    /// `Ok(Err(why))` for one that does not, `Err` for a protocol violation.
    #[allow(clippy::type_complexity)]
    fn discover(&mut self) -> Result<Result<(u64, String), String>, String> {
        match self.probe_migration() {
            Answer::Reply(_) => {}
            Answer::Refused(errno) => {
                let why = format!(
                    "the server refused DEVICE_FEATURE PROBE of MIGRATION: {}",
                    errno_text(errno)
                );
                return self
                    .after_refused_probe()
                    .map(|note| Err(format!("{why}{note}")));
            }
            Answer::Broken(e) => return Err(format!("PROBE of MIGRATION: {e}")),
        }
        let reply = match self.feature(
            VFIO_DEVICE_FEATURE_MIGRATION,
            VFIO_DEVICE_FEATURE_GET,
            Vec::new(),
            8,
        ) {
            Answer::Reply(r) => r,
            Answer::Refused(errno) => {
                return Err(format!(
                    "GET of MIGRATION refused ({}) after its PROBE was accepted",
                    errno_text(errno)
                ))
            }
            Answer::Broken(e) => return Err(format!("GET of MIGRATION: {e}")),
        };
        let flags = MigrationFeature::decode(&reply.data)
            .map_err(|e| format!("GET of MIGRATION: {e}"))?
            .flags;
        if flags & u64::from(VFIO_MIGRATION_STOP_COPY) == 0 {
            return Err(format!(
                "the migration flags {flags:#x} lack STOP_COPY, which migration v2 requires"
            ));
        }
        let state = self.get_state()?;
        let logging = self.logging_offered()?;
        Ok(Ok((
            flags,
            format!(
                "MIGRATION: {} (flags {flags:#x}); device state {}; DMA dirty logging {logging}",
                flags_text(flags),
                raw_state_name(state)
            ),
        )))
    }

    /// PROBE of MIGRATION as the client library sends it: 16 bytes of payload whose first
    /// half, read as a header, is a command 0 with message id [`PROBE_ARGSZ`], which none of
    /// ours uses. A server that does not know DEVICE_FEATURE and answers it without reading
    /// the body (the crates.io `vfio_user` server) answers that "command" too, and stays in
    /// step; [`after_refused_probe`](Self::after_refused_probe) takes that reply out.
    fn probe_migration(&mut self) -> Answer {
        let feature = DeviceFeature {
            argsz: PROBE_ARGSZ,
            flags: VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_MIGRATION,
            data: vec![0; 8],
        };
        let mut payload = Vec::with_capacity(16);
        feature.encode_into(&mut payload);
        let ex = self.conn.request(Command::DeviceFeature, &payload, &[]);
        self.judge_feature(VFIO_DEVICE_FEATURE_MIGRATION, PROBE_ARGSZ, &ex)
    }

    /// After a refused PROBE of MIGRATION: a DEVICE_GET_INFO must be answered in step, with
    /// at most an error reply to the probe's body in front of it (said in the reason).
    fn after_refused_probe(&mut self) -> Result<String, String> {
        let ex = self.get_info();
        let (body, others): (Vec<_>, Vec<_>) = ex
            .others
            .iter()
            .partition(|m| m.header.id == PROBE_ARGSZ as u16 && m.is_error());
        if let Some(o) = others.first() {
            return Err(format!(
                "after the refused PROBE of MIGRATION, an unexpected message ({}) came before \
                 the reply to the next DEVICE_GET_INFO",
                o.describe()
            ));
        }
        judge_success(
            Command::DeviceGetInfo,
            &Exchange {
                id: ex.id,
                reply: ex.reply,
                others: Vec::new(),
            },
        )
        .map_err(|e| format!("after the refused PROBE of MIGRATION: {e}"))?;
        Ok(if body.is_empty() {
            String::new()
        } else {
            " (it answered the probe's body as a command of its own: it does not know \
             DEVICE_FEATURE and does not skip the body of such a command)"
                .into()
        })
    }

    /// PROBE of DMA_LOGGING_START (SET) and _REPORT (GET): `offered`, or `not offered` with
    /// the server's answer (not a failure).
    fn logging_offered(&mut self) -> Result<String, String> {
        for (feature, op) in [
            (
                VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
                VFIO_DEVICE_FEATURE_SET,
            ),
            (
                VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
                VFIO_DEVICE_FEATURE_GET,
            ),
        ] {
            let name = feature_name(feature);
            match self.feature(feature, VFIO_DEVICE_FEATURE_PROBE | op, Vec::new(), 0) {
                Answer::Reply(_) => {}
                Answer::Refused(errno) => {
                    return Ok(format!(
                        "not offered (PROBE of {name}: {})",
                        errno_text(errno)
                    ))
                }
                Answer::Broken(e) => return Err(format!("PROBE of {name}: {e}")),
            }
        }
        Ok("offered (PROBE of DMA_LOGGING_START and DMA_LOGGING_REPORT accepted)".into())
    }

    /// One DEVICE_FEATURE request, its answer judged: a success reply must name the feature
    /// and stay within `argsz`.
    fn feature(&mut self, feature: u32, op: u32, data: Vec<u8>, reply_data: usize) -> Answer {
        self.send_feature(DeviceFeature::new(feature, op, data, reply_data))
    }

    /// Sends `request`, its answer judged as by [`feature`](Self::feature).
    fn send_feature(&mut self, request: DeviceFeature) -> Answer {
        let mut payload = Vec::new();
        request.encode_into(&mut payload);
        let ex = self.conn.request(Command::DeviceFeature, &payload, &[]);
        self.judge_feature(request.feature(), request.argsz, &ex)
    }

    /// Judges the answer to a DEVICE_FEATURE request for `feature` that offered `argsz`.
    fn judge_feature(&self, feature: u32, argsz: u32, ex: &Exchange) -> Answer {
        if let Ok(m) = &ex.reply {
            if m.is_error() || m.header.error != 0 {
                return match judge_error_reply(Command::DeviceFeature as u16, ex) {
                    Ok(_) if ex.others.is_empty() => Answer::Refused(m.header.error),
                    Ok(_) => Answer::Broken(format!(
                        "an unexpected message ({}) came before the reply",
                        ex.others[0].describe()
                    )),
                    Err(e) => Answer::Broken(e),
                };
            }
        }
        let m = match judge_success(Command::DeviceFeature, ex) {
            Ok(m) => m,
            Err(e) => return Answer::Broken(e),
        };
        if m.payload.len() > argsz as usize {
            return Answer::Broken(format!(
                "the reply carries {} payload bytes, more than the argsz {argsz} offered",
                m.payload.len()
            ));
        }
        match DeviceFeature::decode(&m.payload) {
            Ok(r) if r.feature() == feature => Answer::Reply(r),
            Ok(r) => Answer::Broken(format!(
                "the reply names feature {} instead of {feature}",
                r.feature()
            )),
            Err(e) => Answer::Broken(format!("the reply: {e}")),
        }
    }

    /// GET MIG_DEVICE_STATE: the raw state.
    fn get_state(&mut self) -> Result<u32, String> {
        match self.feature(
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            VFIO_DEVICE_FEATURE_GET,
            Vec::new(),
            8,
        ) {
            Answer::Reply(r) => MigDeviceState::decode(&r.data)
                .map(|s| s.device_state)
                .map_err(|e| format!("GET of MIG_DEVICE_STATE: {e}")),
            Answer::Refused(errno) => Err(format!(
                "GET of MIG_DEVICE_STATE refused: {}",
                errno_text(errno)
            )),
            Answer::Broken(e) => Err(format!("GET of MIG_DEVICE_STATE: {e}")),
        }
    }

    /// SET MIG_DEVICE_STATE to the raw `state`.
    fn set_state(&mut self, state: u32) -> Answer {
        self.send_feature(DeviceFeature::set_mig_device_state(state))
    }

    /// One arc from `from` to `to`: the SET accepted, its reply echoing `to`, and the state
    /// read back `to`.
    fn arc(&mut self, from: DeviceState, to: DeviceState) -> Result<(), String> {
        let step = format!("{} -> {}", state_name(from), state_name(to));
        let echoed = match self.set_state(to as u32) {
            Answer::Reply(r) => MigDeviceState::decode(&r.data)
                .map(|s| s.device_state)
                .map_err(|e| format!("{step}: the SET reply: {e}"))?,
            Answer::Refused(errno) => {
                return Err(format!("{step}: refused: {}", errno_text(errno)));
            }
            Answer::Broken(e) => return Err(format!("{step}: {e}")),
        };
        if echoed != to as u32 {
            return Err(format!(
                "{step}: the SET reply names {}",
                raw_state_name(echoed)
            ));
        }
        let now = self.get_state().map_err(|e| format!("after {step}: {e}"))?;
        if now != to as u32 {
            return Err(format!(
                "after {step} was accepted, the device reports {}",
                raw_state_name(now)
            ));
        }
        Ok(())
    }

    /// Walks `path` one arc at a time, from the state the device must be in (`path[0]`).
    fn walk(&mut self, path: &[DeviceState]) -> Result<String, String> {
        self.expect_state(path[0])?;
        for pair in path.windows(2) {
            self.arc(pair[0], pair[1])?;
        }
        Ok(format!(
            "{}: each SET accepted, its reply and the state read back name the state set",
            path_text(path)
        ))
    }

    fn expect_state(&mut self, state: DeviceState) -> Result<(), String> {
        let now = self.get_state()?;
        if now != state as u32 {
            return Err(format!(
                "the device is in {}, not {}",
                raw_state_name(now),
                state_name(state)
            ));
        }
        Ok(())
    }

    /// `migration.illegal-arcs`: STOP_COPY → PRE_COPY, and a state the uAPI does not define,
    /// must be refused with `EINVAL` and leave the state as it was (or ERROR).
    fn illegal_arcs(&mut self) -> Result<String, String> {
        self.walk(&[Running, Stop, StopCopy])
            .map_err(|e| format!("reaching STOP_COPY: {e}"))?;
        let first = self.refused(StopCopy, PreCopy as u32)?;
        let back = self.back_to_running()?;
        let mut second = self.refused(Running, UNDEFINED_STATE)?;
        // A refusal may leave ERROR; that is allowed, and left here, as the first one was.
        if let Some(r) = self.back_to_running()? {
            second.push_str(&format!(" ({r})"));
        }
        let first = match back {
            Some(r) if r.contains("ERROR") => format!("{first} ({r})"),
            _ => first,
        };
        Ok(format!("{first}; {second}"))
    }

    /// SET of the raw `target` from `from` must be an `EINVAL` error reply, after which the
    /// device is still in `from` (or in ERROR).
    fn refused(&mut self, from: DeviceState, target: u32) -> Result<String, String> {
        let step = format!("{} -> {}", state_name(from), raw_state_name(target));
        match self.set_state(target) {
            Answer::Reply(_) => {
                return Err(format!("{step} was accepted; it must be refused (EINVAL)"))
            }
            Answer::Broken(e) => return Err(format!("{step}: {e}")),
            Answer::Refused(errno) if errno != libc::EINVAL as u32 => {
                return Err(format!(
                    "{step} refused with {}; the answer is EINVAL",
                    errno_text(errno)
                ))
            }
            Answer::Refused(_) => {}
        }
        let now = self
            .get_state()
            .map_err(|e| format!("after the refused {step}: {e}"))?;
        if now == from as u32 {
            Ok(format!(
                "{step} refused (EINVAL), the device still {}",
                state_name(from)
            ))
        } else if now == DeviceState::Error as u32 {
            Ok(format!("{step} refused (EINVAL), the device then in ERROR"))
        } else {
            Err(format!(
                "{step} refused, but the device is now in {}",
                raw_state_name(now)
            ))
        }
    }

    /// `migration.round-trip`: the STOP_COPY data read, written back in RESUMING, then
    /// RUNNING with the device still answering.
    fn round_trip(&mut self) -> Result<String, String> {
        let before = self.config_header();
        self.walk(&[Running, Stop, StopCopy])?;
        let (data, reads) = self.read_data()?;
        self.arc(StopCopy, Stop)?;
        self.arc(Stop, Resuming)?;
        let writes = self.write_data(&data)?;
        self.arc(Resuming, Stop)
            .map_err(|e| format!("loading the {} bytes read: {e}", data.len()))?;
        self.arc(Stop, Running)?;
        self.in_step()
            .map_err(|e| format!("back in RUNNING, DEVICE_GET_INFO: {e}"))?;
        let header = match (before, self.config_header()) {
            (Some(a), Some(b)) if a == b => ", config space header unchanged",
            (Some(_), Some(_)) => return Err("the config space header changed".into()),
            _ => "",
        };
        Ok(format!(
            "{} bytes of STOP_COPY data in {reads} MIG_DATA_READ{}, written back in RESUMING \
             in {writes} MIG_DATA_WRITE{} and loaded; RUNNING again, the device answers{header}",
            data.len(),
            plural(reads),
            plural(writes)
        ))
    }

    /// The 64-byte config space header of a PCI device, if it reads.
    fn config_header(&mut self) -> Option<Vec<u8>> {
        if !self.is_pci() {
            return None;
        }
        self.read(VFIO_PCI_CONFIG_REGION_INDEX, 0, 64).1.ok()
    }

    /// MIG_DATA_READs until a reply of 0 bytes: the data and the number of reads.
    fn read_data(&mut self) -> Result<(Vec<u8>, usize), String> {
        let chunk = self.caps.max_data_xfer_size.clamp(1, MAX_READ);
        let mut data = Vec::new();
        let mut reads = 0;
        loop {
            reads += 1;
            let mut payload = Vec::new();
            MigData {
                argsz: chunk.saturating_add(MigData::HEAD_SIZE as u32),
                size: chunk,
            }
            .encode_into(&mut payload);
            let ex = self.conn.request(Command::MigDataRead, &payload, &[]);
            let m = judge_success(Command::MigDataRead, &ex)
                .map_err(|e| format!("after {} bytes: {e}", data.len()))?;
            let (head, bytes) = MigData::decode_with_data_prefix(&m.payload)
                .map_err(|e| format!("a MIG_DATA_READ reply: {e}"))?;
            if head.size > chunk {
                return Err(format!(
                    "MIG_DATA_READ returned {} bytes; {chunk} were asked for",
                    head.size
                ));
            }
            if head.size == 0 {
                return Ok((data, reads));
            }
            if data.len() + bytes.len() > MAX_DATA {
                return Err(format!(
                    "STOP_COPY data does not end within {} MiB",
                    MAX_DATA >> 20
                ));
            }
            data.extend_from_slice(bytes);
        }
    }

    /// MIG_DATA_WRITEs of `data` in chunks the server takes: the number of writes.
    fn write_data(&mut self, data: &[u8]) -> Result<usize, String> {
        let chunk = (self.caps.max_data_xfer_size as usize).clamp(1, MAX_READ as usize);
        let mut writes = 0;
        for part in data.chunks(chunk) {
            let size = part.len() as u32;
            let mut payload = Vec::new();
            MigData {
                argsz: size + MigData::HEAD_SIZE as u32,
                size,
            }
            .encode_with_data(part, &mut payload);
            let ex = self.conn.request(Command::MigDataWrite, &payload, &[]);
            let m = judge_success(Command::MigDataWrite, &ex)
                .map_err(|e| format!("writing at {}: {e}", writes * chunk))?;
            // The 0.9.2 reply is header only; the later spec's carries argsz and size.
            if !m.payload.is_empty() {
                match MigData::decode(&m.payload) {
                    Ok(h) if h.size == size => {}
                    Ok(h) => {
                        return Err(format!(
                            "a MIG_DATA_WRITE of {size} bytes was answered as {} written",
                            h.size
                        ))
                    }
                    Err(e) => return Err(format!("a MIG_DATA_WRITE reply: {e}")),
                }
            }
            writes += 1;
        }
        Ok(writes)
    }

    /// Takes the device back to RUNNING from wherever it is: arcs back through STOP, or
    /// DEVICE_RESET out of ERROR. `Some(what was done)`, `None` when it was RUNNING.
    fn back_to_running(&mut self) -> Result<Option<String>, String> {
        let now = self.get_state()?;
        let path: &[DeviceState] = match DeviceState::from_u32(now) {
            Some(Running) => return Ok(None),
            Some(DeviceState::Error) => return self.reset_out_of_error().map(Some),
            Some(StopCopy) => &[StopCopy, Stop, Running],
            Some(Resuming) => &[Resuming, Stop, Running],
            Some(Stop) => &[Stop, Running],
            Some(PreCopy) => &[PreCopy, Running],
            _ => {
                return Err(format!(
                    "the device is in {}; nothing leads back",
                    raw_state_name(now)
                ))
            }
        };
        match self.walk(path) {
            Ok(_) => Ok(Some(format!("taken back {}", path_text(path)))),
            Err(e) if self.get_state() == Ok(DeviceState::Error as u32) => {
                self.reset_out_of_error().map(|r| Some(format!("{e}; {r}")))
            }
            Err(e) => Err(e),
        }
    }

    fn reset_out_of_error(&mut self) -> Result<String, String> {
        let resettable = self
            .found
            .info
            .is_some_and(|i| i.flags & VFIO_DEVICE_FLAGS_RESET != 0);
        if !resettable {
            return Err("the device is in ERROR and does not advertise RESET".into());
        }
        let ex = self.conn.request(Command::DeviceReset, &[], &[]);
        judge_success(Command::DeviceReset, &ex).map_err(|e| format!("leaving ERROR: {e}"))?;
        self.expect_state(Running)
            .map_err(|e| format!("after DEVICE_RESET out of ERROR, {e}"))?;
        Ok("reset out of ERROR to RUNNING".into())
    }

    /// Records `result`, then makes sure the device is RUNNING again; what that took is
    /// added to a failure's reason, and a device that cannot be brought back fails the
    /// check.
    fn record_restoring(&mut self, id: &str, result: Result<String, String>) {
        if self.conn.broken().is_some() {
            return self.record(id, result);
        }
        let result = match (result, self.back_to_running()) {
            (Ok(s), Ok(None)) => Ok(s),
            (Ok(s), Ok(Some(r))) => {
                Err(format!("{s}; but the device was left out of RUNNING ({r})"))
            }
            (Err(e), Ok(None)) => Err(e),
            (Err(e), Ok(Some(r))) => Err(format!("{e} (then {r})")),
            (Ok(_), Err(r)) => Err(format!("the device cannot be taken back to RUNNING: {r}")),
            (Err(e), Err(r)) => Err(format!(
                "{e}; the device cannot be taken back to RUNNING: {r}"
            )),
        };
        self.record(id, result);
    }
}
