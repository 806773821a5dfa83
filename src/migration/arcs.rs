// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The migration v2 state machine: the arcs a device takes from one state to another, one at
//! a time, as Linux's `vfio_mig_get_next_state` chooses them (drivers/vfio/vfio_main.c).
//! Pure logic.

use vfio_bindings::bindings::vfio::{
    VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY,
};

use crate::protocol::DeviceState;

use DeviceState::{
    Error as E, PreCopy as Pc, PreCopyP2p as Pcp, Resuming as Res, Running as Run,
    RunningP2p as Rp, Stop as St, StopCopy as Sc,
};

/// The number of states.
const STATES: usize = 8;

/// `FSM[from][to]`: the next state on the way from `from` to `to`, before skipping the states
/// the device does not support. Indexes are the wire values (ERROR 0 ... PRE_COPY_P2P 7).
const FSM: [[DeviceState; STATES]; STATES] = [
    // From ERROR: nowhere (leave it with DEVICE_RESET).
    [E, E, E, E, E, E, E, E],
    // From STOP.
    [E, St, Rp, Sc, Res, Rp, Rp, Rp],
    // From RUNNING.
    [E, Rp, Run, Rp, Rp, Rp, Pc, Rp],
    // From STOP_COPY.
    [E, St, St, Sc, St, St, E, E],
    // From RESUMING.
    [E, St, St, St, Res, St, St, St],
    // From RUNNING_P2P.
    [E, St, Run, St, St, Rp, Run, Pcp],
    // From PRE_COPY.
    [E, Run, Run, Pcp, Run, Run, Pc, Pcp],
    // From PRE_COPY_P2P.
    [E, Rp, Rp, Sc, Rp, Rp, Pc, Pcp],
];

/// The `VFIO_MIGRATION_*` flags a device needs to support `state`; `None` for ERROR, which
/// is never a target.
fn needs(state: DeviceState) -> Option<u64> {
    let stop_copy = u64::from(VFIO_MIGRATION_STOP_COPY);
    let p2p = u64::from(VFIO_MIGRATION_P2P);
    let pre_copy = u64::from(VFIO_MIGRATION_PRE_COPY);
    match state {
        E => None,
        St | Run | Sc | Res => Some(stop_copy),
        Rp => Some(stop_copy | p2p),
        Pc => Some(stop_copy | pre_copy),
        Pcp => Some(stop_copy | p2p | pre_copy),
    }
}

/// Whether a device with migration `flags` supports `state` (never ERROR).
pub(crate) fn supported(state: DeviceState, flags: u64) -> bool {
    needs(state).is_some_and(|n| flags & n == n)
}

fn fsm(from: DeviceState, to: DeviceState) -> DeviceState {
    FSM.get(from as usize)
        .and_then(|row| row.get(to as usize))
        .copied()
        .unwrap_or(E)
}

/// The next state on the way from `from` to `to` for a device with `flags`: the kernel's
/// table, skipping the states the device does not support. `None` when `to` cannot be
/// reached (either state unsupported, or a forbidden arc such as STOP_COPY → PRE_COPY).
pub(crate) fn next_state(from: DeviceState, to: DeviceState, flags: u64) -> Option<DeviceState> {
    if !supported(from, flags) || !supported(to, flags) {
        return None;
    }
    let mut next = fsm(from, to);
    // Bounded: every unsupported state leads to a supported one within the table's size.
    for _ in 0..STATES {
        if next == E || supported(next, flags) {
            break;
        }
        next = fsm(next, to);
    }
    (next != E && supported(next, flags)).then_some(next)
}

