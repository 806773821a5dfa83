// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `VfioUserPciDevice` against the sample server (GPIO-like device and DMA engine) and the
//! crates.io `vfio_user` server: config space, BARs, ROM, MSI-X, MSI, INTx, mode switches,
//! hot-plug, and a server that dies.

#[path = "pci_cases/bars.rs"]
mod bars;
#[path = "pci_cases/event_loop.rs"]
mod event_loop;
#[path = "pci_cases/hostile.rs"]
mod hostile;
#[path = "pci_cases/interrupts.rs"]
mod interrupts;
#[path = "pci_cases/masking.rs"]
mod masking;
#[path = "common/vmm_loop.rs"]
mod vmm_loop;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread;
use std::time::Duration;

use vfio_bindings::bindings::vfio::VFIO_PCI_INTX_IRQ_INDEX;
use vfio_user_client::device::IrqAction;
use vfio_user_client::pci::{
    AttachOptions, BarInfo, BarKind, BarPlacement, BarReprogramming, InterruptKind, MsiMessage,
    PciConfig, VfioUserPciDevice,
};
use vfio_user_client::ConnectionCause;
use vfio_user_sample_server::test_support::guest::guest_memory;
use vfio_user_sample_server::test_support::pci::{
    cfg_read, cfg_write, fds_and_maps, find_cap, fired, quiet, Irqs,
};
use vfio_user_sample_server::test_support::rust_vmm::{
    Layout, RustVmmServer, State as RustVmmState,
};
use vfio_user_sample_server::{
    ConfigSpace, DmaAccessMode, DmaEngine, DmaEngineHandle, GpioConfig, GpioDevice, GpioHandle,
    Probe, Server, ServerConfig, ServerHandle, IRQ_ERR, IRQ_INTX, IRQ_MSI, IRQ_MSIX, IRQ_REQ,
};
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::MutDeviceMmio;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Every test holds this shared; the one counting the process's fds and maps holds it
/// alone.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|p| p.into_inner())
}

const BAR0_BASE: u64 = 0xc000_0000;
const BAR1_BASE: u64 = 0xc040_0000;
const BAR2_BASE: u64 = 0x1_0000_0000;
const BAR4_BASE: u64 = 0xc001_0000;
const ROM_BASE: u64 = 0xc002_0000;
const GUEST_RAM: usize = 1 << 20;

fn gpio_bars() -> BarPlacement {
    BarPlacement::Fixed(vec![
        (0, BAR0_BASE),
        (1, BAR1_BASE),
        (2, BAR2_BASE),
        (4, BAR4_BASE),
        (6, ROM_BASE),
    ])
}

struct Gpio {
    dev: VfioUserPciDevice,
    handle: GpioHandle,
    probe: Probe,
    irqs: Arc<Irqs>,
    server: ServerHandle,
}

fn gpio_with(config: GpioConfig, irqs: Arc<Irqs>) -> Gpio {
    gpio_on(ServerConfig::default(), config, irqs)
}

fn gpio_on(server_config: ServerConfig, config: GpioConfig, irqs: Arc<Irqs>) -> Gpio {
    let (device, handle) = GpioDevice::new(config).unwrap();
    let server = Server::new(server_config, Box::new(device));
    let probe = server.probe();
    let server = server.listen_temp().unwrap();
    let options = AttachOptions {
        bars: gpio_bars(),
        ..AttachOptions::default()
    };
    let dev = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        guest_memory(GUEST_RAM),
        irqs.clone(),
        &options,
    )
    .unwrap();
    Gpio {
        dev,
        handle,
        probe,
        irqs,
        server,
    }
}

fn gpio() -> Gpio {
    gpio_with(GpioConfig::default(), Irqs::new())
}

/// Memory decoding and bus mastering on, as a driver does first.
fn enable_memory(dev: &mut VfioUserPciDevice) {
    cfg_write(dev, 0x04, &0x0006u16.to_le_bytes());
}

/// Sets MSI-X Enable (function mask clear); returns the capability's offset.
fn enable_msix(dev: &mut VfioUserPciDevice) -> usize {
    let cap = find_cap(dev, 0x11).unwrap();
    cfg_write(dev, cap + 3, &[0x80]);
    cap
}

fn mmio_u32(dev: &mut VfioUserPciDevice, base: u64, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.mmio_read(MmioAddress(base), offset, &mut b);
    u32::from_le_bytes(b)
}

fn mmio_write_u32(dev: &mut VfioUserPciDevice, base: u64, offset: u64, v: u32) {
    dev.mmio_write(MmioAddress(base), offset, &v.to_le_bytes());
}

