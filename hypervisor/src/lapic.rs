//! Each CPU's local APIC, through the `apic` crate: enabling it (x2APIC where offered unless
//! the command line says otherwise, xAPIC otherwise), IPIs, EOI, and the one-shot timer
//! (TSC-deadline where offered, else the APIC timer calibrated against the PIT).
//!
//! The mode and timer are chosen once on the boot CPU ([`init_boot_cpu`], which also
//! calibrates the TSC and APIC timer and mutes the legacy PICs); every CPU then enables its
//! own APIC with [`init_this_cpu`] and keeps the handle in its per-CPU data. The xAPIC page
//! is mapped once (uncached) in the window's device region; all CPUs use the same address.
//! The `apic` crate's unsafe entry points are reached through `arch::lapic` only.

use core::sync::atomic::{AtomicU64, Ordering};

use apic::{ApicId, ApicMode, ApicVectors, CpuFeatures, LocalApic, Pit, TimerChoice, TimerSource};
use log::info;
use spin::Once;

use crate::arch::lapic as hw;
use crate::arch::vectors;
use crate::arch::percpu;
use crate::{platform, time};

static CHOICE: Once<TimerChoice> = Once::new();
static APIC_TIMER_HZ: AtomicU64 = AtomicU64::new(0);

const VECTORS: ApicVectors = ApicVectors { timer: vectors::TIMER, error: vectors::ERROR, spurious: vectors::SPURIOUS };

/// Chooses the APIC mode and timer, enables the boot CPU's APIC, mutes the legacy PICs and
/// calibrates the TSC and APIC timer against the PIT.
pub fn init_boot_cpu(allow_x2apic: bool) {
    let choice = *CHOICE.call_once(|| apic::choose_timer(CpuFeatures::detect(), allow_x2apic));
    if choice.apic_mode == ApicMode::XApic {
        let base = hw::apic_base().phys_base();
        assert!(hw::use_xapic_page(platform::map_mmio(base, 4096)), "the xAPIC page maps as a device page");
    }
    hw::mute_legacy_pics();
    init_this_cpu();
    let ports = hw::take_pit_ports().expect("the PIT is calibrated against once");
    let mut pit = Pit::start(ports).unwrap_or_else(|e| panic!("PIT does not count: {e:?}"));
    let calibration = with(|lapic| lapic.calibrate_timers(&mut pit)).unwrap_or_else(|e| panic!("timer calibration failed: {e:?}"));
    time::set_tsc_hz(calibration.tsc_hz);
    APIC_TIMER_HZ.store(calibration.apic_timer_hz, Ordering::Relaxed);
    info!("apic: {choice}");
    info!(
        "time: TSC {} kHz, APIC timer {} kHz (spread {} ppm over 5 runs against the PIT)",
        calibration.tsc_hz / 1000,
        calibration.apic_timer_hz / 1000,
        calibration.tsc_spread_ppm
    );
}

/// Enables this CPU's local APIC in the chosen mode and keeps its handle per CPU.
pub fn init_this_cpu() {
    let choice = CHOICE.get().expect("the boot CPU chooses the APIC mode first");
    let lapic = hw::enable(choice.apic_mode, VECTORS).unwrap_or_else(|e| panic!("local APIC: {e:?}"));
    percpu::current().set_lapic(lapic);
}

fn with<R>(f: impl FnOnce(&LocalApic) -> R) -> R {
    f(percpu::current().lapic().expect("this CPU's local APIC is enabled"))
}

/// Acknowledges the interrupt being handled.
pub fn eoi() {
    with(|l| l.eoi());
}

/// Sends `vector` to the CPU with APIC id `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    with(|l| l.send_ipi(ApicId(apic_id), vector)).unwrap_or_else(|e| panic!("IPI to APIC {apic_id}: {e:?}"));
}

/// Sends INIT to `apic_id`.
pub fn send_init(apic_id: u32) {
    with(|l| l.send_init(ApicId(apic_id))).unwrap_or_else(|e| panic!("INIT to APIC {apic_id}: {e:?}"));
}

/// Sends a start-up IPI for code at page `page` to `apic_id`.
pub fn send_sipi(apic_id: u32, page: u8) {
    with(|l| l.send_sipi(ApicId(apic_id), page)).unwrap_or_else(|e| panic!("SIPI to APIC {apic_id}: {e:?}"));
}

/// This CPU's APIC id, read from the APIC.
pub fn current_id() -> u32 {
    with(|l| l.id().0)
}

/// Reads and clears the APIC error status.
pub fn read_error() -> u32 {
    with(|l| l.take_error_status())
}

/// Arms this CPU's one-shot timer to fire `ns` nanoseconds from now.
pub fn arm_timer_ns(ns: u64) {
    let choice = CHOICE.get().expect("timer chosen at boot");
    match choice.timer {
        TimerSource::TscDeadline => {
            let scale = time::tsc_scale().expect("calibrated TSC");
            let deadline = time::rdtsc().saturating_add(scale.ns_to_ticks(ns));
            with(|l| l.tsc_deadline(deadline)).expect("TSC-deadline offered");
        }
        TimerSource::ApicOneShot => {
            let hz = APIC_TIMER_HZ.load(Ordering::Relaxed) as u128;
            let ticks = (ns as u128 * hz).div_ceil(1_000_000_000).clamp(1, u32::MAX as u128) as u32;
            with(|l| l.timer_oneshot_ticks(ticks));
        }
    }
}

/// `x2apic` or `xapic`.
pub fn mode_name() -> &'static str {
    match CHOICE.get().map(|c| c.apic_mode) {
        Some(ApicMode::X2Apic) => "x2apic",
        _ => "xapic",
    }
}

/// `tsc-deadline` or `apic-oneshot`.
pub fn timer_kind() -> &'static str {
    match CHOICE.get().map(|c| c.timer) {
        Some(TimerSource::TscDeadline) => "tsc-deadline",
        _ => "apic-oneshot",
    }
}
