// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Heap allocations per region access, counted by a counting global allocator: per 4-byte
//! `VfioUserDevice::read`, `write` and `write_posted` against the sample GPIO server over a
//! real socket, in the steady state (after a warm-up), for every thread of the process:
//! the calling thread ("caller"), the connection's event loop and the server's threads.
//! The crates.io `vfio_user` client's read and write are counted the same way, for
//! reference. Then posted writes that back the socket up, against a server that offers
//! REGION_WRITE_MULTI and one that does not: allocations per write while the send queue
//! is in use. Last, DMA maps and unmaps through `DmaMapper`.
//!
//! The target is 0 on the caller for read, write and posted write. Run with
//! `cargo bench --bench alloc`; `tests/alloc.rs` asserts the caller's zero.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use vfio_user_client::dma::DmaMapper;
use vfio_user_client::{ConnectOptions, Connection, DeviceOptions, VfioUserDevice};
use vfio_user_sample_server::{
    DmaEngine, GpioConfig, GpioDevice, Server, ServerConfig, ServerHandle, SharedMemory,
};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Threads told apart; later ones share the last slot.
const SLOTS: usize = 64;

/// Allocations (`alloc`, `alloc_zeroed` and `realloc` calls) per thread id.
struct Counting {
    tids: [AtomicI32; SLOTS],
    counts: [AtomicU64; SLOTS],
}

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl Counting {
    const fn new() -> Self {
        Counting {
            tids: [const { AtomicI32::new(0) }; SLOTS],
            counts: [const { AtomicU64::new(0) }; SLOTS],
        }
    }

    /// This thread's slot, claimed at its first allocation.
    fn slot(&self) -> usize {
        let cached = SLOT.try_with(Cell::get).unwrap_or(usize::MAX);
        if cached != usize::MAX {
            return cached;
        }
        // SAFETY: gettid has no preconditions and cannot fail.
        let tid = unsafe { libc::gettid() };
        let slot = (0..SLOTS)
            .find(|&i| {
                self.tids[i]
                    .compare_exchange(0, tid, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                    || self.tids[i].load(Ordering::Relaxed) == tid
            })
            .unwrap_or(SLOTS - 1);
        let _ = SLOT.try_with(|s| s.set(slot));
        slot
    }

    fn count(&self) {
        self.counts[self.slot()].fetch_add(1, Ordering::Relaxed);
    }

    /// The calling thread's allocations so far (reading them allocates nothing).
    fn mine(&self) -> u64 {
        self.counts[self.slot()].load(Ordering::Relaxed)
    }

    /// Allocations so far, by thread id.
    fn snapshot(&self) -> BTreeMap<i32, u64> {
        (0..SLOTS)
            .filter_map(|i| {
                let tid = self.tids[i].load(Ordering::Relaxed);
                (tid != 0).then(|| (tid, self.counts[i].load(Ordering::Relaxed)))
            })
            .collect()
    }
}

// SAFETY: every call is passed on unchanged to the system allocator; counting touches only
// atomics and a const-initialised thread-local without a destructor, none of which
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count();
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting::new();

/// BAR1 of the GPIO device: scratch RAM.
const SCRATCH: u32 = 1;
const WARM_UP: u32 = 2_000;

/// Set by `main` when run by `cargo bench` (`--bench`); otherwise (`cargo test --benches`)
/// everything runs, but counted over far fewer operations.
static FULL: AtomicBool = AtomicBool::new(false);

/// Operations counted per figure.
fn measured() -> u32 {
    if FULL.load(Ordering::Relaxed) {
        20_000
    } else {
        200
    }
}
/// Posted writes between two reads in the steady-state count: few enough that the socket
/// never fills, so that every write goes out at once.
const POSTED_BURST: u32 = 16;

fn thread_name(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("tid {tid} (exited)"))
}

/// Runs `op` `n` times and prints the allocations per call of every thread that made any;
/// the calling thread is "caller". `between` runs uncounted on the caller every `every`
/// calls; what it makes other threads allocate (the server answering) is counted for them.
fn count(
    what: &str,
    n: u32,
    every: u32,
    op: &mut dyn FnMut(u32),
    between: &mut dyn FnMut(),
) -> f64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    let me = unsafe { libc::gettid() };
    let mut mine = 0;
    let before = COUNTING.snapshot();
    for i in 0..n {
        let start = COUNTING.mine();
        op(i);
        mine += COUNTING.mine() - start;
        if (i + 1) % every == 0 {
            between();
        }
    }
    let after = COUNTING.snapshot();
    let mut line = format!(
        "allocations per {what}: caller {:.3}",
        mine as f64 / f64::from(n)
    );
    for (tid, count) in &after {
        let delta = count - before.get(tid).copied().unwrap_or(0);
        if *tid == me || delta == 0 {
            continue;
        }
        line += &format!(
            " | {} {:.3}",
            thread_name(*tid),
            delta as f64 / f64::from(n)
        );
    }
    println!("{line}");
    mine as f64 / f64::from(n)
}

fn gpio_server(write_multiple: bool) -> ServerHandle {
    let (dev, _handle) = GpioDevice::new(GpioConfig {
        mappable_bar2: false,
        ..GpioConfig::default()
    })
    .expect("GPIO device");
    let config = ServerConfig {
        write_multiple,
        ..ServerConfig::default()
    };
    Server::new(config, Box::new(dev))
        .listen_temp()
        .expect("sample server")
}

