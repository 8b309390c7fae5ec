//! Calibration of the TSC and the local APIC timer against the PIT: several short runs, each
//! bracketed by PIT tick edges, and the median frequency of each clock.
//!
//! [`crate::LocalApic::calibrate_timers`] wires this to the hardware; the logic takes the
//! three clocks as closures so it is host-tested with a simulated clock. Each run waits for
//! the PIT count to change, reads the TSC and APIC count, waits about 2 ms more and again for
//! a change, and reads them again: both ends sit the same polling latency after a PIT edge,
//! so the latency cancels instead of biasing the result. The median of five runs ignores a
//! run stretched by a preempted vCPU (TCG). Integer arithmetic only (the hypervisor is
//! soft-float); this module never touches hardware.

use crate::consts::pit::{HZ_DENOMINATOR, HZ_NUMERATOR, STALL_POLL_LIMIT};

/// Number of measured runs; the median is reported.
pub const CALIBRATION_RUNS: usize = 5;
/// PIT ticks per run (about 2 ms).
pub const CALIBRATION_RUN_TICKS: u16 = 2_387;
/// Parts per million.
const PPM: u128 = 1_000_000;

/// Measured clock frequencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calibration {
    /// TSC frequency in Hz.
    pub tsc_hz: u64,
    /// APIC timer frequency in Hz (after the divider the APIC was programmed with).
    pub apic_timer_hz: u64,
    /// Spread of the TSC runs, (max - min) / median, in parts per million: a large value
    /// says the timing was noisy (the median is still usable).
    pub tsc_spread_ppm: u64,
}

/// Why calibration failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibrationError {
    /// The PIT count did not change for the poll limit.
    PitStalled,
    /// The TSC did not advance over a run.
    TscNotAdvancing,
    /// The APIC timer count did not decrease over a run (timer not started).
    ApicTimerNotCounting,
    /// The APIC timer count reached zero during a run (it ran out).
    ApicTimerExpired,
    /// A frequency does not fit in a u64 (a clock jumped wildly).
    FrequencyOutOfRange,
}

/// Frequency in Hz of a clock that advanced `count` while the PIT advanced `pit_ticks`,
/// rounded to nearest. `None` when `pit_ticks` is 0 or the result exceeds `u64::MAX`.
pub fn frequency_hz(count: u64, pit_ticks: u32) -> Option<u64> {
    if pit_ticks == 0 {
        return None;
    }
    let num = u128::from(count) * u128::from(HZ_NUMERATOR);
    let den = u128::from(pit_ticks) * u128::from(HZ_DENOMINATOR);
    u64::try_from((num + den / 2) / den).ok()
}

/// Calibrates the TSC and APIC timer.
///
/// `read_pit` returns the count of a free-running PIT down-counter ([`crate::Pit::read_count`]),
/// `read_tsc` the TSC, `read_apic_count` the current count of an APIC timer counting down from
/// a large value with its interrupt masked. Takes about `CALIBRATION_RUNS` x 2 ms.
pub fn calibrate_with(
    mut read_pit: impl FnMut() -> u16,
    mut read_tsc: impl FnMut() -> u64,
    mut read_apic_count: impl FnMut() -> u32,
) -> Result<Calibration, CalibrationError> {
    let mut tsc = [0u64; CALIBRATION_RUNS];
    let mut apic = [0u64; CALIBRATION_RUNS];
    for run in 0..CALIBRATION_RUNS {
        let sample = measure_run(&mut read_pit, &mut read_tsc, &mut read_apic_count)?;
        tsc[run] = sample.tsc_hz;
        apic[run] = sample.apic_hz;
    }
    tsc.sort_unstable();
    apic.sort_unstable();
    let median = CALIBRATION_RUNS / 2;
    Ok(Calibration {
        tsc_hz: tsc[median],
        apic_timer_hz: apic[median],
        tsc_spread_ppm: spread_ppm(tsc[0], tsc[median], tsc[CALIBRATION_RUNS - 1]),
    })
}

/// Frequencies measured by one run.
struct Sample {
    tsc_hz: u64,
    apic_hz: u64,
}

