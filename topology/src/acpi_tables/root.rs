//! The root table walk: reads the XSDT (else the RSDT) and lists the tables it points to.
//!
//! Called once by the ACPI entry points after the RSDP is validated. A broken XSDT falls
//! back to the RSDT; if neither works the result is an empty list and a warning, never a
//! panic or an error.

use alloc::vec::Vec;

use acpi::AcpiHandler;

use super::bytes::{u32_at, u64_at};
use super::errors::{AcpiWarning, TableProblem};
use super::mapping::Mapper;
use super::rsdp::RootPointer;
use super::sdt::{Signature, HEADER_LEN};
use super::table::{map_table, read_header};

/// Physical addresses of all tables listed by the first usable root table.
pub(crate) fn table_addresses<H: AcpiHandler>(
    mapper: &Mapper<'_, H>,
    root: &RootPointer,
    warnings: &mut Vec<AcpiWarning>,
) -> Vec<u64> {
    let xsdt = root.xsdt.map(|address| (Signature::XSDT, address));
    let rsdt = (root.rsdt != 0).then_some((Signature::RSDT, u64::from(root.rsdt)));
    for (signature, address) in xsdt.into_iter().chain(rsdt) {
        match read_root(mapper, signature, address) {
            Ok(addresses) => return addresses,
            Err(problem) => warnings.push(AcpiWarning::RootTableUnusable {
                signature,
                address,
                problem,
            }),
        }
    }
    warnings.push(AcpiWarning::NoUsableRootTable);
    Vec::new()
}

/// Reads one root table: 4-byte entries for the RSDT, 8-byte entries for the XSDT. Null
/// entries are dropped; a partial trailing entry is ignored.
fn read_root<H: AcpiHandler>(
    mapper: &Mapper<'_, H>,
    signature: Signature,
    address: u64,
) -> Result<Vec<u64>, TableProblem> {
    let header = read_header(mapper, address)?;
    if header.signature != signature {
        return Err(TableProblem::SignatureMismatch {
            found: header.signature,
        });
    }
    let region = map_table(mapper, address, &header)?;
    let width = if signature == Signature::XSDT { 8 } else { 4 };
    let entries = region.bytes().get(HEADER_LEN..).unwrap_or_default();
    Ok(entries
        .chunks_exact(width)
        .filter_map(entry_address)
        .filter(|&a| a != 0)
        .collect())
}

/// A root table entry: a 32-bit (RSDT) or 64-bit (XSDT) physical address.
fn entry_address(entry: &[u8]) -> Option<u64> {
    match entry.len() {
        8 => u64_at(entry, 0),
        _ => u32_at(entry, 0).map(u64::from),
    }
}
