//! A frontend and a backend over one ring in plain memory, with a simulated grant table
//! (each grant: a page and whether it is read-only): round trips, every refusal, random
//! mixtures of good and bad requests against a model, a frontend cut off alone, the
//! per-round budget, and a hostile backend seen by the frontend.

use std::collections::BTreeMap;

use proptest::prelude::*;
use xenring::{Layout, PlainMemory, RingMemory};

use crate::backend::{Backend, DataMover};
use crate::check::{Vbd, Work};
use crate::frontend::{FrontError, Frontend, SubmitError};
use crate::wire::*;

const PAGE: usize = 4096;

/// The frontend's granted pages, and the VBD's bytes, as domain 0 sees them.
struct World {
    grants: BTreeMap<u32, (Vec<u8>, bool)>,
    disk: Vec<u8>,
    flushes: u32,
    copies: u32,
}

impl World {
    fn new(sectors: u64) -> Self {
        Self { grants: BTreeMap::new(), disk: vec![0; sectors as usize * 512], flushes: 0, copies: 0 }
    }
}

impl DataMover for World {
    fn transfer(&mut self, work: &Work) -> bool {
        let mut ok = true;
        for chunk in work.chunks() {
            let (a, b) = chunk.split_at_vbd_page(PAGE as u64);
            for piece in [Some(a), b].into_iter().flatten() {
                assert!(piece.vbd_offset / PAGE as u64 == (piece.vbd_offset + piece.len as u64 - 1) / PAGE as u64);
                self.copies += 1;
                let Some((page, read_only)) = self.grants.get_mut(&piece.gref) else {
                    ok = false;
                    continue;
                };
                let p = piece.page_offset as usize..piece.page_offset as usize + piece.len as usize;
                let d = piece.vbd_offset as usize..piece.vbd_offset as usize + piece.len as usize;
                if work.write {
                    self.disk[d].copy_from_slice(&page[p]);
                } else if *read_only {
                    ok = false;
                } else {
                    page[p].copy_from_slice(&self.disk[d]);
                }
            }
        }
        ok
    }
    fn flush(&mut self) -> bool {
        self.flushes += 1;
        true
    }
}

fn seg(gref: u32, first_sect: u8, last_sect: u8) -> Segment {
    Segment { gref, first_sect, last_sect }
}

#[test]
fn write_then_read_back_across_disk_pages() {
    let mut page = vec![0u8; PAGE];
    let mem = PlainMemory::new(&mut page);
    let mut front = Frontend::new(mem, 1).unwrap();
    let mut back = Backend::new(mem, 1, Vbd { sectors: 64, read_only: false }).unwrap();
    let mut w = World::new(64);
    w.grants.insert(10, ((0..PAGE).map(|i| (i % 251) as u8).collect(), true));
    w.grants.insert(11, (vec![0; PAGE], false));
    // Sector 5 onwards: the first segment straddles a disk page boundary (two copies).
    let wid = front.submit(OP_WRITE, 51712, 5, &[seg(10, 0, 7), seg(10, 2, 3)]).unwrap();
    assert!(front.publish());
    let round = back.serve(&mut w, 16);
    assert_eq!((round.ok, round.failed, round.notify, round.more, round.cut_off), (1, 0, true, false, None));
    assert_eq!(w.copies, 3);
    let c = front.complete().unwrap().unwrap();
    assert_eq!((c.id, c.status), (wid, RSP_OKAY));
    assert_eq!(&w.disk[5 * 512..13 * 512], &w.grants[&10].0[..]);
    assert_eq!(&w.disk[13 * 512..15 * 512], &w.grants[&10].0[1024..2048]);
    // Read it back into the writable page.
    let rid = front.submit(OP_READ, 51712, 5, &[seg(11, 0, 7)]).unwrap();
    front.publish();
    back.serve(&mut w, 16);
    assert_eq!(front.complete().unwrap().unwrap(), crate::frontend::Completion { id: rid, status: RSP_OKAY });
    assert_eq!(w.grants[&11].0, w.grants[&10].0);
    // A flush with no data is a round trip that touches nothing.
    front.submit(OP_FLUSH_DISKCACHE, 51712, 0, &[]).unwrap();
    front.publish();
    back.serve(&mut w, 16);
    assert_eq!(front.complete().unwrap().unwrap().status, RSP_OKAY);
    assert_eq!(w.flushes, 1);
    assert!(!front.final_check().unwrap());
}

