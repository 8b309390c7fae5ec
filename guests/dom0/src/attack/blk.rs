//! `attack=blk good=N hostile=M die=K seconds=S`: domain 0 as the block backend (blkback)
//! on in-memory disks, for domains it creates from boot module 1 (guest-blk): `good` ones
//! (`mode=good`), `hostile` ones (`mode=hostile`: bad requests, then garbage ring
//! indices) and `die` ones (`mode=die`: power off with every request in flight).
//!
//! The disks: every boot module whose line says `disk=` is read (`ReadDisk`, a page at a
//! time, into a bounce page) and copied (`GNTTABOP_copy` between two frames of domain 0's
//! own) into frames of domain 0's reservation past its initial mapping's slack: domain 0
//! never maps them; data moves between them and the frontends' granted pages by grant copy
//! only (`blkif::copies`). Every domain gets every disk (`xvd<index>`, read-only when the
//! line says `,ro`); writes land in domain 0's copy, not in the boot module.
//!
//! With `vdisk=1` (`vdisk_ro=1`: read-only) domain 0 also drives the virtio disk and gives
//! every domain an equal slice of it as one more VBD (`crate::virtio::vbd`: requests
//! complete out of order, a flush waits for the disk to be quiet); the loop wakes on the
//! disk's interrupt too. These VBDs offer `feature-persistent`: a frontend that takes it
//! has its grants mapped for the device once and the disk reads into and writes from its
//! pages directly; any other is served by grant copies through domain 0's bounce buffers
//! (`copy=1`: the guests are told not to take it). At the end every grant mapped for the
//! device must have been unmapped. Its rings are served in turn, a different one first each round,
//! so that a frontend keeping its ring full cannot take every disk slot (`flood=N`: the
//! last `N` good domains run guest-blk `mode=flood`, each of which must still get
//! answers). With `bench=1` it first reads the
//! first slice directly and, when the guest (guest-blk `mode=vbench`, given on its line) ends, prints both figures
//! (`dom0: blk: bench seq64k direct_mbps= vbd_mbps= ratio=`).
//!
//! Each domain is set up as the store check does (`super::store::attach`: its store and
//! console served), then the VBD's store nodes as libxl writes them
//! (`/local/domain/0/backend/vbd/<domid>/<devid>/` owned by domain 0, readable by the
//! frontend: `frontend`, `frontend-id`, `online`, `state`; `device/vbd/<devid>/` owned
//! by the frontend: `backend`, `backend-id`, `virtual-device`, `device-type`, `state`)
//! and blkback's (`sectors`, `sector-size`, `info`, `mode`, `feature-flush-cache`, `state`
//! `InitWait`). When the frontend says `Initialised` (or `Connected`) the backend reads
//! `ring-ref`, `event-channel` and `protocol` (only `x86_64-abi`; no `ring-page-order`
//! was offered, so one page), maps the ring grant, binds the port and says `Connected`.
//!
//! The loop serves every ring ([`blkif::backend::Backend`]: at most [`BUDGET`] requests per
//! ring per round, round robin) beside the stores and consoles. A frontend with
//! impossible ring indices is cut off alone: its ring unmapped, its port closed, the
//! backend `Closing`. A domain that ends is torn down; a `die` domain is destroyed first,
//! with its ring still mapped and its requests unserved, then served once more (the copies
//! into a dead domain's grants fail) and released. The check passes when every good and
//! hostile domain powered off, every hostile ring (no good one) was cut off, and free
//! memory comes back as before.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use arrayvec::{ArrayString, ArrayVec};
use blkif::backend::{Backend, DataMover};
use blkif::check::{Vbd, Work};
use blkif::copies::{plan, DiskFrames, MAX_COPIES};
use blkif::xenbus::{backend_keys as bk, frontend_keys as fk, parse_u32, xvd_number, XenbusState, PROTOCOL_X86_64};
use guest_rt::abi::control::DOMAIN_SHUTTING_DOWN;
use guest_rt::abi::errno::Errno;
use guest_rt::abi::grant_table::{GnttabCopy, GnttabCopyPtr, GnttabOp};
use guest_rt::abi::ids::{DomId, EvtchnPort, Pfn};
use guest_rt::control::{self, NewDomain};
use guest_rt::events::Events;
use guest_rt::frames::{Frame, FreeFrames};
use guest_rt::{evtchn, grants, println};
use xenring::RawMemory;
use xenstore::perms::{Perm, PermKind};
use xenstore::Store;

use crate::virtio::vbd::{Rings, Server, Slice, VbdRing};
use crate::virtio::{Buffers, Extent, SectorDisk, VirtioDisk, CHUNK, DEPTH, SLOTS};

use super::store::{attach, bind_dom_exc, detach, drain_console, map_ring, on_event, spec, told, unmap_ring, Served, ENDING_POLL_ROUNDS, PENDING};
use super::{expect_as_before, option, phys, settled, Compare, Failure, Waiter};

const MS: u64 = 1_000_000;
/// Pages of domain 0's heap (the store and the backend's records).
const HEAP_PAGES: usize = 64;
/// The same beside the virtio disk's DMA pool (both come out of the boot slack).
const VDISK_HEAP_PAGES: usize = 32;
/// Requests served per ring per round.
pub const BUDGET: u32 = 8;
/// Store requests served per domain per round.
const STORE_BUDGET: usize = 8;
/// The most domains served at once.
const MAX_DOMAINS: usize = 6;
/// How long a `flood=` domain keeps its ring full.
const FLOOD_SECONDS: u64 = 12;

/// What the store says of a VBD's disk.
#[derive(Clone, Copy)]
struct DiskDesc {
    index: u32,
    read_only: bool,
    sectors: u64,
}

