//! Instructions a PV guest kernel may run only because the hypervisor emulates them: CPUID
//! behind Xen's forced-emulation prefix (`ud2; .ascii "xen"; cpuid`), and reading cr3,
//! which faults at CPL 3 and is emulated to give the L4's machine address.
//!
//! `main` compares the results with what the Xen ABI promises. This module only runs the
//! instructions: it must never interpret the results.

use core::arch::asm;

use guest_rt::abi::arch_x86::XEN_CPUID;

/// What CPUID returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl Cpuid {
    /// The 12 bytes of ebx, ecx, edx: the hypervisor signature of leaf 0x40000000.
    pub fn ebx_ecx_edx(&self) -> [u8; 12] {
        bytes([self.ebx, self.ecx, self.edx])
    }

    /// The 12 bytes of ebx, edx, ecx: the vendor string of leaf 0.
    pub fn ebx_edx_ecx(&self) -> [u8; 12] {
        bytes([self.ebx, self.edx, self.ecx])
    }
}

/// Three registers' bytes, in order, little-endian.
fn bytes(registers: [u32; 3]) -> [u8; 12] {
    let mut out = [0; 12];
    for (chunk, register) in out.chunks_exact_mut(4).zip(registers) {
        chunk.copy_from_slice(&register.to_le_bytes());
    }
    out
}

/// CPUID of `leaf` (subleaf 0) through the forced-emulation prefix.
pub fn forced_cpuid(leaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx);
    // SAFETY: the 7 bytes are XEN_CPUID: the hypervisor emulates CPUID and skips them
    // (without that support the ud2 raises #UD, which the runtime reports before ending
    // the domain). rbx, which LLVM reserves, is saved and restored around it.
    unsafe {
        asm!(
            "mov {rbx_copy:r}, rbx",
            ".byte {b0}, {b1}, {b2}, {b3}, {b4}, {b5}, {b6}",
            "xchg {rbx_copy:r}, rbx",
            rbx_copy = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") 0u32 => ecx,
            out("edx") edx,
            b0 = const XEN_CPUID[0],
            b1 = const XEN_CPUID[1],
            b2 = const XEN_CPUID[2],
            b3 = const XEN_CPUID[3],
            b4 = const XEN_CPUID[4],
            b5 = const XEN_CPUID[5],
            b6 = const XEN_CPUID[6],
            options(nostack, preserves_flags),
        );
    }
    Cpuid { eax, ebx, ecx, edx }
}

/// `mov rax, cr3`, emulated by the hypervisor.
pub fn read_cr3() -> u64 {
    let cr3;
    // SAFETY: at CPL 3 the read faults (#GP) and the hypervisor emulates it; it changes
    // nothing (without that support the runtime reports the #GP and ends the domain).
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    cr3
}
