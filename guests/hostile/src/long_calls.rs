//! Hypercalls that ask for a great deal of work in one call: a long `mmu_update`, a
//! multicall of many long `mmu_update`s, a long `mmuext_op` (alone and in a multicall), a
//! 64 KiB console write, and `decrease_reservation` of a long list of frames (some it may
//! give back, then some it may not). A hypervisor that runs such a call to its end with
//! interrupts off holds the CPU for as long as the guest likes, and every interrupt, event
//! and cross-CPU call of that CPU waits behind it.
//!
//! Each attack is one entry of [`crate::fatal`]'s table (`attack=long_mmu_update`,
//! `long_mmuext`, `long_console`, `long_decrease`, `long_gdt`, `long_exchange`: an
//! `exchange` of 8192 frames, one chunk each), so that each runs in a
//! domain of its own beside well-behaved ones. (`long_gdt` makes many calls that are
//! long but bounded, `set_gdt` of 14 frames, for the stays they cause.) Every call must still give the right results (counts
//! done, entry results, reservation), and must let this domain's own timer event in while
//! it runs: the vCPU's one-shot timer is armed 1 ms ahead of each call, and a call that
//! takes longer than [`WATCHED_NS`] must have taken the event's upcall at least
//! [`EVENT_BEFORE_END_NS`] before it returned (a hypervisor that runs the call to its end
//! delivers it only on the way out). How
//! long a single stay in the hypervisor lasts is measured by the hypervisor itself
//! (`summary: sched.max_stay_us`, checked by the QEMU case).
//!
//! Console: "hostile: attack <name>: <what it does>", one line per call: "hostile: long
//! <call>: contained (...)" or "... HELD THE CPU (BUG) (...)" or "... WRONG RESULT (BUG)
//! (...)", then "hostile: long calls contained" and power-off, or a crash when any call
//! failed. Memory: the attacks use the free pages of the initial mapping after the
//! targets as scratch (about 500 KiB; more with a larger reservation), and
//! `long_decrease` gives back (and `long_exchange` trades) frames beyond the initial
//! mapping (the QEMU cases give them 128 MiB reservations). This module must never use a page the program or the targets use.

use core::fmt;

use guest_rt::abi::hypercall::{
    ConsoleIoOp, Hypercall, MemoryOp, MmuUpdateCmd, MmuextCmd, MulticallEntry, ShutdownReason,
};
use guest_rt::abi::ids::{DomId, Mfn, Pfn, PAGE_SIZE};
use guest_rt::abi::arch_x86::MACH2PHYS_VIRT_START;
use guest_rt::abi::memory::{XenMemoryExchange, XenMemoryReservation};
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp};
use guest_rt::balloon::{self, FrameLayout};
use guest_rt::events::Events;
use guest_rt::abi::mmu::{UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{decode, hypercall2, hypercall3, hypercall4, shutdown, update_va_mapping};
use guest_rt::layout::{self, PTE_ADDRESS_MASK, PTE_PRESENT};
use guest_rt::time::Clock;
use guest_rt::timer::{self, Timer};
use guest_rt::{println, start_info};

use crate::targets::{Targets, HYPERVISOR_IMAGE};

/// A call shorter than this is not judged by its timer event (it may well end before the
/// event is due).
const WATCHED_NS: u64 = 4_000_000;
/// How far ahead of each call the timer is armed.
const TIMER_AHEAD_NS: u64 = 1_000_000;
/// How much of a watched call must be left when its timer event comes in.
const EVENT_BEFORE_END_NS: u64 = 1_000_000;
/// Requests in the long `mmu_update` (each rewrites one unused L1 entry with itself).
const UPDATES: usize = 8192;
/// Entries in the multicalls (each a call as long as the single one).
const MULTICALL_ENTRIES: usize = 64;
/// TLB flushes in the long `mmuext_op`.
const FLUSHES: usize = 8192;
/// Entries in the multicall of long `mmuext_op`s.
const MMUEXT_ENTRIES: usize = 8;
/// Bytes in the console write: the most one call may carry.
const CONSOLE_BYTES: usize = 64 * 1024;
/// How long the console attack waits after its flood before it prints its verdict: the
/// flood spends the domain's console rate budget, and the verdict must not be dropped.
const CONSOLE_REST_NS: u64 = 500_000_000;
/// Frames given back in one `decrease_reservation` (needs that many beyond the initial
/// mapping).
const GIVE_BACK: usize = 16384;
/// Extents in the list of frames the domain may not give back.
const REFUSED_EXTENTS: usize = 8192;
/// `DOMID_SELF` as a register argument.
const SELF: u64 = DomId::SELF.0 as u64;
/// Free frames [`Targets`] takes at the start of the free mapped pages.
const TARGET_FRAMES: u64 = 3;

/// The free mapped pages after the targets, handed out front to back.
struct Scratch {
    next: u64,
    end: u64,
}

impl Scratch {
    fn new(frames: &FrameLayout) -> Self {
        let first = frames.first_free + TARGET_FRAMES;
        let va = |pfn: u64| layout::pfn_to_virt(Pfn(pfn)).unwrap_or(0);
        Self {
            next: va(first),
            end: va(frames.mapped_end.max(first)),
        }
    }

    /// `count` copies of `value` in fresh scratch pages; crashes the domain when the
    /// pages run out (the attack needs a larger reservation).
    fn take<T: Copy>(&mut self, count: usize, value: T) -> &'static mut [T] {
        let bytes = (count * size_of::<T>()) as u64;
        let start = self.next.next_multiple_of(align_of::<T>() as u64);
        if start + bytes > self.end {
            println!(
                "hostile: long calls: scratch too small ({bytes} bytes wanted, {} left)",
                self.end.saturating_sub(start)
            );
            shutdown(ShutdownReason::Crash);
        }
        self.next = (start + bytes).next_multiple_of(PAGE_SIZE);
        // SAFETY: [start, start + bytes) lies in free pages of the initial mapping,
        // mapped writable, that nothing else uses and that no other `take` hands out.
        let slice = unsafe { core::slice::from_raw_parts_mut(start as *mut T, count) };
        slice.fill(value);
        slice
    }
}