/// Programs MSI-X table entry `v` of a table at `table` in the BAR at `base`.
fn program_vector(dev: &mut VfioUserPciDevice, base: u64, table: u64, v: u64, masked: bool) {
    let at = table + 16 * v;
    mmio_write_u32(dev, base, at, 0xfee0_0000 | (v as u32) << 12);
    mmio_write_u32(dev, base, at + 4, 0);
    mmio_write_u32(dev, base, at + 8, 0x40 + v as u32);
    mmio_write_u32(dev, base, at + 12, u32::from(masked));
}

fn message(v: u32) -> MsiMessage {
    MsiMessage {
        address: 0xfee0_0000 | u64::from(v) << 12,
        data: 0x40 + v,
    }
}

#[test]
fn config_space_round_trips() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    let id = dev.read_config_register(0);
    assert_eq!(id & 0xffff, u32::from(GpioDevice::VENDOR_ID));
    assert_eq!(id >> 16, u32::from(GpioDevice::DEVICE_ID));
    assert_eq!(cfg_read(dev, 0x0b, 1), 0x08, "class code");
    assert_eq!(cfg_read(dev, 0x0e, 1), 0, "type-0, single function");
    // Interrupt line: a plain read/write register at the server.
    cfg_write(dev, 0x3c, &[0x0b]);
    assert_eq!(cfg_read(dev, 0x3c, 1), 0x0b);
    assert_eq!(cfg_read(dev, 0x3d, 1), 1, "INTA");
    // Command register round trip (reads come from the server).
    enable_memory(dev);
    assert_eq!(cfg_read(dev, 0x04, 2), 0x0006);
    // The capability list, walked through config reads, with every capability.
    for id in [0x01, 0x05, 0x10, 0x11] {
        assert!(find_cap(dev, id).is_some(), "capability {id:#x}");
    }
    let msix = find_cap(dev, 0x11).unwrap();
    assert_eq!(cfg_read(dev, msix + 2, 2) & 0x7ff, 3, "4 vectors");
    assert_eq!(cfg_read(dev, msix + 4, 4), GpioDevice::MSIX_BAR);
    // Reads past config space and odd writes are harmless.
    assert_eq!(dev.read_config_register(64), u32::MAX);
    assert!(dev.write_config_register(15, 3, &[1, 2]).is_empty());
    assert_eq!(dev.error_count(), 0);
}

#[test]
fn bars_are_sized_locally_and_relocated() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    let bars: Vec<(u32, BarKind, bool, u64, Option<u64>)> = dev
        .bars()
        .iter()
        .map(|b: &BarInfo| (b.index, b.kind, b.prefetchable, b.size, b.base))
        .collect();
    assert_eq!(
        bars,
        [
            (0, BarKind::Memory32, false, 256, Some(BAR0_BASE)),
            (1, BarKind::Memory32, false, 4 << 20, Some(BAR1_BASE)),
            (2, BarKind::Memory64, true, 64 << 10, Some(BAR2_BASE)),
            (4, BarKind::Memory32, false, 4096, Some(BAR4_BASE)),
            (6, BarKind::Rom, false, 2048, Some(ROM_BASE)),
        ]
    );
    assert_eq!(dev.read_config_register(4), BAR0_BASE as u32);
    assert_eq!(
        dev.read_config_register(6),
        0xc,
        "64-bit prefetchable, low half"
    );
    assert_eq!(dev.read_config_register(7), 1, "high half");
    // Sizing: all ones, read back, restore. No round trips, no moves.
    let commands = g.probe.commands();
    let saved: Vec<u32> = (4..10).map(|r| dev.read_config_register(r)).collect();
    for reg in 4..10 {
        assert!(dev.write_config_register(reg, 0, &[0xff; 4]).is_empty());
    }
    let sized: Vec<u32> = (4..10).map(|r| dev.read_config_register(r)).collect();
    assert_eq!(
        sized,
        [
            0xffff_ff00,
            0xffc0_0000,
            0xffff_000c,
            0xffff_ffff,
            0xffff_f000,
            0
        ]
    );
    for (reg, v) in (4..10).zip(&saved) {
        assert!(dev
            .write_config_register(reg, 0, &v.to_le_bytes())
            .is_empty());
    }
    assert_eq!(
        g.probe.commands(),
        commands,
        "BAR registers never reach the server"
    );

    enable_memory(dev);
    assert_eq!(mmio_u32(dev, BAR0_BASE, GpioDevice::REG_ID), GpioDevice::ID);
    // The guest moves BAR0; until the VMM moves the window, the old base answers.
    let new0 = 0xd000_0000;
    let moves = dev.write_config_register(4, 0, &(new0 as u32).to_le_bytes());
    assert_eq!(
        moves,
        [BarReprogramming {
            bar: 0,
            old_base: Some(BAR0_BASE),
            new_base: new0,
            len: 256,
            kind: BarKind::Memory32
        }]
    );
    assert_eq!(mmio_u32(dev, BAR0_BASE, GpioDevice::REG_ID), GpioDevice::ID);
    dev.move_bar(0, new0).unwrap();
    assert_eq!(mmio_u32(dev, new0, GpioDevice::REG_ID), GpioDevice::ID);
    assert_eq!(mmio_u32(dev, BAR0_BASE, GpioDevice::REG_ID), u32::MAX);
    assert!(dev.move_bar(0, new0 + 4).is_err(), "misaligned");
    assert!(dev.move_bar(3, new0).is_err(), "the upper half of BAR2");

    // The 64-bit BAR moves with its high half, and its mappable areas follow.
    let areas = |dev: &VfioUserPciDevice| -> Vec<(u64, u64)> {
        dev.bar_mappings(2)
            .iter()
            .map(|m| (m.guest_addr, m.size))
            .collect()
    };
    assert_eq!(
        areas(dev),
        [(BAR2_BASE, 0x4000), (BAR2_BASE + 0x8000, 0x8000)]
    );
    let moves = dev.write_config_register(7, 0, &3u32.to_le_bytes());
    assert_eq!(moves.len(), 1);
    assert_eq!(
        (moves[0].old_base, moves[0].new_base),
        (Some(BAR2_BASE), 3 << 32)
    );
    dev.move_bar(2, 3 << 32).unwrap();
    assert_eq!(
        areas(dev),
        [(3 << 32, 0x4000), ((3 << 32) + 0x8000, 0x8000)]
    );
    // Message-based access to the trapped gap of BAR2 at its new base.
    let trapped = g.handle.trapped_accesses();
    dev.mmio_write(MmioAddress(3 << 32), 0x4000, &[1, 2, 3, 4]);
    let mut back = [0u8; 4];
    dev.mmio_read(MmioAddress(3 << 32), 0x4000, &mut back);
    assert_eq!(back, [1, 2, 3, 4]);
    assert_eq!(g.handle.trapped_accesses(), trapped + 2);

    // Memory decoding off: the windows read all ones and drop writes.
    cfg_write(dev, 0x04, &0u16.to_le_bytes());
    assert_eq!(mmio_u32(dev, new0, GpioDevice::REG_ID), u32::MAX);
    assert_eq!(dev.error_count(), 0);
}

