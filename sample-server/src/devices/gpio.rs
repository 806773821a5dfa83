// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A GPIO-like PCI device in the manner of libvfio-user's `gpio-pci-idio-16`, with extras
//! for client testing.

use std::io;
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::{
    vfio_region_sparse_mmap_area as SparseMmapArea, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::protocol::IoSubregion;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::conn::{lock, DeviceContext};
use crate::device::{
    Device, DeviceInfo, Errno, RegionIoFd, RegionMmap, RegionSpec, ResetReason, IRQ_ERR, IRQ_INTX,
    IRQ_MSI, IRQ_MSIX, IRQ_REQ, PCI_CONFIG_REGION, PCI_NUM_IRQS, PCI_NUM_REGIONS,
};
use crate::devices::state::{self, put_u32, put_u64, Fields, Writer, KIND_GPIO};
use crate::devices::{dwords, read_config, read_pba, read_regs};
use crate::memory::SharedMemory;
use crate::pci::ConfigSpace;

/// Configuration of a [`GpioDevice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpioConfig {
    /// Number of MSI-X vectors (default 4; SPDK's NVMe controller has 512).
    pub msix_vectors: u32,
    /// Size of the BAR1 scratch RAM (default 4 MiB).
    pub scratch_size: u64,
    /// DEVICE_GET_INFO reports `VFIO_DEVICE_FLAGS_RESET` and DEVICE_RESET works (default
    /// `true`); when `false` the flag is absent and DEVICE_RESET is answered `EINVAL`.
    pub resettable: bool,
    /// Message-based reads and writes of region `.0` fail with errno `.1` (0 included: an
    /// error reply whose `error_no` is 0) once they pass the server's validation; default
    /// `None`. Changeable later with [`GpioHandle::set_fail_region`].
    pub fail_region: Option<(u32, i32)>,
    /// BAR2 offers its `MAPPABLE_AREAS` for mmap (default `true`); when `false` every BAR2
    /// access is a message, so the device has no mappable region (clients may then post
    /// writes).
    pub mappable_bar2: bool,
}

impl Default for GpioConfig {
    fn default() -> Self {
        GpioConfig {
            msix_vectors: 4,
            scratch_size: 4 << 20,
            resettable: true,
            fail_region: None,
            mappable_bar2: true,
        }
    }
}

#[derive(Debug, Default)]
struct GpioState {
    input: u32,
    output: u32,
    sequence: u32,
    sequence_writes: u64,
    sequence_errors: u64,
    region_reads: u64,
    region_writes: u64,
    trapped_accesses: u64,
    resets: u64,
    last_reset: Option<ResetReason>,
    doorbells: u64,
    ioeventfd_signals: [u64; GpioDevice::IOEVENTFDS],
    fail_region: Option<(u32, i32)>,
    /// Counts BAR1 writes: the scratch RAM's version.
    scratch_generation: u64,
    /// The scratch version handed out as pre-copy data last.
    precopy_generation: Option<u64>,
}

impl GpioState {
    /// Takes the signals waiting on the ioeventfds and applies them as the writes they
    /// stand for.
    fn drain_ioeventfds(&mut self, fds: &[Arc<EventFd>]) {
        for (i, fd) in fds.iter().enumerate() {
            // EAGAIN (nothing signalled) is the only error a non-blocking eventfd read has.
            let Ok(n) = fd.read() else { continue };
            self.ioeventfd_signals[i] += n;
            match i {
                GpioDevice::IOEVENTFD_OUTPUT => self.output = GpioDevice::OUTPUT_DATAMATCH,
                GpioDevice::IOEVENTFD_DOORBELL => self.doorbells += n,
                _ => {}
            }
        }
    }
}

