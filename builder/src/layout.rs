//! The start-of-day layout of a PV domain: which pseudo-physical frames hold the kernel,
//! the P2M list, `start_info`, the optional xenstore and console rings, the boot page
//! tables and the boot stack, and how much of the domain the initial mapping covers.
//!
//! The builder executes a [`Plan`]; the hypervisor may also plan without building, to
//! refuse a reservation early or to learn the smallest one a guest boots with
//! ([`Plan::minimum_nr_pages`]). Following Xen's builder, frame `pfn` is mapped at
//! `VIRT_BASE + pfn * 4096`, and after the kernel come, each page aligned: the P2M list
//! (8 bytes per page of the reservation), `start_info`, the xenstore page, the console
//! page, the page tables, the boot stack. The initial mapping runs from `VIRT_BASE` to the
//! boot stack's end plus [`BOOT_SLACK`](crate::address_space::BOOT_SLACK), rounded up to
//! [`MAPPING_ALIGN`](crate::address_space::MAPPING_ALIGN), but never past the
//! reservation; the page tables that map it lie inside it, so their number is found by
//! iteration. This module must never touch guest memory.

use abi::ids::{EvtchnPort, Pfn};

use crate::address_space::{
    check_initial_mapping, page_of, BOOT_SLACK_PAGES, MAPPING_ALIGN_PAGES, P2M_ENTRIES_PER_FRAME,
    PAGE_SIZE,
};
use crate::error::BuildError;
use crate::image::ImageSource;
use crate::kernel::PvKernel;
use crate::page_tables::table_frames_for;

/// A half-open range of pseudo-physical frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfnRange {
    /// First frame.
    pub start: Pfn,
    /// One past the last frame.
    pub end: Pfn,
}

impl PfnRange {
    /// `count` frames from `start`.
    pub const fn new(start: Pfn, count: u64) -> Self {
        Self {
            start,
            end: Pfn(start.0 + count),
        }
    }

    /// Number of frames.
    pub const fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }

    /// Whether the range holds no frame.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `pfn` is in the range.
    pub const fn contains(&self, pfn: Pfn) -> bool {
        self.start.0 <= pfn.0 && pfn.0 < self.end.0
    }

    /// The frames, in order.
    pub fn iter(&self) -> impl Iterator<Item = Pfn> {
        (self.start.0..self.end.0).map(Pfn)
    }
}

/// What the domain is given, besides its kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainConfig<'a> {
    /// The reservation: frames 0..nr_pages.
    pub nr_pages: u64,
    /// The guest's command line (no NUL; at most 1023 bytes).
    pub cmd_line: &'a [u8],
    /// The initial control domain: `SIF_PRIVILEGED | SIF_INITDOMAIN`.
    pub is_privileged: bool,
    /// Allocate a xenstore ring page, announced with this event channel.
    pub xenstore: Option<EvtchnPort>,
    /// Allocate a console ring page, announced with this event channel.
    pub console: Option<EvtchnPort>,
}

/// A domain's start-of-day layout. Frames are pseudo-physical (`Pfn`), addresses guest
/// virtual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Virtual address of frame 0.
    pub virt_base: u64,
    /// Frames in the reservation.
    pub nr_pages: u64,
    /// The entry point.
    pub entry: u64,
    /// The kernel image (frames from `VIRT_BASE` up to the image are mapped but unused).
    pub kernel: PfnRange,
    /// The frame the hypervisor fills with hypercall stubs (inside `kernel`).
    pub hypercall_page: Option<Pfn>,
    /// The P2M list: one `u64` machine frame per frame of the reservation.
    pub p2m: PfnRange,
    /// Virtual address of the P2M list (`start_info.mfn_list`).
    pub p2m_va: u64,
    /// The `start_info` page.
    pub start_info: Pfn,
    /// Virtual address of `start_info` (rsi at entry).
    pub start_info_va: u64,
    /// The xenstore ring page, if configured.
    pub xenstore: Option<Pfn>,
    /// The console ring page, if configured.
    pub console: Option<Pfn>,
    /// The boot page tables; the first is the L4.
    pub page_tables: PfnRange,
    /// Number of boot page-table frames (`start_info.nr_pt_frames`).
    pub nr_pt_frames: u64,
    /// Virtual address of the L4 (`start_info.pt_base`).
    pub pt_base: u64,
    /// The boot stack page.
    pub stack: Pfn,
    /// Virtual address just past the boot stack (rsp at entry).
    pub stack_top: u64,
    /// First frame the layout leaves free; also the number of frames it needs.
    pub first_free_pfn: Pfn,
    /// The initial mapping covers frames 0..mapped_pages.
    pub mapped_pages: u64,
}

