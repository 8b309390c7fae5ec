//! The virtio disk as a source of virtual block devices: [`Server`] serves blkif rings
//! ([`blkif::backend::Backend`]'s asynchronous half) from slices of one [`SectorDisk`],
//! each ring's VBD a [`Slice`] (a range of the disk; the request check keeps every
//! request inside the VBD, so no domain ever reaches another's slice).
//!
//! A request takes a disk slot: a write's data is grant-copied from the frontend's pages
//! into the slot's DMA buffer and then submitted; a read is submitted and, when the disk
//! completes it, grant-copied from the buffer into the frontend's pages
//! (`blkif::copies::plan_buffer_at`, the buffer's frames under `DOMID_SELF`). The device's
//! DMA only ever reaches domain 0's pool, and domain 0 never maps a frontend's page.
//! Requests complete in whatever order the disk finishes them, and are answered so.
//!
//! Reads of consecutive sectors that follow each other on one ring (a 64 KiB read is two
//! ring requests: one carries at most 44 KiB) share one disk request and one slot (at
//! most [`MERGE`] of them, [`CHUNK`] bytes); a request taken to see whether it joins and
//! that does not is held for the next free slot. The reads finished in one round are
//! copied out by one `GNTTABOP_copy` call, each answered by its own descriptors' status.
//!
//! A flush (with or without data) is answered once the disk has flushed with nothing in
//! flight: while one waits, no new request is started, so that the disk becomes quiet;
//! the flush itself is `virtio-drivers`' blocking one (it spins for one completion).
//!
//! Who calls it: domain 0's block backend loop (`attack::blk`), in bounded slices from
//! its event loop: [`Server::complete`] after the disk's interrupt, [`Server::take`] per
//! ring woken (at most `budget` requests, and at most one disk request per free slot), [`Server::flush`]
//! when the disk is quiet. It never waits for the disk.

use alloc::vec::Vec;

use blkif::backend::Backend;
use blkif::check::Work;
use arrayvec::ArrayVec;
use blkif::copies::{plan_buffer, plan_buffer_at, DiskFrames, MAX_COPIES};
use blkif::wire::{Response, SECTOR_BYTES};
use guest_rt::abi::grant_table::{GnttabCopy, GnttabOp};
use guest_rt::abi::ids::{DomId, EvtchnPort};
use guest_rt::{evtchn, grants};
use xenring::RawMemory;

use super::{Op, SectorDisk, CHUNK, SLOTS};

/// The most ring requests one disk request serves: reads of consecutive sectors, taken
/// off one ring one after the other, are read by one disk request into one slot's buffer
/// (a 64 KiB read comes as two ring requests: one carries at most 44 KiB).
pub const MERGE: usize = 4;

/// A VBD's range of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// Its first sector on the disk.
    pub start: u64,
    /// Its size in sectors.
    pub sectors: u64,
    pub read_only: bool,
}

/// `count` equal slices of a disk of `disk_sectors` sectors (page-aligned), or `None` when
/// the disk is too small for that many.
pub fn slices(disk_sectors: u64, count: usize, read_only: bool) -> Option<Vec<Slice>> {
    let each = (disk_sectors / count.max(1) as u64) & !7;
    (each > 0).then(|| (0..count as u64).map(|i| Slice { start: i * each, sectors: each, read_only }).collect())
}

/// One connected ring as the server needs it.
pub struct VbdRing<'a> {
    pub backend: &'a mut Backend<RawMemory>,
    pub frontend: DomId,
    pub port: EvtchnPort,
    pub slice: Slice,
}

/// The caller's rings, by key (`None` once the ring was disconnected: answers for it are
/// dropped).
pub trait Rings {
    fn ring(&mut self, key: usize) -> Option<VbdRing<'_>>;
}

/// What the server did so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub requests: u64,
    pub grant_copies: u64,
    pub copy_calls: u64,
    pub flushes: u64,
    pub interrupts: u64,
    /// Most disk requests in flight at once.
    pub max_in_flight: usize,
    /// Disk requests started (a merged one serves several ring requests).
    pub disk_requests: u64,
    /// TSC cycles in the grant-copy hypercalls.
    pub copy_cycles: u64,
}

struct InFlight {
    key: usize,
    frontend: DomId,
    /// The ring requests the disk request serves: one, or reads of consecutive sectors
    /// (the first at the buffer's first byte).
    works: ArrayVec<Work, MERGE>,
}

/// Bytes `work` moves.
fn bytes(work: &Work) -> u64 {
    work.chunks().map(|c| u64::from(c.len)).sum()
}

/// Whether `next` (taken off the same ring right after) may join the read `first..end`
/// (sectors) in one disk request of at most [`CHUNK`] bytes.
fn joins(works: &[Work], next: &Work) -> bool {
    let Some(first) = works.first() else { return false };
    let end = first.sector_number + works.iter().map(bytes).sum::<u64>() / SECTOR_BYTES;
    let readable = |w: &Work| !w.write && !w.flush && w.segments() > 0;
    works.len() < MERGE
        && readable(first)
        && readable(next)
        && next.sector_number == end
        && (end - first.sector_number) * SECTOR_BYTES + bytes(next) <= CHUNK as u64
}

