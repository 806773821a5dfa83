// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Errors of the PCI layer.

use std::fmt;
use std::io;

use super::InterruptKind;
use crate::connection;
use crate::device;
use crate::dma;
use crate::error::{iter_causes, Causes, ConnectionCause};
use crate::migration;
use crate::negotiate::NegotiateError;

/// Errors of [`VfioUserPciDevice`](super::VfioUserPciDevice).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting failed (or the connection's event loop could not start).
    #[error("connecting to the device failed: {0}")]
    Connect(connection::Error),
    /// The server's VERSION reply was not acceptable.
    #[error("version negotiation with the device failed: {0}")]
    Negotiate(NegotiateError),
    /// A request to the device failed (the server's errno is kept in the source).
    #[error(transparent)]
    Device(#[from] device::Error),
    /// The device does not report `VFIO_DEVICE_FLAGS_PCI`.
    #[error("the device is not a PCI device")]
    NotPci,
    /// The config space region is too small, or not readable and writable.
    #[error(
        "unusable config space region: {size} bytes and flags {flags:#x}; needs at least \
         256 bytes, readable and writable"
    )]
    ConfigRegion {
        /// The region's size.
        size: u64,
        /// The region's `VFIO_REGION_INFO_FLAG_*`.
        flags: u32,
    },
    /// The config space header is not a type-0 (endpoint) header.
    #[error("config space header type {0:#x} is not an endpoint's (0)")]
    HeaderType(u8),
    /// A memory BAR's original value has a reserved memory type.
    #[error("BAR {bar}: reserved memory type {memory_type}")]
    BarReservedType {
        /// The BAR.
        bar: u32,
        /// The type bits (1 or 3).
        memory_type: u32,
    },
    /// The region behind a BAR is larger than the BAR can decode.
    #[error("BAR {bar}: a region of {size:#x} bytes does not fit (at most {limit:#x})")]
    BarTooLarge {
        /// The BAR (6 is the expansion ROM).
        bar: u32,
        /// The region's size.
        size: u64,
        /// The largest window the BAR's kind allows.
        limit: u64,
    },
    /// A 64-bit BAR has no slot for its upper half: it is BAR 5, or the next BAR is a
    /// region of its own.
    #[error("BAR {bar} is 64-bit, but slot {} is not free for its upper half", bar + 1)]
    BarUpperHalf {
        /// The BAR.
        bar: u32,
    },
    /// A capability in config space is malformed.
    #[error("capability at {offset:#x}: {problem}")]
    Capability {
        /// Offset of the capability (or of the bad pointer) in config space.
        offset: usize,
        /// What is wrong.
        problem: CapabilityProblem,
    },
    /// Config space offers the guest more vectors of an interrupt kind than the server
    /// reports for its IRQ index: an interrupt pin without an INTx vector, an MSI-X table
    /// larger than the MSI-X count, or MSI capable of more vectors than the MSI count. The
    /// guest would program vectors that never fire. (Fewer is fine: the rest stay unused.)
    #[error(
        "config space offers the guest {offered} {} vector(s) ({}), but the server reports \
         {count} for IRQ index {}",
        kind_name(*kind),
        offer_source(*kind),
        kind.irq_index()
    )]
    IrqCount {
        /// INTx, MSI or MSI-X.
        kind: InterruptKind,
        /// The vectors config space offers.
        offered: u32,
        /// The vectors the server reports.
        count: u32,
    },
    /// A BAR address the VMM gave is not usable.
    #[error("BAR {bar} cannot be placed at {base:#x}: {what}")]
    Placement {
        /// The BAR.
        bar: u32,
        /// The address given.
        base: u64,
        /// Why not.
        what: &'static str,
    },
    /// No such BAR.
    #[error("the device has no BAR {0}")]
    NoSuchBar(u32),
    /// The VMM's interrupt provider failed.
    #[error("interrupt routing of {kind:?} vector {vector} failed: {source}")]
    Interrupt {
        /// The interrupt source.
        kind: InterruptKind,
        /// The vector.
        vector: u32,
        /// The provider's error.
        source: io::Error,
    },
    /// Sharing guest memory with the server failed (the DMA layer says why).
    #[error("sharing guest memory with the server failed: {0}")]
    Dma(#[from] dma::Error),
    /// Setting up the device's own events failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The connection to the server is gone (the error is the connection's
    /// [`connection::Error::Disconnected`]); the device answers all-ones until detached.
    #[error("the device is lost: {0}")]
    Lost(connection::Error),
    /// The server offers another device than the one attached (after a reconnect), or a
    /// saved [`PciState`](super::PciState) is another device's: `what` names the first
    /// difference found.
    #[error("a different device: {what}")]
    DifferentDevice {
        /// What differs, with both values.
        what: String,
    },
    /// A saved [`PciState`](super::PciState) of a version this client does not know.
    #[error("PCI state version {found} is not supported (this client restores {supported})")]
    StateVersion {
        /// The version in the state.
        found: u32,
        /// The version this client writes and reads.
        supported: u32,
    },
    /// [`save`](super::VfioUserPciDevice::save) left the device stopped, and it still is: a
    /// reset would take it back to RUNNING (or be refused by the server), and a device whose
    /// state moved elsewhere must not run again. Detach it, or restore it first.
    #[error("the device was saved and is stopped: detach it, or restore it first")]
    Saved,
    /// Saving or restoring the device data failed in the migration layer, or the device
    /// cannot migrate at all ([`Error::is_unsupported`]).
    #[error(transparent)]
    Migration(#[from] migration::Error),
    /// A saved device does not start with
    /// [`SNAPSHOT_MAGIC`](super::VfioUserPciDevice::SNAPSHOT_MAGIC).
    #[error("not a saved vfio-user PCI device (magic {0:02x?})")]
    SnapshotMagic([u8; 8]),
    /// A saved device's container version is not
    /// [`SNAPSHOT_VERSION`](super::VfioUserPciDevice::SNAPSHOT_VERSION).
    #[error("snapshot version {found} (supported: {supported})")]
    SnapshotVersion {
        /// The version found.
        found: u32,
        /// The version this library reads.
        supported: u32,
    },
    /// A saved device's container sets flags this version does not know.
    #[error("unknown snapshot flags {0:#x}")]
    SnapshotFlags(u32),
    /// A length in a saved device's container is over its bound.
    #[error("{what} of {len} bytes (at most {max})")]
    SnapshotTooLong {
        /// What the length is of.
        what: &'static str,
        /// The length found.
        len: u64,
        /// Its bound.
        max: u64,
    },
    /// A saved device's container ends early.
    #[error("the snapshot ends inside its {what}")]
    SnapshotTruncated {
        /// The part that was being read.
        what: &'static str,
    },
    /// The PCI state of a saved device is no valid JSON of a [`PciState`](super::PciState).
    #[error("the saved PCI state does not parse: {0}")]
    SnapshotState(serde_json::Error),
    /// A saved device's trailer does not count the bytes its chunks hold.
    #[error("the snapshot says {declared} bytes of device data, its chunks hold {found}")]
    SnapshotDataLength {
        /// The trailer's count.
        declared: u64,
        /// The bytes of the chunks.
        found: u64,
    },
    /// The device was attached without guest memory: there is nothing to log.
    #[error("the device has no guest memory mapped")]
    NoGuestMemory,
    /// The [`Migration`](crate::migration::Migration) handle given belongs to another
    /// device (or to the connection a reconnect replaced).
    #[error("the migration handle belongs to another device")]
    ForeignMigration,
    /// Reconnecting gave up at the policy's deadline; `last` is the last attempt's error.
    #[error("reconnecting gave up after {attempts} attempt(s): {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<Error>,
    },
    /// An error met where it could not be returned (see
    /// [`VfioUserPciDevice::last_error`](super::VfioUserPciDevice::last_error)).
    #[error("{activity}: {source}")]
    During {
        /// What the device was doing.
        activity: Activity,
        /// The error.
        source: Box<Error>,
    },
}

