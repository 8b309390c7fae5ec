//! Race (a), stale writable translations against new page tables: vCPU 1 keeps writing a
//! counter (a non-present PTE value) into frames F1..Fk through their probe pages W1..Wk;
//! vCPU 0 unmaps them all without any flush (`update_va_mapping(W, 0, UVMF_NONE)`) and pins
//! each F as an L1 (one `mmuext_op`). From the moment the pins return, no write may land in
//! any F: vCPU 1's TLB must have been flushed, so its next writes fault. vCPU 0 checks both
//! ways that no write begun after the pins went through: vCPU 1's own account (a sweep over
//! the W's that began after the pins and wrote), and each F's contents, read through R1..Rk
//! (mapped read-only to the F's throughout: a read-only mapping takes no type), before and
//! after vCPU 1's next sweeps. Each frame of each round is one race.
//!
//! `main` runs [`run`] on vCPU 0 while vCPU 1 runs [`secondary`]. Nothing here maps an F
//! writable while it is a table, and the F's hold only non-present entries, so a write that
//! does land cannot harm the hypervisor: it only counts as a failure of the race.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arrayvec::ArrayVec;
use guest_rt::abi::hypercall::MmuextCmd;
use guest_rt::abi::ids::Mfn;
use guest_rt::abi::mmu::{UVMF_INVLPG, UVMF_LOCAL, UVMF_NONE};
use guest_rt::layout::{self, PTE_PRESENT, PTE_USER};

use crate::calls::{self, MAX_BATCH};
use crate::crew::{self, Failure};
use crate::frames::Frame;
use crate::probe;

/// Rounds are numbered from 1; this one tells vCPU 1 the race is over.
const STOP: u64 = u64::MAX;

/// The round vCPU 0 mapped the F's writable for.
static ROUND: AtomicU64 = AtomicU64::new(0);
/// vCPU 1's sweeps over the W's so far (counted after each sweep).
static SWEEPS: AtomicU64 = AtomicU64::new(0);
/// The number of vCPU 1's last sweep in which a write went through.
static LAST_WRITTEN: AtomicU64 = AtomicU64::new(0);
/// The last round in which a sweep of vCPU 1 wrote every W, and in which one faulted on
/// every W.
static WROTE_IN: AtomicU64 = AtomicU64::new(0);
static FAULTED_IN: AtomicU64 = AtomicU64::new(0);
/// The probe pages W, set by vCPU 0 before the first round.
static WRITE_VAS: [AtomicU64; MAX_BATCH] = [const { AtomicU64::new(0) }; MAX_BATCH];
static FRAMES: AtomicUsize = AtomicUsize::new(0);

/// What the race saw.
pub struct Outcome {
    pub rounds: u64,
    /// Frames per round.
    pub frames: usize,
    /// Rounds in which a sweep vCPU 1 began after the pins went through wrote somewhere.
    pub stale_writes: u64,
    /// Frames (over all rounds) whose contents changed after the pins.
    pub landed: u64,
}

/// The entry of each F vCPU 1 writes in `round`.
fn slot(round: u64) -> u64 {
    (round * 8) % 4096
}

