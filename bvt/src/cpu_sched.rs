//! One CPU's scheduler: the decision on the way out of every trap (drain the inbox, take in
//! arrivals, fold in what happened to the running vCPU, pick what runs next and for how
//! long), the pushing of a warped vCPU that woke behind another warped one, the stealing of
//! work by an idle CPU and the waking of an idle neighbour to steal, and the programming of
//! the CPU's timer. Written against [`Platform`], the few things only the machine does (the
//! time, the timer, an IPI, the context switch, what a vCPU's state allows), so that the
//! hypervisor's `sched` module and the stress simulator (`stress_sim`) run this same code:
//! what the simulator shows of 1000 domains is what the image does.
//!
//! # Who calls it
//! The owning CPU, with interrupts off: [`CpuSched::schedule`] at every exit to a guest or
//! to the idle loop. Other CPUs reach it only through its [`Board`]: its [`Inbox`] (wake,
//! add, arrive, new parameters, steal request) and its arrivals (each vCPU's handle `V`,
//! pushed before its `Add`/`Arrive` message is posted), then an IPI.
//!
//! # What it never does
//! Read a clock (the time comes from [`Platform::now_ns`], once per decision), touch
//! hardware, or block. A vCPU's `V` (the hypervisor's `Arc<Vcpu>`, the simulator's index) is
//! only held and handed back to the platform; `K` is its key in the run queue.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Debug;
use core::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::SegQueue;

use crate::drain::Action;
use crate::error::BvtError;
use crate::inbox::{steal_from_nearest, Inbox, Message};
use crate::params::{BvtParams, Config, CpuId, STEAL_MIN_LOAD};
use crate::queue::Queue;
use crate::run_queue::RunQueue;
use crate::shrink::{new_table, shrink_when_sparse, MIN_TABLE_CAPACITY};
use crate::vcpu_state::VcpuState;

/// How often an idle CPU looks again for work to steal while some CPU has a vCPU waiting.
pub const BALANCE_INTERVAL_NS: u64 = 1_000_000;

/// What to do with a vCPU the queue named, or the one running (the platform looks at its
/// state: blocked, down, stopped, its domain paused or going away).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Run,
    /// Not runnable now (blocked, or its domain paused): off the queue's runnable set.
    Block,
    /// Stopped, or its domain is going away: off the queue for good.
    Drop,
}

/// Something the scheduler did that the platform counts or reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note<K> {
    /// A vCPU left for a thief (a steal answered).
    Migrated(K),
    /// A warped vCPU was pushed to `to`.
    Pushed { vcpu: K, to: u32 },
    /// A message the queue could not apply (not one that may lose a race harmlessly).
    Bounced { message: Message<K>, reason: BvtError },
    /// The queue named a vCPU this CPU does not hold (removed from the queue).
    Unknown(K),
}

/// The machine, as one CPU's scheduler sees it during one decision.
pub trait Platform<K, V> {
    /// System time now, ns (read once per decision).
    fn now_ns(&self) -> u64;
    /// Arms the CPU's one-shot timer for the earliest of its vCPU timers and `deadlines`
    /// (the slice's end, the next look for work), as `CpuTimers::program` does.
    fn program_timer(&mut self, now_ns: u64, deadlines: [Option<u64>; 2]);
    /// Sends `cpu` (never this CPU, and only an online one) a reschedule IPI.
    fn send_ipi(&mut self, cpu: u32);
    /// Whether `cpu` runs (a vCPU is never homed, pushed or stolen where nothing runs).
    fn is_online(&self, cpu: u32) -> bool;
    /// What may happen to `v` (named by the queue, or running).
    fn verdict(&mut self, v: &V) -> Verdict;
    /// The running `v` goes on running: ends what its exit ended (a poll), and says
    /// whether it asked to give way (`sched_op yield`).
    fn yielded(&mut self, v: &V) -> bool;
    /// `v`'s parameters now (re-read for a vCPU that arrived from another CPU).
    fn params(&self, v: &V) -> BvtParams;
    /// Saves the running `v`; it no longer runs here.
    fn switch_out(&mut self, v: &V);
    /// Loads `v`; false if it can never run (its domain is going away): it is retired.
    fn switch_in(&mut self, v: &V) -> bool;
    /// Nothing runs: the frame that returned to a guest returns to the idle loop.
    fn to_idle(&mut self);
    /// `v` leaves this CPU for `cpu` (its timers leave this CPU's queues), which becomes
    /// its home.
    fn depart(&mut self, v: &V, cpu: u32);
    /// `v` arrived here from another CPU (its timers are armed here).
    fn arrive(&mut self, v: &V);
    /// `v` left this CPU for good (its timers go).
    fn retire(&mut self, key: K, v: &V);
    /// Counts or reports what happened.
    fn note(&mut self, note: Note<K>);
}

