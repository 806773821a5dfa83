// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Seed inputs made by the crate's encoders, so that every target starts from real
//! message shapes. `tests/fuzz_corpus.rs` runs them and can write them into `corpus/`.

use vfio_bindings::bindings::vfio::{
    vfio_device_feature_dma_logging_range, vfio_region_sparse_mmap_area,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_MIGRATION_STOP_COPY,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::fuzzing::write_snapshot;
use vfio_user_client::negotiate::Offer;
use vfio_user_client::pci::PciState;
use vfio_user_client::protocol::{
    Command, DeviceFeature, DeviceInfo, DeviceState, DmaAccess, DmaLoggingReport, DmaLoggingStart,
    DmaMap, DmaUnmap, Header, IoFdsLayout, IoSubregion, IrqInfo, MigData, MigDeviceState,
    MigrationFeature, RegionAccess, RegionCap, RegionInfo, RegionIoFds, RegionWriteMulti, SetIrqs,
    UnmapBitmap, Version, WriteMultiEntry,
};
use vfio_user_sample_server::ConfigSpace;

use super::dirty_report::{IN_BUFFER, WELL_FORMED};
use super::input::Input;
use super::negotiate::{JSON_ONLY, OFFER_LEN, OFFER_MIGRATION, OFFER_TWIN};
use super::pci_config::{Device, OP_BAR, OP_INTERRUPTS, OP_MOVE, OP_READ, OP_RESET, OP_WRITE};
use super::pci_state::UNCHECKED;
use super::protocol::DECODERS;
use super::recv::{CHUNK_TWIN, TWIN};

/// One seed: the target, a name for its file, the input.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    out.extend(protocol());
    out.extend(negotiate());
    out.extend(region_info());
    out.extend(pci_config());
    out.extend(recv());
    out.extend(dirty_report());
    out.extend(pci_state());
    out.extend(snapshot());
    out
}

fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut out);
    out
}

fn rw() -> u32 {
    VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
}

fn region_reply() -> RegionInfo {
    let mut info = RegionInfo {
        argsz: 0,
        flags: rw() | VFIO_REGION_INFO_FLAG_MMAP,
        index: 2,
        cap_offset: 0,
        size: 0x10000,
        offset: 0x20000,
        caps: vec![
            RegionCap::SparseMmap(vec![
                vfio_region_sparse_mmap_area {
                    offset: 0,
                    size: 0x1000,
                },
                vfio_region_sparse_mmap_area {
                    offset: 0x8000,
                    size: 0x8000,
                },
            ]),
            RegionCap::Type {
                region_type: 3,
                subtype: 1,
            },
            RegionCap::MsixMappable,
            RegionCap::Unknown { id: 9, version: 2 },
        ],
    };
    info.argsz = info.encoded_len() as u32;
    info
}

fn io_fds(layout: IoFdsLayout) -> RegionIoFds {
    let subregions = vec![
        IoSubregion {
            offset: 0x10,
            size: 4,
            fd_index: 0,
            kind: IoSubregion::TYPE_IOEVENTFD,
            flags: IoSubregion::FLAG_DATAMATCH,
            data: Some(0xa5a5_0001),
            shadow: None,
        },
        IoSubregion {
            offset: 0x20,
            size: 8,
            fd_index: 1,
            kind: IoSubregion::TYPE_IOEVENTFD_SHADOW,
            flags: 0,
            data: Some(0),
            shadow: Some((2, 0x1000)),
        },
        IoSubregion {
            offset: 0x40,
            size: 0,
            fd_index: 1,
            kind: IoSubregion::TYPE_IOREGIONFD,
            flags: 0,
            data: Some(7),
            shadow: None,
        },
    ];
    RegionIoFds {
        argsz: 16 + 3 * layout.stride(),
        flags: 0,
        index: 2,
        count: 3,
        layout,
        subregions,
    }
}

