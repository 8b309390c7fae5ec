//! Per-CPU state that only its own CPU ever touches, without a lock (the scheduler's).
//!
//! [`PerCpuOwned`] holds one value per CPU; [`PerCpuOwned::with_mine`] lends the running
//! CPU's value. That is sound because a CPU reaches only its own slot (indexed by its own
//! index), the hypervisor runs with interrupts off (nothing else on the CPU can interleave),
//! and re-entry is refused with a panic instead of handing out a second `&mut`.
//!
//! [`PerCpuArc`] holds, per CPU, the `Arc` of what that CPU runs (the scheduler's running
//! vCPU): set and taken by the CPU alone, and lent by reference to the trap running on it.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicPtr, Ordering};

use smp::xcall::MAX_CPUS;

use super::percpu;

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

/// One `Arc<T>` per CPU (or none), which only that CPU sets, takes and reads.
pub struct PerCpuArc<T> {
    slots: [AtomicPtr<T>; MAX_CPUS],
}

impl<T> PerCpuArc<T> {
    /// Every CPU without one.
    pub const fn new() -> PerCpuArc<T> {
        PerCpuArc { slots: [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS] }
    }

    fn mine(&self) -> &AtomicPtr<T> {
        &self.slots[percpu::current().index.0 as usize]
    }

    /// Makes `value` this CPU's; panics if it holds one (it must be taken first).
    pub fn set_mine(&self, value: Arc<T>) {
        let previous = self.mine().swap(Arc::into_raw(value).cast_mut(), Ordering::Relaxed);
        assert!(previous.is_null(), "a CPU's running Arc set twice");
    }

    /// Takes this CPU's back, if it holds one.
    pub fn take_mine(&self) -> Option<Arc<T>> {
        let ptr = self.mine().swap(core::ptr::null_mut(), Ordering::Relaxed);
        // SAFETY: a non-null slot holds a pointer from `Arc::into_raw` in `set_mine`, and
        // swapping in null gives this call the only claim to it.
        (!ptr.is_null()).then(|| unsafe { Arc::from_raw(ptr) })
    }

    /// This CPU's, by reference. The reference is valid until this CPU's next `take_mine`,
    /// which only the scheduler's switch on the way out of a trap makes: callers use it
    /// within the trap they run in and never keep it past it.
    pub fn get_mine(&'static self) -> Option<&'static T> {
        let ptr = self.mine().load(Ordering::Relaxed);
        // SAFETY: a non-null slot holds a live `Arc`'s pointer (from `set_mine`), which only
        // this CPU takes back (`take_mine`, at a switch on the way out of a trap): until then
        // the value lives, and callers do not keep the reference past the trap.
        (!ptr.is_null()).then(|| unsafe { &*ptr })
    }
}

// SAFETY: each slot is reached only by its own CPU; an `Arc<T>` may move between CPUs when
// `T` is `Send + Sync`.
unsafe impl<T: Send + Sync> Sync for PerCpuArc<T> {}
