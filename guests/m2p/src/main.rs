//! guest-m2p: a PV guest that reads the machine-to-physical (M2P) table at Xen's address,
//! `0xFFFF_8000_0000_0000`, and checks it against its own P2M list for every frame, before
//! and after ballooning, `populate_physmap`, extents of several frames and exchanges, with
//! the `memory_op` queries that describe the table.
//!
//! Steps (each prints a line):
//! 1. every frame of the P2M list has its guest frame in the M2P table;
//! 2. the queries answer as Xen's: `machphys_mapping` (Xen's window, and a `max_mfn` past
//!    every frame of the machine), `maximum_ram_page` (above every frame of ours),
//!    `machphys_mfn_list` (2 MiB-aligned chunks, as many as the machine's frames need),
//!    `maximum_gpfn` (from the `max_pfn` this guest writes in its shared info),
//!    `current_reservation`, `memory_map` (ENOSYS, as Xen for a PV domU); the entry of the
//!    first frame past the table faults (#PF at its address), the table's last entry reads
//!    ~0; a write to the table faults and changes nothing; `MMU_MACHPHYS_UPDATE` of a frame
//!    of ours changes its entry (and back), of one of the table's own frames is refused;
//! 3. 16 free frames are given back: none keeps the entry it had (each frame that leaves
//!    is named with a mark first: afterwards its entry reads ~0, or whatever a domain that
//!    took it since named it, never the mark);
//! 4. `increase_reservation` of 4: the new frames' entries read ~0 until this guest names
//!    them with `MMU_MACHPHYS_UPDATE`;
//! 5. `populate_physmap` of 4 single frames for 4 guest frames: the entries name them;
//! 6. `populate_physmap` of one 4-frame extent: contiguous, aligned, entries set;
//! 7. `exchange` of 4 single frames for one 4-frame extent: new frames aligned and zeroed,
//!    their entries the guest frames asked for, the old ones' no longer their marks;
//! 8. `exchange` for 4 frames below 128 MiB (`XENMEMF_address_bits(27)`);
//! 9. an `exchange` of a free frame and a frame still mapped for one 2-frame extent (one
//!    chunk): refused (EINVAL) with nothing exchanged, the free frame still ours;
//! 10. the 4-frame extent given back as one extent: its entries lose their marks;
//! 11. step 1 again, and the reservation 8 pages below the start.
//!
//! Console: "m2p: ..." lines, then "m2p: ok" and power-off, or "m2p: FAILED <what>" and a
//! crash. The QEMU case `iso-m2p` looks for "m2p: ok". It must never give away or remap
//! a frame below the first free one.

#![no_std]
#![no_main]

mod calls;
mod memory;

use core::fmt;

use guest_rt::abi::arch_x86::{MACH2PHYS_NR_ENTRIES, MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START};
use guest_rt::abi::errno::Errno;
use guest_rt::abi::hypercall::{MemoryOp, ShutdownReason};
use guest_rt::abi::ids::{Mfn, Pfn};
use guest_rt::balloon::FrameLayout;
use guest_rt::hypercall::{shutdown, HypercallError};
use guest_rt::{println, probe, StartInfo};

use memory::{m2p, m2p_address, p2m, set_p2m, INVALID};

/// Frames given back in step 3 (the first 12 come back in steps 4-6).
const RELEASED: u64 = 16;
/// Entries of one M2P chunk: 2^9 frames of 512 entries.
const ENTRIES_PER_CHUNK: u64 = 1 << 18;
/// Vector of a page fault.
const PAGE_FAULT: u8 = 14;
/// What a frame's entry is set to before the frame leaves (plus a tag): afterwards the
/// entry must not hold it. It reads ~0, unless another domain (they run meanwhile) took
/// the frame since and named it.
const LEAVING: u64 = 0x4d32_5000_0000;

guest_rt::entry!(main);

fn main(start: &'static StartInfo) {
    if let Err(why) = run(start) {
        println!("m2p: FAILED {why}");
        shutdown(ShutdownReason::Crash);
    }
    println!("m2p: ok");
}

