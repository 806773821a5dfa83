// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device layer against a scripted server that answers discovery like a small PCI
//! device and lets each test replace any answer: re-queries, malformed or mismatched
//! replies, error replies, hostile sizes, disconnects.

mod common;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};

use vfio_bindings::bindings::vfio::{
    vfio_region_sparse_mmap_area as SparseMmapArea, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET,
    VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::device::{Error as DeviceError, IrqAction};
use vfio_user_client::protocol::{
    Command, DeviceInfo, Header, IoFdsLayout, IoSubregion, IrqInfo, RegionAccess, RegionCap,
    RegionInfo, RegionIoFds, Version,
};
use vfio_user_client::ConnectionCause;
use vfio_user_client::{ConnectOptions, Connection, DeviceOptions, Error, VfioUserDevice};
use vfio_user_sample_server::wire::{RawEndpoint, RawMsg};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
const REGION_SIZE: u64 = 0x10000;

/// What the scripted server does with one request.
enum Answer {
    /// Reply with this payload (and fds).
    Reply(Vec<u8>, Vec<RawFd>),
    /// Reply with an error.
    Error(u32),
    /// Close the connection.
    Close,
    /// Let the default device answer.
    Default,
}

/// The default device: `regions` regions of 64 KiB (READ|WRITE), 3 IRQ indexes (INTx
/// with 1 vector, MSI and MSI-X with 4 each), 32 KiB per message (so that 64 KiB
/// transfers are pipelined), memory behind every region (shared by all), reads and writes
/// honoured.
struct Script<F> {
    regions: u32,
    memory: Vec<u8>,
    hook: F,
}

impl<F> Script<F>
where
    F: FnMut(&Header, &[u8]) -> Answer + Send + 'static,
{
    fn default_answer(&mut self, h: &Header, body: &[u8]) -> Answer {
        let mut out = Vec::new();
        match Command::from_u16(h.command) {
            Some(Command::Version) => Version {
                major: 0,
                minor: 0,
                json: Some(
                    r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":32768}}"#.to_string(),
                ),
            }
            .encode_into(&mut out),
            Some(Command::DeviceGetInfo) => DeviceInfo {
                argsz: 16,
                flags: VFIO_DEVICE_FLAGS_PCI,
                num_regions: self.regions,
                num_irqs: 3,
            }
            .encode_into(&mut out),
            Some(Command::DeviceGetRegionInfo) => {
                let rq = RegionInfo::decode(body).unwrap();
                RegionInfo {
                    argsz: 32,
                    flags: RW,
                    index: rq.index,
                    size: REGION_SIZE,
                    ..RegionInfo::default()
                }
                .encode_into(&mut out)
            }
            Some(Command::DeviceGetIrqInfo) => {
                let rq = IrqInfo::decode(body).unwrap();
                IrqInfo {
                    argsz: 16,
                    flags: 1,
                    index: rq.index,
                    count: if rq.index == 0 { 1 } else { 4 },
                }
                .encode_into(&mut out)
            }
            Some(Command::RegionRead) => {
                let rq = RegionAccess::decode(body).unwrap();
                let at = rq.offset as usize;
                let data = self.memory[at..at + rq.count as usize].to_vec();
                rq.encode_with_data(&data, &mut out);
            }
            Some(Command::RegionWrite) => {
                let (rq, data) = RegionAccess::decode_with_data(body).unwrap();
                let at = rq.offset as usize;
                self.memory[at..at + data.len()].copy_from_slice(data);
                rq.encode_into(&mut out);
            }
            _ => return Answer::Error(libc::EINVAL as u32),
        }
        Answer::Reply(out, Vec::new())
    }

    fn run(mut self, mut peer: RawEndpoint) {
        while let Ok(RawMsg {
            header: h,
            payload: body,
            fds: _fds,
        }) = peer.recv()
        {
            let answer = match (self.hook)(&h, &body) {
                Answer::Default => self.default_answer(&h, &body),
                a => a,
            };
            if h.no_reply() {
                continue;
            }
            match answer {
                Answer::Reply(payload, fds) => {
                    let rh = Header::reply(&h, payload.len()).unwrap();
                    peer.send_message(&rh, &payload, &fds).unwrap();
                }
                Answer::Error(errno) => {
                    let rh = Header::error_reply(&h, errno);
                    peer.send_message(&rh, &[], &[]).unwrap();
                }
                Answer::Close => return,
                Answer::Default => unreachable!(),
            }
        }
    }
}

/// Starts a scripted server with `regions` regions and `hook`, and attaches to it.
fn attach<F>(regions: u32, hook: F) -> (Result<VfioUserDevice, Error>, JoinHandle<()>)
where
    F: FnMut(&Header, &[u8]) -> Answer + Send + 'static,
{
    let (client, server) = UnixStream::pair().unwrap();
    let script = Script {
        regions,
        memory: vec![0; REGION_SIZE as usize],
        hook,
    };
    let t = thread::spawn(move || script.run(common::peer(server)));
    let dev = Connection::connect(client, &ConnectOptions::default())
        .and_then(|c| VfioUserDevice::new(c, &DeviceOptions::default()).map_err(Error::from));
    (dev, t)
}

fn is(h: &Header, c: Command) -> bool {
    h.command == c as u16
}

fn region_info_reply(info: RegionInfo) -> Vec<u8> {
    let mut out = Vec::new();
    info.encode_into(&mut out);
    out
}

/// A region-info reply for region 0 with a SPARSE_MMAP cap holding `areas`.
fn sparse_info(areas: Vec<SparseMmapArea>) -> RegionInfo {
    let caps = vec![RegionCap::SparseMmap(areas)];
    let mut info = RegionInfo {
        flags: RW | VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS,
        index: 0,
        cap_offset: 32,
        size: REGION_SIZE,
        caps,
        ..RegionInfo::default()
    };
    info.argsz = info.encoded_len() as u32;
    info
}

fn memfile() -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(REGION_SIZE).unwrap();
    f
}

