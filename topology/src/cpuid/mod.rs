//! CPUID decoding: vendor, leaf ranges, the features the hypervisor depends on, the boot
//! CPU's APIC id and the APIC-id bit layout, and clock frequencies when CPUID states them.
//!
//! The hypervisor calls [`CpuInfo::read`] on the boot CPU with [`NativeCpuid`]; tests call
//! it with recorded leaf values. Decoding is pure and reads only through [`CpuidSource`]; it
//! never asks for a leaf above the maximum the CPU reports (Intel answers those with the
//! highest basic leaf's data, which would be misread).

mod clock;
mod features;
mod layout;
#[cfg(test)]
mod tests;

use core::fmt;

pub use clock::ClockInfo;
pub use features::CpuFeatures;
pub use layout::{ApicIdLayout, ApicIdParts, LayoutSource};

use crate::ids::ApicId;

/// Leaf numbers (Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 appendix E).
mod leaf {
    pub const VENDOR: u32 = 0;
    pub const FEATURES: u32 = 1;
    pub const CACHE_PARAMETERS: u32 = 4;
    pub const STRUCTURED_FEATURES: u32 = 7;
    pub const EXTENDED_TOPOLOGY: u32 = 0xb;
    pub const TSC_CRYSTAL: u32 = 0x15;
    pub const FREQUENCY: u32 = 0x16;
    pub const EXTENDED_TOPOLOGY_V2: u32 = 0x1f;
    pub const HYPERVISOR: u32 = 0x4000_0000;
    pub const EXTENDED_MAX: u32 = 0x8000_0000;
    pub const EXTENDED_FEATURES: u32 = 0x8000_0001;
    pub const POWER_MANAGEMENT: u32 = 0x8000_0007;
    pub const ADDRESS_SIZES: u32 = 0x8000_0008;
    pub const AMD_PROCESSOR_TOPOLOGY: u32 = 0x8000_001e;
}

/// The four registers one CPUID query returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Something that answers CPUID queries: the real instruction, or recorded values.
pub trait CpuidSource {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult;
}

/// The CPUID instruction of the CPU this runs on.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeCpuid;

#[cfg(target_arch = "x86_64")]
impl CpuidSource for NativeCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        CpuidResult {
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
        }
    }
}

/// The CPU vendor from leaf 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    /// AMD-compatible (Zen based); decoded like AMD.
    Hygon,
    Other([u8; 12]),
}

impl Vendor {
    fn from_signature(signature: [u8; 12]) -> Vendor {
        match &signature {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            b"HygonGenuine" => Vendor::Hygon,
            _ => Vendor::Other(signature),
        }
    }

    pub(crate) fn is_amd_like(&self) -> bool {
        matches!(self, Vendor::Amd | Vendor::Hygon)
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Vendor::Intel => write!(f, "GenuineIntel"),
            Vendor::Amd => write!(f, "AuthenticAMD"),
            Vendor::Hygon => write!(f, "HygonGenuine"),
            Vendor::Other(signature) => write_signature(f, signature),
        }
    }
}

/// Writes a 12-byte register signature, printable ASCII as is and anything else as `?`.
fn write_signature(f: &mut fmt::Formatter<'_>, signature: &[u8; 12]) -> fmt::Result {
    signature.iter().try_for_each(|&b| {
        let shown = if b.is_ascii_graphic() || b == b' ' {
            b as char
        } else {
            '?'
        };
        write!(f, "{shown}")
    })
}

/// The signature made of EBX, EDX, ECX (leaf 0) or EBX, ECX, EDX (hypervisor leaf).
fn signature(registers: [u32; 3]) -> [u8; 12] {
    let mut bytes = [0; 12];
    for (chunk, register) in bytes.chunks_exact_mut(4).zip(registers) {
        chunk.copy_from_slice(&register.to_le_bytes());
    }
    bytes
}

/// The hypervisor this runs under, from leaf 0x4000_0000, when the "hypervisor present" bit
/// is set (QEMU TCG: `TCGTCGTCGTCG`, KVM: `KVMKVMKVM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypervisorInfo {
    pub signature: [u8; 12],
    pub max_leaf: u32,
}

impl fmt::Display for HypervisorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_signature(f, &self.signature)
    }
}

/// What the boot CPU's CPUID says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    pub vendor: Vendor,
    pub max_basic_leaf: u32,
    /// `None` when leaf 0x8000_0000 does not report an extended range.
    pub max_extended_leaf: Option<u32>,
    /// Display family and model (extended fields folded in), and stepping.
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub features: CpuFeatures,
    /// The x2APIC id from leaf 0x1F/0xB when present, else the 8-bit id from leaf 1.
    pub initial_apic_id: ApicId,
    pub layout: ApicIdLayout,
    /// From leaf 0x8000_0008; 36 and 48 when it is absent or reports 0.
    pub physical_address_bits: u8,
    pub linear_address_bits: u8,
    pub clock: ClockInfo,
    pub hypervisor: Option<HypervisorInfo>,
}

