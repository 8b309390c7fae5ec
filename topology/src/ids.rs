//! Identifiers and ranges that cross module and crate boundaries.
//!
//! The ACPI decoder, the CPUID decoder and the topology builder all speak in these types, and
//! so does the hypervisor that consumes them, so that an APIC id can never be passed where a
//! logical CPU index or a NUMA node is expected. Nothing here knows about hardware.

use core::fmt;

/// A local APIC id: 8 bits in xAPIC mode, 32 bits in x2APIC mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApicId(pub u32);

/// A CPU's logical index: dense, 0 is the boot CPU, then MADT order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuIndex(pub u32);

/// A NUMA node: a dense index (0, 1, ...) assigned in order of ACPI proximity domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl fmt::Display for ApicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for CpuIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A range of physical memory, `base` inclusive, `base + length` exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryRange {
    pub base: u64,
    pub length: u64,
}

impl MemoryRange {
    /// Builds the range `[start, end)`; an `end` below `start` gives an empty range.
    pub fn from_bounds(start: u64, end: u64) -> MemoryRange {
        MemoryRange {
            base: start,
            length: end.saturating_sub(start),
        }
    }

    /// The first address past the range, saturating at the top of the address space.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.length)
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    pub fn contains(&self, address: u64) -> bool {
        self.base <= address && address < self.end()
    }

    /// The part of `self` that is also in `other`, if any.
    pub fn intersection(&self, other: &MemoryRange) -> Option<MemoryRange> {
        let range =
            MemoryRange::from_bounds(self.base.max(other.base), self.end().min(other.end()));
        (!range.is_empty()).then_some(range)
    }
}

/// Shown as the inclusive span `0x0-0x7fffffff`, the way boot logs print memory.
impl fmt::Display for MemoryRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.base, self.end().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersection_of_overlapping_ranges() {
        let a = MemoryRange {
            base: 0x1000,
            length: 0x3000,
        };
        let b = MemoryRange {
            base: 0x2000,
            length: 0x4000,
        };
        assert_eq!(
            a.intersection(&b),
            Some(MemoryRange {
                base: 0x2000,
                length: 0x2000
            })
        );
        assert_eq!(b.intersection(&a), a.intersection(&b));
    }

    #[test]
    fn disjoint_and_touching_ranges_do_not_intersect() {
        let a = MemoryRange {
            base: 0x1000,
            length: 0x1000,
        };
        let b = MemoryRange {
            base: 0x2000,
            length: 0x1000,
        };
        assert_eq!(a.intersection(&b), None);
    }

    #[test]
    fn end_saturates_at_top_of_address_space() {
        let r = MemoryRange {
            base: u64::MAX - 1,
            length: 10,
        };
        assert_eq!(r.end(), u64::MAX);
        assert!(r.contains(u64::MAX - 1));
    }

    #[test]
    fn display_is_inclusive() {
        let r = MemoryRange {
            base: 0,
            length: 0x8000_0000,
        };
        assert_eq!(alloc::format!("{r}"), "0x0-0x7fffffff");
    }
}
