//! Domain 0's device service in the stress run (`make stress IO=1`, `io_kib=` on its line):
//! for every stress domain, its store (`xenstore`, as the `attach` of the store check:
//! its store grant mapped, its store port bound, its home written and the domain
//! introduced) and one VBD (`xvda`, devid 51712) on a RAM disk of `io_kib` KiB carved from
//! domain 0's own reservation, served through `blkif::backend::Backend` by grant copies;
//! and its console, as xenconsoled: its console grant mapped and its console port bound
//! before it first runs (so the hypervisor drains none of it), its ring relayed through
//! `guest_dom0::consoled` (each line printed after the domain's tag, `(d0) [dN] ...` on
//! the serial log, which the host tool reads with `protocol::console`). The workers print
//! their records into that ring.
//!
//! A domain's end: domain 0 binds `VIRQ_DOM_EXC`, which the hypervisor raises when a
//! domain shuts down; it then looks at every served domain and drains what is left in the
//! ring of each that ended (its last line too, newline or not) before anything of it is
//! released, and [`Devices::ended`] names the first (a stress domain never ends by itself:
//! the run fails). [`Devices::drain_consoles`] drains every ring (before domain 0's reports,
//! and after a failure before the destruction), [`Devices::detach_all`] drains each ring
//! a last time before it unmaps it. Domain 0's quiet test counts the console bytes taken
//! ([`Devices::activity`]) and waits for every worker's last report to come through
//! ([`Devices::all_reported`]).
//!
//! The RAM disks: frames of domain 0 past its initial mapping ([`FreeFrames::past_slack`]
//! after [`FreeFrames::whole_mapping`]), `io_kib / 4` for each domain, never mapped by
//! domain 0; each is filled with its pattern (sector `s` of domain `d` starts with the
//! 8 little-endian bytes of `d << 48 | s`, the rest of the sector is zero) by grant copies
//! from bounce pages, so a reader checks that it got its own disk's sectors. The windows
//! that rings are mapped at are pages of the initial mapping past the heap. [`Devices::new`]
//! computes what `n` domains need and refuses, with the figures, a domain 0 too small.
//!
//! Who calls it: `main.rs`'s stress plan ([`Devices::attach`] after each creation,
//! [`Devices::serve`] from every wait of domain 0's loop, [`Devices::detach_all`] before
//! the destruction, [`Devices::start_run`] once every VBD is connected: the workers' runs
//! start then). [`Devices::serve`] is one bounded round, driven by events: a domain's
//! store ring, block ring and console ring are looked at when their port fired (a handler
//! per port sets a bit in [`PENDING`]), and every [`SWEEP_ROUNDS`]-th round all of them
//! are, at most [`STORE_BUDGET`] store requests and [`BLK_BUDGET`] block requests per
//! domain per round and one console ring's worth of output.
//! It never blocks and never maps a disk frame.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use blkif::backend::{Backend, DataMover};
use blkif::check::{Vbd, Work};
use blkif::copies::{plan, DiskFrames, MAX_COPIES};
use blkif::xenbus::{backend_keys as bk, frontend_keys as fk, parse_u32, xvd_number, XenbusState, PROTOCOL_X86_64};
use guest_dom0::consoled::Relay;
use guest_rt::abi::console::{OUT_CONS_OFFSET, OUT_PROD_OFFSET};
use guest_rt::abi::control::DOMAIN_SHUTTING_DOWN;
use guest_rt::abi::grant_table::{GnttabCopy, GnttabCopyPtr, GnttabOp};
use guest_rt::abi::hypercall::Virq;
use guest_rt::abi::ids::{DomId, EvtchnPort, Pfn, VcpuId};
use guest_rt::control;
use guest_rt::events::Events;
use guest_rt::frames::{Frame, FreeFrames};
use guest_rt::time::Clock;
use guest_rt::{evtchn, grants, println, StartInfo};
use protocol::worker::GO_NODE;
use xenring::RawMemory;
use xenstore::perms::{Perm, PermKind};
use xenstore::server::Connection;
use xenstore::Store;

