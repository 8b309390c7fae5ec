//! The end-of-boot summary: one `summary: key=value` line per fact, for people and for the
//! test harness (`tests/qemu.py` reads these lines; keep keys stable).
//!
//! Only formats facts gathered elsewhere; computes nothing that could fail.

use log::info;

use crate::bootinfo::BootInfo;
use crate::memory::{self, MemorySummary};
use crate::platform::Machine;
use crate::selftest::Checks;
use crate::smpboot::Report;
use crate::{cpus, lapic};

/// Everything the summary reports.
pub struct Facts<'a> {
    pub boot: &'a BootInfo,
    pub memory: &'a MemorySummary,
    pub machine: &'a Machine,
    pub smp: &'a Report,
    pub checks: &'a Checks,
    pub layout: &'a mm::layout::WindowLayout,
    pub all_idle_ns: u64,
}

macro_rules! fact {
    ($key:expr, $($value:tt)*) => {
        info!("summary: {}={}", $key, format_args!($($value)*))
    };
}

/// Prints the summary.
pub fn print(f: &Facts) {
    let topo = &f.machine.topology;
    fact!("boot.protocol", "{}", f.boot.protocol);
    fact!("cpus.listed", "{}", f.machine.cpus_listed());
    fact!("cpus.online", "{}", cpus::online_count());
    fact!("cpus.failed", "{}", f.smp.failed.len());
    fact!("apic.mode", "{}", lapic::mode_name());
    fact!("apic.timer", "{}", lapic::timer_kind());
    fact!("topology.packages", "{}", topo.package_count());
    fact!("topology.cores", "{}", topo.core_count());
    fact!("topology.threads", "{}", topo.thread_count());
    fact!("numa.nodes", "{}", topo.nodes().len());
    fact!("memory.usable_mib", "{}", f.memory.usable_bytes >> 20);
    fact!("memory.free_mib", "{}", memory::free_bytes() >> 20);
    fact!("memory.frame_metadata_kib", "{}", f.memory.metadata_bytes >> 10);
    fact!("memory.unmanaged_mib", "{}", f.memory.capped_bytes >> 20);
    fact!("memory.metadata_kib_per_gib", "{}", mm::layout::metadata_bytes_per_gib() >> 10);
    fact!("memory.heap_used_kib", "{}", memory::heap_used_bytes() >> 10);
    fact!("memory.heap_for_domains_kib", "{}", memory::heap_for_domains_bytes(crate::domain::DOMAIN_HEAP_BYTES) >> 10);
    for placed in f.layout.regions() {
        let name = placed.region.name().replace([' ', '-'], "_");
        fact!(alloc::format!("window.{name}_kib"), "{}/{}", placed.used >> 10, placed.range.size >> 10);
    }
    let used: u64 = f.layout.regions().iter().map(|p| p.used).sum();
    fact!("window.used_kib", "{}", used >> 10);
    fact!("window.free_kib", "{}", f.layout.available() >> 10);
    fact!("tsc.mhz", "{}", crate::time::tsc_hz() / 1_000_000);
    fact!("smp.bringup_us", "{}", f.smp.elapsed_ns / 1000);
    fact!("ipi.rtt_ns_median", "{}", f.checks.ipi_rtt_ns.unwrap_or(0));
    fact!("ipi.samples", "{}", f.checks.ipi_samples);
    fact!("boot.all_idle_us", "{}", f.all_idle_ns / 1000);
    let protections = crate::arch::cpu::protections();
    fact!("cpu.smep", "{}", if protections.smep { "on" } else { "off" });
    fact!("cpu.smap", "{}", if protections.smap { "on" } else { "off" });
    let verdict = match (f.checks.passed(), f.checks.complete) {
        (false, _) => "fail",
        (true, false) => "not-run",
        (true, true) => "pass",
    };
    fact!("selftest", "{verdict}");
}
