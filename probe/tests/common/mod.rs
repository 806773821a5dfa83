// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Servers to probe: the sample server with any configuration, the crates.io `vfio_user`
//! server with a small backend, and scripted peers that are not vfio-user servers at all.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_INFO_EVENTFD,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{
    DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion, SparseArea,
};
use vfio_user_probe::pci;
use vfio_user_sample_server::{
    GpioDevice, Server as SampleServer, ServerConfig, ServerHandle, SharedMemory,
};
use vmm_sys_util::tempdir::TempDir;

/// A short deadline for peers that never answer.
pub const SHORT: Duration = Duration::from_millis(200);

/// The sample GPIO server with `config`.
pub fn sample(config: ServerConfig) -> ServerHandle {
    let (device, _) = GpioDevice::new(Default::default()).unwrap();
    SampleServer::new(config, Box::new(device))
        .listen_temp()
        .unwrap()
}

pub fn path_of(h: &ServerHandle) -> PathBuf {
    h.socket_path().unwrap().to_path_buf()
}

// ---- The crates.io `vfio_user` server ----

pub const RV_VENDOR: u16 = 0x1b36;
pub const RV_DEVICE: u16 = 0x0010;
pub const REGS: u32 = 0;
pub const RAM: u32 = 1;
pub const MAPPED: u32 = 2;
pub const CONFIG: u32 = 7;
pub const REGS_SIZE: u64 = 4096;
pub const RAM_SIZE: u64 = 64 << 10;
pub const MAPPED_SIZE: u64 = 16 << 10;
pub const REG_OUTPUT: u64 = 4;

#[derive(Debug, Default)]
pub struct State {
    pub output: u32,
    pub resets: u32,
    pub dma_maps: Vec<(u64, u64, bool)>,
    pub irq_sets: u32,
}

struct Backend {
    state: Arc<Mutex<State>>,
    ram: Vec<u8>,
    config: Vec<u8>,
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn slice(offset: u64, len: usize, size: u64) -> io::Result<std::ops::Range<usize>> {
    let end = offset.checked_add(len as u64).ok_or_else(einval)?;
    if end > size {
        return Err(einval());
    }
    Ok(offset as usize..end as usize)
}

impl ServerBackend for Backend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        match region {
            REGS => {
                let r = slice(offset, data.len(), REGS_SIZE)?;
                data.fill(0);
                if r.start == REG_OUTPUT as usize && data.len() == 4 {
                    let v = self.state.lock().unwrap().output;
                    data.copy_from_slice(&v.to_ne_bytes());
                }
            }
            RAM => data.copy_from_slice(&self.ram[slice(offset, data.len(), RAM_SIZE)?]),
            CONFIG => data.copy_from_slice(&self.config[slice(offset, data.len(), 256)?]),
            _ => return Err(einval()),
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        match region {
            // Only the output latch is writable: other register writes fail.
            REGS if offset == REG_OUTPUT && data.len() == 4 => {
                self.state.lock().unwrap().output = u32::from_ne_bytes(data.try_into().unwrap());
            }
            RAM => {
                let r = slice(offset, data.len(), RAM_SIZE)?;
                self.ram[r].copy_from_slice(data);
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
            .unwrap()
            .dma_maps
            .push((address, size, fd.is_some()));
        Ok(())
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        let before = st.dma_maps.len();
        st.dma_maps.retain(|m| (m.0, m.1) != (address, size));
        if st.dma_maps.len() == before {
            return Err(einval());
        }
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.output = 0;
        st.resets += 1;
        Ok(())
    }

    fn set_irqs(&mut self, _: u32, _: u32, _: u32, _: u32, _: Vec<File>) -> io::Result<()> {
        self.state.lock().unwrap().irq_sets += 1;
        Ok(())
    }
}

/// A running crates.io server, serving one client after another until dropped.
pub struct RustVmm {
    pub path: PathBuf,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _memory: Arc<SharedMemory>,
    _dir: TempDir,
}

impl RustVmm {
    /// `sparse`: region 2 is mappable with two sparse areas (its REGION_INFO needs the
    /// `argsz` re-query).
    pub fn start(sparse: bool) -> RustVmm {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("probe-rust-vmm-")).unwrap();
        let path = dir.as_path().join("sock");
        let memory = Arc::new(SharedMemory::new("rust-vmm-bar2", MAPPED_SIZE).unwrap());
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        let regions = (0..9u32)
            .map(|index| {
                let (size, flags) = match index {
                    REGS => (REGS_SIZE, rw),
                    RAM => (RAM_SIZE, rw),
                    MAPPED if sparse => (MAPPED_SIZE, rw | VFIO_REGION_INFO_FLAG_MMAP),
                    CONFIG => (256, rw),
                    _ => (0, 0),
                };
                let mappable = index == MAPPED && sparse;
                ServerRegion {
                    region_info: vfio_region_info {
                        argsz: std::mem::size_of::<vfio_region_info>() as u32,
                        flags,
                        index,
                        cap_offset: 0,
                        size,
                        offset: 0,
                    },
                    sparse_areas: if mappable {
                        [(0, 0x1000), (0x2000, 0x2000)]
                            .iter()
                            .map(|&(offset, size)| SparseArea {
                                area: vfio_region_sparse_mmap_area { offset, size },
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    mmap_fd: mappable.then(|| memory.as_raw_fd()),
                }
            })
            .collect();
        let irqs = (0..5)
            .map(|index| IrqInfo {
                index,
                flags: VFIO_IRQ_INFO_EVENTFD,
                count: if index == 2 { 4 } else { 1 },
            })
            .collect();
        let server = Server::new(&path, true, irqs, regions).unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let mut backend = Backend {
            state: state.clone(),
            ram: vec![0; RAM_SIZE as usize],
            config: pci::example_with_capabilities(RV_VENDOR, RV_DEVICE),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                // One client per call; errors end that client only.
                let _ = server.run(&mut backend);
            }
        });
        RustVmm {
            path,
            state,
            stop,
            thread: Some(thread),
            _memory: memory,
            _dir: dir,
        }
    }
}

impl Drop for RustVmm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept; the connection ends at once and the loop sees the flag.
        drop(UnixStream::connect(&self.path));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- Peers that are not (working) vfio-user servers ----

/// A socket path that does not exist.
pub fn missing_socket() -> (TempDir, PathBuf) {
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("probe-missing-")).unwrap();
    let path = dir.as_path().join("sock");
    (dir, path)
}

/// A socket file nobody listens on (bound, then the listener closed).
pub fn dead_socket() -> (TempDir, PathBuf) {
    let (dir, path) = missing_socket();
    drop(UnixListener::bind(&path).unwrap());
    (dir, path)
}

/// A scripted peer: `script` runs on each accepted connection until the peer is dropped.
pub struct Peer {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Peer {
    pub fn start(script: fn(UnixStream)) -> Peer {
        let (dir, path) = missing_socket();
        let listener = UnixListener::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            for s in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(s) = s {
                    script(s);
                }
            }
        });
        Peer {
            path,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(UnixStream::connect(&self.path));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the request and answers like a web server, then hangs up.
pub fn http_peer(mut s: UnixStream) {
    let mut buf = [0u8; 256];
    let _ = s.read(&mut buf);
    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
}

/// Reads the request and never answers (until the client gives up).
pub fn silent_peer(mut s: UnixStream) {
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// Closes at once.
pub fn closing_peer(s: UnixStream) {
    drop(s);
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
