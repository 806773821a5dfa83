// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's migration support as `info` shows it: the migration flags (DEVICE_FEATURE
//! MIGRATION), the device state, and whether DMA dirty logging is offered (DEVICE_FEATURE
//! PROBE of DMA_LOGGING_START and _REPORT), or why the device cannot migrate.

use serde::Serialize;
use vfio_bindings::bindings::vfio::{
    VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY,
};
use vfio_user_client::migration::{DeviceState, Error, Migration};
use vfio_user_client::{ConnectionCause, VfioUserDevice};

use crate::error::errno_text;
use crate::pci::size_text;

/// The migration flags by name, in the order `info` shows them.
pub const FLAG_NAMES: [(u64, &str); 3] = [
    (VFIO_MIGRATION_STOP_COPY as u64, "STOP_COPY"),
    (VFIO_MIGRATION_P2P as u64, "P2P"),
    (VFIO_MIGRATION_PRE_COPY as u64, "PRE_COPY"),
];

/// The uAPI name of a device state (`RUNNING`, `STOP_COPY`, ...).
pub fn state_name(state: DeviceState) -> &'static str {
    match state {
        DeviceState::Error => "ERROR",
        DeviceState::Stop => "STOP",
        DeviceState::Running => "RUNNING",
        DeviceState::StopCopy => "STOP_COPY",
        DeviceState::Resuming => "RESUMING",
        DeviceState::RunningP2p => "RUNNING_P2P",
        DeviceState::PreCopy => "PRE_COPY",
        DeviceState::PreCopyP2p => "PRE_COPY_P2P",
    }
}

/// The name of a raw device state, or `state N` for a value that is none.
pub fn raw_state_name(raw: u32) -> String {
    DeviceState::from_u32(raw).map_or_else(|| format!("state {raw}"), |s| state_name(s).into())
}

/// `STOP_COPY+ P2P- PRE_COPY+`.
pub fn flags_text(flags: u64) -> String {
    let mut parts: Vec<String> = FLAG_NAMES
        .iter()
        .map(|(bit, name)| format!("{name}{}", if flags & bit != 0 { '+' } else { '-' }))
        .collect();
    let known = FLAG_NAMES.iter().fold(0, |a, (bit, _)| a | bit);
    if flags & !known != 0 {
        parts.push(format!("other {:#x}", flags & !known));
    }
    parts.join(" ")
}

