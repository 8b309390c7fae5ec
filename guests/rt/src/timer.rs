//! The one-shot timer of vCPU 0: `set_timer_op` arms it for an absolute system time, and
//! on expiry the hypervisor raises `VIRQ_TIMER`, which [`Timer::bind`] connects to a port
//! whose handler counts the expiries and notes the system time of each upcall. On top of
//! that, [`Timer::sleep_until`] and [`Timer::wait_until`] block the domain until a
//! deadline (or a condition).
//!
//! `VIRQ_TIMER` can also come from elsewhere than our deadline: Xen gives every PV vCPU a
//! periodic timer (which [`Timer::bind`] stops, as Linux does, where the hypervisor has
//! one), and the hypervisor's clock may reach the deadline a little before this guest's
//! reading of it. So a wait ends only once this guest's clock has reached the deadline,
//! re-arming the timer after an early expiry. One timer per guest (the runtime runs on
//! vCPU 0 only): binding twice fails in the hypervisor. This module must never busy-wait:
//! waiting is blocking in [`crate::events`].

use core::sync::atomic::{AtomicU64, Ordering};

use abi::hypercall::Virq;
use abi::ids::{EvtchnPort, VcpuId};

use crate::events::{EventError, Events};
use crate::evtchn;
use crate::hypercall::{self, HypercallError, VcpuControl};
use crate::time::Clock;

/// Expiries delivered so far.
static FIRED: AtomicU64 = AtomicU64::new(0);
/// System time (ns) at the upcall of the last expiry.
static LAST_FIRED_NS: AtomicU64 = AtomicU64::new(0);
/// Expiries that ended a wait before this guest's clock reached its deadline.
static EARLY: AtomicU64 = AtomicU64::new(0);

/// Arms the one-shot timer for system time `deadline_ns`, replacing any armed deadline.
/// A deadline already past fires at once. 0 would cancel: use [`cancel`].
pub fn set_deadline(deadline_ns: u64) -> Result<(), HypercallError> {
    hypercall::set_timer_op(deadline_ns.max(1))
}

/// Disarms the timer.
pub fn cancel() -> Result<(), HypercallError> {
    hypercall::set_timer_op(0)
}

/// Stops vCPU `vcpu`'s periodic timer (Xen gives every vCPU one of 10 ms). The result is
/// ignored: a hypervisor without periodic timers has nothing to stop.
pub fn stop_periodic(vcpu: VcpuId) {
    let _ = hypercall::vcpu_control(VcpuControl::StopPeriodicTimer, vcpu);
}

/// `VIRQ_TIMER` of vCPU 0, bound to a port with the runtime's handler.
#[derive(Clone, Copy, Debug)]
pub struct Timer {
    events: Events,
    clock: Clock,
    port: EvtchnPort,
}

impl Timer {
    /// Stops vCPU 0's periodic timer (if the hypervisor has one), binds `VIRQ_TIMER` on
    /// vCPU 0 and handles its port.
    pub fn bind(events: Events) -> Result<Self, EventError> {
        stop_periodic(VcpuId(0));
        let clock = Clock::new()?;
        let port = evtchn::bind_virq(Virq::Timer, VcpuId(0))?;
        events.set_handler(port, on_expiry)?;
        Ok(Self {
            events,
            clock,
            port,
        })
    }

    /// The port `VIRQ_TIMER` arrives on.
    pub fn port(self) -> EvtchnPort {
        self.port
    }

    /// Expiries delivered so far.
    pub fn fired(self) -> u64 {
        FIRED.load(Ordering::Acquire)
    }

    /// Expiries so far that came while this guest's clock was still short of the deadline
    /// being waited for (each was waited out again). A guest whose only timer is this one,
    /// and that waits out each deadline it arms, sees none from a correct hypervisor.
    pub fn early_expiries(self) -> u64 {
        EARLY.load(Ordering::Acquire)
    }

    /// System time (ns) at the upcall of the last expiry (0 before the first).
    pub fn last_fired_ns(self) -> u64 {
        LAST_FIRED_NS.load(Ordering::Acquire)
    }

    /// Blocks until system time `deadline_ns`; returns the system time at the upcall that
    /// ended the wait (which may precede `deadline_ns` by the difference between the
    /// hypervisor's clock and this guest's reading of it). Returns with events on.
    pub fn sleep_until(self, deadline_ns: u64) -> Result<u64, HypercallError> {
        self.wait_until(deadline_ns, || false)?;
        Ok(self.last_fired_ns())
    }

    /// Blocks until `done()` holds (checked with events off after every event) or system
    /// time reaches `deadline_ns`; returns whether `done()` held. The timer stays armed
    /// for `deadline_ns` when `done()` ends the wait. Returns with events on.
    pub fn wait_until(
        self,
        deadline_ns: u64,
        mut done: impl FnMut() -> bool,
    ) -> Result<bool, HypercallError> {
        loop {
            let before = self.fired();
            set_deadline(deadline_ns)?;
            self.events
                .wait_until(|| done() || self.fired() != before)?;
            if done() {
                return Ok(true);
            }
            if self.clock.now_ns() >= deadline_ns {
                return Ok(false);
            }
            if self.fired() != before {
                EARLY.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// The handler of the timer's port: notes the time and counts the expiry.
fn on_expiry(_port: EvtchnPort) {
    let now = Clock::mapped().map_or(0, Clock::now_ns);
    LAST_FIRED_NS.store(now, Ordering::Release);
    FIRED.fetch_add(1, Ordering::AcqRel);
}
