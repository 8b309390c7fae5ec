//! Micro-benchmarks of the PV interface, run inside a guest: a null hypercall
//! (`xen_version`), an `mmu_update` batch of 512 entries, a page fault bounced to the
//! guest's handler and back through `iret`, a pin and unpin of an L1 table, and the life
//! of a page-table page as a Linux guest leads it (written through its writable mapping,
//! remapped read-only, pinned, unpinned, remapped writable), and the same for a small tree
//! (an L2 over four L1s, pinned through the L2): the type changes where the TLB discipline
//! flushes. Each is timed with the TSC per iteration and reported as the median in
//! nanoseconds, converted with the scale the hypervisor publishes in `vcpu_info.time`:
//!
//! `bench: null_hypercall_ns=N mmu_update_512_ns=N page_fault_bounce_ns=N pin_unpin_ns=N table_cycle_ns=N tree_cycle_ns=N`
//!
//! Then it powers off. A failed step prints `bench: FAILED <what>` and crashes the domain.

#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::abi::ids::{DomId, Mfn, Pfn};
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::abi::hypercall::{MmuUpdateCmd, MmuextCmd};
use guest_rt::hypercall::{self, shutdown};
use guest_rt::layout::{self, PTE_PRESENT, PTE_USER, VIRT_BASE};
use guest_rt::traps::{self, TrapFrame, Vector};
use guest_rt::{println, StartInfo};

guest_rt::entry!(main);

const HYPERCALL_RUNS: usize = 2001;
const BATCH_RUNS: usize = 51;
const FAULT_RUNS: usize = 501;
const TABLE_RUNS: usize = 501;
/// Entries per `mmu_update` batch: one whole L1 table.
const BATCH: usize = 512;
/// A guest address nothing maps (its L2 entry is empty): every touch faults.
const UNMAPPED: u64 = VIRT_BASE + 0x3000_0000;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

static FAULTS: AtomicU64 = AtomicU64::new(0);

