//! Validation and devalidation of whole tables, and the references one entry holds.
//!
//! [`crate::refs`] validates a table when it takes a table type at count zero and
//! devalidates it when the last type reference goes; [`crate::update`] takes and drops
//! single entries. Validation either succeeds completely or leaves every count and the
//! table's own contents as they were (sub-tables that were validated on the way and
//! devalidated by the undo keep their stored form: U/S set, G cleared, hypervisor slots
//! filled, which changes nothing the guest relies on). Which type a sub-table takes comes
//! from its parent's level and index ([`crate::policy::child_type`]: a window-L3 under L4
//! slot 511, a plain table elsewhere). Nothing here is public: the hypervisor reaches it
//! only through the reference-counting operations.

use mm::addr::Mfn;
use mm::frame::{DomainId, PageType};

use crate::entry::{Pte, ENTRIES};
use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::policy::{child_type, must_be_present, normalize, Checked, Mapping};
use crate::refs::{Access, PvMmu};

impl PvMmu<'_> {
    /// Checks every guest entry of `table` as a table of type `page_type` and takes the
    /// references its present entries need; then stores the entries in their normalized
    /// form and installs the hypervisor's fixed entries. On failure, drops what it took and
    /// writes nothing. An L4 whose slot 511 is not present fails at once.
    pub(crate) fn validate<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        page_type: PageType,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let level = level_of(page_type);
        let mut required = (0..ENTRIES).filter(|&index| must_be_present(page_type, index));
        if required.any(|index| !Pte(mem.read(table, index)).is_present()) {
            return Err(MmError::NoWindow(table));
        }
        for index in self.guest_indices(page_type) {
            let raw = mem.read(table, index);
            if let Err(error) = self.take_entry(level, index, raw, dom, mem) {
                for taken in self.guest_indices(page_type).take_while(|&i| i < index) {
                    let raw = mem.read(table, taken);
                    self.drop_entry(level, raw, mem);
                }
                return Err(error);
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

    /// Drops the references every guest entry of the validated table of type `page_type`
    /// holds.
    pub(crate) fn devalidate<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        page_type: PageType,
        mem: &mut M,
    ) {
        let level = level_of(page_type);
        for index in self.guest_indices(page_type) {
            let raw = mem.read(table, index);
            self.drop_entry(level, raw, mem);
        }
    }

    /// Checks `raw` as guest entry `index` of a `level` table and takes the references it
    /// needs; returns the value to store.
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
    pub(crate) fn drop_entry<M: TableMemory + ?Sized>(&self, level: Level, raw: u64, mem: &mut M) {
        let pte = Pte(raw);
        if !pte.is_present() {
            return;
        }
        let holds_type = level.child().is_some() || pte.is_writable();
        if holds_type {
            self.put_page_type(pte.mfn(), mem);
        }
        self.put_page(pte.mfn());
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
        self.get_page_type(mfn, want, dom, mem).map_err(|error| {
            self.put_page(mfn);
            match error {
                MmError::TypeConflict {
                    mfn,
                    have,
                    want: PageType::None,
                } => MmError::WritableTable { mfn, have },
                other => other,
            }
        })
    }

    /// The indices of a table of type `page_type` the guest controls.
    fn guest_indices(&self, page_type: PageType) -> impl Iterator<Item = usize> + '_ {
        (0..ENTRIES).filter(move |&index| !self.layout.is_reserved(page_type, index))
    }
}

/// The level of a page-table type.
///
/// # Panics
/// If `page_type` is not a page-table type: callers validate only those.
pub(crate) fn level_of(page_type: PageType) -> Level {
    Level::of_page_type(page_type).expect("only page-table types are validated")
}
