//! The GS base as the hypervisor uses it: on every CPU it points at that CPU's data page
//! (`percpu::PerCpu`), whose first word is its own address, so that `gs:[0]` gives the
//! page. The entry paths swap it with the guest's (`swapgs`); [`adopt_own`] puts ours
//! back for a fatal report when an exception came between the two.
//!
//! This module only reaches the register and the word; what the page holds is
//! `percpu`'s.

use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::registers::model_specific::{GsBase, KernelGsBase};
use x86_64::VirtAddr;

use super::paging;

/// A type GS may point at.
///
/// # Safety
/// Implement for one type only (every CPU's GS points at a value of it once
/// [`install`]ed, and [`current`] reads it as that type); the type must be `#[repr(C)]`
/// with a first field of 8 bytes that holds the value's own address.
pub unsafe trait GsArea: 'static {}

/// Set once a CPU (the boot CPU, first) has installed its area.
static READY: AtomicBool = AtomicBool::new(false);

/// Points this CPU's GS base at `area` from now on.
pub fn install<T: GsArea>(area: &'static T) {
    GsBase::write(VirtAddr::new(area as *const T as u64));
    READY.store(true, Ordering::Release);
}

/// Whether the boot CPU has installed its area (before that, [`current`] must not run).
pub fn ready() -> bool {
    READY.load(Ordering::Acquire)
}

/// The area this CPU's GS points at. Before the boot CPU's [`install`] GS is 0 and the
/// read faults (a fatal report), which [`ready`] lets early paths avoid.
pub fn current<T: GsArea>() -> &'static T {
    let ptr: u64;
    // SAFETY: a read of the first word GS points at; with GS installed it is the area's
    // own address (`GsArea`), and it changes no state.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags)) };
    // SAFETY: `install` took a `&'static T` of the one `GsArea` type, which every CPU's GS
    // points at (the trait's contract), so `ptr` is such a value's address.
    unsafe { &*(ptr as *const T) }
}

/// Makes GS point at this CPU's area again when an exception that can interrupt ring 0
/// anywhere (NMI, machine check, double fault: only the fatal report runs for them) came
/// between an entry and its `swapgs`, or between the exit's `swapgs` and `iretq`, where
/// the GS base is the guest's. The GS base is taken as ours when it maps a window page
/// whose first word is its own address; otherwise the bases are swapped. It never swaps
/// back: only for the way to a fatal report.
pub fn adopt_own() {
    fn is_area(base: u64) -> bool {
        // SAFETY: `translate` says the window page is mapped (window pages are supervisor
        // and never a guest's), so the read cannot fault.
        base >= paging::WINDOW_BASE && paging::translate(base).is_some() && unsafe { (base as *const u64).read_volatile() } == base
    }
    if !ready() || is_area(GsBase::read().as_u64()) {
        return;
    }
    if is_area(KernelGsBase::read().as_u64()) {
        // SAFETY: KERNEL_GS_BASE holds this CPU's area (checked): swapping makes GS point
        // at it, which is all the report needs.
        unsafe { core::arch::asm!("swapgs", options(nostack, preserves_flags)) };
    }
}
