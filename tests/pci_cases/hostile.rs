// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Odd and hostile config spaces and region sizes (hosted by the crates.io server, which
//! serves whatever it is given), large MSI-X tables, accesses that split at the table, and
//! public offsets that would overflow.

use super::*;
use vfio_user_client::pci::Error as PciError;

fn gpio_config() -> ConfigSpace {
    ConfigSpace::new(0x494f, 0x0dc9, 0x08_80_00, 0)
        .with_bar(0, 256)
        .with_bar(4, 4096)
        .with_interrupt_pin(1)
        .with_msix(RV_VECTORS, 4, 0, 4, 0x800)
}

fn attach_to(server: &RustVmmServer, bars: Vec<(u32, u64)>) -> Result<VfioUserPciDevice, PciError> {
    let options = AttachOptions {
        bars: BarPlacement::Fixed(bars),
        ..AttachOptions::default()
    };
    VfioUserPciDevice::attach(&server.path, guest_memory(GUEST_RAM), Irqs::new(), &options)
}

fn refused(server: RustVmmServer, bars: Vec<(u32, u64)>) -> PciError {
    let err = attach_to(&server, bars).unwrap_err();
    // The client's session ends with the refusal.
    let _ = server.finish();
    err
}

#[test]
fn regions_that_are_not_powers_of_two() {
    let _g = shared();
    let config = ConfigSpace::new(0x494f, 0x0dc9, 0x08_80_00, 0).with_bar(0, 0x2000);
    let server = rust_vmm_server(&[(0, 0x1100)], config);
    let mut dev = attach_to(&server, vec![(0, 0xe000_0000)]).unwrap();
    assert_eq!(dev.bars()[0].size, 0x2000, "rounded up to a power of two");
    assert_eq!(dev.read_config_register(4), 0xe000_0000);
    enable_memory(&mut dev);
    assert_eq!(mmio_u32(&mut dev, 0xe000_0000, 0), 0x5256_4d4d);
    assert_eq!(
        mmio_u32(&mut dev, 0xe000_0000, 0x10fc),
        0,
        "the region's last dword"
    );
    // Past the region, inside the BAR's window: all ones, not a server error.
    assert_eq!(mmio_u32(&mut dev, 0xe000_0000, 0x1100), u32::MAX);
    let mut straddle = [0u8; 8];
    dev.mmio_read(MmioAddress(0xe000_0000), 0x10fc, &mut straddle);
    assert_eq!(straddle, [0xff; 8]);
    dev.mmio_write(MmioAddress(0xe000_0000), 0x1ff0, &[1; 4]);
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
    dev.detach().unwrap();
    server.finish().unwrap();
}

#[test]
fn msix_structures_past_their_region_are_refused() {
    let _g = shared();
    // A region of 0x1100 bytes in a BAR of 0x2000: the pending bits at 0x1800 would be
    // in the BAR's window but past the region.
    let config = ConfigSpace::new(0x494f, 0x0dc9, 0x08_80_00, 0)
        .with_bar(0, 256)
        .with_bar(4, 0x2000)
        .with_msix(RV_VECTORS, 4, 0, 4, 0x1800);
    let server = rust_vmm_server(&[(0, 256), (4, 0x1100)], config);
    let err = refused(server, vec![]);
    assert!(matches!(err, PciError::Capability { .. }), "{err}");
    assert!(err.to_string().contains("past region 4"), "{err}");
}

#[test]
fn an_msi_capability_past_config_space_is_refused() {
    let _g = shared();
    let server = rust_vmm_server(&[(0, 256), (4, 4096)], gpio_config());
    // MSI-X at 0x40 now points on to an MSI capability at 0xf0 with 64-bit addresses
    // and per-vector masks: 24 bytes, 8 past the end.
    server.state().patch = vec![
        (0x41, 0xf0),
        (0xf0, 0x05),
        (0xf1, 0),
        (0xf2, 0x80),
        (0xf3, 0x01),
    ];
    let err = refused(server, vec![]);
    assert!(
        matches!(err, PciError::Capability { offset: 0xf0, .. }),
        "{err}"
    );
}

