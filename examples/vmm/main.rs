// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A small VMM built from rust-vmm crates that hot-plugs a `VfioUserPciDevice` and lets a
//! guest drive it.
//!
//! * guest RAM: vm-memory `GuestMemoryMmap` over a memfd (shared with the server, which
//!   maps it for DMA);
//! * buses: vm-device's `IoManager`, with a PCI host bridge on ports 0xCF8..0xCFF (config
//!   mechanism #1) and the device's BAR windows registered where the guest puts them. A BAR
//!   address the buses cannot take (an I/O BAR above 0xFFFF, a window overlapping another)
//!   is logged and the BAR left unmapped (`PciConfig::unmap_bar`); the guest keeps running;
//! * locking: the host bridge holds no lock while it calls into a device, so a config access
//!   that waits for a slow server (a round trip, at worst the reply timeout, 5 s by default)
//!   blocks only that vCPU and that device; other vCPUs keep reaching the bridge and other
//!   devices;
//! * events: an event-manager `EventManager` on its own thread; the device's subscriber is
//!   added to it at hot-plug through its remote endpoint and removed at unplug;
//! * the guest: with a usable `/dev/kvm`, real-mode code (`guest.S`) in a KVM vCPU whose
//!   port and MMIO exits reach the buses; without it, the same steps as a Rust "guest
//!   driver" on the same buses.
//!
//! * memory slots and doorbells (with KVM): the VMM implements `GuestSlots` with KVM user
//!   memory regions and KVM ioeventfds, and the device installs, moves and removes them
//!   itself (`VfioUserPciDevice::manage_slots`);
//!
//! The device is the sample DMA engine, with its doorbell ioeventfd and its mappable buffer
//! BAR. The guest finds it, places BAR0 and BAR2 below 1 MiB, enables memory decoding and
//! MSI-X (vector 0 programmed in the emulated table), rings the engine's doorbell to copy a
//! buffer, and writes and reads back a word of the engine's BAR2 buffer; the VMM then
//! checks the copy in guest memory, that vector 0's eventfd fired (a KVM VMM would have
//! registered it as an irqfd), and that the server sees the word. With KVM the doorbell
//! write and the buffer accesses reach the server without an exit to the VMM: the report
//! counts the exits per access.
//!
//! `cargo run --example vmm` (add `-- --rust-guest` to skip KVM). With `-- --migrate` the
//! guest loops on the engine instead and is live-migrated mid-loop to a second VMM instance
//! with a second server (see [`migrate`]); the example prints the downtime.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, MutEventSubscriber, RemoteEndpoint, SubscriberId};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vfio_user_client::pci::{
    AttachOptions, BarKind, BarMapping, BarReprogramming, BarSpace, Doorbell, GuestSlots,
    InterruptKind, InterruptProvider, PciConfig, VfioUserPciDevice,
};
use vfio_user_sample_server::{
    DmaEngine, DmaEngineHandle, DmaEngineOptions, Server, ServerConfig, ServerHandle,
};
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioAddressOffset, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::DevicePio;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[path = "migrate.rs"]
pub mod migrate;

type BoxError = Box<dyn Error + Send + Sync>;
type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Guest RAM: 64 KiB at 0, so that 0xd0000 is free for the BAR.
const RAM_SIZE: usize = 0x1_0000;
const CODE: u64 = 0x1000;
const SOURCE: u64 = 0x2000;
const DESTINATION: u64 = 0x3000;
const COPY_LEN: usize = 64;
/// The guest's mailbox: 0x500 status word, 0x504 slot, 0x508 MSI-X capability, 0x50c engine
/// status.
const MAILBOX: u64 = 0x500;
/// What the guest stores at the mailbox when it is done.
const GUEST_DONE: u16 = 0x600d;
/// The slot of bus 0 the device is plugged into.
const SLOT: u32 = 3;
/// Where the guest places BAR0 (below 1 MiB, for real mode).
const BAR0_GUEST: u64 = 0xd_0000;
const CONFIG_ADDRESS: u16 = 0xcf8;
/// Guest exits after which a run is declared stuck.
const MAX_EXITS: usize = 100_000;
/// Where the guest places BAR2, the engine's buffer (a memory slot with KVM).
const BAR2_GUEST: u64 = 0xe_0000;
/// Where in the buffer the guest writes [`BUFFER_WORD`], and reads it back to 0x510.
const BUFFER_OFFSET: u64 = 0x10;
const BUFFER_WORD: u32 = 0x5a17_cafe;
/// Guest accesses to the buffer (a write and a read) and to the doorbell (a write).
const BUFFER_ACCESSES: usize = 2;
const DOORBELL_ACCESSES: usize = 1;

