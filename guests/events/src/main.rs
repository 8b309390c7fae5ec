//! Checks the hypervisor's event and timer paths from inside a guest, and says which held:
//! `sched_op poll` (timeout, a port becoming pending, a port already pending, too many
//! ports refused), blocking until a timer event, and a timer storm (thousands of re-armed,
//! cancelled and already-expired one-shot timers, with a wait for the last). Several copies
//! on several CPUs make the storm concurrent. Any failure panics, which crashes the domain
//! and fails the run.

#![no_std]
#![no_main]

use guest_rt::abi::ids::EvtchnPort;
use guest_rt::events::Events;
use guest_rt::abi::errno::Errno;
use guest_rt::time::Clock;
use guest_rt::timer::{self, Timer};
use guest_rt::{println, StartInfo};

guest_rt::entry!(main);

const US: u64 = 1_000;
const MS: u64 = 1_000 * US;
/// Timers re-armed in the storm.
const STORM: u64 = 20_000;

fn main(_start: &'static StartInfo) {
    let clock = Clock::new().expect("time info");
    let events = Events::init().expect("events");
    let timer = Timer::bind(events).expect("timer VIRQ");
    poll_times_out(events, timer, clock);
    poll_wakes_on_its_port(events, timer, clock);
    poll_returns_at_once_when_pending(events, timer, clock);
    poll_refuses_too_many_ports(events);
    block_until_the_timer(events, timer, clock);
    timer_storm(events, timer, clock);
    println!("events: all ok");
}

/// Nothing pending, no timer: the poll returns at its timeout, not before.
fn poll_times_out(events: Events, timer: Timer, clock: Clock) {
    events.disable();
    timer::cancel().expect("cancel");
    let start = clock.now_ns();
    events.poll(&[timer.port()], start + 2 * MS).expect("poll");
    let waited = clock.now_ns() - start;
    assert!(waited >= 2 * MS, "poll returned after {waited} ns, before its 2 ms timeout");
    println!("events: poll timeout ok ({} us)", waited / US);
}

/// The timer's port becomes pending while polled (events masked): the poll ends then.
fn poll_wakes_on_its_port(events: Events, timer: Timer, clock: Clock) {
    events.disable();
    let before = timer.fired();
    let start = clock.now_ns();
    timer::set_deadline(start + MS).expect("set timer");
    events.poll(&[EvtchnPort(0), timer.port()], start + 5_000 * MS).expect("poll");
    let waited = clock.now_ns() - start;
    assert!(waited >= MS, "woken after {waited} ns, before the timer");
    assert!(waited < 2_000 * MS, "the pending port did not end the poll ({waited} ns)");
    assert_eq!(timer.fired(), before, "the handler ran while events were off");
    events.enable();
    assert_eq!(timer.fired(), before + 1, "the event was not left pending for the handler");
    println!("events: poll woken by its port ok ({} us)", waited / US);
}

/// A port already pending makes the poll return at once, timer or not.
fn poll_returns_at_once_when_pending(events: Events, timer: Timer, clock: Clock) {
    events.disable();
    let now = clock.now_ns();
    timer::set_deadline(now).expect("set timer");
    // The deadline is past: the port is pending before the poll starts.
    let start = clock.now_ns();
    events.poll(&[timer.port()], 0).expect("poll without timeout");
    let waited = clock.now_ns() - start;
    events.enable();
    assert!(waited < 1_000 * MS, "a pending port still blocked the poll for {waited} ns");
    println!("events: poll of a pending port ok");
}

fn poll_refuses_too_many_ports(events: Events) {
    let ports = [EvtchnPort(1); 129];
    match events.poll(&ports, 1) {
        Err(e) if e.errno() == Some(Errno::Einval) => println!("events: poll of 129 ports refused ok"),
        other => panic!("poll of 129 ports: {other:?}"),
    }
}

/// `sched_op block` until the timer's event, with events on.
fn block_until_the_timer(events: Events, timer: Timer, clock: Clock) {
    events.enable();
    let start = clock.now_ns();
    let fired = timer.sleep_until(start + 3 * MS).expect("sleep");
    assert!(fired >= start + 3 * MS, "woken {} ns early", start + 3 * MS - fired);
    println!("events: block until the timer ok ({} us late)", (fired - start - 3 * MS) / US);
}

/// Re-arms the timer thousands of times (near, past and cancelled deadlines), waiting for
/// some of them, then for the last: every timer armed and waited for must fire, and
/// nothing may be lost or fire twice on the way.
fn timer_storm(events: Events, timer: Timer, clock: Clock) {
    events.enable();
    let mut waited_for = 0;
    for i in 0..STORM {
        let now = clock.now_ns();
        match i % 5 {
            0 => timer::set_deadline(now.saturating_sub(MS)).expect("past deadline"),
            1 => timer::cancel().expect("cancel"),
            _ => timer::set_deadline(now + (i % 7) * 20 * US).expect("near deadline"),
        }
        if i % 500 == 499 {
            let deadline = clock.now_ns() + 50 * US;
            timer.sleep_until(deadline).expect("sleep in the storm");
            waited_for += 1;
        }
    }
    let last = clock.now_ns() + MS;
    let fired = timer.sleep_until(last).expect("last sleep");
    assert!(fired >= last, "the last timer fired early");
    println!(
        "events: timer storm ok ({STORM} timers re-armed, {} waited for, {} fired)",
        waited_for + 1,
        timer.fired()
    );
}
