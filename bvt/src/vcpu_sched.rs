//! A vCPU's scheduling record: what any CPU may read or change of a vCPU's scheduling (its
//! run state, its home CPU, its timers' deadlines and where they wait, a held timer, the
//! flags of a pending yield or a park), as opposed to what its home CPU's [`RunQueue`]
//! holds of it.
//!
//! The hypervisor's `Vcpu` carries one ([`VcpuSched`]) and nothing else of the scheduler;
//! the scheduler (the hypervisor's `sched` module) gives its fields their meaning, so the
//! `domain` module, which defines `Vcpu`, needs nothing of `sched` (issue 18: no import
//! circle). Lock-free but for [`VcpuSched::timers`], which only the vCPU's home CPU takes.
//!
//! # The run state
//! [`RunState`] is the truth about whether a vCPU may run; the run queue's runnable flag
//! follows it. The transitions are compare-and-swaps, so that of two CPUs racing to wake a
//! blocked vCPU exactly one sees [`VcpuSched::unblock`] succeed (and posts the wake-up), a
//! block never overrides a stop, and a vCPU taken down or stopped stays so until brought up.
//!
//! [`RunQueue`]: crate::RunQueue

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use spin::Mutex;

use crate::cpu_timers::ArmedTimer;

/// A vCPU's name in the run queues: unique for the whole run (never reused), so a message
/// that outlives its vCPU can never reach another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuKey(u64);