/// The timer and clock each call is watched with.
struct Watch {
    clock: Clock,
    timer: Timer,
    failures: u32,
}

/// How one call went, as the guest saw it.
struct Seen {
    call_ns: u64,
    /// How long after its deadline the timer's upcall came, and how long before the call
    /// ended, if it came.
    upcall: Option<Upcall>,
}

#[derive(Clone, Copy)]
struct Upcall {
    late_ns: u64,
    before_end_ns: u64,
}

impl Seen {
    /// Whether the timer event came in while the call still had work to do (or the call
    /// was too short to tell). A hypervisor that runs the call to its end delivers the
    /// event on the way out, microseconds before the call returns; one that lets events
    /// in between parts delivers it at the first part that ends after the deadline (or,
    /// should this vCPU be descheduled then, when it runs again), and the call then has
    /// all but the first millisecond of its work left.
    fn let_events_in(&self) -> bool {
        self.call_ns < WATCHED_NS || self.upcall.is_some_and(|upcall| upcall.before_end_ns >= EVENT_BEFORE_END_NS)
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call {} us", self.call_ns / 1000)?;
        match self.upcall {
            Some(upcall) => write!(
                f,
                ", timer upcall {} us after its deadline, {} us before the call returned",
                upcall.late_ns / 1000,
                upcall.before_end_ns / 1000
            ),
            None => f.write_str(", no timer upcall"),
        }
    }
}

impl Watch {
    fn new() -> Self {
        let fail = |what: &str| -> ! {
            println!("hostile: long calls: {what} failed");
            shutdown(ShutdownReason::Crash)
        };
        let clock = Clock::new().unwrap_or_else(|_| fail("the clock"));
        let events = Events::init().unwrap_or_else(|_| fail("event set-up"));
        let timer = Timer::bind(events).unwrap_or_else(|_| fail("binding the timer"));
        events.enable();
        Self {
            clock,
            timer,
            failures: 0,
        }
    }

    /// Runs `call` with the timer armed [`TIMER_AHEAD_NS`] ahead. Should the event come
    /// before the call is made (this vCPU was descheduled in between), the timer is armed
    /// again.
    fn call<R>(&self, call: impl FnOnce() -> R) -> (R, Seen) {
        let (before, start, deadline) = loop {
            let before = self.timer.fired();
            let start = self.clock.now_ns();
            let deadline = start + TIMER_AHEAD_NS;
            if timer::set_deadline(deadline).is_err() {
                println!("hostile: long calls: arming the timer failed");
                shutdown(ShutdownReason::Crash);
            }
            if self.timer.fired() == before {
                break (before, start, deadline);
            }
        };
        let result = call();
        let end = self.clock.now_ns();
        let upcall = (self.timer.fired() > before).then(|| {
            let at = self.timer.last_fired_ns();
            Upcall {
                late_ns: at.saturating_sub(deadline),
                before_end_ns: end.saturating_sub(at),
            }
        });
        let _ = timer::cancel();
        (
            result,
            Seen {
                call_ns: end - start,
                upcall,
            },
        )
    }

