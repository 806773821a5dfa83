// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! DMA dirty logging: DMA_LOGGING_START over the DMA windows, DMA_LOGGING_REPORT merged with
//! the client's own [`DirtyLog`], DMA_LOGGING_STOP.

use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    vfio_device_feature_dma_logging_range, VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_START, VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_SET,
};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};

use super::{bad_feature, feature, Error, Migration};
use crate::connection::{self, PendingReply};
use crate::dma::{DirtyLog, DmaMapper, DmaMapping, DmaRegion};
use crate::protocol::{Command, DeviceFeature, DmaLoggingReport, DmaLoggingStart, Header};

/// Reports in flight at once.
const PIPELINE: usize = 16;
const BITS: u64 = 64;

/// One range of guest memory with its dirty bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyRange {
    /// First IOVA of the range (page aligned), as the server sees it.
    pub iova: u64,
    /// Guest-physical address of `iova`.
    pub gpa: u64,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// Bit `i % 64` of word `i / 64` set: page `i` (at `gpa + i * page_size`) is dirty; the
    /// layout of `KVM_GET_DIRTY_LOG`.
    pub bitmap: Vec<u64>,
}

/// What [`Migration::dirty_report`] returns: the pages the server reported dirty (through
/// its mappings of guest memory) and the pages the client wrote for it (DMA_WRITE), one
/// bitmap per range of DMA windows that are contiguous in both IOVA and guest-physical
/// space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    page_size: u64,
    ranges: Vec<DirtyRange>,
}

impl DirtyBitmap {
    /// The page size each bit stands for (the negotiated migration page size).
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The ranges, by IOVA.
    pub fn ranges(&self) -> &[DirtyRange] {
        &self.ranges
    }

    /// Whether the page holding guest-physical address `gpa` is dirty.
    pub fn is_dirty(&self, gpa: u64) -> bool {
        self.ranges.iter().any(|r| {
            gpa.checked_sub(r.gpa)
                .filter(|off| *off < r.len)
                .map(|off| off / self.page_size)
                .is_some_and(|page| bit(&r.bitmap, page))
        })
    }

    /// The number of dirty pages.
    pub fn count(&self) -> u64 {
        self.ranges
            .iter()
            .flat_map(|r| r.bitmap.iter())
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    /// The guest-physical address of every dirty page, range by range.
    pub fn dirty_pages(&self) -> impl Iterator<Item = u64> + '_ {
        let ps = self.page_size;
        self.ranges.iter().flat_map(move |r| {
            r.bitmap.iter().enumerate().flat_map(move |(w, &bits)| {
                Ones(bits).map(move |b| r.gpa + (w as u64 * BITS + b) * ps)
            })
        })
    }
}

#[cfg(feature = "fuzzing")]
impl DirtyBitmap {
    /// A bitmap of `ranges` at `page_size`.
    pub(crate) fn new(page_size: u64, ranges: Vec<DirtyRange>) -> DirtyBitmap {
        DirtyBitmap { page_size, ranges }
    }
}

impl DirtyBitmap {
    /// Marks every dirty page in the dirty bitmaps of `memory`'s regions (vm-memory's
    /// [`Bitmap`], e.g. `GuestMemoryMmap<AtomicBitmap>`), where a VMM's own dirty tracking
    /// already looks. Returns the number of pages marked; pages outside `memory` are skipped.
    pub fn mark_guest_memory<M: GuestMemoryBackend>(&self, memory: &M) -> u64 {
        let len = usize::try_from(self.page_size).unwrap_or(usize::MAX);
        let mut marked = 0;
        for gpa in self.dirty_pages() {
            if let Some((region, at)) = memory.to_region_addr(GuestAddress(gpa)) {
                let offset = usize::try_from(at.raw_value()).unwrap_or(usize::MAX);
                region.bitmap().mark_dirty(offset, len);
                marked += 1;
            }
        }
        marked
    }
}

