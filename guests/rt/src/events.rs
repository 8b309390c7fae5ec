//! Event delivery (the 2-level event-channel ABI): the event callback's assembly entry,
//! the dispatcher that takes pending ports out of the shared info page and runs the
//! handler registered for each, and the guest's "interrupts on/off" (vCPU 0's
//! `evtchn_upcall_mask`) with the ways to wait for events: [`Events::wait_until`],
//! [`Events::block`] and [`Events::poll`].
//!
//! The hypervisor marks port p pending (bit p of `evtchn_pending`); if the port is not
//! masked it sets bit p / 64 of the vCPU's `evtchn_pending_sel` and `evtchn_upcall_pending`,
//! and if the vCPU's upcall mask is clear it enters the registered callback with a bounce
//! frame like an exception's without error code (rcx, r11, rip, cs, rflags, rsp, ss) and
//! events masked. The entry stub restores rcx and r11, saves the caller-saved registers,
//! calls [`guest_rt_event_dispatch`] and returns with the `iret` hypercall, which unmasks
//! events again when the interrupted code had them on (rflags.IF in the frame).
//!
//! A guest calls [`Events::init`] once (maps the shared info page, registers the callback;
//! events stay masked), registers handlers with [`Events::set_handler`], then turns events
//! on with [`Events::enable`]. Handlers run inside the callback, on the interrupted stack,
//! with events masked: they must be short, must not block, and may make hypercalls. This
//! module must never handle a port itself: unhandled ports are only counted.

use core::arch::global_asm;
use core::ptr::{self, NonNull};
use core::sync::atomic::{compiler_fence, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use abi::hypercall::{Hypercall, SchedOp};
use abi::hypercall_page::stub_offset;
use abi::ids::EvtchnPort;
use abi::sched::SchedPoll;
use abi::shared_info::{SharedInfo, EVTCHN_WORDS};

use crate::hypercall::{self, HypercallError};
use crate::shared_info;

/// Ports 0 to `MAX_HANDLED_PORTS - 1` can have handlers (ports are allocated lowest
/// first, so a small guest's ports are small; domain 0 serving a hundred domains binds two
/// ports for each): a domain's default port limit.
pub const MAX_HANDLED_PORTS: usize = 1024;

/// The vCPU the runtime runs on, whose `vcpu_info` events arrive through.
const VCPU: usize = 0;

// Each selector bit names one bitmap word.
const _: () = assert!(EVTCHN_WORDS == u64::BITS as usize);

/// A port's handler, run inside the event callback with events masked.
pub type EventHandler = fn(port: EvtchnPort);

/// What went wrong setting up or using events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventError {
    /// A hypercall failed.
    Call(HypercallError),
    /// Only ports below [`MAX_HANDLED_PORTS`] can have handlers.
    PortOutOfRange(EvtchnPort),
}

impl From<HypercallError> for EventError {
    fn from(error: HypercallError) -> Self {
        Self::Call(error)
    }
}

global_asm!(
    ".pushsection .text.guest_rt_events,\"ax\",@progbits",
    ".globl guest_rt_event_entry",
    ".type guest_rt_event_entry, @function",
    "guest_rt_event_entry:",
    "    pop rcx",
    "    pop r11",
    "    push 0",                   // iret's `flags` word: a full return
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    push rbx",
    "    mov rbx, rsp",             // callee-saved: survives the call
    "    and rsp, -16",
    "    cld",
    "    call guest_rt_event_dispatch",
    "    mov rsp, rbx",
    "    pop rbx",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    // Left: flags, rip, cs, rflags, rsp, ss; the stub pushes rcx, r11 and rax.
    "    jmp guest_rt_hypercall_page + {iret_stub}",
    ".size guest_rt_event_entry, . - guest_rt_event_entry",
    ".popsection",
    iret_stub = const stub_offset(Hypercall::Iret),
);

extern "C" {
    /// The event callback's entry point (defined above).
    static guest_rt_event_entry: [u8; 0];
}

/// The registered handlers by port: 0 for none, else an [`EventHandler`] as an address.
static HANDLERS: [AtomicUsize; MAX_HANDLED_PORTS] =
    [const { AtomicUsize::new(0) }; MAX_HANDLED_PORTS];

/// Pending ports that had no handler.
static UNHANDLED: AtomicU64 = AtomicU64::new(0);
/// [`Events::init`] succeeded.
static REGISTERED: AtomicU8 = AtomicU8::new(0);

/// Event delivery, set up. Zero-sized: holding one proves the shared info page is mapped
/// and the callback registered.
#[derive(Clone, Copy, Debug)]
pub struct Events(());

