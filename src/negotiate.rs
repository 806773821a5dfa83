// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Version and capability negotiation: what we offer in the VERSION request, and the
//! [`Capabilities`] the server's reply grants. Pure logic, no I/O.
//!
//! Capability values describe what the *sender* can receive, so the server's reply bounds
//! what we send: fds per message, data per message, DMA windows, page sizes. A reply may leave
//! out the JSON or any key; absent keys take the spec's defaults. Values above what this
//! crate will ever use are clamped (with a warning); values no correct server can mean are
//! errors.

use serde_json::{Map, Value};

use crate::protocol::{DecodeError, Version};

/// The major version we speak (every known implementation uses 0).
const VERSION_MAJOR: u16 = 0;
/// The minor version we propose. No spec feature is gated on the minor version.
const VERSION_MINOR: u16 = 0;

/// Spec default for `max_msg_fds` when the peer leaves it out.
const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// Spec default for `max_data_xfer_size`.
const DEFAULT_MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// Spec default for `pgsizes`.
const DEFAULT_PGSIZES: u64 = 4096;
/// Spec default for `max_dma_maps`.
const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// Default `migration.max_bitmap_size` (as QEMU assumes).
const DEFAULT_MAX_BITMAP_SIZE: u64 = 256 << 20;

/// Largest server `max_msg_fds` we use; larger values are clamped.
const LIMIT_MAX_MSG_FDS: u32 = 16;
/// Largest server `max_data_xfer_size` we use; larger values are clamped.
const LIMIT_MAX_DATA_XFER_SIZE: u32 = 64 << 20;
/// Largest server `max_dma_maps` we use; larger values are clamped.
const LIMIT_MAX_DMA_MAPS: u32 = 65535;
/// Largest server `migration.max_bitmap_size` we use; larger values are clamped.
const LIMIT_MAX_BITMAP_SIZE: u64 = 256 << 20;

/// The smallest page size vfio-user allows for DMA and migration.
pub(crate) const MIN_PAGE_SIZE: u64 = 4096;

/// The `migration` capability: legacy (0.9.1) but still exchanged by every implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationCaps {
    /// Dirty-tracking page size. libvfio-user fails VERSION unless it equals its page size.
    pub pgsize: u64,
    /// Largest dirty bitmap, in bytes.
    pub max_bitmap_size: u64,
}

/// The `twin_socket` capability of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwinSocket {
    /// The server agreed to twin-socket mode.
    pub supported: bool,
    /// Index of the second socket among the reply's fds.
    pub fd_index: Option<u32>,
}

/// What a VERSION reply says about twin-socket mode ([`Capabilities::twin_socket_grant`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TwinSocketGrant {
    /// Not granted: the reply has no `twin_socket` capability, or `supported` is false.
    NotGranted,
    /// Granted: the second socket is the reply's fd at `fd_index`.
    Granted {
        /// Index of the second socket among the reply's fds.
        fd_index: u32,
    },
    /// Granted without an `fd_index`: there is no second socket to use.
    GrantedWithoutFd,
}

/// What we advertise in the VERSION request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// fds we accept per message.
    pub max_msg_fds: u32,
    /// Data bytes we accept per message.
    pub max_data_xfer_size: u32,
    /// DMA page sizes we support (OR of powers of two).
    pub pgsizes: u64,
    /// DMA windows we can map at once.
    pub max_dma_maps: u32,
    /// The `migration` capability; `None` leaves it out.
    pub migration: Option<MigrationCaps>,
    /// Offer twin-socket mode (the server's DMA requests on a second socket). Left out of the
    /// JSON while `false`.
    pub twin_socket: bool,
}

impl Default for Offer {
    /// 16 fds, 1 MiB per message, 4 KiB pages, 65535 windows, migration with the host page
    /// size and a 256 MiB bitmap, twin socket offered.
    fn default() -> Self {
        Offer {
            max_msg_fds: LIMIT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            pgsizes: DEFAULT_PGSIZES,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            migration: Some(MigrationCaps {
                pgsize: host_page_size(),
                max_bitmap_size: DEFAULT_MAX_BITMAP_SIZE,
            }),
            twin_socket: true,
        }
    }
}

