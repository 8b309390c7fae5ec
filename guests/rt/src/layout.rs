//! The guest's address-space layout, as the domain builder sets it up and `guest.ld` links
//! the image: where the image lives, how initial virtual addresses map to guest frames, the
//! runtime's own stack size, and the page-table entry bits a PV guest writes.
//!
//! Everything that converts between a virtual address and a frame number goes through
//! here, so that the one layout assumption (the initial mapping is `VIRT_BASE + pfn *
//! 4096`) lives in one place. `guest.ld` repeats [`VIRT_BASE`]; the link fails if they
//! differ. This module only computes: it must never touch memory or page tables.

use abi::ids::{Pfn, PAGE_SHIFT, PAGE_SIZE};

/// Where the image and the whole initial mapping start: the first byte of pfn 0.
/// Top-level slot 511, third-level index 510: the start of the kernel code model's top
/// 2 GiB. Our hypervisor keeps the top 64 MiB, so the initial mapping may span at most
/// `0xFFFF_FFFF_FC00_0000 - VIRT_BASE` bytes (1984 MiB).
pub const VIRT_BASE: u64 = 0xFFFF_FFFF_8000_0000;

/// Size of the stack `_start` switches to (in the image's bss). The builder's boot stack
/// may be a single page (it is in Xen's libxc), too small for formatted panics inside
/// trap handlers.
pub const STACK_SIZE: usize = 32 * 1024;

// ---- Page-table entry bits (x86-64, the ones a PV guest sets itself). ----

/// Present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// User accessible. The guest kernel runs in ring 3, so its own mappings need it; Xen
/// forces it on, and we set it ourselves rather than rely on that.
pub const PTE_USER: u64 = 1 << 2;
/// The bits of an entry that hold the frame's machine address.
pub const PTE_ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// The guest frame a virtual address lies in, under the initial mapping; `None` below
/// [`VIRT_BASE`].
pub const fn virt_to_pfn(virt: u64) -> Option<Pfn> {
    match virt.checked_sub(VIRT_BASE) {
        Some(offset) => Some(Pfn(offset >> PAGE_SHIFT)),
        None => None,
    }
}

/// The initial-mapping virtual address of a guest frame's first byte; `None` when the
/// frame lies beyond the end of the address space.
pub const fn pfn_to_virt(pfn: Pfn) -> Option<u64> {
    match pfn.0.checked_mul(PAGE_SIZE) {
        Some(offset) => VIRT_BASE.checked_add(offset),
        None => None,
    }
}

/// A present, writable leaf entry mapping the page at machine address `maddr` (whose low
/// 12 bits are ignored) for the ring-3 guest kernel.
pub const fn kernel_rw_pte(maddr: u64) -> u64 {
    (maddr & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_WRITABLE | PTE_USER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_base_is_slot_511_index_510() {
        assert_eq!((VIRT_BASE >> 39) & 511, 511);
        assert_eq!((VIRT_BASE >> 30) & 511, 510);
        assert_eq!(VIRT_BASE & 0x3FFF_FFFF, 0);
    }

    #[test]
    fn pfn_and_virt_round_trip() {
        assert_eq!(virt_to_pfn(VIRT_BASE), Some(Pfn(0)));
        assert_eq!(virt_to_pfn(VIRT_BASE + 0x1fff), Some(Pfn(1)));
        assert_eq!(pfn_to_virt(Pfn(3)), Some(VIRT_BASE + 0x3000));
        assert_eq!(
            virt_to_pfn(pfn_to_virt(Pfn(1234)).unwrap()),
            Some(Pfn(1234))
        );
    }

    #[test]
    fn addresses_outside_the_mapping_are_refused() {
        assert_eq!(virt_to_pfn(VIRT_BASE - 1), None);
        assert_eq!(virt_to_pfn(0), None);
        assert_eq!(
            pfn_to_virt(Pfn(1 << 19)),
            None,
            "2 GiB past VIRT_BASE wraps"
        );
        assert_eq!(pfn_to_virt(Pfn(u64::MAX)), None);
        assert_eq!(pfn_to_virt(Pfn((1 << 19) - 1)), Some(u64::MAX - 0xfff));
    }

    #[test]
    fn kernel_pte_keeps_only_the_frame_address() {
        assert_eq!(kernel_rw_pte(0x1234_5000), 0x1234_5007);
        assert_eq!(kernel_rw_pte(0x1234_5fff), 0x1234_5007);
        assert_eq!(
            kernel_rw_pte(u64::MAX),
            PTE_ADDRESS_MASK | 7,
            "no NX, no high bits"
        );
    }
}
