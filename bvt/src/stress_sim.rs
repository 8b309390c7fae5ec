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
//! Each CPU owns a run queue ([`SimQueue`]: the [`RunQueue`] of the hypervisor, or the
//! linear queue it replaced) and the hypervisor's [`CpuTimers`] (warped vCPUs' timers on
//! time, the others up to the slop late, grouped), programmed through [`TimerHardware`]. Everything the
//! hypervisor does runs with interrupts off and costs time during which nothing else runs on
//! that CPU: an event that comes meanwhile waits for it. A stay costs [`Costs::entry_ns`],
//! plus [`Costs::fire_ns`] per timer fired, plus [`Costs::switch_ns`] when the vCPU changes,
//! plus [`Costs::step_ns`] per search step the run queue reports
//! ([`RunQueue::search_steps`]: members looked at by the linear queue, tree levels by the
//! indexed one): the work that grows with the number of vCPUs is measured, not assumed.
//! Guests: a timer role wakes, works [`Costs::wake_work_ns`], sets its next deadline one
//! period from then and blocks (two hypercalls); ping sends an event to pong on the other
//! CPU every 1 ms and blocks until the answer; hogs spin; every domain first works
//! [`Costs::startup_ns`] (boot, ballooning) from the common unpause. A warped vCPU that wakes
//! behind another warped one is pushed to a CPU running none, as the hypervisor does.
//! Lateness is measured as the guest measures it: from the deadline to its first
//! instruction after the wake-up. With [`Model::worker_run_ns`], each worker runs that long
//! from the end of its own start-up, as the real ones do, then prints its report through the
//! console buffer ([`Console`]): a writer that finds the buffer full either retries at once
//! (the hypercall's continuation: runnable, a stay per retry) or blocks until the buffer has
//! drained enough ([`ConsoleWait`]). Not simulated: the held timers (they hide a constant
//! delivery latency, not work), stealing (the hogs keep both CPUs busy), the host.

use alloc::collections::{BinaryHeap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;

pub use crate::linear_queue::LinearRunQueue;
/// The run queue before issue 18 (linear), for comparison.
pub type LinearQueue = LinearRunQueue<u32>;
use crate::params::{BvtParams, Config, CpuId};
use crate::run_queue::{Decision, RunQueue};
use crate::cpu_timers::{CpuTimers, TimerHardware};
use crate::vcpu_state::VcpuState;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;

/// What the simulator needs of a run queue: the calls the hypervisor makes.
pub trait SimQueue {
    fn create(cpu: u32, config: Config) -> Self;
    fn add(&mut self, v: u32, params: BvtParams, now_ns: u64);
    fn wake(&mut self, v: u32, now_ns: u64);
    fn block(&mut self, v: u32, now_ns: u64);
    fn remove(&mut self, v: u32, now_ns: u64) -> VcpuState;
    fn admit(&mut self, v: u32, state: VcpuState, now_ns: u64);
    fn tick(&mut self, now_ns: u64) -> bool;
    fn pick_next(&mut self, now_ns: u64) -> Decision<u32>;
    fn current(&self) -> Option<u32>;
    fn waiting_warped(&self) -> Option<u32>;
    fn is_warped(&self, v: u32) -> bool;
    fn search_steps(&self) -> u64;
}

macro_rules! sim_queue {
    ($queue:ident) => {
        impl SimQueue for $queue<u32> {
            fn create(cpu: u32, config: Config) -> Self {
                $queue::new(CpuId(cpu), config)
            }
            fn add(&mut self, v: u32, params: BvtParams, now_ns: u64) {
                $queue::add(self, v, params, now_ns).expect("a new vCPU");
            }
            fn wake(&mut self, v: u32, now_ns: u64) {
                $queue::wake(self, v, now_ns).expect("a member");
            }
            fn block(&mut self, v: u32, now_ns: u64) {
                $queue::block(self, v, now_ns).expect("a member");
            }
            fn remove(&mut self, v: u32, now_ns: u64) -> VcpuState {
                $queue::remove(self, v, now_ns).expect("a member")
            }
            fn admit(&mut self, v: u32, state: VcpuState, now_ns: u64) {
                $queue::admit(self, v, state, now_ns).expect("not a member yet");
            }
            fn tick(&mut self, now_ns: u64) -> bool {
                $queue::tick(self, now_ns)
            }
            fn pick_next(&mut self, now_ns: u64) -> Decision<u32> {
                $queue::pick_next(self, now_ns)
            }
            fn current(&self) -> Option<u32> {
                $queue::current(self)
            }
            fn waiting_warped(&self) -> Option<u32> {
                $queue::waiting_warped(self)
            }
            fn is_warped(&self, v: u32) -> bool {
                $queue::vcpu(self, v).is_some_and(|view| view.warped)
            }
            fn search_steps(&self) -> u64 {
                $queue::search_steps(self)
            }
        }
    };
}

sim_queue!(RunQueue);
sim_queue!(LinearRunQueue);

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
    /// domain is charged per wake-up (periodic 47 us, latency 70 us, idle about 90 us: the
    /// switch under TCG flushes its software TLB, and the guest then runs cold), and each
    /// domain's start-up (boot and ballooning: 1000 domains took 3.1 s on 2 CPUs, 600 took
    /// 1.8 s, 100 took 0.39 s). The console: 830 bytes of report per domain, printed at
    /// 190 KB/s (both from the serial logs).
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
}

