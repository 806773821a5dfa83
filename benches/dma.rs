// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The DMA layer, measured against a reference in the same run:
//!
//! - `dma_map_unmap_<n>`: map then unmap `n` 4 KiB fd-backed windows (1,000 and 65,535).
//!   `ours` pipelines each half in one [`DmaMapper`] transaction; `crates.io` is the
//!   `vfio_user` crate's `Client`, one `dma_map` / `dma_unmap` round trip at a time, against
//!   a second, identical sample server (DMA engine device).
//! - `dma_read_<size>`: a server-side peer sends `DMA_READ` of 4 KiB, 64 KiB and 1 MiB and
//!   reads the reply. `ours` is served by this crate's [`DmaRequestHandler`] through the
//!   connection's event loop (main socket) and through a twin socket (`ours-twin`); `floor`
//!   is a raw `UnixStream::pair()` whose other end answers with a ready buffer of the same
//!   size (blocking `read_exact` / `write_all`): the socket cost alone.
//!
//! - `dma_mode_read_<size>` / `dma_mode_write_<size>`: what one DMA access of 4 KiB, 64 KiB
//!   and 1 MiB costs the server in each [`DmaMode`]. `fd-mapped`: the window came with its
//!   memfd, which the server side maps (as a server does) and copies from or into.
//!   `message-only`: the window came without an fd; the server side sends `DMA_READ` /
//!   `DMA_WRITE` and reads the reply, served by this crate's handler on the event loop
//!   (main socket). Same guest memory (a memfd), same connection.
//! - `dma_engine_copy_<size>`: the sample DMA engine copies 4 KiB, 64 KiB or 1 MiB of guest
//!   memory (one read and one write of that size) when its doorbell is rung, a REGION_WRITE
//!   round trip. `fd-mapped`: through its mappings of the guest memfd; `message-only`:
//!   through DMA_READ and DMA_WRITE to this crate.
//!
//! Ratios of the means are printed at the end. Run with `cargo bench --bench dma`; see
//! BENCHMARKS.md.
//!
//! [`DmaRequestHandler`]: vfio_user_client::dma::DmaRequestHandler

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, SamplingMode};
use vfio_user_client::dma::{DmaMapper, DmaMode, DmaOptions};
use vfio_user_client::protocol::{Command, DmaAccess, Header, Version};
use vfio_user_client::{ConnectOptions, Connection, DeviceOptions, VfioUserDevice};
use vfio_user_sample_server::test_support::bench as support;
use vfio_user_sample_server::test_support::guest::{memfd, memory, region};
use vfio_user_sample_server::wire::RawEndpoint;
use vfio_user_sample_server::wire::RawMsg;
use vfio_user_sample_server::{DmaEngine, DmaEngineStatus, Server, ServerConfig, ServerHandle};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PAGE: u64 = 4096;
const MAP_COUNTS: [u64; 2] = [1_000, 65_535];
const READ_SIZES: [(usize, &str); 3] = [(4 << 10, "4KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];

fn guest(size: u64, file: Option<File>) -> GuestMemoryMmap {
    memory(vec![region(0, size as usize, file.map(|f| (f, 0)), true)])
}

/// A DMA engine server. Past the kernel's mmap count limit (65,530 per process by default,
/// and the server runs in this process) windows are recorded without being mapped, for
/// both clients alike.
fn dma_server(count: u64) -> ServerHandle {
    support::placement().server(|| {
        let (dev, _handle) = DmaEngine::new();
        let config = ServerConfig {
            max_dma_maps: Some(65_535),
            mmap_dma_windows: count < 60_000,
            ..support::server_config()
        };
        Server::new(config, Box::new(dev))
            .listen_temp()
            .expect("sample server")
    })
}

fn bench_map_ours(c: &mut Criterion, count: u64) {
    let server = dma_server(count);
    let path = server.socket_path().expect("socket path");
    let conn = Connection::connect(path, &ConnectOptions::default()).expect("connect");
    let mem = Arc::new(guest(count * PAGE, Some(memfd(count * PAGE))));
    let mapper = DmaMapper::new(&conn, mem);
    let run = || {
        let mut tx = mapper.transaction();
        for i in 0..count {
            tx.map(i * PAGE, i * PAGE, PAGE).expect("map");
        }
        tx.commit().expect("maps");
        let mut tx = mapper.transaction();
        for i in 0..count {
            tx.unmap(i * PAGE, PAGE).expect("unmap");
        }
        tx.commit().expect("unmaps");
    };
    run();
    support::placement().client(|| {
        let mut group = c.benchmark_group(format!("dma_map_unmap_{count}"));
        group.sampling_mode(SamplingMode::Flat).sample_size(10);
        group.bench_function("ours", |b| b.iter(run));
        group.finish();
    });
    drop(mapper);
    drop(conn);
    server.stop();
}

fn bench_map_crates_io(c: &mut Criterion, count: u64) {
    let server = dma_server(count);
    let path = server.socket_path().expect("socket path");
    let mut client = match vfio_user::Client::new(path) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("dma_map_unmap_{count}/crates.io: skipped, Client::new failed: {e:?}");
            return;
        }
    };
    let file = memfd(count * PAGE);
    let fd = file.as_raw_fd();
    let mut run = || {
        for i in 0..count {
            client.dma_map(i * PAGE, i * PAGE, PAGE, fd).expect("map");
        }
        for i in 0..count {
            client.dma_unmap(i * PAGE, PAGE).expect("unmap");
        }
    };
    run();
    support::placement().client(|| {
        let mut group = c.benchmark_group(format!("dma_map_unmap_{count}"));
        group.sampling_mode(SamplingMode::Flat).sample_size(10);
        group.bench_function("crates.io", |b| b.iter(&mut run));
        group.finish();
    });
    drop(client);
    server.stop();
}

