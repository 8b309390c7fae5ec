//! The Xen ELF notes (elfnote.h): note type numbers, which of them carry strings, and
//! decoders of a note's desc bytes.
//!
//! The hypervisor's domain builder (and its own PVH boot stub's build) use these to read a
//! kernel's notes; our guests' linker scripts emit them. A Xen note has the name "Xen" and
//! lives in a PT_NOTE segment (or, failing that, an SHT_NOTE section). This module decodes
//! single notes only: it must never walk an ELF file.

use crate::macros::abi_enum;

/// The note name of every Xen note, NUL included (namesz 4).
pub const XEN_NOTE_NAME: &[u8] = b"Xen\0";

abi_enum! {
    /// A Xen ELF note type (`XEN_ELFNOTE_*`).
    pub enum ElfNote: u32 {
        /// String: NAME=VALUE pair.
        Info = 0,
        /// Numeric: virtual entry point (default: e_entry).
        Entry = 1,
        /// Numeric: virtual address of the hypercall page.
        HypercallPage = 2,
        /// Numeric: virtual address the image is mapped at (default 0).
        VirtBase = 3,
        /// Numeric: offset of ELF paddr from the pseudo-physical address (default 0).
        PaddrOffset = 4,
        /// String: Xen version the kernel works with ("xen-3.0").
        XenVersion = 5,
        /// String: guest OS name.
        GuestOs = 6,
        /// String: guest OS version.
        GuestVersion = 7,
        /// String: loader type ("generic").
        Loader = 8,
        /// String: PAE support (x86-32 only).
        PaeMode = 9,
        /// String: supported/required features, see [`crate::features::GuestFeatures`].
        Features = 10,
        /// String: "yes" to load the symbol table.
        BsdSymtab = 11,
        /// Numeric: lowest address the hypervisor hole may start at.
        HvStartLow = 12,
        /// Numeric array: mask/value pairs recognising L1 entries with valid MFNs.
        L1MfnValid = 13,
        /// Numeric: cooperative suspend cancellation supported.
        SuspendCancel = 14,
        /// Numeric: virtual address to place the initial P2M at.
        InitP2m = 15,
        /// Numeric: the initrd may be passed unmapped, as a PFN.
        ModStartPfn = 16,
        /// Numeric: feature bitmap, ORed into the `Features` note's supported set.
        SupportedFeatures = 17,
        /// Numeric: 32-bit physical PVH entry point.
        Phys32Entry = 18,
        /// Numeric array: PVH relocation constraints (alignment, min, max).
        Phys32Reloc = 19,
    }
}

impl ElfNote {
    /// Whether the note's desc is a NUL-terminated string (otherwise it is numeric).
    pub const fn is_string(self) -> bool {
        matches!(
            self,
            Self::Info
                | Self::XenVersion
                | Self::GuestOs
                | Self::GuestVersion
                | Self::Loader
                | Self::PaeMode
                | Self::Features
                | Self::BsdSymtab
        )
    }
}

/// A numeric note's value: a little-endian integer of 1, 2, 4 or 8 bytes. Other desc
/// sizes are malformed (`None`).
pub fn numeric_desc(desc: &[u8]) -> Option<u64> {
    if !matches!(desc.len(), 1 | 2 | 4 | 8) {
        return None;
    }
    let mut bytes = [0u8; 8];
    bytes[..desc.len()].copy_from_slice(desc);
    Some(u64::from_le_bytes(bytes))
}

/// A string note's value: the desc up to its first NUL (all of it if unterminated).
pub fn string_desc(desc: &[u8]) -> &[u8] {
    let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    &desc[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_elfnote_h() {
        assert_eq!(ElfNote::Entry.raw(), 1);
        assert_eq!(ElfNote::HypercallPage.raw(), 2);
        assert_eq!(ElfNote::Features.raw(), 10);
        assert_eq!(ElfNote::SupportedFeatures.raw(), 17);
        assert_eq!(ElfNote::Phys32Entry.raw(), 18);
        assert_eq!(ElfNote::from_raw(20), None);
        assert_eq!(
            ElfNote::from_raw(0x100_0001),
            None,
            "crash notes are not domain notes"
        );
    }

    #[test]
    fn string_and_numeric_kinds() {
        assert!(ElfNote::GuestOs.is_string());
        assert!(ElfNote::Features.is_string());
        assert!(!ElfNote::SupportedFeatures.is_string());
        assert!(!ElfNote::Entry.is_string());
    }

    #[test]
    fn numeric_desc_sizes() {
        assert_eq!(numeric_desc(&[0x78, 0x56, 0x34, 0x12]), Some(0x1234_5678));
        assert_eq!(
            numeric_desc(&0xffff_ffff_8000_0000u64.to_le_bytes()),
            Some(0xffff_ffff_8000_0000)
        );
        assert_eq!(numeric_desc(&[7]), Some(7));
        assert_eq!(numeric_desc(&[]), None);
        assert_eq!(numeric_desc(&[1, 2, 3]), None);
        assert_eq!(numeric_desc(&[0; 16]), None);
    }

    #[test]
    fn string_desc_stops_at_nul() {
        assert_eq!(string_desc(b"linux\0\0\0"), b"linux");
        assert_eq!(string_desc(b"generic"), b"generic");
        assert_eq!(string_desc(b"\0xen"), b"");
    }
}
