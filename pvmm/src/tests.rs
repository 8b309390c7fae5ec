//! Whole-crate scenarios: validating a tree, a table of allowed and refused updates,
//! type transitions, pins, base pointers, walks, domain destruction and concurrency.
//! After every operation the auditor recomputes each count from the tables.

use mm::addr::Mfn;
use mm::frame::{DomainId, Owner, PageType, TypeFlags, TypeInfo};

use crate::entry::{
    Pte, ACCESSED, AVAILABLE_HIGH, CACHE_DISABLE, DIRTY, GLOBAL, HUGE_PAGE, NO_EXECUTE, USER,
    WRITABLE, WRITE_THROUGH,
};
use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::testkit::{pte, Ram, Tree, World, DOM, HV_L3_ENTRY, M2P_L4_ENTRY, OTHER, TREE_BASE};
use crate::update::AccessedDirty;
use crate::walk::EntrySlot;

fn typed(page_type: PageType, count: u32) -> TypeInfo {
    TypeInfo::NONE
        .with_type(page_type)
        .with_count(count)
        .unwrap()
}

fn validated(page_type: PageType, count: u32) -> TypeInfo {
    typed(page_type, count).with_flags(TypeFlags::VALIDATED)
}

#[test]
fn validating_a_tree_takes_exactly_the_references_its_entries_need() {
    let (tree, base) = Tree::validated();
    let w = &tree.world;
    assert_eq!(base.mfn(), tree.l4);
    assert_eq!(w.counts(tree.l4), (1, validated(PageType::L4, 1)));
    assert_eq!(w.counts(tree.l3), (1, validated(PageType::WindowL3, 1)));
    assert_eq!(w.counts(tree.l2), (1, validated(PageType::L2, 1)));
    assert_eq!(w.counts(tree.l1), (1, validated(PageType::L1, 1)));
    for &writable in &tree.data[..4] {
        assert_eq!(w.counts(writable), (1, typed(PageType::None, 1)));
    }
    for &read_only in &tree.data[4..] {
        assert_eq!(w.counts(read_only), (1, TypeInfo::NONE));
    }
    assert_eq!(w.ram.read(tree.l4, 256), M2P_L4_ENTRY);
    assert_eq!(w.ram.read(tree.l3, 511), HV_L3_ENTRY);
    assert_eq!(w.ram.read(tree.l1, 0), pte(tree.data[0], WRITABLE | USER));
    assert_eq!(w.ram.flushes, vec![tree.l4, tree.l3, tree.l2, tree.l1]);
    w.audit(&[tree.l4]);
}

#[test]
fn validation_overwrites_whatever_the_guest_left_in_hypervisor_slots() {
    let mut tree = Tree::write();
    let w = &mut tree.world;
    // A guest trying to sneak its own mappings into the hypervisor's slots.
    w.ram.write(tree.l4, 256, pte(tree.l3, WRITABLE));
    w.ram.write(tree.l4, 271, pte(w.hypervisor, WRITABLE));
    w.ram.write(tree.l3, 511, pte(tree.l2, WRITABLE));
    let base = w.mmu().new_baseptr(tree.l4, DOM, &mut w.ram).unwrap();
    assert_eq!(w.ram.read(tree.l4, 256), M2P_L4_ENTRY);
    assert_eq!(w.ram.read(tree.l4, 271), 0);
    assert_eq!(w.ram.read(tree.l3, 511), HV_L3_ENTRY);
    assert_eq!(w.counts(tree.l3), (1, validated(PageType::WindowL3, 1)));
    w.audit(&[base.mfn()]);
}

/// One row of the update table: which entry, what value, and the expected verdict.
struct Case {
    name: &'static str,
    entry: fn(&Tree) -> (Mfn, usize, u64),
    expect: fn(&Tree) -> Result<(), MmError>,
}

const OK: fn(&Tree) -> Result<(), MmError> = |_| Ok(());

