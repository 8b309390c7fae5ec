//! Domain 0's fuzz run and containment cycles ([`guest_dom0::fuzzplan`]): good stress
//! domains that must run through, hostile domains created and destroyed around them, a
//! heartbeat of every other CPU at each look, and the memory check at the end.
//!
//! Lines (read by `tests/fuzz.py`): `fuzz: config ...`, `fuzz: mem phase=before|after
//! free_kib=F heap_bytes=H domains=D`, `fuzz: good domid=D role=R`, `fuzz: spawn index=I
//! domid=D seed=S`, `fuzz: gone domid=D seed=S by=self|destroyed life_ms=L`, `fuzz: status
//! elapsed_ms=E spawned=N ended_self=A destroyed=B heartbeat_max_us=M`, `fuzz: heartbeat
//! max_us=M slowest_cpu=C beats=N`, and last `fuzz: done ok` or `fuzz: FAILED
//! reason=<word>`; the cycles print `cycles: ...` lines of the same kinds and
//! `cycles: done ok cycles=N`. Domain 0 never spins: it sleeps on its timer between looks.
//! This module must never leave a domain it created behind: on failure it destroys all.

use core::fmt::{self, Write};

use arrayvec::{ArrayString, ArrayVec};
use guest_dom0::fuzzplan::{
    cycle_domain, fuzzer_seed, AvoidList, CycleDomain, CycleOptions, FuzzOptions, CYCLE_ATTACKS, FUZZ_MODULE, HOSTILE_MODULE,
    MAX_FUZZERS, MAX_GOOD, STRESS_MODULE,
};
use guest_rt::abi::control::{PhysInfo, SchedParams, DOMAIN_SHUTTING_DOWN};
use guest_rt::abi::errno::Errno;
use guest_rt::abi::ids::DomId;
use guest_rt::control::{self, ControlError, NewDomain};
use guest_rt::{evtchn, println};
use protocol::worker::{Link, StressArgs, Task};

use crate::Waiter;

const MS: u64 = 1_000_000;
/// How often domain 0 looks at its domains during a fuzz run.
const LOOK_NS: u64 = 20 * MS;
/// How often it prints a status line.
const STATUS_NS: u64 = 5_000 * MS;
/// How long a destroyed domain may take to go.
const GONE_TIMEOUT_NS: u64 = 10_000 * MS;
/// The good domains' CPU time must stop growing over this long once their run is over.
const QUIET_NS: u64 = 500 * MS;
/// ... within this long.
const QUIET_TIMEOUT_NS: u64 = 30_000 * MS;
/// How long the records of destroyed domains may take to leave the heap.
const SETTLE_TIMEOUT_NS: u64 = 2_000 * MS;
/// Extra memory a fuzzer may balloon up to, in KiB.
const FUZZ_HEADROOM_KIB: u32 = 512;