impl Plan {
    /// Lays out `kernel` in the domain `config` describes.
    pub fn new(
        kernel: &PvKernel<'_, impl ImageSource + ?Sized>,
        config: &DomainConfig<'_>,
    ) -> Result<Self, BuildError> {
        let virt_base = kernel.virt_base();
        let nr_pages = config.nr_pages;
        let kernel_frames = kernel.frames();
        let p2m = PfnRange::new(kernel_frames.end, nr_pages.div_ceil(P2M_ENTRIES_PER_FRAME));
        let start_info = p2m.end;
        let mut next = Pfn(start_info.0 + 1);
        let xenstore = config.xenstore.map(|_| take_frame(&mut next));
        let console = config.console.map(|_| take_frame(&mut next));
        let nr_pt_frames = table_frames_needed(virt_base, next, nr_pages);
        let page_tables = PfnRange::new(next, nr_pt_frames);
        let stack = page_tables.end;
        let first_free_pfn = Pfn(stack.0 + 1);
        if first_free_pfn.0 > nr_pages {
            return Err(BuildError::TooSmall {
                needed_pages: first_free_pfn.0,
                nr_pages,
            });
        }
        let mapped_pages = mapped_pages(virt_base, first_free_pfn, nr_pages);
        check_initial_mapping(virt_base, mapped_pages)?;
        let va = |pfn: Pfn| virt_base + pfn.0 * PAGE_SIZE;
        Ok(Self {
            virt_base,
            nr_pages,
            entry: kernel.entry(),
            kernel: kernel_frames,
            hypercall_page: kernel.hypercall_page_frame(),
            p2m,
            p2m_va: va(p2m.start),
            start_info,
            start_info_va: va(start_info),
            xenstore,
            console,
            page_tables,
            nr_pt_frames,
            pt_base: va(page_tables.start),
            stack,
            stack_top: va(first_free_pfn),
            first_free_pfn,
            mapped_pages,
        })
    }

    /// The smallest reservation in which `kernel` can be laid out with `config` (whose
    /// `nr_pages` is ignored). Errors other than [`BuildError::TooSmall`] are returned as
    /// they come.
    pub fn minimum_nr_pages(
        kernel: &PvKernel<'_, impl ImageSource + ?Sized>,
        config: &DomainConfig<'_>,
    ) -> Result<u64, BuildError> {
        // The pages a layout needs never decrease as the reservation grows, so starting
        // low and jumping to each shortfall reaches the least reservation that fits.
        let mut nr_pages = 1;
        loop {
            let probe = DomainConfig {
                nr_pages,
                ..*config
            };
            match Self::new(kernel, &probe) {
                Ok(_) => return Ok(nr_pages),
                Err(BuildError::TooSmall { needed_pages, .. }) => nr_pages = needed_pages,
                Err(other) => return Err(other),
            }
        }
    }

    /// The virtual address of a frame in the initial mapping.
    pub const fn va(&self, pfn: Pfn) -> u64 {
        self.virt_base + pfn.0 * PAGE_SIZE
    }

    /// The frames of the initial mapping.
    pub const fn mapping(&self) -> PfnRange {
        PfnRange::new(Pfn(0), self.mapped_pages)
    }
}

/// Returns `*next` and advances it by one frame.
fn take_frame(next: &mut Pfn) -> Pfn {
    let frame = *next;
    next.0 += 1;
    frame
}

/// Pages of the initial mapping once the layout ends before `first_free`: up to the end
/// of the slack, rounded up, within the reservation. (Xen rounds the end of the boot
/// stack up to 4 MiB and adds 4 MiB more when less than 512 KiB of slack is left; adding
/// the slack before rounding is the same.)
fn mapped_pages(virt_base: u64, first_free: Pfn, nr_pages: u64) -> u64 {
    let base = page_of(virt_base);
    let end = (base + first_free.0 + BOOT_SLACK_PAGES).next_multiple_of(MAPPING_ALIGN_PAGES);
    (end - base).min(nr_pages)
}

