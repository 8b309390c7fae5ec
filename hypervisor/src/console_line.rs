//! One domain's console state: a partial line per source (`console_io` and its console
//! ring), the rate-limit budget they share (a token bucket) and its ring, if it has one.
//! Pure data and arithmetic, carried by the hypervisor's `Domain` and driven by
//! `pv::console` (which prints the lines and reads the ring); here, in the library, so that
//! the domain record needs nothing of `pv` and the bucket is tested on the host.

use arrayvec::ArrayVec;

use abi::ids::EvtchnPort;
use mm::addr::Mfn;

/// Longest line kept; longer ones are split (the console grammar's, which domain 0's relay
/// sizes its lines by).
pub const LINE_MAX: usize = protocol::console::LINE_MAX;
/// Bytes a domain may print in a burst (each line counting [`LINE_COST`] more).
pub const BURST_BYTES: u64 = 32 << 10;
/// Bytes per second a domain may print once its burst is spent.
pub const BYTES_PER_SECOND: u64 = 8 << 10;
/// What a line costs beyond its bytes (its tag, and the work of a line), so that a flood
/// of empty lines is limited too.
pub const LINE_COST: u64 = 32;

/// Where a line comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ConsoleIo,
    Ring,
}

/// One source's partial line.
pub struct Line {
    pub buffer: ArrayVec<u8, LINE_MAX>,
    /// The line is complete and waits for room: nothing more goes into it.
    pub waiting: bool,
}

impl Line {
    const fn new() -> Self {
        Line { buffer: ArrayVec::new_const(), waiting: false }
    }
}

/// A domain's console ring: its frame and the port of its channel.
#[derive(Clone, Copy)]
pub struct Ring {
    pub mfn: Mfn,
    pub port: EvtchnPort,
    /// In the console's list of rings to drain again (`pv::console`).
    pub retry: bool,
    /// Bogus indices were reported once.
    pub bogus_reported: bool,
}

/// One domain's console: a partial line per source, the rate-limit budget they share, and
/// the ring, if it has one.
pub struct ConsoleLine {
    pub io: Line,
    pub ring_line: Line,
    pub tokens: u64,
    pub refilled_at_ns: u64,
    pub dropped_since_report: u64,
    pub ring: Option<Ring>,
}

impl ConsoleLine {
    pub const fn new() -> Self {
        ConsoleLine {
            io: Line::new(),
            ring_line: Line::new(),
            tokens: BURST_BYTES,
            refilled_at_ns: 0,
            dropped_since_report: 0,
            ring: None,
        }
    }

    /// Earns the tokens of the time since the last refill, up to the burst.
    pub fn refill(&mut self, now_ns: u64) {
        let earned = now_ns.saturating_sub(self.refilled_at_ns) * BYTES_PER_SECOND / 1_000_000_000;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(BURST_BYTES);
            self.refilled_at_ns = now_ns;
        }
    }

    /// The partial line of `source`.
    pub fn line(&mut self, source: Source) -> &mut Line {
        match source {
            Source::ConsoleIo => &mut self.io,
            Source::Ring => &mut self.ring_line,
        }
    }
}

impl Default for ConsoleLine {
    fn default() -> Self {
        ConsoleLine::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_at_its_rate_up_to_the_burst() {
        let mut c = ConsoleLine::new();
        assert_eq!(c.tokens, BURST_BYTES);
        c.tokens = 0;
        c.refill(500_000_000);
        assert_eq!(c.tokens, BYTES_PER_SECOND / 2, "half a second earns half the rate");
        c.refill(500_000_100);
        assert_eq!(c.tokens, BYTES_PER_SECOND / 2, "100 ns earn nothing, and are not lost");
        c.refill(100_000_000_000);
        assert_eq!(c.tokens, BURST_BYTES, "never more than the burst");
    }

    #[test]
    fn each_source_has_its_own_line() {
        let mut c = ConsoleLine::new();
        c.line(Source::ConsoleIo).buffer.push(b'a');
        assert_eq!(c.line(Source::Ring).buffer.len(), 0);
        assert_eq!(c.line(Source::ConsoleIo).buffer.as_slice(), b"a");
    }
}
