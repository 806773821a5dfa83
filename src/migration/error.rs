// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Errors of the migration layer.

use crate::connection;
use crate::device;
use crate::error::{iter_causes, ConnectionCause};
use crate::protocol::{Command, DeviceState};

/// Errors of [`Migration`](super::Migration), its data streams and its dirty logging.
///
/// Refusals made before sending (unreachable states, data in the wrong state) leave the
/// device as it was. Every malformed reply is reported as such, after its message has been
/// read whole, so the connection stays in step. Errors from the server carry its errno
/// ([`ConnectionCause::server_errno`]).
///
/// Three say that the device cannot migrate at all, what a VMM turns into a migration
/// blocker ([`Error::is_unsupported`]): [`Error::NotNegotiated`], [`Error::NoMigrationFeature`]
/// and [`Error::NoStopCopy`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device cannot migrate: the VERSION exchange did not negotiate the `migration`
    /// capability.
    #[error("migration unsupported: the connection did not negotiate the migration capability")]
    NotNegotiated,
    /// The device cannot migrate: the server refused DEVICE_FEATURE MIGRATION (PROBE or
    /// GET).
    #[error("migration unsupported: the server has no migration feature: {0}")]
    NoMigrationFeature(connection::Error),
    /// The device cannot migrate: its migration flags lack `VFIO_MIGRATION_STOP_COPY`,
    /// which v2 requires.
    #[error("migration unsupported: the device's migration flags {flags:#x} lack STOP_COPY")]
    NoStopCopy {
        /// The flags reported.
        flags: u64,
    },
    /// The server does not offer DMA dirty logging (DEVICE_FEATURE DMA_LOGGING_* refused).
    #[error("DMA dirty logging unsupported: {0}")]
    LoggingUnsupported(connection::Error),
    /// `to` cannot be reached from `from` with the device's flags; nothing was sent.
    #[error("state {to:?} cannot be reached from {from:?} (migration flags {flags:#x})")]
    Unreachable {
        /// The state the device is in.
        from: DeviceState,
        /// The state asked for.
        to: DeviceState,
        /// The device's migration flags.
        flags: u64,
    },
    /// One arc of a transition failed (the server refused it, or its reply did not come in
    /// time); `now` is the state the server then reported (`None` when reading it back
    /// failed too).
    #[error("{from:?} -> {step:?} (on the way to {to:?}) failed: {source}; device now in {now:?}")]
    Transition {
        /// The state the arc started from.
        from: DeviceState,
        /// The arc's target.
        step: DeviceState,
        /// The state asked for.
        to: DeviceState,
        /// The server's answer.
        source: connection::Error,
        /// The state read back after the failure.
        now: Option<DeviceState>,
    },
    /// A reply named another state than the one set (or than the one expected after a
    /// reset).
    #[error("the server reports state {reported:?} after setting {expected:?}")]
    WrongState {
        /// The state set.
        expected: DeviceState,
        /// The raw state the reply carries.
        reported: u32,
    },
    /// A reply carried a value that is no migration state.
    #[error("the server reports unknown migration state {0}")]
    UnknownState(u32),
    /// A request failed on the connection or was refused by the server.
    #[error("{command}{}: {source}", feature_text(*feature))]
    Request {
        /// The request's command.
        command: Command,
        /// The DEVICE_FEATURE feature index, for DEVICE_FEATURE.
        feature: Option<u32>,
        /// What went wrong.
        source: connection::Error,
    },
    /// A reply was malformed (too short, or not an answer to the request).
    #[error("bad {command} reply: {what}")]
    BadReply {
        /// The request's command.
        command: Command,
        /// What was wrong.
        what: String,
    },
    /// A MIG_DATA_READ reply carries more bytes than were asked for.
    #[error("MIG_DATA_READ returned {got} bytes; {asked} were asked for")]
    DataOversized {
        /// Bytes asked for.
        asked: u32,
        /// The reply's `size`.
        got: u32,
    },
    /// A MIG_DATA_READ reply is shorter than its own `size` says.
    #[error("MIG_DATA_READ reply claims {size} bytes but carries {present}")]
    DataTruncated {
        /// The reply's `size`.
        size: u32,
        /// Data bytes present.
        present: usize,
    },
    /// The device data stream cannot be used in this state (reading wants PRE_COPY or
    /// STOP_COPY, writing RESUMING); nothing was sent.
    #[error("cannot {op} device data in state {state:?}")]
    DataState {
        /// "read" or "write".
        op: &'static str,
        /// The device's state.
        state: DeviceState,
    },
    /// A DMA_LOGGING_REPORT reply's bitmap has the wrong size.
    #[error("DMA_LOGGING_REPORT of {length:#x} bytes at {iova:#x}: bitmap of {got} bytes, {expected} expected")]
    BitmapSize {
        /// Start of the range asked for.
        iova: u64,
        /// Length of the range.
        length: u64,
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// Dirty logging was asked to report or stop while not started (or started twice).
    #[error("DMA dirty logging is {}", if *.0 { "already on" } else { "off" })]
    LoggingState(bool),
    /// The device must be reset to leave ERROR, and it does not support DEVICE_RESET.
    #[error("the device is in ERROR and cannot be reset")]
    ResetNotSupported,
    /// DEVICE_RESET (to leave ERROR) failed.
    #[error("leaving ERROR: {0}")]
    Reset(device::Error),
}

fn feature_text(feature: Option<u32>) -> String {
    feature.map_or_else(String::new, |f| format!(" of feature {f}"))
}

impl Error {
    fn connection_error(&self) -> Option<&connection::Error> {
        match self {
            Error::NoMigrationFeature(e)
            | Error::LoggingUnsupported(e)
            | Error::Transition { source: e, .. }
            | Error::Request { source: e, .. } => Some(e),
            Error::Reset(e) => e.connection_error(),
            _ => None,
        }
    }

    /// Whether this error means the device cannot migrate at all (a migration blocker):
    /// [`Error::NotNegotiated`], [`Error::NoMigrationFeature`] or [`Error::NoStopCopy`].
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Error::NotNegotiated | Error::NoMigrationFeature(_) | Error::NoStopCopy { .. }
        )
    }
}

impl ConnectionCause for Error {
    fn connection_errors(&self) -> impl Iterator<Item = &connection::Error> {
        iter_causes((self.connection_error(), &[]))
    }
}
