//! Running vCPUs on CPUs: Borrowed Virtual Time with one run queue per CPU. The `bvt`
//! crate decides ([`bvt::CpuSched`]: the decision at every exit, pushing, stealing, the
//! timer's programming, host-tested and run by its stress simulator too); this module is
//! the glue that carries the decisions out on the machine ([`Exit`], its
//! [`bvt::Platform`]): per-CPU timer queues, held timers, the context switch on the way out
//! of every trap, IPIs, and the vCPUs' and domains' state the decision looks at.
//!
//! # Ownership
//! Each CPU owns its scheduler and its timer queues ([`Local`], reached lock-free through
//! [`PerCpuOwned`]). Other CPUs never touch them: they post to the CPU's inbox (wake, add,
//! arrive, new parameters, steal request; its [`bvt::Board`]) and kick it with a
//! reschedule IPI. A vCPU's `Arc` travels next to its `Add`/`Arrive` message through the
//! CPU's arrivals, so the owner always holds the vCPUs its queue names. A vCPU's home is
//! its `sched.home` ([`bvt::VcpuSched`]); only its home CPU changes it (when it gives the
//! vCPU to a thief, or pushes it).
//!
//! # The decision on the way out
//! Every trap, interrupt and hypercall ends in [`on_trap_exit`] with the frame it returns
//! through. The CPU drains its inbox, takes in arrivals, folds in what happened to the vCPU
//! it runs (blocked, stopped, paused, yielded), and, if the queue asks for a decision or the
//! slice is over, asks it what runs next ([`bvt::CpuSched::schedule`]). The frame is then
//! rewritten if needed: the
//! outgoing vCPU's registers saved from it and the incoming one's loaded into it, CR3, the
//! guest segment bases and the x87/MMX/SSE registers switched (the outgoing vCPU's saved
//! with FXSAVE, the incoming one's loaded unless this CPU ran no other vCPU since it left
//! them here); with nothing to run it becomes a frame into the idle loop, and the CPU asks
//! the nearest busy CPU for work. Frames from hypervisor code other than the idle loop are
//! never rewritten.
//!
//! # Weights
//! A domain's weight is its share of the machine, whatever its vCPU count: each of its
//! vCPUs that is up runs with an equal part of it ([`bvt_params`], as Xen's credit
//! scheduler divides a domain's credit among its vCPUs), and bringing one up re-weighs the
//! others ([`reweigh`]).
//!
//! # Timers
//! A vCPU's timers wait in its home CPU's timer queues, holding the vCPU: when the home
//! gives the vCPU to another CPU it takes the vCPU's timers out of its queues, and the new
//! home arms them again as the vCPU arrives; when the vCPU leaves for good (its domain is
//! going) its home cancels them. So no queue keeps a vCPU, and through it its domain, alive
//! after the domain is destroyed. The periodic timer (`VCPUOP_set_periodic_timer`, 10 ms
//! from the start as Xen gives every PV vCPU) runs only while its vCPU runs, as Xen's: it
//! is cancelled when the vCPU is switched out, and on its first return to the guest after
//! being switched in (or after its period changed) [`periodic_tick`] raises VIRQ_TIMER if a
//! period has passed since the last and arms the next; a blocked vCPU is never woken by it.
//!
//! # Runstates
//! Each vCPU's runstate (`hypervisor::runstate`) follows it: running from its switch-in,
//! then runnable, blocked or offline (down, stopped, its domain paused) from its switch-out;
//! a wake or an up makes a vCPU that is not running runnable. Its registered runstate area
//! is written at the switch-out (before CR3 leaves its tables) and after the switch-in
//! (once they are loaded), through `uaccess`, only in guest kernel mode (see
//! `pv::vcpuop::update_runstate_area`).
//!
//! # Why no wake-up is lost
//! A vCPU's `RunState` (in its [`bvt::VcpuSched`]) is the truth; the queue's runnable flag follows it.
//! A vCPU blocks itself while it runs (the queue learns at the exit); whoever unblocks it
//! (`Blocked -> Runnable`) posts `Wake` to its home, which applies it after any earlier
//! block. A blocked vCPU is never stolen (only runnable, waiting ones are), so the `Wake`
//! always finds it; a `Wake` or `SetParams` that finds no vCPU (it is in flight to a thief,
//! or gone) is dropped: in flight it is runnable already, and the thief re-reads its
//! domain's parameters once it arrives. Dying vCPUs are woken so that their home notices
//! and drops them.

mod stats;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use arrayvec::ArrayVec;
use bvt::{ArmedAt, Board, BvtParams, Config, CpuSched, CpuTimers, Message, Note, Platform, RunState, TimerHardware, VcpuKey, Verdict};
use log::warn;
use spin::Once;

use crate::arch::gdt::{HYPERVISOR_CS, HYPERVISOR_DS};
use crate::arch::trap::TrapFrame;
use crate::domain::{Domain, LifeState, Vcpu};
use crate::arch::vectors;
use crate::arch::percpu;
use crate::{cpus, lapic, time};
use crate::arch::owned::{PerCpuArc, PerCpuOwned};
pub use stats::Stay;
use stats::Stats;