/// The device. Regions:
///
/// | Index | Size | BAR kind | Contents |
/// |---|---|---|---|
/// | 0 (BAR0) | 256 B | 32-bit memory | registers, see the `REG_*` constants; writes must be aligned dwords |
/// | 1 (BAR1) | 4 MiB | 32-bit memory | scratch RAM: any offset, any size |
/// | 2 (BAR2, with 3) | 64 KiB | 64-bit prefetchable memory | memfd RAM; `MAPPABLE_AREAS` are mmappable, the gap between them is trapped |
/// | 4 (BAR4) | [`GpioDevice::msix_bar_size`] | 32-bit memory | MSI-X table at 0, pending bit array at [`GpioDevice::msix_pba_offset`] |
/// | 6 | 2 KiB | expansion ROM | read-only image starting `55 aa` |
/// | 7 | 256 B | | PCI config space (vendor 0x494f, device 0x0dc8) |
///
/// Capabilities: power management, MSI (1 vector, 64-bit, per-vector mask), MSI-X
/// ([`GpioConfig::msix_vectors`] vectors; absent when 0, and BAR4 with it) and PCI Express;
/// interrupt pin INTA.
///
/// IRQs: INTx 1, MSI 1, MSI-X [`GpioConfig::msix_vectors`], ERR 1, REQ 1. Supports reset
/// (unless [`GpioConfig::resettable`] is off), which clears the registers (not the RAM).
/// The MSI-X table itself is the client's to emulate: BAR4 reads it as zeros and ignores
/// writes to it; the pending bit array, and MSI's pending bits register, show the vectors
/// raised while the client masked them.
///
/// DEVICE_GET_REGION_IO_FDS: BAR0 has two ioeventfds, in this order (the index of
/// [`GpioHandle::ioeventfd_signals`]):
///
/// | # | Offset | Size | Flags | Stands for |
/// |---|---|---|---|---|
/// | 0 | `REG_OUTPUT` | 4 | DATAMATCH [`GpioDevice::OUTPUT_DATAMATCH`] | writing that value to the output latch |
/// | 1 | `REG_DOORBELL` | 4 | none | one doorbell write |
///
/// BAR1, BAR2, BAR4 and config space answer with none (`count` 0, as libvfio-user answers for a
/// region without ioeventfds); absent regions are `EINVAL`. The device takes the signals
/// before each message-based access (and when the handle asks), so a signal and a later
/// REGION_READ through the socket are ordered only by that.
///
/// Migration (with [`ServerConfig::migration`](crate::ServerConfig::migration)): the data
/// is records as [`MigrationConfig`](crate::MigrationConfig) lays them out (device kind 1). Pre-copy data is the BAR1
/// scratch RAM (record 3: a generation count, then every byte); the state (STOP_COPY) is
/// the registers (record 1: input, output, sequence as u32, then sequence writes, sequence
/// errors and doorbells as u64), config space (record 2, 256 bytes), BAR2 (record 4,
/// 64 KiB) and the scratch RAM again, or only its generation (record 5) when no BAR1 write
/// came since the pre-copy record. Statistics (region accesses, resets) stay behind.
#[derive(Debug)]
pub struct GpioDevice {
    config: GpioConfig,
    pci: ConfigSpace,
    state: Arc<Mutex<GpioState>>,
    scratch: Arc<Mutex<Vec<u8>>>,
    mappable: Arc<SharedMemory>,
    ioeventfds: Vec<Arc<EventFd>>,
}

/// A test's handle on a [`GpioDevice`]'s state, usable while the server owns the device.
#[derive(Clone, Debug)]
pub struct GpioHandle {
    state: Arc<Mutex<GpioState>>,
    scratch: Arc<Mutex<Vec<u8>>>,
    mappable: Arc<SharedMemory>,
    ioeventfds: Vec<Arc<EventFd>>,
}

