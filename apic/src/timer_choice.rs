//! Choosing the local APIC mode and the timer from CPUID, with a one-line reason for the boot
//! log.
//!
//! The hypervisor's boot script calls [`CpuFeatures::detect`] and [`choose_timer`] once, logs
//! the [`TimerChoice`], and enables every CPU's APIC in the chosen mode. The decision is pure
//! and host-tested; only `detect` executes CPUID. Policy: x2APIC whenever offered (unless the
//! command line forbids it), TSC-deadline whenever offered (it works in either APIC mode),
//! otherwise the APIC one-shot timer calibrated against the PIT.

use core::arch::x86_64::__cpuid;
use core::fmt;

use crate::consts::cpuid::{
    LEAF1_ECX_TSC_DEADLINE, LEAF1_ECX_X2APIC, LEAF_EXTENDED_MAX, LEAF_POWER_MANAGEMENT,
    POWER_EDX_INVARIANT_TSC,
};
use crate::ApicMode;

/// The CPUID feature flags that matter for interrupts and timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// CPUID.01H:ECX bit 21.
    pub x2apic: bool,
    /// CPUID.01H:ECX bit 24.
    pub tsc_deadline: bool,
    /// CPUID.80000007H:EDX bit 8.
    pub invariant_tsc: bool,
}

impl CpuFeatures {
    /// Decodes the raw registers (`power_edx` is 0 when leaf 0x80000007 is absent).
    pub const fn from_cpuid(leaf1_ecx: u32, power_edx: u32) -> CpuFeatures {
        CpuFeatures {
            x2apic: leaf1_ecx & LEAF1_ECX_X2APIC != 0,
            tsc_deadline: leaf1_ecx & LEAF1_ECX_TSC_DEADLINE != 0,
            invariant_tsc: power_edx & POWER_EDX_INVARIANT_TSC != 0,
        }
    }

    /// Reads the flags of the current CPU.
    pub fn detect() -> CpuFeatures {
        let leaf1_ecx = __cpuid(1).ecx;
        let has_power_leaf = __cpuid(LEAF_EXTENDED_MAX).eax >= LEAF_POWER_MANAGEMENT;
        let power_edx = if has_power_leaf {
            __cpuid(LEAF_POWER_MANAGEMENT).edx
        } else {
            0
        };
        CpuFeatures::from_cpuid(leaf1_ecx, power_edx)
    }
}

/// Which timer drives deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerSource {
    /// The TSC-deadline timer: deadlines are TSC values ([`crate::LocalApic::tsc_deadline`]).
    TscDeadline,
    /// The APIC one-shot timer: deadlines are APIC ticks
    /// ([`crate::LocalApic::timer_oneshot_ticks`]), frequency from calibration.
    ApicOneShot,
}

/// The chosen APIC mode and timer, and why; `Display` gives the boot-log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerChoice {
    /// Mode to pass to [`crate::LocalApic::enable`] on every CPU.
    pub apic_mode: ApicMode,
    /// Timer to arm deadlines with.
    pub timer: TimerSource,
    /// Whether the TSC rate is constant across P-/C-states (otherwise timekeeping may drift).
    pub tsc_invariant: bool,
    apic_reason: &'static str,
    timer_reason: &'static str,
}

/// Chooses the APIC mode and timer for `features`; `allow_x2apic` is false when the command
/// line asks for the xAPIC.
pub fn choose_timer(features: CpuFeatures, allow_x2apic: bool) -> TimerChoice {
    let (apic_mode, apic_reason) = match (features.x2apic, allow_x2apic) {
        (true, true) => (ApicMode::X2Apic, "offered by CPUID"),
        (true, false) => (
            ApicMode::XApic,
            "x2APIC offered but disabled on the command line",
        ),
        (false, _) => (ApicMode::XApic, "x2APIC not offered"),
    };
    let (timer, timer_reason) = if features.tsc_deadline {
        (TimerSource::TscDeadline, "offered by CPUID")
    } else {
        (
            TimerSource::ApicOneShot,
            "TSC-deadline not offered; PIT-calibrated",
        )
    };
    TimerChoice {
        apic_mode,
        timer,
        tsc_invariant: features.invariant_tsc,
        apic_reason,
        timer_reason,
    }
}

impl fmt::Display for TimerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let timer = match self.timer {
            TimerSource::TscDeadline => "TSC-deadline timer",
            TimerSource::ApicOneShot => "APIC one-shot timer",
        };
        let tsc = if self.tsc_invariant {
            "TSC invariant"
        } else {
            "TSC not invariant: time may drift if the CPU changes frequency"
        };
        write!(
            f,
            "{} ({}); {timer} ({}); {tsc}",
            self.apic_mode, self.apic_reason, self.timer_reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(x2apic: bool, tsc_deadline: bool, invariant_tsc: bool) -> CpuFeatures {
        CpuFeatures {
            x2apic,
            tsc_deadline,
            invariant_tsc,
        }
    }

    #[test]
    fn decodes_cpuid_bits() {
        assert_eq!(
            CpuFeatures::from_cpuid(1 << 21, 0),
            features(true, false, false)
        );
        assert_eq!(
            CpuFeatures::from_cpuid(1 << 24, 1 << 8),
            features(false, true, true)
        );
        assert_eq!(
            CpuFeatures::from_cpuid(!(1 << 21 | 1 << 24), !(1 << 8)),
            features(false, false, false)
        );
        assert_eq!(
            CpuFeatures::from_cpuid(u32::MAX, u32::MAX),
            features(true, true, true)
        );
    }

    #[test]
    fn qemu_tcg_gets_xapic_and_the_one_shot_timer() {
        let choice = choose_timer(features(false, false, false), true);
        assert_eq!(choice.apic_mode, ApicMode::XApic);
        assert_eq!(choice.timer, TimerSource::ApicOneShot);
        assert_eq!(
            choice.to_string(),
            "xAPIC (x2APIC not offered); APIC one-shot timer (TSC-deadline not offered; \
             PIT-calibrated); TSC not invariant: time may drift if the CPU changes frequency"
        );
    }

    #[test]
    fn kvm_host_gets_x2apic_and_tsc_deadline() {
        let choice = choose_timer(features(true, true, false), true);
        assert_eq!(
            (choice.apic_mode, choice.timer),
            (ApicMode::X2Apic, TimerSource::TscDeadline)
        );
        assert!(!choice.tsc_invariant);
        let full = choose_timer(features(true, true, true), true);
        assert_eq!(
            full.to_string(),
            "x2APIC (offered by CPUID); TSC-deadline timer (offered by CPUID); TSC invariant"
        );
    }

    #[test]
    fn the_command_line_can_refuse_x2apic_but_keeps_tsc_deadline() {
        let choice = choose_timer(features(true, true, true), false);
        assert_eq!(
            (choice.apic_mode, choice.timer),
            (ApicMode::XApic, TimerSource::TscDeadline)
        );
        assert!(choice.to_string().contains("disabled on the command line"));
    }

    #[test]
    fn refusing_x2apic_without_x2apic_changes_nothing() {
        let allowed = choose_timer(features(false, true, true), true);
        assert_eq!(allowed, choose_timer(features(false, true, true), false));
    }
}