/// What the scheduler asks of the layers above it, given once at boot ([`init`]) by the
/// boot script: the guest-visible half of a context switch (`pv`), a vCPU's timer event
/// (`pv::events`), a domain's destruction (its teardown) and the idle loop. Function
/// pointers, so that this module names nothing above it (issue 18: no import circle).
pub struct Glue {
    /// Loads `vcpu`'s saved guest state onto this CPU and into `frame`: registers, page
    /// tables, FPU state (no load when the bool says this CPU's registers hold it since it
    /// last left here), descriptor tables, selectors, segment bases, its runstate area and
    /// time. The scheduler's bookkeeping (running counts, dirty CPUs, runstate) is done.
    pub load: fn(&Vcpu, &mut TrapFrame, bool),
    /// Saves the state of `vcpu`, which `frame` returned to, from this CPU (its tables are
    /// still loaded): the mirror of `load`.
    pub save: fn(&Vcpu, &TrapFrame),
    /// Raises the vCPU's timer event (VIRQ_TIMER).
    pub timer_fired: fn(&Vcpu),
    /// Destroys a domain that is shutting down and that no CPU runs any more.
    pub destroy: fn(&Arc<Domain>),
    /// The idle loop, which a frame with nothing to run returns to.
    pub idle_loop: extern "C" fn() -> !,
}

static GLUE: Once<Glue> = Once::new();

fn glue() -> &'static Glue {
    GLUE.get().expect("sched::init runs at boot")
}

/// A one-shot timer in a CPU's timer queue.
struct Timer {
    kind: TimerKind,
    deadline_ns: u64,
    /// When the local timer is programmed for it: the deadline, or for a latency-sensitive
    /// vCPU's timer, one learnt delivery latency earlier (see [`TimerAdvance`]).
    fire_at_ns: u64,
    /// Its vCPU's domain warps (the hypervisor then waits out an early interrupt).
    latency_sensitive: bool,
    vcpu: Arc<Vcpu>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    /// `set_timer_op`: raises VIRQ_TIMER.
    Guest,
    /// The timeout of `sched_op poll`.
    PollTimeout,
    /// The periodic timer (`VCPUOP_set_periodic_timer`): raises VIRQ_TIMER.
    Periodic,
}

/// What only the CPU itself touches. Its tables grow with the vCPUs homed here and give the
/// memory back as they leave (the scheduler's, and the timer queues'), so that a CPU that
/// once held hundreds of vCPUs does not keep their room after their domains are gone.
struct Local {
    /// The scheduler: run queue, members, slice, balancing ([`bvt::CpuSched`]).
    core: CpuSched<VcpuKey, Arc<Vcpu>>,
    /// The vCPU timers homed here.
    timers: Timers,
    /// TSC when the running vCPU was switched in (for its domain's CPU time).
    since_tsc: u64,
    /// Boot is over on this CPU: frames of its idle loop may be rewritten.
    scheduling: bool,
    /// The vCPU whose x87/MMX/SSE state this CPU's registers hold (the last one switched
    /// in), if any: switching it in again needs no load.
    fpu_holder: Option<VcpuKey>,
}

/// The vCPU timers homed on one CPU ([`CpuTimers`]): latency-sensitive ones programmed
/// ahead by the learnt latency from the programmed interrupt to the return to the guest
/// (held timers) or to the interrupt, the others fired up to the slop late
/// (`timer_slop_us`, 50 us by default, as Xen programs its timer hardware), so that timers
/// falling due close together take one interrupt (as Xen's `timer_slop`).
struct Timers {
    cpu: u32,
    queues: CpuTimers<Timer>,
}

/// The most a latency-sensitive timer is programmed ahead of its deadline (and so the
/// longest the hypervisor waits out an early interrupt).
const MAX_TIMER_ADVANCE_NS: u64 = 200_000;

/// RFLAGS.IF: interrupts on.
const RFLAGS_IF: u64 = 1 << 9;

/// What each CPU shows the others (its inbox, arrivals, idle and warped flags).
static BOARDS: Once<Vec<Board<VcpuKey, Arc<Vcpu>>>> = Once::new();
/// What each CPU did and how late (written by the CPU, read by the end-of-run report).
static STATS: Once<Vec<Stats>> = Once::new();
/// The vCPU each CPU runs (null when idle), from `Arc::into_raw`; only that CPU writes its
/// slot.
static RUNNING: PerCpuArc<Vcpu> = PerCpuArc::new();
static LOCAL: Once<PerCpuOwned<Local>> = Once::new();

/// Creates the run queues, one per CPU, each with `config`; `nearest(i)` lists CPU `i`'s
/// others nearest first. Timers of domains that do not warp may fire up to `timer_slop_ns`
/// late.
pub fn init(cpus: usize, nearest: impl Fn(usize) -> Vec<u32>, config: Config, timer_slop_ns: u64, glue: Glue) {
    GLUE.call_once(|| glue);
    let (cores, boards) = bvt::cpus(cpus, config, nearest);
    BOARDS.call_once(|| boards);
    STATS.call_once(|| (0..cpus).map(|_| Stats::default()).collect());
    let mut cores = cores.into_iter();
    LOCAL.call_once(|| {
        PerCpuOwned::new(cpus, |cpu| Local {
            core: cores.next().expect("one scheduler per CPU"),
            timers: Timers { cpu: cpu as u32, queues: CpuTimers::new(MAX_TIMER_ADVANCE_NS, timer_slop_ns) },
            since_tsc: 0,
            scheduling: false,
            fpu_holder: None,
        })
    });
}

