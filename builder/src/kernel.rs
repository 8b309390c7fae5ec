//! A checked Xen PV64 kernel image: its Xen notes and its loadable segments placed at
//! their virtual load addresses, validated against each other.
//!
//! The hypervisor parses a guest boot module with [`PvKernel::parse`] each time it builds a
//! domain from it (reading only the headers and notes; the segments stay in the image, an
//! [`ImageSource`], until the builder copies them); the layout planner and the builder
//! then take the result. As in Xen's libelf, a segment loads at
//! `p_paddr + VIRT_BASE - PADDR_OFFSET` (`p_vaddr` is not used). Refused here: segments
//! that wrap, that start below `VIRT_BASE` or overlap each other, an entry point outside
//! the image, and a hypercall page that is unaligned or outside the image. This module
//! must never decide where anything other than the kernel goes.

use alloc::vec::Vec;

use abi::features::FeatureSet;
use abi::ids::Pfn;

use crate::address_space::PAGE_SIZE;
use crate::elf::{is_loadable, ElfFile};
use crate::error::BuildError;
use crate::image::ImageSource;
use crate::layout::PfnRange;
use crate::xen_notes::XenNotes;

/// One loadable segment at its virtual load address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Index of the segment's program header.
    pub index: usize,
    /// Virtual address of the segment's first byte.
    pub address: u64,
    /// Where its file bytes are in the image (`p_offset`; checked to lie inside it).
    pub file_offset: u64,
    /// How many file bytes (`p_filesz`); the rest, up to `memsz`, is zero (bss).
    pub filesz: u64,
    /// Bytes the segment occupies in memory.
    pub memsz: u64,
}

impl LoadSegment {
    /// One past the segment's last virtual address (never wraps: checked on parsing).
    pub const fn end(&self) -> u64 {
        self.address + self.memsz
    }
}

/// A Xen PV64 kernel ready to be laid out: its notes and segments, and the image its
/// segments' bytes are read from.
#[derive(Clone, Debug)]
pub struct PvKernel<'a, I: ImageSource + ?Sized = [u8]> {
    image: &'a I,
    notes: XenNotes,
    /// Sorted by address; non-empty, non-overlapping.
    segments: Vec<LoadSegment>,
}

impl<'a, I: ImageSource + ?Sized> PvKernel<'a, I> {
    /// Parses and checks a kernel image; `offered` are the features the hypervisor offers
    /// (an image requiring others is refused).
    pub fn parse(image: &'a I, offered: FeatureSet) -> Result<Self, BuildError> {
        let elf = ElfFile::parse(image)?;
        let notes = XenNotes::from_elf(&elf)?;
        notes.check_offered(offered)?;
        if notes.virt_base % PAGE_SIZE != 0 {
            return Err(BuildError::VirtBaseMisaligned {
                virt_base: notes.virt_base,
            });
        }
        let kernel = Self {
            image,
            segments: load_segments(&elf, &notes)?,
            notes,
        };
        kernel.check_entry()?;
        kernel.check_hypercall_page()?;
        Ok(kernel)
    }

    /// The Xen notes.
    pub const fn notes(&self) -> &XenNotes {
        &self.notes
    }

    /// The image the segments' bytes are read from.
    pub fn image(&self) -> &'a I {
        self.image
    }

    /// The loadable segments, by address.
    pub fn segments(&self) -> &[LoadSegment] {
        &self.segments
    }

    /// Virtual address of pseudo-physical frame 0.
    pub const fn virt_base(&self) -> u64 {
        self.notes.virt_base
    }

    /// The entry point.
    pub const fn entry(&self) -> u64 {
        self.notes.entry
    }

    /// Lowest virtual address of the image.
    pub fn start(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.address)
    }

    /// One past the highest virtual address of the image.
    pub fn end(&self) -> u64 {
        self.segments.last().map_or(0, LoadSegment::end)
    }

    /// The frames the image occupies (partly filled frames included).
    pub fn frames(&self) -> PfnRange {
        let first = (self.start() - self.virt_base()) / PAGE_SIZE;
        let end = (self.end() - self.virt_base()).div_ceil(PAGE_SIZE);
        PfnRange::new(Pfn(first), end - first)
    }

    /// The frame of the hypercall page, if the image names one.
    pub fn hypercall_page_frame(&self) -> Option<Pfn> {
        let address = self.notes.hypercall_page?;
        Some(Pfn((address - self.virt_base()) / PAGE_SIZE))
    }

    fn check_entry(&self) -> Result<(), BuildError> {
        let entry = self.entry();
        if (self.start()..self.end()).contains(&entry) {
            Ok(())
        } else {
            Err(BuildError::EntryOutsideImage {
                entry,
                start: self.start(),
                end: self.end(),
            })
        }
    }

    fn check_hypercall_page(&self) -> Result<(), BuildError> {
        let Some(address) = self.notes.hypercall_page else {
            return Ok(());
        };
        if address % PAGE_SIZE != 0 {
            return Err(BuildError::HypercallPageMisaligned { address });
        }
        if !(self.start()..self.end()).contains(&address) {
            return Err(BuildError::HypercallPageOutsideImage {
                address,
                start: self.start(),
                end: self.end(),
            });
        }
        Ok(())
    }
}