#[test]
fn region_info_is_asked_again_with_the_argsz_named() {
    asked_again(false);
}

/// The crates.io `vfio_user` server's short reply sets CAPS and `cap_offset` without
/// sending the chain: the chain must not be parsed before the re-query.
#[test]
fn a_short_region_info_reply_may_claim_caps() {
    asked_again(true);
}

fn asked_again(short_claims_caps: bool) {
    let file = memfile();
    let fd = file.as_file().as_raw_fd();
    let mut asked = Vec::new();
    let (dev, _t) = attach(1, move |h, body| {
        if !is(h, Command::DeviceGetRegionInfo) {
            return Answer::Default;
        }
        let rq = RegionInfo::decode(body).unwrap();
        asked.push(rq.argsz);
        let full = sparse_info(vec![SparseMmapArea {
            offset: 0x1000,
            size: 0x2000,
        }]);
        if rq.argsz < full.argsz {
            // libvfio-user: the size needed, MMAP without CAPS, no fd.
            let mut short = RegionInfo {
                argsz: full.argsz,
                flags: RW | VFIO_REGION_INFO_FLAG_MMAP,
                index: 0,
                size: REGION_SIZE,
                ..RegionInfo::default()
            };
            if short_claims_caps {
                short.flags |= VFIO_REGION_INFO_FLAG_CAPS;
                short.cap_offset = 32;
            }
            return Answer::Reply(region_info_reply(short), Vec::new());
        }
        assert_eq!(asked, [32, full.argsz]);
        Answer::Reply(region_info_reply(full), vec![fd])
    });
    let dev = dev.unwrap();
    let r = dev.region(0).unwrap();
    assert!(r.mappable());
    assert_eq!(
        r.sparse_areas().unwrap(),
        [SparseMmapArea {
            offset: 0x1000,
            size: 0x2000
        }]
    );
    assert_eq!(r.mapped_areas().len(), 1);
    assert_eq!(r.mapped_areas()[0].offset(), 0x1000);
    assert!(!dev.posted_writes());
}