fn measure_run(
    read_pit: &mut impl FnMut() -> u16,
    read_tsc: &mut impl FnMut() -> u64,
    read_apic_count: &mut impl FnMut() -> u32,
) -> Result<Sample, CalibrationError> {
    let start = next_pit_edge(read_pit)?;
    let (tsc_start, apic_start) = (read_tsc(), read_apic_count());
    let mut end = start;
    while start.wrapping_sub(end) < CALIBRATION_RUN_TICKS {
        end = next_pit_edge(read_pit)?;
    }
    let (tsc_end, apic_end) = (read_tsc(), read_apic_count());
    let pit_ticks = u32::from(start.wrapping_sub(end));

    let tsc_delta = tsc_end.wrapping_sub(tsc_start);
    if tsc_end <= tsc_start {
        return Err(CalibrationError::TscNotAdvancing);
    }
    if apic_end == 0 {
        return Err(CalibrationError::ApicTimerExpired);
    }
    if apic_end >= apic_start {
        return Err(CalibrationError::ApicTimerNotCounting);
    }
    let apic_delta = u64::from(apic_start - apic_end);
    let hz = |count| frequency_hz(count, pit_ticks).ok_or(CalibrationError::FrequencyOutOfRange);
    Ok(Sample {
        tsc_hz: hz(tsc_delta)?,
        apic_hz: hz(apic_delta)?,
    })
}

/// Polls the PIT until its count changes and returns the new count (read just after an edge).
fn next_pit_edge(read_pit: &mut impl FnMut() -> u16) -> Result<u16, CalibrationError> {
    let first = read_pit();
    for _ in 0..STALL_POLL_LIMIT {
        let now = read_pit();
        if now != first {
            return Ok(now);
        }
        core::hint::spin_loop();
    }
    Err(CalibrationError::PitStalled)
}

