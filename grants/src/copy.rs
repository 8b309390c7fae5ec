//! The checks of one `GNTTABOP_copy` that need no memory: who may name a frame directly,
//! and whether the bytes to copy lie inside the page and inside the window each end's
//! grant covers (Xen's `gnttab_copy_lock_domain` and `gnttab_copy_buf`).
//!
//! The hypervisor's copy handler calls [`check_ends`] before it looks anything up and
//! [`check_window`] for each end once the end is resolved (a whole frame for a frame of the
//! caller, the grant's window for a grant reference). This module never copies a byte.

use abi::grant_table::{GntSt, GnttabCopy, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF};
use abi::ids::DomId;

use crate::shared::FRAME_BYTES;

/// One end of a copy as the request names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// A grant reference of `domid`'s table.
    Grant { domid: DomId, gref: u32 },
    /// A frame of the caller (`DOMID_SELF` only).
    Frame { mfn: u64 },
}

/// Decodes both ends of `op`: a frame may be named only with `DOMID_SELF`
/// (`PermissionDenied` otherwise, as Xen).
pub fn check_ends(op: &GnttabCopy) -> Result<(End, End), GntSt> {
    let end = |ptr: &abi::grant_table::GnttabCopyPtr, is_gref: bool| {
        if is_gref {
            Ok(End::Grant { domid: ptr.domid, gref: ptr.gref() })
        } else if ptr.domid == DomId::SELF {
            Ok(End::Frame { mfn: ptr.u })
        } else {
            Err(GntSt::PermissionDenied)
        }
    };
    let source = end(&op.source, op.flags & GNTCOPY_SOURCE_GREF != 0)?;
    let dest = end(&op.dest, op.flags & GNTCOPY_DEST_GREF != 0)?;
    Ok((source, dest))
}

/// The bytes `offset..offset + len` of an end whose grant covers `start..start + length`:
/// beyond the page is `BadCopyArg` (checked for both ends first by the caller, through
/// [`check_page`]), outside the window `GeneralError`.
pub fn check_window(offset: u16, len: u16, start: u16, length: u16) -> Result<(), GntSt> {
    let (offset, len, start, length) = (u32::from(offset), u32::from(len), u32::from(start), u32::from(length));
    if offset < start || offset + len > start + length {
        return Err(GntSt::GeneralError);
    }
    Ok(())
}

/// Both ends' bytes lie inside one page (`BadCopyArg` otherwise).
pub fn check_page(op: &GnttabCopy) -> Result<(), GntSt> {
    let fits = |offset: u16| u32::from(offset) + u32::from(op.len) <= FRAME_BYTES as u32;
    if fits(op.source.offset) && fits(op.dest.offset) {
        Ok(())
    } else {
        Err(GntSt::BadCopyArg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::grant_table::GnttabCopyPtr;

    fn op(source: GnttabCopyPtr, dest: GnttabCopyPtr, len: u16, flags: u16) -> GnttabCopy {
        GnttabCopy { source, dest, len, flags, status: 0, _pad: 0 }
    }

    fn ptr(u: u64, domid: DomId, offset: u16) -> GnttabCopyPtr {
        GnttabCopyPtr { u, domid, offset, _pad: 0 }
    }

    #[test]
    fn frames_only_of_the_caller() {
        let own = ptr(5, DomId::SELF, 0);
        let other = ptr(5, DomId(3), 0);
        assert_eq!(check_ends(&op(own, own, 8, 0)), Ok((End::Frame { mfn: 5 }, End::Frame { mfn: 5 })));
        assert_eq!(check_ends(&op(other, own, 8, 0)), Err(GntSt::PermissionDenied));
        assert_eq!(check_ends(&op(own, other, 8, 0)), Err(GntSt::PermissionDenied));
        // A grant reference may name any domain; only the low 32 bits are the reference.
        let gref = ptr((7 << 32) | 9, DomId(3), 0);
        assert_eq!(
            check_ends(&op(gref, own, 8, GNTCOPY_SOURCE_GREF)),
            Ok((End::Grant { domid: DomId(3), gref: 9 }, End::Frame { mfn: 5 }))
        );
    }

    #[test]
    fn bytes_stay_in_the_page_and_the_window() {
        let at = |offset| ptr(1, DomId::SELF, offset);
        assert_eq!(check_page(&op(at(0), at(0), 4096, 0)), Ok(()));
        assert_eq!(check_page(&op(at(1), at(0), 4096, 0)), Err(GntSt::BadCopyArg));
        assert_eq!(check_page(&op(at(0), at(4095), 2, 0)), Err(GntSt::BadCopyArg));
        assert_eq!(check_page(&op(at(u16::MAX), at(0), u16::MAX, 0)), Err(GntSt::BadCopyArg));
        assert_eq!(check_window(100, 20, 100, 20), Ok(()));
        assert_eq!(check_window(99, 20, 100, 20), Err(GntSt::GeneralError));
        assert_eq!(check_window(100, 21, 100, 20), Err(GntSt::GeneralError));
        assert_eq!(check_window(0, 4096, 0, 4096), Ok(()));
    }
}
