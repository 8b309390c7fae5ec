//! Reference counting on frames (Xen's `get_page`/`put_page`/`get_page_type`/
//! `put_page_type`): [`PvMmu`], the view of the frame table every paravirtual memory
//! operation goes through.
//!
//! The hypervisor builds one `PvMmu` per operation (it is two references) and calls the
//! operations here and in `validate`, [`crate::update`], [`crate::pin`],
//! [`crate::walk`] and [`crate::relinquish`]. This module never decides whether an entry
//! value is allowed ([`crate::policy`] does) and never frees or allocates a frame.
//!
//! # Counting model
//! Every frame's [`FrameInfo`] holds two counts:
//! - The **general reference count** (`ref_count`) counts the users that keep the frame
//!   from being freed: one per present entry of a validated table that points at it (an L1
//!   entry mapping it, or an L2-L4 entry naming it as the next table), one per pin, one
//!   per [`BasePtr`](crate::pin::BasePtr) using it as an L4, plus whatever the hypervisor
//!   takes itself with [`PvMmu::get_page`] (grants, I/O, descriptor tables).
//! - The **type count** counts the uses of the frame's current [`PageType`]. For L1-L4
//!   tables: one per present entry of a validated next-higher-level table naming it, one
//!   per pin, one per `BasePtr` (L4). For [`PageType::None`]: one per *writable* L1 entry
//!   mapping it (read-only mappings take only a general reference). A type can change
//!   only when its count is zero. Every type reference is taken while holding a general
//!   reference, and dropped before it.
//!
//! Type word states: count 0 is always [`TypeInfo::NONE`] (untyped, any type may be
//! taken). A table type with count > 0 and [`TypeFlags::VALIDATED`] is in use; without the
//! flag it is being validated (count 1) or devalidated (count 1) by the CPU that moved it
//! there, and everyone else gets [`MmError::Busy`]; with [`TypeFlags::PARTIAL`] such a
//! walk stopped half-way (preempted) and waits to be continued (see `validate`: the
//! partial state owns one general reference and the count). [`TypeFlags::PINNED`] marks a
//! pin's reference; [`TypeFlags::TEARDOWN`] a validated table with a sub-table to finish
//! tearing down. Changes are compare-and-swap loops on the type word, so other CPUs may
//! read and count concurrently; the hypervisor serializes a domain's table updates.
//!
//! # Stopping and continuing
//! Validating or devalidating a table walks every table below it that changes state, so
//! one operation may touch millions of entries. Every operation that may walk stops when
//! [`TableMemory::should_preempt`] says so and returns [`MmError::Restart`]: everything it
//! did is consistent and counted, the walks in progress are left partial in their frames,
//! and calling the same operation again with the same arguments continues them. A general
//! reference the caller handed down with a walk that stopped belongs to the partial state
//! from then on (the operations here account for that; see each one).

use mm::addr::Mfn;
use mm::frame::{
    DomainId, FrameInfo, FrameState, FrameTable, Owner, PageType, TypeFlags, TypeInfo,
};

use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::policy::Layout;
use crate::validate::{claim, partial, Progress};

/// The hook that says whether a frame its owner shares with `DomainId` may be mapped by
/// that domain from its L1 tables (never used as one of its page tables).
pub type SharedWith<'a> = &'a (dyn Fn(Mfn, DomainId) -> bool + Sync);

/// Device memory (frames of PCI BARs) that some domain may map from its L1 tables
/// ([`crate::device`]).
pub type DeviceMemoryRef<'a> = &'a (dyn crate::device::DeviceMemory + Sync);

/// Who may take a general reference on a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Only the owner (page tables, pins, `mmu_update` targets).
    Owner,
    /// The owner, or a domain the frame is shared with (L1 mappings).
    OwnerOrShared,
}

/// Paravirtual memory management over a frame table.
#[derive(Clone, Copy)]
pub struct PvMmu<'a> {
    pub(crate) frames: &'a FrameTable,
    pub(crate) layout: &'a Layout,
    shared: Option<SharedWith<'a>>,
    pub(crate) device: Option<DeviceMemoryRef<'a>>,
}

