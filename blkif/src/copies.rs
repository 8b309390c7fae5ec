//! A checked request as grant copies (`GNTTABOP_copy`, `grant_table.h`): each chunk cut at
//! the backend's disk pages, the frontend's side named by its grant reference (the
//! hypervisor checks that the frontend granted it, to the backend, writable for a read),
//! the backend's side by its own frame number (`DOMID_SELF`). The backend issues the
//! descriptors in one hypercall and answers `BLKIF_RSP_ERROR` unless every status is
//! `GNTST_okay`. On this path domain 0 never maps the frontend's pages (persistent grants,
//! [`crate::persistent`], are the other path).

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
    plan_from(work, 0, frontend, disk, out)
}

/// The same for a request-sized buffer of the backend's own pages (a disk that moves data
/// through its own DMA buffers): page `index` of `buffer` holds the request's bytes from
/// `index * 4096` on (the request's first sector at the buffer's first byte).
pub fn plan_buffer(work: &Work, frontend: DomId, buffer: &impl DiskFrames, out: &mut [GnttabCopy; MAX_COPIES]) -> Result<usize, NoFrame> {
    plan_buffer_at(work, work.sector_number, frontend, buffer, out)
}

/// The same for a buffer whose byte 0 holds sector `buffer_sector` of the VBD (several
/// requests for consecutive sectors served by one disk request into one buffer). A
/// request that starts before `buffer_sector` is a backend bug, reported as `NoFrame`.
pub fn plan_buffer_at(work: &Work, buffer_sector: u64, frontend: DomId, buffer: &impl DiskFrames, out: &mut [GnttabCopy; MAX_COPIES]) -> Result<usize, NoFrame> {
    if work.sector_number < buffer_sector {
        return Err(NoFrame(0));
    }
    plan_from(work, buffer_sector.saturating_mul(crate::wire::SECTOR_BYTES), frontend, buffer, out)
}

/// Copies for `work` where the backend's byte `origin` of the VBD is byte 0 of `disk`.
fn plan_from(work: &Work, origin: u64, frontend: DomId, disk: &impl DiskFrames, out: &mut [GnttabCopy; MAX_COPIES]) -> Result<usize, NoFrame> {
    let mut n = 0;
    for chunk in work.chunks() {
        let at = crate::check::Chunk { vbd_offset: chunk.vbd_offset - origin, ..chunk };
        let (a, b) = at.split_at_vbd_page(4096);
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

    #[test]
    fn buffer_copies_start_at_the_requests_first_sector() {
        let vbd = Vbd { sectors: 1 << 20, read_only: false };
        let mut out = [GnttabCopy::default(); MAX_COPIES];
        // 11 whole pages from sector 6 (not page-aligned on the VBD): in the buffer they
        // are whole pages again, one copy each.
        let segs: [Segment; 11] = core::array::from_fn(|i| Segment { gref: 20 + i as u32, first_sect: 0, last_sect: 7 });
        let w = check_request(&req(OP_READ, 6, &segs), &vbd).unwrap();
        let n = plan_buffer(&w, DomId(5), &Frames(11), &mut out).unwrap();
        assert_eq!(n, 11);
        for (i, c) in out[..n].iter().enumerate() {
            assert_eq!((c.source.u, c.source.offset, c.dest.u, c.dest.offset, c.len), (0x1000 + i as u64, 0, 20 + i as u64, 0, 4096));
        }
        // Sub-page segments: the buffer fills from byte 0, cut at its pages.
        let seg = Segment { gref: 9, first_sect: 2, last_sect: 7 };
        let w = check_request(&req(OP_WRITE, 1_000_001, &[seg; 3]), &vbd).unwrap();
        let n = plan_buffer(&w, DomId(5), &Frames(5), &mut out).unwrap();
        let mut at = 0u32;
        for c in &out[..n] {
            assert_eq!(c.dest.u * 4096 + u64::from(c.dest.offset), 0x1000 * 4096 + u64::from(at));
            assert!(c.dest.offset as u32 + c.len as u32 <= 4096);
            at += u32::from(c.len);
        }
        assert_eq!(at, 3 * 3072);
        // A buffer too small (a backend bug) is reported.
        let w = check_request(&req(OP_READ, 6, &segs), &vbd).unwrap();
        assert_eq!(plan_buffer(&w, DomId(5), &Frames(10), &mut out), Err(NoFrame(10)));
    }

    #[test]
    fn a_second_request_lands_after_the_first_in_a_shared_buffer() {
        let vbd = Vbd { sectors: 1 << 20, read_only: false };
        let mut out = [GnttabCopy::default(); MAX_COPIES];
        let segs: [Segment; 5] = core::array::from_fn(|i| Segment { gref: 40 + i as u32, first_sect: 0, last_sect: 7 });
        // The second half of a 64 KiB read at sector 1000: 11 pages (88 sectors) in.
        let w = check_request(&req(OP_READ, 1088, &segs), &vbd).unwrap();
        let n = plan_buffer_at(&w, 1000, DomId(5), &Frames(16), &mut out).unwrap();
        assert_eq!(n, 5);
        for (i, c) in out[..n].iter().enumerate() {
            assert_eq!((c.source.u, c.source.offset, c.dest.u, c.len), (0x1000 + 11 + i as u64, 0, 40 + i as u64, 4096));
        }
        // Past the buffer's end, or before its start: reported, not copied.
        assert_eq!(plan_buffer_at(&w, 1000, DomId(5), &Frames(15), &mut out), Err(NoFrame(15)));
        assert_eq!(plan_buffer_at(&w, 1089, DomId(5), &Frames(16), &mut out), Err(NoFrame(0)));
    }
}
