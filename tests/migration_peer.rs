// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The migration layer against a scripted server on a real socket: a small migratable device
//! (the kernel's single arcs only, a data stream each way, DMA logging over a page set) whose
//! every answer a test can replace with a malformed one. And against the crates.io
//! `vfio_user` server, which has no migration at all.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY,
    VFIO_MIGRATION_STOP_COPY, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::dma::DmaMapper;
use vfio_user_client::migration::{DeviceState, Error, Migration};
use vfio_user_client::protocol::{
    Command, DeviceFeature, DeviceInfo, DmaAccess, DmaLoggingReport, DmaLoggingStart, Header,
    MigData, MigDeviceState, MigrationFeature, RegionAccess, RegionInfo, Version,
};
use vfio_user_client::{
    ConnectOptions, Connection, ConnectionCause, DeviceOptions, VfioUserDevice,
};
use vfio_user_sample_server::test_support::guest::{memory, region};
use vfio_user_sample_server::wire::{RawEndpoint, RawMsg};
use vm_memory::GuestMemoryMmap;

use DeviceState::{
    Error as Err_, PreCopy, PreCopyP2p, Resuming, Running, RunningP2p, Stop, StopCopy,
};

const EINVAL: u32 = libc::EINVAL as u32;
const STOP_COPY: u64 = VFIO_MIGRATION_STOP_COPY as u64;
const P2P: u64 = VFIO_MIGRATION_P2P as u64;
const PRE_COPY: u64 = VFIO_MIGRATION_PRE_COPY as u64;
const PAGE: u64 = 4096;

/// What the scripted server does with one request.
enum Answer {
    Reply(Vec<u8>),
    Error(u32),
    Default,
}

type Hook = Box<dyn FnMut(&Header, &[u8], &mut Device) -> Answer + Send>;

/// The scripted device's state, shared with the test.
#[derive(Default)]
struct Device {
    flags: u64,
    state: u32,
    precopy: Vec<u8>,
    stopcopy: Vec<u8>,
    received: Vec<u8>,
    /// Every SET of MIG_DEVICE_STATE, in order.
    sets: Vec<u32>,
    /// Every request's command, in order.
    commands: Vec<u16>,
    /// MIG_DATA_READ sizes asked for.
    read_sizes: Vec<u32>,
    /// MIG_DATA_WRITE sizes.
    write_sizes: Vec<u32>,
    /// DMA_LOGGING_START's data while logging.
    logging: Option<DmaLoggingStart>,
    /// DMA_LOGGING_REPORT ranges asked for.
    reports: Vec<(u64, u64)>,
    /// IOVA pages the "device" wrote.
    dirty: BTreeSet<u64>,
}

/// The arcs `include/uapi/linux/vfio.h` documents: all a server has to implement.
fn direct_arc(from: u32, to: u32) -> bool {
    let (f, t) = (
        DeviceState::from_u32(from).unwrap(),
        DeviceState::from_u32(to).unwrap(),
    );
    matches!(
        (f, t),
        (Running, Stop | RunningP2p | PreCopy)
            | (Stop, Running | StopCopy | Resuming | RunningP2p)
            | (StopCopy, Stop)
            | (Resuming, Stop)
            | (RunningP2p, Running | Stop | PreCopyP2p)
            | (PreCopy, Running | PreCopyP2p | StopCopy)
            | (PreCopyP2p, PreCopy | RunningP2p | StopCopy)
    )
}

fn feature_reply(rq: &DeviceFeature, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    DeviceFeature {
        argsz: (8 + data.len()) as u32,
        flags: rq.flags,
        data: data.to_vec(),
    }
    .encode_into(&mut out);
    out
}

