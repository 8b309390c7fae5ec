//! The System Description Table header shared by every ACPI table, its signatures and limits,
//! and the iterator over the variable-length entries that the MADT and SRAT carry.
//!
//! Used by the root-table walk and by each table decoder. It reads only from byte slices that
//! the caller has already bounds-checked against what the handler mapped; it never maps memory
//! and never trusts a length field without checking it against the slice.

use core::fmt;

use super::bytes::{array_at, u32_at, u8_at};
use super::errors::AcpiWarning;

/// Size of the common SDT header (ACPI 6.5 section 5.2.6).
pub(crate) const HEADER_LEN: usize = 36;

/// Largest table this crate will map. Real MADTs and SRATs are a few KiB even on large
/// servers; a length beyond this is a corrupt or hostile header, not a table.
pub const MAX_TABLE_LEN: usize = 1 << 20;

/// Offsets inside the SDT header.
mod header_offsets {
    pub const SIGNATURE: usize = 0;
    pub const LENGTH: usize = 4;
    pub const REVISION: usize = 8;
}

/// A table's four-character signature, e.g. `APIC` for the MADT.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature(pub [u8; 4]);

impl Signature {
    pub const RSDT: Signature = Signature(*b"RSDT");
    pub const XSDT: Signature = Signature(*b"XSDT");
    pub const MADT: Signature = Signature(*b"APIC");
    pub const SRAT: Signature = Signature(*b"SRAT");
    pub const SLIT: Signature = Signature(*b"SLIT");
    pub const HPET: Signature = Signature(*b"HPET");
}

/// Printable ASCII as is, anything else as `?`: signatures come from firmware.
impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in &self.0 {
            let shown = if byte.is_ascii_graphic() || byte == b' ' {
                byte as char
            } else {
                '?'
            };
            write!(f, "{shown}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

/// The header fields this crate uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SdtHeader {
    pub signature: Signature,
    pub length: u32,
    pub revision: u8,
}

impl SdtHeader {
    /// Decodes the header at the start of `bytes`, or `None` if fewer than
    /// [`HEADER_LEN`] bytes are given.
    pub(crate) fn decode(bytes: &[u8]) -> Option<SdtHeader> {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        Some(SdtHeader {
            signature: Signature(array_at(bytes, header_offsets::SIGNATURE)?),
            length: u32_at(bytes, header_offsets::LENGTH)?,
            revision: u8_at(bytes, header_offsets::REVISION)?,
        })
    }
}

/// One entry of a table made of `{ type: u8, length: u8, ... }` records (MADT, SRAT).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<'a> {
    pub entry_type: u8,
    /// Offset of the entry from the start of the table, for diagnostics.
    pub offset: usize,
    /// The whole entry, type and length bytes included.
    pub bytes: &'a [u8],
}

impl Entry<'_> {
    /// The warning for an entry shorter than its type requires.
    pub(crate) fn too_short(&self, table: Signature) -> AcpiWarning {
        AcpiWarning::EntryTooShort {
            table,
            entry_type: self.entry_type,
            offset: self.offset,
            length: self.bytes.len(),
        }
    }
}

/// Walks the entries of `table` from `start`. Yields `Err` once and stops when an entry's
/// length is below the two header bytes (zero included) or runs past the end of the table.
pub(crate) struct Entries<'a> {
    table: &'a [u8],
    signature: Signature,
    offset: usize,
    stopped: bool,
}

impl<'a> Entries<'a> {
    pub(crate) fn new(table: &'a [u8], signature: Signature, start: usize) -> Entries<'a> {
        Entries {
            table,
            signature,
            offset: start,
            stopped: false,
        }
    }

    fn stop(&mut self, length: usize) -> Option<Result<Entry<'a>, AcpiWarning>> {
        self.stopped = true;
        Some(Err(AcpiWarning::BadEntryLength {
            table: self.signature,
            offset: self.offset,
            length,
            remaining: self.table.len().saturating_sub(self.offset),
        }))
    }
}

/// Size of the `{ type, length }` prefix of every entry.
const ENTRY_HEADER_LEN: usize = 2;

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, AcpiWarning>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.stopped || self.offset >= self.table.len() {
            return None;
        }
        let entry_type = u8_at(self.table, self.offset)?;
        let length = u8_at(self.table, self.offset + 1).map_or(0, usize::from);
        if length < ENTRY_HEADER_LEN {
            return self.stop(length);
        }
        let Some(bytes) = self.table.get(self.offset..self.offset + length) else {
            return self.stop(length);
        };
        let entry = Entry {
            entry_type,
            offset: self.offset,
            bytes,
        };
        self.offset += length;
        Some(Ok(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn collect(table: &[u8]) -> Vec<Result<(u8, usize, usize), AcpiWarning>> {
        Entries::new(table, Signature::MADT, 0)
            .map(|e| e.map(|e| (e.entry_type, e.offset, e.bytes.len())))
            .collect()
    }

    #[test]
    fn walks_entries_by_their_length() {
        let table = [7, 3, 0xaa, 9, 2, 1, 4, 0, 0];
        assert_eq!(
            collect(&table),
            [Ok((7, 0, 3)), Ok((9, 3, 2)), Ok((1, 5, 4))]
        );
    }

    #[test]
    fn zero_length_entry_stops_with_a_warning() {
        let table = [1, 2, 0x55, 0, 1, 2];
        let got = collect(&table);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Ok((1, 0, 2)));
        assert!(matches!(
            got[1],
            Err(AcpiWarning::BadEntryLength {
                offset: 2,
                length: 0,
                remaining: 4,
                ..
            })
        ));
    }

    #[test]
    fn entry_running_past_the_table_stops_with_a_warning() {
        let table = [1, 200, 0, 0];
        assert!(matches!(
            collect(&table)[..],
            [Err(AcpiWarning::BadEntryLength {
                offset: 0,
                length: 200,
                remaining: 4,
                ..
            })]
        ));
    }

    #[test]
    fn lone_trailing_byte_is_reported() {
        let table = [1, 2, 5];
        assert!(matches!(
            collect(&table)[..],
            [
                Ok(_),
                Err(AcpiWarning::BadEntryLength {
                    offset: 2,
                    length: 0,
                    remaining: 1,
                    ..
                })
            ]
        ));
    }

    #[test]
    fn header_needs_36_bytes() {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..4].copy_from_slice(b"APIC");
        bytes[4..8].copy_from_slice(&0x1234u32.to_le_bytes());
        bytes[8] = 5;
        let header = SdtHeader::decode(&bytes).unwrap();
        assert_eq!(
            header,
            SdtHeader {
                signature: Signature::MADT,
                length: 0x1234,
                revision: 5
            }
        );
        assert_eq!(SdtHeader::decode(&bytes[..35]), None);
    }

    #[test]
    fn signature_display_masks_non_ascii() {
        assert_eq!(alloc::format!("{}", Signature(*b"AP\x00C")), "AP?C");
    }
}
