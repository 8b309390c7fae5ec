//! The x87/MMX/SSE/AVX registers: set up on every CPU for guests, saved and loaded per
//! vCPU with XSAVE/XRSTOR where the machine has XSAVE, FXSAVE/FXRSTOR otherwise, and the
//! hardware CR0.TS and XCR0 that follow the running guest.
//!
//! [`init_this_cpu`] runs once on each CPU at boot: the FPU native (CR0.NE), no emulation
//! (CR0.EM clear, CR0.MP set), SSE and its exceptions (CR4.OSFXSR, CR4.OSXMMEXCPT), and
//! where XSAVE is offered (and `xsave=off` was not given) CR4.OSXSAVE with XCR0 set to
//! every component guests may use ([`hypervisor::fpu::guest_xcr0_max`]): the area size is
//! CPUID leaf 0xD's for that XCR0. State is switched eagerly: the scheduler saves the
//! leaving vCPU's registers with [`save`] and loads the next one's with [`restore`], both
//! with XCR0 at that maximum so that every component is saved and loaded whatever XCR0
//! the guests chose (a component one guest disabled still holds another's values
//! otherwise); then XCR0 becomes the guest's own ([`load_xcr0`]). XSAVEOPT is used where
//! offered (`xsave=on` for plain XSAVE): it skips components not changed since the
//! area's last XRSTOR on this CPU, which holds because only XSAVE and the vCPU's own
//! constructors write an area, and a vCPU's area is loaded before it first runs.
//!
//! CR0.TS is the running guest's virtual TS (`fpu_taskswitch`): set, the guest's next FPU
//! instruction raises #NM, which is the guest's. XSAVE, XRSTOR and their legacy forms
//! fault with TS set, so [`save`] and [`restore`] run with it clear ([`clts`]).
//!
//! The hypervisor is soft-float and never touches these registers otherwise, so they always
//! hold the state of the last vCPU that ran on the CPU.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use hypervisor::cmdline::FpuSave;
use hypervisor::fpu::{self, FpuArea, MAX_AREA_BYTES};
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};

/// CPUID.1:ECX.XSAVE.
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
/// CPUID.(EAX=0xD, ECX=1):EAX.XSAVEOPT.
const XSAVE_EAX_XSAVEOPT: u32 = 1 << 0;

/// The MXCSR bits this machine supports, as the boot CPU's FXSAVE reports them (0: the
/// default mask).
static MXCSR_MASK: AtomicU32 = AtomicU32::new(0);
/// Whether state is switched with XSAVE (set by the boot CPU, before any guest runs).
static XSAVE: AtomicBool = AtomicBool::new(false);
static XSAVEOPT: AtomicBool = AtomicBool::new(false);
/// The XCR0 every CPU holds while saving and loading, and the most a guest may set.
static XCR0_MAX: AtomicU64 = AtomicU64::new(fpu::XSTATE_FP_SSE);
/// Bytes of a vCPU's area (512 without XSAVE).
static AREA_BYTES: AtomicU32 = AtomicU32::new(fpu::LEGACY_BYTES as u32);

/// How this machine switches guests' FPU state, for the boot log and CPUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    pub xsave: bool,
    pub xsaveopt: bool,
    /// The components guests may enable (x87 and SSE only without XSAVE).
    pub xcr0_max: u64,
    pub area_bytes: usize,
}

/// What the boot CPU chose.
pub fn setup() -> Setup {
    Setup {
        xsave: XSAVE.load(Ordering::Relaxed),
        xsaveopt: XSAVEOPT.load(Ordering::Relaxed),
        xcr0_max: XCR0_MAX.load(Ordering::Relaxed),
        area_bytes: AREA_BYTES.load(Ordering::Relaxed) as usize,
    }
}

/// The size of a vCPU's FPU area on this machine.
pub fn area_bytes() -> usize {
    AREA_BYTES.load(Ordering::Relaxed) as usize
}

/// Enables native x87, SSE and (where offered and not refused by `mode`) XSAVE on the
/// boot CPU, with XCR0 at the guests' maximum, and records the choice for every CPU.
pub fn init_boot_cpu(mode: FpuSave) {
    enable(Some(mode));
}

/// The same on another CPU, as the boot CPU chose (CPUs of one machine are alike).
pub fn init_this_cpu() {
    enable(None);
}