/// What a CPU shows the others: lock-free.
pub struct Board<K, V> {
    inbox: Arc<Inbox<K>>,
    /// The vCPUs named by `Add`/`Arrive` messages in the inbox, pushed before the message.
    arrivals: SegQueue<(K, V)>,
    /// Sits in its idle loop with nothing runnable.
    idle: AtomicBool,
    /// Idle, and will look for work to steal again soon (no need to wake it for that).
    balancing: AtomicBool,
    /// Runs a warped vCPU (as of its last decision), or has one on its way in: no place to
    /// push another warped vCPU to.
    runs_warped: AtomicBool,
    /// The other CPUs, nearest first by topology: where it steals and pushes, whom it wakes.
    nearest: Vec<u32>,
}

impl<K, V> Board<K, V> {
    pub fn inbox(&self) -> &Inbox<K> {
        &self.inbox
    }

    /// Whether messages or arrivals wait (the idle loop then interrupts itself).
    pub fn has_work(&self) -> bool {
        self.inbox.has_messages() || !self.arrivals.is_empty()
    }

    /// Sits idle (its last decision found nothing to run).
    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::SeqCst)
    }

    /// The CPU entered its idle loop at the end of boot.
    pub fn enter_idle(&self) {
        self.idle.store(true, Ordering::SeqCst);
    }

    /// Makes `v` (named `key`) this CPU's: its handle first, then `message` (its `Add` or
    /// `Arrive`), so that the drain that takes the message finds the handle.
    pub fn deliver(&self, key: K, v: V, message: Message<K>) {
        self.arrivals.push((key, v));
        self.inbox.post(message);
    }
}

/// One CPU's scheduler (see the module documentation). `Q` is its run queue: the indexed
/// [`RunQueue`] or, in the simulator, the linear one.
pub struct CpuSched<K, V, Q = RunQueue<K>> {
    cpu: u32,
    queue: Q,
    /// The vCPUs homed here (those the queue names, and arrivals on their way into it).
    members: BTreeMap<K, V>,
    /// Arrivals whose parameters are to be re-read once they are in the queue.
    unsettled: Vec<K>,
    /// The vCPU loaded on this CPU, if any (it may have left `members`, retired, until it
    /// is switched out).
    running: Option<(K, V)>,
    /// When the running vCPU's slice ends (`None`: no other vCPU waits).
    slice_end_ns: Option<u64>,
    /// While idle: when to look for work to steal again (`None`: no CPU had any to spare).
    balance_at_ns: Option<u64>,
}

/// Every CPU's scheduler (each for its CPU alone) and board (shared by all), by CPU index.
pub type Cpus<K, V, Q> = (Vec<CpuSched<K, V, Q>>, Vec<Board<K, V>>);

