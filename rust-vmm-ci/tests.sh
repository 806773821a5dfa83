#!/usr/bin/env bash
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Runs the tests in debug, then in release, where overflow checks are off and
# timing differs. The debug run is the README's test command, so a green run
# here means that command passes too.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "tests: cargo test --workspace"
cargo test --workspace

echo "tests: cargo test --workspace --all-features --release"
cargo test --workspace --all-features --release
