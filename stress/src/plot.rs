//! A small line plot drawn by hand as inline SVG: a figure against N for the capacity page
//! (`capacity`). Each series is a polyline through its points with a bar for the range of
//! the runs at each point; the y axis is linear from 0 or logarithmic by decades; dashed
//! horizontal marks show an objective, a dashed vertical mark the largest N that meets it.
//!
//! Called by `capacity`. It only draws what it is given: it never computes a figure.

use std::fmt::Write;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 56.0;

/// One point: the median at `x`, and the range of the runs there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub low: f64,
    pub high: f64,
}

/// One series.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub label: String,
    pub colour: &'static str,
    /// An SVG dash pattern, empty for a solid line.
    pub dash: &'static str,
    pub points: Vec<Point>,
}

/// A dashed mark across the plot, with its label.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    pub at: f64,
    pub label: String,
}

/// A whole plot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// A logarithmic y axis (by decades) instead of a linear one from 0.
    pub y_log: bool,
    pub lines: Vec<Line>,
    /// Horizontal marks (y values).
    pub y_marks: Vec<Mark>,
    /// Vertical marks (x values).
    pub x_marks: Vec<Mark>,
}

/// The ranges drawn.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
    y_log: bool,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        let at = (x - self.x.0) / (self.x.1 - self.x.0);
        LEFT + at.clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        let (y, lo, hi) = if self.y_log {
            (y.max(1e-9).log10(), self.y.0.log10(), self.y.1.log10())
        } else {
            (y, self.y.0, self.y.1)
        };
        let at = (y - lo) / (hi - lo);
        HEIGHT - BOTTOM - at.clamp(0.0, 1.0) * (HEIGHT - TOP - BOTTOM)
    }
}

/// About six round steps between 0 and `max`: 1, 2 or 5 times a power of ten.
fn step(max: f64) -> f64 {
    let raw = (max / 6.0).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * power)
}

fn frame(plot: &Plot) -> Frame {
    let points = plot.lines.iter().flat_map(|l| l.points.iter());
    let xs: Vec<f64> = points
        .clone()
        .map(|p| p.x)
        .chain(plot.x_marks.iter().map(|m| m.at))
        .collect();
    let ys: Vec<f64> = points
        .flat_map(|p| [p.y, p.low, p.high])
        .chain(plot.y_marks.iter().map(|m| m.at))
        .filter(|y| y.is_finite() && (!plot.y_log || *y > 0.0))
        .collect();
    let x_max = xs.iter().copied().fold(0.0, f64::max).max(1.0);
    let x_step = step(x_max);
    let x = (0.0, (x_max / x_step).ceil() * x_step);
    let y = if plot.y_log {
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(0.0, f64::max);
        if ys.is_empty() {
            (1.0, 1000.0)
        } else {
            let lo = 10f64.powf(lo.log10().floor());
            let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
            (lo, hi)
        }
    } else {
        let hi = ys.iter().copied().fold(0.0, f64::max).max(1.0);
        let s = step(hi);
        (0.0, (hi / s).ceil() * s)
    };
    Frame {
        x,
        y,
        y_log: plot.y_log,
    }
}

/// A number as an axis label: no needless decimals.
fn label(v: f64) -> String {
    if v >= 1.0 || v == 0.0 {
        format!("{}", (v * 1000.0).round() / 1000.0)
    } else {
        format!("{v:.3}").trim_end_matches('0').to_string()
    }
}

