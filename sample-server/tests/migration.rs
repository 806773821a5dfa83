// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Migration v2 and DMA logging of the sample server, driven with hand-built messages.

use std::os::fd::AsRawFd;

use proptest::prelude::*;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT as REPORT,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_START as LOG_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP as LOG_STOP, VFIO_DEVICE_FEATURE_GET as GET,
    VFIO_DEVICE_FEATURE_MIGRATION as MIGRATION, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE as MIG_STATE,
    VFIO_DEVICE_FEATURE_PROBE as PROBE, VFIO_DEVICE_FEATURE_SET as SET, VFIO_MIGRATION_PRE_COPY,
    VFIO_MIGRATION_STOP_COPY,
};
use vfio_user_client::protocol::{Command, DeviceState, Header};
use vfio_user_sample_server::test_support::script::*;
use vfio_user_sample_server::wire::{RawEndpoint, RawMsg};
use vfio_user_sample_server::{
    Device, DmaEngine, DmaEngineHandle, DmaEngineStatus, GpioDevice, GpioHandle, MigrationConfig,
    Server, ServerConfig, ServerHandle, SharedMemory, IRQ_MSIX, PCI_CONFIG_REGION,
};
use vmm_sys_util::eventfd::EventFd;

const RW: u32 = 3;
const ERROR: u32 = DeviceState::Error as u32;
const STOP: u32 = DeviceState::Stop as u32;
const RUNNING: u32 = DeviceState::Running as u32;
const STOP_COPY: u32 = DeviceState::StopCopy as u32;
const RESUMING: u32 = DeviceState::Resuming as u32;
const PRE_COPY: u32 = DeviceState::PreCopy as u32;
const STATES: [u32; 5] = [STOP, RUNNING, STOP_COPY, RESUMING, PRE_COPY];
const PAGE: u64 = 4096;
/// The client's `max_data_xfer_size` (the default: it sends none).
const XFER: u32 = 1 << 20;

/// The server's default configuration with migration and DMA logging.
fn mig() -> ServerConfig {
    ServerConfig {
        migration: Some(MigrationConfig::default()),
        ..ServerConfig::default()
    }
}

fn pgsize() -> u64 {
    MigrationConfig::default().pgsize
}

fn gpio_with(config: ServerConfig) -> (RawEndpoint, ServerHandle, GpioHandle) {
    let (dev, h) = GpioDevice::new(Default::default()).unwrap();
    let (mut c, s) = serve_pair(config, Box::new(dev));
    c.version();
    (c, s, h)
}

fn engine_with(config: ServerConfig) -> (RawEndpoint, ServerHandle, DmaEngineHandle) {
    let (dev, h) = DmaEngine::new();
    let (mut c, s) = serve_pair(config, Box::new(dev));
    c.version();
    (c, s, h)
}

/// DEVICE_FEATURE with `argsz` 8 + the larger of `data` and `reply`.
fn feature(c: &mut RawEndpoint, op: u32, data: &[u8], reply: usize) -> RawMsg {
    let argsz = 8 + data.len().max(reply);
    let mut p = words(&[argsz as u32, op]);
    p.extend_from_slice(data);
    c.call(Command::DeviceFeature, &p)
}

fn set_state(c: &mut RawEndpoint, state: u32) -> RawMsg {
    feature(c, MIG_STATE | SET, &words(&[state, 0]), 8)
}

fn go(c: &mut RawEndpoint, state: u32) {
    let m = set_state(c, state);
    m.assert_ok();
    assert_eq!(
        m.payload,
        words(&[16, MIG_STATE | SET, state, 0]),
        "SET echoes"
    );
}

fn state(c: &mut RawEndpoint) -> u32 {
    let m = feature(c, MIG_STATE | GET, &[], 8);
    m.assert_ok();
    assert_eq!(m.payload.len(), 16);
    assert_eq!((m.u32_at(0), m.u32_at(4)), (16, MIG_STATE | GET));
    m.u32_at(8)
}

fn data_read(c: &mut RawEndpoint, size: u32) -> RawMsg {
    c.call(Command::MigDataRead, &words(&[8 + size, size]))
}

