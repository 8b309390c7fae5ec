//! A multi-CPU discrete-event simulator of `make stress` on the host: the stress mix of
//! domain 0's plan (latency domains warped, ping-pong pairs, periodic and idle timers,
//! weighted hogs) scheduled by this crate's run queues and timer queues, with a cost model
//! for the hypervisor's work, so that what happens at 1000 domains can be seen, and tested,
//! without running the machine (issue 18). Deterministic: no clock, no randomness, no
//! threads; the same [`Model`] always gives the same [`Outcome`].
//!
//! Test-only and behind the `sim` feature (`cargo run -p bvt --features sim --example
//! stress_sim` prints the curve). Who calls it: `sim`'s tests and that example. It must never
//! be used by the hypervisor.
//!
//! # What is simulated
//! Each CPU runs the hypervisor's own scheduler, [`CpuSched`] (the decision at every exit,
//! the push of a warped vCPU that woke behind another, stealing when idle, the timer's
//! programming: the code the image runs, not a copy), over a run queue ([`Queue`]: the
//! [`RunQueue`](crate::RunQueue) of the hypervisor, or the linear queue it replaced), and the
//! hypervisor's [`CpuTimers`] (warped vCPUs' timers on
//! time, the others up to the slop late, grouped), programmed through [`TimerHardware`]. The
//! simulated machine is the scheduler's [`Platform`]: wake-ups from another CPU and
//! arrivals travel through the target's inbox and a reschedule IPI ([`Costs::ipi_ns`]), as
//! in the hypervisor. Everything the
//! hypervisor does runs with interrupts off and costs time during which nothing else runs on
//! that CPU: an event that comes meanwhile waits for it. A stay costs [`Costs::entry_ns`],
//! plus [`Costs::fire_ns`] per timer fired, plus [`Costs::switch_ns`] when the vCPU changes,
//! plus [`Costs::step_ns`] per search step the run queue reports
//! ([`Queue::search_steps`]: members looked at by the linear queue, tree levels by the
//! indexed one): the work that grows with the number of vCPUs is measured, not assumed.
//! Guests: a timer role wakes, works [`Costs::wake_work_ns`], sets its next deadline one
//! period from then and blocks (two hypercalls); ping sends an event to pong on the other
//! CPU every 1 ms and blocks until the answer; hogs spin; every domain first works
//! [`Costs::startup_ns`] (boot, ballooning) from the common unpause. A warped vCPU that wakes
//! behind another warped one is pushed to a CPU running none, as the hypervisor does.
//! Lateness is measured as the guest measures it: from the deadline to its first
//! instruction after the wake-up. With [`Model::worker_run_ns`], each worker runs that long
//! from the end of its own start-up, as the real ones do (or from domain 0's go,
//! [`Model::aligned_start`]), then composes its report and prints it through the console
//! buffer ([`Console`]): a writer that finds the buffer full either retries at once (the
//! hypercall's continuation: runnable, a stay per retry) or blocks until the buffer has
//! drained enough ([`ConsoleWait`]). Not simulated: the held timers (they hide a constant
//! delivery latency, not work), the host.

use alloc::collections::{BinaryHeap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;

pub use crate::linear_queue::LinearRunQueue;
/// The run queue before issue 18 (linear), for comparison.
pub type LinearQueue = LinearRunQueue<u32>;
use crate::cpu_sched::{Board, CpuSched, Note, Platform, Verdict};
use crate::cpu_timers::{CpuTimers, TimerHardware};
use crate::inbox::Message;
use crate::params::{BvtParams, Config};
pub use crate::queue::Queue;
#[cfg(test)]
use crate::run_queue::RunQueue;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;

/// The cost model, ns of one CPU under TCG. The defaults are calibrated from `make stress`
/// runs on this project's machine kind (docs/measurements.md, "The scheduler simulator").
#[derive(Clone, Copy, Debug)]
pub struct Costs {
    /// A trap into the hypervisor and the way back (entry, decode, exit path).
    pub entry_ns: u64,
    /// One search step of the run queue.
    pub step_ns: u64,
    /// A context switch: CR3 (TCG then flushes its whole software TLB), FPU, segments.
    pub switch_ns: u64,
    /// Firing one timer (raising its VIRQ, waking its vCPU).
    pub fire_ns: u64,
    /// From an IPI's send to its handler on the other CPU.
    pub ipi_ns: u64,
    /// A timer role's, ping's or pong's work per wake-up, in the guest.
    pub wake_work_ns: u64,
    /// Each domain's work from the unpause to its first timer (boot, ballooning).
    pub startup_ns: u64,
    /// How late a timer of a domain that does not warp may fire (`timer_slop_us`).
    pub slop_ns: u64,
}

/// The latency domains' BVT parameters, as domain 0's plan gives them (`LATENCY_WARP`).
#[derive(Clone, Copy, Debug)]
pub struct Warp {
    pub weight: u32,
    pub warp_ns: u64,
    pub limit_ns: u64,
    pub unwarp_ns: u64,
}

/// What a `console_io` write does when the console buffer has no room for its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleWait {
    /// Retries at once (the hypercall's continuation): the vCPU stays runnable and each
    /// retry is a stay in the hypervisor.
    Spin,
    /// Blocks until the buffer has drained enough for its line, woken oldest first.
    Block,
}

/// The console buffer the workers' reports go through (the hypervisor's `logger`).
#[derive(Clone, Copy, Debug)]
pub struct Console {
    /// Bytes the guests' lines may fill at once.
    pub capacity: u64,
    /// Bytes per second printed to the UART (the buffer drains at this rate).
    pub drain_bytes_per_s: u64,
    /// Each worker's report at the end of its run (its balloon, result and histogram
    /// records), bytes.
    pub report_bytes: u64,
    /// The guest's work to compose its report, ns of CPU.
    pub report_work_ns: u64,
    /// Workers compose and write their reports only when domain 0 says every run is over
    /// (`told=1`: the run's latest start plus its length plus 500 ms), not each at
    /// the end of its own run.
    pub report_when_told: bool,
    pub wait: ConsoleWait,
}