/// The plot as an `<svg>` element.
pub fn render(plot: &Plot) -> String {
    let f = frame(plot);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        escape(&plot.title)
    );
    axes(&mut svg, &f, plot);
    for mark in &plot.y_marks {
        let y = f.py(mark.at);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#444" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}" class="mark">{}</text>"##,
            WIDTH - RIGHT,
            LEFT + 4.0,
            y - 4.0,
            escape(&mark.label)
        );
    }
    for mark in &plot.x_marks {
        let x = f.px(mark.at);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#2ca02c" stroke-dasharray="3,3"/><text x="{:.1}" y="{:.1}" class="mark" fill="#2ca02c">{}</text>"##,
            HEIGHT - BOTTOM,
            x + 4.0,
            TOP + 12.0,
            escape(&mark.label)
        );
    }
    for (row, line) in plot.lines.iter().enumerate() {
        series(&mut svg, &f, line);
        let y = TOP + 10.0 + row as f64 * 18.0;
        let x = WIDTH - RIGHT + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="3" stroke-dasharray="{}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
            x + 24.0,
            line.colour,
            line.dash,
            x + 30.0,
            y + 4.0,
            escape(&line.label)
        );
    }
    if plot.lines.iter().all(|l| l.points.is_empty()) {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no runs with this figure</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            HEIGHT / 2.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn axes(svg: &mut String, f: &Frame, plot: &Plot) {
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    svg.push_str("<g stroke=\"#ddd\">\n");
    let x_step = step(f.x.1);
    let x_ticks: Vec<f64> = (0..=((f.x.1 / x_step).round() as u32))
        .map(|i| f64::from(i) * x_step)
        .collect();
    for &x in &x_ticks {
        let px = f.px(x);
        let _ = writeln!(
            svg,
            r#"<line x1="{px:.1}" y1="{y0}" x2="{px:.1}" y2="{y1}"/>"#
        );
    }
    let y_ticks: Vec<f64> = if f.y_log {
        let (lo, hi) = (f.y.0.log10().round() as i32, f.y.1.log10().round() as i32);
        (lo..=hi).map(|d| 10f64.powi(d)).collect()
    } else {
        let s = step(f.y.1);
        (0..=((f.y.1 / s).round() as u32))
            .map(|i| f64::from(i) * s)
            .collect()
    };
    for &y in &y_ticks {
        let py = f.py(y);
        let _ = writeln!(
            svg,
            r#"<line x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}"/>"#
        );
    }
    svg.push_str("</g>\n");
    let _ = writeln!(
        svg,
        r#"<rect x="{x0}" y="{y1}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
        x1 - x0,
        y0 - y1
    );
    for &x in &x_ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            f.px(x),
            y0 + 16.0,
            label(x)
        );
    }
    for &y in &y_ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            f.py(y) + 4.0,
            label(y)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 14.0,
        escape(&plot.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (y0 + y1) / 2.0,
        escape(&plot.y_label)
    );
}

fn series(svg: &mut String, f: &Frame, line: &Line) {
    let points: Vec<String> = line
        .points
        .iter()
        .map(|p| format!("{:.1},{:.1}", f.px(p.x), f.py(p.y)))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline class="series" fill="none" stroke="{}" stroke-width="2" stroke-dasharray="{}" points="{}"/>"#,
        line.colour,
        line.dash,
        points.join(" ")
    );
    for p in &line.points {
        let (x, y) = (f.px(p.x), f.py(p.y));
        if p.high > p.low {
            let _ = writeln!(
                svg,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{}" stroke-width="1"/>"#,
                f.py(p.low),
                f.py(p.high),
                line.colour
            );
        }
        let _ = writeln!(
            svg,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{}"/>"#,
            line.colour
        );
    }
}

/// Escapes text for XML and HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svg::tests::well_formed;

    fn point(x: f64, y: f64) -> Point {
        Point {
            x,
            y,
            low: y * 0.9,
            high: y * 1.2,
        }
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(step(1000.0), 200.0);
        assert_eq!(step(600.0), 100.0);
        assert_eq!(step(7.0), 2.0);
        assert_eq!(step(0.3), 0.05);
    }

    #[test]
    fn draws_lines_marks_and_ranges() {
        let plot = Plot {
            title: "latency <N>".into(),
            x_label: "N".into(),
            y_label: "µs".into(),
            y_log: true,
            lines: vec![Line {
                label: "warped p99".into(),
                colour: "#1f77b4",
                dash: "",
                points: vec![
                    point(100.0, 180.0),
                    point(300.0, 1440.0),
                    point(1000.0, 61_000.0),
                ],
            }],
            y_marks: vec![Mark {
                at: 1000.0,
                label: "objective".into(),
            }],
            x_marks: vec![Mark {
                at: 300.0,
                label: "largest N".into(),
            }],
        };
        let svg = render(&plot);
        let names = well_formed(&svg).unwrap();
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 1);
        assert_eq!(names.iter().filter(|n| *n == "circle").count(), 3);
        assert!(svg.contains("latency &lt;N&gt;"));
        // Decades from 100 µs to 100 ms, N from 0 to 1000.
        assert!(svg.contains(">100000<") && svg.contains(">100<") && svg.contains(">1000<"));
        let f = frame(&plot);
        assert_eq!((f.x, f.y), ((0.0, 1000.0), (100.0, 100_000.0)));
        assert_eq!(f.py(100.0), HEIGHT - BOTTOM);
        assert_eq!(f.py(100_000.0), TOP);
    }

    #[test]
    fn an_empty_plot_says_so() {
        let svg = render(&Plot {
            title: "t".into(),
            lines: vec![Line {
                label: "x".into(),
                colour: "red",
                dash: "",
                points: vec![],
            }],
            ..Plot::default()
        });
        assert!(well_formed(&svg).is_ok());
        assert!(svg.contains("no runs with this figure"));
    }
}
