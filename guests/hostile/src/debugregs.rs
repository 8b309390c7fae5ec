//! Attacks on the debug registers and the FPU state (issue 16), after Xen's advisories:
//!
//! - breakpoints on hypervisor addresses (the window, Xen's reserved range where the M2P
//!   lives, a non-canonical address) and DR7 with general detect or upper bits set, through
//!   `set_debugreg` and through an emulated `mov` (XSA-260's "no breakpoints on hypervisor
//!   addresses", and GD, which would make the hypervisor's own DR accesses fault);
//! - AMD's breakpoint address masks (XSA-444): `wrmsr` of DR0_ADDR_MASK must fault (DBEXT
//!   is not offered);
//! - a write breakpoint on the stack slot where the hypervisor writes the next bounce frame,
//!   then `int3`: the hypervisor's own write raises #DB in ring 0. Before the #DB gate had
//!   its own stack and path, that was a fatal exception in the hypervisor: the machine died;
//!   now the hypervisor ignores it and the guest gets its #BP;
//! - XSA-260 and XSA-265: a data breakpoint on the operand of `mov ss`, followed by
//!   `syscall` (a hypercall) or `int3`, with DR6.BD latched first: on hardware the #DB is
//!   deferred to the first instruction in ring 0 (with the guest's stack pointer after
//!   `syscall`), which the #DB gate's own stack absorbs; QEMU's TCG delivers it one
//!   instruction early, in the guest;
//! - `fpu_taskswitch(1)` then a yield: the hypervisor's XSAVE at the switch would raise #NM
//!   in ring 0 with TS set;
//! - `xsetbv` of values Xen refuses (PKRU, all ones, XCR1): #GP.
//!
//! Each attack the hypervisor must survive; the guest then checks it goes on as expected.

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::hypercall::Hypercall;
use guest_rt::hypercall::{hypercall1, hypercall2, sched_yield};
use guest_rt::traps::{clear_handler, set_handler, TrapFrame, Vector};

use crate::verdict::{Outcome, Tally};

static DB: AtomicU32 = AtomicU32::new(0);
static BP: AtomicU32 = AtomicU32::new(0);
static FAULTS: AtomicU32 = AtomicU32::new(0);
/// Bytes to step over after an expected #GP/#UD.
static SKIP: AtomicU64 = AtomicU64::new(0);
static LAST_FAULT: AtomicU64 = AtomicU64::new(0);

const DR6_DEFAULT: u64 = 0xffff_0ff0;
const DR6_BD: u64 = 1 << 13;

fn on_db(frame: &mut TrapFrame) {
    DB.fetch_add(1, Ordering::SeqCst);
    set_debugreg(6, DR6_DEFAULT);
    frame.rflags &= !(1 << 8);
}

fn on_bp(_: &mut TrapFrame) {
    BP.fetch_add(1, Ordering::SeqCst);
}

fn on_fault(frame: &mut TrapFrame) {
    let skip = SKIP.swap(0, Ordering::SeqCst);
    LAST_FAULT.store(frame.vector, Ordering::SeqCst);
    FAULTS.fetch_add(1, Ordering::SeqCst);
    if skip == 0 {
        guest_rt::println!("hostile: unexpected exception {} at {:#x}", frame.vector, frame.rip);
        guest_rt::hypercall::shutdown(guest_rt::abi::hypercall::ShutdownReason::Crash);
    }
    frame.rip += skip;
}

fn set_debugreg(reg: u32, value: u64) -> i64 {
    // SAFETY: no memory argument.
    unsafe { hypercall2(Hypercall::SetDebugreg, u64::from(reg), value) }
}

fn fpu_taskswitch(set: bool) {
    // SAFETY: no memory argument.
    let _ = unsafe { hypercall1(Hypercall::FpuTaskswitch, u64::from(set)) };
}

