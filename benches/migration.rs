// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The migration layer, against a scripted peer that answers from ready buffers, measured
//! against the socket alone in the same run:
//!
//! - `mig_data_read_<size>`: 64 MiB of device data read through [`Migration::reader`] in
//!   MIG_DATA_READs of `size` (`ours`), and the same requests and replies exchanged on a raw
//!   `UnixStream` with `write_all` / `read_exact` (`floor`), against the same peer.
//! - `dma_logging_report_64GiB`: [`Migration::dirty_report_into`] over one 64 GiB DMA
//!   window at 4 KiB pages (2 MiB of bitmap, split by the receive limit) merged with the
//!   client's dirty log, into the bitmap of the previous round (`ours`), and the same reports
//!   exchanged on a raw socket (`floor`).
//! - `state_round_trip`: one arc (RUNNING → STOP, then back) through
//!   [`Migration::set_state`] (`ours`) and the same DEVICE_FEATURE exchange on a raw socket
//!   (`floor`); the mean is per arc pair.
//!
//! Run with `cargo bench --bench migration`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;

use criterion::{Criterion, SamplingMode, Throughput};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_PROBE, VFIO_MIGRATION_STOP_COPY,
};
use vfio_user_client::dma::DmaMapper;
use vfio_user_client::migration::{DeviceState, Migration};
use vfio_user_client::protocol::{
    Command, DeviceFeature, DeviceInfo, DmaLoggingReport, Header, MigData, MigDeviceState,
    MigrationFeature, Version,
};
use vfio_user_client::{ConnectOptions, Connection, DeviceOptions, VfioUserDevice};
use vfio_user_sample_server::test_support::bench as support;
use vfio_user_sample_server::test_support::guest::{memory, region};

const DATA: usize = 64 << 20;
const READ_SIZES: [(u32, &str); 2] = [(64 << 10, "64KiB"), (1 << 20, "1MiB")];
const GUEST: u64 = 64 << 30;
const PAGE: u64 = 4096;

/// The peer: answers every request from ready buffers, in order.
struct Peer {
    state: u32,
    /// A zero-filled buffer for data and bitmaps.
    zeros: Vec<u8>,
}

impl Peer {
    fn answer(&mut self, h: &Header, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match Command::from_u16(h.command) {
            Some(Command::Version) => Version {
                major: 0,
                minor: 0,
                json: Some(
                    r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,
                    "migration":{"pgsize":4096,"max_bitmap_size":268435456}}}"#
                        .into(),
                ),
            }
            .encode_into(&mut out),
            Some(Command::DeviceGetInfo) => DeviceInfo {
                argsz: 16,
                flags: 0,
                num_regions: 0,
                num_irqs: 0,
            }
            .encode_into(&mut out),
            Some(Command::DeviceFeature) => return self.feature(body),
            Some(Command::MigDataRead) => {
                let rq = MigData::decode(body).expect("mig data");
                let n = rq.size as usize;
                MigData {
                    argsz: 8 + rq.size,
                    size: rq.size,
                }
                .encode_with_data(&self.zeros[..n], &mut out);
            }
            _ => {}
        }
        out
    }

    fn feature(&mut self, body: &[u8]) -> Vec<u8> {
        let rq = DeviceFeature::decode(body).expect("feature");
        if rq.flags & VFIO_DEVICE_FEATURE_PROBE != 0 {
            return body.to_vec();
        }
        let mut data = Vec::new();
        match rq.feature() {
            VFIO_DEVICE_FEATURE_MIGRATION => MigrationFeature {
                flags: u64::from(VFIO_MIGRATION_STOP_COPY),
            }
            .encode_into(&mut data),
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE if rq.flags & VFIO_DEVICE_FEATURE_GET != 0 => {
                MigDeviceState {
                    device_state: self.state,
                    data_fd: 0,
                }
                .encode_into(&mut data)
            }
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
                self.state = MigDeviceState::decode(&rq.data)
                    .expect("state")
                    .device_state;
                return body.to_vec();
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => {
                let r = DmaLoggingReport::decode(&rq.data).expect("report");
                let len = (r.length / r.page_size).div_ceil(64) as usize * 8;
                data.reserve(24 + len);
                r.encode_into(&mut data);
                data.extend_from_slice(&self.zeros[..len]);
            }
            _ => return body.to_vec(),
        }
        let mut out = Vec::with_capacity(8 + data.len());
        DeviceFeature {
            argsz: (8 + data.len()) as u32,
            flags: rq.flags,
            data,
        }
        .encode_into(&mut out);
        out
    }
}