impl Default for Costs {
    fn default() -> Costs {
        Costs {
            entry_ns: 6 * US,
            step_ns: 25,
            switch_ns: 15 * US,
            fire_ns: 2 * US,
            ipi_ns: 10 * US,
            wake_work_ns: 25 * US,
            startup_ns: 2 * MS,
            slop_ns: 50 * US,
        }
    }
}

impl Costs {
    /// The costs measured in real `make stress` runs (TCG, 2 host cores; issue 18 item 2,
    /// docs/measurements.md): stays of 20-27 us on average at N=100..1000, the CPU time a
    /// domain is charged per wake-up (periodic 47 us, latency 70-95 us, idle about 90 us:
    /// the switch under TCG flushes its software TLB, and the guest then runs cold), and
    /// each domain's start-up (boot and ballooning: 1000 domains took 3.1 s on 2 CPUs, 600
    /// took 1.8 s, 100 took 0.39 s).
    pub fn measured() -> Costs {
        Costs {
            entry_ns: 12 * US,
            step_ns: 25,
            switch_ns: 25 * US,
            fire_ns: 3 * US,
            ipi_ns: 10 * US,
            wake_work_ns: 30 * US,
            startup_ns: 5 * MS,
            slop_ns: 50 * US,
        }
    }
}

/// One simulated `make stress` run.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    /// Stress domains (domain 0 is not simulated: it blocks once they are created).
    pub n: u32,
    pub cpus: u32,
    /// Simulated time from the unpause, at most, ns.
    pub run_ns: u64,
    pub costs: Costs,
    pub warp: Warp,
    /// Each worker's own run, from the end of its start-up to its report, as `seconds=`
    /// gives it (`None`: workers never end; the simulation stops at `run_ns`).
    pub worker_run_ns: Option<u64>,
    pub console: Console,
    /// Workers start their runs together, at domain 0's go once every domain has started
    /// up (as `make stress IO=1` does with `stress-go`), not each as it has.
    pub aligned_start: bool,
    /// The run queues' wake-up boost ([`Config::wake_boost`]).
    pub wake_boost: bool,
}

impl Model {
    /// `n` domains on 2 CPUs for 10 s with the default costs, as `make stress N=n` (the
    /// workers measure until `run_ns` and never report), with the plan's parameters.
    pub fn stress(n: u32) -> Model {
        let warp = Warp { weight: 16, warp_ns: 200 * MS, limit_ns: 20 * MS, unwarp_ns: 200 * US };
        let console = Console { capacity: 96 << 10, drain_bytes_per_s: 190_000, report_bytes: 830, report_work_ns: 0, report_when_told: false, wait: ConsoleWait::Block };
        Model { n, cpus: 2, run_ns: 10_000 * MS, costs: Costs::default(), warp, worker_run_ns: None, console, aligned_start: false, wake_boost: true }
    }

    /// `make stress N=n` as measured: the costs of real runs ([`Costs::measured`]), each
    /// worker running 10 s from domain 0's go (once every domain has started up; first
    /// deadlines spread over the period), then, once domain 0 says every run is over,
    /// composing its report (4 ms of CPU, as the real ones took) and writing it (the
    /// simulation ends once all have), with the plan's parameters and the hypervisor's
    /// console as they are now.
    pub fn measured(n: u32) -> Model {
        let mut model = Model { run_ns: 60_000 * MS, costs: Costs::measured(), worker_run_ns: Some(10_000 * MS), ..Model::stress(n) };
        model.console.report_work_ns = 4 * MS;
        model.console.report_when_told = true;
        model.aligned_start = true;
        model
    }

    /// [`Model::measured`] as the image, the plan and the workers were before issue 18
    /// item 2: a `console_io` write that found the buffer full spun on its continuation,
    /// the latency domains had weight 1, and each worker started its run as it had started
    /// up and reported at the end of it.
    pub fn measured_before(n: u32) -> Model {
        let mut model = Model::measured(n);
        model.console.wait = ConsoleWait::Spin;
        model.console.report_when_told = false;
        model.aligned_start = false;
        model.warp.weight = 1;
        model.wake_boost = false;
        model
    }
}

/// What a domain does (domain 0's plan, `guests/dom0/src/plan.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A 1 ms timer, warped.
    Latency,
    /// A 1 ms timer.
    Periodic,
    /// A 100 ms timer.
    Idle,
    /// Spins.
    Hog,
    /// Sends an event to its pong every 1 ms and times the answer.
    Ping,
    /// Answers its ping.
    Pong,
}

impl Role {
    fn period_ns(self) -> u64 {
        match self {
            Role::Idle => 100 * MS,
            _ => MS,
        }
    }
}

/// The role counts of domain 0's plan for `n` domains on `cpus` CPUs.
pub fn roles(n: u32, cpus: u32) -> Vec<Role> {
    let mut room = n;
    let mut take = |wanted: u32, size: u32| {
        let count = wanted.min(room / size);
        room -= count * size;
        count
    };
    let hogs = take((2 * cpus).min(n / 4), 1);
    let latency = take(4.min(n / 10), 1);
    let pairs = take(4.min(n / 10), 2);
    let periodic = take((4 * cpus).min(n / 10), 1);
    let mut roles = vec![Role::Latency; latency as usize];
    for _ in 0..pairs {
        roles.extend([Role::Ping, Role::Pong]);
    }
    roles.extend(core::iter::repeat_n(Role::Periodic, periodic as usize));
    roles.extend(core::iter::repeat_n(Role::Idle, room as usize));
    roles.extend(core::iter::repeat_n(Role::Hog, hogs as usize));
    roles
}

/// Latency samples of one kind, ns.
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<u64>);

