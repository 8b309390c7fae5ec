//! Validation and devalidation of whole tables, and the references one entry holds; both
//! walks stop when the table memory asks them to ([`TableMemory::should_preempt`]) and are
//! continued later from where they stopped (Xen's `PGT_partial` and `nr_validated_ptes`,
//! XSA-45).
//!
//! [`crate::refs`] validates a table when it takes a table type at count zero and
//! devalidates it when the last type reference goes; [`crate::update`] takes and drops
//! single entries. Validation either succeeds completely or, on failure, undoes itself
//! (a devalidation of the entries it took) and leaves every count and the table's own
//! contents as they were (sub-tables that were validated on the way and devalidated by
//! the undo keep their stored form: U/S set, G cleared, hypervisor slots filled, which
//! changes nothing the guest relies on). Which type a sub-table takes comes from its
//! parent's level and index ([`crate::policy::child_type`]: a window-L3 under L4 slot
//! 511, a plain table elsewhere).
//!
//! A walk that stops leaves its frame *partial* ([`TypeFlags::PARTIAL`], type count 1)
//! with its [`Progress`] in the frame's progress word, and the partial state owns one
//! general reference and that type count:
//! - validating: the entries below `next` hold their references, the others none; a
//!   sub-table whose own validation stopped is partial in its own right (it holds its own
//!   references, not its parent's). Whoever next asks for the same type continues it
//!   (the operation called again, or another one), others see it busy or in conflict.
//! - devalidating: the entries below `end` still hold their references; with `child`, the
//!   entry at `end` named a sub-table whose own devalidation stopped, which is finished
//!   first. Whoever next takes any type on the frame, updates it as a plain page, unpins
//!   it or calls [`PvMmu::finish_teardown`] finishes it; `failed` marks the undo of a
//!   validation that failed, whose error the next request for that type gets.
//!
//! Every walk processes an entry before it asks whether to stop, so each call makes
//! progress. Nothing here is public but [`PvMmu::finish_teardown`]: the hypervisor
//! reaches the rest only through the reference-counting operations.

use abi::errno::Errno;
use mm::addr::Mfn;
use mm::frame::{DomainId, FrameInfo, PageType, TypeFlags, TypeInfo};

use crate::entry::{Pte, ENTRIES};
use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::policy::{child_type, must_be_present, normalize, Checked, Mapping};
use crate::refs::{replace_type, update_type, Access, PvMmu};

/// How far a stopped walk of a partial frame got (kept in its progress word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Validating: entries below `next` hold their references.
    Validating { next: usize },
    /// Devalidating: entries below `end` still hold their references; `child`: the entry
    /// at `end` names a sub-table whose devalidation stopped too; `failed`: this undoes a
    /// validation that failed with that error.
    Devalidating {
        end: usize,
        child: bool,
        failed: Option<Errno>,
    },
}

/// Progress word layout: bits 0-9 the index, 10 devalidating, 11 child, 12 failed, 16-23
/// the failure's errno.
const INDEX_MASK: u32 = 0x3ff;
const DEVALIDATING: u32 = 1 << 10;
const CHILD: u32 = 1 << 11;
const FAILED: u32 = 1 << 12;
const ERRNO_SHIFT: u32 = 16;

impl Progress {
    fn encode(self) -> u32 {
        match self {
            Progress::Validating { next } => next as u32,
            Progress::Devalidating { end, child, failed } => {
                let child = if child { CHILD } else { 0 };
                let failed = failed.map_or(0, |errno| FAILED | (errno.raw() as u32) << ERRNO_SHIFT);
                end as u32 | DEVALIDATING | child | failed
            }
        }
    }

    fn decode(word: u32) -> Progress {
        let index = (word & INDEX_MASK) as usize;
        if word & DEVALIDATING == 0 {
            return Progress::Validating { next: index };
        }
        let failed = (word & FAILED != 0)
            .then(|| Errno::from_raw((word >> ERRNO_SHIFT & 0xff) as i32).unwrap_or(Errno::Einval));
        Progress::Devalidating {
            end: index,
            child: word & CHILD != 0,
            failed,
        }
    }
}

/// Why a validation walk did not finish.
enum Stop {
    /// It should stop here; entries below `next` hold their references.
    Preempted { next: usize },
    /// It met a refused entry at `index` (the entries below it hold references).
    Failed { error: MmError, index: usize },
}

/// Where a devalidation walk stopped: entries below `end` still hold their references;
/// `child`: the entry at `end` names a sub-table left half torn down.
struct Stopped {
    end: usize,
    child: bool,
}

/// The progress of `info`'s frame, if it is partial.
pub(crate) fn partial(info: &FrameInfo) -> Option<Progress> {
    info.type_info()
        .flags()
        .contains(TypeFlags::PARTIAL)
        .then(|| Progress::decode(info.progress()))
}

