//! Guest console output: `console_io` writes and the console ring (the page and event
//! channel the builder announces in `start_info.console.domU`) become lines on the serial
//! console prefixed with the domain's id (and, for the ring, its name), through the console
//! buffer (`crate::logger`), so that printing them never holds a CPU: the UART is written
//! later, in bounded slices.
//!
//! Each domain buffers one partial line per source; a line goes to the console buffer when
//! it ends (or fills [`LINE_MAX`]). Two limits apply to both sources together. A rate limit
//! by bytes and time, a token bucket ([`BURST_BYTES`], refilled at [`BYTES_PER_SECOND`]) in
//! which each line costs its bytes plus [`LINE_COST`]: lines over it are dropped and
//! counted, and the count is reported when output resumes. Domain 0 is trusted (it reports
//! for every other domain) and never rate-limited. And a share of the console buffer
//! ([`DOMAIN_SHARE`], [`DOM0_SHARE`]): a line that finds its domain's share (or the guests'
//! part of the buffer) full is not dropped but waits. A `console_io` write then stops before
//! it, and the handler continues the call later; the ring keeps the bytes not taken (the
//! guest sees its ring full) and is drained again once the console buffer has drained
//! ([`retry_rings`], from every trap exit and the idle loop). So a well-behaved domain
//! loses nothing and a chatty one cannot drown the others' lines.
//!
//! A `console_io` write that waits does not spin: its vCPU blocks ([`wait_for_room`]) and
//! is woken, oldest first, as the buffer drains and makes room for a line
//! ([`retry_rings`]), then continues the call. Spinning, every domain that printed into a
//! full buffer stayed runnable: at the end of `make stress` at N=1000 several hundred
//! domains print their reports at once, and each then ran its whole BVT slice (5 ms) in
//! turn, so the domains still measuring waited behind them for up to seconds (issue 18).
//!
//! The ring (Xen's `struct xencons_interface`, io/console.h) is a frame of the domain's
//! reservation that holds a writable type for the domain's life (taken by the builder,
//! dropped by the teardown: [`release_ring`]); its other end is the hypervisor, which drains
//! the output ring on each notification of the ring's channel (`EVTCHNOP_send` on the
//! `start_info` port) and notifies back once it has consumed bytes, as xenconsoled does.
//! Indices are the guest's to write: output more than a ring ahead of the consumer is not
//! read (reported once, left for the guest to mend, as xenconsoled leaves it), nothing is
//! ever read or written outside the ring's arrays, and each drain reads at most one ring
//! (2 KiB). Input: none yet (domain 0 takes the console in issue 17).
//!
//! Input (as Xen's serial console gives it to domain 0): bytes received on the serial
//! port are polled on timer interrupts ([`poll_input`]) into a 1 KiB buffer
//! (bytes beyond it are dropped and counted), `VIRQ_CONSOLE` is raised on domain 0, and
//! domain 0 takes them with `CONSOLEIO_read` ([`read_input`]; `EPERM` for any other
//! domain). Domain 0 decides which domain the input is for (its console service).
//!
//! A domain domain 0 creates has its console port unbound for domain 0 instead (its
//! backend, `pv::build`): the hypervisor stands in and drains the ring on the guest's
//! notifications (a send on the unbound port) only until domain 0 binds the port, and again
//! if domain 0 closes its end; while domain 0 holds it, the ring is domain 0's alone and
//! nothing here reads it.

use arrayvec::ArrayVec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use abi::console::{self as ring_abi, OUT_CONS_OFFSET, OUT_PROD_OFFSET, OUT_RING_OFFSET, OUT_RING_SIZE};
use abi::ids::{DomId, EvtchnPort};
use log::{info, warn};
use protocol::console::{Origin, Suppressed};
use mm::addr::Mfn;
use spin::Mutex;

use hypervisor::console_line::{ConsoleLine, Ring, Source};
use hypervisor::console_waiters::{self, Waiters};

use crate::domain::{Domain, LifeState, Vcpu};
use crate::memory::FrameMapping;
use crate::{logger, time};