/// vCPU 0's half: `rounds` rounds with the frames `fs` (their own addresses are the W's)
/// and the addresses of as many other free frames as the R's (their frames unmapped for
/// good).
pub fn run(fs: &[Frame], rs: &[Frame], rounds: u64) -> Result<Outcome, Failure> {
    let call = |what, result: Result<(), _>| result.map_err(|e| Failure::Call(what, e));
    let mfns: ArrayVec<Mfn, MAX_BATCH> = fs.iter().map(|f| f.mfn).collect();
    let read_only: ArrayVec<(u64, u64), MAX_BATCH> = rs.iter().zip(fs).map(|(r, f)| (r.va, f.mfn.address() | PTE_PRESENT | PTE_USER)).collect();
    let writable: ArrayVec<(u64, u64), MAX_BATCH> = fs.iter().map(|f| (f.va, layout::kernel_rw_pte(f.mfn.address()))).collect();
    let unmapped: ArrayVec<(u64, u64), MAX_BATCH> = fs.iter().map(|f| (f.va, 0)).collect();
    call("map the F's read-only at the R's", calls::map_many(&read_only, UVMF_INVLPG | UVMF_LOCAL))?;
    for (slot, f) in WRITE_VAS.iter().zip(fs) {
        slot.store(f.va, Ordering::Relaxed);
    }
    FRAMES.store(fs.len(), Ordering::Release);
    crew::start_on_secondary(crate::RACE_PIN);
    let mut outcome = Outcome { rounds, frames: fs.len(), stale_writes: 0, landed: 0 };
    for round in 1..=rounds {
        call("map the F's writable at the W's", calls::map_many(&writable, UVMF_INVLPG | UVMF_LOCAL))?;
        ROUND.store(round, Ordering::Release);
        crew::until("vCPU 1 to write through every W", || WROTE_IN.load(Ordering::Acquire) >= round)?;
        call("unmap the W's without a flush", calls::map_many(&unmapped, UVMF_NONE))?;
        call("pin the F's as L1s", calls::extended_many(MmuextCmd::PinL1Table, &mfns))?;
        let after_pin = SWEEPS.load(Ordering::Acquire);
        let read = |r: &Frame| probe::try_read(r.va + slot(round)).ok_or(Failure::Walk(r.va));
        let before: ArrayVec<u64, MAX_BATCH> = rs.iter().map(read).collect::<Result<_, _>>()?;
        // Sweep `after_pin + 2` began after `after_pin + 1` was counted, so after the pins.
        crew::until("vCPU 1 to sweep after the pins", || {
            SWEEPS.load(Ordering::Acquire) >= after_pin + 2 || FAULTED_IN.load(Ordering::Acquire) >= round
        })?;
        for (r, was) in rs.iter().zip(&before) {
            outcome.landed += u64::from(read(r)? != *was);
        }
        outcome.stale_writes += u64::from(LAST_WRITTEN.load(Ordering::Acquire) >= after_pin + 2);
        call("unpin the F's", calls::extended_many(MmuextCmd::UnpinTable, &mfns))?;
    }
    ROUND.store(STOP, Ordering::Release);
    crew::wait_for_secondary(crate::RACE_PIN)?;
    let unmapped_rs: ArrayVec<(u64, u64), MAX_BATCH> = rs.iter().map(|r| (r.va, 0)).collect();
    call("unmap the R's", calls::map_many(&unmapped_rs, UVMF_INVLPG | UVMF_LOCAL))?;
    call("map the F's writable again", calls::map_many(&writable, UVMF_INVLPG | UVMF_LOCAL))?;
    Ok(outcome)
}

/// vCPU 1's half: sweeps over the W's, writing through each, while vCPU 0 has mapped them
/// for the current round; after a sweep that faulted on every W, waits for the next round.
pub fn secondary() -> Result<(), Failure> {
    let frames = FRAMES.load(Ordering::Acquire);
    let mut sweep = 0u64;
    let mut value = 0u64;
    loop {
        let round = ROUND.load(Ordering::Acquire);
        if round == STOP {
            return Ok(());
        }
        if round == 0 || FAULTED_IN.load(Ordering::Relaxed) >= round {
            core::hint::spin_loop();
            continue;
        }
        sweep += 1;
        let mut written = 0;
        for slot_va in &WRITE_VAS[..frames] {
            value += 1;
            // A non-present entry (bit 0 clear) that changes with every write.
            written += usize::from(probe::try_write(slot_va.load(Ordering::Relaxed) + slot(round), value << 1));
        }
        if written > 0 {
            LAST_WRITTEN.store(sweep, Ordering::Release);
        }
        if written == frames {
            WROTE_IN.store(round, Ordering::Release);
        } else if written == 0 {
            FAULTED_IN.store(round, Ordering::Release);
        }
        SWEEPS.store(sweep, Ordering::Release);
    }
}