impl Events {
    /// Maps the shared info page and registers the event callback. Events stay masked
    /// until [`Events::enable`].
    pub fn init() -> Result<Self, EventError> {
        shared_info::map_shared_info()?;
        let entry = &raw const guest_rt_event_entry as u64;
        // SAFETY: the entry handles the event bounce frame and returns with iret.
        unsafe { hypercall::callback_register(abi::hypercall::CallbackType::Event, entry, 0)? };
        REGISTERED.store(1, Ordering::Release);
        Ok(Self(()))
    }

    /// Event delivery, if [`Events::init`] set it up already. Makes no hypercall.
    pub fn registered() -> Option<Self> {
        (REGISTERED.load(Ordering::Acquire) != 0).then_some(Self(()))
    }

    /// Runs `handler` for each event on `port`.
    pub fn set_handler(self, port: EvtchnPort, handler: EventHandler) -> Result<(), EventError> {
        handler_slot(port)?.store(handler as usize, Ordering::Release);
        Ok(())
    }

    /// Stops handling `port` (its events are then only counted).
    pub fn clear_handler(self, port: EvtchnPort) -> Result<(), EventError> {
        handler_slot(port)?.store(0, Ordering::Release);
        Ok(())
    }

    /// Turns event delivery on; an event that arrived while it was off is delivered now
    /// (a null hypercall gives the hypervisor the chance, as Xen guests do).
    pub fn enable(self) {
        let vcpu = vcpu_fields(self);
        compiler_fence(Ordering::SeqCst);
        vcpu.mask.store(0, Ordering::SeqCst);
        if vcpu.pending.load(Ordering::SeqCst) != 0 {
            let _ = hypercall::version();
        }
    }

    /// Turns event delivery off (events stay pending until [`Events::enable`]).
    pub fn disable(self) {
        vcpu_fields(self).mask.store(1, Ordering::SeqCst);
        compiler_fence(Ordering::SeqCst);
    }

    /// Whether event delivery is on.
    pub fn enabled(self) -> bool {
        vcpu_fields(self).mask.load(Ordering::SeqCst) == 0
    }

    /// Blocks until an event is pending (`sched_op` block). The hypervisor turns delivery
    /// on as it blocks the vCPU, so the pending event's handler has run when this returns;
    /// it returns at once when an event is already pending. Returns with events on.
    pub fn block(self) -> Result<(), HypercallError> {
        hypercall::sched_block()
    }

    /// Waits, blocking, until `done()` holds; `done` is checked with events off, so an
    /// event that makes it true cannot slip in between the check and the block. Returns
    /// with events on.
    pub fn wait_until(self, mut done: impl FnMut() -> bool) -> Result<(), HypercallError> {
        loop {
            self.disable();
            if done() {
                self.enable();
                return Ok(());
            }
            self.block()?;
        }
    }

    /// Blocks until one of `ports` is pending or system time reaches `timeout_ns` (0: no
    /// timeout) (`sched_op` poll). Pending bits are left for the callback to take.
    pub fn poll(self, ports: &[EvtchnPort], timeout_ns: u64) -> Result<(), HypercallError> {
        let nr_ports = u32::try_from(ports.len()).map_err(|_| HypercallError::BadArgument)?;
        let mut poll = SchedPoll {
            ports: ports.as_ptr() as u64,
            nr_ports,
            _pad: 0,
            timeout: timeout_ns,
        };
        let op = u64::from(SchedOp::Poll.raw());
        // SAFETY: the hypervisor reads `poll` and the `nr_ports` ports of the live slice.
        let ret = unsafe { hypercall::hypercall2(Hypercall::SchedOp, op, &raw mut poll as u64) };
        hypercall::decode(ret).map(drop)
    }
}

/// How many pending ports had no handler so far.
pub fn unhandled_count() -> u64 {
    UNHANDLED.load(Ordering::Relaxed)
}

/// The handler slot of `port`.
fn handler_slot(port: EvtchnPort) -> Result<&'static AtomicUsize, EventError> {
    usize::try_from(port.0)
        .ok()
        .and_then(|index| HANDLERS.get(index))
        .ok_or(EventError::PortOutOfRange(port))
}

/// The handler registered for `port`, if any.
fn handler(port: EvtchnPort) -> Option<EventHandler> {
    match handler_slot(port).ok()?.load(Ordering::Acquire) {
        0 => None,
        // SAFETY: `set_handler` is the only writer of non-zero values, and it stores
        // `EventHandler`s; function pointers and usize have the same size.
        raw => Some(unsafe { core::mem::transmute::<usize, EventHandler>(raw) }),
    }
}