#[test]
fn bars_through_vm_device_io_manager() {
    let _g = shared();
    let g = gpio();
    let dev = Arc::new(Mutex::new(g.dev));
    let mut io = IoManager::new();
    let bars = dev.lock().unwrap().bars();
    for b in bars.iter().filter(|b| b.kind.is_memory()) {
        io.register_mmio(
            MmioRange::new(MmioAddress(b.base.unwrap()), b.size).unwrap(),
            dev.clone(),
        )
        .unwrap();
    }
    enable_memory(&mut dev.lock().unwrap());
    let mut id = [0u8; 4];
    io.mmio_read(MmioAddress(BAR0_BASE + GpioDevice::REG_ID), &mut id)
        .unwrap();
    assert_eq!(u32::from_le_bytes(id), GpioDevice::ID);
    io.mmio_write(MmioAddress(BAR1_BASE + 0x1000), b"scratch!")
        .unwrap();
    assert_eq!(g.handle.scratch(0x1000, 8).unwrap(), b"scratch!");
}

#[test]
fn rom_bar_reads_the_image_when_enabled() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    enable_memory(dev);
    assert_eq!(
        dev.read_config_register(12),
        ROM_BASE as u32,
        "placed, disabled"
    );
    assert_eq!(
        mmio_u32(dev, ROM_BASE, 0),
        u32::MAX,
        "disabled ROM reads all ones"
    );
    assert!(dev
        .write_config_register(12, 0, &(ROM_BASE as u32 | 1).to_le_bytes())
        .is_empty());
    let mut sig = [0u8; 3];
    dev.mmio_read(MmioAddress(ROM_BASE), 0, &mut sig);
    assert_eq!(sig, [0x55, 0xaa, (GpioDevice::ROM_SIZE / 512) as u8]);
    let mut all = vec![0u8; GpioDevice::ROM_SIZE as usize];
    dev.mmio_read(MmioAddress(ROM_BASE), 0, &mut all);
    assert_eq!(all, GpioDevice::rom_image());
    // Writes to the ROM are dropped; sizing gives the 2 KiB mask.
    dev.mmio_write(MmioAddress(ROM_BASE), 0, &[0; 4]);
    assert_eq!(mmio_u32(dev, ROM_BASE, 0) & 0xffff, 0xaa55);
    assert!(dev.write_config_register(12, 0, &[0xff; 4]).is_empty());
    assert_eq!(dev.read_config_register(12), 0xffff_f801);
    let moves = dev.write_config_register(12, 0, &0xc003_0001u32.to_le_bytes());
    assert_eq!(
        moves,
        [BarReprogramming {
            bar: 6,
            old_base: Some(ROM_BASE),
            new_base: 0xc003_0000,
            len: 2048,
            kind: BarKind::Rom
        }]
    );
    assert_eq!(dev.error_count(), 0);
}

