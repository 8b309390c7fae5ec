//! Host tests of device-memory mappings in L1 tables ([`crate::device`]).

use mm::addr::Mfn;
use mm::frame::DomainId;

use crate::device::{DeviceMemory, UNCACHED};
use crate::entry::{Pte, PteFlags};
use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::testkit::{pte, Tree, DOM, OTHER};
use crate::update::AccessedDirty;

/// Frames 0xfe000-0xfe003 are device memory that [`DOM`] alone may map.
struct Bars;

const DEVICE: Mfn = Mfn(0xfe000);

impl DeviceMemory for Bars {
    fn is_device(&self, mfn: Mfn) -> bool {
        (0xfe000..0xfe004).contains(&mfn.0)
    }
    fn may_map(&self, _mfn: Mfn, dom: DomainId) -> bool {
        dom == DOM
    }
}

#[test]
fn device_frames_map_uncached_for_their_domain_only_and_hold_no_reference() {
    let (mut tree, _base) = Tree::validated();
    let world = &mut tree.world;
    let before = world.snapshot();
    let value = pte(DEVICE, PteFlags::WRITABLE);
    // Without the hook a device frame is outside the frame table, as before.
    let plain = world.mmu().mod_entry(tree.l1, 20, value, AccessedDirty::Overwrite, DOM, &mut world.ram);
    assert!(matches!(plain, Err(MmError::OutOfRange(_))), "{plain:?}");
    let mmu = world.mmu().with_device_memory(&Bars);
    mmu.mod_entry(tree.l1, 20, value, AccessedDirty::Overwrite, DOM, &mut world.ram).unwrap();
    let stored = world.ram.read(tree.l1, 20);
    assert!(Pte(stored).flags().contains(UNCACHED), "forced uncached");
    assert_eq!(Pte(stored).mfn(), DEVICE);
    // The guest may ask for the cache bits itself; never PAT.
    mmu.mod_entry(tree.l1, 21, pte(Mfn(0xfe003), PteFlags::CACHE_DISABLE | PteFlags::WRITE_THROUGH), AccessedDirty::Overwrite, DOM, &mut world.ram).unwrap();
    let pat = mmu.mod_entry(tree.l1, 22, pte(DEVICE, PteFlags::PAT_4K), AccessedDirty::Overwrite, DOM, &mut world.ram);
    assert!(matches!(pat, Err(MmError::BadFlags { .. })), "{pat:?}");
    assert_eq!(world.snapshot(), before, "no reference taken on any frame");
    // Another domain is refused (EPERM), as are frames past the BAR.
    assert!(matches!(mmu.device_entry(Level::L1, value, OTHER), Err(MmError::NotDeviceOwner { .. })));
    assert_eq!(MmError::NotDeviceOwner { mfn: DEVICE, dom: OTHER }.errno(), abi::errno::Errno::Eperm);
    let past = mmu.mod_entry(tree.l1, 23, pte(Mfn(0xfe004), PteFlags::WRITABLE), AccessedDirty::Overwrite, DOM, &mut world.ram);
    assert!(matches!(past, Err(MmError::OutOfRange(_))), "{past:?}");
    // Never as a table: an L2 entry naming a device frame is an ordinary (refused) one.
    let as_table = mmu.mod_entry(tree.l2, 5, pte(DEVICE, PteFlags::WRITABLE), AccessedDirty::Overwrite, DOM, &mut world.ram);
    assert!(matches!(as_table, Err(MmError::OutOfRange(_))), "{as_table:?}");
    // The cache bits stay refused on RAM.
    let ram = mmu.mod_entry(tree.l1, 24, pte(tree.spare[0], PteFlags::CACHE_DISABLE), AccessedDirty::Overwrite, DOM, &mut world.ram);
    assert!(matches!(ram, Err(MmError::BadFlags { .. })), "{ram:?}");
    // Replacing and clearing the entries drops nothing (a drop of a reference never
    // taken would panic).
    mmu.mod_entry(tree.l1, 20, pte(tree.spare[0], PteFlags::WRITABLE), AccessedDirty::Overwrite, DOM, &mut world.ram).unwrap();
    mmu.mod_entry(tree.l1, 20, 0, AccessedDirty::Overwrite, DOM, &mut world.ram).unwrap();
    mmu.mod_entry(tree.l1, 21, 0, AccessedDirty::Overwrite, DOM, &mut world.ram).unwrap();
    assert_eq!(world.snapshot(), before);
    world.audit(&[tree.l4]);
}

#[test]
fn tables_holding_device_entries_validate_and_tear_down() {
    let mut tree = Tree::write();
    // A device entry already in the L1 when the tree is first validated.
    tree.world.ram.write(tree.l1, 30, pte(DEVICE, PteFlags::WRITABLE));
    let world = &mut tree.world;
    let mmu = world.mmu().with_device_memory(&Bars);
    let base = mmu.new_baseptr(tree.l4, DOM, &mut world.ram).unwrap();
    assert!(Pte(world.ram.read(tree.l1, 30)).flags().contains(UNCACHED));
    crate::testkit::relinquish(&mmu, DOM, &world.owned.clone(), [base], &mut world.ram).unwrap();
    // The same tree in the other domain's hands: its validation fails (EPERM) and undoes.
    let mut tree = Tree::write();
    tree.world.ram.write(tree.l1, 30, pte(DEVICE, PteFlags::WRITABLE));
    let world = &mut tree.world;
    let before = world.snapshot();
    struct Nobody;
    impl DeviceMemory for Nobody {
        fn is_device(&self, mfn: Mfn) -> bool {
            Bars.is_device(mfn)
        }
        fn may_map(&self, _: Mfn, _: DomainId) -> bool {
            false
        }
    }
    let refused = world.mmu().with_device_memory(&Nobody).new_baseptr(tree.l4, DOM, &mut world.ram);
    assert!(matches!(refused, Err(MmError::NotDeviceOwner { .. })), "{refused:?}");
    assert_eq!(world.snapshot(), before);
}
