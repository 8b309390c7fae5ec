//! guest-balloon: a PV guest that balloons its own reservation down and up through
//! `memory_op`, as a balloon driver does, and checks every count the hypervisor reports.
//!
//! It prints its reservation (current and maximum), then:
//! 1. gives back [`RELEASED`] free frames: unmaps each page, marks it invalid in the P2M
//!    list, `decrease_reservation`; the reservation must drop by as many;
//! 2. takes [`REGAINED`] frames (`increase_reservation`), which must be new to it, maps
//!    them where the first released frames were, records them in the P2M list and checks
//!    each page holds a pattern written to it; the reservation must grow by as many;
//! 3. asks for [`OVERSHOOT`] more frames than its maximum allows: the hypervisor must grant
//!    fewer than asked and never pass the maximum; the granted frames go straight back.
//!
//! Console: "balloon: reservation current=C maximum=M ...", one line per step, then
//! "balloon: ok" and power-off, or "balloon: FAILED <what>" and a crash. The QEMU guest
//! test looks for "balloon: ok". It must never give away a frame the builder's layout
//! uses (image, P2M list, start_info, page tables, boot stack).

#![no_std]
#![no_main]

mod frames;
mod p2m;
mod reservation;

use core::fmt;

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::abi::ids::{Mfn, Pfn};
use guest_rt::hypercall::{shutdown, HypercallError};
use guest_rt::{println, StartInfo};

/// Frames given back in step 1.
const RELEASED: usize = 16;
/// Frames taken back in step 2.
const REGAINED: usize = RELEASED / 2;
/// Frames asked for beyond the maximum in step 3.
const OVERSHOOT: u64 = 10;
/// Room in step 3's extent array, hence the largest headroom below the maximum the test
/// can ask past.
const PAST_MAXIMUM_CAPACITY: usize = 512;

guest_rt::entry!(main);

fn main(start: &'static StartInfo) {
    if let Err(failure) = run(start) {
        println!("balloon: FAILED {failure}");
        shutdown(ShutdownReason::Crash);
    }
    println!("balloon: ok");
}

/// The steps at which something can go wrong.
#[derive(Clone, Copy, Debug)]
enum Step {
    QueryCurrent,
    QueryMaximum,
    Unmap(Pfn),
    Release,
    ReservationAfterRelease,
    Regain,
    Map(Pfn),
    ReservationAfterRegain,
    AskPastMaximum,
    ReturnGranted,
    ReservationAfterReturn,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::QueryCurrent => f.write_str("current_reservation"),
            Self::QueryMaximum => f.write_str("maximum_reservation"),
            Self::Unmap(pfn) => write!(f, "unmapping pfn {:#x}", pfn.0),
            Self::Release => f.write_str("decrease_reservation"),
            Self::ReservationAfterRelease => f.write_str("reservation after release"),
            Self::Regain => f.write_str("increase_reservation"),
            Self::Map(pfn) => write!(f, "mapping pfn {:#x}", pfn.0),
            Self::ReservationAfterRegain => f.write_str("reservation after regain"),
            Self::AskPastMaximum => f.write_str("increase_reservation past the maximum"),
            Self::ReturnGranted => f.write_str("returning the frames granted"),
            Self::ReservationAfterReturn => f.write_str("reservation after return"),
        }
    }
}

/// Why the test failed.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// A hypercall returned an error.
    Call { step: Step, error: HypercallError },
    /// A count (extents done, pages held) differs from the expected one.
    Count { step: Step, expected: u64, got: u64 },
    /// The layout leaves fewer mapped free frames than the test gives back.
    TooFewFreeFrames { free: u64 },
    /// `start_info.pt_base` lies outside the initial mapping.
    BadPtBase { pt_base: u64 },
    /// `increase_reservation` handed out a frame the domain already had.
    RegainedOwnedFrame { mfn: Mfn },
    /// A regained page did not hold what was written to it.
    Pattern { pfn: Pfn, mfn: Mfn },
    /// The hypervisor granted all that was asked past the maximum, or went past it.
    GrantedPastMaximum {
        held: u64,
        asked: u64,
        granted: u64,
        maximum: u64,
    },
    /// The maximum is too far above the reservation for the step-3 extent array.
    HeadroomTooLarge { headroom: u64 },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Call { step, error } => write!(f, "{step}: hypercall error {error:?}"),
            Self::Count {
                step,
                expected,
                got,
            } => write!(f, "{step}: expected {expected}, got {got}"),
            Self::TooFewFreeFrames { free } => {
                write!(f, "only {free} mapped free frames, {RELEASED} needed")
            }
            Self::BadPtBase { pt_base } => {
                write!(f, "pt_base {pt_base:#x} is outside the initial mapping")
            }
            Self::RegainedOwnedFrame { mfn } => {
                write!(
                    f,
                    "increase_reservation granted mfn {:#x}, already ours",
                    mfn.0
                )
            }
            Self::Pattern { pfn, mfn } => write!(
                f,
                "pfn {:#x} (mfn {:#x}) did not hold its pattern",
                pfn.0, mfn.0
            ),
            Self::GrantedPastMaximum {
                held,
                asked,
                granted,
                maximum,
            } => write!(
                f,
                "holding {held} of at most {maximum}, asked {asked}, granted {granted}"
            ),
            Self::HeadroomTooLarge { headroom } => write!(
                f,
                "{headroom} pages below the maximum: too many to ask past"
            ),
        }
    }
}

