//! The families of calls ([`guest_fuzz::options::Family`]): each builds hypercalls from the
//! generators, lays their buffers out in the vCPU's scratch and makes them, alone or as
//! entries of a multicall. A few are procedures of several calls: building a page table
//! in an arena frame and pinning and linking it, switching to and from a copy of the boot
//! L4, giving back and taking in frames, blocking with a timer armed, parking a vCPU.
//!
//! [`Fuzzer::round`] is one step of a vCPU's loop: it draws a family by weight (only those
//! `only=` allows, none `avoid=` rules out) and runs it. This module must never build a
//! call that could change the program's memory or mappings: every pointer it passes for
//! writing, every entry and every target comes from the generators.

use guest_fuzz::gen::Access;
use guest_fuzz::options::{Class, Family};
use guest_fuzz::world::PAGE;
use guest_rt::abi::arch_x86::{TrapInfo, VcpuGuestContext, FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, VGCF_IN_KERNEL};
use guest_rt::abi::callback::CallbackRegister;
use guest_rt::abi::hypercall::{EvtchnOp, Hypercall, MemoryOp, MmuextCmd, MulticallEntry, SchedOp, Virq};
use guest_rt::abi::ids::{DomId, VcpuId};
use guest_rt::abi::memory::XenMemoryReservation;
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp, UVMF_ALL, UVMF_INVLPG, UVMF_TLB_FLUSH};
use guest_rt::abi::sched::SchedPoll;
use guest_rt::evtchn;
use guest_rt::hypercall::HypercallError;
use guest_rt::abi::errno::Errno;
use guest_rt::layout::kernel_rw_pte;

use crate::fuzzer::{after, Call, Extents, Fuzzer};
use crate::{guard, memory, probes, report, special};

/// `DOMID_SELF` as a register value.
const SELF: u64 = DomId::SELF.0 as u64;
/// The families by weight, in [`Family::ALL`]'s order.
const WEIGHTS: [u32; 12] = [
    22, // mmu
    8,  // memory
    12, // events
    6,  // sched
    7,  // info
    6,  // traps
    6,  // segments
    4,  // vcpu
    8,  // multicall
    5,  // raw
    12, // instructions
    3,  // iret
];
/// One round in this many makes a call meant to end the domain (unless avoided).
const FATAL_ONE_IN: u64 = 30_000;
/// The most entries a (short) multicall gets.
const MULTICALL_MAX: u64 = 8;

impl Fuzzer {
    /// One step of the loop: a family drawn by weight, run.
    pub fn round(&mut self) {
        self.scratch.reset();
        let lock_free = self.vcpu == 1 && self.avoid.has(Class::Lock);
        if !self.avoid.has(Class::Fatal) && !lock_free && self.rng.below(FATAL_ONE_IN) == 0 {
            special::fatal(self, None);
        }
        let mut weights = WEIGHTS;
        for (family, weight) in Family::ALL.iter().zip(weights.iter_mut()) {
            let locks_mmu = matches!(family, Family::Mmu | Family::Memory | Family::Segments | Family::Vcpu | Family::Multicall);
            if !self.only.has(*family) || (self.vcpu == 1 && self.avoid.has(Class::Lock) && locks_mmu) {
                *weight = 0;
            }
        }
        if weights.iter().all(|&w| w == 0) {
            weights[Family::Instructions as usize] = 1;
        }
        let family = Family::ALL[self.rng.weighted(&weights)];
        match family {
            Family::Mmu => self.mmu_round(),
            Family::Memory => self.memory_round(),
            Family::Sched => self.sched_round(),
            Family::Vcpu => self.vcpu_round(),
            Family::Multicall => self.multicall(),
            Family::Instructions => {
                let scratch = self.scratch.alloc(64).unwrap_or(memory::scratch(self.vcpu));
                let lock_free = self.vcpu == 1 && self.avoid.has(Class::Lock);
                let mut gen = self.gen();
                probes::run(gen.frames.vcpu, &mut gen, scratch, lock_free);
            }
            Family::Iret => special::iret(self),
            _ => {
                if let Some(call) = self.plain(family) {
                    self.exec(&call);
                }
            }
        }
    }

    /// A call of `family` that can run alone or in a multicall.
    pub fn plain(&mut self, family: Family) -> Option<Call> {
        match family {
            Family::Mmu => match self.rng.below(3) {
                0 => self.mmu_update(),
                1 => self.mmuext_op(),
                _ => self.update_va_mapping(),
            },
            Family::Memory => self.memory_op(),
            Family::Events => self.event_op(),
            Family::Sched => self.sched_plain(),
            Family::Info => self.info_op(),
            Family::Traps => self.traps_op(),
            Family::Segments => self.segments_op(),
            Family::Vcpu => self.vcpu_plain(),
            Family::Raw => self.raw_op(),
            Family::Multicall | Family::Instructions | Family::Iret => None,
        }
    }

    // ---- mmu ----------------------------------------------------------------------------