#[test]
fn msix_vectors_fire_and_follow_the_table_masks() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    enable_memory(dev);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    let writes = g.handle.region_writes();
    for v in 0..4 {
        program_vector(dev, BAR4_BASE, 0, v, false);
    }
    assert_eq!(
        g.handle.region_writes(),
        writes,
        "the table is emulated here"
    );
    let mut entry = [0u8; 16];
    dev.mmio_read(MmioAddress(BAR4_BASE), 32, &mut entry);
    assert_eq!(&entry[8..12], &0x42u32.to_le_bytes());

    let cap = enable_msix(dev);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msix));
    assert_eq!(cfg_read(dev, cap + 2, 2), 0x8003);
    for v in 0..4 {
        assert_eq!(
            g.irqs.route(InterruptKind::Msix, v),
            Some((message(v), false))
        );
    }
    let state = g.probe.irq_state(IRQ_MSIX);
    assert!(state.iter().all(|s| s.assigned && !s.masked), "{state:?}");
    assert!(!g.probe.irq_state(IRQ_INTX)[0].assigned, "INTx off");
    for v in 0..4 {
        assert_eq!(g.probe.raise_irq(IRQ_MSIX, v), Ok(true));
        assert!(fired(&g.irqs.fd(InterruptKind::Msix, v)), "vector {v}");
    }
    // The guest raises vector 3 through the device's register.
    mmio_write_u32(
        dev,
        BAR0_BASE,
        GpioDevice::REG_IRQ_RAISE,
        (IRQ_MSIX << 16) | 3,
    );
    assert!(fired(&g.irqs.fd(InterruptKind::Msix, 3)));

    // Mask vector 1 in the table: masked at the server, pending bit set, then delivered.
    mmio_write_u32(dev, BAR4_BASE, 16 + 12, 1);
    assert!(g.probe.irq_state(IRQ_MSIX)[1].masked);
    assert_eq!(
        g.irqs.route(InterruptKind::Msix, 1),
        Some((message(1), true))
    );
    assert_eq!(g.probe.raise_irq(IRQ_MSIX, 1), Ok(false));
    assert!(quiet(&g.irqs.fd(InterruptKind::Msix, 1)));
    let pba = GpioDevice::msix_pba_offset(4);
    assert_eq!(mmio_u32(dev, BAR4_BASE, pba), 0b10, "PBA from the server");
    mmio_write_u32(dev, BAR4_BASE, 16 + 12, 0);
    assert!(fired(&g.irqs.fd(InterruptKind::Msix, 1)));
    assert_eq!(mmio_u32(dev, BAR4_BASE, pba), 0);
    assert_eq!(
        g.irqs.route(InterruptKind::Msix, 1),
        Some((message(1), false))
    );

    // A new message for an unmasked vector reaches the route.
    mmio_write_u32(dev, BAR4_BASE, 2 * 16 + 8, 0x99);
    assert_eq!(g.irqs.route(InterruptKind::Msix, 2).unwrap().0.data, 0x99);

    // The function mask masks every vector; clearing it delivers what is pending.
    cfg_write(dev, cap + 3, &[0xc0]);
    assert!(g.probe.irq_state(IRQ_MSIX).iter().all(|s| s.masked));
    assert_eq!(g.probe.raise_irq(IRQ_MSIX, 0), Ok(false));
    cfg_write(dev, cap + 3, &[0x80]);
    assert!(fired(&g.irqs.fd(InterruptKind::Msix, 0)));
    assert!(g.probe.irq_state(IRQ_MSIX).iter().all(|s| !s.masked));
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn msi_vector_fires_and_masks() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    let cap = find_cap(dev, 0x05).unwrap();
    let control = cfg_read(dev, cap + 2, 2);
    assert_eq!(control & 0x180, 0x180, "64-bit, per-vector mask");
    cfg_write(dev, cap + 4, &0xfee0_1000u32.to_le_bytes());
    cfg_write(dev, cap + 8, &0u32.to_le_bytes());
    cfg_write(dev, cap + 12, &0x55u16.to_le_bytes());
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    cfg_write(dev, cap + 2, &[0x01]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msi));
    assert_eq!(cfg_read(dev, cap + 2, 2), control | 1);
    assert_eq!(cfg_read(dev, cap + 4, 4), 0xfee0_1000);
    let msg = MsiMessage {
        address: 0xfee0_1000,
        data: 0x55,
    };
    assert_eq!(g.irqs.route(InterruptKind::Msi, 0), Some((msg, false)));
    assert!(g.probe.irq_state(IRQ_MSI)[0].assigned);
    assert_eq!(g.probe.raise_irq(IRQ_MSI, 0), Ok(true));
    assert!(fired(&g.irqs.fd(InterruptKind::Msi, 0)));
    // Per-vector mask bit.
    cfg_write(dev, cap + 16, &1u32.to_le_bytes());
    assert!(g.probe.irq_state(IRQ_MSI)[0].masked);
    assert_eq!(cfg_read(dev, cap + 16, 4), 1);
    assert_eq!(g.probe.raise_irq(IRQ_MSI, 0), Ok(false));
    assert!(quiet(&g.irqs.fd(InterruptKind::Msi, 0)));
    cfg_write(dev, cap + 16, &0u32.to_le_bytes());
    assert!(fired(&g.irqs.fd(InterruptKind::Msi, 0)));
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn intx_is_unmasked_on_end_of_interrupt_not_on_bar_access() {
    let _g = shared();
    let irqs = Irqs::with_resample();
    let mut g = gpio_with(GpioConfig::default(), irqs);
    let dev = &mut g.dev;
    enable_memory(dev);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    let intx = g.irqs.fd(InterruptKind::Intx, 0);
    assert_eq!(g.probe.raise_irq(IRQ_INTX, 0), Ok(true));
    assert!(fired(&intx));

    // The line is masked at the server (as after an automasked trigger); BAR accesses do
    // not unmask it.
    dev.device()
        .irq_action(VFIO_PCI_INTX_IRQ_INDEX, IrqAction::Mask, 0, 1)
        .unwrap();
    assert_eq!(g.probe.raise_irq(IRQ_INTX, 0), Ok(false));
    let commands = g.probe.commands();
    for _ in 0..10 {
        assert_eq!(mmio_u32(dev, BAR0_BASE, GpioDevice::REG_ID), GpioDevice::ID);
    }
    assert_eq!(g.probe.commands(), commands + 10, "one message per access");
    assert!(g.probe.irq_state(IRQ_INTX)[0].masked);
    assert!(quiet(&intx));

    // End of interrupt through the resample eventfd: the subscriber unmasks, the server
    // delivers the pending interrupt.
    g.irqs.resample.as_ref().unwrap().write(1).unwrap();
    assert!(fired(&intx));
    // Delivered, and masked again by the server (auto-mask) until the next end of
    // interrupt.
    assert!(g.probe.irq_state(IRQ_INTX)[0].masked);
    // The unmask's reply is collected by the next access.
    assert_eq!(mmio_u32(dev, BAR0_BASE, GpioDevice::REG_ID), GpioDevice::ID);

    // And through the VMM's own call.
    dev.device()
        .irq_action(VFIO_PCI_INTX_IRQ_INDEX, IrqAction::Mask, 0, 1)
        .unwrap();
    assert_eq!(g.probe.raise_irq(IRQ_INTX, 0), Ok(false));
    dev.end_of_interrupt().unwrap();
    assert!(fired(&intx));
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn err_and_req_notifiers_are_connected_at_attach() {
    let _g = shared();
    let g = gpio();
    for (index, kind) in [(IRQ_ERR, InterruptKind::Err), (IRQ_REQ, InterruptKind::Req)] {
        assert!(g.probe.irq_state(index)[0].assigned, "{kind:?}");
        assert_eq!(g.probe.raise_irq(index, 0), Ok(true));
        assert!(fired(&g.irqs.fd(kind, 0)), "{kind:?}");
    }
    g.dev.detach().unwrap();
}

#[test]
fn interrupt_modes_switch() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    enable_memory(dev);
    let assigned = |p: &Probe, index| p.irq_state(index).iter().any(|s| s.assigned);
    assert!(assigned(&g.probe, IRQ_INTX));
    let msi = find_cap(dev, 0x05).unwrap();
    let msix = find_cap(dev, 0x11).unwrap();

    cfg_write(dev, msi + 2, &[0x01]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msi));
    assert!(!assigned(&g.probe, IRQ_INTX) && assigned(&g.probe, IRQ_MSI));

    cfg_write(dev, msi + 2, &[0x00]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    assert!(assigned(&g.probe, IRQ_INTX) && !assigned(&g.probe, IRQ_MSI));
    assert_eq!(*g.irqs.disabled.lock().unwrap(), [InterruptKind::Msi]);

    cfg_write(dev, msix + 3, &[0x80]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msix));
    assert!(!assigned(&g.probe, IRQ_INTX) && assigned(&g.probe, IRQ_MSIX));
    // Every vector starts masked in the table, and so at the server.
    assert!(g.probe.irq_state(IRQ_MSIX).iter().all(|s| s.masked));

    // MSI enabled too (a buggy guest): MSI-X keeps the device.
    cfg_write(dev, msi + 2, &[0x01]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msix));
    cfg_write(dev, msix + 3, &[0x00]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msi));
    assert!(!assigned(&g.probe, IRQ_MSIX) && assigned(&g.probe, IRQ_MSI));
    cfg_write(dev, msi + 2, &[0x00]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    assert_eq!(g.probe.raise_irq(IRQ_INTX, 0), Ok(true));
    assert!(fired(&g.irqs.fd(InterruptKind::Intx, 0)));

    // A device reset goes back to INTx with MSI-X disabled and masked.
    cfg_write(dev, msix + 3, &[0x80]);
    dev.reset().unwrap();
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    assert_eq!(cfg_read(dev, msix + 2, 2), 0x0003);
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn dma_engine_over_the_io_bar_lands_data_and_fires_msix() {
    let _g = shared();
    // Shared memfd memory: the server maps it.
    dma_engine_copies(guest_memory(GUEST_RAM), DmaAccessMode::Mmap);
    // Anonymous private memory: the server reaches it with DMA_READ / DMA_WRITE, which
    // the DMA layer serves.
    let anonymous = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_RAM)]).unwrap();
    dma_engine_copies(Arc::new(anonymous), DmaAccessMode::Message);
}

