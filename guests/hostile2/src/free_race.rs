//! Race (b), stale translations against freed frames: vCPU 0 maps frames G1..Gk at the
//! probe pages P1..Pk and writes the round's marker into each; vCPU 1 reads every P until it
//! sees the markers (its TLB now holds P -> G); vCPU 0 unmaps the P's without any flush
//! (`UVMF_NONE`) and gives the G's back (one `decrease_reservation`). Once that returns,
//! the G's may belong to anyone (another domain, the hypervisor's heap): vCPU 1's next read
//! through each P must fault. vCPU 0 then takes as many frames back
//! (`increase_reservation`) for the next round. Each frame of each round is one race.
//!
//! `main` runs [`run`] on vCPU 0 while vCPU 1 runs [`secondary`]. Each round starts with the
//! new frames mapped and every vCPU flushed (`MMUEXT_TLB_FLUSH_ALL`), so that a stale
//! translation left by a failed round cannot blur the next one. vCPU 1 only ever reads
//! through the P's.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arrayvec::ArrayVec;
use guest_rt::abi::hypercall::MmuextCmd;
use guest_rt::abi::ids::Mfn;
use guest_rt::abi::mmu::UVMF_NONE;
use guest_rt::layout;

use crate::calls::{self, MAX_BATCH};
use crate::crew::{self, Failure};
use crate::frames::Frame;
use crate::probe;

const STOP: u64 = u64::MAX;

/// The round whose markers vCPU 0 wrote into the G's.
static ROUND: AtomicU64 = AtomicU64::new(0);
/// The last round in which vCPU 1 read every marker through the P's.
static SEEN: AtomicU64 = AtomicU64::new(0);
/// The last round whose frames `decrease_reservation` took back.
static RELEASED: AtomicU64 = AtomicU64::new(0);
/// The last round vCPU 1 made its reads after the release in.
static CHECKED: AtomicU64 = AtomicU64::new(0);
/// Reads after the release that did not fault, and the last value one read.
static STALE_READS: AtomicU64 = AtomicU64::new(0);
static STALE_VALUE: AtomicU64 = AtomicU64::new(0);
/// The probe pages.
static PROBE_VAS: [AtomicU64; MAX_BATCH] = [const { AtomicU64::new(0) }; MAX_BATCH];
static FRAMES: AtomicUsize = AtomicUsize::new(0);

/// What the race saw.
pub struct Outcome {
    pub rounds: u64,
    /// Frames per round.
    pub frames: usize,
    /// Reads through a P after its G was given back.
    pub stale_reads: u64,
    /// The word the last such read returned (the frame scrubbed, or someone else's data).
    pub last_value: u64,
}

fn marker(round: u64, index: usize) -> u64 {
    0x5EED_0000_0000_0000 | (round << 8) | index as u64
}

/// vCPU 0's half: `rounds` rounds starting with the frames `gs` at their own addresses as
/// the P's.
pub fn run(gs: &[Frame], rounds: u64) -> Result<Outcome, Failure> {
    let call = |what, result: Result<(), _>| result.map_err(|e| Failure::Call(what, e));
    for (slot, g) in PROBE_VAS.iter().zip(gs) {
        slot.store(g.va, Ordering::Relaxed);
    }
    FRAMES.store(gs.len(), Ordering::Release);
    crew::start_on_secondary(crate::RACE_FREE);
    let mut frames: ArrayVec<Mfn, MAX_BATCH> = gs.iter().map(|g| g.mfn).collect();
    let unmapped: ArrayVec<(u64, u64), MAX_BATCH> = gs.iter().map(|g| (g.va, 0)).collect();
    for round in 1..=rounds {
        let mapped: ArrayVec<(u64, u64), MAX_BATCH> = gs.iter().zip(&frames).map(|(g, m)| (g.va, layout::kernel_rw_pte(m.address()))).collect();
        call("map the G's at the P's", calls::map_many(&mapped, UVMF_NONE))?;
        call("flush every vCPU", calls::extended(MmuextCmd::TlbFlushAll, Mfn(0)))?;
        for (i, g) in gs.iter().enumerate() {
            if !probe::try_write(g.va, marker(round, i)) {
                return Err(Failure::Walk(g.va));
            }
        }
        ROUND.store(round, Ordering::Release);
        crew::until("vCPU 1 to read the markers", || SEEN.load(Ordering::Acquire) >= round)?;
        call("unmap the P's without a flush", calls::map_many(&unmapped, UVMF_NONE))?;
        let given = calls::reservation(false, &mut frames).map_err(|e| Failure::Call("decrease_reservation", e))?;
        if given != frames.len() as u64 {
            return Err(Failure::Call("decrease_reservation took fewer frames", guest_rt::hypercall::HypercallError::BadArgument));
        }
        RELEASED.store(round, Ordering::Release);
        crew::until("vCPU 1 to read after the release", || CHECKED.load(Ordering::Acquire) >= round)?;
        let taken = calls::reservation(true, &mut frames).map_err(|e| Failure::Call("increase_reservation", e))?;
        if taken != frames.len() as u64 {
            return Err(Failure::NoFreeFrame);
        }
    }
    ROUND.store(STOP, Ordering::Release);
    crew::wait_for_secondary(crate::RACE_FREE)?;
    let mapped: ArrayVec<(u64, u64), MAX_BATCH> = gs.iter().zip(&frames).map(|(g, m)| (g.va, layout::kernel_rw_pte(m.address()))).collect();
    call("map frames at the P's again", calls::map_many(&mapped, UVMF_NONE))?;
    call("flush every vCPU", calls::extended(MmuextCmd::TlbFlushAll, Mfn(0)))?;
    Ok(Outcome { rounds, frames: gs.len(), stale_reads: STALE_READS.load(Ordering::Acquire), last_value: STALE_VALUE.load(Ordering::Acquire) })
}

/// vCPU 1's half: reads the P's until every marker shows, keeps reading (its TLB warm)
/// until the frames are given back, then reads each once more: those reads must fault.
pub fn secondary() -> Result<(), Failure> {
    let frames = FRAMES.load(Ordering::Acquire);
    let vas: ArrayVec<u64, MAX_BATCH> = PROBE_VAS[..frames].iter().map(|v| v.load(Ordering::Relaxed)).collect();
    loop {
        let round = ROUND.load(Ordering::Acquire);
        if round == STOP {
            return Ok(());
        }
        if round == 0 || CHECKED.load(Ordering::Relaxed) >= round {
            core::hint::spin_loop();
            continue;
        }
        if SEEN.load(Ordering::Relaxed) < round {
            if vas.iter().enumerate().all(|(i, &va)| probe::try_read(va) == Some(marker(round, i))) {
                SEEN.store(round, Ordering::Release);
            }
            continue;
        }
        if RELEASED.load(Ordering::Acquire) < round {
            for &va in &vas {
                let _ = probe::try_read(va);
            }
            continue;
        }
        // The frames are gone: these reads began after `decrease_reservation` returned.
        for &va in &vas {
            if let Some(value) = probe::try_read(va) {
                STALE_READS.fetch_add(1, Ordering::AcqRel);
                STALE_VALUE.store(value, Ordering::Release);
            }
        }
        CHECKED.store(round, Ordering::Release);
    }
}