fn fail(what: &str) -> ! {
    println!("bench: FAILED {what}");
    shutdown(ShutdownReason::Crash)
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Median cycles of `runs` timed calls of `f`.
fn median_cycles<const N: usize>(mut f: impl FnMut()) -> u64 {
    let mut samples = [0u64; N];
    for sample in samples.iter_mut() {
        let start = rdtsc();
        f();
        *sample = rdtsc() - start;
    }
    samples.sort_unstable();
    samples[N / 2]
}

/// TSC cycles to ns with the scale in vcpu_info (Xen's pvclock formula).
fn to_ns(cycles: u64, mul: u32, shift: i8) -> u64 {
    let shifted = if shift >= 0 { cycles << shift } else { cycles >> -shift };
    ((shifted as u128 * mul as u128) >> 32) as u64
}

fn main(start: &'static StartInfo) {
    let shared = guest_rt::shared_info::map_shared_info().unwrap_or_else(|_| fail("map shared info"));
    // SAFETY: the shared info page is mapped; the time record's scale fields are stable
    // while this vCPU runs (the hypervisor rewrites them only when it switches it in).
    let (mul, shift) = unsafe {
        let time = &(*shared.as_ptr()).vcpu_info[0].time;
        (core::ptr::read_volatile(&time.tsc_to_system_mul), core::ptr::read_volatile(&time.tsc_shift))
    };
    if mul == 0 {
        fail("no TSC scale in vcpu_info");
    }

    let null = median_cycles::<HYPERCALL_RUNS>(|| {
        if hypercall::version().is_err() {
            fail("xen_version");
        }
    });

    let requests = l1_batch(start);
    let batch = median_cycles::<BATCH_RUNS>(|| {
        let mut done = 0;
        // SAFETY: every request rewrites an entry of the boot L1 with its current value.
        if unsafe { hypercall::mmu_update(&requests, &mut done, DomId::SELF) }.is_err() || done as usize != BATCH {
            fail("mmu_update batch");
        }
    });

    traps::set_handler(Vector::PAGE_FAULT, skip_faulting_load).unwrap_or_else(|_| fail("page-fault handler"));
    let fault = median_cycles::<FAULT_RUNS>(|| {
        // SAFETY: the load faults; the handler skips its 3 bytes (`48 8b 08`).
        unsafe { asm!("mov rcx, [rax]", in("rax") UNMAPPED, out("rcx") _, options(nostack)) };
    });
    if FAULTS.load(Ordering::Relaxed) != FAULT_RUNS as u64 {
        fail("page faults not all delivered");
    }

    let (va, mfn) = free_frame(start, 0);
    let read_only = mfn.address() | PTE_PRESENT | PTE_USER;
    let writable = layout::kernel_rw_pte(mfn.address());
    // SAFETY: the first free frame is mapped writable at `va` and used by nothing else.
    unsafe { core::ptr::write_bytes(va as *mut u8, 0, 4096) };
    remap(va, read_only);
    let pin_unpin = median_cycles::<TABLE_RUNS>(|| {
        extended(MmuextCmd::PinL1Table, mfn);
        extended(MmuextCmd::UnpinTable, mfn);
    });
    remap(va, writable);
    let cycle = median_cycles::<TABLE_RUNS>(|| {
        // SAFETY: `va` maps the frame writable here; entry 1 stays non-present.
        unsafe { core::ptr::write_volatile((va + 8) as *mut u64, 0x1000) };
        remap(va, read_only);
        extended(MmuextCmd::PinL1Table, mfn);
        extended(MmuextCmd::UnpinTable, mfn);
        remap(va, writable);
    });

    // An L2 (the next free frame) over four L1s (the four after it).
    let tree: [(u64, Mfn); 5] = core::array::from_fn(|i| free_frame(start, 1 + i));
    for (i, &(va, _)) in tree.iter().enumerate() {
        // SAFETY: free frames mapped writable at `va`, used by nothing else.
        unsafe { core::ptr::write_bytes(va as *mut u8, 0, 4096) };
        if i > 0 {
            // SAFETY: entry i - 1 of the L2 frame, mapped writable.
            unsafe { core::ptr::write_volatile((tree[0].0 + (i as u64 - 1) * 8) as *mut u64, layout::kernel_rw_pte(tree[i].1.address())) };
        }
    }
    let tree_cycle = median_cycles::<TABLE_RUNS>(|| {
        for &(va, mfn) in &tree {
            remap(va, mfn.address() | PTE_PRESENT | PTE_USER);
        }
        extended(MmuextCmd::PinL2Table, tree[0].1);
        extended(MmuextCmd::UnpinTable, tree[0].1);
        for &(va, mfn) in &tree {
            remap(va, layout::kernel_rw_pte(mfn.address()));
        }
    });

    println!(
        "bench: null_hypercall_ns={} mmu_update_512_ns={} page_fault_bounce_ns={} pin_unpin_ns={} table_cycle_ns={} tree_cycle_ns={}",
        to_ns(null, mul, shift),
        to_ns(batch, mul, shift),
        to_ns(fault, mul, shift),
        to_ns(pin_unpin, mul, shift),
        to_ns(cycle, mul, shift),
        to_ns(tree_cycle, mul, shift)
    );
}

/// Free frame `n` after the boot stack (free, mapped writable at start of day): its
/// address and machine frame.
fn free_frame(start: &'static StartInfo, n: usize) -> (u64, Mfn) {
    let first_table = layout::virt_to_pfn(start.pt_base).unwrap_or_else(|| fail("pt_base"));
    let pfn = Pfn(first_table.0 + start.nr_pt_frames + 1 + n as u64);
    match (layout::pfn_to_virt(pfn), guest_rt::start_info::pfn_to_mfn(pfn)) {
        (Some(va), Some(mfn)) if pfn.0 < start.nr_pages => (va, mfn),
        _ => fail("no free frame"),
    }
}

/// Points the page at `va` (a free frame's) at `pte`, flushing it locally.
fn remap(va: u64, pte: u64) {
    // SAFETY: only free frames' pages are remapped, each only to its own frame.
    if unsafe { hypercall::update_va_mapping(va, pte, UVMF_INVLPG | UVMF_LOCAL) }.is_err() {
        fail("update_va_mapping of a free frame");
    }
}

/// One `mmuext_op` on a free frame.
fn extended(cmd: MmuextCmd, mfn: Mfn) {
    let op = MmuextOp::with_mfn(cmd, mfn);
    let mut done = 0;
    // SAFETY: pins and unpins of free frames change no mapping.
    if unsafe { hypercall::mmuext_op(core::slice::from_ref(&op), &mut done, DomId::SELF) }.is_err() {
        fail("pin or unpin of a free frame");
    }
}

/// Resumes after the faulting `mov rcx, [rax]` (3 bytes).
fn skip_faulting_load(frame: &mut TrapFrame) {
    if frame.rax != UNMAPPED {
        fail("unexpected page fault");
    }
    FAULTS.fetch_add(1, Ordering::Relaxed);
    frame.rip += 3;
}

/// 512 updates that rewrite every entry of the boot L1 covering VIRT_BASE with its current
/// value (so that running the batch changes nothing and can repeat).
fn l1_batch(start: &'static StartInfo) -> [MmuUpdate; BATCH] {
    let read = |va: u64| {
        // SAFETY: boot page tables are mapped read-only in the initial mapping.
        unsafe { core::ptr::read_volatile(va as *const u64) }
    };
    let table_va = |entry: u64| {
        let mfn = (entry & ADDRESS_MASK) >> 12;
        let pfn = guest_rt::start_info::mfn_list().iter().position(|m| m.0 == mfn).unwrap_or_else(|| fail("table not in P2M"));
        VIRT_BASE + pfn as u64 * 4096
    };
    let l4 = start.pt_base;
    let l3 = table_va(read(l4 + 511 * 8));
    let l2 = table_va(read(l3 + 510 * 8));
    let l1_entry = read(l2);
    let l1 = table_va(l1_entry);
    let l1_maddr = l1_entry & ADDRESS_MASK;
    core::array::from_fn(|i| MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, l1_maddr + i as u64 * 8, read(l1 + i as u64 * 8)))
}
