//! The guest's entry: the Xen ELF notes that tell the domain builder how to load and start
//! us, `_start` (the ELF and `ENTRY` note entry point), the Rust start routine that checks
//! the start-of-day page, installs the trap table and runs the guest's `guest_main`, and
//! the panic handler.
//!
//! The builder enters `_start` in guest kernel mode (ring 3, cs 0xe033) with rsi = the
//! virtual address of `start_info` and rsp on a boot stack of its own. `_start` keeps rsi,
//! switches to the runtime's stack in the bss (Xen's builder gives a single 4 KiB page,
//! too little for formatted output inside a trap handler), clears rbp to end frame-pointer
//! walks, and calls [`guest_rt_start`]. Built for the guest target only. This module must
//! never return to the builder's state: the domain ends by `shutdown`.
//!
//! Notes emitted (section `.note.Xen`, name "Xen", 4-byte aligned, in the PT_NOTE
//! segment): GUEST_OS "rust-pv", GUEST_VERSION (this crate's version), XEN_VERSION
//! "xen-3.0", LOADER "generic", VIRT_BASE, PADDR_OFFSET 0 (p_paddr = p_vaddr - VIRT_BASE,
//! as Xen's libelf assumes with notes present; stated rather than left to the default),
//! ENTRY, HYPERCALL_PAGE, FEATURES "pae_pgdir_above_4gb" and PAE_MODE "yes". FEATURES
//! requires nothing (no `!`): the runtime changes page tables only through hypercalls, so
//! it needs no `writable_page_tables`, which our hypervisor does not offer; the one
//! optional feature is what every x86 PV kernel declares and costs nothing on 64-bit.

use core::arch::global_asm;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use abi::elfnote::ElfNote;
use abi::hypercall::ShutdownReason;
use abi::ids::VcpuId;
use abi::start_info::StartInfo;

use crate::hypercall::shutdown;
use crate::layout::{STACK_SIZE, VIRT_BASE};
use crate::{console, start_info, traps};

global_asm!(
    // ---- Xen ELF notes: namesz, descsz, type, "Xen\0", desc padded to 4 bytes. ----
    ".macro guest_rt_note type",
    ".balign 4",
    ".long 4",
    ".long 3f - 2f",
    ".long \\type",
    ".asciz \"Xen\"",
    "2:",
    ".endm",
    ".macro guest_rt_note_end",
    "3:",
    ".balign 4",
    ".endm",
    "",
    ".pushsection .note.Xen,\"a\",@note",
    "guest_rt_note {guest_os}",
    ".asciz \"rust-pv\"",
    "guest_rt_note_end",
    "guest_rt_note {guest_version}",
    concat!(".asciz \"", env!("CARGO_PKG_VERSION"), "\""),
    "guest_rt_note_end",
    "guest_rt_note {xen_version}",
    ".asciz \"xen-3.0\"",
    "guest_rt_note_end",
    "guest_rt_note {loader}",
    ".asciz \"generic\"",
    "guest_rt_note_end",
    "guest_rt_note {virt_base_note}",
    ".quad {virt_base}",
    "guest_rt_note_end",
    "guest_rt_note {paddr_offset}",
    ".quad 0",
    "guest_rt_note_end",
    "guest_rt_note {entry}",
    ".quad _start",
    "guest_rt_note_end",
    "guest_rt_note {hypercall_page}",
    ".quad guest_rt_hypercall_page",
    "guest_rt_note_end",
    "guest_rt_note {features}",
    ".asciz \"pae_pgdir_above_4gb\"",
    "guest_rt_note_end",
    "guest_rt_note {pae_mode}",
    ".asciz \"yes\"",
    "guest_rt_note_end",
    ".popsection",
    "",
    // guest.ld checks this against its own VIRT_BASE.
    ".globl guest_rt_virt_base",
    ".set guest_rt_virt_base, {virt_base}",
    "",
    // ---- Entry point. ----
    ".pushsection .text._start,\"ax\",@progbits",
    ".globl _start",
    ".type _start, @function",
    "_start:",
    "    cld",
    "    lea rsp, [rip + guest_rt_stack_top]",
    "    xor ebp, ebp",
    "    mov rdi, rsi",
    "    call guest_rt_start",
    "    ud2",
    ".size _start, . - _start",
    ".popsection",
    "",
    ".pushsection .bss.guest_rt_stack,\"aw\",@nobits",
    ".balign 16",
    "guest_rt_stack_bottom:",
    ".skip {stack_size}",
    "guest_rt_stack_top:",
    ".popsection",
    guest_os = const ElfNote::GuestOs.raw(),
    guest_version = const ElfNote::GuestVersion.raw(),
    xen_version = const ElfNote::XenVersion.raw(),
    loader = const ElfNote::Loader.raw(),
    virt_base_note = const ElfNote::VirtBase.raw(),
    paddr_offset = const ElfNote::PaddrOffset.raw(),
    entry = const ElfNote::Entry.raw(),
    hypercall_page = const ElfNote::HypercallPage.raw(),
    features = const ElfNote::Features.raw(),
    pae_mode = const ElfNote::PaeMode.raw(),
    virt_base = const VIRT_BASE as i64,
    stack_size = const STACK_SIZE,
);

extern "Rust" {
    /// The guest's main function, defined by [`crate::entry!`].
    fn guest_main(start: &'static StartInfo);
}

/// Rust entry, called by `_start` with the builder's rsi. Checks and keeps the start-of-day
/// page, installs the trap table, runs `guest_main`, and powers off when it returns.
#[unsafe(no_mangle)]
extern "C" fn guest_rt_start(start_info: u64) -> ! {
    // SAFETY: rsi at entry is the builder's start_info address; `adopt` dereferences it
    // only once it lies aligned in the initial mapping, where the builder placed the page.
    let info = match unsafe { start_info::adopt(start_info) } {
        Ok(info) => info,
        Err(error) => {
            crate::println!("guest-rt: unusable start_info: {error:?}");
            shutdown(ShutdownReason::Crash)
        }
    };
    if let Err(error) = traps::install() {
        crate::println!("guest-rt: set_trap_table failed ({error:?}); exceptions are not caught");
    }
    // Xen starts every PV vCPU with a 10 ms periodic timer; like Linux, the runtime stops
    // it (a guest that wants ticks asks for them), so that an idle domain costs nothing.
    crate::timer::stop_periodic(VcpuId(0));
    // SAFETY: `guest_main` is defined by the guest's `entry!` with exactly this signature.
    unsafe { guest_main(info) };
    shutdown(ShutdownReason::Poweroff)
}

/// Set by the first panic, so that a panic while reporting one cannot recurse.
static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::AcqRel) {
        console::write_bytes(b"guest: panic while panicking\n");
    } else {
        crate::println!("guest: {info}");
    }
    shutdown(ShutdownReason::Crash)
}
