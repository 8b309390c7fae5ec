//! Interrupt controllers and timers of one x86_64 machine: the local APIC of each CPU
//! (xAPIC or x2APIC), its one-shot and TSC-deadline timers, inter-processor interrupts, the
//! PIT used as a reference clock, TSC/APIC-timer calibration with Xen-style fixed-point
//! scales, the I/O APIC and the legacy 8259 PICs.
//!
//! The hypervisor calls this crate during boot (mask the PICs, mask the I/O APIC, enable the
//! boot CPU's local APIC, calibrate, start the APs) and afterwards for EOIs, IPIs and timer
//! deadlines. The arithmetic (calibration, scales, register encodings, timer choice) is pure
//! and host-tested; hardware is reached only through the small accessors in `lapic_regs`,
//! `pit`, `ioapic` and `pic`. This crate never allocates, never logs, and never decides
//! policy beyond the timer choice it is asked for.
#![cfg_attr(not(test), no_std)]

pub mod apic_base;
pub mod calibrate;
pub mod consts;
mod icr;
pub mod ioapic;
mod lapic_regs;
pub mod local;
mod lvt;
pub mod pic;
pub mod pit;
pub mod scale;
pub mod timer_choice;

pub use apic_base::{read_apic_base, ApicBase};
pub use calibrate::{calibrate_with, Calibration, CalibrationError};
pub use icr::startup_page;
pub use ioapic::{IoApic, IoApicError, IoApicVersion, Polarity, RedirectionEntry, Trigger};
pub use local::{ApicError, ApicVectors, LocalApic};
pub use pic::disable_legacy_pics;
pub use pit::{read_tsc, IoPorts, Pit, PitError, PitPorts};
pub use scale::{ScaleError, TscScale};
pub use timer_choice::{choose_timer, CpuFeatures, TimerChoice, TimerSource};

use core::fmt;

/// A local APIC ID: 8 bits in xAPIC mode, 32 bits in x2APIC mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApicId(pub u32);

impl fmt::Display for ApicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How the local APIC registers are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// Memory-mapped registers at a virtual address the caller maps uncached; 8-bit IDs.
    XApic,
    /// Registers are MSRs 0x800-0x8FF; 32-bit IDs; no ICR delivery-status bit.
    X2Apic,
}

impl fmt::Display for ApicMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApicMode::XApic => "xAPIC",
            ApicMode::X2Apic => "x2APIC",
        })
    }
}
