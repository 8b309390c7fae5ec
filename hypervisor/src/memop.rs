//! `memory_op`'s argument checks, in pure code (host-tested): what Xen's `do_memory_op`,
//! `construct_memop_from_reservation`, `propagate_node` and `memory_exchange` check before
//! touching a frame, and the arithmetic of extents and exchange chunks. The image's
//! `pv::memop` reads the guest's structs, asks these functions, and does the work.
//!
//! Every guest range the call will touch is computed here with overflow checked, from the
//! current position to the end of the list (as Xen's `guest_handle_subrange_okay`, the
//! fix of XSA-212: checking only the array's base let a guest whose `nr_exchanged` was
//! huge write wherever it pointed); the image checks each range against guest address
//! space before the first frame moves. This module never reads guest memory, allocates
//! or decides who owns a frame.

use abi::errno::Errno;
use abi::memory::{XenMemoryExchange, XenMemoryReservation, XENMEMF_EXACT_NODE_REQUEST};
use abi::hypercall::MEMOP_EXTENT_SHIFT;

/// Largest extent order a domain other than the hardware domain may ask for (Xen's
/// `CONFIG_DOMU_MAX_ORDER` on x86: a 2 MiB extent).
pub const DOMU_MAX_ORDER: u32 = 9;
/// Largest extent order domain 0 (the hardware and control domain) may ask for (Xen's
/// `CONFIG_HWDOM_MAX_ORDER`).
pub const HWDOM_MAX_ORDER: u32 = 12;
/// `MAX_NUMNODES`: nodes a privileged caller may name.
pub const MAX_NUMNODES: u32 = 64;
/// Bytes per extent-list entry (`xen_pfn_t`).
const ENTRY: u64 = 8;

/// Xen's `max_order()` for a caller.
pub const fn max_order(privileged: bool) -> u32 {
    if privileged { HWDOM_MAX_ORDER } else { DOMU_MAX_ORDER }
}

/// A range of guest memory a call will read or write: `len` bytes from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    pub start: u64,
    pub len: u64,
}

/// Entries `from..to` of an array of 8-byte entries at `base`; `None` when the addresses
/// overflow (a range no guest can own).
pub fn entries(base: u64, from: u64, to: u64) -> Option<GuestRange> {
    let len = to.checked_sub(from)?.checked_mul(ENTRY)?;
    let start = base.checked_add(from.checked_mul(ENTRY)?)?;
    start.checked_add(len)?;
    Some(GuestRange { start, len })
}

/// The frames an extent list's allocations must stay below, from `XENMEMF_address_bits`
/// (`u64::MAX`: anywhere), as Xen's `construct_memop_from_reservation`: no limit when the
/// width covers every frame of the machine (`max_page`), `None` (refused) for a width of a
/// page or less.
pub fn frame_limit(address_bits: u32, max_page: u64) -> Option<u64> {
    let machine_bits = max_page.max(1).checked_next_power_of_two().map_or(64, u64::trailing_zeros) + 12;
    if address_bits == 0 || address_bits >= machine_bits {
        return Some(u64::MAX);
    }
    if address_bits <= 12 {
        return None;
    }
    Some(1 << (address_bits - 12))
}

/// Xen's `propagate_node`: whether the node the flags name may be asked for. Nodes only
/// steer where frames come from, and this hypervisor allocates from one pool, so the
/// node itself changes nothing; but a domain other than domain 0 may not insist on one
/// (`XENMEMF_exact_node_request`), and domain 0 may not name one past `MAX_NUMNODES`.
pub fn node_allowed(mem_flags: u32, privileged: bool) -> bool {
    let request = XenMemoryReservation { mem_flags, ..XenMemoryReservation::default() };
    match request.node() {
        None => true,
        Some(node) if privileged => node < MAX_NUMNODES,
        Some(_) => mem_flags & XENMEMF_EXACT_NODE_REQUEST == 0,
    }
}

