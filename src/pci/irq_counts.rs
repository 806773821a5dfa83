// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The interrupt vectors config space offers the guest, against those the server signals
//! (DEVICE_GET_IRQ_INFO's counts, already bounded by the device layer).
//!
//! Config space may offer **fewer** vectors than the server signals: the rest stay unused.
//! Real servers do this. QEMU's server reports one INTx vector for every device, with an
//! interrupt pin or without. The kernel's vfio-pci and libvfio-user applications may size
//! an index larger than the capability the guest sees.
//!
//! Config space must not offer **more** than the server signals. The guest would program
//! vectors that never fire, and its driver would wait on them forever. So attaching is
//! refused ([`Error::IrqCount`]) when:
//! * the interrupt pin is set (1 to 4) but INTx has no vector;
//! * the MSI-X table is larger than the MSI-X count;
//! * MSI's Multiple Message Capable field offers more vectors than the MSI count.
//!
//! An absent IRQ index counts as 0 vectors. One exception, for QEMU's server: it sets up
//! MSI-X *or else* MSI (`vfu_object_setup_irqs`), so a device with both capabilities
//! reports MSI with 0 vectors. An MSI capability is accepted without MSI vectors when the
//! MSI-X capability is usable (its table fits the MSI-X count). A guest that enables MSI
//! there gets no vectors, as with that server under any client.

use super::{Error, InterruptKind};

/// What config space offers the guest: the interrupt pin register, MSI's vectors (`2^MMC`)
/// when it has the capability, and the MSI-X table size when it has that one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Offered {
    pub(crate) pin: u8,
    pub(crate) msi: Option<u32>,
    pub(crate) msix: Option<u32>,
}

/// Checks what config space offers against `count(kind)`, the vectors the server reports
/// for `kind`'s IRQ index (0 when the device has no such index).
pub(crate) fn check(offered: Offered, count: impl Fn(InterruptKind) -> u32) -> Result<(), Error> {
    let at_most = |kind, offered| match count(kind) {
        count if offered > count => Err(Error::IrqCount {
            kind,
            offered,
            count,
        }),
        _ => Ok(()),
    };
    if offered.pin != 0 {
        at_most(InterruptKind::Intx, 1)?;
    }
    if let Some(size) = offered.msix {
        at_most(InterruptKind::Msix, size)?;
    }
    if let Some(vectors) = offered.msi {
        if offered.msix.is_some() && count(InterruptKind::Msi) == 0 {
            log::info!(
                "the server reports no MSI vectors for the device's MSI capability; the \
                 guest has MSI-X"
            );
        } else {
            at_most(InterruptKind::Msi, vectors)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(intx: u32, msi: u32, msix: u32) -> impl Fn(InterruptKind) -> u32 {
        move |k| match k {
            InterruptKind::Intx => intx,
            InterruptKind::Msi => msi,
            InterruptKind::Msix => msix,
            InterruptKind::Err | InterruptKind::Req => 1,
        }
    }

    fn refused(offered: Offered, c: impl Fn(InterruptKind) -> u32) -> (InterruptKind, u32, u32) {
        match check(offered, c) {
            Err(Error::IrqCount {
                kind,
                offered,
                count,
            }) => (kind, offered, count),
            other => panic!("expected IrqCount, got {other:?}"),
        }
    }

    #[test]
    fn fewer_offered_than_signalled_is_fine() {
        let all = Offered {
            pin: 1,
            msi: Some(4),
            msix: Some(16),
        };
        check(all, counts(1, 4, 16)).unwrap();
        check(all, counts(1, 32, 2048)).unwrap();
        // No pin with an INTx vector (QEMU's server), vectors without a capability.
        check(Offered::default(), counts(1, 32, 2048)).unwrap();
        check(Offered::default(), counts(0, 0, 0)).unwrap();
    }

    #[test]
    fn more_offered_than_signalled_is_refused() {
        let pin = Offered {
            pin: 1,
            ..Offered::default()
        };
        assert_eq!(refused(pin, counts(0, 0, 0)), (InterruptKind::Intx, 1, 0));
        let msix = Offered {
            msix: Some(16),
            ..Offered::default()
        };
        assert_eq!(
            refused(msix, counts(1, 0, 15)),
            (InterruptKind::Msix, 16, 15)
        );
        assert_eq!(refused(msix, counts(1, 0, 0)), (InterruptKind::Msix, 16, 0));
        let msi = Offered {
            msi: Some(8),
            ..Offered::default()
        };
        assert_eq!(refused(msi, counts(1, 7, 0)), (InterruptKind::Msi, 8, 7));
        assert_eq!(refused(msi, counts(1, 0, 0)), (InterruptKind::Msi, 8, 0));
    }

    #[test]
    fn msi_without_vectors_beside_usable_msix_is_qemus_server() {
        let both = Offered {
            pin: 1,
            msi: Some(1),
            msix: Some(4),
        };
        check(both, counts(1, 0, 4)).unwrap();
        // But not MSI with too few vectors, nor an MSI-X table that does not fit.
        let both = Offered {
            msi: Some(4),
            ..both
        };
        assert_eq!(refused(both, counts(1, 2, 4)), (InterruptKind::Msi, 4, 2));
        assert_eq!(refused(both, counts(1, 0, 3)), (InterruptKind::Msix, 4, 3));
    }
}
