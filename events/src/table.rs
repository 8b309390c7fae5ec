//! One domain's event channels: which ports are in use, what each is bound to and which
//! vCPU it notifies — the state behind `event_channel_op`.
//!
//! Called by the hypervisor's event-channel hypercalls, its VIRQ sources and domain
//! destruction, always under the owning domain's event lock. Operations that span two
//! domains take both tables ([`bind_interdomain`]) or hand the caller an [`Unlink`] or a
//! [`SendTarget::Remote`] to apply to the other domain's table under its lock; lock the
//! lower domain id first. This module never touches the shared-info bitmaps: the caller
//! applies a returned [`Delivery`] with [`crate::bitmap::set_pending`]. It must never hold
//! a reference to another domain.
//!
//! A port may also be bound to the hypervisor itself ([`Channels::bind_hypervisor`]: the
//! console ring's channel): a send on it is for the hypervisor ([`SendTarget::Hypervisor`])
//! and the hypervisor raises it ([`Channels::hypervisor_delivery`]); the guest sees it as an
//! interdomain channel to `DOMID_XEN`, may move it to another vCPU and may close it.
//!
//! Closing an interdomain port needs the peer's table locked too, and the caller learns
//! which table that is only by reading the port under this table's lock, which it must
//! drop to lock both in order: [`close_checked`] closes only if the port still has the
//! peer read before (as Xen's `evtchn_close` re-checks after re-locking), so a port closed
//! and re-bound elsewhere in between is never half-closed.
//!
//! Memory: a `Vec` of 12-byte channels grown on demand (port 0 is reserved, as in Xen),
//! plus 48 bytes per vCPU that has bound a VIRQ. See [`Channels::memory_bytes`].

use alloc::vec;
use alloc::vec::Vec;
use core::mem::size_of;

use abi::event_channel::{EvtchnState, EvtchnStatus};
use abi::hypercall::Virq;
use abi::ids::{DomId, EvtchnPort, VcpuId};

use crate::error::EventError;
use crate::limits::MAX_PORTS;
use crate::virq::{VirqMap, VirqNumber};

/// Slots added at least when the table grows (doubling beyond that, up to the limit).
const MIN_GROWTH: usize = 8;

/// One end of an interdomain channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub dom: DomId,
    pub port: EvtchnPort,
}

/// An event to raise: mark `port` pending and notify `vcpu`, both in the table's domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub port: EvtchnPort,
    pub vcpu: VcpuId,
}

/// Where `EVTCHNOP_send` on a port delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendTarget {
    /// In the sender's own domain (an IPI, or a loopback channel).
    Local(Delivery),
    /// In another domain: lock `to.dom`'s table and ask it [`Channels::deliver_from`]
    /// `from`; it confirms the link still stands and names the vCPU.
    Remote { to: Endpoint, from: Endpoint },
    /// The port is unbound: Xen silently drops the event.
    Dropped,
    /// The port's other end is the hypervisor (see [`Channels::bind_hypervisor`]).
    Hypervisor(EvtchnPort),
}

/// The remote half of closing an interdomain channel: in `remote.dom`'s table, put
/// `remote.port` back to unbound (accepting `closed.dom` again) with [`Channels::unlink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unlink {
    /// The end that stays open.
    pub remote: Endpoint,
    /// The end that was closed.
    pub closed: Endpoint,
}

/// What a port is bound to, as `EVTCHNOP_status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Free (or the reserved port 0).
    Closed,
    /// Waiting for `remote_dom` to bind to it.
    Unbound { remote_dom: DomId },
    /// Connected to `remote`.
    Interdomain { remote: Endpoint },
    /// Bound to VIRQ `virq`.
    Virq { virq: u32 },
    /// Bound for IPIs.
    Ipi,
    /// Connected to the hypervisor itself (reported as interdomain to `DOMID_XEN`).
    Hypervisor,
}

/// A port's status: its binding and the vCPU it notifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelStatus {
    pub binding: Binding,
    pub vcpu: VcpuId,
}

impl ChannelStatus {
    /// The `EVTCHNSTAT_*` state.
    pub const fn state(&self) -> EvtchnState {
        match self.binding {
            Binding::Closed => EvtchnState::Closed,
            Binding::Unbound { .. } => EvtchnState::Unbound,
            Binding::Interdomain { .. } => EvtchnState::Interdomain,
            Binding::Virq { .. } => EvtchnState::Virq,
            Binding::Ipi => EvtchnState::Ipi,
            Binding::Hypervisor => EvtchnState::Interdomain,
        }
    }

    /// Fills the OUT fields of the ABI struct (`status`, `vcpu`, the union).
    pub fn write_to(&self, out: &mut EvtchnStatus) {
        out.set_state(self.state(), self.vcpu);
        match self.binding {
            Binding::Unbound { remote_dom } => out.set_remote(remote_dom, EvtchnPort(0)),
            Binding::Interdomain { remote } => out.set_remote(remote.dom, remote.port),
            Binding::Hypervisor => out.set_remote(DomId::XEN, EvtchnPort(0)),
            Binding::Virq { virq } => out.set_irq(virq),
            Binding::Closed | Binding::Ipi => {}
        }
    }
}

/// A channel's binding (the table's private form of [`Binding`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    /// Port 0: never allocated (Xen's `ECS_RESERVED`).
    Reserved,
    Unbound {
        remote_dom: DomId,
    },
    Interdomain {
        remote_dom: DomId,
        remote_port: EvtchnPort,
    },
    Virq(VirqNumber),
    Ipi,
    /// The other end is the hypervisor.
    Hypervisor,
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    state: State,
    /// The vCPU to notify; vCPU 0 whenever the port is freed.
    notify: VcpuId,
}

