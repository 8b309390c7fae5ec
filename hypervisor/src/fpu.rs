//! A vCPU's x87/MMX/SSE state as the FXSAVE instruction lays it out (512 bytes, 16-byte
//! aligned), and the two images the hypervisor makes itself: the architectural initial
//! state of a new vCPU, and a guest-given image made safe to load.
//!
//! The hypervisor is soft-float and never uses these registers; it saves each vCPU's image
//! when the vCPU leaves a CPU and loads it when it comes back (`sched`, through
//! `arch::fpu`), so no domain sees or changes another's. Pure: no instruction runs here.

/// Byte offsets in an FXSAVE image (Intel SDM vol. 1, table 10-2, 64-bit format).
const FCW: usize = 0;
const MXCSR: usize = 24;

/// x87 control word after FNINIT: every exception masked, 64-bit precision, round to nearest.
pub const INITIAL_FCW: u16 = 0x037f;
/// MXCSR at reset: every SIMD exception masked, round to nearest.
pub const INITIAL_MXCSR: u32 = 0x1f80;
/// The MXCSR bits a CPU that reports no mask supports (Intel SDM vol. 1, 11.6.6).
pub const DEFAULT_MXCSR_MASK: u32 = 0xffbf;

/// An FXSAVE/FXRSTOR image.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct FxArea(pub [u8; 512]);

impl core::fmt::Debug for FxArea {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "FxArea {{ fcw: {:#x}, mxcsr: {:#x} }}", self.fcw(), self.mxcsr())
    }
}

impl FxArea {
    /// The state of a new vCPU: as after FNINIT, with MXCSR at its reset value and every
    /// x87, MMX and XMM register zero (Xen gives new vCPUs the same).
    pub const fn initial() -> FxArea {
        let mut bytes = [0u8; 512];
        let fcw = INITIAL_FCW.to_le_bytes();
        bytes[FCW] = fcw[0];
        bytes[FCW + 1] = fcw[1];
        let mxcsr = INITIAL_MXCSR.to_le_bytes();
        bytes[MXCSR] = mxcsr[0];
        bytes[MXCSR + 1] = mxcsr[1];
        bytes[MXCSR + 2] = mxcsr[2];
        bytes[MXCSR + 3] = mxcsr[3];
        FxArea(bytes)
    }

    /// A guest's image (`vcpu_guest_context.fpu_ctxt` with `VGCF_I387_VALID`), made safe
    /// for FXRSTOR: MXCSR bits the CPU does not support (`mxcsr_mask`, from its own FXSAVE;
    /// 0 means [`DEFAULT_MXCSR_MASK`]) would make FXRSTOR fault in the hypervisor, so they
    /// are cleared. Everything else FXRSTOR accepts as it is.
    pub fn from_guest(image: &[u8; 512], mxcsr_mask: u32) -> FxArea {
        let mask = if mxcsr_mask == 0 { DEFAULT_MXCSR_MASK } else { mxcsr_mask };
        let mut area = FxArea(*image);
        let mxcsr = area.mxcsr() & mask;
        area.0[MXCSR..MXCSR + 4].copy_from_slice(&mxcsr.to_le_bytes());
        area
    }

    pub fn fcw(&self) -> u16 {
        u16::from_le_bytes([self.0[FCW], self.0[FCW + 1]])
    }

    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes([self.0[MXCSR], self.0[MXCSR + 1], self.0[MXCSR + 2], self.0[MXCSR + 3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_state_is_fninit_with_mxcsr_at_reset() {
        let area = FxArea::initial();
        assert_eq!(area.fcw(), 0x037f);
        assert_eq!(area.mxcsr(), 0x1f80);
        let others = area.0.iter().enumerate().filter(|&(i, _)| !(0..2).contains(&i) && !(24..28).contains(&i));
        assert!(others.into_iter().all(|(_, &b)| b == 0), "tags empty, registers zero");
        assert_eq!(core::mem::align_of::<FxArea>(), 16);
        assert_eq!(core::mem::size_of::<FxArea>(), 512);
    }

    #[test]
    fn unsupported_mxcsr_bits_of_a_guest_image_are_cleared() {
        let mut image = [0x5a_u8; 512];
        image[24..28].copy_from_slice(&0xffff_ffff_u32.to_le_bytes());
        let area = FxArea::from_guest(&image, 0);
        assert_eq!(area.mxcsr(), DEFAULT_MXCSR_MASK);
        assert_eq!(FxArea::from_guest(&image, 0x2ffff).mxcsr(), 0x2ffff, "DAZ where supported");
        assert_eq!(area.0[0], 0x5a, "the rest is the guest's");
        assert_eq!(area.0[511], 0x5a);
    }
}
