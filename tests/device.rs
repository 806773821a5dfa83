// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device access layer (`VfioUserDevice`) against the sample server: discovery, region
//! access split by the negotiated limits, mapped areas, SET_IRQS run splitting, reset.

mod common;

use std::os::unix::net::UnixStream;

use vfio_bindings::bindings::vfio::{
    vfio_region_sparse_mmap_area as SparseMmapArea, VFIO_IRQ_INFO_EVENTFD,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::device::{Error as DeviceError, IrqAction};
use vfio_user_client::ConnectionCause;
use vfio_user_client::{ConnectOptions, Connection, DeviceOptions, VfioUserDevice};
use vfio_user_sample_server::{
    GpioConfig, GpioDevice, GpioHandle, Probe, Server, ServerConfig, ServerHandle,
};
use vm_memory::{Bytes, VolatileMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const BAR0: u32 = 0;
const SCRATCH: u32 = 1;
const BAR2: u32 = 2;

struct Setup {
    dev: VfioUserDevice,
    handle: GpioHandle,
    probe: Probe,
    _server: ServerHandle,
}

fn setup_with(gpio: GpioConfig, config: ServerConfig, options: &DeviceOptions) -> Setup {
    let (device, handle) = GpioDevice::new(gpio).unwrap();
    let server = Server::new(config, Box::new(device));
    let probe = server.probe();
    let (client, server_end) = UnixStream::pair().unwrap();
    let running = server.serve_stream(server_end);
    let conn = Connection::connect(client, &ConnectOptions::default()).unwrap();
    let dev = VfioUserDevice::new(conn, options).unwrap();
    Setup {
        dev,
        handle,
        probe,
        _server: running,
    }
}

fn setup() -> Setup {
    setup_with(
        GpioConfig::default(),
        ServerConfig::default(),
        &DeviceOptions::default(),
    )
}

/// Deterministic bytes that differ at every offset of a 3 MiB buffer and between calls.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8 ^ seed)
        .collect()
}

#[test]
fn discovery_describes_the_gpio_device() {
    let s = setup();
    let dev = &s.dev;
    assert!(dev.is_pci());
    assert!(dev.resettable());
    assert_eq!(dev.regions().len(), 9);
    assert_eq!(dev.irqs().len(), 5);

    let bar0 = dev.region(BAR0).unwrap();
    assert_eq!(bar0.size(), GpioDevice::BAR0_SIZE);
    assert!(bar0.readable() && bar0.writable() && !bar0.mappable());
    assert!(bar0.mapped_areas().is_empty());

    // BAR2's fd and caps come only with the re-query at the larger argsz.
    let bar2 = dev.region(BAR2).unwrap();
    assert_eq!(bar2.size(), GpioDevice::BAR2_SIZE);
    assert_eq!(
        bar2.flags()
            & (VFIO_REGION_INFO_FLAG_READ
                | VFIO_REGION_INFO_FLAG_WRITE
                | VFIO_REGION_INFO_FLAG_MMAP),
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP
    );
    assert!(bar2.mappable());
    assert_eq!(
        bar2.sparse_areas().unwrap(),
        &GpioDevice::MAPPABLE_AREAS[..]
    );
    let mapped: Vec<(u64, u64)> = bar2
        .mapped_areas()
        .iter()
        .map(|a| (a.offset(), a.size()))
        .collect();
    let want: Vec<(u64, u64)> = GpioDevice::MAPPABLE_AREAS
        .iter()
        .map(|a: &SparseMmapArea| (a.offset, a.size))
        .collect();
    assert_eq!(mapped, want);
    assert!(bar2.mapped_areas().iter().all(|a| a.writable()));

    let config = dev.region(VFIO_PCI_CONFIG_REGION_INDEX).unwrap();
    assert_eq!(config.size(), 256);
    let mut id = [0u8; 4];
    dev.read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut id).unwrap();
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), GpioDevice::VENDOR_ID);
    assert_eq!(u16::from_le_bytes([id[2], id[3]]), GpioDevice::DEVICE_ID);

    let counts: Vec<u32> = dev.irqs().iter().map(|i| i.count).collect();
    assert_eq!(counts, [1, 1, 4, 1, 1]);
    assert!(dev
        .irqs()
        .iter()
        .all(|i| i.flags & VFIO_IRQ_INFO_EVENTFD != 0));
    // A mappable region turns posted writes off.
    assert!(!dev.posted_writes());
    assert!(matches!(
        dev.region(9),
        Err(DeviceError::NoSuchRegion { index: 9, count: 9 })
    ));
}

