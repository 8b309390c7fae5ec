//! The `log` backend and the console's output: every line, the hypervisor's and the
//! guests' (`pv::console`), tagged with CPU and time since boot when it is written, goes
//! into one buffer of whole lines ([`hypervisor::logring`]) in the order written, and
//! reaches the serial console in bounded slices ([`drain`]): a short one at the end of
//! every trap, so that console output never makes a stay with interrupts off long, and
//! longer ones from the idle loop, between which it takes its interrupts. One CPU drains
//! at a time and the others never wait for it; writers hold the buffer's lock only to
//! copy a line in.
//!
//! Until the end of boot ([`set_buffered`]) and from the end of the run every line is
//! printed before `log` returns, as before buffering. A line of the hypervisor's that
//! finds the buffer full is dropped and counted, and the count is printed when there is
//! room again; guests' lines wait instead (see `pv::console`), and the hypervisor keeps
//! [`HYPERVISOR_RESERVE`] of the buffer for its own. The panic and fatal-exception paths
//! call [`force_unlock`] first: it prints what is buffered, ignoring locks (a CPU that
//! died holding one cannot silence the report), and makes every later line direct. Never
//! allocates.

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrayvec::ArrayVec;
use hypervisor::logring::{Limit, LogRing, HYPERVISOR};
use log::{LevelFilter, Log, Metadata, Record};
use spin::Mutex;

use crate::arch::serial::{self, Console};
use crate::arch::percpu;
use crate::time;

/// Bytes of the line buffer.
const RING_BYTES: usize = 128 << 10;
/// Bytes of the buffer only the hypervisor's own lines may use.
pub const HYPERVISOR_RESERVE: usize = 32 << 10;
/// The most bytes guests' lines may fill, all domains together.
pub const GUEST_SHARE: usize = RING_BYTES - HYPERVISOR_RESERVE;
/// Longest line kept (longer ones are cut, with a mark).
const LINE_BYTES: usize = 1024;
/// Console output at the end of a trap: at most this long (at least one chunk).
pub const EXIT_SLICE_NS: u64 = 10_000;
/// Console output from the idle loop between two chances for interrupts.
pub const IDLE_SLICE_NS: u64 = 50_000;
/// How long the idle loop waits, interrupts on, before it looks again at output it could
/// not write (the UART busy, or another CPU draining): it must not hammer the UART's
/// status register, each read of which is an exit to the emulator under QEMU.
pub const IDLE_RETRY_NS: u64 = 20_000;
/// Bytes written to the UART between two looks at the clock (and at the UART).
const CHUNK: usize = 8;
const _: () = assert!(CHUNK <= serial::FIFO_BYTES);

static RING: Mutex<LogRing<RING_BYTES>> = Mutex::new(LogRing::new());
/// Something is queued (kept with the ring, read without its lock).
static QUEUED: AtomicBool = AtomicBool::new(false);
/// A CPU is writing queued lines to the UART.
static DRAINING: AtomicBool = AtomicBool::new(false);
/// Lines wait in the buffer; otherwise each is printed before `log` returns.
static BUFFERED: AtomicBool = AtomicBool::new(false);
/// The hypervisor's lines dropped because the buffer was full: in all, and not yet told.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static UNREPORTED: AtomicU64 = AtomicU64::new(0);

struct Logger;

static LOGGER: Logger = Logger;

/// Installs the logger; `verbose` lowers the threshold to debug.
pub fn init(verbose: bool) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(if verbose { LevelFilter::Debug } else { LevelFilter::Info });
}

/// Changes the threshold after the command line has been read.
pub fn set_verbose(verbose: bool) {
    log::set_max_level(if verbose { LevelFilter::Debug } else { LevelFilter::Info });
}

/// A line being formatted: cut at [`LINE_BYTES`] with a mark.
struct Line(ArrayVec<u8, LINE_BYTES>);

impl Line {
    const CUT: &'static [u8] = b" [cut]\n";

    fn new() -> Self {
        let mut line = Line(ArrayVec::new());
        write_line_prefix(&mut line);
        line
    }

    /// Ends the line with a newline.
    fn finish(mut self) -> Self {
        let _ = self.write_str("\n");
        self
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.0.remaining_capacity();
        if s.len() <= room.saturating_sub(Self::CUT.len()) {
            self.0.extend(s.bytes());
        } else if !self.0.ends_with(Self::CUT) {
            let keep = room.saturating_sub(Self::CUT.len());
            self.0.extend(s.bytes().take(keep));
            self.0.extend(Self::CUT.iter().copied());
        }
        Ok(())
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => "ERROR ",
            log::Level::Warn => "WARN ",
            _ => "",
        };
        let mut line = Line::new();
        let _ = write!(line, "{level}{}", record.args());
        push_own(&line.finish().0);
    }

    fn flush(&self) {}
}