impl Error {
    /// Whether the device cannot migrate at all (a migration blocker).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Migration(e) if e.is_unsupported())
    }

    /// The migration error behind this error.
    fn migration(&self) -> Option<&migration::Error> {
        match self {
            Error::Migration(e) => Some(e),
            Error::During { source, .. } => source.migration(),
            Error::GaveUp { last, .. } => last.migration(),
            _ => None,
        }
    }

    /// The connection errors behind this error.
    pub(crate) fn causes(&self) -> Causes<'_> {
        match self {
            Error::Connect(e) | Error::Lost(e) => (Some(e), &[]),
            Error::Device(e) => (e.connection_error(), &[]),
            Error::Dma(e) => (None, e.failures()),
            Error::During { source, .. } => source.causes(),
            Error::GaveUp { last, .. } => last.causes(),
            _ => (None, &[]),
        }
    }
}

impl ConnectionCause for Error {
    fn connection_errors(&self) -> impl Iterator<Item = &connection::Error> {
        let migration = self.migration().into_iter();
        iter_causes(self.causes()).chain(migration.flat_map(|e| e.connection_errors()))
    }
}

fn kind_name(kind: InterruptKind) -> &'static str {
    match kind {
        InterruptKind::Intx => "INTx",
        InterruptKind::Msi => "MSI",
        InterruptKind::Msix => "MSI-X",
        InterruptKind::Err => "ERR",
        InterruptKind::Req => "REQ",
    }
}

