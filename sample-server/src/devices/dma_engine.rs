// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A DMA engine: copies guest memory when its doorbell is rung, then interrupts.

use std::io;
use std::sync::{Arc, Mutex};

use crate::conn::{lock, DeviceContext};
use crate::device::{
    Device, DeviceInfo, Errno, RegionIoFd, RegionMmap, RegionSpec, ResetReason, IRQ_ERR, IRQ_INTX,
    IRQ_MSI, IRQ_MSIX, IRQ_REQ, PCI_CONFIG_REGION, PCI_NUM_IRQS, PCI_NUM_REGIONS,
};
use crate::devices::state::{self, put_u32, put_u64, Fields, Writer, KIND_DMA_ENGINE};
use crate::devices::{dwords, read_pba, read_regs};
use crate::dma::DmaMapInfo;
use crate::memory::SharedMemory;
use crate::pci::ConfigSpace;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user_client::protocol::IoSubregion;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Largest piece copied at once (bounds the engine's buffer).
const COPY_CHUNK: usize = 1 << 20;

/// The engine's status register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u32)]
pub enum DmaEngineStatus {
    /// No copy since reset.
    #[default]
    Idle = 0,
    /// The last copy completed.
    Done = 1,
    /// The last copy failed; the errno register says why.
    Error = 2,
    /// A copy is under way (paced by [`DmaEngine::REG_BURST`], or waiting for a stopped
    /// device to run again).
    Busy = 3,
}

impl DmaEngineStatus {
    fn from_u32(v: u32) -> Option<Self> {
        [Self::Idle, Self::Done, Self::Error, Self::Busy]
            .into_iter()
            .find(|s| *s as u32 == v)
    }
}

#[derive(Debug, Default)]
struct EngineState {
    source: u64,
    destination: u64,
    length: u64,
    status: DmaEngineStatus,
    errno: u32,
    completions: u64,
    interrupts: u64,
    maps_added: u64,
    maps_removed: u64,
    resets: u64,
    /// Bytes copied per step; 0 copies all at the doorbell.
    burst: u32,
    /// A copy is under way, `done` bytes of it copied.
    active: bool,
    done: u64,
    /// The device is stopped (migration): no copying, no interrupts.
    stopped: bool,
}

/// The device. Region 0 (BAR0, 256 B, 32-bit memory) holds the registers (`REG_*`; writes
/// must be aligned dwords, 64-bit registers may be written as one 8-byte access or two 4-byte
/// halves), the MSI-X table at [`DmaEngine::MSIX_TABLE`] and the pending bit array at
/// [`DmaEngine::MSIX_PBA`]; region 1 (BAR1, an I/O BAR of 64 bytes) mirrors the registers for
/// port I/O; region 7 is the config space, with power management, MSI (1 vector, 32-bit
/// addresses), MSI-X (2 vectors) and PCI Express capabilities and interrupt pin INTA.
/// IRQs: INTx 1, MSI 1, MSI-X 2, ERR 1, REQ 1.
///
/// Writing 1 to the doorbell copies `length` bytes from `source` to `destination` (guest
/// addresses), through mmapped windows or DMA_READ/DMA_WRITE messages, before the doorbell
/// write completes (or [`DmaEngine::REG_BURST`] bytes after each later message, when set);
/// then sets the status and raises the completion interrupt: MSI-X vector 0 if the client
/// attached an eventfd to it, else MSI vector 0 if it attached one there, else INTx unless
/// the command register's Interrupt Disable bit is set.
///
/// Migration: a stopped engine copies nothing and raises nothing (a doorbell rung then starts
/// the copy when it runs again). Its data, records as
/// [`MigrationConfig`](crate::MigrationConfig) lays them out (device kind 2), is the state
/// only (no pre-copy data): record 1 holds source, destination and length (u64), burst,
/// status, errno and "copy under way" (u32), then progress and completions (u64); record 2
/// the 256 config space bytes. On the destination a copy under way carries on from where it
/// stopped once the device runs.
#[derive(Debug)]
pub struct DmaEngine {
    pci: ConfigSpace,
    state: Arc<Mutex<EngineState>>,
    extras: Extras,
}

/// A test's handle on a [`DmaEngine`].
#[derive(Clone, Debug)]
pub struct DmaEngineHandle {
    state: Arc<Mutex<EngineState>>,
    extras: Extras,
}

/// What a VMM can use to skip exits: see [`DmaEngineOptions`].
#[derive(Clone, Debug, Default)]
struct Extras {
    doorbell: Option<Arc<EventFd>>,
    buffer: Option<Arc<SharedMemory>>,
}

/// Optional parts of a [`DmaEngine`], for VMMs that install memory slots and ioeventfds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaEngineOptions {
    /// DEVICE_GET_REGION_IO_FDS offers an ioeventfd for the doorbell (region 0,
    /// [`DmaEngine::REG_DOORBELL`], 4 bytes, data match 1); the other regions have none.
    /// The engine takes its signals, and copies once per signal, before each message-based
    /// access, so a status read through the socket sees the copies rung before it. Without
    /// it the query is answered `EINVAL`, as before.
    pub doorbell_ioeventfd: bool,
    /// Region 2 (BAR2, 32-bit memory) is a [`DmaEngine::BUFFER_SIZE`] buffer of shared
    /// memory, mappable as a whole; [`DmaEngineHandle::buffer`] reads it.
    pub buffer_bar: bool,
}

