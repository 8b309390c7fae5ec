//! Page-table hypercall requests (xen.h): `mmu_update` entries, `mmuext_op` entries, and
//! the flush flags of `update_va_mapping`.
//!
//! The hypervisor decodes these from guest arrays before validating them; our guests build
//! them with the constructors below. This module only encodes and decodes: it must never
//! judge whether an update is allowed.

use crate::hypercall::{MmuUpdateCmd, MmuextCmd};
use crate::ids::Mfn;
use crate::macros::assert_layout;

/// `UVMF_NONE`: no TLB flush.
pub const UVMF_NONE: u64 = 0;
/// `UVMF_TLB_FLUSH`: flush entire TLB(s).
pub const UVMF_TLB_FLUSH: u64 = 1;
/// `UVMF_INVLPG`: flush only the one entry.
pub const UVMF_INVLPG: u64 = 2;
/// `UVMF_FLUSHTYPE_MASK`: the flush-type bits.
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// `UVMF_MULTI`: flush the vCPUs in the bitmap whose address is OR-ed into the flags.
pub const UVMF_MULTI: u64 = 0;
/// `UVMF_LOCAL`: flush this vCPU only (`UVMF_MULTI` with a NULL bitmap).
pub const UVMF_LOCAL: u64 = 0;
/// `UVMF_ALL`: flush every vCPU of the domain.
pub const UVMF_ALL: u64 = 1 << 2;

/// What `update_va_mapping`'s flags ask to flush (the [`UVMF_FLUSHTYPE_MASK`] bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UvmfFlush {
    /// `UVMF_NONE` (and the undefined type 3, which Xen ignores too).
    Nothing,
    /// `UVMF_TLB_FLUSH`: every translation.
    Tlb,
    /// `UVMF_INVLPG`: the translations of the page updated.
    Page,
}

/// Whose TLBs `update_va_mapping`'s flags ask to flush (the bits above the flush type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UvmfScope {
    /// `UVMF_LOCAL`: the calling vCPU's.
    Local,
    /// `UVMF_ALL`: every vCPU of the domain.
    All,
    /// `UVMF_MULTI`: the vCPUs set in the bitmap at this guest address.
    Multi(u64),
}

/// Splits `update_va_mapping`'s flags as Xen's `do_update_va_mapping` does: the flush type
/// in the low two bits, then 0 (local), 4 (all) or the address of a vCPU bitmap.
pub const fn decode_uvmf(flags: u64) -> (UvmfFlush, UvmfScope) {
    let flush = match flags & UVMF_FLUSHTYPE_MASK {
        UVMF_TLB_FLUSH => UvmfFlush::Tlb,
        UVMF_INVLPG => UvmfFlush::Page,
        _ => UvmfFlush::Nothing,
    };
    let scope = match flags & !UVMF_FLUSHTYPE_MASK {
        UVMF_LOCAL => UvmfScope::Local,
        UVMF_ALL => UvmfScope::All,
        bitmap => UvmfScope::Multi(bitmap),
    };
    (flush, scope)
}

/// Bits of [`MmuUpdate::ptr`] that carry the command (the hypervisor masks with
/// `sizeof(l1_pgentry_t) - 1`, so three bits, although the header comment says two).
pub const MMU_UPDATE_CMD_MASK: u64 = 7;

/// One `mmu_update` request (`struct mmu_update`, xen.h, 16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MmuUpdate {
    /// Machine address of the target (bits 3-63) with the command in bits 0-2.
    pub ptr: u64,
    /// The new page-table entry, or the new M2P value.
    pub val: u64,
}

assert_layout!(MmuUpdate, size = 16, { ptr @ 0, val @ 8 });

impl MmuUpdate {
    /// A request of `cmd` for the 8-byte aligned machine address `target`.
    pub const fn new(cmd: MmuUpdateCmd, target: u64, val: u64) -> Self {
        Self {
            ptr: (target & !MMU_UPDATE_CMD_MASK) | cmd.raw(),
            val,
        }
    }

    /// The command in `ptr`, or `None` for an undefined one (the hypervisor answers
    /// `ENOSYS`).
    pub const fn command(&self) -> Option<MmuUpdateCmd> {
        MmuUpdateCmd::from_raw(self.ptr & MMU_UPDATE_CMD_MASK)
    }

    /// The machine address in `ptr`, command bits cleared.
    pub const fn target(&self) -> u64 {
        self.ptr & !MMU_UPDATE_CMD_MASK
    }
}

/// One `mmuext_op` request (`struct mmuext_op`, xen.h, 24 bytes). `arg1` and `arg2` are
/// C unions; the accessors name their members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MmuextOp {
    /// An [`MmuextCmd`] number.
    pub cmd: u32,
    pub _pad: u32,
    /// Union: `mfn` (pin, unpin, new baseptr, clear/copy page, mark super) or
    /// `linear_addr` (invlpg, set LDT).
    pub arg1: u64,
    /// Union: `nr_ents` (set LDT, low 32 bits), `vcpumask` (guest address of a vCPU bitmap
    /// for the multi flushes) or `src_mfn` (copy page).
    pub arg2: u64,
}

assert_layout!(MmuextOp, size = 24, { cmd @ 0, arg1 @ 8, arg2 @ 16 });

