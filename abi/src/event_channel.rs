//! Argument structs of `event_channel_op` (event_channel.h), one per command, and the
//! channel states `EVTCHNOP_status` reports.
//!
//! The hypervisor reads the IN fields from guest memory and writes the OUT fields back;
//! our guests do the reverse. Command numbers are in [`crate::hypercall::EvtchnOp`]. This
//! module must never hold channel state: that belongs to the hypervisor's event logic.

use crate::ids::{DomId, EvtchnPort, VcpuId};
use crate::macros::{abi_enum, assert_layout};

/// `EVTCHNOP_alloc_unbound`: allocate a port in `dom` that `remote_dom` may bind to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnAllocUnbound {
    /// IN: must be `DomId::SELF` for unprivileged callers.
    pub dom: DomId,
    /// IN: may be `DomId::SELF` for loopback.
    pub remote_dom: DomId,
    /// OUT: the new port.
    pub port: EvtchnPort,
}

assert_layout!(EvtchnAllocUnbound, size = 8, { dom @ 0, remote_dom @ 2, port @ 4 });

/// `EVTCHNOP_bind_interdomain`: connect to an unbound port of `remote_dom`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnBindInterdomain {
    /// IN.
    pub remote_dom: DomId,
    pub _pad: u16,
    /// IN: an unbound port of `remote_dom` that accepts the caller.
    pub remote_port: EvtchnPort,
    /// OUT: the new local port.
    pub local_port: EvtchnPort,
}

assert_layout!(EvtchnBindInterdomain, size = 12, {
    remote_dom @ 0, remote_port @ 4, local_port @ 8,
});

/// `EVTCHNOP_bind_virq`: bind a port to a VIRQ on a vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnBindVirq {
    /// IN: a [`crate::hypercall::Virq`] number.
    pub virq: u32,
    /// IN.
    pub vcpu: VcpuId,
    /// OUT.
    pub port: EvtchnPort,
}

assert_layout!(EvtchnBindVirq, size = 12, { virq @ 0, vcpu @ 4, port @ 8 });

/// `EVTCHNOP_bind_pirq`: bind a port to a physical IRQ (a device interrupt) the domain
/// mapped with `PHYSDEVOP_map_pirq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnBindPirq {
    /// IN.
    pub pirq: u32,
    /// IN: [`BIND_PIRQ_WILL_SHARE`] or 0.
    pub flags: u32,
    /// OUT.
    pub port: EvtchnPort,
}

assert_layout!(EvtchnBindPirq, size = 12, { pirq @ 0, flags @ 4, port @ 8 });

/// `BIND_PIRQ__WILL_SHARE`: the binder accepts sharing the line with other domains.
pub const BIND_PIRQ_WILL_SHARE: u32 = 1;

/// `EVTCHNOP_bind_ipi`: bind a port for IPIs to a vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnBindIpi {
    /// IN.
    pub vcpu: VcpuId,
    /// OUT.
    pub port: EvtchnPort,
}

assert_layout!(EvtchnBindIpi, size = 8, { vcpu @ 0, port @ 4 });

/// `EVTCHNOP_close`: close a local port (an interdomain peer goes back to unbound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnClose {
    /// IN.
    pub port: EvtchnPort,
}

assert_layout!(EvtchnClose, size = 4, { port @ 0 });

/// `EVTCHNOP_send`: notify the remote end of a local port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnSend {
    /// IN.
    pub port: EvtchnPort,
}

assert_layout!(EvtchnSend, size = 4, { port @ 0 });

/// `EVTCHNOP_unmask`: clear a port's mask and deliver it if pending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnUnmask {
    /// IN.
    pub port: EvtchnPort,
}

assert_layout!(EvtchnUnmask, size = 4, { port @ 0 });

/// `EVTCHNOP_bind_vcpu`: choose which vCPU a port notifies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnBindVcpu {
    /// IN.
    pub port: EvtchnPort,
    /// IN.
    pub vcpu: VcpuId,
}

assert_layout!(EvtchnBindVcpu, size = 8, { port @ 0, vcpu @ 4 });

/// `EVTCHNOP_reset`: close every port of `dom` (`DOMID_SELF`, or another domain for a
/// privileged caller).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnReset {
    /// IN.
    pub dom: DomId,
}

assert_layout!(EvtchnReset, size = 2, { dom @ 0 });

