#!/usr/bin/env bash
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Measures line coverage of the client crate and compares it with
# `coverage_score` in coverage_config_x86_64.json, the rust-vmm way: the run
# fails when coverage dropped by more than 0.5 points, and also when it rose
# by more than 0.5, so that the recorded score keeps up with the tests.
#
# Files under any `exclude_path` entry (a comma-separated list of paths
# relative to the repository root) are left out of the measure.
#
# Usage: rust-vmm-ci/coverage.sh [--update]
#   --update  write the measured score into the config instead of comparing.
#
# Needs cargo-llvm-cov and llvm-tools (rust-vmm-ci/install.sh); installs
# nothing itself.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

config=coverage_config_x86_64.json
update=false
case "${1:-}" in
    "") ;;
    --update) update=true ;;
    *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

if ! cargo llvm-cov --version >/dev/null 2>&1; then
    echo "coverage: cargo llvm-cov is missing; run rust-vmm-ci/install.sh" >&2
    exit 1
fi

# One regex, anchored at the repository root, matching every excluded path.
ignore_regex=$(python3 - "$config" "$(pwd -P)" <<'PY'
import json, re, sys
config, root = sys.argv[1], sys.argv[2]
with open(config) as f:
    paths = [p.strip() for p in json.load(f).get("exclude_path", "").split(",")]
paths = [re.escape(p) for p in paths if p]
print("^" + re.escape(root + "/") + "(" + "|".join(paths) + ")" if paths else "")
PY
)

report=$(mktemp)
trap 'rm -f "$report"' EXIT

args=(--workspace --all-features --summary-only --json --output-path "$report")
if [ -n "$ignore_regex" ]; then
    args+=(--ignore-filename-regex "$ignore_regex")
fi
echo "coverage: cargo llvm-cov ${args[*]}"
cargo llvm-cov "${args[@]}"

python3 - "$config" "$report" "$(pwd -P)" "$update" <<'PY'
import json, sys

config_path, report_path, root, update = sys.argv[1:5]
TOLERANCE = 0.5

with open(report_path) as f:
    data = json.load(f)["data"][0]

print("coverage: line coverage per file (covered/lines):")
for entry in sorted(data["files"], key=lambda e: e["filename"]):
    lines = entry["summary"]["lines"]
    name = entry["filename"].removeprefix(root + "/")
    print(f"  {lines['percent']:6.2f}%  {lines['covered']:5}/{lines['count']:<5}  {name}")

totals = data["totals"]["lines"]
if totals["count"] == 0:
    sys.exit("coverage: no instrumented lines were measured")
measured = round(100.0 * totals["covered"] / totals["count"], 2)

with open(config_path) as f:
    config = json.load(f)
recorded = float(config["coverage_score"])

print(f"coverage: measured {measured:.2f}% of lines "
      f"({totals['covered']}/{totals['count']}), recorded score {recorded:.2f}%")

if update == "true":
    config["coverage_score"] = measured
    with open(config_path, "w") as f:
        f.write(json.dumps(config) + "\n")
    print(f"coverage: wrote coverage_score {measured:.2f} to {config_path}")
elif measured < recorded - TOLERANCE:
    sys.exit(f"coverage: coverage dropped: {measured:.2f}% is more than "
             f"{TOLERANCE} below the recorded {recorded:.2f}%; add tests")
elif measured > recorded + TOLERANCE:
    sys.exit(f"coverage: coverage rose to {measured:.2f}%, more than {TOLERANCE} "
             f"above the recorded {recorded:.2f}%; update coverage_score in "
             f"{config_path} (rust-vmm-ci/coverage.sh --update)")
else:
    print(f"coverage: within {TOLERANCE} of the recorded score")
PY