fn rdtsc() -> u64 {
    // SAFETY: reads the time-stamp counter; no memory is touched.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The virtio disk serving VBDs (see the module documentation).
pub struct Server<D> {
    disk: D,
    in_flight: [Option<InFlight>; SLOTS],
    /// Flushes waiting for the disk to be quiet: (ring key, the request).
    flushes: Vec<(usize, Work)>,
    /// A request taken off a ring (to see whether it joins a read) that did not join and
    /// waits for the next free slot: (ring key, the request).
    held: Vec<(usize, Work)>,
    /// The grant-copy descriptors of one round's finished reads (kept for its capacity).
    ops: Vec<GnttabCopy>,
    touched: Vec<usize>,
    pub stats: Stats,
}

struct Buffer<'a, D> {
    disk: &'a D,
    slot: usize,
}

impl<D: SectorDisk> DiskFrames for Buffer<'_, D> {
    fn frame(&self, index: u64) -> Option<u64> {
        self.disk.buffer_frame(self.slot, usize::try_from(index).ok()?)
    }
}

impl<D: SectorDisk> Server<D> {
    pub fn new(disk: D) -> Self {
        Self { disk, in_flight: Default::default(), flushes: Vec::new(), held: Vec::new(), ops: Vec::new(), touched: Vec::new(), stats: Stats::default() }
    }

    /// The disk (for domain 0's own use while no ring is served).
    pub fn disk(&mut self) -> &mut D {
        &mut self.disk
    }

    /// `GNTTABOP_copy` over `ops` (timed); false when the call itself failed (each
    /// descriptor's status says the rest).
    fn copy(&mut self, ops: &mut [GnttabCopy]) -> bool {
        if ops.is_empty() {
            return true;
        }
        let begin = rdtsc();
        // SAFETY: `ops` are ours for the call; every page they name is domain 0's own DMA
        // buffer or a frontend's grant, which the hypervisor checks.
        let called = unsafe { grants::grant_table_op(GnttabOp::Copy, ops.as_mut_ptr(), ops.len() as u32) };
        self.stats.copy_cycles += rdtsc().wrapping_sub(begin);
        self.stats.grant_copies += ops.len() as u64;
        self.stats.copy_calls += 1;
        called.is_ok()
    }

    /// A write's data from the frontend's pages into slot `slot`'s buffer.
    fn copy_work(&mut self, slot: usize, frontend: DomId, work: &Work) -> bool {
        let mut ops = [GnttabCopy::default(); MAX_COPIES];
        let Ok(n) = plan_buffer(work, frontend, &Buffer { disk: &self.disk, slot }, &mut ops) else { return false };
        self.copy(&mut ops[..n]) && ops[..n].iter().all(|op| grants::status(op.status).is_ok())
    }

    fn answer(&mut self, rings: &mut impl Rings, key: usize, rsp: &Response) {
        if let Some(ring) = rings.ring(key) {
            ring.backend.answer(rsp);
            if !self.touched.contains(&key) {
                self.touched.push(key);
            }
        }
    }

    /// Publishes the answers written since the last call, notifying the frontends that
    /// asked.
    pub fn publish(&mut self, rings: &mut impl Rings) {
        // A held request of a ring since disconnected is dropped with it.
        self.held.retain(|(key, _)| rings.ring(*key).is_some());
        for key in core::mem::take(&mut self.touched) {
            if let Some(ring) = rings.ring(key) {
                if ring.backend.publish() {
                    let _ = evtchn::send(ring.port);
                }
            }
        }
    }

