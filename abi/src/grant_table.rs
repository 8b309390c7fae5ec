//! Grant tables (grant_table.h): the shared entry formats of versions 1 and 2 and their
//! flags, the `GNTTABOP_*` sub-operations with their argument structs, the `GNTMAP_*`,
//! `GNTCOPY_*` and cache-flush flags, and the per-operation `GNTST_*` status codes.
//!
//! A domain *grants* another domain access to one of its frames by filling an entry of its
//! grant table (frames the hypervisor allocates and the domain maps); the grantee maps
//! the frame (`map_grant_ref`), copies to or from it (`copy`), and the hypervisor marks the
//! entry in use (`GTF_reading`/`GTF_writing`) while it does. The hypervisor's grant code
//! reads and writes these layouts in guest memory; our guests build them. This module only
//! names numbers and layouts: it must never decide what an operation does.

use crate::ids::DomId;
use crate::macros::{abi_enum, assert_layout};

/// A grant reference: the index of an entry in the granting domain's table (`grant_ref_t`).
pub type GrantRef = u32;
/// A mapping handle: the index of an entry in the mapping domain's maptrack
/// (`grant_handle_t`).
pub type GrantHandle = u32;

abi_enum! {
    /// `grant_table_op` commands (`GNTTABOP_*`).
    pub enum GnttabOp: u32 {
        /// arg: `GnttabMapGrantRef[count]`.
        MapGrantRef = 0,
        /// arg: `GnttabUnmapGrantRef[count]`.
        UnmapGrantRef = 1,
        /// arg: `GnttabSetupTable` (count 1).
        SetupTable = 2,
        /// Not in Xen 4.17's dispatcher (ENOSYS there).
        DumpTable = 3,
        /// arg: `GnttabTransfer[count]`.
        Transfer = 4,
        /// arg: `GnttabCopy[count]`.
        Copy = 5,
        /// arg: `GnttabQuerySize` (count 1).
        QuerySize = 6,
        /// arg: `GnttabUnmapAndReplace[count]`.
        UnmapAndReplace = 7,
        /// arg: `GnttabSetVersion`.
        SetVersion = 8,
        /// arg: `GnttabGetStatusFrames` (count 1).
        GetStatusFrames = 9,
        /// arg: `GnttabGetVersion`.
        GetVersion = 10,
        /// arg: `GnttabSwapGrantRef[count]`.
        SwapGrantRef = 11,
        /// arg: `GnttabCacheFlush[count]`.
        CacheFlush = 12,
    }
}

/// Bits of the command word above the command: Xen's continuation argument (used by
/// `cache_flush` only; Xen-internal, but guests see it in their registers after a
/// preemption and must pass it back unchanged).
pub const GNTTABOP_CONTINUATION_ARG_SHIFT: u32 = 12;
/// The command part of the command word.
pub const GNTTABOP_CMD_MASK: u32 = (1 << GNTTABOP_CONTINUATION_ARG_SHIFT) - 1;

impl GnttabOp {
    /// The size of one element of the operation's argument array, for the commands whose
    /// `count` names an array (and whose continuation advances through it); `None` for the
    /// commands that take exactly one struct.
    pub const fn element_size(self) -> Option<u64> {
        let size = match self {
            Self::MapGrantRef => size_of::<GnttabMapGrantRef>(),
            Self::UnmapGrantRef => size_of::<GnttabUnmapGrantRef>(),
            Self::Transfer => size_of::<GnttabTransfer>(),
            Self::Copy => size_of::<GnttabCopy>(),
            Self::UnmapAndReplace => size_of::<GnttabUnmapAndReplace>(),
            Self::SwapGrantRef => size_of::<GnttabSwapGrantRef>(),
            Self::CacheFlush => size_of::<GnttabCacheFlush>(),
            Self::SetupTable
            | Self::DumpTable
            | Self::QuerySize
            | Self::SetVersion
            | Self::GetStatusFrames
            | Self::GetVersion => return None,
        };
        Some(size as u64)
    }
}

abi_enum! {
    /// The status an operation stores in its struct (`GNTST_*`).
    pub enum GntSt: i16 {
        /// Normal return.
        Okay = 0,
        /// General undefined error.
        GeneralError = -1,
        /// Unrecognised domain id.
        BadDomain = -2,
        /// Unrecognised or inappropriate grant reference.
        BadGntref = -3,
        /// Unrecognised or inappropriate handle.
        BadHandle = -4,
        /// Inappropriate virtual address to map.
        BadVirtAddr = -5,
        /// Inappropriate device address to unmap.
        BadDevAddr = -6,
        /// Out of space in the I/O MMU (also: no free maptrack handle).
        NoDeviceSpace = -7,
        /// Not enough privilege for the operation.
        PermissionDenied = -8,
        /// The specified page was invalid for the operation.
        BadPage = -9,
        /// Copy arguments cross a page boundary.
        BadCopyArg = -10,
        /// Transfer page address too large.
        AddressTooBig = -11,
        /// Operation not done; try again.
        Eagain = -12,
        /// Out of space (handles etc).
        NoSpace = -13,
    }
}

