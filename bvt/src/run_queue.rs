//! One CPU's BVT run queue: the vCPUs homed on that CPU, which of them are runnable, which
//! one runs, and the decision of what runs next and for how long.
//!
//! Only the owning CPU calls it (every method takes `&mut self` or reads); other CPUs go
//! through its [`Inbox`]. It never reads a clock: each call gets `now_ns`, first charges the
//! running vCPU up to then, and then acts.
//!
//! # Cost
//! Every operation is O(log n) in the vCPUs homed here, none is a pass over them: a queue
//! may hold hundreds of vCPUs (1000 domains on 2 CPUs), and each wake-up, block and decision
//! runs in the hypervisor with interrupts off, so work per operation that grows with n is
//! paid by every wake-up on the CPU, the latency-sensitive ones included (issue 18: with a
//! pass over the members in each search, SVT update and rival search, a decision at n = 500
//! cost more than the wake-up it served, and the warped p99 went from 0.3 ms at 100 domains
//! to tens of ms at 1000; `sim::collapse` reproduces it). Members live in a `Vec` (which
//! gives its capacity back as vCPUs leave, [`shrink_when_sparse`]) found through an ordered
//! index by id; the runnable vCPUs that wait (all runnable ones but the running one) are
//! kept in ordered sets by `(E, last dispatch)` (the best rival), by `A` (for SVT), and the
//! subsets a push or a steal looks for. A waiting vCPU's `E` and `A` change only through
//! the calls that take it out of the sets and put it back; the running vCPU, whose `A`
//! grows as it is charged, is in none of them.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;

use crate::error::BvtError;
use crate::inbox::Inbox;
use crate::params::{BvtParams, Config, CpuId};
use crate::shrink::{new_table, shrink_when_sparse, MIN_TABLE_CAPACITY};
use crate::vcpu_state::{Account, VcpuState};

/// What to run, decided by [`RunQueue::pick_next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<V> {
    /// The vCPU to run (`None`: idle; consider [`steal_from_nearest`](crate::steal_from_nearest)).
    pub run: Option<V>,
    /// Call `pick_next` again after this many ns (`None`: no other vCPU waits, so only a
    /// wake-up, block or message needs a new decision).
    pub slice_ns: Option<u64>,
}

/// A read-only look at one vCPU of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuView {
    /// Parameters in force.
    pub params: BvtParams,
    /// Actual virtual time `A`, vns.
    pub actual_vns: u64,
    /// Effective virtual time `E`, vns.
    pub effective_vns: i128,
    /// Warped now.
    pub warped: bool,
    /// Runnable (the running vCPU included).
    pub runnable: bool,
}

/// A vCPU homed on this queue.
#[derive(Clone, Copy, Debug)]
struct Member<V> {
    id: V,
    account: Account,
    runnable: bool,
    /// Queue-wide sequence number of its last dispatch (or of its arrival).
    last_dispatch: u64,
    /// Since when it has waited for the CPU (runnable and not running), or, while it is
    /// blocked, since when it has slept; system time ns.
    waiting_since_ns: u64,
}

impl<V: Copy> Member<V> {
    /// Its key in the sets ordered by effective virtual time.
    fn by_effective(&self) -> (i128, u64, V) {
        (self.account.effective(), self.last_dispatch, self.id)
    }
}

/// The runnable vCPUs that wait (runnable, not running), ordered for each question asked.
#[derive(Debug)]
struct Waiting<V> {
    /// By `(E, last dispatch)`: the first is the best rival.
    by_effective: BTreeSet<(i128, u64, V)>,
    /// By `A`: the first is the waiting part of SVT.
    by_actual: BTreeSet<(u64, V)>,
    /// The warped, unpinned ones by `(E, last dispatch)`: what a push takes.
    warped: BTreeSet<(i128, u64, V)>,
    /// The unpinned ones by last dispatch: what a steal takes.
    stealable: BTreeSet<(u64, V)>,
    /// The boosted ones by `(E, last dispatch)`: they beat the running vCPU without its
    /// allowance.
    boosted: BTreeSet<(i128, u64, V)>,
}

impl<V: Copy + Ord> Waiting<V> {
    fn new() -> Waiting<V> {
        Waiting {
            by_effective: BTreeSet::new(),
            by_actual: BTreeSet::new(),
            warped: BTreeSet::new(),
            stealable: BTreeSet::new(),
            boosted: BTreeSet::new(),
        }
    }

    fn insert(&mut self, m: &Member<V>) {
        self.by_effective.insert(m.by_effective());
        self.by_actual.insert((m.account.actual(), m.id));
        let pinned = m.account.params().pinned;
        if m.account.warped() && !pinned {
            self.warped.insert(m.by_effective());
        }
        if !pinned {
            self.stealable.insert((m.last_dispatch, m.id));
        }
        if m.account.boosted() {
            self.boosted.insert(m.by_effective());
        }
    }

    fn remove(&mut self, m: &Member<V>) {
        self.by_effective.remove(&m.by_effective());
        self.by_actual.remove(&(m.account.actual(), m.id));
        self.warped.remove(&m.by_effective());
        self.stealable.remove(&(m.last_dispatch, m.id));
        self.boosted.remove(&m.by_effective());
    }

    fn len(&self) -> usize {
        self.by_effective.len()
    }
}

/// One CPU's run queue; see the crate documentation for the rules it applies.
#[derive(Debug)]
pub struct RunQueue<V> {
    cpu: CpuId,
    config: Config,
    inbox: Arc<Inbox<V>>,
    members: Vec<Member<V>>,
    /// Where each member is in `members`.
    index: BTreeMap<V, usize>,
    /// The runnable members but the running one.
    waiting: Waiting<V>,
    current: Option<V>,
    /// Runnable members, the running one included.
    runnable: u32,
    /// Scheduler virtual time, vns.
    svt: u64,
    /// System time up to which the running vCPU has been charged.
    charged_until_ns: u64,
    /// Source of `Member::last_dispatch`.
    dispatch_seq: u64,
    /// The running vCPU asked to give way at the next decision.
    yield_pending: bool,
    /// The vCPU an interruption (a warped or boosted vCPU) preempted, resumed once the
    /// interruptions are over (see "Interruptions" in the crate documentation); cleared
    /// once any other vCPU is dispatched.
    resume: Option<V>,
    /// The last decision gave the running vCPU a slice (a timer is armed for it), until its
    /// `E` passes this threshold (see [`RunQueue::threshold`]): a vCPU that becomes runnable
    /// and lowers the threshold would beat the running one sooner, so the slice must be
    /// measured again.
    slice_threshold_vns: Option<i128>,
    /// Steps of the searches made so far (see [`RunQueue::search_steps`]).
    steps: Cell<u64>,
}