impl Samples {
    /// The `p`-th percentile (0-100), nearest rank; 0 without samples.
    pub fn percentile(&self, p: u32) -> u64 {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        match sorted.len() {
            0 => 0,
            len => sorted[((len - 1) * p as usize).div_ceil(100)],
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn max(&self) -> u64 {
        self.0.iter().copied().max().unwrap_or(0)
    }
}

/// What a simulated run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Timer lateness of the latency (warped) domains.
    pub warped: Samples,
    /// Of the periodic domains.
    pub unwarped: Samples,
    /// Of the idle domains.
    pub idle: Samples,
    /// Ping-pong round trips.
    pub ping_pong: Samples,
    /// Each hog's share of its CPU against its weight's, worst relative error.
    pub hog_error: f64,
    /// Time each CPU spent in the hypervisor, ns.
    pub hypervisor_ns: Vec<u64>,
    /// Context switches on all CPUs.
    pub switches: u64,
    /// Warped vCPUs pushed to another CPU.
    pub pushes: u64,
    /// Console writes that found no room (each retry of a spinning writer counts).
    pub console_waits: u64,
    /// When the last domain ended its start-up (boot and ballooning).
    pub last_start_ns: u64,
    /// Reports written, and when the last was (0: none).
    pub reports: u64,
    pub last_report_ns: u64,
    /// The last event simulated: the run's length.
    pub end_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The local timer of `cpu`, if still armed with `token`.
    Timer { cpu: usize, token: u64 },
    /// The running guest `v` finished its work, if it still runs as `token`.
    GuestDone { cpu: usize, v: u32, token: u64 },
    /// A reschedule IPI reaches `cpu` (its inbox has news: a wake-up, an arrival, a steal).
    Ipi { cpu: usize },
    /// The console buffer may have drained enough for the first blocked writer.
    ConsoleRoom,
    /// Domain 0 says every run is over: the workers waiting to report may ([`Console::report_when_told`]).
    Tell,
}

/// One vCPU (one domain).
#[derive(Clone, Debug)]
struct Vm {
    role: Role,
    home: usize,
    params: BvtParams,
    /// Blocked (its run state, which the scheduler's verdict reads).
    blocked: bool,
    /// Guest work left before it next blocks (hogs: never blocks).
    work_left_ns: u64,
    started: bool,
    /// The deadline of its armed timer (0: none).
    deadline_ns: u64,
    /// The deadline whose expiry woke it, to measure at its dispatch.
    woken_for_ns: u64,
    /// Ping: when the event was sent (0: not waiting for an answer); pong: an answer is due.
    sent_at_ns: u64,
    /// Ping: the answer came (its round trip is recorded); the next send is one period on.
    answered: bool,
    ran_ns: u64,
    /// When its start-up ended (or the go came) and its run began.
    start_ns: u64,
    /// Its run is over: it composes and writes its report (retrying or waiting while the
    /// console is full).
    reporting: bool,
    /// A blocked writer woken with room set aside for its report.
    console_granted: bool,
    /// Its report is composed (or being composed).
    composed: bool,
    /// Waiting for domain 0 to say every run is over ([`Console::report_when_told`]).
    waiting_tell: bool,
    /// Started up and waiting for domain 0's go ([`Model::aligned_start`]); the go came.
    waiting_go: bool,
    go: bool,
    /// Hogs: (time, CPU time so far) at each charge, for the fairness window.
    ran_log: Vec<(u64, u64)>,
}

/// The console buffer: bytes queued as of `at_ns`, draining at a constant rate.
struct ConsoleState {
    level: u64,
    at_ns: u64,
    waiters: VecDeque<u32>,
    /// A [`Event::ConsoleRoom`] is pending.
    armed: bool,
}

struct Cpu<Q> {
    /// The hypervisor's scheduler for this CPU: the same code as the image's.
    sched: CpuSched<u32, u32, Q>,
    timers: CpuTimers<(u32, u64)>,
    /// When the running guest last resumed.
    resumed_at: u64,
    /// The hypervisor runs on this CPU until then.
    free_at: u64,
    timer_token: u64,
    guest_token: u64,
    hypervisor_ns: u64,
}

impl<Q: Queue<u32>> Cpu<Q> {
    fn running(&self) -> Option<u32> {
        self.sched.running().map(|&(v, _)| v)
    }
}

/// A CPU's local timer as [`CpuTimers::program`] sets it: the delay armed, if it was.
struct SimApic(Option<u64>);

impl TimerHardware for SimApic {
    fn arm_timer_ns(&mut self, delay_ns: u64) {
        self.0 = Some(delay_ns);
    }
}

/// The simulated events to come, in time order (ties: in order of insertion).
#[derive(Default)]
struct Events {
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
}

impl Events {
    fn push(&mut self, t: u64, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, event)));
    }
}

/// What the scheduler of CPU `c` sees of the simulated machine during one stay.
struct Machine<'a> {
    now: u64,
    vms: &'a mut [Vm],
    timers: &'a mut CpuTimers<(u32, u64)>,
    events: &'a mut Events,
    out: &'a mut Outcome,
    ipi_ns: u64,
    /// The delay the local timer was armed with, if it was.
    armed: Option<u64>,
}

impl Platform<u32, u32> for Machine<'_> {
    fn now_ns(&self) -> u64 {
        self.now
    }
    fn program_timer(&mut self, now_ns: u64, deadlines: [Option<u64>; 2]) {
        let mut apic = SimApic(None);
        self.timers.program(now_ns, deadlines, &mut apic);
        self.armed = apic.0;
    }
    fn send_ipi(&mut self, cpu: u32) {
        self.events.push(self.now + self.ipi_ns, Event::Ipi { cpu: cpu as usize });
    }
    fn is_online(&self, _cpu: u32) -> bool {
        true
    }
    fn verdict(&mut self, &v: &u32) -> Verdict {
        if self.vms[v as usize].blocked { Verdict::Block } else { Verdict::Run }
    }
    fn yielded(&mut self, _v: &u32) -> bool {
        false
    }
    fn params(&self, &v: &u32) -> BvtParams {
        self.vms[v as usize].params
    }
    fn switch_out(&mut self, _v: &u32) {}
    fn switch_in(&mut self, _v: &u32) -> bool {
        true
    }
    fn to_idle(&mut self) {}
    fn depart(&mut self, &v: &u32, cpu: u32) {
        // Its timer stays behind, and is not fired there (`fire_timers` checks the home).
        self.vms[v as usize].home = cpu as usize;
    }
    fn arrive(&mut self, &v: &u32) {
        let deadline = self.vms[v as usize].deadline_ns;
        if deadline != 0 {
            arm(self.timers, &self.vms[v as usize], v, deadline);
        }
    }
    fn retire(&mut self, _key: u32, _v: &u32) {}
    fn note(&mut self, note: Note<u32>) {
        if let Note::Pushed { .. } = note {
            self.out.pushes += 1;
        }
    }
}