impl VcpuKey {
    /// A key no vCPU had before.
    pub fn fresh() -> VcpuKey {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        VcpuKey(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Whether a vCPU may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RunState {
    /// Waiting in a run queue or running.
    Runnable = 0,
    /// Waiting for an event.
    Blocked = 1,
    /// Its domain is shutting down: never runs again.
    Stopped = 2,
    /// Initialised but not brought up yet (`VCPUOP_up`), or taken down (`VCPUOP_down`).
    Down = 3,
}

impl RunState {
    fn from_raw(raw: u8) -> RunState {
        match raw {
            0 => RunState::Runnable,
            1 => RunState::Blocked,
            2 => RunState::Stopped,
            _ => RunState::Down,
        }
    }
}

/// Where one of a vCPU's timers waits: the CPU, and where in that CPU's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmedAt {
    pub cpu: u32,
    pub timer: ArmedTimer,
}

/// The vCPU's pending timers in its home CPU's timer queues, so that re-arming cancels the
/// old one, and a move or the vCPU's end takes them out.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuTimers {
    /// `set_timer_op`.
    pub guest: Option<ArmedAt>,
    /// The timeout of `sched_op poll`.
    pub poll: Option<ArmedAt>,
    /// `VCPUOP_set_periodic_timer`.
    pub periodic: Option<ArmedAt>,
}

/// A latency-sensitive timer of a blocked vCPU, fired ahead of its deadline: the vCPU was
/// woken at once, and its timer event is raised on its return to the guest once the
/// deadline has come. Deadline 0: none held.
#[derive(Debug, Default)]
pub struct HeldTimer {
    pub deadline_ns: AtomicU64,
    /// When the local timer was programmed for it.
    pub fire_at_ns: AtomicU64,
    /// The CPU whose interrupt held it: only that CPU learns from its latency.
    pub cpu: AtomicU32,
}

/// One vCPU's scheduling record (see the module documentation).
#[derive(Debug)]
pub struct VcpuSched {
    /// Its name in the run queues.
    pub key: VcpuKey,
    state: AtomicU8,
    /// Its home: the CPU whose run queue holds it (changed only by that CPU).
    pub home: AtomicU32,
    /// Asked to give up its CPU at the next exit (`sched_op yield`).
    pub yield_requested: AtomicBool,
    /// Its single-shot timer (`set_timer_op`), in system-time ns; 0: none.
    pub timer_deadline: AtomicU64,
    /// The timeout of its `sched_op poll`, in system-time ns; 0: none.
    pub poll_deadline: AtomicU64,
    /// Its periodic timer: when it last fired, the deadline armed (0: none) and the period
    /// it was armed for.
    pub periodic_last_ns: AtomicU64,
    pub periodic_deadline: AtomicU64,
    pub periodic_armed_ns: AtomicU64,
    /// Where its timers wait (only its home CPU takes the lock).
    pub timers: Mutex<VcpuTimers>,
    /// When it was last woken, until it runs (system time ns; for the wake-up latency).
    pub woken_at_ns: AtomicU64,
    /// The deadline of its latency-sensitive timer that last fired while it was blocked,
    /// until it runs (for the timer-to-run latency of warping domains).
    pub warped_deadline_ns: AtomicU64,
    /// A latency-sensitive timer fired early while it was blocked.
    pub held_timer: HeldTimer,
    /// Kept off its CPU because its domain is paused.
    pub parked: AtomicBool,
    /// Known to a run queue: bringing it up again is a wake.
    pub queued: AtomicBool,
}

impl VcpuSched {
    /// A runnable vCPU homed on `home`, with a fresh key; its periodic timer counts from
    /// `now_ns`.
    pub fn new(home: u32, now_ns: u64) -> VcpuSched {
        VcpuSched {
            key: VcpuKey::fresh(),
            state: AtomicU8::new(RunState::Runnable as u8),
            home: AtomicU32::new(home),
            yield_requested: AtomicBool::new(false),
            timer_deadline: AtomicU64::new(0),
            poll_deadline: AtomicU64::new(0),
            periodic_last_ns: AtomicU64::new(now_ns),
            periodic_deadline: AtomicU64::new(0),
            periodic_armed_ns: AtomicU64::new(0),
            timers: Mutex::new(VcpuTimers::default()),
            woken_at_ns: AtomicU64::new(0),
            warped_deadline_ns: AtomicU64::new(0),
            held_timer: HeldTimer::default(),
            parked: AtomicBool::new(false),
            queued: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> RunState {
        RunState::from_raw(self.state.load(Ordering::Acquire))
    }

    fn swap_state(&self, from: RunState, to: RunState) -> bool {
        self.state.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Blocks a runnable vCPU (it leaves its CPU at its next exit); anything else stays.
    pub fn set_blocked(&self) {
        let _ = self.swap_state(RunState::Runnable, RunState::Blocked);
    }

    /// Unblocks a blocked vCPU; true for the one caller that did (it then queues it).
    pub fn unblock(&self) -> bool {
        self.swap_state(RunState::Blocked, RunState::Runnable)
    }

    /// Marks a freshly made vCPU down (not brought up yet).
    pub fn set_down(&self) {
        self.state.store(RunState::Down as u8, Ordering::Release);
    }

    /// Takes an up vCPU (runnable or blocked) down; false if it was not up.
    pub fn take_down(&self) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current != RunState::Runnable as u8 && current != RunState::Blocked as u8 {
                return false;
            }
            match self.state.compare_exchange(current, RunState::Down as u8, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Brings a down vCPU up (runnable); false if it was not down.
    pub fn start(&self) -> bool {
        self.swap_state(RunState::Down, RunState::Runnable)
    }

    /// Stops the vCPU for good (its domain is going away), whatever it was.
    pub fn stop(&self) {
        self.state.store(RunState::Stopped as u8, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_never_reused() {
        let a = VcpuSched::new(0, 0);
        let b = VcpuSched::new(0, 0);
        assert_ne!(a.key, b.key);
        assert!(VcpuKey::fresh() > b.key);
    }

    #[test]
    fn only_one_of_two_wakers_unblocks() {
        let v = VcpuSched::new(1, 5);
        assert_eq!(v.state(), RunState::Runnable);
        assert!(!v.unblock(), "a runnable vCPU is not woken");
        v.set_blocked();
        assert_eq!(v.state(), RunState::Blocked);
        assert!(v.unblock());
        assert!(!v.unblock(), "the second waker finds it runnable");
        assert_eq!(v.state(), RunState::Runnable);
    }

    #[test]
    fn a_stopped_or_down_vcpu_is_neither_blocked_nor_woken() {
        let v = VcpuSched::new(0, 0);
        v.stop();
        v.set_blocked();
        assert!(!v.unblock());
        assert!(!v.start(), "a stopped vCPU is not brought up");
        assert!(!v.take_down(), "a stopped vCPU is not up");
        assert_eq!(v.state(), RunState::Stopped);

        let d = VcpuSched::new(0, 0);
        d.set_down();
        d.set_blocked();
        assert!(!d.unblock());
        assert_eq!(d.state(), RunState::Down);
        assert!(d.start());
        assert!(!d.start(), "up already");
        assert_eq!(d.state(), RunState::Runnable);
    }

    #[test]
    fn take_down_works_from_runnable_and_blocked_only() {
        let v = VcpuSched::new(0, 0);
        assert!(v.take_down());
        assert!(!v.take_down());
        assert!(v.start());
        v.set_blocked();
        assert!(v.take_down());
        assert_eq!(v.state(), RunState::Down);
    }

    #[test]
    fn a_new_record_has_no_timers_and_counts_its_period_from_now() {
        let v = VcpuSched::new(3, 42);
        assert_eq!(v.home.load(Ordering::Relaxed), 3);
        assert_eq!(v.periodic_last_ns.load(Ordering::Relaxed), 42);
        let timers = v.timers.lock();
        assert!(timers.guest.is_none() && timers.poll.is_none() && timers.periodic.is_none());
        assert_eq!(v.held_timer.deadline_ns.load(Ordering::Relaxed), 0);
    }
}
