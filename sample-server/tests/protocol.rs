// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Message-level behaviour of the server, driven with hand-built messages.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vfio_user_client::protocol::{Command, Header};
use vfio_user_sample_server::test_support::script::*;
use vfio_user_sample_server::wire::RawEndpoint;
use vfio_user_sample_server::{
    GpioDevice, MigrationConfig, Quirks, ResetReason, ServerConfig, VersionPayload,
    PCI_CONFIG_REGION,
};

fn gpio() -> (
    RawEndpoint,
    vfio_user_sample_server::ServerHandle,
    vfio_user_sample_server::GpioHandle,
) {
    gpio_with(ServerConfig::default())
}

fn gpio_with(
    config: ServerConfig,
) -> (
    RawEndpoint,
    vfio_user_sample_server::ServerHandle,
    vfio_user_sample_server::GpioHandle,
) {
    let (dev, h) = GpioDevice::new(Default::default()).unwrap();
    let (c, s) = serve_pair(config, Box::new(dev));
    (c, s, h)
}

#[test]
fn version_reply_matches_libvfio_user() {
    let (mut c, server, _) = gpio();
    let m = c.version_with(
        5,
        r#"{"capabilities":{"max_msg_fds":3,"max_data_xfer_size":4096,"unknown":1}}"#,
    );
    m.assert_ok();
    assert_eq!(&m.payload[..4], &[0, 0, 2, 0][..], "0.min(5, 2)");
    assert_eq!(
        &m.payload[4..],
        &b"{\"capabilities\":{\"max_data_xfer_size\":1048576,\"max_msg_fds\":8}}\0"[..]
    );
    // With migration, libvfio-user adds it.
    let (mut c, _s, _) = gpio_with(ServerConfig {
        migration: Some(MigrationConfig::default()),
        ..ServerConfig::default()
    });
    let m = c.version();
    let pgsize = MigrationConfig::default().pgsize;
    assert_eq!(
        m.payload[4..].to_vec(),
        format!(
            "{{\"capabilities\":{{\"max_data_xfer_size\":1048576,\"max_msg_fds\":8,\
             \"migration\":{{\"max_bitmap_size\":1048576,\"pgsize\":{pgsize}}}}}}}\0"
        )
        .into_bytes()
    );
    let client = server.probe().client().unwrap();
    assert_eq!(
        (client.minor, client.max_msg_fds, client.max_data_xfer_size),
        (5, 3, 4096)
    );
}

#[test]
fn version_defaults_without_json() {
    let (mut c, server, _) = gpio();
    let m = c.call(Command::Version, &[0, 0, 0, 0]);
    m.assert_ok();
    assert_eq!(&m.payload[..4], &[0, 0, 0, 0][..]);
    let client = server.probe().client().unwrap();
    assert_eq!(
        (client.max_msg_fds, client.max_data_xfer_size),
        (1, 1 << 20)
    );
}

#[test]
fn version_payload_overrides() {
    let config = ServerConfig {
        minor: Some(7),
        version_payload: VersionPayload::Raw(b"{}".to_vec()),
        ..ServerConfig::default()
    };
    let (mut c, _s, _) = gpio_with(config);
    let m = c.version();
    assert_eq!(
        &m.payload,
        &[0, 0, 7, 0, b'{', b'}'][..],
        "no NUL on request"
    );

    let mut config = ServerConfig {
        max_msg_fds: None,
        ..ServerConfig::default()
    };
    config
        .extra_capabilities
        .insert("write_multiple".into(), "yes".into());
    let (mut c, _s, _) = gpio_with(config);
    let m = c.version();
    assert_eq!(
        &m.payload[4..],
        &b"{\"capabilities\":{\"max_data_xfer_size\":1048576,\"write_multiple\":\"yes\"}}\0"[..]
    );
}

