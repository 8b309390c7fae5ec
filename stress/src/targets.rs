//! The stress run's targets: each turns a figure of the [`Report`] into a [`Check`] with
//! PASS or FAIL and the measured value, or reports it only where the run was too small
//! for the target to mean anything (fewer than 100 creations, no hogs, no latency
//! domains).
//!
//! Called by the crate's `analyse`. The limits live here and nowhere else. A missed
//! performance target is a MISS, read against the host's noise figures; it fails the run
//! only when targets are enforced (`--targets enforce`), which is the caller's business.
//!
//! The creation-slowdown target compares medians, not single creations: the median of
//! creations 0-4 against the median of creations 95-99. One creation can be delayed by
//! anything that happens to run at the same moment (a timer interrupt, a TCG
//! translation flush); the median of five shrugs off two such outliers on either side.

use crate::report::{Report, SeriesKind, MEDIAN_WINDOW, SLOWDOWN_AT};

/// Hypervisor bytes per domain beyond its reservation, at most.
pub const HYPERVISOR_BYTES_MAX: u64 = 20 * 1024;
/// A minimal ballooned domain, guest and hypervisor memory together, below this (KiB).
pub const MINIMAL_DOMAIN_KIB_BELOW: f64 = 512.0;
/// The first [`SLOWDOWN_AT`] creations together, below this.
pub const CREATE_100_BELOW_NS: u64 = 1_000_000_000;
/// Median of creations 95-99 over median of creations 0-4, at most.
pub const CREATE_SLOWDOWN_MAX: f64 = 1.2;
/// Warped timer lateness at p99, below this.
pub const WARPED_P99_BELOW_NS: u64 = 200_000;
/// Unwarped p99 over warped p99, at least.
pub const UNWARPED_OVER_WARPED_MIN: u64 = 5;
/// A hog's relative share error, at most.
pub const SHARE_ERROR_MAX: f64 = 0.05;

/// A target's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// The run is too small for the target, or has no domains of the role: figure only.
    ReportOnly,
    /// The figure should exist but the log does not give it: fails like [`Status::Fail`].
    NotMeasured,
}

impl Status {
    /// The word the table prints (a missed performance target says MISS, see
    /// [`Check::word`]).
    pub fn word(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::ReportOnly => "INFO",
            Self::NotMeasured => "MISSING",
        }
    }

    /// True when the target counts as missed.
    pub fn fails(self) -> bool {
        matches!(self, Self::Fail | Self::NotMeasured)
    }

    fn from_bool(pass: bool) -> Self {
        if pass {
            Self::Pass
        } else {
            Self::Fail
        }
    }
}

/// One target, judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// A stable name for JSON.
    pub key: &'static str,
    /// What the target asks.
    pub goal: String,
    /// What the run measured.
    pub measured: String,
    pub status: Status,
    /// A performance target (timing, memory size, fairness), which the host's noise can
    /// make a run miss; false for a correctness check (no leak), whose failure is also a
    /// problem of the run.
    pub performance: bool,
}

impl Check {
    fn new(key: &'static str, goal: String, status: Status, measured: String) -> Self {
        Self {
            key,
            goal,
            measured,
            status,
            performance: true,
        }
    }

    /// The word the table prints: MISS for a missed performance target, else the status's.
    pub fn word(&self) -> &'static str {
        match self.status {
            Status::Fail if self.performance => "MISS",
            status => status.word(),
        }
    }

    /// True when this is a performance target the run missed.
    pub fn missed(&self) -> bool {
        self.performance && self.status.fails()
    }

    fn missing(key: &'static str, goal: String) -> Self {
        Self::new(key, goal, Status::NotMeasured, "not in the log".to_string())
    }
}

/// Judges every target.
pub fn evaluate(report: &Report) -> Vec<Check> {
    vec![
        hypervisor_bytes(report),
        minimal_domain(report),
        create_100(report),
        create_slowdown(report),
        warped_p99(report),
        warp_ratio(report),
        hog_shares(report),
        no_leak(report),
    ]
}

fn hypervisor_bytes(report: &Report) -> Check {
    let key = "hypervisor_bytes_per_domain";
    let goal = format!("hypervisor bytes per domain <= {HYPERVISOR_BYTES_MAX}");
    match report.memory.hypervisor_bytes_per_domain {
        Some(bytes) => Check::new(
            key,
            goal,
            Status::from_bool(bytes <= HYPERVISOR_BYTES_MAX),
            format!("{bytes} B"),
        ),
        None => Check::missing(key, goal),
    }
}

fn minimal_domain(report: &Report) -> Check {
    let key = "minimal_domain_kib";
    let goal = format!("smallest ballooned domain in all < {MINIMAL_DOMAIN_KIB_BELOW} KiB");
    let pages = report.memory.ballooned_pages.map(|s| s.min);
    match (report.memory.minimal_domain_kib, pages) {
        (Some(kib), Some(pages)) => Check::new(
            key,
            goal,
            Status::from_bool(kib < MINIMAL_DOMAIN_KIB_BELOW),
            format!("{kib:.1} KiB ({} KiB guest + hypervisor)", pages * 4),
        ),
        _ => Check::missing(key, goal),
    }
}

