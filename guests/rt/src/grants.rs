//! Grant tables from the guest's side: `grant_table_op` and typed wrappers for the
//! single-struct commands, the status of each array element, and the entries a granting
//! guest writes into its own table (versions 1 and 2), in the order the protocol wants
//! them (frame and domain first, then the flags that make the grant valid).
//!
//! Who uses it: guests that share pages with other domains (`guest-grants`) and attack the
//! grant interface (`guest-hostile`). It keeps no state and maps nothing itself: the
//! caller maps its table frames (`setup_table` lists them) where it likes and hands the
//! address to [`write_v1`] or [`write_v2`].

use core::sync::atomic::{fence, AtomicU16, AtomicU32, Ordering};

use abi::grant_table::{
    GntSt, GnttabGetStatusFrames, GnttabOp, GnttabQuerySize, GnttabSetVersion, GnttabSetupTable, GrantRef,
    GTF_INVALID,
};
use abi::hypercall::Hypercall;
use abi::ids::DomId;

use crate::hypercall::{decode, hypercall3, HypercallError, Result};

/// `grant_table_op(op, args, count)`.
///
/// # Safety
/// `args` must point to `count` structs of the kind `op` takes (read and written by the
/// call); a map must name addresses the program does not use as memory, an unmap only
/// mappings the program no longer uses.
pub unsafe fn grant_table_op<T>(op: GnttabOp, args: *mut T, count: u32) -> Result<u64> {
    // SAFETY: the caller vouches for `args` and the effect of `op`.
    decode(unsafe { hypercall3(Hypercall::GrantTableOp, op.raw().into(), args as u64, count.into()) })
}

/// The status an operation stored in its struct: `Ok` for `GNTST_okay`.
pub fn status(raw: i16) -> core::result::Result<(), GntSt> {
    match GntSt::from_raw(raw) {
        Some(GntSt::Okay) => Ok(()),
        Some(status) => Err(status),
        None => Err(GntSt::GeneralError),
    }
}

/// Why a single-struct command failed: the call, or the status it stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    Call(HypercallError),
    Status(GntSt),
}

