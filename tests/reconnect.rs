// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reconnect and restore against the in-process sample server, killed and started again on
//! the same socket path: DMA and MSI-X work after each restart, a different device is
//! refused, a server that never comes back is given up at the deadline, a DMA map
//! transaction under way survives, and the VMM's `EventManager` follows the new
//! connection, and memory slots and doorbells the device manages follow the new server.
//! Also the PCI state on its own: saved from one attach, restored onto another (managed
//! slots follow the restored BARs). A reconnect clears the mark a save left (detach does
//! its whole work again).
//! Every wait is on an eventfd (the device's state event, the interrupt eventfds).

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vfio_bindings::bindings::vfio::VFIO_PCI_INTX_IRQ_INDEX;
use vfio_user_client::device::IrqAction;
use vfio_user_client::dma::DmaRegion;
use vfio_user_client::pci::{
    BarInfo, BarKind, BarMapping, BarPlacement, ConnectionState, Doorbell, Error, GuestSlots,
    InterruptKind, PciConfig, PciState, ReconnectPolicy, Reconnected,
};
use vfio_user_client::protocol::Command;
use vfio_user_client::{AttachOptions, VfioUserPciDevice};
use vfio_user_sample_server::test_support::guest::{guest_memory, memory, pattern, shared};
use vfio_user_sample_server::test_support::pci::{
    cfg_read, cfg_write, fds_and_maps, find_cap, fired, fired_within, Irqs,
};
use vfio_user_sample_server::test_support::restart::RestartableServer;
use vfio_user_sample_server::{
    DmaEngine, DmaEngineHandle, DmaEngineOptions, DmaEngineStatus, GpioDevice, MigrationConfig,
    Server, ServerConfig, IRQ_INTX, IRQ_MSIX,
};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::{MutDeviceMmio, MutDevicePio};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};
use vmm_sys_util::eventfd::EventFd;

const MEM_BASE: u64 = 0xe000_0000;
const IO_BASE: u16 = 0xc000;
const RAM: usize = 1 << 20;
/// Long enough for anything that is not broken.
const PATIENCE: Duration = Duration::from_secs(10);

/// The tests run one at a time, so that one can count the process's fds.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn engine() -> Box<dyn vfio_user_sample_server::Device> {
    Box::new(DmaEngine::new().0)
}

fn placement() -> BarPlacement {
    BarPlacement::Allocator(Arc::new(|b: &BarInfo| match b.kind {
        BarKind::Io => Some(u64::from(IO_BASE)),
        _ => Some(MEM_BASE),
    }))
}

fn options(server: &RestartableServer, give_up_after: Duration) -> AttachOptions {
    AttachOptions {
        bars: placement(),
        reconnect: Some(ReconnectPolicy {
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(20),
            give_up_after,
            ..ReconnectPolicy::new(server.path())
        }),
        ..AttachOptions::default()
    }
}

/// Waits on the state event until `state()` is `want`.
fn wait_state(event: &EventFd, state: impl Fn() -> ConnectionState, want: ConnectionState) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = state();
        if now == want {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "still {now:?}, waiting for {want:?}");
        fired_within(event, left);
    }
}

fn state_event(dev: &VfioUserPciDevice) -> EventFd {
    dev.state_event().try_clone().unwrap()
}

/// Waits on the state event until `dev` is in `want`.
fn wait_for(event: &EventFd, dev: &VfioUserPciDevice, want: ConnectionState) {
    wait_state(event, || dev.connection_state(), want);
}

/// Kills the server and waits until `dev` sees it gone.
fn kill(server: &mut RestartableServer, event: &EventFd, dev: &VfioUserPciDevice) {
    server.kill();
    wait_for(event, dev, ConnectionState::Reconnecting);
}

/// Starts the server again and waits until `dev` is connected to it.
fn restart(server: &mut RestartableServer, event: &EventFd, dev: &VfioUserPciDevice) {
    server.restart();
    wait_for(event, dev, ConnectionState::Connected);
}

/// Attaches to `server` with [`options`]: the device and a copy of its state event.
fn attach<AS>(
    server: &RestartableServer,
    mem: AS,
    irqs: Arc<Irqs>,
    give_up_after: Duration,
) -> (VfioUserPciDevice, EventFd)
where
    AS: GuestAddressSpace + Send + Sync + 'static,
    AS::M: GuestMemoryBackend,
    <AS::M as GuestMemoryBackend>::R: DmaRegion,
{
    let options = options(server, give_up_after);
    let dev = VfioUserPciDevice::attach(server.path(), mem, irqs, &options).unwrap();
    let event = state_event(&dev);
    (dev, event)
}

/// The guest's driver: decoding and bus mastering on, MSI-X vector 0 programmed, MSI-X on.
fn program(dev: &mut VfioUserPciDevice) {
    cfg_write(dev, 0x04, &0x0007u16.to_le_bytes());
    let entry = DmaEngine::MSIX_TABLE;
    for (at, v) in [(0, 0xfee0_0000u32), (4, 0), (8, 0x40), (12, 0)] {
        dev.mmio_write(MmioAddress(MEM_BASE), entry + at, &v.to_le_bytes());
    }
    let cap = find_cap(dev, 0x11).unwrap();
    cfg_write(dev, cap + 3, &[0x80]);
}

