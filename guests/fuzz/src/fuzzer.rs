//! One fuzzing vCPU's state and how it makes a call: the call itself ([`Call`]: number,
//! registers, name, and what must be put back after it), the raw `syscall`, the trace and
//! the count, and the restoring of the fuzzer's own state (trap table, callbacks, GDT,
//! segment bases, kernel stack, event mask) that a fuzzed call may have replaced, plus the
//! bookkeeping of frames gained and lost (`increase_reservation`, `decrease_reservation`).
//!
//! Each vCPU owns one [`Fuzzer`]; the families ([`crate::ops`]) build calls with it. This
//! module must never restore anything by a call that could itself be fuzzed into harm: the
//! restoring calls use the fuzzer's own, fixed values.

use core::arch::asm;

use arrayvec::ArrayVec;
use guest_fuzz::gen::{Access, Gen};
use guest_fuzz::options::{Avoid, Class, Families};
use guest_fuzz::rng::Rng;
use guest_fuzz::world::{Frames, World};
use guest_rt::abi::hypercall::{CallbackType, Hypercall};
use guest_rt::hypercall::{self, hypercall2};
use guest_rt::time::Clock;
use guest_rt::traps;

use crate::guard;

const PAGE_BYTES: u64 = 4096;

/// The checksum of the program's code at the first check (0: not taken yet).
static CODE_SUM: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
use crate::memory::Scratch;
use crate::report;

/// What must be put back after a call.
pub mod after {
    pub const TRAPS: u32 = 1 << 0;
    pub const CALLBACKS: u32 = 1 << 1;
    pub const GDT: u32 = 1 << 2;
    pub const SEGMENTS: u32 = 1 << 3;
    pub const STACK: u32 = 1 << 4;
    pub const MASK: u32 = 1 << 5;
    /// End the console line a write may have left open.
    pub const NEWLINE: u32 = 1 << 6;
    /// Everything (after a batch that ran more than was prepared).
    pub const ALL: u32 = TRAPS | CALLBACKS | GDT | SEGMENTS | STACK | MASK;
}

/// Frames a call moves in or out of the domain, to note once it returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Extents {
    #[default]
    None,
    /// `increase_reservation`/`populate_physmap` into the array at `.0` of `.1` slots.
    Gained(u64, u64),
    /// `decrease_reservation` of the `.1` frames listed at `.0`.
    Lost(u64, u64),
}

/// One hypercall as the fuzzer makes it.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub name: &'static str,
    pub nr: u64,
    pub args: [u64; 5],
    pub after: u32,
    pub extents: Extents,
}

impl Call {
    pub const fn new(name: &'static str, nr: Hypercall, args: [u64; 5]) -> Self {
        Self { name, nr: nr.number(), args, after: 0, extents: Extents::None }
    }

    pub const fn then(mut self, after: u32) -> Self {
        self.after |= after;
        self
    }
}

/// One fuzzing vCPU.
pub struct Fuzzer {
    pub vcpu: usize,
    pub rng: Rng,
    pub world: &'static World<'static>,
    pub frames: Frames,
    pub scratch: Scratch,
    pub avoid: Avoid,
    pub only: Families,
    pub clock: Clock,
    /// Console writes from valid buffers still allowed (each prints a line).
    pub console_budget: u32,
    /// Entries this vCPU linked tables into (machine addresses), to undo.
    pub links: ArrayVec<u64, 32>,
    /// Frames this vCPU pinned, to unpin.
    pub pinned: ArrayVec<u64, 32>,
    /// Whether this vCPU's kernel base is its own L4 (else the boot L4).
    pub on_clone: bool,
    /// `check=1`: the code is checked after every call.
    pub check_code: bool,
}

impl Fuzzer {
    /// A generator over this vCPU's state.
    pub fn gen(&mut self) -> Gen<'_, 'static> {
        Gen { rng: &mut self.rng, world: self.world, frames: &self.frames, avoid: self.avoid }
    }

    /// A pointer for `valid` (`len` bytes), drawn from the classes.
    pub fn ptr(&mut self, valid: u64, len: u64, access: Access) -> u64 {
        self.gen().pointer(valid, len, access)
    }

