#!/usr/bin/env bash
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Checks formatting, including the Rust code inside doc comments.
#
# `format_code_in_doc_comments` is an unstable rustfmt option: written in a
# rustfmt.toml, stable rustfmt ignores it with a warning, but given as
# `--config` on the command line, stable rustfmt (1.9.0 tested) accepts and
# applies it. Probe that on the rustfmt at hand and fall back to a plain
# `--check` if a future release refuses it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

doc_option="format_code_in_doc_comments=true"
probe_input=$'/// ```\n/// let x=1;\n/// ```\nfn f() {}\n'

if probe_err=$(printf '%s' "$probe_input" \
        | rustfmt --edition 2021 --emit stdout --config "$doc_option" 2>&1 >/dev/null) \
        && [ -z "$probe_err" ]; then
    cargo fmt --all -- --check --config "$doc_option"
else
    echo "fmt: this rustfmt ($(rustfmt --version)) does not accept --config $doc_option:"
    echo "fmt:   ${probe_err:-no message}"
    echo "fmt: checking without formatting code in doc comments"
    cargo fmt --all -- --check
fi
