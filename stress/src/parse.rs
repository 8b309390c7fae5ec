//! The serial-log parser: turns each console line into a typed [`Record`] as
//! `stress/PROTOCOL.md` defines them (`(dN) stress: <kind> key=value ...` from guests,
//! `summary: key=value` from the hypervisor), and everything it cannot read into
//! [`Warning`]s with the line number.
//!
//! Called by the crate's `analyse` entry point on a whole log. It only reads lines: it
//! never interprets a run (that is `collect` and `report`), and it never panics, whatever
//! the bytes: serial logs hold boot noise, torn and glued lines and lines cut short.
//! Lines that are neither stress nor summary lines are ignored silently.

use std::fmt;

use crate::hist::Bucket;

/// A domain id, as in `(dN)` and `domid=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomId(pub u16);

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0)
    }
}

/// What a stress domain does (`role=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Idle,
    Periodic,
    Latency,
    Hog,
    Ping,
    Pong,
}

impl Role {
    /// Every role, in the order the report lists them.
    pub const ALL: [Role; 6] = [
        Role::Idle,
        Role::Periodic,
        Role::Latency,
        Role::Hog,
        Role::Ping,
        Role::Pong,
    ];

    /// The role's word on the console.
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Periodic => "periodic",
            Self::Latency => "latency",
            Self::Hog => "hog",
            Self::Ping => "ping",
            Self::Pong => "pong",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.name() == name)
    }
}

/// When domain 0 sampled memory (`mem phase=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemPhase {
    Before,
    Created,
    Ballooned,
    Destroyed,
}

impl MemPhase {
    /// Every phase, in run order.
    pub const ALL: [MemPhase; 4] = [
        Self::Before,
        Self::Created,
        Self::Ballooned,
        Self::Destroyed,
    ];

    /// The phase's word on the console.
    pub fn name(self) -> &'static str {
        match self {
            Self::Before => "before",
            Self::Created => "created",
            Self::Ballooned => "ballooned",
            Self::Destroyed => "destroyed",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|phase| phase.name() == name)
    }
}

/// `stress: config ...`: what domain 0 is about to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
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
}

/// `stress: mem phase=P free_kib=F heap_bytes=H domains=D`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemSample {
    pub phase: MemPhase,
    pub free_kib: u64,
    pub heap_bytes: u64,
    pub domains: u64,
}

/// `stress: create index=I domid=D role=R cpu=C ns=T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Creation {
    pub index: u32,
    pub domid: DomId,
    pub role: Role,
    pub cpu: u32,
    pub ns: u64,
}

/// `stress: domain domid=D role=R weight=W warp=0|1 cpu_time_ns=T tot_pages=P
/// [window_cpu_ns=C]`: `window_cpu_ns` is a hog's CPU time over the window in which every
/// hog ran (see domain 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    pub domid: DomId,
    pub role: Role,
    pub weight: u64,
    pub warp: bool,
    pub cpu_time_ns: u64,
    pub tot_pages: u64,
    pub window_cpu_ns: Option<u64>,
}

/// `stress: balloon domid=D down_pages=X up_pages=Y tot_pages=P`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balloon {
    pub domid: DomId,
    pub down_pages: u64,
    pub up_pages: u64,
    pub tot_pages: u64,
}

/// What a `result` line says, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// periodic, latency, ping: the histogram's sample count and exact maximum; ping also
    /// says how many answers never came.
    Measured {
        samples: u64,
        max_ns: u64,
        lost: Option<u64>,
    },
    /// hog: loops done.
    Hog { loops: u64 },
    /// pong: events answered.
    Pong { answers: u64 },
}

/// `stress: result domid=D role=R ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerResult {
    pub domid: DomId,
    pub role: Role,
    pub outcome: Outcome,
}

/// `stress: hist domid=D role=R part=K buckets=i:c,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistPart {
    pub domid: DomId,
    pub role: Role,
    pub part: u32,
    pub buckets: Vec<(Bucket, u64)>,
}

/// `stress: error domid=D what=W`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestError {
    pub domid: DomId,
    pub what: String,
}

/// One line's meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Config(Config),
    Mem(MemSample),
    Create(Creation),
    CreateTotal {
        ns: u64,
    },
    Domain(DomainInfo),
    Done,
    Failed {
        reason: String,
    },
    Balloon(Balloon),
    Result(WorkerResult),
    Hist(HistPart),
    Error(GuestError),
    /// A hypervisor `summary: key=value` line.
    Summary {
        key: String,
        value: String,
    },
    /// `(dN) [K lines suppressed by the console rate limit]`.
    Suppressed {
        lines: u64,
    },
}

