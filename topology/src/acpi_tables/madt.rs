//! The MADT ("APIC" table): processors, I/O APICs, ISA interrupt overrides and the local
//! APIC address.
//!
//! Decoded by the ACPI collection step from a table already mapped and checksummed. It skips
//! unknown or short entries, stops at a malformed entry length, and folds an x2APIC entry that
//! repeats an xAPIC entry's APIC id into one processor. It never reads outside the table.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::bytes::{u16_at, u32_at, u64_at, u8_at};
use super::errors::{AcpiWarning, TableProblem};
use super::sdt::{Entries, Entry, Signature};
use crate::ids::ApicId;

/// Offsets of the MADT's fixed part (ACPI 6.5 section 5.2.12).
mod offsets {
    pub const LOCAL_APIC_ADDRESS: usize = 36;
    pub const FLAGS: usize = 40;
    pub const ENTRIES: usize = 44;
}

/// Entry types and their minimum lengths (ACPI 6.5 table 5.20).
mod entry {
    pub const LOCAL_APIC: u8 = 0;
    pub const LOCAL_APIC_LEN: usize = 8;
    pub const IO_APIC: u8 = 1;
    pub const IO_APIC_LEN: usize = 12;
    pub const INTERRUPT_OVERRIDE: u8 = 2;
    pub const INTERRUPT_OVERRIDE_LEN: usize = 10;
    pub const LOCAL_APIC_ADDRESS_OVERRIDE: u8 = 5;
    pub const LOCAL_APIC_ADDRESS_OVERRIDE_LEN: usize = 12;
    pub const LOCAL_X2APIC: u8 = 9;
    pub const LOCAL_X2APIC_LEN: usize = 16;
}

/// MADT flags bit 0: the machine also has the legacy dual 8259 PICs.
const PCAT_COMPAT: u32 = 1 << 0;
/// Local (x2)APIC flags bit 0: the processor is usable now.
const CPU_ENABLED: u32 = 1 << 0;
/// Local (x2)APIC flags bit 1: a disabled processor can be brought online later.
const CPU_ONLINE_CAPABLE: u32 = 1 << 1;
/// The only bus an interrupt source override may name: ISA.
const ISA_BUS: u8 = 0;
const XAPIC_BROADCAST: u32 = 0xff;
const X2APIC_BROADCAST: u32 = u32::MAX;

/// One processor listed in the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MadtCpu {
    pub acpi_uid: u32,
    pub apic_id: ApicId,
    pub enabled: bool,
    /// Disabled now but hot-pluggable (ACPI 6.3 and later).
    pub online_capable: bool,
    /// Listed by a local x2APIC entry (type 9) rather than a local APIC entry (type 0).
    pub x2apic_entry: bool,
}

/// One I/O APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicInfo {
    pub id: u8,
    pub address: u32,
    /// First global system interrupt this I/O APIC serves.
    pub gsi_base: u32,
}

/// An ISA IRQ that is not wired to the GSI of the same number, or not with ISA polarity
/// and trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqOverride {
    pub bus_irq: u8,
    pub gsi: u32,
    /// MPS INTI flags: bits 1:0 polarity, bits 3:2 trigger mode.
    pub flags: u16,
}

impl IrqOverride {
    /// Polarity is "active low" (0b11); otherwise active high, as ISA is.
    pub fn active_low(&self) -> bool {
        self.flags & 0b11 == 0b11
    }

    /// Trigger mode is "level" (0b11); otherwise edge, as ISA is.
    pub fn level_triggered(&self) -> bool {
        (self.flags >> 2) & 0b11 == 0b11
    }
}

/// Everything this crate takes from the MADT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Madt {
    pub local_apic_address: u64,
    pub legacy_pics: bool,
    pub cpus: Vec<MadtCpu>,
    pub io_apics: Vec<IoApicInfo>,
    pub overrides: Vec<IrqOverride>,
}

