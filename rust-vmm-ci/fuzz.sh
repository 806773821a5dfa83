#!/usr/bin/env bash
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Runs every cargo-fuzz target of fuzz/ for a short fixed time, starting from its
# corpus in the repository. New inputs go to a scratch directory, not into the
# corpus; an input that fails is saved under fuzz/artifacts/<target>/ and fails
# the run. (The corpus itself is replayed on stable by tests/fuzz_corpus.rs.)
#
# Needs the nightly toolchain and cargo-fuzz (rust-vmm-ci/install.sh installs
# cargo-fuzz where nightly exists); without either it says so and exits 0.
# Installs nothing itself.
#
# Usage: rust-vmm-ci/fuzz.sh [seconds per target, default 20]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-20}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain; skipped"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing (rust-vmm-ci/install.sh installs it); skipped"
    exit 0
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

cd fuzz
# Safe Rust needs no AddressSanitizer to report a bug (a panic is the finding), and
# without it the build and the runs take about half the time.
fuzz_args=(-O --sanitizer none)
echo "fuzz: cargo +nightly fuzz build ${fuzz_args[*]}"
cargo +nightly fuzz build "${fuzz_args[@]}"

failed=()
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$scratch/$target"
    echo "fuzz: $target for ${seconds}s"
    if cargo +nightly fuzz run "${fuzz_args[@]}" "$target" "$scratch/$target" "corpus/$target" \
        -- -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|new_units_added)' "$scratch/$target.log" \
            | sed "s/^/fuzz: $target: /"
    else
        echo "fuzz: $target FAILED; its log:"
        cat "$scratch/$target.log"
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failing targets: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
