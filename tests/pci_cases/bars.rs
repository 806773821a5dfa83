// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! BARs left to the guest: firmware sizing and placement, 64-bit reprogramming, and the
//! rule that a BAR moves only while it decodes.

use super::*;

fn gpio_unplaced() -> Gpio {
    let (device, handle) = GpioDevice::new(GpioConfig::default()).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(device));
    let probe = server.probe();
    let server = server.listen_temp().unwrap();
    let irqs = Irqs::new();
    let dev = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        guest_memory(GUEST_RAM),
        irqs.clone(),
        &AttachOptions::default(),
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

fn write(dev: &mut VfioUserPciDevice, offset: usize, value: u32) -> Vec<BarReprogramming> {
    dev.write_config_register(offset / 4, 0, &value.to_le_bytes())
}

fn moved(moves: &[BarReprogramming]) -> Vec<(u32, Option<u64>, u64)> {
    moves
        .iter()
        .map(|m| (m.bar, m.old_base, m.new_base))
        .collect()
}

#[test]
fn firmware_sizes_restores_and_places_with_decoding_off() {
    let _g = shared();
    let mut g = gpio_unplaced();
    let dev = &mut g.dev;
    assert!(dev.bars().iter().all(|b| b.base.is_none()));
    // Sizing every BAR and the ROM: all ones, read, restore (0: unassigned).
    let regs = [0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30];
    let mut sizes = Vec::new();
    for at in regs {
        assert!(write(dev, at, u32::MAX).is_empty());
        sizes.push(dev.read_config_register(at / 4));
        assert!(write(dev, at, 0).is_empty(), "restoring 0 at {at:#x}");
    }
    assert_eq!(
        sizes,
        [
            0xffff_ff00,
            0xffc0_0000,
            0xffff_000c,
            0xffff_ffff,
            0xffff_f000,
            0,
            0xffff_f801
        ]
    );
    // Turning decoding on with nothing assigned moves nothing.
    assert!(write(dev, 0x04, 0x0002).is_empty());
    assert!(write(dev, 0x04, 0).is_empty());
    // Placement with decoding off: nothing moves, the 64-bit BAR low half first.
    assert!(write(dev, 0x10, 0xe000_0000).is_empty());
    assert!(write(dev, 0x18, 0x4000_000c).is_empty());
    assert!(write(dev, 0x1c, 0x2).is_empty());
    assert!(write(dev, 0x20, 0xe001_0000).is_empty());
    // Decoding on: every assigned memory BAR moves once, BAR1 (still 0) does not.
    let moves = write(dev, 0x04, 0x0006);
    assert_eq!(
        moved(&moves),
        [
            (0, None, 0xe000_0000),
            (2, None, 0x2_4000_0000),
            (4, None, 0xe001_0000)
        ]
    );
    for m in &moves {
        dev.move_bar(m.bar, m.new_base).unwrap();
    }
    assert!(write(dev, 0x04, 0x0006).is_empty(), "reported once");
    assert_eq!(
        mmio_u32(dev, 0xe000_0000, GpioDevice::REG_ID),
        GpioDevice::ID
    );
    assert_eq!(dev.bar_mappings(2)[0].guest_addr, 0x2_4000_0000);
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn sixty_four_bit_reprogramming_reports_only_whole_addresses() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    enable_memory(dev);
    // Linux: decoding off, low half, high half, decoding on.
    assert!(write(dev, 0x04, 0).is_empty());
    assert!(write(dev, 0x18, 0x8000_000c).is_empty());
    assert!(write(dev, 0x1c, 1).is_empty());
    let moves = write(dev, 0x04, 0x0006);
    assert_eq!(moved(&moves), [(2, Some(BAR2_BASE), 0x1_8000_0000)]);
    dev.move_bar(2, 0x1_8000_0000).unwrap();
    // With decoding on, low then high: one move, to the whole address (never to
    // 0x1_4000_0000).
    assert!(write(dev, 0x18, 0x4000_000c).is_empty());
    let moves = write(dev, 0x1c, 2);
    assert_eq!(moved(&moves), [(2, Some(0x1_8000_0000), 0x2_4000_0000)]);
    // The VMM could not carry it out: the window leaves the bus, and the move comes
    // back (without an old base) when the guest turns decoding on again.
    dev.unmap_bar(2).unwrap();
    assert!(dev.bar_mappings(2).is_empty());
    assert!(
        write(dev, 0x04, 0x0006).is_empty(),
        "not reported on every write"
    );
    assert!(write(dev, 0x04, 0).is_empty());
    let moves = write(dev, 0x04, 0x0006);
    assert_eq!(moved(&moves), [(2, None, 0x2_4000_0000)]);
    assert!(dev.unmap_bar(3).is_err(), "the upper half is not a BAR");
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn io_bars_move_only_while_io_decodes() {
    let _g = shared();
    let (engine, _h) = DmaEngine::new();
    let server = Server::new(ServerConfig::default(), Box::new(engine))
        .listen_temp()
        .unwrap();
    let mut dev = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        guest_memory(GUEST_RAM),
        Irqs::new(),
        &AttachOptions::default(),
    )
    .unwrap();
    // BAR1 is the I/O BAR: placed while only memory decodes, it moves when I/O does.
    assert!(write(&mut dev, 0x04, 0x0002).is_empty());
    assert!(write(&mut dev, 0x14, 0xc001).is_empty());
    let moves = write(&mut dev, 0x04, 0x0003);
    assert_eq!(moved(&moves), [(1, None, 0xc000)]);
    assert_eq!(moves[0].kind, BarKind::Io);
}

#[test]
fn a_bar_named_by_a_fixed_placement_must_exist() {
    let _g = shared();
    let (device, _handle) = GpioDevice::new(GpioConfig::default()).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(device))
        .listen_temp()
        .unwrap();
    for bar in [3, 5] {
        let options = AttachOptions {
            bars: BarPlacement::Fixed(vec![(0, BAR0_BASE), (bar, 0xd000_0000)]),
            ..AttachOptions::default()
        };
        let err = VfioUserPciDevice::attach(
            server.socket_path().unwrap(),
            guest_memory(GUEST_RAM),
            Irqs::new(),
            &options,
        )
        .unwrap_err();
        assert!(
            matches!(err, vfio_user_client::pci::Error::NoSuchBar(b) if b == bar),
            "{err}"
        );
    }
}
