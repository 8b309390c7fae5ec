//! The virtio disk as a source of virtual block devices: [`Server`] serves blkif rings
//! ([`blkif::backend::Backend`]'s asynchronous half) from slices of one [`SectorDisk`],
//! each ring's VBD a [`Slice`] (a range of the disk; the request check keeps every
//! request inside the VBD, so no domain ever reaches another's slice).
//!
//! A request takes a disk slot: a write's data is grant-copied from the frontend's pages
//! into the slot's DMA buffer and then submitted; a read is submitted and, when the disk
//! completes it, grant-copied from the buffer into the frontend's pages
//! (`blkif::copies::plan_buffer`, the buffer's frames under `DOMID_SELF`). The device's
//! DMA only ever reaches domain 0's pool, and domain 0 never maps a frontend's page.
//! Requests complete in whatever order the disk finishes them, and are answered so.
//!
//! A flush (with or without data) is answered once the disk has flushed with nothing in
//! flight: while one waits, no new request is started, so that the disk becomes quiet;
//! the flush itself is `virtio-drivers`' blocking one (it spins for one completion).
//!
//! Who calls it: domain 0's block backend loop (`attack::blk`), in bounded slices from
//! its event loop: [`Server::complete`] after the disk's interrupt, [`Server::take`] per
//! ring woken (at most `budget` requests, and at most one per free slot), [`Server::flush`]
//! when the disk is quiet. It never waits for the disk.

use alloc::vec::Vec;

use blkif::backend::Backend;
use blkif::check::Work;
use blkif::copies::{plan_buffer, DiskFrames, MAX_COPIES};
use blkif::wire::{Response, SECTOR_BYTES};
use guest_rt::abi::grant_table::{GnttabCopy, GnttabOp};
use guest_rt::abi::ids::{DomId, EvtchnPort};
use guest_rt::{evtchn, grants};
use xenring::RawMemory;

use super::{Op, SectorDisk, SLOTS};

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
    /// Most requests in flight at once.
    pub max_in_flight: usize,
}

struct InFlight {
    key: usize,
    frontend: DomId,
    work: Work,
}

/// The virtio disk serving VBDs (see the module documentation).
pub struct Server<D> {
    disk: D,
    in_flight: [Option<InFlight>; SLOTS],
    /// Flushes waiting for the disk to be quiet: (ring key, the request).
    flushes: Vec<(usize, Work)>,
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

/// `GNTTABOP_copy` over `ops`; true when every one succeeded.
fn copy(ops: &mut [GnttabCopy]) -> bool {
    // SAFETY: `ops` are ours for the call; every page they name is domain 0's own DMA
    // buffer or a frontend's grant, which the hypervisor checks.
    let called = unsafe { grants::grant_table_op(GnttabOp::Copy, ops.as_mut_ptr(), ops.len() as u32) };
    called.is_ok() && ops.iter().all(|op| grants::status(op.status).is_ok())
}

impl<D: SectorDisk> Server<D> {
    pub fn new(disk: D) -> Self {
        Self { disk, in_flight: Default::default(), flushes: Vec::new(), touched: Vec::new(), stats: Stats::default() }
    }

    /// The disk (for domain 0's own use while no ring is served).
    pub fn disk(&mut self) -> &mut D {
        &mut self.disk
    }

    fn copy_work(&mut self, slot: usize, frontend: DomId, work: &Work) -> bool {
        let mut ops = [GnttabCopy::default(); MAX_COPIES];
        let Ok(n) = plan_buffer(work, frontend, &Buffer { disk: &self.disk, slot }, &mut ops) else { return false };
        self.stats.grant_copies += n as u64;
        self.stats.copy_calls += 1;
        copy(&mut ops[..n])
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
        for key in core::mem::take(&mut self.touched) {
            if let Some(ring) = rings.ring(key) {
                if ring.backend.publish() {
                    let _ = evtchn::send(ring.port);
                }
            }
        }
    }

    /// Acknowledges the disk's interrupt and answers every request it finished (reads
    /// copied into the frontend's pages first; a write with a flush waits for the flush).
    pub fn complete(&mut self, rings: &mut impl Rings) {
        if self.disk.poll() {
            self.stats.interrupts += 1;
        }
        while let Some((slot, result)) = self.disk.complete() {
            let Some(done) = self.in_flight.get_mut(slot).and_then(Option::take) else { continue };
            let mut ok = result.is_ok();
            if ok && !done.work.write {
                if rings.ring(done.key).is_none() {
                    continue;
                }
                ok = self.copy_work(slot, done.frontend, &done.work);
            }
            if ok && done.work.flush {
                self.flushes.push((done.key, done.work));
            } else {
                self.answer(rings, done.key, &done.work.response(ok));
            }
        }
    }

    /// Whether a disk slot is free and no flush waits (else the disk's interrupt says when
    /// to take more: no need to come back before it).
    pub fn can_start(&self) -> bool {
        self.flushes.is_empty() && self.in_flight.iter().any(Option::is_none)
    }

    /// Takes at most `budget` requests off ring `key` and starts them, as long as a disk
    /// slot is free and no flush waits. Whether requests are left on the ring.
    pub fn take(&mut self, rings: &mut impl Rings, key: usize, budget: u32) -> bool {
        let mut taken = 0;
        loop {
            let Some(free) = self.in_flight.iter().position(Option::is_none) else { return true };
            if !self.flushes.is_empty() {
                return true;
            }
            if taken == budget {
                return true;
            }
            let Some(ring) = rings.ring(key) else { return false };
            let (frontend, slice) = (ring.frontend, ring.slice);
            let Some(next) = ring.backend.take() else { return ring.backend.more() };
            taken += 1;
            self.stats.requests += 1;
            let work = match next {
                Ok(work) => work,
                Err(refusal) => {
                    self.answer(rings, key, &refusal);
                    continue;
                }
            };
            if work.segments() == 0 {
                self.flushes.push((key, work));
                continue;
            }
            let bytes: u64 = work.chunks().map(|c| u64::from(c.len)).sum();
            if work.write && !self.copy_work(free, frontend, &work) {
                self.answer(rings, key, &work.response(false));
                continue;
            }
            let op = if work.write { Op::Write } else { Op::Read };
            // The check kept the request inside the slice; the disk checks its end again.
            let sector = slice.start + work.sector_number;
            match self.disk.submit(free, op, sector, (bytes / SECTOR_BYTES) as usize) {
                Ok(()) => {
                    self.in_flight[free] = Some(InFlight { key, frontend, work });
                    let n = self.in_flight.iter().filter(|s| s.is_some()).count();
                    self.stats.max_in_flight = self.stats.max_in_flight.max(n);
                }
                Err(_) => self.answer(rings, key, &work.response(false)),
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
