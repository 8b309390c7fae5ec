//! Guest console output: `console_io` writes become lines on the serial console prefixed
//! with the domain id, rate-limited per domain so a chatty guest cannot starve the others.
//!
//! Each domain buffers one partial line; a line is printed when it ends (or fills the
//! buffer). The limiter is a token bucket refilled with time: lines over budget are dropped
//! and counted, and the count is reported when output resumes.

use arrayvec::ArrayVec;
use core::sync::atomic::Ordering;

use log::info;

use crate::domain::Domain;
use crate::time;

/// Longest line kept; longer ones are split.
const LINE_MAX: usize = 160;
/// Lines a domain may print in a burst.
const BURST_LINES: u64 = 200;
/// Lines per second a domain may print once its burst is spent.
const LINES_PER_SECOND: u64 = 100;

/// One domain's partial line and its rate-limit budget.
pub struct ConsoleLine {
    buffer: ArrayVec<u8, LINE_MAX>,
    tokens: u64,
    refilled_at_ns: u64,
    dropped_since_report: u64,
}

impl ConsoleLine {
    pub const fn new() -> Self {
        ConsoleLine { buffer: ArrayVec::new_const(), tokens: BURST_LINES, refilled_at_ns: 0, dropped_since_report: 0 }
    }

    fn refill(&mut self, now_ns: u64) {
        let earned = now_ns.saturating_sub(self.refilled_at_ns) * LINES_PER_SECOND / 1_000_000_000;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(BURST_LINES);
            self.refilled_at_ns = now_ns;
        }
    }
}

/// Appends guest bytes to the domain's console, printing complete lines; returns how many
/// bytes it took (all of them).
pub fn write(domain: &Domain, bytes: &[u8]) -> usize {
    domain.counters.console_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let mut line = domain.console.lock();
    for &byte in bytes {
        if byte == b'\n' || line.buffer.is_full() {
            flush(domain, &mut line);
        }
        if byte != b'\n' && byte != b'\r' {
            line.buffer.push(if byte.is_ascii_graphic() || byte == b' ' || byte == b'\t' { byte } else { b'.' });
        }
    }
    bytes.len()
}

/// Prints whatever partial line is left (at shutdown).
pub fn flush_partial(domain: &Domain) {
    let mut line = domain.console.lock();
    if !line.buffer.is_empty() {
        flush(domain, &mut line);
    }
}

fn flush(domain: &Domain, line: &mut ConsoleLine) {
    line.refill(time::since_boot_ns());
    // Domain 0 is trusted (it reports for every other domain) and never limited.
    if line.tokens == 0 && !domain.privileged {
        line.dropped_since_report += 1;
        domain.counters.console_dropped_lines.fetch_add(1, Ordering::Relaxed);
        line.buffer.clear();
        return;
    }
    line.tokens = line.tokens.saturating_sub(1);
    if line.dropped_since_report > 0 {
        info!("(d{}) [{} lines suppressed by the console rate limit]", domain.id.0, line.dropped_since_report);
        line.dropped_since_report = 0;
    }
    let text = core::str::from_utf8(&line.buffer).unwrap_or("<invalid>");
    info!("(d{}) {text}", domain.id.0);
    line.buffer.clear();
}
