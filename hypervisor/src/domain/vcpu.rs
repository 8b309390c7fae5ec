//! A virtual CPU: the guest's saved registers while it is not running (its x87/SSE/AVX
//! state, XCR0, debug registers and data segment selectors included), its virtual CR0.TS and CR4, its PV context (guest kernel or user mode, top-level tables, kernel
//! stack, trap table, callbacks, segment bases) and its scheduling record
//! ([`bvt::VcpuSched`]: the scheduler's, carried here; this module needs nothing of `sched`).
//!
//! While a vCPU runs, its live registers are the trap frame on its CPU's stack; the copy in
//! [`GuestContext::regs`] is current only while it is descheduled. Only the CPU running a
//! vCPU changes its context; other CPUs only change [`Vcpu::state`] (to stop or wake it).
//!
//! What a guest registers for a vCPU id may come before the vCPU exists (Linux places every
//! possible vCPU's `vcpu_info` and runstate area at boot, before it initialises them, as
//! Xen, which creates them all at once, allows): that lives in the domain's [`VcpuSlot`]
//! for the id, not in the `Vcpu`.

use alloc::sync::Arc;
use arrayvec::ArrayVec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use abi::arch_x86::TrapInfo;
pub use bvt::RunState;
use bvt::VcpuSched;
use events::poll::PollTarget;
use hypervisor::debugreg::DebugRegs;
use hypervisor::fpu::FpuArea;
use hypervisor::runstate::Runstate;
use mm::addr::Mfn;
use pvmm::BasePtr;
use spin::Mutex;

use super::Domain;
use crate::arch::trap::TrapFrame;

/// vCPUs per domain: the `vcpu_info` slots in shared info.
pub const MAX_VCPUS: u32 = abi::control::MAX_VCPUS;

/// Heap room a new secondary vCPU must find: itself, its FPU area (at its largest, with
/// the alignment slack), a full trap table (256 entries), its share of its CPU's run and
/// timer queues, with room to spare.
pub const VCPU_HEAP_BYTES: u64 = (core::mem::size_of::<Vcpu>()
    + hypervisor::fpu::MAX_AREA_BYTES
    + hypervisor::fpu::AREA_ALIGN
    + 256 * core::mem::size_of::<TrapInfo>()
    + 2048) as u64;

/// `Vcpu::poll` when not polling, and when polling for any port: outside the range of port
/// numbers (any `u32`), so that no port a guest names can be taken for either.
const NOT_POLLING: u64 = u64::MAX;
const ANY_PORT: u64 = u64::MAX - 1;
/// `Vcpu::running_on` while the vCPU runs nowhere.
const NOWHERE: u32 = u32::MAX;

/// What a guest registered for one vCPU id of its domain, whether or not that vCPU exists
/// yet: where its `vcpu_info` lives (`VCPUOP_register_vcpu_info`: once, for good), where
/// its runstate copy goes (`VCPUOP_register_runstate_memory_area`) and its periodic timer's
/// period. Read lock-free by every path that touches the vCPU's `vcpu_info`.
pub struct VcpuSlot {
    /// A [`hypervisor::runstate::VcpuInfoPlace`], encoded; 0: its slot in shared info.
    pub vcpu_info: AtomicU64,
    /// Guest virtual address of its runstate area; 0: none.
    pub runstate_area: AtomicU64,
    /// Its periodic timer's period in ns (`VCPUOP_set_periodic_timer`); 0: stopped.
    pub periodic_ns: AtomicU64,
}

/// The period of the periodic timer every vCPU starts with, as Xen gives PV vCPUs.
pub const DEFAULT_PERIOD_NS: u64 = 10_000_000;

impl VcpuSlot {
    pub const fn new() -> VcpuSlot {
        VcpuSlot { vcpu_info: AtomicU64::new(0), runstate_area: AtomicU64::new(0), periodic_ns: AtomicU64::new(DEFAULT_PERIOD_NS) }
    }
}

impl Default for VcpuSlot {
    fn default() -> Self {
        VcpuSlot::new()
    }
}

/// A vCPU's GDT frames (`set_gdt`, `pv::descriptors`), each holding a descriptor-page
/// reference. Every descriptor in them is checked, so the entry count only decides how many
/// frames there are.
#[derive(Default)]
pub struct GuestGdt {
    pub frames: ArrayVec<Mfn, { crate::arch::gdt::GUEST_GDT_MAX_FRAMES }>,
}

