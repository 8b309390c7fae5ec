//! Exceptions: the virtual IDT (trap table) the runtime installs, the assembly entry stubs
//! for the PV bounce frame, and dispatch to a guest's Rust handler or to the default one,
//! which reports "guest: unexpected exception N at rip X" and crashes the domain.
//!
//! The hypervisor delivers exception n by pushing, on the guest kernel stack, from low to
//! high: rcx, r11, [error code], rip, cs, rflags, rsp, ss, and jumping to the handler. Stub
//! n (16 bytes at `guest_rt_trap_stubs + n * 16`) pops rcx and r11 back into their
//! registers, pushes a zero error code for vectors without one and the vector, and joins
//! the common path, which saves every register into a [`TrapFrame`], calls the dispatcher,
//! restores the (possibly edited) frame and returns with the `iret` hypercall: it turns the
//! error-code slot into iret's `flags` word (0) and jumps to the iret stub, which pushes
//! rcx, r11 and rax to complete `{rax, r11, rcx, flags, rip, cs, rflags, rsp, ss}`.
//!
//! `guest_rt_start` calls [`install`]; guests call [`set_handler`]. Handlers run on the
//! interrupted stack with events masked. This module must never allocate or block.

use core::arch::global_asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use abi::arch_x86::{TrapInfo, FLAT_KERNEL_CS64, TI_MASK_EVENTS};
use abi::hypercall::{Hypercall, ShutdownReason};
use abi::hypercall_page::stub_offset;

use crate::hypercall::{self, HypercallError};
use crate::shared_info;

/// Number of exception vectors the runtime has stubs for.
pub const EXCEPTION_COUNT: usize = 32;
/// Size of each entry stub's slot.
pub const STUB_SIZE: usize = 16;

/// An exception vector (0-31).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vector(pub u8);

impl Vector {
    pub const DIVIDE_ERROR: Self = Self(0);
    pub const DEBUG: Self = Self(1);
    pub const NMI: Self = Self(2);
    pub const BREAKPOINT: Self = Self(3);
    pub const OVERFLOW: Self = Self(4);
    pub const BOUND_RANGE: Self = Self(5);
    pub const INVALID_OPCODE: Self = Self(6);
    pub const DEVICE_NOT_AVAILABLE: Self = Self(7);
    pub const DOUBLE_FAULT: Self = Self(8);
    pub const INVALID_TSS: Self = Self(10);
    pub const SEGMENT_NOT_PRESENT: Self = Self(11);
    pub const STACK_FAULT: Self = Self(12);
    pub const GENERAL_PROTECTION: Self = Self(13);
    pub const PAGE_FAULT: Self = Self(14);
    pub const X87_FPU: Self = Self(16);
    pub const ALIGNMENT_CHECK: Self = Self(17);
    pub const MACHINE_CHECK: Self = Self(18);
    pub const SIMD: Self = Self(19);
    pub const VIRTUALIZATION: Self = Self(20);
    pub const CONTROL_PROTECTION: Self = Self(21);

    /// Whether the hypervisor pushes an error code for this vector (as the CPU does:
    /// 8, 10-14, 17, 21, 29, 30).
    pub const fn has_error_code(self) -> bool {
        self.0 < 32 && ERROR_CODE_VECTORS >> self.0 & 1 != 0
    }
}

/// Bit n set: vector n comes with an error code.
const ERROR_CODE_VECTORS: u32 = 1 << 8
    | 1 << 10
    | 1 << 11
    | 1 << 12
    | 1 << 13
    | 1 << 14
    | 1 << 17
    | 1 << 21
    | 1 << 29
    | 1 << 30;

/// The interrupted state as the entry path saved it, lowest address first. Handlers may
/// edit it: the iret returns to `rip`/`rsp` with these registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TrapFrame {
    /// For page faults: the faulting address (from `vcpu_info.arch.cr2`), if the shared
    /// info page is mapped; 0 otherwise.
    pub cr2: u64,
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The vector (0-31).
    pub vector: u64,
    /// The error code; 0 for vectors without one.
    pub error_code: u64,
    pub rip: u64,
    /// The code selector; bits 32-39 hold the saved event mask.
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// The assembly below pushes and pops in exactly this order.
const _: () = {
    assert!(size_of::<TrapFrame>() == 23 * 8);
    assert!(core::mem::offset_of!(TrapFrame, r15) == 8);
    assert!(core::mem::offset_of!(TrapFrame, rax) == 15 * 8);
    assert!(core::mem::offset_of!(TrapFrame, vector) == 16 * 8);
    assert!(core::mem::offset_of!(TrapFrame, error_code) == 17 * 8);
    assert!(core::mem::offset_of!(TrapFrame, rip) == 18 * 8);
    assert!(core::mem::offset_of!(TrapFrame, ss) == 22 * 8);
};

/// A guest's handler: edits the frame to resume elsewhere, or never returns.
pub type TrapHandler = fn(frame: &mut TrapFrame);

/// A request the trap module cannot satisfy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapError {
    /// Only vectors 0-31 have entry stubs.
    NoStub(Vector),
}