fn update_cases() -> Vec<Case> {
    vec![
        Case {
            name: "map own frame writable",
            entry: |t| (t.l1, 100, pte(t.spare[0], WRITABLE)),
            expect: OK,
        },
        Case {
            name: "map own frame read-only, with NX, A, D and available bits",
            entry: |t| {
                (
                    t.l1,
                    100,
                    pte(t.spare[0], NO_EXECUTE | ACCESSED | DIRTY | AVAILABLE_HIGH),
                )
            },
            expect: OK,
        },
        Case {
            name: "map a frame of another domain",
            entry: |t| (t.l1, 100, pte(t.world.foreign[0], 0)),
            expect: |t| {
                Err(MmError::NotOwner {
                    mfn: t.world.foreign[0],
                    owner: Owner::Domain(OTHER),
                })
            },
        },
        Case {
            name: "map a hypervisor frame",
            entry: |t| (t.l1, 100, pte(t.world.hypervisor, 0)),
            expect: |t| {
                Err(MmError::NotOwner {
                    mfn: t.world.hypervisor,
                    owner: Owner::Hypervisor,
                })
            },
        },
        Case {
            name: "map a free frame",
            entry: |t| (t.l1, 100, pte(t.world.free, WRITABLE)),
            expect: |t| Err(MmError::NotAllocated(t.world.free)),
        },
        Case {
            name: "map a reserved frame",
            entry: |t| (t.l1, 100, pte(Mfn(0), 0)),
            expect: |_| Err(MmError::NotAllocated(Mfn(0))),
        },
        Case {
            name: "map a frame beyond the frame table",
            entry: |t| (t.l1, 100, pte(Mfn(0xF_FFFF_FFFF), 0)),
            expect: |_| Err(MmError::OutOfRange(Mfn(0xF_FFFF_FFFF))),
        },
        Case {
            name: "map own L1 table writable",
            entry: |t| (t.l1, 100, pte(t.l1, WRITABLE)),
            expect: |t| {
                Err(MmError::WritableTable {
                    mfn: t.l1,
                    have: PageType::L1,
                })
            },
        },
        Case {
            name: "map own L1 table read-only",
            entry: |t| (t.l1, 100, pte(t.l1, 0)),
            expect: OK,
        },
        Case {
            name: "map the L4 writable from an L1",
            entry: |t| (t.l1, 100, pte(t.l4, WRITABLE)),
            expect: |t| {
                Err(MmError::WritableTable {
                    mfn: t.l4,
                    have: PageType::L4,
                })
            },
        },
        Case {
            name: "L4 entry naming the L4 itself (linear map)",
            entry: |t| (t.l4, 5, pte(t.l4, WRITABLE)),
            expect: |t| {
                Err(MmError::TypeConflict {
                    mfn: t.l4,
                    have: PageType::L4,
                    want: PageType::L3,
                })
            },
        },
        Case {
            name: "L2 entry naming a writable-mapped frame",
            entry: |t| (t.l2, 1, pte(t.data[0], WRITABLE)),
            expect: |t| {
                Err(MmError::TypeConflict {
                    mfn: t.data[0],
                    have: PageType::None,
                    want: PageType::L1,
                })
            },
        },
        Case {
            name: "L2 entry naming a fresh zeroed frame validates it as an L1",
            entry: |t| (t.l2, 1, pte(t.spare[0], WRITABLE)),
            expect: OK,
        },
        Case {
            name: "L2 entry naming the L1 a second time",
            entry: |t| (t.l2, 7, pte(t.l1, 0)),
            expect: OK,
        },
        Case {
            name: "L4 slot 256 (M2P)",
            entry: |t| (t.l4, 256, pte(t.l3, 0)),
            expect: |_| {
                Err(MmError::ReservedSlot {
                    level: Level::L4,
                    index: 256,
                })
            },
        },
        Case {
            name: "clearing L4 slot 271",
            entry: |t| (t.l4, 271, 0),
            expect: |_| {
                Err(MmError::ReservedSlot {
                    level: Level::L4,
                    index: 271,
                })
            },
        },
        Case {
            name: "L3 index 511 (hypervisor window)",
            entry: |t| (t.l3, 511, pte(t.l2, 0)),
            expect: |_| {
                Err(MmError::ReservedSlot {
                    level: Level::L3,
                    index: 511,
                })
            },
        },
        Case {
            name: "L4 slot 272, just past the reserved range, naming a fresh L3",
            entry: |t| (t.l4, 272, pte(t.spare[0], 0)),
            expect: OK,
        },
        Case {
            name: "the window-L3 linked at another L4 slot",
            entry: |t| (t.l4, 272, pte(t.l3, 0)),
            expect: |t| {
                Err(MmError::TypeConflict {
                    mfn: t.l3,
                    have: PageType::WindowL3,
                    want: PageType::L3,
                })
            },
        },
        Case {
            name: "an L3 in use elsewhere linked at L4 slot 511",
            entry: |t| (t.l4, 511, pte(t.l4, 0)),
            expect: |t| {
                Err(MmError::TypeConflict {
                    mfn: t.l4,
                    have: PageType::L4,
                    want: PageType::WindowL3,
                })
            },
        },
        Case {
            name: "L4 slot 511 pointed at a fresh table (a new window-L3)",
            entry: |t| (t.l4, 511, pte(t.spare[0], WRITABLE)),
            expect: OK,
        },
        Case {
            name: "clearing L4 slot 511",
            entry: |t| (t.l4, 511, 0),
            expect: |t| Err(MmError::NoWindow(t.l4)),
        },
        Case {
            name: "L4 slot 511 made not present, keeping the rest of the entry",
            entry: |t| (t.l4, 511, t.world.ram.read(t.l4, 511) & !1),
            expect: |t| Err(MmError::NoWindow(t.l4)),
        },
        Case {
            name: "2 MiB page in an L2",
            entry: |t| (t.l2, 1, pte(t.spare[0], HUGE_PAGE | WRITABLE)),
            expect: |_| Err(MmError::HugePage { level: Level::L2 }),
        },
        Case {
            name: "1 GiB page in an L3",
            entry: |t| (t.l3, 1, pte(t.spare[0], HUGE_PAGE)),
            expect: |_| Err(MmError::HugePage { level: Level::L3 }),
        },
        Case {
            name: "PCD in an L1 entry",
            entry: |t| (t.l1, 100, pte(t.spare[0], CACHE_DISABLE)),
            expect: |_| {
                Err(MmError::BadFlags {
                    level: Level::L1,
                    bits: CACHE_DISABLE,
                })
            },
        },
        Case {
            name: "PWT in an L3 entry",
            entry: |t| (t.l3, 1, pte(t.spare[0], WRITE_THROUGH)),
            expect: |_| {
                Err(MmError::BadFlags {
                    level: Level::L3,
                    bits: WRITE_THROUGH,
                })
            },
        },
        Case {
            name: "G in an L1 entry is stripped",
            entry: |t| (t.l1, 100, pte(t.spare[0], GLOBAL)),
            expect: OK,
        },
        Case {
            name: "non-present garbage is stored as written",
            entry: |t| (t.l1, 100, 0xdead_beef_0000_0000),
            expect: OK,
        },
        Case {
            name: "replacing an entry by itself",
            entry: |t| (t.l1, 0, t.world.ram.read(t.l1, 0)),
            expect: OK,
        },
        Case {
            name: "replacing a writable mapping by a read-only one",
            entry: |t| (t.l1, 0, pte(t.data[0], 0)),
            expect: OK,
        },
        Case {
            name: "unmapping the only L2",
            entry: |t| (t.l3, 0, 0),
            expect: OK,
        },
        Case {
            name: "clearing an empty L4 slot",
            entry: |t| (t.l4, 0, 0),
            expect: OK,
        },
        Case {
            name: "index 512",
            entry: |t| (t.l1, 512, 0),
            expect: |_| Err(MmError::BadIndex(512)),
        },
        Case {
            name: "a table of another domain",
            entry: |t| (t.world.foreign[0], 0, 0),
            expect: |t| {
                Err(MmError::NotOwner {
                    mfn: t.world.foreign[0],
                    owner: Owner::Domain(OTHER),
                })
            },
        },
    ]
}

#[test]
fn table_of_allowed_and_refused_updates() {
    for case in update_cases() {
        let (mut tree, base) = Tree::validated();
        let (table, index, value) = (case.entry)(&tree);
        let expected = (case.expect)(&tree);
        let counts_before = tree.world.snapshot();
        let memory_before = tree.world.ram.contents();
        let w = &mut tree.world;
        let got = w.mmu().mod_entry(
            table,
            index,
            value,
            AccessedDirty::Overwrite,
            DOM,
            &mut w.ram,
        );
        assert_eq!(got, expected, "{}", case.name);
        match got {
            Ok(()) => {
                let stored = w.ram.read(table, index);
                let wanted = if Pte(value).is_present() {
                    (value | USER) & !GLOBAL
                } else {
                    value
                };
                assert_eq!(stored, wanted, "{}: stored value", case.name);
            }
            Err(_) => {
                assert_eq!(w.snapshot(), counts_before, "{}: counts changed", case.name);
                assert!(
                    w.ram.contents() == memory_before,
                    "{}: memory changed",
                    case.name
                );
            }
        }
        w.audit(&[base.mfn()]);
    }
}

