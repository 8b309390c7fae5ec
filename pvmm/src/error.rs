//! Why a paravirtual memory operation was refused: one [`MmError`] for the whole crate,
//! and its conversion to the guest-visible Xen error number.
//!
//! Every fallible operation of this crate returns it; the hypervisor's hypercall layer
//! calls [`MmError::errno`] in one place. An error always means "nothing changed": no
//! operation returns one after leaving a reference or an entry half-done. The exception is
//! [`MmError::Restart`], which means "not finished": the operation left consistent partial
//! state (see [`crate::refs`]) and must be called again.

use abi::errno::Errno;
use mm::addr::Mfn;
use mm::frame::{Owner, PageType};

use crate::entry::PteFlags;
use crate::level::Level;

/// A refused memory-management operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// The frame number is beyond the frame table (not machine RAM).
    OutOfRange(Mfn),
    /// The frame is free or reserved: nobody may reference it.
    NotAllocated(Mfn),
    /// The frame belongs to someone else (or, for a page table, is only shared with the
    /// domain).
    NotOwner {
        /// The frame.
        mfn: Mfn,
        /// Its owner.
        owner: Owner,
    },
    /// The frame is in use with another type; its type can change only at count zero.
    TypeConflict {
        /// The frame.
        mfn: Mfn,
        /// Its current type.
        have: PageType,
        /// The type asked for.
        want: PageType,
    },
    /// A writable L1 mapping of a frame whose type forbids them (a page table, descriptor
    /// or shared page).
    WritableTable {
        /// The frame.
        mfn: Mfn,
        /// Its type.
        have: PageType,
    },
    /// The frame is being validated or devalidated for its type by another CPU.
    Busy(Mfn),
    /// A reference or type count would overflow.
    CountOverflow(Mfn),
    /// The entry belongs to the hypervisor's part of the address space.
    ReservedSlot {
        /// Level of the table.
        level: Level,
        /// Index of the entry.
        index: usize,
    },
    /// An update that would clear slot 511 of an L4 table in use: slot 511 names the
    /// window-L3 that maps the hypervisor (the guest's or the default one, which
    /// validation installs in an L4 left without), and CR3 must never load a table
    /// without it.
    NoWindow(Mfn),
    /// The entry sets bits the guest may not use at this level.
    BadFlags {
        /// Level of the table.
        level: Level,
        /// The refused bits.
        bits: PteFlags,
    },
    /// A 2 MiB or 1 GiB mapping (PS bit in an L2 or L3 entry): not supported.
    HugePage {
        /// Level of the table.
        level: Level,
    },
    /// An entry index of 512 or more.
    BadIndex(usize),
    /// A virtual address that is not canonical (bits 48-63 differ from bit 47).
    NonCanonical(u64),
    /// No table maps the address at this level (the entry is not present).
    NotMapped {
        /// Level of the table whose entry is not present.
        level: Level,
        /// The address looked up.
        virtual_address: u64,
    },
    /// The frame is not a page table in use (writable-page-table emulation writes only
    /// those).
    NotATable(Mfn),
    /// The entry no longer holds the value a compare-and-exchange update expected (a
    /// processor set an accessed or dirty bit): nothing changed; the caller computes again.
    Changed(Mfn),
    /// The table is pinned already.
    AlreadyPinned(Mfn),
    /// The table is not pinned.
    NotPinned(Mfn),
    /// The operation stopped half-way because [`crate::TableMemory::should_preempt`] said
    /// so (Xen's `ERESTART`): its progress is kept in the frames, and calling the same
    /// operation again with the same arguments continues it. Never reaches a guest: the
    /// hypervisor calls again, now or in a hypercall continuation.
    Restart,
    /// A validation failed in an earlier call, which stopped while undoing it; this call
    /// finished the undo. The Xen error number of the original refusal.
    FailedEarlier(Errno),
    /// A device-memory frame ([`crate::device`]) the domain may not map.
    NotDeviceOwner {
        /// The device frame.
        mfn: Mfn,
        /// The domain that asked.
        dom: mm::frame::DomainId,
    },
    /// A grant mapping's removal found an entry that is not the grant's: not present, of
    /// another frame, or with another access (XSA-234).
    NotGranted {
        /// The granted frame.
        mfn: Mfn,
        /// The entry found.
        found: u64,
    },
    /// The frame still has references after its domain released everything.
    InUse {
        /// The frame.
        mfn: Mfn,
        /// Its general reference count.
        ref_count: u32,
        /// Its type count.
        type_count: u32,
    },
}

impl MmError {
    /// The Xen error number a guest sees. Follows Xen where it has a rule (`EINVAL` for
    /// refused entries, types, pins and Xen-private slots); `EPERM` for foreign frames,
    /// `EBUSY` for counts that cannot move, `EAGAIN` for a frame another CPU is
    /// (de)validating (and for [`MmError::Restart`], which the hypervisor never returns).
    pub const fn errno(self) -> Errno {
        match self {
            MmError::NotOwner { .. } | MmError::NotDeviceOwner { .. } => Errno::Eperm,
            MmError::Busy(_) | MmError::Restart | MmError::Changed(_) => Errno::Eagain,
            MmError::FailedEarlier(errno) => errno,
            MmError::CountOverflow(_) | MmError::InUse { .. } => Errno::Ebusy,
            MmError::OutOfRange(_)
            | MmError::NotAllocated(_)
            | MmError::TypeConflict { .. }
            | MmError::WritableTable { .. }
            | MmError::ReservedSlot { .. }
            | MmError::NoWindow(_)
            | MmError::BadFlags { .. }
            | MmError::HugePage { .. }
            | MmError::BadIndex(_)
            | MmError::NonCanonical(_)
            | MmError::NotMapped { .. }
            | MmError::AlreadyPinned(_)
            | MmError::NotPinned(_)
            | MmError::NotATable(_)
            | MmError::NotGranted { .. } => Errno::Einval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm::frame::DomainId;

    #[test]
    fn errnos_follow_the_documented_classes() {
        let mfn = Mfn(7);
        let owner = Owner::Domain(DomainId(2));
        assert_eq!(MmError::NotOwner { mfn, owner }.errno(), Errno::Eperm);
        assert_eq!(MmError::Busy(mfn).errno(), Errno::Eagain);
        assert_eq!(MmError::CountOverflow(mfn).errno(), Errno::Ebusy);
        let in_use = MmError::InUse {
            mfn,
            ref_count: 1,
            type_count: 0,
        };
        assert_eq!(in_use.errno(), Errno::Ebusy);
        let reserved = MmError::ReservedSlot {
            level: Level::L4,
            index: 256,
        };
        assert_eq!(reserved.errno(), Errno::Einval);
        assert_eq!(
            MmError::HugePage { level: Level::L2 }.errno(),
            Errno::Einval
        );
        assert_eq!(MmError::NotPinned(mfn).errno(), Errno::Einval);
        assert_eq!(MmError::NoWindow(mfn).errno(), Errno::Einval);
        assert_eq!(MmError::FailedEarlier(Errno::Eperm).errno(), Errno::Eperm);
    }
}
