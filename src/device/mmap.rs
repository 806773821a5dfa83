// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Mapping a region's mappable areas from the region fd, with vm-memory's `MmapRegion`.
//!
//! Touching a mapping past the end of its file raises SIGBUS, which a hostile server could
//! use to kill the VMM, so an area is mapped only after checking that the file (a regular
//! file or a memfd) is long enough; an area that fails a check is left to messages. The
//! check cannot stop a server that shrinks its file afterwards. The device's own `read`
//! and `write` therefore always use messages, even inside a mapped area: the mapping is for
//! the VMM to install as a guest memory slot, and the residual risk stays with whoever
//! touches it (a VMM reading it, or KVM on a guest access), as in every VMM that maps a
//! vfio-user region. A future option could require `F_SEAL_SHRINK` on the fd.

use std::fs::File;
use std::sync::Arc;

use vm_memory::mmap::MmapRegion;
use vm_memory::volatile_memory::{VolatileMemory, VolatileSlice};
use vm_memory::FileOffset;

use vfio_bindings::bindings::vfio::vfio_region_sparse_mmap_area;

/// One mapped area of a region: shared memory with the server.
///
/// A VMM installs it as a guest memory slot at the BAR's guest address plus
/// [`MappedArea::offset`]; guest accesses there never reach the server as messages.
#[derive(Debug)]
pub struct MappedArea {
    offset: u64,
    mapping: MmapRegion<()>,
    writable: bool,
}

impl MappedArea {
    /// Offset of the area within its region.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Size of the area in bytes.
    pub fn size(&self) -> u64 {
        self.mapping.size() as u64
    }

    /// Host address of the mapping (for a hypervisor memory slot).
    pub fn host_addr(&self) -> *mut u8 {
        self.mapping.as_ptr()
    }

    /// Whether the mapping is writable (the region has the WRITE flag).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The mapping, for volatile access from the VMM.
    pub fn mapping(&self) -> &MmapRegion<()> {
        &self.mapping
    }

    /// The whole area as a volatile slice.
    pub fn as_volatile_slice(&self) -> VolatileSlice<'_> {
        self.mapping.as_volatile_slice()
    }
}

/// Why an area was not mapped.
#[derive(Debug)]
pub(crate) enum MapRefusal {
    Unaligned,
    BeyondRegion,
    BeyondFile { file_len: u64 },
    NoAccess,
    Mmap(vm_memory::mmap::MmapRegionError),
    Stat(std::io::Error),
}

impl std::fmt::Display for MapRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapRefusal::Unaligned => f.write_str("not aligned to the host page size"),
            MapRefusal::BeyondRegion => f.write_str("extends past the end of the region"),
            MapRefusal::BeyondFile { file_len } => {
                write!(
                    f,
                    "extends past the end of the region fd ({file_len:#x} bytes)"
                )
            }
            MapRefusal::NoAccess => f.write_str("the region is neither readable nor writable"),
            MapRefusal::Mmap(e) => write!(f, "mmap failed: {e}"),
            MapRefusal::Stat(e) => write!(f, "fstat of the region fd failed: {e}"),
        }
    }
}