use crate::attack::store::{map_ring, relay_line, unmap_ring, Mapped};

/// Store requests served per domain per round.
pub const STORE_BUDGET: usize = 4;
/// Block requests served per ring per round.
pub const BLK_BUDGET: u32 = 8;
/// Every this many rounds every ring is looked at, woken or not.
pub const SWEEP_ROUNDS: u64 = 16;
/// Bounce pages for filling the disks (one `GNTTABOP_copy` call fills this many pages).
const BOUNCE_PAGES: usize = 16;
/// Pages of domain 0's heap before any domain (the store's own nodes, the vectors).
const HEAP_BASE_PAGES: u64 = 32;
/// Heap pages per served domain: its store nodes and connection, its backend records,
/// with room to spare (the figure measured is printed in the `devices` record).
const HEAP_PAGES_PER_DOMAIN: u64 = 4;
/// Pages of the initial mapping each domain needs as windows: its store ring, its block
/// ring, its console ring.
pub const RING_PAGES: u64 = 3;
/// Drains of one console ring at a domain's end (each takes at most a ring): a domain that
/// ended writes no more, so the first finds all there is.
const FINAL_DRAINS: u32 = 4;
/// `xvda`.
const XVD_INDEX: u8 = 0;


/// Ports whose event came since the last round, one bit per port.
static PENDING: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

fn on_event(port: EvtchnPort) {
    let p = port.0 as usize % (64 * PENDING.len());
    PENDING[p / 64].fetch_or(1 << (p % 64), Ordering::AcqRel);
}

/// Whether any port has fired since the last round (for domain 0's waits).
pub fn pending() -> bool {
    PENDING.iter().any(|w| w.load(Ordering::Acquire) != 0)
}

/// Takes the pending bits.
fn take_pending() -> [u64; 16] {
    core::array::from_fn(|i| PENDING[i].swap(0, Ordering::AcqRel))
}

fn woke(bits: &[u64; 16], port: EvtchnPort) -> bool {
    let p = port.0 as usize % (64 * bits.len());
    bits[p / 64] & (1 << (p % 64)) != 0
}

/// Why the service could not start or attach a domain.
#[derive(Clone, Copy, Debug)]
pub enum DevError {
    /// Domain 0's reservation is too small for the disks: pages needed and had.
    DiskMemory { needed_pages: u64, have_pages: u64 },
    /// Domain 0's initial mapping is too small for the heap and ring windows.
    MappedMemory { needed_pages: u64, have_pages: u64 },
    Setup(&'static str),
}

impl fmt::Display for DevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DiskMemory { needed_pages, have_pages } => write!(
                f,
                "the RAM disks need {} KiB of domain 0's memory past its initial mapping, it has {} KiB: give domain 0 more (mem= on its line; make stress sizes it from N and IO_KIB)",
                needed_pages * 4,
                have_pages * 4
            ),
            Self::MappedMemory { needed_pages, have_pages } => write!(
                f,
                "the store heap and ring windows need {needed_pages} pages of domain 0's initial mapping, it has {have_pages}: fewer domains with IO"
            ),
            Self::Setup(what) => f.write_str(what),
        }
    }
}

/// A RAM disk: `pages` frames of domain 0 from pfn `first`.
#[derive(Clone, Copy)]
struct RamDisk {
    first: u64,
    pages: u64,
}

impl DiskFrames for RamDisk {
    fn frame(&self, index: u64) -> Option<u64> {
        (index < self.pages).then_some(())?;
        guest_rt::start_info::pfn_to_mfn(Pfn(self.first + index)).map(|mfn| mfn.0)
    }
}

/// A worker's `io` record (it prints only `iohist` lines after it) or `error` record (it
/// prints nothing after it).
fn is_last_report(text: &str) -> bool {
    matches!(
        protocol::record::Record::parse(text),
        Ok(protocol::record::Record::Io(_) | protocol::record::Record::Error(_))
    )
}

