//! Domain 0 misusing its own devices (`attack=devices`, a hostile read of issue 17 4(b)):
//! what a buggy domain 0 can do with the device access it alone has must still not crash
//! or hang the hypervisor, nor reach RAM, the hypervisor's devices or another domain.
//! Needs the virtio disk of `io-virtio-*` (the driver of [`super`] is opened first).
//!
//! - Interrupts: a request completes and the device keeps its level line asserted (its
//!   ISR is never read): no second event arrives before `PHYSDEVOP_eoi`, and each EOI
//!   brings exactly one (the pin is masked from the interrupt until the EOI); with the
//!   port closed the interrupt an EOI lets in is raised nowhere; a second bind of the pirq
//!   is `EBUSY`; after a re-bind the asserted line arrives on the new port. `eoi`,
//!   `irq_status_query`, `map_pirq` and `bind_pirq` of pirqs that are not mapped or not
//!   a device line's are `EINVAL`.
//! - Device memory: a BAR frame mapped with PAT, pinned as a page table, written as a
//!   "plain page" through `mmu_update`, given an M2P entry, cleared with
//!   `MMUEXT_CLEAR_PAGE`, and the local APIC (and the page after it, in its 1 MiB range)
//!   mapped: all refused; a BAR frame mapped and unmapped many times and left mapped at
//!   the end (the run's leak check sees the teardown).
//! - Configuration space: moving the 64-bit BAR through its upper half, the expansion ROM
//!   BAR, enabling MSI-X, and the host bridge's registers: nothing changes; memory
//!   decoding turned off then on again: the device still works.
//!
//! Ends with the pirq still bound and BARs still mapped, so that domain 0's teardown of
//! both is part of the check.

use core::sync::atomic::Ordering;