#[test]
fn reads_and_writes_of_any_size_round_trip() {
    let s = setup();
    let sizes = [
        1usize,
        3,
        4095,
        4096,
        (32 << 10) - 1,
        32 << 10,
        (32 << 10) + 1,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        3 << 20,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let offset = (i as u64 * 4099) % 4096 + 1;
        let data = pattern(len, i as u8);
        s.dev.write(SCRATCH, offset, &data).unwrap();
        assert_eq!(
            s.handle.scratch(offset as usize, len).unwrap(),
            data,
            "server side after a write of {len} bytes at {offset:#x}"
        );
        let mut back = vec![0u8; len];
        s.dev.read(SCRATCH, offset, &mut back).unwrap();
        assert_eq!(back, data, "read back {len} bytes at {offset:#x}");
    }
    // The last byte of the region.
    s.dev.write(SCRATCH, (4 << 20) - 1, &[0xa5]).unwrap();
    let mut b = [0u8];
    s.dev.read(SCRATCH, (4 << 20) - 1, &mut b).unwrap();
    assert_eq!(b, [0xa5]);
}

#[test]
fn transfers_are_split_by_the_negotiated_sizes() {
    let config = ServerConfig {
        max_data_xfer_size: Some(64 << 10),
        ..ServerConfig::default()
    };
    let options = DeviceOptions {
        write_chunk: 8 << 10,
        ..DeviceOptions::default()
    };
    let s = setup_with(GpioConfig::default(), config, &options);
    let data = pattern(1 << 20, 7);

    let before = s.probe.commands();
    s.dev.write(SCRATCH, 0, &data).unwrap();
    assert_eq!(s.probe.commands() - before, 128, "1 MiB in 8 KiB writes");

    let before = s.probe.commands();
    let mut back = vec![0u8; data.len()];
    s.dev.read(SCRATCH, 0, &mut back).unwrap();
    assert_eq!(s.probe.commands() - before, 16, "1 MiB in 64 KiB reads");
    assert_eq!(back, data);

    // The default write chunk is 32 KiB, below the server's 64 KiB.
    let s = setup_with(
        GpioConfig::default(),
        ServerConfig {
            max_data_xfer_size: Some(64 << 10),
            ..ServerConfig::default()
        },
        &DeviceOptions::default(),
    );
    let before = s.probe.commands();
    s.dev.write(SCRATCH, 0, &data).unwrap();
    assert_eq!(s.probe.commands() - before, 32, "1 MiB in 32 KiB writes");

    // With the server's 1 MiB, reads go in the default 128 KiB chunks, or as asked.
    let s = setup();
    let before = s.probe.commands();
    s.dev.read(SCRATCH, 0, &mut back).unwrap();
    assert_eq!(s.probe.commands() - before, 8, "1 MiB in 128 KiB reads");
    let options = DeviceOptions {
        read_chunk: 1 << 20,
        ..DeviceOptions::default()
    };
    let s = setup_with(GpioConfig::default(), ServerConfig::default(), &options);
    let before = s.probe.commands();
    s.dev.read(SCRATCH, 0, &mut back).unwrap();
    assert_eq!(s.probe.commands() - before, 1, "1 MiB in one read");
}