#[test]
fn replacing_an_entry_by_itself_changes_no_count() {
    for (level_table, index) in [(0, 511), (0, 0), (1, 0), (2, 0), (3, 0), (3, 5)] {
        let (mut tree, base) = Tree::validated();
        let table = [tree.l4, tree.l3, tree.l2, tree.l1][level_table];
        let before = tree.world.snapshot();
        let w = &mut tree.world;
        let current = w.ram.read(table, index);
        w.mmu()
            .mod_entry(
                table,
                index,
                current,
                AccessedDirty::Overwrite,
                DOM,
                &mut w.ram,
            )
            .unwrap();
        assert_eq!(w.snapshot(), before);
        assert_eq!(w.ram.read(table, index), current);
        w.audit(&[base.mfn()]);
    }
}

#[test]
fn unmapping_a_subtree_devalidates_it_and_remapping_revalidates_it() {
    let (mut tree, base) = Tree::validated();
    let w = &mut tree.world;
    let mmu = w.mmu();
    let other_l1 = tree.spare[0];
    mmu.pin_table(other_l1, Level::L1, DOM, &mut w.ram).unwrap();
    let l2_entry = w.ram.read(tree.l3, 0);
    mmu.mod_entry(tree.l3, 0, 0, AccessedDirty::Overwrite, DOM, &mut w.ram)
        .unwrap();
    for frame in [tree.l2, tree.l1].iter().chain(&tree.data) {
        assert_eq!(w.counts(*frame), (0, TypeInfo::NONE), "{frame}");
    }
    w.audit(&[base.mfn()]);
    // Untyped again, the old L1 can be mapped writable now that nothing uses it as a
    // table, and updates to it are plain writes.
    mmu.mod_entry(
        other_l1,
        20,
        pte(tree.l1, WRITABLE),
        AccessedDirty::Overwrite,
        DOM,
        &mut w.ram,
    )
    .unwrap();
    assert_eq!(w.counts(tree.l1), (1, typed(PageType::None, 1)));
    w.audit(&[base.mfn()]);
    assert_eq!(
        mmu.mod_entry(
            tree.l3,
            0,
            l2_entry,
            AccessedDirty::Overwrite,
            DOM,
            &mut w.ram
        ),
        Err(MmError::TypeConflict {
            mfn: tree.l1,
            have: PageType::None,
            want: PageType::L1,
        })
    );
    mmu.mod_entry(other_l1, 20, 0, AccessedDirty::Overwrite, DOM, &mut w.ram)
        .unwrap();
    mmu.mod_entry(
        tree.l3,
        0,
        l2_entry,
        AccessedDirty::Overwrite,
        DOM,
        &mut w.ram,
    )
    .unwrap();
    assert_eq!(w.counts(tree.l1), (1, validated(PageType::L1, 1)));
    w.audit(&[base.mfn()]);
}

#[test]
fn a_frame_used_as_l1_becomes_l2_only_at_type_count_zero() {
    let (mut tree, base) = Tree::validated();
    let w = &mut tree.world;
    let mmu = w.mmu();
    let frame = tree.spare[0];
    mmu.pin_table(frame, Level::L1, DOM, &mut w.ram).unwrap();
    let conflict = MmError::TypeConflict {
        mfn: frame,
        have: PageType::L1,
        want: PageType::L2,
    };
    assert_eq!(
        mmu.pin_table(frame, Level::L2, DOM, &mut w.ram),
        Err(conflict)
    );
    let l3_entry = pte(frame, 0);
    assert_eq!(
        mmu.mod_entry(
            tree.l3,
            3,
            l3_entry,
            AccessedDirty::Overwrite,
            DOM,
            &mut w.ram
        ),
        Err(conflict)
    );
    w.audit(&[base.mfn()]);
    mmu.unpin_table(frame, DOM, &mut w.ram).unwrap();
    assert_eq!(w.counts(frame), (0, TypeInfo::NONE));
    mmu.mod_entry(
        tree.l3,
        3,
        l3_entry,
        AccessedDirty::Overwrite,
        DOM,
        &mut w.ram,
    )
    .unwrap();
    assert_eq!(w.counts(frame), (1, validated(PageType::L2, 1)));
    w.audit(&[base.mfn()]);
}

#[test]
fn a_writable_mapped_frame_cannot_become_a_table_until_unmapped() {
    let (mut tree, base) = Tree::validated();
    let w = &mut tree.world;
    let mmu = w.mmu();
    let frame = tree.data[0];
    let before = w.snapshot();
    assert_eq!(
        mmu.pin_table(frame, Level::L1, DOM, &mut w.ram),
        Err(MmError::TypeConflict {
            mfn: frame,
            have: PageType::None,
            want: PageType::L1,
        })
    );
    assert_eq!(w.snapshot(), before);
    mmu.mod_entry(
        tree.l1,
        0,
        pte(frame, 0),
        AccessedDirty::Overwrite,
        DOM,
        &mut w.ram,
    )
    .unwrap();
    w.ram.flushes.clear();
    mmu.pin_table(frame, Level::L1, DOM, &mut w.ram).unwrap();
    assert_eq!(
        w.ram.flushes,
        vec![frame],
        "stale writable TLB entries flushed"
    );
    assert_eq!(
        w.counts(frame),
        (
            2,
            validated(PageType::L1, 1).with_flags(TypeFlags::VALIDATED | TypeFlags::PINNED)
        )
    );
    w.audit(&[base.mfn()]);
}

#[test]
fn pins_are_counted_once_and_unpin_lets_the_frame_be_reused() {
    let (mut tree, base) = Tree::validated();
    let w = &mut tree.world;
    let mmu = w.mmu();
    let frame = tree.spare[1];
    assert_eq!(
        mmu.unpin_table(frame, DOM, &mut w.ram),
        Err(MmError::NotPinned(frame))
    );
    mmu.pin_table(frame, Level::L1, DOM, &mut w.ram).unwrap();
    let pinned = w.snapshot();
    assert_eq!(
        mmu.pin_table(frame, Level::L1, DOM, &mut w.ram),
        Err(MmError::AlreadyPinned(frame))
    );
    assert_eq!(w.snapshot(), pinned);
    w.audit(&[base.mfn()]);
    // The validated tree's L2 is pinned on top of its parent's reference.
    mmu.pin_table(tree.l2, Level::L2, DOM, &mut w.ram).unwrap();
    assert_eq!(w.counts(tree.l2).1.count(), 2);
    w.audit(&[base.mfn()]);
    mmu.unpin_table(frame, DOM, &mut w.ram).unwrap();
    assert_eq!(
        mmu.unpin_table(frame, DOM, &mut w.ram),
        Err(MmError::NotPinned(frame))
    );
    mmu.mod_entry(
        tree.l1,
        9,
        pte(frame, WRITABLE),
        AccessedDirty::Overwrite,
        DOM,
        &mut w.ram,
    )
    .unwrap();
    assert_eq!(w.counts(frame), (1, typed(PageType::None, 1)));
    assert_eq!(
        mmu.unpin_table(w.foreign[0], DOM, &mut w.ram),
        Err(MmError::NotOwner {
            mfn: w.foreign[0],
            owner: Owner::Domain(OTHER),
        })
    );
    w.audit(&[base.mfn()]);
}

