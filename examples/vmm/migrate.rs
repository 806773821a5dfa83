// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `--migrate`: the guest is live-migrated, mid-loop, to a second VMM instance.
//!
//! The source is a VMM (a KVM vCPU running `guest_loop.S`, or the same loop as a Rust
//! guest) with sample server A (migration on); the destination a second VMM with server B.
//! The guest copies a buffer with the DMA engine 64 times and checks every copy. After
//! [`PRE_COPY_FROM`] iterations the VMM migrates it:
//!
//! 1. **Pre-copy**, the guest running between rounds: the destination VMM is built and the
//!    device attached to B, which goes to RESUMING; the source device goes to PRE_COPY
//!    with DMA dirty logging over its own mapper
//!    (`VfioUserPciDevice::start_dirty_logging`), and KVM logs the guest's writes
//!    (`KVM_MEM_LOG_DIRTY_PAGES`, `get_dirty_log`). Guest memory is copied whole, then each
//!    round (at the guest's next yield) moves the device's pre-copy data and the pages
//!    dirtied since (the device's dirty report merged with KVM's log).
//! 2. **Stop** (the downtime): at the next yield the vCPU stays stopped; the device is
//!    saved (`save_with`: STOP_COPY, the PCI state and the device data), the last dirty
//!    pages are copied (all of guest memory where there is no KVM log: the Rust guest's
//!    writes are not logged), and the vCPU's registers (regs and sregs) taken.
//! 3. **Resume** on the destination: `restore_with` (the device data loaded, the PCI state
//!    restored: BARs, MSI-X wiring, managed KVM slots and ioeventfds; then RUNNING), the
//!    BAR windows registered on the destination's buses, the vCPU created with the
//!    registers, and the guest finishes its loop there.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use vfio_user_client::migration::{DeviceState, Migration};
use vfio_user_sample_server::{DmaEngineStatus, MigrationConfig};
use vm_memory::GuestMemoryBackend;

use super::*;

