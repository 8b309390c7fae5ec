//! Turning the firmware memory map into the list of usable machine memory.
//!
//! Boot code hands [`usable_memory`] the firmware's map (multiboot2 or PVH e820 entries,
//! converted to [`MemoryRegion`]) and the ranges it must keep for itself (the image, boot
//! information, modules, ACPI tables, the first MiB...). The result, [`UsableMemory`], is
//! a short, sorted list of disjoint page-aligned ranges that the frame table is built
//! from; before that, [`UsableMemory::carve`] takes the pages for the frame metadata
//! array out of it. This module trusts nothing it is given: entries may be unsorted,
//! overlapping, empty, inverted, unaligned or beyond the physical address limit. It must
//! never report a byte as usable that any non-usable entry or reserved range touches.
//!
//! The merge is a sweep over interval boundaries: O(n²) in the number of entries, with no
//! scratch storage, which is cheap for the few hundred entries firmware produces.

use arrayvec::ArrayVec;

use crate::addr::{page_align_down, page_align_up, PAGE_SIZE};

/// Capacity of the usable-range list.
pub const MAX_USABLE_RANGES: usize = 128;
/// Architectural limit of machine addresses (52 bits): memory above is ignored.
pub const MAX_PHYS_ADDR: u64 = 1 << 52;
/// [`UsableMemory::carve`] prefers memory that ends at or below this address.
pub const CARVE_PREFERRED_LIMIT: u64 = 4 << 30;

/// What the firmware says a range of machine memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Free RAM.
    Usable,
    /// Not RAM, or RAM the firmware keeps.
    Reserved,
    /// RAM holding ACPI tables; kept, since the hypervisor reads the tables.
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// RAM reported defective.
    Bad,
    /// Persistent (non-volatile) memory.
    Persistent,
    /// A type this code does not know (raw e820 type); never used.
    Unknown(u32),
}

impl RegionKind {
    /// Decodes an e820 type (as found in PVH `hvm_memmap_table_entry.type`).
    pub const fn from_e820(raw: u32) -> RegionKind {
        match raw {
            1 => RegionKind::Usable,
            2 => RegionKind::Reserved,
            3 => RegionKind::AcpiReclaimable,
            4 => RegionKind::AcpiNvs,
            5 => RegionKind::Bad,
            7 | 12 => RegionKind::Persistent,
            other => RegionKind::Unknown(other),
        }
    }
}

/// One firmware memory-map entry: `[start, end)` in machine bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What the range is.
    pub kind: RegionKind,
}

/// A range of machine memory `[start, end)`. Ranges produced by this module are
/// page-aligned and non-empty; ranges given to it (reserved lists) may be anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl PhysRange {
    /// Length in bytes (0 for an empty or inverted range).
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no byte.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of whole pages in the range.
    pub const fn pages(&self) -> u64 {
        self.len() / PAGE_SIZE
    }
}

/// Why [`UsableMemory::carve`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CarveError {
    /// Zero pages were asked for.
    ZeroPages,
    /// No usable range holds that many contiguous pages.
    NoRangeLargeEnough {
        /// Pages asked for.
        pages: u64,
        /// Pages in the largest usable range.
        largest: u64,
    },
}

/// Sorted, disjoint, page-aligned usable machine memory.
#[derive(Clone, Debug, Default)]
pub struct UsableMemory {
    ranges: ArrayVec<PhysRange, MAX_USABLE_RANGES>,
    dropped_ranges: usize,
    dropped_bytes: u64,
}

/// Computes usable memory: what the firmware calls usable, minus every other firmware
/// entry and every `reserved` range, clipped to [`MAX_PHYS_ADDR`].
///
/// Rules, in order of strength:
/// - Any non-[`RegionKind::Usable`] entry and any reserved range wins over usable
///   entries; it is widened outwards to whole pages.
/// - Usable entries that touch or overlap are merged; the merged runs are narrowed
///   inwards to whole pages.
/// - Entries with `end <= start` are ignored (an inverted reserved range reserves
///   nothing: the caller builds that list and must not produce one).
/// - If more than [`MAX_USABLE_RANGES`] ranges result, the smallest are dropped and
///   counted in [`UsableMemory::dropped_bytes`] so the caller can warn.
pub fn usable_memory(firmware: &[MemoryRegion], reserved: &[PhysRange]) -> UsableMemory {
    let intervals = || {
        let from_firmware = firmware.iter().filter_map(Interval::from_firmware);
        from_firmware.chain(
            reserved
                .iter()
                .filter_map(|r| Interval::excluded(r.start, r.end)),
        )
    };
    let mut memory = UsableMemory::default();
    let mut run_start = None;
    let mut cursor = 0;
    while let Some(next) = intervals()
        .filter_map(|i| i.next_boundary_after(cursor))
        .min()
    {
        let usable = intervals().any(|i| i.usable && i.covers(cursor, next))
            && !intervals().any(|i| !i.usable && i.covers(cursor, next));
        match (usable, run_start) {
            (true, None) => run_start = Some(cursor),
            (false, Some(start)) => {
                memory.push_run(start, cursor);
                run_start = None;
            }
            _ => {}
        }
        cursor = next;
    }
    if let Some(start) = run_start {
        memory.push_run(start, cursor);
    }
    memory
}