/// The hooks the hypervisor's TLB discipline hangs on: every last type reference is
/// reported with its type, a frame taking the writable type asks for a flush of stale table
/// translations, and one taking a protected type for a flush of stale writable ones.
#[test]
fn type_changes_report_releases_and_ask_for_the_right_flushes() {
    let (mut tree, base) = Tree::validated();
    let w = &mut tree.world;
    let mmu = w.mmu();
    let frame = tree.spare[1];
    w.ram.flushes.clear();
    w.ram.writable_flushes.clear();
    // A writable mapping comes and goes: the writable type is taken and released.
    let map = |w: &mut World, value| {
        mmu.mod_entry(tree.l1, 9, value, AccessedDirty::Overwrite, DOM, &mut w.ram)
            .unwrap()
    };
    map(w, pte(frame, WRITABLE));
    assert_eq!(w.ram.writable_flushes, vec![frame]);
    map(w, 0);
    assert_eq!(w.ram.released, vec![(frame, PageType::None)]);
    // Pinned as an L1 it asks for the writable flush; unpinned, it is released as an L1.
    mmu.pin_table(frame, Level::L1, DOM, &mut w.ram).unwrap();
    assert_eq!(w.ram.flushes, vec![frame]);
    mmu.unpin_table(frame, DOM, &mut w.ram).unwrap();
    assert_eq!(w.ram.released.last(), Some(&(frame, PageType::L1)));
    // Mapped writable again: the table flush is asked for once more.
    map(w, pte(frame, WRITABLE));
    assert_eq!(w.ram.writable_flushes, vec![frame, frame]);
    // A second writable mapping takes no type at count zero: no new request.
    mmu.mod_entry(tree.l1, 10, pte(frame, WRITABLE), AccessedDirty::Overwrite, DOM, &mut w.ram)
        .unwrap();
    assert_eq!(w.ram.writable_flushes.len(), 2);
    // Unlinking the tree's L1 devalidates it: released as an L1 (and the writable pages it
    // mapped that nothing else maps, as writable pages).
    w.ram.released.clear();
    mmu.mod_entry(tree.l2, 0, 0, AccessedDirty::Overwrite, DOM, &mut w.ram)
        .unwrap();
    assert!(w.ram.released.contains(&(tree.l1, PageType::L1)));
    assert!(w.ram.released.contains(&(frame, PageType::None)));
    assert!(w.ram.released.contains(&(tree.data[0], PageType::None)));
    w.audit(&[base.mfn()]);
}

#[test]
fn validation_failing_half_way_leaves_counts_and_memory_unchanged() {
    let (mut tree, base) = Tree::validated();
    let [l3, l2_good, l1_good, l2_bad, l1_bad] = [0, 1, 2, 3, 4].map(|i| tree.spare[i]);
    let data = &tree.spare[5..9];
    let w = &mut tree.world;
    // A new L3: entry 0 is a complete, valid subtree (sharing the old L1 too), entry 1
    // an L2 whose L1 is fine up to entry 300, which maps a foreign frame. Entries are
    // written in stored form (U/S set) so that the sub-tables validated and devalidated
    // on the way are left byte-for-byte as they were.
    w.ram.write(l3, 0, pte(l2_good, WRITABLE | USER));
    w.ram.write(l3, 1, pte(l2_bad, WRITABLE | USER));
    w.ram.write(l2_good, 0, pte(l1_good, WRITABLE | USER));
    w.ram.write(l2_good, 1, pte(tree.l1, USER));
    w.ram.write(l2_bad, 0, pte(l1_good, USER));
    w.ram.write(l2_bad, 9, pte(l1_bad, USER));
    for (index, &frame) in data.iter().enumerate() {
        w.ram.write(l1_good, index, pte(frame, WRITABLE | USER));
        w.ram.write(l1_bad, index, pte(frame, USER));
    }
    w.ram.write(l1_bad, 300, pte(w.foreign[0], USER));
    let counts_before = w.snapshot();
    let memory_before = w.ram.contents();
    let refused = MmError::NotOwner {
        mfn: w.foreign[0],
        owner: Owner::Domain(OTHER),
    };
    let mmu = w.mmu();
    assert_eq!(mmu.pin_table(l3, Level::L3, DOM, &mut w.ram), Err(refused));
    assert_eq!(
        mmu.mod_entry(
            tree.l4,
            3,
            pte(l3, 0),
            AccessedDirty::Overwrite,
            DOM,
            &mut w.ram
        ),
        Err(refused)
    );
    assert_eq!(w.snapshot(), counts_before);
    assert!(w.ram.contents() == memory_before, "memory changed");
    w.audit(&[base.mfn()]);
    // Fixing the bad entry makes the same tree acceptable.
    w.ram.write(l1_bad, 300, 0);
    mmu.pin_table(l3, Level::L3, DOM, &mut w.ram).unwrap();
    assert_eq!(w.counts(l1_good).1, validated(PageType::L1, 2));
    assert_eq!(w.counts(tree.l1).1, validated(PageType::L1, 2));
    w.audit(&[base.mfn()]);
}

#[test]
fn tables_that_would_map_themselves_are_refused() {
    let (mut tree, base) = Tree::validated();
    let [l2, l1] = [tree.spare[0], tree.spare[1]];
    let w = &mut tree.world;
    let mmu = w.mmu();
    // An L1 mapping the L2 that names it, writable: the L2 is typed L2 by then.
    w.ram.write(l2, 0, pte(l1, WRITABLE));
    w.ram.write(l1, 0, pte(l2, WRITABLE));
    w.ram.write(l1, 1, pte(l1, WRITABLE));
    let before = w.snapshot();
    assert_eq!(
        mmu.pin_table(l2, Level::L2, DOM, &mut w.ram),
        Err(MmError::WritableTable {
            mfn: l2,
            have: PageType::L2,
        })
    );
    // An L1 mapping itself writable (entry 0, the L2, is untyped again and fine).
    assert_eq!(
        mmu.pin_table(l1, Level::L1, DOM, &mut w.ram),
        Err(MmError::WritableTable {
            mfn: l1,
            have: PageType::L1,
        })
    );
    assert_eq!(w.snapshot(), before);
    // Read-only, both are fine.
    w.ram.write(l1, 0, pte(l2, 0));
    w.ram.write(l1, 1, pte(l1, 0));
    mmu.pin_table(l2, Level::L2, DOM, &mut w.ram).unwrap();
    w.audit(&[base.mfn()]);
}