/// The set bits of a word, lowest first.
struct Ones(u64);

impl Iterator for Ones {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        (self.0 != 0).then(|| {
            let b = u64::from(self.0.trailing_zeros());
            self.0 &= self.0 - 1;
            b
        })
    }
}

fn bit(bitmap: &[u64], page: u64) -> bool {
    usize::try_from(page / BITS)
        .ok()
        .and_then(|w| bitmap.get(w))
        .is_some_and(|w| w & (1 << (page % BITS)) != 0)
}

/// Dirty logging in progress.
#[derive(Debug)]
pub(super) struct Logging {
    page_size: u64,
    /// Where report bitmaps are received.
    scratch: Vec<u8>,
    /// `(iova, gpa, len)`, page aligned, by IOVA.
    ranges: Vec<(u64, u64, u64)>,
    log: Arc<DirtyLog>,
}

/// The windows as page-aligned ranges, merged where contiguous in IOVA and guest-physical
/// space alike.
fn ranges(mut maps: Vec<DmaMapping>, page_size: u64) -> Vec<(u64, u64, u64)> {
    maps.sort_by_key(|m| m.iova);
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for m in maps {
        let start = m.iova - m.iova % page_size;
        let end = m.end().saturating_add(page_size - 1) / page_size * page_size;
        let gpa = m.gpa.saturating_sub(m.iova - start);
        if let Some(last) = out.last_mut() {
            let last_end = last.0.saturating_add(last.2);
            if start <= last_end && gpa.wrapping_sub(start) == last.1.wrapping_sub(last.0) {
                last.2 = last.2.max(end - last.0);
                continue;
            }
        }
        out.push((start, gpa, end - start));
    }
    out
}

