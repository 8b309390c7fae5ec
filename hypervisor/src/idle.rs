//! The idle loop every CPU ends boot in: halt with interrupts on, wake for interrupts
//! (cross-CPU calls, timers), halt again; while a dead domain's teardown is queued, or
//! console output (and console rings that waited for it), work on it in slices, taking
//! interrupts between them, before halting.
//!
//! Also counts CPUs that have reached it, so the boot CPU can tell when all cores are idle.

use core::sync::atomic::{AtomicUsize, Ordering};

static IDLE_CPUS: AtomicUsize = AtomicUsize::new(0);

/// Enters the idle loop at the end of boot (each CPU once).
pub fn enter() -> ! {
    crate::sched::enter_idle();
    IDLE_CPUS.fetch_add(1, Ordering::AcqRel);
    run()
}

/// The idle loop itself; the scheduler also resumes it when a CPU runs out of vCPUs. Work
/// queued while this CPU was busy is picked up through a self-addressed reschedule IPI,
/// because vCPUs are switched in only on the way out of an interrupt.
pub extern "C" fn run() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        if crate::sched::has_work() {
            crate::lapic::send_ipi(crate::arch::percpu::current().apic_id, crate::arch::vectors::RESCHEDULE);
        } else if crate::pv::teardown::pending() {
            crate::pv::teardown::work(crate::pv::teardown::IDLE_SLICE_NS);
            // Interrupts between slices (one is taken after `sti` and the next instruction).
            x86_64::instructions::interrupts::enable();
            core::hint::spin_loop();
            continue;
        } else if crate::logger::has_queued() {
            let wrote = crate::logger::drain(crate::logger::IDLE_SLICE_NS);
            crate::pv::console::retry_rings();
            // `sti` lets interrupts in only after the next instruction: one is taken there.
            x86_64::instructions::interrupts::enable();
            core::hint::spin_loop();
            if !wrote {
                crate::time::delay_ns(crate::logger::IDLE_RETRY_NS);
            }
            continue;
        }
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// How many CPUs have entered the idle loop.
pub fn idle_cpus() -> usize {
    IDLE_CPUS.load(Ordering::Acquire)
}