use hypervisor::console_line::{LINE_COST, LINE_MAX};
/// Bytes of the console buffer one domain's lines may fill.
pub const DOMAIN_SHARE: usize = 8 << 10;
/// The same for domain 0, which prints for the others.
pub const DOM0_SHARE: usize = 32 << 10;

/// Writes that stopped because their domain's line had no room in the console buffer yet.
static WAITS: AtomicU64 = AtomicU64::new(0);
/// Guest lines dropped over the rate limit, and at shutdown for want of room.
static RATE_LIMITED: AtomicU64 = AtomicU64::new(0);
static NO_ROOM: AtomicU64 = AtomicU64::new(0);
/// Bytes taken from console rings, and rings found with indices more than a ring apart.
static RING_BYTES: AtomicU64 = AtomicU64::new(0);
static RING_BOGUS: AtomicU64 = AtomicU64::new(0);

/// Domains whose `console_io` writers wait for room in the console buffer, blocked,
/// oldest first, each listed once with its waiting vCPUs (`hypervisor::console_waiters`:
/// a vCPU woken by an event that writes and waits again is not listed again, so the list
/// holds at most one entry per domain id and is never full). [`Vcpu::console_wait`] says
/// whether a listed vCPU still waits.
static WAITERS: Mutex<Waiters<{ crate::domain::MAX_DOMAINS + 1 }>> = Mutex::new(Waiters::new());
/// How many domains [`WAITERS`] lists (read without the lock on every trap exit).
static WAITER_COUNT: AtomicU32 = AtomicU32::new(0);
/// The most domains [`WAITERS`] listed at once, and the waits it could not list (none:
/// every domain and vCPU id fits).
static WAITERS_HIGH_WATER: AtomicU32 = AtomicU32::new(0);
static WAITERS_FULL: AtomicU64 = AtomicU64::new(0);
/// Room a woken waiter is counted to need: its longest line with its tag and header.
const LINE_ROOM: usize = LINE_MAX + 32;

/// Domains whose ring kept bytes for want of room in the console buffer, to drain again
/// (each at most once: [`Ring::retry`]). A fixed array, one slot per possible domain id.
static RETRY: Mutex<ArrayVec<u16, { crate::domain::MAX_DOMAINS + 1 }>> = Mutex::new(ArrayVec::new_const());
/// How many ids wait in [`RETRY`] (read without the lock on every trap exit).
static RETRY_COUNT: AtomicU32 = AtomicU32::new(0);

/// Appends `console_io` bytes to the domain's console; returns how many it took: all of
/// them, unless a complete line found no room in the console buffer (the caller offers the
/// rest again later).
pub fn write(domain: &Domain, bytes: &[u8]) -> usize {
    let mut console = domain.console.lock();
    take(domain, &mut console, Source::ConsoleIo, bytes)
}

/// Appends `bytes` from `source` to the domain's console, as [`write`] describes.
fn take(domain: &Domain, console: &mut ConsoleLine, source: Source, bytes: &[u8]) -> usize {
    let mut taken = bytes.len();
    for (i, &byte) in bytes.iter().enumerate() {
        // A line that waits for room goes first (whichever write of the domain comes next:
        // the stopped one, continued, or another made meanwhile).
        let line = console.line(source);
        let ends = line.waiting || byte == b'\n' || line.buffer.is_full();
        if ends && !emit(domain, console, source, false) {
            console.line(source).waiting = true;
            WAITS.fetch_add(1, Ordering::Relaxed);
            taken = i;
            break;
        }
        let line = console.line(source);
        if core::mem::take(&mut line.waiting) && byte == b'\n' {
            // The newline that ended the line that waited.
            continue;
        }
        if byte != b'\n' && byte != b'\r' {
            line.buffer.push(if byte.is_ascii_graphic() || byte == b' ' || byte == b'\t' { byte } else { b'.' });
        }
    }
    domain.counters.console_bytes.fetch_add(taken as u64, Ordering::Relaxed);
    taken
}

