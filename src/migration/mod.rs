// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Migration v2 over a [`VfioUserDevice`]: discovery, the device state machine, the device
//! data stream and DMA dirty logging.
//!
//! [`Migration::new`] asks the server for the `MIGRATION` feature. A server without it, or
//! a connection that did not negotiate the `migration` capability, is an error whose
//! [`Error::is_unsupported`] is true: the device cannot migrate, and a VMM should put a
//! migration blocker in place rather than lose the device's state.
//!
//! * **States.** [`Migration::set_state`] reaches any state the device's flags allow, one
//!   v2 arc at a time, as Linux's `vfio_mig_get_next_state` does. Unreachable targets are
//!   refused before anything is sent; each reply's state is checked; after a refused arc
//!   the state is read back. A device in ERROR is reset (DEVICE_RESET) back to RUNNING on
//!   the next `set_state`.
//! * **Data.** On the source, [`Migration::reader`] is the device data as [`std::io::Read`]
//!   (MIG_DATA_READ), in PRE_COPY and STOP_COPY; a read of 0 bytes ends a pre-copy round
//!   (the server has nothing more for now) or, in STOP_COPY, the stream. On the
//!   destination, [`Migration::writer`] is an [`std::io::Write`] (MIG_DATA_WRITE) in
//!   RESUMING. Errors come as [`std::io::Error`]s wrapping an [`Error`]
//!   ([`Error::from_io`] finds it).
//! * **Dirty logging.** [`Migration::start_dirty_logging`] starts DMA logging over the
//!   windows of a [`DmaMapper`] and turns on the mapper's [`DirtyLog`] (the pages the
//!   client writes for the server's DMA_WRITE); [`Migration::dirty_report`] returns and
//!   clears what both recorded, as a [`DirtyBitmap`].
//!
//! A source VMM: `set_state(PreCopy)` (when offered) with logging started, rounds of
//! `reader()` and dirty reports while the guest runs; then stop the vCPUs,
//! `set_state(StopCopy)`, read to the end, a last dirty report, `stop_dirty_logging`. A
//! destination VMM: `set_state(Resuming)`, copy the stream into `writer()`,
//! `set_state(Running)`.
//!
//! ```
//! use std::io::{Read, Write};
//!
//! use vfio_user_client::migration::{DeviceState, Migration};
//! use vfio_user_client::VfioUserDevice;
//!
//! /// Moves the device state of `source` into `destination` (both attached, the destination
//! /// to a fresh server). The VMM stops its vCPUs between the pre-copy and STOP_COPY.
//! fn migrate(
//!     source: &VfioUserDevice,
//!     destination: &VfioUserDevice,
//! ) -> Result<u64, Box<dyn std::error::Error>> {
//!     // An error whose `is_unsupported()` is true here is a migration blocker.
//!     let mut out = Migration::new(source)?;
//!     let mut into = Migration::new(destination)?;
//!     into.set_state(DeviceState::Resuming)?;
//!     let mut stream = Vec::new();
//!     if out.can_reach(DeviceState::PreCopy) {
//!         out.set_state(DeviceState::PreCopy)?;
//!         // One round; a VMM repeats while the guest runs.
//!         out.reader()?.read_to_end(&mut stream)?;
//!     }
//!     // ... stop the vCPUs ...
//!     out.set_state(DeviceState::StopCopy)?;
//!     out.reader()?.read_to_end(&mut stream)?;
//!     out.set_state(DeviceState::Stop)?;
//!     into.writer()?.write_all(&stream)?;
//!     into.set_state(DeviceState::Running)?;
//!     Ok(out.bytes_read())
//! }
//! #
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #     use vfio_user_client::{ConnectOptions, DeviceOptions};
//! #     use vfio_user_sample_server::{GpioDevice, MigrationConfig, Server, ServerConfig};
//! #     let config = ServerConfig {
//! #         migration: Some(MigrationConfig::default()),
//! #         ..ServerConfig::default()
//! #     };
//! #     let attach = || -> Result<_, Box<dyn std::error::Error>> {
//! #         let (gpio, _) = GpioDevice::new(Default::default())?;
//! #         let server = Server::new(config.clone(), Box::new(gpio)).listen_temp()?;
//! #         let path = server.socket_path().ok_or("no socket")?.to_owned();
//! #         let (conn, dev) = (ConnectOptions::default(), DeviceOptions::default());
//! #         let dev = VfioUserDevice::connect(&path, &conn, &dev)?;
//! #         Ok((dev, server))
//! #     };
//! #     let ((a, _sa), (b, _sb)) = (attach()?, attach()?);
//! #     assert!(migrate(&a, &b)? > 0);
//! #     Ok(())
//! # }
//! ```
//!
//! [`DmaMapper`]: crate::DmaMapper
//! [`DirtyLog`]: crate::dma::DirtyLog

mod arcs;
mod data;
mod error;
mod logging;
mod offered;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    VFIO_DEVICE_FEATURE_PROBE, VFIO_MIGRATION_STOP_COPY,
};

