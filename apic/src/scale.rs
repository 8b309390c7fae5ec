//! Fixed-point conversion between clock ticks and nanoseconds in the form Xen publishes in
//! `vcpu_time_info`: `ns = ((ticks << shift, or >> -shift) * mul) >> 32`.
//!
//! The hypervisor builds one [`TscScale`] from the calibrated TSC frequency, publishes its
//! `mul` and `shift` to guests as `tsc_to_system_mul` and `tsc_shift`, and uses the same
//! scale for its own system time; another scale built from the APIC timer frequency turns
//! nanosecond deadlines into timer ticks. Integer only (the hypervisor is soft-float),
//! 128-bit intermediates, saturating instead of overflowing. Pure; never touches hardware.

use core::fmt;

/// Nanoseconds per second.
const NS_PER_SECOND: u128 = 1_000_000_000;

/// A ticks-to-nanoseconds scale: `ns = ((ticks << shift, or >> -shift) * mul) >> 32`.
///
/// [`TscScale::from_hz`] normalises the frequency, scaled by `2^shift`, into (1 GHz, 2 GHz],
/// so `mul` lies in [2^31, 2^32) and keeps 31 significant bits: the conversion error is below
/// 1 ppb plus one tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscScale {
    /// `tsc_to_system_mul`: nanoseconds per (shifted) tick, as a 0.32 fixed-point fraction.
    pub mul: u32,
    /// `tsc_shift`: ticks are shifted left by this much (right when negative) before `mul`.
    pub shift: i8,
}

/// Why a scale could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleError {
    /// A clock of 0 Hz has no scale.
    ZeroFrequency,
}

impl TscScale {
    /// The scale for a clock running at `hz`.
    pub fn from_hz(hz: u64) -> Result<TscScale, ScaleError> {
        if hz == 0 {
            return Err(ScaleError::ZeroFrequency);
        }
        // Find `shift` with 1e9 < hz * 2^shift <= 2e9, keeping both sides integers:
        // `scaled_hz` = hz * 2^max(shift, 0) and `one_ghz` = 1e9 * 2^max(-shift, 0).
        let (mut scaled_hz, mut one_ghz, mut shift) = (u128::from(hz), NS_PER_SECOND, 0i8);
        while scaled_hz > 2 * one_ghz {
            one_ghz <<= 1;
            shift -= 1;
        }
        while scaled_hz <= one_ghz {
            scaled_hz <<= 1;
            shift += 1;
        }
        // mul = 2^32 * 1e9 / (hz * 2^shift), rounded; < 2^32 because scaled_hz > one_ghz.
        let mul = ((one_ghz << 32) + scaled_hz / 2) / scaled_hz;
        Ok(TscScale {
            mul: u32::try_from(mul).unwrap_or(u32::MAX),
            shift,
        })
    }

    /// Nanoseconds in `ticks`, computed exactly as Xen guests do, but without their 64-bit
    /// overflow: where `ticks << shift` would not fit in 64 bits the result still holds, and
    /// a result beyond `u64::MAX` saturates.
    pub fn ticks_to_ns(self, ticks: u64) -> u64 {
        let shifted = shift_signed(u128::from(ticks), self.shift);
        saturate((shifted.saturating_mul(u128::from(self.mul))) >> 32)
    }

    /// The fewest ticks whose [`TscScale::ticks_to_ns`] is at least `ns` (saturating), so
    /// a deadline computed with it never fires early.
    pub fn ns_to_ticks(self, ns: u64) -> u64 {
        if ns == 0 {
            return 0;
        }
        if self.mul == 0 {
            return u64::MAX;
        }
        // Shifted ticks t' with (t' * mul) >> 32 >= ns.
        let shifted = (u128::from(ns) << 32).div_ceil(u128::from(self.mul));
        let ticks = match u32::try_from(self.shift) {
            Ok(left) => ceil_shr(shifted, left),
            Err(_) => shl_saturating(shifted, u32::from(self.shift.unsigned_abs())),
        };
        saturate(ticks)
    }
}

