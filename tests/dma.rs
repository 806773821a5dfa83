// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The DMA layer against the sample server's DMA engine over real Unix sockets: guest memory
//! mapped with and without fds, the server's view of it through both paths and in both
//! directions, local refusals, the map limit, batches with failures, memory hot-plug, and
//! server DMA racing region reads with and without a twin socket.

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;

use common::{read_u32, write_region};
use vfio_user_client::connection;
use vfio_user_client::dma::{Access, DmaMapper, DmaOp, Error as DmaError};
use vfio_user_client::ConnectionCause;
use vfio_user_client::{ConnectOptions, Connection, Error};
use vfio_user_sample_server::test_support::guest::{anon, memfd, memory, pattern, region, shared};
use vfio_user_sample_server::{
    DmaAccessMode, DmaEngine, DmaEngineHandle, DmaEngineStatus, Errno, Probe, Server, ServerConfig,
    ServerHandle, PCI_CONFIG_REGION,
};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
    GuestRegionMmap,
};

const MIB: u64 = 1 << 20;
const EINVAL: u32 = libc::EINVAL as u32;

struct Env {
    conn: Connection,
    probe: Probe,
    engine: DmaEngineHandle,
    _server: ServerHandle,
}

fn connect(config: ServerConfig, options: &ConnectOptions) -> Env {
    let (device, engine) = DmaEngine::new();
    let server = Server::new(config, Box::new(device));
    let probe = server.probe();
    let (client, server_end) = UnixStream::pair().unwrap();
    let running = server.serve_stream(server_end);
    let conn = Connection::connect(client, options).unwrap();
    Env {
        conn,
        probe,
        engine,
        _server: running,
    }
}

fn options(twin: bool, max_data_xfer_size: u32) -> ConnectOptions {
    let mut o = ConnectOptions::default();
    o.offer.twin_socket = twin;
    o.offer.max_data_xfer_size = max_data_xfer_size;
    o
}

/// Programs the engine and rings its doorbell; the doorbell write returns after the copy.
fn engine_copy(conn: &Connection, source: u64, destination: u64, length: u64) {
    let p = conn;
    write_region(p, 0, DmaEngine::REG_SOURCE, &source.to_ne_bytes()).unwrap();
    write_region(p, 0, DmaEngine::REG_DESTINATION, &destination.to_ne_bytes()).unwrap();
    write_region(p, 0, DmaEngine::REG_LENGTH, &length.to_ne_bytes()).unwrap();
    write_region(p, 0, DmaEngine::REG_DOORBELL, &1u32.to_ne_bytes()).unwrap();
}

fn engine_result(env: &Env) -> Result<(), u32> {
    match env.engine.status() {
        DmaEngineStatus::Done => Ok(()),
        _ => Err(env.engine.errno()),
    }
}

fn read_guest(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
    buf
}

// Layout of the four-region guest used below.
const RW_FD: u64 = 0; // 1 MiB, memfd, read-write
const RO_FD: u64 = 0x10_0000; // 256 KiB, memfd, read-only
const ANON_A: u64 = 0x20_0000; // 1 MiB, anonymous
const ANON_B: u64 = 0x30_0000; // 256 KiB, anonymous, adjacent to ANON_A

/// The guest memory and the content of its read-only region.
fn four_regions() -> (GuestMemoryMmap, Vec<u8>) {
    let ro_file = memfd(256 << 10);
    let ro_content = pattern(256 << 10, 77);
    ro_file.write_all_at(&ro_content, 0).unwrap();
    let mem = memory(vec![
        shared(RW_FD, MIB as usize),
        region(RO_FD, 256 << 10, Some((ro_file, 0)), false),
        anon(ANON_A, MIB as usize),
        anon(ANON_B, 256 << 10),
    ]);
    (mem, ro_content)
}