/// Creates every CPU's scheduler and board; `nearest(i)` lists CPU `i`'s others nearest
/// first.
pub fn cpus<K: Copy + Ord + Debug, V: Clone, Q: Queue<K>>(count: usize, config: Config, nearest: impl Fn(usize) -> Vec<u32>) -> Cpus<K, V, Q> {
    let scheds: Vec<CpuSched<K, V, Q>> = (0..count).map(|i| CpuSched::new(i as u32, config)).collect();
    let boards = scheds
        .iter()
        .enumerate()
        .map(|(i, s)| Board {
            inbox: s.queue.inbox().clone(),
            arrivals: SegQueue::new(),
            idle: AtomicBool::new(false),
            balancing: AtomicBool::new(false),
            runs_warped: AtomicBool::new(false),
            nearest: nearest(i),
        })
        .collect();
    (scheds, boards)
}

impl<K: Copy + Ord + Debug, V: Clone, Q: Queue<K>> CpuSched<K, V, Q> {
    fn new(cpu: u32, config: Config) -> Self {
        CpuSched {
            cpu,
            queue: Q::new(CpuId(cpu), config),
            members: BTreeMap::new(),
            unsettled: new_table(MIN_TABLE_CAPACITY),
            running: None,
            slice_end_ns: None,
            balance_at_ns: None,
        }
    }

    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// The run queue (for what the platform keeps of it: a held timer's wait forgiven, the
    /// search steps a cost model counts).
    pub fn queue(&self) -> &Q {
        &self.queue
    }

    pub fn queue_mut(&mut self) -> &mut Q {
        &mut self.queue
    }

    /// The vCPU loaded here, if any.
    pub fn running(&self) -> Option<&(K, V)> {
        self.running.as_ref()
    }

    /// When the running vCPU's slice ends.
    pub fn slice_end_ns(&self) -> Option<u64> {
        self.slice_end_ns
    }

    /// The vCPUs homed here.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The decision on the way out of a trap (see the module documentation).
    pub fn schedule<P: Platform<K, V>>(&mut self, all: &[Board<K, V>], p: &mut P) {
        let me = &all[self.cpu as usize];
        let now = p.now_ns();
        let drained = self.queue.drain(now);
        // After the drain, never before: a vCPU's handle is pushed before its `Add`/`Arrive`
        // is posted, so every vCPU the drain put in the queue is in `arrivals` by now.
        // (Taken before the drain, a handle pushed in between would be missing from
        // `members` while the queue already names its vCPU, which would then be dropped as
        // unknown.)
        while let Some((key, v)) = me.arrivals.pop() {
            p.arrive(&v);
            self.unsettled.push(key);
            self.members.insert(key, v);
        }
        let mut decide = drained.reschedule;
        for action in drained.actions {
            self.carry_out(action, all, p, now);
        }
        self.settle_arrivals(p, now);
        if let Some((key, v)) = self.running.clone() {
            decide |= self.settle(key, &v, p, now);
        }
        decide |= self.slice_end_ns.is_some_and(|end| now >= end) || (self.running.is_none() && self.queue.load() > 0);
        if decide {
            self.decide(me, all, p, now);
        }
        if drained.woke {
            self.push_waiting_warped(me, all, p, now);
        }
        if self.running.is_none() {
            // Idle: look for work at every wake-up unless a look is planned already.
            if self.balance_at_ns.is_none_or(|at| now >= at) {
                self.balance(me, all, now);
            }
        } else if self.queue.load() >= STEAL_MIN_LOAD {
            self.wake_idle_neighbour(me, all, p);
        }
        p.program_timer(now, [self.slice_end_ns, self.balance_at_ns]);
    }

