//! ACPI decoding: from the RSDP to an owned [`AcpiInfo`] summary of processors, interrupt
//! controllers, HPET, NUMA affinity and distances.
//!
//! The hypervisor calls [`AcpiInfo::from_rsdp_copy`] (multiboot2 RSDP tag) or
//! [`AcpiInfo::from_rsdp_address`] (PVH `rsdp_paddr`) once at boot, with an
//! [`acpi::AcpiHandler`] that maps physical memory into its window. Only an unusable RSDP is
//! an error; every other defect (missing or corrupt table, malformed entry) degrades with an
//! [`AcpiWarning`]. It must never panic or read outside what the handler mapped.
//!
//! The `acpi` crate (5.2) supplies the handler interface only. Its table walk and parsers are
//! not used because they are unsafe on hostile input: `Rsdp::validate` reads `length` bytes
//! past a 36-byte mapping, the root-table walk underflows on a length below 36, the MADT
//! entry iterator loops forever on a zero-length entry and reads past short entries, the
//! table mapper does not check that the handler mapped the full length, and `HpetInfo::new`
//! asserts. SRAT and SLIT it does not parse at all.

mod bytes;
mod errors;
mod hpet;
mod madt;
mod mapping;
mod root;
mod rsdp;
mod sdt;
mod slit;
mod srat;
mod table;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use alloc::vec::Vec;

use acpi::AcpiHandler;

pub use errors::{AcpiError, AcpiWarning, TableProblem};
pub use hpet::HpetInfo;
pub use madt::{IoApicInfo, IrqOverride, MadtCpu};
pub use sdt::{Signature, MAX_TABLE_LEN};
pub use slit::{Slit, LOCAL_DISTANCE};
pub use srat::{CpuAffinity, MemoryAffinity, NumaInfo};

use mapping::Mapper;
use table::{map_table, read_header};

/// Architectural default local APIC base, used when there is no MADT.
pub const DEFAULT_LOCAL_APIC_ADDRESS: u64 = 0xfee0_0000;

/// What the ACPI tables say about this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiInfo {
    /// RSDP revision: 0 for ACPI 1.0, 2 and above for later versions.
    pub revision: u8,
    /// From the MADT (or its address override entry), else the architectural default.
    pub local_apic_address: u64,
    /// MADT flag PCAT_COMPAT: legacy 8259 PICs are present and should be masked.
    pub legacy_pics: bool,
    /// Processors in MADT order, one per APIC id, disabled ones included. Empty without MADT.
    pub cpus: Vec<MadtCpu>,
    pub io_apics: Vec<IoApicInfo>,
    /// ISA interrupt source overrides.
    pub overrides: Vec<IrqOverride>,
    pub hpet: Option<HpetInfo>,
    /// From the SRAT, if there is a usable one.
    pub numa: Option<NumaInfo>,
    /// From the SLIT, if there is a usable one.
    pub distances: Option<Slit>,
    pub warnings: Vec<AcpiWarning>,
}

/// The entry points are the only `unsafe` API: they take on the handler's contract.
#[allow(unsafe_code)]
impl AcpiInfo {
    /// Reads the ACPI tables starting from a copy of the RSDP, as a multiboot2 ACPI tag
    /// carries it (ACPI 1.0: 20 bytes; ACPI 2.0: 36 bytes or more).
    ///
    /// # Safety
    ///
    /// As for [`AcpiInfo::from_rsdp_address`]: the tables the RSDP points to are read
    /// through `handler`, under the same contract.
    pub unsafe fn from_rsdp_copy<H: AcpiHandler>(
        handler: &H,
        rsdp: &[u8],
    ) -> Result<AcpiInfo, AcpiError> {
        // SAFETY: the caller guarantees the handler contract `Mapper::new` requires.
        let mapper = unsafe { Mapper::new(handler) };
        Self::from_rsdp_bytes(&mapper, rsdp)
    }

