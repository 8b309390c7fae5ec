//! Where the header and each entry slot of a shared ring lie (`__CONST_RING_SIZE`).

use crate::{header, Entry, RingIdx};

/// The size of a Xen page.
pub const PAGE_BYTES: usize = 4096;
/// The shared header: four indices, 4 private bytes, 44 bytes of padding.
pub const HEADER_BYTES: usize = 64;
/// The largest entry slot this crate copies (a stack buffer of this size holds one).
pub const MAX_ENTRY_BYTES: usize = 256;

/// Why a ring cannot be laid out in the space given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// An entry of zero bytes or more than [`MAX_ENTRY_BYTES`].
    EntrySize(usize),
    /// Not even one entry fits after the header.
    TooSmall { bytes: usize },
}

/// A ring's geometry: how many entry slots (a power of two) of how many bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    entries: u32,
    entry_bytes: usize,
}

impl Layout {
    /// The largest power-of-two number of `entry_bytes` slots that fits in `bytes` after the
    /// header, as `__CONST_RING_SIZE` computes it.
    pub fn new(bytes: usize, entry_bytes: usize) -> Result<Self, LayoutError> {
        if entry_bytes == 0 || entry_bytes > MAX_ENTRY_BYTES {
            return Err(LayoutError::EntrySize(entry_bytes));
        }
        let fit = bytes.saturating_sub(HEADER_BYTES) / entry_bytes;
        if fit == 0 {
            return Err(LayoutError::TooSmall { bytes });
        }
        // Round down to a power of two; the count fits in a RING_IDX (u32) as Xen's __RD32.
        let fit = fit.min(1 << 31);
        let entries = 1u32 << (usize::BITS - 1 - fit.leading_zeros());
        Ok(Self { entries, entry_bytes })
    }

    /// The layout for requests `Req` and responses `Rsp` in `pages` pages: a slot is the
    /// larger of the two, as Xen's entry union.
    pub fn for_entries<Req: Entry, Rsp: Entry>(pages: usize) -> Result<Self, LayoutError> {
        Self::new(pages.saturating_mul(PAGE_BYTES), Req::SIZE.max(Rsp::SIZE))
    }

    /// The number of slots (`RING_SIZE`).
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The bytes of one slot.
    pub fn entry_bytes(&self) -> usize {
        self.entry_bytes
    }

    /// The bytes from the header's start to the end of the last slot.
    pub fn bytes(&self) -> usize {
        HEADER_BYTES + self.entries as usize * self.entry_bytes
    }

    /// The byte offset of the slot that index `idx` names (masked, as `RING_GET_REQUEST`).
    pub fn slot(&self, idx: RingIdx) -> usize {
        HEADER_BYTES + (idx & (self.entries - 1)) as usize * self.entry_bytes
    }
}

/// Offsets of the header fields, for callers that lay a ring out by hand (tests, attacks).
impl Layout {
    pub const REQ_PROD: usize = header::REQ_PROD;
    pub const REQ_EVENT: usize = header::REQ_EVENT;
    pub const RSP_PROD: usize = header::RSP_PROD;
    pub const RSP_EVENT: usize = header::RSP_EVENT;
}
