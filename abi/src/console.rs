//! The console ring page (`struct xencons_interface`, io/console.h): the page a domain's
//! builder names in `start_info.console.domU.mfn`, with an input ring (to the guest) and an
//! output ring (from the guest), each a power-of-two array indexed by free-running 32-bit
//! counters, and the index arithmetic both ends use.
//!
//! The guest produces output (`out_prod`) and the other end consumes it (`out_cons`); the
//! other end produces input (`in_prod`) and the guest consumes it (`in_cons`). Either side
//! may write its indices to anything, so the reader of a ring checks that the producer is
//! at most one ring ahead ([`pending`]) before it reads a byte. This module must never
//! touch memory: it holds the layout and the arithmetic.

use crate::macros::assert_layout;

/// Bytes in the input ring.
pub const IN_RING_SIZE: u32 = 1024;
/// Bytes in the output ring.
pub const OUT_RING_SIZE: u32 = 2048;

/// `struct xencons_interface` (3088 bytes at the start of the page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct XenconsInterface {
    /// Input ring: bytes for the guest.
    pub input: [u8; IN_RING_SIZE as usize],
    /// Output ring: bytes from the guest.
    pub output: [u8; OUT_RING_SIZE as usize],
    pub in_cons: u32,
    pub in_prod: u32,
    pub out_cons: u32,
    pub out_prod: u32,
}

assert_layout!(XenconsInterface, size = 3088, {
    input @ 0, output @ 1024, in_cons @ 3072, in_prod @ 3076, out_cons @ 3080, out_prod @ 3084,
});

impl Default for XenconsInterface {
    fn default() -> Self {
        Self {
            input: [0; IN_RING_SIZE as usize],
            output: [0; OUT_RING_SIZE as usize],
            in_cons: 0,
            in_prod: 0,
            out_cons: 0,
            out_prod: 0,
        }
    }
}

/// Byte offsets of the indices in the page, for an end that reads them one at a time.
pub const IN_CONS_OFFSET: usize = 3072;
pub const IN_PROD_OFFSET: usize = 3076;
pub const OUT_CONS_OFFSET: usize = 3080;
pub const OUT_PROD_OFFSET: usize = 3084;
/// Offset of the output ring in the page.
pub const OUT_RING_OFFSET: usize = 1024;

/// Bytes waiting in a ring of `size` bytes between `cons` and `prod`; `None` when the
/// indices are more than a ring apart (a producer that ran past the consumer, or indices
/// written at random): nothing of such a ring may be read.
pub const fn pending(cons: u32, prod: u32, size: u32) -> Option<u32> {
    let waiting = prod.wrapping_sub(cons);
    if waiting > size {
        None
    } else {
        Some(waiting)
    }
}

/// Room left for the producer in a ring of `size` bytes; `None` as for [`pending`].
pub const fn room(cons: u32, prod: u32, size: u32) -> Option<u32> {
    match pending(cons, prod, size) {
        Some(waiting) => Some(size - waiting),
        None => None,
    }
}

/// The array index of ring counter `index` in a ring of `size` bytes (a power of two).
pub const fn slot(index: u32, size: u32) -> usize {
    (index & (size - 1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_wrap_at_32_bits() {
        assert_eq!(pending(0, 0, OUT_RING_SIZE), Some(0));
        assert_eq!(pending(10, 2058, OUT_RING_SIZE), Some(2048));
        assert_eq!(pending(u32::MAX - 5, 10, OUT_RING_SIZE), Some(16));
        assert_eq!(room(u32::MAX - 5, 10, OUT_RING_SIZE), Some(2032));
        assert_eq!(slot(u32::MAX, OUT_RING_SIZE), 2047);
        assert_eq!(slot(2048 + 7, OUT_RING_SIZE), 7);
        assert_eq!(slot(1024 + 3, IN_RING_SIZE), 3);
    }

    #[test]
    fn a_producer_more_than_a_ring_ahead_is_refused() {
        assert_eq!(pending(0, 2049, OUT_RING_SIZE), None);
        assert_eq!(
            pending(100, 99, OUT_RING_SIZE),
            None,
            "consumer past the producer"
        );
        assert_eq!(room(0, u32::MAX, OUT_RING_SIZE), None);
        assert_eq!(pending(0, 1025, IN_RING_SIZE), None);
    }

    #[test]
    fn offsets_match_the_struct() {
        assert_eq!(
            core::mem::offset_of!(XenconsInterface, out_cons),
            OUT_CONS_OFFSET
        );
        assert_eq!(
            core::mem::offset_of!(XenconsInterface, out_prod),
            OUT_PROD_OFFSET
        );
        assert_eq!(
            core::mem::offset_of!(XenconsInterface, in_cons),
            IN_CONS_OFFSET
        );
        assert_eq!(
            core::mem::offset_of!(XenconsInterface, in_prod),
            IN_PROD_OFFSET
        );
        assert_eq!(
            core::mem::offset_of!(XenconsInterface, output),
            OUT_RING_OFFSET
        );
    }
}