/// Runs `f`, whose faulting instruction is `length` bytes: the exception it raised, if any.
fn faulted(length: u64, f: impl FnOnce()) -> Outcome {
    let before = FAULTS.load(Ordering::SeqCst);
    SKIP.store(length, Ordering::SeqCst);
    f();
    SKIP.store(0, Ordering::SeqCst);
    if FAULTS.load(Ordering::SeqCst) == before {
        Outcome::Succeeded
    } else if LAST_FAULT.load(Ordering::SeqCst) == 6 {
        Outcome::Faulted("#UD")
    } else {
        Outcome::Faulted("#GP")
    }
}

pub fn run(tally: &mut Tally) {
    let handlers = [(Vector::DEBUG, on_db as fn(&mut TrapFrame)), (Vector::BREAKPOINT, on_bp), (Vector::GENERAL_PROTECTION, on_fault), (Vector::INVALID_OPCODE, on_fault)];
    for (vector, handler) in handlers {
        let _ = set_handler(vector, handler);
    }
    for (address, what) in [
        (0xffff_ffff_fc00_0000, "the hypervisor window"),
        (0xffff_ffff_ffff_fff8, "the top of the hypervisor window"),
        (0xffff_8000_0000_0000, "Xen's reserved range (the M2P)"),
        (0xffff_87ff_ffff_fff8, "the end of Xen's reserved range"),
        (0x0000_8000_0000_0000, "a non-canonical address"),
    ] {
        for reg in [0, 3] {
            let ret = set_debugreg(reg, address);
            tally.record(format_args!("set_debugreg({reg}) on {what}"), Outcome::of_call(ret));
        }
    }
    tally.record(format_args!("set_debugreg(7) with general detect"), Outcome::of_call(set_debugreg(7, 0x2401)));
    tally.record(format_args!("set_debugreg(7) with upper bits"), Outcome::of_call(set_debugreg(7, 1 << 63 | 0x401)));
    tally.record(
        format_args!("mov to DR0 of a hypervisor address"),
        // SAFETY: emulated by the hypervisor, which must refuse it (#GP).
        faulted(3, || unsafe { asm!("mov dr0, rax", in("rax") 0xffff_ffff_fc00_0000u64, options(nostack)) }),
    );
    tally.record(
        format_args!("mov to DR7 with general detect"),
        // SAFETY: as above.
        faulted(3, || unsafe { asm!("mov dr7, rax", in("rax") 0x2401u64, options(nostack)) }),
    );
    tally.record(
        format_args!("wrmsr DR0_ADDR_MASK (XSA-444)"),
        // SAFETY: the hypervisor offers no DBEXT: #GP.
        faulted(2, || unsafe { asm!("wrmsr", in("ecx") 0xc001_1027u32, in("eax") u32::MAX, in("edx") 0u32, options(nostack)) }),
    );
    // CR4.OSXSAVE first (else every xsetbv is #UD), as a kernel does.
    let cr4: u64;
    // SAFETY: emulated by the hypervisor: reads the virtual CR4, then sets OSXSAVE in it.
    unsafe {
        asm!("mov {0}, cr4", "bts {0}, 18", "mov cr4, {0}", out(reg) cr4, options(nostack));
    }
    let _ = cr4;
    for (index, value, what) in [(0u32, u64::MAX, "all ones"), (0, 1 << 9 | 7, "PKRU"), (1, 7, "XCR1")] {
        tally.record(
            format_args!("xsetbv of {what}"),
            // SAFETY: emulated by the hypervisor, which must refuse it.
            faulted(3, || unsafe { asm!("xsetbv", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack)) }),
        );
    }
    bounce_frame_breakpoint(tally);
    mov_ss(tally);
    taskswitch_then_yield(tally);
    let _ = set_debugreg(7, 0x400);
    for (vector, _) in handlers {
        let _ = clear_handler(vector);
    }
}

