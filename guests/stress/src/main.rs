//! guest-stress: the worker domain of the stress run (boot module 1). Domain 0 creates
//! many of these with command lines saying what each does ([`StressArgs`], the `protocol`
//! crate's, as are its histogram and every record it prints); each
//! balloons its reservation down and back up, runs its role for the given seconds of
//! system time, reports on the console as `stress/PROTOCOL.md` says, and then waits,
//! blocked, for domain 0 to destroy it (it never ends itself, so that domain 0 can read
//! its final counters first). Anything that fails is reported as
//! `stress: error domid=D what=<word>`, after which it waits likewise.
//!
//! Roles: `periodic`/`latency` re-arm a 1 ms one-shot timer at each wake-up and record
//! the lateness of each; `idle` does the same with a 100 ms timer; `hog` spins; `pong`
//! allocates port 2 (its first free one, after the console ring's) for its peer and
//! answers each event on it from its event handler; `ping` binds to it and every 1 ms sends an event and times the answer. It must never spin while waiting: it blocks.
//!
//! With `io_kib=` (`make stress IO=1`) it also connects to its VBD after ballooning
//! ([`io`]; pong allocates its pair's port first, so that the port is still the one domain
//! 0 told ping), waits until domain 0 says every VBD is connected (its role's run starts
//! then), reads the whole disk at once (every domain but the hogs at the same time; a hog
//! after its run, outside its fairness window), then the timer roles read a page every
//! 100 ms of their run (idle at each wake-up, periodic and latency at every 100th), and it
//! reports `io` and `iohist` records after its others. Its lines then go into its console
//! ring, which domain 0 relays ([`console`]).

#![no_std]
#![no_main]

extern crate alloc;

#[macro_use]
mod console;
mod io;

use core::fmt;
use core::hint::black_box;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::ids::EvtchnPort;
use guest_rt::events::Events;
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::time::Clock;
use guest_rt::timer::{self, Timer};
use guest_rt::{balloon, evtchn, StartInfo};
use protocol::histogram::Histogram;
use protocol::record::{self, Balloon, GuestError, Outcome as Reported, Record, WorkerResult};
use protocol::worker::{Link, StressArgs, Task, TOLD_PORT};
use protocol::{DomId, Role};

guest_rt::entry!(main);

/// The timer period of periodic and latency workers, and ping's sending period.
const PERIOD_NS: u64 = 1_000_000;
/// The timer period of idle workers.
const IDLE_PERIOD_NS: u64 = 100_000_000;
/// How long ping waits for an answer before counting it lost.
const ANSWER_TIMEOUT_NS: u64 = 100_000_000;
/// Hog loops between two looks at the clock.
const HOG_CHECK_EVERY: u64 = 1 << 16;
const NS_PER_SECOND: u64 = 1_000_000_000;
/// With `told=1`, the longest a worker waits for each of domain 0's words (go, report)
/// before it goes on anyway.
const TOLD_WAIT_NS: u64 = 60 * NS_PER_SECOND;

/// Domain 0's notifications on [`TOLD_PORT`] so far: 1, every domain has ballooned (the run
/// starts); 2, every run is over (the report may be printed).
static TOLD: AtomicU32 = AtomicU32::new(0);

/// Events answered (pong) or answers received (ping).
static ANSWERS: AtomicU64 = AtomicU64::new(0);
/// System time at the upcall of ping's last answer.
static ANSWERED_AT_NS: AtomicU64 = AtomicU64::new(0);

fn main(start: &'static StartInfo) {
    let args = match StressArgs::parse(start.cmd_line()) {
        Ok(args) => args,
        Err(error) => {
            say!("stress-guest: bad command line: {error}");
            say!("{}", Record::Error(GuestError { domid: DomId(0), what: "options" }));
            wait_for_destruction()
        }
    };
    if args.io_kib > 0 {
        // Domain 0 serves this domain's devices: its console too.
        console::use_ring();
    }
    if let Err(failure) = run(&args) {
        say!("stress-guest: {failure}");
        say!(
            "{}",
            Record::Error(GuestError {
                domid: args.domid,
                what: failure.what()
            })
        );
    }
    // The timer may still be armed after a failure; an expiry would only wake us.
    let _ = timer::cancel();
    wait_for_destruction()
}