fn mmio_u32(dev: &mut VfioUserPciDevice, reg: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.mmio_read(MmioAddress(MEM_BASE), reg, &mut b);
    u32::from_le_bytes(b)
}

/// One copy by the engine, `len` bytes from `src` to `dst`: the data lands and MSI-X
/// vector 0 fires.
fn copy<M: Bytes<GuestAddress>>(
    dev: &mut VfioUserPciDevice,
    mem: &M,
    irqs: &Irqs,
    (src, dst, len): (u64, u64, usize),
    seed: u8,
) where
    M::E: std::fmt::Debug,
{
    let data = pattern(len, seed);
    mem.write_slice(&data, GuestAddress(src)).unwrap();
    let w32 = |dev: &mut VfioUserPciDevice, reg: u64, v: u32| {
        dev.pio_write(PioAddress(IO_BASE), reg as u16, &v.to_le_bytes())
    };
    w32(dev, DmaEngine::REG_SOURCE, src as u32);
    w32(dev, DmaEngine::REG_SOURCE + 4, (src >> 32) as u32);
    w32(dev, DmaEngine::REG_DESTINATION, dst as u32);
    w32(dev, DmaEngine::REG_DESTINATION + 4, (dst >> 32) as u32);
    w32(dev, DmaEngine::REG_LENGTH, len as u32);
    w32(dev, DmaEngine::REG_DOORBELL, 1);
    assert!(fired(&irqs.fd(InterruptKind::Msix, 0)), "MSI-X vector 0");
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(dst)).unwrap();
    assert!(out == data, "the copy landed");
    assert_eq!(mmio_u32(dev, DmaEngine::REG_STATUS), 1, "done");
}

#[test]
fn killed_and_restarted_mid_io_three_times_dma_and_msix_work_after() {
    let _serial = serial();
    let mut server = RestartableServer::start(ServerConfig::default(), engine);
    let mem = guest_memory(RAM);
    let irqs = Irqs::new();
    let (mut dev, event) = attach(&server, mem.clone(), irqs.clone(), PATIENCE);
    assert_eq!(dev.connection_state(), ConnectionState::Connected);
    assert_eq!(dev.last_reconnect(), None);
    program(&mut dev);
    copy(&mut dev, &*mem, &irqs, (0x1000, 0x8000, 64), 0);
    let dev = Arc::new(Mutex::new(dev));
    let state = || dev.lock().unwrap().connection_state();

    for round in 1..=3u8 {
        // A vCPU keeps reading a register while the server goes away and comes back.
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let (first_read, read_once) = std::sync::mpsc::channel();
        let vcpu = {
            let (dev, stop, reads) = (dev.clone(), stop.clone(), reads.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let v = mmio_u32(&mut dev.lock().unwrap(), DmaEngine::REG_STATUS);
                    assert!(v == 1 || v == 0 || v == u32::MAX, "status {v:#x}");
                    if reads.fetch_add(1, Ordering::Relaxed) == 0 {
                        let _ = first_read.send(());
                    }
                }
            })
        };
        // The vCPU is under way before the server goes (on a loaded machine the thread may
        // not have run yet).
        read_once.recv().unwrap();
        server.kill();
        wait_state(&event, state, ConnectionState::Reconnecting);
        {
            // Nobody listens: accesses are dropped at once, counted.
            let mut d = dev.lock().unwrap();
            let before = d.dropped_accesses();
            let started = Instant::now();
            assert_eq!(mmio_u32(&mut d, DmaEngine::REG_STATUS), u32::MAX);
            d.mmio_write(MmioAddress(MEM_BASE), DmaEngine::REG_LENGTH, &[1; 4]);
            assert_eq!(d.read_config_register(0), u32::MAX);
            assert!(started.elapsed() < Duration::from_secs(1));
            let after = d.dropped_accesses();
            assert_eq!((after.0 - before.0, after.1 - before.1), (2, 1));
            assert!(d.event().read().is_err(), "not lost");
        }
        server.restart();
        wait_state(&event, state, ConnectionState::Connected);
        stop.store(true, Ordering::Relaxed);
        vcpu.join().unwrap();
        assert!(reads.load(Ordering::Relaxed) > 0);

        let probe = server.probe();
        let mut d = dev.lock().unwrap();
        // The new server's command register was 0, ours 7: it restarted empty.
        assert_eq!(
            d.last_reconnect(),
            Some(Reconnected::Restarted { reset: true })
        );
        assert_eq!(cfg_read(&mut *d, 0x04, 2) & 0x7, 0x7, "command replayed");
        assert_eq!(d.interrupt_mode(), Some(InterruptKind::Msix));
        assert!(probe.irq_state(IRQ_MSIX)[0].assigned, "eventfd replayed");
        let maps = probe.dma_maps();
        assert_eq!(maps.len(), 1, "round {round}");
        assert_eq!((maps[0].address, maps[0].size), (0, RAM as u64));
        copy(&mut d, &*mem, &irqs, (0x2000, 0x9000, 4096), round);
        assert_eq!(d.error_count(), 0, "{:?}", d.last_error());
    }
    assert_eq!(server.starts(), 4);
    Arc::try_unwrap(dev)
        .unwrap()
        .into_inner()
        .unwrap()
        .detach()
        .unwrap();
}