const FREE: Channel = Channel {
    state: State::Free,
    notify: VcpuId(0),
};

const _: () = assert!(size_of::<Channel>() <= 16);

/// One domain's event channels. Ports at or beyond `len` of the backing vector but below
/// the domain's limit are free.
#[derive(Debug)]
pub struct Channels {
    dom: DomId,
    nr_vcpus: u32,
    max_ports: u32,
    slots: Vec<Channel>,
    virqs: VirqMap,
}

impl Channels {
    /// An empty table for domain `dom` with `nr_vcpus` vCPUs, allowing ports below
    /// `max_ports` (clamped to 1..=4096; port 0 is reserved, so `max_ports - 1` usable).
    pub fn new(dom: DomId, nr_vcpus: u32, max_ports: u32) -> Self {
        Self {
            dom,
            nr_vcpus,
            max_ports: max_ports.clamp(1, MAX_PORTS),
            slots: vec![Channel {
                state: State::Reserved,
                notify: VcpuId(0),
            }],
            virqs: VirqMap::default(),
        }
    }

    /// The domain this table belongs to.
    pub const fn dom(&self) -> DomId {
        self.dom
    }

    /// `EVTCHNOP_alloc_unbound`: a fresh port that `remote_dom` may bind to. The caller
    /// resolves `DOMID_SELF` to the calling domain first.
    pub fn alloc_unbound(&mut self, remote_dom: DomId) -> Result<EvtchnPort, EventError> {
        self.allocate(State::Unbound { remote_dom }, VcpuId(0))
    }

    /// `EVTCHNOP_bind_interdomain` with `DOMID_SELF` (a loopback channel): binds a fresh
    /// port to this domain's `remote_port`, which must be unbound and offered to this
    /// domain. Xen marks the new port pending at once (notifications sent to the unbound
    /// port may have been lost): apply the returned [`Delivery`].
    pub fn bind_loopback(&mut self, remote_port: EvtchnPort) -> Result<Delivery, EventError> {
        self.check_offered(remote_port, self.dom)?;
        let port = self.allocate(
            State::Interdomain {
                remote_dom: self.dom,
                remote_port,
            },
            VcpuId(0),
        )?;
        self.link(
            remote_port,
            Endpoint {
                dom: self.dom,
                port,
            },
        );
        Ok(Delivery {
            port,
            vcpu: VcpuId(0),
        })
    }

    /// `EVTCHNOP_bind_virq`: a fresh port for `virq` on `vcpu`. A global VIRQ binds on
    /// vCPU 0 only; each VIRQ binds at most once per vCPU.
    pub fn bind_virq(&mut self, virq: u32, vcpu: VcpuId) -> Result<EvtchnPort, EventError> {
        let virq = VirqNumber::new(virq)?;
        if !virq.is_per_vcpu() && vcpu != VcpuId(0) {
            return Err(EventError::GlobalVirqNotOnVcpu0);
        }
        self.check_vcpu(vcpu)?;
        if self.virqs.get(vcpu, virq).is_some() {
            return Err(EventError::VirqInUse);
        }
        let port = self.allocate(State::Virq(virq), vcpu)?;
        self.virqs.set(vcpu, virq, port);
        Ok(port)
    }

    /// `EVTCHNOP_bind_ipi`: a fresh port that notifies `vcpu`, for good.
    pub fn bind_ipi(&mut self, vcpu: VcpuId) -> Result<EvtchnPort, EventError> {
        self.check_vcpu(vcpu)?;
        self.allocate(State::Ipi, vcpu)
    }

    /// A fresh port whose other end is the hypervisor, notifying vCPU 0: the domain
    /// builder's channel for the console ring (`start_info.console.domU.evtchn`).
    pub fn bind_hypervisor(&mut self) -> Result<EvtchnPort, EventError> {
        self.allocate(State::Hypervisor, VcpuId(0))
    }

    /// The event the hypervisor raises on its end of `port`, if `port` is still bound to
    /// the hypervisor (the guest may have closed it, or re-bound the number since).
    pub fn hypervisor_delivery(&self, port: EvtchnPort) -> Option<Delivery> {
        let channel = self.slots.get(port.0 as usize)?;
        (channel.state == State::Hypervisor).then_some(Delivery {
            port,
            vcpu: channel.notify,
        })
    }

    /// The event the hypervisor raises on `port` while it stands in for a backend that has
    /// not bound the port yet: `port` is bound to the hypervisor, or still unbound with
    /// `backend` as its remote domain (a created domain's console channel, whose backend is
    /// domain 0). `None` once the backend bound it (or the guest closed or re-bound it).
    pub fn standin_delivery(&self, port: EvtchnPort, backend: DomId) -> Option<Delivery> {
        let channel = self.slots.get(port.0 as usize)?;
        let standing_in = match channel.state {
            State::Hypervisor => true,
            State::Unbound { remote_dom } => remote_dom == backend,
            _ => false,
        };
        standing_in.then_some(Delivery { port, vcpu: channel.notify })
    }

    /// `EVTCHNOP_bind_vcpu`: make `port` notify `vcpu`. Allowed for unbound,
    /// interdomain (the hypervisor's included) and global-VIRQ ports; IPI and per-vCPU
    /// VIRQ ports keep their vCPU.
    pub fn bind_vcpu(&mut self, port: EvtchnPort, vcpu: VcpuId) -> Result<(), EventError> {
        self.check_vcpu(vcpu)?;
        let channel = self.live_mut(port)?;
        match channel.state {
            State::Unbound { .. } | State::Interdomain { .. } | State::Hypervisor => {}
            State::Virq(virq) if !virq.is_per_vcpu() => {}
            _ => return Err(EventError::WrongState),
        }
        channel.notify = vcpu;
        Ok(())
    }

