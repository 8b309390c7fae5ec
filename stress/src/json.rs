//! A hand-written JSON serializer: a small [`Value`] tree, its pretty printer, and the
//! mapping of an [`Analysis`] onto it (the layout of `report.json`).
//!
//! Called by the crate's `write_outputs`. It only serializes: it never computes a figure
//! (non-finite numbers become `null`, missing figures too), and it never parses JSON.

use std::fmt::Write;

use crate::hist::bucket_low;
use crate::report::{
    CreationReport, FairnessReport, LatencyReport, MemoryReport, RunInfo, Series, Spread,
};
use crate::Analysis;

/// A JSON value. Objects keep their keys in insertion order.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(n: $t) -> Self {
                Self::Int(n as i128)
            }
        }
    )*};
}
from_int!(u16, u32, u64, usize, i64);

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Self::Float(x)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Self::Null, Into::into)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Self::Array(v.into_iter().map(Into::into).collect())
    }
}

/// An object from `(key, value)` pairs.
pub fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

impl Value {
    /// Pretty-printed, two spaces per level, with a final newline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Self::Float(x) if x.is_finite() => {
                let _ = write!(out, "{x}");
            }
            Self::Float(_) => out.push_str("null"),
            Self::Str(s) => write_string(out, s),
            Self::Array(items) => write_list(out, depth, '[', ']', items, |out, item, depth| {
                item.write(out, depth)
            }),
            Self::Object(pairs) => {
                write_list(out, depth, '{', '}', pairs, |out, (key, value), depth| {
                    write_string(out, key);
                    out.push_str(": ");
                    value.write(out, depth);
                })
            }
        }
    }
}

/// Writes `open`, the items one per line, `close`; `[]`/`{}` when empty.
fn write_list<T>(
    out: &mut String,
    depth: usize,
    open: char,
    close: char,
    items: &[T],
    write_item: impl Fn(&mut String, &T, usize),
) {
    out.push(open);
    for (i, item) in items.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        indent(out, depth + 1);
        write_item(out, item, depth + 1);
    }
    if !items.is_empty() {
        out.push('\n');
        indent(out, depth);
    }
    out.push(close);
}

fn indent(out: &mut String, depth: usize) {
    out.extend(std::iter::repeat_n("  ", depth));
}

/// A JSON string with the escapes RFC 8259 requires.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---- the report's layout ------------------------------------------------------------

/// The whole analysis as `report.json` holds it.
pub fn analysis(a: &Analysis) -> Value {
    let r = &a.report;
    object([
        ("verdict", (if a.passed() { "pass" } else { "fail" }).into()),
        ("targets_enforced", a.enforce_targets.into()),
        ("failures", a.failures().into()),
        ("run", run(&r.run)),
        ("memory", memory(&r.memory)),
        ("latency", latency(&r.latency)),
        ("fairness", fairness(&r.fairness)),
        ("creation", creation(&r.creation)),
        (
            "targets",
            Value::Array(a.checks.iter().map(check).collect()),
        ),
        (
            "problems",
            r.problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .into(),
        ),
        (
            "warnings",
            r.warnings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .into(),
        ),
    ])
}

fn run(run: &RunInfo) -> Value {
    let config = run.config.map(|c| {
        object([
            ("n", c.n.into()),
            ("cpus", c.cpus.into()),
            ("seconds", c.seconds.into()),
            ("hogs", c.hogs.into()),
            ("latency", c.latency.into()),
            ("pairs", c.pairs.into()),
            ("periodic", c.periodic.into()),
            ("idle", c.idle.into()),
            ("mem_kib", c.mem_kib.into()),
            ("max_kib", c.max_kib.into()),
        ])
    });
    object([
        ("config", config.into()),
        ("cpus_online", run.cpus_online.into()),
        ("tsc_mhz", run.tsc_mhz.into()),
        ("created", run.created.into()),
        ("done", run.done.into()),
        ("failed", run.failed.clone().into()),
        ("log_lines", run.log_lines.into()),
        ("qemu", run.qemu.map(|q| q.to_string()).into()),
        ("host", run.host.clone().into()),
        (
            "hypervisor_sched",
            Value::Object(
                run.sched
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect(),
            ),
        ),
    ])
}

fn spread(s: Option<Spread>) -> Value {
    s.map_or(Value::Null, |s| {
        object([
            ("count", s.count.into()),
            ("mean", s.mean.into()),
            ("min", s.min.into()),
            ("max", s.max.into()),
        ])
    })
}

