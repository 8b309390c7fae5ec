//! [`Queue`]: what a CPU's scheduler ([`CpuSched`](crate::CpuSched)) asks of its run queue,
//! so that the same scheduler runs over the indexed [`RunQueue`] (the hypervisor's) and, in
//! the stress simulator, over the linear queue it replaced (the "before" of issue 18). The
//! inbox's drain ([`drain`]) is written once against it.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::drain::{Action, Drained};
use crate::error::BvtError;
use crate::inbox::{Inbox, Message};
use crate::params::{BvtParams, Config, CpuId};
use crate::run_queue::{Decision, RunQueue, VcpuView};
use crate::vcpu_state::VcpuState;

/// One CPU's run queue: the calls of [`RunQueue`] a CPU's scheduler makes (see there for
/// what each does).
pub trait Queue<K> {
    fn new(cpu: CpuId, config: Config) -> Self
    where
        Self: Sized;
    fn cpu(&self) -> CpuId;
    fn inbox(&self) -> &Arc<Inbox<K>>;
    fn current(&self) -> Option<K>;
    fn load(&self) -> u32;
    fn is_runnable(&self, v: K) -> bool;
    fn vcpu(&self, v: K) -> Option<VcpuView>;
    fn add(&mut self, v: K, params: BvtParams, now_ns: u64) -> Result<bool, BvtError>;
    fn admit(&mut self, v: K, state: VcpuState, now_ns: u64) -> Result<bool, BvtError>;
    fn wake(&mut self, v: K, now_ns: u64) -> Result<bool, BvtError>;
    fn block(&mut self, v: K, now_ns: u64) -> Result<(), BvtError>;
    fn remove(&mut self, v: K, now_ns: u64) -> Result<VcpuState, BvtError>;
    fn set_params(&mut self, v: K, params: BvtParams, now_ns: u64) -> Result<(), BvtError>;
    fn yield_current(&mut self);
    fn tick(&mut self, now_ns: u64) -> bool;
    fn pick_next(&mut self, now_ns: u64) -> Decision<K>;
    fn waiting_warped(&self) -> Option<K>;
    fn decision_due(&self) -> bool;
    fn steal_candidate(&self, now_ns: u64) -> Option<K>;
    fn search_steps(&self) -> u64;
    fn forgive_running(&mut self, ns: u64);

    /// Applies every message posted so far, charging the running vCPU up to `now_ns` first,
    /// and answers steal requests; returns what only the caller can do.
    fn drain(&mut self, now_ns: u64) -> Drained<K>
    where
        Self: Sized,
        K: Copy + Eq,
    {
        drain(self, now_ns)
    }
}

/// Applies every message posted to `queue`'s inbox so far, charging the running vCPU up to
/// `now_ns` first, and answers steal requests; returns what only the caller can do.
pub fn drain<K: Copy + Eq, Q: Queue<K>>(queue: &mut Q, now_ns: u64) -> Drained<K> {
    let running_before = queue.current();
    let mut params_changed = false;
    let mut woke = false;
    let mut actions = Vec::new();
    while let Some(message) = queue.inbox().pop() {
        match apply(queue, message, now_ns) {
            Ok(action) => actions.extend(action),
            Err(reason) => actions.push(Action::Bounced { message, reason }),
        }
        match message {
            Message::SetParams(v, _) => params_changed |= queue.is_runnable(v),
            Message::Add(v, _) | Message::Wake(v) => woke |= queue.is_runnable(v),
            Message::Arrive(..) | Message::Remove(_) | Message::Steal { .. } => {}
        }
    }
    let reschedule = params_changed || queue.current() != running_before || queue.decision_due();
    Drained { actions, reschedule, woke }
}