fn enable(boot_mode: Option<FpuSave>) {
    let boot = boot_mode.is_some();
    let mode = boot_mode.unwrap_or(FpuSave::Xsaveopt);
    let offered = core::arch::x86_64::__cpuid(1).ecx & LEAF1_ECX_XSAVE != 0;
    let xsave = if boot { offered && mode != FpuSave::Fxsave } else { XSAVE.load(Ordering::Relaxed) };
    // SAFETY: the hypervisor never uses the FPU (soft-float), so changing how it traps
    // changes nothing for the hypervisor; guests get a native, eagerly switched FPU.
    unsafe {
        Cr0::update(|f| {
            f.remove(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED);
            f.insert(Cr0Flags::MONITOR_COPROCESSOR | Cr0Flags::NUMERIC_ERROR);
        });
        Cr4::update(|f| {
            f.set(Cr4Flags::OSXSAVE, xsave);
            f.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE);
        });
    }
    if xsave {
        let max = if boot {
            let leaf = core::arch::x86_64::__cpuid_count(0xd, 0);
            let mut max = fpu::guest_xcr0_max(u64::from(leaf.eax) | u64::from(leaf.edx) << 32);
            xsetbv(max);
            if core::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize > MAX_AREA_BYTES {
                // Not the standard layout the heap reservation assumes: no AVX-512 then.
                max &= !fpu::XSTATE_AVX512;
            }
            max
        } else {
            XCR0_MAX.load(Ordering::Relaxed)
        };
        xsetbv(max);
        if boot {
            let bytes = core::arch::x86_64::__cpuid_count(0xd, 0).ebx.max(fpu::LEGACY_BYTES as u32);
            let opt = core::arch::x86_64::__cpuid_count(0xd, 1).eax & XSAVE_EAX_XSAVEOPT != 0;
            XCR0_MAX.store(max, Ordering::Relaxed);
            AREA_BYTES.store(bytes.min(MAX_AREA_BYTES as u32), Ordering::Relaxed);
            XSAVEOPT.store(opt && mode == FpuSave::Xsaveopt, Ordering::Relaxed);
            XSAVE.store(true, Ordering::Release);
        }
    }
    if boot {
        let mut probe = FpuArea::try_new(fpu::LEGACY_BYTES).expect("boot has heap for 575 bytes");
        fxsave(&mut probe);
        let b = probe.bytes();
        let mask = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        MXCSR_MASK.store(mask, Ordering::Relaxed);
    }
}

/// The MXCSR bits FXRSTOR/XRSTOR accept here (0 before boot recorded them: the default mask).
pub fn mxcsr_mask() -> u32 {
    MXCSR_MASK.load(Ordering::Relaxed)
}

/// Saves this CPU's registers into `area` (an area of [`area_bytes`]). CR0.TS must be clear.
pub fn save(area: &mut FpuArea) {
    debug_assert!(area.len() >= area_bytes());
    if !XSAVE.load(Ordering::Relaxed) {
        fxsave(area);
        return;
    }
    let max = XCR0_MAX.load(Ordering::Relaxed);
    load_xcr0(max);
    let (low, high) = (max as u32, (max >> 32) as u32);
    let at = area.bytes_mut().as_mut_ptr();
    if XSAVEOPT.load(Ordering::Relaxed) {
        // SAFETY: XSAVEOPT64 writes at most the XCR0 size CPUID reported (the area's
        // size) to a 64-byte aligned area; CR4.OSXSAVE is set and CR0.TS clear, so it
        // cannot fault. It changes no register.
        unsafe { asm!("xsaveopt64 [{}]", in(reg) at, in("eax") low, in("edx") high, options(nostack, preserves_flags)) };
    } else {
        // SAFETY: as for XSAVEOPT64 above.
        unsafe { asm!("xsave64 [{}]", in(reg) at, in("eax") low, in("edx") high, options(nostack, preserves_flags)) };
    }
}

