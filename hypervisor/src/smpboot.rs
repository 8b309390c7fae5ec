//! Starting the application processors: INIT-SIPI-SIPI to all of them in parallel, each into
//! its own prepared per-CPU area, with a timeout (counted from the last CPU that answered) after which the silent ones are
//! left out.
//!
//! Runs once on the boot CPU, after the CPU table, the per-CPU areas and the boot CPU's local
//! APIC exist and while the trampoline page is still identity mapped. A CPU that answers
//! after its timeout finds itself marked failed and halts without touching shared state;
//! one that answers after bring-up has ended finds the trampoline's gate closed and halts
//! before paging (`smp::trampoline`), since the identity map it would need is gone by then.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use log::{info, warn};
use smp::trampoline::{self, Params, StartEntry, GATE_CLOSED, TRAMPOLINE_PHYS};
use x86_64::registers::model_specific::Efer;

use crate::arch::paging;
use crate::cpus::{self, CpuState};
use mm::layout::PerCpuArea;

use crate::arch::percpu::{self, CpuIndex};
use crate::memory;
use crate::arch::fwmap;
use crate::{lapic, time};

/// Intel's recommended INIT-to-SIPI delay.
const INIT_WAIT_NS: u64 = 10_000_000;
/// Wait after the first SIPI before sending the second one to CPUs that have not answered.
const SECOND_SIPI_WAIT_NS: u64 = 1_000_000;

/// How long bring-up waits, once the gate is closed, for APs already past it to reach
/// their entry (they run a few hundred instructions; only a host that deschedules the CPU
/// makes this long).
const GATE_DRAIN_NS: u64 = 1_000_000_000;

/// Where the trampoline page is mapped (its firmware mapping, until the end of boot).
static TRAMPOLINE: spin::Once<fwmap::Writable> = spin::Once::new();

/// What bring-up achieved.
pub struct Report {
    pub failed: Vec<(CpuIndex, u32)>,
    /// From the first INIT to the last CPU online (or the timeout).
    pub elapsed_ns: u64,
}

/// Starts every listed AP; `areas[i]` is CPU i's backed per-CPU area.
pub fn start_aps(areas: &[PerCpuArea], timeout_ms: u32, silent: Option<u32>) -> Report {
    let aps: Vec<CpuIndex> = (1..cpus::all().len() as u32).map(CpuIndex).collect();
    let sipi_to = |cpu: &&CpuIndex| Some(cpu.0) != silent;
    if let Some(cpu) = silent {
        warn!("smp: test_silent_cpu={cpu}: cpu {cpu} gets no start-up IPI (fault injection)");
    }
    if aps.is_empty() {
        return Report { failed: Vec::new(), elapsed_ns: 0 };
    }
    let table: Vec<StartEntry> = aps
        .iter()
        .map(|&cpu| {
            let slot = cpus::slot(cpu);
            let data = percpu::prepare_area(&areas[cpu.0 as usize], cpu, slot.apic_id);
            let entry = StartEntry { apic_id: slot.apic_id, cpu_index: cpu.0, stack_top: data.stack_top };
            slot.set_percpu(data);
            entry
        })
        .collect();
    // Leaked: a few bytes per CPU, read by APs in the trampoline.
    install_trampoline(Vec::leak(table));

    let start = time::rdtsc();
    for &cpu in &aps {
        cpus::slot(cpu).set_state(CpuState::Starting);
        lapic::send_init(cpus::slot(cpu).apic_id);
    }
    time::delay_ns(INIT_WAIT_NS);
    let vector = (TRAMPOLINE_PHYS >> 12) as u8;
    for &cpu in aps.iter().filter(sipi_to) {
        lapic::send_sipi(cpus::slot(cpu).apic_id, vector);
    }
    let waiting = |cpu: &&CpuIndex| cpus::slot(**cpu).state() == CpuState::Starting;
    time::delay_until(|| !aps.iter().any(|c| waiting(&c)), SECOND_SIPI_WAIT_NS);
    for cpu in aps.iter().filter(waiting).filter(sipi_to) {
        lapic::send_sipi(cpus::slot(*cpu).apic_id, vector);
    }
    // The timeout counts from the last CPU that answered: on an overcommitted host the
    // CPUs of a large machine come up over more than one timeout, but while they keep
    // coming none is left out (a CPU that never answers costs one timeout after the last).
    // At most one wait per CPU.
    let still_waiting = || aps.iter().filter(|c| waiting(c)).count();
    let mut left = still_waiting();
    while left > 0 && time::delay_until(|| still_waiting() < left, timeout_ms as u64 * 1_000_000) {
        left = still_waiting();
    }

    let mut failed = Vec::new();
    for &cpu in &aps {
        let slot = cpus::slot(cpu);
        if claim_state(cpu, CpuState::Starting, CpuState::Failed) {
            // Put it back into wait-for-SIPI so that it cannot wander in later.
            lapic::send_init(slot.apic_id);
            warn!("smp: cpu {cpu} (APIC id {}) did not answer within {timeout_ms} ms of the last that did; left out", slot.apic_id);
            failed.push((cpu, slot.apic_id));
        }
    }
    close_gate();
    let elapsed_ns = time::tsc_to_ns(time::rdtsc() - start);
    let started = aps.len() - failed.len();
    info!("smp: {started} of {} application processors online in {} us", aps.len(), elapsed_ns / 1000);
    Report { failed, elapsed_ns }
}

