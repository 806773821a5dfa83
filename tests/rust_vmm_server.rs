// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Our client against an independent peer: the crates.io `vfio_user` crate's `Server`, with
//! a small GPIO-like backend.
//!
//! That server desynchronises on commands it does not support (it replies without draining
//! the body), so only the commands it implements are sent, and never a REGION_WRITE to a
//! region index it does not have.

mod common;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use common::{read_region, read_u32, write_region};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};
use vfio_user_client::device::{Error as DeviceError, IrqAction};
use vfio_user_client::negotiate::MigrationCaps;
use vfio_user_client::protocol::{
    Command, DeviceInfo, IrqInfo as IrqInfoPayload, RegionAccess, RegionInfo, SetIrqs,
};
use vfio_user_client::proxy::{self, Proxy};
use vfio_user_client::ConnectionCause;
use vfio_user_client::{ConnectOptions, Connection, DeviceOptions, VfioUserDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempdir::TempDir;

const VENDOR_ID: u16 = 0x494f;
const DEVICE_ID: u16 = 0x0dc8;
const REGS: u32 = 0;
const RAM: u32 = 1;
const CONFIG: u32 = 7;
const NUM_REGIONS: u32 = 9;
const NUM_IRQS: u32 = 5;
const REGS_SIZE: u64 = 256;
const RAM_SIZE: u64 = 64 << 10;
const CONFIG_SIZE: u64 = 256;
/// Read-only identification register.
const REG_ID: u64 = 0x0;
const ID: u32 = 0x5256_4d4d;
/// Read/write latch.
const REG_OUTPUT: u64 = 0x4;
const MSIX_VECTORS: u32 = 4;
const EINVAL: u32 = libc::EINVAL as u32;

/// What the test can see of the backend while the server owns it.
#[derive(Debug, Default)]
struct State {
    output: u32,
    ram: Vec<u8>,
    resets: u32,
    irq: Option<File>,
    irq_index: Option<u32>,
    /// Trigger eventfds of the MSI-X vectors, as assigned by SET_IRQS.
    msix: Vec<Option<File>>,
}

#[derive(Clone, Debug, Default)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Gpio {
    state: Shared,
    config: Vec<u8>,
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn range(offset: u64, len: usize, size: u64) -> io::Result<std::ops::Range<usize>> {
    let end = offset.checked_add(len as u64).ok_or_else(einval)?;
    if end > size {
        return Err(einval());
    }
    Ok(offset as usize..end as usize)
}

impl ServerBackend for Gpio {
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
            REGS => {
                if offset != REG_OUTPUT || data.len() != 4 {
                    return Err(einval());
                }
                st.output = u32::from_ne_bytes(data.try_into().unwrap());
            }
            RAM => {
                let r = range(offset, data.len(), RAM_SIZE)?;
                st.ram[r].copy_from_slice(data);
            }
            _ => return Err(einval()),
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: DmaMapFlags,
        _offset: u64,
        _address: u64,
        _size: u64,
        _fd: Option<File>,
    ) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOTSUP))
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, _address: u64, _size: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOTSUP))
    }

    fn reset(&mut self) -> io::Result<()> {
        let mut st = self.state.lock();
        st.output = 0;
        st.resets += 1;
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        let want = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
        let end = start.checked_add(count).ok_or_else(einval)?;
        if flags & want != want || index != 2 || end > MSIX_VECTORS {
            return Err(einval());
        }
        if !fds.is_empty() && fds.len() != count as usize {
            return Err(einval());
        }
        let mut st = self.state.lock();
        st.msix.resize_with(MSIX_VECTORS as usize, || None);
        let mut fds = fds.into_iter();
        for v in start..end {
            st.msix[v as usize] = fds.next();
        }
        if start == 0 && count == 1 {
            st.irq = st.msix[0].as_ref().and_then(|f| f.try_clone().ok());
        }
        st.irq_index = Some(index);
        Ok(())
    }
}

fn regions() -> Vec<ServerRegion> {
    (0..NUM_REGIONS)
        .map(|index| {
            let size = match index {
                REGS => REGS_SIZE,
                RAM => RAM_SIZE,
                CONFIG => CONFIG_SIZE,
                _ => 0,
            };
            let flags = if size > 0 {
                VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
            } else {
                0
            };
            ServerRegion {
                region_info: vfio_region_info {
                    argsz: std::mem::size_of::<vfio_region_info>() as u32,
                    flags,
                    index,
                    cap_offset: 0,
                    size,
                    offset: 0,
                },
                sparse_areas: Vec::new(),
                mmap_fd: None,
            }
        })
        .collect()
}