    /// `EVTCHNOP_close`: frees `port` (its next binding notifies vCPU 0 again). For an
    /// interdomain channel to another domain, returns the [`Unlink`] to apply to that
    /// domain's table — ideally while still holding this table's lock, so the remote end
    /// cannot be closed and re-bound in between. A loopback peer is unlinked here. The
    /// caller also clears the port's pending bit ([`crate::bitmap::clear_pending`]), as
    /// Xen does.
    pub fn close(&mut self, port: EvtchnPort) -> Result<Option<Unlink>, EventError> {
        let channel = self.channel(port)?;
        let unlink = match channel.state {
            State::Free | State::Reserved => return Err(EventError::WrongState),
            State::Unbound { .. } | State::Ipi | State::Hypervisor => None,
            State::Virq(virq) => {
                self.virqs.clear(virq.map_vcpu(channel.notify), virq);
                None
            }
            State::Interdomain {
                remote_dom,
                remote_port,
            } => {
                let unlink = Unlink {
                    remote: Endpoint {
                        dom: remote_dom,
                        port: remote_port,
                    },
                    closed: Endpoint {
                        dom: self.dom,
                        port,
                    },
                };
                if remote_dom == self.dom {
                    self.unlink(unlink);
                    None
                } else {
                    Some(unlink)
                }
            }
        };
        self.slots[port.0 as usize] = FREE;
        Ok(unlink)
    }

    /// Closes every port, for domain destruction, and returns the remote ends in other
    /// domains to unlink. The table is empty afterwards and gives its memory back; the
    /// caller must stop further allocations (the domain is dying).
    pub fn close_all(&mut self) -> Vec<Unlink> {
        let unlinks = (1..self.slots.len() as u32)
            .filter_map(|port| self.close(EvtchnPort(port)).ok().flatten())
            .collect();
        *self = Self::new(self.dom, self.nr_vcpus, self.max_ports);
        unlinks
    }

    /// The other half of [`Channels::close`]: if `unlink.remote` (a port of this table)
    /// is still connected to `unlink.closed`, it goes back to unbound, accepting
    /// `unlink.closed.dom` again. Returns whether it did; a stale unlink changes nothing.
    pub fn unlink(&mut self, unlink: Unlink) -> bool {
        if unlink.remote.dom != self.dom || self.peer(unlink.remote.port) != Some(unlink.closed) {
            return false;
        }
        self.slots[unlink.remote.port.0 as usize].state = State::Unbound {
            remote_dom: unlink.closed.dom,
        };
        true
    }

    /// `EVTCHNOP_send`: where an event sent on `port` goes. Only interdomain and IPI
    /// ports send; an unbound port drops the event.
    pub fn send(&self, port: EvtchnPort) -> Result<SendTarget, EventError> {
        let channel = self.channel(port)?;
        match channel.state {
            State::Ipi => Ok(SendTarget::Local(Delivery {
                port,
                vcpu: channel.notify,
            })),
            State::Unbound { .. } => Ok(SendTarget::Dropped),
            State::Hypervisor => Ok(SendTarget::Hypervisor(port)),
            State::Interdomain {
                remote_dom,
                remote_port,
            } => {
                let to = Endpoint {
                    dom: remote_dom,
                    port: remote_port,
                };
                let from = Endpoint {
                    dom: self.dom,
                    port,
                };
                if remote_dom != self.dom {
                    return Ok(SendTarget::Remote { to, from });
                }
                let delivery = self.deliver_from(remote_port, from);
                Ok(delivery.map_or(SendTarget::Dropped, SendTarget::Local))
            }
            State::Free | State::Reserved | State::Virq(_) => Err(EventError::WrongState),
        }
    }

    /// The receiving half of an interdomain send: if `port` is connected to `from`, the
    /// delivery to make; `None` when the link went away in the meantime.
    pub fn deliver_from(&self, port: EvtchnPort, from: Endpoint) -> Option<Delivery> {
        (self.peer(port)? == from).then(|| Delivery {
            port,
            vcpu: self.slots[port.0 as usize].notify,
        })
    }

    /// Where the hypervisor raising `virq` for `vcpu` delivers, if the domain bound it. A
    /// global VIRQ is looked up on vCPU 0, whatever `vcpu` says, and notifies the vCPU
    /// chosen with [`Channels::bind_vcpu`].
    pub fn virq_target(&self, virq: Virq, vcpu: VcpuId) -> Option<Delivery> {
        let virq = VirqNumber::of(virq);
        let port = self.virqs.get(virq.map_vcpu(vcpu), virq)?;
        Some(Delivery {
            port,
            vcpu: self.slots[port.0 as usize].notify,
        })
    }

    /// The vCPU `port` notifies (vCPU 0 for a free port), for `EVTCHNOP_unmask`; fails
    /// with `EINVAL` for a port beyond the domain's limit, as unmask does.
    pub fn notify_vcpu(&self, port: EvtchnPort) -> Result<VcpuId, EventError> {
        self.channel(port).map(|channel| channel.notify)
    }

    /// The other end of an interdomain `port`, so the caller can lock both domains
    /// (lower id first) before closing it.
    pub fn peer(&self, port: EvtchnPort) -> Option<Endpoint> {
        match self.slots.get(port.0 as usize)?.state {
            State::Interdomain {
                remote_dom,
                remote_port,
            } => Some(Endpoint {
                dom: remote_dom,
                port: remote_port,
            }),
            _ => None,
        }
    }

