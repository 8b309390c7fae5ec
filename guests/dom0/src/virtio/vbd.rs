//! The virtio disk as a source of virtual block devices: [`Server`] serves blkif rings
//! ([`blkif::backend::Backend`]'s asynchronous half) from slices of one [`SectorDisk`],
//! each ring's VBD a [`Slice`] (a range of the disk; the request check keeps every
//! request inside the VBD, so no domain ever reaches another's slice).
//!
//! Two ways to move a request's data:
//! - Zero copy, for a frontend that offered `feature-persistent` (it reuses the same
//!   grants for all its requests): domain 0 maps each grant once for the device
//!   (`GNTMAP_device_map`, writable, batched per request; the hypervisor checks granter,
//!   grantee and access and pins the frame), keeps it mapped for the ring's life
//!   ([`blkif::persistent::Persistent`], at most 11 grants per request the ring holds,
//!   [`blkif::persistent::limit_for`]), and
//!   the disk reads into or writes from the frontend's pages directly (one descriptor per
//!   piece, [`Extent`]s at the frames' bus addresses). Domain 0 never maps a frontend's
//!   page into its own address space; the device reaches it by DMA, as Xen's blkback does
//!   with real devices. A closed ring's grants are unmapped only once no disk request
//!   reaches them (a frontend that dies with requests in flight keeps its frames until
//!   the device is done; the hypervisor frees them after domain 0's unmap).
//! - Grant copies through domain 0's own bounce buffers ([`Buffers`]), for every other
//!   frontend (GRUB's, Linux's without persistent grants) and for a request whose grants
//!   could not all be mapped (the table is full, or a grant is not what a map needs: the
//!   copy then fails the same way and the request is answered with an error): a write's
//!   data is grant-copied from the frontend's pages into a free buffer and then written; a
//!   read is read into one and, when the disk completes it, grant-copied into the
//!   frontend's pages (`blkif::copies::plan_buffer_at`, the buffer's frames under
//!   `DOMID_SELF`); the reads finished in one round are copied out by one `GNTTABOP_copy`
//!   call.
//!
//! Requests complete in whatever order the disk finishes them, and are answered so. Reads
//! of consecutive sectors that follow each other on one ring (a 64 KiB read is two ring
//! requests: one carries at most 44 KiB) share one disk request (at most [`MERGE`] of
//! them, [`CHUNK`] bytes); a request taken to see whether it joins and that does not is
//! held for the next round.
//!
//! A flush (with or without data) is answered once the disk has flushed with nothing in
//! flight: while one waits, no new request is started, so that the disk becomes quiet;
//! the flush itself is one more disk request.
//!
//! Who calls it: domain 0's block backend loop (`attack::blk`), in bounded slices from
//! its event loop: [`Server::collect`] first (the disk's finished requests noted, their
//! slots free), [`Server::take`] per ring woken (at most `budget` requests, and at most
//! the disk's depth in flight; the disk is notified of each as it starts), and only then
//! [`Server::answer_collected`] (so that the disk, refilled, works while the answers are
//! written), [`Server::flush`] when the disk is quiet,
//! [`Server::publish`], [`Server::drain`] at the end. It never waits for the disk except
//! in `drain`.

use alloc::vec::Vec;

use arrayvec::ArrayVec;
use blkif::backend::Backend;
use blkif::check::Work;
use blkif::copies::{plan_buffer, plan_buffer_at, DiskFrames, MAX_COPIES};
use blkif::persistent::{limit_for, Mapped, Persistent};
use blkif::wire::{Response, MAX_SEGMENTS, SECTOR_BYTES};
use guest_rt::abi::grant_table::{GnttabCopy, GnttabMapGrantRef, GnttabOp, GnttabUnmapGrantRef, GNTMAP_DEVICE_MAP};
use guest_rt::abi::ids::{DomId, EvtchnPort};
use guest_rt::{evtchn, grants, println};
use xenring::RawMemory;

