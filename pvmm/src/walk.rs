//! Finding the L1 entry that maps a virtual address in a validated tree, for
//! `update_va_mapping` (which then updates that entry with [`PvMmu::mod_entry`]).
//!
//! The hypervisor calls [`PvMmu::l1_entry_of`] with the vCPU's current base pointer and
//! the domain's page-table lock held. It only reads: it takes no reference and never
//! descends through a hypervisor slot (L4 slots 256-271, the window-L3's entry 511).

use mm::addr::Mfn;
use mm::frame::{PageType, TypeFlags};

use crate::entry::Pte;
use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::policy::child_type;
use crate::refs::PvMmu;

/// Where an entry lives: a table frame and an index in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntrySlot {
    /// The table.
    pub table: Mfn,
    /// The entry's index (0..512).
    pub index: usize,
}

impl PvMmu<'_> {
    /// The L1 entry that maps `virtual_address` under the validated L4 table `l4`.
    /// Fails if the address is not canonical, lies in a hypervisor slot (of the table on
    /// the way: the type each one has under its parent, [`child_type`]), or an L4, L3 or
    /// L2 entry on the way is not present.
    pub fn l1_entry_of<M: TableMemory + ?Sized>(
        &self,
        l4: Mfn,
        virtual_address: u64,
        mem: &M,
    ) -> Result<EntrySlot, MmError> {
        if !is_canonical(virtual_address) {
            return Err(MmError::NonCanonical(virtual_address));
        }
        self.check_validated_l4(l4)?;
        let mut table = l4;
        let mut page_type = PageType::L4;
        for level in [Level::L4, Level::L3, Level::L2] {
            let index = level.index_of(virtual_address);
            if self.layout.is_reserved(page_type, index) {
                return Err(MmError::ReservedSlot { level, index });
            }
            let pte = Pte(mem.read(table, index));
            if !pte.is_present() {
                return Err(MmError::NotMapped {
                    level,
                    virtual_address,
                });
            }
            table = pte.mfn();
            page_type = child_type(level, index).unwrap_or(PageType::L1);
        }
        Ok(EntrySlot {
            table,
            index: Level::L1.index_of(virtual_address),
        })
    }

    /// Fails unless `l4` is a validated L4 table: below it, every present entry names a
    /// validated table of the next level.
    fn check_validated_l4(&self, l4: Mfn) -> Result<(), MmError> {
        let now = self.info(l4)?.type_info();
        let validated = now.count() > 0 && now.flags().contains(TypeFlags::VALIDATED);
        match Level::of_page_type(now.page_type()) {
            Some(Level::L4) if validated => Ok(()),
            Some(Level::L4) => Err(MmError::Busy(l4)),
            _ => Err(MmError::TypeConflict {
                mfn: l4,
                have: now.page_type(),
                want: Level::L4.page_type(),
            }),
        }
    }
}

/// Whether bits 48-63 of `address` all equal bit 47.
const fn is_canonical(address: u64) -> bool {
    let top = address >> 47;
    top == 0 || top == 0x1_ffff
}