/// At shutdown: takes what the domain's ring still holds, then prints whatever partial
/// lines are left, beyond the domain's share if need be (but not beyond the guests' part of
/// the buffer: then they are dropped and counted).
pub fn flush_partial(domain: &Domain) {
    drain_ring(domain);
    let mut console = domain.console.lock();
    for source in [Source::ConsoleIo, Source::Ring] {
        if !console.line(source).buffer.is_empty() {
            emit(domain, &mut console, source, true);
        }
        console.line(source).waiting = false;
    }
}

/// Sends the domain's line from `source` to the console buffer (or drops it, over the rate
/// limit); false when it has to wait for room (not `force`d), and then it stays.
fn emit(domain: &Domain, console: &mut ConsoleLine, source: Source, force: bool) -> bool {
    console.refill(time::since_boot_ns());
    let cost = console.line(source).buffer.len() as u64 + LINE_COST;
    if console.tokens < cost && !domain.privileged {
        console.dropped_since_report += 1;
        domain.counters.console_dropped_lines.fetch_add(1, Ordering::Relaxed);
        RATE_LIMITED.fetch_add(1, Ordering::Relaxed);
        console.line(source).buffer.clear();
        return true;
    }
    let id = domain.id.0;
    let share = match (force, domain.privileged) {
        (true, _) => usize::MAX,
        (false, true) => DOM0_SHARE,
        (false, false) => DOMAIN_SHARE,
    };
    if console.dropped_since_report > 0 {
        let dropped = console.dropped_since_report;
        if !logger::guest_line(id, share, format_args!("{} {}", Origin::Direct(DomId(id)), Suppressed(dropped))) && !force {
            return false;
        }
        console.dropped_since_report = 0;
    }
    let text = core::str::from_utf8(&console.line(source).buffer).unwrap_or("<invalid>");
    let queued = match source {
        Source::ConsoleIo => logger::guest_line(id, share, format_args!("{} {text}", Origin::Direct(DomId(id)))),
        Source::Ring => logger::guest_line(id, share, format_args!("{} {text}", Origin::Ring { domid: DomId(id), name: domain.name.as_str() })),
    };
    if !queued {
        if !force {
            return false;
        }
        domain.counters.console_dropped_lines.fetch_add(1, Ordering::Relaxed);
        NO_ROOM.fetch_add(1, Ordering::Relaxed);
    }
    console.tokens = console.tokens.saturating_sub(cost);
    console.line(source).buffer.clear();
    true
}

/// Gives the domain its console ring: frame `mfn` of its reservation, already held for the
/// hypervisor by the caller, announced with `port`, a channel whose other end is the
/// hypervisor. Called by the builder before the domain runs.
pub fn attach_ring(domain: &Domain, mfn: Mfn, port: EvtchnPort) {
    domain.console.lock().ring = Some(Ring { mfn, port, retry: false, bogus_reported: false });
}

/// Takes the ring away from a dead domain and drops the hypervisor's hold on its frame
/// (`pv::teardown`).
pub fn release_ring(domain: &Domain) {
    let ring = domain.console.lock().ring.take();
    if let Some(ring) = ring {
        crate::pv::mmu::release_for_hypervisor(ring.mfn);
    }
}

/// The hypervisor's end of a channel was notified: `port` of `domain`. Drains the ring if
/// that is its channel.
pub fn notified(domain: &Domain, port: EvtchnPort) {
    let ours = domain.console.lock().ring.is_some_and(|ring| ring.port == port);
    if ours {
        drain_ring(domain);
    }
}

