//! Capacity planning: from runs at several N (and CPU counts), one self-contained HTML
//! page with inline SVG plots of latency percentiles (warped, unwarped, idle p50/p99) and
//! memory per domain against N, and the largest N whose runs meet a latency objective
//! (warped p99 at most `--p99-us`) on the host that ran them.
//!
//! The runs may come from `make capacity` or from anywhere: serial logs captured on
//! another host (re-read as `stress report` does) and `report.json` files (which also carry
//! the host's noise figures). Runs at the same N and CPU count are combined: the plots show
//! the median and the range. Called by the binary; it only reads reports and draws: it never
//! runs anything.
//!
//! The objective holds at an N when every run there finished without a problem (a run that
//! broke does not count as capacity) and the median warped p99 is at most the objective.
//! The largest N that meets it is the largest measured N such that it and every smaller
//! measured N meet it: capacity is planned from below, and a larger N that happens to pass
//! after a smaller one failed is shown but not trusted.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::json::ReportFile;
use crate::plot::{self, escape, Line, Mark, Plot, Point};
use crate::report::SeriesKind;
use crate::summary::median;

/// One run as the page uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    /// Where it was read from.
    pub source: String,
    pub report: ReportFile,
}

/// The median and range of one figure over the runs at one N.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(values: &[f64]) -> Option<Self> {
        Some(Self {
            median: median(values)?,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// A figure the page plots against N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Figure {
    WarpedP50,
    WarpedP99,
    UnwarpedP50,
    UnwarpedP99,
    IdleP50,
    IdleP99,
    /// Hypervisor bytes per domain beyond its reservation, KiB.
    HypervisorKib,
    /// Guest memory per domain after ballooning, KiB.
    GuestKib,
    /// The two together.
    DomainKib,
    /// How many domains of that size the run's free memory (and heap) held.
    LargestNFits,
}

impl Figure {
    const LATENCY: [Figure; 6] = [
        Self::WarpedP50,
        Self::WarpedP99,
        Self::UnwarpedP50,
        Self::UnwarpedP99,
        Self::IdleP50,
        Self::IdleP99,
    ];
    const MEMORY: [Figure; 3] = [Self::DomainKib, Self::GuestKib, Self::HypervisorKib];
    const ALL: [Figure; 10] = [
        Self::WarpedP50,
        Self::WarpedP99,
        Self::UnwarpedP50,
        Self::UnwarpedP99,
        Self::IdleP50,
        Self::IdleP99,
        Self::HypervisorKib,
        Self::GuestKib,
        Self::DomainKib,
        Self::LargestNFits,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::WarpedP50 => "warped p50",
            Self::WarpedP99 => "warped p99",
            Self::UnwarpedP50 => "unwarped p50",
            Self::UnwarpedP99 => "unwarped p99",
            Self::IdleP50 => "idle p50",
            Self::IdleP99 => "idle p99",
            Self::HypervisorKib => "hypervisor",
            Self::GuestKib => "guest (ballooned)",
            Self::DomainKib => "domain in all",
            Self::LargestNFits => "largest N that fits",
        }
    }

    /// Colour and dash: a kind of domain keeps its colour, p50 is dashed.
    fn style(self) -> (&'static str, &'static str) {
        match self {
            Self::WarpedP50 => ("#1f77b4", "6,4"),
            Self::WarpedP99 => ("#1f77b4", ""),
            Self::UnwarpedP50 => ("#d62728", "6,4"),
            Self::UnwarpedP99 => ("#d62728", ""),
            Self::IdleP50 => ("#7f7f7f", "6,4"),
            Self::IdleP99 => ("#7f7f7f", ""),
            Self::HypervisorKib => ("#ff7f0e", "6,4"),
            Self::GuestKib => ("#9467bd", "6,4"),
            Self::DomainKib => ("#000000", ""),
            Self::LargestNFits => ("#2ca02c", ""),
        }
    }

    /// The figure of one run (latencies in µs, memory in KiB).
    fn of(self, r: &ReportFile) -> Option<f64> {
        let us = |kind: SeriesKind, p99: bool| {
            let s = r.latency.series(kind);
            (if p99 { s.p99_ns } else { s.p50_ns }).map(|ns| ns as f64 / 1e3)
        };
        let hypervisor = || {
            r.memory
                .hypervisor_bytes_per_domain
                .map(|b| b as f64 / 1024.0)
        };
        let guest = || Some(r.memory.ballooned_pages.as_ref()?.mean? * 4.0);
        match self {
            Self::WarpedP50 => us(SeriesKind::Warped, false),
            Self::WarpedP99 => us(SeriesKind::Warped, true),
            Self::UnwarpedP50 => us(SeriesKind::Unwarped, false),
            Self::UnwarpedP99 => us(SeriesKind::Unwarped, true),
            Self::IdleP50 => us(SeriesKind::Idle, false),
            Self::IdleP99 => us(SeriesKind::Idle, true),
            Self::HypervisorKib => hypervisor(),
            Self::GuestKib => guest(),
            Self::DomainKib => Some(hypervisor()? + guest()?),
            Self::LargestNFits => r.memory.largest_n.map(|n| n as f64),
        }
    }
}

