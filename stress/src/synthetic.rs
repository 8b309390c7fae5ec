//! Test-only: a generator of realistic serial logs of a whole stress run with known
//! figures, and the end-to-end tests that check every figure the report computes from
//! it, and that errors, missing results and leaks fail the run.
//!
//! The plan for N domains (domid = index + 1, cpu = index % 2): indices 0-2 are hogs
//! (cpu 0: weights 100 and 300; cpu 1: weight 200), 3-5 latency (warped), 6-9 two
//! ping/pong pairs, 10-11 idle, the rest periodic. Every sample value is a bucket's low bound, so the
//! expected percentiles are exact.

use crate::hist::Histogram;
use crate::parse::Role;

/// Free memory before and after, KiB.
const FREE_KIB: u64 = 1_000_000;
const HEAP_BYTES: u64 = 2_000_000;
/// Heap bytes each domain costs the hypervisor.
const HEAP_PER_DOMAIN: u64 = 3_000;

/// One domain of the plan.
struct Planned {
    index: usize,
    domid: u16,
    role: Role,
    cpu: usize,
}

fn plan(n: usize) -> Vec<Planned> {
    (0..n)
        .map(|index| {
            let role = match index {
                0..=2 => Role::Hog,
                3..=5 => Role::Latency,
                6 | 8 => Role::Ping,
                7 | 9 => Role::Pong,
                10 | 11 => Role::Idle,
                _ => Role::Periodic,
            };
            Planned {
                index,
                domid: index as u16 + 1,
                role,
                cpu: index % 2,
            }
        })
        .collect()
}

/// A log being written: each line gets the hypervisor's tag with a rising clock.
struct Log {
    lines: Vec<String>,
    micros: u64,
}

impl Log {
    fn line(&mut self, cpu: usize, text: &str) {
        self.micros += 137;
        let tag = format!(
            "[cpu{cpu:<2} {:>4}.{:06}] ",
            self.micros / 1_000_000,
            self.micros % 1_000_000
        );
        self.lines.push(format!("{tag}{text}"));
    }

    fn guest(&mut self, domid: u16, cpu: usize, text: &str) {
        self.line(
            cpu,
            &format!("({}) stress: {text}", format_args!("d{domid}")),
        );
    }
}

/// The values a measuring domain records: (value, count), plus its exact maximum.
fn samples(d: &Planned) -> Vec<(u64, u64)> {
    let k = d.index as u64;
    match d.role {
        Role::Latency => vec![
            (10_240, 985),
            (40_960, 10),
            (81_920, 4),
            (81_920 + (k - 3) * 1_000, 1),
        ],
        Role::Periodic => vec![
            (51_200, 500),
            (204_800, 480),
            (409_600, 15),
            (1_638_400, 4),
            (1_638_400 + (k - 10) * 100, 1),
        ],
        Role::Ping => vec![(20_480, 900), (30_720, 99), (30_720 + (k - 6) * 5, 1)],
        Role::Idle => vec![(102_400, 90), (819_200, 9), (819_200 + (k - 10) * 7, 1)],
        Role::Hog | Role::Pong => vec![],
    }
}

fn hog_weight(index: usize) -> u64 {
    [100, 200, 300][index]
}

fn hog_cpu_time_ns(index: usize) -> u64 {
    [2_500_000_000, 9_000_000_000, 7_400_000_000][index]
}

fn tot_pages(role: Role) -> u64 {
    if role == Role::Hog {
        128
    } else {
        96
    }
}

/// Creation `index` takes 1 ms plus 1 µs per earlier domain.
fn creation_ns(index: usize) -> u64 {
    1_000_000 + index as u64 * 1_000
}

/// The `hist` lines of one domain: two buckets per part.
fn hist_lines(d: &Planned) -> Vec<String> {
    let mut hist = Histogram::new();
    for (value, count) in samples(d) {
        for _ in 0..count {
            hist.record(value);
        }
    }
    let entries: Vec<String> = hist
        .buckets()
        .map(|(b, c)| format!("{}:{c}", b.index()))
        .collect();
    entries
        .chunks(2)
        .enumerate()
        .map(|(part, chunk)| {
            format!(
                "hist domid={} role={} part={part} buckets={}",
                d.domid,
                d.role.name(),
                chunk.join(",")
            )
        })
        .collect()
}