/// `guest_loop.S`, assembled (see the file for the commands).
pub const GUEST_LOOP_CODE: &[u8] = &[
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x66, 0x31, 0xdb, 0x66, 0x89, 0xd8, 0x66, 0xc1, 0xe0, 0x0b, 0x66,
    0x0d, 0x00, 0x00, 0x00, 0x80, 0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0xed, 0x66,
    0x3d, 0x4f, 0x49, 0x4a, 0x0d, 0x74, 0x0f, 0x66, 0x43, 0x66, 0x83, 0xfb, 0x20, 0x75, 0xd9, 0xc7,
    0x06, 0x00, 0x05, 0xad, 0xde, 0xf4, 0x66, 0x89, 0x1e, 0x04, 0x05, 0x66, 0x89, 0xd9, 0x66, 0xc1,
    0xe1, 0x0b, 0x66, 0x81, 0xc9, 0x00, 0x00, 0x00, 0x80, 0x66, 0x89, 0xc8, 0x66, 0x83, 0xc8, 0x10,
    0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0xb8, 0x00, 0x00, 0x0d, 0x00, 0x66, 0xef,
    0x66, 0x89, 0xc8, 0x66, 0x83, 0xc8, 0x34, 0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66,
    0xed, 0x66, 0x25, 0xfc, 0x00, 0x00, 0x00, 0x66, 0x89, 0xc6, 0x66, 0x85, 0xf6, 0x74, 0x21, 0x66,
    0x89, 0xc8, 0x66, 0x09, 0xf0, 0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0xed, 0x3c,
    0x11, 0x74, 0x14, 0x66, 0x0f, 0xb6, 0xf4, 0x66, 0x81, 0xe6, 0xfc, 0x00, 0x00, 0x00, 0xeb, 0xda,
    0xc7, 0x06, 0x00, 0x05, 0xd1, 0xba, 0xf4, 0x66, 0x89, 0x36, 0x08, 0x05, 0x66, 0x89, 0xc8, 0x66,
    0x09, 0xf0, 0x66, 0x83, 0xc0, 0x04, 0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0xed,
    0x66, 0x83, 0xe0, 0xf8, 0x66, 0x89, 0xc7, 0x66, 0x89, 0xc8, 0x66, 0x83, 0xc8, 0x04, 0xba, 0xf8,
    0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0xb8, 0x06, 0x00, 0xef, 0xb8, 0x00, 0xd0, 0x8e, 0xd8, 0x66,
    0xc7, 0x05, 0x00, 0x00, 0xe0, 0xfe, 0x66, 0xc7, 0x45, 0x04, 0x00, 0x00, 0x00, 0x00, 0x66, 0xc7,
    0x45, 0x08, 0x31, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x45, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x31, 0xc0,
    0x8e, 0xd8, 0x66, 0x89, 0xc8, 0x66, 0x09, 0xf0, 0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfe, 0x0c,
    0xb8, 0x00, 0x80, 0xef, 0xb8, 0x00, 0xd0, 0x8e, 0xd8, 0x66, 0xc7, 0x06, 0x28, 0x00, 0x40, 0x00,
    0x00, 0x00, 0x66, 0xc7, 0x06, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x04, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x08, 0x00, 0x00, 0x30, 0x00, 0x00, 0x66, 0xc7, 0x06,
    0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0x66,
    0xc7, 0x06, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x66, 0xa1, 0x1c, 0x00, 0x31, 0xc0, 0x8e, 0xd8,
    0x66, 0x31, 0xed, 0x31, 0xdb, 0x66, 0x89, 0xe8, 0x66, 0xc1, 0xe0, 0x10, 0x89, 0xd8, 0x66, 0x89,
    0x87, 0x00, 0x20, 0x83, 0xc3, 0x04, 0x81, 0xfb, 0x00, 0x01, 0x75, 0xe9, 0xb8, 0x00, 0xd0, 0x8e,
    0xd8, 0x66, 0xc7, 0x06, 0x18, 0x00, 0x01, 0x00, 0x00, 0x00, 0x66, 0xa1, 0x1c, 0x00, 0x31, 0xc0,
    0x8e, 0xd8, 0xf4, 0xb8, 0x00, 0xd0, 0x8e, 0xd8, 0x66, 0xa1, 0x1c, 0x00, 0x31, 0xdb, 0x8e, 0xdb,
    0x66, 0x83, 0xf8, 0x01, 0x74, 0x11, 0x66, 0x83, 0xf8, 0x03, 0x74, 0xe7, 0x66, 0xa3, 0x0c, 0x05,
    0xc7, 0x06, 0x00, 0x05, 0xd2, 0xba, 0xf4, 0x31, 0xdb, 0x66, 0x8b, 0x87, 0x00, 0x20, 0x66, 0x3b,
    0x87, 0x00, 0x30, 0x75, 0x1d, 0x83, 0xc3, 0x04, 0x81, 0xfb, 0x00, 0x01, 0x75, 0xeb, 0x66, 0x45,
    0x66, 0x89, 0x2e, 0x14, 0x05, 0x66, 0x83, 0xfd, 0x40, 0x75, 0x88, 0xc7, 0x06, 0x00, 0x05, 0x0d,
    0x60, 0xf4, 0x66, 0x89, 0x2e, 0x18, 0x05, 0xc7, 0x06, 0x00, 0x05, 0xd3, 0xba, 0xf4,
];

/// Copies the guest makes.
pub const ITERATIONS: u32 = 64;
/// The iteration after which pre-copy starts.
pub const PRE_COPY_FROM: u32 = 16;
/// Pre-copy rounds (one per guest iteration) before the stop.
pub const PRE_COPY_ROUNDS: u32 = 3;
/// Bytes per copy, and the engine's burst (bytes per message).
const COPY: usize = 256;
const BURST: u32 = 64;
/// The guest's iteration counter and the iteration a bad copy was seen in.
const ITERATIONS_DONE: u64 = MAILBOX + 0x14;
const PAGE: u64 = 4096;

