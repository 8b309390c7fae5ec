//! The console records of the stress run: `stress: <kind> key=value ...`, one per line, as
//! domain 0 and the workers print them (the hypervisor prefixes each with `(dN) ` and its
//! `[cpuC  seconds] ` tag) and as the host tool reads them back. `stress/PROTOCOL.md`
//! says what each means; this module is their only definition: [`Record`]'s `Display`
//! writes a line, [`Record::parse`] reads one, and [`hist_lines`] cuts a histogram into
//! `hist` records of at most [`LINE_MAX`] characters. Round trips are tested here.
//!
//! Reading is strict about what a record needs (a missing or malformed field is a
//! [`LineError`]) and lenient about what it does not know (unknown keys are ignored, so
//! that newer guests can add fields; the first of a repeated key wins). Everything here
//! borrows from the line: no allocation. It never decides what a record means for a run:
//! the host tool does.

use core::fmt::{self, Write};

use arrayvec::ArrayString;

use crate::histogram::{Bucket, Histogram};
use crate::keyvalue::{write_pair, Fields};
use crate::{DomId, Role};

/// What every record starts with.
pub const PREFIX: &str = "stress: ";
/// The longest record line, in characters (the console keeps 160, with the newline).
pub const LINE_MAX: usize = 150;

/// One record line, as [`hist_lines`] hands them out.
pub type Line = ArrayString<LINE_MAX>;

/// `stress: config ...`: what domain 0 is about to run. `balloon_down` and `balloon_up`
/// are absent from logs of older runs.
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
    pub balloon_down: Option<u64>,
    pub balloon_up: Option<u64>,
}

/// When domain 0 sampled memory (`mem phase=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemPhase {
    Before,
    Created,
    Ballooned,
    /// Every stress domain's VBD connected (`IO=1` runs only).
    Connected,
    Destroyed,
}

impl MemPhase {
    /// Every phase, in run order.
    pub const ALL: [MemPhase; 5] = [
        Self::Before,
        Self::Created,
        Self::Ballooned,
        Self::Connected,
        Self::Destroyed,
    ];

    /// The phase's word on the console.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Before => "before",
            Self::Created => "created",
            Self::Ballooned => "ballooned",
            Self::Connected => "connected",
            Self::Destroyed => "destroyed",
        }
    }

    /// The phase a word names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|phase| phase.name() == name)
    }
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
/// hog ran.
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

/// What a `result` record says; which fields it has follows from the role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// idle, periodic, latency, ping: the histogram's sample count and exact maximum; ping
    /// also says how many answers never came.
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

/// `stress: result domid=D role=R ...`. The outcome must suit the role: [`Outcome::Hog`]
/// for hogs, [`Outcome::Pong`] for pong, [`Outcome::Measured`] for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerResult {
    pub domid: DomId,
    pub role: Role,
    pub outcome: Outcome,
}

/// The `buckets=` list of a `hist` record, `index:count,...`, checked when read: every
/// index a bucket, every count above 0, at least one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buckets<'a>(&'a str);

impl<'a> Buckets<'a> {
    /// Checks a list.
    pub fn parse(text: &'a str) -> Result<Self, LineError<'a>> {
        for entry in text.split(',') {
            parse_bucket(entry)?;
        }
        Ok(Self(text))
    }

    /// The entries, in the order written.
    pub fn iter(self) -> impl Iterator<Item = (Bucket, u64)> + 'a {
        self.0
            .split(',')
            .filter_map(|entry| parse_bucket(entry).ok())
    }

    /// The list as written.
    pub fn as_str(self) -> &'a str {
        self.0
    }
}

/// `i:c` with a valid bucket index and a positive count.
fn parse_bucket(entry: &str) -> Result<(Bucket, u64), LineError<'_>> {
    let bad = || LineError::BadBucket(entry);
    let (index, count) = entry.split_once(':').ok_or_else(bad)?;
    let bucket = index.parse().ok().and_then(Bucket::new).ok_or_else(bad)?;
    let count = count.parse().ok().filter(|&c| c > 0).ok_or_else(bad)?;
    Ok((bucket, count))
}

/// `stress: hist domid=D role=R part=K buckets=i:c,...`: one part of a histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistPart<'a> {
    pub domid: DomId,
    pub role: Role,
    pub part: u32,
    pub buckets: Buckets<'a>,
}