fn irqs() -> Vec<IrqInfo> {
    (0..NUM_IRQS)
        .map(|index| IrqInfo {
            index,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: if index == 2 { MSIX_VECTORS } else { 1 },
        })
        .collect()
}

type ServerThread = JoinHandle<Result<(), vfio_user::Error>>;

/// Starts a `vfio_user::Server` on a socket in a new temporary directory.
fn start_server() -> (PathBuf, Shared, ServerThread, TempDir) {
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vfio-user-rust-vmm-")).unwrap();
    let path = dir.as_path().join("sock");
    // Bound before the thread starts: a connect cannot race the listener.
    let server = Server::new(&path, true, irqs(), regions()).unwrap();
    let state = Shared::default();
    state.lock().ram = vec![0; RAM_SIZE as usize];
    let mut config = vec![0u8; CONFIG_SIZE as usize];
    config[0..2].copy_from_slice(&VENDOR_ID.to_le_bytes());
    config[2..4].copy_from_slice(&DEVICE_ID.to_le_bytes());
    let mut backend = Gpio {
        state: state.clone(),
        config,
    };
    let thread = thread::spawn(move || server.run(&mut backend));
    (path, state, thread, dir)
}

/// A running `vfio_user::Server`, our connection to it, and the backend's state.
struct Running {
    conn: Connection,
    state: Shared,
    thread: ServerThread,
    _dir: TempDir,
}

impl Running {
    fn start() -> Running {
        let (path, state, thread, dir) = start_server();
        let conn = Connection::connect(&path, &ConnectOptions::default()).unwrap();
        Running {
            conn,
            state,
            thread,
            _dir: dir,
        }
    }

    fn proxy(&self) -> &Proxy {
        self.conn.proxy()
    }

    /// Disconnects; the server's `run` returns when its client goes away.
    fn finish(self) {
        let Running {
            conn, thread, _dir, ..
        } = self;
        drop(conn);
        thread.join().unwrap().unwrap();
    }
}

fn host_page_size() -> u64 {
    // SAFETY: sysconf takes no pointers and only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap()
}

#[test]
fn negotiation_takes_the_servers_limits() {
    let s = Running::start();
    let caps = *s.conn.capabilities();
    assert_eq!((caps.major, caps.minor), (0, 0));
    assert_eq!(caps.max_msg_fds, 1);
    assert_eq!(caps.max_data_xfer_size, 1 << 20);
    assert_eq!(caps.pgsizes, 4096);
    assert_eq!(caps.max_dma_maps, 65535);
    assert_eq!(
        caps.migration,
        Some(MigrationCaps {
            pgsize: host_page_size(),
            max_bitmap_size: 256 << 20
        })
    );
    assert_eq!(caps.twin_socket, None);
    assert!(!caps.write_multiple);
    // Its max_msg_fds bounds what we send.
    let a = EventFd::new(EFD_NONBLOCK).unwrap();
    let e = s
        .proxy()
        .request(
            Command::DeviceSetIrqs,
            &[0; 20],
            &[a.as_raw_fd(), a.as_raw_fd()],
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            proxy::Error::TooManyFds {
                count: 2,
                limit: 1,
                ..
            }
        ),
        "{e:?}"
    );
    s.finish();
}

