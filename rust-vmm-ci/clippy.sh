#!/usr/bin/env bash
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Lints every target of every workspace crate; any warning fails, and every
# unsafe block must carry a `// SAFETY:` comment.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo clippy --workspace --all-targets --all-features -- \
    -D warnings -D clippy::undocumented_unsafe_blocks