#[test]
fn bad_grants_and_ranges_get_errors_and_service_goes_on() {
    let mut page = vec![0u8; PAGE];
    let mem = PlainMemory::new(&mut page);
    let mut front = Frontend::new(mem, 1).unwrap();
    let mut back = Backend::new(mem, 1, Vbd { sectors: 64, read_only: false }).unwrap();
    let mut w = World::new(64);
    w.grants.insert(1, (vec![0; PAGE], true));
    w.grants.insert(2, (vec![0; PAGE], false));
    let cases = [
        (OP_READ, 0, vec![seg(99, 0, 7)], RSP_ERROR),  // not granted
        (OP_READ, 0, vec![seg(1, 0, 7)], RSP_ERROR),   // read into a read-only grant
        (OP_READ, 60, vec![seg(2, 0, 7)], RSP_ERROR),  // past the end
        (OP_READ, 0, vec![seg(2, 7, 0)], RSP_ERROR),   // sectors backwards
        (OP_DISCARD, 0, vec![], RSP_EOPNOTSUPP),
        (0x42, 0, vec![], RSP_EOPNOTSUPP),
        (OP_READ, 56, vec![seg(2, 0, 7)], RSP_OKAY),   // the last page: fine
    ];
    for (op, sector, segs, _) in &cases {
        front.submit(*op, 0, *sector, segs).unwrap();
    }
    front.publish();
    let round = back.serve(&mut w, 32);
    assert_eq!((round.ok, round.failed), (1, 6));
    for (_, _, _, status) in &cases {
        assert_eq!(front.complete().unwrap().unwrap().status, *status);
    }
    let mut too_many = Request { operation: OP_READ, nr_segments: 12, id: 7, ..Default::default() };
    too_many.seg[0] = seg(2, 0, 0);
    front.submit_raw(&too_many).unwrap();
    front.publish();
    back.serve(&mut w, 32);
    assert_eq!(front.complete_raw().unwrap().unwrap(), Response { id: 7, operation: OP_READ, status: RSP_ERROR });
}

#[test]
fn read_only_vbd_refuses_writes() {
    let mut page = vec![0u8; PAGE];
    let mem = PlainMemory::new(&mut page);
    let mut front = Frontend::new(mem, 1).unwrap();
    let mut back = Backend::new(mem, 1, Vbd { sectors: 64, read_only: true }).unwrap();
    let mut w = World::new(64);
    w.grants.insert(1, (vec![0xee; PAGE], false));
    front.submit(OP_WRITE, 0, 0, &[seg(1, 0, 7)]).unwrap();
    front.submit(OP_READ, 0, 0, &[seg(1, 0, 7)]).unwrap();
    front.publish();
    back.serve(&mut w, 8);
    assert_eq!(front.complete().unwrap().unwrap().status, RSP_ERROR);
    assert_eq!(front.complete().unwrap().unwrap().status, RSP_OKAY);
    assert!(w.disk.iter().all(|&b| b == 0));
    assert_eq!(w.grants[&1].0, vec![0; PAGE]);
}

#[test]
fn budget_bounds_a_round() {
    let mut page = vec![0u8; PAGE];
    let mem = PlainMemory::new(&mut page);
    let mut front = Frontend::new(mem, 1).unwrap();
    let mut back = Backend::new(mem, 1, Vbd { sectors: 8, read_only: false }).unwrap();
    let mut w = World::new(8);
    for _ in 0..20 {
        front.submit(OP_FLUSH_DISKCACHE, 0, 0, &[]).unwrap();
    }
    front.publish();
    let r = back.serve(&mut w, 4);
    assert_eq!((r.ok, r.more), (4, true));
    let r = back.serve(&mut w, 100);
    assert_eq!((r.ok, r.more), (16, false));
    assert_eq!(back.counters().ok, 20);
}

#[test]
fn garbage_indices_cut_off_that_frontend_only() {
    let mut bad_page = vec![0u8; PAGE];
    let mut good_page = vec![0u8; PAGE];
    let bad_mem = PlainMemory::new(&mut bad_page);
    let good_mem = PlainMemory::new(&mut good_page);
    let mut bad_front = Frontend::new(bad_mem, 1).unwrap();
    let mut good_front = Frontend::new(good_mem, 1).unwrap();
    let vbd = Vbd { sectors: 8, read_only: false };
    let mut bad = Backend::new(bad_mem, 1, vbd).unwrap();
    let mut good = Backend::new(good_mem, 1, vbd).unwrap();
    let mut w = World::new(8);
    bad_front.submit(OP_FLUSH_DISKCACHE, 0, 0, &[]).unwrap();
    bad_front.publish();
    bad_mem.store_index(Layout::REQ_PROD, 0x8000_0000);
    good_front.submit(OP_FLUSH_DISKCACHE, 0, 0, &[]).unwrap();
    good_front.publish();
    let r = bad.serve(&mut w, 8);
    assert!(r.cut_off.is_some());
    assert!(bad.cut_off().is_some());
    // Cut off for good: even sane indices are not served again.
    bad_mem.store_index(Layout::REQ_PROD, 1);
    assert_eq!(bad.serve(&mut w, 8).ok, 0);
    assert_eq!(good.serve(&mut w, 8).ok, 1);
    assert_eq!(good_front.complete().unwrap().unwrap().status, RSP_OKAY);
}

