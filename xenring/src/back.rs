//! The backend's end of a ring: it consumes requests and produces responses
//! (Xen's `struct *_back_ring`, `BACK_RING_INIT`, `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`,
//! `RING_FINAL_CHECK_FOR_REQUESTS`).

use core::marker::PhantomData;

use crate::{header, mb, rmb, wmb, Entry, Layout, LayoutError, PushError, RingError, RingIdx, RingMemory, MAX_ENTRY_BYTES};

/// The backend's private state over a shared ring.
pub struct BackRing<M, Req, Rsp> {
    mem: M,
    layout: Layout,
    /// Responses written (published or not).
    pub(crate) rsp_prod_pvt: RingIdx,
    /// Requests consumed.
    pub(crate) req_cons: RingIdx,
    /// The last `req_prod` read and found sound: requests up to here may be consumed.
    pub(crate) req_seen: RingIdx,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<M: RingMemory, Req: Entry, Rsp: Entry> BackRing<M, Req, Rsp> {
    /// Attaches to a ring the frontend initialised (`BACK_RING_INIT`: private indices 0).
    /// Nothing in the shared header is trusted or written.
    pub fn attach(mem: M, layout: Layout) -> Result<Self, LayoutError> {
        if mem.len() < layout.bytes() || layout.entry_bytes() < Req::SIZE.max(Rsp::SIZE) {
            return Err(LayoutError::TooSmall { bytes: mem.len() });
        }
        Ok(Self { mem, layout, rsp_prod_pvt: 0, req_cons: 0, req_seen: 0, _entries: PhantomData })
    }

    /// The ring's geometry.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The memory the ring lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Requests consumed and not yet answered.
    pub fn unanswered(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Reads the frontend's `req_prod` and checks it: requests not yet answered may not
    /// exceed the ring (`RING_REQUEST_PROD_OVERFLOW`), and the producer may not move behind
    /// what was consumed. Returns the requests ready.
    pub fn poll_requests(&mut self) -> Result<u32, RingError> {
        let req_prod = self.mem.load_index(header::REQ_PROD);
        rmb();
        let ahead_of_answers = req_prod.wrapping_sub(self.rsp_prod_pvt);
        if ahead_of_answers > self.layout.entries() || ahead_of_answers < self.unanswered() {
            return Err(RingError::RequestProducer { req_prod, req_cons: self.req_cons, rsp_prod: self.rsp_prod_pvt });
        }
        self.req_seen = req_prod;
        Ok(req_prod.wrapping_sub(self.req_cons))
    }

    /// The next request (copied out of the ring once: the frontend may rewrite the slot,
    /// the copy does not change), reading `req_prod` again when the requests seen so far
    /// are consumed; `None` when there is none.
    pub fn next_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.req_seen == self.req_cons && self.poll_requests()? == 0 {
            return Ok(None);
        }
        let mut buf = [0u8; MAX_ENTRY_BYTES];
        self.mem.read(self.layout.slot(self.req_cons), &mut buf[..Req::SIZE]);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(Req::decode(&buf[..Req::SIZE])))
    }

    /// Writes a response into the next slot (responses need not follow the requests'
    /// order: the id inside says which it answers); the frontend sees it after
    /// [`publish_responses`](Self::publish_responses).
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), PushError> {
        if self.unanswered() == 0 {
            return Err(PushError::NothingToAnswer);
        }
        let mut buf = [0u8; MAX_ENTRY_BYTES];
        rsp.encode(&mut buf[..Rsp::SIZE]);
        self.mem.write(self.layout.slot(self.rsp_prod_pvt), &buf[..Rsp::SIZE]);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the responses written (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`): true when
    /// the frontend asked to be notified of one of them (then send the event).
    pub fn publish_responses(&mut self) -> bool {
        let old = self.mem.load_index(header::RSP_PROD);
        let new = self.rsp_prod_pvt;
        wmb();
        self.mem.store_index(header::RSP_PROD, new);
        mb();
        let event = self.mem.load_index(header::RSP_EVENT);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Before waiting for an event (`RING_FINAL_CHECK_FOR_REQUESTS`): true when requests
    /// are ready; otherwise asks the frontend to notify the next request and checks again.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.poll_requests()? > 0 {
            return Ok(true);
        }
        self.mem.store_index(header::REQ_EVENT, self.req_cons.wrapping_add(1));
        mb();
        Ok(self.poll_requests()? > 0)
    }
}
