//! Computes every figure of the stress report from a collected [`Run`]: memory (free
//! memory by phase, hypervisor bytes and guest frames per domain, window usage, the
//! largest N that fits), latency (timer lateness of warped and unwarped domains and
//! ping-pong round trips), fairness (each hog's CPU share against its weight) and
//! creation times, plus the [`Problem`]s that make a run fail whatever the targets.
//!
//! Called by the crate's `analyse`; `targets` judges the figures and `table`, `json` and
//! `svg` present them. Pure arithmetic: it never reads files or prints, and it never
//! panics on missing data (a figure it cannot compute is `None`).

use std::collections::BTreeMap;
use std::fmt;

use crate::collect::{DomainLog, Run};
use crate::hist::{Histogram, Percentile};
use crate::noise::Stalls;
use crate::parse::{Config, Dom, DomId, MemPhase, Outcome, Role, Warning};
use crate::qemu::QemuOutcome;
use crate::vcpu::{HostTimes, Placement};

/// The size of a page, and of the shared-info page every domain costs the hypervisor.
pub const PAGE_BYTES: u64 = 4096;
/// Creations whose median is compared at the start and at the end of the run.
pub const MEDIAN_WINDOW: usize = 5;
/// The creation the slowdown target looks at: the 100th (index 99).
pub const SLOWDOWN_AT: usize = 100;

/// Something that fails the run whatever the targets say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    NoConfig,
    NotDone,
    Failed { reason: String },
    GuestError { domid: DomId, what: String },
    CreatedCount { expected: u32, created: usize },
    MissingResult { domid: DomId },
    MissingBalloon { domid: DomId },
    MissingDomainInfo { domid: DomId },
    HypervisorFail,
    UnexpectedEndings(u64),
    NoWarpedPushes { latency: u32, cpus: u32 },
    MissingMemPhase(MemPhase),
    Leak { before_kib: u64, after_kib: u64 },
    LeakedFrames(u64),
    Qemu(QemuOutcome),
    /// `IO=1`: a domain without its `io` record.
    MissingIo { domid: DomId },
    /// `IO=1`: requests not answered, answered with an error, or with another disk's data.
    Io { lost: u64, failed: u64, bad_data: u64 },
    /// `IO=1`: domain 0 answered a different number of requests than the domains sent
    /// (less the lost ones).
    IoCount { sent: u64, answered: u64 },
    /// `IO=1`: no `devices` record from domain 0, or a VBD not connected or cut off.
    Devices(String),
}

impl Problem {
    /// True for memory leaks (as opposed to failures of the run).
    pub fn is_leak(&self) -> bool {
        matches!(self, Self::Leak { .. } | Self::LeakedFrames(_))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoConfig => {
                f.write_str("no `stress: config` line: domain 0 never started the run")
            }
            Self::NotDone => f.write_str("no `stress: done ok` line: the run did not finish"),
            Self::Failed { reason } => write!(f, "domain 0 reported FAILED reason={reason}"),
            Self::GuestError { domid, what } => write!(f, "{} reported error what={what}", Dom(*domid)),
            Self::CreatedCount { expected, created } => {
                write!(f, "{created} domains created, config said {expected}")
            }
            Self::MissingResult { domid } => write!(f, "{} has no `result` line", Dom(*domid)),
            Self::MissingBalloon { domid } => write!(f, "{} has no `balloon` line", Dom(*domid)),
            Self::MissingDomainInfo { domid } => {
                write!(f, "{} has no `domain` line from domain 0", Dom(*domid))
            }
            Self::HypervisorFail => f.write_str("the hypervisor's summary says run=fail"),
            Self::UnexpectedEndings(n) => {
                write!(f, "{n} domains ended unexpectedly (hypervisor summary)")
            }
            Self::NoWarpedPushes { latency, cpus } => write!(
                f,
                "{latency} latency domains on {cpus} CPUs, yet no warped vCPU that woke behind \
                 another was pushed to a CPU running none (sched.cpuN.warped_pushes_out)"
            ),
            Self::MissingMemPhase(phase) => write!(f, "no `mem phase={}` line", phase.name()),
            Self::Leak {
                before_kib,
                after_kib,
            } => {
                write!(
                    f,
                    "memory leaked: {before_kib} KiB free before, {after_kib} KiB after destroying"
                )
            }
            Self::LeakedFrames(n) => write!(f, "the hypervisor counts {n} leaked frames"),
            Self::Qemu(outcome) => write!(f, "QEMU {outcome}"),
            Self::MissingIo { domid } => write!(f, "{} has no `io` line", Dom(*domid)),
            Self::Io { lost, failed, bad_data } => write!(
                f,
                "VBD reads: {lost} never answered, {failed} answered with an error, {bad_data} with data not of the domain's disk"
            ),
            Self::IoCount { sent, answered } => {
                write!(f, "the domains' answered VBD requests add up to {sent}, domain 0 answered {answered}")
            }
            Self::Devices(what) => write!(f, "devices: {what}"),
        }
    }
}

/// Mean, minimum and maximum of per-domain counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub count: usize,
    pub mean: f64,
    pub min: u64,
    pub max: u64,
}

