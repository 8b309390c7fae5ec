//! Attacks on the reservation: asking for more frames than the maximum allows, and giving
//! back frames that are not the guest's to give (a foreign frame, its own L4, a frame
//! still mapped, the shared info frame, the same frame twice in one request).
//!
//! The hypervisor must grant fewer frames than asked past the maximum and take back only
//! unused frames of the domain, stopping at the first other one (the count done says how
//! far it got). Called by `main`; the double give-back comes after the page-table attacks,
//! which use the frame it gives away. This module must never give away a frame the
//! program uses, except through an attack that the hypervisor must refuse.

use guest_rt::abi::hypercall::{Hypercall, MemoryOp};
use guest_rt::abi::ids::{DomId, Mfn};
use guest_rt::abi::memory::XenMemoryReservation;
use guest_rt::hypercall::hypercall2;

use crate::targets::{Targets, HYPERVISOR_IMAGE};
use crate::verdict::{Outcome, Skip, Tally};

/// Frames asked for beyond what the maximum still allows.
const OVERSHOOT: u64 = 10;
/// Room in the extent array for the request past the maximum.
const PAST_MAXIMUM_CAPACITY: usize = 512;

/// Runs the reservation attacks but the double give-back.
pub fn run(tally: &mut Tally, targets: &Targets) {
    past_maximum(tally);
    let give_back =
        |mfn| Outcome::of_batch(memory_op(MemoryOp::DecreaseReservation, &mut [mfn]), 1);
    let mfn = HYPERVISOR_IMAGE;
    let outcome = targets.unless_own(mfn, || give_back(mfn));
    tally.record(
        format_args!("give back the hypervisor image (mfn {:#x})", mfn.0),
        outcome,
    );
    let own = [
        ("its own L4", targets.l4.mfn),
        ("a frame it still maps", targets.guard.mfn),
        ("the shared info frame", targets.shared_info),
    ];
    for (what, mfn) in own {
        tally.record(
            format_args!("give back {what} (mfn {:#x})", mfn.0),
            give_back(mfn),
        );
    }
}

/// Gives back the hole's (unused) frame twice in one request: the second must fail.
pub fn give_back_twice(tally: &mut Tally, targets: &Targets) {
    let ret = memory_op(MemoryOp::DecreaseReservation, &mut [targets.spare; 2]);
    let attack = format_args!(
        "give back the same frame twice (mfn {:#x})",
        targets.spare.0
    );
    tally.record(attack, Outcome::of_batch(ret, 2));
}

/// Asks for [`OVERSHOOT`] frames more than the maximum allows; whatever is granted goes
/// back.
fn past_maximum(tally: &mut Tally) {
    let (current, maximum) = match (
        query(MemoryOp::CurrentReservation),
        query(MemoryOp::MaximumReservation),
    ) {
        (Ok(current), Ok(maximum)) => (current, maximum),
        (Err(errno), _) | (_, Err(errno)) => {
            tally.record(
                format_args!("increase_reservation past the maximum"),
                Outcome::Skipped(Skip::NoReservation(errno)),
            );
            return;
        }
    };
    let headroom = maximum.saturating_sub(current);
    let asked = headroom + OVERSHOOT;
    let mut buffer = [Mfn(0); PAST_MAXIMUM_CAPACITY];
    let Some(extents) = usize::try_from(asked)
        .ok()
        .and_then(|len| buffer.get_mut(..len))
    else {
        let outcome = Outcome::Skipped(Skip::HeadroomTooLarge(headroom));
        tally.record(
            format_args!("increase_reservation past the maximum"),
            outcome,
        );
        return;
    };
    let ret = memory_op(MemoryOp::IncreaseReservation, extents);
    let attack =
        format_args!("increase_reservation of {asked} with {headroom} left below the maximum");
    tally.record(attack, Outcome::of_batch(ret, asked));
    let granted = usize::try_from(ret).unwrap_or(0).min(extents.len());
    // The frames were never mapped. Should the hypervisor not take them all, they go
    // back with the domain.
    memory_op(MemoryOp::DecreaseReservation, &mut extents[..granted]);
}

/// A `memory_op` query that takes a `domid_t`: its value or errno.
fn query(cmd: MemoryOp) -> Result<u64, u64> {
    let mut domid = DomId::SELF;
    // SAFETY: the command reads the domid_t on our stack and changes nothing.
    let ret = unsafe { hypercall2(Hypercall::MemoryOp, cmd.raw().into(), &raw mut domid as u64) };
    u64::try_from(ret).map_err(|_| ret.unsigned_abs())
}

/// An increase or decrease of single-page extents at `extents`; rax after it.
fn memory_op(cmd: MemoryOp, extents: &mut [Mfn]) -> i64 {
    let mut request = XenMemoryReservation {
        extent_start: extents.as_mut_ptr() as u64,
        nr_extents: extents.len() as u64,
        domid: DomId::SELF,
        ..XenMemoryReservation::default()
    };
    // SAFETY: the hypervisor reads or writes the live extent array. The frames given back
    // are unused ones (the hole's, frames just granted) or frames it must refuse to take.
    unsafe {
        hypercall2(
            Hypercall::MemoryOp,
            cmd.raw().into(),
            &raw mut request as u64,
        )
    }
}
