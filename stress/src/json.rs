//! `report.json`: the report as data. [`ReportFile`] and the structs under it are the
//! file's schema (serde, [`SCHEMA_VERSION`]); every figure is a number (or `null` when the
//! log did not give it), never a string to be parsed again. [`ReportFile::new`] maps an
//! [`Analysis`] onto it, [`ReportFile::read`] reads a file back (for `summarize` and
//! `capacity`).
//!
//! Called by the crate's `write_outputs` and by the binary's `summarize` and `capacity`.
//! It never computes a figure the report has not: it only changes units where the file
//! says so (`_us`, `_s`, `_percent`) and splits the hypervisor's per-CPU summary values
//! (`count/avg/p50/p99/max`) into numbers. Non-finite numbers become `null`.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::report::{
    CreationReport, FairnessReport, HostInfo, LatencyReport, MemoryReport, RunInfo, Series,
    SeriesKind, Spread,
};
use crate::Analysis;

/// The layout of `report.json`. 1 was the hand-written file of figures as strings; 2 is
/// this one.
pub const SCHEMA_VERSION: u32 = 2;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportFile {
    pub schema_version: u32,
    /// `pass` or `fail`.
    pub verdict: String,
    /// True when a missed performance target fails the run.
    pub targets_enforced: bool,
    /// Why the run failed, one line each.
    pub failures: Vec<String>,
    pub run: RunFile,
    pub memory: MemoryFile,
    pub latency: LatencyFile,
    pub fairness: FairnessFile,
    pub creation: CreationFile,
    /// `IO=1` runs only (absent from older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoFile>,
    pub targets: Vec<TargetFile>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// What ran, and on what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    pub config: Option<ConfigFile>,
    pub cpus_online: Option<u64>,
    pub tsc_mhz: Option<u64>,
    pub created: usize,
    pub done: bool,
    pub failed: Option<String>,
    pub log_lines: usize,
    /// How QEMU ended, when this tool ran it.
    pub qemu: Option<String>,
    /// The host's noise figures, when this tool ran QEMU (a log alone does not say).
    pub host: Option<HostFile>,
    /// The hypervisor's own per-CPU scheduler figures (`summary: sched.cpuN.*`).
    pub hypervisor: Vec<CpuFile>,
}

/// Domain 0's `config` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub n: u32,
    pub cpus: u32,
    pub seconds: u64,
    pub hogs: u32,
    pub latency: u32,
    pub pairs: u32,
    pub periodic: u32,
    pub idle: u32,
    pub mem_kib: u64,
    pub max_kib: u64,
    pub balloon_down: Option<u64>,
    pub balloon_up: Option<u64>,
}

/// What the host gave the run ([`HostInfo`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostFile {
    /// The report's `host:` line.
    pub description: String,
    /// `(vCPU, host CPU)` of every vCPU thread pinned.
    pub pinned: Vec<(u32, u32)>,
    pub vcpu_threads: Option<u32>,
    pub vcpu_ran_s: Option<f64>,
    pub vcpu_waited_s: Option<f64>,
    /// The vCPU threads' time runnable but waiting for a host CPU, in percent.
    pub vcpu_wait_percent: Option<f64>,
    pub qemu_other_threads_ran_s: Option<f64>,
    pub steal_percent: Option<f64>,
    pub probe: Option<ProbeFile>,
}

/// The clock-gap probe before QEMU started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeFile {
    pub threads: u32,
    pub seconds_each: f64,
    pub lost_percent: Option<f64>,
    pub stalls: u64,
    pub over_100us: u64,
    pub over_1ms: u64,
    pub longest_ms: f64,
}

/// One CPU's scheduler figures as the hypervisor reported them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuFile {
    pub cpu: u32,
    pub switches: Option<u64>,
    /// vCPUs taken by idle CPUs from this one.
    pub migrations_out: Option<u64>,
    pub warped_pushes_out: Option<u64>,
    pub held_wait_us: Option<u64>,
    /// Each local timer interrupt's lateness against the time it was armed for: the
    /// machine beneath's (absent in runs before it was reported).
    #[serde(default)]
    pub timer_irq_late: Option<SpanFile>,
    pub timer_late: Option<SpanFile>,
    pub timer_late_warped: Option<SpanFile>,
    pub wake_to_run: Option<SpanFile>,
    pub warped_to_run: Option<SpanFile>,
    pub in_hypervisor: Option<SpanFile>,
    /// What caused the longest stay in the hypervisor (`syscallN`, `vector0xNN`).
    pub longest_stay: Option<String>,
}