fn dma_engine_copies(memory: Arc<GuestMemoryMmap>, mode: DmaAccessMode) {
    let (engine, handle): (DmaEngine, DmaEngineHandle) = DmaEngine::new();
    let server = Server::new(ServerConfig::default(), Box::new(engine));
    let probe = server.probe();
    let server = server.listen_temp().unwrap();
    let irqs = Irqs::new();
    let options = AttachOptions {
        bars: BarPlacement::Allocator(Arc::new(|b: &BarInfo| match b.kind {
            BarKind::Io => Some(0xc000),
            _ => Some(0xe000_0000),
        })),
        ..AttachOptions::default()
    };
    let dev = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        memory.clone(),
        irqs.clone(),
        &options,
    )
    .unwrap();
    let maps = probe.dma_maps();
    assert_eq!(maps.len(), 1);
    assert_eq!(
        (maps[0].address, maps[0].size, maps[0].mode),
        (0, GUEST_RAM as u64, mode)
    );
    let dev = Arc::new(Mutex::new(dev));
    let mut io = IoManager::new();
    io.register_pio(PioRange::new(PioAddress(0xc000), 64).unwrap(), dev.clone())
        .unwrap();
    io.register_mmio(
        MmioRange::new(MmioAddress(0xe000_0000), 256).unwrap(),
        dev.clone(),
    )
    .unwrap();
    {
        let mut d = dev.lock().unwrap();
        cfg_write(&mut *d, 0x04, &0x0007u16.to_le_bytes());
        program_vector(&mut d, 0xe000_0000, DmaEngine::MSIX_TABLE, 0, false);
        let cap = find_cap(&mut *d, 0x11).unwrap();
        cfg_write(&mut *d, cap + 3, &[0x80]);
    }
    memory
        .write_slice(b"hello, guest memory", GuestAddress(0x1000))
        .unwrap();
    let port = |reg: u64| PioAddress(0xc000 + reg as u16);
    let w32 = |io: &IoManager, reg: u64, v: u32| io.pio_write(port(reg), &v.to_le_bytes()).unwrap();
    w32(&io, DmaEngine::REG_SOURCE, 0x1000);
    w32(&io, DmaEngine::REG_DESTINATION, 0x8000);
    w32(&io, DmaEngine::REG_LENGTH, 19);
    w32(&io, DmaEngine::REG_DOORBELL, 1);
    assert!(fired(&irqs.fd(InterruptKind::Msix, 0)));
    let mut out = [0u8; 19];
    memory.read_slice(&mut out, GuestAddress(0x8000)).unwrap();
    assert_eq!(&out, b"hello, guest memory");
    let mut status = [0u8; 4];
    io.mmio_read(
        MmioAddress(0xe000_0000 + DmaEngine::REG_STATUS),
        &mut status,
    )
    .unwrap();
    assert_eq!(u32::from_le_bytes(status), 1, "done");
    assert_eq!(handle.completions(), 1);
    drop(io);
    let dev = Arc::try_unwrap(dev).unwrap().into_inner().unwrap();
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
    dev.detach().unwrap();
    assert!(probe.dma_maps().is_empty(), "unmapped at detach");
    server.stop();
}

