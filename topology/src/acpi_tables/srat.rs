//! The SRAT (System Resource Affinity Table): which proximity domain each processor and each
//! memory range belongs to.
//!
//! Decoded by the ACPI collection step from a table already mapped and checksummed (the
//! `acpi` crate does not parse it). Disabled processor entries are dropped; memory entries
//! keep their flags for the topology builder to judge. It never reads outside the table.

use alloc::vec::Vec;

use super::bytes::{u32_at, u64_at, u8_at};
use super::errors::{AcpiWarning, TableProblem};
use super::sdt::{Entries, Entry, SdtHeader, Signature};
use crate::ids::{ApicId, MemoryRange};

/// Offset of the first entry, after the header and 12 reserved bytes (ACPI 6.5 5.2.16).
const ENTRIES: usize = 48;

/// Entry types and their lengths (ACPI 6.5 section 5.2.16).
mod entry {
    pub const PROCESSOR_APIC: u8 = 0;
    pub const PROCESSOR_APIC_LEN: usize = 16;
    pub const MEMORY: u8 = 1;
    pub const MEMORY_LEN: usize = 40;
    pub const PROCESSOR_X2APIC: u8 = 2;
    pub const PROCESSOR_X2APIC_LEN: usize = 24;
}

/// Flags bit 0 of every entry: the entry is in use.
const ENABLED: u32 = 1 << 0;
/// Memory entry flags.
const HOT_PLUGGABLE: u32 = 1 << 1;
const NON_VOLATILE: u32 = 1 << 2;
/// From this table revision on, processor APIC entries carry a 32-bit proximity domain;
/// before it only the low 8 bits are defined.
const FULL_DOMAIN_REVISION: u8 = 2;

/// A processor's proximity domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuAffinity {
    pub apic_id: ApicId,
    pub proximity_domain: u32,
}

/// A memory range's proximity domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryAffinity {
    pub range: MemoryRange,
    pub proximity_domain: u32,
    pub enabled: bool,
    pub hotplug: bool,
    pub nonvolatile: bool,
}

/// What the SRAT says, in table order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NumaInfo {
    /// Enabled processor entries only.
    pub cpus: Vec<CpuAffinity>,
    pub memory: Vec<MemoryAffinity>,
}

/// Decodes a mapped, checksummed SRAT.
pub(crate) fn decode(
    table: &[u8],
    warnings: &mut Vec<AcpiWarning>,
) -> Result<NumaInfo, TableProblem> {
    let header = SdtHeader::decode(table).filter(|_| table.len() >= ENTRIES);
    let header = header.ok_or(TableProblem::too_short(table))?;
    let mut numa = NumaInfo::default();
    for entry in Entries::new(table, Signature::SRAT, ENTRIES) {
        match entry {
            Ok(entry) => numa.add(&entry, header.revision, warnings),
            Err(warning) => warnings.push(warning),
        }
    }
    Ok(numa)
}

impl NumaInfo {
    fn add(&mut self, entry: &Entry<'_>, revision: u8, warnings: &mut Vec<AcpiWarning>) {
        let decoded = match entry.entry_type {
            entry::PROCESSOR_APIC => {
                processor_apic(entry.bytes, revision).map(|c| self.cpus.extend(c))
            }
            entry::PROCESSOR_X2APIC => processor_x2apic(entry.bytes).map(|c| self.cpus.extend(c)),
            entry::MEMORY => memory(entry.bytes).map(|m| self.memory.push(m)),
            _ => Some(()),
        };
        if decoded.is_none() {
            warnings.push(entry.too_short(Signature::SRAT));
        }
    }
}

/// `Some(None)` for a well-formed but disabled entry.
fn processor_apic(bytes: &[u8], revision: u8) -> Option<Option<CpuAffinity>> {
    (bytes.len() >= entry::PROCESSOR_APIC_LEN).then_some(())?;
    let low = u32::from(u8_at(bytes, 2)?);
    let high = u32_at(bytes, 8)? >> 8; // bytes 9..12, over the SAPIC EID at byte 8
    let proximity_domain = if revision >= FULL_DOMAIN_REVISION {
        high << 8 | low
    } else {
        low
    };
    let cpu = CpuAffinity {
        apic_id: ApicId(u8_at(bytes, 3)?.into()),
        proximity_domain,
    };
    Some((u32_at(bytes, 4)? & ENABLED != 0).then_some(cpu))
}

/// `Some(None)` for a well-formed but disabled entry.
fn processor_x2apic(bytes: &[u8]) -> Option<Option<CpuAffinity>> {
    (bytes.len() >= entry::PROCESSOR_X2APIC_LEN).then_some(())?;
    let cpu = CpuAffinity {
        apic_id: ApicId(u32_at(bytes, 8)?),
        proximity_domain: u32_at(bytes, 4)?,
    };
    Some((u32_at(bytes, 12)? & ENABLED != 0).then_some(cpu))
}