/// A disk in domain 0's memory.
struct Disk {
    index: u32,
    read_only: bool,
    sectors: u64,
    /// Machine frames of its pages.
    frames: Vec<u64>,
}

impl Disk {
    fn desc(&self) -> DiskDesc {
        DiskDesc { index: self.index, read_only: self.read_only, sectors: self.sectors }
    }
}

impl DiskFrames for Disk {
    fn frame(&self, index: u64) -> Option<u64> {
        self.frames.get(usize::try_from(index).ok()?).copied()
    }
}

/// `GNTTABOP_copy` over `ops`; true when every one succeeded.
fn copy(ops: &mut [GnttabCopy]) -> bool {
    // SAFETY: `ops` are ours for the call; every page they name is domain 0's own frame or
    // a frontend's grant, which the hypervisor checks.
    let called = unsafe { grants::grant_table_op(GnttabOp::Copy, ops.as_mut_ptr(), ops.len() as u32) };
    called.is_ok() && ops.iter().all(|op| grants::status(op.status).is_ok())
}

/// Reads every disk module into frames taken from `store` (frames past the slack).
fn load_disks(bounce: Frame, store: &mut impl Iterator<Item = Frame>, virtio: bool) -> Result<Vec<Disk>, Failure> {
    let modules = phys()?.modules;
    let mut disks = Vec::new();
    // SAFETY: `bounce` is a free frame of ours, mapped at its address, used only here.
    let page = unsafe { &mut *(bounce.va() as *mut [u8; 4096]) };
    for module in 1..modules {
        let info = match control::read_disk(module, 0, &mut page[..0]) {
            Ok((_, disk)) => disk,
            Err(e) if e.errno() == Some(Errno::Einval) => continue,
            Err(e) => return Err(Failure::Control("ReadDisk", e)),
        };
        let pages = info.size.div_ceil(4096);
        let mut frames = Vec::new();
        for p in 0..pages {
            let frame = store.next().ok_or(Failure::Setup("domain 0 has no room for its disks (mem= on its line)"))?;
            page.fill(0);
            control::read_disk(module, p * 4096, page).map_err(|e| Failure::Control("ReadDisk", e))?;
            let own = |mfn: u64| GnttabCopyPtr { u: mfn, domid: DomId::SELF, offset: 0, _pad: 0 };
            let mut op = [GnttabCopy { source: own(bounce.mfn.0), dest: own(frame.mfn.0), len: 4096, ..Default::default() }];
            if !copy(&mut op) {
                return Err(Failure::Setup("copying a disk page into domain 0's frame"));
            }
            frames.push(frame.mfn.0);
        }
        println!(
            "dom0: blk: disk module {module} as xvd{}: {} sectors{} in {} frames",
            (b'a' + info.index as u8) as char,
            info.size / 512,
            if info.read_only { ", read-only" } else { "" },
            frames.len()
        );
        disks.push(Disk { index: info.index, read_only: info.read_only, sectors: info.size / 512, frames });
    }
    if disks.is_empty() && !virtio {
        return Err(Failure::Setup("no disk module"));
    }
    Ok(disks)
}

/// Grant copies between one frontend's grants and one disk.
struct Mover<'a> {
    frontend: DomId,
    disk: &'a Disk,
    copies: u64,
    failed: u64,
}

impl DataMover for Mover<'_> {
    fn transfer(&mut self, work: &Work) -> bool {
        let mut ops = [GnttabCopy::default(); MAX_COPIES];
        let Ok(n) = plan(work, self.frontend, self.disk, &mut ops) else { return false };
        self.copies += n as u64;
        let ok = copy(&mut ops[..n]);
        if !ok {
            self.failed += 1;
        }
        ok
    }
    fn flush(&mut self) -> bool {
        // The disk is domain 0's memory: every copy is done when the hypercall returns.
        true
    }
}

/// A connected ring.
struct Ring {
    backend: Backend<RawMemory>,
    port: EvtchnPort,
    /// The maps of its pages, mapped one after the other from `va`.
    handles: ArrayVec<u32, RING_PAGES>,
    va: u64,
}

/// Pages a virtio VBD's ring may have (`max-ring-page-order` 1, as blkfront asks with
/// `ring-page-order`): 64 requests in flight rather than one page's 32. The window for it
/// comes out of domain 0's boot slack, which the DMA pool and heap mostly take.
const RING_PAGES: usize = 2;

/// Unmaps `handles`, mapped one page after the other from `va`.
fn unmap_pages(handles: &[u32], va: u64) {
    for (i, &handle) in handles.iter().enumerate() {
        unmap_ring(handle, va + 4096 * i as u64);
    }
}

/// One VBD of one domain.
struct VbdConn {
    /// Index into the served domains.
    domain: usize,
    frontend: DomId,
    disk: usize,
    devid: u32,
    bpath: String,
    fpath: String,
    ring: Option<Ring>,
    /// Spare pages of domain 0 (consecutive) to map the ring at.
    window: u64,
    window_pages: usize,
    /// Served from this slice of the virtio disk (else from `disk`).
    slice: Option<Slice>,
    /// The frontend offered `feature-persistent` (a virtio VBD only: its grants are kept
    /// mapped for the device).
    persistent: bool,
    /// Requests were left on its ring (virtio: no free disk slot, or the budget ran out).
    left: bool,
    closed: bool,
    cut: bool,
    copies: u64,
    served: (u64, u64),
}

fn write(store: &mut Store, path: &str, value: &str) -> Result<(), Failure> {
    store.write_as(0, path, value.as_bytes()).map_err(|_| Failure::Setup("a store write of the toolstack"))
}

