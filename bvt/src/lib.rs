//! Borrowed Virtual Time (BVT) scheduling of vCPUs, one run queue per CPU, as in "Xen and
//! the Art of Virtualization" (SOSP 2003) after Duda and Cheriton (SOSP 1999).
//!
//! The hypervisor owns one [`RunQueue`] per CPU and only that CPU ever touches it (it takes
//! `&mut self`; there is no lock). Other CPUs reach it through its [`Inbox`], a lock-free
//! multi-producer queue of [`Message`]s, and then send it an IPI; the owner calls
//! [`RunQueue::drain`] at its next scheduling decision. This crate decides; it never touches
//! hardware, never sends an IPI and never reads a clock: every time is passed in, and the
//! things only the hypervisor can do come back as [`Action`]s.
//!
//! # Units and formulas
//! - Real time: `u64` nanoseconds of system time (`now_ns`), the same clock on every CPU.
//! - Virtual time: `u64` *virtual ns* (vns). One ns of CPU at weight 1 is one vns; a vCPU of
//!   weight `w` that runs `t` ns advances its actual virtual time `A` by `t / w`. The
//!   remainder is carried to the next charge, so after any sequence of charges
//!   `A = A0 + floor(total_ns / w)` exactly (this is why no extra fixed-point scale is
//!   needed; `u64` vns last 584 years of CPU time at weight 1).
//! - Charging: exact, to the nanosecond, whenever the queue is told the time (pick, wake,
//!   block, tick). The minimum charging unit (MCU) is the shortest slice [`RunQueue::pick_next`]
//!   hands out, which bounds the rate of timer-driven switches; run time is not rounded up to
//!   MCUs, so a vCPU that runs 5 us and blocks pays 5 us, not 100.
//! - Effective virtual time: `E = A - W` while warped, else `E = A` (signed: `i128`).
//! - Scheduler virtual time `SVT`: the minimum `A` over this queue's runnable vCPUs (the
//!   running one included); it never decreases, and keeps its last value while the queue is
//!   idle. A vCPU that wakes gets `A = max(A, SVT)`: sleeping earns no credit.
//! - Dispatch: the runnable vCPU with the lowest `E` (ties: the one dispatched least
//!   recently, which makes equal weights round robin). The running vCPU `r` keeps the CPU
//!   against a rival `x` unless `E_x + C / w_r < E_r`, where `C` is the context switch
//!   allowance in real ns converted through the running vCPU's weight (integer division).
//!   Its slice lasts until the nearest rival would beat it so; a vCPU that becomes runnable
//!   nearer than that rival makes a new decision due, which measures the slice again (else
//!   a vCPU waking level with the running one would wait out a slice measured against a
//!   rival far behind).
//! - Warp: a vCPU with `warp_vns > 0` is warped when it wakes, unless it has used up its
//!   warp limit `L` (`warp_limit_ns`; 0 means no limit): real ns *run* warped, summed over
//!   its warped stretches. Blocking pauses the warp; running `L` ends it. Either way the vCPU
//!   is unwarped from then on, and once it has been unwarped (asleep or runnable) for `U`
//!   (`unwarp_req_ns`, real time) its limit is renewed. So no vCPU runs warped for more than
//!   `L` without `U` unwarped in between, and a vCPU that was delayed, finished a wake-up
//!   late and slept only briefly before the next still wakes warped.
//! - Migration carries `A - SVT` (the lag, at least 0) rather than `A`, because each CPU's
//!   virtual time is its own: the vCPU arrives with `A = SVT_there + lag`.