/// A record with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number in the log.
    pub line: usize,
    /// The `(dN)` prefix; none for hypervisor lines.
    pub source: Option<DomId>,
    pub record: Record,
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

/// Why a stress or summary line could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineError {
    UnknownKind(String),
    MissingKey(&'static str),
    BadNumber { key: &'static str, value: String },
    BadValue { key: &'static str, value: String },
    BadBucket(String),
    StrayWord(String),
    NoKind,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKind(kind) => write!(f, "unknown kind `{kind}`"),
            Self::MissingKey(key) => write!(f, "missing `{key}=`"),
            Self::BadNumber { key, value } => write!(f, "`{key}={value}` is not a number"),
            Self::BadValue { key, value } => write!(f, "`{key}={value}` is not a known value"),
            Self::BadBucket(entry) => write!(f, "bad histogram entry `{entry}`"),
            Self::StrayWord(word) => write!(f, "stray word `{word}`"),
            Self::NoKind => f.write_str("no kind after `stress:`"),
        }
    }
}

/// The records and warnings of a whole log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedLog {
    pub entries: Vec<Entry>,
    pub warnings: Vec<Warning>,
    /// Lines read.
    pub lines: usize,
}

const STRESS: &str = "stress: ";
const SUMMARY: &str = "summary: ";
const SUPPRESSED: &str = "lines suppressed";

/// Parses a whole serial log.
pub fn parse_log(text: &str) -> ParsedLog {
    let mut log = ParsedLog::default();
    for (index, raw) in text.lines().enumerate() {
        log.lines += 1;
        parse_into(index + 1, raw, &mut log);
    }
    log
}