impl PvMmu<'_> {
    /// Validates `table` for `page_type` from entry `start` (0 for a table that just took
    /// the type, count 1 without flags; a partial one's `next` when continued), then marks
    /// it validated. Stopped: the frame is left partial and `Restart` returned. Failed:
    /// the entries taken are dropped again (which may stop too, leaving the undo partial
    /// and returning `Restart`) and the frame left untyped.
    pub(crate) fn validate_from<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        page_type: PageType,
        start: usize,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let info = self.info(table)?;
        match self.validate_entries(table, page_type, start, dom, mem) {
            Ok(()) => {
                replace_type(info, |now| now.with_flags(TypeFlags::VALIDATED));
                Ok(())
            }
            Err(Stop::Preempted { next }) => {
                park(info, Progress::Validating { next });
                Err(MmError::Restart)
            }
            Err(Stop::Failed { error, index }) => {
                match self.devalidate_entries(table, page_type, index, mem) {
                    Ok(()) => {
                        // Never reachable by the hardware as a table, but its word held
                        // progress, not a stamp: stamp it again (conservatively, now).
                        mem.type_released(table, page_type);
                        replace_type(info, |_| TypeInfo::NONE);
                        Err(error)
                    }
                    Err(Stopped { end, child }) => {
                        let failed = Some(error.errno());
                        park(info, Progress::Devalidating { end, child, failed });
                        Err(MmError::Restart)
                    }
                }
            }
        }
    }

    /// Devalidates the table `mfn`, whose last type reference was just dropped (count 1
    /// without flags): drops every entry's references and leaves it untyped. Stopped: the
    /// frame is left partial and `Restart` returned.
    pub(crate) fn devalidate<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        page_type: PageType,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let info = self.info(table)?;
        match self.devalidate_entries(table, page_type, ENTRIES, mem) {
            Ok(()) => {
                mem.type_released(table, page_type);
                replace_type(info, |_| TypeInfo::NONE);
                Ok(())
            }
            Err(Stopped { end, child }) => {
                let failed = None;
                park(info, Progress::Devalidating { end, child, failed });
                Err(MmError::Restart)
            }
        }
    }

    /// Finishes the devalidation of `mfn` if it is partial and devalidating: its walk
    /// continues, then its own general reference is dropped. `Ok(Some(errno))` when it was
    /// the undo of a validation that failed with that error; `Ok(None)` when it is done
    /// (or there was nothing to finish); `Restart` when it stopped again.
    pub(crate) fn resume_teardown<M: TableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        mem: &mut M,
    ) -> Result<Option<Errno>, MmError> {
        let info = self.info(mfn)?;
        let Some(Progress::Devalidating { end, child, failed }) = partial(info) else {
            return Ok(None);
        };
        let page_type = claim(info, mfn)?;
        if child {
            let sub_table = Pte(mem.read(mfn, end)).mfn();
            if let Err(error) = self.resume_teardown(sub_table, mem) {
                park(info, Progress::Devalidating { end, child, failed });
                return Err(error);
            }
        }
        match self.devalidate_entries(mfn, page_type, end, mem) {
            Ok(()) => {
                mem.type_released(mfn, page_type);
                replace_type(info, |_| TypeInfo::NONE);
                self.put_page(mfn);
                Ok(failed)
            }
            Err(Stopped { end, child }) => {
                park(info, Progress::Devalidating { end, child, failed });
                Err(MmError::Restart)
            }
        }
    }

    /// Turns a partial validation that nobody will continue (its domain is being
    /// destroyed) into a partial devalidation of the entries it took, then finishes it.
    pub(crate) fn abandon_validation<M: TableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let info = self.info(mfn)?;
        if let Some(Progress::Validating { next }) = partial(info) {
            info.set_progress(
                Progress::Devalidating {
                    end: next,
                    child: false,
                    failed: None,
                }
                .encode(),
            );
        }
        self.resume_teardown(mfn, mem).map(drop)
    }

    /// Finishes the teardown of `mfn` that an operation left half-way (it returned
    /// `Restart` after dropping a reference, e.g. [`PvMmu::put_baseptr`]); does nothing
    /// when `mfn` is not partial and devalidating. Call it again while it returns
    /// `Restart`.
    pub fn finish_teardown<M: TableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.resume_teardown(mfn, mem).map(drop)
    }

    /// Checks entries `start..` of `table` as a table of type `page_type` and takes the
    /// references its present entries need; at the end stores every entry in its
    /// normalized form and installs the hypervisor's fixed entries. An L4 whose slot 511
    /// is not present fails at once.
    fn validate_entries<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        page_type: PageType,
        start: usize,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), Stop> {
        let level = level_of(page_type);
        let mut required = (0..ENTRIES).filter(|&index| must_be_present(page_type, index));
        if start == 0 && required.any(|index| !Pte(mem.read(table, index)).is_present()) {
            let error = MmError::NoWindow(table);
            return Err(Stop::Failed { error, index: 0 });
        }
        for index in (start..ENTRIES).filter(|&i| !self.layout.is_reserved(page_type, i)) {
            let raw = mem.read(table, index);
            match self.take_entry(level, index, raw, dom, mem) {
                Ok(_) => {}
                Err(MmError::Restart) => return Err(Stop::Preempted { next: index }),
                Err(error) => return Err(Stop::Failed { error, index }),
            }
            if index + 1 < ENTRIES && mem.should_preempt() {
                return Err(Stop::Preempted { next: index + 1 });
            }
        }
        for index in 0..ENTRIES {
            let raw = mem.read(table, index);
            let stored = match self.layout.fixed_entry(page_type, index) {
                Some(fixed) => fixed,
                None if Pte(raw).is_present() => normalize(level, raw),
                None => raw,
            };
            if stored != raw {
                mem.write(table, index, stored);
            }
        }
        Ok(())
    }

    /// Drops the references of the guest entries below `end` of the table, from the top.
    fn devalidate_entries<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        page_type: PageType,
        end: usize,
        mem: &mut M,
    ) -> Result<(), Stopped> {
        let level = level_of(page_type);
        for index in (0..end).rev() {
            if self.layout.is_reserved(page_type, index) {
                continue;
            }
            let raw = mem.read(table, index);
            if self.drop_entry(level, raw, mem).is_err() {
                return Err(Stopped {
                    end: index,
                    child: true,
                });
            }
            if index > 0 && mem.should_preempt() {
                return Err(Stopped {
                    end: index,
                    child: false,
                });
            }
        }
        Ok(())
    }

    /// Checks `raw` as guest entry `index` of a `level` table and takes the references it
    /// needs; returns the value to store. `Restart`: the sub-table it names stopped half
    /// way through its validation, and holds the general reference taken for it.
    pub(crate) fn take_entry<M: TableMemory + ?Sized>(
        &self,
        level: Level,
        index: usize,
        raw: u64,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<u64, MmError> {
        match self.layout.check(level, raw)? {
            Checked::NotPresent => Ok(raw),
            Checked::Present(mapping) => {
                self.take_mapping(child_type(level, index), mapping, dom, mem)?;
                Ok(mapping.value)
            }
        }
    }

    /// Drops the references the entry `raw` of a validated `level` table holds.
    /// `Restart`: the sub-table it names was left half torn down, and keeps the entry's
    /// general reference.
    pub(crate) fn drop_entry<M: TableMemory + ?Sized>(
        &self,
        level: Level,
        raw: u64,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let pte = Pte(raw);
        if !pte.is_present() {
            return Ok(());
        }
        let holds_type = level.child().is_some() || pte.is_writable();
        if holds_type {
            self.put_page_type(pte.mfn(), mem)?;
        }
        self.put_page(pte.mfn());
        Ok(())
    }

    /// L1 entries (`child` is `None`): a general reference on the page (owned or shared),
    /// plus a writable-type reference when the mapping is writable. L2-L4: a general and a
    /// `child` type reference on the next-level table, which the domain must own.
    fn take_mapping<M: TableMemory + ?Sized>(
        &self,
        child: Option<PageType>,
        mapping: Mapping,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let mfn = mapping.mfn;
        let (access, want) = match child {
            Some(child) => (Access::Owner, Some(child)),
            None if mapping.writable => (Access::OwnerOrShared, Some(PageType::None)),
            None => (Access::OwnerOrShared, None),
        };
        self.get_page_for(mfn, dom, access)?;
        let Some(want) = want else {
            return Ok(());
        };
        match self.get_page_type(mfn, want, dom, mem) {
            Ok(()) => Ok(()),
            // The general reference went to the sub-table's partial state.
            Err(MmError::Restart) => Err(MmError::Restart),
            Err(error) => {
                self.put_page(mfn);
                Err(match error {
                    MmError::TypeConflict {
                        mfn,
                        have,
                        want: PageType::None,
                    } => MmError::WritableTable { mfn, have },
                    other => other,
                })
            }
        }
    }
}

