//! Places CPUs and RAM in ACPI proximity domains: SRAT affinity where it exists, the first
//! domain otherwise, and everything in domain 0 when there is no SRAT.
//!
//! Used only by [`Topology::build`](super::Topology::build). It splits RAM ranges at SRAT
//! boundaries and never invents memory: every byte it places was in the RAM map, exactly
//! once, even when RAM ranges or SRAT ranges overlap.

use alloc::vec::Vec;

use super::TopologyWarning;
use crate::acpi_tables::{MemoryAffinity, NumaInfo};
use crate::ids::{ApicId, MemoryRange};

/// Where each CPU and each piece of RAM goes.
pub(crate) struct Placement {
    /// Proximity domain of each CPU, in the order given.
    pub cpu_domains: Vec<u32>,
    /// RAM pieces in address order, adjacent pieces of one domain merged.
    pub memory: Vec<(u32, MemoryRange)>,
}

impl Placement {
    /// Every domain holding a CPU or RAM, ascending.
    pub(crate) fn domains(&self) -> Vec<u32> {
        let mut domains: Vec<u32> = self.cpu_domains.clone();
        domains.extend(self.memory.iter().map(|&(domain, _)| domain));
        domains.sort_unstable();
        domains.dedup();
        domains
    }

    pub(crate) fn memory_of(&self, domain: u32) -> Vec<MemoryRange> {
        self.memory
            .iter()
            .filter(|&&(d, _)| d == domain)
            .map(|&(_, range)| range)
            .collect()
    }
}

pub(crate) fn place(
    numa: Option<&NumaInfo>,
    cpus: &[ApicId],
    ram: &[MemoryRange],
    warnings: &mut Vec<TopologyWarning>,
) -> Placement {
    let ram = normalized(ram);
    let Some(numa) = numa else {
        return Placement {
            cpu_domains: alloc::vec![0; cpus.len()],
            memory: ram.into_iter().map(|range| (0, range)).collect(),
        };
    };
    let affinities: Vec<&MemoryAffinity> = numa.memory.iter().filter(|m| m.enabled).collect();
    let fallback = numa
        .cpus
        .iter()
        .map(|c| c.proximity_domain)
        .chain(affinities.iter().map(|m| m.proximity_domain))
        .min()
        .unwrap_or(0);
    let cpu_domains = cpus
        .iter()
        .map(|&apic_id| {
            let affinity = numa.cpus.iter().find(|c| c.apic_id == apic_id);
            affinity.map(|c| c.proximity_domain).unwrap_or_else(|| {
                warnings.push(TopologyWarning::CpuWithoutAffinity { apic_id });
                fallback
            })
        })
        .collect();
    let mut memory = Vec::new();
    for range in ram {
        split_by_affinity(range, &affinities, fallback, &mut memory, warnings);
    }
    Placement {
        cpu_domains,
        memory,
    }
}