/// Reads data until a reply returns less than asked for.
fn read_all(c: &mut RawEndpoint) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let m = data_read(c, XFER);
        m.assert_ok();
        assert_eq!(m.payload.len(), 8 + XFER as usize, "padded as libvfio-user");
        let size = m.u32_at(4);
        assert_eq!(m.u32_at(0), 8 + size);
        out.extend_from_slice(&m.payload[8..8 + size as usize]);
        if size < XFER {
            return out;
        }
    }
}

fn write_all(c: &mut RawEndpoint, data: &[u8]) {
    for part in data.chunks(100_000) {
        let mut p = words(&[8 + part.len() as u32, part.len() as u32]);
        p.extend_from_slice(part);
        let m = c.call(Command::MigDataWrite, &p);
        m.assert_ok();
        assert!(m.payload.is_empty(), "header-only, as libvfio-user");
    }
}

/// Resumes `data` on the device behind `c`, then runs it.
fn resume(c: &mut RawEndpoint, data: &[u8]) {
    go(c, RESUMING);
    write_all(c, data);
    go(c, STOP);
    go(c, RUNNING);
}

fn log_start(c: &mut RawEndpoint, page: u64) -> RawMsg {
    let mut d = page.to_ne_bytes().to_vec();
    d.extend_from_slice(&words(&[0, 0]));
    feature(c, LOG_START | SET, &d, 0)
}

fn report_with(c: &mut RawEndpoint, iova: u64, length: u64, page: u64, argsz: u32) -> RawMsg {
    let mut p = words(&[argsz, REPORT | GET]);
    for v in [iova, length, page] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    c.call(Command::DeviceFeature, &p)
}

/// The dirty pages of `iova..iova + length` reported (and cleared), as page indexes.
fn report(c: &mut RawEndpoint, iova: u64, length: u64) -> Vec<u64> {
    let bytes = length.div_ceil(PAGE).div_ceil(64) * 8;
    let argsz = 32 + bytes as u32;
    let m = report_with(c, iova, length, PAGE, argsz);
    m.assert_ok();
    assert_eq!(m.payload.len() as u32, argsz, "bitmap sized exactly");
    assert_eq!(m.u32_at(0), argsz);
    assert_eq!(
        (m.u64_at(8), m.u64_at(16), m.u64_at(24)),
        (iova, length, PAGE)
    );
    let mut pages = Vec::new();
    for (w, chunk) in m.payload[32..].chunks(8).enumerate() {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap());
        for bit in 0..64 {
            if word & (1 << bit) != 0 {
                pages.push(w as u64 * 64 + bit);
            }
        }
    }
    pages
}

fn program(c: &mut RawEndpoint, src: u64, dst: u64, len: u64) {
    let mut regs = Vec::new();
    for v in [src, dst, len] {
        regs.extend_from_slice(&v.to_ne_bytes());
    }
    c.region_write(0, DmaEngine::REG_SOURCE, &regs).assert_ok();
}

