//! Interrupt handlers (vectors 32-255 other than the masked PIC range and spurious): the
//! local timer (which also polls the serial port for input), cross-CPU calls, reschedule
//! kicks, APIC errors and domain 0's device interrupts (`pv::pirq`, which masks the line
//! until domain 0 acknowledges it). Each is acknowledged with an EOI here.
//!
//! Runs with interrupts off on the interrupted CPU's stack; handlers must be short and never
//! block on another CPU except through the call board (which services its own mailbox).

use core::sync::atomic::{AtomicU64, Ordering};

use log::warn;

use crate::arch::vectors;
use crate::arch::percpu;
use crate::{cpus, lapic};

/// Timer interrupts taken, per CPU index (for the boot self-check).
static TIMER_TICKS: [AtomicU64; smp::xcall::MAX_CPUS] = [const { AtomicU64::new(0) }; smp::xcall::MAX_CPUS];

/// Handles one interrupt; called with interrupts off.
pub fn handle(vector: u8) {
    match vector {
        vectors::TIMER => {
            let cpu = percpu::current().index.0 as usize;
            TIMER_TICKS[cpu].fetch_add(1, Ordering::Relaxed);
            crate::pv::console::poll_input();
            crate::pv::events::tell_domain_ended();
            crate::sched::timer_interrupt();
        }
        vectors::CALL => cpus::service_calls(),
        // The scheduler looks at the run queue on the way out of every interrupt.
        vectors::RESCHEDULE => {}
        vectors::ERROR => warn!("local APIC error {:#x}", lapic::read_error()),
        device @ vectors::DEVICE_BASE..=vectors::DEVICE_LAST if crate::pv::pirq::interrupt(device) => {}
        other => warn!("unexpected interrupt vector {other:#x}"),
    }
    lapic::eoi();
}

/// Timer interrupts CPU `cpu` has taken so far.
pub fn timer_ticks(cpu: usize) -> u64 {
    TIMER_TICKS.get(cpu).map_or(0, |t| t.load(Ordering::Relaxed))
}