/// `guest.S`, assembled (see the file for the commands).
pub const GUEST_CODE: &[u8] = &[
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x66, 0x31, 0xdb, 0x66, 0x89, 0xd8, 0x66, 0xc1, 0xe0, 0x0b, 0x66,
    0x0d, 0x00, 0x00, 0x00, 0x80, 0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0xed, 0x66,
    0x3d, 0x4f, 0x49, 0x4a, 0x0d, 0x74, 0x0f, 0x66, 0x43, 0x66, 0x83, 0xfb, 0x20, 0x75, 0xd9, 0xc7,
    0x06, 0x00, 0x05, 0xad, 0xde, 0xf4, 0x66, 0x89, 0x1e, 0x04, 0x05, 0x66, 0x89, 0xd9, 0x66, 0xc1,
    0xe1, 0x0b, 0x66, 0x81, 0xc9, 0x00, 0x00, 0x00, 0x80, 0x66, 0x89, 0xc8, 0x66, 0x83, 0xc8, 0x10,
    0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0xb8, 0x00, 0x00, 0x0d, 0x00, 0x66, 0xef,
    0x66, 0x89, 0xc8, 0x66, 0x83, 0xc8, 0x18, 0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66,
    0xb8, 0x00, 0x00, 0x0e, 0x00, 0x66, 0xef, 0x66, 0x89, 0xc8, 0x66, 0x83, 0xc8, 0x34, 0xba, 0xf8,
    0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0xed, 0x66, 0x25, 0xfc, 0x00, 0x00, 0x00, 0x66, 0x89,
    0xc6, 0x66, 0x85, 0xf6, 0x74, 0x21, 0x66, 0x89, 0xc8, 0x66, 0x09, 0xf0, 0xba, 0xf8, 0x0c, 0x66,
    0xef, 0xba, 0xfc, 0x0c, 0x66, 0xed, 0x3c, 0x11, 0x74, 0x14, 0x66, 0x0f, 0xb6, 0xf4, 0x66, 0x81,
    0xe6, 0xfc, 0x00, 0x00, 0x00, 0xeb, 0xda, 0xc7, 0x06, 0x00, 0x05, 0xd1, 0xba, 0xf4, 0x66, 0x89,
    0x36, 0x08, 0x05, 0x66, 0x89, 0xc8, 0x66, 0x09, 0xf0, 0x66, 0x83, 0xc0, 0x04, 0xba, 0xf8, 0x0c,
    0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0xed, 0x66, 0x83, 0xe0, 0xf8, 0x66, 0x89, 0xc7, 0x66, 0x89,
    0xc8, 0x66, 0x83, 0xc8, 0x04, 0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0xb8, 0x06, 0x00,
    0xef, 0xb8, 0x00, 0xd0, 0x8e, 0xd8, 0x66, 0xc7, 0x05, 0x00, 0x00, 0xe0, 0xfe, 0x66, 0xc7, 0x45,
    0x04, 0x00, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x45, 0x08, 0x31, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x45,
    0x0c, 0x00, 0x00, 0x00, 0x00, 0x31, 0xc0, 0x8e, 0xd8, 0x66, 0x89, 0xc8, 0x66, 0x09, 0xf0, 0xba,
    0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfe, 0x0c, 0xb8, 0x00, 0x80, 0xef, 0xb8, 0x00, 0xd0, 0x8e, 0xd8,
    0x66, 0xc7, 0x06, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x04, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x66, 0xc7, 0x06, 0x08, 0x00, 0x00, 0x30, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x0c, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x10, 0x00, 0x40, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x06,
    0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x18, 0x00, 0x01, 0x00, 0x00, 0x00, 0x66,
    0xa1, 0x1c, 0x00, 0x31, 0xdb, 0x8e, 0xdb, 0x66, 0xa3, 0x0c, 0x05, 0xb8, 0x00, 0xe0, 0x8e, 0xd8,
    0x66, 0xc7, 0x06, 0x10, 0x00, 0xfe, 0xca, 0x17, 0x5a, 0x66, 0xa1, 0x10, 0x00, 0x31, 0xdb, 0x8e,
    0xdb, 0x66, 0xa3, 0x10, 0x05, 0xc7, 0x06, 0x00, 0x05, 0x0d, 0x60, 0xf4,
];

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The device's interrupts: one eventfd per vector. A KVM VMM would hand out irqfds here and
/// program its MSI routes in `InterruptProvider::update`.
#[derive(Default)]
pub struct Interrupts {
    fds: Mutex<HashMap<(InterruptKind, u32), Arc<EventFd>>>,
}

impl Interrupts {
    /// The eventfd of `vector` of `kind`.
    pub fn fd(&self, kind: InterruptKind, vector: u32) -> io::Result<Arc<EventFd>> {
        let mut fds = lock(&self.fds);
        if let Some(fd) = fds.get(&(kind, vector)) {
            return Ok(fd.clone());
        }
        let fd = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        fds.insert((kind, vector), fd.clone());
        Ok(fd)
    }
}

impl InterruptProvider for Interrupts {
    fn eventfd(&self, kind: InterruptKind, vector: u32) -> Option<Arc<EventFd>> {
        self.fd(kind, vector).ok()
    }
}

