// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A [vfio-user] client for [rust-vmm] based virtual machine monitors. It attaches a PCI
//! device that another process emulates, such as SPDK's NVMe controller, a libvfio-user
//! device, QEMU's `x-vfio-user-server` or a Rust server, and drives it over a Unix socket.
//!
//! Nothing the server sends can crash, hang or desynchronise the VMM. Every reply is
//! validated, every wait has a deadline, and a dead server fails every waiter at once.
//!
//! [vfio-user]: https://www.qemu.org/docs/master/interop/vfio-user.html
//! [rust-vmm]: https://github.com/rust-vmm
//!
//! # Attaching a device
//!
//! A VMM does five things with a device: it attaches it, registers its subscriber with its
//! `EventManager`, puts it on its buses, routes its interrupts, and later detaches it.
//!
//! 1. **Attach.** [`VfioUserPciDevice::attach_with_subscriber`] takes the server's socket,
//!    the guest memory (any vm-memory [`GuestAddressSpace`](vm_memory::GuestAddressSpace)),
//!    the VMM's [`InterruptProvider`](pci::InterruptProvider) and [`AttachOptions`]. It
//!    connects and negotiates, discovers the device, and resets it. It shares guest memory
//!    with the server: regions backed by a shared file are mapped by fd, and the server
//!    reaches the others through DMA_READ / DMA_WRITE, which this crate serves. It places
//!    the BARs and connects INTx, ERR and REQ.
//! 2. **Event manager.** The returned [`PciSubscriber`](pci::PciSubscriber) goes into the
//!    VMM's [`EventManager`](event_manager::EventManager). It serves the connection (the
//!    server's requests, queued messages, hang-ups) and INTx end of interrupt, and it never
//!    waits for the server. [`VfioUserPciDevice::attach`] runs it on a thread of its own
//!    instead.
//! 3. **Buses.** The device implements vm-device's `MutDeviceMmio` and `MutDevicePio` for
//!    its BAR windows, and [`PciConfig`](pci::PciConfig) for config cycles. The VMM puts it
//!    in a `Mutex`, which vm-device's blanket impls turn into what an `IoManager` holds. It
//!    registers each BAR window at the BAR's base. When a config write returns a
//!    [`BarReprogramming`](pci::BarReprogramming), it moves the window and calls
//!    [`move_bar`](pci::PciConfig::move_bar).
//! 4. **Interrupts.** The [`InterruptProvider`](pci::InterruptProvider) hands out the VMM's
//!    irqfds and hears how the guest routes and masks each MSI / MSI-X vector. The device
//!    emulates the MSI-X table and does the masking itself, at the server when the server
//!    can mask and locally when it cannot.
//! 5. **Detach.** [`VfioUserPciDevice::detach`] disconnects the interrupts, unmaps guest
//!    memory and closes the connection; the VMM then removes the subscriber. If the server
//!    goes away first, the device is *lost*: guest reads return all ones, writes are
//!    dropped, and [`VfioUserPciDevice::event`] is signalled once.
//!
//! ```
//! use std::path::Path;
//! use std::sync::{Arc, Mutex};
//!
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! use vfio_user_client::pci::{InterruptKind, InterruptProvider, PciConfig};
//! use vfio_user_client::{AttachOptions, VfioUserPciDevice};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::EventFd;
//!
//! /// The VMM's interrupt routing; a KVM VMM returns its irqfds here.
//! struct Irqfds;
//!
//! impl InterruptProvider for Irqfds {
//!     fn eventfd(&self, _kind: InterruptKind, _vector: u32) -> Option<Arc<EventFd>> {
//!         None // leaves the vector unconnected
//!     }
//! }
//!
//! fn hot_plug(socket: &Path) -> Result<(), Box<dyn std::error::Error>> {
//!     let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(
//!         GuestAddress(0),
//!         64 << 20,
//!     )])?);
//!     let (device, subscriber) = VfioUserPciDevice::attach_with_subscriber(
//!         socket,
//!         memory,
//!         Arc::new(Irqfds),
//!         &AttachOptions::default(),
//!     )?;
//!     // The VMM's event thread runs `events.run()` in a loop.
//!     let mut events = EventManager::<Box<dyn MutEventSubscriber + Send>>::new()?;
//!     let id = events.add_subscriber(Box::new(subscriber));
//!
//!     // On the buses: `device.clone()` at each BAR's base, config cycles to `PciConfig`.
//!     let device = Arc::new(Mutex::new(device));
//!     let vendor_and_device = device.lock().unwrap().read_config_register(0);
//!     println!("{vendor_and_device:#010x}");
//! #   assert_eq!(vendor_and_device, 0x0dc8_494f);
//!
//!     // Unplug: off the buses, detach, and the subscriber out of the event manager.
//!     let device = Arc::try_unwrap(device)
//!         .map_err(|_| "still on a bus")?
//!         .into_inner()?;
//!     device.detach()?;
//!     events.remove_subscriber(id)?;
//!     Ok(())
//! }
//! #
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #     use vfio_user_sample_server::{GpioDevice, Server, ServerConfig};
//! #     let (gpio, _) = GpioDevice::new(Default::default())?;
//! #     let server = Server::new(ServerConfig::default(), Box::new(gpio)).listen_temp()?;
//! #     hot_plug(server.socket_path().ok_or("no socket")?)
//! # }
//! ```
//!
//! The repository's `examples/vmm/` is a complete VMM built this way, with a KVM guest.
//!
//! # Modules
//!
//! Each module builds on the ones above it:
//!
//! | module | what it holds |
//! |---|---|
//! | [`protocol`] | The wire format: the message header, a request and a reply type per command, region capability chains, and the values only vfio-user defines. No I/O. VFIO ABI values (region and IRQ indexes, flags) come from `vfio_bindings::bindings::vfio`. |
//! | [`negotiate`] | The VERSION exchange: our [`Offer`], and the server's answer turned into [`Capabilities`]. |
//! | [`connection`] | [`Connection`]: one negotiated connection. It offers requests with deadlines, pipelined requests, messages without a reply, the handler for server requests, and disconnect notification. Its [`ConnectionSubscriber`] runs in an event manager. |
//! | [`device`] | [`VfioUserDevice`]: the device behind a connection. It covers discovery, region access, mapped areas, I/O fds, SET_IRQS and reset; [`DeviceOptions`] tunes it. |
//! | [`dma`] | [`DmaMapper`]: guest memory shared with the server (DMA_MAP / DMA_UNMAP), and the server's DMA_READ / DMA_WRITE served from it. |
//! | [`migration`] | [`Migration`](migration::Migration): migration v2 over a [`VfioUserDevice`] (states, device data, DMA dirty logging). |
//! | [`pci`] | [`VfioUserPciDevice`]: the device on a VMM's PCI bus, with [`AttachOptions`]. |
//!
//! Most VMMs need only [`pci`]. Tools, and VMMs without PCI, can use [`Connection`],
//! [`VfioUserDevice`] and [`DmaMapper`] directly. The architecture is described in
//! `docs/DESIGN.md`.
//!
//! # Vocabulary
//!
//! * **Server**: the process that emulates the device and listens on a Unix socket.
//! * **Connection**: one socket connection to a server, after the VERSION handshake. Each
//!   side's **capabilities** say what it can receive (fds and bytes per message, DMA
//!   windows, page sizes). They are fixed for the life of the connection.
//! * **Request**: a message we send. A request either waits for its reply
//!   ([`Connection::request`]), is sent now and its reply collected later
//!   ([`Connection::send_request`] returns a [`PendingReply`](connection::PendingReply) for
//!   [`Connection::wait`] or [`Connection::wait_all`]), or is sent with `No_reply`, so that
//!   nothing waits ([`Connection::send_no_reply`]). Every wait has a deadline: the **reply
//!   timeout** of [`ConnectOptions`], or one given per call.
//! * **Posted write**: a region write sent with `No_reply`
//!   ([`VfioUserDevice::write_posted`]). The socket keeps it in order with later requests.
//!   It is used only when no region is mappable, because an access through a mapping could
//!   overtake it.
//! * **Server request**: a message the server sends us, namely DMA_READ or DMA_WRITE. The
//!   connection's request handler answers it (the [`DmaMapper`]'s), on whichever thread is
//!   reading the socket.
//! * **Twin socket**: a second socket that the server grants in VERSION for its own
//!   requests, so that they never interleave with our requests and replies on the main
//!   socket. It is offered by default ([`Offer`]).
//! * **Subscriber**: the event-manager side of a connection ([`ConnectionSubscriber`], or
//!   the PCI device's [`PciSubscriber`](pci::PciSubscriber), which wraps it). It reads when
//!   no caller is waiting, writes queued messages, serves the twin socket and notices a
//!   hang-up.
//! * **Region**: a numbered part of the device, such as BARs 0–5, the expansion ROM (6) and
//!   config space (7). Regions are accessed by messages. Their **mappable areas** are mapped
//!   from the fd the server sends, for the VMM to install as guest memory.
//! * **BAR**: a region seen as a window on the VMM's memory or I/O bus. The VMM or the
//!   guest places it. The **config-space shadow** answers what the VMM owns (BARs, MSI,
//!   MSI-X control) without a round trip.
//! * **IRQ index and vector**: INTx, MSI, MSI-X, ERR and REQ, and the vectors of each. A
//!   vector is connected to an eventfd with SET_IRQS. **Masking** happens at the server when
//!   IRQ_INFO reports it maskable, and is emulated by the device otherwise.
//! * Region and IRQ **indexes and flags** are VFIO's, from `vfio_bindings::bindings::vfio`
//!   (`VFIO_PCI_CONFIG_REGION_INDEX`, `VFIO_PCI_MSIX_IRQ_INDEX`, ...); this crate does not
//!   repeat them.
//! * **I/O fds**: ioeventfds that the server offers for offsets of a region
//!   ([`VfioUserDevice::region_io_fds`]), for the VMM to register with its hypervisor.
//! * **DMA window**: a range of the server's DMA address space backed by guest memory. It is
//!   mapped with the region's fd when guest memory is a shared file mapping, and without an
//!   fd otherwise. Maps and unmaps are pipelined in a **transaction** and checked before
//!   they are sent.
//!
//! # Errors
//!
//! Each layer has its own error type: [`connection::Error`], [`negotiate::NegotiateError`],
//! [`device::Error`], [`dma::Error`] and [`pci::Error`]. The crate-level [`Error`] has one
//! variant per layer. The migration layer's [`migration::Error`] is returned as it is. All
//! are `#[non_exhaustive]`.
//!
//! * **Refusals before sending** cost no round trip and leave the connection usable.
//!   Examples are a region index the device lacks, an access past a region's end, or a DMA
//!   window that is not page-aligned or overlaps another. Each error names the values
//!   involved.
//! * **The server's answers** are in [`connection::Error`]:
//!   * `Server`: an error reply, with the server's errno;
//!   * `Timeout`: the deadline passed; the connection stays usable, and the late reply is
//!     dropped;
//!   * `BadReply` or `Decode`: a malformed reply;
//!   * `Disconnected`: the connection is gone, with its
//!     [`DisconnectReason`](connection::DisconnectReason); every later request fails at
//!     once.
//! * **Two questions work on any of them**, through the [`ConnectionCause`] trait:
//!   [`server_errno`](ConnectionCause::server_errno) returns the server's errno when the
//!   error was an error reply, and [`is_disconnected`](ConnectionCause::is_disconnected)
//!   says whether a new connection is needed. [`connection::Error`] answers both itself;
//!   the other errors answer from the connection errors they carry.
//! * **Guest accesses cannot fail.** A BAR or config read that fails returns all ones, and
//!   a write that fails is dropped. The error is logged and counted
//!   ([`VfioUserPciDevice::error_count`], [`VfioUserPciDevice::last_error`]), and a lost
//!   connection marks the device lost.

#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod connection;
pub mod device;
pub mod dma;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod migration;
pub mod negotiate;
pub mod pci;
pub mod protocol;
mod sync;

pub use connection::{ConnectOptions, Connection, ConnectionSubscriber};
pub use device::{DeviceOptions, VfioUserDevice};
pub use dma::DmaMapper;
pub use error::{ConnectionCause, Error};
pub use negotiate::{Capabilities, Offer};
pub use pci::{AttachOptions, VfioUserPciDevice};

/// The README's code blocks, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
