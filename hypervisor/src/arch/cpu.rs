//! Processor protections the hypervisor turns on for itself, on every CPU: SMEP (ring 0
//! never runs code from a page the guest can reach), SMAP (ring 0 touches guest pages only
//! inside `uaccess`'s user-access window, with RFLAGS.AC set), and CR4.FSGSBASE kept off (a
//! guest cannot change its FS or GS base behind the hypervisor's back with `wrgsbase`; the
//! entry path swaps GS with `swapgs` and trusts KERNEL_GS_BASE, which only the hypervisor
//! writes).
//!
//! RFLAGS.AC is set and cleared with `pushf`/`popf`, not `stac`/`clac`: the nested KVM of
//! this project's machines (`kvm_pvm`, which runs the machine in ring 3 and emulates ring 0)
//! cannot emulate `clac` and stops the virtual machine ("KVM internal error, emulation
//! failure"), while `popf` may change AC at any privilege level. The entry path tests the
//! interrupted RFLAGS in its frame and pays a `pushf`/`popf` only when AC was set there.
//!
//! The boot CPU calls [`init_boot_cpu`] once it is in its own per-CPU area; every AP calls
//! [`protect_this_cpu`] before it goes idle. Both happen before any guest runs. Every
//! guest page carries the User bit (the guest kernel runs in ring 3), every window page is
//! supervisor-only, so the hypervisor's own accesses never need AC. This module only sets
//! control-register bits; it must never be the place that decides what a guest may map.

use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::registers::control::{Cr4, Cr4Flags};

/// CPUID.(EAX=7, ECX=0):EBX bits.
const LEAF7_EBX_SMEP: u32 = 1 << 7;
const LEAF7_EBX_SMAP: u32 = 1 << 20;

/// Whether the entry paths clear RFLAGS.AC and `uaccess` sets it around its copy: set on the
/// boot CPU, before any guest runs, when it turned SMAP on.
pub static SMAP_ON: AtomicBool = AtomicBool::new(false);
/// RFLAGS.AC: with SMAP on, ring 0 may touch user pages only while it is set.
pub const RFLAGS_AC: u32 = 1 << 18;
static SMEP_ON: AtomicBool = AtomicBool::new(false);

/// What a CPU offers and now has on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protections {
    pub smep: bool,
    pub smap: bool,
}

/// SMEP and SMAP as CPUID offers them.
fn offered() -> Protections {
    let max = core::arch::x86_64::__cpuid(0).eax;
    if max < 7 {
        return Protections { smep: false, smap: false };
    }
    let ebx = core::arch::x86_64::__cpuid_count(7, 0).ebx;
    Protections { smep: ebx & LEAF7_EBX_SMEP != 0, smap: ebx & LEAF7_EBX_SMAP != 0 }
}

/// Turns on SMEP and SMAP where offered and turns FSGSBASE off, on this CPU.
pub fn protect_this_cpu() -> Protections {
    let on = offered();
    // SAFETY: SMEP and SMAP only forbid ring-0 execution of and access to user pages, which
    // the hypervisor never does outside `uaccess` (which opens an access window); clearing
    // FSGSBASE makes `rdgsbase` and friends fault, and the hypervisor does not use them.
    unsafe {
        Cr4::update(|flags| {
            flags.remove(Cr4Flags::FSGSBASE);
            flags.set(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION, on.smep);
            flags.set(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION, on.smap);
        })
    };
    on
}

/// [`protect_this_cpu`] on the boot CPU, recording what is on for every CPU (they are
/// alike) and for the summary.
pub fn init_boot_cpu() -> Protections {
    let on = protect_this_cpu();
    SMEP_ON.store(on.smep, Ordering::Relaxed);
    SMAP_ON.store(on.smap, Ordering::Release);
    on
}

/// What the boot CPU turned on.
pub fn protections() -> Protections {
    Protections { smep: SMEP_ON.load(Ordering::Relaxed), smap: SMAP_ON.load(Ordering::Relaxed) }
}

/// Whether this CPU runs with FSGSBASE off (a self-check).
pub fn fsgsbase_off() -> bool {
    !Cr4::read().contains(Cr4Flags::FSGSBASE)
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}
