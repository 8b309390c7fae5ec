//! A vCPU's x87/MMX/SSE/AVX state as XSAVE (or, on a machine without it, FXSAVE) lays it
//! out, the images the hypervisor makes itself (the architectural initial state of a new
//! vCPU, a guest-given FXSAVE image made safe to load), and the rules for the XCR0 values
//! a guest may set with `xsetbv` (Xen's `valid_xcr0`).
//!
//! The hypervisor is soft-float and never uses these registers; it saves each vCPU's image
//! when the vCPU leaves a CPU and loads it when it comes back (`sched`, through
//! `arch::fpu`), so no domain sees or changes another's. Pure: no instruction runs here.
//!
//! Which state components guests get ([`OFFERED`]): x87, SSE and AVX, and AVX-512's three
//! components when the machine has all of them. Not MPX (deprecated, and Xen offers it to
//! HVM guests only), not PKRU (protection keys act on user pages, and a PV guest's kernel
//! runs on user pages in ring 3 without control of CR4.PKE: Xen offers PKU to HVM guests
//! only), not AMX (8 KiB of tile state and XFD, which Xen 4.17 does not offer either), and
//! no supervisor state (XSAVES, XSS: hypervisor-only in Xen). The standard (non-compacted)
//! XSAVE layout puts each offered component at a fixed offset, so an area holding all of
//! them is at most [`MAX_AREA_BYTES`].

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;

/// XCR0 / XSTATE_BV bits (Intel SDM vol. 1, 13.1).
pub const XSTATE_X87: u64 = 1 << 0;
pub const XSTATE_SSE: u64 = 1 << 1;
pub const XSTATE_YMM: u64 = 1 << 2;
pub const XSTATE_BNDREGS: u64 = 1 << 3;
pub const XSTATE_BNDCSR: u64 = 1 << 4;
pub const XSTATE_OPMASK: u64 = 1 << 5;
pub const XSTATE_ZMM_HI256: u64 = 1 << 6;
pub const XSTATE_HI16_ZMM: u64 = 1 << 7;
pub const XSTATE_PKRU: u64 = 1 << 9;
pub const XSTATE_TILECFG: u64 = 1 << 17;
pub const XSTATE_TILEDATA: u64 = 1 << 18;
/// AVX-512's three components, which come and go together.
pub const XSTATE_AVX512: u64 = XSTATE_OPMASK | XSTATE_ZMM_HI256 | XSTATE_HI16_ZMM;
/// What XCR0 holds for a vCPU that never ran `xsetbv` (Xen's initial `xcr0`).
pub const XSTATE_FP_SSE: u64 = XSTATE_X87 | XSTATE_SSE;
/// The components the hypervisor offers guests where the machine has them.
pub const OFFERED: u64 = XSTATE_FP_SSE | XSTATE_YMM | XSTATE_AVX512;

/// Bytes of the legacy (FXSAVE) region, and of the XSAVE header after it.
pub const LEGACY_BYTES: usize = 512;
pub const HEADER_BYTES: usize = 64;
/// An XSAVE area (standard form) holding every component of [`OFFERED`]: Hi16_ZMM, the
/// last, ends at 1664 + 1024 (Intel SDM vol. 1, table 13-1, CPUID leaf 0xD).
pub const MAX_AREA_BYTES: usize = 2688;
/// Alignment XSAVE/XRSTOR need (FXSAVE needs 16).
pub const AREA_ALIGN: usize = 64;

/// Byte offsets in the legacy region (Intel SDM vol. 1, table 10-2, 64-bit format) and the
/// header.
const FCW: usize = 0;
const MXCSR: usize = 24;
const XSTATE_BV: usize = LEGACY_BYTES;

/// x87 control word after FNINIT: every exception masked, 64-bit precision, round to nearest.
pub const INITIAL_FCW: u16 = 0x037f;
/// MXCSR at reset: every SIMD exception masked, round to nearest.
pub const INITIAL_MXCSR: u32 = 0x1f80;
/// The MXCSR bits a CPU that reports no mask supports (Intel SDM vol. 1, 11.6.6).
pub const DEFAULT_MXCSR_MASK: u32 = 0xffbf;

/// The XCR0 a guest may use at most on a machine whose XSAVE supports `host` (CPUID
/// leaf 0xD): [`OFFERED`] as far as the machine has it, AVX only with SSE, AVX-512 only
/// whole and with AVX.
pub fn guest_xcr0_max(host: u64) -> u64 {
    let mut max = host & OFFERED;
    if max & XSTATE_SSE == 0 {
        max &= !XSTATE_YMM;
    }
    if max & XSTATE_YMM == 0 || max & XSTATE_AVX512 != XSTATE_AVX512 {
        max &= !XSTATE_AVX512;
    }
    max | XSTATE_X87
}