impl GpioDevice {
    /// PCI vendor id (as libvfio-user's idio-16 sample).
    pub const VENDOR_ID: u16 = 0x494f;
    /// PCI device id.
    pub const DEVICE_ID: u16 = 0x0dc8;
    /// Size of BAR0.
    pub const BAR0_SIZE: u64 = 256;
    /// Size of BAR2.
    pub const BAR2_SIZE: u64 = 64 << 10;
    /// The mmappable areas of BAR2; 0x4000..0x8000 between them is trapped.
    pub const MAPPABLE_AREAS: [SparseMmapArea; 2] = [
        SparseMmapArea {
            offset: 0,
            size: 0x4000,
        },
        SparseMmapArea {
            offset: 0x8000,
            size: 0x8000,
        },
    ];
    /// BAR0: input port (read-only; set with [`GpioHandle::set_input`]).
    pub const REG_INPUT: u64 = 0x00;
    /// BAR0: output latch (read/write).
    pub const REG_OUTPUT: u64 = 0x04;
    /// BAR0: sequence register; each write must be the previous value plus one (the first
    /// after a reset: 1). Reads return the last value written.
    pub const REG_SEQUENCE: u64 = 0x08;
    /// BAR0: number of writes to the sequence register (low 32 bits, read-only).
    pub const REG_SEQUENCE_WRITES: u64 = 0x0c;
    /// BAR0: number of sequence errors (low 32 bits, read-only).
    pub const REG_SEQUENCE_ERRORS: u64 = 0x10;
    /// BAR0: write `index << 16 | vector` to raise that interrupt (reads 0). INTx is not
    /// raised while the command register's Interrupt Disable bit is set.
    pub const REG_IRQ_RAISE: u64 = 0x14;
    /// BAR0: identification value [`GpioDevice::ID`] (read-only).
    pub const REG_ID: u64 = 0x18;
    /// Value of [`GpioDevice::REG_ID`].
    pub const ID: u32 = 0x4750_494f;
    /// BAR0: doorbell; every write counts one ring, whatever the value (also through its
    /// ioeventfd). Reads return the rings so far (low 32 bits).
    pub const REG_DOORBELL: u64 = 0x1c;
    /// Number of BAR0 ioeventfds.
    pub const IOEVENTFDS: usize = 2;
    /// Index of the `REG_OUTPUT` ioeventfd.
    pub const IOEVENTFD_OUTPUT: usize = 0;
    /// Index of the `REG_DOORBELL` ioeventfd.
    pub const IOEVENTFD_DOORBELL: usize = 1;
    /// The datamatch value of the `REG_OUTPUT` ioeventfd.
    pub const OUTPUT_DATAMATCH: u32 = 0xa5a5_0001;
    /// The BAR holding the MSI-X table and pending bit array.
    pub const MSIX_BAR: u32 = 4;
    /// Size of the expansion ROM (region 6).
    pub const ROM_SIZE: u64 = 2048;

    /// Offset of the MSI-X pending bit array in BAR4 for `vectors` vectors: after the
    /// table, 2 KiB aligned.
    pub fn msix_pba_offset(vectors: u32) -> u64 {
        (16 * u64::from(vectors)).max(1).next_multiple_of(0x800)
    }

    /// Size of BAR4 for `vectors` vectors (0: no BAR4).
    pub fn msix_bar_size(vectors: u32) -> u64 {
        if vectors == 0 {
            return 0;
        }
        let pba = u64::from(vectors).div_ceil(64) * 8;
        (Self::msix_pba_offset(vectors) + pba)
            .next_power_of_two()
            .max(4096)
    }

    /// The expansion ROM image.
    pub fn rom_image() -> Vec<u8> {
        let mut rom: Vec<u8> = (0..Self::ROM_SIZE).map(|i| (i * 7) as u8).collect();
        rom[0] = 0x55;
        rom[1] = 0xaa;
        rom[2] = (Self::ROM_SIZE / 512) as u8;
        rom
    }

    /// A device and the test handle on its state.
    pub fn new(config: GpioConfig) -> io::Result<(GpioDevice, GpioHandle)> {
        let mappable = Arc::new(SharedMemory::new("gpio-bar2", Self::BAR2_SIZE)?);
        let scratch_len = usize::try_from(config.scratch_size)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let scratch = Arc::new(Mutex::new(vec![0u8; scratch_len]));
        let state = Arc::new(Mutex::new(GpioState {
            fail_region: config.fail_region,
            ..GpioState::default()
        }));
        let ioeventfds = (0..Self::IOEVENTFDS)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        let mut pci = ConfigSpace::new(Self::VENDOR_ID, Self::DEVICE_ID, 0x08_80_00, 0)
            .with_bar(0, Self::BAR0_SIZE as u32)
            .with_bar(
                1,
                u32::try_from(config.scratch_size.next_power_of_two()).unwrap_or(1 << 31),
            )
            .with_bar64(2, Self::BAR2_SIZE, true)
            .with_rom(Self::ROM_SIZE as u32)
            .with_interrupt_pin(1)
            .with_pm()
            .with_msi(1, true, true);
        if config.msix_vectors > 0 {
            let vectors = config.msix_vectors.min(2048);
            pci = pci
                .with_bar(Self::MSIX_BAR as usize, Self::msix_bar_size(vectors) as u32)
                .with_msix(
                    vectors,
                    Self::MSIX_BAR as u8,
                    0,
                    Self::MSIX_BAR as u8,
                    Self::msix_pba_offset(vectors) as u32,
                );
        }
        let pci = pci.with_pcie();
        let handle = GpioHandle {
            state: state.clone(),
            scratch: scratch.clone(),
            mappable: mappable.clone(),
            ioeventfds: ioeventfds.clone(),
        };
        Ok((
            GpioDevice {
                config,
                pci,
                state,
                scratch,
                mappable,
                ioeventfds,
            },
            handle,
        ))
    }

