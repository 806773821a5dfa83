// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The probe's scripted peers, which break one rule at a time: the sample GPIO server
//! behind the shared relay
//! ([`serve_in_step`](vfio_user_sample_server::test_support::relay::serve_in_step)), told
//! which requests to refuse, drop or swallow and which replies to edit. Each peer is a plain
//! function, for
//! [`ScriptedServer::start`](vfio_user_sample_server::test_support::peers::ScriptedServer),
//! and serves one connection with a sample server of its own. The relay itself lives in
//! `test_support::relay`; only what the probe's tests aim at stays here.

// Each test file uses some of the peers.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;

use vfio_user_client::protocol::{Command, DeviceState, Header};
use vfio_user_sample_server::test_support::relay::{serve_in_step, Step};
use vfio_user_sample_server::wire::RawMsg;
use vfio_user_sample_server::{GpioDevice, MigrationConfig, Server, ServerConfig};

/// `EINVAL` as the protocol carries it.
pub const EINVAL: u32 = libc::EINVAL as u32;
/// `EIO` as the protocol carries it.
pub const EIO: u32 = libc::EIO as u32;
/// The DMA windows libvfio-user holds at most, without advertising it.
pub const LIBVFIO_USER_DMA_REGIONS: u32 = 64;
/// PCI config space.
const CONFIG: u32 = 7;
/// MSI-X.
const MSIX: u32 = 2;

/// Serves `client` with a sample GPIO server of its own behind the shared in-step relay
/// (see [`serve_in_step`]).
pub fn relay(
    client: UnixStream,
    on_request: impl FnMut(&RawMsg) -> Step,
    on_reply: impl FnMut(&RawMsg, &mut RawMsg),
) {
    relay_with(ServerConfig::default(), client, on_request, on_reply);
}

/// [`relay`] in front of a sample server configured by `config`.
pub fn relay_with(
    config: ServerConfig,
    client: UnixStream,
    on_request: impl FnMut(&RawMsg) -> Step,
    on_reply: impl FnMut(&RawMsg, &mut RawMsg),
) {
    let (device, _) = GpioDevice::new(Default::default()).expect("GPIO device");
    let server = Server::new(config, Box::new(device));
    serve_in_step(server, client, on_request, on_reply);
}

fn is(m: &RawMsg, command: Command) -> bool {
    m.header.command == command as u16
}

/// The region and count of a REGION_READ or REGION_WRITE request.
fn access(m: &RawMsg) -> Option<(u32, u32)> {
    if !(is(m, Command::RegionRead) || is(m, Command::RegionWrite)) {
        return None;
    }
    let word = |at: usize| {
        m.payload
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    };
    Some((word(8)?, word(12)?))
}

fn is_config_read(m: &RawMsg) -> bool {
    is(m, Command::RegionRead) && access(m).is_some_and(|(region, _)| region == CONFIG)
}

/// Applies `edit` to the payload of every successful config space read reply.
fn edit_config_reads(s: UnixStream, edit: fn(&mut Vec<u8>)) {
    relay(
        s,
        |_| Step::Forward,
        |request, reply| {
            if is_config_read(request) && !reply.is_error() {
                edit(&mut reply.payload);
            }
        },
    );
}

/// Config space read replies lack their last two data bytes.
pub fn short_config_reads(s: UnixStream) {
    edit_config_reads(s, |p| p.truncate(p.len().saturating_sub(2)));
}

/// Config space read replies carry four bytes more than asked for.
pub fn long_config_reads(s: UnixStream) {
    edit_config_reads(s, |p| p.extend_from_slice(&[0; 4]));
}

/// Config space read replies echo an offset four bytes further on.
pub fn config_reads_echo_another_offset(s: UnixStream) {
    edit_config_reads(s, |p| {
        let offset = u64::from_ne_bytes(p[..8].try_into().expect("8 bytes")) + 4;
        p[..8].copy_from_slice(&offset.to_ne_bytes());
    });
}

/// Config space reads are refused with `EIO`.
pub fn config_reads_refused(s: UnixStream) {
    relay(
        s,
        |m| {
            if is_config_read(m) {
                Step::Refuse(EIO)
            } else {
                Step::Forward
            }
        },
        |_, _| {},
    );
}

/// IRQ_INFO says MSI-X has 4096 vectors (PCI allows 2048).
pub fn too_many_msix_vectors(s: UnixStream) {
    relay(
        s,
        |_| Step::Forward,
        |request, reply| {
            let index = request.payload.get(8..12);
            if is(request, Command::DeviceGetIrqInfo)
                && !reply.is_error()
                && index == Some(&MSIX.to_ne_bytes()[..])
            {
                reply.payload[12..16].copy_from_slice(&4096u32.to_ne_bytes());
            }
        },
    );
}