    fn mmu_round(&mut self) {
        match self.rng.below(20) {
            0..=1 => special::build_table(self),
            2 => special::clone_dance(self),
            3 if self.rng.chance(200) => special::cleanup(self),
            _ => {
                if let Some(call) = self.plain(Family::Mmu) {
                    self.exec(&call);
                }
            }
        }
    }

    /// A domain id argument: ourselves mostly.
    fn domid(&mut self) -> u64 {
        match self.rng.below(10) {
            0 => 0,
            1 => self.rng.bits(16),
            2 => self.rng.next_u64(),
            _ => SELF,
        }
    }

    fn mmu_update(&mut self) -> Option<Call> {
        let n = self.rng.between(1, 8);
        let mut requests = [MmuUpdate::default(); 8];
        for request in &mut requests[..n as usize] {
            let mut gen = self.gen();
            let ptr = gen.mmu_target();
            *request = MmuUpdate { ptr, val: gen.pte_for(ptr) };
        }
        let at = self.scratch.put_slice(&requests[..n as usize])?;
        if report::traced(report::CALLS.load(core::sync::atomic::Ordering::Relaxed)) {
            for (i, request) in requests[..n as usize].iter().enumerate() {
                report::trace(self.vcpu, i as u64, "mmu_update_request", 1, &[request.ptr, request.val]);
            }
        }
        let count = self.gen().count(n);
        self.pad(at + n * 16, count.saturating_sub(n) * 16);
        let done = self.scratch.alloc(8)?;
        let done = if self.rng.chance(100) { 0 } else { self.ptr(done, 4, Access::Write) };
        let requests = self.ptr(at, n * 16, Access::Read);
        let domid = self.domid();
        Some(Call::new("mmu_update", Hypercall::MmuUpdate, [requests, count, done, domid, 0]))
    }

    /// Zeroes up to `len` bytes at `at` (the rest of the scratch at most), so that a count
    /// larger than the prepared array reads zeroes (refused entries), not old buffers.
    fn pad(&mut self, at: u64, len: u64) {
        let room = self.scratch.end().saturating_sub(at);
        self.scratch.fill(at, len.min(room), 0);
    }

    fn mmuext_op(&mut self) -> Option<Call> {
        let n = self.rng.between(1, 6);
        let mut ops = [MmuextOp::default(); 6];
        for op in &mut ops[..n as usize] {
            *op = self.one_mmuext()?;
        }
        let at = self.scratch.put_slice(&ops[..n as usize])?;
        if report::traced(report::CALLS.load(core::sync::atomic::Ordering::Relaxed)) {
            for (i, op) in ops[..n as usize].iter().enumerate() {
                report::trace(self.vcpu, i as u64, "mmuext_op_entry", u64::from(op.cmd), &[op.arg1, op.arg2]);
            }
        }
        let count = self.gen().count(n);
        self.pad(at + n * 24, count.saturating_sub(n) * 24);
        let done = self.scratch.alloc(8)?;
        let done = self.ptr(done, 4, Access::Write);
        let ops = self.ptr(at, n * 24, Access::Read);
        let domid = self.domid();
        Some(Call::new("mmuext_op", Hypercall::MmuextOp, [ops, count, done, domid, 0]))
    }

    fn one_mmuext(&mut self) -> Option<MmuextOp> {
        let frame = self.gen().table_frame();
        let r = &mut self.rng;
        let (cmd, arg1, arg2) = match r.weighted(&[25, 12, 4, 4, 5, 5, 6, 6, 5, 5, 8]) {
            0 => (r.below(4) as u32, frame, 0),
            1 => (MmuextCmd::UnpinTable.raw(), frame, 0),
            // A new base pointer here is the boot L4 (a reload); switching to another L4 is
            // the clone procedure's, and to garbage a fatal call's.
            2 => (MmuextCmd::NewBaseptr.raw(), self.world.tables.l4, 0),
            3 => {
                let user = if self.avoid.has(Class::Slot511) { self.frames.clone_l4.unwrap_or(self.world.tables.l4) } else { frame };
                (MmuextCmd::NewUserBaseptr.raw(), user, 0)
            }
            4 => (MmuextCmd::TlbFlushLocal.raw(), 0, 0),
            5 => (MmuextCmd::InvlpgLocal.raw(), self.gen().mapping_va(), 0),
            6 | 7 => {
                let mask = self.scratch.put(self.rng.bits(3))?;
                let mask = self.ptr(mask, 8, Access::Read);
                let cmd = if self.rng.chance(500) { MmuextCmd::TlbFlushMulti } else { MmuextCmd::InvlpgMulti };
                (cmd.raw(), self.gen().mapping_va(), mask)
            }
            8 => (MmuextCmd::TlbFlushAll.raw(), 0, 0),
            9 => (MmuextCmd::InvlpgAll.raw(), self.gen().mapping_va(), 0),
            _ => {
                let any = r.bits(32) as u32;
                let cmd = r.pick(&[12, 13, 16, 17, 18, 19, 20, 14, 21, 0xFFFF, any]);
                (cmd, frame, self.rng.next_u64())
            }
        };
        Some(MmuextOp { cmd, _pad: 0, arg1, arg2 })
    }