#[test]
fn base_pointers_hold_the_root_and_can_switch_to_the_same_table() {
    let (mut tree, base) = Tree::validated();
    let w = &mut tree.world;
    let mmu = w.mmu();
    let again = mmu.new_baseptr(tree.l4, DOM, &mut w.ram).unwrap();
    assert_eq!(w.counts(tree.l4), (2, validated(PageType::L4, 2)));
    mmu.put_baseptr(base, &mut w.ram).unwrap();
    assert_eq!(w.counts(tree.l4), (1, validated(PageType::L4, 1)));
    w.audit(&[again.mfn()]);
    assert_eq!(
        mmu.new_baseptr(tree.l1, DOM, &mut w.ram),
        Err(MmError::TypeConflict {
            mfn: tree.l1,
            have: PageType::L1,
            want: PageType::L4,
        })
    );
    assert_eq!(
        mmu.new_baseptr(w.foreign[1], DOM, &mut w.ram),
        Err(MmError::NotOwner {
            mfn: w.foreign[1],
            owner: Owner::Domain(OTHER),
        })
    );
    mmu.put_baseptr(again, &mut w.ram).unwrap();
    for frame in [tree.l4, tree.l3, tree.l2, tree.l1]
        .iter()
        .chain(&tree.data)
    {
        assert_eq!(w.counts(*frame), (0, TypeInfo::NONE), "{frame}");
    }
    w.audit(&[]);
}

#[test]
fn preserve_ad_keeps_the_bits_the_processor_set() {
    let (mut tree, base) = Tree::validated();
    let w = &mut tree.world;
    let mmu = w.mmu();
    let current = w.ram.read(tree.l1, 0);
    w.ram.write(tree.l1, 0, current | ACCESSED | DIRTY);
    mmu.mod_entry(
        tree.l1,
        0,
        current,
        AccessedDirty::Preserve,
        DOM,
        &mut w.ram,
    )
    .unwrap();
    assert_eq!(w.ram.read(tree.l1, 0), current | ACCESSED | DIRTY);
    mmu.mod_entry(
        tree.l1,
        0,
        current,
        AccessedDirty::Overwrite,
        DOM,
        &mut w.ram,
    )
    .unwrap();
    assert_eq!(w.ram.read(tree.l1, 0), current);
    w.audit(&[base.mfn()]);
}

#[test]
fn updates_to_ordinary_pages_are_plain_writes_and_descriptor_pages_are_refused() {
    let (mut tree, base) = Tree::validated();
    let w = &mut tree.world;
    let mmu = w.mmu();
    let page = tree.spare[0];
    let before = w.snapshot();
    // An ordinary page (even a writable-mapped one) takes anything: nothing is checked.
    for target in [page, tree.data[0]] {
        mmu.mod_entry(
            target,
            7,
            pte(w.foreign[0], HUGE_PAGE),
            AccessedDirty::Overwrite,
            DOM,
            &mut w.ram,
        )
        .unwrap();
        assert_eq!(w.ram.read(target, 7), pte(w.foreign[0], HUGE_PAGE));
    }
    assert_eq!(w.snapshot(), before);
    let gdt = tree.spare[1];
    w.ram.flushes.clear();
    mmu.get_page_and_type(gdt, PageType::SegmentDescriptors, DOM, &mut w.ram)
        .unwrap();
    assert_eq!(w.ram.flushes, vec![gdt]);
    assert_eq!(
        mmu.mod_entry(gdt, 0, 1, AccessedDirty::Overwrite, DOM, &mut w.ram),
        Err(MmError::TypeConflict {
            mfn: gdt,
            have: PageType::SegmentDescriptors,
            want: PageType::None,
        })
    );
    mmu.put_page_and_type(gdt, &mut w.ram).unwrap();
    w.audit(&[base.mfn()]);
}

#[test]
fn walks_find_the_l1_entry_or_say_why_not() {
    let (tree, base) = Tree::validated();
    let w = &tree.world;
    let mmu = w.mmu();
    let va = TREE_BASE | (5 << 12) | 0x123;
    assert_eq!(
        mmu.l1_entry_of(tree.l4, va, &w.ram),
        Ok(EntrySlot {
            table: tree.l1,
            index: 5,
        })
    );
    let unmapped = TREE_BASE | 1 << 21;
    assert_eq!(
        mmu.l1_entry_of(tree.l4, unmapped, &w.ram),
        Err(MmError::NotMapped {
            level: Level::L2,
            virtual_address: unmapped,
        })
    );
    let m2p = 0xFFFF_8000_0000_0000;
    assert_eq!(
        mmu.l1_entry_of(tree.l4, m2p, &w.ram),
        Err(MmError::ReservedSlot {
            level: Level::L4,
            index: 256,
        })
    );
    let window = 0xFFFF_FFFF_FC00_0000; // L4 slot 511, window-L3 index 511.
    assert_eq!(
        mmu.l1_entry_of(tree.l4, window, &w.ram),
        Err(MmError::ReservedSlot {
            level: Level::L3,
            index: 511,
        })
    );
    let low = 0x7F_FC00_0000; // L4 slot 0, L3 index 511: nothing there.
    assert_eq!(
        mmu.l1_entry_of(tree.l4, low, &w.ram),
        Err(MmError::NotMapped {
            level: Level::L4,
            virtual_address: low,
        })
    );
    let non_canonical = 0x0000_8000_0000_0000;
    assert_eq!(
        mmu.l1_entry_of(tree.l4, non_canonical, &w.ram),
        Err(MmError::NonCanonical(non_canonical))
    );
    assert_eq!(
        mmu.l1_entry_of(tree.l2, 0, &w.ram),
        Err(MmError::TypeConflict {
            mfn: tree.l2,
            have: PageType::L2,
            want: PageType::L4,
        })
    );
    mmu.put_baseptr(base, &mut Ram::default()).unwrap();
}

