//! Topology building from hand-made ACPI summaries and from whole firmware images.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::acpi_tables::{CpuAffinity, MadtCpu, MemoryAffinity, NumaInfo, Slit};
use crate::cpuid::LayoutSource;

const GIB: u64 = 1 << 30;

fn madt_cpu(apic_id: u32, enabled: bool) -> MadtCpu {
    MadtCpu {
        acpi_uid: apic_id,
        apic_id: ApicId(apic_id),
        enabled,
        online_capable: false,
        x2apic_entry: false,
    }
}

fn acpi_with_cpus(apic_ids: &[u32]) -> AcpiInfo {
    AcpiInfo {
        cpus: apic_ids.iter().map(|&id| madt_cpu(id, true)).collect(),
        ..AcpiInfo::default()
    }
}

fn layout(smt_bits: u32, core_bits: u32) -> ApicIdLayout {
    ApicIdLayout {
        smt_bits,
        core_bits,
        source: LayoutSource::LeafB,
    }
}

fn ram(base: u64, end: u64) -> MemoryRange {
    MemoryRange::from_bounds(base, end)
}

fn indices(list: &[u32]) -> Vec<CpuIndex> {
    list.iter().map(|&i| CpuIndex(i)).collect()
}

fn apic_order(topology: &Topology) -> Vec<u32> {
    topology.cpus().iter().map(|c| c.apic_id.0).collect()
}

fn lines(topology: &Topology) -> Vec<String> {
    let mut lines = vec![topology.to_string()];
    lines.extend(topology.nodes().iter().map(|n| n.to_string()));
    lines
}

/// QEMU-style RAM below 128 MiB: low 639 KiB and 1 MiB up to the ACPI tables.
fn qemu_ram() -> [MemoryRange; 2] {
    [ram(0, 0x9_fc00), ram(0x10_0000, 0x7fe_0000)]
}

/// Two packages of two cores of two threads (APIC ids 0-7), one node per package with
/// 2 GiB each, SLIT distance 21.
fn two_socket_numa() -> AcpiInfo {
    let cpus = (0..8).map(|apic_id| CpuAffinity {
        apic_id: ApicId(apic_id),
        proximity_domain: apic_id / 4,
    });
    let memory =
        [(0, 0, 2 * GIB), (1, 2 * GIB, 4 * GIB)].map(|(domain, base, end)| MemoryAffinity {
            range: ram(base, end),
            proximity_domain: domain,
            enabled: true,
            hotplug: false,
            nonvolatile: false,
        });
    AcpiInfo {
        numa: Some(NumaInfo {
            cpus: cpus.collect(),
            memory: memory.to_vec(),
        }),
        distances: Some(Slit {
            localities: 2,
            distances: vec![10, 21, 21, 10],
        }),
        ..acpi_with_cpus(&[0, 1, 2, 3, 4, 5, 6, 7])
    }
}

#[test]
fn qemu_four_sockets_without_srat() {
    let topology = Topology::build(
        &acpi_with_cpus(&[0, 1, 2, 3]),
        &layout(0, 0),
        ApicId(0),
        &qemu_ram(),
    );
    assert!(topology.warnings().is_empty());
    assert_eq!(
        lines(&topology),
        [
            "topology: packages=4 cores=4 threads=4 nodes=1",
            "node 0: cpus 0-3 mem 0x0-0x9fbff,0x100000-0x7fdffff (127 MiB)",
        ]
    );
    assert_eq!(topology.distance(NodeId(0), NodeId(0)), Some(10));
    assert_eq!(topology.distance(NodeId(0), NodeId(1)), None);
}

#[test]
fn two_sockets_two_nodes() {
    let topology = Topology::build(
        &two_socket_numa(),
        &layout(1, 1),
        ApicId(0),
        &[ram(0, 4 * GIB)],
    );
    assert!(topology.warnings().is_empty(), "{:?}", topology.warnings());
    assert_eq!(
        lines(&topology),
        [
            "topology: packages=2 cores=4 threads=8 nodes=2",
            "node 0: cpus 0-3 mem 0x0-0x7fffffff (2048 MiB)",
            "node 1: cpus 4-7 mem 0x80000000-0xffffffff (2048 MiB)",
        ]
    );
    let cpu5 = topology.cpu(CpuIndex(5)).unwrap();
    assert_eq!(
        (cpu5.package, cpu5.core, cpu5.thread, cpu5.node),
        (1, 0, 1, NodeId(1))
    );
    assert_eq!(
        cpu5.to_string(),
        "cpu 5: apic 0x5 package 1 core 0 thread 1 node 1"
    );
    assert_eq!(topology.distance(NodeId(1), NodeId(0)), Some(21));
}

#[test]
fn nearest_first_is_core_then_package_then_node_then_distance() {
    let topology = Topology::build(
        &two_socket_numa(),
        &layout(1, 1),
        ApicId(0),
        &[ram(0, 4 * GIB)],
    );
    assert_eq!(
        topology.nearest_first(CpuIndex(0)),
        indices(&[1, 2, 3, 4, 5, 6, 7])
    );
    assert_eq!(
        topology.nearest_first(CpuIndex(6)),
        indices(&[7, 4, 5, 0, 1, 2, 3])
    );
    assert_eq!(topology.nearest_first(CpuIndex(8)), []);
}

