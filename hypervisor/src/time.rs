//! System time: nanoseconds since the hypervisor was entered, from the TSC.
//!
//! The boot stub records the TSC at entry; [`set_tsc_hz`] installs the calibrated frequency.
//! Before calibration, time reads as zero. Lock-free; safe from any CPU and any context.

use core::sync::atomic::{AtomicU64, Ordering};

use apic::TscScale;

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// The TSC-to-ns scale packed as `mul | (shift as u8) << 32` (0: not calibrated; a scale's
/// `mul` is never 0).
static TSC_SCALE: AtomicU64 = AtomicU64::new(0);

/// Records the TSC value taken by the boot stub at hypervisor entry.
pub fn set_boot_tsc(tsc: u64) {
    BOOT_TSC.store(tsc, Ordering::Relaxed);
}

/// Installs the calibrated TSC frequency, and the scale built from it once.
pub fn set_tsc_hz(hz: u64) {
    TSC_HZ.store(hz, Ordering::Relaxed);
    let packed = TscScale::from_hz(hz).map_or(0, |s| u64::from(s.mul) | u64::from(s.shift as u8) << 32);
    TSC_SCALE.store(packed, Ordering::Relaxed);
}

/// The TSC-to-ns scale: what guests get as `tsc_to_system_mul` and `tsc_shift`, and what
/// system time here is computed with, so both read the same clock (`None` before
/// calibration).
pub fn tsc_scale() -> Option<TscScale> {
    let packed = TSC_SCALE.load(Ordering::Relaxed);
    (packed != 0).then_some(TscScale { mul: packed as u32, shift: (packed >> 32) as u8 as i8 })
}

/// The calibrated TSC frequency in Hz (0 before calibration).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    crate::arch::cpu::rdtsc()
}

/// Converts a TSC delta to nanoseconds.
pub fn tsc_to_ns(delta: u64) -> u64 {
    tsc_scale().map_or(0, |scale| scale.ticks_to_ns(delta))
}

/// Nanoseconds since hypervisor entry.
pub fn since_boot_ns() -> u64 {
    tsc_to_ns(rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed)))
}

/// Spins for `ns` nanoseconds (needs a calibrated TSC).
pub fn delay_ns(ns: u64) {
    delay_until(|| false, ns);
}

/// Spins until `done()` or until `ns` nanoseconds have passed; true if `done()` held.
pub fn delay_until(mut done: impl FnMut() -> bool, ns: u64) -> bool {
    let ticks = (ns as u128 * tsc_hz() as u128 / 1_000_000_000) as u64;
    let start = rdtsc();
    loop {
        if done() {
            return true;
        }
        if rdtsc().wrapping_sub(start) >= ticks {
            return false;
        }
        core::hint::spin_loop();
    }
}
