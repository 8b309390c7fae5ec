//! The block frontend (cargo feature `blk`): one virtual block device served by a backend
//! in another domain (domain 0's blkback), connected as Linux's and Mini-OS's blkfront do
//! (`io/blkif.h`'s "Frontend XenBus Nodes"): the toolstack wrote `device/vbd/<devid>/`
//! (`backend`, `backend-id`, `state` 1); the frontend waits for the backend's `InitWait`,
//! reads `sectors`, `sector-size` and `mode`, grants one ring page to the backend, binds an
//! unbound port for it, writes `ring-ref`, `event-channel`, `protocol` and `state` 3
//! (Initialised), waits for the backend's `Connected` and writes its own `state` 4.
//!
//! Requests are the `blkif` crate's [`Frontend`] (ids naming in-flight slots, responses in
//! any order); data pages are the caller's, granted with [`GrantTable::grant`]. A caller
//! that grants its data pages once and reuses them for every request (never ending access
//! while connected) says so ([`Options::persistent`]): the frontend then writes
//! `feature-persistent = 1`, and a backend that offers it may keep those grants mapped (and
//! writable) for the connection's life. A caller that wants more requests in flight than
//! one page's 32 asks for a larger ring ([`Options::max_ring_order`]): when the backend
//! offers `max-ring-page-order`, the ring takes 2^order consecutive pages, granted as
//! `ring-ref0`, `ring-ref1`, ... with `ring-page-order`. Who uses it:
//! guest-blk (its checks, the round trip figure and its attacks). It never believes the
//! backend: a response to no request in flight, or impossible ring indices, is an error.

use alloc::format;
use alloc::string::String;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::grant_table::{GrantRef, GTF_PERMIT_ACCESS, GTF_READONLY};
use abi::ids::{DomId, EvtchnPort};
use abi::mmu::UVMF_INVLPG;
pub use blkif::frontend::{Completion, FrontError, Frontend, SubmitError};
pub use blkif::wire::{Request, Segment, OP_FLUSH_DISKCACHE, OP_READ, OP_WRITE, RSP_EOPNOTSUPP, RSP_ERROR, RSP_OKAY};
pub use blkif::xenbus::XenbusState;
use blkif::xenbus::{frontend_keys as fk, parse_u32, PROTOCOL_X86_64};
use xenring::RawMemory;

use crate::events::Events;
use crate::frames::{Frame, FreeFrames};
use crate::xs::{Xs, XsFail};
use crate::{evtchn, grants, hypercall, layout};

/// Why the device could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// A store call failed.
    Store(XsFail),
    /// A key the handshake needs is missing or malformed.
    BadKey(&'static str),
    /// The backend went to `Closing`/`Closed` (or another state it must not be in).
    BackendState(u32),
    /// No free frame for the ring or the grant table.
    NoFrame,
    /// The grant table, the port or the blocking call failed.
    Setup(&'static str),
    /// The backend broke the ring protocol.
    Protocol(FrontError),
}

impl From<XsFail> for BlkError {
    fn from(e: XsFail) -> Self {
        BlkError::Store(e)
    }
}

/// The domain's own grant table (version 1, its first frames), mapped at pages of its
/// own: entries from [`FIRST_REF`] are handed out in order.
pub struct GrantTable {
    va: u64,
    next: GrantRef,
    /// Entries in the frames mapped.
    entries: GrantRef,
}

/// Entries below this are the toolstack's (console, store) and a few spare.
pub const FIRST_REF: GrantRef = 8;
/// Version-1 entries in one table frame.
const ENTRIES: GrantRef = 512;
/// Table frames [`GrantTable::map_frames`] maps at most.
pub const MAX_TABLE_FRAMES: usize = 4;

impl GrantTable {
    /// Maps the table's first frame over the address of `frame` (a free frame of ours,
    /// given up for this).
    pub fn map(frame: Frame) -> Result<GrantTable, BlkError> {
        Self::map_frames(&[frame])
    }

    /// The same with as many table frames as `pages` (at most [`MAX_TABLE_FRAMES`]; free
    /// frames of ours, consecutive in the initial mapping), mapped over them in order.
    pub fn map_frames(pages: &[Frame]) -> Result<GrantTable, BlkError> {
        let first = pages.first().ok_or(BlkError::NoFrame)?;
        if pages.len() > MAX_TABLE_FRAMES || pages.iter().enumerate().any(|(i, p)| p.pfn.0 != first.pfn.0 + i as u64) {
            return Err(BlkError::Setup("grant table pages not consecutive"));
        }
        let mut frames = [0u64; MAX_TABLE_FRAMES];
        grants::setup_table(&mut frames[..pages.len()]).map_err(|_| BlkError::Setup("setup_table"))?;
        let va = first.va();
        for (i, mfn) in frames.iter().take(pages.len()).enumerate() {
            // SAFETY: the addresses are free frames', used for nothing else from now on.
            unsafe { hypercall::update_va_mapping(va + 4096 * i as u64, layout::kernel_rw_pte(mfn << 12), UVMF_INVLPG) }
                .map_err(|_| BlkError::Setup("map the grant table"))?;
        }
        Ok(GrantTable { va, next: FIRST_REF, entries: ENTRIES * pages.len() as GrantRef })
    }

    /// Grants `mfn` to `domid` (read-only or not) in the next free entry.
    pub fn grant(&mut self, domid: DomId, mfn: u64, readonly: bool) -> Result<GrantRef, BlkError> {
        if self.next >= self.entries {
            return Err(BlkError::Setup("grant table full"));
        }
        let gref = self.next;
        self.next += 1;
        self.set(gref, domid, mfn, readonly);
        Ok(gref)
    }

    /// (Re)writes entry `gref` (for attacks: a grant to another domain, or read-only).
    pub fn set(&mut self, gref: GrantRef, domid: DomId, mfn: u64, readonly: bool) {
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        // SAFETY: the table frames are mapped writable from `va` (`map_frames`); the entry
        // lies in them.
        unsafe { grants::write_v1(self.va, gref % self.entries, domid, mfn, flags) }
    }

    /// Ends access through `gref` if the grantee does not use it; whether it ended.
    pub fn end(&mut self, gref: GrantRef) -> bool {
        // SAFETY: as in `set`.
        unsafe { grants::end_access_v1(self.va, gref % self.entries) }
    }
}

/// The largest ring a frontend asks for: 2^2 pages (128 requests).
pub const MAX_RING_ORDER: u32 = 2;

/// What a frontend offers its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The caller grants its data pages once and reuses them for every request, never
    /// ending access while connected (`feature-persistent`).
    pub persistent: bool,
    /// The ring's pages, as a power of two, at most (up to [`MAX_RING_ORDER`] and what the
    /// backend offers).
    pub max_ring_order: u32,
}

