//! The SLIT (System Locality Information Table): relative memory latency between proximity
//! domains, 10 meaning local.
//!
//! Decoded by the ACPI collection step from a table already mapped and checksummed (the
//! `acpi` crate does not parse it). A matrix that does not fit the table or breaks the
//! distance rules is refused whole; it is never partly used.

use alloc::vec::Vec;

use super::bytes::u64_at;
use super::errors::TableProblem;

/// Offsets (ACPI 6.5 section 5.2.17).
mod offsets {
    pub const LOCALITIES: usize = 36;
    pub const MATRIX: usize = 44;
}

/// Distance from a locality to itself.
pub const LOCAL_DISTANCE: u8 = 10;

/// The distance matrix, indexed by proximity domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slit {
    pub localities: u32,
    /// Row-major: `distances[from * localities + to]`.
    pub distances: Vec<u8>,
}

impl Slit {
    /// Distance between two proximity domains, if the matrix covers both.
    pub fn distance(&self, from: u32, to: u32) -> Option<u8> {
        if from >= self.localities || to >= self.localities {
            return None;
        }
        let index = u64::from(from) * u64::from(self.localities) + u64::from(to);
        self.distances.get(usize::try_from(index).ok()?).copied()
    }
}

/// Decodes a mapped, checksummed SLIT.
pub(crate) fn decode(table: &[u8]) -> Result<Slit, TableProblem> {
    let count = u64_at(table, offsets::LOCALITIES).ok_or(TableProblem::too_short(table))?;
    let mismatch = TableProblem::LocalityCountMismatch { localities: count };
    let localities = u32::try_from(count).map_err(|_| mismatch)?;
    let cells = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(n))
        .ok_or(mismatch)?;
    let end = offsets::MATRIX.checked_add(cells).ok_or(mismatch)?;
    let distances = table.get(offsets::MATRIX..end).ok_or(mismatch)?.to_vec();
    let slit = Slit {
        localities,
        distances,
    };
    check_distances(&slit)?;
    Ok(slit)
}

/// Local distances must be 10 and remote ones above 10 (ACPI 6.5 5.2.17).
fn check_distances(slit: &Slit) -> Result<(), TableProblem> {
    for from in 0..slit.localities {
        for to in 0..slit.localities {
            let distance = slit.distance(from, to).unwrap_or(0);
            let valid = if from == to {
                distance == LOCAL_DISTANCE
            } else {
                distance > LOCAL_DISTANCE
            };
            if !valid {
                return Err(TableProblem::BadDistance { from, to, distance });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi_tables::fixtures;

    #[test]
    fn two_localities() {
        let slit = decode(&fixtures::slit(2, &[10, 21, 21, 10])).unwrap();
        assert_eq!(slit.localities, 2);
        assert_eq!(slit.distance(0, 1), Some(21));
        assert_eq!(slit.distance(1, 1), Some(10));
        assert_eq!(slit.distance(2, 0), None);
    }

    #[test]
    fn asymmetric_distances_are_kept() {
        let slit = decode(&fixtures::slit(2, &[10, 20, 30, 10])).unwrap();
        assert_eq!(
            (slit.distance(0, 1), slit.distance(1, 0)),
            (Some(20), Some(30))
        );
    }

    #[test]
    fn matrix_larger_than_the_table_is_refused() {
        let table = fixtures::slit(3, &[10, 20, 20, 10]);
        assert_eq!(
            decode(&table),
            Err(TableProblem::LocalityCountMismatch { localities: 3 })
        );
    }

    #[test]
    fn hostile_locality_count_is_refused() {
        for count in [u64::MAX, 1 << 32, 1 << 33] {
            let table = fixtures::slit(count, &[10]);
            assert_eq!(
                decode(&table),
                Err(TableProblem::LocalityCountMismatch { localities: count })
            );
        }
    }

    #[test]
    fn bad_distances_are_refused() {
        assert_eq!(
            decode(&fixtures::slit(2, &[10, 20, 20, 0])),
            Err(TableProblem::BadDistance {
                from: 1,
                to: 1,
                distance: 0
            })
        );
        assert_eq!(
            decode(&fixtures::slit(2, &[10, 10, 20, 10])),
            Err(TableProblem::BadDistance {
                from: 0,
                to: 1,
                distance: 10
            })
        );
    }

    #[test]
    fn table_without_fixed_part_is_refused() {
        let table = fixtures::slit(1, &[10]);
        assert_eq!(
            decode(&table[..40]),
            Err(TableProblem::TooShort { length: 40 })
        );
    }
}