#[test]
fn bad_accesses_are_refused_locally() {
    let s = setup();
    let before = s.probe.commands();
    let mut buf = [0u8; 8];
    let size = 4u64 << 20;
    assert!(matches!(
        s.dev.read(SCRATCH, size - 4, &mut buf),
        Err(DeviceError::OutOfRange { index: SCRATCH, offset, len: 8, size: sz })
            if offset == size - 4 && sz == size
    ));
    assert!(matches!(
        s.dev.write(SCRATCH, u64::MAX, &buf),
        Err(DeviceError::OutOfRange { .. })
    ));
    assert!(matches!(
        s.dev.read(9, 0, &mut buf),
        Err(DeviceError::NoSuchRegion { index: 9, .. })
    ));
    // Region 3 is absent: no flags, size 0.
    assert!(matches!(
        s.dev.read(3, 0, &mut buf),
        Err(DeviceError::AccessDenied {
            index: 3,
            access: "readable"
        })
    ));
    assert!(matches!(
        s.dev.write(3, 0, &buf),
        Err(DeviceError::AccessDenied {
            index: 3,
            access: "writable"
        })
    ));
    assert!(matches!(
        s.dev
            .irq_action(VFIO_PCI_MSIX_IRQ_INDEX, IrqAction::Mask, 3, 2),
        Err(DeviceError::IrqOutOfRange {
            index: 2,
            start: 3,
            end: 5,
            count: 4
        })
    ));
    assert!(matches!(
        s.dev.disable_irqs(5),
        Err(DeviceError::NoSuchIrq { index: 5, count: 5 })
    ));
    // Zero-length accesses inside the region are no-ops.
    s.dev.read(SCRATCH, size, &mut []).unwrap();
    s.dev.write(SCRATCH, 0, &[]).unwrap();
    assert_eq!(s.probe.commands(), before, "nothing reached the server");
}

#[test]
fn server_errors_reach_the_caller_with_their_errno() {
    let s = setup();
    // BAR0 registers must be written as aligned dwords: the server answers EINVAL.
    let err = s.dev.write(BAR0, 1, &[1, 2]).unwrap_err();
    assert_eq!(err.server_errno(), Some(libc::EINVAL as u32), "{err}");
    assert!(
        err.to_string()
            .contains("REGION_WRITE of region 0 at 0x1, 2 bytes"),
        "{err}"
    );
    // The connection is still in step.
    let mut id = [0u8; 4];
    s.dev.read(BAR0, GpioDevice::REG_ID, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), GpioDevice::ID);
}

#[test]
fn mapped_areas_are_shared_with_the_server() {
    let s = setup();
    let bar2 = s.dev.region(BAR2).unwrap();
    for area in bar2.mapped_areas() {
        // Client writes through the mapping; the server sees them.
        let data = pattern(area.size() as usize, area.offset() as u8);
        area.as_volatile_slice().write_slice(&data, 0).unwrap();
        let mut seen = vec![0u8; data.len()];
        s.handle.bar2().read_at(area.offset(), &mut seen).unwrap();
        assert_eq!(seen, data);
        // The server writes; the client sees it through the mapping and by message.
        let data = pattern(area.size() as usize, !(area.offset() as u8));
        s.handle.bar2().write_at(area.offset(), &data).unwrap();
        let mut mapped = vec![0u8; data.len()];
        area.mapping()
            .get_slice(0, data.len())
            .unwrap()
            .read_slice(&mut mapped, 0)
            .unwrap();
        assert_eq!(mapped, data);
        let mut by_message = vec![0u8; data.len()];
        s.dev.read(BAR2, area.offset(), &mut by_message).unwrap();
        assert_eq!(by_message, data);
        assert!(!area.host_addr().is_null());
    }
    // The trapped gap between the areas goes by message.
    s.dev.write(BAR2, 0x4000, &[9; 16]).unwrap();
    let mut gap = [0u8; 16];
    s.handle.bar2().read_at(0x4000, &mut gap).unwrap();
    assert_eq!(gap, [9; 16]);
}

#[test]
fn regions_need_not_be_mapped() {
    let options = DeviceOptions {
        map_regions: false,
        ..DeviceOptions::default()
    };
    let s = setup_with(GpioConfig::default(), ServerConfig::default(), &options);
    let bar2 = s.dev.region(BAR2).unwrap();
    assert!(bar2.mappable());
    assert!(bar2.mapped_areas().is_empty());
}

