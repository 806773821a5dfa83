// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Saving and restoring a [`VfioUserPciDevice`]: its [`PciState`] and the device data
//! stream (migration v2) in one small versioned container. The container's layout is
//! documented on [`VfioUserPciDevice::SNAPSHOT_VERSION`], the order a VMM follows on
//! [`VfioUserPciDevice::save`].

use std::io::{self, Read, Write};

use super::{Error, PciState, VfioUserPciDevice};
use crate::migration::{self, DeviceState, Migration};

const SNAPSHOT_MAGIC: [u8; 8] = VfioUserPciDevice::SNAPSHOT_MAGIC;
const SNAPSHOT_VERSION: u32 = VfioUserPciDevice::SNAPSHOT_VERSION;
const MAX_STATE_LEN: u32 = VfioUserPciDevice::SNAPSHOT_MAX_STATE_LEN;
const MAX_CHUNK_LEN: u32 = VfioUserPciDevice::SNAPSHOT_MAX_CHUNK_LEN;

impl VfioUserPciDevice {
    /// The first 8 bytes of a saved device ([`save`](Self::save)).
    pub const SNAPSHOT_MAGIC: [u8; 8] = *b"VUPCISNP";

    /// The version of the container [`save`](Self::save) writes, and the only one
    /// [`restore`](Self::restore) reads.
    ///
    /// The container (version 1, little-endian):
    ///
    /// | field | bytes |
    /// |---|---|
    /// | magic [`SNAPSHOT_MAGIC`](VfioUserPciDevice::SNAPSHOT_MAGIC) | 8 |
    /// | version [`SNAPSHOT_VERSION`](VfioUserPciDevice::SNAPSHOT_VERSION) | 4 |
    /// | flags (0) | 4 |
    /// | length of the PCI state, at most [`SNAPSHOT_MAX_STATE_LEN`](VfioUserPciDevice::SNAPSHOT_MAX_STATE_LEN) | 4 |
    /// | the [`PciState`] as JSON | length |
    /// | device data: chunks of a length (1 to [`SNAPSHOT_MAX_CHUNK_LEN`](VfioUserPciDevice::SNAPSHOT_MAX_CHUNK_LEN), 4 bytes) and its bytes, then a length of 0 | |
    /// | total device data bytes | 8 |
    ///
    /// Reading never allocates more than one bounded piece at a time, stops at the end of
    /// the container (what follows in the reader is the VMM's), and reports what is wrong
    /// as an [`Error`]: a wrong magic, version or flags, a length over its
    /// bound, a truncated container, a PCI state that does not parse or fit the device.
    pub const SNAPSHOT_VERSION: u32 = 1;

    /// The largest PCI state a container may hold (its JSON).
    pub const SNAPSHOT_MAX_STATE_LEN: u32 = 1 << 20;

    /// The largest chunk of device data a container may hold.
    pub const SNAPSHOT_MAX_CHUNK_LEN: u32 = 1 << 20;
}

/// The chunk size used when saving: reads of at least the migration layer's chunk (the
/// negotiated `max_data_xfer_size`, 1 MiB by default) receive it in place, without
/// staging.
const SAVE_CHUNK: usize = MAX_CHUNK_LEN as usize;

/// A failure of the snapshot stream (the VMM's `Write` when saving, `Read` when restoring).
fn stream_error(source: io::Error) -> Error {
    Error::Io {
        what: "the snapshot stream",
        source,
    }
}

/// The migration error inside an error of a [`migration::DataReader`] or
/// [`migration::DataWriter`], or the I/O error itself.
fn data_error(e: io::Error) -> Error {
    if migration::Error::from_io(&e).is_none() {
        return stream_error(e);
    }
    match e
        .into_inner()
        .map(|inner| inner.downcast::<migration::Error>())
    {
        Some(Ok(e)) => Error::Migration(*e),
        Some(Err(other)) => stream_error(io::Error::other(other)),
        None => stream_error(io::Error::other("device data stream failed")),
    }
}

/// An error of reading `what`: the end of the input is [`Error::SnapshotTruncated`].
fn read_error(what: &'static str) -> impl Fn(io::Error) -> Error {
    move |e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::SnapshotTruncated { what },
        _ => stream_error(e),
    }
}

fn read_array<const N: usize>(input: &mut impl Read, what: &'static str) -> Result<[u8; N], Error> {
    let mut b = [0u8; N];
    input.read_exact(&mut b).map_err(read_error(what))?;
    Ok(b)
}

