//! `stress summarize`: the medians and ranges of several runs' figures, from their
//! `report.json` files, as Markdown tables (one per configuration: N, CPUs, seconds), the
//! form the README's figures take.
//!
//! Called by the binary. It only reads the figures each report already has; the median of
//! an even count is the mean of the two middle values. A figure no run has is left out.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use crate::json::{ConfigFile, ReportFile};
use crate::report::SeriesKind;

/// One figure of the table: its label, how to read it from a report, and how to print a
/// value of it.
struct Figure {
    label: &'static str,
    value: fn(&ReportFile) -> Option<f64>,
    show: fn(f64) -> String,
}

fn us(ns: Option<u64>) -> Option<f64> {
    ns.map(|ns| ns as f64 / 1e3)
}

fn p(
    kind: SeriesKind,
    at: fn(&crate::json::SeriesFile) -> Option<u64>,
) -> impl Fn(&ReportFile) -> Option<f64> {
    move |r| us(at(r.latency.series(kind)))
}

fn one_decimal(x: f64) -> String {
    format!("{x:.1}")
}

fn whole(x: f64) -> String {
    format!("{x:.0}")
}

fn two_decimals(x: f64) -> String {
    format!("{x:.2}")
}

fn three_decimals(x: f64) -> String {
    format!("{x:.3}")
}

/// The sum of a per-CPU figure over the CPUs that reported it, over the CPU count.
fn per_cpu(r: &ReportFile, at: fn(&crate::json::CpuFile) -> Option<u64>) -> Option<f64> {
    let values: Vec<u64> = r.run.hypervisor.iter().filter_map(at).collect();
    (!values.is_empty()).then(|| values.iter().sum::<u64>() as f64 / values.len() as f64)
}

/// Every figure, in table order.
fn figures() -> Vec<Figure> {
    macro_rules! figure {
        ($label:expr, $show:expr, $value:expr) => {
            Figure {
                label: $label,
                value: $value,
                show: $show,
            }
        };
    }
    vec![
        figure!("hypervisor bytes per domain", whole, |r| r
            .memory
            .hypervisor_bytes_per_domain
            .map(|b| b as f64)),
        figure!("smallest ballooned domain in all (KiB)", one_decimal, |r| r
            .memory
            .minimal_domain_kib),
        figure!("largest N that fits", whole, |r| r
            .memory
            .largest_n
            .map(|n| n as f64)),
        figure!("creations in all (s)", three_decimals, |r| r
            .creation
            .total_ns
            .map(|ns| ns as f64 / 1e9)),
        figure!("late / early creation median", two_decimals, |r| r
            .creation
            .slowdown),
        figure!("hog shares: worst error (%)", two_decimals, |r| r
            .fairness
            .max_error
            .map(|e| e * 100.0)),
        figure!("memory leaked after destroy (KiB)", whole, |r| r
            .memory
            .leaked_kib
            .map(|k| k as f64)),
        figure!("warped lateness p50 (µs)", one_decimal, |r| p(
            SeriesKind::Warped,
            |s| s.p50_ns
        )(r)),
        figure!("warped lateness p99 (µs)", one_decimal, |r| p(
            SeriesKind::Warped,
            |s| s.p99_ns
        )(r)),
        figure!("warped lateness p99.9 (µs)", one_decimal, |r| p(
            SeriesKind::Warped,
            |s| s.p999_ns
        )(r)),
        figure!("warped lateness max (µs)", one_decimal, |r| p(
            SeriesKind::Warped,
            |s| s.max_ns
        )(r)),
        figure!("unwarped lateness p50 (µs)", one_decimal, |r| p(
            SeriesKind::Unwarped,
            |s| s.p50_ns
        )(r)),
        figure!("unwarped lateness p99 (µs)", one_decimal, |r| p(
            SeriesKind::Unwarped,
            |s| s.p99_ns
        )(r)),
        figure!("unwarped / warped p99", one_decimal, |r| r
            .latency
            .unwarped_over_warped_p99),
        figure!("idle lateness p50 (µs)", one_decimal, |r| p(
            SeriesKind::Idle,
            |s| s.p50_ns
        )(r)),
        figure!("idle lateness p99 (µs)", one_decimal, |r| p(
            SeriesKind::Idle,
            |s| s.p99_ns
        )(r)),
        figure!("ping-pong round trip p50 (µs)", one_decimal, |r| p(
            SeriesKind::PingPong,
            |s| s.p50_ns
        )(
            r
        )),
        figure!("ping-pong round trip p99 (µs)", one_decimal, |r| p(
            SeriesKind::PingPong,
            |s| s.p99_ns
        )(
            r
        )),
        figure!("warped vCPUs pushed, per CPU", whole, |r| per_cpu(r, |c| c
            .warped_pushes_out)),
        figure!("held timers' wait per CPU (s)", two_decimals, |r| {
            per_cpu(r, |c| c.held_wait_us).map(|us| us / 1e6)
        }),
        figure!("host: vCPU threads waiting (%)", one_decimal, |r| r
            .run
            .host
            .as_ref()?
            .vcpu_wait_percent),
        figure!("host: steal (%)", two_decimals, |r| r
            .run
            .host
            .as_ref()?
            .steal_percent),
        figure!("host: probe, time lost in stalls (%)", one_decimal, |r| {
            r.run.host.as_ref()?.probe.as_ref()?.lost_percent
        }),
        figure!("host: probe, longest stall (ms)", one_decimal, |r| {
            Some(r.run.host.as_ref()?.probe.as_ref()?.longest_ms)
        }),
    ]
}