#[test]
fn a_different_device_is_refused() {
    let _serial = serial();
    let mut server = RestartableServer::start(ServerConfig::default(), engine);
    let (mut dev, event) = attach(&server, guest_memory(RAM), Irqs::new(), PATIENCE);
    program(&mut dev);
    let (gpio, _) = GpioDevice::new(Default::default()).unwrap();
    kill(&mut server, &event, &dev);
    server.restart_with(Box::new(gpio));
    wait_for(&event, &dev, ConnectionState::Lost);
    assert!(fired(dev.event()), "lost is signalled");
    let e = dev.last_error().unwrap();
    assert!(matches!(*e, Error::DifferentDevice { .. }), "{e}");
    assert!(e.to_string().contains("device_id"), "{e}");
    assert_eq!(dev.read_config_register(0), u32::MAX);
    assert!(dev.is_lost());
    dev.detach().unwrap();
}

#[test]
fn a_server_that_never_comes_back_is_given_up_at_the_deadline() {
    let _serial = serial();
    let mut server = RestartableServer::start(ServerConfig::default(), engine);
    let give_up = Duration::from_millis(300);
    let (dev, event) = attach(&server, guest_memory(RAM), Irqs::new(), give_up);
    let killed = Instant::now();
    kill(&mut server, &event, &dev);
    wait_for(&event, &dev, ConnectionState::Lost);
    let took = killed.elapsed();
    assert!(took >= give_up, "gave up after {took:?}");
    assert!(
        took < give_up + Duration::from_secs(3),
        "gave up after {took:?}"
    );
    let e = dev.last_error().unwrap();
    match &*e {
        Error::GaveUp { attempts, .. } => assert!(*attempts > 1, "{e}"),
        other => panic!("{other}"),
    }
    assert!(fired(dev.event()));
    // Lost stays lost, even when the server comes back.
    server.restart();
    assert_eq!(dev.connection_state(), ConnectionState::Lost);
    dev.detach().unwrap();
}

/// A saved (stopped) device whose server restarts: the reconnect replays the state to a
/// device that runs, so detach does its whole work again without asking the state.
#[test]
fn a_reconnect_clears_the_saved_mark() {
    let _serial = serial();
    let config = ServerConfig {
        migration: Some(MigrationConfig::default()),
        ..ServerConfig::default()
    };
    let mut server = RestartableServer::start(config, engine);
    let irqs = Irqs::new();
    let (mut dev, event) = attach(&server, guest_memory(RAM), irqs.clone(), PATIENCE);
    program(&mut dev);
    dev.save(io::sink()).unwrap();
    kill(&mut server, &event, &dev);
    restart(&mut server, &event, &dev);
    assert!(dev.last_reconnect().is_some());
    let probe = server.probe();
    let since = probe.commands();
    dev.detach().unwrap();
    let recent = probe.recent_commands();
    let sent = &recent[recent.len() - usize::try_from(probe.commands() - since).unwrap()..];
    assert!(sent.contains(&Command::DeviceSetIrqs), "{sent:?}");
    assert!(sent.contains(&Command::DmaUnmap), "{sent:?}");
    assert!(!sent.contains(&Command::DeviceFeature), "{sent:?}");
}

#[test]
fn without_a_policy_lost_is_lost() {
    let _serial = serial();
    let mut server = RestartableServer::start(ServerConfig::default(), engine);
    let options = AttachOptions {
        bars: placement(),
        ..AttachOptions::default()
    };
    let dev =
        VfioUserPciDevice::attach(server.path(), guest_memory(RAM), Irqs::new(), &options).unwrap();
    let event = state_event(&dev);
    server.kill();
    wait_for(&event, &dev, ConnectionState::Lost);
    assert!(fired(dev.event()));
    assert!(matches!(*dev.last_error().unwrap(), Error::Lost(_)));
    server.restart();
    assert_eq!(dev.connection_state(), ConnectionState::Lost);
}