impl Spread {
    /// None for no values.
    pub fn of(values: impl IntoIterator<Item = u64>) -> Option<Self> {
        let values: Vec<u64> = values.into_iter().collect();
        let sum: u128 = values.iter().map(|&v| u128::from(v)).sum();
        Some(Self {
            count: values.len(),
            mean: sum as f64 / values.len() as f64,
            min: *values.iter().min()?,
            max: *values.iter().max()?,
        })
    }
}

/// Free memory at each phase, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseFree {
    pub before: Option<u64>,
    pub created: Option<u64>,
    pub ballooned: Option<u64>,
    pub destroyed: Option<u64>,
}

/// One of the hypervisor's window regions (`summary: window.<name>_kib=used/size`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowRegion {
    pub name: String,
    pub used_kib: u64,
    pub size_kib: u64,
}

/// The hypervisor's window as its summary reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowUsage {
    pub used_kib: Option<u64>,
    pub free_kib: Option<u64>,
    pub regions: Vec<WindowRegion>,
    /// Domains whose hypervisor bytes the window's free space still holds.
    pub domains_that_fit: Option<u64>,
}

/// The memory section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryReport {
    pub free_kib: PhaseFree,
    /// Free before minus free after destroying (0: no leak).
    pub leaked_kib: Option<i64>,
    /// Heap bytes still used after destroying, compared with before (informative).
    pub heap_growth_bytes: Option<i64>,
    /// `(heap(created) - heap(before)) / n + 4096`.
    pub hypervisor_bytes_per_domain: Option<u64>,
    /// The hypervisor's own figure (`summary: domains.hypervisor_bytes_per_domain`).
    pub hypervisor_reported_bytes_per_domain: Option<u64>,
    /// `tot_pages` of the `domain` lines (at the end of the run).
    pub guest_pages: Option<Spread>,
    /// `tot_pages` of the `balloon` lines (right after ballooning).
    pub ballooned_pages: Option<Spread>,
    /// The smallest ballooned domain in all: its guest KiB plus the hypervisor's KiB.
    pub minimal_domain_kib: Option<f64>,
    /// The smaller of [`largest_n`] (free memory) and [`largest_n_heap`] (the heap).
    pub largest_n: Option<u64>,
    /// How many domains the heap holds ([`largest_n_heap`]).
    pub largest_n_heap: Option<u64>,
    pub window: WindowUsage,
}

/// Percentiles of one distribution, in ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub samples: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Stats {
    /// None for an empty histogram.
    pub fn of(hist: &Histogram) -> Option<Self> {
        Some(Self {
            samples: hist.samples(),
            p50_ns: hist.percentile(Percentile::P50)?,
            p99_ns: hist.percentile(Percentile::P99)?,
            p999_ns: hist.percentile(Percentile::P999)?,
            max_ns: hist.max()?,
        })
    }
}

/// Which distribution a series is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeriesKind {
    /// Timer lateness of `latency` (warped) domains.
    Warped,
    /// Timer lateness of `periodic` (unwarped) domains.
    Unwarped,
    /// Timer lateness of `idle` domains (100 ms timers, unwarped).
    Idle,
    /// `ping`'s event round trips.
    PingPong,
}

impl SeriesKind {
    pub const ALL: [SeriesKind; 4] = [Self::Warped, Self::Unwarped, Self::Idle, Self::PingPong];

    /// The role whose histograms make the series.
    pub fn role(self) -> Role {
        match self {
            Self::Warped => Role::Latency,
            Self::Unwarped => Role::Periodic,
            Self::Idle => Role::Idle,
            Self::PingPong => Role::Ping,
        }
    }

    /// A key for JSON.
    pub fn key(self) -> &'static str {
        match self {
            Self::Warped => "timer_warped",
            Self::Unwarped => "timer_unwarped",
            Self::Idle => "timer_idle",
            Self::PingPong => "ping_pong_rtt",
        }
    }

    /// A label for people.
    pub fn label(self) -> &'static str {
        match self {
            Self::Warped => "timer lateness, warped (latency)",
            Self::Unwarped => "timer lateness, unwarped (periodic)",
            Self::Idle => "timer lateness, idle (100 ms)",
            Self::PingPong => "event ping-pong round trip",
        }
    }
}

/// One distribution: the merged histogram of every domain of a role.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub kind: SeriesKind,
    pub domains: usize,
    pub hist: Histogram,
    pub stats: Option<Stats>,
}

/// The latency section.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyReport {
    /// The run's CPU count (the figures are for this many CPUs).
    pub cpus: Option<u32>,
    /// Warped, unwarped, idle, ping-pong, in that order.
    pub series: Vec<Series>,
    /// Unwarped p99 over warped p99.
    pub p99_ratio: Option<f64>,
    /// Pings whose answer never came.
    pub lost_answers: u64,
}

impl LatencyReport {
    /// The series of a kind.
    pub fn series(&self, kind: SeriesKind) -> Option<&Series> {
        self.series.iter().find(|s| s.kind == kind)
    }

    /// The stats of a kind, when it has samples.
    pub fn stats(&self, kind: SeriesKind) -> Option<Stats> {
        self.series(kind)?.stats
    }
}

