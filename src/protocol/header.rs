// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

use std::fmt;

/// Why a message, or a part of one, could not be decoded.
///
/// Every variant names the field that was wrong, so that an error reaching a user says what
/// the peer sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes were present than the field or structure needs.
    #[error("{what}: need {need} bytes, got {got}")]
    Short {
        /// The structure or field being decoded.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// A field holds a value that is not allowed.
    #[error("invalid {field}: {value:#x}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// The value received.
        value: u64,
    },
    /// A field holds a value larger than the limit the decoder was given.
    #[error("{field} {value} exceeds the limit of {limit}")]
    TooLarge {
        /// The field's name.
        field: &'static str,
        /// The value received.
        value: u64,
        /// The largest value accepted.
        limit: u64,
    },
    /// A field that sizes or locates something points outside the bytes received.
    #[error("{field} {value:#x} points outside the {len} bytes received")]
    OutOfBounds {
        /// The field's name.
        field: &'static str,
        /// The value received.
        value: u64,
        /// Bytes present.
        len: usize,
    },
    /// The payload does not have the length its fields imply.
    #[error("{what}: payload of {got} bytes where {expected} were expected")]
    LengthMismatch {
        /// The structure being decoded.
        what: &'static str,
        /// Bytes the fields imply.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// A string that must be UTF-8 is not.
    #[error("{what} is not UTF-8: {source}")]
    NotUtf8 {
        /// The field holding the string.
        what: &'static str,
        /// Where the UTF-8 breaks.
        source: std::str::Utf8Error,
    },
    /// A string that must end with a NUL byte does not.
    #[error("{what} is not NUL-terminated")]
    NotNulTerminated {
        /// The field holding the string.
        what: &'static str,
    },
}

/// A vfio-user command number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
#[non_exhaustive]
pub enum Command {
    /// `VFIO_USER_VERSION`: version and capability negotiation.
    Version = 1,
    /// `VFIO_USER_DMA_MAP`: add a DMA window.
    DmaMap = 2,
    /// `VFIO_USER_DMA_UNMAP`: remove a DMA window.
    DmaUnmap = 3,
    /// `VFIO_USER_DEVICE_GET_INFO`.
    DeviceGetInfo = 4,
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`.
    DeviceGetRegionInfo = 5,
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
    DeviceGetRegionIoFds = 6,
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
    DeviceGetIrqInfo = 7,
    /// `VFIO_USER_DEVICE_SET_IRQS`.
    DeviceSetIrqs = 8,
    /// `VFIO_USER_REGION_READ`.
    RegionRead = 9,
    /// `VFIO_USER_REGION_WRITE`.
    RegionWrite = 10,
    /// `VFIO_USER_DMA_READ` (server to client).
    DmaRead = 11,
    /// `VFIO_USER_DMA_WRITE` (server to client).
    DmaWrite = 12,
    /// `VFIO_USER_DEVICE_RESET`.
    DeviceReset = 13,
    /// `VFIO_USER_DIRTY_PAGES` (removed in 0.9.2; the number is retired).
    DirtyPages = 14,
    /// `VFIO_USER_REGION_WRITE_MULTI`.
    RegionWriteMulti = 15,
    /// `VFIO_USER_DEVICE_FEATURE`.
    DeviceFeature = 16,
    /// `VFIO_USER_MIG_DATA_READ`.
    MigDataRead = 17,
    /// `VFIO_USER_MIG_DATA_WRITE`.
    MigDataWrite = 18,
}

impl Command {
    /// Every command, in numeric order.
    pub const ALL: [Command; 18] = [
        Command::Version,
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DmaRead,
        Command::DmaWrite,
        Command::DeviceReset,
        Command::DirtyPages,
        Command::RegionWriteMulti,
        Command::DeviceFeature,
        Command::MigDataRead,
        Command::MigDataWrite,
    ];

    /// The command for a wire number, if it is one we know.
    pub fn from_u16(value: u16) -> Option<Command> {
        let index = usize::from(value).checked_sub(1)?;
        Command::ALL.get(index).copied()
    }

    /// The spec's name for the command, e.g. `REGION_READ`.
    pub fn name(self) -> &'static str {
        match self {
            Command::Version => "VERSION",
            Command::DmaMap => "DMA_MAP",
            Command::DmaUnmap => "DMA_UNMAP",
            Command::DeviceGetInfo => "DEVICE_GET_INFO",
            Command::DeviceGetRegionInfo => "DEVICE_GET_REGION_INFO",
            Command::DeviceGetRegionIoFds => "DEVICE_GET_REGION_IO_FDS",
            Command::DeviceGetIrqInfo => "DEVICE_GET_IRQ_INFO",
            Command::DeviceSetIrqs => "DEVICE_SET_IRQS",
            Command::RegionRead => "REGION_READ",
            Command::RegionWrite => "REGION_WRITE",
            Command::DmaRead => "DMA_READ",
            Command::DmaWrite => "DMA_WRITE",
            Command::DeviceReset => "DEVICE_RESET",
            Command::DirtyPages => "DIRTY_PAGES",
            Command::RegionWriteMulti => "REGION_WRITE_MULTI",
            Command::DeviceFeature => "DEVICE_FEATURE",
            Command::MigDataRead => "MIG_DATA_READ",
            Command::MigDataWrite => "MIG_DATA_WRITE",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a message, from the low bits of [`Header::flags`] ([`Header::TYPE_MASK`]):
/// [`Header::TYPE_COMMAND`] or [`Header::TYPE_REPLY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum MessageType {
    /// A command (request).
    Command = Header::TYPE_COMMAND,
    /// A reply.
    Reply = Header::TYPE_REPLY,
}

/// The 16-byte header that starts every message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Message id chosen by the sender of a command and echoed in its reply.
    pub id: u16,
    /// Command number (also set in replies). Kept raw: unknown commands must be answered.
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// Type, `No_reply` and `Error` bits.
    pub flags: u32,
    /// errno of an error reply; 0 otherwise.
    pub error: u32,
}