fn discovery_error<F>(hook: F) -> DeviceError
where
    F: FnMut(&Header, &[u8]) -> Answer + Send + 'static,
{
    match attach(1, hook).0 {
        Err(Error::Device(e)) => e,
        other => panic!("expected a device error, got {other:?}"),
    }
}

#[test]
fn region_info_asking_twice_or_too_much_is_refused() {
    // Asks for more again after the re-query.
    let e = discovery_error(|h, body| {
        if !is(h, Command::DeviceGetRegionInfo) {
            return Answer::Default;
        }
        let rq = RegionInfo::decode(body).unwrap();
        let info = RegionInfo {
            argsz: rq.argsz + 8,
            flags: RW,
            size: REGION_SIZE,
            ..RegionInfo::default()
        };
        Answer::Reply(region_info_reply(info), Vec::new())
    });
    assert!(
        matches!(
            e,
            DeviceError::BadReply {
                command: Command::DeviceGetRegionInfo,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("asks for argsz 48 after 40"), "{e}");

    // Asks for more than 64 KiB.
    let e = discovery_error(|h, _| {
        if !is(h, Command::DeviceGetRegionInfo) {
            return Answer::Default;
        }
        let info = RegionInfo {
            argsz: 1 << 30,
            flags: RW,
            size: REGION_SIZE,
            ..RegionInfo::default()
        };
        Answer::Reply(region_info_reply(info), Vec::new())
    });
    assert!(e.to_string().contains("asks for argsz 1073741824"), "{e}");

    // Answers for another region.
    let e = discovery_error(|h, _| {
        if !is(h, Command::DeviceGetRegionInfo) {
            return Answer::Default;
        }
        let info = RegionInfo {
            argsz: 32,
            index: 5,
            ..RegionInfo::default()
        };
        Answer::Reply(region_info_reply(info), Vec::new())
    });
    assert!(e.to_string().contains("answers region 5"), "{e}");

    // A sparse area past the end of the region.
    let e = discovery_error(|h, _| {
        if !is(h, Command::DeviceGetRegionInfo) {
            return Answer::Default;
        }
        let info = sparse_info(vec![SparseMmapArea {
            offset: REGION_SIZE - 0x1000,
            size: 0x2000,
        }]);
        Answer::Reply(region_info_reply(info), Vec::new())
    });
    assert!(e.to_string().contains("outside the region"), "{e}");
}

#[test]
fn hostile_counts_and_broken_discovery_fail_cleanly() {
    let e = discovery_error(|h, _| {
        if !is(h, Command::DeviceGetInfo) {
            return Answer::Default;
        }
        let mut out = Vec::new();
        DeviceInfo {
            argsz: 16,
            flags: VFIO_DEVICE_FLAGS_PCI,
            num_regions: u32::MAX,
            num_irqs: 5,
        }
        .encode_into(&mut out);
        Answer::Reply(out, Vec::new())
    });
    assert!(
        matches!(
            e,
            DeviceError::TooMany {
                what: "regions",
                count: u32::MAX,
                limit: 100
            }
        ),
        "{e}"
    );

    let e = discovery_error(|h, _| {
        if !is(h, Command::DeviceGetInfo) {
            return Answer::Default;
        }
        Answer::Reply(vec![1, 2, 3], Vec::new())
    });
    assert!(
        matches!(
            e,
            DeviceError::BadReply {
                command: Command::DeviceGetInfo,
                ..
            }
        ),
        "{e}"
    );

    let e = discovery_error(|h, _| {
        if !is(h, Command::DeviceGetIrqInfo) {
            return Answer::Default;
        }
        let mut out = Vec::new();
        IrqInfo {
            argsz: 16,
            flags: 1,
            index: 7,
            count: 1,
        }
        .encode_into(&mut out);
        Answer::Reply(out, Vec::new())
    });
    assert!(
        e.to_string().contains("answers IRQ index 7 instead of 0"),
        "{e}"
    );

    let e = discovery_error(|h, _| {
        if is(h, Command::DeviceGetRegionInfo) {
            Answer::Close
        } else {
            Answer::Default
        }
    });
    assert!(e.is_disconnected(), "{e}");
}

#[test]
fn unmappable_areas_stay_messages() {
    let file = memfile();
    let fd = file.as_file().as_raw_fd();
    // MMAP without an fd on region 0; an fd too short for its area on region 1; an unaligned
    // area on region 2.
    let (dev, _t) = attach(3, move |h, body| {
        if !is(h, Command::DeviceGetRegionInfo) {
            return Answer::Default;
        }
        let rq = RegionInfo::decode(body).unwrap();
        let mut info = match rq.index {
            0 => sparse_info(vec![SparseMmapArea {
                offset: 0,
                size: 0x1000,
            }]),
            1 => sparse_info(vec![SparseMmapArea {
                offset: 0,
                size: REGION_SIZE,
            }]),
            _ => sparse_info(vec![SparseMmapArea {
                offset: 0x800,
                size: 0x1000,
            }]),
        };
        info.index = rq.index;
        if rq.argsz < info.argsz {
            info.caps.clear();
            info.flags &= !VFIO_REGION_INFO_FLAG_CAPS;
            info.cap_offset = 0;
            let argsz = sparse_info(Vec::new()).argsz + 16;
            info.argsz = argsz;
            return Answer::Reply(region_info_reply(info), Vec::new());
        }
        let fds = match rq.index {
            0 => Vec::new(),
            1 => {
                // The area needs 64 KiB at offset 0x1000 of a 64 KiB file.
                info.offset = 0x1000;
                vec![fd]
            }
            _ => vec![fd],
        };
        Answer::Reply(region_info_reply(info), fds)
    });
    let dev = dev.unwrap();
    assert!(!dev.region(0).unwrap().mappable());
    for i in 1..3 {
        let r = dev.region(i).unwrap();
        assert!(r.mappable(), "region {i}");
        assert!(r.mapped_areas().is_empty(), "region {i} must not be mapped");
    }
    // Accesses still work, by message.
    dev.write(1, 0x10, &[1, 2, 3]).unwrap();
    let mut back = [0u8; 3];
    dev.read(1, 0x10, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3]);
}

/// Attaches to a scripted server whose REGION_READ/WRITE answers come from `bad`, once:
/// the first access gets `bad`'s answer, later ones the default.
fn with_bad_access(bad: Answer) -> (VfioUserDevice, JoinHandle<()>) {
    let mut bad = Some(bad);
    let (dev, t) = attach(1, move |h, _| {
        if is(h, Command::RegionRead) || is(h, Command::RegionWrite) {
            bad.take().unwrap_or(Answer::Default)
        } else {
            Answer::Default
        }
    });
    (dev.unwrap(), t)
}

fn access_reply(offset: u64, region: u32, count: u32, data: &[u8]) -> Answer {
    let mut out = Vec::new();
    RegionAccess {
        offset,
        region,
        count,
    }
    .encode_with_data(data, &mut out);
    Answer::Reply(out, Vec::new())
}

/// After a bad answer the connection is still in step: a write and a read round trip.
fn still_in_step(dev: &VfioUserDevice) {
    dev.write(0, 0x40, &[7, 7]).unwrap();
    let mut b = [0u8; 2];
    dev.read(0, 0x40, &mut b).unwrap();
    assert_eq!(b, [7, 7]);
}

#[test]
fn mismatched_access_replies_are_refused() {
    let cases: Vec<(Answer, bool, &str)> = vec![
        (
            access_reply(0x24, 0, 4, &[0; 4]),
            false,
            "answers region 0 at 0x24, 4 bytes",
        ),
        (
            access_reply(0x20, 1, 4, &[0; 4]),
            false,
            "answers region 1 at 0x20",
        ),
        (
            access_reply(0x20, 0, 2, &[0; 2]),
            false,
            "2 bytes instead of region 0 at 0x20, 4",
        ),
        (access_reply(0x20, 0, 4, &[0; 2]), false, "region access"),
        (access_reply(0x20, 0, 4, &[0; 6]), false, "region access"),
        (
            Answer::Reply(vec![0; 3], Vec::new()),
            false,
            "region access",
        ),
        (
            access_reply(0x20, 0, 3, &[]),
            true,
            "3 bytes instead of region 0 at 0x20, 4",
        ),
        (
            access_reply(0x28, 0, 4, &[]),
            true,
            "answers region 0 at 0x28",
        ),
        (Answer::Reply(Vec::new(), Vec::new()), true, "region access"),
    ];
    for (answer, write, want) in cases {
        let (dev, _t) = with_bad_access(answer);
        let e = if write {
            dev.write(0, 0x20, &[1, 2, 3, 4]).unwrap_err()
        } else {
            dev.read(0, 0x20, &mut [0u8; 4]).unwrap_err()
        };
        assert!(matches!(e, DeviceError::BadReply { .. }), "{e}");
        assert!(e.to_string().contains(want), "{e} should contain {want:?}");
        still_in_step(&dev);
    }
}

#[test]
fn error_replies_carry_the_servers_errno() {
    for errno in [libc::EINVAL as u32, libc::ENOSPC as u32, 0] {
        let (dev, _t) = with_bad_access(Answer::Error(errno));
        let e = dev.write(0, 0x20, &[1, 2, 3, 4]).unwrap_err();
        assert_eq!(e.server_errno(), Some(errno), "{e}");
        assert!(
            e.to_string()
                .starts_with("REGION_WRITE of region 0 at 0x20, 4 bytes: "),
            "{e}"
        );
        still_in_step(&dev);
    }
    // In the middle of a pipelined 40 KiB write: the whole write fails, the rest is
    // answered and the stream stays in step.
    let mut n = 0;
    let (dev, _t) = attach(1, move |h, _| {
        if is(h, Command::RegionWrite) {
            n += 1;
            if n == 1 {
                return Answer::Error(libc::ENOSPC as u32);
            }
        }
        Answer::Default
    });
    let dev = dev.unwrap();
    let e = dev.write(0, 0, &vec![1u8; 40 << 10]).unwrap_err();
    assert_eq!(e.server_errno(), Some(libc::ENOSPC as u32), "{e}");
    still_in_step(&dev);
}

#[test]
fn a_vanishing_server_fails_the_access() {
    let (dev, _t) = with_bad_access(Answer::Close);
    let e = dev.read(0, 0, &mut [0u8; 4]).unwrap_err();
    assert!(e.is_disconnected(), "{e}");
    let e = dev.write(0, 0, &[0u8; 4]).unwrap_err();
    assert!(e.is_disconnected(), "{e}");
}

fn io_fds_reply(layout: IoFdsLayout, subregions: Vec<IoSubregion>, index: u32) -> Vec<u8> {
    let count = subregions.len() as u32;
    let mut out = Vec::new();
    RegionIoFds {
        argsz: 16 + count * layout.stride(),
        flags: 0,
        index,
        count,
        layout,
        subregions,
    }
    .encode_into(&mut out);
    out
}

#[test]
fn io_fds_in_either_layout() {
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    let raw = efd.as_raw_fd();
    let entry = |fd_index| IoSubregion {
        offset: 0x10,
        size: 4,
        fd_index,
        kind: IoSubregion::TYPE_IOEVENTFD,
        flags: IoSubregion::FLAG_DATAMATCH,
        data: Some(0xabcd),
        shadow: None,
    };
    for layout in [IoFdsLayout::Spec, IoFdsLayout::LibVfioUser] {
        let (dev, _t) = attach(1, move |h, body| {
            if !is(h, Command::DeviceGetRegionIoFds) {
                return Answer::Default;
            }
            let rq = RegionIoFds::decode(body).unwrap();
            Answer::Reply(
                io_fds_reply(layout, vec![entry(0), entry(0)], rq.index),
                vec![raw],
            )
        });
        let dev = dev.unwrap();
        let fds = dev.region_io_fds(0).unwrap();
        assert_eq!(fds.len(), 2);
        for f in &fds {
            assert_eq!(
                (f.offset, f.size, f.flags),
                (0x10, 4, IoSubregion::FLAG_DATAMATCH)
            );
            assert_eq!(f.data, Some(0xabcd));
        }
        // One fd shared by both entries; it is the eventfd we sent.
        assert_eq!(
            std::sync::Arc::as_ptr(&fds[0].fd),
            std::sync::Arc::as_ptr(&fds[1].fd)
        );
        let owned: &OwnedFd = &fds[0].fd;
        let file = std::fs::File::from(owned.try_clone().unwrap());
        std::io::Write::write_all(&mut &file, &1u64.to_ne_bytes()).unwrap();
        assert_eq!(efd.read().unwrap(), 1);
    }
}

#[test]
fn io_fds_errors() {
    // Not supported.
    let (dev, _t) = attach(1, |_, _| Answer::Default);
    let dev = dev.unwrap();
    let e = dev.region_io_fds(0).unwrap_err();
    assert!(
        matches!(
            e,
            DeviceError::IoFdsNotSupported {
                index: 0,
                ref source
            } if source.server_errno() == Some(22)
        ),
        "{e}"
    );
    assert!(matches!(
        dev.region_io_fds(1),
        Err(DeviceError::NoSuchRegion { .. })
    ));

    // An fd index past the fds sent, and an entry outside the region.
    let bad_entries = [
        IoSubregion {
            fd_index: 1,
            ..IoSubregion::default()
        },
        IoSubregion {
            offset: REGION_SIZE,
            size: 4,
            ..IoSubregion::default()
        },
    ];
    for bad in bad_entries {
        let efd = EventFd::new(EFD_NONBLOCK).unwrap();
        let raw = efd.as_raw_fd();
        let (dev, _t) = attach(1, move |h, _| {
            if !is(h, Command::DeviceGetRegionIoFds) {
                return Answer::Default;
            }
            Answer::Reply(io_fds_reply(IoFdsLayout::Spec, vec![bad], 0), vec![raw])
        });
        let e = dev.unwrap().region_io_fds(0).unwrap_err();
        assert!(matches!(e, DeviceError::BadReply { .. }), "{e}");
    }

    // More entries announced than present.
    let (dev, _t) = attach(1, move |h, _| {
        if !is(h, Command::DeviceGetRegionIoFds) {
            return Answer::Default;
        }
        let mut out = io_fds_reply(IoFdsLayout::Spec, vec![IoSubregion::default()], 0);
        out[12] = 2; // count
        out[0] = 16 + 2 * 40; // argsz of two entries; one is present
        Answer::Reply(out, Vec::new())
    });
    let e = dev.unwrap().region_io_fds(0).unwrap_err();
    assert!(e.to_string().contains("entries present"), "{e}");
}

#[test]
fn irq_errors_name_the_vectors() {
    let (dev, _t) = attach(1, |h, _| {
        if is(h, Command::DeviceSetIrqs) {
            Answer::Error(libc::EINVAL as u32)
        } else {
            Answer::Default
        }
    });
    let dev = dev.unwrap();
    let e = dev.irq_action(2, IrqAction::Unmask, 1, 3).unwrap_err();
    assert_eq!(e.server_errno(), Some(libc::EINVAL as u32));
    assert!(e.to_string().contains("IRQ index 2, vectors 1+3"), "{e}");
    assert!(matches!(dev.reset(), Err(DeviceError::ResetNotSupported)));
}

#[test]
fn a_region_without_sparse_caps_is_mapped_whole() {
    let file = memfile();
    let fd = file.as_file().as_raw_fd();
    let (dev, _t) = attach(1, move |h, body| {
        if !is(h, Command::DeviceGetRegionInfo) {
            return Answer::Default;
        }
        let rq = RegionInfo::decode(body).unwrap();
        let mut info = RegionInfo {
            flags: RW | VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS,
            index: rq.index,
            cap_offset: 32,
            size: REGION_SIZE,
            caps: vec![RegionCap::Type {
                region_type: 3,
                subtype: 1,
            }],
            ..RegionInfo::default()
        };
        info.argsz = info.encoded_len() as u32;
        Answer::Reply(region_info_reply(info), vec![fd])
    });
    let dev = dev.unwrap();
    assert_eq!(dev.flags(), VFIO_DEVICE_FLAGS_PCI);
    assert!(dev.connection().is_connected());
    let r = dev.region(0).unwrap();
    assert_eq!(r.index(), 0);
    assert_eq!(r.region_type(), Some((3, 1)));
    assert_eq!(r.caps().len(), 1);
    assert!(r.sparse_areas().is_none());
    assert_eq!(r.fd_offset(), 0);
    assert_eq!(r.fd().unwrap().metadata().unwrap().len(), REGION_SIZE);
    let areas = r.mapped_areas();
    assert_eq!(areas.len(), 1);
    assert_eq!((areas[0].offset(), areas[0].size()), (0, REGION_SIZE));
}

#[test]
fn io_fds_are_asked_again_and_checked() {
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    let shadow = EventFd::new(EFD_NONBLOCK).unwrap();
    let (raw, raw_shadow) = (efd.as_raw_fd(), shadow.as_raw_fd());
    let entries: Vec<IoSubregion> = (0..20)
        .map(|i| IoSubregion {
            offset: i * 8,
            size: 8,
            fd_index: 0,
            kind: vfio_user_client::protocol::IoSubregion::TYPE_IOEVENTFD_SHADOW,
            flags: 0,
            data: Some(0),
            shadow: Some((1, i * 0x1000)),
        })
        .collect();
    let mut asked = Vec::new();
    let (dev, _t) = attach(1, move |h, body| {
        if !is(h, Command::DeviceGetRegionIoFds) {
            return Answer::Default;
        }
        let rq = RegionIoFds::decode(body).unwrap();
        asked.push(rq.argsz);
        let full = io_fds_reply(IoFdsLayout::LibVfioUser, entries.clone(), 0);
        let needed = u32::from_le_bytes(full[..4].try_into().unwrap());
        if rq.argsz < needed {
            // The size needed and the count, no entries, no fds.
            let mut head = full[..16].to_vec();
            head[..4].copy_from_slice(&needed.to_le_bytes());
            return Answer::Reply(head, Vec::new());
        }
        assert_eq!(asked.len(), 2);
        Answer::Reply(full, vec![raw, raw_shadow])
    });
    let fds = dev.unwrap().region_io_fds(0).unwrap();
    assert_eq!(fds.len(), 20);
    for (i, f) in fds.iter().enumerate() {
        assert_eq!(f.offset, i as u64 * 8);
        let (sh, off) = f.shadow.as_ref().unwrap();
        assert_eq!(*off, i as u64 * 0x1000);
        assert!(!std::sync::Arc::ptr_eq(sh, &f.fd));
    }

    // Wrong region, a second "ask again", a server error other than "not supported".
    let cases: Vec<(Answer, &str)> = vec![
        (
            Answer::Reply(io_fds_reply(IoFdsLayout::Spec, Vec::new(), 4), Vec::new()),
            "for region 4 instead of 0",
        ),
        (
            Answer::Reply(
                {
                    let mut v = io_fds_reply(IoFdsLayout::Spec, Vec::new(), 0);
                    v[..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
                    v
                },
                Vec::new(),
            ),
            "asks for argsz 1048576",
        ),
        (
            Answer::Error(libc::EIO as u32),
            "DEVICE_GET_REGION_IO_FDS of region 0",
        ),
    ];
    for (answer, want) in cases {
        let mut answer = Some(answer);
        let (dev, _t) = attach(1, move |h, _| {
            if is(h, Command::DeviceGetRegionIoFds) {
                answer.take().unwrap()
            } else {
                Answer::Default
            }
        });
        let e = dev.unwrap().region_io_fds(0).unwrap_err();
        assert!(e.to_string().contains(want), "{e} should contain {want:?}");
    }
}

#[test]
fn requests_after_a_disconnect_fail_at_once() {
    let (dev, _t) = with_bad_access(Answer::Close);
    assert!(dev.read(0, 0, &mut [0u8; 4]).unwrap_err().is_disconnected());
    // Every path that sends, including the pipelined ones.
    let mut big = vec![0u8; REGION_SIZE as usize];
    assert!(dev.read(0, 0, &mut big).unwrap_err().is_disconnected());
    assert!(dev.write(0, 0, &big).unwrap_err().is_disconnected());
    assert!(dev.write_posted(0, 0, &big).unwrap_err().is_disconnected());
    let efd = EventFd::new(0).unwrap();
    assert!(dev
        .set_irq_eventfds(0, IrqAction::Trigger, 0, &[Some(&efd)])
        .unwrap_err()
        .is_disconnected());
    assert!(dev.region_io_fds(0).unwrap_err().is_disconnected());
    assert!(dev.disable_irqs(0).unwrap_err().is_disconnected());
}

#[test]
fn discovery_errors_name_the_request() {
    let cases: Vec<(Command, Answer, &str)> = vec![
        (
            Command::DeviceGetInfo,
            Answer::Error(libc::EIO as u32),
            "DEVICE_GET_INFO: ",
        ),
        (
            Command::DeviceGetIrqInfo,
            Answer::Error(libc::EIO as u32),
            "DEVICE_GET_IRQ_INFO of IRQ index 0: ",
        ),
        (
            Command::DeviceGetIrqInfo,
            Answer::Reply(vec![0; 5], Vec::new()),
            "bad DEVICE_GET_IRQ_INFO reply",
        ),
        (
            Command::DeviceGetInfo,
            Answer::Reply(
                {
                    let mut out = Vec::new();
                    DeviceInfo {
                        argsz: 16,
                        flags: VFIO_DEVICE_FLAGS_PCI,
                        num_regions: 9,
                        num_irqs: 51,
                    }
                    .encode_into(&mut out);
                    out
                },
                Vec::new(),
            ),
            "51 IRQ indexes; at most 50",
        ),
    ];
    for (command, answer, want) in cases {
        let mut answer = Some(answer);
        let e = discovery_error(move |h, _| {
            if is(h, command) {
                answer.take().unwrap_or(Answer::Default)
            } else {
                Answer::Default
            }
        });
        assert!(e.to_string().contains(want), "{e} should contain {want:?}");
    }
}

#[test]
fn a_refused_reset_keeps_the_errno() {
    let (dev, _t) = attach(1, |h, _| {
        if is(h, Command::DeviceGetInfo) {
            let mut out = Vec::new();
            DeviceInfo {
                argsz: 16,
                flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
                num_regions: 1,
                num_irqs: 3,
            }
            .encode_into(&mut out);
            Answer::Reply(out, Vec::new())
        } else {
            Answer::Default
        }
    });
    let dev = dev.unwrap();
    assert!(dev.resettable());
    let e = dev.reset().unwrap_err();
    assert_eq!(e.server_errno(), Some(libc::EINVAL as u32));
    assert!(e.to_string().starts_with("DEVICE_RESET: "), "{e}");
}