fn read_u32(input: &mut impl Read, what: &'static str) -> Result<u32, Error> {
    read_array(input, what).map(u32::from_le_bytes)
}

/// A length of `what` read from `input`, refused over `max`.
fn read_len(input: &mut impl Read, what: &'static str, max: u32) -> Result<u32, Error> {
    let len = read_u32(input, what)?;
    if len > max {
        return Err(Error::SnapshotTooLong {
            what,
            len: u64::from(len),
            max: u64::from(max),
        });
    }
    Ok(len)
}

/// Writes the container's head: magic, version, flags and the PCI state.
pub(crate) fn write_head(out: &mut impl Write, state: &PciState) -> Result<(), Error> {
    let json = serde_json::to_vec(state).map_err(Error::SnapshotState)?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&l| l <= MAX_STATE_LEN)
        .ok_or(Error::SnapshotTooLong {
            what: "PCI state",
            len: json.len() as u64,
            max: u64::from(MAX_STATE_LEN),
        })?;
    let mut head = Vec::with_capacity(20 + json.len());
    head.extend_from_slice(&SNAPSHOT_MAGIC);
    head.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&len.to_le_bytes());
    head.extend_from_slice(&json);
    out.write_all(&head).map_err(stream_error)
}

/// Reads the container's head and returns its PCI state (its version checked).
pub(crate) fn read_head(input: &mut impl Read) -> Result<PciState, Error> {
    let magic: [u8; 8] = read_array(input, "magic")?;
    if magic != SNAPSHOT_MAGIC {
        return Err(Error::SnapshotMagic(magic));
    }
    let version = read_u32(input, "version")?;
    if version != SNAPSHOT_VERSION {
        return Err(Error::SnapshotVersion {
            found: version,
            supported: SNAPSHOT_VERSION,
        });
    }
    let flags = read_u32(input, "flags")?;
    if flags != 0 {
        return Err(Error::SnapshotFlags(flags));
    }
    let len = read_len(input, "PCI state", MAX_STATE_LEN)?;
    let mut json = vec![0u8; len as usize];
    input
        .read_exact(&mut json)
        .map_err(read_error("PCI state"))?;
    let state: PciState = serde_json::from_slice(&json).map_err(Error::SnapshotState)?;
    if state.version() != PciState::VERSION {
        return Err(Error::StateVersion {
            found: state.version(),
            supported: PciState::VERSION,
        });
    }
    Ok(state)
}

/// Copies the device data from `data` to `out` as chunks, the end mark and the trailer;
/// returns the bytes copied.
pub(crate) fn save_data(data: &mut impl Read, out: &mut impl Write) -> Result<u64, Error> {
    let mut buf = vec![0u8; SAVE_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match data.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(data_error(e)),
        };
        // `n` is at most SAVE_CHUNK, which is MAX_CHUNK_LEN.
        let len = u32::try_from(n).unwrap_or(u32::MAX);
        out.write_all(&len.to_le_bytes()).map_err(stream_error)?;
        if n == 0 {
            break;
        }
        out.write_all(buf.get(..n).unwrap_or_default())
            .map_err(stream_error)?;
        total += n as u64;
    }
    out.write_all(&total.to_le_bytes()).map_err(stream_error)?;
    out.flush().map_err(stream_error)?;
    Ok(total)
}

/// Copies the device data chunks of `input` into `data` and checks the trailer; returns the
/// bytes copied.
pub(crate) fn load_data(input: &mut impl Read, data: &mut impl Write) -> Result<u64, Error> {
    let mut buf = Vec::new();
    let mut total = 0u64;
    loop {
        let len = read_len(input, "device data chunk length", MAX_CHUNK_LEN)? as usize;
        if len == 0 {
            break;
        }
        buf.resize(len, 0);
        input
            .read_exact(&mut buf)
            .map_err(read_error("device data"))?;
        data.write_all(&buf).map_err(data_error)?;
        total += len as u64;
    }
    let declared = u64::from_le_bytes(read_array(input, "trailer")?);
    if declared != total {
        return Err(Error::SnapshotDataLength {
            declared,
            found: total,
        });
    }
    Ok(total)
}

impl VfioUserPciDevice {
    /// Refuses a [`Migration`] handle of another device.
    fn check_handle(&self, migration: &Migration<'_>) -> Result<(), Error> {
        let ours = self.device();
        if std::ptr::eq(migration.device(), &*ours) {
            Ok(())
        } else {
            Err(Error::ForeignMigration)
        }
    }