/// `GNTTABOP_copy` over `ops`; true when every one succeeded.
fn copy(ops: &mut [GnttabCopy]) -> bool {
    // SAFETY: `ops` are ours for the call; every page they name is domain 0's own frame or
    // a frontend's grant, which the hypervisor checks.
    let called = unsafe { grants::grant_table_op(GnttabOp::Copy, ops.as_mut_ptr(), ops.len() as u32) };
    called.is_ok() && ops.iter().all(|op| grants::status(op.status).is_ok())
}

/// Grant copies between one frontend's grants and its RAM disk.
struct Mover {
    frontend: DomId,
    disk: RamDisk,
}

impl DataMover for Mover {
    fn transfer(&mut self, work: &Work) -> bool {
        let mut ops = [GnttabCopy::default(); MAX_COPIES];
        let Ok(n) = plan(work, self.frontend, &self.disk, &mut ops) else { return false };
        copy(&mut ops[..n])
    }
    fn flush(&mut self) -> bool {
        // The disk is domain 0's memory: every copy is done when the hypercall returns.
        true
    }
}

/// A connected block ring.
struct Ring {
    backend: Backend<RawMemory>,
    port: EvtchnPort,
    handle: u32,
}

/// A served domain's console ring and its relay.
struct Console {
    port: EvtchnPort,
    handle: u32,
    page: Mapped,
    relay: Relay,
    /// Lines relayed so far.
    lines: u64,
    /// Bytes taken from the ring so far.
    bytes: u64,
    /// The worker's `io` record (after which it prints only its `iohist` lines) or an
    /// `error` record (after which it prints nothing) came through.
    reported: bool,
}

impl Console {
    /// Relays what the ring holds (at most one ring), notifying the guest when bytes were
    /// taken; returns the lines printed.
    fn drain(&mut self, id: DomId, now_ns: u64) -> u64 {
        self.drain_counted(id, now_ns).1
    }

    /// [`Self::drain`], also returning the bytes taken.
    fn drain_counted(&mut self, id: DomId, now_ns: u64) -> (u32, u64) {
        let mut lines = 0;
        let mut reported = false;
        let drained = self.relay.drain(&self.page, now_ns, &mut |d, text| {
            relay_line(d, text);
            lines += 1;
            reported |= is_last_report(text);
        });
        self.reported |= reported;
        if drained.bogus_reported {
            println!("dom0: io: d{}: console ring indices out of range; output ignored", id.0);
        }
        if drained.bytes > 0 {
            let _ = evtchn::send(self.port);
        }
        self.lines += lines;
        self.bytes += u64::from(drained.bytes);
        (drained.bytes, lines)
    }

    /// Relays everything left, the last partial line too (the domain ended or is about to
    /// be released); returns the lines printed.
    fn drain_to_end(&mut self, id: DomId, now_ns: u64) -> u64 {
        let mut lines = 0;
        for _ in 0..FINAL_DRAINS {
            let (bytes, drained) = self.drain_counted(id, now_ns);
            lines += drained;
            if bytes == 0 {
                break;
            }
        }
        let before = lines;
        self.relay.flush(now_ns, &mut |d, text| {
            relay_line(d, text);
            lines += 1;
        });
        self.lines += lines - before;
        lines
    }
}

/// One served domain.
struct Domain {
    id: DomId,
    console: Console,
    /// It shut down (seen after `VIRQ_DOM_EXC`); its console was drained to the end.
    ended: bool,
    store_port: EvtchnPort,
    store_handle: u32,
    store_page: Mapped,
    conn: Connection,
    disk: RamDisk,
    devid: u32,
    bpath: String,
    fpath: String,
    ring: Option<Ring>,
    ring_window: u64,
    /// The VBD is closed (refused, cut off or disconnected): never looked at again.
    closed: bool,
    cut: bool,
    /// Requests answered OK and with an error, once disconnected.
    served: (u64, u64),
}

