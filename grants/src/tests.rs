//! Host tests of the grant table, the maptrack and their protocol with the granter.

use abi::errno::Errno;
use abi::grant_table::{
    GntSt, GNTMAP_DEVICE_MAP, GNTMAP_HOST_MAP, GNTMAP_READONLY, GTF_ACCEPT_TRANSFER, GTF_PERMIT_ACCESS, GTF_READING,
    GTF_READONLY, GTF_SUB_PAGE, GTF_TRANSFER_COMMITTED, GTF_TRANSFER_COMPLETED, GTF_TRANSITIVE, GTF_WRITING,
};
use abi::ids::DomId;
use mm::addr::Mfn;
use proptest::prelude::*;

use crate::maptrack::{MapEntry, Maptrack, UnmapPlan};
use crate::shared::{entry_location, status_location, SharedMemory, Version};
use crate::table::{GrantTable, GrowError, PinKind, PinRequest, Purpose, STATUS_RETRIES};
use crate::testkit::Memory;

const GRANTEE: DomId = DomId(2);
const READ: PinKind = PinKind { device: false, readonly: true };
const WRITE: PinKind = PinKind { device: false, readonly: false };
const DEV_WRITE: PinKind = PinKind { device: true, readonly: false };

fn map(gref: u32, kind: PinKind) -> PinRequest {
    PinRequest { gref, grantee: GRANTEE, kind, purpose: Purpose::Map }
}

fn copy(gref: u32, kind: PinKind) -> PinRequest {
    PinRequest { gref, grantee: GRANTEE, kind, purpose: Purpose::Copy }
}

/// A table grown to `frames` frames.
fn table(mem: &Memory, frames: u32) -> GrantTable {
    let mut table = GrantTable::new(4);
    table.grow(frames, &mut mem.allocator(16)).unwrap();
    table
}

fn status_v2(mem: &Memory, table: &GrantTable, gref: u32) -> u16 {
    let at = status_location(table.status_frames(), gref).unwrap();
    mem.load_u16(at.mfn, at.offset)
}

#[test]
fn a_new_table_has_one_logical_frame_and_no_memory() {
    let mem = Memory::default();
    let table = GrantTable::new(4);
    assert_eq!((table.nr_frames(), table.nr_entries()), (1, 512));
    assert!(table.shared_frames().is_empty());
    // Entries of the frame not yet allocated read as nothing granted.
    let mut table = table;
    assert_eq!(table.pin(&mem, map(8, READ)), Err(GntSt::GeneralError));
    assert_eq!(table.pin(&mem, map(512, READ)), Err(GntSt::BadGntref));
}