use super::{rdtsc, Buffers, Extent, Op, SectorDisk, Tag, CHUNK, DEPTH, MAX_SEGMENTS as DISK_SEGMENTS, SLOTS};

/// The most ring requests one disk request serves: reads of consecutive sectors, taken
/// off one ring one after the other, are read by one disk request (a 64 KiB read comes as
/// two ring requests: one carries at most 44 KiB).
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
    /// The frontend offered `feature-persistent`: its grants may be kept mapped.
    pub persistent: bool,
    /// Requests the ring holds (its grants kept mapped: [`blkif::persistent::limit_for`]).
    pub entries: usize,
}

/// The caller's rings, by key (`None` once the ring was disconnected: answers for it are
/// dropped, its grants unmapped once the disk no longer reaches them).
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
    /// Of them, the ones that moved data straight to or from a frontend's pages.
    pub zero_copy: u64,
    /// TSC cycles in the grant-copy hypercalls.
    pub copy_cycles: u64,
    /// Grants mapped for the device and unmapped again, and the cycles of both calls.
    pub maps: u64,
    pub unmaps: u64,
    pub map_cycles: u64,
    /// TSC cycles in [`Server::complete`], [`Server::take`] and [`Server::publish`] (each
    /// including the hypercalls and device accesses it makes).
    pub complete_cycles: u64,
    pub take_cycles: u64,
    pub publish_cycles: u64,
    /// TSC cycles notifying the disk.
    pub kick_cycles: u64,
    /// Times a ring had no request left while the disk could take more.
    pub ring_dry: u64,
    /// Events sent to frontends, and their cycles.
    pub sends: u64,
    pub send_cycles: u64,
    /// TSC cycles with some disk request in flight, and their sum weighted by how many
    /// (their ratio: the disk's average depth while busy).
    pub busy_cycles: u64,
    pub depth_cycles: u64,
}

/// How a disk request's data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Through bounce buffer `slot` and grant copies.
    Buffer(usize),
    /// Straight to or from the frontend's persistently mapped pages.
    Granted,
    /// A flush of the disk (answers the flushes that waited for it).
    Flush,
}

/// An [`InFlight`]'s tag once its disk request completed (until it is removed).
const DONE: Tag = usize::MAX;
/// An [`InFlight`]'s tag while its works are gathered, before the disk takes it.
const GATHERING: Tag = usize::MAX - 1;

struct InFlight {
    tag: Tag,
    key: usize,
    frontend: DomId,
    /// The ring requests the disk request serves: one, or reads of consecutive sectors
    /// (the first at the buffer's first byte).
    works: ArrayVec<Work, MERGE>,
    path: Path,
}

/// One ring's persistently mapped grants.
struct Grants {
    key: usize,
    table: Persistent,
}

/// Bytes `work` moves.
fn bytes(work: &Work) -> u64 {
    work.chunks().map(|c| u64::from(c.len)).sum()
}

/// Whether `next` (taken off the same ring right after) may join the read `works` (sectors
/// from the first's on) in one disk request of at most [`CHUNK`] bytes.
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


/// The virtio disk serving VBDs (see the module documentation).
pub struct Server<D> {
    disk: D,
    buffers: Buffers,
    /// Which bounce buffers a disk request uses.
    buffer_busy: [bool; SLOTS],
    /// The disk requests in flight (at most [`DEPTH`]; on the heap, as every list here:
    /// domain 0's stack is small).
    in_flight: Vec<InFlight>,
    /// Entries of `in_flight` the disk finished (index, whether it succeeded), noted by
    /// [`Server::collect`] and not yet answered.
    finished: Vec<(usize, bool)>,
    /// Where one round's finished reads' copies lie (kept for its capacity).
    ranges: Vec<Option<(usize, usize)>>,
    /// Flushes waiting for the disk to be quiet: (ring key, the request).
    flushes: Vec<(usize, Work)>,
    /// The flushes the flush in flight answers.
    flushing: Vec<(usize, Work)>,
    /// A request taken off a ring (to see whether it joins a read, or with no bounce
    /// buffer free) that waits for the next round: (ring key, the request).
    held: Vec<(usize, Work)>,
    /// A held request waits for a bounce buffer.
    wants_buffer: bool,
    grants: Vec<Grants>,
    /// Grants to unmap (their ring closed and no disk request reaches them).
    unmaps: Vec<Mapped>,
    /// The grant-copy descriptors of one round's finished reads (kept for its capacity).
    ops: Vec<GnttabCopy>,
    touched: Vec<usize>,
    /// When the number of disk requests in flight last changed (TSC).
    depth_at: u64,
    pub stats: Stats,
}

