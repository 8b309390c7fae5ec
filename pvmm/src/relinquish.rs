//! Domain destruction: dropping every reference a dying domain's tables, pins and base
//! pointers hold, so that each of its frames can be freed.
//!
//! The hypervisor calls [`PvMmu::relinquish`] once the domain's vCPUs no longer run, after
//! dropping the references it took itself (grants, descriptor tables, I/O), then frees the
//! frames with [`mm::frame::FrameTable::free`]. It never frees a frame itself. The work
//! is proportional to the domain's tables, so it stops when the table memory says so and
//! returns [`MmError::Restart`]; the caller calls it again with the same arguments (and
//! the same [`RelinquishProgress`]) until it returns anything else.
//!
//! No order is needed: a table's references are held only by its parents' entries, pins,
//! base pointers and partial states, and table levels strictly descend (a table can never
//! be reached from itself), so once the pins and base pointers are dropped and the walks
//! left half-way are finished (or, for validations, undone), every table's count reaches
//! zero and devalidation drops everything below it.

use mm::addr::Mfn;
use mm::frame::{DomainId, TypeFlags};

use crate::error::MmError;
use crate::memory::TableMemory;
use crate::pin::BasePtr;
use crate::refs::PvMmu;
use crate::validate::{partial, Progress};

/// How far a [`PvMmu::relinquish`] got; start with [`RelinquishProgress::default`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelinquishProgress {
    stage: Stage,
    /// The next frame of `owned` the stage looks at.
    next: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stage {
    /// Every frame must be the domain's.
    #[default]
    CheckOwners,
    /// Base pointers released.
    Bases,
    /// Pins dropped.
    Pins,
    /// Walks left half-way finished.
    Partials,
    /// Nothing may be left referenced.
    CheckUnused,
}

impl PvMmu<'_> {
    /// Releases `bases` (every vCPU's base pointers), unpins every pinned frame in
    /// `owned` (all the frames allocated to `dom`), finishes or undoes the walks left
    /// half-way, then checks that none of them is still referenced. `Err(InUse)` names the
    /// first frame something outside this domain's tables still references (a foreign
    /// mapping of a shared frame, or a reference the hypervisor forgot), `Err(NotOwner)` a
    /// frame in `owned` that `dom` does not own (checked before anything is released).
    /// `Err(Restart)`: call it again with the same arguments and `progress`.
    pub fn relinquish<M: TableMemory + ?Sized, B: Iterator<Item = BasePtr>>(
        &self,
        dom: DomainId,
        owned: &[Mfn],
        bases: &mut B,
        progress: &mut RelinquishProgress,
        mem: &mut M,
    ) -> Result<(), MmError> {
        loop {
            match progress.stage {
                Stage::CheckOwners => {
                    self.each_frame(owned, progress, mem, |mfn, _| self.check_owner(mfn, dom))?;
                    progress.stage = Stage::Bases;
                }
                Stage::Bases => {
                    for base in bases.by_ref() {
                        let l4 = base.mfn();
                        if let Err(error) = self.put_baseptr(base, mem) {
                            // Its teardown is finished with the partial walks below.
                            debug_assert_eq!(error, MmError::Restart, "{l4}");
                            return Err(error);
                        }
                        if mem.should_preempt() {
                            return Err(MmError::Restart);
                        }
                    }
                    progress.stage = Stage::Pins;
                    progress.next = 0;
                }
                Stage::Pins => {
                    self.each_frame(owned, progress, mem, |mfn, mem| {
                        let pinned = self
                            .info(mfn)?
                            .type_info()
                            .flags()
                            .contains(TypeFlags::PINNED);
                        if pinned {
                            // A teardown that stops is finished with the partial walks.
                            self.drop_pin(mfn, mem)?;
                        }
                        Ok(())
                    })?;
                    progress.stage = Stage::Partials;
                }
                Stage::Partials => {
                    self.each_frame(owned, progress, mem, |mfn, mem| {
                        match partial(self.info(mfn)?) {
                            Some(Progress::Validating { .. }) => self.abandon_validation(mfn, mem),
                            Some(Progress::Devalidating { .. }) => self.finish_teardown(mfn, mem),
                            None => Ok(()),
                        }
                    })?;
                    progress.stage = Stage::CheckUnused;
                }
                Stage::CheckUnused => {
                    return self.each_frame(owned, progress, mem, |mfn, _| {
                        let info = self.info(mfn)?;
                        let (ref_count, type_count) = (info.ref_count(), info.type_info().count());
                        if ref_count != 0 || type_count != 0 {
                            return Err(MmError::InUse {
                                mfn,
                                ref_count,
                                type_count,
                            });
                        }
                        Ok(())
                    });
                }
            }
        }
    }

    /// Runs `step` on the frames of `owned` from `progress.next`, moving on after each one
    /// that succeeds; stops with `Restart` when the memory asks (after a step), or with the
    /// step's error (the frame stays next). Leaves `progress.next` at 0 when done.
    fn each_frame<M: TableMemory + ?Sized>(
        &self,
        owned: &[Mfn],
        progress: &mut RelinquishProgress,
        mem: &mut M,
        mut step: impl FnMut(Mfn, &mut M) -> Result<(), MmError>,
    ) -> Result<(), MmError> {
        while let Some(&mfn) = owned.get(progress.next) {
            step(mfn, mem)?;
            progress.next += 1;
            if progress.next < owned.len() && mem.should_preempt() {
                return Err(MmError::Restart);
            }
        }
        progress.next = 0;
        Ok(())
    }
}
