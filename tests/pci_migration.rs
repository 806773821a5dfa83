// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `VfioUserPciDevice::save` / `restore` between two sample servers: the GPIO's registers
//! and the DMA engine with a copy in flight move (with and without the twin socket), and
//! MSI-X works on the destination; dirty logging over the device's own mapper; devices
//! that cannot migrate (the sample server without migration, the crates.io `vfio_user`
//! server) are unsupported (`is_unsupported`) with nothing written; corrupt, truncated and
//! oversized containers are typed errors. A saved source detaches cleanly (no SET_IRQS or
//! DMA_UNMAP to a stopped device) and refuses a reset; restored or resumed, it detaches in
//! full.

use std::sync::{Arc, Mutex};

use vfio_user_client::migration::{self, DeviceState, Migration};
use vfio_user_client::pci::{
    BarInfo, BarKind, BarPlacement, Error as PciError, InterruptKind, PciConfig,
};
use vfio_user_client::protocol::Command;
use vfio_user_client::{AttachOptions, ConnectionCause, VfioUserPciDevice};
use vfio_user_sample_server::test_support::guest::{guest_memory, pattern};
use vfio_user_sample_server::test_support::pci::{
    cfg_read, cfg_write, find_cap, fired, quiet, Irqs,
};
use vfio_user_sample_server::test_support::rust_vmm::{self, RustVmmServer};
use vfio_user_sample_server::{
    Device, DmaEngine, DmaEngineStatus, GpioDevice, MigrationConfig, Probe, Server, ServerConfig,
    ServerHandle,
};
use vm_device::bus::MmioAddress;
use vm_device::MutDeviceMmio;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_BASE: u64 = 0xe000_0000;
const RAM: usize = 1 << 20;

fn migrating() -> ServerConfig {
    ServerConfig {
        migration: Some(MigrationConfig::default()),
        ..ServerConfig::default()
    }
}

/// Memory BARs from `MEM_BASE` up, I/O BARs from 0xc000 up, each aligned to its size
/// (so BAR 0, memory, is at `MEM_BASE`).
fn options(twin: bool) -> AttachOptions {
    let next = Mutex::new((MEM_BASE, 0xc000u64));
    let mut o = AttachOptions {
        bars: BarPlacement::Allocator(Arc::new(move |b: &BarInfo| {
            let mut next = next.lock().unwrap();
            let at = match b.kind {
                BarKind::Io => &mut next.1,
                _ => &mut next.0,
            };
            let base = at.next_multiple_of(b.size);
            *at = base + b.size;
            Some(base)
        })),
        ..AttachOptions::default()
    };
    o.connect.offer.twin_socket = twin;
    o
}

struct Side {
    dev: VfioUserPciDevice,
    irqs: Arc<Irqs>,
    probe: Probe,
    _server: ServerHandle,
}

fn side(
    config: ServerConfig,
    device: Box<dyn Device>,
    mem: &Arc<GuestMemoryMmap>,
    twin: bool,
) -> Side {
    let server = Server::new(config, device);
    let probe = server.probe();
    let server = server.listen_temp().unwrap();
    let irqs = Irqs::new();
    let dev = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        mem.clone(),
        irqs.clone(),
        &options(twin),
    )
    .unwrap();
    Side {
        dev,
        irqs,
        probe,
        _server: server,
    }
}

fn gpio(config: ServerConfig, mem: &Arc<GuestMemoryMmap>, twin: bool) -> Side {
    side(
        config,
        Box::new(GpioDevice::new(Default::default()).unwrap().0),
        mem,
        twin,
    )
}

fn engine(config: ServerConfig, mem: &Arc<GuestMemoryMmap>, twin: bool) -> Side {
    side(config, Box::new(DmaEngine::new().0), mem, twin)
}

fn r32(dev: &mut VfioUserPciDevice, reg: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.mmio_read(MmioAddress(MEM_BASE), reg, &mut b);
    u32::from_le_bytes(b)
}

fn w32(dev: &mut VfioUserPciDevice, reg: u64, v: u32) {
    dev.mmio_write(MmioAddress(MEM_BASE), reg, &v.to_le_bytes());
}