impl Migration<'_> {
    /// The largest bitmap of one DMA_LOGGING_REPORT reply: the smaller `max_bitmap_size`
    /// of ours and the server's, bounded by our receive limit, in whole words.
    fn max_bitmap(&self) -> u64 {
        let conn = self.device.connection();
        let ours = conn
            .offer()
            .migration
            .map_or(u64::MAX, |m| m.max_bitmap_size);
        let theirs = conn
            .capabilities()
            .migration
            .map_or(u64::MAX, |m| m.max_bitmap_size);
        let overhead =
            (Header::SIZE + DeviceFeature::HEAD_SIZE + DmaLoggingReport::HEAD_SIZE) as u64;
        let recv = u64::from(conn.max_recv_size()).saturating_sub(overhead);
        (ours.min(theirs).min(recv) / 8 * 8).max(8)
    }

    /// The negotiated migration page size.
    pub fn page_size(&self) -> u64 {
        let conn = self.device.connection();
        conn.capabilities()
            .migration
            .map_or(crate::negotiate::MIN_PAGE_SIZE, |m| m.pgsize)
    }

    /// Starts DMA dirty logging (DMA_LOGGING_START) over the windows `mapper` holds now, at
    /// the migration page size, and starts the mapper's [`DirtyLog`].
    ///
    /// Windows mapped later are not logged: stop and start again after a change of guest
    /// memory. A server that refuses is [`Error::LoggingUnsupported`]. When the ranges do not
    /// fit one message, the server is asked to log everything (no ranges).
    pub fn start_dirty_logging<AS>(&mut self, mapper: &DmaMapper<AS>) -> Result<(), Error>
    where
        AS: GuestAddressSpace + Send + Sync + 'static,
        AS::M: GuestMemoryBackend,
        <AS::M as GuestMemoryBackend>::R: DmaRegion,
    {
        self.start_dirty_logging_over(&mapper.mappings(), Arc::clone(mapper.dirty_log()))
    }

    /// [`start_dirty_logging`](Migration::start_dirty_logging) over `windows` (the
    /// [`DmaMapper::mappings`] of the mapper that serves the connection) and the mapper's
    /// `log` ([`DmaMapper::dirty_log`]), for a caller that holds them rather than the mapper.
    pub fn start_dirty_logging_over(
        &mut self,
        windows: &[DmaMapping],
        log: Arc<DirtyLog>,
    ) -> Result<(), Error> {
        if self.logging.is_some() {
            return Err(Error::LoggingState(true));
        }
        let page_size = self.page_size();
        let ranges = ranges(windows.to_vec(), page_size);
        let mut start = DmaLoggingStart {
            page_size,
            ranges: ranges
                .iter()
                .map(|&(iova, _, length)| vfio_device_feature_dma_logging_range { iova, length })
                .collect(),
        };
        let limit = self.device.capabilities().max_data_xfer_size as usize;
        if 16usize.saturating_add(start.ranges.len().saturating_mul(16)) > limit {
            log::info!(
                "migration: {} logging ranges do not fit; logging all",
                ranges.len()
            );
            start.ranges.clear();
        }
        let mut data = Vec::new();
        start.encode_into(&mut data);
        // On before the server starts: no page written meanwhile is missed.
        log.start();
        let r = feature(
            self.device,
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            VFIO_DEVICE_FEATURE_SET,
            data,
            0,
        );
        if let Err(e) = r {
            log.stop();
            return Err(logging_refused(e));
        }
        self.logging = Some(Logging {
            page_size,
            scratch: Vec::new(),
            ranges,
            log,
        });
        Ok(())
    }

    /// Whether dirty logging is on.
    pub fn is_logging(&self) -> bool {
        self.logging.is_some()
    }

    /// Stops DMA dirty logging (DMA_LOGGING_STOP) and the mapper's [`DirtyLog`]. Take the
    /// last [`dirty_report`](Migration::dirty_report) first.
    pub fn stop_dirty_logging(&mut self) -> Result<(), Error> {
        let logging = self.logging.take().ok_or(Error::LoggingState(false))?;
        logging.log.stop();
        feature(
            self.device,
            VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
            VFIO_DEVICE_FEATURE_SET,
            Vec::new(),
            0,
        )
        .map(drop)
        .map_err(logging_refused)
    }

    /// The pages dirtied since logging started or since the last report: the server's
    /// DMA_LOGGING_REPORTs (split so that no bitmap exceeds `max_bitmap_size`, pipelined)
    /// merged with the client's [`DirtyLog`]. Both are cleared by the report.
    pub fn dirty_report(&mut self) -> Result<DirtyBitmap, Error> {
        let mut bitmap = DirtyBitmap {
            page_size: 0,
            ranges: Vec::new(),
        };
        self.dirty_report_into(&mut bitmap)?;
        Ok(bitmap)
    }

    /// [`dirty_report`](Migration::dirty_report) into `bitmap`, whose memory is reused when
    /// it holds the ranges of an earlier report (as in pre-copy rounds). Its content is
    /// replaced; after an error it is unspecified.
    pub fn dirty_report_into(&mut self, bitmap: &mut DirtyBitmap) -> Result<(), Error> {
        let pages_per_report = self.max_bitmap() * 8;
        let logging = self.logging.as_mut().ok_or(Error::LoggingState(false))?;
        let page_size = logging.page_size;
        shape(bitmap, page_size, &logging.ranges);
        let mut scratch = std::mem::take(&mut logging.scratch);
        let mut jobs = Vec::new();
        for (i, r) in bitmap.ranges.iter().enumerate() {
            let pages = r.len / page_size;
            let mut first = 0;
            while first < pages {
                let n = (pages - first).min(pages_per_report);
                jobs.push((i, first, n));
                first += n;
            }
        }
        let mut result = Ok(());
        for batch in jobs.chunks(PIPELINE) {
            result = self.report_batch(batch, page_size, &mut bitmap.ranges, &mut scratch);
            if result.is_err() {
                break;
            }
        }
        let logging = self.logging.as_mut().ok_or(Error::LoggingState(false))?;
        logging.scratch = scratch;
        result?;
        for r in &mut bitmap.ranges {
            logging
                .log
                .take_into(r.gpa, r.len, page_size, &mut r.bitmap);
        }
        Ok(())
    }

    /// Sends one batch of reports `(range, first page, pages)` and copies their bitmaps in,
    /// each received into `scratch` straight from the socket when it has the size asked.
    fn report_batch(
        &self,
        batch: &[(usize, u64, u64)],
        page_size: u64,
        out: &mut [DirtyRange],
        scratch: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let conn = self.device.connection();
        let mut pending: Vec<PendingReply> = Vec::with_capacity(batch.len());
        let mut asked = Vec::with_capacity(batch.len());
        for &(i, first, n) in batch {
            let iova = out.get(i).map_or(0, |r| r.iova) + first * page_size;
            let rq = DmaLoggingReport {
                iova,
                length: n * page_size,
                page_size,
                bitmap: Vec::new(),
            };
            let bitmap_len = words(n) * 8;
            match conn.send_request(
                Command::DeviceFeature,
                &report_request(&rq, bitmap_len),
                &[],
            ) {
                Ok(p) => pending.push(p),
                Err(e) => {
                    // Collect what was sent, so that the connection stays in step.
                    drop(conn.wait_all(pending));
                    return Err(logging_refused(report_error(e)));
                }
            }
            asked.push((rq, bitmap_len, i, first, n));
        }
        let mut first_error = None;
        for (p, (rq, bitmap_len, i, first, n)) in pending.into_iter().zip(asked) {
            scratch.resize(bitmap_len, 0);
            let head = DeviceFeature::HEAD_SIZE + DmaLoggingReport::HEAD_SIZE;
            let r = conn
                .wait_into(p, head, scratch)
                .map_err(|e| logging_refused(report_error(e)))
                .and_then(|reply| {
                    let in_buffer = reply.data_in_buffer.then_some(scratch.as_slice());
                    match out.get_mut(i) {
                        Some(range) => take_report(&reply.payload, in_buffer, &rq, range, first, n),
                        None => Ok(()),
                    }
                });
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Gives `bitmap` the shape of `ranges` at `page_size`, keeping its memory when it has it.
fn shape(bitmap: &mut DirtyBitmap, page_size: u64, ranges: &[(u64, u64, u64)]) {
    let same = bitmap.page_size == page_size
        && bitmap.ranges.len() == ranges.len()
        && bitmap
            .ranges
            .iter()
            .zip(ranges)
            .all(|(r, &(iova, gpa, len))| (r.iova, r.gpa, r.len) == (iova, gpa, len));
    if same {
        return;
    }
    bitmap.page_size = page_size;
    bitmap.ranges = ranges
        .iter()
        .map(|&(iova, gpa, len)| DirtyRange {
            iova,
            gpa,
            len,
            bitmap: vec![0; words(len / page_size)],
        })
        .collect();
}

/// The DEVICE_FEATURE payload of a report of `rq`'s range, accepting a bitmap of
/// `bitmap_len` bytes.
fn report_request(rq: &DmaLoggingReport, bitmap_len: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(DmaLoggingReport::HEAD_SIZE);
    rq.encode_into(&mut data);
    let mut payload = Vec::with_capacity(DeviceFeature::HEAD_SIZE + data.len());
    DeviceFeature::new(
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
        VFIO_DEVICE_FEATURE_GET,
        data,
        DmaLoggingReport::HEAD_SIZE + bitmap_len,
    )
    .encode_into(&mut payload);
    payload
}

fn words(pages: u64) -> usize {
    usize::try_from(pages.div_ceil(BITS)).unwrap_or(usize::MAX)
}

fn report_error(source: connection::Error) -> Error {
    Error::Request {
        command: Command::DeviceFeature,
        feature: Some(VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT),
        source,
    }
}

/// A refused logging request becomes [`Error::LoggingUnsupported`].
fn logging_refused(e: Error) -> Error {
    match e {
        Error::Request {
            source: source @ connection::Error::Server { .. },
            ..
        } => Error::LoggingUnsupported(source),
        e => e,
    }
}

/// Checks the head of a report reply (the feature's head and the echoed range) against
/// the request.
fn check_report_head(payload: &[u8], rq: &DmaLoggingReport) -> Result<(), Error> {
    // The head alone: decoding the whole payload would copy the bitmap.
    let head = payload
        .get(..DeviceFeature::HEAD_SIZE)
        .ok_or_else(|| bad_feature(format!("payload of {} bytes", payload.len())))?;
    let f = DeviceFeature::decode(head).map_err(|e| bad_feature(e.to_string()))?;
    if f.feature() != VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT {
        return Err(bad_feature(format!(
            "reply names feature {}, not {VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT}",
            f.feature()
        )));
    }
    let data = payload.get(DeviceFeature::HEAD_SIZE..).unwrap_or_default();
    let range = data
        .get(..DmaLoggingReport::HEAD_SIZE)
        .ok_or_else(|| bad_feature(format!("DMA_LOGGING_REPORT data of {} bytes", data.len())))?;
    let echo = DmaLoggingReport::decode(range).map_err(|e| bad_feature(e.to_string()))?;
    if (echo.iova, echo.length, echo.page_size) != (rq.iova, rq.length, rq.page_size) {
        return Err(bad_feature(format!(
            "DMA_LOGGING_REPORT reply for {:#x}+{:#x} (page {:#x}), asked {:#x}+{:#x} (page {:#x})",
            echo.iova, echo.length, echo.page_size, rq.iova, rq.length, rq.page_size
        )));
    }
    Ok(())
}

/// The bitmap of a buffered report reply's `payload`, checked against the request,
/// borrowed from the payload.
fn report_bitmap<'r>(
    payload: &'r [u8],
    rq: &DmaLoggingReport,
    bitmap_len: usize,
) -> Result<&'r [u8], Error> {
    check_report_head(payload, rq)?;
    let bitmap = payload
        .get(DeviceFeature::HEAD_SIZE + DmaLoggingReport::HEAD_SIZE..)
        .unwrap_or_default();
    check_bitmap_len(bitmap, rq, bitmap_len)?;
    Ok(bitmap)
}

