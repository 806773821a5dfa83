#!/usr/bin/env bash
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Installs the tools the other rust-vmm-ci scripts need, and only those that
# are missing, so a machine that already has them pays nothing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Listed once, not piped into `grep -q`: an early grep exit would hand rustup
# a SIGPIPE, which pipefail reports as "not installed".
installed_components=$(rustup component list --installed)

component_installed() {
    grep -q "^$1" <<<"$installed_components"
}

for component in rustfmt clippy llvm-tools; do
    if component_installed "$component"; then
        echo "install: rustup component $component already present"
    else
        # rustup names the component llvm-tools, with llvm-tools-preview as
        # its older alias; rustfmt and clippy are named as is.
        name="$component"
        [ "$component" = llvm-tools ] && name=llvm-tools-preview
        echo "install: rustup component add $name"
        rustup component add "$name"
    fi
done

if cargo llvm-cov --version >/dev/null 2>&1; then
    echo "install: $(cargo llvm-cov --version) already present"
else
    echo "install: cargo install cargo-llvm-cov --locked"
    cargo install cargo-llvm-cov --locked
fi

# cargo-fuzz builds with the nightly toolchain: without nightly, rust-vmm-ci/fuzz.sh
# skips, and there is nothing to install it for.
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "install: no nightly toolchain; cargo-fuzz not installed (fuzz.sh will skip)"
elif cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "install: $(cargo +nightly fuzz --version) already present"
else
    echo "install: cargo +nightly install cargo-fuzz --locked"
    cargo +nightly install cargo-fuzz --locked
fi
