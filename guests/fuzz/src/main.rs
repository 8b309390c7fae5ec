//! guest-fuzz: a PV guest that fuzzes the hypervisor through every interface a guest
//! kernel has, on two vCPUs at once, seeded and reproducible (`seed=N` replays a run; each
//! vCPU draws from its own stream of it).
//!
//! At start it reads its command line ([`guest_fuzz::options`]), prints
//! "fuzz: seed=N ...", maps the shared info page, installs its exception handler and
//! callbacks ([`guard`]), learns its own layout ([`guest_fuzz::world`]: the program's
//! frames, the boot page tables, the arena it may turn into tables), unmaps its scratch
//! holes, brings up vCPU 1 and then both vCPUs loop: each round draws a family of calls
//! ([`ops`]) and makes it, with structured arguments ([`guest_fuzz::gen`]): page tables of
//! its own frames, pointers of every class, counts at every edge, multicalls, trap tables,
//! iret frames, descriptors, event channels, instructions. vCPU 0 prints a progress line
//! every `progress_ms` ([`report`]) and, with `calls=N`, powers the domain off after N
//! calls. Calls meant to end the domain come rarely, announced by a "fuzz: fatal" line.
//! What the fuzzer must never do is harm itself by accident: no call it makes may write
//! the program's memory or change its mappings, and everything a call may replace
//! (handlers, GDT, bases) is put back after it.

#![no_std]
#![no_main]

mod fuzzer;
mod guard;
mod memory;
mod ops;
mod probes;
mod report;
mod special;

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use arrayvec::ArrayVec;
use guest_fuzz::options::Options;
use guest_fuzz::rng::Rng;
use guest_fuzz::world::{BootTables, Frames, World, BOOT_L3_INDEX, BOOT_L4_SLOT, ENTRIES, PAGE};
use guest_rt::abi::arch_x86::{pfn_to_cr3, VcpuGuestContext, FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, VGCF_IN_KERNEL};
use guest_rt::abi::hypercall::{CallbackType, ShutdownReason, VcpuOp};
use guest_rt::abi::ids::VcpuId;
use guest_rt::abi::mmu::{UVMF_ALL, UVMF_INVLPG};
use guest_rt::hypercall::{self, shutdown};
use guest_rt::layout::{self, PTE_ADDRESS_MASK, PTE_PRESENT, VIRT_BASE};
use guest_rt::time::Clock;
use guest_rt::traps::{trap_table, EXCEPTION_COUNT};
use guest_rt::{println, StartInfo};

use fuzzer::Fuzzer;
use memory::Scratch;

guest_rt::entry!(main);

/// Console writes of fuzzed text each vCPU may make (a line each): far below the console's
/// burst allowance, so that the fuzzer's own lines are never dropped.
const CONSOLE_BUDGET: u32 = 20;

/// The world both vCPUs fuzz in (set by vCPU 0 before vCPU 1 starts; lives on vCPU 0's
/// stack, in `main`, which never returns while vCPU 1 runs).
static WORLD: AtomicPtr<World<'static>> = AtomicPtr::new(ptr::null_mut());
static OPTIONS: AtomicPtr<Options> = AtomicPtr::new(ptr::null_mut());
/// vCPU 1 has started fuzzing.
static SECOND_UP: AtomicBool = AtomicBool::new(false);
/// Progress lines printed (for the rate).
static LAST_PROGRESS: AtomicU64 = AtomicU64::new(0);