/// `stress: io domid=D requests=R failed=F bad_data=B lost=L max_ns=M`: a worker's VBD
/// reads (`IO=1`): requests sent, answered with an error status, answered but with data
/// that is not its disk's pattern, never answered (within the worker's timeout), and the
/// slowest answer. Its latency histogram follows as `iohist` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoResult {
    pub domid: DomId,
    pub requests: u64,
    pub failed: u64,
    pub bad_data: u64,
    pub lost: u64,
    pub max_ns: u64,
}

/// `stress: devices served=S connected=C dom0_heap_bytes=H ring_pages=P disk_kib=K
/// requests=R failed=F cut=X`: domain 0's block backends of an `IO=1` run, printed once the
/// stress domains have finished: how many domains it served (each a store ring and a VBD),
/// how many VBDs connected, its heap bytes per served domain (store nodes and connection,
/// backend records; the ring pages and disks are not heap), the ring pages it maps per
/// domain, each disk's size, the requests it answered OK and with an error, and the
/// frontends it cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Devices {
    pub served: u64,
    pub connected: u64,
    pub dom0_heap_bytes: u64,
    pub ring_pages: u64,
    pub disk_kib: u64,
    pub requests: u64,
    pub failed: u64,
    pub cut: u64,
}

/// `stress: consoles relayed=N lines=L dropped=D`: the console rings domain 0 relays in an
/// `IO=1` run (printed after `devices`): how many, the lines it printed for them (rate-limit
/// notices included) and the lines it dropped over its per-domain rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Consoles {
    pub relayed: u64,
    pub lines: u64,
    pub dropped: u64,
}

/// `stress: error domid=D what=W`: `what` is one word (see `stress/PROTOCOL.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestError<'a> {
    pub domid: DomId,
    pub what: &'a str,
}

