//! The event-channel close race, in two domains of this guest (two fatal attacks, each in
//! a domain of its own): `close_race` on two vCPUs, and `close_race_peer`, the domain with
//! the next id, which offers it ports.
//!
//! `EVTCHNOP_close` must lock the closing domain's table and, for an interdomain port, the
//! peer's; it learns the peer by reading the port, and to lock both tables in order it must
//! drop the lock it read under. A port closed and re-bound to another domain in between
//! must not be closed by the stale read: before the fix the hypervisor freed it and
//! unlinked the peer it had read (itself, for a loopback channel), so the new peer's port
//! stayed linked to a free port for good, an end no one could close or bind again.
//!
//! The attacker (`close_race`): vCPU 1 closes whatever port [`TARGET`] names, as fast as
//! it can; vCPU 0, round after round, makes a loopback channel (an offer to itself and a
//! bind to it: the port that goes in `TARGET`), closes that port itself and at once binds
//! the same number (the lowest free) to one of the peer's offers. Whenever vCPU 1's close
//! read the loopback peer and vCPU 0's close and bind both land before it locks, the race
//! is won. At the end vCPU 1 stops, the attacker closes every port it has, and each of the
//! peer's offers must bind again: one that does not is stuck. The attacker then tells the
//! peer (binding its last offer and sending on it), which checks the same from its side:
//! every offer unbound, offered to the attacker again. Console: "hostile: attack
//! close_race: R rounds (B rebound on the closing port), S of K offers stuck" and the
//! peer's "hostile: attack close_race_peer: K offers checked, S stuck"; either domain
//! crashes when S is not 0, else powers off.
//!
//! Options: `seconds=N` (the attacker's run, default 5). Called by [`crate::fatal`]; this
//! module must never return.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::event_channel::EvtchnState;
use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::abi::ids::{DomId, EvtchnPort, VcpuId};
use guest_rt::events::Events;
use guest_rt::evtchn;
use guest_rt::hypercall::{sched_block, sched_yield, shutdown};
use guest_rt::smp::{self, VcpuStack};
use guest_rt::time::Clock;
use guest_rt::{println, start_info};

use crate::targets::Targets;

/// Offers the peer makes to the attacker, the last of them the "done" port.
const OFFERS: usize = 9;
/// How long the attacker waits for the peer's offers, and the peer for the attacker.
const PEER_WAIT_NS: u64 = 30_000_000_000;
/// How long the peer waits for the attacker to finish.
const FINISH_WAIT_NS: u64 = 600_000_000_000;
/// The highest port number the attacker closes at the end.
const LAST_OWN_PORT: u32 = 64;

/// The port vCPU 1 closes (0: none).
static TARGET: AtomicU32 = AtomicU32::new(0);
/// vCPU 1 is asked to stop, and has stopped.
static STOP: AtomicBool = AtomicBool::new(false);
static STOPPED: AtomicBool = AtomicBool::new(false);
/// Closes vCPU 1 made that succeeded.
static CLOSES: AtomicU64 = AtomicU64::new(0);
static CLOSER_STACK: VcpuStack<8192> = VcpuStack::new();

