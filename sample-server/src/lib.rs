// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A small vfio-user **server** and two sample devices, for testing vfio-user clients.
//!
//! The server speaks the protocol the way libvfio-user does where a client can tell the
//! difference (strict validation, `EINVAL` for nearly every failure, the REGION_INFO `argsz`
//! re-query dance, DMA_READ/DMA_WRITE chunked by the client's `max_data_xfer_size`, a twin
//! socket for its DMA requests when the client offers one), but without a twin socket it
//! queues client commands that arrive while it waits for a DMA reply instead of failing
//! (libvfio-user issue #279).
//!
//! Vocabulary:
//! * a [`Device`] describes regions and IRQs and answers region accesses; it may do DMA and
//!   raise interrupts through the [`DeviceContext`] it is handed;
//! * a [`Server`] owns one device and serves one client at a time, either on a listening
//!   socket ([`Server::listen`]) or on a connected stream ([`Server::serve_stream`]);
//! * a [`Probe`] lets a test look at the server's side: raise an IRQ vector, list DMA maps,
//!   see what the client negotiated, wait for disconnects;
//! * [`ServerConfig`] shapes the VERSION reply and [`Quirks`] make the server misbehave on
//!   purpose; with [`ServerConfig::migration`] set ([`MigrationConfig`]) the server offers
//!   migration v2 and DMA dirty logging for devices that can move their state (both sample
//!   devices can);
//! * a [`wire::RawEndpoint`] is the other way round: one end of a vfio-user stream driven by
//!   hand, for tests and conformance checks that must send or see what a well-behaved peer
//!   never would.
//!
//! The sample devices are [`GpioDevice`] (registers, a sequence checker, two ioeventfds, a
//! 4 MiB scratch BAR and a sparsely mappable BAR) and [`DmaEngine`] (copies guest memory on a doorbell and
//! raises a completion interrupt).
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use vfio_user_sample_server::{GpioDevice, Server, ServerConfig};
//!
//! let (device, gpio) = GpioDevice::new(Default::default()).unwrap();
//! let (client, server_end) = UnixStream::pair().unwrap();
//! let handle = Server::new(ServerConfig::default(), Box::new(device)).serve_stream(server_end);
//! drop(client);
//! handle.join();
//! assert_eq!(gpio.sequence_errors(), 0);
//! ```

#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

mod config;
mod conn;
mod device;
mod devices;
mod dma;
mod irq;
mod memory;
mod migration;
mod pci;
mod server;
mod socket;
#[doc(hidden)]
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod wire;

pub use config::{IrqMasking, MigrationConfig, Quirks, ServerConfig, VersionPayload};
pub use conn::DeviceContext;
pub use device::{
    Device, DeviceInfo, Errno, RegionIoFd, RegionMmap, RegionSpec, ResetReason, IRQ_ERR, IRQ_INTX,
    IRQ_MSI, IRQ_MSIX, IRQ_REQ, PCI_CONFIG_REGION, PCI_NUM_IRQS, PCI_NUM_REGIONS,
};
pub use devices::dma_engine::{DmaEngine, DmaEngineHandle, DmaEngineOptions, DmaEngineStatus};
pub use devices::gpio::{GpioConfig, GpioDevice, GpioHandle};
pub use dma::{DmaAccessMode, DmaMapInfo};
pub use irq::IrqVectorState;
pub use memory::SharedMemory;
pub use pci::ConfigSpace;
pub use server::{ClientInfo, Probe, Server, ServerHandle};
