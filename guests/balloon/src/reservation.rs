//! The domain's reservation through `memory_op`: how many pages it holds and may hold,
//! and the balloon operations, in order-0 extents of machine frame numbers as PV guests
//! pass them. Every call names the domain as `DOMID_SELF`.
//!
//! Only `main` calls this module. It must never decide which frames to give away: that,
//! and making sure they are unused, is the caller's part of [`shrink`].

use guest_rt::abi::hypercall::MemoryOp;
use guest_rt::abi::ids::{DomId, Mfn};
use guest_rt::abi::memory::XenMemoryReservation;
use guest_rt::hypercall::{self, HypercallError};

/// Pages the domain holds (`XENMEM_current_reservation`).
pub fn current() -> Result<u64, HypercallError> {
    query(MemoryOp::CurrentReservation)
}

/// Pages the domain may hold (`XENMEM_maximum_reservation`).
pub fn maximum() -> Result<u64, HypercallError> {
    query(MemoryOp::MaximumReservation)
}

/// A query that takes a `domid_t`.
fn query(cmd: MemoryOp) -> Result<u64, HypercallError> {
    let mut domid = DomId::SELF;
    // SAFETY: the command reads the domid_t on our stack and changes nothing.
    unsafe { hypercall::memory_op(cmd, &raw mut domid) }
}

/// Asks for `extents.len()` new frames (`XENMEM_increase_reservation`); the hypervisor
/// writes their numbers into `extents`. Returns how many it granted: the first that many
/// entries.
pub fn grow(extents: &mut [Mfn]) -> Result<u64, HypercallError> {
    let mut request = reservation(extents.as_mut_ptr(), extents.len());
    // SAFETY: the hypervisor writes at most `len` frame numbers into the live slice; the
    // new frames are not mapped, so the program's memory is unchanged.
    unsafe { hypercall::memory_op(MemoryOp::IncreaseReservation, &raw mut request) }
}

/// Gives the frames in `extents` back (`XENMEM_decrease_reservation`); returns how many
/// the hypervisor took, in order.
///
/// # Safety
/// No frame in `extents` may be mapped or otherwise in use.
pub unsafe fn shrink(extents: &[Mfn]) -> Result<u64, HypercallError> {
    let mut request = reservation(extents.as_ptr().cast_mut(), extents.len());
    // SAFETY: the hypervisor only reads the extents; the caller vouches that the frames
    // are unused.
    unsafe { hypercall::memory_op(MemoryOp::DecreaseReservation, &raw mut request) }
}

/// A request for `len` single-page extents at `extents`.
fn reservation(extents: *mut Mfn, len: usize) -> XenMemoryReservation {
    XenMemoryReservation {
        extent_start: extents as u64,
        nr_extents: len as u64,
        extent_order: 0,
        mem_flags: 0,
        domid: DomId::SELF,
        _pad: [0; 3],
    }
}
