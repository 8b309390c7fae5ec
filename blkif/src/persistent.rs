//! Persistent grants (`io/blkif.h`, `feature-persistent`) from the backend's side: the
//! grants of one frontend that the backend keeps mapped for the device (domain 0:
//! `GNTMAP_device_map`, writable) across requests, so that a disk can move a request's data
//! straight into or out of the frontend's pages with no hypercall per request.
//!
//! A frontend that writes `feature-persistent = 1` promises to reuse the same grants for
//! all its requests and lets the backend map them writable even for writes to the disk.
//! [`Persistent`] is the table of one ring's mapped grants (by reference: the frame's bus
//! address and the map's handle) with a bound on its size ([`limit_for`] the ring); a request
//! whose grants are all in it becomes a list of [`Extent`]s (bus address, length) for the
//! disk ([`Persistent::extents`]). Each entry counts the disk requests in flight that use
//! it, so that closing the ring unmaps only what no device access can still reach
//! ([`Persistent::close`], then [`Persistent::release`] as the rest complete).
//!
//! Nothing here maps or unmaps anything: the caller makes the hypercalls (maps of the
//! grants [`Persistent::missing`] names, unmaps of what `close`/`release` hand back), and
//! the hypervisor checks every grant (granter, grantee, access) when it is mapped. A
//! frontend that names more distinct grants than the limit, or grants that cannot be
//! mapped, is served otherwise (domain 0: grant copies through its own buffers); the table
//! never grows past its limit.

use alloc::vec::Vec;

use crate::check::Work;
use crate::wire::MAX_SEGMENTS;

/// Grants kept mapped per ring at most for a one-page ring: a full ring of requests of 11
/// segments (`RING_SIZE * BLKIF_MAX_SEGMENTS_PER_REQUEST`, what `io/blkif.h` calls ideal).
/// With many rings domain 0's maptrack (2048 entries) may fill first: the maps then fail
/// and those requests are copied.
pub const DEFAULT_LIMIT: usize = 32 * MAX_SEGMENTS;
/// The most grants kept mapped for one ring, however large.
pub const MAX_LIMIT: usize = 1024;

/// The limit for a ring of `entries` requests: all of them with 11 segments, at most
/// [`MAX_LIMIT`].
pub const fn limit_for(entries: usize) -> usize {
    let all = entries * MAX_SEGMENTS;
    if all < MAX_LIMIT {
        all
    } else {
        MAX_LIMIT
    }
}

/// A piece of a request's data as the device sees it: `len` bytes at bus (machine)
/// address `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub addr: u64,
    pub len: u32,
}

/// One mapped grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub gref: u32,
    /// The frame's bus address (the map's `dev_bus_addr`).
    pub bus: u64,
    /// The map's handle (for the unmap).
    pub handle: u32,
    /// Disk requests in flight that reach this frame.
    users: u32,
}

impl Mapped {
    /// A grant mapped at `bus` with `handle`, used by no request.
    pub const fn new(gref: u32, bus: u64, handle: u32) -> Mapped {
        Mapped { gref, bus, handle, users: 0 }
    }
}

/// Why a grant was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddError {
    /// The table is at its limit.
    Full,
    /// The reference is in the table already.
    Present,
    /// The ring is closing: nothing new is mapped.
    Closing,
    /// The bus address is not a page's.
    Unaligned,
}

/// One ring's persistently mapped grants (see the module documentation).
#[derive(Debug)]
pub struct Persistent {
    /// Sorted by reference.
    entries: Vec<Mapped>,
    limit: usize,
    closing: bool,
}

impl Persistent {
    /// An empty table that holds at most `limit` grants.
    pub const fn new(limit: usize) -> Self {
        Self { entries: Vec::new(), limit, closing: false }
    }

    /// Grants mapped.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Grants that may still be added.
    pub fn room(&self) -> usize {
        if self.closing {
            0
        } else {
            self.limit.saturating_sub(self.entries.len())
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    fn find(&self, gref: u32) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&gref, |m| m.gref)
    }

    /// As [`find`](Self::find), looking first just past `after` (the previous piece's
    /// entry): a frontend's pages are mostly granted in order, so that a request's grants
    /// usually follow each other in the table and the search is skipped.
    fn find_after(&self, gref: u32, after: Option<usize>) -> Result<usize, usize> {
        if let Some(next) = after.map(|i| i + 1) {
            if self.entries.get(next).is_some_and(|m| m.gref == gref) {
                return Ok(next);
            }
        }
        self.find(gref)
    }

    /// The entry of `gref`, if mapped.
    pub fn get(&self, gref: u32) -> Option<&Mapped> {
        self.find(gref).ok().map(|i| &self.entries[i])
    }