    fn touches_gap(offset: u64, len: usize) -> bool {
        let end = offset + len as u64;
        let (gap_start, gap_end) = (
            Self::MAPPABLE_AREAS[0].offset + Self::MAPPABLE_AREAS[0].size,
            Self::MAPPABLE_AREAS[1].offset,
        );
        offset < gap_end && end > gap_start
    }
}

impl Device for GpioDevice {
    fn info(&self) -> DeviceInfo {
        let reset = if self.config.resettable {
            VFIO_DEVICE_FLAGS_RESET
        } else {
            0
        };
        DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_PCI | reset,
            num_regions: PCI_NUM_REGIONS,
            num_irqs: PCI_NUM_IRQS,
        }
    }

    fn region(&self, index: u32) -> Option<RegionSpec> {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        let spec = |size| RegionSpec {
            flags: rw,
            size,
            mmap: None,
        };
        match index {
            0 => Some(spec(Self::BAR0_SIZE)),
            1 => Some(spec(self.config.scratch_size)),
            2 => Some(RegionSpec {
                flags: rw,
                size: Self::BAR2_SIZE,
                mmap: self.config.mappable_bar2.then(|| RegionMmap {
                    memory: self.mappable.clone(),
                    offset: 0,
                    areas: Self::MAPPABLE_AREAS.to_vec(),
                }),
            }),
            Self::MSIX_BAR if self.config.msix_vectors > 0 => Some(spec(Self::msix_bar_size(
                self.config.msix_vectors.min(2048),
            ))),
            6 => Some(RegionSpec {
                flags: VFIO_REGION_INFO_FLAG_READ,
                size: Self::ROM_SIZE,
                mmap: None,
            }),
            PCI_CONFIG_REGION => Some(spec(ConfigSpace::SIZE)),
            _ => None,
        }
    }

    fn region_io_fds(&self, index: u32) -> Result<Vec<RegionIoFd>, Errno> {
        let fd = |i: usize, offset, flags, datamatch| RegionIoFd {
            offset,
            size: 4,
            kind: IoSubregion::TYPE_IOEVENTFD,
            flags,
            datamatch,
            fd: self.ioeventfds[i].clone(),
        };
        match index {
            0 => Ok(vec![
                fd(
                    Self::IOEVENTFD_OUTPUT,
                    Self::REG_OUTPUT,
                    IoSubregion::FLAG_DATAMATCH,
                    u64::from(Self::OUTPUT_DATAMATCH),
                ),
                fd(Self::IOEVENTFD_DOORBELL, Self::REG_DOORBELL, 0, 0),
            ]),
            1 | 2 | Self::MSIX_BAR | PCI_CONFIG_REGION => Ok(Vec::new()),
            _ => Err(Errno::INVAL),
        }
    }

    fn irq_count(&self, index: u32) -> u32 {
        match index {
            IRQ_INTX | IRQ_MSI | IRQ_ERR | IRQ_REQ => 1,
            IRQ_MSIX => self.config.msix_vectors,
            _ => 0,
        }
    }

    fn region_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        let mut st = lock(&self.state);
        if index == 0 {
            // Signals the registers' ioeventfds took come before this access. Only BAR0
            // shows their effect, so other regions skip the two reads.
            st.drain_ioeventfds(&self.ioeventfds);
        }
        if let Some((_, errno)) = st.fail_region.filter(|(r, _)| *r == index) {
            return Err(Errno(errno));
        }
        st.region_reads += 1;
        match index {
            0 => read_regs(offset, data, |reg| match reg {
                Self::REG_INPUT => st.input,
                Self::REG_OUTPUT => st.output,
                Self::REG_SEQUENCE => st.sequence,
                Self::REG_SEQUENCE_WRITES => st.sequence_writes as u32,
                Self::REG_SEQUENCE_ERRORS => st.sequence_errors as u32,
                Self::REG_ID => Self::ID,
                Self::REG_DOORBELL => st.doorbells as u32,
                _ => 0,
            }),
            1 => {
                let s = lock(&self.scratch);
                let start = offset as usize;
                data.copy_from_slice(&s[start..start + data.len()]);
            }
            2 => {
                if Self::touches_gap(offset, data.len()) {
                    st.trapped_accesses += 1;
                }
                self.mappable
                    .read_at(offset, data)
                    .map_err(|e| Errno::from_io(&e))?;
            }
            Self::MSIX_BAR => {
                let pba = Self::msix_pba_offset(self.config.msix_vectors.min(2048));
                read_pba(ctx, pba, offset, data);
            }
            6 => {
                let rom = Self::rom_image();
                let start = offset as usize;
                data.copy_from_slice(&rom[start..start + data.len()]);
            }
            PCI_CONFIG_REGION => read_config(ctx, &self.pci, offset, data),
            _ => return Err(Errno::INVAL),
        }
        Ok(())
    }

    fn region_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let mut raise = Vec::new();
        {
            let mut st = lock(&self.state);
            if index == 0 {
                // As for reads: only BAR0 shows the ioeventfds' effect.
                st.drain_ioeventfds(&self.ioeventfds);
            }
            if let Some((_, errno)) = st.fail_region.filter(|(r, _)| *r == index) {
                return Err(Errno(errno));
            }
            st.region_writes += 1;
            match index {
                0 => {
                    for (reg, v) in dwords(offset, data)? {
                        match reg {
                            Self::REG_OUTPUT => st.output = v,
                            Self::REG_SEQUENCE => {
                                st.sequence_writes += 1;
                                if v != st.sequence.wrapping_add(1) {
                                    st.sequence_errors += 1;
                                }
                                st.sequence = v;
                            }
                            Self::REG_IRQ_RAISE => raise.push((v >> 16, v & 0xffff)),
                            Self::REG_DOORBELL => st.doorbells += 1,
                            _ => {}
                        }
                    }
                }
                1 => {
                    let mut s = lock(&self.scratch);
                    let start = offset as usize;
                    s[start..start + data.len()].copy_from_slice(data);
                    st.scratch_generation += 1;
                }
                2 => {
                    if Self::touches_gap(offset, data.len()) {
                        st.trapped_accesses += 1;
                    }
                    self.mappable
                        .write_at(offset, data)
                        .map_err(|e| Errno::from_io(&e))?;
                }
                // The MSI-X table is the client's; the pending bits are read-only.
                Self::MSIX_BAR => {}
                PCI_CONFIG_REGION => self.pci.write(offset, data),
                _ => return Err(Errno::INVAL),
            }
        }
        for (index, vector) in raise {
            if index == IRQ_INTX && self.pci.intx_disabled() {
                continue;
            }
            ctx.raise_irq(index, vector)?;
        }
        Ok(())
    }

    fn reset(&mut self, reason: ResetReason) -> Result<(), Errno> {
        let mut st = lock(&self.state);
        st.drain_ioeventfds(&self.ioeventfds);
        st.output = 0;
        st.sequence = 0;
        st.resets += 1;
        st.last_reset = Some(reason);
        self.pci.reset();
        Ok(())
    }

    fn migratable(&self) -> bool {
        true
    }

    fn save_precopy(&mut self) -> Result<Vec<u8>, Errno> {
        let mut st = lock(&self.state);
        let generation = st.scratch_generation;
        st.precopy_generation = Some(generation);
        let mut record = generation.to_le_bytes().to_vec();
        record.extend_from_slice(&lock(&self.scratch));
        let mut w = Writer::new(KIND_GPIO);
        w.record(Self::TAG_SCRATCH, &record);
        Ok(w.finish())
    }

    fn save_state(&mut self) -> Result<Vec<u8>, Errno> {
        let mut st = lock(&self.state);
        st.drain_ioeventfds(&self.ioeventfds);
        let mut regs = Vec::with_capacity(36);
        put_u32(&mut regs, st.input);
        put_u32(&mut regs, st.output);
        put_u32(&mut regs, st.sequence);
        put_u64(&mut regs, st.sequence_writes);
        put_u64(&mut regs, st.sequence_errors);
        put_u64(&mut regs, st.doorbells);
        let mut bar2 = vec![0u8; Self::BAR2_SIZE as usize];
        self.mappable
            .read_at(0, &mut bar2)
            .map_err(|e| Errno::from_io(&e))?;
        let mut w = Writer::new(KIND_GPIO);
        w.record(Self::TAG_REGISTERS, &regs)
            .record(Self::TAG_CONFIG, self.pci.snapshot())
            .record(Self::TAG_BAR2, &bar2);
        let generation = st.scratch_generation;
        if st.precopy_generation.take() == Some(generation) {
            w.record(Self::TAG_SCRATCH_UNCHANGED, &generation.to_le_bytes());
        } else {
            let mut record = generation.to_le_bytes().to_vec();
            record.extend_from_slice(&lock(&self.scratch));
            w.record(Self::TAG_SCRATCH, &record);
        }
        Ok(w.finish())
    }

    fn load_state(&mut self, data: &[u8]) -> Result<(), Errno> {
        let loaded = self.parse_state(data)?;
        let mut pci = self.pci.clone();
        pci.load(&loaded.config)?;
        self.mappable
            .write_at(0, &loaded.bar2)
            .map_err(|e| Errno::from_io(&e))?;
        self.pci = pci;
        lock(&self.scratch).copy_from_slice(&loaded.scratch);
        let mut st = lock(&self.state);
        st.drain_ioeventfds(&self.ioeventfds);
        (
            st.input,
            st.output,
            st.sequence,
            st.sequence_writes,
            st.sequence_errors,
            st.doorbells,
        ) = loaded.registers;
        st.scratch_generation = 0;
        st.precopy_generation = None;
        Ok(())
    }

    fn migration_data_limit(&self) -> u64 {
        // Pre-copy scratch, then state with the scratch again, BAR2 and headers.
        2 * self.config.scratch_size + Self::BAR2_SIZE + (64 << 10)
    }
}

