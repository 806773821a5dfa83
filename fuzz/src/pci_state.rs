// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `pci_state`: a saved [`PciState`] read from arbitrary bytes (serde_json) and restored
//! onto a device discovered as in `pci_config`: the version and identity checks, then the
//! load into the config-space shadow; with mode bit [`UNCHECKED`], the load alone.

use vfio_user_client::fuzzing::{DeviceIdentity, PciConfigShadow};
use vfio_user_client::pci::{Error, PciState};

use super::input::Input;
use super::pci_config::{Device, CONFIG_LEN};

/// Mode bit: load the state without the version and identity checks.
pub const UNCHECKED: u8 = 1;

/// The identity the target gives the device `shadow` was discovered from.
pub(crate) fn identity(device: &Device, shadow: &PciConfigShadow) -> DeviceIdentity {
    let regions = device
        .regions
        .iter()
        .enumerate()
        .filter(|(_, r)| r.0 != 0)
        .map(|(i, r)| (i as u32, r.0, r.1))
        .collect();
    shadow.identity(&device.server[..CONFIG_LEN], vec![1, 1, 1, 1, 1], regions)
}

/// The `pci_state` target.
pub fn pci_state(data: &[u8]) {
    let mut input = Input::new(data);
    let device = Device::read(&mut input);
    let mode = input.u8();
    let json = input.rest();
    let Some(shadow) = device.discover() else {
        return;
    };
    let Ok(state) = serde_json::from_slice::<PciState>(json) else {
        return;
    };
    let text = serde_json::to_vec(&state).expect("a state serialises");
    let back: PciState = serde_json::from_slice(&text).expect("a serialised state parses");
    assert_eq!(back, state, "the state changed through its serialisation");
    let identity = identity(&device, &shadow);
    let mut restored = shadow.clone();
    if mode & UNCHECKED != 0 {
        if restored.load_pci_state(&state).is_ok() {
            settled(&shadow, &restored, &identity, &device.server);
        }
        return;
    }
    let result = restored.restore_pci_state(&identity, &state);
    if state.version() != PciState::VERSION {
        assert!(
            matches!(result, Err(Error::StateVersion { .. })),
            "{result:?}"
        );
    } else if DeviceIdentity::of_state(&state) != identity {
        assert!(
            matches!(result, Err(Error::DifferentDevice { .. })),
            "{result:?}"
        );
        assert!(DeviceIdentity::of_state(&state)
            .difference(&identity)
            .is_some());
    }
    match result {
        Ok(()) => settled(&shadow, &restored, &identity, &device.server),
        Err(e) => assert_eq!(
            restored.pci_state(&identity),
            shadow.pci_state(&identity),
            "a refused state ({e}) changed the shadow"
        ),
    }
}

/// A shadow with a state loaded answers every register, replays, and its own state
/// restores onto the device as it was discovered, giving the same state again.
fn settled(
    discovered: &PciConfigShadow,
    restored: &PciConfigShadow,
    identity: &DeviceIdentity,
    server: &[u8],
) {
    for reg in 0..server.len() / 4 + 2 {
        restored.read(reg, |o| {
            let mut b = [0xff; 4];
            if let Some(s) = server.get(o..o + 4) {
                b.copy_from_slice(s);
            }
            b
        });
    }
    let (msi, msix) = restored.replayed_controls();
    assert!(msi.is_none_or(|c| c.len() == 2));
    assert!(msix.is_none_or(|(at, _)| at + 2 <= server.len()));
    let saved = restored.pci_state(identity);
    let mut again = discovered.clone();
    again
        .restore_pci_state(identity, &saved)
        .expect("a device's own state restores");
    assert_eq!(again.pci_state(identity), saved, "a load is not idempotent");
}
