//! One blkfront connection as pure logic: requests put on the ring with ids that name a
//! slot of a fixed in-flight table (no heap), responses matched back to their request in
//! whatever order they come, and a backend that answers a request never sent, or twice,
//! or with impossible ring indices, reported as a [`FrontError`] instead of believed.

use xenring::{FrontRing, Layout, LayoutError, PushError, RingError, RingMemory};

use crate::wire::{Request, Response, Segment, MAX_SEGMENTS};

/// The most requests in flight (a four-page ring's 128 slots; a larger ring is used up to
/// this many). Ids carry the slot in their low 8 bits.
pub const MAX_IN_FLIGHT: usize = 128;

/// What the backend did wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontError {
    /// Impossible ring indices.
    Ring(RingError),
    /// A response whose id names no request in flight.
    UnknownId(u64),
    /// A response whose operation is not its request's.
    WrongOperation { id: u64, operation: u8 },
}

/// Why a request cannot be sent now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Every slot holds a request in flight: collect responses first.
    Full,
    /// More segments than a request holds.
    TooManySegments,
}

/// A completed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The id [`Frontend::submit`] returned.
    pub id: u64,
    /// `BLKIF_RSP_*`.
    pub status: i16,
}

/// One ring to a backend.
pub struct Frontend<M> {
    ring: FrontRing<M, Request, Response>,
    /// The operation of the request in flight in each slot.
    in_flight: [Option<u8>; MAX_IN_FLIGHT],
    /// Bumped on every submit, so that a stale id (an answer repeated) is caught even when
    /// its slot was reused.
    generation: u64,
    ids: [u64; MAX_IN_FLIGHT],
}

impl<M: RingMemory> Frontend<M> {
    /// Initialises a ring of `pages` pages in `mem`.
    pub fn new(mem: M, pages: usize) -> Result<Self, LayoutError> {
        let layout = Layout::for_entries::<Request, Response>(pages)?;
        Ok(Self { ring: FrontRing::init(mem, layout)?, in_flight: [None; MAX_IN_FLIGHT], generation: 0, ids: [0; MAX_IN_FLIGHT] })
    }

    /// Requests that may be in flight at once (the ring's slots, at most
    /// [`MAX_IN_FLIGHT`]).
    pub fn capacity(&self) -> usize {
        (self.ring.free_requests() + self.ring.outstanding()).min(MAX_IN_FLIGHT as u32) as usize
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|s| s.is_some()).count()
    }

    /// Writes a request (not yet published: see [`publish`](Self::publish)) and returns its
    /// id. `handle` is the virtual device number.
    pub fn submit(&mut self, operation: u8, handle: u16, sector_number: u64, segments: &[Segment]) -> Result<u64, SubmitError> {
        if segments.len() > MAX_SEGMENTS {
            return Err(SubmitError::TooManySegments);
        }
        let slot = self.in_flight.iter().position(|s| s.is_none()).ok_or(SubmitError::Full)?;
        self.generation += 1;
        let id = (self.generation << 8) | slot as u64;
        let mut req = Request { operation, nr_segments: segments.len() as u8, handle, id, sector_number, ..Default::default() };
        req.seg[..segments.len()].copy_from_slice(segments);
        self.ring.push_request(&req).map_err(|e| match e {
            PushError::Full | PushError::NothingToAnswer => SubmitError::Full,
        })?;
        self.in_flight[slot] = Some(operation);
        self.ids[slot] = id;
        Ok(id)
    }

    /// Writes a request with raw fields, unchecked (for attacks and tests of a backend):
    /// the id is the caller's and is not tracked.
    pub fn submit_raw(&mut self, req: &Request) -> Result<(), SubmitError> {
        self.ring.push_request(req).map_err(|_| SubmitError::Full)
    }

    /// Publishes the requests written; true when the backend must be notified.
    pub fn publish(&mut self) -> bool {
        self.ring.publish_requests()
    }

    /// The next response, matched to its request.
    pub fn complete(&mut self) -> Result<Option<Completion>, FrontError> {
        let Some(rsp) = self.ring.next_response().map_err(FrontError::Ring)? else {
            return Ok(None);
        };
        let slot = (rsp.id & 0xff) as usize;
        match self.in_flight.get(slot).copied().flatten() {
            Some(op) if self.ids[slot] == rsp.id => {
                if op != rsp.operation {
                    return Err(FrontError::WrongOperation { id: rsp.id, operation: rsp.operation });
                }
                self.in_flight[slot] = None;
                Ok(Some(Completion { id: rsp.id, status: rsp.status }))
            }
            _ => Err(FrontError::UnknownId(rsp.id)),
        }
    }

    /// The next raw response (for attacks and tests: nothing is matched).
    pub fn complete_raw(&mut self) -> Result<Option<Response>, RingError> {
        self.ring.next_response()
    }

    /// Before waiting for the event: true when responses are ready (then call
    /// [`complete`](Self::complete) again).
    pub fn final_check(&mut self) -> Result<bool, FrontError> {
        self.ring.final_check_for_responses().map_err(FrontError::Ring)
    }

    /// The same, asking for the event only once `batch` more responses are published (at
    /// most the requests published and unanswered, so that it always comes).
    pub fn final_check_after(&mut self, batch: u32) -> Result<bool, FrontError> {
        self.ring.final_check_for_responses_after(batch).map_err(FrontError::Ring)
    }
}
