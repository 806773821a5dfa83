// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Migration v2 and DMA dirty logging: DEVICE_FEATURE, MIG_DATA_READ and MIG_DATA_WRITE.
//!
//! The state machine is the Linux VFIO v2 one without the P2P states: a SET walks the
//! kernel's `vfio_mig_get_next_state` path one arc at a time (never through a saving state
//! on the way), STOP_COPY → PRE_COPY and any move out of ERROR are `EINVAL`, and a failed arc
//! leaves the device in ERROR until DEVICE_RESET. Where the spec is silent the replies are
//! shaped as libvfio-user shapes them (see [`MigrationConfig`]).

use std::collections::BTreeSet;
use std::sync::Mutex;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MASK,
    VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_PROBE,
    VFIO_DEVICE_FEATURE_SET, VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY,
};
use vfio_user_client::protocol::{
    Command, DeviceFeature, DeviceState, DmaLoggingReport, DmaLoggingStart, MigData,
    MigDeviceState, MigrationFeature,
};

use crate::config::MigrationConfig;
use crate::conn::lock;
use crate::device::Errno;
use crate::server::Shared;

const HEAD: usize = DeviceFeature::HEAD_SIZE;
const OPS: u32 = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE;

/// Where a device is in its migration, and the data on the move.
#[derive(Debug)]
pub(crate) struct MigrationState {
    state: DeviceState,
    /// Data for MIG_DATA_READ (PRE_COPY, STOP_COPY), unread from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Data written in RESUMING.
    incoming: Vec<u8>,
}

impl Default for MigrationState {
    fn default() -> Self {
        MigrationState {
            state: DeviceState::Running,
            out: Vec::new(),
            out_pos: 0,
            incoming: Vec::new(),
        }
    }
}

impl MigrationState {
    /// The current state.
    pub(crate) fn state(&self) -> DeviceState {
        self.state
    }
}

/// The pages the device wrote while DMA logging is on.
#[derive(Debug)]
pub(crate) struct DirtyLog {
    page_size: u64,
    /// Page numbers: guest address / `page_size`.
    pages: BTreeSet<u64>,
}

/// Marks `address..address + len` dirty when logging is on.
pub(crate) fn log_write(dirty: &Mutex<Option<DirtyLog>>, address: u64, len: usize) {
    let mut dirty = lock(dirty);
    let Some(log) = dirty.as_mut() else { return };
    if len == 0 {
        return;
    }
    let last = address.saturating_add(len as u64 - 1);
    for page in address / log.page_size..=last / log.page_size {
        log.pages.insert(page);
    }
}

/// The next state on the way from `from` to `to` (`from` itself when equal), as the
/// kernel's `vfio_mig_get_next_state` picks it for a device without P2P; `None` when `to`
/// cannot be reached.
pub(crate) fn next_state(from: DeviceState, to: DeviceState) -> Option<DeviceState> {
    use DeviceState::*;
    let reachable = [Stop, Running, StopCopy, Resuming, PreCopy];
    if !reachable.contains(&from) || !reachable.contains(&to) {
        return None;
    }
    Some(match (from, to) {
        _ if from == to => from,
        (Stop, Running | PreCopy) => Running,
        (Stop, other) => other,
        (Running, PreCopy) => PreCopy,
        (Running, _) => Stop,
        (PreCopy, StopCopy) => StopCopy,
        (PreCopy, _) => Running,
        (StopCopy, PreCopy) => return None,
        (StopCopy, _) | (Resuming, _) => Stop,
        _ => return None,
    })
}

/// Whether a device in `state` runs.
fn running(state: DeviceState) -> bool {
    matches!(state, DeviceState::Running | DeviceState::PreCopy)
}

/// Whether the device runs (always, without migration).
pub(crate) fn device_running(shared: &Shared) -> bool {
    shared.migration_config().is_none() || running(lock(&shared.migration).state)
}

/// libvfio-user's rule: in STOP and STOP_COPY only region access, DEVICE_FEATURE and
/// MIG_DATA_READ are served.
pub(crate) fn command_allowed(shared: &Shared, command: Option<Command>) -> bool {
    let Some(config) = shared.migration_config() else {
        return true;
    };
    if !config.restrict_stopped {
        return true;
    }
    match lock(&shared.migration).state {
        DeviceState::Stop | DeviceState::StopCopy => matches!(
            command,
            Some(
                Command::RegionRead
                    | Command::RegionWrite
                    | Command::DeviceFeature
                    | Command::MigDataRead
            )
        ),
        _ => true,
    }
}