use crate::connection;
use crate::device::VfioUserDevice;
use crate::protocol::{Command, DeviceFeature, MigDeviceState, MigrationFeature};
use crate::ConnectionCause;

pub use crate::protocol::DeviceState;
pub use data::{DataReader, DataWriter};
pub use error::Error;
#[cfg(feature = "fuzzing")]
pub(crate) use logging::take_report;
pub use logging::{DirtyBitmap, DirtyRange};

use logging::Logging;

/// `argsz` of the MIGRATION probe: 16 bytes of payload, and its low half a message id with
/// the no-reply bit set, which no request of ours waits for. A server that does not know
/// DEVICE_FEATURE and answers without reading the body (the crates.io `vfio_user` server)
/// then reads the payload as a header of command 0, answers it with an error under that
/// id, which the connection drops, and stays in step.
const PROBE_ARGSZ: u32 = 0x8010;

/// The migration side of a device: one per device, borrowed from its [`VfioUserDevice`].
///
/// It remembers the device's state between calls; nothing else should change it meanwhile.
#[derive(Debug)]
pub struct Migration<'d> {
    device: &'d VfioUserDevice,
    /// `VFIO_MIGRATION_*`.
    flags: u64,
    state: DeviceState,
    read_chunk: u32,
    write_chunk: u32,
    /// Data of a MIG_DATA_READ not yet returned (from `staged_at`), for reads smaller than
    /// a chunk.
    staged: Vec<u8>,
    staged_at: usize,
    /// A MIG_DATA_READ sent before the caller asked (while the server fills whole chunks).
    ahead: Option<connection::PendingReply>,
    /// The last MIG_DATA_READ was a whole chunk: read ahead.
    streaming: bool,
    /// The error of a MIG_DATA_READ sent ahead, for the next read.
    read_error: Option<Error>,
    bytes_read: u64,
    bytes_written: u64,
    logging: Option<Logging>,
}

impl<'d> Migration<'d> {
    /// Discovers the device's migration support: DEVICE_FEATURE PROBE then GET of
    /// `MIGRATION`, then GET of `MIG_DEVICE_STATE`.
    ///
    /// [`Error::NotNegotiated`] when the connection did not negotiate the `migration`
    /// capability (nothing is sent), [`Error::NoMigrationFeature`] when the server refuses
    /// the feature, [`Error::NoStopCopy`] when the flags lack STOP_COPY
    /// ([`Error::is_unsupported`] for all three).
    pub fn new(device: &'d VfioUserDevice) -> Result<Migration<'d>, Error> {
        let conn = device.connection();
        if conn.capabilities().migration.is_none() {
            return Err(Error::NotNegotiated);
        }
        let mut probe = Vec::with_capacity(16);
        DeviceFeature {
            argsz: PROBE_ARGSZ,
            flags: VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_MIGRATION,
            data: vec![0; 8],
        }
        .encode_into(&mut probe);
        feature_reply(device, VFIO_DEVICE_FEATURE_MIGRATION, &probe).map_err(unsupported)?;
        let reply = feature(
            device,
            VFIO_DEVICE_FEATURE_MIGRATION,
            VFIO_DEVICE_FEATURE_GET,
            Vec::new(),
            8,
        )
        .map_err(unsupported)?;
        let flags = MigrationFeature::decode(&reply.data)
            .map_err(|e| bad_feature(e.to_string()))?
            .flags;
        if flags & u64::from(VFIO_MIGRATION_STOP_COPY) == 0 {
            return Err(Error::NoStopCopy { flags });
        }
        let (read_chunk, write_chunk) = data::chunks(conn);
        let mut migration = Migration {
            device,
            flags,
            state: DeviceState::Error,
            read_chunk,
            write_chunk,
            staged: Vec::new(),
            staged_at: 0,
            ahead: None,
            streaming: false,
            read_error: None,
            bytes_read: 0,
            bytes_written: 0,
            logging: None,
        };
        migration.read_state()?;
        log::debug!(
            "migration: flags {:#x}, state {:?}, chunks {read_chunk}/{write_chunk}",
            flags,
            migration.state
        );
        Ok(migration)
    }

    /// The device.
    pub fn device(&self) -> &'d VfioUserDevice {
        self.device
    }

    /// The device's migration flags: `VFIO_MIGRATION_*` of `vfio_bindings::bindings::vfio`,
    /// STOP_COPY always among them. Whether the device has PRE_COPY or the P2P states is
    /// also [`Migration::can_reach`] from RUNNING.
    pub fn flags(&self) -> u64 {
        self.flags
    }

    /// The state the device was last seen in.
    pub fn state(&self) -> DeviceState {
        self.state
    }

    /// Device data bytes received (MIG_DATA_READ) so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Device data bytes written (MIG_DATA_WRITE) so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Asks the server for the device's state (GET MIG_DEVICE_STATE) and remembers it.
    pub fn read_state(&mut self) -> Result<DeviceState, Error> {
        let reply = feature(
            self.device,
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            VFIO_DEVICE_FEATURE_GET,
            Vec::new(),
            8,
        )?;
        let raw = MigDeviceState::decode(&reply.data)
            .map_err(|e| bad_feature(e.to_string()))?
            .device_state;
        let state = DeviceState::from_u32(raw).ok_or(Error::UnknownState(raw))?;
        self.state = state;
        Ok(state)
    }

