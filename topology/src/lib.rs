//! Machine topology for the hypervisor: decodes the ACPI tables and CPUID into the CPUs,
//! packages, cores, threads and NUMA nodes it runs on.
//!
//! The hypervisor calls this once at boot: [`AcpiInfo::from_rsdp_copy`] or
//! [`AcpiInfo::from_rsdp_address`] with its [`AcpiHandler`], [`CpuInfo::read`] with a
//! [`CpuidSource`], then [`Topology::build`]. Everything here is pure decoding, tested on the
//! host; the only hardware contact is the handler's mappings and the CPUID instruction. It
//! must never panic on what firmware or CPUID report: defects degrade with typed warnings.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod acpi_tables;
pub mod cpuid;
mod ids;
pub mod topology;

pub use acpi::{AcpiHandler, PhysicalMapping};
pub use acpi_tables::{AcpiError, AcpiInfo, AcpiWarning};
pub use cpuid::{ApicIdLayout, CpuInfo, CpuidResult, CpuidSource};
pub use ids::{ApicId, CpuIndex, MemoryRange, NodeId};
pub use topology::{Topology, TopologyWarning};
