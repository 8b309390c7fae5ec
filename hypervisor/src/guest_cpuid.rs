//! CPUID as a PV guest sees it through the hypervisor (the forced-emulation prefix): the
//! machine's, with what a PV guest must not use hidden, and the XSAVE leaves made to agree
//! with the state components the hypervisor switches for it.
//!
//! - Leaf 1: no VMX, MONITOR, TSC-deadline or x2APIC (the guest has no APIC); the
//!   hypervisor bit set. XSAVE as the hypervisor uses it; OSXSAVE as Xen reports it to PV
//!   guests (`osxsave`, decided by the caller: the guest's virtual CR4.OSXSAVE, or for the
//!   guest kernel the hardware's); without XSAVE no AVX, FMA or F16C either.
//! - Leaf 7: no FSGSBASE (the hypervisor keeps CR4.FSGSBASE off and the guest's virtual
//!   CR4 cannot set it, so `rdfsbase` and friends raise #UD: advertising them would be a
//!   lie; Xen offers them only where it can turn them on for the guest), no MPX, PKU/OSPKE,
//!   CET (state components or modes a PV guest does not get); the AVX-512 family only where its components are offered, AVX2 and the other
//!   VEX-only extensions only with AVX; no AMX.
//! - Leaf 0xD: subleaf 0 names the offered components and the area sizes for the guest's
//!   XCR0 and for all of them; subleaf 1 keeps XSAVEOPT, XSAVEC and XGETBV1 only (XSAVES
//!   and XFD manage supervisor state and are the hypervisor's); a component not offered
//!   reads as zeros.
//! - Leaf 0x80000001: no DBEXT (AMD's breakpoint address masks, which XSA-444 turned into
//!   a way to breakpoint the hypervisor; guests get no access to the mask MSRs).
//!
//! Pure: the caller supplies the machine's answer and what it decided.

use crate::fpu::{XSTATE_AVX512, XSTATE_YMM};

/// CPUID.1:ECX bits.
const L1_ECX_MONITOR: u32 = 1 << 3;
const L1_ECX_VMX: u32 = 1 << 5;
const L1_ECX_FMA: u32 = 1 << 12;
const L1_ECX_X2APIC: u32 = 1 << 21;
const L1_ECX_TSC_DEADLINE: u32 = 1 << 24;
pub const L1_ECX_XSAVE: u32 = 1 << 26;
pub const L1_ECX_OSXSAVE: u32 = 1 << 27;
pub const L1_ECX_AVX: u32 = 1 << 28;
const L1_ECX_F16C: u32 = 1 << 29;
const L1_ECX_HYPERVISOR: u32 = 1 << 31;
const L1_ECX_HIDDEN: u32 = L1_ECX_MONITOR | L1_ECX_VMX | L1_ECX_X2APIC | L1_ECX_TSC_DEADLINE;
const L1_ECX_AVX_FAMILY: u32 = L1_ECX_FMA | L1_ECX_AVX | L1_ECX_F16C;

/// CPUID.(7,0) bits.
const L7_EBX_FSGSBASE: u32 = 1 << 0;
pub const L7_EBX_AVX2: u32 = 1 << 5;
const L7_EBX_MPX: u32 = 1 << 14;
const L7_EBX_AVX512: u32 = (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
const L7_ECX_AVX512: u32 = (1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14);
const L7_ECX_VEX_ONLY: u32 = (1 << 9) | (1 << 10);
const L7_ECX_HIDDEN: u32 = (1 << 3) | (1 << 4) | (1 << 7);
const L7_EDX_AVX512: u32 = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23);
const L7_EDX_HIDDEN: u32 = (1 << 20) | (1 << 22) | (1 << 24) | (1 << 25);
/// CPUID.(7,1):EAX: AVX-VNNI, AVX512-BF16.
const L71_EAX_AVX_VNNI: u32 = 1 << 4;
const L71_EAX_AVX512_BF16: u32 = 1 << 5;
/// CPUID.(0xD,1):EAX: XSAVEOPT, XSAVEC, XGETBV1.
const XSAVE_SUBLEAF1_EAX_KEPT: u32 = 0b111;
/// CPUID.0x80000001:ECX.DBEXT.
const EXT1_ECX_DBEXT: u32 = 1 << 26;

/// What the hypervisor decided for the guest asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// State is switched with XSAVE (so guests may use it).
    pub xsave: bool,
    /// The components guests may enable.
    pub xcr0_max: u64,
    /// XSAVE area bytes for the guest's current XCR0, and for all of `xcr0_max`.
    pub size_current: u32,
    pub size_max: u32,
    /// Report OSXSAVE in leaf 1.
    pub osxsave: bool,
}

