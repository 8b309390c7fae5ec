//! Verdicts on attacks: what the hypervisor answered, one console line per attack, and the
//! count of attacks that wrongly succeeded.
//!
//! Every attack module reports through [`Tally::record`]; `main` prints the summary. A
//! line reads "hostile: <attack>: refused (errno N)", "... refused (D of A done)",
//! "... refused (fault V, error code E)",
//! "... skipped (<why>)", "... SUCCEEDED (BUG)" or "... NOT MADE: <step> failed (BUG)"
//! (a preparation the hypervisor must allow was refused, which fails the run too). This
//! module must never decide what an attack is: it only judges and counts answers.

use core::fmt;

use guest_rt::abi::ids::Mfn;
use guest_rt::println;

/// Why an attack was not made.
#[derive(Clone, Copy, Debug)]
pub enum Skip {
    /// The frame meant as foreign is the guest's own here.
    OwnFrame(Mfn),
    /// The reservation could not be read (the query's errno).
    NoReservation(u64),
    /// The maximum is too far above the reservation to ask past it.
    HeadroomTooLarge(u64),
}

/// The hypervisor's answer to one attack.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// The call failed with this Xen error number.
    Refused { errno: u64 },
    /// A batch stopped early: the rest was refused.
    FewerDone { done: u64, asked: u64 },
    /// An access faulted (and changed nothing).
    Fault { vector: u8, error_code: u64 },
    /// The attack was not made.
    Skipped(Skip),
    /// The hypervisor let it through.
    Succeeded,
    /// An instruction the hypervisor emulates raised this exception in the guest.
    Faulted(&'static str),
    /// The hypervisor survived it and the guest went on (what it did is the line's).
    Contained,
    /// Emulated exactly as the processor does it (an attack on the emulator's arithmetic).
    Exact,
    /// A step that prepares the attack, and must work, failed (with this errno, or 0 when
    /// it was no hypercall): the attack was not made, and the run fails.
    NotPrepared { step: &'static str, errno: u64 },
}

impl Outcome {
    /// The answer to a call that must fail, from rax after it.
    pub const fn of_call(ret: i64) -> Self {
        if ret < 0 {
            Self::Refused {
                errno: ret.unsigned_abs(),
            }
        } else {
            Self::Succeeded
        }
    }

    /// The answer to a batch of `asked` items that must stop early, from rax after it
    /// (the number done, or an error).
    pub const fn of_batch(ret: i64, asked: u64) -> Self {
        if ret < 0 {
            Self::of_call(ret)
        } else if (ret as u64) < asked {
            Self::FewerDone {
                done: ret as u64,
                asked,
            }
        } else {
            Self::Succeeded
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Refused { errno } => write!(f, "refused (errno {errno})"),
            Self::FewerDone { done, asked } => write!(f, "refused ({done} of {asked} done)"),
            Self::Fault { vector, error_code } => {
                write!(f, "refused (fault {vector}, error code {error_code:#x})")
            }
            Self::Skipped(Skip::OwnFrame(mfn)) => {
                write!(f, "skipped (mfn {:#x} is the guest's own)", mfn.0)
            }
            Self::Skipped(Skip::NoReservation(errno)) => {
                write!(f, "skipped (reservation query failed, errno {errno})")
            }
            Self::Skipped(Skip::HeadroomTooLarge(headroom)) => {
                write!(f, "skipped ({headroom} pages below the maximum)")
            }
            Self::Succeeded => f.write_str("SUCCEEDED (BUG)"),
            Self::Faulted(exception) => write!(f, "refused ({exception})"),
            Self::Contained => f.write_str("contained"),
            Self::Exact => f.write_str("contained (emulated as the processor does it)"),
            Self::NotPrepared { step, errno } => {
                write!(f, "NOT MADE: {step} failed (errno {errno}) (BUG)")
            }
        }
    }
}

/// Attacks made so far and how many succeeded.
#[derive(Debug, Default)]
pub struct Tally {
    made: u32,
    succeeded: u32,
    not_prepared: u32,
}

impl Tally {
    /// Prints and counts the outcome of `attack`; returns whether it wrongly succeeded, so
    /// that the caller can undo what it did.
    pub fn record(&mut self, attack: fmt::Arguments<'_>, outcome: Outcome) -> bool {
        println!("hostile: {attack}: {outcome}");
        match outcome {
            Outcome::Skipped(_) => false,
            Outcome::Refused { .. } | Outcome::FewerDone { .. } | Outcome::Faulted(_) | Outcome::Fault { .. } | Outcome::Contained | Outcome::Exact => {
                self.made += 1;
                false
            }
            Outcome::Succeeded => {
                self.made += 1;
                self.succeeded += 1;
                true
            }
            Outcome::NotPrepared { .. } => {
                self.not_prepared += 1;
                false
            }
        }
    }

    /// Prints the summary line.
    pub fn summary(&self) {
        if self.not_prepared > 0 {
            println!(
                "hostile: {} attacks could not be prepared (BUG), {} of {} made SUCCEEDED",
                self.not_prepared, self.succeeded, self.made
            );
        } else if self.succeeded == 0 {
            println!("hostile: all attacks refused ({} made)", self.made);
        } else {
            println!(
                "hostile: {} of {} attacks SUCCEEDED (BUG)",
                self.succeeded, self.made
            );
        }
    }
}
