// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device-managed guest memory slots and doorbells (`GuestSlots`) over the sample server,
//! with a recording fake VMM, and BAR placement in a VMM's shape.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vfio_user_client::pci::{
    AttachOptions, BarMapping, BarPlacement, BarReprogramming, BarSpace, Doorbell, GuestSlots,
    PciConfig, VfioUserPciDevice,
};
use vfio_user_sample_server::test_support::guest::guest_memory;
use vfio_user_sample_server::test_support::pci::{cfg_write, fired_within, Irqs};
use vfio_user_sample_server::{
    DmaEngine, DmaEngineHandle, DmaEngineOptions, DmaEngineStatus, GpioConfig, GpioDevice,
    GpioHandle, Server, ServerConfig, ServerHandle,
};
use vm_device::bus::MmioAddress;
use vm_device::MutDeviceMmio;

const BAR0: u64 = 0xc000_0000;
const BAR2: u64 = 0x1_0000_0000;
const BAR4: u64 = 0xc001_0000;

/// A fake VMM: what it holds, and every call in order. It refuses what `refuse` names once.
#[derive(Default)]
struct Recorder {
    state: Mutex<Held>,
}

/// What the VMM holds: slots (guest address, size) and doorbells (address, data match).
type Installed = (Vec<(u64, u64)>, Vec<(u64, Option<u64>)>);

#[derive(Default)]
struct Held {
    slots: Vec<BarMapping>,
    doorbells: Vec<Doorbell>,
    log: Vec<String>,
    refuse_next_slot: bool,
}

impl Recorder {
    fn held(&self) -> Installed {
        let h = self.state.lock().unwrap();
        let mut slots: Vec<_> = h.slots.iter().map(|s| (s.guest_addr, s.size)).collect();
        let mut bells: Vec<_> = h
            .doorbells
            .iter()
            .map(|d| (d.guest_addr, d.datamatch))
            .collect();
        slots.sort_unstable();
        bells.sort_unstable();
        (slots, bells)
    }

    fn doorbell_at(&self, addr: u64) -> Doorbell {
        let h = self.state.lock().unwrap();
        h.doorbells
            .iter()
            .find(|d| d.guest_addr == addr)
            .cloned()
            .unwrap()
    }

    fn calls(&self) -> usize {
        self.state.lock().unwrap().log.len()
    }
}

impl GuestSlots for Recorder {
    fn add_slot(&self, slot: &BarMapping) -> io::Result<()> {
        let mut h = self.state.lock().unwrap();
        if std::mem::take(&mut h.refuse_next_slot) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        assert!(!h.slots.contains(slot), "added twice: {slot:?}");
        assert!(
            !h.slots
                .iter()
                .any(|s| s.guest_addr < slot.guest_addr + slot.size
                    && slot.guest_addr < s.guest_addr + s.size),
            "overlapping slots"
        );
        h.log.push(format!("+slot {:#x}", slot.guest_addr));
        h.slots.push(*slot);
        Ok(())
    }

    fn remove_slot(&self, slot: &BarMapping) -> io::Result<()> {
        let mut h = self.state.lock().unwrap();
        let at = h.slots.iter().position(|s| s == slot).expect("not held");
        h.slots.remove(at);
        h.log.push(format!("-slot {:#x}", slot.guest_addr));
        Ok(())
    }

    fn add_ioeventfd(&self, d: &Doorbell) -> io::Result<()> {
        let mut h = self.state.lock().unwrap();
        assert!(!h.doorbells.contains(d), "added twice: {d:?}");
        h.log.push(format!("+fd {:#x}", d.guest_addr));
        h.doorbells.push(d.clone());
        Ok(())
    }

    fn remove_ioeventfd(&self, d: &Doorbell) -> io::Result<()> {
        let mut h = self.state.lock().unwrap();
        let at = h.doorbells.iter().position(|x| x == d).expect("not held");
        h.doorbells.remove(at);
        h.log.push(format!("-fd {:#x}", d.guest_addr));
        Ok(())
    }
}

/// What a hypervisor does on a guest write that matches the doorbell: signal its fd.
fn ring(d: &Doorbell) {
    let mut f = File::from(d.fd.try_clone().unwrap());
    f.write_all(&1u64.to_ne_bytes()).unwrap();
}

fn attach(server: &ServerHandle, bars: BarPlacement) -> VfioUserPciDevice {
    let options = AttachOptions {
        bars,
        ..AttachOptions::default()
    };
    VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        guest_memory(1 << 20),
        Irqs::new(),
        &options,
    )
    .unwrap()
}

fn gpio() -> (ServerHandle, GpioHandle, VfioUserPciDevice) {
    let (device, handle) = GpioDevice::new(GpioConfig::default()).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(device))
        .listen_temp()
        .unwrap();
    let dev = attach(
        &server,
        BarPlacement::Fixed(vec![(0, BAR0), (2, BAR2), (4, BAR4)]),
    );
    (server, handle, dev)
}

fn command(dev: &mut VfioUserPciDevice, value: u16) {
    cfg_write(dev, 0x04, &value.to_le_bytes());
}