/// BAR accesses of other than 4 or 8 bytes are refused with `EINVAL`, as SPDK's NVMe
/// target does on BAR0.
pub fn dword_only_bars(s: UnixStream) {
    relay(
        s,
        |m| match access(m) {
            Some((region, count)) if region <= 5 && count != 4 && count != 8 => {
                Step::Refuse(EINVAL)
            }
            _ => Step::Forward,
        },
        |_, _| {},
    );
}

/// DMA_MAP beyond 64 windows held is refused with `EINVAL`, as libvfio-user does without
/// advertising `max_dma_maps`.
pub fn dma_regions_capped_at_64(s: UnixStream) {
    let mut held = 0u32;
    relay(
        s,
        |m| {
            if is(m, Command::DmaMap) {
                if held == LIBVFIO_USER_DMA_REGIONS {
                    return Step::Refuse(EINVAL);
                }
                held += 1;
            } else if is(m, Command::DmaUnmap) {
                held = held.saturating_sub(1);
            }
            Step::Forward
        },
        |_, _| {},
    );
}

/// The server dies at the first REGION_WRITE larger than 8 bytes.
pub fn dies_during_large_writes(s: UnixStream) {
    relay(
        s,
        |m| match access(m) {
            Some((_, count)) if is(m, Command::RegionWrite) && count > 8 => Step::HangUp,
            _ => Step::Forward,
        },
        |_, _| {},
    );
}

/// The server dies at the first DMA_MAP.
pub fn dies_at_the_first_dma_map(s: UnixStream) {
    relay(
        s,
        |m| {
            if is(m, Command::DmaMap) {
                Step::HangUp
            } else {
                Step::Forward
            }
        },
        |_, _| {},
    );
}

/// Refuses every `command` whose payload holds `index` at byte 8 (REGION_INFO and
/// IRQ_INFO requests) with `EINVAL`.
fn refuse_index(s: UnixStream, command: Command, index: u32) {
    relay(
        s,
        |m| {
            if is(m, command) && m.payload.get(8..12) == Some(&index.to_ne_bytes()[..]) {
                Step::Refuse(EINVAL)
            } else {
                Step::Forward
            }
        },
        |_, _| {},
    );
}

/// REGION_INFO of region 3 is refused: the client library refuses the device.
pub fn region_3_info_refused(s: UnixStream) {
    refuse_index(s, Command::DeviceGetRegionInfo, 3);
}

/// DEVICE_GET_INFO is refused.
pub fn device_info_refused(s: UnixStream) {
    relay(
        s,
        |m| {
            if is(m, Command::DeviceGetInfo) {
                Step::Refuse(EINVAL)
            } else {
                Step::Forward
            }
        },
        |_, _| {},
    );
}

/// The server dies at the first config space read.
pub fn dies_at_the_first_config_read(s: UnixStream) {
    relay(
        s,
        |m| {
            if is_config_read(m) {
                Step::HangUp
            } else {
                Step::Forward
            }
        },
        |_, _| {},
    );
}

/// BAR reads of more than 8 bytes are refused with `EINVAL`; writes of any size pass.
pub fn large_bar_reads_refused(s: UnixStream) {
    relay(
        s,
        |m| match access(m) {
            Some((region, count)) if is(m, Command::RegionRead) && region <= 5 && count > 8 => {
                Step::Refuse(EINVAL)
            }
            _ => Step::Forward,
        },
        |_, _| {},
    );
}

/// DEVICE_GET_REGION_IO_FDS replies for region 0 name region 5.
pub fn io_fds_for_another_region(s: UnixStream) {
    relay(
        s,
        |_| Step::Forward,
        |request, reply| {
            if is(request, Command::DeviceGetRegionIoFds)
                && !reply.is_error()
                && request.payload.get(8..12) == Some(&0u32.to_ne_bytes()[..])
            {
                reply.payload[8..12].copy_from_slice(&5u32.to_ne_bytes());
            }
        },
    );
}

/// The server stops answering at the first DMA_MAP (it reads, and never replies).
pub fn hangs_at_the_first_dma_map(s: UnixStream) {
    relay(
        s,
        |m| {
            if is(m, Command::DmaMap) {
                Step::Swallow
            } else {
                Step::Forward
            }
        },
        |_, _| {},
    );
}

/// DEVICE_FEATURE feature indexes (`VFIO_DEVICE_FEATURE_*`).
pub const FEATURE_MIG_DEVICE_STATE: u32 = 2;
/// DMA_LOGGING_START.
pub const FEATURE_DMA_LOGGING_START: u32 = 6;
/// GET, SET and PROBE bits of DEVICE_FEATURE.
const FEATURE_GET: u32 = 1 << 16;
const FEATURE_SET: u32 = 1 << 17;

