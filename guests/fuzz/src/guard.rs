//! What catches the fuzzer when the hypervisor bounces something back: the exception
//! handler (every vector), the event callback and the failsafe callback.
//!
//! Exceptions: a probe ([`crate::probes`]) arms its instruction's address on its vCPU
//! before it runs it; a fault there (or the trap after it, for `int3` and `int n` the
//! trap table lets through, reported anywhere up to the next instruction) resumes after
//! the instruction and records the vector. A
//! single-step trap or an alignment check, which a fuzzed `iret` may turn on, is turned
//! off and the code resumes. Anything else is unexpected: the handler prints what it saw
//! ("fuzz: UNEXPECTED ...", with the seed, the vCPU's call count and its last call) and
//! crashes the domain.
//!
//! Events: the callback clears the upcall flag and every pending, unmasked port of the vCPU
//! it runs on (found by its stack), for the fuzzer's vCPUs and the parked ones alike; the
//! fuzzer only blocks to be woken, it never waits for a particular event. The failsafe
//! callback (the hypervisor could not return to the guest as asked) reports and crashes.
//! This module must never make a call that could fail in a way it does not survive.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use guest_rt::abi::hypercall::{Hypercall, ShutdownReason};
use guest_rt::abi::hypercall_page::stub_offset;
use guest_rt::hypercall;
use guest_rt::traps::{self, TrapFrame, Vector, EXCEPTION_COUNT};
use guest_rt::{println, shared_info};

use crate::memory;
use crate::report;

const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_AC: u64 = 1 << 18;
const VECTOR_DEBUG: u64 = 1;
const VECTOR_ALIGNMENT: u64 = 17;

/// Per fuzzing vCPU: the armed probe's first and resume addresses (0: none), and the
/// vector its last fault came with (`u64::MAX`: none).
static ARMED_AT: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static RESUME_AT: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static CAUGHT: [AtomicU64; 2] = [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)];
/// Exceptions caught in probes, and events taken, by every vCPU together.
pub static FAULTS: AtomicU64 = AtomicU64::new(0);
pub static EVENTS: AtomicU64 = AtomicU64::new(0);

/// Routes every vector to [`on_exception`].
pub fn install() {
    for vector in 0..EXCEPTION_COUNT as u8 {
        // Vectors 0-31 all have stubs: this cannot fail.
        let _ = traps::set_handler(Vector(vector), on_exception);
    }
}

/// Arms vCPU `vcpu`'s probe: a fault at `at`, or a trap reported at `resume`, resumes at
/// `resume`.
pub fn arm(vcpu: usize, at: u64, resume: u64) {
    CAUGHT[vcpu].store(u64::MAX, Ordering::Relaxed);
    RESUME_AT[vcpu].store(resume, Ordering::Relaxed);
    ARMED_AT[vcpu].store(at, Ordering::Release);
}

/// Disarms vCPU `vcpu`'s probe; returns the vector it caught, if any.
pub fn disarm(vcpu: usize) -> Option<u64> {
    ARMED_AT[vcpu].store(0, Ordering::Release);
    let caught = CAUGHT[vcpu].load(Ordering::Relaxed);
    (caught != u64::MAX).then_some(caught)
}

