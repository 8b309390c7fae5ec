//! What the attacks aim at, prepared from free frames before the first attack: an unmapped
//! hole in the initial mapping, the page before it (a guard page whose end is followed by
//! the hole), a zeroed unused frame, a frame set up as an L1 that maps itself writable,
//! the free frames after those (still mapped writable, for attacks that build tables of
//! their own); and the boot page tables, read through their read-only mapping.
//!
//! The builder's layout puts the boot stack right after the page tables
//! (`nr_pt_frames` from `pt_base`) and maps at least Xen's 512 KiB of slack after it, so the
//! first free frames are mapped writable at start of day. `main` builds [`Targets`] once;
//! the attack modules only read it. This module must never hand an attack a frame the
//! program uses.

use core::fmt;
use core::ops::Range;

use guest_rt::abi::ids::{Mfn, Pfn, PAGE_SIZE};
use guest_rt::abi::mmu::{UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::layout::{self, PTE_ADDRESS_MASK, PTE_PRESENT};
use guest_rt::{start_info, StartInfo};

use crate::verdict::{Outcome, Skip};

/// Xen's boot slack in pages (512 KiB): the initial mapping covers at least this many
/// frames after the boot stack, when the reservation has them.
const BOOT_SLACK_PAGES: u64 = 128;
/// The free frames the targets take.
const FRAMES_NEEDED: u64 = 3;
/// The frame at 2 MiB: the hypervisor's image, never the guest's.
pub const HYPERVISOR_IMAGE: Mfn = Mfn(0x200);
/// The L4 slot that must name a window-L3, and the entry of that window-L3 that the
/// hypervisor keeps (its L2 of the top gigabyte, which holds the 64 MiB window).
pub const HYPERVISOR_SLOT: usize = 511;

/// Why the targets could not be prepared.
#[derive(Clone, Copy, Debug)]
pub enum SetupError {
    /// `pt_base` lies outside the initial mapping.
    BadPtBase(u64),
    /// Fewer than three mapped free frames.
    TooFewFreeFrames,
    /// Unmapping a free frame failed.
    Unmap(HypercallError),
    /// The L3 under L4 slot 511 (the window-L3) is not one of the domain's frames.
    NoWindowL3,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadPtBase(pt_base) => write!(f, "pt_base {pt_base:#x} outside the mapping"),
            Self::TooFewFreeFrames => write!(f, "fewer than {FRAMES_NEEDED} free frames"),
            Self::Unmap(error) => write!(f, "unmapping a free frame: {error:?}"),
            Self::NoWindowL3 => f.write_str("the L3 under L4 slot 511 is not ours"),
        }
    }
}

/// A frame of the domain and its initial-mapping address.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub mfn: Mfn,
    pub va: u64,
}

impl Frame {
    /// Frame `pfn` of the reservation.
    fn of(pfn: Pfn) -> Option<Self> {
        Some(Self {
            mfn: start_info::pfn_to_mfn(pfn)?,
            va: layout::pfn_to_virt(pfn)?,
        })
    }
}

/// A page table and the address of its read-only view.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    pub mfn: Mfn,
    va: u64,
}

impl Table {
    /// Entry `index` (below 512).
    pub fn entry(&self, index: usize) -> u64 {
        assert!(index < 512, "entry {index} is beyond the table");
        // SAFETY: `va` maps the table (the builder maps boot tables read-only) and the
        // index is inside it; volatile because the hypervisor writes the entries.
        unsafe { (self.va as *const u64).add(index).read_volatile() }
    }

    /// The address of its read-only view.
    pub fn va(&self) -> u64 {
        self.va
    }

    /// The machine address of entry `index` (below 512), as `mmu_update` names it.
    pub fn entry_address(&self, index: usize) -> u64 {
        assert!(index < 512, "entry {index} is beyond the table");
        self.mfn.address() + 8 * index as u64
    }

    /// The table entry `index` points to, if present and one of the domain's frames.
    pub fn next_table(&self, index: usize) -> Option<Self> {
        let entry = self.entry(index);
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        let mfn = Mfn::containing(entry & PTE_ADDRESS_MASK);
        let pfn = start_info::mfn_list().iter().position(|&m| m == mfn)?;
        let va = layout::pfn_to_virt(Pfn(pfn as u64))?;
        Some(Self { mfn, va })
    }
}

/// The prepared targets.
#[derive(Debug)]
pub struct Targets {
    /// A free page, mapped writable and unused; the hole follows it.
    pub guard: Frame,
    /// An unmapped page of the initial mapping.
    pub hole: u64,
    /// The hole's frame: zeroed, unmapped, unused.
    pub spare: Mfn,
    /// An unmapped frame whose entry 0 maps itself writable, were it an L1.
    pub self_map: Mfn,
    /// The pfns of the boot page tables.
    pub tables: Range<u64>,
    /// The boot L4.
    pub l4: Table,
    /// The boot window-L3: the L3 under L4 slot 511, whose entry 511 is the hypervisor's.
    pub window_l3: Table,
    /// Free frames (pfns) after the three above, mapped writable and used by nothing:
    /// attack modules take them in order ([`Targets::spare_frame`]).
    pub spare_pfns: Range<u64>,
    /// The shared info frame.
    pub shared_info: Mfn,
}

