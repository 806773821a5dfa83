// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! An independent peer: the crates.io `vfio_user` crate's `Server` with a small GPIO-like
//! backend, serving one client after another on a socket in a temporary directory.
//!
//! The device: registers in region 0 (a read-only identification register and an output
//! latch; only the latch is writable), RAM in region 1, optionally a mappable region 2 with
//! two sparse areas, and config space in region 7 ([`config::with_capabilities`], only its
//! command register writable; DEVICE_RESET clears it). IRQ
//! indexes 1 (MSI) and 2 (MSI-X) have four vectors each, as many as config space's MSI and
//! MSI-X capabilities offer; the other indexes have one. The backend keeps every trigger
//! eventfd; DMA windows are recorded, not mapped.
//!
//! That server desynchronises on commands it does not support (it replies without draining
//! the body), and sends the backend's failures as errno 0.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{
    DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion, SparseArea,
};
use vmm_sys_util::tempdir::TempDir;

use super::config;
use crate::SharedMemory;

/// PCI vendor id in config space (Red Hat, so that `lspci`-style decoding names it).
pub const VENDOR_ID: u16 = 0x1b36;
/// PCI device id in config space (QEMU's NVMe controller).
pub const DEVICE_ID: u16 = 0x0010;
/// Region of the registers.
pub const REGS: u32 = 0;
/// Region of the RAM.
pub const RAM: u32 = 1;
/// Region that is mappable (sparse) when asked for, absent otherwise.
pub const MAPPED: u32 = 2;
/// Region of the PCI config space.
pub const CONFIG: u32 = 7;
/// Regions reported.
pub const NUM_REGIONS: u32 = 9;
/// IRQ indexes reported.
pub const NUM_IRQS: u32 = 5;
/// Size of the register region.
pub const REGS_SIZE: u64 = 4096;
/// Size of the RAM region.
pub const RAM_SIZE: u64 = 64 << 10;
/// Size of the mappable region.
pub const MAPPED_SIZE: u64 = 16 << 10;
/// Size of the config space region.
pub const CONFIG_SIZE: u64 = 256;
/// Read-only identification register.
pub const REG_ID: u64 = 0x0;
/// What [`REG_ID`] reads.
pub const ID: u32 = 0x5256_4d4d;
/// Read/write output latch.
pub const REG_OUTPUT: u64 = 0x4;
/// The IRQ index of MSI.
pub const MSI: u32 = 1;
/// Vectors of [`MSI`]: as many as the MSI capability in config space offers.
pub const MSI_VECTORS: u32 = 4;
/// The IRQ index of MSI-X.
pub const MSIX: u32 = 2;
/// Vectors of [`MSIX`]: the MSI-X table size in config space.
pub const MSIX_VECTORS: u32 = 4;

/// What a test can see of the backend while the server owns it.
#[derive(Debug, Default)]
pub struct State {
    /// The output latch.
    pub output: u32,
    /// The RAM region's bytes.
    pub ram: Vec<u8>,
    /// DEVICE_RESETs served.
    pub resets: u32,
    /// DMA windows mapped: address, size, whether an fd came with it.
    pub dma_maps: Vec<(u64, u64, bool)>,
    /// SET_IRQS requests accepted.
    pub irq_sets: u32,
    /// The index of the last SET_IRQS accepted.
    pub irq_index: Option<u32>,
    /// A copy of vector 0's trigger eventfd, when one SET_IRQS assigned vector 0 alone.
    pub irq: Option<File>,
    /// Trigger eventfds as assigned by SET_IRQS, by IRQ index, then vector; an index no
    /// SET_IRQS named may be absent.
    pub triggers: Vec<Vec<Option<File>>>,
}

#[derive(Clone, Debug, Default)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Backend {
    state: Shared,
    config: Vec<u8>,
}

/// The command register's bytes in config space.
const COMMAND: Range<usize> = 4..6;

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn range(offset: u64, len: usize, size: u64) -> io::Result<Range<usize>> {
    let end = offset.checked_add(len as u64).ok_or_else(einval)?;
    if end > size {
        return Err(einval());
    }
    Ok(offset as usize..end as usize)
}