fn result_line(d: &Planned) -> String {
    let head = format!("result domid={} role={}", d.domid, d.role.name());
    let values = samples(d);
    let count: u64 = values.iter().map(|(_, c)| c).sum();
    let max = values.iter().map(|(v, _)| *v).max().unwrap_or(0);
    match d.role {
        Role::Hog => format!("{head} loops={}", 1_000_000 * (d.index as u64 + 1)),
        Role::Pong => format!("{head} answers=1000"),
        Role::Ping => format!(
            "{head} samples={count} max_ns={max} lost={}",
            if d.index == 6 { 0 } else { 2 }
        ),
        Role::Idle | Role::Periodic | Role::Latency => {
            format!("{head} samples={count} max_ns={max}")
        }
    }
}

/// A whole run's log for `n` domains (n >= 12).
pub fn log(n: usize) -> Vec<String> {
    let domains = plan(n);
    let mut log = Log {
        lines: vec![
            "SeaBIOS (version 1.16.2-debian-1.16.2-1)".into(),
            String::new(),
        ],
        micros: 0,
    };
    boot_summary(&mut log);
    let periodic = n - 12;
    log.guest(0, 0, &format!("config n={n} cpus=2 seconds=10 hogs=3 latency=3 pairs=2 periodic={periodic} idle=2 mem_kib=512 max_kib=1024"));
    log.guest(
        0,
        0,
        &format!("mem phase=before free_kib={FREE_KIB} heap_bytes={HEAP_BYTES} domains=1"),
    );
    for d in &domains {
        let ns = creation_ns(d.index);
        log.guest(
            0,
            0,
            &format!(
                "create index={} domid={} role={} cpu={} ns={ns}",
                d.index,
                d.domid,
                d.role.name(),
                d.cpu
            ),
        );
        log.line(
            d.cpu,
            &format!(
                "(d{}) stress-guest: role {} starting",
                d.domid,
                d.role.name()
            ),
        );
        let down = if d.role == Role::Hog { 8 } else { 40 };
        let balloon = format!(
            "balloon domid={} down_pages={down} up_pages=8 tot_pages={}",
            d.domid,
            tot_pages(d.role)
        );
        log.guest(d.domid, d.cpu, &balloon);
    }
    let n64 = n as u64;
    let total: u64 = domains.iter().map(|d| creation_ns(d.index)).sum();
    log.guest(0, 0, &format!("create total_ns={}", total + 10_000));
    let heap = HEAP_BYTES + n64 * HEAP_PER_DOMAIN;
    log.guest(
        0,
        0,
        &format!(
            "mem phase=created free_kib={} heap_bytes={heap} domains={}",
            FREE_KIB - n64 * 520,
            n64 + 1
        ),
    );
    log.guest(
        0,
        0,
        &format!(
            "mem phase=ballooned free_kib={} heap_bytes={heap} domains={}",
            FREE_KIB - n64 * 400,
            n64 + 1
        ),
    );
    results(&mut log, &domains);
    for d in &domains {
        let (weight, time) = if d.role == Role::Hog {
            (hog_weight(d.index), hog_cpu_time_ns(d.index))
        } else {
            (256, 100_000_000)
        };
        let warp = u8::from(d.role == Role::Latency);
        let line = format!(
            "domain domid={} role={} weight={weight} warp={warp} cpu_time_ns={time} tot_pages={}",
            d.domid,
            d.role.name(),
            tot_pages(d.role)
        );
        log.guest(0, 0, &line);
    }
    log.guest(
        0,
        0,
        &format!(
            "mem phase=destroyed free_kib={FREE_KIB} heap_bytes={} domains=1",
            HEAP_BYTES + 512
        ),
    );
    log.guest(0, 0, "done ok");
    end_summary(&mut log, n);
    log.lines
}

