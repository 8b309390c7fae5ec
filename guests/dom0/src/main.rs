//! guest-dom0: domain 0 of the stress run (boot module 0); with `plan=fuzz` or
//! `plan=cycles` on its command line, of the fuzz run or the containment cycles instead
//! ([`fuzzrun`], [`guest_dom0::fuzzplan`]). For the stress run it reads its options, plans
//! the run ([`Plan`]), creates every stress domain from boot module 1 through the control
//! interface, paused (timing each creation), checks that none has run yet, unpauses them
//! all (in creation order), so that the run measures N domains together rather than the
//! creations, waits for them to balloon, sleeps through the run (to the latest worker's
//! end: each starts its run once it has ballooned),
//! waits until they have all finished (their CPU time stops growing: a finished worker
//! blocks for good), reports each domain's counters, destroys them all, waits until they
//! are gone, and powers off. Its console lines are the domain-0 half of
//! `stress/PROTOCOL.md`, written with the `protocol` crate's records; the run ends with
//! `stress: done ok` or `stress: FAILED reason=<word>` (after destroying what it created).
//!
//! With `io_kib=K` (`make stress IO=1`) every stress domain also gets its store, its
//! console and a VBD of K KiB served by domain 0 ([`devices`]), served in bounded rounds
//! from every wait of this loop (the workers' records come through their console rings,
//! relayed as `[dN] stress: ...`); domain 0 waits for every VBD to connect (`mem
//! phase=connected`), then starts the workers' runs ([`Devices::start_run`]: each waits
//! for it after connecting, so the run and the hogs' window count from then, not from the
//! unpause), and before the destruction relays what is left in every console ring, prints
//! the `devices` record, releases every ring, port and store entry and prints the
//! `consoles` record; a VBD cut off, a request answered with an error or a VBD never
//! connected fails the run, and so does a stress domain that ends by itself (domain 0
//! learns of it through `VIRQ_DOM_EXC` and relays its console's last lines first).
//!
//! With `attack=<name>` on its command line it runs one attack or lifecycle check
//! instead ([`attack`]); with `plan=virtio` it drives the machine's virtio disk and
//! measures it ([`virtio`]); with `plan=xtf`, one Xen Test Framework test's domain
//! ([`xtfrun`]).
//!
//! Domain 0 never spins while it waits: it sleeps on its one-shot timer, so that it takes
//! no CPU time from the domains it measures.

#![no_std]
#![no_main]

extern crate alloc;

use core::cell::RefCell;
use core::fmt::{self, Write};

use arrayvec::{ArrayString, ArrayVec};
use guest_dom0::fuzzplan::{self, Plan as FuzzPlan};
use guest_dom0::options::Options;
use guest_dom0::plan::{self, Plan, PlanError};
use guest_rt::abi::control::DOMAIN_PAUSED;
use guest_rt::abi::errno::Errno;
use guest_rt::abi::ids::DomId;
use guest_rt::control::{self, ControlError, NewDomain};
use guest_rt::events::{EventError, Events};
use guest_rt::hypercall::HypercallError;
use guest_rt::time::Clock;
use guest_rt::timer::Timer;
use guest_rt::{println, StartInfo};
use protocol::keyvalue::OptionError;
use protocol::record::{Config, Creation, DomainInfo, MemPhase, MemSample, Record};
use devices::{DevError, Devices};
use protocol::worker::Task;

mod attack;

mod devices;

mod fuzzrun;

mod virtio;

mod xtfrun;

guest_rt::entry!(main);

/// The boot module stress domains are built from.
const STRESS_MODULE: u32 = 1;
const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000 * MS;
/// How often domain 0 looks again while it waits for domains to change.
const POLL_NS: u64 = 10 * MS;
/// The longest wait for every domain to balloon, or for quiet, is this plus
/// [`WAIT_PER_DOMAIN_NS`] for each domain: every domain starts (and balloons) at once after
/// the unpause, so with many domains per CPU the start-up alone takes seconds. At N=1000 on
/// two emulated CPUs some domain had not ballooned after 10 s.
const WAIT_BASE_NS: u64 = 10 * SECOND;
/// See [`WAIT_BASE_NS`].
const WAIT_PER_DOMAIN_NS: u64 = 20 * MS;
/// Time past the run's end (the latest worker's start plus the run) before looking for
/// quiet.
const RUN_MARGIN_NS: u64 = 500 * MS;
/// Domains are quiet when their total CPU time does not grow over this long.
const QUIET_WINDOW_NS: u64 = 500 * MS;
/// The longest wait for destroyed domains to go.
const DESTROY_TIMEOUT_NS: u64 = 5 * SECOND;