/// The non-empty loadable segments at their load addresses, sorted, after checking that
/// none wraps, starts below `VIRT_BASE` or overlaps another.
fn load_segments<I: ImageSource + ?Sized>(
    elf: &ElfFile<'_, I>,
    notes: &XenNotes,
) -> Result<Vec<LoadSegment>, BuildError> {
    let virt_offset = notes.virt_base.wrapping_sub(notes.paddr_offset);
    let mut segments = Vec::new();
    for (index, header) in elf.segments().iter().enumerate() {
        if !is_loadable(header) || header.p_memsz == 0 {
            continue;
        }
        let address = header.p_paddr.wrapping_add(virt_offset);
        if address.checked_add(header.p_memsz).is_none() {
            return Err(BuildError::SegmentWraps { index });
        }
        if address < notes.virt_base {
            return Err(BuildError::SegmentBelowVirtBase {
                index,
                address,
                virt_base: notes.virt_base,
            });
        }
        let range = elf.segment_range(index)?;
        segments.push(LoadSegment {
            index,
            address,
            file_offset: range.offset,
            filesz: range.size,
            memsz: header.p_memsz,
        });
    }
    if segments.is_empty() {
        return Err(BuildError::NoLoadableSegments);
    }
    segments.sort_by_key(|segment| segment.address);
    for pair in segments.windows(2) {
        if pair[0].end() > pair[1].address {
            return Err(BuildError::SegmentOverlap {
                index: pair[1].index,
                other: pair[0].index,
            });
        }
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_image::{TestImage, TestSegment, VIRT_BASE};
    use abi::elfnote::ElfNote;
    use abi::features::XenFeature;

    fn parse(image: &TestImage) -> Result<usize, BuildError> {
        let bytes = image.bytes();
        PvKernel::parse(&bytes, FeatureSet::EMPTY).map(|kernel| kernel.segments().len())
    }

    #[test]
    fn places_segments_at_paddr_plus_virt_base() {
        let image = TestImage::minimal();
        let bytes = image.bytes();
        let kernel = PvKernel::parse(&bytes, FeatureSet::EMPTY).unwrap();
        assert_eq!(kernel.start(), VIRT_BASE);
        assert_eq!(kernel.end(), VIRT_BASE + 0x4000);
        assert_eq!(kernel.frames(), PfnRange::new(Pfn(0), 4));
        assert_eq!(kernel.hypercall_page_frame(), Some(Pfn(1)));
        assert_eq!(
            kernel.segments()[0].filesz,
            image.segments[0].data.len() as u64
        );
    }

    #[test]
    fn paddr_offset_shifts_the_load_address() {
        let mut image = TestImage::minimal()
            .with_note(ElfNote::PaddrOffset, &0x10_0000u64.to_le_bytes())
            .with_note(ElfNote::Entry, &(VIRT_BASE + 0x2000).to_le_bytes())
            .without_note(ElfNote::HypercallPage);
        image.segments[0].paddr = 0x10_2000;
        let bytes = image.bytes();
        let kernel = PvKernel::parse(&bytes, FeatureSet::EMPTY).unwrap();
        assert_eq!(kernel.start(), VIRT_BASE + 0x2000);
        assert_eq!(kernel.frames(), PfnRange::new(Pfn(2), 4));
    }

    #[test]
    fn segments_are_sorted_and_partial_frames_count() {
        let mut image = TestImage::minimal();
        image
            .segments
            .insert(0, TestSegment::new(0x5100, alloc::vec![7; 0x80], 0x100));
        let bytes = image.bytes();
        let kernel = PvKernel::parse(&bytes, FeatureSet::EMPTY).unwrap();
        assert_eq!(kernel.segments()[0].index, 1);
        assert_eq!(kernel.segments()[1].index, 0);
        assert_eq!(kernel.end(), VIRT_BASE + 0x5200);
        assert_eq!(kernel.frames(), PfnRange::new(Pfn(0), 6));
    }

    #[test]
    fn refuses_overlapping_segments() {
        let mut image = TestImage::minimal();
        image
            .segments
            .push(TestSegment::new(0x3000, alloc::vec![1; 0x10], 0x2000));
        assert_eq!(
            parse(&image),
            Err(BuildError::SegmentOverlap { index: 1, other: 0 })
        );
    }

    #[test]
    fn touching_segments_do_not_overlap() {
        let mut image = TestImage::minimal();
        image
            .segments
            .push(TestSegment::new(0x4000, alloc::vec![1; 0x10], 0x2000));
        assert_eq!(parse(&image), Ok(2));
    }

    #[test]
    fn refuses_segment_below_virt_base() {
        let image = TestImage::minimal().with_note(ElfNote::PaddrOffset, &0x1000u64.to_le_bytes());
        assert_eq!(
            parse(&image),
            Err(BuildError::SegmentBelowVirtBase {
                index: 0,
                address: VIRT_BASE - 0x1000,
                virt_base: VIRT_BASE
            })
        );
    }

    #[test]
    fn refuses_wrapping_segment() {
        let mut image = TestImage::minimal();
        image.segments[0].memsz = u64::MAX - 0x1000;
        assert_eq!(parse(&image), Err(BuildError::SegmentWraps { index: 0 }));
    }

    #[test]
    fn refuses_image_without_loadable_segments() {
        let mut image = TestImage::minimal();
        image.segments[0].flags = 0;
        assert_eq!(parse(&image), Err(BuildError::NoLoadableSegments));
    }

    #[test]
    fn refuses_misaligned_virt_base() {
        let image =
            TestImage::minimal().with_note(ElfNote::VirtBase, &(VIRT_BASE + 8).to_le_bytes());
        assert_eq!(
            parse(&image),
            Err(BuildError::VirtBaseMisaligned {
                virt_base: VIRT_BASE + 8
            })
        );
    }

    #[test]
    fn refuses_entry_outside_image() {
        let entry = VIRT_BASE + 0x4000;
        let image = TestImage::minimal().with_note(ElfNote::Entry, &entry.to_le_bytes());
        assert_eq!(
            parse(&image),
            Err(BuildError::EntryOutsideImage {
                entry,
                start: VIRT_BASE,
                end: VIRT_BASE + 0x4000
            })
        );
    }

    #[test]
    fn refuses_bad_hypercall_pages() {
        let odd = VIRT_BASE + 0x1800;
        let image = TestImage::minimal().with_note(ElfNote::HypercallPage, &odd.to_le_bytes());
        assert_eq!(
            parse(&image),
            Err(BuildError::HypercallPageMisaligned { address: odd })
        );
        let outside = VIRT_BASE + 0x8000;
        let image = TestImage::minimal().with_note(ElfNote::HypercallPage, &outside.to_le_bytes());
        assert!(matches!(
            parse(&image),
            Err(BuildError::HypercallPageOutsideImage { address, .. }) if address == outside
        ));
    }

    #[test]
    fn refuses_unoffered_required_feature() {
        let image = TestImage::minimal().with_note(ElfNote::Features, b"!writable_page_tables\0");
        let bytes = image.bytes();
        assert_eq!(
            PvKernel::parse(&bytes, FeatureSet::EMPTY).unwrap_err(),
            BuildError::UnofferedFeatures {
                missing: FeatureSet::of(&[XenFeature::WritablePageTables])
            }
        );
        let offered = FeatureSet::of(&[XenFeature::WritablePageTables]);
        assert!(PvKernel::parse(&bytes, offered).is_ok());
    }

    #[test]
    fn corrupted_images_never_panic() {
        let bytes = TestImage::minimal().bytes();
        let mut state = 0x9E37_79B9_u32;
        for round in 0..20_000 {
            let mut corrupt = bytes.clone();
            for _ in 0..1 + round % 6 {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let at = (state >> 7) as usize % corrupt.len();
                corrupt[at] = (state >> 23) as u8;
            }
            let _ = PvKernel::parse(&corrupt, FeatureSet(u32::MAX)).map(|k| k.frames());
        }
    }
}