#[test]
fn reconnect_during_a_dma_map_transaction() {
    let _serial = serial();
    let mut server = RestartableServer::start(ServerConfig::default(), engine);
    let atomic = GuestMemoryAtomic::new(memory(vec![shared(0, RAM)]));
    let irqs = Irqs::new();
    let (mut dev, event) = attach(&server, atomic.clone(), irqs.clone(), PATIENCE);
    program(&mut dev);
    let dev = Arc::new(dev);

    // The server holds the hot-plug's DMA_MAP, unanswered, when it is killed.
    let probe = server.probe();
    probe.pause();
    let plugged = shared(0x4000_0000, 0x20_0000);
    let next = atomic.memory().insert_region(Arc::new(plugged)).unwrap();
    atomic.lock().unwrap().replace(next);
    let syncing = {
        let dev = dev.clone();
        thread::spawn(move || dev.sync_guest_memory())
    };
    assert!(probe.wait_holding(PATIENCE), "the map reached the server");
    kill(&mut server, &event, &dev);
    // Whether the map failed with the connection or got its reply first, the table is
    // consistent and the reconnect maps both regions.
    let _ = syncing.join().unwrap();
    restart(&mut server, &event, &dev);
    let mut windows: Vec<(u64, u64)> = server
        .probe()
        .dma_maps()
        .iter()
        .map(|m| (m.address, m.size))
        .collect();
    windows.sort_unstable();
    assert_eq!(windows, vec![(0, RAM as u64), (0x4000_0000, 0x20_0000)]);
    dev.sync_guest_memory().unwrap();
    assert_eq!(server.probe().dma_map_count(), 2, "nothing left to map");
    let mut dev = Arc::try_unwrap(dev).unwrap();
    copy(
        &mut dev,
        &*atomic.memory(),
        &irqs,
        (0x3000, 0x4000_1000, 256),
        9,
    );
    dev.detach().unwrap();
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[test]
fn the_vmm_event_manager_follows_the_new_connection() {
    let _serial = serial();
    let mut server = RestartableServer::start(ServerConfig::default(), engine);
    // Anonymous memory: the engine reaches it with DMA_READ / DMA_WRITE on the twin
    // socket, which only the event loop reads.
    let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).unwrap());
    let irqs = Irqs::new();
    let options = options(&server, PATIENCE);
    let (mut dev, subscriber) = VfioUserPciDevice::attach_with_subscriber(
        server.path(),
        mem.clone(),
        irqs.clone(),
        &options,
    )
    .unwrap();
    let mut manager = EventManager::<Subscriber>::new().unwrap();
    manager.add_subscriber(Arc::new(Mutex::new(subscriber)));
    let stop = Arc::new(AtomicBool::new(false));
    let running = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                manager.run_with_timeout(20).unwrap();
            }
        })
    };
    let event = state_event(&dev);
    program(&mut dev);
    assert!(server.probe().client().is_some_and(|c| c.twin_socket));
    copy(&mut dev, &*mem, &irqs, (0x1000, 0x8000, 512), 1);
    for round in 2..4u8 {
        kill(&mut server, &event, &dev);
        restart(&mut server, &event, &dev);
        assert!(server.probe().client().is_some_and(|c| c.twin_socket));
        copy(&mut dev, &*mem, &irqs, (0x1000, 0x8000, 512), round);
    }
    dev.detach().unwrap();
    stop.store(true, Ordering::Relaxed);
    running.join().unwrap();
}

#[test]
fn pci_state_restores_onto_a_fresh_attach_and_refuses_another_device() {
    let _serial = serial();
    // Device A: programmed by its guest.
    let first = Server::new(ServerConfig::default(), engine())
        .listen_temp()
        .unwrap();
    let mem = guest_memory(RAM);
    let irqs = Irqs::new();
    let options = AttachOptions {
        bars: placement(),
        ..AttachOptions::default()
    };
    let mut a = VfioUserPciDevice::attach(
        first.socket_path().unwrap(),
        mem.clone(),
        irqs.clone(),
        &options,
    )
    .unwrap();
    program(&mut a);
    // Vector 1 programmed and masked.
    let entry = DmaEngine::MSIX_TABLE + 16;
    for (at, v) in [(0, 0xfee0_1000u32), (4, 0), (8, 0x41), (12, 1)] {
        a.mmio_write(MmioAddress(MEM_BASE), entry + at, &v.to_le_bytes());
    }
    let state = a.pci_state();
    assert_eq!(state.command() & 0x7, 0x7);
    let json = serde_json::to_string(&state).unwrap();
    a.detach().unwrap();
    drop(first);

    // Device B: a fresh server, a fresh attach with nothing placed.
    let second = Server::new(ServerConfig::default(), engine());
    let probe = second.probe();
    let second = second.listen_temp().unwrap();
    let irqs_b = Irqs::new();
    let mut b = VfioUserPciDevice::attach(
        second.socket_path().unwrap(),
        mem.clone(),
        irqs_b.clone(),
        &AttachOptions::default(),
    )
    .unwrap();
    assert!(b.bars().iter().all(|bar| bar.base.is_none()));
    let loaded: PciState = serde_json::from_str(&json).unwrap();
    assert_eq!(loaded, state);
    b.restore_pci_state(&loaded).unwrap();
    let bases: Vec<Option<u64>> = b.bars().iter().map(|bar| bar.base).collect();
    assert_eq!(bases, vec![Some(MEM_BASE), Some(u64::from(IO_BASE))]);
    assert_eq!(b.interrupt_mode(), Some(InterruptKind::Msix));
    assert_eq!(
        cfg_read(&mut b, 0x04, 2) & 0x7,
        0x7,
        "command at the server"
    );
    let msix = find_cap(&mut b, 0x11).unwrap();
    assert_eq!(cfg_read(&mut b, msix + 3, 1) & 0x80, 0x80, "MSI-X enabled");
    let irq = probe.irq_state(IRQ_MSIX);
    assert!(irq[0].assigned);
    let route = |v| irqs_b.route(InterruptKind::Msix, v).unwrap();
    assert_eq!((route(0).0.data, route(0).1), (0x40, false));
    assert_eq!((route(1).0.data, route(1).1), (0x41, true), "mask restored");
    let mut table = [0u8; 4];
    b.mmio_read(
        MmioAddress(MEM_BASE),
        DmaEngine::MSIX_TABLE + 16 + 8,
        &mut table,
    );
    assert_eq!(u32::from_le_bytes(table), 0x41, "table restored");
    copy(&mut b, &*mem, &irqs_b, (0x1000, 0x8000, 128), 3);
    assert_eq!(b.pci_state(), state, "the same state again");

    // Another version, another device: refused, nothing changed.
    let newer = json.replacen("\"version\":1", "\"version\":2", 1);
    let newer: PciState = serde_json::from_str(&newer).unwrap();
    assert!(matches!(
        b.restore_pci_state(&newer),
        Err(Error::StateVersion { found: 2, .. })
    ));
    let gpio = vfio_user_sample_server::test_support::peers::sample(ServerConfig::default());
    let mut c = VfioUserPciDevice::attach(
        gpio.socket_path().unwrap(),
        mem.clone(),
        Irqs::new(),
        &AttachOptions::default(),
    )
    .unwrap();
    let before = c.pci_state();
    let e = c.restore_pci_state(&state).unwrap_err();
    assert!(matches!(e, Error::DifferentDevice { .. }), "{e}");
    assert_eq!(c.pci_state(), before);
    b.detach().unwrap();
    c.detach().unwrap();
}