/// What went wrong.
struct Failure(&'static str, [u64; 3]);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:#x}, {:#x}, {:#x})",
            self.0, self.1[0], self.1[1], self.1[2]
        )
    }
}

/// Fails with `what` and up to three numbers unless `ok`.
fn ensure(ok: bool, what: &'static str, values: [u64; 3]) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(Failure(what, values))
    }
}

/// A hypercall that must succeed.
fn call<T>(what: &'static str, result: Result<T, HypercallError>) -> Result<T, Failure> {
    result.map_err(|e| Failure(what, [e.errno().map_or(0, |e| e as u64), 0, 0]))
}

fn run(start: &StartInfo) -> Result<(), Failure> {
    call(
        "installing the fault probe",
        probe::install().map_err(|_| HypercallError::BadArgument),
    )?;
    let shared = call(
        "mapping shared info",
        guest_rt::shared_info::map_shared_info(),
    )?;
    let nr_pages = start.nr_pages;
    // SAFETY: the page is mapped; `max_pfn` is the guest's to write (Linux writes it too).
    unsafe { (&raw mut (*shared.as_ptr()).arch.max_pfn).write_volatile(nr_pages) };
    let frames = FrameLayout::of(start).ok_or(Failure(
        "pt_base outside the initial mapping",
        [start.pt_base, 0, 0],
    ))?;
    let base = frames.first_free.next_multiple_of(4);
    ensure(
        base + RELEASED <= frames.mapped_end,
        "too few mapped free frames",
        [base, frames.mapped_end, 0],
    )?;
    let pfn = |i: u64| Pfn(base + i);

    // 1.
    let checked = check_all()?;
    ensure(
        checked == nr_pages,
        "frames checked at the start",
        [checked, nr_pages, 0],
    )?;
    println!("m2p: all {checked} frames of the P2M list name their guest frame in the M2P table");

    // 2.
    let ram = queries(nr_pages)?;
    boundaries(ram, pfn(0))?;

    // 3.
    let mut released = [0u64; RELEASED as usize];
    for (i, slot) in released.iter_mut().enumerate() {
        let page = pfn(i as u64);
        *slot = p2m(page).0;
        mark_leaving(Mfn(*slot), i as u64)?;
        // SAFETY: a free frame past the boot stack: nothing uses its page.
        call("unmapping a free page", unsafe { memory::unmap(page) })?;
        set_p2m(page, Mfn(INVALID));
    }
    let mut extents = released;
    // SAFETY: the frames are unmapped and out of the P2M list.
    let done = call("decrease_reservation", unsafe {
        calls::reservation(MemoryOp::DecreaseReservation, &mut extents, 0, 0)
    })?;
    ensure(done == RELEASED, "frames given back", [done, RELEASED, 0])?;
    let mut cleared = 0;
    for (i, &mfn) in released.iter().enumerate() {
        cleared += u64::from(left_clean(Mfn(mfn), i as u64)?);
    }
    println!("m2p: {RELEASED} frames given back; none keeps its entry ({cleared} read ~0, the rest were taken again since)");

    // 4.
    let mut grown = [0u64; 4];
    // SAFETY: new frames are not mapped: the program's memory is unchanged.
    let done = call("increase_reservation", unsafe {
        calls::reservation(MemoryOp::IncreaseReservation, &mut grown, 0, 0)
    })?;
    ensure(done == 4, "frames granted", [done, 4, 0])?;
    for (i, &mfn) in grown.iter().enumerate() {
        let entry = read(Mfn(mfn))?;
        ensure(
            entry == INVALID,
            "a granted frame's entry before the guest names it",
            [mfn, entry, 0],
        )?;
        call(
            "MMU_MACHPHYS_UPDATE of a granted frame",
            calls::machphys_update(Mfn(mfn), pfn(i as u64).0),
        )?;
        adopt(pfn(i as u64), Mfn(mfn))?;
    }
    println!("m2p: 4 frames granted, ~0 until named with MMU_MACHPHYS_UPDATE");

    // 5.
    let mut wanted = [pfn(4).0, pfn(5).0, pfn(6).0, pfn(7).0];
    // SAFETY: as for the increase.
    let done = call("populate_physmap", unsafe {
        calls::reservation(MemoryOp::PopulatePhysmap, &mut wanted, 0, 0)
    })?;
    ensure(done == 4, "frames populated", [done, 4, 0])?;
    for (i, &mfn) in wanted.iter().enumerate() {
        adopt(pfn(4 + i as u64), Mfn(mfn))?;
    }
    println!("m2p: populate_physmap of 4 frames: each entry names the guest frame asked for");

    // 6.
    let mut extent = [pfn(8).0];
    // SAFETY: as for the increase.
    let done = call("populate_physmap of order 2", unsafe {
        calls::reservation(MemoryOp::PopulatePhysmap, &mut extent, 2, 0)
    })?;
    ensure(
        done == 1 && extent[0] % 4 == 0,
        "a 4-frame extent",
        [done, extent[0], 0],
    )?;
    for k in 0..4 {
        adopt(pfn(8 + k), Mfn(extent[0] + k))?;
    }
    println!(
        "m2p: populate_physmap of one 4-frame extent at mfn {:#x}",
        extent[0]
    );

    // 7.
    let first = exchange_pages(pfn(0), 0, 2, 0)?;
    println!(
        "m2p: 4 frames exchanged for one 4-frame extent at mfn {:#x}",
        first
    );

    // 8.
    exchange_pages(pfn(4), 0, 0, 27)?;
    println!("m2p: 4 frames exchanged for 4 below 128 MiB");

    // 9.
    refused_exchange(pfn(5), pfn(6))?;
    println!("m2p: an exchange of a free and a mapped frame in one chunk is refused; the free frame is still ours");

    // 10.
    let held = call(
        "current_reservation",
        calls::query(MemoryOp::CurrentReservation),
    )?;
    let mut whole = [p2m(pfn(8)).0];
    for k in 8..12 {
        mark_leaving(p2m(pfn(k)), 0x200 + k)?;
        // SAFETY: pages of frames this guest took in step 6 and uses no more.
        call("unmapping the extent", unsafe { memory::unmap(pfn(k)) })?;
        set_p2m(pfn(k), Mfn(INVALID));
    }
    // SAFETY: the extent's frames are unmapped and out of the P2M list.
    let done = call("decrease_reservation of order 2", unsafe {
        calls::reservation(MemoryOp::DecreaseReservation, &mut whole, 2, 0)
    })?;
    ensure(done == 1, "the 4-frame extent given back", [done, 0, 0])?;
    for k in 0..4 {
        left_clean(Mfn(extent[0] + k), 0x200 + 8 + k)?;
    }
    let now = call(
        "current_reservation",
        calls::query(MemoryOp::CurrentReservation),
    )?;
    ensure(
        now + 4 == held,
        "reservation after giving back 4 frames",
        [now, held, 0],
    )?;
    println!("m2p: the 4-frame extent given back whole; its entries lost their marks");

    // 11.
    let checked = check_all()?;
    ensure(
        checked == nr_pages - 8,
        "frames checked at the end",
        [checked, nr_pages - 8, 0],
    )?;
    ensure(
        now == nr_pages - 8,
        "reservation at the end",
        [now, nr_pages - 8, 0],
    )?;
    println!("m2p: all {checked} frames of the P2M list still name their guest frame");
    Ok(())
}