// ---- shared entries ------------------------------------------------------------------------

/// Entries 0-7 are reserved for the toolstack (console 0, xenstore 1); `set_version`
/// keeps them across a version change.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// The console's reserved entry.
pub const GNTTAB_RESERVED_CONSOLE: u32 = 0;
/// The store's reserved entry.
pub const GNTTAB_RESERVED_XENSTORE: u32 = 1;

/// `GTF_invalid`: the entry grants nothing.
pub const GTF_INVALID: u16 = 0;
/// `GTF_permit_access`: `domid` may map and access `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_accept_transfer`: `domid` may transfer a frame into this entry.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// `GTF_transitive` (version 2): `domid` may use grant `gref` of `trans_domid` as if it
/// were this domain's (for copies only).
pub const GTF_TRANSITIVE: u16 = 3;
/// The type bits of the flags.
pub const GTF_TYPE_MASK: u16 = 3;
/// The grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// Set by the hypervisor while the grantee reads the frame (version 1: in the entry;
/// version 2: in the status entry).
pub const GTF_READING: u16 = 1 << 3;
/// Set by the hypervisor while the grantee may write the frame.
pub const GTF_WRITING: u16 = 1 << 4;
/// Cache attributes for I/O memory grants.
pub const GTF_PWT: u16 = 1 << 5;
/// Cache attributes for I/O memory grants.
pub const GTF_PCD: u16 = 1 << 6;
/// Cache attributes for I/O memory grants.
pub const GTF_PAT: u16 = 1 << 7;
/// Version 2: the grant covers bytes `page_off..page_off + length` of the frame (copies
/// only).
pub const GTF_SUB_PAGE: u16 = 1 << 8;
/// Transfer entries: the hypervisor committed to the transfer (same bit as
/// [`GTF_READONLY`]).
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// Transfer entries: the transfer completed and `frame` holds the new frame (same bit as
/// [`GTF_READING`]).
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

/// A version-1 entry (`grant_entry_v1_t`, 8 bytes, 512 per frame). `flags` and `domid` are
/// updated together as one 32-bit word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GrantEntryV1 {
    /// `GTF_*`.
    pub flags: u16,
    /// The domain granted access.
    pub domid: DomId,
    /// The frame granted (a machine frame number for a PV granter).
    pub frame: u32,
}

assert_layout!(GrantEntryV1, size = 8, { flags @ 0, domid @ 2, frame @ 4 });

/// The header every version-2 entry starts with (`grant_entry_header_t`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GrantEntryHeader {
    pub flags: u16,
    pub domid: DomId,
}

assert_layout!(GrantEntryHeader, size = 4, { flags @ 0, domid @ 2 });

/// A version-2 entry (`grant_entry_v2_t`, 16 bytes, 256 per frame), as its raw words: the
/// header; then `pad0` (full page), `page_off` and `length` (sub-page) or `trans_domid`
/// (transitive) in `word1`; then `frame` (full page and sub-page) or `gref` in its low 32
/// bits (transitive). Status bits live apart, one `u16` per entry in the status frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GrantEntryV2 {
    pub hdr: GrantEntryHeader,
    pub word1: u32,
    pub frame: u64,
}

assert_layout!(GrantEntryV2, size = 16, { hdr @ 0, word1 @ 4, frame @ 8 });

/// Byte offsets inside one shared entry, per version.
pub mod offsets {
    /// The flags/domid word of either version.
    pub const HEADER: usize = 0;
    /// Version 1: the 32-bit frame.
    pub const V1_FRAME: usize = 4;
    /// Version 2, sub-page grants: the 16-bit offset in the frame.
    pub const V2_PAGE_OFF: usize = 4;
    /// Version 2, sub-page grants: the 16-bit length.
    pub const V2_LENGTH: usize = 6;
    /// Version 2, transitive grants: the 16-bit domain whose grant is used.
    pub const V2_TRANS_DOMID: usize = 4;
    /// Version 2: the 64-bit frame (full page and sub-page grants).
    pub const V2_FRAME: usize = 8;
    /// Version 2, transitive grants: the 32-bit grant reference in `trans_domid`'s table.
    pub const V2_TRANS_GREF: usize = 8;
}

