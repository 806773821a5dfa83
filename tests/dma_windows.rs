// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! DMA windows the VMM controls: one handler serving the windows of several mappers on a
//! connection, guest memory shared through a filter (virtio-mem blocks plugged and unplugged
//! one by one), no guest memory shared and vIOMMU-style IOVA windows (guest-physical !=
//! IOVA) run through by the sample DMA engine, out-of-window DMA refused without touching
//! memory, and the message-only mode (no fd ever sent; the engine's copies go through
//! DMA_READ / DMA_WRITE).

mod common;

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;

use common::write_region;
use vfio_user_client::dma::{
    DmaHandle, DmaMapper, DmaMode, DmaOptions, Error as DmaError, GuestMemorySharing,
    GuestRegionInfo,
};
use vfio_user_client::pci::{ConnectionState, ReconnectPolicy};
use vfio_user_client::protocol::{Command, DmaAccess, DmaMap, Header};
use vfio_user_client::{AttachOptions, ConnectOptions, Connection, VfioUserPciDevice};
use vfio_user_sample_server::test_support::guest::{anon, memory, pattern, region, shared};
use vfio_user_sample_server::test_support::pci::{fired_within, Irqs};
use vfio_user_sample_server::test_support::restart::RestartableServer;
use vfio_user_sample_server::wire::{RawEndpoint, RawMsg};
use vfio_user_sample_server::{
    DmaAccessMode, DmaEngine, DmaEngineHandle, DmaEngineStatus, Probe, Server, ServerConfig,
    ServerHandle,
};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

const MIB: u64 = 1 << 20;
const EFAULT: u32 = libc::EFAULT as u32;
const EPERM: u32 = libc::EPERM as u32;

/// Programs the engine through region 0 and rings its doorbell; the doorbell write returns
/// after the copy. `Err(errno)` when the engine's copy failed.
fn engine_copy(
    conn: &Connection,
    engine: &DmaEngineHandle,
    source: u64,
    destination: u64,
    length: u64,
) -> Result<(), u32> {
    write_region(conn, 0, DmaEngine::REG_SOURCE, &source.to_le_bytes()).unwrap();
    write_region(
        conn,
        0,
        DmaEngine::REG_DESTINATION,
        &destination.to_le_bytes(),
    )
    .unwrap();
    write_region(conn, 0, DmaEngine::REG_LENGTH, &length.to_le_bytes()).unwrap();
    write_region(conn, 0, DmaEngine::REG_DOORBELL, &1u32.to_le_bytes()).unwrap();
    match engine.status() {
        DmaEngineStatus::Done => Ok(()),
        _ => Err(engine.errno()),
    }
}

fn read_guest<M: Bytes<GuestAddress>>(mem: &M, gpa: u64, len: usize) -> Vec<u8>
where
    M::E: std::fmt::Debug,
{
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
    buf
}

/// The server's windows as (address, size, mode), by address, checked pairwise disjoint.
fn server_windows(probe: &Probe) -> Vec<(u64, u64, DmaAccessMode)> {
    let mut maps: Vec<_> = probe
        .dma_maps()
        .iter()
        .map(|m| (m.address, m.size, m.mode))
        .collect();
    maps.sort_by_key(|m| m.0);
    for pair in maps.windows(2) {
        assert!(
            pair[0].0 + pair[0].1 <= pair[1].0,
            "windows overlap: {pair:?}"
        );
    }
    maps
}

struct Engine {
    server: ServerHandle,
    probe: Probe,
    engine: DmaEngineHandle,
}

fn engine_server() -> Engine {
    let (device, engine) = DmaEngine::new();
    let server = Server::new(ServerConfig::default(), Box::new(device));
    let probe = server.probe();
    let server = server.listen_temp().unwrap();
    Engine {
        server,
        probe,
        engine,
    }
}

fn attach<AS>(env: &Engine, memory: AS, dma: DmaOptions) -> VfioUserPciDevice
where
    AS: GuestAddressSpace<M = GuestMemoryMmap> + Send + Sync + 'static,
{
    let options = AttachOptions {
        dma,
        ..AttachOptions::default()
    };
    VfioUserPciDevice::attach(
        env.server.socket_path().unwrap(),
        memory,
        Irqs::new(),
        &options,
    )
    .unwrap()
}