/// A vCPU's LDT (`MMUEXT_SET_LDT`, `pv::ldt`): where the guest put it, how many entries it
/// has, and its frames (each holding a descriptor-page reference).
#[derive(Default)]
pub struct GuestLdt {
    pub base: u64,
    pub entries: u32,
    pub frames: ArrayVec<Mfn, { crate::arch::gdt::LDT_MAX_FRAMES }>,
}

/// The guest-visible machine state of a vCPU.
pub struct GuestContext {
    /// Registers while descheduled.
    pub regs: TrapFrame,
    /// Guest kernel mode (true) or guest user mode.
    pub in_kernel: bool,
    /// Top-level page table of guest kernel mode (holds a type reference as an L4).
    pub kernel_base: Option<BasePtr>,
    /// Top-level page table of guest user mode, if any (also an L4 reference).
    pub user_base: Option<BasePtr>,
    /// The guest kernel stack for bounces from user mode (`stack_switch`).
    pub kernel_ss: u64,
    pub kernel_sp: u64,
    /// Registered trap handlers, sorted by vector (only the vectors the guest set).
    pub traps: Vec<TrapInfo>,
    pub event_callback: u64,
    pub failsafe_callback: u64,
    /// Mask events when entering the failsafe callback.
    pub failsafe_masks_events: bool,
    pub syscall_callback: u64,
    /// Mask events when entering the syscall callback.
    pub syscall_masks_events: bool,
    /// `syscall` from 32-bit guest code, and `sysenter`: callbacks and their event masking.
    pub syscall32_callback: u64,
    pub syscall32_masks_events: bool,
    pub sysenter_callback: u64,
    pub sysenter_masks_events: bool,
    /// The NMI callback (registered and kept; no NMI is ever delivered to a guest yet).
    pub nmi_callback: u64,
    /// ds, es, fs, gs while descheduled (loaded again on switch-in), and the ones that
    /// failed to load then, for the failsafe callback on its way back to the guest.
    pub selectors: [u16; 4],
    pub bad_selectors: Option<[u16; 4]>,
    /// The virtual I/O privilege level, 0-3 (`pv::physdev`; the real IOPL is always 0).
    pub iopl: u8,
    /// The I/O-port bitmap (`PHYSDEVOP_set_iobitmap`): its guest kernel address and the
    /// ports it covers (0: none).
    pub iobitmap: u64,
    pub iobitmap_ports: u32,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
    /// Set while the hypervisor writes an exception frame for this vCPU: a fault then is a
    /// fault while delivering a fault, and kills the domain.
    pub delivering: bool,
    /// x87/MMX/SSE/AVX registers while descheduled (see `arch::fpu`), in a heap area of
    /// the machine's size.
    pub fpu: FpuArea,
    /// The CPU whose registers were last saved into `fpu` (`u32::MAX`: none yet); the
    /// scheduler skips the load when the vCPU comes back to a CPU that ran no other since.
    pub fpu_saved_on: u32,
    /// The guest's XCR0 (`xsetbv`), loaded while it runs.
    pub xcr0: u64,
    /// The guest's virtual CR0.TS (`fpu_taskswitch`, `clts`, `mov %cr0`): while set, the
    /// hardware's is too, and the guest's next FPU instruction raises its #NM.
    pub cr0_ts: bool,
    /// The CR4 bits the guest controls (DE, OSXSAVE; see `pv::fpu`).
    pub cr4_guest: u64,
    /// Debug registers (see `pv::debugreg`), loaded while it runs only when DR7 enables a
    /// breakpoint.
    pub debug: DebugRegs,
}

impl GuestContext {
    /// The handler registered for `vector`.
    pub fn trap(&self, vector: u8) -> Option<&TrapInfo> {
        self.traps.binary_search_by_key(&vector, |t| t.vector).ok().map(|i| &self.traps[i])
    }