    /// Carries out what a drain asked for.
    fn carry_out<P: Platform<K, V>>(&mut self, action: Action<K>, all: &[Board<K, V>], p: &mut P, now: u64) {
        match action {
            Action::Migrate { vcpu: key, state, to } => {
                let Some(v) = self.forget(key, now) else { return };
                p.note(Note::Migrated(key));
                let to = if p.is_online(to.0) { to.0 } else { 0 };
                self.give_away(key, v, state, to, all, p);
            }
            Action::Removed(key) => self.retire(key, p, now),
            // In flight to a thief (runnable already; the thief re-reads the parameters)
            // or gone: nothing to do.
            Action::Bounced { message: Message::Wake(_) | Message::SetParams(..) | Message::Remove(_), .. } => {}
            Action::Bounced { message, reason } => p.note(Note::Bounced { message, reason }),
        }
    }

    /// Brings the parameters of vCPUs that arrived in the queue up to the platform's.
    fn settle_arrivals<P: Platform<K, V>>(&mut self, p: &mut P, now: u64) {
        let mut i = 0;
        while i < self.unsettled.len() {
            let key = self.unsettled[i];
            let Some(view) = self.queue.vcpu(key) else {
                // Its message is not drained yet (or it is gone already).
                if self.members.contains_key(&key) {
                    i += 1;
                } else {
                    self.unsettled.swap_remove(i);
                }
                continue;
            };
            self.unsettled.swap_remove(i);
            if let Some(v) = self.members.get(&key) {
                let params = p.params(v);
                if params != view.params {
                    let _ = self.queue.set_params(key, params, now);
                }
            }
        }
        shrink_when_sparse(&mut self.unsettled, MIN_TABLE_CAPACITY);
    }

    /// Folds what happened to the running vCPU into the queue; true if a decision is due.
    fn settle<P: Platform<K, V>>(&mut self, key: K, v: &V, p: &mut P, now: u64) -> bool {
        match p.verdict(v) {
            Verdict::Drop => {
                self.retire(key, p, now);
                true
            }
            Verdict::Block => {
                let _ = self.queue.block(key, now);
                true
            }
            Verdict::Run => {
                let yielded = p.yielded(v);
                if yielded {
                    self.queue.yield_current();
                }
                yielded
            }
        }
    }

    /// Asks the queue what runs next and switches to it.
    fn decide<P: Platform<K, V>>(&mut self, me: &Board<K, V>, all: &[Board<K, V>], p: &mut P, now: u64) {
        // The frame returns to a guest (else to the idle loop, which it may stay in).
        let guest_frame = self.running.is_some();
        loop {
            let decision = self.queue.pick_next(now);
            let warped = decision.run.and_then(|key| self.queue.vcpu(key)).is_some_and(|view| view.warped);
            me.runs_warped.store(warped, Ordering::Relaxed);
            let Some(key) = decision.run else {
                if let Some((_, out)) = self.running.take() {
                    p.switch_out(&out);
                }
                if guest_frame {
                    p.to_idle();
                }
                self.slice_end_ns = None;
                me.runs_warped.store(false, Ordering::Relaxed);
                me.idle.store(true, Ordering::SeqCst);
                self.balance(me, all, now);
                return;
            };
            if self.running.as_ref().is_some_and(|(running, _)| *running == key) {
                self.slice_end_ns = decision.slice_ns.map(|s| now + s);
                return;
            }
            let Some(v) = self.members.get(&key).cloned() else {
                p.note(Note::Unknown(key));
                let _ = self.queue.remove(key, now);
                continue;
            };
            match p.verdict(&v) {
                Verdict::Run => {}
                Verdict::Block => {
                    let _ = self.queue.block(key, now);
                    continue;
                }
                Verdict::Drop => {
                    self.retire(key, p, now);
                    continue;
                }
            }
            if let Some((_, out)) = self.running.take() {
                p.switch_out(&out);
            }
            if !p.switch_in(&v) {
                self.retire(key, p, now);
                continue;
            }
            self.running = Some((key, v));
            me.idle.store(false, Ordering::SeqCst);
            me.balancing.store(false, Ordering::Relaxed);
            self.balance_at_ns = None;
            self.slice_end_ns = decision.slice_ns.map(|s| now + s);
            return;
        }
    }

