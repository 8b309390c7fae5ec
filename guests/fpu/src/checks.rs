//! The checks of the FPU's control and the debug registers a PV kernel uses, XTF style:
//! each step states what Xen does and fails the guest when the hypervisor does otherwise.

use core::sync::atomic::Ordering;

use guest_rt::hypercall::sched_yield;
use guest_rt::println;

use crate::cpu::{self, CR0_TS, CR4_DE, DB, DR6_DEFAULT, NM};
use crate::fail;

fn check(ok: bool, what: core::fmt::Arguments) {
    if !ok {
        fail(what);
    }
}

/// `fpu_taskswitch`, the virtual CR0.TS, `clts`, `mov %cr0` and #NM (Xen's
/// `do_fpu_taskswitch`, `do_device_not_available` and CR0 emulation).
pub fn taskswitch() {
    let nm = || NM.load(Ordering::SeqCst);
    check(cpu::read_cr0() & CR0_TS == 0, format_args!("CR0.TS set at start"));
    cpu::touch_sse();
    check(nm() == 0, format_args!("#NM without TS"));

    cpu::fpu_taskswitch(true);
    check(cpu::read_cr0() & CR0_TS != 0, format_args!("fpu_taskswitch(1) not seen in CR0"));
    cpu::touch_sse();
    check(nm() == 1, format_args!("no #NM for SSE with TS set ({})", nm()));
    check(cpu::read_cr0() & CR0_TS == 0, format_args!("TS still set after the #NM (Xen clears it)"));
    cpu::touch_sse();
    check(nm() == 1, format_args!("a second #NM after TS was cleared"));

    cpu::fpu_taskswitch(true);
    cpu::fpu_taskswitch(false);
    cpu::touch_x87();
    check(nm() == 1, format_args!("#NM after fpu_taskswitch(0)"));

    cpu::fpu_taskswitch(true);
    cpu::clts();
    check(cpu::read_cr0() & CR0_TS == 0, format_args!("clts did not clear TS"));
    cpu::touch_x87();
    check(nm() == 1, format_args!("#NM after clts"));

    let cr0 = cpu::read_cr0();
    cpu::write_cr0(cr0 | CR0_TS);
    check(cpu::read_cr0() == cr0 | CR0_TS, format_args!("mov to CR0 did not set TS"));
    cpu::touch_x87();
    check(nm() == 2, format_args!("no #NM for x87 after mov to CR0"));
    let refused = cpu::expect_fault(3, || cpu::write_cr0(cr0 ^ (1 << 16)));
    check(refused == Some("#GP"), format_args!("mov to CR0 changing WP: {refused:?}, not #GP"));
    check(cpu::read_cr0() == cr0, format_args!("CR0 changed by a refused write"));

    // TS belongs to this vCPU across switches.
    cpu::fpu_taskswitch(true);
    for _ in 0..4 {
        let _ = sched_yield();
        check(cpu::read_cr0() & CR0_TS != 0, format_args!("TS lost across a yield"));
    }
    cpu::touch_sse();
    check(nm() == 3, format_args!("no #NM after yields with TS set"));
    println!("fpu: fpu_taskswitch, clts, CR0 and #NM ok");
}

/// FSGSBASE, which the hypervisor keeps off: CPUID.7.0:EBX[0] must not advertise it, the
/// virtual CR4.FSGSBASE (bit 16) must not take, and `rdfsbase` must raise #UD (what XTF's
/// pv-fsgsbase checks when the feature is absent, XSA-293's concern).
pub fn fsgsbase() {
    const CR4_FSGSBASE: u64 = 1 << 16;
    let ebx = cpu::cpuid(7, 0)[1];
    check(ebx & 1 == 0, format_args!("CPUID.7.0:EBX {ebx:#x} advertises FSGSBASE"));
    let cr4 = cpu::read_cr4();
    cpu::write_cr4(cr4 | CR4_FSGSBASE);
    check(cpu::read_cr4() & CR4_FSGSBASE == 0, format_args!("CR4.FSGSBASE taken without the feature"));
    let ud = cpu::expect_fault(5, cpu::rdfsbase);
    check(ud == Some("#UD"), format_args!("rdfsbase: {ud:?}, not #UD"));
    cpu::write_cr4(cr4);
    println!("fpu: FSGSBASE hidden and off ok");
}