/// Queues one of the hypervisor's lines (after the notice of earlier drops, if any).
fn push_own(line: &[u8]) {
    let own = Limit { own: usize::MAX, all: RING_BYTES };
    let mut ring = RING.lock();
    let unreported = UNREPORTED.load(Ordering::Relaxed);
    if unreported > 0 {
        let mut notice = Line::new();
        let _ = write!(notice, "WARN [{unreported} log lines dropped: the console buffer was full]");
        if ring.push(HYPERVISOR, own, &notice.finish().0).is_ok() {
            UNREPORTED.fetch_sub(unreported, Ordering::Relaxed);
        }
    }
    if ring.push(HYPERVISOR, own, line).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        UNREPORTED.fetch_add(1, Ordering::Relaxed);
    }
    QUEUED.store(!ring.is_empty(), Ordering::Release);
    drop(ring);
    if !BUFFERED.load(Ordering::Acquire) {
        flush();
    }
}

/// Queues a line written by domain `domain`, tagged like the hypervisor's, if the domain
/// has less than `share` bytes queued and the guests' part of the buffer has room; false
/// (nothing queued) otherwise.
pub fn guest_line(domain: u16, share: usize, args: core::fmt::Arguments) -> bool {
    let mut line = Line::new();
    let _ = line.write_fmt(args);
    let line = line.finish();
    let mut ring = RING.lock();
    let queued = ring.push(domain, Limit { own: share, all: GUEST_SHARE }, &line.0).is_ok();
    QUEUED.store(!ring.is_empty(), Ordering::Release);
    drop(ring);
    if !BUFFERED.load(Ordering::Acquire) {
        flush();
    }
    queued
}

/// Bytes a guest line may still take: in the guests' part of the buffer, and with
/// `domain`, also within its `share`.
pub fn guest_room(domain: Option<u16>, share: usize) -> usize {
    let ring = RING.lock();
    let all = GUEST_SHARE.saturating_sub(ring.used());
    domain.map_or(all, |id| all.min(share.saturating_sub(ring.queued(id))))
}

/// Writes queued lines to the UART for about `budget_ns` (at least one chunk), unless
/// another CPU is at it or the UART is busy; returns whether it wrote anything. Called
/// with interrupts off.
pub fn drain(budget_ns: u64) -> bool {
    if !QUEUED.load(Ordering::Acquire) || DRAINING.swap(true, Ordering::Acquire) {
        return false;
    }
    let start = time::rdtsc();
    let mut wrote = false;
    loop {
        if !serial::transmitter_empty() {
            break;
        }
        let mut chunk = [0u8; CHUNK];
        let n = {
            let mut ring = RING.lock();
            let n = ring.take(&mut chunk);
            QUEUED.store(!ring.is_empty(), Ordering::Release);
            n
        };
        if n == 0 {
            break;
        }
        serial::write_fifo(&chunk[..n]);
        wrote = true;
        if time::tsc_to_ns(time::rdtsc().wrapping_sub(start)) >= budget_ns {
            break;
        }
    }
    DRAINING.store(false, Ordering::Release);
    wrote
}

/// Whether lines wait to be printed.
pub fn has_queued() -> bool {
    QUEUED.load(Ordering::Acquire)
}

/// Prints everything queued (waiting while another CPU drains).
fn flush() {
    while QUEUED.load(Ordering::Acquire) {
        let _ = drain(u64::MAX);
        core::hint::spin_loop();
    }
}

/// From the end of boot (`true`) lines wait in the buffer; at the end of the run
/// (`false`) what is queued is printed and every later line is printed at once.
pub fn set_buffered(buffered: bool) {
    BUFFERED.store(buffered, Ordering::Release);
    if !buffered {
        flush();
    }
}

/// What the console buffer went through: the hypervisor's lines dropped, and the most
/// bytes it held at once.
pub fn figures() -> (u64, usize) {
    (DROPPED.load(Ordering::Relaxed), RING.lock().high_water())
}

/// Writes the `[cpuN  seconds]` tag.
pub fn write_line_prefix(out: &mut impl Write) {
    let ns = time::since_boot_ns();
    let _ = write!(
        out,
        "[cpu{:<2} {:>4}.{:06}] ",
        percpu::current_index_or_boot(),
        ns / 1_000_000_000,
        (ns / 1000) % 1_000_000
    );
}

/// Prints a line at once, straight to the UART (for the fatal paths, after
/// [`force_unlock`]).
pub fn emergency(args: core::fmt::Arguments) {
    write_line_prefix(&mut Console);
    let _ = writeln!(Console, "{args}");
}

/// Takes the console over for a fatal report: prints what is buffered, whoever holds the
/// buffer's lock or drains it, and makes every later line direct.
pub fn force_unlock() {
    BUFFERED.store(false, Ordering::Release);
    if RING.is_locked() {
        // SAFETY: called only on the fatal path, where this CPU is about to stop the
        // machine; a torn line from another CPU is acceptable, a silent death is not.
        unsafe { RING.force_unlock() };
    }
    DRAINING.store(false, Ordering::Release);
    flush();
}
