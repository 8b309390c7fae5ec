//! Event channels (`event_channel_op`): typed calls to open, connect, signal and close
//! ports. Each builds the command's argument struct on the stack, makes the call and
//! returns the port the hypervisor wrote back.
//!
//! Ports are per domain and allocated lowest free first from 1. Interdomain channels are
//! set up in two steps: one side allocates an unbound port naming the other domain
//! ([`alloc_unbound`]), the other binds to it ([`bind_interdomain`]). Receiving is the
//! business of [`crate::events`]; this module must never touch the shared info page.

use abi::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVirq, EvtchnClose,
    EvtchnSend, EvtchnUnmask,
};
use abi::hypercall::{EvtchnOp, Virq};
use abi::ids::{DomId, EvtchnPort, VcpuId};

use crate::hypercall::{self, Result};

/// Allocates a port that domain `remote` may bind to.
pub fn alloc_unbound(remote: DomId) -> Result<EvtchnPort> {
    let mut arg = EvtchnAllocUnbound {
        dom: DomId::SELF,
        remote_dom: remote,
        port: EvtchnPort(0),
    };
    // SAFETY: the hypervisor reads and writes `arg` on our stack.
    unsafe { hypercall::event_channel_op(EvtchnOp::AllocUnbound, &raw mut arg)? };
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
    // SAFETY: the hypervisor reads and writes `arg` on our stack.
    unsafe { hypercall::event_channel_op(EvtchnOp::BindInterdomain, &raw mut arg)? };
    Ok(arg.local_port)
}

/// Binds a new port to `virq` on `vcpu`.
pub fn bind_virq(virq: Virq, vcpu: VcpuId) -> Result<EvtchnPort> {
    let mut arg = EvtchnBindVirq {
        virq: virq.raw(),
        vcpu,
        port: EvtchnPort(0),
    };
    // SAFETY: the hypervisor reads and writes `arg` on our stack.
    unsafe { hypercall::event_channel_op(EvtchnOp::BindVirq, &raw mut arg)? };
    Ok(arg.port)
}

/// Binds a new port for inter-processor events to `vcpu` (a send raises it there).
pub fn bind_ipi(vcpu: VcpuId) -> Result<EvtchnPort> {
    let mut arg = EvtchnBindIpi {
        vcpu,
        port: EvtchnPort(0),
    };
    // SAFETY: the hypervisor reads and writes `arg` on our stack.
    unsafe { hypercall::event_channel_op(EvtchnOp::BindIpi, &raw mut arg)? };
    Ok(arg.port)
}

/// Raises the event at the other end of `port`.
pub fn send(port: EvtchnPort) -> Result<()> {
    let mut arg = EvtchnSend { port };
    // SAFETY: the hypervisor reads `arg` on our stack.
    unsafe { hypercall::event_channel_op(EvtchnOp::Send, &raw mut arg) }
}

/// Closes `port` (an interdomain peer's end goes back to unbound).
pub fn close(port: EvtchnPort) -> Result<()> {
    let mut arg = EvtchnClose { port };
    // SAFETY: the hypervisor reads `arg` on our stack.
    unsafe { hypercall::event_channel_op(EvtchnOp::Close, &raw mut arg) }
}

/// Clears `port`'s mask bit and has the hypervisor deliver it if it is pending.
pub fn unmask(port: EvtchnPort) -> Result<()> {
    let mut arg = EvtchnUnmask { port };
    // SAFETY: the hypervisor reads `arg` on our stack.
    unsafe { hypercall::event_channel_op(EvtchnOp::Unmask, &raw mut arg) }
}