/// What a migration run showed.
#[derive(Debug)]
pub struct MigrationReport {
    /// "KVM" or "Rust".
    pub guest: &'static str,
    /// The guest's final mailbox word (0x600d: every copy checked).
    pub mailbox: u16,
    /// Iterations the guest completed.
    pub iterations: u32,
    /// The iteration the guest was in when it was stopped on the source.
    pub stopped_at: u32,
    /// Pre-copy rounds made.
    pub rounds: u32,
    /// Device data bytes moved in pre-copy, and at the stop (the container's data).
    pub device_bytes: (u64, u64),
    /// The container's size.
    pub container_bytes: usize,
    /// The engine had a copy under way when the device was saved.
    pub in_flight: bool,
    /// Guest pages copied during pre-copy (after the first full copy), and at the stop.
    pub pages: (u64, u64),
    /// KVM logged the guest's writes (else memory is copied whole at the stop).
    pub kvm_dirty_log: bool,
    /// Interrupts (MSI-X vector 0) the guest's copies raised on the source and on the
    /// destination.
    pub interrupts: (u64, u64),
    /// From the vCPU stopping on the source to the destination vCPU ready to run.
    pub downtime: Duration,
}

impl MigrationReport {
    /// The guest finished every copy on the destination, checked, with one interrupt each.
    pub fn ok(&self) -> bool {
        self.mailbox == GUEST_DONE
            && self.iterations == ITERATIONS
            && self.stopped_at > 0
            && self.stopped_at < ITERATIONS
            && self.interrupts.0 + self.interrupts.1 == u64::from(ITERATIONS)
            && self.interrupts.1 > 0
    }
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} guest migrated at iteration {}/{ITERATIONS} after {} pre-copy rounds: \
             device data {} B pre-copy + {} B at stop (container {} B{}), guest pages {} \
             pre-copy + {} at stop ({}); MSI-X {} on the source + {} on the destination; \
             guest mailbox {:#x}, {} iterations checked; downtime {:.3} ms",
            self.guest,
            self.stopped_at,
            self.rounds,
            self.device_bytes.0,
            self.device_bytes.1,
            self.container_bytes,
            if self.in_flight {
                ", a copy in flight"
            } else {
                ""
            },
            self.pages.0,
            self.pages.1,
            if self.kvm_dirty_log {
                "KVM dirty log + device dirty log"
            } else {
                "device dirty log; all memory at stop"
            },
            self.interrupts.0,
            self.interrupts.1,
            self.mailbox,
            self.iterations,
            self.downtime.as_secs_f64() * 1e3,
        )
    }
}

/// Why a vCPU run returned.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The guest halted at its yield point (mid-loop).
    Yield,
    /// The guest stored a result in the mailbox and halted.
    Done,
}

/// The Rust guest's state: its "registers".
#[derive(Clone, Debug, Default)]
pub struct RustLoop {
    set_up: bool,
    iteration: u32,
    /// A copy was rung and not yet checked.
    pending: bool,
}

/// The guest's CPU, and what moves of it.
enum Cpu {
    Kvm(kvm_ioctls::VcpuFd),
    Rust(RustLoop),
}

enum CpuState {
    Kvm(Box<(kvm_bindings::kvm_regs, kvm_bindings::kvm_sregs)>),
    Rust(RustLoop),
}