impl ServerBackend for Backend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let st = self.state.lock();
        match region {
            REGS => {
                if offset % 4 != 0 || data.len() != 4 {
                    return Err(einval());
                }
                let v = match offset {
                    REG_ID => ID,
                    REG_OUTPUT => st.output,
                    o if o < REGS_SIZE => 0,
                    _ => return Err(einval()),
                };
                data.copy_from_slice(&v.to_ne_bytes());
            }
            RAM => data.copy_from_slice(&st.ram[range(offset, data.len(), RAM_SIZE)?]),
            CONFIG => data.copy_from_slice(&self.config[range(offset, data.len(), CONFIG_SIZE)?]),
            _ => return Err(einval()),
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        match region {
            // Only the output latch is writable: other register writes fail.
            REGS => {
                let v: [u8; 4] = data.try_into().map_err(|_| einval())?;
                if offset != REG_OUTPUT {
                    return Err(einval());
                }
                st.output = u32::from_ne_bytes(v);
            }
            RAM => {
                let r = range(offset, data.len(), RAM_SIZE)?;
                st.ram[r].copy_from_slice(data);
            }
            // Only the command register is writable in config space.
            CONFIG => {
                let r = range(offset, data.len(), CONFIG_SIZE)?;
                if !COMMAND.contains(&r.start) || r.end > COMMAND.end {
                    return Err(einval());
                }
                self.config[r].copy_from_slice(data);
            }
            _ => return Err(einval()),
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: DmaMapFlags,
        _offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        self.state
            .lock()
            .dma_maps
            .push((address, size, fd.is_some()));
        Ok(())
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        let before = st.dma_maps.len();
        st.dma_maps.retain(|m| (m.0, m.1) != (address, size));
        if st.dma_maps.len() == before {
            return Err(einval());
        }
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        let mut st = self.state.lock();
        st.output = 0;
        st.resets += 1;
        self.config[COMMAND].fill(0);
        Ok(())
    }

    /// Trigger eventfds for the vectors of an index (one per vector, or none to clear
    /// them), or the whole index disabled (DATA_NONE, count 0); anything else is EINVAL.
    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        let disable = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
        let assign = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
        let end = start.checked_add(count).ok_or_else(einval)?;
        if index >= NUM_IRQS || end > vectors(index) {
            return Err(einval());
        }
        let mut st = self.state.lock();
        let st = &mut *st;
        if st.triggers.len() <= index as usize {
            st.triggers.resize_with(index as usize + 1, Vec::new);
        }
        let eventfds = &mut st.triggers[index as usize];
        eventfds.resize_with(vectors(index) as usize, || None);
        if flags == disable && count == 0 {
            eventfds.iter_mut().for_each(|f| *f = None);
            st.irq = None;
        } else {
            if flags & assign != assign || (!fds.is_empty() && fds.len() != count as usize) {
                return Err(einval());
            }
            let mut fds = fds.into_iter();
            for v in start..end {
                eventfds[v as usize] = fds.next();
            }
            if start == 0 && count == 1 {
                st.irq = eventfds[0].as_ref().and_then(|f| f.try_clone().ok());
            }
        }
        st.irq_index = Some(index);
        st.irq_sets += 1;
        Ok(())
    }
}

fn regions(sparse: bool, memory: &SharedMemory) -> Vec<ServerRegion> {
    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    (0..NUM_REGIONS)
        .map(|index| {
            let (size, flags) = match index {
                REGS => (REGS_SIZE, rw),
                RAM => (RAM_SIZE, rw),
                MAPPED if sparse => (MAPPED_SIZE, rw | VFIO_REGION_INFO_FLAG_MMAP),
                CONFIG => (CONFIG_SIZE, rw),
                _ => (0, 0),
            };
            let mappable = index == MAPPED && sparse;
            let sparse_areas = [(0, 0x1000), (0x2000, 0x2000)]
                .iter()
                .filter(|_| mappable)
                .map(|&(offset, size)| SparseArea {
                    area: vfio_region_sparse_mmap_area { offset, size },
                })
                .collect();
            ServerRegion {
                region_info: vfio_region_info {
                    argsz: std::mem::size_of::<vfio_region_info>() as u32,
                    flags,
                    index,
                    cap_offset: 0,
                    size,
                    offset: 0,
                },
                sparse_areas,
                mmap_fd: mappable.then(|| memory.as_raw_fd()),
            }
        })
        .collect()
}

/// The vectors IRQ `index` reports: what config space offers the guest for it.
fn vectors(index: u32) -> u32 {
    match index {
        MSI => MSI_VECTORS,
        MSIX => MSIX_VECTORS,
        _ => 1,
    }
}

fn irqs() -> Vec<IrqInfo> {
    (0..NUM_IRQS)
        .map(|index| IrqInfo {
            index,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: vectors(index),
        })
        .collect()
}

type ServerThread = JoinHandle<Option<vfio_user::Error>>;

/// A running crates.io server, serving one client after another until finished or dropped.
#[derive(Debug)]
pub struct RustVmmServer {
    /// Where it listens.
    pub path: PathBuf,
    state: Shared,
    stop: Arc<AtomicBool>,
    thread: Option<ServerThread>,
    _memory: Arc<SharedMemory>,
    _dir: TempDir,
}

impl RustVmmServer {
    /// Starts a server; with `sparse`, region 2 is mappable with two sparse areas (its
    /// REGION_INFO needs the `argsz` re-query).
    pub fn start(sparse: bool) -> RustVmmServer {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vfio-user-rust-vmm-"))
            .expect("temporary directory");
        let path = dir.as_path().join("sock");
        let memory = Arc::new(SharedMemory::new("rust-vmm-bar2", MAPPED_SIZE).expect("memfd"));
        // Bound before the thread starts: a connect cannot race the listener.
        let server = Server::new(&path, true, irqs(), regions(sparse, &memory)).expect("server");
        let state = Shared::default();
        state.lock().ram = vec![0; RAM_SIZE as usize];
        let mut backend = Backend {
            state: state.clone(),
            config: config::with_capabilities(VENDOR_ID, DEVICE_ID),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let mut first_error = None;
            while !stop2.load(Ordering::SeqCst) {
                // One client per call; an error ends that client only.
                if let Err(e) = server.run(&mut backend) {
                    first_error.get_or_insert(e);
                }
            }
            first_error
        });
        RustVmmServer {
            path,
            state,
            stop,
            thread: Some(thread),
            _memory: memory,
            _dir: dir,
        }
    }

    /// The backend's state.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Stops once the current client (if any) has gone, and returns the first error a
    /// client's session ended with: `Ok` when every client hung up cleanly.
    pub fn finish(mut self) -> Result<(), vfio_user::Error> {
        match self.stop_thread() {
            Some(Ok(Some(e))) => Err(e),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            Some(Ok(None)) | None => Ok(()),
        }
    }

    fn stop_thread(&mut self) -> Option<thread::Result<Option<vfio_user::Error>>> {
        let thread = self.thread.take()?;
        self.stop.store(true, Ordering::SeqCst);
        // Wakes an accept; that connection ends at once and the loop sees the flag.
        drop(UnixStream::connect(&self.path));
        Some(thread.join())
    }
}

impl Drop for RustVmmServer {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}
