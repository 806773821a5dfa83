// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! DMA, interrupts and connection lifecycle, driven with hand-built messages.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vfio_user_client::protocol::{Command, Header};
use vfio_user_sample_server::test_support::script::*;
use vfio_user_sample_server::wire::{RawEndpoint, RawMsg};
use vfio_user_sample_server::{
    DmaAccessMode, DmaEngine, DmaEngineHandle, DmaEngineStatus, GpioDevice, ResetReason, Server,
    ServerConfig, SharedMemory, IRQ_INTX, IRQ_MSIX,
};
use vmm_sys_util::eventfd::EventFd;

const RW: u32 = 3;

fn engine() -> (
    RawEndpoint,
    vfio_user_sample_server::ServerHandle,
    DmaEngineHandle,
) {
    let (dev, h) = DmaEngine::new();
    let (c, s) = serve_pair(ServerConfig::default(), Box::new(dev));
    (c, s, h)
}

fn program(c: &mut RawEndpoint, src: u64, dst: u64, len: u64) {
    let mut regs = Vec::new();
    for v in [src, dst, len] {
        regs.extend_from_slice(&v.to_ne_bytes());
    }
    c.region_write(0, DmaEngine::REG_SOURCE, &regs).assert_ok();
}

#[test]
fn doorbell_copies_through_mmapped_memfd() {
    let (mut c, s, engine) = engine();
    c.version();
    let guest = SharedMemory::new("guest", 0x20000).unwrap();
    let base = 0x1_0000_0000u64;
    let m = c.call_fds(
        Command::DmaMap,
        &dma_map(RW, 0, base, 0x20000),
        &[guest.as_raw_fd()],
    );
    m.assert_ok();
    assert!(m.payload.is_empty());
    let maps = s.probe().dma_maps();
    assert_eq!(maps.len(), 1);
    assert_eq!((maps[0].address, maps[0].mode), (base, DmaAccessMode::Mmap));

    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    guest.write_at(0x100, &data).unwrap();
    program(&mut c, base + 0x100, base + 0x10000, data.len() as u64);
    c.write_u32(0, DmaEngine::REG_DOORBELL, 1);
    let mut out = vec![0u8; data.len()];
    guest.read_at(0x10000, &mut out).unwrap();
    assert_eq!(out, data);
    assert_eq!(
        c.read_u32(0, DmaEngine::REG_STATUS),
        DmaEngineStatus::Done as u32
    );
    assert_eq!(engine.completions(), 1);

    // Outside every window: error status with EFAULT.
    program(&mut c, base + 0x1f000, base, 0x2000);
    c.write_u32(0, DmaEngine::REG_DOORBELL, 1);
    assert_eq!(engine.status(), DmaEngineStatus::Error);
    assert_eq!(c.read_u32(0, DmaEngine::REG_ERRNO), libc::EFAULT as u32);
}

#[test]
fn dma_map_rules() {
    let (mut c, s, engine) = engine();
    c.version();
    let guest = SharedMemory::new("guest", 0x4000).unwrap();
    let fd = [guest.as_raw_fd()];
    c.call_fds(Command::DmaMap, &dma_map(RW, 0, 0x10000, 0x4000), &fd)
        .assert_ok();
    c.call_fds(Command::DmaMap, &dma_map(RW, 0, 0x10000, 0x4000), &fd)
        .assert_ok();
    assert_eq!(
        engine.maps_seen(),
        (1, 0),
        "identical re-map is not a new window"
    );
    let overlap = dma_map(RW, 0, 0x11000, 0x1000);
    assert_eq!(c.call_fds(Command::DmaMap, &overlap, &fd).errno(), EINVAL);
    assert_eq!(
        c.call(Command::DmaMap, &dma_map(RW, 0, 0x13000, 0x2000))
            .errno(),
        EINVAL
    );
    assert_eq!(
        c.call(Command::DmaMap, &dma_map(RW, 0, 0x20000, 0)).errno(),
        EINVAL,
        "size 0"
    );
    assert_eq!(
        c.call(Command::DmaMap, &dma_map(1 << 7, 0, 0x20000, 0x1000))
            .errno(),
        EINVAL
    );
    let beyond = dma_map(RW, 0x2000, 0x20000, 0x4000);
    assert_eq!(
        c.call_fds(Command::DmaMap, &beyond, &fd).errno(),
        EINVAL,
        "past the file end"
    );
    c.call(Command::DmaMap, &dma_map(RW, 0, 0x40000, 0x1000))
        .assert_ok();
    assert_eq!(s.probe().dma_maps()[1].mode, DmaAccessMode::Message);

    let m = c.call(Command::DmaUnmap, &dma_unmap(0, 0x10000, 0x1000));
    assert_eq!(m.errno(), libc::ENOENT as u32, "no partial unmap");
    let m = c.call(Command::DmaUnmap, &dma_unmap(0, 0x10000, 0x4000));
    m.assert_ok();
    assert_eq!(m.payload, dma_unmap(0, 0x10000, 0x4000), "echoes the entry");
    assert_eq!(
        c.call(Command::DmaUnmap, &dma_unmap(2, 1, 0)).errno(),
        EINVAL
    );
    c.call(Command::DmaUnmap, &dma_unmap(2, 0, 0)).assert_ok();
    assert!(s.probe().dma_maps().is_empty());
    assert_eq!(engine.maps_seen(), (2, 2));
}