impl Model {
    /// `n` domains on 2 CPUs for 10 s with the default costs, as `make stress N=n`
    /// (the workers measure until `run_ns` and never report).
    pub fn stress(n: u32) -> Model {
        let warp = Warp { weight: 16, warp_ns: 200 * MS, limit_ns: 20 * MS, unwarp_ns: 200 * US };
        let console = Console { capacity: 96 << 10, drain_bytes_per_s: 190_000, report_bytes: 830, report_work_ns: 0, wait: ConsoleWait::Block };
        Model { n, cpus: 2, run_ns: 10_000 * MS, costs: Costs::default(), warp, worker_run_ns: None, console, aligned_start: false }
    }

    /// `make stress N=n` as measured: the costs of real runs ([`Costs::measured`]), each
    /// worker running 10 s from its own start and then printing its report (the simulation
    /// ends once all have), with the parameters of domain 0's plan and the hypervisor's
    /// console as they are now.
    pub fn measured(n: u32) -> Model {
        Model { run_ns: 60_000 * MS, costs: Costs::measured(), worker_run_ns: Some(10_000 * MS), ..Model::stress(n) }
    }

    /// [`Model::measured`] as the image and the plan were before issue 18 item 2: a
    /// `console_io` write that found the buffer full spun on its continuation, and the
    /// latency domains had weight 1.
    pub fn measured_before(n: u32) -> Model {
        let mut model = Model::measured(n);
        model.console.wait = ConsoleWait::Spin;
        model.warp.weight = 1;
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
    /// When the last domain ended its start-up (boot and ballooning) and began its run.
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
    /// An IPI to `cpu` carrying a wake-up of `v`.
    Wake { cpu: usize, v: u32 },
    /// An IPI to `cpu` carrying the pushed vCPU `v` (its state is in `Vm::in_flight`).
    Arrive { cpu: usize, v: u32 },
    /// The console buffer may have drained enough for the first blocked writer.
    ConsoleRoom,
}

/// One vCPU (one domain).
#[derive(Clone, Debug)]
struct Vm {
    role: Role,
    home: usize,
    params: BvtParams,
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
    in_flight: Option<VcpuState>,
    /// When its start-up ended and its run began.
    start_ns: u64,
    /// Its run is over: it prints its report (retrying or waiting while the console is full).
    reporting: bool,
    /// A blocked writer woken with room set aside for its report.
    console_granted: bool,
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
    queue: Q,
    timers: CpuTimers<(u32, u64)>,
    running: Option<u32>,
    /// When the running guest last resumed.
    resumed_at: u64,
    /// The hypervisor runs on this CPU until then.
    free_at: u64,
    slice_end: Option<u64>,
    timer_token: u64,
    guest_token: u64,
    hypervisor_ns: u64,
}

/// A CPU's local timer as [`CpuTimers::program`] sets it: the delay armed, if it was.
struct SimApic(Option<u64>);

impl TimerHardware for SimApic {
    fn arm_timer_ns(&mut self, delay_ns: u64) {
        self.0 = Some(delay_ns);
    }
}

struct Sim<Q> {
    model: Model,
    cpus: Vec<Cpu<Q>>,
    vms: Vec<Vm>,
    console: ConsoleState,
    /// Domains started up and waiting for the go.
    ready: usize,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    out: Outcome,
}

/// Runs `model` with run queues of type `Q`.
pub fn run<Q: SimQueue>(model: &Model) -> Outcome {
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
                work_left_ns: model.costs.startup_ns,
                started: false,
                deadline_ns: 0,
                woken_for_ns: 0,
                sent_at_ns: 0,
                answered: false,
                ran_ns: 0,
                in_flight: None,
                start_ns: 0,
                reporting: false,
                console_granted: false,
                waiting_go: false,
                go: false,
                ran_log: Vec::new(),
            }
        })
        .collect::<Vec<_>>();
    let config = Config::default();
    let mut sim = Sim {
        model: *model,
        cpus: (0..model.cpus)
            .map(|c| Cpu {
                queue: Q::create(c, config),
                timers: CpuTimers::new(0, model.costs.slop_ns),
                running: None,
                resumed_at: 0,
                free_at: 0,
                slice_end: None,
                timer_token: 0,
                guest_token: 0,
                hypervisor_ns: 0,
            })
            .collect(),
        vms,
        console: ConsoleState { level: 0, at_ns: 0, waiters: VecDeque::new(), armed: false },
        ready: 0,
        events: BinaryHeap::new(),
        seq: 0,
        out: Outcome::default(),
    };
    // The unpause: every domain is added to its CPU's queue at time 0.
    for v in 0..sim.vms.len() {
        let (home, params) = (sim.vms[v].home, sim.vms[v].params);
        sim.cpus[home].queue.add(v as u32, params, 0);
    }
    for c in 0..cpus {
        sim.enter(c, 0, |_, _, _| 0);
    }
    while let Some(Reverse((t, _, event))) = sim.events.pop() {
        if t >= model.run_ns {
            break;
        }
        sim.out.end_ns = t;
        sim.handle(t, event);
    }
    sim.finish()
}