/// The PCI host bridge of bus 0: config mechanism #1 on ports 0xCF8 (address) and
/// 0xCFC..0xCFF (data).
///
/// It implements vm-device's shared `DevicePio` with locks of its own, each held only to
/// look something up: a config access locks just the device it reaches, so a device waiting
/// for its server holds up neither the bridge nor the other devices. (Registered as
/// `Mutex<PciRoot>` through the blanket impl, the bridge's lock would be held across every
/// device's round trip.)
#[derive(Default)]
struct PciRoot {
    address: Mutex<u32>,
    slots: Mutex<HashMap<u32, Arc<Mutex<VfioUserPciDevice>>>>,
    /// BAR moves the guest asked for; the VMM applies them after the exit (the buses cannot
    /// be changed from inside a bus access).
    moves: Mutex<Vec<(u32, BarReprogramming)>>,
}

impl PciRoot {
    /// The slot and register the address register selects, when enabled and on bus 0,
    /// function 0.
    fn target(&self) -> Option<(u32, usize)> {
        let a = *lock(&self.address);
        let (enabled, bus, slot, function) = (
            a >> 31 == 1,
            (a >> 16) & 0xff,
            (a >> 11) & 0x1f,
            (a >> 8) & 7,
        );
        (enabled && bus == 0 && function == 0).then_some((slot, ((a >> 2) & 0x3f) as usize))
    }

    /// The device the address register selects (the bridge's locks released), and the
    /// register.
    fn selected(&self) -> Option<(Arc<Mutex<VfioUserPciDevice>>, usize)> {
        let (slot, reg) = self.target()?;
        let dev = lock(&self.slots).get(&slot).cloned()?;
        Some((dev, reg))
    }
}

impl DevicePio for PciRoot {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0xff);
        let offset = usize::from(offset);
        let value = if offset < 4 {
            *lock(&self.address)
        } else {
            let Some((dev, reg)) = self.selected() else {
                return;
            };
            // A statement of its own: the guard is dropped before `dev` is.
            let value = lock(&dev).read_config_register(reg);
            value
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            if let Some(b) = bytes.get(offset % 4 + i) {
                *d = *b;
            }
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let offset = usize::from(offset);
        if offset < 4 {
            if let (0, Ok(v)) = (offset, <[u8; 4]>::try_from(data)) {
                *lock(&self.address) = u32::from_le_bytes(v);
            }
            return;
        }
        let Some((slot, _)) = self.target() else {
            return;
        };
        let Some((dev, reg)) = self.selected() else {
            return;
        };
        let moves = lock(&dev).write_config_register(reg, (offset - 4) as u64, data);
        lock(&self.moves).extend(moves.into_iter().map(|m| (slot, m)));
    }
}

/// An event-manager loop on its own thread, reached through its remote endpoint.
struct EventThread {
    endpoint: RemoteEndpoint<Subscriber>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn event_error(e: event_manager::Error) -> BoxError {
    format!("event manager: {e:?}").into()
}

impl EventThread {
    fn start() -> Result<EventThread, BoxError> {
        let mut manager = EventManager::<Subscriber>::new().map_err(event_error)?;
        let endpoint = manager.remote_endpoint();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vmm-events".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    if let Err(e) = manager.run() {
                        eprintln!("event loop: {e:?}");
                        return;
                    }
                }
            })?;
        Ok(EventThread {
            endpoint,
            stop,
            thread: Some(thread),
        })
    }

    fn add(&self, subscriber: Subscriber) -> Result<SubscriberId, BoxError> {
        self.endpoint
            .call_blocking(move |ops| Ok::<_, event_manager::Error>(ops.add_subscriber(subscriber)))
            .map_err(event_error)
    }

    fn remove(&self, id: SubscriberId) -> Result<(), BoxError> {
        self.endpoint
            .call_blocking(move |ops| ops.remove_subscriber(id).map(drop))
            .map_err(event_error)
    }
}

impl Drop for EventThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.endpoint.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The VMM's KVM memory slots and ioeventfds for the device (`GuestSlots`): the device
/// calls these as its BARs move, decode and go away.
struct KvmSlots {
    vm: Arc<kvm_ioctls::VmFd>,
    state: Mutex<KvmSlotState>,
}

#[derive(Default)]
struct KvmSlotState {
    /// KVM slot numbers in use by guest address; slot 0 is guest RAM.
    slots: HashMap<u64, u32>,
    next_slot: u32,
    /// The ioeventfds registered, by guest address (the eventfd KVM holds).
    ioeventfds: HashMap<u64, EventFd>,
    /// Every call, for the report.
    calls: Vec<String>,
}

impl KvmSlots {
    fn new(vm: Arc<kvm_ioctls::VmFd>) -> KvmSlots {
        KvmSlots {
            vm,
            state: Mutex::new(KvmSlotState {
                next_slot: 1,
                ..KvmSlotState::default()
            }),
        }
    }

    fn set_region(&self, slot: u32, m: &BarMapping, size: u64) -> io::Result<()> {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: if m.writable {
                0
            } else {
                kvm_bindings::KVM_MEM_READONLY
            },
            guest_phys_addr: m.guest_addr,
            memory_size: size,
            userspace_addr: m.host_addr,
        };
        // SAFETY: `m.host_addr .. + m.size` is the device's mapping of a BAR area, which
        // the device keeps mapped until it has removed this slot (GuestSlots' contract:
        // detach and drop remove every slot before the mappings go); with size 0 the slot is
        // deleted and nothing is mapped.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(io::Error::from)
    }

    fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }
}