/// Runs `port`'s handler, or counts the port as unhandled.
fn run_handler(port: EvtchnPort) {
    match handler(port) {
        Some(handler) => handler(port),
        None => {
            UNHANDLED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The event fields of one `vcpu_info`, as atomics over the shared page.
struct VcpuEventFields {
    pending: &'static AtomicU8,
    mask: &'static AtomicU8,
    selector: &'static AtomicU64,
}

/// The event fields of `vcpu` in the shared page at `shared`.
///
/// # Safety
/// `shared` must point to a `SharedInfo` that stays valid (mapped) for the program's
/// lifetime, accessed by others only atomically or by the hypervisor.
unsafe fn vcpu_event_fields(shared: *mut SharedInfo, vcpu: usize) -> VcpuEventFields {
    // SAFETY: the caller vouches for the page; the fields are naturally aligned (the
    // layout is asserted in abi), and `from_ptr` gives atomic access to them.
    unsafe {
        let info = ptr::addr_of_mut!((*shared).vcpu_info[vcpu]);
        VcpuEventFields {
            pending: AtomicU8::from_ptr(ptr::addr_of_mut!((*info).evtchn_upcall_pending)),
            mask: AtomicU8::from_ptr(ptr::addr_of_mut!((*info).evtchn_upcall_mask)),
            selector: AtomicU64::from_ptr(ptr::addr_of_mut!((*info).evtchn_pending_sel)),
        }
    }
}

/// vCPU 0's event fields in the mapped page.
fn vcpu_fields(_proof: Events) -> VcpuEventFields {
    let page = mapped_page();
    // SAFETY: the page is mapped for good once `Events` exists.
    unsafe { vcpu_event_fields(page.as_ptr(), VCPU) }
}

/// The shared info page; mapped whenever an [`Events`] exists.
fn mapped_page() -> NonNull<SharedInfo> {
    shared_info::shared_info().expect("Events exists only once the shared info page is mapped")
}

/// Takes every pending, unmasked port of `vcpu` out of the page and calls `handle` for
/// each (lowest first within a word), repeating while the hypervisor raised more
/// meanwhile: clears `evtchn_upcall_pending`, swaps `evtchn_pending_sel` with 0, and for
/// each selected word clears and handles `pending & !mask`. Masked ports stay pending.
///
/// # Safety
/// As [`vcpu_event_fields`]; the bitmaps of the page are only accessed atomically.
pub unsafe fn drain(shared: *mut SharedInfo, vcpu: usize, mut handle: impl FnMut(EvtchnPort)) {
    // SAFETY: forwarded from the caller.
    let fields = unsafe { vcpu_event_fields(shared, vcpu) };
    loop {
        fields.pending.store(0, Ordering::SeqCst);
        let selector = fields.selector.swap(0, Ordering::SeqCst);
        for word in set_bits(selector) {
            // SAFETY: `word` < 64 = EVTCHN_WORDS indexes the bitmaps; the caller vouches
            // for the page.
            let (pending, mask) = unsafe {
                (
                    AtomicU64::from_ptr(ptr::addr_of_mut!((*shared).evtchn_pending[word])),
                    AtomicU64::from_ptr(ptr::addr_of_mut!((*shared).evtchn_mask[word])),
                )
            };
            let ready = pending.load(Ordering::SeqCst) & !mask.load(Ordering::SeqCst);
            pending.fetch_and(!ready, Ordering::SeqCst);
            for bit in set_bits(ready) {
                handle(EvtchnPort((word * 64 + bit) as u32));
            }
        }
        if fields.pending.load(Ordering::SeqCst) == 0 {
            return;
        }
    }
}

/// The numbers of the bits set in `word`, lowest first.
fn set_bits(mut word: u64) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        if word == 0 {
            return None;
        }
        let bit = word.trailing_zeros() as usize;
        word &= word - 1;
        Some(bit)
    })
}