fn main(start: &'static StartInfo) {
    if let Some(name) = attack::requested(start.cmd_line()) {
        attack::run(name, start);
    }
    if start.cmd_line().split(|&b| b == b' ').any(|word| word == b"plan=virtio") {
        return virtio::run(start);
    }
    if let Some(options) = guest_dom0::xtfplan::requested(start.cmd_line()) {
        xtfrun::run(options);
    }
    match fuzzplan::plan(start.cmd_line()) {
        Ok(FuzzPlan::Stress) => {}
        Ok(FuzzPlan::Fuzz(options)) => return other_plan("fuzz", |w, alive| fuzzrun::run_fuzz(&options, w, alive)),
        Ok(FuzzPlan::Cycles(options)) => return other_plan("cycles", |w, alive| fuzzrun::run_cycles(&options, w, alive)),
        Err(error) => {
            println!("dom0: bad command line: {error}");
            println!("fuzz: FAILED reason=bad_option");
            return;
        }
    }
    let mut created = Created::default();
    match run(start, &mut created) {
        Ok(()) => println!("{}", Record::Done),
        Err(failure) => {
            created.destroy_all();
            println!("dom0: {failure}");
            println!(
                "{}",
                Record::Failed {
                    reason: failure.reason()
                }
            );
        }
    }
}

/// Runs the fuzz or cycles plan, reporting as `<prefix>: done ok` or `<prefix>: FAILED`.
#[inline(never)]
fn other_plan(prefix: &str, run: impl FnOnce(Waiter, &mut fuzzrun::Alive) -> Result<(), fuzzrun::RunFailure>) {
    let mut alive = fuzzrun::Alive::default();
    let result = Waiter::new()
        .map_err(|_| fuzzrun::RunFailure::Timer)
        .and_then(|waiter| {
            control::set_sched_params(DomId::DOM0, &plan::DOM0_PARAMS)
                .map_err(|error| fuzzrun::RunFailure::Control { call: "sched_params", domid: DomId::DOM0, error })?;
            run(waiter, &mut alive)
        });
    match result {
        Ok(()) => println!("{prefix}: done ok"),
        Err(failure) => {
            alive.destroy_all();
            println!("dom0: {failure}");
            println!("{prefix}: FAILED reason={}", failure.reason());
        }
    }
}

/// The control calls domain 0 makes, for failure reports.
#[derive(Clone, Copy, Debug)]
enum Call {
    PhysInfo,
    Create,
    DomainInfo,
    SchedParams,
    Unpause,
    Destroy,
}

/// Why the run failed.
#[derive(Clone, Copy, Debug)]
enum Failure {
    Options(OptionError),
    Plan(PlanError),
    Events(EventError),
    Timer(HypercallError),
    /// No boot module 1 to build stress domains from.
    NoStressModule {
        modules: u32,
    },
    Control {
        call: Call,
        domid: DomId,
        error: ControlError,
    },
    /// A created domain did not get the id planned for it.
    UnexpectedDomid {
        index: u32,
        expected: DomId,
        got: DomId,
    },
    /// A stress domain ended (crashed) before domain 0 destroyed it.
    DomainEnded(DomId),
    BalloonTimeout {
        waiting_for: DomId,
        tot_pages: u64,
        expected: u64,
        /// Its `DomainInfo::state` and CPU time then: paused, or never run, or starved.
        state: u32,
        cpu_time_ns: u64,
    },
    NotQuiet,
    DestroyTimeout(DomId),
    /// A domain created paused had run (or was not paused) before domain 0 unpaused it.
    RanWhilePaused(DomId),
    /// The device service could not start or attach a domain (`IO=1`).
    Devices(DevError),
    /// Not every VBD connected in time: how many did.
    IoConnect { connected: usize },
    /// A VBD was cut off or a request answered with an error.
    Io { cut: u64, failed: u64 },
}

