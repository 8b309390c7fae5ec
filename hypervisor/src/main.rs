//! The hypervisor image: the boot script, and the glue between the hardware layer (`arch`)
//! and the logic crates (`mm`, `topology`, `apic`, `smp`).
//!
//! [`boot_main`] is the whole boot as an ordered list of steps, one call and one log line
//! each. It runs on the boot CPU; application processors join in `smpboot`.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod bootinfo;
mod cpus;
mod domain;
#[cfg(feature = "heap-trace")]
mod heaptrace;
mod idle;
mod interrupts;
mod lapic;
mod logger;
mod m2p;
mod memory;
mod pci;
mod platform;
mod preempt;
mod pv;
mod sched;
mod selftest;
mod smpboot;
mod summary;
mod time;
mod tlb;
mod traps;

use hypervisor::cmdline::Options;
use log::{error, info, warn};

use arch::exit::{exit, Outcome};
use arch::paging::{self, MapKind};
use mm::layout::PerCpuArea;
use arch::percpu::{self, CpuIndex};

/// Entered from the boot stub in long mode, on the boot stack, in the window, with the
/// loader's protocol magic, its information structure and the TSC at entry.
// SAFETY: `boot_main` is the one symbol of that name (the boot stub in `arch::boot` calls
// it by link name, with this signature).
#[unsafe(no_mangle)]
pub extern "C" fn boot_main(magic: u32, info_phys: u32, entry_tsc: u64) -> ! {
    time::set_boot_tsc(entry_tsc);
    arch::serial::init();
    let image_bytes = init_window();
    percpu::init_boot_cpu_early(arch::boot::stack_top());
    arch::trap::init();
    arch::trap::load();
    logger::init(false);
    info!("hypervisor {} starting", env!("CARGO_PKG_VERSION"));

    let mut layout = memory::start_layout(image_bytes);
    let mut boot = bootinfo::decode(magic, info_phys as u64).unwrap_or_else(|e| fatal(format_args!("boot information: {e}")));
    let options = Options::parse(&boot.cmdline);
    logger::set_verbose(options.verbose);
    info!("boot: {} loader, command line {:?}, {} modules", boot.protocol, boot.cmdline.as_str(), boot.modules.len());
    for word in &options.unknown {
        warn!("boot: unknown command-line option {:?} ignored", word.as_str());
    }
    for word in &options.invalid {
        warn!("boot: bad value in command-line option {:?} ignored", word.as_str());
    }

    pv::modules::check(&mut boot, &options);
    pv::lifecycle::set_exit_status(options.exit);
    lapic::init_boot_cpu(options.x2apic);
    let early = memory::init_heap(&boot, &mut layout, &options).unwrap_or_else(|e| fatal(format_args!("memory: {e}")));
    pv::modules::register(&boot, &options);
    let machine = platform::discover(&boot, &options, lapic::current_id());
    let areas = memory::place_cpu_regions(&mut layout, machine.cpus_to_start()).unwrap_or_else(|e| fatal(format_args!("window: {e}")));
    let memory = memory::init_frames(early, &mut layout).unwrap_or_else(|e| fatal(format_args!("memory: {e}")));
    #[cfg(feature = "heap-trace")]
    heaptrace::init();
    cpus::init(&machine.apic_ids_to_start());
    domain::init();
    let glue = sched::Glue {
        load: pv::switch::load,
        save: pv::switch::save,
        timer_fired: pv::events::timer_fired,
        destroy: pv::teardown::destroy,
        idle_loop: idle::run,
    };
    let config = bvt::Config {
        wake_boost_ns: if options.wake_boost { bvt::DEFAULT_WAKE_BOOST_NS } else { 0 },
        boost_min_sleep_ns: u64::from(options.boost_min_sleep_us) * 1000,
        ..bvt::Config::default()
    };
    sched::init(machine.cpus_to_start(), |cpu| machine.nearest_first(cpu), config, u64::from(options.timer_slop_us) * 1000, glue);
    memory::back_percpu_areas(areas).unwrap_or_else(|e| fatal(format_args!("per-CPU areas: {e}")));
    move_boot_cpu(&areas[0]);
    let m2p = m2p::init().unwrap_or_else(|e| fatal(format_args!("machine-to-physical table: {e}")));
    info!("m2p: {} KiB in {} frames for machine frames 0..{:#x}, read-only at {:#x}", m2p.table_bytes >> 10, m2p.table_frames, m2p.frames_covered, abi::arch_x86::MACH2PHYS_VIRT_START);
    arch::entry::init_this_cpu();
    let protections = arch::cpu::init_boot_cpu();
    info!("cpu: SMEP {}, SMAP {}, FSGSBASE off", on_off(protections.smep), on_off(protections.smap));
    arch::fpu::init_boot_cpu(options.fpu_save);
    let fpu = arch::fpu::setup();
    info!(
        "fpu: {}, guest XCR0 up to {:#x}, {} bytes per vCPU",
        if fpu.xsaveopt { "XSAVEOPT" } else if fpu.xsave { "XSAVE" } else { "FXSAVE" },
        fpu.xcr0_max,
        fpu.area_bytes
    );
    platform::init_interrupt_controllers(&machine);
    lapic::init_this_cpu();
    pci::init(&boot, &machine, |functions| pv::pirq::register_lines(functions, &machine));
    let smp = smpboot::start_aps(areas, options.ap_timeout_ms, options.test_silent_cpu.or(options.test_late_cpu));
    let firmware_peak = arch::fwmap::used();
    finish_boot();
    if let Some(cpu) = options.test_late_cpu {
        smpboot::start_late(CpuIndex(cpu));
    }
    let all_idle_ns = wait_all_idle();
    let checks = selftest::run(&options);
    memory::record_usage(&mut layout, firmware_peak, cpus::online_count());
    for line in alloc::format!("{layout}").lines() {
        info!("{line}");
    }
    summary::print(&summary::Facts { boot: &boot, memory: &memory, machine: &machine, smp: &smp, checks: &checks, layout: &layout, all_idle_ns });
    if !checks.passed() {
        fatal(format_args!("self-checks failed"));
    }
    if options.dom0 {
        pv::build::start_domain0();
    } else if !pv::modules::modules().is_empty() {
        pv::build::start_boot_domains();
    } else if options.selftest {
        exit(Outcome::Success);
    }
    logger::set_buffered(true);
    idle::enter()
}

