//! Events for PV guests: delivering the event upcall on the way back into a guest, blocking
//! until an event arrives, single-shot timers that raise VIRQ_TIMER — and (with the `events`
//! crate) the event-channel hypercall.
//!
//! The upcall follows Xen's 2-level ABI: when the vCPU's `evtchn_upcall_pending` is set and
//! its `evtchn_upcall_mask` clear, the guest's event callback is entered through a bounce
//! frame with events masked. It is checked on every return to guest mode, so an event raised
//! while the vCPU ran (or was woken) is taken at its next exit. A sender wakes a blocked
//! target and interrupts its CPU only when it runs there with events unmasked; one waiting
//! for its CPU takes the upcall when it is switched in.
//!
//! Event bits are written into the target's shared-info frame with the target's channel
//! lock held, and only while the target is not dead: its destruction marks it dead and then
//! takes that lock (closing its channels) before the frame is freed, so no sender ever
//! writes into a freed frame.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use abi::errno::Errno;
use abi::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVcpu, EvtchnBindVirq, EvtchnClose, EvtchnReset, EvtchnSend,
    EvtchnStatus, EvtchnUnmask,
};
use abi::hypercall::{EvtchnOp, Virq};
use abi::sched::SchedPoll;
use alloc::sync::Arc;
use arrayvec::ArrayVec;
use events::limits::MAX_POLL_PORTS;
use events::poll::{PollOutcome, PollTarget};
use abi::ids::{DomId, EvtchnPort, VcpuId};
use events::bitmap::{set_pending, Notify};
use events::table::bind_interdomain;
use events::{Channels, Delivery, EventError, SendTarget, SharedPage};
use hypervisor::hypercall::GuestVa;
use mm::frame::DomainId;

use crate::arch::trap::TrapFrame;
use crate::arch::tempmap::Shared;
use crate::arch::uaccess;
use crate::domain::{self, Domain, LifeState, Vcpu};
use crate::memory::FrameMapping;
use crate::pv::hypercall::HcResult;
use hypervisor::continuation::{Outcome, Stop};
use crate::pv::{shared, traps};
use crate::sched;

/// The most one new port can make a channel table allocate: the table doubling to its
/// 1024-port limit (12 KiB) while the old one (6 KiB) is still held, rounded up.
const CHANNEL_TABLE_GROWTH_BYTES: u64 = 32 << 10;

/// The domain's shared-info page as the `events` crate sees it: its event words as atomics,
/// through a temporary mapping on this CPU; and one vCPU's `vcpu_info` event fields,
/// wherever that vCPU's `vcpu_info` lives (its slot in shared info, or the guest frame it
/// was moved to, mapped too).
struct Page {
    shared: FrameMapping,
    /// The vCPU whose fields [`SharedPage`]'s per-vCPU words are, and where its
    /// `vcpu_info` is mapped (in `shared`, or in `moved`, kept mapped while the page lives).
    vcpu: VcpuId,
    moved: Option<FrameMapping>,
    /// The byte offset of that `vcpu_info` in its frame (8-aligned, 64 bytes inside it).
    info: usize,
}

impl Page {
    /// The bitmaps of `domain` and the fields of `vcpu`'s `vcpu_info`.
    fn new(domain: &Domain, vcpu: VcpuId) -> Page {
        let shared = FrameMapping::new(domain.shared_info).expect("a temporary mapping slot is free");
        let (mfn, info) = shared::vcpu_info_at(domain, vcpu.0);
        let moved = (mfn != domain.shared_info).then(|| FrameMapping::new(mfn).expect("a temporary mapping slot is free"));
        Page { shared, vcpu, moved, info }
    }

    /// The bitmaps of `domain` only (no vCPU's fields are touched through it).
    fn bitmaps(domain: &Domain) -> Page {
        Page::new(domain, VcpuId(0))
    }

