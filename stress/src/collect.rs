//! Gathers the parsed records of one log into a [`Run`]: domain 0's phases and creations,
//! and per stress domain everything it and domain 0 said about it (creation, balloon
//! step, result, merged histogram parts, final counters), plus the hypervisor's summary.
//!
//! Called by the crate's `analyse` between `parse` and `report`. It checks that the
//! pieces fit together (duplicates, histogram parts and counts, roles) and turns every
//! mismatch into a warning; it never decides pass or fail (that is `report`'s job).

use std::collections::{BTreeMap, BTreeSet};

use protocol::record::{self as rec, HistPart};

use crate::hist::{bucket_of, Histogram};
use crate::parse::{
    Balloon, Config, Creation, Dom, DomId, DomainInfo, Entry, MemPhase, MemSample, Outcome,
    ParsedLog, Record, Role, Warning, WorkerResult,
};

/// A guest's `error` record, kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestError {
    pub domid: DomId,
    pub what: String,
}

/// Everything known about one stress domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainLog {
    pub creation: Option<Creation>,
    pub balloon: Option<Balloon>,
    pub result: Option<WorkerResult>,
    /// The `hist` parts merged, with the result's exact maximum.
    pub hist: Histogram,
    /// The `part=` numbers seen.
    pub hist_parts: BTreeSet<u32>,
    pub info: Option<DomainInfo>,
    /// Console lines the rate limit dropped.
    pub suppressed_lines: u64,
    /// Its VBD reads (`IO=1` runs).
    pub io: Option<rec::IoResult>,
    /// The `iohist` parts merged, with the `io` record's exact maximum.
    pub io_hist: Histogram,
    pub io_hist_parts: BTreeSet<u32>,
}

impl DomainLog {
    /// The role, from the first line that says it.
    pub fn role(&self) -> Option<Role> {
        let from_result = self.result.map(|r| r.role);
        self.creation
            .map(|c| c.role)
            .or(self.info.map(|i| i.role))
            .or(from_result)
    }

    /// True when the domain or domain 0 reported on it (rate-limit notices aside).
    fn has_reports(&self) -> bool {
        self.balloon.is_some()
            || self.result.is_some()
            || self.info.is_some()
            || !self.hist_parts.is_empty()
    }
}

/// One run as the log tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    pub config: Option<Config>,
    pub mem: BTreeMap<MemPhase, MemSample>,
    /// Creations by index.
    pub creations: BTreeMap<u32, Creation>,
    pub create_total_ns: Option<u64>,
    pub domains: BTreeMap<DomId, DomainLog>,
    /// Guest errors; a `domid=0` error (a worker that could not read its own id) is
    /// filed under the line's `(dN)` prefix.
    pub errors: Vec<GuestError>,
    pub failed: Option<String>,
    pub done: bool,
    /// Domain 0's `devices` record (`IO=1` runs).
    pub devices: Option<rec::Devices>,
    /// Domain 0's `consoles` record (`IO=1` runs: the console rings it relayed).
    pub consoles: Option<rec::Consoles>,
    /// Hypervisor `summary:` facts; a repeated key keeps its last value.
    pub summary: BTreeMap<String, String>,
    pub warnings: Vec<Warning>,
    /// Lines in the log.
    pub lines: usize,
}

impl Run {
    /// A summary fact as a number.
    pub fn summary_number(&self, key: &str) -> Option<u64> {
        self.summary.get(key)?.parse().ok()
    }
}

/// Builds the run from a parsed log.
pub fn collect(log: ParsedLog<'_>) -> Run {
    let mut run = Run {
        warnings: log.warnings,
        lines: log.lines,
        ..Run::default()
    };
    for entry in log.entries {
        add(&mut run, entry);
    }
    check_domains(&mut run);
    run
}

/// Files one record.
fn add(run: &mut Run, entry: Entry<'_>) {
    let line = entry.line;
    let duplicate = match entry.record {
        Record::Stress(record) => add_record(run, entry.source, record),
        Record::Summary { key, value } => {
            run.summary.insert(key.to_string(), value.to_string());
            false
        }
        Record::Suppressed { lines } => add_suppressed(run, entry.source, line, lines),
    };
    if duplicate {
        warn(
            run,
            Some(line),
            "repeated line ignored (the first one counts)".to_string(),
        );
    }
}