/// One input entry, normalised for the sweep.
#[derive(Clone, Copy)]
struct Interval {
    start: u64,
    end: u64,
    usable: bool,
}

impl Interval {
    fn from_firmware(region: &MemoryRegion) -> Option<Interval> {
        match region.kind {
            RegionKind::Usable => Interval::clipped(region.start, region.end, true),
            _ => Interval::excluded(region.start, region.end),
        }
    }

    /// A non-usable interval, widened to whole pages; an empty or inverted one excludes
    /// nothing (widening it first would turn it into a page).
    fn excluded(start: u64, end: u64) -> Option<Interval> {
        if end <= start {
            return None;
        }
        let widened_end = page_align_up(end).unwrap_or(u64::MAX);
        Interval::clipped(page_align_down(start), widened_end, false)
    }

    fn clipped(start: u64, end: u64, usable: bool) -> Option<Interval> {
        let end = end.min(MAX_PHYS_ADDR);
        (start < end).then_some(Interval { start, end, usable })
    }

    fn next_boundary_after(&self, cursor: u64) -> Option<u64> {
        [self.start, self.end].into_iter().find(|&b| b > cursor)
    }

    fn covers(&self, start: u64, end: u64) -> bool {
        self.start <= start && end <= self.end
    }
}

impl UsableMemory {
    /// The usable ranges, sorted by address, disjoint and page-aligned.
    pub fn ranges(&self) -> &[PhysRange] {
        &self.ranges
    }

