//! Property test of the event channels against a reference model: random sequences of
//! `event_channel_op`s, VIRQs raised by the hypervisor, guest actions on the shared-info
//! bitmaps and domain destruction, across two domains, applied both to the real tables and
//! bitmaps (driven the way the hypervisor's `pv/events.rs` drives them: `close` unlinks the
//! remote end and clears the pending bit, a send to another domain goes through its
//! `deliver_from`, a bind marks the new port pending) and to a plain model of Xen's rules.
//!
//! After every step: each operation's result (port, errno, or a poll's outcome: ready, or
//! blocking on one port or any) is the model's; every port's
//! status is the model's; the pending, mask and selector bits and the upcall flags are the
//! model's; no port is linked to two others and every link is mutual; a pending bit is set
//! only on a port in use (closed ports deliver nothing); the table holds exactly the
//! model's ports; the hypervisor's VIRQ lookups find the model's ports. Test-only. More
//! cases: `PROPTEST_CASES=5000 cargo test -p events proptests`.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use abi::errno::Errno;
use abi::hypercall::{Virq, NR_VIRQS};
use abi::ids::{DomId, EvtchnPort, VcpuId};
use proptest::prelude::*;

use crate::bitmap::fake::FakePage;
use crate::bitmap::{self, SharedPage};
use crate::error::EventError;
use crate::poll::{self, PollOutcome, PollTarget};
use crate::table::{
    bind_interdomain, close_checked, Binding, Channels, Delivery, Endpoint, SendTarget,
};