impl Offer {
    /// The capability JSON: `{"capabilities": {...}}`.
    pub fn json(&self) -> Value {
        let mut caps = Map::new();
        caps.insert("max_msg_fds".into(), self.max_msg_fds.into());
        caps.insert("max_data_xfer_size".into(), self.max_data_xfer_size.into());
        caps.insert("pgsizes".into(), self.pgsizes.into());
        caps.insert("max_dma_maps".into(), self.max_dma_maps.into());
        if let Some(m) = &self.migration {
            let mut mig = Map::new();
            mig.insert("pgsize".into(), m.pgsize.into());
            mig.insert("max_bitmap_size".into(), m.max_bitmap_size.into());
            caps.insert("migration".into(), Value::Object(mig));
        }
        if self.twin_socket {
            let mut twin = Map::new();
            twin.insert("supported".into(), true.into());
            caps.insert("twin_socket".into(), Value::Object(twin));
        }
        let mut top = Map::new();
        top.insert("capabilities".into(), Value::Object(caps));
        Value::Object(top)
    }

    /// The VERSION request payload: version 0.0 and the NUL-terminated JSON.
    pub fn version_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        Version {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
            json: Some(self.json().to_string()),
        }
        .encode_into(&mut out);
        out
    }
}

/// What the server's VERSION reply granted: one immutable value for the connection.
///
/// Fields are public and plain; the limits bound what *we* send to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The server's major version.
    pub major: u16,
    /// The server's minor version.
    pub minor: u16,
    /// fds the server accepts per message (at most 16; larger values are clamped).
    pub max_msg_fds: u32,
    /// Data bytes the server accepts per message (1 to 64 MiB; larger values are clamped).
    pub max_data_xfer_size: u32,
    /// DMA page sizes the server supports; non-zero, no bit below 4 KiB.
    pub pgsizes: u64,
    /// DMA windows the server can hold (at most 65535; larger values are clamped).
    pub max_dma_maps: u32,
    /// The server's `migration` capability, if it sent one.
    pub migration: Option<MigrationCaps>,
    /// The server's `twin_socket` capability, if it sent one. Acted on only when we offered
    /// twin-socket mode.
    pub twin_socket: Option<TwinSocket>,
    /// The server accepts `REGION_WRITE_MULTI`.
    pub write_multiple: bool,
}

impl Default for Capabilities {
    /// Version 0.0 and the spec defaults: what a reply without JSON grants.
    fn default() -> Self {
        Capabilities {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            pgsizes: DEFAULT_PGSIZES,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            migration: None,
            twin_socket: None,
            write_multiple: false,
        }
    }
}

impl Capabilities {
    /// Checks the server's VERSION reply `payload` against `offer` and returns what it grants.
    ///
    /// Rules: the major version must be ours and the minor no higher than ours. JSON is
    /// optional; when present it must be a NUL-terminated UTF-8 object. A `capabilities` key, if
    /// present, must be an object; every known key must have its type (numbers are non-negative
    /// integers). Absent keys take the spec defaults; over-large limits are clamped with a
    /// warning; unknown keys are logged and ignored.
    ///
    /// `offer` is what we sent: a twin socket granted without being offered is logged and
    /// ignored.
    pub fn from_reply(offer: &Offer, payload: &[u8]) -> Result<Capabilities, NegotiateError> {
        let version = Version::decode(payload)?;
        check_version(&version)?;
        let mut caps = Capabilities {
            major: version.major,
            minor: version.minor,
            ..Capabilities::default()
        };
        let Some(text) = version.json else {
            return Ok(caps);
        };
        let top: Value =
            serde_json::from_str(&text).map_err(|e| NegotiateError::InvalidJson(e.to_string()))?;
        let Value::Object(top) = top else {
            return Err(NegotiateError::JsonNotObject);
        };
        for key in top.keys().filter(|k| *k != "capabilities") {
            log::info!("ignoring unknown key {key:?} in the server's VERSION JSON");
        }
        let Some(c) = top.get("capabilities") else {
            return Ok(caps);
        };
        let c = c.as_object().ok_or(NegotiateError::WrongType {
            key: "capabilities",
            expected: "an object",
        })?;
        for (key, value) in c {
            apply_capability(&mut caps, key, value)?;
        }
        if caps.twin_socket.is_some_and(|t| t.supported) && !offer.twin_socket {
            log::warn!("server granted twin-socket mode, which we did not offer; ignoring it");
        }
        Ok(caps)
    }