impl<V: Copy + Ord> RunQueue<V> {
    /// An empty run queue for `cpu`, with its inbox.
    pub fn new(cpu: CpuId, config: Config) -> RunQueue<V> {
        RunQueue {
            cpu,
            config,
            inbox: Arc::new(Inbox::new(cpu)),
            members: new_table(MIN_TABLE_CAPACITY),
            index: BTreeMap::new(),
            waiting: Waiting::new(),
            current: None,
            runnable: 0,
            svt: 0,
            charged_until_ns: 0,
            dispatch_seq: 0,
            yield_pending: false,
            resume: None,
            slice_threshold_vns: None,
            steps: Cell::new(0),
        }
    }

    /// The CPU this queue belongs to.
    pub fn cpu(&self) -> CpuId {
        self.cpu
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config
    }

    /// The inbox other CPUs post to (clone the `Arc` to share it).
    pub fn inbox(&self) -> &Arc<Inbox<V>> {
        &self.inbox
    }

    /// The vCPU the last decision chose, while it stays runnable.
    pub fn current(&self) -> Option<V> {
        self.current
    }

    /// Runnable vCPUs, the running one included (also published in the inbox).
    pub fn load(&self) -> u32 {
        self.runnable
    }

    /// Scheduler virtual time, vns (as of the last call that was told the time).
    pub fn svt_vns(&self) -> u64 {
        self.svt
    }

    /// The work this queue's searches have done so far, in steps of a tree search (about
    /// `log2 n` per lookup, insertion or removal among n entries); a cost model's input
    /// (the simulator's, `sim`), never a decision's.
    pub fn search_steps(&self) -> u64 {
        self.steps.get()
    }

    /// Whether `v` is homed on this queue.
    pub fn contains(&self, v: V) -> bool {
        self.find(v).is_some()
    }

    /// Whether `v` is on this queue and runnable.
    pub fn is_runnable(&self, v: V) -> bool {
        self.find(v).is_some_and(|i| self.members[i].runnable)
    }

    /// A look at `v`'s BVT state, if it is on this queue.
    pub fn vcpu(&self, v: V) -> Option<VcpuView> {
        self.find(v).map(|i| {
            let member = &self.members[i];
            VcpuView {
                params: member.account.params(),
                actual_vns: member.account.actual(),
                effective_vns: member.account.effective(),
                warped: member.account.warped(),
                runnable: member.runnable,
            }
        })
    }

    /// Adds a new vCPU, runnable, as if it had just woken (no credit, warped if enabled).
    /// Returns whether a decision is due now (see [`RunQueue::wake`]).
    pub fn add(&mut self, v: V, params: BvtParams, now_ns: u64) -> Result<bool, BvtError> {
        self.admit(v, VcpuState::fresh(params), now_ns)?;
        self.wake(v, now_ns)
    }

    /// Takes in a vCPU that left another queue (see [`RunQueue::remove`]): it arrives with
    /// its lag on top of this queue's SVT, runnable or blocked as it left, warp kept.
    /// Returns whether a decision is due now (see [`RunQueue::wake`]).
    pub fn admit(&mut self, v: V, state: VcpuState, now_ns: u64) -> Result<bool, BvtError> {
        self.charge_running(now_ns);
        if self.contains(v) {
            return Err(BvtError::AlreadyQueued);
        }
        self.dispatch_seq += 1;
        let account = Account::arrive(&state, self.svt);
        let runnable = state.is_runnable();
        let member = Member { id: v, account, runnable, last_dispatch: self.dispatch_seq, waiting_since_ns: now_ns };
        self.note(self.members.len());
        self.index.insert(v, self.members.len());
        self.members.push(member);
        if runnable {
            self.list(self.members.len() - 1);
            self.set_load(self.runnable + 1);
        }
        Ok(runnable && self.decision_due())
    }

    /// Makes a blocked vCPU runnable: `A = max(A, SVT)`, warped if enabled and its unwarp
    /// requirement is met. Waking a runnable vCPU changes nothing. Returns whether a
    /// decision is due now: call [`RunQueue::pick_next`] if so. It is when the woken vCPU
    /// should preempt ([`RunQueue::should_preempt`]), when the CPU was idle, and when the
    /// running vCPU was alone, had no slice and now needs one.
    pub fn wake(&mut self, v: V, now_ns: u64) -> Result<bool, BvtError> {
        self.charge_running(now_ns);
        let i = self.index(v)?;
        if !self.members[i].runnable {
            let slept_ns = now_ns.saturating_sub(self.members[i].waiting_since_ns);
            let boost_ns = if slept_ns >= self.config.boost_min_sleep_ns { self.config.wake_boost_ns } else { 0 };
            let svt = self.svt;
            let member = &mut self.members[i];
            member.account.wake(svt, boost_ns, now_ns);
            member.runnable = true;
            member.waiting_since_ns = now_ns;
            self.list(i);
            self.set_load(self.runnable + 1);
        }
        Ok(self.decision_due())
    }

    /// Makes `v` not runnable (it blocked, or its domain is paused); a warp ends here. If it
    /// was running, the CPU needs a new decision.
    pub fn block(&mut self, v: V, now_ns: u64) -> Result<(), BvtError> {
        self.charge_running(now_ns);
        let i = self.index(v)?;
        if self.members[i].runnable {
            self.unlist(i);
            let member = &mut self.members[i];
            member.runnable = false;
            member.waiting_since_ns = now_ns;
            member.account.unwarp(now_ns);
            self.set_load(self.runnable - 1);
            if self.current == Some(v) {
                self.current = None;
            }
        }
        Ok(())
    }

    /// Takes `v` off this queue (to migrate it, or because its domain is going away) and
    /// returns its portable state. If it was running, the CPU needs a new decision.
    pub fn remove(&mut self, v: V, now_ns: u64) -> Result<VcpuState, BvtError> {
        self.charge_running(now_ns);
        let i = self.index(v)?;
        self.unlist(i);
        let member = self.members.swap_remove(i);
        self.note(self.members.len() + 1);
        self.index.remove(&v);
        if let Some(moved) = self.members.get(i) {
            self.index.insert(moved.id, i);
        }
        shrink_when_sparse(&mut self.members, MIN_TABLE_CAPACITY);
        if member.runnable {
            self.set_load(self.runnable - 1);
        }
        if self.current == Some(v) {
            self.current = None;
        }
        Ok(member.account.depart(self.svt, member.runnable))
    }

