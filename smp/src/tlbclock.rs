//! Xen's TLB clock: which CPUs may still hold a translation that was removed at some time.
//!
//! A global clock advances before every flush a CPU makes of guest translations (a full
//! flush or a page-table base load), and each CPU records the clock value its last flush
//! started at. When the last translation of some kind to a frame goes away, the frame is
//! *stamped* with the clock value then ([`TlbClock::stamp`], 32 bits, kept in its frame
//! metadata). A CPU whose last flush started after the stamp cannot hold that translation
//! any more, so [`TlbClock::stale`] leaves it out of the CPUs to flush. The stamp also keeps
//! one bit saying whether the frame was a page table (a paging-structure cache entry may
//! then point through it) or only mapped.
//!
//! The clock is 64 bits and never wraps; a stamp keeps its low 32 bits, and is read back as
//! the latest clock value up to now with those low bits, which is never earlier than the
//! real stamp: a CPU is only ever left out when it truly flushed afterwards. Lock-free; the
//! hypervisor keeps one clock and calls it around every flush and CR3 load.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::xcall::{CpuBits, MAX_CPUS};

/// The clock advances by this much, so that a stamp's two low bits are free for flags.
const TICK: u64 = 4;
/// Stamp flag: the frame has been stamped (a stamp of 0 means "never").
const STAMPED: u32 = 2;
/// Stamp flag: the frame was a page table.
const WAS_TABLE: u32 = 1;

/// The clock and every CPU's last flush.
pub struct TlbClock {
    now: AtomicU64,
    flushed_at: [AtomicU64; MAX_CPUS],
}

impl Default for TlbClock {
    fn default() -> Self {
        Self::new()
    }
}

impl TlbClock {
    pub const fn new() -> TlbClock {
        Self::starting_at(TICK)
    }

    /// A clock that reads `start` (a multiple of 4) and whose CPUs have never flushed.
    pub const fn starting_at(start: u64) -> TlbClock {
        TlbClock { now: AtomicU64::new(start), flushed_at: [const { AtomicU64::new(0) }; MAX_CPUS] }
    }

    /// Called just before a CPU flushes its guest translations; returns the time to pass
    /// to [`Self::end_flush`] once the flush is complete.
    pub fn begin_flush(&self) -> u64 {
        self.now.fetch_add(TICK, Ordering::SeqCst) + TICK
    }

    /// Records that `cpu`'s flush begun at `at` is complete.
    pub fn end_flush(&self, cpu: usize, at: u64) {
        if let Some(slot) = self.flushed_at.get(cpu) {
            slot.fetch_max(at, Ordering::SeqCst);
        }
    }

    /// The stamp of a frame whose last translation of some kind was just removed (call it
    /// after the removal); `table` says whether the frame was a page table.
    pub fn stamp(&self, table: bool) -> u32 {
        (self.now.load(Ordering::SeqCst) as u32) | STAMPED | if table { WAS_TABLE } else { 0 }
    }

    /// Whether `stamp` records a frame that was a page table.
    pub const fn was_table(stamp: u32) -> bool {
        stamp & WAS_TABLE != 0
    }

    /// The CPUs of `cpus` that may still hold a translation removed before `stamp`: those
    /// whose last flush did not start after it. None for a frame never stamped.
    pub fn stale(&self, cpus: &CpuBits, stamp: u32) -> CpuBits {
        let mut out = [0u64; MAX_CPUS / 64];
        if stamp & STAMPED == 0 {
            return out;
        }
        let now = self.now.load(Ordering::SeqCst);
        // The latest time up to now with the stamp's low bits: never before the stamp.
        let stamped_at = now - u64::from((now as u32).wrapping_sub(stamp & !3));
        for (w, word) in cpus.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let cpu = w * 64 + bit;
                if self.flushed_at[cpu].load(Ordering::SeqCst) <= stamped_at {
                    out[w] |= 1 << bit;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cpus: &[usize]) -> CpuBits {
        let mut bits = [0u64; MAX_CPUS / 64];
        for &cpu in cpus {
            bits[cpu / 64] |= 1 << (cpu % 64);
        }
        bits
    }

    fn flush(clock: &TlbClock, cpu: usize) {
        let at = clock.begin_flush();
        clock.end_flush(cpu, at);
    }

    #[test]
    fn only_cpus_that_have_not_flushed_since_the_stamp_are_stale() {
        let clock = TlbClock::new();
        let all = set(&[0, 1, 2, 70]);
        flush(&clock, 0);
        let stamp = clock.stamp(false);
        assert_eq!(clock.stale(&all, stamp), all, "nobody flushed after the stamp");
        flush(&clock, 1);
        flush(&clock, 70);
        assert_eq!(clock.stale(&all, stamp), set(&[0, 2]));
        // A flush that began before the stamp but ended after it does not count.
        let early = clock.begin_flush();
        let stamp = clock.stamp(true);
        clock.end_flush(2, early);
        assert_eq!(clock.stale(&set(&[2]), stamp), set(&[2]));
        assert!(TlbClock::was_table(stamp));
        assert!(!TlbClock::was_table(clock.stamp(false)));
    }

    #[test]
    fn a_frame_never_stamped_needs_no_flush() {
        let clock = TlbClock::new();
        assert_eq!(clock.stale(&set(&[0, 5]), 0), set(&[]));
    }

    #[test]
    fn stamps_stay_conservative_across_the_32_bit_wrap() {
        // Just below 2^32: stamps wrap to small numbers while the clock goes on.
        let clock = TlbClock::starting_at((1 << 32) - 8);
        let stamp = clock.stamp(false);
        flush(&clock, 0); // 2^32 - 4
        flush(&clock, 0); // 2^32: low bits 0
        let later = clock.stamp(false);
        assert_eq!(clock.stale(&set(&[0, 1]), stamp), set(&[1]));
        assert_eq!(clock.stale(&set(&[0, 1]), later), set(&[0, 1]));
        flush(&clock, 1);
        assert_eq!(clock.stale(&set(&[0, 1]), later), set(&[0]));
        // A very old stamp whose low bits look recent reads as recent: a spare flush, never
        // a missed one.
        let old = TlbClock::starting_at(8);
        let stamp = old.stamp(false);
        flush(&old, 0);
        assert_eq!(old.stale(&set(&[0]), stamp), set(&[]));
        old.now.fetch_add(1 << 32, Ordering::SeqCst);
        assert_eq!(old.stale(&set(&[0]), stamp), set(&[0]), "2^32 ticks later the stamp reads as recent");
        flush(&old, 0);
        assert_eq!(old.stale(&set(&[0]), stamp), set(&[]));
    }
}
