//! Attacks on domain 0's device access (issue 17 item 4(b)) from a domain that has none:
//! - mapping device memory: the frames of PCI BARs that domain 0 may map (QEMU's VGA
//!   framebuffer at 0xfd000000 and its registers at 0xfebf0000, a virtio disk's BAR at
//!   0xfe000000 when there is one), with and without the cache bits, and the hypervisor's
//!   own devices (local APIC, I/O APIC, HPET), through `update_va_mapping`: refused
//!   (EPERM for device memory, as a frame of another owner; EINVAL for what is no frame);
//! - physical IRQs: `PHYSDEVOP_map_pirq` of GSI 11, `EVTCHNOP_bind_pirq`,
//!   `PHYSDEVOP_eoi` (which would unmask a line domain 0 is handling) and
//!   `PHYSDEVOP_irq_status_query`: EPERM;
//! - configuration space: with its I/O privilege level raised (`PHYSDEVOP_set_iopl`, which
//!   any PV guest may do), `out` of the host bridge's address to 0xCF8 and `in` from
//!   0xCFC must read all ones (not 0x12378086), and a write of a BAR must change nothing.
//!
//! A map that wrongly succeeds is undone at once. This module maps only into the
//! unmapped hole of [`Targets`] and restores IOPL 0 when it is done.

use core::arch::asm;

use guest_rt::abi::event_channel::EvtchnBindPirq;
use guest_rt::abi::hypercall::{EvtchnOp, Hypercall};
use guest_rt::abi::ids::EvtchnPort;
use guest_rt::abi::mmu::UVMF_INVLPG;
use guest_rt::abi::physdev::{PhysdevEoi, PhysdevIrqStatusQuery, PhysdevMapPirq, PhysdevOp, PhysdevSetIopl, MAP_PIRQ_TYPE_GSI};
use guest_rt::hypercall::{hypercall2, hypercall3};
use guest_rt::layout::{PTE_PRESENT, PTE_USER, PTE_WRITABLE};

use crate::targets::Targets;
use crate::verdict::{Outcome, Tally};

/// Write-through and cache-disable: what a device mapping uses.
const PTE_UNCACHED: u64 = (1 << 3) | (1 << 4);

/// Frames to try, with what they are.
const FRAMES: [(u64, &str); 6] = [
    (0xfd000, "VGA framebuffer BAR"),
    (0xfebf0, "VGA register BAR"),
    (0xfe000, "virtio BAR"),
    (0xfee00, "local APIC"),
    (0xfec00, "I/O APIC"),
    (0xfed00, "HPET"),
];

fn physdev<T>(op: PhysdevOp, arg: &mut T) -> i64 {
    // SAFETY: `arg` is a live argument struct of `op`.
    unsafe { hypercall2(Hypercall::PhysdevOp, u64::from(op.raw()), core::ptr::from_mut(arg) as u64) }
}

/// Runs the device attacks.
pub fn run(tally: &mut Tally, targets: &Targets) {
    for (mfn, what) in FRAMES {
        for cache in [0, PTE_UNCACHED] {
            let pte = mfn << 12 | PTE_PRESENT | PTE_WRITABLE | PTE_USER | cache;
            // SAFETY: the hole is unmapped and unused; a wrong success is undone below.
            let ret = unsafe { hypercall3(Hypercall::UpdateVaMapping, targets.hole, pte, UVMF_INVLPG) };
            let outcome = Outcome::of_call(ret);
            if tally.record(format_args!("map the {what} ({mfn:#x}){}", if cache != 0 { " uncached" } else { "" }), outcome) {
                // SAFETY: as above: the hole is emptied again.
                unsafe { hypercall3(Hypercall::UpdateVaMapping, targets.hole, 0, UVMF_INVLPG) };
            }
        }
    }
    let mut map = PhysdevMapPirq { domid: 0x7ff0, kind: MAP_PIRQ_TYPE_GSI, index: 11, pirq: -1, ..Default::default() };
    tally.record(format_args!("map_pirq of GSI 11"), Outcome::of_call(physdev(PhysdevOp::MapPirq, &mut map)));
    let mut bind = EvtchnBindPirq { pirq: 11, flags: 0, port: EvtchnPort(0) };
    // SAFETY: `bind` is a live `evtchn_bind_pirq`.
    let ret = unsafe { hypercall2(Hypercall::EventChannelOp, u64::from(EvtchnOp::BindPirq.raw()), &raw mut bind as u64) };
    tally.record(format_args!("bind_pirq 11"), Outcome::of_call(ret));
    tally.record(format_args!("eoi of pirq 11"), Outcome::of_call(physdev(PhysdevOp::Eoi, &mut PhysdevEoi { irq: 11 })));
    let mut query = PhysdevIrqStatusQuery { irq: 11, flags: 0 };
    tally.record(format_args!("irq_status_query of pirq 11"), Outcome::of_call(physdev(PhysdevOp::IrqStatusQuery, &mut query)));
    config_space(tally);
}

fn config_in(address: u32) -> u32 {
    let value: u32;
    // SAFETY: port I/O traps to the hypervisor (the real IOPL is 0), which emulates it;
    // no memory is touched.
    unsafe {
        asm!("out dx, eax", in("dx") 0xcf8u16, in("eax") address, options(nostack, nomem));
        asm!("in eax, dx", in("dx") 0xcfcu16, out("eax") value, options(nostack, nomem));
    }
    value
}

fn config_out(address: u32, value: u32) {
    // SAFETY: as in `config_in`.
    unsafe {
        asm!("out dx, eax", in("dx") 0xcf8u16, in("eax") address, options(nostack, nomem));
        asm!("out dx, eax", in("dx") 0xcfcu16, in("eax") value, options(nostack, nomem));
    }
}

fn config_space(tally: &mut Tally) {
    let ret = physdev(PhysdevOp::SetIopl, &mut PhysdevSetIopl { iopl: 1 });
    if ret != 0 {
        // Every PV guest may set its IOPL: a refusal is a broken hypervisor, not a defence.
        tally.record(format_args!("set_iopl 1 before the configuration-space attacks"), Outcome::Succeeded);
        let _ = Outcome::of_call(ret);
        return;
    }
    let host_bridge_id = config_in(0x8000_0000);
    let outcome = if host_bridge_id == u32::MAX { Outcome::Exact } else { Outcome::Succeeded };
    tally.record(format_args!("read the host bridge's id through 0xcf8/0xcfc (read {host_bridge_id:#x})"), outcome);
    // Device 3's BAR 0 (a NIC or a disk on QEMU's pc), moved over RAM.
    let bar = 0x8000_1810;
    config_out(bar, 0x0010_0000);
    let after = config_in(bar);
    let outcome = if after == u32::MAX { Outcome::Exact } else { Outcome::Succeeded };
    tally.record(format_args!("move device 3's BAR 0 over RAM (reads {after:#x})"), outcome);
    physdev(PhysdevOp::SetIopl, &mut PhysdevSetIopl { iopl: 0 });
}