/// Results and histograms, interleaved across domains the way concurrent guests print.
fn results(log: &mut Log, domains: &[Planned]) {
    let mut queues: Vec<(u16, usize, Vec<String>)> = domains
        .iter()
        .map(|d| {
            let mut lines = vec![result_line(d)];
            lines.extend(hist_lines(d));
            (d.domid, d.cpu, lines)
        })
        .collect();
    let mut round = 0;
    while queues.iter().any(|(_, _, lines)| round < lines.len()) {
        for (domid, cpu, lines) in &mut queues {
            if let Some(line) = lines.get(round) {
                let (domid, cpu) = (*domid, *cpu);
                log.guest(domid, cpu, line);
            }
        }
        log.line(1, "sched: tick");
        round += 1;
    }
}

fn boot_summary(log: &mut Log) {
    for fact in [
        "cpus.online=2",
        "tsc.mhz=2995",
        "memory.free_mib=976",
        "window.heap_kib=1024/16384",
        "window.frame_table_kib=1024/1024",
        "window.used_kib=2048",
        "window.free_kib=30720",
    ] {
        log.line(0, &format!("summary: {fact}"));
    }
    log.line(0, "dom0: building domain 0");
}

fn end_summary(log: &mut Log, n: usize) {
    log.line(0, "domain 0 powered off");
    for fact in [
        format!("domains.created={}", n + 1),
        "domains.hypervisor_bytes_per_domain=7096".into(),
        "domains.unexpected_endings=0".into(),
        "memory.leaked_frames=0".into(),
        "sched.cpu0.switches=4321".into(),
        "sched.cpu0.migrations_out=3".into(),
        "sched.cpu0.warped_pushes_out=41".into(),
        "sched.cpu0.timer_late_warped_us=900/8/10/50/120".into(),
        "sched.cpu0.timer_irq_late_us=2000/12/10/50/21000".into(),
        "run=pass".into(),
    ] {
        log.line(0, &format!("summary: {fact}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::DomId;
    use crate::report::{Milestone, Problem, SeriesKind, Stats};
    use crate::targets::Status;
    use crate::{analyse, json, svg, table, Analysis};

    fn analysed(lines: &[String], enforce: bool) -> Analysis {
        analyse(&lines.join("\n"), None, enforce)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    fn status(a: &Analysis, key: &str) -> Status {
        a.checks.iter().find(|c| c.key == key).unwrap().status
    }

    fn without(lines: &[String], needle: &str) -> Vec<String> {
        let kept: Vec<String> = lines
            .iter()
            .filter(|l| !l.contains(needle))
            .cloned()
            .collect();
        assert_eq!(
            kept.len() + 1,
            lines.len(),
            "`{needle}` must match exactly one line"
        );
        kept
    }

    fn replaced(lines: &[String], from: &str, to: &str) -> Vec<String> {
        assert_eq!(
            lines.iter().filter(|l| l.contains(from)).count(),
            1,
            "`{from}` must match one line"
        );
        lines.iter().map(|l| l.replace(from, to)).collect()
    }

    #[test]
    fn n20_every_figure() {
        let a = analysed(&log(20), true);
        let r = &a.report;
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let run = &r.run;
        assert_eq!(
            (run.created, run.done, run.cpus_online, run.tsc_mhz),
            (20, true, Some(2), Some(2995))
        );
        assert_eq!(run.config.unwrap().periodic, 8);
        assert_eq!(run.config.unwrap().idle, 2);

        let m = &r.memory;
        assert_eq!(m.free_kib.before, Some(1_000_000));
        assert_eq!(m.free_kib.created, Some(1_000_000 - 20 * 520));
        assert_eq!(m.free_kib.ballooned, Some(1_000_000 - 20 * 400));
        assert_eq!(m.free_kib.destroyed, Some(1_000_000));
        assert_eq!(m.leaked_kib, Some(0));
        assert_eq!(m.heap_growth_bytes, Some(512));
        assert_eq!(m.hypervisor_bytes_per_domain, Some(3_000 + 4_096));
        assert_eq!(m.hypervisor_reported_bytes_per_domain, Some(7_096));
        let pages = m.guest_pages.unwrap();
        assert_eq!((pages.count, pages.min, pages.max), (20, 96, 128));
        assert!(close(pages.mean, 100.8));
        assert_eq!(m.ballooned_pages.unwrap().min, 96);
        assert!(close(
            m.minimal_domain_kib.unwrap(),
            384.0 + 7_096.0 / 1024.0
        ));
        // 1_024_000_000 B / (100.8 * 4096 + 7096) B = 2438.25.
        assert_eq!(m.largest_n, Some(2438));
        assert_eq!(
            (m.window.used_kib, m.window.free_kib),
            (Some(2048), Some(30720))
        );
        assert_eq!(m.window.domains_that_fit, Some(30720 * 1024 / 7096));
        assert_eq!(m.window.regions.len(), 2);
        assert_eq!(
            (
                m.window.regions[1].name.as_str(),
                m.window.regions[1].used_kib
            ),
            ("heap", 1024)
        );

        let l = &r.latency;
        assert_eq!(l.cpus, Some(2));
        let stats = |kind| l.stats(kind).unwrap();
        let expect = |samples, p50_ns, p99_ns, p999_ns, max_ns| Stats {
            samples,
            p50_ns,
            p99_ns,
            p999_ns,
            max_ns,
        };
        assert_eq!(
            stats(SeriesKind::Warped),
            expect(3_000, 10_240, 40_960, 81_920, 83_920)
        );
        assert_eq!(
            stats(SeriesKind::Unwarped),
            expect(8_000, 51_200, 409_600, 1_638_400, 1_639_300)
        );
        assert_eq!(
            stats(SeriesKind::Idle),
            expect(200, 102_400, 819_200, 819_200, 819_207)
        );
        assert_eq!(
            stats(SeriesKind::PingPong),
            expect(2_000, 20_480, 30_720, 30_720, 30_730)
        );
        assert_eq!(l.series(SeriesKind::Warped).unwrap().domains, 3);
        assert_eq!(l.series(SeriesKind::Unwarped).unwrap().domains, 8);
        assert_eq!(l.series(SeriesKind::Idle).unwrap().domains, 2);
        assert!(close(l.p99_ratio.unwrap(), 10.0));
        assert_eq!(l.lost_answers, 2);

        let f = &r.fairness;
        assert_eq!(f.hogs.len(), 3);
        let d1 = f.hogs[0];
        assert_eq!(
            (d1.hog.domid, d1.hog.cpu, d1.hog.weight),
            (DomId(1), Some(0), 100)
        );
        assert!(close(d1.share, 2.5 / 9.9) && close(d1.expected, 0.25));
        assert!(close(d1.error, (2.5 / 9.9 - 0.25) / 0.25));
        assert!(close(f.hogs[1].share, 1.0) && close(f.hogs[1].error, 0.0));
        assert!(close(f.hogs[2].expected, 0.75));
        assert!(close(f.max_error.unwrap(), (2.5 / 9.9 - 0.25) / 0.25));

        let c = &r.creation;
        assert_eq!(c.count, 20);
        let ms = |index, ns| Milestone { index, ns };
        assert_eq!(
            c.milestones,
            [ms(0, 1_000_000), ms(9, 1_009_000), ms(19, 1_019_000)]
        );
        assert!(close(c.ratio_last_first.unwrap(), 1.019));
        assert_eq!(c.ratio_100th_first, None);
        assert_eq!(c.total_ns, Some(20 * 1_000_000 + 190 * 1_000 + 10_000));
        assert_eq!(c.first_100_ns, None);
        assert_eq!(
            (c.early_median_ns, c.late_median_ns, c.late_from),
            (Some(1_002_000), Some(1_017_000), Some(15))
        );

        let statuses: Vec<(&str, Status)> = a.checks.iter().map(|c| (c.key, c.status)).collect();
        assert_eq!(
            statuses,
            [
                ("hypervisor_bytes_per_domain", Status::Pass),
                ("minimal_domain_kib", Status::Pass),
                ("create_100_total", Status::ReportOnly),
                ("create_slowdown", Status::ReportOnly),
                ("warped_p99", Status::Pass),
                ("unwarped_over_warped_p99", Status::Pass),
                ("hog_shares", Status::Pass),
                ("no_leak", Status::Pass),
            ]
        );
        assert!(a.passed(), "{:?}", a.failures());
    }

    #[test]
    fn n20_table_json_and_svg() {
        let a = analysed(&log(20), true);
        let text = table::render(&a);
        println!("{text}");
        for expected in [
            "stress run: n=20 cpus=2 seconds=10",
            "free after destroy                 1000000 KiB (no leak)",
            "hypervisor bytes per domain        7096 B",
            "largest N that fits                2438",
            "timer lateness, warped (latency)           3      3000     10.2     41.0     81.9     83.9",
            "timer lateness, idle (100 ms)              2       200    102.4    819.2    819.2    819.2",
            "unwarped/warped at p99: 10.0x",
            "PASS    each hog's CPU share within 5% of its weight's",
            "cpu0   switches     4321  stolen 3  pushed 41  warped timers 900/8/10/50/120  other timers -  interrupts 2000/12/10/50/21000",
            "verdict: PASS",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in\n{text}");
        }
        let file = json::ReportFile::new(&a);
        let text = file.render();
        assert_eq!(json::ReportFile::parse(&text), Ok(file.clone()), "the file reads back as written");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["schema_version"], json::SCHEMA_VERSION);
        assert_eq!(value["verdict"], "pass");
        assert_eq!(value["memory"]["hypervisor_bytes_per_domain"], 7096);
        assert_eq!(value["latency"]["timer_warped"]["p99_ns"], 40_960);
        assert_eq!(value["latency"]["timer_idle"]["samples"], 200);
        assert_eq!(value["creation"]["total_ns"], 20_200_000);
        let cpu0 = &value["run"]["hypervisor"][0];
        assert_eq!(cpu0["switches"], 4321);
        assert_eq!(cpu0["timer_late_warped"]["p99_us"], 50);
        assert_eq!(cpu0["timer_late_warped"]["max_us"], 120);
        assert_eq!(cpu0["timer_irq_late"]["max_us"], 21000);
        assert!(value["fairness"]["max_error"].is_number());
        assert_eq!(value["targets"][4]["status"], "PASS");
        let plot = svg::latency_plot(&a.report.latency, &a.title());
        let names = svg::tests::well_formed(&plot).unwrap();
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 4);
        assert!(plot.contains("stress latency: n=20, 2 CPUs, 10 s"));
    }

    #[test]
    fn relayed_records_give_the_same_report() {
        // Every worker's line as domain 0 relays its console ring (`make stress IO=1`).
        let direct = log(20);
        let relayed: Vec<String> = direct
            .iter()
            .map(|line| {
                (1..=20).fold(line.clone(), |l, n| l.replace(&format!("(d{n}) "), &format!("(d0) [d{n}] ")))
            })
            .collect();
        assert!(relayed.iter().filter(|l| l.contains("(d0) [d")).count() > 20 * 2);
        let (a, b) = (analysed(&direct, true), analysed(&relayed, true));
        assert_eq!(a.report, b.report);
        assert_eq!(table::render(&a), table::render(&b));
        assert_eq!(a.checks, b.checks);
        assert!(b.passed());
    }

    /// `log(n)` as an `IO=1` run whose worker lines domain 0 relayed: `mem phase=connected`,
    /// each worker's `io` and `iohist` records, domain 0's `devices` and `consoles`.
    fn io_log(n: usize) -> Vec<String> {
        let relay = |line: &String| {
            (1..=n).fold(line.clone(), |l, d| l.replace(&format!("(d{d}) "), &format!("(d0) [d{d}] ")))
        };
        let mut lines: Vec<String> = log(n).iter().map(relay).collect();
        let done = lines.iter().position(|l| l.contains("stress: done ok")).unwrap();
        let mut io = vec!["[cpu0 5.0] (d0) stress: mem phase=connected free_kib=1 heap_bytes=2 domains=3".to_string()];
        for d in 1..=n {
            io.push(format!("[cpu1 9.0] (d0) [d{d}] stress: io domid={d} requests=10 failed=0 bad_data=0 lost=0 max_ns=900000"));
            io.push(format!("[cpu1 9.0] (d0) [d{d}] stress: iohist domid={d} role=idle part=0 buckets=300:10"));
        }
        io.push(format!("[cpu0 9.5] (d0) stress: devices served={n} connected={n} dom0_heap_bytes=7900 ring_pages=3 disk_kib=1024 requests={} failed=0 cut=0", 10 * n));
        io.push(format!("[cpu0 9.6] (d0) stress: consoles relayed={n} lines={} dropped=0", 9 * n));
        lines.splice(done..done, io);
        lines
    }

    fn failures(lines: &[String]) -> String {
        let a = analysed(lines, false);
        assert!(!a.passed(), "the run must fail");
        a.failures().join("\n")
    }

    #[test]
    fn an_io_run_passes_when_every_read_and_record_came_through() {
        let a = analysed(&io_log(20), false);
        assert!(a.passed(), "{:?}", a.failures());
        let io = a.report.io.as_ref().expect("an IO run");
        assert_eq!((io.domains, io.requests, io.lost), (20, 200, 0));
        assert_eq!(io.consoles.map(|c| (c.relayed, c.dropped)), Some((20, 0)));
        let text = table::render(&a);
        assert!(text.contains("consoles relayed by domain 0: 20 (180 lines, 0 dropped over its rate limit)"), "{text}");
        let file = json::ReportFile::new(&a);
        assert_eq!(json::ReportFile::parse(&file.render()), Ok(file.clone()));
    }

    #[test]
    fn an_io_run_fails_on_a_lost_read_a_missing_record_or_a_dropped_line() {
        let lines = io_log(20);
        let lost = replaced(&lines, "io domid=7 requests=10 failed=0 bad_data=0 lost=0", "io domid=7 requests=10 failed=0 bad_data=0 lost=1");
        assert!(failures(&lost).contains("1 never answered"), "{}", failures(&lost));
        // A worker whose records never came through its console ring.
        let silent: Vec<String> = lines.iter().filter(|l| !l.contains("(d0) [d9] ")).cloned().collect();
        let why = failures(&silent);
        assert!(why.contains("d9 has no `result` line") && why.contains("d9 has no `io` line"), "{why}");
        let dropped = replaced(&lines, "dropped=0", "dropped=2");
        assert!(failures(&dropped).contains("dropped 2 lines"), "{}", failures(&dropped));
        let unrelayed = replaced(&lines, "consoles relayed=20", "consoles relayed=19");
        assert!(failures(&unrelayed).contains("relayed 19 of 20 consoles"), "{}", failures(&unrelayed));
    }

    #[test]
    fn n100_creation_targets() {
        let a = analysed(&log(100), true);
        assert!(a.passed(), "{:?}", a.failures());
        let c = &a.report.creation;
        assert_eq!(c.first_100_ns, Some(100 * 1_000_000 + 4_950 * 1_000));
        assert_eq!(
            (c.early_median_ns, c.late_median_ns, c.late_from),
            (Some(1_002_000), Some(1_097_000), Some(95))
        );
        assert!(close(c.ratio_100th_first.unwrap(), 1.099));
        assert_eq!(c.milestones.len(), 3);
        assert_eq!(status(&a, "create_100_total"), Status::Pass);
        assert_eq!(status(&a, "create_slowdown"), Status::Pass);
    }

    #[test]
    fn n100_slow_creations_miss_the_targets() {
        let mut lines = log(100);
        for line in lines
            .iter_mut()
            .filter(|l| l.contains("stress: create index=9"))
        {
            // Creations 9 and 90-99 take about 100 ms instead of about 1 ms.
            *line = line.replace("ns=10", "ns=1000");
        }
        let a = analysed(&lines, true);
        assert_eq!(status(&a, "create_100_total"), Status::Fail);
        assert_eq!(status(&a, "create_slowdown"), Status::Fail);
        assert!(!a.passed());
        assert!(
            analysed(&lines, false).passed(),
            "--no-targets reports only"
        );
    }

    #[test]
    fn one_outlier_does_not_move_the_median() {
        let lines = replaced(
            &log(100),
            "create index=97 domid=98 role=periodic cpu=1 ns=1097000",
            "create index=97 domid=98 role=periodic cpu=1 ns=9000000",
        );
        assert_eq!(
            status(&analysed(&lines, true), "create_slowdown"),
            Status::Pass
        );
    }

    #[test]
    fn missing_result_fails_even_without_targets() {
        let lines = without(&log(20), "stress: result domid=12 ");
        let a = analysed(&lines, false);
        assert!(a
            .report
            .problems
            .contains(&Problem::MissingResult { domid: DomId(12) }));
        assert!(!a.passed());
    }

    #[test]
    fn missing_domain_and_balloon_lines_fail() {
        let lines = without(&log(20), "stress: domain domid=4 ");
        let lines = without(&lines, "stress: balloon domid=5 ");
        let problems = analysed(&lines, false).report.problems;
        assert!(problems.contains(&Problem::MissingDomainInfo { domid: DomId(4) }));
        assert!(problems.contains(&Problem::MissingBalloon { domid: DomId(5) }));
    }

    #[test]
    fn leak_fails_even_without_targets() {
        let lines = replaced(
            &log(20),
            "phase=destroyed free_kib=1000000",
            "phase=destroyed free_kib=999996",
        );
        let a = analysed(&lines, false);
        assert!(a.report.problems.contains(&Problem::Leak {
            before_kib: 1_000_000,
            after_kib: 999_996
        }));
        assert_eq!(a.report.memory.leaked_kib, Some(4));
        assert_eq!(status(&a, "no_leak"), Status::Fail);
        assert!(!a.passed());
    }

    #[test]
    fn leaked_frames_and_hypervisor_failures_fail() {
        let lines = replaced(&log(20), "memory.leaked_frames=0", "memory.leaked_frames=3");
        let lines = replaced(&lines, "] summary: run=pass", "] ERROR summary: run=fail");
        let lines = replaced(&lines, "unexpected_endings=0", "unexpected_endings=1");
        let problems = analysed(&lines, false).report.problems;
        assert_eq!(
            problems,
            [
                Problem::HypervisorFail,
                Problem::UnexpectedEndings(1),
                Problem::LeakedFrames(3)
            ]
        );
    }

    #[test]
    fn a_run_with_more_latency_domains_than_cpus_and_no_push_fails() {
        let lines = replaced(&log(20), "warped_pushes_out=41", "warped_pushes_out=0");
        let problems = analysed(&lines, false).report.problems;
        assert_eq!(problems, [Problem::NoWarpedPushes { latency: 3, cpus: 2 }]);
        let one_per_cpu = replaced(&lines, "latency=3", "latency=2");
        assert_eq!(analysed(&one_per_cpu, false).report.problems, [], "one per CPU: nothing to push");
        let before_pushes: Vec<String> = lines.into_iter().filter(|l| !l.contains("warped_pushes_out")).collect();
        assert_eq!(analysed(&before_pushes, false).report.problems, [], "a log from before pushes");
    }

    #[test]
    fn guest_errors_and_failed_runs_fail() {
        let mut lines = log(20);
        lines.insert(
            40,
            "[cpu1     0.5] (d14) stress: error domid=14 what=timer".into(),
        );
        let lines = replaced(&lines, "stress: done ok", "stress: FAILED reason=destroy");
        let problems = analysed(&lines, false).report.problems;
        assert_eq!(
            problems,
            [
                Problem::Failed {
                    reason: "destroy".into()
                },
                Problem::NotDone,
                Problem::GuestError {
                    domid: DomId(14),
                    what: "timer".into()
                }
            ]
        );
    }

    #[test]
    fn truncated_log_fails_with_every_missing_piece() {
        let full = log(20);
        let cut = full
            .iter()
            .position(|l| l.contains("phase=ballooned"))
            .unwrap();
        let a = analysed(&full[..=cut], true);
        assert!(a.report.problems.contains(&Problem::NotDone));
        assert!(a
            .report
            .problems
            .contains(&Problem::MissingMemPhase(crate::parse::MemPhase::Destroyed)));
        assert_eq!(
            a.report
                .problems
                .iter()
                .filter(|p| matches!(p, Problem::MissingResult { .. }))
                .count(),
            20
        );
        assert_eq!(status(&a, "warped_p99"), Status::NotMeasured);
        assert_eq!(status(&a, "no_leak"), Status::NotMeasured);
    }

    #[test]
    fn unfair_hogs_miss_the_target() {
        let lines = replaced(&log(20), "cpu_time_ns=2500000000", "cpu_time_ns=3500000000");
        let a = analysed(&lines, true);
        // cpu 0: 3.5 / 10.9 against 1/4: 28% off.
        assert!(close(
            a.report.fairness.max_error.unwrap(),
            (3.5 / 10.9 - 0.25) / 0.25
        ));
        assert_eq!(status(&a, "hog_shares"), Status::Fail);
        assert!(!a.passed());
        assert!(analysed(&lines, false).passed());
    }

    #[test]
    fn the_common_window_decides_the_shares_when_measured() {
        let unfair = replaced(&log(20), "cpu_time_ns=2500000000", "cpu_time_ns=3500000000");
        let windowed: Vec<String> = unfair
            .iter()
            .map(|l| {
                if l.contains("cpu_time_ns=3500000000") {
                    format!("{l} window_cpu_ns=2500000000")
                } else {
                    l.clone()
                }
            })
            .collect();
        let a = analysed(&windowed, true);
        assert_eq!(
            status(&a, "hog_shares"),
            Status::Pass,
            "the window's time is fair"
        );
        assert!(a.passed());
    }

    #[test]
    fn slow_warped_domains_miss_the_latency_targets() {
        // Domain 4 (latency) reports its 985 samples at 10.24 us as 1.31 ms instead.
        let lines: Vec<String> = log(20)
            .into_iter()
            .map(|l| {
                if l.contains("(d4) stress: hist") {
                    l.replace("164:985", "276:985")
                } else {
                    l
                }
            })
            .collect();
        let lines = replaced(
            &lines,
            "result domid=4 role=latency samples=1000 max_ns=81920",
            "result domid=4 role=latency samples=1000 max_ns=1310720",
        );
        let a = analysed(&lines, true);
        assert!(a.report.warnings.is_empty(), "{:?}", a.report.warnings);
        assert_eq!(
            a.report.latency.stats(SeriesKind::Warped).unwrap().p99_ns,
            1_310_720
        );
        assert_eq!(status(&a, "warped_p99"), Status::Fail);
        assert_eq!(status(&a, "unwarped_over_warped_p99"), Status::Fail);
    }

    #[test]
    fn garbage_and_noise_are_warnings_not_failures() {
        let mut lines = log(20);
        lines.insert(
            30,
            "[cpu0     0.4] (d3) stress: hist domid=3 role=hog part=9 buckets=zz".into(),
        );
        lines.insert(31, "\u{fffd}\u{fffd}[cpu1 0.4] (d2) stress: wibble".into());
        lines.insert(
            32,
            "[cpu1 0.4] (d2) [5 lines suppressed by the console rate limit]".into(),
        );
        let a = analysed(&lines, true);
        assert_eq!(a.report.warnings.len(), 4, "{:?}", a.report.warnings);
        assert!(a.passed(), "{:?}", a.failures());
    }

    #[test]
    fn qemu_failure_fails_the_run() {
        let lines = log(20);
        let a = analyse(
            &lines.join("\n"),
            Some(crate::qemu::QemuOutcome::Exited(35)),
            false,
        );
        assert!(matches!(a.report.problems[..], [Problem::Qemu(_)]));
        let a = analyse(
            &lines.join("\n"),
            Some(crate::qemu::QemuOutcome::Exited(33)),
            true,
        );
        assert!(a.passed());
    }
}