/// Whether a guest may load `xcr0` with `xsetbv` when it may use at most `max`: only
/// components offered, and only combinations the processor accepts (Xen's `valid_xcr0`:
/// x87 always; AVX needs SSE; AVX-512's three together and with AVX; MPX's two together;
/// AMX's two together), so that the `xsetbv` the hypervisor then runs cannot fault.
pub fn valid_xcr0(xcr0: u64, max: u64) -> bool {
    let pair = |a: u64, b: u64| (xcr0 & a == 0) == (xcr0 & b == 0);
    xcr0 & !max == 0
        && xcr0 & XSTATE_X87 != 0
        && (xcr0 & XSTATE_YMM == 0 || xcr0 & XSTATE_SSE != 0)
        && (xcr0 & XSTATE_AVX512 == 0 || (xcr0 & XSTATE_AVX512 == XSTATE_AVX512 && xcr0 & XSTATE_YMM != 0))
        && pair(XSTATE_BNDREGS, XSTATE_BNDCSR)
        && pair(XSTATE_TILECFG, XSTATE_TILEDATA)
}

/// A vCPU's saved registers: an XSAVE area (standard form) of the size the machine
/// reports for the offered components, or a 512-byte FXSAVE image where there is no XSAVE.
/// Only the hypervisor writes it: XSAVE/FXSAVE, or the constructors here, whose images
/// XRSTOR/FXRSTOR always accept (a header with no unknown bits, a supported MXCSR).
///
/// The bytes live in a heap buffer 63 bytes longer than the area, which starts at the
/// buffer's first 64-byte boundary (a boxed slice never moves, so the offset holds).
pub struct FpuArea {
    buffer: Box<[u8]>,
    start: usize,
    len: usize,
}

impl core::fmt::Debug for FpuArea {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "FpuArea {{ bytes: {}, fcw: {:#x}, mxcsr: {:#x}", self.len(), self.fcw(), self.mxcsr())?;
        if self.len() > LEGACY_BYTES {
            write!(f, ", xstate_bv: {:#x}", self.xstate_bv())?;
        }
        write!(f, " }}")
    }
}

impl FpuArea {
    /// An area of `bytes` (rounded up to 64; at least the legacy region) in the initial
    /// state; `None` when the heap refuses it.
    pub fn try_new(bytes: usize) -> Option<FpuArea> {
        let len = bytes.max(LEGACY_BYTES).next_multiple_of(AREA_ALIGN);
        let mut buffer = Vec::new();
        buffer.try_reserve_exact(len + AREA_ALIGN - 1).ok()?;
        buffer.resize(len + AREA_ALIGN - 1, 0u8);
        let buffer = buffer.into_boxed_slice();
        let start = buffer.as_ptr().align_offset(AREA_ALIGN);
        if start >= AREA_ALIGN {
            return None;
        }
        let mut area = FpuArea { buffer, start, len };
        area.reset();
        Some(area)
    }

    /// Puts the area in the state of a new vCPU: as after FNINIT, with MXCSR at its reset
    /// value and every x87, MMX, XMM and wider register zero (an XSAVE header with no
    /// component in use: XRSTOR gives each its initial state; MXCSR it loads from the
    /// legacy region all the same). Xen gives new vCPUs the same.
    pub fn reset(&mut self) {
        let bytes = self.bytes_mut();
        bytes.fill(0);
        bytes[FCW..FCW + 2].copy_from_slice(&INITIAL_FCW.to_le_bytes());
        bytes[MXCSR..MXCSR + 4].copy_from_slice(&INITIAL_MXCSR.to_le_bytes());
    }

    /// Loads a guest's FXSAVE image (`vcpu_guest_context.fpu_ctxt` with `VGCF_I387_VALID`),
    /// made safe to restore: MXCSR bits the CPU does not support (`mxcsr_mask`, from its
    /// own FXSAVE; 0 means [`DEFAULT_MXCSR_MASK`]) would make the restore fault in the
    /// hypervisor, so they are cleared. In an XSAVE area the header then says x87 and SSE
    /// are in use and every wider component is in its initial state.
    pub fn load_fx_image(&mut self, image: &[u8; LEGACY_BYTES], mxcsr_mask: u32) {
        let mask = if mxcsr_mask == 0 { DEFAULT_MXCSR_MASK } else { mxcsr_mask };
        let xsave = self.len() > LEGACY_BYTES;
        self.reset();
        let bytes = self.bytes_mut();
        bytes[..LEGACY_BYTES].copy_from_slice(image);
        let mxcsr = u32::from_le_bytes([image[MXCSR], image[MXCSR + 1], image[MXCSR + 2], image[MXCSR + 3]]) & mask;
        bytes[MXCSR..MXCSR + 4].copy_from_slice(&mxcsr.to_le_bytes());
        if xsave {
            bytes[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&XSTATE_FP_SSE.to_le_bytes());
        }
    }