/// The feature index and operation bits of a DEVICE_FEATURE request.
fn feature_of(m: &RawMsg) -> Option<(u32, u32)> {
    if !is(m, Command::DeviceFeature) {
        return None;
    }
    let flags = u32::from_ne_bytes(m.payload.get(4..8)?.try_into().ok()?);
    Some((flags & 0xffff, flags & !0xffff))
}

/// The state a SET of MIG_DEVICE_STATE asks for.
fn state_set(m: &RawMsg) -> Option<u32> {
    match feature_of(m)? {
        (FEATURE_MIG_DEVICE_STATE, FEATURE_SET) => {
            Some(u32::from_ne_bytes(m.payload.get(8..12)?.try_into().ok()?))
        }
        _ => None,
    }
}

/// The sample server with migration, behind the relay with these hooks.
fn migration_relay(
    s: UnixStream,
    on_request: impl FnMut(&RawMsg) -> Step,
    on_reply: impl FnMut(&RawMsg, &mut RawMsg),
) {
    let config = ServerConfig {
        migration: Some(MigrationConfig::default()),
        ..ServerConfig::default()
    };
    relay_with(config, s, on_request, on_reply);
}

/// The sample server with migration, nothing changed.
pub fn migrating_server(s: UnixStream) {
    migration_relay(s, |_| Step::Forward, |_, _| {});
}

/// GET MIG_DEVICE_STATE replies stop after the 8-byte head: no state in them.
pub fn state_replies_without_a_state(s: UnixStream) {
    migration_relay(
        s,
        |_| Step::Forward,
        |request, reply| {
            if feature_of(request) == Some((FEATURE_MIG_DEVICE_STATE, FEATURE_GET))
                && !reply.is_error()
            {
                reply.payload.truncate(8);
            }
        },
    );
}

/// The reply to SET MIG_DEVICE_STATE RESUMING names STOP_COPY (the device did move to
/// RESUMING).
pub fn resuming_echoed_as_stop_copy(s: UnixStream) {
    migration_relay(
        s,
        |_| Step::Forward,
        |request, reply| {
            if state_set(request) == Some(DeviceState::Resuming as u32) && !reply.is_error() {
                reply.payload[8..12].copy_from_slice(&(DeviceState::StopCopy as u32).to_ne_bytes());
            }
        },
    );
}

/// The refusal of STOP_COPY → PRE_COPY is turned into a success reply echoing the request
/// (the device stays in STOP_COPY).
pub fn illegal_arc_accepted(s: UnixStream) {
    migration_relay(
        s,
        |_| Step::Forward,
        |request, reply| {
            if state_set(request) == Some(DeviceState::PreCopy as u32) && reply.is_error() {
                reply.header.flags &= !Header::FLAG_ERROR;
                reply.header.error = 0;
                reply.payload = request.payload.clone();
            }
        },
    );
}

/// The PROBE of DMA_LOGGING_START is answered for feature 7 (DMA_LOGGING_STOP).
pub fn logging_probe_names_another_feature(s: UnixStream) {
    migration_relay(
        s,
        |_| Step::Forward,
        |request, reply| {
            if feature_of(request).is_some_and(|(f, _)| f == FEATURE_DMA_LOGGING_START)
                && !reply.is_error()
            {
                let flags = u32::from_ne_bytes(reply.payload[4..8].try_into().expect("4 bytes"));
                reply.payload[4..8].copy_from_slice(&((flags & !0xffff) | 7).to_ne_bytes());
            }
        },
    );
}

/// MIG_DATA_READ replies claim one byte more than was asked for.
pub fn oversized_data_reads(s: UnixStream) {
    migration_relay(
        s,
        |_| Step::Forward,
        |request, reply| {
            if is(request, Command::MigDataRead) && !reply.is_error() {
                let asked = u32::from_ne_bytes(request.payload[4..8].try_into().expect("4 bytes"));
                reply.payload[4..8].copy_from_slice(&(asked + 1).to_ne_bytes());
                reply.payload.resize(8 + asked as usize + 1, 0);
            }
        },
    );
}

/// The first MIG_DATA_READ reply has its first data byte flipped: the device cannot load
/// the data written back, and its RESUMING → STOP arc fails into ERROR.
pub fn corrupted_data_reads(s: UnixStream) {
    let mut first = true;
    migration_relay(
        s,
        |_| Step::Forward,
        move |request, reply| {
            if is(request, Command::MigDataRead) && !reply.is_error() && first {
                first = false;
                reply.payload[8] ^= 0xff;
            }
        },
    );
}
