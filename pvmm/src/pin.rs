//! References that keep a table validated without any table pointing at it: pins
//! (`MMUEXT_PIN_L1_TABLE`..`MMUEXT_PIN_L4_TABLE`, `MMUEXT_UNPIN_TABLE`) and base pointers
//! (`MMUEXT_NEW_BASEPTR`, `MMUEXT_NEW_USER_BASEPTR`: the L4 a vCPU's CR3 loads).
//!
//! The hypervisor's `mmuext_op` handler calls these with the domain's page-table lock
//! held, and keeps each vCPU's [`BasePtr`] until it switches to another table or the
//! domain dies. Nothing here touches CR3 or flushes a TLB.

use mm::addr::Mfn;
use mm::frame::{DomainId, PageType, TypeFlags};

use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::refs::{update_type, Access, PvMmu};
use crate::validate::{partial, Progress};

/// A general and an L4 type reference on the table a vCPU uses as its root. Release it
/// with [`PvMmu::put_baseptr`] once CR3 no longer points at it.
#[must_use = "a base pointer holds references until it is released with put_baseptr"]
#[derive(Debug, PartialEq, Eq)]
pub struct BasePtr(Mfn);

impl BasePtr {
    /// The L4 table's frame: what CR3 loads.
    pub const fn mfn(&self) -> Mfn {
        self.0
    }
}

impl PvMmu<'_> {
    /// Pins `mfn`, owned by `dom`, as a `level` table: takes a general and a type
    /// reference (validating the table if it was untyped) and marks it pinned, so it
    /// stays validated while no table points at it. The type is the level's plain one,
    /// except that an L3 pin of a window-L3 in use (one under L4 slot 511) keeps that
    /// type: an untyped L3 becomes a plain L3, which can then never be linked at L4 slot
    /// 511 while pinned (see [`crate::policy`]). `Err(Restart)`: the validation stopped
    /// half-way; call it again with the same arguments.
    pub fn pin_table<M: TableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        level: Level,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let info = self.info(mfn)?;
        let now = info.type_info();
        let want = match level {
            Level::L3 if now.page_type() == PageType::WindowL3 && now.count() > 0 => {
                PageType::WindowL3
            }
            _ => level.page_type(),
        };
        self.get_page_for(mfn, dom, Access::Owner)?;
        match self.get_page_type(mfn, want, dom, mem) {
            Ok(()) => {}
            // The general reference went to the frame's partial state.
            Err(MmError::Restart) => return Err(MmError::Restart),
            Err(error) => {
                self.put_page(mfn);
                return Err(error);
            }
        }
        update_type(info, |now| {
            if now.flags().contains(TypeFlags::PINNED) {
                return Err(MmError::AlreadyPinned(mfn));
            }
            Ok(now.with_flags(now.flags() | TypeFlags::PINNED))
        })
        .map(drop)
        .inspect_err(|_| {
            // Pinned already: these were not the last references.
            let _ = self.put_page_and_type(mfn, mem);
        })
    }

    /// Unpins `mfn`, owned by `dom`, dropping the pin's references (which devalidates the
    /// table if nothing else uses it). `Err(Restart)`: the devalidation stopped half-way;
    /// calling it again with the same arguments finishes it (an unpin of a frame left half
    /// torn down finishes its teardown, whoever started it).
    pub fn unpin_table<M: TableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.check_owner(mfn, dom)?;
        if let Some(Progress::Devalidating { .. }) = partial(self.info(mfn)?) {
            return self.finish_teardown(mfn, mem);
        }
        self.drop_pin(mfn, mem)
    }

    /// Takes the references that let `l4`, owned by `dom`, be a vCPU's root table
    /// (validating it if it was untyped). The hypervisor then loads CR3 and releases the
    /// previous base pointer, in that order.
    pub fn new_baseptr<M: TableMemory + ?Sized>(
        &self,
        l4: Mfn,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<BasePtr, MmError> {
        self.get_page_for(l4, dom, Access::Owner)?;
        match self.get_page_type(l4, PageType::L4, dom, mem) {
            Ok(()) => Ok(BasePtr(l4)),
            // The general reference went to the frame's partial state.
            Err(MmError::Restart) => Err(MmError::Restart),
            Err(error) => {
                self.put_page(l4);
                Err(error)
            }
        }
    }

    /// Releases a base pointer's references. `Err(Restart)`: the base pointer is released
    /// but its table's devalidation stopped half-way; finish it with
    /// [`PvMmu::finish_teardown`] on the same frame.
    pub fn put_baseptr<M: TableMemory + ?Sized>(
        &self,
        base: BasePtr,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.put_page_and_type(base.0, mem)
    }

    /// Clears the pin flag of `mfn` and drops the pin's references.
    pub(crate) fn drop_pin<M: TableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        mem: &mut M,
    ) -> Result<(), MmError> {
        update_type(self.info(mfn)?, |now| {
            if !now.flags().contains(TypeFlags::PINNED) {
                return Err(MmError::NotPinned(mfn));
            }
            Ok(now.with_flags(now.flags() - TypeFlags::PINNED))
        })?;
        self.put_page_and_type(mfn, mem)
    }
}