#[test]
fn nearest_first_orders_remote_nodes_by_distance() {
    // Three single-CPU packages on three nodes; node 2 is nearer to node 0 than node 1 is.
    let cpus = (0..3)
        .map(|id| CpuAffinity {
            apic_id: ApicId(id),
            proximity_domain: id,
        })
        .collect();
    let acpi = AcpiInfo {
        numa: Some(NumaInfo {
            cpus,
            memory: Vec::new(),
        }),
        distances: Some(Slit {
            localities: 3,
            distances: vec![10, 30, 20, 30, 10, 20, 20, 20, 10],
        }),
        ..acpi_with_cpus(&[0, 1, 2])
    };
    let topology = Topology::build(&acpi, &ApicIdLayout::SINGLE, ApicId(0), &[]);
    assert_eq!(topology.nearest_first(CpuIndex(0)), indices(&[2, 1]));
    assert_eq!(topology.nearest_first(CpuIndex(1)), indices(&[2, 0]));
}

#[test]
fn same_package_on_another_node_comes_before_same_node_elsewhere() {
    // Sub-NUMA clustering: package 0 spans nodes 0 and 1; package 1 shares node 0.
    let domains = [0, 1, 0];
    let cpus = domains.iter().enumerate().map(|(id, &d)| CpuAffinity {
        apic_id: ApicId(id as u32 * 2),
        proximity_domain: d,
    });
    let acpi = AcpiInfo {
        numa: Some(NumaInfo {
            cpus: cpus.collect(),
            memory: Vec::new(),
        }),
        ..acpi_with_cpus(&[0, 2, 4])
    };
    // core_bits 2: APIC ids 0 and 2 are package 0, id 4 is package 1.
    let topology = Topology::build(&acpi, &layout(0, 2), ApicId(0), &[]);
    assert_eq!(topology.nearest_first(CpuIndex(0)), indices(&[1, 2]));
}

#[test]
fn boot_cpu_comes_first_then_madt_order() {
    let topology = Topology::build(
        &acpi_with_cpus(&[0, 1, 2, 3]),
        &layout(0, 2),
        ApicId(2),
        &[],
    );
    assert_eq!(apic_order(&topology), [2, 0, 1, 3]);
    assert_eq!(
        topology.cpu_by_apic_id(ApicId(0)).map(|c| c.index),
        Some(CpuIndex(1))
    );
    assert_eq!(topology.cpu(CpuIndex(0)).and_then(|c| c.acpi_uid), Some(2));
    assert!(topology.warnings().is_empty());
}

#[test]
fn boot_cpu_missing_from_madt_is_added() {
    let topology = Topology::build(&acpi_with_cpus(&[1, 2]), &layout(0, 2), ApicId(0), &[]);
    assert_eq!(apic_order(&topology), [0, 1, 2]);
    assert_eq!(topology.cpus()[0].acpi_uid, None);
    assert_eq!(
        topology.warnings(),
        [TopologyWarning::BootCpuNotListed { apic_id: ApicId(0) }]
    );
}

#[test]
fn no_madt_runs_on_the_boot_cpu_alone() {
    let topology = Topology::build(
        &AcpiInfo::default(),
        &layout(1, 3),
        ApicId(5),
        &qemu_ram()[..1],
    );
    assert_eq!(apic_order(&topology), [5]);
    assert_eq!(
        lines(&topology),
        [
            "topology: packages=1 cores=1 threads=1 nodes=1",
            "node 0: cpus 0 mem 0x0-0x9fbff (0 MiB)",
        ]
    );
}

#[test]
fn disabled_cpus_are_left_out() {
    let acpi = AcpiInfo {
        cpus: vec![madt_cpu(0, true), madt_cpu(1, false), madt_cpu(2, true)],
        ..AcpiInfo::default()
    };
    let topology = Topology::build(&acpi, &ApicIdLayout::SINGLE, ApicId(0), &[]);
    assert_eq!(apic_order(&topology), [0, 2]);
}

#[test]
fn duplicate_apic_ids_are_refused() {
    let topology = Topology::build(
        &acpi_with_cpus(&[0, 1, 1, 0]),
        &ApicIdLayout::SINGLE,
        ApicId(0),
        &[],
    );
    assert_eq!(apic_order(&topology), [0, 1]);
    assert_eq!(
        topology.warnings(),
        [
            TopologyWarning::DuplicateApicId { apic_id: ApicId(1) },
            TopologyWarning::DuplicateApicId { apic_id: ApicId(0) },
        ]
    );
}

#[test]
fn cpu_without_srat_affinity_goes_to_the_first_node() {
    let mut acpi = two_socket_numa();
    acpi.cpus.push(madt_cpu(8, true));
    let topology = Topology::build(&acpi, &layout(1, 1), ApicId(0), &[ram(0, 4 * GIB)]);
    assert_eq!(topology.cpu(CpuIndex(8)).map(|c| c.node), Some(NodeId(0)));
    assert_eq!(
        topology.warnings(),
        [TopologyWarning::CpuWithoutAffinity { apic_id: ApicId(8) }]
    );
}