    /// Makes `call`, counted and traced, then puts back what it may have changed.
    pub fn exec(&mut self, call: &Call) -> i64 {
        let n = report::begin(self.vcpu, call.name);
        if report::traced(n) {
            report::trace(self.vcpu, n, call.name, call.nr, &call.args);
        }
        // SAFETY: the fuzzer's calls are built so that whatever the hypervisor does with
        // them leaves the program's memory, stacks and mappings alone (see
        // `guest_fuzz::gen`); what they may replace (handlers, GDT...) is put back below.
        let ret = unsafe { raw(call.nr, call.args) };
        self.post(call, ret);
        self.check_mapping(call.name);
        ret
    }

    /// Checks that the program's mapping is as it was at start (the boot table entries it
    /// uses, read through their read-only mapping): a call the generators thought harmless
    /// that changed it is reported, with its name, before the change can hit the program in
    /// a way that says nothing.
    pub fn check_mapping(&self, name: &str) {
        let w = self.world;
        if self.check_code {
            let mut sum = 0u64;
            for va in (w.code_va.start..w.code_va.end).step_by(8) {
                // SAFETY: the program's code and read-only data, mapped for its lifetime.
                sum = sum.rotate_left(1) ^ unsafe { (va as *const u64).read_volatile() };
            }
            let expected = CODE_SUM.load(core::sync::atomic::Ordering::Relaxed);
            if expected == 0 {
                CODE_SUM.store(sum, core::sync::atomic::Ordering::Relaxed);
            } else if sum != expected {
                guest_rt::println!("fuzz: SELF-CHECK the program's code changed after {name} {}", report::Last(self.vcpu));
                hypercall::shutdown(guest_rt::abi::hypercall::ShutdownReason::Crash);
            }
        }
        let entry = |table_pfn: u64, index: u64| -> u64 {
            let va = w.tables_va.start + (table_pfn - w.tables_pfn) * PAGE_BYTES + index * 8;
            // SAFETY: the boot tables are mapped read-only at `tables_va` for the domain's
            // life; `table_pfn` is one of them and the index is below 512.
            unsafe { (va as *const u64).read_volatile() }
        };
        let mask = 0x000F_FFFF_FFFF_F003; // address, present, writable
        for (pfn, expected) in (0..w.arena.start).zip(w.p2m.iter()) {
            let l1 = w.tables_pfn + 3 + pfn / 512;
            let found = entry(l1, pfn % 512);
            let hole = w.hole.iter().any(|&h| h == w.virt_base + pfn * PAGE_BYTES);
            let table = (w.tables_pfn..w.tables_pfn + 3 + w.tables.l1s.len() as u64).contains(&pfn);
            let view = (0..2).any(|v| crate::memory::view(v) == w.virt_base + pfn * PAGE_BYTES);
            let shared = guest_rt::shared_info::shared_info().is_some_and(|p| p.as_ptr() as u64 == w.virt_base + pfn * PAGE_BYTES);
            if hole || table || view || shared {
                continue;
            }
            let want = (expected << 12) | 3;
            if found & mask != want {
                guest_rt::println!("fuzz: SELF-CHECK pfn {pfn:#x} now mapped by {found:#x} (was {want:#x}) after {name} {}", report::Last(self.vcpu));
                hypercall::shutdown(guest_rt::abi::hypercall::ShutdownReason::Crash);
            }
        }
    }

    /// Notes what `call` did, and puts back what it changed.
    pub fn post(&mut self, call: &Call, ret: i64) {
        match call.extents {
            Extents::Gained(array, slots) if ret > 0 => self.gained(array, slots.min(ret as u64)),
            Extents::Lost(array, listed) if ret > 0 => self.lost(array, listed.min(ret as u64)),
            _ => {}
        }
        self.restore(call.after);
    }

    /// Notes the frames `increase_reservation` wrote at `array`.
    fn gained(&mut self, array: u64, count: u64) {
        for i in 0..count {
            let Some(mfn) = self.scratch.get::<u64>(array + i * 8) else { break };
            if mfn != 0 && !self.frames.extra.contains(&mfn) && !self.frames.extra.is_full() {
                self.frames.extra.push(mfn);
            }
        }
    }

