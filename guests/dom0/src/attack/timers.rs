//! `attack=timers domains=N group=G hold_ms=H`: timers must not keep a destroyed domain in
//! the hypervisor's heap. Domain 0 creates `domains` (default 1000) CPU hogs of boot module
//! 1 (guest-vcpus with `far_timer`: each arms its one-shot timer a century ahead, then
//! spins), `group` (default 8) at a time, on CPU 1 but unpinned, so that idle CPU 0 steals
//! some of them after they armed their timers; after `hold_ms` (default 30) it destroys
//! the group and waits until it is gone.
//!
//! Before it reads the heap, domain 0 runs [`WARM_UP_PER_CPU`] such hogs pinned on each CPU
//! at once, so that every per-CPU table (vCPUs, run queue, timer queues) has grown to the
//! capacity it never shrinks below and the groups, smaller than that, end each in the same
//! state.
//!
//! A timer waits in the queue of the CPU it was armed on. When the timer queues kept the
//! vCPU (and through it the domain) alive, a vCPU that moved away left a timer behind that
//! held its whole domain in the heap for a century. At the end domain 0 must be alone and
//! free memory and the heap must read as before.

use guest_rt::abi::control::SchedParams;
use guest_rt::abi::ids::DomId;
use arrayvec::ArrayVec;
use guest_rt::control::{self, NewDomain};
use guest_rt::println;

use super::{settled, expect_as_before, option, phys, Compare, Failure, Waiter, MODULE};

/// The largest group.
const MAX_GROUP: usize = 32;
/// Domain 0's weight while it creates: the hogs it steals onto its CPU must not slow it.
const DOM0_WEIGHT: u32 = 16;
/// Hogs pinned on each CPU at once for the warm-up: more than half the per-CPU tables'
/// smallest capacity (16), so that each grows to it.
const WARM_UP_PER_CPU: u32 = 10;

pub fn run(waiter: Waiter, cmdline: &[u8]) -> Result<(), Failure> {
    let domains = option(cmdline, "domains").unwrap_or(1000);
    let group = option(cmdline, "group").unwrap_or(8).clamp(1, MAX_GROUP as u64) as usize;
    let hold_ms = option(cmdline, "hold_ms").unwrap_or(30);
    if phys()?.cpus < 2 {
        return Err(Failure::Setup("needs two CPUs"));
    }
    control::set_sched_params(DomId::DOM0, &SchedParams { weight: DOM0_WEIGHT, ..SchedParams::default() })
        .map_err(|e| Failure::Control("SetSchedParams", e))?;
    let spec = NewDomain {
        module: MODULE,
        mem_kib: 256,
        max_kib: 256,
        cpu: Some(1),
        pinned: false,
        params: SchedParams { weight: 1, ..SchedParams::default() },
        cmdline: b"vcpus=1 far_timer",
        paused: false,
        max_vcpus: 1,
        cpu_mask: 0,
        hostile: false,
    };
    warm_up_tables(waiter, &spec, hold_ms)?;
    let before = settled(waiter)?;
    let mut made = 0;
    while made < domains {
        let mut ids: ArrayVec<DomId, MAX_GROUP> = ArrayVec::new();
        while ids.len() < group && made < domains {
            ids.push(control::create_domain(&spec).map_err(|e| Failure::Control("CreateDomain", e))?);
            made += 1;
        }
        waiter.sleep_ms(hold_ms)?;
        destroy_and_wait(waiter, &ids)?;
    }
    let after = expect_as_before(waiter, &before, Compare::HeapWithin(2048), 5000)?;
    println!(
        "dom0: attack timers: {made} domains with far timers created and destroyed in groups of {group}; free {} KiB as before, heap {} bytes before and {} after",
        after.free_kib, before.heap_bytes, after.heap_bytes
    );
    Ok(())
}

/// Runs [`WARM_UP_PER_CPU`] hogs like `spec` pinned on each of CPUs 0 and 1 for `hold_ms`,
/// then destroys them and waits until they are gone.
fn warm_up_tables(waiter: Waiter, spec: &NewDomain<'_>, hold_ms: u64) -> Result<(), Failure> {
    let mut ids: ArrayVec<DomId, { 2 * WARM_UP_PER_CPU as usize }> = ArrayVec::new();
    for cpu in 0..2 {
        for _ in 0..WARM_UP_PER_CPU {
            let pinned = NewDomain { cpu: Some(cpu), pinned: true, ..*spec };
            ids.push(control::create_domain(&pinned).map_err(|e| Failure::Control("CreateDomain", e))?);
        }
    }
    waiter.sleep_ms(hold_ms.max(50))?;
    destroy_and_wait(waiter, &ids)
}

/// Destroys `ids` and waits until domain 0 is alone.
fn destroy_and_wait(waiter: Waiter, ids: &[DomId]) -> Result<(), Failure> {
    for &id in ids {
        control::destroy_domain(id).map_err(|e| Failure::Control("DestroyDomain", e))?;
    }
    let deadline = waiter.now() + 2_000_000_000;
    while phys()?.domains > 1 {
        if waiter.now() > deadline {
            return Err(Failure::Setup("destroyed domains did not go"));
        }
        waiter.sleep_ms(5)?;
    }
    Ok(())
}