struct Buffer<'a> {
    buffers: &'a Buffers,
    slot: usize,
}

impl DiskFrames for Buffer<'_> {
    fn frame(&self, index: u64) -> Option<u64> {
        self.buffers.frame(self.slot, usize::try_from(index).ok()?)
    }
}

impl<D: SectorDisk> Server<D> {
    /// The server, on the heap (it is large for domain 0's stack).
    pub fn new(disk: D, buffers: Buffers) -> alloc::boxed::Box<Self> {
        alloc::boxed::Box::new(Self {
            disk,
            buffers,
            buffer_busy: [false; SLOTS],
            in_flight: Vec::with_capacity(DEPTH),
            finished: Vec::with_capacity(2 * DEPTH),
            ranges: Vec::with_capacity(DEPTH * MERGE),
            flushes: Vec::new(),
            flushing: Vec::new(),
            held: Vec::new(),
            wants_buffer: false,
            grants: Vec::new(),
            unmaps: Vec::new(),
            ops: Vec::new(),
            touched: Vec::new(),
            depth_at: 0,
            stats: Stats::default(),
        })
    }

    /// The disk (for domain 0's own use while no ring is served).
    pub fn disk(&mut self) -> &mut D {
        &mut self.disk
    }

    /// The bounce buffers (for domain 0's own use while no ring is served).
    pub fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    /// Whether the disk finished a request not yet answered: the caller comes back at once
    /// rather than wait for the interrupt (which may take a while to be delivered).
    pub fn completions_waiting(&self) -> bool {
        self.disk.has_completed()
    }

    /// Before the caller blocks: asks the disk for its interrupt; false when a request
    /// finished meanwhile (then it must not block).
    pub fn may_block(&mut self) -> bool {
        !self.disk.interrupts(true)
    }

    /// After the caller woke: no interrupt while it runs (each costs an interrupt, a status
    /// read and an EOI; [`complete`](Self::complete) looks at the used ring every round).
    pub fn running(&mut self) {
        let _ = self.disk.interrupts(false);
    }

