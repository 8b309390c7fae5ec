//! Serving one domain's store ring (`struct xenstore_domain_interface`): requests are read
//! from `req` between `req_cons` and `req_prod`, reassembled, answered through the
//! [`Store`], and the queued output is written into `rsp` up to what `rsp_cons` leaves
//! free. Domain 0's server (`guests/dom0`) calls [`Connection::serve`] for each domain
//! whose port fired, and again while it has work left.
//!
//! Nothing the guest writes is trusted: the producer index it writes (`req_prod`) and the
//! consumer index (`rsp_cons`) are read once per pass, a producer more than a ring ahead of
//! what was consumed (or a consumer ahead of what was produced) is a protocol error, as is
//! a header longer than the payload maximum: the connection is then marked broken
//! (`error` in the page says why, as xenstored's `XENSTORE_SERVER_FEATURE_ERROR`) and never
//! served again; the other domains are not affected. Each pass takes at most `budget`
//! requests, so one busy domain cannot hold the server (fairness between domains is the
//! caller's round-robin over [`Connection::serve`]).

use alloc::vec::Vec;

use crate::store::Store;
use crate::wire::{self, Fed, Reader};
use crate::DomId;

/// The ring page, as the server reaches it (a mapped grant; plain memory in tests). Every
/// access is a single load or store the guest may race with.
pub trait RingPage {
    fn load_u32(&self, offset: usize) -> u32;
    fn store_u32(&self, offset: usize, value: u32);
    fn load_u8(&self, offset: usize) -> u8;
    fn store_u8(&self, offset: usize, value: u8);
}

/// One domain's connection to the server.
#[derive(Debug)]
pub struct Connection {
    pub domid: DomId,
    reader: Reader,
    /// The output message being written, and how much of it is in the ring already.
    sending: Option<(Vec<u8>, usize)>,
    broken: Option<u32>,
    /// Requests answered.
    pub requests: u64,
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// The guest should be notified (responses produced, or requests consumed from a full
    /// ring).
    pub notify: bool,
    /// Work is left (the budget ran out); output waiting for room in `rsp` is not.
    pub more: bool,
}

impl Connection {
    pub fn new(domid: DomId) -> Connection {
        Connection { domid, reader: Reader::default(), sending: None, broken: None, requests: 0 }
    }

    /// Why the connection was cut off (`XENSTORE_ERROR_*`), if it was.
    pub fn broken(&self) -> Option<u32> {
        self.broken
    }

    fn cut(&mut self, page: &dyn RingPage, error: u32) -> Served {
        self.broken = Some(error);
        page.store_u32(wire::ERROR_OFFSET, error);
        Served::default()
    }

    /// Answers at most `budget` requests and writes what output fits.
    pub fn serve(&mut self, store: &mut Store, page: &dyn RingPage, budget: usize) -> Served {
        if self.broken.is_some() {
            return Served::default();
        }
        let mut served = Served::default();
        let mut handled = 0;
        loop {
            // Output first: replies make room for more requests to be read.
            match self.write_output(store, page) {
                Err(error) => return self.cut(page, error),
                Ok(wrote) => served.notify |= wrote,
            }
            if handled >= budget {
                served.more = true;
                break;
            }
            // Impossible indices cut the domain off even while its requests are not read.
            let cons = page.load_u32(wire::REQ_CONS_OFFSET);
            let prod = page.load_u32(wire::REQ_PROD_OFFSET);
            let Some(waiting) = wire::ring_pending(cons, prod) else { return self.cut(page, wire::ERROR_RINGIDX) };
            if !store.may_read_requests(self.domid) {
                // Its replies wait for it to read them; it is served again once it does.
                break;
            }
            if waiting == 0 {
                break;
            }
            // Bytes up to the end of one message (or what is there).
            let mut taken = 0u32;
            let mut message = None;
            let mut chunk = [0u8; 64];
            while taken < waiting && message.is_none() {
                let n = (waiting - taken).min(chunk.len() as u32);
                for (i, b) in chunk[..n as usize].iter_mut().enumerate() {
                    *b = page.load_u8(wire::REQ_OFFSET + wire::ring_slot(cons.wrapping_add(taken + i as u32)));
                }
                match self.reader.feed(&chunk[..n as usize]) {
                    Err(_) => return self.cut(page, wire::ERROR_PROTO),
                    Ok(Fed::Partial(k)) => taken += k as u32,
                    Ok(Fed::Message(k, m)) => {
                        taken += k as u32;
                        message = Some(m);
                    }
                }
            }
            page.store_u32(wire::REQ_CONS_OFFSET, cons.wrapping_add(taken));
            // A client waits for room only when its ring was full.
            served.notify |= waiting == wire::RING_SIZE;
            match message {
                Some(m) => {
                    store.handle(self.domid, &m);
                    self.requests += 1;
                    handled += 1;
                }
                None => break,
            }
        }
        // Output waiting for room in `rsp` is not work left: the ring is full, and the
        // guest notifies when it reads from a full ring (a caller that went round again at
        // once would spin for a client that never reads).
        served
    }

