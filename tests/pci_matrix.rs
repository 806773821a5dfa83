// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The hostile-server matrix at the PCI layer (issue 12, section 5).
//!
//! A [`Relay`] stands between `VfioUserPciDevice` and the sample GPIO server and breaks one
//! reply per case. A clean run is recorded first: it names every reply the attach and run
//! paths see, and the step of the script (attach, config read and write, BAR read and
//! write, MSI-X enable, detach) each belongs to. Then, for each step and each reply kind in
//! it, the first such reply is
//!
//! * cut by the end of the stream after every byte offset (for the first reply of each kind
//!   in the whole run, and the first REGION_INFO reply with capabilities), or after a few
//!   telling offsets (in the header, at the payload's start, middle and last byte) for
//!   later ones;
//! * given a wrong id, a wrong command, the Error flag (errno EIO, and errno 0);
//! * made 8 bytes or 2 MiB too long, 1 byte too short, or emptied;
//! * sent with two stray fds;
//! * dropped (silence), or sent after the request timed out (late).
//!
//! Every case must end in an error, or in one of the clean successes the protocol allows
//! ([`allowed_success`]); within [`STEP_BOUND`] for the faulted step; with no panic on any
//! thread; and with the process's fd count back where it started. After a run step's fault:
//!
//! * that leaves the framing intact, the stream is in step: the next request (a config
//!   read) works and the rest of the script runs clean; after a late reply, once the
//!   connection is healthy again (it waits for the reply);
//! * that leaves a request unanswered for good (silence, a wrong id), the connection is
//!   unresponsive and fails everything later at once ([`overdue`]): nothing waits a second
//!   reply timeout;
//! * that ends the stream, the device is lost. An end of stream in attach is a disconnect.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use vfio_user_client::connection::Health;
use vfio_user_client::pci::{
    AttachOptions, BarPlacement, Error as PciError, PciConfig, VfioUserPciDevice,
};
use vfio_user_client::protocol::{Command, Header};
use vfio_user_client::{ConnectOptions, Connection, ConnectionCause};
use vfio_user_sample_server::test_support::guest::guest_memory;
use vfio_user_sample_server::test_support::pci::{
    cfg_write, find_cap, fired_within, open_fds, Irqs,
};
use vfio_user_sample_server::test_support::relay::{Fault, Injection, Log, Relay};
use vfio_user_sample_server::{GpioDevice, Server, ServerConfig};
use vm_device::bus::MmioAddress;
use vm_device::MutDeviceMmio;

/// The reply timeout (and handshake deadline) of every case.
const REPLY_TIMEOUT: Duration = Duration::from_millis(300);
/// The longest a faulted step may take: one reply timeout and some scheduling slack, but
/// less than two timeouts, so that a step that waits twice is caught. Unloaded, the slack
/// measured is under 10 ms; 290 ms leaves room for two loaded cores and a debug build.
const STEP_BOUND: Duration = REPLY_TIMEOUT
    .saturating_mul(2)
    .saturating_sub(Duration::from_millis(10));
/// A request held back (not sent) fails within this.
const FAIL_FAST: Duration = Duration::from_millis(100);
/// How late a late reply comes: past the deadline, so its request has timed out.
const LATE: Duration = REPLY_TIMEOUT.saturating_add(Duration::from_millis(100));
/// How long after a late reply is due the connection may take to become healthy again.
const RECOVERY: Duration = Duration::from_secs(2);
/// How long the process's fds may take to come back after a case (threads ending).
const FD_SETTLE: Duration = Duration::from_secs(2);

const BAR0_BASE: u64 = 0xc000_0000;
const BAR4_BASE: u64 = 0xc001_0000;
const CONFIG_ID: u32 = (GpioDevice::DEVICE_ID as u32) << 16 | GpioDevice::VENDOR_ID as u32;
const EIO: u32 = libc::EIO as u32;
/// More than the client accepts in one message (1 MiB of data plus 64 KiB of head room).
const HUGE: usize = 2 << 20;

/// The steps of the script, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Attach,
    ConfigRead,
    ConfigWrite,
    BarRead,
    BarWrite,
    MsixEnable,
    Detach,
}

const STEPS: [Step; 7] = [
    Step::Attach,
    Step::ConfigRead,
    Step::ConfigWrite,
    Step::BarRead,
    Step::BarWrite,
    Step::MsixEnable,
    Step::Detach,
];

