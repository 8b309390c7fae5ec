//! The idle loop every CPU ends boot in: halt with interrupts on, wake for interrupts
//! (cross-CPU calls, timers), halt again.
//!
//! Also counts CPUs that have reached it, so the boot CPU can tell when all cores are idle.

use core::sync::atomic::{AtomicUsize, Ordering};

static IDLE_CPUS: AtomicUsize = AtomicUsize::new(0);

/// Enters the idle loop for good.
pub fn enter() -> ! {
    IDLE_CPUS.fetch_add(1, Ordering::AcqRel);
    loop {
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// How many CPUs have entered the idle loop.
pub fn idle_cpus() -> usize {
    IDLE_CPUS.load(Ordering::Acquire)
}