/// The runs at one N on one CPU count.
#[derive(Clone, Debug, PartialEq)]
pub struct Level {
    pub n: u32,
    /// Indices into the page's runs.
    pub runs: Vec<usize>,
    /// Runs that broke (their first problem), which make this N fail the objective.
    pub broken: Vec<String>,
    pub figures: BTreeMap<Figure, Stat>,
}

/// What the objective says for one CPU count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `n` meets it, and every smaller measured N; `next` is the next measured N, which
    /// does not.
    Largest { n: u32, next: Option<u32> },
    /// Even the smallest measured N does not meet it.
    NoneMeets { smallest: u32 },
    /// No objective given, or no run measured warped latency.
    Unknown,
}

/// Whether the runs at `level` meet `objective_us`.
pub fn meets(level: &Level, objective_us: f64) -> bool {
    level.broken.is_empty()
        && level
            .figures
            .get(&Figure::WarpedP99)
            .is_some_and(|s| s.median <= objective_us)
}

/// The largest N that meets the objective, from below.
pub fn verdict(levels: &[Level], objective_us: Option<u64>) -> Verdict {
    let Some(objective) = objective_us.map(|us| us as f64) else {
        return Verdict::Unknown;
    };
    let measured: Vec<&Level> = levels
        .iter()
        .filter(|l| l.figures.contains_key(&Figure::WarpedP99) || !l.broken.is_empty())
        .collect();
    let Some(first) = measured.first() else {
        return Verdict::Unknown;
    };
    let passing = measured.iter().take_while(|l| meets(l, objective)).count();
    match passing {
        0 => Verdict::NoneMeets { smallest: first.n },
        k => Verdict::Largest {
            n: measured[k - 1].n,
            next: measured.get(k).map(|l| l.n),
        },
    }
}

/// The runs grouped by CPU count, then by N (ascending).
pub fn levels(runs: &[RunReport]) -> BTreeMap<u32, Vec<Level>> {
    let mut grouped: BTreeMap<u32, BTreeMap<u32, Vec<usize>>> = BTreeMap::new();
    for (index, run) in runs.iter().enumerate() {
        if let Some(config) = run.report.config() {
            grouped
                .entry(config.cpus)
                .or_default()
                .entry(config.n)
                .or_default()
                .push(index);
        }
    }
    grouped
        .into_iter()
        .map(|(cpus, by_n)| {
            let levels = by_n
                .into_iter()
                .map(|(n, indices)| {
                    let figures = Figure::ALL
                        .into_iter()
                        .filter_map(|figure| {
                            let values: Vec<f64> = indices
                                .iter()
                                .filter_map(|&i| figure.of(&runs[i].report))
                                .collect();
                            Some((figure, Stat::of(&values)?))
                        })
                        .collect();
                    let broken = indices
                        .iter()
                        .filter_map(|&i| runs[i].report.problems.first().cloned())
                        .collect();
                    Level {
                        n,
                        runs: indices,
                        broken,
                        figures,
                    }
                })
                .collect();
            (cpus, levels)
        })
        .collect()
}

