//! Domain 0 as an attacker and as a judge of domain lifecycles: with `attack=<name>` on its
//! command line, domain 0 runs that one check instead of the stress plan, through the
//! control interface it alone holds, and powers off ("dom0: attack <name>: ok") or crashes
//! ("dom0: attack <name>: FAILED <why>"). Boot module 1 is the guest the checks create
//! domains from (named per check below).
//!
//! - `huge` ([`huge`]): `CreateDomain` with sizes, lengths, indices and vCPU counts no
//!   hypervisor could honour (a reservation of 4 TiB, a command line of 2^64 bytes...):
//!   each must be refused with an error, and free memory and the heap must read as before.
//!   Module 1: any guest.
//! - `races` ([`race`]): domain 0 on two vCPUs; vCPU 1 keeps destroying the id vCPU 0 is
//!   creating, `races=N` times (or for `seconds=S`); nothing may leak. Module 1: a small
//!   guest (guest-hello).
//! - `share` ([`share`]): a two-vCPU hog and a one-vCPU hog of the same weight on one CPU
//!   must get the same CPU time. Module 1: guest-vcpus.
//! - `held` ([`held`]): what a warped domain's wake-ups cost the other domains of its CPU
//!   (a ticker beside a hog on one CPU, unwarped then warped). Module 1: guest-vcpus.
//! - `timers` ([`timers`]): `domains=N` hogs with a timer armed a century ahead, created
//!   in small groups on one CPU, unpinned, so that the idle CPU steals some, then
//!   destroyed: the heap must come back to what it was. Module 1: guest-vcpus.
//! - `disks` ([`disks`]): every disk module read through `ReadDisk` (hash printed) and
//!   its refusals. Module 1: any guest; disk modules after it.
//! - `blk` ([`blk`]): domain 0 as the block backend on in-memory disks (the disk
//!   modules) for good, hostile and dying frontends. Module 1: guest-blk; disks after it.
//! - `store` ([`store`]): domain 0 runs the store for good and hostile store clients,
//!   introduces and releases them; the hostile ones must be cut off alone. Module 1:
//!   guest-xs.
//! - `devices` (`crate::virtio::review`): domain 0 misusing its own devices (interrupt
//!   storms, closed and re-bound pirq ports, device frames as tables, BAR moves, MSI-X,
//!   the host bridge); needs the virtio disk of the `io-virtio-*` cases.
//!
//! Each check prints what it measured, so that a failure says by how much. This module
//! must never leave a domain it created alive when it reports.

mod blk;
mod disks;
mod held;
mod huge;
mod race;
mod share;
pub(crate) mod store;
mod timers;

use core::fmt;

use guest_rt::abi::control::PhysInfo;
use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::control::{self, ControlError, NewDomain};
use guest_rt::events::Events;
use guest_rt::hypercall::shutdown;
use guest_rt::time::Clock;
use guest_rt::timer::Timer;
use guest_rt::{println, StartInfo};

/// The boot module the checks create domains from.
pub const MODULE: u32 = 1;
const MS: u64 = 1_000_000;

/// The `attack=` value on domain 0's command line, if any.
pub fn requested(cmdline: &[u8]) -> Option<&str> {
    let text = core::str::from_utf8(cmdline).ok()?;
    text.split_ascii_whitespace().find_map(|word| word.strip_prefix("attack="))
}

