//! CPUID decoding from recorded leaf values of real and emulated CPUs.

use alloc::vec::Vec;

use super::*;

/// Recorded CPUID answers. Like Intel hardware, a basic leaf above the maximum answers with
/// the highest basic leaf's data, so a decoder that ignores the maximum misreads it.
struct Recorded {
    leaves: Vec<(u32, u32, CpuidResult)>,
}

impl Recorded {
    fn new(vendor: &[u8; 12], max_basic: u32) -> Recorded {
        let word =
            |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
        let leaf0 = CpuidResult {
            eax: max_basic,
            ebx: word(0),
            ecx: word(8),
            edx: word(4),
        };
        Recorded {
            leaves: alloc::vec![(0, 0, leaf0)],
        }
    }

    /// Records (or replaces) one answer.
    fn with(mut self, leaf: u32, subleaf: u32, [eax, ebx, ecx, edx]: [u32; 4]) -> Recorded {
        self.leaves.retain(|&(l, s, _)| (l, s) != (leaf, subleaf));
        self.leaves
            .push((leaf, subleaf, CpuidResult { eax, ebx, ecx, edx }));
        self
    }

    fn lookup(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        let found = self
            .leaves
            .iter()
            .find(|&&(l, s, _)| l == leaf && s == subleaf);
        found.map_or(CpuidResult::default(), |&(_, _, r)| r)
    }
}

impl CpuidSource for Recorded {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        let max_basic = self.lookup(0, 0).eax;
        if leaf > max_basic && leaf < 0x4000_0000 {
            return self.lookup(max_basic, subleaf);
        }
        self.lookup(leaf, subleaf)
    }
}

/// Sapphire Rapids style: leaf 0x1F with SMT, core and die levels; APIC id 5.
fn intel_with_leaf_1f() -> Recorded {
    Recorded::new(b"GenuineIntel", 0x20)
        .with(1, 0, [0x0008_06f8, 0x0580_0800, 0x7ffe_fbff, 0xbfeb_fbff])
        .with(4, 0, [0xfc00_4121, 0, 0, 0])
        .with(7, 0, [0, 0xf3bf_bfbf, 0, 0])
        .with(0xb, 0, [1, 2, 0x100, 5])
        .with(0xb, 1, [6, 0x40, 0x201, 5])
        .with(0xb, 2, [0, 0, 2, 5])
        .with(0x15, 0, [2, 176, 25_000_000, 0])
        .with(0x16, 0, [2200, 3800, 100, 0])
        .with(0x1f, 0, [1, 2, 0x100, 5])
        .with(0x1f, 1, [4, 16, 0x201, 5])
        .with(0x1f, 2, [6, 64, 0x502, 5])
        .with(0x1f, 3, [0, 0, 3, 5])
        .with(0x8000_0000, 0, [0x8000_0008, 0, 0, 0])
        .with(0x8000_0001, 0, [0, 0, 0x121, 0x2c10_0800])
        .with(0x8000_0007, 0, [0, 0, 0, 0x100])
        .with(0x8000_0008, 0, [0x302e, 0, 0, 0])
}

/// Skylake desktop style, 4 cores 8 threads: leaf 0xB only, max basic leaf 0x16, leaf 0x15
/// without a crystal frequency. APIC id 3.
fn intel_with_leaf_b() -> Recorded {
    Recorded::new(b"GenuineIntel", 0x16)
        .with(1, 0, [0x0005_06e3, 0x0310_0800, 0x7ffa_fbff, 0xbfeb_fbff])
        .with(0xb, 0, [1, 2, 0x100, 3])
        .with(0xb, 1, [4, 8, 0x201, 3])
        .with(0xb, 2, [0, 0, 2, 3])
        .with(0x15, 0, [2, 282, 0, 0])
        .with(0x16, 0, [3400, 4000, 100, 0])
        .with(0x8000_0000, 0, [0x8000_0008, 0, 0, 0])
        .with(0x8000_0001, 0, [0, 0, 0x121, 0x2c10_0800])
        .with(0x8000_0008, 0, [0x3027, 0, 0, 0])
}

