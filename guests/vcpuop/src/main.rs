//! guest-vcpuop: checks `vcpu_op`, the event-channel operations Linux and XTF use, and the
//! console ring, on two vCPUs, as a Linux domU uses them.
//!
//! vCPU 0 registers a runstate area for itself and for vCPU 1 (before vCPU 1 exists, as
//! Linux does for every possible vCPU), moves vCPU 1's `vcpu_info` into a page of its own
//! (`VCPUOP_register_vcpu_info`), starts vCPU 1 (which reads its time record in the new
//! place, binds an IPI and spins counting), and checks: that events for vCPU 1 land in the
//! new place; that both runstate areas follow the switches (on one CPU the two vCPUs take
//! turns: time runnable grows, and each area's entry time minus the sum of its times stays
//! constant, the accounting summing to the clock); single-shot timers (a past deadline
//! fires at once, or ETIME with `VCPU_SSHOTTMR_future`; a stopped one never fires; a
//! blocked wait shows as time blocked) and the periodic timer (ticks at its period while
//! the vCPU runs, none once stopped); `down` stops vCPU 1 (offline, its counter still) and
//! `up` restarts it; then event-channel status for every port state, four IPIs on a vCPU,
//! bind_vcpu, the FIFO ABI refused (init_control's arguments checked as Xen, then ENOSYS), unmask re-raising a pending port; it prints
//! more than a ring's worth of lines through the console ring, and last resets its event
//! channels (with every port it may have bound, timed) and takes vCPU 1 down before it
//! powers off. Its command line: `contended` when both vCPUs share one CPU (then vCPU 0 must
//! have waited runnable).
//!
//! Console: one "vcpuop: check <name>: ... ok" line per check, "vcpuop: ring line N" lines
//! through the ring, and "vcpuop: all checks passed"; a failed check panics (the domain
//! crashes, which the QEMU case reports). It must never leave vCPU 1's events unmasked: that
//! vCPU has no event callback.

#![no_std]
#![no_main]

use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::errno::Errno;
use guest_rt::abi::event_channel::{EvtchnInitControl, EvtchnState};
use guest_rt::abi::hypercall::{EvtchnOp, VcpuOp};
use guest_rt::abi::ids::{DomId, EvtchnPort, VcpuId};
use guest_rt::abi::shared_info::VcpuInfo;
use guest_rt::abi::vcpu::{
    Runstate, VcpuRegisterMemoryArea, VcpuRegisterVcpuInfo, VcpuRunstateInfo, VcpuSetPeriodicTimer, VcpuSetSingleshotTimer,
    VCPU_SSHOTTMR_FUTURE,
};
use guest_rt::events::Events;
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::ring::ConsoleRing;
use guest_rt::smp::{self, VcpuStack};
use guest_rt::time::Clock;
use guest_rt::timer::Timer;
use guest_rt::{evtchn, println, shared_info, start_info, StartInfo};

guest_rt::entry!(main);

const MS: u64 = 1_000_000;
/// Where vCPU 1's `vcpu_info` moves to in [`INFO_PAGE`].
const INFO_OFFSET: usize = 128;

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);
// SAFETY: written by the hypervisor and read through raw pointers only.
unsafe impl Sync for Page {}

#[repr(C, align(64))]
struct Areas(UnsafeCell<[VcpuRunstateInfo; 2]>);
// SAFETY: written by the hypervisor; each vCPU's is read with volatile loads.
unsafe impl Sync for Areas {}

static INFO_PAGE: Page = Page(UnsafeCell::new([0; 4096]));
static AREAS: Areas = Areas(UnsafeCell::new([VcpuRunstateInfo { state: 0, _pad: 0, state_entry_time: 0, time: [0; 4] }; 2]));
static STACK: VcpuStack<8192> = VcpuStack::new();
/// vCPU 1's IPI port once bound; its spin count; what it saw of its time record (1 good).
static IPI_PORT: AtomicU32 = AtomicU32::new(0);
static COUNTER: AtomicU64 = AtomicU64::new(0);
static TIME_SEEN: AtomicU32 = AtomicU32::new(0);
/// Events on the unmask check's port.
static UNMASK_EVENTS: AtomicU64 = AtomicU64::new(0);