#[test]
fn bad_version_is_refused_and_closes() {
    for json in [
        &b"{}"[..],
        b"[1]\0",
        b"{\"capabilities\":{\"max_msg_fds\":\"8\"}}\0",
        b"{\"capabilities\":{\"max_msg_fds\":2000}}\0",
    ] {
        let (mut c, _s, _) = gpio();
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(json);
        assert_eq!(c.call(Command::Version, &p).errno(), EINVAL, "{json:?}");
        c.expect_eof();
    }
    // Anything before VERSION.
    let (mut c, _s, _) = gpio();
    assert_eq!(
        c.call(Command::DeviceGetInfo, &words(&[16, 0, 0, 0]))
            .errno(),
        EINVAL
    );
    c.expect_eof();
}

#[test]
fn device_and_irq_info() {
    let (mut c, _s, _) = gpio();
    c.version();
    let m = c.call(Command::DeviceGetInfo, &words(&[16, 0, 0, 0]));
    m.assert_ok();
    assert_eq!(m.payload, words(&[16, 3, 9, 5]));
    let m = c.call(Command::DeviceGetIrqInfo, &words(&[16, 0, 2, 0]));
    assert_eq!(
        m.payload,
        words(&[16, 3, 2, 4]),
        "MSI-X: 4 vectors, EVENTFD | MASKABLE"
    );
    assert_eq!(
        c.call(Command::DeviceGetIrqInfo, &words(&[16, 0, 5, 0]))
            .errno(),
        EINVAL
    );
    assert_eq!(
        c.call(Command::DeviceGetInfo, &words(&[8, 0, 0, 0]))
            .errno(),
        EINVAL
    );
}

#[test]
fn region_info_argsz_requery() {
    let (mut c, _s, gpio) = gpio();
    c.version();
    // Trapped region: plain 32-byte answer.
    let m = c.call(
        Command::DeviceGetRegionInfo,
        &words(&[32, 0, 0, 0, 0, 0, 0, 0]),
    );
    assert_eq!(m.payload.len(), 32);
    assert_eq!((m.u32_at(0), m.u32_at(4), m.u64_at(16)), (32, 3, 256));
    assert!(m.fds.is_empty());

    // Mappable region, argsz too small: needed argsz, MMAP without CAPS, no fd.
    let needed = 32 + 16 + 2 * 16;
    let m = c.call(
        Command::DeviceGetRegionInfo,
        &words(&[32, 0, 2, 0, 0, 0, 0, 0]),
    );
    assert_eq!(m.payload.len(), 32);
    assert_eq!((m.u32_at(0), m.u32_at(4), m.u32_at(12)), (needed, 0x7, 0));
    assert!(m.fds.is_empty());

    // Re-query: caps and the fd.
    let m = c.call(
        Command::DeviceGetRegionInfo,
        &words(&[needed, 0, 2, 0, 0, 0, 0, 0]),
    );
    assert_eq!(m.payload.len(), needed as usize);
    assert_eq!((m.u32_at(0), m.u32_at(4), m.u32_at(12)), (needed, 0xf, 32));
    assert_eq!(m.u64_at(16), GpioDevice::BAR2_SIZE);
    assert_eq!(
        &m.payload[32..48],
        &words(&[1 | (1 << 16), 0, 2, 0])[..],
        "sparse mmap, 2 areas"
    );
    assert_eq!((m.u64_at(48), m.u64_at(56)), (0, 0x4000));
    assert_eq!((m.u64_at(64), m.u64_at(72)), (0x8000, 0x8000));
    assert_eq!(m.fds.len(), 1);
    // The fd is the device's memory.
    gpio.bar2().write_at(0x8010, b"shared").unwrap();
    let f = File::from(m.fds.into_iter().next().unwrap());
    let mut buf = [0u8; 6];
    f.read_exact_at(&mut buf, 0x8010).unwrap();
    assert_eq!(&buf, b"shared");

    assert_eq!(
        c.call(
            Command::DeviceGetRegionInfo,
            &words(&[32, 0, 9, 0, 0, 0, 0, 0])
        )
        .errno(),
        EINVAL
    );
    assert_eq!(
        c.call(Command::DeviceGetRegionInfo, &words(&[16, 0, 2, 0]))
            .errno(),
        EINVAL
    );
}