/// `(decoder name, payload)` pairs: requests and replies as the crate sends and expects them.
fn protocol_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let rq = Header::command(7, Command::RegionRead, 16, false).expect("header");
    let mut p = vec![
        ("header", rq.to_bytes().to_vec()),
        ("header", Header::error_reply(&rq, 22).to_bytes().to_vec()),
        ("version", Offer::default().version_payload()),
        (
            "version",
            encoded(|o| {
                Version {
                    major: 0,
                    minor: 0,
                    json: None,
                }
                .encode_into(o)
            }),
        ),
        (
            "device_info",
            encoded(|o| {
                DeviceInfo {
                    argsz: 16,
                    flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
                    num_regions: 9,
                    num_irqs: 5,
                }
                .encode_into(o)
            }),
        ),
        ("region_info", encoded(|o| region_reply().encode_into(o))),
        (
            "region_info",
            encoded(|o| RegionInfo::request(7, 32).encode_into(o)),
        ),
        (
            "irq_info",
            encoded(|o| {
                IrqInfo {
                    flags: VFIO_IRQ_INFO_EVENTFD,
                    count: 32,
                    ..IrqInfo::request(2)
                }
                .encode_into(o)
            }),
        ),
        (
            "set_irqs",
            encoded(|o| {
                let flags = VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_MASK;
                SetIrqs::new(flags, 2, 4, 3, vec![true, false, true]).encode_into(o)
            }),
        ),
        (
            "set_irqs",
            encoded(|o| {
                let flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
                SetIrqs::new(flags, 2, 0, 8, vec![]).encode_into(o)
            }),
        ),
        (
            "dma_map",
            encoded(|o| {
                DmaMap::new(
                    DmaMap::FLAG_READ | DmaMap::FLAG_WRITE,
                    0,
                    0x1_0000,
                    0x20_0000,
                )
                .encode_into(o)
            }),
        ),
        (
            "dma_unmap",
            encoded(|o| DmaUnmap::new(0x1_0000, 0x20_0000).encode_into(o)),
        ),
        (
            "dma_unmap",
            encoded(|o| {
                DmaUnmap {
                    argsz: 24 + 16 + 2,
                    flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
                    address: 0,
                    size: 16 * 4096,
                    bitmap: Some(UnmapBitmap {
                        pgsize: 4096,
                        size: 2,
                        data: vec![0xff, 0x01],
                    }),
                }
                .encode_into(o)
            }),
        ),
        (
            "dma_access",
            encoded(|o| {
                DmaAccess {
                    address: 0x1000,
                    count: 4,
                }
                .encode_with_data(&[1, 2, 3, 4], o)
            }),
        ),
        (
            "region_access",
            encoded(|o| {
                RegionAccess {
                    offset: 0x10,
                    region: 0,
                    count: 4,
                }
                .encode_with_data(&[0xa5, 0xa5, 0, 1], o)
            }),
        ),
        (
            "region_write_multi",
            encoded(|o| {
                RegionWriteMulti {
                    writes: vec![
                        WriteMultiEntry {
                            offset: 8,
                            region: 0,
                            count: 4,
                            data: [1, 0, 0, 0, 0, 0, 0, 0],
                        },
                        WriteMultiEntry {
                            offset: 0x20,
                            region: 2,
                            count: 8,
                            data: [1, 2, 3, 4, 5, 6, 7, 8],
                        },
                    ],
                }
                .encode_into(o)
            }),
        ),
        (
            "region_write_multi_reply",
            encoded(|o| RegionWriteMulti::encode_reply(2, o)),
        ),
        (
            "device_feature",
            encoded(|o| {
                DeviceFeature::set_mig_device_state(DeviceState::StopCopy as u32).encode_into(o)
            }),
        ),
        (
            "migration_feature",
            encoded(|o| {
                MigrationFeature {
                    flags: u64::from(VFIO_MIGRATION_STOP_COPY),
                }
                .encode_into(o)
            }),
        ),
        (
            "mig_device_state",
            encoded(|o| {
                MigDeviceState {
                    device_state: DeviceState::Running as u32,
                    data_fd: 0,
                }
                .encode_into(o)
            }),
        ),
        (
            "dma_logging_start",
            encoded(|o| {
                DmaLoggingStart {
                    page_size: 4096,
                    ranges: vec![vfio_device_feature_dma_logging_range {
                        iova: 0x10000,
                        length: 0x20000,
                    }],
                }
                .encode_into(o)
            }),
        ),
        (
            "dma_logging_report",
            encoded(|o| {
                DmaLoggingReport {
                    iova: 0,
                    length: 64 * 4096,
                    page_size: 4096,
                    bitmap: vec![0x81, 0, 0, 0, 0, 0, 0, 0],
                }
                .encode_into(o)
            }),
        ),
        (
            "mig_data",
            encoded(|o| MigData { argsz: 12, size: 4 }.encode_with_data(&[9, 8, 7, 6], o)),
        ),
    ];
    for layout in [IoFdsLayout::Spec, IoFdsLayout::LibVfioUser] {
        p.push(("region_io_fds", encoded(|o| io_fds(layout).encode_into(o))));
    }
    p.push((
        "device_feature",
        encoded(|o| DeviceFeature::new(VFIO_DEVICE_FEATURE_MIGRATION, 0, vec![], 8).encode_into(o)),
    ));
    p
}