/// The guest's driver of the engine: decoding and bus mastering on, MSI-X vector 0
/// programmed, MSI-X on.
fn program_engine(dev: &mut VfioUserPciDevice) {
    cfg_write(dev, 0x04, &0x0007u16.to_le_bytes());
    for (at, v) in [(0, 0xfee0_0000u32), (4, 0), (8, 0x40), (12, 0)] {
        w32(dev, DmaEngine::MSIX_TABLE + at, v);
    }
    let cap = find_cap(dev, 0x11).unwrap();
    cfg_write(dev, cap + 3, &[0x80]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msix));
}

/// Rings a copy of `len` bytes from `src` to `dst`.
fn ring(dev: &mut VfioUserPciDevice, src: u64, dst: u64, len: u32) {
    w32(dev, DmaEngine::REG_SOURCE, src as u32);
    w32(dev, DmaEngine::REG_SOURCE + 4, 0);
    w32(dev, DmaEngine::REG_DESTINATION, dst as u32);
    w32(dev, DmaEngine::REG_DESTINATION + 4, 0);
    w32(dev, DmaEngine::REG_LENGTH, len);
    w32(dev, DmaEngine::REG_LENGTH + 4, 0);
    w32(dev, DmaEngine::REG_DOORBELL, 1);
}

/// Reads the status until the copy is done (each read is a message, which paces a burst).
fn wait_done(dev: &mut VfioUserPciDevice) {
    for _ in 0..10_000 {
        match r32(dev, DmaEngine::REG_STATUS) {
            s if s == DmaEngineStatus::Busy as u32 => continue,
            s => {
                assert_eq!(s, DmaEngineStatus::Done as u32);
                return;
            }
        }
    }
    panic!("the copy never completed");
}

fn gpio_round_trip(twin: bool) {
    let mem = guest_memory(RAM);
    let mut a = gpio(migrating(), &mem, twin);
    cfg_write(&mut a.dev, 0x04, &0x0002u16.to_le_bytes());
    w32(&mut a.dev, GpioDevice::REG_OUTPUT, 0x1234_5678);
    assert_eq!(r32(&mut a.dev, GpioDevice::REG_OUTPUT), 0x1234_5678);
    let mut saved = Vec::new();
    let n = a.dev.save(&mut saved).unwrap();
    assert!(n > 0);
    assert_eq!(&saved[..8], &VfioUserPciDevice::SNAPSHOT_MAGIC);
    assert_eq!(a.probe.migration_state(), DeviceState::Stop);

    let mut b = gpio(migrating(), &mem, twin);
    assert_ne!(r32(&mut b.dev, GpioDevice::REG_OUTPUT), 0x1234_5678);
    // Trailing bytes after the container are the VMM's, not read.
    saved.extend_from_slice(b"VMM state");
    let mut input = &saved[..];
    assert_eq!(b.dev.restore(&mut input).unwrap(), n);
    assert_eq!(input, b"VMM state");
    assert_eq!(b.probe.migration_state(), DeviceState::Running);
    assert_eq!(r32(&mut b.dev, GpioDevice::REG_OUTPUT), 0x1234_5678);
    assert_eq!(cfg_read(&mut b.dev, 0x04, 2) & 0x2, 0x2, "memory decoding");
    assert_eq!(b.dev.bars(), a.dev.bars());
    assert_eq!(b.dev.pci_state(), a.dev.pci_state());
    // The source stays stopped, and detaches cleanly.
    a.dev.detach().unwrap();
    b.dev.detach().unwrap();
}

#[test]
fn a_gpio_saves_and_restores_onto_another_server() {
    gpio_round_trip(false);
}

#[test]
fn a_gpio_saves_and_restores_onto_another_server_twin_socket() {
    gpio_round_trip(true);
}