impl MmuextOp {
    /// A command taking no arguments (the TLB and cache flushes of the local or all vCPUs).
    pub const fn plain(cmd: MmuextCmd) -> Self {
        Self {
            cmd: cmd.raw(),
            _pad: 0,
            arg1: 0,
            arg2: 0,
        }
    }

    /// A command on one frame: pin, unpin, new (user) baseptr, clear page, mark super.
    pub const fn with_mfn(cmd: MmuextCmd, mfn: Mfn) -> Self {
        Self {
            cmd: cmd.raw(),
            _pad: 0,
            arg1: mfn.0,
            arg2: 0,
        }
    }

    /// A command on one linear address: invlpg local or all.
    pub const fn with_linear_addr(cmd: MmuextCmd, linear_addr: u64) -> Self {
        Self {
            cmd: cmd.raw(),
            _pad: 0,
            arg1: linear_addr,
            arg2: 0,
        }
    }

    /// `MMUEXT_SET_LDT` at page-aligned `linear_addr` with `nr_ents` entries.
    pub const fn set_ldt(linear_addr: u64, nr_ents: u32) -> Self {
        Self {
            cmd: MmuextCmd::SetLdt.raw(),
            _pad: 0,
            arg1: linear_addr,
            arg2: nr_ents as u64,
        }
    }

    /// The command, or `None` for an undefined number.
    pub const fn command(&self) -> Option<MmuextCmd> {
        MmuextCmd::from_raw(self.cmd)
    }

    /// `arg1` read as `mfn`.
    pub const fn mfn(&self) -> Mfn {
        Mfn(self.arg1)
    }

    /// `arg1` read as `linear_addr`.
    pub const fn linear_addr(&self) -> u64 {
        self.arg1
    }

    /// `arg2` read as `nr_ents` (the union's low 32 bits on little-endian x86).
    pub const fn nr_ents(&self) -> u32 {
        self.arg2 as u32
    }

    /// `arg2` read as `vcpumask`: the guest address of a vCPU bitmap.
    pub const fn vcpumask(&self) -> u64 {
        self.arg2
    }

    /// `arg2` read as `src_mfn`.
    pub const fn src_mfn(&self) -> Mfn {
        Mfn(self.arg2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmu_update_packs_command_into_low_bits() {
        let req = MmuUpdate::new(MmuUpdateCmd::PtUpdatePreserveAd, 0x1234_5678, 0x3);
        assert_eq!(req.ptr, 0x1234_567a);
        assert_eq!(req.command(), Some(MmuUpdateCmd::PtUpdatePreserveAd));
        assert_eq!(req.target(), 0x1234_5678);
    }

    #[test]
    fn mmu_update_uses_three_command_bits() {
        let req = MmuUpdate {
            ptr: 0x1000 | 4,
            val: 0,
        };
        assert_eq!(
            req.command(),
            None,
            "4 is not a command, even though bits 1:0 are 0"
        );
        assert_eq!(req.target(), 0x1000);
        let machphys = MmuUpdate {
            ptr: 0x2001,
            val: 9,
        };
        assert_eq!(machphys.command(), Some(MmuUpdateCmd::MachphysUpdate));
    }

    #[test]
    fn mmuext_unions_read_back() {
        let pin = MmuextOp::with_mfn(MmuextCmd::PinL4Table, Mfn(0x42));
        assert_eq!(pin.command(), Some(MmuextCmd::PinL4Table));
        assert_eq!(pin.mfn(), Mfn(0x42));
        let ldt = MmuextOp::set_ldt(0xffff_8000_0000_0000, 17);
        assert_eq!(ldt.cmd, 13);
        assert_eq!(ldt.nr_ents(), 17);
        assert_eq!(ldt.linear_addr(), 0xffff_8000_0000_0000);
        let garbage_high = MmuextOp {
            arg2: 0xdead_0000_0000_0005,
            ..ldt
        };
        assert_eq!(garbage_high.nr_ents(), 5);
        assert_eq!(MmuextOp { cmd: 14, ..ldt }.command(), None);
    }

    #[test]
    fn uvmf_flags_match_xen_h() {
        assert_eq!(UVMF_INVLPG | UVMF_ALL, 6);
        assert_eq!(
            (UVMF_TLB_FLUSH | UVMF_LOCAL) & UVMF_FLUSHTYPE_MASK,
            UVMF_TLB_FLUSH
        );
    }

    #[test]
    fn uvmf_flags_decode_as_xen_reads_them() {
        assert_eq!(decode_uvmf(UVMF_NONE), (UvmfFlush::Nothing, UvmfScope::Local));
        assert_eq!(decode_uvmf(UVMF_INVLPG | UVMF_LOCAL), (UvmfFlush::Page, UvmfScope::Local));
        assert_eq!(decode_uvmf(UVMF_TLB_FLUSH | UVMF_ALL), (UvmfFlush::Tlb, UvmfScope::All));
        let bitmap = 0xffff_ffff_8000_1238;
        assert_eq!(decode_uvmf(UVMF_INVLPG | UVMF_MULTI | bitmap), (UvmfFlush::Page, UvmfScope::Multi(bitmap)));
        // Type 3 is no flush; an odd "bitmap" is still passed on as an address.
        assert_eq!(decode_uvmf(3 | UVMF_ALL), (UvmfFlush::Nothing, UvmfScope::All));
        assert_eq!(decode_uvmf(UVMF_TLB_FLUSH | 8), (UvmfFlush::Tlb, UvmfScope::Multi(8)));
    }
}
