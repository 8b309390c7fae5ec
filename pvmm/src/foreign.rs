//! Grant mappings in PV page tables: L1 entries that map a frame another domain granted
//! (Xen's `create_grant_pv_mapping` and `replace_grant_pv_mapping`), for the hypervisor's
//! `map_grant_ref`, `unmap_grant_ref` and `unmap_and_replace`.
//!
//! The hypervisor finds the entry (by virtual address with [`PvMmu::l1_entry_of`], or by the
//! machine address the guest gave with `GNTMAP_contains_pte`, which must be 8-byte aligned:
//! XSA-227) and calls these with the domain's page-table lock held, on a view
//! ([`PvMmu::with_sharing`]) that lets the domain map exactly the granted frame. A grant
//! entry is an ordinary L1 entry for the counting model: it holds its own general (and,
//! writable, writable-type) reference on the frame, so that however the guest later
//! removes it (`unmap_grant_ref`, an `mmu_update`, the L1 torn down, the domain's death)
//! the counts stay exact; the hypervisor's maptrack holds another set for the grant itself.
//! Only a validated L1 the domain owns may hold one (never another level, never a plain
//! page: Xen's `PGT_l1_page_table` check). Removal checks the entry maps the granted frame
//! with the granted access (present, and writable exactly when the grant is: XSA-234) and
//! may move another L1 entry of the domain into its place (`unmap_and_replace`), the
//! moved entry keeping its references. Nothing here flushes a TLB: the hypervisor flushes
//! the domain's CPUs after a removal and before it drops the grant's own references.

use mm::addr::Mfn;
use mm::frame::{DomainId, PageType, TypeFlags};

use crate::entry::{Pte, PteFlags};
use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::refs::{type_after_get, update_type, Access, PvMmu};
use crate::walk::EntrySlot;

/// The available bits (9-11) a grant mapping may carry (`XENFEAT_gnttab_map_avail_bits`).
pub const GRANT_AVAIL_BITS: u64 = 0b111;

/// The L1 entry of a grant mapping of `mfn` (Xen's `grant_to_pte_flags`): present,
/// accessed, dirty, never executable, user-accessible (the guest kernel runs at CPL 3),
/// writable unless read-only, and the guest's `avail` bits (the low 3) in bits 9-11.
pub const fn grant_entry(mfn: Mfn, writable: bool, avail: u64) -> u64 {
    let fixed = PteFlags::PRESENT
        .union(PteFlags::ACCESSED)
        .union(PteFlags::DIRTY)
        .union(PteFlags::USER)
        .union(PteFlags::NO_EXECUTE);
    let rw = if writable { PteFlags::WRITABLE } else { PteFlags::empty() };
    let avail = PteFlags::from_bits_retain((avail & GRANT_AVAIL_BITS) << 9);
    Pte::new(mfn, fixed.union(rw).union(avail)).raw()
}

impl PvMmu<'_> {
    /// Writes grant mapping `value` into `slot`, which must be an entry of a validated L1
    /// that `dom` owns. The value is checked as any L1 entry (and its frame must be `dom`'s
    /// or shared with it by this view's hook); the references it needs are taken before
    /// those of the entry it replaces are dropped.
    pub fn set_grant_entry<M: TableMemory + ?Sized>(
        &self,
        slot: EntrySlot,
        value: u64,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.with_l1(slot, dom, mem, |mmu, mem| {
            let old = mem.read(slot.table, slot.index);
            let stored = mmu.take_entry(Level::L1, slot.index, value, dom, mem)?;
            mem.write(slot.table, slot.index, stored);
            mmu.drop_entry(Level::L1, old, mem)
        })
    }

    /// Removes the grant mapping of `mfn` in `slot` (an entry of a validated L1 of `dom`):
    /// refused unless the entry is present, maps `mfn` and is writable exactly when
    /// `writable`. With `steal`, the entry there (of another validated L1 of `dom`) moves
    /// into `slot`, keeping its references, and `steal` is cleared; otherwise `slot` is
    /// cleared. The grant entry's own references are dropped.
    pub fn clear_grant_entry<M: TableMemory + ?Sized>(
        &self,
        slot: EntrySlot,
        mfn: Mfn,
        writable: bool,
        steal: Option<EntrySlot>,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        if steal == Some(slot) {
            return Err(MmError::BadIndex(slot.index));
        }
        self.with_l1(slot, dom, mem, |mmu, mem| {
            let old = Pte(mem.read(slot.table, slot.index));
            if !old.is_present() || old.mfn() != mfn || old.is_writable() != writable {
                return Err(MmError::NotGranted { mfn, found: old.raw() });
            }
            let replacement = match steal {
                Some(from) => mmu.with_l1(from, dom, mem, |_, mem| {
                    let moved = mem.read(from.table, from.index);
                    mem.write(from.table, from.index, 0);
                    Ok(moved)
                })?,
                None => 0,
            };
            mem.write(slot.table, slot.index, replacement);
            mmu.drop_entry(Level::L1, old.raw(), mem)
        })
    }

    /// Runs `op` with a general and an L1 type reference held on `slot.table`, which must
    /// be a validated L1 owned by `dom` (`TypeConflict` otherwise).
    fn with_l1<M: TableMemory + ?Sized, T>(
        &self,
        slot: EntrySlot,
        dom: DomainId,
        mem: &mut M,
        op: impl FnOnce(&Self, &mut M) -> Result<T, MmError>,
    ) -> Result<T, MmError> {
        if slot.index >= crate::entry::ENTRIES {
            return Err(MmError::BadIndex(slot.index));
        }
        let table = slot.table;
        self.get_page_for(table, dom, Access::Owner)?;
        let info = self.info(table)?;
        let held = update_type(info, |now| {
            let validated = now.count() > 0 && now.flags().contains(TypeFlags::VALIDATED);
            if now.page_type() != PageType::L1 || !validated {
                return Err(MmError::TypeConflict { mfn: table, have: now.page_type(), want: PageType::L1 });
            }
            type_after_get(table, now, PageType::L1)
        });
        if let Err(error) = held {
            self.put_page(table);
            return Err(error);
        }
        let result = op(self, mem);
        // Never the last type reference: the L1 was validated and in use before this one.
        let _ = self.put_page_type(table, mem);
        self.put_page(table);
        result
    }
}