fn line(levels: &[Level], figure: Figure, unit: &str) -> Line {
    let (colour, dash) = figure.style();
    Line {
        label: format!("{}{unit}", figure.label()),
        colour,
        dash,
        points: levels
            .iter()
            .filter_map(|l| {
                let s = l.figures.get(&figure)?;
                Some(Point {
                    x: f64::from(l.n),
                    y: s.median,
                    low: s.min,
                    high: s.max,
                })
            })
            .collect(),
    }
}

/// `1 CPU`, `2 CPUs`.
fn cpus_text(cpus: u32) -> String {
    format!("{cpus} CPU{}", if cpus == 1 { "" } else { "s" })
}

/// The sentence the page says about the objective on `cpus` CPUs.
pub fn verdict_text(verdict: Verdict, objective_us: Option<u64>, cpus: u32) -> String {
    match (verdict, objective_us) {
        (Verdict::Largest { n, next }, Some(us)) => {
            let beyond = match next {
                Some(next) => format!("; N={next}, the next measured, does not"),
                None => "; no larger N was measured".to_string(),
            };
            format!(
                "Largest N that meets warped p99 ≤ {us} µs on {}: {n}{beyond}.",
                cpus_text(cpus)
            )
        }
        (Verdict::NoneMeets { smallest }, Some(us)) => {
            format!("No measured N meets warped p99 ≤ {us} µs on {} (the smallest measured is N={smallest}).", cpus_text(cpus))
        }
        (_, Some(us)) => format!(
            "No run on {} measured warped latency: nothing to judge against {us} µs.",
            cpus_text(cpus)
        ),
        (_, None) => "No latency objective given (`P99_US=` / `--p99-us`).".to_string(),
    }
}

/// The whole page.
pub fn page(runs: &[RunReport], objective_us: Option<u64>) -> String {
    let by_cpus = levels(runs);
    let mut html = String::new();
    html.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<title>stress: capacity</title>\n<style>\n",
        "body { font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }\n",
        "table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }\n",
        "th { background: #f4f4f4; } td.text { text-align: left; } .verdict { font-size: 1.2em; font-weight: bold; }\n",
        ".broken { color: #b00; }\n</style>\n</head>\n<body>\n<h1>Capacity: latency and memory against N</h1>\n"
    ));
    let _ = writeln!(
        html,
        "<p>{} runs. Each point is the median of the runs at that N; the bar spans them. Latencies are timer lateness \
         (how late a domain's one-shot timer woke it) of the warped (latency-sensitive, 1 ms), unwarped (periodic, 1 ms) \
         and idle (100 ms) domains, as bucket low bounds (at most 6.25% under). Memory is what one domain costs: its \
         guest pages after ballooning plus the hypervisor's bytes beyond them.</p>",
        runs.len()
    );
    if by_cpus.is_empty() {
        html.push_str("<p class=\"broken\">No run has a config record: nothing to plot.</p>\n");
    }
    for (&cpus, levels) in &by_cpus {
        let verdict = verdict(levels, objective_us);
        let _ = writeln!(html, "<h2>{}</h2>", cpus_text(cpus));
        let _ = writeln!(
            html,
            "<p class=\"verdict\">{}</p>",
            escape(&verdict_text(verdict, objective_us, cpus))
        );
        let mut latency = Plot {
            title: format!("timer lateness against N, {}", cpus_text(cpus)),
            x_label: "N (stress domains)".into(),
            y_label: "µs (log scale)".into(),
            y_log: true,
            lines: Figure::LATENCY
                .into_iter()
                .map(|f| line(levels, f, ""))
                .collect(),
            ..Plot::default()
        };
        if let Some(us) = objective_us {
            latency.y_marks.push(Mark {
                at: us as f64,
                label: format!("objective: p99 ≤ {us} µs"),
            });
        }
        if let Verdict::Largest { n, .. } = verdict {
            latency.x_marks.push(Mark {
                at: f64::from(n),
                label: format!("N={n}"),
            });
        }
        html.push_str(&plot::render(&latency));
        let memory = Plot {
            title: format!("memory per domain against N, {}", cpus_text(cpus)),
            x_label: "N (stress domains)".into(),
            y_label: "KiB per domain".into(),
            y_log: false,
            lines: Figure::MEMORY
                .into_iter()
                .map(|f| line(levels, f, ""))
                .collect(),
            ..Plot::default()
        };
        html.push_str(&plot::render(&memory));
        level_table(&mut html, levels, objective_us);
    }
    run_table(&mut html, runs);
    html.push_str("</body>\n</html>\n");
    html
}

