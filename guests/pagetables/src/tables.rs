//! Page tables as this guest handles them: entry encoding, finding a boot table by walking
//! down from `pt_base`, reading entries through a table's read-only mapping, and the
//! requests that change tables (`mmu_update`, `mmuext_op`), which the hypervisor validates.
//!
//! A PV guest's tables are mapped read-only, and each change is a hypercall (or, with
//! writable page tables, a direct write the hypervisor emulates: `writable`). Table frames
//! are found from the machine addresses in entries by searching the P2M list. `main` uses
//! this module for the L1 table it builds; it must never write to a table other than
//! through the hypervisor.

use core::fmt;

use guest_rt::abi::hypercall::{MmuUpdateCmd, MmuextCmd};
use guest_rt::abi::ids::{DomId, Mfn, Pfn};
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp};
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::layout::{self, PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER, PTE_WRITABLE, VIRT_BASE};
use guest_rt::start_info;

/// Entry bit: accessed.
const PTE_ACCESSED: u64 = 1 << 5;
/// Entry bit: dirty.
const PTE_DIRTY: u64 = 1 << 6;
/// Entries in a table.
pub const ENTRIES: usize = 512;

/// A leaf entry mapping `mfn` writable for the guest kernel.
pub const fn rw_pte(mfn: Mfn) -> u64 {
    layout::kernel_rw_pte(mfn.address()) | PTE_ACCESSED | PTE_DIRTY
}

/// A leaf entry mapping `mfn` read-only for the guest kernel.
pub const fn ro_pte(mfn: Mfn) -> u64 {
    (mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER | PTE_ACCESSED
}

/// An entry pointing to the lower-level table in `mfn`.
pub const fn table_pte(mfn: Mfn) -> u64 {
    (mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED
}

/// The index of `va` in its level-`level` table (1 to 4).
pub const fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & (ENTRIES as u64 - 1)) as usize
}

/// Why a walk from `pt_base` stopped.
#[derive(Clone, Copy, Debug)]
pub enum WalkError {
    /// `pt_base` lies outside the initial mapping.
    BadPtBase(u64),
    /// The entry at `index` of a level-`level` table is not present.
    NotPresent { level: u32, index: usize },
    /// A table's frame is not one of the domain's (not in the P2M list).
    UnknownFrame(Mfn),
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadPtBase(pt_base) => {
                write!(f, "pt_base {pt_base:#x} is outside the initial mapping")
            }
            Self::NotPresent { level, index } => write!(f, "L{level} entry {index} not present"),
            Self::UnknownFrame(mfn) => write!(f, "table mfn {:#x} is not in the P2M list", mfn.0),
        }
    }
}

/// A page-table frame and the address of its read-only view.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    pub mfn: Mfn,
    va: u64,
}

impl Table {
    /// The table in `mfn`, readable at `va`.
    pub const fn new(mfn: Mfn, va: u64) -> Self {
        Self { mfn, va }
    }

    /// The address of its read-only view.
    pub const fn va(&self) -> u64 {
        self.va
    }

    /// Entry `index` as the hypervisor last wrote it. Panics beyond the table.
    pub fn entry(&self, index: usize) -> u64 {
        assert!(index < ENTRIES, "entry {index} is beyond the table");
        // SAFETY: `va` maps the table's page (readable; the constructors see to it) and
        // the index is inside it; volatile because the hypervisor writes the entries.
        unsafe { (self.va as *const u64).add(index).read_volatile() }
    }

    /// A request to set entry `index` to `value`. Panics beyond the table.
    pub fn set(&self, index: usize, value: u64) -> MmuUpdate {
        assert!(index < ENTRIES, "entry {index} is beyond the table");
        let entry = self.mfn.address() + 8 * index as u64;
        MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, entry, value)
    }

    /// The table entry `index` points to (level `level` names this table, for errors).
    fn next(&self, level: u32, index: usize) -> Result<Self, WalkError> {
        let entry = self.entry(index);
        if entry & PTE_PRESENT == 0 {
            return Err(WalkError::NotPresent { level, index });
        }
        let mfn = Mfn::containing(entry & PTE_ADDRESS_MASK);
        let pfn = start_info::mfn_list()
            .iter()
            .position(|&m| m == mfn)
            .ok_or(WalkError::UnknownFrame(mfn))?;
        let va = layout::pfn_to_virt(Pfn(pfn as u64)).ok_or(WalkError::UnknownFrame(mfn))?;
        Ok(Self::new(mfn, va))
    }
}

/// The boot L4 (at `pt_base`, mapped read-only by the builder).
pub fn boot_l4() -> Result<Table, WalkError> {
    let pt_base = start_info::pt_base();
    let mfn = start_info::virt_to_mfn(pt_base).ok_or(WalkError::BadPtBase(pt_base))?;
    Ok(Table::new(mfn, pt_base))
}

/// The boot L2 covering the initial mapping's first gigabyte (from `VIRT_BASE`).
pub fn boot_l2() -> Result<Table, WalkError> {
    let l3 = boot_l4()?.next(4, index(VIRT_BASE, 4))?;
    l3.next(3, index(VIRT_BASE, 3))
}

/// Applies `requests`; returns how many were done.
///
/// # Safety
/// The updates must not unmap or remap memory the program uses as ordinary memory.
pub unsafe fn update(requests: &[MmuUpdate]) -> Result<u32, HypercallError> {
    let mut done = 0;
    // SAFETY: the caller vouches for the updates' effect.
    unsafe { hypercall::mmu_update(requests, &mut done, DomId::SELF) }?;
    Ok(done)
}

/// Runs one extended operation.
///
/// # Safety
/// As [`update`]: pins, unpins and flushes are harmless; a new base pointer is not.
pub unsafe fn extended(op: MmuextOp) -> Result<(), HypercallError> {
    let mut done = 0;
    // SAFETY: the caller vouches for the operation's effect.
    unsafe { hypercall::mmuext_op(&[op], &mut done, DomId::SELF) }
}

/// `MMUEXT_PIN_L1_TABLE` of `mfn`.
pub fn pin_l1(mfn: Mfn) -> Result<(), HypercallError> {
    // SAFETY: pinning changes no mapping, only the frame's type.
    unsafe { extended(MmuextOp::with_mfn(MmuextCmd::PinL1Table, mfn)) }
}

/// `MMUEXT_UNPIN_TABLE` of `mfn`.
pub fn unpin(mfn: Mfn) -> Result<(), HypercallError> {
    // SAFETY: unpinning changes no mapping; the hypervisor keeps a table in use typed.
    unsafe { extended(MmuextOp::with_mfn(MmuextCmd::UnpinTable, mfn)) }
}

/// A TLB flush of this vCPU (`MMUEXT_TLB_FLUSH_LOCAL`) or of all (`..._ALL`).
pub fn flush_tlb(cmd: MmuextCmd) -> Result<(), HypercallError> {
    // SAFETY: a flush changes no mapping.
    unsafe { extended(MmuextOp::plain(cmd)) }
}

/// `MMUEXT_INVLPG_LOCAL` of `va`.
pub fn invlpg_local(va: u64) -> Result<(), HypercallError> {
    // SAFETY: a flush changes no mapping.
    unsafe { extended(MmuextOp::with_linear_addr(MmuextCmd::InvlpgLocal, va)) }
}
