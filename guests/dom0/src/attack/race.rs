//! `attack=races races=N seconds=S mem_kib=K`: domain 0 destroys a domain while it is
//! being created. Domain 0 needs two vCPUs (`vcpus=2` on its module line): vCPU 0 creates
//! domains of boot module 1 (paused, `mem_kib` each, default 128), and destroys each it
//! got; vCPU 1 meanwhile destroys, over and over, the id vCPU 0 is creating (and the one
//! after it, in case a failed creation took an id).
//!
//! Every other time, vCPU 1 goes on destroying the new domain after its creation returns,
//! racing vCPU 0's start of the domain and its own destruction of it (two destructions at
//! once: one of them used to find the vCPU list already taken and leave the vCPU runnable
//! in its CPU's queue, holding the whole domain record). A creation counts as raced when
//! vCPU 1 made at least one destroy call while it was in flight. The run stops after `races` raced creations (default 1000) or `seconds` (default
//! 10), whichever comes first. Before creation and destruction agreed, a destroy could
//! free the frames the builder was still writing, or find the domain before its
//! reservation was populated and leave the whole reservation to a domain no table named:
//! free memory came back short. At the end domain 0 must be alone and free memory and the
//! heap must read as before.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::control::SchedParams;
use guest_rt::abi::errno::Errno;
use guest_rt::abi::ids::{DomId, VcpuId};
use guest_rt::control::{self, NewDomain};
use guest_rt::hypercall::sched_yield;
use guest_rt::println;
use guest_rt::smp::{self, VcpuStack};

use super::{settled, expect_as_before, Compare, option,  warm_up, Failure, Waiter, MODULE};

/// The highest domain id; ids are handed out in sequence and wrap to 1 after it.
const MAX_DOMID: u32 = 4096;

/// The id vCPU 1 destroys (and the one after it); 0: none.
static TARGET: AtomicU32 = AtomicU32::new(0);
/// Destroy calls vCPU 1 made, and how many found a domain.
static DESTROY_CALLS: AtomicU64 = AtomicU64::new(0);
static DESTROYED: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
/// vCPU 1 runs (1) and has stopped (2).
static DESTROYER: AtomicU32 = AtomicU32::new(0);
static STACK: VcpuStack<16384> = VcpuStack::new();

fn next_id(id: u32) -> u32 {
    if id >= MAX_DOMID { 1 } else { id + 1 }
}

/// vCPU 1: destroys the target id and the one after it, in turn, until told to stop.
extern "C" fn destroyer(_: u64) -> ! {
    DESTROYER.store(1, Ordering::Release);
    let mut second = false;
    while !STOP.load(Ordering::Acquire) {
        let target = TARGET.load(Ordering::Acquire);
        if target == 0 {
            core::hint::spin_loop();
            continue;
        }
        let id = if second { next_id(target) } else { target };
        second = !second;
        if control::destroy_domain(DomId(id as u16)).is_ok() {
            DESTROYED.fetch_add(1, Ordering::Relaxed);
        }
        DESTROY_CALLS.fetch_add(1, Ordering::Release);
    }
    DESTROYER.store(2, Ordering::Release);
    loop {
        let _ = sched_yield();
    }
}

/// Yields until `ready` holds, at most `limit` times.
fn wait(limit: u32, ready: impl Fn() -> bool) -> bool {
    for _ in 0..limit {
        if ready() {
            return true;
        }
        let _ = sched_yield();
    }
    ready()
}

pub fn run(waiter: Waiter, cmdline: &[u8]) -> Result<(), Failure> {
    let races = option(cmdline, "races").unwrap_or(1000);
    let seconds = option(cmdline, "seconds").unwrap_or(10);
    let mem_kib = option(cmdline, "mem_kib").unwrap_or(128) as u32;
    smp::start(VcpuId(1), destroyer, 0, &STACK).map_err(|_| Failure::Setup("vCPU 1 did not start (vcpus=2 on domain 0's line?)"))?;
    if !wait(100_000, || DESTROYER.load(Ordering::Acquire) == 1) {
        return Err(Failure::Setup("vCPU 1 never ran"));
    }
    let spec = NewDomain {
        module: MODULE,
        mem_kib,
        max_kib: mem_kib,
        cpu: None,
        pinned: false,
        params: SchedParams { weight: 1, ..SchedParams::default() },
        cmdline: b"",
        paused: true,
        max_vcpus: 1,
        cpu_mask: 0,
        hostile: false,
    };
    // Measured with vCPU 1 up (its own structures stay while domain 0 lives).
    warm_up(waiter, &spec, 0)?;
    let before = settled(waiter)?;
    let deadline = waiter.now() + seconds * 1_000_000_000;
    let (mut creations, mut raced, mut created, mut own_destroys) = (0u64, 0u64, 0u64, 0u64);
    let mut refused = [0u64; 4]; // ESRCH, ENOMEM, EINVAL, other
    let mut next = 1;
    while raced < races && waiter.now() < deadline {
        TARGET.store(next, Ordering::Release);
        let calls = DESTROY_CALLS.load(Ordering::Acquire);
        let result = control::create_domain(&spec);
        // Every other creation vCPU 1 stops at once (a destroy of the finished domain costs
        // it the time the destruction takes); the others it goes on destroying the new
        // domain while vCPU 0 starts it and destroys it too.
        if creations % 2 == 0 {
            TARGET.store(0, Ordering::Release);
        }
        raced += u64::from(DESTROY_CALLS.load(Ordering::Acquire) > calls);
        creations += 1;
        match result {
            Ok(id) => {
                created += 1;
                next = next_id(u32::from(id.0));
                own_destroys += u64::from(control::destroy_domain(id).is_ok());
            }
            Err(error) => {
                // A failed creation may have taken the id.
                next = next_id(next);
                let slot = match error.errno() {
                    Some(Errno::Esrch) => 0,
                    Some(Errno::Enomem) => 1,
                    Some(Errno::Einval) => 2,
                    _ => 3,
                };
                refused[slot] += 1;
            }
        }
    }
    STOP.store(true, Ordering::Release);
    TARGET.store(0, Ordering::Release);
    if !wait(100_000, || DESTROYER.load(Ordering::Acquire) == 2) {
        return Err(Failure::Setup("vCPU 1 did not stop"));
    }
    println!("dom0: attack races: {creations} creations, {raced} raced by a destroy, {created} created");
    println!(
        "dom0: attack races: destroys by vcpu 1: {} of {} calls found a domain; by vcpu 0: {own_destroys}",
        DESTROYED.load(Ordering::Relaxed),
        DESTROY_CALLS.load(Ordering::Relaxed)
    );
    println!("dom0: attack races: creations failed: esrch {} enomem {} einval {} other {}", refused[0], refused[1], refused[2], refused[3]);
    let after = expect_as_before(waiter, &before, Compare::HeapWithin(4096), 5000)?;
    println!(
        "dom0: attack races: {raced} races; free {} KiB as before, heap {} bytes before and {} after",
        after.free_kib, before.heap_bytes, after.heap_bytes
    );
    Ok(())
}