/// The numeric value of `key=` on the command line.
pub fn option(cmdline: &[u8], key: &str) -> Option<u64> {
    let text = core::str::from_utf8(cmdline).ok()?;
    text.split_ascii_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Why a check failed.
pub enum Failure {
    Setup(&'static str),
    Control(&'static str, ControlError),
    /// Domain records, free memory or the heap did not come back.
    Leak { held: u32, free_kib: (u64, u64), heap_bytes: (u64, u64) },
    /// A request that must be refused was accepted.
    Accepted(&'static str),
    /// A measured figure outside its bounds.
    OutOfBounds(&'static str),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(what) => write!(f, "{what}"),
            Self::Control(call, error) => write!(f, "{call} failed: {error:?}"),
            Self::Leak { held, free_kib, heap_bytes } => write!(
                f,
                "leak: {held} domain records held; free {} KiB before, {} after; heap {} bytes before, {} after",
                free_kib.0, free_kib.1, heap_bytes.0, heap_bytes.1
            ),
            Self::Accepted(what) => write!(f, "{what} was accepted"),
            Self::OutOfBounds(what) => write!(f, "{what}"),
        }
    }
}

/// Domain 0's clock and timer, for the checks' waits.
#[derive(Clone, Copy)]
pub struct Waiter {
    pub clock: Clock,
    timer: Timer,
}

impl Waiter {
    fn new() -> Result<Self, Failure> {
        let clock = Clock::new().map_err(|_| Failure::Setup("no clock"))?;
        let events = Events::init().map_err(|_| Failure::Setup("no events"))?;
        let timer = Timer::bind(events).map_err(|_| Failure::Setup("no timer"))?;
        events.enable();
        Ok(Self { clock, timer })
    }

    pub fn now(self) -> u64 {
        self.clock.now_ns()
    }

    /// Blocks until `done()` holds or system time reaches `deadline_ns`.
    pub fn wait_for(self, deadline_ns: u64, done: impl FnMut() -> bool) -> Result<bool, Failure> {
        self.timer.wait_until(deadline_ns, done).map_err(|_| Failure::Setup("timer refused"))
    }

    pub fn sleep_ms(self, ms: u64) -> Result<(), Failure> {
        let deadline = self.now() + ms * MS;
        self.timer.sleep_until(deadline).map(drop).map_err(|_| Failure::Setup("timer refused"))
    }
}

/// The machine's figures now.
pub fn phys() -> Result<PhysInfo, Failure> {
    control::phys_info().map_err(|e| Failure::Control("GetPhysInfo", e))
}

/// What [`expect_as_before`] compares besides free memory and the domain records (which
/// must always be exactly as before).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Not the heap: the check's domains grew per-CPU tables that need not shrink back.
    FreeMemory,
    /// The heap's bytes in use too, exactly.
    HeapExactly,
    /// The heap's bytes in use too, up to this many more: the per-CPU scheduler tables
    /// (vCPU lists, run and timer queues, inboxes) keep a capacity that depends on how many
    /// vCPUs and timers they held at once, within their shrink policy's hysteresis; this is
    /// less than one leaked domain with its vCPU would cost, and a leaked domain shows in
    /// the records held anyway.
    HeapWithin(u64),
}

/// Waits (up to `timeout_ms`) until domain 0 is the only domain, in the table and in
/// memory, and free memory (and the heap, as `compare` says) reads as in `before`; fails
/// with the figures otherwise.
pub fn expect_as_before(waiter: Waiter, before: &PhysInfo, compare: Compare, timeout_ms: u64) -> Result<PhysInfo, Failure> {
    let deadline = waiter.now() + timeout_ms * MS;
    loop {
        let now = phys()?;
        let heap_same = match compare {
            Compare::FreeMemory => true,
            Compare::HeapExactly => now.heap_bytes == before.heap_bytes,
            Compare::HeapWithin(slack) => now.heap_bytes <= before.heap_bytes + slack,
        };
        let same = now.domains == 1 && now.domains_held == 1 && now.free_kib == before.free_kib && heap_same;
        if same {
            return Ok(now);
        }
        if waiter.now() >= deadline {
            return Err(Failure::Leak {
                held: now.domains_held,
                free_kib: (before.free_kib, now.free_kib),
                heap_bytes: (before.heap_bytes, now.heap_bytes),
            });
        }
        waiter.sleep_ms(20)?;
    }
}

/// The machine's figures once the heap has settled: two reads 50 ms apart agree (vCPUs of
/// destroyed domains leave their CPUs' tables at those CPUs' next decisions, a little after
/// the domains leave the domain table).
pub fn settled(waiter: Waiter) -> Result<PhysInfo, Failure> {
    let mut last = phys()?;
    for _ in 0..40 {
        waiter.sleep_ms(50)?;
        let now = phys()?;
        if now.free_kib == last.free_kib && now.heap_bytes == last.heap_bytes {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Creates a domain as `spec` asks, lets it run `run_ms`, destroys it and waits until it is
/// gone: the warm-up before a check reads the heap, so that tables the hypervisor grows
/// once for good (a CPU's first vCPU, a queue's first timer) are not counted as leaks.
pub fn warm_up(waiter: Waiter, spec: &NewDomain<'_>, run_ms: u64) -> Result<(), Failure> {
    let id = control::create_domain(spec).map_err(|e| Failure::Control("CreateDomain", e))?;
    if spec.paused {
        control::unpause_domain(id).map_err(|e| Failure::Control("UnpauseDomain", e))?;
    }
    waiter.sleep_ms(run_ms)?;
    // It may have ended by itself meanwhile (ESRCH).
    match control::destroy_domain(id) {
        Err(e) if e.errno() != Some(guest_rt::abi::errno::Errno::Esrch) => return Err(Failure::Control("DestroyDomain", e)),
        _ => {}
    }
    let deadline = waiter.now() + 2000 * MS;
    while phys()?.domains > 1 {
        if waiter.now() > deadline {
            return Err(Failure::Setup("the warm-up domain did not go"));
        }
        waiter.sleep_ms(5)?;
    }
    Ok(())
}

/// Runs the check `name` and ends domain 0 with its verdict.
pub fn run(name: &str, start: &StartInfo) -> ! {
    let cmdline = start.cmd_line();
    // `devices` drives the virtio disk, which takes the event channels itself.
    let result = if name == "devices" {
        crate::virtio::review::run(start).map_err(Failure::Setup)
    } else {
        Waiter::new().and_then(|waiter| match name {
            "huge" => huge::run(waiter),
            "disks" => disks::run(waiter),
            "blk" => blk::run(waiter, cmdline),
            "races" => race::run(waiter, cmdline),
            "share" => share::run(waiter, cmdline),
            "held" => held::run(waiter, cmdline),
            "timers" => timers::run(waiter, cmdline),
            "store" => store::run(waiter, cmdline),
            _ => Err(Failure::Setup("unknown attack")),
        })
    };
    match result {
        Ok(()) => {
            println!("dom0: attack {name}: ok");
            shutdown(ShutdownReason::Poweroff)
        }
        Err(failure) => {
            println!("dom0: attack {name}: FAILED {failure}");
            shutdown(ShutdownReason::Crash)
        }
    }
}