/// Arms `v`'s timer for `deadline` in `timers`.
fn arm(timers: &mut CpuTimers<(u32, u64)>, vm: &Vm, v: u32, deadline: u64) {
    timers.insert(deadline, vm.role == Role::Latency, |_| (v, deadline));
}

struct Sim<Q> {
    model: Model,
    cpus: Vec<Cpu<Q>>,
    boards: Vec<Board<u32, u32>>,
    vms: Vec<Vm>,
    console: ConsoleState,
    /// Domains started up and waiting for the go.
    ready: usize,
    /// Domains whose runs have started; domain 0's word came; those waiting for it.
    started: usize,
    told: bool,
    tell_waiters: Vec<u32>,
    events: Events,
    out: Outcome,
}

/// Runs `model` with run queues of type `Q`.
pub fn run<Q: Queue<u32>>(model: &Model) -> Outcome {
    let roles = roles(model.n, model.cpus);
    let cpus = model.cpus as usize;
    let mut hog = 0;
    let vms = roles
        .iter()
        .enumerate()
        .map(|(i, &role)| {
            let (home, weight) = if role == Role::Hog {
                hog += 1;
                (((hog - 1) / 2) % cpus, 1 + (hog - 1) % 2)
            } else {
                (i % cpus, 1)
            };
            let pinned = role != Role::Latency;
            let (weight, warp, limit, unwarp) = if role == Role::Latency {
                (model.warp.weight as usize, model.warp.warp_ns, model.warp.limit_ns, model.warp.unwarp_ns)
            } else {
                (weight, 0, 0, 0)
            };
            let params = BvtParams::for_domain_vcpu(weight as u32, warp, limit, unwarp, pinned, 1);
            Vm {
                role,
                home,
                params,
                blocked: false,
                work_left_ns: model.costs.startup_ns,
                started: false,
                deadline_ns: 0,
                woken_for_ns: 0,
                sent_at_ns: 0,
                answered: false,
                ran_ns: 0,
                start_ns: 0,
                reporting: false,
                console_granted: false,
                composed: false,
                waiting_tell: false,
                waiting_go: false,
                go: false,
                ran_log: Vec::new(),
            }
        })
        .collect::<Vec<_>>();
    let nearest = |c: usize| (1..cpus).map(|d| ((c + d) % cpus) as u32).collect();
    let (scheds, boards) = crate::cpu_sched::cpus::<u32, u32, Q>(cpus, Config { wake_boost_ns: if model.wake_boost { crate::params::DEFAULT_WAKE_BOOST_NS } else { 0 }, ..Config::default() }, nearest);
    let mut sim = Sim {
        model: *model,
        cpus: scheds
            .into_iter()
            .map(|sched| Cpu {
                sched,
                timers: CpuTimers::new(0, model.costs.slop_ns),
                resumed_at: 0,
                free_at: 0,
                timer_token: 0,
                guest_token: 0,
                hypervisor_ns: 0,
            })
            .collect(),
        boards,
        vms,
        console: ConsoleState { level: 0, at_ns: 0, waiters: VecDeque::new(), armed: false },
        ready: 0,
        started: 0,
        told: false,
        tell_waiters: Vec::new(),
        events: Events::default(),
        out: Outcome::default(),
    };
    // The unpause: every domain is added to its CPU's queue at time 0 (as `sched::add`).
    for v in 0..sim.vms.len() {
        let (home, params) = (sim.vms[v].home, sim.vms[v].params);
        sim.boards[home].deliver(v as u32, v as u32, Message::Add(v as u32, params));
    }
    for c in 0..cpus {
        sim.boards[c].enter_idle();
        sim.enter(c, 0, |_, _, _| 0);
    }
    while let Some(Reverse((t, _, event))) = sim.events.heap.pop() {
        if t >= model.run_ns {
            break;
        }
        sim.out.end_ns = t;
        sim.handle(t, event);
    }
    sim.finish()
}

impl<Q: Queue<u32>> Sim<Q> {
    fn handle(&mut self, t: u64, event: Event) {
        let cpu = match event {
            Event::Timer { cpu, .. } | Event::GuestDone { cpu, .. } | Event::Ipi { cpu } => cpu,
            Event::ConsoleRoom => {
                self.console_room(t);
                return;
            }
            Event::Tell => {
                self.told = true;
                for v in core::mem::take(&mut self.tell_waiters) {
                    self.wake(usize::MAX, v, t);
                }
                return;
            }
        };
        if t < self.cpus[cpu].free_at {
            // Interrupts are off while the hypervisor works: the event waits for it.
            let at = self.cpus[cpu].free_at;
            self.events.push(at, event);
            return;
        }
        match event {
            Event::Timer { token, .. } if token != self.cpus[cpu].timer_token => {}
            Event::Timer { .. } => {
                self.cpus[cpu].timers.fired();
                self.enter(cpu, t, |sim, c, now| sim.fire_timers(c, now));
            }
            Event::GuestDone { v, token, .. } if token != self.cpus[cpu].guest_token || self.cpus[cpu].running() != Some(v) => {}
            Event::GuestDone { v, .. } => self.enter(cpu, t, |sim, c, now| sim.guest_done(c, v, now)),
            Event::Ipi { .. } => self.enter(cpu, t, |_, _, _| 0),
            Event::ConsoleRoom | Event::Tell => unreachable!("handled above"),
        }
    }