fn ours() {
    let server = gpio_server(true);
    let dev = VfioUserDevice::connect(
        server.socket_path().expect("socket path"),
        &ConnectOptions::default(),
        &DeviceOptions::default(),
    )
    .expect("attach");
    assert!(dev.posted_writes());
    let mut value = [0u8; 4];
    let mut read = |_| dev.read(SCRATCH, 0, &mut value).expect("read");
    let mut write = |i: u32| dev.write(SCRATCH, 0, &i.to_le_bytes()).expect("write");
    let mut posted = |i: u32| {
        dev.write_posted(SCRATCH, 0, &i.to_le_bytes())
            .expect("posted write")
    };
    let mut settle = || {
        let mut v = [0u8; 4];
        dev.read(SCRATCH, 0, &mut v).expect("read");
    };
    for i in 0..WARM_UP {
        read(i);
        write(i);
        posted(i);
        settle();
    }
    println!("ours (VfioUserDevice, 4-byte accesses of BAR1, server offers WRITE_MULTI):");
    let n = measured();
    count("read", n, n, &mut read, &mut || {});
    count("write", n, n, &mut write, &mut || {});
    count("posted write", n, POSTED_BURST, &mut posted, &mut settle);
    drop(dev);
    server.stop();
}

fn crates_io() {
    let server = gpio_server(false);
    let path = server.socket_path().expect("socket path");
    let mut client = match vfio_user::Client::new(path) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("crates.io: skipped, vfio_user::Client::new failed: {e:?}");
            return;
        }
    };
    let mut value = [0u8; 4];
    for i in 0..WARM_UP {
        client.region_read(SCRATCH, 0, &mut value).expect("read");
        client
            .region_write(SCRATCH, 0, &i.to_le_bytes())
            .expect("write");
    }
    println!("crates.io vfio_user client (reference):");
    let n = measured();
    count(
        "read",
        n,
        n,
        &mut |_| client.region_read(SCRATCH, 0, &mut value).expect("read"),
        &mut || {},
    );
    count(
        "write",
        n,
        n,
        &mut |i| {
            client
                .region_write(SCRATCH, 0, &i.to_le_bytes())
                .expect("write")
        },
        &mut || {},
    );
    drop(client);
    server.stop();
}

/// Bursts of posted writes that back the socket up, so that writes queue: per write, what
/// the send queue costs, with and without REGION_WRITE_MULTI.
fn backlog(write_multiple: bool) {
    const BURST: u32 = 5_000;
    let server = gpio_server(write_multiple);
    let dev = VfioUserDevice::connect(
        server.socket_path().expect("socket path"),
        &ConnectOptions::default(),
        &DeviceOptions::default(),
    )
    .expect("attach");
    let mut posted = |i: u32| {
        dev.write_posted(SCRATCH, 0, &i.to_le_bytes())
            .expect("posted write")
    };
    let mut settle = || {
        let mut v = [0u8; 4];
        dev.read(SCRATCH, 0, &mut v).expect("read");
    };
    for i in 0..BURST {
        posted(i);
    }
    settle();
    let what = if write_multiple {
        "posted write in bursts of 5,000 (server offers WRITE_MULTI)"
    } else {
        "posted write in bursts of 5,000 (server without WRITE_MULTI)"
    };
    let bursts = measured().div_ceil(BURST);
    count(what, bursts * BURST, BURST, &mut posted, &mut settle);
    drop(dev);
    server.stop();
}

/// DMA maps and unmaps of 4 KiB fd-backed windows, in transactions of 64 of each, against a
/// DMA engine server that maps every window.
fn dma() {
    const BATCH: u64 = 64;
    const PAGE: u64 = 4096;
    let (engine, _handle) = DmaEngine::new();
    let server = Server::new(ServerConfig::default(), Box::new(engine))
        .listen_temp()
        .expect("sample server");
    let conn = Connection::connect(
        server.socket_path().expect("socket path"),
        &ConnectOptions::default(),
    )
    .expect("connect");
    let shm = SharedMemory::new("alloc-bench", BATCH * PAGE).expect("memfd");
    let file = File::from(shm.as_fd().try_clone_to_owned().expect("dup"));
    let region = MmapRegionBuilder::<()>::new((BATCH * PAGE) as usize)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED)
        .with_file_offset(FileOffset::new(file, 0))
        .build()
        .expect("mmap");
    let guest = GuestRegionMmap::new(region, GuestAddress(0)).expect("region");
    let memory = Arc::new(GuestMemoryMmap::from_regions(vec![guest]).expect("guest memory"));
    let mapper = DmaMapper::new(&conn, memory);
    let mut round = |_| {
        let mut tx = mapper.transaction();
        for i in 0..BATCH {
            tx.map(i * PAGE, i * PAGE, PAGE).expect("map");
        }
        tx.commit().expect("maps");
        let mut tx = mapper.transaction();
        for i in 0..BATCH {
            tx.unmap(i * PAGE, PAGE).expect("unmap");
        }
        tx.commit().expect("unmaps");
    };
    for i in 0..100 {
        round(i);
    }
    let per_round = count(
        "64 DMA maps and 64 unmaps (two transactions)",
        measured() / 20,
        measured() / 20,
        &mut round,
        &mut || {},
    );
    println!(
        "  = {:.3} allocations per operation on the caller",
        per_round / (2 * BATCH) as f64
    );
    drop(mapper);
    drop(conn);
    server.stop();
}

fn main() {
    // `cargo bench -- --list` asks a harness for its benchmarks: there are none to list.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    FULL.store(std::env::args().any(|a| a == "--bench"), Ordering::Relaxed);
    ours();
    crates_io();
    println!("backlog:");
    backlog(true);
    backlog(false);
    println!("DMA (DmaMapper, server maps every window):");
    dma();
}