fn read(store: &mut Store, path: &str) -> Option<String> {
    let v = store.read_as(0, path).ok()?;
    String::from_utf8(v).ok()
}

fn set_state(store: &mut Store, bpath: &str, state: XenbusState) {
    let _ = store.write_as(0, &format!("{bpath}/{}", bk::STATE), format!("{}", state.raw()).as_bytes());
}

/// The toolstack's and blkback's nodes for `disk` on `frontend` (see the module docs).
fn create_vbd(store: &mut Store, frontend: DomId, domain: usize, disk_index: usize, disk: DiskDesc, slice: Option<Slice>, window: (u64, usize)) -> Result<VbdConn, Failure> {
    let (window, window_pages) = window;
    let devid = xvd_number(disk.index as u8).ok_or(Failure::Setup("an xvd index past 15"))?;
    let d = frontend.0;
    let bpath = format!("/local/domain/0/backend/vbd/{d}/{devid}");
    let fpath = format!("/local/domain/{d}/device/vbd/{devid}");
    write(store, &bpath, "")?;
    store
        .set_perms(&bpath, alloc::vec![Perm { domid: 0, kind: PermKind::None }, Perm { domid: d, kind: PermKind::Read }])
        .map_err(|_| Failure::Setup("backend permissions"))?;
    write(store, &fpath, "")?;
    store
        .set_perms(&fpath, alloc::vec![Perm { domid: d, kind: PermKind::None }, Perm { domid: 0, kind: PermKind::Read }])
        .map_err(|_| Failure::Setup("frontend permissions"))?;
    write(store, &format!("{bpath}/{}", bk::FRONTEND), &fpath)?;
    write(store, &format!("{bpath}/{}", bk::FRONTEND_ID), &format!("{d}"))?;
    write(store, &format!("{bpath}/{}", bk::ONLINE), "1")?;
    // The device's name, as libxl writes it: GRUB's Xen image names the disk `(xen/xvda)`
    // from it (without it, `(xenid/<devid>)`).
    write(store, &format!("{bpath}/dev"), &format!("xvd{}", char::from(b'a' + disk.index as u8)))?;
    write(store, &format!("{bpath}/{}", bk::STATE), &format!("{}", XenbusState::Initialising.raw()))?;
    write(store, &format!("{fpath}/{}", fk::BACKEND), &bpath)?;
    write(store, &format!("{fpath}/{}", fk::BACKEND_ID), "0")?;
    write(store, &format!("{fpath}/{}", fk::VIRTUAL_DEVICE), &format!("{devid}"))?;
    write(store, &format!("{fpath}/{}", fk::DEVICE_TYPE), "disk")?;
    write(store, &format!("{fpath}/{}", fk::STATE), &format!("{}", XenbusState::Initialising.raw()))?;
    // blkback's part once its disk is ready.
    write(store, &format!("{bpath}/{}", bk::SECTORS), &format!("{}", disk.sectors))?;
    write(store, &format!("{bpath}/{}", bk::SECTOR_SIZE), "512")?;
    let info = if disk.read_only { blkif::wire::VDISK_READONLY } else { 0 };
    write(store, &format!("{bpath}/{}", bk::INFO), &format!("{info}"))?;
    write(store, &format!("{bpath}/{}", bk::MODE), if disk.read_only { "r" } else { "w" })?;
    write(store, &format!("{bpath}/{}", bk::FEATURE_FLUSH_CACHE), "1")?;
    if slice.is_some() {
        // The virtio disk moves data straight to and from grants it may keep mapped.
        write(store, &format!("{bpath}/{}", bk::FEATURE_PERSISTENT), "1")?;
    }
    if window_pages > 1 {
        write(store, &format!("{bpath}/{}", bk::MAX_RING_PAGE_ORDER), &format!("{}", window_pages.trailing_zeros()))?;
    }
    write(store, &format!("{bpath}/{}", bk::STATE), &format!("{}", XenbusState::InitWait.raw()))?;
    Ok(VbdConn {
        domain,
        frontend,
        disk: disk_index,
        devid,
        bpath,
        fpath,
        ring: None,
        window,
        window_pages,
        slice,
        persistent: false,
        left: false,
        closed: false,
        cut: false,
        copies: 0,
        served: (0, 0),
    })
}

