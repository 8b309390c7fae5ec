//! Property tests of ACPI decoding against hostile firmware: random tables (MADT, SRAT,
//! SLIT, HPET, others and random bytes) with valid-looking headers, hostile length fields,
//! broken checksums and entries, laid out in memory between random garbage and listed by
//! root tables that also name random, overlapping and self-referencing addresses.
//!
//! Properties: decoding never panics and releases every mapping; every byte it maps lies in
//! a range the firmware declared (the RSDP, and for each table at an address some root
//! table names, its 36-byte header and, when that header's length is sane, `length` bytes),
//! and rewriting every other byte of memory changes nothing in the result; what it returns
//! is consistent (one processor per APIC id, no broadcast id, a SLIT that obeys the
//! distance rules); the table decoders and the entry walk never leave the table; and the
//! topology built from any of it (with any CPUID layout, boot APIC id and RAM map) numbers
//! its CPUs and nodes consistently. Test-only. More cases: `PROPTEST_CASES=5000 cargo test
//! -p topology proptests`.
#![allow(unsafe_code)]

use alloc::collections::BTreeSet;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::ptr::NonNull;

use acpi::{AcpiHandler, PhysicalMapping};
use proptest::prelude::*;
use proptest::sample::{select, Index};

use super::fixtures::{self, fix_checksum, madt_entry as m, srat_entry as s};
use super::sdt::{Entries, Signature, HEADER_LEN, MAX_TABLE_LEN};
use super::*;
use crate::cpuid::{ApicIdLayout, CpuInfo, CpuidResult, CpuidSource, LayoutSource};
use crate::ids::{ApicId, CpuIndex, MemoryRange, NodeId};
use crate::topology::Topology;