    /// `EVTCHNOP_status` for `port`.
    pub fn status(&self, port: EvtchnPort) -> Result<ChannelStatus, EventError> {
        let channel = self.channel(port)?;
        let binding = match channel.state {
            State::Free | State::Reserved => Binding::Closed,
            State::Unbound { remote_dom } => Binding::Unbound { remote_dom },
            State::Interdomain {
                remote_dom,
                remote_port,
            } => Binding::Interdomain {
                remote: Endpoint {
                    dom: remote_dom,
                    port: remote_port,
                },
            },
            State::Virq(virq) => Binding::Virq { virq: virq.raw() },
            State::Ipi => Binding::Ipi,
            State::Hypervisor => Binding::Hypervisor,
        };
        Ok(ChannelStatus {
            binding,
            vcpu: channel.notify,
        })
    }

    /// One past the highest port that may be in use (every port from there up to the limit
    /// is free).
    pub fn ports_end(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Bytes this table occupies, itself and its heap allocations.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>() + self.slots.capacity() * size_of::<Channel>() + self.virqs.heap_bytes()
    }

    fn check_vcpu(&self, vcpu: VcpuId) -> Result<(), EventError> {
        if vcpu.0 < self.nr_vcpus {
            Ok(())
        } else {
            Err(EventError::NoSuchVcpu)
        }
    }

    /// `port`'s channel (a free one beyond the vector), or `EINVAL` beyond the limit.
    fn channel(&self, port: EvtchnPort) -> Result<Channel, EventError> {
        if port.0 >= self.max_ports {
            return Err(EventError::InvalidPort);
        }
        Ok(self.slots.get(port.0 as usize).copied().unwrap_or(FREE))
    }

    /// `port`'s channel for an update that needs it in use.
    fn live_mut(&mut self, port: EvtchnPort) -> Result<&mut Channel, EventError> {
        if port.0 >= self.max_ports {
            return Err(EventError::InvalidPort);
        }
        self.slots
            .get_mut(port.0 as usize)
            .ok_or(EventError::WrongState)
    }

    /// Checks that `port` is unbound and offered to `binder`.
    fn check_offered(&self, port: EvtchnPort, binder: DomId) -> Result<(), EventError> {
        match self.channel(port)?.state {
            State::Unbound { remote_dom } if remote_dom == binder => Ok(()),
            _ => Err(EventError::NotOffered),
        }
    }

    /// Connects the unbound `port` to `peer`, keeping its notify vCPU.
    fn link(&mut self, port: EvtchnPort, peer: Endpoint) {
        self.slots[port.0 as usize].state = State::Interdomain {
            remote_dom: peer.dom,
            remote_port: peer.port,
        };
    }

    /// Takes the lowest free port for `state`, growing the table if needed.
    fn allocate(&mut self, state: State, notify: VcpuId) -> Result<EvtchnPort, EventError> {
        let channel = Channel { state, notify };
        if let Some(index) = self.slots.iter().position(|c| c.state == State::Free) {
            self.slots[index] = channel;
            return Ok(EvtchnPort(index as u32));
        }
        let len = self.slots.len();
        let room = self.max_ports as usize - len;
        if room == 0 {
            return Err(EventError::NoFreePort);
        }
        if len == self.slots.capacity() {
            self.slots.reserve_exact(len.max(MIN_GROWTH).min(room));
        }
        self.slots.push(channel);
        Ok(EvtchnPort(len as u32))
    }
}

/// `EVTCHNOP_bind_interdomain` between two domains: binds a fresh port of `local` to
/// `remote_port` of `remote`, which must be unbound and offered to `local`'s domain, and
/// links both ends. The caller holds both tables' locks (lower domain id first); for
/// `DOMID_SELF` use [`Channels::bind_loopback`]. Xen marks the new local port pending at
/// once: apply the returned [`Delivery`] to the local domain.
pub fn bind_interdomain(
    local: &mut Channels,
    remote: &mut Channels,
    remote_port: EvtchnPort,
) -> Result<Delivery, EventError> {
    remote.check_offered(remote_port, local.dom)?;
    let port = local.allocate(
        State::Interdomain {
            remote_dom: remote.dom,
            remote_port,
        },
        VcpuId(0),
    )?;
    remote.link(
        remote_port,
        Endpoint {
            dom: local.dom,
            port,
        },
    );
    Ok(Delivery {
        port,
        vcpu: VcpuId(0),
    })
}