    /// Whether the server granted twin-socket mode, and which of the reply's fds is the
    /// second socket. A grant we did not ask for is ignored by the handshake.
    pub(crate) fn twin_socket_grant(&self) -> TwinSocketGrant {
        match self.twin_socket {
            Some(TwinSocket {
                supported: true,
                fd_index: Some(fd_index),
            }) => TwinSocketGrant::Granted { fd_index },
            Some(TwinSocket {
                supported: true,
                fd_index: None,
            }) => TwinSocketGrant::GrantedWithoutFd,
            _ => TwinSocketGrant::NotGranted,
        }
    }

    /// The smallest DMA page size the server supports: the lowest bit set in `pgsizes`.
    pub fn min_page_size(&self) -> u64 {
        // `pgsizes` is never 0 after negotiation; 0 would map to 1 << 64, so guard anyway.
        1u64.checked_shl(self.pgsizes.trailing_zeros())
            .unwrap_or(MIN_PAGE_SIZE)
    }
}

/// Why the server's VERSION reply was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiateError {
    /// The reply is shorter than the 4-byte version.
    #[error("VERSION reply payload is {len} bytes, too short for a version")]
    Truncated {
        /// Payload bytes received.
        len: usize,
    },
    /// The server's major version differs from ours.
    #[error("server replied version {major}.{minor}, we support {our_major}.{our_minor}")]
    MajorMismatch {
        /// Server's major version.
        major: u16,
        /// Server's minor version.
        minor: u16,
        /// Our major version.
        our_major: u16,
        /// Our minor version.
        our_minor: u16,
    },
    /// The server's minor version is above the one we proposed.
    #[error("server replied version {major}.{minor}, we support at most {our_major}.{our_minor}")]
    MinorTooHigh {
        /// Server's major version.
        major: u16,
        /// Server's minor version.
        minor: u16,
        /// Our major version.
        our_major: u16,
        /// Our minor version.
        our_minor: u16,
    },
    /// The capability JSON does not end with a NUL byte.
    #[error("server's capability JSON is not NUL-terminated")]
    JsonNotNulTerminated,
    /// The capability JSON is not valid UTF-8.
    #[error("server's capability JSON is not UTF-8: {0}")]
    JsonNotUtf8(std::str::Utf8Error),
    /// The capability text does not parse as JSON.
    #[error("server's capability JSON does not parse: {0}")]
    InvalidJson(String),
    /// The capability JSON is not an object.
    #[error("server's capability JSON is not an object")]
    JsonNotObject,
    /// A known key has a value of the wrong JSON type (or a number out of range).
    #[error("server's capability {key} is not {expected}")]
    WrongType {
        /// The key's path, e.g. `capabilities.max_msg_fds`.
        key: &'static str,
        /// What the value should have been.
        expected: &'static str,
    },
    /// An object lacks a key it must have.
    #[error("server's capability {key} is missing")]
    MissingKey {
        /// The key's path, e.g. `capabilities.migration.pgsize`.
        key: &'static str,
    },
    /// `max_data_xfer_size` is 0: no data message could ever be sent.
    #[error("server accepts at most 0 bytes per data message (max_data_xfer_size 0)")]
    ZeroMaxDataXferSize,
    /// `pgsizes` is 0: no page size at all.
    #[error("server supports no DMA page size (pgsizes 0)")]
    ZeroPgsizes,
    /// `pgsizes` has a bit below 4 KiB set.
    #[error("server's DMA page sizes {pgsizes:#x} include sizes below 4 KiB")]
    PgsizesBelowMinimum {
        /// The value received.
        pgsizes: u64,
    },
    /// `migration.pgsize` is 0.
    #[error("server's migration page size is 0")]
    ZeroMigrationPgsize,
    /// `migration.pgsize` is not a multiple of 4 KiB.
    #[error("server's migration page size {pgsize} is not a multiple of 4096")]
    MigrationPgsizeNotMultiple {
        /// The value received.
        pgsize: u64,
    },
    /// The server granted twin-socket mode but its `fd_index` names none of the fds that
    /// came with the reply (the spec requires closing the connection then).
    #[error(
        "server granted twin-socket mode with fd_index {fd_index:?}, but sent {fds} fds \
         (or not a socket)"
    )]
    TwinSocketFd {
        /// The `fd_index` received.
        fd_index: Option<u32>,
        /// fds that came with the reply.
        fds: usize,
    },
    /// The payload could not be decoded for another reason.
    #[error("VERSION reply: {0}")]
    Decode(DecodeError),
}