/// Connects `v` when its frontend published its ring; refuses (backend `Closed`) a
/// frontend whose keys are missing or ask what was not offered.
fn try_connect(store: &mut Store, events: Events, v: &mut VbdConn, disks: &[Disk]) {
    let disk = match v.slice {
        Some(slice) => DiskDesc { index: 0, read_only: slice.read_only, sectors: slice.sectors },
        None => disks[v.disk].desc(),
    };
    let state = read(store, &format!("{}/{}", v.fpath, fk::STATE)).and_then(|s| XenbusState::parse(s.as_bytes()));
    match state {
        Some(XenbusState::Initialised | XenbusState::Connected) => {}
        Some(XenbusState::Closing | XenbusState::Closed) => {
            set_state(store, &v.bpath, XenbusState::Closed);
            v.closed = true;
            return;
        }
        _ => return,
    }
    let number = |store: &mut Store, key: &str| read(store, &format!("{}/{key}", v.fpath)).and_then(|s| parse_u32(s.as_bytes()));
    let protocol = read(store, &format!("{}/{}", v.fpath, fk::PROTOCOL));
    let order = number(store, fk::RING_PAGE_ORDER).unwrap_or(0);
    let persistent = v.slice.is_some() && number(store, fk::FEATURE_PERSISTENT) == Some(1);
    let Some(port) = number(store, fk::EVENT_CHANNEL) else {
        return refuse(store, v, "no event-channel");
    };
    if protocol.is_some_and(|p| p != PROTOCOL_X86_64) {
        return refuse(store, v, "a protocol other than x86_64-abi");
    }
    if order > v.window_pages.trailing_zeros() {
        return refuse(store, v, "a ring larger than offered");
    }
    let pages = 1usize << order;
    // One page: `ring-ref`; more: `ring-ref0`, `ring-ref1`, ... (io/blkif.h).
    let mut grefs = ArrayVec::<u32, RING_PAGES>::new();
    for i in 0..pages {
        let key = if order == 0 { String::from(fk::RING_REF) } else { format!("{}{i}", fk::RING_REF) };
        match number(store, &key) {
            Some(gref) => grefs.push(gref),
            None => return refuse(store, v, "a ring-ref missing"),
        }
    }
    let mut handles = ArrayVec::<u32, RING_PAGES>::new();
    for (i, &gref) in grefs.iter().enumerate() {
        match map_ring(v.frontend, gref, v.window + 4096 * i as u64) {
            Ok(handle) => handles.push(handle),
            Err(_) => {
                unmap_pages(&handles, v.window);
                return refuse(store, v, "its ring grant could not be mapped");
            }
        }
    }
    let Ok(local) = evtchn::bind_interdomain(v.frontend, EvtchnPort(port)) else {
        unmap_pages(&handles, v.window);
        return refuse(store, v, "its event channel could not be bound");
    };
    let _ = events.set_handler(local, on_event);
    // SAFETY: the ring's pages are mapped from `window` until `disconnect` unmaps them; the
    // frontend writes them concurrently, and the ring reaches them only by atomic and
    // volatile accesses.
    let mem = unsafe { RawMemory::new(NonNull::new(v.window as *mut u8).expect("a window address"), 4096 * pages) };
    let vbd = Vbd { sectors: disk.sectors, read_only: disk.read_only };
    match Backend::new(mem, pages, vbd) {
        Ok(backend) => {
            v.ring = Some(Ring { backend, port: local, handles, va: v.window });
            v.persistent = persistent;
            set_state(store, &v.bpath, XenbusState::Connected);
        }
        Err(_) => {
            let _ = evtchn::close(local);
            unmap_pages(&handles, v.window);
            refuse(store, v, "the ring layout");
        }
    }
}

fn refuse(store: &mut Store, v: &mut VbdConn, why: &str) {
    println!("dom0: blk: d{} vbd {}: refused: {why}", v.frontend.0, v.devid);
    set_state(store, &v.bpath, XenbusState::Closed);
    v.closed = true;
}

/// Unmaps `v`'s ring and closes its port.
fn disconnect(store: &mut Store, v: &mut VbdConn, state: XenbusState) {
    if let Some(ring) = v.ring.take() {
        let c = ring.backend.counters();
        v.served = (c.ok, c.failed);
        let _ = evtchn::close(ring.port);
        unmap_pages(&ring.handles, ring.va);
    }
    set_state(store, &v.bpath, state);
    v.closed = true;
}

/// Serves `v`'s ring once; whether more waits.
fn serve(store: &mut Store, v: &mut VbdConn, disks: &[Disk]) -> bool {
    let Some(ring) = v.ring.as_mut() else { return false };
    let mut mover = Mover { frontend: v.frontend, disk: &disks[v.disk], copies: 0, failed: 0 };
    let round = ring.backend.serve(&mut mover, BUDGET);
    v.copies += mover.copies;
    if round.notify {
        let _ = evtchn::send(ring.port);
    }
    if let Some(e) = round.cut_off {
        println!("dom0: blk: d{} vbd {}: cut off ({e:?})", v.frontend.0, v.devid);
        v.cut = true;
        disconnect(store, v, XenbusState::Closing);
        return false;
    }
    round.more
}

/// The connected rings of the virtio disk's VBDs, by index into the VBDs.
struct VirtioRings<'a>(&'a mut [VbdConn]);

impl Rings for VirtioRings<'_> {
    fn ring(&mut self, key: usize) -> Option<VbdRing<'_>> {
        let v = self.0.get_mut(key)?;
        let slice = v.slice?;
        let frontend = v.frontend;
        let persistent = v.persistent;
        let ring = v.ring.as_mut()?;
        // A blkif ring holds 32 requests a page.
        let entries = 32 * ring.handles.len();
        Some(VbdRing { backend: &mut ring.backend, frontend, port: ring.port, slice, persistent, entries })
    }
}

