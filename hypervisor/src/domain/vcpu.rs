//! A virtual CPU: the guest's saved registers while it is not running, its PV context (guest
//! kernel or user mode, top-level tables, kernel stack, trap table, callbacks, segment
//! bases) and its scheduling state.
//!
//! While a vCPU runs, its live registers are the trap frame on its CPU's stack; the copy in
//! [`GuestContext::regs`] is current only while it is descheduled. Only the CPU running a
//! vCPU changes its context; other CPUs only change [`Vcpu::state`] (to stop or wake it).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use abi::arch_x86::TrapInfo;
use events::poll::PollTarget;
use mm::addr::Mfn;
use pvmm::BasePtr;
use spin::Mutex;

use super::Domain;
use crate::arch::trap::TrapFrame;

/// `Vcpu::poll` when not polling, and when polling for any port.
const NOT_POLLING: u32 = u32::MAX;
const ANY_PORT: u32 = u32::MAX - 1;

/// Scheduling state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RunState {
    /// Waiting in a run queue or running.
    Runnable = 0,
    /// Waiting for an event.
    Blocked = 1,
    /// Its domain is shutting down: never runs again.
    Stopped = 2,
    /// Initialised but not brought up yet (`VCPUOP_up`).
    Down = 3,
}

/// The guest-visible machine state of a vCPU.
pub struct GuestContext {
    /// Registers while descheduled.
    pub regs: TrapFrame,
    /// Guest kernel mode (true) or guest user mode.
    pub in_kernel: bool,
    /// Top-level page table of guest kernel mode (holds a type reference as an L4).
    pub kernel_base: Option<BasePtr>,
    /// Top-level page table of guest user mode, if any (also an L4 reference).
    pub user_base: Option<BasePtr>,
    /// The guest kernel stack for bounces from user mode (`stack_switch`).
    pub kernel_ss: u64,
    pub kernel_sp: u64,
    /// Registered trap handlers, sorted by vector (only the vectors the guest set).
    pub traps: Vec<TrapInfo>,
    pub event_callback: u64,
    pub failsafe_callback: u64,
    pub syscall_callback: u64,
    /// Mask events when entering the syscall callback.
    pub syscall_masks_events: bool,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
    /// Set while the hypervisor writes an exception frame for this vCPU: a fault then is a
    /// fault while delivering a fault, and kills the domain.
    pub delivering: bool,
}

impl GuestContext {
    /// The handler registered for `vector`.
    pub fn trap(&self, vector: u8) -> Option<&TrapInfo> {
        self.traps.binary_search_by_key(&vector, |t| t.vector).ok().map(|i| &self.traps[i])
    }

    /// Sets (address != 0) or clears the handler of one vector.
    pub fn set_trap(&mut self, info: TrapInfo) {
        match self.traps.binary_search_by_key(&info.vector, |t| t.vector) {
            Ok(i) if info.address == 0 => {
                self.traps.remove(i);
            }
            Ok(i) => self.traps[i] = info,
            Err(_) if info.address == 0 => {}
            Err(i) => self.traps.insert(i, info),
        }
    }

    pub fn kernel_l4(&self) -> Option<Mfn> {
        self.kernel_base.as_ref().map(BasePtr::mfn)
    }

    pub fn user_l4(&self) -> Option<Mfn> {
        self.user_base.as_ref().map(BasePtr::mfn)
    }

    /// The top-level table of the current guest mode.
    pub fn active_l4(&self) -> Option<Mfn> {
        if self.in_kernel { self.kernel_l4() } else { self.user_l4().or(self.kernel_l4()) }
    }
}

/// vCPU records in the heap (created, not yet dropped): see `DOMAIN_RECORDS`.
pub static VCPU_RECORDS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

