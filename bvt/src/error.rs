//! Why a run queue refused an operation.
//!
//! Returned by [`RunQueue`](crate::RunQueue) methods and carried in
//! [`Action::Bounced`](crate::Action::Bounced); the hypervisor matches on it (a message for a
//! vCPU that has moved on is re-posted, anything else is its own bug).

use core::fmt;

/// A run queue operation that could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BvtError {
    /// The vCPU is not on this run queue (never added, removed, or migrated away).
    UnknownVcpu,
    /// The vCPU is already on this run queue.
    AlreadyQueued,
}

impl fmt::Display for BvtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BvtError::UnknownVcpu => "vCPU is not on this run queue",
            BvtError::AlreadyQueued => "vCPU is already on this run queue",
        })
    }
}