/// The server side of the DMA_READ benchmarks: sends a request, reads the whole reply.
struct Requester {
    sock: UnixStream,
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl Requester {
    fn new(sock: UnixStream, size: usize) -> Requester {
        let mut payload = Vec::new();
        DmaAccess {
            address: 0x1000,
            count: size as u64,
        }
        .encode_into(&mut payload);
        let header = Header::command(7, Command::DmaRead, payload.len(), false).expect("header");
        let mut request = header.to_bytes().to_vec();
        request.extend_from_slice(&payload);
        Requester {
            sock,
            request,
            reply: vec![0; Header::SIZE + DmaAccess::HEAD_SIZE + size],
        }
    }

    /// DMA_WRITE of `size` bytes at 0x1000; the reply is the 16-byte head.
    fn write(sock: UnixStream, size: usize) -> Requester {
        let mut payload = Vec::new();
        DmaAccess {
            address: 0x1000,
            count: size as u64,
        }
        .encode_with_data(&vec![0xa5; size], &mut payload);
        let header = Header::command(8, Command::DmaWrite, payload.len(), false).expect("header");
        let mut request = header.to_bytes().to_vec();
        request.extend_from_slice(&payload);
        Requester {
            sock,
            request,
            reply: vec![0; Header::SIZE + DmaAccess::HEAD_SIZE],
        }
    }

    fn round_trip(&mut self) {
        self.sock.write_all(&self.request).expect("request");
        self.sock.read_exact(&mut self.reply).expect("reply");
        black_box(&self.reply);
    }
}

/// Answers our client's VERSION request; with `twin`, grants twin-socket mode and hands
/// over that socket.
fn answer_version(sock: &UnixStream, twin: Option<&UnixStream>) {
    let sock = sock.try_clone().expect("clone");
    let mut peer = RawEndpoint::new(sock, Duration::from_secs(20));
    let version = peer.recv().expect("VERSION");
    let json = match twin {
        Some(_) => {
            r#"{"capabilities":{"max_msg_fds":16,"twin_socket":{"supported":true,"fd_index":0}}}"#
        }
        None => r#"{"capabilities":{"max_msg_fds":16}}"#,
    };
    let mut payload = Vec::new();
    Version {
        major: 0,
        minor: 0,
        json: Some(json.to_string()),
    }
    .encode_into(&mut payload);
    let fds: Vec<_> = twin.iter().map(|t| t.as_raw_fd()).collect();
    peer.reply(&version.header, &payload, &fds)
        .expect("VERSION reply");
}

/// Answers the one DMA_MAP that sets up the handler's table.
fn answer_map(sock: &UnixStream) -> RawMsg {
    let sock = sock.try_clone().expect("clone");
    let mut peer = RawEndpoint::new(sock, Duration::from_secs(20));
    let map = peer.recv().expect("DMA_MAP");
    peer.reply(&map.header, &[], &[]).expect("DMA_MAP reply");
    map
}

/// Maps guest memory 0..4 MiB through `mapper`, answering as the server; returns the
/// DMA_MAP as it came (with its fds).
fn map_4mib<AS>(mapper: &DmaMapper<AS>, server: &UnixStream) -> RawMsg
where
    AS: vm_memory::GuestAddressSpace<M = GuestMemoryMmap> + Send + Sync + 'static,
{
    std::thread::scope(|s| {
        let t = s.spawn(|| mapper.map(0, 0, 4 << 20));
        let map = answer_map(server);
        t.join().expect("map thread").expect("map");
        map
    })
}

/// Unmaps everything `mapper` mapped, answering as the server.
fn unmap_all<AS>(mapper: &DmaMapper<AS>, server: &UnixStream)
where
    AS: vm_memory::GuestAddressSpace<M = GuestMemoryMmap> + Send + Sync + 'static,
{
    std::thread::scope(|s| {
        let t = s.spawn(|| mapper.unmap_all());
        let sock = server.try_clone().expect("clone");
        let mut peer = RawEndpoint::new(sock, Duration::from_secs(20));
        let unmap = peer.recv().expect("DMA_UNMAP");
        peer.reply(&unmap.header, &unmap.payload, &[])
            .expect("DMA_UNMAP reply");
        t.join().expect("unmap thread").expect("unmap");
    });
}

/// One DMA access of `size` bytes in each mode: the server side's copy through its own
/// mapping of the window's fd, against a DMA_READ / DMA_WRITE round trip.
fn bench_modes(c: &mut Criterion, size: usize, label: &str) {
    let (client, server) = UnixStream::pair().expect("socket pair");
    let answer = std::thread::spawn(move || {
        answer_version(&server, None);
        server
    });
    let conn = support::placement()
        .client(|| Connection::connect(client, &ConnectOptions::default()).expect("connect"));
    let server = answer.join().expect("VERSION answer");
    let mem = Arc::new(guest(4 << 20, Some(memfd(4 << 20))));
    mem.write_slice(&vec![0x5a; 2 << 20], GuestAddress(0))
        .expect("fill");

    // fd-mapped: the server maps the fd it was sent and copies.
    let mapper = DmaMapper::new(&conn, Arc::clone(&mem));
    let mut map = map_4mib(&mapper, &server);
    let fd = map.fds.pop().expect("an fd with the DMA_MAP");
    let offset = vfio_user_client::protocol::DmaMap::decode(&map.payload)
        .expect("DMA_MAP")
        .offset;
    let view = memory(vec![region(
        0,
        4 << 20,
        Some((File::from(fd), offset)),
        true,
    )]);
    let mut buf = vec![0u8; size];
    support::placement().server(|| {
        c.benchmark_group(format!("dma_mode_read_{label}"))
            .bench_function("fd-mapped", |b| {
                b.iter(|| view.read_slice(black_box(&mut buf), GuestAddress(0x1000)))
            });
        c.benchmark_group(format!("dma_mode_write_{label}"))
            .bench_function("fd-mapped", |b| {
                b.iter(|| view.write_slice(black_box(&buf), GuestAddress(0x1000)))
            });
    });
    unmap_all(&mapper, &server);

    // message-only: no fd; DMA_READ / DMA_WRITE served from the window table.
    let options = DmaOptions {
        mode: DmaMode::MessageOnly,
        ..DmaOptions::default()
    };
    let mapper = DmaMapper::new(&conn, mem).with_options(&options);
    let map = map_4mib(&mapper, &server);
    assert!(map.fds.is_empty(), "message-only sent an fd");
    let mut reads = Requester::new(server.try_clone().expect("clone"), size);
    let mut writes = Requester::write(server.try_clone().expect("clone"), size);
    reads.round_trip();
    writes.round_trip();
    support::placement().server(|| {
        c.benchmark_group(format!("dma_mode_read_{label}"))
            .bench_function("message-only", |b| b.iter(|| reads.round_trip()));
        c.benchmark_group(format!("dma_mode_write_{label}"))
            .bench_function("message-only", |b| b.iter(|| writes.round_trip()));
    });
    drop(mapper);
    drop(conn);
}

/// Our client serving DMA_READ, on its main socket or on a twin socket.
fn bench_read_ours(c: &mut Criterion, size: usize, label: &str, twin: bool) {
    let (client, server) = UnixStream::pair().expect("socket pair");
    let (ours, theirs) = if twin {
        let (ours, theirs) = UnixStream::pair().expect("twin pair");
        (Some(ours), Some(theirs))
    } else {
        (None, None)
    };
    let answer = std::thread::spawn(move || {
        answer_version(&server, ours.as_ref());
        server
    });
    // Our client serves the requests on its event loop's thread: the client side.
    let conn = support::placement()
        .client(|| Connection::connect(client, &ConnectOptions::default()).expect("connect"));
    let server = answer.join().expect("VERSION answer");
    let dma_socket = match theirs {
        Some(theirs) => theirs,
        None => server.try_clone().expect("clone"),
    };
    let mem = Arc::new(guest(4 << 20, None));
    mem.write_slice(&vec![0x5a; 2 << 20], GuestAddress(0))
        .expect("fill");
    let mapper = DmaMapper::new(&conn, mem);
    map_4mib(&mapper, &server);
    let mut requester = Requester::new(dma_socket, size);
    requester.round_trip();
    assert!(requester.reply[Header::SIZE + DmaAccess::HEAD_SIZE..]
        .iter()
        .all(|&b| b == 0x5a));
    let id = if twin { "ours-twin" } else { "ours" };
    // The requester plays the device server: the server side.
    support::placement().server(|| {
        c.benchmark_group(format!("dma_read_{label}"))
            .bench_function(id, |b| b.iter(|| requester.round_trip()));
    });
    drop(mapper);
    drop(conn);
}

fn bench_read_floor(c: &mut Criterion, size: usize, label: &str) {
    let (client, server) = UnixStream::pair().expect("socket pair");
    let echo = support::placement().client(|| {
        std::thread::spawn(move || {
            let mut client = client;
            let mut request = [0u8; Header::SIZE + DmaAccess::HEAD_SIZE];
            let mut reply = vec![0x5au8; Header::SIZE + DmaAccess::HEAD_SIZE + size];
            while client.read_exact(&mut request).is_ok() {
                reply[..request.len()].copy_from_slice(&request);
                if client.write_all(&reply).is_err() {
                    break;
                }
            }
        })
    });
    let mut requester = Requester::new(server, size);
    support::placement().server(|| {
        c.benchmark_group(format!("dma_read_{label}"))
            .bench_function("floor", |b| b.iter(|| requester.round_trip()));
    });
    drop(requester);
    echo.join().expect("echo thread");
}

/// The sample DMA engine copying `size` bytes per doorbell, with guest memory mapped by fd
/// or reached through messages only.
fn bench_engine(c: &mut Criterion, size: usize, label: &str) {
    for (id, mode) in [
        ("fd-mapped", DmaMode::Mapped),
        ("message-only", DmaMode::MessageOnly),
    ] {
        let (device, engine) = DmaEngine::new();
        let server = support::placement().server(|| {
            Server::new(support::server_config(), Box::new(device))
                .listen_temp()
                .expect("sample server")
        });
        let path = server.socket_path().expect("socket path");
        let conn = support::placement()
            .client(|| Connection::connect(path, &ConnectOptions::default()).expect("connect"));
        let mem = Arc::new(guest(8 << 20, Some(memfd(8 << 20))));
        mem.write_slice(&vec![0x5a; size], GuestAddress(0x1000))
            .expect("fill");
        let options = DmaOptions {
            mode,
            ..DmaOptions::default()
        };
        let mapper = DmaMapper::new(&conn, Arc::clone(&mem)).with_options(&options);
        mapper.map_guest_memory().expect("map guest memory");
        let dev = VfioUserDevice::new(conn, &DeviceOptions::default()).expect("device");
        let w64 = |reg: u64, v: u64| dev.write(0, reg, &v.to_le_bytes()).expect("register");
        w64(DmaEngine::REG_SOURCE, 0x1000);
        w64(DmaEngine::REG_DESTINATION, 4 << 20);
        w64(DmaEngine::REG_LENGTH, size as u64);
        let ring = || {
            dev.write(0, DmaEngine::REG_DOORBELL, &1u32.to_le_bytes())
                .expect("doorbell")
        };
        ring();
        assert_eq!(engine.status(), DmaEngineStatus::Done, "{id}: copy failed");
        support::placement().client(|| {
            c.benchmark_group(format!("dma_engine_copy_{label}"))
                .bench_function(id, |b| b.iter(ring));
        });
        assert_eq!(engine.status(), DmaEngineStatus::Done, "{id}: copy failed");
        let mut copied = vec![0u8; size];
        mem.read_slice(&mut copied, GuestAddress(4 << 20))
            .expect("read back");
        assert!(copied.iter().all(|&b| b == 0x5a), "{id}: wrong data");
        mapper.unmap_all().expect("unmap");
        drop(dev);
        drop(mapper);
        server.stop();
    }
}

/// Criterion's mean for `group/id` in ns, if this run wrote it.
fn mean_ns(group: &str, id: &str, started: SystemTime) -> Option<f64> {
    support::estimate(group, id, started).map(|e| e.mean)
}

fn main() {
    let started = SystemTime::now() - Duration::from_secs(1);
    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    println!("{}", support::placement().describe());
    println!("{}", support::describe_server());

    for count in MAP_COUNTS {
        if !support::selected(&format!("dma_map_unmap_{count}")) {
            continue;
        }
        bench_map_ours(&mut criterion, count);
        bench_map_crates_io(&mut criterion, count);
    }
    for (size, label) in READ_SIZES {
        if !support::selected(&format!("dma_read_{label}")) {
            continue;
        }
        bench_read_ours(&mut criterion, size, label, false);
        bench_read_ours(&mut criterion, size, label, true);
        bench_read_floor(&mut criterion, size, label);
    }
    for (size, label) in READ_SIZES {
        if !support::selected(&format!("dma_mode_read_{label}"))
            && !support::selected(&format!("dma_mode_write_{label}"))
        {
            continue;
        }
        bench_modes(&mut criterion, size, label);
    }
    for (size, label) in READ_SIZES {
        if support::selected(&format!("dma_engine_copy_{label}")) {
            bench_engine(&mut criterion, size, label);
        }
    }
    criterion.final_summary();

    let mut printed = false;
    let mut line = |text: String| {
        if !printed {
            println!();
            printed = true;
        }
        println!("{text}");
    };
    for count in MAP_COUNTS {
        let group = format!("dma_map_unmap_{count}");
        let ours = mean_ns(&group, "ours", started);
        let theirs = mean_ns(&group, "crates.io", started);
        for (id, m) in [("ours", ours), ("crates.io", theirs)] {
            if let Some(m) = m {
                line(format!("mean {group}/{id} = {:.3} ms", m / 1e6));
            }
        }
        if let (Some(o), Some(t)) = (ours, theirs) {
            line(format!(
                "speed-up {group} ours vs crates.io = {:.2}x",
                t / o
            ));
        }
    }
    for (size, label) in READ_SIZES {
        let group = format!("dma_read_{label}");
        let floor = mean_ns(&group, "floor", started);
        for id in ["ours", "ours-twin", "floor"] {
            let Some(m) = mean_ns(&group, id, started) else {
                continue;
            };
            let gib_s = size as f64 / m; // bytes per ns = GB/s
            line(format!(
                "mean {group}/{id} = {:.2} µs ({gib_s:.2} GB/s)",
                m / 1000.0
            ));
            if let (Some(f), true) = (floor, id != "floor") {
                line(format!("throughput {group} {id}/floor = {:.2}", f / m));
            }
        }
    }
    for (size, label) in READ_SIZES {
        for dir in ["read", "write"] {
            let group = format!("dma_mode_{dir}_{label}");
            let mapped = mean_ns(&group, "fd-mapped", started);
            let messages = mean_ns(&group, "message-only", started);
            for (id, m) in [("fd-mapped", mapped), ("message-only", messages)] {
                if let Some(m) = m {
                    let gb_s = size as f64 / m;
                    line(format!(
                        "mean {group}/{id} = {:.2} µs ({gb_s:.2} GB/s)",
                        m / 1000.0
                    ));
                }
            }
            if let (Some(f), Some(m)) = (mapped, messages) {
                line(format!(
                    "cost {group} message-only/fd-mapped = {:.1}x",
                    m / f
                ));
            }
        }
        let group = format!("dma_engine_copy_{label}");
        let mapped = mean_ns(&group, "fd-mapped", started);
        let messages = mean_ns(&group, "message-only", started);
        for (id, m) in [("fd-mapped", mapped), ("message-only", messages)] {
            if let Some(m) = m {
                line(format!(
                    "mean {group}/{id} = {:.2} µs ({:.2} GB/s copied)",
                    m / 1000.0,
                    size as f64 / m
                ));
            }
        }
        if let (Some(f), Some(m)) = (mapped, messages) {
            line(format!(
                "cost {group} message-only/fd-mapped = {:.1}x",
                m / f
            ));
        }
    }
}