    /// A stay in the hypervisor on `c` at `t`: `work` (which returns its own cost beyond
    /// the run queue's), then the scheduler's decision ([`CpuSched::schedule`]); the CPU is
    /// busy for the cost of it all, and the guest chosen runs from then.
    fn enter(&mut self, c: usize, t: u64, work: impl FnOnce(&mut Self, usize, u64) -> u64) {
        let costs = self.model.costs;
        let steps_before = self.cpus[c].sched.queue().search_steps();
        if let Some(v) = self.cpus[c].running() {
            let ran = t.saturating_sub(self.cpus[c].resumed_at);
            let vm = &mut self.vms[v as usize];
            vm.ran_ns += ran;
            if vm.role == Role::Hog {
                vm.ran_log.push((t, vm.ran_ns));
            }
            if vm.work_left_ns != u64::MAX {
                vm.work_left_ns = vm.work_left_ns.saturating_sub(ran);
            }
        }
        let mut cost = costs.entry_ns + work(self, c, t);
        let before = self.cpus[c].running();
        let Sim { cpus, boards, vms, events, out, model, .. } = self;
        let cpu = &mut cpus[c];
        let mut machine = Machine { now: t, vms: &mut vms[..], timers: &mut cpu.timers, events, out, ipi_ns: model.costs.ipi_ns, armed: None };
        cpu.sched.schedule(&boards[..], &mut machine);
        let armed = machine.armed;
        let running = self.cpus[c].running();
        let switched = running != before && running.is_some();
        if switched {
            cost += costs.switch_ns;
            self.out.switches += 1;
        }
        let steps = self.cpus[c].sched.queue().search_steps() - steps_before;
        cost += steps * costs.step_ns;
        let free_at = t + cost;
        let cpu = &mut self.cpus[c];
        cpu.free_at = free_at;
        cpu.hypervisor_ns += cost;
        cpu.resumed_at = free_at;
        cpu.guest_token += 1;
        let token = cpu.guest_token;
        if let Some(delay) = armed {
            cpu.timer_token += 1;
            let (timer_token, at) = (cpu.timer_token, (t + delay).max(free_at));
            self.events.push(at, Event::Timer { cpu: c, token: timer_token });
        }
        if let Some(v) = running {
            let vm = &mut self.vms[v as usize];
            if switched && vm.woken_for_ns != 0 {
                let late = free_at.saturating_sub(vm.woken_for_ns);
                match vm.role {
                    Role::Latency => self.out.warped.0.push(late),
                    Role::Periodic => self.out.unwarped.0.push(late),
                    Role::Idle => self.out.idle.0.push(late),
                    _ => {}
                }
                vm.woken_for_ns = 0;
            }
            if vm.role == Role::Ping && vm.sent_at_ns != 0 && vm.work_left_ns == 0 {
                // Woken by pong's answer.
                self.out.ping_pong.0.push(free_at - vm.sent_at_ns);
                vm.sent_at_ns = 0;
                vm.answered = true;
            }
            if vm.work_left_ns == 0 {
                vm.work_left_ns = costs.wake_work_ns;
            }
            let hog_end = self.model.worker_run_ns.filter(|_| vm.role == Role::Hog && vm.started && !vm.reporting).map(|run| vm.start_ns + run);
            if let Some(end) = hog_end {
                // A hog spins until the end of its run in real time.
                self.events.push(end.max(free_at), Event::GuestDone { cpu: c, v, token });
            } else if vm.work_left_ns != u64::MAX {
                let done = free_at + vm.work_left_ns;
                self.events.push(done, Event::GuestDone { cpu: c, v, token });
            }
        }
    }

    /// Fires the due timers of `c`; returns their cost.
    fn fire_timers(&mut self, c: usize, now: u64) -> u64 {
        let due: Vec<(u32, u64)> = self.cpus[c].timers.expire(now).collect();
        let cost = due.len() as u64 * self.model.costs.fire_ns;
        for (v, deadline) in due {
            let vm = &mut self.vms[v as usize];
            if vm.deadline_ns != deadline || vm.home != c {
                continue;
            }
            vm.deadline_ns = 0;
            vm.woken_for_ns = if matches!(vm.role, Role::Ping | Role::Pong) || vm.reporting { 0 } else { deadline };
            if vm.role == Role::Ping {
                vm.work_left_ns = self.model.costs.wake_work_ns;
            }
            self.wake(c, v, now);
        }
        cost
    }

    /// As the hypervisor's `sched::wake`, from CPU `from`: a blocked `v` becomes runnable
    /// and its home is told (and kicked, if it is another CPU).
    fn wake(&mut self, from: usize, v: u32, now: u64) {
        let vm = &mut self.vms[v as usize];
        if !core::mem::take(&mut vm.blocked) {
            return;
        }
        let home = vm.home;
        self.boards[home].inbox().post(Message::Wake(v));
        if home != from {
            self.events.push(now + self.model.costs.ipi_ns, Event::Ipi { cpu: home });
        }
    }

