//! Race (b), a stale translation against a freed frame: vCPU 0 maps frame G at the probe
//! page P and writes the round's marker into it; vCPU 1 reads P until it sees the marker
//! (its TLB now holds P -> G); vCPU 0 unmaps P without any flush (`UVMF_NONE`) and gives G
//! back (`decrease_reservation`). Once that returns, G may belong to anyone (another domain,
//! the hypervisor's heap): vCPU 1's next read through P must fault. vCPU 0 then takes a frame
//! back (`increase_reservation`) for the next round.
//!
//! `main` runs [`run`] on vCPU 0 while vCPU 1 runs [`secondary`]. Each round starts with a
//! remap flushed on every vCPU (`UVMF_ALL`), so that a stale translation left by a failed
//! round cannot blur the next one. vCPU 1 only ever reads through P.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::abi::ids::Mfn;
use guest_rt::abi::mmu::{UVMF_ALL, UVMF_INVLPG, UVMF_NONE};
use guest_rt::layout;

use crate::crew::{self, Failure};
use crate::frames::Frame;
use crate::probe;

const STOP: u64 = u64::MAX;

/// The round whose marker vCPU 0 wrote into G.
static ROUND: AtomicU64 = AtomicU64::new(0);
/// The last round in which vCPU 1 read the marker through P.
static SEEN: AtomicU64 = AtomicU64::new(0);
/// The last round whose frame `decrease_reservation` took back.
static RELEASED: AtomicU64 = AtomicU64::new(0);
/// The last round vCPU 1 made its read after the release in.
static CHECKED: AtomicU64 = AtomicU64::new(0);
/// Reads after the release that did not fault, and the last value one read.
static STALE_READS: AtomicU64 = AtomicU64::new(0);
static STALE_VALUE: AtomicU64 = AtomicU64::new(0);
/// The probe page.
static PROBE_VA: AtomicU64 = AtomicU64::new(0);

/// What the race saw.
pub struct Outcome {
    pub rounds: u64,
    /// Rounds in which vCPU 1 read through P after G was given back.
    pub stale_reads: u64,
    /// The word the last such read returned (the frame scrubbed, or someone else's data).
    pub last_value: u64,
}

fn marker(round: u64) -> u64 {
    0x5EED_0000_0000_0000 | round
}

/// vCPU 0's half: `rounds` rounds starting with frame `g` at its own address as P.
pub fn run(g: Frame, rounds: u64) -> Result<Outcome, Failure> {
    let call = |what, result: Result<(), _>| result.map_err(|e| Failure::Call(what, e));
    PROBE_VA.store(g.va, Ordering::Release);
    crew::start_on_secondary(crate::RACE_FREE);
    let mut frame = g.mfn;
    for round in 1..=rounds {
        call("map G at P", crate::calls::map(g.va, layout::kernel_rw_pte(frame.address()), UVMF_INVLPG | UVMF_ALL))?;
        if !probe::try_write(g.va, marker(round)) {
            return Err(Failure::Walk(g.va));
        }
        ROUND.store(round, Ordering::Release);
        crew::until("vCPU 1 to read the marker", || SEEN.load(Ordering::Acquire) >= round)?;
        call("unmap P without a flush", crate::calls::map(g.va, 0, UVMF_NONE))?;
        let mut extent = frame;
        let given = crate::calls::reservation(false, &mut extent).map_err(|e| Failure::Call("decrease_reservation", e))?;
        if given != 1 {
            return Err(Failure::Call("decrease_reservation took no frame", guest_rt::hypercall::HypercallError::BadArgument));
        }
        RELEASED.store(round, Ordering::Release);
        crew::until("vCPU 1 to read after the release", || CHECKED.load(Ordering::Acquire) >= round)?;
        let mut extent = Mfn(0);
        let taken = crate::calls::reservation(true, &mut extent).map_err(|e| Failure::Call("increase_reservation", e))?;
        if taken != 1 {
            return Err(Failure::NoFreeFrame);
        }
        frame = extent;
    }
    ROUND.store(STOP, Ordering::Release);
    crew::wait_for_secondary(crate::RACE_FREE)?;
    call("map a frame at P again", crate::calls::map(g.va, layout::kernel_rw_pte(frame.address()), UVMF_INVLPG | UVMF_ALL))?;
    Ok(Outcome { rounds, stale_reads: STALE_READS.load(Ordering::Acquire), last_value: STALE_VALUE.load(Ordering::Acquire) })
}

/// vCPU 1's half: reads P until the marker shows, keeps reading (its TLB warm) until the
/// frame is given back, then reads once more: that read must fault.
pub fn secondary() -> Result<(), Failure> {
    let va = PROBE_VA.load(Ordering::Acquire);
    loop {
        let round = ROUND.load(Ordering::Acquire);
        if round == STOP {
            return Ok(());
        }
        if round == 0 || CHECKED.load(Ordering::Relaxed) >= round {
            core::hint::spin_loop();
            continue;
        }
        let read = probe::try_read(va);
        if SEEN.load(Ordering::Relaxed) < round {
            if read == Some(marker(round)) {
                SEEN.store(round, Ordering::Release);
            }
            continue;
        }
        if RELEASED.load(Ordering::Acquire) < round {
            continue;
        }
        // The frame is gone: this read began after `decrease_reservation` returned.
        if let Some(value) = probe::try_read(va) {
            STALE_READS.fetch_add(1, Ordering::AcqRel);
            STALE_VALUE.store(value, Ordering::Release);
        }
        CHECKED.store(round, Ordering::Release);
    }
}
