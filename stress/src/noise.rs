//! How much the host itself takes from a thread that wants to run, so that a report's
//! latency tail can be read against the machine it was measured on.
//!
//! A stress run's warped timer lateness is tens of microseconds at its median, and its p99
//! counts the worst 1 % of wake-ups: a host (often itself a virtual machine) that stops a
//! busy thread for milliseconds now and then puts its stalls straight into that tail. Two
//! measures, both cheap:
//! - a probe before QEMU starts: one thread per host CPU spins reading the monotonic clock
//!   for [`PROBE_LENGTH`]; every gap between two reads over [`STALL_NS`] is time the host
//!   gave elsewhere (interrupts, other tasks, the hypervisor beneath);
//! - the host's steal time (`/proc/stat`, a virtual machine's time taken by the hypervisor
//!   beneath it) over the run, on the host CPUs that ran the vCPU threads.

use std::fmt;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

/// How long the probe spins on each host CPU.
pub const PROBE_LENGTH: Duration = Duration::from_secs(1);

/// A gap between two clock reads longer than this is a stall (a read takes well under 1 µs).
pub const STALL_NS: u64 = 20_000;

/// The stalls one or more probe threads saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stalls {
    /// Threads, and the time they spun in all.
    pub threads: u32,
    pub spun_ns: u64,
    /// Stalls over [`STALL_NS`], their total length, and the longest.
    pub count: u64,
    pub lost_ns: u64,
    pub longest_ns: u64,
    /// Stalls over 100 µs and over 1 ms.
    pub over_100us: u64,
    pub over_1ms: u64,
}

impl Stalls {
    /// Takes in one gap between two clock reads.
    pub fn record(&mut self, gap_ns: u64) {
        if gap_ns <= STALL_NS {
            return;
        }
        self.count += 1;
        self.lost_ns += gap_ns;
        self.longest_ns = self.longest_ns.max(gap_ns);
        self.over_100us += u64::from(gap_ns > 100_000);
        self.over_1ms += u64::from(gap_ns > 1_000_000);
    }

    /// Adds another thread's stalls.
    pub fn merge(&mut self, other: &Stalls) {
        self.threads += other.threads;
        self.spun_ns += other.spun_ns;
        self.count += other.count;
        self.lost_ns += other.lost_ns;
        self.longest_ns = self.longest_ns.max(other.longest_ns);
        self.over_100us += other.over_100us;
        self.over_1ms += other.over_1ms;
    }

    /// The share of the spinning time lost to stalls, in percent.
    pub fn lost_percent(&self) -> f64 {
        if self.spun_ns == 0 { 0.0 } else { self.lost_ns as f64 * 100.0 / self.spun_ns as f64 }
    }
}

impl fmt::Display for Stalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.spun_ns as f64 / 1e9 / f64::from(self.threads.max(1));
        write!(
            f,
            "host probe before the run ({} threads, {seconds:.1} s each): {:.2}% lost in {} stalls over {} µs, \
             {} over 100 µs, {} over 1 ms, longest {:.2} ms",
            self.threads,
            self.lost_percent(),
            self.count,
            STALL_NS / 1000,
            self.over_100us,
            self.over_1ms,
            self.longest_ns as f64 / 1e6
        )
    }
}

/// Spins `threads` threads for `length` each (the host scheduler spreads them over its
/// CPUs) and returns the stalls they saw together.
pub fn probe(threads: usize, length: Duration) -> Stalls {
    let spinners: Vec<_> = (0..threads.max(1)).map(|_| thread::spawn(move || spin(length))).collect();
    let mut all = Stalls::default();
    for spinner in spinners {
        if let Ok(stalls) = spinner.join() {
            all.merge(&stalls);
        }
    }
    all
}

/// One probe thread: reads the clock for `length`, recording every gap.
fn spin(length: Duration) -> Stalls {
    let start = Instant::now();
    let mut stalls = Stalls { threads: 1, ..Stalls::default() };
    let mut last = start;
    while last.duration_since(start) < length {
        let now = Instant::now();
        stalls.record(u64::try_from(now.duration_since(last).as_nanos()).unwrap_or(u64::MAX));
        last = now;
    }
    stalls.spun_ns = u64::try_from(last.duration_since(start).as_nanos()).unwrap_or(u64::MAX);
    stalls
}

