//! Argument structs of `memory_op` (memory.h) and the `XENMEMF_*` flag encoding. Command
//! numbers are in [`crate::hypercall::MemoryOp`].
//!
//! The hypervisor's memory hypercalls read these from guest memory; our guests build them.
//! This module must never allocate or account memory.

use crate::ids::DomId;
use crate::macros::assert_layout;

/// `XENMEM_increase_reservation`, `decrease_reservation`, `populate_physmap`: a list of
/// extents of 2^`extent_order` pages each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XenMemoryReservation {
    /// Guest address of an array of `nr_extents` frame numbers (IN and/or OUT).
    pub extent_start: u64,
    pub nr_extents: u64,
    pub extent_order: u32,
    /// `XENMEMF_*` flags (`address_bits` before interface 0x00030209).
    pub mem_flags: u32,
    /// Must be `DomId::SELF` for unprivileged callers.
    pub domid: DomId,
    pub _pad: [u16; 3],
}

assert_layout!(XenMemoryReservation, size = 32, {
    extent_start @ 0, nr_extents @ 8, extent_order @ 16, mem_flags @ 20, domid @ 24,
});

/// Mask of `mem_flags` holding the address-width limit (0: none).
pub const XENMEMF_ADDRESS_BITS_MASK: u32 = 0xff;
/// `XENMEMF_populate_on_demand`.
pub const XENMEMF_POPULATE_ON_DEMAND: u32 = 1 << 16;
/// `XENMEMF_exact_node_request`.
pub const XENMEMF_EXACT_NODE_REQUEST: u32 = 1 << 17;
/// `XENMEMF_vnode`: the node is a virtual node.
pub const XENMEMF_VNODE: u32 = 1 << 18;

impl XenMemoryReservation {
    /// `XENMEMF_get_address_bits`: the highest address width the extents may use
    /// (0: unrestricted).
    pub const fn address_bits(&self) -> u32 {
        self.mem_flags & XENMEMF_ADDRESS_BITS_MASK
    }

    /// `XENMEMF_get_node`: the requested NUMA node, `None` when the field is 0 (any node).
    pub const fn node(&self) -> Option<u32> {
        match (self.mem_flags >> 8) & 0xff {
            0 => None,
            encoded => Some(encoded - 1),
        }
    }
}

/// `XENMEM_machphys_mapping` (OUT): where the M2P table is mapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XenMachphysMapping {
    pub v_start: u64,
    pub v_end: u64,
    /// Highest machine frame that can be looked up.
    pub max_mfn: u64,
}

assert_layout!(XenMachphysMapping, size = 24, { v_start @ 0, v_end @ 8, max_mfn @ 16 });

/// `XENMEM_machphys_mfn_list`: the first machine frame of each 2 MiB chunk of the M2P
/// table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XenMachphysMfnList {
    /// IN: entries the array can hold.
    pub max_extents: u32,
    pub _pad: u32,
    /// Guest address of an array of `max_extents` frame numbers (OUT).
    pub extent_start: u64,
    /// OUT: entries written.
    pub nr_extents: u32,
    pub _pad2: u32,
}

assert_layout!(XenMachphysMfnList, size = 24, { max_extents @ 0, extent_start @ 8, nr_extents @ 16 });

/// `XENMEM_exchange`: trade the frames of `input` for new ones described by `output`
/// (as many pages in all), atomically per chunk; `nr_exchanged` (IN/OUT) counts the input
/// extents done, and must start at 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XenMemoryExchange {
    /// The extents given up (IN: their machine frames, for a PV guest).
    pub input: XenMemoryReservation,
    /// The extents wanted (IN: the guest frame each one is for; OUT: its machine frame).
    pub output: XenMemoryReservation,
    /// Input extents exchanged so far.
    pub nr_exchanged: u64,
}

assert_layout!(XenMemoryExchange, size = 72, { input @ 0, output @ 32, nr_exchanged @ 64 });

/// `XENMEM_memory_map` / `machine_memory_map`: an E820-format map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XenMemoryMap {
    /// IN: entries the buffer can hold; OUT: entries stored.
    pub nr_entries: u32,
    pub _pad: u32,
    /// Guest address of the buffer of 20-byte E820 entries.
    pub buffer: u64,
}

assert_layout!(XenMemoryMap, size = 16, { nr_entries @ 0, buffer @ 8 });

/// One entry of the [`XenMemoryMap`] buffer, in BIOS E820 format (packed, 20 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    /// 1 RAM, 2 reserved, 3 ACPI, 4 NVS, 5 unusable.
    pub kind: u32,
}

assert_layout!(E820Entry, size = 20, { addr @ 0, size @ 8, kind @ 16 });

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_flags_decode() {
        let unrestricted = XenMemoryReservation::default();
        assert_eq!(unrestricted.address_bits(), 0);
        assert_eq!(unrestricted.node(), None);
        // XENMEMF_address_bits(32) | XENMEMF_node(3): node is stored plus one.
        let flags = 32 | ((3 + 1) << 8) | XENMEMF_EXACT_NODE_REQUEST;
        let req = XenMemoryReservation {
            mem_flags: flags,
            ..Default::default()
        };
        assert_eq!(req.address_bits(), 32);
        assert_eq!(req.node(), Some(3));
    }
}