    /// The field `offset` bytes into `vcpu`'s `vcpu_info`, as an atomic (the guest reads
    /// and writes it concurrently). Every caller asks for the vCPU the page was made for
    /// (the events crate passes the delivery's vCPU through); any other falls back to its
    /// slot in shared info, a frame that is always the domain's.
    fn vcpu_field<T: Shared>(&self, vcpu: VcpuId, offset: usize) -> &T {
        debug_assert_eq!(vcpu, self.vcpu);
        if vcpu == self.vcpu {
            self.moved.as_ref().unwrap_or(&self.shared).atomic(self.info + offset)
        } else {
            self.shared.atomic(VCPU_INFO * (vcpu.0 as usize % 32) + offset)
        }
    }
}

const PENDING: usize = 2048;
const MASK: usize = 2560;
const VCPU_INFO: usize = 64;

impl SharedPage for Page {
    fn pending_word(&self, word: usize) -> &AtomicU64 {
        self.shared.atomic(PENDING + word % 64 * 8)
    }
    fn mask_word(&self, word: usize) -> &AtomicU64 {
        self.shared.atomic(MASK + word % 64 * 8)
    }
    fn pending_sel(&self, vcpu: VcpuId) -> &AtomicU64 {
        self.vcpu_field(vcpu, 8)
    }
    fn upcall_pending(&self, vcpu: VcpuId) -> &AtomicU8 {
        self.vcpu_field(vcpu, 0)
    }
    fn upcall_mask(&self, vcpu: VcpuId) -> &AtomicU8 {
        self.vcpu_field(vcpu, 1)
    }
}

/// Marks `delivery.port` pending in `domain`'s shared-info frame unless the domain is dead
/// (being destroyed). `_channels` is the domain's channel table, locked by the caller: see
/// the module documentation.
fn mark_pending(domain: &Domain, _channels: &Channels, delivery: Delivery) -> Option<Notify> {
    if domain.state() == LifeState::Dead {
        return None;
    }
    domain.counters.events_sent.fetch_add(1, Ordering::Relaxed);
    Some(set_pending(&Page::new(domain, delivery.vcpu), delivery.port, delivery.vcpu))
}

/// Marks `delivery.port` pending in `domain` and wakes or kicks the vCPU it notifies, and
/// any vCPU polling for the port.
fn deliver(domain: &Domain, delivery: Delivery) {
    let notify = mark_pending(domain, &domain.channels.lock(), delivery);
    if let Some(notify) = notify {
        wake_for(domain, delivery, notify);
    }
}

/// After `delivery` was marked pending with outcome `notify`: wakes the vCPUs polling its
/// port, and wakes (blocked) or interrupts (running, events unmasked) the vCPU it notifies.
fn wake_for(domain: &Domain, delivery: Delivery, notify: Notify) {
    // After the pending bit is set (`poll` publishes its target before it checks).
    if notify.newly_pending && domain.pollers.load(Ordering::SeqCst) > 0 {
        for vcpu in domain.vcpus() {
            if vcpu.poll_target().is_some_and(|t| t.wakes_on(delivery.port)) && vcpu.end_poll() {
                sched::wake(&vcpu);
            }
        }
    }
    if notify.upcall {
        if let Some(vcpu) = domain.vcpu(delivery.vcpu.0) {
            kick_for_upcall(&vcpu, notify.upcall_masked);
        }
    }
}

/// A vCPU's upcall was raised: a blocked vCPU is woken; a running one (with events
/// unmasked) has its CPU interrupted so that it takes the upcall at once; one waiting for
/// its CPU takes it when it is switched in, so its CPU (running another vCPU, perhaps of
/// another domain) is left alone.
fn kick_for_upcall(vcpu: &Vcpu, masked: bool) {
    if sched::wake(vcpu) || masked {
        return;
    }
    if let Some(cpu) = vcpu.running_on() {
        sched::kick(cpu.0);
    }
}