static NOTIFIED: AtomicU64 = AtomicU64::new(0);

fn notified(_: EvtchnPort) {
    NOTIFIED.fetch_add(1, Ordering::AcqRel);
}

/// One connected VBD.
pub struct Blkfront {
    pub front: Frontend<RawMemory>,
    pub port: EvtchnPort,
    events: Events,
    /// The backend's domain and directory.
    pub backend_id: DomId,
    pub backend: String,
    /// The device's number (`device/vbd/<devid>`).
    pub devid: u32,
    /// Its size in 512-byte sectors.
    pub sectors: u64,
    pub read_only: bool,
    /// The ring page (for attacks that write its indices).
    pub ring_va: u64,
}

fn read_string(xs: &mut Xs, path: &str, key: &'static str) -> Result<String, BlkError> {
    let mut buf = [0u8; 128];
    let n = xs.read(0, path, &mut buf).map_err(|_| BlkError::BadKey(key))?;
    let text = core::str::from_utf8(&buf[..n]).map_err(|_| BlkError::BadKey(key))?;
    Ok(String::from(text.trim_end_matches('\0')))
}

fn read_number(xs: &mut Xs, path: &str, key: &'static str) -> Result<u64, BlkError> {
    let text = read_string(xs, path, key)?;
    text.parse().map_err(|_| BlkError::BadKey(key))
}

/// The backend's state.
pub fn backend_state(xs: &mut Xs, backend: &str) -> Result<u32, BlkError> {
    let mut buf = [0u8; 16];
    let n = xs.read(0, &format!("{backend}/state"), &mut buf)?;
    parse_u32(&buf[..n]).ok_or(BlkError::BadKey("state"))
}

/// Waits (on a watch of the backend's `state`) until the backend is in `want` or past it;
/// `Closing` or past it is an error unless `want` is one of those.
pub fn wait_backend(xs: &mut Xs, backend: &str, want: XenbusState) -> Result<(), BlkError> {
    let path = format!("{backend}/state");
    xs.watch(&path, "blkback")?;
    let mut event = [0u8; 256];
    let result = loop {
        let state = backend_state(xs, backend)?;
        let closing = XenbusState::Closing.raw();
        if state >= closing && want.raw() < closing {
            break Err(BlkError::BackendState(state));
        }
        if state >= want.raw() {
            break Ok(());
        }
        if let Err(e) = xs.next_event(&mut event) {
            break Err(e.into());
        }
    };
    let _ = xs.unwatch(&path, "blkback");
    result
}

