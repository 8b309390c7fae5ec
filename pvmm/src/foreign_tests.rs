//! Host tests of grant mappings in L1 tables ([`crate::foreign`]).

use mm::addr::Mfn;
use mm::frame::{DomainId, Owner, PageType, TypeInfo};

use crate::entry::{Pte, PteFlags};
use crate::error::MmError;
use crate::foreign::grant_entry;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::testkit::{pte, Tree, DOM, OTHER};
use crate::update::AccessedDirty;
use crate::walk::EntrySlot;

fn typed(page_type: PageType, count: u32) -> TypeInfo {
    TypeInfo::NONE.with_type(page_type).with_count(count).unwrap()
}

/// A validated tree of [`DOM`] (its base pointer's references held for the whole test),
/// and a frame of [`OTHER`] granted to it.
fn granted() -> (Tree, Mfn) {
    let (tree, _base) = Tree::validated();
    let frame = tree.world.foreign[3];
    (tree, frame)
}

#[test]
fn a_grant_entry_takes_its_own_references_and_only_where_an_l1_is() {
    let (mut tree, frame) = granted();
    let shared = move |mfn: Mfn, dom: DomainId| mfn == frame && dom == DOM;
    let world = &mut tree.world;
    let slot = EntrySlot { table: tree.l1, index: 10 };
    let value = grant_entry(frame, true, 0);
    // Without the grant's hook the frame is another domain's.
    assert!(matches!(world.mmu().set_grant_entry(slot, value, DOM, &mut world.ram), Err(MmError::NotOwner { .. })));
    let mmu = world.mmu().with_sharing(&shared);
    // Never in an L2, nor in a frame that is no page table (XSA-227's neighbours).
    let in_l2 = EntrySlot { table: tree.l2, index: 10 };
    assert!(matches!(mmu.set_grant_entry(in_l2, value, DOM, &mut world.ram), Err(MmError::TypeConflict { .. })));
    let in_page = EntrySlot { table: tree.spare[0], index: 0 };
    assert!(matches!(mmu.set_grant_entry(in_page, value, DOM, &mut world.ram), Err(MmError::TypeConflict { .. })));
    // Nor in another domain's L1.
    let theirs = EntrySlot { table: world.foreign[0], index: 0 };
    assert!(matches!(mmu.set_grant_entry(theirs, value, DOM, &mut world.ram), Err(MmError::NotOwner { .. })));
    assert_eq!(world.counts(frame), (0, TypeInfo::NONE));
    mmu.set_grant_entry(slot, value, DOM, &mut world.ram).unwrap();
    assert_eq!(world.counts(frame), (1, typed(PageType::None, 1)));
    let stored = Pte(world.ram.read(tree.l1, 10));
    assert_eq!((stored.mfn(), stored.is_writable(), stored.raw() & PteFlags::NO_EXECUTE.bits() != 0), (frame, true, true));
    // The granter cannot make its frame a table while the entry maps it writable.
    let mut other_ram = crate::testkit::Ram::default();
    assert!(world.mmu().pin_table(frame, Level::L1, OTHER, &mut other_ram).is_err());
    // The guest cannot copy the entry elsewhere with an ordinary update: not its frame.
    let copy = world.mmu().mod_entry(tree.l1, 12, value, AccessedDirty::Overwrite, DOM, &mut world.ram);
    assert!(matches!(copy, Err(MmError::NotOwner { owner: Owner::Domain(OTHER), .. })));
    world.audit(&[tree.l4]);
}

