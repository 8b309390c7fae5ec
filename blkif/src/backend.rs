//! One blkback connection as pure logic: the ring of one frontend and the VBD it serves.
//! [`Backend::serve`] takes at most `budget` requests off the ring (so that one frontend
//! cannot starve the others a backend serves in the same loop), checks each, has the
//! caller's [`DataMover`] move its data (grant copies in domain 0), answers every request
//! (an error status when the check or a copy failed), publishes the answers and says
//! whether to notify the frontend and whether more work waits.
//!
//! A frontend whose ring indices are impossible is cut off: the connection serves nothing
//! more, and the caller tears it down (unmaps the ring, closes the port); no other
//! connection is affected.

use xenring::{BackRing, Layout, LayoutError, RingError, RingMemory};

use crate::check::{check_request, Vbd, Work};
use crate::wire::{Request, Response};

/// What moves a checked request's data and makes the VBD durable (domain 0: grant copies
/// between the frontend's granted pages and the disk's pages).
pub trait DataMover {
    /// Moves every chunk of `work` (a read: VBD to the frontend's pages; a write: the
    /// frontend's pages to the VBD). False when any piece failed (a grant the frontend does
    /// not have, or one that does not allow the access): the request is answered
    /// `BLKIF_RSP_ERROR`.
    fn transfer(&mut self, work: &Work) -> bool;
    /// Makes every write answered so far durable. False when it could not.
    fn flush(&mut self) -> bool;
}

/// What one call of [`Backend::serve`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Requests answered OK.
    pub ok: u32,
    /// Requests answered with an error status (refused, or a copy failed).
    pub failed: u32,
    /// The frontend asked to be notified of these answers: send the event.
    pub notify: bool,
    /// Requests are still waiting (the budget ran out or one arrived after the last look):
    /// serve again without waiting for an event.
    pub more: bool,
    /// The frontend was cut off in this round (its ring indices are impossible).
    pub cut_off: Option<RingError>,
}

/// Counters over a connection's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub ok: u64,
    pub failed: u64,
    pub rounds: u64,
}

/// One frontend's ring and VBD.
pub struct Backend<M> {
    ring: BackRing<M, Request, Response>,
    vbd: Vbd,
    cut_off: Option<RingError>,
    counters: Counters,
}

impl<M: RingMemory> Backend<M> {
    /// Attaches to the frontend's ring in `mem` (`pages` pages, as its `ring-page-order`
    /// says) serving `vbd`.
    pub fn new(mem: M, pages: usize, vbd: Vbd) -> Result<Self, LayoutError> {
        let layout = Layout::for_entries::<Request, Response>(pages)?;
        Ok(Self { ring: BackRing::attach(mem, layout)?, vbd, cut_off: None, counters: Counters::default() })
    }

    /// The VBD served.
    pub fn vbd(&self) -> Vbd {
        self.vbd
    }

    /// Why this frontend was cut off, if it was.
    pub fn cut_off(&self) -> Option<RingError> {
        self.cut_off
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Serves at most `budget` requests (see the module documentation).
    pub fn serve<D: DataMover>(&mut self, mover: &mut D, budget: u32) -> Round {
        let mut round = Round::default();
        if self.cut_off.is_some() {
            return round;
        }
        self.counters.rounds += 1;
        let mut taken = 0;
        while taken < budget {
            let req = match self.ring.next_request() {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(e) => return self.cut(round, e),
            };
            taken += 1;
            let rsp = match check_request(&req, &self.vbd) {
                Ok(work) => {
                    let moved = work.segments() == 0 || mover.transfer(&work);
                    work.response(moved && (!work.flush || mover.flush()))
                }
                Err(refusal) => refusal.response,
            };
            if rsp.status == crate::wire::RSP_OKAY {
                round.ok += 1;
            } else {
                round.failed += 1;
            }
            // One response per request taken: the slot always exists.
            if self.ring.push_response(&rsp).is_err() {
                break;
            }
        }
        self.counters.ok += u64::from(round.ok);
        self.counters.failed += u64::from(round.failed);
        round.notify = self.ring.publish_responses();
        round.more = if taken == budget {
            true
        } else {
            match self.ring.final_check_for_requests() {
                Ok(more) => more,
                Err(e) => return self.cut(round, e),
            }
        };
        round
    }

    fn cut(&mut self, mut round: Round, e: RingError) -> Round {
        self.counters.ok += u64::from(round.ok);
        self.counters.failed += u64::from(round.failed);
        self.cut_off = Some(e);
        round.cut_off = Some(e);
        round.more = false;
        round
    }
}