/// BAR2's two mappable areas at `base`, and BAR0's two ioeventfds.
fn gpio_held(base: u64) -> Installed {
    (
        vec![(base, 0x4000), (base + 0x8000, 0x8000)],
        vec![
            (BAR0 + GpioDevice::REG_OUTPUT, Some(0xa5a5_0001)),
            (BAR0 + GpioDevice::REG_DOORBELL, None),
        ],
    )
}

#[test]
fn slots_follow_decoding_moves_reset_and_detach() {
    let (server, handle, mut dev) = gpio();
    let vmm = Arc::new(Recorder::default());
    dev.manage_slots(vmm.clone()).unwrap();
    assert_eq!(vmm.held(), (vec![], vec![]), "memory decoding is off");

    command(&mut dev, 0x0002);
    assert_eq!(vmm.held(), gpio_held(BAR2));
    // The slots are the device's mappings of BAR2, the pages the guest reaches directly.
    let device = dev.device();
    let areas = device.region(2).unwrap().mapped_areas();
    assert_eq!(
        dev.installed_slots().0[0].host_addr,
        areas[0].host_addr() as u64
    );
    assert_eq!(dev.installed_slots().0, dev.bar_mappings(2));

    // A hypervisor signals the doorbell's fd: the server counts it, no message sent.
    let before = server.probe().commands();
    ring(&vmm.doorbell_at(BAR0 + GpioDevice::REG_DOORBELL));
    assert_eq!(handle.ioeventfd_signals(GpioDevice::IOEVENTFD_DOORBELL), 1);
    assert_eq!(server.probe().commands(), before);

    // The VMM moves BAR2: the slots follow; the relocation names both bases.
    let moved = dev.move_bar(2, 2 * BAR2).unwrap();
    assert_eq!((moved.old_base, moved.new_base), (Some(BAR2), 2 * BAR2));
    assert_eq!(vmm.held(), gpio_held(2 * BAR2));
    // And back, as a rollback.
    dev.restore_bar(&moved).unwrap();
    assert_eq!(vmm.held(), gpio_held(BAR2));

    // The guest moves BAR2 with decoding on: nothing moves until the VMM confirms.
    cfg_write(&mut dev, 0x18, &0x8000_000cu32.to_le_bytes());
    let m: Vec<BarReprogramming> = dev.write_config_register(0x1c / 4, 0, &3u32.to_le_bytes());
    assert_eq!(m.len(), 1);
    assert_eq!(vmm.held(), gpio_held(BAR2));
    dev.move_bar(m[0].bar, m[0].new_base).unwrap();
    assert_eq!(vmm.held(), gpio_held(0x3_8000_0000));

    // Decoding off takes everything out; on puts it back.
    command(&mut dev, 0);
    assert_eq!(vmm.held(), (vec![], vec![]));
    command(&mut dev, 0x0002);
    assert_eq!(vmm.held(), gpio_held(0x3_8000_0000));

    // A BAR the VMM took off its bus has no slots; the others keep theirs.
    dev.unmap_bar(2).unwrap();
    assert_eq!(vmm.held(), (vec![], gpio_held(0).1));
    dev.move_bar(2, BAR2).unwrap();
    assert_eq!(vmm.held(), gpio_held(BAR2));

    // Reset turns decoding off.
    dev.reset().unwrap();
    assert_eq!(vmm.held(), (vec![], vec![]));
    command(&mut dev, 0x0002);
    assert_eq!(vmm.held(), gpio_held(BAR2));

    let calls = vmm.calls();
    dev.detach().unwrap();
    assert_eq!(vmm.held(), (vec![], vec![]), "detach removes everything");
    assert_eq!(vmm.calls(), calls + 4);
    server.stop();
}

#[test]
fn a_refusing_vmm_is_counted_and_tried_again() {
    let (server, _handle, mut dev) = gpio();
    let vmm = Arc::new(Recorder::default());
    dev.manage_slots(vmm.clone()).unwrap();
    vmm.state.lock().unwrap().refuse_next_slot = true;
    command(&mut dev, 0x0002);
    assert_eq!(dev.error_count(), 1);
    assert_eq!(vmm.held().0.len(), 1, "the other area is installed");
    assert!(dev.last_error().unwrap().to_string().contains("slot"));
    // The next change tries again.
    command(&mut dev, 0x0006);
    assert_eq!(vmm.held(), gpio_held(BAR2));
    // Dropped without detach: the slots still go before the mappings do.
    drop(dev);
    assert_eq!(vmm.held(), (vec![], vec![]));
    server.stop();
}

#[test]
fn without_a_vmm_handle_bar_mappings_are_as_before() {
    let (server, _handle, mut dev) = gpio();
    command(&mut dev, 0x0002);
    let m: Vec<(u64, u64)> = dev
        .bar_mappings(2)
        .iter()
        .map(|m| (m.guest_addr, m.size))
        .collect();
    assert_eq!(m, gpio_held(BAR2).0);
    assert!(dev.bar_mappings(0).is_empty(), "BAR0 has no mappable area");
    assert_eq!(dev.installed_slots(), (vec![], vec![]));
    dev.detach().unwrap();
    server.stop();
}

