//! What each CPU's scheduler did and how late it was, for the end-of-run report: timer
//! interrupts against the deadlines they served, and the time from a vCPU's wake-up to its
//! switch-in. Written by the CPU concerned with relaxed atomics, read once at the end.

use core::sync::atomic::{AtomicU64, Ordering};

use log::info;

/// Upper bounds of the latency buckets, ns; a last bucket takes the rest.
const BOUNDS_NS: [u64; 16] = [
    10_000, 20_000, 30_000, 50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 500_000, 1_000_000, 2_000_000,
    5_000_000, 10_000_000, 15_000_000, 20_000_000,
];

/// A latency distribution: counts per bucket, the sum and the maximum.
#[derive(Default)]
pub struct Latency {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Latency {
    pub fn record(&self, ns: u64) {
        let bucket = BOUNDS_NS.iter().position(|&bound| ns < bound).unwrap_or(BOUNDS_NS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The bucket bound under which `per_mille`/1000 of the samples lie (`None`: beyond
    /// the last bound).
    fn quantile_bound_ns(&self, per_mille: u64) -> Option<u64> {
        let wanted = (self.count() * per_mille).div_ceil(1000);
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= wanted {
                return BOUNDS_NS.get(i).copied();
            }
        }
        None
    }

    fn print(&self, cpu: usize, name: &str) {
        let count = self.count();
        if count == 0 {
            return;
        }
        let bound = |f| self.quantile_bound_ns(f).map_or_else(|| alloc::string::String::from("more"), |ns| alloc::format!("{}", ns / 1000));
        info!(
            "summary: sched.cpu{cpu}.{name}_us={count}/{}/{}/{}/{}",
            self.sum_ns.load(Ordering::Relaxed) / count / 1000,
            bound(500),
            bound(990),
            self.max_ns.load(Ordering::Relaxed) / 1000
        );
    }
}

/// One CPU's scheduling statistics.
#[derive(Default)]
pub struct Stats {
    /// vCPUs switched in.
    pub switches: AtomicU64,
    /// vCPUs given to another CPU that asked for work.
    pub migrations: AtomicU64,
    /// Warped vCPUs that woke here behind another and were pushed to a CPU running none.
    pub pushes: AtomicU64,
    /// Each local timer interrupt, from the time it was armed for to its arrival: what the
    /// machine beneath adds (the hypervisor takes it at once but within a stay with
    /// interrupts off, which `in_hypervisor` bounds; under emulation, how late the
    /// emulator's timer delivers it).
    pub timer_irq_late: Latency,
    /// Timer interrupt handling after the deadline of each vCPU timer it fired.
    pub timer_late: Latency,
    /// The same for the timers of latency-sensitive (warping) domains, programmed early.
    pub timer_late_warped: Latency,
    /// From a vCPU's wake-up to its switch-in here.
    pub wake_to_run: Latency,
    /// From a latency-sensitive timer's deadline to its blocked vCPU's switch-in: what the
    /// hypervisor adds to a warping domain's wake-up before the guest runs.
    pub warped_to_run: Latency,
    /// Each stay in the hypervisor, from a trap's entry to its return: interrupts are off
    /// throughout, so this bounds how late any interrupt on this CPU can be taken.
    pub in_hypervisor: Latency,
    /// The stays that began while an unprivileged domain ran here (domain 0's creations and
    /// memory compactions are long by design; these are what any guest can cause).
    pub in_hypervisor_domu: Latency,
    /// Time spent waiting out the deadlines of held timers, whose vCPUs were switched in
    /// ahead of them (see `bvt::HeldTimer`): hypervisor time spent to hide a warping
    /// domain's wake-up path, charged to no domain.
    pub held_wait_ns: AtomicU64,
    /// What caused the longest stay so far ([`Stay::raw`]).
    longest_stay: AtomicU64,
    /// What caused the longest stay of an unprivileged domain so far ([`Stay::raw`]).
    longest_domu_stay: AtomicU64,
}

/// What brought a CPU into the hypervisor: a `syscall` (by rax: the hypercall number when
/// it came from a guest kernel) or an exception or interrupt vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stay {
    Syscall(u64),
    Vector(u64),
}

impl Stay {
    const SYSCALL: u64 = 1 << 63;