impl Header {
    /// Size of the message header in bytes.
    pub const SIZE: usize = 16;
    /// Mask of the message type bits in [`Header::flags`].
    pub const TYPE_MASK: u32 = 0xf;
    /// Message type (under [`Header::TYPE_MASK`]): a command (request).
    pub const TYPE_COMMAND: u32 = 0;
    /// Message type (under [`Header::TYPE_MASK`]): a reply.
    pub const TYPE_REPLY: u32 = 1;
    /// Flag: the sender of a command does not want a reply.
    pub const FLAG_NO_REPLY: u32 = 0x10;
    /// Flag: the reply reports a failure; [`Header::error`] holds an errno.
    pub const FLAG_ERROR: u32 = 0x20;

    /// A command header for a payload of `payload_len` bytes.
    ///
    /// Returns `None` when the message would not fit the 32-bit size field.
    pub fn command(
        id: u16,
        command: Command,
        payload_len: usize,
        no_reply: bool,
    ) -> Option<Header> {
        let size = u32::try_from(payload_len.checked_add(Header::SIZE)?).ok()?;
        Some(Header {
            id,
            command: command as u16,
            size,
            flags: MessageType::Command as u32 | if no_reply { Header::FLAG_NO_REPLY } else { 0 },
            error: 0,
        })
    }

    /// A successful reply header answering `request`, for a payload of `payload_len` bytes.
    pub fn reply(request: &Header, payload_len: usize) -> Option<Header> {
        let size = u32::try_from(payload_len.checked_add(Header::SIZE)?).ok()?;
        Some(Header {
            id: request.id,
            command: request.command,
            size,
            flags: MessageType::Reply as u32,
            error: 0,
        })
    }

    /// A header-only error reply answering `request` with `errno`.
    pub fn error_reply(request: &Header, errno: u32) -> Header {
        Header {
            id: request.id,
            command: request.command,
            size: Header::SIZE as u32,
            flags: MessageType::Reply as u32 | Header::FLAG_ERROR,
            error: errno,
        }
    }

    /// Whether the message is a command (request).
    pub fn is_command(&self) -> bool {
        self.flags & Header::TYPE_MASK == Header::TYPE_COMMAND
    }

