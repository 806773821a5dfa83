// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the guest sees of MSI and MSI-X masking against servers that mask (and say so),
//! ignore MASK like libvfio-user, or refuse it like the kernel: a masked vector never
//! fires, its pending bit is set, and unmasking delivers it.

use super::*;
use vfio_user_sample_server::IrqMasking;

const MODES: [IrqMasking; 3] = [
    IrqMasking::Implemented,
    IrqMasking::Ignored,
    IrqMasking::Rejected,
];

fn gpio_masking(masking: IrqMasking) -> Gpio {
    let config = ServerConfig {
        irq_masking: masking,
        ..ServerConfig::default()
    };
    gpio_on(config, GpioConfig::default(), Irqs::new())
}

/// Raises `vector` of `index` the way the device does (its IRQ_RAISE register).
fn device_raises(dev: &mut VfioUserPciDevice, index: u32, vector: u32) {
    mmio_write_u32(
        dev,
        BAR0_BASE,
        GpioDevice::REG_IRQ_RAISE,
        (index << 16) | vector,
    );
}

#[test]
fn msix_masks_hold_in_every_server_mode() {
    let _g = shared();
    for masking in MODES {
        let mut g = gpio_masking(masking);
        let dev = &mut g.dev;
        enable_memory(dev);
        for v in 0..4 {
            program_vector(dev, BAR4_BASE, 0, v, false);
        }
        let cap = enable_msix(dev);
        assert_eq!(
            dev.interrupt_mode(),
            Some(InterruptKind::Msix),
            "{masking:?}"
        );
        let fd1 = g.irqs.fd(InterruptKind::Msix, 1);
        device_raises(dev, IRQ_MSIX, 1);
        assert!(fired(&fd1), "{masking:?}: unmasked vector fires");

        let pba = GpioDevice::msix_pba_offset(4);
        mmio_write_u32(dev, BAR4_BASE, 16 + 12, 1);
        assert_eq!(
            g.irqs.route(InterruptKind::Msix, 1),
            Some((message(1), true))
        );
        assert_eq!(
            mmio_u32(dev, BAR4_BASE, pba),
            0,
            "{masking:?}: nothing pending"
        );
        device_raises(dev, IRQ_MSIX, 1);
        // The device's raise completed before the read's reply: a signal would be there.
        assert_eq!(
            mmio_u32(dev, BAR4_BASE, pba),
            0b10,
            "{masking:?}: pending bit"
        );
        assert!(quiet(&fd1), "{masking:?}: a masked vector must not fire");
        mmio_write_u32(dev, BAR4_BASE, 16 + 12, 0);
        assert!(fired(&fd1), "{masking:?}: delivered on unmask");
        assert_eq!(mmio_u32(dev, BAR4_BASE, pba), 0, "{masking:?}: delivered");
        assert!(quiet(&fd1), "{masking:?}: delivered once");

        // The function mask masks every vector; clearing it delivers what is pending.
        let fd0 = g.irqs.fd(InterruptKind::Msix, 0);
        cfg_write(dev, cap + 3, &[0xc0]);
        device_raises(dev, IRQ_MSIX, 0);
        device_raises(dev, IRQ_MSIX, 3);
        assert_eq!(mmio_u32(dev, BAR4_BASE, pba), 0b1001, "{masking:?}");
        assert!(quiet(&fd0), "{masking:?}: function-masked");
        cfg_write(dev, cap + 3, &[0x80]);
        assert!(fired(&fd0), "{masking:?}");
        assert!(fired(&g.irqs.fd(InterruptKind::Msix, 3)), "{masking:?}");
        assert!(quiet(&fd1), "{masking:?}: vector 1 did not fire");
        assert_eq!(mmio_u32(dev, BAR4_BASE, pba), 0, "{masking:?}");

        // Where the server cannot mask, nothing was masked there (and nothing refused).
        let server_masked = g.probe.irq_state(IRQ_MSIX).iter().any(|s| s.masked);
        assert!(!server_masked, "{masking:?}");
        assert_eq!(dev.error_count(), 0, "{masking:?}: {:?}", dev.last_error());
        g.dev.detach().unwrap();
    }
}

#[test]
fn msi_masks_hold_in_every_server_mode() {
    let _g = shared();
    for masking in MODES {
        let mut g = gpio_masking(masking);
        let dev = &mut g.dev;
        enable_memory(dev);
        let cap = find_cap(dev, 0x05).unwrap();
        cfg_write(dev, cap + 4, &0xfee0_1000u32.to_le_bytes());
        cfg_write(dev, cap + 12, &0x55u16.to_le_bytes());
        cfg_write(dev, cap + 2, &[0x01]);
        assert_eq!(
            dev.interrupt_mode(),
            Some(InterruptKind::Msi),
            "{masking:?}"
        );
        let fd = g.irqs.fd(InterruptKind::Msi, 0);
        device_raises(dev, IRQ_MSI, 0);
        assert!(fired(&fd), "{masking:?}");
        // Per-vector mask (cap + 16), pending bits (cap + 20).
        cfg_write(dev, cap + 16, &1u32.to_le_bytes());
        device_raises(dev, IRQ_MSI, 0);
        assert_eq!(cfg_read(dev, cap + 20, 4), 1, "{masking:?}: pending");
        assert!(quiet(&fd), "{masking:?}: masked");
        cfg_write(dev, cap + 16, &0u32.to_le_bytes());
        assert!(fired(&fd), "{masking:?}: delivered on unmask");
        assert_eq!(cfg_read(dev, cap + 20, 4), 0, "{masking:?}");
        assert_eq!(dev.error_count(), 0, "{masking:?}: {:?}", dev.last_error());
    }
}

#[test]
fn a_vector_enabled_masked_fires_only_after_unmask() {
    let _g = shared();
    for masking in MODES {
        let mut g = gpio_masking(masking);
        let dev = &mut g.dev;
        enable_memory(dev);
        // Enabled with every entry still masked (the reset state).
        enable_msix(dev);
        let fd = g.irqs.fd(InterruptKind::Msix, 2);
        device_raises(dev, IRQ_MSIX, 2);
        let pba = GpioDevice::msix_pba_offset(4);
        assert_eq!(mmio_u32(dev, BAR4_BASE, pba), 0b100, "{masking:?}");
        assert!(quiet(&fd), "{masking:?}");
        program_vector(dev, BAR4_BASE, 0, 2, false);
        assert!(fired(&fd), "{masking:?}");
        assert_eq!(dev.error_count(), 0, "{masking:?}: {:?}", dev.last_error());
    }
}