/// The service; see the module documentation.
pub struct Devices {
    store: Store,
    domains: Vec<Domain>,
    events: Events,
    /// Frames of the initial mapping for ring windows.
    windows: FreeFrames,
    bounce: [Frame; BOUNCE_PAGES],
    /// The next disk frame and the end of those.
    next_disk: u64,
    disk_end: u64,
    disk_pages: u64,
    rounds: u64,
    heap_before: usize,
    clock: Clock,
    /// Domain 0's `VIRQ_DOM_EXC` port.
    dom_exc: EvtchnPort,
    /// The first served domain that ended by itself.
    first_ended: Option<DomId>,
    /// Console figures: rings taken, lines relayed, lines dropped over the relay's rate
    /// limit (of domains already detached; [`Self::consoles`] adds the others').
    consoles: u64,
    relayed_lines: u64,
    relay_dropped: u64,
}

impl Devices {
    /// Sets up for `n` domains with disks of `io_kib` KiB: the heap, the windows, the disk
    /// frames (checked: see [`DevError`]), `VIRQ_DOM_EXC`. Handlers are set on `events`;
    /// the caller enables events.
    pub fn new(start: &StartInfo, n: u64, io_kib: u64, events: Events, clock: Clock) -> Result<Self, DevError> {
        let mut frames = FreeFrames::whole_mapping(start).ok_or(DevError::Setup("no free frames"))?;
        let disk_pages = io_kib.div_ceil(4);
        let heap_pages = HEAP_BASE_PAGES + HEAP_PAGES_PER_DOMAIN * n;
        let mapped_needed = heap_pages + RING_PAGES * n + BOUNCE_PAGES as u64;
        if frames.remaining() < mapped_needed {
            return Err(DevError::MappedMemory { needed_pages: mapped_needed, have_pages: frames.remaining() });
        }
        let disks = frames.past_slack(start);
        let needed = disk_pages * n;
        if disks.end - disks.start < needed {
            return Err(DevError::DiskMemory { needed_pages: needed, have_pages: disks.end - disks.start });
        }
        let heap = guest_rt::heap::init(&mut frames, heap_pages as usize);
        if heap == 0 {
            return Err(DevError::Setup("no heap"));
        }
        let mut bounce = [Frame { pfn: Pfn(0), mfn: guest_rt::abi::ids::Mfn(0) }; BOUNCE_PAGES];
        for b in &mut bounce {
            *b = frames.take().ok_or(DevError::Setup("no bounce page"))?;
        }
        let dom_exc = evtchn::bind_virq(Virq::DomExc, VcpuId(0)).map_err(|_| DevError::Setup("bind VIRQ_DOM_EXC"))?;
        events.set_handler(dom_exc, on_event).map_err(|_| DevError::Setup("a handler for VIRQ_DOM_EXC"))?;
        let (heap_before, _) = guest_rt::heap::HEAP.usage();
        Ok(Self {
            store: Store::new(),
            domains: Vec::new(),
            events,
            windows: frames,
            bounce,
            next_disk: disks.start,
            disk_end: disks.end,
            disk_pages,
            rounds: 0,
            heap_before,
            clock,
            dom_exc,
            first_ended: None,
            consoles: 0,
            relayed_lines: 0,
            relay_dropped: 0,
        })
    }

    /// Fills `disk` with domain `id`'s pattern.
    fn fill(&self, id: DomId, disk: RamDisk) -> Result<(), DevError> {
        let own = |mfn: u64| GnttabCopyPtr { u: mfn, domid: DomId::SELF, offset: 0, _pad: 0 };
        let mut page = 0;
        while page < disk.pages {
            let count = (disk.pages - page).min(BOUNCE_PAGES as u64) as usize;
            let mut ops = [GnttabCopy::default(); BOUNCE_PAGES];
            for (k, op) in ops[..count].iter_mut().enumerate() {
                // SAFETY: a bounce frame of ours, mapped at its address, used only here.
                let bytes = unsafe { &mut *(self.bounce[k].va() as *mut [u8; 4096]) };
                bytes.fill(0);
                for s in 0..8u64 {
                    let sector = (page + k as u64) * 8 + s;
                    let word = u64::from(id.0) << 48 | sector;
                    bytes[s as usize * 512..][..8].copy_from_slice(&word.to_le_bytes());
                }
                let dest = disk.frame(page + k as u64).ok_or(DevError::Setup("a disk frame without an mfn"))?;
                *op = GnttabCopy { source: own(self.bounce[k].mfn.0), dest: own(dest), len: 4096, ..Default::default() };
            }
            if !copy(&mut ops[..count]) {
                return Err(DevError::Setup("filling a RAM disk"));
            }
            page += count as u64;
        }
        Ok(())
    }

