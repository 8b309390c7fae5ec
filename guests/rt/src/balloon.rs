//! Ballooning: giving frames of the reservation back to the hypervisor and taking new ones
//! (`memory_op` decrease/increase_reservation, order-0 extents of machine frames, as PV
//! guests pass them), keeping the P2M list (`start_info.mfn_list`) and the initial mapping
//! in step.
//!
//! Which frames are free: the builder lays out, from pfn 0, the image, the P2M list,
//! `start_info` (and the console and xenstore pages), the boot page tables
//! (`nr_pt_frames` from `pt_base`) and one boot-stack page; every frame after the stack is
//! unused by a guest-rt guest, which has no allocator. The initial mapping covers frames
//! up to the stack plus 512 KiB of slack rounded up to 4 MiB, within the reservation
//! ([`FrameLayout`]); frames beyond it are unmapped and have no L1 table.
//!
//! [`balloon_down`] releases free frames from the top of the reservation down (those
//! beyond the mapping first, then mapped ones, unmapped with `update_va_mapping` before
//! they go) and marks them [`INVALID_MFN`] in the P2M list. [`balloon_up`] takes new
//! frames into the lowest invalid P2M slots, mapping each one whose slot lies in the
//! initial mapping. The P2M list has `nr_pages` entries, so a domain can regain only what
//! it gave away. This module must never release a frame below the first free one.

use abi::hypercall::MemoryOp;
use abi::ids::{DomId, Mfn, Pfn, PAGE_SIZE};
use abi::memory::XenMemoryReservation;
use abi::mmu::{UVMF_INVLPG, UVMF_LOCAL};
use abi::start_info::StartInfo;

use crate::hypercall::{self, HypercallError};
use crate::layout;
use crate::start_info::start_info;

/// The P2M entry of a frame the domain no longer has (Linux's `INVALID_P2M_ENTRY`).
pub const INVALID_MFN: Mfn = Mfn(u64::MAX);

/// Xen's boot slack past the boot stack, in pages (512 KiB).
const BOOT_SLACK_PAGES: u64 = 512 * 1024 / PAGE_SIZE;
/// The initial mapping's end is rounded up to this many pages (4 MiB).
const MAPPING_ALIGN_PAGES: u64 = 4 * 1024 * 1024 / PAGE_SIZE;
/// Frames handled per `memory_op` call.
const BATCH: usize = 64;

/// Why ballooning stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalloonError {
    /// A hypercall failed.
    Call(HypercallError),
    /// `start_info.pt_base` lies outside the initial mapping.
    BadPtBase { pt_base: u64 },
    /// Fewer free frames (or free P2M slots, to balloon up) than asked for.
    NotEnough { wanted: u64, available: u64 },
    /// The hypervisor handled fewer extents than asked for.
    Short { asked: u64, done: u64 },
}

impl From<HypercallError> for BalloonError {
    fn from(error: HypercallError) -> Self {
        Self::Call(error)
    }
}

/// Where the free frames are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// The first frame after the boot stack.
    pub first_free: u64,
    /// Frames `0..mapped_end` are in the initial mapping.
    pub mapped_end: u64,
    /// Frames in the P2M list (`nr_pages`).
    pub nr_pages: u64,
}

impl FrameLayout {
    /// The layout the builder left, from `start_info`; `None` when `pt_base` lies outside
    /// the initial mapping.
    pub fn of(start: &StartInfo) -> Option<Self> {
        let first_table = layout::virt_to_pfn(start.pt_base)?.0;
        let first_free = first_table
            .saturating_add(start.nr_pt_frames)
            .saturating_add(1);
        let slack_end = first_free.saturating_add(BOOT_SLACK_PAGES);
        let mapped_end = slack_end
            .checked_next_multiple_of(MAPPING_ALIGN_PAGES)
            .unwrap_or(u64::MAX)
            .min(start.nr_pages);
        Some(Self {
            first_free: first_free.min(start.nr_pages),
            mapped_end,
            nr_pages: start.nr_pages,
        })
    }

    /// Whether `pfn`'s page is in the initial mapping.
    pub const fn is_mapped(&self, pfn: Pfn) -> bool {
        pfn.0 < self.mapped_end
    }
}

