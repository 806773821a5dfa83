// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! An independent peer: the crates.io `vfio_user` crate's `Server` with a small GPIO-like
//! backend, serving one client after another on a socket in a temporary directory.
//!
//! The device of [`RustVmmServer::start`]: registers in region 0 (a read-only
//! identification register and an output latch; only the latch is writable), RAM in
//! region 1, optionally a mappable region 2 with two sparse areas, and config space in
//! region 7 ([`config::with_capabilities`], only its command register writable;
//! DEVICE_RESET clears it). IRQ indexes 1 (MSI) and 2 (MSI-X) have four vectors each, as
//! many as config space's MSI and MSI-X capabilities offer; the other indexes have one. The
//! backend keeps every trigger eventfd; DMA windows are recorded, not mapped.
//!
//! [`RustVmmServer::with_layout`] serves another [`Layout`]: other region sizes (a region
//! other than those above reads as zeros and ignores writes, as a BAR whose contents the
//! client emulates), a [`ConfigSpace`] that answers writes as a device does, other vector
//! counts. [`State::patch`] makes the server report other config bytes at any time.
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
use crate::{ConfigSpace, SharedMemory};

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

/// Where the backend's config space reads and writes go.
#[derive(Debug)]
pub enum Config {
    /// A fixed image whose command register alone is writable (other writes fail);
    /// DEVICE_RESET clears the command register.
    Image(Vec<u8>),
    /// A config space with its own write masks (no write fails); DEVICE_RESET restores it.
    Space(ConfigSpace),
}

impl Config {
    fn read(&self, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let r = range(offset, data.len(), CONFIG_SIZE)?;
        match self {
            Config::Image(bytes) => data.copy_from_slice(bytes.get(r).ok_or_else(einval)?),
            Config::Space(space) => space.read(offset, data),
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let r = range(offset, data.len(), CONFIG_SIZE)?;
        match self {
            Config::Image(bytes) => {
                if !COMMAND.contains(&r.start) || r.end > COMMAND.end {
                    return Err(einval());
                }
                bytes[r].copy_from_slice(data);
            }
            Config::Space(space) => space.write(offset, data),
        }
        Ok(())
    }

    fn reset(&mut self) {
        match self {
            Config::Image(bytes) => bytes[COMMAND].fill(0),
            Config::Space(space) => space.reset(),
        }
    }
}

/// The regions, config space and interrupts a server offers.
#[derive(Debug)]
pub struct Layout {
    /// Each region's size, by index; 0 for an absent region. [`CONFIG`]'s is always
    /// [`CONFIG_SIZE`], and [`MAPPED`]'s is [`MAPPED_SIZE`] when `sparse`.
    pub sizes: [u64; NUM_REGIONS as usize],
    /// Whether [`MAPPED`] is mappable with two sparse areas (it is then [`MAPPED_SIZE`]
    /// bytes, and its REGION_INFO needs the `argsz` re-query).
    pub sparse: bool,
    /// The config space.
    pub config: Config,
    /// Vectors of [`MSI`].
    pub msi_vectors: u32,
    /// Vectors of [`MSIX`].
    pub msix_vectors: u32,
}

impl Layout {
    /// The layout of [`RustVmmServer::start`].
    pub fn standard(sparse: bool) -> Layout {
        let mut sizes = [0; NUM_REGIONS as usize];
        sizes[REGS as usize] = REGS_SIZE;
        sizes[RAM as usize] = RAM_SIZE;
        Layout {
            sizes,
            sparse,
            config: Config::Image(config::with_capabilities(VENDOR_ID, DEVICE_ID)),
            msi_vectors: MSI_VECTORS,
            msix_vectors: MSIX_VECTORS,
        }
    }

    /// Regions of `sizes` (index, size; the others absent), `config` as config space, no
    /// MSI or MSI-X vectors.
    pub fn with_config_space(sizes: &[(u32, u64)], config: ConfigSpace) -> Layout {
        let mut all = [0; NUM_REGIONS as usize];
        for &(index, size) in sizes {
            all[index as usize] = size;
        }
        Layout {
            sizes: all,
            sparse: false,
            config: Config::Space(config),
            msi_vectors: 0,
            msix_vectors: 0,
        }
    }

    fn size(&self, region: u32) -> u64 {
        match region {
            CONFIG => CONFIG_SIZE,
            MAPPED if self.sparse => MAPPED_SIZE,
            _ => self.sizes.get(region as usize).copied().unwrap_or(0),
        }
    }

