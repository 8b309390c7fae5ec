//! guest-vcpus: a CPU hog on several vCPUs. Its command line says how many (`vcpus=N`,
//! default 1, at most [`MAX_VCPUS`]) and whether each arms its one-shot timer far in the
//! future first (`far_timer`): vCPU 0 brings up vCPUs 1..N with `VCPUOP_initialise` and
//! `VCPUOP_up`, then every vCPU spins forever, without a hypercall, until domain 0
//! destroys the domain.
//!
//! Domain 0's checks create it: the CPU share of a domain with several vCPUs against a
//! one-vCPU hog of the same weight (each vCPU is charged only its part of the domain's
//! weight), and the far timers that must not keep a destroyed domain in the hypervisor's
//! heap when its vCPU moved to another CPU. Console: "vcpus: N vCPUs spinning" once every
//! vCPU it asked for is up, or "vcpus: vCPU k refused: <error>" (it then spins on those it
//! has). It must never end by itself.
//!
//! With `ticker_us=T` (and `busy_us=B`, default 0) it does not spin: vCPU 0 arms its
//! one-shot timer T us ahead and blocks, then spins B us, again and again, forever
//! ("vcpus: ticking every T us, busy B us"): a domain that wakes often, for domain 0's check of what its wake-ups cost the CPU's other
//! domains when it is latency-sensitive (warped: its timers are programmed early and the
//! rest waited out by the hypervisor).

#![no_std]
#![no_main]

use guest_rt::abi::ids::VcpuId;
use guest_rt::hypercall::set_timer_op;
use guest_rt::smp::{self, VcpuStack};
use guest_rt::{println, StartInfo};

guest_rt::entry!(main);

/// The most vCPUs it brings up.
const MAX_VCPUS: usize = 8;
/// A secondary vCPU's stack: it only spins.
const STACK_SIZE: usize = 4096;
/// The far timer's deadline, in system-time ns: a century away.
const FAR_DEADLINE_NS: u64 = 1 << 62;

static STACKS: [VcpuStack<STACK_SIZE>; MAX_VCPUS] = [const { VcpuStack::new() }; MAX_VCPUS];

fn main(start: &'static StartInfo) {
    let line = core::str::from_utf8(start.cmd_line()).unwrap_or("");
    let vcpus = line
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("vcpus="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, MAX_VCPUS);
    let far_timer = line.split_ascii_whitespace().any(|w| w == "far_timer");
    if let Some(period_us) = line.split_ascii_whitespace().find_map(|w| w.strip_prefix("ticker_us=")).and_then(|v| v.parse::<u64>().ok()) {
        let busy_us = line.split_ascii_whitespace().find_map(|w| w.strip_prefix("busy_us=")).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        tick(period_us.max(1), busy_us)
    }
    let mut up = 1;
    for (id, stack) in STACKS.iter().enumerate().take(vcpus).skip(1) {
        match smp::start(VcpuId(id as u32), secondary, u64::from(far_timer), stack) {
            Ok(()) => up += 1,
            Err(error) => println!("vcpus: vCPU {id} refused: {error:?}"),
        }
    }
    println!("vcpus: {up} vCPUs spinning{}", if far_timer { ", each with a far timer" } else { "" });
    spin(far_timer)
}

extern "C" fn secondary(far_timer: u64) -> ! {
    spin(far_timer != 0)
}

/// Arms the far timer if asked, then spins forever.
fn spin(far_timer: bool) -> ! {
    if far_timer {
        // A refusal only means no timer: the spin is what matters.
        let _ = set_timer_op(FAR_DEADLINE_NS);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// Arms the one-shot timer `period_us` ahead and blocks until it fires, then spins
/// `busy_us`, forever.
fn tick(period_us: u64, busy_us: u64) -> ! {
    let setup = guest_rt::events::Events::init()
        .ok()
        .and_then(|events| guest_rt::timer::Timer::bind(events).ok().map(|timer| (events, timer)))
        .zip(guest_rt::time::Clock::new().ok());
    let Some(((events, timer), clock)) = setup else {
        println!("vcpus: ticker: no events, timer or clock");
        spin(false)
    };
    events.enable();
    println!("vcpus: ticking every {period_us} us, busy {busy_us} us");
    loop {
        let woke = timer.sleep_until(clock.now_ns() + period_us * 1000).unwrap_or(0);
        while clock.now_ns() < woke + busy_us * 1000 {
            core::hint::spin_loop();
        }
    }
}