    fn update_va_mapping(&mut self) -> Option<Call> {
        let (va, entry) = {
            let mut gen = self.gen();
            (gen.mapping_va(), gen.leaf_pte())
        };
        let flags = if self.avoid.has(Class::Tlb) {
            self.rng.pick(&[UVMF_INVLPG | UVMF_ALL, UVMF_TLB_FLUSH | UVMF_ALL])
        } else {
            let kind = self.rng.bits(2);
            match self.rng.below(3) {
                0 => kind | UVMF_ALL,
                1 => kind,
                _ => {
                    let mask = self.scratch.put(self.rng.bits(3))?;
                    (self.ptr(mask, 8, Access::Read) & !7) | kind
                }
            }
        };
        Some(Call::new("update_va_mapping", Hypercall::UpdateVaMapping, [va, entry, flags, 0, 0]))
    }

    // ---- memory -------------------------------------------------------------------------

    fn memory_round(&mut self) {
        if self.rng.chance(150) {
            special::refill(self);
        } else if let Some(call) = self.memory_op() {
            self.exec(&call);
        }
    }

    fn memory_op(&mut self) -> Option<Call> {
        let start_extent = if self.rng.chance(30) { self.rng.bits(10) << 6 } else { 0 };
        match self.rng.below(10) {
            0..=2 => {
                let n = self.rng.between(1, 4);
                let array = self.scratch.alloc(n * 8)?;
                self.scratch.fill(array, n * 8, 0);
                let request = XenMemoryReservation {
                    extent_start: self.ptr(array, n * 8, Access::Write),
                    nr_extents: self.gen().count(n),
                    extent_order: if self.rng.chance(850) { 0 } else { self.rng.pick(&[1, 9, 18, 31, u32::MAX]) },
                    mem_flags: if self.rng.chance(900) { 0 } else { self.rng.bits(32) as u32 },
                    domid: DomId(if self.rng.chance(900) { DomId::SELF.0 } else { self.rng.bits(16) as u16 }),
                    _pad: [0; 3],
                };
                let arg = self.scratch.put(request)?;
                let arg = self.ptr(arg, 40, Access::Read);
                let cmd = if self.rng.chance(500) { MemoryOp::IncreaseReservation } else { MemoryOp::PopulatePhysmap };
                let mut call = Call::new("memory_op_increase", Hypercall::MemoryOp, [u64::from(cmd.raw()) | start_extent, arg, 0, 0, 0]);
                if start_extent == 0 && request.extent_start == array {
                    call.extents = Extents::Gained(array, n.max((self.scratch.end() - array) / 8).min(64));
                }
                Some(call)
            }
            3..=5 => {
                let n = self.rng.between(1, 4);
                let mut list = [0u64; 4];
                for mfn in &mut list[..n as usize] {
                    let f = &self.frames;
                    *mfn = match self.rng.below(10) {
                        0..=5 if !f.extra.is_empty() => self.rng.pick(&f.extra),
                        6 | 7 if !f.slots.is_empty() => f.slots[self.rng.below(f.slots.len() as u64) as usize].mfn,
                        _ => self.gen().table_frame(),
                    };
                }
                let array = self.scratch.put_slice(&list[..n as usize])?;
                let count = self.gen().count(n);
                self.pad(array + n * 8, count.saturating_sub(n) * 8);
                let request = XenMemoryReservation {
                    extent_start: self.ptr(array, n * 8, Access::Read),
                    nr_extents: count,
                    extent_order: if self.rng.chance(900) { 0 } else { self.rng.bits(32) as u32 },
                    mem_flags: 0,
                    domid: DomId(if self.rng.chance(900) { DomId::SELF.0 } else { self.rng.bits(16) as u16 }),
                    _pad: [0; 3],
                };
                let arg = self.scratch.put(request)?;
                let arg = self.ptr(arg, 40, Access::Read);
                let cmd = u64::from(MemoryOp::DecreaseReservation.raw()) | start_extent;
                let mut call = Call::new("memory_op_decrease", Hypercall::MemoryOp, [cmd, arg, 0, 0, 0]);
                if start_extent == 0 && request.extent_start == array {
                    call.extents = Extents::Lost(array, n);
                }
                Some(call)
            }
            6 | 7 => {
                let cmd = self.rng.pick(&[MemoryOp::CurrentReservation, MemoryOp::MaximumReservation, MemoryOp::MaximumGpfn]);
                let id: u16 = if self.rng.chance(800) { DomId::SELF.0 } else { self.rng.bits(16) as u16 };
                let arg = self.scratch.put(id)?;
                let arg = self.ptr(arg, 2, Access::Read);
                Some(Call::new("memory_op_query", Hypercall::MemoryOp, [u64::from(cmd.raw()), arg, 0, 0, 0]))
            }
            _ => {
                // Every other sub-op, with a buffer of random bytes (written, maybe).
                let buffer = self.scratch.alloc(256)?;
                for i in 0..32 {
                    let value = self.gen().pointer(buffer, 64, Access::Write);
                    let word = if self.rng.chance(500) { value } else { self.rng.bits(16) };
                    let _ = self.scratch_write(buffer + i * 8, word);
                }
                let arg = self.ptr(buffer, 256, Access::Write);
                let cmd = self.rng.pick(&[2, 5, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 20, 24, 25, 30, 63]) | start_extent;
                Some(Call::new("memory_op_other", Hypercall::MemoryOp, [cmd, arg, 0, 0, 0]))
            }
        }
    }