/// Every state set on the way from `from` to `to`, `to` last; empty when `from == to`.
/// `None` when `to` cannot be reached from `from` with `flags`.
pub(crate) fn path(from: DeviceState, to: DeviceState, flags: u64) -> Option<Vec<DeviceState>> {
    if !supported(from, flags) || !supported(to, flags) {
        return None;
    }
    let mut steps = Vec::new();
    let mut at = from;
    while at != to {
        if steps.len() >= STATES {
            return None;
        }
        at = next_state(at, to, flags)?;
        steps.push(at);
    }
    Some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOP_COPY: u64 = VFIO_MIGRATION_STOP_COPY as u64;
    const P2P: u64 = VFIO_MIGRATION_P2P as u64;
    const PRE_COPY: u64 = VFIO_MIGRATION_PRE_COPY as u64;
    const FLAG_SETS: [u64; 4] = [
        STOP_COPY,
        STOP_COPY | P2P,
        STOP_COPY | PRE_COPY,
        STOP_COPY | P2P | PRE_COPY,
    ];
    const ALL: [DeviceState; 8] = [E, St, Run, Sc, Res, Rp, Pc, Pcp];

    /// The direct arcs `include/uapi/linux/vfio.h` documents, independently of the table.
    fn documented_arc(from: DeviceState, to: DeviceState) -> bool {
        matches!(
            (from, to),
            (Run, St | Rp | Pc)
                | (St, Run | Sc | Res | Rp)
                | (Sc, St)
                | (Res, St)
                | (Rp, Run | St | Pcp)
                | (Pc, Run | Pcp | Sc)
                | (Pcp, Pc | Rp | Sc)
        )
    }

    #[test]
    fn the_table_uses_wire_values() {
        for s in ALL {
            assert_eq!(DeviceState::from_u32(s as u32), Some(s));
        }
        for (i, row) in FSM.iter().enumerate() {
            // Staying put is a no-op everywhere but ERROR.
            let s = ALL.into_iter().find(|s| *s as usize == i).unwrap();
            assert_eq!(row[i], s, "{s:?}");
        }
    }

    /// Every pair of states with every flag set: a path exists exactly when both ends are
    /// supported and the target is not a pre-copy state seen from STOP_COPY; every step is
    /// a documented arc between supported states; no path passes through RESUMING or
    /// STOP_COPY on the way somewhere else.
    #[test]
    fn every_pair_with_every_flag_set() {
        for flags in FLAG_SETS {
            for from in ALL {
                for to in ALL {
                    let p = path(from, to, flags);
                    let forbidden = from == Sc && matches!(to, Pc | Pcp);
                    let reachable = supported(from, flags) && supported(to, flags) && !forbidden;
                    assert_eq!(p.is_some(), reachable, "{from:?} -> {to:?} flags {flags}");
                    let Some(p) = p else { continue };
                    let mut at = from;
                    for (i, &step) in p.iter().enumerate() {
                        assert!(
                            documented_arc(at, step),
                            "{from:?}->{to:?}: {at:?}->{step:?}"
                        );
                        assert!(supported(step, flags));
                        if i + 1 < p.len() {
                            assert!(!matches!(step, Sc | Res), "{from:?}->{to:?}: {p:?}");
                        }
                        at = step;
                    }
                    assert_eq!(at, to);
                    assert!(p.len() <= 4, "{from:?}->{to:?}: {p:?}");
                }
            }
        }
    }

    /// Paths worked out by hand from the kernel's table.
    #[test]
    fn paths_as_the_kernel_takes_them() {
        let cases: &[(DeviceState, DeviceState, u64, &[DeviceState])] = &[
            (Run, Sc, STOP_COPY, &[St, Sc]),
            (Run, Sc, STOP_COPY | P2P, &[Rp, St, Sc]),
            (Run, Res, STOP_COPY, &[St, Res]),
            (Res, Run, STOP_COPY, &[St, Run]),
            (Res, Run, STOP_COPY | P2P, &[St, Rp, Run]),
            (Sc, Run, STOP_COPY | PRE_COPY, &[St, Run]),
            (Run, Pc, STOP_COPY | PRE_COPY, &[Pc]),
            (Pc, Sc, STOP_COPY | PRE_COPY, &[Sc]),
            (Pc, Sc, STOP_COPY | P2P | PRE_COPY, &[Pcp, Sc]),
            (Pc, St, STOP_COPY | PRE_COPY, &[Run, St]),
            (Pc, St, STOP_COPY | P2P | PRE_COPY, &[Run, Rp, St]),
            (St, Pc, STOP_COPY | PRE_COPY, &[Run, Pc]),
            (St, Pcp, STOP_COPY | P2P | PRE_COPY, &[Rp, Pcp]),
            (Sc, Res, STOP_COPY, &[St, Res]),
            (Pcp, Run, STOP_COPY | P2P | PRE_COPY, &[Rp, Run]),
            (St, St, STOP_COPY, &[]),
        ];
        for &(from, to, flags, want) in cases {
            assert_eq!(
                path(from, to, flags).as_deref(),
                Some(want),
                "{from:?}->{to:?}"
            );
        }
    }

    #[test]
    fn refusals() {
        let all = STOP_COPY | P2P | PRE_COPY;
        assert_eq!(path(Sc, Pc, all), None);
        assert_eq!(path(Sc, Pcp, all), None);
        assert_eq!(path(Run, E, all), None);
        assert_eq!(path(E, Run, all), None);
        assert_eq!(path(Run, Pc, STOP_COPY), None);
        assert_eq!(path(Run, Rp, STOP_COPY | PRE_COPY), None);
        // Without STOP_COPY nothing is supported.
        assert_eq!(path(Run, St, PRE_COPY | P2P), None);
        assert_eq!(next_state(Run, St, 0), None);
    }
}