impl KvmSlots {
    /// Registers (or unregisters) `event` as a KVM ioeventfd for the doorbell `d`, with its
    /// data match of the doorbell's access size.
    fn doorbell_ioevent(&self, event: &EventFd, d: &Doorbell, register: bool) -> io::Result<()> {
        let addr = match d.space {
            BarSpace::Memory => IoEventAddress::Mmio(d.guest_addr),
            BarSpace::Io => IoEventAddress::Pio(d.guest_addr),
        };
        let vm = &*self.vm;
        match (d.size, d.datamatch) {
            (1, Some(v)) => kvm_ioevent(vm, event, &addr, v as u8, register),
            (2, Some(v)) => kvm_ioevent(vm, event, &addr, v as u16, register),
            (4, Some(v)) => kvm_ioevent(vm, event, &addr, v as u32, register),
            (8, Some(v)) => kvm_ioevent(vm, event, &addr, v, register),
            _ => kvm_ioevent(vm, event, &addr, NoDatamatch, register),
        }
        .map_err(io::Error::from)
    }
}

/// KVM_IOEVENTFD, assigning or deassigning, with a data match of `T`'s size.
fn kvm_ioevent<T: Into<u64>>(
    vm: &kvm_ioctls::VmFd,
    event: &EventFd,
    addr: &IoEventAddress,
    datamatch: T,
    register: bool,
) -> Result<(), kvm_ioctls::Error> {
    if register {
        vm.register_ioevent(event, addr, datamatch)
    } else {
        vm.unregister_ioevent(event, addr, datamatch)
    }
}

impl GuestSlots for KvmSlots {
    fn add_slot(&self, m: &BarMapping) -> io::Result<()> {
        let mut st = lock(&self.state);
        let slot = st.next_slot;
        self.set_region(slot, m, m.size)?;
        st.next_slot += 1;
        st.slots.insert(m.guest_addr, slot);
        st.calls.push(format!(
            "+slot {slot} at {:#x} ({:#x} bytes)",
            m.guest_addr, m.size
        ));
        Ok(())
    }

    fn remove_slot(&self, m: &BarMapping) -> io::Result<()> {
        let mut st = lock(&self.state);
        let slot = st
            .slots
            .remove(&m.guest_addr)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        self.set_region(slot, m, 0)?;
        st.calls
            .push(format!("-slot {slot} at {:#x}", m.guest_addr));
        Ok(())
    }

    fn add_ioeventfd(&self, d: &Doorbell) -> io::Result<()> {
        let fd = d.fd.try_clone()?;
        // SAFETY: `fd` is a fresh duplicate of the server's eventfd, owned by nothing else;
        // the EventFd takes it over.
        let event = unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) };
        self.doorbell_ioevent(&event, d, true)?;
        let mut st = lock(&self.state);
        st.calls.push(format!("+ioeventfd at {:#x}", d.guest_addr));
        st.ioeventfds.insert(d.guest_addr, event);
        Ok(())
    }

    fn remove_ioeventfd(&self, d: &Doorbell) -> io::Result<()> {
        let mut st = lock(&self.state);
        let event = st
            .ioeventfds
            .remove(&d.guest_addr)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        self.doorbell_ioevent(&event, d, false)?;
        st.calls.push(format!("-ioeventfd at {:#x}", d.guest_addr));
        Ok(())
    }
}

/// The KVM VM of a VMM that runs its guest in KVM, and its slots for the device.
struct KvmVm {
    vm: Arc<kvm_ioctls::VmFd>,
    slots: Arc<KvmSlots>,
}

/// A plugged device and where its BAR windows are on the buses.
struct Plugged {
    slot: u32,
    device: Arc<Mutex<VfioUserPciDevice>>,
    subscriber: SubscriberId,
    windows: Vec<(BarKind, u64)>,
}

/// The VMM: guest memory, buses, an event loop, and at most one hot-plugged device.
pub struct Vmm {
    memory: Arc<GuestMemoryMmap>,
    io: IoManager,
    root: Arc<PciRoot>,
    events: EventThread,
    interrupts: Arc<Interrupts>,
    plugged: Option<Plugged>,
    /// BAR moves the buses could not take, and why.
    refused: Vec<(BarReprogramming, String)>,
    /// The KVM VM, when the guest runs in KVM.
    kvm: Option<KvmVm>,
    /// The engine's test handle (what the server sees).
    engine: Option<DmaEngineHandle>,
}

fn memfd_memory(size: usize) -> Result<Arc<GuestMemoryMmap>, BoxError> {
    let name = c"vmm-guest-ram";
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(size as u64)?;
    let memory = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file, 0)),
    )])?;
    Ok(Arc::new(memory))
}