#[test]
fn pins_mark_the_entry_and_the_last_unpin_clears_it() {
    let mem = Memory::default();
    let mut table = table(&mem, 1);
    let frames = table.shared_frames().to_vec();
    mem.grant_v1(&frames, 8, GRANTEE, 0x1234, GTF_PERMIT_ACCESS);
    let pinned = table.pin(&mem, map(8, READ)).unwrap();
    assert_eq!((pinned.mfn, pinned.start, pinned.length), (Mfn(0x1234), 0, 4096));
    assert_eq!(mem.flags_v1(&frames, 8), GTF_PERMIT_ACCESS | GTF_READING);
    table.pin(&mem, map(8, WRITE)).unwrap();
    assert_eq!(mem.flags_v1(&frames, 8), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
    // The granter changing its entry now changes nothing the active entry holds.
    mem.grant_v1(&frames, 8, GRANTEE, 0x9999, GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
    assert_eq!(table.pin(&mem, map(8, READ)).unwrap().mfn, Mfn(0x1234));
    assert!(table.unpin(&mem, 8, WRITE));
    assert_eq!(mem.flags_v1(&frames, 8) & (GTF_READING | GTF_WRITING), GTF_READING, "still read-pinned");
    assert!(table.unpin(&mem, 8, READ));
    assert!(table.unpin(&mem, 8, READ));
    assert_eq!(mem.flags_v1(&frames, 8) & (GTF_READING | GTF_WRITING), 0);
    assert!(table.active().is_empty());
    assert!(!table.unpin(&mem, 8, READ), "no pin left to drop");
}

#[test]
fn the_grant_must_permit_this_grantee_and_this_access() {
    let mem = Memory::default();
    let mut table = table(&mem, 1);
    let frames = table.shared_frames().to_vec();
    mem.grant_v1(&frames, 9, GRANTEE, 7, GTF_PERMIT_ACCESS | GTF_READONLY);
    assert_eq!(table.pin(&mem, map(9, WRITE)), Err(GntSt::GeneralError));
    assert_eq!(mem.flags_v1(&frames, 9), GTF_PERMIT_ACCESS | GTF_READONLY, "a refused pin marks nothing");
    table.pin(&mem, map(9, READ)).unwrap();
    // Pinned read-only: a writable pin still checks the read-only flag.
    assert_eq!(table.pin(&mem, map(9, WRITE)), Err(GntSt::GeneralError));
    // Another domain may not use an entry granted to this one, pinned or not.
    let other = PinRequest { grantee: DomId(3), ..map(9, READ) };
    assert_eq!(table.pin(&mem, other), Err(GntSt::GeneralError));
    mem.grant_v1(&frames, 10, DomId(3), 7, GTF_PERMIT_ACCESS);
    assert_eq!(table.pin(&mem, map(10, READ)), Err(GntSt::GeneralError));
    // Not an access grant; a v1 entry with the sub-page bit is not mapped either.
    mem.grant_v1(&frames, 11, GRANTEE, 7, GTF_ACCEPT_TRANSFER);
    assert_eq!(table.pin(&mem, map(11, READ)), Err(GntSt::GeneralError));
    mem.grant_v1(&frames, 12, GRANTEE, 7, GTF_PERMIT_ACCESS | GTF_SUB_PAGE);
    assert_eq!(table.pin(&mem, map(12, READ)), Err(GntSt::GeneralError));
    assert!(table.pin(&mem, copy(12, READ)).is_ok(), "a copy does not care about the bit in v1");
}

#[test]
fn a_racing_granter_gets_a_bounded_number_of_tries() {
    let mem = Memory::default();
    let mut table = table(&mem, 1);
    let frames = table.shared_frames().to_vec();
    mem.grant_v1(&frames, 8, GRANTEE, 7, GTF_PERMIT_ACCESS);
    // The granter flips its readonly bit at every compare-and-swap (XSA-295).
    mem.meddle_cas.set(u32::from(GTF_READONLY));
    assert_eq!(table.pin(&mem, map(8, READ)), Err(GntSt::GeneralError));
    assert_eq!(mem.cas_tries.get(), STATUS_RETRIES);
    assert!(table.active().is_empty());
    mem.meddle_cas.set(0);
    mem.grant_v1(&frames, 8, GRANTEE, 7, GTF_PERMIT_ACCESS);
    assert!(table.pin(&mem, map(8, READ)).is_ok());
}

#[test]
fn each_kind_of_pin_counts_to_128() {
    let mem = Memory::default();
    let mut table = table(&mem, 1);
    let frames = table.shared_frames().to_vec();
    mem.grant_v1(&frames, 8, GRANTEE, 7, GTF_PERMIT_ACCESS);
    for _ in 0..128 {
        table.pin(&mem, map(8, DEV_WRITE)).unwrap();
    }
    assert_eq!(table.pin(&mem, map(8, READ)), Err(GntSt::GeneralError));
    for _ in 0..128 {
        assert!(table.unpin(&mem, 8, DEV_WRITE));
    }
    assert_eq!(mem.flags_v1(&frames, 8), GTF_PERMIT_ACCESS);
}

#[test]
fn version_2_marks_the_status_and_undoes_it_when_the_grant_moves() {
    let mem = Memory::default();
    let mut table = table(&mem, 1);
    let (result, change) = table.set_version(&mem, Version::V2, &mut mem.allocator(1), &|_| false);
    assert_eq!((result, change.release.len()), (Ok(()), 0));
    assert_eq!(table.status_frames().len(), 1);
    assert_eq!((table.nr_entries(), table.nr_status_frames()), (256, 1));
    let frames = table.shared_frames().to_vec();
    mem.grant_v2(&frames, 8, GRANTEE, 0x1_0000_0000, GTF_PERMIT_ACCESS);
    assert_eq!(table.pin(&mem, map(8, WRITE)).unwrap().mfn, Mfn(0x1_0000_0000));
    assert_eq!(status_v2(&mem, &table, 8), GTF_READING | GTF_WRITING);
    assert!(table.unpin(&mem, 8, WRITE));
    assert_eq!(status_v2(&mem, &table, 8), 0);
    // The granter hands the entry to another domain between the status update and the
    // hypervisor's second look: the pin is refused and the status undone.
    let at = entry_location(&frames, Version::V2, 8).unwrap();
    let moved = u32::from(GTF_PERMIT_ACCESS) | 3 << 16;
    mem.after_or.set(Some((at.mfn, at.offset, moved)));
    assert_eq!(table.pin(&mem, map(8, READ)), Err(GntSt::GeneralError));
    assert_eq!(status_v2(&mem, &table, 8), 0);
    assert!(table.active().is_empty());
}

#[test]
fn sub_page_grants_are_for_copies_and_transitive_ones_are_refused() {
    let mem = Memory::default();
    let mut table = table(&mem, 1);
    let _ = table.set_version(&mem, Version::V2, &mut mem.allocator(1), &|_| false);
    let frames = table.shared_frames().to_vec();
    mem.grant_v2_sub_page(&frames, 9, GRANTEE, 42, 100, 200);
    assert_eq!(table.pin(&mem, map(9, READ)), Err(GntSt::GeneralError));
    let pinned = table.pin(&mem, copy(9, READ)).unwrap();
    assert_eq!((pinned.mfn, pinned.start, pinned.length), (Mfn(42), 100, 200));
    // Pinned as a sub-page grant: no map, even now.
    assert_eq!(table.pin(&mem, map(9, READ)), Err(GntSt::GeneralError));
    assert!(table.unpin(&mem, 9, READ));
    mem.grant_v2(&frames, 10, GRANTEE, 0, GTF_TRANSITIVE);
    assert_eq!(table.pin(&mem, copy(10, READ)), Err(GntSt::GeneralError));
    assert_eq!(status_v2(&mem, &table, 10), 0, "the refused transitive pin left no status");
}

#[test]
fn version_changes_keep_the_reserved_entries_and_clear_the_rest() {
    let mem = Memory::default();
    let mut table = table(&mem, 2);
    let frames = table.shared_frames().to_vec();
    mem.grant_v1(&frames, 1, DomId(0), 0xabc, GTF_PERMIT_ACCESS);
    mem.grant_v1(&frames, 20, GRANTEE, 0xdef, GTF_PERMIT_ACCESS);
    mem.grant_v1(&frames, 600, GRANTEE, 0xdef, GTF_PERMIT_ACCESS);
    table.pin(&mem, PinRequest { grantee: DomId(0), ..map(1, READ) }).unwrap();
    // Entry 20 in use: no change.
    table.pin(&mem, map(20, READ)).unwrap();
    let (result, _) = table.set_version(&mem, Version::V2, &mut mem.allocator(1), &|_| false);
    assert_eq!(result, Err(Errno::Ebusy));
    assert_eq!(table.version(), Version::V1);
    assert!(table.unpin(&mem, 20, READ));
    let (result, _) = table.set_version(&mem, Version::V2, &mut mem.allocator(1), &|_| false);
    assert_eq!(result, Ok(()));
    // Entry 1, pinned: its grant and its status bit moved to the version-2 places.
    let at = entry_location(&frames, Version::V2, 1).unwrap();
    assert_eq!(mem.load_u32(at.mfn, at.offset), u32::from(GTF_PERMIT_ACCESS));
    assert_eq!(mem.load_u64(at.mfn, at.offset + 8), 0xabc);
    assert_eq!(status_v2(&mem, &table, 1), GTF_READING);
    for gref in [20, 300] {
        let at = entry_location(&frames, Version::V2, gref).unwrap();
        assert_eq!(mem.load_u64(at.mfn, at.offset) | mem.load_u64(at.mfn, at.offset + 8), 0, "entry {gref} cleared");
    }
    // Back to version 1: refused while the guest maps a status frame (XSA-255)...
    let status = table.status_frames()[0];
    let (result, change) = table.set_version(&mem, Version::V1, &mut mem.allocator(0), &|mfn| mfn == status);
    assert_eq!((result, change.release), (Err(Errno::Ebusy), vec![]));
    assert_eq!(table.version(), Version::V2);
    // ... and while a reserved grant names a frame beyond 32 bits.
    mem.grant_v2(&frames, 2, GRANTEE, 1 << 32, GTF_PERMIT_ACCESS);
    let (result, _) = table.set_version(&mem, Version::V1, &mut mem.allocator(0), &|_| false);
    assert_eq!(result, Err(Errno::Erange));
    mem.grant_v2(&frames, 2, GRANTEE, 5, GTF_PERMIT_ACCESS);
    let (result, change) = table.set_version(&mem, Version::V1, &mut mem.allocator(0), &|_| false);
    assert_eq!((result, change.release), (Ok(()), vec![status]));
    assert_eq!(mem.flags_v1(&frames, 1), GTF_PERMIT_ACCESS | GTF_READING);
    assert_eq!(mem.flags_v1(&frames, 2), GTF_PERMIT_ACCESS);
    assert!(table.unpin(&mem, 1, READ));
    assert_eq!(mem.flags_v1(&frames, 1), GTF_PERMIT_ACCESS);
}

#[test]
fn a_version_change_that_runs_out_of_frames_changes_nothing() {
    let mem = Memory::default();
    let mut table = table(&mem, 4);
    assert_eq!(table.frames_to_grow(4), 0);
    let (result, change) = table.set_version(&mem, Version::V2, &mut mem.allocator(0), &|_| false);
    assert_eq!((result, change.release.len()), (Err(Errno::Enomem), 0));
    assert_eq!(table.version(), Version::V1);
    assert!(table.status_frames().is_empty());
}

#[test]
fn growth_is_bounded_and_counted() {
    let mem = Memory::default();
    let mut table = GrantTable::new(3);
    assert_eq!(table.frames_to_grow(2), 2);
    assert_eq!(table.grow(4, &mut mem.allocator(9)), Err(GrowError::TooLarge));
    assert!(table.shared_frames().is_empty());
    assert_eq!(table.grow(3, &mut mem.allocator(2)), Err(GrowError::NoMemory));
    assert_eq!(table.shared_frames().len(), 2, "what was allocated stays");
    table.grow(1, &mut mem.allocator(0)).unwrap();
    assert_eq!(table.nr_frames(), 2, "never shrinks");
    let _ = table.set_version(&mem, Version::V2, &mut mem.allocator(1), &|_| false);
    assert_eq!(table.frames_to_grow(3), 1);
    table.grow(3, &mut mem.allocator(1)).unwrap();
    assert_eq!((table.shared_frames().len(), table.status_frames().len()), (3, 1));
    assert_eq!(table.take_frames().len(), 4);
}

#[test]
fn swaps_refuse_entries_in_use() {
    let mem = Memory::default();
    let mut table = table(&mem, 1);
    let frames = table.shared_frames().to_vec();
    mem.grant_v1(&frames, 8, GRANTEE, 1, GTF_PERMIT_ACCESS);
    mem.grant_v1(&frames, 9, DomId(3), 2, GTF_PERMIT_ACCESS | GTF_READONLY);
    assert_eq!(table.swap(&mem, 8, 9), GntSt::Okay);
    assert_eq!(mem.flags_v1(&frames, 8), GTF_PERMIT_ACCESS | GTF_READONLY);
    assert_eq!(table.pin(&mem, map(9, WRITE)).unwrap().mfn, Mfn(1));
    assert_eq!(table.swap(&mem, 8, 9), GntSt::Eagain);
    assert_eq!(table.swap(&mem, 8, 512), GntSt::BadGntref);
    assert_eq!(table.swap(&mem, 9, 9), GntSt::Okay);
}

#[test]
fn transfers_need_an_entry_that_accepts_them() {
    let mem = Memory::default();
    let table = table(&mem, 1);
    let frames = table.shared_frames().to_vec();
    mem.grant_v1(&frames, 8, DomId(5), 0, GTF_ACCEPT_TRANSFER);
    assert!(!table.commit_transfer(&mem, 8, DomId(6)));
    assert!(table.commit_transfer(&mem, 8, DomId(5)));
    assert!(!table.commit_transfer(&mem, 8, DomId(5)), "committed once");
    table.complete_transfer(&mem, 8, Mfn(0x4321));
    let at = entry_location(&frames, Version::V1, 8).unwrap();
    assert_eq!(mem.load_u32(at.mfn, at.offset + 4), 0x4321);
    assert_eq!(mem.flags_v1(&frames, 8), GTF_ACCEPT_TRANSFER | GTF_TRANSFER_COMMITTED | GTF_TRANSFER_COMPLETED);
    assert!(!table.can_name(Mfn(1 << 32)));
}

#[test]
fn a_closed_table_pins_nothing_but_still_unpins() {
    let mem = Memory::default();
    let mut table = table(&mem, 1);
    let frames = table.shared_frames().to_vec();
    mem.grant_v1(&frames, 8, GRANTEE, 1, GTF_PERMIT_ACCESS);
    table.pin(&mem, map(8, READ)).unwrap();
    table.close();
    assert_eq!(table.pin(&mem, map(8, READ)), Err(GntSt::GeneralError));
    assert!(table.is_used_by(GRANTEE, Mfn(1)));
    assert!(table.unpin(&mem, 8, READ));
    assert!(!table.is_used_by(GRANTEE, Mfn(1)));
}

fn entry(flags: u32) -> MapEntry {
    MapEntry { granter: DomId(1), gref: 8, flags, mfn: Mfn(0x55) }
}

#[test]
fn maptrack_handles_are_bounded_and_reused() {
    let mut maptrack = Maptrack::new(70);
    let handles: Vec<u32> = (0..70).map(|_| maptrack.reserve().unwrap()).collect();
    assert_eq!(handles[..3], [0, 1, 2], "lowest first");
    assert_eq!(maptrack.reserve(), Err(GntSt::NoDeviceSpace));
    maptrack.cancel(5);
    assert_eq!(maptrack.reserve(), Ok(5));
    maptrack.fill(5, entry(GNTMAP_HOST_MAP));
    maptrack.fill(6, entry(GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP));
    assert_eq!(maptrack.get(6).map(|e| e.device()), Some(true));
    for handle in handles.iter().filter(|&&h| h != 5 && h != 6) {
        maptrack.cancel(*handle);
    }
    assert_eq!(maptrack.live(), 2);
}

#[test]
fn an_unmap_holds_its_handle_until_it_ends() {
    let mut maptrack = Maptrack::new(8);
    let handle = maptrack.reserve().unwrap();
    maptrack.fill(handle, entry(GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP));
    let taken = maptrack.begin_unmap(handle).unwrap();
    // A second unmap of the same handle (another vCPU) is refused while the first runs.
    assert_eq!(maptrack.begin_unmap(handle), Err(GntSt::BadHandle));
    maptrack.end_unmap(handle, GNTMAP_HOST_MAP);
    assert_eq!(maptrack.get(handle).map(|e| e.flags), Some(GNTMAP_DEVICE_MAP), "the device mapping stays");
    assert_eq!(taken.flags, GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP);
    maptrack.begin_unmap(handle).unwrap();
    maptrack.end_unmap(handle, GNTMAP_DEVICE_MAP);
    assert_eq!(maptrack.begin_unmap(handle), Err(GntSt::BadHandle), "freed");
    assert_eq!(maptrack.begin_unmap(u32::MAX), Err(GntSt::BadHandle));
    assert_eq!(maptrack.live(), 0);
    maptrack.shrink_if_empty();
    assert!(maptrack.growth_bytes() > 0);
}

#[test]
fn teardown_drains_every_mapping() {
    let mut maptrack = Maptrack::new(200);
    for _ in 0..150 {
        let handle = maptrack.reserve().unwrap();
        maptrack.fill(handle, entry(GNTMAP_HOST_MAP | GNTMAP_READONLY));
    }
    let mut drained = 0;
    while let Some(e) = maptrack.take_next() {
        assert!(e.readonly());
        drained += 1;
    }
    assert_eq!((drained, maptrack.live()), (150, 0));
}

#[test]
fn unmap_requests_follow_xen() {
    let both = entry(GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP);
    assert_eq!(UnmapPlan::for_request(&both, 0x1000, 0), Ok(UnmapPlan { host: true, device: false }));
    assert_eq!(UnmapPlan::for_request(&both, 0, 0x55 << 12), Ok(UnmapPlan { host: false, device: true }));
    assert_eq!(UnmapPlan::for_request(&both, 0, 0x56 << 12), Err(GntSt::GeneralError));
    assert_eq!(UnmapPlan::for_request(&both, 0, 0), Ok(UnmapPlan::default()));
    let host = entry(GNTMAP_HOST_MAP);
    assert_eq!(UnmapPlan::for_request(&host, 0x1000, 0x55 << 12), Ok(UnmapPlan { host: true, device: false }));
    assert_eq!(UnmapPlan { host: true, device: true }.flags(), GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP);
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Pin(u8, bool, bool),
    Unpin(u8, bool, bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..4, any::<bool>(), any::<bool>()).prop_map(|(r, d, ro)| Step::Pin(r, d, ro)),
        (0u8..4, any::<bool>(), any::<bool>()).prop_map(|(r, d, ro)| Step::Unpin(r, d, ro)),
    ]
}

proptest! {
    /// Whatever the order of pins and unpins, an entry's status bits say exactly whether
    /// it is pinned (`GTF_reading`) and whether a writable pin is held (`GTF_writing`), in
    /// both versions, and only the grants that allow it take writable pins.
    #[test]
    fn status_bits_follow_the_pins(v2 in any::<bool>(), steps in proptest::collection::vec(step(), 1..80)) {
        let mem = Memory::default();
        let mut table = table(&mem, 1);
        if v2 {
            let _ = table.set_version(&mem, Version::V2, &mut mem.allocator(1), &|_| false);
        }
        let frames = table.shared_frames().to_vec();
        for gref in 8..12u32 {
            let flags = if gref == 11 { GTF_PERMIT_ACCESS | GTF_READONLY } else { GTF_PERMIT_ACCESS };
            if v2 { mem.grant_v2(&frames, gref, GRANTEE, gref as u64, flags) } else { mem.grant_v1(&frames, gref, GRANTEE, gref as u64, flags) }
        }
        let mut model = [[0u32; 4]; 4];
        for step in steps {
            let (gref, device, readonly, pin) = match step {
                Step::Pin(r, d, ro) => (r, d, ro, true),
                Step::Unpin(r, d, ro) => (r, d, ro, false),
            };
            let kind = PinKind { device, readonly };
            let slot = usize::from(device) * 2 + usize::from(readonly);
            let counts = &mut model[gref as usize];
            if pin {
                let ok = table.pin(&mem, map(8 + u32::from(gref), kind)).is_ok();
                prop_assert_eq!(ok, readonly || gref != 3);
                counts[slot] += u32::from(ok);
            } else {
                let ok = table.unpin(&mem, 8 + u32::from(gref), kind);
                prop_assert_eq!(ok, counts[slot] > 0);
                counts[slot] -= u32::from(ok);
            }
            for (g, counts) in model.iter().enumerate() {
                let gref = 8 + g as u32;
                let bits = if v2 { status_v2(&mem, &table, gref) } else { mem.flags_v1(&frames, gref) };
                let reading = counts.iter().any(|&c| c > 0);
                let writing = counts[0] > 0 || counts[2] > 0;
                prop_assert_eq!(bits & GTF_READING != 0, reading);
                prop_assert_eq!(bits & GTF_WRITING != 0, writing);
            }
        }
    }
}

#[test]
fn seeded_entries_grant_the_backend_read_write() {
    let mem = Memory::default();
    let mut table = GrantTable::new(4);
    let backend = DomId(0);
    assert!(!table.seed(&mem, 0, backend, 0x42), "no frame yet: nothing to seed");
    table.grow(1, &mut mem.allocator(4)).unwrap();
    assert!(table.seed(&mem, 0, backend, 0x42));
    assert!(table.seed(&mem, 1, backend, 0x43));
    assert!(!table.seed(&mem, 512, backend, 0x44), "beyond the first frame");
    assert!(!table.seed(&mem, 2, backend, 1 << 32), "a frame a version-1 entry cannot name");
    for (gref, mfn) in [(0u32, 0x42u64), (1, 0x43)] {
        let req = PinRequest { gref, grantee: backend, kind: PinKind { device: false, readonly: false }, purpose: Purpose::Map };
        let pinned = table.pin(&mem, req).expect("the backend may map the seeded entry writable");
        assert_eq!(pinned.mfn, Mfn(mfn));
        assert!(table.unpin(&mem, gref, req.kind));
    }
    let other = PinRequest { gref: 0, grantee: DomId(5), kind: PinKind { device: false, readonly: true }, purpose: Purpose::Map };
    assert!(table.pin(&mem, other).is_err(), "only the backend is granted");
}
