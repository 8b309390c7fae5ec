//! Attacks on the machine's time and the other domains' events rather than on memory:
//! each runs until domain 0 destroys the domain (the containment cycles of `make fuzz`),
//! and must stop neither the machine nor anyone else.
//!
//! - `spin_masked`: masks event delivery and spins forever. The hypervisor's own timer
//!   interrupt must still take the CPU away from it (guest event masks are no interrupt
//!   masks): every other domain keeps running.
//! - `flood_dom0`: binds to a port domain 0 left unbound for it and sends events on it as
//!   fast as it can: domain 0 and everyone else keep running.
//! - `console_blocked`: writes 16 KiB to the console again and again with a 1 ms timer
//!   armed, so that it spends its life blocked waiting for room in the console buffer
//!   (woken by each expiry, it waits again): domain 0 destroys it while it waits, and the
//!   next domain may get its id (the list of waiting writers is by domain id).
//! - `exhaust_ports_timers`: allocates ports until the hypervisor refuses (its per-domain
//!   limit, or the heap room it keeps), binds every VIRQ it can, then re-arms its one-shot
//!   timer in a tight loop with deadlines just ahead, so that the hypervisor's timer queue
//!   churns, checking now and then that a further port is still refused.
//!
//! Registered in [`crate::fatal`]'s table (`attack=<name>`); each prints
//! "hostile: attack <name>: ..." before it starts. None ever returns.

use guest_rt::abi::hypercall::{ShutdownReason, Virq};
use guest_rt::abi::ids::{DomId, EvtchnPort, VcpuId};
use guest_rt::hypercall::{self, shutdown};
use guest_rt::time::Clock;
use guest_rt::{evtchn, println, shared_info};

use crate::targets::Targets;

/// Ports domain 0 may have left for this domain.
const DOM0_PORTS: u32 = 64;

pub fn spin_masked(_: &Targets) -> ! {
    let Ok(page) = shared_info::map_shared_info() else {
        println!("hostile: attack spin_masked: could not map the shared info page");
        shutdown(ShutdownReason::Crash)
    };
    // SAFETY: vcpu_info[0].evtchn_upcall_mask of the mapped shared info page; the
    // hypervisor reads it concurrently, hence a volatile write.
    unsafe { core::ptr::addr_of_mut!((*page.as_ptr()).vcpu_info[0].evtchn_upcall_mask).write_volatile(1) };
    println!("hostile: attack spin_masked: spinning with events masked, forever");
    loop {
        core::hint::spin_loop();
    }
}

pub fn flood_dom0(_: &Targets) -> ! {
    let port = (1..=DOM0_PORTS).find_map(|p| evtchn::bind_interdomain(DomId::DOM0, EvtchnPort(p)).ok());
    let Some(port) = port else {
        println!("hostile: attack flood_dom0: refused (no port of domain 0 names this domain)");
        shutdown(ShutdownReason::Poweroff)
    };
    println!("hostile: attack flood_dom0: sending events to domain 0 on port {}, forever", port.0);
    let mut sent = 0u64;
    loop {
        if evtchn::send(port).is_ok() {
            sent += 1;
        }
        if sent == 1 << 20 {
            println!("hostile: attack flood_dom0: {sent} events sent");
        }
    }
}

pub fn exhaust_ports_timers(_: &Targets) -> ! {
    let mut ports = 0u32;
    let refusal = loop {
        match evtchn::alloc_unbound(DomId::SELF) {
            Ok(_) => ports += 1,
            Err(error) => break error,
        }
    };
    let mut virqs = 0;
    for virq in [Virq::Timer, Virq::Debug, Virq::Console, Virq::DomExc] {
        for vcpu in 0..4 {
            virqs += u32::from(evtchn::bind_virq(virq, VcpuId(vcpu)).is_ok());
        }
    }
    println!(
        "hostile: attack exhaust_ports_timers: {ports} ports until {refusal:?}, {virqs} VIRQs bound; re-arming the timer forever"
    );
    let Ok(clock) = Clock::new() else { shutdown(ShutdownReason::Crash) };
    let mut armed = 0u64;
    loop {
        let _ = hypercall::set_timer_op(clock.now_ns() + 1_000 + armed % 50_000);
        armed += 1;
        if armed.is_multiple_of(4096) && evtchn::alloc_unbound(DomId::SELF).is_ok() {
            println!("hostile: attack exhaust_ports_timers: a port past the limit SUCCEEDED (BUG)");
        }
    }
}

/// Bytes of each of `console_blocked`'s writes.
const BLOCKED_WRITE_BYTES: usize = 16 << 10;

/// The text `console_blocked` writes, filled once at start.
struct Text(core::cell::UnsafeCell<[u8; BLOCKED_WRITE_BYTES]>);
// SAFETY: written once by vCPU 0 before any read; only vCPU 0 runs.
unsafe impl Sync for Text {}
static TEXT: Text = Text(core::cell::UnsafeCell::new([0; BLOCKED_WRITE_BYTES]));

pub fn console_blocked(_: &Targets) -> ! {
    // SAFETY: only vCPU 0 runs, and nothing else references the text yet.
    let text = unsafe { &mut *TEXT.0.get() };
    for line in text.chunks_mut(128) {
        line.fill(b'b');
        line[..24].copy_from_slice(b"hostile: console_blocked");
        line[127] = b'\n';
    }
    let text: &[u8] = text;
    let (Ok(events), Ok(clock)) = (guest_rt::events::Events::init(), Clock::new()) else {
        println!("hostile: attack console_blocked: no events or clock");
        shutdown(ShutdownReason::Crash)
    };
    if guest_rt::timer::Timer::bind(events).is_err() {
        println!("hostile: attack console_blocked: no timer");
        shutdown(ShutdownReason::Crash)
    }
    events.enable();
    println!("hostile: attack console_blocked: console writes of {BLOCKED_WRITE_BYTES} bytes with a 1 ms timer, forever");
    loop {
        let _ = guest_rt::timer::set_deadline(clock.now_ns() + 1_000_000);
        let _ = hypercall::console_write(text);
    }
}