/// Called by the callback entry with events masked.
#[unsafe(no_mangle)]
extern "C" fn guest_rt_event_dispatch() {
    let Some(page) = shared_info::shared_info() else {
        return;
    };
    // SAFETY: the page is mapped for good; the hypervisor is its only other writer.
    unsafe { drain(page.as_ptr(), VCPU, run_handler) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    fn page() -> Box<SharedInfo> {
        Box::new(SharedInfo::default())
    }

    /// Raises `port` on `vcpu` as the hypervisor does (atomically, so that a test may
    /// raise from inside a handler while `drain` runs).
    fn raise(page: *mut SharedInfo, vcpu: usize, port: u32) {
        let (word, bit) = (port as usize / 64, port % 64);
        // SAFETY: tests pass a live heap page, which `drain` accesses only atomically.
        unsafe {
            let pending = AtomicU64::from_ptr(ptr::addr_of_mut!((*page).evtchn_pending[word]));
            let mask = AtomicU64::from_ptr(ptr::addr_of_mut!((*page).evtchn_mask[word]));
            pending.fetch_or(1 << bit, Ordering::SeqCst);
            if mask.load(Ordering::SeqCst) >> bit & 1 == 0 {
                let fields = vcpu_event_fields(page, vcpu);
                fields.selector.fetch_or(1 << word, Ordering::SeqCst);
                fields.pending.store(1, Ordering::SeqCst);
            }
        }
    }

    fn drained(page: &mut SharedInfo, vcpu: usize) -> Vec<u32> {
        let mut ports = Vec::new();
        // SAFETY: the page lives on the heap for the whole call; nothing else touches it.
        unsafe { drain(page, vcpu, |port| ports.push(port.0)) };
        ports
    }

    #[test]
    fn pending_ports_are_handled_once_and_cleared() {
        let mut page = page();
        for port in [3, 1, 64, 200, 4095] {
            raise(&mut *page, 0, port);
        }
        assert_eq!(drained(&mut page, 0), [1, 3, 64, 200, 4095]);
        assert!(page.evtchn_pending.iter().all(|&w| w == 0));
        assert_eq!(page.vcpu_info[0].evtchn_pending_sel, 0);
        assert_eq!(page.vcpu_info[0].evtchn_upcall_pending, 0);
        assert!(drained(&mut page, 0).is_empty(), "nothing twice");
    }

    #[test]
    fn masked_ports_stay_pending_and_unhandled() {
        let mut page = page();
        page.evtchn_mask[0] = 1 << 5;
        raise(&mut *page, 0, 2);
        raise(&mut *page, 0, 5);
        // A port masked after it was raised is still not taken.
        raise(&mut *page, 0, 70);
        page.evtchn_mask[1] = 1 << 6;
        assert_eq!(drained(&mut page, 0), [2]);
        assert_eq!(page.evtchn_pending[0], 1 << 5);
        assert_eq!(page.evtchn_pending[1], 1 << 6);
        assert_eq!(page.vcpu_info[0].evtchn_pending_sel, 0);
    }

    #[test]
    fn only_the_selected_words_are_looked_at() {
        let mut page = page();
        // Pending bit without a selector bit: the hypervisor has not announced it.
        page.evtchn_pending[2] = 1;
        raise(&mut *page, 0, 9);
        assert_eq!(drained(&mut page, 0), [9]);
        assert_eq!(page.evtchn_pending[2], 1);
    }

    #[test]
    fn another_vcpus_selector_is_left_alone() {
        let mut page = page();
        raise(&mut *page, 1, 7);
        assert!(
            drained(&mut page, 0).is_empty(),
            "vCPU 0 has no selector bit"
        );
        assert_eq!(page.vcpu_info[1].evtchn_pending_sel, 1);
        assert_eq!(drained(&mut page, 1), [7]);
    }

    #[test]
    fn events_raised_while_draining_are_taken_in_the_same_call() {
        let mut page = page();
        raise(&mut *page, 0, 1);
        let raw: *mut SharedInfo = &mut *page;
        let mut seen = Vec::new();
        // SAFETY: the page outlives the call; the handler writes it as the hypervisor
        // would while the dispatcher runs (the dispatcher only uses atomics on it).
        unsafe {
            drain(raw, 0, |port| {
                seen.push(port.0);
                if port.0 == 1 {
                    raise(raw, 0, 130);
                }
            })
        };
        assert_eq!(seen, [1, 130]);
        assert_eq!(page.vcpu_info[0].evtchn_upcall_pending, 0);
    }

    #[test]
    fn a_hostile_full_selector_with_nothing_pending_handles_nothing() {
        let mut page = page();
        page.vcpu_info[0].evtchn_pending_sel = u64::MAX;
        page.vcpu_info[0].evtchn_upcall_pending = 0xff;
        assert!(drained(&mut page, 0).is_empty());
        assert_eq!(page.vcpu_info[0].evtchn_pending_sel, 0);
    }

    #[test]
    fn handlers_are_limited_to_small_ports() {
        fn nothing(_: EvtchnPort) {}
        let port = EvtchnPort(MAX_HANDLED_PORTS as u32);
        assert_eq!(
            handler_slot(port).err(),
            Some(EventError::PortOutOfRange(port))
        );
        assert!(handler_slot(EvtchnPort(u32::MAX)).is_err());
        let slot = handler_slot(EvtchnPort(3)).unwrap();
        slot.store(nothing as EventHandler as usize, Ordering::Release);
        assert!(handler(EvtchnPort(3)).is_some());
        slot.store(0, Ordering::Release);
        assert!(handler(EvtchnPort(3)).is_none());
    }

    #[test]
    fn unhandled_ports_are_counted() {
        let before = unhandled_count();
        run_handler(EvtchnPort(MAX_HANDLED_PORTS as u32 + 5));
        assert_eq!(unhandled_count(), before + 1);
    }

    #[test]
    fn bits_come_out_lowest_first() {
        assert_eq!(set_bits(0).count(), 0);
        assert_eq!(set_bits(0b1010_0001).collect::<Vec<_>>(), [0, 5, 7]);
        assert_eq!(set_bits(1 << 63).collect::<Vec<_>>(), [63]);
    }
}
