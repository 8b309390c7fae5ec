//! Validation and devalidation of whole tables, and the references one entry holds.
//!
//! [`crate::refs`] validates a table when it takes a table type at count zero and
//! devalidates it when the last type reference goes; [`crate::update`] takes and drops
//! single entries. Validation either succeeds completely or leaves every count and the
//! table's own contents as they were (sub-tables that were validated on the way and
//! devalidated by the undo keep their stored form: U/S set, G cleared, hypervisor slots
//! filled, which changes nothing the guest relies on). Nothing here is public: the
//! hypervisor reaches it only through the reference-counting operations.

use mm::addr::Mfn;
use mm::frame::{DomainId, PageType};

use crate::entry::{Pte, ENTRIES};
use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::policy::{normalize, Checked, Mapping};
use crate::refs::{Access, PvMmu};

impl PvMmu<'_> {
    /// Checks every guest entry of `table` as a `level` table and takes the references its
    /// present entries need; then stores the entries in their normalized form and installs
    /// the hypervisor's fixed entries. On failure, drops what it took and writes nothing.
    pub(crate) fn validate<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        level: Level,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        for index in self.guest_indices(level) {
            let raw = mem.read(table, index);
            if let Err(error) = self.take_entry(level, raw, dom, mem) {
                for taken in self.guest_indices(level).take_while(|&i| i < index) {
                    let raw = mem.read(table, taken);
                    self.drop_entry(level, raw, mem);
                }
                return Err(error);
            }
        }
        for index in 0..ENTRIES {
            let raw = mem.read(table, index);
            let stored = match self.layout.fixed_entry(level, index) {
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

    /// Drops the references every guest entry of the validated `level` table holds.
    pub(crate) fn devalidate<M: TableMemory + ?Sized>(
        &self,
        table: Mfn,
        level: Level,
        mem: &mut M,
    ) {
        for index in self.guest_indices(level) {
            let raw = mem.read(table, index);
            self.drop_entry(level, raw, mem);
        }
    }

    /// Checks `raw` as a guest entry of a `level` table and takes the references it needs;
    /// returns the value to store.
    pub(crate) fn take_entry<M: TableMemory + ?Sized>(
        &self,
        level: Level,
        raw: u64,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<u64, MmError> {
        match self.layout.check(level, raw)? {
            Checked::NotPresent => Ok(raw),
            Checked::Present(mapping) => {
                self.take_mapping(level, mapping, dom, mem)?;
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

    /// L1: a general reference on the page (owned or shared), plus a writable-type
    /// reference when the mapping is writable. L2-L4: a general and a type reference on
    /// the next-level table, which the domain must own.
    fn take_mapping<M: TableMemory + ?Sized>(
        &self,
        level: Level,
        mapping: Mapping,
        dom: DomainId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let mfn = mapping.mfn;
        let (access, want) = match level.child() {
            Some(child) => (Access::Owner, Some(child.page_type())),
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

    /// The indices of a `level` table the guest controls.
    fn guest_indices(&self, level: Level) -> impl Iterator<Item = usize> + '_ {
        (0..ENTRIES).filter(move |&index| !self.layout.is_reserved(level, index))
    }
}