/// Why a fuzz run or the cycles failed.
#[derive(Clone, Copy, Debug)]
pub enum RunFailure {
    Control { call: &'static str, domid: DomId, error: ControlError },
    /// A good domain created with another id than planned.
    UnexpectedDomid { expected: DomId, got: DomId },
    /// A good domain ended before domain 0 destroyed it.
    GoodEnded(DomId),
    /// Some CPU took this long to answer the heartbeat.
    Heartbeat { ns: u64, cpu: u32 },
    /// A destroyed domain did not go.
    NotGone(DomId),
    /// The good domains did not finish.
    NotQuiet,
    /// Free memory or the heap differ after everything is gone.
    Leak { free_kib: [u64; 2], heap_bytes: [u64; 2] },
    /// Records of domains that are gone are still in the heap (every domain but domain 0
    /// is gone, and domain 0 has one vCPU).
    RecordsHeld { domains: u32, vcpus: u32 },
    Timer,
}

impl RunFailure {
    /// The word for `reason=`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Control { call, .. } => call,
            Self::UnexpectedDomid { .. } => "unexpected_domid",
            Self::GoodEnded(_) => "good_domain_ended",
            Self::Heartbeat { .. } => "heartbeat",
            Self::NotGone(_) => "destroy_timeout",
            Self::NotQuiet => "not_quiet",
            Self::Leak { .. } => "leak",
            Self::RecordsHeld { .. } => "records_held",
            Self::Timer => "timer",
        }
    }
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Control { call, domid, error } => write!(f, "{call} (domain {}) failed: {error:?}", domid.0),
            Self::UnexpectedDomid { expected, got } => write!(f, "domain {} created, {} planned", got.0, expected.0),
            Self::GoodEnded(domid) => write!(f, "good domain {} ended before it was destroyed", domid.0),
            Self::Heartbeat { ns, cpu } => write!(f, "cpu {cpu} took {} us to answer the heartbeat", ns / 1000),
            Self::NotGone(domid) => write!(f, "domain {} was not gone after its destruction", domid.0),
            Self::NotQuiet => f.write_str("the good domains did not finish"),
            Self::Leak { free_kib, heap_bytes } => write!(
                f,
                "free {} KiB before, {} KiB after; heap {} bytes before, {} after",
                free_kib[0], free_kib[1], heap_bytes[0], heap_bytes[1]
            ),
            Self::RecordsHeld { domains, vcpus } => {
                write!(f, "{domains} domain and {vcpus} vCPU records still in the heap with only domain 0 left")
            }
            Self::Timer => f.write_str("domain 0's timer failed"),
        }
    }
}

fn failed(call: &'static str, domid: DomId) -> impl Fn(ControlError) -> RunFailure {
    move |error| RunFailure::Control { call, domid, error }
}

/// The domains domain 0 created and has not seen go yet: destroyed on failure.
#[derive(Default)]
pub struct Alive {
    domids: ArrayVec<DomId, { (MAX_GOOD + MAX_FUZZERS + 1) as usize }>,
    /// The last id the hypervisor handed out (ids come in sequence: domain 0 is the only
    /// creator).
    last: Option<DomId>,
}

impl Alive {
    fn add(&mut self, domid: DomId) {
        let _ = self.domids.try_push(domid);
        self.last = Some(domid);
    }

    /// The id the next creation should get.
    fn next_id(&self) -> DomId {
        DomId(self.last.map_or(1, |d| d.0 + 1))
    }

    fn remove(&mut self, domid: DomId) {
        self.domids.retain(|d| *d != domid);
    }

    /// Destroys every domain still listed, ignoring errors (after a failure).
    pub fn destroy_all(&mut self) {
        for &domid in &self.domids {
            let _ = control::destroy_domain(domid);
        }
        self.domids.clear();
    }
}

/// The heartbeat's figures over a run.
#[derive(Default)]
struct Beats {
    count: u64,
    max_ns: u64,
    slowest_cpu: u32,
    limit_ns: u64,
}

impl Beats {
    fn new(limit_ms: u64) -> Self {
        Self { limit_ns: limit_ms * MS, ..Self::default() }
    }

    /// One heartbeat; fails when a CPU took longer than the limit.
    fn beat(&mut self) -> Result<(), RunFailure> {
        let beat = control::heartbeat().map_err(failed("heartbeat", DomId::DOM0))?;
        self.count += 1;
        if beat.max_ns > self.max_ns {
            self.max_ns = beat.max_ns;
            self.slowest_cpu = beat.slowest_cpu;
        }
        if beat.max_ns > self.limit_ns {
            return Err(RunFailure::Heartbeat { ns: beat.max_ns, cpu: beat.slowest_cpu });
        }
        Ok(())
    }

    fn print(&self, prefix: &str) {
        println!("{prefix}: heartbeat max_us={} slowest_cpu={} beats={}", self.max_ns / 1000, self.slowest_cpu, self.count);
    }
}