    /// Starts DMA dirty logging of `migration` (a handle on this device,
    /// `Migration::new(&device.device())`) over the device's own guest memory mapper: the
    /// server logs the pages it writes through its mappings, the mapper the pages it
    /// writes for the server (DMA_WRITE). [`Migration::dirty_report`] then returns both;
    /// [`Migration::stop_dirty_logging`] ends it. Windows mapped later (guest memory
    /// hot-plug) are not logged: stop and start again.
    ///
    /// [`Error::NoGuestMemory`] without guest memory,
    /// [`migration::Error::LoggingUnsupported`] from a server without DMA logging.
    pub fn start_dirty_logging(&self, migration: &mut Migration<'_>) -> Result<(), Error> {
        self.check_handle(migration)?;
        let (windows, log) = {
            let core = self.core();
            let dma = core.dma.as_ref().ok_or(Error::NoGuestMemory)?;
            (dma.mappings(), dma.dirty_log())
        };
        Ok(migration.start_dirty_logging_over(&windows, log)?)
    }

    /// Saves the device to `out`: its [`PciState`] and its device data. The device goes to
    /// STOP_COPY, and is left in STOP; stop the vCPUs first. Returns the device data bytes
    /// saved.
    ///
    /// A device that cannot migrate is an error whose [`Error::is_unsupported`] is true,
    /// with nothing written to `out`.
    ///
    /// # The order a VMM follows
    ///
    /// A snapshot, or the stop of a migration:
    ///
    /// 1. On the source, stop the vCPUs, then `save`: the device goes to STOP_COPY, the
    ///    PCI state is captured, the device data read to its end, and the device is left
    ///    in STOP. Save the vCPUs and guest memory after it (a stopped device writes no
    ///    more guest memory). To keep the VM on the source after all, take the device back
    ///    to RUNNING with a [`Migration`] and resume the vCPUs.
    /// 2. On the destination, attach the device to the new server with the VM's guest
    ///    memory (in place before the device runs; the DMA mappings are made at attach),
    ///    then [`restore`](VfioUserPciDevice::restore): RESUMING, the device data loaded,
    ///    the PCI state restored (the BARs re-placed, every interrupt eventfd re-armed,
    ///    managed slots and doorbells installed), then RUNNING. Move the VMM's BAR windows
    ///    to [`PciConfig::bars`], restore the vCPUs and resume them.
    /// 3. Detach (or drop) the source device; it stays stopped and never runs again. A
    ///    stopped device refuses SET_IRQS and DMA_UNMAP (libvfio-user's rule), so
    ///    [`detach`](VfioUserPciDevice::detach) of a saved device undoes only the VMM's
    ///    side (the [`InterruptProvider::disable`] of the interrupts wired, managed slots)
    ///    and closes the connection: the server drops its eventfds and DMA mappings then.
    ///    [`reset`](VfioUserPciDevice::reset) of a saved device is [`Error::Saved`]: it
    ///    would run the device again.
    ///
    /// A live migration keeps a [`Migration`] handle on each side
    /// (`Migration::new(&device.device())`) for the pre-copy rounds while the guest runs:
    /// the destination in RESUMING takes each round's device data; dirty logging over the
    /// device's own mapper ([`VfioUserPciDevice::start_dirty_logging`]) says which guest
    /// pages to copy again. The stop is then [`save_with`](VfioUserPciDevice::save_with)
    /// and [`restore_with`](VfioUserPciDevice::restore_with) on those handles, with a last
    /// dirty report in between. `examples/vmm` (`--migrate`) does all of it.
    ///
    /// A device that cannot migrate answers an error whose [`Error::is_unsupported`] is
    /// true (a [`migration::Error`] through [`Error::Migration`]) before anything is
    /// written: a VMM turns it into a migration blocker.
    ///
    /// [`PciConfig::bars`]: super::PciConfig::bars
    /// [`InterruptProvider::disable`]: super::InterruptProvider::disable
    /// [`Error::Saved`]: super::Error::Saved
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use vfio_user_client::pci::{InterruptKind, InterruptProvider};
    /// # use vfio_user_client::{AttachOptions, VfioUserPciDevice};
    /// # use vfio_user_sample_server::{GpioDevice, MigrationConfig, Server, ServerConfig};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # use vmm_sys_util::eventfd::EventFd;
    /// # struct NoInterrupts;
    /// # impl InterruptProvider for NoInterrupts {
    /// #     fn eventfd(&self, _: InterruptKind, _: u32) -> Option<Arc<EventFd>> {
    /// #         None
    /// #     }
    /// # }
    /// # let config = ServerConfig {
    /// #     migration: Some(MigrationConfig::default()),
    /// #     ..ServerConfig::default()
    /// # };
    /// # let (a, _) = GpioDevice::new(Default::default())?;
    /// # let (b, _) = GpioDevice::new(Default::default())?;
    /// # let server_a = Server::new(config.clone(), Box::new(a)).listen_temp()?;
    /// # let server_b = Server::new(config, Box::new(b)).listen_temp()?;
    /// # let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?);
    /// # let socket_a = server_a.socket_path().ok_or("no socket")?;
    /// # let socket_b = server_b.socket_path().ok_or("no socket")?;
    /// # let irqs = Arc::new(NoInterrupts);
    /// # let options = AttachOptions::default();
    /// let source = VfioUserPciDevice::attach(socket_a, memory.clone(), irqs.clone(), &options)?;
    /// // ... the guest runs; then the VMM stops its vCPUs ...
    /// let mut saved = Vec::new();
    /// source.save(&mut saved)?;
    ///
    /// // The destination: the same device at another server, the same guest memory.
    /// let mut destination = VfioUserPciDevice::attach(socket_b, memory, irqs, &options)?;
    /// destination.restore(&saved[..])?;
    /// // ... the VMM moves its BAR windows and resumes its vCPUs ...
    /// source.detach()?; // stays stopped; the VMM's side is undone
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save(&self, out: impl Write) -> Result<u64, Error> {
        let device = self.device();
        let mut migration = Migration::new(&device)?;
        self.save_with(&mut migration, out)
    }