    /// Serves `id` (created paused, not yet unpaused): its store, its console and a VBD on
    /// a new RAM disk.
    pub fn attach(&mut self, id: DomId) -> Result<(), DevError> {
        let disk = RamDisk { first: self.next_disk, pages: self.disk_pages };
        if self.next_disk + self.disk_pages > self.disk_end {
            return Err(DevError::Setup("out of disk frames"));
        }
        self.next_disk += self.disk_pages;
        self.fill(id, disk)?;
        let devices = control::domain_devices(id).map_err(|_| DevError::Setup("GetDomainDevices"))?;
        let store_window = self.windows.take().ok_or(DevError::Setup("no store window"))?.va();
        let ring_window = self.windows.take().ok_or(DevError::Setup("no ring window"))?.va();
        let console_window = self.windows.take().ok_or(DevError::Setup("no console window"))?.va();
        // The console first: once its port is bound, the ring is domain 0's alone.
        let console_handle =
            map_ring(id, devices.console_gref, console_window).map_err(|_| DevError::Setup("the console grant"))?;
        let console_port = evtchn::bind_interdomain(id, EvtchnPort(devices.console_port))
            .map_err(|_| DevError::Setup("bind to the console port"))?;
        self.events.set_handler(console_port, on_event).map_err(|_| DevError::Setup("a handler for the console port"))?;
        let console = Console {
            port: console_port,
            handle: console_handle,
            page: Mapped(console_window),
            relay: Relay::new(id.0, self.clock.now_ns()),
            lines: 0,
            bytes: 0,
            reported: false,
        };
        self.consoles += 1;
        let store_handle = map_ring(id, devices.store_gref, store_window).map_err(|_| DevError::Setup("the store grant"))?;
        let store_port =
            evtchn::bind_interdomain(id, EvtchnPort(devices.store_port)).map_err(|_| DevError::Setup("bind to the store port"))?;
        self.events.set_handler(store_port, on_event).map_err(|_| DevError::Setup("a handler for the store port"))?;
        let name = format!("stress{}", id.0);
        self.store.create_domain(id.0, &name).map_err(|_| DevError::Setup("the domain's home"))?;
        let devid = xvd_number(XVD_INDEX).ok_or(DevError::Setup("xvda"))?;
        let (bpath, fpath) = self.write_vbd(id, devid, disk).map_err(|_| DevError::Setup("the VBD's store nodes"))?;
        self.domains.push(Domain {
            id,
            console,
            ended: false,
            store_port,
            store_handle,
            store_page: Mapped(store_window),
            conn: Connection::new(id.0),
            disk,
            devid,
            bpath,
            fpath,
            ring: None,
            ring_window,
            closed: false,
            cut: false,
            served: (0, 0),
        });
        Ok(())
    }