    /// Puts new parameters in force for `v` (a disabled or used-up warp ends). They count
    /// from the next decision; call [`RunQueue::pick_next`] to apply them at once.
    pub fn set_params(&mut self, v: V, params: BvtParams, now_ns: u64) -> Result<(), BvtError> {
        self.charge_running(now_ns);
        let i = self.index(v)?;
        self.unlist(i);
        self.members[i].account.set_params(params, now_ns);
        self.list(i);
        Ok(())
    }

    /// The running vCPU gives way: the next decision runs the best other runnable vCPU, if
    /// any, whatever the context switch allowance says.
    pub fn yield_current(&mut self) {
        self.yield_pending = self.current.is_some();
    }

    /// Charges the running vCPU up to `now_ns` (ending a used-up warp) and tells whether a
    /// new decision is due: a rival beats the running vCPU (or it yielded), it runs without a
    /// slice while a rival waits or with one measured against a rival farther than the
    /// nearest now, or the CPU idles with work.
    pub fn tick(&mut self, now_ns: u64) -> bool {
        self.charge_running(now_ns);
        self.decision_due()
    }

    /// Whether the runnable vCPU `waking` should take the CPU from the running one now: it is
    /// ahead by more than `C / w_running` vns, or the CPU is idle.
    pub fn should_preempt(&mut self, waking: V, now_ns: u64) -> bool {
        self.charge_running(now_ns);
        self.find(waking).is_some_and(|i| self.preempts(i))
    }

    /// Charges the running vCPU up to `now_ns` and decides what runs next: the runnable vCPU
    /// with the lowest `E`, except that the running one stays unless a rival is ahead of it
    /// by more than its allowance (or it yielded). The slice is the time until that would
    /// happen or its warp limit ends, and never less than one MCU.
    pub fn pick_next(&mut self, now_ns: u64) -> Decision<V> {
        self.charge_running(now_ns);
        let chosen = self.choose();
        self.yield_pending = false;
        let run = chosen.map(|i| self.members[i].id);
        if run != self.current {
            let previous = self.current.and_then(|v| self.find(v));
            self.note_preemption(previous, chosen);
            if let Some(i) = chosen {
                self.unlist(i);
                self.dispatch_seq += 1;
                self.members[i].last_dispatch = self.dispatch_seq;
            }
            self.current = run;
            if let Some(previous) = previous {
                self.members[previous].waiting_since_ns = now_ns;
                self.list(previous);
            }
        }
        let slice = chosen.and_then(|i| self.slice(i));
        self.slice_threshold_vns = slice.map(|(_, threshold)| threshold);
        let slice_ns = slice.map(|(ns, _)| ns);
        Decision { run, slice_ns }
    }

    /// A warped vCPU that is runnable but waits while another warped vCPU runs: the one
    /// with the lowest `E` (ties: dispatched least recently), if it is not pinned. Its warp
    /// is meant to put it on a CPU at once, so the hypervisor may move it to a CPU that runs
    /// no warped vCPU rather than let it wait out the running one's wake-up. `None` when the
    /// running vCPU is not warped: a warped vCPU that waits behind an unwarped one is too far
    /// ahead for its warp to win, and would wait on another CPU too.
    pub fn waiting_warped(&self) -> Option<V> {
        let current = self.current.and_then(|v| self.find(v))?;
        if !self.members[current].account.warped() {
            return None;
        }
        self.note(self.waiting.warped.len());
        self.waiting.warped.first().map(|&(_, _, v)| v)
    }

    /// Whether the owner should call [`RunQueue::pick_next`] now (as for [`RunQueue::tick`],
    /// without charging).
    pub(crate) fn decision_due(&self) -> bool {
        match self.current.and_then(|v| self.find(v)) {
            Some(c) => self.threshold(c).is_some_and(|threshold| {
                self.yield_pending
                    || self.slice_threshold_vns.is_none_or(|measured| threshold < measured)
                    || self.members[c].account.effective() > threshold
            }),
            None => self.runnable > 0,
        }
    }

    /// The vCPU to give a thief: runnable, not running, not pinned, waiting for at least
    /// the steal threshold, dispatched least recently.
    pub(crate) fn steal_candidate(&self, now_ns: u64) -> Option<V> {
        let min_wait = self.config.steal_min_wait_ns;
        self.note(self.waiting.stealable.len());
        self.waiting
            .stealable
            .iter()
            .map(|&(_, v)| v)
            .find(|&v| self.find(v).is_some_and(|i| now_ns.saturating_sub(self.members[i].waiting_since_ns) >= min_wait))
    }

    /// Counts one search among `n` entries: `log2 n` steps, at least one.
    fn note(&self, n: usize) {
        let depth = usize::BITS - n.leading_zeros();
        self.steps.set(self.steps.get() + u64::from(depth.max(1)));
    }

    fn find(&self, v: V) -> Option<usize> {
        self.note(self.index.len());
        self.index.get(&v).copied()
    }

    fn index(&self, v: V) -> Result<usize, BvtError> {
        self.find(v).ok_or(BvtError::UnknownVcpu)
    }

    /// Puts member `i` in the waiting sets if it waits (runnable, not running).
    fn list(&mut self, i: usize) {
        let member = &self.members[i];
        if member.runnable && self.current != Some(member.id) {
            self.note(self.waiting.len());
            self.waiting.insert(member);
        }
    }

    /// Takes member `i` out of the waiting sets (before its keys change or it runs).
    fn unlist(&mut self, i: usize) {
        let member = &self.members[i];
        if member.runnable && self.current != Some(member.id) {
            self.note(self.waiting.len());
            self.waiting.remove(member);
        }
    }

    #[cfg(test)]
    fn members_capacity(&self) -> usize {
        self.members.capacity()
    }

    /// Checks that the sets hold exactly the waiting members, each under its current keys.
    #[cfg(test)]
    pub(crate) fn check_sets(&self) {
        let waiting: Vec<&Member<V>> = self.members.iter().filter(|m| m.runnable && Some(m.id) != self.current).collect();
        assert_eq!(self.waiting.len(), waiting.len());
        assert_eq!(self.waiting.by_actual.len(), waiting.len());
        for m in &waiting {
            assert!(self.waiting.by_effective.contains(&m.by_effective()));
            assert!(self.waiting.by_actual.contains(&(m.account.actual(), m.id)));
            assert_eq!(self.waiting.boosted.contains(&m.by_effective()), m.account.boosted());
        }
        assert_eq!(self.waiting.boosted.len(), waiting.iter().filter(|m| m.account.boosted()).count());
        for (i, m) in self.members.iter().enumerate() {
            assert_eq!(self.index.get(&m.id), Some(&i));
        }
        assert_eq!(self.index.len(), self.members.len());
    }

    fn set_load(&mut self, runnable: u32) {
        self.runnable = runnable;
        self.inbox.publish_load(runnable);
    }