#[test]
fn one_handler_serves_the_windows_of_two_mappers() {
    let (device, engine) = DmaEngine::new();
    let server = Server::new(ServerConfig::default(), Box::new(device));
    let probe = server.probe();
    let (client, server_end) = UnixStream::pair().unwrap();
    let _running = server.serve_stream(server_end);
    let conn = Connection::connect(client, &ConnectOptions::default()).unwrap();

    // Two guest memories of different types, both at guest address 0, both anonymous (the
    // engine reaches them with DMA_READ / DMA_WRITE, served by the connection's handler).
    let mem_a = Arc::new(memory(vec![anon(0, MIB as usize)]));
    let mem_b = GuestMemoryAtomic::new(memory(vec![anon(0, MIB as usize)]));
    let a = DmaMapper::new(&conn, Arc::clone(&mem_a));
    let b = DmaHandle::from(DmaMapper::new(&conn, mem_b.clone()));
    const A: u64 = 0x10_0000; // a: 64 KiB onto a's 0..64 KiB
    const B: u64 = 0x11_0000; // b: 64 KiB onto b's 64..128 KiB, adjacent to A
    const OUT: u64 = 0x20_0000; // b: 128 KiB onto b's 512 KiB..
    a.map(A, 0, 0x1_0000).unwrap();
    b.map(B, 0x1_0000, 0x1_0000).unwrap();
    b.map(OUT, 0x8_0000, 0x2_0000).unwrap();
    assert_eq!(probe.dma_map_count(), 3);
    assert_eq!(a.len(), 1);
    assert_eq!(b.mappings().len(), 2);

    let data_a = pattern(0x1_0000, 1);
    let data_b = pattern(0x1_0000, 2);
    mem_a.write_slice(&data_a, GuestAddress(0)).unwrap();
    mem_b
        .memory()
        .write_slice(&data_b, GuestAddress(0x1_0000))
        .unwrap();
    // One window of a's into one of b's: each read from and written to its own memory.
    assert_eq!(engine_copy(&conn, &engine, A, OUT, 0x1_0000), Ok(()));
    assert_eq!(read_guest(&*mem_b.memory(), 0x8_0000, 0x1_0000), data_a);
    // Across a's window and b's (one request, two mappers' memory).
    assert_eq!(
        engine_copy(&conn, &engine, A + 0x8000, OUT, 0x1_0000),
        Ok(())
    );
    let mut expect = data_a[0x8000..].to_vec();
    expect.extend_from_slice(&data_b[..0x8000]);
    assert_eq!(read_guest(&*mem_b.memory(), 0x8_0000, 0x1_0000), expect);
    // a's memory at b's guest addresses was never touched.
    assert_eq!(read_guest(&*mem_a, 0x8_0000, 0x1_0000), vec![0; 0x1_0000]);

    // One address space: no overlap across mappers, and no unmapping another's window.
    assert!(matches!(
        a.map(OUT, 0x2_0000, 0x1000),
        Err(DmaError::Overlap { start: OUT, .. })
    ));
    assert!(matches!(
        b.unmap(A, 0x1_0000),
        Err(DmaError::NoSuchMapping { .. })
    ));
    // A third mapper takes nothing away from the first two.
    let c = DmaMapper::new(&conn, Arc::new(memory(vec![anon(0, MIB as usize)])));
    assert_eq!(
        engine_copy(&conn, &engine, B, OUT + 0x1_0000, 0x1_0000),
        Ok(())
    );
    assert_eq!(read_guest(&*mem_b.memory(), 0x9_0000, 0x1_0000), data_b);
    drop(c);

    // A handle dropped with live windows leaves them served; unmap_all is per mapper.
    drop(b);
    a.unmap_all().unwrap();
    assert_eq!(probe.dma_map_count(), 2);
    assert_eq!(engine_copy(&conn, &engine, A, OUT, 0x1000), Err(EFAULT));
    assert_eq!(engine_copy(&conn, &engine, B, OUT, 0x1000), Ok(()));
}