/// Core 2 Quad style: no topology leaf, four cores and no SMT by leaves 1 and 4.
fn intel_legacy() -> Recorded {
    Recorded::new(b"GenuineIntel", 0xa)
        .with(1, 0, [0x0000_06fb, 0x0204_0800, 0x0000_e3bd, 0xbfeb_fbff])
        .with(4, 0, [0x0c00_0121, 0, 0, 0])
        .with(0xa, 0, [0x0730_0403, 0, 0, 0x603])
        .with(0x8000_0000, 0, [0x8000_0008, 0, 0, 0])
}

/// Ryzen 7 1700 style (Zen 1, 8 cores 16 threads): leaf 0xB in range but empty, so the
/// layout comes from 0x8000_0008 and 0x8000_001E. APIC id 0x0b.
fn amd_zen1() -> Recorded {
    Recorded::new(b"AuthenticAMD", 0xd)
        .with(1, 0, [0x0080_0f11, 0x0b10_0800, 0x7ed8_320b, 0x178b_fbff])
        .with(7, 0, [0, 0x209c_01a9, 0, 0])
        .with(0x8000_0000, 0, [0x8000_001f, 0, 0, 0])
        .with(0x8000_0001, 0, [0, 0, 0x35c2_33ff, 0x2fd3_fbff])
        .with(0x8000_0007, 0, [0, 0, 0, 0x6799])
        .with(0x8000_0008, 0, [0x3030, 0, 0x400f, 0])
        .with(0x8000_001e, 0, [0x0b, 0x0105, 0, 0])
}

/// Phenom II X4 style: no TOPOEXT, ApicIdCoreIdSize in 0x8000_0008.
fn amd_k10(ecx_80000008: u32) -> Recorded {
    Recorded::new(b"AuthenticAMD", 5)
        .with(1, 0, [0x0010_0f42, 0x0104_0800, 0x0080_2009, 0x178b_fbff])
        .with(0x8000_0000, 0, [0x8000_001b, 0, 0, 0])
        .with(0x8000_0001, 0, [0, 0, 0x37ff, 0xefd3_fbff])
        .with(0x8000_0008, 0, [0x3030, 0, ecx_80000008, 0])
}

/// QEMU 7.2 TCG `-cpu qemu64`: AMD vendor, max basic leaf 0xD, leaf 0xB generated from
/// `-smp`, no x2APIC, TSC-deadline or invariant TSC, hypervisor bit and TCG signature.
/// `smt_shift` and `package_shift` are leaf 0xB's level shifts; `logical` is leaf 1's count.
fn qemu64(apic_id: u32, smt_shift: u32, package_shift: u32, logical: u32) -> Recorded {
    let htt = if logical > 1 { 1 << 28 } else { 0 };
    let tcg = u32::from_le_bytes(*b"TCGT");
    Recorded::new(b"AuthenticAMD", 0xd)
        .with(
            1,
            0,
            [
                0x0006_0fb1,
                apic_id << 24 | logical << 16 | 0x800,
                0x8000_2001,
                0x078b_fbfd | htt,
            ],
        )
        .with(0xb, 0, [smt_shift, 1 << smt_shift, 0x100, apic_id])
        .with(0xb, 1, [package_shift, logical, 0x201, apic_id])
        .with(0xb, 2, [0, 0, 2, apic_id])
        .with(
            0x4000_0000,
            0,
            [
                0x4000_0001,
                tcg,
                u32::from_le_bytes(*b"CGTC"),
                u32::from_le_bytes(*b"GTCG"),
            ],
        )
        .with(0x8000_0000, 0, [0x8000_000a, 0, 0, 0])
        .with(0x8000_0001, 0, [0, 0, 0x65, 0x2193_fbfd])
        .with(0x8000_0008, 0, [0x3028, 0, 0, 0])
}

