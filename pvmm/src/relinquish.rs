//! Domain destruction: dropping every reference a dying domain's tables, pins and base
//! pointers hold, so that each of its frames can be freed.
//!
//! The hypervisor calls [`PvMmu::relinquish`] once the domain's vCPUs no longer run, after
//! dropping the references it took itself (grants, descriptor tables, I/O), then frees the
//! frames with [`mm::frame::FrameTable::free`]. It never frees a frame itself.
//!
//! No order is needed: a table's references are held only by its parents' entries, pins
//! and base pointers, and table levels strictly descend (a table can never be reached
//! from itself), so once the pins and base pointers are dropped every table's count
//! reaches zero and devalidation drops everything below it.

use mm::addr::Mfn;
use mm::frame::{DomainId, TypeFlags};

use crate::error::MmError;
use crate::memory::TableMemory;
use crate::pin::BasePtr;
use crate::refs::PvMmu;

impl PvMmu<'_> {
    /// Releases `bases` (every vCPU's base pointers), unpins every pinned frame in
    /// `owned` (all the frames allocated to `dom`), then checks that none of them is still
    /// referenced. `Err(InUse)` names the first frame something outside this domain's
    /// tables still references (a foreign mapping of a shared frame, or a reference the
    /// hypervisor forgot), `Err(NotOwner)` a frame in `owned` that `dom` does not own
    /// (checked before anything is unpinned).
    pub fn relinquish<M: TableMemory + ?Sized>(
        &self,
        dom: DomainId,
        owned: &[Mfn],
        bases: impl IntoIterator<Item = BasePtr>,
        mem: &mut M,
    ) -> Result<(), MmError> {
        for base in bases {
            self.put_baseptr(base, mem);
        }
        for &mfn in owned {
            self.check_owner(mfn, dom)?;
        }
        for &mfn in owned {
            if self
                .info(mfn)?
                .type_info()
                .flags()
                .contains(TypeFlags::PINNED)
            {
                self.drop_pin(mfn, mem)?;
            }
        }
        for &mfn in owned {
            let info = self.info(mfn)?;
            let (ref_count, type_count) = (info.ref_count(), info.type_info().count());
            if ref_count != 0 || type_count != 0 {
                return Err(MmError::InUse {
                    mfn,
                    ref_count,
                    type_count,
                });
            }
        }
        Ok(())
    }
}