/// One round of the virtio disk: answers what it finished, takes requests off the rings
/// woken (`all`: every ring), flushes when quiet, publishes; cuts off a frontend with
/// impossible indices. Whether requests are left on a ring.
///
/// The rings are taken from in turn, from the `round % connected`-th connected one on: the
/// first one may take every free disk slot, so it is a different ring each round (always the same one first, a
/// frontend keeping its ring full starved every ring after it: 176 answers against
/// 106301 in 12 s, io-vbd-flood).
fn serve_virtio(store: &mut Store, server: &mut Server<VirtioDisk>, vbds: &mut [VbdConn], woke: impl Fn(EvtchnPort) -> bool, all: bool, round: u64) -> bool {
    // The disk's finished requests noted (their slots free), refilled from the rings (the
    // disk told of each), and only then answered: the disk waits for no answering.
    server.collect();
    let mut more = false;
    let n = vbds.len();
    // The first ring this round: the next connected ring of the disk in turn (counting
    // every VBD instead would ask a ring after a closed one first twice as often).
    let served = |k: &usize| vbds[*k].slice.is_some() && vbds[*k].ring.is_some();
    let m = (0..n).filter(served).count() as u64;
    let first = (0..n).filter(served).nth(round.checked_rem(m).unwrap_or(0) as usize).unwrap_or(0);
    for i in 0..n {
        let k = (first + i) % n;
        let Some(port) = vbds[k].ring.as_ref().filter(|_| vbds[k].slice.is_some()).map(|r| r.port) else { continue };
        if !(all || woke(port) || vbds[k].left) {
            continue;
        }
        let left = server.take(&mut VirtioRings(vbds), k, BUDGET);
        let v = &mut vbds[k];
        v.left = left;
        // A ring waiting for a disk slot waits for the disk's interrupt, not in a spin.
        more |= left && server.can_start();
        if let Some(e) = v.ring.as_ref().and_then(|r| r.backend.cut_off()) {
            println!("dom0: blk: d{} vbd {}: cut off ({e:?})", v.frontend.0, v.devid);
            v.cut = true;
            disconnect(store, v, XenbusState::Closing);
        }
    }
    server.answer_collected(&mut VirtioRings(vbds));
    // Answering freed bounce buffers a held request may wait for.
    more |= server.can_start() && vbds.iter().any(|v| v.left && v.ring.is_some());
    server.flush(&mut VirtioRings(vbds));
    server.publish(&mut VirtioRings(vbds));
    // What finished while this round ran is answered (and its slot refilled) at once.
    more || server.completions_waiting()
}

/// Domain 0's direct figure before the benchmark guest runs, and what it reads into.
struct Direct {
    before: crate::virtio::Bench,
    /// Frames of its own, a page per piece, one 64 KiB read each.
    pages: Vec<ArrayVec<Extent, 16>>,
    sectors: u64,
}

/// Domain 0 reading the virtio disk directly (the first `sectors` sectors): into its bounce
/// buffers (one piece per read, as many in flight as it has buffers) and into `pages`
/// (frames of its own, a page per piece, as many in flight as the disk takes: the VBD's
/// reads come as pages, at most that many in flight); the better of the two. Only while
/// no VBD request is in flight.
fn direct_bench(server: &mut Server<VirtioDisk>, sectors: u64, pages: &[ArrayVec<Extent, 16>], when: &str) -> Result<crate::virtio::Bench, Failure> {
    let clock = guest_rt::time::Clock::new().map_err(|_| Failure::Setup("clock"))?;
    if !server.idle() {
        return Err(Failure::Setup("the direct benchmark with VBD requests in flight"));
    }
    let buffers: Vec<ArrayVec<Extent, 16>> = (0..server.buffers().len()).map(|i| [server.buffers().extent(i, CHUNK)].into_iter().collect()).collect();
    // SAFETY: the bounce buffers are domain 0's pool memory, idle while no VBD request is in
    // flight.
    let a = unsafe { crate::virtio::bench(server.disk(), &clock, sectors, &buffers) }.map_err(Failure::Setup)?;
    println!("dom0: blk: direct seq64k {when} {a}");
    // SAFETY: frames of domain 0's reservation past its initial mapping, used by nothing
    // else (never mapped; the device writes them, nobody reads them).
    let b = unsafe { crate::virtio::bench(server.disk(), &clock, sectors, pages) }.map_err(Failure::Setup)?;
    println!("dom0: blk: direct seq64k {when} pages {b}");
    Ok(if b.median > a.median { b } else { a })
}

/// The guest's figure (`data/vbench`, MB/s in hundredths, written by guest-blk
/// `mode=vbench bench=1`) beside domain 0's direct one, and their ratio.
fn bench_line(store: &mut Store, id: DomId, direct: &crate::virtio::Bench) {
    let Some(vbd) = read(store, &format!("/local/domain/{}/data/vbench", id.0)).and_then(|s| s.trim_end_matches('\0').parse::<u64>().ok()) else {
        println!("dom0: blk: d{} wrote no vbench figure", id.0);
        return;
    };
    let ratio = vbd * 100 / direct.median.max(1);
    println!(
        "dom0: blk: bench seq64k direct_mbps={}.{:02} direct_depth={} vbd_mbps={}.{:02} ratio={ratio}% (target 80%: {})",
        direct.median / 100,
        direct.median % 100,
        direct.depth,
        vbd / 100,
        vbd % 100,
        if ratio >= 80 { "met" } else { "missed" }
    );
}

