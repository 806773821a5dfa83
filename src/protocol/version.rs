// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `VFIO_USER_VERSION` (1): the same payload in the request and the reply.

use super::wire::{put_u16, Reader};
use super::DecodeError;

/// The payload of a VERSION request or reply: the version and the capability JSON.
///
/// The protocol layer only carries the JSON text; what it means is
/// [`negotiate`](crate::negotiate)'s business.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Version {
    /// Major version (0 for every known implementation).
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// The capability JSON without its terminating NUL; `None` when the message has none.
    pub json: Option<String>,
}

impl Version {
    /// Size of the fixed part: `major` and `minor`.
    pub const HEAD_SIZE: usize = 4;

    /// Appends the payload: the version, then the JSON (if any) and its NUL.
    ///
    /// The JSON must not contain NUL bytes: C peers read it only up to the first one.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_u16(out, self.major);
        put_u16(out, self.minor);
        if let Some(json) = &self.json {
            out.extend_from_slice(json.as_bytes());
            out.push(0);
        }
    }

    /// Decodes a payload.
    ///
    /// JSON bytes, when present, must end with a NUL
    /// ([`DecodeError::NotNulTerminated`]) and be UTF-8 up to the first NUL
    /// ([`DecodeError::NotUtf8`]). Bytes after the first NUL are ignored, as C peers
    /// (libvfio-user, QEMU) ignore them.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "version");
        let major = r.u16()?;
        let minor = r.u16()?;
        let rest = r.rest();
        let json = match rest.split_last() {
            None => None,
            Some((&0, _)) => {
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                let text = rest.get(..end).unwrap_or(&[]);
                let text = std::str::from_utf8(text).map_err(|source| DecodeError::NotUtf8 {
                    what: "version JSON",
                    source,
                })?;
                Some(text.to_owned())
            }
            Some(_) => {
                return Err(DecodeError::NotNulTerminated {
                    what: "version JSON",
                })
            }
        };
        Ok(Version { major, minor, json })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_json() {
        for json in [
            None,
            Some(String::new()),
            Some(r#"{"capabilities":{}}"#.to_owned()),
        ] {
            let v = Version {
                major: 0,
                minor: 2,
                json,
            };
            let mut out = Vec::new();
            v.encode_into(&mut out);
            assert_eq!(Version::decode(&out), Ok(v));
        }
    }

    #[test]
    fn nul_is_appended_and_counted() {
        let v = Version {
            major: 1,
            minor: 3,
            json: Some("{}".to_owned()),
        };
        let mut out = Vec::new();
        v.encode_into(&mut out);
        let mut expected = Vec::new();
        expected.extend_from_slice(&1u16.to_ne_bytes());
        expected.extend_from_slice(&3u16.to_ne_bytes());
        expected.extend_from_slice(b"{}\0");
        assert_eq!(out, expected);
    }

    #[test]
    fn rejects_missing_nul_bad_utf8_and_short() {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(b"{}");
        assert_eq!(
            Version::decode(&p),
            Err(DecodeError::NotNulTerminated {
                what: "version JSON"
            })
        );
        let p = [0, 0, 0, 0, 0xff, 0xfe, 0];
        assert!(matches!(
            Version::decode(&p),
            Err(DecodeError::NotUtf8 { .. })
        ));
        assert!(matches!(
            Version::decode(&[0, 0, 0]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn text_ends_at_first_nul() {
        let p = [0, 0, 0, 0, b'{', b'}', 0, b'x', 0];
        assert_eq!(Version::decode(&p).unwrap().json.as_deref(), Some("{}"));
    }
}