/// Parses one line into `log`.
fn parse_into(line: usize, raw: &str, log: &mut ParsedLog) {
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
    /// A guest line worth reading: its body starts after `(dN) `. `glued`: more than one
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
    let guests = guest_prefixes(text);
    let readable = guests.iter().rev().find(|&&(_, _, body)| {
        body.starts_with(STRESS) || (body.starts_with('[') && body.contains(SUPPRESSED))
    });
    if let Some(&(start, source, body)) = readable {
        let records = guests
            .iter()
            .filter(|(_, _, b)| b.starts_with(STRESS))
            .count();
        let clean = is_tag_and_level(&text[..start]);
        return Kind::Guest {
            source,
            body,
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

/// Every `(dN) ` in the line: (its offset, N, the text after it).
fn guest_prefixes(text: &str) -> Vec<(usize, DomId, &str)> {
    text.match_indices("(d")
        .filter_map(|(start, _)| {
            let rest = &text[start + 2..];
            let digits = rest.find(|c: char| !c.is_ascii_digit())?;
            let id = rest[..digits].parse().ok()?;
            let body = rest[digits..].strip_prefix(") ")?;
            Some((start, DomId(id), body))
        })
        .collect()
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

/// Parses what follows `(dN) `: a stress record or a rate-limit notice.
fn parse_guest_body(body: &str) -> Result<Record, LineError> {
    match body.strip_prefix(STRESS) {
        Some(stress) => parse_stress(stress),
        None => parse_suppressed(body),
    }
}

/// `[K lines suppressed by the console rate limit]`.
fn parse_suppressed(body: &str) -> Result<Record, LineError> {
    let count = body.trim_start_matches('[').split(' ').next().unwrap_or("");
    let lines = count.parse().map_err(|_| LineError::BadNumber {
        key: "suppressed",
        value: count.to_string(),
    })?;
    Ok(Record::Suppressed { lines })
}

/// `key=value`; a value may itself hold `=` or `/`.
fn parse_summary(body: &str) -> Option<Record> {
    let (key, value) = body.trim().split_once('=')?;
    if key.is_empty() || key.contains(' ') || value.contains(' ') {
        return None;
    }
    Some(Record::Summary {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// Parses `<kind> key=value ...`.
fn parse_stress(text: &str) -> Result<Record, LineError> {
    let mut words = text.split_whitespace();
    let kind = words.next().ok_or(LineError::NoKind)?;
    let fields = Fields::new(words);
    match kind {
        "config" => fields.config().map(Record::Config),
        "mem" => fields.mem().map(Record::Mem),
        "create" if fields.has("total_ns") => Ok(Record::CreateTotal {
            ns: fields.number("total_ns")?,
        }),
        "create" => fields.creation().map(Record::Create),
        "domain" => fields.domain().map(Record::Domain),
        "done" => fields.done(),
        "FAILED" => Ok(Record::Failed {
            reason: fields.word("reason")?.to_string(),
        }),
        "balloon" => fields.balloon().map(Record::Balloon),
        "result" => fields.result().map(Record::Result),
        "hist" => fields.hist().map(Record::Hist),
        "error" => Ok(Record::Error(GuestError {
            domid: fields.domid()?,
            what: fields.word("what")?.to_string(),
        })),
        other => Err(LineError::UnknownKind(other.to_string())),
    }
}

/// The `key=value` words of one line, plus any bare words. Unknown keys are kept and
/// ignored, so that newer guests can add fields; the first of a repeated key wins.
struct Fields<'a> {
    pairs: Vec<(&'a str, &'a str)>,
    bare: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    fn new(words: impl Iterator<Item = &'a str>) -> Self {
        let mut fields = Self {
            pairs: Vec::new(),
            bare: Vec::new(),
        };
        for word in words {
            match word.split_once('=') {
                Some(pair) => fields.pairs.push(pair),
                None => fields.bare.push(word),
            }
        }
        fields
    }

    fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|&(k, _)| k == key)
    }

    fn word(&self, key: &'static str) -> Result<&'a str, LineError> {
        self.pairs
            .iter()
            .find(|&&(k, _)| k == key)
            .map(|&(_, v)| v)
            .ok_or(LineError::MissingKey(key))
    }

    /// Fails on bare words: only `done ok` has one.
    fn no_bare_words(&self) -> Result<(), LineError> {
        match self.bare.first() {
            Some(word) => Err(LineError::StrayWord(word.to_string())),
            None => Ok(()),
        }
    }

    fn number<T: std::str::FromStr>(&self, key: &'static str) -> Result<T, LineError> {
        let value = self.word(key)?;
        value.parse().map_err(|_| LineError::BadNumber {
            key,
            value: value.to_string(),
        })
    }

    fn optional_number(&self, key: &'static str) -> Result<Option<u64>, LineError> {
        if self.has(key) {
            self.number(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn domid(&self) -> Result<DomId, LineError> {
        self.number("domid").map(DomId)
    }

    fn role(&self) -> Result<Role, LineError> {
        let value = self.word("role")?;
        Role::from_name(value).ok_or_else(|| LineError::BadValue {
            key: "role",
            value: value.to_string(),
        })
    }

    fn flag(&self, key: &'static str) -> Result<bool, LineError> {
        match self.word(key)? {
            "0" => Ok(false),
            "1" => Ok(true),
            other => Err(LineError::BadValue {
                key,
                value: other.to_string(),
            }),
        }
    }

    fn config(&self) -> Result<Config, LineError> {
        self.no_bare_words()?;
        Ok(Config {
            n: self.number("n")?,
            cpus: self.number("cpus")?,
            seconds: self.number("seconds")?,
            hogs: self.number("hogs")?,
            latency: self.number("latency")?,
            pairs: self.number("pairs")?,
            periodic: self.number("periodic")?,
            idle: self.number("idle")?,
            mem_kib: self.number("mem_kib")?,
            max_kib: self.number("max_kib")?,
        })
    }

    fn mem(&self) -> Result<MemSample, LineError> {
        self.no_bare_words()?;
        let phase = self.word("phase")?;
        Ok(MemSample {
            phase: MemPhase::from_name(phase).ok_or_else(|| LineError::BadValue {
                key: "phase",
                value: phase.to_string(),
            })?,
            free_kib: self.number("free_kib")?,
            heap_bytes: self.number("heap_bytes")?,
            domains: self.number("domains")?,
        })
    }

    fn creation(&self) -> Result<Creation, LineError> {
        self.no_bare_words()?;
        Ok(Creation {
            index: self.number("index")?,
            domid: self.domid()?,
            role: self.role()?,
            cpu: self.number("cpu")?,
            ns: self.number("ns")?,
        })
    }

    fn domain(&self) -> Result<DomainInfo, LineError> {
        self.no_bare_words()?;
        Ok(DomainInfo {
            domid: self.domid()?,
            role: self.role()?,
            weight: self.number("weight")?,
            warp: self.flag("warp")?,
            cpu_time_ns: self.number("cpu_time_ns")?,
            tot_pages: self.number("tot_pages")?,
            window_cpu_ns: self.optional_number("window_cpu_ns")?,
        })
    }

    fn done(&self) -> Result<Record, LineError> {
        match (self.bare.as_slice(), self.pairs.as_slice()) {
            (["ok"], []) => Ok(Record::Done),
            (_, [(key, value), ..]) => Err(LineError::StrayWord(format!("{key}={value}"))),
            _ => Err(LineError::BadValue {
                key: "done",
                value: self.bare.join(" "),
            }),
        }
    }

    fn balloon(&self) -> Result<Balloon, LineError> {
        self.no_bare_words()?;
        Ok(Balloon {
            domid: self.domid()?,
            down_pages: self.number("down_pages")?,
            up_pages: self.number("up_pages")?,
            tot_pages: self.number("tot_pages")?,
        })
    }

    fn result(&self) -> Result<WorkerResult, LineError> {
        self.no_bare_words()?;
        let role = self.role()?;
        let outcome = match role {
            Role::Hog => Outcome::Hog {
                loops: self.number("loops")?,
            },
            Role::Pong => Outcome::Pong {
                answers: self.number("answers")?,
            },
            Role::Idle | Role::Periodic | Role::Latency | Role::Ping => Outcome::Measured {
                samples: self.number("samples")?,
                max_ns: self.number("max_ns")?,
                lost: self.optional_number("lost")?,
            },
        };
        Ok(WorkerResult {
            domid: self.domid()?,
            role,
            outcome,
        })
    }

    fn hist(&self) -> Result<HistPart, LineError> {
        self.no_bare_words()?;
        let buckets = self.word("buckets")?;
        Ok(HistPart {
            domid: self.domid()?,
            role: self.role()?,
            part: self.number("part")?,
            buckets: buckets
                .split(',')
                .map(parse_bucket)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// `i:c` with a valid bucket index and a positive count.
fn parse_bucket(entry: &str) -> Result<(Bucket, u64), LineError> {
    let bad = || LineError::BadBucket(entry.to_string());
    let (index, count) = entry.split_once(':').ok_or_else(bad)?;
    let bucket = index.parse().ok().and_then(Bucket::new).ok_or_else(bad)?;
    let count = count.parse().ok().filter(|&c| c > 0).ok_or_else(bad)?;
    Ok((bucket, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> ParsedLog {
        parse_log(line)
    }

    fn record(line: &str) -> Record {
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
    fn reads_every_dom0_kind() {
        let config = "[cpu0     1.000000] (d0) stress: config n=100 cpus=2 seconds=10 hogs=2 latency=4 pairs=4 periodic=8 idle=80 mem_kib=512 max_kib=1024";
        assert_eq!(
            record(config),
            Record::Config(Config {
                n: 100,
                cpus: 2,
                seconds: 10,
                hogs: 2,
                latency: 4,
                pairs: 4,
                periodic: 8,
                idle: 80,
                mem_kib: 512,
                max_kib: 1024
            })
        );
        assert_eq!(
            record(
                "[cpu0  1.0] (d0) stress: mem phase=ballooned free_kib=7 heap_bytes=8 domains=9"
            ),
            Record::Mem(MemSample {
                phase: MemPhase::Ballooned,
                free_kib: 7,
                heap_bytes: 8,
                domains: 9
            })
        );
        assert_eq!(
            record("(d0) stress: create index=3 domid=4 role=pong cpu=1 ns=1234"),
            Record::Create(Creation {
                index: 3,
                domid: DomId(4),
                role: Role::Pong,
                cpu: 1,
                ns: 1234
            })
        );
        assert_eq!(
            record("(d0) stress: create total_ns=99"),
            Record::CreateTotal { ns: 99 }
        );
        assert_eq!(
            record(
                "(d0) stress: domain domid=5 role=hog weight=2 warp=0 cpu_time_ns=77 tot_pages=96"
            ),
            Record::Domain(DomainInfo {
                domid: DomId(5),
                role: Role::Hog,
                weight: 2,
                warp: false,
                cpu_time_ns: 77,
                tot_pages: 96,
                window_cpu_ns: None,
            })
        );
        assert_eq!(
            record("(d0) stress: domain domid=5 role=hog weight=2 warp=0 cpu_time_ns=77 tot_pages=96 window_cpu_ns=60"),
            Record::Domain(DomainInfo {
                domid: DomId(5),
                role: Role::Hog,
                weight: 2,
                warp: false,
                cpu_time_ns: 77,
                tot_pages: 96,
                window_cpu_ns: Some(60),
            })
        );
        assert_eq!(record("(d0) stress: done ok"), Record::Done);
        assert_eq!(
            record("(d0) stress: FAILED reason=create"),
            Record::Failed {
                reason: "create".into()
            }
        );
    }

    #[test]
    fn reads_every_worker_kind() {
        assert_eq!(
            record("[cpu1     2.345678] (d5) stress: balloon domid=5 down_pages=16 up_pages=8 tot_pages=120"),
            Record::Balloon(Balloon { domid: DomId(5), down_pages: 16, up_pages: 8, tot_pages: 120 })
        );
        assert_eq!(
            record("(d5) stress: result domid=5 role=ping samples=10 max_ns=300 lost=2"),
            Record::Result(WorkerResult {
                domid: DomId(5),
                role: Role::Ping,
                outcome: Outcome::Measured {
                    samples: 10,
                    max_ns: 300,
                    lost: Some(2)
                }
            })
        );
        assert_eq!(
            record("(d6) stress: result domid=6 role=hog loops=42"),
            Record::Result(WorkerResult {
                domid: DomId(6),
                role: Role::Hog,
                outcome: Outcome::Hog { loops: 42 }
            })
        );
        assert_eq!(
            record("(d7) stress: result domid=7 role=pong answers=9"),
            Record::Result(WorkerResult {
                domid: DomId(7),
                role: Role::Pong,
                outcome: Outcome::Pong { answers: 9 }
            })
        );
        assert_eq!(
            record("(d5) stress: hist domid=5 role=latency part=1 buckets=3:2,400:1"),
            Record::Hist(HistPart {
                domid: DomId(5),
                role: Role::Latency,
                part: 1,
                buckets: vec![(Bucket::new(3).unwrap(), 2), (Bucket::new(400).unwrap(), 1)]
            })
        );
        assert_eq!(
            record("(d8) stress: error domid=8 what=balloon_down"),
            Record::Error(GuestError {
                domid: DomId(8),
                what: "balloon_down".into()
            })
        );
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
                key: "window.heap_kib".into(),
                value: "12/64".into()
            }
        );
        assert_eq!(
            record("[cpu0     9.0] ERROR summary: run=fail"),
            Record::Summary {
                key: "run".into(),
                value: "fail".into()
            }
        );
        assert_eq!(
            record("\u{1b}[0m\u{1b}[2J[cpu0     0.000100] summary: cpus.online=2"),
            Record::Summary {
                key: "cpus.online".into(),
                value: "2".into()
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
    fn ignores_unknown_keys_for_forward_compatibility() {
        assert_eq!(
            record("(d0) stress: create total_ns=5 extra=1"),
            Record::CreateTotal { ns: 5 }
        );
    }

    #[test]
    fn malformed_lines_become_warnings() {
        let cases = [
            ("(d1) stress: result domid=1 role=hog", "missing `loops=`"),
            (
                "(d1) stress: result domid=1 role=hog loops=12x",
                "`loops=12x` is not a number",
            ),
            (
                "(d1) stress: result domid=99999 role=hog loops=1",
                "`domid=99999` is not a number",
            ),
            (
                "(d1) stress: result domid=1 role=boss loops=1",
                "`role=boss` is not a known value",
            ),
            (
                "(d1) stress: hist domid=1 role=ping part=0 buckets=",
                "bad histogram entry ``",
            ),
            (
                "(d1) stress: hist domid=1 role=ping part=0 buckets=976:1",
                "bad histogram entry `976:1`",
            ),
            (
                "(d1) stress: hist domid=1 role=ping part=0 buckets=3:0",
                "bad histogram entry `3:0`",
            ),
            (
                "(d1) stress: hist domid=1 role=ping part=0 buckets=3",
                "bad histogram entry `3`",
            ),
            ("(d1) stress: teleport domid=1", "unknown kind `teleport`"),
            ("(d1) stress: ", "no kind after `stress:`"),
            ("(d0) stress: done", "`done=` is not a known value"),
            (
                "(d0) stress: done ok now",
                "`done=ok now` is not a known value",
            ),
            (
                "(d0) stress: mem phase=later free_kib=1 heap_bytes=1 domains=1",
                "`phase=later` is not a known value",
            ),
            (
                "(d0) stress: domain domid=1 role=hog weight=1 warp=2 cpu_time_ns=1 tot_pages=1",
                "`warp=2` is not a known value",
            ),
            (
                "(d0) stress: create index=1 domid=1 role=hog cpu=1 ns=1 oops",
                "stray word `oops`",
            ),
        ];
        for (line, expected) in cases {
            let message = warned(line);
            assert!(message.starts_with(expected), "{line}: {message}");
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
