//! The machine we run on: ACPI tables and CPUID decoded into a topology (via the `topology`
//! crate), the device-register window, and the I/O APICs.
//!
//! Missing or malformed firmware tables degrade with a warning: without a usable MADT the
//! hypervisor runs on the boot CPU alone. Runs on the boot CPU during boot only.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use hypervisor::cmdline::Options;
use log::{info, warn};
use topology::{AcpiInfo, ApicId, CpuInfo, MemoryRange, Topology};

use crate::arch::paging::{self, MapKind};
use crate::arch::fwmap;
use crate::bootinfo::{BootInfo, RsdpSource};
use mm::memmap::RegionKind;

/// What [`discover`] found.
pub struct Machine {
    pub acpi: AcpiInfo,
    pub topology: Topology,
    /// APIC ids of the CPUs to use, boot CPU first (the topology's order, cut to `maxcpus`).
    start: Vec<u32>,
}

impl Machine {
    /// CPUs the firmware lists (enabled ones, the boot CPU included).
    pub fn cpus_listed(&self) -> usize {
        self.topology.cpus().len()
    }

    /// CPUs the hypervisor will use.
    pub fn cpus_to_start(&self) -> usize {
        self.start.len()
    }

    /// The other CPUs to use, nearest to CPU `index` first by topology (same core, package,
    /// node, then by NUMA distance), as indices into [`Machine::apic_ids_to_start`].
    pub fn nearest_first(&self, index: usize) -> Vec<u32> {
        let position = |apic: ApicId| self.start.iter().position(|&a| a == apic.0).map(|i| i as u32);
        let Some(origin) = self.start.get(index).and_then(|&apic| self.topology.cpu_by_apic_id(ApicId(apic))) else {
            return Vec::new();
        };
        let mut order: Vec<u32> = self
            .topology
            .nearest_first(origin.index)
            .into_iter()
            .filter_map(|i| self.topology.cpu(i).and_then(|c| position(c.apic_id)))
            .collect();
        // CPUs started but unknown to the topology (none in practice) come last.
        let missing: Vec<u32> = (0..self.start.len() as u32).filter(|&i| i as usize != index && !order.contains(&i)).collect();
        order.extend(missing);
        order
    }

    /// Their APIC ids, boot CPU first.
    pub fn apic_ids_to_start(&self) -> Vec<u32> {
        self.start.clone()
    }
}

/// Reads CPUID and the ACPI tables and builds the topology; `boot_apic` is the boot CPU's
/// APIC id (`lapic::current_id`).
pub fn discover(boot: &BootInfo, options: &Options, boot_apic: u32) -> Machine {
    let cpu = CpuInfo::read(&topology::cpuid::NativeCpuid);
    let acpi = read_acpi(boot);
    for warning in &acpi.warnings {
        warn!("acpi: {warning}");
    }
    let ram: Vec<MemoryRange> = boot
        .memory
        .iter()
        .filter(|r| r.kind == RegionKind::Usable && r.end > r.start)
        .map(|r| MemoryRange::from_bounds(r.start, r.end))
        .collect();
    let boot_apic = ApicId(boot_apic);
    let topology = Topology::build(&acpi, &cpu.layout, boot_apic, &ram);
    info!("{topology}");
    for node in topology.nodes() {
        info!("  {node}");
    }
    for warning in topology.warnings() {
        warn!("topology: {warning}");
    }
    let limit = options.max_cpus.map_or(usize::MAX, |n| n as usize).min(smp::xcall::MAX_CPUS);
    let start: Vec<u32> = topology.cpus().iter().take(limit).map(|c| c.apic_id.0).collect();
    if start.len() < topology.cpus().len() {
        info!("smp: using {} of {} CPUs (maxcpus or the {} CPU limit)", start.len(), topology.cpus().len(), smp::xcall::MAX_CPUS);
    }
    Machine { acpi, topology, start }
}

fn read_acpi(boot: &BootInfo) -> AcpiInfo {
    let result = match &boot.rsdp {
        Some(RsdpSource::Copy(bytes)) => fwmap::acpi_from_rsdp_copy(bytes),
        Some(RsdpSource::Physical(address)) => fwmap::acpi_from_rsdp_address(*address),
        None => {
            warn!("acpi: the loader passed no ACPI RSDP (no ACPI tables): running on the boot CPU alone");
            return AcpiInfo::default();
        }
    };
    result.unwrap_or_else(|e| {
        warn!("acpi: unusable RSDP ({e}): no ACPI tables, running on the boot CPU alone");
        AcpiInfo::default()
    })
}

static MMIO_BASE: AtomicU64 = AtomicU64::new(0);
static MMIO_NEXT: AtomicU64 = AtomicU64::new(0);
static MMIO_END: AtomicU64 = AtomicU64::new(0);

/// Sets the window range for device registers.
pub fn set_mmio_window(base: u64, size: u64) {
    MMIO_BASE.store(base, Ordering::Relaxed);
    MMIO_NEXT.store(base, Ordering::Relaxed);
    MMIO_END.store(base + size, Ordering::Relaxed);
}

/// Maps device registers at `phys` (uncached) for the rest of the run; returns the address
/// of `phys`. Panics when the device window is full (a boot-time sizing error).
pub fn map_mmio(phys: u64, len: u64) -> u64 {
    let first = phys & !0xfff;
    let pages = (phys + len - first).div_ceil(4096);
    let va = MMIO_NEXT.fetch_add(pages * 4096, Ordering::Relaxed);
    assert!(va + pages * 4096 <= MMIO_END.load(Ordering::Relaxed), "device register window full");
    for page in 0..pages {
        paging::map(va + page * 4096, first + page * 4096, MapKind::Mmio).expect("device pages map once");
    }
    va + (phys - first)
}

/// Bytes of the device window mapped.
pub fn mmio_used() -> u64 {
    MMIO_NEXT.load(Ordering::Relaxed) - MMIO_BASE.load(Ordering::Relaxed)
}

/// One I/O APIC: the GSIs it serves and its registers (behind a lock: the select/window
/// pair must not interleave).
pub struct IoApicInputs {
    pub gsi_base: u32,
    pub pins: u16,
    pub registers: spin::Mutex<apic::IoApic>,
}

static IO_APICS: spin::Once<Vec<IoApicInputs>> = spin::Once::new();

/// Masks every I/O APIC input and keeps the I/O APICs for the device interrupts domain 0
/// binds later (`pv::pirq`): until then the hypervisor takes no device interrupt.
pub fn init_interrupt_controllers(machine: &Machine) {
    let mut all = Vec::new();
    for io in &machine.acpi.io_apics {
        let va = map_mmio(io.address as u64, 4096);
        // From here on its registers are reached only through the lock below.
        let mut ioapic = crate::arch::lapic::io_apic(va).expect("an I/O APIC's registers, mapped uncached once");
        let pins = ioapic.mask_all();
        info!("ioapic: id {} at {:#x}, GSI {}-{} masked", io.id, io.address, io.gsi_base, io.gsi_base + pins as u32 - 1);
        all.push(IoApicInputs { gsi_base: io.gsi_base, pins, registers: spin::Mutex::new(ioapic) });
    }
    IO_APICS.call_once(|| all);
}

/// The I/O APIC serving `gsi` and its pin there.
pub fn io_apic_for(gsi: u32) -> Option<(&'static IoApicInputs, u8)> {
    IO_APICS.get()?.iter().find_map(|io| {
        let pin = gsi.checked_sub(io.gsi_base)?;
        (pin < u32::from(io.pins)).then_some((io, pin as u8))
    })
}