fn boards() -> &'static [Board<VcpuKey, Arc<Vcpu>>] {
    BOARDS.get().expect("sched::init runs at boot")
}

fn with_local<R>(f: impl FnOnce(&mut Local) -> R) -> R {
    LOCAL.get().expect("sched::init runs at boot").with_mine(f)
}

fn this_cpu() -> u32 {
    percpu::current().index.0
}

/// Prints every CPU's scheduling statistics as summary lines (see [`stats::report`]).
pub fn report() {
    if let Some(all) = STATS.get() {
        stats::report(all.iter());
    }
}

/// Records one stay in the hypervisor on this CPU (nothing before the scheduler exists);
/// `domu`: it began while an unprivileged domain ran.
pub fn record_stay(ns: u64, cause: Stay, domu: bool) {
    if let Some(all) = STATS.get() {
        all[this_cpu() as usize].record_stay(ns, cause, domu);
    }
}

/// This CPU's statistics.
fn my_stats() -> &'static Stats {
    &STATS.get().expect("sched::init runs at boot")[this_cpu() as usize]
}

/// The BVT parameters of each of `domain`'s vCPUs under `params`: its weight split among
/// the domain's vCPUs that are up ([`BvtParams::for_domain_vcpu`]).
pub fn bvt_params(domain: &Domain, params: &abi::control::SchedParams) -> BvtParams {
    BvtParams::for_domain_vcpu(params.weight, params.warp_ns, params.warp_limit_ns, params.unwarp_req_ns, domain.pinned, domain.vcpus_up())
}

fn is_online(cpu: u32) -> bool {
    cpus::all().get(cpu as usize).is_some_and(|s| s.state() == cpus::CpuState::Online)
}

/// `cpu` if it is online, else the boot CPU (a vCPU must never be homed where nothing runs).
fn online_or_boot(cpu: u32) -> u32 {
    if is_online(cpu) { cpu } else { 0 }
}

/// Posts `message` to `cpu`'s inbox and kicks it.
fn post(cpu: u32, message: Message<VcpuKey>) {
    boards()[cpu as usize].inbox().post(message);
    kick(cpu);
}

/// This CPU's local APIC timer, where its [`CpuTimers`] are programmed.
struct LocalApic;

impl TimerHardware for LocalApic {
    fn arm_timer_ns(&mut self, delay_ns: u64) {
        lapic::arm_timer_ns(delay_ns);
    }
}

/// Interrupts `cpu` so that it reconsiders what to run (this CPU does at its next exit).
pub fn kick(cpu: u32) {
    if cpu != this_cpu() && is_online(cpu) {
        lapic::send_ipi(cpus::all()[cpu as usize].apic_id, vectors::RESCHEDULE);
    }
}

/// Makes a new (or newly brought up) runnable vCPU known to its home CPU's run queue.
pub fn add(vcpu: Arc<Vcpu>) {
    vcpu.sched.queued.store(true, Ordering::Release);
    let cpu = online_or_boot(vcpu.sched.home.load(Ordering::SeqCst));
    vcpu.sched.home.store(cpu, Ordering::SeqCst);
    let params = bvt_params(&vcpu.domain, &vcpu.domain.params.lock());
    let key = vcpu.sched.key;
    boards()[cpu as usize].deliver(key, vcpu, Message::Add(key, params));
    kick(cpu);
}

/// Makes a blocked vCPU runnable again (from any CPU); true if it was blocked.
pub fn wake(vcpu: &Vcpu) -> bool {
    let woken = vcpu.unblock();
    if woken {
        vcpu.set_runstate(abi::vcpu::Runstate::Runnable);
        vcpu.sched.woken_at_ns.store(time::since_boot_ns(), Ordering::Relaxed);
        post(vcpu.sched.home.load(Ordering::SeqCst), Message::Wake(vcpu.sched.key));
    }
    woken
}

/// Makes a vCPU brought up again after `VCPUOP_down` (already runnable: `Vcpu::start`)
/// runnable in its home's queue, which knows it (blocked since it went down).
pub fn resume(vcpu: &Vcpu) {
    vcpu.sched.woken_at_ns.store(time::since_boot_ns(), Ordering::Relaxed);
    post(vcpu.sched.home.load(Ordering::SeqCst), Message::Wake(vcpu.sched.key));
}

/// Blocks the running vCPU until [`wake`]; it leaves its CPU on the way out of this trap.
pub fn block(vcpu: &Vcpu) {
    vcpu.set_blocked();
}

/// A vCPU was stopped (its domain is going away): its home drops it at its next decision.
pub fn stopped(vcpu: &Vcpu) {
    post(vcpu.sched.home.load(Ordering::SeqCst), Message::Wake(vcpu.sched.key));
}

/// Puts new scheduling parameters in force for every vCPU of `domain`.
pub fn set_params(domain: &Domain, params: abi::control::SchedParams) {
    // Held while posting, so that two changes reach each queue in the order they were made.
    let mut slot = domain.params.lock();
    *slot = params;
    for vcpu in domain.vcpus() {
        post(vcpu.sched.home.load(Ordering::SeqCst), Message::SetParams(vcpu.sched.key, bvt_params(domain, &params)));
    }
}