/// Takes what the domain's output ring holds (at most one ring) into its console lines,
/// moves `out_cons` past what was taken and, when it took anything, notifies the guest on
/// the ring's channel. Bytes a line waiting for room kept in the ring are taken by a later
/// drain ([`retry_rings`]).
fn drain_ring(domain: &Domain) {
    let mut console = domain.console.lock();
    let Some(ring) = console.ring else { return };
    if domain.state() == LifeState::Dead {
        return;
    }
    // Domain 0 took the ring: it is its backend's alone (lock order: console, channels).
    if !crate::pv::events::hypervisor_stands_in(domain, ring.port) {
        return;
    }
    let map = FrameMapping::new(ring.mfn).expect("a temporary mapping slot is free");
    // The indices are naturally aligned u32s inside the page (offsets from the header's
    // layout, asserted in `abi::console`); the guest writes them concurrently, hence atomics.
    let cons_word: &core::sync::atomic::AtomicU32 = map.atomic(OUT_CONS_OFFSET);
    let prod_word: &core::sync::atomic::AtomicU32 = map.atomic(OUT_PROD_OFFSET);
    let cons = cons_word.load(Ordering::Acquire);
    let prod = prod_word.load(Ordering::Acquire);
    let Some(waiting) = ring_abi::pending(cons, prod, OUT_RING_SIZE) else {
        RING_BOGUS.fetch_add(1, Ordering::Relaxed);
        if !core::mem::replace(&mut console.ring.as_mut().expect("checked above").bogus_reported, true) {
            warn!("domain {} ({}): console ring indices out of range (out_cons {cons:#x}, out_prod {prod:#x}); output ignored", domain.id.0, domain.name);
        }
        return;
    };
    if waiting == 0 {
        return;
    }
    // In chunks, so that little stack is used; a chunk not taken whole ends the drain.
    let mut taken = 0u32;
    while taken < waiting {
        let mut chunk = [0u8; 256];
        let n = (waiting - taken).min(chunk.len() as u32);
        for (i, byte) in chunk[..n as usize].iter_mut().enumerate() {
            let at = OUT_RING_OFFSET + ring_abi::slot(cons.wrapping_add(taken + i as u32), OUT_RING_SIZE);
            // The guest may write the byte concurrently (then this reads either value).
            *byte = map.read(at);
        }
        let took = take(domain, &mut console, Source::Ring, &chunk[..n as usize]) as u32;
        taken += took;
        if took < n {
            break;
        }
    }
    cons_word.store(cons.wrapping_add(taken), Ordering::Release);
    RING_BYTES.fetch_add(u64::from(taken), Ordering::Relaxed);
    let ring = console.ring.as_mut().expect("checked above");
    if taken < waiting && !ring.retry {
        ring.retry = true;
        let mut retry = RETRY.lock();
        if retry.try_push(domain.id.0).is_ok() {
            RETRY_COUNT.store(retry.len() as u32, Ordering::Release);
        } else {
            ring.retry = false;
        }
    }
    let port = ring.port;
    drop(map);
    drop(console);
    if taken > 0 {
        crate::pv::events::raise_hypervisor_port(domain, port);
    }
}

/// The running `vcpu`'s `console_io` write found no room for its domain's line: it blocks
/// until the buffer has drained enough (woken by [`retry_rings`]), instead of spinning on
/// its continuation. False if it could not be listed (it then continues at once, as before).
///
/// Blocked before it is listed: a waker that finds it listed and waiting (on another CPU,
/// at once) must find it blocked too, or its wake-up is lost (`sched::wake` wakes only a
/// blocked vCPU) while it has taken the vCPU's `console_wait`: the vCPU then slept until
/// some event came (for ever, in a guest that takes none).
pub fn wait_for_room(vcpu: &Vcpu) -> bool {
    crate::sched::block(vcpu);
    vcpu.console_wait.store(true, Ordering::SeqCst);
    {
        let mut waiters = WAITERS.lock();
        if !waiters.add(vcpu.domain.id.0, vcpu.id) {
            drop(waiters);
            vcpu.console_wait.store(false, Ordering::SeqCst);
            WAITERS_FULL.fetch_add(1, Ordering::Relaxed);
            crate::sched::wake(vcpu);
            return false;
        }
        WAITER_COUNT.store(waiters.len() as u32, Ordering::Release);
        WAITERS_HIGH_WATER.fetch_max(waiters.len() as u32, Ordering::Relaxed);
    }
    // Room made between the write and the listing would wake nobody: look now.
    wake_waiters();
    true
}