/// The engine is stopped mid-copy, moved, and finishes the copy on the destination, whose
/// MSI-X vector 0 fires.
fn engine_round_trip(twin: bool) {
    let mem = guest_memory(RAM);
    let data = pattern(4096, 7);
    mem.write_slice(&data, GuestAddress(0x1000)).unwrap();
    let mut a = engine(migrating(), &mem, twin);
    program_engine(&mut a.dev);
    w32(&mut a.dev, DmaEngine::REG_BURST, 256);
    ring(&mut a.dev, 0x1000, 0x8000, 4096);
    assert_eq!(
        r32(&mut a.dev, DmaEngine::REG_STATUS),
        DmaEngineStatus::Busy as u32
    );
    let mut saved = Vec::new();
    a.dev.save(&mut saved).unwrap();
    let progress = || {
        let mut out = vec![0u8; 4096];
        mem.read_slice(&mut out, GuestAddress(0x8000)).unwrap();
        out.iter().zip(&data).take_while(|(a, b)| a == b).count()
    };
    let moved_at = progress();
    assert!(moved_at < 4096, "the copy was in flight when saved");
    assert!(quiet(&a.irqs.fd(InterruptKind::Msix, 0)));

    let mut b = engine(migrating(), &mem, twin);
    b.dev.restore(&saved[..]).unwrap();
    assert_eq!(b.dev.interrupt_mode(), Some(InterruptKind::Msix));
    wait_done(&mut b.dev);
    assert_eq!(progress(), 4096, "the copy finished on the destination");
    assert!(fired(&b.irqs.fd(InterruptKind::Msix, 0)), "MSI-X on B");
    // And the destination keeps working: another copy, another interrupt.
    w32(&mut b.dev, DmaEngine::REG_BURST, 0);
    ring(&mut b.dev, 0x1000, 0x20000, 512);
    wait_done(&mut b.dev);
    let mut out = vec![0u8; 512];
    mem.read_slice(&mut out, GuestAddress(0x20000)).unwrap();
    assert_eq!(out, data[..512]);
    assert!(fired(&b.irqs.fd(InterruptKind::Msix, 0)));
    // The source stays stopped, and detaches cleanly.
    a.dev.detach().unwrap();
    b.dev.detach().unwrap();
}

#[test]
fn a_dma_engine_moves_mid_copy_and_interrupts_on_the_destination() {
    engine_round_trip(false);
}

#[test]
fn a_dma_engine_moves_mid_copy_twin_socket() {
    engine_round_trip(true);
}

/// The commands the server received since it had received `since` in all (the server
/// records them before it answers, so a returned request is in).
fn commands_since(probe: &Probe, since: u64) -> Vec<Command> {
    let recent = probe.recent_commands();
    let new = usize::try_from(probe.commands() - since).unwrap();
    assert!(new <= recent.len(), "more commands than the probe keeps");
    recent[recent.len() - new..].to_vec()
}

/// Whether detach undid the server's side: SET_IRQS and DMA_UNMAP.
fn server_side_teardown(commands: &[Command]) -> (bool, bool) {
    (
        commands.contains(&Command::DeviceSetIrqs),
        commands.contains(&Command::DmaUnmap),
    )
}

/// Detaches `a`'s device, which the server runs: SET_IRQS and DMA_UNMAP reach the server,
/// and the VMM's MSI-X routing is undone.
fn detach_with_the_server_side_teardown(a: Side) {
    let since = a.probe.commands();
    a.dev.detach().unwrap();
    let sent = commands_since(&a.probe, since);
    assert_eq!(server_side_teardown(&sent), (true, true), "{sent:?}");
    assert_eq!(*a.irqs.disabled.lock().unwrap(), [InterruptKind::Msix]);
}

/// An engine with guest memory mapped and MSI-X on, saved: left in STOP.
fn saved_engine(mem: &Arc<GuestMemoryMmap>) -> (Side, Vec<u8>) {
    let mut a = engine(migrating(), mem, false);
    program_engine(&mut a.dev);
    assert!(a.probe.dma_map_count() > 0);
    let mut saved = Vec::new();
    a.dev.save(&mut saved).unwrap();
    assert_eq!(a.probe.migration_state(), DeviceState::Stop);
    a.irqs.disabled.lock().unwrap().clear();
    (a, saved)
}

