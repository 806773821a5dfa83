// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! IRQ vector counts: the device layer bounds every index at discovery (INTx 1, MSI 32,
//! MSI-X 2048, ERR 1 and REQ 1 for a PCI device, 2048 for any other index). A scripted
//! server reports the counts.

use std::os::unix::net::UnixListener;
use std::thread;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX,
};
use vfio_user_client::device::{max_vectors, Error as DeviceError, Irq, MAX_VECTORS};
use vfio_user_client::protocol::{Command, DeviceInfo, IrqInfo, Version};
use vfio_user_client::{ConnectOptions, DeviceOptions, Error, VfioUserDevice};
use vfio_user_sample_server::test_support::peers::missing_socket;
use vfio_user_sample_server::test_support::script::{EINVAL, PATIENCE};
use vfio_user_sample_server::wire::RawEndpoint;

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
fn discover(flags: u32, counts: &[u32]) -> Result<Vec<Irq>, DeviceError> {
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
        assert_eq!(max_vectors(true, index), bound);
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
    assert_eq!(MAX_VECTORS, 2048);
    assert_eq!(max_vectors(true, 5), MAX_VECTORS);
    let irqs = discover(PCI, &[1, 1, 1, 1, 1, 2048, 0]).unwrap();
    assert_eq!((irqs[5].count, irqs[6].count), (2048, 0));
    let e = discover(PCI, &[1, 1, 1, 1, 1, 0, 2049]).unwrap_err();
    assert_eq!(too_many(&e), (6, 2049, 2048));
}

#[test]
fn a_non_pci_device_has_the_general_bound_on_every_index() {
    // Its indexes are not the PCI ones: index 0 may have many vectors.
    assert_eq!(max_vectors(false, VFIO_PCI_INTX_IRQ_INDEX), MAX_VECTORS);
    let irqs = discover(0, &[2048, 2048, 1]).unwrap();
    assert_eq!(irqs[0].count, 2048);
    let e = discover(0, &[2049, 1, 1]).unwrap_err();
    assert_eq!(too_many(&e), (0, 2049, 2048));
}