/// DEVICE_RESET (or a new client): back to RUNNING, the data on the move dropped; with
/// `stop_logging` (the client left) DMA logging ends too.
pub(crate) fn reset(shared: &Shared, stop_logging: bool) {
    if shared.migration_config().is_none() {
        return;
    }
    *lock(&shared.migration) = MigrationState::default();
    if stop_logging {
        *lock(&shared.dirty) = None;
    }
    lock(&shared.device).set_running(true);
}

/// DEVICE_FEATURE.
pub(crate) fn device_feature(shared: &Shared, body: &[u8]) -> Result<Vec<u8>, Errno> {
    let config = shared.migration_config().ok_or(Errno::INVAL)?;
    let request = DeviceFeature::decode(body)?;
    let op = request.flags & !VFIO_DEVICE_FEATURE_MASK;
    let get = op & VFIO_DEVICE_FEATURE_GET != 0;
    let set = op & VFIO_DEVICE_FEATURE_SET != 0;
    let probe = op & VFIO_DEVICE_FEATURE_PROBE != 0;
    if op & !OPS != 0 || (!probe && get == set) {
        return Err(Errno::INVAL);
    }
    let feature = request.feature();
    let supported = match feature {
        VFIO_DEVICE_FEATURE_MIGRATION => VFIO_DEVICE_FEATURE_GET,
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
            if config.dma_logging =>
        {
            VFIO_DEVICE_FEATURE_SET
        }
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT if config.dma_logging => VFIO_DEVICE_FEATURE_GET,
        _ => return Err(Errno::INVAL),
    };
    if op & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET) & !supported != 0 {
        return Err(Errno::INVAL);
    }
    if probe {
        return Ok(body.to_vec());
    }
    let argsz = request.argsz as usize;
    match feature {
        VFIO_DEVICE_FEATURE_MIGRATION => {
            let mut flags = u64::from(VFIO_MIGRATION_STOP_COPY);
            if config.pre_copy {
                flags |= u64::from(VFIO_MIGRATION_PRE_COPY);
            }
            let mut data = Vec::with_capacity(8);
            MigrationFeature { flags }.encode_into(&mut data);
            get_reply(&request, argsz, &data)
        }
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE if get => {
            let mut data = Vec::with_capacity(8);
            MigDeviceState {
                device_state: lock(&shared.migration).state as u32,
                data_fd: u32::MAX,
            }
            .encode_into(&mut data);
            get_reply(&request, argsz, &data)
        }
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
            if argsz < HEAD + 8 {
                return Err(Errno::INVAL);
            }
            let target = MigDeviceState::decode(&request.data)?;
            set_state(shared, config, target.device_state)?;
            Ok(body.to_vec())
        }
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START => {
            logging_start(shared, config, argsz, &request.data)?;
            Ok(body.to_vec())
        }
        VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP => {
            *lock(&shared.dirty) = None;
            Ok(body.to_vec())
        }
        _ => logging_report(shared, config, &request, argsz),
    }
}

/// A GET reply: the head with `argsz` grown to cover `data`, then `data`; `EINVAL` when
/// the request's `argsz` cannot hold it.
fn get_reply(request: &DeviceFeature, argsz: usize, data: &[u8]) -> Result<Vec<u8>, Errno> {
    let size = HEAD + data.len();
    if argsz < size {
        return Err(Errno::INVAL);
    }
    let mut payload = Vec::with_capacity(size);
    DeviceFeature {
        argsz: u32::try_from(size).map_err(|_| Errno::INVAL)?,
        flags: request.flags,
        data: data.to_vec(),
    }
    .encode_into(&mut payload);
    Ok(payload)
}