    /// The area's bytes (64-byte aligned, a whole number of 64-byte blocks).
    pub fn bytes(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fcw(&self) -> u16 {
        let b = self.bytes();
        u16::from_le_bytes([b[FCW], b[FCW + 1]])
    }

    pub fn mxcsr(&self) -> u32 {
        let b = self.bytes();
        u32::from_le_bytes([b[MXCSR], b[MXCSR + 1], b[MXCSR + 2], b[MXCSR + 3]])
    }

    /// XSTATE_BV of an XSAVE area (0 for an FXSAVE image).
    pub fn xstate_bv(&self) -> u64 {
        let b = self.bytes();
        if b.len() < XSTATE_BV + 8 {
            return 0;
        }
        u64::from_le_bytes(b[XSTATE_BV..XSTATE_BV + 8].try_into().unwrap_or([0; 8]))
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_state_is_fninit_with_mxcsr_at_reset() {
        for size in [512, 832, MAX_AREA_BYTES] {
            let area = FpuArea::try_new(size).unwrap();
            assert_eq!(area.len(), size);
            assert_eq!(area.bytes().as_ptr() as usize % AREA_ALIGN, 0, "64-byte aligned");
            assert_eq!(area.fcw(), 0x037f);
            assert_eq!(area.mxcsr(), 0x1f80);
            assert_eq!(area.xstate_bv(), 0, "no component in use: XRSTOR gives initial state");
            let others = area.bytes().iter().enumerate().filter(|&(i, _)| !(0..2).contains(&i) && !(24..28).contains(&i));
            assert!(others.into_iter().all(|(_, &b)| b == 0), "tags empty, registers zero, header clear");
        }
        assert_eq!(FpuArea::try_new(100).unwrap().len(), 512, "never below the legacy region");
        assert_eq!(FpuArea::try_new(833).unwrap().len(), 896, "whole 64-byte blocks");
    }

    #[test]
    fn a_guest_image_has_unsupported_mxcsr_bits_cleared_and_a_clean_header() {
        let mut image = [0x5a_u8; 512];
        image[24..28].copy_from_slice(&0xffff_ffff_u32.to_le_bytes());
        let mut fx = FpuArea::try_new(512).unwrap();
        fx.load_fx_image(&image, 0);
        assert_eq!(fx.mxcsr(), DEFAULT_MXCSR_MASK);
        fx.load_fx_image(&image, 0x2ffff);
        assert_eq!(fx.mxcsr(), 0x2ffff, "DAZ where supported");
        assert_eq!((fx.bytes()[0], fx.bytes()[511]), (0x5a, 0x5a), "the rest is the guest's");
        let mut xsave = FpuArea::try_new(832).unwrap();
        xsave.bytes_mut()[512..].fill(0xff);
        xsave.load_fx_image(&image, 0);
        assert_eq!(xsave.xstate_bv(), XSTATE_FP_SSE, "x87 and SSE from the image");
        assert!(xsave.bytes()[520..].iter().all(|&b| b == 0), "rest of the header and AVX state clear");
    }

    #[test]
    fn the_guest_maximum_follows_the_machine_and_keeps_dependencies() {
        assert_eq!(guest_xcr0_max(0x3), 0x3);
        assert_eq!(guest_xcr0_max(0x7), 0x7);
        // MPX, PKRU and AMX are never offered.
        assert_eq!(guest_xcr0_max(0x7 | XSTATE_BNDREGS | XSTATE_BNDCSR | XSTATE_PKRU | XSTATE_TILECFG | XSTATE_TILEDATA), 0x7);
        assert_eq!(guest_xcr0_max(0xe7), 0xe7, "AVX-512 whole");
        assert_eq!(guest_xcr0_max(0x67), 0x7, "AVX-512 only whole");
        assert_eq!(guest_xcr0_max(0xe3), 0x3, "AVX-512 only with AVX");
        assert_eq!(guest_xcr0_max(0x5), 0x1, "AVX only with SSE");
        assert_eq!(guest_xcr0_max(0), XSTATE_X87);
    }

    #[test]
    fn xsetbv_values_follow_xens_rules() {
        let max = 0xe7;
        for ok in [0x1, 0x3, 0x7, 0xe7] {
            assert!(valid_xcr0(ok, max), "{ok:#x}");
        }
        for bad in [0x0, 0x2, 0x6, 0x5, 0x27, 0x67, 0xe3, 0x1e7, 0x8 | 0x7, 0x18 | 0x7, 1 << 63 | 7] {
            assert!(!valid_xcr0(bad, max), "{bad:#x}");
        }
        assert!(!valid_xcr0(0x7, 0x3), "beyond what is offered");
        assert!(!valid_xcr0(0x1 | XSTATE_BNDREGS, 0x1 | XSTATE_BNDREGS | XSTATE_BNDCSR), "MPX halves apart");
        assert!(!valid_xcr0(0x7 | XSTATE_TILEDATA, u64::MAX), "AMX halves apart");
    }
}
