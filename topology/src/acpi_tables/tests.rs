//! End-to-end tests: whole firmware images read through the test handler.
#![allow(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

use super::fixtures::{self, madt_entry as e, Firmware, Roots, TestHandler};
use super::*;
use crate::ids::ApicId;

/// Reads `firmware` from its RSDP copy and checks every mapping was released.
fn read_copy(firmware: &Firmware) -> Result<AcpiInfo, AcpiError> {
    let live = Cell::new(0);
    let handler = TestHandler::new(&firmware.memory, &live);
    // SAFETY: the test handler maps only its buffer and reports short regions truthfully.
    let info = unsafe { AcpiInfo::from_rsdp_copy(&handler, &firmware.rsdp) };
    assert_eq!(live.get(), 0, "mappings leaked");
    info
}

/// Reads `firmware` from the physical address of its RSDP.
fn read_at(memory: &[u8], address: u64) -> Result<AcpiInfo, AcpiError> {
    let live = Cell::new(0);
    let handler = TestHandler::new(memory, &live);
    // SAFETY: as in `read_copy`.
    let info = unsafe { AcpiInfo::from_rsdp_address(&handler, address) };
    assert_eq!(live.get(), 0, "mappings leaked");
    info
}

fn qemu_tables() -> Vec<Vec<u8>> {
    vec![
        fixtures::sdt(b"FACP", 1, &[0; 80]),
        fixtures::madt(0xfee0_0000, &fixtures::qemu_madt_entries(4)),
        fixtures::hpet(0, 0xfed0_0000),
        fixtures::sdt(b"WAET", 1, &[0; 4]),
    ]
}

fn apic_ids(info: &AcpiInfo) -> Vec<u32> {
    info.cpus.iter().map(|c| c.apic_id.0).collect()
}

#[test]
fn qemu_four_cpus_through_rsdt_only() {
    let info = read_copy(&Firmware::new(Roots::RsdtOnly, &qemu_tables())).unwrap();
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    assert_eq!(info.revision, 0);
    assert_eq!(apic_ids(&info), [0, 1, 2, 3]);
    assert_eq!(info.local_apic_address, 0xfee0_0000);
    assert!(info.legacy_pics);
    assert_eq!(info.io_apics.len(), 1);
    assert_eq!(info.overrides.len(), 5);
    assert_eq!(info.hpet.map(|h| h.base_address), Some(0xfed0_0000));
    assert_eq!(info.numa, None);
    assert_eq!(info.distances, None);
}

#[test]
fn xsdt_through_rsdp_address() {
    let firmware = Firmware::new(Roots::RsdtAndXsdt, &qemu_tables());
    let info = read_at(&firmware.memory, firmware.rsdp_address).unwrap();
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    assert_eq!(info.revision, 2);
    assert_eq!(apic_ids(&info), [0, 1, 2, 3]);
}

#[test]
fn xsdt_is_preferred_over_rsdt() {
    let mut firmware = Firmware::new(Roots::RsdtAndXsdt, &qemu_tables());
    // Make the RSDT list nothing useful: only the XSDT can give CPUs.
    let rsdt = firmware.rsdt as usize;
    firmware.memory[rsdt + 36..rsdt + 52].fill(0);
    fixtures::fix_checksum(&mut firmware.memory[rsdt..rsdt + 52], 9);
    let info = read_copy(&firmware).unwrap();
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    assert_eq!(apic_ids(&info), [0, 1, 2, 3]);
}

#[test]
fn corrupt_xsdt_falls_back_to_rsdt() {
    let mut firmware = Firmware::new(Roots::RsdtAndXsdt, &qemu_tables());
    let xsdt = firmware.xsdt.unwrap();
    firmware.memory[xsdt as usize + 40] ^= 0x55;
    let info = read_copy(&firmware).unwrap();
    assert_eq!(
        info.warnings,
        [AcpiWarning::RootTableUnusable {
            signature: Signature::XSDT,
            address: xsdt,
            problem: TableProblem::BadChecksum,
        }]
    );
    assert_eq!(apic_ids(&info), [0, 1, 2, 3]);
}

#[test]
fn two_node_numa_with_distances() {
    let tables = vec![
        fixtures::madt(0xfee0_0000, &fixtures::qemu_madt_entries(4)),
        fixtures::srat(3, &fixtures::two_node_srat_entries()),
        fixtures::slit(2, &[10, 20, 20, 10]),
    ];
    let info = read_copy(&Firmware::new(Roots::RsdtAndXsdt, &tables)).unwrap();
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    let numa = info.numa.unwrap();
    assert_eq!(numa.cpus.len(), 4);
    assert_eq!(
        numa.cpus[3],
        CpuAffinity {
            apic_id: ApicId(3),
            proximity_domain: 1
        }
    );
    assert_eq!(numa.memory.len(), 3);
    assert_eq!(info.distances.unwrap().distance(1, 0), Some(20));
}