impl Failure {
    /// The word for `reason=`.
    fn reason(self) -> &'static str {
        match self {
            Self::Options(_) => "bad_option",
            Self::Plan(_) => "bad_config",
            Self::Events(_) | Self::Timer(_) => "events",
            Self::NoStressModule { .. } => "no_stress_module",
            Self::Control {
                call: Call::PhysInfo,
                ..
            } => "phys_info",
            Self::Control {
                call: Call::Create, ..
            } => "create",
            Self::Control {
                call: Call::DomainInfo | Call::SchedParams,
                ..
            } => "domain_info",
            Self::Control {
                call: Call::Unpause,
                ..
            } => "unpause",
            Self::Control {
                call: Call::Destroy,
                ..
            } => "destroy",
            Self::UnexpectedDomid { .. } => "unexpected_domid",
            Self::DomainEnded(_) => "domain_ended",
            Self::BalloonTimeout { .. } => "balloon_timeout",
            Self::NotQuiet => "not_quiet",
            Self::DestroyTimeout(_) => "destroy_timeout",
            Self::RanWhilePaused(_) => "ran_while_paused",
            Self::Devices(DevError::DiskMemory { .. } | DevError::MappedMemory { .. }) => "io_memory",
            Self::Devices(_) => "io_setup",
            Self::IoConnect { .. } => "io_connect",
            Self::Io { .. } => "io",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Options(error) => write!(f, "bad command line: {error}"),
            Self::Plan(error) => write!(f, "no plan: {error:?}"),
            Self::Events(error) => write!(f, "events: {error:?}"),
            Self::Timer(error) => write!(f, "timer: {error:?}"),
            Self::NoStressModule { modules } => {
                write!(
                    f,
                    "{modules} boot modules: the stress guest must be module 1"
                )
            }
            Self::Control { call, domid, error } => {
                write!(f, "{call:?} (domain {}) failed: {error:?}", domid.0)
            }
            Self::UnexpectedDomid {
                index,
                expected,
                got,
            } => write!(
                f,
                "domain {index} got id {}, {} was planned",
                got.0, expected.0
            ),
            Self::DomainEnded(domid) => write!(f, "domain {} ended by itself", domid.0),
            Self::BalloonTimeout {
                waiting_for,
                tot_pages,
                expected,
                state,
                cpu_time_ns,
            } => write!(
                f,
                "domain {} still holds {tot_pages} pages, {expected} expected (state {state}, cpu time {cpu_time_ns} ns)",
                waiting_for.0
            ),
            Self::NotQuiet => f.write_str("the stress domains did not finish"),
            Self::DestroyTimeout(domid) => write!(f, "domain {} not gone", domid.0),
            Self::RanWhilePaused(domid) => {
                write!(f, "domain {} ran before it was unpaused", domid.0)
            }
            Self::Devices(error) => write!(f, "devices: {error}"),
            Self::IoConnect { connected } => write!(f, "only {connected} VBDs connected"),
            Self::Io { cut, failed } => write!(f, "{cut} VBDs cut off, {failed} requests failed"),
        }
    }
}

/// The stress domains created so far: ids 1 to `count` as planned, and one with an
/// unplanned id, if creation went wrong that way.
#[derive(Default)]
struct Created {
    count: u32,
    stray: Option<DomId>,
}

impl Created {
    /// Destroys every domain created, ignoring errors (after a failure).
    fn destroy_all(&self) {
        for domid in (0..self.count).map(Plan::domid).chain(self.stray) {
            let _ = control::destroy_domain(domid);
        }
    }
}

/// How often domain 0 serves its devices at least while it waits.
const DEVICE_TICK_NS: u64 = 10 * MS;

/// Domain 0's clock and timer: how it waits (serving its devices, if it has them).
#[derive(Clone, Copy)]
struct Waiter {
    clock: Clock,
    timer: Timer,
    devices: Option<&'static RefCell<Devices>>,
}

impl Waiter {
    fn new() -> Result<Self, Failure> {
        let clock = Clock::new().map_err(Failure::Timer)?;
        let events = Events::init().map_err(Failure::Events)?;
        let timer = Timer::bind(events).map_err(Failure::Events)?;
        events.enable();
        Ok(Self { clock, timer, devices: None })
    }