    /// Reads the ACPI tables starting from the RSDP at physical `address`.
    ///
    /// # Safety
    ///
    /// Addresses found in the firmware tables are passed to `handler` unchecked, so it must
    /// cope with any physical address and length: it maps only memory that is safe to read
    /// and that nothing writes while mapped, and for every mapping it returns,
    /// `region_length` is the number of bytes readable from `virtual_start` (fewer than
    /// asked, even 0, when it will not map the whole range; such tables are refused).
    pub unsafe fn from_rsdp_address<H: AcpiHandler>(
        handler: &H,
        address: u64,
    ) -> Result<AcpiInfo, AcpiError> {
        // SAFETY: the caller guarantees the handler contract `Mapper::new` requires.
        let mapper = unsafe { Mapper::new(handler) };
        Self::from_rsdp_bytes(&mapper, &rsdp::copy_from(&mapper, address)?)
    }

    fn from_rsdp_bytes<H: AcpiHandler>(
        mapper: &Mapper<'_, H>,
        rsdp: &[u8],
    ) -> Result<AcpiInfo, AcpiError> {
        let mut warnings = Vec::new();
        let root = rsdp::decode(rsdp, &mut warnings)?;
        let info = AcpiInfo {
            revision: root.revision,
            warnings,
            ..AcpiInfo::default()
        };
        let mut collector = Collector {
            info,
            decoded: Vec::new(),
        };
        let addresses = root::table_addresses(mapper, &root, &mut collector.info.warnings);
        for address in addresses {
            collector.visit(mapper, address);
        }
        if !collector.decoded.contains(&Signature::MADT) {
            collector.info.warnings.push(AcpiWarning::MadtMissing);
        }
        Ok(collector.info)
    }
}

/// No tables: no processors listed, the default local APIC address.
impl Default for AcpiInfo {
    fn default() -> AcpiInfo {
        AcpiInfo {
            revision: 0,
            local_apic_address: DEFAULT_LOCAL_APIC_ADDRESS,
            legacy_pics: false,
            cpus: Vec::new(),
            io_apics: Vec::new(),
            overrides: Vec::new(),
            hpet: None,
            numa: None,
            distances: None,
            warnings: Vec::new(),
        }
    }
}

/// Tables this crate decodes; the first usable one of each signature is taken.
const DECODED_TABLES: [Signature; 4] = [
    Signature::MADT,
    Signature::SRAT,
    Signature::SLIT,
    Signature::HPET,
];

/// Fills an [`AcpiInfo`] table by table.
struct Collector {
    info: AcpiInfo,
    /// Signatures already decoded successfully.
    decoded: Vec<Signature>,
}

impl Collector {
    /// Decodes the table at `address` if it is one of [`DECODED_TABLES`] not yet decoded.
    fn visit<H: AcpiHandler>(&mut self, mapper: &Mapper<'_, H>, address: u64) {
        let warnings = &mut self.info.warnings;
        let header = match read_header(mapper, address) {
            Ok(header) => header,
            Err(problem) => {
                return warnings.push(AcpiWarning::TableUnreadable { address, problem })
            }
        };
        let signature = header.signature;
        if !DECODED_TABLES.contains(&signature) {
            return;
        }
        if self.decoded.contains(&signature) {
            return warnings.push(AcpiWarning::DuplicateTable { signature, address });
        }
        let decoded = map_table(mapper, address, &header)
            .and_then(|region| self.decode(signature, region.bytes()));
        match decoded {
            Ok(()) => self.decoded.push(signature),
            Err(problem) => self.info.warnings.push(AcpiWarning::TableUnusable {
                signature,
                address,
                problem,
            }),
        }
    }

    fn decode(&mut self, signature: Signature, table: &[u8]) -> Result<(), TableProblem> {
        let info = &mut self.info;
        match signature {
            Signature::MADT => {
                let madt = madt::decode(table, &mut info.warnings)?;
                info.local_apic_address = madt.local_apic_address;
                info.legacy_pics = madt.legacy_pics;
                info.cpus = madt.cpus;
                info.io_apics = madt.io_apics;
                info.overrides = madt.overrides;
            }
            Signature::SRAT => info.numa = Some(srat::decode(table, &mut info.warnings)?),
            Signature::SLIT => info.distances = Some(slit::decode(table)?),
            Signature::HPET => info.hpet = Some(hpet::decode(table)?),
            _ => {}
        }
        Ok(())
    }
}
