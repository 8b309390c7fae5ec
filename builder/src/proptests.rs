//! Property tests of the builder against hostile boot modules: the ELF reader, the Xen-note
//! collector, the kernel checks, the layout and the build, driven by random bytes, random
//! corruptions of a valid image and randomly assembled images.
//!
//! Every property states what must hold for *every* input, beyond "does not panic": what
//! the ELF reader accepts lies inside the file; the segments a kernel is accepted with are
//! sorted, disjoint, at or above `VIRT_BASE`, never wrap and hold the entry point and the
//! hypercall page; a plan keeps each region inside the reservation, in order and disjoint,
//! and its initial mapping canonical and out of the M2P slot and the hypervisor's gigabyte
//! (the limits are restated here from Xen's header, not taken from `address_space`); a
//! build writes only frames of the reservation, within one page, maps every frame of the
//! plan where the plan says and nothing else, and the segments' bytes are where the guest
//! will look for them. Test-only. More cases: `PROPTEST_CASES=5000 cargo test -p builder
//! proptests` (the default, 256 cases per property, keeps the crate's tests at a few
//! seconds).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use abi::elfnote::ElfNote;
use abi::features::FeatureSet;
use abi::hypercall_page::hypercall_page;
use abi::ids::{EvtchnPort, Mfn, Pfn};
use proptest::prelude::*;
use proptest::sample::{select, Index};

use crate::address_space::PAGE_SIZE;
use crate::build::{build, GuestMemory, HypervisorInputs};
use crate::elf::{ElfFile, Notes, PT_LOAD, PT_NOTE, SHT_NOTE};
use crate::error::BuildError;
use crate::image::tests::RecordingImage;
use crate::image::ImageSource;
use crate::kernel::{LoadSegment, PvKernel};
use crate::layout::{DomainConfig, Plan};
use crate::page_tables::{Level, PTE_ADDRESS_MASK, PTE_PRESENT, PTE_WRITABLE};
use crate::test_image::{TestImage, TestSegment, VIRT_BASE};
use crate::xen_notes::XenNotes;

/// Start of the read-only M2P slot, L4 slot 256 (xen-x86_64.h `HYPERVISOR_VIRT_START`).
const M2P_START: u128 = 0xFFFF_8000_0000_0000;
/// One past the M2P slot (512 GiB).
const M2P_END: u128 = M2P_START + (1 << 39);
/// The hypervisor's gigabyte: entry 511 of the L3 under L4 slot 511.
const HYPERVISOR_START: u128 = (1 << 64) - (1 << 30);
/// The end of the lower canonical half and the start of the upper one.
const LOWER_HALF_END: u128 = 1 << 47;
const UPPER_HALF_START: u128 = (1 << 64) - (1 << 47);

/// Virtual addresses where the rules change: the halves' edges, the M2P slot, the
/// hypervisor's gigabyte, Linux's base.
const EDGES: [u64; 11] = [
    0,
    0x40_0000,
    0x7FFF_FFC0_0000,
    0x8000_0000_0000,
    0xFFFF_8000_0000_0000,
    0xFFFF_8080_0000_0000,
    0xFFFF_C000_0000_0000,
    VIRT_BASE,
    0xFFFF_FFFF_BFC0_0000,
    0xFFFF_FFFF_C000_0000,
    0xFFFF_FFFF_FFFF_F000,
];

