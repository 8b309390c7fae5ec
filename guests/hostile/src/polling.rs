//! Attacks on `sched_op poll` through the port numbers the hypervisor uses as markers: a
//! poll of port 0xffffffff (and of 0xfffffffe) must be refused like any port beyond the
//! domain's limit. Were a port taken for the "not polling" marker, the vCPU would stay
//! blocked for good (issue 15, item 14): this guest would hang here.
//!
//! `main` calls [`run`] in the survivable suite. No timeout is given, so a poll the
//! hypervisor wrongly accepts blocks until an event that never comes.

use guest_rt::abi::hypercall::{Hypercall, SchedOp};
use guest_rt::abi::sched::SchedPoll;
use guest_rt::hypercall::hypercall2;

use crate::verdict::{Outcome, Tally};

/// Polls the ports `u32::MAX` and `u32::MAX - 1`, one at a time.
pub fn run(tally: &mut Tally) {
    for port in [u32::MAX, u32::MAX - 1] {
        let ports = [port];
        let request = SchedPoll { ports: ports.as_ptr() as u64, nr_ports: 1, _pad: 0, timeout: 0 };
        // SAFETY: the hypervisor reads the request and the one port; it must refuse the port
        // and return at once.
        let ret = unsafe { hypercall2(Hypercall::SchedOp, SchedOp::Poll.raw().into(), &raw const request as u64) };
        tally.record(format_args!("sched_op poll of port {port:#x}"), Outcome::of_call(ret));
    }
}