/// A hypervisor latency summary, `count/avg/p50/p99/max` in µs; p50 and p99 are bucket
/// upper bounds, `null` when beyond the hypervisor's 20 ms range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanFile {
    pub count: u64,
    pub avg_us: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: u64,
}

impl SpanFile {
    /// Reads `count/avg/p50/p99/max` (`more` for a percentile beyond range).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let mut number = || parts.next()?.parse::<u64>().ok();
        let count = number()?;
        let avg_us = number()?;
        let mut bound = || match parts.next()? {
            "more" => Some(None),
            text => text.parse().ok().map(Some),
        };
        let p50_us = bound()?;
        let p99_us = bound()?;
        let max_us = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Self {
            count,
            avg_us,
            p50_us,
            p99_us,
            max_us,
        })
    }
}

/// Free memory at each phase, KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseFreeFile {
    pub before: Option<u64>,
    pub created: Option<u64>,
    pub ballooned: Option<u64>,
    pub destroyed: Option<u64>,
}

/// Mean, minimum and maximum of per-domain counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpreadFile {
    pub count: usize,
    pub mean: Option<f64>,
    pub min: u64,
    pub max: u64,
}

/// The memory section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryFile {
    pub free_kib: PhaseFreeFile,
    pub leaked_kib: Option<i64>,
    pub heap_growth_bytes: Option<i64>,
    pub hypervisor_bytes_per_domain: Option<u64>,
    pub hypervisor_reported_bytes_per_domain: Option<u64>,
    /// Guest pages at the end of the run.
    pub guest_pages: Option<SpreadFile>,
    /// Guest pages right after ballooning.
    pub ballooned_pages: Option<SpreadFile>,
    pub minimal_domain_kib: Option<f64>,
    pub largest_n: Option<u64>,
    pub largest_n_heap: Option<u64>,
    pub window: WindowFile,
}

/// The hypervisor's window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowFile {
    pub used_kib: Option<u64>,
    pub free_kib: Option<u64>,
    pub domains_that_fit: Option<u64>,
    pub regions: Vec<RegionFile>,
}

/// One window region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionFile {
    pub name: String,
    pub used_kib: u64,
    pub size_kib: u64,
}

/// The latency section: one series per kind of domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyFile {
    pub cpus: Option<u32>,
    pub timer_warped: SeriesFile,
    pub timer_unwarped: SeriesFile,
    pub timer_idle: SeriesFile,
    pub ping_pong_rtt: SeriesFile,
    pub unwarped_over_warped_p99: Option<f64>,
    pub lost_answers: u64,
}

impl LatencyFile {
    /// The series of a kind.
    pub fn series(&self, kind: SeriesKind) -> &SeriesFile {
        match kind {
            SeriesKind::Warped => &self.timer_warped,
            SeriesKind::Unwarped => &self.timer_unwarped,
            SeriesKind::Idle => &self.timer_idle,
            SeriesKind::PingPong => &self.ping_pong_rtt,
        }
    }
}

/// One distribution: percentiles (bucket low bounds, ns), the exact maximum and the merged
/// histogram as `[low_ns, count]` pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesFile {
    pub label: String,
    pub domains: usize,
    pub samples: u64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub p999_ns: Option<u64>,
    pub max_ns: Option<u64>,
    pub buckets: Vec<[u64; 2]>,
}

/// The fairness section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FairnessFile {
    pub hogs: Vec<HogFile>,
    pub max_error: Option<f64>,
}

/// One hog's share of its CPU against its weight's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HogFile {
    pub domid: u16,
    pub cpu: Option<u32>,
    pub weight: u64,
    pub cpu_time_ns: u64,
    pub share: Option<f64>,
    pub expected: Option<f64>,
    pub error: Option<f64>,
}

/// The creation section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreationFile {
    pub count: usize,
    /// `[index, ns]` of the 1st, 10th, 100th and last creation.
    pub milestones: Vec<[u64; 2]>,
    pub ratio_last_first: Option<f64>,
    pub ratio_100th_first: Option<f64>,
    pub total_ns: Option<u64>,
    pub first_100_ns: Option<u64>,
    pub early_median_ns: Option<u64>,
    pub late_median_ns: Option<u64>,
    pub late_from_index: Option<usize>,
    pub slowdown: Option<f64>,
}

/// One target, judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    pub key: String,
    pub goal: String,
    pub measured: String,
    /// `PASS`, `MISS` (a performance target missed), `FAIL`, `INFO` or `MISSING`.
    pub status: String,
    pub performance: bool,
}

