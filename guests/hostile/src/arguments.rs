//! Attacks through hypercall arguments: guest pointers into the hypervisor's window or
//! non-canonical, absurd counts and lengths, and hypercall and sub-op numbers that do not
//! exist (made with a raw `syscall`, as the hypercall page has no stubs for them).
//!
//! Every call here must fail: the hypervisor must neither read nor write its own memory on
//! the guest's behalf, nor walk past the end of a guest array because a count says so
//! (the one-element arrays end right before an unmapped page, so a hypervisor that trusts
//! the count faults instead of reading junk). Called once by `main`; this module must
//! never pass a pointer to memory the program uses for anything else.

use core::arch::asm;

use guest_rt::abi::hypercall::{ConsoleIoOp, Hypercall, MemoryOp, MulticallEntry};
use guest_rt::abi::ids::DomId;
use guest_rt::abi::memory::XenMemoryReservation;
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{hypercall1, hypercall2, hypercall3, hypercall4};
use guest_rt::layout::{PTE_PRESENT, PTE_USER};
use guest_rt::traps;

use crate::targets::Targets;
use crate::verdict::{Outcome, Tally};

/// The first address of the hypervisor's window (the top 64 MiB).
const WINDOW: u64 = 0xFFFF_FFFF_FC00_0000;
/// The last page of the hypervisor's window.
const WINDOW_LAST_PAGE: u64 = 0xFFFF_FFFF_FFFF_F000;
/// The first non-canonical address.
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;
/// A count far beyond any batch limit (bit 31 set: Xen's continuation flag).
const HUGE_COUNT: u64 = 0xFFFF_FFFF;
/// A console write length far beyond any limit.
const HUGE_LENGTH: u64 = 0x7FFF_FFFF;
/// A command number no batch element has.
const UNKNOWN_COMMAND: u32 = 0xFFFF;
/// Hypercall numbers nobody assigned; the last has bits above 31 over `xen_version`.
const UNKNOWN_HYPERCALLS: [u64; 4] = [43, 64, 0xFFFF, 1 << 32 | Hypercall::XenVersion.number()];
/// A `memory_op` sub-op nobody assigned (the largest the command bits hold).
const UNKNOWN_MEMORY_OP: u64 = 63;
/// `DOMID_SELF` as a register argument.
const SELF: u64 = DomId::SELF.0 as u64;

/// Runs the argument attacks.
pub fn run(tally: &mut Tally, targets: &Targets) {
    hypervisor_pointers(tally, targets);
    huge_counts(tally, targets);
    unknown_numbers(tally);
}

/// Pointers into the hypervisor's window (and one non-canonical) as arguments.
fn hypervisor_pointers(tally: &mut Tally, targets: &Targets) {
    let write = u64::from(ConsoleIoOp::Write.raw());
    // SAFETY: the hypervisor must refuse to read the buffer; reading is all it would do.
    let ret = unsafe { hypercall3(Hypercall::ConsoleIo, write, 64, WINDOW) };
    tally.record(
        format_args!("console write from the hypervisor window"),
        Outcome::of_call(ret),
    );
    // SAFETY: as above.
    let ret = unsafe { hypercall3(Hypercall::ConsoleIo, write, 64, NON_CANONICAL) };
    tally.record(
        format_args!("console write from a non-canonical address"),
        Outcome::of_call(ret),
    );

    // SAFETY: must be refused; were it accepted, the runtime's table is put back below.
    let ret = unsafe { hypercall1(Hypercall::SetTrapTable, WINDOW) };
    if tally.record(
        format_args!("set_trap_table from the hypervisor window"),
        Outcome::of_call(ret),
    ) {
        let _ = traps::install();
    }

    let mut done = 0u32;
    let done_at = &raw mut done as u64;
    // SAFETY: the hypervisor must refuse to read the requests; it writes only `done`.
    let ret = unsafe { hypercall4(Hypercall::MmuUpdate, WINDOW, 1, done_at, SELF) };
    tally.record(
        format_args!("mmu_update requests in the hypervisor window"),
        Outcome::of_call(ret),
    );
    // SAFETY: as above, for mmuext_op.
    let ret = unsafe { hypercall4(Hypercall::MmuextOp, WINDOW, 1, done_at, SELF) };
    tally.record(
        format_args!("mmuext_op ops in the hypervisor window"),
        Outcome::of_call(ret),
    );
    // SAFETY: as above, for multicall.
    let ret = unsafe { hypercall2(Hypercall::Multicall, WINDOW, 1) };
    tally.record(
        format_args!("multicall list in the hypervisor window"),
        Outcome::of_call(ret),
    );

    let current = u64::from(MemoryOp::CurrentReservation.raw());
    // SAFETY: the hypervisor must refuse to read the domid; reading is all it would do.
    let ret = unsafe { hypercall2(Hypercall::MemoryOp, current, WINDOW) };
    tally.record(
        format_args!("memory_op argument in the hypervisor window"),
        Outcome::of_call(ret),
    );
    let mut request = XenMemoryReservation {
        extent_start: WINDOW,
        nr_extents: 1,
        domid: DomId::SELF,
        ..XenMemoryReservation::default()
    };
    let increase = u64::from(MemoryOp::IncreaseReservation.raw());
    // SAFETY: the hypervisor must not write a frame number into its own window; a frame
    // it grants anyway is never used and goes back with the domain.
    let ret = unsafe { hypercall2(Hypercall::MemoryOp, increase, &raw mut request as u64) };
    tally.record(
        format_args!("increase_reservation writing its extents into the hypervisor window"),
        Outcome::of_batch(ret, 1),
    );

    let read_only = targets.spare.address() | PTE_PRESENT | PTE_USER;
    // SAFETY: the hypervisor must refuse to map anything in its own window; the spare
    // frame it would map there is unused.
    let ret = unsafe {
        hypercall3(
            Hypercall::UpdateVaMapping,
            WINDOW_LAST_PAGE,
            read_only,
            UVMF_INVLPG | UVMF_LOCAL,
        )
    };
    tally.record(
        format_args!("update_va_mapping of a hypervisor-window page"),
        Outcome::of_call(ret),
    );
    // SAFETY: as above, for a non-canonical address.
    let ret = unsafe {
        hypercall3(
            Hypercall::UpdateVaMapping,
            NON_CANONICAL,
            read_only,
            UVMF_INVLPG | UVMF_LOCAL,
        )
    };
    tally.record(
        format_args!("update_va_mapping of a non-canonical address"),
        Outcome::of_call(ret),
    );
}

