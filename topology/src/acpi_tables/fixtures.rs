//! Test-only builders for firmware memory: ACPI tables with correct lengths and checksums,
//! laid out in a buffer where a "physical address" is an offset, plus an [`AcpiHandler`]
//! over that buffer that maps only what the buffer holds and counts live mappings.
#![allow(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ptr::NonNull;

use acpi::{AcpiHandler, PhysicalMapping};

/// Sets `bytes[index]` so that all of `bytes` sums to zero.
pub(crate) fn fix_checksum(bytes: &mut [u8], index: usize) {
    bytes[index] = 0;
    let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    bytes[index] = 0u8.wrapping_sub(sum);
}

/// A table: SDT header (length and checksum filled in) followed by `body`.
pub(crate) fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut table = Vec::with_capacity(36 + body.len());
    table.extend_from_slice(signature);
    table.extend_from_slice(&(36 + body.len() as u32).to_le_bytes());
    table.push(revision);
    table.push(0); // checksum
    table.extend_from_slice(b"BOCHS ");
    table.extend_from_slice(b"BXPC    ");
    table.extend_from_slice(&1u32.to_le_bytes());
    table.extend_from_slice(b"BXPC");
    table.extend_from_slice(&1u32.to_le_bytes());
    table.extend_from_slice(body);
    fix_checksum(&mut table, 9);
    table
}

/// Rewrites a table's length field and checksum, for hostile-length tests.
pub(crate) fn set_length(table: &mut [u8], length: u32) {
    table[4..8].copy_from_slice(&length.to_le_bytes());
    fix_checksum(table, 9);
}

pub(crate) fn rsdp_v1(rsdt: u32) -> Vec<u8> {
    let mut rsdp = Vec::new();
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(b"BOCHS ");
    rsdp.push(0); // revision
    rsdp.extend_from_slice(&rsdt.to_le_bytes());
    fix_checksum(&mut rsdp, 8);
    rsdp
}

pub(crate) fn rsdp_v2(rsdt: u32, xsdt: u64) -> Vec<u8> {
    let mut rsdp = rsdp_v1(rsdt);
    rsdp[15] = 2;
    fix_checksum(&mut rsdp, 8);
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&xsdt.to_le_bytes());
    rsdp.extend_from_slice(&[0; 4]);
    fix_checksum(&mut rsdp, 32);
    rsdp
}

pub(crate) fn rsdt(tables: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = tables
        .iter()
        .flat_map(|&a| (a as u32).to_le_bytes())
        .collect();
    sdt(b"RSDT", 1, &body)
}