#[test]
fn region_read_write_and_sequence() {
    let (mut c, _s, gpio) = gpio();
    c.version();
    gpio.set_input(0xa5a5);
    assert_eq!(c.read_u32(0, GpioDevice::REG_INPUT), 0xa5a5);
    assert_eq!(c.read_u32(0, GpioDevice::REG_ID), GpioDevice::ID);
    let m = c.region_write(0, GpioDevice::REG_OUTPUT, &0x1234u32.to_ne_bytes());
    m.assert_ok();
    assert_eq!(
        m.payload,
        access(0, GpioDevice::REG_OUTPUT, 4, &[]),
        "write reply echoes the head"
    );
    assert_eq!(c.read_u32(0, GpioDevice::REG_OUTPUT), 0x1234);
    for v in [1, 2, 3, 5] {
        c.write_u32(0, GpioDevice::REG_SEQUENCE, v);
    }
    assert_eq!(c.read_u32(0, GpioDevice::REG_SEQUENCE_WRITES), 4);
    assert_eq!(c.read_u32(0, GpioDevice::REG_SEQUENCE_ERRORS), 1);
    assert_eq!((gpio.sequence_writes(), gpio.sequence_errors()), (4, 1));

    // Config space ids and BAR sizing.
    assert_eq!(c.read_u32(PCI_CONFIG_REGION, 0), 0x0dc8_494f_u32.to_le());
    c.region_write(PCI_CONFIG_REGION, 0x10, &[0xff; 4])
        .assert_ok();
    let m = c.region_read(PCI_CONFIG_REGION, 0x10, 4);
    assert_eq!(&m.payload[16..], &0xffff_ff00u32.to_le_bytes()[..]);

    // Scratch RAM: a large unaligned transfer.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    c.region_write(1, 12345, &data).assert_ok();
    let m = c.region_read(1, 12345, data.len() as u32);
    assert_eq!(&m.payload[16..], &data[..]);
    assert_eq!(gpio.scratch(12345, 4).unwrap(), data[..4].to_vec());

    // BAR2: the gap is trapped, the areas are plain memory.
    c.region_write(2, 0x3ffe, &[1, 2, 3, 4]).assert_ok();
    assert_eq!(gpio.trapped_accesses(), 1);
    let mut b = [0u8; 4];
    gpio.bar2().read_at(0x3ffe, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);

    // Reset clears the registers.
    c.call(Command::DeviceReset, &[]).assert_ok();
    assert_eq!(c.read_u32(0, GpioDevice::REG_OUTPUT), 0);
    assert_eq!(gpio.last_reset(), Some(ResetReason::Client));
}

#[test]
fn reading_each_message_exactly_serves_the_same() {
    let (mut c, _s, gpio) = gpio_with(ServerConfig {
        read_ahead: false,
        ..ServerConfig::default()
    });
    c.version();
    for v in 1..=10u32 {
        c.post(
            Command::RegionWrite,
            &access(0, GpioDevice::REG_SEQUENCE, 4, &v.to_ne_bytes()),
        )
        .unwrap();
    }
    assert_eq!(c.read_u32(0, GpioDevice::REG_SEQUENCE), 10);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    c.region_write(1, 12345, &data).assert_ok();
    let m = c.region_read(1, 12345, data.len() as u32);
    assert_eq!(&m.payload[16..], &data[..]);
    c.call(Command::DeviceReset, &[]).assert_ok();
    assert_eq!(gpio.last_reset(), Some(ResetReason::Client));
    assert_eq!(c.read_u32(0, GpioDevice::REG_ID), GpioDevice::ID);
}

#[test]
fn no_reply_write_gets_no_reply_and_is_ordered() {
    let (mut c, _s, gpio) = gpio();
    c.version();
    for v in 1..=10u32 {
        c.post(
            Command::RegionWrite,
            &access(0, GpioDevice::REG_SEQUENCE, 4, &v.to_ne_bytes()),
        )
        .unwrap();
    }
    // A failing posted write is dropped silently too.
    c.post(Command::RegionWrite, &access(0, 4096, 4, &[0; 4]))
        .unwrap();
    // The next message is the reply to this read, which sees every posted write.
    assert_eq!(c.read_u32(0, GpioDevice::REG_SEQUENCE), 10);
    assert_eq!(gpio.sequence_errors(), 0);
}

