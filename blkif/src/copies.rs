//! A checked request as grant copies (`GNTTABOP_copy`, `grant_table.h`): each chunk cut at
//! the backend's disk pages, the frontend's side named by its grant reference (the
//! hypervisor checks that the frontend granted it, to the backend, writable for a read),
//! the backend's side by its own frame number (`DOMID_SELF`). The backend issues the
//! descriptors in one hypercall and answers `BLKIF_RSP_ERROR` unless every status is
//! `GNTST_okay`. Domain 0 never maps the frontend's pages.

use abi::grant_table::{GnttabCopy, GnttabCopyPtr, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF};
use abi::ids::DomId;

use crate::check::Work;
use crate::wire::MAX_SEGMENTS;

/// The most descriptors one request needs: every segment may straddle a disk page.
pub const MAX_COPIES: usize = 2 * MAX_SEGMENTS;

/// The backend's disk pages: the frame number of disk page `index` (4 KiB pages from the
/// VBD's start), or `None` past the end.
pub trait DiskFrames {
    fn frame(&self, index: u64) -> Option<u64>;
}

/// Why a request could not be planned (a backend bug: checked work lies inside the VBD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFrame(pub u64);

/// Fills `out` with the copies `work` needs; returns how many.
pub fn plan(work: &Work, frontend: DomId, disk: &impl DiskFrames, out: &mut [GnttabCopy; MAX_COPIES]) -> Result<usize, NoFrame> {
    let mut n = 0;
    for chunk in work.chunks() {
        let (a, b) = chunk.split_at_vbd_page(4096);
        for piece in [Some(a), b].into_iter().flatten() {
            let page = piece.vbd_offset / 4096;
            let frame = disk.frame(page).ok_or(NoFrame(page))?;
            let theirs = GnttabCopyPtr { u: u64::from(piece.gref), domid: frontend, offset: piece.page_offset, _pad: 0 };
            let ours = GnttabCopyPtr { u: frame, domid: DomId::SELF, offset: (piece.vbd_offset % 4096) as u16, _pad: 0 };
            out[n] = if work.write {
                GnttabCopy { source: theirs, dest: ours, len: piece.len, flags: GNTCOPY_SOURCE_GREF, status: 0, _pad: 0 }
            } else {
                GnttabCopy { source: ours, dest: theirs, len: piece.len, flags: GNTCOPY_DEST_GREF, status: 0, _pad: 0 }
            };
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{check_request, Vbd};
    use crate::wire::{Request, Segment, OP_READ, OP_WRITE};

    struct Frames(u64);
    impl DiskFrames for Frames {
        fn frame(&self, index: u64) -> Option<u64> {
            (index < self.0).then_some(0x1000 + index)
        }
    }

    fn req(operation: u8, sector_number: u64, segs: &[Segment]) -> Request {
        let mut r = Request { operation, nr_segments: segs.len() as u8, id: 1, sector_number, ..Default::default() };
        r.seg[..segs.len()].copy_from_slice(segs);
        r
    }

    #[test]
    fn reads_copy_into_grants_and_writes_out_of_them() {
        let vbd = Vbd { sectors: 128, read_only: false };
        let mut out = [GnttabCopy::default(); MAX_COPIES];
        let seg = Segment { gref: 9, first_sect: 2, last_sect: 7 };
        // Sector 6: bytes 3072..6144 of the disk, two disk pages.
        let w = check_request(&req(OP_READ, 6, &[seg]), &vbd).unwrap();
        let n = plan(&w, DomId(5), &Frames(8), &mut out).unwrap();
        assert_eq!(n, 2);
        assert_eq!(out[0].flags, GNTCOPY_DEST_GREF);
        assert_eq!((out[0].source.u, out[0].source.domid, out[0].source.offset), (0x1000, DomId::SELF, 3072));
        assert_eq!((out[0].dest.u, out[0].dest.domid, out[0].dest.offset, out[0].len), (9, DomId(5), 1024, 1024));
        assert_eq!((out[1].source.u, out[1].source.offset), (0x1001, 0));
        assert_eq!((out[1].dest.offset, out[1].len), (2048, 2048));
        let w = check_request(&req(OP_WRITE, 1, &[seg; 11]), &vbd).unwrap();
        let n = plan(&w, DomId(5), &Frames(16), &mut out).unwrap();
        assert!(n <= MAX_COPIES);
        assert!(out[..n].iter().all(|c| c.flags == GNTCOPY_SOURCE_GREF && c.source.domid == DomId(5) && c.dest.domid == DomId::SELF));
        assert_eq!(out[..n].iter().map(|c| c.len as u32).sum::<u32>(), 11 * 3072);
        assert!(out[..n].iter().all(|c| c.dest.offset as u32 + c.len as u32 <= 4096 && c.source.offset as u32 + c.len as u32 <= 4096));
        // A disk whose frames stop short (a backend bug) is reported, not copied.
        let w = check_request(&req(OP_READ, 40, &[seg]), &vbd).unwrap();
        assert_eq!(plan(&w, DomId(5), &Frames(2), &mut out), Err(NoFrame(5)));
    }
}