/// The `seconds=` option.
fn seconds() -> u64 {
    core::str::from_utf8(start_info::cmd_line())
        .ok()
        .and_then(|line| line.split_ascii_whitespace().find_map(|w| w.strip_prefix("seconds=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn own_id() -> DomId {
    evtchn::own_domid().unwrap_or_else(|e| {
        println!("hostile: attack close_race: own domain id unknown ({e:?})");
        shutdown(ShutdownReason::Crash)
    })
}

fn clock() -> Clock {
    Clock::new().unwrap_or_else(|e| {
        println!("hostile: attack close_race: no clock ({e:?})");
        shutdown(ShutdownReason::Crash)
    })
}

/// The attacker: races vCPU 1's closes against its own close-and-rebind.
pub fn attacker(_targets: &Targets) -> ! {
    let clock = clock();
    let peer = DomId(own_id().0 + 1);
    println!("hostile: attack close_race: racing close against close-and-rebind, peer d{}", peer.0);
    let offers = find_offers(peer, clock);
    let (done_port, offers) = offers.split_last().expect("OFFERS > 1");
    if let Err(e) = smp::start(VcpuId(1), closer, 0, &CLOSER_STACK) {
        println!("hostile: attack close_race: vCPU 1 refused ({e:?}): run with vcpus=2");
        shutdown(ShutdownReason::Crash)
    }
    let deadline = clock.now_ns() + seconds() * 1_000_000_000;
    let (mut rounds, mut rebound, mut busy) = (0u64, 0u64, 0u64);
    while clock.now_ns() < deadline {
        let peer_port = offers[rounds as usize % offers.len()];
        rounds += 1;
        let Ok(offer) = evtchn::alloc_unbound(DomId::SELF) else { continue };
        let Ok(port) = evtchn::bind_interdomain(DomId::SELF, offer) else {
            let _ = evtchn::close(offer);
            continue;
        };
        TARGET.store(port.0, Ordering::SeqCst);
        // The race: this close and bind against vCPU 1's close of the same port.
        let _ = evtchn::close(port);
        match evtchn::bind_interdomain(peer, peer_port) {
            Ok(bound) => {
                rebound += u64::from(bound == port);
                let _ = evtchn::close(bound);
            }
            Err(_) => busy += 1,
        }
        TARGET.store(0, Ordering::SeqCst);
        let _ = evtchn::close(offer);
    }
    STOP.store(true, Ordering::SeqCst);
    while !STOPPED.load(Ordering::SeqCst) {
        let _ = sched_yield();
    }
    for port in 1..=LAST_OWN_PORT {
        let _ = evtchn::close(EvtchnPort(port));
    }
    let stuck = offers
        .iter()
        .filter(|&&offer| match evtchn::bind_interdomain(peer, offer) {
            Ok(bound) => {
                let _ = evtchn::close(bound);
                false
            }
            Err(_) => true,
        })
        .count();
    println!(
        "hostile: attack close_race: {rounds} rounds ({rebound} rebound on the closing port, {busy} binds refused, {} closes by vCPU 1), {stuck} of {} offers stuck{}",
        CLOSES.load(Ordering::Relaxed),
        offers.len(),
        if stuck > 0 { " (BUG)" } else { "" }
    );
    // Tell the peer: bind its last offer and send on it.
    match evtchn::bind_interdomain(peer, *done_port) {
        Ok(port) => {
            let _ = evtchn::send(port);
        }
        Err(e) => println!("hostile: attack close_race: could not tell the peer ({e:?})"),
    }
    shutdown(if stuck > 0 { ShutdownReason::Crash } else { ShutdownReason::Poweroff })
}

/// Finds the peer's offers to this domain by binding each port number in turn (and closing
/// the bind), sweep after sweep until the peer has made them all.
fn find_offers(peer: DomId, clock: Clock) -> [EvtchnPort; OFFERS] {
    let deadline = clock.now_ns() + PEER_WAIT_NS;
    loop {
        let mut offers = [EvtchnPort(0); OFFERS];
        let mut found = 0;
        for port in (1..=LAST_OWN_PORT).map(EvtchnPort) {
            if let Ok(bound) = evtchn::bind_interdomain(peer, port) {
                let _ = evtchn::close(bound);
                offers[found] = port;
                found += 1;
                if found == OFFERS {
                    return offers;
                }
            }
        }
        if clock.now_ns() > deadline {
            println!("hostile: attack close_race: the peer d{} offered {found} ports", peer.0);
            shutdown(ShutdownReason::Crash)
        }
        let _ = sched_yield();
    }
}

/// vCPU 1: closes the port vCPU 0 names until asked to stop.
extern "C" fn closer(_: u64) -> ! {
    while !STOP.load(Ordering::SeqCst) {
        let port = TARGET.load(Ordering::SeqCst);
        if port != 0 && evtchn::close(EvtchnPort(port)).is_ok() {
            CLOSES.fetch_add(1, Ordering::Relaxed);
        }
    }
    STOPPED.store(true, Ordering::SeqCst);
    loop {
        let _ = sched_block();
    }
}

/// The peer: offers ports to the attacker (the domain before it), waits for its word on
/// the last one, then checks that every other offer is unbound again.
pub fn peer(_targets: &Targets) -> ! {
    let clock = clock();
    let attacker = DomId(own_id().0 - 1);
    let mut offers = [EvtchnPort(0); OFFERS];
    for offer in &mut offers {
        *offer = evtchn::alloc_unbound(attacker).unwrap_or_else(|e| {
            println!("hostile: attack close_race_peer: offer refused ({e:?})");
            shutdown(ShutdownReason::Crash)
        });
    }
    println!("hostile: attack close_race_peer: {OFFERS} ports offered to d{}", attacker.0);
    let (done_port, offers) = offers.split_last().expect("OFFERS > 1");
    let events = Events::init().unwrap_or_else(|e| {
        println!("hostile: attack close_race_peer: no events ({e:?})");
        shutdown(ShutdownReason::Crash)
    });
    let deadline = clock.now_ns() + FINISH_WAIT_NS;
    // The attacker binds the last offer and sends on it; it may be gone again (and the
    // offer unbound) by the time this looks, but the send left the port pending.
    while !is_pending(*done_port) && clock.now_ns() < deadline {
        let _ = events.poll(&[*done_port], clock.now_ns() + 100_000_000);
    }
    let stuck = offers
        .iter()
        .filter(|&&offer| match evtchn::status(DomId::SELF, offer) {
            Ok(status) => status.state() != Some(EvtchnState::Unbound) || status.remote_dom() != attacker,
            Err(_) => true,
        })
        .count();
    println!(
        "hostile: attack close_race_peer: {} offers checked, {stuck} stuck{}",
        offers.len(),
        if stuck > 0 { " (BUG)" } else { "" }
    );
    shutdown(if stuck > 0 { ShutdownReason::Crash } else { ShutdownReason::Poweroff })
}

/// Whether `port` is pending in this domain's shared-info page (mapped by `Events::init`).
fn is_pending(port: EvtchnPort) -> bool {
    let Some(page) = guest_rt::shared_info::shared_info() else { return false };
    let (word, bit) = (port.0 as usize / 64, port.0 % 64);
    // SAFETY: the page stays mapped; the hypervisor writes the word concurrently, hence a
    // volatile read of one naturally aligned word.
    let pending = unsafe { core::ptr::addr_of!((*page.as_ptr()).evtchn_pending[word]).read_volatile() };
    pending >> bit & 1 != 0
}
