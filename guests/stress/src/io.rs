//! The worker's VBD (`io_kib=` on its command line, `make stress IO=1`): guest-rt's
//! blkfront on the one VBD domain 0 serves it (a RAM disk of `io_kib` KiB whose sector `s`
//! starts with the 8 little-endian bytes of `domid << 48 | s`), and the reads the worker
//! makes, each timed from just before the request is published to the moment its response
//! is taken off the ring, and each sector's first 8 bytes checked against this domain's
//! pattern (another domain's disk, or stale data, would not match).
//!
//! Who calls it: `main.rs`'s `run` ([`Disk::connect`] after ballooning, which returns once
//! domain 0 has written `protocol::worker::GO_NODE` in this domain's home (every VBD connected: the role's
//! run starts then), [`Disk::read_all`] at once: every domain but the hogs reads its whole
//! disk at the same time, the hogs after their run, so that the reads stay out of their
//! fairness window; then a request now and then from the timer roles, [`Disk::report`] at
//! the end). A request not answered within
//! [`ANSWER_TIMEOUT_NS`] counts as lost and ends this domain's I/O (its slot stays in
//! flight). It waits for answers by polling its port (`SCHEDOP_poll` with a timeout),
//! never by spinning.

use guest_rt::blkfront::{Options, Blkfront, GrantTable, Segment, OP_READ, RSP_OKAY};
use guest_rt::events::Events;
use guest_rt::frames::{Frame, FreeFrames};
use guest_rt::time::Clock;
use guest_rt::xs::Xs;
use guest_rt::StartInfo;
use protocol::histogram::Histogram;
use protocol::record::{self, IoResult, Record};
use protocol::worker::GO_NODE;
use protocol::{DomId, Role};

/// Data pages granted to the backend: the segments of one request.
pub const PAGES: usize = 8;
/// How long a request may go unanswered before it counts as lost.
pub const ANSWER_TIMEOUT_NS: u64 = 5_000_000_000;
/// Heap pages for the store client.
const HEAP_PAGES: usize = 8;

/// Why the VBD could not be set up.
#[derive(Clone, Copy, Debug)]
pub enum IoError {
    Frames,
    Events,
    Store,
    NoVbd,
    Connect,
    Grant,
}

/// A connected VBD and what its reads measured.
pub struct Disk {
    front: Blkfront,
    events: Events,
    clock: Clock,
    domid: DomId,
    pages: [(Frame, u32); PAGES],
    hist: Histogram,
    requests: u64,
    failed: u64,
    bad_data: u64,
    lost: u64,
    max_ns: u64,
    /// The next sector of the occasional reads.
    next: u64,
}

impl Disk {
    /// Connects to the first VBD in `device/vbd` (through the store); events are on after.
    pub fn connect(start: &StartInfo, domid: DomId, clock: Clock) -> Result<Self, IoError> {
        let mut frames = FreeFrames::new(start).ok_or(IoError::Frames)?;
        if guest_rt::heap::init(&mut frames, HEAP_PAGES) == 0 {
            return Err(IoError::Frames);
        }
        let events = Events::init().map_err(|_| IoError::Events)?;
        let mut xs = Xs::open(events).map_err(|_| IoError::Store)?;
        events.enable();
        let mut table = GrantTable::map(frames.take().ok_or(IoError::Frames)?).map_err(|_| IoError::Grant)?;
        let mut list = [0u8; 64];
        let n = xs.directory(0, "device/vbd", &mut list).map_err(|_| IoError::NoVbd)?;
        let devid = list[..n]
            .split(|&b| b == 0)
            .find_map(|w| core::str::from_utf8(w).ok()?.parse().ok())
            .ok_or(IoError::NoVbd)?;
        // Its pages are granted once and reused for every read (persistent grants).
        let front = Blkfront::connect(&mut xs, events, &mut frames, &mut table, devid, Options { persistent: true, max_ring_order: 0 }).map_err(|_| IoError::Connect)?;
        let mut pages = [(Frame { pfn: guest_rt::abi::ids::Pfn(0), mfn: guest_rt::abi::ids::Mfn(0) }, 0); PAGES];
        for page in &mut pages {
            let frame = frames.take().ok_or(IoError::Frames)?;
            let gref = table.grant(front.backend_id, frame.mfn.0, false).map_err(|_| IoError::Grant)?;
            *page = (frame, gref);
        }
        wait_go(&mut xs)?;
        Ok(Self {
            front,
            events,
            clock,
            domid,
            pages,
            hist: Histogram::new(),
            requests: 0,
            failed: 0,
            bad_data: 0,
            lost: 0,
            max_ns: 0,
            next: 0,
        })
    }