fn check(name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
    if !ok {
        panic!("vcpuop: check {name} FAILED: {detail}");
    }
    println!("vcpuop: check {name}: {detail}: ok");
}

fn op<T>(cmd: VcpuOp, id: u32, arg: *mut T) -> Result<u64, HypercallError> {
    // SAFETY: every call passes null or a live argument of the type `cmd` takes.
    unsafe { hypercall::vcpu_op_raw(cmd, VcpuId(id), arg) }
}

fn evtchn_op<T>(cmd: EvtchnOp, arg: *mut T) -> Result<(), HypercallError> {
    // SAFETY: every call passes a live argument of the type `cmd` takes.
    unsafe { hypercall::event_channel_op_raw(cmd, arg) }
}

const fn err(errno: Errno) -> Result<u64, HypercallError> {
    Err(HypercallError::Xen(errno))
}

fn area(id: usize) -> VcpuRunstateInfo {
    // SAFETY: the area is ours; the hypervisor writes it while the vCPU it describes is
    // not in guest code, and each vCPU's is read by that vCPU or while it waits.
    unsafe { ptr::addr_of!((*AREAS.0.get())[id]).read_volatile() }
}

fn moved_info() -> *mut VcpuInfo {
    // SAFETY: 128 bytes into the page-aligned page: inside it, aligned for VcpuInfo.
    unsafe { INFO_PAGE.0.get().cast::<u8>().add(INFO_OFFSET).cast() }
}

fn spin_ms(clock: Clock, ms: u64) {
    let end = clock.now_ns() + ms * MS;
    while clock.now_ns() < end {
        core::hint::spin_loop();
    }
}

/// Entry time minus the sum of the times: constant while the accounting sums to the clock.
fn base(info: &VcpuRunstateInfo) -> u64 {
    info.state_entry_time.wrapping_sub(info.time.iter().sum::<u64>())
}