/// A GPIO state read back from migration data, not yet applied.
struct LoadedGpio {
    registers: (u32, u32, u32, u64, u64, u64),
    config: Vec<u8>,
    bar2: Vec<u8>,
    scratch: Vec<u8>,
}

impl GpioDevice {
    /// Migration record: registers (input, output, sequence u32; sequence writes, sequence
    /// errors, doorbells u64).
    const TAG_REGISTERS: u16 = 1;
    /// Migration record: the 256 config space bytes.
    const TAG_CONFIG: u16 = 2;
    /// Migration record: BAR1 scratch RAM, as a generation u64 then every byte.
    const TAG_SCRATCH: u16 = 3;
    /// Migration record: BAR2's 64 KiB.
    const TAG_BAR2: u16 = 4;
    /// Migration record: BAR1 is as in the pre-copy record of this generation (u64).
    const TAG_SCRATCH_UNCHANGED: u16 = 5;

    /// Reads a whole migration stream; every record must be there (the scratch RAM in full,
    /// or unchanged since a pre-copy record earlier in the stream).
    fn parse_state(&self, data: &[u8]) -> Result<LoadedGpio, Errno> {
        let mut registers = None;
        let mut config = None;
        let mut bar2 = None;
        let mut scratch: Option<(u64, &[u8])> = None;
        let mut scratch_final = false;
        for (tag, body) in state::records(data, KIND_GPIO)? {
            let mut f = Fields::new(body);
            match tag {
                Self::TAG_REGISTERS => {
                    registers = Some((f.u32()?, f.u32()?, f.u32()?, f.u64()?, f.u64()?, f.u64()?));
                }
                Self::TAG_CONFIG => config = Some(f.bytes(ConfigSpace::SIZE as usize)?.to_vec()),
                Self::TAG_BAR2 => bar2 = Some(f.bytes(Self::BAR2_SIZE as usize)?.to_vec()),
                Self::TAG_SCRATCH => {
                    let generation = f.u64()?;
                    scratch = Some((generation, f.bytes(self.config.scratch_size as usize)?));
                    scratch_final = true;
                }
                Self::TAG_SCRATCH_UNCHANGED => {
                    let generation = f.u64()?;
                    if scratch.map(|(g, _)| g) != Some(generation) {
                        return Err(Errno::INVAL);
                    }
                    scratch_final = true;
                }
                _ => return Err(Errno::INVAL),
            }
            f.end()?;
        }
        match (registers, config, bar2, scratch) {
            (Some(registers), Some(config), Some(bar2), Some((_, scratch))) if scratch_final => {
                Ok(LoadedGpio {
                    registers,
                    config,
                    bar2,
                    scratch: scratch.to_vec(),
                })
            }
            _ => Err(Errno::INVAL),
        }
    }
}