#[test]
fn relinquish_returns_every_frame() {
    let (mut tree, base) = Tree::validated();
    let user_base;
    {
        let w = &mut tree.world;
        let mmu = w.mmu();
        // More state to tear down: a second root sharing the L3, pinned tables at every
        // level, an extra writable mapping, a second mapping of the L1 table.
        let user_l4 = tree.spare[0];
        w.ram.write(user_l4, 511, pte(tree.l3, 0));
        user_base = mmu.new_baseptr(user_l4, DOM, &mut w.ram).unwrap();
        mmu.pin_table(tree.l4, Level::L4, DOM, &mut w.ram).unwrap();
        mmu.pin_table(tree.l1, Level::L1, DOM, &mut w.ram).unwrap();
        mmu.pin_table(tree.spare[1], Level::L2, DOM, &mut w.ram)
            .unwrap();
        mmu.mod_entry(
            tree.l1,
            50,
            pte(tree.spare[2], WRITABLE),
            AccessedDirty::Overwrite,
            DOM,
            &mut w.ram,
        )
        .unwrap();
        mmu.mod_entry(
            tree.l2,
            9,
            pte(tree.l1, 0),
            AccessedDirty::Overwrite,
            DOM,
            &mut w.ram,
        )
        .unwrap();
        w.audit(&[base.mfn(), user_base.mfn()]);
    }
    let w = &mut tree.world;
    let before_domain = w.frames.stats().free + w.owned.len() as u64;
    crate::testkit::relinquish(&w.mmu(), DOM, &w.owned, [base, user_base], &mut w.ram).unwrap();
    for &frame in &w.owned {
        assert_eq!(w.counts(frame), (0, TypeInfo::NONE), "{frame}");
    }
    w.audit(&[]);
    for &frame in &w.owned {
        w.frames.free(frame).unwrap();
    }
    assert_eq!(w.frames.stats().free, before_domain);
}

#[test]
fn relinquish_refuses_a_list_with_foreign_frames_before_changing_anything() {
    let mut world = World::new();
    let mmu = world.mmu();
    let table = world.owned[0];
    mmu.pin_table(table, Level::L1, DOM, &mut world.ram)
        .unwrap();
    let mut list = world.owned.clone();
    list.push(world.foreign[0]);
    assert_eq!(
        crate::testkit::relinquish(&mmu, DOM, &list, [], &mut world.ram),
        Err(MmError::NotOwner {
            mfn: world.foreign[0],
            owner: Owner::Domain(OTHER),
        })
    );
    assert!(world.counts(table).1.flags().contains(TypeFlags::PINNED));
    crate::testkit::relinquish(&mmu, DOM, &world.owned, [], &mut world.ram).unwrap();
    world.audit(&[]);
}

#[test]
fn shared_frames_may_be_mapped_but_never_used_as_tables() {
    let mut world = World::new();
    let shared_frame = world.owned[40];
    let is_shared = move |mfn: Mfn, dom: DomainId| mfn == shared_frame && dom == OTHER;
    let mmu = world.mmu().with_sharing(&is_shared);
    let other_l1 = world.foreign[0];
    let mut other_ram = Ram::default();
    other_ram.write(other_l1, 0, pte(shared_frame, WRITABLE));
    mmu.pin_table(other_l1, Level::L1, OTHER, &mut other_ram)
        .unwrap();
    assert_eq!(world.counts(shared_frame), (1, typed(PageType::None, 1)));
    // Not as a table, not by a third domain, and not another of the owner's frames.
    assert_eq!(
        mmu.pin_table(shared_frame, Level::L1, OTHER, &mut other_ram),
        Err(MmError::NotOwner {
            mfn: shared_frame,
            owner: Owner::Domain(DOM),
        })
    );
    assert!(mmu.get_page(shared_frame, DomainId(3)).is_err());
    assert!(mmu.get_page(world.owned[41], OTHER).is_err());
    // The owner cannot destroy it while the other domain maps it...
    assert_eq!(
        crate::testkit::relinquish(&mmu, DOM, &world.owned, [], &mut world.ram),
        Err(MmError::InUse {
            mfn: shared_frame,
            ref_count: 1,
            type_count: 1,
        })
    );
    // ...until that domain is gone too.
    crate::testkit::relinquish(&mmu, OTHER, &world.foreign, [], &mut other_ram).unwrap();
    crate::testkit::relinquish(&mmu, DOM, &world.owned, [], &mut world.ram).unwrap();
    for &frame in world.owned.iter().chain(&world.foreign) {
        world.frames.free(frame).unwrap();
    }
}

#[test]
fn counts_refuse_to_overflow() {
    let (mut tree, base) = Tree::validated();
    let w = &mut tree.world;
    let mmu = w.mmu();
    let frame = tree.data[0];
    let info = w.frames.frame(frame).unwrap();
    let full = typed(PageType::None, TypeInfo::MAX_COUNT);
    info.update_type_info(|_| Some(full)).unwrap();
    let before = w.snapshot();
    assert_eq!(
        mmu.mod_entry(
            tree.l1,
            60,
            pte(frame, WRITABLE),
            AccessedDirty::Overwrite,
            DOM,
            &mut w.ram
        ),
        Err(MmError::CountOverflow(frame))
    );
    assert_eq!(w.snapshot(), before);
    info.update_type_info(|_| Some(typed(PageType::None, 1)))
        .unwrap();
    info.update_ref_count(|_| Some(u32::MAX)).unwrap();
    assert_eq!(mmu.get_page(frame, DOM), Err(MmError::CountOverflow(frame)));
    info.update_ref_count(|_| Some(1)).unwrap();
    w.audit(&[base.mfn()]);
}

#[test]
fn a_table_being_validated_elsewhere_is_busy() {
    let mut world = World::new();
    let mmu = world.mmu();
    let frame = world.owned[0];
    let info = world.frames.frame(frame).unwrap();
    info.update_type_info(|_| Some(typed(PageType::L1, 1)))
        .unwrap();
    assert_eq!(
        mmu.get_page_type(frame, PageType::L1, DOM, &mut world.ram),
        Err(MmError::Busy(frame))
    );
    assert_eq!(
        mmu.mod_entry(frame, 0, 0, AccessedDirty::Overwrite, DOM, &mut world.ram),
        Err(MmError::Busy(frame))
    );
    assert_eq!(
        mmu.get_page_type(frame, PageType::None, DOM, &mut world.ram),
        Err(MmError::TypeConflict {
            mfn: frame,
            have: PageType::L1,
            want: PageType::None,
        })
    );
}

#[test]
#[should_panic(expected = "holds no general reference")]
fn dropping_a_reference_never_taken_panics() {
    let world = World::new();
    world.mmu().put_page(world.owned[0]);
}

#[test]
#[should_panic(expected = "holds no type reference")]
fn dropping_a_pins_reference_without_unpinning_panics() {
    let mut world = World::new();
    let mmu = world.mmu();
    mmu.pin_table(world.owned[0], Level::L1, DOM, &mut world.ram)
        .unwrap();
    mmu.put_page_type(world.owned[0], &mut world.ram).unwrap();
}