/// A KVM VM with guest RAM in slot 0.
fn kvm_vm(memory: &GuestMemoryMmap) -> Result<KvmVm, BoxError> {
    use vm_memory::GuestMemoryBackend;

    let vm = kvm_ioctls::Kvm::new()?.create_vm()?;
    // Real mode on Intel needs a TSS page outside guest RAM.
    vm.set_tss_address(0xfffb_d000)?;
    let host = memory.get_host_address(GuestAddress(0))? as u64;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: RAM_SIZE as u64,
        userspace_addr: host,
    };
    // SAFETY: `host..host + RAM_SIZE` is the mapping of guest RAM that the VMM's
    // `GuestMemoryMmap` keeps for as long as the VMM, which owns the VM, lives; KVM accesses
    // the guest's memory only through it.
    unsafe { vm.set_user_memory_region(region)? };
    let vm = Arc::new(vm);
    Ok(KvmVm {
        slots: Arc::new(KvmSlots::new(vm.clone())),
        vm,
    })
}

impl Vmm {
    /// Guest RAM, the buses with the PCI host bridge, the event loop, and with `kvm` a KVM
    /// VM whose memory slots and ioeventfds the device manages.
    pub fn new(kvm: bool) -> Result<Vmm, BoxError> {
        let memory = memfd_memory(RAM_SIZE)?;
        let root = Arc::new(PciRoot::default());
        let mut io = IoManager::new();
        io.register_pio(PioRange::new(PioAddress(CONFIG_ADDRESS), 8)?, root.clone())?;
        let kvm = if kvm { Some(kvm_vm(&memory)?) } else { None };
        Ok(Vmm {
            memory,
            io,
            root,
            events: EventThread::start()?,
            interrupts: Arc::new(Interrupts::default()),
            plugged: None,
            refused: Vec::new(),
            kvm,
            engine: None,
        })
    }

    /// Hot-plugs the device served at `socket` into the bus's slot while the event loop
    /// runs. Its BARs are left for the guest to place.
    pub fn hot_plug(&mut self, socket: &Path) -> Result<(), BoxError> {
        let (device, subscriber) = VfioUserPciDevice::attach_with_subscriber(
            socket,
            self.memory.clone(),
            self.interrupts.clone(),
            &AttachOptions::default(),
        )?;
        let mut device = device;
        if let Some(kvm) = &self.kvm {
            device.manage_slots(kvm.slots.clone())?;
        }
        let subscriber = self.events.add(Box::new(subscriber))?;
        let device = Arc::new(Mutex::new(device));
        lock(&self.root.slots).insert(SLOT, device.clone());
        self.plugged = Some(Plugged {
            slot: SLOT,
            device,
            subscriber,
            windows: Vec::new(),
        });
        Ok(())
    }

    /// Carries out the BAR moves the guest asked for: the window moves on its bus, then the
    /// device is told. Guest values never stop the VMM: a move the buses cannot take (an
    /// I/O address above 0xFFFF, a window overlapping another) is logged, the BAR is left
    /// unmapped and the device told so; the vCPU keeps running.
    pub fn apply_bar_moves(&mut self) {
        let moves = std::mem::take(&mut *lock(&self.root.moves));
        for (slot, m) in moves {
            let Some(p) = self.plugged.as_mut().filter(|p| p.slot == slot) else {
                continue;
            };
            if let Err(e) = move_window(&mut self.io, p, &m) {
                eprintln!(
                    "vmm: BAR {} of slot {slot} cannot go to {:#x} ({e}); it stays unmapped",
                    m.bar, m.new_base
                );
                if let Some(old) = m.old_base {
                    deregister(&mut self.io, m.kind, old);
                    p.windows.retain(|w| *w != (m.kind, old));
                }
                if let Err(e) = lock(&p.device).unmap_bar(m.bar) {
                    eprintln!("vmm: unmapping BAR {} of slot {slot}: {e}", m.bar);
                }
                self.refused.push((m, e.to_string()));
            }
        }
    }

    /// The BAR moves the buses could not take so far, and why.
    pub fn refused_moves(&self) -> &[(BarReprogramming, String)] {
        &self.refused
    }

    /// Unplugs the device: off the buses, detached, its subscriber removed.
    pub fn unplug(&mut self) -> Result<(), BoxError> {
        let Some(p) = self.plugged.take() else {
            return Ok(());
        };
        lock(&self.root.slots).remove(&p.slot);
        for (kind, base) in p.windows {
            deregister(&mut self.io, kind, base);
        }
        let device = Arc::try_unwrap(p.device)
            .map_err(|_| "the device is still shared")?
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        device.detach()?;
        self.events.remove(p.subscriber)
    }

    /// A guest port read (all ones where nothing decodes).
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        if self.io.pio_read(PioAddress(port), data).is_err() {
            data.fill(0xff);
        }
    }

    /// A guest port write (dropped where nothing decodes); BAR moves it asks for wait for
    /// [`Vmm::apply_bar_moves`].
    pub fn pio_write(&self, port: u16, data: &[u8]) {
        let _ = self.io.pio_write(PioAddress(port), data);
    }

    /// A guest MMIO read (all ones where nothing decodes).
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if self.io.mmio_read(MmioAddress(addr), data).is_err() {
            data.fill(0xff);
        }
    }

    /// A guest MMIO write (dropped where nothing decodes).
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        let _ = self.io.mmio_write(MmioAddress(addr), data);
    }
}

