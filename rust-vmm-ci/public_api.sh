#!/usr/bin/env bash
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Counts (and with --list, lists) the client crate's public API from rustdoc's
# JSON output, which needs the nightly toolchain. Not part of CI's pass/fail:
# where nightly is missing it says so and exits 0.
#
# Usage: rust-vmm-ci/public_api.sh [--list]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "public-api: no nightly toolchain; skipped"
    exit 0
fi
cargo +nightly rustdoc -q -p vfio-user-client --lib --all-features -- \
    -Z unstable-options --output-format json
python3 rust-vmm-ci/public_api.py target/doc/vfio_user_client.json "$@"