/// The machine's memory once every destroyed domain's records have left the heap (a
/// record goes when the last CPU that held its vCPUs lets go of it); fails when some are
/// still held after [`SETTLE_TIMEOUT_NS`]: held forever, they are a leak.
fn memory(prefix: &str, phase: &str, waiter: Waiter, heap_check: bool) -> Result<PhysInfo, RunFailure> {
    let deadline = waiter.now() + SETTLE_TIMEOUT_NS;
    loop {
        let info = control::phys_info().map_err(failed("phys_info", DomId::DOM0))?;
        let settled = info.domain_records == info.domains && info.vcpu_records == info.domains;
        if settled || waiter.now() >= deadline {
            println!(
                "{prefix}: mem phase={phase} free_kib={} heap_bytes={} domains={} domain_records={} vcpu_records={}",
                info.free_kib, info.heap_bytes, info.domains, info.domain_records, info.vcpu_records
            );
            if !settled && heap_check {
                return Err(RunFailure::RecordsHeld { domains: info.domain_records, vcpus: info.vcpu_records });
            }
            if !settled {
                println!(
                    "{prefix}: records held domains={} vcpus={} (reported, not checked: heap=0)",
                    info.domain_records - info.domains,
                    info.vcpu_records - info.domains
                );
            }
            return Ok(info);
        }
        // Wake every CPU: an idle one lets go of the last vCPU it ran only when it looks
        // at its queue again.
        control::heartbeat().map_err(failed("heartbeat", DomId::DOM0))?;
        waiter.sleep(10 * MS).map_err(|_| RunFailure::Timer)?;
    }
}

/// The good domains: `pairs` ping-pong pairs and `periodic` periodic workers, running for
/// `seconds`, created (paused, then unpaused together) with ids from `first` on.
fn create_good(
    prefix: &str,
    pairs: u32,
    periodic: u32,
    seconds: u64,
    alive: &mut Alive,
) -> Result<ArrayVec<DomId, { MAX_GOOD as usize }>, RunFailure> {
    let first = alive.next_id().0;
    let mut good = ArrayVec::new();
    let count = 2 * pairs + periodic;
    for index in 0..count {
        let domid = DomId(first + index as u16);
        let link = |peer: u32| Link { peer: DomId(first + peer as u16), port: crate::plan::PONG_PORT };
        let task = if index < 2 * pairs {
            if index % 2 == 0 { Task::Ping(link(index + 1)) } else { Task::Pong(link(index - 1)) }
        } else {
            Task::Periodic
        };
        let args = StressArgs { task, domid, seconds, balloon_down: 0, balloon_up: 0, io_kib: 0, told: false };
        let mut cmdline = ArrayString::<160>::new();
        let _ = write!(cmdline, "{args}");
        let spec = NewDomain {
            module: STRESS_MODULE,
            mem_kib: 512,
            max_kib: 512,
            cpu: Some(index % 2),
            pinned: true,
            params: weight(1),
            cmdline: cmdline.as_bytes(),
            paused: true,
            hostile: false,
            max_vcpus: 1,
            cpu_mask: 0,
        };
        let got = control::create_domain(&spec).map_err(failed("create", domid))?;
        alive.add(got);
        if got != domid {
            return Err(RunFailure::UnexpectedDomid { expected: domid, got });
        }
        println!("{prefix}: good domid={} role={}", domid.0, task.name());
        good.push(domid);
    }
    for &domid in &good {
        control::unpause_domain(domid).map_err(failed("unpause", domid))?;
    }
    Ok(good)
}

const fn weight(weight: u32) -> SchedParams {
    SchedParams { weight, _pad: 0, warp_ns: 0, warp_limit_ns: 0, unwarp_req_ns: 0 }
}

/// Domains that prime the hypervisor's lasting structures: run queues, timer queues and
/// the like keep the capacity their busiest moment needed, so that the heap measured after
/// a run would otherwise hold what a run's peak added to them. Hogs, all runnable at once.
const PRIME_DOMAINS: u32 = 16;

