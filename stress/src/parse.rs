//! The serial-log reader: finds the stress records in a console log and reads each with
//! the `protocol` crate ([`protocol::record::Record::parse`], the same definition the
//! guests print with), plus the hypervisor's own `summary: key=value` lines and the
//! console's rate-limit notices; everything it cannot read becomes a [`Warning`] with the
//! line number. Whose line it is comes from its prefix, read with
//! [`protocol::console`]: `(dN) ` (a `console_io` write), `(dN:name) ` (a console ring the
//! hypervisor drained) or `(d0) [dN] ` (a console ring domain 0 relayed: `make stress
//! IO=1`); all three read the same.
//!
//! Called by the crate's `analyse` on a whole log. It only reads lines: it never
//! interprets a run (that is `collect` and `report`), and it never panics, whatever the
//! bytes: serial logs hold boot noise, torn and glued lines and lines cut short. Lines that
//! are neither stress nor summary lines are ignored silently. Records borrow from the log's
//! text.

use std::fmt;

pub use protocol::record::{
    Balloon, Config, Creation, DomainInfo, HistPart, MemPhase, MemSample, Outcome, WorkerResult,
};
pub use protocol::{DomId, Role};

use protocol::console::{self, Found, Suppressed};
use protocol::record::{self, PREFIX as STRESS};

/// A domain id as the report names it: `dN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dom(pub DomId);

impl fmt::Display for Dom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0 .0)
    }
}

/// One line's meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A guest's `stress: ...` record.
    Stress(record::Record<'a>),
    /// A hypervisor `summary: key=value` line.
    Summary { key: &'a str, value: &'a str },
    /// `(dN) [K lines suppressed by the console rate limit]` (or relayed: `(d0) [dN] [...]`).
    Suppressed { lines: u64 },
}

/// A record with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// 1-based line number in the log.
    pub line: usize,
    /// Whose line it is (`protocol::console::Origin::domid`: N of `(dN) ` or `(dN:name) `,
    /// M of domain 0's relayed `(d0) [dM] `); none for hypervisor lines.
    pub source: Option<DomId>,
    pub record: Record<'a>,
}

/// Something in the log that could not be used as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// 1-based line number, when the warning is about one line.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The records and warnings of a whole log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedLog<'a> {
    pub entries: Vec<Entry<'a>>,
    pub warnings: Vec<Warning>,
    /// Lines read.
    pub lines: usize,
}

const SUMMARY: &str = "summary: ";

/// Parses a whole serial log.
pub fn parse_log(text: &str) -> ParsedLog<'_> {
    let mut log = ParsedLog::default();
    for (index, raw) in text.lines().enumerate() {
        log.lines += 1;
        parse_into(index + 1, raw, &mut log);
    }
    log
}

/// Parses one line into `log`.
fn parse_into<'a>(line: usize, raw: &'a str, log: &mut ParsedLog<'a>) {
    let text = raw.trim_end_matches(['\r', '\n']);
    let warn = |log: &mut ParsedLog, message: String| {
        log.warnings.push(Warning {
            line: Some(line),
            message,
        })
    };
    match classify(text) {
        Kind::Noise => {}
        Kind::Guest {
            source,
            body,
            glued,
            clean,
        } => {
            if glued {
                warn(
                    log,
                    format!("several stress records on one line, kept the last: {text}"),
                );
            } else if !clean {
                warn(
                    log,
                    format!("unexpected text before the domain prefix: {text}"),
                );
            }
            match parse_guest_body(body) {
                Ok(record) => log.entries.push(Entry {
                    line,
                    source: Some(source),
                    record,
                }),
                Err(error) => warn(log, format!("{error}: {text}")),
            }
        }
        Kind::Summary(body) => match parse_summary(body) {
            Some(record) => log.entries.push(Entry {
                line,
                source: None,
                record,
            }),
            None => warn(log, format!("malformed summary line: {text}")),
        },
        Kind::Orphan => warn(log, format!("stress line without a `(dN)` prefix: {text}")),
    }
}

/// What a console line is.
#[derive(Debug, PartialEq, Eq)]
enum Kind<'a> {
    /// Neither a stress nor a summary line.
    Noise,
    /// A guest line worth reading: its body starts after the domain's prefix. `glued`: more than one
    /// stress record on the line; `clean`: only the tag and a level word precede it.
    Guest {
        source: DomId,
        body: &'a str,
        glued: bool,
        clean: bool,
    },
    /// A hypervisor summary line; the body starts after `summary: `.
    Summary(&'a str),
    /// Has `stress: ` but no domain prefix.
    Orphan,
}