/// Puts a domain's parameters in force again for each of its vCPUs after the count of its
/// vCPUs that are up changed (each vCPU's part of the weight changed with it).
pub fn reweigh(domain: &Domain) {
    let params = *domain.params.lock();
    set_params(domain, params);
}

/// Pauses a domain: its vCPUs leave their CPUs at their next decision and wait, parked,
/// until [`unpause`].
pub fn pause(domain: &Domain) {
    domain.paused.store(true, Ordering::SeqCst);
    for vcpu in domain.vcpus() {
        kick(vcpu.sched.home.load(Ordering::SeqCst));
    }
}

/// Unpauses a domain: its parked vCPUs become runnable again.
pub fn unpause(domain: &Domain) {
    domain.paused.store(false, Ordering::SeqCst);
    for vcpu in domain.vcpus() {
        // Pairs with `park`: either it sees `paused` clear, or this sees `parked` set.
        if vcpu.sched.parked.swap(false, Ordering::SeqCst) {
            vcpu.set_runstate(abi::vcpu::Runstate::Runnable);
            post(vcpu.sched.home.load(Ordering::SeqCst), Message::Wake(vcpu.sched.key));
        }
    }
}

/// Parks a vCPU of a paused domain; false (and not parked) if the domain was unpaused.
fn park(vcpu: &Vcpu) -> bool {
    vcpu.sched.parked.store(true, Ordering::SeqCst);
    if vcpu.domain.paused.load(Ordering::SeqCst) {
        vcpu.set_runstate(abi::vcpu::Runstate::Offline);
        return true;
    }
    vcpu.sched.parked.store(false, Ordering::SeqCst);
    false
}

/// Sets (or with 0 cancels) the running `vcpu`'s `set_timer_op` timer at system time
/// `deadline_ns`, in this CPU's timer queue.
pub fn set_timer(vcpu: &Arc<Vcpu>, deadline_ns: u64) {
    vcpu.sched.timer_deadline.store(deadline_ns, Ordering::Release);
    arm(vcpu, TimerKind::Guest, deadline_ns);
}

/// Sets (or with 0 cancels) the running `vcpu`'s poll timeout.
pub fn set_poll_timeout(vcpu: &Arc<Vcpu>, deadline_ns: u64) {
    vcpu.sched.poll_deadline.store(deadline_ns, Ordering::Release);
    arm(vcpu, TimerKind::PollTimeout, deadline_ns);
}

fn arm(vcpu: &Arc<Vcpu>, kind: TimerKind, deadline_ns: u64) {
    with_local(|local| local.timers.arm(vcpu, kind, deadline_ns));
}

/// The local timer fired: fires the vCPU timers that are due (the exit path then sees
/// whether the running vCPU's slice is over). Timers that fall due while earlier ones are
/// fired (one may wait out its deadline) are fired in the same interrupt, not left for
/// another interrupt and its delivery latency.
pub fn timer_interrupt() {
    const BATCH: usize = 16;
    let arrived = time::since_boot_ns();
    // The one-shot timer has fired: nothing is armed until the exit path arms it again.
    if let Some(armed_ns) = with_local(|local| local.timers.queues.fired()) {
        my_stats().timer_irq_late.record(arrived.saturating_sub(armed_ns));
    }
    let mut now = arrived;
    loop {
        let due: ArrayVec<Timer, BATCH> = with_local(|local| local.timers.queues.expire(now).take(BATCH).collect());
        if due.is_empty() {
            break;
        }
        // Only the timers this interrupt came for measure its delivery latency.
        let came_for = (now == arrived).then_some(arrived);
        for timer in due {
            fire(timer, came_for);
        }
        now = time::since_boot_ns().max(now + 1);
    }
}

/// Fires one due timer, unless its vCPU has re-armed or cancelled it since. A latency-
/// sensitive timer programmed early whose interrupt came before the deadline is held if its
/// vCPU is blocked (see [`hold`]); otherwise the hypervisor waits the deadline out (at
/// most [`MAX_TIMER_ADVANCE_NS`]), so that the guest never sees its timer fire early.
/// `arrived`: when the interrupt that fires it came, if it came for this timer.
fn fire(timer: Timer, arrived: Option<u64>) {
    let vcpu = &timer.vcpu;
    let armed = match timer.kind {
        TimerKind::Guest => &vcpu.sched.timer_deadline,
        TimerKind::PollTimeout => &vcpu.sched.poll_deadline,
        TimerKind::Periodic => &vcpu.sched.periodic_deadline,
    };
    if armed.load(Ordering::Acquire) != timer.deadline_ns {
        // Re-armed or cancelled on the CPU the vCPU moved to: nothing to wait out or count.
        return;
    }
    let now = time::since_boot_ns();
    if timer.latency_sensitive && now < timer.deadline_ns && hold(&timer) {
        return;
    }
    if let Some(arrived) = arrived.filter(|_| timer.latency_sensitive) {
        with_local(|local| local.timers.queues.observe(arrived.saturating_sub(timer.fire_at_ns)));
    }
    let now = wait_out(timer.deadline_ns, now);
    let stats = my_stats();
    let late = now.saturating_sub(timer.deadline_ns);
    match (timer.latency_sensitive, timer.kind) {
        (true, _) => stats.timer_late_warped.record(late),
        // The periodic timer fires only while its vCPU runs: not a wake-up to measure.
        (false, TimerKind::Periodic) => {}
        (false, _) => stats.timer_late.record(late),
    }
    let current = |deadline: &AtomicU64| deadline.compare_exchange(timer.deadline_ns, 0, Ordering::AcqRel, Ordering::Acquire).is_ok();
    match timer.kind {
        TimerKind::Guest if current(&vcpu.sched.timer_deadline) => {
            if timer.latency_sensitive && vcpu.state() == RunState::Blocked {
                vcpu.sched.warped_deadline_ns.store(timer.deadline_ns, Ordering::Relaxed);
            }
            (glue().timer_fired)(vcpu);
        }
        TimerKind::PollTimeout if current(&vcpu.sched.poll_deadline) && vcpu.end_poll() => {
            wake(vcpu);
        }
        TimerKind::Periodic if current(&vcpu.sched.periodic_deadline) => {
            vcpu.sched.periodic_armed_ns.store(0, Ordering::Release);
            periodic_tick(vcpu);
        }
        _ => {}
    }
}

