//! Boot self-checks: every core answers a cross-CPU call, IPI round-trip time, every core's
//! local timer fires, the identity map is gone, frames and heap memory come back when freed,
//! the IDT and every CPU's GDT page are mapped read-only and not executable, the image's
//! pages are writable or executable as their sections say and never both, the
//! machine-to-physical table is mapped as guests will read it and holds no entry yet, and
//! every CPU runs with the boot CPU's SMEP and SMAP and without FSGSBASE.
//!
//! Runs on the boot CPU after bring-up; each check records pass or fail with a detail line.
//! The checks only use public mechanisms (call board, timers, allocator), so a failure here
//! is a real failure of that mechanism, not of the check.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use hypervisor::cmdline::Options;
use log::{error, info};

use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::registers::control::{Cr4, Cr4Flags};

use crate::arch::{self, paging};
use crate::cpus::{self, CpuState};
use crate::arch::percpu::CpuIndex;
use crate::{interrupts, lapic, memory, time};

/// One check's outcome (its name and detail are logged when it is recorded).
pub struct Check {
    pub passed: bool,
}

/// All checks, plus the measured figures.
pub struct Checks {
    pub list: Vec<Check>,
    /// Median cross-CPU call round trip in ns (None with one CPU).
    pub ipi_rtt_ns: Option<u64>,
    pub ipi_samples: usize,
    /// Whether the full set ran (`selftest`), not just the every-core check.
    pub complete: bool,
}

impl Checks {
    pub fn passed(&self) -> bool {
        self.list.iter().all(|c| c.passed)
    }
}

fn record(list: &mut Vec<Check>, name: &'static str, passed: bool, detail: String) {
    if passed {
        info!("selftest: {name}: ok ({detail})");
    } else {
        error!("selftest: {name}: FAILED ({detail})");
    }
    list.push(Check { passed });
}

/// Runs the checks: that every core answers always (it is cheap), the rest only when the
/// command line asks for `selftest`.
pub fn run(options: &Options) -> Checks {
    let mut list = Vec::new();
    let online = cpus::online_count();

    let answered = cpus::call_all(|_| {}, 0);
    record(&mut list, "every core answers", answered == online, alloc::format!("{answered} of {online} online CPUs"));
    if !options.selftest {
        return Checks { list, ipi_rtt_ns: None, ipi_samples: 0, complete: false };
    }

    let (ipi_rtt_ns, ipi_samples) = ipi_round_trip(options.ipi_samples);
    record(&mut list, "ipi round trip", online == 1 || ipi_rtt_ns.is_some(), alloc::format!("median {} ns over {ipi_samples} calls", ipi_rtt_ns.unwrap_or(0)));

    let (fired, detail) = timers_fire();
    record(&mut list, "local timers fire", fired, detail);

    let identity_gone = !paging::identity_map_present();
    record(&mut list, "identity map removed", identity_gone, String::from("top-level slot 0 empty"));

    let (frames_ok, detail) = memory::check_frames_round_trip(256);
    record(&mut list, "frames return to the allocator", frames_ok, detail);

    let (views_ok, detail) = match memory::frames().alloc(mm::frame::Owner::Hypervisor) {
        Ok(mfn) => {
            let result = arch::tempmap::check_views(mfn);
            let freed = memory::frames().free(mfn).is_ok();
            (result.0 && freed, result.1)
        }
        Err(e) => (false, alloc::format!("no frame: {e:?}")),
    };
    record(&mut list, "frame views see one frame, pinned while mapped", views_ok, detail);

    let (heap_ok, detail) = memory::check_heap_round_trip();
    record(&mut list, "heap returns memory", heap_ok, detail);

    let (rebased, detail) = memory::check_heap_rebase();
    record(&mut list, "heap gives frame-table frames back", rebased, detail);

    let (m2p_ok, detail) = crate::m2p::check();
    record(&mut list, "machine-to-physical table mapped and invalid", m2p_ok, detail);

    let (read_only, detail) = descriptor_tables_read_only();
    record(&mut list, "descriptor tables read-only", read_only, detail);

    let (w_xor_x, detail) = image_write_xor_execute();
    record(&mut list, "image code read-only, everything else no-execute", w_xor_x, detail);

    let (protected, detail) = cpus_protected();
    record(&mut list, "cpu protections on every core", protected, detail);

    Checks { list, ipi_rtt_ns, ipi_samples, complete: true }
}