fn main(start: &'static StartInfo) {
    let options = match Options::parse(start.cmd_line()) {
        Ok(options) => options,
        Err(error) => {
            println!("fuzz: FAILED bad command line: {error}");
            shutdown(ShutdownReason::Crash)
        }
    };
    report::SEED.store(options.seed, Ordering::Relaxed);
    report::TRACE_FROM.store(options.trace_from, Ordering::Relaxed);
    println!(
        "fuzz: seed={} vcpus={} avoid={} only={} calls={}",
        options.seed, options.vcpus, options.avoid, options.only, options.calls
    );
    let clock = match Clock::new() {
        Ok(clock) => clock,
        Err(error) => fail("mapping the shared info page", error),
    };
    guard::install();
    install_callbacks();
    let world = match learn_world(start) {
        Ok(world) => world,
        Err(what) => {
            println!("fuzz: FAILED {what}");
            shutdown(ShutdownReason::Crash)
        }
    };
    println!(
        "fuzz: world pages={} arena={:#x}..{:#x} tables_pfn={:#x} l4={:#x} l3={:#x} l2={:#x} l1s={:?} code_end={:#x}",
        world.nr_pages, world.arena.start, world.arena.end, world.tables_pfn, world.tables.l4, world.tables.l3, world.tables.l2,
        world.tables.l1s.as_slice(), world.code_va.end
    );
    for vcpu in 0..2 {
        // SAFETY: the holes are pages of the fuzzer's own bss that nothing uses.
        if let Err(error) = unsafe { hypercall::update_va_mapping(memory::hole(vcpu), 0, UVMF_INVLPG | UVMF_ALL) } {
            fail("unmapping a scratch hole", error);
        }
    }
    WORLD.store(ptr::from_ref(&world).cast_mut(), Ordering::Release);
    OPTIONS.store(ptr::from_ref(&options).cast_mut(), Ordering::Release);
    if options.vcpus > 1 {
        bring_up_second(&world);
    }
    LAST_PROGRESS.store(clock.now_ns(), Ordering::Relaxed);
    // SAFETY: `world` lives in this frame, which never returns (the loop below ends the
    // domain instead), so the reference is good for the domain's lifetime.
    let world: &'static World<'static> = unsafe { &*WORLD.load(Ordering::Acquire) };
    let mut fuzzer = new_fuzzer(0, world, &options, clock);
    if options.fatal.is_some() {
        special::fatal(&mut fuzzer, options.fatal);
    }
    let progress_ns = options.progress_ms * 1_000_000;
    let started = clock.now_ns();
    let mut last_calls = 0;
    loop {
        fuzzer.round();
        let calls = report::CALLS.load(Ordering::Relaxed);
        let now = clock.now_ns();
        if now >= LAST_PROGRESS.load(Ordering::Relaxed) + progress_ns {
            let elapsed = now - LAST_PROGRESS.swap(now, Ordering::Relaxed);
            let rate = (calls - last_calls) * 1_000_000_000 / elapsed.max(1);
            last_calls = calls;
            println!(
                "fuzz: progress seed={} calls={calls} per_s={rate} faults={} events={} second={} up_ms={}",
                options.seed,
                guard::FAULTS.load(Ordering::Relaxed),
                guard::EVENTS.load(Ordering::Relaxed),
                u8::from(SECOND_UP.load(Ordering::Relaxed)),
                (now - started) / 1_000_000,
            );
        }
        if options.calls != 0 && calls >= options.calls {
            println!("fuzz: end seed={} calls={calls}", options.seed);
            shutdown(ShutdownReason::Poweroff);
        }
    }
}

/// Reports a failed step of the set-up and crashes the domain.
fn fail(what: &str, error: hypercall::HypercallError) -> ! {
    println!("fuzz: FAILED {what}: {error:?}");
    shutdown(ShutdownReason::Crash)
}

/// Registers the fuzzer's event and failsafe callbacks (on the calling vCPU).
fn install_callbacks() {
    // SAFETY: the fuzzer's own entry points, which handle their frames.
    unsafe {
        if let Err(error) = hypercall::callback_register(CallbackType::Event, guard::event_entry(), 0) {
            fail("registering the event callback", error);
        }
        if let Err(error) = hypercall::callback_register(CallbackType::Failsafe, guard::failsafe_entry(), 0) {
            fail("registering the failsafe callback", error);
        }
    }
    guard::set_upcall_mask(0, true);
}

/// A fuzzing vCPU's state.
fn new_fuzzer(vcpu: usize, world: &'static World<'static>, options: &Options, clock: Clock) -> Fuzzer {
    Fuzzer {
        vcpu,
        rng: Rng::for_vcpu(options.seed, vcpu as u32),
        world,
        frames: Frames::new(world, vcpu, options.vcpus as usize),
        scratch: Scratch::new(vcpu),
        avoid: options.avoid,
        only: options.only,
        clock,
        console_budget: CONSOLE_BUDGET,
        links: ArrayVec::new(),
        pinned: ArrayVec::new(),
        on_clone: false,
        check_code: options.check_code,
    }
}

extern "C" {
    /// The end of the image's code and read-only data (guest.ld).
    static __guest_data_start: u8;
}

/// Reads entry `index` of the boot table whose pfn is `pfn` (mapped read-only).
fn boot_entry(pfn: u64, index: usize) -> u64 {
    let va = VIRT_BASE + pfn * PAGE + index as u64 * 8;
    // SAFETY: `pfn` is one of the boot tables, which the builder maps read-only at their
    // initial address for the domain's lifetime.
    unsafe { (va as *const u64).read_volatile() }
}