/// Runs a peer on `sock` until the other end closes.
fn serve(mut sock: UnixStream) {
    let mut peer = Peer {
        state: DeviceState::Running as u32,
        zeros: vec![0; 4 << 20],
    };
    let mut head = [0u8; Header::SIZE];
    let mut body = Vec::new();
    let mut reply = Vec::new();
    while sock.read_exact(&mut head).is_ok() {
        let h = Header::decode(&head, u32::MAX).expect("header");
        body.resize(h.payload_len(), 0);
        if sock.read_exact(&mut body).is_err() {
            return;
        }
        if h.no_reply() {
            continue;
        }
        let payload = peer.answer(&h, &body);
        let rh = Header::reply(&h, payload.len()).expect("reply");
        reply.clear();
        reply.extend_from_slice(&rh.to_bytes());
        reply.extend_from_slice(&payload);
        if sock.write_all(&reply).is_err() {
            return;
        }
    }
}

fn device() -> VfioUserDevice {
    let (client, server) = UnixStream::pair().expect("socketpair");
    support::placement().server(|| thread::spawn(move || serve(server)));
    let options = ConnectOptions {
        offer: vfio_user_client::Offer {
            twin_socket: false,
            ..Default::default()
        },
        ..ConnectOptions::default()
    };
    let conn = Connection::connect(client, &options).expect("connect");
    VfioUserDevice::new(conn, &DeviceOptions::default()).expect("device")
}

/// A raw client of the peer: sends `payload` as `command`, reads the reply into `buf`.
struct Raw {
    sock: UnixStream,
    id: u16,
    msg: Vec<u8>,
}

impl Raw {
    fn new() -> Raw {
        let (client, server) = UnixStream::pair().expect("socketpair");
        support::placement().server(|| thread::spawn(move || serve(server)));
        Raw {
            sock: client,
            id: 0,
            msg: Vec::new(),
        }
    }

    fn call(&mut self, command: Command, payload: &[u8], buf: &mut Vec<u8>) {
        self.id = self.id.wrapping_add(1) & 0x7fff;
        let h = Header::command(self.id, command, payload.len(), false).expect("header");
        self.msg.clear();
        self.msg.extend_from_slice(&h.to_bytes());
        self.msg.extend_from_slice(payload);
        self.sock.write_all(&self.msg).expect("send");
        let mut head = [0u8; Header::SIZE];
        self.sock.read_exact(&mut head).expect("reply header");
        let h = Header::decode(&head, u32::MAX).expect("header");
        buf.resize(h.payload_len(), 0);
        self.sock.read_exact(buf).expect("reply body");
    }
}

fn mig_data_read(c: &mut Criterion, size: u32, label: &str) {
    let group_name = format!("mig_data_read_{label}");
    let mut group = c.benchmark_group(&group_name);
    group.throughput(Throughput::Bytes(DATA as u64));
    group.sampling_mode(SamplingMode::Flat);
    let dev = device();
    let mut m = Migration::new(&dev).expect("migration");
    m.set_state(DeviceState::StopCopy).expect("stop copy");
    let mut buf = vec![0u8; size as usize];
    let at = support::placement();
    at.client(|| {
        group.bench_function("ours", |b| {
            b.iter(|| {
                let mut r = m.reader().expect("reader");
                let mut left = DATA;
                while left > 0 {
                    let n = r.read(&mut buf).expect("read");
                    left -= n;
                }
            })
        })
    });
    let mut raw = Raw::new();
    let mut rq = Vec::new();
    MigData {
        argsz: 8 + size,
        size,
    }
    .encode_into(&mut rq);
    let mut reply = Vec::new();
    at.client(|| {
        group.bench_function("floor", |b| {
            b.iter(|| {
                for _ in 0..DATA / size as usize {
                    raw.call(Command::MigDataRead, &rq, &mut reply);
                }
            })
        })
    });
    group.finish();
}