/// Counts and lengths far past any limit, over one-element arrays that end at the hole.
fn huge_counts(tally: &mut Tally, targets: &Targets) {
    let mut done = 0u32;
    let done_at = &raw mut done as u64;
    // The element updates machine address 0, a frame the guest does not own.
    let requests = targets.before_hole(MmuUpdate { ptr: 0, val: 0 });
    // SAFETY: the one request is refused whatever the count; past it lies the hole.
    let ret = unsafe { hypercall4(Hypercall::MmuUpdate, requests, HUGE_COUNT, done_at, SELF) };
    tally.record(
        format_args!("mmu_update count {HUGE_COUNT:#x}"),
        Outcome::of_call(ret),
    );

    let op = MmuextOp {
        cmd: UNKNOWN_COMMAND,
        ..MmuextOp::default()
    };
    let ops = targets.before_hole(op);
    // SAFETY: as above, for mmuext_op.
    let ret = unsafe { hypercall4(Hypercall::MmuextOp, ops, HUGE_COUNT, done_at, SELF) };
    tally.record(
        format_args!("mmuext_op count {HUGE_COUNT:#x}"),
        Outcome::of_call(ret),
    );

    let entry = MulticallEntry {
        op: u64::from(UNKNOWN_COMMAND),
        ..MulticallEntry::default()
    };
    let calls = targets.before_hole(entry);
    // SAFETY: as above, for multicall: the one call is of no hypercall.
    let ret = unsafe { hypercall2(Hypercall::Multicall, calls, HUGE_COUNT) };
    tally.record(
        format_args!("multicall count {HUGE_COUNT:#x}"),
        Outcome::of_call(ret),
    );

    let text = targets.before_hole(*b"hostile: overrun");
    let write = u64::from(ConsoleIoOp::Write.raw());
    // SAFETY: the hypervisor only reads the buffer; past its 16 bytes lies the hole.
    let ret = unsafe { hypercall3(Hypercall::ConsoleIo, write, HUGE_LENGTH, text) };
    tally.record(
        format_args!("console write of {HUGE_LENGTH:#x} bytes"),
        Outcome::of_call(ret),
    );
}

/// Hypercall and sub-op numbers that do not exist.
fn unknown_numbers(tally: &mut Tally) {
    for number in UNKNOWN_HYPERCALLS {
        // SAFETY: no such hypercall exists; the arguments (XENVER_version, no buffer)
        // are harmless even to the call the last number would be if truncated.
        let ret = unsafe { raw_hypercall(number, 0, 0) };
        tally.record(
            format_args!("hypercall number {number:#x}"),
            Outcome::of_call(ret),
        );
    }
    let mut domid = DomId::SELF;
    // SAFETY: the sub-op does not exist; the argument is a readable domid_t.
    let ret = unsafe {
        hypercall2(
            Hypercall::MemoryOp,
            UNKNOWN_MEMORY_OP,
            &raw mut domid as u64,
        )
    };
    tally.record(
        format_args!("memory_op sub-op {UNKNOWN_MEMORY_OP}"),
        Outcome::of_call(ret),
    );
}

/// Hypercall `number` straight through `syscall` (rax = number, result in rax).
///
/// # Safety
/// As `guest_rt::hypercall::hypercall5` for whatever call `number` turns out to be.
unsafe fn raw_hypercall(number: u64, a1: u64, a2: u64) -> i64 {
    let ret;
    // SAFETY: a guest-kernel `syscall` is a hypercall; the caller vouches for the
    // arguments. syscall clobbers rcx and r11; the other argument registers are treated
    // as clobbered too, as the hypercall page's stubs do.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") number => ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            lateout("rdx") _,
            lateout("r10") _,
            lateout("r8") _,
            lateout("r9") _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}
