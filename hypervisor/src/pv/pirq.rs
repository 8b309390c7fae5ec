//! Physical IRQs for domain 0: its devices' interrupts, delivered as events (Xen's pirqs,
//! the GSI flavour): `PHYSDEVOP_map_pirq` (`MAP_PIRQ_TYPE_GSI`), `EVTCHNOP_bind_pirq`,
//! `PHYSDEVOP_eoi` and `PHYSDEVOP_irq_status_query`, as Linux's PV domain 0 uses them.
//!
//! At boot, `crate::pci` hands over the interrupt lines of the PCI functions it found
//! ([`register_lines`]): each line's GSI (the firmware's interrupt-line register, through
//! the MADT's interrupt source overrides, which also give trigger and polarity; a PCI
//! line without one is level, active low), its I/O APIC pin, and a vector of its own
//! ([`vectors::DEVICE_BASE`] up). Only those GSIs can be mapped: none the hypervisor uses.
//! The pirq of a GSI is the GSI itself, as Xen gives domain 0.
//!
//! The pin stays masked until domain 0 binds a port to it. When the interrupt arrives
//! ([`interrupt`]), the pin is masked again, the port raised, and the pin unmasked only by
//! domain 0's `PHYSDEVOP_eoi` for it (`XENIRQSTAT_needs_eoi` tells it so). So a device
//! that keeps its level line asserted, or a flood of interrupts, costs at most one
//! interrupt per acknowledgement by domain 0, and a line nobody serves (its port closed,
//! or domain 0 gone) stays masked for good: no CPU is ever held by a device. Interrupts are
//! sent to the boot CPU.
//!
//! Another domain gets `EPERM` from all of these. A binding is checked again at each
//! interrupt (the port must still be bound to that pirq, `events::Channels::pirq_delivery`),
//! so closing the port needs nothing here.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::errno::Errno;
use abi::event_channel::EvtchnBindPirq;
use abi::ids::{DomId, EvtchnPort};
use abi::physdev::{PhysdevEoi, PhysdevIrqStatusQuery, PhysdevMapPirq, MAP_PIRQ_TYPE_GSI, XENIRQSTAT_NEEDS_EOI};
use apic::{ApicId, Polarity, RedirectionEntry, Trigger};
use hypervisor::hypercall::GuestVa;
use log::{info, warn};
use spin::{Mutex, Once};

use crate::arch::uaccess;
use crate::domain::{self, Vcpu};
use crate::pci::DEVICE_DOMAIN;
use crate::platform::{self, IoApicInputs, Machine};
use crate::pv::hypercall::HcResult;
use crate::arch::vectors;

/// One device interrupt line.
struct Line {
    gsi: u32,
    vector: u8,
    io_apic: &'static IoApicInputs,
    pin: u8,
    entry: RedirectionEntry,
    state: Mutex<LineState>,
}

#[derive(Default)]
struct LineState {
    /// Domain 0 mapped it (`PHYSDEVOP_map_pirq`).
    mapped: bool,
    /// The port it last bound (checked again at each interrupt).
    port: Option<EvtchnPort>,
    /// An interrupt was raised and not yet acknowledged: the pin is masked until then.
    in_flight: bool,
}

static LINES: Once<Vec<Line>> = Once::new();
/// Interrupts raised as events, interrupts nobody was bound to, and acknowledgements.
static RAISED: AtomicU64 = AtomicU64::new(0);
static UNCLAIMED: AtomicU64 = AtomicU64::new(0);
static EOIS: AtomicU64 = AtomicU64::new(0);

/// Records the interrupt lines of `functions` (boot CPU, before any domain).
pub fn register_lines(functions: &[pci::Function], machine: &Machine) {
    let dest = ApicId(crate::lapic::current_id());
    let mut lines: Vec<Line> = Vec::new();
    for f in functions.iter().filter(|f| !f.is_bridge() && f.interrupt_pin != 0 && f.interrupt_line != 0xff) {
        let isa = f.interrupt_line;
        let found = machine.acpi.overrides.iter().find(|o| o.bus_irq == isa);
        let (gsi, trigger, polarity) = match found {
            Some(o) => (
                o.gsi,
                if o.level_triggered() { Trigger::Level } else { Trigger::Edge },
                if o.active_low() { Polarity::ActiveLow } else { Polarity::ActiveHigh },
            ),
            None => (u32::from(isa), Trigger::Level, Polarity::ActiveLow),
        };
        if lines.iter().any(|l| l.gsi == gsi) {
            continue;
        }
        let Some((io_apic, pin)) = platform::io_apic_for(gsi) else {
            warn!("pirq: {} GSI {gsi} has no I/O APIC input", f.bdf);
            continue;
        };
        let Some(vector) = u8::try_from(lines.len()).ok().and_then(|n| vectors::DEVICE_BASE.checked_add(n)).filter(|&v| v <= vectors::DEVICE_LAST) else {
            warn!("pirq: no vector left for {} GSI {gsi}", f.bdf);
            continue;
        };
        let entry = RedirectionEntry { vector, dest, trigger, polarity, masked: false };
        info!("pirq: {} line {isa} -> GSI {gsi} ({trigger:?}, {polarity:?}), vector {vector:#x}", f.bdf);
        lines.push(Line { gsi, vector, io_apic, pin, entry, state: Mutex::new(LineState::default()) });
    }
    LINES.call_once(|| lines);
}