/// `IO=1`: the VBD reads (every domain's merged) and what the devices cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoFile {
    pub domains: usize,
    pub requests: u64,
    pub failed: u64,
    pub bad_data: u64,
    pub lost: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    /// Domain 0's `devices` record.
    pub served: Option<u64>,
    pub connected: Option<u64>,
    pub dom0_answered: Option<u64>,
    pub dom0_failed: Option<u64>,
    pub cut: Option<u64>,
    pub disk_kib: Option<u64>,
    pub ring_pages_per_domain: Option<u64>,
    /// Domain 0's heap bytes per served domain (beyond the ring pages).
    pub dom0_bytes_per_domain: Option<u64>,
    /// Hypervisor heap bytes per domain taken by connecting the devices.
    pub hypervisor_bytes_per_domain: Option<i64>,
    /// Domain 0's `consoles` record: consoles relayed, lines relayed, lines dropped over
    /// its rate limit (absent from older reports).
    #[serde(default)]
    pub consoles_relayed: Option<u64>,
    #[serde(default)]
    pub relayed_lines: Option<u64>,
    #[serde(default)]
    pub relay_dropped: Option<u64>,
}

fn io(io: &crate::report::IoReport) -> IoFile {
    let us = |ns: u64| ns as f64 / 1000.0;
    let d = io.devices;
    IoFile {
        domains: io.domains,
        requests: io.requests,
        failed: io.failed,
        bad_data: io.bad_data,
        lost: io.lost,
        p50_us: io.stats.map(|s| us(s.p50_ns)),
        p99_us: io.stats.map(|s| us(s.p99_ns)),
        max_us: io.stats.map(|s| us(s.max_ns)),
        served: d.map(|d| d.served),
        connected: d.map(|d| d.connected),
        dom0_answered: d.map(|d| d.requests),
        dom0_failed: d.map(|d| d.failed),
        cut: d.map(|d| d.cut),
        disk_kib: d.map(|d| d.disk_kib),
        ring_pages_per_domain: d.map(|d| d.ring_pages),
        dom0_bytes_per_domain: d.map(|d| d.dom0_heap_bytes),
        hypervisor_bytes_per_domain: io.hypervisor_bytes_per_domain,
        consoles_relayed: io.consoles.map(|c| c.relayed),
        relayed_lines: io.consoles.map(|c| c.lines),
        relay_dropped: io.consoles.map(|c| c.dropped),
    }
}

/// A finite number, else none.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl ReportFile {
    /// The analysis as the file holds it.
    pub fn new(a: &Analysis) -> Self {
        let r = &a.report;
        Self {
            schema_version: SCHEMA_VERSION,
            verdict: if a.passed() { "pass" } else { "fail" }.to_string(),
            targets_enforced: a.enforce_targets,
            failures: a.failures(),
            run: run(&r.run),
            memory: memory(&r.memory),
            latency: latency(&r.latency),
            fairness: fairness(&r.fairness),
            creation: creation(&r.creation),
            io: r.io.as_ref().map(io),
            targets: a
                .checks
                .iter()
                .map(|c| TargetFile {
                    key: c.key.to_string(),
                    goal: c.goal.clone(),
                    measured: c.measured.clone(),
                    status: c.word().to_string(),
                    performance: c.performance,
                })
                .collect(),
            problems: r.problems.iter().map(ToString::to_string).collect(),
            warnings: r.warnings.iter().map(ToString::to_string).collect(),
        }
    }

    /// Pretty-printed JSON with a final newline.
    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("\"{e}\""));
        text.push('\n');
        text
    }

    /// Reads a `report.json` of this schema version.
    pub fn read(path: &Path) -> io::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Parses the text of a `report.json`.
    pub fn parse(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Version {
            schema_version: Option<u32>,
        }
        let version = serde_json::from_str::<Version>(text).map_err(|e| e.to_string())?;
        match version.schema_version {
            Some(SCHEMA_VERSION) => serde_json::from_str(text).map_err(|e| e.to_string()),
            other => Err(format!(
                "schema version {}, this tool reads {SCHEMA_VERSION} (`stress report <serial.log>` writes it anew)",
                other.map_or("1 (none given)".to_string(), |v| v.to_string())
            )),
        }
    }

    /// The run's config, when the log had one.
    pub fn config(&self) -> Option<ConfigFile> {
        self.run.config
    }
}