    /// Writes one word of this vCPU's scratch.
    fn scratch_write(&mut self, at: u64, value: u64) -> Option<()> {
        self.scratch.get::<u64>(at)?;
        // SAFETY: `get` just checked that the 8 bytes lie inside this vCPU's scratch.
        unsafe { (at as *mut u64).write_unaligned(value) };
        Some(())
    }

    // ---- events -------------------------------------------------------------------------

    /// A port number worth trying.
    fn port(&mut self) -> u32 {
        let r = &mut self.rng;
        match r.below(10) {
            0..=6 => r.below(64) as u32,
            7 => r.pick(&[1023, 1024, 4095, 4096, 0x7FFF_FFFF]),
            8 if !self.avoid.has(Class::Poll) => u32::MAX,
            _ => r.bits(12) as u32,
        }
    }

    fn other_domain(&mut self) -> u16 {
        let r = &mut self.rng;
        match r.below(6) {
            0 => 0,
            1 => r.between(1, 8) as u16,
            2 => r.pick(&[0x7FF1, 0x7FF2, 0x7FF4, 0x7FFF, 0xFFFF]),
            3 => r.bits(16) as u16,
            _ => DomId::SELF.0,
        }
    }

    fn event_op(&mut self) -> Option<Call> {
        if self.rng.chance(150) {
            let now = self.clock.now_ns();
            let deadline = match self.rng.below(6) {
                0 => 0,
                1 => 1,
                2 => now.saturating_sub(self.rng.below(1 << 30)),
                3 => now + self.rng.below(2_000_000),
                4 => u64::MAX - self.rng.below(4),
                _ => now + self.rng.bits(40),
            };
            return Some(Call::new("set_timer_op", Hypercall::SetTimerOp, [deadline, 0, 0, 0, 0]));
        }
        let mut words = [0u32; 6];
        let cmd = match self.rng.below(14) {
            0 | 1 => {
                words[0] = u32::from(if self.rng.chance(900) { DomId::SELF.0 } else { self.other_domain() })
                    | u32::from(self.other_domain()) << 16;
                EvtchnOp::AllocUnbound.raw()
            }
            2 => {
                words[0] = u32::from(self.other_domain());
                words[1] = self.port();
                EvtchnOp::BindInterdomain.raw()
            }
            3 => {
                words[0] = if self.rng.chance(800) { self.rng.below(24) as u32 } else { self.rng.bits(32) as u32 };
                words[1] = self.vcpu_id();
                EvtchnOp::BindVirq.raw()
            }
            4 => {
                words[0] = self.vcpu_id();
                EvtchnOp::BindIpi.raw()
            }
            5 | 6 => {
                words[0] = self.port();
                EvtchnOp::Send.raw()
            }
            7 => {
                words[0] = self.port();
                EvtchnOp::Close.raw()
            }
            8 => {
                words[0] = self.port();
                EvtchnOp::Unmask.raw()
            }
            9 | 10 => {
                words[0] = u32::from(if self.rng.chance(800) { DomId::SELF.0 } else { self.other_domain() });
                words[1] = self.port();
                EvtchnOp::Status.raw()
            }
            11 => {
                words[0] = self.port();
                words[1] = self.vcpu_id();
                EvtchnOp::BindVcpu.raw()
            }
            _ => {
                for word in &mut words {
                    *word = self.rng.bits(32) as u32;
                }
                self.rng.pick(&[2, 10, 11, 12, 13, 14, 31, 0xFFFF])
            }
        };
        let arg = self.scratch.put(words)?;
        let arg = self.ptr(arg, 24, Access::Write);
        Some(Call::new("event_channel_op", Hypercall::EventChannelOp, [u64::from(cmd), arg, 0, 0, 0]))
    }

    /// A vCPU id worth trying.
    fn vcpu_id(&mut self) -> u32 {
        let r = &mut self.rng;
        match r.below(10) {
            0..=6 => r.below(2) as u32,
            7 => r.between(2, 32) as u32,
            8 => u32::MAX,
            _ => r.bits(32) as u32,
        }
    }

    // ---- sched --------------------------------------------------------------------------

    fn sched_round(&mut self) {
        if self.rng.chance(350) {
            special::block(self);
        } else if let Some(call) = self.sched_plain() {
            self.exec(&call);
        }
    }