fn memory(bytes: &[u8]) -> Option<MemoryAffinity> {
    (bytes.len() >= entry::MEMORY_LEN).then_some(())?;
    let flags = u32_at(bytes, 28)?;
    Some(MemoryAffinity {
        range: MemoryRange {
            base: u64_at(bytes, 8)?,
            length: u64_at(bytes, 16)?,
        },
        proximity_domain: u32_at(bytes, 2)?,
        enabled: flags & ENABLED != 0,
        hotplug: flags & HOT_PLUGGABLE != 0,
        nonvolatile: flags & NON_VOLATILE != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi_tables::fixtures::{self, srat_entry as e};

    fn decode_entries(revision: u8, entries: &[Vec<u8>]) -> (NumaInfo, Vec<AcpiWarning>) {
        let mut warnings = Vec::new();
        let numa = decode(&fixtures::srat(revision, entries), &mut warnings).unwrap();
        (numa, warnings)
    }

    fn cpu(apic_id: u32, proximity_domain: u32) -> CpuAffinity {
        CpuAffinity {
            apic_id: ApicId(apic_id),
            proximity_domain,
        }
    }

    #[test]
    fn two_nodes() {
        let (numa, warnings) = decode_entries(3, &fixtures::two_node_srat_entries());
        assert!(warnings.is_empty());
        assert_eq!(numa.cpus, [cpu(0, 0), cpu(1, 0), cpu(2, 1), cpu(3, 1)]);
        let ranges: Vec<_> = numa
            .memory
            .iter()
            .map(|m| (m.range, m.proximity_domain))
            .collect();
        assert_eq!(
            ranges,
            [
                (
                    MemoryRange {
                        base: 0,
                        length: 0xa_0000
                    },
                    0
                ),
                (
                    MemoryRange {
                        base: 0x10_0000,
                        length: 0x3ff0_0000
                    },
                    0
                ),
                (
                    MemoryRange {
                        base: 0x4000_0000,
                        length: 0x4000_0000
                    },
                    1
                ),
            ]
        );
        assert!(numa.memory.iter().all(|m| m.enabled && !m.hotplug));
    }

    #[test]
    fn memory_flags() {
        let (numa, _) = decode_entries(3, &[e::memory(2, 0x1_0000_0000, 0x1000, 0b111)]);
        let m = numa.memory[0];
        assert_eq!((m.enabled, m.hotplug, m.nonvolatile), (true, true, true));
        assert_eq!(
            m.range,
            MemoryRange {
                base: 0x1_0000_0000,
                length: 0x1000
            }
        );
    }

    #[test]
    fn high_domain_bytes_only_count_from_revision_2() {
        let entries = [e::processor_apic(0x0102_0304, 7, 1)];
        assert_eq!(decode_entries(1, &entries).0.cpus, [cpu(7, 0x04)]);
        assert_eq!(decode_entries(2, &entries).0.cpus, [cpu(7, 0x0102_0304)]);
    }

    #[test]
    fn x2apic_affinity_and_disabled_entries() {
        let (numa, warnings) = decode_entries(
            3,
            &[
                e::processor_x2apic(5, 0x1_0000, 1),
                e::processor_x2apic(6, 0x1_0001, 0),
                e::processor_apic(1, 2, 0),
            ],
        );
        assert!(warnings.is_empty());
        assert_eq!(numa.cpus, [cpu(0x1_0000, 5)]);
    }

    #[test]
    fn short_and_zero_length_entries() {
        let (numa, warnings) = decode_entries(
            3,
            &[
                e::processor_apic(1, 1, 1),
                fixtures::madt_entry::raw(entry::MEMORY, &[0; 10]),
                alloc::vec![entry::PROCESSOR_APIC, 0],
                e::processor_apic(1, 2, 1),
            ],
        );
        assert_eq!(numa.cpus, [cpu(1, 1)]);
        assert!(matches!(
            warnings[..],
            [
                AcpiWarning::EntryTooShort {
                    entry_type: 1,
                    offset: 64,
                    length: 12,
                    ..
                },
                AcpiWarning::BadEntryLength {
                    offset: 76,
                    length: 0,
                    ..
                },
            ]
        ));
    }

    #[test]
    fn table_without_fixed_part_is_refused() {
        let mut warnings = Vec::new();
        let short = &fixtures::srat(3, &[])[..44];
        assert_eq!(
            decode(short, &mut warnings),
            Err(TableProblem::TooShort { length: 44 })
        );
    }
}
