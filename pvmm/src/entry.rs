//! x86-64 page-table entries: the meaning of every bit of a 4-level entry (Intel SDM
//! vol. 3A, section 4.5) and the [`Pte`] newtype that reads them.
//!
//! Every other module of this crate names entry bits through the constants here. This
//! module is bit arithmetic only: it never decides whether an entry is allowed (that is
//! [`crate::policy`]) and never reads or writes a table.

use mm::addr::{Mfn, PAGE_SHIFT};

/// Entries in one table of any level.
pub const ENTRIES: usize = 512;

/// P: the entry maps something; when clear, the other 63 bits are the guest's to use.
pub const PRESENT: u64 = 1 << 0;
/// R/W: writes are allowed through this entry.
pub const WRITABLE: u64 = 1 << 1;
/// U/S: user-mode (CPL 3) accesses are allowed through this entry.
pub const USER: u64 = 1 << 2;
/// PWT: write-through caching (a PAT index bit in leaf entries).
pub const WRITE_THROUGH: u64 = 1 << 3;
/// PCD: caching disabled (a PAT index bit in leaf entries).
pub const CACHE_DISABLE: u64 = 1 << 4;
/// A: set by the processor when the entry is used for a translation.
pub const ACCESSED: u64 = 1 << 5;
/// D: set by the processor on a write through a leaf entry.
pub const DIRTY: u64 = 1 << 6;
/// PS in L2 and L3 entries: the entry maps a 2 MiB or 1 GiB page. Reserved in L4 entries.
pub const HUGE_PAGE: u64 = 1 << 7;
/// PAT in L1 entries: the third PAT index bit. The same bit as [`HUGE_PAGE`].
pub const PAT_4K: u64 = HUGE_PAGE;
/// G: the translation survives CR3 loads (leaf entries, with CR4.PGE).
pub const GLOBAL: u64 = 1 << 8;
/// Bits 9-11: ignored by the processor, free for software.
pub const AVAILABLE_LOW: u64 = 0b111 << 9;
/// Bits 12-51: the machine address of the mapped page or next-level table.
pub const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Bits 52-62: ignored by the processor (protection keys use 59-62 only with CR4.PKE).
pub const AVAILABLE_HIGH: u64 = 0x7FF << 52;
/// XD/NX: instruction fetches are not allowed through this entry (needs EFER.NXE).
pub const NO_EXECUTE: u64 = 1 << 63;

/// One page-table entry of any level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pte(pub u64);

impl Pte {
    /// The all-zero entry: not present.
    pub const EMPTY: Pte = Pte(0);

    /// An entry pointing at `mfn` with the non-address bits of `flags`.
    pub const fn new(mfn: Mfn, flags: u64) -> Pte {
        Pte(((mfn.0 << PAGE_SHIFT) & ADDRESS_MASK) | (flags & !ADDRESS_MASK))
    }

    /// The raw 64-bit value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Whether the P bit is set.
    pub const fn is_present(self) -> bool {
        self.0 & PRESENT != 0
    }

    /// Whether the R/W bit is set.
    pub const fn is_writable(self) -> bool {
        self.0 & WRITABLE != 0
    }

    /// The frame the address field names.
    pub const fn mfn(self) -> Mfn {
        Mfn((self.0 & ADDRESS_MASK) >> PAGE_SHIFT)
    }

    /// Every bit except the address field.
    pub const fn flags(self) -> u64 {
        self.0 & !ADDRESS_MASK
    }

    /// The same entry with `bits` set.
    pub const fn with(self, bits: u64) -> Pte {
        Pte(self.0 | bits)
    }

    /// The same entry with `bits` cleared.
    pub const fn without(self, bits: u64) -> Pte {
        Pte(self.0 & !bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_groups_partition_the_entry() {
        let groups = [
            PRESENT,
            WRITABLE,
            USER,
            WRITE_THROUGH,
            CACHE_DISABLE,
            ACCESSED,
            DIRTY,
            HUGE_PAGE,
            GLOBAL,
            AVAILABLE_LOW,
            ADDRESS_MASK,
            AVAILABLE_HIGH,
            NO_EXECUTE,
        ];
        let mut seen = 0u64;
        for group in groups {
            assert_eq!(seen & group, 0, "{group:#x} overlaps another group");
            seen |= group;
        }
        assert_eq!(seen, u64::MAX);
    }

    #[test]
    fn accessors_read_the_right_bits() {
        let pte = Pte::new(Mfn(0x12_3456), PRESENT | WRITABLE | NO_EXECUTE);
        assert_eq!(pte.raw(), 0x8000_0001_2345_6003);
        assert_eq!(pte.mfn(), Mfn(0x12_3456));
        assert!(pte.is_present() && pte.is_writable());
        assert_eq!(pte.flags(), PRESENT | WRITABLE | NO_EXECUTE);
        assert!(!pte.without(PRESENT).is_present());
        assert_eq!(
            pte.with(USER).flags(),
            PRESENT | WRITABLE | USER | NO_EXECUTE
        );
        assert_eq!(Pte::EMPTY.mfn(), Mfn(0));
    }

    #[test]
    fn new_keeps_address_and_flags_apart() {
        // A frame number too wide for the address field loses its high bits instead of
        // spilling into the flag bits, and address bits in `flags` are ignored.
        let pte = Pte::new(Mfn(u64::MAX), ADDRESS_MASK);
        assert_eq!(pte.flags(), 0);
        assert_eq!(pte.mfn(), Mfn(ADDRESS_MASK >> PAGE_SHIFT));
    }
}