fn check_bitmap_len(bitmap: &[u8], rq: &DmaLoggingReport, bitmap_len: usize) -> Result<(), Error> {
    if bitmap.len() != bitmap_len {
        return Err(Error::BitmapSize {
            iova: rq.iova,
            length: rq.length,
            expected: bitmap_len,
            got: bitmap.len(),
        });
    }
    Ok(())
}

/// Checks the reply to the report `rq` of `pages` pages from page `first` (a multiple of 64)
/// of `range`, and copies its bitmap into `range`: from `in_buffer` where the reply's
/// bitmap was received there, else from `payload`. Bits past the last page asked are
/// dropped, so a server cannot report pages outside the range.
pub(crate) fn take_report(
    payload: &[u8],
    in_buffer: Option<&[u8]>,
    rq: &DmaLoggingReport,
    range: &mut DirtyRange,
    first: u64,
    pages: u64,
) -> Result<(), Error> {
    let bitmap_len = words(pages).saturating_mul(8);
    let bits = match in_buffer {
        Some(bits) => {
            check_report_head(payload, rq)?;
            check_bitmap_len(bits, rq, bitmap_len)?;
            bits
        }
        None => report_bitmap(payload, rq, bitmap_len)?,
    };
    copy_words(&mut range.bitmap, first / BITS, bits);
    let end = first.saturating_add(pages);
    if end % BITS != 0 {
        let last = usize::try_from(end / BITS).ok();
        if let Some(w) = last.and_then(|w| range.bitmap.get_mut(w)) {
            *w &= (1 << (end % BITS)) - 1;
        }
    }
    Ok(())
}