/// Wakes the waiting `console_io` writers, oldest domain first, that the room now free in
/// the console buffer can take a line of each (a domain whose own share is full, or whose
/// writers the room does not reach, goes to the back with those still waiting). Each
/// listed domain is visited at most once. Costs one load while none waits.
fn wake_waiters() {
    if WAITER_COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut room = logger::guest_room(None, 0);
    let mut waiters = WAITERS.lock();
    for _ in 0..waiters.len() {
        if room < LINE_ROOM {
            break;
        }
        let Some((id, listed)) = waiters.take() else { break };
        let Some(domain) = crate::domain::lookup(mm::frame::DomainId(id)) else { continue };
        let share = if domain.privileged { DOM0_SHARE } else { DOMAIN_SHARE };
        // Its own share bounds it too: its lines must print first.
        let mut own = logger::guest_room(Some(id), share);
        if own < LINE_ROOM {
            // None of its vCPUs can be woken: back with all of them, none looked up.
            waiters.put_back(id, listed);
            continue;
        }
        let mut still = 0u32;
        for vcpu_id in console_waiters::vcpu_ids(listed) {
            let Some(vcpu) = domain.vcpu(vcpu_id) else { continue };
            if !vcpu.console_wait.load(Ordering::SeqCst) {
                continue;
            }
            if room < LINE_ROOM || own < LINE_ROOM {
                still |= 1 << vcpu_id;
                continue;
            }
            if vcpu.console_wait.swap(false, Ordering::SeqCst) {
                crate::sched::wake(&vcpu);
                room -= LINE_ROOM;
                own -= LINE_ROOM;
            }
        }
        waiters.put_back(id, still);
    }
    WAITER_COUNT.store(waiters.len() as u32, Ordering::Release);
}

/// Drains again the rings that kept bytes for want of room in the console buffer, and
/// wakes the `console_io` writers that waited for room; called after the console buffer
/// drained (every trap exit and the idle loop). Costs two loads while none waits.
pub fn retry_rings() {
    wake_waiters();
    let count = RETRY_COUNT.load(Ordering::Acquire);
    // As many as wait now: a ring that finds no room again waits for the next call.
    for _ in 0..count {
        let id = {
            let mut retry = RETRY.lock();
            let id = retry.pop();
            RETRY_COUNT.store(retry.len() as u32, Ordering::Release);
            id
        };
        let Some(id) = id else { return };
        let Some(domain) = crate::domain::lookup(mm::frame::DomainId(id)) else { continue };
        if let Some(ring) = domain.console.lock().ring.as_mut() {
            ring.retry = false;
        }
        drain_ring(&domain);
    }
}

/// Bytes of serial input waiting for domain 0.
const INPUT_BYTES: usize = 1024;

/// Serial input not yet read by domain 0: a ring of bytes and its indices.
struct Input {
    bytes: [u8; INPUT_BYTES],
    head: usize,
    len: usize,
}

