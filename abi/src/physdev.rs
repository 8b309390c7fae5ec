//! `physdev_op` (physdev.h): the sub-operation numbers and the argument structs of the
//! sub-operations a PV domain uses: its I/O privilege level and I/O-port bitmap, and for
//! domain 0 the physical IRQs of its devices (`map_pirq`, `eoi`, `irq_status_query`), plus
//! the legacy `physdev_op_compat` envelope.
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

/// `struct physdev_map_pirq`: map a device interrupt to a pirq of `domid`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PhysdevMapPirq {
    pub domid: u16,
    pub _pad: u16,
    /// IN: `MAP_PIRQ_TYPE_*`.
    pub kind: i32,
    /// IN: the GSI (`MAP_PIRQ_TYPE_GSI`).
    pub index: i32,
    /// IN (a wanted pirq, or -1 for any) and OUT.
    pub pirq: i32,
    /// IN (MSI only).
    pub bus: i32,
    pub devfn: i32,
    pub entry_nr: i32,
    pub _pad2: u32,
    pub table_base: u64,
}

assert_layout!(PhysdevMapPirq, size = 40, { domid @ 0, kind @ 4, index @ 8, pirq @ 12, bus @ 16, devfn @ 20, entry_nr @ 24, table_base @ 32 });

/// `MAP_PIRQ_TYPE_MSI`.
pub const MAP_PIRQ_TYPE_MSI: i32 = 0;
/// `MAP_PIRQ_TYPE_GSI`.
pub const MAP_PIRQ_TYPE_GSI: i32 = 1;

/// `struct physdev_eoi`: the guest finished with an interrupt of `irq` (a pirq).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PhysdevEoi {
    pub irq: u32,
}

assert_layout!(PhysdevEoi, size = 4, { irq @ 0 });

/// `struct physdev_irq_status_query`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PhysdevIrqStatusQuery {
    /// IN: a pirq.
    pub irq: u32,
    /// OUT: `XENIRQSTAT_*`.
    pub flags: u32,
}

assert_layout!(PhysdevIrqStatusQuery, size = 8, { irq @ 0, flags @ 4 });

/// `XENIRQSTAT_needs_eoi`: the guest must call `PHYSDEVOP_eoi` after each interrupt.
pub const XENIRQSTAT_NEEDS_EOI: u32 = 1 << 0;
/// `XENIRQSTAT_shared`.
pub const XENIRQSTAT_SHARED: u32 = 1 << 1;

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