/// The guest's view of leaf `leaf`, subleaf `subleaf`, from the machine's `raw`
/// (eax, ebx, ecx, edx).
pub fn filter(leaf: u32, subleaf: u32, raw: [u32; 4], view: &View) -> [u32; 4] {
    let [mut a, mut b, mut c, mut d] = raw;
    let ymm = view.xsave && view.xcr0_max & XSTATE_YMM != 0;
    let avx512 = view.xsave && view.xcr0_max & XSTATE_AVX512 == XSTATE_AVX512;
    match (leaf, subleaf) {
        (1, _) => {
            c = (c & !(L1_ECX_HIDDEN | L1_ECX_OSXSAVE)) | L1_ECX_HYPERVISOR;
            if !view.xsave {
                c &= !L1_ECX_XSAVE;
            }
            if !ymm {
                c &= !L1_ECX_AVX_FAMILY;
            }
            if view.xsave && view.osxsave {
                c |= L1_ECX_OSXSAVE;
            }
        }
        (7, 0) => {
            b &= !(L7_EBX_MPX | L7_EBX_FSGSBASE);
            c &= !L7_ECX_HIDDEN;
            d &= !L7_EDX_HIDDEN;
            if !ymm {
                b &= !L7_EBX_AVX2;
                c &= !L7_ECX_VEX_ONLY;
            }
            if !avx512 {
                b &= !L7_EBX_AVX512;
                c &= !L7_ECX_AVX512;
                d &= !L7_EDX_AVX512;
            }
        }
        (7, 1) => {
            if !ymm {
                a &= !L71_EAX_AVX_VNNI;
            }
            if !avx512 {
                a &= !L71_EAX_AVX512_BF16;
            }
        }
        (0xd, _) if !view.xsave => return [0; 4],
        (0xd, 0) => {
            a = view.xcr0_max as u32;
            d = (view.xcr0_max >> 32) as u32;
            b = view.size_current;
            c = view.size_max;
        }
        (0xd, 1) => {
            a &= XSAVE_SUBLEAF1_EAX_KEPT;
            c = 0;
            d = 0;
        }
        (0xd, component) if component >= 64 || view.xcr0_max & (1 << component) == 0 => return [0; 4],
        (0x8000_0001, _) => c &= !EXT1_ECX_DBEXT,
        _ => {}
    }
    [a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVX: View = View { xsave: true, xcr0_max: 0x7, size_current: 576, size_max: 832, osxsave: true };

    #[test]
    fn leaf1_reports_xsave_and_osxsave_as_decided() {
        let raw = [0, 0, u32::MAX, 0];
        let [_, _, c, _] = filter(1, 0, raw, &AVX);
        assert_eq!(c & (L1_ECX_XSAVE | L1_ECX_OSXSAVE | L1_ECX_AVX), L1_ECX_XSAVE | L1_ECX_OSXSAVE | L1_ECX_AVX);
        assert_eq!(c & L1_ECX_HIDDEN, 0);
        assert_ne!(c & L1_ECX_HYPERVISOR, 0);
        let [_, _, c, _] = filter(1, 0, raw, &View { osxsave: false, ..AVX });
        assert_eq!(c & L1_ECX_OSXSAVE, 0, "virtual CR4.OSXSAVE clear");
        let fx = View { xsave: false, xcr0_max: 3, size_current: 512, size_max: 512, osxsave: true };
        let [_, _, c, _] = filter(1, 0, raw, &fx);
        assert_eq!(c & (L1_ECX_XSAVE | L1_ECX_OSXSAVE | L1_ECX_AVX_FAMILY), 0, "no XSAVE: no AVX");
        assert_eq!(filter(0xd, 0, [1, 2, 3, 4], &fx), [0; 4]);
    }

    #[test]
    fn leaf_0xd_agrees_with_the_offered_components() {
        assert_eq!(filter(0xd, 0, [0x2ff, 2688, 2696, 0], &AVX), [0x7, 576, 832, 0]);
        assert_eq!(filter(0xd, 1, [0xf, 1, 2, 3], &AVX), [0x7, 1, 0, 0], "no XSAVES or XFD");
        assert_eq!(filter(0xd, 2, [256, 576, 0, 0], &AVX), [256, 576, 0, 0]);
        assert_eq!(filter(0xd, 5, [64, 1088, 0, 0], &AVX), [0; 4], "AVX-512 not offered");
        assert_eq!(filter(0xd, 9, [8, 2688, 0, 0], &AVX), [0; 4], "PKRU never");
        assert_eq!(filter(0xd, 64, [1, 1, 1, 1], &View { xcr0_max: u64::MAX, ..AVX }), [0; 4]);
    }

    #[test]
    fn leaf7_hides_what_pv_guests_do_not_get() {
        let [_, b, c, d] = filter(7, 0, [0, u32::MAX, u32::MAX, u32::MAX], &AVX);
        assert_eq!(b & (L7_EBX_MPX | L7_EBX_AVX512 | L7_EBX_FSGSBASE), 0);
        assert_ne!(b & L7_EBX_AVX2, 0);
        assert_eq!(c & (L7_ECX_HIDDEN | L7_ECX_AVX512), 0);
        assert_eq!(d & (L7_EDX_HIDDEN | L7_EDX_AVX512), 0);
        let wide = View { xcr0_max: 0xe7, ..AVX };
        let [_, b, _, _] = filter(7, 0, [0, u32::MAX, 0, 0], &wide);
        assert_eq!(b & L7_EBX_AVX512, L7_EBX_AVX512, "AVX-512 where its components are offered");
        let [a, ..] = filter(7, 1, [u32::MAX, 0, 0, 0], &AVX);
        assert_eq!(a & (L71_EAX_AVX_VNNI | L71_EAX_AVX512_BF16), L71_EAX_AVX_VNNI);
    }

    #[test]
    fn dbext_is_never_offered() {
        assert_eq!(filter(0x8000_0001, 0, [0, 0, u32::MAX, 0], &AVX)[2] & EXT1_ECX_DBEXT, 0);
    }
}
