//! The frontend's end of a ring: it produces requests and consumes responses
//! (Xen's `struct *_front_ring`, `FRONT_RING_INIT`, `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`,
//! `RING_FINAL_CHECK_FOR_RESPONSES`).

use core::marker::PhantomData;

use crate::{header, mb, rmb, wmb, Entry, Layout, LayoutError, PushError, RingError, RingIdx, RingMemory, MAX_ENTRY_BYTES};

/// The frontend's private state over a shared ring.
pub struct FrontRing<M, Req, Rsp> {
    mem: M,
    layout: Layout,
    /// Requests written (published or not).
    pub(crate) req_prod_pvt: RingIdx,
    /// Responses consumed.
    pub(crate) rsp_cons: RingIdx,
    /// The last `rsp_prod` read and found sound: responses up to here may be consumed.
    pub(crate) rsp_seen: RingIdx,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<M: RingMemory, Req: Entry, Rsp: Entry> FrontRing<M, Req, Rsp> {
    /// Initialises the shared header (`SHARED_RING_INIT`: producers 0, events 1, padding
    /// zeroed) and the private indices (`FRONT_RING_INIT`).
    pub fn init(mem: M, layout: Layout) -> Result<Self, LayoutError> {
        if mem.len() < layout.bytes() || layout.entry_bytes() < Req::SIZE.max(Rsp::SIZE) {
            return Err(LayoutError::TooSmall { bytes: mem.len() });
        }
        mem.write(0, &[0u8; crate::HEADER_BYTES]);
        mem.store_index(header::REQ_EVENT, 1);
        mem.store_index(header::RSP_EVENT, 1);
        Ok(Self { mem, layout, req_prod_pvt: 0, rsp_cons: 0, rsp_seen: 0, _entries: PhantomData })
    }

    /// The ring's geometry.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The memory the ring lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Requests written and not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Free slots for requests (`RING_FREE_REQUESTS`).
    pub fn free_requests(&self) -> u32 {
        self.layout.entries() - self.outstanding()
    }

    /// Writes a request into the next free slot; the backend sees it after
    /// [`publish_requests`](Self::publish_requests).
    pub fn push_request(&mut self, req: &Req) -> Result<(), PushError> {
        if self.free_requests() == 0 {
            return Err(PushError::Full);
        }
        let mut buf = [0u8; MAX_ENTRY_BYTES];
        req.encode(&mut buf[..Req::SIZE]);
        self.mem.write(self.layout.slot(self.req_prod_pvt), &buf[..Req::SIZE]);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the requests written (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`): true when
    /// the backend asked to be notified of one of them (then send the event).
    pub fn publish_requests(&mut self) -> bool {
        let old = self.mem.load_index(header::REQ_PROD);
        let new = self.req_prod_pvt;
        wmb();
        self.mem.store_index(header::REQ_PROD, new);
        mb();
        let event = self.mem.load_index(header::REQ_EVENT);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Reads the backend's `rsp_prod` and checks it: it may not lie behind the responses
    /// consumed, nor answer requests never written. Returns the responses ready.
    pub fn poll_responses(&mut self) -> Result<u32, RingError> {
        let rsp_prod = self.mem.load_index(header::RSP_PROD);
        rmb();
        let ready = rsp_prod.wrapping_sub(self.rsp_cons);
        if ready > self.outstanding() {
            return Err(RingError::ResponseProducer { rsp_prod, rsp_cons: self.rsp_cons, req_prod: self.req_prod_pvt });
        }
        self.rsp_seen = rsp_prod;
        Ok(ready)
    }

    /// The next response (copied out of the ring), reading `rsp_prod` again when the
    /// responses seen so far are consumed; `None` when there is none.
    pub fn next_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.rsp_seen == self.rsp_cons && self.poll_responses()? == 0 {
            return Ok(None);
        }
        let mut buf = [0u8; MAX_ENTRY_BYTES];
        self.mem.read(self.layout.slot(self.rsp_cons), &mut buf[..Rsp::SIZE]);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(Rsp::decode(&buf[..Rsp::SIZE])))
    }

    /// Before waiting for an event (`RING_FINAL_CHECK_FOR_RESPONSES`): true when responses
    /// are ready; otherwise asks the backend to notify the next response and checks again.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        self.final_check_for_responses_after(1)
    }

    /// The same, asking to be notified only once `batch` more responses are published
    /// (fewer events for a frontend with many requests in flight): `batch` is cut to the
    /// requests published and not yet answered, so that the event always comes.
    pub fn final_check_for_responses_after(&mut self, batch: u32) -> Result<bool, RingError> {
        if self.poll_responses()? > 0 {
            return Ok(true);
        }
        let published = self.mem.load_index(header::REQ_PROD).wrapping_sub(self.rsp_cons);
        let batch = batch.clamp(1, published.clamp(1, self.layout.entries()));
        self.mem.store_index(header::RSP_EVENT, self.rsp_cons.wrapping_add(batch));
        mb();
        Ok(self.poll_responses()? > 0)
    }
}