#[test]
fn hot_plug_and_unplug_100_times_leaks_nothing() {
    let _g = EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner());
    // Another device stays attached and busy on another thread throughout.
    let other = gpio();
    let other_dev = Arc::new(Mutex::new(other.dev));
    enable_memory(&mut other_dev.lock().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let busy = {
        let (dev, stop, reads) = (other_dev.clone(), stop.clone(), reads.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let id = mmio_u32(&mut dev.lock().unwrap(), BAR0_BASE, GpioDevice::REG_ID);
                assert_eq!(id, GpioDevice::ID);
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let (device, _handle) = GpioDevice::new(GpioConfig::default()).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(device));
    let probe = server.probe();
    let server = server.listen_temp().unwrap();
    let path = server.socket_path().unwrap().to_path_buf();
    let memory = guest_memory(GUEST_RAM);
    let irqs = Irqs::with_resample();
    let options = AttachOptions {
        bars: gpio_bars(),
        ..AttachOptions::default()
    };
    let cycle = |n: u64| {
        let mut dev =
            VfioUserPciDevice::attach(&path, memory.clone(), irqs.clone(), &options).unwrap();
        enable_memory(&mut dev);
        assert_eq!(
            mmio_u32(&mut dev, BAR0_BASE, GpioDevice::REG_ID),
            GpioDevice::ID
        );
        assert_eq!(dev.bar_mappings(2).len(), 2);
        let attached = fds_and_maps();
        dev.detach().unwrap();
        // The server's side of the connection (its DMA maps of guest memory) is gone too.
        assert!(probe.wait_disconnects(n, Duration::from_secs(5)));
        attached
    };
    cycle(1);
    let before = fds_and_maps();
    for n in 2..=101 {
        let attached = cycle(n);
        // Seen while attached: the server's map of guest memory and BAR2's two areas.
        assert!(attached.1 >= before.1 + 3, "{attached:?} vs {before:?}");
        assert!(attached.0 > before.0);
    }
    let after = fds_and_maps();
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    assert_eq!(before, after, "(open fds, memory maps) before and after");
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert!(probe.dma_maps().is_empty());
    assert_eq!(other_dev.lock().unwrap().error_count(), 0);
}

#[test]
fn a_dying_server_fails_accesses_without_hanging() {
    // Alone: it counts the process's fds and maps.
    let _g = EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner());
    let before = fds_and_maps();
    let g = gpio();
    let Gpio {
        dev,
        server,
        irqs,
        handle,
        probe,
    } = g;
    // The device model (BAR2's memfd, its ioeventfds) lives as long as these.
    drop((handle, probe));
    let dev = Arc::new(Mutex::new(dev));
    enable_memory(&mut dev.lock().unwrap());
    let event = dev.lock().unwrap().event().try_clone().unwrap();
    // A vCPU thread keeps reading until it sees the device gone.
    let vcpu = {
        let dev = dev.clone();
        thread::spawn(move || loop {
            let v = mmio_u32(&mut dev.lock().unwrap(), BAR0_BASE, GpioDevice::REG_ID);
            if v == u32::MAX {
                return;
            }
            assert_eq!(v, GpioDevice::ID);
        })
    };
    server.stop();
    assert!(fired(&event), "the device event tells the VMM");
    vcpu.join().unwrap();
    let mut dev = Arc::try_unwrap(dev).unwrap().into_inner().unwrap();
    assert!(dev.is_lost());
    assert_eq!(dev.read_config_register(0), u32::MAX);
    assert_eq!(mmio_u32(&mut dev, BAR0_BASE, 0), u32::MAX);
    dev.mmio_write(MmioAddress(BAR0_BASE), 0, &[0; 4]);
    assert!(dev.write_config_register(1, 0, &[0; 2]).is_empty());
    let last = dev.last_error().unwrap();
    assert!(last.to_string().contains("lost"));
    assert!(
        matches!(*last, vfio_user_client::pci::Error::Lost(_)),
        "{last}"
    );
    assert!(last.is_disconnected());
    assert_eq!(dev.error_count(), 0, "the loss is not counted per access");
    assert!(quiet(dev.event()), "signalled once");
    dev.end_of_interrupt().unwrap();
    drop(irqs);
    drop(event);
    dev.detach().unwrap();
    // Detaching a lost device closes everything it held: socket, mapped areas, eventfds.
    assert_eq!(
        fds_and_maps(),
        before,
        "(open fds, memory maps) before and after"
    );
}