impl DmaEngine {
    /// PCI vendor id.
    pub const VENDOR_ID: u16 = 0x494f;
    /// PCI device id.
    pub const DEVICE_ID: u16 = 0x0d4a;
    /// Size of BAR0.
    pub const BAR0_SIZE: u64 = 256;
    /// BAR0: source guest address (u64).
    pub const REG_SOURCE: u64 = 0x00;
    /// BAR0: destination guest address (u64).
    pub const REG_DESTINATION: u64 = 0x08;
    /// BAR0: bytes to copy (u64).
    pub const REG_LENGTH: u64 = 0x10;
    /// BAR0: write 1 to start the copy (u32; reads 0).
    pub const REG_DOORBELL: u64 = 0x18;
    /// BAR0: [`DmaEngineStatus`] (u32, read-only).
    pub const REG_STATUS: u64 = 0x1c;
    /// BAR0: errno of the last failure (u32, read-only).
    pub const REG_ERRNO: u64 = 0x20;
    /// BAR0: completed copies (low 32 bits, read-only).
    pub const REG_COMPLETIONS: u64 = 0x24;
    /// BAR0: bytes copied per step (u32): 0 (the default) copies everything before the
    /// doorbell write completes; otherwise the doorbell starts the copy (status
    /// [`DmaEngineStatus::Busy`]) and each message the server handles afterwards copies this
    /// many bytes more, a transfer in flight between messages.
    pub const REG_BURST: u64 = 0x28;
    /// BAR0: bytes copied of the current or last copy (low 32 bits, read-only).
    pub const REG_PROGRESS: u64 = 0x2c;
    /// BAR0: offset of the MSI-X table (2 vectors; the client emulates it).
    pub const MSIX_TABLE: u64 = 0x80;
    /// BAR0: offset of the MSI-X pending bit array.
    pub const MSIX_PBA: u64 = 0xc0;
    /// Size of the BAR1 I/O window onto the registers.
    pub const IO_BAR_SIZE: u64 = 64;

    /// Size of the region 2 buffer ([`DmaEngineOptions::buffer_bar`]).
    pub const BUFFER_SIZE: u64 = 4096;
    /// Migration record: source, destination, length (u64), burst, status, errno, active
    /// (u32), progress, completions (u64).
    const TAG_ENGINE: u16 = 1;
    /// Migration record: the 256 config space bytes.
    const TAG_CONFIG: u16 = 2;

    /// A device and the test handle on its state.
    pub fn new() -> (DmaEngine, DmaEngineHandle) {
        Self::build(Extras::default(), false)
    }

    /// A device with the optional parts `options` asks for, and its test handle.
    pub fn with_options(options: DmaEngineOptions) -> io::Result<(DmaEngine, DmaEngineHandle)> {
        let doorbell = match options.doorbell_ioeventfd {
            true => Some(Arc::new(EventFd::new(EFD_NONBLOCK)?)),
            false => None,
        };
        let buffer = match options.buffer_bar {
            true => Some(Arc::new(SharedMemory::new(
                "dma-engine-buffer",
                Self::BUFFER_SIZE,
            )?)),
            false => None,
        };
        Ok(Self::build(Extras { doorbell, buffer }, options.buffer_bar))
    }

