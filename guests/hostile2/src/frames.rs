//! Free frames of the reservation: a cursor over the frames the builder's layout leaves
//! unused after the boot stack, each mapped writable at its own initial-mapping address at
//! start of day (the races use those addresses as their probe pages, since the boot L1s
//! that map them can be retargeted with `update_va_mapping`).
//!
//! The races take their frames here once, before they start. This module must never hand
//! out a frame twice or one below the first free frame.

use core::ops::Range;

use guest_rt::abi::ids::{Mfn, Pfn};
use guest_rt::{layout, start_info, StartInfo};

/// Xen's boot slack in pages (512 KiB): the initial mapping covers at least this many
/// frames after the boot stack, when the reservation has them.
const BOOT_SLACK_PAGES: u64 = 128;

/// A free frame of the domain and its initial-mapping address.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub mfn: Mfn,
    pub va: u64,
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
        let first_free = first_table.0.saturating_add(start.nr_pt_frames).saturating_add(1);
        let end = first_free.saturating_add(BOOT_SLACK_PAGES).min(start.nr_pages);
        Some(Self { pfns: first_free..end.max(first_free) })
    }

    /// The next free frame; `None` when all are taken.
    pub fn take(&mut self) -> Option<Frame> {
        let pfn = Pfn(self.pfns.next()?);
        Some(Frame { mfn: start_info::pfn_to_mfn(pfn)?, va: layout::pfn_to_virt(pfn)? })
    }
}
