//! The local APIC's and the legacy timer chips' unsafe entry points (the `apic` crate's
//! `unsafe fn`s) behind safe functions whose invariants this module keeps: reading
//! `IA32_APIC_BASE`, muting the legacy PICs, the PIT's ports, and enabling a CPU's local
//! APIC on the xAPIC page this module accepted.
//!
//! `lapic` calls it, on the boot CPU during boot and on each CPU as it comes up; it
//! chooses nothing (mode and timer are `lapic`'s, through the `apic` crate) and must never
//! hand out a second owner of a device it gives out once (the PICs, the PIT).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use apic::{ApicBase, ApicError, ApicMode, ApicVectors, IoPorts, LocalApic};

use super::paging;

/// The xAPIC page's window address (0 until [`use_xapic_page`] accepted one).
static XAPIC_VA: AtomicU64 = AtomicU64::new(0);
/// Whether the legacy PICs were muted.
static PICS_MUTED: AtomicBool = AtomicBool::new(false);
/// Whether the PIT's ports were handed out.
static PIT_TAKEN: AtomicBool = AtomicBool::new(false);

/// This CPU's `IA32_APIC_BASE`.
pub fn apic_base() -> ApicBase {
    // SAFETY: the hypervisor runs at CPL 0, and every x86_64 CPU has a local APIC; the
    // read has no side effect.
    unsafe { apic::read_apic_base() }
}

/// Masks the legacy PICs (once; later calls do nothing). Interrupts must be off, as they
/// are during boot.
pub fn mute_legacy_pics() {
    assert!(!x86_64::instructions::interrupts::are_enabled(), "the PICs are muted with interrupts off");
    if PICS_MUTED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: CPL 0 with interrupts off (checked), and nothing else in the hypervisor
    // programs the PICs: this is their only use, and it runs once (the flag above).
    unsafe { apic::disable_legacy_pics() };
}

/// The PIT's channel 0 and command ports, once (`None` after): their only user is the
/// boot CPU's timer calibration.
pub fn take_pit_ports() -> Option<IoPorts> {
    if PIT_TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: CPL 0, and this is the only value over the PIT's ports there will ever be
    // (the flag above), so nothing else programs or reads channel 0 while it exists.
    Some(unsafe { IoPorts::new() })
}

/// Accepts `va` as the xAPIC page for every CPU if it maps this CPU's APIC page
/// (`IA32_APIC_BASE`) uncached and writable in the window; whether it did. Window device
/// mappings (`platform::map_mmio`) are never unmapped.
pub fn use_xapic_page(va: u64) -> bool {
    let phys = apic_base().phys_base();
    let mapped = paging::translate(va) == Some(phys)
        && paging::is_uncached(va)
        && paging::access(va).is_some_and(|access| access.writable);
    if mapped {
        XAPIC_VA.store(va, Ordering::Release);
    }
    mapped
}

/// Enables this CPU's local APIC in `mode` (in xAPIC mode on the page accepted by
/// [`use_xapic_page`]). `lapic::init_this_cpu` calls it once per CPU and keeps the handle
/// in that CPU's data.
pub fn enable(mode: ApicMode, vectors: ApicVectors) -> Result<LocalApic, ApicError> {
    let base = match mode {
        ApicMode::XApic => {
            let va = XAPIC_VA.load(Ordering::Acquire);
            assert!(va != 0, "xAPIC mode without an accepted xAPIC page");
            let phys = apic_base().phys_base();
            assert_eq!(paging::translate(va), Some(phys), "this CPU's APIC page is elsewhere");
            Some(va)
        }
        ApicMode::X2Apic => None,
    };
    // SAFETY: CPL 0 on the CPU being enabled, which alone programs its own APIC (the
    // handle never leaves the CPU, and the hypervisor runs with interrupts off, so even a
    // second handle could only interleave accesses from this one CPU, never race them). In
    // xAPIC mode `base` was checked by `use_xapic_page` to map the APIC page uncached and
    // writable, and window device mappings stay for the rest of the run; it maps this
    // CPU's APIC page (checked above).
    unsafe { LocalApic::enable(mode, base, vectors) }
}

/// The I/O APICs handed out by [`io_apic`] (their register pages' window addresses).
static IO_APICS_TAKEN: spin::Mutex<alloc::vec::Vec<u64>> = spin::Mutex::new(alloc::vec::Vec::new());

/// The I/O APIC whose registers `va` maps (uncached, writable, 16-byte aligned), once per
/// address: `None` when `va` is not such a mapping or was handed out before.
pub fn io_apic(va: u64) -> Option<apic::IoApic> {
    let mapped = paging::is_uncached(va) && paging::access(va).is_some_and(|a| a.writable) && va.is_multiple_of(16) && va % 4096 <= 4096 - 0x20;
    let mut taken = IO_APICS_TAKEN.lock();
    if !mapped || taken.contains(&va) {
        return None;
    }
    taken.push(va);
    // SAFETY: `va` maps device registers uncached and writable (checked; window mappings of
    // devices are never removed), 0x20 bytes inside the page, and no other `IoApic` for it
    // was made (checked and recorded); the hypervisor runs at CPL 0.
    Some(unsafe { apic::IoApic::new(va) })
}