impl fmt::Display for TscScale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mul {:#010x} shift {}", self.mul, self.shift)
    }
}

/// `value << shift` (saturating) for `shift >= 0`, `value >> -shift` otherwise.
fn shift_signed(value: u128, shift: i8) -> u128 {
    match u32::try_from(shift) {
        Ok(left) => shl_saturating(value, left),
        Err(_) => value
            .checked_shr(u32::from(shift.unsigned_abs()))
            .unwrap_or(0),
    }
}

fn shl_saturating(value: u128, shift: u32) -> u128 {
    if value == 0 {
        0
    } else if shift >= value.leading_zeros() {
        u128::MAX
    } else {
        value << shift
    }
}

/// `ceil(value / 2^shift)`.
fn ceil_shr(value: u128, shift: u32) -> u128 {
    match 1u128.checked_shl(shift) {
        Some(divisor) => value.div_ceil(divisor),
        None => u128::from(value != 0),
    }
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const YEAR_S: u64 = 365 * 24 * 3600;
    const FREQUENCIES: [u64; 10] = [
        1_000_000_000,
        2_400_000_000,
        3_000_000_000,
        2_899_999_937,
        1_193_182,
        62_500_000,
        14_318_180,
        999_999_999,
        2_000_000_001,
        5_123_456_789,
    ];

    /// Exact ns for `ticks` at `hz`, rounded down.
    fn exact_ns(ticks: u64, hz: u64) -> u128 {
        u128::from(ticks) * 1_000_000_000 / u128::from(hz)
    }

    /// The formula as Xen guests evaluate it, 64-bit shift included.
    fn guest_formula(scale: TscScale, ticks: u64) -> u64 {
        let shifted = if scale.shift >= 0 {
            ticks << scale.shift
        } else {
            ticks >> -scale.shift
        };
        ((u128::from(shifted) * u128::from(scale.mul)) >> 32) as u64
    }

    #[test]
    fn normalises_mul_into_the_top_half_of_u32() {
        for hz in FREQUENCIES.into_iter().chain([1, 2, 7, u64::MAX]) {
            let s = TscScale::from_hz(hz).unwrap();
            assert!(s.mul >= 1 << 31, "{hz} Hz: {s}");
        }
    }

    #[test]
    fn known_scales() {
        // 1 GHz is one tick per ns: shifted once to 2 GHz, mul one half.
        assert_eq!(
            TscScale::from_hz(1_000_000_000),
            Ok(TscScale {
                mul: 1 << 31,
                shift: 1
            })
        );
        // 2 GHz needs no shift: half a ns per tick.
        assert_eq!(
            TscScale::from_hz(2_000_000_000),
            Ok(TscScale {
                mul: 1 << 31,
                shift: 0
            })
        );
        // 4 GHz: ticks shifted right once (2 GHz), then half a ns each.
        assert_eq!(
            TscScale::from_hz(4_000_000_000),
            Ok(TscScale {
                mul: 1 << 31,
                shift: -1
            })
        );
        assert_eq!(TscScale::from_hz(0), Err(ScaleError::ZeroFrequency));
    }

    #[test]
    fn under_one_ppm_over_long_spans() {
        for hz in FREQUENCIES {
            let scale = TscScale::from_hz(hz).unwrap();
            for seconds in [1, 60, 3_600, 86_400, YEAR_S, 100 * YEAR_S] {
                let ticks = u64::try_from(u128::from(hz) * u128::from(seconds)).unwrap();
                let exact = exact_ns(ticks, hz);
                let got = u128::from(scale.ticks_to_ns(ticks));
                let error = got.abs_diff(exact);
                assert!(
                    error * 1_000_000 < exact,
                    "{hz} Hz over {seconds} s: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn short_spans_are_within_a_nanosecond_or_two() {
        for hz in FREQUENCIES {
            let scale = TscScale::from_hz(hz).unwrap();
            for ticks in [0, 1, 2, 3, 1_000, 123_457, 10_000_000] {
                let exact = exact_ns(ticks, hz);
                let got = u128::from(scale.ticks_to_ns(ticks));
                let one_tick_ns = 1_000_000_000 / u128::from(hz) + 1;
                assert!(
                    got.abs_diff(exact) <= one_tick_ns,
                    "{hz} Hz, {ticks} ticks: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn matches_the_guest_formula_wherever_that_does_not_overflow() {
        for hz in FREQUENCIES {
            let scale = TscScale::from_hz(hz).unwrap();
            let limit = if scale.shift > 0 {
                u64::MAX >> scale.shift
            } else {
                u64::MAX
            };
            for ticks in [1, 999, 1 << 20, 12_345_678_901, limit / 3, limit] {
                assert_eq!(
                    scale.ticks_to_ns(ticks),
                    guest_formula(scale, ticks),
                    "{hz} {ticks}"
                );
            }
        }
    }

    #[test]
    fn huge_deltas_saturate_instead_of_wrapping() {
        let slow = TscScale::from_hz(1_193_182).unwrap(); // shift > 0: guests would overflow
        assert_eq!(slow.ticks_to_ns(u64::MAX), u64::MAX);
        let expected = exact_ns(u64::MAX >> 2, 1_193_182).min(u128::from(u64::MAX));
        assert_eq!(u128::from(slow.ticks_to_ns(u64::MAX >> 2)), expected);
        let fast = TscScale::from_hz(3_000_000_000).unwrap();
        let (ns, exact) = (
            fast.ticks_to_ns(u64::MAX),
            exact_ns(u64::MAX, 3_000_000_000),
        );
        assert!(
            u128::from(ns).abs_diff(exact) * 1_000_000 < exact,
            "{ns} vs {exact}"
        );
        assert_eq!(
            fast.ns_to_ticks(u64::MAX),
            u64::MAX,
            "3 ticks per ns overflows u64"
        );
    }

    #[test]
    fn hostile_scales_do_not_panic() {
        for shift in [i8::MIN, -100, -64, -1, 0, 1, 64, 100, i8::MAX] {
            for mul in [0, 1, u32::MAX] {
                let s = TscScale { mul, shift };
                for value in [0, 1, u64::MAX] {
                    let _ = s.ticks_to_ns(value);
                    let _ = s.ns_to_ticks(value);
                }
            }
        }
        let zero = TscScale { mul: 0, shift: 0 };
        assert_eq!(zero.ns_to_ticks(5), u64::MAX, "no tick count reaches 5 ns");
        assert_eq!(zero.ns_to_ticks(0), 0);
        assert_eq!(
            TscScale {
                mul: u32::MAX,
                shift: i8::MAX
            }
            .ticks_to_ns(1),
            u64::MAX
        );
        assert_eq!(
            TscScale {
                mul: u32::MAX,
                shift: i8::MIN
            }
            .ticks_to_ns(u64::MAX),
            0
        );
    }

    #[test]
    fn ns_to_ticks_is_the_least_inverse() {
        for hz in FREQUENCIES {
            let scale = TscScale::from_hz(hz).unwrap();
            for ns in [1, 2, 999, SECOND, 3_600 * SECOND, 7 * 86_400 * SECOND + 13] {
                let ticks = scale.ns_to_ticks(ns);
                assert!(
                    scale.ticks_to_ns(ticks) >= ns,
                    "{hz} Hz, {ns} ns: {ticks} too few"
                );
                assert!(
                    scale.ticks_to_ns(ticks - 1) < ns,
                    "{hz} Hz, {ns} ns: {ticks} too many"
                );
            }
        }
    }

    #[test]
    fn ns_to_ticks_agrees_with_the_frequency() {
        for hz in FREQUENCIES {
            let scale = TscScale::from_hz(hz).unwrap();
            let ticks = u128::from(scale.ns_to_ticks(3_600 * SECOND));
            let exact = u128::from(hz) * 3_600;
            assert!(
                ticks.abs_diff(exact) * 1_000_000 < exact,
                "{hz} Hz: {ticks} vs {exact}"
            );
        }
    }
}