static INPUT: Mutex<Input> = Mutex::new(Input { bytes: [0; INPUT_BYTES], head: 0, len: 0 });
static INPUT_TAKEN: AtomicU64 = AtomicU64::new(0);
/// When the serial port was last polled, and how often it may be.
static LAST_POLL_NS: AtomicU64 = AtomicU64::new(0);
const INPUT_POLL_NS: u64 = 10_000_000;
static INPUT_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Takes what the serial port received (at most a FIFO's worth) into the input buffer and,
/// when anything came, raises `VIRQ_CONSOLE` on domain 0. Called with interrupts off from
/// every CPU's timer interrupt; polls at most once every 10 ms (one CPU at a time), and
/// costs one port read when nothing waits.
pub fn poll_input() {
    // At most one poll every 10 ms, whatever the timer interrupts' rate (a port read is
    // slow under emulation, and an exit to the host under a virtualizer).
    let now = time::since_boot_ns();
    let last = LAST_POLL_NS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < INPUT_POLL_NS || LAST_POLL_NS.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return;
    }
    let mut came = false;
    {
        // One CPU at a time reads the port; the others skip it this time.
        let Some(mut input) = INPUT.try_lock() else { return };
        for _ in 0..crate::arch::serial::FIFO_BYTES {
            let Some(byte) = crate::arch::serial::read_byte() else { break };
            came = true;
            if input.len == INPUT_BYTES {
                INPUT_DROPPED.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let at = (input.head + input.len) % INPUT_BYTES;
            input.bytes[at] = byte;
            input.len += 1;
            INPUT_TAKEN.fetch_add(1, Ordering::Relaxed);
        }
    }
    if came {
        if let Some(dom0) = crate::domain::lookup(mm::frame::DomainId(0)) {
            crate::pv::events::raise_global_virq(&dom0, abi::hypercall::Virq::Console);
        }
    }
}

/// `CONSOLEIO_read`: copies up to `count` bytes of serial input to `buffer` and returns
/// how many; domain 0 only (`EPERM`). Bytes are taken only once they are copied.
pub fn read_input(domain: &Domain, buffer: u64, count: u64) -> Result<u64, abi::errno::Errno> {
    if !domain.privileged {
        return Err(abi::errno::Errno::Eperm);
    }
    let mut chunk = [0u8; 256];
    let n = {
        let input = INPUT.lock();
        let n = input.len.min(chunk.len()).min(count as usize);
        for (i, b) in chunk[..n].iter_mut().enumerate() {
            *b = input.bytes[(input.head + i) % INPUT_BYTES];
        }
        n
    };
    if n == 0 {
        return Ok(0);
    }
    crate::arch::uaccess::write(buffer, &chunk[..n]).map_err(|_| abi::errno::Errno::Efault)?;
    let mut input = INPUT.lock();
    // Only domain 0 reads, one call at a time per vCPU; another of its vCPUs may have taken
    // some meanwhile: take no more than what is there.
    let taken = n.min(input.len);
    input.head = (input.head + taken) % INPUT_BYTES;
    input.len -= taken;
    Ok(n as u64)
}

/// Prints the console's figures as summary lines: `console.waits` (guest writes that
/// stopped to wait for room in the console buffer), `console.waiters_high_water` (the most
/// domains the list of waiting writers held at once), `console.waiters_full` (waits that
/// could not be listed and spun instead: none), `console.guest_lines_rate_limited`,
/// `console.guest_lines_dropped` (a domain's last line at shutdown, for want of room),
/// `console.hypervisor_lines_dropped`, `console.buffer_high_water_bytes`, `console.ring_bytes`
/// (taken from console rings) and `console.ring_bogus_indices` (drains that found a ring's
/// indices more than a ring apart).
pub fn report() {
    let (dropped, high_water) = logger::figures();
    info!("summary: console.waits={}", WAITS.load(Ordering::Relaxed));
    info!("summary: console.waiters_high_water={}", WAITERS_HIGH_WATER.load(Ordering::Relaxed));
    info!("summary: console.waiters_full={}", WAITERS_FULL.load(Ordering::Relaxed));
    info!("summary: console.guest_lines_rate_limited={}", RATE_LIMITED.load(Ordering::Relaxed));
    info!("summary: console.guest_lines_dropped={}", NO_ROOM.load(Ordering::Relaxed));
    info!("summary: console.hypervisor_lines_dropped={dropped}");
    info!("summary: console.buffer_high_water_bytes={high_water}");
    info!("summary: console.ring_bytes={}", RING_BYTES.load(Ordering::Relaxed));
    info!("summary: console.ring_bogus_indices={}", RING_BOGUS.load(Ordering::Relaxed));
    info!("summary: console.input_bytes={}", INPUT_TAKEN.load(Ordering::Relaxed));
    info!("summary: console.input_dropped={}", INPUT_DROPPED.load(Ordering::Relaxed));
}