/// Runs [`PRIME_DOMAINS`] hogs on every CPU together for a moment, then destroys them.
fn prime(prefix: &str, waiter: Waiter, alive: &mut Alive) -> Result<(), RunFailure> {
    let mut hogs: ArrayVec<DomId, { PRIME_DOMAINS as usize }> = ArrayVec::new();
    for index in 0..PRIME_DOMAINS {
        let domid = alive.next_id();
        let args = StressArgs { task: Task::Hog, domid, seconds: 1, balloon_down: 0, balloon_up: 0, io_kib: 0, told: false };
        let mut cmdline = ArrayString::<160>::new();
        let _ = write!(cmdline, "{args}");
        let spec = NewDomain {
            module: STRESS_MODULE,
            mem_kib: 512,
            max_kib: 512,
            cpu: Some(index % 2),
            pinned: true,
            params: weight(1),
            cmdline: cmdline.as_bytes(),
            paused: false,
            hostile: true,
            max_vcpus: 1,
            cpu_mask: 0,
        };
        let got = control::create_domain(&spec).map_err(failed("create", domid))?;
        alive.add(got);
        hogs.push(got);
    }
    waiter.sleep(300 * MS).map_err(|_| RunFailure::Timer)?;
    for &domid in &hogs {
        destroy_and_wait(domid, waiter, alive)?;
    }
    println!("{prefix}: primed with {PRIME_DOMAINS} hogs");
    Ok(())
}

/// Fails if a good domain has ended.
fn check_good(good: &[DomId]) -> Result<(), RunFailure> {
    for &domid in good {
        match control::domain_info(domid) {
            Ok(info) if info.state != DOMAIN_SHUTTING_DOWN => {}
            Ok(_) => return Err(RunFailure::GoodEnded(domid)),
            Err(error) if error.errno() == Some(Errno::Esrch) => return Err(RunFailure::GoodEnded(domid)),
            Err(error) => return Err(RunFailure::Control { call: "domain_info", domid, error }),
        }
    }
    Ok(())
}

/// Whether `domid` is gone.
fn gone(domid: DomId) -> Result<bool, RunFailure> {
    match control::domain_info(domid) {
        Ok(_) => Ok(false),
        Err(error) if error.errno() == Some(Errno::Esrch) => Ok(true),
        Err(error) => Err(RunFailure::Control { call: "domain_info", domid, error }),
    }
}

/// Destroys `domid` and waits until it is gone.
fn destroy_and_wait(domid: DomId, waiter: Waiter, alive: &mut Alive) -> Result<(), RunFailure> {
    match control::destroy_domain(domid) {
        Ok(()) => {}
        Err(error) if error.errno() == Some(Errno::Esrch) => {}
        Err(error) => return Err(RunFailure::Control { call: "destroy", domid, error }),
    }
    let deadline = waiter.now() + GONE_TIMEOUT_NS;
    while !gone(domid)? {
        if waiter.now() >= deadline {
            return Err(RunFailure::NotGone(domid));
        }
        waiter.sleep(MS).map_err(|_| RunFailure::Timer)?;
    }
    alive.remove(domid);
    Ok(())
}

/// Waits until the good domains' run is over (at `end_ns`) and their CPU time stops
/// growing (they have reported), then destroys them.
fn finish_good(good: &[DomId], end_ns: u64, waiter: Waiter, alive: &mut Alive) -> Result<(), RunFailure> {
    if waiter.now() < end_ns {
        waiter.sleep_until(end_ns).map_err(|_| RunFailure::Timer)?;
    }
    let cpu_time = || -> Result<u64, RunFailure> {
        let mut total = 0u64;
        for &domid in good {
            let info = control::domain_info(domid).map_err(|_| RunFailure::GoodEnded(domid))?;
            total = total.wrapping_add(info.cpu_time_ns);
        }
        Ok(total)
    };
    let deadline = waiter.now() + QUIET_TIMEOUT_NS;
    let mut last = cpu_time()?;
    loop {
        waiter.sleep(QUIET_NS).map_err(|_| RunFailure::Timer)?;
        let now = cpu_time()?;
        if now == last {
            break;
        }
        if waiter.now() >= deadline {
            return Err(RunFailure::NotQuiet);
        }
        last = now;
    }
    for &domid in good {
        destroy_and_wait(domid, waiter, alive)?;
    }
    Ok(())
}