/// Decodes a mapped, checksummed MADT.
pub(crate) fn decode(table: &[u8], warnings: &mut Vec<AcpiWarning>) -> Result<Madt, TableProblem> {
    let too_short = TableProblem::too_short(table);
    let local_apic_address = u32_at(table, offsets::LOCAL_APIC_ADDRESS).ok_or(too_short)?;
    let flags = u32_at(table, offsets::FLAGS).ok_or(too_short)?;
    let mut madt = Madt {
        local_apic_address: local_apic_address.into(),
        legacy_pics: flags & PCAT_COMPAT != 0,
        ..Madt::default()
    };
    let mut cpus = CpuList::default();
    for entry in Entries::new(table, Signature::MADT, offsets::ENTRIES) {
        match entry {
            Ok(entry) => madt.add(&entry, &mut cpus, warnings),
            Err(warning) => warnings.push(warning),
        }
    }
    madt.cpus = cpus.cpus;
    Ok(madt)
}

impl Madt {
    fn add(&mut self, entry: &Entry<'_>, cpus: &mut CpuList, warnings: &mut Vec<AcpiWarning>) {
        let decoded = match entry.entry_type {
            entry::LOCAL_APIC => local_apic(entry.bytes).map(|cpu| cpus.add(cpu, warnings)),
            entry::LOCAL_X2APIC => local_x2apic(entry.bytes).map(|cpu| cpus.add(cpu, warnings)),
            entry::IO_APIC => io_apic(entry.bytes).map(|io_apic| self.io_apics.push(io_apic)),
            entry::INTERRUPT_OVERRIDE => {
                interrupt_override(entry.bytes).map(|o| self.add_override(o, warnings))
            }
            entry::LOCAL_APIC_ADDRESS_OVERRIDE => local_apic_address_override(entry.bytes)
                .map(|address| self.local_apic_address = address),
            _ => Some(()),
        };
        if decoded.is_none() {
            warnings.push(entry.too_short(Signature::MADT));
        }
    }

    fn add_override(&mut self, (bus, irq): (u8, IrqOverride), warnings: &mut Vec<AcpiWarning>) {
        if bus == ISA_BUS {
            self.overrides.push(irq);
        } else {
            warnings.push(AcpiWarning::OverrideNotIsa {
                bus,
                source: irq.bus_irq,
            });
        }
    }
}

/// Processors in MADT order, one per APIC id.
#[derive(Default)]
struct CpuList {
    cpus: Vec<MadtCpu>,
    /// APIC id -> whether its entry was an x2APIC one.
    seen: BTreeMap<u32, bool>,
}

impl CpuList {
    fn add(&mut self, cpu: MadtCpu, warnings: &mut Vec<AcpiWarning>) {
        let broadcast = if cpu.x2apic_entry {
            X2APIC_BROADCAST
        } else {
            XAPIC_BROADCAST
        };
        if cpu.apic_id.0 == broadcast {
            if cpu.enabled {
                warnings.push(AcpiWarning::BroadcastApicId {
                    acpi_uid: cpu.acpi_uid,
                });
            }
            return;
        }
        match self.seen.get(&cpu.apic_id.0) {
            None => {
                self.seen.insert(cpu.apic_id.0, cpu.x2apic_entry);
                self.cpus.push(cpu);
            }
            // The same processor described by both an xAPIC and an x2APIC entry.
            Some(&x2apic_entry) if x2apic_entry != cpu.x2apic_entry => {}
            Some(_) => warnings.push(AcpiWarning::DuplicateApicId {
                apic_id: cpu.apic_id,
            }),
        }
    }
}

fn cpu_from(acpi_uid: u32, apic_id: u32, flags: u32, x2apic_entry: bool) -> MadtCpu {
    MadtCpu {
        acpi_uid,
        apic_id: ApicId(apic_id),
        enabled: flags & CPU_ENABLED != 0,
        online_capable: flags & CPU_ONLINE_CAPABLE != 0,
        x2apic_entry,
    }
}

fn local_apic(bytes: &[u8]) -> Option<MadtCpu> {
    (bytes.len() >= entry::LOCAL_APIC_LEN).then_some(())?;
    let (uid, apic_id, flags) = (u8_at(bytes, 2)?, u8_at(bytes, 3)?, u32_at(bytes, 4)?);
    Some(cpu_from(uid.into(), apic_id.into(), flags, false))
}

