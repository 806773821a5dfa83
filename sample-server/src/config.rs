// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the server advertises and how it misbehaves on request.

use vfio_user_client::protocol::IoFdsLayout;

/// The body of the VERSION reply after `major` and `minor`.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum VersionPayload {
    /// `{"capabilities":{...}}` built from [`ServerConfig::max_msg_fds`],
    /// [`ServerConfig::max_data_xfer_size`], [`ServerConfig::max_dma_maps`] and
    /// [`ServerConfig::pgsizes`] (a `None` omits the key), plus `write_multiple` when
    /// [`ServerConfig::write_multiple`] is set, `migration` when [`ServerConfig::migration`]
    /// is set and the device is migratable, and `twin_socket` when granted,
    /// NUL-terminated.
    #[default]
    Standard,
    /// This JSON value, serialised and NUL-terminated, whatever it holds.
    Json(serde_json::Value),
    /// These bytes exactly: empty for no JSON at all, no NUL, invalid UTF-8, ...
    Raw(Vec<u8>),
}

/// Deliberate protocol violations, all off by default, for testing a client's defences.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Reply to commands that set `No_reply` (old rust-vmm servers did).
    pub reply_to_no_reply: bool,
    /// Error replies carry the errno but not the Error flag.
    pub error_without_error_flag: bool,
    /// Error replies have type "command" with the Error flag (rust-vmm issue #143).
    pub error_as_command_type: bool,
    /// Read every message but never answer any, VERSION included.
    pub never_reply: bool,
    /// Answer VERSION, then read every message but never answer.
    pub never_reply_after_version: bool,
    /// Answer VERSION, then close the connection.
    pub close_after_version: bool,
}

/// How the server treats DEVICE_SET_IRQS MASK and UNMASK, and what DEVICE_GET_IRQ_INFO
/// says about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IrqMasking {
    /// Masking works on INTx, MSI and MSI-X: a masked vector raised is left pending (the
    /// MSI-X pending bit array shows it) and delivered on unmask. IRQ_INFO reports
    /// `EVENTFD | MASKABLE` for those indexes (ERR and REQ take TRIGGER only).
    #[default]
    Implemented,
    /// libvfio-user (and so SPDK): MASK and UNMASK are accepted and do nothing, and IRQ_INFO
    /// reports `EVENTFD` only. A vector fires whatever the client asked.
    Ignored,
    /// The kernel's vfio-pci: INTx masks as in [`IrqMasking::Implemented`] (and reports
    /// `MASKABLE`); MASK and UNMASK of MSI and MSI-X are refused with `EINVAL`, and those
    /// indexes report `EVENTFD` only.
    Rejected,
}

impl IrqMasking {
    /// Whether MASK and UNMASK of IRQ index `index` take effect (and IRQ_INFO reports
    /// `MASKABLE` for it).
    pub fn masks(self, index: u32) -> bool {
        use crate::device::{IRQ_INTX, IRQ_MSI, IRQ_MSIX};
        match self {
            IrqMasking::Implemented => matches!(index, IRQ_INTX | IRQ_MSI | IRQ_MSIX),
            IrqMasking::Ignored => false,
            IrqMasking::Rejected => index == IRQ_INTX,
        }
    }
}