impl Device {
    fn feature(&mut self, body: &[u8]) -> Answer {
        let rq = DeviceFeature::decode(body).unwrap();
        let op = rq.flags & !0xffff;
        if op & VFIO_DEVICE_FEATURE_PROBE != 0 {
            return Answer::Reply(body.to_vec());
        }
        match rq.feature() {
            VFIO_DEVICE_FEATURE_MIGRATION => {
                let mut d = Vec::new();
                MigrationFeature { flags: self.flags }.encode_into(&mut d);
                Answer::Reply(feature_reply(&rq, &d))
            }
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE if op == VFIO_DEVICE_FEATURE_GET => {
                let mut d = Vec::new();
                MigDeviceState {
                    device_state: self.state,
                    data_fd: 0,
                }
                .encode_into(&mut d);
                Answer::Reply(feature_reply(&rq, &d))
            }
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
                let to = MigDeviceState::decode(&rq.data).unwrap().device_state;
                self.sets.push(to);
                if !direct_arc(self.state, to) {
                    return Answer::Error(EINVAL);
                }
                self.state = to;
                Answer::Reply(body.to_vec())
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START => {
                self.logging = Some(DmaLoggingStart::decode(&rq.data).unwrap());
                Answer::Reply(body.to_vec())
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP => {
                self.logging = None;
                Answer::Reply(body.to_vec())
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => self.report(&rq),
            _ => Answer::Error(EINVAL),
        }
    }

    fn report(&mut self, rq: &DeviceFeature) -> Answer {
        let r = DmaLoggingReport::decode(&rq.data).unwrap();
        self.reports.push((r.iova, r.length));
        let pages = r.length / r.page_size;
        let mut words = vec![0u64; pages.div_ceil(64) as usize];
        for p in 0..pages {
            if self.dirty.remove(&(r.iova / PAGE + p)) {
                words[(p / 64) as usize] |= 1 << (p % 64);
            }
        }
        let mut d = Vec::new();
        DmaLoggingReport {
            bitmap: words.iter().flat_map(|w| w.to_ne_bytes()).collect(),
            ..r
        }
        .encode_into(&mut d);
        Answer::Reply(feature_reply(rq, &d))
    }

    /// MIG_DATA_READ as libvfio-user answers it: the message padded to the size asked.
    fn read(&mut self, body: &[u8]) -> Answer {
        let rq = MigData::decode(body).unwrap();
        self.read_sizes.push(rq.size);
        let src = match DeviceState::from_u32(self.state) {
            Some(PreCopy | PreCopyP2p) => &mut self.precopy,
            Some(StopCopy) => &mut self.stopcopy,
            _ => return Answer::Error(EINVAL),
        };
        let n = src.len().min(rq.size as usize);
        let data: Vec<u8> = src.drain(..n).collect();
        let mut out = Vec::new();
        MigData {
            argsz: 8 + n as u32,
            size: n as u32,
        }
        .encode_with_data(&data, &mut out);
        out.resize(8 + rq.size as usize, 0);
        Answer::Reply(out)
    }

    fn write(&mut self, body: &[u8]) -> Answer {
        let (rq, data) = MigData::decode_with_data(body).unwrap();
        self.write_sizes.push(rq.size);
        if self.state != Resuming as u32 {
            return Answer::Error(EINVAL);
        }
        self.received.extend_from_slice(data);
        Answer::Reply(Vec::new())
    }
}

/// The scripted server's configuration.
struct Config {
    migration_cap: bool,
    max_xfer: u32,
    max_bitmap: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            migration_cap: true,
            max_xfer: 64 << 10,
            max_bitmap: 256 << 20,
        }
    }
}

struct Peer {
    device: Arc<Mutex<Device>>,
    hook: Hook,
    config: Config,
}

impl Peer {
    fn default_answer(&mut self, h: &Header, body: &[u8], peer: &mut RawEndpoint) -> Answer {
        let mut out = Vec::new();
        let mut dev = self.device.lock().unwrap();
        match Command::from_u16(h.command) {
            Some(Command::Version) => {
                let mig = if self.config.migration_cap {
                    format!(
                        r#","migration":{{"pgsize":4096,"max_bitmap_size":{}}}"#,
                        self.config.max_bitmap
                    )
                } else {
                    String::new()
                };
                Version {
                    major: 0,
                    minor: 0,
                    json: Some(format!(
                        r#"{{"capabilities":{{"max_msg_fds":8,"max_data_xfer_size":{}{mig}}}}}"#,
                        self.config.max_xfer
                    )),
                }
                .encode_into(&mut out)
            }
            Some(Command::DeviceGetInfo) => DeviceInfo {
                argsz: 16,
                flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
                num_regions: 1,
                num_irqs: 0,
            }
            .encode_into(&mut out),
            Some(Command::DeviceGetRegionInfo) => RegionInfo {
                argsz: 32,
                flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
                index: 0,
                size: 0x1000,
                ..RegionInfo::default()
            }
            .encode_into(&mut out),
            Some(Command::DeviceFeature) => return dev.feature(body),
            Some(Command::MigDataRead) => return dev.read(body),
            Some(Command::MigDataWrite) => return dev.write(body),
            Some(Command::DeviceReset) => dev.state = Running as u32,
            Some(Command::DmaMap | Command::DmaUnmap) => {}
            Some(Command::RegionRead) => {
                let rq = RegionAccess::decode(body).unwrap();
                rq.encode_with_data(&vec![0; rq.count as usize], &mut out);
            }
            Some(Command::RegionWrite) => {
                // A write of 8 bytes is an address: the server DMA_WRITEs a page there
                // (served by the client's DMA handler) before answering.
                let (rq, data) = RegionAccess::decode_with_data(body).unwrap();
                drop(dev);
                let gpa = u64::from_ne_bytes(data.try_into().unwrap());
                let mut p = Vec::new();
                DmaAccess {
                    address: gpa,
                    count: 16,
                }
                .encode_with_data(&[0xa5; 16], &mut p);
                let x = peer.request(Command::DmaWrite, &p, &[]);
                assert!(!x.reply.unwrap().is_error());
                rq.encode_into(&mut out);
            }
            _ => return Answer::Error(EINVAL),
        }
        Answer::Reply(out)
    }