/// Frames the domain holds (`XENMEM_current_reservation`).
pub fn current_reservation() -> Result<u64, HypercallError> {
    query(MemoryOp::CurrentReservation)
}

/// Frames the domain may hold (`XENMEM_maximum_reservation`).
pub fn maximum_reservation() -> Result<u64, HypercallError> {
    query(MemoryOp::MaximumReservation)
}

/// A query that takes a `domid_t`.
fn query(cmd: MemoryOp) -> Result<u64, HypercallError> {
    let mut domid = DomId::SELF;
    // SAFETY: the command reads the domid_t on our stack and changes nothing.
    unsafe { hypercall::memory_op(cmd, &raw mut domid) }
}

/// Up to `out.len()` frames to release, highest first: valid P2M entries at or above
/// `first_free`. Returns how many it found.
pub fn pick_release(p2m: &[Mfn], first_free: u64, out: &mut [Pfn]) -> usize {
    pick(p2m, first_free, out, |mfn| mfn != INVALID_MFN, true)
}

/// Up to `out.len()` P2M slots to fill, lowest first: invalid entries at or above
/// `first_free`. Returns how many it found.
pub fn pick_slots(p2m: &[Mfn], first_free: u64, out: &mut [Pfn]) -> usize {
    pick(p2m, first_free, out, |mfn| mfn == INVALID_MFN, false)
}

/// Counts the entries at or above `first_free` that satisfy `wanted`.
fn count(p2m: &[Mfn], first_free: u64, wanted: impl Fn(Mfn) -> bool) -> u64 {
    let start = usize::try_from(first_free).unwrap_or(usize::MAX);
    p2m.get(start..).map_or(0, |free| {
        free.iter().filter(|&&mfn| wanted(mfn)).count() as u64
    })
}

/// The first `out.len()` frames from `first_free` up (or from the top down) whose entry
/// satisfies `wanted`.
fn pick(
    p2m: &[Mfn],
    first_free: u64,
    out: &mut [Pfn],
    wanted: impl Fn(Mfn) -> bool,
    from_top: bool,
) -> usize {
    let start = usize::try_from(first_free)
        .unwrap_or(usize::MAX)
        .min(p2m.len());
    let candidates = (start..p2m.len()).filter(|&pfn| wanted(p2m[pfn]));
    let mut fill = |pfns: &mut dyn Iterator<Item = usize>| {
        out.iter_mut()
            .zip(pfns)
            .map(|(slot, pfn)| *slot = Pfn(pfn as u64))
            .count()
    };
    if from_top {
        fill(&mut candidates.rev())
    } else {
        fill(&mut { candidates })
    }
}

/// Gives `count` free frames back to the hypervisor.
///
/// # Safety
/// Nothing may use memory past the boot stack (true of a guest-rt guest without an
/// allocator), and no slice returned by [`crate::start_info::mfn_list`] may be in use
/// during the call: the P2M list changes.
pub unsafe fn balloon_down(count: u64) -> Result<(), BalloonError> {
    let frames = layout_with(count, |mfn| mfn != INVALID_MFN)?;
    let mut left = count;
    while left > 0 {
        let mut pfns = [Pfn(0); BATCH];
        let want = (left as usize).min(BATCH);
        let found = pick_release(p2m(), frames.first_free, &mut pfns[..want]);
        let mut mfns = [Mfn(0); BATCH];
        for (&pfn, mfn) in pfns[..found].iter().zip(&mut mfns) {
            *mfn = p2m_get(pfn);
            if frames.is_mapped(pfn) {
                // SAFETY: a free frame (the caller's contract): nothing uses its page.
                unsafe { set_mapping(pfn, 0)? };
            }
            p2m_set(pfn, INVALID_MFN);
        }
        // SAFETY: the frames are unmapped and out of the P2M list: nothing uses them.
        let done = unsafe { reservation(MemoryOp::DecreaseReservation, &mut mfns[..found])? };
        if done != found as u64 {
            return Err(BalloonError::Short {
                asked: found as u64,
                done,
            });
        }
        left -= found as u64;
    }
    Ok(())
}

