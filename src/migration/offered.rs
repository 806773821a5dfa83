// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Whether a server offers DMA dirty logging, asked without starting it.

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
};

use super::{feature, Error, Migration};
use crate::connection;

impl Migration<'_> {
    /// Asks whether the server offers DMA dirty logging: DEVICE_FEATURE PROBE of
    /// DMA_LOGGING_START (with SET) and of DMA_LOGGING_REPORT (with GET), as Linux's
    /// `VFIO_DEVICE_FEATURE_PROBE` asks. Nothing is started.
    ///
    /// `Ok(())` when both are offered; [`Error::LoggingUnsupported`] with the server's error
    /// reply when it refuses either (what
    /// [`start_dirty_logging`](Migration::start_dirty_logging) would then answer); other
    /// errors for a reply that is not an answer to the probe, or a lost connection.
    pub fn probe_dma_logging(&self) -> Result<(), Error> {
        for (feat, op) in [
            (
                VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
                VFIO_DEVICE_FEATURE_SET,
            ),
            (
                VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
                VFIO_DEVICE_FEATURE_GET,
            ),
        ] {
            feature(
                self.device,
                feat,
                VFIO_DEVICE_FEATURE_PROBE | op,
                Vec::new(),
                0,
            )
            .map_err(|e| match e {
                Error::Request {
                    source: source @ connection::Error::Server { .. },
                    ..
                } => Error::LoggingUnsupported(source),
                e => e,
            })?;
        }
        Ok(())
    }
}