/// Copies `bytes` (native-endian u64 words) into `bitmap` from word `at`.
fn copy_words(bitmap: &mut [u64], at: u64, bytes: &[u8]) {
    let at = usize::try_from(at).unwrap_or(usize::MAX);
    if let Some(dst) = bitmap.get_mut(at..) {
        for (d, s) in dst.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(s);
            *d = u64::from_ne_bytes(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::{Access, MappingKind};

    fn map(iova: u64, gpa: u64, size: u64) -> DmaMapping {
        DmaMapping {
            iova,
            size,
            gpa,
            access: Access::default(),
            fd_backed: true,
            kind: MappingKind::Iova,
            host_region: 0,
            owner: 0,
        }
    }

    #[test]
    fn ranges_merge_where_contiguous_in_both_spaces() {
        let r = ranges(
            vec![
                map(0x3000, 0x3000, 0x1000),
                map(0, 0, 0x2000),
                map(0x2000, 0x2000, 0x800),
                map(0x10000, 0x50000, 0x1000),
                map(0x11000, 0x11000, 0x1000),
            ],
            0x1000,
        );
        assert_eq!(
            r,
            vec![
                (0, 0, 0x4000),
                (0x10000, 0x50000, 0x1000),
                (0x11000, 0x11000, 0x1000)
            ]
        );
    }

    fn request(iova: u64, pages: u64) -> DmaLoggingReport {
        DmaLoggingReport {
            iova,
            length: pages * 4096,
            page_size: 4096,
            bitmap: Vec::new(),
        }
    }

    proptest::proptest! {
        /// No reply payload panics the report decoder; only the exact layout is accepted.
        #[test]
        fn report_replies_never_panic(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            pages in 1u64..1000,
        ) {
            let rq = request(0x1000, pages);
            let len = words(pages) * 8;
            if let Ok(bits) = report_bitmap(&payload, &rq, len) {
                proptest::prop_assert_eq!(bits.len(), len);
                proptest::prop_assert_eq!(payload.len(), 8 + 24 + len);
            }
        }

        /// A well-formed reply gives back its words, whatever the range.
        #[test]
        fn report_replies_round_trip(
            iova in 0u64..1 << 40,
            words_in in proptest::collection::vec(proptest::num::u64::ANY, 1..40),
        ) {
            let pages = words_in.len() as u64 * 64;
            let rq = request(iova * 4096, pages);
            let payload = report_payload(&rq, &words_in);
            let got = report_bitmap(&payload, &rq, words_in.len() * 8);
            let mut words = vec![0u64; words_in.len()];
            copy_words(&mut words, 0, got.unwrap_or_default());
            proptest::prop_assert_eq!(words, words_in);
        }

        /// Copying words at an offset replaces the overlap, never out of bounds.
        #[test]
        fn copy_replaces_the_overlap(
            dst in proptest::collection::vec(proptest::num::u64::ANY, 0..20),
            src in proptest::collection::vec(proptest::num::u64::ANY, 0..20),
            at in 0u64..25,
        ) {
            let mut out = dst.clone();
            let bytes: Vec<u8> = src.iter().flat_map(|w| w.to_ne_bytes()).collect();
            copy_words(&mut out, at, &bytes);
            for (i, w) in out.iter().enumerate() {
                let s = (i as u64).checked_sub(at).and_then(|j| src.get(j as usize));
                proptest::prop_assert_eq!(*w, s.copied().unwrap_or(dst[i]));
            }
        }
    }

    /// A report reply encoded as a server sends it.
    fn report_payload(rq: &DmaLoggingReport, words: &[u64]) -> Vec<u8> {
        let mut data = Vec::new();
        DmaLoggingReport {
            bitmap: words.iter().flat_map(|w| w.to_ne_bytes()).collect(),
            ..rq.clone()
        }
        .encode_into(&mut data);
        let mut payload = Vec::new();
        DeviceFeature::new(
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
            VFIO_DEVICE_FEATURE_GET,
            data,
            0,
        )
        .encode_into(&mut payload);
        payload
    }

    /// Regression: bits a server set past the pages asked for were kept, and the report
    /// named pages outside the range (`dirty_pages`, `count`, `mark_guest_memory`).
    #[test]
    fn bits_past_the_range_are_dropped() {
        let mut range = DirtyRange {
            iova: 0x10000,
            gpa: 0x80000,
            len: 70 * 4096,
            bitmap: vec![0; 2],
        };
        let rq = request(0x10000, 70);
        let payload = report_payload(&rq, &[u64::MAX, u64::MAX]);
        take_report(&payload, None, &rq, &mut range, 0, 70).unwrap();
        assert_eq!(range.bitmap, vec![u64::MAX, (1 << 6) - 1]);
        let bitmap = DirtyBitmap {
            page_size: 4096,
            ranges: vec![range.clone()],
        };
        assert_eq!(bitmap.count(), 70);
        assert!(bitmap.dirty_pages().all(|gpa| gpa < 0x80000 + 70 * 4096));
        // The same through the receive buffer.
        let head = &payload[..DeviceFeature::HEAD_SIZE + DmaLoggingReport::HEAD_SIZE];
        let bits = &payload[head.len()..];
        range.bitmap = vec![0; 2];
        take_report(head, Some(bits), &rq, &mut range, 0, 70).unwrap();
        assert_eq!(range.bitmap, vec![u64::MAX, (1 << 6) - 1]);
        let short = &bits[..8];
        assert!(matches!(
            take_report(head, Some(short), &rq, &mut range, 0, 70),
            Err(Error::BitmapSize { .. })
        ));
    }

    #[test]
    fn marks_vm_memory_bitmaps() {
        use vm_memory::bitmap::AtomicBitmap;
        use vm_memory::GuestMemoryMmap;
        let mem = GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x100000), 0x10000),
        ])
        .unwrap();
        let b = DirtyBitmap {
            page_size: 0x1000,
            ranges: vec![DirtyRange {
                iova: 0,
                gpa: 0xf0000,
                len: 0x40000,
                // 0xf0000 (outside), 0x101000, 0x10f000 and 0x110000 (outside).
                bitmap: vec![1 | 1 << 0x11 | 1 << 0x1f | 1 << 0x20],
            }],
        };
        assert_eq!(b.mark_guest_memory(&mem), 2);
        let region = mem.find_region(GuestAddress(0x100000)).unwrap();
        assert!(region.bitmap().dirty_at(0x1000) && region.bitmap().dirty_at(0xf000));
        assert!(!region.bitmap().dirty_at(0x2000));
        let low = mem.find_region(GuestAddress(0)).unwrap();
        assert!((0..0x10000)
            .step_by(0x1000)
            .all(|o| !low.bitmap().dirty_at(o)));
    }

    #[test]
    fn bitmap_queries() {
        let b = DirtyBitmap {
            page_size: 0x1000,
            ranges: vec![DirtyRange {
                iova: 0x10000,
                gpa: 0x20000,
                len: 0x100000,
                bitmap: vec![0b101, 1 << 63, 0, 0],
            }],
        };
        assert_eq!(b.count(), 3);
        assert!(b.is_dirty(0x20fff) && b.is_dirty(0x22000) && !b.is_dirty(0x21000));
        assert!(!b.is_dirty(0x10000) && !b.is_dirty(0x20000 + 0x100000));
        let pages: Vec<u64> = b.dirty_pages().collect();
        assert_eq!(pages, vec![0x20000, 0x22000, 0x20000 + 127 * 0x1000]);
    }
}
