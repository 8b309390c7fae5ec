//! Per-CPU state: each CPU's stacks, TSS, GDT and data, reached through the GS base.
//!
//! A CPU's area ([`mm::layout::PerCpuArea`]) is a fixed run of window pages: a guard page,
//! the kernel stack, four IST stacks (double fault, NMI, machine check, debug) each behind a guard
//! page, the data page holding [`PerCpu`], a 16-page GDT range of which only the reserved
//! page (selector 0xe000 up) is backed, read-only once loaded, and a 16-page LDT range
//! (the running vCPU's LDT frames, `pv::ldt`). The boot CPU starts on static early state and moves to its
//! own area like every other CPU once frames can be allocated. Nothing here is shared between
//! CPUs except through the fields documented as such.

use core::cell::OnceCell;
use core::mem::MaybeUninit;

use apic::LocalApic;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use x86_64::structures::tss::TaskStateSegment;

use mm::layout::{IstStack, PerCpuArea};

use super::gdt::{self, ReservedGdtPage};
use super::gs::{self, GsArea};
use super::paging::{self, MapKind};

/// A CPU's logical index (0 is the boot CPU), dense and stable for the whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CpuIndex(pub u32);

impl core::fmt::Display for CpuIndex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The per-CPU data page. `self_ptr` must stay first: `gs:0` reads it.
#[repr(C, align(4096))]
pub struct PerCpu {
    self_ptr: u64,
    pub index: CpuIndex,
    pub apic_id: u32,
    /// Top of this CPU's kernel stack (also TSS.RSP0). `syscall` entry reads it at
    /// [`STACK_TOP_OFFSET`].
    pub stack_top: u64,
    /// Scratch slot for the guest's stack pointer during `syscall` entry
    /// ([`SCRATCH_OFFSET`]).
    scratch: u64,
    /// Temporary-mapping slots in use (bit n = slot n); only this CPU touches it.
    pub temp_slots: AtomicU32,
    tss: TaskStateSegment,
    lapic: OnceCell<LocalApic>,
    /// This CPU's LDT range and reserved GDT page (from its area; 0 on the boot CPU's early
    /// state, which has no LDT), for `super::ldt`.
    pub(super) ldt_start: u64,
    pub(super) gdt_reserved: u64,
    /// Set when a CPU enters the area ([`enter_area`]: once).
    entered: AtomicBool,
}

// SAFETY: the one type GS points at (`activate` installs every CPU's); `repr(C)` with
// `self_ptr`, its own address, first (set by `prepare_area` and `init_boot_cpu_early`).
unsafe impl GsArea for PerCpu {}

// The data page holds `PerCpu` whole (`prepare_area` writes it there, the GDT range follows).
const _: () = assert!(size_of::<PerCpu>() as u64 == mm::layout::PER_CPU_DATA_BYTES);

/// Offsets the assembly entry paths use through GS.
pub const STACK_TOP_OFFSET: usize = core::mem::offset_of!(PerCpu, stack_top);
pub const SCRATCH_OFFSET: usize = core::mem::offset_of!(PerCpu, scratch);

impl PerCpu {
    /// This CPU's local APIC, once enabled.
    pub fn lapic(&self) -> Option<&LocalApic> {
        self.lapic.get()
    }

    /// Keeps this CPU's local APIC handle (the first one set stays).
    pub fn set_lapic(&self, lapic: LocalApic) {
        let _ = self.lapic.set(lapic);
    }
}

/// Early boot-CPU state used until its own area exists (also the panic path before then).
struct EarlyState {
    data: MaybeUninit<PerCpu>,
    gdt: ReservedGdtPage,
    ist: [[u8; 4096]; 4],
}

static mut EARLY: EarlyState = EarlyState {
    data: MaybeUninit::uninit(),
    gdt: ReservedGdtPage::new(),
    ist: [[0; 4096]; 4],
};

/// Sets up the boot CPU on static early state: GDT, TSS with IST stacks, GS.
pub fn init_boot_cpu_early(stack_top: u64) {
    // Runs once on the boot CPU before any other CPU exists and before anything reads
    // EARLY, so the exclusive reference below is unique.
    let early_ptr = &raw mut EARLY;
    // SAFETY: see above.
    let early = unsafe { &mut *early_ptr };
    let ist_top = |i: usize| early.ist[i].as_ptr() as u64 + 4096;
    let tss = gdt::tss(stack_top, [ist_top(0), ist_top(1), ist_top(2), ist_top(3)]);
    let data = early.data.write(PerCpu {
        self_ptr: 0,
        index: CpuIndex(0),
        apic_id: 0,
        stack_top,
        scratch: 0,
        temp_slots: AtomicU32::new(0),
        tss,
        lapic: OnceCell::new(),
        ldt_start: 0,
        gdt_reserved: 0,
        entered: AtomicBool::new(true),
    });
    data.self_ptr = data as *const PerCpu as u64;
    // SAFETY: `data` and `early.gdt` are statics that stay valid for the whole run.
    unsafe { activate(data, &mut early.gdt) };
}