    fn now(self) -> u64 {
        self.clock.now_ns()
    }

    /// Blocks until system time `deadline`; with devices, serves them in rounds until
    /// then, blocking between rounds until a port fires or [`DEVICE_TICK_NS`] passes.
    fn sleep_until(self, deadline: u64) -> Result<(), Failure> {
        let Some(devices) = self.devices else {
            return self
                .timer
                .sleep_until(deadline)
                .map(drop)
                .map_err(Failure::Timer);
        };
        loop {
            let now = self.now();
            if now >= deadline {
                return Ok(());
            }
            let more = devices.borrow_mut().serve();
            if let Some(domid) = devices.borrow().ended() {
                return Err(Failure::DomainEnded(domid));
            }
            if more {
                continue;
            }
            self.timer
                .wait_until(deadline.min(now + DEVICE_TICK_NS), devices::pending)
                .map_err(Failure::Timer)?;
        }
    }

    fn sleep(self, ns: u64) -> Result<(), Failure> {
        self.sleep_until(self.now() + ns)
    }
}

/// A control call's error as a [`Failure`]; `ESRCH` means the domain ended by itself.
fn control_failure(call: Call, domid: DomId) -> impl Fn(ControlError) -> Failure {
    move |error| match error.errno() {
        Some(Errno::Esrch) if !matches!(call, Call::Create | Call::PhysInfo) => {
            Failure::DomainEnded(domid)
        }
        _ => Failure::Control { call, domid, error },
    }
}

// Not inlined into `main`: its frame would be on the stack of every other plan too (the
// attack checks run deep, and domain 0's 32 KiB stack ends at its shared-info page).
#[inline(never)]
fn run(start: &StartInfo, created: &mut Created) -> Result<(), Failure> {
    let mut waiter = Waiter::new()?;
    let result = run_with(start, created, &mut waiter);
    if let (Err(_), Some(devices)) = (&result, waiter.devices) {
        // What the domains printed before the failure, before they are destroyed.
        devices.borrow_mut().drain_consoles();
    }
    result
}

fn run_with(start: &StartInfo, created: &mut Created, waiter: &mut Waiter) -> Result<(), Failure> {
    let options = Options::parse(start.cmd_line()).map_err(Failure::Options)?;
    let machine = control::phys_info().map_err(control_failure(Call::PhysInfo, DomId::DOM0))?;
    if machine.modules <= STRESS_MODULE {
        return Err(Failure::NoStressModule {
            modules: machine.modules,
        });
    }
    let plan = Plan::new(&options, machine.cpus).map_err(Failure::Plan)?;
    control::set_sched_params(DomId::DOM0, &plan::DOM0_PARAMS)
        .map_err(control_failure(Call::SchedParams, DomId::DOM0))?;
    if options.io_kib > 0 {
        let events = Events::init().map_err(Failure::Events)?;
        let service = Devices::new(start, plan.len().into(), options.io_kib, events, waiter.clock).map_err(Failure::Devices)?;
        waiter.devices = Some(alloc::boxed::Box::leak(alloc::boxed::Box::new(RefCell::new(service))));
    }
    let waiter = *waiter;
    print_config(&options, &plan);
    print_memory(MemPhase::Before)?;
    create_all(&plan, &options, waiter, created)?;
    print_memory(MemPhase::Created)?;
    // Each worker's run starts when it has ballooned (between the last unpause and the
    // moment domain 0 sees every domain ballooned: seconds apart at N=1000), or, told by
    // domain 0 (no VBDs) or at `stress-go` (VBDs), when every domain has.
    let mut first_start = start_all(&plan, waiter)?;
    wait_ballooned(&plan, &options, waiter)?;
    let mut last_start = waiter.now();
    print_memory(MemPhase::Ballooned)?;
    if plan.tells() {
        // Every domain has ballooned: the runs start now.
        tell_all(&plan);
        first_start = waiter.now();
        last_start = first_start;
    }
    if let Some(devices) = waiter.devices {
        wait_connected(&plan, devices, waiter)?;
        print_memory(MemPhase::Connected)?;
        // The workers' runs start now (each waits for this after connecting).
        devices.borrow_mut().start_run().map_err(Failure::Devices)?;
        first_start = waiter.now();
        last_start = first_start;
    }
    let run_ns = options.seconds * SECOND;
    let window = HogWindow::measure(&plan, waiter, first_start, last_start, run_ns)?;
    // No worker's run ends before this: only then can quiet mean finished.
    waiter.sleep_until(last_start + run_ns + RUN_MARGIN_NS)?;
    if plan.tells() {
        // Every run is over: the workers may print their reports now.
        tell_all(&plan);
    }
    wait_quiet(&plan, waiter)?;
    if let Some(devices) = waiter.devices {
        // Every worker has printed its records (and is blocked): relay what is left.
        devices.borrow_mut().drain_consoles();
    }
    report_domains(&plan, &window)?;
    if let Some(devices) = waiter.devices {
        let figures = devices.borrow().figures();
        println!("{}", Record::Devices(figures));
        devices.borrow_mut().detach_all();
        println!("{}", Record::Consoles(devices.borrow().consoles()));
        if figures.cut > 0 || figures.failed > 0 {
            return Err(Failure::Io { cut: figures.cut, failed: figures.failed });
        }
    }
    destroy_all(&plan, waiter)?;
    print_memory(MemPhase::Destroyed)
}