/// Registers `m`'s new window on its bus, then takes the old one off (first, when the two
/// overlap), then tells the device. On failure the old window may be gone already.
fn move_window(io: &mut IoManager, p: &mut Plugged, m: &BarReprogramming) -> Result<(), BoxError> {
    let register = |io: &mut IoManager| -> Result<(), BoxError> {
        match m.kind {
            BarKind::Io => {
                let port = u16::try_from(m.new_base)
                    .map_err(|_| format!("I/O address {:#x} is above 0xffff", m.new_base))?;
                let len = u16::try_from(m.len)?;
                io.register_pio(PioRange::new(PioAddress(port), len)?, p.device.clone())?;
            }
            _ => io.register_mmio(
                MmioRange::new(MmioAddress(m.new_base), m.len)?,
                p.device.clone(),
            )?,
        }
        Ok(())
    };
    let overlaps_old = m.old_base.is_some_and(|old| {
        old < m.new_base.saturating_add(m.len) && m.new_base < old.saturating_add(m.len)
    });
    if overlaps_old {
        if let Some(old) = m.old_base {
            deregister(io, m.kind, old);
            p.windows.retain(|w| *w != (m.kind, old));
        }
    }
    register(io)?;
    if let Some(old) = m.old_base.filter(|_| !overlaps_old) {
        deregister(io, m.kind, old);
        p.windows.retain(|w| *w != (m.kind, old));
    }
    p.windows.push((m.kind, m.new_base));
    lock(&p.device).move_bar(m.bar, m.new_base)?;
    Ok(())
}

fn deregister(io: &mut IoManager, kind: BarKind, base: u64) {
    match kind {
        BarKind::Io => {
            if let Ok(port) = u16::try_from(base) {
                io.deregister_pio(PioAddress(port));
            }
        }
        _ => {
            io.deregister_mmio(MmioAddress(base));
        }
    }
}

/// The guest's steps as Rust code on the buses (for machines without KVM): exactly what
/// `guest.S` does, one bus access at a time, with the VMM's BAR moves applied after each.
fn run_rust_guest(vmm: &mut Vmm) -> Result<Exits, BoxError> {
    let mut exits = 0usize;
    let out32 = |vmm: &mut Vmm, port: u16, v: u32| -> Result<(), BoxError> {
        vmm.pio_write(port, &v.to_le_bytes());
        vmm.apply_bar_moves();
        Ok(())
    };
    let in32 = |vmm: &Vmm, port: u16| {
        let mut b = [0u8; 4];
        vmm.pio_read(port, &mut b);
        u32::from_le_bytes(b)
    };
    let id = u32::from(DmaEngine::DEVICE_ID) << 16 | u32::from(DmaEngine::VENDOR_ID);
    let mut found = None;
    for slot in 0..32u32 {
        out32(vmm, CONFIG_ADDRESS, 0x8000_0000 | slot << 11)?;
        exits += 2;
        if in32(vmm, CONFIG_ADDRESS + 4) == id {
            found = Some(slot);
            break;
        }
    }
    let slot = found.ok_or("no DMA engine on bus 0")?;
    let cfg = 0x8000_0000 | slot << 11;
    out32(vmm, CONFIG_ADDRESS, cfg | 0x10)?;
    out32(vmm, CONFIG_ADDRESS + 4, BAR0_GUEST as u32)?;
    out32(vmm, CONFIG_ADDRESS, cfg | 0x18)?;
    out32(vmm, CONFIG_ADDRESS + 4, BAR2_GUEST as u32)?;
    out32(vmm, CONFIG_ADDRESS, cfg | 0x34)?;
    let mut cap = in32(vmm, CONFIG_ADDRESS + 4) & 0xfc;
    exits += 7;
    while cap != 0 {
        out32(vmm, CONFIG_ADDRESS, cfg | cap)?;
        let header = in32(vmm, CONFIG_ADDRESS + 4);
        exits += 2;
        if header & 0xff == 0x11 {
            break;
        }
        cap = (header >> 8) & 0xfc;
    }
    if cap == 0 {
        return Err("the DMA engine has no MSI-X capability".into());
    }
    out32(vmm, CONFIG_ADDRESS, (cfg | cap) + 4)?;
    let table = u64::from(in32(vmm, CONFIG_ADDRESS + 4) & !7);
    out32(vmm, CONFIG_ADDRESS, cfg | 0x04)?;
    // Memory decoding on: BAR0 moves now.
    vmm.pio_write(CONFIG_ADDRESS + 4, &0x0006u16.to_le_bytes());
    vmm.apply_bar_moves();
    for (i, v) in [0xfee0_0000u32, 0, 0x31, 0].iter().enumerate() {
        vmm.mmio_write(BAR0_GUEST + table + 4 * i as u64, &v.to_le_bytes());
    }
    out32(vmm, CONFIG_ADDRESS, cfg | cap)?;
    vmm.pio_write(CONFIG_ADDRESS + 6, &0x8000u16.to_le_bytes());
    exits += 11;
    let regs = [
        (DmaEngine::REG_SOURCE, SOURCE as u32),
        (DmaEngine::REG_SOURCE + 4, 0),
        (DmaEngine::REG_DESTINATION, DESTINATION as u32),
        (DmaEngine::REG_DESTINATION + 4, 0),
        (DmaEngine::REG_LENGTH, COPY_LEN as u32),
        (DmaEngine::REG_LENGTH + 4, 0),
        (DmaEngine::REG_DOORBELL, 1),
    ];
    for (reg, v) in regs {
        vmm.mmio_write(BAR0_GUEST + reg, &v.to_le_bytes());
    }
    let mut status = [0u8; 4];
    vmm.mmio_read(BAR0_GUEST + DmaEngine::REG_STATUS, &mut status);
    exits += regs.len() + 1;
    // Without KVM every buffer access is a bus access, a message to the server.
    vmm.mmio_write(BAR2_GUEST + BUFFER_OFFSET, &BUFFER_WORD.to_le_bytes());
    let mut word = [0u8; 4];
    vmm.mmio_read(BAR2_GUEST + BUFFER_OFFSET, &mut word);
    exits += BUFFER_ACCESSES;
    let memory = &vmm.memory;
    memory.write_obj(slot, GuestAddress(MAILBOX + 4))?;
    memory.write_obj(cap, GuestAddress(MAILBOX + 8))?;
    memory.write_obj(u32::from_le_bytes(status), GuestAddress(MAILBOX + 12))?;
    memory.write_obj(u32::from_le_bytes(word), GuestAddress(MAILBOX + 16))?;
    memory.write_obj(GUEST_DONE, GuestAddress(MAILBOX))?;
    Ok(Exits {
        total: exits,
        buffer: BUFFER_ACCESSES,
        doorbell: DOORBELL_ACCESSES,
    })
}

