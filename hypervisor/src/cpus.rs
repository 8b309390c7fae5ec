//! The table of CPUs: one slot per CPU the firmware lists (and we chose to use), with its
//! APIC id, start-up state and per-CPU data, plus the cross-CPU call board over them.
//!
//! Built once by the boot CPU after ACPI is parsed; afterwards only the atomic `state` and
//! `percpu` fields change, each written by the CPU it describes (or by the boot CPU while
//! that CPU is being started).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

use smp::xcall::{CallBoard, CallError, CallFn, Mailbox, Platform};
use spin::Once;

use crate::percpu::{self, CpuIndex, PerCpu};
use crate::{lapic, traps::vectors};

/// Where a CPU is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CpuState {
    /// Listed by the firmware, not started yet.
    Listed = 0,
    /// INIT-SIPI sent, not answered yet.
    Starting = 1,
    /// Running the hypervisor and taking interrupts.
    Online = 2,
    /// Did not answer within the timeout; left out.
    Failed = 3,
}

/// One CPU.
pub struct CpuSlot {
    pub apic_id: u32,
    state: AtomicU8,
    percpu: AtomicPtr<PerCpu>,
}

impl CpuSlot {
    pub fn state(&self) -> CpuState {
        match self.state.load(Ordering::Acquire) {
            0 => CpuState::Listed,
            1 => CpuState::Starting,
            2 => CpuState::Online,
            _ => CpuState::Failed,
        }
    }

    pub fn set_state(&self, state: CpuState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// The raw state, for compare-and-swap transitions during start-up.
    pub fn raw_state(&self) -> &AtomicU8 {
        &self.state
    }

    pub fn set_percpu(&self, data: &'static PerCpu) {
        self.percpu.store(data as *const PerCpu as *mut PerCpu, Ordering::Release);
    }

    /// The CPU's data page, once its area has been prepared.
    pub fn percpu(&self) -> Option<&'static PerCpu> {
        let ptr = self.percpu.load(Ordering::Acquire);
        // SAFETY: only `set_percpu` stores here, from a `&'static PerCpu`.
        (!ptr.is_null()).then(|| unsafe { &*ptr })
    }
}

struct Cpus {
    slots: Box<[CpuSlot]>,
    board: CallBoard<'static>,
}

static CPUS: Once<Cpus> = Once::new();

/// Creates the table from the APIC ids of the CPUs to use (index 0 = the boot CPU).
pub fn init(apic_ids: &[u32]) {
    CPUS.call_once(|| {
        let slots: Box<[CpuSlot]> = apic_ids
            .iter()
            .map(|&apic_id| CpuSlot {
                apic_id,
                state: AtomicU8::new(CpuState::Listed as u8),
                percpu: AtomicPtr::new(core::ptr::null_mut()),
            })
            .collect();
        let mailboxes: &'static [Mailbox] = Vec::leak((0..slots.len()).map(|_| Mailbox::new()).collect());
        Cpus { slots, board: CallBoard::new(mailboxes) }
    });
}

fn cpus() -> &'static Cpus {
    CPUS.get().expect("cpus::init runs before any CPU table use")
}

/// Every CPU slot, by index.
pub fn all() -> &'static [CpuSlot] {
    &cpus().slots
}

/// The slot of CPU `index`.
pub fn slot(index: CpuIndex) -> &'static CpuSlot {
    &cpus().slots[index.0 as usize]
}

/// How many CPUs are online.
pub fn online_count() -> usize {
    all().iter().filter(|s| s.state() == CpuState::Online).count()
}

/// The IPI transport for cross-CPU calls.
struct Ipi;

impl Platform for Ipi {
    fn this_cpu(&self) -> usize {
        percpu::current().index.0 as usize
    }

    fn kick(&self, cpu: usize) {
        lapic::send_ipi(all()[cpu].apic_id, vectors::CALL);
    }

    fn is_online(&self, cpu: usize) -> bool {
        all().get(cpu).is_some_and(|s| s.state() == CpuState::Online)
    }
}

/// Runs `func(arg)` on CPU `cpu` and waits for it.
pub fn call(cpu: CpuIndex, func: CallFn, arg: usize) -> Result<(), CallError> {
    cpus().board.call(&Ipi, cpu.0 as usize, func, arg)
}

/// Runs `func(arg)` on every online CPU and waits; returns how many ran it.
pub fn call_all(func: CallFn, arg: usize) -> usize {
    cpus().board.call_all(&Ipi, func, arg)
}

/// Whether a cross-CPU call waits for this CPU (its interrupt is pending).
pub fn call_waiting() -> bool {
    CPUS.get().is_some_and(|cpus| cpus.board.is_waiting(&Ipi))
}

/// Services this CPU's pending cross-CPU call (from the CALL vector).
pub fn service_calls() {
    if let Some(cpus) = CPUS.get() {
        cpus.board.service(&Ipi);
    }
}