/// A saved source detaches without SET_IRQS or DMA_UNMAP (a stopped device refuses
/// them), is not resumed, undoes the VMM's side, and the server drops its side when the
/// connection closes.
#[test]
fn a_saved_device_detaches_leaving_the_server_alone() {
    let mem = guest_memory(RAM);
    let (a, _) = saved_engine(&mem);
    let since = a.probe.commands();
    a.dev.detach().unwrap();
    // Only the state asked (Migration::new: PROBE, GET of MIGRATION and of
    // MIG_DEVICE_STATE): no SET_IRQS, no DMA_UNMAP, no SET of the state.
    let sent = commands_since(&a.probe, since);
    assert_eq!(sent, [Command::DeviceFeature; 3]);
    assert_eq!(*a.irqs.disabled.lock().unwrap(), [InterruptKind::Msix]);
    assert!(a
        .probe
        .wait_disconnects(1, std::time::Duration::from_secs(10)));
    assert_eq!(a.probe.dma_map_count(), 0, "dropped on disconnect");
}

/// A saved device's reset is refused before anything reaches the server.
#[test]
fn a_saved_device_refuses_a_reset() {
    let mem = guest_memory(RAM);
    let (mut a, _) = saved_engine(&mem);
    let since = a.probe.commands();
    assert!(matches!(a.dev.reset(), Err(PciError::Saved)));
    let sent = commands_since(&a.probe, since);
    assert!(!sent.contains(&Command::DeviceReset), "{sent:?}");
    assert_eq!(server_side_teardown(&sent), (false, false), "{sent:?}");
    assert_eq!(a.probe.migration_state(), DeviceState::Stop);
    assert!(a.irqs.disabled.lock().unwrap().is_empty());
    a.dev.detach().unwrap();
}

/// Saved, then restored onto itself (a snapshot the VM goes on from): RUNNING again, so
/// detach and reset do their whole work.
#[test]
fn a_saved_then_restored_device_detaches_with_the_server_side_teardown() {
    let mem = guest_memory(RAM);
    let (mut a, saved) = saved_engine(&mem);
    a.dev.restore(&saved[..]).unwrap();
    assert_eq!(a.probe.migration_state(), DeviceState::Running);
    a.dev.reset().unwrap();
    program_engine(&mut a.dev);
    a.irqs.disabled.lock().unwrap().clear();
    detach_with_the_server_side_teardown(a);
}

/// Saved, then taken back to RUNNING through the VMM's own handle (the VM stays on the
/// source after all): detach asks the server and does its whole work.
#[test]
fn a_saved_device_resumed_by_the_vmm_detaches_with_the_server_side_teardown() {
    let mem = guest_memory(RAM);
    let (a, _) = saved_engine(&mem);
    {
        let device = a.dev.device();
        let mut migration = Migration::new(&device).unwrap();
        migration.set_state(DeviceState::Running).unwrap();
    }
    detach_with_the_server_side_teardown(a);
}

/// A live migration's pieces: pre-copy with dirty logging over the device's own mapper,
/// then `save_with` / `restore_with` on the VMM's handles.
#[test]
fn pre_copy_and_dirty_logging_through_the_pci_device() {
    let mem = guest_memory(RAM);
    mem.write_slice(&pattern(8192, 1), GuestAddress(0x1000))
        .unwrap();
    let mut a = engine(migrating(), &mem, false);
    let mut b = engine(migrating(), &mem, false);
    program_engine(&mut a.dev);
    let (da, db) = (a.dev.device(), b.dev.device());
    let mut out = Migration::new(&da).unwrap();
    let mut into = Migration::new(&db).unwrap();
    // A handle of another device is refused.
    assert!(matches!(
        b.dev.start_dirty_logging(&mut out),
        Err(PciError::ForeignMigration)
    ));
    a.dev.start_dirty_logging(&mut out).unwrap();
    out.set_state(DeviceState::PreCopy).unwrap();
    into.set_state(DeviceState::Resuming).unwrap();
    let mut round = Vec::new();
    std::io::Read::read_to_end(&mut out.reader().unwrap(), &mut round).unwrap();
    std::io::Write::write_all(&mut into.writer().unwrap(), &round).unwrap();
    ring(&mut a.dev, 0x1000, 0x40000, 8192);
    wait_done(&mut a.dev);
    let dirty = out.dirty_report().unwrap();
    for page in [0x40000, 0x41000] {
        assert!(dirty.is_dirty(page), "{page:#x} dirty");
    }
    assert!(!dirty.is_dirty(0x80000));
    let mut saved = Vec::new();
    a.dev.save_with(&mut out, &mut saved).unwrap();
    out.stop_dirty_logging().unwrap();
    b.dev.restore_with(&mut into, &saved[..]).unwrap();
    assert_eq!(into.state(), DeviceState::Running);
    assert_eq!(r32(&mut b.dev, DmaEngine::REG_COMPLETIONS), 1);
    ring(&mut b.dev, 0x1000, 0x60000, 64);
    wait_done(&mut b.dev);
    assert!(fired(&b.irqs.fd(InterruptKind::Msix, 0)));
}