    fn run(mut self, mut peer: RawEndpoint) {
        while let Ok(RawMsg {
            header: h,
            payload: body,
            ..
        }) = peer.recv()
        {
            self.device.lock().unwrap().commands.push(h.command);
            let answer = {
                let mut dev = self.device.lock().unwrap();
                (self.hook)(&h, &body, &mut dev)
            };
            let answer = match answer {
                Answer::Default => self.default_answer(&h, &body, &mut peer),
                a => a,
            };
            let sent = match answer {
                Answer::Reply(payload) => {
                    let rh = Header::reply(&h, payload.len()).unwrap();
                    peer.send_message(&rh, &payload, &[])
                }
                Answer::Error(errno) => {
                    peer.send_message(&Header::error_reply(&h, errno), &[], &[])
                }
                Answer::Default => unreachable!(),
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

/// A scripted server with `device` and `hook`, and a device attached to it.
struct Setup {
    device: Arc<Mutex<Device>>,
    dev: VfioUserDevice,
    _thread: JoinHandle<()>,
}

impl Setup {
    fn new(config: Config, device: Device, hook: Hook) -> Setup {
        let (client, server) = UnixStream::pair().unwrap();
        let device = Arc::new(Mutex::new(device));
        let peer = Peer {
            device: Arc::clone(&device),
            hook,
            config,
        };
        let t = thread::spawn(move || peer.run(common::peer(server)));
        let options = ConnectOptions {
            offer: vfio_user_client::Offer {
                twin_socket: false,
                ..Default::default()
            },
            ..ConnectOptions::default()
        };
        let conn = Connection::connect(client, &options).unwrap();
        let dev = VfioUserDevice::new(conn, &DeviceOptions::default()).unwrap();
        Setup {
            device,
            dev,
            _thread: t,
        }
    }

    fn plain(flags: u64) -> Setup {
        Setup::with(flags, Box::new(|_, _, _| Answer::Default))
    }

    fn with(flags: u64, hook: Hook) -> Setup {
        Setup::with_config(Config::default(), flags, hook)
    }

    /// A device with `flags`, RUNNING, behind a server configured by `config`.
    fn with_config(config: Config, flags: u64, hook: Hook) -> Setup {
        let device = Device {
            flags,
            state: Running as u32,
            ..Device::default()
        };
        Setup::new(config, device, hook)
    }

    fn device(&self) -> std::sync::MutexGuard<'_, Device> {
        self.device.lock().unwrap()
    }

    fn feature_requests(&self) -> usize {
        self.device()
            .commands
            .iter()
            .filter(|c| **c == Command::DeviceFeature as u16)
            .count()
    }

    /// The connection is in step: a region read still gets its own reply.
    fn in_step(&self) {
        let mut b = [0u8; 4];
        self.dev.read(0, 0, &mut b).unwrap();
    }
}

fn is_feature(h: &Header, body: &[u8], feature: u32, op: u32) -> bool {
    h.command == Command::DeviceFeature as u16
        && DeviceFeature::decode(body).is_ok_and(|f| f.feature() == feature && f.flags & op != 0)
}

/// A hook that hands every SET of MIG_DEVICE_STATE (its body) to `f`.
fn on_state_set(f: impl Fn(&[u8], &mut Device) -> Answer + Send + 'static) -> Hook {
    Box::new(move |h, body, dev| {
        if is_feature(
            h,
            body,
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            VFIO_DEVICE_FEATURE_SET,
        ) {
            f(body, dev)
        } else {
            Answer::Default
        }
    })
}

/// `e` is a [`Error::BadReply`] to `command`.
#[track_caller]
fn assert_bad_reply(e: &Error, command: Command) {
    assert!(
        matches!(e, Error::BadReply { command: c, .. } if *c == command),
        "{e:?}"
    );
}

/// `e` is a [`Error::DataState`]: no `op` ("read" or "write") in `state`.
#[track_caller]
fn assert_data_state(e: &Error, op: &str, state: DeviceState) {
    assert!(
        matches!(e, Error::DataState { op: o, state: st } if *o == op && *st == state),
        "{e:?}"
    );
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn discovery_reads_flags_and_state() {
    let s = Setup::plain(STOP_COPY | PRE_COPY);
    let m = Migration::new(&s.dev).unwrap();
    assert_eq!(m.flags(), STOP_COPY | PRE_COPY);
    assert_eq!(m.state(), Running);
    assert!(m.can_reach(StopCopy) && m.can_reach(PreCopy) && !m.can_reach(RunningP2p));
    assert_eq!(s.feature_requests(), 3, "PROBE, GET MIGRATION, GET state");
}

#[test]
fn without_the_migration_capability_nothing_is_sent() {
    let device = Device {
        flags: STOP_COPY,
        ..Device::default()
    };
    let config = Config {
        migration_cap: false,
        ..Config::default()
    };
    let s = Setup::new(config, device, Box::new(|_, _, _| Answer::Default));
    let e = Migration::new(&s.dev).unwrap_err();
    assert!(matches!(e, Error::NotNegotiated), "{e:?}");
    assert!(e.is_unsupported());
    assert_eq!(s.feature_requests(), 0);
}

#[test]
fn a_refused_feature_is_unsupported_with_the_errno() {
    for errno in [EINVAL, libc::ENOTTY as u32, 0] {
        let s = Setup::with(
            STOP_COPY,
            Box::new(move |h, _, _| {
                if h.command == Command::DeviceFeature as u16 {
                    Answer::Error(errno)
                } else {
                    Answer::Default
                }
            }),
        );
        let e = Migration::new(&s.dev).unwrap_err();
        assert!(matches!(e, Error::NoMigrationFeature(_)), "{e:?}");
        assert_eq!(e.server_errno(), Some(errno));
        assert!(!e.is_disconnected());
        s.in_step();
    }
}

#[test]
fn flags_without_stop_copy_are_unsupported() {
    let s = Setup::plain(PRE_COPY | P2P);
    let e = Migration::new(&s.dev).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NoStopCopy { flags } if flags == PRE_COPY | P2P
        ),
        "{e:?}"
    );
}

#[test]
fn short_feature_replies_are_bad_replies() {
    let s = Setup::with(
        STOP_COPY,
        Box::new(|h, body, _| {
            if is_feature(
                h,
                body,
                VFIO_DEVICE_FEATURE_MIGRATION,
                VFIO_DEVICE_FEATURE_GET,
            ) {
                // The head only: no flags.
                Answer::Reply(body[..8].to_vec())
            } else {
                Answer::Default
            }
        }),
    );
    let e = Migration::new(&s.dev).unwrap_err();
    assert_bad_reply(&e, Command::DeviceFeature);
    s.in_step();
}

/// Every reachable pair with every flag set, against a server that takes only the kernel's
/// single arcs: each target is reached, and the server saw each state set once, in order.
#[test]
fn every_target_is_reached_one_arc_at_a_time() {
    let all = [
        Stop, Running, StopCopy, Resuming, RunningP2p, PreCopy, PreCopyP2p,
    ];
    for flags in [
        STOP_COPY,
        STOP_COPY | P2P,
        STOP_COPY | PRE_COPY,
        STOP_COPY | P2P | PRE_COPY,
    ] {
        let s = Setup::plain(flags);
        let mut m = Migration::new(&s.dev).unwrap();
        for from in all {
            for to in all {
                if !m.can_reach(from) {
                    continue;
                }
                m.set_state(from).unwrap();
                if !m.can_reach(to) {
                    let sent = s.feature_requests();
                    let e = m.set_state(to).unwrap_err();
                    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
                    assert_eq!(s.feature_requests(), sent, "nothing sent");
                    continue;
                }
                s.device().sets.clear();
                m.set_state(to).unwrap();
                assert_eq!(m.state(), to);
                let sets = std::mem::take(&mut s.device().sets);
                assert_eq!(sets.last().copied().unwrap_or(from as u32), to as u32);
                assert_eq!(s.device().state, to as u32);
            }
        }
        assert_eq!(m.read_state().unwrap(), m.state());
    }
}

#[test]
fn unreachable_targets_are_refused_before_sending() {
    let s = Setup::plain(STOP_COPY | PRE_COPY);
    let mut m = Migration::new(&s.dev).unwrap();
    m.set_state(StopCopy).unwrap();
    let sent = s.feature_requests();
    for to in [PreCopy, Err_, PreCopyP2p, RunningP2p] {
        let e = m.set_state(to).unwrap_err();
        assert!(
            matches!(e, Error::Unreachable { from: StopCopy, to: t, .. } if t == to),
            "{e:?}"
        );
    }
    assert_eq!(s.feature_requests(), sent);
    assert_eq!(m.state(), StopCopy);
    // The path taken through STOP, as the kernel does.
    s.device().sets.clear();
    m.set_state(Running).unwrap();
    assert_eq!(s.device().sets, vec![Stop as u32, Running as u32]);
}

#[test]
fn a_refused_arc_reads_the_state_back() {
    let s = Setup::with(
        STOP_COPY | P2P,
        on_state_set(|body, dev| {
            let to = MigDeviceState::decode(&body[8..]).unwrap().device_state;
            if to == Stop as u32 {
                dev.state = Err_ as u32;
                return Answer::Error(libc::EIO as u32);
            }
            Answer::Default
        }),
    );
    let mut m = Migration::new(&s.dev).unwrap();
    let e = m.set_state(StopCopy).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Transition {
                from: RunningP2p,
                step: Stop,
                to: StopCopy,
                now: Some(Err_),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.server_errno(), Some(libc::EIO as u32));
    assert_eq!(m.state(), Err_);
    // ERROR is left through DEVICE_RESET, to RUNNING, then on to the target.
    let resets = |s: &Setup| {
        s.device()
            .commands
            .iter()
            .filter(|c| **c == Command::DeviceReset as u16)
            .count()
    };
    assert_eq!(resets(&s), 0);
    m.set_state(RunningP2p).unwrap();
    assert_eq!(resets(&s), 1);
    assert_eq!(
        (m.state(), s.device().state),
        (RunningP2p, RunningP2p as u32)
    );
}

#[test]
fn a_reset_that_does_not_reach_running_is_reported() {
    let s = Setup::with(
        STOP_COPY,
        Box::new(|h, _, dev| {
            if h.command == Command::DeviceReset as u16 {
                dev.state = Stop as u32;
                return Answer::Reply(Vec::new());
            }
            Answer::Default
        }),
    );
    s.device().state = Err_ as u32;
    let mut m = Migration::new(&s.dev).unwrap();
    assert_eq!(m.state(), Err_);
    let e = m.set_state(Running).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WrongState {
                expected: Running,
                reported: 1
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_reply_with_another_state_is_reported() {
    let s = Setup::with(
        STOP_COPY,
        on_state_set(|body, dev| {
            // Claims RUNNING whatever was set, and stays there.
            let mut out = body.to_vec();
            out[8..12].copy_from_slice(&(Running as u32).to_ne_bytes());
            dev.state = Running as u32;
            Answer::Reply(out)
        }),
    );
    let mut m = Migration::new(&s.dev).unwrap();
    let e = m.set_state(Stop).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WrongState {
                expected: Stop,
                reported: 2
            }
        ),
        "{e:?}"
    );
    assert_eq!(m.state(), Running, "read back");
    s.in_step();
}

#[test]
fn a_short_state_reply_reads_the_state_back() {
    let s = Setup::with(
        STOP_COPY,
        on_state_set(|body, dev| {
            // Takes the arc but answers with the head only.
            dev.state = MigDeviceState::decode(&body[8..]).unwrap().device_state;
            Answer::Reply(body[..8].to_vec())
        }),
    );
    let mut m = Migration::new(&s.dev).unwrap();
    let e = m.set_state(Stop).unwrap_err();
    assert_bad_reply(&e, Command::DeviceFeature);
    assert_eq!(m.state(), Stop, "read back");
    s.in_step();
}

#[test]
fn unknown_states_are_reported() {
    let s = Setup::plain(STOP_COPY);
    s.device().state = 99;
    let e = Migration::new(&s.dev).unwrap_err();
    assert!(matches!(e, Error::UnknownState(99)), "{e:?}");
    s.in_step();
}

#[test]
fn device_data_moves_in_chunks_through_pre_copy_and_stop_copy() {
    let s = Setup::plain(STOP_COPY | PRE_COPY);
    let pre = pattern(200_000, 1);
    let stop = pattern((1 << 20) + 17, 2);
    s.device().precopy = pre.clone();
    s.device().stopcopy = stop.clone();
    let mut m = Migration::new(&s.dev).unwrap();
    let e = m.reader().unwrap_err();
    assert_data_state(&e, "read", Running);
    m.set_state(PreCopy).unwrap();
    let mut got = Vec::new();
    m.reader().unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(got, pre);
    // The round is over: nothing more for now.
    assert_eq!(m.reader().unwrap().read(&mut [0; 64]).unwrap(), 0);
    m.set_state(StopCopy).unwrap();
    let mut got = Vec::new();
    let mut r = m.reader().unwrap();
    std::io::copy(&mut r, &mut got).unwrap();
    assert_eq!(r.bytes_read(), (pre.len() + stop.len()) as u64);
    assert_eq!(got, stop);
    assert_eq!(m.bytes_read(), (pre.len() + stop.len()) as u64);
    let sizes = s.device().read_sizes.clone();
    assert!(sizes.iter().all(|n| *n <= 1 << 20 && *n > 0), "{sizes:?}");
    let e = m.writer().unwrap_err();
    assert_data_state(&e, "write", StopCopy);
}

/// A MIG_DATA_READ of 512 bytes in STOP_COPY against `hook`; its error, after checking that
/// the connection is still in step.
/// Reads sent ahead of the caller are not lost when the state changes mid-stream: their
/// data comes first from the next reader, in stream order.
#[test]
fn a_state_change_mid_stream_keeps_every_byte() {
    let s = Setup::plain(STOP_COPY | PRE_COPY);
    let pre = pattern(3 * CHUNK as usize + 5, 1);
    let stop = pattern(CHUNK as usize + 7, 2);
    s.device().precopy = pre.clone();
    s.device().stopcopy = stop.clone();
    let mut m = Migration::new(&s.dev).unwrap();
    m.set_state(PreCopy).unwrap();
    let mut got = vec![0u8; 2 * CHUNK as usize];
    let mut r = m.reader().unwrap();
    r.read_exact(&mut got).unwrap();
    m.set_state(StopCopy).unwrap();
    // Two chunks read, a third asked for ahead (before the state changed).
    assert_eq!(s.device().read_sizes.len(), 3);
    m.reader().unwrap().read_to_end(&mut got).unwrap();
    let mut want = pre.clone();
    // The last 5 pre-copy bytes were never asked for: they stay on the script's side (a
    // device sends what it still needs in STOP_COPY).
    want.truncate(3 * CHUNK as usize);
    want.extend_from_slice(&stop);
    assert_eq!(got.len(), want.len());
    assert!(got == want);
    assert_eq!(m.bytes_read(), want.len() as u64);
}

fn read_error(hook: Hook) -> Error {
    let s = Setup::with(STOP_COPY, hook);
    s.device().stopcopy = pattern(1000, 3);
    let mut m = Migration::new(&s.dev).unwrap();
    m.set_state(StopCopy).unwrap();
    let mut buf = [0u8; 512];
    let e = m.reader().unwrap().read(&mut buf).unwrap_err();
    assert!(Error::from_io(&e).is_some(), "{e:?}");
    assert_eq!(m.read_state().unwrap(), StopCopy);
    s.in_step();
    *e.into_inner().unwrap().downcast::<Error>().unwrap()
}

fn on_read(f: impl Fn(&[u8]) -> Answer + Send + 'static) -> Hook {
    Box::new(move |h, body, _| {
        if h.command == Command::MigDataRead as u16 {
            f(body)
        } else {
            Answer::Default
        }
    })
}

fn mig_data(size: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MigData {
        argsz: size.saturating_add(8),
        size,
    }
    .encode_with_data(data, &mut out);
    out
}

/// The chunk a small read asks for: the scripted server's `max_data_xfer_size` is 64 KiB,
/// ours 1 MiB.
const CHUNK: u32 = 1 << 20;

#[test]
fn an_oversized_data_reply_is_refused() {
    let e = read_error(on_read(|_| Answer::Reply(mig_data(CHUNK + 1, &[7; 600]))));
    assert!(
        matches!(e, Error::DataOversized { asked: CHUNK, got } if got == CHUNK + 1),
        "{e:?}"
    );
    // The most a size can claim, in a message of the size asked.
    let e = read_error(on_read(|rq| {
        let mut out = mig_data(u32::MAX, &[]);
        out.resize(8 + MigData::decode(rq).unwrap().size as usize, 7);
        Answer::Reply(out)
    }));
    assert!(
        matches!(
            e,
            Error::DataOversized {
                asked: CHUNK,
                got: u32::MAX
            }
        ),
        "{e:?}"
    );
}

#[test]
fn small_reads_move_whole_chunks() {
    let s = Setup::plain(STOP_COPY);
    let data = pattern(3 * CHUNK as usize + 1000, 5);
    s.device().stopcopy = data.clone();
    let mut m = Migration::new(&s.dev).unwrap();
    m.set_state(StopCopy).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1000];
    // A first small read through one reader, the rest through another.
    let n = m.reader().unwrap().read(&mut buf).unwrap();
    got.extend_from_slice(&buf[..n]);
    let mut r = m.reader().unwrap();
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, data);
    assert_eq!(s.device().read_sizes, vec![CHUNK; 5]);
}