// ---- GNTMAP flags and map/unmap ------------------------------------------------------------

/// Map for access by I/O devices.
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// Map for access by host CPUs.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// Read-only access.
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// The host mapping is usable by the current application as well as the guest kernel.
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// `host_addr` is the machine address of the PTE to write, not a virtual address.
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;
/// The first bit of the flags that go into the PTE's available bits
/// (`XENFEAT_gnttab_map_avail_bits`).
pub const GNTMAP_GUEST_AVAIL0_SHIFT: u32 = 16;
/// `GNTMAP_guest_avail_mask`.
pub const GNTMAP_GUEST_AVAIL_MASK: u32 = u32::MAX << GNTMAP_GUEST_AVAIL0_SHIFT;

/// `gnttab_map_grant_ref`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabMapGrantRef {
    /// IN: a virtual address, or (`GNTMAP_CONTAINS_PTE`) the machine address of a PTE.
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: the granter's reference.
    pub ref_: GrantRef,
    /// IN: the granting domain.
    pub dom: DomId,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// OUT: the handle to unmap with.
    pub handle: GrantHandle,
    /// OUT: the bus address of the frame (with `GNTMAP_DEVICE_MAP`).
    pub dev_bus_addr: u64,
}

assert_layout!(GnttabMapGrantRef, size = 32, {
    host_addr @ 0, flags @ 8, ref_ @ 12, dom @ 16, status @ 18, handle @ 20, dev_bus_addr @ 24,
});

/// `gnttab_unmap_grant_ref`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabUnmapGrantRef {
    /// IN: the address mapped (0: leave the host mapping).
    pub host_addr: u64,
    /// IN: the bus address mapped (0: leave the device mapping).
    pub dev_bus_addr: u64,
    pub handle: GrantHandle,
    /// OUT.
    pub status: i16,
    pub _pad: u16,
}

assert_layout!(GnttabUnmapGrantRef, size = 24, { host_addr @ 0, dev_bus_addr @ 8, handle @ 16, status @ 20 });

/// `gnttab_unmap_and_replace`: unmaps the host mapping at `host_addr` and moves the PTE at
/// `new_addr` there (clearing `new_addr`); `new_addr` 0 just unmaps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabUnmapAndReplace {
    pub host_addr: u64,
    pub new_addr: u64,
    pub handle: GrantHandle,
    /// OUT.
    pub status: i16,
    pub _pad: u16,
}

assert_layout!(GnttabUnmapAndReplace, size = 24, { host_addr @ 0, new_addr @ 8, handle @ 16, status @ 20 });

// ---- table set-up and queries --------------------------------------------------------------

/// `gnttab_setup_table`: grows the table to `nr_frames` and lists its frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabSetupTable {
    pub dom: DomId,
    pub _pad0: u16,
    pub nr_frames: u32,
    /// OUT.
    pub status: i16,
    pub _pad1: [u16; 3],
    /// Guest address of an array of `nr_frames` frame numbers (OUT).
    pub frame_list: u64,
}

assert_layout!(GnttabSetupTable, size = 24, { dom @ 0, nr_frames @ 4, status @ 8, frame_list @ 16 });

/// `gnttab_query_size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabQuerySize {
    pub dom: DomId,
    pub _pad0: u16,
    /// OUT.
    pub nr_frames: u32,
    /// OUT.
    pub max_nr_frames: u32,
    /// OUT.
    pub status: i16,
    pub _pad1: u16,
}

assert_layout!(GnttabQuerySize, size = 16, { dom @ 0, nr_frames @ 4, max_nr_frames @ 8, status @ 12 });

/// `gnttab_set_version` (IN/OUT: the version wanted, then the version in force).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabSetVersion {
    pub version: u32,
}

assert_layout!(GnttabSetVersion, size = 4, { version @ 0 });

/// `gnttab_get_status_frames` (version 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabGetStatusFrames {
    pub nr_frames: u32,
    pub dom: DomId,
    /// OUT.
    pub status: i16,
    /// Guest address of an array of `nr_frames` 64-bit frame numbers (OUT).
    pub frame_list: u64,
}

assert_layout!(GnttabGetStatusFrames, size = 16, { nr_frames @ 0, dom @ 4, status @ 6, frame_list @ 8 });

/// `gnttab_get_version`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabGetVersion {
    pub dom: DomId,
    pub pad: u16,
    /// OUT.
    pub version: u32,
}