impl Cpu {
    /// A vCPU at `CODE` (real mode), or the Rust guest at its start.
    fn boot(vmm: &Vmm) -> Result<Cpu, BoxError> {
        let Some(kvm) = &vmm.kvm else {
            return Ok(Cpu::Rust(RustLoop::default()));
        };
        vmm.memory
            .write_slice(GUEST_LOOP_CODE, GuestAddress(CODE))?;
        let vcpu = kvm.vm.create_vcpu(0)?;
        let mut sregs = vcpu.get_sregs()?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs)?;
        let mut regs = vcpu.get_regs()?;
        regs.rip = CODE;
        regs.rflags = 2;
        vcpu.set_regs(&regs)?;
        Ok(Cpu::Kvm(vcpu))
    }

    /// Runs the guest until it yields or is done.
    fn run(&mut self, vmm: &mut Vmm) -> Result<Stop, BoxError> {
        match self {
            Cpu::Kvm(vcpu) => run_kvm(vcpu, vmm),
            Cpu::Rust(state) => state.run(vmm),
        }
    }

    fn save(&self) -> Result<CpuState, BoxError> {
        Ok(match self {
            Cpu::Kvm(vcpu) => CpuState::Kvm(Box::new((vcpu.get_regs()?, vcpu.get_sregs()?))),
            Cpu::Rust(state) => CpuState::Rust(state.clone()),
        })
    }

    /// The CPU on the destination VMM, in `state`.
    fn restore(vmm: &Vmm, state: CpuState) -> Result<Cpu, BoxError> {
        match (state, &vmm.kvm) {
            (CpuState::Kvm(state), Some(kvm)) => {
                let (regs, sregs) = *state;
                let vcpu = kvm.vm.create_vcpu(0)?;
                vcpu.set_sregs(&sregs)?;
                vcpu.set_regs(&regs)?;
                Ok(Cpu::Kvm(vcpu))
            }
            (CpuState::Rust(state), None) => Ok(Cpu::Rust(state)),
            _ => Err("source and destination run different guests".into()),
        }
    }
}

/// Runs the vCPU until a halt: a yield while the mailbox is clear, the end otherwise.
fn run_kvm(vcpu: &mut kvm_ioctls::VcpuFd, vmm: &mut Vmm) -> Result<Stop, BoxError> {
    use kvm_ioctls::VcpuExit;

    for _ in 0..MAX_EXITS {
        match vcpu.run()? {
            VcpuExit::IoIn(port, data) => vmm.pio_read(port, data),
            VcpuExit::IoOut(port, data) => vmm.pio_write(port, data),
            VcpuExit::MmioRead(addr, data) => vmm.mmio_read(addr, data),
            VcpuExit::MmioWrite(addr, data) => vmm.mmio_write(addr, data),
            VcpuExit::Hlt => {
                let mailbox: u16 = vmm.memory.read_obj(GuestAddress(MAILBOX))?;
                return Ok(if mailbox == 0 {
                    Stop::Yield
                } else {
                    Stop::Done
                });
            }
            other => return Err(format!("unexpected vCPU exit {other:?}").into()),
        }
        vmm.apply_bar_moves();
    }
    Err(format!("the guest did not halt after {MAX_EXITS} exits").into())
}

fn cfg_out(vmm: &mut Vmm, address: u32) {
    vmm.pio_write(CONFIG_ADDRESS, &address.to_le_bytes());
}

fn cfg_in(vmm: &Vmm) -> u32 {
    let mut b = [0u8; 4];
    vmm.pio_read(CONFIG_ADDRESS + 4, &mut b);
    u32::from_le_bytes(b)
}

fn mmio_w32(vmm: &Vmm, addr: u64, v: u32) {
    vmm.mmio_write(addr, &v.to_le_bytes());
}

fn mmio_r32(vmm: &Vmm, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    vmm.mmio_read(addr, &mut b);
    u32::from_le_bytes(b)
}