fn apply<K: Copy + Eq, Q: Queue<K>>(queue: &mut Q, message: Message<K>, now_ns: u64) -> Result<Option<Action<K>>, BvtError> {
    match message {
        Message::Add(v, params) => queue.add(v, params, now_ns).map(|_| None),
        Message::Wake(v) => queue.wake(v, now_ns).map(|_| None),
        Message::Arrive(v, state) => queue.admit(v, state, now_ns).map(|_| None),
        Message::SetParams(v, params) => queue.set_params(v, params, now_ns).map(|()| None),
        Message::Remove(v) => queue.remove(v, now_ns).map(|_| Some(Action::Removed(v))),
        Message::Steal { thief } => Ok(answer_steal(queue, thief, now_ns)),
    }
}

/// Gives `thief` the waiting vCPU dispatched least recently, never the running one.
fn answer_steal<K: Copy + Eq, Q: Queue<K>>(queue: &mut Q, thief: CpuId, now_ns: u64) -> Option<Action<K>> {
    queue.inbox().steal_answered();
    if thief == queue.cpu() {
        return None;
    }
    let vcpu = queue.steal_candidate(now_ns)?;
    let state = queue.remove(vcpu, now_ns).expect("the steal candidate is on this queue");
    Some(Action::Migrate { vcpu, state, to: thief })
}

/// Implements [`Queue`] for a run queue type by calling its own methods of the same names.
macro_rules! queue_impl {
    ($queue:ident, $($bound:tt)+) => {
        impl<K: $($bound)+> Queue<K> for $queue<K> {
            fn new(cpu: CpuId, config: Config) -> Self {
                $queue::new(cpu, config)
            }
            fn cpu(&self) -> CpuId {
                $queue::cpu(self)
            }
            fn inbox(&self) -> &Arc<Inbox<K>> {
                $queue::inbox(self)
            }
            fn current(&self) -> Option<K> {
                $queue::current(self)
            }
            fn load(&self) -> u32 {
                $queue::load(self)
            }
            fn is_runnable(&self, v: K) -> bool {
                $queue::is_runnable(self, v)
            }
            fn vcpu(&self, v: K) -> Option<VcpuView> {
                $queue::vcpu(self, v)
            }
            fn add(&mut self, v: K, params: BvtParams, now_ns: u64) -> Result<bool, BvtError> {
                $queue::add(self, v, params, now_ns)
            }
            fn admit(&mut self, v: K, state: VcpuState, now_ns: u64) -> Result<bool, BvtError> {
                $queue::admit(self, v, state, now_ns)
            }
            fn wake(&mut self, v: K, now_ns: u64) -> Result<bool, BvtError> {
                $queue::wake(self, v, now_ns)
            }
            fn block(&mut self, v: K, now_ns: u64) -> Result<(), BvtError> {
                $queue::block(self, v, now_ns)
            }
            fn remove(&mut self, v: K, now_ns: u64) -> Result<VcpuState, BvtError> {
                $queue::remove(self, v, now_ns)
            }
            fn set_params(&mut self, v: K, params: BvtParams, now_ns: u64) -> Result<(), BvtError> {
                $queue::set_params(self, v, params, now_ns)
            }
            fn yield_current(&mut self) {
                $queue::yield_current(self)
            }
            fn tick(&mut self, now_ns: u64) -> bool {
                $queue::tick(self, now_ns)
            }
            fn pick_next(&mut self, now_ns: u64) -> Decision<K> {
                $queue::pick_next(self, now_ns)
            }
            fn waiting_warped(&self) -> Option<K> {
                $queue::waiting_warped(self)
            }
            fn decision_due(&self) -> bool {
                $queue::decision_due(self)
            }
            fn steal_candidate(&self, now_ns: u64) -> Option<K> {
                $queue::steal_candidate(self, now_ns)
            }
            fn search_steps(&self) -> u64 {
                $queue::search_steps(self)
            }
            fn forgive_running(&mut self, ns: u64) {
                $queue::forgive_running(self, ns)
            }
        }
    };
}

queue_impl!(RunQueue, Copy + Ord);
#[cfg(any(test, feature = "sim"))]
use crate::linear_queue::LinearRunQueue;
#[cfg(any(test, feature = "sim"))]
queue_impl!(LinearRunQueue, Copy + Eq);
