//! How an APIC id splits into package, core and thread fields, from CPUID.
//!
//! Decoded once at boot by [`CpuInfo::read`](super::CpuInfo::read) and used by the topology
//! builder for every CPU the MADT lists (all packages of one machine share the layout). It
//! trusts no single leaf blindly: extended-topology leaves with inconsistent shifts are
//! dropped for the next source, and splitting never shifts by 32 or more.

use core::fmt;

use super::features::{has_htt, has_topoext};
use super::{leaf, CpuidSource, Leaves, Vendor};
use crate::ids::ApicId;

/// Leaf 0xB/0x1F level types (ECX bits 15:8); 0 ends the list. Other types (module, tile,
/// die) fold into the core field here.
const LEVEL_INVALID: u32 = 0;
const LEVEL_SMT: u32 = 1;
/// Subleaves read at most; real CPUs have up to six levels.
const MAX_LEVELS: u32 = 8;

/// Where the layout came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutSource {
    /// Intel V2 extended topology leaf 0x1F.
    Leaf1F,
    /// Extended topology leaf 0xB.
    LeafB,
    /// Intel legacy: leaf 1 logical count and leaf 4 core count.
    IntelLeaf4,
    /// AMD legacy: leaf 0x8000_0008 (and 0x8000_001E threads per core with TOPOEXT).
    AmdLeaf80000008,
    /// Leaf 1 logical count only; no thread field.
    Leaf1,
    /// One logical processor per package: every APIC id is its own package.
    SinglePerPackage,
}

/// Widths of the thread and core fields at the bottom of an APIC id; the package number is
/// everything above them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicIdLayout {
    pub smt_bits: u32,
    pub core_bits: u32,
    pub source: LayoutSource,
}

/// An APIC id split by an [`ApicIdLayout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicIdParts {
    pub package: u32,
    /// Core within its package.
    pub core: u32,
    /// Thread within its core.
    pub thread: u32,
}

impl ApicIdLayout {
    /// Every APIC id its own package with one core and one thread.
    pub const SINGLE: ApicIdLayout = ApicIdLayout {
        smt_bits: 0,
        core_bits: 0,
        source: LayoutSource::SinglePerPackage,
    };

    /// Bits below the package field.
    pub fn package_shift(&self) -> u32 {
        self.smt_bits.saturating_add(self.core_bits)
    }

    pub fn split(&self, apic_id: ApicId) -> ApicIdParts {
        let id = apic_id.0;
        ApicIdParts {
            package: shift_right(id, self.package_shift()),
            core: shift_right(id, self.smt_bits) & low_mask(self.core_bits),
            thread: id & low_mask(self.smt_bits),
        }
    }
}

impl fmt::Display for ApicIdLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "apic-id layout smt={} core={} ({:?})",
            self.smt_bits, self.core_bits, self.source
        )
    }
}

fn shift_right(value: u32, bits: u32) -> u32 {
    value.checked_shr(bits).unwrap_or(0)
}

fn low_mask(bits: u32) -> u32 {
    1u32.checked_shl(bits).map_or(u32::MAX, |bit| bit - 1)
}

/// Bits needed to number `count` things: 0 for one or none.
fn bits_for(count: u32) -> u32 {
    match count {
        0 | 1 => 0,
        n => u32::BITS - (n - 1).leading_zeros(),
    }
}

/// The layout, and the 32-bit x2APIC id when an extended topology leaf gave it.
pub(crate) fn decode<S: CpuidSource + ?Sized>(
    leaves: &Leaves<'_, S>,
    vendor: Vendor,
) -> (ApicIdLayout, Option<u32>) {
    let extended = extended_topology(leaves, leaf::EXTENDED_TOPOLOGY_V2, LayoutSource::Leaf1F)
        .or_else(|| extended_topology(leaves, leaf::EXTENDED_TOPOLOGY, LayoutSource::LeafB));
    match extended {
        Some((layout, x2apic_id)) => (layout, Some(x2apic_id)),
        None => (legacy(leaves, vendor), None),
    }
}

/// Leaf 0x1F or 0xB: the SMT level's shift gives the thread field, the last level's shift
/// the package shift.
fn extended_topology<S: CpuidSource + ?Sized>(
    leaves: &Leaves<'_, S>,
    topology_leaf: u32,
    source: LayoutSource,
) -> Option<(ApicIdLayout, u32)> {
    let first = leaves.get(topology_leaf, 0)?;
    if first.ebx & 0xffff == 0 {
        return None; // leaf not supported
    }
    let mut smt_bits = 0;
    let mut package_shift = 0;
    for subleaf in 0..MAX_LEVELS {
        let level = leaves.get(topology_leaf, subleaf)?;
        let level_type = (level.ecx >> 8) & 0xff;
        if level_type == LEVEL_INVALID {
            break;
        }
        let shift = level.eax & 0x1f;
        if shift < package_shift {
            return None; // shifts must grow level by level
        }
        if level_type == LEVEL_SMT {
            smt_bits = shift;
        }
        package_shift = shift;
    }
    let layout = ApicIdLayout {
        smt_bits,
        core_bits: package_shift - smt_bits,
        source,
    };
    Some((layout, first.edx))
}