fn memory(m: &MemoryReport) -> Value {
    let free = m.free_kib;
    let regions = m
        .window
        .regions
        .iter()
        .map(|r| {
            object([
                ("name", r.name.as_str().into()),
                ("used_kib", r.used_kib.into()),
                ("size_kib", r.size_kib.into()),
            ])
        })
        .collect();
    object([
        (
            "free_kib",
            object([
                ("before", free.before.into()),
                ("created", free.created.into()),
                ("ballooned", free.ballooned.into()),
                ("destroyed", free.destroyed.into()),
            ]),
        ),
        ("leaked_kib", m.leaked_kib.into()),
        ("heap_growth_bytes", m.heap_growth_bytes.into()),
        (
            "hypervisor_bytes_per_domain",
            m.hypervisor_bytes_per_domain.into(),
        ),
        (
            "hypervisor_reported_bytes_per_domain",
            m.hypervisor_reported_bytes_per_domain.into(),
        ),
        ("guest_pages", spread(m.guest_pages)),
        ("ballooned_pages", spread(m.ballooned_pages)),
        ("minimal_domain_kib", m.minimal_domain_kib.into()),
        ("largest_n", m.largest_n.into()),
        ("largest_n_heap", m.largest_n_heap.into()),
        (
            "window",
            object([
                ("used_kib", m.window.used_kib.into()),
                ("free_kib", m.window.free_kib.into()),
                ("domains_that_fit", m.window.domains_that_fit.into()),
                ("regions", Value::Array(regions)),
            ]),
        ),
    ])
}

fn latency(l: &LatencyReport) -> Value {
    let series = l
        .series
        .iter()
        .map(|s| (s.kind.key().to_string(), series(s)))
        .collect();
    object([
        ("cpus", l.cpus.into()),
        ("series", Value::Object(series)),
        ("unwarped_over_warped_p99", l.p99_ratio.into()),
        ("lost_answers", l.lost_answers.into()),
    ])
}

fn series(s: &Series) -> Value {
    let stat = |f: fn(&crate::report::Stats) -> u64| s.stats.as_ref().map(f).into();
    let buckets = s
        .hist
        .buckets()
        .map(|(b, count)| Value::from(vec![bucket_low(b), count]))
        .collect();
    object([
        ("label", s.kind.label().into()),
        ("domains", s.domains.into()),
        ("samples", s.hist.samples().into()),
        ("p50_ns", stat(|s| s.p50_ns)),
        ("p99_ns", stat(|s| s.p99_ns)),
        ("p999_ns", stat(|s| s.p999_ns)),
        ("max_ns", stat(|s| s.max_ns)),
        ("buckets_low_ns_count", Value::Array(buckets)),
    ])
}

fn fairness(f: &FairnessReport) -> Value {
    let hogs = f
        .hogs
        .iter()
        .map(|h| {
            object([
                ("domid", h.hog.domid.0.into()),
                ("cpu", h.hog.cpu.into()),
                ("weight", h.hog.weight.into()),
                ("cpu_time_ns", h.hog.cpu_time_ns.into()),
                ("share", h.share.into()),
                ("expected", h.expected.into()),
                ("error", h.error.into()),
            ])
        })
        .collect();
    object([
        ("hogs", Value::Array(hogs)),
        ("max_error", f.max_error.into()),
    ])
}

fn creation(c: &CreationReport) -> Value {
    let milestones = c
        .milestones
        .iter()
        .map(|m| object([("index", m.index.into()), ("ns", m.ns.into())]))
        .collect();
    object([
        ("count", c.count.into()),
        ("milestones", Value::Array(milestones)),
        ("ratio_last_first", c.ratio_last_first.into()),
        ("ratio_100th_first", c.ratio_100th_first.into()),
        ("total_ns", c.total_ns.into()),
        ("first_100_ns", c.first_100_ns.into()),
        ("early_median_ns", c.early_median_ns.into()),
        ("late_median_ns", c.late_median_ns.into()),
        ("late_from_index", c.late_from.into()),
        ("slowdown", c.slowdown.into()),
    ])
}