/// Where config space offers vectors of `kind`.
fn offer_source(kind: InterruptKind) -> &'static str {
    match kind {
        InterruptKind::Intx => "its interrupt pin",
        InterruptKind::Msi => "its MSI capability's Multiple Message Capable",
        InterruptKind::Msix => "its MSI-X table size",
        InterruptKind::Err | InterruptKind::Req => "no register",
    }
}

/// What is wrong with a capability in config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapabilityProblem {
    /// A capability pointer leads into the header or past the end of config space.
    #[error("points to {to:#x}, outside 0x40..{end:#x}")]
    PointsOutside {
        /// Where it points.
        to: usize,
        /// The end of config space.
        end: usize,
    },
    /// A capability pointer leads back to a capability already seen.
    #[error("points back to {to:#x}: the list loops")]
    Loops {
        /// Where it points.
        to: usize,
    },
    /// The list has more capabilities than fit in config space.
    #[error("more capabilities than fit in config space")]
    TooMany,
    /// The capability's registers run past the standard config space.
    #[error("{name} capability of {len} bytes runs past config space")]
    PastConfigSpace {
        /// "MSI" or "MSI-X".
        name: &'static str,
        /// The capability's length.
        len: usize,
    },
    /// MSI claims more vectors than MSI has.
    #[error("MSI claims 2^{log2} vectors (at most 32)")]
    MsiVectors {
        /// The Multiple Message Capable field.
        log2: u8,
    },
    /// An MSI-X structure lies in a BAR the device does not have.
    #[error("MSI-X {structure} in BAR {bar}, which does not exist")]
    MsixNoSuchBar {
        /// "table" or "pending bits".
        structure: &'static str,
        /// The BAR.
        bar: u32,
    },
    /// An MSI-X structure lies in an I/O or ROM BAR.
    #[error("MSI-X {structure} in BAR {bar}, not a memory BAR")]
    MsixNotMemory {
        /// "table" or "pending bits".
        structure: &'static str,
        /// The BAR.
        bar: u32,
    },
    /// An MSI-X structure runs past the region behind its BAR.
    #[error("MSI-X {structure} at {offset:#x}+{len:#x} runs past region {bar} of {size:#x} bytes")]
    MsixPastRegion {
        /// "table" or "pending bits".
        structure: &'static str,
        /// The BAR (and region).
        bar: u32,
        /// Offset of the structure in the BAR.
        offset: u64,
        /// Length of the structure.
        len: u64,
        /// The region's size.
        size: u64,
    },
    /// The MSI-X table and pending bits overlap.
    #[error("MSI-X table and pending bits overlap")]
    MsixOverlap,
}

/// What a device was doing when it met an error it could not return: an access or an
/// interrupt change the guest made, or an end of interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activity {
    /// A config space read at `offset`.
    ConfigRead {
        /// Offset in config space.
        offset: usize,
    },
    /// A config space write at `offset`.
    ConfigWrite {
        /// Offset in config space.
        offset: usize,
    },
    /// A read of BAR `bar` at `offset`.
    BarRead {
        /// The BAR.
        bar: u32,
        /// Offset in the BAR.
        offset: u64,
    },
    /// A write to BAR `bar` at `offset`.
    BarWrite {
        /// The BAR.
        bar: u32,
        /// Offset in the BAR.
        offset: u64,
    },
    /// Bringing the server and the VMM in step with the guest's interrupt setup.
    InterruptSetup,
    /// Unmasking INTx at the server after the guest ended an interrupt.
    IntxUnmask,
    /// Reconnecting to the server and restoring the device there.
    Reconnect,
    /// Bringing the VMM's guest memory slots and ioeventfds in step with the BARs.
    GuestSlots,
}

impl fmt::Display for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activity::ConfigRead { offset } => write!(f, "config read at {offset:#x}"),
            Activity::ConfigWrite { offset } => write!(f, "config write at {offset:#x}"),
            Activity::BarRead { bar, offset } => write!(f, "BAR {bar} read at {offset:#x}"),
            Activity::BarWrite { bar, offset } => write!(f, "BAR {bar} write at {offset:#x}"),
            Activity::InterruptSetup => f.write_str("interrupt setup"),
            Activity::IntxUnmask => f.write_str("INTx unmask"),
            Activity::Reconnect => f.write_str("reconnect"),
            Activity::GuestSlots => f.write_str("guest memory slots and ioeventfds"),
        }
    }
}
