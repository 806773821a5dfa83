// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! INTx Disable, failures on the interrupt path, reset and detach.

use super::*;
use vfio_bindings::bindings::vfio::VFIO_PCI_INTX_IRQ_INDEX;
use vfio_user_client::protocol::Command;
use vfio_user_sample_server::test_support::pci::consumed_within;
use vfio_user_sample_server::Errno;

#[test]
fn intx_disable_bit_disconnects_intx() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    let intx = g.irqs.fd(InterruptKind::Intx, 0);
    cfg_write(dev, 0x04, &0x0406u16.to_le_bytes());
    assert_eq!(dev.interrupt_mode(), None);
    assert!(!g.probe.irq_state(IRQ_INTX)[0].assigned);
    assert_eq!(g.probe.raise_irq(IRQ_INTX, 0), Ok(false));
    mmio_write_u32(dev, BAR0_BASE, GpioDevice::REG_IRQ_RAISE, IRQ_INTX << 16);
    assert!(quiet(&intx));
    // The end of an interrupt sends nothing now.
    let commands = g.probe.commands();
    dev.end_of_interrupt().unwrap();
    assert_eq!(g.probe.commands(), commands);
    cfg_write(dev, 0x04, &0x0006u16.to_le_bytes());
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    mmio_write_u32(dev, BAR0_BASE, GpioDevice::REG_IRQ_RAISE, IRQ_INTX << 16);
    assert!(fired(&intx));
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn no_intx_unmask_goes_to_a_server_that_cannot_mask() {
    let _g = shared();
    let config = ServerConfig {
        irq_masking: vfio_user_sample_server::IrqMasking::Ignored,
        ..ServerConfig::default()
    };
    let g = gpio_on(config, GpioConfig::default(), Irqs::with_resample());
    assert_eq!(g.dev.interrupt_mode(), Some(InterruptKind::Intx));
    let commands = g.probe.commands();
    g.dev.end_of_interrupt().unwrap();
    // Through the subscriber too: a resample, then a request whose reply follows any
    // message the subscriber might have sent.
    g.irqs.resample.as_ref().unwrap().write(1).unwrap();
    assert!(consumed_within(
        g.irqs.resample.as_ref().unwrap(),
        Duration::from_secs(5)
    ));
    g.dev.device().irq(VFIO_PCI_INTX_IRQ_INDEX).unwrap();
    let _ = g.dev.device().region_io_fds(0);
    assert_eq!(g.probe.commands(), commands + 1, "only the REGION_IO_FDS");
}

#[test]
fn a_failed_unmask_is_sent_again_on_the_next_sync() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    enable_memory(dev);
    for v in 0..4 {
        program_vector(dev, BAR4_BASE, 0, v, false);
    }
    enable_msix(dev);
    mmio_write_u32(dev, BAR4_BASE, 16 + 12, 1);
    assert!(g.probe.irq_state(IRQ_MSIX)[1].masked);
    g.probe
        .fail_next(Command::DeviceSetIrqs, Errno(libc::EIO), 1);
    mmio_write_u32(dev, BAR4_BASE, 16 + 12, 0);
    assert_eq!(dev.error_count(), 1);
    let last = dev.last_error().unwrap();
    assert!(last.to_string().contains("interrupt setup"));
    assert!(matches!(
        *last,
        vfio_user_client::pci::Error::During {
            activity: vfio_user_client::pci::Activity::InterruptSetup,
            ..
        }
    ));
    assert!(g.probe.irq_state(IRQ_MSIX)[1].masked, "the UNMASK failed");
    // The next write of the entry (even with the same value) sends it again.
    mmio_write_u32(dev, BAR4_BASE, 16 + 12, 0);
    assert!(!g.probe.irq_state(IRQ_MSIX)[1].masked);
    assert_eq!(g.probe.raise_irq(IRQ_MSIX, 1), Ok(true));
    assert!(fired(&g.irqs.fd(InterruptKind::Msix, 1)));
    assert_eq!(dev.error_count(), 1);
}

