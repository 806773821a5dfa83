// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest memory for tests now lives in `vfio_user_sample_server::test_support::guest`; this
//! empty module remains only until `common/mod.rs` drops its `pub mod guest;`.
