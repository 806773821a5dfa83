// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the PCI tests share: memfd guest memory, an interrupt provider that records what
//! the device tells it, and event-driven waits on eventfds.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vfio_user_client::pci::{InterruptKind, InterruptProvider, MsiMessage, PciConfig};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM of `size` bytes at guest address 0, backed by a memfd (shareable with the
/// server).
pub fn guest_memory(size: usize) -> Arc<GuestMemoryMmap> {
    Arc::new(
        GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(memfd(size), 0)),
        )])
        .unwrap(),
    )
}

/// A memfd of `size` bytes.
pub fn memfd(size: usize) -> File {
    let name = CString::new("guest-ram").unwrap();
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).unwrap();
    file
}

/// An interrupt provider that hands out one non-blocking eventfd per vector and records
/// routes and disables.
#[derive(Debug, Default)]
pub struct Irqs {
    fds: Mutex<HashMap<(InterruptKind, u32), Arc<EventFd>>>,
    pub routes: Mutex<HashMap<(InterruptKind, u32), (MsiMessage, bool)>>,
    pub disabled: Mutex<Vec<InterruptKind>>,
    pub resample: Option<Arc<EventFd>>,
}

impl Irqs {
    pub fn new() -> Arc<Irqs> {
        Arc::new(Irqs::default())
    }

    pub fn with_resample() -> Arc<Irqs> {
        Arc::new(Irqs {
            resample: Some(Arc::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            ..Irqs::default()
        })
    }

    pub fn fd(&self, kind: InterruptKind, vector: u32) -> Arc<EventFd> {
        self.fds
            .lock()
            .unwrap()
            .entry((kind, vector))
            .or_insert_with(|| Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
            .clone()
    }

    pub fn route(&self, kind: InterruptKind, vector: u32) -> Option<(MsiMessage, bool)> {
        self.routes.lock().unwrap().get(&(kind, vector)).copied()
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
        self.routes
            .lock()
            .unwrap()
            .insert((kind, vector), (message, masked));
        Ok(())
    }

    fn disable(&self, kind: InterruptKind) -> io::Result<()> {
        self.disabled.lock().unwrap().push(kind);
        Ok(())
    }

    fn intx_resample(&self) -> Option<Arc<EventFd>> {
        self.resample.clone()
    }
}

/// Waits (with `poll`, no sleeping) until `fd` is signalled, and consumes the signal.
pub fn fired(fd: &EventFd) -> bool {
    fired_within(fd, Duration::from_secs(5))
}

pub fn fired_within(fd: &EventFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `p` is one valid pollfd that outlives the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1 && fd.read().is_ok()
}

/// Whether someone (the event loop) read `fd`'s signal within `timeout`; spins without
/// sleeping.
pub fn consumed_within(fd: &EventFd, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while std::time::Instant::now() < deadline {
        // SAFETY: `p` is one valid pollfd that outlives the call.
        if unsafe { libc::poll(&mut p, 1, 0) } == 0 {
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

/// Config-space byte access over the 32-bit register interface, as a PCI bus does it.
pub fn cfg_read(dev: &mut impl PciConfig, offset: usize, len: usize) -> u32 {
    let v = dev.read_config_register(offset / 4) >> (8 * (offset % 4));
    match len {
        1 => v & 0xff,
        2 => v & 0xffff,
        _ => v,
    }
}

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

/// Counts of this process's open fds and of its file-backed memory mappings (guest memory
/// and mapped BAR areas are memfds, here and in the in-process server). Anonymous mappings
/// are left out: thread stacks that the C library caches come and go with the test
/// harness's threads.
pub fn fds_and_maps() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with('/') && !p.starts_with("/usr"))
        })
        .count();
    (fds, maps)
}
