//! The `memory_op` sub-ops and the `mmu_update` command this guest exercises, as typed
//! calls: reservation changes with any extent order and flags, `exchange`, the M2P
//! queries (`machphys_mapping`, `machphys_mfn_list`, `maximum_ram_page`), the reservation
//! queries, `memory_map`, and `MMU_MACHPHYS_UPDATE`.
//!
//! Only `main` calls this module. It decides nothing about which frames to give away:
//! that, and making sure they are unused, is the caller's part of each `unsafe` call.

use guest_rt::abi::hypercall::{MemoryOp, MmuUpdateCmd};
use guest_rt::abi::ids::{DomId, Mfn};
use guest_rt::abi::memory::{
    XenMachphysMapping, XenMachphysMfnList, XenMemoryExchange, XenMemoryMap, XenMemoryReservation,
};
use guest_rt::abi::mmu::MmuUpdate;
use guest_rt::hypercall::{self, HypercallError, Result};

/// A reservation request for `list` (null for an empty slice) of `2^order`-frame extents.
fn request(list: &mut [u64], order: u32, mem_flags: u32) -> XenMemoryReservation {
    XenMemoryReservation {
        extent_start: if list.is_empty() {
            0
        } else {
            list.as_mut_ptr() as u64
        },
        nr_extents: list.len() as u64,
        extent_order: order,
        mem_flags,
        domid: DomId::SELF,
        _pad: [0; 3],
    }
}

/// `increase_reservation`, `populate_physmap` or `decrease_reservation` of the extents in
/// `list` (for an increase: written; for populate: the guest frames, then the machine
/// frames; for a decrease: the machine frames given back); how many extents were done.
///
/// # Safety
/// For a decrease, no frame of the extents may be mapped or in use.
pub unsafe fn reservation(
    cmd: MemoryOp,
    list: &mut [u64],
    order: u32,
    mem_flags: u32,
) -> Result<u64> {
    let mut request = request(list, order, mem_flags);
    // SAFETY: the hypervisor reads and writes at most `nr_extents` entries of the live
    // slice; the caller vouches for frames given back.
    unsafe { hypercall::memory_op(cmd, &raw mut request) }
}

/// `XENMEM_exchange`: the machine frames of `input` (extents of `2^in_order` frames) for
/// new extents of `2^out_order` frames for the guest frames in `output` (whose entries
/// then hold the new machine frames). Returns the call's result and `nr_exchanged` after
/// it.
///
/// # Safety
/// No frame of the input extents may be mapped or in use.
pub unsafe fn exchange(
    input: &mut [u64],
    in_order: u32,
    output: &mut [u64],
    out_order: u32,
    out_flags: u32,
) -> (Result<u64>, u64) {
    let mut x = XenMemoryExchange {
        input: request(input, in_order, 0),
        output: request(output, out_order, out_flags),
        nr_exchanged: 0,
    };
    // SAFETY: the hypervisor reads the input list, reads and writes the output list and
    // `nr_exchanged`; the caller vouches for the frames given up.
    let result = unsafe { hypercall::memory_op(MemoryOp::Exchange, &raw mut x) };
    // SAFETY: `x` is a local the call may have written.
    (result, unsafe {
        (&raw const x.nr_exchanged).read_volatile()
    })
}

/// `XENMEM_machphys_mapping`.
pub fn machphys_mapping() -> Result<XenMachphysMapping> {
    let mut mapping = XenMachphysMapping::default();
    // SAFETY: the call writes the struct on our stack.
    unsafe { hypercall::memory_op(MemoryOp::MachphysMapping, &raw mut mapping)? };
    Ok(mapping)
}

/// `XENMEM_machphys_mfn_list` into `out`; how many entries were written.
pub fn machphys_mfn_list(out: &mut [u64]) -> Result<u32> {
    let mut list = XenMachphysMfnList {
        max_extents: out.len() as u32,
        extent_start: out.as_mut_ptr() as u64,
        ..XenMachphysMfnList::default()
    };
    // SAFETY: the call writes at most `max_extents` entries of `out` and the struct.
    unsafe { hypercall::memory_op(MemoryOp::MachphysMfnList, &raw mut list)? };
    Ok(list.nr_extents)
}

/// `XENMEM_memory_map` into a buffer of 8 E820 entries: the entries written, or the error.
pub fn memory_map() -> Result<u32> {
    let mut buffer = [0u8; 8 * 20];
    let mut map = XenMemoryMap {
        nr_entries: 8,
        _pad: 0,
        buffer: buffer.as_mut_ptr() as u64,
    };
    // SAFETY: the call writes at most 8 entries of the buffer and the struct.
    unsafe { hypercall::memory_op(MemoryOp::MemoryMap, &raw mut map)? };
    Ok(map.nr_entries)
}

/// `XENMEM_maximum_ram_page` (no argument).
pub fn maximum_ram_page() -> Result<u64> {
    // SAFETY: the command takes no argument.
    unsafe { hypercall::memory_op::<u8>(MemoryOp::MaximumRamPage, core::ptr::null_mut()) }
}

/// A query that takes a `domid_t`.
pub fn query(cmd: MemoryOp) -> Result<u64> {
    let mut domid = DomId::SELF;
    // SAFETY: the command reads the domid_t on our stack.
    unsafe { hypercall::memory_op(cmd, &raw mut domid) }
}

/// `MMU_MACHPHYS_UPDATE`: asks that `mfn`'s M2P entry read `pfn`.
pub fn machphys_update(mfn: Mfn, pfn: u64) -> Result<()> {
    let update = [MmuUpdate::new(
        MmuUpdateCmd::MachphysUpdate,
        mfn.address(),
        pfn,
    )];
    let mut done = 0;
    // SAFETY: an M2P update changes no page table.
    unsafe { hypercall::mmu_update(&update, &mut done, DomId::SELF)? };
    if done == 1 {
        Ok(())
    } else {
        Err(HypercallError::BadArgument)
    }
}