fn same_bytes_both_paths_both_directions(twin: bool) {
    // 64 KiB per data message, so the engine's copies below are chunked.
    let env = connect(ServerConfig::default(), &options(twin, 64 << 10));
    assert_eq!(env.conn.twin_socket(), twin);
    let (mem, ro_content) = four_regions();
    let mem = Arc::new(mem);
    let mapper = DmaMapper::new(&env.conn, Arc::clone(&mem));
    mapper.map_guest_memory().unwrap();
    // Mapping again is a no-op.
    mapper.map_guest_memory().unwrap();

    let maps = env.probe.dma_maps();
    let seen: Vec<(u64, u64, DmaAccessMode, u32)> = maps
        .iter()
        .map(|m| (m.address, m.size, m.mode, m.flags))
        .collect();
    assert_eq!(
        seen,
        vec![
            (RW_FD, MIB, DmaAccessMode::Mmap, 3),
            (RO_FD, 256 << 10, DmaAccessMode::Mmap, 1),
            (ANON_A, MIB, DmaAccessMode::Message, 3),
            (ANON_B, 256 << 10, DmaAccessMode::Message, 3),
        ]
    );
    let ours = mapper.mappings();
    assert_eq!(ours.len(), 4);
    assert!(ours.iter().all(|m| m.is_guest_region() && m.iova == m.gpa));
    assert_eq!(
        ours.iter()
            .map(|m| (m.fd_backed, m.access))
            .collect::<Vec<_>>(),
        vec![
            (true, Access::READ_WRITE),
            (true, Access::READ_ONLY),
            (false, Access::READ_WRITE),
            (false, Access::READ_WRITE)
        ]
    );

    // fd path, guest -> server and server -> guest.
    let a = pattern(12_345, 1);
    mem.write_slice(&a, GuestAddress(RW_FD + 0x1003)).unwrap();
    let mut seen = vec![0u8; a.len()];
    env.probe.dma_read(RW_FD + 0x1003, &mut seen).unwrap();
    assert_eq!(seen, a);
    let b = pattern(7_000, 2);
    env.probe.dma_write(RW_FD + 0x9_0001, &b).unwrap();
    assert_eq!(read_guest(&mem, RW_FD + 0x9_0001, b.len()), b);

    // The read-only region: the server reads what the guest holds and cannot write it.
    let mut seen = vec![0u8; ro_content.len()];
    env.probe.dma_read(RO_FD, &mut seen).unwrap();
    assert_eq!(seen, ro_content);
    assert_eq!(read_guest(&mem, RO_FD, ro_content.len()), ro_content);
    assert_eq!(env.probe.dma_write(RO_FD, &[1]), Err(Errno::PERM));

    // Message path, guest -> server: DMA_READs across the two adjacent fd-less regions.
    let c = pattern(200 << 10, 3);
    let from = ANON_B - (100 << 10);
    mem.write_slice(&c, GuestAddress(from)).unwrap();
    engine_copy(&env.conn, from, RW_FD + 0x4_0000, c.len() as u64);
    assert_eq!(engine_result(&env), Ok(()));
    let mut seen = vec![0u8; c.len()];
    env.probe.dma_read(RW_FD + 0x4_0000, &mut seen).unwrap();
    assert_eq!(seen, c);

    // Message path, server -> guest: DMA_WRITEs across the same boundary, recorded while
    // dirty logging is on.
    mapper.dirty_log().start();
    let d = pattern(150 << 10, 4);
    env.probe.dma_write(RW_FD + 0x8_0000, &d).unwrap();
    let to = ANON_B - (50 << 10);
    engine_copy(&env.conn, RW_FD + 0x8_0000, to, d.len() as u64);
    assert_eq!(engine_result(&env), Ok(()));
    assert_eq!(read_guest(&mem, to, d.len()), d);
    // Every page written through messages is dirty, and only those.
    let dirty = mapper.dirty_log().dirty_pages();
    let expected: Vec<u64> = (to / 4096..(to + d.len() as u64).div_ceil(4096))
        .map(|p| p * 4096)
        .collect();
    assert_eq!(dirty, expected);

    // The read-only region is readable through the engine and refused as a destination.
    engine_copy(&env.conn, RO_FD + 0x1000, ANON_A, 0x3000);
    assert_eq!(engine_result(&env), Ok(()));
    assert_eq!(read_guest(&mem, ANON_A, 0x3000), ro_content[0x1000..0x4000]);
    engine_copy(&env.conn, ANON_A, RO_FD, 0x1000);
    assert_eq!(engine_result(&env), Err(libc::EPERM as u32));
    assert_eq!(read_guest(&mem, RO_FD, ro_content.len()), ro_content);

    mapper.unmap_all().unwrap();
    assert!(mapper.is_empty());
    assert!(env.probe.dma_maps().is_empty());
}

#[test]
fn guest_memory_seen_alike_through_fds_and_messages() {
    same_bytes_both_paths_both_directions(false);
}

#[test]
fn guest_memory_seen_alike_through_fds_and_messages_twin_socket() {
    same_bytes_both_paths_both_directions(true);
}

