// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Our client against an independent peer: the crates.io `vfio_user` crate's `Server`, with
//! a small GPIO-like backend (`test_support::rust_vmm`, shared with the probe's tests).
//!
//! That server desynchronises on commands it does not support (it replies without draining
//! the body), so only the commands it implements are sent, and never a REGION_WRITE to a
//! region index it does not have.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;

use common::{read_region, read_u32, write_region};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::connection;
use vfio_user_client::device::{Error as DeviceError, IrqAction};
use vfio_user_client::negotiate::MigrationCaps;
use vfio_user_client::protocol::{
    Command, DeviceInfo, IrqInfo as IrqInfoPayload, RegionAccess, RegionInfo, SetIrqs,
};
use vfio_user_client::ConnectionCause;
use vfio_user_client::{ConnectOptions, Connection, DeviceOptions, VfioUserDevice};
use vfio_user_sample_server::test_support::guest::host_page_size;
use vfio_user_sample_server::test_support::rust_vmm::{
    RustVmmServer, State, CONFIG, CONFIG_SIZE, DEVICE_ID, ID, MSI, MSIX, MSIX_VECTORS, MSI_VECTORS,
    NUM_IRQS, NUM_REGIONS, RAM, RAM_SIZE, REGS, REGS_SIZE, REG_ID, REG_OUTPUT, VENDOR_ID,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const EINVAL: u32 = libc::EINVAL as u32;

/// A running `vfio_user::Server`, our connection to it, and the backend's state.
struct Running {
    conn: Connection,
    server: RustVmmServer,
}

impl Running {
    fn start() -> Running {
        let server = RustVmmServer::start(false);
        let conn = Connection::connect(&server.path, &ConnectOptions::default()).unwrap();
        Running { conn, server }
    }

    fn conn(&self) -> &Connection {
        &self.conn
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.server.state()
    }

    /// Disconnects; the server's `run` returns cleanly when its client goes away.
    fn finish(self) {
        let Running { conn, server } = self;
        drop(conn);
        server.finish().unwrap();
    }
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
        .conn()
        .request(
            Command::DeviceSetIrqs,
            &[0; 20],
            &[a.as_raw_fd(), a.as_raw_fd()],
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            connection::Error::TooManyFds {
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
    let p = s.conn();
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
        connection::Error::Server {
            command: Command::DeviceGetRegionInfo,
            errno: EINVAL
        }
    );

    for index in 0..NUM_IRQS {
        let mut payload = Vec::new();
        IrqInfoPayload::request(index).encode_into(&mut payload);
        let reply = p.request(Command::DeviceGetIrqInfo, &payload, &[]).unwrap();
        let info = IrqInfoPayload::decode(&reply.payload).unwrap();
        let count = match index {
            1 => MSI_VECTORS,
            2 => MSIX_VECTORS,
            _ => 1,
        };
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
        connection::Error::Server {
            command: Command::DeviceGetIrqInfo,
            errno: EINVAL
        }
    );
    s.finish();
}

#[test]
fn region_reads_and_writes_round_trip() {
    let s = Running::start();
    let p = s.conn();
    // Config space: vendor and device ids.
    let ids = read_region(p, CONFIG, 0, 4).unwrap();
    assert_eq!(u16::from_le_bytes([ids[0], ids[1]]), VENDOR_ID);
    assert_eq!(u16::from_le_bytes([ids[2], ids[3]]), DEVICE_ID);
    // Registers.
    assert_eq!(read_u32(p, REGS, REG_ID), ID);
    write_region(p, REGS, REG_OUTPUT, &0xdead_beefu32.to_ne_bytes()).unwrap();
    assert_eq!(s.state().output, 0xdead_beef);
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
        assert_eq!(s.state().ram[offset..offset + len], data[..]);
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
        p.send_no_reply(Command::RegionWrite, &payload, &[])
            .unwrap();
    }
    assert_eq!(read_u32(p, REGS, REG_OUTPUT), 999);
    s.finish();
}

#[test]
fn failed_accesses_are_server_errors() {
    let s = Running::start();
    let p = s.conn();
    // The backend's error becomes errno 0 ("no reason given") in this server...
    let no_reason = |command| connection::Error::Server { command, errno: 0 };
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
        connection::Error::Server {
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
    let p = s.conn();
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
        let mut st = s.state();
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
    assert_eq!(s.state().resets, 1);
    assert_eq!(read_u32(p, REGS, REG_OUTPUT), 0);
    s.finish();
}

#[test]
fn device_layer_against_the_crates_io_server() {
    let server = RustVmmServer::start(false);
    let dev = VfioUserDevice::connect(
        &server.path,
        &ConnectOptions::default(),
        &DeviceOptions::default(),
    )
    .unwrap();
    assert_eq!(dev.capabilities().max_msg_fds, 1);
    assert!(dev.is_pci());
    assert_eq!(dev.regions().len(), NUM_REGIONS as usize);
    assert_eq!(dev.region(RAM).unwrap().size(), RAM_SIZE);
    assert!(!dev.region(RAM).unwrap().mappable());
    let counts: Vec<u32> = dev.irqs().iter().map(|i| i.count).collect();
    assert_eq!(counts, [1, MSI_VECTORS, MSIX_VECTORS, 1, 1]);
    // Nothing is mappable: writes may be posted.
    assert!(dev.posted_writes());

    // Reads and writes of odd sizes, and a 64 KiB write in two 32 KiB messages.
    let data: Vec<u8> = (0..RAM_SIZE as usize).map(|i| (i * 7 + 3) as u8).collect();
    dev.write(RAM, 0, &data).unwrap();
    assert_eq!(server.state().ram, data);
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
        let mut st = server.state();
        let msix = &mut st.triggers[MSIX as usize];
        assert_eq!(msix.iter().filter(|f| f.is_some()).count(), 3);
        assert!(msix[2].is_none());
        for f in msix.iter_mut().flatten() {
            f.write_all(&1u64.to_ne_bytes()).unwrap();
        }
    }
    for (i, e) in efds.iter().enumerate() {
        assert_eq!(e.read().is_ok(), i != 2, "vector {i}");
    }
    // MSI: every vector its capability in config space offers.
    let msi: Vec<EventFd> = (0..MSI_VECTORS)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let list: Vec<Option<&EventFd>> = msi.iter().map(Some).collect();
    dev.set_irq_eventfds(VFIO_PCI_MSI_IRQ_INDEX, IrqAction::Trigger, 0, &list)
        .unwrap();
    {
        let mut st = server.state();
        let msi = &mut st.triggers[MSI as usize];
        assert_eq!(msi.iter().flatten().count(), MSI_VECTORS as usize);
        let last = msi[MSI_VECTORS as usize - 1].as_mut().unwrap();
        last.write_all(&1u64.to_ne_bytes()).unwrap();
    }
    assert_eq!(msi[MSI_VECTORS as usize - 1].read().unwrap(), 1);

    dev.reset().unwrap();
    assert_eq!(server.state().resets, 1);
    drop(dev);
    server.finish().unwrap();
}
