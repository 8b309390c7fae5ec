//! The HPET description table: where the High Precision Event Timer block is and what it
//! offers.
//!
//! Decoded by the ACPI collection step from a table already mapped and checksummed. Parsed
//! here rather than by `acpi::HpetInfo`, which asserts (panics) on a block outside system
//! memory; this decoder refuses such a table with a warning instead.

use super::bytes::{u16_at, u32_at, u64_at, u8_at};
use super::errors::TableProblem;

/// Offsets (IA-PC HPET specification 1.0a, table 3).
mod offsets {
    pub const EVENT_TIMER_BLOCK_ID: usize = 36;
    pub const ADDRESS_SPACE: usize = 40;
    pub const ADDRESS: usize = 44;
    pub const HPET_NUMBER: usize = 52;
    pub const MIN_TICK: usize = 53;
}

/// Generic Address Structure address space id for system memory.
const SYSTEM_MEMORY: u8 = 0;

/// The HPET block described by the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HpetInfo {
    /// Physical address of the register block.
    pub base_address: u64,
    pub hpet_number: u8,
    /// Minimum main-counter ticks between periodic interrupts without losing any.
    pub min_tick: u16,
    /// Number of comparators (timers).
    pub comparators: u8,
    pub counter_64bit: bool,
    /// The block can take over IRQ 0 and IRQ 8 (legacy replacement routing).
    pub legacy_replacement: bool,
    pub pci_vendor_id: u16,
}

/// Decodes a mapped, checksummed HPET table.
pub(crate) fn decode(table: &[u8]) -> Result<HpetInfo, TableProblem> {
    let too_short = TableProblem::too_short(table);
    let block_id = u32_at(table, offsets::EVENT_TIMER_BLOCK_ID).ok_or(too_short)?;
    let address_space = u8_at(table, offsets::ADDRESS_SPACE).ok_or(too_short)?;
    let base_address = u64_at(table, offsets::ADDRESS).ok_or(too_short)?;
    let hpet_number = u8_at(table, offsets::HPET_NUMBER).ok_or(too_short)?;
    let min_tick = u16_at(table, offsets::MIN_TICK).ok_or(too_short)?;
    if address_space != SYSTEM_MEMORY {
        return Err(TableProblem::NotSystemMemory { address_space });
    }
    Ok(HpetInfo {
        base_address,
        hpet_number,
        min_tick,
        comparators: ((block_id >> 8) & 0x1f) as u8 + 1,
        counter_64bit: block_id & (1 << 13) != 0,
        legacy_replacement: block_id & (1 << 15) != 0,
        pci_vendor_id: (block_id >> 16) as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi_tables::fixtures;

    #[test]
    fn qemu_hpet() {
        let hpet = decode(&fixtures::hpet(0, 0xfed0_0000)).unwrap();
        assert_eq!(
            hpet,
            HpetInfo {
                base_address: 0xfed0_0000,
                hpet_number: 0,
                min_tick: 128,
                comparators: 3,
                counter_64bit: true,
                legacy_replacement: true,
                pci_vendor_id: 0x8086,
            }
        );
    }

    #[test]
    fn io_space_block_is_refused() {
        assert_eq!(
            decode(&fixtures::hpet(1, 0xfed0_0000)),
            Err(TableProblem::NotSystemMemory { address_space: 1 })
        );
    }

    #[test]
    fn truncated_table_is_refused() {
        let table = fixtures::hpet(0, 0xfed0_0000);
        assert_eq!(
            decode(&table[..54]),
            Err(TableProblem::TooShort { length: 54 })
        );
    }
}
