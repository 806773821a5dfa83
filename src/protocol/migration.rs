// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Migration and dirty tracking: `DEVICE_FEATURE` (16) with its feature data, and
//! `MIG_DATA_READ` (17) / `MIG_DATA_WRITE` (18). The `DIRTY_PAGES` (14) of spec 0.9.1,
//! removed in 0.9.2, is neither sent nor decoded.

use std::mem::size_of;

use vfio_bindings::bindings::vfio::{
    vfio_device_feature_dma_logging_range, vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR,
    vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY,
    vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P,
    vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING,
    vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING,
    vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P,
    vfio_device_mig_state_VFIO_DEVICE_STATE_STOP,
    vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY, VFIO_DEVICE_FEATURE_MASK,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_SET,
};

use super::wire::{exact_data, len_u32, len_u64, put_u32, put_u64, Reader};
use super::DecodeError;

/// The `DEVICE_FEATURE` request and reply payload: an 8-byte head and the feature's data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFeature {
    /// Largest reply payload accepted, this head included; in a GET reply, the size used.
    pub argsz: u32,
    /// Feature index (`VFIO_DEVICE_FEATURE_MIGRATION`, ...) in the low 16 bits, plus
    /// `VFIO_DEVICE_FEATURE_GET` / `SET` / `PROBE`.
    pub flags: u32,
    /// The feature data (encode it with the feature's type, e.g. [`MigDeviceState`]).
    pub data: Vec<u8>,
}

impl DeviceFeature {
    /// Size of the head.
    pub const HEAD_SIZE: usize = 8;

    /// A request for `feature` (its low 16 bits) with `op` (`VFIO_DEVICE_FEATURE_GET` /
    /// `SET` / `PROBE` bits) and `data`, accepting a reply of `reply_data` bytes of feature
    /// data (`argsz` = 8 + the larger of the two).
    pub fn new(feature: u32, op: u32, data: Vec<u8>, reply_data: usize) -> Self {
        let argsz = Self::HEAD_SIZE.saturating_add(data.len().max(reply_data));
        DeviceFeature {
            argsz: len_u32(argsz),
            flags: (op & !VFIO_DEVICE_FEATURE_MASK) | (feature & VFIO_DEVICE_FEATURE_MASK),
            data,
        }
    }

    /// The SET of `MIG_DEVICE_STATE` to the raw `device_state` (a [`DeviceState`] as
    /// `u32`, or any other value to see a server refuse it), accepting the 8-byte
    /// [`MigDeviceState`] the reply echoes.
    ///
    /// ```
    /// # use vfio_user_client::protocol::{DeviceFeature, DeviceState, MigDeviceState};
    /// let request = DeviceFeature::set_mig_device_state(DeviceState::Stop as u32);
    /// let mut payload = Vec::new();
    /// request.encode_into(&mut payload);
    /// assert_eq!(payload.len(), 16);
    /// let state = MigDeviceState::decode(&request.data).unwrap();
    /// assert_eq!(state.state(), Some(DeviceState::Stop));
    /// ```
    pub fn set_mig_device_state(device_state: u32) -> Self {
        let mut data = Vec::with_capacity(8);
        MigDeviceState {
            device_state,
            data_fd: 0,
        }
        .encode_into(&mut data);
        let reply_data = data.len();
        Self::new(
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            VFIO_DEVICE_FEATURE_SET,
            data,
            reply_data,
        )
    }

    /// The feature index.
    pub fn feature(&self) -> u32 {
        self.flags & VFIO_DEVICE_FEATURE_MASK
    }

    /// Appends the payload.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags);
        out.extend_from_slice(&self.data);
    }

    /// Decodes a payload; every byte after the head is feature data.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "device feature");
        Ok(DeviceFeature {
            argsz: r.u32()?,
            flags: r.u32()?,
            data: r.rest().to_vec(),
        })
    }
}

/// Data of the `MIGRATION` feature (GET reply).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationFeature {
    /// `VFIO_MIGRATION_*` flags.
    pub flags: u64,
}

impl MigrationFeature {
    /// Appends the data.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u64(out, self.flags);
    }

    /// Decodes the data; later bytes are ignored.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, "migration feature");
        Ok(MigrationFeature { flags: r.u64()? })
    }
}

/// A migration device state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DeviceState {
    /// A transition failed; leave with DEVICE_RESET.
    Error = vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR,
    /// Stopped.
    Stop = vfio_device_mig_state_VFIO_DEVICE_STATE_STOP,
    /// Running.
    Running = vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING,
    /// Stopped, saving the final state.
    StopCopy = vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY,
    /// Loading state.
    Resuming = vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING,
    /// Running with peer-to-peer DMA quiesced (unused by vfio-user).
    RunningP2p = vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P,
    /// Running and saving state.
    PreCopy = vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY,
    /// PRE_COPY with peer-to-peer DMA quiesced (unused by vfio-user).
    PreCopyP2p = vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P,
}