    /// Whether `target` can be reached from the current state with the device's flags.
    pub fn can_reach(&self, target: DeviceState) -> bool {
        self.state == DeviceState::Error && arcs::supported(target, self.flags)
            || arcs::path(self.state, target, self.flags).is_some()
    }

    /// Takes the device to `target`, one arc at a time.
    ///
    /// [`Error::Unreachable`] (nothing sent) when the flags do not allow it; from ERROR the
    /// device is first reset to RUNNING. A refused arc is [`Error::Transition`], with the
    /// state read back; a reply naming another state is [`Error::WrongState`].
    pub fn set_state(&mut self, target: DeviceState) -> Result<(), Error> {
        self.settle_reads();
        let flags = self.flags;
        let unreachable = |from| Error::Unreachable {
            from,
            to: target,
            flags,
        };
        if self.state == DeviceState::Error {
            if !arcs::supported(target, self.flags) {
                return Err(unreachable(self.state));
            }
            self.leave_error()?;
        }
        let steps =
            arcs::path(self.state, target, self.flags).ok_or_else(|| unreachable(self.state))?;
        for step in steps {
            self.arc(step, target)?;
        }
        Ok(())
    }

    /// One arc: SET MIG_DEVICE_STATE `step`, its reply checked.
    fn arc(&mut self, step: DeviceState, target: DeviceState) -> Result<(), Error> {
        let from = self.state;
        let request = DeviceFeature::set_mig_device_state(step as u32);
        let reply = send_feature(self.device, &request);
        let echoed = reply.and_then(|reply| {
            MigDeviceState::decode(&reply.data)
                .map(|d| d.device_state)
                .map_err(|e| bad_feature(e.to_string()))
        });
        let echoed = match echoed {
            Ok(echoed) => echoed,
            Err(e) if e.is_disconnected() => return Err(e),
            Err(e) => {
                // Whatever went wrong, ask where the device is.
                let now = self.read_state().ok();
                log::warn!("migration: {from:?} -> {step:?} failed ({e}); now {now:?}");
                return Err(match e {
                    Error::Request { source, .. } => Error::Transition {
                        from,
                        step,
                        to: target,
                        source,
                        now,
                    },
                    e => e,
                });
            }
        };
        if echoed != step as u32 {
            // Whatever the reply says, ask where the device is.
            let _ = self.read_state();
            return Err(Error::WrongState {
                expected: step,
                reported: echoed,
            });
        }
        self.state = step;
        Ok(())
    }

    /// DEVICE_RESET, which takes a device out of ERROR to RUNNING.
    fn leave_error(&mut self) -> Result<(), Error> {
        if !self.device.resettable() {
            return Err(Error::ResetNotSupported);
        }
        self.device.reset().map_err(Error::Reset)?;
        let state = self.read_state()?;
        if state != DeviceState::Running {
            return Err(Error::WrongState {
                expected: DeviceState::Running,
                reported: state as u32,
            });
        }
        Ok(())
    }
}

fn unsupported(e: Error) -> Error {
    match e {
        Error::Request {
            source: source @ connection::Error::Server { .. },
            ..
        } => Error::NoMigrationFeature(source),
        e => e,
    }
}

fn bad_feature(what: String) -> Error {
    Error::BadReply {
        command: Command::DeviceFeature,
        what,
    }
}

/// A DEVICE_FEATURE request for `feature` with `op` and `data`, accepting `reply_data` bytes
/// of feature data; the reply must name the same feature.
fn feature(
    device: &VfioUserDevice,
    feature: u32,
    op: u32,
    data: Vec<u8>,
    reply_data: usize,
) -> Result<DeviceFeature, Error> {
    send_feature(device, &DeviceFeature::new(feature, op, data, reply_data))
}

/// Sends `request`; the reply must name the same feature.
fn send_feature(device: &VfioUserDevice, request: &DeviceFeature) -> Result<DeviceFeature, Error> {
    let mut payload = Vec::with_capacity(DeviceFeature::HEAD_SIZE + request.data.len());
    request.encode_into(&mut payload);
    feature_reply(device, request.feature(), &payload)
}

fn feature_reply(
    device: &VfioUserDevice,
    feature: u32,
    payload: &[u8],
) -> Result<DeviceFeature, Error> {
    let reply = device
        .connection()
        .request(Command::DeviceFeature, payload, &[])
        .map_err(|source| Error::Request {
            command: Command::DeviceFeature,
            feature: Some(feature),
            source,
        })?;
    let reply = DeviceFeature::decode(&reply.payload).map_err(|e| bad_feature(e.to_string()))?;
    if reply.feature() != feature {
        return Err(bad_feature(format!(
            "reply names feature {}, not {feature}",
            reply.feature()
        )));
    }
    Ok(reply)
}