#[test]
fn a_filter_leaves_virtio_mem_to_be_plugged_block_by_block() {
    const VMEM: u64 = 0x4000_0000;
    const BLOCK: u64 = 2 * MIB;
    let env = engine_server();
    let mem = Arc::new(memory(vec![
        shared(0, 16 * MIB as usize),
        shared(VMEM, 4 * BLOCK as usize),
    ]));
    let dma = DmaOptions {
        guest_memory: GuestMemorySharing::Filter(Arc::new(|r: &GuestRegionInfo| r.gpa != VMEM)),
        ..DmaOptions::default()
    };
    let dev = attach(&env, Arc::clone(&mem), dma);
    let device = dev.device();
    let conn = device.connection();
    assert_eq!(
        server_windows(&env.probe),
        vec![(0, 16 * MIB, DmaAccessMode::Mmap)]
    );
    let handle = dev.dma().unwrap();
    assert_eq!(handle.mode(), DmaMode::Mapped);

    // The VMM plugs blocks 0 and 2.
    handle.map(VMEM, VMEM, BLOCK).unwrap();
    handle
        .map(VMEM + 2 * BLOCK, VMEM + 2 * BLOCK, BLOCK)
        .unwrap();
    assert_eq!(
        server_windows(&env.probe),
        vec![
            (0, 16 * MIB, DmaAccessMode::Mmap),
            (VMEM, BLOCK, DmaAccessMode::Mmap),
            (VMEM + 2 * BLOCK, BLOCK, DmaAccessMode::Mmap),
        ]
    );
    let data = pattern(0x4000, 9);
    mem.write_slice(&data, GuestAddress(0x1000)).unwrap();
    let dst = VMEM + 2 * BLOCK + 0x100;
    assert_eq!(engine_copy(conn, &env.engine, 0x1000, dst, 0x4000), Ok(()));
    assert_eq!(read_guest(&*mem, dst, 0x4000), data);
    // Block 1 is not plugged: the server cannot reach it.
    assert_eq!(
        engine_copy(conn, &env.engine, 0x1000, VMEM + BLOCK, 0x1000),
        Err(EFAULT)
    );
    assert_eq!(read_guest(&*mem, VMEM + BLOCK, 0x1000), vec![0; 0x1000]);

    // Syncing guest memory keeps the filter and leaves the blocks alone.
    dev.sync_guest_memory().unwrap();
    assert_eq!(server_windows(&env.probe).len(), 3);
    // The whole region would overlap the plugged blocks: refused, nothing sent.
    assert!(matches!(
        handle.map(VMEM, VMEM, 4 * BLOCK),
        Err(DmaError::Overlap { start: VMEM, .. })
    ));

    // Unplug block 0, plug blocks 1 and 3.
    handle.unmap(VMEM, BLOCK).unwrap();
    handle.map(VMEM + BLOCK, VMEM + BLOCK, BLOCK).unwrap();
    handle
        .map(VMEM + 3 * BLOCK, VMEM + 3 * BLOCK, BLOCK)
        .unwrap();
    assert_eq!(
        server_windows(&env.probe)
            .iter()
            .map(|w| (w.0, w.1))
            .collect::<Vec<_>>(),
        vec![
            (0, 16 * MIB),
            (VMEM + BLOCK, BLOCK),
            (VMEM + 2 * BLOCK, BLOCK),
            (VMEM + 3 * BLOCK, BLOCK),
        ]
    );
    assert_eq!(
        engine_copy(conn, &env.engine, 0x1000, VMEM + 0x800, 0x100),
        Err(EFAULT)
    );
    assert_eq!(
        engine_copy(conn, &env.engine, 0x1000, VMEM + BLOCK, 0x4000),
        Ok(())
    );
    assert_eq!(read_guest(&*mem, VMEM + BLOCK, 0x4000), data);
    assert_eq!(handle.mappings().len(), 4);
    dev.detach().unwrap();
    assert_eq!(env.probe.dma_map_count(), 0);
}

