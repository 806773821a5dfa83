// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Dirty tracking of guest memory written by the server's DMA_WRITE messages.
//!
//! Servers do not report pages they wrote through messages (libvfio-user never marks them),
//! so the client records them itself, while dirty logging is on ([`DirtyLog::start`], done by
//! [`DirtyLogging`](crate::migration::DirtyLogging)). Writes through a mapped fd are the
//! server's to report (DMA_LOGGING_REPORT).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::negotiate::MIN_PAGE_SIZE;

const BITS: u64 = 64;

/// Guest-physical pages written by DMA_WRITE, one bit per page, kept sparsely (64-page words
/// keyed by their index), so that a guest of any size costs memory only for what was written.
///
/// A log records nothing until it is started: pages are counted only between
/// [`start`](DirtyLog::start) and [`stop`](DirtyLog::stop).
#[derive(Debug)]
pub struct DirtyLog {
    page_size: u64,
    on: AtomicBool,
    words: Mutex<BTreeMap<u64, u64>>,
}

impl Default for DirtyLog {
    fn default() -> Self {
        DirtyLog::new(MIN_PAGE_SIZE)
    }
}

impl DirtyLog {
    /// An empty, stopped log with `page_size`-byte pages (a power of two; others are rounded
    /// up).
    pub fn new(page_size: u64) -> DirtyLog {
        DirtyLog {
            page_size: page_size.max(1).next_power_of_two(),
            on: AtomicBool::new(false),
            words: Mutex::new(BTreeMap::new()),
        }
    }

    /// Forgets every dirty page and starts recording.
    pub fn start(&self) {
        let mut words = self.lock();
        words.clear();
        self.on.store(true, Ordering::SeqCst);
    }

    /// Stops recording; the pages recorded so far stay until taken or cleared.
    pub fn stop(&self) {
        self.on.store(false, Ordering::SeqCst);
    }