/// The median of `values` (sorted or not); none for none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// A run's report and where it was read from.
pub type Read = (PathBuf, ReportFile);

/// The configuration runs are grouped by: N, CPUs, seconds.
type GroupKey = (u32, u32, u64);

/// The configuration runs are grouped by.
fn group_key(config: Option<ConfigFile>) -> GroupKey {
    config.map_or((0, 0, 0), |c| (c.n, c.cpus, c.seconds))
}

/// The tables for `reports` (each with where it was read from).
pub fn summarize(reports: &[Read]) -> String {
    let mut groups: BTreeMap<GroupKey, Vec<&Read>> = BTreeMap::new();
    for report in reports {
        groups
            .entry(group_key(report.1.config()))
            .or_default()
            .push(report);
    }
    let mut out = String::new();
    for ((n, cpus, seconds), runs) in groups {
        if n == 0 {
            let _ = writeln!(out, "## runs without a config record ({})\n", runs.len());
        } else {
            let _ = writeln!(
                out,
                "## N={n}, {cpus} CPUs, {seconds} s: {} runs\n",
                runs.len()
            );
        }
        table(&mut out, &runs);
        out.push('\n');
    }
    out
}

fn table(out: &mut String, runs: &[&Read]) {
    let passed = runs.iter().filter(|(_, r)| r.verdict == "pass").count();
    let _ = writeln!(out, "| figure | median | range | per run |");
    let _ = writeln!(out, "|---|---|---|---|");
    let _ = writeln!(
        out,
        "| runs that passed | {passed} of {} | | {} |",
        runs.len(),
        verdicts(runs)
    );
    for figure in figures() {
        let values: Vec<Option<f64>> = runs.iter().map(|(_, r)| (figure.value)(r)).collect();
        let known: Vec<f64> = values.iter().flatten().copied().collect();
        let Some(mid) = median(&known) else { continue };
        let (low, high) = known
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let per_run: Vec<String> = values
            .iter()
            .map(|v| v.map_or_else(|| "-".to_string(), figure.show))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {}-{} | {} |",
            figure.label,
            (figure.show)(mid),
            (figure.show)(low),
            (figure.show)(high),
            per_run.join(", ")
        );
    }
    let _ = writeln!(out, "\nruns, in the order of the per-run column:");
    for (path, _) in runs {
        let _ = writeln!(out, "- {}", path.display());
    }
}

fn verdicts(runs: &[&Read]) -> String {
    runs.iter()
        .map(|(_, r)| r.verdict.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{analyse, synthetic};

    fn run(n: usize, warped_p99_us: u64, host_wait: Option<f64>) -> Read {
        let mut report = ReportFile::new(&analyse(&synthetic::log(n).join("\n"), None, false));
        report.latency.timer_warped.p99_ns = Some(warped_p99_us * 1000);
        report.run.host = host_wait.map(|w| crate::json::HostFile {
            description: String::new(),
            pinned: Vec::new(),
            vcpu_threads: Some(2),
            vcpu_ran_s: None,
            vcpu_waited_s: None,
            vcpu_wait_percent: Some(w),
            qemu_other_threads_ran_s: None,
            steal_percent: None,
            probe: None,
        });
        (
            PathBuf::from(format!("runs/{n}-{warped_p99_us}/report.json")),
            report,
        )
    }

    #[test]
    fn one_table_per_configuration_with_medians_and_ranges() {
        let runs = [
            run(20, 180, Some(9.9)),
            run(20, 344, Some(10.9)),
            run(20, 172, None),
            run(100, 500, None),
        ];
        let text = summarize(&runs);
        assert!(text.contains("## N=20, 2 CPUs, 10 s: 3 runs"), "{text}");
        assert!(text.contains("## N=100, 2 CPUs, 10 s: 1 runs"), "{text}");
        assert!(
            text.contains(
                "| warped lateness p99 (µs) | 180.0 | 172.0-344.0 | 180.0, 344.0, 172.0 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| warped lateness p99 (µs) | 500.0 | 500.0-500.0 | 500.0 |"),
            "{text}"
        );
        assert!(
            text.contains("| host: vCPU threads waiting (%) | 10.4 | 9.9-10.9 | 9.9, 10.9, - |"),
            "{text}"
        );
        assert!(
            text.contains("| runs that passed | 3 of 3 | | pass, pass, pass |"),
            "{text}"
        );
        assert!(
            text.contains("| hypervisor bytes per domain | 7096 |"),
            "{text}"
        );
        assert!(!text.contains("steal"), "a figure no run has is left out");
        assert!(text.contains("- runs/20-344/report.json"));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
