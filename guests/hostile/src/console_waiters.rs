//! `console_waiters`: a `console_io` write that waits for room in the console buffer,
//! woken again and again by events, so that it waits again each time (review of the
//! blocking console write, issue 18).
//!
//! A write that finds its domain's share of the console buffer full blocks its vCPU and
//! lists it among the waiters (`pv::console::WAITERS`, a fixed list of 4096). Any event
//! wakes a blocked vCPU; the woken vCPU takes its upcall, re-enters its write (the
//! continuation), finds the buffer still full and waits again. Before the fix each such wait
//! listed the vCPU once more: vCPU 1 sending events on an IPI port of vCPU 0 as fast as it
//! can made one write list vCPU 0 thousands of times, which filled the list (every other
//! domain's waiting writer then spun on its continuation instead of blocking), and every
//! trap exit of every CPU passed over the whole list, each entry a domain lookup, while the
//! domain's share stayed full. The hypervisor's summary says how long the list grew
//! (`console.waiters_high_water`) and how many waits found it full (`console.waiters_full`):
//! the QEMU case `iso-console-waiters` bounds both.
//!
//! vCPU 0: events on (an IPI port of its own, handled by counting), then [`WRITES`] writes
//! of [`WRITE_BYTES`] of 128-byte lines each (the first ones fill the share and wait; once
//! the domain's rate budget is spent its lines are dropped and the writes return). vCPU 1
//! sends on the port until vCPU 0 is done. Console: "hostile: attack console_waiters: W
//! writes, E events taken while writing", then it powers off. Called by [`crate::fatal`];
//! never returns.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::abi::ids::{EvtchnPort, VcpuId};
use guest_rt::events::Events;
use guest_rt::evtchn;
use guest_rt::hypercall::{console_write, sched_yield, shutdown};
use guest_rt::println;
use guest_rt::smp::{self, VcpuStack};
use guest_rt::time::Clock;

use crate::targets::Targets;

/// Bytes of each write (lines of 128 bytes).
const WRITE_BYTES: usize = 16 << 10;
/// Writes made.
const WRITES: usize = 4;
/// How long it rests before its verdict, for its console rate budget to refill.
const REST_NS: u64 = 500_000_000;

static TEXT: Text = Text(core::cell::UnsafeCell::new([0; WRITE_BYTES]));
/// The IPI port vCPU 1 sends on (0 until bound).
static PORT: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicBool = AtomicBool::new(false);
static SENDER_DONE: AtomicBool = AtomicBool::new(false);
static TAKEN: AtomicU64 = AtomicU64::new(0);
static SENT: AtomicU64 = AtomicU64::new(0);
static SENDER_STACK: VcpuStack<8192> = VcpuStack::new();

/// The text written, filled once by vCPU 0 before vCPU 1 starts.
struct Text(core::cell::UnsafeCell<[u8; WRITE_BYTES]>);
// SAFETY: written by vCPU 0 only, before any other vCPU runs; read-only afterwards.
unsafe impl Sync for Text {}

fn taken(_port: EvtchnPort) {
    TAKEN.fetch_add(1, Ordering::Relaxed);
}

extern "C" fn sender(_: u64) -> ! {
    let port = EvtchnPort(PORT.load(Ordering::SeqCst) as u32);
    while !DONE.load(Ordering::SeqCst) {
        if evtchn::send(port).is_ok() {
            SENT.fetch_add(1, Ordering::Relaxed);
        }
    }
    SENDER_DONE.store(true, Ordering::SeqCst);
    loop {
        let _ = sched_yield();
    }
}

pub fn attack(_targets: &Targets) -> ! {
    println!("hostile: attack console_waiters: console writes woken by events again and again");
    // SAFETY: no other vCPU runs yet; nothing else references the text.
    let text = unsafe { &mut *TEXT.0.get() };
    for (i, line) in text.chunks_mut(128).enumerate() {
        let prefix = b"hostile: console_waiters line ";
        line.fill(b'w');
        line[..prefix.len()].copy_from_slice(prefix);
        let mut number = i;
        for digit in line[prefix.len()..prefix.len() + 4].iter_mut().rev() {
            *digit = b'0' + (number % 10) as u8;
            number /= 10;
        }
        line[127] = b'\n';
    }
    let Ok(events) = Events::init() else {
        println!("hostile: attack console_waiters: no events");
        shutdown(ShutdownReason::Crash)
    };
    let Ok(port) = evtchn::bind_ipi(VcpuId(0)) else {
        println!("hostile: attack console_waiters: no IPI port");
        shutdown(ShutdownReason::Crash)
    };
    if events.set_handler(port, taken).is_err() {
        shutdown(ShutdownReason::Crash)
    }
    events.enable();
    PORT.store(u64::from(port.0), Ordering::SeqCst);
    if let Err(e) = smp::start(VcpuId(1), sender, 0, &SENDER_STACK) {
        println!("hostile: attack console_waiters: vCPU 1 refused ({e:?}): run with vcpus=2");
        shutdown(ShutdownReason::Crash)
    }
    let text: &[u8] = text;
    let mut writes = 0;
    for _ in 0..WRITES {
        if console_write(text).is_ok() {
            writes += 1;
        }
    }
    DONE.store(true, Ordering::SeqCst);
    while !SENDER_DONE.load(Ordering::SeqCst) {
        let _ = sched_yield();
    }
    // The flood spent the domain's console rate budget: let it refill before the verdict.
    if let Ok(clock) = Clock::new() {
        let until = clock.now_ns() + REST_NS;
        while clock.now_ns() < until {
            let _ = sched_yield();
        }
    }
    println!(
        "hostile: attack console_waiters: {writes} writes, {} events taken while writing ({} sent)",
        TAKEN.load(Ordering::Relaxed),
        SENT.load(Ordering::Relaxed)
    );
    shutdown(ShutdownReason::Poweroff)
}