/// This guest's frame layout, once at least `count` P2M entries pass `wanted` (frames to
/// give back, or free slots to fill).
fn layout_with(count: u64, wanted: impl Fn(Mfn) -> bool) -> Result<FrameLayout, BalloonError> {
    let start = start_info();
    let frames = FrameLayout::of(start).ok_or(BalloonError::BadPtBase {
        pt_base: start.pt_base,
    })?;
    let available = count_entries(frames, wanted);
    if available < count {
        return Err(BalloonError::NotEnough {
            wanted: count,
            available,
        });
    }
    Ok(frames)
}

/// Takes `count` new frames from the hypervisor into free P2M slots, mapping those in the
/// initial mapping.
///
/// # Safety
/// As [`balloon_down`].
pub unsafe fn balloon_up(count: u64) -> Result<(), BalloonError> {
    let frames = layout_with(count, |mfn| mfn == INVALID_MFN)?;
    let mut left = count;
    while left > 0 {
        let want = (left as usize).min(BATCH);
        let mut mfns = [Mfn(0); BATCH];
        // SAFETY: new frames are not mapped, so the program's memory is unchanged.
        let granted = unsafe { reservation(MemoryOp::IncreaseReservation, &mut mfns[..want])? };
        let granted = usize::try_from(granted).unwrap_or(usize::MAX).min(want);
        let mut pfns = [Pfn(0); BATCH];
        // At least `left` slots are free, as counted above, and each granted frame fills one.
        let slots = pick_slots(p2m(), frames.first_free, &mut pfns[..granted]);
        for (&pfn, &mfn) in pfns[..slots].iter().zip(&mfns[..granted]) {
            if frames.is_mapped(pfn) {
                // SAFETY: the slot's page was unmapped when its frame was released, and
                // `mfn` was just granted: nothing uses either.
                unsafe { set_mapping(pfn, layout::kernel_rw_pte(mfn.address()))? };
            }
            p2m_set(pfn, mfn);
        }
        if granted != want {
            return Err(BalloonError::Short {
                asked: want as u64,
                done: granted as u64,
            });
        }
        left -= want as u64;
    }
    Ok(())
}

/// Free frames (or free slots) per `wanted`, above the boot stack.
fn count_entries(frames: FrameLayout, wanted: impl Fn(Mfn) -> bool) -> u64 {
    count(p2m(), frames.first_free, wanted)
}

/// `XENMEM_increase_reservation` or `decrease_reservation` on `extents`.
///
/// # Safety
/// For a decrease, no frame in `extents` may be mapped or in use.
unsafe fn reservation(cmd: MemoryOp, extents: &mut [Mfn]) -> Result<u64, HypercallError> {
    let mut request = XenMemoryReservation {
        extent_start: extents.as_mut_ptr() as u64,
        nr_extents: extents.len() as u64,
        extent_order: 0,
        mem_flags: 0,
        domid: DomId::SELF,
        _pad: [0; 3],
    };
    // SAFETY: the hypervisor reads (and for an increase writes) at most `nr_extents`
    // frame numbers of the live slice; the caller vouches for the frames given away.
    unsafe { hypercall::memory_op(cmd, &raw mut request) }
}

/// Points `pfn`'s initial-mapping page at `pte` (0: unmapped).
///
/// # Safety
/// Nothing may use the page's old or new contents as ordinary memory.
unsafe fn set_mapping(pfn: Pfn, pte: u64) -> Result<(), HypercallError> {
    let va = layout::pfn_to_virt(pfn).ok_or(HypercallError::BadArgument)?;
    // SAFETY: the caller vouches for the page.
    unsafe { hypercall::update_va_mapping(va, pte, UVMF_INVLPG | UVMF_LOCAL) }
}

/// The P2M list as it is now. Only read within one step, never kept.
fn p2m() -> &'static [Mfn] {
    crate::start_info::mfn_list()
}

/// The address of `pfn`'s P2M entry.
fn p2m_entry(pfn: Pfn) -> *mut Mfn {
    let info = start_info();
    assert!(pfn.0 < info.nr_pages, "{pfn:?} is beyond the P2M list");
    (info.mfn_list as *mut Mfn).wrapping_add(pfn.0 as usize)
}

/// The machine frame recorded for `pfn`.
fn p2m_get(pfn: Pfn) -> Mfn {
    // SAFETY: the entry lies in the list, which the runtime checked is aligned and in the
    // initial mapping (writable: it is not a page table).
    unsafe { p2m_entry(pfn).read_volatile() }
}