impl DeviceState {
    const ALL: [DeviceState; 8] = [
        DeviceState::Error,
        DeviceState::Stop,
        DeviceState::Running,
        DeviceState::StopCopy,
        DeviceState::Resuming,
        DeviceState::RunningP2p,
        DeviceState::PreCopy,
        DeviceState::PreCopyP2p,
    ];

    /// The state for a wire value, if it is one.
    pub fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u32 == value)
    }
}

/// Data of the `MIG_DEVICE_STATE` feature (SET request, GET reply).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigDeviceState {
    /// The raw state; see [`MigDeviceState::state`].
    pub device_state: u32,
    /// Unused by vfio-user (data moves by MIG_DATA_* messages).
    pub data_fd: u32,
}

impl MigDeviceState {
    /// The state, if the value is a known one.
    pub fn state(&self) -> Option<DeviceState> {
        DeviceState::from_u32(self.device_state)
    }

    /// Appends the data.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u32(out, self.device_state);
        put_u32(out, self.data_fd);
    }

    /// Decodes the data; later bytes are ignored.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, "mig device state");
        Ok(MigDeviceState {
            device_state: r.u32()?,
            data_fd: r.u32()?,
        })
    }
}

/// Data of the `DMA_LOGGING_START` feature (SET request): the ranges are inline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DmaLoggingStart {
    /// Tracking granularity.
    pub page_size: u64,
    /// Ranges to track; empty = everything.
    pub ranges: Vec<vfio_device_feature_dma_logging_range>,
}

// The bindings' range type has no `Eq`, but it is two integers: equality is total.
impl Eq for DmaLoggingStart {}

impl DmaLoggingStart {
    /// Appends the data; `num_ranges` is the number of ranges.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u64(out, self.page_size);
        put_u32(out, len_u32(self.ranges.len()));
        put_u32(out, 0);
        for range in &self.ranges {
            put_u64(out, range.iova);
            put_u64(out, range.length);
        }
    }

    /// Decodes the data; `num_ranges` must fit the bytes present ([`DecodeError::TooLarge`]);
    /// later bytes are ignored.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, "dma logging start");
        let page_size = r.u64()?;
        let num_ranges = r.u32()?;
        let _reserved = r.u32()?;
        let limit = r.remaining() / size_of::<vfio_device_feature_dma_logging_range>();
        let n = usize::try_from(num_ranges).unwrap_or(usize::MAX);
        if n > limit {
            return Err(DecodeError::TooLarge {
                field: "dma logging num_ranges",
                value: u64::from(num_ranges),
                limit: len_u64(limit),
            });
        }
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            ranges.push(vfio_device_feature_dma_logging_range {
                iova: r.u64()?,
                length: r.u64()?,
            });
        }
        Ok(DmaLoggingStart { page_size, ranges })
    }
}

/// Data of the `DMA_LOGGING_REPORT` feature: the 24-byte range in the GET request, plus the
/// bitmap in the reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DmaLoggingReport {
    /// Start address.
    pub iova: u64,
    /// Length in bytes.
    pub length: u64,
    /// Page size each bit stands for.
    pub page_size: u64,
    /// Reply only: native-endian u64 words, bit *i* set = page *i* from `iova` dirty.
    pub bitmap: Vec<u8>,
}

impl DmaLoggingReport {
    /// Size of the request data.
    pub const HEAD_SIZE: usize = 24;

    /// Appends the data.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u64(out, self.iova);
        put_u64(out, self.length);
        put_u64(out, self.page_size);
        out.extend_from_slice(&self.bitmap);
    }

    /// Decodes the data; every byte after the 24-byte range is bitmap.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, "dma logging report");
        Ok(DmaLoggingReport {
            iova: r.u64()?,
            length: r.u64()?,
            page_size: r.u64()?,
            bitmap: r.rest().to_vec(),
        })
    }
}

/// The 8-byte head of `MIG_DATA_READ` / `MIG_DATA_WRITE`.
///
/// Data follows in a READ reply and a WRITE request. libvfio-user pads READ replies to the
/// requested size: decode those with [`MigData::decode_with_data_prefix`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigData {
    /// Request: largest reply payload accepted (≥ 8 + `size`); reply: 8 + `size`.
    pub argsz: u32,
    /// Bytes wanted (READ request), returned (READ reply) or carried (WRITE request).
    pub size: u32,
}

impl MigData {
    /// Size of the head.
    pub const HEAD_SIZE: usize = 8;