fn run(run: &RunInfo) -> RunFile {
    RunFile {
        config: run.config.map(|c| ConfigFile {
            n: c.n,
            cpus: c.cpus,
            seconds: c.seconds,
            hogs: c.hogs,
            latency: c.latency,
            pairs: c.pairs,
            periodic: c.periodic,
            idle: c.idle,
            mem_kib: c.mem_kib,
            max_kib: c.max_kib,
            balloon_down: c.balloon_down,
            balloon_up: c.balloon_up,
        }),
        cpus_online: run.cpus_online,
        tsc_mhz: run.tsc_mhz,
        created: run.created,
        done: run.done,
        failed: run.failed.clone(),
        log_lines: run.log_lines,
        qemu: run.qemu.map(|q| q.to_string()),
        host: run.host.as_ref().map(host),
        hypervisor: hypervisor(&run.sched),
    }
}

fn host(h: &HostInfo) -> HostFile {
    let seconds = |ns: u64| ns as f64 / 1e9;
    HostFile {
        description: h.to_string(),
        pinned: h
            .placement
            .as_ref()
            .map_or_else(Vec::new, |p| p.pinned.clone()),
        vcpu_threads: h.times.map(|t| t.threads),
        vcpu_ran_s: h.times.map(|t| seconds(t.ran_ns)),
        vcpu_waited_s: h.times.map(|t| seconds(t.waited_ns)),
        vcpu_wait_percent: h.vcpu_wait_percent(),
        qemu_other_threads_ran_s: h.times.map(|t| seconds(t.others_ran_ns)),
        steal_percent: h.steal_percent.and_then(finite),
        probe: h.probe.map(|p| ProbeFile {
            threads: p.threads,
            seconds_each: seconds(p.spun_ns) / f64::from(p.threads.max(1)),
            lost_percent: finite(p.lost_percent()),
            stalls: p.count,
            over_100us: p.over_100us,
            over_1ms: p.over_1ms,
            longest_ms: p.longest_ns as f64 / 1e6,
        }),
    }
}

/// The `sched.cpuN.*` summary values as numbers, one entry per CPU that reported.
fn hypervisor(sched: &BTreeMap<String, String>) -> Vec<CpuFile> {
    let mut cpus: BTreeMap<u32, CpuFile> = BTreeMap::new();
    for (key, value) in sched {
        let Some((cpu, name)) = key
            .strip_prefix("sched.cpu")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(cpu, name)| Some((cpu.parse::<u32>().ok()?, name)))
        else {
            continue;
        };
        let entry = cpus.entry(cpu).or_insert_with(|| CpuFile {
            cpu,
            ..CpuFile::default()
        });
        let number = || value.parse().ok();
        let span = || SpanFile::parse(value);
        match name {
            "switches" => entry.switches = number(),
            "migrations_out" => entry.migrations_out = number(),
            "warped_pushes_out" => entry.warped_pushes_out = number(),
            "held_wait_us" => entry.held_wait_us = number(),
            "timer_irq_late_us" => entry.timer_irq_late = span(),
            "timer_late_us" => entry.timer_late = span(),
            "timer_late_warped_us" => entry.timer_late_warped = span(),
            "wake_to_run_us" => entry.wake_to_run = span(),
            "warped_to_run_us" => entry.warped_to_run = span(),
            "in_hypervisor_us" => entry.in_hypervisor = span(),
            "longest_stay" => entry.longest_stay = Some(value.clone()),
            _ => {}
        }
    }
    cpus.into_values().collect()
}

fn spread(s: Option<Spread>) -> Option<SpreadFile> {
    s.map(|s| SpreadFile {
        count: s.count,
        mean: finite(s.mean),
        min: s.min,
        max: s.max,
    })
}

fn memory(m: &MemoryReport) -> MemoryFile {
    let free = m.free_kib;
    MemoryFile {
        free_kib: PhaseFreeFile {
            before: free.before,
            created: free.created,
            ballooned: free.ballooned,
            destroyed: free.destroyed,
        },
        leaked_kib: m.leaked_kib,
        heap_growth_bytes: m.heap_growth_bytes,
        hypervisor_bytes_per_domain: m.hypervisor_bytes_per_domain,
        hypervisor_reported_bytes_per_domain: m.hypervisor_reported_bytes_per_domain,
        guest_pages: spread(m.guest_pages),
        ballooned_pages: spread(m.ballooned_pages),
        minimal_domain_kib: m.minimal_domain_kib.and_then(finite),
        largest_n: m.largest_n,
        largest_n_heap: m.largest_n_heap,
        window: WindowFile {
            used_kib: m.window.used_kib,
            free_kib: m.window.free_kib,
            domains_that_fit: m.window.domains_that_fit,
            regions: m
                .window
                .regions
                .iter()
                .map(|r| RegionFile {
                    name: r.name.clone(),
                    used_kib: r.used_kib,
                    size_kib: r.size_kib,
                })
                .collect(),
        },
    }
}

