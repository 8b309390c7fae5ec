//! The latency plot (`latency.svg`): the cumulative distribution of timer lateness for
//! warped (`latency`) and unwarped (`periodic`) domains and of ping-pong round trips,
//! drawn by hand as SVG.
//!
//! The x axis is the value in µs on a log scale; the y axis is the CDF with its tail
//! stretched (`-log10(1 - F)`), so that p50, p90, p99, p99.9 and p99.99 are evenly
//! spaced grid lines and the tails, where warping matters, are readable. Called by the
//! crate's `write_outputs`; it only draws what the report computed.

use std::fmt::Write;

use crate::hist::bucket_low;
use crate::report::{LatencyReport, Series, SeriesKind};

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 590.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
/// Room for the title and, under it, the legend (one row per series).
const TOP: f64 = 126.0;
const BOTTOM: f64 = 64.0;
/// The highest tail level drawn: 4 is p99.99.
const TAIL_LEVELS: f64 = 4.0;
/// The legend's first row and row height, in px.
const LEGEND_TOP: f64 = 56.0;
const LEGEND_ROW: f64 = 20.0;
/// The y grid: (tail level, label).
const Y_GRID: [(f64, &str); 6] = [
    (0.0, "0%"),
    (std::f64::consts::LOG10_2, "p50"),
    (1.0, "p90"),
    (2.0, "p99"),
    (3.0, "p99.9"),
    (4.0, "p99.99"),
];

/// The plot's scales: decades of µs across, tail levels up.
struct Frame {
    min_decade: i32,
    max_decade: i32,
}

impl Frame {
    fn x(&self, us: f64) -> f64 {
        let span = f64::from(self.max_decade - self.min_decade);
        let at = (us.max(1e-3).log10() - f64::from(self.min_decade)) / span;
        LEFT + at.clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, tail_level: f64) -> f64 {
        let at = (tail_level / TAIL_LEVELS).clamp(0.0, 1.0);
        HEIGHT - BOTTOM - at * (HEIGHT - TOP - BOTTOM)
    }
}

/// The colour and dash of a series.
fn style(kind: SeriesKind) -> (&'static str, &'static str) {
    match kind {
        SeriesKind::Warped => ("#1f77b4", ""),
        SeriesKind::Unwarped => ("#d62728", ""),
        SeriesKind::Idle => ("#7f7f7f", "2,3"),
        SeriesKind::PingPong => ("#2ca02c", "6,4"),
    }
}

/// `-log10(1 - F)`, capped at the top of the plot.
fn tail_level(fraction: f64) -> f64 {
    let rest = 1.0 - fraction;
    if rest <= 10f64.powf(-TAIL_LEVELS) {
        TAIL_LEVELS
    } else {
        -rest.log10()
    }
}

/// The whole plot; `title` names the run.
pub fn latency_plot(latency: &LatencyReport, title: &str) -> String {
    let drawn: Vec<&Series> = latency
        .series
        .iter()
        .filter(|s| !s.hist.is_empty())
        .collect();
    let frame = frame(&drawn);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    grid(&mut svg, &frame);
    for series in &drawn {
        curve(&mut svg, &frame, series);
    }
    if drawn.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">no latency samples in the log</text>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
    }
    legend(&mut svg, &drawn);
    svg.push_str("</svg>\n");
    svg
}

/// Decades covering every drawn value, at least two.
fn frame(series: &[&Series]) -> Frame {
    let values = series
        .iter()
        .flat_map(|s| s.hist.buckets().map(|(b, _)| (bucket_low(b), b.end())));
    let (low, high) = values.fold((u64::MAX, 0), |(lo, hi), (l, h)| (lo.min(l), hi.max(h)));
    let decade = |ns: u64| (ns.max(1) as f64 / 1e3).log10();
    let (mut min_decade, mut max_decade) = if high == 0 {
        (0, 3)
    } else {
        (decade(low).floor() as i32, decade(high).ceil() as i32)
    };
    if max_decade - min_decade < 2 {
        min_decade = max_decade - 2;
    }
    max_decade = max_decade.max(min_decade + 2);
    Frame {
        min_decade,
        max_decade,
    }
}

/// Axes, grid lines and their labels.
fn grid(svg: &mut String, frame: &Frame) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (frame.y(0.0), frame.y(TAIL_LEVELS));
    svg.push_str("<g stroke=\"#ccc\" stroke-width=\"1\">\n");
    for decade in frame.min_decade..=frame.max_decade {
        let x = frame.x(10f64.powi(decade));
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}"/>"#
        );
    }
    for (level, _) in Y_GRID {
        let y = frame.y(level);
        let _ = writeln!(
            svg,
            r#"<line x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}"/>"#
        );
    }
    svg.push_str("</g>\n");
    let _ = writeln!(
        svg,
        r#"<rect x="{x0}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
        x1 - x0,
        y0 - y1
    );
    for decade in frame.min_decade..=frame.max_decade {
        let x = frame.x(10f64.powi(decade));
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y0 + 18.0,
            decade_label(decade)
        );
    }
    for (level, label) in Y_GRID {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            x0 - 8.0,
            frame.y(level) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">lateness / round trip (µs, log scale)</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">samples at or below (CDF, tail stretched)</text>"#,
        (y0 + y1) / 2.0
    );
}