    /// Prints the verdict on one call: whether its results were `right` (`results` says
    /// what they were) and, for a call that asks for long work, whether it let events in.
    /// (A call that is quick by design is not judged by its timer event: this vCPU may be
    /// descheduled at its end, and the event then comes only when it runs again.)
    fn judge(&mut self, what: fmt::Arguments<'_>, seen: &Seen, right: bool, results: fmt::Arguments<'_>) {
        self.judge_as(what, seen, right, results, true);
    }

    fn judge_as(&mut self, what: fmt::Arguments<'_>, seen: &Seen, right: bool, results: fmt::Arguments<'_>, long: bool) {
        if !right {
            self.failures += 1;
            println!("hostile: long {what}: WRONG RESULT (BUG) ({results}; {seen})");
        } else if long && !seen.let_events_in() {
            self.failures += 1;
            println!("hostile: long {what}: HELD THE CPU (BUG) ({results}; {seen})");
        } else {
            println!("hostile: long {what}: contained ({results}; {seen})");
        }
    }

    /// Powers off when every call was right and contained, else crashes.
    fn end(&self) -> ! {
        if self.failures == 0 {
            println!("hostile: long calls contained");
            shutdown(ShutdownReason::Poweroff)
        }
        println!("hostile: long calls: {} failed", self.failures);
        shutdown(ShutdownReason::Crash)
    }
}

/// The frame layout the builder left; crashes the domain without one.
fn frames() -> FrameLayout {
    FrameLayout::of(start_info::start_info()).unwrap_or_else(|| {
        println!("hostile: long calls: no frame layout");
        shutdown(ShutdownReason::Crash)
    })
}

/// The machine address of the L1 entry that maps `va`, walking the boot tables through
/// their read-only mapping.
fn l1_entry_address(targets: &Targets, va: u64) -> Option<u64> {
    let index = |level: u32| ((va >> (12 + 9 * level)) & 511) as usize;
    let mut entry = targets.l4.entry(index(3));
    for level in (0..3).rev() {
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        let mfn = Mfn::containing(entry & PTE_ADDRESS_MASK);
        let pfn = start_info::mfn_list().iter().position(|&m| m == mfn)?;
        let table = layout::pfn_to_virt(Pfn(pfn as u64))?;
        let slot = table + 8 * index(level) as u64;
        if level == 0 {
            return Some(mfn.address() + 8 * index(level) as u64);
        }
        // SAFETY: `table` maps a boot page table (read-only) and the slot lies inside it.
        entry = unsafe { (slot as *const u64).read_volatile() };
    }
    None
}

/// A multicall entry for hypercall `call` with `args`.
fn entry(call: Hypercall, args: [u64; 4]) -> MulticallEntry {
    MulticallEntry {
        op: call.number(),
        result: u64::MAX,
        args: [args[0], args[1], args[2], args[3], 0, 0],
    }
}

