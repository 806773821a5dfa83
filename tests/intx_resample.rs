// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Level-triggered INTx, ended by the guest: through KVM's irqfd resample eventfd (the
//! device's subscriber unmasks INTx at the server, with the subscriber on the device's own
//! thread or in a VMM's `EventManager`), or through `end_of_interrupt`.
//!
//! The sample server holds an interrupt condition (`Probe::set_irq_level`) and, as the
//! kernel's vfio-pci and QEMU do, masks INTx when it signals it. Across end-of-interrupt
//! rounds the test counts every signal on the INTx eventfd (each read must find exactly
//! one: none merged) against the conditions raised and the ends of interrupt: a condition
//! held across an end of interrupt signals again, one released before it does not, and
//! one raised while INTx is masked is delivered at the next end of interrupt.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vfio_user_client::pci::{AttachOptions, InterruptKind, VfioUserPciDevice};
use vfio_user_sample_server::test_support::guest::guest_memory;
use vfio_user_sample_server::test_support::pci::{cfg_write, consumed_within, quiet, Irqs};
use vfio_user_sample_server::{
    GpioConfig, GpioDevice, IrqMasking, Probe, Server, ServerConfig, ServerHandle, IRQ_INTX,
};
use vmm_sys_util::eventfd::EventFd;

#[path = "common/vmm_loop.rs"]
mod vmm_loop;

use vmm_loop::Loop;

const PATIENCE: Duration = Duration::from_secs(5);

/// How the guest's end of interrupt reaches the device.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Eoi {
    /// KVM's resample eventfd, handled by the device's subscriber.
    Resample,
    /// The VMM calls `end_of_interrupt`.
    Call,
}

struct Setup {
    dev: VfioUserPciDevice,
    probe: Probe,
    irqs: Arc<Irqs>,
    server: ServerHandle,
}

fn server(masking: IrqMasking) -> (ServerHandle, Probe) {
    let (device, _handle) = GpioDevice::new(GpioConfig::default()).unwrap();
    let config = ServerConfig {
        irq_masking: masking,
        ..ServerConfig::default()
    };
    let server = Server::new(config, Box::new(device));
    let probe = server.probe();
    (server.listen_temp().unwrap(), probe)
}

fn provider(eoi: Eoi) -> Arc<Irqs> {
    match eoi {
        Eoi::Resample => Irqs::with_resample(),
        Eoi::Call => Irqs::new(),
    }
}

/// The device attached with its own event loop thread.
fn attached(masking: IrqMasking, eoi: Eoi) -> Setup {
    let (server, probe) = server(masking);
    let irqs = provider(eoi);
    let dev = VfioUserPciDevice::attach(
        server.socket_path().unwrap(),
        guest_memory(1 << 20),
        irqs.clone(),
        &AttachOptions::default(),
    )
    .unwrap();
    Setup {
        dev,
        probe,
        irqs,
        server,
    }
}

/// Waits (spinning, no sleep) up to 5 s for the next signal on `fd` and returns the
/// eventfd's count: 1 unless signals were merged.
fn next_signal(fd: &EventFd) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Ok(n) = fd.read() {
            return n;
        }
        thread::yield_now();
    }
    0
}

/// Spins (no sleep) up to 5 s until `done`.
fn until(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::yield_now();
    }
    false
}

/// The guest, its interrupt controller and the device's line, with what they counted.
struct Guest<'a> {
    dev: &'a mut VfioUserPciDevice,
    probe: &'a Probe,
    irqs: &'a Irqs,
    eoi: Eoi,
    intx: Arc<EventFd>,
    signals: u64,
    eois: u64,
}

impl Guest<'_> {
    fn masked(&self) -> bool {
        self.probe.irq_state(IRQ_INTX)[0].masked
    }

    /// The guest ends the interrupt it is handling.
    fn end_of_interrupt(&mut self) {
        self.eois += 1;
        match self.eoi {
            Eoi::Resample => self.irqs.resample.as_ref().unwrap().write(1).unwrap(),
            Eoi::Call => self.dev.end_of_interrupt().unwrap(),
        }
    }

    /// Exactly one interrupt arrives.
    fn interrupted(&mut self) {
        assert_eq!(next_signal(&self.intx), 1, "one signal, none merged");
        self.signals += 1;
        assert!(self.masked(), "the server masked INTx when it signalled it");
    }

    /// The line was released: the end of interrupt unmasks INTx, and nothing arrives.
    fn quiet_after_end_of_interrupt(&mut self) {
        self.end_of_interrupt();
        assert!(until(|| !self.masked()), "INTx unmasked at the server");
        assert!(quiet(&self.intx), "no signal for a released line");
    }

    fn level(&self, held: bool) -> bool {
        self.probe.set_irq_level(IRQ_INTX, 0, held).unwrap()
    }
}

