//! The machine topology: every usable CPU with its package, core, thread and NUMA node,
//! the NUMA nodes with their memory and CPUs, node distances, and a nearest-first CPU order.
//!
//! The hypervisor builds it once at boot with [`Topology::build`] from the decoded ACPI
//! tables, the boot CPU's APIC-id layout and the RAM map; the scheduler reads it for work
//! stealing. It never fails: inconsistent inputs are corrected and reported as
//! [`TopologyWarning`]s.

mod display;
mod numa;
#[cfg(test)]
mod tests;

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::acpi_tables::{AcpiInfo, LOCAL_DISTANCE};
use crate::cpuid::ApicIdLayout;
use crate::ids::{ApicId, CpuIndex, MemoryRange, NodeId};

/// Distance assumed between two different nodes when no SLIT says otherwise.
pub const DEFAULT_REMOTE_DISTANCE: u8 = 20;

/// One usable CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub index: CpuIndex,
    pub apic_id: ApicId,
    /// `None` for a boot CPU the MADT does not list.
    pub acpi_uid: Option<u32>,
    pub package: u32,
    /// Core within its package.
    pub core: u32,
    /// Thread within its core.
    pub thread: u32,
    pub node: NodeId,
}

/// One NUMA node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    /// The ACPI proximity domain it stands for (0 without SRAT).
    pub proximity_domain: u32,
    pub cpus: Vec<CpuIndex>,
    /// RAM in this node, in address order.
    pub memory: Vec<MemoryRange>,
}

impl Node {
    pub fn memory_bytes(&self) -> u64 {
        self.memory
            .iter()
            .map(|r| r.length)
            .fold(0, u64::saturating_add)
    }
}

/// Something [`Topology::build`] corrected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyWarning {
    /// The boot CPU is not an enabled MADT processor; it was added as CPU 0.
    BootCpuNotListed { apic_id: ApicId },
    /// A second enabled processor with this APIC id; it was left out.
    DuplicateApicId { apic_id: ApicId },
    /// The SRAT gives this CPU no proximity domain; it went to the first node.
    CpuWithoutAffinity { apic_id: ApicId },
    /// The SRAT gives this RAM no proximity domain; it went to the first node.
    MemoryWithoutAffinity { range: MemoryRange },
    /// The SLIT does not cover this proximity domain; default distances were used.
    SlitMissingDomain { proximity_domain: u32 },
}

/// CPUs, packages, cores, threads and NUMA nodes of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    cpus: Vec<Cpu>,
    nodes: Vec<Node>,
    /// Row-major `nodes.len()` × `nodes.len()` matrix.
    distances: Vec<u8>,
    packages: usize,
    cores: usize,
    warnings: Vec<TopologyWarning>,
}

impl Topology {
    /// Builds the topology: one CPU per enabled MADT processor, the boot CPU first (added if
    /// the MADT lacks it), then MADT order; package, core and thread from `layout`; NUMA
    /// nodes from the SRAT intersected with `ram` (without SRAT, one node with all RAM);
    /// distances from the SLIT (else 10 local, 20 remote).
    pub fn build(
        acpi: &AcpiInfo,
        layout: &ApicIdLayout,
        boot_apic_id: ApicId,
        ram: &[MemoryRange],
    ) -> Topology {
        let mut warnings = Vec::new();
        let listed = usable_cpus(acpi, boot_apic_id, &mut warnings);
        let apic_ids: Vec<ApicId> = listed.iter().map(|&(apic_id, _)| apic_id).collect();
        let placement = numa::place(acpi.numa.as_ref(), &apic_ids, ram, &mut warnings);
        let domains = placement.domains();
        let node_of =
            |domain| NodeId(domains.iter().position(|&d| d == domain).unwrap_or(0) as u32);
        let cpus: Vec<Cpu> = listed
            .iter()
            .zip(&placement.cpu_domains)
            .enumerate()
            .map(|(index, (&(apic_id, acpi_uid), &domain))| {
                let parts = layout.split(apic_id);
                Cpu {
                    index: CpuIndex(index as u32),
                    apic_id,
                    acpi_uid,
                    package: parts.package,
                    core: parts.core,
                    thread: parts.thread,
                    node: node_of(domain),
                }
            })
            .collect();
        let nodes = domains
            .iter()
            .enumerate()
            .map(|(id, &domain)| Node {
                id: NodeId(id as u32),
                proximity_domain: domain,
                cpus: cpus
                    .iter()
                    .filter(|c| c.node.0 as usize == id)
                    .map(|c| c.index)
                    .collect(),
                memory: placement.memory_of(domain),
            })
            .collect();
        let distances = distance_matrix(acpi, &domains, &mut warnings);
        let packages = cpus
            .iter()
            .map(|c| c.package)
            .collect::<BTreeSet<_>>()
            .len();
        let cores = cpus
            .iter()
            .map(|c| (c.package, c.core))
            .collect::<BTreeSet<_>>()
            .len();
        Topology {
            cpus,
            nodes,
            distances,
            packages,
            cores,
            warnings,
        }
    }