fn eventfds(n: usize) -> Vec<EventFd> {
    (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect()
}

/// Assigns 512 MSI-X vectors with holes, with the server accepting `max_fds` fds per
/// message, and checks the message count and that every vector fires its own eventfd.
fn msix_512(max_fds: u64) {
    let gpio = GpioConfig {
        msix_vectors: 512,
        ..GpioConfig::default()
    };
    let config = ServerConfig {
        max_msg_fds: Some(max_fds),
        ..ServerConfig::default()
    };
    let s = setup_with(gpio, config, &DeviceOptions::default());
    assert_eq!(s.dev.irq(VFIO_PCI_MSIX_IRQ_INDEX).unwrap().count, 512);
    assert_eq!(s.dev.capabilities().max_msg_fds as u64, max_fds);
    let fds = eventfds(512);
    // Holes: every 7th vector and a run of 20 from 100.
    let hole = |v: usize| v % 7 == 3 || (100..120).contains(&v);
    let list: Vec<Option<&EventFd>> = fds
        .iter()
        .enumerate()
        .map(|(v, f)| (!hole(v)).then_some(f))
        .collect();

    // Expected messages: each assigned run in chunks of max_fds, each hole run as one.
    let mut expected = 0u64;
    let mut v = 0;
    while v < 512 {
        let assigned = !hole(v);
        let run = (v..512).take_while(|&w| hole(w) != assigned).count() as u64;
        expected += if assigned { run.div_ceil(max_fds) } else { 1 };
        v += run as usize;
    }
    let before = s.probe.commands();
    s.dev
        .set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, IrqAction::Trigger, 0, &list)
        .unwrap();
    assert_eq!(s.probe.commands() - before, expected);

    let state = s.probe.irq_state(VFIO_PCI_MSIX_IRQ_INDEX);
    for (v, st) in state.iter().enumerate() {
        assert_eq!(st.assigned, !hole(v), "vector {v}");
    }
    for v in 0..512u32 {
        let fired = s.probe.raise_irq(VFIO_PCI_MSIX_IRQ_INDEX, v).unwrap();
        assert_eq!(fired, !hole(v as usize), "vector {v}");
    }
    for (v, f) in fds.iter().enumerate() {
        if hole(v) {
            assert!(f.read().is_err(), "vector {v} must not fire");
        } else {
            assert_eq!(f.read().unwrap(), 1, "vector {v}");
        }
    }
    // Disabling the index de-assigns everything.
    s.dev.disable_irqs(VFIO_PCI_MSIX_IRQ_INDEX).unwrap();
    assert!(s
        .probe
        .irq_state(VFIO_PCI_MSIX_IRQ_INDEX)
        .iter()
        .all(|st| !st.assigned));
}

#[test]
fn set_irqs_512_vectors_one_fd_per_message() {
    msix_512(1);
}

#[test]
fn set_irqs_512_vectors_eight_fds_per_message() {
    msix_512(8);
}

#[test]
fn set_irqs_512_vectors_sixteen_fds_per_message() {
    msix_512(16);
}

#[test]
fn mask_unmask_and_trigger() {
    let s = setup();
    let fds = eventfds(4);
    let list: Vec<Option<&EventFd>> = fds.iter().map(Some).collect();
    s.dev
        .set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, IrqAction::Trigger, 0, &list)
        .unwrap();
    s.dev
        .irq_action(VFIO_PCI_MSIX_IRQ_INDEX, IrqAction::Mask, 1, 2)
        .unwrap();
    let masked: Vec<bool> = s
        .probe
        .irq_state(VFIO_PCI_MSIX_IRQ_INDEX)
        .iter()
        .map(|st| st.masked)
        .collect();
    assert_eq!(masked, [false, true, true, false]);
    // A masked vector raised stays pending until unmasked.
    assert!(!s.probe.raise_irq(VFIO_PCI_MSIX_IRQ_INDEX, 1).unwrap());
    assert!(fds[1].read().is_err());
    s.dev
        .irq_action_selected(
            VFIO_PCI_MSIX_IRQ_INDEX,
            IrqAction::Unmask,
            0,
            &[false, true, false, false],
        )
        .unwrap();
    assert_eq!(
        fds[1].read().unwrap(),
        1,
        "pending vector delivered on unmask"
    );
    assert!(s.probe.irq_state(VFIO_PCI_MSIX_IRQ_INDEX)[2].masked);
    // The client triggers a vector itself.
    s.dev
        .irq_action(VFIO_PCI_MSIX_IRQ_INDEX, IrqAction::Trigger, 0, 1)
        .unwrap();
    assert_eq!(fds[0].read().unwrap(), 1);
    // De-assign one vector.
    s.dev
        .set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, IrqAction::Trigger, 3, &[None])
        .unwrap();
    assert!(!s.probe.irq_state(VFIO_PCI_MSIX_IRQ_INDEX)[3].assigned);
    assert!(s.probe.irq_state(VFIO_PCI_MSIX_IRQ_INDEX)[0].assigned);
}