impl From<DecodeError> for NegotiateError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Short { got, .. } => NegotiateError::Truncated { len: got },
            DecodeError::NotNulTerminated { .. } => NegotiateError::JsonNotNulTerminated,
            DecodeError::NotUtf8 { source, .. } => NegotiateError::JsonNotUtf8(source),
            other => NegotiateError::Decode(other),
        }
    }
}

/// The major version must be ours and the minor no higher than ours.
fn check_version(version: &Version) -> Result<(), NegotiateError> {
    if version.major != VERSION_MAJOR {
        return Err(NegotiateError::MajorMismatch {
            major: version.major,
            minor: version.minor,
            our_major: VERSION_MAJOR,
            our_minor: VERSION_MINOR,
        });
    }
    if version.minor > VERSION_MINOR {
        return Err(NegotiateError::MinorTooHigh {
            major: version.major,
            minor: version.minor,
            our_major: VERSION_MAJOR,
            our_minor: VERSION_MINOR,
        });
    }
    Ok(())
}

/// Applies one key of the server's `capabilities` object to `caps`.
fn apply_capability(
    caps: &mut Capabilities,
    key: &str,
    value: &Value,
) -> Result<(), NegotiateError> {
    match key {
        "max_msg_fds" => {
            let v = number(value, "capabilities.max_msg_fds")?;
            caps.max_msg_fds = clamp_u32(v, LIMIT_MAX_MSG_FDS, "max_msg_fds");
        }
        "max_data_xfer_size" => {
            let v = number(value, "capabilities.max_data_xfer_size")?;
            if v == 0 {
                return Err(NegotiateError::ZeroMaxDataXferSize);
            }
            caps.max_data_xfer_size = clamp_u32(v, LIMIT_MAX_DATA_XFER_SIZE, "max_data_xfer_size");
        }
        "pgsizes" => {
            let v = number(value, "capabilities.pgsizes")?;
            if v == 0 {
                return Err(NegotiateError::ZeroPgsizes);
            }
            if v & (MIN_PAGE_SIZE - 1) != 0 {
                return Err(NegotiateError::PgsizesBelowMinimum { pgsizes: v });
            }
            caps.pgsizes = v;
        }
        "max_dma_maps" => {
            let v = number(value, "capabilities.max_dma_maps")?;
            caps.max_dma_maps = clamp_u32(v, LIMIT_MAX_DMA_MAPS, "max_dma_maps");
        }
        "write_multiple" => {
            caps.write_multiple = value.as_bool().ok_or(NegotiateError::WrongType {
                key: "capabilities.write_multiple",
                expected: "a boolean",
            })?;
        }
        "twin_socket" => caps.twin_socket = Some(twin_socket(value)?),
        "migration" => caps.migration = Some(migration(value)?),
        other => log::info!("ignoring unknown capability {other:?} from the server"),
    }
    Ok(())
}