fn create_100(report: &Report) -> Check {
    let key = "create_100_total";
    let goal = format!(
        "{SLOWDOWN_AT} creations < {:.0} s in all",
        CREATE_100_BELOW_NS as f64 / 1e9
    );
    let creation = &report.creation;
    if let Some(ns) = creation.first_100_ns {
        return Check::new(
            key,
            goal,
            Status::from_bool(ns < CREATE_100_BELOW_NS),
            format!("{:.3} s", ns as f64 / 1e9),
        );
    }
    match creation.total_ns.filter(|_| creation.count > 0) {
        Some(total) => {
            let scaled = total as f64 * SLOWDOWN_AT as f64 / creation.count as f64;
            let measured = format!(
                "N={}: {:.3} s, {:.3} s scaled to {SLOWDOWN_AT}",
                creation.count,
                total as f64 / 1e9,
                scaled / 1e9
            );
            Check::new(key, goal, Status::ReportOnly, measured)
        }
        None => Check::missing(key, goal),
    }
}

fn create_slowdown(report: &Report) -> Check {
    let key = "create_slowdown";
    let goal = format!(
        "median of creations {}-{} <= {CREATE_SLOWDOWN_MAX}x median of 1-{MEDIAN_WINDOW}",
        SLOWDOWN_AT - MEDIAN_WINDOW + 1,
        SLOWDOWN_AT
    );
    let c = &report.creation;
    let (Some(slowdown), Some(from), Some(early), Some(late)) =
        (c.slowdown, c.late_from, c.early_median_ns, c.late_median_ns)
    else {
        return if c.count < SLOWDOWN_AT && c.count > 0 {
            Check::new(
                key,
                goal,
                Status::ReportOnly,
                format!("N={}: too few creations", c.count),
            )
        } else {
            Check::missing(key, goal)
        };
    };
    let measured = format!(
        "{slowdown:.2}x (#{}-{} {} us / #1-{MEDIAN_WINDOW} {} us)",
        from + 1,
        from + MEDIAN_WINDOW,
        late / 1000,
        early / 1000
    );
    let status = if c.count >= SLOWDOWN_AT {
        Status::from_bool(slowdown <= CREATE_SLOWDOWN_MAX)
    } else {
        Status::ReportOnly
    };
    Check::new(key, goal, status, measured)
}

/// True when the config says no domain of `role` ran.
fn role_absent(report: &Report, count: impl Fn(&crate::parse::Config) -> u32) -> bool {
    report.run.config.as_ref().is_some_and(|c| count(c) == 0)
}

fn warped_p99(report: &Report) -> Check {
    let key = "warped_p99";
    let goal = format!("warped p99 lateness < {} us", WARPED_P99_BELOW_NS / 1000);
    if role_absent(report, |c| c.latency) {
        return Check::new(
            key,
            goal,
            Status::ReportOnly,
            "no latency domains".to_string(),
        );
    }
    match report.latency.stats(SeriesKind::Warped) {
        Some(s) => Check::new(
            key,
            goal,
            Status::from_bool(s.p99_ns < WARPED_P99_BELOW_NS),
            format!("{:.1} us", s.p99_ns as f64 / 1e3),
        ),
        None => Check::missing(key, goal),
    }
}

fn warp_ratio(report: &Report) -> Check {
    let key = "unwarped_over_warped_p99";
    let goal = format!("unwarped p99 >= {UNWARPED_OVER_WARPED_MIN}x warped p99");
    if role_absent(report, |c| c.latency) || role_absent(report, |c| c.periodic) {
        return Check::new(
            key,
            goal,
            Status::ReportOnly,
            "no latency or no periodic domains".to_string(),
        );
    }
    let latency = &report.latency;
    match (
        latency.stats(SeriesKind::Unwarped),
        latency.stats(SeriesKind::Warped),
    ) {
        (Some(unwarped), Some(warped)) => {
            let pass = u128::from(unwarped.p99_ns)
                >= u128::from(UNWARPED_OVER_WARPED_MIN) * u128::from(warped.p99_ns);
            let ratio = latency
                .p99_ratio
                .map_or("inf".to_string(), |r| format!("{r:.1}"));
            let measured = format!(
                "{ratio}x ({:.1} us / {:.1} us)",
                unwarped.p99_ns as f64 / 1e3,
                warped.p99_ns as f64 / 1e3
            );
            Check::new(key, goal, Status::from_bool(pass), measured)
        }
        _ => Check::missing(key, goal),
    }
}

fn hog_shares(report: &Report) -> Check {
    let key = "hog_shares";
    let goal = format!(
        "each hog's CPU share within {:.0}% of its weight's",
        SHARE_ERROR_MAX * 100.0
    );
    if role_absent(report, |c| c.hogs) {
        return Check::new(key, goal, Status::ReportOnly, "no hogs".to_string());
    }
    match report.fairness.max_error {
        Some(error) => Check::new(
            key,
            goal,
            Status::from_bool(error <= SHARE_ERROR_MAX),
            format!("worst {:.2}%", error * 100.0),
        ),
        None => Check::missing(key, goal),
    }
}

fn no_leak(report: &Report) -> Check {
    let key = "no_leak";
    let goal = "free memory after destroying == before, no leaked frames".to_string();
    let free = report.memory.free_kib;
    let (Some(before), Some(after)) = (free.before, free.destroyed) else {
        return Check::missing(key, goal);
    };
    let leaks = report.problems.iter().filter(|p| p.is_leak()).count();
    Check {
        performance: false,
        ..Check::new(
            key,
            goal,
            Status::from_bool(leaks == 0),
            format!("{before} KiB before, {after} KiB after"),
        )
    }
}