fn protocol() -> Vec<Seed> {
    let mut counts = std::collections::HashMap::new();
    protocol_payloads()
        .into_iter()
        .map(|(name, payload)| {
            let selector = DECODERS
                .iter()
                .position(|(n, _)| *n == name)
                .expect("a decoder of that name");
            let n = counts.entry(name).or_insert(0);
            *n += 1;
            let mut input = vec![selector as u8];
            input.extend_from_slice(&payload);
            ("protocol_decode", format!("seed-{name}-{n}"), input)
        })
        .collect()
}

/// The input prefix of the `negotiate_reply` target for `offer` and `flags`.
pub fn offer_prefix(offer: &Offer, flags: u8) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&offer.max_msg_fds.to_le_bytes());
    out.extend_from_slice(&offer.max_data_xfer_size.to_le_bytes());
    out.extend_from_slice(&offer.pgsizes.to_le_bytes());
    out.extend_from_slice(&offer.max_dma_maps.to_le_bytes());
    let m = offer
        .migration
        .unwrap_or(vfio_user_client::negotiate::MigrationCaps {
            pgsize: 0,
            max_bitmap_size: 0,
        });
    out.extend_from_slice(&m.pgsize.to_le_bytes());
    out.extend_from_slice(&m.max_bitmap_size.to_le_bytes());
    assert_eq!(out.len(), OFFER_LEN);
    out
}

fn negotiate() -> Vec<Seed> {
    let replies = [
        ("none", None),
        ("empty", Some("{}")),
        (
            "libvfio-user",
            Some(
                r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"pgsizes":4096,"migration":{"pgsize":4096,"max_bitmap_size":1048576},"twin_socket":{"supported":true,"fd_index":0},"write_multiple":true}}"#,
            ),
        ),
        (
            "rust-vmm",
            Some(
                r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"migration":{"pgsize":4096}}}"#,
            ),
        ),
        (
            "qemu",
            Some(
                r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535}}"#,
            ),
        ),
        (
            "other-key",
            Some(r#"{"capabilities":{"max_dma_maps":70000},"x":[1,2]}"#),
        ),
    ];
    let offer = Offer::default();
    let mut out = Vec::new();
    for (name, json) in replies {
        let payload = encoded(|o| {
            Version {
                major: 0,
                minor: 0,
                json: json.map(str::to_owned),
            }
            .encode_into(o)
        });
        let mut input = offer_prefix(&offer, OFFER_MIGRATION | OFFER_TWIN);
        input.extend_from_slice(&payload);
        out.push(("negotiate_reply", format!("seed-{name}"), input));
        if let Some(json) = json {
            let mut input = offer_prefix(&offer, JSON_ONLY);
            input.extend_from_slice(json.as_bytes());
            out.push(("negotiate_reply", format!("seed-{name}-json"), input));
        }
    }
    out
}

fn region_info() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut whole = vec![0u8];
    region_reply().encode_into(&mut whole);
    out.push(("region_info", "seed-reply".to_owned(), whole));
    let mut head_only = vec![0u8];
    let mut info = region_reply();
    info.caps.clear();
    info.encode_into(&mut head_only);
    out.push(("region_info", "seed-head".to_owned(), head_only));
    // The chain alone: `shrink` 0, `cap_offset` 32 + 0.
    let mut chain = vec![1u8, 0, 0, 0];
    chain.extend_from_slice(&encoded(|o| region_reply().encode_into(o))[32..]);
    out.push(("region_info", "seed-chain".to_owned(), chain));
    out
}

