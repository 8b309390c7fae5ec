//! One-line boot-log facts about the topology: the summary, one line per node and per CPU,
//! and the warnings.
//!
//! Used by the hypervisor's boot log and by tests; formatting only, no decisions.

use core::fmt;

use super::{Cpu, Node, Topology, TopologyWarning};
use crate::ids::CpuIndex;

const MIB: u64 = 1 << 20;

/// `topology: packages=2 cores=4 threads=8 nodes=2`
impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topology: packages={} cores={} threads={} nodes={}",
            self.package_count(),
            self.core_count(),
            self.thread_count(),
            self.nodes.len()
        )
    }
}

/// `node 0: cpus 0-3 mem 0x0-0x7fffffff (2048 MiB)`; several ranges are comma separated.
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}: cpus ", self.id)?;
        write_cpu_list(f, &self.cpus)?;
        write!(f, " mem ")?;
        if self.memory.is_empty() {
            return write!(f, "none");
        }
        for (i, range) in self.memory.iter().enumerate() {
            let separator = if i == 0 { "" } else { "," };
            write!(f, "{separator}{range}")?;
        }
        write!(f, " ({} MiB)", self.memory_bytes() / MIB)
    }
}

/// `cpu 1: apic 0x2 package 0 core 1 thread 0 node 0`
impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {}: apic {} package {} core {} thread {} node {}",
            self.index, self.apic_id, self.package, self.core, self.thread, self.node
        )
    }
}

impl fmt::Display for TopologyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyWarning::BootCpuNotListed { apic_id } => {
                write!(
                    f,
                    "boot CPU (APIC id {apic_id}) not enabled in the MADT: added"
                )
            }
            TopologyWarning::DuplicateApicId { apic_id } => {
                write!(f, "second CPU with APIC id {apic_id} left out")
            }
            TopologyWarning::CpuWithoutAffinity { apic_id } => {
                write!(f, "no SRAT affinity for APIC id {apic_id}: first node used")
            }
            TopologyWarning::MemoryWithoutAffinity { range } => {
                write!(f, "no SRAT affinity for RAM {range}: first node used")
            }
            TopologyWarning::SlitMissingDomain { proximity_domain } => {
                write!(
                    f,
                    "SLIT lacks proximity domain {proximity_domain}: default distances"
                )
            }
        }
    }
}

/// `0-3,6,8-9`, or `none`. Runs are found in the order given.
fn write_cpu_list(f: &mut fmt::Formatter<'_>, cpus: &[CpuIndex]) -> fmt::Result {
    if cpus.is_empty() {
        return write!(f, "none");
    }
    let mut runs = cpus.chunk_by(|a, b| b.0 == a.0 + 1).peekable();
    while let Some(run) = runs.next() {
        match run {
            [single] => write!(f, "{single}")?,
            [first, .., last] => write!(f, "{first}-{last}")?,
            [] => {}
        }
        if runs.peek().is_some() {
            write!(f, ",")?;
        }
    }
    Ok(())
}
