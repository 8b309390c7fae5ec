//! The run as a whole once domains exist: what each boot domain is expected to end with,
//! and — when the last one is gone — the per-domain report, the leak check and power-off.
//!
//! Under QEMU the exit status says whether every domain ended as expected (a hostile test
//! guest is expected to be killed) and no frame leaked: 33 yes, 35 no; or, with `exit=guest`
//! (a guest run by hand), how the boot domains ended (`hypervisor::exitstatus`), 35 still
//! meaning that memory leaked. Domains domain 0 creates as hostile (fuzzers, attacks) may
//! end any way: their endings are counted (`domains.hostile_*`), not judged.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use hypervisor::cmdline::ExitStatus;
use hypervisor::exitstatus::{guest_status, GuestEnd};

use log::{error, info};
use mm::frame::DomainId;
use spin::Mutex;

use crate::arch::exit::{exit, Outcome};
use crate::domain::{self, Ending};
use crate::memory;

static FREE_BEFORE: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicUsize = AtomicUsize::new(0);
/// Boot domains that could not be built.
static NOT_STARTED: AtomicUsize = AtomicUsize::new(0);
/// `exit=guest`: the exit status tells how the boot domains ended.
static GUEST_STATUS: AtomicBool = AtomicBool::new(false);
/// Every boot domain has been built (until then an empty domain table is not the end).
static BUILT_ALL: AtomicBool = AtomicBool::new(false);
static EXPECTED: Mutex<Vec<(DomainId, Ending)>> = Mutex::new(Vec::new());
/// The end of the run has begun (the last two domains can die on two CPUs at once).
static FINISHING: AtomicBool = AtomicBool::new(false);

/// Remembers free memory before the first domain is built (with the heap trimmed, as at
/// the end, so that boot-time heap slack does not count either way).
pub fn record_free_before() {
    memory::compact_heap();
    FREE_BEFORE.store(memory::free_bytes(), Ordering::Relaxed);
}

/// Whether `id` is a boot domain (one [`started`] recorded).
pub fn is_boot_domain(id: DomainId) -> bool {
    EXPECTED.lock().iter().any(|(e, _)| *e == id)
}

/// Sets what the exit status reports (the `exit=` option).
pub fn set_exit_status(status: ExitStatus) {
    GUEST_STATUS.store(status == ExitStatus::Guest, Ordering::Relaxed);
}

/// Records a boot domain that could not be built (its module or image refused, too little
/// memory): the run may still pass, but a hand-run guest's status says so.
pub fn not_started() {
    NOT_STARTED.fetch_add(1, Ordering::AcqRel);
}

/// Records a started boot domain and how it should end.
pub fn started(id: DomainId, expected: Ending) {
    EXPECTED.lock().push((id, expected));
    STARTED.fetch_add(1, Ordering::AcqRel);
}

/// All boot domains are built (`started` of them run).
pub fn boot_domains_built(started: usize) {
    BUILT_ALL.store(true, Ordering::Release);
    if (started == 0 || domain::live_count() == 0) && !FINISHING.swap(true, Ordering::AcqRel) {
        finish();
    }
}

/// Called after each domain's destruction: gives the heap memory the domain used back to
/// the frame allocator, and ends the run when no domain is left.
pub fn domain_destroyed() {
    memory::trim_heap();
    if BUILT_ALL.load(Ordering::Acquire) && domain::live_count() == 0 && !FINISHING.swap(true, Ordering::AcqRel) {
        finish();
    }
}

/// Prints the per-domain report and the leak check, then powers off.
fn finish() -> ! {
    // From here every line is printed at once, after what is queued.
    crate::logger::set_buffered(false);
    let history = domain::history();
    let created = history.created;
    let expected = EXPECTED.lock().clone();
    // Domains created by domain 0 fail the run only by crashing or being killed (hostile
    // ones never: they are counted apart).
    let mut unexpected = history.others_failed as usize;
    let others = (history.others_ended, history.others_failed);
    let mut guest_ends = Vec::new();
    for (id, name, ending) in &history.endings {
        match expected.iter().find(|(e, _)| e == id) {
            // Boot domains are judged against the ending their module line expects.
            Some(&(_, want)) => {
                unexpected += usize::from(*ending != want);
                guest_ends.push(guest_end(*ending));
                info!("summary: domain.{}.name={}", id.0, name);
                info!("summary: domain.{}.ending={}", id.0, ending.name());
                info!("summary: domain.{}.expected={}", id.0, want.name());
            }
            // The first failures of domains created by domain 0 (counted above).
            None => info!("summary: domain.{}.ending={}", id.0, ending.name()),
        }
    }
    crate::sched::report();
    crate::pv::console::report();
    crate::pv::mmu::report();
    crate::pv::ptwr::report();
    crate::pv::grants::report();
    super::teardown::report();
    crate::tlb::report();
    crate::pv::debugreg::report();
    info!("summary: domains.created_by_dom0={}", others.0);
    info!("summary: domains.failed_created_by_dom0={}", others.1);
    // Hostile domains (fuzzers, attacks) may end any way; they are counted, not judged.
    info!("summary: domains.hostile_ended={}", history.hostile.ended);
    info!("summary: domains.hostile_killed={}", history.hostile.killed);
    info!("summary: domains.hostile_crashed={}", history.hostile.crashed);
    let before = FREE_BEFORE.load(Ordering::Relaxed);
    memory::compact_heap();
    let after = memory::free_bytes();
    info!("memory: heap after trimming: {} KiB mapped for {} KiB in use", memory::heap_mapped_bytes() >> 10, memory::heap_used_bytes() >> 10);
    let leaked_frames = before.saturating_sub(after) / 4096;
    info!("summary: domains.created={created}");
    info!("summary: domains.unexpected_endings={unexpected}");
    info!("summary: memory.free_before_kib={}", before >> 10);
    info!("summary: memory.free_after_kib={}", after >> 10);
    info!("summary: memory.leaked_frames={leaked_frames}");
    let not_started = NOT_STARTED.load(Ordering::Acquire);
    info!("summary: domains.not_started={not_started}");
    let (raised, unclaimed, eois) = crate::pv::pirq::counts();
    if raised + unclaimed > 0 {
        info!("summary: pirq.raised={raised} pirq.unclaimed={unclaimed} pirq.eois={eois}");
    }
    if GUEST_STATUS.load(Ordering::Relaxed) {
        let end = guest_status(guest_ends, not_started);
        match end {
            Some(end) if before == after => {
                info!("summary: guest.ending={}", end.name());
                info!("summary: guest.exit_status={}", end.status());
                exit(Outcome::Guest(end))
            }
            _ => {
                error!("summary: guest ending unknown or memory leaked: run=fail");
                exit(Outcome::Failure)
            }
        }
    }
    let pass = unexpected == 0 && leaked_frames == 0 && before == after;
    if pass {
        info!("summary: run=pass");
        exit(Outcome::Success)
    }
    error!("summary: run=fail");
    exit(Outcome::Failure)
}

/// How an ending counts for a hand-run guest's exit status.
fn guest_end(ending: Ending) -> GuestEnd {
    match ending {
        Ending::Poweroff | Ending::Destroyed => GuestEnd::Poweroff,
        Ending::Reboot => GuestEnd::Reboot,
        Ending::Crash | Ending::Suspend | Ending::Watchdog => GuestEnd::Crash,
        Ending::Killed => GuestEnd::Killed,
    }
}