    /// `v` finished the work of its wake-up (or its start): what its role does next. A role
    /// that blocks marks itself blocked; the scheduler sees it on the way out.
    fn guest_done(&mut self, c: usize, v: u32, now: u64) -> u64 {
        let costs = self.model.costs;
        let run = self.model.worker_run_ns;
        let vm = &mut self.vms[v as usize];
        vm.work_left_ns = 0;
        if !vm.started && self.model.aligned_start && !vm.go {
            // Started up: it waits for domain 0's go, sent once every domain has.
            if !vm.waiting_go {
                vm.waiting_go = true;
                vm.blocked = true;
                self.out.last_start_ns = self.out.last_start_ns.max(now);
                self.ready += 1;
                if self.ready == self.vms.len() {
                    for w in 0..self.vms.len() {
                        self.vms[w].go = true;
                        self.wake(c, w as u32, now);
                    }
                }
            }
            return costs.entry_ns;
        }
        let everyone = self.vms.len();
        let vm = &mut self.vms[v as usize];
        if !vm.started {
            vm.started = true;
            vm.start_ns = now;
            self.out.last_start_ns = self.out.last_start_ns.max(now);
            self.started += 1;
            if let (true, Some(run)) = (self.started == everyone, run) {
                // Domain 0 says every run is over 500 ms after the latest can have ended.
                self.events.push(now + run + 500 * MS, Event::Tell);
            }
            match vm.role {
                Role::Hog => {
                    // Spins to the end of its run (see `enter`).
                    vm.work_left_ns = u64::MAX;
                    return 0;
                }
                Role::Pong => {
                    // Answers until the end of its run (a timer then ends its wait).
                    if let Some(run) = run {
                        self.arm(c, v, now + run);
                    }
                }
                _ => {}
            }
        }
        let vm = &mut self.vms[v as usize];
        if !vm.reporting && run.is_some_and(|run| now >= vm.start_ns + run) && vm.sent_at_ns == 0 {
            // Its run is over: it composes its report (the histogram records), then writes it.
            vm.reporting = true;
        }
        if vm.reporting && !vm.composed {
            if self.model.console.report_when_told && !self.told {
                // It waits, blocked, for domain 0's word.
                if !vm.waiting_tell {
                    vm.waiting_tell = true;
                    vm.blocked = true;
                    self.tell_waiters.push(v);
                }
                return costs.entry_ns;
            }
            vm.composed = true;
            if self.model.console.report_work_ns > 0 {
                vm.work_left_ns = self.model.console.report_work_ns;
                return costs.entry_ns;
            }
        }
        if self.vms[v as usize].reporting {
            return self.report(v, now);
        }
        let vm = &mut self.vms[v as usize];
        match vm.role {
            Role::Hog => 0,
            Role::Pong => {
                vm.blocked = true;
                if vm.sent_at_ns != 0 {
                    vm.sent_at_ns = 0;
                    self.wake(c, v - 1, now);
                }
                costs.entry_ns
            }
            Role::Ping if !vm.answered => {
                // Its timer woke it: send, and wait for the answer.
                vm.sent_at_ns = now;
                vm.blocked = true;
                self.vms[v as usize + 1].sent_at_ns = now;
                self.wake(c, v + 1, now);
                costs.entry_ns
            }
            Role::Ping => {
                // Answered (recorded at its dispatch): the next send one period on.
                vm.answered = false;
                vm.blocked = true;
                self.arm(c, v, now + MS);
                2 * costs.entry_ns
            }
            role => {
                vm.blocked = true;
                // With an aligned start, each worker's first wake-up is put at its own place
                // in the period (golden-ratio spread by domain), so that timers started
                // together do not fall due together.
                let first = self.model.aligned_start && now.saturating_sub(vm.start_ns) < costs.wake_work_ns + costs.entry_ns;
                let offset = if first { (u64::from(v) * 618_034 % 1_000_000) * role.period_ns() / 1_000_000 } else { 0 };
                self.arm(c, v, now + role.period_ns() + offset);
                costs.entry_ns
            }
        }
    }

    fn arm(&mut self, c: usize, v: u32, deadline: u64) {
        self.vms[v as usize].deadline_ns = deadline;
        arm(&mut self.cpus[c].timers, &self.vms[v as usize], v, deadline);
    }

    /// `v`'s report is composed: it writes it to the console, or (no room) retries or
    /// blocks as [`ConsoleWait`] says; once written it blocks for good. Returns the cost.
    fn report(&mut self, v: u32, now: u64) -> u64 {
        let costs = self.model.costs;
        let console = self.model.console;
        let written = core::mem::take(&mut self.vms[v as usize].console_granted) || self.console_take(now, console.report_bytes);
        if written {
            let vm = &mut self.vms[v as usize];
            vm.reporting = false;
            vm.blocked = true;
            self.out.reports += 1;
            self.out.last_report_ns = self.out.last_report_ns.max(now);
            return costs.entry_ns;
        }
        self.out.console_waits += 1;
        match console.wait {
            ConsoleWait::Spin => {
                // The continuation: the guest re-enters the call at once.
                self.vms[v as usize].work_left_ns = US;
            }
            ConsoleWait::Block => {
                self.vms[v as usize].blocked = true;
                self.console.waiters.push_back(v);
                self.arm_console_room(now);
            }
        }
        costs.entry_ns
    }

    /// The console buffer's bytes queued at `now`, after its drain since it was last looked at.
    fn console_level(&mut self, now: u64) -> u64 {
        let rate = u128::from(self.model.console.drain_bytes_per_s.max(1));
        let drained = u128::from(now.saturating_sub(self.console.at_ns)) * rate / 1_000_000_000;
        if drained >= u128::from(self.console.level) {
            self.console.level = 0;
            self.console.at_ns = now;
        } else {
            // Whole bytes only: the time of the fraction left is drained at the next look.
            self.console.level -= drained as u64;
            self.console.at_ns += u64::try_from(drained * 1_000_000_000 / rate).unwrap_or(0);
        }
        self.console.level
    }

    /// Queues `bytes` if the buffer has room for them at `now`.
    fn console_take(&mut self, now: u64, bytes: u64) -> bool {
        if self.console_level(now) + bytes > self.model.console.capacity {
            return false;
        }
        self.console.level += bytes;
        true
    }

    /// Plans the wake-up of the first blocked writer for when the buffer has room for it.
    fn arm_console_room(&mut self, now: u64) {
        if self.console.armed || self.console.waiters.is_empty() {
            return;
        }
        let console = self.model.console;
        let over = (self.console_level(now) + console.report_bytes).saturating_sub(console.capacity);
        let wait = u64::try_from(u128::from(over) * 1_000_000_000 / u128::from(console.drain_bytes_per_s.max(1))).unwrap_or(u64::MAX);
        self.console.armed = true;
        self.events.push(now + wait.max(US), Event::ConsoleRoom);
    }