/// Compares the machine's memory now with `before`.
fn check_memory(prefix: &str, before: PhysInfo, waiter: Waiter, heap_check: bool) -> Result<(), RunFailure> {
    let after = memory(prefix, "after", waiter, heap_check)?;
    let leaked = before.free_kib.saturating_sub(after.free_kib) / 4;
    println!(
        "{prefix}: leak frames={leaked} free_delta_kib={} heap_delta_bytes={}",
        after.free_kib as i64 - before.free_kib as i64,
        after.heap_bytes as i64 - before.heap_bytes as i64
    );
    if after.free_kib != before.free_kib || (heap_check && after.heap_bytes != before.heap_bytes) {
        return Err(RunFailure::Leak {
            free_kib: [before.free_kib, after.free_kib],
            heap_bytes: [before.heap_bytes, after.heap_bytes],
        });
    }
    Ok(())
}

/// A fuzzer domain's command line.
fn fuzzer_line(seed: u64, avoid: &AvoidList) -> ArrayString<200> {
    let mut line = ArrayString::new();
    let _ = write!(line, "seed={seed}");
    if !avoid.is_empty() {
        let _ = write!(line, " {avoid}");
    }
    line
}

/// Creates a hostile domain (a fuzzer when `module` is the fuzzer's) running `cmdline`,
/// placed by the hypervisor, or kept on CPU `pin` (each of its vCPUs where it starts).
fn spawn(module: u32, mem_kib: u32, cmdline: &[u8], paused: bool, pin: Option<u32>) -> Result<DomId, RunFailure> {
    let spec = NewDomain {
        module,
        mem_kib,
        max_kib: mem_kib + FUZZ_HEADROOM_KIB,
        cpu: pin,
        pinned: pin.is_some(),
        params: weight(1),
        cmdline,
        paused,
        hostile: true,
        // Fuzzers run two vCPUs, hostile guests at most two.
        max_vcpus: 2,
        cpu_mask: 0,
    };
    control::create_domain(&spec).map_err(failed("create", DomId::DOM0))
}

/// One fuzzer domain alive.
#[derive(Clone, Copy)]
struct Fuzzer {
    domid: DomId,
    seed: u64,
    born_ns: u64,
}

/// What a fuzz phase did.
#[derive(Default)]
struct Counts {
    spawned: u64,
    ended_self: u64,
    destroyed: u64,
}

/// The fuzz run: a warm-up phase of one second (so that the heap's lasting structures,
/// such as the run queues, reach the size the run needs before it is measured), the
/// memory figures, the run itself, and the memory figures again.
pub fn run_fuzz(options: &FuzzOptions, waiter: Waiter, alive: &mut Alive) -> Result<(), RunFailure> {
    println!(
        "fuzz: config seconds={} seed={} fuzzers={} life_ms={} mem_kib={} pairs={} periodic={} avoid={} replay={}",
        options.seconds,
        options.seed,
        options.fuzzers,
        options.life_ms,
        options.mem_kib,
        options.pairs,
        options.periodic,
        if options.avoid.is_empty() { "none" } else { options.avoid.as_str() },
        options.replay.map_or(-1, |r| r as i64)
    );
    let mut beats = Beats::new(options.heartbeat_ms);
    let mut counts = Counts::default();
    println!("fuzz: phase warm_up seconds=1");
    fuzz_phase(options, 1, waiter, alive, &mut beats, &mut counts)?;
    prime("fuzz", waiter, alive)?;
    let before = memory("fuzz", "before", waiter, options.heap_check)?;
    println!("fuzz: phase run seconds={}", options.seconds);
    fuzz_phase(options, options.seconds, waiter, alive, &mut beats, &mut counts)?;
    beats.print("fuzz");
    check_memory("fuzz", before, waiter, options.heap_check)
}

