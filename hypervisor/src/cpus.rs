//! The table of CPUs: one slot per CPU the firmware lists (and we chose to use), with its
//! APIC id, start-up state and per-CPU data, plus the cross-CPU call board over them.
//!
//! Built once by the boot CPU after ACPI is parsed; afterwards only the atomic `state` and
//! `percpu` fields change, each written by the CPU it describes (or by the boot CPU while
//! that CPU is being started).
//!
//! # Waiting while another CPU may wait for this one
//! Hypercalls and traps run with interrupts off, so a CPU answers a cross-CPU call ([`call`],
//! [`call_all`], [`call_mask`]: TLB shootdowns, heap trimming) only from a wait that services
//! its mailbox. The rule: every wait that can be reached while some CPU waits in a cross-CPU
//! call for this one must service calls.
//! - A lock that may be held across a cross-CPU call (or across the wait for another such
//!   lock) is a [`CallLock`], whose `lock` answers calls while it spins: each domain's
//!   page-table lock (`Domain::mmu_lock`, held while a new page table's frame is flushed
//!   out of other CPUs' TLBs); the heap-trimming turn (`memory::trimming`) waits the same
//!   way.
//! - Every other lock (`spin::Mutex`: a vCPU's context, a domain's memory, vCPU list,
//!   channels and console, the domain table, the frame allocator, the heap, the logger) is
//!   a leaf: it is never held across a cross-CPU call nor while taking a [`CallLock`], so
//!   its holder never waits for another CPU and a plain spin on it ends.
//! - The cross-CPU calls themselves service this CPU's mailbox while they wait
//!   (`smp::xcall`), and so do the waits inside a call (`memory::rebase_round`, which only
//!   runs as a call).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use smp::xcall::{CallBoard, CallError, CallFn, CpuBits, Mailbox, Platform, MAX_CPUS};
use spin::Once;

use crate::arch::percpu::{self, CpuIndex, Handoff, PerCpu};
use crate::arch::vectors;
use crate::lapic;

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
    percpu: Handoff,
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
        self.percpu.set(data);
    }

    /// The CPU's data page, once its area has been prepared.
    pub fn percpu(&self) -> Option<&'static PerCpu> {
        self.percpu.get()
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
                percpu: Handoff::new(),
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

/// Runs `func(arg)` on every online CPU in `mask` (this one too, if it is in it) and waits;
/// returns how many ran it.
pub fn call_mask(mask: &CpuBits, func: CallFn, arg: usize) -> usize {
    cpus().board.call_many(&Ipi, mask, func, arg)
}

/// Services this CPU's pending cross-CPU call (from the CALL vector).
pub fn service_calls() {
    if let Some(cpus) = CPUS.get() {
        cpus.board.service(&Ipi);
    }
}

/// Spins until `attempt` succeeds, answering cross-CPU calls meanwhile (see the module
/// documentation for when a wait must).
pub fn spin_until<R>(attempt: impl FnMut() -> Option<R>) -> R {
    match CPUS.get() {
        Some(cpus) => cpus.board.spin_until(&Ipi, attempt),
        None => {
            let mut attempt = attempt;
            loop {
                if let Some(result) = attempt() {
                    return result;
                }
                core::hint::spin_loop();
            }
        }
    }
}

/// A spin lock that may be held across a cross-CPU call: waiting for it answers calls, so
/// that a holder waiting for this CPU in a TLB shootdown gets its answer (issue 15, hole 6).
/// It has no plain `lock`, so that no wait for it can forget to.
#[derive(Default)]
pub struct CallLock<T> {
    inner: spin::Mutex<T>,
}

impl<T> CallLock<T> {
    pub const fn new(value: T) -> CallLock<T> {
        CallLock { inner: spin::Mutex::new(value) }
    }

    /// Takes the lock, answering cross-CPU calls while another CPU holds it.
    pub fn lock(&self) -> spin::MutexGuard<'_, T> {
        spin_until(|| self.inner.try_lock())
    }
}

/// A set of CPUs (by index) that CPUs add themselves to and remove themselves from, read
/// by others as a snapshot: a domain's dirty CPUs, say.
pub struct CpuMask {
    words: [AtomicU64; MAX_CPUS / 64],
}

impl Default for CpuMask {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuMask {
    pub const fn new() -> CpuMask {
        CpuMask { words: [const { AtomicU64::new(0) }; MAX_CPUS / 64] }
    }

    pub fn insert(&self, cpu: CpuIndex) {
        let i = cpu.0 as usize % MAX_CPUS;
        self.words[i / 64].fetch_or(1 << (i % 64), Ordering::SeqCst);
    }

    pub fn remove(&self, cpu: CpuIndex) {
        let i = cpu.0 as usize % MAX_CPUS;
        self.words[i / 64].fetch_and(!(1 << (i % 64)), Ordering::SeqCst);
    }

    /// The set as it is now.
    pub fn snapshot(&self) -> CpuBits {
        core::array::from_fn(|w| self.words[w].load(Ordering::SeqCst))
    }
}
