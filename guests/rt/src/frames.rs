//! Free frames of the reservation: a cursor over the frames the builder's layout leaves
//! unused, each mapped writable at its own initial-mapping address at start of day.
//!
//! The builder lays out, from pfn 0: the image, the P2M list, `start_info`, the boot page
//! tables (`nr_pt_frames` of them from `pt_base`) and one boot stack page; the frames after
//! the stack are free, and the initial mapping covers at least Xen's 512 KiB of slack past
//! the stack (within the reservation). Guests take frames here for pages and tables of
//! their own (guest-smpuser, guest-segments). This module must never hand out a frame twice
//! or one below the first free frame.

use core::ops::Range;

use abi::ids::{Mfn, Pfn};
use abi::start_info::StartInfo;

use crate::{layout, start_info};

/// Xen's boot slack in pages (512 KiB): the initial mapping covers at least this many
/// frames after the boot stack, when the reservation has them.
const BOOT_SLACK_PAGES: u64 = 128;

/// A free frame of the domain.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub pfn: Pfn,
    pub mfn: Mfn,
}

impl Frame {
    /// The frame's address in the initial mapping.
    pub fn va(&self) -> u64 {
        // The frame lies below nr_pages, whose mapping the runtime checked fits.
        layout::pfn_to_virt(self.pfn).expect("a frame of the reservation has an address")
    }
}

/// The free frames not yet taken.
#[derive(Debug)]
pub struct FreeFrames {
    pfns: Range<u64>,
}

impl FreeFrames {
    /// The free frames that start out mapped; `None` when `pt_base` lies outside the
    /// initial mapping.
    pub fn new(start: &StartInfo) -> Option<Self> {
        let first_table = layout::virt_to_pfn(start.pt_base)?;
        // The boot stack page follows the tables.
        let first_free = first_table
            .0
            .saturating_add(start.nr_pt_frames)
            .saturating_add(1);
        let end = first_free
            .saturating_add(BOOT_SLACK_PAGES)
            .min(start.nr_pages);
        Some(Self {
            pfns: first_free..end.max(first_free),
        })
    }

    /// The next free frame, still mapped writable at its own address; `None` when all are
    /// taken.
    pub fn take(&mut self) -> Option<Frame> {
        let pfn = Pfn(self.pfns.next()?);
        let mfn = start_info::pfn_to_mfn(pfn)?;
        Some(Frame { pfn, mfn })
    }

    /// The page frame numbers of the reservation past the free ones of the initial mapping
    /// (from the end of Xen's boot slack to `nr_pages`): not necessarily mapped, and used
    /// by nothing in the runtime. Domain 0 keeps disks there, reached by machine frame
    /// ([`start_info::pfn_to_mfn`]) through grant copies.
    pub fn past_slack(&self, start: &StartInfo) -> Range<u64> {
        self.pfns.end..start.nr_pages.max(self.pfns.end)
    }
}