impl Blkfront {
    /// Connects to `device/vbd/<devid>` (see the module documentation); the ring pages are
    /// taken from `frames`. Events must be enabled.
    pub fn connect(xs: &mut Xs, events: Events, frames: &mut FreeFrames, table: &mut GrantTable, devid: u32, options: Options) -> Result<Blkfront, BlkError> {
        let me = format!("device/vbd/{devid}");
        let backend = read_string(xs, &format!("{me}/{}", fk::BACKEND), "backend")?;
        let backend_id = read_number(xs, &format!("{me}/{}", fk::BACKEND_ID), "backend-id")?;
        let backend_id = DomId(u16::try_from(backend_id).map_err(|_| BlkError::BadKey("backend-id"))?);
        wait_backend(xs, &backend, XenbusState::InitWait)?;
        let sectors = read_number(xs, &format!("{backend}/sectors"), "sectors")?;
        if read_number(xs, &format!("{backend}/sector-size"), "sector-size")? != 512 {
            return Err(BlkError::BadKey("sector-size"));
        }
        let read_only = read_string(xs, &format!("{backend}/mode"), "mode")? == "r";
        // A ring of 2^order pages, as large as both ends allow (the backend's
        // `max-ring-page-order`, absent: one page), on consecutive free pages.
        let offered = read_number(xs, &format!("{backend}/max-ring-page-order"), "max-ring-page-order").unwrap_or(0);
        let order = u32::try_from(offered).unwrap_or(0).min(options.max_ring_order).min(MAX_RING_ORDER);
        let ring = frames.take().ok_or(BlkError::NoFrame)?;
        let mut ring_frames = [ring; 1 << MAX_RING_ORDER];
        for (i, slot) in ring_frames.iter_mut().enumerate().take(1 << order).skip(1) {
            *slot = frames.take().filter(|f| f.pfn.0 == ring.pfn.0 + i as u64).ok_or(BlkError::NoFrame)?;
        }
        let pages = 1usize << order;
        let ring_va = ring.va();
        // SAFETY: free frames of ours, consecutive from `ring_va` in the initial mapping,
        // used as the ring for the domain's life, shared with the backend only through
        // atomic and volatile accesses.
        let mem = unsafe { RawMemory::new(NonNull::new(ring_va as *mut u8).ok_or(BlkError::NoFrame)?, 4096 * pages) };
        let front = Frontend::new(mem, pages).map_err(|_| BlkError::Setup("ring layout"))?;
        let port = evtchn::alloc_unbound(backend_id).map_err(|_| BlkError::Setup("alloc_unbound"))?;
        events.set_handler(port, notified).map_err(|_| BlkError::Setup("port handler"))?;
        if order == 0 {
            let gref = table.grant(backend_id, ring.mfn.0, false)?;
            xs.write(0, &format!("{me}/{}", fk::RING_REF), format!("{gref}").as_bytes())?;
        } else {
            for (i, frame) in ring_frames.iter().take(pages).enumerate() {
                let gref = table.grant(backend_id, frame.mfn.0, false)?;
                xs.write(0, &format!("{me}/{}{i}", fk::RING_REF), format!("{gref}").as_bytes())?;
            }
            xs.write(0, &format!("{me}/{}", fk::RING_PAGE_ORDER), format!("{order}").as_bytes())?;
        }
        xs.write(0, &format!("{me}/{}", fk::EVENT_CHANNEL), format!("{}", port.0).as_bytes())?;
        xs.write(0, &format!("{me}/{}", fk::PROTOCOL), PROTOCOL_X86_64.as_bytes())?;
        if options.persistent {
            xs.write(0, &format!("{me}/{}", fk::FEATURE_PERSISTENT), b"1")?;
        }
        xs.write(0, &format!("{me}/{}", fk::STATE), format!("{}", XenbusState::Initialised.raw()).as_bytes())?;
        wait_backend(xs, &backend, XenbusState::Connected)?;
        xs.write(0, &format!("{me}/{}", fk::STATE), format!("{}", XenbusState::Connected.raw()).as_bytes())?;
        Ok(Blkfront { front, port, events, backend_id, backend, devid, sectors, read_only, ring_va })
    }

    /// Publishes what was submitted and notifies the backend if it asked.
    pub fn kick(&mut self) {
        if self.front.publish() {
            let _ = evtchn::send(self.port);
        }
    }

    /// The next completion, blocking for it.
    pub fn wait(&mut self) -> Result<Completion, BlkError> {
        self.wait_batch(1)
    }

    /// The next completion, blocking until `batch` responses are ready if none is (one
    /// event for several answers: for a frontend with many requests in flight; `batch` is
    /// cut to the requests in flight).
    pub fn wait_batch(&mut self, batch: u32) -> Result<Completion, BlkError> {
        loop {
            if let Some(c) = self.front.complete().map_err(BlkError::Protocol)? {
                return Ok(c);
            }
            let front = &mut self.front;
            let mut error = None;
            self.events
                .wait_until(|| match front.final_check_after(batch) {
                    Ok(ready) => ready,
                    Err(e) => {
                        error = Some(e);
                        true
                    }
                })
                .map_err(|_| BlkError::Setup("block"))?;
            if let Some(e) = error {
                return Err(BlkError::Protocol(e));
            }
        }
    }

    /// One request, sent and waited for: its status.
    pub fn io(&mut self, operation: u8, sector: u64, segments: &[Segment]) -> Result<i16, BlkError> {
        let id = self.front.submit(operation, self.devid as u16, sector, segments).map_err(|_| BlkError::Setup("ring full"))?;
        self.kick();
        let c = self.wait()?;
        if c.id != id {
            return Err(BlkError::Protocol(FrontError::UnknownId(c.id)));
        }
        Ok(c.status)
    }
}