#[test]
fn bad_madt_checksum_skips_only_the_madt() {
    let mut firmware = Firmware::new(Roots::RsdtOnly, &qemu_tables());
    firmware.table_mut(1)[50] ^= 1;
    let info = read_copy(&firmware).unwrap();
    assert!(info.cpus.is_empty());
    assert!(info.hpet.is_some());
    assert_eq!(info.local_apic_address, DEFAULT_LOCAL_APIC_ADDRESS);
    assert_eq!(
        info.warnings,
        [
            AcpiWarning::TableUnusable {
                signature: Signature::MADT,
                address: firmware.tables[1],
                problem: TableProblem::BadChecksum,
            },
            AcpiWarning::MadtMissing,
        ]
    );
}

#[test]
fn bad_checksum_on_a_table_not_decoded_is_ignored() {
    let mut firmware = Firmware::new(Roots::RsdtOnly, &qemu_tables());
    firmware.table_mut(0)[40] ^= 1; // FACP
    assert!(read_copy(&firmware).unwrap().warnings.is_empty());
}

#[test]
fn missing_madt() {
    let tables = vec![fixtures::hpet(0, 0xfed0_0000)];
    let info = read_copy(&Firmware::new(Roots::RsdtOnly, &tables)).unwrap();
    assert!(info.cpus.is_empty());
    assert_eq!(info.warnings, [AcpiWarning::MadtMissing]);
}

#[test]
fn table_running_past_mapped_memory_is_refused() {
    let mut tables = qemu_tables();
    tables.swap(1, 3); // the MADT ends memory
    let mut firmware = Firmware::new(Roots::RsdtOnly, &tables);
    let length = tables[3].len();
    fixtures::set_length(firmware.table_mut(3), length as u32 + 64);
    let info = read_copy(&firmware).unwrap();
    assert!(info.cpus.is_empty());
    assert_eq!(
        info.warnings,
        [
            AcpiWarning::TableUnusable {
                signature: Signature::MADT,
                address: firmware.tables[3],
                problem: TableProblem::Unmapped {
                    mapped: length,
                    needed: length + 64
                },
            },
            AcpiWarning::MadtMissing,
        ]
    );
}

#[test]
fn truncated_memory_cuts_a_table_header() {
    let mut firmware = Firmware::new(Roots::RsdtOnly, &qemu_tables());
    let last = firmware.tables[3];
    firmware.memory.truncate(last as usize + 20);
    let info = read_copy(&firmware).unwrap();
    assert_eq!(apic_ids(&info), [0, 1, 2, 3]);
    assert_eq!(
        info.warnings,
        [AcpiWarning::TableUnreadable {
            address: last,
            problem: TableProblem::Unmapped {
                mapped: 20,
                needed: 36
            },
        }]
    );
}

#[test]
fn hostile_table_lengths_are_refused() {
    for (length, problem) in [
        (u32::MAX, TableProblem::TooLong { length: u32::MAX }),
        (0x10_0001, TableProblem::TooLong { length: 0x10_0001 }),
        (0, TableProblem::TooShort { length: 0 }),
        (35, TableProblem::TooShort { length: 35 }),
        (40, TableProblem::TooShort { length: 40 }), // header only, no MADT fixed part
    ] {
        let mut firmware = Firmware::new(Roots::RsdtOnly, &qemu_tables());
        let madt = firmware.table_mut(1);
        madt[4..8].copy_from_slice(&length.to_le_bytes());
        if length == 40 {
            fixtures::fix_checksum(&mut madt[..40], 9);
        }
        let info = read_copy(&firmware).unwrap();
        let expected = AcpiWarning::TableUnusable {
            signature: Signature::MADT,
            address: firmware.tables[1],
            problem,
        };
        assert_eq!(
            info.warnings,
            [expected, AcpiWarning::MadtMissing],
            "length {length}"
        );
    }
}

#[test]
fn hostile_root_table_length() {
    let mut firmware = Firmware::new(Roots::RsdtOnly, &qemu_tables());
    let rsdt = firmware.rsdt as usize;
    firmware.memory[rsdt + 4..rsdt + 8].copy_from_slice(&4u32.to_le_bytes());
    let info = read_copy(&firmware).unwrap();
    assert_eq!(
        info.warnings,
        [
            AcpiWarning::RootTableUnusable {
                signature: Signature::RSDT,
                address: firmware.rsdt,
                problem: TableProblem::TooShort { length: 4 },
            },
            AcpiWarning::NoUsableRootTable,
            AcpiWarning::MadtMissing,
        ]
    );
}

#[test]
fn root_pointing_at_the_wrong_table() {
    let firmware = Firmware::new(Roots::RsdtOnly, &qemu_tables());
    let rsdp = fixtures::rsdp_v1(firmware.tables[1] as u32); // the MADT, not an RSDT
    let live = Cell::new(0);
    let handler = TestHandler::new(&firmware.memory, &live);
    // SAFETY: as in `read_copy`.
    let info = unsafe { AcpiInfo::from_rsdp_copy(&handler, &rsdp) }.unwrap();
    assert_eq!(
        info.warnings[0],
        AcpiWarning::RootTableUnusable {
            signature: Signature::RSDT,
            address: firmware.tables[1],
            problem: TableProblem::SignatureMismatch {
                found: Signature::MADT
            },
        }
    );
}