    fn sched_plain(&mut self) -> Option<Call> {
        let (name, cmd, arg) = match self.rng.below(8) {
            0..=2 => ("sched_yield", SchedOp::Yield.raw(), self.rng.next_u64()),
            3 | 4 => {
                let n = if self.rng.chance(900) { self.rng.between(0, 8) } else { self.rng.pick(&[128, 129, 4096, 1 << 31]) };
                let mut ports = [0u32; 8];
                for port in &mut ports {
                    *port = self.port();
                }
                let list = self.scratch.put(ports)?;
                let list = self.ptr(list, n.min(8) * 4, Access::Read);
                let timeout = self.clock.now_ns() + self.rng.between(20_000, 1_000_000);
                let poll = SchedPoll { ports: list, nr_ports: n as u32, _pad: 0, timeout };
                let arg = self.scratch.put(poll)?;
                // The timeout is what ends the poll: the request is ours or unreadable,
                // never bytes of something else that could say "no timeout".
                let arg = if self.rng.chance(900) { arg } else { self.gen().unreadable() };
                ("sched_poll", SchedOp::Poll.raw(), arg)
            }
            // Shutdown with a reason the hypervisor cannot read: refused.
            5 => ("sched_shutdown_unreadable", SchedOp::Shutdown.raw(), self.gen().unreadable()),
            6 => {
                // Shutting down another domain (never ourselves).
                let mut target = self.other_domain();
                if target == DomId::SELF.0 {
                    target = 0;
                }
                let words = [u32::from(target), self.rng.below(6) as u32];
                let arg = self.scratch.put(words)?;
                ("sched_remote_shutdown", SchedOp::RemoteShutdown.raw(), self.ptr(arg, 8, Access::Read))
            }
            _ => {
                let buffer = self.scratch.put([self.rng.next_u64(), self.rng.next_u64()])?;
                let cmd = self.rng.pick(&[5, 6, 7, 8, 9, 64, 0xFFFF]);
                ("sched_other", cmd, self.ptr(buffer, 16, Access::Write))
            }
        };
        Some(Call::new(name, Hypercall::SchedOp, [u64::from(cmd), arg, 0, 0, 0]))
    }

    // ---- info ---------------------------------------------------------------------------

    fn info_op(&mut self) -> Option<Call> {
        match self.rng.below(8) {
            0..=3 => {
                let buffer = self.scratch.alloc(1024)?;
                let cmd = if self.rng.chance(800) { self.rng.below(13) } else { self.rng.bits(32) };
                let arg = self.ptr(buffer, 1024, Access::Write);
                Some(Call::new("xen_version", Hypercall::XenVersion, [cmd, arg, 0, 0, 0]))
            }
            4 | 5 => {
                let long = !self.avoid.has(Class::Console) && self.rng.chance(30);
                let count = if long { self.rng.pick(&[4096, 65535, 65536, 65537]) } else { self.rng.between(0, 160) };
                let text = self.scratch.alloc(160)?;
                const NOISE: &[u8] = b"fuzz: console noise 0123456789 abcdef\t\x01\xff";
                for i in 0..160 {
                    let byte = NOISE[self.rng.below(NOISE.len() as u64) as usize];
                    self.scratch.fill(text + i, 1, byte);
                }
                // A long write reads on through the scratch (and into the hole).
                // Every write from something readable prints (up to a line per 160 bytes):
                // each takes from the budget, which long writes empty at once.
                if self.console_budget == 0 && !long {
                    let buffer = self.gen().unreadable();
                    return Some(Call::new("console_write", Hypercall::ConsoleIo, [0, count, buffer, 0, 0]));
                }
                let buffer = self.ptr(text, count, Access::Read);
                self.console_budget = if long { 0 } else { self.console_budget - 1 };
                Some(Call::new("console_write", Hypercall::ConsoleIo, [0, count, buffer, 0, 0]).then(after::NEWLINE))
            }
            6 => {
                let buffer = self.scratch.alloc(256)?;
                let any = self.rng.bits(32);
                let cmd = self.rng.pick(&[1, 2, 3, 0xFFFF, any]);
                let arg = self.ptr(buffer, 256, Access::Write);
                Some(Call::new("console_other", Hypercall::ConsoleIo, [cmd, self.rng.bits(9), arg, 0, 0]))
            }
            _ => {
                let r = &mut self.rng;
                Some(match r.below(4) {
                    0 => Call::new("vm_assist", Hypercall::VmAssist, [r.below(5), r.below(40), 0, 0, 0]),
                    1 => Call::new("fpu_taskswitch", Hypercall::FpuTaskswitch, [r.bits(1), 0, 0, 0, 0]),
                    2 => Call::new("set_debugreg", Hypercall::SetDebugreg, [r.below(9), r.next_u64(), 0, 0, 0]),
                    _ => Call::new("get_debugreg", Hypercall::GetDebugreg, [r.below(9), 0, 0, 0, 0]),
                })
            }
        }
    }

    // ---- traps --------------------------------------------------------------------------