    /// Whether the disk still takes requests (nothing lost).
    pub fn usable(&self) -> bool {
        self.lost == 0
    }

    /// Reads `count` pages (at most [`PAGES`]) from `sector` (a multiple of 8) in one
    /// request, times it and checks every sector.
    fn read(&mut self, sector: u64, count: usize) {
        if !self.usable() {
            return;
        }
        let count = count.min(PAGES);
        let segments: [Segment; PAGES] = core::array::from_fn(|k| Segment { gref: self.pages[k].1, first_sect: 0, last_sect: 7 });
        for (frame, _) in &self.pages[..count] {
            page_bytes(*frame).fill(0xee);
        }
        self.requests += 1;
        let sent = self.clock.now_ns();
        let Ok(id) = self.front.front.submit(OP_READ, self.front.devid as u16, sector, &segments[..count]) else {
            self.failed += 1;
            return;
        };
        self.front.kick();
        let Some(status) = self.answer(id, sent + ANSWER_TIMEOUT_NS) else {
            self.lost += 1;
            say!("stress-guest: d{}: read of sector {sector} not answered", self.domid.0);
            return;
        };
        let took = self.clock.now_ns().saturating_sub(sent);
        self.hist.record(took);
        self.max_ns = self.max_ns.max(took);
        if status != RSP_OKAY {
            self.failed += 1;
            return;
        }
        let ok = self.pages[..count].iter().enumerate().all(|(k, (frame, _))| {
            let bytes = page_bytes(*frame);
            (0..8u64).all(|s| {
                let want = u64::from(self.domid.0) << 48 | (sector + k as u64 * 8 + s);
                bytes[s as usize * 512..][..8] == want.to_le_bytes()
            })
        });
        if !ok {
            self.bad_data += 1;
        }
    }

    /// The status of request `id`, waiting (polling the port, events masked so that the
    /// pending bit stays for the poll) until `deadline`; `None` when it did not come.
    fn answer(&mut self, id: u64, deadline: u64) -> Option<i16> {
        loop {
            match self.front.front.complete() {
                Ok(Some(c)) if c.id == id => return Some(c.status),
                // An answer to no request of ours in flight: the backend is broken.
                Ok(Some(_)) | Err(_) => return None,
                Ok(None) => {}
            }
            self.events.disable();
            let ready = self.front.front.final_check();
            if !matches!(ready, Ok(false)) {
                self.events.enable();
                if ready.is_err() {
                    return None;
                }
                continue;
            }
            if self.clock.now_ns() >= deadline {
                self.events.enable();
                return None;
            }
            let _ = self.events.poll(&[self.front.port], deadline);
            self.events.enable();
        }
    }

    /// Reads the whole disk, [`PAGES`] pages a request.
    pub fn read_all(&mut self) {
        let sectors = self.front.sectors;
        let mut sector = 0;
        while sector < sectors && self.usable() {
            let pages = ((sectors - sector) / 8).min(PAGES as u64) as usize;
            if pages == 0 {
                break;
            }
            self.read(sector, pages);
            sector += pages as u64 * 8;
        }
    }

    /// One page, at the next place round the disk.
    pub fn read_one(&mut self) {
        let pages = self.front.sectors / 8;
        if pages == 0 {
            return;
        }
        let sector = (self.next % pages) * 8;
        self.next += 1;
        self.read(sector, 1);
    }

    /// The `io` and `iohist` records.
    pub fn report(&self, role: Role) {
        let io = IoResult {
            domid: self.domid,
            requests: self.requests,
            failed: self.failed,
            bad_data: self.bad_data,
            lost: self.lost,
            max_ns: self.max_ns,
        };
        say!("{}", Record::Io(io));
        record::io_hist_lines(self.domid, role, &self.hist, |line| say!("{line}"));
    }
}

/// Waits (on a watch) until domain 0 has written `protocol::worker::GO_NODE`.
fn wait_go(xs: &mut Xs) -> Result<(), IoError> {
    xs.watch(GO_NODE, "go").map_err(|_| IoError::Store)?;
    let mut buf = [0u8; 8];
    let mut event = [0u8; 64];
    let result = loop {
        if xs.read(0, GO_NODE, &mut buf).is_ok() {
            break Ok(());
        }
        if xs.next_event(&mut event).is_err() {
            break Err(IoError::Store);
        }
    };
    let _ = xs.unwatch(GO_NODE, "go");
    result
}

fn page_bytes(frame: Frame) -> &'static mut [u8; 4096] {
    // SAFETY: a free frame of ours, mapped at its address, used only as this data page
    // (the backend writes it through grant copies while a request is in flight, and this
    // domain reads it only after the answer).
    unsafe { &mut *(frame.va() as *mut [u8; 4096]) }
}