/// No guest memory shared at attach; the VMM's vIOMMU maps IOVA windows onto guest memory
/// elsewhere, and the engine reaches exactly those.
fn viommu_windows(mode: DmaMode, expected: DmaAccessMode) {
    const SRC_IOVA: u64 = 0x1_0000_0000;
    const DST_IOVA: u64 = 0x2_0000_0000;
    const SRC_GPA: u64 = 0x10_0000;
    const DST_GPA: u64 = 0x80_0000;
    let env = engine_server();
    let mem = Arc::new(memory(vec![shared(0, 16 * MIB as usize)]));
    let dma = DmaOptions {
        guest_memory: GuestMemorySharing::None,
        mode,
    };
    let dev = attach(&env, Arc::clone(&mem), dma);
    let device = dev.device();
    let conn = device.connection();
    assert_eq!(env.probe.dma_map_count(), 0);
    let iommu = dev.dma().unwrap();
    assert_eq!(iommu.mode(), mode);
    iommu.map(SRC_IOVA, SRC_GPA, 0x2_0000).unwrap();
    iommu.map(DST_IOVA, DST_GPA, 0x2_0000).unwrap();
    assert_eq!(
        server_windows(&env.probe),
        vec![
            (SRC_IOVA, 0x2_0000, expected),
            (DST_IOVA, 0x2_0000, expected)
        ]
    );

    let data = pattern(0x2_0000, 3);
    mem.write_slice(&data, GuestAddress(SRC_GPA)).unwrap();
    assert_eq!(
        engine_copy(conn, &env.engine, SRC_IOVA, DST_IOVA, 0x2_0000),
        Ok(())
    );
    assert_eq!(read_guest(&*mem, DST_GPA, 0x2_0000), data);
    // Guest-physical addresses are not IOVAs: nothing is mapped there.
    mem.write_slice(&[0u8; 0x1000], GuestAddress(DST_GPA))
        .unwrap();
    assert_eq!(
        engine_copy(conn, &env.engine, SRC_GPA, DST_IOVA, 0x1000),
        Err(EFAULT)
    );
    assert_eq!(
        engine_copy(conn, &env.engine, SRC_IOVA, DST_GPA, 0x1000),
        Err(EFAULT)
    );
    // Past the end of the window.
    assert_eq!(
        engine_copy(conn, &env.engine, SRC_IOVA + 0x1_f000, DST_IOVA, 0x2000),
        Err(EFAULT)
    );
    assert_eq!(read_guest(&*mem, DST_GPA, 0x1000), vec![0; 0x1000]);

    // The guest's IOMMU unmaps the source: gone for the server.
    iommu.unmap(SRC_IOVA, 0x2_0000).unwrap();
    assert_eq!(
        engine_copy(conn, &env.engine, SRC_IOVA, DST_IOVA, 0x1000),
        Err(EFAULT)
    );
    assert_eq!(read_guest(&*mem, DST_GPA, 0x1000), vec![0; 0x1000]);
    // Remapped elsewhere: the same IOVA now reaches other guest memory.
    iommu.map(SRC_IOVA, 0x40_0000, 0x1000).unwrap();
    mem.write_slice(b"remapped", GuestAddress(0x40_0000))
        .unwrap();
    assert_eq!(
        engine_copy(conn, &env.engine, SRC_IOVA, DST_IOVA, 8),
        Ok(())
    );
    assert_eq!(read_guest(&*mem, DST_GPA, 8), b"remapped");
    dev.detach().unwrap();
    assert_eq!(env.probe.dma_map_count(), 0);
}

#[test]
fn no_guest_memory_and_viommu_windows_mapped_by_fd() {
    viommu_windows(DmaMode::Mapped, DmaAccessMode::Mmap);
}

#[test]
fn no_guest_memory_and_viommu_windows_through_messages() {
    viommu_windows(DmaMode::MessageOnly, DmaAccessMode::Message);
}

#[test]
fn message_only_runs_the_engine_through_messages_on_shared_memory() {
    let env = engine_server();
    let mem = Arc::new(memory(vec![shared(0, 16 * MIB as usize)]));
    let dma = DmaOptions {
        mode: DmaMode::MessageOnly,
        ..DmaOptions::default()
    };
    let dev = attach(&env, Arc::clone(&mem), dma);
    let device = dev.device();
    let conn = device.connection();
    // The server got the window without an fd: it can reach memory only through messages.
    assert_eq!(
        server_windows(&env.probe),
        vec![(0, 16 * MIB, DmaAccessMode::Message)]
    );
    assert_eq!(
        env.probe.dma_read(0, &mut [0u8; 4]).map_err(|e| e.0),
        Err(libc::EOPNOTSUPP)
    );
    let handle = dev.dma().unwrap();
    assert_eq!(handle.mode(), DmaMode::MessageOnly);
    // A window the VMM adds later goes without an fd too.
    handle.map(0x1_0000_0000, 0x20_0000, 0x1000).unwrap();
    assert!(env
        .probe
        .dma_maps()
        .iter()
        .all(|m| m.mode == DmaAccessMode::Message));

    // 3 MiB: several DMA_READ / DMA_WRITE messages (1 MiB data per message).
    let data = pattern(3 * MIB as usize, 4);
    mem.write_slice(&data, GuestAddress(MIB)).unwrap();
    let dirty = handle.dirty_log();
    dirty.start();
    assert!(!dirty.is_dirty(8 * MIB));
    assert_eq!(
        engine_copy(conn, &env.engine, MIB, 8 * MIB, 3 * MIB),
        Ok(())
    );
    assert_eq!(read_guest(&*mem, 8 * MIB, 3 * MIB as usize), data);
    // Written through DMA_WRITE, which the client served (and logged).
    assert!(dirty.is_dirty(8 * MIB) && dirty.is_dirty(11 * MIB - 1));
    assert!(!dirty.is_dirty(11 * MIB));
    // Through the vIOMMU-style window too.
    mem.write_slice(b"iommu", GuestAddress(0x20_0000)).unwrap();
    assert_eq!(
        engine_copy(conn, &env.engine, 0x1_0000_0000, 0x30_0000, 5),
        Ok(())
    );
    assert_eq!(read_guest(&*mem, 0x30_0000, 5), b"iommu");
    dev.detach().unwrap();
}