/// Answers the server's DMA_READ/DMA_WRITE from `mem` (guest address `base`) until the reply
/// with `id` arrives, which it returns. Records the chunk sizes seen.
fn serve_dma(
    c: &mut RawEndpoint,
    mem: &mut [u8],
    base: u64,
    id: u16,
    chunks: &mut Vec<u64>,
) -> RawMsg {
    loop {
        let m = c.recv().unwrap();
        if m.header.is_reply() {
            assert_eq!(m.header.id, id);
            return m;
        }
        let address = m.u64_at(0);
        let count = m.u64_at(8);
        chunks.push(count);
        let at = (address - base) as usize;
        let mut payload = m.payload[..16].to_vec();
        match m.header.command {
            11 => payload.extend_from_slice(&mem[at..at + count as usize]),
            12 => mem[at..at + count as usize].copy_from_slice(&m.payload[16..]),
            other => panic!("unexpected command {other}"),
        }
        let h = Header::reply(&m.header, payload.len()).unwrap();
        c.send_message(&h, &payload, &[]).unwrap();
    }
}

#[test]
fn doorbell_copies_through_dma_messages_chunked() {
    let (mut c, _s, engine) = engine();
    c.version_with(0, r#"{"capabilities":{"max_data_xfer_size":4096}}"#)
        .assert_ok();
    let base = 0x8000_0000u64;
    let mut mem = vec![0u8; 0x10000];
    for (i, b) in mem[..10000].iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    c.call(Command::DmaMap, &dma_map(RW, 0, base, 0x10000))
        .assert_ok();
    program(&mut c, base, base + 0x8000, 10000);
    let id = c
        .send_command(
            Command::RegionWrite,
            &access(0, DmaEngine::REG_DOORBELL, 4, &1u32.to_ne_bytes()),
            &[],
        )
        .unwrap();
    // Answer the first DMA_READ only after sending another command: the server must queue
    // it and answer it after the doorbell write.
    let first = c.recv().unwrap();
    assert_eq!(first.header.command, Command::DmaRead as u16);
    let status_id = c
        .send_command(
            Command::RegionRead,
            &access(0, DmaEngine::REG_COMPLETIONS, 4, &[]),
            &[],
        )
        .unwrap();
    let mut payload = first.payload[..16].to_vec();
    payload.extend_from_slice(&mem[..4096]);
    c.send_message(
        &Header::reply(&first.header, payload.len()).unwrap(),
        &payload,
        &[],
    )
    .unwrap();
    let mut chunks = vec![first.u64_at(8)];
    serve_dma(&mut c, &mut mem, base, id, &mut chunks).assert_ok();
    assert_eq!(chunks, [4096, 4096, 1808, 4096, 4096, 1808]);
    assert_eq!(mem[0x8000..0x8000 + 10000], mem[..10000]);
    let m = c.recv().unwrap();
    assert_eq!(m.header.id, status_id, "queued command answered afterwards");
    assert_eq!(m.u32_at(16), 1);
    assert_eq!(engine.completions(), 1);
}

#[test]
fn dma_reply_must_echo_the_request() {
    let (mut c, _s, engine) = engine();
    c.version();
    c.call(Command::DmaMap, &dma_map(RW, 0, 0x1000, 0x1000))
        .assert_ok();
    program(&mut c, 0x1000, 0x1800, 16);
    let id = c
        .send_command(
            Command::RegionWrite,
            &access(0, DmaEngine::REG_DOORBELL, 4, &1u32.to_ne_bytes()),
            &[],
        )
        .unwrap();
    let rq = c.recv().unwrap();
    // Header-only success reply: malformed.
    c.send_message(&Header::reply(&rq.header, 0).unwrap(), &[], &[])
        .unwrap();
    let m = c.recv().unwrap();
    assert_eq!(m.header.id, id);
    m.assert_ok();
    assert_eq!(engine.status(), DmaEngineStatus::Error);
    assert_eq!(engine.errno(), libc::EPROTO as u32);
}

#[test]
fn set_irqs_and_raise() {
    let (dev, _gpio) = GpioDevice::new(Default::default()).unwrap();
    let (mut c, s) = serve_pair(ServerConfig::default(), Box::new(dev));
    let probe = s.probe();
    c.version();
    let e0 = EventFd::new(0).unwrap();
    let e1 = EventFd::new(0).unwrap();
    let set = |flags, index, start, count| words(&[20, flags, index, start, count]);
    const EVENTFD_TRIGGER: u32 = (1 << 2) | (1 << 5);
    const NONE_TRIGGER: u32 = 1 | (1 << 5);

    // fd count must equal count.
    let m = c.call_fds(
        Command::DeviceSetIrqs,
        &set(EVENTFD_TRIGGER, IRQ_MSIX, 0, 2),
        &[e0.as_raw_fd()],
    );
    assert_eq!(m.errno(), EINVAL);
    let fds = [e0.as_raw_fd(), e1.as_raw_fd()];
    c.call_fds(
        Command::DeviceSetIrqs,
        &set(EVENTFD_TRIGGER, IRQ_MSIX, 1, 2),
        &fds,
    )
    .assert_ok();
    assert_eq!(probe.raise_irq(IRQ_MSIX, 1), Ok(true));
    assert_eq!(e0.read().unwrap(), 1);
    // Through the device: the IRQ_RAISE register.
    c.write_u32(0, GpioDevice::REG_IRQ_RAISE, (IRQ_MSIX << 16) | 2);
    assert_eq!(e1.read().unwrap(), 1);
    // DATA_NONE + TRIGGER triggers.
    c.call(Command::DeviceSetIrqs, &set(NONE_TRIGGER, IRQ_MSIX, 2, 1))
        .assert_ok();
    assert_eq!(e1.read().unwrap(), 1);
    // Masked: pending until unmask.
    c.call(Command::DeviceSetIrqs, &set(1 | (1 << 3), IRQ_MSIX, 1, 1))
        .assert_ok();
    assert_eq!(probe.raise_irq(IRQ_MSIX, 1), Ok(false));
    assert!(probe.irq_state(IRQ_MSIX)[1].pending);
    c.call(Command::DeviceSetIrqs, &set(1 | (1 << 4), IRQ_MSIX, 1, 1))
        .assert_ok();
    assert_eq!(e0.read().unwrap(), 1);
    // DATA_EVENTFD without fds de-assigns; count 0 disables the index.
    c.call(
        Command::DeviceSetIrqs,
        &set(EVENTFD_TRIGGER, IRQ_MSIX, 2, 1),
    )
    .assert_ok();
    let st = probe.irq_state(IRQ_MSIX);
    assert_eq!(
        st.iter().map(|v| v.assigned).collect::<Vec<_>>(),
        [false, true, false, false]
    );
    c.call(Command::DeviceSetIrqs, &set(NONE_TRIGGER, IRQ_MSIX, 0, 0))
        .assert_ok();
    assert!(probe.irq_state(IRQ_MSIX).iter().all(|v| !v.assigned));
    assert_eq!(probe.raise_irq(IRQ_MSIX, 1), Ok(false));
    // Validation.
    assert_eq!(
        c.call(Command::DeviceSetIrqs, &set(NONE_TRIGGER, IRQ_MSIX, 4, 0))
            .errno(),
        EINVAL
    );
    assert_eq!(
        c.call(
            Command::DeviceSetIrqs,
            &set(1 | 2 | (1 << 5), IRQ_MSIX, 0, 1)
        )
        .errno(),
        EINVAL
    );
    assert_eq!(
        c.call(Command::DeviceSetIrqs, &set(1 | (1 << 3), 3, 0, 1))
            .errno(),
        EINVAL,
        "ERR: trigger only"
    );
    assert_eq!(
        probe.raise_irq(9, 0),
        Err(vfio_user_sample_server::Errno::INVAL)
    );
}

#[test]
fn completion_interrupt_prefers_msix() {
    let (mut c, _s, engine) = engine();
    c.version();
    let guest = SharedMemory::new("guest", 0x1000).unwrap();
    c.call_fds(
        Command::DmaMap,
        &dma_map(RW, 0, 0, 0x1000),
        &[guest.as_raw_fd()],
    )
    .assert_ok();
    let intx = EventFd::new(0).unwrap();
    let msix = EventFd::new(0).unwrap();
    let set = |index| words(&[20, (1 << 2) | (1 << 5), index, 0, 1]);
    c.call_fds(Command::DeviceSetIrqs, &set(IRQ_INTX), &[intx.as_raw_fd()])
        .assert_ok();
    program(&mut c, 0, 0x800, 8);
    c.write_u32(0, DmaEngine::REG_DOORBELL, 1);
    assert_eq!(intx.read().unwrap(), 1);
    c.call_fds(Command::DeviceSetIrqs, &set(IRQ_MSIX), &[msix.as_raw_fd()])
        .assert_ok();
    c.write_u32(0, DmaEngine::REG_DOORBELL, 1);
    assert_eq!(msix.read().unwrap(), 1);
    assert_eq!(engine.interrupts(), 2);
}

#[test]
fn reconnect_after_disconnect() {
    let (dev, gpio) = GpioDevice::new(Default::default()).unwrap();
    let handle = Server::new(ServerConfig::default(), Box::new(dev))
        .listen_temp()
        .unwrap();
    let path = handle.socket_path().unwrap().to_owned();
    let probe = handle.probe();
    let guest = SharedMemory::new("guest", 0x1000).unwrap();
    {
        let mut c = RawEndpoint::new(UnixStream::connect(&path).unwrap(), PATIENCE);
        c.version();
        c.call_fds(
            Command::DmaMap,
            &dma_map(RW, 0, 0, 0x1000),
            &[guest.as_raw_fd()],
        )
        .assert_ok();
        c.write_u32(0, GpioDevice::REG_OUTPUT, 7);
        assert_eq!(probe.dma_maps().len(), 1);
    }
    assert!(probe.wait_disconnects(1, Duration::from_secs(20)));
    assert!(probe.dma_maps().is_empty(), "maps dropped on disconnect");
    assert_eq!(gpio.last_reset(), Some(ResetReason::LostConnection));
    let mut c = RawEndpoint::new(UnixStream::connect(&path).unwrap(), PATIENCE);
    c.version();
    assert_eq!(c.read_u32(0, GpioDevice::REG_ID), GpioDevice::ID);
    assert_eq!(probe.connections(), 2);
    // Stopping with a client connected closes it and removes the socket.
    handle.stop();
    c.expect_eof();
    assert!(!path.exists());
}

#[test]
fn stop_idle_listener() {
    let (dev, _) = DmaEngine::new();
    let handle = Server::new(ServerConfig::default(), Box::new(dev))
        .listen_temp()
        .unwrap();
    let path = handle.socket_path().unwrap().to_owned();
    assert!(path.exists());
    handle.stop();
    assert!(!path.exists());
}

#[test]
fn irq_masking_modes() {
    use vfio_user_sample_server::{IrqMasking, IRQ_ERR, IRQ_MSI};
    const MASK: u32 = 1 | (1 << 3);
    const UNMASK: u32 = 1 | (1 << 4);
    const EVENTFD_TRIGGER: u32 = (1 << 2) | (1 << 5);
    let set = |flags, index, start, count| words(&[20, flags, index, start, count]);
    let info = |c: &mut RawEndpoint, index| {
        let m = c.call(Command::DeviceGetIrqInfo, &words(&[16, 0, index, 0]));
        m.assert_ok();
        m.u32_at(4)
    };
    for (masking, maskable) in [
        (IrqMasking::Implemented, [true, true, true, false]),
        (IrqMasking::Ignored, [false, false, false, false]),
        (IrqMasking::Rejected, [true, false, false, false]),
    ] {
        let (dev, _gpio) = GpioDevice::new(Default::default()).unwrap();
        let config = ServerConfig {
            irq_masking: masking,
            ..ServerConfig::default()
        };
        let (mut c, s) = serve_pair(config, Box::new(dev));
        let probe = s.probe();
        c.version();
        for (index, maskable) in [IRQ_INTX, IRQ_MSI, IRQ_MSIX, IRQ_ERR]
            .into_iter()
            .zip(maskable)
        {
            let flags = info(&mut c, index);
            assert_eq!(flags & 2 != 0, maskable, "{masking:?} index {index}");
            assert_eq!(flags & 1, 1, "EVENTFD");
        }
        let e = EventFd::new(0).unwrap();
        c.call_fds(
            Command::DeviceSetIrqs,
            &set(EVENTFD_TRIGGER, IRQ_MSIX, 1, 1),
            &[e.as_raw_fd()],
        )
        .assert_ok();
        let m = c.call(Command::DeviceSetIrqs, &set(MASK, IRQ_MSIX, 1, 1));
        match masking {
            IrqMasking::Implemented => {
                m.assert_ok();
                assert_eq!(probe.raise_irq(IRQ_MSIX, 1), Ok(false), "masked");
                assert!(probe.irq_state(IRQ_MSIX)[1].pending);
            }
            IrqMasking::Ignored => {
                m.assert_ok();
                assert_eq!(probe.raise_irq(IRQ_MSIX, 1), Ok(true), "fires anyway");
                assert_eq!(e.read().unwrap(), 1);
                assert!(!probe.irq_state(IRQ_MSIX)[1].masked);
            }
            IrqMasking::Rejected => {
                assert_eq!(m.errno(), EINVAL);
                assert_eq!(
                    c.call(Command::DeviceSetIrqs, &set(UNMASK, IRQ_MSIX, 1, 1))
                        .errno(),
                    EINVAL
                );
                assert_eq!(probe.raise_irq(IRQ_MSIX, 1), Ok(true));
                assert_eq!(e.read().unwrap(), 1);
                // INTx masks as the kernel's does.
                c.call(Command::DeviceSetIrqs, &set(MASK, IRQ_INTX, 0, 1))
                    .assert_ok();
                assert!(probe.irq_state(IRQ_INTX)[0].masked);
            }
        }
    }
}

#[test]
fn intx_disable_bit_stops_the_device_raising_intx() {
    let (dev, _gpio) = GpioDevice::new(Default::default()).unwrap();
    let (mut c, s) = serve_pair(ServerConfig::default(), Box::new(dev));
    let probe = s.probe();
    c.version();
    let e = EventFd::new(0).unwrap();
    c.call_fds(
        Command::DeviceSetIrqs,
        &words(&[20, (1 << 2) | (1 << 5), IRQ_INTX, 0, 1]),
        &[e.as_raw_fd()],
    )
    .assert_ok();
    // Command register (config region 7): Interrupt Disable.
    c.region_write(7, 4, &0x0400u16.to_le_bytes()).assert_ok();
    c.write_u32(0, GpioDevice::REG_IRQ_RAISE, IRQ_INTX << 16);
    assert_eq!(probe.irq_state(IRQ_INTX)[0].signalled, 0);
    c.region_write(7, 4, &0u16.to_le_bytes()).assert_ok();
    c.write_u32(0, GpioDevice::REG_IRQ_RAISE, IRQ_INTX << 16);
    assert_eq!(e.read().unwrap(), 1);
}

#[test]
fn a_paused_server_answers_after_resume() {
    let (dev, _gpio) = GpioDevice::new(Default::default()).unwrap();
    let (mut c, s) = serve_pair(ServerConfig::default(), Box::new(dev));
    let probe = s.probe();
    c.version();
    probe.pause();
    let id = c
        .send_command(Command::DeviceGetInfo, &words(&[16, 0, 0, 0]), &[])
        .unwrap();
    assert!(probe.wait_holding(Duration::from_secs(5)));
    let mut waiting = 0i32;
    // SAFETY: FIONREAD writes one int, through a pointer to a live local, for a valid fd.
    let rc = unsafe { libc::ioctl(c.socket().as_raw_fd(), libc::FIONREAD, &mut waiting) };
    assert_eq!((rc, waiting), (0, 0), "no answer while paused");
    probe.resume();
    let m = c.recv().unwrap();
    assert_eq!(m.header.id, id);
    m.assert_ok();
    // Stopping a paused server does not hang.
    probe.pause();
    c.send_command(Command::DeviceGetInfo, &words(&[16, 0, 0, 0]), &[])
        .unwrap();
    s.stop();
}

#[test]
fn injected_command_failures_count_down() {
    use vfio_user_sample_server::Errno;
    let (dev, _gpio) = GpioDevice::new(Default::default()).unwrap();
    let (mut c, s) = serve_pair(ServerConfig::default(), Box::new(dev));
    c.version();
    s.probe()
        .fail_next(Command::DeviceGetInfo, Errno(libc::EIO), 2);
    let info = words(&[16, 0, 0, 0]);
    for _ in 0..2 {
        assert_eq!(
            c.call(Command::DeviceGetInfo, &info).errno(),
            libc::EIO as u32
        );
    }
    c.call(Command::DeviceGetInfo, &info).assert_ok();
}

#[test]
fn a_burst_is_taken_apart_message_by_message_with_its_fds() {
    // The server reads ahead: one read may hold many messages, the start or the rest of
    // a large one, and fds. Each message must still get exactly its own fds.
    let (mut c, s, _engine) = engine();
    c.version();
    let frame = |id: u16, cmd: Command, payload: &[u8]| {
        let mut m = Header::command(id, cmd, payload.len(), false)
            .unwrap()
            .to_bytes()
            .to_vec();
        m.extend_from_slice(payload);
        m
    };
    let unmapped = |a: u64| dma_unmap(0, a, 0x1000);
    // Hold the server at a first message, so that everything below waits in the socket
    // and its reads take several messages each: a read then holds fd-less messages
    // followed by one that carries fds (the kernel ends a read there).
    let probe = s.probe();
    probe.pause();
    c.send_command(Command::DmaUnmap, &unmapped(0x100000), &[])
        .unwrap();
    assert!(
        probe.wait_holding(Duration::from_secs(20)),
        "server never held"
    );
    // Fd-less messages in one write: unmaps of nothing (ENOENT) and an fd-less map.
    let mut burst = Vec::new();
    for i in 0..50u16 {
        burst.extend(frame(i, Command::DmaUnmap, &unmapped(0x100000)));
    }
    burst.extend(frame(50, Command::DmaMap, &dma_map(RW, 0, 0x40000, 0x1000)));
    std::io::Write::write_all(&mut c.socket(), &burst).unwrap();
    // Then two maps with their own fds, each sent with its message.
    let a = SharedMemory::new("a", 0x1000).unwrap();
    let b = SharedMemory::new("b", 0x2000).unwrap();
    c.send_message(
        &Header::command(51, Command::DmaMap, 32, false).unwrap(),
        &dma_map(RW, 0, 0x10000, 0x1000),
        &[a.as_raw_fd()],
    )
    .unwrap();
    c.send_message(
        &Header::command(52, Command::DmaMap, 32, false).unwrap(),
        &dma_map(RW, 0, 0x20000, 0x2000),
        &[b.as_raw_fd()],
    )
    .unwrap();
    probe.resume();
    // A message larger than one read (and than the socket's buffer: written once the
    // server reads again), between two small ones, in one write: an unmap, a DMA_READ
    // from the client (EINVAL) and another unmap.
    let mut burst = frame(53, Command::DmaUnmap, &unmapped(0x100000));
    burst.extend(frame(54, Command::DmaRead, &vec![0xee; 300 << 10]));
    burst.extend(frame(55, Command::DmaUnmap, &unmapped(0x100000)));
    std::io::Write::write_all(&mut c.socket(), &burst).unwrap();
    assert_eq!(
        c.recv().unwrap().errno(),
        libc::ENOENT as u32,
        "the held message"
    );
    for id in 0..56u16 {
        let m = c.recv().unwrap();
        assert_eq!(m.header.id, id, "replies in order");
        match id {
            50..=52 => m.assert_ok(),
            54 => assert_eq!(m.errno(), EINVAL, "reply {id}"),
            _ => assert_eq!(m.errno(), libc::ENOENT as u32, "reply {id}"),
        }
    }
    let maps = s.probe().dma_maps();
    assert_eq!(maps.len(), 3);
    let mode = |addr: u64| maps.iter().find(|m| m.address == addr).unwrap().mode;
    assert_eq!(mode(0x40000), DmaAccessMode::Message);
    assert_ne!(mode(0x10000), DmaAccessMode::Message);
    assert_ne!(mode(0x20000), DmaAccessMode::Message);
}