    /// Leaves the next `ns` of the running vCPU's time uncharged: time the hypervisor spent
    /// on its own account while the vCPU was loaded (a wait for a held timer's deadline).
    pub fn forgive_running(&mut self, ns: u64) {
        self.charged_until_ns = self.charged_until_ns.saturating_add(ns);
    }

    /// Charges the running vCPU for the time since it was last charged, then brings SVT up
    /// to date (the least `A` of the runnable vCPUs). A clock that goes backwards charges
    /// nothing.
    fn charge_running(&mut self, now_ns: u64) {
        let ran_ns = now_ns.saturating_sub(self.charged_until_ns);
        self.charged_until_ns = self.charged_until_ns.max(now_ns);
        let running = self.current.and_then(|v| self.find(v));
        if let Some(i) = running {
            self.members[i].account.charge(ran_ns, now_ns);
        }
        let waiting = self.waiting.by_actual.first().map(|&(a, _)| a);
        let min_runnable = running.map(|i| self.members[i].account.actual()).into_iter().chain(waiting).min();
        if let Some(min) = min_runnable {
            self.svt = self.svt.max(min);
        }
    }

    /// Whether member `i` is boosted.
    fn boosted(&self, i: usize) -> bool {
        self.members[i].account.boosted()
    }

    /// The running vCPU's allowance in vns: `C / w`.
    fn allowance_vns(&self, running: usize) -> i128 {
        let weight = self.members[running].account.params().weight.get();
        i128::from(self.config.ctx_switch_allowance_ns / u64::from(weight))
    }

    /// Whether `rival` is ahead of the running `running` by more than its allowance (or at
    /// all, if `rival` is boosted and `running` is not).
    fn beats(&self, rival: usize, running: usize) -> bool {
        let e = |i: usize| self.members[i].account.effective();
        let allowance = if self.boosted(rival) && !self.boosted(running) { 0 } else { self.allowance_vns(running) };
        e(rival) + allowance < e(running)
    }

    /// The `E` past which the running member `running` is beaten by a waiting one: the best
    /// rival's `E` plus the allowance, or, unless `running` is boosted itself, a boosted
    /// rival's `E` if lower (`None`: no rival).
    fn threshold(&self, running: usize) -> Option<i128> {
        let (rival_vns, _) = self.best_rival()?;
        let allowed = rival_vns + self.allowance_vns(running);
        if self.boosted(running) {
            return Some(allowed);
        }
        self.note(self.waiting.boosted.len());
        let boosted = self.waiting.boosted.first().map(|&(e, _, _)| e);
        Some(boosted.map_or(allowed, |e| e.min(allowed)))
    }

    /// Whether the runnable member `i` should take the CPU from the running vCPU.
    fn preempts(&self, i: usize) -> bool {
        if !self.members[i].runnable {
            return false;
        }
        match self.current.and_then(|v| self.find(v)) {
            None => true,
            Some(c) => c != i && self.beats(i, c),
        }
    }

    /// The waiting member with the lowest `E`, ties to the one dispatched least recently:
    /// its `E` and index.
    fn best_rival(&self) -> Option<(i128, usize)> {
        self.note(self.waiting.len());
        let &(e, _, v) = self.waiting.by_effective.first()?;
        Some((e, self.find(v).expect("a waiting vCPU is a member")))
    }

    /// The waiting boosted vCPU with the lowest `E` (ties: dispatched least recently).
    fn first_boosted(&self) -> Option<usize> {
        self.note(self.waiting.boosted.len());
        self.waiting.boosted.first().and_then(|&(_, _, v)| self.find(v))
    }

    /// Who takes the CPU when the running vCPU leaves it or is beaten, `r` being the best
    /// rival: `r` if it is warped; else the vCPU an interruption preempted if it is boosted
    /// (a wake-up cut short); else the first boosted vCPU (it would beat anyone else at
    /// once); else the preempted vCPU; else `r` (see "Interruptions" in the crate
    /// documentation).
    fn next_after(&self, r: usize) -> usize {
        if self.members[r].account.warped() {
            return r;
        }
        let resumed = self
            .resume
            .and_then(|v| self.find(v))
            .filter(|&i| self.members[i].runnable && self.current != Some(self.members[i].id));
        if let Some(b) = resumed.filter(|&b| self.boosted(b)) {
            return b;
        }
        self.first_boosted().or(resumed).unwrap_or(r)
    }

    /// Keeps track of the vCPU an interruption (a warped or boosted vCPU) preempted:
    /// `previous` (the running vCPU, if any) leaves the CPU for `chosen`.
    fn note_preemption(&mut self, previous: Option<usize>, chosen: Option<usize>) {
        let warped = |i: usize| self.members[i].account.warped();
        let interrupts = |i: usize| warped(i) || self.boosted(i);
        // A boosted vCPU's wake-up cut short by a warp; a vCPU that has run its boost out
        // cut short by a boosted one's wake-up.
        let cut_short = |p: usize, c: usize| if self.boosted(p) { warped(c) } else { !warped(p) && self.boosted(c) };
        match (previous, chosen) {
            (Some(p), Some(c)) if cut_short(p, c) && self.members[p].runnable => {
                self.resume = Some(self.members[p].id);
            }
            (_, Some(c)) if interrupts(c) => {}
            _ => self.resume = None,
        }
    }

    fn choose(&self) -> Option<usize> {
        let current = self.current.and_then(|v| self.find(v));
        let rival = self.best_rival().map(|(_, r)| self.next_after(r));
        let beaten = |c: usize| self.threshold(c).is_some_and(|threshold| self.members[c].account.effective() > threshold);
        match (current, rival) {
            (Some(c), Some(r)) if self.yield_pending || beaten(c) => Some(r),
            (Some(c), _) => Some(c),
            (None, rival) => rival,
        }
    }

