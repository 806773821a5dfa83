// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Proof of fit: `VfioUserPciDevice` behind a trait with the shape of Cloud Hypervisor's
//! `PciDevice`, driven by a small VMM of that shape through the example VMM's guest
//! scenario.
//!
//! Three parts:
//! * `ch`: a model of the VMM's side, written from the shape of Cloud Hypervisor's public
//!   `pci` crate (no code taken from it): address allocators, BAR relocation parameters and
//!   the `PciDevice` trait (allocate and free BARs, config registers returning BAR
//!   relocations, BAR accesses by address, `move_bar`, `restore_bar_addr`);
//! * the adapter, between the `ADAPTER BEGIN` and `ADAPTER END` lines: everything a VMM of
//!   that shape writes to use the library;
//! * `Vmm`: a VMM built on `ch` (config mechanism #1, MMIO and port buses that route by
//!   address, relocation with rollback as Cloud Hypervisor's device relocation does) and the
//!   example VMM's Rust guest: find the DMA engine, move its BARs, enable MSI-X, copy a
//!   buffer with DMA, use the buffer BAR; plus a BAR move the buses refuse, rolled back.
//!   The same VMM also runs the example's real-mode guest (`guest.S`) in a KVM vCPU where
//!   `/dev/kvm` is usable, every exit going through the adapter.

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Barrier, Mutex, MutexGuard};

use vfio_user_client::pci::{
    AttachOptions, BarInfo, BarKind, BarReprogramming, BarSpace, InterruptKind, PciConfig,
    VfioUserPciDevice,
};
use vfio_user_sample_server::test_support::guest::guest_memory;
use vfio_user_sample_server::test_support::pci::{fired, Irqs};
use vfio_user_sample_server::{
    DmaEngine, DmaEngineHandle, DmaEngineOptions, Server, ServerConfig, ServerHandle,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[path = "common/kvm.rs"]
mod kvm;
/// The example VMM, for its guest code and its KVM check.
#[allow(dead_code)]
#[path = "../examples/vmm/main.rs"]
mod vmm;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The VMM's side, in the shape of Cloud Hypervisor's `pci` crate and `vm-allocator`.
mod ch {
    use super::*;

    /// What a BAR decodes (named as the VMM names it).
    #[allow(clippy::enum_variant_names)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PciBarRegionType {
        Memory32BitRegion,
        IoRegion,
        Memory64BitRegion,
    }

    /// A BAR placed by `allocate_bars`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PciBarConfiguration {
        pub idx: usize,
        pub addr: u64,
        pub size: u64,
        pub region_type: PciBarRegionType,
    }

    /// A BAR the guest moves (`old_base` 0: it was on no bus).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct BarReprogrammingParams {
        pub old_base: u64,
        pub new_base: u64,
        pub len: u64,
        pub region_type: PciBarRegionType,
    }

    #[derive(Debug)]
    pub struct PciDeviceError(#[allow(dead_code)] pub String);

    /// An address range allocator (bump allocation; frees are recorded).
    #[derive(Debug)]
    pub struct AddressAllocator {
        next: u64,
        end: u64,
        pub freed: Vec<(u64, u64)>,
    }

    impl AddressAllocator {
        pub fn new(base: u64, size: u64) -> AddressAllocator {
            AddressAllocator {
                next: base,
                end: base + size,
                freed: Vec::new(),
            }
        }

        pub fn allocate(&mut self, size: u64, align: u64) -> Option<u64> {
            let base = self.next.next_multiple_of(align);
            (base + size <= self.end).then(|| {
                self.next = base + size;
                base
            })
        }

        pub fn free(&mut self, base: u64, size: u64) {
            self.freed.push((base, size));
        }
    }

    /// The device as the VMM's PCI code drives it.
    pub trait PciDevice: Send {
        fn allocate_bars(
            &mut self,
            mmio32: &mut AddressAllocator,
            mmio64: &mut AddressAllocator,
            io: &mut AddressAllocator,
        ) -> Result<Vec<PciBarConfiguration>, PciDeviceError>;
        fn free_bars(
            &mut self,
            mmio32: &mut AddressAllocator,
            mmio64: &mut AddressAllocator,
            io: &mut AddressAllocator,
        ) -> Result<(), PciDeviceError>;
        fn write_config_register(
            &mut self,
            reg_idx: usize,
            offset: u64,
            data: &[u8],
        ) -> (Vec<BarReprogrammingParams>, Option<Arc<Barrier>>);
        fn read_config_register(&mut self, reg_idx: usize) -> u32;
        fn read_bar(&mut self, base: u64, offset: u64, data: &mut [u8]);
        fn write_bar(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<Arc<Barrier>>;
        fn move_bar(&mut self, old_base: u64, new_base: u64) -> io::Result<()>;
        fn restore_bar_addr(&mut self, params: &BarReprogrammingParams);
        fn as_any_mut(&mut self) -> &mut dyn Any;
    }
}

use ch::{
    AddressAllocator, BarReprogrammingParams, PciBarConfiguration, PciBarRegionType, PciDevice,
    PciDeviceError,
};

// ---- ADAPTER BEGIN ----
/// `VfioUserPciDevice` as the VMM's `PciDevice`. It keeps no state: the device knows its
/// BARs, and the VMM places every BAR before the guest runs, so that a relocation always
/// has an old base to find the BAR by.
pub struct ChAdapter(pub VfioUserPciDevice);

fn region_type(kind: BarKind) -> PciBarRegionType {
    match kind {
        BarKind::Io => PciBarRegionType::IoRegion,
        BarKind::Memory64 => PciBarRegionType::Memory64BitRegion,
        BarKind::Memory32 | BarKind::Rom => PciBarRegionType::Memory32BitRegion,
    }
}

/// The allocator a BAR's addresses come from.
fn allocator<'a>(
    kind: BarKind,
    mmio32: &'a mut AddressAllocator,
    mmio64: &'a mut AddressAllocator,
    io: &'a mut AddressAllocator,
) -> &'a mut AddressAllocator {
    match region_type(kind) {
        PciBarRegionType::IoRegion => io,
        PciBarRegionType::Memory64BitRegion => mmio64,
        PciBarRegionType::Memory32BitRegion => mmio32,
    }
}