impl<'a> PvMmu<'a> {
    /// A view of `frames` under the slot rules of `layout`, with no frame shared across
    /// domains.
    pub const fn new(frames: &'a FrameTable, layout: &'a Layout) -> PvMmu<'a> {
        PvMmu {
            frames,
            layout,
            shared: None,
            device: None,
        }
    }

    /// The same view, also letting a domain map (from L1 entries) the device-memory frames
    /// `device` says it may (see [`crate::device`]). Every view of one frame table must be
    /// given the same `device` for the whole run: an entry mapping device memory holds no
    /// reference, and only a view that knows the frame is device memory drops none.
    pub const fn with_device_memory(self, device: DeviceMemoryRef<'a>) -> PvMmu<'a> {
        PvMmu {
            device: Some(device),
            ..self
        }
    }

    /// The same view, also letting a domain map (from L1 entries) the frames `shared`
    /// says are shared with it.
    pub const fn with_sharing(self, shared: SharedWith<'a>) -> PvMmu<'a> {
        PvMmu {
            shared: Some(shared),
            ..self
        }
    }

    /// Takes a general reference on `mfn` for `dom`: the frame must be allocated to
    /// `dom` or shared with it.
    pub fn get_page(&self, mfn: Mfn, dom: DomainId) -> Result<(), MmError> {
        self.get_page_for(mfn, dom, Access::OwnerOrShared)
    }

    /// Takes a general reference on `mfn` for `dom`, which must own it (a frame merely
    /// shared with it is refused): for what only an owner may do to a frame, such as
    /// naming its guest frame in the machine-to-physical table.
    pub fn get_owned_page(&self, mfn: Mfn, dom: DomainId) -> Result<(), MmError> {
        self.get_page_for(mfn, dom, Access::Owner)
    }

    /// Drops a general reference taken with [`Self::get_page`] (or by an entry, pin or
    /// base pointer being released). The frame stays allocated; freeing is the caller's.
    ///
    /// # Panics
    /// If `mfn` has no reference or is outside the table: the caller dropped a reference it
    /// did not hold, and the counts can no longer be trusted.
    pub fn put_page(&self, mfn: Mfn) {
        if self
            .info(mfn)
            .ok()
            .and_then(|info| info.update_ref_count(|count| count.checked_sub(1)).ok())
            .is_none()
        {
            panic!("put_page: frame {mfn} holds no general reference");
        }
    }

    /// Takes a type reference of type `want` on `mfn`, which the caller holds a general
    /// reference on. At type count 0 the frame takes the type; a page-table type is then
    /// validated (every entry checked, and the references its present entries need taken
    /// for `dom`), and on failure every reference taken is dropped again and the frame is
    /// left untyped. A page-table type may only be taken on a frame `dom` owns. At a
    /// non-zero count the type must match. For descriptor and shared types the caller
    /// checks the contents itself after this returns.
    ///
    /// A frame left partial by an earlier call is handled first: a half-done teardown is
    /// finished (whatever `want` is; if it was the undo of a failed validation of type
    /// `want`, that failure is returned as [`MmError::FailedEarlier`]), a half-done
    /// validation of type `want` is continued. `Err(Restart)`: the validation (or the
    /// teardown) stopped half-way; the type reference was not taken and the caller's
    /// general reference now belongs to the frame's partial state (do not drop it); call
    /// the same operation again.
    pub fn get_page_type<M: TableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        want: PageType,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let info = self.info(mfn)?;
        let is_table = Level::of_page_type(want).is_some();
        if is_table {
            check_user(info, mfn, dom, Access::Owner, None)?;
        }
        match partial(info) {
            Some(Progress::Devalidating { .. }) => {
                let page_type = info.type_info().page_type();
                match self.resume_teardown(mfn, mem) {
                    Ok(Some(errno)) if page_type == want => {
                        return Err(MmError::FailedEarlier(errno))
                    }
                    Ok(_) => {}
                    Err(error) => {
                        // The partial state keeps a general reference of its own.
                        self.put_page(mfn);
                        return Err(error);
                    }
                }
            }
            Some(Progress::Validating { next }) if info.type_info().page_type() == want => {
                claim(info, mfn)?;
                // The caller's general reference takes the place of the partial state's.
                self.put_page(mfn);
                return self.validate_from(mfn, want, next, dom, mem);
            }
            _ => {}
        }
        let before = update_type(info, |now| type_after_get(mfn, now, want))?;
        if before.count() > 0 {
            return Ok(());
        }
        if want == PageType::None {
            mem.flush_stale_tables(mfn);
        } else {
            mem.flush_stale_writable(mfn);
        }
        if !is_table {
            return Ok(());
        }
        self.validate_from(mfn, want, 0, dom, mem)
    }

    /// Drops a type reference. When the last reference of a page-table type goes, the
    /// table is devalidated (every reference its entries held is dropped) and the frame
    /// becomes untyped. `Err(Restart)`: the devalidation stopped half-way; the frame keeps
    /// the caller's general reference (do not drop it) until its teardown is finished
    /// ([`PvMmu::finish_teardown`], or any later use of the frame).
    ///
    /// # Panics
    /// If `mfn` holds no type reference, or is pinned with only the pin's reference left
    /// (unpin drops that one): the caller dropped a reference it did not hold.
    pub fn put_page_type<M: TableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let refused =
            || -> ! { panic!("put_page_type: frame {mfn} holds no type reference it may drop") };
        let info = self.info(mfn).unwrap_or_else(|_| refused());
        let before =
            update_type(info, |now| type_after_put(mfn, now)).unwrap_or_else(|_| refused());
        if before.count() != 1 {
            return Ok(());
        }
        if Level::of_page_type(before.page_type()).is_none() {
            mem.type_released(mfn, before.page_type());
            return Ok(());
        }
        self.devalidate(mfn, before.page_type(), mem)
    }

    /// [`Self::get_page`] then [`Self::get_page_type`], undoing the first if the second
    /// fails (but not when it returns `Restart`, which keeps it).
    pub fn get_page_and_type<M: TableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        want: PageType,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.get_page(mfn, dom)?;
        match self.get_page_type(mfn, want, dom, mem) {
            Err(MmError::Restart) => Err(MmError::Restart),
            other => other.inspect_err(|_| self.put_page(mfn)),
        }
    }

    /// [`Self::put_page_type`] then [`Self::put_page`]; `Err(Restart)` as the first (the
    /// general reference then stays with the frame's partial state).
    ///
    /// # Panics
    /// As those two.
    pub fn put_page_and_type<M: TableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.put_page_type(mfn, mem)?;
        self.put_page(mfn);
        Ok(())
    }

    /// The metadata of `mfn`.
    pub(crate) fn info(&self, mfn: Mfn) -> Result<&'a FrameInfo, MmError> {
        self.frames.frame(mfn).map_err(|_| MmError::OutOfRange(mfn))
    }

    /// Takes a general reference for `dom` if `access` allows it.
    pub(crate) fn get_page_for(
        &self,
        mfn: Mfn,
        dom: DomainId,
        access: Access,
    ) -> Result<(), MmError> {
        let info = self.info(mfn)?;
        check_user(info, mfn, dom, access, self.shared)?;
        info.update_ref_count(|count| count.checked_add(1))
            .map_err(|_| MmError::CountOverflow(mfn))?;
        // The frame may have been freed between the check and the increment; once the
        // count is raised, `FrameTable::free` refuses it, so checking again is final.
        check_user(info, mfn, dom, access, self.shared).inspect_err(|_| self.put_page(mfn))
    }

    /// Fails unless `dom` owns `mfn`.
    pub(crate) fn check_owner(&self, mfn: Mfn, dom: DomainId) -> Result<(), MmError> {
        check_user(self.info(mfn)?, mfn, dom, Access::Owner, None)
    }
}