    fn traps_op(&mut self) -> Option<Call> {
        match self.rng.below(6) {
            0..=2 => {
                let n = self.rng.between(0, 40);
                let table = self.scratch.alloc((n + 1) * 16)?;
                let stubs = special::trap_stubs();
                for i in 0..n {
                    let vector = if self.rng.chance(700) { self.rng.below(32) } else { self.rng.bits(8) };
                    let entry = TrapInfo {
                        vector: vector as u8,
                        flags: self.rng.bits(8) as u8,
                        cs: self.gen().selector(),
                        _pad: 0,
                        address: self.gen().code_address(stubs + (vector % 32) * 16),
                    };
                    let _ = self.scratch_put_at(table + i * 16, entry);
                }
                let end = if self.rng.chance(900) { TrapInfo::default() } else { TrapInfo { vector: 1, address: stubs, ..TrapInfo::default() } };
                let _ = self.scratch_put_at(table + n * 16, end);
                let arg = if self.rng.chance(50) { 0 } else { self.ptr(table, (n + 1) * 16, Access::Read) };
                Some(Call::new("set_trap_table", Hypercall::SetTrapTable, [arg, 0, 0, 0, 0]).then(after::TRAPS))
            }
            3 => {
                let mut gen = self.gen();
                let args = [
                    gen.code_address(guard::event_entry()),
                    gen.code_address(guard::failsafe_entry()),
                    gen.code_address(0),
                    0,
                    0,
                ];
                Some(Call::new("set_callbacks", Hypercall::SetCallbacks, args).then(after::CALLBACKS))
            }
            4 => {
                let kind = if self.rng.chance(800) { self.rng.below(8) as u16 } else { self.rng.bits(16) as u16 };
                let address = self.gen().code_address(guard::event_entry());
                let request = CallbackRegister { kind, flags: self.rng.bits(16) as u16, _pad: 0, address };
                let arg = self.scratch.put(request)?;
                let arg = self.ptr(arg, 16, Access::Read);
                let any = self.rng.bits(32);
                let cmd = self.rng.pick(&[0, 0, 0, 1, 2, any]);
                Some(Call::new("callback_op", Hypercall::CallbackOp, [cmd, arg, 0, 0, 0]).then(after::CALLBACKS))
            }
            _ => {
                let ss = u64::from(self.gen().selector());
                let sp = self.gen().code_address(memory::stack1_top());
                Some(Call::new("stack_switch", Hypercall::StackSwitch, [ss, sp, 0, 0, 0]).then(after::STACK))
            }
        }
    }

    /// Writes `value` at `at` inside this vCPU's scratch.
    fn scratch_put_at<T: Copy>(&mut self, at: u64, value: T) -> Option<()> {
        self.scratch.get::<T>(at)?;
        // SAFETY: `get` just checked that `T` fits there inside this vCPU's scratch.
        unsafe { (at as *mut T).write_unaligned(value) };
        Some(())
    }

    // ---- segments -----------------------------------------------------------------------

    fn segments_op(&mut self) -> Option<Call> {
        match self.rng.below(6) {
            0 | 1 => {
                let entries = match self.rng.below(6) {
                    0 => 0,
                    1 => self.rng.pick(&[14 * 512, 14 * 512 + 1, 1 << 31, u64::MAX]),
                    _ => self.rng.between(1, 3 * 512),
                };
                let frames = entries.div_ceil(512).clamp(1, 16);
                let list = self.scratch.alloc(frames * 8)?;
                for i in 0..frames {
                    let mfn = match self.rng.below(4) {
                        0 if !self.frames.extra.is_empty() => self.rng.pick(&self.frames.extra),
                        1 => special::descriptor_frame(self).unwrap_or(0),
                        _ => self.gen().table_frame(),
                    };
                    let _ = self.scratch_write(list + i * 8, mfn);
                }
                let arg = self.ptr(list, frames * 8, Access::Read);
                Some(Call::new("set_gdt", Hypercall::SetGdt, [arg, entries, 0, 0, 0]).then(after::GDT))
            }
            2 | 3 => {
                let (frame, descriptor) = {
                    let mut gen = self.gen();
                    (gen.table_frame(), gen.descriptor())
                };
                let offset = self.rng.below(512) * 8 + if self.rng.chance(30) { self.rng.between(1, 7) } else { 0 };
                Some(Call::new("update_descriptor", Hypercall::UpdateDescriptor, [frame * PAGE + offset, descriptor, 0, 0, 0]))
            }
            _ => {
                let which = if self.rng.chance(850) { self.rng.below(5) } else { self.rng.next_u64() };
                let base = match self.rng.below(4) {
                    0 => 0,
                    1 => self.rng.bits(47),
                    2 => self.gen().pointer(0, 1, Access::Read),
                    _ => self.rng.next_u64(),
                };
                Some(Call::new("set_segment_base", Hypercall::SetSegmentBase, [which, base, 0, 0, 0]).then(after::SEGMENTS))
            }
        }
    }

    // ---- vcpu ---------------------------------------------------------------------------

    fn vcpu_round(&mut self) {
        if !self.avoid.has(Class::Vcpus) && self.rng.chance(30) {
            special::park_vcpu(self);
        } else if let Some(call) = self.vcpu_plain() {
            self.exec(&call);
        }
    }