    /// [`save`](VfioUserPciDevice::save) through the VMM's own `migration` handle on this
    /// device (after pre-copy rounds, with dirty logging on: take the last
    /// [`Migration::dirty_report`] after this, the device being stopped).
    ///
    /// On an error the device may be left in STOP_COPY; `migration` can take it back to
    /// RUNNING.
    pub fn save_with(
        &self,
        migration: &mut Migration<'_>,
        mut out: impl Write,
    ) -> Result<u64, Error> {
        self.check_handle(migration)?;
        migration.set_state(DeviceState::StopCopy)?;
        // From here on the device refuses interrupt changes and unmaps: see `detach`.
        self.core().saved = true;
        // Captured once the device stopped: its emulated pending bits no longer change.
        let state = self.pci_state();
        write_head(&mut out, &state)?;
        let total = save_data(&mut migration.reader()?, &mut out)?;
        migration.set_state(DeviceState::Stop)?;
        log::debug!("saved the PCI state and {total} bytes of device data");
        Ok(total)
    }

    /// Restores the device from `input` (what [`save`](VfioUserPciDevice::save) wrote),
    /// on a device attached to a new server: RESUMING, the device data loaded, the
    /// [`PciState`] restored (see [`VfioUserPciDevice::restore_pci_state`]), then RUNNING.
    /// Returns the device data bytes loaded. Reads nothing past the container.
    ///
    /// The container's head and PCI state are checked (version, this device's identity)
    /// before anything is sent to the server. A failure later leaves the device in
    /// RESUMING (or ERROR) with part of the data: detach it.
    pub fn restore(&mut self, input: impl Read) -> Result<u64, Error> {
        let device = self.device();
        let mut migration = Migration::new(&device)?;
        self.restore_with(&mut migration, input)
    }

