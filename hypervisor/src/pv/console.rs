//! Guest console output: `console_io` writes become lines on the serial console prefixed
//! with the domain id, through the console buffer (`crate::logger`), so that printing them
//! never holds a CPU: the UART is written later, in bounded slices.
//!
//! Each domain buffers one partial line; a line goes to the console buffer when it ends
//! (or fills [`LINE_MAX`]). Two limits apply. A rate limit by bytes and time, a token
//! bucket ([`BURST_BYTES`], refilled at [`BYTES_PER_SECOND`]) in which each line costs its
//! bytes plus [`LINE_COST`]: lines over it are dropped and counted, and the count is
//! reported when output resumes. Domain 0 is trusted (it reports for every other domain)
//! and never rate-limited. And a share of the console buffer ([`DOMAIN_SHARE`],
//! [`DOM0_SHARE`]): a line that finds its domain's share (or the guests' part of the
//! buffer) full is not dropped but waits, and the write stops before it; the `console_io`
//! handler continues the call later, so a well-behaved domain loses nothing and a chatty
//! one cannot drown the others' lines.

use arrayvec::ArrayVec;
use core::sync::atomic::{AtomicU64, Ordering};

use log::info;

use crate::domain::Domain;
use crate::{logger, time};

/// Longest line kept; longer ones are split.
const LINE_MAX: usize = 160;
/// Bytes a domain may print in a burst (each line counting [`LINE_COST`] more).
pub const BURST_BYTES: u64 = 32 << 10;
/// Bytes per second a domain may print once its burst is spent.
pub const BYTES_PER_SECOND: u64 = 8 << 10;
/// What a line costs beyond its bytes (its tag, and the work of a line), so that a flood
/// of empty lines is limited too.
pub const LINE_COST: u64 = 32;
/// Bytes of the console buffer one domain's lines may fill.
pub const DOMAIN_SHARE: usize = 8 << 10;
/// The same for domain 0, which prints for the others.
pub const DOM0_SHARE: usize = 32 << 10;

/// Writes that stopped because their domain's line had no room in the console buffer yet.
static WAITS: AtomicU64 = AtomicU64::new(0);
/// Guest lines dropped over the rate limit, and at shutdown for want of room.
static RATE_LIMITED: AtomicU64 = AtomicU64::new(0);
static NO_ROOM: AtomicU64 = AtomicU64::new(0);

/// One domain's partial line and its rate-limit budget.
pub struct ConsoleLine {
    buffer: ArrayVec<u8, LINE_MAX>,
    /// The line is complete and waits for room: nothing more goes into it.
    waiting: bool,
    tokens: u64,
    refilled_at_ns: u64,
    dropped_since_report: u64,
}

impl ConsoleLine {
    pub const fn new() -> Self {
        ConsoleLine { buffer: ArrayVec::new_const(), waiting: false, tokens: BURST_BYTES, refilled_at_ns: 0, dropped_since_report: 0 }
    }

    fn refill(&mut self, now_ns: u64) {
        let earned = now_ns.saturating_sub(self.refilled_at_ns) * BYTES_PER_SECOND / 1_000_000_000;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(BURST_BYTES);
            self.refilled_at_ns = now_ns;
        }
    }
}

/// Appends guest bytes to the domain's console; returns how many it took: all of them,
/// unless a complete line found no room in the console buffer (the caller offers the
/// rest again later).
pub fn write(domain: &Domain, bytes: &[u8]) -> usize {
    let mut line = domain.console.lock();
    let mut taken = bytes.len();
    for (i, &byte) in bytes.iter().enumerate() {
        // A line that waits for room goes first (whichever write of the domain comes next:
        // the stopped one, continued, or another made meanwhile).
        let ends = line.waiting || byte == b'\n' || line.buffer.is_full();
        if ends && !emit(domain, &mut line, false) {
            line.waiting = true;
            WAITS.fetch_add(1, Ordering::Relaxed);
            taken = i;
            break;
        }
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

/// Prints whatever partial line is left (at shutdown), beyond the domain's share if need
/// be (but not beyond the guests' part of the buffer: then it is dropped and counted).
pub fn flush_partial(domain: &Domain) {
    let mut line = domain.console.lock();
    if !line.buffer.is_empty() {
        emit(domain, &mut line, true);
    }
    line.waiting = false;
}

/// Sends the domain's line to the console buffer (or drops it, over the rate limit);
/// false when it has to wait for room (not `force`d), and then it stays.
fn emit(domain: &Domain, line: &mut ConsoleLine, force: bool) -> bool {
    line.refill(time::since_boot_ns());
    let cost = line.buffer.len() as u64 + LINE_COST;
    if line.tokens < cost && !domain.privileged {
        line.dropped_since_report += 1;
        domain.counters.console_dropped_lines.fetch_add(1, Ordering::Relaxed);
        RATE_LIMITED.fetch_add(1, Ordering::Relaxed);
        line.buffer.clear();
        return true;
    }
    let id = domain.id.0;
    let share = match (force, domain.privileged) {
        (true, _) => usize::MAX,
        (false, true) => DOM0_SHARE,
        (false, false) => DOMAIN_SHARE,
    };
    if line.dropped_since_report > 0 {
        let dropped = line.dropped_since_report;
        if !logger::guest_line(id, share, format_args!("(d{id}) [{dropped} lines suppressed by the console rate limit]")) && !force {
            return false;
        }
        line.dropped_since_report = 0;
    }
    let text = core::str::from_utf8(&line.buffer).unwrap_or("<invalid>");
    if !logger::guest_line(id, share, format_args!("(d{id}) {text}")) {
        if !force {
            return false;
        }
        domain.counters.console_dropped_lines.fetch_add(1, Ordering::Relaxed);
        NO_ROOM.fetch_add(1, Ordering::Relaxed);
    }
    line.tokens = line.tokens.saturating_sub(cost);
    line.buffer.clear();
    true
}

/// Prints the console's figures as summary lines: `console.waits` (guest writes that
/// stopped to wait for room in the console buffer), `console.guest_lines_rate_limited`,
/// `console.guest_lines_dropped` (a domain's last line at shutdown, for want of room),
/// `console.hypervisor_lines_dropped` and `console.buffer_high_water_bytes`.
pub fn report() {
    let (dropped, high_water) = logger::figures();
    info!("summary: console.waits={}", WAITS.load(Ordering::Relaxed));
    info!("summary: console.guest_lines_rate_limited={}", RATE_LIMITED.load(Ordering::Relaxed));
    info!("summary: console.guest_lines_dropped={}", NO_ROOM.load(Ordering::Relaxed));
    info!("summary: console.hypervisor_lines_dropped={dropped}");
    info!("summary: console.buffer_high_water_bytes={high_water}");
}