/// A long `mmu_update`, then a multicall of [`MULTICALL_ENTRIES`] of them, each request
/// rewriting the hole's (empty) L1 entry with itself.
pub fn mmu_update(targets: &Targets) -> ! {
    println!(
        "hostile: attack long_mmu_update: one mmu_update of {UPDATES}, then a multicall of \
         {MULTICALL_ENTRIES} such (an empty L1 entry rewritten with itself)"
    );
    let mut watch = Watch::new();
    let Some(target) = l1_entry_address(targets, targets.hole) else {
        println!("hostile: long calls: the hole's L1 entry not found");
        shutdown(ShutdownReason::Crash);
    };
    let mut scratch = Scratch::new(&frames());
    let request = MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, target, 0);
    let requests = scratch.take(UPDATES, request);
    let done = scratch.take(MULTICALL_ENTRIES, 0u32);

    let (ret, seen) = watch.call(|| {
        // SAFETY: every request rewrites the hole's empty L1 entry with 0: nothing the
        // program uses changes. The hypervisor reads the requests and writes `done[0]`.
        unsafe {
            hypercall4(
                Hypercall::MmuUpdate,
                requests.as_ptr() as u64,
                UPDATES as u64,
                &raw mut done[0] as u64,
                SELF,
            )
        }
    });
    let right = ret == 0 && done[0] as usize == UPDATES;
    watch.judge(format_args!("mmu_update of {UPDATES}"), &seen, right, format_args!("rax {ret}, {} done", done[0]));

    done.fill(0);
    let calls = scratch.take(MULTICALL_ENTRIES, MulticallEntry::default());
    for (i, call) in calls.iter_mut().enumerate() {
        let args = [requests.as_ptr() as u64, UPDATES as u64, &raw mut done[i] as u64, SELF];
        *call = entry(Hypercall::MmuUpdate, args);
    }
    let (ret, seen) = watch.call(|| multicall(calls));
    let bad_result = calls.iter().position(|c| c.result != 0);
    let short = done.iter().position(|&d| d as usize != UPDATES);
    let right = ret == 0 && bad_result.is_none() && short.is_none();
    watch.judge(
        format_args!("multicall of {MULTICALL_ENTRIES} x mmu_update of {UPDATES}"),
        &seen,
        right,
        format_args!("rax {ret}, first bad result at {bad_result:?}, first short count at {short:?}"),
    );
    watch.end()
}

/// A long `mmuext_op` of local TLB flushes, then a multicall of [`MMUEXT_ENTRIES`] such.
pub fn mmuext(_targets: &Targets) -> ! {
    println!(
        "hostile: attack long_mmuext: one mmuext_op of {FLUSHES} local TLB flushes, then a \
         multicall of {MMUEXT_ENTRIES} such"
    );
    let mut watch = Watch::new();
    let mut scratch = Scratch::new(&frames());
    let ops = scratch.take(FLUSHES, MmuextOp::plain(MmuextCmd::TlbFlushLocal));
    let done = scratch.take(MMUEXT_ENTRIES, 0u32);

    let (ret, seen) = watch.call(|| {
        // SAFETY: local TLB flushes change nothing the program relies on; the hypervisor
        // reads the ops and writes `done[0]`.
        unsafe {
            hypercall4(Hypercall::MmuextOp, ops.as_ptr() as u64, FLUSHES as u64, &raw mut done[0] as u64, SELF)
        }
    });
    let right = ret == 0 && done[0] as usize == FLUSHES;
    watch.judge(format_args!("mmuext_op of {FLUSHES}"), &seen, right, format_args!("rax {ret}, {} done", done[0]));

    done.fill(0);
    let calls = scratch.take(MMUEXT_ENTRIES, MulticallEntry::default());
    for (i, call) in calls.iter_mut().enumerate() {
        let args = [ops.as_ptr() as u64, FLUSHES as u64, &raw mut done[i] as u64, SELF];
        *call = entry(Hypercall::MmuextOp, args);
    }
    let (ret, seen) = watch.call(|| multicall(calls));
    let bad_result = calls.iter().position(|c| c.result != 0);
    let short = done.iter().position(|&d| d as usize != FLUSHES);
    let right = ret == 0 && bad_result.is_none() && short.is_none();
    watch.judge(
        format_args!("multicall of {MMUEXT_ENTRIES} x mmuext_op of {FLUSHES}"),
        &seen,
        right,
        format_args!("rax {ret}, first bad result at {bad_result:?}, first short count at {short:?}"),
    );
    watch.end()
}

/// One console write of [`CONSOLE_BYTES`]: lines of text, as many as fit.
pub fn console(_targets: &Targets) -> ! {
    println!("hostile: attack long_console: one console write of {CONSOLE_BYTES} bytes");
    let mut watch = Watch::new();
    let mut scratch = Scratch::new(&frames());
    let text = scratch.take(CONSOLE_BYTES, b'x');
    for (i, line) in text.chunks_mut(128).enumerate() {
        let prefix = b"hostile: console flood line ";
        line[..prefix.len()].copy_from_slice(prefix);
        let mut number = i;
        for digit in line[prefix.len()..prefix.len() + 4].iter_mut().rev() {
            *digit = b'0' + (number % 10) as u8;
            number /= 10;
        }
        line[127] = b'\n';
    }
    let (ret, seen) = watch.call(|| {
        let op = u64::from(ConsoleIoOp::Write.raw());
        // SAFETY: the hypervisor only reads the scratch text.
        unsafe { hypercall3(Hypercall::ConsoleIo, op, CONSOLE_BYTES as u64, text.as_ptr() as u64) }
    });
    let _ = watch.timer.sleep_until(watch.clock.now_ns() + CONSOLE_REST_NS);
    watch.judge(format_args!("console write of {CONSOLE_BYTES} bytes"), &seen, decode(ret).is_ok(), format_args!("rax {ret}"));
    watch.end()
}

