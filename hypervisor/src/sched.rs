//! Running vCPUs on CPUs: one run queue per CPU, round robin with a time slice, and the
//! context switch done on the way out of every trap.
//!
//! Every trap, interrupt and hypercall ends in [`on_trap_exit`] with the frame it will return
//! through. If the CPU should run something else (its vCPU blocked, stopped, yielded or used
//! up its slice; or the CPU was idle and work arrived) the frame is rewritten: the outgoing
//! vCPU's registers are saved from it and the incoming one's loaded into it, CR3 and the
//! guest segment bases switched; with nothing to run it becomes a frame into the idle loop.
//! Frames from hypervisor code other than the idle loop are never rewritten.

use alloc::collections::{BinaryHeap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use spin::{Mutex, Once};
use x86_64::registers::model_specific::{FsBase, KernelGsBase};
use x86_64::VirtAddr;

use crate::arch::gdt::{HYPERVISOR_CS, HYPERVISOR_DS};
use crate::arch::paging;
use crate::arch::trap::TrapFrame;
use crate::domain::vcpu::RunState;
use crate::domain::{LifeState, Vcpu};
use crate::traps::vectors;
use crate::{cpus, lapic, percpu};

/// How long a vCPU runs before others on its CPU get a turn.
pub const TIME_SLICE_NS: u64 = 10_000_000;

struct RunQueue {
    queue: Mutex<VecDeque<Arc<Vcpu>>>,
    /// The time slice of the running vCPU is over.
    slice_over: AtomicBool,
    /// The CPU sits in its idle loop.
    idle: AtomicBool,
    /// TSC when the running vCPU was switched in (for its domain's CPU time).
    since: core::sync::atomic::AtomicU64,
    /// System time at which the running vCPU's slice ends (0: no slice running).
    slice_end_ns: core::sync::atomic::AtomicU64,
    /// One-shot timers of the vCPUs of this CPU, earliest first (lazily deleted: an entry
    /// whose deadline is no longer its vCPU's current one is skipped).
    timers: Mutex<BinaryHeap<TimerEntry>>,
}

/// A vCPU's single-shot timer in a CPU's heap.
struct TimerEntry {
    deadline_ns: u64,
    vcpu: Arc<Vcpu>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.deadline_ns == other.deadline_ns
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest deadline must come first.
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        other.deadline_ns.cmp(&self.deadline_ns)
    }
}

static QUEUES: Once<Vec<RunQueue>> = Once::new();

/// Creates one run queue per CPU.
pub fn init(cpus: usize) {
    QUEUES.call_once(|| {
        (0..cpus)
            .map(|_| RunQueue {
                queue: Mutex::new(VecDeque::new()),
                slice_over: AtomicBool::new(false),
                idle: AtomicBool::new(false),
                since: core::sync::atomic::AtomicU64::new(0),
                slice_end_ns: core::sync::atomic::AtomicU64::new(0),
                timers: Mutex::new(BinaryHeap::new()),
            })
            .collect()
    });
}

fn queue(cpu: u32) -> &'static RunQueue {
    &QUEUES.get().expect("sched::init runs at boot")[cpu as usize]
}

/// Puts a runnable vCPU in its CPU's run queue and kicks that CPU — unless it is already
/// queued or still loaded on a CPU (whose exit path then queues it).
pub fn enqueue(vcpu: Arc<Vcpu>) {
    if vcpu.on_cpu.load(Ordering::SeqCst) || vcpu.queued.swap(true, Ordering::SeqCst) {
        return;
    }
    let cpu = vcpu.cpu.load(Ordering::Relaxed);
    queue(cpu).queue.lock().push_back(vcpu);
    kick(cpu);
}

/// Interrupts `cpu` so that it reconsiders what to run.
pub fn kick(cpu: u32) {
    let me = percpu::current().index.0;
    if cpu != me && cpus::all().get(cpu as usize).is_some_and(|s| s.state() == cpus::CpuState::Online) {
        lapic::send_ipi(cpus::all()[cpu as usize].apic_id, vectors::RESCHEDULE);
    }
}

/// Whether this CPU's run queue holds a vCPU.
pub fn has_work() -> bool {
    QUEUES.get().is_some_and(|_| !queue(percpu::current().index.0).queue.lock().is_empty())
}

/// The local timer fired: fires the vCPU timers that are due and notes whether the running
/// vCPU's slice is over.
pub fn timer_interrupt() {
    let rq = queue(percpu::current().index.0);
    let now = crate::time::since_boot_ns();
    let end = rq.slice_end_ns.load(Ordering::Relaxed);
    if end != 0 && end <= now {
        rq.slice_over.store(true, Ordering::Relaxed);
    }
    loop {
        let due = {
            let mut timers = rq.timers.lock();
            match timers.peek() {
                Some(entry) if entry.deadline_ns <= now => timers.pop(),
                _ => None,
            }
        };
        let Some(entry) = due else { break };
        if entry.vcpu.timer_deadline.compare_exchange(entry.deadline_ns, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            crate::pv::events::timer_fired(&entry.vcpu);
        }
    }
}