/// Bases a well-formed kernel may use and still be laid out.
const GOOD_BASES: [u64; 5] = [
    0x40_0000,
    0x1000_0000_0000,
    0xFFFF_8080_0000_0000,
    0xFFFF_C000_0000_0000,
    VIRT_BASE,
];

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` in the environment wins over the default given here.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// An address: near an edge, page aligned and small, or anything.
fn address() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => select(EDGES.to_vec()),
        2 => (select(EDGES.to_vec()), -0x4_0000i64..0x4_0000).prop_map(|(b, d)| b.wrapping_add_signed(d)),
        2 => (0u64..1 << 24).prop_map(|page| page << 12),
        2 => any::<u64>(),
    ]
}

/// A length: small, around a page, or hostile.
fn length() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..0x6000,
        1 => Just(0),
        1 => select(vec![u64::MAX, u64::MAX - 0xFFF, 1 << 47, 1 << 40, 0x8000_0000]),
        1 => any::<u64>(),
    ]
}

/// The desc of a note of type `kind`: well-formed for its kind, or random bytes.
fn note_desc(kind: ElfNote) -> BoxedStrategy<Vec<u8>> {
    let random = proptest::collection::vec(any::<u8>(), 0..24).boxed();
    if kind.is_string() {
        let text = match kind {
            ElfNote::XenVersion => vec![b"xen-3.0\0".to_vec(), b"xen-4.0\0".to_vec()],
            ElfNote::Loader => vec![b"generic\0".to_vec(), b"elf\0".to_vec()],
            ElfNote::GuestOs => vec![b"linux\0".to_vec(), b"TestOS\0".to_vec()],
            ElfNote::Features => vec![
                b"writable_page_tables|!writable_descriptor_tables\0".to_vec(),
                b"!flying_pigs\0".to_vec(),
                b"|||!\0".to_vec(),
            ],
            _ => vec![b"yes\0".to_vec()],
        };
        prop_oneof![3 => select(text), 1 => random].boxed()
    } else {
        prop_oneof![
            3 => address().prop_map(|a| a.to_le_bytes().to_vec()),
            1 => any::<u32>().prop_map(|v| v.to_le_bytes().to_vec()),
            1 => random,
        ]
        .boxed()
    }
}

/// Random Xen notes, any type (unknown numbers included).
fn notes() -> impl Strategy<Value = Vec<(u32, Vec<u8>)>> {
    let note = prop_oneof![
        4 => select(ElfNote::ALL.to_vec()).prop_flat_map(|kind| (Just(kind.raw()), note_desc(kind))),
        1 => (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..16)),
    ];
    proptest::collection::vec(note, 0..5)
}

/// One PT_LOAD segment described loosely: anything may be hostile.
fn hostile_segment() -> impl Strategy<Value = TestSegment> {
    let paddr = prop_oneof![3 => 0u64..0x20_0000, 1 => address()];
    let extra = prop_oneof![3 => (0u64..0x3000).prop_map(Some), 1 => Just(None)];
    (paddr, 0usize..0x1800, extra, length(), 0u32..8).prop_map(
        |(paddr, filesz, extra, memsz, flags)| {
            // Mostly at least as much memory as file bytes; sometimes anything.
            let memsz = extra.map_or(memsz, |extra| filesz as u64 + extra);
            let mut segment = TestSegment::new(paddr, pattern(paddr, filesz), memsz);
            segment.flags = flags;
            segment
        },
    )
}

/// Distinct, non-zero bytes for a segment, so that misplaced data shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 ^ seed.rotate_right(7)) % 251) as u8 + 1)
        .collect()
}

/// A hostile image: the minimal image with random segments, notes, entry, hypercall page,
/// `VIRT_BASE`, `PADDR_OFFSET` and header overrides.
fn hostile_image() -> impl Strategy<Value = TestImage> {
    (
        proptest::collection::vec(hostile_segment(), 0..4),
        notes(),
        proptest::option::weighted(0.3, address()),
        proptest::option::weighted(0.3, address()),
        proptest::option::weighted(0.3, address()),
        proptest::option::weighted(0.3, address()),
        any::<bool>(),
        proptest::option::weighted(0.2, (0usize..4, length())),
        proptest::option::weighted(0.2, (0usize..4, length())),
    )
        .prop_map(
            |(
                segments,
                notes,
                virt_base,
                paddr_offset,
                entry,
                hypercall,
                in_sections,
                size,
                offset,
            )| {
                let mut image = TestImage::minimal();
                image.segments.extend(segments);
                for (kind, desc) in notes {
                    match ElfNote::from_raw(kind) {
                        Some(kind) => image = image.with_note(kind, &desc),
                        None => image.notes.push((b"Xen\0".to_vec(), kind, desc)),
                    }
                }
                let set = |image: TestImage, kind, value: Option<u64>| match value {
                    Some(value) => image.with_note(kind, &value.to_le_bytes()),
                    None => image,
                };
                image = set(image, ElfNote::VirtBase, virt_base);
                image = set(image, ElfNote::PaddrOffset, paddr_offset);
                image = set(image, ElfNote::Entry, entry);
                image = set(image, ElfNote::HypercallPage, hypercall);
                image.notes_in_sections = in_sections;
                image.file_size_override = size;
                image.offset_override = offset;
                image
            },
        )
}

/// A well-formed kernel, as a toolchain would emit it: 1-4 loadable segments above
/// `VIRT_BASE` (in shuffled file order, gaps between them), some segments without
/// permissions anywhere, the entry point inside a segment, the hypercall page on an aligned
/// page of the image, with or without `PADDR_OFFSET`.
#[derive(Clone, Debug)]
struct GoodImage {
    image: TestImage,
    virt_base: u64,
    /// The loadable segments' (address, file bytes, memsz), by address.
    expected: Vec<(u64, Vec<u8>, u64)>,
}

fn good_image() -> impl Strategy<Value = GoodImage> {
    let layout = proptest::collection::vec((0u64..0x3000, 1u64..0x5000, 0u64..0x5000), 1..5);
    (
        select(GOOD_BASES.to_vec()),
        select(vec![None, Some(0), Some(0x10_0000), Some(0xC000_0000)]),
        layout,
        proptest::collection::vec((any::<u64>(), 0usize..0x100), 0..3),
        any::<Index>(),
        any::<u64>(),
        proptest::option::of(any::<Index>()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(
            |(
                virt_base,
                paddr_offset,
                layout,
                dead,
                entry_in,
                entry_at,
                hypercall,
                in_sections,
                first_at_base,
            )| {
                let mut expected = Vec::new();
                let mut next = if first_at_base { 0 } else { layout[0].0 };
                let mut segments = Vec::new();
                for (index, &(gap, memsz, filesz)) in layout.iter().enumerate() {
                    if index > 0 {
                        next += gap;
                    }
                    let filesz = filesz.min(memsz).min(0x2000);
                    let paddr = next + paddr_offset.unwrap_or(0);
                    let data = pattern(paddr, filesz as usize);
                    expected.push((virt_base + next, data.clone(), memsz));
                    segments.push(TestSegment::new(paddr, data, memsz));
                    next += memsz;
                }
                for (paddr, filesz) in dead {
                    let mut segment =
                        TestSegment::new(paddr, pattern(paddr, filesz), filesz as u64);
                    segment.flags = 0;
                    segments.push(segment);
                }
                let start = expected[0].0;
                let end = virt_base + next;
                let (entry_base, _, entry_len) = expected[entry_in.index(expected.len())];
                let entry = entry_base + entry_at % entry_len;
                let first_page = start.next_multiple_of(PAGE_SIZE);
                let hypercall = hypercall.and_then(|page| {
                    let pages = end.saturating_sub(first_page).div_ceil(PAGE_SIZE);
                    (pages > 0).then(|| first_page + page.index(pages as usize) as u64 * PAGE_SIZE)
                });
                let mut image = TestImage::minimal()
                    .with_note(ElfNote::VirtBase, &virt_base.to_le_bytes())
                    .with_note(ElfNote::Entry, &entry.to_le_bytes())
                    .without_note(ElfNote::HypercallPage);
                if let Some(offset) = paddr_offset {
                    image = image.with_note(ElfNote::PaddrOffset, &offset.to_le_bytes());
                }
                if let Some(address) = hypercall {
                    image = image.with_note(ElfNote::HypercallPage, &address.to_le_bytes());
                }
                image.notes_in_sections = in_sections;
                (
                    Just(image),
                    Just(segments).prop_shuffle(),
                    Just(virt_base),
                    Just(expected),
                )
            },
        )
        .prop_map(|(mut image, segments, virt_base, expected)| {
            image.segments = segments;
            GoodImage {
                image,
                virt_base,
                expected,
            }
        })
}

/// Whether `inner` is a sub-slice of `outer` (same memory, not just equal bytes).
fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (start, end) = (
        outer.as_ptr() as usize,
        outer.as_ptr() as usize + outer.len(),
    );
    let (at, to) = (
        inner.as_ptr() as usize,
        inner.as_ptr() as usize + inner.len(),
    );
    inner.is_empty() || (start <= at && to <= end)
}

/// Whether `size` bytes at `offset` lie inside `bytes`.
fn in_file(bytes: &[u8], offset: u64, size: u64) -> bool {
    offset
        .checked_add(size)
        .is_some_and(|end| end <= bytes.len() as u64)
}

/// The file bytes of a loadable segment.
fn file_bytes<'a>(bytes: &'a [u8], segment: &LoadSegment) -> &'a [u8] {
    &bytes[segment.file_offset as usize..][..segment.filesz as usize]
}

/// What the ELF reader and the kernel checks accept from `bytes` must lie inside `bytes`,
/// and every later step must refuse rather than panic.
fn check_any_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(elf) = ElfFile::parse(bytes) else {
        prop_assert!(PvKernel::parse(bytes, FeatureSet(u32::MAX)).is_err());
        return Ok(());
    };
    let mut note_data = Vec::new();
    for (index, segment) in elf.segments().iter().enumerate() {
        if segment.p_type == PT_LOAD || segment.p_type == PT_NOTE {
            let range = elf.segment_range(index);
            prop_assert!(
                range.is_ok(),
                "accepted segment {index} lies outside the file"
            );
            let range = range.unwrap();
            prop_assert!(in_file(bytes, range.offset, range.size));
            prop_assert_eq!(range.size, segment.p_filesz);
            if segment.p_type == PT_LOAD {
                prop_assert!(segment.p_filesz <= segment.p_memsz);
            } else if let Ok(data) = elf.read_notes(range) {
                prop_assert_eq!(&data[..], &bytes[range.offset as usize..][..data.len()]);
                note_data.push(data);
            }
        }
    }
    for (index, section) in elf.sections().iter().enumerate() {
        if section.sh_type == SHT_NOTE {
            let range = elf.section_range(index);
            prop_assert!(
                range.is_ok(),
                "accepted note section {index} lies outside the file"
            );
            if let Ok(data) = elf.read_notes(range.unwrap()) {
                note_data.push(data);
            }
        }
    }
    for data in &note_data {
        let data = &data[..];
        let mut failed = false;
        let mut count = 0;
        for note in Notes::new(data, 0) {
            prop_assert!(!failed, "the note iterator goes on after an error");
            count += 1;
            prop_assert!(
                count <= data.len() / 12 + 1,
                "more notes than the data can hold"
            );
            match note {
                Ok(note) => prop_assert!(within(data, note.name) && within(data, note.desc)),
                Err(_) => failed = true,
            }
        }
    }
    let _ = XenNotes::from_elf(&elf);
    if let Ok(kernel) = PvKernel::parse(bytes, FeatureSet(u32::MAX)) {
        check_kernel(&kernel, bytes)?;
    }
    Ok(())
}

/// The invariants of an accepted kernel.
fn check_kernel(
    kernel: &PvKernel<'_, impl ImageSource + ?Sized>,
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let virt_base = kernel.virt_base();
    prop_assert_eq!(virt_base % PAGE_SIZE, 0);
    let segments = kernel.segments();
    prop_assert!(!segments.is_empty());
    for segment in segments {
        prop_assert!(segment.memsz > 0);
        prop_assert!(segment.address >= virt_base, "segment below VIRT_BASE");
        prop_assert!(
            segment.address.checked_add(segment.memsz).is_some(),
            "segment wraps"
        );
        prop_assert!(segment.filesz <= segment.memsz);
        prop_assert!(
            in_file(bytes, segment.file_offset, segment.filesz),
            "segment data outside the image"
        );
    }
    for pair in segments.windows(2) {
        prop_assert!(
            pair[0].end() <= pair[1].address,
            "segments overlap or are unsorted"
        );
    }
    let (start, end) = (kernel.start(), kernel.end());
    prop_assert!(
        (start..end).contains(&kernel.entry()),
        "entry outside the image"
    );
    if let Some(address) = kernel.notes().hypercall_page {
        prop_assert_eq!(address % PAGE_SIZE, 0);
        prop_assert!((start..end).contains(&address));
        prop_assert_eq!(
            kernel.hypercall_page_frame(),
            Some(Pfn((address - virt_base) / PAGE_SIZE))
        );
    }
    let frames = kernel.frames();
    prop_assert_eq!(frames.start.0, (start - virt_base) / PAGE_SIZE);
    prop_assert_eq!(frames.end.0, (end - virt_base).div_ceil(PAGE_SIZE));
    Ok(())
}

/// The invariants of a plan for `kernel` in `config`.
fn check_plan(
    plan: &Plan,
    kernel: &PvKernel<'_, impl ImageSource + ?Sized>,
    config: &DomainConfig<'_>,
) -> Result<(), TestCaseError> {
    let nr_pages = config.nr_pages;
    prop_assert_eq!(plan.nr_pages, nr_pages);
    prop_assert_eq!(plan.virt_base, kernel.virt_base());
    prop_assert_eq!(plan.kernel, kernel.frames());
    // The regions follow one another, in order, inside the reservation.
    prop_assert_eq!(plan.p2m.start, plan.kernel.end);
    let p2m_entries = u128::from(plan.p2m.len()) * 512;
    prop_assert!(p2m_entries >= u128::from(nr_pages) && p2m_entries < u128::from(nr_pages) + 512);
    prop_assert_eq!(plan.start_info, plan.p2m.end);
    let mut next = plan.start_info.0 + 1;
    for (ring, wanted) in [
        (plan.xenstore, config.xenstore),
        (plan.console, config.console),
    ] {
        prop_assert_eq!(ring.is_some(), wanted.is_some());
        if let Some(pfn) = ring {
            prop_assert_eq!(pfn.0, next);
            next += 1;
        }
    }
    prop_assert_eq!(plan.page_tables.start.0, next);
    prop_assert_eq!(plan.page_tables.len(), plan.nr_pt_frames);
    prop_assert!(plan.nr_pt_frames >= 2);
    prop_assert_eq!(plan.stack, plan.page_tables.end);
    prop_assert_eq!(plan.first_free_pfn.0, plan.stack.0 + 1);
    prop_assert!(
        plan.first_free_pfn.0 <= nr_pages,
        "layout past the reservation"
    );
    // The mapping covers the layout, ends on 4 MiB with 512 KiB of slack or at the end of
    // the reservation, and stays canonical and out of the hypervisor's regions.
    let mapped = plan.mapped_pages;
    prop_assert!(plan.first_free_pfn.0 <= mapped && mapped <= nr_pages);
    let base_page = plan.virt_base / PAGE_SIZE;
    if mapped != nr_pages {
        prop_assert_eq!((base_page + mapped) % 1024, 0);
        prop_assert!(mapped - plan.first_free_pfn.0 >= 128);
    }
    let start = u128::from(plan.virt_base);
    let end = start + u128::from(mapped) * u128::from(PAGE_SIZE);
    prop_assert!(
        end <= LOWER_HALF_END || (start >= UPPER_HALF_START && end <= 1 << 64),
        "non-canonical mapping"
    );
    prop_assert!(
        end <= M2P_START || start >= M2P_END,
        "mapping in the M2P slot"
    );
    prop_assert!(
        end <= HYPERVISOR_START,
        "mapping in the hypervisor's gigabyte"
    );
    for segment in kernel.segments() {
        prop_assert!(u128::from(segment.address) >= start && u128::from(segment.end()) <= end);
    }
    // Addresses handed to the guest are those of their frames.
    prop_assert_eq!(plan.entry, kernel.entry());
    prop_assert_eq!(plan.start_info_va, plan.va(plan.start_info));
    prop_assert_eq!(plan.p2m_va, plan.va(plan.p2m.start));
    prop_assert_eq!(plan.pt_base, plan.va(plan.page_tables.start));
    prop_assert_eq!(plan.stack_top, plan.va(plan.first_free_pfn));
    prop_assert_eq!(plan.hypercall_page, kernel.hypercall_page_frame());
    if mapped <= 1 << 16 {
        prop_assert_eq!(plan.nr_pt_frames, count_tables(base_page, mapped));
    }
    Ok(())
}

/// Page-table frames a mapping of `pages` pages from virtual page `first` needs, found by
/// visiting every page: one L4, each distinct L3, L2 and L1, and an L3 for slot 511 if the
/// mapping has none there.
fn count_tables(first: u64, pages: u64) -> u64 {
    let mut seen = [u64::MAX; 3];
    let mut count = 1;
    let mut slot_511 = false;
    for page in first..first + pages {
        for (level, last) in seen.iter_mut().enumerate() {
            let key = page >> (9 * (level as u32 + 1));
            if *last != key {
                *last = key;
                count += 1;
            }
        }
        slot_511 |= (page >> 27) & 511 == 511;
    }
    count + u64::from(!slot_511)
}

/// A reservation whose frames are scattered over machine memory, recording every access
/// and holding only the frames written.
struct Memory {
    nr_pages: u64,
    frames: BTreeMap<u64, Box<[u8; 4096]>>,
    /// Any access the `GuestMemory` contract forbids.
    violations: Vec<alloc::string::String>,
}

const MFN_BASE: u64 = 0x12_0000;

impl Memory {
    fn new(nr_pages: u64) -> Self {
        Self {
            nr_pages,
            frames: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    fn mfn(&self, pfn: u64) -> Mfn {
        Mfn(MFN_BASE + 5 * (self.nr_pages - pfn))
    }

    fn pfn_of(&self, mfn: u64) -> Option<u64> {
        let distance = mfn.checked_sub(MFN_BASE)?;
        let k = distance / 5;
        (distance % 5 == 0 && (1..=self.nr_pages).contains(&k)).then(|| self.nr_pages - k)
    }

    fn frame(&self, pfn: u64) -> Option<&[u8; 4096]> {
        self.frames.get(&pfn).map(|f| &**f)
    }

    fn entry(&self, pfn: u64, index: usize) -> u64 {
        self.frame(pfn).map_or(0, |f| {
            u64::from_le_bytes(f[index * 8..index * 8 + 8].try_into().unwrap())
        })
    }

    fn check(&mut self, pfn: Pfn, what: &str) -> bool {
        if pfn.0 >= self.nr_pages {
            self.violations
                .push(alloc::format!("{what} of {pfn:?} outside the reservation"));
            return false;
        }
        true
    }
}

impl GuestMemory for Memory {
    fn frame_mfn(&self, pfn: Pfn) -> Mfn {
        assert!(
            pfn.0 < self.nr_pages,
            "frame_mfn({pfn:?}) outside the reservation"
        );
        self.mfn(pfn.0)
    }

    fn write(&mut self, pfn: Pfn, offset: usize, bytes: &[u8]) {
        if !self.check(pfn, "write") {
            return;
        }
        if offset.checked_add(bytes.len()).is_none_or(|end| end > 4096) {
            self.violations.push(alloc::format!(
                "write of {} bytes at {offset} of {pfn:?}",
                bytes.len()
            ));
            return;
        }
        let frame = self
            .frames
            .entry(pfn.0)
            .or_insert_with(|| Box::new([0xAA; 4096]));
        frame[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn zero(&mut self, pfn: Pfn) {
        if self.check(pfn, "zero") {
            self.frames.insert(pfn.0, Box::new([0; 4096]));
        }
    }
}

const HYPERVISOR_L3_ENTRY: u64 = 0x0000_0001_2345_6063;
const M2P_L4_ENTRY: u64 = 0x8000_0000_0abc_d025;

/// Walks the built tables from the L4: every present leaf, as (virtual page, entry), and
/// the problems met on the way.
fn leaves(memory: &Memory, l4: u64) -> Result<Vec<(u64, u64)>, TestCaseError> {
    let mut found = Vec::new();
    let mut stack = vec![(l4, 4u32, 0u64)];
    while let Some((table, level, prefix)) = stack.pop() {
        for index in 0..512usize {
            let entry = memory.entry(table, index);
            if entry & PTE_PRESENT == 0 {
                continue;
            }
            let page = (prefix << 9) | index as u64;
            if level == 4 && index == 256 {
                prop_assert_eq!(entry, M2P_L4_ENTRY);
                continue;
            }
            if level == 3 && prefix == 511 && index == 511 {
                prop_assert_eq!(
                    entry,
                    HYPERVISOR_L3_ENTRY,
                    "the hypervisor's entry was changed"
                );
                continue;
            }
            if level == 1 {
                found.push((page, entry));
                continue;
            }
            let child = memory.pfn_of((entry & PTE_ADDRESS_MASK) >> 12);
            prop_assert!(child.is_some(), "a table entry points outside the domain");
            stack.push((child.unwrap(), level - 1, page));
        }
    }
    Ok(found)
}

proptest! {
    #![proptest_config(config(256))]

    /// Random bytes, and random bytes behind a valid ELF header.
    #[test]
    fn the_elf_reader_accepts_only_what_lies_in_the_file(
        head in select(vec![0usize, 16, 64]),
        tail in proptest::collection::vec(any::<u8>(), 0..700),
    ) {
        let mut bytes = TestImage::minimal().bytes()[..head].to_vec();
        bytes.extend(tail);
        check_any_bytes(&bytes)?;
    }

    /// A valid image with a few bytes overwritten (header fields, table entries, notes,
    /// segment bytes) and perhaps cut short.
    #[test]
    fn corrupted_images_are_refused_or_stay_consistent(
        image in prop_oneof![Just(TestImage::minimal()), good_image().prop_map(|g| g.image)],
        edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<Index>()),
    ) {
        let mut bytes = image.bytes();
        // Most edits land in the headers and notes, where the parser looks.
        let hot = bytes.len().min(64 + 3 * 56 + 256);
        for (at, value) in edits {
            let index = if value % 4 == 0 { at.index(bytes.len()) } else { at.index(hot) };
            bytes[index] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        check_any_bytes(&bytes)?;
    }

    /// Images assembled from hostile parts: any segment placement, sizes, notes, entry,
    /// hypercall page, `VIRT_BASE` and `PADDR_OFFSET`.
    #[test]
    fn hostile_images_are_refused_or_stay_consistent(image in hostile_image()) {
        check_any_bytes(&image.bytes())?;
    }

    /// Read through a source that serves at most a page per read (as the hypervisor reads
    /// a boot module), any image gives exactly what it gives as one slice: the same
    /// refusal, or the same notes and segments.
    #[test]
    fn reading_in_pieces_changes_nothing(image in prop_oneof![good_image().prop_map(|g| g.image), hostile_image()]) {
        let bytes = image.bytes();
        let pieces = RecordingImage::new(bytes.clone());
        let whole = PvKernel::parse(&bytes[..], FeatureSet(u32::MAX));
        let read = PvKernel::parse(&pieces, FeatureSet(u32::MAX));
        match (whole, read) {
            (Ok(whole), Ok(read)) => {
                prop_assert_eq!(whole.notes(), read.notes());
                prop_assert_eq!(whole.segments(), read.segments());
            }
            (whole, read) => prop_assert_eq!(whole.err(), read.err()),
        }
    }

    /// A well-formed kernel is accepted, with its loadable segments at
    /// `p_paddr + VIRT_BASE - PADDR_OFFSET`, sorted, and nothing else.
    #[test]
    fn well_formed_kernels_are_placed_as_libelf_places_them(good in good_image()) {
        let bytes = good.image.bytes();
        let kernel = PvKernel::parse(&bytes, FeatureSet::EMPTY);
        prop_assert!(kernel.is_ok(), "refused: {:?}", kernel.err());
        let kernel = kernel.unwrap();
        check_kernel(&kernel, &bytes)?;
        prop_assert_eq!(kernel.virt_base(), good.virt_base);
        let placed: Vec<_> = kernel
            .segments()
            .iter()
            .map(|s| (s.address, file_bytes(&bytes, s).to_vec(), s.memsz))
            .collect();
        prop_assert_eq!(placed, good.expected);
    }

    /// Any reservation, from none to 2^64 - 1 pages, for any accepted kernel: the plan keeps
    /// everything inside the reservation and the mapping out of the hypervisor, and the
    /// smallest reservation is exactly the smallest that fits.
    #[test]
    fn plans_stay_in_the_reservation_and_out_of_the_hypervisor(
        image in prop_oneof![good_image().prop_map(|g| g.image), hostile_image()],
        nr_pages in prop_oneof![0u64..64, 0u64..20_000, 1u64 << 20..1 << 40, any::<u64>()],
        xenstore in any::<bool>(),
        console in any::<bool>(),
    ) {
        let bytes = image.bytes();
        let Ok(kernel) = PvKernel::parse(&bytes, FeatureSet(u32::MAX)) else {
            return Ok(());
        };
        let config = DomainConfig {
            nr_pages,
            cmd_line: b"",
            is_privileged: false,
            xenstore: xenstore.then_some(EvtchnPort(1)),
            console: console.then_some(EvtchnPort(2)),
        };
        if let Ok(plan) = Plan::new(&kernel, &config) {
            check_plan(&plan, &kernel, &config)?;
        }
        if let Ok(smallest) = Plan::minimum_nr_pages(&kernel, &config) {
            let at = |nr_pages| Plan::new(&kernel, &DomainConfig { nr_pages, ..config });
            let plan = at(smallest);
            prop_assert!(plan.is_ok(), "the smallest reservation does not fit: {:?}", plan);
            prop_assert_eq!(plan.unwrap().first_free_pfn.0, smallest);
            if smallest > 0 {
                let below = at(smallest - 1);
                prop_assert!(
                    matches!(below, Err(BuildError::TooSmall { .. })),
                    "one page less: {:?}",
                    below
                );
            }
        }
    }
}

proptest! {
    // Each case writes up to a few thousand frames.
    #![proptest_config(config(64))]

    /// The build writes only frames of the reservation, each within its page; the tables
    /// map exactly the frames of the initial mapping at `VIRT_BASE + pfn * 4096`, the
    /// page-table frames read-only, and keep the hypervisor's entries as given; the guest
    /// finds its segments' bytes (and zeroed bss) at their addresses and the hypercall page
    /// in its frame.
    #[test]
    fn builds_write_only_the_reservation_and_map_what_the_plan_says(
        image in prop_oneof![3 => good_image().prop_map(|g| g.image), 1 => hostile_image()],
        nr_pages in 16u64..2500,
        xenstore in any::<bool>(),
        console in any::<bool>(),
        cmd_line in proptest::collection::vec(1u8..=255, 0..64),
    ) {
        let bytes = image.bytes();
        let Ok(kernel) = PvKernel::parse(&bytes, FeatureSet(u32::MAX)) else {
            return Ok(());
        };
        let config = DomainConfig {
            nr_pages,
            cmd_line: &cmd_line,
            is_privileged: false,
            xenstore: xenstore.then_some(EvtchnPort(1)),
            console: console.then_some(EvtchnPort(2)),
        };
        let hypervisor = HypervisorInputs {
            shared_info_maddr: 0x7654_3000,
            hypervisor_l3_entry: HYPERVISOR_L3_ENTRY,
            m2p_l4_entry: Some(M2P_L4_ENTRY),
        };
        let mut memory = Memory::new(nr_pages);
        let Ok(built) = build(&kernel, &config, &hypervisor, &mut memory) else {
            // Only a reservation too small for the layout may be refused.
            // Only a plan that does not fit may be refused.
            prop_assert!(Plan::new(&kernel, &config).is_err(), "planned but not built");
            return Ok(());
        };
        prop_assert!(memory.violations.is_empty(), "{:?}", memory.violations);
        let plan = built.plan;
        check_plan(&plan, &kernel, &config)?;
        prop_assert!(memory.frames.keys().all(|&pfn| pfn < plan.mapped_pages), "wrote past the mapping");

        // The tables: L4 first, one frame each, in the plan's page-table frames.
        prop_assert_eq!(built.l4_pfn, plan.page_tables.start);
        prop_assert_eq!(built.page_tables.len() as u64, plan.nr_pt_frames);
        prop_assert_eq!(built.page_tables[0].level, Level::L4);
        for (table, pfn) in built.page_tables.iter().zip(plan.page_tables.iter()) {
            prop_assert_eq!(table.pfn, pfn);
        }
        let mut mapped = leaves(&memory, plan.page_tables.start.0)?;
        mapped.sort_unstable();
        prop_assert_eq!(mapped.len() as u64, plan.mapped_pages, "mapped pages besides the plan's");
        for (pfn, &(page, entry)) in mapped.iter().enumerate() {
            let pfn = pfn as u64;
            // Sign-extend the 48-bit page number back to an address.
            let va = (((page << 12) << 16) as i64 >> 16) as u64;
            prop_assert_eq!(va, plan.va(Pfn(pfn)));
            prop_assert_eq!(memory.pfn_of((entry & PTE_ADDRESS_MASK) >> 12), Some(pfn));
            let writable = entry & PTE_WRITABLE != 0;
            prop_assert_eq!(writable, !plan.page_tables.contains(Pfn(pfn)), "pfn {}", pfn);
        }

        // What the guest sees at each segment's addresses.
        let hypercall_frame = plan.hypercall_page.map(|p| p.0);
        for segment in kernel.segments() {
            for offset in 0..segment.memsz {
                let va = segment.address + offset;
                let pfn = (va - plan.virt_base) / PAGE_SIZE;
                if Some(pfn) == hypercall_frame {
                    continue;
                }
                let byte = memory.frame(pfn).map_or(0xAA, |f| f[(va % PAGE_SIZE) as usize]);
                let expected = file_bytes(&bytes, segment).get(offset as usize).copied().unwrap_or(0);
                prop_assert_eq!(byte, expected, "byte at {:#x}", va);
            }
        }
        if let Some(pfn) = hypercall_frame {
            let frame = memory.frame(pfn);
            prop_assert!(frame.is_some());
            prop_assert!(frame.unwrap()[..] == hypercall_page()[..]);
        }
        // The P2M list names each frame's machine frame.
        for pfn in 0..nr_pages {
            let frame = plan.p2m.start.0 + pfn / 512;
            let at = (pfn % 512) as usize;
            prop_assert_eq!(memory.entry(frame, at), memory.mfn(pfn).0);
        }
    }
}