#[test]
fn bad_maps_are_refused_locally_with_the_limit_and_values() {
    let env = connect(
        ServerConfig {
            max_dma_maps: Some(3),
            ..ServerConfig::default()
        },
        &ConnectOptions::default(),
    );
    let mem = Arc::new(memory(vec![
        shared(0, 0x10_0000),
        anon(0x10_0000, 0x10_0000),
    ]));
    // The negotiated limits: 3 windows (TooManyMappings below), 4 KiB pages (Unaligned).
    let mapper = DmaMapper::new(&env.conn, mem);
    let commands = env.probe.commands();

    let map = |iova, size| DmaOp::Map { iova, size };
    assert_eq!(
        mapper.map(0x1000, 0x1000, 0x800),
        Err(DmaError::Unaligned {
            op: map(0x1000, 0x800),
            page_size: 0x1000
        })
    );
    assert_eq!(
        mapper.map(0x1800, 0x1000, 0x1000).unwrap_err().to_string(),
        "DMA map 0x1800..0x2800 is not aligned to the negotiated page size 0x1000"
    );
    assert!(matches!(
        mapper.map(0x1000, 0x1800, 0x1000),
        Err(DmaError::Unaligned { .. })
    ));
    assert_eq!(mapper.map(0, 0, 0), Err(DmaError::Empty { op: map(0, 0) }));
    assert_eq!(
        mapper.map(!0xfff_u64, 0, 0x2000),
        Err(DmaError::Overflow {
            op: map(!0xfff_u64, 0x2000)
        })
    );
    // Oversized: past the end of guest memory, and across two regions.
    assert_eq!(
        mapper.map(0, 0x10_0000, 0x20_0000),
        Err(DmaError::NotInGuestMemory {
            op: map(0, 0x20_0000),
            gpa: 0x10_0000,
            size: 0x20_0000
        })
    );
    assert!(matches!(
        mapper.map(0, 0xf_f000, 0x2000),
        Err(DmaError::NotInGuestMemory { .. })
    ));
    assert!(matches!(
        mapper.map(0, 0x40_0000, 0x1000),
        Err(DmaError::NotInGuestMemory { .. })
    ));
    assert_eq!(env.probe.commands(), commands, "nothing was sent");

    mapper.map(0x1_0000, 0, 0x2000).unwrap();
    // Overlapping, from below, inside and above.
    for (iova, size) in [(0xf000, 0x2000), (0x1_1000, 0x1000), (0x1_1000, 0x8000)] {
        assert_eq!(
            mapper.map(iova, 0x10_0000, size),
            Err(DmaError::Overlap {
                op: map(iova, size),
                start: 0x1_0000,
                end: 0x1_2000
            })
        );
    }
    // Unmaps must match a map exactly.
    assert_eq!(
        mapper.unmap(0x1_0000, 0x1000),
        Err(DmaError::NoSuchMapping {
            op: DmaOp::Unmap {
                iova: 0x1_0000,
                size: 0x1000
            }
        })
    );
    mapper.map(0x2_0000, 0x10_0000, 0x1000).unwrap();
    mapper.map(0x3_0000, 0x10_1000, 0x1000).unwrap();
    let e = mapper.map(0x4_0000, 0x10_2000, 0x1000).unwrap_err();
    assert_eq!(
        e,
        DmaError::TooManyMappings {
            op: map(0x4_0000, 0x1000),
            count: 4,
            limit: 3
        }
    );
    assert_eq!(
        e.to_string(),
        "DMA map 0x40000..0x41000 would make 4 live mappings; the server's max_dma_maps is 3"
    );
    assert!(e.is_local());
    assert_eq!(env.probe.dma_map_count(), 3);
    // Through the crate error too.
    let crate_error: Error = e.into();
    assert!(crate_error.to_string().contains("max_dma_maps is 3"));
    mapper.unmap(0x1_0000, 0x2000).unwrap();
    mapper.map(0x4_0000, 0x10_2000, 0x1000).unwrap();
    assert_eq!(env.probe.dma_map_count(), 3);
}