#[test]
fn sparse_proximity_domains_become_dense_nodes() {
    let mut acpi = two_socket_numa();
    let numa = acpi.numa.as_mut().unwrap();
    numa.cpus
        .iter_mut()
        .for_each(|c| c.proximity_domain = c.proximity_domain * 7 + 3);
    numa.memory
        .iter_mut()
        .for_each(|m| m.proximity_domain = m.proximity_domain * 7 + 3);
    let topology = Topology::build(&acpi, &layout(1, 1), ApicId(0), &[ram(0, 4 * GIB)]);
    let nodes: Vec<_> = topology
        .nodes()
        .iter()
        .map(|n| (n.id, n.proximity_domain, n.cpus.len()))
        .collect();
    assert_eq!(nodes, [(NodeId(0), 3, 4), (NodeId(1), 10, 4)]);
    // The 2-locality SLIT does not cover domains 3 and 10.
    assert_eq!(
        topology.warnings(),
        [
            TopologyWarning::SlitMissingDomain {
                proximity_domain: 3
            },
            TopologyWarning::SlitMissingDomain {
                proximity_domain: 10
            },
        ]
    );
    assert_eq!(
        topology.distance(NodeId(0), NodeId(1)),
        Some(DEFAULT_REMOTE_DISTANCE)
    );
}

#[test]
fn srat_ranges_are_cut_to_ram() {
    let topology = Topology::build(
        &two_socket_numa(),
        &layout(1, 1),
        ApicId(0),
        &[ram(GIB, 3 * GIB)],
    );
    let memory: Vec<_> = topology.nodes().iter().map(|n| n.memory.clone()).collect();
    assert_eq!(
        memory,
        [vec![ram(GIB, 2 * GIB)], vec![ram(2 * GIB, 3 * GIB)]]
    );
}

#[test]
fn node_without_ram_still_lists_its_cpus() {
    let topology = Topology::build(&two_socket_numa(), &layout(1, 1), ApicId(0), &[ram(0, GIB)]);
    assert_eq!(
        format!("{}", topology.nodes()[1]),
        "node 1: cpus 4-7 mem none"
    );
}

#[test]
fn cpu_list_with_gaps() {
    let node = Node {
        id: NodeId(0),
        proximity_domain: 0,
        cpus: indices(&[0, 1, 2, 5, 7, 8]),
        memory: Vec::new(),
    };
    assert_eq!(node.to_string(), "node 0: cpus 0-2,5,7-8 mem none");
}

#[test]
fn x2apic_ids_split_by_layout() {
    let acpi = AcpiInfo {
        cpus: vec![
            MadtCpu {
                x2apic_entry: true,
                ..madt_cpu(0x100, true)
            },
            MadtCpu {
                x2apic_entry: true,
                ..madt_cpu(0x101, true)
            },
        ],
        ..AcpiInfo::default()
    };
    let topology = Topology::build(&acpi, &layout(1, 4), ApicId(0x100), &[]);
    let cpu = topology.cpu(CpuIndex(1)).unwrap();
    assert_eq!((cpu.package, cpu.core, cpu.thread), (8, 0, 1));
    assert_eq!(topology.core_count(), 1);
}

mod end_to_end {
    use super::*;
    use crate::acpi_tables::fixtures::{self, Firmware, Roots, TestHandler};
    use core::cell::Cell;

    #[test]
    #[allow(unsafe_code)]
    fn firmware_to_topology() {
        let tables = vec![
            fixtures::madt(0xfee0_0000, &fixtures::qemu_madt_entries(4)),
            fixtures::srat(3, &fixtures::two_node_srat_entries()),
            fixtures::slit(2, &[10, 20, 20, 10]),
        ];
        let firmware = Firmware::new(Roots::RsdtAndXsdt, &tables);
        let live = Cell::new(0);
        let handler = TestHandler::new(&firmware.memory, &live);
        // SAFETY: the test handler maps only its buffer and reports short regions truthfully.
        let acpi = unsafe { AcpiInfo::from_rsdp_address(&handler, firmware.rsdp_address) }.unwrap();
        let ram = [ram(0, 0x9_fc00), ram(0x10_0000, 0x8000_0000)];
        let topology = Topology::build(&acpi, &layout(0, 1), ApicId(0), &ram);
        assert!(topology.warnings().is_empty(), "{:?}", topology.warnings());
        assert_eq!(
            lines(&topology),
            [
                "topology: packages=2 cores=4 threads=4 nodes=2",
                "node 0: cpus 0-1 mem 0x0-0x9fbff,0x100000-0x3fffffff (1023 MiB)",
                "node 1: cpus 2-3 mem 0x40000000-0x7fffffff (1024 MiB)",
            ]
        );
        assert_eq!(topology.nearest_first(CpuIndex(0)), indices(&[1, 2, 3]));
    }
}
