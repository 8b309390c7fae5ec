//! A request that is legitimate but huge (issue 15, hole 7, the page-table part): one
//! `MMUEXT_PIN_L3_TABLE` of a fresh L3 over [`L2_TABLES`] L2s of 512 distinct, empty L1s
//! each, so that one call validates 2053 tables (over a million entry checks), then one
//! unpin that devalidates them all again.
//!
//! The same tree linked into the live L4 by a direct write ([`write_big_tree`], writable
//! page tables) makes the emulated `mov` validate it all: the emulation runs it in slices
//! too, the guest executing the `mov` again until it lands. Under a fresh L4 given to
//! `VCPUOP_initialise` ([`init_big_tree`]) it is validated in slices as well.
//!
//! The pin is continued many times (a raw `syscall` run again with the rest of the call),
//! and each time the hypervisor may rewrite only the call's four argument registers: r8
//! and r9 must come back as they went in ([`extended`]).
//!
//! Before validation was preemptible, each of the two calls held its CPU with interrupts
//! off for the whole walk; the hypervisor's `summary: sched.cpuN.in_hypervisor_us` (its
//! maximum) and `longest_stay` lines show it. With hypercall continuations the work is cut
//! into slices and the longest stay stays short; the guest's own timing below measures
//! the whole call either way. The pin and the unpin must both succeed: the guest then
//! powers off (anything else crashes it).
//!
//! Needs `mem_kib=` on its module line with room for the L1s past the initial mapping
//! (16384 is plenty). The L1s are frames past the initial mapping (zeroed by the
//! hypervisor, mapped nowhere); the L2s, the L3 and [`init_big_tree`]'s L4 are spare frames
//! of [`Targets`] (10 to 15), filled while writable and then mapped read-only. Run by
//! [`crate::fatal`] as `attack=pin_big_tree`, `attack=write_big_tree` and
//! `attack=init_big_tree`; this module must never touch a frame of the initial mapping but
//! those spare frames.