fn engine(options: DmaEngineOptions) -> (ServerHandle, DmaEngineHandle, VfioUserPciDevice) {
    let (device, handle) = DmaEngine::with_options(options).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(device))
        .listen_temp()
        .unwrap();
    let dev = attach(&server, BarPlacement::Guest);
    (server, handle, dev)
}

#[test]
fn the_dma_engine_doorbell_rings_through_its_ioeventfd() {
    let (server, handle, mut dev) = engine(DmaEngineOptions {
        doorbell_ioeventfd: true,
        buffer_bar: true,
    });
    let vmm = Arc::new(Recorder::default());
    dev.manage_slots(vmm.clone()).unwrap();
    // The VMM's allocator places BAR0 and BAR2; BAR1 (I/O) is left to the guest.
    let mut next = 0xd000_0000u64;
    let placed = dev
        .allocate_bars(|bar| {
            if bar.kind.space() != BarSpace::Memory {
                return None;
            }
            let base = next.next_multiple_of(bar.size.max(0x1000));
            next = base + bar.size.max(0x1000);
            Some(base)
        })
        .unwrap();
    let firsts: Vec<(u32, Option<u64>, u64)> = placed
        .iter()
        .map(|p| (p.bar, p.old_base, p.new_base))
        .collect();
    assert_eq!(
        firsts,
        [(0, None, 0xd000_0000), (2, None, 0xd000_1000)],
        "first placements"
    );
    assert_eq!(
        dev.bar_at(BarSpace::Memory, 0xd000_0018)
            .map(|(b, o)| (b.index, o)),
        Some((0, 0x18))
    );
    assert!(dev.bar_at(BarSpace::Io, 0xd000_0018).is_none());
    command(&mut dev, 0x0006);
    assert_eq!(
        vmm.held(),
        (
            vec![(0xd000_1000, DmaEngine::BUFFER_SIZE)],
            vec![(0xd000_0000 + DmaEngine::REG_DOORBELL, Some(1))]
        )
    );

    // Program a copy through messages, ring through the fd, read the status: the status
    // read is the message that makes the engine take the ring.
    let w = |dev: &mut VfioUserPciDevice, reg: u64, v: u32| {
        dev.mmio_write(MmioAddress(0xd000_0000), reg, &v.to_le_bytes())
    };
    w(&mut dev, DmaEngine::REG_SOURCE, 0x1000);
    w(&mut dev, DmaEngine::REG_DESTINATION, 0x2000);
    w(&mut dev, DmaEngine::REG_LENGTH, 16);
    ring(&vmm.doorbell_at(0xd000_0000 + DmaEngine::REG_DOORBELL));
    let mut status = [0u8; 4];
    dev.mmio_read(MmioAddress(0xd000_0000), DmaEngine::REG_STATUS, &mut status);
    assert_eq!(u32::from_le_bytes(status), DmaEngineStatus::Done as u32);
    assert_eq!(handle.completions(), 1);

    // Freeing the BARs takes their slots and doorbells out.
    let freed = dev.free_bars();
    assert_eq!(freed.len(), 2);
    assert_eq!(vmm.held(), (vec![], vec![]));
    dev.detach().unwrap();
    server.stop();
}

#[test]
fn the_dma_engine_buffer_is_one_slot_the_server_sees() {
    let (server, handle, mut dev) = engine(DmaEngineOptions {
        doorbell_ioeventfd: false,
        buffer_bar: true,
    });
    let vmm = Arc::new(Recorder::default());
    dev.manage_slots(vmm.clone()).unwrap();
    dev.move_bar(2, 0xe000_0000).unwrap();
    command(&mut dev, 0x0002);
    assert_eq!(vmm.held(), (vec![(0xe000_0000, 0x1000)], vec![]));
    // A message write to the buffer lands in the memory the slot maps.
    dev.mmio_write(MmioAddress(0xe000_0000), 8, &[1, 2, 3, 4]);
    assert_eq!(handle.buffer()[8..12], [1, 2, 3, 4]);
    let mut back = [0u8; 4];
    dev.mmio_read(MmioAddress(0xe000_0000), 8, &mut back);
    assert_eq!(back, [1, 2, 3, 4]);
    dev.detach().unwrap();
    assert_eq!(vmm.held(), (vec![], vec![]));
    server.stop();
}

#[test]
fn a_lost_device_takes_its_slots_out_at_the_next_change() {
    let (server, _handle, mut dev) = gpio();
    let vmm = Arc::new(Recorder::default());
    dev.manage_slots(vmm.clone()).unwrap();
    command(&mut dev, 0x0002);
    assert_eq!(vmm.held(), gpio_held(BAR2));
    server.stop();
    assert!(fired_within(dev.event(), Duration::from_secs(5)));
    // The guest's next config write (or the VMM's next BAR call) withdraws everything, so
    // that guest accesses trap and read all ones.
    command(&mut dev, 0x0002);
    assert_eq!(vmm.held(), (vec![], vec![]));
    dev.detach().unwrap();
}