    /// Appends the head.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.size);
    }

    /// Appends the head and `data`. `size` is written as set; callers keep it equal to
    /// `data.len()`.
    pub fn encode_with_data(&self, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(Self::HEAD_SIZE.saturating_add(data.len()));
        self.encode_into(out);
        out.extend_from_slice(data);
    }

    /// Decodes the head of a READ request (or a newer-spec WRITE reply); later bytes are
    /// ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "mig data");
        Ok(MigData {
            argsz: r.u32()?,
            size: r.u32()?,
        })
    }

    /// Decodes a head followed by exactly `size` bytes ([`DecodeError::LengthMismatch`]
    /// otherwise), borrowed from `payload`.
    pub fn decode_with_data(payload: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        let head = Self::decode(payload)?;
        let data = payload.get(Self::HEAD_SIZE..).unwrap_or(&[]);
        let data = exact_data("mig data", Self::HEAD_SIZE, data, u64::from(head.size))?;
        Ok((head, data))
    }

    /// Decodes a READ reply whose data may be followed by padding: at least `size` bytes must
    /// follow the head ([`DecodeError::Short`]); the first `size` are returned.
    pub fn decode_with_data_prefix(payload: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        let mut r = Reader::new(payload, "mig data");
        let head = MigData {
            argsz: r.u32()?,
            size: r.u32()?,
        };
        let data = r.bytes(usize::try_from(head.size).unwrap_or(usize::MAX))?;
        Ok((head, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_bindings::bindings::vfio::{
        vfio_device_feature_dma_logging_range, VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY,
    };

    #[test]
    fn device_feature_state_set() {
        let f = DeviceFeature::set_mig_device_state(DeviceState::StopCopy as u32);
        assert_eq!(f.argsz, 16);
        assert_eq!(f.feature(), VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE);
        assert_eq!(
            f.flags,
            VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
        );
        let mut out = Vec::new();
        f.encode_into(&mut out);
        let mut expected = Vec::new();
        for word in [
            16,
            VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            DeviceState::StopCopy as u32,
            0,
        ] {
            expected.extend_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(out, expected);
        let d = DeviceFeature::decode(&out).unwrap();
        assert_eq!(d, f);
        let s = MigDeviceState::decode(&d.data).unwrap();
        assert_eq!(s.state(), Some(DeviceState::StopCopy));
        assert_eq!(s.data_fd, 0);
        assert_eq!(DeviceState::from_u32(8), None);
        // A value that is no state is carried as given.
        let raw = DeviceFeature::set_mig_device_state(8);
        assert_eq!(MigDeviceState::decode(&raw.data).unwrap().device_state, 8);
        assert_eq!(raw.argsz, 16);
    }

    #[test]
    fn migration_feature_and_logging() {
        let m = MigrationFeature {
            flags: u64::from(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY),
        };
        let mut out = Vec::new();
        m.encode_into(&mut out);
        assert_eq!(MigrationFeature::decode(&out), Ok(m));

        let s = DmaLoggingStart {
            page_size: 4096,
            ranges: vec![vfio_device_feature_dma_logging_range {
                iova: 0,
                length: 1 << 30,
            }],
        };
        let mut out = Vec::new();
        s.encode_into(&mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(DmaLoggingStart::decode(&out), Ok(s));
        out[8..12].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(
            DmaLoggingStart::decode(&out),
            Err(DecodeError::TooLarge {
                value: 1000,
                limit: 1,
                ..
            })
        ));

        let rep = DmaLoggingReport {
            iova: 0,
            length: 64 * 4096,
            page_size: 4096,
            bitmap: vec![0xff; 8],
        };
        let mut out = Vec::new();
        rep.encode_into(&mut out);
        assert_eq!(DmaLoggingReport::decode(&out), Ok(rep));
    }

    #[test]
    fn mig_data_strict_and_padded() {
        let h = MigData {
            argsz: 8 + 3,
            size: 3,
        };
        let mut out = Vec::new();
        h.encode_with_data(&[7, 8, 9], &mut out);
        assert_eq!(MigData::decode_with_data(&out), Ok((h, &[7u8, 8, 9][..])));
        // libvfio-user: reply padded to the requested size.
        out.extend_from_slice(&[0; 5]);
        assert!(matches!(
            MigData::decode_with_data(&out),
            Err(DecodeError::LengthMismatch { .. })
        ));
        assert_eq!(
            MigData::decode_with_data_prefix(&out),
            Ok((h, &[7u8, 8, 9][..]))
        );
        assert!(matches!(
            MigData::decode_with_data_prefix(&out[..10]),
            Err(DecodeError::Short { .. })
        ));
    }
}
