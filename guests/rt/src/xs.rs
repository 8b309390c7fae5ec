//! The store client (cargo feature `xs`): requests to domain 0's store over the ring
//! `start_info` names (`store_mfn`, a frame of the reservation in the initial mapping, and
//! `store_evtchn`), as Linux's and Mini-OS's xenbus do: a request is written into `req`
//! (header then payload, `req_prod` moved after them), the store port notified, and the
//! caller blocks on the port until the reply is whole in `rsp`; watch events that arrive
//! meanwhile are kept (a few; the rest are counted and dropped) for [`Xs::next_event`].
//!
//! Messages are the `xenstore` crate's wire format (one definition for both ends). Who
//! uses it: guests that talk to the store (guest-xs). One vCPU at a time. It never trusts
//! the other end's indices beyond the ring: a producer more than a ring ahead is an error.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use abi::ids::{EvtchnPort, Pfn};
use xenstore::wire::{Header, MsgType, XsError, HEADER_SIZE, PAYLOAD_MAX};

pub use xenstore::wire;

use crate::events::Events;
use crate::{evtchn, layout, start_info};

/// Why a store call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsFail {
    /// The store answered with this error.
    Store(XsError),
    /// No store ring in `start_info`, or it is outside the initial mapping.
    NoRing,
    /// The request does not fit a message.
    TooLong,
    /// The reply's indices or header made no sense, or the reply was not for us.
    Protocol,
    /// The reply did not fit the caller's buffer.
    Small,
    /// Blocking failed.
    Block,
}

/// Watch events kept while waiting for replies.
const KEPT_EVENTS: usize = 4;
/// Longest watch event kept.
const EVENT_BYTES: usize = 256;

static NOTIFIED: AtomicU64 = AtomicU64::new(0);

fn notified(_: EvtchnPort) {
    NOTIFIED.fetch_add(1, Ordering::AcqRel);
}

/// A connection to the store.
pub struct Xs {
    page: u64,
    port: EvtchnPort,
    events: Events,
    req_id: u32,
    buffer: [u8; HEADER_SIZE + PAYLOAD_MAX],
    kept: [([u8; EVENT_BYTES], usize); KEPT_EVENTS],
    nr_kept: usize,
    /// Watch events dropped for want of room.
    pub dropped_events: u64,
}

impl Xs {
    /// The store ring `start_info` names, with a handler on its port (events must be
    /// enabled by the caller for blocking to wake).
    pub fn open(events: Events) -> Result<Xs, XsFail> {
        let info = start_info::start_info();
        if info.store_mfn.0 == 0 || info.store_evtchn.0 == 0 {
            return Err(XsFail::NoRing);
        }
        let pfn = start_info::mfn_list().iter().position(|m| m.0 == info.store_mfn.0).ok_or(XsFail::NoRing)?;
        let page = layout::pfn_to_virt(Pfn(pfn as u64)).ok_or(XsFail::NoRing)?;
        events.set_handler(info.store_evtchn, notified).map_err(|_| XsFail::NoRing)?;
        Ok(Xs {
            page,
            port: info.store_evtchn,
            events,
            req_id: 0,
            buffer: [0; HEADER_SIZE + PAYLOAD_MAX],
            kept: [([0; EVENT_BYTES], 0); KEPT_EVENTS],
            nr_kept: 0,
            dropped_events: 0,
        })
    }

    /// The ring page's address (for tests that write it directly).
    pub fn page(&self) -> u64 {
        self.page
    }