/// Names `mfn`, a frame of ours about to leave, with [`LEAVING`] plus `tag` in the table.
fn mark_leaving(mfn: Mfn, tag: u64) -> Result<(), Failure> {
    call(
        "MMU_MACHPHYS_UPDATE of a frame about to leave",
        calls::machphys_update(mfn, LEAVING + tag),
    )?;
    ensure(
        read(mfn)? == LEAVING + tag,
        "the entry of a frame about to leave",
        [mfn.0, read(mfn)?, 0],
    )
}

/// Checks that `mfn`, which left this domain after [`mark_leaving`] with `tag`, no longer
/// holds the mark; returns whether its entry reads ~0 (the frame is free).
fn left_clean(mfn: Mfn, tag: u64) -> Result<bool, Failure> {
    let entry = read(mfn)?;
    ensure(
        entry != LEAVING + tag,
        "a frame that left keeps the entry its owner gave it",
        [mfn.0, entry, 0],
    )?;
    Ok(entry == INVALID)
}

/// `mfn`'s M2P entry, which must be readable.
fn read(mfn: Mfn) -> Result<u64, Failure> {
    m2p(mfn).map_err(|f| {
        Failure(
            "reading an M2P entry faulted",
            [mfn.0, f.vector.into(), f.address],
        )
    })
}