    /// Whether no disk request is in flight (domain 0 may use the disk itself).
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Grants mapped for the device now (all rings).
    pub fn mapped_grants(&self) -> usize {
        self.grants.iter().map(|g| g.table.len()).sum()
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

    /// A write's data from the frontend's pages into bounce buffer `slot`.
    fn copy_work(&mut self, slot: usize, frontend: DomId, work: &Work) -> bool {
        let mut ops = [GnttabCopy::default(); MAX_COPIES];
        let Ok(n) = plan_buffer(work, frontend, &Buffer { buffers: &self.buffers, slot }, &mut ops) else { return false };
        self.copy(&mut ops[..n]) && ops[..n].iter().all(|op| grants::status(op.status).is_ok())
    }

    /// Makes sure every grant of `work` is mapped for the device in ring `key`'s table
    /// (the missing ones mapped by one `GNTTABOP_map_grant_ref` call): false when the
    /// table has no room or a map was refused (the request then goes through a bounce
    /// buffer, where the copy meets the same check).
    fn map_grants(&mut self, key: usize, frontend: DomId, entries: usize, work: &Work) -> bool {
        let index = match self.grants.iter().position(|g| g.key == key) {
            Some(i) => i,
            None => {
                self.grants.push(Grants { key, table: Persistent::new(limit_for(entries)) });
                self.grants.len() - 1
            }
        };
        let g = &mut self.grants[index];
        let Some(missing) = g.table.missing(work) else { return false };
        if missing.is_empty() {
            return true;
        }
        let mut ops = ArrayVec::<GnttabMapGrantRef, MAX_SEGMENTS>::new();
        for &gref in &missing {
            ops.push(GnttabMapGrantRef { host_addr: 0, flags: GNTMAP_DEVICE_MAP, ref_: gref, dom: frontend, ..Default::default() });
        }
        let begin = rdtsc();
        // SAFETY: device maps only (no address of ours is written); the frames stay mapped
        // until `unmap_pending` unmaps them, after the last disk request reaching them.
        let called = unsafe { grants::grant_table_op(GnttabOp::MapGrantRef, ops.as_mut_ptr(), ops.len() as u32) };
        self.stats.map_cycles += rdtsc().wrapping_sub(begin);
        if called.is_err() {
            return false;
        }
        let mut all = true;
        for op in &ops {
            if grants::status(op.status).is_err() {
                all = false;
                continue;
            }
            self.stats.maps += 1;
            if g.table.add(op.ref_, op.dev_bus_addr, op.handle).is_err() {
                // Cannot happen (room was checked, references are distinct): undo it.
                all = false;
                self.unmaps.push(Mapped::new(op.ref_, op.dev_bus_addr, op.handle));
            }
        }
        all
    }

    /// Unmaps the grants whose ring closed and that no disk request reaches (batched).
    fn unmap_pending(&mut self) {
        while !self.unmaps.is_empty() {
            let n = self.unmaps.len().min(32);
            let mut ops = ArrayVec::<GnttabUnmapGrantRef, 32>::new();
            for m in self.unmaps.drain(..n) {
                ops.push(GnttabUnmapGrantRef { host_addr: 0, dev_bus_addr: m.bus, handle: m.handle, ..Default::default() });
            }
            let begin = rdtsc();
            // SAFETY: device maps no disk request reaches any more (their ring closed and
            // every request using them completed).
            let called = unsafe { grants::grant_table_op(GnttabOp::UnmapGrantRef, ops.as_mut_ptr(), ops.len() as u32) };
            self.stats.map_cycles += rdtsc().wrapping_sub(begin);
            for op in &ops {
                if called.is_ok() && grants::status(op.status).is_ok() {
                    self.stats.unmaps += 1;
                } else {
                    println!("dom0: blk: unmap of handle {} failed", op.handle);
                }
            }
        }
    }

    /// Closes the grant tables of rings that are gone: what no disk request reaches is
    /// unmapped now, the rest as those requests complete.
    fn reap(&mut self, rings: &mut impl Rings) {
        for g in &mut self.grants {
            if !g.table.is_closing() && rings.ring(g.key).is_none() {
                g.table.close(&mut self.unmaps);
            }
        }
        self.grants.retain(|g| !(g.table.is_closing() && g.table.is_empty()));
        self.unmap_pending();
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
        let begin = rdtsc();
        // A held request of a ring since disconnected is dropped with it.
        self.held.retain(|(key, _)| rings.ring(*key).is_some());
        for key in core::mem::take(&mut self.touched) {
            if let Some(ring) = rings.ring(key) {
                if ring.backend.publish() {
                    let sent = rdtsc();
                    let _ = evtchn::send(ring.port);
                    self.stats.sends += 1;
                    self.stats.send_cycles += rdtsc().wrapping_sub(sent);
                }
            }
        }
        self.stats.publish_cycles += rdtsc().wrapping_sub(begin);
    }

    /// Acknowledges the disk's interrupt and notes every request it finished (their disk
    /// slots are free at once: [`take`](Self::take) may refill them before
    /// [`answer_collected`](Self::answer_collected) answers these, so that the disk waits
    /// for no ring work).
    pub fn collect(&mut self) {
        let begin = rdtsc();
        if self.disk.poll() {
            self.stats.interrupts += 1;
        }
        while let Some((tag, result)) = self.disk.complete() {
            let Some(i) = self.in_flight.iter().position(|f| f.tag == tag) else { continue };
            if self.finished.iter().any(|&(j, _)| j == i) {
                continue;
            }
            self.depth_tick();
            self.in_flight[i].tag = DONE;
            self.finished.push((i, result.is_ok()));
        }
        self.stats.complete_cycles += rdtsc().wrapping_sub(begin);
    }

    /// Answers every request [`collect`](Self::collect) noted (collecting first): the data
    /// of every finished bounce-buffer read copied into the frontends' pages by one
    /// `GNTTABOP_copy` call for all of them; a zero-copy one answered as it is; a write
    /// with a flush waits for the flush. Then the grants of closed rings that nothing
    /// reaches any more are unmapped.
    pub fn complete(&mut self, rings: &mut impl Rings) {
        self.collect();
        self.answer_collected(rings);
    }

    /// Answers what [`collect`](Self::collect) noted, without looking at the disk again.
    pub fn answer_collected(&mut self, rings: &mut impl Rings) {
        let begin = rdtsc();
        // The finished requests, by index into `in_flight`, processed where they lie and
        // removed at the end (under emulation every copy of these records costs).
        let mut finished = core::mem::take(&mut self.finished);
        // Plan every bounce-buffer read's copies: (where its descriptors start and end in
        // `ops`), or `None` when it has none to make.
        let mut ops = core::mem::take(&mut self.ops);
        ops.clear();
        let mut ranges = core::mem::take(&mut self.ranges);
        ranges.clear();
        for &(i, ok) in &finished {
            let done = &self.in_flight[i];
            let Path::Buffer(slot) = done.path else {
                ranges.extend(done.works.iter().map(|_| None));
                continue;
            };
            let first = done.works[0].sector_number;
            let live = rings.ring(done.key).is_some();
            for work in &done.works {
                let mut planned = [GnttabCopy::default(); MAX_COPIES];
                let range = match plan_buffer_at(work, first, done.frontend, &Buffer { buffers: &self.buffers, slot }, &mut planned) {
                    Ok(n) if ok && live && !work.write => {
                        ops.extend_from_slice(&planned[..n]);
                        Some((ops.len() - n, ops.len()))
                    }
                    _ => None,
                };
                ranges.push(range);
            }
        }
        let called = self.copy(&mut ops);
        let mut r = 0;
        for &(i, ok) in &finished {
            let (key, path, n) = (self.in_flight[i].key, self.in_flight[i].path, self.in_flight[i].works.len());
            match path {
                Path::Buffer(slot) => {
                    self.buffer_busy[slot] = false;
                    self.wants_buffer = false;
                }
                Path::Granted => {
                    if let Some(g) = self.grants.iter_mut().find(|g| g.key == key) {
                        for work in &self.in_flight[i].works {
                            g.table.release(work, &mut self.unmaps);
                        }
                    }
                }
                Path::Flush => {
                    self.stats.flushes += 1;
                    for (key, work) in core::mem::take(&mut self.flushing) {
                        self.answer(rings, key, &work.response(ok));
                    }
                    continue;
                }
            }
            let live = rings.ring(key).is_some();
            for w in 0..n {
                let planned = ranges[r];
                r += 1;
                if !live {
                    continue;
                }
                let work = &self.in_flight[i].works[w];
                let moved = match (path, planned) {
                    (Path::Buffer(_), Some((a, b))) => called && ops[a..b].iter().all(|op| grants::status(op.status).is_ok()),
                    (Path::Buffer(_), None) => work.write,
                    _ => true,
                };
                if ok && moved && work.flush {
                    let work = *work;
                    self.flushes.push((key, work));
                } else {
                    let rsp = work.response(ok && moved);
                    self.answer(rings, key, &rsp);
                }
            }
        }
        // Highest index first: a removal moves only the last entry, never one still listed.
        finished.sort_unstable_by_key(|&(i, _)| core::cmp::Reverse(i));
        for &(i, _) in &finished {
            self.in_flight.swap_remove(i);
        }
        finished.clear();
        self.finished = finished;
        self.ops = ops;
        self.ranges = ranges;
        self.reap(rings);
        self.stats.complete_cycles += rdtsc().wrapping_sub(begin);
    }

    /// Whether a new disk request may start (else the disk's interrupt says when to take
    /// more: no need to come back before it).
    pub fn can_start(&self) -> bool {
        self.flushes.is_empty()
            && self.flushing.is_empty()
            && self.live() < self.disk.depth().min(DEPTH)
            && !(self.wants_buffer && self.buffer_busy.iter().take(self.buffers.len()).all(|&b| b))
    }

    /// Disk requests in flight and being gathered (not those finished and not yet answered).
    fn live(&self) -> usize {
        self.in_flight.len() - self.finished.len()
    }

    /// Before the number of disk requests in flight changes: accounts the time since the
    /// last change.
    fn depth_tick(&mut self) {
        let now = rdtsc();
        let since = now.wrapping_sub(self.depth_at);
        self.depth_at = now;
        let depth = self.in_flight.iter().filter(|f| f.tag < GATHERING).count() as u64;
        if depth > 0 {
            self.stats.busy_cycles += since;
            self.stats.depth_cycles += since * depth;
        }
    }

    fn note_started(&mut self, zero_copy: bool) {
        self.stats.disk_requests += 1;
        self.stats.zero_copy += u64::from(zero_copy);
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.live());
    }