#[test]
fn page_size_follows_the_servers_pgsizes() {
    let env = connect(
        ServerConfig {
            pgsizes: Some(2 * MIB),
            ..ServerConfig::default()
        },
        &ConnectOptions::default(),
    );
    let mem = Arc::new(memory(vec![shared(0, 4 * MIB as usize)]));
    let mapper = DmaMapper::new(&env.conn, mem);
    assert_eq!(
        mapper.map(0x1000, 0, 0x20_0000).unwrap_err().to_string(),
        "DMA map 0x1000..0x201000 is not aligned to the negotiated page size 0x200000"
    );
    mapper.map(0x20_0000, 0x20_0000, 0x20_0000).unwrap();
    assert_eq!(env.probe.dma_map_count(), 1);
}

#[test]
fn sixty_five_thousand_maps_then_the_limit() {
    const N: u64 = 65_535;
    let env = connect(
        ServerConfig {
            max_dma_maps: Some(N),
            ..ServerConfig::default()
        },
        &ConnectOptions::default(),
    );
    // fd-less, so that the server does not need 65,535 mmaps.
    let mem = Arc::new(memory(vec![anon(0, ((N + 1) * 4096) as usize)]));
    let mapper = DmaMapper::new(&env.conn, Arc::clone(&mem));
    let mut tx = mapper.transaction();
    for i in 0..N {
        tx.map(i * 4096, i * 4096, 4096).unwrap();
    }
    tx.commit().unwrap();
    assert_eq!(mapper.len(), N as usize);
    assert_eq!(env.probe.dma_map_count(), N as usize);
    assert_eq!(
        mapper.map(N * 4096, N * 4096, 4096),
        Err(DmaError::TooManyMappings {
            op: DmaOp::Map {
                iova: N * 4096,
                size: 4096
            },
            count: 65_536,
            limit: 65_535
        })
    );
    // The table serves the server's DMA at any of them: the engine copies through messages.
    mem.write_slice(&[9; 16], GuestAddress(40_000 * 4096))
        .unwrap();
    engine_copy(&env.conn, 40_000 * 4096, 10 * 4096 + 8, 16);
    assert_eq!(engine_result(&env), Ok(()));
    assert_eq!(read_guest(&mem, 10 * 4096 + 8, 16), vec![9; 16]);

    mapper.unmap_all().unwrap();
    assert!(mapper.is_empty());
    assert_eq!(env.probe.dma_map_count(), 0);
}

#[test]
fn every_failure_of_a_batch_is_reported_and_the_table_follows_the_server() {
    let env = connect(
        ServerConfig {
            refuse_fdless_maps: true,
            ..ServerConfig::default()
        },
        &ConnectOptions::default(),
    );
    let mem = Arc::new(memory(vec![
        shared(0, 0x10_0000),
        anon(0x10_0000, 0x10_0000),
        anon(0x20_0000, 0x10_0000),
    ]));
    let mapper = DmaMapper::new(&env.conn, mem);
    let e = mapper.map_guest_memory().unwrap_err();
    let DmaError::Batch { total, failures } = &e else {
        panic!("expected a batch error, got {e:?}");
    };
    assert_eq!(*total, 3);
    let failed: Vec<(DmaOp, Option<u32>)> = failures
        .iter()
        .map(|f| (f.op, f.error.server_errno()))
        .collect();
    assert_eq!(
        failed,
        vec![
            (
                DmaOp::Map {
                    iova: 0x10_0000,
                    size: 0x10_0000
                },
                Some(EINVAL)
            ),
            (
                DmaOp::Map {
                    iova: 0x20_0000,
                    size: 0x10_0000
                },
                Some(EINVAL)
            ),
        ]
    );
    assert!(e.to_string().starts_with(
        "2 of 3 DMA operations failed; first: server refused DMA_MAP of 0x100000..0x200000:"
    ));
    let crate_error: Error = e.into();
    assert_eq!(crate_error.server_errno(), Some(EINVAL));
    assert!(!crate_error.is_disconnected());
    // Only the accepted map is in the table, on both sides.
    assert_eq!(
        mapper.mappings().iter().map(|m| m.iova).collect::<Vec<_>>(),
        vec![0]
    );
    assert_eq!(env.probe.dma_map_count(), 1);

    // A single failure is reported as such.
    let e = mapper.map(0x40_0000, 0x10_0000, 0x1000).unwrap_err();
    assert_eq!(e.failures().len(), 1);
    assert!(matches!(
        &e,
        DmaError::Failed(f) if f.error == connection::Error::Server {
            command: vfio_user_client::protocol::Command::DmaMap,
            errno: EINVAL
        }
    ));
    assert_eq!(mapper.len(), 1);
}