/// The number of page-table frames placed at `pt_start`: the least count that suffices
/// for the mapping which itself includes them (Xen's search for `nr_pt_pages`).
fn table_frames_needed(virt_base: u64, pt_start: Pfn, nr_pages: u64) -> u64 {
    // The tables needed only grow with the count, so jumping to each requirement never
    // overshoots the least fixed point.
    let mut count = 1;
    loop {
        let first_free = Pfn(pt_start.0 + count + 1);
        let mapped = mapped_pages(virt_base, first_free, nr_pages);
        let needed = table_frames_for(page_of(virt_base), mapped);
        if needed <= count {
            return count;
        }
        count = needed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_image::{TestImage, TestSegment, VIRT_BASE};
    use abi::elfnote::ElfNote;
    use abi::features::FeatureSet;
    use alloc::vec;

    const CONFIG: DomainConfig<'static> = DomainConfig {
        nr_pages: 1024,
        cmd_line: b"",
        is_privileged: false,
        xenstore: None,
        console: None,
    };

    fn plan(image: &TestImage, config: &DomainConfig<'_>) -> Result<Plan, BuildError> {
        let bytes = image.bytes();
        Plan::new(&PvKernel::parse(&bytes, FeatureSet::EMPTY)?, config)
    }

    fn minimum(image: &TestImage, config: &DomainConfig<'_>) -> Result<u64, BuildError> {
        let bytes = image.bytes();
        Plan::minimum_nr_pages(&PvKernel::parse(&bytes, FeatureSet::EMPTY)?, config)
    }

    /// The minimal image at `virt_base` with a 16 KiB segment loaded at `virt_base`.
    fn image_at(virt_base: u64) -> TestImage {
        TestImage::minimal()
            .with_note(ElfNote::VirtBase, &virt_base.to_le_bytes())
            .with_note(ElfNote::Entry, &(virt_base + 0x40).to_le_bytes())
            .with_note(ElfNote::HypercallPage, &(virt_base + 0x1000).to_le_bytes())
    }

    #[test]
    fn lays_out_a_small_domain() {
        let plan = plan(&TestImage::minimal(), &CONFIG).unwrap();
        assert_eq!(plan.kernel, PfnRange::new(Pfn(0), 4));
        assert_eq!(plan.hypercall_page, Some(Pfn(1)));
        assert_eq!(
            plan.p2m,
            PfnRange::new(Pfn(4), 2),
            "1024 entries fill two frames"
        );
        assert_eq!(plan.start_info, Pfn(6));
        assert_eq!(plan.xenstore, None);
        assert_eq!(plan.console, None);
        // L4 + L3 + L2 + two L1s (the mapping is 4 MiB); slot 511 has its own L3.
        assert_eq!(plan.page_tables, PfnRange::new(Pfn(7), 5));
        assert_eq!(plan.nr_pt_frames, 5);
        assert_eq!(plan.stack, Pfn(12));
        assert_eq!(plan.first_free_pfn, Pfn(13));
        assert_eq!(plan.mapped_pages, 1024, "4 MiB, the whole reservation");
        assert_eq!(plan.p2m_va, VIRT_BASE + 0x4000);
        assert_eq!(plan.start_info_va, VIRT_BASE + 0x6000);
        assert_eq!(plan.pt_base, VIRT_BASE + 0x7000);
        assert_eq!(plan.stack_top, VIRT_BASE + 0xd000);
        assert_eq!(plan.entry, VIRT_BASE + 0x40);
    }

    #[test]
    fn ring_pages_follow_start_info() {
        let config = DomainConfig {
            xenstore: Some(EvtchnPort(1)),
            console: Some(EvtchnPort(2)),
            ..CONFIG
        };
        let plan = plan(&TestImage::minimal(), &config).unwrap();
        assert_eq!(plan.xenstore, Some(Pfn(7)));
        assert_eq!(plan.console, Some(Pfn(8)));
        assert_eq!(plan.page_tables.start, Pfn(9));
    }

    #[test]
    fn lower_half_guest_gets_an_extra_l3_for_the_hypervisor() {
        let plan = plan(&image_at(0x40_0000), &CONFIG).unwrap();
        assert_eq!(plan.nr_pt_frames, 6);
    }

    #[test]
    fn mapping_ends_on_4_mib_with_at_least_512_kib_slack() {
        let big = DomainConfig {
            nr_pages: 1 << 20,
            ..CONFIG
        };
        let plan = plan(&TestImage::minimal(), &big).unwrap();
        // P2M of 2048 frames: the layout ends at frame 2048 + 4 + 1 + tables + 1.
        let stack_end = plan.first_free_pfn.0;
        assert_eq!(plan.mapped_pages % 1024, 0);
        assert!(plan.mapped_pages - stack_end >= 128);
        assert!(plan.mapped_pages - stack_end < 128 + 1024);
        assert_eq!(plan.mapped_pages, 3072);
        // 12 MiB from slot 511, L3 510: one L4, L3, L2 and six L1s.
        assert_eq!(plan.nr_pt_frames, 9);
    }

    #[test]
    fn slack_rule_adds_4_mib_when_too_little_is_left() {
        // A kernel ending 256 KiB before a 4 MiB boundary leaves too little slack.
        let mut image = TestImage::minimal();
        image.segments[0].memsz = 0x3C_0000 - 0x1_0000;
        let plan = plan(
            &image,
            &DomainConfig {
                nr_pages: 4096,
                ..CONFIG
            },
        )
        .unwrap();
        assert!(plan.first_free_pfn.0 > 1024 - 128);
        assert_eq!(plan.mapped_pages, 2048);
    }

    #[test]
    fn tables_that_push_the_mapping_past_4_mib_are_counted() {
        // Kernel 884 frames, P2M 8, start_info 1: the tables start at frame 893. With one
        // L4, L3, L2 and two L1s (a 4 MiB mapping) the slack would reach past 4 MiB, so
        // the mapping grows to 8 MiB and needs two more L1s.
        let mut image = TestImage::minimal();
        image.segments[0].memsz = 884 * PAGE_SIZE;
        let plan = plan(
            &image,
            &DomainConfig {
                nr_pages: 4096,
                ..CONFIG
            },
        )
        .unwrap();
        assert_eq!(plan.page_tables.start, Pfn(893));
        assert_eq!(plan.mapped_pages, 2048);
        assert_eq!(plan.nr_pt_frames, 7);
    }

    #[test]
    fn table_count_is_a_fixed_point_over_the_mapping() {
        for nr_pages in [16, 600, 5000, 70_000, 300_000, 1 << 21] {
            for virt_base in [VIRT_BASE, 0x40_0000, 0xFFFF_C000_0000_0000] {
                let config = DomainConfig { nr_pages, ..CONFIG };
                let plan = plan(&image_at(virt_base), &config).unwrap();
                let expected = brute_force_tables(plan.virt_base, plan.mapped_pages);
                assert_eq!(
                    plan.nr_pt_frames, expected,
                    "{nr_pages} pages at {virt_base:#x}"
                );
                assert!(plan.page_tables.end.0 <= plan.mapped_pages);
            }
        }
    }

    /// Counts the distinct tables a mapping needs by visiting every page.
    fn brute_force_tables(virt_base: u64, pages: u64) -> u64 {
        let mut count = 1;
        let mut slot_511 = false;
        let mut last = [u64::MAX; 3];
        for page in page_of(virt_base)..page_of(virt_base) + pages {
            for (level, last) in last.iter_mut().enumerate() {
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

    #[test]
    fn reservation_caps_the_mapping() {
        let plan = plan(
            &TestImage::minimal(),
            &DomainConfig {
                nr_pages: 20,
                ..CONFIG
            },
        )
        .unwrap();
        assert_eq!(plan.mapped_pages, 20);
        assert_eq!(plan.first_free_pfn, Pfn(11), "one P2M frame for 20 pages");
    }

    #[test]
    fn refuses_a_reservation_too_small_for_the_layout() {
        assert_eq!(
            plan(
                &TestImage::minimal(),
                &DomainConfig {
                    nr_pages: 10,
                    ..CONFIG
                }
            ),
            Err(BuildError::TooSmall {
                needed_pages: 11,
                nr_pages: 10
            })
        );
        assert_eq!(
            plan(
                &TestImage::minimal(),
                &DomainConfig {
                    nr_pages: 0,
                    ..CONFIG
                }
            ),
            Err(BuildError::TooSmall {
                needed_pages: 8,
                nr_pages: 0
            })
        );
    }

    #[test]
    fn smallest_reservation_for_a_16_kib_kernel() {
        // Upper half, slot 511 already has its L3: kernel 4 + P2M 1 + start_info 1 +
        // tables 4 + stack 1.
        assert_eq!(minimum(&TestImage::minimal(), &CONFIG), Ok(11));
        // Lower half: one more L3, for the hypervisor's slot.
        assert_eq!(minimum(&image_at(0x40_0000), &CONFIG), Ok(12));
        // With xenstore and console rings.
        let rings = DomainConfig {
            xenstore: Some(EvtchnPort(1)),
            console: Some(EvtchnPort(2)),
            ..CONFIG
        };
        assert_eq!(minimum(&TestImage::minimal(), &rings), Ok(13));
        for config in [CONFIG, rings] {
            let smallest = minimum(&TestImage::minimal(), &config).unwrap();
            let at = |nr_pages| plan(&TestImage::minimal(), &DomainConfig { nr_pages, ..config });
            assert!(at(smallest).is_ok());
            assert!(matches!(at(smallest - 1), Err(BuildError::TooSmall { .. })));
        }
    }

    #[test]
    fn smallest_reservation_for_a_big_kernel() {
        // 3 MiB below VIRT_BASE's first segment plus a 60 MiB kernel: the P2M, the tables
        // and the mapping all grow with the reservation.
        let mut image = TestImage::minimal();
        image.segments[0].paddr = 0x30_0000;
        image.segments[0].memsz = 60 << 20;
        let image = image
            .with_note(ElfNote::Entry, &(VIRT_BASE + 0x30_0040).to_le_bytes())
            .with_note(
                ElfNote::HypercallPage,
                &(VIRT_BASE + 0x30_1000).to_le_bytes(),
            );
        let smallest = minimum(&image, &CONFIG).unwrap();
        let plan = plan(
            &image,
            &DomainConfig {
                nr_pages: smallest,
                ..CONFIG
            },
        )
        .unwrap();
        assert_eq!(plan.first_free_pfn.0, smallest);
        assert_eq!(plan.kernel.end, Pfn(0x3F00));
        assert_eq!(plan.p2m.len(), smallest.div_ceil(512));
        assert!(matches!(
            super::Plan::new(
                &PvKernel::parse(&image.bytes(), FeatureSet::EMPTY).unwrap(),
                &DomainConfig {
                    nr_pages: smallest - 1,
                    ..CONFIG
                }
            ),
            Err(BuildError::TooSmall { .. })
        ));
    }

    #[test]
    fn refuses_mappings_into_hypervisor_regions() {
        let m2p = image_at(0xFFFF_8000_0000_0000);
        assert!(matches!(
            plan(&m2p, &CONFIG),
            Err(BuildError::CollidesWithM2p { .. })
        ));
        let top = image_at(0xFFFF_FFFF_C000_0000);
        assert!(matches!(
            plan(&top, &CONFIG),
            Err(BuildError::CollidesWithHypervisor { .. })
        ));
        // The image fits below the hypervisor's gigabyte, its slack does not.
        let near = image_at(0xFFFF_FFFF_BFFF_0000);
        assert!(matches!(
            plan(&near, &CONFIG),
            Err(BuildError::CollidesWithHypervisor { .. })
        ));
        let hole = image_at(0x7FFF_FFFF_0000);
        assert!(matches!(
            plan(&hole, &CONFIG),
            Err(BuildError::NonCanonical { .. })
        ));
    }

    #[test]
    fn pre_kernel_frames_are_mapped() {
        let mut image = TestImage::minimal();
        image.segments = vec![TestSegment::new(0x10_0000, vec![0x90; 0x100], 0x1000)];
        let image = image
            .with_note(ElfNote::Entry, &(VIRT_BASE + 0x10_0000).to_le_bytes())
            .without_note(ElfNote::HypercallPage);
        let plan = plan(
            &image,
            &DomainConfig {
                nr_pages: 4096,
                ..CONFIG
            },
        )
        .unwrap();
        assert_eq!(plan.kernel, PfnRange::new(Pfn(0x100), 1));
        assert_eq!(plan.p2m.start, Pfn(0x101));
    }
}