/// A hog as domain 0 read it at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hog {
    pub domid: DomId,
    /// From the `create` line; hogs with no known CPU compete among themselves.
    pub cpu: Option<u32>,
    pub weight: u64,
    pub cpu_time_ns: u64,
}

/// A hog's share of its CPU against its weight's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HogShare {
    pub hog: Hog,
    /// Its CPU time over the CPU time of all hogs on its CPU.
    pub share: f64,
    /// Its weight over the weights of all hogs on its CPU.
    pub expected: f64,
    /// `|share - expected| / expected`.
    pub error: f64,
}

/// The fairness section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FairnessReport {
    pub hogs: Vec<HogShare>,
    pub max_error: Option<f64>,
}

/// One creation the report singles out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Milestone {
    /// 0-based index.
    pub index: usize,
    pub ns: u64,
}

/// The creation section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CreationReport {
    pub count: usize,
    /// The 1st, 10th, 100th and Nth creation, where they exist.
    pub milestones: Vec<Milestone>,
    /// Nth over 1st.
    pub ratio_last_first: Option<f64>,
    /// 100th over 1st.
    pub ratio_100th_first: Option<f64>,
    /// domain 0's `create total_ns`, else the sum of the creations.
    pub total_ns: Option<u64>,
    /// The first 100 creations, when there were 100.
    pub first_100_ns: Option<u64>,
    /// Median of creations 0-4.
    pub early_median_ns: Option<u64>,
    /// Median of creations 95-99 (or of the last five when fewer than 100).
    pub late_median_ns: Option<u64>,
    /// The first index of the late window.
    pub late_from: Option<usize>,
    /// Late median over early median.
    pub slowdown: Option<f64>,
}

/// What the run was.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunInfo {
    pub config: Option<Config>,
    pub cpus_online: Option<u64>,
    pub tsc_mhz: Option<u64>,
    pub created: usize,
    pub done: bool,
    pub failed: Option<String>,
    pub log_lines: usize,
    pub qemu: Option<QemuOutcome>,
    /// How QEMU's vCPU threads were scheduled on the host and what the host gave them (set
    /// by the binary when it ran QEMU; a log alone does not say).
    pub host: Option<HostInfo>,
    /// The hypervisor's per-CPU scheduler figures (`summary: sched.*`, prefix kept).
    pub sched: BTreeMap<String, String>,
}

/// What the host gave a run, as the binary measured it around QEMU: how the vCPU threads
/// were placed, how long they waited for a host CPU, the host's steal time and the stalls a
/// probe saw before QEMU started. These are the noise figures a missed target is read
/// against: a noisy host makes the guests' timers late whatever the hypervisor does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostInfo {
    pub placement: Option<Placement>,
    pub times: Option<HostTimes>,
    /// Steal time of the vCPUs' host CPUs over the run, in percent.
    pub steal_percent: Option<f64>,
    pub probe: Option<Stalls>,
}

impl HostInfo {
    /// The share of the vCPU threads' runnable time spent waiting for a host CPU, percent.
    pub fn vcpu_wait_percent(&self) -> Option<f64> {
        let t = self.times?;
        let total = t.ran_ns + t.waited_ns;
        (total > 0).then(|| t.waited_ns as f64 * 100.0 / total as f64)
    }

    /// The noise figures in a few words, for a missed target.
    pub fn noise(&self) -> String {
        let mut parts = Vec::new();
        if let Some(wait) = self.vcpu_wait_percent() {
            parts.push(format!("vCPU wait {wait:.1}%"));
        }
        if let Some(steal) = self.steal_percent {
            parts.push(format!("steal {steal:.2}%"));
        }
        if let Some(probe) = &self.probe {
            parts.push(format!(
                "probe {:.1}% lost, longest stall {:.1} ms",
                probe.lost_percent(),
                probe.longest_ns as f64 / 1e6
            ));
        }
        if parts.is_empty() {
            "no host figures".to_string()
        } else {
            parts.join(", ")
        }
    }
}

impl fmt::Display for HostInfo {
    /// The report's `host:` line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            self.placement.as_ref().map(ToString::to_string),
            self.times.map(|t| t.to_string()),
            self.steal_percent.map(|share| {
                format!("host steal during the run {share:.2}% (its CPUs' time taken by the hypervisor beneath)")
            }),
            self.probe.map(|p| p.to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        f.write_str(&parts.join("; "))
    }
}

/// The `IO=1` figures: every domain's VBD reads and what domain 0's devices cost.
#[derive(Clone, Debug, PartialEq)]
pub struct IoReport {
    /// Domains with an `io` record.
    pub domains: usize,
    pub requests: u64,
    pub failed: u64,
    pub bad_data: u64,
    pub lost: u64,
    /// Request-to-response latency, every domain's reads merged.
    pub stats: Option<Stats>,
    /// Domain 0's `devices` record.
    pub devices: Option<protocol::record::Devices>,
    /// Domain 0's `consoles` record: the console rings it relayed.
    pub consoles: Option<protocol::record::Consoles>,
    /// Hypervisor heap bytes per domain the devices' connection took: (`mem
    /// phase=connected` - `phase=ballooned`) / n (grant mappings, bound ports).
    pub hypervisor_bytes_per_domain: Option<i64>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub run: RunInfo,
    /// `IO=1` runs only.
    pub io: Option<IoReport>,
    pub memory: MemoryReport,
    pub latency: LatencyReport,
    pub fairness: FairnessReport,
    pub creation: CreationReport,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Warning>,
}