use guest_rt::abi::hypercall::{Hypercall, MmuextCmd, ShutdownReason, VmAssistCmd, VmAssistType};
use guest_rt::abi::ids::{DomId, Mfn, Pfn, VcpuId, PAGE_SIZE};
use guest_rt::abi::mmu::{MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{hypercall2, hypercall3, shutdown};
use guest_rt::layout::{self, PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use guest_rt::time::Clock;
use guest_rt::{println, smp, start_info, StartInfo};

use crate::targets::Targets;

/// L2 tables under the L3; each names 512 L1s.
const L2_TABLES: u64 = 4;
/// Entries per table.
const ENTRIES: u64 = 512;
/// L1 tables in all.
const L1_TABLES: u64 = L2_TABLES * ENTRIES;
/// The first spare frame this module takes (the L2s, then the L3).
const FIRST_SPARE: u64 = 10;
/// Xen's boot slack (512 KiB) and the initial mapping's alignment (4 MiB), in pages.
const BOOT_SLACK_PAGES: u64 = 128;
const MAPPING_ALIGN_PAGES: u64 = 1024;
/// `DOMID_SELF` as a register argument.
const SELF: u64 = DomId::SELF.0 as u64;

/// The attack: pins the big tree in one call and unpins it in another.
pub fn pin_big_tree(targets: &Targets) -> ! {
    let name = "pin_big_tree";
    let l3 = build(targets, name);
    let clock = Clock::new().unwrap_or_else(|_| fail(name, "mapping the shared info page"));
    let tables = 1 + L2_TABLES + L1_TABLES;
    println!(
        "hostile: attack {name}: pinning an L3 over {L2_TABLES} L2s and {L1_TABLES} distinct L1s \
         ({tables} tables, {} entries) in one call",
        tables * ENTRIES
    );
    let t0 = clock.now_ns();
    let pinned = extended(MmuextCmd::PinL3Table, l3);
    let t1 = clock.now_ns();
    let unpinned = extended(MmuextCmd::UnpinTable, l3);
    let t2 = clock.now_ns();
    println!(
        "hostile: attack {name}: pin returned {pinned} after {} us, unpin returned {unpinned} \
         after {} us",
        (t1 - t0) / 1000,
        (t2 - t1) / 1000
    );
    if pinned == 0 && unpinned == 0 {
        println!("hostile: attack {name}: done");
        shutdown(ShutdownReason::Poweroff)
    }
    fail(name, "the pin or the unpin failed")
}

/// The same tree linked into a free slot of the live L4 by one direct `mov` to the L4
/// (writable page tables), then unlinked by another: the first validates 2053 tables,
/// the second devalidates them, each in slices (the write runs again until its
/// validation is done; the unlinking write completes at once and leaves the teardown to
/// finish later). Both must land; the guest then powers off.
pub fn write_big_tree(targets: &Targets) -> ! {
    let name = "write_big_tree";
    let l3 = build(targets, name);
    let clock = Clock::new().unwrap_or_else(|_| fail(name, "mapping the shared info page"));
    // SAFETY: vm_assist reads no guest memory.
    let ret = unsafe { hypercall2(Hypercall::VmAssist, VmAssistCmd::Enable.raw().into(), VmAssistType::WritablePagetables.raw().into()) };
    if ret != 0 {
        fail(name, "enabling VMASST_TYPE_writable_pagetables");
    }
    let l4 = &targets.l4;
    let slot = (1..256).find(|&slot| l4.entry(slot) == 0).unwrap_or_else(|| fail(name, "no free L4 slot"));
    let entry = l4.va() + 8 * slot as u64;
    println!("hostile: attack {name}: linking an L3 over {L1_TABLES} distinct L1s into L4 slot {slot} with one mov");
    let t0 = clock.now_ns();
    // SAFETY: the slot was free: nothing the program uses goes through it. The write to the
    // read-only L4 faults and is emulated (or the domain dies of its #PF).
    unsafe { store(entry, table_entry(l3)) };
    let t1 = clock.now_ns();
    let linked = l4.entry(slot) & PTE_ADDRESS_MASK == l3.address();
    // SAFETY: as above.
    unsafe { store(entry, 0) };
    let t2 = clock.now_ns();
    println!(
        "hostile: attack {name}: link took {} us, unlink {} us",
        (t1 - t0) / 1000,
        (t2 - t1) / 1000
    );
    if linked && l4.entry(slot) == 0 {
        println!("hostile: attack {name}: done");
        shutdown(ShutdownReason::Poweroff)
    }
    fail(name, "the link or the unlink did not land")
}

/// The same tree under a fresh L4 (at slot 0; slot 511 left empty, which the hypervisor
/// fills with its default window-L3) given to `VCPUOP_initialise` for vCPU 1, which is
/// never brought up: one call validating 2054 tables (XTF's xsa-296 does the same with two
/// tables, to make the call continue). Before the call was preemptible it validated the
/// whole tree in one stay; now it runs a slice per stay and is issued again (the guest
/// sees one call). It must succeed; the guest then powers off. Needs `vcpus=2`.
pub fn init_big_tree(targets: &Targets) -> ! {
    let name = "init_big_tree";
    let l3 = build(targets, name);
    let l4 = table_in_spare(targets, FIRST_SPARE + L2_TABLES + 1, |index| (index == 0).then(|| table_entry(l3)))
        .unwrap_or_else(|why| fail(name, why));
    let clock = Clock::new().unwrap_or_else(|_| fail(name, "mapping the shared info page"));
    println!(
        "hostile: attack {name}: VCPUOP_initialise of vCPU 1 on an L4 over {} tables",
        2 + L2_TABLES + L1_TABLES
    );
    let context = smp::context(never_runs, 0, targets.guard.va + PAGE_SIZE, l4.0);
    let t0 = clock.now_ns();
    // SAFETY: the vCPU is never brought up (`never_runs`); only the validation is timed.
    let initialised = unsafe { smp::initialise(VcpuId(1), &context) };
    let t1 = clock.now_ns();
    println!("hostile: attack {name}: initialise returned {initialised:?} after {} us", (t1 - t0) / 1000);
    if initialised.is_ok() {
        println!("hostile: attack {name}: done");
        shutdown(ShutdownReason::Poweroff)
    }
    fail(name, "the initialise failed")
}

/// vCPU 1's entry point in [`init_big_tree`]: it is never brought up.
extern "C" fn never_runs(_: u64) -> ! {
    shutdown(ShutdownReason::Crash)
}

/// `mov [address], value`.
///
/// # Safety
/// `address` must be an entry whose change affects nothing the program uses.
unsafe fn store(address: u64, value: u64) {
    // SAFETY: the caller vouches for the address.
    unsafe { core::arch::asm!("mov qword ptr [{a}], {v}", a = in(reg) address, v = in(reg) value) };
}

/// Builds the tree in frames past the initial mapping and spare frames: returns its L3.
fn build(targets: &Targets, name: &str) -> Mfn {
    let start = start_info::start_info();
    let l1s = match past_the_mapping(start) {
        Some(first) => first,
        None => fail(name, "too few frames past the initial mapping (raise mem_kib=)"),
    };
    let mut l2s = [Mfn(0); L2_TABLES as usize];
    for (k, l2) in l2s.iter_mut().enumerate() {
        let first = l1s + k as u64 * ENTRIES;
        *l2 = table_in_spare(targets, FIRST_SPARE + k as u64, |index| {
            start_info::pfn_to_mfn(Pfn(first + index)).map(table_entry)
        })
        .unwrap_or_else(|why| fail(name, why));
    }
    table_in_spare(targets, FIRST_SPARE + L2_TABLES, |index| {
        l2s.get(index as usize).map(|&l2| table_entry(l2))
    })
    .unwrap_or_else(|why| fail(name, why))
}

/// The first of [`L1_TABLES`] pfns past the initial mapping, if the reservation has them.
fn past_the_mapping(start: &StartInfo) -> Option<u64> {
    let first_table = layout::virt_to_pfn(start.pt_base)?;
    // The boot stack page follows the tables; the mapping covers the slack after it,
    // rounded up to 4 MiB (within the reservation).
    let first_free = first_table.0 + start.nr_pt_frames + 1;
    let mapped_end = (first_free + BOOT_SLACK_PAGES).next_multiple_of(MAPPING_ALIGN_PAGES);
    let first = start.nr_pages.checked_sub(L1_TABLES)?;
    (first >= mapped_end).then_some(first)
}

/// Spare frame `n`, zeroed, entry `i` set to `entry(i)` while that is `Some`, then mapped
/// read-only.
fn table_in_spare(
    targets: &Targets,
    n: u64,
    entry: impl Fn(u64) -> Option<u64>,
) -> Result<Mfn, &'static str> {
    let frame = targets.spare_frame(n).ok_or("too few spare frames")?;
    let table = frame.va as *mut u64;
    for index in 0..ENTRIES {
        let value = entry(index).unwrap_or(0);
        // SAFETY: a spare frame is mapped writable at `va` and used by nothing else; the
        // index stays inside the page.
        unsafe { table.add(index as usize).write_volatile(value) };
    }
    let read_only = (frame.mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER;
    // SAFETY: the spare frame's mapping loses its write permission; nothing writes it.
    let ret = unsafe {
        hypercall3(
            Hypercall::UpdateVaMapping,
            frame.va,
            read_only,
            UVMF_INVLPG | UVMF_LOCAL,
        )
    };
    if ret < 0 {
        return Err("mapping a spare frame read-only");
    }
    debug_assert_eq!(frame.va % PAGE_SIZE, 0);
    Ok(frame.mfn)
}

/// A present, writable entry naming the table `mfn`.
const fn table_entry(mfn: Mfn) -> u64 {
    (mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_WRITABLE | PTE_USER
}

/// What r8 and r9 hold across [`extended`]'s call, which takes neither.
const NOT_AN_ARGUMENT: u64 = 0x05ee_d0fa_11c0_ffee;

/// One `mmuext_op` of `cmd` on `mfn` (a raw `syscall`); rax after it. The call is continued
/// (the guest's `syscall` runs again with the rest of it) until its validation is done;
/// the hypervisor rewrites only the four argument registers then, as Xen does (XTF's
/// compiled code keeps values in the others: xsa-286 broke when r8 came back 0): r8 and
/// r9 must come back as they went in, or the attack fails.
fn extended(cmd: MmuextCmd, mfn: Mfn) -> i64 {
    let op = MmuextOp::with_mfn(cmd, mfn);
    let mut done = 0u32;
    let (ret, r8, r9): (i64, u64, u64);
    // SAFETY: pinning and unpinning change no mapping the program uses; the `syscall`
    // clobbers rcx and r11, the hypervisor at most the argument registers and rax.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") Hypercall::MmuextOp.number() => ret,
            inlateout("rdi") &raw const op as u64 => _,
            inlateout("rsi") 1u64 => _,
            inlateout("rdx") &raw mut done as u64 => _,
            inlateout("r10") SELF => _,
            inlateout("r8") NOT_AN_ARGUMENT => r8,
            inlateout("r9") NOT_AN_ARGUMENT => r9,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    if (r8, r9) != (NOT_AN_ARGUMENT, NOT_AN_ARGUMENT) {
        println!("hostile: mmuext_op {cmd:?} returned {ret} with r8 {r8:#x} and r9 {r9:#x} (were {NOT_AN_ARGUMENT:#x})");
        fail("big_tree", "a continued call changed registers it does not take");
    }
    ret
}

/// Reports why the attack could not be made, and crashes the domain.
fn fail(name: &str, why: &str) -> ! {
    println!("hostile: attack {name}: FAILED: {why}");
    shutdown(ShutdownReason::Crash)
}

// ---- Dying in the middle of a long validation -------------------------------------------

/// Set by vCPU 0 just before its long call: the killer's delay starts.
static GO: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
static KILLER_STACK: smp::VcpuStack<8192> = smp::VcpuStack::new();
/// How long after the long call begins the killer shuts the domain down: well inside the
/// call (each of the three validates 2053 tables, hundreds of milliseconds under TCG).
const KILL_AFTER_NS: u64 = 20_000_000;

/// The killer vCPU: waits for [`GO`], lets the long call run [`KILL_AFTER_NS`], then shuts
/// the domain down (poweroff) while vCPU 0 is in the middle of it.
extern "C" fn killer(_: u64) -> ! {
    while !GO.load(core::sync::atomic::Ordering::SeqCst) {
        core::hint::spin_loop();
    }
    let Ok(clock) = Clock::new() else { shutdown(ShutdownReason::Crash) };
    let until = clock.now_ns() + KILL_AFTER_NS;
    while clock.now_ns() < until {
        core::hint::spin_loop();
    }
    shutdown(ShutdownReason::Poweroff)
}

/// Starts the killer on vCPU `id`.
fn start_killer(name: &str, id: u32) {
    if smp::start(VcpuId(id), killer, 0, &KILLER_STACK).is_err() {
        fail(name, "the killer vCPU was refused (vcpus= too small)");
    }
}

/// Reached only if the long call returned before the killer struck: the attack tested
/// nothing (the delay is too long for this machine).
fn outlived(name: &str) -> ! {
    println!("hostile: attack {name}: the call returned before the shutdown (the attack tested nothing)");
    shutdown(ShutdownReason::Crash)
}

/// `die_mid_pin`: the big tree's pin (continued in slices, the walk partial in the frames
/// between them), with the domain shut down by its vCPU 1 in the middle of it: the
/// teardown must relinquish a half-validated tree, frame counts exact (the case's
/// `run=pass`: nothing leaked) and the hypervisor unharmed. Needs `vcpus=2`.
pub fn die_mid_pin(targets: &Targets) -> ! {
    let name = "die_mid_pin";
    let l3 = build(targets, name);
    start_killer(name, 1);
    println!("hostile: attack {name}: pinning {} tables, shut down by vCPU 1 after {} ms", 1 + L2_TABLES + L1_TABLES, KILL_AFTER_NS / 1_000_000);
    GO.store(true, core::sync::atomic::Ordering::SeqCst);
    let _ = extended(MmuextCmd::PinL3Table, l3);
    outlived(name)
}

/// `die_mid_write`: the big tree linked into the live L4 by one emulated `mov` (continued
/// in slices), the domain shut down by vCPU 1 in the middle of it. Needs `vcpus=2`.
pub fn die_mid_write(targets: &Targets) -> ! {
    let name = "die_mid_write";
    let l3 = build(targets, name);
    // SAFETY: vm_assist reads no guest memory.
    let ret = unsafe { hypercall2(Hypercall::VmAssist, VmAssistCmd::Enable.raw().into(), VmAssistType::WritablePagetables.raw().into()) };
    if ret != 0 {
        fail(name, "enabling VMASST_TYPE_writable_pagetables");
    }
    let l4 = &targets.l4;
    let slot = (1..256).find(|&slot| l4.entry(slot) == 0).unwrap_or_else(|| fail(name, "no free L4 slot"));
    start_killer(name, 1);
    println!("hostile: attack {name}: linking {} tables into L4 slot {slot}, shut down by vCPU 1 after {} ms", 1 + L2_TABLES + L1_TABLES, KILL_AFTER_NS / 1_000_000);
    GO.store(true, core::sync::atomic::Ordering::SeqCst);
    // SAFETY: the slot was free: nothing the program uses goes through it.
    unsafe { store(l4.va() + 8 * slot as u64, table_entry(l3)) };
    outlived(name)
}

/// `die_mid_init`: `VCPUOP_initialise` of vCPU 1 on an L4 over the big tree (validated a
/// slice per stay, the call issued again), the domain shut down by vCPU 2 in the middle of
/// it. Needs `vcpus=3`.
pub fn die_mid_init(targets: &Targets) -> ! {
    let name = "die_mid_init";
    let l3 = build(targets, name);
    let l4 = table_in_spare(targets, FIRST_SPARE + L2_TABLES + 1, |index| (index == 0).then(|| table_entry(l3)))
        .unwrap_or_else(|why| fail(name, why));
    start_killer(name, 2);
    println!("hostile: attack {name}: VCPUOP_initialise on {} tables, shut down by vCPU 2 after {} ms", 2 + L2_TABLES + L1_TABLES, KILL_AFTER_NS / 1_000_000);
    let context = smp::context(never_runs, 0, targets.guard.va + PAGE_SIZE, l4.0);
    GO.store(true, core::sync::atomic::Ordering::SeqCst);
    // SAFETY: the vCPU is never brought up (`never_runs`).
    let _ = unsafe { smp::initialise(VcpuId(1), &context) };
    outlived(name)
}