impl GpioHandle {
    /// Sets the value the input port register reads.
    pub fn set_input(&self, value: u32) {
        lock(&self.state).input = value;
    }

    /// The output latch.
    pub fn output(&self) -> u32 {
        lock(&self.state).output
    }

    /// The sequence register (last value written).
    pub fn sequence(&self) -> u32 {
        lock(&self.state).sequence
    }

    /// Writes to the sequence register so far.
    pub fn sequence_writes(&self) -> u64 {
        lock(&self.state).sequence_writes
    }

    /// Sequence register writes that were not the previous value plus one.
    pub fn sequence_errors(&self) -> u64 {
        lock(&self.state).sequence_errors
    }

    /// Region reads handled (message-based accesses only; mmap accesses are invisible).
    pub fn region_reads(&self) -> u64 {
        lock(&self.state).region_reads
    }

    /// Region writes handled (message-based only).
    pub fn region_writes(&self) -> u64 {
        lock(&self.state).region_writes
    }

    /// Message-based BAR2 accesses that touched the trapped gap.
    pub fn trapped_accesses(&self) -> u64 {
        lock(&self.state).trapped_accesses
    }

    /// Resets so far (client requests and disconnects).
    pub fn resets(&self) -> u64 {
        lock(&self.state).resets
    }

