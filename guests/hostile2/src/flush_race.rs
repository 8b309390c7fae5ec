//! Race (c), cross-CPU flushes from both vCPUs at once: each vCPU, on its own CPU, rewrites
//! the entry of its own probe page again and again, asking for a flush of every vCPU each
//! time: `update_va_mapping` with `UVMF_INVLPG | UVMF_ALL`, `mmu_update` (which flushes the
//! domain's vCPUs) and `MMUEXT_TLB_FLUSH_ALL` in turn; and every fourth time it unmaps its
//! page without a flush, pins its frame as an L1, unpins it and maps it writable again,
//! where the hypervisor itself flushes the other CPU with the domain's page-table lock held
//! (a frame becoming a table, then writable after being one). A hypervisor that waits for
//! the other CPU while holding a lock that CPU spins on with interrupts off never comes
//! back: the machine hangs (issue 15, hole 6). The race passes when both vCPUs finish.
//!
//! `main` runs [`run`] on vCPU 0 while vCPU 1 runs [`secondary`]; each only remaps its own
//! probe page to the frame it already maps.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::abi::hypercall::MmuextCmd;
use guest_rt::abi::ids::Mfn;
use guest_rt::abi::mmu::{UVMF_ALL, UVMF_INVLPG, UVMF_LOCAL, UVMF_NONE};
use guest_rt::layout;

use crate::crew::{self, Failure};
use crate::frames::Frame;

/// Each vCPU's probe page, the machine address of its L1 entry, and the rounds to make.
static SECONDARY_VA: AtomicU64 = AtomicU64::new(0);
static SECONDARY_MFN: AtomicU64 = AtomicU64::new(0);
static SECONDARY_ENTRY: AtomicU64 = AtomicU64::new(0);
static ROUNDS: AtomicU64 = AtomicU64::new(0);
/// Rounds each vCPU finished.
static DONE_PRIMARY: AtomicU64 = AtomicU64::new(0);
static DONE_SECONDARY: AtomicU64 = AtomicU64::new(0);

/// vCPU 0's half with its probe frame `mine`, vCPU 1's `theirs` (each with the machine
/// address of the L1 entry that maps it); returns the flushes both made.
pub fn run(mine: (Frame, u64), theirs: (Frame, u64), rounds: u64) -> Result<u64, Failure> {
    SECONDARY_VA.store(theirs.0.va, Ordering::Relaxed);
    SECONDARY_MFN.store(theirs.0.mfn.0, Ordering::Relaxed);
    SECONDARY_ENTRY.store(theirs.1, Ordering::Relaxed);
    ROUNDS.store(rounds, Ordering::Release);
    crew::start_on_secondary(crate::RACE_FLUSH);
    flushes(mine.0.va, mine.0.mfn, mine.1, rounds, &DONE_PRIMARY)?;
    crew::wait_for_secondary(crate::RACE_FLUSH)?;
    Ok(DONE_PRIMARY.load(Ordering::Acquire) + DONE_SECONDARY.load(Ordering::Acquire))
}

/// vCPU 1's half.
pub fn secondary() -> Result<(), Failure> {
    let va = SECONDARY_VA.load(Ordering::Acquire);
    let mfn = Mfn(SECONDARY_MFN.load(Ordering::Acquire));
    let entry = SECONDARY_ENTRY.load(Ordering::Acquire);
    flushes(va, mfn, entry, ROUNDS.load(Ordering::Acquire), &DONE_SECONDARY)
}

/// `rounds` flushes of every vCPU, cycling through the four ways to cause one.
fn flushes(va: u64, mfn: Mfn, entry: u64, rounds: u64, done: &AtomicU64) -> Result<(), Failure> {
    let pte = layout::kernel_rw_pte(mfn.address());
    for round in 0..rounds {
        let result = match round % 4 {
            0 => crate::calls::map(va, pte, UVMF_INVLPG | UVMF_ALL),
            1 => crate::calls::update(entry, pte),
            2 => crate::calls::extended(MmuextCmd::TlbFlushAll, Mfn(0)),
            _ => crate::calls::map(va, 0, UVMF_NONE)
                .and_then(|()| crate::calls::extended(MmuextCmd::PinL1Table, mfn))
                .and_then(|()| crate::calls::extended(MmuextCmd::UnpinTable, mfn))
                .and_then(|()| crate::calls::map(va, pte, UVMF_INVLPG | UVMF_LOCAL)),
        };
        result.map_err(|e| Failure::Call("a flush of every vCPU", e))?;
        done.store(round + 1, Ordering::Release);
    }
    Ok(())
}