/// Answers `n` DMA_MAP / DMA_UNMAP requests with success, returning them with their fds.
fn accept(peer: &mut RawEndpoint, n: usize) -> Vec<RawMsg> {
    (0..n)
        .map(|_| {
            let msg = peer.recv().unwrap();
            let echo = if msg.header.command == Command::DmaUnmap as u16 {
                msg.payload.clone()
            } else {
                Vec::new()
            };
            peer.reply(&msg.header, &echo, &[]).unwrap();
            msg
        })
        .collect()
}

/// Runs `op` while the peer accepts `n` operations; returns what the peer saw.
fn with_peer<T: Send>(
    peer: &mut RawEndpoint,
    n: usize,
    op: impl FnOnce() -> T + Send,
) -> (T, Vec<RawMsg>) {
    thread::scope(|s| {
        let t = s.spawn(op);
        let seen = accept(peer, n);
        (t.join().unwrap(), seen)
    })
}

#[test]
fn message_only_never_sends_an_fd() {
    let mem = Arc::new(memory(vec![
        shared(0, MIB as usize),
        shared(2 * MIB, MIB as usize),
    ]));
    // Control: the same memory, mapped normally, goes with its fd.
    let (conn, mut peer) = common::pair();
    let mapper = DmaMapper::new(&conn, Arc::clone(&mem));
    let (r, seen) = with_peer(&mut peer, 2, || mapper.map_guest_memory());
    r.unwrap();
    assert_eq!(
        seen.iter().map(|m| m.fds.len()).collect::<Vec<_>>(),
        vec![1, 1]
    );

    let (conn, mut peer) = common::pair();
    let only = DmaOptions {
        mode: DmaMode::MessageOnly,
        ..DmaOptions::default()
    };
    let mapper = DmaMapper::new(&conn, Arc::clone(&mem)).with_options(&only);
    assert_eq!(mapper.mode(), DmaMode::MessageOnly);
    let (r, mut seen) = with_peer(&mut peer, 3, || {
        mapper.map_guest_memory()?;
        mapper.map(0x1_0000_0000, 0x1000, 0x1000)
    });
    r.unwrap();
    // A second mapper on the connection, without options: message-only holds.
    let other = DmaMapper::new(&conn, Arc::clone(&mem));
    assert_eq!(other.mode(), DmaMode::MessageOnly);
    let (r, more) = with_peer(&mut peer, 1, || other.map(0x2_0000_0000, 2 * MIB, 0x1000));
    r.unwrap();
    seen.extend(more);
    for m in &seen {
        assert_eq!(m.header.command, Command::DmaMap as u16);
        assert!(m.fds.is_empty(), "DMA_MAP with {} fds", m.fds.len());
        let map = DmaMap::decode(&m.payload).unwrap();
        assert_eq!(map.offset, 0, "no fd, no offset");
    }
    // Served through messages from the table: one handler, both mappers' windows.
    mem.write_slice(b"first", GuestAddress(0x1000)).unwrap();
    mem.write_slice(b"second", GuestAddress(2 * MIB)).unwrap();
    assert_eq!(dma_read(&mut peer, 0x1_0000_0000, 5), Ok(b"first".to_vec()));
    assert_eq!(
        dma_read(&mut peer, 0x2_0000_0000, 6),
        Ok(b"second".to_vec())
    );
}

/// Sends DMA_READ from the peer and returns the data or the errno.
fn dma_read(peer: &mut RawEndpoint, address: u64, count: u64) -> Result<Vec<u8>, u32> {
    let mut p = Vec::new();
    DmaAccess { address, count }.encode_into(&mut p);
    let (h, body) = dma(peer, Command::DmaRead, &p);
    if h.is_error() {
        assert_eq!(h.size as usize, Header::SIZE);
        return Err(h.error);
    }
    let (head, data) = DmaAccess::decode_with_data(&body).unwrap();
    assert_eq!(head, DmaAccess { address, count });
    Ok(data.to_vec())
}

fn dma_write(peer: &mut RawEndpoint, address: u64, data: &[u8]) -> Result<(), u32> {
    let mut p = Vec::new();
    let head = DmaAccess {
        address,
        count: data.len() as u64,
    };
    head.encode_with_data(data, &mut p);
    let (h, _) = dma(peer, Command::DmaWrite, &p);
    if h.is_error() {
        return Err(h.error);
    }
    Ok(())
}