    /// How long member `i`, the running one, may run before the next decision, and the
    /// threshold that measures it.
    fn slice(&self, i: usize) -> Option<(u64, i128)> {
        let threshold = self.threshold(i)?;
        let account = &self.members[i].account;
        // A rival beats `i` once E_i > threshold: advance A by the difference + 1.
        let gap = threshold + 1 - account.effective();
        let needed_vns = u64::try_from(gap.max(1)).unwrap_or(u64::MAX);
        let until_rival = account.ns_to_advance(needed_vns);
        let slice = account.warp_left_ns().map_or(until_rival, |left| until_rival.min(left));
        // A boosted vCPU's boost ends within the slice: boosted rivals may beat it from then.
        let slice = if account.boosted() { slice.min(account.boost_left_ns()) } else { slice };
        Some((slice.max(self.config.mcu_ns), threshold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{DEFAULT_WAKE_BOOST_NS, NO_WARP_LIMIT};
    use core::num::NonZeroU32;

    const MS: u64 = 1_000_000;

    fn config(allowance_ns: u64, mcu_ns: u64) -> Config {
        Config { ctx_switch_allowance_ns: allowance_ns, mcu_ns, ..Config::default() }
    }

    fn weight(w: u32) -> BvtParams {
        BvtParams::weighted(NonZeroU32::new(w).unwrap())
    }

    fn warped(w: u32, warp_vns: u64) -> BvtParams {
        BvtParams { warp_vns, ..weight(w) }
    }

    #[test]
    fn an_empty_queue_idles_without_a_timer() {
        let mut rq = RunQueue::<u32>::new(CpuId(0), Config::default());
        assert_eq!(rq.pick_next(5), Decision { run: None, slice_ns: None });
        assert!(!rq.tick(10));
        assert_eq!(rq.load(), 0);
    }

    #[test]
    fn a_lone_vcpu_runs_without_a_timer() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        assert_eq!(rq.add(1u32, weight(1), 0), Ok(true), "an idle CPU is preempted by anyone");
        assert_eq!(rq.pick_next(0), Decision { run: Some(1), slice_ns: None });
        assert_eq!(rq.current(), Some(1));
        assert_eq!(rq.load(), 1);
        assert_eq!(rq.inbox().load(), 1, "the load is published");
    }

    #[test]
    fn unknown_and_duplicate_vcpus_are_refused() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, weight(1), 0).unwrap();
        assert_eq!(rq.add(1, weight(1), 0), Err(BvtError::AlreadyQueued));
        assert_eq!(rq.wake(2, 0), Err(BvtError::UnknownVcpu));
        assert_eq!(rq.block(2, 0), Err(BvtError::UnknownVcpu));
        assert_eq!(rq.set_params(2, weight(1), 0), Err(BvtError::UnknownVcpu));
        assert_eq!(rq.remove(2, 0), Err(BvtError::UnknownVcpu));
        assert!(!rq.should_preempt(2, 0));
        assert_eq!(rq.vcpu(2), None);
        assert_eq!(rq.load(), 1, "refusals change nothing");
    }

    #[test]
    fn the_slice_lasts_until_the_rival_is_ahead_by_the_allowance() {
        let mut rq = RunQueue::new(CpuId(0), config(MS, 1_000));
        rq.add(1u32, weight(2), 0).unwrap();
        rq.add(2, weight(2), 0).unwrap();
        let first = rq.pick_next(0);
        assert_eq!(first.run, Some(1));
        // Allowance 1 ms / 2 = 500_000 vns; one more vns at weight 2 makes 1_000_002 ns.
        assert_eq!(first.slice_ns, Some(1_000_002));
        assert_eq!(rq.pick_next(1_000_001).run, Some(1), "not yet beyond the allowance");
        assert_eq!(rq.pick_next(1_000_002).run, Some(2));
    }

    #[test]
    fn no_slice_is_shorter_than_one_mcu() {
        let mut rq = RunQueue::new(CpuId(0), config(0, 100_000));
        rq.add(1u32, weight(1), 0).unwrap();
        rq.add(2, weight(1), 0).unwrap();
        assert_eq!(rq.pick_next(0).slice_ns, Some(100_000));
    }

    #[test]
    fn preemption_needs_an_advantage_beyond_c_over_the_running_weight() {
        for running_weight in [1u32, 4] {
            let allowance_vns = MS / u64::from(running_weight);
            for (warp, expected) in [(allowance_vns, false), (allowance_vns + 1, true)] {
                let mut rq = RunQueue::new(CpuId(0), Config { wake_boost_ns: 0, ..config(MS, 1_000) });
                rq.add(1u32, weight(running_weight), 0).unwrap();
                rq.add(2, warped(1, warp), 0).unwrap();
                rq.block(2, 0).unwrap();
                assert_eq!(rq.pick_next(0).run, Some(1));
                // vCPU 2 wakes with A = SVT = A_1 and E = A_1 - warp.
                assert_eq!(rq.wake(2, 7 * MS), Ok(true), "vCPU 1 ran alone, without a slice");
                assert_eq!(rq.should_preempt(2, 7 * MS), expected, "weight {running_weight} warp {warp}");
                let expected_run = if expected { 2 } else { 1 };
                assert_eq!(rq.pick_next(7 * MS).run, Some(expected_run));
                assert!(!rq.tick(7 * MS), "the decision is made and its slice armed");
            }
        }
    }