/// SET of MIG_DEVICE_STATE: walks to `target` one arc at a time.
fn set_state(shared: &Shared, config: &MigrationConfig, target: u32) -> Result<(), Errno> {
    let target = DeviceState::from_u32(target).ok_or(Errno::INVAL)?;
    if target == DeviceState::PreCopy && !config.pre_copy {
        return Err(Errno::INVAL);
    }
    let mut mig = lock(&shared.migration);
    // Refused before anything moves: an unreachable target changes nothing.
    next_state(mig.state, target).ok_or(Errno::INVAL)?;
    while mig.state != target {
        let next = next_state(mig.state, target).ok_or(Errno::INVAL)?;
        if let Err(e) = arc(shared, &mut mig, next) {
            log::debug!("migration arc {:?} -> {next:?} failed: {e:?}", mig.state);
            *mig = MigrationState {
                state: DeviceState::Error,
                ..MigrationState::default()
            };
            lock(&shared.device).set_running(false);
            return Err(e);
        }
        mig.state = next;
    }
    Ok(())
}

/// Does what the arc from the current state to `next` means for the device and the data.
fn arc(shared: &Shared, mig: &mut MigrationState, next: DeviceState) -> Result<(), Errno> {
    use DeviceState::*;
    let mut device = lock(&shared.device);
    match (mig.state, next) {
        (Running, Stop) => device.set_running(false),
        (Stop, Running) => device.set_running(true),
        (Stop, StopCopy) => {
            mig.out = device.save_state()?;
            mig.out_pos = 0;
        }
        (PreCopy, StopCopy) => {
            device.set_running(false);
            // Unread pre-copy data stays ahead of the state, so the stream stays whole.
            let mut out = mig.out.split_off(mig.out_pos);
            out.extend_from_slice(&device.save_state()?);
            mig.out = out;
            mig.out_pos = 0;
        }
        (Running, PreCopy) => {
            mig.out = device.save_precopy()?;
            mig.out_pos = 0;
        }
        (StopCopy, Stop) | (PreCopy, Running) => {
            mig.out = Vec::new();
            mig.out_pos = 0;
        }
        (Stop, Resuming) => mig.incoming = Vec::new(),
        (Resuming, Stop) => {
            // Nothing written, nothing to load: the device stays as it was.
            let data = std::mem::take(&mut mig.incoming);
            if !data.is_empty() {
                device.load_state(&data)?;
            }
        }
        _ => return Err(Errno::INVAL),
    }
    Ok(())
}

fn logging_start(
    shared: &Shared,
    config: &MigrationConfig,
    argsz: usize,
    data: &[u8],
) -> Result<(), Errno> {
    let start = DmaLoggingStart::decode(data)?;
    if argsz < HEAD + 16 + 16 * start.ranges.len()
        || start.page_size == 0
        || start.page_size != config.pgsize
    {
        return Err(Errno::INVAL);
    }
    // Every range is checked; like libvfio-user, the device then logs all its writes.
    if start
        .ranges
        .iter()
        .any(|r| r.length == 0 || r.iova.checked_add(r.length).is_none())
    {
        return Err(Errno::INVAL);
    }
    let mut dirty = lock(&shared.dirty);
    match dirty.as_ref() {
        Some(log) if log.page_size == start.page_size => {}
        Some(_) => return Err(Errno::INVAL),
        None => {
            *dirty = Some(DirtyLog {
                page_size: start.page_size,
                pages: BTreeSet::new(),
            })
        }
    }
    Ok(())
}

/// Bytes of the bitmap for `length` bytes at `page_size`: one bit a page, in whole u64
/// words.
pub(crate) fn bitmap_bytes(length: u64, page_size: u64) -> u64 {
    length.div_ceil(page_size).div_ceil(64) * 8
}

