//! The blkif ring entries as `io/blkif.h` lays them out, with their byte codecs.
//!
//! The `#[repr(C)]` structs mirror the C ones field for field (checked against the header
//! by `tests/xen_headers_blkif.rs`); the codecs read and write each field at its
//! `offset_of!`, so every byte string the other end writes decodes to some value.

use core::mem::{offset_of, size_of};

use xenring::Entry;

/// `BLKIF_OP_READ`.
pub const OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`.
pub const OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER` (not offered: answered `BLKIF_RSP_EOPNOTSUPP`).
pub const OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`.
pub const OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_RESERVED_1`.
pub const OP_RESERVED_1: u8 = 4;
/// `BLKIF_OP_DISCARD` (not offered).
pub const OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT` (not offered: no `feature-max-indirect-segments`).
pub const OP_INDIRECT: u8 = 6;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`.
pub const MAX_SEGMENTS: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
pub const MAX_INDIRECT_PAGES: usize = 8;
/// `BLKIF_DISCARD_SECURE`.
pub const DISCARD_SECURE: u8 = 1;

/// `BLKIF_RSP_OKAY`.
pub const RSP_OKAY: i16 = 0;
/// `BLKIF_RSP_ERROR`.
pub const RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_EOPNOTSUPP`.
pub const RSP_EOPNOTSUPP: i16 = -2;

/// `VDISK_CDROM`.
pub const VDISK_CDROM: u32 = 1;
/// `VDISK_REMOVABLE`.
pub const VDISK_REMOVABLE: u32 = 2;
/// `VDISK_READONLY`.
pub const VDISK_READONLY: u32 = 4;

/// The sector every sector-based field counts in (no `feature-large-sector-size`).
pub const SECTOR_BYTES: u64 = 512;
/// Sectors in one 4 KiB page: `first_sect`/`last_sect` lie in `0..SECTORS_PER_PAGE`.
pub const SECTORS_PER_PAGE: u8 = 8;

/// `struct blkif_request_segment`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// `gref`: the grant of the page holding the data.
    pub gref: u32,
    /// `first_sect`: first sector of the page to transfer (inclusive).
    pub first_sect: u8,
    /// `last_sect`: last sector of the page to transfer (inclusive).
    pub last_sect: u8,
}

/// `struct blkif_request`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `operation`: `BLKIF_OP_*`.
    pub operation: u8,
    /// `nr_segments`.
    pub nr_segments: u8,
    /// `handle`: the virtual device (ignored: one ring serves one VBD).
    pub handle: u16,
    /// `id`: the frontend's value, echoed in the response.
    pub id: u64,
    /// `sector_number`: the first sector on the VBD.
    pub sector_number: u64,
    /// `seg`.
    pub seg: [Segment; MAX_SEGMENTS],
}

/// `struct blkif_request_discard` (laid out for the header check; never served).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestDiscard {
    pub operation: u8,
    pub flag: u8,
    pub handle: u16,
    pub id: u64,
    pub sector_number: u64,
    pub nr_sectors: u64,
}

/// `struct blkif_request_indirect` (x86_64 form; laid out for the header check; never
/// served).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestIndirect {
    pub operation: u8,
    pub indirect_op: u8,
    pub nr_segments: u16,
    pub id: u64,
    pub sector_number: u64,
    pub handle: u16,
    pub indirect_grefs: [u32; MAX_INDIRECT_PAGES],
}

/// `struct blkif_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// `id`: copied from the request.
    pub id: u64,
    /// `operation`: copied from the request.
    pub operation: u8,
    /// `status`: `BLKIF_RSP_*`.
    pub status: i16,
}

fn get<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

impl Entry for Request {
    const SIZE: usize = size_of::<Request>();
    fn decode(b: &[u8]) -> Self {
        let mut seg = [Segment::default(); MAX_SEGMENTS];
        for (i, s) in seg.iter_mut().enumerate() {
            let at = offset_of!(Request, seg) + i * size_of::<Segment>();
            *s = Segment {
                gref: u32::from_le_bytes(get(b, at + offset_of!(Segment, gref))),
                first_sect: b[at + offset_of!(Segment, first_sect)],
                last_sect: b[at + offset_of!(Segment, last_sect)],
            };
        }
        Self {
            operation: b[offset_of!(Request, operation)],
            nr_segments: b[offset_of!(Request, nr_segments)],
            handle: u16::from_le_bytes(get(b, offset_of!(Request, handle))),
            id: u64::from_le_bytes(get(b, offset_of!(Request, id))),
            sector_number: u64::from_le_bytes(get(b, offset_of!(Request, sector_number))),
            seg,
        }
    }
    fn encode(&self, out: &mut [u8]) {
        out[..Self::SIZE].fill(0);
        out[offset_of!(Request, operation)] = self.operation;
        out[offset_of!(Request, nr_segments)] = self.nr_segments;
        let at = offset_of!(Request, handle);
        out[at..at + 2].copy_from_slice(&self.handle.to_le_bytes());
        let at = offset_of!(Request, id);
        out[at..at + 8].copy_from_slice(&self.id.to_le_bytes());
        let at = offset_of!(Request, sector_number);
        out[at..at + 8].copy_from_slice(&self.sector_number.to_le_bytes());
        for (i, s) in self.seg.iter().enumerate() {
            let at = offset_of!(Request, seg) + i * size_of::<Segment>();
            let g = at + offset_of!(Segment, gref);
            out[g..g + 4].copy_from_slice(&s.gref.to_le_bytes());
            out[at + offset_of!(Segment, first_sect)] = s.first_sect;
            out[at + offset_of!(Segment, last_sect)] = s.last_sect;
        }
    }
}

impl Entry for Response {
    const SIZE: usize = size_of::<Response>();
    fn decode(b: &[u8]) -> Self {
        Self {
            id: u64::from_le_bytes(get(b, offset_of!(Response, id))),
            operation: b[offset_of!(Response, operation)],
            status: i16::from_le_bytes(get(b, offset_of!(Response, status))),
        }
    }
    fn encode(&self, out: &mut [u8]) {
        out[..Self::SIZE].fill(0);
        let at = offset_of!(Response, id);
        out[at..at + 8].copy_from_slice(&self.id.to_le_bytes());
        out[offset_of!(Response, operation)] = self.operation;
        let at = offset_of!(Response, status);
        out[at..at + 2].copy_from_slice(&self.status.to_le_bytes());
    }
}

const _: () = assert!(size_of::<Request>() == 112);
const _: () = assert!(size_of::<Response>() == 16);
const _: () = assert!(size_of::<Segment>() == 8);

/// The blkif ring's geometry in `pages` pages (32 slots per page, as `BLK_RING_SIZE`).
pub fn ring_layout(pages: usize) -> Result<xenring::Layout, xenring::LayoutError> {
    xenring::Layout::for_entries::<Request, Response>(pages)
}