fn cell(stat: Option<&Stat>, decimals: usize) -> String {
    match stat {
        Some(s) if s.max > s.min => format!(
            "{:.*} <small>({:.*}-{:.*})</small>",
            decimals, s.median, decimals, s.min, decimals, s.max
        ),
        Some(s) => format!("{:.*}", decimals, s.median),
        None => "-".to_string(),
    }
}

fn level_table(html: &mut String, levels: &[Level], objective_us: Option<u64>) {
    html.push_str("<table>\n<tr><th>N</th><th>runs</th>");
    for figure in Figure::ALL {
        let unit = match figure {
            Figure::LargestNFits => "",
            f if Figure::LATENCY.contains(&f) => " µs",
            _ => " KiB",
        };
        let _ = write!(html, "<th>{}{unit}</th>", escape(figure.label()));
    }
    html.push_str("<th>objective</th></tr>\n");
    for level in levels {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td>",
            level.n,
            level.runs.len()
        );
        for figure in Figure::ALL {
            let decimals = if Figure::LATENCY.contains(&figure) || figure == Figure::LargestNFits {
                0
            } else {
                1
            };
            let _ = write!(
                html,
                "<td>{}</td>",
                cell(level.figures.get(&figure), decimals)
            );
        }
        let judged = match objective_us {
            None => "-".to_string(),
            Some(_) if !level.broken.is_empty() => format!(
                "<span class=\"broken\">broke: {}</span>",
                escape(&level.broken.join("; "))
            ),
            Some(us) if meets(level, us as f64) => "meets".to_string(),
            Some(_) => "misses".to_string(),
        };
        let _ = writeln!(html, "<td class=\"text\">{judged}</td></tr>");
    }
    html.push_str("</table>\n");
}