/// A REGION_WRITE_MULTI payload: `wr_cnt`, then 24-byte entries.
fn multi(wr_cnt: u64, entries: &[(u32, u64, u32, [u8; 8])]) -> Vec<u8> {
    let mut p = wr_cnt.to_ne_bytes().to_vec();
    for (region, offset, count, data) in entries {
        p.extend_from_slice(&offset.to_ne_bytes());
        p.extend_from_slice(&region.to_ne_bytes());
        p.extend_from_slice(&count.to_ne_bytes());
        p.extend_from_slice(data);
    }
    p
}

#[test]
fn write_multi_when_offered() {
    let (mut c, _s, gpio) = gpio_with(ServerConfig {
        write_multiple: true,
        ..ServerConfig::default()
    });
    let m = c.version();
    let json = String::from_utf8_lossy(&m.payload[4..]).into_owned();
    assert!(json.contains(r#""write_multiple":true"#), "{json}");
    let seq = GpioDevice::REG_SEQUENCE;
    let writes = [
        (0, seq, 4, [1, 0, 0, 0, 0, 0, 0, 0]),
        (0, seq, 4, [2, 0, 0, 0, 0, 0, 0, 0]),
        (1, 100, 8, [9; 8]),
        (1, 200, 0, [0; 8]),
    ];
    let m = c.call(Command::RegionWriteMulti, &multi(4, &writes));
    m.assert_ok();
    assert_eq!(m.payload, 4u64.to_ne_bytes(), "reply counts the writes");
    assert_eq!(gpio.sequence_writes(), 2);
    assert_eq!(gpio.scratch(100, 8).unwrap(), vec![9; 8]);
    // Posted: no reply, applied in order before the next message.
    c.post(
        Command::RegionWriteMulti,
        &multi(1, &[(0, seq, 4, [3, 0, 0, 0, 0, 0, 0, 0])]),
    )
    .unwrap();
    assert_eq!(c.read_u32(0, seq), 3);
    // No entries at all.
    let m = c.call(Command::RegionWriteMulti, &multi(0, &[]));
    m.assert_ok();
    assert_eq!(m.payload, 0u64.to_ne_bytes());
}

#[test]
fn hostile_write_multi_is_refused() {
    let (mut c, _s, gpio) = gpio_with(ServerConfig {
        write_multiple: true,
        ..ServerConfig::default()
    });
    c.version();
    let one = [(1, 0, 4, [7; 8])];
    let refused: [(&str, Vec<u8>); 8] = [
        ("no wr_cnt", vec![0; 7]),
        ("wr_cnt beyond the entries", multi(2, &one)),
        ("wr_cnt below the entries", multi(0, &one)),
        ("wr_cnt overflowing", multi(u64::MAX, &one)),
        ("a cut entry", multi(1, &one)[..31].to_vec()),
        ("count over 8", multi(1, &[(1, 0, 9, [7; 8])])),
        ("no such region", multi(1, &[(9, 0, 4, [7; 8])])),
        (
            "offset overflowing",
            multi(1, &[(1, u64::MAX - 1, 4, [7; 8])]),
        ),
    ];
    for (what, payload) in refused {
        let m = c.call(Command::RegionWriteMulti, &payload);
        assert_eq!(m.errno(), EINVAL, "{what}");
    }
    assert_eq!(
        gpio.scratch(0, 4).unwrap(),
        vec![0; 4],
        "nothing was written"
    );
    // The writes before a refused entry stay done; none after it is made.
    let writes = [
        (1, 8, 4, [5; 8]),
        (0, 2, 4, [0; 8]), // an unaligned register write
        (1, 16, 4, [6; 8]),
    ];
    let m = c.call(Command::RegionWriteMulti, &multi(3, &writes));
    assert_eq!(m.errno(), EINVAL);
    assert_eq!(gpio.scratch(8, 4).unwrap(), vec![5; 4]);
    assert_eq!(gpio.scratch(16, 4).unwrap(), vec![0; 4]);
    assert_eq!(
        c.read_u32(0, GpioDevice::REG_ID),
        GpioDevice::ID,
        "still in step"
    );
}

#[test]
fn error_replies_and_drained_bodies() {
    let (mut c, _s, _) = gpio();
    c.version();
    assert_eq!(c.region_read(0, 254, 4).errno(), EINVAL, "out of bounds");
    assert_eq!(c.region_read(3, 0, 4).errno(), EINVAL, "absent region");
    assert_eq!(c.region_read(0, u64::MAX, 4).errno(), EINVAL, "overflow");
    assert_eq!(
        c.call(Command::RegionWrite, &access(0, 4, 8, &[0; 4]))
            .errno(),
        EINVAL,
        "count != data"
    );
    assert_eq!(
        c.region_write(0, 2, &[0; 4]).errno(),
        EINVAL,
        "unaligned register write"
    );
    assert_eq!(
        c.region_read(1, 0, (1 << 20) + 1).errno(),
        EINVAL,
        "over max_data_xfer_size"
    );
    // Unknown and unsupported commands, with bodies that must be drained.
    let h = Header {
        id: 7,
        command: 99,
        size: 16 + 100,
        flags: 0,
        error: 0,
    };
    c.send_message(&h, &[0xee; 100], &[]).unwrap();
    let m = c.recv().unwrap();
    assert_eq!((m.header.id, m.header.command, m.errno()), (7, 99, EINVAL));
    assert_eq!(
        c.call(Command::RegionWriteMulti, &[0; 32]).errno(),
        EINVAL,
        "not offered"
    );
    assert_eq!(c.call(Command::DmaRead, &[0; 16]).errno(), EINVAL);
    assert_eq!(
        c.call(Command::Version, &[0; 4]).errno(),
        EINVAL,
        "second VERSION"
    );
    // Oversized message: drained, refused, connection still usable.
    let big = vec![0u8; (1 << 20) + 100];
    let id = c.send_command(Command::RegionWrite, &big, &[]).unwrap();
    let m = c.recv().unwrap();
    assert_eq!((m.header.id, m.errno()), (id, EINVAL));
    assert_eq!(c.read_u32(0, GpioDevice::REG_ID), GpioDevice::ID);
    // count 0: header-only success.
    let m = c.region_read(0, 0, 0);
    m.assert_ok();
    assert!(m.payload.is_empty());
}

#[test]
fn quirks() {
    let quirks = Quirks {
        reply_to_no_reply: true,
        error_without_error_flag: true,
        ..Quirks::default()
    };
    let (mut c, _s, _) = gpio_with(ServerConfig {
        quirks,
        ..ServerConfig::default()
    });
    c.version();
    let id = c
        .post(Command::RegionWrite, &access(0, 4, 4, &[1; 4]))
        .unwrap();
    assert_eq!(c.recv().unwrap().header.id, id, "replied to No_reply");
    let m = c.region_read(0, 4096, 4);
    assert_eq!((m.header.flags, m.header.error), (1, EINVAL));

    let quirks = Quirks {
        close_after_version: true,
        ..Quirks::default()
    };
    let (mut c, _s, _) = gpio_with(ServerConfig {
        quirks,
        ..ServerConfig::default()
    });
    c.version();
    c.expect_eof();

    let quirks = Quirks {
        never_reply_after_version: true,
        ..Quirks::default()
    };
    let (mut c, s, _) = gpio_with(ServerConfig {
        quirks,
        ..ServerConfig::default()
    });
    c.version();
    c.send_command(Command::DeviceGetInfo, &words(&[16, 0, 0, 0]), &[])
        .unwrap();
    // Stopping the server is the only way the read below ends.
    let probe = s.probe();
    s.stop();
    c.expect_eof();
    assert_eq!(probe.commands(), 2, "the command was read");
}