    /// Takes at most `budget` requests off ring `key` and starts them, as long as the disk
    /// takes more and no flush waits; reads of consecutive sectors that follow each other
    /// on the ring share one disk request (at most [`MERGE`], [`CHUNK`] bytes). Whether
    /// requests are left on the ring (or one taken waits). A full ring may take every free
    /// disk slot: the caller takes from its rings in turn, a different one first each
    /// round.
    pub fn take(&mut self, rings: &mut impl Rings, key: usize, budget: u32) -> bool {
        let begin = rdtsc();
        let kicks = self.stats.kick_cycles;
        let left = self.take_timed(rings, key, budget);
        // The disk's notifications inside are counted as such.
        let kicked = self.stats.kick_cycles - kicks;
        self.stats.take_cycles += rdtsc().wrapping_sub(begin).saturating_sub(kicked);
        left
    }

    /// Tells the disk of the request just started. One notification per disk request, not
    /// one per round for all of them: QEMU (under TCG, without ioeventfd) handles a
    /// notification in the notifying CPU's thread and merges every sequential read it then
    /// finds on the queue into one host read, whose parts all complete together, so that a
    /// round's reads would reach the host as one or two large reads instead of several in
    /// flight (domain 0's direct benchmark notifies per request too).
    fn kick(&mut self) {
        let begin = rdtsc();
        self.disk.kick();
        self.stats.kick_cycles += rdtsc().wrapping_sub(begin);
    }