/// Files one stress record; true when it repeats one already filed.
fn add_record(run: &mut Run, source: Option<DomId>, record: rec::Record<'_>) -> bool {
    match record {
        rec::Record::Config(config) => keep_first(&mut run.config, config),
        rec::Record::Mem(sample) => insert_first(&mut run.mem, sample.phase, sample),
        rec::Record::Create(creation) => add_creation(run, creation),
        rec::Record::CreateTotal { ns } => keep_first(&mut run.create_total_ns, ns),
        rec::Record::Domain(info) => keep_first(&mut domain(run, info.domid).info, info),
        rec::Record::Done => std::mem::replace(&mut run.done, true),
        rec::Record::Failed { reason } => keep_first(&mut run.failed, reason.to_string()),
        rec::Record::Balloon(balloon) => {
            keep_first(&mut domain(run, balloon.domid).balloon, balloon)
        }
        rec::Record::Result(result) => add_result(domain(run, result.domid), result),
        rec::Record::Hist(part) => add_hist(domain(run, part.domid), part),
        rec::Record::Error(error) => add_error(run, source, error),
        rec::Record::Io(io) => {
            let d = domain(run, io.domid);
            if io.requests > io.failed + io.lost {
                d.io_hist.note_max(io.max_ns);
            }
            keep_first(&mut d.io, io)
        }
        rec::Record::IoHist(part) => {
            let d = domain(run, part.domid);
            if !d.io_hist_parts.insert(part.part) {
                return true;
            }
            for (bucket, count) in part.buckets.iter() {
                d.io_hist.add(bucket, count);
            }
            false
        }
        rec::Record::Devices(devices) => keep_first(&mut run.devices, devices),
        rec::Record::Consoles(consoles) => keep_first(&mut run.consoles, consoles),
    }
}

fn warn(run: &mut Run, line: Option<usize>, message: String) {
    run.warnings.push(Warning { line, message });
}

fn domain(run: &mut Run, domid: DomId) -> &mut DomainLog {
    run.domains.entry(domid).or_default()
}

/// Sets `slot` unless already set; true when it was (a duplicate).
fn keep_first<T>(slot: &mut Option<T>, value: T) -> bool {
    if slot.is_some() {
        return true;
    }
    *slot = Some(value);
    false
}

fn insert_first<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    if map.contains_key(&key) {
        return true;
    }
    map.insert(key, value);
    false
}

fn add_creation(run: &mut Run, creation: Creation) -> bool {
    if insert_first(&mut run.creations, creation.index, creation) {
        return true;
    }
    keep_first(&mut domain(run, creation.domid).creation, creation)
}

fn add_result(domain: &mut DomainLog, result: WorkerResult) -> bool {
    if keep_first(&mut domain.result, result) {
        return true;
    }
    if let Outcome::Measured {
        max_ns, samples, ..
    } = result.outcome
    {
        if samples > 0 {
            domain.hist.note_max(max_ns);
        }
    }
    false
}

fn add_hist(domain: &mut DomainLog, part: HistPart<'_>) -> bool {
    if !domain.hist_parts.insert(part.part) {
        return true;
    }
    for (bucket, count) in part.buckets.iter() {
        domain.hist.add(bucket, count);
    }
    false
}

fn add_error(run: &mut Run, source: Option<DomId>, error: rec::GuestError<'_>) -> bool {
    let domid = match error.domid {
        DomId(0) => source.unwrap_or(error.domid),
        domid => domid,
    };
    run.errors.push(GuestError {
        domid,
        what: error.what.to_string(),
    });
    false
}

fn add_suppressed(run: &mut Run, source: Option<DomId>, line: usize, lines: u64) -> bool {
    let domid = source.unwrap_or(DomId(0));
    warn(
        run,
        Some(line),
        format!("{}: {lines} console lines suppressed by the rate limit", Dom(domid)),
    );
    let log = domain(run, domid);
    log.suppressed_lines = log.suppressed_lines.saturating_add(lines);
    false
}

/// Cross-checks each domain's pieces.
fn check_domains(run: &mut Run) {
    let mut messages = Vec::new();
    for (&domid, log) in &run.domains {
        if domid == DomId(0) {
            continue;
        }
        if log.creation.is_none() && log.has_reports() {
            messages.push(format!("{} reported but no `create` line names it", Dom(domid)));
        }
        check_roles(domid, log, &mut messages);
        check_hist(domid, log, &mut messages);
    }
    for message in messages {
        warn(run, None, message);
    }
}

fn check_roles(domid: DomId, log: &DomainLog, messages: &mut Vec<String>) {
    let Some(role) = log.role() else { return };
    let others = [log.info.map(|i| i.role), log.result.map(|r| r.role)];
    for other in others.into_iter().flatten().filter(|&r| r != role) {
        messages.push(format!(
            "{}: role {} here, {} elsewhere",
            Dom(domid),
            other.name(),
            role.name()
        ));
    }
}