/// Spins from system time `now` until `deadline_ns`, if it is at most
/// [`MAX_TIMER_ADVANCE_NS`] away (an early interrupt is never waited out for longer);
/// returns the system time at the end.
fn wait_out(deadline_ns: u64, mut now: u64) -> u64 {
    while now < deadline_ns && deadline_ns - now <= MAX_TIMER_ADVANCE_NS {
        core::hint::spin_loop();
        now = time::since_boot_ns();
    }
    now
}

/// Holds `timer` (due early) on its vCPU ([`bvt::HeldTimer`]) and wakes it, if the vCPU is
/// blocked and not
/// polling (a poll ends on its ports, which the timer's port may not be among); false if
/// it was not held (the caller fires it as usual).
fn hold(timer: &Timer) -> bool {
    let vcpu = &timer.vcpu;
    let blocked = timer.kind == TimerKind::Guest && vcpu.state() == RunState::Blocked && vcpu.poll_target().is_none();
    if !blocked || vcpu.sched.timer_deadline.load(Ordering::Acquire) != timer.deadline_ns {
        return false;
    }
    let held = &vcpu.sched.held_timer;
    held.fire_at_ns.store(timer.fire_at_ns, Ordering::Relaxed);
    held.cpu.store(this_cpu(), Ordering::Relaxed);
    held.deadline_ns.store(timer.deadline_ns, Ordering::Release);
    if wake(vcpu) {
        vcpu.sched.warped_deadline_ns.store(timer.deadline_ns, Ordering::Relaxed);
        return true;
    }
    // Something else woke it meanwhile, and it may block again before it returns to the
    // guest: the timer is taken back and fired as usual, unless a return to the guest
    // has released it already.
    held.deadline_ns.compare_exchange(timer.deadline_ns, 0, Ordering::AcqRel, Ordering::Acquire).is_err()
}

/// On every return to a guest: raises the held timer of `vcpu` (the vCPU about to run on
/// this CPU) once its deadline has come. The time from the programmed interrupt to here is
/// the latency the CPU learns to program ahead of (if this CPU held the timer); the wait is the hypervisor's, not the
/// guest's: neither its domain's CPU time nor its BVT virtual time (else a domain woken
/// every 1 ms would pay for the hiding of its wake-up path with its warp, and lose it).
pub fn release_held_timer(vcpu: &Vcpu) {
    let held = &vcpu.sched.held_timer;
    if held.deadline_ns.load(Ordering::Relaxed) == 0 {
        return;
    }
    let deadline = held.deadline_ns.swap(0, Ordering::Acquire);
    if deadline == 0 {
        return;
    }
    let ready_tsc = time::rdtsc();
    let ready = time::since_boot_ns();
    let now = wait_out(deadline, ready);
    let waited_ticks = time::rdtsc().wrapping_sub(ready_tsc);
    let fire_at = held.fire_at_ns.load(Ordering::Relaxed);
    let held_here = held.cpu.load(Ordering::Relaxed) == this_cpu();
    with_local(|local| {
        if held_here {
            local.timers.queues.observe(ready.saturating_sub(fire_at));
        }
        bvt::Queue::forgive_running(local.core.queue_mut(), now - ready);
        local.since_tsc = local.since_tsc.wrapping_add(waited_ticks);
    });
    let stats = my_stats();
    stats.timer_late_warped.record(now.saturating_sub(deadline));
    stats.held_wait_ns.fetch_add(now - ready, Ordering::Relaxed);
    if vcpu.sched.timer_deadline.compare_exchange(deadline, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        (glue().timer_fired)(vcpu);
    }
}