    fn take_timed(&mut self, rings: &mut impl Rings, key: usize, budget: u32) -> bool {
        let mut taken = 0;
        loop {
            if self.live() >= self.disk.depth().min(DEPTH) || !self.flushes.is_empty() || !self.flushing.is_empty() {
                return true;
            }
            let held = self.held.iter().position(|(k, _)| *k == key).map(|i| self.held.swap_remove(i).1);
            let Some(ring) = rings.ring(key) else { return false };
            let (frontend, slice, persistent, entries) = (ring.frontend, ring.slice, ring.persistent, ring.entries);
            let work = match held {
                Some(work) => work,
                None => {
                    if taken == budget {
                        return true;
                    }
                    let Some(next) = ring.backend.take() else {
                        // The disk could take more than the ring holds: the frontend is behind.
                        self.stats.ring_dry += 1;
                        return ring.backend.more();
                    };
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
            if persistent {
                // Its grants' bus addresses: at once when all are mapped (the usual case),
                // else once the missing ones are.
                let mut extents = ArrayVec::<Extent, DISK_SEGMENTS>::new();
                if self.extents_for(key, &work, &mut extents)
                    || (self.map_grants(key, frontend, entries, &work) && self.extents_for(key, &work, &mut extents))
                {
                    self.start_granted(rings, key, frontend, entries, slice, work, extents, &mut taken, budget);
                    continue;
                }
            }
            let Some(slot) = (0..self.buffers.len()).find(|&s| !self.buffer_busy[s]) else {
                // Its turn comes when a bounce buffer frees.
                self.held.push((key, work));
                self.wants_buffer = true;
                return true;
            };
            self.start_buffered(rings, key, frontend, slice, slot, work, &mut taken, budget);
        }
    }

    /// Takes the reads that join the works of `in_flight[at]` (being gathered) off ring
    /// `key` (within the budget), holding the first that does not; `also` says whether a
    /// joining one may be added (and does what adding it needs).
    fn join_reads(&mut self, rings: &mut impl Rings, key: usize, at: usize, taken: &mut u32, budget: u32, mut also: impl FnMut(&mut Self, &Work) -> bool) {
        loop {
            let works = &self.in_flight[at].works;
            if works[0].write || works[0].flush || works.len() >= MERGE || *taken >= budget {
                break;
            }
            let Some(next) = rings.ring(key).and_then(|ring| ring.backend.take()) else { break };
            *taken += 1;
            self.stats.requests += 1;
            match next {
                Ok(next) if joins(&self.in_flight[at].works, &next) && also(self, &next) => self.in_flight[at].works.push(next),
                Ok(next) => {
                    self.held.push((key, next));
                    break;
                }
                Err(refusal) => self.answer(rings, key, &refusal),
            }
        }
    }

    /// Starts gathering a disk request's works in a new entry of `in_flight` (its index).
    fn gather(&mut self, key: usize, frontend: DomId, path: Path, work: Work) -> usize {
        self.in_flight.push(InFlight { tag: GATHERING, key, frontend, works: ArrayVec::new(), path });
        let at = self.in_flight.len() - 1;
        self.in_flight[at].works.push(work);
        at
    }

    /// The disk took the entry gathered at `at` (tag `tag`), or refused it: then its works
    /// are answered as failed and it goes.
    fn started(&mut self, rings: &mut impl Rings, at: usize, started: Result<Tag, super::DiskError>) {
        match started {
            Ok(tag) => {
                // The time before it, at the depth before it (gathering is not counted).
                self.depth_tick();
                self.in_flight[at].tag = tag;
                let zero_copy = self.in_flight[at].path == Path::Granted;
                self.note_started(zero_copy);
                self.kick();
            }
            Err(_) => {
                let done = self.in_flight.swap_remove(at);
                if done.path == Path::Granted {
                    if let Some(g) = self.grants.iter_mut().find(|g| g.key == done.key) {
                        for work in &done.works {
                            g.table.release(work, &mut self.unmaps);
                        }
                    }
                }
                for work in &done.works {
                    self.answer(rings, done.key, &work.response(false));
                }
            }
        }
    }

    /// `work`'s extents appended to `out`, its grants counted as used, when ring `key`'s
    /// table holds them all (and `out` has room); else nothing.
    fn extents_for(&mut self, key: usize, work: &Work, out: &mut ArrayVec<Extent, DISK_SEGMENTS>) -> bool {
        self.grants.iter_mut().find(|g| g.key == key).is_some_and(|g| g.table.extents(work, out))
    }

    /// Starts `work` (whose `extents` are counted already) and the reads that join it
    /// straight on the frontend's mapped pages.
    #[allow(clippy::too_many_arguments)]
    fn start_granted(&mut self, rings: &mut impl Rings, key: usize, frontend: DomId, entries: usize, slice: Slice, work: Work, mut extents: ArrayVec<Extent, DISK_SEGMENTS>, taken: &mut u32, budget: u32) {
        let at = self.gather(key, frontend, Path::Granted, work);
        self.join_reads(rings, key, at, taken, budget, |server, next| {
            server.extents_for(key, next, &mut extents)
                || (server.map_grants(key, frontend, entries, next) && server.extents_for(key, next, &mut extents))
        });
        let first = &self.in_flight[at].works[0];
        let op = if first.write { Op::Write } else { Op::Read };
        // The check kept each request inside the slice, and joined ones are consecutive;
        // the disk checks the end again.
        let sector = slice.start + first.sector_number;
        // SAFETY: every extent lies in a frontend frame mapped for the device and counted
        // as used by these works: it stays mapped (and the frame pinned) until `complete`
        // releases them after the disk is done (or `started` at once if it refuses).
        let started = unsafe { self.disk.start(op, sector, &extents) };
        self.started(rings, at, started);
    }

    /// Starts `work` (and the reads that join it) through bounce buffer `slot`.
    #[allow(clippy::too_many_arguments)]
    fn start_buffered(&mut self, rings: &mut impl Rings, key: usize, frontend: DomId, slice: Slice, slot: usize, work: Work, taken: &mut u32, budget: u32) {
        if work.write && !self.copy_work(slot, frontend, &work) {
            self.answer(rings, key, &work.response(false));
            return;
        }
        let at = self.gather(key, frontend, Path::Buffer(slot), work);
        self.join_reads(rings, key, at, taken, budget, |_, _| true);
        let works = &self.in_flight[at].works;
        let op = if works[0].write { Op::Write } else { Op::Read };
        let bytes: u64 = works.iter().map(bytes).sum();
        let sector = slice.start + works[0].sector_number;
        // SAFETY: the bounce buffer is domain 0's pool memory, marked busy until `complete`.
        let started = unsafe { self.disk.start(op, sector, &[self.buffers.extent(slot, bytes as usize)]) };
        if started.is_ok() {
            self.buffer_busy[slot] = true;
        }
        self.started(rings, at, started);
    }

    /// When flushes wait and nothing is in flight: starts a flush of the disk, which
    /// answers them when it completes.
    pub fn flush(&mut self, rings: &mut impl Rings) {
        if self.flushes.is_empty() || !self.in_flight.is_empty() {
            return;
        }
        // SAFETY: a flush names no memory.
        match unsafe { self.disk.start(Op::Flush, 0, &[]) } {
            Ok(tag) => {
                self.disk.kick();
                self.flushing = core::mem::take(&mut self.flushes);
                self.depth_tick();
                self.in_flight.push(InFlight { tag, key: usize::MAX, frontend: DomId(0), works: ArrayVec::new(), path: Path::Flush });
            }
            Err(_) => {
                for (key, work) in core::mem::take(&mut self.flushes) {
                    self.answer(rings, key, &work.response(false));
                }
            }
        }
    }

    /// At the end (every ring disconnected): waits for the disk requests in flight, then
    /// unmaps every grant still mapped.
    pub fn drain(&mut self, rings: &mut impl Rings) {
        while !self.in_flight.is_empty() {
            self.complete(rings);
            if !self.in_flight.is_empty() {
                self.disk.wait();
            }
        }
        for g in &mut self.grants {
            g.table.close(&mut self.unmaps);
        }
        self.reap(rings);
        self.publish(rings);
    }
}