fn dma(peer: &mut RawEndpoint, command: Command, payload: &[u8]) -> (Header, Vec<u8>) {
    let h = Header::command(0x4242, command, payload.len(), false).unwrap();
    peer.send_message(&h, payload, &[]).unwrap();
    let RawMsg {
        header: reply,
        payload: body,
        fds,
    } = peer.recv().unwrap();
    assert!(fds.is_empty());
    assert_eq!((reply.id, reply.command), (0x4242, command as u16));
    (reply, body)
}

#[test]
fn dma_outside_the_iova_windows_gets_an_errno_and_touches_nothing() {
    const RW_GPA: u64 = 0x4_0000;
    const RO_GPA: u64 = 0x10_0000;
    const W: u64 = 0x1000_0000; // 8 KiB read-write onto RW_GPA
    const R: u64 = 0x1000_4000; // 4 KiB read-only onto RO_GPA
    let mem = Arc::new(memory(vec![
        shared(0, MIB as usize),
        region(RO_GPA, 0x1_0000, None, false),
    ]));
    let content = pattern(MIB as usize, 8);
    mem.write_slice(&content, GuestAddress(0)).unwrap();
    let (conn, mut peer) = common::pair();
    let none = DmaOptions {
        guest_memory: GuestMemorySharing::None,
        mode: DmaMode::MessageOnly,
    };
    let iommu = DmaHandle::from(DmaMapper::new(&conn, Arc::clone(&mem)).with_options(&none));
    let (r, seen) = with_peer(&mut peer, 2, || {
        iommu.sync_guest_memory()?; // maps nothing: no sharing
        iommu.map(W, RW_GPA, 0x2000)?;
        iommu.map(R, RO_GPA, 0x1000)
    });
    r.unwrap();
    assert!(seen.iter().all(|m| m.fds.is_empty()));
    let snapshot = || {
        (
            read_guest(&*mem, 0, MIB as usize),
            read_guest(&*mem, RO_GPA, 0x1_0000),
        )
    };
    let before = snapshot();

    // In the window: the guest memory behind it, not at the IOVA.
    assert_eq!(
        dma_read(&mut peer, W + 0x10, 0x20),
        Ok(content[RW_GPA as usize + 0x10..][..0x20].to_vec())
    );
    // Refused, each with its errno.
    // Refused, each with its errno (for DMA_READ, then DMA_WRITE).
    let cases: &[(u64, u64, u32, u32)] = &[
        (RW_GPA, 0x10, EFAULT, EFAULT), // the guest-physical address itself
        (W + 0x1ff0, 0x20, EFAULT, EFAULT), // straddles the window's end
        (W - 0x10, 0x20, EFAULT, EFAULT), // straddles its start
        (W + 0x2000, 0x10, EFAULT, EFAULT), // the gap between the windows
        (R + 0xff0, 0x20, EFAULT, EPERM), // past the read-only window
        (u64::MAX - 8, 0x10, EFAULT, EFAULT), // wraps around
    ];
    for &(address, count, read_errno, write_errno) in cases {
        assert_eq!(
            dma_read(&mut peer, address, count),
            Err(read_errno),
            "DMA_READ {address:#x}+{count:#x}"
        );
        let data = vec![0xee; count as usize];
        assert_eq!(
            dma_write(&mut peer, address, &data),
            Err(write_errno),
            "DMA_WRITE {address:#x}+{count:#x}"
        );
    }
    assert_eq!(dma_write(&mut peer, R, b"nope"), Err(EPERM));
    assert_eq!(
        dma_read(&mut peer, R, 4),
        Ok(vec![0; 4]),
        "the read-only window is readable"
    );
    // A write across both windows (the gap between them is unmapped) is refused whole.
    assert_eq!(
        dma_write(&mut peer, W + 0x1000, &[0xee; 0x4000]),
        Err(EFAULT)
    );
    assert_eq!(snapshot(), before, "a refused request touched guest memory");

    // Unmapped: refused from then on.
    let (r, _) = with_peer(&mut peer, 1, || iommu.unmap(W, 0x2000));
    r.unwrap();
    assert_eq!(dma_read(&mut peer, W, 0x10), Err(EFAULT));
    assert_eq!(dma_write(&mut peer, W, b"gone"), Err(EFAULT));
    assert_eq!(snapshot(), before);
    // A good write lands at the guest-physical address, and only there.
    assert_eq!(dma_write(&mut peer, R, b""), Ok(()));
    let (r, _) = with_peer(&mut peer, 1, || iommu.map(W, RW_GPA, 0x2000));
    r.unwrap();
    assert_eq!(dma_write(&mut peer, W + 0x100, b"landed"), Ok(()));
    assert_eq!(read_guest(&*mem, RW_GPA + 0x100, 6), b"landed");
}