    /// Sets (address != 0) or clears the handler of one vector. The table grows in the heap
    /// (to at most 256 entries), so a new vector is refused with `ENOMEM` when the heap has
    /// no room left for guests.
    pub fn set_trap(&mut self, info: TrapInfo) -> Result<(), abi::errno::Errno> {
        match self.traps.binary_search_by_key(&info.vector, |t| t.vector) {
            Ok(i) if info.address == 0 => {
                self.traps.remove(i);
            }
            Ok(i) => self.traps[i] = info,
            Err(_) if info.address == 0 => {}
            Err(i) => {
                if self.traps.len() == self.traps.capacity() {
                    let grown = (self.traps.capacity() * 2).clamp(8, 256);
                    let bytes = (grown * core::mem::size_of::<TrapInfo>()) as u64;
                    if !crate::memory::heap_has_room_for(bytes) {
                        return Err(abi::errno::Errno::Enomem);
                    }
                    self.traps.try_reserve_exact(grown - self.traps.len()).map_err(|_| abi::errno::Errno::Enomem)?;
                }
                self.traps.insert(i, info);
            }
        }
        Ok(())
    }

    pub fn kernel_l4(&self) -> Option<Mfn> {
        self.kernel_base.as_ref().map(BasePtr::mfn)
    }

    pub fn user_l4(&self) -> Option<Mfn> {
        self.user_base.as_ref().map(BasePtr::mfn)
    }

    /// The top-level table of the current guest mode.
    pub fn active_l4(&self) -> Option<Mfn> {
        if self.in_kernel { self.kernel_l4() } else { self.user_l4().or(self.kernel_l4()) }
    }
}

/// vCPU records in the heap (created, not yet dropped): see `DOMAIN_RECORDS`.
pub static VCPU_RECORDS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