#[test]
fn device_region_and_irq_info_decode() {
    let s = Running::start();
    let p = s.proxy();
    let mut payload = Vec::new();
    DeviceInfo::request().encode_into(&mut payload);
    let reply = p.request(Command::DeviceGetInfo, &payload, &[]).unwrap();
    assert_eq!(
        DeviceInfo::decode(&reply.payload).unwrap(),
        DeviceInfo {
            argsz: 16,
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: NUM_REGIONS,
            num_irqs: NUM_IRQS,
        }
    );

    for (index, size) in [
        (REGS, REGS_SIZE),
        (RAM, RAM_SIZE),
        (CONFIG, CONFIG_SIZE),
        (3, 0),
    ] {
        let mut payload = Vec::new();
        RegionInfo::request(index, RegionInfo::HEAD_SIZE as u32).encode_into(&mut payload);
        let reply = p
            .request(Command::DeviceGetRegionInfo, &payload, &[])
            .unwrap();
        assert!(reply.fds.is_empty());
        let info = RegionInfo::decode(&reply.payload).unwrap();
        assert_eq!((info.index, info.size), (index, size), "{info:?}");
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        assert_eq!(info.flags, if size > 0 { rw } else { 0 }, "{info:?}");
        assert!(info.caps.is_empty());
    }
    // A region it does not have: EINVAL (the request body was read first).
    let mut payload = Vec::new();
    RegionInfo::request(NUM_REGIONS, RegionInfo::HEAD_SIZE as u32).encode_into(&mut payload);
    assert_eq!(
        p.request(Command::DeviceGetRegionInfo, &payload, &[])
            .unwrap_err(),
        proxy::Error::Server {
            command: Command::DeviceGetRegionInfo,
            errno: EINVAL
        }
    );

    for index in 0..NUM_IRQS {
        let mut payload = Vec::new();
        IrqInfoPayload::request(index).encode_into(&mut payload);
        let reply = p.request(Command::DeviceGetIrqInfo, &payload, &[]).unwrap();
        let info = IrqInfoPayload::decode(&reply.payload).unwrap();
        let count = if index == 2 { MSIX_VECTORS } else { 1 };
        assert_eq!(
            info,
            IrqInfoPayload {
                argsz: 16,
                flags: VFIO_IRQ_INFO_EVENTFD,
                index,
                count
            }
        );
    }
    let mut payload = Vec::new();
    IrqInfoPayload::request(NUM_IRQS).encode_into(&mut payload);
    assert_eq!(
        p.request(Command::DeviceGetIrqInfo, &payload, &[])
            .unwrap_err(),
        proxy::Error::Server {
            command: Command::DeviceGetIrqInfo,
            errno: EINVAL
        }
    );
    s.finish();
}

#[test]
fn region_reads_and_writes_round_trip() {
    let s = Running::start();
    let p = s.proxy();
    // Config space: vendor and device ids.
    let ids = read_region(p, CONFIG, 0, 4).unwrap();
    assert_eq!(u16::from_le_bytes([ids[0], ids[1]]), VENDOR_ID);
    assert_eq!(u16::from_le_bytes([ids[2], ids[3]]), DEVICE_ID);
    // Registers.
    assert_eq!(read_u32(p, REGS, REG_ID), ID);
    write_region(p, REGS, REG_OUTPUT, &0xdead_beefu32.to_ne_bytes()).unwrap();
    assert_eq!(s.state.lock().output, 0xdead_beef);
    assert_eq!(read_u32(p, REGS, REG_OUTPUT), 0xdead_beef);
    // RAM, several sizes and offsets, checked on both sides.
    for (offset, len) in [
        (0usize, 1usize),
        (1, 4),
        (100, 4096),
        (0, 65536),
        (65535, 1),
    ] {
        let data: Vec<u8> = (0..len)
            .map(|i| {
                (i as u8)
                    .wrapping_mul(7)
                    .wrapping_add(offset as u8 ^ len as u8)
            })
            .collect();
        write_region(p, RAM, offset as u64, &data).unwrap();
        assert_eq!(s.state.lock().ram[offset..offset + len], data[..]);
        assert_eq!(
            read_region(p, RAM, offset as u64, len as u32).unwrap(),
            data
        );
    }
    // Posted writes (it honours No_reply for REGION_WRITE), then one WAIT request.
    for i in 0..1000u32 {
        let mut payload = Vec::new();
        RegionAccess {
            offset: REG_OUTPUT,
            region: REGS,
            count: 4,
        }
        .encode_with_data(&i.to_ne_bytes(), &mut payload);
        p.post(Command::RegionWrite, &payload, &[]).unwrap();
    }
    assert_eq!(read_u32(p, REGS, REG_OUTPUT), 999);
    s.finish();
}

#[test]
fn failed_accesses_are_server_errors() {
    let s = Running::start();
    let p = s.proxy();
    // The backend's error becomes errno 0 ("no reason given") in this server...
    let no_reason = |command| proxy::Error::Server { command, errno: 0 };
    assert_eq!(
        read_region(p, RAM, RAM_SIZE - 2, 4).unwrap_err(),
        no_reason(Command::RegionRead)
    );
    assert_eq!(
        write_region(p, RAM, RAM_SIZE, &[1]).unwrap_err(),
        no_reason(Command::RegionWrite)
    );
    assert_eq!(
        write_region(p, REGS, REG_ID, &[1, 2, 3, 4]).unwrap_err(),
        no_reason(Command::RegionWrite)
    );
    // ...and a region index it does not have into EINVAL (a read only: it would not drain
    // a write's data).
    let e = read_region(p, NUM_REGIONS, 0, 4).unwrap_err();
    assert_eq!(
        e,
        proxy::Error::Server {
            command: Command::RegionRead,
            errno: EINVAL
        }
    );
    assert_eq!(e.server_errno(), Some(EINVAL));
    // The stream is still in step and nothing was written.
    assert_eq!(read_region(p, RAM, RAM_SIZE - 4, 4).unwrap(), vec![0; 4]);
    assert_eq!(read_u32(p, REGS, REG_ID), ID);
    assert!(p.is_connected());
    s.finish();
}