/// The guest's exits to the VMM: all of them, and those of its buffer and doorbell
/// accesses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exits {
    /// Every exit.
    pub total: usize,
    /// Exits of the guest's [`BUFFER_ACCESSES`] accesses to the BAR2 buffer.
    pub buffer: usize,
    /// Exits of the guest's [`DOORBELL_ACCESSES`] doorbell writes.
    pub doorbell: usize,
}

impl Exits {
    /// Counts an MMIO exit at `addr`.
    fn mmio(&mut self, addr: u64, write: bool) {
        if (BAR2_GUEST..BAR2_GUEST + DmaEngine::BUFFER_SIZE).contains(&addr) {
            self.buffer += 1;
        }
        if write && addr == BAR0_GUEST + DmaEngine::REG_DOORBELL {
            self.doorbell += 1;
        }
    }
}

/// Runs `guest.S` in a KVM vCPU: 16-bit real mode at `CODE`; every port and MMIO exit goes
/// to the buses and is counted.
fn run_kvm_guest(vmm: &mut Vmm) -> Result<Exits, BoxError> {
    use kvm_ioctls::VcpuExit;

    let vm = vmm.kvm.as_ref().ok_or("the VMM has no KVM VM")?.vm.clone();
    vmm.memory.write_slice(GUEST_CODE, GuestAddress(CODE))?;
    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;
    let mut exits = Exits::default();
    for total in 1..=MAX_EXITS {
        exits.total = total;
        match vcpu.run()? {
            VcpuExit::IoIn(port, data) => vmm.pio_read(port, data),
            VcpuExit::IoOut(port, data) => vmm.pio_write(port, data),
            VcpuExit::MmioRead(addr, data) => {
                exits.mmio(addr, false);
                vmm.mmio_read(addr, data)
            }
            VcpuExit::MmioWrite(addr, data) => {
                exits.mmio(addr, true);
                vmm.mmio_write(addr, data)
            }
            VcpuExit::Hlt => return Ok(exits),
            other => return Err(format!("unexpected vCPU exit {other:?}").into()),
        }
        vmm.apply_bar_moves();
    }
    Err(format!("the guest did not halt after {MAX_EXITS} exits").into())
}

/// Why KVM cannot be used here, if it cannot.
pub fn kvm_unavailable() -> Option<String> {
    match kvm_ioctls::Kvm::new() {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm is not usable ({e})")),
    }
}

/// What a run showed.
#[derive(Debug)]
pub struct Report {
    /// "KVM" or "Rust".
    pub guest: &'static str,
    /// The guest's exits to the VMM (bus accesses).
    pub exits: Exits,
    /// The slot the guest found the device in.
    pub slot: u32,
    /// The engine's status register as the guest read it (1: done).
    pub status: u32,
    /// The destination buffer holds the source's bytes.
    pub copied: bool,
    /// MSI-X vector 0's eventfd fired.
    pub msix_fired: bool,
    /// The buffer word the guest read back from BAR2.
    pub buffer_read: u32,
    /// The buffer word the server sees.
    pub buffer_seen: u32,
    /// The calls the device made to the VMM's `GuestSlots` (KVM only).
    pub slot_calls: Vec<String>,
}