impl Drop for Vcpu {
    fn drop(&mut self) {
        VCPU_RECORDS.fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// One virtual CPU of a domain.
pub struct Vcpu {
    pub domain: Arc<Domain>,
    pub id: u32,
    pub ctx: Mutex<GuestContext>,
    /// The guest's own GDT frames.
    pub gdt: Mutex<crate::pv::descriptors::GuestGdt>,
    state: AtomicU8,
    /// Its name in the run queues.
    pub key: crate::sched::VcpuKey,
    /// Its home: the CPU whose run queue holds it (changed only by that CPU).
    pub cpu: AtomicU32,
    /// Asked to give up its CPU at the next exit (`sched_op yield`).
    pub yield_requested: AtomicBool,
    /// Its single-shot timer (`set_timer_op`), in system-time ns; 0: none.
    pub timer_deadline: AtomicU64,
    /// The timeout of its `sched_op poll`, in system-time ns; 0: none.
    pub poll_deadline: AtomicU64,
    /// Its pending timers in the CPUs' timer queues.
    pub timers: Mutex<crate::sched::VcpuTimers>,
    /// What it polls for while blocked in `sched_op poll` (see [`Vcpu::begin_poll`]).
    poll: AtomicU32,
    /// When it was last woken, until it runs (system time ns; for the wake-up latency).
    pub woken_at_ns: AtomicU64,
    /// The deadline of its latency-sensitive timer that last fired while it was blocked,
    /// until it runs (system time ns; for the timer-to-run latency of warping domains).
    pub warped_deadline_ns: AtomicU64,
    /// A latency-sensitive timer that fired early while the vCPU was blocked: woken ahead
    /// of its deadline so that its switch-in happens before it, the vCPU gets VIRQ_TIMER at
    /// its next return to the guest, once the deadline has come (see `sched::release_held_timer`).
    pub held_timer: crate::sched::HeldTimer,
    /// Kept off its CPU because its domain is paused (see `sched::unpause`).
    pub parked: AtomicBool,
}

impl Vcpu {
    pub fn new(domain: Arc<Domain>, id: u32, regs: TrapFrame, kernel_base: BasePtr, cpu: u32) -> Arc<Vcpu> {
        VCPU_RECORDS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        Arc::new(Vcpu {
            domain,
            id,
            ctx: Mutex::new(GuestContext {
                regs,
                in_kernel: true,
                kernel_base: Some(kernel_base),
                user_base: None,
                kernel_ss: 0,
                kernel_sp: 0,
                traps: Vec::new(),
                event_callback: 0,
                failsafe_callback: 0,
                syscall_callback: 0,
                syscall_masks_events: false,
                fs_base: 0,
                gs_base_kernel: 0,
                gs_base_user: 0,
                delivering: false,
            }),
            gdt: Mutex::new(Default::default()),
            state: AtomicU8::new(RunState::Runnable as u8),
            key: crate::sched::VcpuKey::fresh(),
            cpu: AtomicU32::new(cpu),
            yield_requested: AtomicBool::new(false),
            timer_deadline: AtomicU64::new(0),
            poll_deadline: AtomicU64::new(0),
            timers: Mutex::new(Default::default()),
            poll: AtomicU32::new(NOT_POLLING),
            woken_at_ns: AtomicU64::new(0),
            warped_deadline_ns: AtomicU64::new(0),
            held_timer: Default::default(),
            parked: AtomicBool::new(false),
        })
    }

    pub fn state(&self) -> RunState {
        match self.state.load(Ordering::Acquire) {
            0 => RunState::Runnable,
            1 => RunState::Blocked,
            2 => RunState::Stopped,
            _ => RunState::Down,
        }
    }

    /// Blocks a runnable vCPU (it leaves its CPU at its next exit).
    pub fn set_blocked(&self) {
        let _ = self.state.compare_exchange(RunState::Runnable as u8, RunState::Blocked as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Unblocks a blocked vCPU; true if it was blocked (the caller then queues it).
    pub fn unblock(&self) -> bool {
        self.state
            .compare_exchange(RunState::Blocked as u8, RunState::Runnable as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks a freshly initialised secondary vCPU as down.
    pub fn set_down(&self) {
        self.state.store(RunState::Down as u8, Ordering::Release);
    }

    /// Brings a down vCPU up; false if it was not down.
    pub fn start(&self) -> bool {
        self.state
            .compare_exchange(RunState::Down as u8, RunState::Runnable as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks the vCPU stopped (domain shutting down) and makes its CPU notice.
    pub fn stop(&self) {
        self.state.store(RunState::Stopped as u8, Ordering::Release);
        crate::sched::stopped(self);
    }

    /// Starts polling for `target` (`sched_op poll`); published before the ports are
    /// checked, so that an event marked pending after the check finds the poller.
    pub fn begin_poll(&self, target: PollTarget) {
        let raw = match target {
            PollTarget::AnyPort => ANY_PORT,
            PollTarget::Port(port) => port.0,
        };
        if self.poll.swap(raw, Ordering::SeqCst) == NOT_POLLING {
            self.domain.pollers.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What the vCPU polls for, if it does.
    pub fn poll_target(&self) -> Option<PollTarget> {
        match self.poll.load(Ordering::SeqCst) {
            NOT_POLLING => None,
            ANY_PORT => Some(PollTarget::AnyPort),
            port => Some(PollTarget::Port(abi::ids::EvtchnPort(port))),
        }
    }

    /// Ends a poll; true for the one caller that ended it (and should wake the vCPU).
    pub fn end_poll(&self) -> bool {
        let ended = self.poll.swap(NOT_POLLING, Ordering::SeqCst) != NOT_POLLING;
        if ended {
            self.domain.pollers.fetch_sub(1, Ordering::SeqCst);
        }
        ended
    }

    /// Takes the top-level table references this vCPU holds (released at destruction).
    pub fn take_bases(&self) -> Vec<BasePtr> {
        let mut ctx = self.ctx.lock();
        ctx.kernel_base.take().into_iter().chain(ctx.user_base.take()).collect()
    }
}