#[test]
fn concurrent_references_keep_counts_consistent() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 2000;
    let world = World::new();
    let shared: Vec<Mfn> = world.owned[..6].to_vec();
    let frames = world.frames;
    let layout = world.layout;
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let shared = &shared;
            scope.spawn(move || {
                let mmu = crate::refs::PvMmu::new(frames, layout);
                let mut ram = Ram::default();
                for round in 0..ROUNDS {
                    let frame = shared[(round * 7 + thread) % shared.len()];
                    mmu.get_page(frame, DOM).unwrap();
                    if thread == 0 {
                        // One thread keeps trying to turn the frames into tables while
                        // the others map them writable: never both at once.
                        if mmu.pin_table(frame, Level::L1, DOM, &mut ram).is_ok() {
                            let now = frames.frame(frame).unwrap().type_info();
                            assert_eq!(now.page_type(), PageType::L1);
                            mmu.unpin_table(frame, DOM, &mut ram).unwrap();
                        }
                    } else {
                        match mmu.get_page_type(frame, PageType::None, DOM, &mut ram) {
                            Ok(()) => {
                                let now = frames.frame(frame).unwrap().type_info();
                                assert_eq!(now.page_type(), PageType::None);
                                mmu.put_page_type(frame, &mut ram).unwrap();
                            }
                            Err(error) => assert!(matches!(
                                error,
                                MmError::TypeConflict { .. } | MmError::Busy(_)
                            )),
                        }
                    }
                    mmu.put_page(frame);
                }
            });
        }
    });
    for &frame in &shared {
        assert_eq!(world.counts(frame), (0, TypeInfo::NONE), "{frame}");
    }
    world.audit(&[]);
}

#[test]
fn present_bits_outside_the_address_never_reach_a_table_unchecked() {
    // Every single flag bit, at every level, on an otherwise valid entry: accepted ones
    // are stored normalized, refused ones leave the table unchanged.
    for level_table in 0..4 {
        for bit in (0..64).filter(|b| !(12..52).contains(b) && *b != 0) {
            let (mut tree, base) = Tree::validated();
            let target = [tree.l3, tree.l2, tree.l1, tree.spare[0]][level_table];
            let table = [tree.l4, tree.l3, tree.l2, tree.l1][level_table];
            let level = [Level::L4, Level::L3, Level::L2, Level::L1][level_table];
            let value = pte(target, 1 << bit);
            let w = &mut tree.world;
            let index = if level == Level::L4 { 511 } else { 0 };
            let before = w.ram.contents();
            let result = w.mmu().mod_entry(
                table,
                index,
                value,
                AccessedDirty::Overwrite,
                DOM,
                &mut w.ram,
            );
            let allowed = match result {
                Ok(()) => true,
                Err(MmError::BadFlags { .. } | MmError::HugePage { .. }) => false,
                Err(other) => panic!("{level:?} bit {bit}: {other:?}"),
            };
            let expect_allowed = !matches!(bit, 3 | 4 | 7) && (bit != 8 || level == Level::L1);
            assert_eq!(allowed, expect_allowed, "{level:?} bit {bit}");
            if !allowed {
                assert!(
                    w.ram.contents() == before,
                    "{level:?} bit {bit}: memory changed"
                );
            }
            w.audit(&[base.mfn()]);
        }
    }
}

#[test]
fn an_l4_without_its_window_l3_is_never_valid() {
    let mut tree = Tree::write();
    let w = &mut tree.world;
    w.ram.write(tree.l4, 511, 0);
    w.ram.write(tree.l4, 0, pte(tree.l3, WRITABLE));
    let before = w.snapshot();
    let mmu = w.mmu();
    assert_eq!(
        mmu.new_baseptr(tree.l4, DOM, &mut w.ram),
        Err(MmError::NoWindow(tree.l4))
    );
    assert_eq!(
        mmu.pin_table(tree.l4, Level::L4, DOM, &mut w.ram),
        Err(MmError::NoWindow(tree.l4))
    );
    // Not present with other bits set is still not present.
    w.ram.write(tree.l4, 511, pte(tree.l3, WRITABLE) & !1);
    assert_eq!(
        mmu.new_baseptr(tree.l4, DOM, &mut w.ram),
        Err(MmError::NoWindow(tree.l4))
    );
    assert_eq!(w.snapshot(), before);
    w.audit(&[]);
}

#[test]
fn a_plain_l3_has_no_hypervisor_entry_and_its_slot_511_is_the_guests() {
    let (mut tree, base) = Tree::validated();
    let [l3, l2, l1, page] = [0, 1, 2, 3].map(|i| tree.spare[i]);
    let w = &mut tree.world;
    let mmu = w.mmu();
    w.ram.write(l3, 511, pte(l2, WRITABLE));
    w.ram.write(l2, 480, pte(l1, WRITABLE));
    w.ram.write(l1, 0, pte(page, WRITABLE));
    // Linked at L4 slot 0, its entry 511 covers 0x7F_C000_0000, where a window-L3 keeps
    // the hypervisor: here it is the guest's own mapping.
    mmu.mod_entry(
        tree.l4,
        0,
        pte(l3, WRITABLE),
        AccessedDirty::Overwrite,
        DOM,
        &mut w.ram,
    )
    .unwrap();
    assert_eq!(w.counts(l3), (1, validated(PageType::L3, 1)));
    assert_eq!(w.ram.read(l3, 511), pte(l2, WRITABLE | USER));
    let alias = 0x7F_FC00_0000; // the window's alias before the fix
    assert_eq!(
        mmu.l1_entry_of(tree.l4, alias, &w.ram),
        Ok(EntrySlot {
            table: l1,
            index: 0
        })
    );
    // Its slot 511 takes updates like any other guest entry.
    mmu.mod_entry(l3, 511, 0, AccessedDirty::Overwrite, DOM, &mut w.ram)
        .unwrap();
    assert_eq!(
        mmu.l1_entry_of(tree.l4, alias, &w.ram),
        Err(MmError::NotMapped {
            level: Level::L3,
            virtual_address: alias,
        })
    );
    w.audit(&[base.mfn()]);
}