/// Sets (or with 0 cancels) `vcpu`'s single-shot timer at system time `deadline_ns`; it
/// lives in the heap of the vCPU's CPU (the caller's: a vCPU sets its own timer).
pub fn set_timer(vcpu: &Arc<Vcpu>, deadline_ns: u64) {
    vcpu.timer_deadline.store(deadline_ns, Ordering::Release);
    if deadline_ns == 0 {
        return;
    }
    let rq = queue(vcpu.cpu.load(Ordering::Relaxed));
    rq.timers.lock().push(TimerEntry { deadline_ns, vcpu: vcpu.clone() });
}

/// Programs this CPU's one-shot timer for its next event: the earliest vCPU timer, or the
/// end of the running vCPU's slice when others wait for the CPU.
fn program_timer(rq: &RunQueue) {
    let now = crate::time::since_boot_ns();
    let next_timer = {
        let mut timers = rq.timers.lock();
        // Drop entries superseded by a later set_timer_op or a cancel.
        while timers.peek().is_some_and(|e| e.vcpu.timer_deadline.load(Ordering::Relaxed) != e.deadline_ns) {
            timers.pop();
        }
        timers.peek().map(|e| e.deadline_ns)
    };
    let slice_end = match rq.slice_end_ns.load(Ordering::Relaxed) {
        0 => None,
        end => Some(end),
    };
    if let Some(next) = [next_timer, slice_end].into_iter().flatten().min() {
        lapic::arm_timer_ns(next.saturating_sub(now).max(1_000));
    }
}

/// Blocks the running vCPU until [`wake`]; it leaves its CPU on the way out of this trap.
pub fn block(vcpu: &Vcpu) {
    vcpu.set_blocked();
}

/// Makes a blocked vCPU runnable again (from any CPU); true if it was blocked. If it has
/// not left its CPU yet, that CPU's exit path queues it (it re-checks after `on_cpu`).
pub fn wake(vcpu: &Arc<Vcpu>) -> bool {
    let woken = vcpu.unblock();
    if woken {
        enqueue(vcpu.clone());
    }
    woken
}

/// Marks this CPU as sitting in its idle loop (from then on its ring-0 frames may be
/// rewritten into guest frames).
pub fn enter_idle() {
    queue(percpu::current().index.0).idle.store(true, Ordering::Release);
}

/// The vCPU this CPU runs, if any.
pub fn current() -> Option<&'static Vcpu> {
    let ptr = percpu::current().current.load(Ordering::Relaxed);
    // SAFETY: `current` holds a pointer from `Arc::into_raw` while the vCPU runs here; the
    // reference is used only within the trap that is running on this CPU.
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

/// Decides what runs when `frame` is returned through, and rewrites it accordingly.
pub fn on_trap_exit(frame: &mut TrapFrame) {
    let Some(queues) = QUEUES.get() else { return };
    let here = percpu::current();
    let rq = &queues[here.index.0 as usize];
    let from_guest = frame.is_from_guest();
    if !from_guest && !rq.idle.load(Ordering::Acquire) {
        return; // hypervisor code (boot), never rewritten
    }
    let current = here.current.load(Ordering::Relaxed);
    let keep = !current.is_null() && {
        // SAFETY: see `current()`.
        let vcpu = unsafe { &*current };
        let others_wait = rq.slice_over.load(Ordering::Relaxed) && !rq.queue.lock().is_empty();
        vcpu.state() == RunState::Runnable
            && !vcpu.yield_requested.load(Ordering::Relaxed)
            && !vcpu.domain.paused.load(Ordering::Relaxed)
            && !others_wait
    };
    if keep || (current.is_null() && rq.queue.lock().is_empty()) {
        rq.slice_over.store(false, Ordering::Relaxed);
        if !current.is_null() && rq.slice_end_ns.load(Ordering::Relaxed) <= crate::time::since_boot_ns() {
            rq.slice_end_ns.store(crate::time::since_boot_ns() + TIME_SLICE_NS, Ordering::Relaxed);
        }
        program_timer(rq);
        return;
    }
    rq.slice_over.store(false, Ordering::Relaxed);
    let outgoing = (!current.is_null()).then(|| {
        // SAFETY: `current` came from `Arc::into_raw` in `switch_in`; taking it back ends
        // this CPU's hold on it.
        unsafe { Arc::from_raw(current) }
    });
    here.current.store(core::ptr::null_mut(), Ordering::Relaxed);
    if let Some(vcpu) = &outgoing {
        let ran = crate::time::tsc_to_ns(crate::time::rdtsc().wrapping_sub(rq.since.load(Ordering::Relaxed)));
        vcpu.domain.counters.cpu_time_ns.fetch_add(ran, Ordering::Relaxed);
        switch_out(vcpu, frame);
        vcpu.on_cpu.store(false, Ordering::SeqCst);
        if vcpu.state() == RunState::Runnable {
            enqueue(vcpu.clone());
        }
    }
    loop {
        let next = rq.queue.lock().pop_front();
        if let Some(vcpu) = &next {
            vcpu.queued.store(false, Ordering::SeqCst);
        }
        match next {
            Some(vcpu) if vcpu.state() != RunState::Runnable => drop(vcpu),
            Some(vcpu) if vcpu.domain.paused.load(Ordering::Acquire) => park(vcpu),
            Some(vcpu) => {
                if switch_in(vcpu, frame) {
                    rq.since.store(crate::time::rdtsc(), Ordering::Relaxed);
                    rq.slice_end_ns.store(crate::time::since_boot_ns() + TIME_SLICE_NS, Ordering::Relaxed);
                    break;
                }
            }
            None => {
                rq.slice_end_ns.store(0, Ordering::Relaxed);
                idle_frame(frame, here.stack_top);
                break;
            }
        }
    }
    if let Some(vcpu) = outgoing {
        leave(&vcpu.domain);
    }
    program_timer(rq);
}