/// `decrease_reservation` of [`GIVE_BACK`] frames it may give back (beyond the initial
/// mapping, unused), then of [`REFUSED_EXTENTS`] naming the hypervisor's image.
pub fn decrease(_targets: &Targets) -> ! {
    println!(
        "hostile: attack long_decrease: give back {GIVE_BACK} unused frames in one call, \
         then a list of {REFUSED_EXTENTS} naming the hypervisor's image"
    );
    let mut watch = Watch::new();
    let frames = frames();
    let mut scratch = Scratch::new(&frames);
    let p2m = start_info::mfn_list();
    let first = frames.mapped_end as usize;
    if p2m.len() < first + GIVE_BACK {
        println!("hostile: long calls: {} frames beyond the initial mapping, {GIVE_BACK} needed", p2m.len().saturating_sub(first));
        shutdown(ShutdownReason::Crash);
    }
    let extents = scratch.take(GIVE_BACK, Mfn(0));
    extents.copy_from_slice(&p2m[p2m.len() - GIVE_BACK..]);
    let before = balloon::current_reservation().unwrap_or(0);
    let (ret, seen) = watch.call(|| {
        // SAFETY: the frames lie beyond the initial mapping and are never used.
        unsafe { reservation_op(MemoryOp::DecreaseReservation, extents) }
    });
    let after = balloon::current_reservation().unwrap_or(0);
    let right = ret == GIVE_BACK as i64 && before.checked_sub(after) == Some(GIVE_BACK as u64);
    watch.judge(
        format_args!("decrease_reservation of {GIVE_BACK}"),
        &seen,
        right,
        format_args!("rax {ret}, reservation {before} -> {after}"),
    );

    let refused = scratch.take(REFUSED_EXTENTS, HYPERVISOR_IMAGE);
    let (ret, seen) = watch.call(|| {
        // SAFETY: the hypervisor must refuse the first extent: nothing changes.
        unsafe { reservation_op(MemoryOp::DecreaseReservation, refused) }
    });
    watch.judge_as(
        format_args!("decrease_reservation of {REFUSED_EXTENTS} foreign frames"),
        &seen,
        ret == 0,
        format_args!("rax {ret}"),
        false,
    );
    watch.end()
}

/// Frames traded in one `exchange` (needs that many beyond the initial mapping).
const EXCHANGED: usize = 8192;

/// `exchange` of [`EXCHANGED`] unused frames beyond the initial mapping for as many new
/// ones, one chunk per frame, in one call: it must end with every frame traded
/// (`nr_exchanged`, the reservation unchanged, each new frame's M2P entry the guest frame
/// asked for) and let the timer event in meanwhile.
pub fn exchange(_targets: &Targets) -> ! {
    println!("hostile: attack long_exchange: exchange {EXCHANGED} unused frames for new ones in one call");
    let mut watch = Watch::new();
    let frames = frames();
    let mut scratch = Scratch::new(&frames);
    let p2m = start_info::mfn_list();
    if p2m.len() < frames.mapped_end as usize + EXCHANGED {
        println!("hostile: long calls: {} frames beyond the initial mapping, {EXCHANGED} needed", p2m.len().saturating_sub(frames.mapped_end as usize));
        shutdown(ShutdownReason::Crash);
    }
    let first_pfn = (p2m.len() - EXCHANGED) as u64;
    let input = scratch.take(EXCHANGED, 0u64);
    for (slot, mfn) in input.iter_mut().zip(&p2m[first_pfn as usize..]) {
        *slot = mfn.0;
    }
    let output = scratch.take(EXCHANGED, 0u64);
    for (i, slot) in output.iter_mut().enumerate() {
        *slot = first_pfn + i as u64;
    }
    let side = |list: &mut [u64]| XenMemoryReservation {
        extent_start: list.as_mut_ptr() as u64,
        nr_extents: list.len() as u64,
        domid: DomId::SELF,
        ..XenMemoryReservation::default()
    };
    let mut x = XenMemoryExchange { input: side(input), output: side(output), nr_exchanged: 0 };
    let before = balloon::current_reservation().unwrap_or(0);
    let (ret, seen) = watch.call(|| {
        // SAFETY: the input frames lie beyond the initial mapping and are never used; the
        // new ones are only read through the M2P table.
        unsafe { hypercall2(Hypercall::MemoryOp, MemoryOp::Exchange.raw().into(), &raw mut x as u64) }
    });
    let after = balloon::current_reservation().unwrap_or(0);
    let m2p = |mfn: u64| {
        // SAFETY: every frame of the machine has an entry in the read-only table.
        unsafe { ((MACH2PHYS_VIRT_START + mfn * 8) as *const u64).read_volatile() }
    };
    let named = output.iter().enumerate().filter(|&(i, &mfn)| m2p(mfn) == first_pfn + i as u64).count();
    let right = ret == 0 && x.nr_exchanged == EXCHANGED as u64 && before == after && named == EXCHANGED;
    watch.judge(
        format_args!("exchange of {EXCHANGED}"),
        &seen,
        right,
        format_args!("rax {ret}, nr_exchanged {}, reservation {before} -> {after}, {named} new entries right", x.nr_exchanged),
    );
    watch.end()
}