/// Copies the trampoline to its page below 1 MiB and fills in its parameters.
fn install_trampoline(table: &'static [StartEntry]) {
    let image = trampoline::image();
    let page = fwmap::Writable::map(TRAMPOLINE_PHYS, 4096).expect("trampoline page maps");
    let params = Params {
        cr3: paging::hypervisor_pml4_phys(),
        efer: Efer::read_raw() & 0xffff_ffff,
        entry: ap_entry as *const () as u64,
        table: table.as_ptr() as u64,
        count: table.len() as u64,
        gate: 0,
        _pad: 0,
    };
    // The image is smaller than a page (a test in the smp crate checks) and `Params` sits
    // at its end.
    page.copy_in(0, image);
    page.write(trampoline::params_offset(), params);
    TRAMPOLINE.call_once(|| page);
}

/// The trampoline's gate word ([`Params::gate`]), shared with the APs running it.
fn gate() -> &'static AtomicU32 {
    let page = TRAMPOLINE.get().expect("the trampoline is installed");
    // The word lies in the trampoline page, mapped writable until the end of boot (every
    // use is before it), aligned (Params is 8-aligned at an 8-aligned offset), and only
    // ever accessed atomically (the APs use `lock` instructions).
    page.atomic_u32(trampoline::params_offset() + core::mem::offset_of!(Params, gate))
}

/// Closes the gate (no AP passes it from now on) and waits for the APs already past it to
/// reach their entry, so that none still needs the identity map when it goes.
fn close_gate() {
    let gate = gate();
    gate.fetch_or(GATE_CLOSED, Ordering::AcqRel);
    if !time::delay_until(|| gate.load(Ordering::Acquire) & !GATE_CLOSED == 0, GATE_DRAIN_NS) {
        warn!("smp: {} CPUs past the trampoline's gate never reached their entry", gate.load(Ordering::Acquire) & !GATE_CLOSED);
    }
}

/// Fault injection (`test_late_cpu=N`): CPU `cpu`, left out at bring-up, is sent INIT-SIPI-SIPI
/// now that boot is over (identity map gone), as a CPU of an overcommitted host that
/// answers late. It must halt at the closed gate: the machine goes on without it.
pub fn start_late(cpu: CpuIndex) {
    let Some(slot) = cpus::all().get(cpu.0 as usize) else { return };
    let vector = (TRAMPOLINE_PHYS >> 12) as u8;
    lapic::send_init(slot.apic_id);
    time::delay_ns(INIT_WAIT_NS);
    lapic::send_sipi(slot.apic_id, vector);
    time::delay_ns(SECOND_SIPI_WAIT_NS);
    lapic::send_sipi(slot.apic_id, vector);
    time::delay_ns(50 * SECOND_SIPI_WAIT_NS);
    warn!("smp: test_late_cpu={cpu}: start-up IPIs sent after boot; cpu {cpu} is {:?}", slot.state());
}

/// Moves CPU `cpu` from `from` to `to` if it is still in `from`.
fn claim_state(cpu: CpuIndex, from: CpuState, to: CpuState) -> bool {
    let slot = cpus::slot(cpu);
    let raw: &AtomicU8 = slot.raw_state();
    raw.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// Where every AP arrives from the trampoline, on its own kernel stack.
extern "C" fn ap_entry(cpu_index: u32) -> ! {
    // Past the identity-mapped code: counted out of the gate.
    gate().fetch_sub(1, Ordering::AcqRel);
    let cpu = CpuIndex(cpu_index);
    let slot = cpus::slot(cpu);
    if slot.state() != CpuState::Starting {
        crate::arch::exit::halt_forever();
    }
    crate::arch::trap::load();
    let Some(data) = slot.percpu() else { crate::arch::exit::halt_forever() };
    // This CPU is the only user of its area, prepared by the boot CPU in `start_aps`.
    percpu::enter_area(memory::percpu_area(cpu), data);
    lapic::init_this_cpu();
    crate::arch::entry::init_this_cpu();
    crate::arch::cpu::protect_this_cpu();
    crate::arch::fpu::init_this_cpu();
    if !claim_state(cpu, CpuState::Starting, CpuState::Online) {
        // Too late: the boot CPU gave up on us. Stay out of the way.
        crate::arch::exit::halt_forever();
    }
    crate::idle::enter()
}