impl Targets {
    /// Takes the first three free frames and prepares them.
    pub fn new(start: &StartInfo) -> Result<Self, SetupError> {
        let first_table =
            layout::virt_to_pfn(start.pt_base).ok_or(SetupError::BadPtBase(start.pt_base))?;
        let tables = first_table.0..first_table.0.saturating_add(start.nr_pt_frames);
        // The boot stack page follows the tables.
        let first_free = tables.end.saturating_add(1);
        let mapped_end = first_free
            .saturating_add(BOOT_SLACK_PAGES)
            .min(start.nr_pages);
        if first_free.saturating_add(FRAMES_NEEDED) > mapped_end {
            return Err(SetupError::TooFewFreeFrames);
        }
        let frame = |n: u64| Frame::of(Pfn(first_free + n)).ok_or(SetupError::TooFewFreeFrames);
        let (guard, hole, self_map) = (frame(0)?, frame(1)?, frame(2)?);
        // SAFETY: free frames, mapped writable at their addresses and used by nothing:
        // the hole's is zeroed, the other becomes an L1 image whose entry 0 maps itself.
        unsafe {
            zero(hole.va);
            zero(self_map.va);
            (self_map.va as *mut u64).write_volatile(layout::kernel_rw_pte(self_map.mfn.address()));
        }
        unmap(hole.va)?;
        unmap(self_map.va)?;
        let l4 = Table {
            mfn: start_info::pfn_to_mfn(first_table).ok_or(SetupError::BadPtBase(start.pt_base))?,
            va: start.pt_base,
        };
        let window_l3 = l4.next_table(HYPERVISOR_SLOT).ok_or(SetupError::NoWindowL3)?;
        Ok(Self {
            guard,
            hole: hole.va,
            spare: hole.mfn,
            self_map: self_map.mfn,
            tables,
            l4,
            window_l3,
            spare_pfns: first_free.saturating_add(FRAMES_NEEDED)..mapped_end,
            shared_info: Mfn::containing(start.shared_info),
        })
    }

    /// Spare frame `n` (from 0) of [`Self::spare_pfns`], mapped writable at its address;
    /// `None` past the last. Each attack module uses its own, fixed, numbers.
    pub fn spare_frame(&self, n: u64) -> Option<Frame> {
        let pfn = self.spare_pfns.start.checked_add(n)?;
        if !self.spare_pfns.contains(&pfn) {
            return None;
        }
        Frame::of(Pfn(pfn))
    }

    /// Whether `mfn` is one of the domain's frames (or its shared info frame).
    pub fn owns(&self, mfn: Mfn) -> bool {
        mfn == self.shared_info || start_info::mfn_list().contains(&mfn)
    }

    /// The outcome of `attack` on `mfn`, a frame meant as foreign: skipped when it is the
    /// guest's own here.
    pub fn unless_own(&self, mfn: Mfn, attack: impl FnOnce() -> Outcome) -> Outcome {
        if self.owns(mfn) {
            Outcome::Skipped(Skip::OwnFrame(mfn))
        } else {
            attack()
        }
    }

    /// Writes `value` as the last bytes of the guard page, right before the hole, and
    /// returns its address: a one-element array that a hypervisor ignoring a count
    /// cannot read past without faulting.
    pub fn before_hole<T: Copy>(&self, value: T) -> u64 {
        let size = size_of::<T>() as u64;
        assert!(size <= PAGE_SIZE, "the value must fit the guard page");
        let address = self.guard.va + PAGE_SIZE - size;
        // SAFETY: the guard page is mapped writable and used by nothing else; the value
        // fits inside it. Unaligned, as the page's end need not suit T's alignment.
        unsafe { (address as *mut T).write_unaligned(value) };
        address
    }
}

/// Zeroes the page at `va`.
///
/// # Safety
/// `va` must map a writable page that nothing uses.
unsafe fn zero(va: u64) {
    // SAFETY: the caller vouches for the page.
    unsafe { core::ptr::write_bytes(va as *mut u8, 0, PAGE_SIZE as usize) };
}

/// Unmaps the free page at `va`.
fn unmap(va: u64) -> Result<(), SetupError> {
    // SAFETY: a free frame's page: nothing uses it.
    unsafe { hypercall::update_va_mapping(va, 0, UVMF_INVLPG | UVMF_LOCAL) }
        .map_err(SetupError::Unmap)
}