/// Builds the area of CPU `index` (already backed by the caller) and returns its data page
/// (whose `stack_top` the CPU starts on), for that CPU to activate with [`enter_area`].
pub fn prepare_area(area: &PerCpuArea, index: CpuIndex, apic_id: u32) -> &'static PerCpu {
    let stack_top = area.kernel_stack_top();
    let ist = |stack| area.ist_top(stack);
    let data_ptr = area.data.start as *mut PerCpu;
    // SAFETY: the caller backed the data page with fresh memory that nothing else refers to;
    // it is page aligned as PerCpu requires.
    unsafe {
        data_ptr.write(PerCpu {
            self_ptr: data_ptr as u64,
            index,
            apic_id,
            stack_top,
            scratch: 0,
            temp_slots: AtomicU32::new(0),
            lapic: OnceCell::new(),
                tss: gdt::tss(stack_top, [IstStack::DoubleFault, IstStack::Nmi, IstStack::MachineCheck, IstStack::Debug].map(ist)),
            ldt_start: area.ldt.start,
            gdt_reserved: area.gdt_reserved_page(),
            entered: AtomicBool::new(false),
        });
        &*data_ptr
    }
}

/// Where a CPU's prepared data page waits for that CPU (the boot CPU stores it, the CPU
/// itself takes it on its way in): a `&'static PerCpu` that may be shared between CPUs,
/// which `PerCpu` itself may not (its fields are its CPU's).
pub struct Handoff(AtomicPtr<PerCpu>);

impl Handoff {
    pub const fn new() -> Handoff {
        Handoff(AtomicPtr::new(core::ptr::null_mut()))
    }

    /// Stores CPU's data page.
    pub fn set(&self, data: &'static PerCpu) {
        self.0.store(data as *const PerCpu as *mut PerCpu, Ordering::Release);
    }

    /// The stored data page, if any.
    pub fn get(&self) -> Option<&'static PerCpu> {
        let ptr = self.0.load(Ordering::Acquire);
        // SAFETY: only `set` stores here, from a `&'static PerCpu`.
        (!ptr.is_null()).then(|| unsafe { &*ptr })
    }
}

impl Default for Handoff {
    fn default() -> Handoff {
        Handoff::new()
    }
}

/// Loads this CPU's GDT and TSS from its area and points GS at its data page. `data` must
/// have been prepared by [`prepare_area`] from `area`, and this CPU must be the one the
/// area is for: an AP running on the area's kernel stack (where the trampoline started it),
/// or the boot CPU (index 0) still on the boot stack; each area is entered once. Panics
/// otherwise (a bug in the boot sequence).
pub fn enter_area(area: &PerCpuArea, data: &'static PerCpu) {
    let rsp: u64;
    // SAFETY: reads the stack pointer; no memory access, no state changed.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    let prepared = data.self_ptr == area.data.start && data.stack_top == area.kernel_stack_top();
    let kernel_stack = area.kernel_stack.start..area.kernel_stack.start + area.kernel_stack.size;
    let this_cpu = kernel_stack.contains(&rsp) || (data.index.0 == 0 && super::boot::on_boot_stack(rsp));
    assert!(prepared && this_cpu, "cpu {} enters an area not prepared for it", data.index);
    assert!(!data.entered.swap(true, Ordering::AcqRel), "cpu {} enters its area twice", data.index);
    let gdt_page = area.gdt_reserved_page() as *mut ReservedGdtPage;
    // SAFETY: the reserved GDT page is backed, page aligned and owned by this CPU alone:
    // `data` was prepared from `area` (checked) for the CPU running on its stack (or the
    // boot CPU on the boot stack, checked), which enters it once (checked); `data` is
    // `'static`, and the area's pages are never unmapped.
    unsafe { activate(data, &mut *gdt_page) };
    // Built and loaded (`ltr` has set the TSS busy bit): no one writes it again. The
    // window mapping is global, so other CPUs may hold it in their TLBs only as writable
    // until their next full flush; none of them writes it either.
    paging::protect(area.gdt_reserved_page(), MapKind::ReadOnly).expect("the reserved GDT page is mapped");
}

/// # Safety
/// `data` and `gdt` must live for the rest of the run and belong to the calling CPU.
unsafe fn activate(data: &'static PerCpu, gdt: &'static mut ReservedGdtPage) {
    gdt.build(&data.tss);
    // SAFETY: the caller guarantees both tables outlive their use on this CPU.
    unsafe { gdt::load(gdt) };
    gs::install(data);
}

/// This CPU's data.
pub fn current() -> &'static PerCpu {
    gs::current()
}

/// Makes GS point at this CPU's data again on the way to a fatal report
/// ([`gs::adopt_own`]).
pub fn adopt_own_gs() {
    gs::adopt_own();
}

/// The return addresses of the caller's frames (for the heap tracer), walking the
/// frame-pointer chain (the machine's code keeps frame pointers) while it stays within this
/// CPU's kernel stack; the rest of `out` is left as it was. Nothing while the boot CPU has
/// no GS yet, or off the kernel stack.
#[cfg(feature = "heap-trace")]
pub fn return_addresses(out: &mut [u64]) {
    let (mut rbp, rsp): (u64, u64);
    // SAFETY: reads two registers.
    unsafe { core::arch::asm!("mov {}, rbp", "mov {}, rsp", out(reg) rbp, out(reg) rsp, options(nomem, nostack)) };
    let Some(top) = gs::ready().then(|| current().stack_top) else { return };
    if rsp > top || rsp < top - 64 * 1024 {
        return;
    }
    for slot in out.iter_mut() {
        if rbp < rsp || rbp + 16 > top || rbp % 8 != 0 {
            return;
        }
        // SAFETY: rbp lies within this CPU's kernel stack (between the stack pointer and its
        // top, checked), which is mapped; aligned.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        *slot = ret;
        if next <= rbp {
            return;
        }
        rbp = next;
    }
}

/// This CPU's index, or 0 while the boot CPU has no GS yet (early logging and panics).
pub fn current_index_or_boot() -> u32 {
    if gs::ready() {
        current().index.0
    } else {
        0
    }
}