pub(crate) fn xsdt(tables: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = tables.iter().flat_map(|&a| a.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

/// A MADT with PCAT_COMPAT set.
pub(crate) fn madt(local_apic_address: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&local_apic_address.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes());
    entries.iter().for_each(|e| body.extend_from_slice(e));
    sdt(b"APIC", 3, &body)
}

/// MADT entries.
pub(crate) mod madt_entry {
    use alloc::vec::Vec;

    /// Any entry: type, length, then `data`.
    pub(crate) fn raw(entry_type: u8, data: &[u8]) -> Vec<u8> {
        let mut entry = alloc::vec![entry_type, (data.len() + 2) as u8];
        entry.extend_from_slice(data);
        entry
    }

    pub(crate) fn local_apic(uid: u8, apic_id: u8, flags: u32) -> Vec<u8> {
        let mut data = alloc::vec![uid, apic_id];
        data.extend_from_slice(&flags.to_le_bytes());
        raw(0, &data)
    }

    pub(crate) fn local_x2apic(uid: u32, apic_id: u32, flags: u32) -> Vec<u8> {
        let mut data = alloc::vec![0, 0];
        [apic_id, flags, uid]
            .iter()
            .for_each(|v| data.extend_from_slice(&v.to_le_bytes()));
        raw(9, &data)
    }

    pub(crate) fn io_apic(id: u8, address: u32, gsi_base: u32) -> Vec<u8> {
        let mut data = alloc::vec![id, 0];
        data.extend_from_slice(&address.to_le_bytes());
        data.extend_from_slice(&gsi_base.to_le_bytes());
        raw(1, &data)
    }

    pub(crate) fn interrupt_override(bus: u8, irq: u8, gsi: u32, flags: u16) -> Vec<u8> {
        let mut data = alloc::vec![bus, irq];
        data.extend_from_slice(&gsi.to_le_bytes());
        data.extend_from_slice(&flags.to_le_bytes());
        raw(2, &data)
    }

    pub(crate) fn local_apic_address_override(address: u64) -> Vec<u8> {
        let mut data = alloc::vec![0, 0];
        data.extend_from_slice(&address.to_le_bytes());
        raw(5, &data)
    }
}

/// What QEMU's `pc` machine puts in its MADT for `-smp cpus`: one enabled local APIC per
/// CPU, the I/O APIC, overrides for IRQ 0 and the PCI link IRQs, and a LINT1 NMI entry.
pub(crate) fn qemu_madt_entries(cpus: u8) -> Vec<Vec<u8>> {
    let mut entries: Vec<_> = (0..cpus).map(|i| madt_entry::local_apic(i, i, 1)).collect();
    entries.push(madt_entry::io_apic(0, 0xfec0_0000, 0));
    entries.push(madt_entry::interrupt_override(0, 0, 2, 0));
    for irq in [5, 9, 10, 11] {
        entries.push(madt_entry::interrupt_override(0, irq, irq.into(), 0xd));
    }
    entries.push(madt_entry::raw(4, &[0xff, 0, 0, 1]));
    entries
}

/// An SRAT of the given table revision.
pub(crate) fn srat(revision: u8, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    entries.iter().for_each(|e| body.extend_from_slice(e));
    sdt(b"SRAT", revision, &body)
}

/// SRAT entries.
pub(crate) mod srat_entry {
    use super::madt_entry::raw;
    use alloc::vec::Vec;

    pub(crate) fn processor_apic(domain: u32, apic_id: u8, flags: u32) -> Vec<u8> {
        let d = domain.to_le_bytes();
        let mut data = alloc::vec![d[0], apic_id];
        data.extend_from_slice(&flags.to_le_bytes());
        data.extend_from_slice(&[0, d[1], d[2], d[3]]);
        data.extend_from_slice(&0u32.to_le_bytes());
        raw(0, &data)
    }

    pub(crate) fn processor_x2apic(domain: u32, apic_id: u32, flags: u32) -> Vec<u8> {
        let mut data = alloc::vec![0, 0];
        [domain, apic_id, flags, 0, 0]
            .iter()
            .for_each(|v| data.extend_from_slice(&v.to_le_bytes()));
        raw(2, &data)
    }

    pub(crate) fn memory(domain: u32, base: u64, length: u64, flags: u32) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&domain.to_le_bytes());
        data.extend_from_slice(&[0, 0]);
        data.extend_from_slice(&base.to_le_bytes());
        data.extend_from_slice(&length.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&flags.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        raw(1, &data)
    }
}

/// Two domains of two CPUs each (APIC ids 0-1 and 2-3) and 1 GiB each, QEMU style:
/// domain 0 holds the low 640 KiB and 1 MiB-1 GiB, domain 1 holds 1-2 GiB.
pub(crate) fn two_node_srat_entries() -> Vec<Vec<u8>> {
    let mut entries: Vec<_> = (0..4)
        .map(|apic| srat_entry::processor_apic(u32::from(apic) / 2, apic, 1))
        .collect();
    entries.push(srat_entry::memory(0, 0, 0xa_0000, 1));
    entries.push(srat_entry::memory(0, 0x10_0000, 0x3ff0_0000, 1));
    entries.push(srat_entry::memory(1, 0x4000_0000, 0x4000_0000, 1));
    entries
}

pub(crate) fn slit(localities: u64, matrix: &[u8]) -> Vec<u8> {
    let mut body = localities.to_le_bytes().to_vec();
    body.extend_from_slice(matrix);
    sdt(b"SLIT", 1, &body)
}

/// QEMU's HPET table: 3 comparators, 64-bit counter, legacy capable, Intel vendor id.
pub(crate) fn hpet(address_space: u8, base: u64) -> Vec<u8> {
    let mut body = 0x8086_a201u32.to_le_bytes().to_vec();
    body.extend_from_slice(&[address_space, 64, 0, 0]);
    body.extend_from_slice(&base.to_le_bytes());
    body.push(0); // HPET number
    body.extend_from_slice(&128u16.to_le_bytes());
    body.push(0); // page protection
    sdt(b"HPET", 1, &body)
}