    /// The store's port.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    fn index(&self, offset: usize) -> &'static AtomicU32 {
        // SAFETY: the offsets are aligned u32 fields of the ring page, mapped for the
        // guest's life; the store writes them concurrently, hence atomics.
        unsafe { &*((self.page + offset as u64) as *const AtomicU32) }
    }

    fn byte_at(&self, offset: usize) -> *mut u8 {
        (self.page + offset as u64) as *mut u8
    }

    /// Writes `bytes` into `req`, waiting for room (the store is notified when it must make
    /// room; the caller notifies once the whole message is in).
    fn put(&mut self, bytes: &[u8]) -> Result<(), XsFail> {
        let mut done = 0;
        while done < bytes.len() {
            // Noted before the indices are read, so that a notification in between is not lost.
            let seen = NOTIFIED.load(Ordering::Acquire);
            let cons = self.index(wire::REQ_CONS_OFFSET).load(Ordering::Acquire);
            let prod = self.index(wire::REQ_PROD_OFFSET).load(Ordering::Relaxed);
            let used = wire::ring_pending(cons, prod).ok_or(XsFail::Protocol)?;
            let room = (wire::RING_SIZE - used) as usize;
            if room == 0 {
                let _ = evtchn::send(self.port);
                self.wait(seen)?;
                continue;
            }
            let n = room.min(bytes.len() - done);
            for (i, &b) in bytes[done..done + n].iter().enumerate() {
                let at = wire::REQ_OFFSET + wire::ring_slot(prod.wrapping_add(i as u32));
                // SAFETY: `at` is inside the request ring of the mapped page.
                unsafe { self.byte_at(at).write_volatile(b) };
            }
            self.index(wire::REQ_PROD_OFFSET).store(prod.wrapping_add(n as u32), Ordering::Release);
            done += n;
        }
        Ok(())
    }

    /// Blocks until the store has notified since the count was `seen`.
    fn wait(&self, seen: u64) -> Result<(), XsFail> {
        self.events.wait_until(|| NOTIFIED.load(Ordering::Acquire) != seen).map_err(|_| XsFail::Block)
    }

    /// Takes one whole message from `rsp` into the buffer (waiting for it); returns its
    /// header.
    fn take_message(&mut self) -> Result<Header, XsFail> {
        let mut have = 0usize;
        let mut want = HEADER_SIZE;
        let mut header = None;
        loop {
            let seen = NOTIFIED.load(Ordering::Acquire);
            let cons = self.index(wire::RSP_CONS_OFFSET).load(Ordering::Relaxed);
            let prod = self.index(wire::RSP_PROD_OFFSET).load(Ordering::Acquire);
            let avail = wire::ring_pending(cons, prod).ok_or(XsFail::Protocol)? as usize;
            if avail == 0 {
                self.wait(seen)?;
                continue;
            }
            let n = avail.min(want - have);
            for i in 0..n {
                let at = wire::RSP_OFFSET + wire::ring_slot(cons.wrapping_add(i as u32));
                // SAFETY: `at` is inside the response ring of the mapped page.
                self.buffer[have + i] = unsafe { self.byte_at(at).read_volatile() };
            }
            self.index(wire::RSP_CONS_OFFSET).store(cons.wrapping_add(n as u32), Ordering::Release);
            // The store waits for room only when the ring was full (as Linux's xenbus).
            if avail == wire::RING_SIZE as usize {
                let _ = evtchn::send(self.port);
            }
            have += n;
            if have == HEADER_SIZE && header.is_none() {
                let h = Header::parse(&self.buffer[..HEADER_SIZE]).map_err(|_| XsFail::Protocol)?;
                header = Some(h);
                want = HEADER_SIZE + h.len as usize;
            }
            if have == want {
                return header.ok_or(XsFail::Protocol);
            }
        }
    }

    /// Sends one request made of `args` (each followed by a NUL unless `raw_last`: the last
    /// argument goes as is, as a write's value does) and copies the reply's payload into
    /// `out`; returns its length.
    pub fn request(&mut self, ty: MsgType, tx: u32, args: &[&[u8]], raw_last: bool, out: &mut [u8]) -> Result<usize, XsFail> {
        let len: usize = args.iter().map(|a| a.len() + 1).sum::<usize>() - usize::from(raw_last && !args.is_empty());
        if len > PAYLOAD_MAX {
            return Err(XsFail::TooLong);
        }
        self.req_id = self.req_id.wrapping_add(1);
        let header = Header { ty: ty as u32, req_id: self.req_id, tx_id: tx, len: len as u32 };
        self.put(&header.to_bytes())?;
        for (i, a) in args.iter().enumerate() {
            self.put(a)?;
            if !(raw_last && i == args.len() - 1) {
                self.put(&[0])?;
            }
        }
        let _ = evtchn::send(self.port);
        loop {
            let h = self.take_message()?;
            let payload = &self.buffer[HEADER_SIZE..HEADER_SIZE + h.len as usize];
            if h.ty == MsgType::WatchEvent as u32 {
                if self.nr_kept < KEPT_EVENTS && payload.len() <= EVENT_BYTES {
                    self.kept[self.nr_kept].0[..payload.len()].copy_from_slice(payload);
                    self.kept[self.nr_kept].1 = payload.len();
                    self.nr_kept += 1;
                } else {
                    self.dropped_events += 1;
                }
                continue;
            }
            if h.req_id != self.req_id {
                return Err(XsFail::Protocol);
            }
            if h.ty == MsgType::Error as u32 {
                return Err(XsFail::Store(XsError::from_payload(payload).ok_or(XsFail::Protocol)?));
            }
            if payload.len() > out.len() {
                return Err(XsFail::Small);
            }
            out[..payload.len()].copy_from_slice(payload);
            return Ok(payload.len());
        }
    }

    /// Reads `path` into `out`; returns the value's length.
    pub fn read(&mut self, tx: u32, path: &str, out: &mut [u8]) -> Result<usize, XsFail> {
        self.request(MsgType::Read, tx, &[path.as_bytes()], false, out)
    }

    pub fn write(&mut self, tx: u32, path: &str, value: &[u8]) -> Result<(), XsFail> {
        self.request(MsgType::Write, tx, &[path.as_bytes(), value], true, &mut [0; 8]).map(drop)
    }

    pub fn mkdir(&mut self, tx: u32, path: &str) -> Result<(), XsFail> {
        self.request(MsgType::Mkdir, tx, &[path.as_bytes()], false, &mut [0; 8]).map(drop)
    }

    pub fn rm(&mut self, tx: u32, path: &str) -> Result<(), XsFail> {
        self.request(MsgType::Rm, tx, &[path.as_bytes()], false, &mut [0; 8]).map(drop)
    }

    /// The children of `path`, NUL-separated, into `out`.
    pub fn directory(&mut self, tx: u32, path: &str, out: &mut [u8]) -> Result<usize, XsFail> {
        self.request(MsgType::Directory, tx, &[path.as_bytes()], false, out)
    }

    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsFail> {
        self.request(MsgType::Watch, 0, &[path.as_bytes(), token.as_bytes()], false, &mut [0; 8]).map(drop)
    }

    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsFail> {
        self.request(MsgType::Unwatch, 0, &[path.as_bytes(), token.as_bytes()], false, &mut [0; 8]).map(drop)
    }

    /// Starts a transaction; returns its id.
    pub fn transaction_start(&mut self) -> Result<u32, XsFail> {
        let mut out = [0u8; 16];
        let n = self.request(MsgType::TransactionStart, 0, &[b""], false, &mut out)?;
        let text = core::str::from_utf8(out[..n].strip_suffix(b"\0").unwrap_or(&out[..n])).map_err(|_| XsFail::Protocol)?;
        text.parse().map_err(|_| XsFail::Protocol)
    }

    /// Ends transaction `tx`, committing it or not (`Store(Eagain)`: a conflict, retry).
    pub fn transaction_end(&mut self, tx: u32, commit: bool) -> Result<(), XsFail> {
        self.request(MsgType::TransactionEnd, tx, &[if commit { b"T" } else { b"F" }], false, &mut [0; 8]).map(drop)
    }

    /// The next watch event (path and token, NUL-separated) into `out`, blocking for it.
    pub fn next_event(&mut self, out: &mut [u8]) -> Result<usize, XsFail> {
        if self.nr_kept > 0 {
            let (bytes, len) = self.kept[0];
            self.kept.rotate_left(1);
            self.nr_kept -= 1;
            let n = len.min(out.len());
            out[..n].copy_from_slice(&bytes[..n]);
            return Ok(n);
        }
        let h = loop {
            let h = self.take_message()?;
            if h.ty == MsgType::WatchEvent as u32 {
                break h;
            }
        };
        let payload = &self.buffer[HEADER_SIZE..HEADER_SIZE + h.len as usize];
        let n = payload.len().min(out.len());
        out[..n].copy_from_slice(&payload[..n]);
        Ok(n)
    }
}