#[test]
fn a_late_reply_after_an_unresponsive_spell_is_resynchronised() {
    let _serial = serial();
    let server = Server::new(ServerConfig::default(), engine());
    let probe = server.probe();
    let server = server.listen_temp().unwrap();
    let irqs = Irqs::new();
    let mut options = AttachOptions {
        bars: placement(),
        ..AttachOptions::default()
    };
    options.connect.reply_timeout = Duration::from_secs(1);
    let mut dev = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        guest_memory(RAM),
        irqs.clone(),
        &options,
    )
    .unwrap();
    program(&mut dev);
    let vector_control = DmaEngine::MSIX_TABLE + 12;
    let masked = || probe.irq_state(IRQ_MSIX)[0].masked;
    assert!(!masked());

    // The guest masks vector 0; the server holds the MASK past the reply timeout. The guest
    // unmasks it again while the connection is unresponsive: nothing is sent for that.
    probe.pause();
    dev.mmio_write(MmioAddress(MEM_BASE), vector_control, &1u32.to_le_bytes());
    assert!(dev.error_count() >= 1);
    dev.mmio_write(MmioAddress(MEM_BASE), vector_control, &0u32.to_le_bytes());

    // The late MASK is applied when the server goes on: it now differs from the guest.
    probe.resume();
    let device = dev.device();
    let conn = device.connection();
    let deadline = Instant::now() + PATIENCE;
    while !matches!(conn.health(), vfio_user_client::connection::Health::Healthy) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "still {}", conn.health());
        fired_within(conn.health_event(), left);
    }
    assert!(masked(), "the late MASK was applied");

    // The next guest access replays the state: unmasked at the server, and it fires.
    assert_eq!(mmio_u32(&mut dev, DmaEngine::REG_STATUS), 0);
    assert!(!masked(), "resynchronised");
    assert_eq!(probe.raise_irq(IRQ_MSIX, 0), Ok(true));
    assert!(fired(&irqs.fd(InterruptKind::Msix, 0)));
    drop(device);
    dev.detach().unwrap();
}

#[test]
fn a_server_matching_the_shadow_is_resumed_without_a_reset() {
    let _serial = serial();
    let mut server = RestartableServer::start(ServerConfig::default(), engine);
    let (mut dev, event) = attach(&server, guest_memory(RAM), Irqs::new(), PATIENCE);
    // The guest has not enabled the device: a fresh server's command register matches.
    assert_eq!(cfg_read(&mut dev, 0x04, 2) & 0x7, 0);
    let (device, handle) = DmaEngine::new();
    kill(&mut server, &event, &dev);
    server.restart_with(Box::new(device));
    wait_for(&event, &dev, ConnectionState::Connected);
    assert_eq!(dev.last_reconnect(), Some(Reconnected::Resumed));
    assert_eq!(handle.resets(), 0, "no DEVICE_RESET");
    assert_eq!(
        dev.read_config_register(0) >> 16,
        u32::from(DmaEngine::DEVICE_ID)
    );
    dev.detach().unwrap();
}