#[test]
fn the_server_cannot_move_capabilities_after_attach() {
    let _g = shared();
    let server = rust_vmm_server(&[(0, 256), (4, 4096)], gpio_config());
    let irqs = Irqs::new();
    let options = AttachOptions {
        bars: BarPlacement::Fixed(vec![(0, BAR0_BASE), (4, BAR4_BASE)]),
        ..AttachOptions::default()
    };
    let mut dev = VfioUserPciDevice::attach(
        &server.path,
        guest_memory(GUEST_RAM),
        irqs.clone(),
        &options,
    )
    .unwrap();
    // Now the server reports another chain, another table size and another table BAR,
    // and claims to be multi-function.
    server.state().patch = vec![
        (0x0e, 0x80),
        (0x34, 0x80),
        (0x40, 0x05),
        (0x41, 0x80),
        (0x42, 0xff),
        (0x44, 0x03),
        (0x48, 0x01),
    ];
    assert_eq!(cfg_read(&mut dev, 0x0e, 1), 0);
    assert_eq!(find_cap(&mut dev, 0x11), Some(0x40));
    assert_eq!(find_cap(&mut dev, 0x05), None);
    assert_eq!(cfg_read(&mut dev, 0x42, 2), 3, "4 vectors");
    assert_eq!(cfg_read(&mut dev, 0x44, 4), 4, "table in BAR 4 at 0");
    assert_eq!(
        cfg_read(&mut dev, 0x48, 4),
        0x804,
        "pending bits in BAR 4 at 0x800"
    );
    // The guest programs what the VMM emulates.
    enable_memory(&mut dev);
    program_vector(&mut dev, BAR4_BASE, 0, 1, false);
    cfg_write(&mut dev, 0x43, &[0x80]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msix));
    assert_eq!(cfg_read(&mut dev, 0x42, 2), 0x8003);
    assert_eq!(
        irqs.route(InterruptKind::Msix, 1),
        Some((message(1), false))
    );
    dev.detach().unwrap();
    server.finish().unwrap();
}