//! # Wake-up boost
//! Unwarped domains that sleep most of the time (the idle domains of `make stress`, a
//! server waiting for requests) use far less than their share, yet in plain BVT a wake-up
//! waits behind the running vCPU's whole allowance `C` (5 ms), and a wake-up cut short by a
//! warped vCPU's loses its place to every later one: `A = max(A, SVT)` puts each new waker
//! level with SVT, just behind the vCPU already charged for part of its wake-up, so that a
//! stream of wake-ups overtakes it and the hogs' allowances come first (issue 18 item 2:
//! idle p99 8-16 ms at N=600 in real runs, their wake-ups a fifth of the time cut short by
//! the latency domains' warps). As Xen's credit scheduler boosts a vCPU that wakes under its
//! credit, a vCPU that wakes from *behind* SVT (it used less than its share while asleep) is
//! boosted for its next [`Config::wake_boost_ns`] of running (500 us by default; 0: off),
//! if it slept at least [`Config::boost_min_sleep_ns`] (1 ms: so that a vCPU waking
//! thousands of times a second cannot make the running one pay two switches per wake-up):
//! - it beats an unboosted running vCPU as soon as its `E` is lower, without the allowance
//!   (boosted vCPUs among themselves keep it, and warped ones beat them as before);
//! - it gains no virtual time: `A` is set and charged as for any vCPU, so the boost changes
//!   when a vCPU runs, never how much (a vCPU that spins runs its boost out in 500 us).
//!
//! # Interruptions
//! A warped vCPU preempting a boosted one, or a boosted one preempting an unboosted one,
//! interrupts it; once the interruptions are over (the CPU picks an unwarped vCPU that is
//! not boosted, or the interrupted one), the interrupted vCPU resumes: a boosted one before
//! any other boosted vCPU, an unboosted one after them, before the rest. So a wake-up cut
//! short by a warp finishes next, and a CPU hog that boosted wake-ups interrupted keeps its
//! turn rather than handing the CPU to its rival hog at every wake-up (which would double
//! the switches, and with each switch's cost charged to the vCPU switched in, skew the
//! hogs' shares: 4-8% in the simulator).
//!
//! # Stealing (the owner-only invariant kept)
//! Each queue publishes its load (runnable vCPUs, the running one included) in an atomic of
//! its inbox. An idle CPU calls [`steal_from_nearest`] with the other CPUs' inboxes nearest first;
//! it posts [`Message::Steal`] to the first one with a vCPU waiting (load at least
//! [`STEAL_MIN_LOAD`]) and no other steal request outstanding; the victim answers at its
//! next decision (it is not interrupted for it). The victim, in `drain`, takes one runnable
//! vCPU that is not running (the one dispatched least recently) out of its queue and returns
//! [`Action::Migrate`]; its [`CpuSched`] has the platform record the vCPU's new CPU, delivers
//! it with [`Message::Arrive`] to the thief and has the platform kick it. A queue's vCPUs
//! are only ever moved by their owner.
//!
//! [`TimerQueue`] is a separate small helper: a per-CPU min-heap of deadlines with cancel;
//! [`TimerAdvance`] learns how early to program latency-sensitive timers; [`CpuTimers`] is a
//! CPU's two timer queues (latency-sensitive ones programmed early, the others fired up to a
//! slop late) and the programming of its one-shot timer through [`TimerHardware`], the one
//! thing of the platform it needs.
//!
//! [`CpuSched`] is one CPU's scheduler built on these: the decision on the way out of every
//! trap, pushing, stealing and the timer's programming, written against [`Platform`] (the
//! time, the timer, an IPI, the context switch); the hypervisor and the stress simulator
//! both run it.
//!
//! [`VcpuSched`] is a vCPU's scheduling record, shared by every CPU (its run state, home,
//! timer deadlines, held timer): the hypervisor's `Vcpu` carries one and nothing else of
//! the scheduler.
//!
//! `stress_sim` (test-only, or with the `sim` feature) simulates `make stress` on several
//! CPUs with these queues and a cost model, at up to 1000 domains and more.
//!
//! # Memory
//! A CPU's tables grow with the vCPUs and timers it holds and give the memory back once they
//! are under a quarter full ([`shrink_when_sparse`], one policy with hysteresis, also for the
//! hypervisor's own per-CPU lists), so creating and destroying domains forever does not keep
//! the heap at its high-water mark. They are created at their floor and come back to exactly
//! it once they hold few entries, so that a CPU at rest takes the same heap whatever it held.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod cpu_sched;
mod cpu_timers;
mod drain;
mod error;
mod inbox;
#[cfg(any(test, feature = "sim"))]
mod linear_queue;
mod params;
mod queue;
#[cfg(test)]
mod proptests;
mod run_queue;
mod shrink;
#[cfg(any(test, feature = "sim"))]
pub mod stress_sim;
#[cfg(test)]
mod sim;
mod timer_advance;
mod timer_queue;
mod vcpu_sched;
mod vcpu_state;

pub use cpu_sched::{cpus, Board, CpuSched, Cpus, Note, Platform, Verdict, BALANCE_INTERVAL_NS};
pub use cpu_timers::{ArmedTimer, CpuTimers, TimerHardware, MIN_TIMER_DELAY_NS};
pub use drain::{Action, Drained};
pub use error::BvtError;
pub use inbox::{steal_from_nearest, Inbox, Message};
pub use params::{
    BvtParams, Config, CpuId, DEFAULT_BOOST_MIN_SLEEP_NS, DEFAULT_CTX_SWITCH_ALLOWANCE_NS, DEFAULT_MCU_NS, DEFAULT_WAKE_BOOST_NS,
    NO_WARP_LIMIT,
    STEAL_MIN_LOAD, WEIGHT_SCALE,
};
pub use queue::Queue;
pub use run_queue::{Decision, RunQueue, VcpuView};
pub use shrink::{new_table, shrink_when_sparse, sparse_capacity, MIN_TABLE_CAPACITY};
pub use timer_advance::TimerAdvance;
pub use timer_queue::{Expired, TimerHandle, TimerQueue, TIMER_TABLE_FLOOR};
pub use vcpu_sched::{ArmedAt, HeldTimer, RunState, VcpuKey, VcpuSched, VcpuTimers};
pub use vcpu_state::VcpuState;