/// Without an extended topology leaf: leaf 1's logical count per package, split into
/// cores and threads by the vendor's leaf.
fn legacy<S: CpuidSource + ?Sized>(leaves: &Leaves<'_, S>, vendor: Vendor) -> ApicIdLayout {
    if !has_htt(leaves) {
        return ApicIdLayout::SINGLE;
    }
    let leaf1 = leaves.get(leaf::FEATURES, 0).unwrap_or_default();
    let logical_bits = bits_for((leaf1.ebx >> 16) & 0xff);
    match vendor {
        Vendor::Intel => intel_legacy(leaves, logical_bits),
        v if v.is_amd_like() => amd_legacy(leaves).unwrap_or(ApicIdLayout {
            smt_bits: 0,
            core_bits: logical_bits,
            source: LayoutSource::Leaf1,
        }),
        _ => ApicIdLayout {
            smt_bits: 0,
            core_bits: logical_bits,
            source: LayoutSource::Leaf1,
        },
    }
}

/// Leaf 4 EAX bits 31:26 is the maximum number of core ids per package, minus one.
fn intel_legacy<S: CpuidSource + ?Sized>(
    leaves: &Leaves<'_, S>,
    logical_bits: u32,
) -> ApicIdLayout {
    let cores = leaves
        .get(leaf::CACHE_PARAMETERS, 0)
        .filter(|r| r.eax & 0x1f != 0) // cache type 0: no caches described
        .map_or(1, |r| (r.eax >> 26) + 1);
    let core_bits = bits_for(cores);
    let package_shift = logical_bits.max(core_bits);
    ApicIdLayout {
        smt_bits: package_shift - core_bits,
        core_bits,
        source: LayoutSource::IntelLeaf4,
    }
}

/// Leaf 0x8000_0008 ECX: bits 15:12 ApicIdCoreIdSize (bits of the APIC id within a package;
/// 0 means use NC), bits 7:0 NC (logical processors per package, minus one). With TOPOEXT,
/// leaf 0x8000_001E EBX bits 15:8 gives threads per core, minus one.
fn amd_legacy<S: CpuidSource + ?Sized>(leaves: &Leaves<'_, S>) -> Option<ApicIdLayout> {
    let ecx = leaves.get(leaf::ADDRESS_SIZES, 0)?.ecx;
    let package_shift = match (ecx >> 12) & 0xf {
        0 => bits_for((ecx & 0xff) + 1),
        size => size,
    };
    let threads_per_core = leaves
        .get(leaf::AMD_PROCESSOR_TOPOLOGY, 0)
        .filter(|_| has_topoext(leaves))
        .map_or(1, |r| ((r.ebx >> 8) & 0xff) + 1);
    let smt_bits = bits_for(threads_per_core).min(package_shift);
    Some(ApicIdLayout {
        smt_bits,
        core_bits: package_shift - smt_bits,
        source: LayoutSource::AmdLeaf80000008,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_for_counts() {
        let got: alloc::vec::Vec<_> = [0, 1, 2, 3, 4, 5, 8, 9, 255, 256].map(bits_for).to_vec();
        assert_eq!(got, [0, 0, 1, 2, 2, 3, 3, 4, 8, 8]);
    }

    #[test]
    fn split_two_threads_four_cores() {
        let layout = ApicIdLayout {
            smt_bits: 1,
            core_bits: 2,
            source: LayoutSource::LeafB,
        };
        // 0b1101: package 1, core 0b10, thread 1.
        assert_eq!(
            layout.split(ApicId(0b1101)),
            ApicIdParts {
                package: 1,
                core: 2,
                thread: 1
            }
        );
        assert_eq!(
            layout.split(ApicId(0)),
            ApicIdParts {
                package: 0,
                core: 0,
                thread: 0
            }
        );
    }

    #[test]
    fn split_with_extreme_widths_does_not_overflow() {
        let wide = ApicIdLayout {
            smt_bits: 31,
            core_bits: 31,
            source: LayoutSource::LeafB,
        };
        assert_eq!(
            wide.split(ApicId(u32::MAX)),
            ApicIdParts {
                package: 0,
                core: 1,
                thread: 0x7fff_ffff
            }
        );
        let full = ApicIdLayout {
            smt_bits: 32,
            core_bits: 40,
            source: LayoutSource::LeafB,
        };
        assert_eq!(
            full.split(ApicId(7)),
            ApicIdParts {
                package: 0,
                core: 0,
                thread: 7
            }
        );
    }

    #[test]
    fn single_layout_makes_every_id_a_package() {
        assert_eq!(
            ApicIdLayout::SINGLE.split(ApicId(5)),
            ApicIdParts {
                package: 5,
                core: 0,
                thread: 0
            }
        );
    }
}
