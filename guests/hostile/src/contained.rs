//! Where the single attacks on the hypervisor's entry and exit paths ([`crate::exit_path`],
//! [`crate::compat`]) land when the hypervisor contains them: assembly entry points for
//! the failsafe callback, the syscall32 and sysenter callbacks, and #UD, #GP and #PF, each of
//! which switches to a stack of its own (the frame may sit on a tiny or odd stack), reports
//! "hostile: attack <name>: contained by <what> (rip .., cs .., ss ..)" and powers the
//! domain off.
//!
//! The frames, from the stack pointer up (Xen's x86-64 bounce frames): failsafe {rcx, r11,
//! ds, es, fs, gs, rip, cs, rflags, rsp, ss}; syscall32 and sysenter {rcx, r11, rip, cs,
//! rflags, rsp, ss}; #UD {rcx, r11, rip, ...}; #GP and #PF {rcx, r11, error, rip, ...}. The attack
//! names itself with [`strike`] before it strikes; this module must never return into the
//! attack.

use core::arch::global_asm;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::hypercall::shutdown;
use guest_rt::println;

/// What delivered the attack's state back to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Landing {
    Failsafe = 0,
    Syscall32 = 1,
    Sysenter = 2,
    InvalidOpcode = 3,
    GeneralProtection = 4,
    PageFault = 5,
}

impl Landing {
    fn from_raw(raw: u64) -> Option<Self> {
        [
            Self::Failsafe,
            Self::Syscall32,
            Self::Sysenter,
            Self::InvalidOpcode,
            Self::GeneralProtection,
            Self::PageFault,
        ]
            .into_iter()
            .find(|l| *l as u64 == raw)
    }

    /// The description and the word index of rip in the frame.
    fn describe(self) -> (&'static str, usize) {
        match self {
            Self::Failsafe => ("the failsafe callback", 6),
            Self::Syscall32 => ("the syscall32 callback", 2),
            Self::Sysenter => ("the sysenter callback", 2),
            Self::InvalidOpcode => ("#UD delivered to the guest", 2),
            Self::GeneralProtection => ("#GP delivered to the guest", 3),
            Self::PageFault => ("#PF delivered to the guest", 3),
        }
    }

    /// The entry point for this landing.
    pub fn entry(self) -> u64 {
        match self {
            Self::Failsafe => &raw const hostile_land_failsafe as u64,
            Self::Syscall32 => &raw const hostile_land_syscall32 as u64,
            Self::Sysenter => &raw const hostile_land_sysenter as u64,
            Self::InvalidOpcode => &raw const hostile_land_ud as u64,
            Self::GeneralProtection => &raw const hostile_land_gp as u64,
            Self::PageFault => &raw const hostile_land_pf as u64,
        }
    }
}

/// Size of the stack the landings switch to.
const LANDING_STACK_SIZE: usize = 16 * 1024;

global_asm!(
    ".pushsection .bss.hostile_landing_stack,\"aw\",@nobits",
    ".balign 16",
    ".skip {size}",
    "hostile_landing_stack_top:",
    ".popsection",
    ".pushsection .text.hostile_landings,\"ax\",@progbits",
    ".macro hostile_landing name, kind",
    ".globl \\name",
    "\\name:",
    "    mov rdi, rsp",
    "    mov esi, \\kind",
    "    lea rsp, [rip + hostile_landing_stack_top]",
    "    cld",
    "    call hostile_landed",
    "    ud2",
    ".endm",
    "hostile_landing hostile_land_failsafe, {failsafe}",
    "hostile_landing hostile_land_syscall32, {syscall32}",
    "hostile_landing hostile_land_sysenter, {sysenter}",
    "hostile_landing hostile_land_ud, {ud}",
    "hostile_landing hostile_land_gp, {gp}",
    "hostile_landing hostile_land_pf, {pf}",
    ".popsection",
    size = const LANDING_STACK_SIZE,
    failsafe = const Landing::Failsafe as u64,
    syscall32 = const Landing::Syscall32 as u64,
    sysenter = const Landing::Sysenter as u64,
    ud = const Landing::InvalidOpcode as u64,
    gp = const Landing::GeneralProtection as u64,
    pf = const Landing::PageFault as u64,
);

extern "C" {
    static hostile_land_failsafe: u8;
    static hostile_land_syscall32: u8;
    static hostile_land_sysenter: u8;
    static hostile_land_ud: u8;
    static hostile_land_gp: u8;
    static hostile_land_pf: u8;
}

/// The attack under way (its name as a pointer and a length).
static NAME_PTR: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static NAME_LEN: AtomicUsize = AtomicUsize::new(0);

/// Names the attack about to strike, for the landing's report.
pub fn strike(name: &'static str) {
    NAME_LEN.store(name.len(), Ordering::Relaxed);
    NAME_PTR.store(name.as_ptr().cast_mut(), Ordering::Release);
}

fn name() -> &'static str {
    let ptr = NAME_PTR.load(Ordering::Acquire);
    if ptr.is_null() {
        return "?";
    }
    // SAFETY: `strike` stored the parts of a `&'static str`.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, NAME_LEN.load(Ordering::Relaxed)) };
    core::str::from_utf8(bytes).unwrap_or("?")
}

/// Called by the landings with the frame the hypervisor built.
#[unsafe(no_mangle)]
extern "C" fn hostile_landed(frame: *const u64, kind: u64) -> ! {
    let Some(landing) = Landing::from_raw(kind) else {
        println!("hostile: attack {}: landed with unknown kind {kind} (BUG)", name());
        shutdown(ShutdownReason::Crash);
    };
    let (what, rip_at) = landing.describe();
    // SAFETY: the hypervisor wrote the whole frame at `frame` (rip and the four words after
    // it are part of every frame); the landing reads it before anything else runs.
    let word = |i: usize| unsafe { frame.add(i).read_volatile() };
    let (rip, cs, rsp, ss) = (word(rip_at), word(rip_at + 1), word(rip_at + 3), word(rip_at + 4));
    println!(
        "hostile: attack {}: contained by {what} (frame rip {rip:#x} cs {:#x} rsp {rsp:#x} ss {ss:#x})",
        name(),
        cs & 0xffff
    );
    if landing == Landing::Failsafe {
        println!(
            "hostile: attack {}: failsafe frame ds {:#x} es {:#x} fs {:#x} gs {:#x}",
            name(),
            word(2),
            word(3),
            word(4),
            word(5)
        );
    }
    shutdown(ShutdownReason::Poweroff)
}