/// Where a worker failed.
#[derive(Clone, Copy, Debug)]
enum Failure {
    SharedInfo(HypercallError),
    BalloonDown(balloon::BalloonError),
    BalloonUp(balloon::BalloonError),
    Reservation(HypercallError),
    Events(guest_rt::events::EventError),
    Timer(HypercallError),
    /// pong's allocated port is not the one domain 0 told ping.
    Port {
        expected: EvtchnPort,
        got: EvtchnPort,
    },
    Channel(HypercallError),
    /// ping could not bind to pong's port within the run.
    Bind(HypercallError),
    Send(HypercallError),
    /// The timer fired before its deadline this many times.
    EarlyTimer(u64),
    /// The VBD could not be set up.
    Io(io::IoError),
}

impl Failure {
    /// The word for `what=`.
    fn what(self) -> &'static str {
        match self {
            Self::SharedInfo(_) => "shared_info",
            Self::BalloonDown(_) => "balloon_down",
            Self::BalloonUp(_) => "balloon_up",
            Self::Reservation(_) => "reservation",
            Self::Events(_) => "events",
            Self::Timer(_) => "timer",
            Self::Port { .. } => "port",
            Self::Channel(_) => "channel",
            Self::Bind(_) => "bind",
            Self::Send(_) => "send",
            Self::EarlyTimer(_) => "early_timer",
            Self::Io(_) => "io",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Port { expected, got } => {
                write!(
                    f,
                    "allocated port {}, domain 0 expected {}",
                    got.0, expected.0
                )
            }
            Self::SharedInfo(e)
            | Self::Reservation(e)
            | Self::Timer(e)
            | Self::Channel(e)
            | Self::Bind(e)
            | Self::Send(e) => write!(f, "{}: {e:?}", self.what()),
            Self::BalloonDown(e) | Self::BalloonUp(e) => write!(f, "{}: {e:?}", self.what()),
            Self::Events(e) => write!(f, "{}: {e:?}", self.what()),
            Self::EarlyTimer(n) => write!(f, "the timer fired before its deadline {n} times"),
            Self::Io(e) => write!(f, "io: {e:?}"),
        }
    }
}

/// What a role measured.
enum Outcome {
    Hog { loops: u64 },
    Timer(Histogram),
    Ping { hist: Histogram, lost: u64 },
    Pong { answers: u64 },
}

/// Balloons, runs the role, then reports both. The console stays quiet while the role
/// runs: a console write holds the CPU in the hypervisor, which would show up in the other
/// domains' figures.
fn run(args: &StressArgs) -> Result<(), Failure> {
    let clock = Clock::new().map_err(Failure::SharedInfo)?;
    // Listening from the start: domain 0's word cannot come before it is awaited unnoticed.
    let told = if args.told { Some(listen_to_domain_0()?) } else { None };
    let pages = balloon_step(args)?;
    let domid = args.domid;
    let role = args.task.role();
    // Pong's port first: the VBD's port comes after it.
    let pong_port = match args.task {
        Task::Pong(link) => Some(alloc_pong_port(link)?),
        _ => None,
    };
    // With a VBD the run starts when domain 0 says every VBD is connected.
    let mut disk = if args.io_kib > 0 {
        Some(io::Disk::connect(guest_rt::start_info(), domid, clock).map_err(Failure::Io)?)
    } else {
        None
    };
    if let Some(events) = told {
        // The run starts once every domain has ballooned.
        wait_told(events, clock, 1);
    }
    let end = clock.now_ns() + args.seconds * NS_PER_SECOND;
    if args.task != Task::Hog {
        if let Some(disk) = disk.as_mut() {
            disk.read_all();
        }
    }
    let outcome = match args.task {
        Task::Hog => {
            let loops = hog(clock, end);
            if let Some(disk) = disk.as_mut() {
                disk.read_all();
            }
            Outcome::Hog { loops }
        }
        Task::Idle | Task::Periodic | Task::Latency => {
            let period = match args.task {
                Task::Idle => IDLE_PERIOD_NS,
                _ => PERIOD_NS,
            };
            let (_, timer) = timer_events()?;
            // A read every 100 ms: each idle wake-up, every 100th of the others.
            let every = match args.task {
                Task::Idle => 1,
                _ => 100,
            };
            // Runs started together (told) put their first deadlines apart.
            let phase = if args.told { phase(domid, period) } else { 0 };
            Outcome::Timer(periodic(timer, clock, end, period, phase, disk.as_mut().map(|d| (d, every)))?)
        }
        Task::Ping(link) => {
            let (hist, lost) = ping(link, clock, end)?;
            Outcome::Ping { hist, lost }
        }
        Task::Pong(_) => Outcome::Pong {
            answers: pong(pong_port.ok_or(Failure::Port { expected: EvtchnPort(0), got: EvtchnPort(0) })?, end)?,
        },
    };
    if let Some(events) = told {
        // The report once every run is over.
        wait_told(events, clock, 2);
    }
    let balloon = Balloon {
        domid,
        down_pages: args.balloon_down,
        up_pages: args.balloon_up,
        tot_pages: pages,
    };
    say!("{}", Record::Balloon(balloon));
    let result = |outcome| Record::Result(WorkerResult { domid, role, outcome });
    match outcome {
        Outcome::Hog { loops } => say!("{}", result(Reported::Hog { loops })),
        Outcome::Timer(hist) => report_hist(domid, role, &hist, None),
        Outcome::Ping { hist, lost } => report_hist(domid, role, &hist, Some(lost)),
        Outcome::Pong { answers } => say!("{}", result(Reported::Pong { answers })),
    }
    if let Some(disk) = disk {
        disk.report(role);
    }
    Ok(())
}