#[test]
fn hot_plug_follows_the_filter() {
    let (device, _engine) = DmaEngine::new();
    let server = Server::new(ServerConfig::default(), Box::new(device));
    let probe = server.probe();
    let (client, server_end) = UnixStream::pair().unwrap();
    let _running = server.serve_stream(server_end);
    let conn = Connection::connect(client, &ConnectOptions::default()).unwrap();
    // Regions from 4 GiB up are hot-pluggable memory the VMM maps itself.
    const HOTPLUG: u64 = 1 << 32;
    let atomic = GuestMemoryAtomic::new(memory(vec![shared(0, MIB as usize)]));
    let options = DmaOptions {
        guest_memory: GuestMemorySharing::Filter(Arc::new(|r: &GuestRegionInfo| r.gpa < HOTPLUG)),
        ..DmaOptions::default()
    };
    let mapper = DmaMapper::new(&conn, atomic.clone()).with_options(&options);
    mapper.map_guest_memory().unwrap();
    let ranges = |probe: &Probe| {
        server_windows(probe)
            .iter()
            .map(|w| (w.0, w.1))
            .collect::<Vec<_>>()
    };
    assert_eq!(ranges(&probe), vec![(0, MIB)]);

    // Plugged: one region the filter selects, one it leaves to the VMM.
    let next = atomic
        .memory()
        .insert_region(Arc::new(shared(2 * MIB, MIB as usize)))
        .unwrap()
        .insert_region(Arc::new(anon(HOTPLUG, 4 * MIB as usize)))
        .unwrap();
    atomic.lock().unwrap().replace(next);
    mapper.sync_guest_memory().unwrap();
    assert_eq!(ranges(&probe), vec![(0, MIB), (2 * MIB, MIB)]);
    // The VMM maps a block of the other; a second sync leaves it alone.
    mapper.map(HOTPLUG + MIB, HOTPLUG + MIB, MIB).unwrap();
    mapper.sync_guest_memory().unwrap();
    assert_eq!(
        ranges(&probe),
        vec![(0, MIB), (2 * MIB, MIB), (HOTPLUG + MIB, MIB)]
    );
    assert_eq!(mapper.len(), 3);
}

#[test]
fn message_only_never_serves_memory_unmapped_while_a_reply_waits() {
    const W: u64 = 0x1_0000_0000;
    const GPA: u64 = 0x10_0000;
    const SIZE: u64 = MIB;
    let mem = Arc::new(memory(vec![shared(0, 4 * MIB as usize)]));
    let (conn, mut peer) = common::pair();
    let only = DmaOptions {
        guest_memory: GuestMemorySharing::None,
        mode: DmaMode::MessageOnly,
    };
    let iommu = DmaHandle::from(DmaMapper::new(&conn, Arc::clone(&mem)).with_options(&only));
    let (r, _) = with_peer(&mut peer, 1, || iommu.map(W, GPA, SIZE));
    r.unwrap();
    let before = pattern(SIZE as usize, 6);
    mem.write_slice(&before, GuestAddress(GPA)).unwrap();

    // A DMA_READ whose 1 MiB reply does not fit the socket: the peer does not read it yet.
    let mut p = Vec::new();
    DmaAccess {
        address: W,
        count: SIZE,
    }
    .encode_into(&mut p);
    let h = Header::command(0x77, Command::DmaRead, p.len(), false).unwrap();
    peer.send_message(&h, &p, &[]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while conn.queued_messages() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reply never queued"
        );
        thread::yield_now();
    }
    // The guest's IOMMU unmaps the window (the DMA_UNMAP waits behind the reply) and the
    // guest reuses the memory.
    thread::scope(|s| {
        let unmap = s.spawn(|| iommu.unmap(W, SIZE));
        while !iommu.mappings().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never unmapped");
            thread::yield_now();
        }
        mem.write_slice(&vec![0xee; SIZE as usize], GuestAddress(GPA))
            .unwrap();
        // The server finally reads: what was mapped when it asked, nothing after.
        let reply = peer.recv().unwrap();
        assert_eq!((reply.header.id, reply.header.is_error()), (0x77, false));
        let (_, data) = DmaAccess::decode_with_data(&reply.payload).unwrap();
        assert!(
            data == before.as_slice(),
            "the reply carried memory unmapped meanwhile"
        );
        accept(&mut peer, 1);
        unmap.join().unwrap().unwrap();
    });
}