/// Steal time (clock ticks) of each host CPU, by CPU number, from `/proc/stat` text: the
/// eighth value of its `cpuN` line (`None` when the kernel reports none).
pub fn parse_steal(stat: &str) -> Vec<(u32, u64)> {
    stat.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let cpu = words.next()?.strip_prefix("cpu")?.parse().ok()?;
            let steal = words.nth(7)?.parse().ok()?;
            Some((cpu, steal))
        })
        .collect()
}

/// Each host CPU's steal time now, in clock ticks (empty where `/proc/stat` is missing).
pub fn steal_now() -> Vec<(u32, u64)> {
    fs::read_to_string("/proc/stat").map(|s| parse_steal(&s)).unwrap_or_default()
}

/// The steal of the CPUs `cpus` between `before` and `after`, as a share of `elapsed` on
/// each, in percent (`None`: no steal figures for them). Clock ticks are 1/100 s, the value
/// Linux gives `USER_HZ` on every architecture it runs on.
pub fn steal_percent(before: &[(u32, u64)], after: &[(u32, u64)], cpus: &[u32], elapsed: Duration) -> Option<f64> {
    const TICK_NS: u64 = 10_000_000;
    if cpus.is_empty() || elapsed.is_zero() {
        return None;
    }
    let ticks = |stat: &[(u32, u64)], cpu: u32| stat.iter().find(|(c, _)| *c == cpu).map(|&(_, t)| t);
    let stolen: u64 = cpus.iter().map(|&cpu| Some(ticks(after, cpu)?.saturating_sub(ticks(before, cpu)?))).sum::<Option<u64>>()?;
    Some((stolen * TICK_NS) as f64 * 100.0 / (elapsed.as_nanos() as f64 * cpus.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_gaps_are_not_stalls_and_long_ones_are_binned() {
        let mut stalls = Stalls::default();
        for gap in [100, STALL_NS, STALL_NS + 1, 150_000, 2_000_000] {
            stalls.record(gap);
        }
        assert_eq!(stalls.count, 3);
        assert_eq!(stalls.lost_ns, STALL_NS + 1 + 150_000 + 2_000_000);
        assert_eq!((stalls.over_100us, stalls.over_1ms, stalls.longest_ns), (2, 1, 2_000_000));
    }

    #[test]
    fn threads_merge_into_one_share() {
        let mut a = Stalls { threads: 1, spun_ns: 1_000_000_000, ..Stalls::default() };
        a.record(30_000_000);
        let mut b = Stalls { threads: 1, spun_ns: 1_000_000_000, ..Stalls::default() };
        b.record(10_000_000);
        a.merge(&b);
        assert_eq!((a.threads, a.count, a.longest_ns), (2, 2, 30_000_000));
        assert!((a.lost_percent() - 2.0).abs() < 1e-9, "{}", a.lost_percent());
        assert!(a.to_string().contains("2.00% lost in 2 stalls"), "{a}");
    }

    #[test]
    fn a_probe_spins_for_its_length() {
        let stalls = probe(1, Duration::from_millis(20));
        assert_eq!(stalls.threads, 1);
        assert!(stalls.spun_ns >= 20_000_000, "{stalls:?}");
        assert!(stalls.lost_ns <= stalls.spun_ns, "{stalls:?}");
    }

    const STAT: &str = "cpu  747097 14085 522346 3181722 24589 0 1516 30473 568 508\n\
                        cpu0 373000 7000 261000 1590000 12000 0 700 15000 300 200\n\
                        cpu1 374097 7085 261346 1591722 12589 0 816 15473 268 308\n\
                        intr 12345\n";

    #[test]
    fn steal_is_read_per_cpu() {
        assert_eq!(parse_steal(STAT), [(0, 15000), (1, 15473)]);
        assert_eq!(parse_steal("cpu0 1 2 3\n"), []);
    }

    #[test]
    fn steal_becomes_a_share_of_the_time_spanned() {
        let before = [(0, 100), (1, 200)];
        let after = [(0, 150), (1, 230)];
        // 50 + 30 ticks = 0.8 s stolen of 2 CPUs x 10 s.
        let share = steal_percent(&before, &after, &[0, 1], Duration::from_secs(10)).unwrap();
        assert!((share - 4.0).abs() < 1e-9, "{share}");
        assert_eq!(steal_percent(&before, &after, &[0], Duration::from_secs(10)), Some(5.0));
        assert_eq!(steal_percent(&before, &after, &[2], Duration::from_secs(10)), None);
        assert_eq!(steal_percent(&before, &after, &[], Duration::from_secs(10)), None);
        assert_eq!(steal_percent(&before, &after, &[0], Duration::ZERO), None);
    }
}