use guest_rt::abi::errno::Errno;
use guest_rt::abi::event_channel::{EvtchnBindPirq, EvtchnClose};
use guest_rt::abi::hypercall::{Hypercall, MmuUpdateCmd, MmuextCmd};
use guest_rt::abi::ids::{DomId, EvtchnPort, Mfn};
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp, UVMF_INVLPG};
use guest_rt::abi::physdev::{
    PhysdevEoi, PhysdevIrqStatusQuery, PhysdevMapPirq, PhysdevOp, MAP_PIRQ_TYPE_GSI,
};
use guest_rt::events::Events;
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::layout::{PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use guest_rt::time::Clock;
use guest_rt::{println, StartInfo};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

use super::platform::{self, PortCam};
use super::{on_interrupt, open, Buffers, Op, SectorDisk, VirtioDisk, INTERRUPTED};

const MS: u64 = 1_000_000;
/// EOIs made while the device holds its line asserted.
const STORM_ROUNDS: usize = 200;
/// Map/unmap rounds of a BAR frame.
const MAP_ROUNDS: usize = 500;
const PTE_PAT: u64 = 1 << 7;

type Check = Result<(), &'static str>;

fn physdev<T>(op: PhysdevOp, arg: &mut T) -> Result<(), HypercallError> {
    // SAFETY: `arg` is the live argument struct of `op`.
    let ret = unsafe {
        hypercall::hypercall2(
            Hypercall::PhysdevOp,
            u64::from(op.raw()),
            core::ptr::from_mut(arg) as u64,
        )
    };
    hypercall::decode(ret).map(drop)
}

/// A call that must fail with `errno`.
fn refused(result: Result<(), HypercallError>, errno: Errno, what: &'static str) -> Check {
    match result {
        Err(e) if e.errno() == Some(errno) => Ok(()),
        Err(e) => {
            println!("dom0: devices: {what}: {e:?}, expected {errno:?}");
            Err(what)
        }
        Ok(()) => {
            println!("dom0: devices: {what}: accepted");
            Err(what)
        }
    }
}

/// A call that must fail (any error).
fn fails(result: Result<(), HypercallError>, what: &'static str) -> Check {
    if result.is_ok() {
        println!("dom0: devices: {what}: accepted");
        return Err(what);
    }
    Ok(())
}

/// Waits up to `ns` for the interrupt's event; whether it came (and clears the flag).
fn interrupted_within(clock: Clock, ns: u64) -> bool {
    let deadline = clock.now_ns() + ns;
    loop {
        if INTERRUPTED.swap(false, Ordering::AcqRel) {
            return true;
        }
        if clock.now_ns() >= deadline {
            return false;
        }
        let _ = hypercall::sched_yield();
    }
}

fn eoi(pirq: u32) -> Result<(), HypercallError> {
    physdev(PhysdevOp::Eoi, &mut PhysdevEoi { irq: pirq })
}

fn bind_pirq(pirq: u32) -> Result<EvtchnPort, HypercallError> {
    let mut bind = EvtchnBindPirq {
        pirq,
        flags: 0,
        port: EvtchnPort(0),
    };
    hypercall::event_channel_op(&mut bind)?;
    Ok(bind.port)
}

/// The `attack=devices` check.
pub fn run(start: &StartInfo) -> Check {
    let events = Events::init().map_err(|_| "events")?;
    let mut frames = guest_rt::frames::FreeFrames::new(start).ok_or("free frames")?;
    let mut disk = open(&mut frames, events)?;
    let mut buffers = Buffers::alloc(1).ok_or("DMA pool")?;
    let clock = Clock::new().map_err(|_| "clock")?;
    interrupts(&mut disk, &mut buffers, events, clock)?;
    println!("dom0: devices: interrupts ok");
    device_memory()?;
    println!("dom0: devices: device memory ok");
    config_space(&mut disk, &mut buffers)?;
    println!("dom0: devices: configuration space ok");
    // The pirq stays bound and the BARs mapped: domain 0's teardown must undo both.
    Ok(())
}

fn interrupts(disk: &mut VirtioDisk, buffers: &mut Buffers, events: Events, clock: Clock) -> Check {
    let pirq = platform::pirq();
    // Numbers that are no device line's, or not mapped.
    refused(eoi(u32::MAX), Errno::Einval, "eoi of pirq 2^32-1")?;
    refused(eoi(pirq + 1), Errno::Einval, "eoi of an unmapped pirq")?;
    refused(
        physdev(
            PhysdevOp::IrqStatusQuery,
            &mut PhysdevIrqStatusQuery {
                irq: 1000,
                flags: 0,
            },
        ),
        Errno::Einval,
        "irq_status_query of pirq 1000",
    )?;
    for (index, want) in [
        (-1, -1),
        (pirq as i32, pirq as i32 + 1),
        (255, -1),
        (i32::MIN, -1),
    ] {
        let mut map = PhysdevMapPirq {
            domid: 0x7ff0,
            kind: MAP_PIRQ_TYPE_GSI,
            index,
            pirq: want,
            ..Default::default()
        };
        refused(
            physdev(PhysdevOp::MapPirq, &mut map),
            Errno::Einval,
            "map_pirq of a bad GSI or pirq",
        )?;
    }
    let mut msi = PhysdevMapPirq {
        domid: 0x7ff0,
        kind: 0,
        index: pirq as i32,
        pirq: -1,
        ..Default::default()
    };
    refused(
        physdev(PhysdevOp::MapPirq, &mut msi),
        Errno::Einval,
        "map_pirq of an MSI",
    )?;
    refused(
        bind_pirq(pirq + 1).map(drop),
        Errno::Einval,
        "bind_pirq of an unmapped pirq",
    )?;
    refused(
        bind_pirq(pirq).map(drop),
        Errno::Ebusy,
        "a second bind_pirq",
    )?;

    // A request whose completion leaves the line asserted: the ISR is never read.
    let _ = INTERRUPTED.swap(false, Ordering::AcqRel);
    // SAFETY: buffer 0 is domain 0's pool memory, used by nothing else meanwhile.
    let tag = unsafe { disk.start(Op::Read, 0, &[buffers.extent(0, 4096)]) }.map_err(|_| "submit")?;
    disk.kick();
    if !interrupted_within(clock, 2000 * MS) {
        return Err("no interrupt for the request");
    }
    // Masked until the EOI: a level line held high raises nothing more.
    if interrupted_within(clock, 100 * MS) {
        return Err("a second event before the EOI (the line was not masked)");
    }
    let t0 = clock.now_ns();
    for round in 0..STORM_ROUNDS {
        eoi(pirq).map_err(|_| "eoi")?;
        if !interrupted_within(clock, 1000 * MS) {
            println!(
                "dom0: devices: round {round}: no interrupt after the EOI of an asserted line"
            );
            return Err("an EOI of an asserted line brought no interrupt");
        }
    }
    let per_round = (clock.now_ns() - t0) / STORM_ROUNDS as u64;
    if interrupted_within(clock, 50 * MS) {
        return Err("an event without an EOI");
    }
    println!("dom0: devices: {STORM_ROUNDS} EOIs of an asserted line, one interrupt each ({} us per round)", per_round / 1000);

    // Close the port while the line is asserted and its interrupt in flight: EOIs let
    // the interrupt in again, and it is raised nowhere.
    let mut close = EvtchnClose { port: disk.port };
    hypercall::event_channel_op(&mut close).map_err(|_| "close")?;
    for _ in 0..20 {
        eoi(pirq).map_err(|_| "eoi after close")?;
    }
    if interrupted_within(clock, 100 * MS) {
        return Err("an event on a closed port");
    }
    // Bound again: the asserted line arrives on the new port at once.
    let port = bind_pirq(pirq).map_err(|_| "bind_pirq after close")?;
    events
        .set_handler(port, on_interrupt)
        .map_err(|_| "handler")?;
    disk.port = port;
    if !interrupted_within(clock, 1000 * MS) {
        return Err("no interrupt on the re-bound port");
    }
    // Served properly: the device lowers the line, then the EOI.
    disk.ack_device();
    eoi(pirq).map_err(|_| "eoi")?;
    match disk.complete() {
        Some((t, Ok(()))) if t == tag => {}
        _ => return Err("the request did not complete"),
    }
    // And the disk still works, interrupt-driven.
    super::check(disk, buffers, 0, 8, super::pattern)?;
    Ok(())
}

fn device_memory() -> Check {
    let (bar, va) = platform::first_device_mapping().ok_or("no device mapping")?;
    let pte = |mfn: u64, extra: u64| mfn << 12 | PTE_PRESENT | PTE_WRITABLE | PTE_USER | extra;
    let map = |value: u64| {
        // SAFETY: `va` maps the device's BAR frame for `platform`; each refused update
        // leaves it as it was, and the rounds below end with the BAR mapped again.
        unsafe { hypercall::update_va_mapping(va, value, UVMF_INVLPG) }
    };
    // SAFETY: `va` maps device memory, read with a volatile 32-bit access.
    let peek = || unsafe { (va as *const u32).read_volatile() };
    let before = peek();
    fails(map(pte(bar, PTE_PAT)), "a BAR frame mapped with PAT")?;
    for frame in [0xfee00, 0xfee01, 0xfec00, 0xfed00] {
        fails(
            map(pte(frame, 0)),
            "the local APIC's, I/O APIC's or HPET's frame mapped",
        )?;
    }
    // A device frame as a page table, as a plain page written through mmu_update, as an
    // M2P entry, cleared as a page.
    let mut done = 0;
    for cmd in [
        MmuextCmd::PinL1Table,
        MmuextCmd::PinL2Table,
        MmuextCmd::ClearPage,
        MmuextCmd::NewBaseptr,
    ] {
        let op = [MmuextOp::with_mfn(cmd, Mfn(bar))];
        // SAFETY: the op names only the device frame, which must be refused.
        let result = unsafe { hypercall::mmuext_op(&op, &mut done, DomId::SELF) };
        fails(
            result,
            "a BAR frame as a page table or cleared page",
        )?;
    }
    for update in [
        MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, bar << 12, 0),
        MmuUpdate::new(MmuUpdateCmd::MachphysUpdate, bar << 12, 0x10),
    ] {
        // SAFETY: the update targets only the device frame, which must be refused.
        let result = unsafe { hypercall::mmu_update(&[update], &mut done, DomId::SELF) };
        fails(
            result,
            "a BAR frame written through mmu_update",
        )?;
    }
    // Map and unmap it over and over; none of it holds a reference.
    for _ in 0..MAP_ROUNDS {
        map(0).map_err(|_| "unmap of a BAR frame")?;
        map(pte(bar, 0)).map_err(|_| "map of a BAR frame")?;
    }
    if peek() != before {
        return Err("the BAR reads differently after the map rounds");
    }
    Ok(())
}

