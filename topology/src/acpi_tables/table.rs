//! Maps one ACPI table safely: its header first, then exactly the length the header gives,
//! refusing lengths that are too short, too long or not fully mapped, and bad checksums.
//!
//! Used by the root-table walk and the collection of MADT, SRAT, SLIT and HPET. It never
//! decodes a table's contents; it only hands out a validated byte slice.

use acpi::AcpiHandler;

use super::bytes::sums_to_zero;
use super::errors::TableProblem;
use super::mapping::{MappedRegion, Mapper};
use super::sdt::{SdtHeader, HEADER_LEN, MAX_TABLE_LEN};

/// Reads the header of the table at `address`.
pub(crate) fn read_header<H: AcpiHandler>(
    mapper: &Mapper<'_, H>,
    address: u64,
) -> Result<SdtHeader, TableProblem> {
    let region = mapper.map(address, HEADER_LEN)?;
    SdtHeader::decode(region.bytes()).ok_or(TableProblem::Unmapped {
        mapped: 0,
        needed: HEADER_LEN,
    })
}

/// Maps the whole table whose `header` was read at `address` and checks its checksum.
/// The returned region holds exactly `header.length` bytes.
pub(crate) fn map_table<H: AcpiHandler>(
    mapper: &Mapper<'_, H>,
    address: u64,
    header: &SdtHeader,
) -> Result<MappedRegion<H>, TableProblem> {
    let length = usize::try_from(header.length).unwrap_or(usize::MAX);
    if length < HEADER_LEN {
        return Err(TableProblem::TooShort {
            length: header.length,
        });
    }
    if length > MAX_TABLE_LEN {
        return Err(TableProblem::TooLong {
            length: header.length,
        });
    }
    let region = mapper.map(address, length)?;
    if !sums_to_zero(region.bytes()) {
        return Err(TableProblem::BadChecksum);
    }
    Ok(region)
}