#[test]
fn frontend_refuses_a_hostile_backend() {
    let mut page = vec![0u8; PAGE];
    let mem = PlainMemory::new(&mut page);
    let mut front = Frontend::new(mem, 1).unwrap();
    let id = front.submit(OP_READ, 0, 0, &[seg(1, 0, 0)]).unwrap();
    front.publish();
    // A response to an id never sent.
    let mut rsp = [0u8; 16];
    let layout = ring_layout(1).unwrap();
    xenring::Entry::encode(&Response { id: id + 256, operation: OP_READ, status: 0 }, &mut rsp);
    mem.write(layout.slot(0), &rsp);
    mem.store_index(Layout::RSP_PROD, 1);
    assert_eq!(front.complete(), Err(FrontError::UnknownId(id + 256)));
    // More responses than requests.
    mem.store_index(Layout::RSP_PROD, 5);
    assert!(matches!(front.complete(), Err(FrontError::Ring(_))));
    assert_eq!(front.submit(OP_READ, 0, 0, &[seg(0, 0, 0); 12]), Err(SubmitError::TooManySegments));
}

/// One request of a random mixture.
#[derive(Clone, Debug)]
struct Op {
    operation: u8,
    sector: u64,
    segs: Vec<(u8, u8, u8)>,
}

fn op() -> impl Strategy<Value = Op> {
    (
        prop_oneof![4 => Just(OP_READ), 4 => Just(OP_WRITE), 1 => Just(OP_FLUSH_DISKCACHE), 1 => 0u8..=255],
        prop_oneof![0u64..40, any::<u64>()],
        proptest::collection::vec((0u8..6, 0u8..9, 0u8..9), 0..12),
    )
        .prop_map(|(operation, sector, segs)| Op { operation, sector, segs })
}

proptest! {
    /// Random requests (good and bad grants, ranges, segments, operations) with random
    /// budgets: every request is answered once with the status a simple model predicts,
    /// and the disk holds exactly what the model's accepted writes put there.
    #[test]
    fn random_mixture_against_model(ops in proptest::collection::vec(op(), 1..60), budgets in proptest::collection::vec(1u32..8, 1..20), read_only in any::<bool>()) {
        const SECTORS: u64 = 40;
        let mut page = vec![0u8; PAGE];
        let mem = PlainMemory::new(&mut page);
        let mut front = Frontend::new(mem, 1).unwrap();
        let mut back = Backend::new(mem, 1, Vbd { sectors: SECTORS, read_only }).unwrap();
        let mut w = World::new(SECTORS);
        // grefs 0-1 read-only, 2-3 writable, 4-5 not granted.
        for g in 0..4u32 {
            w.grants.insert(g, ((0..PAGE).map(|i| (i as u32 * 7 + g * 13) as u8).collect(), g < 2));
        }
        let mut model_disk = w.disk.clone();
        let mut expected = BTreeMap::new();
        let mut budgets = budgets.into_iter().cycle();
        for o in ops {
            let segs: Vec<Segment> = o.segs.iter().map(|&(g, f, l)| seg(g as u32, f, l)).collect();
            let known = matches!(o.operation, OP_READ | OP_WRITE | OP_FLUSH_DISKCACHE);
            let write = o.operation == OP_WRITE || (o.operation == OP_FLUSH_DISKCACHE && !segs.is_empty());
            let total: u64 = segs.iter().map(|s| s.last_sect as u64 + 1 - s.first_sect.min(s.last_sect) as u64).sum();
            let shape_ok = segs.iter().all(|s| s.first_sect <= s.last_sect && s.last_sect < 8)
                && (!segs.is_empty() || o.operation == OP_FLUSH_DISKCACHE)
                && (segs.is_empty() || o.sector.checked_add(total).is_some_and(|e| e <= SECTORS))
                && !(write && read_only);
            let grants_ok = segs.iter().all(|s| s.gref < 4 && (write || s.gref >= 2));
            let status = if !known { RSP_EOPNOTSUPP } else if shape_ok && grants_ok { RSP_OKAY } else { RSP_ERROR };
            if known && shape_ok && write {
                // Writes move whatever pieces have grants (a copy that fails fails alone).
                let mut at = o.sector as usize * 512;
                for s in &segs {
                    let len = (s.last_sect - s.first_sect + 1) as usize * 512;
                    if let Some((p, _)) = w.grants.get(&s.gref) {
                        let off = s.first_sect as usize * 512;
                        model_disk[at..at + len].copy_from_slice(&p[off..off + len]);
                    }
                    at += len;
                }
            }
            let id = match front.submit(o.operation, 0, o.sector, &segs) {
                Ok(id) => id,
                Err(SubmitError::Full) => {
                    while back.serve(&mut w, budgets.next().unwrap()).more {}
                    while let Some(c) = front.complete().unwrap() {
                        prop_assert_eq!(Some(c.status), expected.remove(&c.id));
                    }
                    front.submit(o.operation, 0, o.sector, &segs).unwrap()
                }
                Err(e) => panic!("{e:?}"),
            };
            expected.insert(id, status);
            front.publish();
            back.serve(&mut w, budgets.next().unwrap());
            prop_assert!(back.cut_off().is_none());
        }
        while back.serve(&mut w, budgets.next().unwrap()).more {}
        while let Some(c) = front.complete().unwrap() {
            prop_assert_eq!(Some(c.status), expected.remove(&c.id));
        }
        prop_assert!(expected.is_empty(), "unanswered: {:?}", expected);
        prop_assert!(w.disk == model_disk, "disk differs from the model");
    }
}