impl RustLoop {
    /// What `guest_loop.S` does before its loop: find the engine, place BAR0, program and
    /// enable MSI-X vector 0, decoding and bus mastering on, the burst and the copy set.
    fn set_up(vmm: &mut Vmm) -> Result<(), BoxError> {
        let id = u32::from(DmaEngine::DEVICE_ID) << 16 | u32::from(DmaEngine::VENDOR_ID);
        let slot = (0..32u32)
            .find(|slot| {
                cfg_out(vmm, 0x8000_0000 | slot << 11);
                cfg_in(vmm) == id
            })
            .ok_or("no DMA engine on bus 0")?;
        let cfg = 0x8000_0000 | slot << 11;
        cfg_out(vmm, cfg | 0x10);
        vmm.pio_write(CONFIG_ADDRESS + 4, &(BAR0_GUEST as u32).to_le_bytes());
        cfg_out(vmm, cfg | 0x34);
        let mut cap = cfg_in(vmm) & 0xfc;
        while cap != 0 {
            cfg_out(vmm, cfg | cap);
            let header = cfg_in(vmm);
            if header & 0xff == 0x11 {
                break;
            }
            cap = (header >> 8) & 0xfc;
        }
        if cap == 0 {
            return Err("the DMA engine has no MSI-X capability".into());
        }
        cfg_out(vmm, (cfg | cap) + 4);
        let table = u64::from(cfg_in(vmm) & !7);
        cfg_out(vmm, cfg | 0x04);
        vmm.pio_write(CONFIG_ADDRESS + 4, &0x0006u16.to_le_bytes());
        vmm.apply_bar_moves();
        for (i, v) in [0xfee0_0000u32, 0, 0x31, 0].iter().enumerate() {
            mmio_w32(vmm, BAR0_GUEST + table + 4 * i as u64, *v);
        }
        cfg_out(vmm, cfg | cap);
        vmm.pio_write(CONFIG_ADDRESS + 6, &0x8000u16.to_le_bytes());
        vmm.memory.write_obj(slot, GuestAddress(MAILBOX + 4))?;
        for (reg, v) in [
            (DmaEngine::REG_BURST, BURST),
            (DmaEngine::REG_SOURCE, SOURCE as u32),
            (DmaEngine::REG_SOURCE + 4, 0),
            (DmaEngine::REG_DESTINATION, DESTINATION as u32),
            (DmaEngine::REG_DESTINATION + 4, 0),
            (DmaEngine::REG_LENGTH, COPY as u32),
            (DmaEngine::REG_LENGTH + 4, 0),
        ] {
            mmio_w32(vmm, BAR0_GUEST + reg, v);
        }
        // Register writes may be posted; the doorbell (an ioeventfd with KVM) would not wait
        // for them. A read flushes them.
        mmio_r32(vmm, BAR0_GUEST + DmaEngine::REG_STATUS);
        Ok(())
    }

    /// The loop of `guest_loop.S`, from where it stopped to the next yield or the end.
    fn run(&mut self, vmm: &mut Vmm) -> Result<Stop, BoxError> {
        if !self.set_up {
            Self::set_up(vmm)?;
            self.set_up = true;
        }
        let memory = vmm.memory.clone();
        if self.pending {
            let status = loop {
                match mmio_r32(vmm, BAR0_GUEST + DmaEngine::REG_STATUS) {
                    3 => continue,
                    s => break s,
                }
            };
            if status != 1 {
                memory.write_obj(status, GuestAddress(MAILBOX + 12))?;
                memory.write_obj(0xbad2u16, GuestAddress(MAILBOX))?;
                return Ok(Stop::Done);
            }
            let mut src = vec![0u8; COPY];
            let mut dst = vec![0u8; COPY];
            memory.read_slice(&mut src, GuestAddress(SOURCE))?;
            memory.read_slice(&mut dst, GuestAddress(DESTINATION))?;
            if src != dst {
                memory.write_obj(self.iteration, GuestAddress(MAILBOX + 0x18))?;
                memory.write_obj(0xbad3u16, GuestAddress(MAILBOX))?;
                return Ok(Stop::Done);
            }
            self.pending = false;
            self.iteration += 1;
            memory.write_obj(self.iteration, GuestAddress(ITERATIONS_DONE))?;
            if self.iteration == ITERATIONS {
                memory.write_obj(GUEST_DONE, GuestAddress(MAILBOX))?;
                return Ok(Stop::Done);
            }
        }
        for k in (0..COPY as u32).step_by(4) {
            memory.write_obj(
                self.iteration << 16 | k,
                GuestAddress(SOURCE + u64::from(k)),
            )?;
        }
        mmio_w32(vmm, BAR0_GUEST + DmaEngine::REG_DOORBELL, 1);
        mmio_r32(vmm, BAR0_GUEST + DmaEngine::REG_STATUS);
        self.pending = true;
        Ok(Stop::Yield)
    }
}