#[test]
fn reset_reaches_the_device() {
    let s = setup();
    s.dev
        .write(BAR0, GpioDevice::REG_OUTPUT, &0x1234u32.to_le_bytes())
        .unwrap();
    assert_eq!(s.handle.output(), 0x1234);
    let resets = s.handle.resets();
    s.dev.reset().unwrap();
    assert_eq!(s.handle.resets(), resets + 1);
    assert_eq!(s.handle.output(), 0);
}

#[test]
fn connect_by_path_discovers_the_device() {
    let (device, handle) = GpioDevice::new(GpioConfig::default()).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(device))
        .listen_temp()
        .unwrap();
    let dev = VfioUserDevice::connect(
        server.socket_path().unwrap(),
        &ConnectOptions::default(),
        &DeviceOptions::default(),
    )
    .unwrap();
    dev.write(BAR0, GpioDevice::REG_OUTPUT, &7u32.to_le_bytes())
        .unwrap();
    assert_eq!(handle.output(), 7);
}

#[test]
fn io_fds_of_the_gpio_device_in_both_layouts() {
    use vfio_user_client::protocol::{IoFdsLayout, IoSubregion};
    for layout in [IoFdsLayout::LibVfioUser, IoFdsLayout::Spec] {
        let config = ServerConfig {
            io_fds_layout: layout,
            ..ServerConfig::default()
        };
        let s = setup_with(GpioConfig::default(), config, &DeviceOptions::default());
        let fds = s.dev.region_io_fds(BAR0).unwrap();
        assert_eq!(fds.len(), GpioDevice::IOEVENTFDS);
        let out = &fds[GpioDevice::IOEVENTFD_OUTPUT];
        assert_eq!((out.offset, out.size), (GpioDevice::REG_OUTPUT, 4));
        assert_eq!(out.flags, IoSubregion::FLAG_DATAMATCH);
        assert_eq!(out.data, Some(u64::from(GpioDevice::OUTPUT_DATAMATCH)));
        let bell = &fds[GpioDevice::IOEVENTFD_DOORBELL];
        assert_eq!((bell.offset, bell.flags), (GpioDevice::REG_DOORBELL, 0));
        // Signalling the fds as KVM would is seen by the device.
        for (i, f) in fds.iter().enumerate() {
            let file = std::fs::File::from(f.fd.try_clone().unwrap());
            std::io::Write::write_all(&mut &file, &1u64.to_ne_bytes()).unwrap();
            assert_eq!(s.handle.ioeventfd_signals(i), 1, "ioeventfd {i}");
        }
        assert_eq!(s.handle.output(), GpioDevice::OUTPUT_DATAMATCH);
        // Regions without ioeventfds answer an empty list.
        assert!(s.dev.region_io_fds(SCRATCH).unwrap().is_empty());
        // An absent region is refused by the server.
        assert!(matches!(
            s.dev.region_io_fds(3),
            Err(DeviceError::IoFdsNotSupported { index: 3, .. })
        ));
    }
}

#[test]
fn a_device_without_io_fds_says_not_supported() {
    use vfio_user_sample_server::DmaEngine;
    let (device, _handle) = DmaEngine::new();
    let server = Server::new(ServerConfig::default(), Box::new(device));
    let (client, server_end) = UnixStream::pair().unwrap();
    let _running = server.serve_stream(server_end);
    let conn = Connection::connect(client, &ConnectOptions::default()).unwrap();
    let dev = VfioUserDevice::new(conn, &DeviceOptions::default()).unwrap();
    let e = dev.region_io_fds(0).unwrap_err();
    assert!(
        matches!(e, DeviceError::IoFdsNotSupported { index: 0, ref source } if source.server_errno() == Some(libc::EINVAL as u32)),
        "{e}"
    );
}

