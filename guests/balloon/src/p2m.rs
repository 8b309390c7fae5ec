//! The P2M list (`start_info.mfn_list`): the machine frame behind each guest frame. A
//! balloon driver keeps it current: it marks the frames it gives away invalid and records
//! the frames it gets back.
//!
//! guest-rt reads the list as a shared slice and promises never to write it; this guest
//! does write it, so it reaches the list through raw pointers only and never holds
//! guest-rt's slice. Only `main` calls this module; it must never write outside the
//! list's `nr_pages` entries.

use guest_rt::abi::ids::{Mfn, Pfn};
use guest_rt::start_info;

/// The entry of a frame the domain no longer has (Linux's `INVALID_P2M_ENTRY`).
pub const INVALID_MFN: Mfn = Mfn(u64::MAX);

/// The address of `pfn`'s entry. Panics for a frame beyond the reservation.
fn entry(pfn: Pfn) -> *mut Mfn {
    let info = start_info();
    assert!(pfn.0 < info.nr_pages, "{pfn:?} is beyond the P2M list");
    (info.mfn_list as *mut Mfn).wrapping_add(pfn.0 as usize)
}

/// The machine frame recorded for `pfn`.
pub fn get(pfn: Pfn) -> Mfn {
    // SAFETY: the entry lies in the list, which the runtime checked is aligned and inside
    // the initial mapping (mapped writable, as all but the page tables are); no reference
    // to it is held.
    unsafe { entry(pfn).read() }
}

/// Records `mfn` as the machine frame behind `pfn`.
pub fn set(pfn: Pfn, mfn: Mfn) {
    // SAFETY: as in `get`; this guest holds no reference into the list.
    unsafe { entry(pfn).write(mfn) }
}

/// Whether some guest frame is recorded as backed by `mfn`.
pub fn contains(mfn: Mfn) -> bool {
    (0..start_info().nr_pages).any(|pfn| get(Pfn(pfn)) == mfn)
}