/// A VMM with the DMA engine of a migrating sample server hot-plugged.
fn migrating_vmm(kvm: bool) -> Result<(ServerHandle, Vmm), BoxError> {
    let (engine, handle) = DmaEngine::with_options(DmaEngineOptions {
        doorbell_ioeventfd: true,
        buffer_bar: false,
    })?;
    let config = ServerConfig {
        migration: Some(MigrationConfig::default()),
        ..ServerConfig::default()
    };
    let server: ServerHandle = Server::new(config, Box::new(engine)).listen_temp()?;
    let mut vmm = Vmm::new(kvm)?;
    vmm.engine = Some(handle);
    vmm.hot_plug(server.socket_path().ok_or("the server has no socket")?)?;
    Ok((server, vmm))
}

/// Turns KVM's dirty log of guest RAM (slot 0) on; false where KVM refuses.
fn kvm_dirty_log_on(vmm: &Vmm) -> bool {
    let Some(kvm) = &vmm.kvm else {
        return false;
    };
    let Ok(host) = vmm.memory.get_host_address(GuestAddress(0)) else {
        return false;
    };
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
        guest_phys_addr: 0,
        memory_size: RAM_SIZE as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: the same mapping of guest RAM as slot 0 has (see `kvm_vm`), with dirty
    // logging on.
    let on = unsafe { kvm.vm.set_user_memory_region(region) };
    on.is_ok() && kvm.vm.get_dirty_log(0, RAM_SIZE).is_ok()
}

/// The guest pages KVM saw written since the last call (and clears its log).
fn kvm_dirty_pages(vmm: &Vmm) -> Result<Vec<u64>, BoxError> {
    let kvm = vmm.kvm.as_ref().ok_or("no KVM VM")?;
    let bitmap = kvm.vm.get_dirty_log(0, RAM_SIZE)?;
    let mut pages = Vec::new();
    for (w, bits) in bitmap.iter().enumerate() {
        for b in 0..64 {
            if bits & (1 << b) != 0 {
                pages.push((w as u64 * 64 + b) * PAGE);
            }
        }
    }
    Ok(pages)
}

/// Copies `pages` (guest addresses) of guest memory from `src` to `dst`; returns how many.
fn copy_pages(
    src: &GuestMemoryMmap,
    dst: &GuestMemoryMmap,
    pages: impl IntoIterator<Item = u64>,
) -> Result<u64, BoxError> {
    let mut buf = vec![0u8; PAGE as usize];
    let mut pages: Vec<u64> = pages.into_iter().collect();
    pages.sort_unstable();
    pages.dedup();
    for &gpa in &pages {
        src.read_slice(&mut buf, GuestAddress(gpa))?;
        dst.write_slice(&buf, GuestAddress(gpa))?;
    }
    Ok(pages.len() as u64)
}

/// All of guest RAM's pages.
fn all_pages() -> impl Iterator<Item = u64> {
    (0..RAM_SIZE as u64).step_by(PAGE as usize)
}

/// The pages dirtied since the last call: the device's report, plus KVM's log (`kvm_log`)
/// or, at the stop without it (`full`), every page.
fn dirty_pages(
    out: &mut Migration<'_>,
    vmm: &Vmm,
    kvm_log: bool,
    full: bool,
) -> Result<Vec<u64>, BoxError> {
    let mut pages: Vec<u64> = out.dirty_report()?.dirty_pages().collect();
    if kvm_log {
        pages.extend(kvm_dirty_pages(vmm)?);
    } else if full {
        pages.extend(all_pages());
    }
    Ok(pages)
}

