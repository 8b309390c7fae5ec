//! Event channels (`event_channel_op`): typed calls to open, connect, signal and close
//! ports. Each builds the command's argument struct on the stack, makes the call and
//! returns the port the hypervisor wrote back.
//!
//! Ports are per domain and allocated lowest free first from 1. Interdomain channels are
//! set up in two steps: one side allocates an unbound port naming the other domain
//! ([`alloc_unbound`]), the other binds to it ([`bind_interdomain`]). Receiving is the
//! business of [`crate::events`]; this module must never touch the shared info page.

use abi::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVcpu, EvtchnBindVirq,
    EvtchnClose, EvtchnSend, EvtchnStatus, EvtchnUnmask,
};
use abi::hypercall::Virq;
use abi::ids::{DomId, EvtchnPort, VcpuId};

use crate::hypercall::{self, Result};

/// Allocates a port that domain `remote` may bind to.
pub fn alloc_unbound(remote: DomId) -> Result<EvtchnPort> {
    let mut arg = EvtchnAllocUnbound {
        dom: DomId::SELF,
        remote_dom: remote,
        port: EvtchnPort(0),
    };
    hypercall::event_channel_op(&mut arg)?;
    Ok(arg.port)
}

/// Connects a new local port to `remote`'s unbound port `remote_port` (which must name
/// this domain); returns the local port.
pub fn bind_interdomain(remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort> {
    let mut arg = EvtchnBindInterdomain {
        remote_dom: remote,
        _pad: 0,
        remote_port,
        local_port: EvtchnPort(0),
    };
    hypercall::event_channel_op(&mut arg)?;
    Ok(arg.local_port)
}

/// Binds a new port to `virq` on `vcpu`.
pub fn bind_virq(virq: Virq, vcpu: VcpuId) -> Result<EvtchnPort> {
    let mut arg = EvtchnBindVirq {
        virq: virq.raw(),
        vcpu,
        port: EvtchnPort(0),
    };
    hypercall::event_channel_op(&mut arg)?;
    Ok(arg.port)
}

/// Binds a new port for inter-processor events to `vcpu` (a send raises it there).
pub fn bind_ipi(vcpu: VcpuId) -> Result<EvtchnPort> {
    let mut arg = EvtchnBindIpi {
        vcpu,
        port: EvtchnPort(0),
    };
    hypercall::event_channel_op(&mut arg)?;
    Ok(arg.port)
}

/// Raises the event at the other end of `port`.
pub fn send(port: EvtchnPort) -> Result<()> {
    let mut arg = EvtchnSend { port };
    hypercall::event_channel_op(&mut arg)
}

/// Closes `port` (an interdomain peer's end goes back to unbound).
pub fn close(port: EvtchnPort) -> Result<()> {
    let mut arg = EvtchnClose { port };
    hypercall::event_channel_op(&mut arg)
}

/// Clears `port`'s mask bit and has the hypervisor deliver it if it is pending.
pub fn unmask(port: EvtchnPort) -> Result<()> {
    let mut arg = EvtchnUnmask { port };
    hypercall::event_channel_op(&mut arg)
}

/// `EVTCHNOP_status` of `port` in domain `dom` (`DomId::SELF` for this one).
pub fn status(dom: DomId, port: EvtchnPort) -> Result<EvtchnStatus> {
    let mut arg = EvtchnStatus {
        dom,
        port,
        ..EvtchnStatus::default()
    };
    hypercall::event_channel_op(&mut arg)?;
    Ok(arg)
}

/// Makes `port` notify `vcpu` from now on (`EVTCHNOP_bind_vcpu`).
pub fn bind_vcpu(port: EvtchnPort, vcpu: VcpuId) -> Result<()> {
    let mut arg = EvtchnBindVcpu { port, vcpu };
    hypercall::event_channel_op(&mut arg)
}

/// This domain's id, as the hypervisor knows it: the remote domain of a port offered to
/// `DOMID_SELF`, which the hypervisor records under the caller's own id (as Xen does).
/// The port is closed again.
pub fn own_domid() -> Result<DomId> {
    let port = alloc_unbound(DomId::SELF)?;
    let seen = status(DomId::SELF, port);
    let closed = close(port);
    let id = seen?.remote_dom();
    closed?;
    Ok(id)
}