fn local_x2apic(bytes: &[u8]) -> Option<MadtCpu> {
    (bytes.len() >= entry::LOCAL_X2APIC_LEN).then_some(())?;
    let (apic_id, flags, uid) = (u32_at(bytes, 4)?, u32_at(bytes, 8)?, u32_at(bytes, 12)?);
    Some(cpu_from(uid, apic_id, flags, true))
}

fn io_apic(bytes: &[u8]) -> Option<IoApicInfo> {
    (bytes.len() >= entry::IO_APIC_LEN).then_some(())?;
    Some(IoApicInfo {
        id: u8_at(bytes, 2)?,
        address: u32_at(bytes, 4)?,
        gsi_base: u32_at(bytes, 8)?,
    })
}

/// The override and the bus it names.
fn interrupt_override(bytes: &[u8]) -> Option<(u8, IrqOverride)> {
    (bytes.len() >= entry::INTERRUPT_OVERRIDE_LEN).then_some(())?;
    let irq = IrqOverride {
        bus_irq: u8_at(bytes, 3)?,
        gsi: u32_at(bytes, 4)?,
        flags: u16_at(bytes, 8)?,
    };
    Some((u8_at(bytes, 2)?, irq))
}

fn local_apic_address_override(bytes: &[u8]) -> Option<u64> {
    (bytes.len() >= entry::LOCAL_APIC_ADDRESS_OVERRIDE_LEN).then_some(())?;
    u64_at(bytes, 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi_tables::fixtures::{self, madt_entry as e};

    fn decode_entries(entries: &[Vec<u8>]) -> (Madt, Vec<AcpiWarning>) {
        let mut warnings = Vec::new();
        let madt = decode(&fixtures::madt(0xfee0_0000, entries), &mut warnings).unwrap();
        (madt, warnings)
    }

    fn apic_ids(madt: &Madt) -> Vec<u32> {
        madt.cpus.iter().map(|c| c.apic_id.0).collect()
    }

    #[test]
    fn qemu_like_four_cpus() {
        let (madt, warnings) = decode_entries(&fixtures::qemu_madt_entries(4));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(madt.local_apic_address, 0xfee0_0000);
        assert!(madt.legacy_pics);
        assert_eq!(apic_ids(&madt), [0, 1, 2, 3]);
        assert!(madt.cpus.iter().all(|c| c.enabled && !c.x2apic_entry));
        assert_eq!(
            madt.io_apics,
            [IoApicInfo {
                id: 0,
                address: 0xfec0_0000,
                gsi_base: 0
            }]
        );
        assert_eq!(madt.overrides.len(), 5);
        assert_eq!(
            madt.overrides[0],
            IrqOverride {
                bus_irq: 0,
                gsi: 2,
                flags: 0
            }
        );
        let sci = madt.overrides.iter().find(|o| o.bus_irq == 9).unwrap();
        assert!(!sci.active_low() && sci.level_triggered());
    }

    #[test]
    fn x2apic_entries_and_duplicates_of_xapic_entries() {
        let (madt, warnings) = decode_entries(&[
            e::local_apic(0, 0, 1),
            e::local_apic(1, 1, 1),
            e::local_x2apic(100, 0, 1), // same processor as uid 0: folded
            e::local_x2apic(101, 300, 1), // beyond 8 bits: only x2APIC can name it
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(apic_ids(&madt), [0, 1, 300]);
        assert!(!madt.cpus[0].x2apic_entry);
        assert_eq!(
            madt.cpus[2],
            MadtCpu {
                acpi_uid: 101,
                apic_id: ApicId(300),
                enabled: true,
                online_capable: false,
                x2apic_entry: true,
            }
        );
    }

    #[test]
    fn duplicate_of_the_same_kind_is_skipped_with_a_warning() {
        let (madt, warnings) = decode_entries(&[e::local_apic(0, 4, 1), e::local_apic(1, 4, 1)]);
        assert_eq!(apic_ids(&madt), [4]);
        assert_eq!(madt.cpus[0].acpi_uid, 0);
        assert_eq!(
            warnings,
            [AcpiWarning::DuplicateApicId { apic_id: ApicId(4) }]
        );
    }

    #[test]
    fn disabled_and_online_capable_cpus() {
        let (madt, _) = decode_entries(&[
            e::local_apic(0, 0, 1),
            e::local_apic(1, 1, 0),
            e::local_apic(2, 2, 2),
        ]);
        let flags: Vec<_> = madt
            .cpus
            .iter()
            .map(|c| (c.enabled, c.online_capable))
            .collect();
        assert_eq!(flags, [(true, false), (false, false), (false, true)]);
    }

    #[test]
    fn broadcast_ids_are_skipped_and_warned_only_when_enabled() {
        let (madt, warnings) = decode_entries(&[
            e::local_apic(0, 0xff, 0),
            e::local_apic(1, 0xff, 1),
            e::local_x2apic(2, u32::MAX, 1),
            e::local_x2apic(3, 0xff, 1), // a real x2APIC id
        ]);
        assert_eq!(apic_ids(&madt), [0xff]);
        assert_eq!(
            warnings,
            [
                AcpiWarning::BroadcastApicId { acpi_uid: 1 },
                AcpiWarning::BroadcastApicId { acpi_uid: 2 },
            ]
        );
    }

    #[test]
    fn local_apic_address_override_wins() {
        let (madt, _) = decode_entries(&[e::local_apic_address_override(0x1_0000_0000)]);
        assert_eq!(madt.local_apic_address, 0x1_0000_0000);
    }

    #[test]
    fn unknown_entries_are_skipped_by_length() {
        let (madt, warnings) = decode_entries(&[
            e::raw(0x7f, &[0xaa; 20]),
            e::raw(4, &[0, 0xff, 5, 0, 1]), // local APIC NMI: not used here
            e::local_apic(1, 1, 1),
        ]);
        assert!(warnings.is_empty());
        assert_eq!(apic_ids(&madt), [1]);
    }

    #[test]
    fn short_entries_are_skipped_with_a_warning() {
        let (madt, warnings) = decode_entries(&[
            e::raw(entry::LOCAL_APIC, &[0, 1]),
            e::raw(entry::LOCAL_X2APIC, &[0; 6]),
            e::local_apic(2, 2, 1),
        ]);
        assert_eq!(apic_ids(&madt), [2]);
        assert_eq!(
            warnings,
            [
                AcpiWarning::EntryTooShort {
                    table: Signature::MADT,
                    entry_type: 0,
                    offset: 44,
                    length: 4
                },
                AcpiWarning::EntryTooShort {
                    table: Signature::MADT,
                    entry_type: 9,
                    offset: 48,
                    length: 8
                },
            ]
        );
    }

    #[test]
    fn zero_length_entry_stops_parsing() {
        let (madt, warnings) = decode_entries(&[
            e::local_apic(0, 0, 1),
            alloc::vec![entry::LOCAL_APIC, 0, 0, 1, 1, 0, 0, 0],
            e::local_apic(2, 2, 1),
        ]);
        assert_eq!(apic_ids(&madt), [0]);
        assert!(matches!(
            warnings[..],
            [AcpiWarning::BadEntryLength {
                offset: 52,
                length: 0,
                ..
            }]
        ));
    }

    #[test]
    fn hostile_entry_length_stops_parsing() {
        let (madt, warnings) = decode_entries(&[
            e::local_apic(0, 0, 1),
            alloc::vec![entry::IO_APIC, 0xff, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0],
        ]);
        assert_eq!(apic_ids(&madt), [0]);
        assert!(madt.io_apics.is_empty());
        assert!(matches!(
            warnings[..],
            [AcpiWarning::BadEntryLength { length: 255, .. }]
        ));
    }

    #[test]
    fn non_isa_override_is_skipped() {
        let (madt, warnings) = decode_entries(&[e::interrupt_override(1, 5, 20, 0xf)]);
        assert!(madt.overrides.is_empty());
        assert_eq!(
            warnings,
            [AcpiWarning::OverrideNotIsa { bus: 1, source: 5 }]
        );
    }

    #[test]
    fn table_without_fixed_part_is_refused() {
        let mut warnings = Vec::new();
        let short = &fixtures::madt(0xfee0_0000, &[])[..40];
        assert_eq!(
            decode(short, &mut warnings),
            Err(TableProblem::TooShort { length: 40 })
        );
    }
}