/// How a step ended.
#[derive(Debug)]
enum Outcome {
    Ok,
    /// The step failed (an error returned, an error counted, all ones read, or the device
    /// lost); the text says how.
    Failed(String),
}

/// What one run of the script saw.
#[derive(Debug, Default)]
struct Run {
    /// Each step reached, how it ended and how long it took.
    steps: Vec<(Step, Outcome, Duration)>,
    /// The result of the read made right after the faulted step, if one was made, and
    /// how long it took.
    next_request: Option<(Outcome, Duration)>,
    /// The relay's log index at the end of each step (for the recording).
    marks: Vec<usize>,
    /// Whether a failed attach said the connection was lost.
    attach_disconnected: Option<bool>,
    /// The connection's health right after the faulted run step.
    health: Option<Health>,
    /// Whether the connection became healthy again after a late reply.
    recovered: Option<bool>,
    /// The longest step.
    longest: Duration,
}

/// A device attached through the relay, and what the script checks it with.
struct Attached {
    dev: VfioUserPciDevice,
    errors: u64,
}

impl Attached {
    /// The outcome of a guest access that returned `ok`: a failure when it did not, when
    /// the device counted an error, or when it was lost.
    fn judge(&mut self, ok: bool) -> Outcome {
        let errors = self.dev.error_count();
        let new_errors = errors - self.errors;
        self.errors = errors;
        if ok && new_errors == 0 && !self.dev.is_lost() {
            return Outcome::Ok;
        }
        Outcome::Failed(format!(
            "access ok {ok}, {new_errors} new errors, lost {}, last error: {}",
            self.dev.is_lost(),
            self.dev
                .last_error()
                .map_or_else(|| "none".into(), |e| e.to_string())
        ))
    }

