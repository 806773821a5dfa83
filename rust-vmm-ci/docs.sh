#!/usr/bin/env bash
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Builds the documentation; broken intra-doc links and other rustdoc
# warnings fail.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
