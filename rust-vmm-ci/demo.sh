#!/usr/bin/env bash
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Runs the README's main command: vfio-user-probe's demo against the built-in
# sample server (info, a conformance check that must pass, a short benchmark).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "demo: cargo run --release -p vfio-user-probe -- demo"
cargo run --release -p vfio-user-probe -- demo