fn config_space(disk: &mut VirtioDisk, buffers: &mut Buffers) -> Check {
    let mut cam = PortCam;
    let df = find_device(&cam).ok_or("no virtio function")?;
    let host = DeviceFunction {
        bus: 0,
        device: 0,
        function: 0,
    };
    let (_, va) = platform::first_device_mapping().ok_or("no device mapping")?;
    // SAFETY: `va` maps device memory, read with a volatile 32-bit access.
    let peek = || unsafe { (va as *const u32).read_volatile() };
    let before = peek();
    let header: [u32; 16] = core::array::from_fn(|i| cam.read_word(df, 4 * i as u8));
    let host_before: [u32; 64] = core::array::from_fn(|i| cam.read_word(host, 4 * i as u8));
    // Each BAR register with an address (its upper half above 4 GiB, its lower half over
    // RAM), the ROM BAR, the host bridge's registers (the memory map, PAM, SMRAM).
    for offset in (0x10..0x28).step_by(4) {
        for value in [1u32, 0x0010_0000, 0xfee0_0000] {
            cam.write_word(df, offset, value);
        }
        // Put back what a driver would, unlatching a probe.
        cam.write_word(df, offset, header[usize::from(offset) / 4]);
    }
    cam.write_word(df, 0x30, 0x0010_0001);
    for offset in (0x40..=0xfcu8).step_by(4) {
        cam.write_word(host, offset, 0x3333_3333);
    }
    // MSI-X enabled (the capability with id 0x11), would name a vector of the hypervisor's.
    let mut cap = cam.read_word(df, 0x34) as u8 & 0xfc;
    let mut msix = None;
    for _ in 0..48 {
        if cap < 0x40 {
            break;
        }
        let word = cam.read_word(df, cap);
        if word as u8 == 0x11 {
            msix = Some((cap, word));
            cam.write_word(df, cap, word | 0xc000 << 16);
        }
        cap = (word >> 8) as u8 & 0xfc;
    }
    let header_after: [u32; 16] = core::array::from_fn(|i| cam.read_word(df, 4 * i as u8));
    // The status register's RW1C bits and the command register are the device's.
    for i in [0, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13] {
        if header_after[i] != header[i] {
            println!(
                "dom0: devices: header dword {:#x}: {:#x} -> {:#x}",
                4 * i,
                header[i],
                header_after[i]
            );
            return Err("a BAR or the ROM BAR moved");
        }
    }
    let host_after: [u32; 64] = core::array::from_fn(|i| cam.read_word(host, 4 * i as u8));
    if host_after != host_before {
        return Err("the host bridge's registers changed");
    }
    if let Some((at, word)) = msix {
        if cam.read_word(df, at) != word {
            return Err("MSI-X was enabled");
        }
    }
    // Memory decoding off: the BAR reads nothing; on again: the device is back.
    let command = header[1] & 0xffff;
    cam.write_word(df, 0x04, command & !0x2);
    let off = peek();
    cam.write_word(df, 0x04, command);
    if peek() != before {
        return Err("the BAR reads differently once decoding is back");
    }
    println!("dom0: devices: BAR word {before:#x}, {off:#x} with decoding off");
    super::check(disk, buffers, 0, 8, super::pattern)?;
    Ok(())
}

/// The virtio block function on bus 0.
fn find_device(cam: &PortCam) -> Option<DeviceFunction> {
    (0..32u8)
        .map(|device| DeviceFunction {
            bus: 0,
            device,
            function: 0,
        })
        .find(|&df| {
            let id = cam.read_word(df, 0);
            id as u16 == 0x1af4 && (id >> 16) as u16 == 0x1042
        })
}
