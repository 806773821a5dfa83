// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! IRQ vector counts, at both layers.
//!
//! * The device layer bounds every index at discovery: INTx 1, MSI 32, MSI-X 2048, ERR 1
//!   and REQ 1 for a PCI device, 2048 for any other index. A scripted server reports the
//!   counts.
//! * The PCI layer refuses config spaces that offer the guest more vectors than the
//!   server reports. The sample GPIO device is served with its counts or its config space
//!   changed.

use std::os::unix::net::UnixListener;
use std::thread;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX,
};
use vfio_user_client::device::Error as DeviceError;
use vfio_user_client::pci::{AttachOptions, Error as PciError, InterruptKind, VfioUserPciDevice};
use vfio_user_client::protocol::{Command, DeviceInfo, IrqInfo, Version};
use vfio_user_client::{ConnectOptions, DeviceOptions, Error, VfioUserDevice};
use vfio_user_sample_server::test_support::guest::guest_memory;
use vfio_user_sample_server::test_support::pci::Irqs;
use vfio_user_sample_server::test_support::peers::{missing_socket, path_of};
use vfio_user_sample_server::test_support::script::{EINVAL, PATIENCE};
use vfio_user_sample_server::wire::RawEndpoint;
use vfio_user_sample_server::{
    Device, DeviceContext, DeviceInfo as ServedInfo, DmaMapInfo, Errno, GpioConfig, GpioDevice,
    RegionIoFd, RegionSpec, ResetReason, Server, ServerConfig, IRQ_INTX, IRQ_MSI, IRQ_MSIX,
    PCI_CONFIG_REGION,
};

const PCI: u32 = VFIO_DEVICE_FLAGS_PCI;

/// Every PCI IRQ index and its bound.
const PCI_BOUNDS: [(u32, u32); 5] = [
    (VFIO_PCI_INTX_IRQ_INDEX, 1),
    (VFIO_PCI_MSI_IRQ_INDEX, 32),
    (VFIO_PCI_MSIX_IRQ_INDEX, 2048),
    (VFIO_PCI_ERR_IRQ_INDEX, 1),
    (VFIO_PCI_REQ_IRQ_INDEX, 1),
];

/// Answers VERSION, DEVICE_GET_INFO (`flags`, no regions, an IRQ index per count) and
/// DEVICE_GET_IRQ_INFO (`counts[index]`) until the client hangs up.
fn answer(mut ep: RawEndpoint, flags: u32, counts: &[u32]) {
    while let Ok(m) = ep.recv() {
        let mut out = Vec::new();
        match Command::from_u16(m.header.command) {
            Some(Command::Version) => Version {
                major: 0,
                minor: 0,
                json: Some(r#"{"capabilities":{"max_msg_fds":8}}"#.to_string()),
            }
            .encode_into(&mut out),
            Some(Command::DeviceGetInfo) => DeviceInfo {
                argsz: 16,
                flags,
                num_regions: 0,
                num_irqs: counts.len() as u32,
            }
            .encode_into(&mut out),
            Some(Command::DeviceGetIrqInfo) => {
                let rq = IrqInfo::decode(&m.payload).unwrap();
                IrqInfo {
                    argsz: 16,
                    flags: VFIO_IRQ_INFO_EVENTFD,
                    index: rq.index,
                    count: counts[rq.index as usize],
                }
                .encode_into(&mut out)
            }
            _ => {
                if ep.reply_error(&m.header, EINVAL).is_err() {
                    return;
                }
                continue;
            }
        }
        if ep.reply(&m.header, &out, &[]).is_err() {
            return;
        }
    }
}

/// Discovers a device whose server reports `flags` and `counts`: the IRQ indexes, or the
/// device layer's error.
fn discover(flags: u32, counts: &[u32]) -> Result<Vec<IrqInfo>, DeviceError> {
    let (_dir, path) = missing_socket();
    let listener = UnixListener::bind(&path).unwrap();
    let counts = counts.to_vec();
    let peer = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        answer(RawEndpoint::new(s, PATIENCE), flags, &counts);
    });
    let dev = VfioUserDevice::connect(
        path.as_path(),
        &ConnectOptions::default(),
        &DeviceOptions::default(),
    );
    let result = match dev {
        Ok(dev) => Ok(dev.irqs().to_vec()),
        Err(Error::Device(e)) => Err(e),
        Err(e) => panic!("expected a device error, got {e}"),
    };
    // The client is gone either way: the peer sees the hang-up.
    peer.join().unwrap();
    result
}

fn too_many(e: &DeviceError) -> (u32, u32, u32) {
    match *e {
        DeviceError::TooManyVectors {
            index,
            count,
            limit,
        } => (index, count, limit),
        ref other => panic!("expected TooManyVectors, got {other}"),
    }
}