/// The two domains (indices 0 and 1) and a third that exists only as a name.
const DOMS: [DomId; 3] = [DomId(1), DomId(2), DomId(3)];
/// vCPUs of each domain (the fake page has 4).
const NR_VCPUS: [u32; 2] = [2, 3];

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` in the environment wins over the default given here.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// One step. `d` is the acting domain (0 or 1); ports and vCPUs are raw guest values.
#[derive(Clone, Debug)]
enum Op {
    AllocUnbound {
        d: usize,
        remote: usize,
    },
    /// `remote` 0 or 1: the other domain's port, or (the same domain) a loopback bind.
    BindInterdomain {
        d: usize,
        remote: usize,
        port: u32,
    },
    BindVirq {
        d: usize,
        virq: u32,
        vcpu: u32,
    },
    BindIpi {
        d: usize,
        vcpu: u32,
    },
    BindVcpu {
        d: usize,
        port: u32,
        vcpu: u32,
    },
    Close {
        d: usize,
        port: u32,
    },
    Send {
        d: usize,
        port: u32,
    },
    Unmask {
        d: usize,
        port: u32,
    },
    Status {
        d: usize,
        port: u32,
    },
    /// The hypervisor raises a VIRQ for a vCPU.
    RaiseVirq {
        d: usize,
        virq: Virq,
        vcpu: u32,
    },
    /// The guest masks a port, clears a pending bit, or runs its upcall handler.
    GuestMask {
        d: usize,
        port: u32,
    },
    GuestClear {
        d: usize,
        port: u32,
    },
    GuestDrain {
        d: usize,
        vcpu: u32,
    },
    /// The domain is destroyed (its ports closed, remote ends unlinked) and built again.
    Destroy {
        d: usize,
    },
    /// `SCHEDOP_poll` on a list of ports: ready, block (and on what), or refused.
    Poll {
        d: usize,
        ports: Vec<u32>,
    },
}

fn op(max_ports: u32) -> impl Strategy<Value = Op> {
    let d = 0usize..2;
    let port = prop_oneof![8 => 0u32..max_ports + 2, 1 => Just(u32::MAX), 1 => 0u32..4200];
    let vcpu = prop_oneof![6 => 0u32..4, 1 => any::<u32>()];
    let virq = prop_oneof![4 => proptest::sample::select(Virq::ALL.to_vec()).prop_map(Virq::raw), 2 => 0u32..NR_VIRQS + 2, 1 => any::<u32>()];
    prop_oneof![
        4 => (d.clone(), 0usize..3).prop_map(|(d, remote)| Op::AllocUnbound { d, remote }),
        4 => (d.clone(), 0usize..2, port.clone()).prop_map(|(d, remote, port)| Op::BindInterdomain { d, remote, port }),
        2 => (d.clone(), virq, vcpu.clone()).prop_map(|(d, virq, vcpu)| Op::BindVirq { d, virq, vcpu }),
        2 => (d.clone(), vcpu.clone()).prop_map(|(d, vcpu)| Op::BindIpi { d, vcpu }),
        2 => (d.clone(), port.clone(), vcpu.clone()).prop_map(|(d, port, vcpu)| Op::BindVcpu { d, port, vcpu }),
        3 => (d.clone(), port.clone()).prop_map(|(d, port)| Op::Close { d, port }),
        5 => (d.clone(), port.clone()).prop_map(|(d, port)| Op::Send { d, port }),
        2 => (d.clone(), port.clone()).prop_map(|(d, port)| Op::Unmask { d, port }),
        1 => (d.clone(), port.clone()).prop_map(|(d, port)| Op::Status { d, port }),
        2 => (d.clone(), proptest::sample::select(Virq::ALL.to_vec()), 0u32..4).prop_map(|(d, virq, vcpu)| Op::RaiseVirq { d, virq, vcpu }),
        2 => (d.clone(), 0u32..max_ports + 2).prop_map(|(d, port)| Op::GuestMask { d, port }),
        1 => (d.clone(), 0u32..max_ports + 2).prop_map(|(d, port)| Op::GuestClear { d, port }),
        2 => (d.clone(), 0u32..4).prop_map(|(d, vcpu)| Op::GuestDrain { d, vcpu }),
        1 => d.clone().prop_map(|d| Op::Destroy { d }),
        2 => (d, prop_oneof![
            8 => proptest::collection::vec(port.clone(), 0..6),
            1 => proptest::collection::vec(port, 126..131),
        ]).prop_map(|(d, ports)| Op::Poll { d, ports }),
    ]
}

// ---- The model. ----

/// A poll's outcome as a step result: ready, blocking on any port, or on one port.
const POLL_READY: u32 = 1;
const POLL_BLOCK_ANY: u32 = 2;
const POLL_BLOCK_ON: u32 = 0x1_0000;

/// A port in use, in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bound {
    Unbound(DomId),
    Linked(DomId, u32),
    Virq(u32),
    Ipi,
}

/// Timer, debug, xenoprof and xenpmu bind per vCPU; every other number is global.
fn per_vcpu(virq: u32) -> bool {
    matches!(virq, 0 | 1 | 7 | 13)
}

#[derive(Clone, Debug)]
struct ModelDom {
    id: DomId,
    nr_vcpus: u32,
    max_ports: u32,
    /// Ports in use: binding and notified vCPU.
    ports: BTreeMap<u32, (Bound, u32)>,
    pending: BTreeSet<u32>,
    masked: BTreeSet<u32>,
    selector: [u64; 4],
    upcall: [bool; 4],
}

impl ModelDom {
    fn new(id: DomId, nr_vcpus: u32, max_ports: u32) -> Self {
        Self {
            id,
            nr_vcpus,
            max_ports,
            ports: BTreeMap::new(),
            pending: BTreeSet::new(),
            masked: BTreeSet::new(),
            selector: [0; 4],
            upcall: [false; 4],
        }
    }

    fn free_port(&self) -> Result<u32, Errno> {
        (1..self.max_ports)
            .find(|p| !self.ports.contains_key(p))
            .ok_or(Errno::Enospc)
    }

    /// A port below the limit, or `EINVAL`.
    fn valid(&self, port: u32) -> Result<Option<(Bound, u32)>, Errno> {
        if port >= self.max_ports {
            return Err(Errno::Einval);
        }
        Ok(self.ports.get(&port).copied())
    }

    /// Xen's 2-level `set_pending`.
    fn set_pending(&mut self, port: u32, vcpu: u32) {
        if !self.pending.insert(port) || self.masked.contains(&port) {
            return;
        }
        self.flag_word(port / 64, vcpu);
    }

    fn flag_word(&mut self, word: u32, vcpu: u32) {
        let bit = 1u64 << word;
        if self.selector[vcpu as usize] & bit == 0 {
            self.selector[vcpu as usize] |= bit;
            self.upcall[vcpu as usize] = true;
        }
    }

    fn unmask(&mut self, port: u32, vcpu: u32) {
        if self.masked.remove(&port) && self.pending.contains(&port) {
            self.flag_word(port / 64, vcpu);
        }
    }

    /// The guest's upcall handler: takes the unmasked pending ports of flagged words.
    fn drain(&mut self, vcpu: u32) {
        self.upcall[vcpu as usize] = false;
        let selector = core::mem::take(&mut self.selector[vcpu as usize]);
        let masked = &self.masked;
        self.pending
            .retain(|&port| selector & (1 << (port / 64)) == 0 || masked.contains(&port));
    }

    /// Where the hypervisor raising `virq` for `vcpu` delivers.
    fn virq_target(&self, virq: u32, vcpu: u32) -> Option<(u32, u32)> {
        self.ports.iter().find_map(|(&port, &(bound, notify))| {
            (bound == Bound::Virq(virq) && (!per_vcpu(virq) || notify == vcpu))
                .then_some((port, notify))
        })
    }
}

#[derive(Clone, Debug)]
struct Model {
    doms: [ModelDom; 2],
}

impl Model {
    fn index(&self, dom: DomId) -> Option<usize> {
        self.doms.iter().position(|d| d.id == dom)
    }

    /// The step's result: a port, or 0, or an errno.
    fn apply(&mut self, op: Op) -> Result<u32, Errno> {
        match op {
            Op::AllocUnbound { d, remote } => {
                let dom = &mut self.doms[d];
                let port = dom.free_port()?;
                dom.ports.insert(port, (Bound::Unbound(DOMS[remote]), 0));
                Ok(port)
            }
            Op::BindInterdomain { d, remote, port } => {
                let me = self.doms[d].id;
                // The remote port must be unbound and offered to this domain.
                match self.doms[remote].valid(port)? {
                    Some((Bound::Unbound(offered_to), _)) if offered_to == me => {}
                    _ => return Err(Errno::Einval),
                }
                let local = self.doms[d].free_port()?;
                let remote_id = self.doms[remote].id;
                self.doms[d]
                    .ports
                    .insert(local, (Bound::Linked(remote_id, port), 0));
                self.doms[remote].ports.get_mut(&port).unwrap().0 = Bound::Linked(me, local);
                self.doms[d].set_pending(local, 0);
                Ok(local)
            }
            Op::BindVirq { d, virq, vcpu } => {
                let dom = &mut self.doms[d];
                if virq >= NR_VIRQS || (!per_vcpu(virq) && vcpu != 0) {
                    return Err(Errno::Einval);
                }
                if vcpu >= dom.nr_vcpus {
                    return Err(Errno::Enoent);
                }
                let taken = dom.ports.values().any(|&(bound, notify)| {
                    bound == Bound::Virq(virq) && (!per_vcpu(virq) || notify == vcpu)
                });
                if taken {
                    return Err(Errno::Eexist);
                }
                let port = dom.free_port()?;
                dom.ports.insert(port, (Bound::Virq(virq), vcpu));
                Ok(port)
            }
            Op::BindIpi { d, vcpu } => {
                let dom = &mut self.doms[d];
                if vcpu >= dom.nr_vcpus {
                    return Err(Errno::Enoent);
                }
                let port = dom.free_port()?;
                dom.ports.insert(port, (Bound::Ipi, vcpu));
                Ok(port)
            }
            Op::BindVcpu { d, port, vcpu } => {
                let dom = &mut self.doms[d];
                if vcpu >= dom.nr_vcpus {
                    return Err(Errno::Enoent);
                }
                match dom.valid(port)? {
                    Some((Bound::Unbound(_) | Bound::Linked(..), _)) => {}
                    Some((Bound::Virq(virq), _)) if !per_vcpu(virq) => {}
                    _ => return Err(Errno::Einval),
                }
                dom.ports.get_mut(&port).unwrap().1 = vcpu;
                Ok(0)
            }
            Op::Close { d, port } => {
                let me = self.doms[d].id;
                let (bound, _) = self.doms[d].valid(port)?.ok_or(Errno::Einval)?;
                self.doms[d].ports.remove(&port);
                if let Bound::Linked(remote, remote_port) = bound {
                    let r = self.index(remote).unwrap();
                    if let Some(end) = self.doms[r].ports.get_mut(&remote_port) {
                        if end.0 == Bound::Linked(me, port) {
                            end.0 = Bound::Unbound(me);
                        }
                    }
                }
                self.doms[d].pending.remove(&port);
                Ok(0)
            }
            Op::Send { d, port } => {
                let me = self.doms[d].id;
                match self.doms[d].valid(port)?.ok_or(Errno::Einval)? {
                    (Bound::Ipi, vcpu) => self.doms[d].set_pending(port, vcpu),
                    (Bound::Unbound(_), _) => {}
                    (Bound::Linked(remote, remote_port), _) => {
                        let r = self.index(remote).unwrap();
                        if let Some(&(Bound::Linked(dom, p), vcpu)) =
                            self.doms[r].ports.get(&remote_port)
                        {
                            if dom == me && p == port {
                                self.doms[r].set_pending(remote_port, vcpu);
                            }
                        }
                    }
                    (Bound::Virq(_), _) => return Err(Errno::Einval),
                }
                Ok(0)
            }
            Op::Unmask { d, port } => {
                let dom = &mut self.doms[d];
                let vcpu = dom.valid(port)?.map_or(0, |(_, vcpu)| vcpu);
                dom.unmask(port, vcpu);
                Ok(0)
            }
            Op::Status { d, port } => self.doms[d].valid(port).map(|_| 0),
            Op::RaiseVirq { d, virq, vcpu } => {
                let dom = &mut self.doms[d];
                if let Some((port, notify)) = dom.virq_target(virq.raw(), vcpu) {
                    dom.set_pending(port, notify);
                }
                Ok(0)
            }
            Op::GuestMask { d, port } => {
                self.doms[d].masked.insert(port);
                Ok(0)
            }
            Op::GuestClear { d, port } => {
                self.doms[d].pending.remove(&port);
                Ok(0)
            }
            Op::GuestDrain { d, vcpu } => {
                self.doms[d].drain(vcpu);
                Ok(0)
            }
            Op::Poll { d, ports } => {
                if ports.len() > crate::limits::MAX_POLL_PORTS {
                    return Err(Errno::Einval);
                }
                for &port in &ports {
                    if port >= 4096 {
                        return Err(Errno::Einval);
                    }
                    if self.doms[d].pending.contains(&port) {
                        return Ok(POLL_READY);
                    }
                }
                Ok(match ports[..] {
                    [port] => POLL_BLOCK_ON + port,
                    _ => POLL_BLOCK_ANY,
                })
            }
            Op::Destroy { d } => {
                let me = self.doms[d].id;
                let links: Vec<(DomId, u32, u32)> = self.doms[d]
                    .ports
                    .iter()
                    .filter_map(|(&port, &(bound, _))| match bound {
                        Bound::Linked(remote, remote_port) if remote != me => {
                            Some((remote, remote_port, port))
                        }
                        _ => None,
                    })
                    .collect();
                for (remote, remote_port, port) in links {
                    let r = self.index(remote).unwrap();
                    if let Some(end) = self.doms[r].ports.get_mut(&remote_port) {
                        if end.0 == Bound::Linked(me, port) {
                            end.0 = Bound::Unbound(me);
                        }
                    }
                }
                let old = &self.doms[d];
                self.doms[d] = ModelDom::new(old.id, old.nr_vcpus, old.max_ports);
                Ok(0)
            }
        }
    }
}

// ---- The real thing, driven as the hypervisor drives it. ----

struct Real {
    tables: [Channels; 2],
    pages: [Box<FakePage>; 2],
    max_ports: [u32; 2],
}

impl Real {
    fn new(max_ports: [u32; 2]) -> Self {
        Self {
            tables: [0, 1].map(|d| Channels::new(DOMS[d], NR_VCPUS[d], max_ports[d])),
            pages: [FakePage::new(), FakePage::new()],
            max_ports,
        }
    }

    fn index(dom: DomId) -> usize {
        DOMS.iter().position(|&d| d == dom).unwrap()
    }

    fn deliver(&self, d: usize, delivery: Delivery) {
        bitmap::set_pending(&*self.pages[d], delivery.port, delivery.vcpu);
    }

    fn apply(&mut self, op: Op) -> Result<u32, Errno> {
        let err = |e: EventError| e.errno();
        match op {
            Op::AllocUnbound { d, remote } => self.tables[d]
                .alloc_unbound(DOMS[remote])
                .map(|p| p.0)
                .map_err(err),
            Op::BindInterdomain { d, remote, port } => {
                let delivery = if remote == d {
                    self.tables[d].bind_loopback(EvtchnPort(port))
                } else {
                    let [a, b] = &mut self.tables;
                    let (local, other) = if d == 0 { (a, b) } else { (b, a) };
                    bind_interdomain(local, other, EvtchnPort(port))
                }
                .map_err(err)?;
                self.deliver(d, delivery);
                Ok(delivery.port.0)
            }
            Op::BindVirq { d, virq, vcpu } => self.tables[d]
                .bind_virq(virq, VcpuId(vcpu))
                .map(|p| p.0)
                .map_err(err),
            Op::BindIpi { d, vcpu } => self.tables[d]
                .bind_ipi(VcpuId(vcpu))
                .map(|p| p.0)
                .map_err(err),
            Op::BindVcpu { d, port, vcpu } => self.tables[d]
                .bind_vcpu(EvtchnPort(port), VcpuId(vcpu))
                .map(|()| 0)
                .map_err(err),
            Op::Close { d, port } => {
                // As the hypervisor closes: the peer read first, then both tables held.
                let port = EvtchnPort(port);
                let seen = self.tables[d].peer(port);
                let other = seen
                    .map(|p| Self::index(p.dom))
                    .filter(|&r| r != d && r < 2);
                match other {
                    Some(r) => {
                        let (low, high) = self.tables.split_at_mut(1);
                        let (local, remote) = if d == 0 {
                            (&mut low[0], &mut high[0])
                        } else {
                            (&mut high[0], &mut low[0])
                        };
                        debug_assert_eq!(r, 1 - d);
                        close_checked(local, Some(remote), port, seen).map_err(err)?;
                    }
                    None => close_checked(&mut self.tables[d], None, port, seen).map_err(err)?,
                }
                bitmap::clear_pending(&*self.pages[d], port);
                Ok(0)
            }
            Op::Send { d, port } => {
                match self.tables[d].send(EvtchnPort(port)).map_err(err)? {
                    SendTarget::Local(delivery) => self.deliver(d, delivery),
                    SendTarget::Remote { to, from } => {
                        let r = Self::index(to.dom);
                        if let Some(delivery) = self.tables[r].deliver_from(to.port, from) {
                            self.deliver(r, delivery);
                        }
                    }
                    // No port here is bound to the hypervisor.
                    SendTarget::Dropped | SendTarget::Hypervisor(_) => {}
                }
                Ok(0)
            }
            Op::Unmask { d, port } => {
                let vcpu = self.tables[d].notify_vcpu(EvtchnPort(port)).map_err(err)?;
                bitmap::unmask(&*self.pages[d], EvtchnPort(port), vcpu);
                Ok(0)
            }
            Op::Status { d, port } => self.tables[d]
                .status(EvtchnPort(port))
                .map(|_| 0)
                .map_err(err),
            Op::RaiseVirq { d, virq, vcpu } => {
                if let Some(delivery) = self.tables[d].virq_target(virq, VcpuId(vcpu)) {
                    self.deliver(d, delivery);
                }
                Ok(0)
            }
            Op::GuestMask { d, port } => {
                self.pages[d].mask_port(port);
                Ok(0)
            }
            Op::GuestClear { d, port } => {
                self.pages[d].pending[(port / 64) as usize]
                    .fetch_and(!(1 << (port % 64)), Ordering::SeqCst);
                Ok(0)
            }
            Op::GuestDrain { d, vcpu } => {
                self.pages[d].guest_drain(vcpu);
                Ok(0)
            }
            Op::Poll { d, ports } => {
                let ports: Vec<EvtchnPort> = ports.into_iter().map(EvtchnPort).collect();
                match poll::check(&*self.pages[d], &ports).map_err(err)? {
                    PollOutcome::Ready => Ok(POLL_READY),
                    PollOutcome::Block(PollTarget::AnyPort) => Ok(POLL_BLOCK_ANY),
                    PollOutcome::Block(PollTarget::Port(port)) => Ok(POLL_BLOCK_ON + port.0),
                }
            }
            Op::Destroy { d } => {
                for unlink in self.tables[d].close_all() {
                    let r = Self::index(unlink.remote.dom);
                    if r < 2 {
                        self.tables[r].unlink(unlink);
                    }
                }
                self.tables[d] = Channels::new(DOMS[d], NR_VCPUS[d], self.max_ports[d]);
                self.pages[d] = FakePage::new();
                Ok(0)
            }
        }
    }
}

/// The model's view of `port` of domain `d`, as `EVTCHNOP_status` reports it.
fn expected_status(model: &ModelDom, port: u32) -> (Binding, VcpuId) {
    match model.ports.get(&port) {
        None => (Binding::Closed, VcpuId(0)),
        Some(&(bound, vcpu)) => {
            let binding = match bound {
                Bound::Unbound(remote_dom) => Binding::Unbound { remote_dom },
                Bound::Linked(dom, port) => Binding::Interdomain {
                    remote: Endpoint {
                        dom,
                        port: EvtchnPort(port),
                    },
                },
                Bound::Virq(virq) => Binding::Virq { virq },
                Bound::Ipi => Binding::Ipi,
            };
            (binding, VcpuId(vcpu))
        }
    }
}

/// Compares everything observable, and checks the model-free invariants.
fn check(real: &Real, model: &Model) -> Result<(), TestCaseError> {
    for (d, &me) in DOMS.iter().enumerate().take(2) {
        let (table, page, m) = (&real.tables[d], &*real.pages[d], &model.doms[d]);
        let mut in_use = 0;
        for port in 0..m.max_ports + 2 {
            let status = table.status(EvtchnPort(port));
            if port >= m.max_ports {
                prop_assert_eq!(status, Err(EventError::InvalidPort));
                continue;
            }
            let status = status.unwrap();
            prop_assert_eq!(
                (status.binding, status.vcpu),
                expected_status(m, port),
                "dom {} port {}",
                d,
                port
            );
            if status.binding != Binding::Closed {
                in_use += 1;
            }
            // Every link is mutual, so no port is linked to two others.
            if let Binding::Interdomain { remote } = status.binding {
                let r = Real::index(remote.dom);
                prop_assert!(r < 2, "linked to a domain that does not exist");
                let back = real.tables[r].peer(remote.port);
                prop_assert_eq!(
                    back,
                    Some(Endpoint {
                        dom: me,
                        port: EvtchnPort(port)
                    }),
                    "one-sided link"
                );
            }
            // Closed ports deliver nothing: a pending bit only on a port in use.
            let pending = bitmap::is_pending(page, EvtchnPort(port));
            prop_assert!(
                !pending || status.binding != Binding::Closed,
                "dom {} closed port {} is pending",
                d,
                port
            );
        }
        prop_assert_eq!(in_use, m.ports.len());
        prop_assert_eq!(
            table.status(EvtchnPort(u32::MAX)),
            Err(EventError::InvalidPort)
        );
        let words = (m.max_ports as usize).div_ceil(64) + 1;
        for word in 0..words.min(64) {
            let bits = |set: &BTreeSet<u32>| {
                set.iter()
                    .filter(|&&p| p / 64 == word as u32)
                    .fold(0u64, |w, &p| w | 1 << (p % 64))
            };
            prop_assert_eq!(
                page.pending_word(word).load(Ordering::SeqCst),
                bits(&m.pending),
                "pending word {}",
                word
            );
            prop_assert_eq!(
                page.mask_word(word).load(Ordering::SeqCst),
                bits(&m.masked),
                "mask word {}",
                word
            );
        }
        for vcpu in 0..4 {
            let v = VcpuId(vcpu);
            prop_assert_eq!(
                page.pending_sel(v).load(Ordering::SeqCst),
                m.selector[vcpu as usize]
            );
            prop_assert_eq!(
                page.upcall_pending(v).load(Ordering::SeqCst) != 0,
                m.upcall[vcpu as usize]
            );
        }
        for &virq in Virq::ALL {
            for vcpu in 0..4 {
                let found = table
                    .virq_target(virq, VcpuId(vcpu))
                    .map(|t| (t.port.0, t.vcpu.0));
                prop_assert_eq!(
                    found,
                    m.virq_target(virq.raw(), vcpu),
                    "{:?} on vCPU {}",
                    virq,
                    vcpu
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1000))]

    /// Random operations on two domains, small limits (so tables fill up) or the default.
    #[test]
    fn channels_follow_the_model(
        (max_ports, ops) in prop_oneof![3 => 2u32..12, 1 => 12u32..70, 1 => Just(1024)]
            .prop_flat_map(|max| (Just(max), proptest::collection::vec(op(max), 1..120))),
        other_max in prop_oneof![2u32..12, Just(1024)],
    ) {
        let max = [max_ports, other_max];
        let mut real = Real::new(max);
        let mut model = Model {
            doms: [0, 1].map(|d| ModelDom::new(DOMS[d], NR_VCPUS[d], max[d])),
        };
        for (step, op) in ops.iter().enumerate() {
            let got = real.apply(op.clone());
            let expected = model.apply(op.clone());
            prop_assert_eq!(got, expected, "step {}: {:?}", step, op);
            check(&real, &model)?;
        }
    }
}