/// Records `mfn` behind `pfn`. The callers of `balloon_down`/`balloon_up` promise that no
/// slice of the list is in use while it changes.
fn p2m_set(pfn: Pfn, mfn: Mfn) {
    // SAFETY: as in `p2m_get`; no reference into the list is live (callers' contract;
    // the slices this module takes end before each write).
    unsafe { p2m_entry(pfn).write_volatile(mfn) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn start(pt_base_pfn: u64, nr_pt_frames: u64, nr_pages: u64) -> StartInfo {
        StartInfo {
            pt_base: layout::VIRT_BASE + pt_base_pfn * PAGE_SIZE,
            nr_pt_frames,
            nr_pages,
            ..StartInfo::new()
        }
    }

    #[test]
    fn a_small_reservation_is_mapped_whole() {
        // Tables at 20-23, stack 24: free from 25; 128 pages are all mapped.
        let frames = FrameLayout::of(&start(20, 4, 128)).unwrap();
        assert_eq!(
            frames,
            FrameLayout {
                first_free: 25,
                mapped_end: 128,
                nr_pages: 128
            }
        );
        assert!(frames.is_mapped(Pfn(127)));
    }

    #[test]
    fn a_large_reservation_is_mapped_to_the_next_4_mib() {
        // 25 + 128 slack rounds up to 1024 pages.
        let frames = FrameLayout::of(&start(20, 4, 4096)).unwrap();
        assert_eq!(frames.mapped_end, 1024);
        assert!(frames.is_mapped(Pfn(1023)) && !frames.is_mapped(Pfn(1024)));
        // A stack ending just below 4 MiB needs the slack: 8 MiB are mapped.
        let frames = FrameLayout::of(&start(1000, 10, 4096)).unwrap();
        assert_eq!(frames.mapped_end, 2048);
    }

    #[test]
    fn hostile_start_info_is_refused_or_clamped() {
        let below = StartInfo {
            pt_base: 0x1000,
            ..start(0, 1, 10)
        };
        assert_eq!(FrameLayout::of(&below), None);
        let huge = FrameLayout::of(&start(5, u64::MAX, 100)).unwrap();
        assert_eq!(
            huge.first_free, 100,
            "nothing free when the tables cover everything"
        );
        assert_eq!(huge.mapped_end, 100);
    }

    fn p2m(entries: &[u64]) -> Vec<Mfn> {
        entries.iter().map(|&e| Mfn(e)).collect()
    }

    const X: u64 = u64::MAX;

    #[test]
    fn release_takes_valid_frames_from_the_top_down() {
        let list = p2m(&[10, 11, 12, 13, X, 15, 16]);
        let mut out = [Pfn(0); 3];
        assert_eq!(pick_release(&list, 2, &mut out), 3);
        assert_eq!(out, [Pfn(6), Pfn(5), Pfn(3)], "pfn 4 is already gone");
        let mut many = [Pfn(0); 10];
        assert_eq!(
            pick_release(&list, 2, &mut many),
            4,
            "never below first_free"
        );
        assert_eq!(&many[..4], [Pfn(6), Pfn(5), Pfn(3), Pfn(2)]);
    }

    #[test]
    fn slots_are_the_lowest_invalid_entries() {
        let list = p2m(&[X, 11, X, 13, X, X]);
        let mut out = [Pfn(0); 2];
        assert_eq!(pick_slots(&list, 1, &mut out), 2);
        assert_eq!(out, [Pfn(2), Pfn(4)], "pfn 0 is below first_free");
        assert_eq!(count(&list, 1, |m| m == INVALID_MFN), 3);
        assert_eq!(count(&list, 1, |m| m != INVALID_MFN), 2);
    }

    #[test]
    fn empty_requests_and_out_of_range_starts_find_nothing() {
        let list = p2m(&[1, 2, 3]);
        assert_eq!(pick_release(&list, 0, &mut []), 0);
        let mut out = [Pfn(9); 2];
        assert_eq!(pick_release(&list, 3, &mut out), 0);
        assert_eq!(pick_slots(&list, u64::MAX, &mut out), 0);
        assert_eq!(out, [Pfn(9); 2], "untouched");
        assert_eq!(count(&list, u64::MAX, |_| true), 0);
    }
}