#[test]
fn spdk_like_server_refuses_maps_that_are_not_2mib_aligned() {
    let env = connect(
        ServerConfig {
            require_2mib_alignment: true,
            ..ServerConfig::default()
        },
        &ConnectOptions::default(),
    );
    let mem = Arc::new(memory(vec![shared(0, 4 * MIB as usize)]));
    let mapper = DmaMapper::new(&env.conn, mem);
    let e = mapper.map(0x1000, 0x1000, 0x1000).unwrap_err();
    assert_eq!(e.failures()[0].error.server_errno(), Some(EINVAL));
    mapper.map(0x20_0000, 0x20_0000, 0x20_0000).unwrap();
    assert_eq!(mapper.len(), 1);
    assert_eq!(env.probe.dma_map_count(), 1);
}

#[test]
fn a_batch_mixing_maps_and_unmaps_lands_as_sent() {
    let env = connect(ServerConfig::default(), &ConnectOptions::default());
    let mem = Arc::new(memory(vec![shared(0, 0x10_0000)]));
    let mapper = DmaMapper::new(&env.conn, mem);
    let mut tx = mapper.transaction();
    tx.map(0x1000, 0, 0x1000).unwrap();
    tx.map(0x2000, 0x1000, 0x1000).unwrap();
    tx.unmap(0x1000, 0x1000).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        mapper.mappings().iter().map(|m| m.iova).collect::<Vec<_>>(),
        vec![0x2000]
    );
    // An uncommitted transaction still lands in the table as the server took it.
    {
        let mut tx = mapper.transaction();
        tx.map(0x3000, 0x2000, 0x1000).unwrap();
    }
    assert_eq!(mapper.len(), 2);
    assert_eq!(env.probe.dma_map_count(), 2);
}

#[test]
fn memory_the_server_may_not_touch_and_uncommitted_failures() {
    let env = connect(
        ServerConfig {
            refuse_fdless_maps: true,
            ..ServerConfig::default()
        },
        &ConnectOptions::default(),
    );
    // A region mapped PROT_NONE grants the server nothing.
    let none = vm_memory::mmap::MmapRegionBuilder::new(0x1000)
        .with_mmap_prot(libc::PROT_NONE)
        .build()
        .unwrap();
    let mem = Arc::new(memory(vec![
        shared(0, 0x10_0000),
        GuestRegionMmap::new(none, GuestAddress(0x20_0000)).unwrap(),
    ]));
    let mapper = DmaMapper::new(&env.conn, Arc::clone(&mem));
    assert!(format!("{mapper:?}").contains("mappings: 0"));
    let op = DmaOp::Map {
        iova: 0x20_0000,
        size: 0x1000,
    };
    assert_eq!(
        mapper.map_guest_memory(),
        Err(DmaError::NoAccess { op, gpa: 0x20_0000 })
    );
    assert_eq!(
        mapper.map(0x20_0000, 0x20_0000, 0x1000),
        Err(DmaError::NoAccess { op, gpa: 0x20_0000 })
    );
    assert!(mapper.is_empty());

    // A transaction dropped without commit still collects its replies and undoes the refused
    // map (the failure is logged).
    let fdless = Arc::new(memory(vec![anon(0, 0x10_0000)]));
    let other = DmaMapper::new(&env.conn, fdless);
    {
        let mut tx = other.transaction();
        tx.map(0x1000, 0, 0x1000).unwrap();
        assert!(format!("{tx:?}").contains("pending: 1"));
    }
    assert!(other.is_empty());
    assert_eq!(env.probe.dma_map_count(), 0);
    mapper.map(0, 0, 0x1000).unwrap();
    assert_eq!(env.probe.dma_map_count(), 1);
}