    /// [`restore`](VfioUserPciDevice::restore) through the VMM's own `migration` handle on
    /// this device (which may already be in RESUMING, with pre-copy data written).
    pub fn restore_with(
        &mut self,
        migration: &mut Migration<'_>,
        mut input: impl Read,
    ) -> Result<u64, Error> {
        self.check_handle(migration)?;
        let state = read_head(&mut input)?;
        self.core().identity.check(state.identity())?;
        if migration.state() != DeviceState::Resuming {
            migration.set_state(DeviceState::Resuming)?;
        }
        let total = load_data(&mut input, &mut migration.writer()?)?;
        self.restore_pci_state(&state)?;
        migration.set_state(DeviceState::Running)?;
        self.core().saved = false;
        log::debug!("restored the PCI state and {total} bytes of device data");
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_bad_trailers_are_caught() {
        let data: Vec<u8> = (0..(SAVE_CHUNK * 2 + 7)).map(|i| i as u8).collect();
        let mut saved = Vec::new();
        assert_eq!(
            save_data(&mut &data[..], &mut saved).unwrap(),
            data.len() as u64
        );
        let mut back = Vec::new();
        assert_eq!(
            load_data(&mut &saved[..], &mut back).unwrap(),
            data.len() as u64
        );
        assert_eq!(back, data);
        let mut bad = saved.clone();
        let at = bad.len() - 8;
        bad[at] ^= 1;
        assert!(matches!(
            load_data(&mut &bad[..], &mut Vec::new()),
            Err(Error::SnapshotDataLength { .. })
        ));
        for cut in [0, 3, 4, 100, saved.len() - 1] {
            assert!(
                matches!(
                    load_data(&mut &saved[..cut], &mut Vec::new()),
                    Err(Error::SnapshotTruncated { .. })
                ),
                "cut at {cut}"
            );
        }
        let over = (MAX_CHUNK_LEN + 1).to_le_bytes();
        assert!(matches!(
            load_data(&mut &over[..], &mut Vec::new()),
            Err(Error::SnapshotTooLong { .. })
        ));
    }

    #[test]
    fn heads_refuse_what_they_do_not_know() {
        let head = |magic: &[u8], version: u32, flags: u32, len: u32| {
            let mut b = magic.to_vec();
            b.extend_from_slice(&version.to_le_bytes());
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b
        };
        let r = |b: Vec<u8>| read_head(&mut &b[..]);
        assert!(matches!(
            r(head(b"VUPCISNQ", 1, 0, 0)),
            Err(Error::SnapshotMagic(_))
        ));
        assert!(matches!(
            r(head(&SNAPSHOT_MAGIC, 2, 0, 0)),
            Err(Error::SnapshotVersion { found: 2, .. })
        ));
        assert!(matches!(
            r(head(&SNAPSHOT_MAGIC, 1, 1, 0)),
            Err(Error::SnapshotFlags(1))
        ));
        assert!(matches!(
            r(head(&SNAPSHOT_MAGIC, 1, 0, u32::MAX)),
            Err(Error::SnapshotTooLong { .. })
        ));
        assert!(matches!(
            r(head(&SNAPSHOT_MAGIC, 1, 0, 10)),
            Err(Error::SnapshotTruncated { what: "PCI state" })
        ));
        let mut b = head(&SNAPSHOT_MAGIC, 1, 0, 2);
        b.extend_from_slice(b"{}");
        assert!(matches!(r(b), Err(Error::SnapshotState(_))));
        assert!(matches!(
            r(SNAPSHOT_MAGIC[..5].to_vec()),
            Err(Error::SnapshotTruncated { what: "magic" })
        ));
    }

    /// A `Read` that counts what was read of it.
    struct Counted<'a>(&'a [u8], usize);

    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }

    proptest::proptest! {
        /// Any bytes, and any damage to a good container: a typed error or a value, never a
        /// panic, and never a read past the container's end.
        #[test]
        fn hostile_containers_are_typed_errors(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            flip in proptest::num::usize::ANY,
            cut in proptest::num::usize::ANY,
        ) {
            let _ = read_head(&mut &noise[..]);
            let _ = load_data(&mut &noise[..], &mut Vec::new());
            let mut good = Vec::new();
            save_data(&mut &data[..], &mut good).unwrap();
            let mut bad = good.clone();
            let at = flip % bad.len();
            bad[at] ^= 0x41;
            let mut out = Vec::new();
            match load_data(&mut &bad[..], &mut out) {
                Ok(n) => proptest::prop_assert_eq!(n as usize, out.len()),
                Err(
                    Error::SnapshotTruncated { .. }
                    | Error::SnapshotTooLong { .. }
                    | Error::SnapshotDataLength { .. },
                ) => {}
                Err(e) => proptest::prop_assert!(false, "unexpected {e:?}"),
            }
            let cut = cut % good.len();
            let truncated = matches!(
                load_data(&mut &good[..cut], &mut Vec::new()),
                Err(Error::SnapshotTruncated { .. })
            );
            proptest::prop_assert!(truncated);
            // Followed by more bytes: exactly the container is read.
            let mut followed = good.clone();
            followed.extend_from_slice(&noise);
            let mut input = Counted(&followed, 0);
            let mut back = Vec::new();
            load_data(&mut input, &mut back).unwrap();
            proptest::prop_assert_eq!(back, data);
            proptest::prop_assert_eq!(input.1, good.len());
        }
    }
}