/// vCPU `id`'s `vcpu_info` just moved (`VCPUOP_register_vcpu_info`): every selector bit
/// and the upcall are set in its new place, as Xen's `map_vcpu_info` does, so that nothing
/// raised into the old place meanwhile is lost (the guest scans every word once, finding
/// what is pending), and the vCPU, if it exists, is kicked.
pub fn mark_all_pending(domain: &Domain, id: u32) {
    let vcpu = VcpuId(id);
    let (raised, masked) = {
        let page = Page::new(domain, vcpu);
        page.pending_sel(vcpu).store(u64::MAX, Ordering::SeqCst);
        let raised = page.upcall_pending(vcpu).swap(1, Ordering::SeqCst) == 0;
        (raised, page.upcall_mask(vcpu).load(Ordering::SeqCst) != 0)
    };
    if raised {
        if let Some(target) = domain.vcpu(id) {
            kick_for_upcall(&target, masked);
        }
    }
}

/// Raises `port` of `domain` from the hypervisor's end of its channel (the console ring's),
/// if the hypervisor still stands in for the ring's backend: the port is bound to the
/// hypervisor, or still unbound for domain 0 (`pv::console`).
pub fn raise_hypervisor_port(domain: &Domain, port: EvtchnPort) {
    let marked = {
        let channels = domain.channels.lock();
        let delivery = channels.standin_delivery(port, DomId(0));
        delivery.and_then(|delivery| Some((delivery, mark_pending(domain, &channels, delivery)?)))
    };
    if let Some((delivery, notify)) = marked {
        wake_for(domain, delivery, notify);
    }
}

/// A device interrupt of `pirq` arrived: raise `port` of `domain` if it is still bound to
/// that pirq. Whether it was.
pub fn raise_pirq(domain: &Domain, port: EvtchnPort, pirq: u32) -> bool {
    let marked = {
        let channels = domain.channels.lock();
        let delivery = channels.pirq_delivery(port, pirq);
        delivery.map(|delivery| (delivery, mark_pending(domain, &channels, delivery)))
    };
    match marked {
        Some((delivery, Some(notify))) => {
            wake_for(domain, delivery, notify);
            true
        }
        Some((_, None)) => true,
        None => false,
    }
}

/// A domain other than domain 0 shut down since domain 0 was last told (`VIRQ_DOM_EXC`).
static DOMAIN_ENDED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// A domain other than domain 0 is shutting down: domain 0 gets `VIRQ_DOM_EXC` (as Xen's
/// `domain_shutdown` sends it to the toolstack, whose xenstored then fires
/// `@releaseDomain`), raised by [`tell_domain_ended`] from a place that holds no lock, so
/// that this may be called from anywhere (a fault handler, the scheduler).
pub fn domain_ended() {
    DOMAIN_ENDED.store(true, Ordering::Release);
}

/// Raises `VIRQ_DOM_EXC` on domain 0 if a domain ended since the last call. Called on the
/// way out of every trap from a guest and from the timer interrupt (with interrupts off,
/// no lock held); costs one load while no domain ended.
pub fn tell_domain_ended() {
    if !DOMAIN_ENDED.load(Ordering::Relaxed) || !DOMAIN_ENDED.swap(false, Ordering::AcqRel) {
        return;
    }
    if let Some(dom0) = domain::lookup(DomainId(0)).filter(|d| d.privileged) {
        raise_global_virq(&dom0, Virq::DomExc);
    }
}

/// Raises global VIRQ `virq` on `domain` (on the vCPU its channel notifies), if it bound
/// one (`VIRQ_CONSOLE` for domain 0's serial input, `VIRQ_DOM_EXC` when a domain ended).
pub fn raise_global_virq(domain: &Domain, virq: Virq) {
    let marked = {
        let channels = domain.channels.lock();
        let target = channels.virq_target(virq, VcpuId(0));
        target.and_then(|delivery| Some((delivery, mark_pending(domain, &channels, delivery)?)))
    };
    if let Some((delivery, notify)) = marked {
        wake_for(domain, delivery, notify);
    }
}

/// A vCPU's single-shot timer expired: raise VIRQ_TIMER on it (if it bound one).
pub fn timer_fired(vcpu: &Vcpu) {
    let marked = {
        let channels = vcpu.domain.channels.lock();
        let target = channels.virq_target(Virq::Timer, VcpuId(vcpu.id));
        target.and_then(|delivery| Some((delivery, mark_pending(&vcpu.domain, &channels, delivery)?)))
    };
    if let Some((delivery, notify)) = marked {
        wake_for(&vcpu.domain, delivery, notify);
    }
}

