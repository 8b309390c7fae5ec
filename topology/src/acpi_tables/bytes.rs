//! Bounds-checked little-endian reads from firmware bytes.
//!
//! Every ACPI decoder reads fields through these helpers, which return `None` instead of
//! panicking when a field would run past the slice. They never index a slice directly.

/// Reads `N` bytes at `offset`, or `None` if they are not all inside `bytes`.
fn array<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    let end = offset.checked_add(N)?;
    bytes.get(offset..end)?.try_into().ok()
}

pub(crate) fn u8_at(bytes: &[u8], offset: usize) -> Option<u8> {
    bytes.get(offset).copied()
}

pub(crate) fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    array(bytes, offset).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    array(bytes, offset).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    array(bytes, offset).map(u64::from_le_bytes)
}

pub(crate) fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    array(bytes, offset)
}

/// The ACPI checksum rule: all bytes of a structure sum to zero modulo 256.
pub(crate) fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_fields() {
        let bytes = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09];
        assert_eq!(u8_at(&bytes, 8), Some(0x09));
        assert_eq!(u16_at(&bytes, 1), Some(0x0302));
        assert_eq!(u32_at(&bytes, 0), Some(0x0403_0201));
        assert_eq!(u64_at(&bytes, 1), Some(0x0908_0706_0504_0302));
    }

    #[test]
    fn reads_past_the_end_are_refused() {
        let bytes = [0u8; 8];
        assert_eq!(u8_at(&bytes, 8), None);
        assert_eq!(u32_at(&bytes, 5), None);
        assert_eq!(u64_at(&bytes, 1), None);
        assert_eq!(u64_at(&bytes, usize::MAX), None);
    }

    #[test]
    fn checksum() {
        assert!(sums_to_zero(&[0x10, 0xf0]));
        assert!(!sums_to_zero(&[0x10, 0xef]));
        assert!(sums_to_zero(&[]));
    }
}