/// A region table entry of the `pci_config` target.
fn region_entry(size: u64, flags: u8) -> [u8; 4] {
    let shift = size.trailing_zeros().min(48);
    let mantissa = (size >> shift) as u16;
    let m = mantissa.to_le_bytes();
    [shift as u8, m[0], m[1], flags]
}

fn config_bytes(c: &ConfigSpace) -> Vec<u8> {
    let mut out = vec![0u8; 256];
    c.read(0, &mut out);
    out
}

fn write_op(reg: u16, offset: u8, len: usize, value: u32) -> Vec<u8> {
    let len_code = match len {
        1 => 0u8,
        2 => 1,
        _ => 2,
    };
    let mut out = vec![OP_WRITE];
    out.extend_from_slice(&reg.to_le_bytes());
    out.push(offset | (len_code << 3));
    out.extend_from_slice(&value.to_le_bytes());
    out
}

fn read_op(reg: u16) -> Vec<u8> {
    let mut out = vec![OP_READ];
    out.extend_from_slice(&reg.to_le_bytes());
    out
}

fn bar_op(bar: u8, offset: u32, data: &[u8], write: bool) -> Vec<u8> {
    let shape = (data.len() as u8 - 1) | if write { 0x40 } else { 0 };
    let mut out = vec![OP_BAR, bar, shape];
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// What a guest's firmware and driver do: size and place the BARs, turn decoding on,
/// program MSI-X vector 0 and MSI, read the capability chain, reset.
fn guest_program(msix_cap: u16, msi_cap: u16) -> Vec<u8> {
    let mut ops = Vec::new();
    for reg in 4..10u16 {
        ops.extend(write_op(reg, 0, 4, u32::MAX));
        ops.extend(read_op(reg));
    }
    ops.extend(write_op(12, 0, 4, u32::MAX));
    ops.extend(write_op(4, 0, 4, 0xc000_0000));
    ops.extend(write_op(6, 0, 4, 0xc001_0000));
    ops.extend(write_op(7, 0, 4, 0));
    ops.extend(write_op(8, 0, 4, 0xc002_0000));
    ops.extend(write_op(1, 0, 2, 0x0406));
    for reg in [1, 3, 0xd, msix_cap / 4, msi_cap / 4] {
        ops.extend(read_op(reg));
    }
    ops.extend(write_op(msix_cap / 4, 2, 2, 0xc000));
    ops.extend(bar_op(4, 0, &[0, 0, 0xe0, 0xfe, 0, 0, 0, 0], true));
    ops.extend(bar_op(4, 8, &[0x21, 0, 0, 0, 0, 0, 0, 0], true));
    ops.extend(bar_op(4, 0, &[0; 16], false));
    ops.extend(write_op(msix_cap / 4, 2, 2, 0x8000));
    ops.extend([OP_INTERRUPTS, 1, 4, 0, 8, 0, 0, 0]);
    ops.extend(write_op(msi_cap / 4 + 1, 0, 4, 0xfee0_0000));
    ops.extend(write_op(msi_cap / 4, 2, 2, 0x0021));
    ops.extend([OP_INTERRUPTS, 0, 32, 0, 0, 0, 0, 0]);
    ops.extend([OP_MOVE, 0, 0, 0, 0, 0xd0, 0, 0, 0, 0]);
    ops.push(OP_RESET);
    ops.extend(read_op(4));
    ops
}

/// The region table and config space of a device with every kind of BAR, MSI and MSI-X;
/// with the offsets of its MSI and MSI-X capabilities.
fn pci_device() -> (Vec<u8>, u16, u16) {
    let bar_rw = 3u8;
    let config = ConfigSpace::new(0x494f, 0x0dc8, 0xff_0000, 1)
        .with_bar(0, 256)
        .with_bar64(2, 64 << 10, true)
        .with_bar(4, 4096)
        .with_rom(2048)
        .with_interrupt_pin(1)
        .with_pm()
        .with_msi(4, true, true)
        .with_msix(8, 4, 0, 4, 0x800)
        .with_pcie();
    let bytes = config_bytes(&config);
    let cap = |id: u8| config.find_cap(id).expect("capability") as u16;
    let (msi, msix) = (cap(0x05), cap(0x11));
    let sizes: [(u64, u8); 9] = [
        (256, bar_rw),
        (0, 0),
        (64 << 10, bar_rw | 4),
        (0, 0),
        (4096, bar_rw),
        (0, 0),
        (2048, 1),
        (256, bar_rw),
        (0, 0),
    ];
    let mut input: Vec<u8> = sizes
        .iter()
        .flat_map(|&(s, f)| region_entry(s, f))
        .collect();
    input.extend_from_slice(&bytes);
    (input, msi, msix)
}

fn pci_config() -> Vec<Seed> {
    let bar_rw = 3u8;
    let (discovery, msi, msix) = pci_device();
    let mut input = discovery.clone();
    input.extend(guest_program(msix, msi));

    let io = ConfigSpace::new(0x1af4, 0x1000, 0x02_0000, 0)
        .with_io_bar(0, 64)
        .with_bar(1, 4096)
        .with_msix(2, 1, 0, 1, 0x100);
    let mut io_input: Vec<u8> = [(64u64, bar_rw), (4096, bar_rw)]
        .iter()
        .chain([(0, 0); 5].iter())
        .chain([(4096, bar_rw), (0, 0)].iter())
        .flat_map(|&(s, f)| region_entry(s, f))
        .collect();
    io_input.extend_from_slice(&config_bytes(&io));
    io_input.extend(write_op(4, 0, 4, 0xc100));
    io_input.extend(write_op(1, 0, 2, 0x0001));
    io_input.extend(read_op(4));
    vec![
        ("pci_config", "seed-discovery".to_owned(), discovery),
        ("pci_config", "seed-guest".to_owned(), input),
        ("pci_config", "seed-io-bar".to_owned(), io_input),
    ]
}

/// A `recv_stream` chunk: `bytes` with `fds` fds, on the twin socket when `twin`.
fn chunk(bytes: &[u8], fds: u8, twin: bool) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_le_bytes().to_vec();
    out.push(fds | if twin { CHUNK_TWIN } else { 0 });
    out.extend_from_slice(bytes);
    out
}

