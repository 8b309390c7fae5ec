//! Argument structs of `sched_op` (sched.h). Command numbers and shutdown reasons are in
//! [`crate::hypercall`].
//!
//! The hypervisor's scheduler hypercalls read these from guest memory; our guests build
//! them. This module must never decide scheduling.

use crate::ids::DomId;
use crate::macros::assert_layout;

/// `SCHEDOP_shutdown` / `SCHEDOP_shutdown_code`: the reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SchedShutdown {
    /// A [`crate::hypercall::ShutdownReason`] number.
    pub reason: u32,
}

assert_layout!(SchedShutdown, size = 4, { reason @ 0 });

/// `SCHEDOP_poll`: block until one of `ports` is pending or `timeout` passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SchedPoll {
    /// Guest address of an array of `nr_ports` ports (`evtchn_port_t`).
    pub ports: u64,
    pub nr_ports: u32,
    pub _pad: u32,
    /// Absolute system time in ns; 0 means no timeout.
    pub timeout: u64,
}

assert_layout!(SchedPoll, size = 24, { ports @ 0, nr_ports @ 8, timeout @ 16 });

/// `SCHEDOP_remote_shutdown`: shut down another domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SchedRemoteShutdown {
    pub domain_id: DomId,
    pub _pad: u16,
    /// A [`crate::hypercall::ShutdownReason`] number.
    pub reason: u32,
}

assert_layout!(SchedRemoteShutdown, size = 8, { domain_id @ 0, reason @ 4 });
