//! The Root System Description Pointer: validates it and says which root table to read.
//!
//! Called with the RSDP copy from a multiboot2 tag, or with bytes read at the physical
//! address from the PVH start info. It rejects an RSDP whose signature or ACPI 1.0 checksum is
//! wrong (the only hard ACPI error); a bad ACPI 2.0 extension only degrades to the RSDT.

use alloc::vec::Vec;

use acpi::AcpiHandler;

use super::bytes::{array_at, sums_to_zero, u32_at, u64_at, u8_at};
use super::errors::{AcpiError, AcpiWarning};
use super::mapping::Mapper;

/// Bytes covered by the ACPI 1.0 checksum.
const V1_LEN: usize = 20;
/// Size of the ACPI 2.0 RSDP.
const V2_LEN: usize = 36;
/// Largest RSDP length field accepted; the structure is 36 bytes in every ACPI version.
const MAX_LEN: usize = 4096;
/// First ACPI revision whose RSDP carries the length, XSDT and extended checksum fields.
const FIRST_V2_REVISION: u8 = 2;
const SIGNATURE: [u8; 8] = *b"RSD PTR ";

/// Field offsets (ACPI 6.5 section 5.2.5.3).
mod offsets {
    pub const SIGNATURE: usize = 0;
    pub const REVISION: usize = 15;
    pub const RSDT_ADDRESS: usize = 16;
    pub const LENGTH: usize = 20;
    pub const XSDT_ADDRESS: usize = 24;
}

/// Where the root tables are, as the RSDP says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RootPointer {
    pub revision: u8,
    /// 0 when absent.
    pub rsdt: u32,
    /// Only when the ACPI 2.0 fields are valid and the address is not 0.
    pub xsdt: Option<u64>,
}

/// Validates an RSDP and extracts its root table addresses.
pub(crate) fn decode(
    bytes: &[u8],
    warnings: &mut Vec<AcpiWarning>,
) -> Result<RootPointer, AcpiError> {
    let v1 = bytes.get(..V1_LEN).ok_or(AcpiError::RsdpTooShort {
        length: bytes.len(),
    })?;
    if array_at::<8>(v1, offsets::SIGNATURE) != Some(SIGNATURE) {
        return Err(AcpiError::RsdpBadSignature);
    }
    if !sums_to_zero(v1) {
        return Err(AcpiError::RsdpBadChecksum);
    }
    let revision = u8_at(v1, offsets::REVISION).unwrap_or(0);
    let rsdt = u32_at(v1, offsets::RSDT_ADDRESS).unwrap_or(0);
    let xsdt = if revision >= FIRST_V2_REVISION {
        let xsdt = extended_xsdt(bytes);
        if xsdt.is_none() {
            warnings.push(AcpiWarning::RsdpExtensionInvalid);
        }
        xsdt.filter(|&address| address != 0)
    } else {
        None
    };
    if rsdt == 0 && xsdt.is_none() {
        return Err(AcpiError::NoRootTable);
    }
    Ok(RootPointer {
        revision,
        rsdt,
        xsdt,
    })
}

/// The XSDT address of an ACPI 2.0 RSDP whose length and extended checksum are valid.
fn extended_xsdt(bytes: &[u8]) -> Option<u64> {
    let length = usize::try_from(u32_at(bytes, offsets::LENGTH)?).ok()?;
    if !(V2_LEN..=MAX_LEN).contains(&length) {
        return None;
    }
    let extended = bytes.get(..length)?;
    sums_to_zero(extended).then_some(())?;
    u64_at(extended, offsets::XSDT_ADDRESS)
}