impl Report {
    /// The guest's run did everything it should: the copy, its interrupt, the buffer word
    /// at the server and back, and with KVM no exit for the buffer and doorbell accesses.
    pub fn ok(&self) -> bool {
        let no_exits = self.guest != "KVM" || (self.exits.buffer, self.exits.doorbell) == (0, 0);
        self.copied
            && self.msix_fired
            && self.status == 1
            && self.buffer_read == BUFFER_WORD
            && self.buffer_seen == BUFFER_WORD
            && no_exits
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} guest: found the DMA engine in slot {}, {} bus exits, engine status {}, \
             {COPY_LEN} bytes {} guest memory, MSI-X vector 0 {}; exits per access: \
             buffer {}/{BUFFER_ACCESSES}, doorbell {}/{DOORBELL_ACCESSES}; buffer word \
             {:#x} read back, {:#x} at the server",
            self.guest,
            self.slot,
            self.exits.total,
            self.status,
            if self.copied {
                "landed in"
            } else {
                "MISSING from"
            },
            if self.msix_fired {
                "fired"
            } else {
                "DID NOT FIRE"
            },
            self.exits.buffer,
            self.exits.doorbell,
            self.buffer_read,
            self.buffer_seen,
        )
    }
}

/// Starts the sample DMA engine server, builds the VMM, hot-plugs the device, runs the
/// guest (in KVM or as Rust code), checks the results and unplugs.
pub fn run(kvm: bool) -> Result<Report, BoxError> {
    let (server, mut vmm) = start(kvm)?;
    let mut report = drive(&mut vmm, kvm)?;
    vmm.unplug()?;
    // With the device's removals at unplug.
    report.slot_calls = vmm
        .kvm
        .as_ref()
        .map(|k| k.slots.calls())
        .unwrap_or_default();
    server.stop();
    Ok(report)
}

/// The sample DMA engine's server (with its doorbell ioeventfd and buffer BAR), and a VMM
/// (with a KVM VM when `kvm`) with the engine hot-plugged and the source buffer in guest
/// memory.
pub fn start(kvm: bool) -> Result<(ServerHandle, Vmm), BoxError> {
    let (engine, handle) = DmaEngine::with_options(DmaEngineOptions {
        doorbell_ioeventfd: true,
        buffer_bar: true,
    })?;
    let server: ServerHandle =
        Server::new(ServerConfig::default(), Box::new(engine)).listen_temp()?;
    let mut vmm = Vmm::new(kvm)?;
    vmm.engine = Some(handle);
    vmm.hot_plug(server.socket_path().ok_or("the server has no socket")?)?;
    vmm.memory.write_slice(&pattern(), GuestAddress(SOURCE))?;
    Ok((server, vmm))
}

fn pattern() -> Vec<u8> {
    (0..COPY_LEN)
        .map(|i| (i as u8).wrapping_mul(37) ^ 0x5a)
        .collect()
}

/// Runs the guest (in KVM or as Rust code) on a started VMM and reports what it did.
pub fn drive(vmm: &mut Vmm, kvm: bool) -> Result<Report, BoxError> {
    let exits = if kvm {
        run_kvm_guest(vmm)?
    } else {
        run_rust_guest(vmm)?
    };
    let done: u16 = vmm.memory.read_obj(GuestAddress(MAILBOX))?;
    if done != GUEST_DONE {
        return Err(format!("the guest stopped with code {done:#x}").into());
    }
    let mut copy = vec![0u8; COPY_LEN];
    vmm.memory
        .read_slice(&mut copy, GuestAddress(DESTINATION))?;
    // The doorbell write was posted, but the guest's status read came after it on the
    // socket, so the copy and its interrupt are complete.
    let msix_fired = vmm.interrupts.fd(InterruptKind::Msix, 0)?.read().is_ok();
    let buffer = vmm.engine.as_ref().map(|e| e.buffer()).unwrap_or_default();
    let at = BUFFER_OFFSET as usize;
    let buffer_seen = buffer
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes);
    Ok(Report {
        guest: if kvm { "KVM" } else { "Rust" },
        exits,
        slot: vmm.memory.read_obj(GuestAddress(MAILBOX + 4))?,
        status: vmm.memory.read_obj(GuestAddress(MAILBOX + 12))?,
        copied: copy == pattern(),
        msix_fired,
        buffer_read: vmm.memory.read_obj(GuestAddress(MAILBOX + 16))?,
        buffer_seen,
        slot_calls: vmm
            .kvm
            .as_ref()
            .map(|k| k.slots.calls())
            .unwrap_or_default(),
    })
}

fn main() -> std::process::ExitCode {
    let rust_guest = std::env::args().any(|a| a == "--rust-guest");
    let reason = if rust_guest {
        Some("--rust-guest given".to_string())
    } else {
        kvm_unavailable()
    };
    if let Some(reason) = &reason {
        println!("{reason}: running the Rust guest driver instead");
    }
    if std::env::args().any(|a| a == "--migrate") {
        return match migrate::run(reason.is_none()) {
            Ok(report) if report.ok() => {
                println!("{report}");
                std::process::ExitCode::SUCCESS
            }
            Ok(report) => {
                eprintln!("{report}");
                std::process::ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("vmm: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run(reason.is_none()) {
        Ok(report) if report.ok() => {
            println!("{report}");
            for call in &report.slot_calls {
                println!("  GuestSlots: {call}");
            }
            std::process::ExitCode::SUCCESS
        }
        Ok(report) => {
            eprintln!("{report}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
