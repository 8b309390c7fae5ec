//! One checked page-table entry update: `mmu_update`'s `MMU_NORMAL_PT_UPDATE` and
//! `MMU_PT_UPDATE_PRESERVE_AD` commands, the last step of `update_va_mapping`, and the
//! write of an emulated guest instruction to one of its page tables (writable page
//! tables: [`PvMmu::mod_table_entry_only`], which never writes a frame that is not one).
//!
//! The hypervisor decodes the request (machine address of the entry: frame and index)
//! and calls [`PvMmu::mod_entry`] with the domain's page-table lock held. An update either
//! happens completely (new references taken, entry written, old references dropped) or
//! not at all; one that stops half-way returns `Restart` and completes when called again
//! with the same arguments.

use mm::addr::Mfn;
use mm::frame::{DomainId, PageType, TypeFlags};

use crate::entry::{Pte, ENTRIES};
use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::policy::must_be_present;
use crate::refs::{replace_type, type_after_get, update_type, Access, PvMmu};
use crate::validate::{level_of, partial, Progress};
use crate::walk::EntrySlot;

/// What happens to the accessed and dirty bits of the entry being replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessedDirty {
    /// The new value is stored as given (`MMU_NORMAL_PT_UPDATE`).
    Overwrite,
    /// The entry's current A and D bits are OR-ed into the new value
    /// (`MMU_PT_UPDATE_PRESERVE_AD`).
    Preserve,
    /// The new value is stored only if the entry still holds `expected`, else
    /// [`MmError::Changed`] and nothing changes: an emulated read-modify-write of the
    /// guest (writable page tables) whose result must not overwrite an accessed or dirty
    /// bit a processor set after the value was read. Atomic with the processor at L1
    /// (where it sets the dirty bit); at the other levels the comparison is made under the
    /// caller's lock and the store is plain (a processor sets only the accessed bit there).
    CompareExchange {
        /// The value the new one was computed from.
        expected: u64,
    },
}

/// Which frames an update may write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A page table (checked update) or any other frame the domain may write (plain).
    AnyPage,
    /// A page table only.
    TableOnly,
}