/// Copies the RSDP at physical `address`: its ACPI 1.0 part, and the whole ACPI 2.0
/// structure when the revision says there is one and the handler can map it.
pub(crate) fn copy_from<H: AcpiHandler>(
    mapper: &Mapper<'_, H>,
    address: u64,
) -> Result<Vec<u8>, AcpiError> {
    let map = |length| mapper.map(address, length);
    let v1 = map(V1_LEN).map_err(|_| AcpiError::RsdpUnmapped { address })?;
    if u8_at(v1.bytes(), offsets::REVISION).unwrap_or(0) < FIRST_V2_REVISION {
        return Ok(v1.bytes().to_vec());
    }
    let Ok(v2) = map(V2_LEN) else {
        return Ok(v1.bytes().to_vec());
    };
    let length = u32_at(v2.bytes(), offsets::LENGTH).map_or(0, |l| l as usize);
    if length <= V2_LEN || length > MAX_LEN {
        return Ok(v2.bytes().to_vec());
    }
    Ok(map(length).map_or_else(|_| v2.bytes().to_vec(), |full| full.bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi_tables::fixtures;

    #[test]
    fn v1_rsdp_gives_the_rsdt() {
        let mut warnings = Vec::new();
        let root = decode(&fixtures::rsdp_v1(0x1234), &mut warnings).unwrap();
        assert_eq!(
            root,
            RootPointer {
                revision: 0,
                rsdt: 0x1234,
                xsdt: None
            }
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn v2_rsdp_gives_both_roots() {
        let mut warnings = Vec::new();
        let root = decode(&fixtures::rsdp_v2(0x1000, 0x2000), &mut warnings).unwrap();
        assert_eq!(
            root,
            RootPointer {
                revision: 2,
                rsdt: 0x1000,
                xsdt: Some(0x2000)
            }
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn v2_rsdp_with_zero_xsdt_uses_rsdt_quietly() {
        let mut warnings = Vec::new();
        let root = decode(&fixtures::rsdp_v2(0x1000, 0), &mut warnings).unwrap();
        assert_eq!(root.xsdt, None);
        assert!(warnings.is_empty());
    }

    #[test]
    fn bad_extended_checksum_falls_back_to_rsdt() {
        let mut bytes = fixtures::rsdp_v2(0x1000, 0x2000);
        bytes[32] ^= 0xff;
        let mut warnings = Vec::new();
        let root = decode(&bytes, &mut warnings).unwrap();
        assert_eq!(root.xsdt, None);
        assert_eq!(warnings, [AcpiWarning::RsdpExtensionInvalid]);
    }

    #[test]
    fn v2_revision_on_a_v1_sized_copy_falls_back_to_rsdt() {
        let bytes = fixtures::rsdp_v2(0x1000, 0x2000);
        let mut warnings = Vec::new();
        let root = decode(&bytes[..V1_LEN], &mut warnings).unwrap();
        assert_eq!(
            root,
            RootPointer {
                revision: 2,
                rsdt: 0x1000,
                xsdt: None
            }
        );
        assert_eq!(warnings, [AcpiWarning::RsdpExtensionInvalid]);
    }

    #[test]
    fn hostile_length_field_is_refused() {
        let mut bytes = fixtures::rsdp_v2(0x1000, 0x2000);
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        fixtures::fix_checksum(&mut bytes, 32);
        let mut warnings = Vec::new();
        assert_eq!(decode(&bytes, &mut warnings).unwrap().xsdt, None);
        assert_eq!(warnings, [AcpiWarning::RsdpExtensionInvalid]);
    }

    #[test]
    fn unusable_rsdps_are_hard_errors() {
        let mut warnings = Vec::new();
        assert_eq!(
            decode(&[0; 19], &mut warnings),
            Err(AcpiError::RsdpTooShort { length: 19 })
        );
        let mut bad_signature = fixtures::rsdp_v1(0x1000);
        bad_signature[0] = b'X';
        assert_eq!(
            decode(&bad_signature, &mut warnings),
            Err(AcpiError::RsdpBadSignature)
        );
        let mut bad_checksum = fixtures::rsdp_v1(0x1000);
        bad_checksum[8] ^= 1;
        assert_eq!(
            decode(&bad_checksum, &mut warnings),
            Err(AcpiError::RsdpBadChecksum)
        );
        assert_eq!(
            decode(&fixtures::rsdp_v1(0), &mut warnings),
            Err(AcpiError::NoRootTable)
        );
    }
}
