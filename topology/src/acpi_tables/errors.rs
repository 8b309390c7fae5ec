//! What can go wrong while reading ACPI: the one hard error (no usable RSDP) and the typed
//! warnings for everything the decoder degrades around.
//!
//! Produced by the ACPI decoder, logged by the hypervisor at boot. Nothing here panics or
//! decides policy: a warning records what was skipped and why.

use core::fmt;

use super::sdt::Signature;
use crate::ids::ApicId;

/// The RSDP cannot be used, so no ACPI table can be found at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// The RSDP copy is shorter than the 20 bytes of an ACPI 1.0 RSDP.
    RsdpTooShort { length: usize },
    /// The handler could not map the 20 bytes of an RSDP at this physical address.
    RsdpUnmapped { address: u64 },
    /// The first eight bytes are not `"RSD PTR "`.
    RsdpBadSignature,
    /// The ACPI 1.0 part of the RSDP does not sum to zero.
    RsdpBadChecksum,
    /// Neither an RSDT nor a usable XSDT address is given.
    NoRootTable,
}

/// Why one table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableProblem {
    /// The handler mapped fewer bytes than the table needs.
    Unmapped {
        mapped: usize,
        needed: usize,
    },
    /// The length field is below what this table's fixed part needs.
    TooShort {
        length: u32,
    },
    /// The length field is above [`MAX_TABLE_LEN`](super::MAX_TABLE_LEN).
    TooLong {
        length: u32,
    },
    BadChecksum,
    /// A root table pointer leads to a table with another signature.
    SignatureMismatch {
        found: Signature,
    },
    /// SLIT: the locality count does not match the table length.
    LocalityCountMismatch {
        localities: u64,
    },
    /// SLIT: a local distance other than 10, or a remote one of 10 or less.
    BadDistance {
        from: u32,
        to: u32,
        distance: u8,
    },
    /// HPET: the block is not in system memory (address space id is not 0).
    NotSystemMemory {
        address_space: u8,
    },
}

impl TableProblem {
    /// `TooShort` for a table whose bytes end before its fixed part does.
    pub(crate) fn too_short(table: &[u8]) -> TableProblem {
        TableProblem::TooShort {
            length: u32::try_from(table.len()).unwrap_or(u32::MAX),
        }
    }
}

/// Something the decoder skipped or corrected; the rest of the result is still usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiWarning {
    /// The ACPI 2.0 part of the RSDP (length or extended checksum) is bad: the RSDT is used.
    RsdpExtensionInvalid,
    /// The XSDT or RSDT could not be used.
    RootTableUnusable {
        signature: Signature,
        address: u64,
        problem: TableProblem,
    },
    /// No root table could be read: no ACPI tables are known.
    NoUsableRootTable,
    /// An RSDT/XSDT entry points at memory the handler cannot map a table header from.
    TableUnreadable { address: u64, problem: TableProblem },
    /// A table this crate decodes was refused.
    TableUnusable {
        signature: Signature,
        address: u64,
        problem: TableProblem,
    },
    /// A second table with this signature; the first one was used.
    DuplicateTable { signature: Signature, address: u64 },
    /// No MADT: no CPUs are listed, so only the boot CPU can run.
    MadtMissing,
    /// An entry's length is below 2 or runs past the table: the rest of the table is ignored.
    BadEntryLength {
        table: Signature,
        offset: usize,
        length: usize,
        remaining: usize,
    },
    /// An entry is shorter than its type requires: it is skipped.
    EntryTooShort {
        table: Signature,
        entry_type: u8,
        offset: usize,
        length: usize,
    },
    /// A second processor entry of the same kind with this APIC id: it is skipped.
    DuplicateApicId { apic_id: ApicId },
    /// An enabled processor entry carries the broadcast APIC id: it is skipped.
    BroadcastApicId { acpi_uid: u32 },
    /// An interrupt source override for a bus other than ISA: it is skipped.
    OverrideNotIsa { bus: u8, source: u8 },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::RsdpTooShort { length } => write!(f, "RSDP copy has only {length} bytes"),
            AcpiError::RsdpUnmapped { address } => write!(f, "RSDP at {address:#x} is not mapped"),
            AcpiError::RsdpBadSignature => write!(f, "RSDP signature is not \"RSD PTR \""),
            AcpiError::RsdpBadChecksum => write!(f, "RSDP checksum is wrong"),
            AcpiError::NoRootTable => write!(f, "RSDP gives no RSDT or XSDT address"),
        }
    }
}

impl fmt::Display for TableProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableProblem::Unmapped { mapped, needed } => {
                write!(f, "only {mapped} of {needed} bytes mapped")
            }
            TableProblem::TooShort { length } => write!(f, "length {length} is too short"),
            TableProblem::TooLong { length } => write!(f, "length {length} is too long"),
            TableProblem::BadChecksum => write!(f, "bad checksum"),
            TableProblem::SignatureMismatch { found } => write!(f, "signature is {found}"),
            TableProblem::LocalityCountMismatch { localities } => {
                write!(f, "{localities} localities do not fit the table length")
            }
            TableProblem::BadDistance { from, to, distance } => {
                write!(f, "distance {from}->{to} is {distance}")
            }
            TableProblem::NotSystemMemory { address_space } => {
                write!(f, "address space {address_space} is not system memory")
            }
        }
    }
}

impl fmt::Display for AcpiWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiWarning::RsdpExtensionInvalid => {
                write!(f, "RSDP 2.0 fields are invalid, using the RSDT")
            }
            AcpiWarning::RootTableUnusable {
                signature,
                address,
                problem,
            } => {
                write!(f, "{signature} at {address:#x} unusable: {problem}")
            }
            AcpiWarning::NoUsableRootTable => write!(f, "no usable RSDT or XSDT"),
            AcpiWarning::TableUnreadable { address, problem } => {
                write!(f, "table header at {address:#x} unreadable: {problem}")
            }
            AcpiWarning::TableUnusable {
                signature,
                address,
                problem,
            } => {
                write!(f, "{signature} at {address:#x} skipped: {problem}")
            }
            AcpiWarning::DuplicateTable { signature, address } => {
                write!(f, "second {signature} at {address:#x} ignored")
            }
            AcpiWarning::MadtMissing => write!(f, "no MADT: boot CPU only"),
            AcpiWarning::BadEntryLength {
                table,
                offset,
                length,
                remaining,
            } => write!(
                f,
                "{table} entry at offset {offset} has length {length} with {remaining} bytes \
                 left: rest of table ignored"
            ),
            AcpiWarning::EntryTooShort {
                table,
                entry_type,
                offset,
                length,
            } => write!(
                f,
                "{table} entry type {entry_type} at offset {offset} is only {length} bytes: skipped"
            ),
            AcpiWarning::DuplicateApicId { apic_id } => {
                write!(
                    f,
                    "duplicate processor entry for APIC id {apic_id}: skipped"
                )
            }
            AcpiWarning::BroadcastApicId { acpi_uid } => {
                write!(
                    f,
                    "processor uid {acpi_uid} has the broadcast APIC id: skipped"
                )
            }
            AcpiWarning::OverrideNotIsa { bus, source } => {
                write!(
                    f,
                    "interrupt override for bus {bus} irq {source}: not ISA, skipped"
                )
            }
        }
    }
}
