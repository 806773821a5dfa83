// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A 4-byte region read, write and posted write allocate nothing on the calling thread in
//! the steady state (against the sample server over a real socket). A counting global
//! allocator counts per thread, so the server's and the test harness's threads do not
//! matter. `benches/alloc.rs` prints the counts of every thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::unix::net::UnixStream;

use vfio_user_client::{ConnectOptions, Connection, DeviceOptions, VfioUserDevice};
use vfio_user_sample_server::{GpioConfig, GpioDevice, Server, ServerConfig};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

impl Counting {
    fn count() {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is passed on unchanged to the system allocator; counting touches only a
// const-initialised thread-local without a destructor, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Counting::count();
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Counting::count();
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Counting::count();
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Allocations made on this thread by `n` calls of `op`.
fn counted(n: u32, mut op: impl FnMut(u32)) -> u64 {
    let before = allocations();
    for i in 0..n {
        op(i);
    }
    allocations() - before
}

const SCRATCH: u32 = 1;
const ROUNDS: u32 = 500;
/// Posted writes between reads: few enough never to fill the socket, so that each goes out
/// at once (a backed-up socket queues, which allocates).
const POSTED_BURST: u32 = 8;

#[test]
fn region_accesses_allocate_nothing_in_the_steady_state() {
    steady_state(true);
}

#[test]
fn without_a_twin_socket_too() {
    // Callers then take the socket out of the event loop's view while they wait.
    steady_state(false);
}

fn steady_state(twin_socket: bool) {
    let (gpio, _handle) = GpioDevice::new(GpioConfig {
        mappable_bar2: false,
        ..GpioConfig::default()
    })
    .unwrap();
    let config = ServerConfig {
        write_multiple: true,
        twin_socket,
        ..ServerConfig::default()
    };
    let (client, server_end) = UnixStream::pair().unwrap();
    let server = Server::new(config, Box::new(gpio)).serve_stream(server_end);
    let conn = Connection::connect(client, &ConnectOptions::default()).unwrap();
    assert_eq!(conn.twin_socket(), twin_socket);
    let dev = VfioUserDevice::new(conn, &DeviceOptions::default()).unwrap();
    assert!(dev.posted_writes());

    let read = |_| {
        let mut v = [0u8; 4];
        dev.read(SCRATCH, 0, &mut v).unwrap();
    };
    let write = |i: u32| dev.write(SCRATCH, 0, &i.to_le_bytes()).unwrap();
    let posted = |i: u32| {
        for k in 0..POSTED_BURST {
            dev.write_posted(SCRATCH, 4 * u64::from(k), &i.to_le_bytes())
                .unwrap();
        }
    };
    // Warm-up: the pending table, the per-thread spares and the thread-locals settle.
    counted(ROUNDS, |i| {
        read(i);
        write(i);
        posted(i);
        read(i);
    });

    assert_eq!(counted(ROUNDS, read), 0, "allocations by {ROUNDS} reads");
    assert_eq!(counted(ROUNDS, write), 0, "allocations by {ROUNDS} writes");
    let mut posted_allocations = 0;
    for i in 0..ROUNDS {
        posted_allocations += counted(1, |_| posted(i));
        // Waits for the burst, uncounted (it allocates nothing either).
        read(i);
    }
    assert_eq!(
        posted_allocations,
        0,
        "allocations by {} posted writes",
        ROUNDS * POSTED_BURST
    );
    let mut last = [0u8; 4];
    dev.read(SCRATCH, 4 * u64::from(POSTED_BURST - 1), &mut last)
        .unwrap();
    assert_eq!(u32::from_le_bytes(last), ROUNDS - 1);
    drop(dev);
    server.join();
}