fn logging_report(c: &mut Criterion) {
    let mut group = c.benchmark_group("dma_logging_report_64GiB");
    group.throughput(Throughput::Bytes(GUEST));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    let dev = device();
    // 64 GiB of address space, never touched: no memory is used.
    let mem = Arc::new(memory(vec![region(0, GUEST as usize, None, true)]));
    let mapper = DmaMapper::new(dev.connection(), mem);
    mapper.map(0, 0, GUEST).expect("map");
    let mut m = Migration::new(&dev).expect("migration");
    m.start_dirty_logging(&mapper).expect("start");
    let at = support::placement();
    // Reused from round to round, as in pre-copy.
    let mut bitmap = m.dirty_report().expect("report");
    at.client(|| {
        group.bench_function("ours", |b| {
            b.iter(|| {
                // A few pages the client wrote for the server, merged in.
                mapper.dirty_log().mark(0x1000, 0x3000);
                m.dirty_report_into(&mut bitmap).expect("report");
            })
        })
    });
    assert_eq!(bitmap.count(), 3);
    // The client's split: bitmaps as large as its receive limit (1 MiB of data and 64 KiB
    // of head room) allows, less the message's heads.
    let per_reply = ((1u64 << 20) + (64 << 10) - 48) / 8 * 8;
    let chunk_pages = per_reply * 8;
    let mut raw = Raw::new();
    let mut reply = Vec::new();
    at.client(|| {
        group.bench_function("floor", |b| {
            b.iter(|| {
                let mut iova = 0;
                while iova < GUEST {
                    let len = (chunk_pages * PAGE).min(GUEST - iova);
                    let mut data = Vec::new();
                    DmaLoggingReport {
                        iova,
                        length: len,
                        page_size: PAGE,
                        bitmap: Vec::new(),
                    }
                    .encode_into(&mut data);
                    let mut payload = Vec::new();
                    DeviceFeature::new(
                        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
                        VFIO_DEVICE_FEATURE_GET,
                        data,
                        24 + (len / PAGE / 8) as usize,
                    )
                    .encode_into(&mut payload);
                    raw.call(Command::DeviceFeature, &payload, &mut reply);
                    iova += len;
                }
            })
        })
    });
    group.finish();
}

fn state_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_round_trip");
    let dev = device();
    let mut m = Migration::new(&dev).expect("migration");
    let at = support::placement();
    at.client(|| {
        group.bench_function("ours", |b| {
            b.iter(|| {
                m.set_state(DeviceState::Stop).expect("stop");
                m.set_state(DeviceState::Running).expect("run");
            })
        })
    });
    let mut raw = Raw::new();
    let mut reply = Vec::new();
    let set = |state: DeviceState| {
        let mut payload = Vec::new();
        DeviceFeature::set_mig_device_state(state as u32).encode_into(&mut payload);
        payload
    };
    let (stop, run) = (set(DeviceState::Stop), set(DeviceState::Running));
    at.client(|| {
        group.bench_function("floor", |b| {
            b.iter(|| {
                raw.call(Command::DeviceFeature, &stop, &mut reply);
                raw.call(Command::DeviceFeature, &run, &mut reply);
            })
        })
    });
    group.finish();
}

fn main() {
    let started = support::run_started();
    let mut criterion = support::criterion();
    println!("{}", support::placement().describe());
    for (size, label) in READ_SIZES {
        let group = format!("mig_data_read_{label}");
        if support::selected(&group) {
            mig_data_read(&mut criterion, size, label);
        }
    }
    if support::selected("dma_logging_report_64GiB") {
        logging_report(&mut criterion);
    }
    if support::selected("state_round_trip") {
        state_round_trip(&mut criterion);
    }
    criterion.final_summary();
    for (_, label) in READ_SIZES {
        support::report(
            &format!("mig_data_read_{label}"),
            &["ours", "floor"],
            &[("floor", "ours")],
            Some(DATA as u64),
            started,
        );
    }
    support::report(
        "dma_logging_report_64GiB",
        &["ours", "floor"],
        &[("ours", "floor")],
        Some(GUEST / (PAGE * 8)),
        started,
    );
    for id in ["ours", "floor"] {
        if let Some(e) = support::estimate("dma_logging_report_64GiB", id, started) {
            let gib = (GUEST >> 30) as f64 / (e.mean / 1e9);
            println!("dma_logging_report_64GiB/{id}: {gib:.0} GiB of guest memory per second");
        }
    }
    support::report(
        "state_round_trip",
        &["ours", "floor"],
        &[("ours", "floor")],
        None,
        started,
    );
}