    fn bar0_read(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.mmio_read(MmioAddress(BAR0_BASE), offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn run_step(&mut self, step: Step) -> Outcome {
        match step {
            Step::ConfigRead => {
                let ok = self.dev.read_config_register(0) == CONFIG_ID;
                self.judge(ok)
            }
            Step::ConfigWrite => {
                // Memory decoding and bus mastering, as a driver does first.
                cfg_write(&mut self.dev, 0x04, &0x0006u16.to_le_bytes());
                self.judge(true)
            }
            Step::BarRead => {
                let ok = self.bar0_read(GpioDevice::REG_ID) == GpioDevice::ID;
                self.judge(ok)
            }
            Step::BarWrite => {
                let v = 0x1234_5678u32.to_le_bytes();
                self.dev
                    .mmio_write(MmioAddress(BAR0_BASE), GpioDevice::REG_OUTPUT, &v);
                self.judge(true)
            }
            Step::MsixEnable => self.enable_msix(),
            Step::Attach | Step::Detach => unreachable!("not a guest access"),
        }
    }

    /// Vector 0 programmed and unmasked, then MSI-X Enable set.
    fn enable_msix(&mut self) -> Outcome {
        // Config space is read through the server; a failed read shows here as a missing
        // capability.
        let Some(cap) = find_cap(&mut self.dev, 0x11) else {
            return self.judge(false);
        };
        let table = BAR4_BASE;
        for (at, v) in [(0, 0xfee0_0000u32), (4, 0), (8, 0x40), (12, 0)] {
            self.dev
                .mmio_write(MmioAddress(table), at, &v.to_le_bytes());
        }
        cfg_write(&mut self.dev, cap + 3, &[0x80]);
        self.judge(true)
    }
}

fn options() -> AttachOptions {
    AttachOptions {
        connect: ConnectOptions {
            handshake_timeout: REPLY_TIMEOUT,
            reply_timeout: REPLY_TIMEOUT,
            ..ConnectOptions::default()
        },
        bars: BarPlacement::Fixed(vec![(0, BAR0_BASE), (4, BAR4_BASE)]),
        ..AttachOptions::default()
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// Runs the script against the relay. After the step `faulted` (if any), unless the device
/// is lost, the connection's health is noted and one config read checks that the stream is
/// still in step; after a late reply, that read waits until the reply came.
fn run_script(relay: &Relay, faulted: Option<(Step, Fault)>) -> Run {
    let mut run = Run::default();
    let irqs = Irqs::new();
    let (attached, took) = timed(|| {
        VfioUserPciDevice::attach(
            relay.path(),
            guest_memory(1 << 20),
            irqs.clone(),
            &options(),
        )
    });
    let dev = match attached {
        Ok(dev) => dev,
        Err(e) => {
            run.attach_disconnected = Some(e.is_disconnected());
            run.steps
                .push((Step::Attach, Outcome::Failed(describe(&e)), took));
            run.longest = took;
            return run;
        }
    };
    run.steps.push((Step::Attach, Outcome::Ok, took));
    run.marks.push(relay.log().replies.len());
    let mut a = Attached { dev, errors: 0 };
    for step in &STEPS[1..STEPS.len() - 1] {
        let (outcome, took) = timed(|| a.run_step(*step));
        let fault = faulted.filter(|(s, _)| s == step).map(|(_, f)| f);
        let check_next = fault.is_some() && !a.dev.is_lost();
        run.steps.push((*step, outcome, took));
        if check_next {
            let device = a.dev.device();
            let conn = device.connection();
            run.health = Some(conn.health());
            if let Some(Fault::Late(late)) = fault {
                run.recovered = Some(healthy_within(conn, late + RECOVERY));
            }
            // A config read: it reaches the server whatever the command register says.
            let (ok, took) = timed(|| a.dev.read_config_register(0) == CONFIG_ID);
            run.next_request = Some((a.judge(ok), took));
        }
        run.marks.push(relay.log().replies.len());
    }
    let (detached, took) = timed(|| a.dev.detach());
    let outcome = match detached {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Failed(describe(&e)),
    };
    run.steps.push((Step::Detach, outcome, took));
    run.marks.push(relay.log().replies.len());
    drop(irqs);
    run.longest = run.steps.iter().map(|s| s.2).max().unwrap_or_default();
    run
}

fn describe(e: &PciError) -> String {
    format!("{e} (disconnected: {})", e.is_disconnected())
}

fn new_server() -> Server {
    let (device, _) = GpioDevice::new(Default::default()).expect("GPIO device");
    Server::new(ServerConfig::default(), Box::new(device))
}

/// One reply to aim at: the `nth` reply to `command`, met in `step`.
#[derive(Clone, Copy, Debug)]
struct Target {
    command: Command,
    nth: usize,
    step: Step,
    size: usize,
    /// EOF after every byte offset (else after a few).
    every_offset: bool,
    /// A REGION_INFO reply with capabilities.
    caps: bool,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{} #{} in {:?} ({} bytes)",
            self.command.name(),
            if self.caps { " (+caps)" } else { "" },
            self.nth,
            self.step,
            self.size
        )
    }
}

/// The clean run: the replies it saw, and the step each belongs to.
fn record() -> Vec<Target> {
    let relay = Relay::start(new_server(), None);
    let run = run_script(&relay, None);
    let log = relay.finish();
    for (step, outcome, _) in &run.steps {
        assert!(
            matches!(outcome, Outcome::Ok),
            "clean run: {step:?} {outcome:?}"
        );
    }
    let targets = targets(&log, &run.marks);
    // Every kind the attach and run paths see must be aimed at: a change that makes the
    // script miss one (no reset, no MSI-X) shrinks the matrix, and should say so.
    // (DEVICE_GET_REGION_IO_FDS is not used by the PCI layer.)
    for command in [
        Command::Version,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetIrqInfo,
        Command::DeviceReset,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceSetIrqs,
    ] {
        assert!(
            targets.iter().any(|t| t.command == command),
            "the clean run saw no {command} reply"
        );
    }
    assert!(targets.iter().any(|t| t.caps), "no REGION_INFO with caps");
    targets
}

/// For each step and each kind of reply in it, the first one; the first of each kind in
/// the whole run, and the first REGION_INFO reply with capabilities, get EOF at every
/// offset.
fn targets(log: &Log, marks: &[usize]) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    let mut start = 0;
    for (step, &end) in STEPS.iter().zip(marks) {
        for p in &log.replies[start..end] {
            let command = Command::from_u16(p.command).expect("a known command");
            let caps = command == Command::DeviceGetRegionInfo && p.size > Header::SIZE + 32;
            if out
                .iter()
                .any(|t| t.step == *step && t.command == command && t.caps == caps)
            {
                continue;
            }
            let every_offset = !out.iter().any(|t| t.command == command && t.caps == caps);
            out.push(Target {
                command,
                nth: p.nth,
                step: *step,
                size: p.size,
                every_offset,
                caps,
            });
        }
        start = end;
    }
    out
}

/// The faults tried on `t`.
fn faults(t: &Target) -> Vec<Fault> {
    let mut v = vec![
        Fault::WrongId,
        Fault::WrongCommand,
        Fault::ErrorFlag(EIO),
        Fault::ErrorFlag(0),
        Fault::Oversize(8),
        Fault::Oversize(HUGE),
        Fault::StrayFds(2),
        Fault::Silence,
        Fault::Late(LATE),
    ];
    let payload = t.size - Header::SIZE;
    if payload > 0 {
        v.push(Fault::Undersize(1));
    }
    if payload > 1 {
        v.push(Fault::Undersize(payload));
    }
    let offsets: Vec<usize> = if t.every_offset {
        (0..t.size).collect()
    } else {
        // The header's start, middle and end, the payload's start and middle, the last byte.
        let mut o = vec![0, 1, Header::SIZE / 2, Header::SIZE - 1, Header::SIZE];
        o.extend([(Header::SIZE + t.size) / 2, t.size - 1]);
        o.retain(|&n| n < t.size);
        o.sort_unstable();
        o.dedup();
        o
    };
    v.extend(offsets.into_iter().map(Fault::EofAt));
    v
}

/// The clean successes the protocol allows:
///
/// * stray fds: nothing to refuse once they are closed (the fd count shows they are);
/// * bytes past the reply's structure, except where the request fixes the reply's size
///   (REGION_READ data): VFIO structures grow through `argsz`, and the decoders ignore what
///   follows the part they know, as the kernel's VFIO does;
/// * the end of the stream during detach: a server that is gone has dropped the device's
///   interrupts and DMA windows itself, so detach has nothing left to undo and says `Ok`
///   (its documented behaviour).
fn allowed_success(t: &Target, fault: Fault) -> bool {
    match fault {
        Fault::StrayFds(_) => true,
        Fault::Oversize(n) => n < HUGE && t.command != Command::RegionRead,
        Fault::EofAt(_) => t.step == Step::Detach,
        _ => false,
    }
}

/// Whether the fault leaves the stream's framing intact (the connection stays up).
fn keeps_framing(fault: Fault) -> bool {
    !matches!(fault, Fault::EofAt(_))
}

/// Whether `fault` leaves a request unanswered for good (its reply never comes, or never
/// with its id): the connection is then unresponsive, and holds every later request back,
/// failing it at once, so that nothing waits a second reply timeout.
fn overdue(fault: Fault) -> bool {
    matches!(fault, Fault::Silence | Fault::WrongId)
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on every thread (the library's event loop, the relay, the server).
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Waits on the connection's health eventfd until it is healthy; `false` after `timeout`.
fn healthy_within(conn: &Connection, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while conn.health() != Health::Healthy {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        fired_within(conn.health_event(), left);
    }
    true
}

/// The fds come back within [`FD_SETTLE`] (threads of the case may still be ending).
fn fds_settle(before: usize) -> Result<(), String> {
    let deadline = Instant::now() + FD_SETTLE;
    loop {
        let now = open_fds();
        if now == before {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{before} fds before, {now} after"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs one case; `Ok` has its longest step, `Err` says what went wrong.
fn case(t: &Target, fault: Fault) -> Result<Duration, String> {
    let fds = open_fds();
    let panics = PANICS.load(Ordering::SeqCst);
    let injection = Injection {
        command: t.command,
        nth: t.nth,
        fault,
    };
    let relay = Relay::start(new_server(), Some(injection));
    let run = run_script(&relay, Some((t.step, fault)));
    let log = relay.finish();
    let mut problems = Vec::new();
    if log.faulted.is_none() {
        problems.push("the faulted reply never came".to_string());
    }
    problems.extend(judge(t, fault, &run));
    if PANICS.load(Ordering::SeqCst) != panics {
        problems.push("a thread panicked".into());
    }
    if let Err(e) = fds_settle(fds) {
        problems.push(format!("fds leaked: {e}"));
    }
    if problems.is_empty() {
        Ok(run.longest)
    } else {
        Err(format!(
            "{}\n    steps: {:?}",
            problems.join("; "),
            run.steps
        ))
    }
}

/// What is wrong with `run`, given the fault.
fn judge(t: &Target, fault: Fault, run: &Run) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(at) = run.steps.iter().position(|(s, _, _)| *s == t.step) else {
        return vec![format!("{:?} never ran", t.step)];
    };
    for (step, outcome, _) in &run.steps[..at] {
        if let Outcome::Failed(why) = outcome {
            problems.push(format!("{step:?} before the fault failed: {why}"));
        }
    }
    let (step, outcome, took) = &run.steps[at];
    if *took > STEP_BOUND {
        problems.push(format!("{step:?} took {took:?}"));
    }
    // What came after: the extra request, then the rest of the script.
    let mut later: Vec<(String, &Outcome, Duration)> = Vec::new();
    if let Some((outcome, took)) = &run.next_request {
        later.push(("the next request".into(), outcome, *took));
    }
    later.extend(
        run.steps[at + 1..]
            .iter()
            .map(|(s, o, took)| (format!("{s:?}"), o, *took)),
    );
    for (what, _, took) in &later {
        if *took > STEP_BOUND {
            problems.push(format!("{what} (after the fault) took {took:?}"));
        }
    }
    let failed = |(what, outcome, _): &(String, &Outcome, Duration)| match outcome {
        Outcome::Ok => None,
        Outcome::Failed(why) => Some(format!("{what} failed: {why}")),
    };
    let run_step = !matches!(t.step, Step::Attach | Step::Detach);
    if matches!(outcome, Outcome::Ok) {
        if !allowed_success(t, fault) {
            problems.push(format!("{step:?} succeeded"));
        }
        problems.extend(later.iter().filter_map(failed));
    } else if !keeps_framing(fault) {
        if t.step == Step::Attach && run.attach_disconnected != Some(true) {
            problems.push("attach did not report the end of the stream as a disconnect".into());
        }
        if run_step && run.next_request.is_some() {
            problems.push("the device outlived the end of the stream".into());
        }
    } else if run_step && run.next_request.is_none() {
        problems.push("the device was lost".into());
    } else if overdue(fault) {
        if run_step && !matches!(run.health, Some(Health::Unresponsive(_))) {
            problems.push(format!("health after the fault: {:?}", run.health));
        }
        for (what, outcome, took) in &later {
            if matches!(outcome, Outcome::Ok) || *took >= FAIL_FAST {
                problems.push(format!("{what} was not held back ({took:?})"));
            }
        }
    } else {
        if matches!(fault, Fault::Late(_)) && run_step && run.recovered != Some(true) {
            problems.push("the late reply did not make the connection healthy".into());
        }
        problems.extend(later.iter().filter_map(failed));
    }
    problems
}

fn kind_label(t: &Target) -> String {
    format!(
        "{}{}",
        t.command.name(),
        if t.caps { " (+caps)" } else { "" }
    )
}

const FAULT_LABELS: [&str; 9] = [
    "EOF", "id", "command", "error", "over", "under", "fds", "silence", "late",
];

fn fault_label(f: Fault) -> &'static str {
    let i = match f {
        Fault::EofAt(_) => 0,
        Fault::WrongId => 1,
        Fault::WrongCommand => 2,
        Fault::ErrorFlag(_) => 3,
        Fault::Oversize(_) => 4,
        Fault::Undersize(_) => 5,
        Fault::StrayFds(_) => 6,
        Fault::Silence => 7,
        Fault::Late(_) => 8,
    };
    FAULT_LABELS[i]
}

#[test]
fn hostile_server_matrix() {
    count_panics();
    let started = Instant::now();
    let targets = record();
    let mut failures = Vec::new();
    // Cases per kind and fault, for the summary.
    let mut table: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut cases = 0;
    let mut longest = Duration::ZERO;
    for t in &targets {
        for fault in faults(t) {
            cases += 1;
            *table
                .entry(kind_label(t))
                .or_default()
                .entry(fault_label(fault))
                .or_default() += 1;
            match case(t, fault) {
                Ok(took) => longest = longest.max(took),
                Err(e) => failures.push(format!("{t} / {fault}: {e}")),
            }
        }
    }
    println!(
        "hostile-server matrix: {} replies aimed at, {cases} cases in {:?}, longest step {longest:?}",
        targets.len(),
        started.elapsed()
    );
    for t in &targets {
        println!("  {t}");
    }
    println!(
        "  {:<30} {}",
        "cases",
        FAULT_LABELS.map(|l| format!("{l:>8}")).join("")
    );
    for (kind, faults) in &table {
        let row = FAULT_LABELS.map(|l| format!("{:>8}", faults.get(l).copied().unwrap_or(0)));
        println!("  {kind:<30} {}", row.join(""));
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