#[test]
fn restarts_leak_no_fd_and_no_mapping() {
    let _serial = serial();
    let before = fds_and_maps();
    {
        let mut server = RestartableServer::start(ServerConfig::default(), engine);
        let mem = guest_memory(RAM);
        let irqs = Irqs::new();
        let (mut dev, event) = attach(&server, mem.clone(), irqs.clone(), PATIENCE);
        program(&mut dev);
        for round in 0..5u8 {
            kill(&mut server, &event, &dev);
            restart(&mut server, &event, &dev);
            copy(&mut dev, &*mem, &irqs, (0x1000, 0x8000, 64), round);
        }
        dev.detach().unwrap();
    }
    assert_eq!(fds_and_maps(), before);
}

#[test]
fn intx_and_its_end_of_interrupt_follow_the_new_connection() {
    let _serial = serial();
    let gpio = || -> Box<dyn vfio_user_sample_server::Device> {
        Box::new(GpioDevice::new(Default::default()).unwrap().0)
    };
    let mut server = RestartableServer::start(ServerConfig::default(), gpio);
    let irqs = Irqs::with_resample();
    let options = AttachOptions {
        bars: BarPlacement::Guest,
        ..options(&server, PATIENCE)
    };
    let mut dev =
        VfioUserPciDevice::attach(server.path(), guest_memory(RAM), irqs.clone(), &options)
            .unwrap();
    let event = state_event(&dev);
    cfg_write(&mut dev, 0x04, &0x0006u16.to_le_bytes());
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    kill(&mut server, &event, &dev);
    restart(&mut server, &event, &dev);
    assert_eq!(
        dev.last_reconnect(),
        Some(Reconnected::Restarted { reset: true })
    );
    let probe = server.probe();
    let intx = irqs.fd(InterruptKind::Intx, 0);
    assert_eq!(probe.raise_irq(IRQ_INTX, 0), Ok(true), "INTx replayed");
    assert!(fired(&intx));
    // Masked at the new server; the guest's end of interrupt (the resample eventfd, read by
    // the event loop) unmasks it there.
    dev.device()
        .irq_action(VFIO_PCI_INTX_IRQ_INDEX, IrqAction::Mask, 0, 1)
        .unwrap();
    assert_eq!(probe.raise_irq(IRQ_INTX, 0), Ok(false));
    irqs.resample.as_ref().unwrap().write(1).unwrap();
    assert!(fired(&intx), "unmasked through the new connection");
    // Delivered, and masked again by the server (auto-mask) until the next end of
    // interrupt.
    assert!(probe.irq_state(IRQ_INTX)[0].masked);
    dev.detach().unwrap();
}

/// Where the buffer BAR (BAR2 of an engine with [`DmaEngineOptions::buffer_bar`]) goes.
const BUF_BASE: u64 = 0xe010_0000;

/// An engine with a mappable buffer BAR and a doorbell ioeventfd.
fn slotted_engine() -> (DmaEngine, DmaEngineHandle) {
    DmaEngine::with_options(DmaEngineOptions {
        doorbell_ioeventfd: true,
        buffer_bar: true,
    })
    .unwrap()
}

fn slotted_placement(mem: u64, io: u16, buf: u64) -> BarPlacement {
    BarPlacement::Fixed(vec![(0, mem), (1, u64::from(io)), (2, buf)])
}

/// A fake hypervisor: the slots and ioeventfds it holds. Adding what it holds, or removing
/// what it does not, fails the test. Each call signals `changed`.
struct Hypervisor {
    held: Mutex<(Vec<BarMapping>, Vec<Doorbell>)>,
    changed: EventFd,
}

impl Default for Hypervisor {
    fn default() -> Hypervisor {
        Hypervisor {
            held: Mutex::default(),
            changed: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }
    }
}

impl Hypervisor {
    /// Waits on `changed` until it holds nothing.
    fn wait_empty(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            {
                let held = self.held.lock().unwrap();
                if held.0.is_empty() && held.1.is_empty() {
                    return;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "slots still installed");
            fired_within(&self.changed, left);
        }
    }

    fn slots(&self) -> Vec<BarMapping> {
        self.held.lock().unwrap().0.clone()
    }

    fn doorbells(&self) -> Vec<Doorbell> {
        self.held.lock().unwrap().1.clone()
    }
}

impl GuestSlots for Hypervisor {
    fn add_slot(&self, slot: &BarMapping) -> io::Result<()> {
        let mut held = self.held.lock().unwrap();
        assert!(!held.0.contains(slot), "added twice: {slot:?}");
        held.0.push(*slot);
        drop(held);
        self.changed.write(1).unwrap();
        Ok(())
    }

    fn remove_slot(&self, slot: &BarMapping) -> io::Result<()> {
        let mut held = self.held.lock().unwrap();
        let at = held.0.iter().position(|s| s == slot).expect("not held");
        held.0.remove(at);
        drop(held);
        self.changed.write(1).unwrap();
        Ok(())
    }

