//! The privileged and FPU-control operations the checks use, each one instruction or
//! hypercall, and the trap handlers that count what they raise.
//!
//! The `mov`s to and from control and debug registers, `clts`, `xsetbv` and `rdmsr` fault
//! at CPL 3 and are emulated by the hypervisor; an expected refusal comes back as #GP or
//! #UD, which the handlers here count and step over ([`expect_fault`]).

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::hypercall::Hypercall;
use guest_rt::hypercall::{hypercall1, hypercall2};
use guest_rt::traps::{set_handler, TrapFrame, Vector};

/// #NM, #DB, #GP and #UD taken so far, and the last #DB's DR6 as the guest read it.
pub static NM: AtomicU32 = AtomicU32::new(0);
pub static DB: AtomicU32 = AtomicU32::new(0);
pub static GP: AtomicU32 = AtomicU32::new(0);
pub static UD: AtomicU32 = AtomicU32::new(0);
pub static LAST_DR6: AtomicU64 = AtomicU64::new(0);
/// Where the last #DB returns to.
pub static LAST_DB_RIP: AtomicU64 = AtomicU64::new(0);
/// Bytes to step over after an expected #GP or #UD (0: none expected, a fault fails).
static SKIP: AtomicU64 = AtomicU64::new(0);

pub const CR0_TS: u64 = 1 << 3;
pub const CR4_DE: u64 = 1 << 3;
pub const CR4_OSXSAVE: u64 = 1 << 18;
pub const RFLAGS_TF: u64 = 1 << 8;
pub const DR6_DEFAULT: u64 = 0xffff_0ff0;

/// Installs the counting handlers.
pub fn install_handlers() {
    let ok = set_handler(Vector::DEVICE_NOT_AVAILABLE, on_nm).is_ok()
        && set_handler(Vector::DEBUG, on_db).is_ok()
        && set_handler(Vector::GENERAL_PROTECTION, on_gp).is_ok()
        && set_handler(Vector::INVALID_OPCODE, on_ud).is_ok();
    if !ok {
        crate::fail(format_args!("trap handlers not installed"));
    }
}

/// #NM: counted; the instruction runs again (the hypervisor cleared the virtual TS).
fn on_nm(_: &mut TrapFrame) {
    NM.fetch_add(1, Ordering::SeqCst);
}

/// #DB: counted with the guest's DR6, which is then reset; a single step ends.
fn on_db(frame: &mut TrapFrame) {
    DB.fetch_add(1, Ordering::SeqCst);
    LAST_DR6.store(get_debugreg(6) as u64, Ordering::SeqCst);
    LAST_DB_RIP.store(frame.rip, Ordering::SeqCst);
    set_debugreg(6, DR6_DEFAULT);
    frame.rflags &= !RFLAGS_TF;
}

fn on_gp(frame: &mut TrapFrame) {
    step_over(frame, &GP, "#GP");
}

fn on_ud(frame: &mut TrapFrame) {
    step_over(frame, &UD, "#UD");
}

fn step_over(frame: &mut TrapFrame, count: &AtomicU32, what: &str) {
    let skip = SKIP.swap(0, Ordering::SeqCst);
    if skip == 0 {
        crate::fail(format_args!("unexpected {what} at rip {:#x}", frame.rip));
    }
    count.fetch_add(1, Ordering::SeqCst);
    frame.rip += skip;
}

/// Runs `f`, whose one faulting instruction is `length` bytes, and says which of #GP and
/// #UD it raised (`None`: none).
pub fn expect_fault(length: u64, f: impl FnOnce()) -> Option<&'static str> {
    let (gp, ud) = (GP.load(Ordering::SeqCst), UD.load(Ordering::SeqCst));
    SKIP.store(length, Ordering::SeqCst);
    f();
    SKIP.store(0, Ordering::SeqCst);
    if GP.load(Ordering::SeqCst) != gp {
        Some("#GP")
    } else if UD.load(Ordering::SeqCst) != ud {
        Some("#UD")
    } else {
        None
    }
}

pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: emulated by the hypervisor (a read).
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nostack)) };
    v
}

/// `mov %rax, %cr0` (3 bytes).
pub fn write_cr0(v: u64) {
    // SAFETY: emulated by the hypervisor, which lets only TS change.
    unsafe { asm!("mov cr0, rax", in("rax") v, options(nostack)) };
}

pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: emulated by the hypervisor (a read).
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nostack)) };
    v
}

pub fn write_cr4(v: u64) {
    // SAFETY: emulated by the hypervisor, which takes the bits a guest controls.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack)) };
}

/// `clts` (2 bytes).
pub fn clts() {
    // SAFETY: emulated by the hypervisor: clears the virtual CR0.TS.
    unsafe { asm!("clts", options(nostack)) };
}

pub fn xgetbv() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV of XCR0 runs natively once CR4.OSXSAVE is on (the hypervisor's).
    unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nostack, nomem)) };
    u64::from(lo) | u64::from(hi) << 32
}

/// `xsetbv` of XCR `index` (3 bytes).
pub fn xsetbv(index: u32, v: u64) {
    // SAFETY: emulated by the hypervisor, which checks the value as Xen does.
    unsafe { asm!("xsetbv", in("ecx") index, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack)) };
}