#[test]
fn injected_server_errors_keep_their_errno() {
    let s = setup();
    for errno in [libc::EINVAL, libc::ENOSPC, libc::EIO, 0] {
        s.handle.set_fail_region(Some((SCRATCH, errno)));
        let e = s.dev.read(SCRATCH, 0, &mut [0u8; 4]).unwrap_err();
        assert_eq!(e.server_errno(), Some(errno as u32), "{e}");
        let e = s.dev.write(SCRATCH, 0, &[0u8; 100 << 10]).unwrap_err();
        assert_eq!(e.server_errno(), Some(errno as u32), "{e}");
        let e = s.dev.read(SCRATCH, 0, &mut vec![0u8; 3 << 20]).unwrap_err();
        assert_eq!(e.server_errno(), Some(errno as u32), "{e}");
    }
    s.handle.set_fail_region(None);
    s.dev.write(SCRATCH, 8, &[5; 8]).unwrap();
    let mut b = [0u8; 8];
    s.dev.read(SCRATCH, 8, &mut b).unwrap();
    assert_eq!(b, [5; 8]);
}

#[test]
fn reset_is_refused_locally_when_not_advertised() {
    let gpio = GpioConfig {
        resettable: false,
        ..GpioConfig::default()
    };
    let s = setup_with(gpio, ServerConfig::default(), &DeviceOptions::default());
    assert!(!s.dev.resettable());
    let before = s.probe.commands();
    assert!(matches!(s.dev.reset(), Err(DeviceError::ResetNotSupported)));
    assert_eq!(s.probe.commands(), before);
    assert_eq!(s.handle.resets(), 0);
}

#[test]
fn disabling_an_index_without_vectors_is_not_an_error() {
    let gpio = GpioConfig {
        msix_vectors: 0,
        ..GpioConfig::default()
    };
    let s = setup_with(gpio, ServerConfig::default(), &DeviceOptions::default());
    assert_eq!(s.dev.irq(VFIO_PCI_MSIX_IRQ_INDEX).unwrap().count, 0);
    let before = s.probe.commands();
    s.dev.disable_irqs(VFIO_PCI_MSIX_IRQ_INDEX).unwrap();
    s.dev
        .set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, IrqAction::Trigger, 0, &[])
        .unwrap();
    assert_eq!(s.probe.commands(), before);
    // INTx, with its one vector, is disabled by message.
    s.dev.disable_irqs(VFIO_PCI_INTX_IRQ_INDEX).unwrap();
    assert_eq!(s.probe.commands(), before + 1);
}

fn unmappable() -> GpioConfig {
    GpioConfig {
        mappable_bar2: false,
        ..GpioConfig::default()
    }
}

#[test]
fn posted_writes_are_not_answered_and_stay_in_order() {
    let s = setup_with(
        unmappable(),
        ServerConfig::default(),
        &DeviceOptions::default(),
    );
    assert!(s.dev.posted_writes());
    assert!(!s.dev.region(BAR2).unwrap().mappable());
    let writes = s.handle.region_writes();
    for v in 0..1000u32 {
        s.dev
            .write_posted(BAR0, GpioDevice::REG_OUTPUT, &v.to_le_bytes())
            .unwrap();
    }
    // A read is answered after every earlier posted write was handled.
    let mut out = [0u8; 4];
    s.dev.read(BAR0, GpioDevice::REG_OUTPUT, &mut out).unwrap();
    assert_eq!(u32::from_le_bytes(out), 999);
    assert_eq!(s.handle.region_writes() - writes, 1000);
    // Large posted writes are chunked too.
    let data = pattern(100 << 10, 3);
    s.dev.write_posted(SCRATCH, 0, &data).unwrap();
    s.dev.read(BAR0, GpioDevice::REG_OUTPUT, &mut out).unwrap();
    assert_eq!(s.handle.scratch(0, data.len()).unwrap(), data);
    // A refused posted write is not reported; a synchronous one is.
    s.handle.set_fail_region(Some((SCRATCH, libc::EIO)));
    s.dev.write_posted(SCRATCH, 0, &[1]).unwrap();
    assert!(s.dev.write(SCRATCH, 0, &[1]).is_err());
}