/// Whether `dom` may reference the frame `info` describes.
fn check_user(
    info: &FrameInfo,
    mfn: Mfn,
    dom: DomainId,
    access: Access,
    shared: Option<SharedWith<'_>>,
) -> Result<(), MmError> {
    match info.state() {
        FrameState::Allocated(Owner::Domain(owner)) if owner == dom => Ok(()),
        FrameState::Allocated(owner) => {
            let shared = access == Access::OwnerOrShared && shared.is_some_and(|f| f(mfn, dom));
            if shared {
                Ok(())
            } else {
                Err(MmError::NotOwner { mfn, owner })
            }
        }
        FrameState::Free | FrameState::Reserved => Err(MmError::NotAllocated(mfn)),
    }
}

/// The type word after taking a reference of type `want` on a frame whose word is `now`
/// (a partial frame is busy, or of another type).
pub(crate) fn type_after_get(mfn: Mfn, now: TypeInfo, want: PageType) -> Result<TypeInfo, MmError> {
    if now.count() == 0 {
        return TypeInfo::NONE
            .with_type(want)
            .with_count(1)
            .ok_or(MmError::CountOverflow(mfn));
    }
    let have = now.page_type();
    if have != want {
        return Err(MmError::TypeConflict { mfn, have, want });
    }
    if Level::of_page_type(have).is_some() && !now.flags().contains(TypeFlags::VALIDATED) {
        return Err(MmError::Busy(mfn));
    }
    now.with_count(now.count() + 1)
        .ok_or(MmError::CountOverflow(mfn))
}

/// The type word after dropping a reference from `now`; the last reference of a table
/// type moves it to "devalidating" (count 1, no flags), any other last reference to
/// [`TypeInfo::NONE`]. `Err` when there is no reference the caller may drop.
fn type_after_put(mfn: Mfn, now: TypeInfo) -> Result<TypeInfo, MmError> {
    let is_table = Level::of_page_type(now.page_type()).is_some();
    let flags = now.flags();
    match now.count() {
        0 => Err(MmError::NotAllocated(mfn)),
        _ if is_table && !flags.contains(TypeFlags::VALIDATED) => Err(MmError::Busy(mfn)),
        1 if flags.contains(TypeFlags::PINNED) => Err(MmError::NotPinned(mfn)),
        1 if is_table => Ok(now.with_flags(TypeFlags::empty())),
        1 => Ok(TypeInfo::NONE),
        count => now.with_count(count - 1).ok_or(MmError::CountOverflow(mfn)),
    }
}

/// Moves the type word of `info` from `now` to `next(now)` with one compare-and-swap,
/// retrying while other CPUs change it. Returns the word it replaced.
pub(crate) fn update_type(
    info: &FrameInfo,
    mut next: impl FnMut(TypeInfo) -> Result<TypeInfo, MmError>,
) -> Result<TypeInfo, MmError> {
    loop {
        let seen = info.type_info();
        let wanted = next(seen)?;
        if info
            .update_type_info(|now| (now == seen).then_some(wanted))
            .is_ok()
        {
            return Ok(seen);
        }
    }
}

/// [`update_type`] for a change that cannot be refused.
pub(crate) fn replace_type(info: &FrameInfo, next: impl Fn(TypeInfo) -> TypeInfo) {
    // The closure always returns `Some`, so the update cannot be declined.
    let _previous = info.update_type_info(|now| Some(next(now)));
}