/// One record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Config(Config),
    Mem(MemSample),
    Create(Creation),
    /// `stress: create total_ns=T`.
    CreateTotal {
        ns: u64,
    },
    Domain(DomainInfo),
    /// `stress: done ok`.
    Done,
    /// `stress: FAILED reason=<word>`.
    Failed {
        reason: &'a str,
    },
    Balloon(Balloon),
    Result(WorkerResult),
    Hist(HistPart<'a>),
    Error(GuestError<'a>),
    Io(IoResult),
    /// `stress: iohist domid=D role=R part=K buckets=...`: the I/O latency histogram of
    /// an [`IoResult`], cut as `hist` records are ([`io_hist_lines`]).
    IoHist(HistPart<'a>),
    Devices(Devices),
    Consoles(Consoles),
}

/// Why a record could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError<'a> {
    /// The text does not start with [`PREFIX`].
    NotStress,
    NoKind,
    UnknownKind(&'a str),
    MissingKey(&'static str),
    BadNumber {
        key: &'static str,
        value: &'a str,
    },
    BadValue {
        key: &'static str,
        value: &'a str,
    },
    BadBucket(&'a str),
    StrayWord(&'a str),
}

impl fmt::Display for LineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotStress => write!(f, "not a `{}` record", PREFIX.trim_end()),
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

impl<'a> Record<'a> {
    /// Reads a record line (from [`PREFIX`] on; trailing text after the fields is part of
    /// the fields).
    pub fn parse(line: &'a str) -> Result<Self, LineError<'a>> {
        let text = line.strip_prefix(PREFIX).ok_or(LineError::NotStress)?;
        let text = text.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let (kind, rest) = text
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((text, ""));
        if kind.is_empty() {
            return Err(LineError::NoKind);
        }
        let r = Reader(Fields(rest));
        Ok(match kind {
            "config" => Record::Config(r.config()?),
            "mem" => Record::Mem(r.mem()?),
            "create" if r.0.has("total_ns") => Record::CreateTotal {
                ns: r.number("total_ns")?,
            },
            "create" => Record::Create(r.creation()?),
            "domain" => Record::Domain(r.domain()?),
            "done" => r.done(rest)?,
            "FAILED" => Record::Failed {
                reason: r.word("reason")?,
            },
            "balloon" => Record::Balloon(r.balloon()?),
            "result" => Record::Result(r.result()?),
            "hist" => Record::Hist(r.hist()?),
            "io" => Record::Io(r.io()?),
            "iohist" => Record::IoHist(r.hist()?),
            "devices" => Record::Devices(r.devices()?),
            "consoles" => Record::Consoles(r.consoles()?),
            "error" => Record::Error(GuestError {
                domid: r.domid()?,
                what: r.word("what")?,
            }),
            other => return Err(LineError::UnknownKind(other)),
        })
    }
}

impl fmt::Display for Record<'_> {
    /// The record line, from [`PREFIX`] on, without a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        match *self {
            Self::Config(c) => {
                f.write_str("config")?;
                write_pair(f, "n", c.n)?;
                write_pair(f, "cpus", c.cpus)?;
                write_pair(f, "seconds", c.seconds)?;
                write_pair(f, "hogs", c.hogs)?;
                write_pair(f, "latency", c.latency)?;
                write_pair(f, "pairs", c.pairs)?;
                write_pair(f, "periodic", c.periodic)?;
                write_pair(f, "idle", c.idle)?;
                write_pair(f, "mem_kib", c.mem_kib)?;
                write_pair(f, "max_kib", c.max_kib)?;
                optional(f, "balloon_down", c.balloon_down)?;
                optional(f, "balloon_up", c.balloon_up)
            }
            Self::Mem(m) => {
                f.write_str("mem")?;
                write_pair(f, "phase", m.phase.name())?;
                write_pair(f, "free_kib", m.free_kib)?;
                write_pair(f, "heap_bytes", m.heap_bytes)?;
                write_pair(f, "domains", m.domains)
            }
            Self::Create(c) => {
                f.write_str("create")?;
                write_pair(f, "index", c.index)?;
                write_pair(f, "domid", c.domid.0)?;
                write_pair(f, "role", c.role)?;
                write_pair(f, "cpu", c.cpu)?;
                write_pair(f, "ns", c.ns)
            }
            Self::CreateTotal { ns } => {
                f.write_str("create")?;
                write_pair(f, "total_ns", ns)
            }
            Self::Domain(d) => {
                f.write_str("domain")?;
                write_pair(f, "domid", d.domid.0)?;
                write_pair(f, "role", d.role)?;
                write_pair(f, "weight", d.weight)?;
                write_pair(f, "warp", u8::from(d.warp))?;
                write_pair(f, "cpu_time_ns", d.cpu_time_ns)?;
                write_pair(f, "tot_pages", d.tot_pages)?;
                optional(f, "window_cpu_ns", d.window_cpu_ns)
            }
            Self::Done => f.write_str("done ok"),
            Self::Failed { reason } => {
                f.write_str("FAILED")?;
                write_pair(f, "reason", reason)
            }
            Self::Balloon(b) => {
                f.write_str("balloon")?;
                write_pair(f, "domid", b.domid.0)?;
                write_pair(f, "down_pages", b.down_pages)?;
                write_pair(f, "up_pages", b.up_pages)?;
                write_pair(f, "tot_pages", b.tot_pages)
            }
            Self::Result(r) => {
                f.write_str("result")?;
                write_pair(f, "domid", r.domid.0)?;
                write_pair(f, "role", r.role)?;
                match r.outcome {
                    Outcome::Measured {
                        samples,
                        max_ns,
                        lost,
                    } => {
                        write_pair(f, "samples", samples)?;
                        write_pair(f, "max_ns", max_ns)?;
                        optional(f, "lost", lost)
                    }
                    Outcome::Hog { loops } => write_pair(f, "loops", loops),
                    Outcome::Pong { answers } => write_pair(f, "answers", answers),
                }
            }
            Self::Hist(h) | Self::IoHist(h) => {
                f.write_str(if matches!(self, Self::Hist(_)) { "hist" } else { "iohist" })?;
                write_pair(f, "domid", h.domid.0)?;
                write_pair(f, "role", h.role)?;
                write_pair(f, "part", h.part)?;
                write_pair(f, "buckets", h.buckets.as_str())
            }
            Self::Error(e) => {
                f.write_str("error")?;
                write_pair(f, "domid", e.domid.0)?;
                write_pair(f, "what", e.what)
            }
            Self::Io(io) => {
                f.write_str("io")?;
                write_pair(f, "domid", io.domid.0)?;
                write_pair(f, "requests", io.requests)?;
                write_pair(f, "failed", io.failed)?;
                write_pair(f, "bad_data", io.bad_data)?;
                write_pair(f, "lost", io.lost)?;
                write_pair(f, "max_ns", io.max_ns)
            }
            Self::Devices(d) => {
                f.write_str("devices")?;
                write_pair(f, "served", d.served)?;
                write_pair(f, "connected", d.connected)?;
                write_pair(f, "dom0_heap_bytes", d.dom0_heap_bytes)?;
                write_pair(f, "ring_pages", d.ring_pages)?;
                write_pair(f, "disk_kib", d.disk_kib)?;
                write_pair(f, "requests", d.requests)?;
                write_pair(f, "failed", d.failed)?;
                write_pair(f, "cut", d.cut)
            }
            Self::Consoles(c) => {
                f.write_str("consoles")?;
                write_pair(f, "relayed", c.relayed)?;
                write_pair(f, "lines", c.lines)?;
                write_pair(f, "dropped", c.dropped)
            }
        }
    }
}

/// ` key=value` when there is a value.
fn optional(f: &mut fmt::Formatter<'_>, key: &str, value: Option<u64>) -> fmt::Result {
    match value {
        Some(value) => write_pair(f, key, value),
        None => Ok(()),
    }
}

/// A record's fields, read by key.
struct Reader<'a>(Fields<'a>);

impl<'a> Reader<'a> {
    fn word(&self, key: &'static str) -> Result<&'a str, LineError<'a>> {
        self.0.get(key).ok_or(LineError::MissingKey(key))
    }

    /// Fails on bare words: only `done ok` has one.
    fn no_bare_words(&self) -> Result<(), LineError<'a>> {
        match self.0.bare().next() {
            Some(word) => Err(LineError::StrayWord(word)),
            None => Ok(()),
        }
    }

    fn number<T: core::str::FromStr>(&self, key: &'static str) -> Result<T, LineError<'a>> {
        let value = self.word(key)?;
        value
            .parse()
            .map_err(|_| LineError::BadNumber { key, value })
    }

    fn optional_number(&self, key: &'static str) -> Result<Option<u64>, LineError<'a>> {
        if self.0.has(key) {
            self.number(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn domid(&self) -> Result<DomId, LineError<'a>> {
        self.number("domid").map(DomId)
    }

    fn role(&self) -> Result<Role, LineError<'a>> {
        let value = self.word("role")?;
        Role::from_name(value).ok_or(LineError::BadValue { key: "role", value })
    }

    fn flag(&self, key: &'static str) -> Result<bool, LineError<'a>> {
        match self.word(key)? {
            "0" => Ok(false),
            "1" => Ok(true),
            value => Err(LineError::BadValue { key, value }),
        }
    }

    fn config(&self) -> Result<Config, LineError<'a>> {
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
            balloon_down: self.optional_number("balloon_down")?,
            balloon_up: self.optional_number("balloon_up")?,
        })
    }

    fn mem(&self) -> Result<MemSample, LineError<'a>> {
        self.no_bare_words()?;
        let phase = self.word("phase")?;
        Ok(MemSample {
            phase: MemPhase::from_name(phase).ok_or(LineError::BadValue {
                key: "phase",
                value: phase,
            })?,
            free_kib: self.number("free_kib")?,
            heap_bytes: self.number("heap_bytes")?,
            domains: self.number("domains")?,
        })
    }

    fn creation(&self) -> Result<Creation, LineError<'a>> {
        self.no_bare_words()?;
        Ok(Creation {
            index: self.number("index")?,
            domid: self.domid()?,
            role: self.role()?,
            cpu: self.number("cpu")?,
            ns: self.number("ns")?,
        })
    }

    fn domain(&self) -> Result<DomainInfo, LineError<'a>> {
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

    /// `done ok` and nothing else; `rest` is the text after `done`.
    fn done(&self, rest: &'a str) -> Result<Record<'a>, LineError<'a>> {
        if let Some(pair) = rest
            .split_ascii_whitespace()
            .find(|word| word.contains('='))
        {
            return Err(LineError::StrayWord(pair));
        }
        let mut bare = self.0.bare();
        match (bare.next(), bare.next()) {
            (Some("ok"), None) => Ok(Record::Done),
            _ => Err(LineError::BadValue {
                key: "done",
                value: rest.trim(),
            }),
        }
    }

    fn balloon(&self) -> Result<Balloon, LineError<'a>> {
        self.no_bare_words()?;
        Ok(Balloon {
            domid: self.domid()?,
            down_pages: self.number("down_pages")?,
            up_pages: self.number("up_pages")?,
            tot_pages: self.number("tot_pages")?,
        })
    }

    fn result(&self) -> Result<WorkerResult, LineError<'a>> {
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

    fn io(&self) -> Result<IoResult, LineError<'a>> {
        self.no_bare_words()?;
        Ok(IoResult {
            domid: self.domid()?,
            requests: self.number("requests")?,
            failed: self.number("failed")?,
            bad_data: self.number("bad_data")?,
            lost: self.number("lost")?,
            max_ns: self.number("max_ns")?,
        })
    }

    fn consoles(&self) -> Result<Consoles, LineError<'a>> {
        self.no_bare_words()?;
        Ok(Consoles {
            relayed: self.number("relayed")?,
            lines: self.number("lines")?,
            dropped: self.number("dropped")?,
        })
    }

    fn devices(&self) -> Result<Devices, LineError<'a>> {
        self.no_bare_words()?;
        Ok(Devices {
            served: self.number("served")?,
            connected: self.number("connected")?,
            dom0_heap_bytes: self.number("dom0_heap_bytes")?,
            ring_pages: self.number("ring_pages")?,
            disk_kib: self.number("disk_kib")?,
            requests: self.number("requests")?,
            failed: self.number("failed")?,
            cut: self.number("cut")?,
        })
    }

    fn hist(&self) -> Result<HistPart<'a>, LineError<'a>> {
        self.no_bare_words()?;
        let buckets = self.word("buckets")?;
        Ok(HistPart {
            domid: self.domid()?,
            role: self.role()?,
            part: self.number("part")?,
            buckets: Buckets::parse(buckets)?,
        })
    }
}