#[test]
fn root_entry_outside_memory_is_unreadable() {
    let mut tables = qemu_tables();
    tables.truncate(2);
    let mut firmware = Firmware::new(Roots::RsdtOnly, &tables);
    let rsdt = firmware.rsdt as usize;
    firmware.memory[rsdt + 36..rsdt + 40].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    fixtures::fix_checksum(&mut firmware.memory[rsdt..rsdt + 44], 9);
    let info = read_copy(&firmware).unwrap();
    assert_eq!(apic_ids(&info), [0, 1, 2, 3]);
    assert_eq!(
        info.warnings,
        [AcpiWarning::TableUnreadable {
            address: 0x4000_0000,
            problem: TableProblem::Unmapped {
                mapped: 0,
                needed: 36
            },
        }]
    );
}

#[test]
fn second_madt_is_ignored() {
    let tables = vec![
        fixtures::madt(0xfee0_0000, &fixtures::qemu_madt_entries(2)),
        fixtures::madt(0xfee0_0000, &fixtures::qemu_madt_entries(8)),
    ];
    let firmware = Firmware::new(Roots::RsdtOnly, &tables);
    let info = read_copy(&firmware).unwrap();
    assert_eq!(apic_ids(&info), [0, 1]);
    assert_eq!(
        info.warnings,
        [AcpiWarning::DuplicateTable {
            signature: Signature::MADT,
            address: firmware.tables[1],
        }]
    );
}

#[test]
fn corrupt_first_madt_lets_a_second_one_serve() {
    let tables = vec![
        fixtures::madt(0xfee0_0000, &fixtures::qemu_madt_entries(2)),
        fixtures::madt(0xfee0_0000, &fixtures::qemu_madt_entries(3)),
    ];
    let mut firmware = Firmware::new(Roots::RsdtOnly, &tables);
    firmware.table_mut(0)[9] ^= 1;
    let info = read_copy(&firmware).unwrap();
    assert_eq!(apic_ids(&info), [0, 1, 2]);
    assert_eq!(info.warnings.len(), 1);
}

#[test]
fn zero_length_madt_entry_keeps_what_came_before() {
    let mut entries = fixtures::qemu_madt_entries(2);
    entries.insert(1, vec![0, 0]);
    let tables = vec![fixtures::madt(0xfee0_0000, &entries)];
    let info = read_copy(&Firmware::new(Roots::RsdtOnly, &tables)).unwrap();
    assert_eq!(apic_ids(&info), [0]);
    assert!(info.io_apics.is_empty());
    assert!(matches!(
        info.warnings[..],
        [AcpiWarning::BadEntryLength { length: 0, .. }]
    ));
}

#[test]
fn x2apic_and_disabled_cpus_end_to_end() {
    let entries = vec![
        e::local_apic(0, 0, 1),
        e::local_apic(1, 1, 0),
        e::local_x2apic(0, 0, 1),
        e::local_x2apic(2, 0x100, 1),
        e::local_x2apic(3, 0x101, 2),
    ];
    let tables = vec![fixtures::madt(0xfee0_0000, &entries)];
    let info = read_copy(&Firmware::new(Roots::RsdtAndXsdt, &tables)).unwrap();
    assert!(info.warnings.is_empty());
    let cpus: Vec<_> = info
        .cpus
        .iter()
        .map(|c| (c.apic_id.0, c.enabled, c.online_capable))
        .collect();
    assert_eq!(
        cpus,
        [
            (0, true, false),
            (1, false, false),
            (0x100, true, false),
            (0x101, false, true)
        ]
    );
}

#[test]
fn unusable_rsdp_is_an_error() {
    let mut firmware = Firmware::new(Roots::RsdtAndXsdt, &qemu_tables());
    firmware.rsdp[0] = b'r';
    assert_eq!(read_copy(&firmware), Err(AcpiError::RsdpBadSignature));
    let memory = firmware.memory.clone();
    assert_eq!(
        read_at(&memory, 0x10_0000),
        Err(AcpiError::RsdpUnmapped { address: 0x10_0000 })
    );
    assert_eq!(read_at(&memory, 0x48), Err(AcpiError::RsdpBadSignature));
}

#[test]
fn rsdp_v2_at_address_with_short_tail_falls_back_to_rsdt() {
    // A v2 RSDP whose 36 bytes cannot all be mapped: only its v1 part is usable.
    let firmware = Firmware::new(Roots::RsdtAndXsdt, &qemu_tables());
    let mut memory = firmware.memory.clone();
    let rsdp = firmware.rsdp.clone();
    let address = memory.len() as u64;
    memory.extend_from_slice(&rsdp[..24]);
    let info = read_at(&memory, address).unwrap();
    assert_eq!(info.warnings, [AcpiWarning::RsdpExtensionInvalid]);
    assert_eq!(apic_ids(&info), [0, 1, 2, 3]);
}