/// Where the RSDP sits in the generated memory.
const RSDP_ADDRESS: u64 = 0x40;
/// The largest RSDP length field that is followed (`rsdp::MAX_LEN`).
const RSDP_MAX_LEN: usize = 4096;

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` in the environment wins over the default given here.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// An [`AcpiHandler`] over a buffer (physical address `a` is `memory[a]`) that maps only
/// what the buffer holds, counts live mappings and records every request.
#[derive(Clone, Copy)]
struct Recorder<'a> {
    memory: &'a [u8],
    live: &'a Cell<isize>,
    requests: &'a RefCell<Vec<(usize, usize)>>,
}

impl AcpiHandler for Recorder<'_> {
    unsafe fn map_physical_region<T>(
        &self,
        address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        self.requests.borrow_mut().push((address, size));
        let available = self.memory.len().saturating_sub(address);
        let region_length = size.min(available);
        let start = if available == 0 {
            NonNull::dangling()
        } else {
            NonNull::from(&self.memory[address]).cast::<T>()
        };
        self.live.set(self.live.get() + 1);
        // SAFETY: `start` points at `region_length` bytes of `memory`, which outlives the
        // mapping, or is dangling with a region length of 0.
        unsafe { PhysicalMapping::new(address, start, region_length, region_length, *self) }
    }

    fn unmap_physical_region<T>(region: &PhysicalMapping<Self, T>) {
        let live = region.handler().live;
        live.set(live.get() - 1);
    }
}

/// Decodes the firmware in `memory` from the RSDP at [`RSDP_ADDRESS`]; the mapping
/// requests made, and whether every mapping was released.
fn read(memory: &[u8]) -> (Result<AcpiInfo, AcpiError>, Vec<(usize, usize)>, bool) {
    let live = Cell::new(0);
    let requests = RefCell::new(Vec::new());
    let handler = Recorder {
        memory,
        live: &live,
        requests: &requests,
    };
    // SAFETY: the recorder maps only its buffer and reports short regions truthfully.
    let info = unsafe { AcpiInfo::from_rsdp_address(&handler, RSDP_ADDRESS) };
    (info, requests.into_inner(), live.get() == 0)
}

// ---- Generators. ----

/// An APIC id: a few small ones (so that duplicates happen), the broadcast ids, anything.
fn apic_id() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..6, 1 => Just(0xff), 1 => Just(u32::MAX), 1 => any::<u32>()]
}

/// An entry of `{type, length}` records that breaks the rules: any type with any data, or a
/// length of 0, 1 or past the end.
fn raw_entry() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(t, d)| m::raw(t, &d)),
        (
            any::<u8>(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..8)
        )
            .prop_map(|(t, len, d)| {
                let mut entry = vec![t, len];
                entry.extend(d);
                entry
            }),
    ]
}

fn madt_entry() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (any::<u8>(), apic_id(), 0u32..4).prop_map(|(uid, id, f)| m::local_apic(uid, id as u8, f)),
        2 => (any::<u32>(), apic_id(), 0u32..4).prop_map(|(uid, id, f)| m::local_x2apic(uid, id, f)),
        1 => (any::<u8>(), any::<u32>(), any::<u32>()).prop_map(|(id, a, g)| m::io_apic(id, a, g)),
        1 => (0u8..3, any::<u8>(), any::<u32>(), any::<u16>()).prop_map(|(b, i, g, f)| m::interrupt_override(b, i, g, f)),
        1 => any::<u64>().prop_map(m::local_apic_address_override),
        1 => raw_entry(),
    ]
}

fn srat_entry() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (0u32..4, apic_id(), 0u32..4).prop_map(|(d, id, f)| s::processor_apic(d, id as u8, f)),
        2 => (any::<u32>(), apic_id(), 0u32..4).prop_map(|(d, id, f)| s::processor_x2apic(d, id, f)),
        2 => (0u32..4, any::<u64>(), any::<u64>(), 0u32..8).prop_map(|(d, b, l, f)| s::memory(d, b, l, f)),
        2 => raw_entry(),
    ]
}

/// A SLIT: a valid matrix, one with random distances, or a hostile locality count.
fn slit() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0u64..5, any::<u64>()).prop_map(|(n, seed)| {
            let matrix = (0..n * n)
                .map(|i| {
                    if i / n == i % n {
                        10
                    } else {
                        11 + (seed >> (i % 60)) as u8 % 100
                    }
                })
                .collect::<Vec<_>>();
            fixtures::slit(n, &matrix)
        }),
        (0u64..5, proptest::collection::vec(any::<u8>(), 0..30))
            .prop_map(|(n, m)| fixtures::slit(n, &m)),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..30))
            .prop_map(|(n, m)| fixtures::slit(n, &m)),
    ]
}

/// One table as firmware would store it, before any corruption.
fn table() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (any::<u32>(), proptest::collection::vec(madt_entry(), 0..12)).prop_map(|(a, e)| fixtures::madt(a, &e)),
        2 => (any::<u8>(), proptest::collection::vec(srat_entry(), 0..10)).prop_map(|(r, e)| fixtures::srat(r, &e)),
        2 => slit(),
        1 => (0u8..3, any::<u64>()).prop_map(|(space, base)| fixtures::hpet(space, base)),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| fixtures::sdt(b"FACP", 1, &b)),
        1 => (select(vec![*b"APIC", *b"SRAT", *b"SLIT", *b"HPET", *b"XSDT"]), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(sig, b)| fixtures::sdt(&sig, 1, &b)),
        1 => proptest::collection::vec(any::<u8>(), 0..80),
    ]
}

/// A table with its header perhaps lied about: a hostile length field, a few bytes
/// changed, the checksum fixed afterwards or not.
fn corrupted(table: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let length = prop_oneof![
        Just(0u32),
        Just(35),
        Just(36),
        Just(40),
        Just(44),
        Just(MAX_TABLE_LEN as u32),
        Just(MAX_TABLE_LEN as u32 + 1),
        Just(u32::MAX),
        0u32..200,
        any::<u32>(),
    ];
    (
        table,
        proptest::option::weighted(0.25, length),
        proptest::option::weighted(
            0.3,
            proptest::collection::vec((any::<Index>(), any::<u8>()), 1..4),
        ),
        prop_oneof![4 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(mut table, length, edits, fix)| {
            if table.len() >= HEADER_LEN {
                if let Some(length) = length {
                    table[4..8].copy_from_slice(&length.to_le_bytes());
                }
                for (at, value) in edits.unwrap_or_default() {
                    let at = at.index(table.len());
                    if !(4..10).contains(&at) {
                        table[at] = value;
                    }
                }
                if fix {
                    // The checksum covers `length` bytes; only fixable when they are here.
                    let length = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
                    let end = length.min(table.len()).max(10);
                    fix_checksum(&mut table[..end], 9);
                }
            }
            table
        })
}

/// Random firmware memory: an RSDP, an RSDT and/or an XSDT listing the tables (in any
/// order) and extra addresses, the tables, random garbage between them.
#[derive(Clone, Debug)]
struct FirmwareSpec {
    tables: Vec<Vec<u8>>,
    /// Garbage after each table (and after each root table).
    gaps: Vec<Vec<u8>>,
    /// 0: RSDT only (ACPI 1.0); 1: RSDT and XSDT; 2: XSDT only (RSDT address 0).
    roots: u8,
    /// Root entries: `Ok(i)` the i-th table, `Err(address)` a raw address.
    listed: Vec<Result<Index, u64>>,
    /// Corrupt the ACPI 2.0 part of the RSDP: a new length field, or a bad extended
    /// checksum.
    rsdp_length: Option<u32>,
    rsdp_bad_extension: bool,
    /// Lie about the root tables' lengths.
    root_length: Option<u32>,
}

fn firmware() -> impl Strategy<Value = FirmwareSpec> {
    let extra_address = prop_oneof![
        Just(0u64),
        Just(0x48),
        Just(0x80),
        0u64..0x2000,
        Just(u64::from(u32::MAX)),
        Just(u64::MAX),
        any::<u64>(),
    ];
    let listed = prop_oneof![
        4 => any::<Index>().prop_map(Ok),
        1 => extra_address.prop_map(Err),
    ];
    (
        proptest::collection::vec(corrupted(table()), 1..7),
        proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..40), 9),
        0u8..3,
        proptest::collection::vec(listed, 0..10),
        proptest::option::weighted(
            0.15,
            prop_oneof![Just(20u32), Just(35), Just(37), Just(4097), any::<u32>()],
        ),
        proptest::bool::weighted(0.1),
        proptest::option::weighted(
            0.1,
            prop_oneof![Just(0u32), Just(35), Just(37), any::<u32>()],
        ),
    )
        .prop_map(
            |(tables, gaps, roots, listed, rsdp_length, rsdp_bad_extension, root_length)| {
                FirmwareSpec {
                    tables,
                    gaps,
                    roots,
                    listed,
                    rsdp_length,
                    rsdp_bad_extension,
                    root_length,
                }
            },
        )
}

impl FirmwareSpec {
    /// Lays the firmware out: the RSDP at 0x40, the root tables, then the tables, each
    /// followed by its garbage.
    fn memory(&self) -> Vec<u8> {
        let mut addresses = Vec::new();
        let mut next = 0x100u64;
        for (index, table) in self.tables.iter().enumerate() {
            addresses.push(next);
            next += (table.len() + self.gaps[index % self.gaps.len()].len()) as u64;
        }
        let tables_start = 0x100 + 64 * 12;
        let addresses: Vec<u64> = addresses.iter().map(|a| a + tables_start).collect();
        let listed: Vec<u64> = self
            .listed
            .iter()
            .map(|entry| match entry {
                Ok(index) if !addresses.is_empty() => addresses[index.index(addresses.len())],
                Ok(_) => 0,
                Err(address) => *address,
            })
            .collect();
        // Every table is listed at least once unless the spec lists only raw addresses.
        let listed = if self.listed.iter().all(Result::is_err) {
            addresses.iter().copied().chain(listed).collect()
        } else {
            listed
        };
        let mut rsdt = fixtures::rsdt(&listed);
        let mut xsdt = fixtures::xsdt(&listed);
        if let Some(length) = self.root_length {
            fixtures::set_length(&mut rsdt, length);
            fixtures::set_length(&mut xsdt, length);
        }
        let rsdt_address = 0x100u64;
        let xsdt_address = rsdt_address + rsdt.len() as u64 + 8;
        let mut memory = vec![0u8; tables_start as usize];
        let (rsdt_field, xsdt_field) = match self.roots {
            0 => (rsdt_address as u32, None),
            1 => (rsdt_address as u32, Some(xsdt_address)),
            _ => (0, Some(xsdt_address)),
        };
        let mut rsdp = match xsdt_field {
            None => fixtures::rsdp_v1(rsdt_field),
            Some(xsdt) => fixtures::rsdp_v2(rsdt_field, xsdt),
        };
        if rsdp.len() == 36 {
            if let Some(length) = self.rsdp_length {
                rsdp[20..24].copy_from_slice(&length.to_le_bytes());
            }
            fix_checksum(&mut rsdp, 32);
            if self.rsdp_bad_extension {
                rsdp[32] ^= 0x5a;
            }
        }
        memory[RSDP_ADDRESS as usize..][..rsdp.len()].copy_from_slice(&rsdp);
        // The roots may overrun their slots when long; memory grows as needed.
        put(&mut memory, rsdt_address, &rsdt);
        if xsdt_field.is_some() {
            put(&mut memory, xsdt_address, &xsdt);
        }
        for (index, (table, &address)) in self.tables.iter().zip(&addresses).enumerate() {
            put(&mut memory, address, table);
            let gap = &self.gaps[index % self.gaps.len()];
            put(&mut memory, address + table.len() as u64, gap);
        }
        memory
    }
}

fn put(memory: &mut Vec<u8>, address: u64, bytes: &[u8]) {
    let start = address as usize;
    if memory.len() < start + bytes.len() {
        memory.resize(start + bytes.len(), 0);
    }
    memory[start..start + bytes.len()].copy_from_slice(bytes);
}

// ---- What the firmware declares. ----

fn u32_at(memory: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        memory.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(memory: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        memory.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The ranges a decoder may read: the RSDP (20 bytes, 36 for a revision 2 one, `length`
/// when that is sane), and for each root table and each address a root table lists, the
/// 36-byte header and, when its length is in 36..=MAX_TABLE_LEN, the whole table. Read
/// from memory the way the firmware states it (both roots' entries, whichever is used).
fn declared_ranges(memory: &[u8]) -> Vec<(usize, usize)> {
    let at = RSDP_ADDRESS as usize;
    let mut ranges = vec![(at, at + 20)];
    let revision = memory.get(at + 15).copied().unwrap_or(0);
    let mut roots = Vec::new();
    if let Some(rsdt) = u32_at(memory, at + 16).filter(|&a| a != 0) {
        roots.push((u64::from(rsdt), 4));
    }
    if revision >= 2 {
        ranges.push((at, at + 36));
        if let Some(length) =
            u32_at(memory, at + 20).filter(|&l| (36..=RSDP_MAX_LEN as u32).contains(&l))
        {
            ranges.push((at, at + length as usize));
        }
        if let Some(xsdt) = u64_at(memory, at + 24).filter(|&a| a != 0) {
            roots.push((xsdt, 8));
        }
    }
    let table_range = |address: u64, ranges: &mut Vec<(usize, usize)>| -> Option<usize> {
        let start = usize::try_from(address).ok()?;
        ranges.push((start, start.saturating_add(HEADER_LEN)));
        let length = u32_at(memory, start.checked_add(4)?)? as usize;
        ((HEADER_LEN..=MAX_TABLE_LEN).contains(&length)).then(|| {
            ranges.push((start, start + length));
            length
        })
    };
    let mut listed = Vec::new();
    for (root, width) in roots {
        if let Some(length) = table_range(root, &mut ranges) {
            let start = root as usize;
            let entries = memory
                .get(start + HEADER_LEN..(start + length).min(memory.len()))
                .unwrap_or_default();
            for entry in entries.chunks_exact(width) {
                let mut raw = [0u8; 8];
                raw[..width].copy_from_slice(entry);
                listed.push(u64::from_le_bytes(raw));
            }
        }
    }
    for address in listed {
        table_range(address, &mut ranges);
    }
    ranges
}

fn inside(ranges: &[(usize, usize)], start: usize, end: usize) -> bool {
    ranges.iter().any(|&(a, b)| a <= start && end <= b)
}

/// What every decoded summary must satisfy.
fn check_info(info: &AcpiInfo) -> Result<(), TestCaseError> {
    let mut apic_ids = BTreeSet::new();
    for cpu in &info.cpus {
        prop_assert!(
            apic_ids.insert(cpu.apic_id),
            "two processors with APIC id {:?}",
            cpu.apic_id
        );
        let broadcast = if cpu.x2apic_entry { u32::MAX } else { 0xff };
        prop_assert_ne!(cpu.apic_id.0, broadcast);
    }
    if let Some(slit) = &info.distances {
        let n = slit.localities as usize;
        prop_assert_eq!(slit.distances.len(), n * n);
        for from in 0..slit.localities {
            for to in 0..slit.localities {
                let distance = slit.distance(from, to).unwrap();
                if from == to {
                    prop_assert_eq!(distance, LOCAL_DISTANCE);
                } else {
                    prop_assert!(distance > LOCAL_DISTANCE);
                }
            }
        }
    }
    if let Some(hpet) = info.hpet {
        prop_assert!((1..=32).contains(&hpet.comparators));
    }
    Ok(())
}

/// What every topology must satisfy.
fn check_topology(topology: &Topology, boot: ApicId) -> Result<(), TestCaseError> {
    let cpus = topology.cpus();
    prop_assert!(!cpus.is_empty());
    prop_assert_eq!(cpus[0].apic_id, boot, "the boot CPU is CPU 0");
    let mut apic_ids = BTreeSet::new();
    for (index, cpu) in cpus.iter().enumerate() {
        prop_assert_eq!(cpu.index, CpuIndex(index as u32));
        prop_assert!(
            apic_ids.insert(cpu.apic_id),
            "APIC id {:?} twice",
            cpu.apic_id
        );
        prop_assert_eq!(
            topology.cpu_by_apic_id(cpu.apic_id).map(|c| c.index),
            Some(cpu.index)
        );
    }
    let nodes = topology.nodes();
    prop_assert!(!nodes.is_empty());
    let mut placed = vec![0; cpus.len()];
    for (id, node) in nodes.iter().enumerate() {
        prop_assert_eq!(node.id, NodeId(id as u32));
        for &cpu in &node.cpus {
            prop_assert_eq!(cpus[cpu.0 as usize].node, node.id);
            placed[cpu.0 as usize] += 1;
        }
        for from in 0..nodes.len() {
            let distance = topology.distance(NodeId(from as u32), node.id);
            prop_assert!(distance.is_some());
            if from == id {
                prop_assert_eq!(distance, Some(LOCAL_DISTANCE));
            }
        }
    }
    prop_assert!(
        placed.iter().all(|&n| n == 1),
        "a CPU in no node or in several"
    );
    prop_assert!(topology.package_count() <= topology.core_count());
    prop_assert!(topology.core_count() <= topology.thread_count());
    for cpu in cpus.iter().take(4) {
        let mut order = topology.nearest_first(cpu.index);
        prop_assert_eq!(order.len(), cpus.len() - 1);
        order.push(cpu.index);
        order.sort_unstable();
        prop_assert!(order.iter().enumerate().all(|(i, c)| c.0 as usize == i));
    }
    Ok(())
}

/// A CPUID that answers anything, from a seed: random registers, with leaf 0's and
/// 0x8000_0000's maxima and the vendor drawn from plausible values.
#[derive(Clone, Copy, Debug)]
struct RandomCpuid {
    seed: u64,
    max_basic: u32,
    max_extended: u32,
    vendor: [u32; 3],
}

impl CpuidSource for RandomCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        let mut state = self.seed ^ (u64::from(leaf) << 32 | u64::from(subleaf));
        let mut next = || {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u32
        };
        let mut result = CpuidResult {
            eax: next(),
            ebx: next(),
            ecx: next(),
            edx: next(),
        };
        match leaf {
            0 => {
                result.eax = self.max_basic;
                [result.ebx, result.edx, result.ecx] = self.vendor;
            }
            0x8000_0000 => result.eax = self.max_extended,
            _ => {}
        }
        result
    }
}

fn cpuid() -> impl Strategy<Value = RandomCpuid> {
    let vendor = |s: &[u8; 12]| {
        [
            u32::from_le_bytes(s[0..4].try_into().unwrap()),
            u32::from_le_bytes(s[4..8].try_into().unwrap()),
            u32::from_le_bytes(s[8..12].try_into().unwrap()),
        ]
    };
    (
        any::<u64>(),
        prop_oneof![0u32..0x20, any::<u32>()],
        prop_oneof![0x8000_0000u32..0x8000_0030, any::<u32>()],
        select(vec![
            vendor(b"GenuineIntel"),
            vendor(b"AuthenticAMD"),
            vendor(b"HygonGenuine"),
            [1, 2, 3],
        ]),
    )
        .prop_map(|(seed, max_basic, max_extended, vendor)| RandomCpuid {
            seed,
            max_basic,
            max_extended,
            vendor,
        })
}

proptest! {
    #![proptest_config(config(256))]

    /// The whole walk on random firmware: no panic, no leaked mapping, no byte mapped
    /// outside what the firmware declared, no dependence on any other byte, and a
    /// consistent result.
    #[test]
    fn decoding_reads_only_declared_bytes(
        spec in firmware(),
        noise in proptest::collection::vec(1u8..=255, 1..64),
    ) {
        let memory = spec.memory();
        let (info, requests, released) = read(&memory);
        prop_assert!(released, "mappings leaked");
        let declared = declared_ranges(&memory);
        for &(address, size) in &requests {
            prop_assert!(size <= MAX_TABLE_LEN, "mapped {} bytes at {:#x}", size, address);
            // What was actually readable of the request.
            let end = address.saturating_add(size).min(memory.len().max(address));
            prop_assert!(
                address >= memory.len() || inside(&declared, address, end),
                "mapped {:#x}..{:#x}, which no header declares",
                address,
                end
            );
        }
        if let Ok(info) = &info {
            check_info(info)?;
        }
        // Every byte no header declares may change without changing the result.
        let mut rewritten = memory.clone();
        for (at, byte) in rewritten.iter_mut().enumerate() {
            if !inside(&declared, at, at + 1) {
                *byte ^= noise[at % noise.len()];
            }
        }
        let (again, _, _) = read(&rewritten);
        prop_assert_eq!(info, again);
    }

    /// Each table decoder on any bytes behind its header: never panics, and what it
    /// accepts obeys the table's rules.
    #[test]
    fn table_decoders_keep_their_rules(
        table in corrupted(table()),
        cut in any::<Index>(),
    ) {
        let table = &table[..cut.index(table.len() + 1).max(table.len().min(HEADER_LEN))];
        let mut warnings = Vec::new();
        if let Ok(madt) = madt::decode(table, &mut warnings) {
            let info = AcpiInfo { cpus: madt.cpus, ..AcpiInfo::default() };
            check_info(&info)?;
        }
        if let Ok(numa) = srat::decode(table, &mut warnings) {
            prop_assert!(numa.cpus.len() + numa.memory.len() <= table.len() / 2);
        }
        if let Ok(slit) = slit::decode(table) {
            prop_assert!(44 + slit.distances.len() <= table.len());
            check_info(&AcpiInfo { distances: Some(slit), ..AcpiInfo::default() })?;
        }
        if let Ok(hpet) = hpet::decode(table) {
            prop_assert_eq!(table[40], 0, "HPET block outside system memory");
            prop_assert!((1..=32).contains(&hpet.comparators));
        }
    }

    /// The entry walk covers the table from its start, each entry inside it and at least
    /// two bytes long, one after another; an error comes once, last, where the walk stopped.
    #[test]
    fn the_entry_walk_stays_in_the_table(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        start in 0usize..60,
    ) {
        let mut offset = start;
        let mut stopped = false;
        for entry in Entries::new(&bytes, Signature::MADT, start) {
            prop_assert!(!stopped, "an entry after the error");
            match entry {
                Ok(entry) => {
                    prop_assert_eq!(entry.offset, offset);
                    prop_assert!(entry.bytes.len() >= 2);
                    prop_assert_eq!(entry.bytes, &bytes[offset..offset + entry.bytes.len()]);
                    prop_assert_eq!(entry.entry_type, bytes[offset]);
                    offset += entry.bytes.len();
                }
                Err(AcpiWarning::BadEntryLength { offset: at, remaining, .. }) => {
                    prop_assert_eq!(at, offset);
                    prop_assert_eq!(remaining, bytes.len() - offset);
                    stopped = true;
                }
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert!(stopped || offset >= bytes.len());
    }

    /// CPUID that answers anything decodes without panicking, into a layout that splits an
    /// APIC id without losing bits.
    #[test]
    fn any_cpuid_gives_a_usable_layout(source in cpuid(), apic in any::<u32>()) {
        let info = CpuInfo::read(&source);
        let layout = info.layout;
        let parts = layout.split(ApicId(apic));
        let shift = layout.package_shift();
        if shift < 32 && layout.smt_bits < 32 {
            let rebuilt = (parts.package << shift) | (parts.core << layout.smt_bits) | parts.thread;
            prop_assert_eq!(rebuilt, apic, "{:?}", layout);
        }
    }

    /// The topology of any decoded firmware, with any layout, boot CPU and RAM map.
    #[test]
    fn topologies_are_consistent(
        spec in firmware(),
        smt_bits in 0u32..40,
        core_bits in 0u32..40,
        boot in apic_id(),
        ram in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4),
    ) {
        let memory = spec.memory();
        let info = read(&memory).0.unwrap_or_default();
        let layout = ApicIdLayout { smt_bits, core_bits, source: LayoutSource::LeafB };
        let ram: Vec<MemoryRange> = ram.iter().map(|&(base, length)| MemoryRange { base, length }).collect();
        let topology = Topology::build(&info, &layout, ApicId(boot), &ram);
        check_topology(&topology, ApicId(boot))?;
    }
}