/// An increase, decrease or populate that may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservationPlan {
    /// Extents `start..count` are to be done.
    pub start: u64,
    pub count: u64,
    pub order: u32,
    /// Frames of new extents stay below this one.
    pub below: u64,
    /// The part of the extent list the call touches; `None` when the list is null (only
    /// an increase may have none: it then grants frames without naming them).
    pub list: Option<GuestRange>,
}

/// Checks a reservation call at `start` (its start extent) as Xen's `do_memory_op` and
/// the op itself do; `None` means the call returns `start` at once, having done nothing
/// (Xen answers these with the start extent, not an error). `privileged`: the caller is
/// domain 0; `list_optional`: a null extent list is allowed (increase only).
pub fn plan_reservation(
    r: &XenMemoryReservation,
    start: u64,
    privileged: bool,
    max_page: u64,
    list_optional: bool,
) -> Option<ReservationPlan> {
    if r.nr_extents > (u64::from(u32::MAX) >> MEMOP_EXTENT_SHIFT) || start >= r.nr_extents {
        return None;
    }
    let below = frame_limit(r.address_bits(), max_page)?;
    if !node_allowed(r.mem_flags, privileged) || r.extent_order > max_order(privileged) {
        return None;
    }
    let list = match r.extent_start {
        0 if list_optional => None,
        base => Some(entries(base, start, r.nr_extents)?),
    };
    Some(ReservationPlan { start, count: r.nr_extents, order: r.extent_order, below, list })
}

/// An exchange that may go ahead: chunks `first_chunk..chunks` are left, each trading
/// `in_per_chunk` input extents of `2^in_order` frames for `out_per_chunk` output extents
/// of `2^out_order` frames (the same number of frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangePlan {
    pub first_chunk: u64,
    pub chunks: u64,
    pub in_order: u32,
    pub out_order: u32,
    pub in_chunk_order: u32,
    pub out_chunk_order: u32,
    /// The input and output list entries the rest of the call touches.
    pub in_list: GuestRange,
    pub out_list: GuestRange,
}

impl ExchangePlan {
    /// Input extents per chunk.
    pub const fn in_per_chunk(&self) -> u64 {
        1 << self.in_chunk_order
    }

    /// Output extents per chunk.
    pub const fn out_per_chunk(&self) -> u64 {
        1 << self.out_chunk_order
    }

    /// Frames per chunk (on either side).
    pub const fn frames_per_chunk(&self) -> u64 {
        1 << (self.in_chunk_order + self.in_order)
    }

    /// Index in the input list of input extent `j` of chunk `chunk`.
    pub const fn in_index(&self, chunk: u64, j: u64) -> u64 {
        (chunk << self.in_chunk_order) + j
    }

    /// Index in the output list of output extent `j` of chunk `chunk`.
    pub const fn out_index(&self, chunk: u64, j: u64) -> u64 {
        (chunk << self.out_chunk_order) + j
    }

    /// `nr_exchanged` once chunks `..chunk` are done.
    pub const fn exchanged_at(&self, chunk: u64) -> u64 {
        chunk << self.in_chunk_order
    }
}

/// What an exchange asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// Nothing left to do (`nr_exchanged` has reached the input count): returns 0.
    Done,
    /// Chunks to trade.
    Chunks(ExchangePlan),
}