impl ChAdapter {
    /// The BAR whose window starts at `base`, in either space (the VMM's calls do not say).
    fn bar_based_at(&self, base: u64) -> Option<BarInfo> {
        [BarSpace::Memory, BarSpace::Io]
            .into_iter()
            .filter_map(|space| self.0.bar_at(space, base))
            .find_map(|(bar, offset)| (offset == 0).then_some(bar))
    }
}

impl PciDevice for ChAdapter {
    fn allocate_bars(
        &mut self,
        mmio32: &mut AddressAllocator,
        mmio64: &mut AddressAllocator,
        io: &mut AddressAllocator,
    ) -> Result<Vec<PciBarConfiguration>, PciDeviceError> {
        let placed = self.0.allocate_bars(|bar| {
            allocator(bar.kind, mmio32, mmio64, io).allocate(bar.size, bar.size)
        });
        let placed = placed.map_err(|e| PciDeviceError(e.to_string()))?;
        let config = |r: &BarReprogramming| PciBarConfiguration {
            idx: r.bar as usize,
            addr: r.new_base,
            size: r.len,
            region_type: region_type(r.kind),
        };
        Ok(placed.iter().map(config).collect())
    }

    fn free_bars(
        &mut self,
        mmio32: &mut AddressAllocator,
        mmio64: &mut AddressAllocator,
        io: &mut AddressAllocator,
    ) -> Result<(), PciDeviceError> {
        for bar in self.0.free_bars() {
            let base = bar.base.unwrap_or_default();
            allocator(bar.kind, mmio32, mmio64, io).free(base, bar.size);
        }
        Ok(())
    }

    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> (Vec<BarReprogrammingParams>, Option<Arc<Barrier>>) {
        let moves = self.0.write_config_register(reg_idx, offset, data);
        let params = |r: &BarReprogramming| BarReprogrammingParams {
            old_base: r.old_base.unwrap_or_default(),
            new_base: r.new_base,
            len: r.len,
            region_type: region_type(r.kind),
        };
        (moves.iter().map(params).collect(), None)
    }

    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.0.read_config_register(reg_idx)
    }

    fn read_bar(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        match self.bar_based_at(base) {
            Some(bar) => self.0.bar_read(bar.index, offset, data),
            None => data.fill(0xff),
        }
    }

    fn write_bar(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<Arc<Barrier>> {
        if let Some(bar) = self.bar_based_at(base) {
            self.0.bar_write(bar.index, offset, data);
        }
        None
    }

    fn move_bar(&mut self, old_base: u64, new_base: u64) -> io::Result<()> {
        let bar = self.bar_based_at(old_base).ok_or(io::ErrorKind::NotFound)?;
        self.0
            .move_bar(bar.index, new_base)
            .map_err(io::Error::other)?;
        Ok(())
    }

    fn restore_bar_addr(&mut self, p: &BarReprogrammingParams) {
        // At the old base when the VMM could not carry the move out, else at the new one.
        let Some(bar) = self
            .bar_based_at(p.old_base)
            .or_else(|| self.bar_based_at(p.new_base))
        else {
            return;
        };
        let relocation = BarReprogramming {
            bar: bar.index,
            old_base: Some(p.old_base).filter(|b| *b != 0),
            new_base: p.new_base,
            len: bar.size,
            kind: bar.kind,
        };
        if let Err(e) = self.0.restore_bar(&relocation) {
            eprintln!("restoring BAR {} at {:#x}: {e}", bar.index, p.old_base);
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
// ---- ADAPTER END ----

type Device = Arc<Mutex<dyn PciDevice>>;

/// A bus of BAR windows, routing by address. Its lock is held only to look a window up or
/// change the map, never across a device call.
#[derive(Default)]
struct Bus {
    windows: Mutex<Vec<(u64, u64, Device)>>,
}

impl Bus {
    fn insert(&self, base: u64, len: u64, dev: Device) -> Result<(), String> {
        let mut w = lock(&self.windows);
        if w.iter().any(|(b, l, _)| base < b + l && *b < base + len) {
            return Err(format!("{base:#x} overlaps a window"));
        }
        w.push((base, len, dev));
        Ok(())
    }

    /// Moves the window at `old` to `new`, unless it would overlap another.
    fn relocate(&self, old: u64, new: u64, len: u64) -> Result<(), String> {
        let mut w = lock(&self.windows);
        if w.iter()
            .any(|(b, l, _)| *b != old && new < b + l && *b < new + len)
        {
            return Err(format!("{new:#x} overlaps a window"));
        }
        let window = w.iter_mut().find(|(b, _, _)| *b == old);
        window.ok_or("no window there")?.0 = new;
        Ok(())
    }

    fn window(&self, addr: u64) -> Option<(u64, Device)> {
        let w = lock(&self.windows);
        w.iter()
            .find(|(b, l, _)| (*b..b + l).contains(&addr))
            .map(|(b, _, d)| (*b, d.clone()))
    }

    fn read(&self, addr: u64, data: &mut [u8]) {
        match self.window(addr) {
            Some((base, dev)) => lock(&dev).read_bar(base, addr - base, data),
            None => data.fill(0xff),
        }
    }

    fn write(&self, addr: u64, data: &[u8]) {
        if let Some((base, dev)) = self.window(addr) {
            lock(&dev).write_bar(base, addr - base, data);
        }
    }
}

struct Allocators {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    io: AddressAllocator,
}

/// A VMM of Cloud Hypervisor's shape: allocators, buses, config mechanism #1.
struct Vmm {
    mmio: Bus,
    pio: Bus,
    allocators: Mutex<Allocators>,
    config_address: Mutex<u32>,
    slots: Mutex<HashMap<u32, Device>>,
    /// Relocations the buses refused, rolled back with `restore_bar_addr`.
    refused: Mutex<Vec<BarReprogrammingParams>>,
}

const CONFIG_ADDRESS: u64 = 0xcf8;
const SLOT: u32 = 3;

impl Vmm {
    fn new() -> Vmm {
        Vmm {
            mmio: Bus::default(),
            pio: Bus::default(),
            allocators: Mutex::new(Allocators {
                mmio32: AddressAllocator::new(0xc000_0000, 0x1000_0000),
                mmio64: AddressAllocator::new(1 << 36, 1 << 32),
                io: AddressAllocator::new(0x1000, 0x1000),
            }),
            config_address: Mutex::new(0),
            slots: Mutex::new(HashMap::new()),
            refused: Mutex::new(Vec::new()),
        }
    }

    fn bus(&self, region_type: PciBarRegionType) -> &Bus {
        match region_type {
            PciBarRegionType::IoRegion => &self.pio,
            _ => &self.mmio,
        }
    }

    /// Plugs `dev` into `SLOT`: its BARs are allocated and their windows registered.
    fn plug(&self, dev: Device) -> Vec<PciBarConfiguration> {
        let bars = {
            let a = &mut *lock(&self.allocators);
            lock(&dev)
                .allocate_bars(&mut a.mmio32, &mut a.mmio64, &mut a.io)
                .unwrap()
        };
        for b in &bars {
            let bus = self.bus(b.region_type);
            bus.insert(b.addr, b.size, dev.clone()).unwrap();
        }
        lock(&self.slots).insert(SLOT, dev);
        bars
    }

    /// Takes `SLOT`'s device off the buses and frees its BARs.
    fn unplug(&self) {
        let dev = lock(&self.slots).remove(&SLOT).unwrap();
        for bus in [&self.mmio, &self.pio] {
            lock(&bus.windows).retain(|(_, _, d)| !Arc::ptr_eq(d, &dev));
        }
        let a = &mut *lock(&self.allocators);
        lock(&dev)
            .free_bars(&mut a.mmio32, &mut a.mmio64, &mut a.io)
            .unwrap();
    }

    fn selected(&self) -> Option<(Device, usize)> {
        let a = *lock(&self.config_address);
        let (enabled, bus, slot, function) =
            (a >> 31, (a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 7);
        if enabled != 1 || bus != 0 || function != 0 {
            return None;
        }
        let dev = lock(&self.slots).get(&slot).cloned()?;
        Some((dev, ((a >> 2) & 0x3f) as usize))
    }

    fn config_read(&self) -> u32 {
        self.selected()
            .map_or(u32::MAX, |(dev, reg)| lock(&dev).read_config_register(reg))
    }

    /// A config write, and the BAR relocations it asks for: the window moves on its bus
    /// and the device is told, or the device rolls the BAR back.
    fn config_write(&self, offset: u64, data: &[u8]) {
        let Some((dev, reg)) = self.selected() else {
            return;
        };
        let mut dev_guard = lock(&dev);
        let dev = &mut *dev_guard;
        let (moves, _barrier) = dev.write_config_register(reg, offset, data);
        for m in moves {
            let bus = self.bus(m.region_type);
            match bus.relocate(m.old_base, m.new_base, m.len) {
                Ok(()) => dev.move_bar(m.old_base, m.new_base).unwrap(),
                Err(_) => {
                    dev.restore_bar_addr(&m);
                    lock(&self.refused).push(m);
                }
            }
        }
    }

    // The guest's accesses.
    fn pio_write(&self, port: u64, data: &[u8]) {
        match port {
            CONFIG_ADDRESS => {
                if let Ok(v) = <[u8; 4]>::try_from(data) {
                    *lock(&self.config_address) = u32::from_le_bytes(v);
                }
            }
            p if (CONFIG_ADDRESS + 4..CONFIG_ADDRESS + 8).contains(&p) => {
                self.config_write(p - CONFIG_ADDRESS - 4, data)
            }
            _ => self.pio.write(port, data),
        }
    }

    fn pio_read(&self, port: u64, data: &mut [u8]) {
        let (value, at) = match port {
            CONFIG_ADDRESS => (*lock(&self.config_address), 0),
            p if (CONFIG_ADDRESS + 4..CONFIG_ADDRESS + 8).contains(&p) => {
                (self.config_read(), (p - CONFIG_ADDRESS - 4) as usize)
            }
            _ => return self.pio.read(port, data),
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(at + i).copied().unwrap_or(0xff);
        }
    }

    fn out32(&self, port: u64, v: u32) {
        self.pio_write(port, &v.to_le_bytes());
    }

    fn out16(&self, port: u64, v: u16) {
        self.pio_write(port, &v.to_le_bytes());
    }

    fn in32(&self, port: u64) -> u32 {
        let mut b = [0u8; 4];
        self.pio_read(port, &mut b);
        u32::from_le_bytes(b)
    }

    fn cfg_read(&self, cfg: u32, offset: u32) -> u32 {
        self.out32(CONFIG_ADDRESS, cfg | offset);
        self.in32(CONFIG_ADDRESS + 4)
    }

    fn cfg_write(&self, cfg: u32, offset: u32, v: u32) {
        self.out32(CONFIG_ADDRESS, cfg | offset);
        self.out32(CONFIG_ADDRESS + 4, v);
    }

    fn mmio_read32(&self, addr: u64) -> u32 {
        let mut b = [0u8; 4];
        self.mmio.read(addr, &mut b);
        u32::from_le_bytes(b)
    }

    fn mmio_write32(&self, addr: u64, v: u32) {
        self.mmio.write(addr, &v.to_le_bytes());
    }
}

/// Where the guest moves BAR0 and BAR2, as the example VMM's guest does.
const BAR0_GUEST: u64 = 0xd_0000;
const BAR2_GUEST: u64 = 0xe_0000;
const SOURCE: u64 = 0x2000;
const DESTINATION: u64 = 0x3000;
const COPY_LEN: usize = 64;
const BUFFER_WORD: u32 = 0x5a17_cafe;

/// The DMA engine's server, guest memory with the source buffer, and the VMM with the
/// engine plugged in through the adapter.
struct Setup {
    server: ServerHandle,
    engine: DmaEngineHandle,
    memory: Arc<GuestMemoryMmap>,
    irqs: Arc<Irqs>,
    vmm: Vmm,
    adapter: Arc<Mutex<ChAdapter>>,
    bars: Vec<PciBarConfiguration>,
}

fn pattern() -> Vec<u8> {
    (0..COPY_LEN).map(|i| (i as u8).wrapping_mul(37)).collect()
}

fn plugged() -> Setup {
    let (engine, handle) = DmaEngine::with_options(DmaEngineOptions {
        doorbell_ioeventfd: true,
        buffer_bar: true,
    })
    .unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(engine))
        .listen_temp()
        .unwrap();
    let memory = guest_memory(1 << 16);
    let irqs = Irqs::new();
    let dev = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        memory.clone(),
        irqs.clone(),
        &AttachOptions::default(),
    )
    .unwrap();
    memory
        .write_slice(&pattern(), GuestAddress(SOURCE))
        .unwrap();
    // BARs from the VMM's allocators, windows on its buses.
    let vmm = Vmm::new();
    let adapter = Arc::new(Mutex::new(ChAdapter(dev)));
    let bars = vmm.plug(adapter.clone());
    Setup {
        server,
        engine: handle,
        memory,
        irqs,
        vmm,
        adapter,
        bars,
    }
}

impl Setup {
    fn bar(&self, idx: usize) -> PciBarConfiguration {
        *self.bars.iter().find(|b| b.idx == idx).unwrap()
    }

    /// The copy landed, its MSI-X interrupt fired, the server holds the buffer word.
    fn check_engine_run(&self) {
        let mut copy = vec![0u8; COPY_LEN];
        self.memory
            .read_slice(&mut copy, GuestAddress(DESTINATION))
            .unwrap();
        assert_eq!(copy, pattern());
        assert!(fired(&self.irqs.fd(InterruptKind::Msix, 0)));
        assert_eq!(self.engine.buffer()[0x10..0x14], BUFFER_WORD.to_le_bytes());
    }

    /// Unplug: off the buses, BARs freed where they are now, detached.
    fn unplug(self) {
        self.vmm.unplug();
        let a = lock(&self.vmm.allocators);
        assert_eq!(a.mmio32.freed, [(BAR0_GUEST, 256), (BAR2_GUEST, 4096)]);
        assert_eq!(a.io.freed, [(self.bar(1).addr, self.bar(1).size)]);
        drop(a);
        assert!(lock(&self.vmm.mmio.windows).is_empty());
        assert!(lock(&self.vmm.pio.windows).is_empty());
        let adapter = Arc::try_unwrap(self.adapter).ok().unwrap();
        let adapter = adapter.into_inner().unwrap();
        assert_eq!(adapter.0.error_count(), 0, "{:?}", adapter.0.last_error());
        adapter.0.detach().unwrap();
        self.server.stop();
    }
}

#[test]
fn dma_engine_runs_behind_a_cloud_hypervisor_shaped_pci_device() {
    let s = plugged();
    let (vmm, adapter, bar) = (&s.vmm, &s.adapter, |i| s.bar(i));
    assert_eq!(
        (bar(0).addr, bar(0).size, bar(0).region_type),
        (0xc000_0000, 256, PciBarRegionType::Memory32BitRegion)
    );
    assert_eq!(bar(1).region_type, PciBarRegionType::IoRegion);
    assert_eq!(bar(1).addr % bar(1).size, 0, "I/O BARs are aligned too");
    assert_eq!(bar(2).size, DmaEngine::BUFFER_SIZE);

    // The guest finds the engine and sees the VMM's placement.
    let id = u32::from(DmaEngine::DEVICE_ID) << 16 | u32::from(DmaEngine::VENDOR_ID);
    let slot = (0..32u32)
        .find(|s| vmm.cfg_read(0x8000_0000 | s << 11, 0) == id)
        .unwrap();
    assert_eq!(slot, SLOT);
    let cfg = 0x8000_0000 | slot << 11;
    assert_eq!(u64::from(vmm.cfg_read(cfg, 0x10)), bar(0).addr);
    assert_eq!(u64::from(vmm.cfg_read(cfg, 0x14) & !3), bar(1).addr);

    // It moves BAR0 and BAR2 while decoding is off; they move when it turns decoding on.
    vmm.cfg_write(cfg, 0x10, BAR0_GUEST as u32);
    vmm.cfg_write(cfg, 0x18, BAR2_GUEST as u32);
    let mut cap = vmm.cfg_read(cfg, 0x34) & 0xfc;
    while vmm.cfg_read(cfg, cap) & 0xff != 0x11 {
        cap = (vmm.cfg_read(cfg, cap) >> 8) & 0xfc;
    }
    let table = u64::from(vmm.cfg_read(cfg, cap + 4) & !7);
    vmm.cfg_write(cfg, 0x04, 0x0007);
    {
        let mut a = lock(adapter);
        let placed: Vec<(u32, Option<u64>)> =
            a.0.bars().iter().map(|b| (b.index, b.base)).collect();
        assert_eq!(
            placed,
            [
                (0, Some(BAR0_GUEST)),
                (1, Some(bar(1).addr)),
                (2, Some(BAR2_GUEST))
            ]
        );
        assert!(a.as_any_mut().downcast_mut::<ChAdapter>().is_some());
    }

    // A move the buses refuse (onto BAR2) is rolled back: the guest reads the old address.
    vmm.cfg_write(cfg, 0x10, BAR2_GUEST as u32);
    assert_eq!(
        *lock(&vmm.refused),
        [BarReprogrammingParams {
            old_base: BAR0_GUEST,
            new_base: BAR2_GUEST,
            len: 256,
            region_type: PciBarRegionType::Memory32BitRegion,
        }]
    );
    assert_eq!(u64::from(vmm.cfg_read(cfg, 0x10)), BAR0_GUEST);

    // MSI-X vector 0 in the emulated table, MSI-X on.
    for (i, v) in [0xfee0_0000u32, 0, 0x31, 0].iter().enumerate() {
        vmm.mmio_write32(BAR0_GUEST + table + 4 * i as u64, *v);
    }
    vmm.out32(CONFIG_ADDRESS, cfg | cap);
    vmm.out16(CONFIG_ADDRESS + 6, 0x8000);

    // The copy, programmed through BAR0 at the guest's address; read back through BAR1.
    let regs = [
        (DmaEngine::REG_SOURCE, SOURCE as u32),
        (DmaEngine::REG_SOURCE + 4, 0),
        (DmaEngine::REG_DESTINATION, DESTINATION as u32),
        (DmaEngine::REG_DESTINATION + 4, 0),
        (DmaEngine::REG_LENGTH, COPY_LEN as u32),
        (DmaEngine::REG_LENGTH + 4, 0),
    ];
    for (reg, v) in regs {
        vmm.mmio_write32(BAR0_GUEST + reg, v);
    }
    assert_eq!(vmm.in32(bar(1).addr + DmaEngine::REG_SOURCE), SOURCE as u32);
    vmm.mmio_write32(BAR0_GUEST + DmaEngine::REG_DOORBELL, 1);
    assert_eq!(vmm.mmio_read32(BAR0_GUEST + DmaEngine::REG_STATUS), 1);
    vmm.mmio_write32(BAR2_GUEST + 0x10, BUFFER_WORD);
    assert_eq!(vmm.mmio_read32(BAR2_GUEST + 0x10), BUFFER_WORD);

    s.check_engine_run();

    // The VMM moves BAR2 on its own, by address, then rolls the move back.
    let moved = BarReprogrammingParams {
        old_base: BAR2_GUEST,
        new_base: 0xf_0000,
        len: DmaEngine::BUFFER_SIZE,
        region_type: PciBarRegionType::Memory32BitRegion,
    };
    vmm.mmio.relocate(BAR2_GUEST, 0xf_0000, moved.len).unwrap();
    lock(adapter).move_bar(BAR2_GUEST, 0xf_0000).unwrap();
    assert_eq!(vmm.cfg_read(cfg, 0x18), 0xf_0000);
    assert_eq!(vmm.mmio_read32(0xf_0010), BUFFER_WORD);
    vmm.mmio.relocate(0xf_0000, BAR2_GUEST, moved.len).unwrap();
    lock(adapter).restore_bar_addr(&moved);
    assert_eq!(u64::from(vmm.cfg_read(cfg, 0x18)), BAR2_GUEST);
    assert_eq!(vmm.mmio_read32(BAR2_GUEST + 0x10), BUFFER_WORD);
    assert!(
        lock(adapter).move_bar(0x1234_0000, 0).is_err(),
        "no BAR there"
    );

    s.unplug();
}

/// The example VMM's real-mode guest in a KVM vCPU, its port and MMIO exits on the
/// Cloud Hypervisor-shaped VMM's buses (so BAR accesses reach the device through the
/// adapter's `read_bar` / `write_bar`).
#[test]
fn kvm_guest_drives_the_dma_engine_through_the_adapter() {
    use kvm_ioctls::VcpuExit;
    use vm_memory::GuestMemoryBackend;

    if kvm::skip(
        "kvm_guest_drives_the_dma_engine_through_the_adapter",
        vmm::kvm_unavailable(),
    ) {
        return;
    }
    let s = plugged();
    let vm = kvm_ioctls::Kvm::new().unwrap().create_vm().unwrap();
    vm.set_tss_address(0xfffb_d000).unwrap();
    let ram = 1u64 << 16;
    let host = s.memory.get_host_address(GuestAddress(0)).unwrap() as u64;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: ram,
        userspace_addr: host,
    };
    // SAFETY: `host..host + ram` is the guest memory mapping, which `s` keeps until after
    // the VM (dropped at the end of this function, before `s`) is gone.
    unsafe { vm.set_user_memory_region(region) }.unwrap();
    s.memory
        .write_slice(vmm::GUEST_CODE, GuestAddress(0x1000))
        .unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    (sregs.cs.base, sregs.cs.selector) = (0, 0);
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    (regs.rip, regs.rflags) = (0x1000, 2);
    vcpu.set_regs(&regs).unwrap();
    let mut exits = 0;
    loop {
        exits += 1;
        assert!(exits < 100_000, "the guest does not halt");
        match vcpu.run().unwrap() {
            VcpuExit::IoIn(port, data) => s.vmm.pio_read(port.into(), data),
            VcpuExit::IoOut(port, data) => s.vmm.pio_write(port.into(), data),
            VcpuExit::MmioRead(addr, data) => s.vmm.mmio.read(addr, data),
            VcpuExit::MmioWrite(addr, data) => s.vmm.mmio.write(addr, data),
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    // The guest's mailbox: done, the slot it found, the engine's status, the buffer word.
    let mailbox = |at: u64| s.memory.read_obj::<u32>(GuestAddress(0x500 + at)).unwrap();
    assert_eq!(mailbox(0) & 0xffff, 0x600d, "the guest finished");
    assert_eq!(mailbox(4), SLOT);
    assert_eq!(mailbox(12), 1, "engine done");
    assert_eq!(mailbox(16), BUFFER_WORD);
    s.check_engine_run();
    // The guest moved BAR0 and BAR2 from where the VMM allocated them.
    let bases: Vec<Option<u64>> = lock(&s.adapter).0.bars().iter().map(|b| b.base).collect();
    assert_eq!(
        bases,
        [Some(BAR0_GUEST), Some(s.bar(1).addr), Some(BAR2_GUEST)]
    );
    drop(vcpu);
    drop(vm);
    s.unplug();
}