fn message(header: Header, payload: &[u8]) -> Vec<u8> {
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// The reply to the client's `n`th REGION_READ (ids follow VERSION's 0).
fn read_reply(id: u16) -> Vec<u8> {
    let rq = Header::command(id, Command::RegionRead, 16, false).expect("header");
    let payload = encoded(|o| {
        RegionAccess {
            offset: 0,
            region: 0,
            count: 4,
        }
        .encode_with_data(&[1, 2, 3, 4], o)
    });
    message(Header::reply(&rq, payload.len()).expect("header"), &payload)
}

fn dma_request(id: u16, write: bool) -> Vec<u8> {
    let access = DmaAccess {
        address: 0x1000,
        count: 8,
    };
    let (command, payload) = if write {
        (
            Command::DmaWrite,
            encoded(|o| access.encode_with_data(&[7; 8], o)),
        )
    } else {
        (Command::DmaRead, encoded(|o| access.encode_into(o)))
    };
    message(
        Header::command(id, command, payload.len(), false).expect("header"),
        &payload,
    )
}

fn recv() -> Vec<Seed> {
    let replies: Vec<u8> = (1..=3)
        .flat_map(|id| chunk(&read_reply(id), 0, false))
        .collect();
    let mut split = vec![1u8];
    let one = read_reply(1);
    split.extend(chunk(&one[..10], 0, false));
    split.extend(chunk(&one[10..], 1, false));
    let mut dma = vec![1u8];
    dma.extend(chunk(&dma_request(1, false), 0, false));
    dma.extend(chunk(&dma_request(2, true), 0, false));
    dma.extend(chunk(&read_reply(1), 0, false));
    let mut twin = vec![1u8 | TWIN];
    twin.extend(chunk(&dma_request(1, false), 0, true));
    twin.extend(chunk(&dma_request(2, true), 2, true));
    twin.extend(chunk(&read_reply(1), 0, false));
    let rq = Header::command(2, Command::RegionRead, 16, false).expect("header");
    let mut errors = vec![2u8];
    errors.extend(chunk(&Header::error_reply(&rq, 5).to_bytes(), 0, false));
    errors.extend(chunk(&read_reply(1), 3, false));
    let mut all = vec![3u8];
    all.extend_from_slice(&replies);
    vec![
        ("recv_stream", "seed-replies".to_owned(), all),
        ("recv_stream", "seed-split".to_owned(), split),
        ("recv_stream", "seed-dma".to_owned(), dma),
        ("recv_stream", "seed-twin".to_owned(), twin),
        ("recv_stream", "seed-errors".to_owned(), errors),
    ]
}

/// A `dirty_report` input: 4 KiB pages, a range of 200 pages at IOVA 1 MiB (guest-physical
/// 512 KiB) reported 128 pages at a time, its second report (72 pages), then the mode and
/// the reply's bytes.
fn dirty_report_input(mode: u8, reply: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&199u16.to_le_bytes());
    out.extend_from_slice(&[1, 1, mode]);
    out.extend_from_slice(&0x100u32.to_le_bytes());
    out.extend_from_slice(&0x80u32.to_le_bytes());
    out.extend_from_slice(reply);
    out
}