/// The GPIO's pre-copy data (its scratch RAM) moves in rounds before the stop.
#[test]
fn a_gpio_moves_with_pre_copy_rounds() {
    let mem = guest_memory(RAM);
    let mut a = gpio(migrating(), &mem, true);
    let mut b = gpio(migrating(), &mem, true);
    cfg_write(&mut a.dev, 0x04, &0x0002u16.to_le_bytes());
    w32(&mut a.dev, GpioDevice::REG_OUTPUT, 0xfeed);
    let (da, db) = (a.dev.device(), b.dev.device());
    let mut out = Migration::new(&da).unwrap();
    let mut into = Migration::new(&db).unwrap();
    assert!(out.can_reach(DeviceState::PreCopy));
    into.set_state(DeviceState::Resuming).unwrap();
    out.set_state(DeviceState::PreCopy).unwrap();
    let mut round = Vec::new();
    std::io::Read::read_to_end(&mut out.reader().unwrap(), &mut round).unwrap();
    assert!(!round.is_empty(), "pre-copy data");
    std::io::Write::write_all(&mut into.writer().unwrap(), &round).unwrap();
    // The guest keeps running between rounds.
    w32(&mut a.dev, GpioDevice::REG_OUTPUT, 0xbeef);
    let mut saved = Vec::new();
    let at_stop = a.dev.save_with(&mut out, &mut saved).unwrap();
    assert_eq!(out.state(), DeviceState::Stop);
    assert_eq!(b.dev.restore_with(&mut into, &saved[..]).unwrap(), at_stop);
    assert_eq!(into.bytes_written(), round.len() as u64 + at_stop);
    assert_eq!(r32(&mut b.dev, GpioDevice::REG_OUTPUT), 0xbeef);
    // A restore with the source's handle is refused.
    assert!(matches!(
        b.dev.restore_with(&mut out, &saved[..]),
        Err(PciError::ForeignMigration)
    ));
}

#[test]
fn a_server_without_migration_is_unsupported_and_nothing_is_written() {
    let mem = guest_memory(RAM);
    let mut a = gpio(ServerConfig::default(), &mem, false);
    cfg_write(&mut a.dev, 0x04, &0x0002u16.to_le_bytes());
    let mut saved = Vec::new();
    let e = a.dev.save(&mut saved).unwrap_err();
    assert!(e.is_unsupported(), "{e:?}");
    assert!(!e.is_disconnected());
    assert!(saved.is_empty());
    assert_eq!(r32(&mut a.dev, GpioDevice::REG_ID), GpioDevice::ID);
    // Nor can it be restored into.
    let src = gpio(migrating(), &mem, false);
    src.dev.save(&mut saved).unwrap();
    let e = a.dev.restore(&saved[..]).unwrap_err();
    assert!(e.is_unsupported(), "{e:?}");
}

/// The crates.io `vfio_user` server knows no DEVICE_FEATURE: a save is `Unsupported`, with
/// nothing written, and the connection stays in step.
#[test]
fn the_crates_io_server_is_unsupported_cleanly() {
    let server = RustVmmServer::start(false);
    let mut dev = VfioUserPciDevice::attach(
        &server.path,
        guest_memory(RAM),
        Irqs::new(),
        &options(false),
    )
    .unwrap();
    cfg_write(&mut dev, 0x04, &0x0002u16.to_le_bytes());
    for value in [0x600d, 0x600e] {
        let mut saved = Vec::new();
        let e = dev.save(&mut saved).unwrap_err();
        assert!(
            matches!(
                e,
                PciError::Migration(migration::Error::NoMigrationFeature(_))
            ),
            "{e:?}"
        );
        assert!(e.is_unsupported() && !e.is_disconnected());
        assert!(saved.is_empty());
        // The connection stays in step.
        assert_eq!(r32(&mut dev, rust_vmm::REG_ID), rust_vmm::ID);
        w32(&mut dev, rust_vmm::REG_OUTPUT, value);
        assert_eq!(r32(&mut dev, rust_vmm::REG_OUTPUT), value);
    }
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
    dev.detach().unwrap();
    server.finish().unwrap();
}

