//! When a long hypercall should stop and let its CPU go: the preemption check behind
//! continuations (`hypervisor::continuation`).
//!
//! The hypercall dispatcher marks the start of each call on its CPU ([`start`]); a handler
//! that works through a guest-sized list asks [`should_stop`] between units (never before
//! the first, so that every call makes progress) and stops when the call has used its
//! budget of [`BUDGET_US`] or when something waits for this CPU: a cross-CPU call in its
//! mailbox, or scheduler work (a wake-up, an arrival) in its inbox. Interrupts are off
//! for the whole call, so the budget bounds how late any interrupt of this CPU can be
//! taken because of a guest's request: the stay is the budget plus one unit plus the
//! trap's own entry and exit. Only this CPU reads and writes its slot. This module must
//! never decide what a call does: it only says when to stop.

use core::sync::atomic::{AtomicU64, Ordering};

use smp::xcall::MAX_CPUS;

use crate::arch::percpu;
use crate::{cpus, sched, time};

/// Work one hypercall may do in one stay in the hypervisor, in microseconds. Under TCG a
/// trap's entry and exit cost 1-25 us (more after a switch of address space, which
/// flushes TCG's whole software TLB), so this keeps a stay near 50 us, and the restart of
/// a stopped call (a `syscall` and its exit, about 1 us warm) costs a few per cent.
pub const BUDGET_US: u64 = 40;

/// TSC at the start of the hypercall each CPU is in.
static STARTED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// [`BUDGET_US`] in TSC ticks (0 until first needed).
static BUDGET_TICKS: AtomicU64 = AtomicU64::new(0);

fn this_cpu() -> usize {
    percpu::current().index.0 as usize
}

/// Marks the start of a hypercall on this CPU.
pub fn start() {
    STARTED[this_cpu()].store(time::rdtsc(), Ordering::Relaxed);
}

/// Whether the hypercall running on this CPU should stop at the next point where its
/// state is consistent.
pub fn should_stop() -> bool {
    let mut budget = BUDGET_TICKS.load(Ordering::Relaxed);
    if budget == 0 {
        budget = (time::tsc_hz() / 1_000_000).max(1) * BUDGET_US;
        BUDGET_TICKS.store(budget, Ordering::Relaxed);
    }
    let elapsed = time::rdtsc().wrapping_sub(STARTED[this_cpu()].load(Ordering::Relaxed));
    elapsed > budget || cpus::call_waiting() || sched::has_work()
}