#[test]
fn every_pci_index_is_bounded() {
    for (index, bound) in PCI_BOUNDS {
        assert_eq!(VfioUserDevice::max_vectors(true, index), bound);
        let mut counts = [0; 5];
        counts[index as usize] = bound;
        let irqs = discover(PCI, &counts).unwrap();
        assert_eq!(irqs[index as usize].count, bound, "index {index}");

        counts[index as usize] = bound + 1;
        let e = discover(PCI, &counts).unwrap_err();
        assert_eq!(too_many(&e), (index, bound + 1, bound));
        assert_eq!(
            e.to_string(),
            format!(
                "IRQ index {index} reports {} vectors; at most {bound} are accepted",
                bound + 1
            )
        );
    }
}

#[test]
fn a_server_claiming_every_vector_is_refused() {
    let e = discover(PCI, &[1, 0, u32::MAX, 1, 1]).unwrap_err();
    assert_eq!(too_many(&e), (2, u32::MAX, 2048));
}

#[test]
fn what_real_servers_report_is_accepted() {
    for counts in [
        // Nothing at all (libvfio-user reports 0 for every type not set up).
        [0, 0, 0, 0, 0],
        // libvfio-user's sample server: INTx, and ERR and REQ from vfu_create_ctx.
        [1, 0, 0, 1, 1],
        // SPDK's NVMe controller.
        [1, 0, 512, 1, 1],
        // QEMU's server: INTx always, MSI-X (or else MSI) as the device allocated them.
        [1, 0, 64, 1, 1],
        [1, 32, 0, 1, 1],
        // The kernel's vfio-pci for a device with every kind.
        [1, 8, 2048, 1, 1],
    ] {
        let irqs = discover(PCI, &counts).unwrap();
        let got: Vec<u32> = irqs.iter().map(|i| i.count).collect();
        assert_eq!(got, counts);
    }
}

#[test]
fn device_specific_indexes_keep_the_general_bound() {
    assert_eq!(VfioUserDevice::MAX_VECTORS, 2048);
    assert_eq!(
        VfioUserDevice::max_vectors(true, 5),
        VfioUserDevice::MAX_VECTORS
    );
    let irqs = discover(PCI, &[1, 1, 1, 1, 1, 2048, 0]).unwrap();
    assert_eq!((irqs[5].count, irqs[6].count), (2048, 0));
    let e = discover(PCI, &[1, 1, 1, 1, 1, 0, 2049]).unwrap_err();
    assert_eq!(too_many(&e), (6, 2049, 2048));
}

#[test]
fn a_non_pci_device_has_the_general_bound_on_every_index() {
    // Its indexes are not the PCI ones: index 0 may have many vectors.
    assert_eq!(
        VfioUserDevice::max_vectors(false, VFIO_PCI_INTX_IRQ_INDEX),
        VfioUserDevice::MAX_VECTORS
    );
    let irqs = discover(0, &[2048, 2048, 1]).unwrap();
    assert_eq!(irqs[0].count, 2048);
    let e = discover(0, &[2049, 1, 1]).unwrap_err();
    assert_eq!(too_many(&e), (0, 2049, 2048));
}

/// The sample GPIO device (interrupt pin A; MSI with 1 vector; MSI-X with
/// `GpioConfig::msix_vectors`), with some IRQ counts replaced and its config space changed
/// by `patch` as the client reads it.
struct Miscounted {
    inner: GpioDevice,
    counts: Vec<(u32, u32)>,
    patch: fn(&mut [u8]),
}

impl Device for Miscounted {
    fn info(&self) -> ServedInfo {
        self.inner.info()
    }

    fn region(&self, index: u32) -> Option<RegionSpec> {
        self.inner.region(index)
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.counts
            .iter()
            .find(|(i, _)| *i == index)
            .map_or_else(|| self.inner.irq_count(index), |(_, n)| *n)
    }

    fn region_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        if index != PCI_CONFIG_REGION {
            return self.inner.region_read(ctx, index, offset, data);
        }
        let mut config = [0u8; 256];
        self.inner.region_read(ctx, index, 0, &mut config)?;
        (self.patch)(&mut config);
        let at = offset as usize;
        data.copy_from_slice(&config[at..at + data.len()]);
        Ok(())
    }

    fn region_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        self.inner.region_write(ctx, index, offset, data)
    }

    fn region_io_fds(&self, index: u32) -> Result<Vec<RegionIoFd>, Errno> {
        self.inner.region_io_fds(index)
    }

    fn reset(&mut self, reason: ResetReason) -> Result<(), Errno> {
        self.inner.reset(reason)
    }

    fn dma_mapped(&mut self, map: &DmaMapInfo) {
        self.inner.dma_mapped(map)
    }

    fn dma_unmapped(&mut self, map: &DmaMapInfo) {
        self.inner.dma_unmapped(map)
    }
}

fn unchanged(_: &mut [u8]) {}

fn no_pin(config: &mut [u8]) {
    config[0x3d] = 0;
}

/// MSI's Multiple Message Capable set to 2: four vectors.
fn msi_capable_of_4(config: &mut [u8]) {
    let mut at = usize::from(config[0x34]);
    while config[at] != 0x05 {
        at = usize::from(config[at + 1]);
        assert_ne!(at, 0, "the GPIO device has MSI");
    }
    config[at + 2] = (config[at + 2] & !0x0e) | (2 << 1);
}