fn line_of_pirq(pirq: u32) -> Option<&'static Line> {
    LINES.get()?.iter().find(|l| l.gsi == pirq)
}

fn set_masked(line: &Line, masked: bool) {
    if let Err(e) = line.io_apic.registers.lock().set_masked(line.pin, masked) {
        warn!("pirq: GSI {} mask {masked}: {e:?}", line.gsi);
    }
}

/// Only domain 0 has physical IRQs.
fn check_device_domain(vcpu: &Vcpu) -> Result<(), Errno> {
    if vcpu.domain.id == DEVICE_DOMAIN && vcpu.domain.privileged {
        Ok(())
    } else {
        Err(Errno::Eperm)
    }
}

/// `PHYSDEVOP_map_pirq`: a GSI of a device becomes the caller's pirq of the same number.
pub fn map_pirq(vcpu: &Vcpu, arg: GuestVa) -> HcResult {
    check_device_domain(vcpu)?;
    let mut request: PhysdevMapPirq = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    if request.domid != DomId::SELF.0 && request.domid != DEVICE_DOMAIN.0 {
        return Err(Errno::Eperm);
    }
    if request.kind != MAP_PIRQ_TYPE_GSI {
        return Err(Errno::Einval);
    }
    let gsi = u32::try_from(request.index).map_err(|_| Errno::Einval)?;
    let line = line_of_pirq(gsi).ok_or(Errno::Einval)?;
    if request.pirq != -1 && request.pirq != request.index {
        return Err(Errno::Einval);
    }
    line.state.lock().mapped = true;
    request.pirq = request.index;
    uaccess::write_value(arg.0, &request).map_err(|_| Errno::Efault)?;
    Ok(0)
}

/// `EVTCHNOP_bind_pirq`: a port for a mapped pirq; its pin is unmasked.
pub fn bind_pirq(vcpu: &Vcpu, arg: GuestVa) -> HcResult {
    check_device_domain(vcpu)?;
    let mut request: EvtchnBindPirq = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    let line = line_of_pirq(request.pirq).ok_or(Errno::Einval)?;
    let mut state = line.state.lock();
    if !state.mapped {
        return Err(Errno::Einval);
    }
    let port = vcpu.domain.channels.lock().bind_pirq(request.pirq).map_err(Errno::from)?;
    state.port = Some(port);
    state.in_flight = false;
    let programmed = line.io_apic.registers.lock().set_entry(line.pin, line.entry);
    drop(state);
    if let Err(e) = programmed {
        warn!("pirq: GSI {}: {e:?}", line.gsi);
        return Err(Errno::Eio);
    }
    request.port = port;
    uaccess::write_value(arg.0, &request).map_err(|_| Errno::Efault)?;
    Ok(0)
}

/// `PHYSDEVOP_eoi`: domain 0 is done with the pirq's interrupt; its pin is unmasked.
pub fn eoi(vcpu: &Vcpu, arg: GuestVa) -> HcResult {
    check_device_domain(vcpu)?;
    let request: PhysdevEoi = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    let line = line_of_pirq(request.irq).ok_or(Errno::Einval)?;
    let mut state = line.state.lock();
    if !state.mapped {
        return Err(Errno::Einval);
    }
    if state.in_flight {
        state.in_flight = false;
        EOIS.fetch_add(1, Ordering::Relaxed);
        set_masked(line, false);
    }
    Ok(0)
}

/// `PHYSDEVOP_irq_status_query`: every mapped pirq needs its EOI.
pub fn irq_status_query(vcpu: &Vcpu, arg: GuestVa) -> HcResult {
    check_device_domain(vcpu)?;
    let mut request: PhysdevIrqStatusQuery = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    let line = line_of_pirq(request.irq).ok_or(Errno::Einval)?;
    if !line.state.lock().mapped {
        return Err(Errno::Einval);
    }
    request.flags = XENIRQSTAT_NEEDS_EOI;
    uaccess::write_value(arg.0, &request).map_err(|_| Errno::Efault)?;
    Ok(0)
}

/// A device vector arrived (interrupts off): mask its pin and raise domain 0's port. Called
/// before the local APIC's EOI. False when `vector` is no device line's.
pub fn interrupt(vector: u8) -> bool {
    let Some(line) = LINES.get().and_then(|lines| lines.iter().find(|l| l.vector == vector)) else {
        return false;
    };
    let port = {
        let mut state = line.state.lock();
        set_masked(line, true);
        state.in_flight = true;
        state.port
    };
    let raised = port.is_some_and(|port| domain::lookup(DEVICE_DOMAIN).is_some_and(|dom0| crate::pv::events::raise_pirq(&dom0, port, line.gsi)));
    if raised {
        RAISED.fetch_add(1, Ordering::Relaxed);
    } else if UNCLAIMED.fetch_add(1, Ordering::Relaxed) < 4 {
        warn!("pirq: GSI {} interrupt with no bound port: left masked", line.gsi);
    }
    true
}

/// Interrupts raised as events, interrupts left masked with nobody bound, EOIs.
pub fn counts() -> (u64, u64, u64) {
    (RAISED.load(Ordering::Relaxed), UNCLAIMED.load(Ordering::Relaxed), EOIS.load(Ordering::Relaxed))
}