    fn raw(self) -> u64 {
        match self {
            Self::Syscall(rax) => Self::SYSCALL | rax,
            Self::Vector(vector) => vector,
        }
    }

    fn from_raw(raw: u64) -> Self {
        if raw & Self::SYSCALL != 0 { Self::Syscall(raw & !Self::SYSCALL) } else { Self::Vector(raw) }
    }
}

impl core::fmt::Display for Stay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Syscall(rax) => write!(f, "syscall{rax}"),
            Self::Vector(vector) => write!(f, "vector{vector:#x}"),
        }
    }
}

impl Stats {
    /// Records one stay in the hypervisor of `ns`, caused by `cause`; `domu`: it began while
    /// an unprivileged domain ran.
    pub fn record_stay(&self, ns: u64, cause: Stay, domu: bool) {
        if ns > self.in_hypervisor.max_ns.load(Ordering::Relaxed) {
            self.longest_stay.store(cause.raw(), Ordering::Relaxed);
        }
        self.in_hypervisor.record(ns);
        if domu {
            if ns > self.in_hypervisor_domu.max_ns.load(Ordering::Relaxed) {
                self.longest_domu_stay.store(cause.raw(), Ordering::Relaxed);
            }
            self.in_hypervisor_domu.record(ns);
        }
    }
}

/// Prints every CPU's statistics as summary lines: `sched.cpuN.switches`,
/// `sched.cpuN.migrations_out`, `sched.cpuN.warped_pushes_out`, `sched.cpuN.held_wait_us`, per latency `sched.cpuN.<name>_us=count/avg/p50/p99/max`
/// where p50 and p99 are bucket upper bounds (`more`: beyond 20 ms), and
/// `sched.cpuN.longest_stay`: what caused the longest stay in the hypervisor (and
/// `longest_domu_stay` for `in_hypervisor_domu`, the stays begun while an unprivileged domain
/// ran); then, over all CPUs, `sched.max_stay_us` (the longest stay with interrupts off, in
/// the run) and `sched.max_stay_cause`. `all`: each CPU's, in order.
pub fn report<'a>(all: impl Iterator<Item = &'a Stats>) {
    let mut longest: Option<(u64, Stay)> = None;
    for (cpu, stats) in all.enumerate() {
        let max_ns = stats.in_hypervisor.max_ns.load(Ordering::Relaxed);
        if stats.in_hypervisor.count() > 0 && longest.is_none_or(|(ns, _)| max_ns > ns) {
            longest = Some((max_ns, Stay::from_raw(stats.longest_stay.load(Ordering::Relaxed))));
        }
        info!("summary: sched.cpu{cpu}.switches={}", stats.switches.load(Ordering::Relaxed));
        info!("summary: sched.cpu{cpu}.migrations_out={}", stats.migrations.load(Ordering::Relaxed));
        info!("summary: sched.cpu{cpu}.warped_pushes_out={}", stats.pushes.load(Ordering::Relaxed));
        info!("summary: sched.cpu{cpu}.held_wait_us={}", stats.held_wait_ns.load(Ordering::Relaxed) / 1000);
        stats.timer_irq_late.print(cpu, "timer_irq_late");
        stats.timer_late.print(cpu, "timer_late");
        stats.timer_late_warped.print(cpu, "timer_late_warped");
        stats.wake_to_run.print(cpu, "wake_to_run");
        stats.warped_to_run.print(cpu, "warped_to_run");
        stats.in_hypervisor.print(cpu, "in_hypervisor");
        if stats.in_hypervisor.count() > 0 {
            info!("summary: sched.cpu{cpu}.longest_stay={}", Stay::from_raw(stats.longest_stay.load(Ordering::Relaxed)));
        }
        stats.in_hypervisor_domu.print(cpu, "in_hypervisor_domu");
        if stats.in_hypervisor_domu.count() > 0 {
            info!("summary: sched.cpu{cpu}.longest_domu_stay={}", Stay::from_raw(stats.longest_domu_stay.load(Ordering::Relaxed)));
        }
    }
    if let Some((ns, cause)) = longest {
        info!("summary: sched.max_stay_us={}", ns / 1000);
        info!("summary: sched.max_stay_cause={cause}");
    }
}