    /// The vectors IRQ `index` reports.
    fn vectors(&self, index: u32) -> u32 {
        match index {
            MSI => self.msi_vectors,
            MSIX => self.msix_vectors,
            _ => 1,
        }
    }
}

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
    /// DMA_UNMAPs served.
    pub dma_unmaps: u32,
    /// Every SET_IRQS received, accepted or not: index, flags, start, count, fds.
    pub irq_log: Vec<(u32, u32, u32, u32, usize)>,
    /// SET_IRQS requests accepted.
    pub irq_sets: u32,
    /// The index of the last SET_IRQS accepted.
    pub irq_index: Option<u32>,
    /// A copy of vector 0's trigger eventfd, when one SET_IRQS assigned vector 0 alone.
    pub irq: Option<File>,
    /// Trigger eventfds as assigned by SET_IRQS, by IRQ index, then vector; an index no
    /// SET_IRQS named may be absent.
    pub triggers: Vec<Vec<Option<File>>>,
    /// Config bytes (offset, value) answered instead of config space's: a server changing
    /// what it reports.
    pub patch: Vec<(usize, u8)>,
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
    layout: Layout,
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
        let size = self.layout.size(region);
        let st = self.state.lock();
        match region {
            _ if size == 0 => return Err(einval()),
            REGS => {
                if offset % 4 != 0 || data.len() != 4 {
                    return Err(einval());
                }
                let v = match offset {
                    REG_ID => ID,
                    REG_OUTPUT => st.output,
                    o if o < size => 0,
                    _ => return Err(einval()),
                };
                data.copy_from_slice(&v.to_ne_bytes());
            }
            RAM => data.copy_from_slice(&st.ram[range(offset, data.len(), size)?]),
            CONFIG => {
                self.layout.config.read(offset, data)?;
                for &(at, b) in &st.patch {
                    let i = at.checked_sub(offset as usize);
                    if let Some(d) = i.and_then(|i| data.get_mut(i)) {
                        *d = b;
                    }
                }
            }
            MAPPED if self.layout.sparse => return Err(einval()),
            _ => {
                range(offset, data.len(), size)?;
                data.fill(0);
            }
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let size = self.layout.size(region);
        let mut st = self.state.lock();
        match region {
            _ if size == 0 => return Err(einval()),
            // Only the output latch is writable: other register writes fail.
            REGS => {
                let v: [u8; 4] = data.try_into().map_err(|_| einval())?;
                if offset != REG_OUTPUT {
                    return Err(einval());
                }
                st.output = u32::from_ne_bytes(v);
            }
            RAM => {
                let r = range(offset, data.len(), size)?;
                st.ram[r].copy_from_slice(data);
            }
            CONFIG => self.layout.config.write(offset, data)?,
            MAPPED if self.layout.sparse => return Err(einval()),
            _ => {
                range(offset, data.len(), size)?;
            }
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
        st.dma_unmaps += 1;
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
        self.layout.config.reset();
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
        let mut st = self.state.lock();
        let st = &mut *st;
        st.irq_log.push((index, flags, start, count, fds.len()));
        let vectors = self.layout.vectors(index);
        let end = start.checked_add(count).ok_or_else(einval)?;
        if index >= NUM_IRQS || end > vectors {
            return Err(einval());
        }
        if st.triggers.len() <= index as usize {
            st.triggers.resize_with(index as usize + 1, Vec::new);
        }
        let eventfds = &mut st.triggers[index as usize];
        eventfds.resize_with(vectors as usize, || None);
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

fn regions(layout: &Layout, memory: &SharedMemory) -> Vec<ServerRegion> {
    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    (0..NUM_REGIONS)
        .map(|index| {
            let size = layout.size(index);
            let mappable = index == MAPPED && layout.sparse;
            let flags = match size {
                0 => 0,
                _ if mappable => rw | VFIO_REGION_INFO_FLAG_MMAP,
                _ => rw,
            };
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

fn irqs(layout: &Layout) -> Vec<IrqInfo> {
    (0..NUM_IRQS)
        .map(|index| IrqInfo {
            index,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: layout.vectors(index),
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
        RustVmmServer::with_layout(Layout::standard(sparse))
    }

    /// Starts a server offering `layout`.
    pub fn with_layout(layout: Layout) -> RustVmmServer {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vfio-user-rust-vmm-"))
            .expect("temporary directory");
        let path = dir.as_path().join("sock");
        let memory = Arc::new(SharedMemory::new("rust-vmm-bar2", MAPPED_SIZE).expect("memfd"));
        // Bound before the thread starts: a connect cannot race the listener.
        let regions = regions(&layout, &memory);
        let server = Server::new(&path, true, irqs(&layout), regions).expect("server");
        let state = Shared::default();
        state.lock().ram = vec![0; layout.size(RAM) as usize];
        let mut backend = Backend {
            state: state.clone(),
            layout,
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
        self.stop()
    }

    /// As [`Self::finish`], but the backend's state stays readable; once stopped, `Ok`.
    pub fn stop(&mut self) -> Result<(), vfio_user::Error> {
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