/// `(max - min) / median` in parts per million, saturating.
fn spread_ppm(min: u64, median: u64, max: u64) -> u64 {
    let spread = u128::from(max - min) * PPM / u128::from(median.max(1));
    u64::try_from(spread).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pit::sim::{ps_for_ticks, ticks_at};
    use std::cell::Cell;

    const PS_PER_SECOND: u128 = 1_000_000_000_000;

    /// A simulated machine: one clock in picoseconds that every read advances.
    struct Machine {
        now_ps: Cell<u128>,
        read_ps: u128,
        tsc_hz: u128,
        apic_hz: u128,
        apic_start: u32,
    }

    impl Machine {
        fn new(tsc_hz: u64, apic_hz: u64, read_ps: u128) -> Machine {
            // Start mid-tick so edges do not line up with the first read.
            let now_ps = Cell::new(ps_for_ticks(7) + 123_456);
            Machine {
                now_ps,
                read_ps,
                tsc_hz: tsc_hz.into(),
                apic_hz: apic_hz.into(),
                apic_start: u32::MAX,
            }
        }

        fn advance(&self) -> u128 {
            self.now_ps.set(self.now_ps.get() + self.read_ps);
            self.now_ps.get()
        }

        fn pit(&self) -> u16 {
            0xFFFF_u16.wrapping_sub(ticks_at(self.advance()) as u16)
        }

        fn tsc(&self) -> u64 {
            (self.advance() * self.tsc_hz / PS_PER_SECOND) as u64
        }

        fn apic(&self) -> u32 {
            let counted = self.advance() * self.apic_hz / PS_PER_SECOND;
            u32::try_from(counted).map_or(0, |c| self.apic_start.saturating_sub(c))
        }

        fn calibrate(&self) -> Result<Calibration, CalibrationError> {
            calibrate_with(|| self.pit(), || self.tsc(), || self.apic())
        }
    }

    /// |measured - truth| in ppm of truth.
    fn error_ppm(measured: u64, truth: u64) -> u128 {
        u128::from(measured.abs_diff(truth)) * PPM / u128::from(truth)
    }

    #[test]
    fn pit_ticks_to_hertz() {
        assert_eq!(
            frequency_hz(33, 39_375_000),
            Some(1),
            "exact PIT ratio 39 375 000 / 33"
        );
        assert_eq!(
            frequency_hz(1_000_000, 1_193_182),
            Some(1_000_000),
            "rounded to nearest"
        );
        assert_eq!(frequency_hz(2_000_000, 2_387), Some(999_733_404));
        assert_eq!(frequency_hz(1, 2), Some(596_591));
        assert_eq!(frequency_hz(0, 10), Some(0));
        assert_eq!(frequency_hz(10, 0), None);
        assert_eq!(frequency_hz(u64::MAX, 1), None, "would exceed u64");
    }

    #[test]
    fn recovers_known_frequencies_with_slow_polls() {
        // 300 ns per read: a PIT edge is caught up to ~0.4 ticks late at either end.
        for (tsc_hz, apic_hz) in [
            (1_000_000_000, 62_500_000),
            (2_400_000_000, 100_000_000),
            (3_000_000_000, 1_000_000_000 / 16),
            (2_899_999_937, 24_000_000),
        ] {
            let cal = Machine::new(tsc_hz, apic_hz, 300_000).calibrate().unwrap();
            assert!(
                error_ppm(cal.tsc_hz, tsc_hz) < 200,
                "{tsc_hz}: got {}",
                cal.tsc_hz
            );
            assert!(
                error_ppm(cal.apic_timer_hz, apic_hz) < 200,
                "{apic_hz}: {cal:?}"
            );
            assert!(cal.tsc_spread_ppm < 400, "{cal:?}");
        }
    }

    #[test]
    fn fast_polls_give_tight_results() {
        let cal = Machine::new(2_400_000_000, 62_500_000, 20_000)
            .calibrate()
            .unwrap();
        assert!(error_ppm(cal.tsc_hz, 2_400_000_000) < 20, "{cal:?}");
        assert!(error_ppm(cal.apic_timer_hz, 62_500_000) < 20, "{cal:?}");
    }

    #[test]
    fn the_median_ignores_one_preempted_run() {
        let machine = Machine::new(3_000_000_000, 62_500_000, 100_000);
        let tsc_reads = Cell::new(0u32);
        let cal = calibrate_with(
            || machine.pit(),
            || {
                tsc_reads.set(tsc_reads.get() + 1);
                if tsc_reads.get() == 6 {
                    // The vCPU lost 1 ms between the PIT edge and the end read of run 3.
                    machine.now_ps.set(machine.now_ps.get() + 1_000_000_000);
                }
                machine.tsc()
            },
            || machine.apic(),
        )
        .unwrap();
        assert!(error_ppm(cal.tsc_hz, 3_000_000_000) < 100, "{cal:?}");
        assert!(
            cal.tsc_spread_ppm > 300_000,
            "the outlier shows in the spread: {cal:?}"
        );
    }

    #[test]
    fn takes_about_ten_milliseconds() {
        let machine = Machine::new(1_000_000_000, 62_500_000, 300_000);
        let before = machine.now_ps.get();
        machine.calibrate().unwrap();
        let elapsed = machine.now_ps.get() - before;
        let run = ps_for_ticks(u64::from(CALIBRATION_RUN_TICKS));
        assert!(
            elapsed > 5 * run && elapsed < 5 * run + 5 * ps_for_ticks(4),
            "{elapsed} ps"
        );
    }

    #[test]
    fn a_stalled_pit_is_an_error() {
        let err = calibrate_with(|| 0x4000, || 1, || 1);
        assert_eq!(err, Err(CalibrationError::PitStalled));
    }

    #[test]
    fn a_stopped_tsc_is_an_error() {
        let machine = Machine::new(1_000_000_000, 62_500_000, 300_000);
        let err = calibrate_with(|| machine.pit(), || 42, || machine.apic());
        assert_eq!(err, Err(CalibrationError::TscNotAdvancing));
    }

    #[test]
    fn a_stopped_or_expired_apic_timer_is_an_error() {
        let machine = Machine::new(1_000_000_000, 62_500_000, 300_000);
        let err = calibrate_with(|| machine.pit(), || machine.tsc(), || 5_000);
        assert_eq!(err, Err(CalibrationError::ApicTimerNotCounting));

        let mut short = Machine::new(1_000_000_000, 62_500_000, 300_000);
        short.apic_start = 100_000; // runs out after 1.6 ms
        assert_eq!(short.calibrate(), Err(CalibrationError::ApicTimerExpired));
    }

    #[test]
    fn a_tsc_jumping_backwards_is_an_error() {
        let machine = Machine::new(1_000_000_000, 62_500_000, 300_000);
        let reads = Cell::new(0u64);
        let tsc = || {
            reads.set(reads.get() + 1);
            u64::MAX - reads.get() * 1_000_000
        };
        let err = calibrate_with(|| machine.pit(), tsc, || machine.apic());
        assert_eq!(err, Err(CalibrationError::TscNotAdvancing));
    }

    #[test]
    fn spread_is_relative_to_the_median() {
        assert_eq!(spread_ppm(999_000, 1_000_000, 1_001_000), 2_000);
        assert_eq!(spread_ppm(5, 5, 5), 0);
        assert_eq!(
            spread_ppm(0, 0, u64::MAX),
            u64::MAX,
            "saturates, no division by zero"
        );
    }
}