/// Waits (serving) until every stress domain's VBD is connected.
fn wait_connected(plan: &Plan, devices: &RefCell<Devices>, waiter: Waiter) -> Result<(), Failure> {
    let deadline = waiter.now() + wait_limit_ns(plan);
    loop {
        let connected = devices.borrow().connected();
        if connected == plan.len() as usize {
            return Ok(());
        }
        if waiter.now() >= deadline {
            return Err(Failure::IoConnect { connected });
        }
        waiter.sleep(POLL_NS)?;
    }
}

fn print_config(options: &Options, plan: &Plan) {
    let c = plan.counts;
    let config = Config {
        n: plan.len(),
        cpus: plan.cpus,
        seconds: options.seconds,
        hogs: c.hogs,
        latency: c.latency,
        pairs: c.pairs,
        periodic: c.periodic,
        idle: c.idle,
        mem_kib: options.mem_kib.into(),
        max_kib: options.max_kib.into(),
        balloon_down: Some(options.balloon_down),
        balloon_up: Some(options.balloon_up),
    };
    println!("{}", Record::Config(config));
}

/// `stress: mem phase=<phase> ...` from the machine's figures now.
fn print_memory(phase: MemPhase) -> Result<(), Failure> {
    let info = control::phys_info().map_err(control_failure(Call::PhysInfo, DomId::DOM0))?;
    let sample = MemSample {
        phase,
        free_kib: info.free_kib,
        heap_bytes: info.heap_bytes,
        domains: info.domains.into(),
    };
    println!("{}", Record::Mem(sample));
    Ok(())
}

/// Creates every planned domain, paused, in order, checking each gets its planned id.
fn create_all(
    plan: &Plan,
    options: &Options,
    waiter: Waiter,
    created: &mut Created,
) -> Result<(), Failure> {
    let mut total_ns = 0;
    for planned in (0..plan.len()).filter_map(|index| plan.domain(index)) {
        let mut cmdline = ArrayString::<160>::new();
        // The longest line (a ping's) is under 100 characters.
        let _ = write!(cmdline, "{}", planned.args);
        let spec = NewDomain {
            module: STRESS_MODULE,
            mem_kib: options.mem_kib,
            max_kib: options.max_kib,
            cpu: Some(planned.cpu),
            pinned: planned.pinned,
            params: planned.params,
            cmdline: cmdline.as_bytes(),
            paused: true,
            max_vcpus: 1,
            cpu_mask: 0,
            hostile: false,
        };
        let before = waiter.now();
        let result = control::create_domain(&spec);
        let ns = waiter.now() - before;
        let domid = result.map_err(control_failure(Call::Create, planned.domid()))?;
        if domid != planned.domid() {
            created.stray = Some(domid);
            return Err(Failure::UnexpectedDomid {
                index: planned.index,
                expected: planned.domid(),
                got: domid,
            });
        }
        created.count = planned.index + 1;
        total_ns += ns;
        if let Some(devices) = waiter.devices {
            devices.borrow_mut().attach(domid).map_err(Failure::Devices)?;
        }
        let creation = Creation {
            index: planned.index,
            domid,
            role: planned.args.task.role(),
            cpu: planned.cpu,
            ns,
        };
        println!("{}", Record::Create(creation));
    }
    println!("{}", Record::CreateTotal { ns: total_ns });
    Ok(())
}