/// Leaves the frame of `info` partial with `progress` (its type count 1 and one general
/// reference are the partial state's).
fn park(info: &FrameInfo, progress: Progress) {
    info.set_progress(progress.encode());
    replace_type(info, |now| now.with_flags(TypeFlags::PARTIAL));
}

/// Takes over the partial state of `info`'s frame (the flag goes, count 1 stays: the
/// walk is in progress on this CPU again); its page type. `Busy` if someone else did.
pub(crate) fn claim(info: &FrameInfo, mfn: Mfn) -> Result<PageType, MmError> {
    let before = update_type(info, |now| {
        if now.flags().contains(TypeFlags::PARTIAL) {
            Ok(now.with_flags(TypeFlags::empty()))
        } else {
            Err(MmError::Busy(mfn))
        }
    })?;
    Ok(before.page_type())
}

/// The level of a page-table type.
///
/// # Panics
/// If `page_type` is not a page-table type: callers validate only those.
pub(crate) fn level_of(page_type: PageType) -> Level {
    Level::of_page_type(page_type).expect("only page-table types are validated")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_words_round_trip() {
        let all = [
            Progress::Validating { next: 0 },
            Progress::Validating { next: 511 },
            Progress::Devalidating {
                end: 512,
                child: false,
                failed: None,
            },
            Progress::Devalidating {
                end: 7,
                child: true,
                failed: Some(Errno::Eperm),
            },
            Progress::Devalidating {
                end: 0,
                child: false,
                failed: Some(Errno::Einval),
            },
        ];
        for progress in all {
            assert_eq!(Progress::decode(progress.encode()), progress);
        }
    }
}