/// Sorts a line by its prefixes.
fn classify(text: &str) -> Kind<'_> {
    let guests: Vec<Found<'_>> = console::find_all(text).collect();
    let readable = guests
        .iter()
        .rev()
        .find(|found| found.body.starts_with(STRESS) || Suppressed::parse(found.body).is_some());
    if let Some(found) = readable {
        let records = guests
            .iter()
            .filter(|found| found.body.starts_with(STRESS))
            .count();
        let clean = is_tag_and_level(&text[..found.at]);
        return Kind::Guest {
            source: found.origin.domid(),
            body: found.body,
            glued: records > 1,
            clean,
        };
    }
    if guests.is_empty() {
        // The firmware's last output (escape sequences, no newline) may precede the tag.
        let tagged = text.find("[cpu").map_or(text, |at| &text[at..]);
        if let Some(body) = strip_tag_and_level(tagged).strip_prefix(SUMMARY) {
            return Kind::Summary(body);
        }
        if text.contains(STRESS) {
            return Kind::Orphan;
        }
    }
    Kind::Noise
}

/// Removes the `[cpuC  seconds] ` tag and an `ERROR `/`WARN ` level word.
fn strip_tag_and_level(text: &str) -> &str {
    let untagged = match text.strip_prefix('[').and_then(|t| t.split_once("] ")) {
        Some((_, rest)) => rest,
        None => text,
    };
    ["ERROR ", "WARN "]
        .into_iter()
        .find_map(|level| untagged.strip_prefix(level))
        .unwrap_or(untagged)
}

/// True when `prefix` is empty or only a tag and a level word.
fn is_tag_and_level(prefix: &str) -> bool {
    strip_tag_and_level(prefix).is_empty()
}

/// Parses what follows a domain's prefix: a stress record or a rate-limit notice.
fn parse_guest_body(body: &str) -> Result<Record<'_>, record::LineError<'_>> {
    if body.starts_with(STRESS) {
        return record::Record::parse(body).map(Record::Stress);
    }
    match Suppressed::parse(body) {
        Some(Ok(Suppressed(lines))) => Ok(Record::Suppressed { lines }),
        Some(Err(count)) => Err(record::LineError::BadNumber {
            key: "suppressed",
            value: count,
        }),
        None => Err(record::LineError::NotStress),
    }
}