/// Counts the bytes written through it.
struct Counter(usize);

impl Write for Counter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Writes `hist` as `hist` records for worker `domid` in role `role`, handing each line to
/// `emit`: non-empty buckets only, lowest first, as many per line as fit in [`LINE_MAX`],
/// parts numbered from 0. A histogram without samples gives no line.
pub fn hist_lines(domid: DomId, role: Role, hist: &Histogram, emit: impl FnMut(&str)) {
    parts(false, domid, role, hist, emit);
}

/// Writes an I/O latency histogram as `iohist` records, as [`hist_lines`] does.
pub fn io_hist_lines(domid: DomId, role: Role, hist: &Histogram, emit: impl FnMut(&str)) {
    parts(true, domid, role, hist, emit);
}

/// [`hist_lines`] for `hist` records, or `iohist` ones when `io`.
fn parts(
    io: bool,
    domid: DomId,
    role: Role,
    hist: &Histogram,
    mut emit: impl FnMut(&str),
) {
    let record = |domid: DomId, role: Role, part: u32, entries: &str| -> Line {
        let mut line = Line::new();
        // Fits: the entries were sized against the header's length.
        let part = HistPart {
            domid,
            role,
            part,
            buckets: Buckets(entries),
        };
        let record = if io { Record::IoHist(part) } else { Record::Hist(part) };
        let _ = write!(line, "{record}");
        line
    };
    let mut flush = |part, entries: &str| {
        emit(&record(domid, role, part, entries));
    };
    let mut part = 0;
    let mut entries = Line::new();
    for (bucket, count) in hist.buckets() {
        let mut entry = ArrayString::<24>::new();
        // 24 bytes hold two u32-sized numbers and ':'.
        let _ = write!(entry, "{}:{count}", bucket.index());
        let header = Counter(record(domid, role, part, "").len());
        let comma = usize::from(!entries.is_empty());
        if !entries.is_empty() && header.0 + entries.len() + comma + entry.len() > LINE_MAX {
            flush(part, &entries);
            part += 1;
            entries.clear();
        }
        if !entries.is_empty() {
            entries.push(',');
        }
        entries.push_str(&entry);
    }
    if !entries.is_empty() {
        flush(part, &entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::bucket_of;
    use proptest::prelude::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn read(line: &str) -> Record<'_> {
        Record::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn reads_every_kind() {
        let config = read("stress: config n=100 cpus=2 seconds=10 hogs=2 latency=4 pairs=4 periodic=8 idle=80 mem_kib=512 max_kib=1024");
        assert_eq!(
            config,
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
                max_kib: 1024,
                balloon_down: None,
                balloon_up: None,
            })
        );
        assert_eq!(
            read("stress: mem phase=ballooned free_kib=7 heap_bytes=8 domains=9"),
            Record::Mem(MemSample {
                phase: MemPhase::Ballooned,
                free_kib: 7,
                heap_bytes: 8,
                domains: 9
            })
        );
        assert_eq!(
            read("stress: create index=3 domid=4 role=pong cpu=1 ns=1234"),
            Record::Create(Creation {
                index: 3,
                domid: DomId(4),
                role: Role::Pong,
                cpu: 1,
                ns: 1234
            })
        );
        assert_eq!(
            read("stress: create total_ns=99"),
            Record::CreateTotal { ns: 99 }
        );
        assert_eq!(
            read("stress: domain domid=5 role=hog weight=2 warp=0 cpu_time_ns=77 tot_pages=96 window_cpu_ns=60"),
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
        assert_eq!(read("stress: done ok"), Record::Done);
        assert_eq!(
            read("stress: FAILED reason=create"),
            Record::Failed { reason: "create" }
        );
        assert_eq!(
            read("stress: result domid=5 role=ping samples=10 max_ns=300 lost=2"),
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
        let Record::Hist(hist) = read("stress: hist domid=5 role=latency part=1 buckets=3:2,400:1")
        else {
            panic!()
        };
        assert_eq!(
            (hist.domid, hist.role, hist.part),
            (DomId(5), Role::Latency, 1)
        );
        assert_eq!(
            hist.buckets.iter().collect::<Vec<_>>(),
            [(Bucket::new(3).unwrap(), 2), (Bucket::new(400).unwrap(), 1)]
        );
        assert_eq!(
            read("stress: error domid=8 what=balloon_down"),
            Record::Error(GuestError {
                domid: DomId(8),
                what: "balloon_down"
            })
        );
    }

    #[test]
    fn reads_the_io_records() {
        assert_eq!(
            read("stress: io domid=4 requests=40 failed=0 bad_data=0 lost=0 max_ns=900000"),
            Record::Io(IoResult { domid: DomId(4), requests: 40, failed: 0, bad_data: 0, lost: 0, max_ns: 900_000 })
        );
        assert!(matches!(read("stress: iohist domid=4 role=idle part=0 buckets=3:1"), Record::IoHist(_)));
        let line = "stress: devices served=100 connected=100 dom0_heap_bytes=9000 ring_pages=2 disk_kib=1024 requests=4000 failed=0 cut=0";
        assert_eq!(read(line).to_string(), line);
        assert_eq!(
            read("stress: consoles relayed=100 lines=900 dropped=0"),
            Record::Consoles(Consoles { relayed: 100, lines: 900, dropped: 0 })
        );
        assert_eq!(read("stress: mem phase=connected free_kib=1 heap_bytes=2 domains=3").to_string(), "stress: mem phase=connected free_kib=1 heap_bytes=2 domains=3");
        assert!(Record::parse("stress: io domid=4 requests=40").is_err());
    }

    #[test]
    fn unknown_keys_are_ignored_and_the_first_of_a_key_wins() {
        assert_eq!(
            read("stress: create total_ns=5 extra=1"),
            Record::CreateTotal { ns: 5 }
        );
        assert_eq!(
            read("stress: create total_ns=5 total_ns=6"),
            Record::CreateTotal { ns: 5 }
        );
    }

    #[test]
    fn malformed_records_say_why() {
        let cases = [
            ("stress: result domid=1 role=hog", "missing `loops=`"),
            (
                "stress: result domid=1 role=hog loops=12x",
                "`loops=12x` is not a number",
            ),
            (
                "stress: result domid=99999 role=hog loops=1",
                "`domid=99999` is not a number",
            ),
            (
                "stress: result domid=1 role=boss loops=1",
                "`role=boss` is not a known value",
            ),
            (
                "stress: hist domid=1 role=ping part=0 buckets=",
                "bad histogram entry ``",
            ),
            (
                "stress: hist domid=1 role=ping part=0 buckets=976:1",
                "bad histogram entry `976:1`",
            ),
            (
                "stress: hist domid=1 role=ping part=0 buckets=3:0",
                "bad histogram entry `3:0`",
            ),
            (
                "stress: hist domid=1 role=ping part=0 buckets=3",
                "bad histogram entry `3`",
            ),
            (
                "stress: hist domid=1 role=ping part=0 buckets=3:1,",
                "bad histogram entry ``",
            ),
            ("stress: teleport domid=1", "unknown kind `teleport`"),
            ("stress: ", "no kind after `stress:`"),
            ("stress: done", "`done=` is not a known value"),
            ("stress: done ok now", "`done=ok now` is not a known value"),
            ("stress: done ok x=1", "stray word `x=1`"),
            ("stress: done okx x=1", "stray word `x=1`"),
            (
                "stress: mem phase=later free_kib=1 heap_bytes=1 domains=1",
                "`phase=later` is not a known value",
            ),
            (
                "stress: domain domid=1 role=hog weight=1 warp=2 cpu_time_ns=1 tot_pages=1",
                "`warp=2` is not a known value",
            ),
            (
                "stress: create index=1 domid=1 role=hog cpu=1 ns=1 oops",
                "stray word `oops`",
            ),
            ("stres: done ok", "not a `stress:` record"),
        ];
        for (line, expected) in cases {
            let error = Record::parse(line).expect_err(line).to_string();
            assert_eq!(error, expected, "{line}");
        }
    }

    #[test]
    fn a_small_histogram_is_one_line() {
        let mut hist = Histogram::new();
        for v in [3, 3, 100] {
            hist.record(v);
        }
        let mut lines = Vec::new();
        hist_lines(DomId(42), Role::Periodic, &hist, |line| {
            lines.push(String::from(line))
        });
        assert_eq!(
            lines,
            [std::format!(
                "stress: hist domid=42 role=periodic part=0 buckets=3:2,{}:1",
                bucket_of(100).index()
            )]
        );
        lines.clear();
        hist_lines(DomId(42), Role::Periodic, &Histogram::new(), |line| {
            lines.push(String::from(line))
        });
        assert!(lines.is_empty(), "no samples, no line");
    }

    fn role() -> impl Strategy<Value = Role> {
        proptest::sample::select(Role::ALL.to_vec())
    }

    /// Words guests put in `reason=` and `what=`.
    fn word() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(std::vec![
            "create",
            "bad_option",
            "early_timer",
            "balloon_down",
            "x"
        ])
    }

    fn outcome(role: Role) -> BoxedStrategy<Outcome> {
        match role {
            Role::Hog => any::<u64>()
                .prop_map(|loops| Outcome::Hog { loops })
                .boxed(),
            Role::Pong => any::<u64>()
                .prop_map(|answers| Outcome::Pong { answers })
                .boxed(),
            _ => (any::<u64>(), any::<u64>(), any::<Option<u64>>())
                .prop_map(|(samples, max_ns, lost)| Outcome::Measured {
                    samples,
                    max_ns,
                    lost,
                })
                .boxed(),
        }
    }

    fn record() -> impl Strategy<Value = Record<'static>> {
        let domid = any::<u16>().prop_map(DomId);
        let phase = proptest::sample::select(MemPhase::ALL.to_vec());
        prop_oneof![
            (
                (
                    any::<u32>(),
                    any::<u32>(),
                    any::<u64>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>()
                ),
                (
                    any::<u32>(),
                    any::<u32>(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<Option<u64>>(),
                    any::<Option<u64>>()
                )
            )
                .prop_map(
                    |(
                        (n, cpus, seconds, hogs, latency, pairs),
                        (periodic, idle, mem_kib, max_kib, balloon_down, balloon_up),
                    )| {
                        Record::Config(Config {
                            n,
                            cpus,
                            seconds,
                            hogs,
                            latency,
                            pairs,
                            periodic,
                            idle,
                            mem_kib,
                            max_kib,
                            balloon_down,
                            balloon_up,
                        })
                    }
                ),
            (phase, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(phase, free_kib, heap_bytes, domains)| Record::Mem(MemSample {
                    phase,
                    free_kib,
                    heap_bytes,
                    domains
                })
            ),
            (
                any::<u32>(),
                domid.clone(),
                role(),
                any::<u32>(),
                any::<u64>()
            )
                .prop_map(|(index, domid, role, cpu, ns)| Record::Create(Creation {
                    index,
                    domid,
                    role,
                    cpu,
                    ns
                })),
            any::<u64>().prop_map(|ns| Record::CreateTotal { ns }),
            (
                domid.clone(),
                role(),
                any::<u64>(),
                any::<bool>(),
                any::<u64>(),
                any::<u64>(),
                any::<Option<u64>>()
            )
                .prop_map(
                    |(domid, role, weight, warp, cpu_time_ns, tot_pages, window_cpu_ns)| {
                        Record::Domain(DomainInfo {
                            domid,
                            role,
                            weight,
                            warp,
                            cpu_time_ns,
                            tot_pages,
                            window_cpu_ns,
                        })
                    }
                ),
            Just(Record::Done),
            word().prop_map(|reason| Record::Failed { reason }),
            (domid.clone(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(domid, down_pages, up_pages, tot_pages)| Record::Balloon(Balloon {
                    domid,
                    down_pages,
                    up_pages,
                    tot_pages
                })
            ),
            (domid.clone(), role()).prop_flat_map(|(domid, role)| outcome(role).prop_map(
                move |outcome| Record::Result(WorkerResult {
                    domid,
                    role,
                    outcome
                })
            )),
            (domid.clone(), word()).prop_map(|(domid, what)| Record::Error(GuestError { domid, what })),
            (domid, any::<[u64; 5]>()).prop_map(|(domid, [requests, failed, bad_data, lost, max_ns])| {
                Record::Io(IoResult { domid, requests, failed, bad_data, lost, max_ns })
            }),
            any::<[u64; 3]>().prop_map(|[relayed, lines, dropped]| Record::Consoles(Consoles { relayed, lines, dropped })),
            any::<[u64; 8]>().prop_map(|v| Record::Devices(Devices {
                served: v[0],
                connected: v[1],
                dom0_heap_bytes: v[2],
                ring_pages: v[3],
                disk_kib: v[4],
                requests: v[5],
                failed: v[6],
                cut: v[7],
            })),
        ]
    }

    proptest! {
        /// Every record a guest can write reads back as written.
        #[test]
        fn records_round_trip(record in record()) {
            let line = record.to_string();
            prop_assert_eq!(Record::parse(&line), Ok(record), "{}", line);
        }

        /// Any histogram, cut into lines, fits the console and reads back whole: parts
        /// 0..k of the right domain and role whose entries are the histogram's buckets.
        #[test]
        fn histograms_round_trip(
            values in proptest::collection::vec((any::<u64>(), 0u32..64, 1usize..40), 0..200),
            domid in any::<u16>(),
            role in role(),
        ) {
            let mut hist = Histogram::new();
            for (value, shift, count) in values {
                for _ in 0..count {
                    hist.record(value >> shift);
                }
            }
            let expected: Vec<(Bucket, u64)> = hist.buckets().map(|(b, c)| (b, u64::from(c))).collect();
            for io in [false, true] {
                let mut lines = Vec::new();
                let push = |line: &str| lines.push(String::from(line));
                if io {
                    io_hist_lines(DomId(domid), role, &hist, push);
                } else {
                    hist_lines(DomId(domid), role, &hist, push);
                }
                let mut read_back = Vec::new();
                for (part, line) in lines.iter().enumerate() {
                    prop_assert!(line.len() <= LINE_MAX, "{} characters", line.len());
                    let h = match (io, Record::parse(line)) {
                        (false, Ok(Record::Hist(h))) | (true, Ok(Record::IoHist(h))) => h,
                        _ => return Err(TestCaseError::fail(std::format!("not a hist/iohist record: {line}"))),
                    };
                    prop_assert_eq!((h.domid, h.role, h.part as usize), (DomId(domid), role, part));
                    read_back.extend(h.buckets.iter());
                }
                prop_assert_eq!(&read_back, &expected);
            }
        }

        /// No text makes the reader panic.
        #[test]
        fn any_text_reads_or_fails(text in "stress: [a-zA-Z_=:, 0-9]{0,60}") {
            let _ = Record::parse(&text);
        }
    }
}