/// On every return to a guest, for `vcpu` (running here): (re)arms its periodic timer when
/// it is not armed for the current period (the vCPU was just switched in, its period
/// changed, or the timer just fired), raising VIRQ_TIMER first if a whole period has passed
/// since the last (Xen's `vcpu_periodic_timer_work`). Costs a few loads otherwise.
pub fn periodic_tick(vcpu: &Vcpu) {
    let period = vcpu.domain.slot(vcpu.id).map_or(0, |slot| slot.periodic_ns.load(Ordering::Acquire));
    let armed_for = vcpu.sched.periodic_armed_ns.load(Ordering::Acquire);
    if period == armed_for && (period == 0 || vcpu.sched.periodic_deadline.load(Ordering::Acquire) != 0) {
        return;
    }
    let Some(me) = vcpu.domain.vcpu(vcpu.id) else { return };
    if period == 0 {
        vcpu.sched.periodic_deadline.store(0, Ordering::Release);
        vcpu.sched.periodic_armed_ns.store(0, Ordering::Release);
        arm(&me, TimerKind::Periodic, 0);
        return;
    }
    let now = time::since_boot_ns();
    let mut next = vcpu.sched.periodic_last_ns.load(Ordering::Acquire).saturating_add(period);
    if now >= next {
        (glue().timer_fired)(vcpu);
        vcpu.sched.periodic_last_ns.store(now, Ordering::Release);
        next = now.saturating_add(period);
    }
    vcpu.sched.periodic_deadline.store(next, Ordering::Release);
    vcpu.sched.periodic_armed_ns.store(period, Ordering::Release);
    arm(&me, TimerKind::Periodic, next);
}

/// Marks this CPU as done with boot: from now on the frames of its idle loop may be
/// rewritten into guest frames.
pub fn enter_idle() {
    with_local(|local| local.scheduling = true);
    boards()[this_cpu() as usize].enter_idle();
}

/// Whether messages or arrivals wait for this CPU (the idle loop then interrupts itself).
pub fn has_work() -> bool {
    BOARDS.get().is_some_and(|all| all[this_cpu() as usize].has_work())
}

/// The vCPU this CPU runs, if any.
pub fn current() -> Option<&'static Vcpu> {
    RUNNING.get_mine()
}

/// Decides what runs when `frame` is returned through, and rewrites it accordingly.
///
/// Only a frame of guest mode or of the idle loop may be rewritten: the idle loop is the
/// one piece of the hypervisor that runs with interrupts on, so a trap taken in the
/// hypervisor with them off (a page fault on a guest pointer, fixed up inside a hypercall)
/// must return to where it was. Switching vCPUs there would save the hypervisor's own
/// half-done frame as the vCPU's context and resume it later on a stack reused since.
pub fn on_trap_exit(frame: &mut TrapFrame) {
    if LOCAL.get().is_none() {
        return;
    }
    let here = percpu::current();
    let from_guest = frame.is_from_guest();
    let from_idle = !from_guest && frame.rflags & RFLAGS_IF != 0;
    if !from_guest && !from_idle {
        return;
    }
    let mut leaving = Vec::new();
    with_local(|local| {
        if from_guest || (local.scheduling && from_idle) {
            let Local { core, timers, since_tsc, fpu_holder, .. } = local;
            let mut exit = Exit { now: time::since_boot_ns(), frame, stack_top: here.stack_top, timers, since_tsc, fpu_holder, leaving: &mut leaving, stats: my_stats() };
            core.schedule(boards(), &mut exit);
        }
    });
    for domain in leaving {
        leave(&domain);
    }
}

/// The runstate a vCPU leaving its CPU goes to.
fn runstate_after(vcpu: &Vcpu) -> abi::vcpu::Runstate {
    use abi::vcpu::Runstate as R;
    match vcpu.state() {
        RunState::Runnable if vcpu.domain.paused.load(Ordering::SeqCst) => R::Offline,
        RunState::Runnable => R::Runnable,
        RunState::Blocked => R::Blocked,
        RunState::Stopped | RunState::Down => R::Offline,
    }
}

/// What may happen to a vCPU the queue named, or the running one (see [`bvt::Verdict`]).
fn verdict(vcpu: &Vcpu) -> Verdict {
    match vcpu.state() {
        RunState::Stopped => Verdict::Drop,
        _ if vcpu.domain.state() != LifeState::Running => Verdict::Drop,
        RunState::Blocked | RunState::Down => Verdict::Block,
        RunState::Runnable if vcpu.domain.paused.load(Ordering::SeqCst) && park(vcpu) => Verdict::Block,
        RunState::Runnable => Verdict::Run,
    }
}

/// The machine as this CPU's scheduler sees it on the way out of one trap: the frame it
/// returns through, this CPU's timers and the domains whose vCPUs it stopped running.
struct Exit<'a> {
    /// System time when the exit began (the decision's time).
    now: u64,
    frame: &'a mut TrapFrame,
    stack_top: u64,
    timers: &'a mut Timers,
    since_tsc: &'a mut u64,
    fpu_holder: &'a mut Option<VcpuKey>,
    /// Domains this CPU no longer runs a vCPU of, to [`leave`] once the frame no longer
    /// depends on them.
    leaving: &'a mut Vec<Arc<Domain>>,
    stats: &'static Stats,
}