/// Whether DMA dirty logging is offered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DmaLogging {
    /// The server accepts PROBE of DMA_LOGGING_START (SET) and DMA_LOGGING_REPORT (GET).
    Offered,
    /// The server refused the probe with an error reply.
    Unsupported {
        /// Why.
        reason: String,
    },
    /// The probe's reply broke the protocol (a failed section).
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// The device's migration support.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum MigrationReport {
    /// The device migrates (v2).
    Supported {
        /// The raw `VFIO_MIGRATION_*` flags.
        flags: u64,
        /// The names of the flags set (`STOP_COPY`, `P2P`, `PRE_COPY`).
        flag_names: Vec<&'static str>,
        /// The device state (`RUNNING`, ...).
        state: &'static str,
        /// DMA dirty logging.
        dma_logging: DmaLogging,
    },
    /// The device cannot migrate: what a VMM turns into a migration blocker (not a failure).
    Unsupported {
        /// Why.
        reason: String,
    },
    /// Discovery hit an error reply or a protocol violation (a failed section).
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// Why `info` could not complete the section.
#[derive(Debug)]
pub(crate) enum Trouble {
    /// The server went away or stopped answering.
    Lost(String),
    /// A protocol violation or an unexpected error reply: the failed section and why.
    Failed(&'static str, String),
}

/// The section names.
pub(crate) const SECTION: &str = "migration";
/// The section of the DMA logging probe.
pub(crate) const LOGGING_SECTION: &str = "DMA dirty logging";

fn lost(e: &Error) -> bool {
    e.connection_errors().any(crate::session::request_lost)
}

/// Why the device cannot migrate (`e.is_unsupported()`), in words.
fn unsupported_text(e: &Error) -> String {
    match e {
        Error::NotNegotiated => {
            "the server did not offer the migration capability in VERSION".into()
        }
        Error::NoMigrationFeature(e) => match e.server_errno() {
            Some(errno) => format!(
                "the server refused DEVICE_FEATURE MIGRATION: {}",
                errno_text(errno)
            ),
            None => format!("the server refused DEVICE_FEATURE MIGRATION: {e}"),
        },
        Error::NoStopCopy { flags } => {
            format!("the device's migration flags {flags:#x} lack STOP_COPY")
        }
        other => other.to_string(),
    }
}

/// Asks `device` for its migration support. The section, plus what went wrong, if anything:
/// a section the report then names as failed, or the server lost.
pub(crate) fn describe(device: &VfioUserDevice) -> (Option<MigrationReport>, Option<Trouble>) {
    let migration = match Migration::new(device) {
        Ok(m) => m,
        Err(e) if e.is_unsupported() => {
            let reason = unsupported_text(&e);
            return (Some(MigrationReport::Unsupported { reason }), None);
        }
        Err(e) if lost(&e) => return (None, Some(Trouble::Lost(e.to_string()))),
        Err(e) => {
            let reason = e.to_string();
            return (
                Some(MigrationReport::Failed {
                    reason: reason.clone(),
                }),
                Some(Trouble::Failed(SECTION, reason)),
            );
        }
    };
    let flags = migration.flags();
    let (dma_logging, trouble) = match migration.probe_dma_logging() {
        Ok(()) => (DmaLogging::Offered, None),
        Err(Error::LoggingUnsupported(e)) => {
            let reason = match e.server_errno() {
                Some(errno) => format!("server answered {}", errno_text(errno)),
                None => e.to_string(),
            };
            (DmaLogging::Unsupported { reason }, None)
        }
        Err(e) if lost(&e) => {
            let reason = e.to_string();
            (
                DmaLogging::Failed {
                    reason: reason.clone(),
                },
                Some(Trouble::Lost(reason)),
            )
        }
        Err(e) => {
            let reason = e.to_string();
            (
                DmaLogging::Failed {
                    reason: reason.clone(),
                },
                Some(Trouble::Failed(LOGGING_SECTION, reason)),
            )
        }
    };
    let report = MigrationReport::Supported {
        flags,
        flag_names: FLAG_NAMES
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, n)| *n)
            .collect(),
        state: state_name(migration.state()),
        dma_logging,
    };
    (Some(report), trouble)
}

impl MigrationReport {
    /// The section's lines in the text report; `max_bitmap_size` comes from the `migration`
    /// capability (its page size is shown with the capabilities).
    pub fn lines(&self, max_bitmap_size: Option<u64>) -> Vec<String> {
        match self {
            MigrationReport::Supported {
                flags,
                state,
                dma_logging,
                ..
            } => {
                let bitmap = max_bitmap_size
                    .map(|m| format!(", max_bitmap_size {}", size_text(m)))
                    .unwrap_or_default();
                vec![
                    format!(
                        "Migration: v2, {} (flags {flags:#x}), device state {state}",
                        flags_text(*flags)
                    ),
                    match dma_logging {
                        DmaLogging::Offered => format!(
                            "  DMA dirty logging: offered (DMA_LOGGING_START, DMA_LOGGING_REPORT{bitmap})"
                        ),
                        DmaLogging::Unsupported { reason } => {
                            format!("  DMA dirty logging: unsupported ({reason})")
                        }
                        DmaLogging::Failed { reason } => {
                            format!("  DMA dirty logging: not known ({reason})")
                        }
                    },
                ]
            }
            MigrationReport::Unsupported { reason } => {
                vec![format!("Migration: unsupported ({reason})")]
            }
            MigrationReport::Failed { reason } => {
                vec![format!("Migration: not known ({reason})")]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_states_by_name() {
        assert_eq!(flags_text(0x5), "STOP_COPY+ P2P- PRE_COPY+");
        assert_eq!(flags_text(0x3), "STOP_COPY+ P2P+ PRE_COPY-");
        assert_eq!(flags_text(0x11), "STOP_COPY+ P2P- PRE_COPY- other 0x10");
        assert_eq!(raw_state_name(3), "STOP_COPY");
        assert_eq!(raw_state_name(9), "state 9");
    }
}