/// `rdmsr` (2 bytes).
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: emulated by the hypervisor (DEBUGCTL) or #GP.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    u64::from(lo) | u64::from(hi) << 32
}

/// `wrmsr` (2 bytes).
pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: emulated by the hypervisor (DEBUGCTL) or #GP.
    unsafe { asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack)) };
}

/// `mov %rax, %dr7` (3 bytes).
pub fn mov_to_dr7(v: u64) {
    // SAFETY: emulated by the hypervisor with set_debugreg's rules.
    unsafe { asm!("mov dr7, rax", in("rax") v, options(nostack)) };
}

/// `mov %rax, %dr4` (3 bytes).
pub fn mov_to_dr4(v: u64) {
    // SAFETY: emulated by the hypervisor (DR6's alias, or #UD with CR4.DE).
    unsafe { asm!("mov dr4, rax", in("rax") v, options(nostack)) };
}

pub fn mov_from_dr7() -> u64 {
    let v: u64;
    // SAFETY: emulated by the hypervisor (a read).
    unsafe { asm!("mov {}, dr7", out(reg) v, options(nostack)) };
    v
}

pub fn mov_from_dr6() -> u64 {
    let v: u64;
    // SAFETY: emulated by the hypervisor (a read).
    unsafe { asm!("mov {}, dr6", out(reg) v, options(nostack)) };
    v
}

pub fn fpu_taskswitch(set: bool) {
    // SAFETY: no memory argument.
    let _ = unsafe { hypercall1(Hypercall::FpuTaskswitch, u64::from(set)) };
}

pub fn set_debugreg(reg: u32, value: u64) -> i64 {
    // SAFETY: no memory argument.
    unsafe { hypercall2(Hypercall::SetDebugreg, u64::from(reg), value) }
}

pub fn get_debugreg(reg: u32) -> i64 {
    // SAFETY: no memory argument.
    unsafe { hypercall1(Hypercall::GetDebugreg, u64::from(reg)) }
}

/// CPUID through the hypervisor (the forced-emulation prefix).
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u64, u32, u32);
    // SAFETY: `ud2; .ascii "xen"; cpuid` is emulated by the hypervisor as CPUID; rbx is
    // saved around it (LLVM reserves it).
    unsafe {
        asm!(
            "mov {tmp}, rbx",
            "ud2", ".ascii \"xen\"", "cpuid",
            "xchg {tmp}, rbx",
            tmp = out(reg) b,
            inout("eax") leaf => a,
            inout("ecx") subleaf => c,
            out("edx") d,
            options(nostack),
        )
    };
    [a, b as u32, c, d]
}

/// One SSE instruction (raises #NM while CR0.TS is set).
pub fn touch_sse() {
    // SAFETY: changes only XMM0 to itself.
    unsafe { asm!("movaps xmm0, xmm0", options(nostack, nomem)) };
}

/// One x87 instruction (raises #NM while CR0.TS is set).
pub fn touch_x87() {
    // SAFETY: no effect but on the x87 state's instruction pointer.
    unsafe { asm!("fnop", options(nostack, nomem)) };
}

/// `rdfsbase %rax` (5 bytes): #UD unless CR4.FSGSBASE is on.
pub fn rdfsbase() {
    // SAFETY: reads the FS base into rax (clobbered) when allowed; raises #UD otherwise,
    // which the caller expects and steps over.
    unsafe { asm!(".byte 0xf3, 0x48, 0x0f, 0xae, 0xc0", out("rax") _, options(nostack, nomem)) };
}

/// `mov ss` from `slot` (which holds the current SS), then a `nop`; returns the address
/// after the `nop` (where a data breakpoint on `slot` must be reported: the processor
/// holds it back over the instruction after `mov ss`).
pub fn mov_ss_then_nop(slot: &u16) -> u64 {
    let after: u64;
    // SAFETY: reloads SS with the selector it already holds; the nop does nothing.
    unsafe { asm!("mov ss, word ptr [{slot}]", "nop", "2:", "lea {after}, [rip + 2b]", slot = in(reg) slot, after = out(reg) after, options(nostack)) };
    after
}

/// `mov ss` from `slot` (the current SS) then `syscall` straight away: the hypercall
/// `xen_version(XENVER_version)`; returns its result.
pub fn mov_ss_then_hypercall(slot: &u16) -> i64 {
    let result: i64;
    // SAFETY: reloads SS with the selector it already holds; xen_version(0) takes no
    // buffer; syscall clobbers rcx and r11.
    unsafe {
        asm!("mov ss, word ptr [{slot}]", "syscall", slot = in(reg) slot,
             inout("rax") u64::from(Hypercall::XenVersion.raw()) => result, in("rdi") 0u64, in("rsi") 0u64,
             out("rcx") _, out("r11") _, options(nostack))
    };
    result
}

/// The current SS selector.
pub fn read_ss() -> u16 {
    let ss: u16;
    // SAFETY: reads a segment register.
    unsafe { asm!("mov {0:x}, ss", out(reg) ss, options(nostack, nomem)) };
    ss
}
