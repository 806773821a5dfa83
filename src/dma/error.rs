// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Errors of the DMA layer: refusals before anything is sent (each naming the limit and the
//! values that broke it), and failures the server reported.

use std::fmt;

use crate::connection;
use crate::error::{iter_causes, ConnectionCause};
use crate::protocol::Command;

/// One DMA operation, as named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaOp {
    /// `DMA_MAP` of `iova..iova + size`.
    Map {
        /// First IOVA of the window.
        iova: u64,
        /// Size in bytes.
        size: u64,
    },
    /// `DMA_UNMAP` of `iova..iova + size`.
    Unmap {
        /// First IOVA of the window.
        iova: u64,
        /// Size in bytes.
        size: u64,
    },
}

impl DmaOp {
    /// The command the operation sends.
    pub fn command(&self) -> Command {
        match self {
            DmaOp::Map { .. } => Command::DmaMap,
            DmaOp::Unmap { .. } => Command::DmaUnmap,
        }
    }

    fn range(&self) -> (u64, u64) {
        match *self {
            DmaOp::Map { iova, size } | DmaOp::Unmap { iova, size } => {
                (iova, iova.saturating_add(size))
            }
        }
    }
}

impl fmt::Display for DmaOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (start, end) = self.range();
        let what = match self {
            DmaOp::Map { .. } => "DMA map",
            DmaOp::Unmap { .. } => "DMA unmap",
        };
        write!(f, "{what} {start:#x}..{end:#x}")
    }
}

/// One operation of a transaction that the server refused or that could not be sent.
#[derive(Debug, PartialEq)]
pub struct DmaFailure {
    /// The operation.
    pub op: DmaOp,
    /// What went wrong: the server's error reply (with its errno), a timeout, a disconnect.
    pub error: connection::Error,
}

impl fmt::Display for DmaFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            connection::Error::Server { command, errno } => {
                write!(f, "server refused {command} of {}: ", range_text(&self.op))?;
                match i32::try_from(*errno) {
                    Ok(0) => f.write_str("no errno given"),
                    Ok(e) => write!(f, "{}", std::io::Error::from_raw_os_error(e)),
                    Err(_) => write!(f, "errno {errno}"),
                }
            }
            other => write!(f, "{}: {other}", self.op),
        }
    }
}

fn range_text(op: &DmaOp) -> String {
    let (start, end) = op.range();
    format!("{start:#x}..{end:#x}")
}

/// Errors of the DMA layer.
///
/// Every refusal before sending names the limit and the values; nothing was sent and the
/// mapping table is unchanged when one of those is returned.
#[derive(Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A window of size 0.
    #[error("{op} is empty")]
    Empty {
        /// The operation.
        op: DmaOp,
    },
    /// `iova + size` (or `gpa + size`) does not fit in 64 bits.
    #[error("{op} wraps around the 64-bit address space")]
    Overflow {
        /// The operation.
        op: DmaOp,
    },
    /// The IOVA range, or the guest address it maps, is not a multiple of the smallest page
    /// size the server negotiated.
    #[error("{op} is not aligned to the negotiated page size {page_size:#x}")]
    Unaligned {
        /// The operation.
        op: DmaOp,
        /// The smallest negotiated page size.
        page_size: u64,
    },
    /// The guest address range `gpa..gpa + size` does not lie inside one guest memory region.
    #[error("{op}: guest range {gpa:#x}..{end:#x} does not lie inside one guest memory region", end = gpa.saturating_add(*size))]
    NotInGuestMemory {
        /// The operation.
        op: DmaOp,
        /// First guest physical address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
    /// The window overlaps a live mapping.
    #[error("{op} overlaps the mapping {start:#x}..{end:#x}")]
    Overlap {
        /// The operation.
        op: DmaOp,
        /// First IOVA of the existing mapping.
        start: u64,
        /// End (exclusive) of the existing mapping.
        end: u64,
    },
    /// One more window would exceed the server's `max_dma_maps`.
    #[error("{op} would make {count} live mappings; the server's max_dma_maps is {limit}")]
    TooManyMappings {
        /// The operation.
        op: DmaOp,
        /// Live mappings there would be.
        count: usize,
        /// The server's `max_dma_maps`.
        limit: u32,
    },
    /// An unmap that does not match an earlier map exactly (no partial unmaps).
    #[error("{op} does not match a live mapping")]
    NoSuchMapping {
        /// The operation.
        op: DmaOp,
    },
    /// The region's permissions grant the server neither read nor write access.
    #[error("{op}: guest memory at {gpa:#x} is neither readable nor writable")]
    NoAccess {
        /// The operation.
        op: DmaOp,
        /// First guest physical address.
        gpa: u64,
    },
    /// The server refused one operation, or it could not be sent or answered.
    #[error("{0}")]
    Failed(DmaFailure),
    /// Several operations of a transaction failed; each is listed, in the order sent.
    #[error("{} of {total} DMA operations failed; first: {}", failures.len(), first(failures))]
    Batch {
        /// Operations in the transaction.
        total: usize,
        /// The failed ones.
        failures: Vec<DmaFailure>,
    },
}