#[test]
fn a_truncated_data_reply_is_refused() {
    let e = read_error(on_read(|_| Answer::Reply(mig_data(100, &[7; 10]))));
    assert!(
        matches!(
            e,
            Error::DataTruncated {
                size: 100,
                present: 10
            }
        ),
        "{e:?}"
    );
    let e = read_error(on_read(|_| Answer::Reply(vec![1, 2, 3])));
    assert_bad_reply(&e, Command::MigDataRead);
}

#[test]
fn a_short_unpadded_data_reply_is_data() {
    let s = Setup::with(STOP_COPY, on_read(|_| Answer::Reply(mig_data(5, b"hello"))));
    let mut m = Migration::new(&s.dev).unwrap();
    m.set_state(StopCopy).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(m.reader().unwrap().read(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
}

#[test]
fn a_refused_data_read_carries_the_errno() {
    let e = read_error(on_read(|_| Answer::Error(libc::EIO as u32)));
    assert!(
        matches!(
            e,
            Error::Request {
                command: Command::MigDataRead,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.server_errno(), Some(libc::EIO as u32));
}

#[test]
fn the_destination_writes_in_the_servers_chunks() {
    let s = Setup::plain(STOP_COPY);
    let mut m = Migration::new(&s.dev).unwrap();
    let e = m.writer().unwrap_err();
    assert_data_state(&e, "write", Running);
    m.set_state(Resuming).unwrap();
    let data = pattern(300_000, 9);
    let mut w = m.writer().unwrap();
    w.write_all(&data).unwrap();
    w.flush().unwrap();
    assert_eq!(w.bytes_written(), data.len() as u64);
    assert_eq!(s.device().received, data);
    let sizes = s.device().write_sizes.clone();
    assert!(sizes.iter().all(|n| *n <= 64 << 10), "{sizes:?}");
    assert_eq!(sizes.len(), data.len().div_ceil(64 << 10));
    m.set_state(Running).unwrap();
    assert_eq!(m.bytes_written(), data.len() as u64);
}

#[test]
fn a_partial_write_reply_is_refused() {
    let s = Setup::with(
        STOP_COPY,
        Box::new(|h, body, _| {
            if h.command == Command::MigDataWrite as u16 {
                let rq = MigData::decode(body).unwrap();
                return Answer::Reply(mig_data(rq.size - 1, &[]));
            }
            Answer::Default
        }),
    );
    let mut m = Migration::new(&s.dev).unwrap();
    m.set_state(Resuming).unwrap();
    let e = m.writer().unwrap().write(&[1; 100]).unwrap_err();
    let e = Error::from_io(&e).unwrap();
    assert_bad_reply(e, Command::MigDataWrite);
    s.in_step();
}

// ---- DMA dirty logging ----

const WINDOW: u64 = 1 << 20;

/// Two windows of guest memory, 1 MiB each, at 0 and 16 MiB, mapped without fds (the
/// server reaches them by DMA_READ / DMA_WRITE).
fn mapped(s: &Setup) -> DmaMapper<Arc<GuestMemoryMmap>> {
    let mem = Arc::new(memory(vec![
        region(0, WINDOW as usize, None, true),
        region(16 << 20, WINDOW as usize, None, true),
    ]));
    let mapper = DmaMapper::new(s.dev.connection(), mem);
    mapper.map(0, 0, WINDOW).unwrap();
    mapper.map(16 << 20, 16 << 20, WINDOW).unwrap();
    mapper
}

/// The server DMA_WRITEs 16 bytes at `gpa` (through the client's handler).
fn server_writes(s: &Setup, gpa: u64) {
    s.dev.write(0, 0, &gpa.to_ne_bytes()).unwrap();
}

#[test]
fn dirty_logging_merges_the_servers_report_and_the_clients_writes() {
    let config = Config {
        max_bitmap: 16,
        ..Config::default()
    };
    let s = Setup::with_config(config, STOP_COPY, Box::new(|_, _, _| Answer::Default));
    let mapper = mapped(&s);
    let mut m = Migration::new(&s.dev).unwrap();
    // Before logging: written, not counted.
    server_writes(&s, 0x5000);
    assert!(mapper.dirty_log().dirty_pages().is_empty());
    assert!(matches!(m.dirty_report(), Err(Error::LoggingState(false))));

    m.start_dirty_logging(&mapper).unwrap();
    assert!(m.is_logging() && mapper.dirty_log().is_on());
    let start = s.device().logging.clone().unwrap();
    assert_eq!(start.page_size, PAGE);
    let ranges: Vec<(u64, u64)> = start.ranges.iter().map(|r| (r.iova, r.length)).collect();
    assert_eq!(ranges, vec![(0, WINDOW), (16 << 20, WINDOW)]);
    assert!(matches!(
        m.start_dirty_logging(&mapper),
        Err(Error::LoggingState(true))
    ));

    server_writes(&s, 0x7ff8); // two pages
    s.device().dirty.extend([3, (16 << 20) / PAGE + 255]);
    let report = m.dirty_report().unwrap();
    assert_eq!(report.page_size(), PAGE);
    let pages: Vec<u64> = report.dirty_pages().collect();
    assert_eq!(pages, vec![0x3000, 0x7000, 0x8000, (16 << 20) + 255 * PAGE]);
    assert_eq!(report.count(), 4);
    // 16-byte bitmaps: 128 pages per report, 2 reports per window.
    let reports = std::mem::take(&mut s.device().reports);
    assert_eq!(reports.len(), 4, "{reports:?}");
    assert!(reports.iter().all(|r| r.1 == 128 * PAGE));
    // Reported pages are cleared; a bitmap reused for the next reports holds only theirs.
    let mut reused = report.clone();
    m.dirty_report_into(&mut reused).unwrap();
    assert_eq!(reused.count(), 0);
    s.device().dirty.insert(200);
    server_writes(&s, 0x10000);
    m.dirty_report_into(&mut reused).unwrap();
    let pages: Vec<u64> = reused.dirty_pages().collect();
    assert_eq!(pages, vec![0x10000, 200 * PAGE]);
    assert_eq!(m.dirty_report().unwrap().count(), 0);

    m.stop_dirty_logging().unwrap();
    assert!(!mapper.dirty_log().is_on() && s.device().logging.is_none());
    server_writes(&s, 0x9000);
    assert!(mapper.dirty_log().dirty_pages().is_empty());
    assert!(matches!(
        m.stop_dirty_logging(),
        Err(Error::LoggingState(false))
    ));
}

/// A hook that answers DMA_LOGGING_REPORT as the device does, with `edit` applied to the
/// reply's payload.
fn on_report(edit: impl Fn(&mut Vec<u8>) + Send + 'static) -> Hook {
    Box::new(move |h, body, dev| {
        if is_feature(
            h,
            body,
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
            VFIO_DEVICE_FEATURE_GET,
        ) {
            let rq = DeviceFeature::decode(body).unwrap();
            let Answer::Reply(mut out) = dev.report(&rq) else {
                unreachable!()
            };
            edit(&mut out);
            return Answer::Reply(out);
        }
        Answer::Default
    })
}

fn logging_hook(feature: u32, answer: fn(&[u8]) -> Answer) -> Hook {
    Box::new(move |h, body, _| {
        if is_feature(
            h,
            body,
            feature,
            VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_GET,
        ) {
            answer(body)
        } else {
            Answer::Default
        }
    })
}

#[test]
fn refused_logging_is_unsupported_not_an_empty_bitmap() {
    let s = Setup::with(
        STOP_COPY,
        logging_hook(VFIO_DEVICE_FEATURE_DMA_LOGGING_START, |_| {
            Answer::Error(libc::ENOTTY as u32)
        }),
    );
    let mapper = mapped(&s);
    let mut m = Migration::new(&s.dev).unwrap();
    let e = m.start_dirty_logging(&mapper).unwrap_err();
    assert!(matches!(e, Error::LoggingUnsupported(_)), "{e:?}");
    assert_eq!(e.server_errno(), Some(libc::ENOTTY as u32));
    assert!(!m.is_logging() && !mapper.dirty_log().is_on());
    assert!(matches!(m.dirty_report(), Err(Error::LoggingState(false))));
    s.in_step();
}

#[test]
fn a_refused_report_carries_the_errno() {
    let s = Setup::with(
        STOP_COPY,
        logging_hook(VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, |_| {
            Answer::Error(libc::EIO as u32)
        }),
    );
    let mapper = mapped(&s);
    let mut m = Migration::new(&s.dev).unwrap();
    m.start_dirty_logging(&mapper).unwrap();
    let e = m.dirty_report().unwrap_err();
    assert!(matches!(e, Error::LoggingUnsupported(_)), "{e:?}");
    assert_eq!(e.server_errno(), Some(libc::EIO as u32));
    s.in_step();
}

#[test]
fn bitmaps_of_the_wrong_size_are_refused() {
    for delta in [-8i64, 8, -1, 3] {
        let hook = on_report(move |out| {
            let len = (out.len() as i64 + delta) as usize;
            out.resize(len, 0);
        });
        let s = Setup::with(STOP_COPY, hook);
        let mapper = mapped(&s);
        let mut m = Migration::new(&s.dev).unwrap();
        m.start_dirty_logging(&mapper).unwrap();
        let e = m.dirty_report().unwrap_err();
        let expected = (WINDOW / PAGE / 8) as usize;
        assert!(
            matches!(e, Error::BitmapSize { expected: x, got, .. }
                if x == expected && got as i64 == expected as i64 + delta),
            "{e:?}"
        );
        s.in_step();
        m.stop_dirty_logging().unwrap();
    }
}

#[test]
fn a_report_for_another_range_is_refused() {
    let hook = on_report(|out| out[8] ^= 0x10); // iova
    let s = Setup::with(STOP_COPY, hook);
    let mapper = mapped(&s);
    let mut m = Migration::new(&s.dev).unwrap();
    m.start_dirty_logging(&mapper).unwrap();
    let e = m.dirty_report().unwrap_err();
    assert_bad_reply(&e, Command::DeviceFeature);
    s.in_step();
}

// ---- The crates.io `vfio_user` server: no migration ----

#[test]
fn the_crates_io_server_is_unsupported_cleanly() {
    use vfio_user_sample_server::test_support::rust_vmm::{RustVmmServer, ID, REGS, REG_ID};
    let server = RustVmmServer::start(false);
    let dev = VfioUserDevice::connect(
        &server.path,
        &ConnectOptions::default(),
        &DeviceOptions::default(),
    )
    .unwrap();
    // It sends the migration capability, but has no DEVICE_FEATURE.
    assert!(dev.capabilities().migration.is_some());
    for _ in 0..3 {
        let e = Migration::new(&dev).unwrap_err();
        assert!(matches!(e, Error::NoMigrationFeature(_)), "{e:?}");
        assert!(e.is_unsupported() && !e.is_disconnected());
        // In step: every later request gets its own answer.
        for _ in 0..20 {
            let mut b = [0u8; 4];
            dev.read(REGS, REG_ID, &mut b).unwrap();
            assert_eq!(u32::from_ne_bytes(b), ID);
        }
    }
    drop(dev);
    server.finish().unwrap();
}