fn run_table(html: &mut String, runs: &[RunReport]) {
    html.push_str("<h2>Runs</h2>\n<table>\n<tr><th>source</th><th>N</th><th>CPUs</th><th>s</th><th>verdict</th><th>host noise</th><th>problems</th></tr>\n");
    for run in runs {
        let r = &run.report;
        let config = r.config();
        let field = |f: fn(crate::json::ConfigFile) -> u64| {
            config.map_or("-".to_string(), |c| f(c).to_string())
        };
        let host = r
            .run
            .host
            .as_ref()
            .map_or("not measured (a log re-read)".to_string(), |h| {
                let mut parts = Vec::new();
                if let Some(w) = h.vcpu_wait_percent {
                    parts.push(format!("vCPU wait {w:.1}%"));
                }
                if let Some(s) = h.steal_percent {
                    parts.push(format!("steal {s:.2}%"));
                }
                if let Some(p) = &h.probe {
                    parts.push(format!(
                        "probe {:.1}% lost, longest stall {:.1} ms",
                        p.lost_percent.unwrap_or(0.0),
                        p.longest_ms
                    ));
                }
                parts.join(", ")
            });
        let _ = writeln!(
            html,
            "<tr><td class=\"text\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td></tr>",
            escape(&run.source),
            field(|c| c.n.into()),
            field(|c| c.cpus.into()),
            field(|c| c.seconds),
            escape(&r.verdict),
            escape(&host),
            escape(&r.problems.join("; "))
        );
    }
    html.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svg::tests::well_formed;
    use crate::{analyse, synthetic};

    /// A synthetic run at `n` on `cpus` CPUs whose warped p99 is `p99_us`.
    fn run(n: usize, cpus: u32, p99_us: u64) -> RunReport {
        let log = synthetic::log(n).join("\n");
        let mut report = ReportFile::new(&analyse(&log, None, false));
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        if let Some(config) = report.run.config.as_mut() {
            config.cpus = cpus;
        }
        report.latency.timer_warped.p99_ns = Some(p99_us * 1000);
        RunReport {
            source: format!("n{n}-smp{cpus}/report.json"),
            report,
        }
    }

    /// The `<svg>` elements of a page.
    fn svgs(html: &str) -> Vec<&str> {
        html.match_indices("<svg ")
            .map(|(start, _)| &html[start..start + html[start..].find("</svg>").unwrap() + 6])
            .collect()
    }

    #[test]
    fn the_largest_n_is_judged_from_below() {
        let runs = vec![
            run(20, 2, 50),
            run(40, 2, 120),
            run(40, 2, 180),
            run(100, 2, 400),
            run(200, 2, 150),
        ];
        let by_cpus = levels(&runs);
        let levels = &by_cpus[&2];
        assert_eq!(
            levels.iter().map(|l| l.n).collect::<Vec<_>>(),
            [20, 40, 100, 200]
        );
        assert_eq!(levels[1].runs.len(), 2);
        let p99 = levels[1].figures[&Figure::WarpedP99];
        assert_eq!((p99.median, p99.min, p99.max), (150.0, 120.0, 180.0));
        assert_eq!(
            verdict(levels, Some(200)),
            Verdict::Largest {
                n: 40,
                next: Some(100)
            }
        );
        assert_eq!(
            verdict(levels, Some(500)),
            Verdict::Largest { n: 200, next: None }
        );
        assert_eq!(
            verdict(levels, Some(10)),
            Verdict::NoneMeets { smallest: 20 }
        );
        assert_eq!(verdict(levels, None), Verdict::Unknown);
    }

    #[test]
    fn a_broken_run_fails_its_n() {
        let mut runs = vec![run(20, 2, 50), run(40, 2, 60)];
        runs[1]
            .report
            .problems
            .push("d3 reported error what=early_timer".into());
        let by_cpus = levels(&runs);
        assert_eq!(by_cpus[&2][1].broken.len(), 1);
        assert_eq!(
            verdict(&by_cpus[&2], Some(100)),
            Verdict::Largest {
                n: 20,
                next: Some(40)
            }
        );
        let html = page(&runs, Some(100));
        assert!(
            html.contains("broke: d3 reported error what=early_timer"),
            "{html}"
        );
    }

    #[test]
    fn the_page_plots_every_cpu_count_and_says_the_verdict() {
        let runs = vec![
            run(20, 2, 50),
            run(100, 2, 150),
            run(300, 2, 900),
            run(20, 1, 80),
            run(100, 1, 700),
        ];
        let html = page(&runs, Some(200));
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
        assert!(html.contains("Largest N that meets warped p99 ≤ 200 µs on 2 CPUs: 100; N=300, the next measured, does not."), "{html}");
        assert!(
            html.contains("Largest N that meets warped p99 ≤ 200 µs on 1 CPU: 20; N=100"),
            "{html}"
        );
        let plots = svgs(&html);
        assert_eq!(plots.len(), 4, "latency and memory for each CPU count");
        for svg in &plots {
            well_formed(svg).unwrap();
        }
        // Latency: six series, the objective and the largest N marked.
        assert_eq!(plots[0].matches("<polyline").count(), 6);
        assert!(plots[0].contains("objective: p99 ≤ 200 µs") && plots[0].contains("N=20"));
        assert!(plots[2].contains("N=100"));
        // Memory: the synthetic runs of 20 ballooned to 100.8 pages on average, and the
        // hypervisor took 7096 bytes per domain.
        assert_eq!(plots[1].matches("<polyline").count(), 3);
        let level = &levels(&runs)[&2][0];
        let kib = level.figures[&Figure::DomainKib].median;
        assert!(
            (kib - (100.8 * 4.0 + 7096.0 / 1024.0)).abs() < 1e-9,
            "{kib}"
        );
        assert!(html.contains("not measured (a log re-read)"));
        assert!(!html.contains("<script"), "self-contained, nothing to run");
    }

    #[test]
    fn without_an_objective_or_runs_the_page_says_so() {
        let html = page(&[run(20, 2, 50)], None);
        assert!(html.contains("No latency objective given"));
        assert!(svgs(&html).iter().all(|s| well_formed(s).is_ok()));
        let empty = page(&[], Some(100));
        assert!(empty.contains("No run has a config record"));
    }
}