#[test]
fn msix_with_2048_vectors() {
    let _g = shared();
    let config = GpioConfig {
        msix_vectors: 2048,
        ..GpioConfig::default()
    };
    let mut g = gpio_with(config, Irqs::new());
    let dev = &mut g.dev;
    assert_eq!(dev.bars()[3].size, 0x10000);
    enable_memory(dev);
    let cap = find_cap(dev, 0x11).unwrap();
    assert_eq!(cfg_read(dev, cap + 2, 2), 0x7ff);
    program_vector(dev, BAR4_BASE, 0, 2047, false);
    cfg_write(dev, cap + 3, &[0x80]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msix));
    let fd = g.irqs.fd(InterruptKind::Msix, 2047);
    assert_eq!(g.probe.raise_irq(IRQ_MSIX, 2047), Ok(true));
    assert!(fired(&fd));
    mmio_write_u32(dev, BAR4_BASE, 2047 * 16 + 12, 1);
    assert_eq!(g.probe.raise_irq(IRQ_MSIX, 2047), Ok(false));
    let pba = GpioDevice::msix_pba_offset(2048);
    assert_eq!(mmio_u32(dev, BAR4_BASE, pba + 252), 0x8000_0000);
    mmio_write_u32(dev, BAR4_BASE, 2047 * 16 + 12, 0);
    assert!(fired(&fd));
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn accesses_across_the_msix_table_end_are_split() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    enable_memory(dev);
    let (writes, reads) = (g.handle.region_writes(), g.handle.region_reads());
    // BAR4: a table of 4 vectors at 0 (64 bytes). 8 bytes at 60: vector 3's control
    // (emulated here), then 4 bytes for the server.
    assert_eq!(mmio_u32(dev, BAR4_BASE, 60), 1, "masked after reset");
    dev.mmio_write(MmioAddress(BAR4_BASE), 60, &[0u8; 8]);
    assert_eq!(g.handle.region_writes(), writes + 1);
    assert_eq!(mmio_u32(dev, BAR4_BASE, 60), 0, "unmasked");
    let mut b = [0xa5u8; 8];
    dev.mmio_read(MmioAddress(BAR4_BASE), 61, &mut b);
    assert_eq!(b, [0; 8]);
    assert_eq!(
        g.handle.region_reads(),
        reads + 1,
        "5 bytes from the server"
    );
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn public_offsets_never_overflow() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    enable_memory(dev);
    let commands = g.probe.commands();
    assert_eq!(dev.read_config_register(usize::MAX / 4), u32::MAX);
    assert_eq!(dev.read_config_register(usize::MAX), u32::MAX);
    for (reg, offset, data) in [
        (1, u64::MAX, &[1u8][..]),
        (usize::MAX / 4, 0, &[1, 2, 3, 4][..]),
        (usize::MAX, 3, &[1][..]),
        (1, 4, &[1][..]),
        (1, 3, &[1, 2][..]),
        (1, 0, &[1, 2, 3][..]),
    ] {
        assert!(dev.write_config_register(reg, offset, data).is_empty());
    }
    for bar in [0, 4] {
        let mut b = [0u8; 8];
        dev.bar_read(bar, u64::MAX - 3, &mut b);
        assert_eq!(b, [0xff; 8]);
        dev.bar_write(bar, u64::MAX - 3, &[0; 8]);
        dev.bar_read(bar, u64::MAX, &mut b[..1]);
        dev.mmio_read(MmioAddress(BAR0_BASE), u64::MAX, &mut b);
        dev.mmio_write(MmioAddress(BAR0_BASE), u64::MAX - 1, &b);
    }
    assert_eq!(g.probe.commands(), commands, "nothing reached the server");
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn guest_memory_follows_hot_plug_and_a_refused_map_leaves_nothing() {
    use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestRegionMmap};
    let _g = shared();
    // Shared RAM at 0, anonymous RAM at 1 MiB: an fd-less window the server refuses.
    let shared_ram = guest_memory(GUEST_RAM);
    let anon =
        GuestRegionMmap::from_range(GuestAddress(GUEST_RAM as u64), GUEST_RAM, None).unwrap();
    let both = shared_ram.insert_region(Arc::new(anon)).unwrap();
    let (device, _handle) = GpioDevice::new(GpioConfig::default()).unwrap();
    let config = ServerConfig {
        refuse_fdless_maps: true,
        ..ServerConfig::default()
    };
    let server = Server::new(config, Box::new(device));
    let probe = server.probe();
    let server = server.listen_temp().unwrap();
    let err = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        Arc::new(both),
        Irqs::new(),
        &AttachOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PciError::Dma(_)), "{err}");
    assert_eq!(err.server_errno(), Some(libc::EINVAL as u32));
    assert!(probe.wait_disconnects(1, Duration::from_secs(5)));
    assert!(probe.dma_maps().is_empty(), "the accepted map was undone");

    // Hot-plug through a GuestMemoryAtomic: sync_guest_memory maps a new shared region,
    // and reports the server's refusal of an fd-less one.
    let atomic = GuestMemoryAtomic::new(Arc::unwrap_or_clone(guest_memory(GUEST_RAM)));
    let dev = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        atomic.clone(),
        Irqs::new(),
        &AttachOptions::default(),
    )
    .unwrap();
    let plug = |region: GuestRegionMmap| {
        let next = atomic.memory().insert_region(Arc::new(region)).unwrap();
        atomic.lock().unwrap().replace(next);
    };
    let file = vm_memory::FileOffset::new(
        vfio_user_sample_server::test_support::guest::memfd(0x10_0000),
        0,
    );
    plug(GuestRegionMmap::from_range(GuestAddress(0x4000_0000), 0x10_0000, Some(file)).unwrap());
    dev.sync_guest_memory().unwrap();
    let maps = || -> Vec<u64> { probe.dma_maps().iter().map(|m| m.address).collect() };
    assert_eq!(maps(), [0, 0x4000_0000]);
    plug(GuestRegionMmap::from_range(GuestAddress(0x8000_0000), 0x10_0000, None).unwrap());
    let err = dev.sync_guest_memory().unwrap_err();
    assert!(matches!(err, PciError::Dma(_)), "fd-less, refused: {err}");
    assert_eq!(maps(), [0, 0x4000_0000]);
    dev.detach().unwrap();
    assert!(probe.dma_maps().is_empty());
}