impl<Q: SimQueue> Sim<Q> {
    fn push(&mut self, t: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, event)));
    }

    fn handle(&mut self, t: u64, event: Event) {
        let cpu = match event {
            Event::Timer { cpu, .. } | Event::GuestDone { cpu, .. } | Event::Wake { cpu, .. } | Event::Arrive { cpu, .. } => cpu,
            Event::ConsoleRoom => {
                self.console_room(t);
                return;
            }
        };
        if t < self.cpus[cpu].free_at {
            // Interrupts are off while the hypervisor works: the event waits for it.
            let at = self.cpus[cpu].free_at;
            self.push(at, event);
            return;
        }
        match event {
            Event::Timer { token, .. } if token != self.cpus[cpu].timer_token => {}
            Event::Timer { .. } => {
                self.cpus[cpu].timers.fired();
                self.enter(cpu, t, |sim, c, now| sim.fire_timers(c, now));
            }
            Event::GuestDone { v, token, .. } if token != self.cpus[cpu].guest_token || self.cpus[cpu].running != Some(v) => {}
            Event::GuestDone { v, .. } => self.enter(cpu, t, |sim, c, now| sim.guest_done(c, v, now)),
            Event::Wake { v, .. } => self.enter(cpu, t, |sim, c, now| {
                sim.wake(c, v, now);
                0
            }),
            Event::Arrive { v, .. } => self.enter(cpu, t, |sim, c, now| {
                let state = sim.vms[v as usize].in_flight.take().expect("a pushed vCPU carries its state");
                sim.cpus[c].queue.admit(v, state, now);
                sim.rearm(c, v);
                0
            }),
            Event::ConsoleRoom => unreachable!("handled above"),
        }
    }

    /// A stay in the hypervisor on `c` at `t`: `work` (which returns its own cost beyond
    /// the run queue's), then the decision, the push and the timer; the CPU is busy for the
    /// cost of it all, and the guest chosen runs from then.
    fn enter(&mut self, c: usize, t: u64, work: impl FnOnce(&mut Self, usize, u64) -> u64) {
        let costs = self.model.costs;
        let steps_before = self.cpus[c].queue.search_steps();
        if let Some(v) = self.cpus[c].running {
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
        let cpu = &mut self.cpus[c];
        let before = cpu.running;
        let decide = cpu.queue.current() != before || cpu.slice_end.is_some_and(|end| t >= end) || cpu.queue.tick(t);
        if decide {
            let decision = cpu.queue.pick_next(t);
            cpu.slice_end = decision.slice_ns.map(|s| t + s);
            cpu.running = decision.run;
        }
        let switched = self.cpus[c].running != before && self.cpus[c].running.is_some();
        if switched {
            cost += costs.switch_ns;
            self.out.switches += 1;
        }
        self.push_waiting_warped(c, t);
        let steps = self.cpus[c].queue.search_steps() - steps_before;
        cost += steps * costs.step_ns;
        let free_at = t + cost;
        let cpu = &mut self.cpus[c];
        cpu.free_at = free_at;
        cpu.hypervisor_ns += cost;
        cpu.resumed_at = free_at;
        cpu.guest_token += 1;
        let token = cpu.guest_token;
        if let Some(v) = cpu.running {
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
                self.push(end.max(free_at), Event::GuestDone { cpu: c, v, token });
            } else if vm.work_left_ns != u64::MAX {
                let done = free_at + vm.work_left_ns;
                self.push(done, Event::GuestDone { cpu: c, v, token });
            }
        }
        self.program_timer(c, t);
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
            vm.woken_for_ns = if matches!(vm.role, Role::Ping | Role::Pong) { 0 } else { deadline };
            if vm.role == Role::Ping {
                vm.work_left_ns = self.model.costs.wake_work_ns;
            }
            self.cpus[c].queue.wake(v, now);
        }
        cost
    }

    /// `v` finished the work of its wake-up (or its start): what its role does next.
    fn guest_done(&mut self, c: usize, v: u32, now: u64) -> u64 {
        let costs = self.model.costs;
        let run = self.model.worker_run_ns;
        let vm = &mut self.vms[v as usize];
        vm.work_left_ns = 0;
        if !vm.started && self.model.aligned_start && !vm.go {
            // Started up: it waits for domain 0's go, sent once every domain has.
            if !vm.waiting_go {
                vm.waiting_go = true;
                self.cpus[c].queue.block(v, now);
                self.ready += 1;
                if self.ready == self.vms.len() {
                    for w in 0..self.vms.len() {
                        self.vms[w].go = true;
                        let home = self.vms[w].home;
                        self.push(now + costs.ipi_ns, Event::Wake { cpu: home, v: w as u32 });
                    }
                }
            }
            return costs.entry_ns;
        }
        let vm = &mut self.vms[v as usize];
        if !vm.started {
            vm.started = true;
            vm.start_ns = now;
            self.out.last_start_ns = self.out.last_start_ns.max(now);
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
            if self.model.console.report_work_ns > 0 {
                vm.work_left_ns = self.model.console.report_work_ns;
                return costs.entry_ns;
            }
        }
        if self.vms[v as usize].reporting {
            return self.report(c, v, now);
        }
        let vm = &mut self.vms[v as usize];
        match vm.role {
            Role::Hog => 0,
            Role::Pong => {
                self.cpus[c].queue.block(v, now);
                if self.vms[v as usize].sent_at_ns != 0 {
                    self.vms[v as usize].sent_at_ns = 0;
                    let ping = v - 1;
                    let to = self.vms[ping as usize].home;
                    self.push(now + costs.ipi_ns, Event::Wake { cpu: to, v: ping });
                }
                costs.entry_ns
            }
            Role::Ping if !vm.answered => {
                // Its timer woke it: send, and wait for the answer.
                vm.sent_at_ns = now;
                let pong = v + 1;
                self.vms[pong as usize].sent_at_ns = now;
                let to = self.vms[pong as usize].home;
                self.push(now + costs.ipi_ns, Event::Wake { cpu: to, v: pong });
                self.cpus[c].queue.block(v, now);
                costs.entry_ns
            }
            Role::Ping => {
                // Answered (recorded at its dispatch): the next send one period on.
                vm.answered = false;
                self.arm(c, v, now + MS);
                self.cpus[c].queue.block(v, now);
                2 * costs.entry_ns
            }
            role => {
                self.arm(c, v, now + role.period_ns());
                self.cpus[c].queue.block(v, now);
                costs.entry_ns
            }
        }
    }

    fn arm(&mut self, c: usize, v: u32, deadline: u64) {
        self.vms[v as usize].deadline_ns = deadline;
        let latency_sensitive = self.vms[v as usize].role == Role::Latency;
        self.cpus[c].timers.insert(deadline, latency_sensitive, |_| (v, deadline));
    }

    /// Arms on its new home the timer of a vCPU that arrived there.
    fn rearm(&mut self, c: usize, v: u32) {
        let deadline = self.vms[v as usize].deadline_ns;
        if deadline != 0 {
            self.arm(c, v, deadline);
        }
    }

    fn wake(&mut self, c: usize, v: u32, now: u64) {
        if self.vms[v as usize].home == c {
            self.cpus[c].queue.wake(v, now);
        }
    }

    /// `v`'s run is over: it writes its report to the console, or (no room) retries or
    /// blocks as [`ConsoleWait`] says; once written it blocks for good. Returns the cost.
    fn report(&mut self, c: usize, v: u32, now: u64) -> u64 {
        let costs = self.model.costs;
        let console = self.model.console;
        let vm = &mut self.vms[v as usize];
        vm.reporting = true;
        let written = core::mem::take(&mut vm.console_granted) || self.console_take(now, console.report_bytes);
        if written {
            // Written: it blocks for good.
            self.vms[v as usize].reporting = false;
            self.out.reports += 1;
            self.out.last_report_ns = self.out.last_report_ns.max(now);
            self.cpus[c].queue.block(v, now);
            return costs.entry_ns;
        }
        self.out.console_waits += 1;
        match console.wait {
            ConsoleWait::Spin => {
                // The continuation: the guest re-enters the call at once.
                self.vms[v as usize].work_left_ns = US;
            }
            ConsoleWait::Block => {
                self.console.waiters.push_back(v);
                self.cpus[c].queue.block(v, now);
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
        self.push(now + wait.max(US), Event::ConsoleRoom);
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
            let home = self.vms[v as usize].home;
            self.push(now + self.model.costs.ipi_ns, Event::Wake { cpu: home, v });
        }
        self.arm_console_room(now);
    }

    /// As the hypervisor's `push_waiting_warped`: a warped vCPU waiting behind a warped one
    /// moves to a CPU that runs none.
    fn push_waiting_warped(&mut self, c: usize, now: u64) {
        let Some(v) = self.cpus[c].queue.waiting_warped() else { return };
        let free = (0..self.cpus.len()).find(|&o| {
            o != c && !self.cpus[o].running.is_some_and(|r| self.cpus[o].queue.is_warped(r)) && self.vms.iter().all(|vm| vm.in_flight.is_none() || vm.home != o)
        });
        let Some(to) = free else { return };
        let state = self.cpus[c].queue.remove(v, now);
        let vm = &mut self.vms[v as usize];
        vm.home = to;
        vm.in_flight = Some(state);
        self.out.pushes += 1;
        self.push(now + self.model.costs.ipi_ns, Event::Arrive { cpu: to, v });
    }

    /// Arms the local timer for the next warped timer, the next other one plus the slop,
    /// and the slice's end, as the hypervisor does (through [`CpuTimers::program`]).
    fn program_timer(&mut self, c: usize, now: u64) {
        let mut apic = SimApic(None);
        let cpu = &mut self.cpus[c];
        cpu.timers.program(now, [cpu.slice_end], &mut apic);
        if let SimApic(Some(delay)) = apic {
            cpu.timer_token += 1;
            let (token, at) = (cpu.timer_token, (now + delay).max(cpu.free_at));
            self.push(at, Event::Timer { cpu: c, token });
        }
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
    /// domains' warp used up by the start-up rush (warped p99 over 1 ms; real runs 6.6-8.9
    /// ms) and the idle domains' timers hundreds of ms late behind the reports of the
    /// domains that finished first, spinning on the full console buffer (idle p99 over
    /// 100 ms; real 268 ms; hundreds of thousands of retries, against 106651-118377
    /// `console.waits` in the real runs).
    #[test]
    fn the_measured_model_of_before_shows_the_real_tails_at_1000_domains() {
        let out = run::<RunQueue<u32>>(&Model::measured_before(1000));
        assert!(out.warped.percentile(99) > MS, "warped p99 {}", out.warped.percentile(99));
        assert!(out.idle.percentile(99) > 100 * MS, "idle p99 {}", out.idle.percentile(99));
        assert!(out.console_waits > 100_000, "console waits {}", out.console_waits);
    }

    /// Issue 18 item 2's targets, under the measured costs, with console writers that block
    /// on a full buffer and latency domains at the plan's weight: warped p99 under 1 ms at
    /// N=1000 and within 2x of N=100's at 300 and 600; idle p99 under 10 ms at 600 (and at
    /// 1000); the hogs' shares within 5%; every worker reports. Fails with
    /// [`Model::measured_before`] (warped p99 2.4 ms at N=1000, idle 184 ms).
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
            assert!(out.warped.len() > 10_000, "N={n}: the warped domains ran ({} samples)", out.warped.len());
        }
    }

    /// The work of one wake-up, decision and block grows with log n, not n: at 1000 members
    /// the indexed queue takes under 3x the search steps it takes at 10, the linear one 100x.
    #[test]
    fn a_wake_up_costs_log_n_search_steps() {
        fn cycle<Q: SimQueue>(members: u32) -> u64 {
            let mut q = Q::create(0, Config::default());
            for v in 0..members {
                q.add(v, BvtParams::DEFAULT, 0);
                if v > 0 {
                    q.block(v, 0);
                }
            }
            q.pick_next(0);
            let before = q.search_steps();
            for round in 1..=100u64 {
                let v = 1 + (round as u32 % (members - 1));
                q.wake(v, round * MS);
                q.pick_next(round * MS);
                q.block(v, round * MS + 10 * US);
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
