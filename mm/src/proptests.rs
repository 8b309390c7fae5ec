//! Property tests of the firmware memory map's decoding, against a page-by-page model.
//!
//! The firmware's map is hostile input: entries unsorted, overlapping, empty, inverted,
//! unaligned, beyond the physical address limit or at the top of the address space.
//! Properties: a page is usable exactly when usable entries cover all of it, no other
//! entry and no reserved range touches any byte of it, and it lies below
//! [`MAX_PHYS_ADDR`] (so no byte any non-usable entry touches is ever handed out); the
//! result is sorted, disjoint, separated and page-aligned; with more ranges than the list
//! holds, the largest are kept and the rest counted; carving takes the policy's range from
//! its top and nothing else; truncating removes exactly what lies above the limit.
//! Test-only. More cases: `PROPTEST_CASES=10000 cargo test -p mm proptests`.

use std::vec::Vec;

use proptest::prelude::*;
use proptest::sample::select;

use crate::addr::PAGE_SIZE;
use crate::memmap::{
    usable_memory, CarveError, MemoryRegion, PhysRange, RegionKind, UsableMemory,
    CARVE_PREFERRED_LIMIT, MAX_PHYS_ADDR, MAX_USABLE_RANGES,
};

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` in the environment wins over the default given here.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// Pages of the window the small maps live in.
const WINDOW_PAGES: u64 = 48;
/// Where windows start: the bottom, around 4 GiB, around the physical limit, the top of
/// the address space.
const BASES: [u64; 4] = [
    0,
    (4 << 30) - 16 * PAGE_SIZE,
    MAX_PHYS_ADDR - 24 * PAGE_SIZE,
    u64::MAX - (WINDOW_PAGES + 3) * PAGE_SIZE + 1,
];

fn kind() -> impl Strategy<Value = RegionKind> {
    prop_oneof![
        6 => Just(RegionKind::Usable),
        1 => Just(RegionKind::Reserved),
        1 => Just(RegionKind::AcpiReclaimable),
        1 => Just(RegionKind::AcpiNvs),
        1 => Just(RegionKind::Bad),
        1 => Just(RegionKind::Persistent),
        1 => any::<u32>().prop_map(RegionKind::from_e820),
    ]
}

/// An address in the window: on a half-page grid, sometimes a few bytes off it.
fn address(base: u64) -> impl Strategy<Value = u64> {
    (
        0..=2 * WINDOW_PAGES,
        prop_oneof![4 => Just(0u64), 1 => 1u64..8],
    )
        .prop_map(move |(half_pages, off)| base + half_pages * PAGE_SIZE / 2 + off)
}

/// A small firmware map and reserved list in one window: random entries, inverted and
/// empty ones included, and sometimes an entry running to the top of the address space.
fn small_map() -> impl Strategy<Value = (Vec<MemoryRegion>, Vec<PhysRange>)> {
    select(BASES.to_vec()).prop_flat_map(|base| {
        // A usable entry to the top of the address space only where that stays small: near
        // or beyond the physical limit.
        let near_limit = base >= MAX_PHYS_ADDR - 24 * PAGE_SIZE;
        let region = (
            address(base),
            address(base),
            kind(),
            proptest::bool::weighted(0.05),
        )
            .prop_map(move |(start, end, kind, to_top)| {
                let to_top = to_top && (kind != RegionKind::Usable || near_limit);
                MemoryRegion {
                    start,
                    end: if to_top { u64::MAX } else { end },
                    kind,
                }
            });
        let reserved =
            (address(base), address(base)).prop_map(|(start, end)| PhysRange { start, end });
        (
            proptest::collection::vec(region, 0..12),
            proptest::collection::vec(reserved, 0..4),
        )
    })
}

/// Whether the page at `page` (an aligned address) is usable by the rules.
fn usable_by_the_rules(page: u64, firmware: &[MemoryRegion], reserved: &[PhysRange]) -> bool {
    let end = page as u128 + PAGE_SIZE as u128;
    if end > MAX_PHYS_ADDR as u128 {
        return false;
    }
    let end = end as u64;
    let touches = |start: u64, stop: u64| start < stop && start < end && stop > page;
    if firmware
        .iter()
        .any(|r| r.kind != RegionKind::Usable && touches(r.start, r.end))
        || reserved.iter().any(|r| touches(r.start, r.end))
    {
        return false;
    }
    // Every byte covered by the union of usable entries: walk from the page's start.
    let mut covered = page;
    loop {
        let next = firmware
            .iter()
            .filter(|r| r.kind == RegionKind::Usable && r.start <= covered && r.end > covered)
            .map(|r| r.end)
            .max();
        match next {
            Some(next) if next >= end => return true,
            Some(next) => covered = next,
            None => return false,
        }
    }
}

/// The pages of a result, after checking that it is well formed.
fn pages_of(memory: &UsableMemory) -> Result<Vec<u64>, TestCaseError> {
    let ranges = memory.ranges();
    prop_assert!(ranges.len() <= MAX_USABLE_RANGES);
    for range in ranges {
        prop_assert!(range.start < range.end, "empty range {:?}", range);
        prop_assert_eq!(range.start % PAGE_SIZE, 0);
        prop_assert_eq!(range.end % PAGE_SIZE, 0);
        prop_assert!(range.end <= MAX_PHYS_ADDR);
    }
    for pair in ranges.windows(2) {
        prop_assert!(
            pair[0].end < pair[1].start,
            "unsorted, overlapping or touching: {:?}",
            pair
        );
    }
    Ok(ranges
        .iter()
        .flat_map(|r| (r.start / PAGE_SIZE..r.end / PAGE_SIZE).map(|p| p * PAGE_SIZE))
        .collect())
}

proptest! {
    #![proptest_config(config(2000))]

    /// Exactly the pages the rules allow, in a well-formed list.
    #[test]
    fn usable_pages_are_exactly_what_the_rules_allow((firmware, reserved) in small_map()) {
        let memory = usable_memory(&firmware, &reserved);
        let got = pages_of(&memory)?;
        let base = firmware.iter().map(|r| r.start).chain(reserved.iter().map(|r| r.start)).min().unwrap_or(0) & !(PAGE_SIZE - 1);
        let expected: Vec<u64> = (0..2 * WINDOW_PAGES + 2)
            .filter_map(|i| base.checked_add(i * PAGE_SIZE))
            .filter(|&page| usable_by_the_rules(page, &firmware, &reserved))
            .collect();
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(memory.total_bytes(), expected.len() as u64 * PAGE_SIZE);
        prop_assert_eq!(memory.dropped_ranges(), 0);
    }

    /// More separate usable runs than the list holds: the largest are kept, in order, and
    /// the others counted.
    #[test]
    fn overflowing_maps_keep_the_largest_ranges(sizes in proptest::collection::vec(1u64..6, 100..200)) {
        let mut firmware = Vec::new();
        let mut at = 0x10_0000;
        for &pages in &sizes {
            firmware.push(MemoryRegion { start: at, end: at + pages * PAGE_SIZE, kind: RegionKind::Usable });
            at += (pages + 1) * PAGE_SIZE;
        }
        // Shuffled order and a reserved hole change nothing about the rule.
        firmware.reverse();
        let memory = usable_memory(&firmware, &[]);
        pages_of(&memory)?;
        let kept: Vec<u64> = memory.ranges().iter().map(PhysRange::pages).collect();
        let total: u64 = sizes.iter().sum();
        prop_assert_eq!(kept.len(), sizes.len().min(MAX_USABLE_RANGES));
        prop_assert_eq!(memory.dropped_ranges(), sizes.len() - kept.len());
        prop_assert_eq!(memory.total_bytes() + memory.dropped_bytes(), total * PAGE_SIZE);
        let mut sorted = sizes.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let largest: u64 = sorted[..kept.len()].iter().sum();
        prop_assert_eq!(kept.iter().sum::<u64>(), largest, "not the largest ranges kept");
        for range in memory.ranges() {
            prop_assert!(firmware.iter().any(|r| r.start == range.start && r.end == range.end));
        }
    }

    /// Carving takes `pages` from the top of the policy's range (the highest that fits
    /// wholly below 4 GiB, else the highest that fits) and nothing else; truncating removes
    /// exactly what lies at or above the limit.
    #[test]
    fn carving_and_truncating_take_exactly_their_share(
        runs in proptest::collection::vec((0u64..1 << 22, 1u64..64), 1..12),
        pages in prop_oneof![0u64..70, any::<u64>()],
        limit in prop_oneof![any::<u64>(), (0u64..1 << 22).prop_map(|p| p * PAGE_SIZE + 0x800)],
    ) {
        let firmware: Vec<MemoryRegion> = runs
            .iter()
            .map(|&(page, len)| MemoryRegion { start: page * PAGE_SIZE * 16, end: (page * 16 + len) * PAGE_SIZE, kind: RegionKind::Usable })
            .collect();
        let memory = usable_memory(&firmware, &[]);
        let before = pages_of(&memory)?;

        let mut carved_memory = memory.clone();
        match carved_memory.carve(pages) {
            Ok(carved) => {
                prop_assert_eq!(carved.pages(), pages);
                let fits = |r: &&PhysRange| r.pages() >= pages;
                let low = |r: &&PhysRange| fits(r) && r.end <= CARVE_PREFERRED_LIMIT;
                let chosen = memory.ranges().iter().rfind(low).or_else(|| memory.ranges().iter().rfind(fits));
                prop_assert_eq!(Some(carved.end), chosen.map(|r| r.end), "carved from the wrong range");
                let after = pages_of(&carved_memory)?;
                let expected: Vec<u64> = before.iter().copied().filter(|&p| p < carved.start || p >= carved.end).collect();
                prop_assert_eq!(after, expected);
            }
            Err(CarveError::ZeroPages) => prop_assert_eq!(pages, 0),
            Err(CarveError::NoRangeLargeEnough { largest, .. }) => {
                let real_largest = memory.ranges().iter().map(PhysRange::pages).max().unwrap_or(0);
                prop_assert_eq!(largest, real_largest);
                prop_assert!(real_largest < pages);
            }
        }

        let mut truncated = memory.clone();
        let removed = truncated.truncate_above(limit);
        let after = pages_of(&truncated)?;
        let cut = limit & !(PAGE_SIZE - 1);
        let expected: Vec<u64> = before.iter().copied().filter(|&p| p + PAGE_SIZE <= cut).collect();
        prop_assert_eq!(&after, &expected);
        prop_assert_eq!(removed, (before.len() - expected.len()) as u64 * PAGE_SIZE);
    }
}