global_asm!(
    ".pushsection .text.guest_rt_traps,\"ax\",@progbits",
    // Stub for one vector: restore rcx and r11, even out the frame, join the common path.
    // `.org` places each stub in its slot and fails the build if the previous one overran.
    ".macro guest_rt_trap_stub vector",
    ".org guest_rt_trap_stubs + \\vector * {stub_size}, 0xcc",
    "    pop rcx",
    "    pop r11",
    ".if (({error_code_vectors} >> \\vector) & 1) == 0",
    "    push 0",
    ".endif",
    "    push \\vector",
    "    jmp guest_rt_trap_common",
    ".endm",
    ".balign {stub_size}",
    ".globl guest_rt_trap_stubs",
    "guest_rt_trap_stubs:",
    ".irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "guest_rt_trap_stub \\vector",
    ".endr",
    ".org guest_rt_trap_stubs + {count} * {stub_size}, 0xcc",
    "",
    "guest_rt_trap_common:",
    "    push rax",
    "    push rbx",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push rbp",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    push 0",                   // cr2, filled in by the dispatcher
    "    mov rdi, rsp",
    "    mov rbx, rsp",             // callee-saved: survives the call
    "    and rsp, -16",
    "    cld",
    "    call guest_rt_trap_dispatch",
    "    mov rsp, rbx",
    "    add rsp, 8",               // cr2
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rbp",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rbx",
    "    pop rax",
    "    add rsp, 8",               // vector
    "    mov qword ptr [rsp], 0",   // error code slot -> iret flags: a full return
    "    jmp guest_rt_hypercall_page + {iret_stub}",
    ".popsection",
    stub_size = const STUB_SIZE,
    count = const EXCEPTION_COUNT,
    error_code_vectors = const ERROR_CODE_VECTORS,
    iret_stub = const stub_offset(Hypercall::Iret),
);

extern "C" {
    /// The first entry stub (defined above); stub n is `n * STUB_SIZE` bytes further.
    static guest_rt_trap_stubs: [u8; STUB_SIZE * EXCEPTION_COUNT];
}

/// The registered handlers: 0 for none, else a `TrapHandler` as an address.
static HANDLERS: [AtomicUsize; EXCEPTION_COUNT] = [const { AtomicUsize::new(0) }; EXCEPTION_COUNT];

/// The trap-table entry for `vector` at `address`: kernel code selector, events masked on
/// entry, and `int3` (vector 3) allowed from the guest kernel and user.
pub const fn trap_entry(vector: Vector, address: u64) -> TrapInfo {
    let dpl = if vector.0 == Vector::BREAKPOINT.0 {
        3
    } else {
        0
    };
    TrapInfo {
        vector: vector.0,
        flags: dpl | TI_MASK_EVENTS,
        cs: FLAT_KERNEL_CS64,
        _pad: 0,
        address,
    }
}

/// The full table for entry stubs starting at `stubs`: one entry per vector, then the
/// terminator.
pub const fn trap_table(stubs: u64) -> [TrapInfo; EXCEPTION_COUNT + 1] {
    let mut table = [TrapInfo {
        vector: 0,
        flags: 0,
        cs: 0,
        _pad: 0,
        address: 0,
    }; EXCEPTION_COUNT + 1];
    let mut vector = 0;
    while vector < EXCEPTION_COUNT {
        let address = stubs + (vector * STUB_SIZE) as u64;
        table[vector] = trap_entry(Vector(vector as u8), address);
        vector += 1;
    }
    table
}

/// The address of the runtime's first entry stub (for a secondary vCPU's trap table).
pub fn stubs_address() -> u64 {
    &raw const guest_rt_trap_stubs as u64
}

/// Points every exception vector at the runtime's stubs (`set_trap_table`).
pub fn install() -> Result<(), HypercallError> {
    let table = trap_table(stubs_address());
    // SAFETY: every address is one of the stubs above, which handle the bounce frame of
    // their vector and return with the iret hypercall.
    unsafe { hypercall::set_trap_table(&table) }
}

/// Points one vector at a guest's own assembly entry point, leaving the others alone.
///
/// # Safety
/// `address` must handle the PV bounce frame of `vector` and return with the iret
/// hypercall (or never return).
pub unsafe fn install_entry(vector: Vector, address: u64) -> Result<(), HypercallError> {
    let table = [trap_entry(vector, address), TrapInfo::default()];
    // SAFETY: the caller vouches for the entry point; the table is terminated.
    unsafe { hypercall::set_trap_table(&table) }
}

/// Routes `vector` to `handler` (through the runtime's stubs, which [`install`] set up).
pub fn set_handler(vector: Vector, handler: TrapHandler) -> Result<(), TrapError> {
    let slot = HANDLERS
        .get(usize::from(vector.0))
        .ok_or(TrapError::NoStub(vector))?;
    slot.store(handler as usize, Ordering::Release);
    Ok(())
}