#[test]
fn removal_checks_the_frame_and_the_access_it_was_granted() {
    let (mut tree, frame) = granted();
    let shared = move |mfn: Mfn, dom: DomainId| mfn == frame && dom == DOM;
    let world = &mut tree.world;
    let mmu = world.mmu().with_sharing(&shared);
    let slot = EntrySlot { table: tree.l1, index: 10 };
    mmu.set_grant_entry(slot, grant_entry(frame, false, 0), DOM, &mut world.ram).unwrap();
    assert_eq!(world.counts(frame), (1, TypeInfo::NONE), "read-only: no type reference");
    // Another frame, the writable access, an empty entry: refused, nothing changed.
    let other = world.foreign[4];
    assert!(matches!(mmu.clear_grant_entry(slot, other, false, None, DOM, &mut world.ram), Err(MmError::NotGranted { .. })));
    assert!(matches!(mmu.clear_grant_entry(slot, frame, true, None, DOM, &mut world.ram), Err(MmError::NotGranted { .. })));
    let empty = EntrySlot { table: tree.l1, index: 11 };
    assert!(matches!(mmu.clear_grant_entry(empty, frame, false, None, DOM, &mut world.ram), Err(MmError::NotGranted { .. })));
    assert_eq!(world.counts(frame), (1, TypeInfo::NONE));
    mmu.clear_grant_entry(slot, frame, false, None, DOM, &mut world.ram).unwrap();
    assert_eq!((world.counts(frame), world.ram.read(tree.l1, 10)), ((0, TypeInfo::NONE), 0));
    world.audit(&[tree.l4]);
}

#[test]
fn unmap_and_replace_moves_an_entry_with_its_references() {
    let (mut tree, frame) = granted();
    let shared = move |mfn: Mfn, dom: DomainId| mfn == frame && dom == DOM;
    let world = &mut tree.world;
    let mmu = world.mmu().with_sharing(&shared);
    let slot = EntrySlot { table: tree.l1, index: 10 };
    mmu.set_grant_entry(slot, grant_entry(frame, true, 0), DOM, &mut world.ram).unwrap();
    // Entry 0 maps data frame 0 writable: it moves to entry 10, entry 0 is cleared.
    let data = tree.data[0];
    let before = world.counts(data);
    let from = EntrySlot { table: tree.l1, index: 0 };
    // Stealing from a table that is no L1 is refused, and changes nothing.
    let from_l2 = EntrySlot { table: tree.l2, index: 0 };
    assert!(mmu.clear_grant_entry(slot, frame, true, Some(from_l2), DOM, &mut world.ram).is_err());
    assert!(mmu.clear_grant_entry(slot, frame, true, Some(slot), DOM, &mut world.ram).is_err());
    assert_eq!(world.counts(frame), (1, typed(PageType::None, 1)));
    mmu.clear_grant_entry(slot, frame, true, Some(from), DOM, &mut world.ram).unwrap();
    assert_eq!(world.ram.read(tree.l1, 0), 0);
    assert_eq!(Pte(world.ram.read(tree.l1, 10)).mfn(), data);
    assert_eq!(world.counts(data), before, "the moved entry kept its references");
    assert_eq!(world.counts(frame), (0, TypeInfo::NONE));
    world.audit(&[tree.l4]);
}

#[test]
fn grant_entries_carry_the_guest_available_bits_and_pass_the_l1_rules() {
    let value = grant_entry(Mfn(0x1234), true, 0b101);
    assert_eq!(value & PteFlags::AVAILABLE_LOW.bits(), 0b101 << 9);
    assert_eq!(value & PteFlags::WRITABLE.bits(), PteFlags::WRITABLE.bits());
    assert_eq!(grant_entry(Mfn(0x1234), false, 0xff) & PteFlags::AVAILABLE_LOW.bits(), PteFlags::AVAILABLE_LOW.bits(), "only three bits");
    let layout = crate::policy::Layout::new(0, None, 0);
    assert!(layout.check(Level::L1, value).is_ok());
    assert_eq!(Pte(grant_entry(Mfn(7), false, 0)).raw() & !0xfff & !PteFlags::NO_EXECUTE.bits(), pte(Mfn(7), PteFlags::empty()) & !0xfff);
}

#[test]
fn the_mapping_domains_death_drops_its_grant_entries() {
    let (mut tree, base) = Tree::validated();
    let frame = tree.world.foreign[3];
    let shared = move |mfn: Mfn, dom: DomainId| mfn == frame && dom == DOM;
    let world = &mut tree.world;
    let mmu = world.mmu().with_sharing(&shared);
    mmu.set_grant_entry(EntrySlot { table: tree.l1, index: 20 }, grant_entry(frame, true, 0), DOM, &mut world.ram).unwrap();
    crate::testkit::relinquish(&mmu, DOM, &world.owned, [base], &mut world.ram).unwrap();
    assert_eq!(world.counts(frame), (0, TypeInfo::NONE));
}