/// `key=value`; a value may itself hold `=` or `/`.
fn parse_summary(body: &str) -> Option<Record<'_>> {
    let (key, value) = body.trim().split_once('=')?;
    if key.is_empty() || key.contains(' ') || value.contains(' ') {
        return None;
    }
    Some(Record::Summary { key, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> ParsedLog<'_> {
        parse_log(line)
    }

    fn record(line: &str) -> Record<'_> {
        let log = one(line);
        assert!(log.warnings.is_empty(), "{:?}", log.warnings);
        assert_eq!(log.entries.len(), 1, "{line}");
        log.entries[0].record.clone()
    }

    fn warned(line: &str) -> String {
        let log = one(line);
        assert!(log.entries.is_empty(), "{:?}", log.entries);
        assert_eq!(log.warnings.len(), 1, "{line}");
        log.warnings[0].message.clone()
    }

    #[test]
    fn reads_tagged_records_with_the_protocol() {
        let config = "[cpu0     1.000000] (d0) stress: config n=100 cpus=2 seconds=10 hogs=2 latency=4 pairs=4 periodic=8 idle=80 mem_kib=512 max_kib=1024";
        let Record::Stress(record::Record::Config(c)) = record(config) else {
            panic!("not a config")
        };
        assert_eq!((c.n, c.cpus, c.idle, c.balloon_down), (100, 2, 80, None));
        assert_eq!(
            record("[cpu1     2.345678] (d5) stress: balloon domid=5 down_pages=16 up_pages=8 tot_pages=120"),
            Record::Stress(record::Record::Balloon(Balloon {
                domid: DomId(5),
                down_pages: 16,
                up_pages: 8,
                tot_pages: 120
            }))
        );
        assert_eq!(
            record("[cpu0 9.0] WARN (d8) stress: error domid=8 what=balloon_down"),
            Record::Stress(record::Record::Error(record::GuestError {
                domid: DomId(8),
                what: "balloon_down"
            }))
        );
    }

    #[test]
    fn relayed_and_ring_lines_read_as_the_domain_s_own() {
        let lines = [
            "[cpu1     2.345678] (d5) stress: balloon domid=5 down_pages=16 up_pages=8 tot_pages=120",
            "[cpu1     2.345678] (d0) [d5] stress: balloon domid=5 down_pages=16 up_pages=8 tot_pages=120",
            "[cpu1     2.345678] (d5:stress5) stress: balloon domid=5 down_pages=16 up_pages=8 tot_pages=120",
        ];
        let direct = parse_log(lines[0]);
        for line in lines {
            let log = parse_log(line);
            assert!(log.warnings.is_empty(), "{line}: {:?}", log.warnings);
            assert_eq!(log.entries, direct.entries, "{line}");
            assert_eq!(log.entries[0].source, Some(DomId(5)));
        }
        // A worker's bad command line (domid=0) is charged to the relayed domain.
        let log = parse_log("(d0) [d9] stress: error domid=0 what=options");
        assert_eq!(log.entries[0].source, Some(DomId(9)));
        // Domain 0's own records stay domain 0's.
        let log = parse_log("[cpu0 1.0] (d0) stress: done ok");
        assert_eq!(log.entries[0].source, Some(DomId(0)));
        // Domain 0's relay notices, as the hypervisor's.
        let log = parse_log("[cpu0 1.0] (d0) [d9] [12 lines suppressed by the console rate limit]");
        assert_eq!(log.entries[0].record, Record::Suppressed { lines: 12 });
        assert_eq!(log.entries[0].source, Some(DomId(9)));
        // Only domain 0 relays: another domain's `[dN]` is its own (and not a record).
        assert!(parse_log("(d5) [d7] stress: done ok").entries.is_empty());
    }

    #[test]
    fn keeps_the_source_prefix_and_line_number() {
        let log = parse_log("noise\r\n[cpu1 0.1] (d12) stress: error domid=0 what=options\r\n");
        assert_eq!(log.lines, 2);
        assert_eq!(log.entries[0].line, 2);
        assert_eq!(log.entries[0].source, Some(DomId(12)));
    }

    #[test]
    fn reads_summary_lines_with_and_without_level() {
        assert_eq!(
            record("[cpu0     0.123456] summary: window.heap_kib=12/64"),
            Record::Summary {
                key: "window.heap_kib",
                value: "12/64"
            }
        );
        assert_eq!(
            record("[cpu0     9.0] ERROR summary: run=fail"),
            Record::Summary {
                key: "run",
                value: "fail"
            }
        );
        assert_eq!(
            record("\u{1b}[0m\u{1b}[2J[cpu0     0.000100] summary: cpus.online=2"),
            Record::Summary {
                key: "cpus.online",
                value: "2"
            }
        );
        // A guest cannot forge a hypervisor summary.
        assert!(parse_log("(d3) summary: run=pass").entries.is_empty());
    }

    #[test]
    fn reads_rate_limit_notices() {
        let log = parse_log("[cpu0 1.0] (d9) [12 lines suppressed by the console rate limit]");
        assert_eq!(log.entries[0].record, Record::Suppressed { lines: 12 });
        assert_eq!(log.entries[0].source, Some(DomId(9)));
    }

    #[test]
    fn ignores_ordinary_lines() {
        let log = parse_log("SeaBIOS\n[cpu0 0.1] booting\n(d3) hello from d3\n\n\u{1b}[2J");
        assert!(log.entries.is_empty());
        assert!(log.warnings.is_empty());
        assert_eq!(log.lines, 5);
    }

    #[test]
    fn malformed_records_become_warnings_with_the_reason() {
        let cases = [
            ("(d1) stress: result domid=1 role=hog", "missing `loops=`"),
            ("(d1) stress: hist domid=1 role=ping part=0 buckets=976:1", "bad histogram entry `976:1`"),
            ("(d1) stress: teleport domid=1", "unknown kind `teleport`"),
            ("(d1) [many lines suppressed by the console rate limit]", "`suppressed=many` is not a number"),
        ];
        for (line, expected) in cases {
            let message = warned(line);
            assert!(message.starts_with(expected), "{line}: {message}");
            assert!(message.ends_with(line), "{message}");
        }
    }

    #[test]
    fn orphan_and_bad_summary_lines_warn() {
        assert!(warned("[cpu0 1.0] stress: done ok").contains("without a `(dN)` prefix"));
        assert!(warned("[cpu0 1.0] summary: no equals sign").contains("malformed summary"));
    }

    #[test]
    fn glued_lines_keep_the_last_record() {
        let log = parse_log("[cpu0 1.0] (d3) stress: hist domid=3 role=ping part=0 buckets=1:[cpu1 1.0] (d4) stress: result domid=4 role=hog loops=5");
        assert_eq!(log.entries.len(), 1);
        assert_eq!(log.entries[0].source, Some(DomId(4)));
        assert_eq!(log.warnings.len(), 1);
        assert!(log.warnings[0].message.contains("several stress records"));
    }

    #[test]
    fn garbage_before_the_prefix_warns_but_parses() {
        let log = parse_log("\u{0}\u{7f}xx(d4) stress: result domid=4 role=hog loops=5");
        assert_eq!(log.entries.len(), 1);
        assert!(log.warnings[0].message.contains("unexpected text"));
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let alphabet: Vec<char> =
            "(d0) stress:=,[]: 0123456789abcdefhistresultdomid\u{e9}\u{1f600}\n\r"
                .chars()
                .collect();
        for _ in 0..2_000 {
            let mut line = String::new();
            for _ in 0..(x % 120) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                line.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = parse_log(&line);
            let _ = parse_log(&format!("(d1) stress: {line}"));
        }
        let _ = parse_log("(d");
        let _ = parse_log("(d) stress: x");
        let _ = parse_log("(d99999999999999999999) stress: done ok");
        let _ = parse_log("[");
    }
}