    fn vcpu_plain(&mut self) -> Option<Call> {
        let id = match self.rng.below(10) {
            0..=5 => self.rng.below(2),
            6 => self.rng.between(2, 31),
            7 => 32,
            8 => u64::from(u32::MAX),
            _ => self.rng.next_u64(),
        };
        let parked = (2..32).contains(&(id as u32)) && id >> 32 == 0;
        let mut cmd = if self.rng.chance(900) { self.rng.below(15) } else { self.rng.bits(32) };
        // Initialise and up of a third vCPU are the park procedure's; down of our own two
        // would stop the fuzzer.
        if (cmd == 0 || cmd == 1) && parked {
            cmd = 3;
        }
        if cmd == 2 && !parked {
            cmd = 3;
        }
        let arg = if cmd == 0 {
            // Initialise of vCPU 0 or 1 (which exist): a well-formed context, refused.
            let context = self.scratch.alloc(size_of::<VcpuGuestContext>() as u64)?;
            self.scratch.fill(context, size_of::<VcpuGuestContext>() as u64, 0);
            self.ptr(context, size_of::<VcpuGuestContext>() as u64, Access::Read)
        } else {
            let buffer = self.scratch.put([self.rng.next_u64(), self.rng.next_u64(), 0u64, 0u64, 0u64, 0u64])?;
            self.ptr(buffer, 48, Access::Write)
        };
        Some(Call::new("vcpu_op", Hypercall::VcpuOp, [cmd, id, arg, 0, 0]))
    }

    // ---- raw ----------------------------------------------------------------------------

    fn raw_op(&mut self) -> Option<Call> {
        const UNIMPLEMENTED: [u64; 21] = [6, 7, 8, 9, 11, 16, 19, 20, 22, 27, 28, 31, 33, 34, 35, 37, 38, 39, 40, 41, 42];
        let r = &mut self.rng;
        let (nr, zero_args) = match r.below(6) {
            0..=2 => (r.pick(&UNIMPLEMENTED), false),
            3 => (r.between(43, 255), false),
            4 => ((1 << 32) | r.below(64), true),
            _ => {
                let any = r.next_u64() | 1 << 40;
                (r.pick(&[u64::MAX, 0xFFFF_FFFF, 1 << 63, any]), true)
            }
        };
        let mut args = [0u64; 5];
        if !zero_args {
            for arg in &mut args {
                *arg = match self.rng.below(3) {
                    0 => self.rng.bits(8),
                    1 => self.rng.next_u64(),
                    _ => {
                        let hole = self.world.hole[self.vcpu];
                        self.gen().pointer(hole, 64, Access::Write)
                    }
                };
            }
        }
        // Unimplemented calls change nothing; should a number with high bits be taken for
        // a call, its zero arguments at most clear the trap table or a base.
        let after = after::TRAPS | after::CALLBACKS | after::SEGMENTS | after::STACK;
        Some(Call { name: "raw", nr, args, after, extents: Extents::None })
    }

    // ---- multicall ----------------------------------------------------------------------

    fn multicall(&mut self) {
        if !self.avoid.has(Class::Long) && self.rng.chance(3) {
            special::long_multicall(self);
            return;
        }
        let n = self.rng.between(1, MULTICALL_MAX) as usize;
        let mut calls: [Option<Call>; MULTICALL_MAX as usize] = [None; MULTICALL_MAX as usize];
        let families = [Family::Mmu, Family::Memory, Family::Events, Family::Info, Family::Traps, Family::Segments, Family::Vcpu, Family::Raw];
        for slot in calls.iter_mut().take(n) {
            let family = self.rng.pick(&families);
            if self.only.has(family) && !(self.vcpu == 1 && self.avoid.has(Class::Lock) && family != Family::Events && family != Family::Info) {
                *slot = self.plain(family);
            }
        }
        let Some(array) = self.scratch.alloc(n as u64 * 64) else { return };
        let mut after = 0;
        for (i, slot) in calls.iter().take(n).enumerate() {
            let entry = match slot {
                Some(call) => {
                    after |= call.after;
                    MulticallEntry { op: call.nr, result: 0, args: [call.args[0], call.args[1], call.args[2], call.args[3], call.args[4], 0] }
                }
                // A nested multicall is refused inside a batch (an iret would return
                // from whatever the stack holds, and end the batch: not fuzzed here).
                None => MulticallEntry { op: self.rng.pick(&[13, 0xFFFF]), result: 0, args: [array, 1, 0, 0, 0, 0] },
            };
            let _ = self.scratch_put_at(array + i as u64 * 64, entry);
        }
        let count = self.gen().count(n as u64);
        if count > n as u64 {
            // What lies past the prepared entries is run too: unknown calls only.
            let mut at = array + n as u64 * 64;
            while at + 64 <= self.scratch.end() && at < array.saturating_add(count.saturating_mul(64)) {
                let _ = self.scratch_put_at(at, MulticallEntry { op: 0xFFFF, result: 0, args: [0; 6] });
                at += 64;
            }
            after = after::ALL;
        }
        let list = self.ptr(array, n as u64 * 64, Access::Write);
        if list != array {
            after = after::ALL;
        }
        let call = Call { name: "multicall", nr: Hypercall::Multicall.number(), args: [list, count, 0, 0, 0], after, extents: Extents::None };
        if report::traced(report::CALLS.load(core::sync::atomic::Ordering::Relaxed)) {
            for i in 0..n as u64 {
                if let Some(entry) = self.scratch.get::<MulticallEntry>(array + i * 64) {
                    report::trace(self.vcpu, i, "multicall_entry", entry.op, &entry.args);
                }
            }
        }
        let ret = self.exec(&call);
        // Each entry counts as a call, and its frames are noted.
        for (i, slot) in calls.iter().take(n).enumerate() {
            report::begin(self.vcpu, "multicall_entry");
            if let (Some(sub), Some(entry)) = (slot, self.scratch.get::<MulticallEntry>(array + i as u64 * 64)) {
                if ret == 0 && list == array {
                    self.post(&Call { after: 0, ..*sub }, entry.result as i64);
                }
            }
        }
    }