/// Checks that every valid P2M entry's frame names its guest frame in the M2P table;
/// returns how many were checked.
fn check_all() -> Result<u64, Failure> {
    let mut checked = 0;
    for pfn in 0..guest_rt::start_info::nr_pages() {
        let mfn = p2m(Pfn(pfn));
        if mfn.0 == INVALID {
            continue;
        }
        let entry = read(mfn)?;
        ensure(
            entry == pfn,
            "M2P entry of a frame of ours (pfn, mfn, entry)",
            [pfn, mfn.0, entry],
        )?;
        checked += 1;
    }
    Ok(checked)
}

/// Step 2's queries; returns `maximum_ram_page`.
fn queries(nr_pages: u64) -> Result<u64, Failure> {
    let mapping = call("machphys_mapping", calls::machphys_mapping())?;
    let xen = (
        MACH2PHYS_VIRT_START,
        MACH2PHYS_VIRT_END,
        MACH2PHYS_NR_ENTRIES - 1,
    );
    ensure(
        (mapping.v_start, mapping.v_end, mapping.max_mfn) == xen,
        "machphys_mapping",
        [mapping.v_start, mapping.v_end, mapping.max_mfn],
    )?;
    let ram = call("maximum_ram_page", calls::maximum_ram_page())?;
    let highest = guest_rt::start_info::mfn_list()
        .iter()
        .map(|m| m.0)
        .max()
        .unwrap_or(0);
    ensure(
        highest < ram,
        "a frame of ours at or past maximum_ram_page",
        [highest, ram, 0],
    )?;
    let mut chunks = [0u64; 64];
    let count = u64::from(call(
        "machphys_mfn_list",
        calls::machphys_mfn_list(&mut chunks),
    )?);
    let expected = ram.div_ceil(ENTRIES_PER_CHUNK);
    ensure(
        count == expected,
        "machphys_mfn_list: chunks, expected",
        [count, expected, 0],
    )?;
    for (i, &chunk) in chunks[..count as usize].iter().enumerate() {
        ensure(
            chunk != 0 && chunk % 512 == 0,
            "an M2P chunk not 2 MiB aligned",
            [i as u64, chunk, 0],
        )?;
        ensure(
            !chunks[..i].contains(&chunk),
            "an M2P chunk named twice",
            [i as u64, chunk, 0],
        )?;
        // The table's own frames are the hypervisor's: no guest may name them.
        let refused = calls::machphys_update(Mfn(chunk), 1);
        ensure(
            refused == Err(HypercallError::Xen(Errno::Einval)),
            "MMU_MACHPHYS_UPDATE of an M2P frame",
            [chunk, 0, 0],
        )?;
        let entry = read(Mfn(chunk))?;
        ensure(
            entry == INVALID,
            "an M2P frame's own entry",
            [chunk, entry, 0],
        )?;
    }
    let gpfn = call("maximum_gpfn", calls::query(MemoryOp::MaximumGpfn))?;
    ensure(gpfn == nr_pages - 1, "maximum_gpfn", [gpfn, nr_pages, 0])?;
    let held = call(
        "current_reservation",
        calls::query(MemoryOp::CurrentReservation),
    )?;
    ensure(held == nr_pages, "current_reservation", [held, nr_pages, 0])?;
    let map = calls::memory_map();
    ensure(
        map == Err(HypercallError::Xen(Errno::Enosys)),
        "memory_map",
        [map.unwrap_or(0).into(), 0, 0],
    )?;
    println!(
        "m2p: machphys_mapping {:#x}-{:#x} max_mfn {:#x}, maximum_ram_page {ram:#x}, {count} chunk(s) from mfn {:#x}, maximum_gpfn {gpfn:#x}",
        mapping.v_start, mapping.v_end, mapping.max_mfn, chunks[0]
    );
    Ok(ram)
}