/// RAM sorted by address with empty ranges dropped and overlapping or touching ones merged.
fn normalized(ram: &[MemoryRange]) -> Vec<MemoryRange> {
    let mut sorted: Vec<MemoryRange> = ram.iter().copied().filter(|r| !r.is_empty()).collect();
    sorted.sort_unstable();
    let mut merged: Vec<MemoryRange> = Vec::with_capacity(sorted.len());
    for range in sorted {
        match merged.last_mut() {
            Some(last) if range.base <= last.end() => {
                *last = MemoryRange::from_bounds(last.base, last.end().max(range.end()));
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// Walks `range` from bottom to top, giving each part the domain of the first SRAT range
/// containing it, or `fallback` (with a warning) where none does.
fn split_by_affinity(
    range: MemoryRange,
    affinities: &[&MemoryAffinity],
    fallback: u32,
    pieces: &mut Vec<(u32, MemoryRange)>,
    warnings: &mut Vec<TopologyWarning>,
) {
    let mut cursor = range.base;
    while cursor < range.end() {
        let covering = affinities.iter().find(|m| m.range.contains(cursor));
        let (domain, end) = match covering {
            Some(m) => (m.proximity_domain, m.range.end().min(range.end())),
            None => {
                let next_start = affinities
                    .iter()
                    .map(|m| m.range.base)
                    .filter(|&base| base > cursor)
                    .min()
                    .map_or(range.end(), |base| base.min(range.end()));
                let uncovered = MemoryRange::from_bounds(cursor, next_start);
                warnings.push(TopologyWarning::MemoryWithoutAffinity { range: uncovered });
                (fallback, next_start)
            }
        };
        push_merged(pieces, domain, MemoryRange::from_bounds(cursor, end));
        cursor = end;
    }
}

fn push_merged(pieces: &mut Vec<(u32, MemoryRange)>, domain: u32, range: MemoryRange) {
    match pieces.last_mut() {
        Some((last_domain, last)) if *last_domain == domain && last.end() == range.base => {
            last.length += range.length;
        }
        _ => pieces.push((domain, range)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi_tables::CpuAffinity;

    fn range(base: u64, end: u64) -> MemoryRange {
        MemoryRange::from_bounds(base, end)
    }

    fn affinity(domain: u32, base: u64, end: u64) -> MemoryAffinity {
        MemoryAffinity {
            range: range(base, end),
            proximity_domain: domain,
            enabled: true,
            hotplug: false,
            nonvolatile: false,
        }
    }

    fn numa(memory: Vec<MemoryAffinity>) -> NumaInfo {
        NumaInfo {
            cpus: alloc::vec![CpuAffinity {
                apic_id: ApicId(0),
                proximity_domain: 1
            }],
            memory,
        }
    }

    #[test]
    fn ram_is_merged_and_sorted() {
        let ram = [
            range(0x3000, 0x4000),
            range(0, 0x1000),
            range(0x800, 0x2000),
            range(5, 5),
        ];
        assert_eq!(normalized(&ram), [range(0, 0x2000), range(0x3000, 0x4000)]);
    }

    #[test]
    fn ram_is_split_at_srat_boundaries() {
        let srat = numa(alloc::vec![
            affinity(1, 0, 0x8000),
            affinity(2, 0x8000, 0x1_0000)
        ]);
        let mut warnings = Vec::new();
        let placement = place(Some(&srat), &[], &[range(0x1000, 0xc000)], &mut warnings);
        assert!(warnings.is_empty());
        assert_eq!(
            placement.memory,
            [(1, range(0x1000, 0x8000)), (2, range(0x8000, 0xc000))]
        );
    }

    #[test]
    fn uncovered_ram_goes_to_the_first_domain_with_a_warning() {
        let srat = numa(alloc::vec![
            affinity(3, 0x4000, 0x8000),
            affinity(2, 0xa000, 0xb000)
        ]);
        let mut warnings = Vec::new();
        let placement = place(Some(&srat), &[], &[range(0, 0xc000)], &mut warnings);
        assert_eq!(
            placement.memory,
            [
                (1, range(0, 0x4000)),
                (3, range(0x4000, 0x8000)),
                (1, range(0x8000, 0xa000)),
                (2, range(0xa000, 0xb000)),
                (1, range(0xb000, 0xc000)),
            ]
        );
        assert_eq!(warnings.len(), 3);
        assert_eq!(
            warnings[0],
            TopologyWarning::MemoryWithoutAffinity {
                range: range(0, 0x4000)
            }
        );
    }

    #[test]
    fn overlapping_srat_ranges_place_each_byte_once() {
        let srat = numa(alloc::vec![
            affinity(1, 0, 0x6000),
            affinity(2, 0x4000, 0x8000)
        ]);
        let mut warnings = Vec::new();
        let placement = place(Some(&srat), &[], &[range(0, 0x8000)], &mut warnings);
        assert_eq!(
            placement.memory,
            [(1, range(0, 0x6000)), (2, range(0x6000, 0x8000))]
        );
    }

    #[test]
    fn disabled_srat_ranges_are_ignored() {
        let mut disabled = affinity(2, 0, 0x8000);
        disabled.enabled = false;
        let srat = numa(alloc::vec![disabled]);
        let mut warnings = Vec::new();
        let placement = place(Some(&srat), &[], &[range(0, 0x8000)], &mut warnings);
        assert_eq!(placement.memory, [(1, range(0, 0x8000))]);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn ram_reaching_the_top_of_memory_terminates() {
        let srat = numa(alloc::vec![affinity(1, 0, u64::MAX)]);
        let mut warnings = Vec::new();
        let top = MemoryRange {
            base: u64::MAX - 0x1000,
            length: 0x1000,
        };
        let placement = place(Some(&srat), &[], &[top], &mut warnings);
        assert_eq!(placement.memory, [(1, top)]);
    }
}
