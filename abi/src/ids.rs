//! Newtypes for the identifiers that cross the guest boundary: domain ids (`domid_t`),
//! event-channel ports (`evtchn_port_t`), vCPU numbers and frame numbers (`xen_pfn_t`).
//!
//! The hypervisor and the guests use them in the layout structs and in hypercall argument
//! decoding, so that a port can never be passed where a frame is expected. Each is
//! `#[repr(transparent)]` over the header's integer, so any bit pattern read from guest
//! memory is a valid value: these types must never grow invariants of their own.

/// A domain id (`domid_t`, xen.h). Ids from [`DomId::FIRST_RESERVED`] up name special
/// domains rather than ordinary ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct DomId(pub u16);

impl DomId {
    /// The initial domain.
    pub const DOM0: Self = Self(0);
    /// `DOMID_FIRST_RESERVED`: ids from here up cannot be ordinary domains.
    pub const FIRST_RESERVED: Self = Self(0x7FF0);
    /// `DOMID_SELF`: the calling domain.
    pub const SELF: Self = Self(0x7FF0);
    /// `DOMID_IO`: restricts page-table updates to I/O memory.
    pub const IO: Self = Self(0x7FF1);
    /// `DOMID_XEN`: the hypervisor's own pages (for example the M2P table).
    pub const XEN: Self = Self(0x7FF2);
    /// `DOMID_COW`: owner of sharable pages.
    pub const COW: Self = Self(0x7FF3);
    /// `DOMID_INVALID`: pages with an unknown owner.
    pub const INVALID: Self = Self(0x7FF4);
    /// `DOMID_IDLE`: the idle domain.
    pub const IDLE: Self = Self(0x7FFF);

    /// Whether this id names a special domain rather than an ordinary one.
    pub const fn is_reserved(self) -> bool {
        self.0 >= Self::FIRST_RESERVED.0
    }
}

/// An event-channel port (`evtchn_port_t`, event_channel.h), local to one domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct EvtchnPort(pub u32);

/// A virtual CPU number within one domain (the `vcpu` fields and `vcpu_op`'s `vcpuid`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct VcpuId(pub u32);

/// A machine frame number (`xen_pfn_t` as PV guests use it: a host-physical page number).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Mfn(pub u64);

/// A guest pseudo-physical frame number (an index into the guest's P2M table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Pfn(pub u64);

/// Size of a page in bytes, as every frame number in this ABI counts them.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

impl Mfn {
    /// The machine address of the frame's first byte.
    pub const fn address(self) -> u64 {
        self.0 << PAGE_SHIFT
    }

    /// The frame that holds a machine address.
    pub const fn containing(address: u64) -> Self {
        Self(address >> PAGE_SHIFT)
    }
}

impl Pfn {
    /// The pseudo-physical address of the frame's first byte.
    pub const fn address(self) -> u64 {
        self.0 << PAGE_SHIFT
    }

    /// The frame that holds a pseudo-physical address.
    pub const fn containing(address: u64) -> Self {
        Self(address >> PAGE_SHIFT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_domain_ids_start_at_0x7ff0() {
        assert!(!DomId::DOM0.is_reserved());
        assert!(!DomId(0x7FEF).is_reserved());
        assert!(DomId::SELF.is_reserved());
        assert!(DomId::IDLE.is_reserved());
        assert_eq!(DomId::SELF, DomId::FIRST_RESERVED);
    }

    #[test]
    fn frame_addresses_round_trip() {
        assert_eq!(Mfn(0x1234).address(), 0x123_4000);
        assert_eq!(Mfn::containing(0x123_4fff), Mfn(0x1234));
        assert_eq!(Pfn::containing(Pfn(7).address() + 4095), Pfn(7));
    }
}
