//! x86-64 page-table entries: the meaning of every bit of a 4-level entry (Intel SDM
//! vol. 3A, section 4.5) as [`PteFlags`], and the [`Pte`] newtype that reads them.
//!
//! Every other module of this crate names entry bits through [`PteFlags`] and
//! [`ADDRESS_MASK`]. This
//! module is bit arithmetic only: it never decides whether an entry is allowed (that is
//! [`crate::policy`]) and never reads or writes a table.

use bitflags::bitflags;
use mm::addr::{Mfn, PAGE_SHIFT};

/// Entries in one table of any level.
pub const ENTRIES: usize = 512;

bitflags! {
    /// The bits of an entry outside its address field, by name. Every such bit has a name
    /// (the groups partition the entry with [`ADDRESS_MASK`]), so a guest's raw value
    /// converts with `from_bits_retain` and loses nothing.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PteFlags: u64 {
        /// P: the entry maps something; when clear, the other 63 bits are the guest's to use.
        const PRESENT = 1 << 0;
        /// R/W: writes are allowed through this entry.
        const WRITABLE = 1 << 1;
        /// U/S: user-mode (CPL 3) accesses are allowed through this entry.
        const USER = 1 << 2;
        /// PWT: write-through caching (a PAT index bit in leaf entries).
        const WRITE_THROUGH = 1 << 3;
        /// PCD: caching disabled (a PAT index bit in leaf entries).
        const CACHE_DISABLE = 1 << 4;
        /// A: set by the processor when the entry is used for a translation.
        const ACCESSED = 1 << 5;
        /// D: set by the processor on a write through a leaf entry.
        const DIRTY = 1 << 6;
        /// PS in L2 and L3 entries: the entry maps a 2 MiB or 1 GiB page. Reserved in L4
        /// entries.
        const HUGE_PAGE = 1 << 7;
        /// PAT in L1 entries: the third PAT index bit. The same bit as `HUGE_PAGE`.
        const PAT_4K = 1 << 7;
        /// G: the translation survives CR3 loads (leaf entries, with CR4.PGE).
        const GLOBAL = 1 << 8;
        /// Bits 9-11: ignored by the processor, free for software.
        const AVAILABLE_LOW = 0b111 << 9;
        /// Bits 52-62: ignored by the processor (protection keys use 59-62 only with
        /// CR4.PKE).
        const AVAILABLE_HIGH = 0x7FF << 52;
        /// XD/NX: instruction fetches are not allowed through this entry (needs EFER.NXE).
        const NO_EXECUTE = 1 << 63;
    }
}

/// Bits 12-51: the machine address of the mapped page or next-level table.
pub const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// One page-table entry of any level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pte(pub u64);

impl Pte {
    /// The all-zero entry: not present.
    pub const EMPTY: Pte = Pte(0);

    /// An entry pointing at `mfn` with `flags`.
    pub const fn new(mfn: Mfn, flags: PteFlags) -> Pte {
        Pte(((mfn.0 << PAGE_SHIFT) & ADDRESS_MASK) | (flags.bits() & !ADDRESS_MASK))
    }

    /// The raw 64-bit value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Whether the P bit is set.
    pub const fn is_present(self) -> bool {
        self.flags().contains(PteFlags::PRESENT)
    }

    /// Whether the R/W bit is set.
    pub const fn is_writable(self) -> bool {
        self.flags().contains(PteFlags::WRITABLE)
    }

    /// The frame the address field names.
    pub const fn mfn(self) -> Mfn {
        Mfn((self.0 & ADDRESS_MASK) >> PAGE_SHIFT)
    }

    /// Every bit except the address field.
    pub const fn flags(self) -> PteFlags {
        PteFlags::from_bits_retain(self.0 & !ADDRESS_MASK)
    }

    /// The same entry with `flags` set.
    pub const fn with(self, flags: PteFlags) -> Pte {
        Pte(self.0 | flags.bits())
    }

    /// The same entry with `flags` cleared.
    pub const fn without(self, flags: PteFlags) -> Pte {
        Pte(self.0 & !flags.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_groups_partition_the_entry() {
        let groups = [
            PteFlags::PRESENT.bits(),
            PteFlags::WRITABLE.bits(),
            PteFlags::USER.bits(),
            PteFlags::WRITE_THROUGH.bits(),
            PteFlags::CACHE_DISABLE.bits(),
            PteFlags::ACCESSED.bits(),
            PteFlags::DIRTY.bits(),
            PteFlags::HUGE_PAGE.bits(),
            PteFlags::GLOBAL.bits(),
            PteFlags::AVAILABLE_LOW.bits(),
            ADDRESS_MASK,
            PteFlags::AVAILABLE_HIGH.bits(),
            PteFlags::NO_EXECUTE.bits(),
        ];
        let mut seen = 0u64;
        for group in groups {
            assert_eq!(seen & group, 0, "{group:#x} overlaps another group");
            seen |= group;
        }
        assert_eq!(seen, u64::MAX);
        assert_eq!(PteFlags::all().bits(), !ADDRESS_MASK);
    }

    #[test]
    fn accessors_read_the_right_bits() {
        let flags = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::NO_EXECUTE;
        let pte = Pte::new(Mfn(0x12_3456), flags);
        assert_eq!(pte.raw(), 0x8000_0001_2345_6003);
        assert_eq!(pte.mfn(), Mfn(0x12_3456));
        assert!(pte.is_present() && pte.is_writable());
        assert_eq!(pte.flags(), flags);
        assert!(!pte.without(PteFlags::PRESENT).is_present());
        assert_eq!(pte.with(PteFlags::USER).flags(), flags | PteFlags::USER);
        assert_eq!(Pte::EMPTY.mfn(), Mfn(0));
    }

    #[test]
    fn new_keeps_address_and_flags_apart() {
        // A frame number too wide for the address field loses its high bits instead of
        // spilling into the flag bits, and address bits in `flags` are ignored.
        let pte = Pte::new(Mfn(u64::MAX), PteFlags::from_bits_retain(ADDRESS_MASK));
        assert_eq!(pte.flags(), PteFlags::empty());
        assert_eq!(pte.mfn(), Mfn(ADDRESS_MASK >> PAGE_SHIFT));
    }
}
