//! Attacks through the other ways into ring 0 (issue 15, hole 2): `syscall` from 32-bit
//! (compatibility-mode) code and `sysenter`.
//!
//! A 64-bit guest reaches compatibility mode with a far jump to the ring-3 32-bit code
//! selector 0xe023 (through a pointer in memory: under QEMU's TCG with SMAP on, a ring-3
//! `lretq` or `iretq` faults, as TCG pops their stack with supervisor accesses); the
//! code must lie below 4 GiB, so the attack first maps a page of its
//! own at address 0 (new L3, L2 and L1 tables under L4 slot 0, which the builder leaves
//! empty) holding the 32-bit `syscall`, and a stack page at 0x1000. The page at 0 also
//! holds, at offset 0, a ring-0 payload: with CSTAR never written (0), a compat `syscall`
//! entered ring 0 at address 0 of the guest's own address space on the guest's stack and
//! GS, and the payload printed "hostile: RING 0 ..." on COM1 and stopped the machine
//! through the isa-debug-exit port. Contained, the syscall reaches the guest's syscall32
//! callback, or, without one, the guest kernel gets #UD at the `syscall`.
//!
//! `sysenter` (64-bit code) must never enter ring 0 at a guest-chosen place: it reaches
//! the sysenter callback, or, without one, the guest gets the #GP (Intel) or #UD (AMD)
//! the CPU raises.
//!
//! Attacks: `syscall32`, `syscall32_no_callback`, `sysenter`, `sysenter_no_callback`.
//! Called by [`crate::fatal`], one per domain; the landings are [`crate::contained`]'s.
//! This module must never return.

use core::arch::{asm, global_asm};