fn main(start: &'static StartInfo) {
    let contended = core::str::from_utf8(start.cmd_line()).unwrap_or("").split_ascii_whitespace().any(|w| w == "contended");
    let events = Events::init().expect("events");
    let clock = Clock::new().expect("clock");
    let timer = Timer::bind(events).expect("timer");
    events.enable();

    // is_up, including ids past the domain's vCPUs (Linux asks for every id to NR_CPUS).
    let up = (smp::is_up(VcpuId(0)), smp::is_up(VcpuId(1)));
    let past = (op(VcpuOp::IsUp, 2, ptr::null_mut::<u8>()), op(VcpuOp::IsUp, 4095, ptr::null_mut::<u8>()));
    check(
        "is_up",
        up == (Ok(true), Ok(false)) && past == (err(Errno::Enoent), err(Errno::Enoent)),
        format_args!("vCPU 0 {:?}, 1 {:?}, 2 {:?}, 4095 {:?}", up.0, up.1, past.0, past.1),
    );

    // Runstate areas for both, vCPU 1's before it exists.
    for id in 0..2u32 {
        let mut arg = VcpuRegisterMemoryArea { addr: AREAS.0.get() as u64 + u64::from(id) * 48 };
        op(VcpuOp::RegisterRunstateMemoryArea, id, &raw mut arg).expect("runstate area");
    }
    let (first0, first1) = (area(0), area(1));
    check(
        "runstate_registered",
        first0.state == Runstate::Running as i32 && first1.state == Runstate::Offline as i32 && first0.state_entry_time > 0,
        format_args!("vCPU 0 state {} since {}, vCPU 1 state {}", first0.state, first0.state_entry_time, first1.state),
    );

    // vcpu_info of vCPU 1 into our page: refused at a bad offset or on a page table.
    let mfn = start_info::virt_to_mfn(INFO_PAGE.0.get() as u64).expect("page mfn");
    let l4 = start_info::virt_to_mfn(start.pt_base).expect("l4 mfn");
    let register = |mfn, offset| {
        let mut arg = VcpuRegisterVcpuInfo { mfn, offset, rsvd: 0 };
        op(VcpuOp::RegisterVcpuInfo, 1, &raw mut arg)
    };
    let refused = [register(mfn, 4090), register(mfn, 12), register(l4, 0)];
    let moved = register(mfn, INFO_OFFSET as u32);
    let again = register(mfn, 0);
    // SAFETY: the moved vcpu_info is ours; the hypervisor writes it concurrently.
    let (sel, pending) = unsafe { (ptr::addr_of!((*moved_info()).evtchn_pending_sel).read_volatile(), ptr::addr_of!((*moved_info()).evtchn_upcall_pending).read_volatile()) };
    check(
        "register_vcpu_info",
        refused.iter().all(|r| *r == err(Errno::Einval)) && moved == Ok(0) && again == err(Errno::Einval) && sel == u64::MAX && pending == 1,
        format_args!("crossing/misaligned/page table {refused:?}, at {INFO_OFFSET} {moved:?}, again {again:?}, selector {sel:#x} upcall {pending}"),
    );
    // SAFETY: as above; vCPU 1 has no callback: its events stay masked.
    unsafe {
        ptr::addr_of_mut!((*moved_info()).evtchn_upcall_mask).write_volatile(1);
        ptr::addr_of_mut!((*moved_info()).evtchn_pending_sel).write_volatile(0);
        ptr::addr_of_mut!((*moved_info()).evtchn_upcall_pending).write_volatile(0);
    }
    op(VcpuOp::StopPeriodicTimer, 1, ptr::null_mut::<u8>()).expect("stop vCPU 1's periodic timer");

    smp::start(VcpuId(1), secondary, 0, &STACK).expect("vCPU 1 starts");
    let deadline = clock.now_ns() + 5_000 * MS;
    while IPI_PORT.load(Ordering::Acquire) == 0 && clock.now_ns() < deadline {
        let _ = hypercall::sched_yield();
    }
    let ipi = EvtchnPort(IPI_PORT.load(Ordering::Acquire));
    check("vcpu_info_time", TIME_SEEN.load(Ordering::Acquire) == 1 && ipi.0 != 0, format_args!("vCPU 1 read its time record in the moved place, bound IPI port {}", ipi.0));

    // Events for vCPU 1 go to the moved place, not to its old slot in shared info.
    let shared = shared_info::shared_info().expect("shared info").as_ptr();
    // SAFETY: shared info is mapped; the hypervisor writes it concurrently.
    let old_sel = unsafe {
        ptr::addr_of_mut!((*shared).vcpu_info[1].evtchn_pending_sel).write_volatile(0);
        evtchn::send(ipi).expect("send the IPI");
        ptr::addr_of!((*shared).vcpu_info[1].evtchn_pending_sel).read_volatile()
    };
    // SAFETY: as above.
    let (sel, pending) = unsafe { (ptr::addr_of!((*moved_info()).evtchn_pending_sel).read_volatile(), ptr::addr_of!((*moved_info()).evtchn_upcall_pending).read_volatile()) };
    let word = ipi.0 as u64 / 64;
    check(
        "events_follow_vcpu_info",
        sel & (1 << word) != 0 && pending == 1 && old_sel == 0,
        format_args!("moved selector {sel:#x} upcall {pending}, old selector {old_sel:#x}"),
    );

    // Both vCPUs busy: the runstate areas follow the switches.
    spin_ms(clock, 300);
    let (now0, now1) = (area(0), area(1));
    let info1 = {
        let mut info = VcpuRunstateInfo::default();
        op(VcpuOp::GetRunstateInfo, 1, &raw mut info).expect("runstate of vCPU 1");
        info
    };
    let runnable = now0.time[Runstate::Runnable as usize];
    check(
        "runstate_switches",
        now0.state == Runstate::Running as i32
            && now0.state_entry_time >= first0.state_entry_time
            && base(&now0) == base(&first0)
            && (!contended || (runnable > 0 && now0.state_entry_time > first0.state_entry_time))
            && (now1.state == Runstate::Running as i32 || now1.state == Runstate::Runnable as i32)
            // The area holds the record as of the last switch (as Xen's): time running
            // shows there once vCPU 1 was switched out, which only sharing a CPU forces.
            && (!contended || now1.time[Runstate::Running as usize] > 0)
            && info1.time[Runstate::Running as usize] >= now1.time[Runstate::Running as usize]
            && info1.time[Runstate::Running as usize] > 0,
        format_args!(
            "vCPU 0 entry {} times {:?} (base {} then {}), vCPU 1 state {} times {:?}, get_runstate_info running {}",
            now0.state_entry_time, now0.time, base(&first0), base(&now0), now1.state, now1.time, info1.time[0]
        ),
    );

    // Single-shot timers.
    let shot = |deadline: u64, flags: u32| {
        let mut arg = VcpuSetSingleshotTimer { timeout_abs_ns: deadline, flags, _pad: 0 };
        op(VcpuOp::SetSingleshotTimer, 0, &raw mut arg)
    };
    let past = clock.now_ns() - MS;
    let etime = shot(past, VCPU_SSHOTTMR_FUTURE);
    let before = timer.fired();
    let fired_past = shot(past, 0);
    events.wait_until(|| timer.fired() != before).expect("wait");
    check("singleshot_past", etime == err(Errno::Etime) && fired_past == Ok(0), format_args!("future flag {etime:?}, without it fired at once"));
    let blocked_before = area(0).time[Runstate::Blocked as usize];
    let deadline = clock.now_ns() + 20 * MS;
    let before = timer.fired();
    shot(deadline, VCPU_SSHOTTMR_FUTURE).expect("single shot");
    events.wait_until(|| timer.fired() != before).expect("wait");
    let woke = clock.now_ns();
    let blocked = area(0).time[Runstate::Blocked as usize] - blocked_before;
    check("singleshot_future", woke >= deadline && blocked > 0, format_args!("woke {} us after the deadline, {} us blocked", (woke - deadline) / 1000, blocked / 1000));
    shot(clock.now_ns() + 10 * MS, 0).expect("single shot");
    op(VcpuOp::StopSingleshotTimer, 0, ptr::null_mut::<u8>()).expect("stop");
    let before = timer.fired();
    spin_ms(clock, 40);
    let _ = hypercall::version();
    let other = op(VcpuOp::StopSingleshotTimer, 1, ptr::null_mut::<u8>());
    check("singleshot_stop", timer.fired() == before && other == err(Errno::Einval), format_args!("no expiry in 40 ms; on another vCPU {other:?}"));

    // The periodic timer.
    let period = |ns: u64| {
        let mut arg = VcpuSetPeriodicTimer { period_ns: ns };
        op(VcpuOp::SetPeriodicTimer, 0, &raw mut arg)
    };
    let short = period(MS - 1);
    period(2 * MS).expect("periodic");
    let before = timer.fired();
    spin_ms(clock, 100);
    let ticks = timer.fired() - before;
    op(VcpuOp::StopPeriodicTimer, 0, ptr::null_mut::<u8>()).expect("stop periodic");
    let _ = hypercall::version();
    let before = timer.fired();
    spin_ms(clock, 40);
    let _ = hypercall::version();
    let after_stop = timer.fired() - before;
    check(
        "periodic",
        short == err(Errno::Einval) && (10..=51).contains(&ticks) && after_stop == 0,
        format_args!("period under 1 ms {short:?}; 2 ms period: {ticks} ticks in 100 ms, {after_stop} in 40 ms after stop"),
    );

    // Down and up.
    op(VcpuOp::Down, 1, ptr::null_mut::<u8>()).expect("down");
    let is_up_down = smp::is_up(VcpuId(1));
    spin_ms(clock, 20);
    let c1 = COUNTER.load(Ordering::Acquire);
    spin_ms(clock, 60);
    let c2 = COUNTER.load(Ordering::Acquire);
    let mut info = VcpuRunstateInfo::default();
    op(VcpuOp::GetRunstateInfo, 1, &raw mut info).expect("runstate");
    smp::up(VcpuId(1)).expect("up again");
    let deadline = clock.now_ns() + 5_000 * MS;
    while COUNTER.load(Ordering::Acquire) == c2 && clock.now_ns() < deadline {
        let _ = hypercall::sched_yield();
    }
    let c3 = COUNTER.load(Ordering::Acquire);
    check(
        "down_up",
        is_up_down == Ok(false) && c1 == c2 && info.state == Runstate::Offline as i32 && c3 > c2 && smp::is_up(VcpuId(1)) == Ok(true),
        format_args!("is_up after down {is_up_down:?}, counter {c1} then {c2} while down (state {}), {c3} after up", info.state),
    );
    let nmi = op(VcpuOp::SendNmi, 0, ptr::null_mut::<u8>());
    let mut physid = [0u64; 1];
    let phys = op(VcpuOp::GetPhysid, 0, physid.as_mut_ptr());
    check("unsupported", nmi == err(Errno::Enosys) && phys == err(Errno::Einval), format_args!("send_nmi {nmi:?}, get_physid in a domU {phys:?}"));

    event_channels(events, timer.port(), start);
    console_ring();

    // Reset last: every port closed.
    // With as many ports bound as the domain may have.
    let mut bound = 0;
    while evtchn::bind_ipi(VcpuId(0)).is_ok() {
        bound += 1;
    }
    let mut reset = [DomId::SELF.0];
    let before_reset = clock.now_ns();
    let reset_result = evtchn_op(EvtchnOp::Reset, reset.as_mut_ptr());
    println!("vcpuop: reset with {bound} more IPI ports bound took {} us", (clock.now_ns() - before_reset) / 1000);
    let after = [ipi, timer.port(), start.console_evtchn].map(|p| evtchn::status(DomId::SELF, p).map(|s| s.status));
    check(
        "reset",
        reset_result.is_ok() && after.iter().all(|s| *s == Ok(EvtchnState::Closed.raw())),
        format_args!("{reset_result:?}, then IPI, timer and console ports {after:?}"),
    );
    // The domain ends with vCPU 1 down: its teardown must not wait for it.
    op(VcpuOp::Down, 1, ptr::null_mut::<u8>()).expect("down at the end");
    println!("vcpuop: all checks passed");
}