/// The engine copies through `dev`'s current connection; `Err(errno)` when it failed.
fn engine_copy_via(
    dev: &VfioUserPciDevice,
    source: u64,
    destination: u64,
    length: u64,
) -> Result<(), u32> {
    let device = dev.device();
    let w = |reg: u64, v: u64| device.write(0, reg, &v.to_le_bytes()).unwrap();
    w(DmaEngine::REG_SOURCE, source);
    w(DmaEngine::REG_DESTINATION, destination);
    w(DmaEngine::REG_LENGTH, length);
    device
        .write(0, DmaEngine::REG_DOORBELL, &1u32.to_le_bytes())
        .unwrap();
    let mut status = [0u8; 4];
    device.read(0, DmaEngine::REG_STATUS, &mut status).unwrap();
    let mut errno = [0u8; 4];
    device.read(0, DmaEngine::REG_ERRNO, &mut errno).unwrap();
    match u32::from_le_bytes(status) {
        s if s == DmaEngineStatus::Done as u32 => Ok(()),
        _ => Err(u32::from_le_bytes(errno)),
    }
}

/// Waits on the device's state event until its state is `want`.
fn wait_state(
    dev: &VfioUserPciDevice,
    event: &vmm_sys_util::eventfd::EventFd,
    want: ConnectionState,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dev.connection_state() != want {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "still {:?}, waiting for {want:?}",
            dev.connection_state()
        );
        fired_within(event, left);
    }
}

#[test]
fn viommu_windows_and_message_only_survive_a_server_restart() {
    const SRC_IOVA: u64 = 0x1_0000_0000;
    const DST_IOVA: u64 = 0x2_0000_0000;
    let mut server = RestartableServer::start(ServerConfig::default(), || {
        Box::new(DmaEngine::new().0) as Box<dyn vfio_user_sample_server::Device>
    });
    let mem = Arc::new(memory(vec![shared(0, 4 * MIB as usize)]));
    let options = AttachOptions {
        reconnect: Some(ReconnectPolicy {
            initial_backoff: std::time::Duration::from_millis(2),
            max_backoff: std::time::Duration::from_millis(20),
            ..ReconnectPolicy::new(server.path())
        }),
        dma: DmaOptions {
            guest_memory: GuestMemorySharing::None,
            mode: DmaMode::MessageOnly,
        },
        ..AttachOptions::default()
    };
    let dev =
        VfioUserPciDevice::attach(server.path(), Arc::clone(&mem), Irqs::new(), &options).unwrap();
    let event = dev.state_event().try_clone().unwrap();
    // The VMM's vIOMMU keeps its own clone of the handle.
    let iommu = dev.dma().unwrap();
    iommu.map(SRC_IOVA, 0x10_0000, 0x1_0000).unwrap();
    iommu.map(DST_IOVA, 0x20_0000, 0x1_0000).unwrap();
    let data = pattern(0x1_0000, 5);
    mem.write_slice(&data, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(engine_copy_via(&dev, SRC_IOVA, DST_IOVA, 0x1_0000), Ok(()));

    server.kill();
    wait_state(&dev, &event, ConnectionState::Reconnecting);
    server.restart();
    wait_state(&dev, &event, ConnectionState::Connected);
    // The restarted server got the same IOVA windows, and no fd.
    assert_eq!(
        server_windows(&server.probe()),
        vec![
            (SRC_IOVA, 0x1_0000, DmaAccessMode::Message),
            (DST_IOVA, 0x1_0000, DmaAccessMode::Message),
        ]
    );
    // The handle taken before the restart controls the windows on the new connection.
    iommu.map(0x3_0000_0000, 0x30_0000, 0x1000).unwrap();
    assert_eq!(server.probe().dma_map_count(), 3);
    assert_eq!(iommu.mappings().len(), 3);
    assert_eq!(iommu.mode(), DmaMode::MessageOnly);
    mem.write_slice(&[0u8; 0x1_0000], GuestAddress(0x20_0000))
        .unwrap();
    assert_eq!(engine_copy_via(&dev, SRC_IOVA, DST_IOVA, 0x1_0000), Ok(()));
    assert_eq!(read_guest(&*mem, 0x20_0000, 0x1_0000), data);
    iommu.unmap(SRC_IOVA, 0x1_0000).unwrap();
    assert_eq!(engine_copy_via(&dev, SRC_IOVA, DST_IOVA, 0x10), Err(EFAULT));
    dev.detach().unwrap();
    assert_eq!(server.probe().dma_map_count(), 0);
}