impl Platform<VcpuKey, Arc<Vcpu>> for Exit<'_> {
    fn now_ns(&self) -> u64 {
        self.now
    }

    /// Arms the local timer for the earliest of the next latency-sensitive timer, the next
    /// other timer plus the slop, the slice's end and the next look for work (unless it is
    /// armed for it already: see [`CpuTimers::program`]).
    fn program_timer(&mut self, now_ns: u64, deadlines: [Option<u64>; 2]) {
        self.timers.queues.program(now_ns, deadlines, &mut LocalApic);
    }

    fn send_ipi(&mut self, cpu: u32) {
        lapic::send_ipi(cpus::all()[cpu as usize].apic_id, vectors::RESCHEDULE);
    }

    fn is_online(&self, cpu: u32) -> bool {
        is_online(cpu)
    }

    fn verdict(&mut self, vcpu: &Arc<Vcpu>) -> Verdict {
        verdict(vcpu)
    }

    /// The running vCPU is back from a poll (an event or the timeout woke it), and may
    /// have asked to yield.
    fn yielded(&mut self, vcpu: &Arc<Vcpu>) -> bool {
        if vcpu.poll_target().is_some() || vcpu.sched.poll_deadline.load(Ordering::Relaxed) != 0 {
            self.timers.end_poll(vcpu);
        }
        vcpu.sched.yield_requested.swap(false, Ordering::Relaxed)
    }

    /// Its domain's parameters (an arrival re-reads them once it is in the queue).
    fn params(&self, vcpu: &Arc<Vcpu>) -> BvtParams {
        bvt_params(&vcpu.domain, &vcpu.domain.params.lock())
    }

    fn switch_out(&mut self, vcpu: &Arc<Vcpu>) {
        let domain = switch_out(vcpu, self.frame, *self.since_tsc, self.timers);
        self.leaving.push(domain);
    }

    fn switch_in(&mut self, vcpu: &Arc<Vcpu>) -> bool {
        let woken_at = vcpu.sched.woken_at_ns.swap(0, Ordering::Relaxed);
        let warped_deadline = vcpu.sched.warped_deadline_ns.swap(0, Ordering::Relaxed);
        if let Err(domain) = switch_in(vcpu.clone(), self.frame, self.fpu_holder) {
            self.leaving.push(domain);
            return false;
        }
        let now = self.now;
        self.stats.switches.fetch_add(1, Ordering::Relaxed);
        if woken_at != 0 {
            self.stats.wake_to_run.record(now.saturating_sub(woken_at));
            if warped_deadline != 0 {
                self.stats.warped_to_run.record(now.saturating_sub(warped_deadline));
            }
        }
        *self.since_tsc = time::rdtsc();
        true
    }

    fn to_idle(&mut self) {
        idle_frame(self.frame, self.stack_top);
    }

    /// The vCPU leaves for `cpu` without its timers: they leave this CPU's queues here and
    /// are armed again on `cpu` as the vCPU arrives (from its deadlines), so no queue here
    /// holds the vCPU once it has gone.
    fn depart(&mut self, vcpu: &Arc<Vcpu>, cpu: u32) {
        self.timers.drop_all(vcpu);
        vcpu.sched.home.store(cpu, Ordering::SeqCst);
    }

    /// A vCPU that moved here left its timers behind: armed here from its deadlines.
    fn arrive(&mut self, vcpu: &Arc<Vcpu>) {
        self.timers.rearm(vcpu);
    }

    /// A vCPU that will never run again: its timers (all in this CPU's queues) would only
    /// keep it (and its domain) alive until they fire.
    fn retire(&mut self, key: VcpuKey, vcpu: &Arc<Vcpu>) {
        self.timers.drop_all(vcpu);
        if *self.fpu_holder == Some(key) {
            *self.fpu_holder = None;
        }
    }

    fn note(&mut self, note: Note<VcpuKey>) {
        match note {
            Note::Migrated(_) => {
                self.stats.migrations.fetch_add(1, Ordering::Relaxed);
            }
            Note::Pushed { .. } => {
                self.stats.pushes.fetch_add(1, Ordering::Relaxed);
            }
            Note::Bounced { message, reason } => warn!("sched: cpu {} could not apply {message:?}: {reason:?}", self.timers.cpu),
            Note::Unknown(_) => warn!("sched: cpu {} queue named an unknown vCPU", self.timers.cpu),
        }
    }
}

impl Timers {
    /// The running vCPU is back from a poll: its timeout goes.
    fn end_poll(&mut self, vcpu: &Vcpu) {
        vcpu.end_poll();
        vcpu.sched.poll_deadline.store(0, Ordering::Release);
        if let Some(armed) = vcpu.sched.timers.lock().poll.take() {
            self.cancel(armed);
        }
    }

    /// Cancels a timer if it waits in one of this CPU's queues (a vCPU's timers are always
    /// in its home's: see the module's Timers).
    fn cancel(&mut self, armed: ArmedAt) {
        if armed.cpu == self.cpu {
            self.queues.cancel(armed.timer);
        }
    }

    /// Takes `vcpu`'s timers out of this CPU's queues.
    fn drop_all(&mut self, vcpu: &Vcpu) {
        let mut timers = vcpu.sched.timers.lock();
        let armed = &mut *timers;
        for slot in [&mut armed.guest, &mut armed.poll, &mut armed.periodic] {
            if let Some(timer) = slot.take() {
                self.cancel(timer);
            }
        }
    }