    fn build(extras: Extras, buffer_bar: bool) -> (DmaEngine, DmaEngineHandle) {
        let state = Arc::new(Mutex::new(EngineState::default()));
        let mut pci = ConfigSpace::new(Self::VENDOR_ID, Self::DEVICE_ID, 0x08_80_00, 0)
            .with_bar(0, Self::BAR0_SIZE as u32)
            .with_io_bar(1, Self::IO_BAR_SIZE as u32);
        if buffer_bar {
            pci = pci.with_bar(2, Self::BUFFER_SIZE as u32);
        }
        let pci = pci
            .with_interrupt_pin(1)
            .with_pm()
            .with_msi(1, false, false)
            .with_msix(2, 0, Self::MSIX_TABLE as u32, 0, Self::MSIX_PBA as u32)
            .with_pcie();
        (
            DmaEngine {
                pci,
                state: state.clone(),
                extras: extras.clone(),
            },
            DmaEngineHandle { state, extras },
        )
    }

    /// Takes the doorbell ioeventfd's signals and rings the doorbell once for each.
    fn drain_doorbell(&mut self, ctx: &mut DeviceContext<'_>) {
        let Some(fd) = &self.extras.doorbell else {
            return;
        };
        // EAGAIN (nothing signalled) is the only error a non-blocking eventfd read has.
        let Ok(rings) = fd.read() else { return };
        for _ in 0..rings {
            self.ring(ctx);
        }
    }

    /// The doorbell: starts copying `length` bytes from `source` to `destination` (ignored
    /// while a copy is under way). With no burst set the whole copy is done at once;
    /// otherwise `Device::step` advances it one burst per message.
    fn ring(&mut self, ctx: &mut DeviceContext<'_>) {
        let burst = {
            let mut st = lock(&self.state);
            if st.active {
                return;
            }
            st.active = true;
            st.done = 0;
            st.status = DmaEngineStatus::Busy;
            st.burst
        };
        if burst == 0 {
            self.advance(ctx, u64::MAX);
        }
    }

    /// Copies up to `budget` more bytes of the copy under way, if the device runs; at its
    /// end (or failure) sets the status and raises the completion interrupt.
    fn advance(&mut self, ctx: &mut DeviceContext<'_>, budget: u64) {
        let (source, destination, length, done) = {
            let st = lock(&self.state);
            if !st.active || st.stopped {
                return;
            }
            (st.source, st.destination, st.length, st.done)
        };
        let n = (length - done).min(budget);
        let result = match (source.checked_add(done), destination.checked_add(done)) {
            (Some(s), Some(d)) => Self::copy(ctx, s, d, n),
            _ => Err(Errno::FAULT),
        };
        {
            let mut st = lock(&self.state);
            match result {
                Ok(()) => {
                    st.done += n;
                    if st.done < st.length {
                        return;
                    }
                    st.status = DmaEngineStatus::Done;
                    st.errno = 0;
                    st.completions += 1;
                }
                Err(e) => {
                    log::debug!("DMA engine copy failed: {e:?}");
                    st.status = DmaEngineStatus::Error;
                    st.errno = e.0 as u32;
                }
            }
            st.active = false;
        }
        let irq = if ctx.irq_assigned(IRQ_MSIX, 0) {
            IRQ_MSIX
        } else if ctx.irq_assigned(IRQ_MSI, 0) {
            IRQ_MSI
        } else if !self.pci.intx_disabled() {
            IRQ_INTX
        } else {
            return;
        };
        if ctx.raise_irq(irq, 0).unwrap_or(false) {
            lock(&self.state).interrupts += 1;
        }
    }

