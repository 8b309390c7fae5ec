//! Attacks on the vCPU limit: a domain may run only the vCPUs domain 0 (or its boot module
//! line, `vcpus=N`) gave it, one unless told otherwise. This one initialises and brings up
//! vCPUs 1 to 31, each with a complete context that would run (it blocks for good), and
//! then asks for vCPU 32 and `u32::MAX`, past the 32 `vcpu_info` slots.
//!
//! The hypervisor must refuse every one (`ENOENT`, as Xen's `VCPUOP_initialise` does for
//! an id at or past the domain's `max_vcpus`); before it enforced a limit it accepted all
//! 31, each a new vCPU on another CPU with the domain's whole weight. Called by `main`, on
//! a domain with one vCPU; this module must never start a vCPU that could disturb the
//! rest of the suite, should the hypervisor let it through.

use guest_rt::abi::ids::VcpuId;
use guest_rt::hypercall::{sched_block, sched_yield};
use guest_rt::smp::{self, VcpuStack};
use guest_rt::start_info::{self, start_info};

use crate::verdict::{Outcome, Tally};

/// The highest vCPU id a domain could ever have (the `vcpu_info` slots: 32).
const LAST_ID: u32 = 31;

/// The one stack every vCPU that wrongly starts shares: each only blocks, forever.
static STACK: VcpuStack<4096> = VcpuStack::new();

/// Runs the vCPU attacks.
pub fn run(tally: &mut Tally) {
    let Some(l4) = start_info::virt_to_mfn(start_info().pt_base) else {
        return;
    };
    let context = smp::context(block_forever, 0, STACK.top(), l4.0);
    let mut first_errno = None;
    let mut accepted = 0;
    for id in 1..=LAST_ID {
        // SAFETY: every vCPU started runs `block_forever` on STACK, which it never
        // touches (it blocks at once); the calls past the limit are refused.
        let initialised = unsafe { smp::initialise(VcpuId(id), &context) };
        let started = smp::up(VcpuId(id));
        for result in [initialised.map(drop), started.map(drop)] {
            match result {
                Ok(()) => accepted += 1,
                Err(error) => {
                    first_errno = first_errno.or(error.errno().map(|e| e.raw()));
                }
            }
        }
    }
    let outcome = match (accepted, first_errno) {
        (0, Some(errno)) => Outcome::Refused { errno: u64::from(errno.unsigned_abs()) },
        _ => Outcome::Succeeded,
    };
    tally.record(
        format_args!("initialise and bring up vCPUs 1..={LAST_ID} past its limit of 1 ({accepted} of {} calls accepted)", 2 * LAST_ID),
        outcome,
    );
    for id in [LAST_ID + 1, u32::MAX] {
        // SAFETY: refused (no such vCPU); none of them can run.
        let outcome = match unsafe { smp::initialise(VcpuId(id), &context) } {
            Ok(_) => Outcome::Succeeded,
            Err(error) => Outcome::Refused { errno: error.errno().map_or(0, |e| u64::from(e.raw().unsigned_abs())) },
        };
        tally.record(format_args!("initialise vCPU {id}, past the vcpu_info slots"), outcome);
    }
}

/// Where a wrongly started vCPU goes: it blocks (no event is ever bound to it), and
/// yields should a block return.
extern "C" fn block_forever(_: u64) -> ! {
    loop {
        let _ = sched_block();
        let _ = sched_yield();
    }
}