/// Step 2's edges: past the table a read faults, its last entry reads ~0, a write faults
/// and changes nothing, and `MMU_MACHPHYS_UPDATE` of a frame of ours changes its entry.
fn boundaries(ram: u64, page: Pfn) -> Result<(), Failure> {
    let past = ram.div_ceil(ENTRIES_PER_CHUNK) * ENTRIES_PER_CHUNK;
    match m2p(Mfn(past)) {
        Err(fault) => ensure(
            fault.vector == PAGE_FAULT && fault.address == m2p_address(Mfn(past)),
            "the fault past the table (vector, address)",
            [fault.vector.into(), fault.address, past],
        )?,
        Ok(entry) => {
            return Err(Failure(
                "the entry past the table is mapped",
                [past, entry, 0],
            ))
        }
    }
    let last = read(Mfn(past - 1))?;
    ensure(
        past - 1 < ram || last == INVALID,
        "the table's last entry, beyond RAM",
        [past - 1, last, 0],
    )?;
    let mfn = p2m(page);
    // SAFETY: the table is read-only to guests: the write must fault and change nothing.
    let written = unsafe { probe::write(m2p_address(mfn), 0x4141) };
    let fault = match written {
        Err(fault) => fault,
        Ok(()) => {
            return Err(Failure(
                "a write to the M2P table went through",
                [mfn.0, read(mfn)?, 0],
            ))
        }
    };
    // Present and a write, in guest kernel mode.
    ensure(
        fault.vector == PAGE_FAULT && fault.error_code & 7 == 3,
        "the fault of a write to the table",
        [fault.vector.into(), fault.error_code, 0],
    )?;
    ensure(
        read(mfn)? == page.0,
        "the entry after a refused write",
        [mfn.0, read(mfn)?, page.0],
    )?;
    call(
        "MMU_MACHPHYS_UPDATE of a frame of ours",
        calls::machphys_update(mfn, 0x5_0000),
    )?;
    ensure(
        read(mfn)? == 0x5_0000,
        "the entry after MMU_MACHPHYS_UPDATE",
        [mfn.0, read(mfn)?, 0],
    )?;
    call(
        "MMU_MACHPHYS_UPDATE back",
        calls::machphys_update(mfn, page.0),
    )?;
    ensure(
        read(mfn)? == page.0,
        "the entry set back",
        [mfn.0, read(mfn)?, 0],
    )?;
    println!("m2p: past the table a read faults; a write faults and changes nothing; MMU_MACHPHYS_UPDATE of our frame works");
    Ok(())
}

/// Takes a frame just granted for `pfn`: its entry must name `pfn`; mapped at `pfn`'s page,
/// it must read zero; recorded in the P2M list.
fn adopt(pfn: Pfn, mfn: Mfn) -> Result<(), Failure> {
    let entry = read(mfn)?;
    ensure(
        entry == pfn.0,
        "a new frame's entry (mfn, entry, pfn)",
        [mfn.0, entry, pfn.0],
    )?;
    // SAFETY: `pfn`'s page was unmapped when its frame went, and `mfn` is new.
    call("mapping a new frame", unsafe { memory::map(pfn, mfn) })?;
    // SAFETY: just mapped, used by nothing else.
    let zeroed = unsafe { memory::is_zero(pfn) };
    ensure(zeroed, "a new frame is not zeroed", [mfn.0, pfn.0, 0])?;
    set_p2m(pfn, mfn);
    Ok(())
}