/// `EVTCHNOP_init_control`: the FIFO ABI's control block for one vCPU, at `offset` in
/// frame `control_gfn` (8-aligned, not crossing the page).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnInitControl {
    /// IN.
    pub control_gfn: u64,
    /// IN.
    pub offset: u32,
    /// IN.
    pub vcpu: u32,
    /// OUT: `EVTCHN_FIFO_LINK_BITS`.
    pub link_bits: u8,
    pub _pad: [u8; 7],
}

assert_layout!(EvtchnInitControl, size = 24, { control_gfn @ 0, offset @ 8, vcpu @ 12, link_bits @ 16 });

/// `sizeof(evtchn_fifo_control_block_t)`: `ready`, a reserved word and 16 queue heads.
pub const EVTCHN_FIFO_CONTROL_BLOCK_SIZE: u32 = 4 + 4 + 4 * 16;

abi_enum! {
    /// A channel's state in [`EvtchnStatus::status`] (`EVTCHNSTAT_*`).
    pub enum EvtchnState: u32 {
        /// Not in use.
        Closed = 0,
        /// Waiting for an interdomain connection.
        Unbound = 1,
        /// Connected to a remote domain.
        Interdomain = 2,
        /// Bound to a physical IRQ.
        Pirq = 3,
        /// Bound to a VIRQ.
        Virq = 4,
        /// Bound to an IPI.
        Ipi = 5,
    }
}

/// `EVTCHNOP_status`: report the state of `<dom, port>`. `detail` is the C union `u`,
/// read through the accessors matching `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnStatus {
    /// IN: may be `DomId::SELF`.
    pub dom: DomId,
    pub _pad: u16,
    /// IN.
    pub port: EvtchnPort,
    /// OUT: an [`EvtchnState`] number.
    pub status: u32,
    /// OUT: the vCPU the channel notifies.
    pub vcpu: VcpuId,
    /// OUT: union `u` (unbound `{dom}`, interdomain `{dom, port}`, `pirq`, `virq`).
    pub detail: [u32; 2],
}

assert_layout!(EvtchnStatus, size = 24, {
    dom @ 0, port @ 4, status @ 8, vcpu @ 12, detail @ 16,
});

impl EvtchnStatus {
    /// `status` decoded.
    pub const fn state(&self) -> Option<EvtchnState> {
        EvtchnState::from_raw(self.status)
    }

    /// The union as `unbound.dom` or `interdomain.dom` (its first 16 bits).
    pub const fn remote_dom(&self) -> DomId {
        DomId(self.detail[0] as u16)
    }

    /// The union as `interdomain.port`.
    pub const fn remote_port(&self) -> EvtchnPort {
        EvtchnPort(self.detail[1])
    }

    /// The union as `pirq` or `virq` (both its first 32 bits).
    pub const fn irq(&self) -> u32 {
        self.detail[0]
    }

    /// Fills the OUT fields for a channel in `state` notifying `vcpu`, clearing the union.
    pub fn set_state(&mut self, state: EvtchnState, vcpu: VcpuId) {
        self.status = state.raw();
        self.vcpu = vcpu;
        self.detail = [0; 2];
    }

    /// Sets the union as `unbound.dom` / `interdomain.{dom, port}` (port 0 for unbound).
    pub fn set_remote(&mut self, dom: DomId, port: EvtchnPort) {
        self.detail = [u32::from(dom.0), port.0];
    }

    /// Sets the union as `pirq` / `virq`.
    pub fn set_irq(&mut self, irq: u32) {
        self.detail = [irq, 0];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_union_round_trips() {
        let mut status = EvtchnStatus {
            dom: DomId::SELF,
            port: EvtchnPort(5),
            ..Default::default()
        };
        status.set_state(EvtchnState::Interdomain, VcpuId(1));
        status.set_remote(DomId(7), EvtchnPort(42));
        assert_eq!(status.state(), Some(EvtchnState::Interdomain));
        assert_eq!(status.remote_dom(), DomId(7));
        assert_eq!(status.remote_port(), EvtchnPort(42));
        status.set_irq(3);
        assert_eq!(status.irq(), 3);
        assert_eq!(status.remote_port(), EvtchnPort(0));
    }

    #[test]
    fn unknown_state_is_rejected() {
        let status = EvtchnStatus {
            status: 6,
            ..Default::default()
        };
        assert_eq!(status.state(), None);
        assert_eq!(EvtchnState::Ipi.raw(), 5);
    }
}