#[test]
fn a_failed_mode_change_is_undone_and_retried() {
    let _g = shared();
    for masking in [
        vfio_user_sample_server::IrqMasking::Implemented,
        vfio_user_sample_server::IrqMasking::Ignored,
    ] {
        let config = ServerConfig {
            irq_masking: masking,
            ..ServerConfig::default()
        };
        let mut g = gpio_on(config, GpioConfig::default(), Irqs::new());
        let dev = &mut g.dev;
        enable_memory(dev);
        // INTx off first, so that the MSI-X setup's first SET_IRQS is the one to fail.
        cfg_write(dev, 0x04, &0x0406u16.to_le_bytes());
        program_vector(dev, BAR4_BASE, 0, 0, false);
        g.probe
            .fail_next(Command::DeviceSetIrqs, Errno(libc::EIO), 1);
        let cap = enable_msix(dev);
        assert_eq!(dev.interrupt_mode(), None, "{masking:?}");
        assert_eq!(dev.error_count(), 1, "{masking:?}");
        assert_eq!(*g.irqs.disabled.lock().unwrap(), [InterruptKind::Msix]);
        assert!(g.probe.irq_state(IRQ_MSIX).iter().all(|s| !s.assigned));
        // The guest's next config write retries.
        cfg_write(dev, cap + 3, &[0x80]);
        assert_eq!(
            dev.interrupt_mode(),
            Some(InterruptKind::Msix),
            "{masking:?}"
        );
        assert_eq!(g.probe.raise_irq(IRQ_MSIX, 0), Ok(true));
        assert!(fired(&g.irqs.fd(InterruptKind::Msix, 0)));
        assert_eq!(dev.error_count(), 1, "{masking:?}");
    }
}

#[test]
fn reset_in_intx_mode_reconnects_everything() {
    let _g = shared();
    // A server whose reset takes the interrupt setup down: the client must connect
    // everything again.
    let config = ServerConfig {
        reset_clears_irqs: true,
        ..ServerConfig::default()
    };
    let mut g = gpio_on(config, GpioConfig::default(), Irqs::new());
    let dev = &mut g.dev;
    let resets = g.handle.resets();
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    dev.reset().unwrap();
    assert_eq!(g.handle.resets(), resets + 1);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    for (index, kind) in [
        (IRQ_INTX, InterruptKind::Intx),
        (IRQ_ERR, InterruptKind::Err),
        (IRQ_REQ, InterruptKind::Req),
    ] {
        assert!(g.probe.irq_state(index)[0].assigned, "{kind:?}");
        assert_eq!(g.probe.raise_irq(index, 0), Ok(true));
        assert!(fired(&g.irqs.fd(kind, 0)), "{kind:?}");
    }
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn reset_disconnects_msix_before_the_device_resets() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    enable_memory(dev);
    let cap = enable_msix(dev);
    dev.reset().unwrap();
    let recent = g.probe.recent_commands();
    let at = recent
        .iter()
        .rposition(|c| *c == Command::DeviceReset)
        .unwrap();
    assert_eq!(
        recent[at - 1],
        Command::DeviceSetIrqs,
        "MSI-X disabled first: {recent:?}"
    );
    assert!(g.probe.irq_state(IRQ_MSIX).iter().all(|s| !s.assigned));
    assert_eq!(*g.irqs.disabled.lock().unwrap(), [InterruptKind::Msix]);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Intx));
    assert_eq!(
        cfg_read(dev, cap + 2, 2),
        0x0003,
        "MSI-X disabled in the shadow"
    );
    assert_eq!(dev.error_count(), 0, "{:?}", dev.last_error());
}

#[test]
fn detach_in_msix_mode_tells_the_provider() {
    let _g = shared();
    let mut g = gpio();
    let dev = &mut g.dev;
    enable_memory(dev);
    enable_msix(dev);
    assert_eq!(dev.interrupt_mode(), Some(InterruptKind::Msix));
    let probe = g.probe.clone();
    g.dev.detach().unwrap();
    assert_eq!(*g.irqs.disabled.lock().unwrap(), [InterruptKind::Msix]);
    assert!(probe.wait_disconnects(1, Duration::from_secs(5)));
}