/// Exchanges the frames of the 4 pages from `first` (single frames) for extents of order
/// `out_order` below `2^address_bits` (0: anywhere) for the same pages; checks the new
/// frames and the old ones' entries; returns the first new frame.
fn exchange_pages(
    first: Pfn,
    in_order: u32,
    out_order: u32,
    address_bits: u32,
) -> Result<u64, Failure> {
    let pages = |k: u64| Pfn(first.0 + k);
    let mut input = [0u64; 4];
    for (k, slot) in input.iter_mut().enumerate() {
        *slot = p2m(pages(k as u64)).0;
        mark_leaving(Mfn(*slot), 0x100 + k as u64)?;
        // SAFETY: nothing uses the page from here on.
        call("unmapping a page to exchange", unsafe {
            memory::unmap(pages(k as u64))
        })?;
    }
    let per_extent = 1u64 << out_order;
    let mut output = [0u64; 4];
    let extents = (4 / per_extent) as usize;
    for (j, slot) in output[..extents].iter_mut().enumerate() {
        *slot = first.0 + j as u64 * per_extent;
    }
    // SAFETY: the input frames are unmapped; their pages get the new frames below.
    let (result, exchanged) = unsafe {
        calls::exchange(
            &mut input,
            in_order,
            &mut output[..extents],
            out_order,
            address_bits,
        )
    };
    call("exchange", result)?;
    ensure(exchanged == 4, "nr_exchanged", [exchanged, 4, 0])?;
    // A frame given up by one chunk may come back as the output of a later one.
    let reused = |old: u64| {
        output[..extents]
            .iter()
            .any(|&new| (new..new + per_extent).contains(&old))
    };
    for (k, &old) in input.iter().enumerate() {
        if !reused(old) {
            left_clean(Mfn(old), 0x100 + k as u64)?;
        }
    }
    for (j, &new) in output[..extents].iter().enumerate() {
        ensure(
            new % per_extent == 0,
            "an exchanged extent not aligned",
            [new, per_extent, 0],
        )?;
        if address_bits != 0 {
            ensure(
                new + per_extent <= 1 << (address_bits - 12),
                "a frame past the address limit",
                [new, u64::from(address_bits), 0],
            )?;
        }
        for k in 0..per_extent {
            adopt(pages(j as u64 * per_extent + k), Mfn(new + k))?;
        }
    }
    Ok(output[0])
}

/// An exchange of `free`'s frame (unmapped first) and `mapped`'s (still mapped) must fail
/// with EINVAL, exchange nothing, and leave `free`'s frame ours (it is mapped back).
fn refused_exchange(free: Pfn, mapped: Pfn) -> Result<(), Failure> {
    let held = call(
        "current_reservation",
        calls::query(MemoryOp::CurrentReservation),
    )?;
    let frame = p2m(free);
    // SAFETY: the page is ours and nothing uses it.
    call("unmapping a page to exchange", unsafe {
        memory::unmap(free)
    })?;
    // One chunk: both frames for one 2-frame extent. The first is taken before the second
    // is found mapped, and must come back.
    let mut input = [frame.0, p2m(mapped).0];
    let mut output = [free.0];
    // SAFETY: the hypervisor must refuse; should it not, the frames it took are checked
    // below before anything uses them.
    let (result, exchanged) = unsafe { calls::exchange(&mut input, 0, &mut output, 1, 0) };
    ensure(
        result == Err(HypercallError::Xen(Errno::Einval)) && exchanged == 0,
        "an exchange with a mapped frame (nr_exchanged, first output)",
        [exchanged, output[0], 0],
    )?;
    let entry = read(frame)?;
    ensure(
        entry == free.0,
        "the first input frame after a refused exchange",
        [frame.0, entry, free.0],
    )?;
    let now = call(
        "current_reservation",
        calls::query(MemoryOp::CurrentReservation),
    )?;
    ensure(
        now == held,
        "the reservation after a refused exchange",
        [now, held, 0],
    )?;
    // SAFETY: the frame is still ours and its page unused.
    call("mapping the frame back", unsafe {
        memory::map(free, frame)
    })?;
    Ok(())
}