/// The debug registers: initial state, round trips, Xen's refusals, breakpoints that fire
/// for this domain and no other, and breakpoints on memory the hypervisor touches (which
/// must not stop it), a breakpoint hit by `mov ss` (held back over the next instruction, or
/// dropped by a `syscall` there). `rounds` switches with a breakpoint armed on every other round.
pub fn debugregs(rounds: u32) {
    static TARGET: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let db = || DB.load(Ordering::SeqCst);
    for reg in 0..4 {
        check(cpu::get_debugreg(reg) == 0, format_args!("DR{reg} not 0 at start"));
    }
    check(cpu::get_debugreg(6) as u64 == DR6_DEFAULT, format_args!("DR6 {:#x} at start", cpu::get_debugreg(6)));
    check(cpu::get_debugreg(7) == 0x400 && cpu::mov_from_dr7() == 0x400, format_args!("DR7 not 0x400 at start"));
    check(cpu::read_cr4() & CR4_DE == 0, format_args!("CR4.DE set at start"));
    check(cpu::rdmsr(0x1d9) == 0, format_args!("DEBUGCTL not 0"));

    // Refusals, as Xen's set_debugreg (EPERM 1, EINVAL 22, ENODEV 19).
    let refusals: [(u32, u64, i64, &str); 8] = [
        (0, 0xffff_ffff_fc00_0000, -1, "a hypervisor address"),
        (1, 0xffff_8000_0000_0000, -1, "the M2P (Xen's reserved range)"),
        (2, 0x8000_0000_0000, -1, "a non-canonical address"),
        (7, 0x2000 | 0x401, -1, "DR7.GD"),
        (7, 1 << 32 | 0x401, -22, "DR7 upper bits"),
        (6, 1 << 40, -22, "DR6 upper bits"),
        (7, (2 << 16) | 0x402, -1, "an I/O breakpoint without CR4.DE"),
        (8, 0, -19, "DR8"),
    ];
    for (reg, value, errno, what) in refusals {
        let got = cpu::set_debugreg(reg, value);
        check(got == errno, format_args!("set_debugreg({reg}, {value:#x}) ({what}) gave {got}, not {errno}"));
    }
    check(cpu::get_debugreg(7) == 0x400, format_args!("a refused write changed DR7"));
    let gd = cpu::expect_fault(3, || cpu::mov_to_dr7(0x2401));
    check(gd == Some("#GP"), format_args!("mov to DR7 with GD: {gd:?}, not #GP"));
    let wr = cpu::expect_fault(2, || cpu::wrmsr(0x1d9, 1));
    check(wr == Some("#GP"), format_args!("wrmsr DEBUGCTL=1: {wr:?}, not #GP"));
    // DR4 aliases DR6 without CR4.DE, and is #UD with it.
    cpu::mov_to_dr4(0);
    cpu::write_cr4(cpu::read_cr4() | CR4_DE);
    check(cpu::read_cr4() & CR4_DE != 0, format_args!("CR4.DE not taken"));
    let ud = cpu::expect_fault(3, || cpu::mov_to_dr4(0));
    check(ud == Some("#UD"), format_args!("mov to DR4 with CR4.DE: {ud:?}, not #UD"));
    let io = (2 << 16) | 0x402;
    check(cpu::set_debugreg(7, io) == 0 && cpu::get_debugreg(7) as u64 == io, format_args!("an I/O breakpoint with CR4.DE"));
    check(cpu::set_debugreg(7, 0x400) == 0, format_args!("DR7 reset"));
    cpu::write_cr4(cpu::read_cr4() & !CR4_DE);

    // A data breakpoint of this domain fires for it, on every other round, across switches
    // to domains whose breakpoints are off or elsewhere.
    let target = &TARGET as *const _ as u64;
    check(cpu::set_debugreg(0, target) == 0 && cpu::get_debugreg(0) as u64 == target, format_args!("DR0 round trip"));
    let dr7 = (0b11 << 18) | (0b01 << 16) | 0x1 | 0x400; // DR0: 4 bytes, writes, L0
    let mut expected = 0;
    for round in 0..rounds {
        let armed = round % 2 == 0;
        check(cpu::set_debugreg(7, if armed { dr7 } else { 0x400 }) == 0, format_args!("DR7 set"));
        let _ = sched_yield();
        let before = db();
        TARGET.store(u64::from(round), Ordering::SeqCst);
        expected += u32::from(armed);
        let got = db() - before;
        check(got == u32::from(armed), format_args!("round {round}: {got} #DB for a write with the breakpoint {}", if armed { "on" } else { "off" }));
        if armed {
            let dr6 = cpu::LAST_DR6.load(Ordering::SeqCst);
            check(dr6 & 0xf == 1, format_args!("round {round}: DR6 {dr6:#x} does not name DR0"));
        }
    }
    check(db() == expected, format_args!("{} #DB, {expected} expected", db()));

    // Breakpoints on memory the hypervisor reads and writes for this guest (a console
    // buffer it reads, a xen_version buffer it reads and writes): its own accesses take a
    // #DB in hypervisor context, which must not stop it, and raise nothing here.
    let message = *b"fpu: a breakpoint on a hypercall's buffer\n";
    check(cpu::set_debugreg(1, message.as_ptr() as u64 & !7) == 0, format_args!("DR1"));
    let rw_any = (0b10 << 22) | (0b11 << 20) | 0x4 | 0x400; // DR1: 8 bytes, reads and writes, L1
    check(cpu::set_debugreg(7, rw_any) == 0, format_args!("DR7 for DR1"));
    let before = db();
    let _ = guest_rt::hypercall::console_write(&message);
    check(db() == before, format_args!("a #DB from the hypervisor's read of a console buffer"));
    let mut features = guest_rt::abi::version::XenFeatureInfo { submap_idx: 0, submap: 0 };
    check(cpu::set_debugreg(1, &raw mut features as u64 & !7) == 0, format_args!("DR1 on a xen_version buffer"));
    let got = guest_rt::hypercall::xen_version(&mut features);
    check(got.is_ok() && db() == before, format_args!("a #DB from the hypervisor's write of a xen_version buffer"));
    check(cpu::set_debugreg(7, 0x400) == 0, format_args!("DR7 off"));

    // A data breakpoint that `mov ss` hits is held back over the next instruction (Intel
    // SDM 6.8.3): reported after the nop, with no BS; and dropped when that instruction is
    // a syscall into the hypervisor (XSA-260: Xen ignores it in its entry path), with no
    // trace (no #DB, no TF) left in the guest.
    static SS_SLOT: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(0);
    SS_SLOT.store(cpu::read_ss(), Ordering::SeqCst);
    let slot = SS_SLOT.as_ptr() as u64;
    let rw2 = (0b01 << 18) | (0b11 << 16) | 0x1 | 0x400; // DR0: 2 bytes, reads and writes, L0
    check(cpu::set_debugreg(0, slot) == 0 && cpu::set_debugreg(7, rw2) == 0, format_args!("DR0 on an SS slot"));
    let before = db();
    // SAFETY: the atomic's storage, read as u16 by one instruction.
    let after = cpu::mov_ss_then_nop(unsafe { &*SS_SLOT.as_ptr() });
    let (rip, dr6) = (cpu::LAST_DB_RIP.load(Ordering::SeqCst), cpu::LAST_DR6.load(Ordering::SeqCst));
    check(db() == before + 1, format_args!("mov ss on a breakpoint: {} #DB", db() - before));
    check(rip == after, format_args!("mov ss on a breakpoint: #DB at {rip:#x}, not after the next instruction ({after:#x})"));
    check(dr6 & 0xf == 1 && dr6 & (1 << 14) == 0, format_args!("mov ss on a breakpoint: DR6 {dr6:#x}"));
    let before = db();
    // SAFETY: as above.
    let version = cpu::mov_ss_then_hypercall(unsafe { &*SS_SLOT.as_ptr() });
    // SAFETY: a few instructions after the hypercall, where a leaked TF would have trapped.
    unsafe { core::arch::asm!("nop", "nop") };
    check(version > 0 && db() == before, format_args!("mov ss; syscall on a breakpoint: xen_version {version:#x}, {} #DB (last at {:#x}, DR6 {:#x})", db() - before, cpu::LAST_DB_RIP.load(Ordering::SeqCst), cpu::LAST_DR6.load(Ordering::SeqCst)));
    check(cpu::set_debugreg(7, 0x400) == 0, format_args!("DR7 off"));

    // A single step.
    let before = db();
    // SAFETY: sets TF for one instruction; the #DB handler clears it.
    unsafe { core::arch::asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop", "nop") };
    check(db() == before + 1, format_args!("single step: {} #DB", db() - before));
    check(cpu::LAST_DR6.load(Ordering::SeqCst) & (1 << 14) != 0, format_args!("single step: DR6.BS clear"));
    check(cpu::mov_from_dr6() == DR6_DEFAULT, format_args!("DR6 not reset by the handler"));
    println!("fpu: debug registers ok ({expected} breakpoints over {rounds} rounds)");
}