    #[test]
    fn a_vcpu_never_preempts_itself_and_blocked_ones_never_preempt() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, warped(1, 10 * MS), 0).unwrap();
        rq.add(2, weight(1), 0).unwrap();
        rq.pick_next(0);
        assert!(!rq.should_preempt(1, 0));
        rq.block(2, 0).unwrap();
        assert!(!rq.should_preempt(2, 0));
    }

    #[test]
    fn a_vcpu_that_woke_behind_svt_beats_the_running_one_without_the_allowance() {
        const US: u64 = 1_000;
        for boost_ns in [DEFAULT_WAKE_BOOST_NS, 0] {
            let mut rq = RunQueue::new(CpuId(0), Config { wake_boost_ns: boost_ns, ..config(5 * MS, 100 * US) });
            rq.add(1u32, weight(1), 0).unwrap();
            rq.add(2, weight(1), 0).unwrap();
            rq.block(2, 0).unwrap();
            assert_eq!(rq.pick_next(0).run, Some(1));
            // vCPU 2 slept at A = 0 while vCPU 1 took SVT to 10 ms: it wakes level with 1.
            assert_eq!(rq.wake(2, 10 * MS), Ok(true));
            let decision = rq.pick_next(10 * MS);
            assert_eq!(decision.run, Some(1), "not ahead yet");
            if boost_ns > 0 {
                assert_eq!(decision.slice_ns, Some(100 * US), "beaten as soon as it is ahead at all: one MCU");
                assert_eq!(rq.pick_next(10 * MS + 100 * US).run, Some(2));
            } else {
                assert_eq!(decision.slice_ns, Some(5 * MS + 1), "the allowance");
                assert_eq!(rq.pick_next(10 * MS + 100 * US).run, Some(1));
            }
        }
    }

    #[test]
    fn a_boost_gains_no_virtual_time_keeps_the_allowance_against_boosts_and_runs_out() {
        const US: u64 = 1_000;
        let mut rq = RunQueue::new(CpuId(0), config(5 * MS, US));
        rq.add(1u32, weight(1), 0).unwrap();
        for v in [2, 3] {
            rq.add(v, weight(1), 0).unwrap();
            rq.block(v, 0).unwrap();
        }
        rq.pick_next(0);
        rq.wake(2, 10 * MS).unwrap();
        assert_eq!(rq.vcpu(2).map(|v| v.actual_vns), Some(10 * MS), "A = SVT, as without a boost");
        assert_eq!(rq.pick_next(10 * MS + US).run, Some(2));
        rq.wake(3, 10 * MS + 100 * US).unwrap();
        assert!(rq.vcpu(3).unwrap().effective_vns < rq.vcpu(2).unwrap().effective_vns);
        let decision = rq.pick_next(10 * MS + 100 * US);
        assert_eq!(decision.run, Some(2), "boosted vCPUs keep the allowance among themselves");
        assert_eq!(decision.slice_ns, Some(DEFAULT_WAKE_BOOST_NS - 99 * US), "until its boost runs out");
        assert_eq!(rq.pick_next(10 * MS + US + DEFAULT_WAKE_BOOST_NS).run, Some(3), "run out: the boosted rival beats it");
    }

    #[test]
    fn only_a_sleep_of_the_minimum_earns_a_boost() {
        const US: u64 = 1_000;
        let mut rq = RunQueue::new(CpuId(0), config(5 * MS, 10 * US));
        rq.add(1u32, weight(1), 0).unwrap();
        rq.add(2, weight(1), 0).unwrap();
        rq.block(2, 0).unwrap();
        assert_eq!(rq.pick_next(0).run, Some(1));
        rq.wake(2, 10 * MS).unwrap();
        assert_eq!(rq.pick_next(10 * MS).slice_ns, Some(10 * US), "slept 10 ms: boosted, so 1's slice is one MCU");
        assert_eq!(rq.pick_next(10 * MS + US).run, Some(2));
        rq.block(2, 10 * MS + 20 * US).unwrap();
        assert_eq!(rq.pick_next(10 * MS + 20 * US).run, Some(1));
        // Woken again after 500 us: behind SVT again, but it did not sleep 1 ms.
        // (A boost would cut vCPU 1's slice to one MCU, since 2 is level with it.)
        rq.wake(2, 10 * MS + 520 * US).unwrap();
        let decision = rq.pick_next(10 * MS + 530 * US);
        assert_eq!(decision.run, Some(1));
        assert!(decision.slice_ns.is_some_and(|ns| ns > MS), "no boost: the allowance holds ({decision:?})");
    }

    #[test]
    fn a_wake_up_cut_short_by_a_warp_finishes_before_later_wake_ups() {
        let mut rq = RunQueue::new(CpuId(0), config(5 * MS, 10_000));
        rq.add(1u32, weight(1), 0).unwrap();
        for v in [2, 3] {
            rq.add(v, weight(1), 0).unwrap();
            rq.block(v, 0).unwrap();
        }
        rq.add(4, warped(1, 100 * MS), 0).unwrap();
        rq.block(4, 0).unwrap();
        assert_eq!(rq.pick_next(0).run, Some(1));
        rq.wake(2, 10 * MS).unwrap();
        assert_eq!(rq.pick_next(10 * MS + 10_000).run, Some(2), "boosted past the hog");
        rq.wake(4, 10 * MS + 50_000).unwrap();
        assert_eq!(rq.pick_next(10 * MS + 50_000).run, Some(4), "the warp preempts the wake-up");
        rq.wake(3, 10 * MS + 60_000).unwrap();
        rq.block(4, 10 * MS + 100_000).unwrap();
        assert!(rq.vcpu(3).unwrap().effective_vns < rq.vcpu(2).unwrap().effective_vns, "the later wake-up is ahead in E");
        assert_eq!(rq.pick_next(10 * MS + 100_000).run, Some(2), "the cut-short wake-up finishes first");
        rq.block(2, 10 * MS + 150_000).unwrap();
        assert_eq!(rq.pick_next(10 * MS + 150_000).run, Some(3));
    }

    #[test]
    fn a_hog_that_boosted_wake_ups_interrupt_keeps_its_turn() {
        let mut rq = RunQueue::new(CpuId(0), config(5 * MS, 10_000));
        rq.add(1u32, weight(1), 0).unwrap();
        rq.add(3, weight(1), 0).unwrap();
        rq.block(3, 0).unwrap();
        assert_eq!(rq.pick_next(0).run, Some(1));
        rq.add(2, weight(1), 3 * MS).unwrap();
        assert_eq!(rq.pick_next(3 * MS).run, Some(1), "a rival level with it waits out the allowance");
        rq.wake(3, 4 * MS).unwrap();
        assert_eq!(rq.pick_next(4 * MS).run, Some(3), "boosted");
        rq.block(3, 4 * MS + 50_000).unwrap();
        assert!(rq.vcpu(2).unwrap().effective_vns < rq.vcpu(1).unwrap().effective_vns);
        assert_eq!(rq.pick_next(4 * MS + 50_000).run, Some(1), "the interrupted hog resumes, within its allowance");
    }

    #[test]
    fn forgiven_time_is_not_charged() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, weight(1), 0).unwrap();
        assert_eq!(rq.pick_next(0).run, Some(1));
        rq.forgive_running(3 * MS);
        rq.tick(10 * MS);
        assert_eq!(rq.vcpu(1).unwrap().actual_vns, 7 * MS, "3 ms of the 10 forgiven");
        rq.tick(12 * MS);
        assert_eq!(rq.vcpu(1).unwrap().actual_vns, 9 * MS, "forgiven once only");
    }

    #[test]
    fn blocking_the_running_vcpu_hands_the_cpu_on() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, weight(1), 0).unwrap();
        rq.add(2, weight(1), 0).unwrap();
        assert_eq!(rq.pick_next(0).run, Some(1));
        rq.block(1, MS).unwrap();
        assert_eq!(rq.current(), None);
        assert_eq!(rq.load(), 1);
        assert_eq!(rq.pick_next(MS), Decision { run: Some(2), slice_ns: None });
        rq.block(1, MS).unwrap();
        assert_eq!(rq.load(), 1, "blocking twice counts once");
    }

    #[test]
    fn removing_the_running_vcpu_hands_the_cpu_on() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, weight(1), 0).unwrap();
        rq.add(2, weight(1), 0).unwrap();
        rq.pick_next(0);
        let state = rq.remove(1, 3 * MS).unwrap();
        assert!(state.is_runnable());
        assert_eq!(state.lag_vns(), 3 * MS, "ran 3 ms ahead of vCPU 2");
        assert!(!rq.contains(1));
        assert_eq!(rq.current(), None);
        assert_eq!(rq.pick_next(3 * MS).run, Some(2));
    }

    #[test]
    fn a_migrated_vcpu_keeps_its_lag_on_the_new_cpu() {
        let mut from = RunQueue::new(CpuId(0), Config::default());
        from.add(1u32, weight(1), 0).unwrap();
        from.add(2, weight(1), 0).unwrap();
        from.pick_next(0);
        from.pick_next(6 * MS); // vCPU 1 ran 6 ms: A_1 = 6 ms, SVT = A_2 = 0
        let state = from.remove(1, 6 * MS).unwrap();
        let mut to = RunQueue::new(CpuId(1), Config::default());
        to.add(9u32, weight(1), 0).unwrap();
        to.pick_next(0);
        to.tick(50 * MS); // SVT there: 50 ms
        assert_eq!(to.admit(1, state, 50 * MS), Ok(true), "vCPU 9 now needs a slice");
        assert_eq!(to.pick_next(50 * MS).run, Some(9), "vCPU 1 arrives with 6 ms more: 9 goes first");
        assert_eq!(to.vcpu(1).unwrap().actual_vns, 56 * MS);
        assert_eq!(to.load(), 2);
        assert_eq!(to.admit(1, state, 50 * MS), Err(BvtError::AlreadyQueued));
    }

    #[test]
    fn a_blocked_vcpu_migrates_blocked() {
        let mut from = RunQueue::new(CpuId(0), Config::default());
        from.add(1u32, weight(1), 0).unwrap();
        from.block(1, 0).unwrap();
        let state = from.remove(1, 0).unwrap();
        assert!(!state.is_runnable());
        let mut to = RunQueue::new(CpuId(1), Config::default());
        assert_eq!(to.admit(1, state, 0), Ok(false));
        assert_eq!(to.load(), 0);
        assert_eq!(to.wake(1, 0), Ok(true));
    }

    #[test]
    fn yielding_gives_way_once() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, weight(1), 0).unwrap();
        rq.add(2, weight(1), 0).unwrap();
        assert_eq!(rq.pick_next(0).run, Some(1));
        rq.yield_current();
        assert!(rq.tick(0));
        assert_eq!(rq.pick_next(0).run, Some(2));
        assert_eq!(rq.pick_next(0).run, Some(2), "the yield was consumed");
    }

    #[test]
    fn a_backwards_clock_charges_nothing() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, weight(1), 0).unwrap();
        rq.pick_next(10 * MS);
        rq.tick(20 * MS);
        rq.tick(5 * MS);
        assert_eq!(rq.vcpu(1).unwrap().actual_vns, 10 * MS);
        rq.tick(21 * MS);
        assert_eq!(rq.vcpu(1).unwrap().actual_vns, 11 * MS, "charged from 20 ms, not from 5");
    }

    #[test]
    fn svt_never_decreases() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, weight(1), 0).unwrap();
        rq.pick_next(0);
        rq.tick(8 * MS);
        assert_eq!(rq.svt_vns(), 8 * MS);
        rq.block(1, 8 * MS).unwrap();
        rq.add(2, weight(1), 9 * MS).unwrap();
        assert_eq!(rq.svt_vns(), 8 * MS, "idle: SVT stays, and the newcomer starts there");
        assert_eq!(rq.vcpu(2).unwrap().actual_vns, 8 * MS);
    }

    #[test]
    fn a_warp_limit_bounds_the_slice_and_then_unwarps() {
        let params = BvtParams { warp_limit_ns: 2 * MS, ..warped(1, 10 * MS) };
        let mut rq = RunQueue::new(CpuId(0), config(5 * MS, 100_000));
        rq.add(1u32, weight(1), 0).unwrap();
        rq.pick_next(0);
        assert_eq!(rq.add(2, params, 100 * MS), Ok(true), "E_2 = 90 ms, 10 ms ahead of vCPU 1");
        let decision = rq.pick_next(100 * MS);
        assert_eq!(decision, Decision { run: Some(2), slice_ns: Some(2 * MS) });
        rq.tick(102 * MS);
        let view = rq.vcpu(2).unwrap();
        assert!(!view.warped, "L used up");
        assert_eq!(view.effective_vns, i128::from(102 * MS));
        // Unwarped, vCPU 2 keeps the CPU until it is 5 ms (C / 1) past vCPU 1 at 100 ms.
        let next = rq.pick_next(102 * MS);
        assert_eq!(next, Decision { run: Some(2), slice_ns: Some(3 * MS + 1) });
        assert_eq!(rq.pick_next(105 * MS + 1).run, Some(1));
    }

    #[test]
    fn the_unwarp_requirement_prevents_an_immediate_rewarp() {
        let params = BvtParams { warp_limit_ns: MS, unwarp_req_ns: 50 * MS, ..warped(1, 10 * MS) };
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, weight(1), 0).unwrap();
        rq.pick_next(0);
        rq.add(2, params, 100 * MS).unwrap();
        assert_eq!(rq.pick_next(100 * MS).run, Some(2));
        rq.tick(101 * MS); // L used up: unwarped at 101 ms
        rq.block(2, 101 * MS).unwrap();
        assert_eq!(rq.pick_next(101 * MS).run, Some(1));
        rq.wake(2, 102 * MS).unwrap();
        assert!(!rq.vcpu(2).unwrap().warped, "1 ms after unwarping");
        assert!(!rq.should_preempt(2, 102 * MS));
        rq.block(2, 102 * MS).unwrap();
        rq.wake(2, 150 * MS).unwrap();
        assert!(!rq.vcpu(2).unwrap().warped, "49 ms after unwarping");
        rq.block(2, 150 * MS).unwrap();
        rq.wake(2, 151 * MS).unwrap();
        assert!(rq.vcpu(2).unwrap().warped, "50 ms after unwarping");
        assert!(rq.should_preempt(2, 151 * MS));
    }

    #[test]
    fn a_warped_vcpu_waiting_behind_another_is_named_unless_pinned() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        assert_eq!(rq.waiting_warped(), None::<u32>, "idle");
        rq.add(1, weight(1), 0).unwrap();
        rq.add(2, warped(1, 10 * MS), 0).unwrap();
        assert_eq!(rq.pick_next(0).run, Some(2));
        assert_eq!(rq.waiting_warped(), None, "the warped one runs; vCPU 1 is not warped");
        rq.add(3, warped(1, 10 * MS), 0).unwrap();
        rq.add(4, BvtParams { pinned: true, ..warped(1, 20 * MS) }, 0).unwrap();
        assert_eq!(rq.pick_next(0).run, Some(4), "E_4 is lowest");
        assert_eq!(rq.waiting_warped(), Some(2), "2 and 3 tie on E; 2 ran before 3 came");
        rq.block(2, 0).unwrap();
        assert_eq!(rq.waiting_warped(), Some(3));
        rq.block(3, 0).unwrap();
        rq.block(4, 0).unwrap();
        rq.pick_next(0);
        rq.wake(4, 0).unwrap();
        assert_eq!(rq.pick_next(0).run, Some(4));
        rq.wake(2, 0).unwrap();
        rq.set_params(2, BvtParams { pinned: true, ..warped(1, 10 * MS) }, 0).unwrap();
        assert_eq!(rq.waiting_warped(), None, "a pinned vCPU stays");
    }

    #[test]
    fn a_warped_vcpu_behind_an_unwarped_one_is_not_named() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, weight(1), 0).unwrap();
        rq.add(2, warped(1, 10 * MS), 0).unwrap();
        assert_eq!(rq.pick_next(0).run, Some(2));
        assert_eq!(rq.pick_next(15 * MS + 1).run, Some(1), "2 is past 1 by C, warp included");
        rq.block(2, 15 * MS + 1).unwrap();
        rq.wake(2, 15 * MS + 1).unwrap();
        assert!(rq.vcpu(2).unwrap().warped);
        assert_eq!(rq.pick_next(15 * MS + 1).run, Some(1));
        assert_eq!(rq.waiting_warped(), None, "too far ahead to win by its warp, here or elsewhere");
    }

    #[test]
    fn extreme_parameters_neither_panic_nor_starve_the_queue() {
        let extreme = BvtParams {
            weight: NonZeroU32::MAX,
            warp_vns: u64::MAX,
            warp_limit_ns: u64::MAX,
            unwarp_req_ns: u64::MAX,
            pinned: true,
        };
        let mut rq = RunQueue::new(CpuId(0), config(u64::MAX, u64::MAX));
        rq.add(1u32, extreme, u64::MAX - 1).unwrap();
        rq.add(2, weight(1), u64::MAX - 1).unwrap();
        let decision = rq.pick_next(u64::MAX);
        assert_eq!(decision, Decision { run: Some(1), slice_ns: Some(u64::MAX) });
        rq.set_params(2, extreme, u64::MAX).unwrap();
        assert_eq!(rq.vcpu(2).unwrap().params, extreme);
        rq.block(1, u64::MAX).unwrap();
        assert_eq!(rq.pick_next(u64::MAX).run, Some(2));
    }

    #[test]
    fn unlimited_warp_lasts_until_the_vcpu_blocks() {
        let params = BvtParams { warp_limit_ns: NO_WARP_LIMIT, ..warped(1, 10 * MS) };
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        rq.add(1u32, params, 0).unwrap();
        rq.pick_next(0);
        rq.tick(1_000 * MS);
        assert!(rq.vcpu(1).unwrap().warped);
        rq.block(1, 1_000 * MS).unwrap();
        assert!(!rq.vcpu(1).unwrap().warped);
    }

    #[test]
    fn a_queue_that_held_many_vcpus_gives_the_memory_back_when_they_leave() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        for v in 0..1_000u32 {
            rq.add(v, weight(1), 0).unwrap();
        }
        rq.pick_next(0);
        let grown = rq.members_capacity();
        assert!(grown >= 1_000);
        for v in (0..1_000).rev().step_by(2) {
            rq.remove(v, MS).unwrap();
        }
        assert_eq!(rq.members_capacity(), grown, "half full: kept");
        for v in (0..1_000).step_by(2) {
            rq.remove(v, MS).unwrap();
        }
        assert_eq!(rq.load(), 0);
        assert_eq!(rq.members_capacity(), MIN_TABLE_CAPACITY);
        assert_eq!(rq.pick_next(2 * MS), Decision { run: None, slice_ns: None });
        rq.add(7, weight(1), 2 * MS).unwrap();
        assert_eq!(rq.pick_next(2 * MS).run, Some(7), "the shrunk queue still works");
    }

    #[test]
    fn vcpus_coming_and_going_around_one_count_never_reallocate_the_queue() {
        let mut rq = RunQueue::new(CpuId(0), Config::default());
        let mut members: Vec<u32> = (0..100).collect();
        for &v in &members {
            rq.add(v, weight(1), 0).unwrap();
        }
        let capacity = rq.members_capacity();
        let mut next = 100;
        for _ in 0..20 {
            for v in members.drain(..60) {
                rq.remove(v, 0).unwrap();
            }
            for _ in 0..60 {
                rq.add(next, weight(1), 0).unwrap();
                members.push(next);
                next += 1;
            }
            assert_eq!(rq.members_capacity(), capacity, "between 40 and 100 of {capacity}");
        }
    }

    #[test]
    fn set_params_changes_the_decision_at_the_next_pick() {
        let mut rq = RunQueue::new(CpuId(0), config(MS, 1_000));
        rq.add(1u32, weight(1), 0).unwrap();
        rq.add(2, weight(1), 0).unwrap();
        rq.pick_next(0);
        rq.set_params(2, warped(1, 10 * MS), 0).unwrap();
        assert!(!rq.vcpu(2).unwrap().warped, "warp starts at a wake-up, not at set_params");
        rq.set_params(1, weight(1000), 0).unwrap();
        // Allowance of vCPU 1 is now 1 ms / 1000 = 1000 vns.
        assert_eq!(rq.pick_next(0).slice_ns, Some(1_001 * 1_000));
        assert_eq!(rq.vcpu(1).unwrap().params.weight.get(), 1000);
    }

    #[test]
    fn a_wake_that_brings_a_nearer_rival_measures_the_slice_again() {
        let mut rq = RunQueue::new(CpuId(0), config(MS, 1_000));
        rq.add(1u32, warped(1, 10 * MS), 0).unwrap();
        rq.add(2, weight(1), 0).unwrap();
        rq.add(3, warped(1, 10 * MS), 0).unwrap();
        rq.block(3, 0).unwrap();
        let first = rq.pick_next(0);
        assert_eq!(first, Decision { run: Some(1), slice_ns: Some(11 * MS + 1) }, "until 1 is behind the unwarped 2 by C");
        assert!(!rq.tick(0));
        // 3 wakes level with 1: no preemption, but 1 must not keep the 11 ms slice measured
        // against 2, or 3 would wait all of it.
        assert_eq!(rq.wake(3, 0), Ok(true), "a new decision is due");
        assert_eq!(rq.pick_next(0), Decision { run: Some(1), slice_ns: Some(MS + 1) }, "1 keeps the CPU for C");
        assert!(!rq.tick(0), "measured against 3 now");
        assert_eq!(rq.pick_next(MS + 1).run, Some(3));
        rq.block(2, MS + 1).unwrap();
        rq.wake(2, MS + 1).unwrap();
        assert!(!rq.tick(MS + 1), "2 unwarped is no nearer than 1, the rival the slice was measured against");
    }
}
