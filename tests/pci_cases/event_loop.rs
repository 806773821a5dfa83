// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Several devices in one shared `EventManager`, as a VMM runs them: hot-plug and unplug
//! while another device ends INTx interrupts through the loop, and a stalled server that
//! must not stall the loop.

use vfio_bindings::bindings::vfio::VFIO_PCI_INTX_IRQ_INDEX;
use vfio_user_client::ConnectOptions;

use super::*;
use crate::vmm_loop::Loop;
use event_manager::SubscriberId;
use vfio_user_sample_server::test_support::pci::consumed_within;

struct InLoop {
    dev: VfioUserPciDevice,
    id: SubscriberId,
    irqs: Arc<Irqs>,
    probe: Probe,
    _server: ServerHandle,
}

fn gpio_in(events: &Loop, connect: ConnectOptions) -> InLoop {
    let (device, _handle) = GpioDevice::new(GpioConfig::default()).unwrap();
    let server = Server::new(ServerConfig::default(), Box::new(device));
    let probe = server.probe();
    let server = server.listen_temp().unwrap();
    let irqs = Irqs::with_resample();
    let options = AttachOptions {
        connect,
        bars: gpio_bars(),
        ..AttachOptions::default()
    };
    let (dev, subscriber) = VfioUserPciDevice::attach_with_subscriber(
        server.socket_path().unwrap(),
        guest_memory(GUEST_RAM),
        irqs.clone(),
        &options,
    )
    .unwrap();
    let id = events.add(subscriber);
    InLoop {
        dev,
        id,
        irqs,
        probe,
        _server: server,
    }
}

/// One INTx interrupt of a device in INTx mode, ended through the loop: the server masks
/// the line (as an automasked trigger would), the device raises it, the guest's end of
/// interrupt (the resample eventfd) makes the loop unmask it, and the pending interrupt
/// arrives.
fn intx_round(dev: &Mutex<VfioUserPciDevice>, probe: &Probe, irqs: &Irqs) -> bool {
    dev.lock()
        .unwrap()
        .device()
        .irq_action(VFIO_PCI_INTX_IRQ_INDEX, IrqAction::Mask, 0, 1)
        .unwrap();
    assert_eq!(probe.raise_irq(IRQ_INTX, 0), Ok(false));
    irqs.resample.as_ref().unwrap().write(1).unwrap();
    fired(&irqs.fd(InterruptKind::Intx, 0))
}

#[test]
fn devices_share_one_event_manager_and_none_blocks_it() {
    let _g = EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner());
    let events = Loop::start();
    let busy = gpio_in(&events, ConnectOptions::default());
    let (a_probe, a_irqs, a_id) = (busy.probe.clone(), busy.irqs.clone(), busy.id);
    let a = Arc::new(Mutex::new(busy.dev));
    enable_memory(&mut a.lock().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let worker = {
        let (a, stop, rounds) = (a.clone(), stop.clone(), rounds.clone());
        let (probe, irqs) = (a_probe.clone(), a_irqs.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let id = mmio_u32(&mut a.lock().unwrap(), BAR0_BASE, GpioDevice::REG_ID);
                assert_eq!(id, GpioDevice::ID);
                assert!(intx_round(&a, &probe, &irqs), "INTx ended through the loop");
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Hot-plug and unplug in the same loop while device A works.
    let cycle = || {
        let mut b = gpio_in(&events, ConnectOptions::default());
        enable_memory(&mut b.dev);
        assert_eq!(
            mmio_u32(&mut b.dev, BAR0_BASE, GpioDevice::REG_ID),
            GpioDevice::ID
        );
        b.dev.detach().unwrap();
        events.remove(b.id);
    };
    cycle();
    let before = fds_and_maps();
    for _ in 0..20 {
        cycle();
    }
    assert_eq!(
        fds_and_maps(),
        before,
        "(open fds, memory maps) before and after"
    );

    // Device C's server stalls; the guest keeps ending C's INTx interrupts. The loop must
    // not wait for C's server (its replies would take up to C's 30 s reply timeout).
    let slow = ConnectOptions {
        reply_timeout: Duration::from_secs(30),
        ..ConnectOptions::default()
    };
    let c = gpio_in(&events, slow);
    c.probe.pause();
    let resample = c.irqs.resample.clone().unwrap();
    for i in 0..100 {
        resample.write(1).unwrap();
        assert!(
            consumed_within(&resample, Duration::from_secs(5)),
            "the loop stalled at end of interrupt {i} of a device whose server is stalled"
        );
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert!(rounds.load(Ordering::Relaxed) > 0);
    assert!(
        intx_round(&a, &a_probe, &a_irqs),
        "device A while C is stalled"
    );
    c.probe.resume();
    assert_eq!(c.dev.error_count(), 0, "{:?}", c.dev.last_error());
    let c_id = c.id;
    c.dev.detach().unwrap();
    events.remove(c_id);

    let a = Arc::try_unwrap(a).unwrap().into_inner().unwrap();
    assert_eq!(a.error_count(), 0, "{:?}", a.last_error());
    a.detach().unwrap();
    events.remove(a_id);
}
