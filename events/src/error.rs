//! Why an event-channel operation failed, and the Xen error number the guest sees for it.
//!
//! Every fallible function of the table and the poll check returns [`EventError`]; the
//! hypercall layer converts it with [`EventError::errno`] in one place. Errors that need
//! knowledge this crate lacks (no such domain: `ESRCH`; not privileged: `EPERM`; a guest
//! address that faults: `EFAULT`) are the caller's. This module must never decide policy.

use abi::errno::Errno;

/// An event-channel operation's failure. Each variant names its `Errno`, which follows
/// Xen's `event_channel.c` and `do_poll`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventError {
    /// `EINVAL`: the port is beyond the domain's limit (or the 2-level ABI's 4096).
    InvalidPort,
    /// `EINVAL`: the port exists but its state forbids the operation (closing a free port,
    /// sending on a VIRQ, rebinding an IPI, touching reserved port 0, ...).
    WrongState,
    /// `EINVAL`: the remote port of `bind_interdomain` is not unbound, or not offered to
    /// the binding domain.
    NotOffered,
    /// `EINVAL`: the VIRQ number is not below `NR_VIRQS`.
    InvalidVirq,
    /// `EINVAL`: a global VIRQ must be bound on vCPU 0.
    GlobalVirqNotOnVcpu0,
    /// `ENOENT`: the domain has no such vCPU.
    NoSuchVcpu,
    /// `EEXIST`: the VIRQ is already bound on that vCPU.
    VirqInUse,
    /// `ENOSPC`: every port up to the domain's limit is in use.
    NoFreePort,
    /// `EBUSY`: the physical IRQ is already bound to a port.
    PirqInUse,
    /// `EINVAL`: a poll names more than [`crate::limits::MAX_POLL_PORTS`] ports.
    TooManyPollPorts,
    /// `EINVAL`: the port was closed and re-bound between the caller's read of its peer
    /// and the close ([`crate::table::close_checked`]); the caller may read it again. Xen
    /// answers `EINVAL` in the same race, as for a port it found free.
    Changed,
}

impl EventError {
    /// The error number the guest sees.
    pub const fn errno(self) -> Errno {
        match self {
            Self::InvalidPort
            | Self::WrongState
            | Self::NotOffered
            | Self::InvalidVirq
            | Self::GlobalVirqNotOnVcpu0
            | Self::TooManyPollPorts
            | Self::Changed => Errno::Einval,
            Self::NoSuchVcpu => Errno::Enoent,
            Self::VirqInUse => Errno::Eexist,
            Self::NoFreePort => Errno::Enospc,
            Self::PirqInUse => Errno::Ebusy,
        }
    }
}

impl From<EventError> for Errno {
    fn from(error: EventError) -> Self {
        error.errno()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_xen_numbers() {
        assert_eq!(EventError::InvalidPort.errno().raw(), 22);
        assert_eq!(EventError::NoSuchVcpu.errno().raw(), 2);
        assert_eq!(EventError::VirqInUse.errno().raw(), 17);
        assert_eq!(EventError::NoFreePort.errno().raw(), 28);
        assert_eq!(Errno::from(EventError::TooManyPollPorts), Errno::Einval);
    }
}