/// The hypercall result at `step`, its error turned into a [`Failure`].
fn call<T>(step: Step, result: Result<T, HypercallError>) -> Result<T, Failure> {
    result.map_err(|error| Failure::Call { step, error })
}

/// Checks a count.
fn expect(step: Step, expected: u64, got: u64) -> Result<(), Failure> {
    if got == expected {
        Ok(())
    } else {
        Err(Failure::Count {
            step,
            expected,
            got,
        })
    }
}

/// Checks that the domain holds `expected` pages.
fn expect_reservation(step: Step, expected: u64) -> Result<(), Failure> {
    let held = call(Step::QueryCurrent, reservation::current())?;
    expect(step, expected, held)
}

fn run(start: &StartInfo) -> Result<(), Failure> {
    let initial = call(Step::QueryCurrent, reservation::current())?;
    let maximum = call(Step::QueryMaximum, reservation::maximum())?;
    println!(
        "balloon: reservation current={initial} maximum={maximum} pages (start_info nr_pages={})",
        start.nr_pages
    );
    let pfns = pick_free_frames(start)?;
    release(&pfns)?;
    let after_release = initial.saturating_sub(RELEASED as u64);
    expect_reservation(Step::ReservationAfterRelease, after_release)?;
    println!("balloon: released {RELEASED} pages, current={after_release}");

    regain(&pfns[..REGAINED])?;
    let after_regain = after_release + REGAINED as u64;
    expect_reservation(Step::ReservationAfterRegain, after_regain)?;
    println!("balloon: regained {REGAINED} pages, mapped and checked, current={after_regain}");

    ask_past_maximum(after_regain, maximum)
}

/// The first [`RELEASED`] free frames that start out mapped.
fn pick_free_frames(start: &StartInfo) -> Result<[Pfn; RELEASED], Failure> {
    let free = frames::mapped_free_frames(start).ok_or(Failure::BadPtBase {
        pt_base: start.pt_base,
    })?;
    let count = free.end - free.start;
    if count < RELEASED as u64 {
        return Err(Failure::TooFewFreeFrames { free: count });
    }
    Ok(core::array::from_fn(|i| Pfn(free.start + i as u64)))
}

/// Step 1: unmaps `pfns`, marks them invalid in the P2M list and gives their frames back.
fn release(pfns: &[Pfn; RELEASED]) -> Result<(), Failure> {
    let mut extents = [Mfn(0); RELEASED];
    for (&pfn, extent) in pfns.iter().zip(&mut extents) {
        *extent = p2m::get(pfn);
        // SAFETY: a free frame: nothing uses its page.
        call(Step::Unmap(pfn), unsafe { frames::unmap(pfn) })?;
        p2m::set(pfn, p2m::INVALID_MFN);
    }
    // SAFETY: the frames are unmapped and no longer in the P2M list: nothing uses them.
    let released = call(Step::Release, unsafe { reservation::shrink(&extents) })?;
    expect(Step::Release, RELEASED as u64, released)
}

/// Step 2: takes new frames for `pfns` (unmapped, invalid in the P2M list), maps them,
/// records them and checks that they hold a pattern.
fn regain(pfns: &[Pfn]) -> Result<(), Failure> {
    let mut extents = [Mfn(0); REGAINED];
    let granted = call(Step::Regain, reservation::grow(&mut extents))?;
    expect(Step::Regain, REGAINED as u64, granted)?;
    for (i, &mfn) in extents.iter().enumerate() {
        if p2m::contains(mfn) || extents[..i].contains(&mfn) {
            return Err(Failure::RegainedOwnedFrame { mfn });
        }
    }
    for (&pfn, &mfn) in pfns.iter().zip(&extents) {
        // SAFETY: `pfn`'s page was unmapped in step 1, and `mfn` was just granted, is not
        // in the P2M list and appears once: nothing uses either.
        call(Step::Map(pfn), unsafe { frames::map(pfn, mfn) })?;
        p2m::set(pfn, mfn);
        // SAFETY: the page was just mapped writable and nothing else uses it.
        if !unsafe { frames::pattern_holds(pfn) } {
            return Err(Failure::Pattern { pfn, mfn });
        }
    }
    Ok(())
}

/// Step 3: asks for [`OVERSHOOT`] frames more than the maximum allows while holding
/// `held`; the hypervisor must grant fewer and stay within the maximum. The granted
/// frames go straight back.
fn ask_past_maximum(held: u64, maximum: u64) -> Result<(), Failure> {
    let headroom = maximum.saturating_sub(held);
    let asked = headroom + OVERSHOOT;
    let mut buffer = [Mfn(0); PAST_MAXIMUM_CAPACITY];
    let extents = usize::try_from(asked)
        .ok()
        .and_then(|len| buffer.get_mut(..len))
        .ok_or(Failure::HeadroomTooLarge { headroom })?;
    let granted = call(Step::AskPastMaximum, reservation::grow(extents))?;
    println!(
        "balloon: asked for {asked} pages with {headroom} left below the maximum, granted {granted}"
    );
    if granted >= asked || held + granted > maximum {
        return Err(Failure::GrantedPastMaximum {
            held,
            asked,
            granted,
            maximum,
        });
    }
    // `granted < asked`, the extents' length.
    let granted_extents = &extents[..granted as usize];
    // SAFETY: the granted frames were never mapped nor recorded in the P2M list.
    let returned = call(Step::ReturnGranted, unsafe {
        reservation::shrink(granted_extents)
    })?;
    expect(Step::ReturnGranted, granted, returned)?;
    expect_reservation(Step::ReservationAfterReturn, held)
}