/// `10^decade` µs as a plain number: 0.01, 0.1, 1, 10, ...
fn decade_label(decade: i32) -> String {
    if decade >= 0 {
        format!("{}", 10u64.pow(decade.unsigned_abs()))
    } else {
        format!("{:.*}", decade.unsigned_abs() as usize, 10f64.powi(decade))
    }
}

/// One series as a polyline: across each non-empty bucket the CDF rises from the
/// fraction below it to the fraction at its end; across empty buckets it stays flat.
fn curve(svg: &mut String, frame: &Frame, series: &Series) {
    let (colour, dash) = style(series.kind);
    let mut points = String::new();
    let mut below = 0.0;
    for ((bucket, _), (end_ns, fraction)) in series.hist.buckets().zip(series.hist.cdf()) {
        for (ns, f) in [(bucket_low(bucket), below), (end_ns, fraction)] {
            let _ = write!(
                points,
                "{:.1},{:.1} ",
                frame.x(ns as f64 / 1e3),
                frame.y(tail_level(f))
            );
        }
        below = fraction;
    }
    let _ = writeln!(
        svg,
        r#"<polyline class="series" id="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/>"#,
        series.kind.key(),
        points.trim_end()
    );
}

/// The legend, between the title and the plot (so that it never hides a curve): one
/// row per drawn series.
fn legend(svg: &mut String, drawn: &[&Series]) {
    for (row, series) in drawn.iter().enumerate() {
        let (colour, dash) = style(series.kind);
        let p99 = series.stats.map_or(String::new(), |s| {
            format!(", p99 {:.1} µs", s.p99_ns as f64 / 1e3)
        });
        let text = format!(
            "{} ({} domains, {} samples{p99})",
            series.kind.label(),
            series.domains,
            series.hist.samples()
        );
        let y = LEGEND_TOP + row as f64 * LEGEND_ROW;
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="3" stroke-dasharray="{dash}"/>"#,
            LEFT + 28.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
            LEFT + 36.0,
            y + 4.0,
            escape(&text)
        );
    }
}

/// Escapes text for XML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hist::Histogram;
    use crate::report::Stats;

    /// Checks that every tag is closed in order; returns the element names met.
    pub(crate) fn well_formed(svg: &str) -> Result<Vec<String>, String> {
        let mut open: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').ok_or("unclosed `<`")? + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match open.pop() {
                    Some(top) if top == name => {}
                    other => return Err(format!("`</{name}>` closes {other:?}")),
                }
                continue;
            }
            if !tag.matches('"').count().is_multiple_of(2) {
                return Err(format!("unbalanced quotes in <{tag}>"));
            }
            let name = tag
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches('/')
                .to_string();
            names.push(name.clone());
            if !tag.ends_with('/') {
                open.push(name);
            }
        }
        if open.is_empty() {
            Ok(names)
        } else {
            Err(format!("unclosed {open:?}"))
        }
    }

    fn series(kind: SeriesKind, values: &[u64]) -> Series {
        let mut hist = Histogram::new();
        values.iter().for_each(|&v| hist.record(v));
        Series {
            kind,
            domains: 1,
            stats: Stats::of(&hist),
            hist,
        }
    }

    fn report(series: Vec<Series>) -> LatencyReport {
        LatencyReport {
            cpus: Some(2),
            series,
            p99_ratio: None,
            lost_answers: 0,
        }
    }

    #[test]
    fn draws_each_series_with_a_legend() {
        let latency = report(vec![
            series(SeriesKind::Warped, &[10_000, 12_000, 50_000]),
            series(SeriesKind::Unwarped, &[100_000, 400_000]),
            series(SeriesKind::PingPong, &[]),
        ]);
        let svg = latency_plot(&latency, "n=3 <2 CPUs>");
        assert!(svg.starts_with("<svg "));
        assert!(svg.ends_with("</svg>\n"));
        let names = well_formed(&svg).unwrap();
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 2);
        assert!(svg.contains(r#"id="timer_warped""#) && svg.contains(r#"id="timer_unwarped""#));
        assert!(
            !svg.contains(r#"id="ping_pong_rtt""#),
            "empty series are not drawn"
        );
        assert!(
            svg.contains("timer lateness, warped (latency) (1 domains, 3 samples, p99 49.2 µs)")
        );
        assert!(svg.contains("µs, log scale") && svg.contains(">p99.9<"));
        assert!(svg.contains("n=3 &lt;2 CPUs&gt;"));
    }

    #[test]
    fn empty_plot_says_so() {
        let svg = latency_plot(&report(vec![]), "empty");
        assert!(well_formed(&svg).is_ok());
        assert!(svg.contains("no latency samples"));
    }

    #[test]
    fn the_checker_can_fail() {
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg>").is_err());
        assert!(well_formed("<svg a=\"x></svg>").is_err());
    }

    #[test]
    fn scales() {
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(3), "1000");
        assert_eq!(tail_level(0.0), 0.0);
        assert!((tail_level(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(tail_level(1.0), TAIL_LEVELS);
        let frame = Frame {
            min_decade: 0,
            max_decade: 2,
        };
        assert_eq!(frame.x(1.0), LEFT);
        assert_eq!(frame.x(100.0), WIDTH - RIGHT);
        assert_eq!(frame.y(0.0), HEIGHT - BOTTOM);
        assert_eq!(frame.y(TAIL_LEVELS), TOP);
    }
}