/// Good domains and fuzzer domains for `seconds`, then everything destroyed.
fn fuzz_phase(
    options: &FuzzOptions,
    seconds: u64,
    waiter: Waiter,
    alive: &mut Alive,
    beats: &mut Beats,
    counts: &mut Counts,
) -> Result<(), RunFailure> {
    let good = create_good("fuzz", options.pairs, options.periodic, seconds, alive)?;
    let started = waiter.now();
    let end = started + seconds * 1000 * MS;
    let mut fuzzers: [Option<Fuzzer>; MAX_FUZZERS as usize] = [None; MAX_FUZZERS as usize];
    let mut next_status = started + STATUS_NS;
    while waiter.now() < end {
        for slot in fuzzers.iter_mut().take(options.fuzzers as usize) {
            let now = waiter.now();
            match *slot {
                None => {
                    let seed = options.replay.unwrap_or_else(|| fuzzer_seed(options.seed, counts.spawned));
                    let line = fuzzer_line(seed, &options.avoid);
                    let pin = options.pin.then_some((counts.spawned % 2) as u32);
                    let domid = spawn(FUZZ_MODULE, options.mem_kib, line.as_bytes(), false, pin)?;
                    alive.add(domid);
                    println!("fuzz: spawn index={} domid={} seed={seed}", counts.spawned, domid.0);
                    counts.spawned += 1;
                    *slot = Some(Fuzzer { domid, seed, born_ns: now });
                }
                Some(fuzzer) => {
                    let life_ms = (now - fuzzer.born_ns) / MS;
                    if gone(fuzzer.domid)? {
                        counts.ended_self += 1;
                        println!("fuzz: gone domid={} seed={} by=self life_ms={life_ms}", fuzzer.domid.0, fuzzer.seed);
                        alive.remove(fuzzer.domid);
                        *slot = None;
                    } else if life_ms >= options.life_ms {
                        destroy_and_wait(fuzzer.domid, waiter, alive)?;
                        counts.destroyed += 1;
                        println!("fuzz: gone domid={} seed={} by=destroyed life_ms={life_ms}", fuzzer.domid.0, fuzzer.seed);
                        *slot = None;
                    }
                }
            }
        }
        check_good(&good)?;
        beats.beat()?;
        if waiter.now() >= next_status {
            next_status += STATUS_NS;
            status(waiter.now() - started, counts, beats);
        }
        waiter.sleep(LOOK_NS).map_err(|_| RunFailure::Timer)?;
    }
    for fuzzer in fuzzers.iter().flatten() {
        let life_ms = (waiter.now() - fuzzer.born_ns) / MS;
        let by = if gone(fuzzer.domid)? { "self" } else { "destroyed" };
        destroy_and_wait(fuzzer.domid, waiter, alive)?;
        if by == "self" {
            counts.ended_self += 1;
        } else {
            counts.destroyed += 1;
        }
        println!("fuzz: gone domid={} seed={} by={by} life_ms={life_ms}", fuzzer.domid.0, fuzzer.seed);
    }
    status(waiter.now() - started, counts, beats);
    check_good(&good)?;
    finish_good(&good, end, waiter, alive)
}

fn status(elapsed_ns: u64, counts: &Counts, beats: &Beats) {
    println!(
        "fuzz: status elapsed_ms={} spawned={} ended_self={} destroyed={} heartbeat_max_us={}",
        elapsed_ns / MS,
        counts.spawned,
        counts.ended_self,
        counts.destroyed,
        beats.max_ns / 1000
    );
}