/// A write breakpoint on the stack slot where the hypervisor writes the top word of the
/// `int3`'s bounce frame: its write raises #DB in ring 0.
fn bounce_frame_breakpoint(tally: &mut Tally) {
    let rsp: u64;
    // SAFETY: reads rsp.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    // The frame's top word (ss): the frame ends at rsp rounded down to 16.
    let slot = (rsp & !15) - 8;
    let before = (DB.load(Ordering::SeqCst), BP.load(Ordering::SeqCst));
    let armed = set_debugreg(0, slot & !7) == 0 && set_debugreg(7, (0b10 << 18) | (0b01 << 16) | 0x1 | 0x400) == 0;
    if !armed {
        tally.record(format_args!("breakpoint on the bounce frame"), Outcome::NotPrepared { step: "set_debugreg", errno: 0 });
        return;
    }
    // SAFETY: int3 is delivered to `on_bp`, which returns after it.
    unsafe { asm!("int3") };
    // Read before any call, whose return address would land on the watched slot.
    let after = (DB.load(Ordering::SeqCst), BP.load(Ordering::SeqCst));
    let _ = set_debugreg(7, 0x400);
    let outcome = if after.1 == before.1 + 1 && after.0 == before.0 { Outcome::Contained } else { Outcome::Succeeded };
    tally.record(format_args!("write breakpoint on its bounce frame, then int3"), outcome);
}

/// XSA-260 / XSA-265: a read breakpoint on `mov ss`'s operand, DR6.BD latched, then
/// `syscall` (xen_version) or `int3`.
fn mov_ss(tally: &mut Tally) {
    static SS: AtomicU64 = AtomicU64::new(0);
    let ss: u64;
    // SAFETY: reads ss.
    unsafe { asm!("mov {:x}, ss", out(reg) ss, options(nomem, nostack)) };
    SS.store(ss, Ordering::SeqCst);
    let at = &SS as *const _ as u64;
    let armed = set_debugreg(6, DR6_BD) == 0
        && set_debugreg(0, at) == 0
        && set_debugreg(7, (0b11 << 18) | (0b11 << 16) | 0x3 | 0x400 | 0x300) == 0;
    if !armed {
        tally.record(format_args!("mov ss breakpoint"), Outcome::NotPrepared { step: "set_debugreg", errno: 0 });
        return;
    }
    let version: u64;
    // SAFETY: `mov ss` reloads the same selector; `syscall` from the guest kernel is the
    // xen_version hypercall (rcx and r11 are the syscall's).
    unsafe {
        asm!("mov ss, word ptr [{at}]", "syscall", at = in(reg) at, inout("rax") 17u64 => version, in("rdi") 0u64, in("rsi") 0u64,
             out("rcx") _, out("r11") _)
    };
    let ok = version == (4 << 16 | 17);
    tally.record(format_args!("mov ss with a breakpoint, then syscall (XSA-260)"), if ok { Outcome::Contained } else { Outcome::Succeeded });
    let _ = set_debugreg(6, DR6_BD);
    let before = BP.load(Ordering::SeqCst);
    // SAFETY: as above, then int3 (delivered to `on_bp`).
    unsafe { asm!("mov ss, word ptr [{at}]", "int3", at = in(reg) at) };
    let ok = BP.load(Ordering::SeqCst) == before + 1;
    tally.record(format_args!("mov ss with a breakpoint and DR6.BD, then int3 (XSA-265)"), if ok { Outcome::Contained } else { Outcome::Succeeded });
    let _ = set_debugreg(7, 0x400);
    let _ = set_debugreg(6, DR6_DEFAULT);
}

/// The hypervisor saves the FPU state at every switch; with the guest's TS set that save
/// would fault in ring 0 unless TS is cleared first.
fn taskswitch_then_yield(tally: &mut Tally) {
    fpu_taskswitch(true);
    for _ in 0..4 {
        let _ = sched_yield();
    }
    fpu_taskswitch(false);
    tally.record(format_args!("fpu_taskswitch(1), then yields"), Outcome::Contained);
}