/// The host's page size, or 4096 if the system will not say.
pub(crate) fn host_page_size() -> u64 {
    crate::connection::socket::sysconf_page_size().unwrap_or(MIN_PAGE_SIZE)
}

fn number(value: &Value, key: &'static str) -> Result<u64, NegotiateError> {
    value.as_u64().ok_or(NegotiateError::WrongType {
        key,
        expected: "a non-negative integer",
    })
}

fn clamp_u32(value: u64, limit: u32, key: &str) -> u32 {
    match u32::try_from(value) {
        Ok(v) if v <= limit => v,
        _ => {
            log::warn!(
                "server capability {key} {value} exceeds our limit of {limit}; using {limit}"
            );
            limit
        }
    }
}

fn twin_socket(value: &Value) -> Result<TwinSocket, NegotiateError> {
    let t = value.as_object().ok_or(NegotiateError::WrongType {
        key: "capabilities.twin_socket",
        expected: "an object",
    })?;
    let supported = t
        .get("supported")
        .ok_or(NegotiateError::MissingKey {
            key: "capabilities.twin_socket.supported",
        })?
        .as_bool()
        .ok_or(NegotiateError::WrongType {
            key: "capabilities.twin_socket.supported",
            expected: "a boolean",
        })?;
    let fd_index = match t.get("fd_index") {
        None => None,
        Some(v) => Some(v.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or(
            NegotiateError::WrongType {
                key: "capabilities.twin_socket.fd_index",
                expected: "a non-negative 32-bit integer",
            },
        )?),
    };
    for key in t.keys().filter(|k| *k != "supported" && *k != "fd_index") {
        log::info!("ignoring unknown key {key:?} in the server's twin_socket capability");
    }
    Ok(TwinSocket {
        supported,
        fd_index,
    })
}