    /// A warped vCPU that woke here but waits behind the running one (a warped vCPU too,
    /// whose wake-up it would otherwise wait out) moves to the nearest CPU that runs no
    /// warped vCPU, where its warp puts it on the CPU at once: as Linux pushes a woken
    /// real-time task to a CPU that runs lower-priority work. With several latency-sensitive
    /// domains per CPU, their wake-ups no longer queue behind one another while another CPU
    /// runs a CPU hog.
    fn push_waiting_warped<P: Platform<K, V>>(&mut self, me: &Board<K, V>, all: &[Board<K, V>], p: &mut P, now: u64) {
        let Some(key) = self.queue.waiting_warped() else { return };
        let free = |cpu: &&u32| p.is_online(**cpu) && !all[**cpu as usize].runs_warped.load(Ordering::Relaxed);
        let Some(&to) = me.nearest.iter().find(free) else { return };
        if !self.members.contains_key(&key) {
            return;
        }
        let Ok(state) = self.queue.remove(key, now) else { return };
        let Some(v) = self.members.remove(&key) else { return };
        // Claimed until its next decision, so that no CPU pushes another one there meanwhile.
        all[to as usize].runs_warped.store(true, Ordering::Relaxed);
        p.note(Note::Pushed { vcpu: key, to });
        self.give_away(key, v, state, to, all, p);
    }

    /// Hands a vCPU taken off this CPU's queue (in `state`) to `cpu`: the platform takes its
    /// timers off this CPU and makes `cpu` its home, then it is delivered there and `cpu`
    /// kicked.
    fn give_away<P: Platform<K, V>>(&mut self, key: K, v: V, state: VcpuState, cpu: u32, all: &[Board<K, V>], p: &mut P) {
        p.depart(&v, cpu);
        all[cpu as usize].deliver(key, v, Message::Arrive(key, state));
        self.kick(cpu, p);
    }

    /// Interrupts `cpu` so that it reconsiders what to run (this CPU does at its exit).
    fn kick<P: Platform<K, V>>(&self, cpu: u32, p: &mut P) {
        if cpu != self.cpu && p.is_online(cpu) {
            p.send_ipi(cpu);
        }
    }

    /// Takes a vCPU off this CPU: out of the queue and the members.
    fn forget(&mut self, key: K, now: u64) -> Option<V> {
        let _ = self.queue.remove(key, now);
        self.members.remove(&key)
    }

    /// Takes a vCPU that will never run again off this CPU for good.
    fn retire<P: Platform<K, V>>(&mut self, key: K, p: &mut P, now: u64) {
        if let Some(v) = self.forget(key, now) {
            p.retire(key, &v);
        }
    }

    /// This CPU is idle: asks the nearest CPU with a vCPU waiting long enough for one (it
    /// answers at its next decision, not interrupted for it), and comes back to look again
    /// while any CPU has a vCPU waiting.
    fn balance(&mut self, me: &Board<K, V>, all: &[Board<K, V>], now: u64) {
        let inboxes = me.nearest.iter().map(|&cpu| &*all[cpu as usize].inbox);
        steal_from_nearest(CpuId(self.cpu), inboxes);
        let busy = me.nearest.iter().any(|&cpu| all[cpu as usize].inbox.load() >= STEAL_MIN_LOAD);
        self.balance_at_ns = busy.then_some(now + BALANCE_INTERVAL_NS);
        me.balancing.store(busy, Ordering::Relaxed);
    }