/// Checks that no stress domain has run yet (each was created paused), then unpauses them
/// all in creation order; returns the system time after the last unpause.
fn start_all(plan: &Plan, waiter: Waiter) -> Result<u64, Failure> {
    for domid in (0..plan.len()).map(Plan::domid) {
        let info = control::domain_info(domid).map_err(control_failure(Call::DomainInfo, domid))?;
        if info.state != DOMAIN_PAUSED || info.cpu_time_ns != 0 {
            return Err(Failure::RanWhilePaused(domid));
        }
    }
    for domid in (0..plan.len()).map(Plan::domid) {
        control::unpause_domain(domid).map_err(control_failure(Call::Unpause, domid))?;
    }
    Ok(waiter.now())
}

/// How long domain 0 waits for the domains of `plan` to balloon, or to fall quiet.
fn wait_limit_ns(plan: &Plan) -> u64 {
    WAIT_BASE_NS + WAIT_PER_DOMAIN_NS * u64::from(plan.len())
}

/// Notifies every stress domain's [`protocol::worker::TOLD_PORT`] (bound for the
/// notification, then closed again): the first time its run may start (every domain has
/// ballooned), the second its report may be printed (every run is over). A domain that
/// cannot be told goes on when its own wait runs out.
fn tell_all(plan: &Plan) {
    for domid in (0..plan.len()).map(Plan::domid) {
        if let Ok(port) = guest_rt::evtchn::bind_interdomain(domid, protocol::worker::TOLD_PORT) {
            let _ = guest_rt::evtchn::send(port);
            let _ = guest_rt::evtchn::close(port);
        }
    }
}

/// Waits until every domain holds the pages it should after ballooning.
fn wait_ballooned(plan: &Plan, options: &Options, waiter: Waiter) -> Result<(), Failure> {
    let expected = u64::from(options.mem_kib) / 4 - options.balloon_down + options.balloon_up;
    let deadline = waiter.now() + wait_limit_ns(plan);
    let mut index = 0;
    while index < plan.len() {
        let domid = Plan::domid(index);
        let info = control::domain_info(domid).map_err(control_failure(Call::DomainInfo, domid))?;
        if info.tot_pages == expected {
            index += 1;
        } else if waiter.now() >= deadline {
            return Err(Failure::BalloonTimeout {
                waiting_for: domid,
                tot_pages: info.tot_pages,
                expected,
                state: info.state,
                cpu_time_ns: info.cpu_time_ns,
            });
        } else {
            waiter.sleep(POLL_NS)?;
        }
    }
    Ok(())
}

/// The stress domains' CPU time together, plus (with devices) the VBD requests domain 0
/// has answered and the console bytes it has taken: a domain blocked on a read, or waiting
/// for room in its console ring, takes no CPU time but is not finished.
fn total_cpu_time(plan: &Plan, waiter: Waiter) -> Result<u64, Failure> {
    let mut total = waiter.devices.map_or(0, |d| d.borrow().activity());
    for domid in (0..plan.len()).map(Plan::domid) {
        let info = control::domain_info(domid).map_err(control_failure(Call::DomainInfo, domid))?;
        total = total.wrapping_add(info.cpu_time_ns);
    }
    Ok(total)
}

/// Waits until the stress domains' CPU time stops growing: every worker has reported and
/// blocked for good. With devices, also until every worker's console has relayed its last
/// report (a host stall of one CPU's thread longer than the window stops every domain on
/// it, and must not pass for their end).
fn wait_quiet(plan: &Plan, waiter: Waiter) -> Result<(), Failure> {
    let deadline = waiter.now() + wait_limit_ns(plan);
    let mut last = total_cpu_time(plan, waiter)?;
    loop {
        waiter.sleep(QUIET_WINDOW_NS)?;
        let total = total_cpu_time(plan, waiter)?;
        if total == last && waiter.devices.is_none_or(|d| d.borrow().all_reported()) {
            return Ok(());
        }
        if waiter.now() >= deadline {
            return Err(Failure::NotQuiet);
        }
        last = total;
    }
}