/// `EVTCHNOP_close` of `port` in `local`, whose peer the caller read with
/// [`Channels::peer`] as `seen` before it dropped `local`'s lock to lock `local` and, when
/// `seen` is in another domain that still exists, that domain's table `remote` (lower
/// domain id first; both are locked now). The port is closed only if its peer is still
/// `seen`: otherwise it was closed and re-bound in between (perhaps to a third domain, whose
/// table the caller does not hold) and the caller must read the peer again
/// ([`EventError::Changed`]). An interdomain peer in `remote` goes back to unbound in the
/// same step; a peer whose domain is gone (`remote` is `None`) has nothing left to unlink.
/// The caller also clears the port's pending bit.
pub fn close_checked(
    local: &mut Channels,
    remote: Option<&mut Channels>,
    port: EvtchnPort,
    seen: Option<Endpoint>,
) -> Result<(), EventError> {
    if local.peer(port) != seen {
        return Err(EventError::Changed);
    }
    if let (Some(unlink), Some(remote)) = (local.close(port)?, remote) {
        remote.unlink(unlink);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::DEFAULT_MAX_PORTS;

    const A: DomId = DomId(1);
    const B: DomId = DomId(2);
    const C: DomId = DomId(3);
    const V0: VcpuId = VcpuId(0);
    const V1: VcpuId = VcpuId(1);

    fn table(dom: DomId) -> Channels {
        Channels::new(dom, 2, DEFAULT_MAX_PORTS)
    }

    fn end(dom: DomId, port: EvtchnPort) -> Endpoint {
        Endpoint { dom, port }
    }

    fn binding(table: &Channels, port: EvtchnPort) -> Binding {
        table.status(port).unwrap().binding
    }

    /// A and B with an interdomain channel: A offered `a_port`, B bound `b_port` to it.
    fn linked() -> (Channels, EvtchnPort, Channels, EvtchnPort) {
        let (mut a, mut b) = (table(A), table(B));
        let a_port = a.alloc_unbound(B).unwrap();
        let b_port = bind_interdomain(&mut b, &mut a, a_port).unwrap().port;
        (a, a_port, b, b_port)
    }

    #[test]
    fn ports_start_at_one_and_reuse_the_lowest_free() {
        let mut a = table(A);
        let ports: Vec<u32> = (0..3).map(|_| a.alloc_unbound(B).unwrap().0).collect();
        assert_eq!(ports, [1, 2, 3]);
        a.close(EvtchnPort(2)).unwrap();
        assert_eq!(a.alloc_unbound(C), Ok(EvtchnPort(2)));
        assert_eq!(
            binding(&a, EvtchnPort(2)),
            Binding::Unbound { remote_dom: C }
        );
    }

    #[test]
    fn port_zero_is_reserved() {
        let mut a = table(A);
        assert_eq!(binding(&a, EvtchnPort(0)), Binding::Closed);
        assert_eq!(a.close(EvtchnPort(0)), Err(EventError::WrongState));
        assert_eq!(a.send(EvtchnPort(0)), Err(EventError::WrongState));
        assert_eq!(a.bind_vcpu(EvtchnPort(0), V1), Err(EventError::WrongState));
        assert_eq!(a.notify_vcpu(EvtchnPort(0)), Ok(V0));
    }

    #[test]
    fn full_table_reports_enospc() {
        let mut a = Channels::new(A, 1, 4);
        for _ in 1..4 {
            a.bind_ipi(V0).unwrap();
        }
        assert_eq!(a.bind_ipi(V0), Err(EventError::NoFreePort));
        assert_eq!(a.alloc_unbound(B), Err(EventError::NoFreePort));
        a.close(EvtchnPort(1)).unwrap();
        assert_eq!(a.bind_ipi(V0), Ok(EvtchnPort(1)));
    }

    #[test]
    fn limits_are_clamped_to_the_2_level_range() {
        let mut none = Channels::new(A, 1, 0);
        assert_eq!(none.alloc_unbound(B), Err(EventError::NoFreePort));
        let mut big = Channels::new(A, 1, u32::MAX);
        assert_eq!(
            big.status(EvtchnPort(4095)).unwrap().binding,
            Binding::Closed
        );
        assert_eq!(big.status(EvtchnPort(4096)), Err(EventError::InvalidPort));
        for _ in 1..4096 {
            big.alloc_unbound(B).unwrap();
        }
        assert_eq!(big.alloc_unbound(B), Err(EventError::NoFreePort));
    }

    #[test]
    fn hostile_ports_and_vcpus_are_rejected() {
        let mut a = table(A);
        let bad = EvtchnPort(u32::MAX);
        assert_eq!(a.status(bad), Err(EventError::InvalidPort));
        assert_eq!(a.close(bad), Err(EventError::InvalidPort));
        assert_eq!(a.send(bad), Err(EventError::InvalidPort));
        assert_eq!(a.bind_vcpu(bad, V0), Err(EventError::InvalidPort));
        assert_eq!(a.notify_vcpu(bad), Err(EventError::InvalidPort));
        assert_eq!(a.peer(bad), None);
        assert_eq!(a.deliver_from(bad, end(B, EvtchnPort(1))), None);
        assert_eq!(a.bind_ipi(VcpuId(2)), Err(EventError::NoSuchVcpu));
        assert_eq!(a.bind_ipi(VcpuId(u32::MAX)), Err(EventError::NoSuchVcpu));
        let port = a.alloc_unbound(B).unwrap();
        assert_eq!(a.bind_vcpu(port, VcpuId(7)), Err(EventError::NoSuchVcpu));
        // A free port within the limit is closed, not invalid.
        assert_eq!(binding(&a, EvtchnPort(1000)), Binding::Closed);
        assert_eq!(a.close(EvtchnPort(1000)), Err(EventError::WrongState));
        assert_eq!(a.send(EvtchnPort(1000)), Err(EventError::WrongState));
        assert_eq!(
            a.bind_vcpu(EvtchnPort(1000), V0),
            Err(EventError::WrongState)
        );
    }

    #[test]
    fn interdomain_link_send_and_unlink_life_cycle() {
        let (mut a, a_port, mut b, b_port) = linked();
        assert_eq!(
            binding(&a, a_port),
            Binding::Interdomain {
                remote: end(B, b_port)
            }
        );
        assert_eq!(
            binding(&b, b_port),
            Binding::Interdomain {
                remote: end(A, a_port)
            }
        );

        // A -> B, with B's port notifying vCPU 1.
        b.bind_vcpu(b_port, V1).unwrap();
        let SendTarget::Remote { to, from } = a.send(a_port).unwrap() else {
            panic!("interdomain send must go remote");
        };
        assert_eq!((to, from), (end(B, b_port), end(A, a_port)));
        assert_eq!(
            b.deliver_from(to.port, from),
            Some(Delivery {
                port: b_port,
                vcpu: V1
            })
        );
        assert_eq!(
            b.deliver_from(to.port, end(C, a_port)),
            None,
            "wrong sender"
        );

        // B closes: A's end goes back to unbound, accepting B again.
        let unlink = b.close(b_port).unwrap().unwrap();
        assert_eq!(unlink.remote, end(A, a_port));
        assert_eq!(a.peer(a_port), Some(end(B, b_port)), "not unlinked yet");
        assert!(a.unlink(unlink));
        assert_eq!(binding(&a, a_port), Binding::Unbound { remote_dom: B });
        assert_eq!(a.send(a_port), Ok(SendTarget::Dropped));
        assert_eq!(b.deliver_from(b_port, end(A, a_port)), None, "stale send");
        assert!(!a.unlink(unlink), "an unlink applies once");

        // B binds again, then A closes its end.
        let again = bind_interdomain(&mut b, &mut a, a_port).unwrap();
        assert_eq!(
            again,
            Delivery {
                port: b_port,
                vcpu: V0
            },
            "freed port notifies vCPU 0"
        );
        let unlink = a.close(a_port).unwrap().unwrap();
        assert!(!a.unlink(unlink), "an unlink belongs to the remote's table");
        assert!(b.unlink(unlink));
        assert_eq!(binding(&b, b_port), Binding::Unbound { remote_dom: A });
        assert_eq!(binding(&a, a_port), Binding::Closed);
    }

    #[test]
    fn bind_interdomain_requires_a_port_offered_to_the_binder() {
        let (mut a, mut b, mut c) = (table(A), table(B), table(C));
        let for_c = a.alloc_unbound(C).unwrap();
        assert_eq!(
            bind_interdomain(&mut b, &mut a, for_c),
            Err(EventError::NotOffered)
        );
        let ipi = a.bind_ipi(V0).unwrap();
        for port in [EvtchnPort(0), ipi, EvtchnPort(500)] {
            assert_eq!(
                bind_interdomain(&mut b, &mut a, port),
                Err(EventError::NotOffered)
            );
        }
        assert_eq!(
            bind_interdomain(&mut b, &mut a, EvtchnPort(DEFAULT_MAX_PORTS)),
            Err(EventError::InvalidPort)
        );
        // Failed binds allocate nothing.
        assert_eq!(b.alloc_unbound(A), Ok(EvtchnPort(1)));
        // A port binds once: the second binder finds it interdomain.
        bind_interdomain(&mut c, &mut a, for_c).unwrap();
        assert_eq!(
            bind_interdomain(&mut c, &mut a, for_c),
            Err(EventError::NotOffered)
        );
    }

    #[test]
    fn bind_interdomain_fails_when_the_binder_is_full() {
        let mut a = table(A);
        let mut b = Channels::new(B, 1, 2);
        b.bind_ipi(V0).unwrap();
        let offered = a.alloc_unbound(B).unwrap();
        assert_eq!(
            bind_interdomain(&mut b, &mut a, offered),
            Err(EventError::NoFreePort)
        );
        assert_eq!(
            binding(&a, offered),
            Binding::Unbound { remote_dom: B },
            "remote untouched"
        );
    }

    #[test]
    fn loopback_channels_deliver_and_close_locally() {
        let mut a = table(A);
        let offered = a.alloc_unbound(A).unwrap();
        let bound = a.bind_loopback(offered).unwrap();
        a.bind_vcpu(offered, V1).unwrap();
        assert_eq!(
            a.send(bound.port),
            Ok(SendTarget::Local(Delivery {
                port: offered,
                vcpu: V1
            }))
        );
        assert_eq!(
            a.send(offered),
            Ok(SendTarget::Local(Delivery {
                port: bound.port,
                vcpu: V0
            }))
        );
        assert_eq!(a.close(bound.port), Ok(None));
        assert_eq!(binding(&a, offered), Binding::Unbound { remote_dom: A });
        assert_eq!(a.bind_loopback(bound.port), Err(EventError::NotOffered));
        let for_b = a.alloc_unbound(B).unwrap();
        assert_eq!(
            a.bind_loopback(for_b),
            Err(EventError::NotOffered),
            "offered to B only"
        );
    }

    #[test]
    fn virqs_bind_once_per_vcpu_and_are_found_by_the_hypervisor() {
        let mut a = table(A);
        let timer = Virq::Timer.raw();
        let t0 = a.bind_virq(timer, V0).unwrap();
        let t1 = a.bind_virq(timer, V1).unwrap();
        assert_eq!(a.bind_virq(timer, V1), Err(EventError::VirqInUse));
        assert_eq!(
            a.virq_target(Virq::Timer, V0),
            Some(Delivery { port: t0, vcpu: V0 })
        );
        assert_eq!(
            a.virq_target(Virq::Timer, V1),
            Some(Delivery { port: t1, vcpu: V1 })
        );
        assert_eq!(
            a.status(t1).unwrap(),
            ChannelStatus {
                binding: Binding::Virq { virq: 0 },
                vcpu: V1
            }
        );
        assert_eq!(
            a.bind_vcpu(t1, V0),
            Err(EventError::WrongState),
            "per-vCPU VIRQ is fixed"
        );
        assert_eq!(a.send(t0), Err(EventError::WrongState));

        a.close(t1).unwrap();
        assert_eq!(a.virq_target(Virq::Timer, V1), None);
        assert_eq!(
            a.virq_target(Virq::Timer, V0),
            Some(Delivery { port: t0, vcpu: V0 })
        );
        assert_eq!(a.bind_virq(timer, V1), Ok(t1));
    }

    #[test]
    fn global_virqs_bind_on_vcpu0_and_may_move() {
        let mut a = table(A);
        let console = Virq::Console.raw();
        assert_eq!(
            a.bind_virq(console, V1),
            Err(EventError::GlobalVirqNotOnVcpu0)
        );
        let port = a.bind_virq(console, V0).unwrap();
        assert_eq!(a.bind_virq(console, V0), Err(EventError::VirqInUse));
        a.bind_vcpu(port, V1).unwrap();
        let moved = Some(Delivery { port, vcpu: V1 });
        assert_eq!(a.virq_target(Virq::Console, V0), moved);
        assert_eq!(
            a.virq_target(Virq::Console, V1),
            moved,
            "looked up on vCPU 0"
        );
        a.close(port).unwrap();
        assert_eq!(a.virq_target(Virq::Console, V0), None);
        assert_eq!(a.bind_virq(console, V0), Ok(port));
        assert_eq!(
            a.status(port).unwrap().vcpu,
            V0,
            "rebinding starts on vCPU 0"
        );
    }

    #[test]
    fn bad_virq_binds_are_rejected() {
        let mut a = table(A);
        assert_eq!(a.bind_virq(24, V0), Err(EventError::InvalidVirq));
        assert_eq!(a.bind_virq(u32::MAX, V0), Err(EventError::InvalidVirq));
        assert_eq!(
            a.bind_virq(Virq::Timer.raw(), VcpuId(2)),
            Err(EventError::NoSuchVcpu)
        );
        // An unassigned number below NR_VIRQS binds (as a global VIRQ), as in Xen.
        assert!(a.bind_virq(5, V0).is_ok());
        assert_eq!(a.virq_target(Virq::Debug, V0), None);
    }

    #[test]
    fn ipis_deliver_to_their_vcpu_only() {
        let mut a = table(A);
        let ipi = a.bind_ipi(V1).unwrap();
        assert_eq!(
            a.send(ipi),
            Ok(SendTarget::Local(Delivery {
                port: ipi,
                vcpu: V1
            }))
        );
        assert_eq!(a.bind_vcpu(ipi, V0), Err(EventError::WrongState));
        assert_eq!(binding(&a, ipi), Binding::Ipi);
        assert_eq!(a.close(ipi), Ok(None));
        assert_eq!(a.send(ipi), Err(EventError::WrongState));
    }

    #[test]
    fn bind_vcpu_moves_unbound_ports_until_they_are_freed() {
        let mut a = table(A);
        let port = a.alloc_unbound(B).unwrap();
        a.bind_vcpu(port, V1).unwrap();
        assert_eq!(a.notify_vcpu(port), Ok(V1));
        a.close(port).unwrap();
        assert_eq!(a.notify_vcpu(port), Ok(V0));
        assert_eq!(a.bind_vcpu(port, V1), Err(EventError::WrongState));
    }

    #[test]
    fn status_fills_the_abi_struct() {
        let (a, a_port, _, b_port) = linked();
        let mut out = EvtchnStatus {
            dom: DomId::SELF,
            port: a_port,
            ..Default::default()
        };
        a.status(a_port).unwrap().write_to(&mut out);
        assert_eq!(out.state(), Some(EvtchnState::Interdomain));
        assert_eq!((out.remote_dom(), out.remote_port()), (B, b_port));

        let mut c = table(C);
        let unbound = c.alloc_unbound(A).unwrap();
        let virq = c.bind_virq(Virq::Debug.raw(), V1).unwrap();
        c.status(unbound).unwrap().write_to(&mut out);
        assert_eq!(out.state(), Some(EvtchnState::Unbound));
        assert_eq!(out.detail, [1, 0]);
        c.status(virq).unwrap().write_to(&mut out);
        assert_eq!(
            (out.state(), out.irq(), out.vcpu),
            (Some(EvtchnState::Virq), 1, V1)
        );
        c.status(EvtchnPort(9)).unwrap().write_to(&mut out);
        assert_eq!(
            (out.state(), out.detail),
            (Some(EvtchnState::Closed), [0, 0])
        );
    }

    #[test]
    fn close_all_returns_remote_ends_and_empties_the_table() {
        let (mut a, a_port, mut b, b_port) = linked();
        let mut c = table(C);
        let c_offer = c.alloc_unbound(A).unwrap();
        let a_to_c = bind_interdomain(&mut a, &mut c, c_offer).unwrap().port;
        let loop_offer = a.alloc_unbound(A).unwrap();
        a.bind_loopback(loop_offer).unwrap();
        let timer = a.bind_virq(Virq::Timer.raw(), V0).unwrap();
        a.bind_ipi(V1).unwrap();

        let unlinks = a.close_all();
        assert_eq!(
            unlinks,
            [
                Unlink {
                    remote: end(B, b_port),
                    closed: end(A, a_port)
                },
                Unlink {
                    remote: end(C, c_offer),
                    closed: end(A, a_to_c)
                },
            ]
        );
        assert!(b.unlink(unlinks[0]) && c.unlink(unlinks[1]));
        assert_eq!(binding(&b, b_port), Binding::Unbound { remote_dom: A });
        assert_eq!(binding(&c, c_offer), Binding::Unbound { remote_dom: A });
        for port in 0..8 {
            assert_eq!(binding(&a, EvtchnPort(port)), Binding::Closed);
        }
        assert_eq!(a.virq_target(Virq::Timer, V0), None);
        assert_eq!(a.status(timer).unwrap().vcpu, V0);
        assert_eq!(
            a.memory_bytes(),
            Channels::new(A, 2, DEFAULT_MAX_PORTS).memory_bytes()
        );
    }

    #[test]
    fn eight_channels_fit_in_a_few_hundred_bytes() {
        let (mut a, mut b) = (Channels::new(A, 1, DEFAULT_MAX_PORTS), table(B));
        a.bind_virq(Virq::Timer.raw(), V0).unwrap();
        a.bind_virq(Virq::Debug.raw(), V0).unwrap();
        a.bind_ipi(V0).unwrap();
        a.bind_ipi(V0).unwrap();
        for _ in 0..2 {
            a.alloc_unbound(B).unwrap();
        }
        for _ in 0..2 {
            let offer = b.alloc_unbound(A).unwrap();
            bind_interdomain(&mut a, &mut b, offer).unwrap();
        }
        let bytes = a.memory_bytes();
        eprintln!("Channels with 8 ports on 1 vCPU: {bytes} bytes");
        let expected = size_of::<Channels>() + 9 * size_of::<Channel>() + 48;
        assert_eq!(bytes, expected);
        assert!(bytes <= 256, "{bytes} bytes");
    }

    #[test]
    fn the_table_grows_by_doubling_up_to_its_limit() {
        let mut a = Channels::new(A, 1, 40);
        let base = a.memory_bytes();
        for _ in 1..40 {
            a.bind_ipi(V0).unwrap();
        }
        assert_eq!(a.memory_bytes() - base, (40 - 1) * size_of::<Channel>());
    }

    #[test]
    fn a_port_closed_and_rebound_elsewhere_meanwhile_is_not_half_closed() {
        // vCPU 0 of A closes port X, a loopback channel: it reads X's peer (A itself, so it
        // locks A's table alone) and drops the lock. Meanwhile vCPU 1 closes X and binds the
        // same number to B's offer. Closing by the stale read must not free X while B's end
        // stays linked to it (before the check, the unlink for B was returned and dropped,
        // leaving B's port connected to a free port of A for good).
        let (mut a, mut b) = (table(A), table(B));
        let offer = a.alloc_unbound(A).unwrap();
        let x = a.bind_loopback(offer).unwrap().port;
        let seen = a.peer(x);
        assert_eq!(seen, Some(end(A, offer)));
        a.close(x).unwrap();
        let b_offer = b.alloc_unbound(A).unwrap();
        assert_eq!(
            bind_interdomain(&mut a, &mut b, b_offer).unwrap().port,
            x,
            "the lowest free port again"
        );
        assert_eq!(
            close_checked(&mut a, None, x, seen),
            Err(EventError::Changed)
        );
        assert_eq!(
            binding(&a, x),
            Binding::Interdomain {
                remote: end(B, b_offer)
            }
        );
        assert_eq!(
            binding(&b, b_offer),
            Binding::Interdomain { remote: end(A, x) }
        );
        // Read again, with B's table held this time: both ends go, B's back to unbound.
        let seen = a.peer(x);
        assert_eq!(close_checked(&mut a, Some(&mut b), x, seen), Ok(()));
        assert_eq!(binding(&a, x), Binding::Closed);
        assert_eq!(binding(&b, b_offer), Binding::Unbound { remote_dom: A });
    }

    #[test]
    fn close_checked_closes_every_kind_of_port() {
        let (mut a, a_port, mut b, b_port) = linked();
        assert_eq!(
            close_checked(&mut b, Some(&mut a), b_port, Some(end(A, a_port))),
            Ok(())
        );
        assert_eq!(binding(&a, a_port), Binding::Unbound { remote_dom: B });
        let ipi = a.bind_ipi(V1).unwrap();
        assert_eq!(close_checked(&mut a, None, ipi, None), Ok(()));
        assert_eq!(
            close_checked(&mut a, None, ipi, None),
            Err(EventError::WrongState),
            "free now"
        );
        // A peer whose domain is gone has nothing to unlink.
        let (mut c, c_port, _, d_port) = linked();
        assert_eq!(
            close_checked(&mut c, None, c_port, Some(end(B, d_port))),
            Ok(())
        );
        assert_eq!(binding(&c, c_port), Binding::Closed);
    }

    #[test]
    fn the_hypervisor_stands_in_for_a_backend_until_it_binds() {
        let mut a = table(A);
        let mut b = table(B);
        let port = a.alloc_unbound(B).unwrap();
        assert_eq!(a.send(port), Ok(SendTarget::Dropped));
        assert_eq!(a.standin_delivery(port, B), Some(Delivery { port, vcpu: V0 }));
        assert_eq!(a.standin_delivery(port, C), None, "another backend's port");
        bind_interdomain(&mut b, &mut a, port).unwrap();
        assert_eq!(a.standin_delivery(port, B), None, "the backend bound it");
        let hv = a.bind_hypervisor().unwrap();
        assert_eq!(a.standin_delivery(hv, B), Some(Delivery { port: hv, vcpu: V0 }));
        assert_eq!(a.standin_delivery(EvtchnPort(999), B), None);
    }

    #[test]
    fn the_hypervisor_end_sends_to_the_hypervisor_and_can_be_raised() {
        let mut a = table(A);
        let port = a.bind_hypervisor().unwrap();
        assert_eq!(port, EvtchnPort(1));
        assert_eq!(a.send(port), Ok(SendTarget::Hypervisor(port)));
        assert_eq!(
            a.hypervisor_delivery(port),
            Some(Delivery { port, vcpu: V0 })
        );
        let mut out = EvtchnStatus::default();
        a.status(port).unwrap().write_to(&mut out);
        assert_eq!(out.state(), Some(EvtchnState::Interdomain));
        assert_eq!(
            (out.remote_dom(), out.remote_port()),
            (DomId::XEN, EvtchnPort(0))
        );
        a.bind_vcpu(port, V1).unwrap();
        assert_eq!(
            a.hypervisor_delivery(port),
            Some(Delivery { port, vcpu: V1 })
        );
        assert_eq!(a.close(port), Ok(None));
        assert_eq!(a.hypervisor_delivery(port), None, "closed by the guest");
        a.bind_ipi(V0).unwrap();
        assert_eq!(
            a.hypervisor_delivery(port),
            None,
            "the number re-bound to something else"
        );
        assert_eq!(a.hypervisor_delivery(EvtchnPort(5000)), None);
    }
}