fn dirty_report() -> Vec<Seed> {
    let bits: Vec<u8> = [0x8000_0000_0000_0001u64, 0xff]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let rq = DmaLoggingReport {
        iova: 0x100000 + 128 * 0x1000,
        length: 72 * 0x1000,
        page_size: 0x1000,
        bitmap: bits.clone(),
    };
    let mut data = Vec::new();
    rq.encode_into(&mut data);
    let mut reply = Vec::new();
    DeviceFeature::new(
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
        VFIO_DEVICE_FEATURE_GET,
        data,
        0,
    )
    .encode_into(&mut reply);
    vec![
        (
            "dirty_report",
            "seed-reply".to_owned(),
            dirty_report_input(0, &reply),
        ),
        (
            "dirty_report",
            "seed-reply-in-buffer".to_owned(),
            dirty_report_input(IN_BUFFER, &reply),
        ),
        (
            "dirty_report",
            "seed-bitmap".to_owned(),
            dirty_report_input(WELL_FORMED, &bits),
        ),
        (
            "dirty_report",
            "seed-bitmap-in-buffer".to_owned(),
            dirty_report_input(WELL_FORMED | IN_BUFFER, &bits),
        ),
    ]
}

/// The device of [`pci_device`] and a state of it with BAR0 placed, MSI addressed and
/// MSI-X enabled.
fn device_state() -> (Vec<u8>, PciState) {
    let (discovery, msi, msix) = pci_device();
    let mut input = Input::new(&discovery);
    let device = Device::read(&mut input);
    let mut shadow = device.discover().expect("the seed device is discovered");
    let identity = super::pci_state::identity(&device, &shadow);
    let writes = [
        (1, 0, 0x0106u32.to_le_bytes()),
        (4, 0, 0xc000_0000u32.to_le_bytes()),
        (usize::from(msi) / 4 + 1, 0, 0xfee0_0000u32.to_le_bytes()),
        (usize::from(msix) / 4, 2, 0x8000u32.to_le_bytes()),
    ];
    for (reg, offset, value) in writes {
        let len = if offset == 2 { 2 } else { 4 };
        shadow.write(reg, offset, &value[..len]);
    }
    let state = shadow.pci_state(&identity);
    (discovery, state)
}

fn pci_state() -> Vec<Seed> {
    let (discovery, state) = device_state();
    let state = serde_json::to_vec(&state).expect("a state serialises");
    let text = String::from_utf8(state.clone()).expect("JSON is UTF-8");
    let other = text
        .replacen("\"version\":1", "\"version\":2", 1)
        .into_bytes();
    let seed = |mode: u8, json: &[u8]| {
        let mut out = discovery.clone();
        out.push(mode);
        out.extend_from_slice(json);
        out
    };
    vec![
        ("pci_state", "seed-own-state".to_owned(), seed(0, &state)),
        (
            "pci_state",
            "seed-other-version".to_owned(),
            seed(0, &other),
        ),
        (
            "pci_state",
            "seed-unchecked".to_owned(),
            seed(UNCHECKED, &state),
        ),
    ]
}

fn snapshot() -> Vec<Seed> {
    let (_, state) = device_state();
    let data: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
    let container = write_snapshot(&state, &data).expect("a container is written");
    let empty = write_snapshot(&state, &[]).expect("a container is written");
    let mut followed = container.clone();
    followed.extend_from_slice(b"the VMM's own state follows");
    vec![
        ("snapshot", "seed-container".to_owned(), container),
        ("snapshot", "seed-no-device-data".to_owned(), empty),
        ("snapshot", "seed-followed".to_owned(), followed),
    ]
}
