//! Per-CPU state that only its own CPU ever touches, without a lock.
//!
//! [`PerCpuOwned`] holds one value per CPU; [`PerCpuOwned::with_mine`] lends the running
//! CPU's value. That is sound because a CPU reaches only its own slot (indexed by its own
//! index), the hypervisor runs with interrupts off (nothing else on the CPU can interleave),
//! and re-entry is refused with a panic instead of handing out a second `&mut`.

use alloc::vec::Vec;
use core::cell::{Cell, UnsafeCell};

use crate::arch::percpu;

struct Slot<T> {
    lent: Cell<bool>,
    value: UnsafeCell<T>,
}

/// One `T` per CPU, each touched by its CPU alone.
pub struct PerCpuOwned<T> {
    slots: Vec<Slot<T>>,
}

// SAFETY: a slot is only ever reached by the CPU whose index it has (see `with_mine`), so
// no two CPUs share a `T`: it is enough that `T` may be sent to the CPU that owns it.
unsafe impl<T: Send> Sync for PerCpuOwned<T> {}

impl<T> PerCpuOwned<T> {
    /// One value per CPU index, `make(index)` each.
    pub fn new(cpus: usize, make: impl FnMut(usize) -> T) -> PerCpuOwned<T> {
        let slots = (0..cpus).map(make).map(|value| Slot { lent: Cell::new(false), value: UnsafeCell::new(value) }).collect();
        PerCpuOwned { slots }
    }

    /// Runs `f` on the running CPU's value. Must be called with interrupts off and not from
    /// within `f` (both checked: a violation panics rather than aliasing).
    pub fn with_mine<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(!x86_64::instructions::interrupts::are_enabled(), "per-CPU state used with interrupts on");
        let slot = &self.slots[percpu::current().index.0 as usize];
        assert!(!slot.lent.replace(true), "per-CPU state re-entered");
        // SAFETY: the slot belongs to this CPU and nothing else on it runs until `f`
        // returns (interrupts are off, re-entry was refused above), so this `&mut` is the
        // only reference to the value.
        let result = f(unsafe { &mut *slot.value.get() });
        slot.lent.set(false);
        result
    }
}