    /// Whether the message is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & Header::TYPE_MASK == Header::TYPE_REPLY
    }

    /// The message type, or `None` for type bits the protocol does not define.
    pub(crate) fn message_type(&self) -> Option<MessageType> {
        match self.flags & Header::TYPE_MASK {
            0 => Some(MessageType::Command),
            1 => Some(MessageType::Reply),
            _ => None,
        }
    }

    /// Whether the `No_reply` bit is set.
    pub fn no_reply(&self) -> bool {
        self.flags & Header::FLAG_NO_REPLY != 0
    }

    /// Whether the `Error` bit is set.
    pub fn is_error(&self) -> bool {
        self.flags & Header::FLAG_ERROR != 0
    }

    /// The command, if its number is known.
    pub fn known_command(&self) -> Option<Command> {
        Command::from_u16(self.command)
    }

    /// Bytes of payload that follow the header. Only meaningful after [`Header::decode`].
    pub fn payload_len(&self) -> usize {
        (self.size as usize).saturating_sub(Header::SIZE)
    }

    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; Header::SIZE] {
        let mut b = [0u8; Header::SIZE];
        b[0..2].copy_from_slice(&self.id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.command.to_ne_bytes());
        b[4..8].copy_from_slice(&self.size.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.error.to_ne_bytes());
        b
    }

    /// Appends the header's wire bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// Decodes and validates a header: at least 16 bytes present, `size` at least 16 and no
    /// more than `max_size`, and defined type bits.
    pub fn decode(bytes: &[u8], max_size: u32) -> Result<Header, DecodeError> {
        let b: &[u8; Header::SIZE] = bytes
            .get(..Header::SIZE)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Short {
                what: "header",
                need: Header::SIZE,
                got: bytes.len(),
            })?;
        let header = Header::from_bytes(b);
        if (header.size as usize) < Header::SIZE {
            return Err(DecodeError::InvalidField {
                field: "header.msg_size",
                value: u64::from(header.size),
            });
        }
        if header.size > max_size {
            return Err(DecodeError::TooLarge {
                field: "header.msg_size",
                value: u64::from(header.size),
                limit: u64::from(max_size),
            });
        }
        if header.message_type().is_none() {
            return Err(DecodeError::InvalidField {
                field: "header.flags (type)",
                value: u64::from(header.flags),
            });
        }
        Ok(header)
    }

    /// Reads the fields of a header without validating them.
    pub fn from_bytes(b: &[u8; Header::SIZE]) -> Header {
        Header {
            id: u16::from_ne_bytes([b[0], b[1]]),
            command: u16::from_ne_bytes([b[2], b[3]]),
            size: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.known_command().map_or("UNKNOWN", Command::name);
        write!(
            f,
            "{}({}) id={} size={} flags={:#x} errno={}",
            name, self.command, self.id, self.size, self.flags, self.error
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header::command(7, Command::RegionRead, 16, true).unwrap();
        let d = Header::decode(&h.to_bytes(), 1 << 20).unwrap();
        assert_eq!(h, d);
        assert!(d.no_reply());
        assert_eq!(d.message_type(), Some(MessageType::Command));
        assert_eq!(d.known_command(), Some(Command::RegionRead));
        assert_eq!(d.payload_len(), 16);
    }

    #[test]
    fn header_rejects_bad_fields() {
        let mut h = Header::command(1, Command::Version, 0, false).unwrap();
        h.size = 15;
        assert!(matches!(
            Header::decode(&h.to_bytes(), 64),
            Err(DecodeError::InvalidField {
                field: "header.msg_size",
                ..
            })
        ));
        h.size = 65;
        assert!(matches!(
            Header::decode(&h.to_bytes(), 64),
            Err(DecodeError::TooLarge { .. })
        ));
        h.size = 16;
        h.flags = 2;
        assert!(matches!(
            Header::decode(&h.to_bytes(), 64),
            Err(DecodeError::InvalidField {
                field: "header.flags (type)",
                ..
            })
        ));
        assert!(matches!(
            Header::decode(&[0; 3], 64),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn command_numbers() {
        for (i, c) in Command::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i + 1);
            assert_eq!(Command::from_u16(*c as u16), Some(*c));
        }
        assert_eq!(Command::from_u16(0), None);
        assert_eq!(Command::from_u16(19), None);
    }

    #[test]
    fn error_reply_form() {
        let rq = Header::command(9, Command::DmaMap, 32, false).unwrap();
        let e = Header::error_reply(&rq, 22);
        assert_eq!(e.size as usize, Header::SIZE);
        assert!(e.is_error());
        assert_eq!(e.message_type(), Some(MessageType::Reply));
        assert_eq!(e.id, 9);
        assert_eq!(e.to_string(), "DMA_MAP(2) id=9 size=16 flags=0x21 errno=22");
    }
}