fn count_unmask_event(_: EvtchnPort) {
    UNMASK_EVENTS.fetch_add(1, Ordering::AcqRel);
}

fn event_channels(events: Events, timer_port: EvtchnPort, start: &StartInfo) {
    let status = |p: EvtchnPort| evtchn::status(DomId::SELF, p).expect("status");
    // Four IPIs on one vCPU, as Linux binds.
    let ipis = [(); 4].map(|()| evtchn::bind_ipi(VcpuId(0)).expect("bind_ipi"));
    let ipi_ok = ipis.iter().all(|p| status(*p).status == EvtchnState::Ipi.raw() && status(*p).vcpu == VcpuId(0));
    let unbound = evtchn::alloc_unbound(DomId(0)).expect("alloc_unbound");
    let console = status(start.console_evtchn);
    let closed = status(EvtchnPort(200));
    let virq = status(timer_port);
    let beyond = evtchn::status(DomId::SELF, EvtchnPort(1 << 20)).map(|s| s.status);
    check(
        "evtchn_status",
        ipi_ok
            && status(unbound).status == EvtchnState::Unbound.raw()
            && console.status == EvtchnState::Interdomain.raw()
            && console.detail[0] == u32::from(DomId::XEN.0)
            && closed.status == EvtchnState::Closed.raw()
            && virq.status == EvtchnState::Virq.raw()
            && beyond == Err(HypercallError::Xen(Errno::Einval)),
        format_args!(
            "4 IPIs {ipis:?}, unbound {}, console {}/{:#x}, free {}, VIRQ {}, past the limit {beyond:?}",
            status(unbound).status, console.status, console.detail[0], closed.status, virq.status
        ),
    );
    let ipi_move = evtchn::bind_vcpu(ipis[0], VcpuId(1));
    let unbound_move = evtchn::bind_vcpu(unbound, VcpuId(1));
    // FIFO: init_control's arguments are checked as Xen checks them (XTF's xsa-188 wants
    // EINVAL for a bad frame), and a valid request gets ENOSYS (the FIFO ABI is not offered).
    let page = start_info::virt_to_mfn(INFO_PAGE.0.get() as u64).expect("page mfn").0;
    let l4 = start_info::virt_to_mfn(start.pt_base).expect("l4 mfn").0;
    let init_control = |control_gfn: u64, offset: u32, vcpu: u32| {
        let mut arg = EvtchnInitControl { control_gfn, offset, vcpu, ..Default::default() };
        let result = evtchn_op(EvtchnOp::InitControl, &raw mut arg);
        (result, arg.link_bits)
    };
    let einval = (Err(HypercallError::Xen(Errno::Einval)), 0);
    let refused = [init_control(u64::MAX - 1, 0, 0), init_control(l4, 0, 0), init_control(page, 4, 0), init_control(page, 4096 - 64, 0)];
    let no_vcpu = init_control(page, 0, 1000);
    let init = init_control(page, 0, 0);
    let mut fifo = [0u64; 4];
    let expand = evtchn_op(EvtchnOp::ExpandArray, fifo.as_mut_ptr());
    check(
        "evtchn_bind_vcpu_fifo",
        ipi_move == Err(HypercallError::Xen(Errno::Einval))
            && unbound_move.is_ok()
            && status(unbound).vcpu == VcpuId(1)
            && refused.iter().all(|r| *r == einval)
            && no_vcpu == (Err(HypercallError::Xen(Errno::Enoent)), 0)
            && init == (Err(HypercallError::Xen(Errno::Enosys)), 0)
            && expand == Err(HypercallError::Xen(Errno::Enosys)),
        format_args!(
            "IPI {ipi_move:?}, unbound {unbound_move:?}, init_control bad frame/table/unaligned/crossing {refused:?}, \
             no vCPU {no_vcpu:?}, valid {init:?}, expand_array {expand:?}"
        ),
    );

    // Unmask re-raises a port that became pending while masked.
    let port = ipis[1];
    events.set_handler(port, count_unmask_event).expect("handler");
    let shared = shared_info::shared_info().expect("shared info").as_ptr();
    // SAFETY: shared info is mapped; its mask words are the guest's to write, atomically.
    let mask_word = unsafe { &*(ptr::addr_of_mut!((*shared).evtchn_mask[port.0 as usize / 64]) as *const AtomicU64) };
    let bit = 1u64 << (port.0 % 64);
    mask_word.fetch_or(bit, Ordering::SeqCst);
    let before = UNMASK_EVENTS.load(Ordering::Acquire);
    evtchn::send(port).expect("send");
    let _ = hypercall::version();
    let masked = UNMASK_EVENTS.load(Ordering::Acquire) - before;
    evtchn::unmask(port).expect("unmask");
    let _ = hypercall::version();
    let unmasked = UNMASK_EVENTS.load(Ordering::Acquire) - before;
    check("evtchn_unmask", masked == 0 && unmasked == 1, format_args!("{masked} events while masked, {unmasked} after unmask"));
}

