//! Bounded waiting for the other vCPU: there are no event channels or timers to block on,
//! so a vCPU polls shared atomics and yields its physical CPU in between, giving up after
//! a fixed number of yields so that a bug cannot hang the run.
//!
//! Both vCPUs call [`yield_until`]. This module must never block or spin without yielding.

use guest_rt::hypercall::sched_yield;

use crate::failure::{Failure, Wait};

/// Yields a wait may take before it fails. A yield costs 15-70 microseconds under QEMU's
/// TCG (measured), so this is a few seconds, where no step needs more than about 1000.
pub const MAX_YIELDS: u32 = 100_000;

/// Polls `ready`, yielding between polls, until it holds; fails with
/// [`Failure::Timeout`]`(wait)` after [`MAX_YIELDS`] yields.
pub fn yield_until(wait: Wait, mut ready: impl FnMut() -> bool) -> Result<(), Failure> {
    for _ in 0..MAX_YIELDS {
        if ready() {
            return Ok(());
        }
        // A refused yield only makes the loop poll sooner.
        let _ = sched_yield();
    }
    if ready() {
        Ok(())
    } else {
        Err(Failure::Timeout(wait))
    }
}
