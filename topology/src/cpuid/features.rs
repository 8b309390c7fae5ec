//! The CPUID feature bits the hypervisor depends on, decoded into named booleans.
//!
//! Read once at boot through [`CpuInfo::read`](super::CpuInfo::read). A bit in a leaf the
//! CPU does not implement reads as absent; nothing here enables or checks a feature.

use core::fmt;

use super::{leaf, CpuidResult, CpuidSource, Leaves};

/// Bit positions (Intel SDM vol. 2A table 3-10 and 3-11, AMD APM vol. 3 appendix E).
mod bits {
    // Leaf 1 ECX.
    pub const PCID: u32 = 17;
    pub const X2APIC: u32 = 21;
    pub const TSC_DEADLINE: u32 = 24;
    pub const XSAVE: u32 = 26;
    pub const HYPERVISOR: u32 = 31;
    // Leaf 1 EDX.
    pub const HTT: u32 = 28;
    // Leaf 7 subleaf 0 EBX.
    pub const FSGSBASE: u32 = 0;
    pub const SMEP: u32 = 7;
    pub const SMAP: u32 = 20;
    // Leaf 0x8000_0001 EDX.
    pub const SYSCALL: u32 = 11;
    pub const NX: u32 = 20;
    pub const PDPE1GB: u32 = 26;
    // Leaf 0x8000_0001 ECX.
    pub const TOPOEXT: u32 = 22;
    // Leaf 0x8000_0007 EDX.
    pub const INVARIANT_TSC: u32 = 8;
}

fn ebx(r: &CpuidResult) -> u32 {
    r.ebx
}
fn ecx(r: &CpuidResult) -> u32 {
    r.ecx
}
fn edx(r: &CpuidResult) -> u32 {
    r.edx
}

/// Features the hypervisor checks or uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    pub x2apic: bool,
    pub tsc_deadline: bool,
    pub invariant_tsc: bool,
    /// 1 GiB pages.
    pub pdpe1gb: bool,
    pub nx: bool,
    pub syscall: bool,
    pub fsgsbase: bool,
    pub smep: bool,
    pub smap: bool,
    pub pcid: bool,
    pub xsave: bool,
    /// Running under a hypervisor (leaf 1 ECX bit 31).
    pub hypervisor: bool,
}

impl CpuFeatures {
    pub(crate) fn decode<S: CpuidSource + ?Sized>(leaves: &Leaves<'_, S>) -> CpuFeatures {
        let basic = |register, bit| leaves.bit(leaf::FEATURES, register, bit);
        let structured = |bit| leaves.bit(leaf::STRUCTURED_FEATURES, ebx, bit);
        let extended = |bit| leaves.bit(leaf::EXTENDED_FEATURES, edx, bit);
        CpuFeatures {
            x2apic: basic(ecx, bits::X2APIC),
            tsc_deadline: basic(ecx, bits::TSC_DEADLINE),
            invariant_tsc: leaves.bit(leaf::POWER_MANAGEMENT, edx, bits::INVARIANT_TSC),
            pdpe1gb: extended(bits::PDPE1GB),
            nx: extended(bits::NX),
            syscall: extended(bits::SYSCALL),
            fsgsbase: structured(bits::FSGSBASE),
            smep: structured(bits::SMEP),
            smap: structured(bits::SMAP),
            pcid: basic(ecx, bits::PCID),
            xsave: basic(ecx, bits::XSAVE),
            hypervisor: basic(ecx, bits::HYPERVISOR),
        }
    }

    fn named(&self) -> [(&'static str, bool); 12] {
        [
            ("x2apic", self.x2apic),
            ("tsc-deadline", self.tsc_deadline),
            ("invariant-tsc", self.invariant_tsc),
            ("pdpe1gb", self.pdpe1gb),
            ("nx", self.nx),
            ("syscall", self.syscall),
            ("fsgsbase", self.fsgsbase),
            ("smep", self.smep),
            ("smap", self.smap),
            ("pcid", self.pcid),
            ("xsave", self.xsave),
            ("hypervisor", self.hypervisor),
        ]
    }
}

/// The names of the features present, space separated.
impl fmt::Display for CpuFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut present = self
            .named()
            .into_iter()
            .filter(|&(_, set)| set)
            .map(|(name, _)| name);
        if let Some(first) = present.next() {
            write!(f, "{first}")?;
        }
        present.try_for_each(|name| write!(f, " {name}"))
    }
}

/// Leaf 1 EDX HTT: the leaf 1 EBX logical-processor count is valid.
pub(crate) fn has_htt<S: CpuidSource + ?Sized>(leaves: &Leaves<'_, S>) -> bool {
    leaves.bit(leaf::FEATURES, edx, bits::HTT)
}

/// AMD topology extensions: leaf 0x8000_001E is valid.
pub(crate) fn has_topoext<S: CpuidSource + ?Sized>(leaves: &Leaves<'_, S>) -> bool {
    leaves.bit(leaf::EXTENDED_FEATURES, ecx, bits::TOPOEXT)
}
