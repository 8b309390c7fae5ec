//! Machine addresses and frame numbers.
//!
//! Newtypes that keep a machine frame number ([`Mfn`]), a guest pseudo-physical frame
//! number ([`Pfn`]) and a machine byte address ([`MachineAddr`]) apart, plus the page
//! arithmetic every other module of this crate uses. Everything here is plain integer
//! arithmetic: this module never touches memory and never panics on any input.

use core::fmt;

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// Size of a base page in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask of the offset-within-page bits of an address.
pub const PAGE_OFFSET_MASK: u64 = PAGE_SIZE - 1;

/// Rounds `value` down to a multiple of [`PAGE_SIZE`].
pub const fn page_align_down(value: u64) -> u64 {
    value & !PAGE_OFFSET_MASK
}

/// Rounds `value` up to a multiple of [`PAGE_SIZE`]; `None` if that overflows `u64`.
pub const fn page_align_up(value: u64) -> Option<u64> {
    match value.checked_add(PAGE_OFFSET_MASK) {
        Some(bumped) => Some(page_align_down(bumped)),
        None => None,
    }
}

/// Number of pages needed to hold `bytes` bytes (rounding up).
pub const fn pages_for(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE)
}

/// A machine (host-physical) byte address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineAddr(pub u64);

impl MachineAddr {
    /// The frame holding this address.
    pub const fn mfn(self) -> Mfn {
        Mfn(self.0 >> PAGE_SHIFT)
    }

    /// Offset of this address within its page.
    pub const fn page_offset(self) -> u64 {
        self.0 & PAGE_OFFSET_MASK
    }

    /// Whether this address is the first byte of a page.
    pub const fn is_page_aligned(self) -> bool {
        self.page_offset() == 0
    }
}

/// A machine frame number: a machine address divided by [`PAGE_SIZE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mfn(pub u64);

impl Mfn {
    /// The frame holding `addr` (the page offset is dropped).
    pub const fn from_addr(addr: MachineAddr) -> Mfn {
        addr.mfn()
    }

    /// Address of the first byte of this frame.
    ///
    /// Frame numbers above 2^52 would overflow; the hardware limit is 2^40 frames, and
    /// such frames are never produced by this crate, so the bits shifted out are dropped.
    pub const fn addr(self) -> MachineAddr {
        MachineAddr(self.0 << PAGE_SHIFT)
    }
}

/// A guest pseudo-physical frame number: an index into a domain's own view of its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

macro_rules! display_hex {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    )*};
}
display_hex!(MachineAddr, Mfn, Pfn);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_address_round_trip() {
        let addr = MachineAddr(0x12_3456);
        assert_eq!(addr.mfn(), Mfn(0x123));
        assert_eq!(Mfn::from_addr(addr), Mfn(0x123));
        assert_eq!(addr.page_offset(), 0x456);
        assert_eq!(Mfn(0x123).addr(), MachineAddr(0x12_3000));
        assert!(Mfn(0x123).addr().is_page_aligned());
        assert!(!addr.is_page_aligned());
    }

    #[test]
    fn alignment_helpers() {
        assert_eq!(page_align_down(0x1fff), 0x1000);
        assert_eq!(page_align_down(0x2000), 0x2000);
        assert_eq!(page_align_up(0x1001), Some(0x2000));
        assert_eq!(page_align_up(0x1000), Some(0x1000));
        assert_eq!(page_align_up(0), Some(0));
        assert_eq!(page_align_up(u64::MAX), None);
        assert_eq!(
            page_align_up(u64::MAX - PAGE_SIZE * 2),
            Some(u64::MAX - 2 * PAGE_SIZE + 1)
        );
        assert_eq!(pages_for(0), 0);
        assert_eq!(pages_for(1), 1);
        assert_eq!(pages_for(4096), 1);
        assert_eq!(pages_for(4097), 2);
        assert_eq!(pages_for(u64::MAX), 1 << 52);
    }

    #[test]
    fn display_is_hex() {
        assert_eq!(Mfn(255).to_string(), "0xff");
        assert_eq!(Pfn(16).to_string(), "0x10");
        assert_eq!(MachineAddr(0xdead_b000).to_string(), "0xdeadb000");
    }
}