/// Which root tables the firmware provides.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Roots {
    /// ACPI 1.0: RSDP v1 and an RSDT.
    RsdtOnly,
    /// ACPI 2.0: RSDP v2, RSDT and XSDT listing the same tables.
    RsdtAndXsdt,
}

/// A buffer of firmware memory: the RSDP and root tables first, then the given tables in
/// order, so the last table given ends the memory.
pub(crate) struct Firmware {
    pub memory: Vec<u8>,
    pub rsdp: Vec<u8>,
    pub rsdp_address: u64,
    /// Where each table given to [`Firmware::new`] was placed, in order.
    pub tables: Vec<u64>,
    pub rsdt: u64,
    pub xsdt: Option<u64>,
}

impl Firmware {
    pub(crate) fn new(roots: Roots, tables: &[Vec<u8>]) -> Firmware {
        // Low memory stays empty so that no table sits at physical address 0.
        let rsdp_address = 0x40;
        let rsdt_address = rsdp_address + 0x30;
        let xsdt_address = align(rsdt_address + 36 + 4 * tables.len() as u64);
        let mut next = align(xsdt_address + 36 + 8 * tables.len() as u64);
        let addresses: Vec<u64> = tables
            .iter()
            .map(|t| {
                let address = next;
                next = align(next + t.len() as u64);
                address
            })
            .collect();
        let (rsdp, xsdt) = match roots {
            Roots::RsdtOnly => (rsdp_v1(rsdt_address as u32), None),
            Roots::RsdtAndXsdt => (
                rsdp_v2(rsdt_address as u32, xsdt_address),
                Some(xsdt_address),
            ),
        };
        let mut memory = Vec::new();
        put(&mut memory, rsdp_address, &rsdp);
        put(&mut memory, rsdt_address, &rsdt(&addresses));
        if let Some(xsdt_address) = xsdt {
            put(&mut memory, xsdt_address, &self::xsdt(&addresses));
        }
        tables
            .iter()
            .zip(&addresses)
            .for_each(|(t, &a)| put(&mut memory, a, t));
        Firmware {
            memory,
            rsdp,
            rsdp_address,
            tables: addresses,
            rsdt: rsdt_address,
            xsdt,
        }
    }

    /// The bytes from the table placed `index`-th to the end of memory.
    pub(crate) fn table_mut(&mut self, index: usize) -> &mut [u8] {
        &mut self.memory[self.tables[index] as usize..]
    }
}

fn align(address: u64) -> u64 {
    address.next_multiple_of(16)
}

/// Writes `bytes` at `address`, growing `memory` as needed.
fn put(memory: &mut Vec<u8>, address: u64, bytes: &[u8]) {
    let start = address as usize;
    if memory.len() < start + bytes.len() {
        memory.resize(start + bytes.len(), 0);
    }
    memory[start..start + bytes.len()].copy_from_slice(bytes);
}

/// Maps physical address `a` to `memory[a]`; maps only what `memory` holds, so a request
/// running past its end gets a shorter region (or an empty one).
#[derive(Clone, Copy)]
pub(crate) struct TestHandler<'a> {
    memory: &'a [u8],
    live_mappings: &'a Cell<isize>,
}

impl<'a> TestHandler<'a> {
    pub(crate) fn new(memory: &'a [u8], live_mappings: &'a Cell<isize>) -> TestHandler<'a> {
        TestHandler {
            memory,
            live_mappings,
        }
    }
}

impl AcpiHandler for TestHandler<'_> {
    unsafe fn map_physical_region<T>(
        &self,
        address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let available = self.memory.len().saturating_sub(address);
        let region_length = size.min(available);
        let start = if available == 0 {
            NonNull::dangling()
        } else {
            NonNull::from(&self.memory[address]).cast::<T>()
        };
        self.live_mappings.set(self.live_mappings.get() + 1);
        // SAFETY: `start` points at `region_length` bytes of `memory`, which outlives the
        // mapping, or is dangling with a region length of 0.
        unsafe { PhysicalMapping::new(address, start, region_length, region_length, *self) }
    }

    fn unmap_physical_region<T>(region: &PhysicalMapping<Self, T>) {
        let live = region.handler().live_mappings;
        live.set(live.get() - 1);
    }
}
