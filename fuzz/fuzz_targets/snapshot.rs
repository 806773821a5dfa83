// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfio_user_client_fuzz::snapshot::snapshot(data));