/// Registers the BAR windows the device's restored state placed on `vmm`'s buses.
fn adopt_bars(vmm: &mut Vmm) -> Result<(), BoxError> {
    let p = vmm.plugged.as_mut().ok_or("nothing plugged")?;
    let bars = lock(&p.device).bars();
    for bar in bars {
        let Some(base) = bar.base else { continue };
        match bar.kind {
            BarKind::Io => {
                let port = u16::try_from(base)?;
                let range = PioRange::new(PioAddress(port), u16::try_from(bar.size)?)?;
                vmm.io.register_pio(range, p.device.clone())?;
            }
            _ => vmm.io.register_mmio(
                MmioRange::new(MmioAddress(base), bar.size)?,
                p.device.clone(),
            )?,
        }
        p.windows.push((bar.kind, base));
    }
    Ok(())
}

/// What the pre-copy rounds moved.
struct PreCopy {
    rounds: u32,
    device_bytes: u64,
    pages: u64,
}

/// Pre-copy rounds while the guest runs: each lets the guest run to its next yield, then
/// moves the device's pre-copy data and the pages dirtied meanwhile.
fn pre_copy(
    cpu: &mut Cpu,
    src: &mut Vmm,
    dst: &Vmm,
    (out, into): (&mut Migration<'_>, &mut Migration<'_>),
    kvm_log: bool,
) -> Result<PreCopy, BoxError> {
    let mut done = PreCopy {
        rounds: 0,
        device_bytes: 0,
        pages: 0,
    };
    copy_pages(&src.memory, &dst.memory, all_pages())?;
    let mut data = Vec::new();
    for _ in 0..PRE_COPY_ROUNDS {
        if cpu.run(src)? == Stop::Done {
            return Err(guest_stopped(src, "during pre-copy"));
        }
        if out.state() == DeviceState::PreCopy {
            data.clear();
            out.reader()?.read_to_end(&mut data)?;
            into.writer()?.write_all(&data)?;
            done.device_bytes += data.len() as u64;
        }
        let pages = dirty_pages(out, src, kvm_log, false)?;
        done.pages += copy_pages(&src.memory, &dst.memory, pages)?;
        done.rounds += 1;
    }
    Ok(done)
}

/// What the stop moved, and how long the guest was stopped.
struct SwitchOver {
    stopped_at: u32,
    device_bytes: u64,
    container_bytes: usize,
    in_flight: bool,
    pages: u64,
    downtime: Duration,
}

/// The stop: the vCPU halts at its next yield and stays stopped; the device is saved, the
/// last dirty pages copied and the registers taken; the destination device is restored,
/// its BAR windows registered and the vCPU created there. Returns the destination's CPU.
fn switch_over(
    cpu: Cpu,
    src: &mut Vmm,
    dst: &mut Vmm,
    (out, into): (&mut Migration<'_>, &mut Migration<'_>),
    kvm_log: bool,
) -> Result<(Cpu, SwitchOver), BoxError> {
    let mut cpu = cpu;
    if cpu.run(src)? == Stop::Done {
        return Err(guest_stopped(src, "during pre-copy"));
    }
    let stopped = Instant::now();
    let (src_dev, dst_dev) = match (&src.plugged, &dst.plugged) {
        (Some(a), Some(b)) => (a.device.clone(), b.device.clone()),
        _ => return Err("a device is not plugged".into()),
    };
    let mut container = Vec::new();
    let device_bytes = lock(&src_dev).save_with(out, &mut container)?;
    let in_flight = src
        .engine
        .as_ref()
        .is_some_and(|e| e.status() == DmaEngineStatus::Busy);
    let pages = dirty_pages(out, src, kvm_log, true)?;
    let pages = copy_pages(&src.memory, &dst.memory, pages)?;
    out.stop_dirty_logging()?;
    let regs = cpu.save()?;
    lock(&dst_dev).restore_with(into, &container[..])?;
    adopt_bars(dst)?;
    let cpu = Cpu::restore(dst, regs)?;
    let downtime = stopped.elapsed();
    Ok((
        cpu,
        SwitchOver {
            stopped_at: src.memory.read_obj(GuestAddress(ITERATIONS_DONE))?,
            device_bytes,
            container_bytes: container.len(),
            in_flight,
            pages,
            downtime,
        },
    ))
}