/// The hogs measured in a [`HogWindow`] (the rest report their whole CPU time).
const MAX_WINDOW_HOGS: usize = 256;

/// Each hog's CPU time over a window in which every hog runs: from 10% of the run past the
/// latest start to 90% of it past the earliest (each hog starts once it has ballooned, or
/// at `stress-go` with VBDs). Whole-run times would favour the hog started first, which
/// runs alone until its rival starts and stops first. If the starts are spread over more
/// than 80% of the run the window is empty (every hog 0: reported as a fairness miss).
struct HogWindow {
    hogs: ArrayVec<(DomId, u64), MAX_WINDOW_HOGS>,
}

impl HogWindow {
    fn measure(
        plan: &Plan,
        waiter: Waiter,
        first_start: u64,
        last_start: u64,
        run_ns: u64,
    ) -> Result<Self, Failure> {
        let hogs = (0..plan.len())
            .filter_map(|index| plan.domain(index))
            .filter(|planned| planned.args.task == Task::Hog)
            .map(|planned| planned.domid())
            .take(MAX_WINDOW_HOGS);
        let mut window = Self {
            hogs: hogs.map(|domid| (domid, 0)).collect(),
        };
        let (from, to) = (last_start + run_ns / 10, first_start + run_ns / 10 * 9);
        waiter.sleep_until(from)?;
        window.sample(|at_start, now| *at_start = now)?;
        waiter.sleep_until(to.max(from))?;
        window.sample(|at_start, now| *at_start = now.wrapping_sub(*at_start))?;
        Ok(window)
    }

    fn sample(&mut self, mut record: impl FnMut(&mut u64, u64)) -> Result<(), Failure> {
        for (domid, value) in &mut self.hogs {
            let info =
                control::domain_info(*domid).map_err(control_failure(Call::DomainInfo, *domid))?;
            record(value, info.cpu_time_ns);
        }
        Ok(())
    }

    fn cpu_ns(&self, domid: DomId) -> Option<u64> {
        self.hogs
            .iter()
            .find(|(d, _)| *d == domid)
            .map(|&(_, ns)| ns)
    }
}

/// `stress: domain ...` for every stress domain.
fn report_domains(plan: &Plan, window: &HogWindow) -> Result<(), Failure> {
    for planned in (0..plan.len()).filter_map(|index| plan.domain(index)) {
        let domid = planned.domid();
        let info = control::domain_info(domid).map_err(control_failure(Call::DomainInfo, domid))?;
        let params =
            control::sched_params(domid).map_err(control_failure(Call::SchedParams, domid))?;
        let domain = DomainInfo {
            domid,
            role: planned.args.task.role(),
            weight: params.weight.into(),
            warp: params.warp_ns > 0,
            cpu_time_ns: info.cpu_time_ns,
            tot_pages: info.tot_pages,
            window_cpu_ns: window.cpu_ns(domid),
        };
        println!("{}", Record::Domain(domain));
    }
    Ok(())
}

/// Destroys every stress domain and waits until each is gone.
fn destroy_all(plan: &Plan, waiter: Waiter) -> Result<(), Failure> {
    for domid in (0..plan.len()).map(Plan::domid) {
        control::destroy_domain(domid).map_err(control_failure(Call::Destroy, domid))?;
    }
    let deadline = waiter.now() + DESTROY_TIMEOUT_NS;
    for domid in (0..plan.len()).map(Plan::domid) {
        loop {
            match control::domain_info(domid) {
                Err(error) if error.errno() == Some(Errno::Esrch) => break,
                Err(error) => {
                    return Err(Failure::Control {
                        call: Call::DomainInfo,
                        domid,
                        error,
                    })
                }
                Ok(_) if waiter.now() >= deadline => return Err(Failure::DestroyTimeout(domid)),
                Ok(_) => waiter.sleep(POLL_NS)?,
            }
        }
    }
    Ok(())
}