#[test]
fn intel_prefers_leaf_1f() {
    let cpu = CpuInfo::read(&intel_with_leaf_1f());
    assert_eq!(cpu.vendor, Vendor::Intel);
    assert_eq!(
        (cpu.max_basic_leaf, cpu.max_extended_leaf),
        (0x20, Some(0x8000_0008))
    );
    assert_eq!((cpu.family, cpu.model, cpu.stepping), (6, 0x8f, 8));
    assert_eq!(cpu.initial_apic_id, ApicId(5));
    assert_eq!(
        cpu.layout,
        ApicIdLayout {
            smt_bits: 1,
            core_bits: 5,
            source: LayoutSource::Leaf1F
        }
    );
    assert_eq!(
        cpu.layout.split(ApicId(5)),
        ApicIdParts {
            package: 0,
            core: 2,
            thread: 1
        }
    );
    assert_eq!(
        cpu.features,
        CpuFeatures {
            x2apic: true,
            tsc_deadline: true,
            invariant_tsc: true,
            pdpe1gb: true,
            nx: true,
            syscall: true,
            fsgsbase: true,
            smep: true,
            smap: true,
            pcid: true,
            xsave: true,
            hypervisor: false,
        }
    );
    assert_eq!(
        cpu.clock,
        ClockInfo {
            tsc_hz: Some(2_200_000_000),
            crystal_hz: Some(25_000_000),
            base_mhz: Some(2200),
        }
    );
    assert_eq!(
        (cpu.physical_address_bits, cpu.linear_address_bits),
        (46, 48)
    );
    assert_eq!(cpu.hypervisor, None);
}

#[test]
fn intel_with_leaf_b_ignores_leaves_above_the_maximum() {
    let cpu = CpuInfo::read(&intel_with_leaf_b());
    assert_eq!(
        cpu.layout,
        ApicIdLayout {
            smt_bits: 1,
            core_bits: 3,
            source: LayoutSource::LeafB
        }
    );
    assert_eq!(cpu.initial_apic_id, ApicId(3));
    assert_eq!((cpu.family, cpu.model), (6, 0x5e));
    // Leaf 0x15 has no crystal: no TSC rate, only the base frequency.
    assert_eq!(
        cpu.clock,
        ClockInfo {
            tsc_hz: None,
            crystal_hz: None,
            base_mhz: Some(3400)
        }
    );
    assert!(
        !cpu.features.invariant_tsc,
        "leaf 0x8000_0007 was not recorded"
    );
    assert!(!cpu.features.smep, "leaf 7 was not recorded");
    assert_eq!(
        (cpu.physical_address_bits, cpu.linear_address_bits),
        (39, 48)
    );
}

#[test]
fn intel_legacy_layout_from_leaf_4() {
    let cpu = CpuInfo::read(&intel_legacy());
    assert_eq!(
        cpu.layout,
        ApicIdLayout {
            smt_bits: 0,
            core_bits: 2,
            source: LayoutSource::IntelLeaf4
        }
    );
    assert_eq!(cpu.initial_apic_id, ApicId(2));
    assert_eq!(
        cpu.clock,
        ClockInfo::default(),
        "leaves 0x15/0x16 are above the maximum"
    );
    // Leaf 0x8000_0008 is in range but reads as zero: the defaults apply.
    assert_eq!(
        (cpu.physical_address_bits, cpu.linear_address_bits),
        (36, 48)
    );
}

#[test]
fn amd_zen1_legacy_layout_with_topoext() {
    let cpu = CpuInfo::read(&amd_zen1());
    assert_eq!(cpu.vendor, Vendor::Amd);
    assert_eq!((cpu.family, cpu.model, cpu.stepping), (0x17, 1, 1));
    assert_eq!(
        cpu.layout,
        ApicIdLayout {
            smt_bits: 1,
            core_bits: 3,
            source: LayoutSource::AmdLeaf80000008
        }
    );
    assert_eq!(cpu.initial_apic_id, ApicId(0x0b));
    assert_eq!(
        cpu.layout.split(ApicId(0x0b)),
        ApicIdParts {
            package: 0,
            core: 5,
            thread: 1
        }
    );
    let f = cpu.features;
    assert!(!f.x2apic && !f.tsc_deadline && !f.pcid);
    assert!(f.invariant_tsc && f.pdpe1gb && f.nx && f.syscall && f.xsave);
    assert!(f.fsgsbase && f.smep && f.smap);
}