#[test]
fn posted_writes_can_be_turned_off() {
    let options = DeviceOptions {
        posted_writes: false,
        ..DeviceOptions::default()
    };
    let s = setup_with(unmappable(), ServerConfig::default(), &options);
    assert!(!s.dev.posted_writes());
    s.handle.set_fail_region(Some((SCRATCH, libc::EIO)));
    // Sent as a synchronous write: the error is reported.
    let e = s.dev.write_posted(SCRATCH, 0, &[1]).unwrap_err();
    assert_eq!(e.server_errno(), Some(libc::EIO as u32));
}

#[test]
fn an_idle_connection_with_a_twin_socket_notices_the_server_going() {
    let (device, _handle) = GpioDevice::new(GpioConfig::default()).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(device))
        .listen_temp()
        .unwrap();
    let dev = VfioUserDevice::connect(
        server.socket_path().unwrap(),
        &ConnectOptions::default(),
        &DeviceOptions::default(),
    )
    .unwrap();
    // The main socket then leaves the event loop's view (replies are read by their
    // waiters): the twin socket's hang-up tells the event loop that the server went.
    assert!(dev.connection().twin_socket());
    let (tx, rx) = std::sync::mpsc::channel();
    dev.connection()
        .on_disconnect(move |reason| tx.send(reason.clone()).unwrap());
    for _ in 0..100 {
        dev.read(BAR0, GpioDevice::REG_ID, &mut [0u8; 4]).unwrap();
    }
    // Nobody waits for anything when the server goes.
    server.stop();
    rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    assert!(!dev.connection().is_connected());
    assert!(dev
        .read(BAR0, 0, &mut [0u8; 4])
        .unwrap_err()
        .is_disconnected());
}

/// Without busy polling (one CPU), a lone caller takes its reply with one read checked in
/// place, a plain one (no fds) when no reply may carry fds: reads and writes of every size,
/// server errors, and replies that do carry fds (REGION_IO_FDS) asked for from another
/// thread meanwhile, none of whose fds may be lost.
#[test]
fn a_lone_reader_on_one_cpu_loses_no_reply_and_no_fd() {
    let (device, handle) = GpioDevice::new(GpioConfig::default()).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(device));
    let (client, server_end) = UnixStream::pair().unwrap();
    let _running = server.serve_stream(server_end);
    let options = ConnectOptions {
        busy_poll: std::time::Duration::ZERO,
        ..ConnectOptions::default()
    };
    let conn = Connection::connect(client, &options).unwrap();
    let dev = std::sync::Arc::new(VfioUserDevice::new(conn, &DeviceOptions::default()).unwrap());
    for (i, len) in [1usize, 4, 8, 100, 4000, 4096, 70_000]
        .into_iter()
        .enumerate()
    {
        let data = pattern(len, i as u8);
        dev.write(SCRATCH, 8, &data).unwrap();
        let mut back = vec![0u8; len];
        dev.read(SCRATCH, 8, &mut back).unwrap();
        assert_eq!(back, data, "{len} bytes");
    }
    let err = dev.write(BAR0, 1, &[1, 2]).unwrap_err();
    assert_eq!(err.server_errno(), Some(libc::EINVAL as u32), "{err}");
    let reader = {
        let dev = std::sync::Arc::clone(&dev);
        std::thread::spawn(move || {
            let mut id = [0u8; 4];
            for _ in 0..2000 {
                dev.read(BAR0, GpioDevice::REG_ID, &mut id).unwrap();
                assert_eq!(u32::from_le_bytes(id), GpioDevice::ID);
            }
        })
    };
    for _ in 0..50 {
        let fds = dev.region_io_fds(BAR0).unwrap();
        assert_eq!(fds.len(), GpioDevice::IOEVENTFDS);
    }
    reader.join().unwrap();
    assert_eq!(handle.scratch(8, 70_000).unwrap(), pattern(70_000, 6));
}