    /// Total usable bytes.
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(PhysRange::len).sum()
    }

    /// One past the highest usable byte (0 when there is no usable memory).
    pub fn max_addr(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.end)
    }

    /// How many ranges were dropped because the list was full.
    pub fn dropped_ranges(&self) -> usize {
        self.dropped_ranges
    }

    /// How many usable bytes were dropped because the list was full.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    /// Removes all memory at or above `limit` (rounded down to a page) and returns the
    /// number of bytes removed. Used to cap memory to what the frame metadata can cover.
    pub fn truncate_above(&mut self, limit: u64) -> u64 {
        let limit = page_align_down(limit);
        let before = self.total_bytes();
        self.ranges.retain(|r| r.start < limit);
        if let Some(last) = self.ranges.last_mut() {
            last.end = last.end.min(limit);
        }
        before - self.total_bytes()
    }

    /// Takes `pages` contiguous pages out of usable memory and returns them.
    ///
    /// Policy: the top end of the highest range that lies wholly below
    /// [`CARVE_PREFERRED_LIMIT`] and is large enough; failing that, the top end of the
    /// highest large-enough range anywhere. Low memory (DMA, trampolines) is thus used
    /// last, and a range is only ever shortened, never split.
    pub fn carve(&mut self, pages: u64) -> Result<PhysRange, CarveError> {
        if pages == 0 {
            return Err(CarveError::ZeroPages);
        }
        let fits = |r: &PhysRange| r.pages() >= pages;
        let low = |r: &PhysRange| r.end <= CARVE_PREFERRED_LIMIT;
        let index = (self.ranges.iter().rposition(|r| fits(r) && low(r)))
            .or_else(|| self.ranges.iter().rposition(fits))
            .ok_or(CarveError::NoRangeLargeEnough {
                pages,
                largest: self.ranges.iter().map(PhysRange::pages).max().unwrap_or(0),
            })?;
        let range = &mut self.ranges[index];
        let carved = PhysRange {
            start: range.end - pages * PAGE_SIZE,
            end: range.end,
        };
        range.end = carved.start;
        if range.is_empty() {
            self.ranges.remove(index);
        }
        Ok(carved)
    }

    /// Appends the merged usable run `[start, end)`, narrowed to whole pages.
    fn push_run(&mut self, start: u64, end: u64) {
        let Some(start) = page_align_up(start) else {
            return;
        };
        let range = PhysRange {
            start,
            end: page_align_down(end),
        };
        if range.is_empty() {
            return;
        }
        if !self.ranges.is_full() {
            self.ranges.push(range);
            return;
        }
        let smallest = (0..self.ranges.len()).min_by_key(|&i| self.ranges[i].len());
        match smallest {
            Some(i) if self.ranges[i].len() < range.len() => {
                let dropped = self.ranges.remove(i);
                self.ranges.push(range);
                self.record_drop(dropped);
            }
            _ => self.record_drop(range),
        }
    }

    fn record_drop(&mut self, range: PhysRange) {
        self.dropped_ranges += 1;
        self.dropped_bytes += range.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn region(start: u64, end: u64, kind: RegionKind) -> MemoryRegion {
        MemoryRegion { start, end, kind }
    }

    fn usable(start: u64, end: u64) -> MemoryRegion {
        region(start, end, RegionKind::Usable)
    }

    fn range(start: u64, end: u64) -> PhysRange {
        PhysRange { start, end }
    }

    fn ranges(memory: &UsableMemory) -> Vec<(u64, u64)> {
        memory.ranges().iter().map(|r| (r.start, r.end)).collect()
    }

    /// Checks the output invariants on any result.
    fn assert_well_formed(memory: &UsableMemory) {
        for r in memory.ranges() {
            assert!(r.start < r.end, "empty range {r:?}");
            assert_eq!(r.start % PAGE_SIZE, 0, "unaligned {r:?}");
            assert_eq!(r.end % PAGE_SIZE, 0, "unaligned {r:?}");
            assert!(r.end <= MAX_PHYS_ADDR);
        }
        for w in memory.ranges().windows(2) {
            assert!(
                w[0].end < w[1].start,
                "unsorted, overlapping or unmerged {w:?}"
            );
        }
    }

    #[test]
    fn qemu_like_map_with_reservations() {
        let firmware = [
            usable(0, 0x9fc00),
            region(0x9fc00, 0xa0000, RegionKind::Reserved),
            region(0xf0000, 0x10_0000, RegionKind::Reserved),
            usable(MIB, 0x7fe_0000),
            region(0x7fe_0000, 0x800_0000, RegionKind::Reserved),
            region(0xfffc_0000, 4 * GIB, RegionKind::Reserved),
        ];
        let reserved = [range(0, MIB), range(2 * MIB, 0x2a_1234)];
        let memory = usable_memory(&firmware, &reserved);
        assert_well_formed(&memory);
        assert_eq!(
            ranges(&memory),
            vec![(MIB, 2 * MIB), (0x2a_2000, 0x7fe_0000)]
        );
        assert_eq!(memory.total_bytes(), MIB + 0x7fe_0000 - 0x2a_2000);
        assert_eq!(memory.max_addr(), 0x7fe_0000);
        assert_eq!(memory.dropped_bytes(), 0);
    }

    #[test]
    fn unsorted_and_overlapping_usable_entries_merge() {
        let firmware = [
            usable(8 * MIB, 12 * MIB),
            usable(MIB, 4 * MIB),
            usable(3 * MIB, 9 * MIB),
        ];
        let memory = usable_memory(&firmware, &[]);
        assert_eq!(ranges(&memory), vec![(MIB, 12 * MIB)]);
    }

    #[test]
    fn adjacent_unaligned_usable_entries_keep_the_shared_page() {
        let memory = usable_memory(&[usable(0x1000, 0x1800), usable(0x1800, 0x3000)], &[]);
        assert_eq!(ranges(&memory), vec![(0x1000, 0x3000)]);
    }

    #[test]
    fn reserved_overlap_wins_over_usable_in_any_order() {
        let reserved = region(0x5800, 0x6100, RegionKind::Reserved);
        for firmware in [
            [usable(0, 0x10000), reserved],
            [reserved, usable(0, 0x10000)],
        ] {
            let memory = usable_memory(&firmware, &[]);
            assert_eq!(ranges(&memory), vec![(0, 0x5000), (0x7000, 0x10000)]);
        }
    }

    #[test]
    fn every_non_usable_kind_excludes() {
        for kind in [
            RegionKind::Reserved,
            RegionKind::AcpiReclaimable,
            RegionKind::AcpiNvs,
            RegionKind::Bad,
            RegionKind::Persistent,
            RegionKind::Unknown(99),
        ] {
            let memory = usable_memory(&[usable(0, 0x4000), region(0x1000, 0x2000, kind)], &[]);
            assert_eq!(
                ranges(&memory),
                vec![(0, 0x1000), (0x2000, 0x4000)],
                "{kind:?}"
            );
        }
        let only_reserved = usable_memory(&[region(0, GIB, RegionKind::Reserved)], &[]);
        assert!(only_reserved.ranges().is_empty());
    }

    #[test]
    fn zero_length_and_inverted_entries_are_ignored() {
        let firmware = [
            usable(0x5000, 0x5000),
            usable(0x9000, 0x3000),
            region(0x2000, 0x1000, RegionKind::Reserved),
            usable(0x1000, 0x4000),
        ];
        let reserved = [range(0x3000, 0x3000), range(0x4000, 0x1000)];
        let memory = usable_memory(&firmware, &reserved);
        assert_eq!(ranges(&memory), vec![(0x1000, 0x4000)]);
    }

    #[test]
    fn unaligned_empty_or_inverted_entries_exclude_nothing() {
        // Found by the property test: widened to whole pages before the emptiness check,
        // an empty unaligned entry took the page around it out of usable memory.
        let firmware = [
            usable(0, 0x1_e000),
            region(0x1_d800, 0x1_d800, RegionKind::Reserved),
            region(0x1_0900, 0x1_0800, RegionKind::Bad),
        ];
        let reserved = [range(0x4800, 0x4800), range(0x8900, 0x8100)];
        let memory = usable_memory(&firmware, &reserved);
        assert_eq!(ranges(&memory), vec![(0, 0x1_e000)]);
    }

    #[test]
    fn unaligned_entries_shrink_usable_and_grow_reserved() {
        let memory = usable_memory(&[usable(0x1001, 0x8fff)], &[range(0x4001, 0x4002)]);
        assert_eq!(ranges(&memory), vec![(0x2000, 0x4000), (0x5000, 0x8000)]);
        let tiny = usable_memory(&[usable(0x1001, 0x1fff)], &[]);
        assert!(tiny.ranges().is_empty());
    }

    #[test]
    fn entries_above_the_physical_limit_are_clipped() {
        let firmware = [
            usable(MAX_PHYS_ADDR - 0x3000, MAX_PHYS_ADDR + 0x5000),
            usable(MAX_PHYS_ADDR + GIB, u64::MAX),
            region(u64::MAX - 10, u64::MAX, RegionKind::Reserved),
        ];
        let memory = usable_memory(&firmware, &[range(u64::MAX - 1, u64::MAX)]);
        assert_well_formed(&memory);
        assert_eq!(
            ranges(&memory),
            vec![(MAX_PHYS_ADDR - 0x3000, MAX_PHYS_ADDR)]
        );
    }

    #[test]
    fn entry_ending_at_u64_max_does_not_overflow() {
        let memory = usable_memory(&[usable(0, u64::MAX)], &[range(0x1000, u64::MAX)]);
        assert_eq!(ranges(&memory), vec![(0, 0x1000)]);
    }

    #[test]
    fn overflow_drops_the_smallest_ranges() {
        // 200 usable ranges separated by reserved pages; range i has i+1 pages.
        let mut firmware = Vec::new();
        let mut expected_dropped = 0;
        let mut base = 0;
        for i in 0..200u64 {
            let len = (i + 1) * PAGE_SIZE;
            firmware.push(usable(base, base + len));
            if i < 72 {
                expected_dropped += len;
            }
            base += len + PAGE_SIZE;
        }
        firmware.reverse();
        let memory = usable_memory(&firmware, &[]);
        assert_well_formed(&memory);
        assert_eq!(memory.ranges().len(), MAX_USABLE_RANGES);
        assert_eq!(memory.dropped_ranges(), 72);
        assert_eq!(memory.dropped_bytes(), expected_dropped);
        assert_eq!(memory.ranges()[0].pages(), 73);
        assert_eq!(memory.ranges()[127].pages(), 200);
    }

    /// Whether the union of usable entries covers the whole page at `page`.
    fn covered_by_usable(firmware: &[MemoryRegion], page: u64) -> bool {
        let mut pos = page;
        while pos < page + PAGE_SIZE {
            let next = firmware
                .iter()
                .filter(|f| f.kind == RegionKind::Usable && f.start <= pos && pos < f.end)
                .map(|f| f.end)
                .max();
            match next {
                Some(end) => pos = end,
                None => return false,
            }
        }
        true
    }

    #[test]
    fn hostile_random_maps_keep_invariants_and_exclusions() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut firmware = Vec::new();
            for _ in 0..(next() % 40) {
                let start = next() % (64 * MIB);
                let end = if next() % 8 == 0 {
                    start / 2
                } else {
                    start + next() % (8 * MIB)
                };
                let kind = RegionKind::from_e820((next() % 6) as u32);
                firmware.push(region(start, end, kind));
            }
            let reserved: Vec<_> = (0..(next() % 5))
                .map(|_| {
                    let start = next() % (64 * MIB);
                    range(start, start + next() % MIB)
                })
                .collect();
            let memory = usable_memory(&firmware, &reserved);
            assert_well_formed(&memory);
            for r in memory.ranges() {
                for page in (r.start..r.end).step_by(PAGE_SIZE as usize) {
                    let inside = |s: u64, e: u64| s < page + PAGE_SIZE && page < e;
                    assert!(
                        covered_by_usable(&firmware, page),
                        "page {page:#x} not usable"
                    );
                    for f in firmware.iter().filter(|f| f.kind != RegionKind::Usable) {
                        assert!(!inside(f.start, f.end), "page {page:#x} overlaps {f:?}");
                    }
                    for x in &reserved {
                        assert!(!inside(x.start, x.end), "page {page:#x} overlaps {x:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn e820_types_decode() {
        assert_eq!(RegionKind::from_e820(1), RegionKind::Usable);
        assert_eq!(RegionKind::from_e820(2), RegionKind::Reserved);
        assert_eq!(RegionKind::from_e820(3), RegionKind::AcpiReclaimable);
        assert_eq!(RegionKind::from_e820(4), RegionKind::AcpiNvs);
        assert_eq!(RegionKind::from_e820(5), RegionKind::Bad);
        assert_eq!(RegionKind::from_e820(7), RegionKind::Persistent);
        assert_eq!(RegionKind::from_e820(0), RegionKind::Unknown(0));
    }

    #[test]
    fn carve_prefers_the_top_of_memory_below_4_gib() {
        let firmware = [
            usable(MIB, 16 * MIB),
            usable(32 * MIB, 3 * GIB),
            usable(4 * GIB, 8 * GIB),
        ];
        let mut memory = usable_memory(&firmware, &[]);
        let carved = memory.carve(256).unwrap();
        assert_eq!(carved, range(3 * GIB - MIB, 3 * GIB));
        assert_eq!(ranges(&memory)[1], (32 * MIB, 3 * GIB - MIB));
        assert_eq!(
            memory.total_bytes(),
            15 * MIB + (3 * GIB - 33 * MIB) + 4 * GIB
        );
    }

    #[test]
    fn carve_falls_back_above_4_gib_and_removes_emptied_ranges() {
        let mut memory = usable_memory(&[usable(MIB, 2 * MIB), usable(4 * GIB, 5 * GIB)], &[]);
        assert_eq!(
            memory.carve(1024).unwrap(),
            range(5 * GIB - 4 * MIB, 5 * GIB)
        );
        assert_eq!(memory.carve(256).unwrap(), range(MIB, 2 * MIB));
        assert_eq!(ranges(&memory), vec![(4 * GIB, 5 * GIB - 4 * MIB)]);
    }

    #[test]
    fn carve_errors() {
        let mut memory = usable_memory(&[usable(0, 0x4000), usable(0x8000, 0xa000)], &[]);
        assert_eq!(memory.carve(0), Err(CarveError::ZeroPages));
        assert_eq!(
            memory.carve(5),
            Err(CarveError::NoRangeLargeEnough {
                pages: 5,
                largest: 4
            })
        );
        assert_eq!(
            memory.total_bytes(),
            0x6000,
            "a failed carve must not change anything"
        );
        let mut empty = UsableMemory::default();
        assert_eq!(
            empty.carve(1),
            Err(CarveError::NoRangeLargeEnough {
                pages: 1,
                largest: 0
            })
        );
    }

    #[test]
    fn truncate_above_caps_memory() {
        let mut memory = usable_memory(&[usable(MIB, 3 * MIB), usable(4 * MIB, 8 * MIB)], &[]);
        assert_eq!(memory.truncate_above(2 * MIB + 0x10), 5 * MIB);
        assert_eq!(ranges(&memory), vec![(MIB, 2 * MIB)]);
        assert_eq!(memory.truncate_above(0), MIB);
        assert!(memory.ranges().is_empty());
    }
}