/// Damaged container bytes, and the error they must give.
type Case = (Vec<u8>, fn(&PciError) -> bool);

/// A saved GPIO, and a fresh destination for each damaged copy of it.
#[test]
fn corrupt_truncated_and_oversized_containers_are_typed_errors() {
    let mem = guest_memory(RAM);
    let mut a = gpio(migrating(), &mem, false);
    cfg_write(&mut a.dev, 0x04, &0x0002u16.to_le_bytes());
    w32(&mut a.dev, GpioDevice::REG_OUTPUT, 0x55);
    let mut saved = Vec::new();
    a.dev.save(&mut saved).unwrap();
    let state_len = u32::from_le_bytes(saved[16..20].try_into().unwrap()) as usize;
    let data_at = 20 + state_len;
    let mut b = gpio(migrating(), &mem, false);

    // Refused before anything is sent: the destination stays RUNNING.
    let head_cases: Vec<Case> = vec![
        (b"garbage!".to_vec(), |e| {
            matches!(e, PciError::SnapshotMagic(_))
        }),
        (saved[..3].to_vec(), |e| {
            matches!(e, PciError::SnapshotTruncated { what: "magic" })
        }),
        (saved[..data_at - 1].to_vec(), |e| {
            matches!(e, PciError::SnapshotTruncated { what: "PCI state" })
        }),
        (
            {
                let mut s = saved.clone();
                s[8] = 9;
                s
            },
            |e| matches!(e, PciError::SnapshotVersion { found: 9, .. }),
        ),
        (
            {
                let mut s = saved.clone();
                s[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
                s
            },
            |e| matches!(e, PciError::SnapshotTooLong { .. }),
        ),
        (
            {
                let mut s = saved.clone();
                s[20] = b'[';
                s
            },
            |e| matches!(e, PciError::SnapshotState(_)),
        ),
    ];
    for (bytes, ok) in head_cases {
        let e = b.dev.restore(&bytes[..]).unwrap_err();
        assert!(ok(&e), "{e:?}");
        assert_eq!(b.probe.migration_state(), DeviceState::Running);
    }
    // Another device's state: refused before anything is sent.
    let mut c = engine(migrating(), &mem, false);
    let e = c.dev.restore(&saved[..]).unwrap_err();
    assert!(matches!(e, PciError::DifferentDevice { .. }), "{e:?}");
    assert_eq!(c.probe.migration_state(), DeviceState::Running);

    // Damage inside the device data: found while loading.
    let data_cases: Vec<Case> = vec![
        (saved[..data_at + 2].to_vec(), |e| {
            matches!(e, PciError::SnapshotTruncated { .. })
        }),
        (saved[..saved.len() - 3].to_vec(), |e| {
            matches!(e, PciError::SnapshotTruncated { what: "trailer" })
        }),
        (
            {
                let mut s = saved[..data_at].to_vec();
                s.extend_from_slice(&(VfioUserPciDevice::SNAPSHOT_MAX_CHUNK_LEN + 1).to_le_bytes());
                s
            },
            |e| matches!(e, PciError::SnapshotTooLong { .. }),
        ),
        (
            {
                let mut s = saved.clone();
                let at = s.len() - 8;
                s[at] ^= 0x80;
                s
            },
            |e| matches!(e, PciError::SnapshotDataLength { .. }),
        ),
    ];
    for (bytes, ok) in data_cases {
        let mut d = gpio(migrating(), &mem, false);
        let e = d.dev.restore(&bytes[..]).unwrap_err();
        assert!(ok(&e), "{e:?}");
        d.dev.detach().unwrap();
    }
    // After all that, the intact container still restores.
    b.dev.restore(&saved[..]).unwrap();
    assert_eq!(r32(&mut b.dev, GpioDevice::REG_OUTPUT), 0x55);
}
