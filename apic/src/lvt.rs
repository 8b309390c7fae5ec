//! Encoding of the local vector table entries and the spurious-interrupt vector register.
//!
//! [`crate::local::LocalApic`] writes these values; this module only computes them (pure,
//! host-tested). It must never produce an unmasked LINT entry: legacy wires stay quiet.

use crate::consts::lapic::{
    LVT_MASKED, LVT_TIMER_ONE_SHOT, LVT_TIMER_TSC_DEADLINE, SVR_APIC_ENABLE,
};

/// How the LVT timer entry is currently programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerLvt {
    /// One-shot, delivering the timer vector when the count reaches zero.
    OneShot,
    /// TSC-deadline, delivering the timer vector when the TSC passes the deadline MSR.
    TscDeadline,
    /// One-shot but masked: counts down silently (used while calibrating).
    SilentCountdown,
}

/// LVT timer value for `vector` in state `state`.
pub(crate) const fn timer(vector: u8, state: TimerLvt) -> u32 {
    let vector = vector as u32;
    match state {
        TimerLvt::OneShot => vector | LVT_TIMER_ONE_SHOT,
        TimerLvt::TscDeadline => vector | LVT_TIMER_TSC_DEADLINE,
        TimerLvt::SilentCountdown => vector | LVT_TIMER_ONE_SHOT | LVT_MASKED,
    }
}

/// LVT error value: fixed delivery of `vector`, unmasked.
pub(crate) const fn error(vector: u8) -> u32 {
    vector as u32
}

/// LVT LINT0/LINT1 value: masked (the PIC and NMI wires are not used).
pub(crate) const fn lint_masked() -> u32 {
    LVT_MASKED
}

/// Spurious-interrupt vector register value: software enable, `vector` for spurious
/// interrupts, focus checking and EOI-broadcast suppression left at their defaults.
pub(crate) const fn svr(spurious_vector: u8) -> u32 {
    SVR_APIC_ENABLE | spurious_vector as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_modes() {
        assert_eq!(timer(0xEF, TimerLvt::OneShot), 0x0000_00EF);
        assert_eq!(timer(0xEF, TimerLvt::TscDeadline), 0x0004_00EF);
        assert_eq!(timer(0xEF, TimerLvt::SilentCountdown), 0x0001_00EF);
    }

    #[test]
    fn error_lint_and_svr() {
        assert_eq!(error(0xFE), 0xFE);
        assert_eq!(lint_masked(), 0x0001_0000);
        assert_eq!(svr(0xFF), 0x1FF);
        assert_eq!(svr(0x27), 0x127);
    }
}