fn first(failures: &[DmaFailure]) -> String {
    failures
        .first()
        .map(ToString::to_string)
        .unwrap_or_default()
}

impl Error {
    /// The failures the server (or the connection) reported: empty for a local refusal.
    pub fn failures(&self) -> &[DmaFailure] {
        match self {
            Error::Failed(f) => std::slice::from_ref(f),
            Error::Batch { failures, .. } => failures,
            _ => &[],
        }
    }

    /// Whether the request never left this process (a local check refused it).
    pub fn is_local(&self) -> bool {
        !matches!(self, Error::Failed(_) | Error::Batch { .. })
    }
}

impl ConnectionCause for Error {
    fn connection_errors(&self) -> impl Iterator<Item = &connection::Error> {
        iter_causes((None, self.failures()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_limit_and_the_values() {
        let op = DmaOp::Map {
            iova: 0x1000,
            size: 0x800,
        };
        let cases: Vec<(Error, &str)> = vec![
            (
                Error::Unaligned {
                    op,
                    page_size: 0x1000,
                },
                "DMA map 0x1000..0x1800 is not aligned to the negotiated page size 0x1000",
            ),
            (Error::Empty { op }, "DMA map 0x1000..0x1800 is empty"),
            (
                Error::Overflow { op },
                "DMA map 0x1000..0x1800 wraps around the 64-bit address space",
            ),
            (
                Error::NotInGuestMemory {
                    op,
                    gpa: 0x9000,
                    size: 0x800,
                },
                "DMA map 0x1000..0x1800: guest range 0x9000..0x9800 does not lie inside one \
                 guest memory region",
            ),
            (
                Error::Overlap {
                    op,
                    start: 0,
                    end: 0x2000,
                },
                "DMA map 0x1000..0x1800 overlaps the mapping 0x0..0x2000",
            ),
            (
                Error::TooManyMappings {
                    op,
                    count: 65536,
                    limit: 65535,
                },
                "DMA map 0x1000..0x1800 would make 65536 live mappings; the server's \
                 max_dma_maps is 65535",
            ),
            (
                Error::NoSuchMapping {
                    op: DmaOp::Unmap {
                        iova: 0x1000,
                        size: 0x1000,
                    },
                },
                "DMA unmap 0x1000..0x2000 does not match a live mapping",
            ),
            (
                Error::NoAccess { op, gpa: 0x1000 },
                "DMA map 0x1000..0x1800: guest memory at 0x1000 is neither readable nor writable",
            ),
            (
                Error::Failed(DmaFailure {
                    op,
                    error: connection::Error::Server {
                        command: Command::DmaMap,
                        errno: libc::EINVAL as u32,
                    },
                }),
                "server refused DMA_MAP of 0x1000..0x1800: Invalid argument (os error 22)",
            ),
            (
                Error::Failed(DmaFailure {
                    op,
                    error: connection::Error::Server {
                        command: Command::DmaMap,
                        errno: 0,
                    },
                }),
                "server refused DMA_MAP of 0x1000..0x1800: no errno given",
            ),
            (
                Error::Failed(DmaFailure {
                    op,
                    error: connection::Error::Server {
                        command: Command::DmaMap,
                        errno: u32::MAX,
                    },
                }),
                "server refused DMA_MAP of 0x1000..0x1800: errno 4294967295",
            ),
            (
                Error::Failed(DmaFailure {
                    op,
                    error: connection::Error::Disconnected(
                        connection::DisconnectReason::PeerClosed,
                    ),
                }),
                "DMA map 0x1000..0x1800: disconnected: the server closed the connection",
            ),
            (
                Error::Batch {
                    total: 3,
                    failures: vec![DmaFailure {
                        op,
                        error: connection::Error::Server {
                            command: Command::DmaMap,
                            errno: libc::ENOSPC as u32,
                        },
                    }],
                },
                "1 of 3 DMA operations failed; first: server refused DMA_MAP of \
                 0x1000..0x1800: No space left on device (os error 28)",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.is_local(), e.failures().is_empty(), "{e}");
            assert_eq!(e.connection_errors().count(), e.failures().len(), "{e}");
        }
        assert_eq!(op.command(), Command::DmaMap);
        assert_eq!(
            DmaOp::Unmap { iova: 0, size: 1 }.command(),
            Command::DmaUnmap
        );
    }
}