    /// Writes queued output into `rsp`; true when it wrote anything.
    fn write_output(&mut self, store: &mut Store, page: &dyn RingPage) -> Result<bool, u32> {
        let mut wrote = false;
        loop {
            if self.sending.is_none() {
                match store.pop_output(self.domid) {
                    Some(msg) => self.sending = Some((msg, 0)),
                    None => return Ok(wrote),
                }
            }
            let cons = page.load_u32(wire::RSP_CONS_OFFSET);
            let prod = page.load_u32(wire::RSP_PROD_OFFSET);
            // The guest consumed what was never produced: its indices are garbage.
            let used = wire::ring_pending(cons, prod).ok_or(wire::ERROR_RINGIDX)?;
            let room = wire::RING_SIZE - used;
            if room == 0 {
                return Ok(wrote);
            }
            let (msg, done) = self.sending.as_mut().expect("set above");
            let n = (room as usize).min(msg.len() - *done);
            for i in 0..n {
                page.store_u8(wire::RSP_OFFSET + wire::ring_slot(prod.wrapping_add(i as u32)), msg[*done + i]);
            }
            page.store_u32(wire::RSP_PROD_OFFSET, prod.wrapping_add(n as u32));
            *done += n;
            wrote |= n > 0;
            if *done == msg.len() {
                self.sending = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode, Header, MsgType};
    use core::cell::RefCell;

    struct Page(RefCell<[u8; 4096]>);

    impl RingPage for Page {
        fn load_u32(&self, o: usize) -> u32 {
            let p = self.0.borrow();
            u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]])
        }
        fn store_u32(&self, o: usize, v: u32) {
            self.0.borrow_mut()[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn load_u8(&self, o: usize) -> u8 {
            self.0.borrow()[o]
        }
        fn store_u8(&self, o: usize, v: u8) {
            self.0.borrow_mut()[o] = v;
        }
    }

    /// The guest's side: puts a request in `req`.
    fn send(page: &Page, bytes: &[u8]) {
        let prod = page.load_u32(wire::REQ_PROD_OFFSET);
        for (i, &b) in bytes.iter().enumerate() {
            page.store_u8(wire::REQ_OFFSET + wire::ring_slot(prod.wrapping_add(i as u32)), b);
        }
        page.store_u32(wire::REQ_PROD_OFFSET, prod.wrapping_add(bytes.len() as u32));
    }

    /// The guest's side: takes everything in `rsp`.
    fn receive(page: &Page) -> Vec<u8> {
        let cons = page.load_u32(wire::RSP_CONS_OFFSET);
        let prod = page.load_u32(wire::RSP_PROD_OFFSET);
        let out = (0..prod.wrapping_sub(cons)).map(|i| page.load_u8(wire::RSP_OFFSET + wire::ring_slot(cons.wrapping_add(i)))).collect();
        page.store_u32(wire::RSP_CONS_OFFSET, prod);
        out
    }

    fn setup() -> (Store, Page, Connection) {
        let mut s = Store::new();
        s.create_domain(1, "one").unwrap();
        (s, Page(RefCell::new([0; 4096])), Connection::new(1))
    }

    #[test]
    fn requests_in_the_ring_get_replies_in_the_ring() {
        let (mut s, page, mut conn) = setup();
        send(&page, &encode(MsgType::Write, 1, 0, b"data/k\0v"));
        send(&page, &encode(MsgType::Read, 2, 0, b"data/k\0"));
        let served = conn.serve(&mut s, &page, 8);
        assert!(served.notify);
        let out = receive(&page);
        let first = Header::parse(&out).unwrap();
        assert_eq!((first.ty, first.req_id), (MsgType::Write as u32, 1));
        let second = Header::parse(&out[16 + first.len as usize..]).unwrap();
        assert_eq!((second.ty, second.req_id), (MsgType::Read as u32, 2));
        assert_eq!(&out[32 + first.len as usize..], b"v");
    }

    #[test]
    fn replies_larger_than_the_ring_go_in_pieces_and_the_budget_holds() {
        let (mut s, page, mut conn) = setup();
        s.write_as(0, "/local/domain/1/data/big", &[b'x'; 2000]).unwrap();
        send(&page, &encode(MsgType::Read, 1, 0, b"data/big\0"));
        let mut got = Vec::new();
        for _ in 0..10 {
            conn.serve(&mut s, &page, 1);
            got.extend(receive(&page));
        }
        assert_eq!(got.len(), 16 + 2000);
        for i in 0..5 {
            send(&page, &encode(MsgType::Read, i, 0, b"name\0"));
        }
        let served = conn.serve(&mut s, &page, 2);
        assert!(served.more, "the budget stopped it");
    }

    #[test]
    fn garbage_indices_cut_the_domain_off_alone() {
        let (mut s, page, mut conn) = setup();
        page.store_u32(wire::REQ_PROD_OFFSET, 5000);
        assert_eq!(conn.serve(&mut s, &page, 8), Served::default());
        assert_eq!(conn.broken(), Some(wire::ERROR_RINGIDX));
        assert_eq!(page.load_u32(wire::ERROR_OFFSET), wire::ERROR_RINGIDX);
        // Never served again, even with good indices.
        page.store_u32(wire::REQ_PROD_OFFSET, 0);
        send(&page, &encode(MsgType::Read, 1, 0, b"name\0"));
        conn.serve(&mut s, &page, 8);
        assert!(receive(&page).is_empty());
        // A consumer index past the producer is garbage too.
        let (mut s, page, mut conn) = setup();
        page.store_u32(wire::RSP_CONS_OFFSET, 77);
        send(&page, &encode(MsgType::Read, 1, 0, b"name\0"));
        conn.serve(&mut s, &page, 8);
        assert_eq!(conn.broken(), Some(wire::ERROR_RINGIDX));
    }

    #[test]
    fn a_header_past_the_payload_maximum_cuts_the_domain_off() {
        let (mut s, page, mut conn) = setup();
        let h = Header { ty: 2, req_id: 1, tx_id: 0, len: 5000 };
        send(&page, &h.to_bytes());
        conn.serve(&mut s, &page, 8);
        assert_eq!(conn.broken(), Some(wire::ERROR_PROTO));
    }

    #[test]
    fn a_client_that_never_reads_its_replies_leaves_no_work_and_a_bounded_queue() {
        let (mut s, page, mut conn) = setup();
        s.write_as(0, "/local/domain/1/data/big", &[b'x'; 2000]).unwrap();
        for i in 0..40 {
            send(&page, &encode(MsgType::Read, i, 0, b"data/big\0"));
        }
        let first = conn.serve(&mut s, &page, 64);
        assert!(first.notify && !first.more, "{first:?}: nothing to do until the client reads");
        // Its requests are no longer read once its output passes the bound.
        let queued: usize = core::iter::from_fn(|| s.pop_output(1)).map(|m| m.len()).sum();
        assert!(queued <= crate::store::OUTPUT_BYTES + 2016, "{queued} bytes queued");
        assert!(page.load_u32(wire::REQ_CONS_OFFSET) < 40 * 25, "every request was read");
    }

    #[test]
    fn garbage_indices_cut_off_a_client_whose_requests_are_not_read() {
        let (mut s, page, mut conn) = setup();
        s.write_as(0, "/local/domain/1/data/big", &[b'x'; 2000]).unwrap();
        for i in 0..40 {
            send(&page, &encode(MsgType::Read, i, 0, b"data/big\0"));
        }
        conn.serve(&mut s, &page, 64);
        // Its output is past the bound (its requests are not read), and it writes garbage.
        let prod = page.load_u32(wire::REQ_PROD_OFFSET);
        page.store_u32(wire::REQ_PROD_OFFSET, prod.wrapping_add(50_000));
        conn.serve(&mut s, &page, 64);
        assert_eq!(conn.broken(), Some(wire::ERROR_RINGIDX), "cut off though its requests wait");
    }

    proptest::proptest! {
        /// Whatever the guest writes into its page, the server neither panics nor writes
        /// outside the page, and either serves or cuts the domain off.
        #[test]
        fn random_pages_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 4096), rounds in 1usize..5) {
            let (mut s, _, mut conn) = setup();
            let mut arr = [0u8; 4096];
            arr.copy_from_slice(&bytes);
            let page = Page(RefCell::new(arr));
            for _ in 0..rounds {
                conn.serve(&mut s, &page, 4);
            }
        }
    }
}