/// Address widths assumed when leaf 0x8000_0008 is absent.
const DEFAULT_PHYSICAL_ADDRESS_BITS: u8 = 36;
const DEFAULT_LINEAR_ADDRESS_BITS: u8 = 48;

impl CpuInfo {
    /// Decodes everything this crate needs from `source`.
    pub fn read(source: &(impl CpuidSource + ?Sized)) -> CpuInfo {
        let leaves = Leaves::new(source);
        let leaf0 = leaves.source.cpuid(leaf::VENDOR, 0);
        let vendor = Vendor::from_signature(signature([leaf0.ebx, leaf0.edx, leaf0.ecx]));
        let leaf1 = leaves.get(leaf::FEATURES, 0).unwrap_or_default();
        let features = CpuFeatures::decode(&leaves);
        let (layout, x2apic_id) = layout::decode(&leaves, vendor);
        let address_sizes = leaves.get(leaf::ADDRESS_SIZES, 0);
        let (family, model, stepping) = family_model_stepping(leaf1.eax);
        CpuInfo {
            vendor,
            max_basic_leaf: leaves.max_basic,
            max_extended_leaf: leaves.max_extended,
            family,
            model,
            stepping,
            features,
            initial_apic_id: ApicId(x2apic_id.unwrap_or(leaf1.ebx >> 24)),
            layout,
            physical_address_bits: address_width(address_sizes.map(|r| r.eax))
                .unwrap_or(DEFAULT_PHYSICAL_ADDRESS_BITS),
            linear_address_bits: address_width(address_sizes.map(|r| r.eax >> 8))
                .unwrap_or(DEFAULT_LINEAR_ADDRESS_BITS),
            clock: ClockInfo::decode(&leaves),
            hypervisor: features.hypervisor.then(|| hypervisor(leaves.source)),
        }
    }
}

/// One line for the boot log.
impl fmt::Display for CpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu: {} family {:#x} model {:#x} stepping {} apic {} [{}] {}",
            self.vendor,
            self.family,
            self.model,
            self.stepping,
            self.initial_apic_id,
            self.features,
            self.layout
        )?;
        if let Some(hypervisor) = &self.hypervisor {
            write!(f, " under {hypervisor}")?;
        }
        Ok(())
    }
}

/// Leaf 1 EAX: family and model with their extensions applied as both vendors specify.
fn family_model_stepping(eax: u32) -> (u32, u32, u32) {
    let base_family = (eax >> 8) & 0xf;
    let base_model = (eax >> 4) & 0xf;
    let family = if base_family == 0xf {
        base_family + ((eax >> 20) & 0xff)
    } else {
        base_family
    };
    let model = if base_family == 0x6 || base_family == 0xf {
        base_model | ((eax >> 16) & 0xf) << 4
    } else {
        base_model
    };
    (family, model, eax & 0xf)
}

/// An address width from the low byte of `register`, unless absent or 0.
fn address_width(register: Option<u32>) -> Option<u8> {
    register.map(|r| r as u8).filter(|&bits| bits != 0)
}

fn hypervisor(source: &(impl CpuidSource + ?Sized)) -> HypervisorInfo {
    let r = source.cpuid(leaf::HYPERVISOR, 0);
    HypervisorInfo {
        signature: signature([r.ebx, r.ecx, r.edx]),
        max_leaf: r.eax,
    }
}

/// Basic and extended leaves, refusing any above the reported maximum.
pub(crate) struct Leaves<'a, S: CpuidSource + ?Sized> {
    source: &'a S,
    max_basic: u32,
    max_extended: Option<u32>,
}

/// Leaf 0x8000_0000 EAX must fall in this range to report an extended range at all.
const EXTENDED_RANGE: core::ops::RangeInclusive<u32> = 0x8000_0000..=0x8000_ffff;

impl<'a, S: CpuidSource + ?Sized> Leaves<'a, S> {
    fn new(source: &'a S) -> Leaves<'a, S> {
        let max_basic = source.cpuid(leaf::VENDOR, 0).eax;
        let max_extended = Some(source.cpuid(leaf::EXTENDED_MAX, 0).eax)
            .filter(|max| EXTENDED_RANGE.contains(max));
        Leaves {
            source,
            max_basic,
            max_extended,
        }
    }

    /// The leaf's registers, or `None` if the CPU does not implement it.
    pub(crate) fn get(&self, leaf: u32, subleaf: u32) -> Option<CpuidResult> {
        let max = if leaf >= leaf::EXTENDED_MAX {
            self.max_extended?
        } else {
            self.max_basic
        };
        (leaf <= max).then(|| self.source.cpuid(leaf, subleaf))
    }

    /// Bit `bit` of the register `register` picks out of the leaf; false if absent.
    pub(crate) fn bit(&self, leaf: u32, register: fn(&CpuidResult) -> u32, bit: u32) -> bool {
        self.get(leaf, 0)
            .is_some_and(|r| register(&r) & (1 << bit) != 0)
    }
}