/// The fuzzer's domain, from start_info and its boot tables.
fn learn_world(start: &'static StartInfo) -> Result<World<'static>, &'static str> {
    let first_table = layout::virt_to_pfn(start.pt_base).ok_or("pt_base outside the initial mapping")?.0;
    let tables_end = first_table + start.nr_pt_frames;
    // SAFETY: the runtime checked that the P2M list (nr_pages entries) lies in the initial
    // mapping; `Mfn` is a transparent u64, and the list is never written.
    let p2m: &'static [u64] = unsafe { core::slice::from_raw_parts(start.mfn_list as *const u64, start.nr_pages as usize) };
    let pfn_of = |mfn: u64| p2m.iter().position(|&m| m == mfn).map(|p| p as u64);
    let table_pfn = |entry: u64| -> Result<u64, &'static str> {
        if entry & PTE_PRESENT == 0 {
            return Err("a boot table entry is missing");
        }
        let pfn = pfn_of((entry & PTE_ADDRESS_MASK) >> 12).ok_or("a boot table is not the domain's")?;
        if (first_table..tables_end).contains(&pfn) { Ok(pfn) } else { Err("a boot table lies outside pt_base") }
    };
    let l4_entry_511 = boot_entry(first_table, BOOT_L4_SLOT);
    let l3 = table_pfn(l4_entry_511)?;
    let l2 = table_pfn(boot_entry(l3, BOOT_L3_INDEX))?;
    let mut l1s = ArrayVec::new();
    for index in 0..ENTRIES {
        let entry = boot_entry(l2, index);
        if entry & PTE_PRESENT == 0 || l1s.is_full() {
            break;
        }
        l1s.push(p2m[table_pfn(entry)? as usize]);
    }
    // The boot stack follows the tables; one page of margin after it.
    let arena = tables_end + 2..start.nr_pages;
    if arena.end <= arena.start + 16 {
        return Err("too few free frames for an arena");
    }
    let scratch = |vcpu| memory::scratch(vcpu)..memory::scratch(vcpu) + memory::SCRATCH_BYTES;
    Ok(World {
        virt_base: VIRT_BASE,
        nr_pages: start.nr_pages,
        p2m,
        arena: arena.clone(),
        tables: BootTables { l4: p2m[first_table as usize], l3: p2m[l3 as usize], l2: p2m[l2 as usize], l1s, l4_entry_511 },
        shared_info_mfn: start.shared_info >> 12,
        tables_va: VIRT_BASE + first_table * PAGE..VIRT_BASE + tables_end * PAGE,
        tables_pfn: first_table,
        scratch: [scratch(0), scratch(1)],
        hole: [memory::hole(0), memory::hole(1)],
        code_va: VIRT_BASE..&raw const __guest_data_start as u64,
    })
}

/// Brings up vCPU 1 on its own stack, with the runtime's trap table, the fuzzer's
/// callbacks and the boot L4; it fuzzes from [`second_main`].
fn bring_up_second(world: &World<'_>) {
    let mut context = VcpuGuestContext { flags: VGCF_IN_KERNEL, kernel_ss: FLAT_KERNEL_SS64.into(), ..VcpuGuestContext::default() };
    let entry: extern "C" fn() -> ! = second_main;
    let regs = &mut context.user_regs;
    regs.rip = entry as usize as u64;
    regs.rsp = memory::stack1_top() - 8;
    regs.cs = FLAT_KERNEL_CS64;
    regs.ss = FLAT_KERNEL_SS64;
    regs.rflags = 0x202;
    let table = trap_table(special::trap_stubs());
    for entry in &table[..EXCEPTION_COUNT] {
        context.trap_ctxt[usize::from(entry.vector)] = *entry;
    }
    context.event_callback_eip = guard::event_entry();
    context.failsafe_callback_eip = guard::failsafe_entry();
    context.ctrlreg[3] = pfn_to_cr3(world.tables.l4);
    // SAFETY: a complete context: its own stack, an entry that never returns, the
    // runtime's trap table and the boot L4 every vCPU shares. The hypervisor only reads it.
    if let Err(error) = unsafe { hypercall::vcpu_op_raw(VcpuOp::Initialise, VcpuId(1), &raw mut context) } {
        fail("initialising vCPU 1", error);
    }
    if let Err(error) = hypercall::vcpu_control(hypercall::VcpuControl::Up, VcpuId(1)) {
        fail("starting vCPU 1", error);
    }
}

/// vCPU 1's entry: fuzzes until the domain ends.
extern "C" fn second_main() -> ! {
    guard::set_upcall_mask(1, true);
    // SAFETY: vCPU 0 stored both before it started this vCPU, pointing into its `main`,
    // which never returns while the domain lives.
    let (world, options) = unsafe { (&*WORLD.load(Ordering::Acquire), *OPTIONS.load(Ordering::Acquire)) };
    let Some(clock) = Clock::mapped() else { shutdown(ShutdownReason::Crash) };
    SECOND_UP.store(true, Ordering::Relaxed);
    let mut fuzzer = new_fuzzer(1, world, &options, clock);
    loop {
        fuzzer.round();
    }
}