/// Routes `vector` back to the default handler.
pub fn clear_handler(vector: Vector) -> Result<(), TrapError> {
    let slot = HANDLERS
        .get(usize::from(vector.0))
        .ok_or(TrapError::NoStub(vector))?;
    slot.store(0, Ordering::Release);
    Ok(())
}

/// The handler registered for `vector`, if any.
fn handler(vector: u64) -> Option<TrapHandler> {
    let slot = HANDLERS.get(usize::try_from(vector).ok()?)?;
    match slot.load(Ordering::Acquire) {
        0 => None,
        // SAFETY: `set_handler` is the only writer of non-zero values, and it stores
        // `TrapHandler`s; function pointers and usize have the same size.
        raw => Some(unsafe { core::mem::transmute::<usize, TrapHandler>(raw) }),
    }
}

/// Called by the common entry path with the frame it built.
#[unsafe(no_mangle)]
extern "C" fn guest_rt_trap_dispatch(frame: *mut TrapFrame) {
    // SAFETY: the entry path passes the frame it just pushed on this stack; nothing else
    // refers to it until the dispatcher returns.
    let frame = unsafe { &mut *frame };
    if frame.vector == u64::from(Vector::PAGE_FAULT.0) {
        frame.cr2 = shared_info::fault_address().unwrap_or(0);
    }
    match handler(frame.vector) {
        Some(handler) => handler(frame),
        None => unexpected(frame),
    }
}

/// The default handler: report and crash.
fn unexpected(frame: &TrapFrame) -> ! {
    crate::println!(
        "guest: unexpected exception {} at rip {:#x} (error code {:#x}, cr2 {:#x}, rsp {:#x})",
        frame.vector,
        frame.rip,
        frame.error_code,
        frame.cr2,
        frame.rsp
    );
    hypercall::shutdown(ShutdownReason::Crash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_vectors_match_the_architecture() {
        let with: std::vec::Vec<u8> = (0..=255u8)
            .filter(|&v| Vector(v).has_error_code())
            .collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
        assert!(!Vector::BREAKPOINT.has_error_code());
        assert!(Vector::PAGE_FAULT.has_error_code());
    }

    #[test]
    fn table_points_each_vector_at_its_slot_and_ends() {
        let base = 0xffff_ffff_8000_3000;
        let table = trap_table(base);
        for (n, entry) in table[..EXCEPTION_COUNT].iter().enumerate() {
            assert_eq!(usize::from(entry.vector), n);
            assert_eq!(entry.address, base + 16 * n as u64);
            assert_eq!(entry.cs, 0xe033);
            assert!(entry.masks_events());
            assert!(!entry.is_terminator());
        }
        assert!(table[EXCEPTION_COUNT].is_terminator());
    }

    #[test]
    fn only_int3_may_be_raised_by_software() {
        let table = trap_table(0x1000);
        let dpl3: std::vec::Vec<u8> = table
            .iter()
            .filter(|e| e.dpl() == 3)
            .map(|e| e.vector)
            .collect();
        assert_eq!(dpl3, [3]);
        assert_eq!(
            table.iter().filter(|e| e.dpl() == 0).count(),
            EXCEPTION_COUNT
        );
    }

    #[test]
    fn vectors_beyond_the_stubs_are_refused() {
        fn ignore(_: &mut TrapFrame) {}
        assert_eq!(
            set_handler(Vector(32), ignore),
            Err(TrapError::NoStub(Vector(32)))
        );
        assert_eq!(
            clear_handler(Vector(255)),
            Err(TrapError::NoStub(Vector(255)))
        );
    }

    #[test]
    fn dispatch_runs_the_registered_handler_which_may_edit_the_frame() {
        fn skip_ud2(frame: &mut TrapFrame) {
            frame.rip += 2;
            frame.rax = 0x55;
        }
        set_handler(Vector::INVALID_OPCODE, skip_ud2).unwrap();
        let mut frame = TrapFrame {
            vector: 6,
            rip: 0xffff_ffff_8000_1000,
            ..TrapFrame::default()
        };
        guest_rt_trap_dispatch(&mut frame);
        assert_eq!(frame.rip, 0xffff_ffff_8000_1002);
        assert_eq!(frame.rax, 0x55);
        clear_handler(Vector::INVALID_OPCODE).unwrap();
        assert!(handler(6).is_none());
    }

    #[test]
    fn page_faults_get_cr2_only_from_a_mapped_shared_page() {
        fn record(frame: &mut TrapFrame) {
            frame.rbx = frame.cr2 + 1;
        }
        set_handler(Vector::PAGE_FAULT, record).unwrap();
        let mut frame = TrapFrame {
            vector: 14,
            cr2: 0xdead,
            ..TrapFrame::default()
        };
        guest_rt_trap_dispatch(&mut frame);
        assert_eq!(
            frame.cr2, 0,
            "unmapped shared info: cr2 unknown, reported as 0"
        );
        assert_eq!(frame.rbx, 1, "the handler ran after cr2 was filled in");
    }

    #[test]
    fn hostile_vector_numbers_find_no_handler() {
        assert!(handler(32).is_none());
        assert!(handler(u64::MAX).is_none());
    }
}