/// Saves the guest's registers and segment bases from this CPU.
fn switch_out(vcpu: &Vcpu, frame: &TrapFrame) {
    let mut ctx = vcpu.ctx.lock();
    ctx.regs = frame.clone();
    ctx.fs_base = FsBase::read().as_u64();
    // The guest's GS base sits in KERNEL_GS_BASE while the hypervisor runs (swapgs).
    let gs = KernelGsBase::read().as_u64();
    if ctx.in_kernel { ctx.gs_base_kernel = gs } else { ctx.gs_base_user = gs }
    vcpu.yield_requested.store(false, Ordering::Relaxed);
}

/// Loads `vcpu` onto this CPU: registers into the frame, its tables into CR3. Refuses (and
/// returns false) when its domain is shutting down: a domain's memory may be returned as
/// soon as no CPU counts as running it, so the count is raised before CR3 is loaded.
fn switch_in(vcpu: Arc<Vcpu>, frame: &mut TrapFrame) -> bool {
    vcpu.on_cpu.store(true, Ordering::SeqCst);
    vcpu.domain.running_vcpus.fetch_add(1, Ordering::AcqRel);
    if vcpu.domain.state() != LifeState::Running {
        vcpu.on_cpu.store(false, Ordering::SeqCst);
        leave(&vcpu.domain);
        return false;
    }
    {
        let ctx = vcpu.ctx.lock();
        *frame = ctx.regs.clone();
        FsBase::write(VirtAddr::new_truncate(ctx.fs_base));
        let gs = if ctx.in_kernel { ctx.gs_base_kernel } else { ctx.gs_base_user };
        KernelGsBase::write(VirtAddr::new_truncate(gs));
        let l4 = ctx.active_l4().expect("a runnable vCPU has page tables");
        paging::load_guest_tables(l4.addr().0);
    }
    crate::pv::shared::publish_time(&vcpu);
    crate::pv::descriptors::load(&vcpu.gdt.lock());
    percpu::current().current.store(Arc::into_raw(vcpu) as *mut Vcpu, Ordering::Relaxed);
    true
}

/// Turns `frame` into a return to the idle loop on this CPU's stack.
fn idle_frame(frame: &mut TrapFrame, stack_top: u64) {
    paging::load_hypervisor_tables();
    *frame = TrapFrame {
        rip: crate::idle::run as *const () as u64,
        cs: HYPERVISOR_CS as u64,
        rflags: 0x2,
        rsp: stack_top - 8,
        ss: HYPERVISOR_DS as u64,
        ..TrapFrame::zeroed()
    };
}

/// Keeps a vCPU of a paused domain aside until [`unpause`]. The domain's `parked` lock is
/// taken with its `paused` flag re-checked, so an unpause racing with this cannot strand it.
fn park(vcpu: Arc<Vcpu>) {
    let domain = vcpu.domain.clone();
    let mut parked = domain.parked.lock();
    if domain.paused.load(Ordering::Acquire) {
        parked.push(vcpu);
    } else {
        drop(parked);
        enqueue(vcpu);
    }
}

/// Pauses a domain: its running vCPUs leave their CPUs at their next exit.
pub fn pause(domain: &crate::domain::Domain) {
    domain.paused.store(true, Ordering::Release);
    for vcpu in domain.vcpus() {
        kick(vcpu.cpu.load(Ordering::Relaxed));
    }
}

/// Unpauses a domain: its parked vCPUs go back to their run queues.
pub fn unpause(domain: &crate::domain::Domain) {
    let parked = {
        let mut parked = domain.parked.lock();
        domain.paused.store(false, Ordering::Release);
        core::mem::take(&mut *parked)
    };
    parked.into_iter().for_each(enqueue);
}

/// This CPU no longer runs a vCPU of `domain` (its CR3 has moved on); the last CPU to
/// leave a domain that is shutting down destroys it.
fn leave(domain: &Arc<crate::domain::Domain>) {
    let last = domain.running_vcpus.fetch_sub(1, Ordering::AcqRel) == 1;
    if last && domain.state() == LifeState::ShuttingDown {
        domain.destroy();
    }
}
