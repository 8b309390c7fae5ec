//! A check (not a race) of the flushes that name vCPUs by bitmap: vCPU 0 points the probe
//! page P at frame A or B in turn, each time flushing only vCPU 1's TLB through a bitmap
//! (`update_va_mapping` with `UVMF_INVLPG | UVMF_MULTI` and the bitmap's address OR-ed into
//! the flags, `MMUEXT_INVLPG_MULTI`, `MMUEXT_TLB_FLUSH_MULTI` after a `UVMF_NONE` remap), while
//! vCPU 1 reads P all the time (so its TLB holds the old translation). Once vCPU 0 announces
//! a remap, vCPU 1's next read must show the new frame's marker.
//!
//! `main` runs [`run`] on vCPU 0 while vCPU 1 runs [`secondary`]. Only P is remapped, and
//! only between A and B.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::abi::hypercall::MmuextCmd;
use guest_rt::abi::ids::DomId;
use guest_rt::abi::mmu::{MmuextOp, UVMF_INVLPG, UVMF_LOCAL, UVMF_NONE};
use guest_rt::hypercall;
use guest_rt::layout;

use crate::crew::{self, Failure};
use crate::frames::Frame;
use crate::probe;

const STOP: u64 = u64::MAX;
/// The bitmap naming vCPU 1 only (one u64 word, as Xen reads it).
static VCPU1_ONLY: u64 = 1 << 1;

/// The round vCPU 0 last remapped P for, and the last round vCPU 1 checked.
static ROUND: AtomicU64 = AtomicU64::new(0);
static CHECKED: AtomicU64 = AtomicU64::new(0);
/// Rounds in which vCPU 1 read the old frame after the remap, and P's address.
static MISSED: AtomicU64 = AtomicU64::new(0);
static PROBE_VA: AtomicU64 = AtomicU64::new(0);

fn marker(frame: u64) -> u64 {
    0x3333_0000_0000_0000 | frame
}

/// The frame (0: A, 1: B) P maps in `round`.
fn frame_of(round: u64) -> u64 {
    round % 2
}

/// vCPU 0's half: `rounds` remaps of `p` between `a` and `b`; returns the rounds in which
/// vCPU 1 missed the flush.
pub fn run(p: Frame, a: Frame, b: Frame, rounds: u64) -> Result<u64, Failure> {
    for (i, frame) in [a, b].iter().enumerate() {
        if !probe::try_write(frame.va, marker(i as u64)) {
            return Err(Failure::Walk(frame.va));
        }
    }
    let pte = |round: u64| layout::kernel_rw_pte(if frame_of(round) == 0 { a.mfn.address() } else { b.mfn.address() });
    let call = |what, result: Result<(), _>| result.map_err(|e| Failure::Call(what, e));
    call("map P", crate::calls::map(p.va, pte(0), UVMF_INVLPG | UVMF_LOCAL))?;
    PROBE_VA.store(p.va, Ordering::Release);
    crew::start_on_secondary(crate::CHECK_MULTI);
    let bitmap = &raw const VCPU1_ONLY as u64;
    for round in 1..=rounds {
        match round % 3 {
            0 => call("remap with UVMF_MULTI", crate::calls::map(p.va, pte(round), UVMF_INVLPG | bitmap))?,
            1 => {
                call("remap without a flush", crate::calls::map(p.va, pte(round), UVMF_NONE))?;
                call("MMUEXT_INVLPG_MULTI", multi(MmuextCmd::InvlpgMulti, p.va, bitmap))?;
            }
            _ => {
                call("remap without a flush", crate::calls::map(p.va, pte(round), UVMF_NONE))?;
                call("MMUEXT_TLB_FLUSH_MULTI", multi(MmuextCmd::TlbFlushMulti, 0, bitmap))?;
            }
        }
        ROUND.store(round, Ordering::Release);
        crew::until("vCPU 1 to read after the remap", || CHECKED.load(Ordering::Acquire) >= round)?;
    }
    ROUND.store(STOP, Ordering::Release);
    crew::wait_for_secondary(crate::CHECK_MULTI)?;
    call("map P back", crate::calls::map(p.va, layout::kernel_rw_pte(p.mfn.address()), UVMF_INVLPG | UVMF_LOCAL))?;
    Ok(MISSED.load(Ordering::Acquire))
}

/// vCPU 1's half: reads P all the time; after each announced remap, checks the marker.
pub fn secondary() -> Result<(), Failure> {
    let va = PROBE_VA.load(Ordering::Acquire);
    loop {
        let round = ROUND.load(Ordering::Acquire);
        if round == STOP {
            return Ok(());
        }
        let seen = probe::try_read(va).ok_or(Failure::Walk(va))?;
        if round > CHECKED.load(Ordering::Relaxed) {
            // Read after the announcement, which came after the flush.
            if seen != marker(frame_of(round)) {
                MISSED.fetch_add(1, Ordering::AcqRel);
            }
            CHECKED.store(round, Ordering::Release);
        }
    }
}

/// One `mmuext_op` flushing the vCPUs in the bitmap at `bitmap` (all of the TLB, or the
/// page at `va`).
fn multi(cmd: MmuextCmd, va: u64, bitmap: u64) -> Result<(), hypercall::HypercallError> {
    let op = MmuextOp { cmd: cmd.raw(), _pad: 0, arg1: va, arg2: bitmap };
    let mut done = 0;
    // SAFETY: a flush changes no mapping.
    unsafe { hypercall::mmuext_op(core::slice::from_ref(&op), &mut done, DomId::SELF) }
}