    /// Whether the log is recording.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// The page size each bit stands for.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        crate::sync::lock(&self.words)
    }

    /// Marks every page touched by `gpa..gpa + len`, when the log is recording.
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 || !self.is_on() {
            return;
        }
        let first = gpa / self.page_size;
        let last = gpa.saturating_add(len - 1) / self.page_size;
        let mut words = self.lock();
        let mut page = first;
        loop {
            let word = page / BITS;
            let lo = page % BITS;
            let hi = if last / BITS == word {
                last % BITS
            } else {
                BITS - 1
            };
            let mask = (u64::MAX >> (BITS - 1 - (hi - lo))) << lo;
            *words.entry(word).or_insert(0) |= mask;
            match (word + 1).checked_mul(BITS) {
                Some(next) if next <= last => page = next,
                _ => break,
            }
        }
    }

    /// Whether the page holding `gpa` was written.
    pub fn is_dirty(&self, gpa: u64) -> bool {
        let page = gpa / self.page_size;
        self.lock()
            .get(&(page / BITS))
            .is_some_and(|w| w & (1 << (page % BITS)) != 0)
    }

    /// The guest-physical address of every dirty page, in order.
    pub fn dirty_pages(&self) -> Vec<u64> {
        let words = self.lock();
        let mut out = Vec::new();
        for (&word, &bits) in words.iter() {
            let mut b = bits;
            while b != 0 {
                let bit = u64::from(b.trailing_zeros());
                out.push((word * BITS + bit) * self.page_size);
                b &= b - 1;
            }
        }
        out
    }

    /// Returns the bitmap of `gpa..gpa + len` (bit `i` of word `i / 64` for the page at
    /// `gpa + i * page_size`, the layout of the migration dirty-page reports) and clears those
    /// pages. `gpa` is rounded down to a page.
    pub fn take_range(&self, gpa: u64, len: u64) -> Vec<u64> {
        let first = gpa / self.page_size;
        let pages = len.div_ceil(self.page_size);
        let mut out = vec![0u64; usize::try_from(pages.div_ceil(BITS)).unwrap_or(0)];
        let mut words = self.lock();
        for i in 0..pages {
            let page = first.saturating_add(i);
            let Some(word) = words.get_mut(&(page / BITS)) else {
                continue;
            };
            let bit = 1u64 << (page % BITS);
            if *word & bit != 0 {
                *word &= !bit;
                if let Some(o) = usize::try_from(i / BITS).ok().and_then(|s| out.get_mut(s)) {
                    *o |= 1 << (i % BITS);
                }
            }
        }
        words.retain(|_, w| *w != 0);
        out
    }

    /// ORs the pages of `gpa..gpa + len` into `bitmap` (bit `i` for the page at
    /// `gpa + i * page_size`, of a page size of its own) and clears them from the log. Costs
    /// a step per dirty page of the log, not per page of the range.
    pub(crate) fn take_into(&self, gpa: u64, len: u64, page_size: u64, bitmap: &mut [u64]) {
        if len == 0 || page_size == 0 {
            return;
        }
        let first = gpa / self.page_size;
        let last = gpa.saturating_add(len - 1) / self.page_size;
        let mut words = self.lock();
        for (&word, bits) in words.range_mut(first / BITS..=last / BITS) {
            let mut b = *bits;
            while b != 0 {
                let bit = u64::from(b.trailing_zeros());
                b &= b - 1;
                let page = word * BITS + bit;
                if page < first || page > last {
                    continue;
                }
                *bits &= !(1 << bit);
                let at = (page * self.page_size).max(gpa) - gpa;
                let end = (page * self.page_size).saturating_add(self.page_size - 1);
                let end = end.min(gpa.saturating_add(len - 1)) - gpa;
                for i in at / page_size..=end / page_size {
                    if let Some(w) = usize::try_from(i / BITS)
                        .ok()
                        .and_then(|w| bitmap.get_mut(w))
                    {
                        *w |= 1 << (i % BITS);
                    }
                }
            }
        }
        words.retain(|_, w| *w != 0);
    }

    /// Forgets every dirty page.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_pages_touched() {
        let log = DirtyLog::new(4096);
        log.mark(0, 1);
        assert!(log.dirty_pages().is_empty(), "stopped logs record nothing");
        log.start();
        log.mark(0x1fff, 2);
        log.mark(0x10000, 0);
        assert_eq!(log.dirty_pages(), vec![0x1000, 0x2000]);
        assert!(log.is_dirty(0x1000) && log.is_dirty(0x2fff) && !log.is_dirty(0x3000));
        // Spanning several words.
        log.mark(62 * 4096, 200 * 4096);
        let pages = log.dirty_pages();
        assert_eq!(pages.len(), 2 + 200);
        assert_eq!(pages.last(), Some(&(261 * 4096)));
        log.clear();
        assert!(log.dirty_pages().is_empty());
        log.mark(u64::MAX - 10, 100);
        assert!(log.is_dirty(u64::MAX));
    }

    #[test]
    fn take_range_clears_what_it_reports() {
        let log = DirtyLog::new(4096);
        log.start();
        log.mark(0x1000, 0x1000);
        log.mark(0x42000, 0x2000);
        let bitmap = log.take_range(0, 0x50000);
        assert_eq!(bitmap.len(), 2);
        assert_eq!(bitmap[0], 1 << 1);
        assert_eq!(bitmap[1], 0b11 << (0x42 - 64));
        assert!(log.dirty_pages().is_empty());
        log.mark(0x3000, 1);
        assert_eq!(log.take_range(0x4000, 0x1000), vec![0]);
        assert_eq!(log.dirty_pages(), vec![0x3000]);
        assert_eq!(DirtyLog::new(3000).page_size(), 4096);
        assert_eq!(DirtyLog::default().page_size(), 4096);
    }

    #[test]
    fn take_into_converts_page_sizes() {
        let log = DirtyLog::new(4096);
        log.start();
        log.mark(0x1000, 1);
        log.mark(0x21000, 0x2000);
        log.mark(0x90000, 1);
        // 64 KiB pages from 0x10000: 0x21000.. is page 1, 0x1000 and 0x90000 lie outside.
        let mut bm = vec![0u64; 1];
        log.take_into(0x10000, 0x40000, 0x10000, &mut bm);
        assert_eq!(bm, vec![0b10]);
        assert_eq!(log.dirty_pages(), vec![0x1000, 0x90000]);
        // Same page size, an offset range.
        let mut bm = vec![0u64; 3];
        log.take_into(0x1000, 0x90000, 4096, &mut bm);
        assert_eq!(bm, vec![1, 0, 1 << (0x8f - 128)]);
        assert!(log.dirty_pages().is_empty());
    }

    #[test]
    fn records_only_while_on() {
        let log = DirtyLog::new(4096);
        log.start();
        log.mark(0x1000, 1);
        log.stop();
        assert!(!log.is_on());
        log.mark(0x5000, 1);
        assert_eq!(
            log.dirty_pages(),
            vec![0x1000],
            "kept after stop, nothing new"
        );
        log.start();
        assert!(log.is_on() && log.dirty_pages().is_empty(), "start forgets");
    }

    proptest::proptest! {
        /// `take_into` at any page size sets exactly the pages that hold a marked page, and
        /// clears what it took.
        #[test]
        fn take_into_matches_a_model(
            writes in proptest::collection::vec((0u64..1 << 22, 1u64..1 << 16), 0..10),
            shift in 12u32..17,
            start in 0u64..64,
            pages in 1u64..300,
        ) {
            let log = DirtyLog::new(4096);
            log.start();
            let mut model = std::collections::BTreeSet::new();
            for (gpa, len) in writes {
                log.mark(gpa, len);
                model.extend(gpa / 4096..=(gpa + len - 1) / 4096);
            }
            let ps = 1u64 << shift;
            let gpa = start * ps;
            let mut bm = vec![0u64; pages.div_ceil(64) as usize];
            log.take_into(gpa, pages * ps, ps, &mut bm);
            for i in 0..pages {
                let lo = (gpa + i * ps) / 4096;
                let hi = (gpa + (i + 1) * ps - 1) / 4096;
                let want = model.range(lo..=hi).next().is_some();
                proptest::prop_assert_eq!(bm[(i / 64) as usize] & (1 << (i % 64)) != 0, want);
            }
            let left: Vec<u64> = model
                .iter()
                .filter(|p| **p * 4096 < gpa || **p * 4096 >= gpa + pages * ps)
                .map(|p| p * 4096)
                .collect();
            proptest::prop_assert_eq!(log.dirty_pages(), left);
        }

        /// Marked ranges and the pages reported agree with a set of page numbers.
        #[test]
        fn marks_match_a_page_set(
            writes in proptest::collection::vec((0u64..1 << 24, 0u64..1 << 20), 0..20),
        ) {
            let log = DirtyLog::new(4096);
            log.start();
            let mut model = std::collections::BTreeSet::new();
            for (gpa, len) in writes {
                log.mark(gpa, len);
                if len > 0 {
                    model.extend(gpa / 4096..=(gpa + len - 1) / 4096);
                }
            }
            let pages: Vec<u64> = model.iter().map(|p| p * 4096).collect();
            proptest::prop_assert_eq!(log.dirty_pages(), pages);
            let bitmap = log.take_range(0, 1 << 25);
            let ones: u32 = bitmap.iter().map(|w| w.count_ones()).sum();
            proptest::prop_assert_eq!(ones as usize, model.len());
            proptest::prop_assert!(log.dirty_pages().is_empty());
        }
    }
}