/// GDT frames in the longest `set_gdt` (14: every page below Xen's reserved one).
const GDT_FRAMES: usize = 14;
/// `set_gdt` calls in a row.
const GDT_CALLS: usize = 64;
/// A flat 64-bit user data descriptor: every one of its checks passes.
const USER_DATA: u64 = 0x00cf_f200_0000_ffff;

/// `set_gdt` of [`GDT_FRAMES`] frames full of valid descriptors, [`GDT_CALLS`] times: each
/// call checks 7168 descriptors, a bounded amount of work; the hypervisor's stays show
/// how long it is.
pub fn gdt(_targets: &Targets) -> ! {
    println!("hostile: attack long_gdt: {GDT_CALLS} set_gdt calls of {GDT_FRAMES} frames of valid descriptors");
    let mut watch = Watch::new();
    let mut scratch = Scratch::new(&frames());
    let mut list = [Mfn(0); GDT_FRAMES];
    for slot in &mut list {
        let page = scratch.take(PAGE_SIZE as usize / 8, USER_DATA);
        let va = page.as_ptr() as u64;
        *slot = start_info::virt_to_mfn(va).unwrap_or(Mfn(0));
        // SAFETY: a scratch page of its own: nothing else uses it, and it is never
        // touched again through this mapping.
        if unsafe { update_va_mapping(va, 0, UVMF_INVLPG | UVMF_LOCAL) }.is_err() {
            println!("hostile: long calls: unmapping a GDT frame failed");
            shutdown(ShutdownReason::Crash);
        }
    }
    let entries = (GDT_FRAMES * 512) as u64;
    let (bad, seen) = watch.call(|| {
        (0..GDT_CALLS)
            .map(|_| {
                // SAFETY: the frames hold only flat user data descriptors; no selector the
                // program uses points into the guest GDT.
                unsafe { hypercall2(Hypercall::SetGdt, list.as_ptr() as u64, entries) }
            })
            .filter(|&ret| ret != 0)
            .count()
    });
    watch.judge_as(
        format_args!("{GDT_CALLS} set_gdt of {GDT_FRAMES} frames"),
        &seen,
        bad == 0,
        format_args!("{bad} calls failed"),
        false,
    );
    watch.end()
}

/// A multicall of `calls`; rax after it.
fn multicall(calls: &mut [MulticallEntry]) -> i64 {
    // SAFETY: each entry is a call its builder vouched for; the hypervisor reads and
    // writes the entries.
    unsafe { hypercall2(Hypercall::Multicall, calls.as_mut_ptr() as u64, calls.len() as u64) }
}

/// `memory_op(cmd)` on `extents` of the domain itself; rax after it.
///
/// # Safety
/// The frames named must be the caller's to give away (or must be refused).
unsafe fn reservation_op(cmd: MemoryOp, extents: &mut [Mfn]) -> i64 {
    let mut reservation = XenMemoryReservation {
        extent_start: extents.as_mut_ptr() as u64,
        nr_extents: extents.len() as u64,
        extent_order: 0,
        mem_flags: 0,
        domid: DomId::SELF,
        _pad: [0; 3],
    };
    // SAFETY: the caller vouches for the frames; the hypervisor reads the reservation and
    // the extent list.
    unsafe { hypercall2(Hypercall::MemoryOp, cmd.raw().into(), &raw mut reservation as u64) }
}