/// Maps `area` of a region of `region_size` bytes whose data starts at `region_offset` in
/// `file`.
///
/// Refuses areas that are not page-aligned, that extend past the region, and (for regular
/// files and memfds) that extend past the end of the file: touching such a mapping would
/// raise SIGBUS in the VMM.
pub(crate) fn map_area(
    file: &Arc<File>,
    region_offset: u64,
    region_size: u64,
    area: vfio_region_sparse_mmap_area,
    readable: bool,
    writable: bool,
    page_size: u64,
) -> Result<MappedArea, MapRefusal> {
    let mask = page_size.saturating_sub(1);
    let area_end = area
        .offset
        .checked_add(area.size)
        .ok_or(MapRefusal::BeyondRegion)?;
    if area_end > region_size {
        return Err(MapRefusal::BeyondRegion);
    }
    let file_start = region_offset
        .checked_add(area.offset)
        .ok_or(MapRefusal::BeyondRegion)?;
    if area.size == 0 || area.size & mask != 0 || file_start & mask != 0 {
        return Err(MapRefusal::Unaligned);
    }
    let file_end = file_start
        .checked_add(area.size)
        .ok_or(MapRefusal::BeyondRegion)?;
    let meta = file.metadata().map_err(MapRefusal::Stat)?;
    if meta.file_type().is_file() && file_end > meta.len() {
        return Err(MapRefusal::BeyondFile {
            file_len: meta.len(),
        });
    }
    let mut prot = 0;
    if readable {
        prot |= libc::PROT_READ;
    }
    if writable {
        prot |= libc::PROT_WRITE;
    }
    if prot == 0 {
        return Err(MapRefusal::NoAccess);
    }
    let size = usize::try_from(area.size).map_err(|_| MapRefusal::BeyondRegion)?;
    let mapping = MmapRegion::build(
        Some(FileOffset::from_arc(Arc::clone(file), file_start)),
        size,
        prot,
        libc::MAP_SHARED,
    )
    .map_err(MapRefusal::Mmap)?;
    Ok(MappedArea {
        offset: area.offset,
        mapping,
        writable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    const PAGE: u64 = 4096;

    fn file(len: u64) -> (TempFile, Arc<File>) {
        let t = TempFile::new().unwrap();
        t.as_file().set_len(len).unwrap();
        let f = Arc::new(t.as_file().try_clone().unwrap());
        (t, f)
    }

    fn area(offset: u64, size: u64) -> vfio_region_sparse_mmap_area {
        vfio_region_sparse_mmap_area { offset, size }
    }

    fn refusal(r: Result<MappedArea, MapRefusal>) -> String {
        r.map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn areas_that_cannot_be_mapped_safely_are_refused() {
        let (_t, f) = file(4 * PAGE);
        let m = |region_offset, region_size, a, r, w| {
            map_area(&f, region_offset, region_size, a, r, w, PAGE)
        };
        assert!(refusal(m(0, 2 * PAGE, area(PAGE, 2 * PAGE), true, true))
            .contains("past the end of the region"));
        assert!(refusal(m(0, 2 * PAGE, area(u64::MAX, 2), true, true))
            .contains("past the end of the region"));
        assert!(refusal(m(u64::MAX, 2 * PAGE, area(PAGE, PAGE), true, true))
            .contains("past the end of the region"));
        assert!(refusal(m(0, 2 * PAGE, area(0, 100), true, true)).contains("aligned"));
        assert!(refusal(m(8, 2 * PAGE, area(0, PAGE), true, true)).contains("aligned"));
        assert!(refusal(m(0, 2 * PAGE, area(0, 0), true, true)).contains("aligned"));
        assert_eq!(
            refusal(m(3 * PAGE, 2 * PAGE, area(0, 2 * PAGE), true, true)),
            "extends past the end of the region fd (0x4000 bytes)"
        );
        assert!(refusal(m(0, 2 * PAGE, area(0, PAGE), false, false)).contains("neither readable"));
    }

    #[test]
    fn a_mapping_shares_the_file() {
        let (t, f) = file(4 * PAGE);
        let a = map_area(&f, PAGE, 2 * PAGE, area(PAGE, PAGE), true, false, PAGE).unwrap();
        assert_eq!((a.offset(), a.size(), a.writable()), (PAGE, PAGE, false));
        std::os::unix::fs::FileExt::write_all_at(t.as_file(), b"shared", 2 * PAGE).unwrap();
        let mut got = [0u8; 6];
        a.as_volatile_slice().copy_to(&mut got[..]);
        assert_eq!(&got, b"shared");
        assert_eq!(a.mapping().size() as u64, PAGE);
    }

    #[test]
    fn refusal_texts() {
        let e = MapRefusal::Mmap(vm_memory::mmap::MmapRegionError::MapFixed).to_string();
        assert!(e.starts_with("mmap failed"), "{e}");
        let e = MapRefusal::Stat(std::io::Error::from_raw_os_error(libc::EBADF)).to_string();
        assert!(e.starts_with("fstat of the region fd failed"), "{e}");
    }
}
