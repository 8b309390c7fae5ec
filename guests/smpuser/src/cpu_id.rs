//! Which physical CPU a vCPU runs on, for the progress lines: the initial APIC id from
//! CPUID leaf 1 (EBX bits 31-24), asked through Xen's forced-emulation prefix so that the
//! hypervisor answers with the CPU it runs the vCPU on.
//!
//! Both vCPUs call [`physical_apic_id`] once, to print it. The answer only informs: the
//! checks must never depend on where the hypervisor places a vCPU.

use core::arch::asm;

/// CPUID leaf 1: version and feature information; EBX holds the initial APIC id.
const LEAF_FEATURES: u32 = 1;
/// Where the initial APIC id sits in leaf 1's EBX.
const APIC_ID_SHIFT: u32 = 24;

/// The initial APIC id of the physical CPU running this vCPU now.
pub fn physical_apic_id() -> u32 {
    let ebx: u32;
    // SAFETY: `ud2; .ascii "xen"; cpuid` (guest_rt::abi::arch_x86::XEN_CPUID) is Xen's
    // forced-emulation CPUID: the hypervisor emulates it and resumes after the 7 bytes,
    // writing only eax, ebx, ecx and edx. rbx is reserved by the compiler, so it is saved
    // in a scratch register and restored; no memory or stack is touched.
    unsafe {
        asm!(
            "mov {saved:r}, rbx",
            ".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e",
            "cpuid",
            "mov {ebx:e}, ebx",
            "mov rbx, {saved:r}",
            saved = out(reg) _,
            ebx = out(reg) ebx,
            inout("eax") LEAF_FEATURES => _,
            inout("ecx") 0u32 => _,
            out("edx") _,
            options(nostack),
        );
    }
    ebx >> APIC_ID_SHIFT
}