/// The histogram must be whole: parts 0..k, as many samples as the result says, and the
/// exact maximum inside the highest bucket.
fn check_hist(domid: DomId, log: &DomainLog, messages: &mut Vec<String>) {
    let Some(Outcome::Measured {
        samples, max_ns, ..
    }) = log.result.map(|r| r.outcome)
    else {
        if !log.hist_parts.is_empty() {
            messages.push(format!("{}: histogram without a measuring result", Dom(domid)));
        }
        return;
    };
    let parts = log.hist_parts.len();
    if log
        .hist_parts
        .iter()
        .enumerate()
        .any(|(i, &p)| i as u64 != u64::from(p))
    {
        messages.push(format!(
            "{}: histogram parts {:?} are not 0..{parts}",
            Dom(domid),
            log.hist_parts
        ));
    }
    let counted = log.hist.samples();
    if counted != samples {
        messages.push(format!(
            "{}: histogram holds {counted} samples, result says {samples}",
            Dom(domid)
        ));
    }
    let highest = log.hist.buckets().last().map(|(b, _)| b);
    if samples > 0 && highest.is_some_and(|b| b != bucket_of(max_ns)) {
        messages.push(format!(
            "{}: max_ns={max_ns} is not in the highest histogram bucket",
            Dom(domid)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_log;

    fn run(text: &str) -> Run {
        collect(parse_log(text))
    }

    fn warnings(run: &Run) -> Vec<String> {
        run.warnings.iter().map(|w| w.message.clone()).collect()
    }

    #[test]
    fn merges_histogram_parts_and_notes_the_max() {
        let r = run("(d0) stress: create index=0 domid=3 role=ping cpu=1 ns=5\n\
                     (d3) stress: result domid=3 role=ping samples=4 max_ns=1100 lost=0\n\
                     (d3) stress: hist domid=3 role=ping part=0 buckets=100:1\n\
                     (d3) stress: hist domid=3 role=ping part=1 buckets=113:3");
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let d3 = &r.domains[&DomId(3)];
        assert_eq!(d3.hist.samples(), 4);
        assert_eq!(d3.hist.max(), Some(1100));
        assert_eq!(d3.role(), Some(Role::Ping));
        assert_eq!(r.creations[&0].domid, DomId(3));
    }

    #[test]
    fn warns_on_incomplete_histograms() {
        let r = run("(d0) stress: create index=0 domid=3 role=ping cpu=1 ns=5\n\
                     (d3) stress: result domid=3 role=ping samples=9 max_ns=99999 lost=0\n\
                     (d3) stress: hist domid=3 role=ping part=1 buckets=100:1");
        let w = warnings(&r).join("\n");
        assert!(w.contains("parts {1} are not 0..1"), "{w}");
        assert!(w.contains("holds 1 samples, result says 9"), "{w}");
        assert!(w.contains("max_ns=99999 is not in the highest"), "{w}");
    }

    #[test]
    fn duplicates_keep_the_first_and_warn() {
        let r = run("(d0) stress: create index=0 domid=3 role=hog cpu=1 ns=5\n\
                     (d0) stress: create index=0 domid=3 role=hog cpu=1 ns=6\n\
                     (d0) stress: mem phase=before free_kib=1 heap_bytes=1 domains=1\n\
                     (d0) stress: mem phase=before free_kib=2 heap_bytes=1 domains=1\n\
                     (d0) stress: done ok\n(d0) stress: done ok");
        assert_eq!(r.creations[&0].ns, 5);
        assert_eq!(r.mem[&MemPhase::Before].free_kib, 1);
        assert_eq!(
            r.warnings
                .iter()
                .filter(|w| w.message.contains("repeated"))
                .count(),
            3
        );
        assert!(r.done);
    }

    #[test]
    fn files_anonymous_errors_under_the_prefix() {
        let r =
            run("(d7) stress: error domid=0 what=options\n(d8) stress: error domid=8 what=timer");
        assert_eq!(
            r.errors[0],
            GuestError {
                domid: DomId(7),
                what: "options".into()
            }
        );
        assert_eq!(r.errors[1].domid, DomId(8));
    }

    #[test]
    fn warns_on_role_mismatch_and_uncreated_domains() {
        let r = run("(d0) stress: create index=0 domid=3 role=hog cpu=1 ns=5\n\
                     (d3) stress: result domid=3 role=pong answers=1\n\
                     (d9) stress: result domid=9 role=hog loops=1");
        let w = warnings(&r).join("\n");
        assert!(w.contains("d3: role pong here, hog elsewhere"), "{w}");
        assert!(w.contains("d9 reported but no `create` line"), "{w}");
    }

    #[test]
    fn summary_keeps_the_last_value() {
        let r =
            run("[cpu0 0.1] summary: memory.free_mib=10\n[cpu0 9.1] summary: memory.free_mib=12");
        assert_eq!(r.summary_number("memory.free_mib"), Some(12));
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn counts_suppressed_lines() {
        let r = run("(d4) [3 lines suppressed by the console rate limit]");
        assert_eq!(r.domains[&DomId(4)].suppressed_lines, 3);
        assert_eq!(r.warnings.len(), 1);
    }
}