#[test]
fn hot_plug_add_and_remove_reach_the_server() {
    let env = connect(ServerConfig::default(), &ConnectOptions::default());
    let base = memory(vec![shared(0, 0x10_0000), anon(0x10_0000, 0x10_0000)]);
    let atomic = GuestMemoryAtomic::new(base);
    let mapper = DmaMapper::new(&env.conn, atomic.clone());
    mapper.map_guest_memory().unwrap();
    // An IOVA window is not a guest-memory mapping and survives the syncs.
    mapper.map(0x1_0000_0000, 0x1000, 0x1000).unwrap();
    let addresses = |p: &Probe| p.dma_maps().iter().map(|m| m.address).collect::<Vec<_>>();
    assert_eq!(addresses(&env.probe), vec![0, 0x10_0000, 0x1_0000_0000]);

    // Plug in a region.
    let plugged: GuestRegionMmap = shared(0x4000_0000, 0x20_0000);
    let next = atomic.memory().insert_region(Arc::new(plugged)).unwrap();
    atomic.lock().unwrap().replace(next);
    mapper.sync_guest_memory().unwrap();
    assert_eq!(
        addresses(&env.probe),
        vec![0, 0x10_0000, 0x4000_0000, 0x1_0000_0000]
    );
    let m = env.probe.dma_maps();
    assert_eq!((m[2].size, m[2].mode), (0x20_0000, DmaAccessMode::Mmap));
    // The server reaches the new region.
    atomic
        .memory()
        .write_slice(&[5; 8], GuestAddress(0x4000_1000))
        .unwrap();
    let mut seen = [0u8; 8];
    env.probe.dma_read(0x4000_1000, &mut seen).unwrap();
    assert_eq!(seen, [5; 8]);

    // Unplug the fd-less region.
    let (next, _gone) = atomic
        .memory()
        .remove_region(GuestAddress(0x10_0000), 0x10_0000)
        .unwrap();
    atomic.lock().unwrap().replace(next);
    mapper.sync_guest_memory().unwrap();
    assert_eq!(addresses(&env.probe), vec![0, 0x4000_0000, 0x1_0000_0000]);
    assert_eq!(mapper.len(), 3);
    // Nothing changed: nothing sent.
    let commands = env.probe.commands();
    mapper.sync_guest_memory().unwrap();
    assert_eq!(env.probe.commands(), commands);
    assert_eq!(atomic.memory().num_regions(), 2);
}

fn server_dma_while_four_threads_read(twin: bool) {
    const COPIES: u64 = 40;
    const READS: usize = 500;
    let env = connect(ServerConfig::default(), &options(twin, 64 << 10));
    assert_eq!(env.conn.twin_socket(), twin);
    let (mem, _) = four_regions();
    let mem = Arc::new(mem);
    let mapper = DmaMapper::new(&env.conn, Arc::clone(&mem));
    mapper.map_guest_memory().unwrap();
    let source = pattern(192 << 10, 9);
    mem.write_slice(&source, GuestAddress(ANON_A)).unwrap();

    let conn = &env.conn;
    let id = u32::from(DmaEngine::VENDOR_ID) | (u32::from(DmaEngine::DEVICE_ID) << 16);
    thread::scope(|s| {
        let readers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    for _ in 0..READS {
                        assert_eq!(read_u32(conn, PCI_CONFIG_REGION, 0), id);
                    }
                })
            })
            .collect();
        // Fd-less to fd-less and back: every byte crosses the socket twice per copy.
        for i in 0..COPIES {
            let (from, to) = if i % 2 == 0 {
                (ANON_A, ANON_B - (64 << 10))
            } else {
                (ANON_B - (64 << 10), ANON_A)
            };
            engine_copy(conn, from, to, source.len() as u64);
            assert_eq!(engine_result(&env), Ok(()), "copy {i}");
        }
        for r in readers {
            r.join().unwrap();
        }
    });
    assert_eq!(env.engine.completions(), COPIES);
    assert_eq!(read_guest(&mem, ANON_A, source.len()), source);
    assert_eq!(read_guest(&mem, ANON_B - (64 << 10), source.len()), source);
}

#[test]
fn server_dma_while_four_threads_read_regions() {
    server_dma_while_four_threads_read(false);
}

#[test]
fn server_dma_while_four_threads_read_regions_twin_socket() {
    server_dma_while_four_threads_read(true);
}

#[test]
fn a_lost_server_fails_the_transaction_and_the_twin_socket_goes_too() {
    let env = connect(ServerConfig::default(), &ConnectOptions::default());
    assert!(env.conn.twin_socket());
    let mem = Arc::new(memory(vec![anon(0, 0x10_0000)]));
    let mapper = DmaMapper::new(&env.conn, mem);
    mapper.map(0, 0, 0x1000).unwrap();
    let Env {
        conn,
        probe,
        _server,
        ..
    } = env;
    _server.stop();
    assert!(probe.wait_disconnects(1, std::time::Duration::from_secs(20)));
    let e = mapper.map(0x1000, 0x1000, 0x1000).unwrap_err();
    let crate_error: Error = e.into();
    assert!(crate_error.is_disconnected(), "{crate_error}");
    // The refused map left the table as it was.
    assert_eq!(mapper.len(), 1);
    assert!(!conn.is_connected());
}