    fn add_ioeventfd(&self, doorbell: &Doorbell) -> io::Result<()> {
        let mut held = self.held.lock().unwrap();
        assert!(!held.1.contains(doorbell), "added twice: {doorbell:?}");
        held.1.push(doorbell.clone());
        drop(held);
        self.changed.write(1).unwrap();
        Ok(())
    }

    fn remove_ioeventfd(&self, doorbell: &Doorbell) -> io::Result<()> {
        let mut held = self.held.lock().unwrap();
        let at = held.1.iter().position(|d| d == doorbell).expect("not held");
        held.1.remove(at);
        drop(held);
        self.changed.write(1).unwrap();
        Ok(())
    }
}

/// What a hypervisor does on a guest write that matches the doorbell: signal its fd.
fn ring(doorbell: &Doorbell) {
    let mut f = File::from(doorbell.fd.try_clone().unwrap());
    f.write_all(&1u64.to_ne_bytes()).unwrap();
}

/// The host address of BAR2's mapping in the device's current connection.
fn buffer_mapping(dev: &VfioUserPciDevice) -> u64 {
    let device = dev.device();
    let areas = device.region(2).unwrap().mapped_areas();
    areas[0].host_addr() as u64
}

/// One copy with the doorbell rung through `doorbell`'s fd, as the hypervisor would: the
/// status read (a message) is what makes the engine take the ring.
fn copy_through<M: Bytes<GuestAddress>>(
    dev: &mut VfioUserPciDevice,
    mem: &M,
    (io, mem_base): (u16, u64),
    doorbell: &Doorbell,
    seed: u8,
) -> Option<Vec<u8>>
where
    M::E: std::fmt::Debug,
{
    let (src, dst, len) = (0x3000u64, 0xa000u64, 256usize);
    let data = pattern(len, seed);
    mem.write_slice(&data, GuestAddress(src)).unwrap();
    mem.write_slice(&vec![0u8; len], GuestAddress(dst)).unwrap();
    let w32 = |dev: &mut VfioUserPciDevice, reg: u64, v: u32| {
        dev.pio_write(PioAddress(io), reg as u16, &v.to_le_bytes())
    };
    w32(dev, DmaEngine::REG_SOURCE, src as u32);
    w32(dev, DmaEngine::REG_DESTINATION, dst as u32);
    w32(dev, DmaEngine::REG_LENGTH, len as u32);
    ring(doorbell);
    let mut status = [0u8; 4];
    dev.mmio_read(MmioAddress(mem_base), DmaEngine::REG_STATUS, &mut status);
    if u32::from_le_bytes(status) != DmaEngineStatus::Done as u32 {
        return None;
    }
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(dst)).unwrap();
    assert!(out == data, "the copy landed");
    Some(out)
}

#[test]
fn managed_slots_and_doorbells_follow_the_new_server() {
    let _serial = serial();
    let handles: Arc<Mutex<Vec<DmaEngineHandle>>> = Arc::default();
    let make = {
        let handles = handles.clone();
        move || -> Box<dyn vfio_user_sample_server::Device> {
            let (device, handle) = slotted_engine();
            handles.lock().unwrap().push(handle);
            Box::new(device)
        }
    };
    let mut server = RestartableServer::start(ServerConfig::default(), make);
    let mem = guest_memory(RAM);
    let irqs = Irqs::new();
    let options = AttachOptions {
        bars: slotted_placement(MEM_BASE, IO_BASE, BUF_BASE),
        ..options(&server, PATIENCE)
    };
    let mut dev =
        VfioUserPciDevice::attach(server.path(), mem.clone(), irqs.clone(), &options).unwrap();
    let event = state_event(&dev);
    let hv = Arc::new(Hypervisor::default());
    dev.manage_slots(hv.clone()).unwrap();
    program(&mut dev);
    let bell = MEM_BASE + DmaEngine::REG_DOORBELL;
    let installed = |hv: &Hypervisor| {
        let slots: Vec<(u64, u64)> = hv.slots().iter().map(|s| (s.guest_addr, s.size)).collect();
        let bells: Vec<(u64, Option<u64>)> = hv
            .doorbells()
            .iter()
            .map(|d| (d.guest_addr, d.datamatch))
            .collect();
        (slots, bells)
    };
    let expected = (
        vec![(BUF_BASE, DmaEngine::BUFFER_SIZE)],
        vec![(bell, Some(1))],
    );
    assert_eq!(installed(&hv), expected);
    assert_eq!(hv.slots()[0].host_addr, buffer_mapping(&dev));
    let first = hv.doorbells()[0].clone();
    assert!(copy_through(&mut dev, &*mem, (IO_BASE, MEM_BASE), &first, 0).is_some());
    assert_eq!(handles.lock().unwrap()[0].completions(), 1);
    assert!(fired(&irqs.fd(InterruptKind::Msix, 0)));

    let mut old = (hv.slots()[0].host_addr, first);
    for round in 1..=2u8 {
        kill(&mut server, &event, &dev);
        // The dead server's mappings and doorbell leave the hypervisor (the supervisor
        // withdraws them as soon as it is woken, before any attempt).
        hv.wait_empty();
        restart(&mut server, &event, &dev);
        assert_eq!(
            dev.last_reconnect(),
            Some(Reconnected::Restarted { reset: true })
        );
        // Installed again with no call from the VMM: the new server's mapping and fd.
        assert_eq!(installed(&hv), expected, "round {round}");
        let slot = hv.slots()[0];
        assert_eq!(slot.host_addr, buffer_mapping(&dev), "the new mapping");
        assert_ne!(slot.host_addr, old.0, "not the old mapping");
        let doorbell = hv.doorbells()[0].clone();
        assert_ne!(doorbell, old.1, "not the old fd");
        let engine = handles.lock().unwrap()[usize::from(round)].clone();
        // The old fd reaches nobody; the new one rings the new server's engine.
        assert!(copy_through(&mut dev, &*mem, (IO_BASE, MEM_BASE), &old.1, round).is_none());
        assert_eq!(engine.completions(), 0);
        assert!(copy_through(&mut dev, &*mem, (IO_BASE, MEM_BASE), &doorbell, round).is_some());
        assert_eq!(engine.completions(), 1);
        assert!(fired(&irqs.fd(InterruptKind::Msix, 0)), "MSI-X replayed");
        // The buffer the slot maps is the new server's: it sees what the guest writes
        // there (here through a message, the same memory).
        dev.mmio_write(MmioAddress(BUF_BASE), 8, &[round; 4]);
        assert_eq!(engine.buffer()[8..12], [round; 4]);
        assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
        old = (slot.host_addr, doorbell);
    }
    dev.detach().unwrap();
    assert_eq!(installed(&hv), (vec![], vec![]));
}