    /// The buffer drained: the blocked writers it has room for are woken, oldest first,
    /// their reports' room set aside.
    fn console_room(&mut self, now: u64) {
        self.console.armed = false;
        let bytes = self.model.console.report_bytes;
        while let Some(&v) = self.console.waiters.front() {
            if !self.console_take(now, bytes) {
                break;
            }
            self.console.waiters.pop_front();
            self.vms[v as usize].console_granted = true;
            // From whichever CPU drained the buffer: an IPI to its home.
            self.wake(usize::MAX, v, now);
        }
        self.arm_console_room(now);
    }

    fn finish(mut self) -> Outcome {
        let mut worst: f64 = 0.0;
        // With workers that end, the hogs' window is domain 0's: from 10% of the run past
        // the latest start to 90% past the earliest.
        let window = self.model.worker_run_ns.map(|run| {
            let starts = self.vms.iter().filter(|vm| vm.started).map(|vm| vm.start_ns);
            let (first, last) = (starts.clone().min().unwrap_or(0), starts.max().unwrap_or(0));
            (last + run / 10, (first + run / 10 * 9).max(last + run / 10))
        });
        let ran_in = |vm: &Vm| match window {
            None => vm.ran_ns,
            Some((from, to)) => {
                let at = |t: u64| vm.ran_log.iter().take_while(|&&(when, _)| when <= t).last().map_or(0, |&(_, ran)| ran);
                at(to) - at(from)
            }
        };
        for c in 0..self.cpus.len() {
            let hogs: Vec<&Vm> = self.vms.iter().filter(|vm| vm.role == Role::Hog && vm.home == c).collect();
            let total: u64 = hogs.iter().map(|vm| ran_in(vm)).sum();
            let weights: u32 = hogs.iter().map(|vm| vm.params.weight.get()).sum();
            for vm in &hogs {
                let share = ran_in(vm) as f64 / total.max(1) as f64;
                let expected = f64::from(vm.params.weight.get()) / f64::from(weights.max(1));
                worst = worst.max(((share - expected) / expected).abs());
            }
        }
        self.out.hog_error = worst;
        self.out.hypervisor_ns = self.cpus.iter().map(|cpu| cpu.hypervisor_ns).collect();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 s of `make stress N=n`: long enough for the start-up rush and 30 idle periods.
    fn model(n: u32) -> Model {
        Model { run_ns: 4_000 * MS, ..Model::stress(n) }
    }

    #[test]
    fn the_plan_has_the_stress_mix() {
        let count = |roles: &[Role], role| roles.iter().filter(|&&r| r == role).count();
        let roles = roles(100, 2);
        assert_eq!(roles.len(), 100);
        let counts = [Role::Latency, Role::Ping, Role::Pong, Role::Periodic, Role::Idle, Role::Hog].map(|r| count(&roles, r));
        assert_eq!(counts, [4, 4, 4, 8, 76, 4]);
        assert_eq!(count(&super::roles(1000, 2), Role::Idle), 976);
    }

    /// The linear run queue reproduces the collapse `make stress` showed before issue 18:
    /// warped p99 tens of ms and more at 1000 domains, hundreds of times N=100's, and idle
    /// domains' p99 hundreds of ms; the CPUs spend most of their time in the hypervisor.
    /// (With the plan of then: latency domains at weight 1.)
    #[test]
    fn the_linear_queue_collapses_at_1000_domains() {
        let then = |n| {
            let mut model = model(n);
            model.warp.weight = 1;
            model
        };
        let small = run::<LinearQueue>(&then(100));
        let large = run::<LinearQueue>(&then(1000));
        assert!(small.warped.percentile(99) < 500 * US, "N=100: {}", small.warped.percentile(99));
        assert!(large.warped.percentile(99) > 20 * MS, "N=1000: {}", large.warped.percentile(99));
        assert!(large.idle.percentile(99) > 100 * MS, "N=1000 idle: {}", large.idle.percentile(99));
        assert!(large.hypervisor_ns.iter().all(|&ns| ns > model(1000).run_ns * 6 / 10));
    }

    /// With the indexed run queue, a warped vCPU's wake-up latency does not grow with the
    /// number of domains: its p99 stays under 1 ms (and at most a few times N=100's) from 100
    /// to 1000 domains, the idle domains' p99 under 10 ms, the hogs' shares within 5%.
    #[test]
    fn the_indexed_queue_holds_latency_from_100_to_1000_domains() {
        let base = run::<RunQueue<u32>>(&model(100));
        let base_p99 = base.warped.percentile(99);
        assert!(base_p99 < 200 * US, "N=100: {base_p99}");
        for n in [300, 600, 1000] {
            let out = run::<RunQueue<u32>>(&model(n));
            let p99 = out.warped.percentile(99);
            assert!(p99 < MS && p99 < 6 * base_p99, "N={n}: warped p99 {p99} ns, N=100 {base_p99} ns");
            assert!(out.idle.percentile(99) < 10 * MS, "N={n}: idle p99 {}", out.idle.percentile(99));
            assert!(out.hog_error < 0.05, "N={n}: hog error {}", out.hog_error);
            assert!(out.warped.len() > 10_000, "N={n}: the warped domains ran ({} samples)", out.warped.len());
        }
    }

    /// With the costs measured in real runs, the model of the image and plan as they were
    /// before issue 18 item 2 shows what the real runs showed at N=1000: the latency
    /// domains' warp used up (warped p99 over 1 ms; real runs 6.6-16.8 ms) and the idle
    /// domains' timers hundreds of ms late behind the reports of the domains that finished
    /// first, spinning on the full console buffer (idle p99 over 100 ms; real 268-570 ms;
    /// over 100,000 retries, against 106,651-118,377 `console.waits` in the real runs).
    #[test]
    fn the_measured_model_of_before_shows_the_real_tails_at_1000_domains() {
        let out = run::<RunQueue<u32>>(&Model::measured_before(1000));
        assert!(out.warped.percentile(99) > MS, "warped p99 {}", out.warped.percentile(99));
        assert!(out.idle.percentile(99) > 100 * MS, "idle p99 {}", out.idle.percentile(99));
        assert!(out.console_waits > 100_000, "console waits {}", out.console_waits);
    }

    /// Issue 18 item 2's targets under the measured costs, with console writers that block on
    /// a full buffer, latency domains at the plan's weight and reports when domain 0 says
    /// every run is over: warped p99 under 1 ms at N=1000 and within 2x of N=100's at 300
    /// and 600; idle p99 under 10 ms; the hogs' shares within 5%; every worker reports; a
    /// blocked writer waits a few times, not a retry per stay. Fails with
    /// [`Model::measured_before`] (N=600: warped p99 562 us against N=100's 92 us, idle p99
    /// 47 ms; N=1000: 2.2 ms and 374 ms).
    #[test]
    fn the_measured_model_holds_the_targets_from_100_to_1000_domains() {
        let base = run::<RunQueue<u32>>(&Model::measured(100));
        let base_p99 = base.warped.percentile(99);
        assert!(base_p99 < 200 * US, "N=100: {base_p99}");
        for n in [300, 600, 1000] {
            let out = run::<RunQueue<u32>>(&Model::measured(n));
            let p99 = out.warped.percentile(99);
            assert!(p99 < MS, "N={n}: warped p99 {p99} ns");
            if n < 1000 {
                assert!(p99 <= 2 * base_p99, "N={n}: warped p99 {p99} ns, N=100 {base_p99} ns");
            }
            assert!(out.idle.percentile(99) < 10 * MS, "N={n}: idle p99 {}", out.idle.percentile(99));
            assert!(out.hog_error < 0.05, "N={n}: hog error {}", out.hog_error);
            assert!(out.reports + 4 >= u64::from(n), "N={n}: {} reports (pongs may miss their last wake)", out.reports);
            assert!(out.console_waits < 2 * u64::from(n), "N={n}: {} console waits", out.console_waits);
            assert!(out.warped.len() > 10_000, "N={n}: the warped domains ran ({} samples)", out.warped.len());
        }
    }

    /// The workers' start-ups and reports in each other's runs: a worker's run starts as it
    /// has started up (while others still boot and balloon, and go first) and its report (4
    /// ms of CPU) is printed at the end of its run, in the runs of those that started later:
    /// idle p99 tens of ms at N=600 (the real runs: 84-92 ms). Started at domain 0's go and
    /// reporting when it says every run is over, no start-up and no report is in any run.
    #[test]
    fn start_ups_and_reports_in_other_runs_delay_the_idle_domains() {
        let told = Model { wake_boost: false, ..Model::measured(600) };
        let mut apart = told;
        apart.console.report_when_told = false;
        apart.aligned_start = false;
        let apart = run::<RunQueue<u32>>(&apart);
        let told = run::<RunQueue<u32>>(&told);
        assert!(apart.idle.percentile(99) > 20 * MS, "apart: idle p99 {}", apart.idle.percentile(99));
        assert!(told.idle.percentile(99) < 5 * MS, "told: idle p99 {}", told.idle.percentile(99));
    }

    /// The wake-up boost and the interruptions' rule (see the crate documentation) at the
    /// measured costs: the idle domains' wake-ups come sooner (p50 under 0.8x and p99 under
    /// 0.6x of those without, from N=100 to 1000), while the hogs keep their shares within 2.5%
    /// and the warped domains their latency. Without the interruptions' rule the boost alone
    /// skewed the hogs by 4-8%.
    #[test]
    fn the_wake_up_boost_brings_idle_wake_ups_forward_and_keeps_the_shares() {
        for n in [100, 600, 1000] {
            let plain = run::<RunQueue<u32>>(&Model { wake_boost: false, ..Model::measured(n) });
            let boosted = run::<RunQueue<u32>>(&Model::measured(n));
            for (p, tenths) in [(50, 8), (99, 6)] {
                let (before, after) = (plain.idle.percentile(p), boosted.idle.percentile(p));
                assert!(after * 10 < before * tenths, "N={n}: idle p{p} {after} ns with the boost, {before} ns without");
            }
            assert!(boosted.hog_error < 0.025, "N={n}: hog error {}", boosted.hog_error);
            assert!(boosted.warped.percentile(99) < 2 * plain.warped.percentile(99), "N={n}: warped p99 {}", boosted.warped.percentile(99));
        }
    }

    /// The work of one wake-up, decision and block grows with log n, not n: at 1000 members
    /// the indexed queue takes under 3x the search steps it takes at 10, the linear one 100x.
    #[test]
    fn a_wake_up_costs_log_n_search_steps() {
        fn cycle<Q: Queue<u32>>(members: u32) -> u64 {
            let mut q = Q::new(crate::params::CpuId(0), Config::default());
            for v in 0..members {
                q.add(v, BvtParams::DEFAULT, 0).expect("a new vCPU");
                if v > 0 {
                    q.block(v, 0).expect("a member");
                }
            }
            q.pick_next(0);
            let before = q.search_steps();
            for round in 1..=100u64 {
                let v = 1 + (round as u32 % (members - 1));
                q.wake(v, round * MS).expect("a member");
                q.pick_next(round * MS);
                q.block(v, round * MS + 10 * US).expect("a member");
                q.pick_next(round * MS + 10 * US);
            }
            (q.search_steps() - before) / 100
        }
        let (small, large) = (cycle::<RunQueue<u32>>(10), cycle::<RunQueue<u32>>(1000));
        assert!(large < 3 * small, "indexed: {small} steps at 10, {large} at 1000");
        let (small, large) = (cycle::<LinearQueue>(10), cycle::<LinearQueue>(1000));
        assert!(large > 50 * small, "linear: {small} steps at 10, {large} at 1000");
    }
}