#[test]
fn server_errors_are_recorded_not_dropped() {
    let _g = shared();
    let mut g = gpio_with(
        GpioConfig {
            mappable_bar2: false,
            ..GpioConfig::default()
        },
        Irqs::new(),
    );
    let dev = &mut g.dev;
    enable_memory(dev);
    g.handle.set_fail_region(Some((1, libc::EIO)));
    assert_eq!(mmio_u32(dev, BAR1_BASE, 0), u32::MAX);
    assert_eq!(dev.error_count(), 1);
    let last = dev.last_error().unwrap();
    assert!(last.to_string().contains("BAR 1 read"));
    assert!(matches!(
        *last,
        vfio_user_client::pci::Error::During {
            activity: vfio_user_client::pci::Activity::BarRead { bar: 1, .. },
            ..
        }
    ));
    assert!(!dev.is_lost());
    g.handle.set_fail_region(None);
    assert_eq!(mmio_u32(dev, BAR1_BASE, 0), 0);
}

// ---- The crates.io `vfio_user` server ----

const RV_VECTORS: u32 = 4;

/// The crates.io server offering `config` with regions of `sizes` (region 7 is the config
/// space's 256 bytes) and `RV_VECTORS` MSI-X vectors; every IRQ index reports EVENTFD
/// only, as the crate does.
fn rust_vmm_server(sizes: &[(u32, u64)], config: ConfigSpace) -> RustVmmServer {
    RustVmmServer::with_layout(Layout {
        msix_vectors: RV_VECTORS,
        ..Layout::with_config_space(sizes, config)
    })
}