#[test]
fn managed_slots_follow_a_restored_pci_state() {
    let _serial = serial();
    let mem = guest_memory(RAM);
    // Device A: placed and programmed by its guest.
    let (device, _) = slotted_engine();
    let first = Server::new(ServerConfig::default(), Box::new(device))
        .listen_temp()
        .unwrap();
    let options = AttachOptions {
        bars: slotted_placement(MEM_BASE, IO_BASE, BUF_BASE),
        ..AttachOptions::default()
    };
    let mut a = VfioUserPciDevice::attach(
        first.socket_path().unwrap(),
        mem.clone(),
        Irqs::new(),
        &options,
    )
    .unwrap();
    program(&mut a);
    let state = a.pci_state();
    a.detach().unwrap();
    drop(first);

    // Device B: placed elsewhere, decoding, its slots installed there.
    let (device, engine) = slotted_engine();
    let second = Server::new(ServerConfig::default(), Box::new(device))
        .listen_temp()
        .unwrap();
    let (other_mem, other_io, other_buf) = (0xd000_0000, 0xd000, 0xd010_0000);
    let options = AttachOptions {
        bars: slotted_placement(other_mem, other_io, other_buf),
        ..AttachOptions::default()
    };
    let irqs = Irqs::new();
    let mut b = VfioUserPciDevice::attach(
        second.socket_path().unwrap(),
        mem.clone(),
        irqs.clone(),
        &options,
    )
    .unwrap();
    let hv = Arc::new(Hypervisor::default());
    b.manage_slots(hv.clone()).unwrap();
    assert!(hv.slots().is_empty(), "not decoding yet");
    cfg_write(&mut b, 0x04, &0x0002u16.to_le_bytes());
    assert_eq!(hv.slots()[0].guest_addr, other_buf);
    assert_eq!(
        hv.doorbells()[0].guest_addr,
        other_mem + DmaEngine::REG_DOORBELL
    );

    b.restore_pci_state(&state).unwrap();
    // At the restored bases, and only there.
    let slots = hv.slots();
    assert_eq!(slots.len(), 1);
    assert_eq!(
        (slots[0].guest_addr, slots[0].size, slots[0].host_addr),
        (BUF_BASE, DmaEngine::BUFFER_SIZE, buffer_mapping(&b))
    );
    let doorbells = hv.doorbells();
    assert_eq!(doorbells.len(), 1);
    assert_eq!(
        (doorbells[0].guest_addr, doorbells[0].datamatch),
        (MEM_BASE + DmaEngine::REG_DOORBELL, Some(1))
    );
    assert_eq!(b.installed_slots(), (slots, doorbells.clone()));
    // The doorbell there rings B's engine, whose completion reaches the restored vector.
    assert!(copy_through(&mut b, &*mem, (IO_BASE, MEM_BASE), &doorbells[0], 7).is_some());
    assert_eq!(engine.completions(), 1);
    assert!(fired(&irqs.fd(InterruptKind::Msix, 0)));
    assert_eq!(b.error_count(), 0, "{:?}", b.last_error());
    b.detach().unwrap();
    assert!(hv.slots().is_empty() && hv.doorbells().is_empty());
}