use guest_rt::abi::callback::CALLBACKF_MASK_EVENTS;
use guest_rt::abi::hypercall::{CallbackType, MmuUpdateCmd, ShutdownReason};
use guest_rt::abi::ids::{DomId, Mfn, Pfn, PAGE_SIZE};
use guest_rt::abi::mmu::{MmuUpdate, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{self, shutdown};
use guest_rt::layout::{self, PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use guest_rt::traps::{self, Vector};
use guest_rt::{println, start_info};

use crate::contained::{self, Landing};
use crate::targets::Targets;

/// Where the 32-bit code lies in the low page (the ring-0 payload is at offset 0).
const COMPAT_CODE: u64 = 0x800;
/// The top of the low stack page.
const LOW_STACK_TOP: u64 = 0x2000;
/// The ring-3 32-bit code selector.
const CS32: u64 = 0xe023;
/// Frames the low mapping takes: L3, L2, L1, code, stack.
const LOW_FRAMES: usize = 5;
/// The frames the shared targets take first (see [`Targets`]).
const TARGET_FRAMES: u64 = 3;
/// Xen's boot slack in pages (the initial mapping covers this much past the boot stack).
const BOOT_SLACK_PAGES: u64 = 128;

global_asm!(
    ".pushsection .text.hostile_compat_blobs,\"ax\",@progbits",
    // Copied to address 0: what ring 0 runs if a compat `syscall` goes to CSTAR = 0.
    ".globl hostile_ring0_payload",
    "hostile_ring0_payload:",
    "    mov dx, 0x3f8",
    "    lea rsi, [rip + 2f]",
    "1:  lodsb",
    "    test al, al",
    "    jz 3f",
    "    out dx, al",
    "    jmp 1b",
    "3:  mov dx, 0xf4",
    "    mov eax, 0x21",
    "    out dx, eax",
    "4:  cli",
    "    hlt",
    "    jmp 4b",
    "2:  .asciz \"\\r\\nhostile: RING 0: the guest's own code at address 0 runs in ring 0 (CSTAR was never written) and stops the machine\\r\\n\"",
    ".globl hostile_ring0_payload_end",
    "hostile_ring0_payload_end:",
    // Copied to COMPAT_CODE: runs in compatibility mode.
    ".code32",
    ".globl hostile_compat_code",
    "hostile_compat_code:",
    "    syscall",
    "    ud2",
    ".globl hostile_compat_code_end",
    "hostile_compat_code_end:",
    ".code64",
    ".popsection",
);

extern "C" {
    static hostile_ring0_payload: u8;
    static hostile_ring0_payload_end: u8;
    static hostile_compat_code: u8;
    static hostile_compat_code_end: u8;
}

pub fn syscall32(targets: &Targets) -> ! {
    register("syscall32", CallbackType::Syscall32, Landing::Syscall32);
    compat_syscall("syscall32", targets)
}

pub fn syscall32_no_callback(targets: &Targets) -> ! {
    route(Vector::INVALID_OPCODE, Landing::InvalidOpcode);
    compat_syscall("syscall32_no_callback", targets)
}

pub fn sysenter(_: &Targets) -> ! {
    register("sysenter", CallbackType::Sysenter, Landing::Sysenter);
    route(Vector::GENERAL_PROTECTION, Landing::GeneralProtection);
    route(Vector::INVALID_OPCODE, Landing::InvalidOpcode);
    strike_sysenter("sysenter")
}

pub fn sysenter_no_callback(_: &Targets) -> ! {
    route(Vector::GENERAL_PROTECTION, Landing::GeneralProtection);
    route(Vector::INVALID_OPCODE, Landing::InvalidOpcode);
    strike_sysenter("sysenter_no_callback")
}

/// Registers a callback at `landing`; a refusal is reported and the attack goes on.
fn register(name: &str, kind: CallbackType, landing: Landing) {
    // SAFETY: the landing handles its callback's frame and never returns.
    match unsafe { hypercall::callback_register(kind, landing.entry(), CALLBACKF_MASK_EVENTS) } {
        Ok(()) => println!("hostile: attack {name}: {kind:?} callback registered"),
        Err(error) => println!("hostile: attack {name}: {kind:?} callback refused ({error:?}); going on"),
    }
}

/// Routes exception `vector` to `landing`.
fn route(vector: Vector, landing: Landing) {
    // SAFETY: the landing handles the bounce frame and never returns.
    if let Err(error) = unsafe { traps::install_entry(vector, landing.entry()) } {
        println!("hostile: FAILED routing vector {}: {error:?}", vector.0);
        shutdown(ShutdownReason::Crash);
    }
}

fn strike_sysenter(name: &'static str) -> ! {
    println!("hostile: attack {name}: sysenter from 64-bit guest code");
    contained::strike(name);
    // SAFETY: sysenter leaves this code for good: to a callback, an exception handler, or
    // (the bug) ring 0; the landings never return.
    unsafe { asm!("sysenter", "ud2", options(noreturn)) }
}

/// The far pointer (offset, then selector) the jump to the 32-bit code goes through.
#[repr(C, packed)]
struct FarPointer {
    offset: u32,
    selector: u16,
}

static COMPAT_ENTRY: FarPointer = FarPointer { offset: COMPAT_CODE as u32, selector: CS32 as u16 };

/// Maps the low pages, then far-jumps to the 32-bit code, which runs `syscall`.
fn compat_syscall(name: &'static str, targets: &Targets) -> ! {
    if let Err(why) = map_low_pages(targets) {
        println!("hostile: FAILED mapping the low pages: {why}");
        shutdown(ShutdownReason::Crash);
    }
    println!("hostile: attack {name}: syscall from 32-bit code (cs {CS32:#x}, rip {COMPAT_CODE:#x})");
    contained::strike(name);
    // SAFETY: the far jump enters the 32-bit code at COMPAT_CODE on the low stack; its
    // `syscall` never comes back here (callback, #UD landing, or the bug).
    unsafe {
        asm!(
            "movq {stack}, %rsp",
            "ljmpl *({entry})",
            stack = in(reg) LOW_STACK_TOP,
            entry = in(reg) &raw const COMPAT_ENTRY,
            options(noreturn, att_syntax)
        )
    }
}

/// A free frame past the shared targets' and its initial-mapping address.
fn spare_frame(targets: &Targets, n: usize) -> Result<(Mfn, u64), &'static str> {
    let first = targets.tables.end + 1 + TARGET_FRAMES;
    let pfn = Pfn(first + n as u64);
    if pfn.0 >= (targets.tables.end + 1 + BOOT_SLACK_PAGES).min(start_info::nr_pages()) {
        return Err("too few free frames");
    }
    let mfn = start_info::pfn_to_mfn(pfn).ok_or("no mfn")?;
    let va = layout::pfn_to_virt(pfn).ok_or("no address")?;
    Ok((mfn, va))
}

/// Builds L3 -> L2 -> L1 -> {code at 0, stack at 0x1000} and links the L3 into L4 slot 0.
fn map_low_pages(targets: &Targets) -> Result<(), &'static str> {
    let mut frames = [(Mfn(0), 0u64); LOW_FRAMES];
    for (n, slot) in frames.iter_mut().enumerate() {
        *slot = spare_frame(targets, n)?;
    }
    let [l3, l2, l1, code, stack] = frames;
    let entry = |mfn: Mfn, writable: bool| {
        (mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER | if writable { PTE_WRITABLE } else { 0 }
    };
    let copy = |dst: u64, start: *const u8, end: *const u8| {
        // SAFETY: the blob lies in this image between its two symbols; `dst` is in the
        // code frame's writable initial mapping, which nothing else uses.
        unsafe { core::ptr::copy_nonoverlapping(start, dst as *mut u8, end as usize - start as usize) }
    };
    // SAFETY: free frames, mapped writable at their initial addresses, used by nothing.
    unsafe {
        for (_, va) in frames {
            core::ptr::write_bytes(va as *mut u8, 0, PAGE_SIZE as usize);
        }
        (l3.1 as *mut u64).write_volatile(entry(l2.0, true));
        (l2.1 as *mut u64).write_volatile(entry(l1.0, true));
        (l1.1 as *mut u64).write_volatile(entry(code.0, false));
        (l1.1 as *mut u64).add(1).write_volatile(entry(stack.0, true));
    }
    copy(code.1, &raw const hostile_ring0_payload, &raw const hostile_ring0_payload_end);
    copy(code.1 + COMPAT_CODE, &raw const hostile_compat_code, &raw const hostile_compat_code_end);
    for (mfn, va) in [l3, l2, l1, code] {
        // SAFETY: the page loses its write permission; nothing writes it any more.
        unsafe { hypercall::update_va_mapping(va, entry(mfn, false), UVMF_INVLPG | UVMF_LOCAL) }
            .map_err(|_| "remapping a table read-only refused")?;
    }
    let link = [MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, targets.l4.entry_address(0), entry(l3.0, true))];
    let mut done = 0;
    // SAFETY: L4 slot 0 was empty; the new tables map only the two pages above.
    unsafe { hypercall::mmu_update(&link, &mut done, DomId::SELF) }.map_err(|_| "linking the L3 into L4 slot 0 refused")
}