/// Computes the report.
pub fn build(run: &Run, qemu: Option<QemuOutcome>) -> Report {
    Report {
        run: run_info(run, qemu),
        io: io(run),
        memory: memory(run),
        latency: latency(run),
        fairness: fairness(run),
        creation: creation(run),
        problems: problems(run, qemu),
        warnings: run.warnings.clone(),
    }
}

fn run_info(run: &Run, qemu: Option<QemuOutcome>) -> RunInfo {
    RunInfo {
        config: run.config,
        cpus_online: run.summary_number("cpus.online"),
        tsc_mhz: run.summary_number("tsc.mhz"),
        created: run.creations.len(),
        done: run.done,
        failed: run.failed.clone(),
        log_lines: run.lines,
        qemu,
        host: None,
        sched: run
            .summary
            .iter()
            .filter(|(k, _)| k.starts_with("sched."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// The stress domains (domain 0 never is one).
fn stress_domains(run: &Run) -> impl Iterator<Item = (DomId, &DomainLog)> {
    run.domains
        .iter()
        .filter(|(&d, _)| d != DomId(0))
        .map(|(&d, log)| (d, log))
}

// ---- memory ----------------------------------------------------------------------------

fn memory(run: &Run) -> MemoryReport {
    let free = |phase| run.mem.get(&phase).map(|m| m.free_kib);
    let heap = |phase| run.mem.get(&phase).map(|m| m.heap_bytes);
    let hypervisor = hypervisor_bytes_per_domain(
        heap(MemPhase::Before),
        heap(MemPhase::Created),
        run.creations.len(),
    );
    let guest_pages =
        Spread::of(stress_domains(run).filter_map(|(_, d)| d.info.map(|i| i.tot_pages)));
    let heap_n = largest_n_heap(
        run.summary_number("memory.heap_for_domains_kib"),
        heap(MemPhase::Before),
        hypervisor,
    );
    let ballooned_pages =
        Spread::of(stress_domains(run).filter_map(|(_, d)| d.balloon.map(|b| b.tot_pages)));
    MemoryReport {
        free_kib: PhaseFree {
            before: free(MemPhase::Before),
            created: free(MemPhase::Created),
            ballooned: free(MemPhase::Ballooned),
            destroyed: free(MemPhase::Destroyed),
        },
        leaked_kib: difference(free(MemPhase::Before), free(MemPhase::Destroyed)),
        heap_growth_bytes: difference(heap(MemPhase::Destroyed), heap(MemPhase::Before)),
        hypervisor_bytes_per_domain: hypervisor,
        hypervisor_reported_bytes_per_domain: run
            .summary_number("domains.hypervisor_bytes_per_domain"),
        guest_pages,
        ballooned_pages,
        minimal_domain_kib: minimal_domain_kib(ballooned_pages.map(|s| s.min), hypervisor),
        largest_n: [
            largest_n(free(MemPhase::Before), guest_pages.map(|s| s.mean), hypervisor),
            heap_n,
        ]
        .into_iter()
        .flatten()
        .min(),
        largest_n_heap: heap_n,
        window: window(run, hypervisor),
    }
}

fn difference(a: Option<u64>, b: Option<u64>) -> Option<i64> {
    Some(i64::try_from(i128::from(a?) - i128::from(b?)).unwrap_or(i64::MAX))
}

/// `(heap(created) - heap(before)) / n + 4096`; a heap that shrank counts as 0 growth.
pub fn hypervisor_bytes_per_domain(
    before: Option<u64>,
    created: Option<u64>,
    n: usize,
) -> Option<u64> {
    let n = u64::try_from(n).ok().filter(|&n| n > 0)?;
    Some((created?.saturating_sub(before?) / n).saturating_add(PAGE_BYTES))
}

fn minimal_domain_kib(min_pages: Option<u64>, hypervisor_bytes: Option<u64>) -> Option<f64> {
    Some(
        min_pages?
            .saturating_mul(PAGE_BYTES)
            .saturating_add(hypervisor_bytes?) as f64
            / 1024.0,
    )
}

/// How many domains of the average size fit in the memory free before the run.
pub fn largest_n(
    free_kib: Option<u64>,
    mean_pages: Option<f64>,
    hypervisor_bytes: Option<u64>,
) -> Option<u64> {
    let per_domain = mean_pages? * PAGE_BYTES as f64 + hypervisor_bytes? as f64;
    let free_bytes = free_kib? as f64 * 1024.0;
    (per_domain > 0.0).then(|| (free_bytes / per_domain).floor() as u64)
}

/// How many domains the hypervisor heap holds: what domains may use of it
/// (`memory.heap_for_domains_kib`), less what was in use before, over each domain's heap
/// bytes (the hypervisor bytes per domain less its shared-info page), floor.
pub fn largest_n_heap(
    for_domains_kib: Option<u64>,
    heap_before: Option<u64>,
    hypervisor_bytes: Option<u64>,
) -> Option<u64> {
    let per_domain = hypervisor_bytes?
        .checked_sub(PAGE_BYTES)
        .filter(|&b| b > 0)?;
    Some(
        for_domains_kib?
            .saturating_mul(1024)
            .saturating_sub(heap_before?)
            / per_domain,
    )
}

fn window(run: &Run, hypervisor_bytes: Option<u64>) -> WindowUsage {
    let free_kib = run.summary_number("window.free_kib");
    let regions = run
        .summary
        .iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix("window.")?.strip_suffix("_kib")?;
            let (used, size) = value.split_once('/')?;
            Some(WindowRegion {
                name: name.to_string(),
                used_kib: used.parse().ok()?,
                size_kib: size.parse().ok()?,
            })
        })
        .collect();
    WindowUsage {
        used_kib: run.summary_number("window.used_kib"),
        free_kib,
        regions,
        domains_that_fit: hypervisor_bytes
            .filter(|&b| b > 0)
            .and_then(|b| Some(free_kib?.checked_mul(1024)? / b)),
    }
}

// ---- I/O ---------------------------------------------------------------------------------

/// Whether the run had VBDs: domain 0 said so, or a domain reported reads.
fn is_io_run(run: &Run) -> bool {
    run.devices.is_some() || run.mem.contains_key(&MemPhase::Connected) || run.domains.values().any(|d| d.io.is_some())
}

fn io(run: &Run) -> Option<IoReport> {
    if !is_io_run(run) {
        return None;
    }
    let mut hist = Histogram::new();
    let mut report = IoReport {
        domains: 0,
        requests: 0,
        failed: 0,
        bad_data: 0,
        lost: 0,
        stats: None,
        devices: run.devices,
        consoles: run.consoles,
        hypervisor_bytes_per_domain: None,
    };
    for (_, log) in stress_domains(run) {
        let Some(io) = log.io else { continue };
        report.domains += 1;
        report.requests += io.requests;
        report.failed += io.failed;
        report.bad_data += io.bad_data;
        report.lost += io.lost;
        hist.merge(&log.io_hist);
    }
    report.stats = Stats::of(&hist);
    let heap = |phase| run.mem.get(&phase).map(|m: &crate::parse::MemSample| m.heap_bytes as i64);
    let n = run.config.map(|c| i64::from(c.n)).filter(|&n| n > 0);
    report.hypervisor_bytes_per_domain = match (heap(MemPhase::Connected), heap(MemPhase::Ballooned), n) {
        (Some(c), Some(b), Some(n)) => Some((c - b) / n),
        _ => None,
    };
    Some(report)
}

fn io_problems(run: &Run, problems: &mut Vec<Problem>) {
    let Some(io) = io(run) else { return };
    for creation in run.creations.values() {
        if run.domains.get(&creation.domid).and_then(|d| d.io).is_none() {
            problems.push(Problem::MissingIo { domid: creation.domid });
        }
    }
    if io.lost + io.failed + io.bad_data > 0 {
        problems.push(Problem::Io { lost: io.lost, failed: io.failed, bad_data: io.bad_data });
    }
    match io.devices {
        None => problems.push(Problem::Devices("no `devices` line from domain 0".to_string())),
        Some(d) => {
            let sent = io.requests - io.lost;
            if d.requests + d.failed != sent {
                problems.push(Problem::IoCount { sent, answered: d.requests + d.failed });
            }
            if d.connected != d.served || d.cut > 0 {
                problems.push(Problem::Devices(format!(
                    "{} of {} VBDs connected, {} cut off",
                    d.connected, d.served, d.cut
                )));
            }
            // Domain 0 relays every served domain's console (logs of older runs have no
            // `consoles` record).
            if let Some(c) = io.consoles {
                if c.relayed != d.served || c.dropped > 0 {
                    problems.push(Problem::Devices(format!(
                        "domain 0 relayed {} of {} consoles and dropped {} lines over its rate limit",
                        c.relayed, d.served, c.dropped
                    )));
                }
            }
        }
    }
}

// ---- latency ---------------------------------------------------------------------------

fn latency(run: &Run) -> LatencyReport {
    let series: Vec<Series> = SeriesKind::ALL
        .into_iter()
        .map(|kind| series(run, kind))
        .collect();
    let p99 = |kind: SeriesKind| {
        series
            .iter()
            .find(|s| s.kind == kind)
            .and_then(|s| s.stats)
            .map(|s| s.p99_ns)
    };
    LatencyReport {
        cpus: run.config.map(|c| c.cpus),
        p99_ratio: ratio(p99(SeriesKind::Unwarped), p99(SeriesKind::Warped)),
        lost_answers: lost_answers(run),
        series,
    }
}

/// The merged histogram of every domain in the series' role.
fn series(run: &Run, kind: SeriesKind) -> Series {
    let mut hist = Histogram::new();
    let mut domains = 0;
    for (_, log) in stress_domains(run).filter(|(_, d)| d.role() == Some(kind.role())) {
        hist.merge(&log.hist);
        domains += 1;
    }
    Series {
        kind,
        domains,
        stats: Stats::of(&hist),
        hist,
    }
}

fn lost_answers(run: &Run) -> u64 {
    stress_domains(run)
        .filter_map(|(_, d)| match d.result?.outcome {
            Outcome::Measured { lost, .. } => lost,
            _ => None,
        })
        .fold(0, u64::saturating_add)
}

/// `a / b`, none when either is missing or `b` is 0.
fn ratio(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    let b = b.filter(|&b| b > 0)?;
    Some(a? as f64 / b as f64)
}

// ---- fairness --------------------------------------------------------------------------

fn fairness(run: &Run) -> FairnessReport {
    let hogs: Vec<Hog> = stress_domains(run)
        .filter_map(|(domid, log)| {
            let info = log.info.filter(|i| i.role == Role::Hog)?;
            let cpu = log.creation.map(|c| c.cpu);
            Some(Hog {
                domid,
                cpu,
                weight: info.weight,
                // Over the window in which every hog ran, when domain 0 measured one.
                cpu_time_ns: info.window_cpu_ns.unwrap_or(info.cpu_time_ns),
            })
        })
        .collect();
    let hogs = shares(&hogs);
    let max_error = hogs.iter().map(|h| h.error).reduce(f64::max);
    FairnessReport { hogs, max_error }
}

/// Each hog's share of the CPU time of the hogs on its CPU, against its weight's share.
/// A CPU whose hogs got no time gives every hog share 0; a hog of weight 0 expects 0 and
/// any time it got is an infinite error.
pub fn shares(hogs: &[Hog]) -> Vec<HogShare> {
    let mut by_cpu: BTreeMap<Option<u32>, (u128, u128)> = BTreeMap::new();
    for hog in hogs {
        let (time, weight) = by_cpu.entry(hog.cpu).or_default();
        *time += u128::from(hog.cpu_time_ns);
        *weight += u128::from(hog.weight);
    }
    hogs.iter()
        .map(|&hog| {
            let (time, weight) = by_cpu[&hog.cpu];
            let share = fraction(hog.cpu_time_ns, time);
            let expected = fraction(hog.weight, weight);
            let error = if expected > 0.0 {
                (share - expected).abs() / expected
            } else if share > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            HogShare {
                hog,
                share,
                expected,
                error,
            }
        })
        .collect()
}

fn fraction(part: u64, whole: u128) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

// ---- creation --------------------------------------------------------------------------

fn creation(run: &Run) -> CreationReport {
    let times: Vec<u64> = run.creations.values().map(|c| c.ns).collect();
    let contiguous = run
        .creations
        .keys()
        .enumerate()
        .all(|(i, &index)| i as u64 == u64::from(index));
    let at = |index: usize| contiguous.then(|| times.get(index).copied()).flatten();
    let count = times.len();
    let milestones = milestone_indices(count)
        .into_iter()
        .filter_map(|index| {
            Some(Milestone {
                index,
                ns: at(index)?,
            })
        })
        .collect();
    let late_from = late_window(count);
    let window_median =
        |from: usize| median(times.get(from..from + MEDIAN_WINDOW)?).filter(|_| contiguous);
    let early_median_ns = window_median(0);
    let late_median_ns = late_from.and_then(window_median);
    CreationReport {
        count,
        milestones,
        ratio_last_first: ratio(count.checked_sub(1).and_then(at), at(0)),
        ratio_100th_first: ratio(at(SLOWDOWN_AT - 1), at(0)),
        total_ns: run
            .create_total_ns
            .or_else(|| (count > 0).then(|| times.iter().fold(0u64, |a, &b| a.saturating_add(b)))),
        first_100_ns: (contiguous && count >= SLOWDOWN_AT).then(|| {
            times[..SLOWDOWN_AT]
                .iter()
                .fold(0u64, |a, &b| a.saturating_add(b))
        }),
        early_median_ns,
        late_median_ns,
        late_from,
        slowdown: ratio(late_median_ns, early_median_ns),
    }
}

/// The 1st, 10th, 100th and Nth creation (0-based), those that exist, each once.
fn milestone_indices(count: usize) -> Vec<usize> {
    let mut indices: Vec<usize> = [0, 9, SLOWDOWN_AT - 1, count.saturating_sub(1)]
        .into_iter()
        .filter(|&i| i < count)
        .collect();
    indices.sort_unstable();
    indices.dedup();
    indices
}

/// Where the late median window starts: creations 95-99 once there are 100, else the
/// last five when they do not overlap the first five.
fn late_window(count: usize) -> Option<usize> {
    if count >= SLOWDOWN_AT {
        Some(SLOWDOWN_AT - MEDIAN_WINDOW)
    } else if count >= 2 * MEDIAN_WINDOW {
        Some(count - MEDIAN_WINDOW)
    } else {
        None
    }
}

/// The median (the upper one for an even count); none for no values.
fn median(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

// ---- problems --------------------------------------------------------------------------

fn problems(run: &Run, qemu: Option<QemuOutcome>) -> Vec<Problem> {
    let mut problems = Vec::new();
    run_problems(run, &mut problems);
    domain_problems(run, &mut problems);
    hypervisor_problems(run, &mut problems);
    leak_problems(run, &mut problems);
    io_problems(run, &mut problems);
    if let Some(outcome) = qemu.filter(|q| !q.passed()) {
        problems.push(Problem::Qemu(outcome));
    }
    problems
}

fn run_problems(run: &Run, problems: &mut Vec<Problem>) {
    match run.config {
        None => problems.push(Problem::NoConfig),
        Some(config) if config.n as usize != run.creations.len() => {
            problems.push(Problem::CreatedCount {
                expected: config.n,
                created: run.creations.len(),
            });
        }
        Some(_) => {}
    }
    if let Some(reason) = &run.failed {
        problems.push(Problem::Failed {
            reason: reason.clone(),
        });
    }
    if !run.done {
        problems.push(Problem::NotDone);
    }
    for error in &run.errors {
        problems.push(Problem::GuestError {
            domid: error.domid,
            what: error.what.clone(),
        });
    }
}

/// Every created domain must have reported its balloon step and result, and domain 0
/// must have read its counters.
fn domain_problems(run: &Run, problems: &mut Vec<Problem>) {
    for creation in run.creations.values() {
        let domid = creation.domid;
        let log = run.domains.get(&domid);
        if log.and_then(|d| d.balloon).is_none() {
            problems.push(Problem::MissingBalloon { domid });
        }
        if log.and_then(|d| d.result).is_none() {
            problems.push(Problem::MissingResult { domid });
        }
        if log.and_then(|d| d.info).is_none() {
            problems.push(Problem::MissingDomainInfo { domid });
        }
    }
}

fn hypervisor_problems(run: &Run, problems: &mut Vec<Problem>) {
    if run.summary.get("run").is_some_and(|v| v == "fail") {
        problems.push(Problem::HypervisorFail);
    }
    if let Some(n) = run
        .summary_number("domains.unexpected_endings")
        .filter(|&n| n > 0)
    {
        problems.push(Problem::UnexpectedEndings(n));
    }
    // More latency domains than CPUs: some CPU holds two, whose 1 ms wake-ups meet hundreds
    // of times a second, and the hypervisor moves the one left waiting (a test run of 3 s
    // with 4 on 2 CPUs counted 120-200 per CPU). None at all means the push is broken.
    // (Judged only where the hypervisor reported pushes: not for a log from before them.)
    if let Some(config) = run.config.filter(|c| c.cpus >= 2 && c.latency > c.cpus) {
        let pushes: Vec<u64> = (0..config.cpus)
            .filter_map(|cpu| run.summary_number(&format!("sched.cpu{cpu}.warped_pushes_out")))
            .collect();
        if !pushes.is_empty() && pushes.iter().all(|&p| p == 0) {
            problems.push(Problem::NoWarpedPushes {
                latency: config.latency,
                cpus: config.cpus,
            });
        }
    }
}

/// Free memory after destroying must equal free memory before; both must be known.
fn leak_problems(run: &Run, problems: &mut Vec<Problem>) {
    let before = run.mem.get(&MemPhase::Before).map(|m| m.free_kib);
    let after = run.mem.get(&MemPhase::Destroyed).map(|m| m.free_kib);
    for (phase, value) in [(MemPhase::Before, before), (MemPhase::Destroyed, after)] {
        if value.is_none() {
            problems.push(Problem::MissingMemPhase(phase));
        }
    }
    if let (Some(before_kib), Some(after_kib)) = (before, after) {
        if before_kib != after_kib {
            problems.push(Problem::Leak {
                before_kib,
                after_kib,
            });
        }
    }
    if let Some(n) = run
        .summary_number("memory.leaked_frames")
        .filter(|&n| n > 0)
    {
        problems.push(Problem::LeakedFrames(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hog(domid: u16, cpu: u32, weight: u64, cpu_time_ns: u64) -> Hog {
        Hog {
            domid: DomId(domid),
            cpu: Some(cpu),
            weight,
            cpu_time_ns,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn shares_compete_per_cpu() {
        let out = shares(&[hog(1, 0, 1, 1_000), hog(2, 0, 2, 3_000), hog(3, 1, 5, 10)]);
        assert!(close(out[0].share, 0.25) && close(out[0].expected, 1.0 / 3.0));
        assert!(close(out[0].error, 0.25), "{}", out[0].error);
        assert!(close(out[1].share, 0.75) && close(out[1].expected, 2.0 / 3.0));
        assert!(close(out[1].error, 0.125), "{}", out[1].error);
        // Alone on its CPU: gets everything, expects everything.
        assert!(close(out[2].share, 1.0) && close(out[2].error, 0.0));
    }

    #[test]
    fn shares_of_idle_and_weightless_hogs() {
        let idle = shares(&[hog(1, 0, 1, 0), hog(2, 0, 1, 0)]);
        assert!(close(idle[0].share, 0.0) && close(idle[0].error, 1.0));
        let weightless = shares(&[hog(1, 0, 0, 5), hog(2, 0, 1, 5)]);
        assert!(weightless[0].error.is_infinite());
        assert!(close(weightless[1].error, 0.5));
        assert!(shares(&[]).is_empty());
    }

    #[test]
    fn hypervisor_bytes_formula() {
        assert_eq!(
            hypervisor_bytes_per_domain(Some(1000), Some(31_000), 10),
            Some(3000 + 4096)
        );
        assert_eq!(
            hypervisor_bytes_per_domain(Some(1000), Some(500), 10),
            Some(4096)
        );
        assert_eq!(hypervisor_bytes_per_domain(Some(1000), Some(2000), 0), None);
        assert_eq!(hypervisor_bytes_per_domain(None, Some(2000), 1), None);
    }

    #[test]
    fn largest_n_floors() {
        // 1000 KiB / (1 page + 1024 bytes) = 1000 / 5 = 200.
        assert_eq!(largest_n(Some(1000), Some(1.0), Some(1024)), Some(200));
        assert_eq!(largest_n(Some(1001), Some(1.0), Some(1024)), Some(200));
        assert_eq!(largest_n(Some(1000), Some(0.0), Some(0)), None);
        assert_eq!(largest_n(None, Some(1.0), Some(1)), None);
    }

    #[test]
    fn largest_n_of_the_heap() {
        // (8 KiB - 2048 bytes in use) / (5120 - 4096 bytes of heap per domain) = 6.
        assert_eq!(largest_n_heap(Some(8), Some(2048), Some(5120)), Some(6));
        assert_eq!(largest_n_heap(Some(1), Some(4096), Some(5120)), Some(0));
        assert_eq!(largest_n_heap(Some(8), Some(0), Some(4096)), None, "no heap bytes per domain");
        assert_eq!(largest_n_heap(None, Some(0), Some(5120)), None);
    }

    #[test]
    fn milestones_are_unique_and_ordered() {
        assert_eq!(milestone_indices(0), Vec::<usize>::new());
        assert_eq!(milestone_indices(1), [0]);
        assert_eq!(milestone_indices(10), [0, 9]);
        assert_eq!(milestone_indices(20), [0, 9, 19]);
        assert_eq!(milestone_indices(100), [0, 9, 99]);
        assert_eq!(milestone_indices(250), [0, 9, 99, 249]);
    }

    #[test]
    fn late_window_and_median() {
        assert_eq!(late_window(9), None);
        assert_eq!(late_window(10), Some(5));
        assert_eq!(late_window(99), Some(94));
        assert_eq!(late_window(1000), Some(95));
        assert_eq!(median(&[5, 1, 4, 2, 3]), Some(3));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn spread_of_values() {
        let s = Spread::of([96, 128, 96, 100]).unwrap();
        assert_eq!((s.count, s.min, s.max), (4, 96, 128));
        assert!(close(s.mean, 105.0));
        assert!(Spread::of([]).is_none());
    }

    // ---- hostile numbers in the log ----

    use crate::{analyse, synthetic};

    /// The synthetic log of `n` domains with `key=` set to `value` on every line holding it.
    fn with_value(n: usize, key: &str, value: &str) -> String {
        let pattern = format!(" {key}=");
        synthetic::log(n)
            .into_iter()
            // Without domain 0's own total, the report sums the creations itself.
            .filter(|line| !line.contains(" total_ns="))
            .map(|line| match line.find(&pattern) {
                Some(at) => {
                    let start = at + pattern.len();
                    let end = line[start..].find(' ').map_or(line.len(), |e| start + e);
                    format!("{}{}{}", &line[..start], value, &line[end..])
                }
                None => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    const HUGE: &str = "18446744073709551615";

    #[test]
    fn huge_free_window_memory_gives_no_domain_count() {
        // Found by the property test (`proptests`): `free_kib * 1024` overflowed.
        let analysis = analyse(&with_value(14, "window.free_kib", HUGE), None, true);
        assert_eq!(analysis.report.memory.window.free_kib, Some(u64::MAX));
        assert_eq!(analysis.report.memory.window.domains_that_fit, None);
    }

    #[test]
    fn huge_creation_times_saturate_their_sum() {
        // Found by the property test (`proptests`): the sum of the creations overflowed.
        let analysis = analyse(&with_value(19, "ns", HUGE), None, true);
        assert_eq!(analysis.report.creation.total_ns, Some(u64::MAX));
    }

    #[test]
    fn huge_lost_answer_counts_saturate_their_sum() {
        // Found by the property test (`proptests`): the sum of the ping domains' losses overflowed.
        let analysis = analyse(&with_value(14, "lost", HUGE), None, true);
        assert_eq!(analysis.report.latency.lost_answers, u64::MAX);
    }

    #[test]
    fn huge_memory_figures_saturate() {
        // The same arithmetic on the heap figures the summary reports.
        assert_eq!(
            hypervisor_bytes_per_domain(Some(0), Some(u64::MAX), 1),
            Some(u64::MAX)
        );
        assert_eq!(
            largest_n_heap(Some(u64::MAX), Some(0), Some(4096 + 1)),
            Some(u64::MAX)
        );
    }
}