    /// Why the device was last reset.
    pub fn last_reset(&self) -> Option<ResetReason> {
        lock(&self.state).last_reset
    }

    /// `len` bytes of BAR1 scratch RAM at `offset` (`None` out of bounds).
    pub fn scratch(&self, offset: usize, len: usize) -> Option<Vec<u8>> {
        lock(&self.scratch)
            .get(offset..offset.checked_add(len)?)
            .map(<[u8]>::to_vec)
    }

    /// Doorbell rings so far (REGION_WRITEs to `REG_DOORBELL` and signals of its
    /// ioeventfd), not cleared by reset.
    pub fn doorbells(&self) -> u64 {
        let mut st = lock(&self.state);
        st.drain_ioeventfds(&self.ioeventfds);
        st.doorbells
    }

    /// How many times BAR0 ioeventfd `i` (see [`GpioDevice`]) was signalled so far: the
    /// eventfd is read without blocking and the count accumulates. 0 for an unknown `i`.
    pub fn ioeventfd_signals(&self, i: usize) -> u64 {
        let mut st = lock(&self.state);
        st.drain_ioeventfds(&self.ioeventfds);
        st.ioeventfd_signals.get(i).copied().unwrap_or(0)
    }

    /// Makes message-based accesses of `region` fail with `errno` (see
    /// [`GpioConfig::fail_region`]); `None` stops failing them.
    pub fn set_fail_region(&self, fail: Option<(u32, i32)>) {
        lock(&self.state).fail_region = fail;
    }

    /// The memory behind BAR2, as the client's mmap sees it.
    pub fn bar2(&self) -> &SharedMemory {
        &self.mappable
    }
}
