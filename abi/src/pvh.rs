//! The PVH start-of-day structures (arch-x86/hvm/start_info.h): what a PVH loader passes
//! in ebx to the 32-bit entry point named by the `PHYS32_ENTRY` ELF note.
//!
//! Our hypervisor reads them on its own PVH boot path (QEMU `-kernel`); a domain builder
//! offering PVH would write them. All addresses are physical and 0 means absent. This
//! module only describes the layouts: it must never follow the addresses it decodes.

use crate::macros::assert_layout;

/// `XEN_HVM_START_MAGIC_VALUE` ("xEn3" with the 0x80 bit of the "E" set).
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// `struct hvm_start_info`, 56 bytes in version 1 (40 in version 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct HvmStartInfo {
    /// [`HVM_START_MAGIC`].
    pub magic: u32,
    /// Structure version; `memmap_*` exist from version 1.
    pub version: u32,
    /// `SIF_*` flags ([`crate::start_info`]).
    pub flags: u32,
    pub nr_modules: u32,
    /// Physical address of `nr_modules` [`HvmModlistEntry`]s.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP.
    pub rsdp_paddr: u64,
    /// Version 1: physical address of `memmap_entries` [`HvmMemmapTableEntry`]s.
    pub memmap_paddr: u64,
    /// Version 1: number of memory map entries (0: no map).
    pub memmap_entries: u32,
    pub reserved: u32,
}

assert_layout!(HvmStartInfo, size = 56, {
    magic @ 0, version @ 4, flags @ 8, nr_modules @ 12, modlist_paddr @ 16,
    cmdline_paddr @ 24, rsdp_paddr @ 32, memmap_paddr @ 40, memmap_entries @ 48,
    reserved @ 52,
});

/// Bytes of [`HvmStartInfo`] present in version 0 (before `memmap_paddr`).
pub const HVM_START_INFO_V0_SIZE: usize = 40;

impl HvmStartInfo {
    /// Whether the magic is right.
    pub const fn has_valid_magic(&self) -> bool {
        self.magic == HVM_START_MAGIC
    }

    /// The memory map's (physical address, entry count), when the structure is version 1
    /// or later and carries a non-empty map.
    pub const fn memmap(&self) -> Option<(u64, u32)> {
        if self.version >= 1 && self.memmap_entries != 0 && self.memmap_paddr != 0 {
            Some((self.memmap_paddr, self.memmap_entries))
        } else {
            None
        }
    }
}

/// One module (`struct hvm_modlist_entry`, 32 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct HvmModlistEntry {
    pub paddr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Physical address of the module's NUL-terminated command line (0: none).
    pub cmdline_paddr: u64,
    pub reserved: u64,
}

assert_layout!(HvmModlistEntry, size = 32, {
    paddr @ 0, size @ 8, cmdline_paddr @ 16, reserved @ 24,
});

/// One memory-map entry (`struct hvm_memmap_table_entry`, 24 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct HvmMemmapTableEntry {
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// A `XEN_HVM_MEMMAP_TYPE_*` value (ACPI address range types).
    pub kind: u32,
    pub reserved: u32,
}

assert_layout!(HvmMemmapTableEntry, size = 24, { addr @ 0, size @ 8, kind @ 16, reserved @ 20 });

/// Usable RAM.
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// Reserved.
pub const XEN_HVM_MEMMAP_TYPE_RESERVED: u32 = 2;
/// ACPI reclaimable.
pub const XEN_HVM_MEMMAP_TYPE_ACPI: u32 = 3;
/// ACPI NVS.
pub const XEN_HVM_MEMMAP_TYPE_NVS: u32 = 4;
/// Unusable.
pub const XEN_HVM_MEMMAP_TYPE_UNUSABLE: u32 = 5;
/// Disabled.
pub const XEN_HVM_MEMMAP_TYPE_DISABLED: u32 = 6;
/// Persistent memory.
pub const XEN_HVM_MEMMAP_TYPE_PMEM: u32 = 7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_spells_xen3() {
        assert_eq!(HVM_START_MAGIC.to_le_bytes(), [0x78, 0xc5, 0x6e, 0x33]);
        assert_eq!(HVM_START_MAGIC.to_le_bytes()[1] & 0x7f, b'E');
        assert!(HvmStartInfo {
            magic: HVM_START_MAGIC,
            ..Default::default()
        }
        .has_valid_magic());
        assert!(!HvmStartInfo::default().has_valid_magic());
    }

    #[test]
    fn memmap_requires_version_1_and_entries() {
        let v1 = HvmStartInfo {
            version: 1,
            memmap_paddr: 0x9000,
            memmap_entries: 3,
            ..Default::default()
        };
        assert_eq!(v1.memmap(), Some((0x9000, 3)));
        assert_eq!(
            HvmStartInfo { version: 0, ..v1 }.memmap(),
            None,
            "v0 has no such fields"
        );
        assert_eq!(
            HvmStartInfo {
                memmap_entries: 0,
                ..v1
            }
            .memmap(),
            None
        );
        assert_eq!(
            HvmStartInfo {
                memmap_paddr: 0,
                ..v1
            }
            .memmap(),
            None
        );
        assert_eq!(
            core::mem::offset_of!(HvmStartInfo, memmap_paddr),
            HVM_START_INFO_V0_SIZE
        );
    }
}