#[test]
fn msix_against_the_crates_io_server() {
    let _g = shared();
    let mut server = rust_vmm_server(
        &[(0, 256), (4, 4096)],
        ConfigSpace::new(0x494f, 0x0dc9, 0x08_80_00, 0)
            .with_bar(0, 256)
            .with_bar(4, 4096)
            .with_interrupt_pin(1)
            .with_msix(RV_VECTORS, 4, 0, 4, 0x800),
    );

    let irqs = Irqs::new();
    let options = AttachOptions {
        bars: BarPlacement::Fixed(vec![(0, BAR0_BASE), (4, BAR4_BASE)]),
        ..AttachOptions::default()
    };
    let path = server.path.clone();
    let mut dev =
        VfioUserPciDevice::attach(&path, guest_memory(GUEST_RAM), irqs.clone(), &options).unwrap();
    assert_eq!(dev.read_config_register(0), 0x0dc9_494f);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    assert_eq!(server.state().dma_maps.len(), 1);
    enable_memory(&mut dev);
    assert_eq!(mmio_u32(&mut dev, BAR0_BASE, 0), 0x5256_4d4d);
    // Posted (no region is mappable): the next read orders it.
    mmio_write_u32(&mut dev, BAR0_BASE, 4, 0xabcd);
    assert_eq!(mmio_u32(&mut dev, BAR0_BASE, 4), 0xabcd);
    assert_eq!(server.state().output, 0xabcd);
    for v in 0..u64::from(RV_VECTORS) {
        program_vector(&mut dev, BAR4_BASE, 0, v, false);
    }
    let cap = find_cap(&mut dev, 0x11).unwrap();
    cfg_write(&mut dev, cap + 3, &[0x80]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msix));
    // The server takes one fd per message (max_msg_fds 1): every vector got its own.
    for v in 0..RV_VECTORS {
        let st = server.state();
        let mut f = st.triggers[IRQ_MSIX as usize][v as usize].as_ref().unwrap();
        f.write_all(&1u64.to_ne_bytes()).unwrap();
        drop(st);
        assert!(fired(&irqs.fd(InterruptKind::Msix, v)), "vector {v}");
    }
    // The server reports no MASKABLE: masking vector 2 in the table sends no MASK but
    // parks the vector on an eventfd of the device's (one SET_IRQS with one fd for vector
    // 2), whose signal shows in the PBA and is delivered on unmask.
    mmio_write_u32(&mut dev, BAR4_BASE, 2 * 16 + 12, 1);
    let park = (IRQ_MSIX, 0x4 | 0x20, 2, 1, 1);
    assert_eq!(server.state().irq_log.last(), Some(&park));
    {
        let st = server.state();
        let mut f = st.triggers[IRQ_MSIX as usize][2].as_ref().unwrap();
        f.write_all(&1u64.to_ne_bytes()).unwrap();
    }
    assert!(quiet(&irqs.fd(InterruptKind::Msix, 2)));
    assert_eq!(mmio_u32(&mut dev, BAR4_BASE, 0x800), 0b100, "pending");
    mmio_write_u32(&mut dev, BAR4_BASE, 2 * 16 + 12, 0);
    assert!(fired(&irqs.fd(InterruptKind::Msix, 2)));
    assert_eq!(mmio_u32(&mut dev, BAR4_BASE, 0x800), 0);
    let masks = |st: &RustVmmState| st.irq_log.iter().any(|s| s.1 & (0x8 | 0x10) != 0);
    assert!(!masks(&server.state()), "no MASK or UNMASK sent");
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
    dev.detach().unwrap();
    server.stop().unwrap();
    let st = server.state();
    assert_eq!(st.dma_unmaps, 1);
    assert!(
        st.irq_log.contains(&(IRQ_MSIX, 0x1 | 0x20, 0, 0, 0)),
        "disabled"
    );
}