fn logging_report(
    shared: &Shared,
    config: &MigrationConfig,
    request: &DeviceFeature,
    argsz: usize,
) -> Result<Vec<u8>, Errno> {
    let report = DmaLoggingReport::decode(&request.data)?;
    let page = report.page_size;
    if page == 0
        || page != config.pgsize
        || report.length == 0
        || report.iova % page != 0
        || report.iova.checked_add(report.length).is_none()
    {
        return Err(Errno::INVAL);
    }
    let size = bitmap_bytes(report.length, page);
    if size > config.max_bitmap_size
        || (argsz as u64) < (HEAD + DmaLoggingReport::HEAD_SIZE) as u64 + size
    {
        return Err(Errno::INVAL);
    }
    let mut words = vec![0u64; usize::try_from(size / 8).map_err(|_| Errno::INVAL)?];
    {
        let mut dirty = lock(&shared.dirty);
        let log = dirty
            .as_mut()
            .filter(|l| l.page_size == page)
            .ok_or(Errno::INVAL)?;
        let first = report.iova / page;
        let end = first + report.length.div_ceil(page);
        let hits: Vec<u64> = log.pages.range(first..end).copied().collect();
        for p in hits {
            log.pages.remove(&p);
            let bit = p - first;
            words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }
    let mut data = Vec::with_capacity(DmaLoggingReport::HEAD_SIZE + words.len() * 8);
    DmaLoggingReport {
        bitmap: Vec::new(),
        ..report
    }
    .encode_into(&mut data);
    for w in words {
        data.extend_from_slice(&w.to_ne_bytes());
    }
    get_reply(request, argsz, &data)
}

/// MIG_DATA_READ: up to `size` bytes of the data on the move, in PRE_COPY and STOP_COPY.
pub(crate) fn data_read(
    shared: &Shared,
    body: &[u8],
    client_max_xfer: u64,
) -> Result<Vec<u8>, Errno> {
    let config = shared.migration_config().ok_or(Errno::INVAL)?;
    if body.len() != MigData::HEAD_SIZE {
        return Err(Errno::INVAL);
    }
    let head = MigData::decode(body)?;
    let size = u64::from(head.size);
    if u64::from(head.argsz) < MigData::HEAD_SIZE as u64 + size || size > client_max_xfer {
        return Err(Errno::INVAL);
    }
    let mut mig = lock(&shared.migration);
    if !matches!(mig.state, DeviceState::PreCopy | DeviceState::StopCopy) {
        return Err(Errno::INVAL);
    }
    let start = mig.out_pos;
    let n = (mig.out.len() - start).min(head.size as usize);
    mig.out_pos += n;
    let data = &mig.out[start..start + n];
    let reply_len = MigData::HEAD_SIZE
        + if config.pad_data_reads {
            head.size as usize
        } else {
            n
        };
    let mut payload = Vec::with_capacity(reply_len);
    MigData {
        argsz: (MigData::HEAD_SIZE + n) as u32,
        size: n as u32,
    }
    .encode_with_data(data, &mut payload);
    payload.resize(reply_len, 0);
    Ok(payload)
}

/// MIG_DATA_WRITE: takes all the data, in RESUMING; the reply is header-only, as
/// libvfio-user's.
pub(crate) fn data_write(shared: &Shared, body: &[u8]) -> Result<Vec<u8>, Errno> {
    shared.migration_config().ok_or(Errno::INVAL)?;
    let (head, data) = MigData::decode_with_data(body)?;
    let size = u64::from(head.size);
    if u64::from(head.argsz) < MigData::HEAD_SIZE as u64 + size
        || size > shared.config.recv_max_data()
    {
        return Err(Errno::INVAL);
    }
    let mut mig = lock(&shared.migration);
    if mig.state != DeviceState::Resuming {
        return Err(Errno::INVAL);
    }
    let limit = lock(&shared.device).migration_data_limit();
    if (mig.incoming.len() as u64).saturating_add(size) > limit {
        return Err(Errno::INVAL);
    }
    mig.incoming.extend_from_slice(data);
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;

    #[test]
    fn paths_follow_the_kernel() {
        let path = |mut from: DeviceState, to| {
            let mut p = vec![from];
            while from != to {
                from = next_state(from, to).unwrap();
                p.push(from);
            }
            p
        };
        assert_eq!(path(Running, StopCopy), [Running, Stop, StopCopy]);
        assert_eq!(path(PreCopy, Stop), [PreCopy, Running, Stop]);
        assert_eq!(path(Resuming, PreCopy), [Resuming, Stop, Running, PreCopy]);
        assert_eq!(path(StopCopy, Running), [StopCopy, Stop, Running]);
        assert_eq!(next_state(StopCopy, PreCopy), None);
        assert_eq!(next_state(Error, Running), None);
        assert_eq!(next_state(Running, Error), None);
        assert_eq!(next_state(Running, RunningP2p), None);
    }

    #[test]
    fn bitmap_sizes() {
        assert_eq!(bitmap_bytes(4096, 4096), 8);
        assert_eq!(bitmap_bytes(64 * 4096, 4096), 8);
        assert_eq!(bitmap_bytes(64 * 4096 + 1, 4096), 16);
        assert_eq!(bitmap_bytes(64 << 30, 4096), 2 << 20);
    }
}
