// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the client's device-access layer meets: REGION_IO_FDS, the reset knob, injected
//! region errors and SET_IRQS edge cases, driven with hand-built messages.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use vfio_user_client::protocol::{Command, IoFdsLayout, IoSubregion, RegionIoFds};
use vfio_user_sample_server::test_support::script::*;
use vfio_user_sample_server::wire::{RawEndpoint, RawMsg};
use vfio_user_sample_server::{
    DmaEngine, GpioConfig, GpioDevice, GpioHandle, ServerConfig, ServerHandle, IRQ_ERR, IRQ_MSIX,
    IRQ_REQ, PCI_CONFIG_REGION,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const ENOSPC: u32 = libc::ENOSPC as u32;
const EVENTFD_TRIGGER: u32 = (1 << 2) | (1 << 5);
const EVENTFD_MASK: u32 = (1 << 2) | (1 << 3);
const NONE_TRIGGER: u32 = 1 | (1 << 5);

fn gpio_with(config: ServerConfig, gpio: GpioConfig) -> (RawEndpoint, ServerHandle, GpioHandle) {
    let (dev, h) = GpioDevice::new(gpio).unwrap();
    let (c, s) = serve_pair(config, Box::new(dev));
    (c, s, h)
}

fn io_fds(c: &mut RawEndpoint, index: u32, argsz: u32) -> RawMsg {
    c.call(Command::DeviceGetRegionIoFds, &words(&[argsz, 0, index, 0]))
}

fn signal(fd: &OwnedFd, n: u64) {
    let mut f = File::from(fd.try_clone().unwrap());
    f.write_all(&n.to_ne_bytes()).unwrap();
}

fn set_irqs(index: u32, flags: u32, start: u32, count: u32) -> Vec<u8> {
    words(&[20, flags, index, start, count])
}

#[test]
fn io_fds_libvfio_user_layout_and_argsz_requery() {
    let (mut c, _s, gpio) = gpio_with(ServerConfig::default(), GpioConfig::default());
    c.version();
    // Too small for the entries: the head with the argsz needed and the count, no fds.
    let m = io_fds(&mut c, 0, 16);
    m.assert_ok();
    assert_eq!(m.payload, words(&[16 + 2 * 48, 0, 0, 2]));
    assert!(m.fds.is_empty());
    let m = io_fds(&mut c, 0, 16 + 2 * 48 - 1);
    assert_eq!(m.payload.len(), 16);
    assert!(m.fds.is_empty());

    let m = io_fds(&mut c, 0, 4096);
    m.assert_ok();
    assert_eq!(m.payload.len(), 16 + 2 * 48);
    assert_eq!(m.fds.len(), 2);
    let r = RegionIoFds::decode(&m.payload).unwrap();
    assert_eq!((r.argsz, r.index, r.count), (112, 0, 2));
    assert_eq!(r.layout, IoFdsLayout::LibVfioUser);
    let out = r.subregions[GpioDevice::IOEVENTFD_OUTPUT];
    assert_eq!(
        (out.offset, out.size, out.kind, out.flags, out.data),
        (
            GpioDevice::REG_OUTPUT,
            4,
            IoSubregion::TYPE_IOEVENTFD,
            IoSubregion::FLAG_DATAMATCH,
            Some(u64::from(GpioDevice::OUTPUT_DATAMATCH))
        )
    );
    assert_eq!(m.u64_at(16 + 40), u64::from(GpioDevice::OUTPUT_DATAMATCH));
    let bell = r.subregions[GpioDevice::IOEVENTFD_DOORBELL];
    assert_eq!(
        (bell.offset, bell.size, bell.kind, bell.flags),
        (GpioDevice::REG_DOORBELL, 4, IoSubregion::TYPE_IOEVENTFD, 0)
    );
    assert_ne!(out.fd_index, bell.fd_index);

    assert_eq!(gpio.ioeventfd_signals(0), 0);
    signal(&m.fds[out.fd_index as usize], 1);
    signal(&m.fds[bell.fd_index as usize], 3);
    assert_eq!(gpio.ioeventfd_signals(GpioDevice::IOEVENTFD_OUTPUT), 1);
    assert_eq!(gpio.ioeventfd_signals(GpioDevice::IOEVENTFD_DOORBELL), 3);
    assert_eq!(gpio.ioeventfd_signals(7), 0);
    // The signals stand for the writes they replace.
    assert_eq!(gpio.output(), GpioDevice::OUTPUT_DATAMATCH);
    signal(&m.fds[bell.fd_index as usize], 2);
    c.write_u32(0, GpioDevice::REG_DOORBELL, 0);
    assert_eq!(c.read_u32(0, GpioDevice::REG_DOORBELL), 6);
    assert_eq!(gpio.doorbells(), 6);
    assert_eq!(gpio.ioeventfd_signals(GpioDevice::IOEVENTFD_DOORBELL), 5);
}

#[test]
fn io_fds_spec_layout() {
    let config = ServerConfig {
        io_fds_layout: IoFdsLayout::Spec,
        ..ServerConfig::default()
    };
    let (mut c, _s, _gpio) = gpio_with(config, GpioConfig::default());
    c.version();
    let m = io_fds(&mut c, 0, 16);
    assert_eq!(m.payload, words(&[16 + 2 * 40, 0, 0, 2]));
    let m = io_fds(&mut c, 0, 96);
    assert_eq!(m.fds.len(), 2);
    let r = RegionIoFds::decode(&m.payload).unwrap();
    assert_eq!(r.layout, IoFdsLayout::Spec);
    assert_eq!(
        r.subregions[0].data,
        Some(u64::from(GpioDevice::OUTPUT_DATAMATCH))
    );
    assert_eq!(m.u64_at(16 + 32), u64::from(GpioDevice::OUTPUT_DATAMATCH));
}

#[test]
fn io_fds_regions_without_ioeventfds_and_bad_requests() {
    let (mut c, _s, _gpio) = gpio_with(ServerConfig::default(), GpioConfig::default());
    c.version();
    for index in [1, 2, PCI_CONFIG_REGION] {
        let m = io_fds(&mut c, index, 4096);
        m.assert_ok();
        assert_eq!(m.payload, words(&[16, 0, index, 0]), "region {index}");
        assert!(m.fds.is_empty());
    }
    // Absent regions and out-of-range indexes.
    for index in [3, 6, 8, 9] {
        assert_eq!(
            io_fds(&mut c, index, 4096).errno(),
            EINVAL,
            "region {index}"
        );
    }
    let bad = [
        words(&[4096, 1, 0, 0]),          // flags
        words(&[4096, 0, 0, 1]),          // count
        words(&[8, 0, 0, 0]),             // argsz below the head
        words(&[(1 << 20) + 1, 0, 0, 0]), // argsz above max_data_xfer_size
        words(&[4096, 0, 0]),             // short
    ];
    for p in bad {
        assert_eq!(
            c.call(Command::DeviceGetRegionIoFds, &p).errno(),
            EINVAL,
            "{p:?}"
        );
    }
    // Still serving.
    assert_eq!(c.read_u32(0, GpioDevice::REG_ID), GpioDevice::ID);
}

#[test]
fn io_fds_unsupported_by_the_device() {
    let (dev, _h) = DmaEngine::new();
    let (mut c, _s) = serve_pair(ServerConfig::default(), Box::new(dev));
    c.version();
    assert_eq!(io_fds(&mut c, 0, 4096).errno(), EINVAL);
}

#[test]
fn io_fds_respect_the_clients_max_msg_fds() {
    for (max, count) in [(1u32, 1u32), (0, 0)] {
        let (mut c, _s, _gpio) = gpio_with(ServerConfig::default(), GpioConfig::default());
        c.version_with(0, &format!(r#"{{"capabilities":{{"max_msg_fds":{max}}}}}"#))
            .assert_ok();
        let m = io_fds(&mut c, 0, 4096);
        m.assert_ok();
        assert_eq!(m.u32_at(12), count, "max_msg_fds {max}");
        assert_eq!(m.u32_at(0), 16 + 48 * count);
        assert_eq!(m.fds.len(), count as usize);
        if count == 1 {
            let r = RegionIoFds::decode(&m.payload).unwrap();
            assert_eq!(r.subregions[0].offset, GpioDevice::REG_OUTPUT);
            assert_eq!(r.subregions[0].fd_index, 0);
        }
    }
}

#[test]
fn reset_knob() {
    let (mut c, _s, gpio) = gpio_with(ServerConfig::default(), GpioConfig::default());
    c.version();
    let m = c.call(Command::DeviceGetInfo, &words(&[16, 0, 0, 0]));
    assert_eq!(m.u32_at(4), 3, "PCI | RESET");
    c.call(Command::DeviceReset, &[]).assert_ok();
    assert_eq!(gpio.resets(), 1);

    let config = GpioConfig {
        resettable: false,
        ..GpioConfig::default()
    };
    let (mut c, _s, gpio) = gpio_with(ServerConfig::default(), config);
    c.version();
    let m = c.call(Command::DeviceGetInfo, &words(&[16, 0, 0, 0]));
    assert_eq!(m.u32_at(4), 2, "PCI only");
    assert_eq!(c.call(Command::DeviceReset, &[]).errno(), EINVAL);
    assert_eq!(gpio.resets(), 0);
}

#[test]
fn injected_region_errors() {
    let config = GpioConfig {
        fail_region: Some((1, libc::ENOSPC)),
        ..GpioConfig::default()
    };
    let (mut c, _s, gpio) = gpio_with(ServerConfig::default(), config);
    c.version();
    assert_eq!(c.region_read(1, 0, 4).errno(), ENOSPC);
    assert_eq!(c.region_write(1, 0, &[1, 2, 3, 4]).errno(), ENOSPC);
    // Validation comes first; other regions are untouched.
    assert_eq!(c.region_read(1, 4 << 20, 4).errno(), EINVAL);
    assert_eq!(c.read_u32(0, GpioDevice::REG_ID), GpioDevice::ID);

    gpio.set_fail_region(Some((0, 0)));
    let m = c.region_read(0, GpioDevice::REG_ID, 4);
    assert_eq!(m.errno(), 0, "Error flag with errno 0");
    gpio.set_fail_region(Some((0, libc::EINVAL)));
    assert_eq!(
        c.region_write(0, GpioDevice::REG_OUTPUT, &[0; 4]).errno(),
        EINVAL
    );

    gpio.set_fail_region(None);
    c.write_u32(1, 0, 7);
    assert_eq!(c.read_u32(1, 0), 7);
    assert_eq!(gpio.scratch(0, 4).unwrap(), 7u32.to_ne_bytes());
}

#[test]
fn set_irqs_512_vectors_in_runs() {
    let config = GpioConfig {
        msix_vectors: 512,
        ..GpioConfig::default()
    };
    let (mut c, s, _gpio) = gpio_with(ServerConfig::default(), config);
    let probe = s.probe();
    c.version();
    let m = c.call(Command::DeviceGetIrqInfo, &words(&[16, 0, IRQ_MSIX, 0]));
    assert_eq!(m.payload, words(&[16, 3, IRQ_MSIX, 512]));

    let efds: Vec<EventFd> = (0..512)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    // More fds than the server's max_msg_fds (8): EINVAL, and the connection lives on.
    let nine: Vec<_> = efds[..9].iter().map(|e| e.as_raw_fd()).collect();
    let m = c.call_fds(
        Command::DeviceSetIrqs,
        &set_irqs(IRQ_MSIX, EVENTFD_TRIGGER, 0, 9),
        &nine,
    );
    assert_eq!(m.errno(), EINVAL);
    assert!(probe.irq_state(IRQ_MSIX).iter().all(|v| !v.assigned));
    // Runs of at most 8, as a client splits them.
    for start in (0..512).step_by(8) {
        let fds: Vec<_> = efds[start..start + 8]
            .iter()
            .map(|e| e.as_raw_fd())
            .collect();
        c.call_fds(
            Command::DeviceSetIrqs,
            &set_irqs(IRQ_MSIX, EVENTFD_TRIGGER, start as u32, 8),
            &fds,
        )
        .assert_ok();
    }
    assert!(probe.irq_state(IRQ_MSIX).iter().all(|v| v.assigned));
    // Exactly the raised vector's eventfd.
    assert_eq!(probe.raise_irq(IRQ_MSIX, 300), Ok(true));
    for (i, e) in efds.iter().enumerate() {
        assert_eq!(e.read().ok(), (i == 300).then_some(1), "vector {i}");
    }
    for v in 0..512 {
        assert_eq!(probe.raise_irq(IRQ_MSIX, v), Ok(true));
    }
    for (i, e) in efds.iter().enumerate() {
        assert_eq!(e.read().unwrap(), 1, "vector {i}");
    }
    assert_eq!(
        probe.raise_irq(IRQ_MSIX, 512),
        Err(vfio_user_sample_server::Errno::INVAL)
    );
    // De-assign a range with no fds; the rest stays.
    c.call(
        Command::DeviceSetIrqs,
        &set_irqs(IRQ_MSIX, EVENTFD_TRIGGER, 8, 504),
    )
    .assert_ok();
    let st = probe.irq_state(IRQ_MSIX);
    assert!(st[..8].iter().all(|v| v.assigned));
    assert!(st[8..].iter().all(|v| !v.assigned));
    assert_eq!(probe.raise_irq(IRQ_MSIX, 7), Ok(true));
    assert_eq!(efds[7].read().unwrap(), 1);
    // DATA_NONE + TRIGGER, count 0: the whole index.
    c.call(
        Command::DeviceSetIrqs,
        &set_irqs(IRQ_MSIX, NONE_TRIGGER, 0, 0),
    )
    .assert_ok();
    assert!(probe.irq_state(IRQ_MSIX).iter().all(|v| !v.assigned));
}

#[test]
fn set_irqs_validation_like_libvfio_user() {
    let config = GpioConfig {
        msix_vectors: 0,
        ..GpioConfig::default()
    };
    let (mut c, _s, _gpio) = gpio_with(ServerConfig::default(), config);
    c.version();
    let e = EventFd::new(EFD_NONBLOCK).unwrap();
    let fd = [e.as_raw_fd()];
    let mut expect = |payload: Vec<u8>, fds: &[i32], errno: Option<u32>, what: &str| {
        let m = c.call_fds(Command::DeviceSetIrqs, &payload, fds);
        match errno {
            Some(errno) => assert_eq!(m.errno(), errno, "{what}"),
            None => m.assert_ok(),
        }
    };
    // No vectors: even "disable all" is EINVAL.
    expect(
        set_irqs(IRQ_MSIX, NONE_TRIGGER, 0, 0),
        &[],
        Some(EINVAL),
        "msix 0 vectors",
    );
    // Count 0: only DATA_NONE + TRIGGER, from vector 0.
    expect(
        set_irqs(IRQ_ERR, NONE_TRIGGER, 0, 0),
        &[],
        None,
        "err disable",
    );
    expect(
        set_irqs(IRQ_ERR, EVENTFD_TRIGGER, 0, 0),
        &[],
        Some(EINVAL),
        "eventfd count 0",
    );
    expect(
        set_irqs(0, NONE_TRIGGER, 1, 0),
        &[],
        Some(EINVAL),
        "start 1 count 0",
    );
    // fds only with DATA_EVENTFD, and exactly count of them.
    expect(
        set_irqs(0, NONE_TRIGGER, 0, 1),
        &fd,
        Some(EINVAL),
        "fd with DATA_NONE",
    );
    expect(
        set_irqs(0, EVENTFD_TRIGGER, 0, 1),
        &[fd[0], fd[0]],
        Some(EINVAL),
        "2 fds",
    );
    // ERR/REQ: TRIGGER only, count <= 1.
    expect(
        set_irqs(IRQ_REQ, EVENTFD_TRIGGER, 0, 1),
        &fd,
        None,
        "req trigger",
    );
    expect(
        set_irqs(IRQ_REQ, EVENTFD_MASK, 0, 1),
        &fd,
        Some(EINVAL),
        "req mask",
    );
    expect(
        set_irqs(IRQ_ERR, EVENTFD_TRIGGER, 0, 2),
        &[fd[0], fd[0]],
        Some(EINVAL),
        "err 2",
    );
    expect(
        set_irqs(IRQ_ERR, EVENTFD_TRIGGER, 1, 1),
        &fd,
        Some(EINVAL),
        "err start 1",
    );
}
