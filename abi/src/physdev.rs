//! `physdev_op` (physdev.h): the sub-operation numbers and the argument structs of the
//! sub-operations a PV domain without devices uses, its I/O privilege level and I/O-port
//! bitmap, plus the legacy `physdev_op_compat` envelope.
//!
//! Numbers and layouts only; the hypervisor decides what each does (`pv::physdev`).

use crate::macros::{abi_enum, assert_layout};

abi_enum! {
    /// `physdev_op` commands (`PHYSDEVOP_*`, physdev.h).
    pub enum PhysdevOp: u32 {
        IrqUnmaskNotify = 4,
        /// arg: `physdev_irq_status_query`.
        IrqStatusQuery = 5,
        /// arg: [`PhysdevSetIopl`].
        SetIopl = 6,
        /// arg: [`PhysdevSetIobitmap`].
        SetIobitmap = 7,
        ApicRead = 8,
        ApicWrite = 9,
        AllocIrqVector = 10,
        FreeIrqVector = 11,
        /// arg: `physdev_eoi`.
        Eoi = 12,
        MapPirq = 13,
        UnmapPirq = 14,
        ManagePciAdd = 15,
        ManagePciRemove = 16,
        /// arg: `physdev_pirq_eoi_gmfn`.
        PirqEoiGmfnV1 = 17,
        RestoreMsi = 19,
        ManagePciAddExt = 20,
        SetupGsi = 21,
        GetFreePirq = 23,
        PciMmcfgReserved = 24,
        PciDeviceAdd = 25,
        PciDeviceRemove = 26,
        RestoreMsiExt = 27,
        /// arg: `physdev_pirq_eoi_gmfn`.
        PirqEoiGmfnV2 = 28,
        DbgpOp = 29,
        PrepareMsix = 30,
        ReleaseMsix = 31,
    }
}

/// `struct physdev_set_iopl`: the calling vCPU's virtual I/O privilege level (0-3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PhysdevSetIopl {
    pub iopl: u32,
}

assert_layout!(PhysdevSetIopl, size = 4, { iopl @ 0 });

/// `struct physdev_set_iobitmap`: the calling vCPU's I/O-port bitmap, in guest kernel
/// memory (a set bit refuses the port, as in a TSS), covering ports `0..nr_ports`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PhysdevSetIobitmap {
    /// Guest virtual address of the bitmap (a `XEN_GUEST_HANDLE(uint8)`).
    pub bitmap: u64,
    pub nr_ports: u32,
    pub _pad: u32,
}

assert_layout!(PhysdevSetIobitmap, size = 16, { bitmap @ 0, nr_ports @ 8 });

/// Bytes of an I/O bitmap for all 65536 ports (Xen's `IOBMP_BYTES`): how much a bitmap
/// handle must name.
pub const IOBMP_BYTES: u64 = 8192;
/// The most ports a bitmap may cover.
pub const MAX_PORTS: u32 = 65536;

/// `struct physdev_op`, the argument of the legacy `physdev_op_compat` hypercall: a
/// command and, at [`COMPAT_ARG_OFFSET`], its argument struct (a union of at most 16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PhysdevOpCompat {
    pub cmd: u32,
    pub _pad: u32,
    pub u: [u64; 2],
}

assert_layout!(PhysdevOpCompat, size = 24, { cmd @ 0, u @ 8 });

/// Where the sub-operation's argument starts inside [`PhysdevOpCompat`].
pub const COMPAT_ARG_OFFSET: u64 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_physdev_h() {
        assert_eq!(PhysdevOp::SetIopl.raw(), 6);
        assert_eq!(PhysdevOp::SetIobitmap.raw(), 7);
        assert_eq!(PhysdevOp::PirqEoiGmfnV2.raw(), 28);
        assert_eq!(PhysdevOp::from_raw(22), None);
        assert_eq!(PhysdevOp::from_raw(18), None);
    }
}
