//! Test-only: the run queue as it was before issue 18, kept as the reference the indexed
//! [`RunQueue`](crate::RunQueue) is checked against (`proptests`: same decisions for the
//! same calls) and as the "before" of the simulator (`sim::collapse`). Members live in a
//! `Vec` searched linearly by id, and every charge, rival search and steal is a pass over
//! all of them: O(n) per operation, which counts its steps (members looked at) for the
//! simulator's cost model.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;

use crate::error::BvtError;
use crate::inbox::Inbox;
use crate::params::{BvtParams, Config, CpuId};
use crate::run_queue::{Decision, VcpuView};
use crate::shrink::{new_table, shrink_when_sparse, MIN_TABLE_CAPACITY};
use crate::vcpu_state::{Account, VcpuState};

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

/// One CPU's run queue; see the crate documentation for the rules it applies.
#[derive(Debug)]
pub struct LinearRunQueue<V> {
    cpu: CpuId,
    config: Config,
    inbox: Arc<Inbox<V>>,
    members: Vec<Member<V>>,
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
    /// The last decision gave the running vCPU a slice (a timer is armed for it), measured
    /// against a rival of this `E`: a vCPU that becomes runnable with a lower `E` would beat
    /// the running one sooner, so the slice must be measured again.
    slice_threshold_vns: Option<i128>,
    /// Members looked at so far.
    steps: Cell<u64>,
}

impl<V: Copy + Eq> LinearRunQueue<V> {
    /// An empty run queue for `cpu`, with its inbox.
    pub fn new(cpu: CpuId, config: Config) -> LinearRunQueue<V> {
        LinearRunQueue {
            cpu,
            config,
            inbox: Arc::new(Inbox::new(cpu)),
            members: new_table(MIN_TABLE_CAPACITY),
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
        self.members.push(Member { id: v, account, runnable, last_dispatch: self.dispatch_seq, waiting_since_ns: now_ns });
        if runnable {
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
            self.members[i].account.wake(self.svt, boost_ns, now_ns);
            self.members[i].runnable = true;
            self.members[i].waiting_since_ns = now_ns;
            self.set_load(self.runnable + 1);
        }
        Ok(self.decision_due())
    }

    /// Makes `v` not runnable (it blocked, or its domain is paused); a warp ends here. If it
    /// was running, the CPU needs a new decision.
    pub fn block(&mut self, v: V, now_ns: u64) -> Result<(), BvtError> {
        self.charge_running(now_ns);
        let i = self.index(v)?;
        let member = &mut self.members[i];
        if member.runnable {
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
        let member = self.members.swap_remove(i);
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
        self.members[i].account.set_params(params, now_ns);
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
        let slice = chosen.and_then(|i| self.slice(i));
        self.slice_threshold_vns = slice.map(|(_, threshold)| threshold);
        let slice_ns = slice.map(|(ns, _)| ns);
        let run = chosen.map(|i| self.members[i].id);
        if run != self.current {
            self.note_preemption(self.current.and_then(|v| self.find(v)), chosen);
            if let Some(previous) = self.current.and_then(|v| self.find(v)) {
                self.members[previous].waiting_since_ns = now_ns;
            }
            self.current = run;
            if let Some(i) = chosen {
                self.dispatch_seq += 1;
                self.members[i].last_dispatch = self.dispatch_seq;
            }
        }
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
        self.note(self.members.len());
        self.members
            .iter()
            .enumerate()
            .filter(|&(i, m)| i != current && m.runnable && m.account.warped() && !m.account.params().pinned)
            .min_by_key(|(_, m)| (m.account.effective(), m.last_dispatch))
            .map(|(_, m)| m.id)
    }

    /// Whether the owner should call [`RunQueue::pick_next`] now (as for [`RunQueue::tick`],
    /// without charging).
    pub fn decision_due(&self) -> bool {
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
    pub fn steal_candidate(&self, now_ns: u64) -> Option<V> {
        let current = self.current.and_then(|v| self.find(v));
        let min_wait = self.config.steal_min_wait_ns;
        self.note(self.members.len());
        self.members
            .iter()
            .enumerate()
            .filter(|&(i, m)| m.runnable && Some(i) != current && !m.account.params().pinned)
            .filter(|(_, m)| now_ns.saturating_sub(m.waiting_since_ns) >= min_wait)
            .min_by_key(|(_, m)| m.last_dispatch)
            .map(|(_, m)| m.id)
    }

    fn find(&self, v: V) -> Option<usize> {
        let found = self.members.iter().position(|m| m.id == v);
        self.note(found.map_or(self.members.len(), |i| i + 1));
        found
    }

    /// Counts `n` members looked at.
    fn note(&self, n: usize) {
        self.steps.set(self.steps.get() + n as u64);
    }

    /// Members looked at so far, by every search and pass.
    pub fn search_steps(&self) -> u64 {
        self.steps.get()
    }

    fn index(&self, v: V) -> Result<usize, BvtError> {
        self.find(v).ok_or(BvtError::UnknownVcpu)
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
    /// to date. A clock that goes backwards charges nothing.
    fn charge_running(&mut self, now_ns: u64) {
        let ran_ns = now_ns.saturating_sub(self.charged_until_ns);
        self.charged_until_ns = self.charged_until_ns.max(now_ns);
        if let Some(i) = self.current.and_then(|v| self.find(v)) {
            self.members[i].account.charge(ran_ns, now_ns);
        }
        self.note(self.members.len());
        let min_runnable = self.members.iter().filter(|m| m.runnable).map(|m| m.account.actual()).min();
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

    /// The `E` past which member `running` is beaten by another runnable one: the best
    /// rival's `E` plus the allowance, or, unless `running` is boosted itself, a boosted
    /// rival's `E` if lower (`None`: no rival).
    fn threshold(&self, running: usize) -> Option<i128> {
        let rival = self.best_rival(Some(running))?;
        let allowed = self.members[rival].account.effective() + self.allowance_vns(running);
        if self.boosted(running) {
            return Some(allowed);
        }
        self.note(self.members.len());
        let boosted = self
            .members
            .iter()
            .enumerate()
            .filter(|&(i, m)| m.runnable && i != running && self.boosted(i))
            .map(|(_, m)| m.account.effective())
            .min();
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

    /// The runnable member other than `except` with the lowest `E`, ties to the one
    /// dispatched least recently.
    fn best_rival(&self, except: Option<usize>) -> Option<usize> {
        self.note(self.members.len());
        self.members
            .iter()
            .enumerate()
            .filter(|&(i, m)| m.runnable && Some(i) != except)
            .min_by_key(|(_, m)| (m.account.effective(), m.last_dispatch))
            .map(|(i, _)| i)
    }

    /// The waiting boosted vCPU with the lowest `E` (ties: dispatched least recently).
    fn first_boosted(&self) -> Option<usize> {
        self.note(self.members.len());
        self.members
            .iter()
            .enumerate()
            .filter(|&(i, m)| m.runnable && self.current != Some(m.id) && self.boosted(i))
            .min_by_key(|(_, m)| (m.account.effective(), m.last_dispatch))
            .map(|(i, _)| i)
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
        let rival = self.best_rival(current).map(|r| self.next_after(r));
        let beaten = |c: usize| self.threshold(c).is_some_and(|threshold| self.members[c].account.effective() > threshold);
        match (current, rival) {
            (Some(c), Some(r)) if self.yield_pending || beaten(c) => Some(r),
            (Some(c), _) => Some(c),
            (None, rival) => rival,
        }
    }

    /// How long member `i`, about to run, may run before the next decision, and the
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