/// Migration v2 and DMA dirty logging, when the server offers them
/// ([`ServerConfig::migration`]).
///
/// The server then advertises `migration` (`pgsize`, `max_bitmap_size`) in its VERSION reply
/// and answers DEVICE_FEATURE, MIG_DATA_READ and MIG_DATA_WRITE for devices that can move
/// their state ([`Device::migratable`](crate::Device::migratable)); without it every
/// DEVICE_FEATURE and MIG_DATA_* request is `EINVAL`, as libvfio-user answers a device that
/// set up no migration.
///
/// The sample devices' migration data is a sequence of records: `tag` u16, `flags` u16 (0),
/// `len` u32, then `len` bytes, every integer little-endian. Each part the server hands out
/// (pre-copy data, then the state) starts with a header record (tag 0: `VUSD`, format
/// version u16 1, device kind u16); the destination reads the parts in order, a later record
/// replacing an earlier one. See [`GpioDevice`](crate::GpioDevice) and
/// [`DmaEngine`](crate::DmaEngine) for their records. Data that does not load (another
/// device kind, a record missing or cut short) fails the RESUMING → STOP arc with `EINVAL`
/// and leaves the device in ERROR, unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationConfig {
    /// The dirty-tracking page size: advertised as `migration.pgsize`, required of the client's
    /// own `migration.pgsize` (a different one fails VERSION with `EINVAL`, as libvfio-user
    /// fails it), and the only page size DMA_LOGGING_START and _REPORT accept. Default: the
    /// host page size.
    pub pgsize: u64,
    /// Advertised `migration.max_bitmap_size`: the largest DMA_LOGGING_REPORT bitmap answered,
    /// in bytes; a larger request is `EINVAL` (default 1 MiB).
    pub max_bitmap_size: u64,
    /// The MIGRATION feature reports `PRE_COPY` besides `STOP_COPY` and PRE_COPY is reachable
    /// (default `true`, as libvfio-user).
    pub pre_copy: bool,
    /// Offer the DMA_LOGGING_START / _STOP / _REPORT features (default `true`); off, they are
    /// `EINVAL`, PROBE included.
    pub dma_logging: bool,
    /// libvfio-user's restriction: in STOP and STOP_COPY only REGION_READ/WRITE,
    /// DEVICE_FEATURE and MIG_DATA_READ are served, every other command is `EINVAL`
    /// (default `true`).
    pub restrict_stopped: bool,
    /// Pad MIG_DATA_READ replies to the size asked for, as libvfio-user does (default
    /// `true`); off, a reply carries exactly the bytes returned, as the spec shapes it.
    pub pad_data_reads: bool,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            pgsize: crate::memory::page_size(),
            max_bitmap_size: 1 << 20,
            pre_copy: true,
            dma_logging: true,
            restrict_stopped: true,
            pad_data_reads: true,
        }
    }
}

/// The server's configuration.
///
/// The defaults match libvfio-user: version `0.min(client minor, 2)`, capabilities
/// `{"max_msg_fds":8,"max_data_xfer_size":1048576}`, 48-byte REGION_IO_FDS entries; except
/// that interrupt masking works (and is advertised, see [`IrqMasking`]) unless
/// [`ServerConfig::irq_masking`] says otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// Major version replied (and required of the client).
    pub major: u16,
    /// Minor version replied; `None` replies `min(client minor, 2)`.
    pub minor: Option<u16>,
    /// Advertised `max_msg_fds`; `None` omits the key. Also the most fds accepted per
    /// message (at most 32; the spec default 1 when omitted).
    pub max_msg_fds: Option<u64>,
    /// Advertised `max_data_xfer_size`; `None` omits the key. Also the largest region
    /// access accepted (1 MiB when omitted).
    pub max_data_xfer_size: Option<u64>,
    /// Extra keys merged into the `capabilities` object of a [`VersionPayload::Standard`]
    /// reply (e.g. `"write_multiple": true`, or a wrongly typed value).
    pub extra_capabilities: serde_json::Map<String, serde_json::Value>,
    /// How the VERSION reply's JSON is produced.
    pub version_payload: VersionPayload,
    /// Largest message accepted (header included); larger ones are drained and refused
    /// with `EINVAL` before anything is allocated.
    pub max_msg_size: u32,
    /// Advertised `max_dma_maps`; `None` omits the key. Also the most windows accepted at
    /// once (libvfio-user's default of 1,000,000 when omitted); one more is `ENOSPC`.
    pub max_dma_maps: Option<u64>,
    /// Advertised `pgsizes`; `None` omits the key.
    pub pgsizes: Option<u64>,
    /// Grant twin-socket mode to a client that offers it (and accepts fds), as libvfio-user
    /// does: the server's DMA requests then go over a second socket.
    pub twin_socket: bool,
    /// Read as many waiting messages as fit with one `recvmsg` (the default). Off, each
    /// message is read as libvfio-user reads it: the header with one call (its fds come
    /// with it), then the body with another; what a real server pays per message.
    pub read_ahead: bool,
    /// Advertise `write_multiple` and accept REGION_WRITE_MULTI, as QEMU's client can use
    /// (default `false`: libvfio-user offers neither and refuses the command with `EINVAL`,
    /// as this server then does).
    pub write_multiple: bool,
    /// Refuse DMA_MAP without an fd (`EINVAL`), like servers that need shared guest memory
    /// (SPDK ignores such maps; refusing makes the difference visible).
    pub refuse_fdless_maps: bool,
    /// Refuse DMA_MAP whose address, size or file offset is not a multiple of 2 MiB
    /// (`EINVAL`), like SPDK's hugepage requirement.
    pub require_2mib_alignment: bool,
    /// Map fd-backed windows into the server (the default). Off, they are checked and
    /// recorded but neither mapped nor kept, as libvfio-user without a DMA controller; device
    /// DMA to them fails with `EFAULT`. For map/unmap benchmarks beyond the kernel's limit on
    /// mappings per process (`vm.max_map_count`, 65,530 by default).
    pub mmap_dma_windows: bool,
    /// Entry layout of DEVICE_GET_REGION_IO_FDS replies: libvfio-user's 48-byte entries
    /// (the default, as the real server sends), the spec's 40-byte ones, or any other stride
    /// (common fields only, zero-padded; at least 28 bytes are written).
    pub io_fds_layout: IoFdsLayout,
    /// What SET_IRQS MASK and UNMASK do (default: they work, and IRQ_INFO says so).
    pub irq_masking: IrqMasking,
    /// DEVICE_RESET also disconnects every interrupt eventfd, as a device whose reset takes
    /// its interrupt setup down with it (default `false`: libvfio-user keeps them).
    pub reset_clears_irqs: bool,
    /// Migration v2 and DMA logging, offered with `Some` (e.g.
    /// `Some(MigrationConfig::default())`, as libvfio-user's sample server offers them).
    /// Default `None`, as [`ServerConfig::write_multiple`]: no `migration` capability, and
    /// DEVICE_FEATURE, MIG_DATA_READ and MIG_DATA_WRITE are `EINVAL`.
    pub migration: Option<MigrationConfig>,
    /// Deliberate misbehaviour.
    pub quirks: Quirks,
}