    /// Acknowledges the disk's interrupt and answers every request it finished: the data
    /// of every finished read copied into the frontends' pages by one `GNTTABOP_copy` call
    /// for all of them; a write with a flush waits for the flush.
    pub fn complete(&mut self, rings: &mut impl Rings) {
        if self.disk.poll() {
            self.stats.interrupts += 1;
        }
        let mut finished: ArrayVec<(usize, InFlight, bool), SLOTS> = ArrayVec::new();
        while let Some((slot, result)) = self.disk.complete() {
            let Some(done) = self.in_flight.get_mut(slot).and_then(Option::take) else { continue };
            // At most one completion per slot in flight: there is room.
            finished.push((slot, done, result.is_ok()));
        }
        if finished.is_empty() {
            return;
        }
        // Plan every read's copies: (where its descriptors start and end in `ops`), or
        // `None` when it could not be planned.
        let mut ops = core::mem::take(&mut self.ops);
        ops.clear();
        let mut ranges: ArrayVec<Option<(usize, usize)>, { SLOTS * MERGE }> = ArrayVec::new();
        for (slot, done, ok) in &finished {
            let first = done.works[0].sector_number;
            let live = rings.ring(done.key).is_some();
            for work in &done.works {
                let mut planned = [GnttabCopy::default(); MAX_COPIES];
                let range = match plan_buffer_at(work, first, done.frontend, &Buffer { disk: &self.disk, slot: *slot }, &mut planned) {
                    Ok(n) if *ok && live && !work.write => {
                        ops.extend_from_slice(&planned[..n]);
                        Some((ops.len() - n, ops.len()))
                    }
                    _ => None,
                };
                ranges.push(range);
            }
        }
        let called = self.copy(&mut ops);
        let mut range = ranges.into_iter();
        for (_, done, ok) in finished {
            let live = rings.ring(done.key).is_some();
            for work in done.works {
                let planned = range.next().flatten();
                if !work.write && !live {
                    continue;
                }
                let moved = match planned {
                    Some((a, b)) => called && ops[a..b].iter().all(|op| grants::status(op.status).is_ok()),
                    None => work.write,
                };
                if ok && moved && work.flush {
                    self.flushes.push((done.key, work));
                } else {
                    self.answer(rings, done.key, &work.response(ok && moved));
                }
            }
        }
        self.ops = ops;
    }

    /// Whether a disk slot is free and no flush waits (else the disk's interrupt says when
    /// to take more: no need to come back before it).
    pub fn can_start(&self) -> bool {
        self.flushes.is_empty() && self.in_flight.iter().any(Option::is_none)
    }

    /// Takes at most `budget` requests off ring `key` and starts them, as long as a disk
    /// slot is free and no flush waits; reads of consecutive sectors that follow each
    /// other on the ring share one disk request (at most [`MERGE`], [`CHUNK`] bytes).
    /// Whether requests are left on the ring (or one taken waits for a slot). A full ring
    /// may take every free slot: the caller takes from its rings in turn, a different one
    /// first each round.
    pub fn take(&mut self, rings: &mut impl Rings, key: usize, budget: u32) -> bool {
        let mut taken = 0;
        loop {
            let Some(free) = self.in_flight.iter().position(Option::is_none) else { return true };
            if !self.flushes.is_empty() {
                return true;
            }
            let held = self.held.iter().position(|(k, _)| *k == key).map(|i| self.held.swap_remove(i).1);
            let Some(ring) = rings.ring(key) else { return false };
            let (frontend, slice) = (ring.frontend, ring.slice);
            let work = match held {
                Some(work) => work,
                None => {
                    if taken == budget {
                        return true;
                    }
                    let Some(next) = ring.backend.take() else { return ring.backend.more() };
                    taken += 1;
                    self.stats.requests += 1;
                    match next {
                        Ok(work) => work,
                        Err(refusal) => {
                            self.answer(rings, key, &refusal);
                            continue;
                        }
                    }
                }
            };
            if work.segments() == 0 {
                self.flushes.push((key, work));
                continue;
            }
            if work.write && !self.copy_work(free, frontend, &work) {
                self.answer(rings, key, &work.response(false));
                continue;
            }
            let mut works = ArrayVec::<Work, MERGE>::new();
            works.push(work);
            while !works[0].write && !works[0].flush && works.len() < MERGE && taken < budget {
                let Some(next) = rings.ring(key).and_then(|ring| ring.backend.take()) else { break };
                taken += 1;
                self.stats.requests += 1;
                match next {
                    Ok(next) if joins(&works, &next) => works.push(next),
                    Ok(next) => {
                        self.held.push((key, next));
                        break;
                    }
                    Err(refusal) => self.answer(rings, key, &refusal),
                }
            }
            let op = if works[0].write { Op::Write } else { Op::Read };
            let bytes: u64 = works.iter().map(bytes).sum();
            // The check kept each request inside the slice, and joined ones are
            // consecutive; the disk checks the end again.
            let sector = slice.start + works[0].sector_number;
            match self.disk.submit(free, op, sector, (bytes / SECTOR_BYTES) as usize) {
                Ok(()) => {
                    self.in_flight[free] = Some(InFlight { key, frontend, works });
                    self.stats.disk_requests += 1;
                    let n = self.in_flight.iter().filter(|s| s.is_some()).count();
                    self.stats.max_in_flight = self.stats.max_in_flight.max(n);
                }
                Err(_) => {
                    for work in &works {
                        self.answer(rings, key, &work.response(false));
                    }
                }
            }
        }
    }

    /// When flushes wait and nothing is in flight: flushes the disk and answers them.
    pub fn flush(&mut self, rings: &mut impl Rings) {
        if self.flushes.is_empty() || self.in_flight.iter().any(Option::is_some) {
            return;
        }
        let ok = self.disk.flush().is_ok();
        self.stats.flushes += 1;
        for (key, work) in core::mem::take(&mut self.flushes) {
            self.answer(rings, key, &work.response(ok));
        }
    }
}
