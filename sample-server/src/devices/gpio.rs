// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A GPIO-like PCI device in the manner of libvfio-user's `gpio-pci-idio-16`, with extras
//! for client testing.

use std::io;
use std::sync::{Arc, Mutex};

use crate::conn::{lock, DeviceContext};
use crate::device::{
    Device, DeviceInfo, Errno, RegionMmap, RegionSpec, ResetReason, IRQ_ERR, IRQ_INTX, IRQ_MSI,
    IRQ_MSIX, IRQ_REQ, PCI_CONFIG_REGION, PCI_NUM_IRQS, PCI_NUM_REGIONS,
};
use crate::devices::{dwords, read_regs};
use crate::memory::SharedMemory;
use crate::pci::ConfigSpace;
use vfio_user_client::protocol::{
    SparseMmapArea, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, REGION_INFO_FLAG_READ,
    REGION_INFO_FLAG_WRITE,
};

/// Configuration of a [`GpioDevice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpioConfig {
    /// Number of MSI-X vectors (default 4).
    pub msix_vectors: u32,
    /// Size of the BAR1 scratch RAM (default 4 MiB).
    pub scratch_size: u64,
}

impl Default for GpioConfig {
    fn default() -> Self {
        GpioConfig {
            msix_vectors: 4,
            scratch_size: 4 << 20,
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
}

/// The device. Regions (BARs are 32-bit memory BARs in the config space):
///
/// | Index | Size | Contents |
/// |---|---|---|
/// | 0 (BAR0) | 256 B | registers, see the `REG_*` constants; writes must be aligned dwords |
/// | 1 (BAR1) | 4 MiB | scratch RAM: any offset, any size |
/// | 2 (BAR2) | 64 KiB | memfd RAM; `MAPPABLE_AREAS` are mmappable, the gap between them is trapped |
/// | 7 | 256 B | PCI config space (vendor 0x494f, device 0x0dc8) |
///
/// IRQs: INTx 1, MSI 1, MSI-X [`GpioConfig::msix_vectors`], ERR 1, REQ 1. Supports reset,
/// which clears the registers (not the RAM).
#[derive(Debug)]
pub struct GpioDevice {
    config: GpioConfig,
    pci: ConfigSpace,
    state: Arc<Mutex<GpioState>>,
    scratch: Arc<Mutex<Vec<u8>>>,
    mappable: Arc<SharedMemory>,
}

/// A test's handle on a [`GpioDevice`]'s state, usable while the server owns the device.
#[derive(Clone, Debug)]
pub struct GpioHandle {
    state: Arc<Mutex<GpioState>>,
    scratch: Arc<Mutex<Vec<u8>>>,
    mappable: Arc<SharedMemory>,
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
    /// BAR0: write `index << 16 | vector` to raise that interrupt (reads 0).
    pub const REG_IRQ_RAISE: u64 = 0x14;
    /// BAR0: identification value [`GpioDevice::ID`] (read-only).
    pub const REG_ID: u64 = 0x18;
    /// Value of [`GpioDevice::REG_ID`].
    pub const ID: u32 = 0x4750_494f;

    /// A device and the test handle on its state.
    pub fn new(config: GpioConfig) -> io::Result<(GpioDevice, GpioHandle)> {
        let mappable = Arc::new(SharedMemory::new("gpio-bar2", Self::BAR2_SIZE)?);
        let scratch_len = usize::try_from(config.scratch_size)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let scratch = Arc::new(Mutex::new(vec![0u8; scratch_len]));
        let state = Arc::new(Mutex::new(GpioState::default()));
        let pci = ConfigSpace::new(Self::VENDOR_ID, Self::DEVICE_ID, 0x08_80_00, 0)
            .with_bar(0, Self::BAR0_SIZE as u32)
            .with_bar(
                1,
                u32::try_from(config.scratch_size.next_power_of_two()).unwrap_or(1 << 31),
            )
            .with_bar(2, Self::BAR2_SIZE as u32)
            .with_interrupt_pin(1);
        let handle = GpioHandle {
            state: state.clone(),
            scratch: scratch.clone(),
            mappable: mappable.clone(),
        };
        Ok((
            GpioDevice {
                config,
                pci,
                state,
                scratch,
                mappable,
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
        DeviceInfo {
            flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: PCI_NUM_REGIONS,
            num_irqs: PCI_NUM_IRQS,
        }
    }

    fn region(&self, index: u32) -> Option<RegionSpec> {
        let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
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
                mmap: Some(RegionMmap {
                    memory: self.mappable.clone(),
                    offset: 0,
                    areas: Self::MAPPABLE_AREAS.to_vec(),
                }),
            }),
            PCI_CONFIG_REGION => Some(spec(ConfigSpace::SIZE)),
            _ => None,
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
        _ctx: &mut DeviceContext<'_>,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        let mut st = lock(&self.state);
        st.region_reads += 1;
        match index {
            0 => read_regs(offset, data, |reg| match reg {
                Self::REG_INPUT => st.input,
                Self::REG_OUTPUT => st.output,
                Self::REG_SEQUENCE => st.sequence,
                Self::REG_SEQUENCE_WRITES => st.sequence_writes as u32,
                Self::REG_SEQUENCE_ERRORS => st.sequence_errors as u32,
                Self::REG_ID => Self::ID,
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
            PCI_CONFIG_REGION => self.pci.read(offset, data),
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
                            _ => {}
                        }
                    }
                }
                1 => {
                    let mut s = lock(&self.scratch);
                    let start = offset as usize;
                    s[start..start + data.len()].copy_from_slice(data);
                }
                2 => {
                    if Self::touches_gap(offset, data.len()) {
                        st.trapped_accesses += 1;
                    }
                    self.mappable
                        .write_at(offset, data)
                        .map_err(|e| Errno::from_io(&e))?;
                }
                PCI_CONFIG_REGION => self.pci.write(offset, data),
                _ => return Err(Errno::INVAL),
            }
        }
        for (index, vector) in raise {
            ctx.raise_irq(index, vector)?;
        }
        Ok(())
    }

    fn reset(&mut self, reason: ResetReason) -> Result<(), Errno> {
        let mut st = lock(&self.state);
        st.output = 0;
        st.sequence = 0;
        st.resets += 1;
        st.last_reset = Some(reason);
        self.pci.reset();
        Ok(())
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

    /// The memory behind BAR2, as the client's mmap sees it.
    pub fn bar2(&self) -> &SharedMemory {
        &self.mappable
    }
}