fn latency(l: &LatencyReport) -> LatencyFile {
    let series = |kind: SeriesKind| match l.series(kind) {
        Some(s) => series(s),
        None => SeriesFile {
            label: kind.label().to_string(),
            domains: 0,
            samples: 0,
            p50_ns: None,
            p99_ns: None,
            p999_ns: None,
            max_ns: None,
            buckets: Vec::new(),
        },
    };
    LatencyFile {
        cpus: l.cpus,
        timer_warped: series(SeriesKind::Warped),
        timer_unwarped: series(SeriesKind::Unwarped),
        timer_idle: series(SeriesKind::Idle),
        ping_pong_rtt: series(SeriesKind::PingPong),
        unwarped_over_warped_p99: l.p99_ratio.and_then(finite),
        lost_answers: l.lost_answers,
    }
}

fn series(s: &Series) -> SeriesFile {
    SeriesFile {
        label: s.kind.label().to_string(),
        domains: s.domains,
        samples: s.hist.samples(),
        p50_ns: s.stats.map(|s| s.p50_ns),
        p99_ns: s.stats.map(|s| s.p99_ns),
        p999_ns: s.stats.map(|s| s.p999_ns),
        max_ns: s.stats.map(|s| s.max_ns),
        buckets: s
            .hist
            .buckets()
            .map(|(b, count)| [b.low(), count])
            .collect(),
    }
}

fn fairness(f: &FairnessReport) -> FairnessFile {
    FairnessFile {
        hogs: f
            .hogs
            .iter()
            .map(|h| HogFile {
                domid: h.hog.domid.0,
                cpu: h.hog.cpu,
                weight: h.hog.weight,
                cpu_time_ns: h.hog.cpu_time_ns,
                share: finite(h.share),
                expected: finite(h.expected),
                error: finite(h.error),
            })
            .collect(),
        max_error: f.max_error.and_then(finite),
    }
}

fn creation(c: &CreationReport) -> CreationFile {
    CreationFile {
        count: c.count,
        milestones: c
            .milestones
            .iter()
            .map(|m| [m.index as u64, m.ns])
            .collect(),
        ratio_last_first: c.ratio_last_first.and_then(finite),
        ratio_100th_first: c.ratio_100th_first.and_then(finite),
        total_ns: c.total_ns,
        first_100_ns: c.first_100_ns,
        early_median_ns: c.early_median_ns,
        late_median_ns: c.late_median_ns,
        late_from_index: c.late_from,
        slowdown: c.slowdown.and_then(finite),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypervisor_spans_become_numbers() {
        assert_eq!(
            SpanFile::parse("333175/17/10/200/9343"),
            Some(SpanFile {
                count: 333_175,
                avg_us: 17,
                p50_us: Some(10),
                p99_us: Some(200),
                max_us: 9343
            })
        );
        assert_eq!(
            SpanFile::parse("5/30000/more/more/40000").unwrap().p99_us,
            None
        );
        for bad in ["", "1/2/3/4", "1/2/3/4/5/6", "a/2/3/4/5", "1/2/less/4/5"] {
            assert_eq!(SpanFile::parse(bad), None, "{bad}");
        }
        let sched: BTreeMap<String, String> = [
            ("sched.cpu1.switches", "12"),
            ("sched.cpu0.in_hypervisor_us", "333175/17/10/200/9343"),
            ("sched.cpu0.longest_stay", "vector0xf0"),
            ("sched.cpu0.unknown", "x"),
            ("sched.other", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cpus = hypervisor(&sched);
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[0].in_hypervisor.unwrap().count, 333_175);
        assert_eq!(cpus[0].longest_stay.as_deref(), Some("vector0xf0"));
        assert_eq!((cpus[1].cpu, cpus[1].switches), (1, Some(12)));
    }

    #[test]
    fn other_schema_versions_are_refused_with_a_way_out() {
        let old = r#"{"verdict": "pass", "run": {}}"#;
        let error = ReportFile::parse(old).unwrap_err();
        assert!(
            error.contains("schema version 1") && error.contains("stress report"),
            "{error}"
        );
        assert!(ReportFile::parse(r#"{"schema_version": 3}"#)
            .unwrap_err()
            .contains("version 3"));
        assert!(ReportFile::parse("not json").is_err());
    }

    #[test]
    fn non_finite_numbers_are_null() {
        assert_eq!(finite(f64::NAN), None);
        assert_eq!(finite(f64::INFINITY), None);
        assert_eq!(finite(1.5), Some(1.5));
    }
}