#[test]
fn pinned_l3s_keep_their_kind_and_kinds_never_mix() {
    let (mut tree, base) = Tree::validated();
    let plain = tree.spare[0];
    let w = &mut tree.world;
    let mmu = w.mmu();
    // An untyped L3 pinned is a plain L3: it cannot become the window-L3 while pinned.
    mmu.pin_table(plain, Level::L3, DOM, &mut w.ram).unwrap();
    assert_eq!(w.counts(plain).1.page_type(), PageType::L3);
    let before = w.snapshot();
    assert_eq!(
        mmu.mod_entry(
            tree.l4,
            511,
            pte(plain, 0),
            AccessedDirty::Overwrite,
            DOM,
            &mut w.ram
        ),
        Err(MmError::TypeConflict {
            mfn: plain,
            have: PageType::L3,
            want: PageType::WindowL3,
        })
    );
    assert_eq!(w.snapshot(), before);
    // The window-L3 in use, pinned as an L3, keeps its kind (a second reference).
    mmu.pin_table(tree.l3, Level::L3, DOM, &mut w.ram).unwrap();
    assert_eq!(
        w.counts(tree.l3),
        (
            2,
            validated(PageType::WindowL3, 2).with_flags(TypeFlags::VALIDATED | TypeFlags::PINNED)
        )
    );
    w.audit(&[base.mfn()]);
    // Once unlinked and unpinned, a frame may take either kind again.
    mmu.unpin_table(plain, DOM, &mut w.ram).unwrap();
    mmu.mod_entry(
        tree.l4,
        511,
        pte(plain, 0),
        AccessedDirty::Overwrite,
        DOM,
        &mut w.ram,
    )
    .unwrap();
    assert_eq!(w.counts(plain), (1, validated(PageType::WindowL3, 1)));
    assert_eq!(w.ram.read(plain, 511), HV_L3_ENTRY);
    assert_eq!(
        w.counts(tree.l3).1.count(),
        1,
        "only the pin holds the old window-L3"
    );
    mmu.unpin_table(tree.l3, DOM, &mut w.ram).unwrap();
    assert_eq!(w.counts(tree.l3), (0, TypeInfo::NONE));
    // The old window-L3 still holds the window entry, which names no frame of the
    // guest's: as a plain L3 it is refused until the guest clears that entry itself.
    let as_plain = mmu.mod_entry(
        tree.l4,
        5,
        pte(tree.l3, 0),
        AccessedDirty::Overwrite,
        DOM,
        &mut w.ram,
    );
    assert_eq!(as_plain, Err(MmError::NotAllocated(Pte(HV_L3_ENTRY).mfn())));
    mmu.mod_entry(tree.l3, 511, 0, AccessedDirty::Overwrite, DOM, &mut w.ram)
        .unwrap();
    mmu.mod_entry(
        tree.l4,
        5,
        pte(tree.l3, 0),
        AccessedDirty::Overwrite,
        DOM,
        &mut w.ram,
    )
    .unwrap();
    assert_eq!(w.counts(tree.l3).1.page_type(), PageType::L3);
    w.audit(&[base.mfn()]);
}

#[test]
fn kernel_and_user_l4s_share_one_window_l3() {
    let (mut tree, base) = Tree::validated();
    let user_l4 = tree.spare[0];
    let w = &mut tree.world;
    w.ram.write(user_l4, 511, w.ram.read(tree.l4, 511));
    let user = w.mmu().new_baseptr(user_l4, DOM, &mut w.ram).unwrap();
    assert_eq!(w.counts(tree.l3), (2, validated(PageType::WindowL3, 2)));
    w.audit(&[base.mfn(), user.mfn()]);
    w.mmu().put_baseptr(user, &mut w.ram).unwrap();
    w.audit(&[base.mfn()]);
}

#[test]
fn table_only_updates_write_tables_and_refuse_every_other_frame() {
    let (mut tree, base) = Tree::validated();
    let (l1, l2, l3, l4) = (tree.l1, tree.l2, tree.l3, tree.l4);
    let data = tree.data[0];
    let w = &mut tree.world;
    let mmu = w.mmu();
    assert_eq!(mmu.table_level(l1, DOM), Ok(Level::L1));
    assert_eq!(mmu.table_level(l2, DOM), Ok(Level::L2));
    assert_eq!(mmu.table_level(l3, DOM), Ok(Level::L3));
    assert_eq!(mmu.table_level(l4, DOM), Ok(Level::L4));
    assert_eq!(mmu.table_level(data, DOM), Err(MmError::NotATable(data)));
    assert!(matches!(mmu.table_level(l1, OTHER), Err(MmError::NotOwner { .. })));
    // A plain page: mod_entry would write it, the table-only update must not.
    let before = w.ram.read(data, 3);
    assert_eq!(
        mmu.mod_table_entry_only(data, 3, 0x1234, AccessedDirty::Overwrite, DOM, &mut w.ram),
        Err(MmError::NotATable(data))
    );
    assert_eq!(w.ram.read(data, 3), before);
    // A table entry: validated as mod_entry validates it.
    // The L1 mapping itself read-only, as a guest maps its tables.
    assert_eq!(mmu.mod_table_entry_only(l1, 7, pte(l1, USER), AccessedDirty::Overwrite, DOM, &mut w.ram), Ok(()));
    assert_eq!(
        mmu.mod_table_entry_only(l1, 8, pte(l2, WRITABLE | USER), AccessedDirty::Overwrite, DOM, &mut w.ram),
        Err(MmError::WritableTable { mfn: l2, have: PageType::L2 }),
        "a writable mapping of a page table is refused"
    );
    assert!(mmu.mod_table_entry_only(l4, 256, 0, AccessedDirty::Overwrite, DOM, &mut w.ram).is_err(), "hypervisor slot");
    w.audit(&[base.mfn()]);
}

#[test]
fn compare_exchange_updates_store_only_over_the_expected_value() {
    let (mut tree, base) = Tree::validated();
    let (l1, spare) = (tree.l1, tree.spare[0]);
    let w = &mut tree.world;
    let mmu = w.mmu();
    let before = w.ram.read(l1, 9);
    let snapshot = w.snapshot();
    // A stale expectation (a processor set a bit since the value was read): refused,
    // nothing taken.
    let stale = AccessedDirty::CompareExchange { expected: before | ACCESSED };
    assert_eq!(
        mmu.mod_table_entry_only(l1, 9, pte(spare, WRITABLE | USER), stale, DOM, &mut w.ram),
        Err(MmError::Changed(l1))
    );
    assert_eq!(w.ram.read(l1, 9), before);
    assert_eq!(w.snapshot(), snapshot, "no reference moved");
    // The bit set between the comparison under the lock and the store (the memory's own
    // compare-and-swap fails): the references the new entry took are given back.
    w.ram.fail_next_compare_exchange = true;
    let fresh = AccessedDirty::CompareExchange { expected: before };
    assert_eq!(
        mmu.mod_table_entry_only(l1, 9, pte(spare, WRITABLE | USER), fresh, DOM, &mut w.ram),
        Err(MmError::Changed(l1))
    );
    assert_eq!(w.snapshot(), snapshot, "the new entry's references were given back");
    assert_eq!(mmu.mod_table_entry_only(l1, 9, pte(spare, WRITABLE | USER), fresh, DOM, &mut w.ram), Ok(()));
    assert_eq!(w.counts(spare), (1, TypeInfo::NONE.with_type(PageType::None).with_count(1).unwrap()));
    w.audit(&[base.mfn()]);
}
