//! The backend's checking of a request against the VBD it was sent to: the operation, the
//! segment count, each segment's sectors within its page and in order, the whole range
//! within the VBD, and writes refused on a read-only VBD. What passes is [`Work`] whose every
//! byte lies inside the VBD and inside one granted page; what does not is a [`Refusal`]
//! carrying the response to send. Nothing here panics, whatever the request holds.

use crate::wire::{
    Request, Response, Segment, MAX_SEGMENTS, OP_DISCARD, OP_FLUSH_DISKCACHE, OP_INDIRECT, OP_READ, OP_RESERVED_1,
    OP_WRITE, OP_WRITE_BARRIER, RSP_EOPNOTSUPP, RSP_ERROR, RSP_OKAY, SECTORS_PER_PAGE, SECTOR_BYTES,
};

/// What the backend knows of the VBD a ring serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vbd {
    /// Its size in 512-byte sectors (the `sectors` key).
    pub sectors: u64,
    /// Whether writes are refused (`mode` = `r`).
    pub read_only: bool,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// An operation `io/blkif.h` does not define.
    UnknownOperation(u8),
    /// An operation defined but not offered here (barrier, discard, indirect, reserved):
    /// the backend did not advertise it.
    NotOffered(u8),
    /// A read or write with no segment.
    NoSegments,
    /// More than `BLKIF_MAX_SEGMENTS_PER_REQUEST` segments.
    TooManySegments(u8),
    /// A segment whose sectors are out of order or past its page.
    BadSegment { index: u8, first_sect: u8, last_sect: u8 },
    /// Sectors past the end of the VBD.
    PastEnd { sector_number: u64, sectors: u64, vbd_sectors: u64 },
    /// A write to a read-only VBD.
    ReadOnly,
}

/// A refused request: the response to send, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The response (the request's id and operation, an error status).
    pub response: Response,
    /// Why.
    pub reason: Reason,
}

/// One contiguous piece of a transfer: `len` bytes at `page_offset` in the page that
/// `gref` grants, and at `vbd_offset` on the VBD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub gref: u32,
    pub page_offset: u16,
    pub vbd_offset: u64,
    pub len: u16,
}

impl Chunk {
    /// The chunk cut where it crosses a `page`-byte boundary of the VBD (a backend whose
    /// disk lives in pages copies each piece to or from one of its own pages): one piece, or
    /// two when the chunk straddles a boundary (a chunk is at most one page long).
    pub fn split_at_vbd_page(&self, page: u64) -> (Chunk, Option<Chunk>) {
        let room = page - self.vbd_offset % page;
        if u64::from(self.len) <= room {
            return (*self, None);
        }
        let first = Chunk { len: room as u16, ..*self };
        let second = Chunk {
            gref: self.gref,
            page_offset: self.page_offset + room as u16,
            vbd_offset: self.vbd_offset + room,
            len: self.len - room as u16,
        };
        (first, Some(second))
    }
}

/// A checked request the backend may perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    /// The request's id and operation (echoed in the response).
    pub id: u64,
    pub operation: u8,
    /// Data moves from the frontend's pages to the VBD (write, or flush with data).
    pub write: bool,
    /// The VBD's contents are made durable once the data has moved (flush).
    pub flush: bool,
    /// The first sector.
    pub sector_number: u64,
    nr_segments: u8,
    seg: [Segment; MAX_SEGMENTS],
}

impl Work {
    /// The pieces to move, in VBD order (none for a flush without data).
    pub fn chunks(&self) -> impl Iterator<Item = Chunk> + '_ {
        let mut vbd = self.sector_number * SECTOR_BYTES;
        self.seg[..self.nr_segments as usize].iter().map(move |s| {
            let sectors = u64::from(s.last_sect - s.first_sect) + 1;
            let chunk = Chunk {
                gref: s.gref,
                page_offset: u16::from(s.first_sect) * SECTOR_BYTES as u16,
                vbd_offset: vbd,
                len: (sectors * SECTOR_BYTES) as u16,
            };
            vbd += sectors * SECTOR_BYTES;
            chunk
        })
    }

    /// The number of data segments.
    pub fn segments(&self) -> usize {
        self.nr_segments as usize
    }

    /// The response for this work: `status` is `BLKIF_RSP_OKAY` or `BLKIF_RSP_ERROR` (a
    /// grant copy failed).
    pub fn response(&self, ok: bool) -> Response {
        Response { id: self.id, operation: self.operation, status: if ok { RSP_OKAY } else { RSP_ERROR } }
    }
}

/// Checks `req` against `vbd`.
pub fn check_request(req: &Request, vbd: &Vbd) -> Result<Work, Refusal> {
    let refuse = |status: i16, reason: Reason| Refusal {
        response: Response { id: req.id, operation: req.operation, status },
        reason,
    };
    let (write, flush) = match req.operation {
        OP_READ => (false, false),
        OP_WRITE => (true, false),
        // A flush may carry data (Linux's blkfront sends REQ_PREFLUSH|REQ_FUA writes as one):
        // the data is written, then made durable.
        OP_FLUSH_DISKCACHE => (req.nr_segments != 0, true),
        op @ (OP_WRITE_BARRIER | OP_RESERVED_1 | OP_DISCARD | OP_INDIRECT) => {
            return Err(refuse(RSP_EOPNOTSUPP, Reason::NotOffered(op)))
        }
        op => return Err(refuse(RSP_EOPNOTSUPP, Reason::UnknownOperation(op))),
    };
    let n = req.nr_segments;
    if n as usize > MAX_SEGMENTS {
        return Err(refuse(RSP_ERROR, Reason::TooManySegments(n)));
    }
    if n == 0 && !flush {
        return Err(refuse(RSP_ERROR, Reason::NoSegments));
    }
    if write && vbd.read_only {
        return Err(refuse(RSP_ERROR, Reason::ReadOnly));
    }
    let mut sectors = 0u64;
    for (i, s) in req.seg[..n as usize].iter().enumerate() {
        if s.first_sect > s.last_sect || s.last_sect >= SECTORS_PER_PAGE {
            return Err(refuse(
                RSP_ERROR,
                Reason::BadSegment { index: i as u8, first_sect: s.first_sect, last_sect: s.last_sect },
            ));
        }
        sectors += u64::from(s.last_sect - s.first_sect) + 1;
    }
    let end = req.sector_number.checked_add(sectors);
    if n != 0 && end.is_none_or(|end| end > vbd.sectors.min(u64::MAX / SECTOR_BYTES)) {
        return Err(refuse(
            RSP_ERROR,
            Reason::PastEnd { sector_number: req.sector_number, sectors, vbd_sectors: vbd.sectors },
        ));
    }
    Ok(Work {
        id: req.id,
        operation: req.operation,
        write,
        flush,
        sector_number: if n == 0 { 0 } else { req.sector_number },
        nr_segments: n,
        seg: req.seg,
    })
}