    /// Forgets the frames `decrease_reservation` took from the list at `array`.
    fn lost(&mut self, array: u64, count: u64) {
        for i in 0..count {
            let Some(mfn) = self.scratch.get::<u64>(array + i * 8) else { break };
            self.forget(mfn);
        }
    }

    /// Forgets `mfn`: it is no longer the domain's.
    pub fn forget(&mut self, mfn: u64) {
        self.frames.extra.retain(|m| *m != mfn);
        for slot in self.frames.slots.iter_mut().filter(|s| s.mfn == mfn) {
            slot.mfn = 0;
            slot.writable = false;
        }
        if self.frames.clone_l4 == Some(mfn) {
            self.frames.clone_l4 = None;
        }
    }

    /// Puts back the fuzzer's own state named by `what` ([`after`]).
    pub fn restore(&mut self, what: u32) {
        // With `avoid=lock` vCPU 1 never takes the MMU lock (`set_gdt` does), and never
        // changes its GDT either.
        let what = if self.vcpu == 1 && self.avoid.has(Class::Lock) { what & !after::GDT } else { what };
        if what & after::TRAPS != 0 {
            // A fuzzed table may have set any of the 256 vectors: clear them all (a null
            // table), then put the runtime's 32 back.
            // SAFETY: an empty trap table, then the runtime's own.
            let _ = unsafe { hypercall2(Hypercall::SetTrapTable, 0, 0) };
            let _ = traps::install();
        }
        if what & after::CALLBACKS != 0 {
            // SAFETY: the fuzzer's own entry points, which handle their frames; no syscall,
            // syscall32, sysenter or NMI callback (the fuzzer never runs guest user code, and
            // its `syscall`/`sysenter` probes expect the exception a CPU raises without one).
            unsafe {
                let _ = hypercall::callback_register(CallbackType::Event, guard::event_entry(), 0);
                let _ = hypercall::callback_register(CallbackType::Failsafe, guard::failsafe_entry(), 0);
                for none in [CallbackType::Syscall, CallbackType::Syscall32, CallbackType::Sysenter, CallbackType::Nmi] {
                    let _ = hypercall::callback_register(none, 0, 0);
                }
            }
        }
        if what & after::GDT != 0 {
            // SAFETY: an empty GDT: the flat selectors of the reserved page stay.
            let _ = unsafe { hypercall2(Hypercall::SetGdt, 0, 0) };
        }
        if what & after::SEGMENTS != 0 {
            for which in 0..3 {
                // SAFETY: the fuzzer's code uses neither FS nor GS.
                let _ = unsafe { hypercall2(Hypercall::SetSegmentBase, which, 0) };
            }
        }
        if what & after::STACK != 0 {
            // SAFETY: no kernel stack for user mode: the fuzzer never runs guest user code.
            let _ = unsafe { hypercall2(Hypercall::StackSwitch, 0xe02b, 0) };
        }
        if what & after::MASK != 0 {
            guard::set_upcall_mask(self.vcpu as u32, true);
        }
        if what & after::NEWLINE != 0 {
            let _ = hypercall::console_write(b"\n");
        }
    }
}

/// Hypercall `nr` with `args` in rdi, rsi, rdx, r10, r8, straight through `syscall`.
///
/// # Safety
/// As `guest_rt::hypercall::hypercall5` for whatever call `nr` is.
pub unsafe fn raw(nr: u64, args: [u64; 5]) -> i64 {
    let ret;
    // SAFETY: a guest-kernel `syscall` is a hypercall; the caller vouches for its effect.
    // syscall clobbers rcx and r11; the argument registers are treated as clobbered (as
    // the hypercall page's stubs do).
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr => ret,
            inlateout("rdi") args[0] => _,
            inlateout("rsi") args[1] => _,
            inlateout("rdx") args[2] => _,
            inlateout("r10") args[3] => _,
            inlateout("r8") args[4] => _,
            lateout("r9") _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}