/// Loads this CPU's registers from `area`, then sets XCR0 to `xcr0` (the vCPU's own,
/// which [`hypervisor::fpu::valid_xcr0`] accepted). `area` is an image the save or the
/// constructors of [`FpuArea`] made, which the restore always accepts. CR0.TS must be clear.
pub fn restore(area: &FpuArea, xcr0: u64) {
    debug_assert!(area.len() >= area_bytes());
    if !XSAVE.load(Ordering::Relaxed) {
        // SAFETY: FXRSTOR64 reads 512 bytes from a 16-byte aligned area; its MXCSR is one
        // the CPU accepts (see above), so it cannot fault. The hypervisor does not use the
        // registers it loads.
        unsafe { asm!("fxrstor64 [{}]", in(reg) area.bytes().as_ptr(), options(nostack, preserves_flags, readonly)) };
        return;
    }
    let max = XCR0_MAX.load(Ordering::Relaxed);
    load_xcr0(max);
    let (low, high) = (max as u32, (max >> 32) as u32);
    // SAFETY: XRSTOR64 reads a 64-byte aligned standard-form area whose header names only
    // components of XCR0 (XSAVE wrote it with XCR0 at this maximum, or it is a constructor's
    // clean image) and whose MXCSR is supported, so it cannot fault; the hypervisor does
    // not use the registers it loads.
    unsafe {
        asm!("xrstor64 [{}]", in(reg) area.bytes().as_ptr(), in("eax") low, in("edx") high, options(nostack, preserves_flags, readonly))
    };
    load_xcr0(xcr0);
}

/// Makes XCR0 `xcr0` on this CPU (a value [`hypervisor::fpu::valid_xcr0`] accepts, or the
/// maximum), writing it only when it differs. Nothing without XSAVE.
pub fn load_xcr0(xcr0: u64) {
    if XSAVE.load(Ordering::Relaxed) && current_xcr0() != xcr0 {
        xsetbv(xcr0);
    }
}

/// The XCR0 each CPU has, as [`xsetbv`] last wrote it (Xen's `this_cpu(xcr0)`): the switch
/// path compares against this instead of running `xgetbv`, which is cheaper and which some
/// host virtualizers (a nested KVM seen here) cannot emulate ("emulation failure").
static XCR0_OF_CPU: [AtomicU64; smp::xcall::MAX_CPUS] = [const { AtomicU64::new(0) }; smp::xcall::MAX_CPUS];

fn this_cpu_xcr0() -> &'static AtomicU64 {
    &XCR0_OF_CPU[super::percpu::current_index_or_boot() as usize % smp::xcall::MAX_CPUS]
}

fn current_xcr0() -> u64 {
    this_cpu_xcr0().load(Ordering::Relaxed)
}

/// Clears CR0.TS on this CPU.
pub fn clts() {
    // SAFETY: CLTS only lets FPU instructions run without #NM; the hypervisor uses none
    // but its own save and load.
    unsafe { asm!("clts", options(nomem, nostack, preserves_flags)) };
}

/// Sets CR0.TS on this CPU: the running guest's next FPU instruction raises #NM.
pub fn stts() {
    // SAFETY: TS only makes FPU instructions raise #NM; the hypervisor clears it before
    // its own save and load ([`clts`]).
    unsafe { Cr0::update(|f| f.insert(Cr0Flags::TASK_SWITCHED)) };
}

fn fxsave(area: &mut FpuArea) {
    // SAFETY: FXSAVE64 writes 512 bytes to a 16-byte aligned area of at least that size,
    // and CR4.OSFXSR makes it cover the SSE registers; it changes no register.
    unsafe { asm!("fxsave64 [{}]", in(reg) area.bytes_mut().as_mut_ptr(), options(nostack, preserves_flags)) };
}

fn xsetbv(xcr0: u64) {
    // SAFETY: XSETBV of XCR0 with CR4.OSXSAVE set and a value the processor supports (a
    // subset of CPUID leaf 0xD's that `valid_xcr0` accepts); the hypervisor, soft-float,
    // does not depend on which components are enabled.
    unsafe { asm!("xsetbv", in("ecx") 0u32, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32, options(nomem, nostack, preserves_flags)) };
    this_cpu_xcr0().store(xcr0, Ordering::Relaxed);
}

/// XSAVE area bytes for this CPU's XCR0 now (the running guest's, during its trap): CPUID
/// leaf 0xD's own answer. 512 without XSAVE.
pub fn xsave_bytes_for_current() -> u32 {
    if XSAVE.load(Ordering::Relaxed) {
        core::arch::x86_64::__cpuid_count(0xd, 0).ebx
    } else {
        fpu::LEGACY_BYTES as u32
    }
}
