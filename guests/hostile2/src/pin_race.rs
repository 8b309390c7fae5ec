//! Race (a), a stale writable translation against a new page table: vCPU 1 keeps writing a
//! counter (a non-present PTE value) into frame F through the probe page W; vCPU 0 unmaps W
//! without any flush (`update_va_mapping(W, 0, UVMF_NONE)`) and pins F as an L1. From the
//! moment the pin returns, no write may land in F: vCPU 1's TLB must have been flushed, so
//! its next write faults. vCPU 0 then checks both ways that no write begun after the pin
//! went through: vCPU 1's own account, and F's contents read through R (mapped read-only to
//! F throughout, which takes no type) before and after vCPU 1's next attempts.
//!
//! `main` runs [`run`] on vCPU 0 while vCPU 1 runs [`secondary`]. Nothing here maps F
//! writable while it is a table, and F holds only non-present entries, so a write that does
//! land cannot harm the hypervisor: it only counts as a failure of the race.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::abi::hypercall::MmuextCmd;
use guest_rt::abi::mmu::{UVMF_INVLPG, UVMF_LOCAL, UVMF_NONE};
use guest_rt::layout::{self, PTE_PRESENT, PTE_USER};

use crate::crew::{self, Failure};
use crate::frames::Frame;
use crate::probe;

/// Rounds are numbered from 1; this one tells vCPU 1 the race is over.
const STOP: u64 = u64::MAX;

/// The round vCPU 0 mapped F writable at W for.
static ROUND: AtomicU64 = AtomicU64::new(0);
/// vCPU 1's write attempts so far (counted after each attempt).
static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
/// The number of vCPU 1's last attempt whose write went through.
static LAST_WRITTEN: AtomicU64 = AtomicU64::new(0);
/// The last round in which vCPU 1 wrote, and in which one of its writes faulted.
static WROTE_IN: AtomicU64 = AtomicU64::new(0);
static FAULTED_IN: AtomicU64 = AtomicU64::new(0);
/// The probe pages' addresses, set by vCPU 0 before the first round.
static WRITE_VA: AtomicU64 = AtomicU64::new(0);

/// What the race saw.
pub struct Outcome {
    pub rounds: u64,
    /// Rounds in which a write vCPU 1 began after the pin went through.
    pub stale_writes: u64,
    /// Rounds in which F's contents changed after the pin.
    pub landed: u64,
}

/// The entry of F vCPU 1 writes in `round`.
fn slot(round: u64) -> u64 {
    (round * 8) % 4096
}

/// vCPU 0's half: `rounds` rounds with frame `f` (its own address is W) and the address of
/// another free frame as R (its frame is unmapped for good).
pub fn run(f: Frame, r: Frame, rounds: u64) -> Result<Outcome, Failure> {
    let call = |what, result: Result<(), _>| result.map_err(|e| Failure::Call(what, e));
    // A read-only mapping takes no type: F may be pinned while R maps it.
    let read_only = f.mfn.address() | PTE_PRESENT | PTE_USER;
    call("map F read-only at R", crate::calls::map(r.va, read_only, UVMF_INVLPG | UVMF_LOCAL))?;
    WRITE_VA.store(f.va, Ordering::Release);
    crew::start_on_secondary(crate::RACE_PIN);
    let writable = layout::kernel_rw_pte(f.mfn.address());
    let mut outcome = Outcome { rounds, stale_writes: 0, landed: 0 };
    for round in 1..=rounds {
        call("map F writable at W", crate::calls::map(f.va, writable, UVMF_INVLPG | UVMF_LOCAL))?;
        ROUND.store(round, Ordering::Release);
        crew::until("vCPU 1 to write through W", || WROTE_IN.load(Ordering::Acquire) >= round)?;
        call("unmap W without a flush", crate::calls::map(f.va, 0, UVMF_NONE))?;
        call("pin F as an L1", crate::calls::extended(MmuextCmd::PinL1Table, f.mfn))?;
        let after_pin = ATTEMPTS.load(Ordering::Acquire);
        let entry = r.va + slot(round);
        let before = probe::try_read(entry).ok_or(Failure::Walk(entry))?;
        // Attempt `after_pin + 2` began after `after_pin + 1` was counted, so after the pin.
        crew::until("vCPU 1 to write or fault after the pin", || {
            ATTEMPTS.load(Ordering::Acquire) >= after_pin + 2 || FAULTED_IN.load(Ordering::Acquire) >= round
        })?;
        let after = probe::try_read(entry).ok_or(Failure::Walk(entry))?;
        outcome.stale_writes += u64::from(LAST_WRITTEN.load(Ordering::Acquire) >= after_pin + 2);
        outcome.landed += u64::from(after != before);
        call("unpin F", crate::calls::extended(MmuextCmd::UnpinTable, f.mfn))?;
    }
    ROUND.store(STOP, Ordering::Release);
    crew::wait_for_secondary(crate::RACE_PIN)?;
    call("unmap R", crate::calls::map(r.va, 0, UVMF_INVLPG | UVMF_LOCAL))?;
    call("map F writable at W again", crate::calls::map(f.va, writable, UVMF_INVLPG | UVMF_LOCAL))?;
    Ok(outcome)
}

/// vCPU 1's half: writes through W while vCPU 0 has mapped it for the current round; after
/// a fault, waits for the next round.
pub fn secondary() -> Result<(), Failure> {
    let va = WRITE_VA.load(Ordering::Acquire);
    let mut attempt = 0u64;
    loop {
        let round = ROUND.load(Ordering::Acquire);
        if round == STOP {
            return Ok(());
        }
        if round == 0 || FAULTED_IN.load(Ordering::Relaxed) >= round {
            core::hint::spin_loop();
            continue;
        }
        attempt += 1;
        // A non-present entry (bit 0 clear) that changes with every write.
        let written = probe::try_write(va + slot(round), attempt << 1);
        if written {
            LAST_WRITTEN.store(attempt, Ordering::Release);
            WROTE_IN.store(round, Ordering::Release);
        } else {
            FAULTED_IN.store(round, Ordering::Release);
        }
        ATTEMPTS.store(attempt, Ordering::Release);
    }
}
