#!/usr/bin/env bash
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Runs every rust-vmm check in order and prints how long each took. A failing
# check does not stop the later ones, so one run shows every problem, test
# output included; the script exits non-zero if any check failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

steps=(fmt clippy docs tests demo coverage fuzz)
failed=()
summary=()

for step in "${steps[@]}"; do
    echo "==> run_all: $step"
    start=$SECONDS
    if bash "rust-vmm-ci/$step.sh"; then
        status=ok
    else
        status="FAILED (exit $?)"
        failed+=("$step")
    fi
    summary+=("$(printf '%-9s %5ss  %s' "$step" "$((SECONDS - start))" "$status")")
    echo "<== run_all: $step: $status after $((SECONDS - start))s"
done

echo "==> run_all: summary"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "run_all: failing checks: ${failed[*]}" >&2
    exit 1
fi