    /// The distinct references of `work` not in the table, in segment order; `None` when
    /// there are more than there is room for (or the ring is closing): the request is to
    /// be served some other way.
    pub fn missing(&self, work: &Work) -> Option<arrayvec::ArrayVec<u32, MAX_SEGMENTS>> {
        let mut out = arrayvec::ArrayVec::new();
        for chunk in work.chunks() {
            if self.find(chunk.gref).is_err() && !out.contains(&chunk.gref) {
                out.push(chunk.gref);
            }
        }
        (out.len() <= self.room()).then_some(out)
    }

    /// Adds a grant the caller just mapped.
    pub fn add(&mut self, gref: u32, bus: u64, handle: u32) -> Result<(), AddError> {
        if self.closing {
            return Err(AddError::Closing);
        }
        if !bus.is_multiple_of(4096) {
            return Err(AddError::Unaligned);
        }
        if self.entries.len() >= self.limit {
            return Err(AddError::Full);
        }
        match self.find(gref) {
            Ok(_) => Err(AddError::Present),
            Err(at) => {
                self.entries.insert(at, Mapped::new(gref, bus, handle));
                Ok(())
            }
        }
    }

    /// Appends the extents of `work`'s data to `out` (in disk order; a piece that continues
    /// the previous one in bus memory extends it) and counts `work` as a user of each of its
    /// grants. `false`, with nothing appended or counted, when a grant is not in the table
    /// or `out` has no room.
    pub fn extents<const N: usize>(&mut self, work: &Work, out: &mut arrayvec::ArrayVec<Extent, N>) -> bool {
        let start = out.len();
        // One lookup per piece (each a binary search: this runs for every request).
        let mut found = arrayvec::ArrayVec::<usize, MAX_SEGMENTS>::new();
        for chunk in work.chunks() {
            let Ok(i) = self.find_after(chunk.gref, found.last().copied()) else {
                out.truncate(start);
                return false;
            };
            found.push(i);
            let addr = self.entries[i].bus + u64::from(chunk.page_offset);
            let len = u32::from(chunk.len);
            let extends = out.len() > start;
            match out.last_mut() {
                Some(last) if extends && last.addr + u64::from(last.len) == addr => last.len += len,
                _ => {
                    if out.try_push(Extent { addr, len }).is_err() {
                        out.truncate(start);
                        return false;
                    }
                }
            }
        }
        for i in found {
            self.entries[i].users += 1;
        }
        true
    }

    /// Ends the use [`extents`](Self::extents) counted for `work` (its disk request
    /// completed) and appends to `out` the entries that may now be unmapped (only once the
    /// ring is closing and no disk request reaches them).
    pub fn release(&mut self, work: &Work, out: &mut Vec<Mapped>) {
        let mut last = None;
        for chunk in work.chunks() {
            if let Ok(i) = self.find_after(chunk.gref, last) {
                let e = &mut self.entries[i];
                e.users = e.users.saturating_sub(1);
                last = Some(i);
            }
        }
        if self.closing {
            self.take_idle(out);
        }
    }

    /// The ring is going: nothing new is added, and the entries no disk request reaches are
    /// removed and appended to `out` for the caller to unmap; the rest follow through
    /// [`release`](Self::release).
    pub fn close(&mut self, out: &mut Vec<Mapped>) {
        self.closing = true;
        self.take_idle(out);
    }

