//! `SCHEDOP_poll`: is any of a list of ports pending, and if not, which events should
//! wake the polling vCPU.
//!
//! Called by the hypervisor's scheduler hypercall after it copied the guest's port list
//! (at most [`MAX_POLL_PORTS`]), and by whoever marks a port pending to decide which
//! pollers to wake ([`PollTarget::wakes_on`] for a [`crate::Notify::newly_pending`]
//! port). To not sleep through an event the caller publishes the vCPU's target *before*
//! calling [`check`], and the signaller checks pollers *after* setting the pending bit.
//! This module must never block, sleep or keep state.

use abi::ids::EvtchnPort;

use crate::bitmap::{is_pending, SharedPage};
use crate::error::EventError;
use crate::limits::{MAX_POLL_PORTS, MAX_PORTS};

/// Which newly pending ports wake a polling vCPU (Xen's `poll_evtchn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollTarget {
    /// Any port of the domain (a poll of zero or several ports).
    AnyPort,
    /// Only this port (a poll of exactly one).
    Port(EvtchnPort),
}

impl PollTarget {
    /// The target for a poll of `ports`.
    pub fn for_ports(ports: &[EvtchnPort]) -> Self {
        match ports {
            [port] => Self::Port(*port),
            _ => Self::AnyPort,
        }
    }

    /// Whether `port` becoming pending wakes a vCPU polling for this target.
    pub fn wakes_on(self, port: EvtchnPort) -> bool {
        match self {
            Self::AnyPort => true,
            Self::Port(polled) => polled == port,
        }
    }
}

/// The outcome of checking a poll request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// A listed port is pending: return to the guest at once.
    Ready,
    /// Nothing is pending: block until an event matching the target, or the timeout.
    Block(PollTarget),
}

/// Checks `ports` in order, as Xen's `do_poll`: more than [`MAX_POLL_PORTS`] is `EINVAL`;
/// the first pending port makes the poll ready; a port beyond the 2-level range met
/// before any pending one is `EINVAL`.
pub fn check<P: SharedPage + ?Sized>(
    page: &P,
    ports: &[EvtchnPort],
) -> Result<PollOutcome, EventError> {
    if ports.len() > MAX_POLL_PORTS {
        return Err(EventError::TooManyPollPorts);
    }
    for &port in ports {
        if port.0 >= MAX_PORTS {
            return Err(EventError::InvalidPort);
        }
        if is_pending(page, port) {
            return Ok(PollOutcome::Ready);
        }
    }
    Ok(PollOutcome::Block(PollTarget::for_ports(ports)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap::fake::FakePage;
    use crate::bitmap::set_pending;
    use abi::ids::VcpuId;

    fn ports(raw: &[u32]) -> Vec<EvtchnPort> {
        raw.iter().copied().map(EvtchnPort).collect()
    }

    #[test]
    fn pending_port_makes_the_poll_ready_even_when_masked() {
        let page = FakePage::new();
        page.mask_port(40);
        set_pending(&*page, EvtchnPort(40), VcpuId(0));
        assert_eq!(check(&*page, &ports(&[3, 40, 7])), Ok(PollOutcome::Ready));
    }

    #[test]
    fn nothing_pending_blocks_with_the_right_target() {
        let page = FakePage::new();
        set_pending(&*page, EvtchnPort(2), VcpuId(0));
        assert_eq!(
            check(&*page, &ports(&[5])),
            Ok(PollOutcome::Block(PollTarget::Port(EvtchnPort(5))))
        );
        assert_eq!(
            check(&*page, &ports(&[5, 6])),
            Ok(PollOutcome::Block(PollTarget::AnyPort))
        );
        assert_eq!(
            check(&*page, &[]),
            Ok(PollOutcome::Block(PollTarget::AnyPort))
        );
    }

    #[test]
    fn targets_wake_on_matching_ports() {
        assert!(PollTarget::Port(EvtchnPort(5)).wakes_on(EvtchnPort(5)));
        assert!(!PollTarget::Port(EvtchnPort(5)).wakes_on(EvtchnPort(6)));
        assert!(PollTarget::AnyPort.wakes_on(EvtchnPort(6)));
    }

    #[test]
    fn malformed_requests_are_rejected() {
        let page = FakePage::new();
        let too_many = vec![EvtchnPort(1); MAX_POLL_PORTS + 1];
        assert_eq!(check(&*page, &too_many), Err(EventError::TooManyPollPorts));
        assert!(check(&*page, &too_many[..MAX_POLL_PORTS]).is_ok());
        assert_eq!(
            check(&*page, &ports(&[1, 4096])),
            Err(EventError::InvalidPort)
        );
        assert_eq!(
            check(&*page, &ports(&[u32::MAX])),
            Err(EventError::InvalidPort)
        );
        // Like Xen, a pending port before a bad one wins.
        set_pending(&*page, EvtchnPort(1), VcpuId(0));
        assert_eq!(check(&*page, &ports(&[1, 4096])), Ok(PollOutcome::Ready));
    }
}