#[test]
fn amd_k10_legacy_layout() {
    let sized = CpuInfo::read(&amd_k10(0x3003)).layout;
    assert_eq!(
        sized,
        ApicIdLayout {
            smt_bits: 0,
            core_bits: 3,
            source: LayoutSource::AmdLeaf80000008
        }
    );
    // ApicIdCoreIdSize 0: the width comes from NC + 1 = 4 cores.
    let from_nc = CpuInfo::read(&amd_k10(0x0003)).layout;
    assert_eq!(
        from_nc,
        ApicIdLayout {
            smt_bits: 0,
            core_bits: 2,
            source: LayoutSource::AmdLeaf80000008
        }
    );
}

#[test]
fn qemu64_four_sockets() {
    let cpu = CpuInfo::read(&qemu64(0, 0, 0, 1));
    assert_eq!(cpu.vendor, Vendor::Amd);
    assert_eq!((cpu.family, cpu.model, cpu.stepping), (0xf, 0x6b, 1));
    assert_eq!(
        cpu.layout,
        ApicIdLayout {
            smt_bits: 0,
            core_bits: 0,
            source: LayoutSource::LeafB
        }
    );
    assert_eq!(cpu.layout.split(ApicId(3)).package, 3);
    let f = cpu.features;
    assert!(!f.x2apic && !f.tsc_deadline && !f.invariant_tsc && !f.pdpe1gb);
    assert!(f.nx && f.syscall && f.hypervisor);
    assert_eq!(cpu.hypervisor.map(|h| h.signature), Some(*b"TCGTCGTCGTCG"));
    assert_eq!(cpu.physical_address_bits, 40);
    assert_eq!(cpu.clock, ClockInfo::default());
}

#[test]
fn qemu64_two_cores_two_threads() {
    let cpu = CpuInfo::read(&qemu64(3, 1, 2, 4));
    assert_eq!(
        cpu.layout,
        ApicIdLayout {
            smt_bits: 1,
            core_bits: 1,
            source: LayoutSource::LeafB
        }
    );
    assert_eq!(cpu.initial_apic_id, ApicId(3));
    assert_eq!(
        cpu.layout.split(ApicId(3)),
        ApicIdParts {
            package: 0,
            core: 1,
            thread: 1
        }
    );
}

#[test]
fn inconsistent_leaf_b_falls_back_to_legacy() {
    // Core level shift below the SMT level shift: leaf 0xB is not trusted.
    let cpu = CpuInfo::read(&qemu64(0, 2, 1, 4).with(0x8000_0008, 0, [0x3028, 0, 0x1003, 0]));
    assert_eq!(cpu.layout.source, LayoutSource::AmdLeaf80000008);
    assert_eq!(cpu.layout.package_shift(), 1);
}

#[test]
fn cpu_without_htt_is_one_thread_per_package() {
    let cpu =
        CpuInfo::read(&Recorded::new(b"GenuineIntel", 1).with(1, 0, [0x6f6, 0x0700_0800, 0, 0]));
    assert_eq!(cpu.layout, ApicIdLayout::SINGLE);
    assert_eq!(cpu.initial_apic_id, ApicId(7));
    assert_eq!(cpu.max_extended_leaf, None);
}

#[test]
fn unknown_vendor_uses_leaf_1_count() {
    let cpu = CpuInfo::read(&Recorded::new(b"  Shanghai  ", 1).with(
        1,
        0,
        [0x6f6, 0x0004_0800, 0, 1 << 28],
    ));
    assert_eq!(cpu.vendor, Vendor::Other(*b"  Shanghai  "));
    assert_eq!(
        cpu.layout,
        ApicIdLayout {
            smt_bits: 0,
            core_bits: 2,
            source: LayoutSource::Leaf1
        }
    );
}

#[test]
fn display_lines() {
    let cpu = CpuInfo::read(&qemu64(0, 0, 0, 1));
    assert_eq!(
        alloc::format!("{cpu}"),
        "cpu: AuthenticAMD family 0xf model 0x6b stepping 1 apic 0x0 [nx syscall hypervisor] \
         apic-id layout smt=0 core=0 (LeafB) under TCGTCGTCGTCG"
    );
}