    /// All CPUs; `cpus()[i].index == CpuIndex(i)` and index 0 is the boot CPU.
    pub fn cpus(&self) -> &[Cpu] {
        &self.cpus
    }

    pub fn cpu(&self, index: CpuIndex) -> Option<&Cpu> {
        self.cpus.get(index.0 as usize)
    }

    pub fn cpu_by_apic_id(&self, apic_id: ApicId) -> Option<&Cpu> {
        self.cpus.iter().find(|c| c.apic_id == apic_id)
    }

    /// Nodes in proximity-domain order; `nodes()[i].id == NodeId(i)`. Never empty.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.0 as usize)
    }

    /// Relative memory distance between two nodes (10 is local).
    pub fn distance(&self, from: NodeId, to: NodeId) -> Option<u8> {
        let n = self.nodes.len();
        let (from, to) = (from.0 as usize, to.0 as usize);
        if from >= n || to >= n {
            return None;
        }
        self.distances.get(from * n + to).copied()
    }

    pub fn package_count(&self) -> usize {
        self.packages
    }

    /// Physical cores over all packages.
    pub fn core_count(&self) -> usize {
        self.cores
    }

    /// Logical CPUs (hardware threads) over all packages.
    pub fn thread_count(&self) -> usize {
        self.cpus.len()
    }

    pub fn warnings(&self) -> &[TopologyWarning] {
        &self.warnings
    }

    /// Every other CPU, nearest to `from` first: same core, then same package, then same
    /// node, then other nodes by increasing distance; ties in index order. Empty for an
    /// unknown index. This is the order in which `from` should steal work.
    pub fn nearest_first(&self, from: CpuIndex) -> Vec<CpuIndex> {
        let Some(origin) = self.cpu(from) else {
            return Vec::new();
        };
        let mut others: Vec<&Cpu> = self.cpus.iter().filter(|c| c.index != from).collect();
        others.sort_by_key(|c| {
            let distance = self.distance(origin.node, c.node).unwrap_or(u8::MAX);
            (closeness(origin, c), distance, c.index)
        });
        others.into_iter().map(|c| c.index).collect()
    }
}

/// 0 same core, 1 same package, 2 same node, 3 elsewhere.
fn closeness(a: &Cpu, b: &Cpu) -> u8 {
    match (a.package == b.package, a.core == b.core, a.node == b.node) {
        (true, true, _) => 0,
        (true, false, _) => 1,
        (false, _, true) => 2,
        (false, _, false) => 3,
    }
}

/// Enabled MADT processors, one per APIC id, the boot CPU first, with their ACPI uid.
fn usable_cpus(
    acpi: &AcpiInfo,
    boot_apic_id: ApicId,
    warnings: &mut Vec<TopologyWarning>,
) -> Vec<(ApicId, Option<u32>)> {
    let mut seen = BTreeSet::from([boot_apic_id]);
    let mut boot_uid = None;
    let mut others = Vec::new();
    for cpu in acpi.cpus.iter().filter(|c| c.enabled) {
        if cpu.apic_id == boot_apic_id && boot_uid.is_none() {
            boot_uid = Some(cpu.acpi_uid);
        } else if seen.insert(cpu.apic_id) {
            others.push((cpu.apic_id, Some(cpu.acpi_uid)));
        } else {
            warnings.push(TopologyWarning::DuplicateApicId {
                apic_id: cpu.apic_id,
            });
        }
    }
    if boot_uid.is_none() {
        warnings.push(TopologyWarning::BootCpuNotListed {
            apic_id: boot_apic_id,
        });
    }
    let mut cpus = Vec::with_capacity(others.len() + 1);
    cpus.push((boot_apic_id, boot_uid));
    cpus.extend(others);
    cpus
}

/// Distances between the nodes standing for `domains`, from the SLIT where it covers them.
fn distance_matrix(
    acpi: &AcpiInfo,
    domains: &[u32],
    warnings: &mut Vec<TopologyWarning>,
) -> Vec<u8> {
    if let Some(slit) = &acpi.distances {
        for &domain in domains.iter().filter(|&&d| slit.distance(d, d).is_none()) {
            warnings.push(TopologyWarning::SlitMissingDomain {
                proximity_domain: domain,
            });
        }
    }
    let mut matrix = Vec::with_capacity(domains.len() * domains.len());
    for &from in domains {
        for &to in domains {
            let from_slit = acpi
                .distances
                .as_ref()
                .and_then(|slit| slit.distance(from, to));
            let default = if from == to {
                LOCAL_DISTANCE
            } else {
                DEFAULT_REMOTE_DISTANCE
            };
            matrix.push(from_slit.unwrap_or(default));
        }
    }
    matrix
}