    fn take_idle(&mut self, out: &mut Vec<Mapped>) {
        self.entries.retain(|e| {
            if e.users == 0 {
                out.push(*e);
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{check_request, Vbd};
    use crate::wire::{Request, Segment, OP_READ, OP_WRITE};

    fn work(operation: u8, sector: u64, segs: &[Segment]) -> Work {
        let mut r = Request { operation, nr_segments: segs.len() as u8, id: 1, sector_number: sector, ..Default::default() };
        r.seg[..segs.len()].copy_from_slice(segs);
        check_request(&r, &Vbd { sectors: 1 << 20, read_only: false }).unwrap()
    }

    fn page(gref: u32) -> Segment {
        Segment { gref, first_sect: 0, last_sect: 7 }
    }

    #[test]
    fn a_request_becomes_extents_once_its_grants_are_mapped() {
        let mut p = Persistent::new(8);
        let w = work(OP_READ, 0, &[page(5), Segment { gref: 6, first_sect: 2, last_sect: 3 }, page(5)]);
        assert_eq!(p.missing(&w).unwrap().as_slice(), &[5, 6]);
        let mut out = arrayvec::ArrayVec::<Extent, 16>::new();
        assert!(!p.extents(&w, &mut out), "unmapped grants give no extents");
        assert!(out.is_empty());
        p.add(5, 0x10_000, 1).unwrap();
        p.add(6, 0x30_000, 2).unwrap();
        assert_eq!(p.add(6, 0x30_000, 2), Err(AddError::Present));
        assert_eq!(p.add(7, 0x30_001, 3), Err(AddError::Unaligned));
        assert!(p.missing(&w).unwrap().is_empty());
        assert!(p.extents(&w, &mut out));
        assert_eq!(
            out.as_slice(),
            &[Extent { addr: 0x10_000, len: 4096 }, Extent { addr: 0x30_400, len: 1024 }, Extent { addr: 0x10_000, len: 4096 }]
        );
    }

    #[test]
    fn contiguous_pieces_share_an_extent_and_a_full_list_takes_nothing() {
        let mut p = Persistent::new(8);
        p.add(1, 0x5000, 1).unwrap();
        p.add(2, 0x6000, 2).unwrap();
        let w = work(OP_WRITE, 8, &[page(1), page(2)]);
        let mut out = arrayvec::ArrayVec::<Extent, 2>::new();
        assert!(p.extents(&w, &mut out));
        assert_eq!(out.as_slice(), &[Extent { addr: 0x5000, len: 8192 }]);
        // Out of room: nothing appended, nothing counted.
        let apart = work(OP_READ, 8, &[page(2), page(1)]);
        let mut small = arrayvec::ArrayVec::<Extent, 1>::new();
        assert!(!p.extents(&apart, &mut small));
        assert!(small.is_empty());
        let mut freed = Vec::new();
        p.release(&w, &mut freed);
        p.close(&mut freed);
        assert_eq!(freed.len(), 2, "only `w` used them");
    }

    #[test]
    fn grants_in_order_out_of_order_and_repeated_find_the_same_entries() {
        let mut p = Persistent::new(32);
        // Bus addresses apart, so that no two pieces share an extent.
        for g in [10u32, 11, 12, 13, 15, 19, 30] {
            p.add(g, 0x100_000 * u64::from(g), g).unwrap();
        }
        let order = [page(10), page(11), page(12), page(19), page(11), page(13), page(30), page(10), page(15), page(12)];
        let w = work(OP_READ, 0, &order);
        let mut out = arrayvec::ArrayVec::<Extent, 16>::new();
        assert!(p.extents(&w, &mut out));
        let want: Vec<u64> = order.iter().map(|s| 0x100_000 * u64::from(s.gref)).collect();
        assert_eq!(out.iter().map(|e| e.addr).collect::<Vec<_>>(), want);
        // A gap: 14 is not mapped, whatever precedes it.
        assert!(!p.extents(&work(OP_READ, 0, &[page(13), page(14)]), &mut out));
        // Released as counted: closing then frees only 10, 11 and 12 once b is released.
        let b = work(OP_READ, 0, &[page(13), page(15), page(19), page(30)]);
        assert!(p.extents(&b, &mut out));
        let mut freed = Vec::new();
        p.release(&w, &mut freed);
        p.close(&mut freed);
        let mut grefs: Vec<u32> = freed.iter().map(|m| m.gref).collect();
        grefs.sort_unstable();
        assert_eq!(grefs, [10, 11, 12]);
        freed.clear();
        p.release(&b, &mut freed);
        assert!(p.is_empty());
    }

    #[test]
    fn the_limit_follows_the_ring_up_to_a_bound() {
        assert_eq!(limit_for(32), DEFAULT_LIMIT);
        assert_eq!(limit_for(64), 704);
        assert_eq!(limit_for(128), MAX_LIMIT);
    }

    #[test]
    fn the_limit_holds_and_a_request_past_it_is_left_to_another_path() {
        let mut p = Persistent::new(2);
        p.add(1, 0x1000, 1).unwrap();
        assert_eq!(p.room(), 1);
        let w = work(OP_READ, 0, &[page(2), page(3)]);
        assert_eq!(p.missing(&w), None);
        p.add(2, 0x2000, 2).unwrap();
        assert_eq!(p.add(3, 0x3000, 3), Err(AddError::Full));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn closing_unmaps_only_what_no_request_in_flight_reaches() {
        let mut p = Persistent::new(8);
        for g in 0..4 {
            p.add(g, 0x1000 * u64::from(g + 1), g).unwrap();
        }
        let a = work(OP_READ, 0, &[page(0), page(1)]);
        let b = work(OP_READ, 16, &[page(1)]);
        let mut out = arrayvec::ArrayVec::<Extent, 16>::new();
        assert!(p.extents(&a, &mut out));
        assert!(p.extents(&b, &mut out));
        let mut freed = Vec::new();
        p.close(&mut freed);
        let mut grefs: Vec<u32> = freed.iter().map(|m| m.gref).collect();
        grefs.sort_unstable();
        assert_eq!(grefs, [2, 3]);
        assert_eq!(p.room(), 0);
        assert_eq!(p.add(9, 0x9000, 9), Err(AddError::Closing));
        assert_eq!(p.missing(&a).map(|m| m.len()), Some(0), "a request on mapped grants still works out");
        freed.clear();
        p.release(&a, &mut freed);
        assert_eq!(freed.iter().map(|m| m.gref).collect::<Vec<_>>(), [0], "grant 1 is still under b");
        freed.clear();
        p.release(&b, &mut freed);
        assert_eq!(freed.iter().map(|m| m.gref).collect::<Vec<_>>(), [1]);
        assert!(p.is_empty());
    }
}