/// Moves onto the window page tables with the image mapped by section permissions; returns
/// the image size in bytes.
fn init_window() -> u64 {
    let arch::boot::Sections { text, rodata, data, end } = arch::boot::image_sections();
    let sections = [(text, rodata, MapKind::Text), (rodata, data, MapKind::ReadOnly), (data, end, MapKind::Data)];
    let identity = arch::boot::take_identity_slot().expect("the window is set up once, on the boot stub's tables");
    let efer = x86_64::registers::model_specific::Efer::read();
    let nx = efer.contains(x86_64::registers::model_specific::EferFlags::NO_EXECUTE_ENABLE);
    paging::init(&sections, nx, identity);
    end - paging::WINDOW_BASE
}

/// Moves the boot CPU off its static early state into its own per-CPU area.
fn move_boot_cpu(area: &PerCpuArea) {
    let slot = cpus::slot(CpuIndex(0));
    let data = percpu::prepare_area(area, CpuIndex(0), slot.apic_id);
    slot.set_percpu(data);
    percpu::enter_area(area, data);
    slot.set_state(cpus::CpuState::Online);
}

/// Ends the boot-only mappings: the identity map and the firmware mappings, on every CPU.
fn finish_boot() {
    paging::drop_identity_map();
    arch::fwmap::release_all();
    let flushed = cpus::call_all(|_| paging::flush_all_local(), 0);
    info!("boot: identity map and firmware mappings removed, TLBs flushed on {flushed} CPUs");
}

/// Waits (bounded) until every other online CPU sits in its idle loop — the boot CPU's boot
/// work is done at this point — and returns the time since hypervisor entry.
fn wait_all_idle() -> u64 {
    let others = cpus::online_count() - 1;
    if !time::delay_until(|| idle::idle_cpus() >= others, 1_000_000_000) {
        warn!("boot: only {} of {others} other CPUs reached idle", idle::idle_cpus());
    }
    let ns = time::since_boot_ns();
    info!("boot: all cores idle {} us after hypervisor entry", ns / 1000);
    ns
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off (not offered)" }
}

/// Reports a boot failure clearly and stops.
fn fatal(args: core::fmt::Arguments) -> ! {
    error!("boot failed: {args}");
    exit(Outcome::Failure)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    logger::force_unlock();
    logger::emergency(format_args!("PANIC on cpu {}: {info}", percpu::current_index_or_boot()));
    exit(Outcome::Failure)
}