/// Gives back `balloon_down` pages, takes `balloon_up` back; returns the reservation.
fn balloon_step(args: &StressArgs) -> Result<u64, Failure> {
    // SAFETY: this guest uses only its image and the runtime's stacks (no allocator), and
    // holds no slice of the P2M list.
    unsafe { balloon::balloon_down(args.balloon_down) }.map_err(Failure::BalloonDown)?;
    // SAFETY: as above.
    unsafe { balloon::balloon_up(args.balloon_up) }.map_err(Failure::BalloonUp)?;
    balloon::current_reservation().map_err(Failure::Reservation)
}

/// The `result` record (with ping's lost answers) and the histogram's `hist` records.
fn report_hist(domid: DomId, role: Role, hist: &Histogram, lost: Option<u64>) {
    let outcome = Reported::Measured {
        samples: hist.samples(),
        max_ns: hist.max(),
        lost,
    };
    say!("{}", Record::Result(WorkerResult { domid, role, outcome }));
    record::hist_lines(domid, role, hist, |line| say!("{line}"));
}

/// With `told=1`: event delivery on, [`TOLD_PORT`] handled (domain 0 notifies it once
/// every domain has ballooned and once every run is over).
fn listen_to_domain_0() -> Result<Events, Failure> {
    fn told(_port: EvtchnPort) {
        TOLD.fetch_add(1, Ordering::AcqRel);
    }
    let events = Events::init().map_err(Failure::Events)?;
    events.set_handler(TOLD_PORT, told).map_err(Failure::Events)?;
    let _ = evtchn::unmask(TOLD_PORT);
    events.enable();
    Ok(events)
}

/// Waits, blocked, until domain 0 has notified [`TOLD_PORT`] `count` times (at most
/// [`TOLD_WAIT_NS`]). Started each as it had ballooned, runs began while the other domains
/// still booted and ballooned (their start-ups went first) and ended seconds apart, each
/// report (4 ms of CPU under TCG) landing in the runs of those that started later.
fn wait_told(events: Events, clock: Clock, count: u32) {
    let deadline = clock.now_ns() + TOLD_WAIT_NS;
    while TOLD.load(Ordering::Acquire) < count && clock.now_ns() < deadline {
        // Returns once the port is pending (its handler then runs) or at the deadline.
        let _ = events.poll(&[TOLD_PORT], deadline);
    }
}

/// Where in its `period` a worker's first deadline falls, after `period`, when every run
/// starts together (`told=1`): spread by domain id (Fibonacci hashing), so that timers that
/// start together do not fall due together (976 idle domains at once, every 100 ms).
fn phase(domid: DomId, period: u64) -> u64 {
    let spread = u64::from(domid.0).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (spread * (period & 0xFFFF_FFFF)) >> 32
}

/// Event delivery with the timer bound, events on.
fn timer_events() -> Result<(Events, Timer), Failure> {
    let events = Events::init().map_err(Failure::Events)?;
    let timer = Timer::bind(events).map_err(Failure::Events)?;
    events.enable();
    Ok((events, timer))
}

/// Spins until system time `end`; returns the loops done.
fn hog(clock: Clock, end: u64) -> u64 {
    let mut loops = 0u64;
    loop {
        for _ in 0..HOG_CHECK_EVERY {
            loops = black_box(loops) + 1;
        }
        if clock.now_ns() >= end {
            return loops;
        }
    }
}