impl Drop for Vcpu {
    fn drop(&mut self) {
        VCPU_RECORDS.fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// One virtual CPU of a domain.
pub struct Vcpu {
    pub domain: Arc<Domain>,
    pub id: u32,
    pub ctx: Mutex<GuestContext>,
    /// The guest's own GDT frames.
    pub gdt: Mutex<GuestGdt>,
    /// Its LDT (`MMUEXT_SET_LDT`).
    pub ldt: Mutex<GuestLdt>,
    /// Its scheduling record: run state, home CPU, timers (the scheduler's; see `sched`).
    pub sched: VcpuSched,
    /// Blocked in a `console_io` write that waits for room in the console buffer
    /// (`pv::console::wait_for_room`).
    pub console_wait: AtomicBool,
    /// What it polls for while blocked in `sched_op poll` (see [`Vcpu::begin_poll`]).
    poll: AtomicU64,
    /// The CPU it runs on, set (by that CPU) before its tables are loaded there and cleared
    /// when it is switched out: the CPU a flush of its TLB or an event for it must reach.
    running_on: AtomicU32,
    /// Its runstate accounting (a leaf lock: changed by its CPU and by whoever wakes it).
    pub runstate: Mutex<Runstate>,
    /// Its registered runstate area missed an update (the vCPU was in guest user mode,
    /// where the area need not be mapped): written when it next enters kernel mode.
    pub runstate_stale: AtomicBool,
}

impl Vcpu {
    pub fn new(domain: Arc<Domain>, id: u32, regs: TrapFrame, kernel_base: BasePtr, cpu: u32) -> Arc<Vcpu> {
        VCPU_RECORDS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        Arc::new(Vcpu {
            domain,
            id,
            ctx: Mutex::new(GuestContext {
                regs,
                in_kernel: true,
                kernel_base: Some(kernel_base),
                user_base: None,
                kernel_ss: 0,
                kernel_sp: 0,
                traps: Vec::new(),
                event_callback: 0,
                failsafe_callback: 0,
                failsafe_masks_events: false,
                syscall_callback: 0,
                syscall_masks_events: false,
                syscall32_callback: 0,
                syscall32_masks_events: false,
                sysenter_callback: 0,
                sysenter_masks_events: false,
                nmi_callback: 0,
                selectors: [0; 4],
                bad_selectors: None,
                iopl: 0,
                iobitmap: 0,
                iobitmap_ports: 0,
                fs_base: 0,
                gs_base_kernel: 0,
                gs_base_user: 0,
                delivering: false,
                // The callers checked heap room for it (`VCPU_HEAP_BYTES`, or the room a
                // new domain needs).
                fpu: FpuArea::try_new(crate::arch::fpu::area_bytes()).expect("heap room checked for the FPU area"),
                fpu_saved_on: u32::MAX,
                xcr0: hypervisor::fpu::XSTATE_FP_SSE,
                cr0_ts: false,
                cr4_guest: 0,
                debug: DebugRegs::default(),
            }),
            gdt: Mutex::new(Default::default()),
            ldt: Mutex::new(Default::default()),
            sched: VcpuSched::new(cpu, crate::time::since_boot_ns()),
            console_wait: AtomicBool::new(false),
            poll: AtomicU64::new(NOT_POLLING),
            running_on: AtomicU32::new(NOWHERE),
            runstate: Mutex::new(Runstate::new(abi::vcpu::Runstate::Runnable, crate::time::since_boot_ns())),
            runstate_stale: AtomicBool::new(false),
        })
    }

    /// Its run state (see [`bvt::VcpuSched`]).
    pub fn state(&self) -> RunState {
        self.sched.state()
    }

    /// Blocks a runnable vCPU (it leaves its CPU at its next exit).
    pub fn set_blocked(&self) {
        self.sched.set_blocked();
    }

    /// Unblocks a blocked vCPU; true if it was blocked (the caller then queues it).
    pub fn unblock(&self) -> bool {
        self.sched.unblock()
    }

    /// Marks a freshly initialised secondary vCPU as down.
    pub fn set_down(&self) {
        self.sched.set_down();
        self.set_runstate(abi::vcpu::Runstate::Offline);
    }

    /// Takes an up vCPU down (`VCPUOP_down`): it leaves its CPU at its next decision and
    /// runs no more until brought up. False if it was not up (down already, or stopped).
    pub fn take_down(&self) -> bool {
        self.sched.take_down()
    }

    /// Moves its runstate to `to` now, unless it is running (its CPU changes that as it
    /// switches it out).
    pub fn set_runstate(&self, to: abi::vcpu::Runstate) {
        let mut runstate = self.runstate.lock();
        if runstate.state() != abi::vcpu::Runstate::Running {
            runstate.change(to, crate::time::since_boot_ns());
        }
    }

    /// Brings a down vCPU up; false if it was not down.
    pub fn start(&self) -> bool {
        self.sched.start()
    }

    /// Starts polling for `target` (`sched_op poll`); published before the ports are
    /// checked, so that an event marked pending after the check finds the poller.
    pub fn begin_poll(&self, target: PollTarget) {
        let raw = match target {
            PollTarget::AnyPort => ANY_PORT,
            PollTarget::Port(port) => u64::from(port.0),
        };
        if self.poll.swap(raw, Ordering::SeqCst) == NOT_POLLING {
            self.domain.pollers.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What the vCPU polls for, if it does.
    pub fn poll_target(&self) -> Option<PollTarget> {
        match self.poll.load(Ordering::SeqCst) {
            NOT_POLLING => None,
            ANY_PORT => Some(PollTarget::AnyPort),
            port => Some(PollTarget::Port(abi::ids::EvtchnPort(port as u32))),
        }
    }

    /// The CPU this vCPU runs on now, if any.
    pub fn running_on(&self) -> Option<crate::arch::percpu::CpuIndex> {
        match self.running_on.load(Ordering::SeqCst) {
            NOWHERE => None,
            cpu => Some(crate::arch::percpu::CpuIndex(cpu)),
        }
    }

    /// Records that this CPU runs the vCPU from now on (before its tables are loaded), or
    /// (`None`) that it has been switched out.
    pub fn set_running_on(&self, cpu: Option<crate::arch::percpu::CpuIndex>) {
        self.running_on.store(cpu.map_or(NOWHERE, |c| c.0), Ordering::SeqCst);
    }

    /// Ends a poll; true for the one caller that ended it (and should wake the vCPU).
    pub fn end_poll(&self) -> bool {
        let ended = self.poll.swap(NOT_POLLING, Ordering::SeqCst) != NOT_POLLING;
        if ended {
            self.domain.pollers.fetch_sub(1, Ordering::SeqCst);
        }
        ended
    }

    /// Takes the top-level table references this vCPU holds (released at destruction).
    pub fn take_bases(&self) -> Vec<BasePtr> {
        let mut ctx = self.ctx.lock();
        ctx.kernel_base.take().into_iter().chain(ctx.user_base.take()).collect()
    }
}