    /// Arms (deadline != 0) or cancels one of `vcpu`'s timers in this CPU's queues.
    fn arm(&mut self, vcpu: &Arc<Vcpu>, kind: TimerKind, deadline_ns: u64) {
        let me = self.cpu;
        let latency_sensitive = kind == TimerKind::Guest && deadline_ns != 0 && vcpu.domain.params.lock().warp_ns > 0;
        let mut timers = vcpu.sched.timers.lock();
        let slot = match kind {
            TimerKind::Guest => &mut timers.guest,
            TimerKind::PollTimeout => &mut timers.poll,
            TimerKind::Periodic => &mut timers.periodic,
        };
        if let Some(armed) = slot.take() {
            self.cancel(armed);
        }
        if deadline_ns != 0 {
            let vcpu = vcpu.clone();
            let timer = self.queues.insert(deadline_ns, latency_sensitive, |fire_at_ns| Timer { kind, deadline_ns, fire_at_ns, latency_sensitive, vcpu });
            *slot = Some(ArmedAt { cpu: me, timer });
        }
    }

    /// Arms here the timers of a vCPU that arrived from another CPU, from its deadlines.
    fn rearm(&mut self, vcpu: &Arc<Vcpu>) {
        for (kind, deadline) in [(TimerKind::Guest, &vcpu.sched.timer_deadline), (TimerKind::PollTimeout, &vcpu.sched.poll_deadline)] {
            let deadline_ns = deadline.load(Ordering::Acquire);
            if deadline_ns != 0 {
                self.arm(vcpu, kind, deadline_ns);
            }
        }
    }
}

/// Saves the running vCPU's state from this CPU (through [`Glue::save`]) and its domain's
/// CPU time since `since_tsc`; returns its domain, which the caller must [`leave`] once the
/// frame no longer depends on it.
fn switch_out(vcpu: &Vcpu, frame: &TrapFrame, since_tsc: u64, timers: &mut Timers) -> Arc<Domain> {
    let ran = time::tsc_to_ns(time::rdtsc().wrapping_sub(since_tsc));
    vcpu.domain.counters.cpu_time_ns.fetch_add(ran, Ordering::Relaxed);
    // Its periodic timer runs only while it does.
    vcpu.sched.periodic_deadline.store(0, Ordering::Release);
    vcpu.sched.periodic_armed_ns.store(0, Ordering::Release);
    let periodic = vcpu.sched.timers.lock().periodic.take();
    if let Some(armed) = periodic {
        timers.cancel(armed);
    }
    vcpu.runstate.lock().change(runstate_after(vcpu), time::since_boot_ns());
    (glue().save)(vcpu, frame);
    vcpu.set_running_on(None);
    let vcpu = RUNNING.take_mine().expect("the vCPU switched out runs here");
    vcpu.domain.clone()
}

/// Loads `vcpu` onto this CPU through [`Glue::load`]: registers into the frame, its tables
/// into CR3, its GDT, LDT and data selectors, its x87/SSE/AVX state into the registers
/// (unless `fpu_holder`, the vCPU whose state they hold, is this one and it was saved here
/// last), its XCR0, CR0.TS and debug registers. Refuses when its domain is shutting down
/// (returning the domain to [`leave`]): a domain's memory may be returned as soon as no CPU
/// counts as running it, so the count is raised before CR3 is loaded. Before CR3 is loaded
/// this CPU also joins the domain's dirty CPUs (those a TLB flush for its frames must
/// reach, see `tlb`) and the vCPU records where it runs.
fn switch_in(vcpu: Arc<Vcpu>, frame: &mut TrapFrame, fpu_holder: &mut Option<VcpuKey>) -> Result<(), Arc<Domain>> {
    // SeqCst with the domain's state (`Domain::begin_shutdown`): either this sees it shutting
    // down, or its killer sees this count.
    vcpu.domain.running_vcpus.fetch_add(1, Ordering::SeqCst);
    if vcpu.domain.state() != LifeState::Running {
        return Err(vcpu.domain.clone());
    }
    let me = percpu::current().index;
    vcpu.domain.dirty_cpus.insert(me);
    vcpu.set_running_on(Some(me));
    vcpu.runstate.lock().change(abi::vcpu::Runstate::Running, time::since_boot_ns());
    (glue().load)(&vcpu, frame, *fpu_holder == Some(vcpu.sched.key));
    *fpu_holder = Some(vcpu.sched.key);
    RUNNING.set_mine(vcpu);
    Ok(())
}

/// Turns `frame` into a return to the idle loop on this CPU's stack.
fn idle_frame(frame: &mut TrapFrame, stack_top: u64) {
    crate::tlb::load_hypervisor_tables();
    *frame = TrapFrame {
        rip: glue().idle_loop as *const () as u64,
        cs: HYPERVISOR_CS as u64,
        rflags: 0x2,
        rsp: stack_top - 8,
        ss: HYPERVISOR_DS as u64,
        ..TrapFrame::zeroed()
    };
}

/// This CPU no longer runs a vCPU of `domain` (its CR3 has moved on); the last CPU to
/// leave a domain that is shutting down destroys it. Unless it now runs another vCPU of the
/// same domain, this CPU holds none of the domain's translations any more (the CR3 load
/// dropped them) and leaves its dirty CPUs, before the count falls.
fn leave(domain: &Arc<Domain>) {
    let here = percpu::current();
    if !current().is_some_and(|vcpu| Arc::ptr_eq(&vcpu.domain, domain)) {
        domain.dirty_cpus.remove(here.index);
    }
    let last = domain.running_vcpus.fetch_sub(1, Ordering::SeqCst) == 1;
    if last && domain.state() == LifeState::ShuttingDown {
        (glue().destroy)(domain);
    }
}