fn migration(value: &Value) -> Result<MigrationCaps, NegotiateError> {
    let m = value.as_object().ok_or(NegotiateError::WrongType {
        key: "capabilities.migration",
        expected: "an object",
    })?;
    let pgsize = number(
        m.get("pgsize").ok_or(NegotiateError::MissingKey {
            key: "capabilities.migration.pgsize",
        })?,
        "capabilities.migration.pgsize",
    )?;
    if pgsize == 0 {
        return Err(NegotiateError::ZeroMigrationPgsize);
    }
    if pgsize % MIN_PAGE_SIZE != 0 {
        return Err(NegotiateError::MigrationPgsizeNotMultiple { pgsize });
    }
    let max_bitmap_size = match m.get("max_bitmap_size") {
        None => DEFAULT_MAX_BITMAP_SIZE,
        Some(v) => {
            let v = number(v, "capabilities.migration.max_bitmap_size")?;
            if v > LIMIT_MAX_BITMAP_SIZE {
                log::warn!(
                    "server capability migration.max_bitmap_size {v} exceeds our limit of \
                     {LIMIT_MAX_BITMAP_SIZE}; using {LIMIT_MAX_BITMAP_SIZE}"
                );
                LIMIT_MAX_BITMAP_SIZE
            } else {
                v
            }
        }
    };
    for key in m
        .keys()
        .filter(|k| *k != "pgsize" && *k != "max_bitmap_size")
    {
        log::info!("ignoring unknown key {key:?} in the server's migration capability");
    }
    Ok(MigrationCaps {
        pgsize,
        max_bitmap_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(major: u16, minor: u16, json: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        Version {
            major,
            minor,
            json: json.map(str::to_owned),
        }
        .encode_into(&mut out);
        out
    }

    fn caps_of(json: &str) -> Result<Capabilities, NegotiateError> {
        Capabilities::from_reply(&Offer::default(), &reply(0, 0, Some(json)))
    }

    #[test]
    fn no_json_means_defaults() {
        let c = Capabilities::from_reply(&Offer::default(), &reply(0, 0, None)).unwrap();
        assert_eq!(c, Capabilities::default());
        assert_eq!(c.max_msg_fds, 1);
        assert_eq!(c.max_data_xfer_size, 1 << 20);
        assert_eq!(c.pgsizes, 4096);
        assert_eq!(c.max_dma_maps, 65535);
        assert!(!c.write_multiple);
        assert_eq!(c.min_page_size(), 4096);
    }

    #[test]
    fn no_capabilities_key_means_defaults() {
        assert_eq!(caps_of("{}"), Ok(Capabilities::default()));
        assert_eq!(caps_of(r#"{"vendor": "x"}"#), Ok(Capabilities::default()));
        assert_eq!(
            caps_of(r#"{"capabilities": {}}"#),
            Ok(Capabilities::default())
        );
    }

    #[test]
    fn libvfio_user_example_reply() {
        let c =
            caps_of(r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}"#).unwrap();
        assert_eq!(
            c,
            Capabilities {
                max_msg_fds: 8,
                max_data_xfer_size: 1 << 20,
                ..Capabilities::default()
            }
        );
    }

    #[test]
    fn rust_vmm_server_reply() {
        let c = caps_of(r#"{"capabilities":{"migration":{"pgsize":4096}}}"#).unwrap();
        assert_eq!((c.major, c.minor), (0, 0));
        assert_eq!(c.max_msg_fds, 1);
        assert_eq!(
            c.migration,
            Some(MigrationCaps {
                pgsize: 4096,
                max_bitmap_size: DEFAULT_MAX_BITMAP_SIZE
            })
        );
    }

    #[test]
    fn qemu_like_values() {
        let c = caps_of(
            r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,
                "max_dma_maps":65535,"write_multiple":true,
                "migration":{"pgsize":4096,"max_bitmap_size":268435456}}}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Capabilities {
                max_msg_fds: 16,
                write_multiple: true,
                migration: Some(MigrationCaps {
                    pgsize: 4096,
                    max_bitmap_size: 256 << 20
                }),
                ..Capabilities::default()
            }
        );
    }

    #[test]
    fn twin_socket_is_parsed() {
        let c =
            caps_of(r#"{"capabilities":{"twin_socket":{"supported":true,"fd_index":0}}}"#).unwrap();
        assert_eq!(
            c.twin_socket,
            Some(TwinSocket {
                supported: true,
                fd_index: Some(0)
            })
        );
        assert_eq!(
            c.twin_socket_grant(),
            TwinSocketGrant::Granted { fd_index: 0 }
        );
        let c = caps_of(r#"{"capabilities":{"twin_socket":{"supported":false}}}"#).unwrap();
        assert_eq!(
            c.twin_socket,
            Some(TwinSocket {
                supported: false,
                fd_index: None
            })
        );
        assert_eq!(c.twin_socket_grant(), TwinSocketGrant::NotGranted);
        let c = caps_of(r#"{"capabilities":{"twin_socket":{"supported":true}}}"#).unwrap();
        assert_eq!(c.twin_socket_grant(), TwinSocketGrant::GrantedWithoutFd);
        assert_eq!(
            Capabilities::default().twin_socket_grant(),
            TwinSocketGrant::NotGranted
        );
    }

    #[test]
    fn version_rules() {
        let offer = Offer::default();
        let e = Capabilities::from_reply(&offer, &reply(1, 0, None)).unwrap_err();
        assert_eq!(
            e,
            NegotiateError::MajorMismatch {
                major: 1,
                minor: 0,
                our_major: 0,
                our_minor: 0
            }
        );
        assert_eq!(e.to_string(), "server replied version 1.0, we support 0.0");
        assert!(matches!(
            Capabilities::from_reply(&offer, &reply(0, 2, None)),
            Err(NegotiateError::MinorTooHigh { minor: 2, .. })
        ));
        assert_eq!(
            Capabilities::from_reply(&offer, &[0, 0]),
            Err(NegotiateError::Truncated { len: 2 })
        );
    }

    #[test]
    fn json_framing_errors() {
        let offer = Offer::default();
        let mut p = reply(0, 0, None);
        p.extend_from_slice(b"{}");
        assert_eq!(
            Capabilities::from_reply(&offer, &p),
            Err(NegotiateError::JsonNotNulTerminated)
        );
        let mut p = reply(0, 0, None);
        p.extend_from_slice(&[0xc3, 0x28, 0]);
        assert!(matches!(
            Capabilities::from_reply(&offer, &p),
            Err(NegotiateError::JsonNotUtf8(_))
        ));
        assert!(matches!(caps_of("{"), Err(NegotiateError::InvalidJson(_))));
        assert!(matches!(caps_of(""), Err(NegotiateError::InvalidJson(_))));
        assert_eq!(caps_of("[1]"), Err(NegotiateError::JsonNotObject));
        assert_eq!(
            caps_of(r#"{"capabilities": 5}"#),
            Err(NegotiateError::WrongType {
                key: "capabilities",
                expected: "an object"
            })
        );
    }

    #[test]
    fn wrong_types() {
        let cases: &[(&str, &str)] = &[
            (r#"{"max_msg_fds":"8"}"#, "capabilities.max_msg_fds"),
            (r#"{"max_msg_fds":-1}"#, "capabilities.max_msg_fds"),
            (
                r#"{"max_data_xfer_size":1.5}"#,
                "capabilities.max_data_xfer_size",
            ),
            (r#"{"pgsizes":null}"#, "capabilities.pgsizes"),
            (r#"{"max_dma_maps":true}"#, "capabilities.max_dma_maps"),
            (r#"{"write_multiple":1}"#, "capabilities.write_multiple"),
            (r#"{"twin_socket":true}"#, "capabilities.twin_socket"),
            (
                r#"{"twin_socket":{"supported":1}}"#,
                "capabilities.twin_socket.supported",
            ),
            (
                r#"{"twin_socket":{"supported":true,"fd_index":-1}}"#,
                "capabilities.twin_socket.fd_index",
            ),
            (
                r#"{"twin_socket":{"supported":true,"fd_index":4294967296}}"#,
                "capabilities.twin_socket.fd_index",
            ),
            (r#"{"migration":4096}"#, "capabilities.migration"),
            (
                r#"{"migration":{"pgsize":"4096"}}"#,
                "capabilities.migration.pgsize",
            ),
            (
                r#"{"migration":{"pgsize":4096,"max_bitmap_size":[]}}"#,
                "capabilities.migration.max_bitmap_size",
            ),
        ];
        for (inner, key) in cases {
            let json = format!(r#"{{"capabilities":{inner}}}"#);
            match caps_of(&json) {
                Err(NegotiateError::WrongType { key: k, .. }) => assert_eq!(k, *key, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_keys() {
        assert_eq!(
            caps_of(r#"{"capabilities":{"twin_socket":{}}}"#),
            Err(NegotiateError::MissingKey {
                key: "capabilities.twin_socket.supported"
            })
        );
        assert_eq!(
            caps_of(r#"{"capabilities":{"migration":{"max_bitmap_size":1}}}"#),
            Err(NegotiateError::MissingKey {
                key: "capabilities.migration.pgsize"
            })
        );
    }

    #[test]
    fn impossible_values() {
        assert_eq!(
            caps_of(r#"{"capabilities":{"max_data_xfer_size":0}}"#),
            Err(NegotiateError::ZeroMaxDataXferSize)
        );
        assert_eq!(
            caps_of(r#"{"capabilities":{"pgsizes":0}}"#),
            Err(NegotiateError::ZeroPgsizes)
        );
        assert_eq!(
            caps_of(r#"{"capabilities":{"pgsizes":4608}}"#),
            Err(NegotiateError::PgsizesBelowMinimum { pgsizes: 4608 })
        );
        assert_eq!(
            caps_of(r#"{"capabilities":{"migration":{"pgsize":0}}}"#),
            Err(NegotiateError::ZeroMigrationPgsize)
        );
        assert_eq!(
            caps_of(r#"{"capabilities":{"migration":{"pgsize":6000}}}"#),
            Err(NegotiateError::MigrationPgsizeNotMultiple { pgsize: 6000 })
        );
    }

    #[test]
    fn over_large_values_are_clamped() {
        let c = caps_of(
            r#"{"capabilities":{"max_msg_fds":1024,"max_data_xfer_size":1073741824,
                "max_dma_maps":18446744073709551615,
                "migration":{"pgsize":65536,"max_bitmap_size":1099511627776}}}"#,
        )
        .unwrap();
        assert_eq!(c.max_msg_fds, LIMIT_MAX_MSG_FDS);
        assert_eq!(c.max_data_xfer_size, LIMIT_MAX_DATA_XFER_SIZE);
        assert_eq!(c.max_dma_maps, LIMIT_MAX_DMA_MAPS);
        assert_eq!(
            c.migration,
            Some(MigrationCaps {
                pgsize: 65536,
                max_bitmap_size: LIMIT_MAX_BITMAP_SIZE
            })
        );
        let c =
            caps_of(r#"{"capabilities":{"max_msg_fds":0,"max_data_xfer_size":67108864}}"#).unwrap();
        assert_eq!((c.max_msg_fds, c.max_data_xfer_size), (0, 64 << 20));
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let c = caps_of(
            r#"{"extra":1,"capabilities":{"future":{"x":1},"max_msg_fds":4,
                "migration":{"pgsize":4096,"flavour":"new"},
                "twin_socket":{"supported":false,"more":true}}}"#,
        )
        .unwrap();
        assert_eq!(c.max_msg_fds, 4);
        assert_eq!(c.migration.map(|m| m.pgsize), Some(4096));
    }

    #[test]
    fn min_page_size_is_lowest_bit() {
        let c = caps_of(r#"{"capabilities":{"pgsizes":1075843072}}"#).unwrap();
        assert_eq!(c.pgsizes, (1 << 30) | (2 << 20) | 4096);
        assert_eq!(c.min_page_size(), 4096);
        let c = Capabilities {
            pgsizes: 2 << 20,
            ..Capabilities::default()
        };
        assert_eq!(c.min_page_size(), 2 << 20);
    }

    #[test]
    fn offer_payload() {
        let offer = Offer::default();
        let p = offer.version_payload();
        assert_eq!(p.last(), Some(&0));
        let v = Version::decode(&p).unwrap();
        assert_eq!((v.major, v.minor), (0, 0));
        let json: Value = serde_json::from_str(v.json.as_deref().unwrap()).unwrap();
        let caps = &json["capabilities"];
        assert_eq!(caps["max_msg_fds"], 16);
        assert_eq!(caps["max_data_xfer_size"], 1 << 20);
        assert_eq!(caps["pgsizes"], 4096);
        assert_eq!(caps["max_dma_maps"], 65535);
        assert_eq!(caps["migration"]["pgsize"], host_page_size());
        assert_eq!(caps["migration"]["max_bitmap_size"], 256 << 20);
        assert_eq!(caps["twin_socket"]["supported"], true);
        assert!(caps.get("write_multiple").is_none());

        let single = Offer {
            twin_socket: false,
            ..Offer::default()
        };
        let v = Version::decode(&single.version_payload()).unwrap();
        let json: Value = serde_json::from_str(v.json.as_deref().unwrap()).unwrap();
        assert!(json["capabilities"].get("twin_socket").is_none());

        let twin = Offer {
            twin_socket: true,
            migration: None,
            ..Offer::default()
        };
        let v = Version::decode(&twin.version_payload()).unwrap();
        let json: Value = serde_json::from_str(v.json.as_deref().unwrap()).unwrap();
        assert_eq!(json["capabilities"]["twin_socket"]["supported"], true);
        assert!(json["capabilities"].get("migration").is_none());
    }

    #[test]
    fn our_offer_read_back_as_a_reply() {
        let offer = Offer::default();
        let c = Capabilities::from_reply(&offer, &offer.version_payload()).unwrap();
        assert_eq!(c.max_msg_fds, 16);
        assert_eq!(c.migration.map(|m| m.pgsize), Some(host_page_size()));
    }
}