    /// The toolstack's and blkback's nodes for the VBD (as the blk check writes them).
    fn write_vbd(&mut self, id: DomId, devid: u32, disk: RamDisk) -> Result<(String, String), xenstore::XsError> {
        let d = id.0;
        let bpath = format!("/local/domain/0/backend/vbd/{d}/{devid}");
        let fpath = format!("/local/domain/{d}/device/vbd/{devid}");
        let s = &mut self.store;
        s.write_as(0, &bpath, b"")?;
        s.set_perms(&bpath, alloc::vec![Perm { domid: 0, kind: PermKind::None }, Perm { domid: d, kind: PermKind::Read }])?;
        s.write_as(0, &fpath, b"")?;
        s.set_perms(&fpath, alloc::vec![Perm { domid: d, kind: PermKind::None }, Perm { domid: 0, kind: PermKind::Read }])?;
        let state = |st: XenbusState| format!("{}", st.raw());
        let nodes = [
            (&bpath, bk::FRONTEND, fpath.clone()),
            (&bpath, bk::FRONTEND_ID, format!("{d}")),
            (&bpath, bk::ONLINE, String::from("1")),
            (&fpath, fk::BACKEND, bpath.clone()),
            (&fpath, fk::BACKEND_ID, String::from("0")),
            (&fpath, fk::VIRTUAL_DEVICE, format!("{devid}")),
            (&fpath, fk::DEVICE_TYPE, String::from("disk")),
            (&fpath, fk::STATE, state(XenbusState::Initialising)),
            (&bpath, bk::SECTORS, format!("{}", disk.pages * 8)),
            (&bpath, bk::SECTOR_SIZE, String::from("512")),
            (&bpath, bk::INFO, String::from("0")),
            (&bpath, bk::MODE, String::from("w")),
            (&bpath, bk::FEATURE_FLUSH_CACHE, String::from("1")),
            (&bpath, bk::STATE, state(XenbusState::InitWait)),
        ];
        for (dir, key, value) in nodes {
            s.write_as(0, &format!("{dir}/{key}"), value.as_bytes())?;
        }
        Ok((bpath, fpath))
    }

    /// One bounded round (see the module documentation); true when a ring has more
    /// waiting than its budget took.
    pub fn serve(&mut self) -> bool {
        let bits = take_pending();
        let sweep = self.rounds.is_multiple_of(SWEEP_ROUNDS);
        self.rounds += 1;
        let now = self.clock.now_ns();
        if woke(&bits, self.dom_exc) {
            self.look_for_endings(now);
        }
        let mut more = false;
        for d in &mut self.domains {
            if !d.ended && (woke(&bits, d.console.port) || sweep) {
                self.relayed_lines += d.console.drain(d.id, now);
            }
            let store_woke = woke(&bits, d.store_port);
            if (store_woke || sweep) && d.conn.broken().is_none() {
                let r = d.conn.serve(&mut self.store, &d.store_page, STORE_BUDGET);
                if r.notify {
                    let _ = evtchn::send(d.store_port);
                }
                more |= r.more;
            }
            if d.closed {
                continue;
            }
            match d.ring.as_mut() {
                None if store_woke || sweep => try_connect(&mut self.store, self.events, d),
                None => {}
                Some(ring) if woke(&bits, ring.port) || sweep => {
                    let mut mover = Mover { frontend: d.id, disk: d.disk };
                    let round = ring.backend.serve(&mut mover, BLK_BUDGET);
                    if round.notify {
                        let _ = evtchn::send(ring.port);
                    }
                    if let Some(e) = round.cut_off {
                        println!("dom0: io: d{} vbd {}: cut off ({e:?})", d.id.0, d.devid);
                        d.cut = true;
                        disconnect(&mut self.store, d, XenbusState::Closing);
                    } else {
                        more |= round.more;
                    }
                }
                Some(_) => {}
            }
        }
        more
    }

    /// After `VIRQ_DOM_EXC`: every served domain that shut down (or is gone) has its
    /// console drained to the end, while its ring is still mapped.
    fn look_for_endings(&mut self, now: u64) {
        for d in self.domains.iter_mut().filter(|d| !d.ended) {
            let state = control::domain_info(d.id).map(|info| info.state).unwrap_or(DOMAIN_SHUTTING_DOWN);
            if state != DOMAIN_SHUTTING_DOWN {
                continue;
            }
            d.ended = true;
            let lines = d.console.drain_to_end(d.id, now);
            self.relayed_lines += lines;
            println!("dom0: io: d{} ended (VIRQ_DOM_EXC); {lines} console lines drained after it", d.id.0);
            self.first_ended.get_or_insert(d.id);
        }
    }

    /// The first served domain that ended by itself, if one did.
    pub fn ended(&self) -> Option<DomId> {
        self.first_ended
    }

    /// Relays what every console ring holds, to the end (before domain 0 reports, and
    /// after a failure before it destroys the domains).
    pub fn drain_consoles(&mut self) {
        let now = self.clock.now_ns();
        for d in self.domains.iter_mut().filter(|d| !d.ended) {
            self.relayed_lines += d.console.drain_to_end(d.id, now);
        }
    }