/// Checks an exchange as Xen's `memory_exchange` does before it looks up the domain:
/// EPERM for an order above the caller's maximum; EINVAL for a `nr_exchanged` past the
/// input count, different domains on the two sides, lists whose page counts overflow or
/// differ, or a node the caller may not ask for; EFAULT (from `is_guest`) when the rest of
/// either list, from `nr_exchanged` on, is not guest memory. The input extents' frames
/// are the guest's machine frames (a PV guest); the output extents name the guest frames
/// the new machine frames are for.
pub fn plan_exchange(
    x: &XenMemoryExchange,
    privileged: bool,
    is_guest: impl Fn(GuestRange) -> bool,
) -> Result<Exchange, Errno> {
    let (input, output) = (&x.input, &x.output);
    if input.extent_order.max(output.extent_order) > max_order(privileged) {
        return Err(Errno::Eperm);
    }
    let pages = |r: &XenMemoryReservation| (u64::MAX >> r.extent_order >= r.nr_extents).then(|| r.nr_extents << r.extent_order);
    let (Some(in_pages), Some(out_pages)) = (pages(input), pages(output)) else { return Err(Errno::Einval) };
    if x.nr_exchanged > input.nr_extents || input.domid != output.domid || in_pages != out_pages {
        return Err(Errno::Einval);
    }
    if x.nr_exchanged == input.nr_extents {
        return Ok(Exchange::Done);
    }
    let in_list = entries(input.extent_start, x.nr_exchanged, input.nr_extents).filter(|&r| is_guest(r));
    let in_list = in_list.ok_or(Errno::Efault)?;
    let (in_chunk_order, out_chunk_order, out_from) = if input.extent_order <= output.extent_order {
        let in_chunk_order = output.extent_order - input.extent_order;
        (in_chunk_order, 0, x.nr_exchanged >> in_chunk_order)
    } else {
        let out_chunk_order = input.extent_order - output.extent_order;
        // `nr_exchanged <= nr_extents`, whose pages do not overflow: neither does this.
        (0, out_chunk_order, x.nr_exchanged << out_chunk_order)
    };
    let out_list = entries(output.extent_start, out_from, output.nr_extents).filter(|&r| is_guest(r));
    let out_list = out_list.ok_or(Errno::Efault)?;
    if !node_allowed(output.mem_flags, privileged) {
        return Err(Errno::Einval);
    }
    Ok(Exchange::Chunks(ExchangePlan {
        first_chunk: x.nr_exchanged >> in_chunk_order,
        chunks: input.nr_extents >> in_chunk_order,
        in_order: input.extent_order,
        out_order: output.extent_order,
        in_chunk_order,
        out_chunk_order,
        in_list,
        out_list,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::ids::DomId;

    /// Guest memory in these tests: the lower canonical half.
    fn lower_half(r: GuestRange) -> bool {
        r.start.checked_add(r.len).is_some_and(|end| end <= 1 << 47)
    }

    fn reservation(extent_start: u64, nr_extents: u64, extent_order: u32) -> XenMemoryReservation {
        XenMemoryReservation { extent_start, nr_extents, extent_order, domid: DomId::SELF, ..Default::default() }
    }

    fn exchange(input: XenMemoryReservation, output: XenMemoryReservation, nr_exchanged: u64) -> XenMemoryExchange {
        XenMemoryExchange { input, output, nr_exchanged }
    }

    #[test]
    fn address_bits_limit_frames_as_xen() {
        // 256 MiB: 65536 frames, 28 address bits.
        assert_eq!(frame_limit(0, 65536), Some(u64::MAX));
        assert_eq!(frame_limit(28, 65536), Some(u64::MAX));
        assert_eq!(frame_limit(64, 65536), Some(u64::MAX));
        assert_eq!(frame_limit(27, 65536), Some(1 << 15));
        assert_eq!(frame_limit(20, 65536), Some(256));
        assert_eq!(frame_limit(13, 65536), Some(2));
        assert_eq!(frame_limit(12, 65536), None);
        assert_eq!(frame_limit(1, 65536), None);
        // A machine of 65537 frames needs 29 bits.
        assert_eq!(frame_limit(28, 65537), Some(1 << 16));
    }

    #[test]
    fn only_domain_0_may_name_a_node_exactly() {
        let node = |n: u32| (n + 1) << 8;
        assert!(node_allowed(0, false));
        assert!(node_allowed(node(3), false), "a hint is ignored");
        assert!(!node_allowed(node(3) | XENMEMF_EXACT_NODE_REQUEST, false));
        assert!(node_allowed(node(3) | XENMEMF_EXACT_NODE_REQUEST, true));
        assert!(node_allowed(node(63), true));
        assert!(!node_allowed(node(64), true));
        // XSA-231: every value of the node byte is harmless.
        for byte in 0..=255u32 {
            let _ = node_allowed(byte << 8, false);
            let _ = node_allowed(byte << 8, true);
        }
    }

    #[test]
    fn reservations_check_counts_orders_and_the_rest_of_the_list() {
        let r = reservation(0x1000, 10, 0);
        let plan = plan_reservation(&r, 4, false, 65536, false).unwrap();
        assert_eq!(plan.list, Some(GuestRange { start: 0x1000 + 4 * 8, len: 6 * 8 }));
        assert_eq!((plan.start, plan.count, plan.order, plan.below), (4, 10, 0, u64::MAX));
        assert_eq!(plan_reservation(&r, 10, false, 65536, false), None, "nothing left");
        assert_eq!(plan_reservation(&reservation(0x1000, 1 << 26, 0), 0, false, 65536, false), None);
        assert!(plan_reservation(&reservation(0x1000, (1 << 26) - 1, 0), 0, false, 65536, false).is_some());
        assert_eq!(plan_reservation(&reservation(0x1000, 1, 10), 0, false, 65536, false), None);
        assert!(plan_reservation(&reservation(0x1000, 1, 9), 0, false, 65536, false).is_some());
        assert!(plan_reservation(&reservation(0x1000, 1, 12), 0, true, 65536, false).is_some());
        assert_eq!(plan_reservation(&reservation(0x1000, 1, 13), 0, true, 65536, false), None);
        // A list whose end wraps around.
        assert_eq!(plan_reservation(&reservation(u64::MAX - 8, 2, 0), 0, false, 65536, false), None);
        // A null list: granted without naming the frames, for an increase only.
        let null = reservation(0, 1, 0);
        assert_eq!(plan_reservation(&null, 0, false, 65536, true).unwrap().list, None);
        assert_eq!(plan_reservation(&null, 0, false, 65536, false).unwrap().list, Some(GuestRange { start: 0, len: 8 }));
        let narrow = XenMemoryReservation { mem_flags: 12, ..reservation(0x1000, 1, 0) };
        assert_eq!(plan_reservation(&narrow, 0, false, 65536, false), None);
        let below_1m = XenMemoryReservation { mem_flags: 20, ..reservation(0x1000, 1, 0) };
        assert_eq!(plan_reservation(&below_1m, 0, false, 65536, false).unwrap().below, 256);
    }

    #[test]
    fn exchanges_check_as_xen() {
        let x = exchange(reservation(0x1000, 4, 0), reservation(0x2000, 4, 0), 0);
        let Ok(Exchange::Chunks(plan)) = plan_exchange(&x, false, lower_half) else { panic!() };
        assert_eq!((plan.first_chunk, plan.chunks, plan.frames_per_chunk()), (0, 4, 1));
        assert_eq!(plan.in_list, GuestRange { start: 0x1000, len: 32 });
        assert_eq!(plan.out_list, GuestRange { start: 0x2000, len: 32 });
        // Four single frames for one 4-frame extent: one chunk.
        let x = exchange(reservation(0x1000, 8, 0), reservation(0x2000, 2, 2), 4);
        let Ok(Exchange::Chunks(plan)) = plan_exchange(&x, false, lower_half) else { panic!() };
        assert_eq!((plan.in_chunk_order, plan.out_chunk_order), (2, 0));
        assert_eq!((plan.first_chunk, plan.chunks, plan.frames_per_chunk()), (1, 2, 4));
        assert_eq!((plan.in_index(1, 3), plan.out_index(1, 0), plan.exchanged_at(2)), (7, 1, 8));
        assert_eq!(plan.in_list, GuestRange { start: 0x1000 + 32, len: 32 });
        assert_eq!(plan.out_list, GuestRange { start: 0x2008, len: 8 });
        // One 2 MiB extent for 512 single frames.
        let x = exchange(reservation(0x1000, 1, 9), reservation(0x2000, 512, 0), 0);
        let Ok(Exchange::Chunks(plan)) = plan_exchange(&x, false, lower_half) else { panic!() };
        assert_eq!((plan.in_per_chunk(), plan.out_per_chunk(), plan.chunks), (1, 512, 1));
        assert_eq!(plan.out_list.len, 512 * 8);
        let x = exchange(reservation(0x1000, 1, 10), reservation(0x2000, 1024, 0), 0);
        assert_eq!(plan_exchange(&x, false, lower_half), Err(Errno::Eperm));
        assert!(plan_exchange(&x, true, lower_half).is_ok());
        let done = exchange(reservation(0x1000, 4, 0), reservation(0x2000, 4, 0), 4);
        assert_eq!(plan_exchange(&done, false, lower_half), Ok(Exchange::Done));
        for bad in [
            exchange(reservation(0x1000, 4, 0), reservation(0x2000, 4, 0), 5),
            exchange(reservation(0x1000, 4, 0), reservation(0x2000, 3, 0), 0),
            exchange(reservation(0x1000, 4, 0), XenMemoryReservation { domid: DomId(7), ..reservation(0x2000, 4, 0) }, 0),
            exchange(reservation(0x1000, u64::MAX, 1), reservation(0x2000, u64::MAX, 1), 0),
            exchange(reservation(0x1000, 2, 0), XenMemoryReservation { mem_flags: (1 << 8) | XENMEMF_EXACT_NODE_REQUEST, ..reservation(0x2000, 2, 0) }, 0),
        ] {
            assert_eq!(plan_exchange(&bad, false, lower_half), Err(Errno::Einval), "{bad:?}");
        }
    }

    /// XSA-212: a single-entry exchange that claims to be far into a huge list, its input
    /// list placed so that the entry it reads is real (the address wraps around to it)
    /// and its output list so that the entry it writes is the hypervisor's (XTF's test
    /// aims at the IDT). The rest of each list, from `nr_exchanged` on, must be guest
    /// memory: the output's is not, and an input list that only wraps around to guest
    /// memory is not guest memory either (stricter than Xen, which lets the input pass).
    #[test]
    fn xsa_212_an_exchange_far_into_its_lists_is_refused() {
        let idt = 0xFFFF_FFFF_FC01_2000u64;
        let in_extents = 0x7000u64;
        let far = idt / 8;
        let input = reservation(in_extents.wrapping_sub(idt), far + 1, 0);
        let output = XenMemoryReservation { mem_flags: 32, ..reservation(0, far + 1, 0) };
        let x = exchange(input, output, far);
        assert_eq!(plan_exchange(&x, false, lower_half), Err(Errno::Efault));
        assert_eq!(entries(x.input.extent_start, far, far + 1), None, "the input wraps");
        assert_eq!(entries(0, far, far + 1), Some(GuestRange { start: idt, len: 8 }));
        // With an honest input list, the output alone is refused.
        let honest = exchange(reservation(0x1000, far + 1, 0), output, far);
        assert!(!lower_half(entries(0x1000, far, far + 1).unwrap()));
        assert_eq!(plan_exchange(&honest, false, lower_half), Err(Errno::Efault));
        let fine = exchange(reservation(0x1000, 2, 0), reservation(0x2000, 2, 0), 1);
        assert!(plan_exchange(&fine, false, lower_half).is_ok());
        // Lists whose arithmetic wraps are never guest memory.
        let wrap = exchange(reservation(8, 3, 0), reservation(u64::MAX - 7, 3, 0), 1);
        assert_eq!(plan_exchange(&wrap, false, lower_half), Err(Errno::Efault));
        assert_eq!(entries(u64::MAX - 7, 1, 3), None);
    }
}