fn on_exception(frame: &mut TrapFrame) {
    let vcpu = memory::vcpu_of_stack(frame.rsp) as usize;
    if vcpu < 2 {
        let at = ARMED_AT[vcpu].load(Ordering::Acquire);
        let resume = RESUME_AT[vcpu].load(Ordering::Relaxed);
        // Inside the instruction too: QEMU reports `int 3` (cd 03) one byte short.
        if at != 0 && (at..=resume).contains(&frame.rip) {
            frame.rip = resume;
            CAUGHT[vcpu].store(frame.vector, Ordering::Relaxed);
            FAULTS.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    match frame.vector {
        VECTOR_DEBUG if frame.rflags & RFLAGS_TF != 0 => {
            frame.rflags &= !RFLAGS_TF;
            return;
        }
        VECTOR_ALIGNMENT if frame.rflags & RFLAGS_AC != 0 => {
            frame.rflags &= !RFLAGS_AC;
            return;
        }
        _ => {}
    }
    println!(
        "fuzz: UNEXPECTED {} vcpu={vcpu} exception {} error={:#x} rip={:#x} rsp={:#x} cr2={:#x}",
        report::Last(vcpu),
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.rsp,
        frame.cr2
    );
    println!("fuzz: registers rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rbp={:#x}", frame.rax, frame.rbx, frame.rcx, frame.rdx, frame.rbp);
    println!("fuzz: registers r12={:#x} r13={:#x} r14={:#x} r15={:#x} rflags={:#x}", frame.r12, frame.r13, frame.r14, frame.r15, frame.rflags);
    hypercall::shutdown(ShutdownReason::Crash)
}

global_asm!(
    ".pushsection .text.fuzz_callbacks,\"ax\",@progbits",
    ".globl fuzz_event_entry",
    "fuzz_event_entry:",
    "    pop rcx",
    "    pop r11",
    "    push 0",
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    push rbx",
    "    mov rbx, rsp",
    "    mov rdi, rsp",
    "    and rsp, -16",
    "    cld",
    "    call fuzz_event_dispatch",
    "    mov rsp, rbx",
    "    pop rbx",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    "    jmp guest_rt_hypercall_page + {iret_stub}",
    "",
    ".globl fuzz_failsafe_entry",
    "fuzz_failsafe_entry:",
    "    mov rdi, rsp",
    "    and rsp, -16",
    "    cld",
    "    call fuzz_failsafe",
    "    ud2",
    ".popsection",
    iret_stub = const stub_offset(Hypercall::Iret),
);

extern "C" {
    static fuzz_event_entry: u8;
    static fuzz_failsafe_entry: u8;
}

/// The event callback's entry point.
pub fn event_entry() -> u64 {
    &raw const fuzz_event_entry as u64
}

/// The failsafe callback's entry point.
pub fn failsafe_entry() -> u64 {
    &raw const fuzz_failsafe_entry as u64
}

/// Offsets in the shared info page (Xen's layout, `abi::shared_info`).
const VCPU_INFO_SIZE: u64 = 64;
const PENDING_SEL: u64 = 8;
const EVTCHN_PENDING: u64 = 2048;
const EVTCHN_MASK: u64 = 2560;

/// The shared info page's address (the runtime maps it before any vCPU fuzzes).
fn shared_base() -> Option<u64> {
    shared_info::shared_info().map(|page| page.as_ptr() as u64)
}

/// An atomic view of the shared info page at `offset`.
///
/// # Safety
/// `offset` must be one of the page's fields of type `T`, aligned for it.
unsafe fn field<T>(base: u64, offset: u64) -> &'static T {
    // SAFETY: the page stays mapped for the domain's lifetime; the caller names an aligned
    // field inside it; the hypervisor changes it concurrently, hence atomics.
    unsafe { &*((base + offset) as *const T) }
}

/// Sets vCPU `vcpu`'s upcall mask (1: events off).
pub fn set_upcall_mask(vcpu: u32, masked: bool) {
    if let Some(base) = shared_base() {
        // SAFETY: `evtchn_upcall_mask` is the byte at offset 1 of vcpu_info[vcpu].
        let mask: &AtomicU8 = unsafe { field(base, u64::from(vcpu % 32) * VCPU_INFO_SIZE + 1) };
        mask.store(u8::from(masked), Ordering::SeqCst);
    }
}

#[unsafe(no_mangle)]
extern "C" fn fuzz_event_dispatch(rsp: u64) {
    let vcpu = u64::from(memory::vcpu_of_stack(rsp) % 32);
    let Some(base) = shared_base() else { return };
    // SAFETY: byte 0 of vcpu_info[vcpu] is `evtchn_upcall_pending`, bytes 8-15 its
    // `evtchn_pending_sel`; the bitmaps are 64 aligned words each.
    unsafe {
        let info = vcpu * VCPU_INFO_SIZE;
        field::<AtomicU8>(base, info).store(0, Ordering::SeqCst);
        let selected = field::<AtomicU64>(base, info + PENDING_SEL).swap(0, Ordering::SeqCst);
        for word in (0..64).filter(|w| selected & (1 << w) != 0) {
            let pending: &AtomicU64 = field(base, EVTCHN_PENDING + word * 8);
            let mask: &AtomicU64 = field(base, EVTCHN_MASK + word * 8);
            let taken = pending.load(Ordering::SeqCst) & !mask.load(Ordering::SeqCst);
            pending.fetch_and(!taken, Ordering::SeqCst);
            EVENTS.fetch_add(u64::from(taken.count_ones()), Ordering::Relaxed);
        }
    }
}

#[unsafe(no_mangle)]
extern "C" fn fuzz_failsafe(rsp: u64) -> ! {
    let vcpu = memory::vcpu_of_stack(rsp) as usize;
    println!("fuzz: failsafe callback rsp={rsp:#x} vcpu={vcpu} {}", report::Last(vcpu.min(1)));
    hypercall::shutdown(ShutdownReason::Crash)
}