    /// What the served domains have had done so far, as a count that grows while any of
    /// them is busy with its devices: requests answered, console bytes taken (for domain
    /// 0's quiet test: a worker blocked on a read, or waiting for room in its console ring,
    /// takes no CPU time but is not finished).
    pub fn activity(&self) -> u64 {
        let f = self.figures();
        let console: u64 = self.domains.iter().map(|d| d.console.bytes).sum();
        f.requests + f.failed + console
    }

    /// Whether every served domain's console has relayed its `io` record (or an `error`
    /// record), or the domain ended: domain 0's quiet test waits for it, so that a host
    /// stall of a CPU's thread longer than its window does not pass for the workers' end.
    pub fn all_reported(&self) -> bool {
        self.domains.iter().all(|d| d.console.reported || d.ended)
    }

    /// The `consoles` record's figures now.
    pub fn consoles(&self) -> protocol::record::Consoles {
        protocol::record::Consoles {
            relayed: self.consoles,
            lines: self.relayed_lines,
            dropped: self.relay_dropped + self.domains.iter().map(|d| d.console.relay.dropped_lines).sum::<u64>(),
        }
    }

    /// Starts the run: writes `stress-go` in every served domain's home (owned by domain
    /// 0, readable by the domain), which each worker waits for before its role's run, and
    /// makes the next round a sweep, so that the watch events go out at once.
    pub fn start_run(&mut self) -> Result<(), DevError> {
        for d in &self.domains {
            let path = format!("/local/domain/{}/{GO_NODE}", d.id.0);
            self.store.write_as(0, &path, b"1").map_err(|_| DevError::Setup("the go node"))?;
            self.store
                .set_perms(&path, alloc::vec![Perm { domid: 0, kind: PermKind::None }, Perm { domid: d.id.0, kind: PermKind::Read }])
                .map_err(|_| DevError::Setup("the go node's permissions"))?;
        }
        self.rounds = self.rounds.next_multiple_of(SWEEP_ROUNDS);
        Ok(())
    }

    /// VBDs connected now.
    pub fn connected(&self) -> usize {
        self.domains.iter().filter(|d| d.ring.is_some()).count()
    }

    /// The `devices` record's figures now.
    pub fn figures(&self) -> protocol::record::Devices {
        let (heap, _) = guest_rt::heap::HEAP.usage();
        let served = self.domains.len() as u64;
        let (mut requests, mut failed) = (0, 0);
        for d in &self.domains {
            let (ok, bad) = d.ring.as_ref().map_or(d.served, |r| {
                let c = r.backend.counters();
                (c.ok, c.failed)
            });
            requests += ok;
            failed += bad;
        }
        protocol::record::Devices {
            served,
            connected: self.connected() as u64,
            dom0_heap_bytes: (heap.saturating_sub(self.heap_before) as u64).checked_div(served).unwrap_or(0),
            ring_pages: RING_PAGES,
            disk_kib: self.disk_pages * 4,
            requests,
            failed,
            cut: self.domains.iter().filter(|d| d.cut).count() as u64,
        }
    }

    /// Undoes every [`Self::attach`]: consoles drained to the end, rings unmapped, ports
    /// closed, homes removed and domains released from the store (before domain 0 destroys
    /// them).
    pub fn detach_all(&mut self) {
        let now = self.clock.now_ns();
        for mut d in core::mem::take(&mut self.domains) {
            if !d.ended {
                self.relayed_lines += d.console.drain_to_end(d.id, now);
            }
            self.relay_dropped += d.console.relay.dropped_lines;
            if d.console.lines == 0 {
                use guest_dom0::consoled::ConsolePage;
                let (cons, prod) = (d.console.page.load_u32(OUT_CONS_OFFSET), d.console.page.load_u32(OUT_PROD_OFFSET));
                let info = control::domain_info(d.id);
                println!("dom0: io: d{}: nothing came through its console ring (out_cons {cons}, out_prod {prod}; {info:?})", d.id.0);
            }
            let _ = self.events.clear_handler(d.console.port);
            let _ = evtchn::close(d.console.port);
            unmap_ring(d.console.handle, d.console.page.0);
            disconnect(&mut self.store, &mut d, XenbusState::Closed);
            self.store.rm(&d.bpath);
            unmap_ring(d.store_handle, d.store_page.0);
            let _ = self.events.clear_handler(d.store_port);
            let _ = evtchn::close(d.store_port);
            self.store.destroy_domain(d.id.0);
        }
    }
}

