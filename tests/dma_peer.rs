// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hostile and edge-case server requests from a scripted peer: DMA to unmapped, read-only
//! and straddling addresses, oversized and malformed requests, memory that went away, a
//! server request while a caller waits for its own reply, refused unmaps, and twin-socket
//! grants that cannot be honoured.

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use vfio_user_client::dma::DmaMapper;
use vfio_user_client::negotiate::NegotiateError;
use vfio_user_client::protocol::{
    Command, DmaAccess, DmaMap, DmaUnmap, Header, RegionAccess, Version,
};
use vfio_user_client::{connection, ConnectOptions, Connection, Error};
use vfio_user_sample_server::test_support::guest::{anon, memory, pattern, region, shared};
use vfio_user_sample_server::wire::{RawEndpoint, RawMsg};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MAX_XFER: u64 = 64 << 10;
const EFAULT: u32 = libc::EFAULT as u32;
const EPERM: u32 = libc::EPERM as u32;
const EINVAL: u32 = libc::EINVAL as u32;
const E2BIG: u32 = libc::E2BIG as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;

// Guest: 0..1 MiB read-write (memfd), 1..1.25 MiB read-only (anonymous), 2..3 MiB and
// 3..3.25 MiB read-write (anonymous, adjacent).
const RW: u64 = 0;
const RO: u64 = 0x10_0000;
const A: u64 = 0x20_0000;
const B: u64 = 0x30_0000;

fn guest() -> GuestMemoryMmap {
    memory(vec![
        shared(RW, 0x10_0000),
        region(RO, 0x4_0000, None, false),
        anon(A, 0x10_0000),
        anon(B, 0x4_0000),
    ])
}

/// Answers every DMA_MAP / DMA_UNMAP `n` times with success, returning what came.
fn accept(peer: &mut RawEndpoint, n: usize) -> Vec<(Header, Vec<u8>)> {
    (0..n)
        .map(|_| {
            let RawMsg {
                header: h,
                payload: body,
                ..
            } = peer.recv().unwrap();
            let reply = if h.command == Command::DmaUnmap as u16 {
                body.clone()
            } else {
                Vec::new()
            };
            peer.reply(&h, &reply, &[]).unwrap();
            (h, body)
        })
        .collect()
}

struct Setup<AS> {
    mapper: DmaMapper<AS>,
    conn: Connection,
    peer: RawEndpoint,
}

fn setup<AS>(memory: AS) -> Setup<AS>
where
    AS: GuestAddressSpace<M = GuestMemoryMmap> + Send + Sync + 'static,
{
    setup_with(memory, MAX_XFER)
}

fn setup_with<AS>(memory: AS, max_data_xfer_size: u64) -> Setup<AS>
where
    AS: GuestAddressSpace<M = GuestMemoryMmap> + Send + Sync + 'static,
{
    // The offer's max_data_xfer_size bounds the DMA_READ / DMA_WRITE the mapper serves.
    let mut options = ConnectOptions::default();
    options.offer.max_data_xfer_size = max_data_xfer_size as u32;
    let (conn, mut peer) = common::pair_with(options);
    let mapper = DmaMapper::new(&conn, memory);
    let regions = thread::scope(|s| {
        let t = s.spawn(|| mapper.map_guest_memory());
        let got = accept(&mut peer, 4);
        t.join().unwrap().unwrap();
        got
    });
    let maps: Vec<DmaMap> = regions
        .iter()
        .map(|(_, b)| DmaMap::decode(b).unwrap())
        .collect();
    assert_eq!(
        maps.iter()
            .map(|m| (m.address, m.size, m.flags))
            .collect::<Vec<_>>(),
        vec![
            (RW, 0x10_0000, 3),
            (RO, 0x4_0000, 1),
            (A, 0x10_0000, 3),
            (B, 0x4_0000, 3)
        ]
    );
    Setup { mapper, conn, peer }
}

/// Sends a DMA request and returns the reply's header and payload.
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

