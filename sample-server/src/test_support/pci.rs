// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What PCI tests share: an interrupt provider that records what the device asks for,
//! config-space access as a PCI bus does it, event-driven waits on eventfds (no sleeping),
//! and counts of the process's open fds and file mappings.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vfio_user_client::pci::{InterruptKind, InterruptProvider, MsiMessage, PciConfig};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::socket::poll_fd;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An interrupt provider that hands out one non-blocking eventfd per vector and records
/// routes and disables.
#[derive(Debug, Default)]
pub struct Irqs {
    fds: Mutex<HashMap<(InterruptKind, u32), Arc<EventFd>>>,
    /// The last route of each vector, and whether it was masked.
    pub routes: Mutex<HashMap<(InterruptKind, u32), (MsiMessage, bool)>>,
    /// The kinds disabled, in order.
    pub disabled: Mutex<Vec<InterruptKind>>,
    /// The INTx resample eventfd handed to the device, if any.
    pub resample: Option<Arc<EventFd>>,
}

impl Irqs {
    /// A provider without INTx resampling.
    pub fn new() -> Arc<Irqs> {
        Arc::new(Irqs::default())
    }

    /// A provider with an INTx resample eventfd.
    pub fn with_resample() -> Arc<Irqs> {
        Arc::new(Irqs {
            resample: Some(Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"))),
            ..Irqs::default()
        })
    }

    /// The eventfd of `vector` (created at first use).
    pub fn fd(&self, kind: InterruptKind, vector: u32) -> Arc<EventFd> {
        lock(&self.fds)
            .entry((kind, vector))
            .or_insert_with(|| Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")))
            .clone()
    }

    /// The last route of `vector`, and whether it was masked.
    pub fn route(&self, kind: InterruptKind, vector: u32) -> Option<(MsiMessage, bool)> {
        lock(&self.routes).get(&(kind, vector)).copied()
    }
}

impl InterruptProvider for Irqs {
    fn eventfd(&self, kind: InterruptKind, vector: u32) -> Option<Arc<EventFd>> {
        Some(self.fd(kind, vector))
    }

    fn update(
        &self,
        kind: InterruptKind,
        vector: u32,
        message: MsiMessage,
        masked: bool,
    ) -> io::Result<()> {
        lock(&self.routes).insert((kind, vector), (message, masked));
        Ok(())
    }

    fn disable(&self, kind: InterruptKind) -> io::Result<()> {
        lock(&self.disabled).push(kind);
        Ok(())
    }

    fn intx_resample(&self) -> Option<Arc<EventFd>> {
        self.resample.clone()
    }
}

/// Waits (with `poll`, no sleeping) up to 5 s until `fd` is signalled, and consumes the
/// signal.
pub fn fired(fd: &EventFd) -> bool {
    fired_within(fd, Duration::from_secs(5))
}

/// Waits (with `poll`) up to `timeout` until `fd` is signalled, and consumes the signal.
pub fn fired_within(fd: &EventFd, timeout: Duration) -> bool {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    poll_fd(fd.as_raw_fd(), false, ms).unwrap_or(false) && fd.read().is_ok()
}

/// Whether someone (an event loop) read `fd`'s signal within `timeout`; spins without
/// sleeping.
pub fn consumed_within(fd: &EventFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(false) = poll_fd(fd.as_raw_fd(), false, 0) {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

/// Whether `fd` has no signal waiting (consumes one if it has).
pub fn quiet(fd: &EventFd) -> bool {
    fd.read().is_err()
}

/// Config-space read of `len` (1, 2 or 4) bytes at `offset` over the 32-bit register
/// interface, as a PCI bus does it.
pub fn cfg_read(dev: &mut impl PciConfig, offset: usize, len: usize) -> u32 {
    let v = dev.read_config_register(offset / 4) >> (8 * (offset % 4));
    match len {
        1 => v & 0xff,
        2 => v & 0xffff,
        _ => v,
    }
}

/// Config-space write of `data` at `offset`; asserts that it moves no BAR.
pub fn cfg_write(dev: &mut impl PciConfig, offset: usize, data: &[u8]) {
    let moves = dev.write_config_register(offset / 4, (offset % 4) as u64, data);
    assert!(moves.is_empty(), "unexpected BAR moves {moves:?}");
}

/// The offset of capability `id`, walking the list through config reads.
pub fn find_cap(dev: &mut impl PciConfig, id: u8) -> Option<usize> {
    let mut at = cfg_read(dev, 0x34, 1) as usize & !3;
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        if cfg_read(dev, at, 1) as u8 == id {
            return Some(at);
        }
        at = cfg_read(dev, at + 1, 1) as usize & !3;
    }
    None
}

/// The number of this process's open fds.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Counts of this process's open fds and of its file-backed memory mappings (guest memory
/// and mapped BAR areas are memfds, here and in an in-process server). Anonymous mappings
/// are left out: thread stacks that the C library caches come and go with the test
/// harness's threads.
pub fn fds_and_maps() -> (usize, usize) {
    let fds = open_fds();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with('/') && !p.starts_with("/usr"))
        })
        .count();
    (fds, maps)
}