/// Sleeps `period` ns at a time until `end`, recording how late each wake-up was. The
/// timer is this domain's only one and every deadline is waited out, so an expiry before
/// its deadline is the hypervisor's error (as those of warping domains, whose vCPUs are
/// switched in ahead of their deadlines, would show).
fn periodic(
    timer: Timer,
    clock: Clock,
    end: u64,
    period: u64,
    phase: u64,
    mut disk: Option<(&mut io::Disk, u64)>,
) -> Result<Histogram, Failure> {
    let mut hist = Histogram::new();
    let mut wakeups = 0u64;
    let mut first = true;
    loop {
        let now = clock.now_ns();
        if now >= end {
            return match timer.early_expiries() {
                0 => Ok(hist),
                early => Err(Failure::EarlyTimer(early)),
            };
        }
        let deadline = now + period + if core::mem::take(&mut first) { phase } else { 0 };
        let woke = timer.sleep_until(deadline).map_err(Failure::Timer)?;
        hist.record(woke.saturating_sub(deadline));
        wakeups += 1;
        if let Some((disk, every)) = disk.as_mut() {
            if wakeups.is_multiple_of(*every) {
                disk.read_one();
            }
        }
    }
}

/// Allocates the pair's port (it must be this domain's first, so that domain 0 could tell
/// ping) and answers events on it from then on.
fn alloc_pong_port(link: Link) -> Result<EvtchnPort, Failure> {
    let port = evtchn::alloc_unbound(link.peer).map_err(Failure::Channel)?;
    if port != link.port {
        return Err(Failure::Port {
            expected: link.port,
            got: port,
        });
    }
    let events = Events::init().map_err(Failure::Events)?;
    events.set_handler(port, answer).map_err(Failure::Events)?;
    events.enable();
    Ok(port)
}

/// Answers every event on the pair's `port` until `end`; returns how many.
fn pong(_port: EvtchnPort, end: u64) -> Result<u64, Failure> {
    let events = Events::init().map_err(Failure::Events)?;
    let timer = Timer::bind(events).map_err(Failure::Events)?;
    events.enable();
    timer.sleep_until(end).map_err(Failure::Timer)?;
    Ok(ANSWERS.load(Ordering::Acquire))
}

/// pong's handler: answers at once, from the callback.
fn answer(port: EvtchnPort) {
    if evtchn::send(port).is_ok() {
        ANSWERS.fetch_add(1, Ordering::AcqRel);
    }
}

/// ping's handler: notes when the answer came.
fn answered(_port: EvtchnPort) {
    let now = Clock::mapped().map_or(0, Clock::now_ns);
    ANSWERED_AT_NS.store(now, Ordering::Release);
    ANSWERS.fetch_add(1, Ordering::AcqRel);
}

/// Binds to pong's port, then every 1 ms until `end` sends an event and times the
/// answer; returns the round trips and how many answers did not come within
/// [`ANSWER_TIMEOUT_NS`].
fn ping(link: Link, clock: Clock, end: u64) -> Result<(Histogram, u64), Failure> {
    let (events, timer) = timer_events()?;
    let port = bind_to_pong(link, clock, end)?;
    events
        .set_handler(port, answered)
        .map_err(Failure::Events)?;
    let mut hist = Histogram::new();
    let mut lost = 0;
    let mut next = clock.now_ns();
    while next < end {
        timer.sleep_until(next).map_err(Failure::Timer)?;
        let answers = ANSWERS.load(Ordering::Acquire);
        let sent_at = clock.now_ns();
        evtchn::send(port).map_err(Failure::Send)?;
        let answered = timer
            .wait_until(sent_at + ANSWER_TIMEOUT_NS, || {
                ANSWERS.load(Ordering::Acquire) != answers
            })
            .map_err(Failure::Timer)?;
        if answered {
            hist.record(
                ANSWERED_AT_NS
                    .load(Ordering::Acquire)
                    .saturating_sub(sent_at),
            );
        } else {
            lost += 1;
        }
        next = sent_at + PERIOD_NS;
    }
    Ok((hist, lost))
}

/// Binds to pong's port, retrying (yielding in between) until pong has allocated it or
/// system time reaches `end`.
fn bind_to_pong(link: Link, clock: Clock, end: u64) -> Result<EvtchnPort, Failure> {
    loop {
        match evtchn::bind_interdomain(link.peer, link.port) {
            Ok(port) => return Ok(port),
            Err(error) if clock.now_ns() >= end => return Err(Failure::Bind(error)),
            Err(_) => {
                let _ = hypercall::sched_yield();
            }
        }
    }
}

/// Blocks until domain 0 destroys this domain. Events that still arrive (a late ping)
/// are handled, if handlers were set up, and the domain blocks again.
fn wait_for_destruction() -> ! {
    loop {
        let _ = hypercall::sched_block();
    }
}