fn read(store: &mut Store, path: &str) -> Option<String> {
    String::from_utf8(store.read_as(0, path).ok()?).ok()
}

fn set_state(store: &mut Store, bpath: &str, state: XenbusState) {
    let _ = store.write_as(0, &format!("{bpath}/{}", bk::STATE), format!("{}", state.raw()).as_bytes());
}

/// Connects `d`'s VBD once its frontend says `Initialised`; refuses (backend `Closed`)
/// what was not offered.
fn try_connect(store: &mut Store, events: Events, d: &mut Domain) {
    let state = read(store, &format!("{}/{}", d.fpath, fk::STATE)).and_then(|s| XenbusState::parse(s.as_bytes()));
    match state {
        Some(XenbusState::Initialised | XenbusState::Connected) => {}
        Some(XenbusState::Closing | XenbusState::Closed) => return refuse(store, d, "the frontend closed"),
        _ => return,
    }
    let number = |store: &mut Store, key: &str| read(store, &format!("{}/{key}", d.fpath)).and_then(|s| parse_u32(s.as_bytes()));
    let protocol = read(store, &format!("{}/{}", d.fpath, fk::PROTOCOL));
    let order = number(store, fk::RING_PAGE_ORDER);
    let (Some(gref), Some(port)) = (number(store, fk::RING_REF), number(store, fk::EVENT_CHANNEL)) else {
        return refuse(store, d, "no ring-ref or event-channel");
    };
    if protocol.is_some_and(|p| p != PROTOCOL_X86_64) || order.is_some_and(|o| o != 0) {
        return refuse(store, d, "a protocol or ring size not offered");
    }
    let Ok(handle) = map_ring(d.id, gref, d.ring_window) else {
        return refuse(store, d, "its ring grant could not be mapped");
    };
    let Ok(local) = evtchn::bind_interdomain(d.id, EvtchnPort(port)) else {
        unmap_ring(handle, d.ring_window);
        return refuse(store, d, "its event channel could not be bound");
    };
    let _ = events.set_handler(local, on_event);
    // SAFETY: the ring page is mapped at `ring_window` until `disconnect` unmaps it; the
    // frontend writes it concurrently, and the ring reaches it only by atomic and volatile
    // accesses.
    let mem = unsafe { RawMemory::new(NonNull::new(d.ring_window as *mut u8).expect("a window address"), 4096) };
    match Backend::new(mem, 1, Vbd { sectors: d.disk.pages * 8, read_only: false }) {
        Ok(backend) => {
            d.ring = Some(Ring { backend, port: local, handle });
            set_state(store, &d.bpath, XenbusState::Connected);
        }
        Err(_) => {
            let _ = evtchn::close(local);
            unmap_ring(handle, d.ring_window);
            refuse(store, d, "the ring layout");
        }
    }
}

fn refuse(store: &mut Store, d: &mut Domain, why: &str) {
    println!("dom0: io: d{} vbd {}: refused: {why}", d.id.0, d.devid);
    set_state(store, &d.bpath, XenbusState::Closed);
    d.closed = true;
}

/// Unmaps `d`'s block ring and closes its port.
fn disconnect(store: &mut Store, d: &mut Domain, state: XenbusState) {
    if let Some(ring) = d.ring.take() {
        let c = ring.backend.counters();
        d.served = (c.ok, c.failed);
        let _ = evtchn::close(ring.port);
        unmap_ring(ring.handle, d.ring_window);
    }
    set_state(store, &d.bpath, state);
    d.closed = true;
}