    fn copy(
        ctx: &mut DeviceContext<'_>,
        source: u64,
        destination: u64,
        length: u64,
    ) -> Result<(), Errno> {
        source.checked_add(length).ok_or(Errno::FAULT)?;
        destination.checked_add(length).ok_or(Errno::FAULT)?;
        let mut buf = vec![
            0u8;
            usize::try_from(length)
                .unwrap_or(usize::MAX)
                .min(COPY_CHUNK)
        ];
        let mut done = 0u64;
        while done < length {
            let n = usize::try_from(length - done)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            ctx.dma_read(source + done, &mut buf[..n])?;
            ctx.dma_write(destination + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

/// The engine's registers and progress, read back from migration data.
struct LoadedEngine {
    source: u64,
    destination: u64,
    length: u64,
    burst: u32,
    status: DmaEngineStatus,
    errno: u32,
    active: bool,
    done: u64,
    completions: u64,
}

impl LoadedEngine {
    /// Reads the record; `EINVAL` for an unknown status, a flag other than 0/1, or progress
    /// beyond the length.
    fn read(f: &mut Fields<'_>) -> Result<LoadedEngine, Errno> {
        let (source, destination, length) = (f.u64()?, f.u64()?, f.u64()?);
        let burst = f.u32()?;
        let status = DmaEngineStatus::from_u32(f.u32()?).ok_or(Errno::INVAL)?;
        let errno = f.u32()?;
        let active = match f.u32()? {
            0 => false,
            1 => true,
            _ => return Err(Errno::INVAL),
        };
        let (done, completions) = (f.u64()?, f.u64()?);
        if done > length {
            return Err(Errno::INVAL);
        }
        Ok(LoadedEngine {
            source,
            destination,
            length,
            burst,
            status,
            errno,
            active,
            done,
            completions,
        })
    }
}

fn set_half(reg: &mut u64, high: bool, v: u32) {
    *reg = if high {
        (*reg & 0xffff_ffff) | (u64::from(v) << 32)
    } else {
        (*reg & !0xffff_ffff) | u64::from(v)
    };
}

impl Device for DmaEngine {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: PCI_NUM_REGIONS,
            num_irqs: PCI_NUM_IRQS,
        }
    }

    fn region(&self, index: u32) -> Option<RegionSpec> {
        if let (2, Some(buffer)) = (index, &self.extras.buffer) {
            return Some(RegionSpec {
                flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
                size: Self::BUFFER_SIZE,
                mmap: Some(RegionMmap {
                    memory: buffer.clone(),
                    offset: 0,
                    areas: Vec::new(),
                }),
            });
        }
        let size = match index {
            0 => Self::BAR0_SIZE,
            1 => Self::IO_BAR_SIZE,
            PCI_CONFIG_REGION => ConfigSpace::SIZE,
            _ => return None,
        };
        Some(RegionSpec {
            flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
            size,
            mmap: None,
        })
    }

    fn irq_count(&self, index: u32) -> u32 {
        match index {
            IRQ_INTX | IRQ_MSI | IRQ_ERR | IRQ_REQ => 1,
            IRQ_MSIX => 2,
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
        self.drain_doorbell(ctx);
        if let (2, Some(buffer)) = (index, &self.extras.buffer) {
            return buffer.read_at(offset, data).map_err(|e| Errno::from_io(&e));
        }
        match index {
            0 if offset >= Self::MSIX_TABLE => read_pba(ctx, Self::MSIX_PBA, offset, data),
            0 | 1 => {
                let st = lock(&self.state);
                read_regs(offset, data, |reg| match reg {
                    0x00 => st.source as u32,
                    0x04 => (st.source >> 32) as u32,
                    0x08 => st.destination as u32,
                    0x0c => (st.destination >> 32) as u32,
                    0x10 => st.length as u32,
                    0x14 => (st.length >> 32) as u32,
                    Self::REG_STATUS => st.status as u32,
                    Self::REG_ERRNO => st.errno,
                    Self::REG_COMPLETIONS => st.completions as u32,
                    Self::REG_BURST => st.burst,
                    Self::REG_PROGRESS => st.done as u32,
                    _ => 0,
                });
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
        self.drain_doorbell(ctx);
        if index == PCI_CONFIG_REGION {
            self.pci.write(offset, data);
            return Ok(());
        }
        if let (2, Some(buffer)) = (index, &self.extras.buffer) {
            return buffer
                .write_at(offset, data)
                .map_err(|e| Errno::from_io(&e));
        }
        if index > 1 {
            return Err(Errno::INVAL);
        }
        if index == 0 && offset >= Self::MSIX_TABLE {
            // The MSI-X table is the client's; the pending bits are read-only.
            return Ok(());
        }
        for (reg, v) in dwords(offset, data)? {
            let ring = {
                let mut st = lock(&self.state);
                match reg {
                    0x00 | 0x04 => set_half(&mut st.source, reg == 0x04, v),
                    0x08 | 0x0c => set_half(&mut st.destination, reg == 0x0c, v),
                    0x10 | 0x14 => set_half(&mut st.length, reg == 0x14, v),
                    Self::REG_BURST => st.burst = v,
                    _ => {}
                }
                reg == Self::REG_DOORBELL && v == 1
            };
            if ring {
                self.ring(ctx);
            }
        }
        Ok(())
    }

    fn region_io_fds(&self, index: u32) -> Result<Vec<RegionIoFd>, Errno> {
        let Some(fd) = &self.extras.doorbell else {
            return Err(Errno::INVAL);
        };
        match index {
            0 => Ok(vec![RegionIoFd {
                offset: Self::REG_DOORBELL,
                size: 4,
                kind: IoSubregion::TYPE_IOEVENTFD,
                flags: IoSubregion::FLAG_DATAMATCH,
                datamatch: 1,
                fd: fd.clone(),
            }]),
            1 | PCI_CONFIG_REGION => Ok(Vec::new()),
            2 if self.extras.buffer.is_some() => Ok(Vec::new()),
            _ => Err(Errno::INVAL),
        }
    }

    fn reset(&mut self, _reason: ResetReason) -> Result<(), Errno> {
        let mut st = lock(&self.state);
        let keep = (
            st.completions,
            st.interrupts,
            st.maps_added,
            st.maps_removed,
            st.resets + 1,
        );
        *st = EngineState::default();
        (
            st.completions,
            st.interrupts,
            st.maps_added,
            st.maps_removed,
            st.resets,
        ) = keep;
        self.pci.reset();
        Ok(())
    }

    fn dma_mapped(&mut self, _map: &DmaMapInfo) {
        lock(&self.state).maps_added += 1;
    }

    fn migratable(&self) -> bool {
        true
    }

    fn set_running(&mut self, running: bool) {
        lock(&self.state).stopped = !running;
    }

    fn step(&mut self, ctx: &mut DeviceContext<'_>) {
        let burst = lock(&self.state).burst;
        self.advance(
            ctx,
            if burst == 0 {
                u64::MAX
            } else {
                u64::from(burst)
            },
        );
    }

    fn save_state(&mut self) -> Result<Vec<u8>, Errno> {
        let st = lock(&self.state);
        let mut engine = Vec::with_capacity(56);
        put_u64(&mut engine, st.source);
        put_u64(&mut engine, st.destination);
        put_u64(&mut engine, st.length);
        put_u32(&mut engine, st.burst);
        put_u32(&mut engine, st.status as u32);
        put_u32(&mut engine, st.errno);
        put_u32(&mut engine, u32::from(st.active));
        put_u64(&mut engine, st.done);
        put_u64(&mut engine, st.completions);
        let mut w = Writer::new(KIND_DMA_ENGINE);
        w.record(Self::TAG_ENGINE, &engine)
            .record(Self::TAG_CONFIG, self.pci.snapshot());
        Ok(w.finish())
    }

    fn load_state(&mut self, data: &[u8]) -> Result<(), Errno> {
        let mut engine = None;
        let mut config = None;
        for (tag, body) in state::records(data, KIND_DMA_ENGINE)? {
            let mut f = Fields::new(body);
            match tag {
                Self::TAG_ENGINE => engine = Some(LoadedEngine::read(&mut f)?),
                Self::TAG_CONFIG => config = Some(f.bytes(ConfigSpace::SIZE as usize)?),
                _ => return Err(Errno::INVAL),
            }
            f.end()?;
        }
        let (Some(e), Some(config)) = (engine, config) else {
            return Err(Errno::INVAL);
        };
        self.pci.load(config)?;
        let mut st = lock(&self.state);
        st.source = e.source;
        st.destination = e.destination;
        st.length = e.length;
        st.burst = e.burst;
        st.status = e.status;
        st.errno = e.errno;
        st.active = e.active;
        st.done = e.done;
        st.completions = e.completions;
        Ok(())
    }

    fn dma_unmapped(&mut self, _map: &DmaMapInfo) {
        lock(&self.state).maps_removed += 1;
    }
}

impl DmaEngineHandle {
    /// The region 2 buffer's bytes as the server sees them (empty without
    /// [`DmaEngineOptions::buffer_bar`]).
    pub fn buffer(&self) -> Vec<u8> {
        let Some(buffer) = &self.extras.buffer else {
            return Vec::new();
        };
        let mut bytes = vec![0u8; DmaEngine::BUFFER_SIZE as usize];
        match buffer.read_at(0, &mut bytes) {
            Ok(()) => bytes,
            Err(_) => Vec::new(),
        }
    }

    /// The status register.
    pub fn status(&self) -> DmaEngineStatus {
        lock(&self.state).status
    }

    /// The errno register (0 after a success).
    pub fn errno(&self) -> u32 {
        lock(&self.state).errno
    }

    /// Bytes copied of the current or last copy.
    pub fn progress(&self) -> u64 {
        lock(&self.state).done
    }

    /// Copies completed so far.
    pub fn completions(&self) -> u64 {
        lock(&self.state).completions
    }

    /// Completion interrupts delivered to an eventfd so far.
    pub fn interrupts(&self) -> u64 {
        lock(&self.state).interrupts
    }

    /// DMA windows added and removed so far, as notified to the device.
    pub fn maps_seen(&self) -> (u64, u64) {
        let st = lock(&self.state);
        (st.maps_added, st.maps_removed)
    }

    /// Resets so far.
    pub fn resets(&self) -> u64 {
        lock(&self.state).resets
    }
}