/// Conditions held across 0, 1, 3 and 2 ends of interrupt, a condition released and raised
/// again while INTx is masked, and one held across the INTx Disable bit; every signal and
/// end of interrupt counted.
fn level_rounds(dev: &mut VfioUserPciDevice, probe: &Probe, irqs: &Irqs, eoi: Eoi) {
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    let intx = irqs.fd(InterruptKind::Intx, 0);
    let mut g = Guest {
        dev,
        probe,
        irqs,
        eoi,
        intx,
        signals: 0,
        eois: 0,
    };
    let mut raised = 0;
    for held in [0, 1, 3, 2] {
        assert!(g.level(true), "a raised line signals at once");
        raised += 1;
        g.interrupted();
        for _ in 0..held {
            // The handler has not cleared the condition: the end of interrupt unmasks and
            // the server signals again.
            g.end_of_interrupt();
            g.interrupted();
        }
        // The handler clears the condition, then ends the interrupt.
        g.level(false);
        g.quiet_after_end_of_interrupt();
    }
    assert_eq!((g.signals, g.eois), (10, 10));

    // Released and raised again while masked: pending, delivered once at the end of
    // interrupt.
    assert!(g.level(true));
    raised += 1;
    g.interrupted();
    g.level(false);
    assert!(!g.level(true), "masked: left pending");
    g.end_of_interrupt();
    g.interrupted();
    g.level(false);
    g.quiet_after_end_of_interrupt();

    // Interrupt Disable while the line is held: INTx is disconnected and an end of
    // interrupt does nothing; clearing the bit connects it again and the held line
    // signals.
    assert!(g.level(true));
    raised += 1;
    g.interrupted();
    cfg_write(g.dev, 0x04, &0x0400u16.to_le_bytes());
    assert_eq!(g.dev.interrupt_mode(), None);
    let commands = g.probe.commands();
    g.end_of_interrupt();
    if eoi == Eoi::Resample {
        let resample = g.irqs.resample.as_ref().unwrap();
        assert!(consumed_within(resample, PATIENCE));
    }
    cfg_write(g.dev, 0x04, &0u16.to_le_bytes());
    assert_eq!(g.dev.interrupt_mode(), Some(InterruptKind::Intx));
    // Two config forwards and the INTx trigger: no unmask went out meanwhile.
    assert_eq!(g.probe.commands(), commands + 2);
    g.interrupted();
    g.level(false);
    g.quiet_after_end_of_interrupt();

    let state = g.probe.irq_state(IRQ_INTX)[0];
    assert_eq!(
        g.signals, state.signalled,
        "every signal was read, one by one"
    );
    // 6 raises, 6 ends of interrupt with the line held or pending, 6 with it released, 2
    // around Interrupt Disable.
    assert_eq!((raised, g.signals, g.eois), (6, 14, 14));
    assert_eq!(g.dev.error_count(), 0, "{:?}", g.dev.last_error());
}

#[test]
fn level_intx_ends_through_resample_with_attach() {
    let mut s = attached(IrqMasking::Implemented, Eoi::Resample);
    level_rounds(&mut s.dev, &s.probe, &s.irqs, Eoi::Resample);
    s.dev.detach().unwrap();
    s.server.stop();
}

#[test]
fn level_intx_ends_through_resample_on_a_kernel_style_server() {
    // vfio-pci's masking: INTx only.
    let mut s = attached(IrqMasking::Rejected, Eoi::Resample);
    level_rounds(&mut s.dev, &s.probe, &s.irqs, Eoi::Resample);
    s.dev.detach().unwrap();
    s.server.stop();
}

#[test]
fn level_intx_ends_through_end_of_interrupt() {
    let mut s = attached(IrqMasking::Implemented, Eoi::Call);
    level_rounds(&mut s.dev, &s.probe, &s.irqs, Eoi::Call);
    s.dev.detach().unwrap();
    s.server.stop();
}

#[test]
fn level_intx_ends_through_resample_in_an_event_manager() {
    let events = Loop::start();
    let (server, probe) = server(IrqMasking::Implemented);
    let irqs = provider(Eoi::Resample);
    let (mut dev, subscriber) = VfioUserPciDevice::attach_with_subscriber(
        server.socket_path().unwrap(),
        guest_memory(1 << 20),
        irqs.clone(),
        &AttachOptions::default(),
    )
    .unwrap();
    let id = events.add(subscriber);
    level_rounds(&mut dev, &probe, &irqs, Eoi::Resample);
    dev.detach().unwrap();
    events.remove(id);
    server.stop();
}

#[test]
fn a_server_that_cannot_mask_signals_once_per_raise() {
    // libvfio-user: no masking, so no auto-mask and nothing to unmask. The device signals
    // each time it raises the line; the end of interrupt sends nothing.
    let s = attached(IrqMasking::Ignored, Eoi::Resample);
    let intx = s.irqs.fd(InterruptKind::Intx, 0);
    let commands = s.probe.commands();
    assert_eq!(s.probe.set_irq_level(IRQ_INTX, 0, true), Ok(true));
    assert_eq!(next_signal(&intx), 1);
    s.irqs.resample.as_ref().unwrap().write(1).unwrap();
    assert!(consumed_within(s.irqs.resample.as_ref().unwrap(), PATIENCE));
    s.dev.end_of_interrupt().unwrap();
    assert_eq!(s.probe.commands(), commands, "no unmask sent");
    assert!(quiet(&intx));
    assert_eq!(s.probe.set_irq_level(IRQ_INTX, 0, false), Ok(false));
    assert_eq!(s.probe.set_irq_level(IRQ_INTX, 0, true), Ok(true));
    assert_eq!(next_signal(&intx), 1);
    s.dev.detach().unwrap();
    s.server.stop();
}