/// The IDT page and every online CPU's reserved GDT page: mapped, not writable, not
/// executable (the page-table entries the window uses, read back).
fn descriptor_tables_read_only() -> (bool, String) {
    let mut pages = alloc::vec![("IDT", arch::trap::idt_address())];
    for (index, slot) in cpus::all().iter().enumerate() {
        if slot.state() == CpuState::Online {
            pages.push(("GDT", memory::percpu_area(CpuIndex(index as u32)).gdt_reserved_page()));
        }
    }
    let wrong: Vec<_> = pages
        .iter()
        .filter(|(_, va)| paging::access(*va) != Some(paging::Access { writable: false, executable: false }))
        .map(|(what, va)| alloc::format!("{what} at {va:#x}: {:?}", paging::access(*va)))
        .collect();
    if wrong.is_empty() {
        (true, alloc::format!("IDT and {} GDT pages read-only, no-execute", pages.len() - 1))
    } else {
        (false, wrong.join(", "))
    }
}

/// Every page of the image as its section says: code read-only and executable, read-only
/// data read-only, data writable (the IDT page read-only), neither executable.
fn image_write_xor_execute() -> (bool, String) {
    let arch::boot::Sections { text, rodata, data, end } = arch::boot::image_sections();
    let idt = arch::trap::idt_address();
    let expected = |va: u64| {
        let (writable, executable) = match va {
            _ if va < rodata => (false, true),
            _ if va < data || va == idt => (false, false),
            _ => (true, false),
        };
        paging::Access { writable, executable }
    };
    let pages = (text & !0xfff..end).step_by(4096);
    let count = (end - (text & !0xfff)) / 4096;
    let wrong: Vec<_> = pages.filter(|&va| paging::access(va) != Some(expected(va))).collect();
    match wrong.first() {
        None => (true, alloc::format!("{count} pages: code {} KiB, read-only data {} KiB, data {} KiB", (rodata - text) >> 10, (data - rodata) >> 10, (end - data) >> 10)),
        Some(&va) => (false, alloc::format!("{} pages wrong, first {va:#x}: {:?}, expected {:?}", wrong.len(), paging::access(va), expected(va))),
    }
}

/// CPUs whose CR4 shows what the boot CPU turned on (SMEP, SMAP) and FSGSBASE off.
static PROTECTED_CPUS: AtomicUsize = AtomicUsize::new(0);

fn cpus_protected() -> (bool, String) {
    PROTECTED_CPUS.store(0, Ordering::Relaxed);
    let answered = cpus::call_all(
        |_| {
            let want = arch::cpu::protections();
            let cr4 = Cr4::read();
            let smep = cr4.contains(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION);
            let smap = cr4.contains(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION);
            if smep == want.smep && smap == want.smap && arch::cpu::fsgsbase_off() {
                PROTECTED_CPUS.fetch_add(1, Ordering::Relaxed);
            }
        },
        0,
    );
    let protected = PROTECTED_CPUS.load(Ordering::Relaxed);
    let want = arch::cpu::protections();
    (
        protected == answered && answered == cpus::online_count(),
        alloc::format!("{protected} of {answered} CPUs with SMEP {} SMAP {} FSGSBASE off", want.smep, want.smap),
    )
}

/// Times `samples` empty cross-CPU calls to every other online CPU; returns the median.
fn ipi_round_trip(samples: u32) -> (Option<u64>, usize) {
    let mut ns = Vec::new();
    for (index, slot) in cpus::all().iter().enumerate().skip(1) {
        if slot.state() != CpuState::Online {
            continue;
        }
        for _ in 0..samples {
            let start = time::rdtsc();
            if cpus::call(CpuIndex(index as u32), |_| {}, 0).is_ok() {
                ns.push(time::tsc_to_ns(time::rdtsc() - start));
            }
        }
    }
    let count = ns.len();
    if ns.is_empty() {
        return (None, 0);
    }
    ns.sort_unstable();
    (Some(ns[count / 2]), count)
}

/// Arms a 1 ms one-shot timer on every online CPU and checks that each one fired.
fn timers_fire() -> (bool, String) {
    let before: Vec<u64> = (0..cpus::all().len()).map(interrupts::timer_ticks).collect();
    cpus::call_all(|_| lapic::arm_timer_ns(1_000_000), 0);
    let all_fired = || {
        cpus::all().iter().enumerate().all(|(i, s)| s.state() != CpuState::Online || interrupts::timer_ticks(i) > before[i])
    };
    // The boot CPU must take its own interrupt while it waits.
    x86_64::instructions::interrupts::enable();
    let fired = time::delay_until(all_fired, 200_000_000);
    x86_64::instructions::interrupts::disable();
    let mut detail = String::new();
    let silent: Vec<usize> = (0..before.len())
        .filter(|&i| cpus::all()[i].state() == CpuState::Online && interrupts::timer_ticks(i) <= before[i])
        .collect();
    if silent.is_empty() {
        let _ = write!(detail, "1 ms one-shot fired on all {} CPUs ({})", cpus::online_count(), lapic::timer_kind());
    } else {
        let _ = write!(detail, "no timer interrupt on CPUs {silent:?}");
    }
    (fired, detail)
}