/// The containment cycles.
pub fn run_cycles(options: &CycleOptions, waiter: Waiter, alive: &mut Alive) -> Result<(), RunFailure> {
    println!(
        "cycles: config cycles={} life_ms={} seed={} mem_kib={} pairs={} periodic={} avoid={}",
        options.cycles,
        options.life_ms,
        options.seed,
        options.mem_kib,
        options.pairs,
        options.periodic,
        if options.avoid.is_empty() { "none" } else { options.avoid.as_str() }
    );
    let mut beats = Beats::new(options.heartbeat_ms);
    // A warm-up of one cycle of each kind, so that the heap's lasting structures (the run
    // queues...) reach their size before the heap is measured.
    println!("cycles: phase warm_up cycles={}", CYCLE_ATTACKS.len());
    cycle_phase(options, 0, CYCLE_ATTACKS.len() as u64, waiter, alive, &mut beats)?;
    prime("cycles", waiter, alive)?;
    let before = memory("cycles", "before", waiter, options.heap_check)?;
    println!("cycles: phase run cycles={}", options.cycles);
    cycle_phase(options, CYCLE_ATTACKS.len() as u64, options.cycles, waiter, alive, &mut beats)?;
    beats.print("cycles");
    check_memory("cycles", before, waiter, options.heap_check)?;
    println!("cycles: done ok cycles={}", options.cycles);
    Ok(())
}

/// Cycles `first..first + count` beside the good domains, then the good domains destroyed.
fn cycle_phase(
    options: &CycleOptions,
    first: u64,
    count: u64,
    waiter: Waiter,
    alive: &mut Alive,
    beats: &mut Beats,
) -> Result<(), RunFailure> {
    // The good domains run for as long as the cycles may take (they report at the end of
    // their seconds; domain 0 destroys them after the cycles).
    let seconds = (count * (options.life_ms + 50) / 1000 + 2).min(3600);
    let good = create_good("cycles", options.pairs, options.periodic, seconds, alive)?;
    let started = waiter.now();
    let (mut ended_self, mut destroyed) = (0u64, 0u64);
    for index in first..first + count {
        let kind = cycle_domain(index);
        let mut line = ArrayString::<200>::new();
        let module = match kind {
            CycleDomain::Hostile(args) => {
                let _ = write!(line, "{args}");
                HOSTILE_MODULE
            }
            CycleDomain::Fuzzer => {
                line = fuzzer_line(fuzzer_seed(options.seed, index), &options.avoid);
                FUZZ_MODULE
            }
        };
        let domid = spawn(module, options.mem_kib, line.as_bytes(), true, options.pin.then_some((index % 2) as u32))?;
        alive.add(domid);
        // A flood of domain 0: a port of domain 0's for the attacker to bind and send on.
        let flood_port = if line.as_str() == "attack=flood_dom0" {
            Some(evtchn::alloc_unbound(domid).map_err(|e| RunFailure::Control { call: "alloc_unbound", domid, error: ControlError::Call(e) })?)
        } else {
            None
        };
        control::unpause_domain(domid).map_err(failed("unpause", domid))?;
        let born = waiter.now();
        loop {
            if gone(domid)? {
                ended_self += 1;
                alive.remove(domid);
                break;
            }
            if waiter.now() - born >= options.life_ms * MS {
                destroy_and_wait(domid, waiter, alive)?;
                destroyed += 1;
                break;
            }
            waiter.sleep(5 * MS).map_err(|_| RunFailure::Timer)?;
        }
        if let Some(port) = flood_port {
            let _ = evtchn::close(port);
        }
        check_good(&good)?;
        beats.beat()?;
        let done = index + 1 - first;
        if done.is_multiple_of(100) || done == count {
            println!(
                "cycles: status done={done} ended_self={ended_self} destroyed={destroyed} elapsed_ms={} heartbeat_max_us={}",
                (waiter.now() - started) / MS,
                beats.max_ns / 1000
            );
        }
    }
    finish_good(&good, started + seconds * 1000 * MS, waiter, alive)
}