    /// Work is waiting here: wakes the nearest idle CPU that is not looking for work already,
    /// so that it starts to.
    fn wake_idle_neighbour<P: Platform<K, V>>(&self, me: &Board<K, V>, all: &[Board<K, V>], p: &mut P) {
        let asleep = |cpu: &&u32| {
            let other = &all[**cpu as usize];
            other.idle.load(Ordering::Relaxed) && !other.balancing.load(Ordering::Relaxed)
        };
        if let Some(&cpu) = me.nearest.iter().find(asleep) {
            // Set here too, so that this CPU does not wake it again before it looked.
            all[cpu as usize].balancing.store(true, Ordering::Relaxed);
            self.kick(cpu, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use core::num::NonZeroU32;

    const MS: u64 = 1_000_000;

    /// What the scheduler asked of the machine, in order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Did {
        Ipi(u32),
        Out(u32),
        In(u32),
        Idle,
        Depart(u32, u32),
        Arrive(u32),
        Retire(u32),
        Note(Note<u32>),
    }

    /// A machine whose vCPUs are numbers (`K = V`), their state in sets.
    #[derive(Default)]
    struct Mock {
        now: u64,
        blocked: BTreeSet<u32>,
        dropped: BTreeSet<u32>,
        refused: BTreeSet<u32>,
        yields: BTreeSet<u32>,
        params: BTreeMap<u32, BvtParams>,
        did: Vec<Did>,
        timer: Option<[Option<u64>; 2]>,
    }

    impl Platform<u32, u32> for Mock {
        fn now_ns(&self) -> u64 {
            self.now
        }
        fn program_timer(&mut self, _now_ns: u64, deadlines: [Option<u64>; 2]) {
            self.timer = Some(deadlines);
        }
        fn send_ipi(&mut self, cpu: u32) {
            self.did.push(Did::Ipi(cpu));
        }
        fn is_online(&self, _cpu: u32) -> bool {
            true
        }
        fn verdict(&mut self, v: &u32) -> Verdict {
            if self.dropped.contains(v) {
                Verdict::Drop
            } else if self.blocked.contains(v) {
                Verdict::Block
            } else {
                Verdict::Run
            }
        }
        fn yielded(&mut self, v: &u32) -> bool {
            self.yields.remove(v)
        }
        fn params(&self, v: &u32) -> BvtParams {
            self.params.get(v).copied().unwrap_or(BvtParams::DEFAULT)
        }
        fn switch_out(&mut self, v: &u32) {
            self.did.push(Did::Out(*v));
        }
        fn switch_in(&mut self, v: &u32) -> bool {
            self.did.push(Did::In(*v));
            !self.refused.contains(v)
        }
        fn to_idle(&mut self) {
            self.did.push(Did::Idle);
        }
        fn depart(&mut self, v: &u32, cpu: u32) {
            self.did.push(Did::Depart(*v, cpu));
        }
        fn arrive(&mut self, v: &u32) {
            self.did.push(Did::Arrive(*v));
        }
        fn retire(&mut self, key: u32, v: &u32) {
            assert_eq!(key, *v);
            self.did.push(Did::Retire(*v));
        }
        fn note(&mut self, note: Note<u32>) {
            self.did.push(Did::Note(note));
        }
    }

    impl Mock {
        /// What was done since the last look.
        fn take(&mut self) -> Vec<Did> {
            core::mem::take(&mut self.did)
        }
    }

    fn machine(n: u32) -> Cpus<u32, u32, RunQueue<u32>> {
        cpus(n as usize, Config::default(), |c| (0..n).filter(|&o| o != c as u32).collect())
    }

    fn add(boards: &[Board<u32, u32>], cpu: usize, v: u32, params: BvtParams) {
        boards[cpu].deliver(v, v, Message::Add(v, params));
    }

    fn warped() -> BvtParams {
        BvtParams { warp_vns: 200 * MS, warp_limit_ns: 20 * MS, unwarp_req_ns: 0, ..BvtParams::DEFAULT }
    }

    #[test]
    fn an_added_vcpu_runs_at_the_next_exit_with_its_slice_programmed() {
        let (mut cpus, boards) = machine(1);
        let mut m = Mock::default();
        add(&boards, 0, 1, BvtParams::DEFAULT);
        add(&boards, 0, 2, BvtParams::DEFAULT);
        assert!(boards[0].has_work());
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Arrive(1), Did::Arrive(2), Did::In(1)]);
        assert_eq!(cpus[0].running(), Some(&(1, 1)));
        let slice_end = cpus[0].slice_end_ns().expect("another vCPU waits: a slice");
        assert_eq!(m.timer, Some([Some(slice_end), None]));
        assert!(!boards[0].has_work() && !boards[0].is_idle());
        // At the slice's end the other one runs.
        m.now = slice_end;
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Out(1), Did::In(2)]);
    }

    #[test]
    fn a_running_vcpu_that_blocks_leaves_and_the_cpu_idles() {
        let (mut cpus, boards) = machine(1);
        let mut m = Mock::default();
        add(&boards, 0, 1, BvtParams::DEFAULT);
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(cpus[0].slice_end_ns(), None, "alone: no slice");
        m.take();
        m.blocked.insert(1);
        m.now = MS;
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Out(1), Did::Idle]);
        assert_eq!(cpus[0].running(), None);
        assert!(boards[0].is_idle());
        // A wake-up posted by another CPU brings it back at the next exit.
        m.blocked.remove(&1);
        boards[0].inbox().post(Message::Wake(1));
        m.now = 2 * MS;
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::In(1)]);
        assert!(!boards[0].is_idle());
    }

    #[test]
    fn a_vcpu_that_may_not_run_is_dropped_or_set_aside_and_the_next_one_runs() {
        let (mut cpus, boards) = machine(1);
        let mut m = Mock::default();
        for v in 1..=3 {
            add(&boards, 0, v, BvtParams::DEFAULT);
        }
        m.dropped.insert(1);
        m.blocked.insert(2);
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Arrive(1), Did::Arrive(2), Did::Arrive(3), Did::Retire(1), Did::In(3)]);
        assert_eq!(cpus[0].member_count(), 2, "the blocked one stays, the dropped one is gone");
        assert_eq!(cpus[0].queue().load(), 1);
    }

    #[test]
    fn a_refused_switch_in_retires_the_vcpu_and_the_frame_goes_idle() {
        let (mut cpus, boards) = machine(1);
        let mut m = Mock::default();
        add(&boards, 0, 1, BvtParams::DEFAULT);
        cpus[0].schedule(&boards, &mut m);
        add(&boards, 0, 2, BvtParams::DEFAULT);
        m.refused.insert(2);
        m.dropped.insert(1);
        m.take();
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Arrive(2), Did::Retire(1), Did::Out(1), Did::In(2), Did::Retire(2), Did::Idle]);
        assert_eq!((cpus[0].running(), cpus[0].member_count()), (None, 0));
    }

    #[test]
    fn a_yield_gives_the_cpu_to_the_other_vcpu() {
        let (mut cpus, boards) = machine(1);
        let mut m = Mock::default();
        add(&boards, 0, 1, BvtParams::DEFAULT);
        add(&boards, 0, 2, BvtParams::DEFAULT);
        cpus[0].schedule(&boards, &mut m);
        m.take();
        m.now = 10_000;
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [], "no decision is due");
        m.yields.insert(1);
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Out(1), Did::In(2)]);
    }

    #[test]
    fn an_idle_cpu_steals_a_vcpu_that_waited_long_enough() {
        let (mut cpus, boards) = machine(2);
        let mut m = Mock::default();
        for v in 1..=3 {
            add(&boards, 0, v, BvtParams::DEFAULT);
        }
        cpus[0].schedule(&boards, &mut m);
        // CPU 1 is idle: it was woken to look (CPU 0 has work waiting) and asks CPU 0.
        assert_eq!(m.take(), [Did::Arrive(1), Did::Arrive(2), Did::Arrive(3), Did::In(1)]);
        cpus[1].schedule(&boards, &mut m);
        assert_eq!(m.take(), [], "nothing here yet: a steal request is posted, nobody kicked");
        assert!(boards[0].inbox().has_messages());
        assert_eq!(m.timer, Some([None, Some(BALANCE_INTERVAL_NS)]), "it looks again in 1 ms");
        // The request is answered at CPU 0's next exit, once a vCPU has waited 1 ms.
        m.now = 2 * MS;
        cpus[0].schedule(&boards, &mut m);
        let did = m.take();
        let Some(&Did::Depart(stolen, 1)) = did.iter().find(|d| matches!(d, Did::Depart(..))) else { panic!("nothing left: {did:?}") };
        assert!(did.contains(&Did::Note(Note::Migrated(stolen))) && did.contains(&Did::Ipi(1)), "{did:?}");
        assert_ne!(stolen, 1, "never the running one");
        cpus[1].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Arrive(stolen), Did::In(stolen)]);
        assert_eq!((cpus[0].member_count(), cpus[1].member_count()), (2, 1));
    }

    #[test]
    fn pinned_vcpus_are_never_stolen() {
        let (mut cpus, boards) = machine(2);
        let mut m = Mock::default();
        let pinned = BvtParams { pinned: true, ..BvtParams::DEFAULT };
        for v in 1..=3 {
            add(&boards, 0, v, pinned);
            m.params.insert(v, pinned);
        }
        cpus[0].schedule(&boards, &mut m);
        cpus[1].schedule(&boards, &mut m);
        m.now = 10 * MS;
        cpus[0].schedule(&boards, &mut m);
        assert!(!m.take().iter().any(|d| matches!(d, Did::Depart(..))));
        assert_eq!(cpus[0].member_count(), 3);
    }

    #[test]
    fn a_busy_cpu_wakes_an_idle_neighbour_once() {
        let (mut cpus, boards) = machine(2);
        let mut m = Mock::default();
        cpus[1].schedule(&boards, &mut m);
        boards[1].enter_idle();
        add(&boards, 0, 1, BvtParams::DEFAULT);
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Arrive(1), Did::In(1)], "one vCPU: nothing to spare");
        add(&boards, 0, 2, BvtParams::DEFAULT);
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Arrive(2), Did::Ipi(1)]);
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [], "it is looking already");
    }

    #[test]
    fn a_warped_vcpu_that_wakes_behind_a_warped_one_is_pushed_to_a_cpu_running_none() {
        let (mut cpus, boards) = machine(2);
        let mut m = Mock::default();
        m.params.insert(1, warped());
        m.params.insert(2, warped());
        add(&boards, 0, 1, warped());
        cpus[0].schedule(&boards, &mut m);
        m.take();
        m.now = 10_000;
        add(&boards, 0, 2, warped());
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Arrive(2), Did::Note(Note::Pushed { vcpu: 2, to: 1 }), Did::Depart(2, 1), Did::Ipi(1)]);
        cpus[1].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Arrive(2), Did::In(2)]);
        // A third one finds no CPU free of warped vCPUs: it waits.
        m.params.insert(3, warped());
        add(&boards, 0, 3, warped());
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(m.take(), [Did::Arrive(3)]);
    }

    #[test]
    fn an_arrival_takes_its_domains_parameters_as_they_are_now() {
        let (mut cpus, boards) = machine(1);
        let mut m = Mock::default();
        let heavy = BvtParams::weighted(NonZeroU32::new(3).unwrap());
        m.params.insert(7, heavy);
        // It left its old CPU (blocked) with weight 1; its domain has weight 3 since.
        boards[0].deliver(7, 7, Message::Arrive(7, VcpuState::fresh(BvtParams::DEFAULT)));
        cpus[0].schedule(&boards, &mut m);
        assert_eq!(cpus[0].queue().vcpu(7).map(|view| view.params), Some(heavy));
        assert_eq!(m.take(), [Did::Arrive(7)], "blocked as it left");
    }
}
