//! A fault inside the hypervisor while it serves a hypercall (a guest pointer to an unmapped
//! page: `uaccess` takes the page fault and resumes at its fix-up) must not be a scheduling
//! point. The trap exit of that nested fault returns to hypervisor code, in the middle of
//! the hypercall; before the fix the scheduler ran there like on the way out to a guest,
//! and once the vCPU's slice had run out it switched vCPUs on the nested frame: the ring-0
//! frame of the hypercall in progress was saved as the guest's registers (and another
//! vCPU's loaded in its place, or the per-CPU scheduler state found re-entered, when the
//! hypercall itself was inside the scheduler).
//!
//! `attack=nested_fault` (three vCPUs, `vcpus=3`): vCPUs 1 and 2 spin, so that vCPU 0's
//! CPU always has another vCPU waiting and its slices run out; vCPU 0 makes `console_io`
//! writes from an unmapped page for `seconds=N` (default 5), each of which must fail with
//! `EFAULT`. Console: "hostile: attack nested_fault: N faulting hypercalls, all EFAULT"
//! and power-off; anything else is reported and crashes the domain. Called by
//! [`crate::fatal`]; this module must never return.

use guest_rt::abi::errno::Errno;
use guest_rt::abi::hypercall::{ConsoleIoOp, Hypercall, ShutdownReason};
use guest_rt::abi::ids::VcpuId;
use guest_rt::hypercall::{decode, hypercall3, shutdown};
use guest_rt::smp::{self, VcpuStack};
use guest_rt::time::Clock;
use guest_rt::{println, start_info};

use crate::targets::Targets;

static STACKS: [VcpuStack<4096>; 2] = [const { VcpuStack::new() }; 2];

fn seconds() -> u64 {
    core::str::from_utf8(start_info::cmd_line())
        .ok()
        .and_then(|line| line.split_ascii_whitespace().find_map(|w| w.strip_prefix("seconds=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

pub fn run(targets: &Targets) -> ! {
    println!("hostile: attack nested_fault: hypercalls that fault in the hypervisor while other vCPUs wait");
    let clock = Clock::new().unwrap_or_else(|_| shutdown(ShutdownReason::Crash));
    for (i, stack) in STACKS.iter().enumerate() {
        if let Err(e) = smp::start(VcpuId(i as u32 + 1), spin, 0, stack) {
            println!("hostile: attack nested_fault: vCPU {} refused ({e:?}): run with vcpus=3", i + 1);
            shutdown(ShutdownReason::Crash)
        }
    }
    let deadline = clock.now_ns() + seconds() * 1_000_000_000;
    let (mut calls, mut other) = (0u64, 0u64);
    while clock.now_ns() < deadline {
        for _ in 0..64 {
            // SAFETY: the hole is an unmapped page of the guest's own range: the hypervisor
            // faults reading it and must answer EFAULT; nothing is written.
            let ret = unsafe { hypercall3(Hypercall::ConsoleIo, ConsoleIoOp::Write.raw().into(), 16, targets.hole) };
            calls += 1;
            if decode(ret).err().and_then(|e| e.errno()) != Some(Errno::Efault) {
                other += 1;
            }
        }
    }
    if other == 0 {
        println!("hostile: attack nested_fault: {calls} faulting hypercalls, all EFAULT");
        shutdown(ShutdownReason::Poweroff)
    }
    println!("hostile: attack nested_fault: {calls} faulting hypercalls, {other} answered otherwise (BUG)");
    shutdown(ShutdownReason::Crash)
}

extern "C" fn spin(_: u64) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