fn map(c: &mut RawEndpoint, mem: &SharedMemory, base: u64) {
    c.call_fds(
        Command::DmaMap,
        &dma_map(RW, 0, base, mem.size()),
        &[mem.as_raw_fd()],
    )
    .assert_ok();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn features_probe_get_and_refusals() {
    let (mut c, _s, _) = engine_with(mig());
    let m = feature(&mut c, MIGRATION | GET, &[], 8);
    m.assert_ok();
    assert_eq!((m.u32_at(0), m.u32_at(4)), (16, MIGRATION | GET));
    assert_eq!(
        m.u64_at(8),
        u64::from(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY)
    );
    for op in [
        MIGRATION | PROBE | GET,
        MIG_STATE | PROBE | GET | SET,
        LOG_START | PROBE | SET,
        LOG_STOP | PROBE | SET,
        REPORT | PROBE | GET,
        REPORT | PROBE,
    ] {
        let m = feature(&mut c, op, &[], 0);
        m.assert_ok();
        assert_eq!(m.payload, words(&[8, op]), "PROBE echoes {op:#x}");
    }
    for op in [
        MIGRATION | PROBE | SET,
        MIGRATION | SET,
        MIG_STATE | GET | SET,
        MIG_STATE,
        LOG_START | GET,
        REPORT | SET,
        3 | PROBE,
        MIGRATION | GET | (1 << 19),
    ] {
        assert_eq!(feature(&mut c, op, &[], 8).errno(), EINVAL, "{op:#x}");
    }
    // GET with no room for the data.
    assert_eq!(feature(&mut c, MIGRATION | GET, &[], 4).errno(), EINVAL);
    assert_eq!(feature(&mut c, MIG_STATE | GET, &[], 0).errno(), EINVAL);
    assert_eq!(
        feature(&mut c, MIG_STATE | SET, &[2, 0, 0, 0], 0).errno(),
        EINVAL
    );
    assert_eq!(state(&mut c), RUNNING);
}

#[test]
fn every_arc_reaches_its_target() {
    let (mut c, s, _) = gpio_with(mig());
    for from in STATES {
        for to in STATES {
            go(&mut c, from);
            assert_eq!(state(&mut c), from);
            if (from, to) == (STOP_COPY, PRE_COPY) {
                assert_eq!(set_state(&mut c, to).errno(), EINVAL);
                assert_eq!(state(&mut c), STOP_COPY, "unchanged");
            } else {
                go(&mut c, to);
                assert_eq!(state(&mut c), to, "{from} -> {to}");
                assert_eq!(s.probe().migration_state() as u32, to);
            }
            go(&mut c, RUNNING);
        }
    }
}

#[test]
fn illegal_arcs_and_the_error_state() {
    let (mut c, _s, _) = gpio_with(mig());
    for bad in [ERROR, 5, 7, 8, u32::MAX] {
        assert_eq!(set_state(&mut c, bad).errno(), EINVAL, "{bad}");
        assert_eq!(state(&mut c), RUNNING);
    }
    // Data that does not load: the arc fails and the device is in ERROR.
    go(&mut c, RESUMING);
    write_all(&mut c, b"not a device state");
    assert_eq!(set_state(&mut c, STOP).errno(), EINVAL);
    assert_eq!(state(&mut c), ERROR);
    for to in STATES {
        assert_eq!(set_state(&mut c, to).errno(), EINVAL);
    }
    assert_eq!(data_read(&mut c, 16).errno(), EINVAL);
    c.call(Command::DeviceReset, &[]).assert_ok();
    assert_eq!(state(&mut c), RUNNING);

    // MIG_DATA_* in the wrong states and malformed.
    assert_eq!(data_read(&mut c, 16).errno(), EINVAL);
    assert_eq!(
        c.call(Command::MigDataWrite, &words(&[9, 1, 0])).errno(),
        EINVAL
    );
    go(&mut c, STOP_COPY);
    assert_eq!(
        c.call(Command::MigDataRead, &words(&[8, 16])).errno(),
        EINVAL,
        "argsz below 8 + size"
    );
    assert_eq!(data_read(&mut c, XFER + 1).errno(), EINVAL, "over max xfer");
    go(&mut c, RESUMING);
    assert_eq!(
        c.call(Command::MigDataWrite, &words(&[12, 8, 0])).errno(),
        EINVAL,
        "size beyond the data"
    );
    go(&mut c, RUNNING);

    // Without PRE_COPY.
    let config = ServerConfig {
        migration: Some(MigrationConfig {
            pre_copy: false,
            ..MigrationConfig::default()
        }),
        ..ServerConfig::default()
    };
    let (mut c, _s, _) = gpio_with(config);
    let m = feature(&mut c, MIGRATION | GET, &[], 8);
    assert_eq!(m.u64_at(8), u64::from(VFIO_MIGRATION_STOP_COPY));
    assert_eq!(set_state(&mut c, PRE_COPY).errno(), EINVAL);
    assert_eq!(state(&mut c), RUNNING);
}

#[test]
fn a_stopped_device_serves_only_what_libvfio_user_serves() {
    let (mut c, _s, _) = engine_with(mig());
    let guest = SharedMemory::new("guest", 0x1000).unwrap();
    for st in [STOP, STOP_COPY] {
        go(&mut c, st);
        let m = c.call_fds(
            Command::DmaMap,
            &dma_map(RW, 0, 0, 0x1000),
            &[guest.as_raw_fd()],
        );
        assert_eq!(m.errno(), EINVAL);
        assert_eq!(c.call(Command::DeviceReset, &[]).errno(), EINVAL);
        assert_eq!(
            c.call(Command::DeviceGetInfo, &words(&[16, 0, 0, 0]))
                .errno(),
            EINVAL
        );
        c.read_u32(0, DmaEngine::REG_STATUS);
        go(&mut c, RUNNING);
    }
    map(&mut c, &guest, 0);

    let config = ServerConfig {
        migration: Some(MigrationConfig {
            restrict_stopped: false,
            ..MigrationConfig::default()
        }),
        ..ServerConfig::default()
    };
    let (mut c, _s, _) = engine_with(config);
    go(&mut c, STOP);
    map(&mut c, &guest, 0);
}

#[test]
fn gpio_state_moves_with_and_without_pre_copy() {
    for pre_copy_then_write in [None, Some(false), Some(true)] {
        let (mut src, _s, src_gpio) = gpio_with(mig());
        src_gpio.set_input(0x1234_5678);
        src.write_u32(0, GpioDevice::REG_OUTPUT, 0xdead_beef);
        for v in 1..=3 {
            src.write_u32(0, GpioDevice::REG_SEQUENCE, v);
        }
        src.write_u32(0, GpioDevice::REG_SEQUENCE, 7);
        src.write_u32(0, GpioDevice::REG_DOORBELL, 0);
        src.region_write(1, 0x1000, &pattern(5000, 1)).assert_ok();
        src.region_write(2, 0x4100, &pattern(300, 2)).assert_ok();
        src_gpio.bar2().write_at(0x8000, &pattern(100, 3)).unwrap();
        src.region_write(PCI_CONFIG_REGION, 4, &[0x06, 0x04])
            .assert_ok();

        let mut stream = Vec::new();
        if let Some(write_after) = pre_copy_then_write {
            go(&mut src, PRE_COPY);
            stream = read_all(&mut src);
            assert!(stream.len() > 4 << 20, "the scratch RAM goes ahead");
            assert_eq!(data_read(&mut src, 64).u32_at(4), 0, "no more for now");
            if write_after {
                src.region_write(1, 0x3000, &pattern(10, 4)).assert_ok();
            }
        }
        go(&mut src, STOP_COPY);
        let state_part = read_all(&mut src);
        let scratch_again = pre_copy_then_write != Some(false);
        assert_eq!(state_part.len() > 4 << 20, scratch_again);
        stream.extend_from_slice(&state_part);
        go(&mut src, STOP);

        let (mut dst, _d, dst_gpio) = gpio_with(mig());
        resume(&mut dst, &stream);
        assert_eq!(dst.read_u32(0, GpioDevice::REG_INPUT), 0x1234_5678);
        assert_eq!(dst.read_u32(0, GpioDevice::REG_OUTPUT), 0xdead_beef);
        assert_eq!(dst.read_u32(0, GpioDevice::REG_SEQUENCE), 7);
        assert_eq!(dst.read_u32(0, GpioDevice::REG_SEQUENCE_WRITES), 4);
        assert_eq!(dst.read_u32(0, GpioDevice::REG_SEQUENCE_ERRORS), 1);
        assert_eq!(dst.read_u32(0, GpioDevice::REG_DOORBELL), 1);
        assert_eq!(dst_gpio.scratch(0x1000, 5000).unwrap(), pattern(5000, 1));
        let want = if pre_copy_then_write == Some(true) {
            pattern(10, 4)
        } else {
            vec![0; 10]
        };
        assert_eq!(dst_gpio.scratch(0x3000, 10).unwrap(), want);
        let m = dst.region_read(2, 0x4100, 300);
        assert_eq!(&m.payload[16..], &pattern(300, 2)[..]);
        let mut b = vec![0; 100];
        dst_gpio.bar2().read_at(0x8000, &mut b).unwrap();
        assert_eq!(b, pattern(100, 3));
        assert_eq!(dst.read_u32(PCI_CONFIG_REGION, 4) & 0xffff, 0x0406);
        // The sequence carries on.
        dst.write_u32(0, GpioDevice::REG_SEQUENCE, 8);
        assert_eq!(dst_gpio.sequence_errors(), 1);
    }
}

#[test]
fn streams_that_do_not_fit_are_refused() {
    let (mut src, _s, _) = gpio_with(mig());
    go(&mut src, STOP_COPY);
    let gpio_state = read_all(&mut src);
    // A GPIO state on a DMA engine, and a cut stream: ERROR, the device as it was.
    let (mut dst, _d, engine) = engine_with(mig());
    dst.write_u32(0, DmaEngine::REG_BURST, 64);
    go(&mut dst, RESUMING);
    write_all(&mut dst, &gpio_state);
    assert_eq!(set_state(&mut dst, STOP).errno(), EINVAL);
    assert_eq!(state(&mut dst), ERROR);
    dst.call(Command::DeviceReset, &[]).assert_ok();
    let (mut dst, _d, dst_gpio) = gpio_with(mig());
    dst.write_u32(0, GpioDevice::REG_OUTPUT, 5);
    go(&mut dst, RESUMING);
    write_all(&mut dst, &gpio_state[..gpio_state.len() - 1]);
    assert_eq!(set_state(&mut dst, STOP).errno(), EINVAL);
    assert_eq!(dst_gpio.output(), 5);
    let _ = engine;
}

#[test]
fn a_dma_transfer_in_flight_moves_and_completes() {
    let config = mig();
    let (mut src, _s, src_engine) = engine_with(config.clone());
    let base = 0x1_0000_0000u64;
    let src_mem = SharedMemory::new("src-guest", 0x10000).unwrap();
    map(&mut src, &src_mem, base);
    let data = pattern(0x4000, 9);
    src_mem.write_at(0, &data).unwrap();
    log_start(&mut src, pgsize()).assert_ok();
    program(&mut src, base, base + 0x8000, data.len() as u64);
    src.write_u32(0, DmaEngine::REG_BURST, 0x1000);
    src.write_u32(0, DmaEngine::REG_DOORBELL, 1);
    // One burst after each message.
    assert_eq!(src.read_u32(0, DmaEngine::REG_PROGRESS), 0x1000);
    assert_eq!(
        src.read_u32(0, DmaEngine::REG_STATUS),
        DmaEngineStatus::Busy as u32
    );
    go(&mut src, STOP);
    assert_eq!(src_engine.progress(), 0x3000);
    // Stopped: nothing moves however many messages come.
    for _ in 0..5 {
        src.read_u32(0, DmaEngine::REG_PROGRESS);
    }
    src.write_u32(0, DmaEngine::REG_DOORBELL, 1);
    assert_eq!(src_engine.progress(), 0x3000);
    assert_eq!(src_engine.status(), DmaEngineStatus::Busy);
    assert_eq!(
        report(&mut src, base, 0x10000),
        vec![8, 9, 10],
        "the pages the engine wrote"
    );
    go(&mut src, STOP_COPY);
    let stream = read_all(&mut src);
    go(&mut src, STOP);

    // The destination: guest memory copied as a VMM would, interrupts wired, then resumed.
    let (mut dst, _d, dst_engine) = engine_with(config);
    let dst_mem = SharedMemory::new("dst-guest", 0x10000).unwrap();
    let mut all = vec![0; 0x10000];
    src_mem.read_at(0, &mut all).unwrap();
    dst_mem.write_at(0, &all).unwrap();
    map(&mut dst, &dst_mem, base);
    let msix = EventFd::new(0).unwrap();
    dst.call_fds(
        Command::DeviceSetIrqs,
        &words(&[20, (1 << 2) | (1 << 5), IRQ_MSIX, 0, 1]),
        &[msix.as_raw_fd()],
    )
    .assert_ok();
    log_start(&mut dst, pgsize()).assert_ok();
    go(&mut dst, RESUMING);
    write_all(&mut dst, &stream);
    go(&mut dst, STOP);
    assert_eq!(dst_engine.progress(), 0x3000, "loaded, still stopped");
    assert_eq!(dst_engine.status(), DmaEngineStatus::Busy);
    go(&mut dst, RUNNING);
    assert_eq!(
        dst.read_u32(0, DmaEngine::REG_STATUS),
        DmaEngineStatus::Done as u32
    );
    assert_eq!(msix.read().unwrap(), 1);
    assert_eq!(dst_engine.completions(), 1);
    assert_eq!(dst_engine.interrupts(), 1);
    let mut out = vec![0; data.len()];
    dst_mem.read_at(0x8000, &mut out).unwrap();
    assert_eq!(out, data);
    assert_eq!(report(&mut dst, base, 0x10000), vec![11]);
    assert_eq!(src_engine.completions(), 0);
}

#[test]
fn logging_tracks_engine_writes_at_the_page_size() {
    let (mut c, s, _) = engine_with(mig());
    let base = 0x4000_0000u64;
    let mem = SharedMemory::new("guest", 0x40000).unwrap();
    map(&mut c, &mem, base);
    assert_eq!(report_with(&mut c, base, 0x1000, PAGE, 40).errno(), EINVAL);
    assert_eq!(
        log_start(&mut c, 2 * pgsize()).errno(),
        EINVAL,
        "not pgsize"
    );
    log_start(&mut c, pgsize()).assert_ok();
    log_start(&mut c, pgsize()).assert_ok();
    assert!(s.probe().dma_logging());

    // 3 pages and a bit, from the middle of a page.
    program(&mut c, base, base + 0x10800, 0x3000 + 0x10);
    c.write_u32(0, DmaEngine::REG_DOORBELL, 1);
    assert_eq!(report(&mut c, base, 0x40000), vec![0x10, 0x11, 0x12, 0x13]);
    assert_eq!(report(&mut c, base, 0x40000), Vec::<u64>::new(), "cleared");
    // A range that starts part-way: bit 0 is the range's first page.
    c.write_u32(0, DmaEngine::REG_DOORBELL, 1);
    assert_eq!(report(&mut c, base + 0x11000, 0x2000), vec![0, 1]);
    assert_eq!(report(&mut c, base, 0x40000), vec![0x10, 0x13]);
    // Writes by the server's probe count as the device's.
    s.probe().dma_write(base + 0x3f000, &[1]).unwrap();
    assert_eq!(report(&mut c, base, 0x40000), vec![0x3f]);

    // Refusals: wrong page size, misaligned, argsz short, over max_bitmap_size.
    assert_eq!(
        report_with(&mut c, base, 0x40000, 2 * PAGE, 1000).errno(),
        EINVAL
    );
    assert_eq!(
        report_with(&mut c, base + 1, PAGE, PAGE, 40).errno(),
        EINVAL
    );
    assert_eq!(report_with(&mut c, base, PAGE, PAGE, 39).errno(), EINVAL);
    assert_eq!(report_with(&mut c, base, 0, PAGE, 40).errno(), EINVAL);
    let huge = (1u64 << 20) * 8 * PAGE + PAGE;
    assert_eq!(
        report_with(&mut c, 0, huge, PAGE, u32::MAX).errno(),
        EINVAL,
        "bitmap over max_bitmap_size"
    );
    let largest = (1u64 << 20) * 8 * PAGE;
    let m = report_with(&mut c, 0, largest, PAGE, 32 + (1 << 20));
    m.assert_ok();
    assert_eq!(m.payload.len(), 32 + (1 << 20));

    // Stopped: writes are not logged; REPORT is refused.
    feature(&mut c, LOG_STOP | SET, &[], 0).assert_ok();
    assert!(!s.probe().dma_logging());
    c.write_u32(0, DmaEngine::REG_DOORBELL, 1);
    assert_eq!(report_with(&mut c, base, PAGE, PAGE, 40).errno(), EINVAL);
    log_start(&mut c, pgsize()).assert_ok();
    assert_eq!(report(&mut c, base, 0x40000), Vec::<u64>::new());
}

#[test]
fn without_migration_or_logging() {
    let config = ServerConfig {
        migration: None,
        ..ServerConfig::default()
    };
    let (dev, _h) = GpioDevice::new(Default::default()).unwrap();
    let (mut c, _s) = serve_pair(config.clone(), Box::new(dev));
    let m = c.version_with(0, r#"{"capabilities":{"migration":{"pgsize":65536}}}"#);
    m.assert_ok();
    assert!(!String::from_utf8_lossy(&m.payload).contains("migration"));
    for op in [MIGRATION | PROBE | GET, MIGRATION | GET, MIG_STATE | GET] {
        assert_eq!(feature(&mut c, op, &[], 8).errno(), EINVAL);
    }
    assert_eq!(data_read(&mut c, 8).errno(), EINVAL);
    assert_eq!(
        c.call(Command::MigDataWrite, &words(&[9, 1, 0])).errno(),
        EINVAL
    );

    // With migration, a client page size other than ours fails VERSION.
    let (dev, _h) = GpioDevice::new(Default::default()).unwrap();
    let (mut c, _s) = serve_pair(mig(), Box::new(dev));
    let json = format!(
        r#"{{"capabilities":{{"migration":{{"pgsize":{}}}}}}}"#,
        2 * pgsize()
    );
    assert_eq!(c.version_with(0, &json).errno(), EINVAL);
    let (dev, _h) = GpioDevice::new(Default::default()).unwrap();
    let (mut c, _s) = serve_pair(mig(), Box::new(dev));
    let json = format!(
        r#"{{"capabilities":{{"migration":{{"pgsize":{},"max_bitmap_size":4096}}}}}}"#,
        pgsize()
    );
    let m = c.version_with(0, &json);
    m.assert_ok();
    let text = String::from_utf8_lossy(&m.payload[4..m.payload.len() - 1]).to_string();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["capabilities"]["migration"]["pgsize"], pgsize());
    assert_eq!(v["capabilities"]["migration"]["max_bitmap_size"], 1 << 20);

    // Migration without DMA logging.
    let config = ServerConfig {
        migration: Some(MigrationConfig {
            dma_logging: false,
            ..MigrationConfig::default()
        }),
        ..ServerConfig::default()
    };
    let (mut c, _s, _) = engine_with(config);
    feature(&mut c, MIGRATION | GET, &[], 8).assert_ok();
    for op in [
        LOG_START | PROBE | SET,
        LOG_STOP | SET,
        REPORT | PROBE | GET,
    ] {
        assert_eq!(feature(&mut c, op, &[], 24).errno(), EINVAL, "{op:#x}");
    }
    assert_eq!(log_start(&mut c, pgsize()).errno(), EINVAL);

    // A device that cannot migrate gets none, whatever the configuration.
    struct Fixed;
    impl Device for Fixed {
        fn info(&self) -> vfio_user_sample_server::DeviceInfo {
            vfio_user_sample_server::DeviceInfo {
                flags: 0,
                num_regions: 0,
                num_irqs: 0,
            }
        }
        fn region(&self, _: u32) -> Option<vfio_user_sample_server::RegionSpec> {
            None
        }
        fn irq_count(&self, _: u32) -> u32 {
            0
        }
        fn region_read(
            &mut self,
            _: &mut vfio_user_sample_server::DeviceContext<'_>,
            _: u32,
            _: u64,
            _: &mut [u8],
        ) -> Result<(), vfio_user_sample_server::Errno> {
            Ok(())
        }
        fn region_write(
            &mut self,
            _: &mut vfio_user_sample_server::DeviceContext<'_>,
            _: u32,
            _: u64,
            _: &[u8],
        ) -> Result<(), vfio_user_sample_server::Errno> {
            Ok(())
        }
        fn reset(
            &mut self,
            _: vfio_user_sample_server::ResetReason,
        ) -> Result<(), vfio_user_sample_server::Errno> {
            Ok(())
        }
    }
    let (mut c, _s) = serve_pair(mig(), Box::new(Fixed));
    let m = c.version();
    assert!(!String::from_utf8_lossy(&m.payload).contains("migration"));
    assert_eq!(feature(&mut c, MIGRATION | GET, &[], 8).errno(), EINVAL);
}

#[test]
fn spec_shaped_data_replies_and_partial_reads() {
    let config = ServerConfig {
        migration: Some(MigrationConfig {
            pad_data_reads: false,
            ..MigrationConfig::default()
        }),
        ..ServerConfig::default()
    };
    let (mut c, _s, _) = engine_with(config);
    go(&mut c, STOP_COPY);
    let mut stream = Vec::new();
    loop {
        let m = data_read(&mut c, 10);
        m.assert_ok();
        let size = m.u32_at(4);
        assert_eq!(m.payload.len(), 8 + size as usize, "exact");
        stream.extend_from_slice(&m.payload[8..]);
        if size == 0 {
            break;
        }
    }
    go(&mut c, STOP);
    let (mut dst, _d, _) = engine_with(mig());
    resume(&mut dst, &stream);
    assert_eq!(state(&mut dst), RUNNING);
}

/// Answers the server's DMA_READ/DMA_WRITE from `mem` (guest address `base`) until the reply
/// with `id` arrives, which it returns.
fn serve_dma(c: &mut RawEndpoint, mem: &mut [u8], base: u64, id: u16) -> RawMsg {
    loop {
        let m = c.recv().unwrap();
        if m.header.is_reply() {
            assert_eq!(m.header.id, id);
            return m;
        }
        let at = (m.u64_at(0) - base) as usize;
        let count = m.u64_at(8) as usize;
        let mut payload = m.payload[..16].to_vec();
        match m.header.command {
            11 => payload.extend_from_slice(&mem[at..at + count]),
            12 => mem[at..at + count].copy_from_slice(&m.payload[16..]),
            other => panic!("unexpected command {other}"),
        }
        let h = Header::reply(&m.header, payload.len()).unwrap();
        c.send_message(&h, &payload, &[]).unwrap();
    }
}

#[test]
fn logging_sees_writes_through_dma_messages() {
    let (dev, _h) = DmaEngine::new();
    let (mut c, _s) = serve_pair(mig(), Box::new(dev));
    c.version_with(0, r#"{"capabilities":{"max_data_xfer_size":4096}}"#)
        .assert_ok();
    let base = 0x10_0000u64;
    c.call(Command::DmaMap, &dma_map(RW, 0, base, 0x10000))
        .assert_ok();
    let mut mem = pattern(0x10000, 5);
    log_start(&mut c, pgsize()).assert_ok();
    program(&mut c, base + 0x100, base + 0x8000, 0x2000);
    let doorbell = access(0, DmaEngine::REG_DOORBELL, 4, &1u32.to_ne_bytes());
    let id = c
        .send_command(Command::RegionWrite, &doorbell, &[])
        .unwrap();
    serve_dma(&mut c, &mut mem, base, id).assert_ok();
    assert_eq!(&mem[0x8000..0xa000], &pattern(0x10000, 5)[0x100..0x2100]);
    assert_eq!(report(&mut c, base, 0x10000), vec![8, 9]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the engine copies, paced or not, the pages reported are exactly the pages
    /// it wrote while logging was on (a superset is all a VMM needs; this log is exact).
    #[test]
    fn reported_pages_are_the_pages_written(
        copies in proptest::collection::vec(
            (0u64..0x20000, 0u64..0x20000, 1u64..0x6000, 0u32..3),
            1..5,
        ),
    ) {
        let (mut c, _s, _) = engine_with(mig());
        let base = 0x8000_0000u64;
        let mem = SharedMemory::new("guest", 0x28000).unwrap();
        map(&mut c, &mem, base);
        log_start(&mut c, pgsize()).assert_ok();
        let mut written = std::collections::BTreeSet::new();
        for (src, dst, len, burst) in copies {
            program(&mut c, base + src, base + dst, len);
            c.write_u32(0, DmaEngine::REG_BURST, burst * 0x1000);
            c.write_u32(0, DmaEngine::REG_DOORBELL, 1);
            while c.read_u32(0, DmaEngine::REG_STATUS) == DmaEngineStatus::Busy as u32 {}
            prop_assert_eq!(
                c.read_u32(0, DmaEngine::REG_STATUS),
                DmaEngineStatus::Done as u32
            );
            written.extend(dst / PAGE..=(dst + len - 1) / PAGE);
        }
        let reported = report(&mut c, base, 0x28000);
        prop_assert_eq!(reported, written.into_iter().collect::<Vec<_>>());
    }
}

#[test]
fn a_new_client_finds_the_device_running_and_not_logging() {
    let (dev, engine) = DmaEngine::new();
    let server = Server::new(mig(), Box::new(dev)).listen_temp().unwrap();
    let path = server.socket_path().unwrap().to_path_buf();
    let mut c = RawEndpoint::connect(&path, PATIENCE).unwrap();
    c.version();
    log_start(&mut c, pgsize()).assert_ok();
    c.write_u32(0, DmaEngine::REG_BURST, 0x1000);
    go(&mut c, PRE_COPY);
    assert_eq!(data_read(&mut c, 64).u32_at(4), 0, "no pre-copy data");
    go(&mut c, STOP);
    c.write_u32(0, DmaEngine::REG_DOORBELL, 1);
    assert_eq!(engine.status(), DmaEngineStatus::Busy);
    drop(c);
    assert!(server.probe().wait_disconnects(1, PATIENCE));
    assert_eq!(server.probe().migration_state(), DeviceState::Running);
    assert!(!server.probe().dma_logging());
    assert_eq!(
        engine.status(),
        DmaEngineStatus::Idle,
        "reset on disconnect"
    );
    let mut c = RawEndpoint::connect(&path, PATIENCE).unwrap();
    c.version();
    assert_eq!(state(&mut c), RUNNING);
    assert_eq!(report_with(&mut c, 0, PAGE, PAGE, 40).errno(), EINVAL);
}