impl PvMmu<'_> {
    /// Sets entry `index` of frame `table`, owned by `dom`, to `new`.
    ///
    /// If `table` is a validated page table, `new` is checked under its level's rules
    /// (hypervisor slots are refused, and so is clearing L4 slot 511; a new entry there
    /// must name a window-L3), the references it needs are taken *before* the
    /// old entry's are dropped (so rewriting an entry with itself leaves every count as it
    /// was), and the normalized value is written. Otherwise, as in Xen, `table` is an
    /// ordinary page: it takes a writable type reference for the duration (refused for
    /// descriptor and shared pages) and the 8 bytes are written unchecked.
    ///
    /// `Err(Restart)`: the validation of the new entry's sub-table stopped half-way
    /// (nothing written), or the teardown of the old entry's did (written, and the table
    /// keeps a note of the sub-table, [`TypeFlags::TEARDOWN`]), or a teardown the frame had
    /// to finish first did. Calling it again with the same arguments finishes it.
    pub fn mod_entry<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        index: usize,
        new: u64,
        ad: AccessedDirty,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.update_entry(table, index, new, ad, dom, mem, Target::AnyPage)
    }

    /// [`Self::mod_entry`] for writable-page-table emulation: the same update, but only of
    /// an entry of a validated page table of `dom` in use (any level); a frame of any other
    /// type (or untyped) is refused with [`MmError::NotATable`] and nothing changes, where
    /// `mod_entry` would write it as a plain page. The caller learns the table's level from
    /// [`Self::table_level`] first; this checks it again under the type reference it takes.
    pub fn mod_table_entry_only<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        index: usize,
        new: u64,
        ad: AccessedDirty,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.update_entry(table, index, new, ad, dom, mem, Target::TableOnly)
    }

    /// The level of `table` if it is a page table of `dom` in use (validated, type count
    /// above zero, not half torn down); `NotATable` otherwise (`NotOwner` and the like for
    /// a frame `dom` does not own). Reads only.
    pub fn table_level(&self, table: Mfn, dom: DomainId) -> Result<Level, MmError> {
        self.check_owner(table, dom)?;
        let info = self.info(table)?;
        let now = info.type_info();
        let in_use = now.count() > 0
            && now.flags().contains(TypeFlags::VALIDATED)
            && !matches!(partial(info), Some(Progress::Devalidating { .. }));
        match Level::of_page_type(now.page_type()) {
            Some(level) if in_use => Ok(level),
            _ => Err(MmError::NotATable(table)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn update_entry<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        index: usize,
        new: u64,
        ad: AccessedDirty,
        dom: DomainId,
        mem: &mut M,
        target: Target,
    ) -> Result<(), MmError> {
        if index >= ENTRIES {
            return Err(MmError::BadIndex(index));
        }
        self.get_page_for(table, dom, Access::Owner)?;
        if let Err(error) = self.finish_noted_teardown(table, mem) {
            self.put_page(table);
            return Err(error);
        }
        let result = match self.hold_table(table) {
            Ok(Some(page_type)) => {
                let slot = EntrySlot { table, index };
                let result = self.mod_table_entry(slot, page_type, new, ad, dom, mem);
                // Never the last type reference: the table was in use before this one.
                if self.put_page_type(table, mem).is_err() {
                    return result;
                }
                result
            }
            Ok(None) if target == Target::TableOnly => Err(MmError::NotATable(table)),
            Ok(None) => match self.write_plain_page(table, index, new, dom, mem) {
                // The general reference went to the frame's partial state.
                Err(MmError::Restart) => return Err(MmError::Restart),
                other => other,
            },
            Err(error) => Err(error),
        };
        self.put_page(table);
        result
    }

    /// Finishes the teardown of the sub-table an earlier update of `table` left half
    /// done ([`TypeFlags::TEARDOWN`]), and clears the note.
    fn finish_noted_teardown<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let info = self.info(table)?;
        if !info.type_info().flags().contains(TypeFlags::TEARDOWN) {
            return Ok(());
        }
        self.finish_teardown(Mfn(u64::from(info.progress())), mem)?;
        replace_type(info, |now| {
            now.with_flags(now.flags() - TypeFlags::TEARDOWN)
        });
        Ok(())
    }

    /// Takes a type reference on `table` if it is a page table in use, and says of which
    /// type; `Ok(None)` (nothing taken) for an untyped or otherwise typed frame, `Busy`
    /// for a table another CPU is validating or devalidating.
    fn hold_table(&self, table: Mfn) -> Result<Option<PageType>, MmError> {
        let info = self.info(table)?;
        let now = info.type_info();
        let page_type = now.page_type();
        if Level::of_page_type(page_type).is_none() || now.count() == 0 {
            return Ok(None);
        }
        if let Some(Progress::Devalidating { .. }) = partial(info) {
            // Half torn down: no longer a table; the plain write finishes the teardown.
            return Ok(None);
        }
        update_type(info, |now| match now.count() {
            0 => Err(MmError::Busy(table)),
            _ => type_after_get(table, now, page_type),
        })?;
        Ok(Some(page_type))
    }

    /// The update of a validated table of type `page_type`, which the caller holds.
    /// Hypervisor entries are refused, and so is a value that is not present where one
    /// must be (L4 slot 511).
    fn mod_table_entry<M: TableMemory + ?Sized>(
        &self,
        EntrySlot { table, index }: EntrySlot,
        page_type: PageType,
        new: u64,
        ad: AccessedDirty,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let level = level_of(page_type);
        if self.layout.is_reserved(page_type, index) {
            return Err(MmError::ReservedSlot { level, index });
        }
        if must_be_present(page_type, index) && !Pte(new).is_present() {
            return Err(MmError::NoWindow(table));
        }
        let old = mem.read(table, index);
        if let AccessedDirty::CompareExchange { expected } = ad {
            if old != expected {
                return Err(MmError::Changed(table));
            }
        }
        let stored = self.take_entry(level, index, new, dom, mem)?;
        match ad {
            AccessedDirty::Overwrite => mem.write(table, index, stored),
            AccessedDirty::Preserve => mem.write_preserving_ad(table, index, stored),
            AccessedDirty::CompareExchange { expected } if level == Level::L1 => {
                if !mem.compare_exchange(table, index, expected, stored) {
                    // A processor changed it since: give back what the new entry took
                    // (a leaf's references, whose release never walks a table).
                    self.drop_entry(level, stored, mem)?;
                    return Err(MmError::Changed(table));
                }
            }
            AccessedDirty::CompareExchange { .. } => mem.write(table, index, stored),
        }
        self.drop_entry(level, old, mem).inspect_err(|_| {
            // The old sub-table keeps the old entry's reference until its teardown ends:
            // note it in the table, so that the next update finishes it.
            if let Ok(sub_table) = u32::try_from(Pte(old).mfn().0) {
                let info = self.info(table).expect("the table was just read");
                info.set_progress(sub_table);
                replace_type(info, |now| {
                    now.with_flags(now.flags() | TypeFlags::TEARDOWN)
                });
            }
        })
    }

    /// The update of a frame that is not a page table: an unchecked write under a
    /// writable type reference.
    fn write_plain_page<M: TableMemory + ?Sized>(
        &self,
        page: Mfn,
        index: usize,
        new: u64,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.get_page_type(page, PageType::None, dom, mem)?;
        mem.write(page, index, new);
        // A writable type reference: dropping it never walks anything.
        self.put_page_type(page, mem)
    }
}