/// Runs the guest on `vmm` to its end.
fn finish(cpu: &mut Cpu, vmm: &mut Vmm) -> Result<bool, BoxError> {
    for _ in 0..=ITERATIONS {
        if cpu.run(vmm)? == Stop::Done {
            return Ok(true);
        }
    }
    Ok(false)
}

/// MSI-X vector 0's signals on `vmm` since the last call.
fn interrupts(vmm: &Vmm) -> Result<u64, BoxError> {
    let fd = vmm.interrupts.fd(InterruptKind::Msix, 0)?;
    Ok(fd.read().unwrap_or(0))
}

/// The guest stopped early: its mailbox says why.
fn guest_stopped(vmm: &Vmm, when: &str) -> BoxError {
    let word = |at: u64| vmm.memory.read_obj::<u32>(GuestAddress(at)).unwrap_or(0);
    format!(
        "the guest stopped {when}: mailbox {:#x}, iteration {}, status {:#x}, bad copy in \
         iteration {}",
        word(MAILBOX) & 0xffff,
        word(ITERATIONS_DONE),
        word(MAILBOX + 12),
        word(MAILBOX + 0x18),
    )
    .into()
}

/// Runs the migration scenario (see the [module documentation](self)).
pub fn run(kvm: bool) -> Result<MigrationReport, BoxError> {
    let (_server_a, mut src) = migrating_vmm(kvm)?;
    let mut cpu = Cpu::boot(&src)?;
    while src.memory.read_obj::<u32>(GuestAddress(ITERATIONS_DONE))? < PRE_COPY_FROM {
        if cpu.run(&mut src)? == Stop::Done {
            return Err(guest_stopped(&src, "before the migration"));
        }
    }
    let (_server_b, mut dst) = migrating_vmm(kvm)?;
    let (a, b) = match (&src.plugged, &dst.plugged) {
        (Some(a), Some(b)) => (lock(&a.device).device(), lock(&b.device).device()),
        _ => return Err("a device is not plugged".into()),
    };
    let mut out = Migration::new(&a)?;
    let mut into = Migration::new(&b)?;
    into.set_state(DeviceState::Resuming)?;
    if let Some(p) = &src.plugged {
        lock(&p.device).start_dirty_logging(&mut out)?;
    }
    let kvm_log = kvm_dirty_log_on(&src);
    if out.can_reach(DeviceState::PreCopy) {
        out.set_state(DeviceState::PreCopy)?;
    }
    let pre = pre_copy(&mut cpu, &mut src, &dst, (&mut out, &mut into), kvm_log)?;
    let (mut cpu, stop) = switch_over(cpu, &mut src, &mut dst, (&mut out, &mut into), kvm_log)?;
    drop((out, into));
    // The source stays stopped; its detach undoes only this VMM's side.
    src.unplug()?;

    let finished = finish(&mut cpu, &mut dst)?;
    let report = MigrationReport {
        guest: if kvm { "KVM" } else { "Rust" },
        mailbox: dst.memory.read_obj(GuestAddress(MAILBOX))?,
        iterations: dst.memory.read_obj(GuestAddress(ITERATIONS_DONE))?,
        stopped_at: stop.stopped_at,
        rounds: pre.rounds,
        device_bytes: (pre.device_bytes, stop.device_bytes),
        container_bytes: stop.container_bytes,
        in_flight: stop.in_flight,
        pages: (pre.pages, stop.pages),
        kvm_dirty_log: kvm_log,
        interrupts: (interrupts(&src)?, interrupts(&dst)?),
        downtime: stop.downtime,
    };
    if !finished {
        return Err(format!("the guest did not finish: {report}").into());
    }
    dst.unplug()?;
    Ok(report)
}