assert_layout!(GnttabGetVersion, size = 8, { dom @ 0, version @ 4 });

/// `gnttab_swap_grant_ref`: swaps two entries of the caller's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabSwapGrantRef {
    pub ref_a: GrantRef,
    pub ref_b: GrantRef,
    /// OUT.
    pub status: i16,
    pub _pad: u16,
}

assert_layout!(GnttabSwapGrantRef, size = 12, { ref_a @ 0, ref_b @ 4, status @ 8 });

// ---- transfer, copy, cache flush -----------------------------------------------------------

/// `gnttab_transfer`: gives frame `mfn` to `domid`, which accepted it in entry `ref_`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabTransfer {
    pub mfn: u64,
    pub domid: DomId,
    pub _pad0: u16,
    pub ref_: GrantRef,
    /// OUT.
    pub status: i16,
    pub _pad1: [u16; 3],
}

assert_layout!(GnttabTransfer, size = 24, { mfn @ 0, domid @ 8, ref_ @ 12, status @ 16 });

/// `GNTCOPY_source_gref`: the source is a grant reference (else a frame of the caller).
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref`: the destination is a grant reference.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// One end of a copy (`struct gnttab_copy_ptr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabCopyPtr {
    /// A grant reference (its low 32 bits) or a frame number (`xen_pfn_t`), by the flags.
    pub u: u64,
    pub domid: DomId,
    pub offset: u16,
    pub _pad: u32,
}

assert_layout!(GnttabCopyPtr, size = 16, { u @ 0, domid @ 8, offset @ 10 });

impl GnttabCopyPtr {
    /// The union read as a grant reference.
    pub const fn gref(&self) -> GrantRef {
        self.u as u32
    }
}

/// `gnttab_copy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabCopy {
    pub source: GnttabCopyPtr,
    pub dest: GnttabCopyPtr,
    pub len: u16,
    /// `GNTCOPY_*`.
    pub flags: u16,
    /// OUT.
    pub status: i16,
    pub _pad: u16,
}

assert_layout!(GnttabCopy, size = 40, { source @ 0, dest @ 16, len @ 32, flags @ 34, status @ 36 });

/// `GNTTAB_CACHE_CLEAN`.
pub const GNTTAB_CACHE_CLEAN: u32 = 1 << 0;
/// `GNTTAB_CACHE_INVAL`.
pub const GNTTAB_CACHE_INVAL: u32 = 1 << 1;
/// `GNTTAB_CACHE_SOURCE_GREF`: `a` is a grant reference (not implemented by Xen either).
pub const GNTTAB_CACHE_SOURCE_GREF: u32 = 1 << 31;

/// `gnttab_cache_flush`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabCacheFlush {
    /// A device bus address (a machine address for PV), or a grant reference.
    pub a: u64,
    pub offset: u16,
    pub length: u16,
    /// `GNTTAB_CACHE_*`.
    pub op: u32,
}

assert_layout!(GnttabCacheFlush, size = 16, { a @ 0, offset @ 8, length @ 10, op @ 12 });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_numbers() {
        for &status in GntSt::ALL {
            assert_eq!(GntSt::from_raw(status.raw()), Some(status));
        }
        assert_eq!(GntSt::NoSpace.raw(), -13);
        assert_eq!(GntSt::from_raw(-14), None);
    }

    #[test]
    fn array_commands_name_their_element_sizes() {
        assert_eq!(GnttabOp::MapGrantRef.element_size(), Some(32));
        assert_eq!(GnttabOp::Copy.element_size(), Some(40));
        assert_eq!(GnttabOp::SwapGrantRef.element_size(), Some(12));
        assert_eq!(GnttabOp::SetupTable.element_size(), None);
        assert_eq!(GnttabOp::from_raw(13), None);
    }

    #[test]
    fn flag_groups_do_not_overlap() {
        let gtf = [GTF_TYPE_MASK, GTF_READONLY, GTF_READING, GTF_WRITING, GTF_PWT, GTF_PCD, GTF_PAT, GTF_SUB_PAGE];
        let mut seen = 0u16;
        for bits in gtf {
            assert_eq!(seen & bits, 0);
            seen |= bits;
        }
        let map = [GNTMAP_DEVICE_MAP, GNTMAP_HOST_MAP, GNTMAP_READONLY, GNTMAP_APPLICATION_MAP, GNTMAP_CONTAINS_PTE];
        let mut seen = 0u32;
        for bits in map {
            assert_eq!(seen & bits, 0);
            seen |= bits;
        }
        assert_eq!(seen & GNTMAP_GUEST_AVAIL_MASK, 0);
    }
}