fn report(v: &VbdConn) {
    println!(
        "dom0: blk: d{} vbd {} ended: {} ok, {} failed, {} grant copies, cut off: {}",
        v.frontend.0, v.devid, v.served.0, v.served.1, v.copies, v.cut
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    Hostile,
    Die,
    /// `serve=1`: a guest of the user's (`make run GUEST_DISK=`), with the command line
    /// after ` -- ` in domain 0's; nothing is expected of it but an end.
    Plain,
}

pub fn run(waiter: Waiter, cmdline: &[u8]) -> Result<(), Failure> {
    let good = option(cmdline, "good").unwrap_or(1).min(MAX_DOMAINS as u64) as usize;
    let hostile = option(cmdline, "hostile").unwrap_or(0).min((MAX_DOMAINS - good) as u64) as usize;
    let die = option(cmdline, "die").unwrap_or(0).min((MAX_DOMAINS - good - hostile) as u64) as usize;
    let serving = option(cmdline, "serve") == Some(1);
    let flood = option(cmdline, "flood").unwrap_or(0);
    // `copy=1`: the guests offer no persistent grants, so the virtio VBDs copy every request.
    let copy_only = option(cmdline, "copy") == Some(1);
    let seconds = option(cmdline, "seconds").unwrap_or(if serving { 24 * 3600 } else { 60 }).max(1);
    // The user's guest line: what follows ` -- ` in domain 0's own.
    let text = core::str::from_utf8(cmdline).unwrap_or("");
    let guest_line = text.split_once(" -- ").map_or("", |(_, rest)| rest).trim();
    let guest_kib = (option(cmdline, "guest_mem").unwrap_or(1).clamp(1, 4096) * 1024) as u32;
    let start = guest_rt::start_info();
    let mut frames = FreeFrames::new(start).ok_or(Failure::Setup("no free frames"))?;
    let mut past = frames
        .past_slack(start)
        .filter_map(|pfn| Some(Frame { pfn: Pfn(pfn), mfn: guest_rt::start_info::pfn_to_mfn(Pfn(pfn))? }));
    let vdisk = option(cmdline, "vdisk") == Some(1);
    let events = Events::init().map_err(|_| Failure::Setup("no events"))?;
    // The virtio disk's DMA pool first: it needs a run of the initial mapping's frames.
    let opened = if vdisk {
        let disk = crate::virtio::open(&mut frames, events).map_err(Failure::Setup)?;
        let buffers = Buffers::alloc(SLOTS).ok_or(Failure::Setup("the DMA pool has no room for the bounce buffers"))?;
        Some((disk, buffers))
    } else {
        None
    };
    guest_rt::heap::init(&mut frames, if vdisk { VDISK_HEAP_PAGES } else { HEAP_PAGES });
    // On the heap: it is large for domain 0's stack.
    let mut server = opened.map(|(disk, buffers)| Server::new(disk, buffers));
    let bounce = frames.take().ok_or(Failure::Setup("no bounce page"))?;
    let disks = load_disks(bounce, &mut past, vdisk)?;
    let vslices = match server.as_mut() {
        Some(server) => {
            let read_only = option(cmdline, "vdisk_ro") == Some(1) || server.disk().read_only();
            crate::virtio::vbd::slices(server.disk().sectors(), good + hostile + die, read_only).ok_or(Failure::Setup("the virtio disk is too small"))?
        }
        None => Vec::new(),
    };
    // Domain 0 reading the virtio disk directly, to compare with a guest reading its VBD:
    // into its bounce buffers (one piece per read, as many in flight as it has buffers),
    // and into frames of its own, a page per piece, as many in flight as the disk takes
    // (the VBD's reads come as pieces of pages, at most that many in flight). The better
    // of the two is the figure.
    let direct = match (server.as_mut(), option(cmdline, "bench")) {
        (Some(server), Some(1)) => {
            let mut pages: Vec<ArrayVec<Extent, 16>> = Vec::new();
            for _ in 0..DEPTH {
                let mut read = ArrayVec::new();
                for _ in 0..CHUNK / 4096 {
                    let frame = past.next().ok_or(Failure::Setup("domain 0 has no frames for its direct benchmark"))?;
                    read.push(Extent { addr: frame.mfn.0 << 12, len: 4096 });
                }
                pages.push(read);
            }
            let before = direct_bench(server, vslices[0].sectors, &pages, "before")?;
            Some(Direct { before, pages, sectors: vslices[0].sectors })
        }
        _ => None,
    };
    let vindex = disks.iter().map(|d| d.index + 1).max().unwrap_or(0);
    let cpus = phys()?.cpus;
    let before = settled(waiter)?;
    let mut store = Store::new();
    let mut served: Vec<Served> = Vec::new();
    let mut kinds: Vec<Kind> = Vec::new();
    let mut vbds: Vec<VbdConn> = Vec::new();
    for i in 0..good + hostile + die {
        let kind = if serving {
            Kind::Plain
        } else if i < good {
            Kind::Good
        } else if i < good + hostile {
            Kind::Hostile
        } else {
            Kind::Die
        };
        let mut line = ArrayString::<64>::new();
        let _ = write!(line, "mode={}", ["good", "hostile", "die", ""][kind as usize]);
        if let Some(slice) = vslices.get(i).filter(|_| kind == Kind::Good && disks.is_empty()) {
            // The guest checks the virtio disk's pattern, which names absolute sectors.
            line.clear();
            let _ = write!(line, "mode=vbench crash=1 base={}{}", slice.start, if direct.is_some() { " bench=1" } else { "" });
        }
        if let Some(slice) = vslices.get(i).filter(|_| kind == Kind::Hostile && disks.is_empty()) {
            // It attacks the virtio disk's slice; its good read checks the slice's pattern.
            let _ = write!(line, " base={}", slice.start);
        }
        if kind == Kind::Good && i as u64 + flood >= good as u64 {
            // A frontend hogging its VBD: every flooder must still get a share of the disk.
            line.clear();
            let _ = write!(line, "mode=flood seconds={}", FLOOD_SECONDS);
        }
        if copy_only && kind != Kind::Plain {
            let _ = write!(line, " persistent=0");
        }
        // A benchmark guest crashes on purpose after its flush: counted, not judged.
        let crashes = line.contains("crash=1");
        // The benchmark's 32 reads in flight need 512 pages of their own.
        let bench = line.contains("bench=1");
        let mem_kib = if bench { 4096 } else { 1024 };
        let mut new = spec(line.as_bytes(), kind == Kind::Hostile || crashes, mem_kib);
        if bench && cpus >= 2 {
            // The benchmark guest on a CPU of its own (the last), away from domain 0's
            // (as Xen deployments keep domain 0 on CPUs of its own): sharing one, each event
            // domain 0 sends it switches the CPU over to it.
            new = NewDomain { cpu: Some(cpus - 1), pinned: true, ..new };
        }
        if kind == Kind::Plain {
            new = NewDomain { cmdline: guest_line.as_bytes(), mem_kib: guest_kib, max_kib: guest_kib, ..new };
        }
        let id = control::create_domain(&new).map_err(|e| Failure::Control("CreateDomain", e))?;
        let window = frames.take().ok_or(Failure::Setup("no page to map a ring at"))?;
        let console_window = frames.take().ok_or(Failure::Setup("no page to map a console at"))?;
        let s = attach(&mut store, events, id, kind == Kind::Hostile, window.va(), console_window.va(), waiter.now())?;
        for (k, disk) in disks.iter().enumerate() {
            let w = frames.take().ok_or(Failure::Setup("no page to map a block ring at"))?;
            vbds.push(create_vbd(&mut store, id, served.len(), k, disk.desc(), None, (w.va(), 1))?);
        }
        if let Some(&slice) = vslices.get(i) {
            // Room for a ring of up to RING_PAGES pages: consecutive free pages (fewer, and a
            // smaller ring offered, if they are not).
            let w = frames.take().ok_or(Failure::Setup("no page to map a block ring at"))?;
            let mut pages = 1;
            while pages < RING_PAGES {
                match frames.take() {
                    Some(next) if next.pfn.0 == w.pfn.0 + pages as u64 => pages += 1,
                    _ => break,
                }
            }
            let pages = 1 << pages.ilog2();
            let desc = DiskDesc { index: vindex, read_only: slice.read_only, sectors: slice.sectors };
            println!("dom0: blk: d{} xvd{}: virtio sectors {}-{}", id.0, (b'a' + vindex as u8) as char, slice.start, slice.start + slice.sectors - 1);
            vbds.push(create_vbd(&mut store, id, served.len(), 0, desc, Some(slice), (w.va(), pages))?);
        }
        served.push(s);
        kinds.push(kind);
    }
    let dom_exc = bind_dom_exc(events)?;
    events.enable();
    for s in &served {
        control::unpause_domain(s.id).map_err(|e| Failure::Control("UnpauseDomain", e))?;
    }
    // Its time stamp starts the domains' clock (io-grub-*: boot to halt).
    println!("dom0: blk: {} domains unpaused", served.len());
    let deadline = waiter.now() + seconds * 1000 * MS;
    let mut rounds = 0u64;
    // TSC cycles of the loop before the virtio disk's rounds (stores, consoles, rings of
    // module disks).
    let mut other_cycles = 0u64;
    // The same for the domains' states (and the benchmark's direct run after its guest).
    let mut state_cycles = 0u64;
    let mut info_cycles = 0u64;
    // Where the loop's time goes: waits for an event (or the timer), and how long.
    let (mut waits, mut timeouts, mut waited_ns) = (0u64, 0u64, 0u64);
    let loop_begin = waiter.now();
    while served.iter().any(|s| !s.ended) {
        if waiter.now() > deadline {
            let now = waiter.now();
            for v in vbds.iter_mut() {
                disconnect(&mut store, v, XenbusState::Closed);
            }
            for s in served.iter_mut().filter(|s| !s.ended) {
                detach(&mut store, s, now);
            }
            return Err(Failure::OutOfBounds("the block domains did not all end in time"));
        }
        let round_begin = crate::virtio::rdtsc();
        let pending = PENDING.swap(0, Ordering::AcqRel);
        let woke = |port: EvtchnPort| pending & (1 << (port.0 % 64)) != 0;
        let mut more = false;
        for s in served.iter_mut().filter(|s| !s.ended) {
            if woke(s.console_port) || rounds.is_multiple_of(16) {
                drain_console(s, waiter.now());
            }
            if woke(s.port) || rounds.is_multiple_of(16) || s.conn.broken().is_none() {
                let r = s.conn.serve(&mut store, &s.page, STORE_BUDGET);
                if r.notify {
                    let _ = evtchn::send(s.port);
                }
                more |= r.more;
            }
        }
        for v in vbds.iter_mut().filter(|v| !v.closed) {
            if v.ring.is_none() {
                try_connect(&mut store, events, v, &disks);
            } else if v.slice.is_none() && (woke(v.ring.as_ref().map_or(EvtchnPort(0), |r| r.port)) || rounds.is_multiple_of(16)) {
                more |= serve(&mut store, v, &disks);
            }
        }
        let virtio_begin = crate::virtio::rdtsc();
        if let Some(server) = server.as_mut() {
            more |= serve_virtio(&mut store, server, &mut vbds, woke, rounds.is_multiple_of(16), rounds);
        }
        let virtio_end = crate::virtio::rdtsc();
        other_cycles += virtio_begin.wrapping_sub(round_begin);
        rounds += 1;
        let by_virq = woke(dom_exc);
        if by_virq || rounds.is_multiple_of(ENDING_POLL_ROUNDS) {
            for (i, s) in served.iter_mut().enumerate().filter(|(_, s)| !s.ended) {
                let asked = crate::virtio::rdtsc();
                let state = control::domain_info(s.id).map(|info| info.state).unwrap_or(DOMAIN_SHUTTING_DOWN);
                info_cycles += crate::virtio::rdtsc().wrapping_sub(asked);
                if state != DOMAIN_SHUTTING_DOWN {
                    continue;
                }
                println!("dom0: blk: d{} ended ({})", s.id.0, told(by_virq, dom_exc));
                if kinds[i] == Kind::Die {
                    // Destroyed with its ring mapped and its requests unserved; served
                    // once more (its grants are gone), then released.
                    let _ = control::destroy_domain(s.id);
                    for v in vbds.iter_mut().filter(|v| v.domain == i) {
                        let pending = v.ring.as_ref().map_or(0, |r| r.backend.counters().ok);
                        if v.slice.is_none() {
                            let _ = serve(&mut store, v, &disks);
                        }
                        // A virtio VBD's disk requests in flight complete into its frames,
                        // which stay the hypervisor's to free until domain 0 unmaps them.
                        println!("dom0: blk: d{} destroyed mid-request ({pending} answered before)", s.id.0);
                    }
                }
                if let Some(direct) = direct.as_ref() {
                    // Again now that the guest is done (the host's load drifts): the better
                    // of the two figures is what the guest is held against.
                    let after = match server.as_mut() {
                        Some(server) if server.idle() => direct_bench(server, direct.sectors, &direct.pages, "after")?,
                        _ => direct.before,
                    };
                    let best = if after.median > direct.before.median { after } else { direct.before };
                    bench_line(&mut store, s.id, &best);
                }
                for v in vbds.iter_mut().filter(|v| v.domain == i) {
                    disconnect(&mut store, v, XenbusState::Closed);
                    store.rm(&v.bpath);
                    report(v);
                }
                detach(&mut store, s, waiter.now());
            }
        }
        state_cycles += crate::virtio::rdtsc().wrapping_sub(virtio_end);
        if !more {
            let begin = waiter.now();
            let ready = || PENDING.load(Ordering::Acquire) != 0 || crate::virtio::interrupted();
            // The disk interrupts only while domain 0 waits (it looks for completions every
            // round it runs).
            let may_block = server.as_mut().is_none_or(|s| s.may_block());
            let woken = if !may_block {
                true
            } else if server.as_ref().is_some_and(|s| !s.idle()) {
                // The disk's interrupt comes: no timer to set (a hypercall, and the
                // hypervisor's timer programming) for each wait.
                events.wait_until(ready).map_err(|_| Failure::Setup("block"))?;
                true
            } else {
                waiter.wait_for(begin + 10 * MS, ready)?
            };
            if let Some(server) = server.as_mut() {
                server.running();
            }
            waits += 1;
            timeouts += u64::from(!woken);
            waited_ns += waiter.now().saturating_sub(begin);
        }
    }
    if let Some(server) = server.as_mut() {
        // Every ring is disconnected: the disk finishes what it has, the grants go.
        server.drain(&mut VirtioRings(&mut vbds));
        let st = server.stats;
        println!(
            "dom0: blk: virtio disk: {} requests in {} disk requests ({} zero-copy), {} grant copies in {} calls ({} Mcycles), {} grants mapped and {} unmapped ({} Mcycles), {} left mapped, {} flushes, {} interrupts, at most {} in flight",
            st.requests,
            st.disk_requests,
            st.zero_copy,
            st.grant_copies,
            st.copy_calls,
            st.copy_cycles / 1_000_000,
            st.maps,
            st.unmaps,
            st.map_cycles / 1_000_000,
            server.mapped_grants(),
            st.flushes,
            st.interrupts,
            st.max_in_flight
        );
        println!(
            "dom0: blk: virtio disk: {} Mcycles answering (with the disk's interrupts), {} taking and starting, {} notifying the disk, {} publishing ({} in {} event sends); busy {} Mcycles at an average depth of {}.{:02}; rings found empty {} times",
            st.complete_cycles / 1_000_000,
            st.take_cycles / 1_000_000,
            st.kick_cycles / 1_000_000,
            st.publish_cycles / 1_000_000,
            st.send_cycles / 1_000_000,
            st.sends,
            st.busy_cycles / 1_000_000,
            st.depth_cycles / st.busy_cycles.max(1),
            st.depth_cycles * 100 / st.busy_cycles.max(1) % 100,
            st.ring_dry
        );
        let c = server.disk().costs;
        println!(
            "dom0: blk: virtio disk (whole run): {} notifications ({} Mcycles), {} interrupts: status reads {} Mcycles, EOIs {} Mcycles",
            c.notifies,
            c.notify_cycles / 1_000_000,
            c.interrupts,
            c.isr_cycles / 1_000_000,
            c.eoi_cycles / 1_000_000
        );
        if server.mapped_grants() != 0 || st.maps != st.unmaps {
            return Err(Failure::OutOfBounds("grants mapped for the virtio disk were not all unmapped"));
        }
    }
    let busy_ms = waiter.now().saturating_sub(loop_begin) / MS;
    println!(
        "dom0: blk: loop: {rounds} rounds in {busy_ms} ms, {waits} waits ({timeouts} timed out) blocked {} ms; {} Mcycles on stores, consoles and rings of modules, {} on domain states ({} asking them)",
        waited_ns / MS,
        other_cycles / 1_000_000,
        state_cycles / 1_000_000,
        info_cycles / 1_000_000
    );
    println!("dom0: blk: served {} domains, {} vbds in {rounds} rounds", served.len(), vbds.len());
    for (i, v) in vbds.iter().enumerate() {
        let kind = kinds[v.domain];
        if kind == Kind::Good && (v.cut || v.served.0 == 0) {
            return Err(Failure::OutOfBounds("a good frontend was cut off or not served"));
        }
        // The hostile domain attacks its first VBD.
        if kind == Kind::Hostile && i == vbds.iter().position(|w| w.domain == v.domain).unwrap_or(i) && !v.cut {
            return Err(Failure::OutOfBounds("a hostile frontend was not cut off"));
        }
    }
    if store.domains().any(|d| d != 0) {
        return Err(Failure::OutOfBounds("a released domain left a store connection"));
    }
    expect_as_before(waiter, &before, Compare::FreeMemory, 5000)?;
    Ok(())
}