    // ---- helpers for the procedures -----------------------------------------------------

    /// Maps arena slot `index` writable at its address again; whether that worked.
    pub fn map_slot(&mut self, index: usize) -> bool {
        let slot = self.frames.slots[index];
        if slot.mfn == 0 {
            return false;
        }
        let va = self.frames.slot_va(self.world, index);
        let flags = UVMF_INVLPG | UVMF_ALL;
        let ok = self.exec(&Call::new("map_slot", Hypercall::UpdateVaMapping, [va, kernel_rw_pte(slot.mfn << 12), flags, 0, 0])) == 0;
        self.frames.slots[index].writable = ok;
        ok
    }

    /// Unmaps arena slot `index` (flushing every vCPU); whether that worked.
    pub fn unmap_slot(&mut self, index: usize) -> bool {
        let va = self.frames.slot_va(self.world, index);
        let ok = self.exec(&Call::new("unmap_slot", Hypercall::UpdateVaMapping, [va, 0, UVMF_INVLPG | UVMF_ALL, 0, 0])) == 0;
        if ok {
            self.frames.slots[index].writable = false;
        }
        ok
    }

    /// Binds `VIRQ_TIMER` on this vCPU if it is not bound; whether it is bound now.
    pub fn timer_bound(&mut self) -> bool {
        match evtchn::bind_virq(Virq::Timer, VcpuId(self.vcpu as u32)) {
            Ok(_) => true,
            Err(HypercallError::Xen(Errno::Eexist)) => true,
            Err(_) => false,
        }
    }

    /// An mmu_update of one entry (machine address `entry`) to `value`; whether it worked.
    pub fn update_entry(&mut self, name: &'static str, entry: u64, value: u64) -> bool {
        let Some(at) = self.scratch.put(MmuUpdate { ptr: entry, val: value }) else { return false };
        self.exec(&Call::new(name, Hypercall::MmuUpdate, [at, 1, 0, SELF, 0])) == 0
    }

    /// One mmuext op on `mfn`; whether it worked.
    pub fn ext(&mut self, name: &'static str, cmd: MmuextCmd, mfn: u64) -> bool {
        let Some(at) = self.scratch.put(MmuextOp { cmd: cmd.raw(), _pad: 0, arg1: mfn, arg2: 0 }) else { return false };
        // The frame also rides in r8, which mmuext_op does not read, for the trace line.
        self.exec(&Call::new(name, Hypercall::MmuextOp, [at, 1, 0, SELF, mfn])) == 0
    }

    /// The boot L4's entry 511 (what an L4 of our own must hold there).
    pub fn boot_l4_entry(&self) -> u64 {
        self.world.tables.l4_entry_511
    }

    /// A context for a parked vCPU `id`: kernel mode on its own small stack, entering the
    /// park loop, with the fuzzer's trap table, callbacks and the boot L4.
    pub fn park_context(&self, id: u32) -> VcpuGuestContext {
        let mut context = VcpuGuestContext { flags: VGCF_IN_KERNEL, kernel_ss: FLAT_KERNEL_SS64.into(), ..VcpuGuestContext::default() };
        let regs = &mut context.user_regs;
        regs.rip = special::park_entry();
        regs.rsp = memory::park_stack_top(id);
        regs.cs = FLAT_KERNEL_CS64;
        regs.ss = FLAT_KERNEL_SS64;
        regs.rflags = 0x202;
        let table = guest_rt::traps::trap_table(special::trap_stubs());
        for entry in &table[..guest_rt::traps::EXCEPTION_COUNT] {
            context.trap_ctxt[usize::from(entry.vector)] = *entry;
        }
        context.event_callback_eip = guard::event_entry();
        context.failsafe_callback_eip = guard::failsafe_entry();
        context.ctrlreg[3] = self.world.tables.l4 << 12;
        context
    }
}