fn console_ring() {
    let ring = ConsoleRing::get().expect("start_info names a console ring");
    let mut written = 0;
    // 40 lines of 64 bytes: more than the 2 KiB ring, so the writer waits for the other end.
    for n in 0..40 {
        let mut line = [b'.'; 64];
        let text = [b'v', b'c', b'p', b'u', b'o', b'p', b':', b' ', b'r', b'i', b'n', b'g', b' ', b'l', b'i', b'n', b'e', b' ', b'0' + n / 10, b'0' + n % 10, b' '];
        line[..text.len()].copy_from_slice(&text);
        line[63] = b'\n';
        written += ring.write(&line);
    }
    let mut waits = 0;
    while ring.unconsumed() != Some(0) && waits < 100_000 {
        let _ = hypercall::sched_yield();
        waits += 1;
    }
    check("console_ring", written == 40 * 64 && ring.unconsumed() == Some(0), format_args!("{written} bytes through port {}, all consumed", ring.port().0));
}

extern "C" fn secondary(_: u64) -> ! {
    // Its time record, in the moved place (the hypervisor published it on the switch in).
    // SAFETY: the moved vcpu_info is ours; the hypervisor writes it concurrently.
    let (version, system_time) =
        unsafe { (ptr::addr_of!((*moved_info()).time.version).read_volatile(), ptr::addr_of!((*moved_info()).time.system_time).read_volatile()) };
    TIME_SEEN.store(if version % 2 == 0 && version > 0 && system_time > 0 { 1 } else { 2 }, Ordering::Release);
    let port = evtchn::bind_ipi(VcpuId(1)).map_or(u32::MAX, |p| p.0);
    IPI_PORT.store(port, Ordering::Release);
    loop {
        COUNTER.fetch_add(1, Ordering::AcqRel);
        core::hint::spin_loop();
    }
}