fn dma_read(peer: &mut RawEndpoint, address: u64, count: u64) -> Result<Vec<u8>, u32> {
    let mut p = Vec::new();
    DmaAccess { address, count }.encode_into(&mut p);
    let (h, body) = dma(peer, Command::DmaRead, &p);
    if h.is_error() {
        assert_eq!(
            h.size as usize,
            Header::SIZE,
            "error replies are header-only"
        );
        return Err(h.error);
    }
    // The full 16-byte head with the 64-bit count, then the data.
    assert_eq!(h.size as u64, 32 + count);
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
    let (h, body) = dma(peer, Command::DmaWrite, &p);
    if h.is_error() {
        return Err(h.error);
    }
    assert_eq!(h.size, 32, "the DMA_WRITE reply is the 16-byte head");
    assert_eq!(DmaAccess::decode(&body).unwrap(), head);
    Ok(())
}

fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut all = Vec::new();
    for (gpa, len) in [
        (RW, 0x10_0000),
        (RO, 0x4_0000),
        (A, 0x10_0000),
        (B, 0x4_0000),
    ] {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        all.extend(buf);
    }
    all
}

#[test]
fn good_requests_are_served_across_adjacent_mappings() {
    let mem = Arc::new(guest());
    let mut s = setup(Arc::clone(&mem));
    // DMA_WRITEs are recorded while dirty logging is on.
    s.mapper.dirty_log().start();
    let data = pattern(48 << 10, 5);
    mem.write_slice(&data, GuestAddress(B - (16 << 10)))
        .unwrap();
    assert_eq!(
        dma_read(&mut s.peer, B - (16 << 10), data.len() as u64),
        Ok(data)
    );
    assert_eq!(dma_read(&mut s.peer, RO + 8, 0), Ok(vec![]));

    let data = pattern(MAX_XFER as usize, 6);
    dma_write(&mut s.peer, B - 0x800, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    mem.read_slice(&mut back, GuestAddress(B - 0x800)).unwrap();
    assert_eq!(back, data);
    // The fd-backed region is served by messages as well when the server asks.
    dma_write(&mut s.peer, RW + 0x10, &[1, 2, 3]).unwrap();
    assert_eq!(dma_read(&mut s.peer, RW + 0x10, 3), Ok(vec![1, 2, 3]));
    let dirty = s.mapper.dirty_log().dirty_pages();
    assert_eq!(dirty.first(), Some(&RW));
    assert_eq!(dirty.len(), 1 + 17);
    assert!(s.mapper.dirty_log().is_dirty(B + 0xf000));
}

#[test]
fn bad_requests_get_the_right_errno_and_leave_memory_alone() {
    let mem = Arc::new(guest());
    let mut s = setup(Arc::clone(&mem));
    let before = snapshot(&mem);
    let p = &mut s.peer;

    // Unmapped.
    assert_eq!(dma_read(p, 0x40_0000, 8), Err(EFAULT));
    assert_eq!(dma_write(p, 0x40_0000, &[1; 8]), Err(EFAULT));
    assert_eq!(dma_read(p, u64::MAX - 3, 8), Err(EFAULT));
    // Read-only.
    assert_eq!(dma_write(p, RO + 0x100, &[1; 8]), Err(EPERM));
    assert_eq!(dma_read(p, RO + 0x100, 8), Ok(vec![0; 8]));
    // Straddling the end of a mapping (into a hole, and into the read-only one).
    assert_eq!(dma_read(p, B + 0x4_0000 - 4, 8), Err(EFAULT));
    assert_eq!(dma_write(p, B + 0x4_0000 - 4, &[1; 8]), Err(EFAULT));
    assert_eq!(dma_write(p, RO - 4, &[1; 8]), Err(EPERM));
    // max_data_xfer_size + 1.
    assert_eq!(dma_read(p, A, MAX_XFER + 1), Err(E2BIG));
    assert_eq!(dma_write(p, A, &vec![7; MAX_XFER as usize + 1]), Err(E2BIG));
    // Malformed: count and data disagree, short head, trailing bytes, fds attached.
    let mut bad = Vec::new();
    DmaAccess {
        address: A,
        count: 9,
    }
    .encode_with_data(&[1; 8], &mut bad);
    assert!(dma(p, Command::DmaWrite, &bad).0.is_error());
    assert_eq!(dma(p, Command::DmaRead, &[0; 8]).0.error, EINVAL);
    assert_eq!(dma(p, Command::DmaRead, &[0; 17]).0.error, EINVAL);
    let efd = EventFd::new(0).unwrap();
    let mut req = Vec::new();
    DmaAccess {
        address: A,
        count: 4,
    }
    .encode_into(&mut req);
    let h = Header::command(9, Command::DmaRead, req.len(), false).unwrap();
    p.send_message(&h, &req, &[efd.as_raw_fd()]).unwrap();
    let RawMsg { header: reply, .. } = p.recv().unwrap();
    assert_eq!((reply.id, reply.error), (9, EINVAL));
    // Not a request the client serves.
    assert_eq!(dma(p, Command::RegionRead, &[0; 16]).0.error, ENOSYS);

    assert_eq!(snapshot(&mem), before);
    assert!(s.mapper.dirty_log().dirty_pages().is_empty());
    // The connection still works.
    assert_eq!(dma_read(p, A, 4), Ok(vec![0; 4]));
}

#[test]
fn memory_that_went_away_is_not_touched() {
    let atomic = GuestMemoryAtomic::new(guest());
    let mut s = setup(atomic.clone());
    // Unplug region A without syncing the mappings yet: its window is still live.
    let (next, _) = atomic
        .memory()
        .remove_region(GuestAddress(A), 0x10_0000)
        .unwrap();
    atomic.lock().unwrap().replace(next);
    assert_eq!(dma_read(&mut s.peer, A + 0x10, 4), Err(EFAULT));
    assert_eq!(dma_write(&mut s.peer, A + 0x10, &[1; 4]), Err(EFAULT));
    assert_eq!(dma_read(&mut s.peer, B, 4), Ok(vec![0; 4]));
    // The sync unmaps it.
    thread::scope(|sc| {
        let t = sc.spawn(|| s.mapper.sync_guest_memory());
        let got = accept(&mut s.peer, 1);
        assert_eq!(got[0].0.command, Command::DmaUnmap as u16);
        t.join().unwrap().unwrap();
    });
    assert_eq!(s.mapper.len(), 3);
}

#[test]
fn malformed_unmap_replies_are_errors() {
    let mem = Arc::new(guest());
    let mut s = setup(mem);
    // Empty, one byte short of the entry, and the entry of another window.
    let echo = |address: u64| {
        let mut p = Vec::new();
        DmaUnmap::new(address, 0x10_0000).encode_into(&mut p);
        p
    };
    let short = echo(A)[..DmaUnmap::SIZE - 1].to_vec();
    for reply in [Vec::new(), short, echo(A + 0x10_0000)] {
        thread::scope(|sc| {
            let t = sc.spawn(|| s.mapper.unmap(A, 0x10_0000));
            let RawMsg { header: h, .. } = s.peer.recv().unwrap();
            assert_eq!(h.command, Command::DmaUnmap as u16);
            s.peer.reply(&h, &reply, &[]).unwrap();
            let e = t.join().unwrap().unwrap_err();
            let error = &e.failures()[0].error;
            assert!(
                matches!(
                    error,
                    connection::Error::BadReply {
                        command: Command::DmaUnmap,
                        ..
                    }
                ),
                "{error}"
            );
        });
        // The window stays, as after a refusal: the server's state is unknown.
        assert_eq!(s.mapper.len(), 4);
    }
    // A reply that echoes the window is a success.
    thread::scope(|sc| {
        let t = sc.spawn(|| s.mapper.unmap(A, 0x10_0000));
        accept(&mut s.peer, 1);
        t.join().unwrap().unwrap();
    });
    assert_eq!(s.mapper.len(), 3);
}

#[test]
fn refused_unmaps_keep_their_mapping() {
    let mem = Arc::new(guest());
    let mut s = setup(mem);
    thread::scope(|sc| {
        let t = sc.spawn(|| s.mapper.unmap(A, 0x10_0000));
        let RawMsg { header: h, .. } = s.peer.recv().unwrap();
        assert_eq!(h.command, Command::DmaUnmap as u16);
        s.peer
            .send_message(&Header::error_reply(&h, libc::EBUSY as u32), &[], &[])
            .unwrap();
        let e = t.join().unwrap().unwrap_err();
        assert_eq!(
            e.failures()[0].error.server_errno(),
            Some(libc::EBUSY as u32)
        );
    });
    assert_eq!(s.mapper.len(), 4);
    // ...and keep serving it.
    assert_eq!(dma_read(&mut s.peer, A, 4), Ok(vec![0; 4]));
}

#[test]
fn a_server_request_is_answered_while_a_caller_waits() {
    let mem = Arc::new(guest());
    let mut s = setup(Arc::clone(&mem));
    mem.write_slice(&[0xab; 16], GuestAddress(A)).unwrap();
    let conn = &s.conn;
    thread::scope(|sc| {
        let caller = sc.spawn(move || {
            let mut p = Vec::new();
            RegionAccess {
                offset: 0,
                region: 0,
                count: 4,
            }
            .encode_into(&mut p);
            conn.request(Command::RegionRead, &p, &[]).unwrap()
        });
        // As libvfio-user without a twin socket: a DMA_READ before the reply, and the reply
        // only once the DMA_READ was answered.
        let RawMsg { header: rq, .. } = s.peer.recv().unwrap();
        assert_eq!(rq.command, Command::RegionRead as u16);
        assert_eq!(dma_read(&mut s.peer, A, 16), Ok(vec![0xab; 16]));
        let mut reply = Vec::new();
        RegionAccess {
            offset: 0,
            region: 0,
            count: 4,
        }
        .encode_with_data(&[1, 2, 3, 4], &mut reply);
        s.peer.reply(&rq, &reply, &[]).unwrap();
        let got = caller.join().unwrap();
        assert_eq!(got.payload[16..], [1, 2, 3, 4]);
    });
}

// ---------------------------------------------------------------------------------------
// Large DMA_READ replies on the main socket (sent from guest memory, waiting for room)
// ---------------------------------------------------------------------------------------

const MIB: u64 = 1 << 20;

fn dma_read_request(peer: &mut RawEndpoint, id: u16, address: u64, count: u64) {
    let mut p = Vec::new();
    DmaAccess { address, count }.encode_into(&mut p);
    let h = Header::command(id, Command::DmaRead, p.len(), false).unwrap();
    peer.send_message(&h, &p, &[]).unwrap();
}

/// Reads a DMA_READ reply's header, then its body `chunk` bytes at a time with `pause`
/// between reads (a server slow to drain its socket), and checks it against `expect`.
fn read_dma_reply_slowly(
    peer: &mut RawEndpoint,
    id: u16,
    address: u64,
    expect: &[u8],
    chunk: usize,
    pause: Duration,
) {
    let mut hdr = [0u8; Header::SIZE];
    peer.socket().read_exact(&mut hdr).unwrap();
    let h = Header::from_bytes(&hdr);
    assert!(!h.is_error(), "{h}");
    assert_eq!((h.id, h.command), (id, Command::DmaRead as u16));
    assert_eq!(h.size as usize, 32 + expect.len());
    let mut body = vec![0u8; h.payload_len()];
    for part in body.chunks_mut(chunk) {
        thread::sleep(pause);
        peer.socket().read_exact(part).unwrap();
    }
    let (head, data) = DmaAccess::decode_with_data(&body).unwrap();
    let count = expect.len() as u64;
    assert_eq!(head, DmaAccess { address, count });
    assert!(data == expect, "DMA_READ data differs");
}

fn region_write_payload(marker: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    RegionAccess {
        offset: 0,
        region: 0,
        count: len as u32,
    }
    .encode_with_data(&vec![marker; len], &mut p);
    p
}

fn wait_for_queued(conn: &Connection, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while conn.queued_messages() != n {
        assert!(
            Instant::now() < deadline,
            "{} queued",
            conn.queued_messages()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_1mib_dma_read_on_the_main_socket_is_served_while_the_server_drains_slowly() {
    let mem = Arc::new(guest());
    let mut s = setup_with(Arc::clone(&mem), MIB);
    let data = pattern(MIB as usize, 9);
    mem.write_slice(&data, GuestAddress(RW)).unwrap();

    // Drained at a trickle, each step within the short wait for room.
    dma_read_request(&mut s.peer, 1, RW, MIB);
    read_dma_reply_slowly(
        &mut s.peer,
        1,
        RW,
        &data,
        64 << 10,
        Duration::from_millis(1),
    );
    wait_for_queued(&s.conn, 0);

    // Not read at all for longer than that wait: the rest of the reply is queued (still
    // unbuffered) and a message posted meanwhile goes behind it.
    dma_read_request(&mut s.peer, 2, RW, MIB);
    wait_for_queued(&s.conn, 1);
    let posted = region_write_payload(0x77, 100);
    s.conn
        .send_no_reply(Command::RegionWrite, &posted, &[])
        .unwrap();
    assert_eq!(s.conn.queued_messages(), 2);
    read_dma_reply_slowly(&mut s.peer, 2, RW, &data, 256 << 10, Duration::ZERO);
    let RawMsg {
        header: h,
        payload: body,
        ..
    } = s.peer.recv().unwrap();
    assert_eq!(h.command, Command::RegionWrite as u16);
    assert!(h.no_reply());
    assert_eq!(body, posted);
    wait_for_queued(&s.conn, 0);

    // Guest memory changed since is what the next reply carries.
    let data = pattern(MIB as usize - 4096, 10);
    mem.write_slice(&data, GuestAddress(RW + 4096)).unwrap();
    assert_eq!(
        dma_read(&mut s.peer, RW + 4096, data.len() as u64),
        Ok(data)
    );
    assert!(s.conn.is_connected());
}

#[test]
fn large_dma_reads_on_the_main_socket_interleave_with_caller_requests() {
    const READS: usize = 12;
    const CALLS: u32 = 200;
    let mem = Arc::new(guest());
    let mut s = setup_with(Arc::clone(&mem), MIB);
    let data = pattern(MIB as usize, 11);
    mem.write_slice(&data, GuestAddress(RW)).unwrap();
    let conn = &s.conn;
    thread::scope(|sc| {
        let caller = sc.spawn(move || {
            for i in 0..CALLS {
                if i % 3 == 0 {
                    let p = region_write_payload(i as u8, 4096);
                    conn.send_no_reply(Command::RegionWrite, &p, &[]).unwrap();
                }
                let mut p = Vec::new();
                RegionAccess {
                    offset: u64::from(i),
                    region: 0,
                    count: 4,
                }
                .encode_into(&mut p);
                let r = conn.request(Command::RegionRead, &p, &[]).unwrap();
                assert_eq!(r.payload[16..], i.to_le_bytes());
            }
        });
        // The server side: one DMA_READ outstanding at a time, answering the caller's reads
        // (and taking its posted writes) as they come between the reply's bytes.
        let (mut reads, mut answered, mut posted) = (0usize, 0u32, 0u32);
        let mut outstanding = None;
        while reads < READS || answered < CALLS {
            if outstanding.is_none() && reads < READS {
                let off = (reads as u64 % 4) * 4096;
                let id = 0x100 + reads as u16;
                dma_read_request(&mut s.peer, id, RW + off, MIB - off);
                outstanding = Some((id, off));
            }
            let RawMsg {
                header: h,
                payload: body,
                ..
            } = s.peer.recv().unwrap();
            if h.is_reply() {
                let (id, off) = outstanding.take().expect("an unexpected reply");
                assert_eq!((h.id, h.command, h.error), (id, Command::DmaRead as u16, 0));
                let (head, got) = DmaAccess::decode_with_data(&body).unwrap();
                assert_eq!(head.address, RW + off);
                assert!(got == &data[off as usize..], "DMA_READ {id} data differs");
                reads += 1;
            } else if h.command == Command::RegionWrite as u16 {
                assert!(h.no_reply());
                assert_eq!(body, region_write_payload(posted as u8 * 3, 4096));
                posted += 1;
            } else {
                assert_eq!(h.command, Command::RegionRead as u16);
                let rq = RegionAccess::decode(&body).unwrap();
                let i = rq.offset as u32;
                assert_eq!(i, answered, "caller requests in order");
                let mut reply = Vec::new();
                RegionAccess { count: 4, ..rq }.encode_with_data(&i.to_le_bytes(), &mut reply);
                s.peer.reply(&h, &reply, &[]).unwrap();
                answered += 1;
            }
        }
        caller.join().unwrap();
        assert_eq!(posted, CALLS.div_ceil(3));
    });
    assert!(s.conn.is_connected());
    wait_for_queued(&s.conn, 0);
}

#[test]
fn a_dma_read_reply_goes_behind_messages_already_queued() {
    let mem = Arc::new(guest());
    let mut s = setup_with(Arc::clone(&mem), MIB);
    let data = pattern(256 << 10, 12);
    mem.write_slice(&data, GuestAddress(A)).unwrap();
    // The server reads nothing until our send queue holds messages.
    let mut posted = Vec::new();
    while s.conn.queued_messages() < 3 {
        let p = region_write_payload(posted.len() as u8, 64 << 10);
        s.conn.send_no_reply(Command::RegionWrite, &p, &[]).unwrap();
        posted.push(p);
    }
    let queued = s.conn.queued_messages();
    dma_read_request(&mut s.peer, 0x55, A, data.len() as u64);
    wait_for_queued(&s.conn, queued + 1);
    for p in &posted {
        let RawMsg {
            header: h,
            payload: body,
            ..
        } = s.peer.recv().unwrap();
        assert_eq!(h.command, Command::RegionWrite as u16);
        assert!(body == *p, "posted messages in order, whole");
    }
    read_dma_reply_slowly(&mut s.peer, 0x55, A, &data, 64 << 10, Duration::ZERO);
    wait_for_queued(&s.conn, 0);
    // Served at once again when nothing is queued.
    assert_eq!(dma_read(&mut s.peer, A, 4096), Ok(data[..4096].to_vec()));
}

// ---------------------------------------------------------------------------------------
// Twin socket grants from a scripted server
// ---------------------------------------------------------------------------------------

/// Runs a VERSION exchange with `json` and `fds` as the server's answer.
fn handshake_with(
    json: serde_json::Value,
    fds: Vec<std::os::fd::OwnedFd>,
) -> (Result<Connection, Error>, RawEndpoint) {
    let (client, server) = UnixStream::pair().unwrap();
    let mut peer = common::peer(server);
    let t = thread::spawn(move || Connection::connect(client, &ConnectOptions::default()));
    let RawMsg {
        header: h,
        payload: body,
        ..
    } = peer.recv().unwrap();
    let offer = Version::decode(&body).unwrap();
    let offered: serde_json::Value = serde_json::from_str(offer.json.as_deref().unwrap()).unwrap();
    assert_eq!(offered["capabilities"]["twin_socket"]["supported"], true);
    let mut payload = Vec::new();
    Version {
        major: 0,
        minor: 0,
        json: Some(json.to_string()),
    }
    .encode_into(&mut payload);
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    peer.send_message(&Header::reply(&h, payload.len()).unwrap(), &payload, &raw)
        .unwrap();
    (t.join().unwrap(), peer)
}

fn twin_error(json: serde_json::Value, fds: Vec<std::os::fd::OwnedFd>) -> NegotiateError {
    match handshake_with(json, fds).0 {
        Err(Error::Negotiate(e)) => e,
        other => panic!("expected a negotiation error, got {other:?}"),
    }
}

#[test]
fn twin_grants_without_a_usable_socket_end_the_connection() {
    let caps = |t: serde_json::Value| json!({"capabilities": {"twin_socket": t}});
    assert_eq!(
        twin_error(caps(json!({"supported": true})), vec![]),
        NegotiateError::TwinSocketFd {
            fd_index: None,
            fds: 0
        }
    );
    let (a, _b) = UnixStream::pair().unwrap();
    assert_eq!(
        twin_error(
            caps(json!({"supported": true, "fd_index": 1})),
            vec![a.into()]
        ),
        NegotiateError::TwinSocketFd {
            fd_index: Some(1),
            fds: 1
        }
    );
    let not_a_socket = std::fs::File::open("/dev/null").unwrap();
    let e = twin_error(
        caps(json!({"supported": true, "fd_index": 0})),
        vec![not_a_socket.into()],
    );
    assert_eq!(
        e,
        NegotiateError::TwinSocketFd {
            fd_index: Some(0),
            fds: 1
        }
    );
    assert!(e.to_string().contains("twin-socket"));
    // Not granted: one socket, and a stray fd is closed.
    let (a, _b) = UnixStream::pair().unwrap();
    let (conn, _peer) = handshake_with(caps(json!({"supported": false})), vec![a.into()]);
    assert!(!conn.unwrap().twin_socket());
}

#[test]
fn requests_on_the_twin_socket_are_answered_there_and_its_loss_ends_the_connection() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (conn, mut main) = handshake_with(
        json!({"capabilities": {"twin_socket": {"supported": true, "fd_index": 0}}}),
        vec![ours.into()],
    );
    let conn = conn.unwrap();
    assert!(conn.twin_socket());
    let mut twin = common::peer(theirs);
    let mem = Arc::new(memory(vec![anon(0, 0x10_0000)]));
    mem.write_slice(&[0x5a; 8], GuestAddress(0x100)).unwrap();
    let big = pattern(512 << 10, 8);
    mem.write_slice(&big, GuestAddress(0x8_0000)).unwrap();
    let mapper = DmaMapper::new(&conn, Arc::clone(&mem));
    // Two windows, so that the large reads below cross from one to the other.
    thread::scope(|sc| {
        let t = sc.spawn(|| {
            let mut tx = mapper.transaction();
            tx.map(0, 0, 0xa_0000)?;
            tx.map(0xa_0000, 0xa_0000, 0x6_0000)?;
            tx.commit()
        });
        accept(&mut main, 2);
        t.join().unwrap().unwrap();
    });
    assert_eq!(dma_read(&mut twin, 0x100, 8), Ok(vec![0x5a; 8]));
    assert_eq!(dma_write(&mut twin, 0x20_0000, &[1]), Err(EFAULT));
    // Large reads go from guest memory to the socket without a copy, more than the socket
    // holds at once; refusals still get their errno.
    for _ in 0..3 {
        assert_eq!(
            dma_read(&mut twin, 0x8_0000, big.len() as u64),
            Ok(big.clone())
        );
    }
    // A server that sends several requests before reading: the replies that do not fit
    // wait in order until it reads.
    for id in 0..3u16 {
        let mut p = Vec::new();
        DmaAccess {
            address: 0x8_0000,
            count: big.len() as u64,
        }
        .encode_into(&mut p);
        twin.send_message(
            &Header::command(id, Command::DmaRead, p.len(), false).unwrap(),
            &p,
            &[],
        )
        .unwrap();
    }
    for id in 0..3u16 {
        let RawMsg {
            header: h,
            payload: body,
            ..
        } = twin.recv().unwrap();
        assert_eq!((h.id, h.is_error()), (id, false));
        assert_eq!(&body[16..], &big[..]);
    }
    assert_eq!(dma_read(&mut twin, 0xf_0000, 0x2_0000), Err(EFAULT));
    assert_eq!(dma_read(&mut twin, 0, (1 << 20) + 1), Err(E2BIG));
    let mut p = Vec::new();
    DmaAccess {
        address: 0,
        count: 0x1_0000,
    }
    .encode_into(&mut p);
    let h = Header::command(3, Command::DmaRead, p.len(), false).unwrap();
    let efd = EventFd::new(0).unwrap();
    twin.send_message(&h, &p, &[efd.as_raw_fd()]).unwrap();
    assert_eq!(twin.recv().unwrap().header.error, EINVAL);
    // The main socket saw none of it.
    main.socket().set_nonblocking(true).unwrap();
    let mut probe = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut main.socket(), &mut probe)
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::WouldBlock
    );
    // The server closing the twin socket fails the connection.
    let lost = Arc::new(EventFd::new(0).unwrap());
    let l2 = Arc::clone(&lost);
    conn.on_disconnect(move |_| {
        l2.write(1).unwrap();
    });
    drop(twin);
    lost.read().unwrap();
    assert!(!conn.is_connected());
}