fn check(c: &crate::targets::Check) -> Value {
    object([
        ("key", c.key.into()),
        ("goal", c.goal.as_str().into()),
        ("measured", c.measured.as_str().into()),
        ("status", c.status.word().into()),
    ])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal JSON reader for the tests: checks the syntax of the whole text and
    /// returns the object keys it met, in order.
    pub(crate) fn validate(text: &str) -> Result<Vec<String>, String> {
        let mut reader = Reader {
            bytes: text.as_bytes(),
            at: 0,
            keys: Vec::new(),
        };
        reader.value()?;
        reader.space();
        if reader.at != reader.bytes.len() {
            return Err(format!("trailing text at {}", reader.at));
        }
        Ok(reader.keys)
    }

    struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
        keys: Vec<String>,
    }

    impl Reader<'_> {
        fn space(&mut self) {
            while self
                .bytes
                .get(self.at)
                .is_some_and(|b| b.is_ascii_whitespace())
            {
                self.at += 1;
            }
        }

        fn expect(&mut self, b: u8) -> Result<(), String> {
            self.space();
            if self.bytes.get(self.at) == Some(&b) {
                self.at += 1;
                Ok(())
            } else {
                Err(format!("expected `{}` at {}", b as char, self.at))
            }
        }

        fn value(&mut self) -> Result<(), String> {
            self.space();
            match self.bytes.get(self.at) {
                Some(b'{') => self.list(b'}', true),
                Some(b'[') => self.list(b']', false),
                Some(b'"') => self.string().map(drop),
                Some(b'-' | b'0'..=b'9') => self.number(),
                _ => ["null", "true", "false"]
                    .into_iter()
                    .find(|w| self.bytes[self.at..].starts_with(w.as_bytes()))
                    .map(|w| self.at += w.len())
                    .ok_or_else(|| format!("bad value at {}", self.at)),
            }
        }

        fn list(&mut self, close: u8, keyed: bool) -> Result<(), String> {
            self.at += 1;
            self.space();
            if self.bytes.get(self.at) == Some(&close) {
                self.at += 1;
                return Ok(());
            }
            loop {
                if keyed {
                    self.space();
                    let key = self.string()?;
                    self.keys.push(key);
                    self.expect(b':')?;
                }
                self.value()?;
                self.space();
                match self.bytes.get(self.at) {
                    Some(b',') => self.at += 1,
                    Some(&b) if b == close => {
                        self.at += 1;
                        return Ok(());
                    }
                    _ => {
                        return Err(format!(
                            "expected `,` or `{}` at {}",
                            close as char, self.at
                        ))
                    }
                }
            }
        }

        fn string(&mut self) -> Result<String, String> {
            self.expect(b'"')?;
            let start = self.at;
            loop {
                match self.bytes.get(self.at) {
                    None => return Err("unterminated string".to_string()),
                    Some(b'"') => break,
                    Some(b'\\') => self.at += 2,
                    Some(&b) if b < 0x20 => return Err(format!("raw control byte at {}", self.at)),
                    Some(_) => self.at += 1,
                }
            }
            self.at += 1;
            Ok(String::from_utf8_lossy(&self.bytes[start..self.at - 1]).into_owned())
        }

        fn number(&mut self) -> Result<(), String> {
            let start = self.at;
            while self
                .bytes
                .get(self.at)
                .is_some_and(|b| b"-+.eE0123456789".contains(b))
            {
                self.at += 1;
            }
            let text =
                std::str::from_utf8(&self.bytes[start..self.at]).map_err(|e| e.to_string())?;
            text.parse::<f64>()
                .map(drop)
                .map_err(|_| format!("bad number `{text}`"))
        }
    }

    #[test]
    fn renders_nested_values() {
        let v = object([
            ("a", 1u64.into()),
            (
                "b",
                Value::Array(vec![Value::Null, true.into(), 2.5f64.into()]),
            ),
            ("c", object([])),
            ("d", Value::Array(vec![])),
        ]);
        assert_eq!(
            v.render(),
            "{\n  \"a\": 1,\n  \"b\": [\n    null,\n    true,\n    2.5\n  ],\n  \"c\": {},\n  \"d\": []\n}\n"
        );
        assert_eq!(validate(&v.render()).unwrap(), ["a", "b", "c", "d"]);
    }

    #[test]
    fn escapes_strings_and_nulls_non_finite_numbers() {
        let v = Value::Array(vec![
            "q\"\\\n\t\u{1}é".into(),
            f64::NAN.into(),
            f64::INFINITY.into(),
            None::<u64>.into(),
        ]);
        let text = v.render();
        assert!(text.contains(r#""q\"\\\n\t\u0001é""#), "{text}");
        assert_eq!(text.matches("null").count(), 3);
        assert!(validate(&text).is_ok());
    }

    #[test]
    fn the_validator_can_fail() {
        for bad in [
            "{",
            "{\"a\" 1}",
            "[1,]",
            "[1 2]",
            "\"x",
            "nul",
            "{} x",
            "[\"\u{1}\"]",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