/// `GNTTABOP_setup_table` for this domain: grows the table to `frames.len()` frames and
/// stores their frame numbers in `frames`.
pub fn setup_table(frames: &mut [u64]) -> core::result::Result<(), GrantError> {
    let mut op = GnttabSetupTable {
        dom: DomId::SELF,
        nr_frames: frames.len() as u32,
        frame_list: frames.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `op` and the list it names are ours for the call.
    unsafe { grant_table_op(GnttabOp::SetupTable, &mut op, 1) }.map_err(GrantError::Call)?;
    status(op.status).map_err(GrantError::Status)
}

/// `GNTTABOP_query_size` for this domain: (frames now, frames at most).
pub fn query_size() -> core::result::Result<(u32, u32), GrantError> {
    let mut op = GnttabQuerySize { dom: DomId::SELF, ..Default::default() };
    // SAFETY: `op` is ours for the call.
    unsafe { grant_table_op(GnttabOp::QuerySize, &mut op, 1) }.map_err(GrantError::Call)?;
    status(op.status).map_err(GrantError::Status)?;
    Ok((op.nr_frames, op.max_nr_frames))
}

/// `GNTTABOP_set_version`: the version in force afterwards, or the call's error.
pub fn set_version(version: u32) -> core::result::Result<u32, (HypercallError, u32)> {
    let mut op = GnttabSetVersion { version };
    // SAFETY: `op` is ours for the call. Changing the version clears the table, which the
    // program rewrites afterwards.
    match unsafe { grant_table_op(GnttabOp::SetVersion, &mut op, 1) } {
        Ok(_) => Ok(op.version),
        Err(error) => Err((error, op.version)),
    }
}

/// `GNTTABOP_get_status_frames` for this domain (version 2).
pub fn get_status_frames(frames: &mut [u64]) -> core::result::Result<(), GrantError> {
    let mut op = GnttabGetStatusFrames {
        nr_frames: frames.len() as u32,
        dom: DomId::SELF,
        frame_list: frames.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `op` and the list it names are ours for the call.
    unsafe { grant_table_op(GnttabOp::GetStatusFrames, &mut op, 1) }.map_err(GrantError::Call)?;
    status(op.status).map_err(GrantError::Status)
}

/// Writes version-1 entry `gref` of the table mapped at `table`: the frame and domain, then
/// (released after them) the flags.
///
/// # Safety
/// `table` must map the domain's grant-table frame(s) holding entry `gref`, writable.
pub unsafe fn write_v1(table: u64, gref: GrantRef, domid: DomId, frame: u64, flags: u16) {
    let entry = table + u64::from(gref) * 8;
    // SAFETY: the caller vouches for the mapping; entries are 8-byte aligned.
    unsafe {
        (*((entry + 4) as *const AtomicU32)).store(frame as u32, Ordering::Relaxed);
        (*((entry + 2) as *const AtomicU16)).store(domid.0, Ordering::Relaxed);
        fence(Ordering::Release);
        (*(entry as *const AtomicU16)).store(flags, Ordering::Release);
    }
}

/// Writes version-2 full-page entry `gref` of the table mapped at `table`.
///
/// # Safety
/// As [`write_v1`].
pub unsafe fn write_v2(table: u64, gref: GrantRef, domid: DomId, frame: u64, flags: u16) {
    let entry = table + u64::from(gref) * 16;
    // SAFETY: the caller vouches for the mapping; entries are 16-byte aligned.
    unsafe {
        ((entry + 8) as *mut u64).write_volatile(frame);
        (*((entry + 2) as *const AtomicU16)).store(domid.0, Ordering::Relaxed);
        fence(Ordering::Release);
        (*(entry as *const AtomicU16)).store(flags, Ordering::Release);
    }
}

/// Writes version-2 sub-page entry `gref`: `length` bytes from `page_off` of `frame`.
///
/// # Safety
/// As [`write_v1`].
pub unsafe fn write_v2_sub_page(table: u64, gref: GrantRef, domid: DomId, frame: u64, page_off: u16, length: u16, flags: u16) {
    let entry = table + u64::from(gref) * 16;
    // SAFETY: the caller vouches for the mapping; entries are 16-byte aligned.
    unsafe {
        ((entry + 8) as *mut u64).write_volatile(frame);
        ((entry + 4) as *mut u16).write_volatile(page_off);
        ((entry + 6) as *mut u16).write_volatile(length);
        (*((entry + 2) as *const AtomicU16)).store(domid.0, Ordering::Relaxed);
        fence(Ordering::Release);
        (*(entry as *const AtomicU16)).store(flags | abi::grant_table::GTF_SUB_PAGE, Ordering::Release);
    }
}

/// The flags of entry `gref` (version 1: with the status bits; version 2: the type and
/// permission bits), for `entry_bytes` 8 or 16.
///
/// # Safety
/// As [`write_v1`] (readable suffices).
pub unsafe fn flags(table: u64, gref: GrantRef, entry_bytes: u64) -> u16 {
    // SAFETY: the caller vouches for the mapping.
    unsafe { (*((table + u64::from(gref) * entry_bytes) as *const AtomicU16)).load(Ordering::Acquire) }
}

/// Ends access through version-1 entry `gref` if the grantee no longer uses it (Linux's
/// `gnttab_end_foreign_access_ref`): the flags go to invalid only if neither
/// `GTF_reading` nor `GTF_writing` is set. Returns whether it ended.
///
/// # Safety
/// As [`write_v1`].
pub unsafe fn end_access_v1(table: u64, gref: GrantRef) -> bool {
    // SAFETY: the caller vouches for the mapping.
    let flags = unsafe { &*((table + u64::from(gref) * 8) as *const AtomicU16) };
    let mut now = flags.load(Ordering::Acquire);
    loop {
        if now & (abi::grant_table::GTF_READING | abi::grant_table::GTF_WRITING) != 0 {
            return false;
        }
        match flags.compare_exchange(now, GTF_INVALID, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(seen) => now = seen,
        }
    }
}