#[test]
fn irq_eventfd_and_reset() {
    let s = Running::start();
    let p = s.proxy();
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut payload = Vec::new();
    SetIrqs::new(
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        2,
        0,
        1,
        Vec::new(),
    )
    .encode_into(&mut payload);
    p.request(Command::DeviceSetIrqs, &payload, &[efd.as_raw_fd()])
        .unwrap();
    {
        let mut st = s.state.lock();
        assert_eq!(st.irq_index, Some(2));
        // The server-side end of the eventfd we passed: signalling it wakes our side.
        st.irq
            .as_mut()
            .unwrap()
            .write_all(&1u64.to_ne_bytes())
            .unwrap();
    }
    assert_eq!(efd.read().unwrap(), 1);

    write_region(p, REGS, REG_OUTPUT, &5u32.to_ne_bytes()).unwrap();
    p.request(Command::DeviceReset, &[], &[]).unwrap();
    assert_eq!(s.state.lock().resets, 1);
    assert_eq!(read_u32(p, REGS, REG_OUTPUT), 0);
    s.finish();
}

#[test]
fn device_layer_against_the_crates_io_server() {
    let (path, state, thread, _dir) = start_server();
    let dev = VfioUserDevice::connect(&path, &ConnectOptions::default(), &DeviceOptions::default())
        .unwrap();
    assert_eq!(dev.capabilities().max_msg_fds, 1);
    assert!(dev.is_pci());
    assert_eq!(dev.regions().len(), NUM_REGIONS as usize);
    assert_eq!(dev.region(RAM).unwrap().size(), RAM_SIZE);
    assert!(!dev.region(RAM).unwrap().mappable());
    let counts: Vec<u32> = dev.irqs().iter().map(|i| i.count).collect();
    assert_eq!(counts, [1, 1, MSIX_VECTORS, 1, 1]);
    // Nothing is mappable: writes may be posted.
    assert!(dev.posted_writes());

    // Reads and writes of odd sizes, and a 64 KiB write in two 32 KiB messages.
    let data: Vec<u8> = (0..RAM_SIZE as usize).map(|i| (i * 7 + 3) as u8).collect();
    dev.write(RAM, 0, &data).unwrap();
    assert_eq!(state.lock().ram, data);
    for (offset, len) in [(1u64, 1usize), (3, 3), (4095, 4097), (0, RAM_SIZE as usize)] {
        let mut back = vec![0u8; len];
        dev.read(RAM, offset, &mut back).unwrap();
        assert_eq!(back, &data[offset as usize..offset as usize + len]);
    }
    assert!(matches!(
        dev.read(RAM, RAM_SIZE - 1, &mut [0u8; 2]),
        Err(DeviceError::OutOfRange { .. })
    ));
    // The server refuses a write to a read-only register, with errno 0 (this server drops
    // the backend's errno).
    let e = dev.write(REGS, REG_ID, &[0; 4]).unwrap_err();
    assert_eq!(e.server_errno(), Some(0), "{e}");

    // Posted writes, then a read that follows them.
    for v in 1..=100u32 {
        dev.write_posted(REGS, REG_OUTPUT, &v.to_ne_bytes())
            .unwrap();
    }
    let mut out = [0u8; 4];
    dev.read(REGS, REG_OUTPUT, &mut out).unwrap();
    assert_eq!(u32::from_ne_bytes(out), 100);

    // MSI-X with a hole, one fd per message (the server's max_msg_fds is 1).
    let efds: Vec<EventFd> = (0..MSIX_VECTORS)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let list: Vec<Option<&EventFd>> = efds
        .iter()
        .enumerate()
        .map(|(i, e)| (i != 2).then_some(e))
        .collect();
    dev.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, IrqAction::Trigger, 0, &list)
        .unwrap();
    {
        let mut st = state.lock();
        assert_eq!(st.msix.iter().filter(|f| f.is_some()).count(), 3);
        assert!(st.msix[2].is_none());
        for f in st.msix.iter_mut().flatten() {
            f.write_all(&1u64.to_ne_bytes()).unwrap();
        }
    }
    for (i, e) in efds.iter().enumerate() {
        assert_eq!(e.read().is_ok(), i != 2, "vector {i}");
    }

    dev.reset().unwrap();
    assert_eq!(state.lock().resets, 1);
    drop(dev);
    thread.join().unwrap().unwrap();
}