/// libvfio-user's default limit on DMA windows.
pub(crate) const DEFAULT_MAX_DMA_MAPS: u64 = 1_000_000;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            major: 0,
            minor: None,
            max_msg_fds: Some(8),
            max_data_xfer_size: Some(1 << 20),
            extra_capabilities: serde_json::Map::new(),
            version_payload: VersionPayload::Standard,
            max_msg_size: (1 << 20) + 64,
            max_dma_maps: None,
            pgsizes: None,
            twin_socket: true,
            read_ahead: true,
            write_multiple: false,
            refuse_fdless_maps: false,
            require_2mib_alignment: false,
            mmap_dma_windows: true,
            io_fds_layout: IoFdsLayout::LibVfioUser,
            irq_masking: IrqMasking::default(),
            reset_clears_irqs: false,
            migration: None,
            quirks: Quirks::default(),
        }
    }
}

impl ServerConfig {
    /// The JSON-and-NUL bytes of the VERSION reply; `twin_fd_index` when twin-socket mode is
    /// granted.
    pub(crate) fn version_json_bytes(
        &self,
        twin_fd_index: Option<usize>,
        migration: Option<&MigrationConfig>,
    ) -> Vec<u8> {
        let value = match &self.version_payload {
            VersionPayload::Raw(bytes) => return bytes.clone(),
            VersionPayload::Json(v) => v.clone(),
            VersionPayload::Standard => {
                let mut caps = serde_json::Map::new();
                if let Some(n) = self.max_msg_fds {
                    caps.insert("max_msg_fds".into(), n.into());
                }
                if let Some(n) = self.max_data_xfer_size {
                    caps.insert("max_data_xfer_size".into(), n.into());
                }
                if let Some(n) = self.max_dma_maps {
                    caps.insert("max_dma_maps".into(), n.into());
                }
                if let Some(n) = self.pgsizes {
                    caps.insert("pgsizes".into(), n.into());
                }
                if self.write_multiple {
                    caps.insert("write_multiple".into(), true.into());
                }
                if let Some(m) = migration {
                    caps.insert(
                        "migration".into(),
                        serde_json::json!({
                            "pgsize": m.pgsize,
                            "max_bitmap_size": m.max_bitmap_size,
                        }),
                    );
                }
                if let Some(i) = twin_fd_index {
                    caps.insert(
                        "twin_socket".into(),
                        serde_json::json!({"supported": true, "fd_index": i}),
                    );
                }
                for (k, v) in &self.extra_capabilities {
                    caps.insert(k.clone(), v.clone());
                }
                serde_json::json!({ "capabilities": caps })
            }
        };
        let mut bytes = value.to_string().into_bytes();
        bytes.push(0);
        bytes
    }

    /// Most fds accepted in one message.
    pub(crate) fn recv_max_fds(&self) -> usize {
        let n = self.max_msg_fds.unwrap_or(1);
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(crate::socket::MAX_RECV_FDS)
    }

    /// Largest region access accepted.
    pub(crate) fn recv_max_data(&self) -> u64 {
        self.max_data_xfer_size.unwrap_or(1 << 20)
    }

    /// Most DMA windows accepted at once.
    pub(crate) fn dma_map_limit(&self) -> u64 {
        self.max_dma_maps.unwrap_or(DEFAULT_MAX_DMA_MAPS)
    }
}