/// Attaches to the GPIO device with `msix` MSI-X vectors, `counts` replacing its IRQ counts
/// and `patch` applied to its config space; detaches again when that worked, and returns
/// the interrupt mode it came up in.
fn attach(
    msix: u32,
    counts: &[(u32, u32)],
    patch: fn(&mut [u8]),
) -> Result<Option<InterruptKind>, PciError> {
    let config = GpioConfig {
        msix_vectors: msix,
        ..GpioConfig::default()
    };
    let (inner, _handle) = GpioDevice::new(config).unwrap();
    let device = Miscounted {
        inner,
        counts: counts.to_vec(),
        patch,
    };
    let server = Server::new(ServerConfig::default(), Box::new(device))
        .listen_temp()
        .unwrap();
    let dev = VfioUserPciDevice::attach(
        path_of(&server).as_path(),
        guest_memory(1 << 20),
        Irqs::new(),
        &AttachOptions::default(),
    )?;
    let mode = dev.interrupt_mode();
    dev.detach().unwrap();
    Ok(mode)
}

fn contradiction(e: PciError) -> (InterruptKind, u32, u32) {
    match e {
        PciError::IrqCount {
            kind,
            offered,
            count,
        } => (kind, offered, count),
        other => panic!("expected IrqCount, got {other}"),
    }
}

#[test]
fn the_sample_server_attaches_as_it_is() {
    assert_eq!(
        attach(4, &[], unchanged).unwrap(),
        Some(InterruptKind::Intx)
    );
    // MSI-X at the device layer's bound.
    attach(2048, &[], unchanged).unwrap();
}

#[test]
fn an_interrupt_pin_needs_an_intx_vector() {
    let e = attach(4, &[(IRQ_INTX, 0)], unchanged).unwrap_err();
    assert_eq!(contradiction(e), (InterruptKind::Intx, 1, 0));
    // No pin: INTx is simply not used, whether the server has a vector (QEMU's server
    // always reports one) or not.
    assert_eq!(attach(4, &[(IRQ_INTX, 0)], no_pin).unwrap(), None);
    assert_eq!(attach(4, &[], no_pin).unwrap(), None);
}

#[test]
fn the_msix_table_must_fit_the_msix_count() {
    attach(4, &[(IRQ_MSIX, 4)], unchanged).unwrap();
    attach(4, &[(IRQ_MSIX, 5)], unchanged).unwrap();
    let e = attach(4, &[(IRQ_MSIX, 3)], unchanged).unwrap_err();
    assert_eq!(contradiction(e), (InterruptKind::Msix, 4, 3));
    let e = attach(4, &[(IRQ_MSIX, 0)], unchanged).unwrap_err();
    assert_eq!(contradiction(e), (InterruptKind::Msix, 4, 0));
    let e = attach(2048, &[(IRQ_MSIX, 2047)], unchanged).unwrap_err();
    assert_eq!(contradiction(e), (InterruptKind::Msix, 2048, 2047));
    // No MSI-X capability: vectors at the server are unused.
    attach(0, &[(IRQ_MSIX, 16)], unchanged).unwrap();
}

#[test]
fn msi_multiple_message_capable_must_fit_the_msi_count() {
    attach(4, &[(IRQ_MSI, 4)], msi_capable_of_4).unwrap();
    attach(4, &[(IRQ_MSI, 32)], msi_capable_of_4).unwrap();
    let e = attach(4, &[(IRQ_MSI, 3)], msi_capable_of_4).unwrap_err();
    assert_eq!(contradiction(e), (InterruptKind::Msi, 4, 3));
    assert!(
        e_text(attach(4, &[(IRQ_MSI, 3)], msi_capable_of_4)).contains(
            "offers the guest 4 MSI vector(s) (its MSI capability's Multiple Message \
             Capable), but the server reports 3 for IRQ index 1"
        )
    );
    // Without MSI-X, MSI without vectors leaves the guest nothing.
    let e = attach(0, &[(IRQ_MSI, 0)], unchanged).unwrap_err();
    assert_eq!(contradiction(e), (InterruptKind::Msi, 1, 0));
}

#[test]
fn msi_without_vectors_beside_msix_is_qemus_server() {
    // QEMU's server sets up MSI-X or else MSI: a device with both reports MSI 0.
    attach(4, &[(IRQ_MSI, 0)], msi_capable_of_4).unwrap();
    // Not when the MSI-X table does not fit either.
    let e = attach(4, &[(IRQ_MSI, 0), (IRQ_MSIX, 2)], unchanged).unwrap_err();
    assert_eq!(contradiction(e), (InterruptKind::Msix, 4, 2));
}

#[test]
fn a_count_past_the_bound_fails_attach_at_discovery() {
    let e = attach(4, &[(IRQ_MSIX, 2049)], unchanged).unwrap_err();
    match e {
        PciError::Device(DeviceError::TooManyVectors {
            index: 2,
            count: 2049,
            limit: 2048,
        }) => {}
        other => panic!("expected TooManyVectors, got {other}"),
    }
}

fn e_text(r: Result<Option<InterruptKind>, PciError>) -> String {
    r.unwrap_err().to_string()
}