/// `event_channel_op`.
pub fn event_channel_op(vcpu: &Vcpu, cmd: u32, arg: GuestVa) -> HcResult {
    let domain = &vcpu.domain;
    let err = |e: EventError| Errno::from(e);
    let op = EvtchnOp::from_raw(cmd).ok_or(Errno::Enosys)?;
    // A new port may grow a channel table; the hypervisor's own heap room is not for guests.
    let binds = matches!(op, EvtchnOp::AllocUnbound | EvtchnOp::BindInterdomain | EvtchnOp::BindVirq | EvtchnOp::BindIpi | EvtchnOp::BindPirq);
    if binds && !crate::memory::heap_has_room_for(CHANNEL_TABLE_GROWTH_BYTES) {
        return Err(Errno::Enomem);
    }
    match op {
        EvtchnOp::AllocUnbound => {
            // In the caller's domain, or (domain 0) another's; the remote domain is only a
            // name until it binds (Xen checks only that it is not DOMID_SELF, which is the
            // caller).
            let mut op: EvtchnAllocUnbound = read(arg)?;
            let target = named(domain, op.dom)?;
            let remote = if op.remote_dom == DomId::SELF { DomId(domain.id.0) } else { op.remote_dom };
            op.port = target.channels.lock().alloc_unbound(remote).map_err(err)?;
            write(arg, &op)
        }
        EvtchnOp::BindInterdomain => {
            let mut op: EvtchnBindInterdomain = read(arg)?;
            let remote_id = resolve(domain, op.remote_dom)?;
            let delivery = if remote_id == domain.id {
                domain.channels.lock().bind_loopback(op.remote_port).map_err(err)?
            } else {
                let remote = domain::lookup(remote_id).ok_or(Errno::Esrch)?;
                // Both tables, lower domain id first.
                let (first, second) = if domain.id < remote.id { (domain.as_ref(), remote.as_ref()) } else { (remote.as_ref(), domain.as_ref()) };
                let mut a = first.channels.lock();
                let mut b = second.channels.lock();
                let (local, other) = if first.id == domain.id { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
                bind_interdomain(local, other, op.remote_port).map_err(err)?
            };
            op.local_port = delivery.port;
            deliver(domain, delivery);
            write(arg, &op)
        }
        EvtchnOp::BindVirq => {
            let mut op: EvtchnBindVirq = read(arg)?;
            op.port = domain.channels.lock().bind_virq(op.virq, op.vcpu).map_err(err)?;
            write(arg, &op)
        }
        EvtchnOp::BindIpi => {
            let mut op: EvtchnBindIpi = read(arg)?;
            op.port = domain.channels.lock().bind_ipi(op.vcpu).map_err(err)?;
            write(arg, &op)
        }
        EvtchnOp::Send => {
            let op: EvtchnSend = read(arg)?;
            let target = domain.channels.lock().send(op.port).map_err(err)?;
            match target {
                SendTarget::Local(delivery) => deliver(domain, delivery),
                SendTarget::Remote { to, from } => {
                    if let Some(remote) = domain::lookup(DomainId(to.dom.0)) {
                        // The peer check and the pending bit under one hold of its lock.
                        let marked = {
                            let channels = remote.channels.lock();
                            let delivery = channels.deliver_from(to.port, from);
                            delivery.and_then(|delivery| Some((delivery, mark_pending(&remote, &channels, delivery)?)))
                        };
                        if let Some((delivery, notify)) = marked {
                            wake_for(&remote, delivery, notify);
                        }
                    }
                }
                SendTarget::Hypervisor(port) => crate::pv::console::notified(domain, port),
                // Unbound: Xen drops it; a created domain's console port is drained by the
                // hypervisor until domain 0 binds it (`pv::console`).
                SendTarget::Dropped => crate::pv::console::notified(domain, op.port),
            }
            Ok(0)
        }
        EvtchnOp::Close => {
            let op: EvtchnClose = read(arg)?;
            close(domain, op.port)?;
            Ok(0)
        }
        EvtchnOp::Unmask => {
            let op: EvtchnUnmask = read(arg)?;
            let target = domain.channels.lock().notify_vcpu(op.port).map_err(err)?;
            let notify = events::bitmap::unmask(&Page::new(domain, target), op.port, target);
            if notify.upcall {
                if let Some(v) = domain.vcpu(target.0) {
                    kick_for_upcall(&v, notify.upcall_masked);
                }
            }
            Ok(0)
        }
        EvtchnOp::Status => {
            let mut op: EvtchnStatus = read(arg)?;
            let target = named(domain, op.dom)?;
            target.channels.lock().status(op.port).map_err(err)?.write_to(&mut op);
            write(arg, &op)
        }
        EvtchnOp::BindVcpu => {
            let op: EvtchnBindVcpu = read(arg)?;
            domain.channels.lock().bind_vcpu(op.port, op.vcpu).map_err(err)?;
            Ok(0)
        }
        // Handled by `reset` (it stops part-way): not reached through here.
        EvtchnOp::Reset | EvtchnOp::ResetCont => Err(Errno::Enosys),
        EvtchnOp::InitControl => fifo_init_control(domain, arg),
        // The FIFO ABI is not offered (see `fifo_init_control`), so there is no array to
        // expand nor priority to set. Physical IRQs belong to no domain here.
        EvtchnOp::ExpandArray | EvtchnOp::SetPriority => Err(Errno::Enosys),
        // Domain 0's device interrupts (EPERM for others).
        EvtchnOp::BindPirq => crate::pv::pirq::bind_pirq(vcpu, arg),
    }
}

/// `EVTCHNOP_init_control`. The FIFO ABI is not offered: a request is checked as Xen's
/// `evtchn_fifo_init_control` checks it (an unreadable argument: `EFAULT`; no such vCPU:
/// `ENOENT`; a block crossing the page or not 8-aligned, or a frame that is not the
/// domain's or cannot take a writable type (a page table, a descriptor frame): `EINVAL`),
/// and a valid one gets `ENOSYS`, on which a guest falls back to the 2-level ABI (Linux
/// does on any failure). Nothing is written back, as Xen writes back only on success.
fn fifo_init_control(domain: &Domain, arg: GuestVa) -> HcResult {
    use abi::event_channel::{EvtchnInitControl, EVTCHN_FIFO_CONTROL_BLOCK_SIZE};
    let op: EvtchnInitControl = read(arg)?;
    domain.slot(op.vcpu).ok_or(Errno::Enoent)?;
    if op.offset > 4096 - EVTCHN_FIFO_CONTROL_BLOCK_SIZE || !op.offset.is_multiple_of(8) {
        return Err(Errno::Einval);
    }
    // The frame Xen would map for the block: taken and dropped again at once.
    let mfn = mm::addr::Mfn(op.control_gfn);
    crate::pv::mmu::hold_for_hypervisor(domain.id, mfn).map_err(|_| Errno::Einval)?;
    crate::pv::mmu::release_for_hypervisor(mfn);
    Err(Errno::Enosys)
}

/// Whether event-channel command `cmd` is `EVTCHNOP_reset` (or its continuation), which
/// [`reset`] handles.
pub fn is_reset(cmd: u32) -> bool {
    matches!(EvtchnOp::from_raw(cmd), Some(EvtchnOp::Reset | EvtchnOp::ResetCont))
}

/// `EVTCHNOP_reset` and `reset_cont`: closes every port of the caller's domain, each as
/// `EVTCHNOP_close` does (its peer, if any, back to unbound; its pending bit cleared). Xen
/// lets domain 0 reset another domain only while it has paused it; ours may not (`EINVAL`,
/// as Xen answers for a running one). Closing all 1023 ports of a domain takes about a
/// millisecond under TCG, so the call stops when the CPU should be let go once it has
/// closed at least one port, and the guest issues it again ([`Stop::Retry`]: the ports
/// already closed are free, and the next slice skips them), as Xen continues it with
/// `reset_cont`.
pub fn reset(vcpu: &Vcpu, arg: GuestVa) -> Outcome {
    let domain = &vcpu.domain;
    let op: EvtchnReset = read(arg)?;
    let target = named(domain, op.dom)?;
    if target.id != domain.id {
        return Err(Errno::Einval.into());
    }
    let ports = domain.channels.lock().ports_end();
    let mut closed = false;
    for port in (1..ports).map(EvtchnPort) {
        closed |= close(domain, port).is_ok();
        if closed && crate::preempt::should_stop() {
            return Err(Stop::Retry);
        }
    }
    Ok(0)
}

/// The domain an event-channel operation names: the caller's own (`DOMID_SELF` or its
/// id), or another for domain 0; `ESRCH` when there is none, `EPERM` for another's, as
/// Xen's XSM_TARGET check.
fn named(domain: &Arc<Domain>, id: DomId) -> Result<Arc<Domain>, Errno> {
    if id == DomId::SELF || id.0 == domain.id.0 {
        return Ok(domain.clone());
    }
    let other = domain::lookup(DomainId(id.0)).ok_or(Errno::Esrch)?;
    if !domain.privileged {
        return Err(Errno::Eperm);
    }
    Ok(other)
}

/// How many times [`close`] reads a port again that changed under it before it answers
/// `EINVAL`, as Xen does at once.
const CLOSE_TRIES: usize = 4;

/// Closes `port`; an interdomain peer goes back to unbound. The peer is read under this
/// domain's table lock, which is then dropped so that both tables can be locked in id order;
/// the close happens only if the port still has the peer read (`events::close_checked`),
/// else the port is read again: a port closed and re-bound to another domain in between
/// (by another vCPU) is never closed by the stale read, which used to free it while its new
/// peer stayed linked to it.
fn close(domain: &Domain, port: EvtchnPort) -> Result<(), Errno> {
    let mut result = Err(EventError::Changed);
    for _ in 0..CLOSE_TRIES {
        let seen = domain.channels.lock().peer(port);
        let remote = seen.filter(|p| p.dom.0 != domain.id.0).and_then(|p| domain::lookup(DomainId(p.dom.0)));
        result = match remote {
            Some(remote) => {
                let (first, second) = if domain.id < remote.id { (domain, remote.as_ref()) } else { (remote.as_ref(), domain) };
                let mut a = first.channels.lock();
                let mut b = second.channels.lock();
                let (local, other) = if first.id == domain.id { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
                events::close_checked(local, Some(other), port, seen)
            }
            None => events::close_checked(&mut domain.channels.lock(), None, port, seen),
        };
        if result != Err(EventError::Changed) {
            break;
        }
    }
    result.map_err(Errno::from)?;
    events::bitmap::clear_pending(&Page::bitmaps(domain), port);
    Ok(())
}

/// Unlinks every channel of a dying domain from its peers.
pub fn close_all(domain: &Domain) {
    let unlinks = domain.channels.lock().close_all();
    for unlink in unlinks {
        if let Some(remote) = domain::lookup(DomainId(unlink.remote.dom.0)) {
            remote.channels.lock().unlink(unlink);
        }
    }
}

/// The domain a guest names (DOMID_SELF is itself); ESRCH when it does not exist.
fn resolve(domain: &Domain, id: DomId) -> Result<DomainId, Errno> {
    if id == DomId::SELF || id.0 == domain.id.0 {
        return Ok(domain.id);
    }
    domain::lookup(DomainId(id.0)).map(|d| d.id).ok_or(Errno::Esrch)
}

fn read<T: Copy + Default>(arg: GuestVa) -> Result<T, Errno> {
    uaccess::read_value(arg.0).map_err(|_| Errno::Efault)
}

fn write<T: Copy>(arg: GuestVa, value: &T) -> HcResult {
    uaccess::write_value(arg.0, value).map_err(|_| Errno::Efault)?;
    Ok(0)
}

/// Enters the guest's event callback if an upcall is pending and not masked; called with
/// the frame about to return to `vcpu` in guest mode.
pub fn deliver_upcall(vcpu: &Vcpu, frame: &mut TrapFrame) {
    // Not while a `mov ss` breakpoint is held back over the guest's next instruction
    // (`pv::debugreg`): like the hardware's interrupt shadow after `mov ss`, that instruction
    // runs first, and the single step it takes brings the vCPU back here. An upcall now would
    // save the hypervisor's single-step TF in the guest's frame.
    let (callback, stepping) = {
        let ctx = vcpu.ctx.lock();
        (ctx.event_callback, ctx.debug.deferred.is_some())
    };
    if callback == 0 || stepping {
        return;
    }
    let due = shared::with_vcpu_info(vcpu, |info| info.evtchn_upcall_pending != 0 && info.evtchn_upcall_mask == 0);
    if due {
        traps::deliver(vcpu, frame, callback, None, true);
    }
}

/// `sched_op block`: enables event delivery and blocks unless an event is already pending
/// (Xen's `do_block`); the vCPU leaves its CPU on the way out and an event wakes it.
pub fn block(vcpu: &Vcpu) {
    let pending = shared::with_vcpu_info(vcpu, |info| {
        info.evtchn_upcall_mask = 0;
        info.evtchn_upcall_pending != 0
    });
    if !pending {
        sched::block(vcpu);
        // An event raised between the check and the block must not be slept through.
        if shared::with_vcpu_info(vcpu, |info| info.evtchn_upcall_pending != 0) {
            if let Some(me) = vcpu.domain.vcpu(vcpu.id) {
                sched::wake(&me);
            }
        }
    }
}

/// `sched_op poll`: blocks until one of the listed ports is pending (masked or not) or the
/// timeout (absolute system time; 0: none) passes, as Xen's `do_poll`. Returns 0 either
/// way; the guest looks at its ports to tell which.
pub fn poll(vcpu: &Vcpu, arg: GuestVa) -> HcResult {
    let request: SchedPoll = read(arg)?;
    let count = request.nr_ports as usize;
    if count > MAX_POLL_PORTS {
        return Err(Errno::Einval);
    }
    let mut raw = [0u8; MAX_POLL_PORTS * 4];
    uaccess::read(request.ports, &mut raw[..count * 4]).map_err(|_| Errno::Efault)?;
    let ports: ArrayVec<EvtchnPort, MAX_POLL_PORTS> =
        raw[..count * 4].chunks_exact(4).map(|b| EvtchnPort(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
    let Some(me) = vcpu.domain.vcpu(vcpu.id) else { return Err(Errno::Einval) };
    // Blocked and polling first, then the check: an event after it finds the poller.
    sched::block(vcpu);
    vcpu.begin_poll(PollTarget::for_ports(&ports));
    let outcome = events::poll::check(&Page::bitmaps(&vcpu.domain), &ports);
    let expired = request.timeout != 0 && request.timeout <= crate::time::since_boot_ns();
    match outcome {
        Ok(PollOutcome::Block(_)) if !expired => {
            if request.timeout != 0 {
                sched::set_poll_timeout(&me, request.timeout);
            }
            Ok(0)
        }
        _ => {
            if vcpu.end_poll() {
                me.unblock();
            }
            outcome.map(|_| 0).map_err(Errno::from)
        }
    }
}

/// `set_timer_op`: arms (or with 0 cancels) the vCPU's single-shot timer at system time
/// `deadline_ns`; a deadline already past fires at once.
pub fn set_timer(vcpu: &Vcpu, deadline_ns: u64) {
    let Some(me) = vcpu.domain.vcpu(vcpu.id) else { return };
    if deadline_ns != 0 && deadline_ns <= crate::time::since_boot_ns() {
        sched::set_timer(&me, 0);
        timer_fired(&me);
    } else {
        sched::set_timer(&me, deadline_ns);
    }
}

/// Whether the hypervisor still stands in for the backend of `port` of `domain` (see
/// [`raise_hypervisor_port`]).
pub fn hypervisor_stands_in(domain: &Domain, port: EvtchnPort) -> bool {
    domain.channels.lock().standin_delivery(port, DomId(0)).is_some()
}
