//! The report as a plain-text table for the terminal: run, memory, latency, fairness,
//! creation, targets, problems, warnings and the verdict, in that order.
//!
//! Called by the binary after `analyse`. It only formats figures the report computed
//! (a figure it lacks is `-`), and it never decides anything.

use std::fmt::Write;

use crate::report::{
    CreationReport, FairnessReport, LatencyReport, MemoryReport, Report, SeriesKind, Spread,
};
use crate::Analysis;

/// Warnings listed before the rest are only counted.
const WARNINGS_SHOWN: usize = 20;

/// The whole table.
pub fn render(a: &Analysis) -> String {
    let mut out = String::new();
    header(&mut out, &a.report);
    memory(&mut out, &a.report.memory, a.report.run.created);
    latency(&mut out, &a.report.latency);
    if let Some(io) = &a.report.io {
        io_section(&mut out, io);
    }
    hypervisor_view(&mut out, &a.report.run.sched);
    fairness(&mut out, &a.report.fairness);
    creation(&mut out, &a.report.creation);
    targets(&mut out, a);
    problems_and_warnings(&mut out, &a.report);
    let verdict = if a.passed() { "PASS" } else { "FAIL" };
    let enforced = if a.enforce_targets {
        ""
    } else {
        " (targets not enforced)"
    };
    let _ = writeln!(out, "\nverdict: {verdict}{enforced}");
    out
}

/// An optional figure, or `-`.
fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// ns as µs with one decimal.
fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

/// ns as ms with three decimals.
fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

fn header(out: &mut String, r: &Report) {
    let run = &r.run;
    let _ = match run.config {
        Some(c) => writeln!(
            out,
            "stress run: n={} cpus={} seconds={} (idle={} periodic={} latency={} hogs={} pairs={}) mem_kib={} max_kib={}",
            c.n, c.cpus, c.seconds, c.idle, c.periodic, c.latency, c.hogs, c.pairs, c.mem_kib, c.max_kib
        ),
        None => writeln!(out, "stress run: no config line"),
    };
    let ending = match (&run.failed, run.done) {
        (Some(reason), _) => format!("FAILED reason={reason}"),
        (None, true) => "done ok".to_string(),
        (None, false) => "did not finish".to_string(),
    };
    let _ = write!(
        out,
        "log: {} lines, {} domains created, {ending}",
        run.log_lines, run.created
    );
    let _ = write!(
        out,
        "; cpus online {}, TSC {} MHz",
        or_dash(run.cpus_online),
        or_dash(run.tsc_mhz)
    );
    if let Some(qemu) = run.qemu {
        let _ = write!(out, "; QEMU {qemu}");
    }
    out.push('\n');
    if let Some(host) = &run.host {
        let _ = writeln!(out, "host: {host}");
    }
}

fn row(out: &mut String, label: &str, value: String) {
    let _ = writeln!(out, "  {label:<34} {value}");
}

fn spread(s: Option<Spread>) -> String {
    s.map_or("-".to_string(), |s| {
        format!(
            "avg {:.1}  min {}  max {}  ({:.1} KiB avg, {} domains)",
            s.mean,
            s.min,
            s.max,
            s.mean * 4.0,
            s.count
        )
    })
}

fn memory(out: &mut String, m: &MemoryReport, created: usize) {
    out.push_str("\nmemory\n");
    let kib = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} KiB"));
    row(out, "free before", kib(m.free_kib.before));
    row(
        out,
        &format!("free with {created} domains"),
        kib(m.free_kib.created),
    );
    row(out, "free after ballooning", kib(m.free_kib.ballooned));
    let leak = match m.leaked_kib {
        Some(0) => " (no leak)".to_string(),
        Some(k) => format!(" (LEAK: {k} KiB)"),
        None => String::new(),
    };
    row(
        out,
        "free after destroy",
        format!("{}{leak}", kib(m.free_kib.destroyed)),
    );
    let reported = m
        .hypervisor_reported_bytes_per_domain
        .map_or(String::new(), |b| {
            format!(" (hypervisor's own figure {b} B)")
        });
    row(
        out,
        "hypervisor bytes per domain",
        format!(
            "{}{reported}",
            or_dash(m.hypervisor_bytes_per_domain.map(|b| format!("{b} B")))
        ),
    );
    row(
        out,
        "heap kept after destroy",
        or_dash(m.heap_growth_bytes.map(|b| format!("{b} B"))),
    );
    row(out, "guest frames per domain (end)", spread(m.guest_pages));
    row(
        out,
        "guest frames after ballooning",
        spread(m.ballooned_pages),
    );
    row(
        out,
        "smallest ballooned domain in all",
        or_dash(m.minimal_domain_kib.map(|k| format!("{k:.1} KiB"))),
    );
    let w = &m.window;
    let fit = w.domains_that_fit.map_or(String::new(), |n| {
        format!(" (room for {n} domains' hypervisor bytes)")
    });
    row(
        out,
        "window",
        format!(
            "used {} KiB, free {} KiB{fit}",
            or_dash(w.used_kib),
            or_dash(w.free_kib)
        ),
    );
    for region in &w.regions {
        row(
            out,
            &format!("  window {}", region.name),
            format!("{}/{} KiB", region.used_kib, region.size_kib),
        );
    }
    row(
        out,
        "largest N that fits",
        match (m.largest_n, m.largest_n_heap) {
            (Some(n), Some(heap)) if n < heap => format!("{n} (bound by memory; the heap holds {heap})"),
            (Some(n), Some(_)) => format!("{n} (bound by the hypervisor heap, `heap_mib`)"),
            (n, _) => or_dash(n),
        },
    );
}

fn latency(out: &mut String, l: &LatencyReport) {
    let title = format!("latency ({} CPUs, µs)", or_dash(l.cpus));
    let _ = writeln!(
        out,
        "\n{title:<38} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "domains", "samples", "p50", "p99", "p99.9", "max"
    );
    for kind in SeriesKind::ALL {
        let Some(series) = l.series(kind) else {
            continue;
        };
        let figures = series
            .stats
            .map_or("       -        -        -        -".to_string(), |s| {
                format!(
                    "{:>8} {:>8} {:>8} {:>8}",
                    us(s.p50_ns),
                    us(s.p99_ns),
                    us(s.p999_ns),
                    us(s.max_ns)
                )
            });
        let _ = writeln!(
            out,
            "  {:<36} {:>7} {:>9} {figures}",
            kind.label(),
            series.domains,
            series.hist.samples()
        );
    }
    let ratio = l.p99_ratio.map_or("-".to_string(), |r| format!("{r:.1}x"));
    let _ = writeln!(
        out,
        "  unwarped/warped at p99: {ratio}; pings never answered: {}",
        l.lost_answers
    );
    out.push_str("  (percentiles are bucket low bounds, at most 6.25% under; max is exact)\n");
}

/// `IO=1`: the VBD reads and what the devices cost.
fn io_section(out: &mut String, io: &crate::report::IoReport) {
    let _ = writeln!(out, "\nVBD reads (IO=1; request to response, µs)");
    let figures = io.stats.map_or("-".to_string(), |s| {
        format!("p50 {}  p99 {}  max {}", us(s.p50_ns), us(s.p99_ns), us(s.max_ns))
    });
    let _ = writeln!(
        out,
        "  {} domains, {} requests: {figures}; lost {}, failed {}, bad data {}",
        io.domains, io.requests, io.lost, io.failed, io.bad_data
    );
    match io.devices {
        Some(d) => {
            let _ = writeln!(
                out,
                "  domain 0: {} served, {} connected, {} answered OK, {} with an error, {} cut off; {} KiB disk each",
                d.served, d.connected, d.requests, d.failed, d.cut, d.disk_kib
            );
            let _ = writeln!(
                out,
                "  memory per domain for its devices: domain 0 heap {} B beyond its {} ring pages; hypervisor heap {} B (connected - ballooned)",
                d.dom0_heap_bytes,
                d.ring_pages,
                or_dash(io.hypervisor_bytes_per_domain)
            );
        }
        None => out.push_str("  no `devices` line from domain 0\n"),
    }
    if let Some(c) = io.consoles {
        let _ = writeln!(
            out,
            "  consoles relayed by domain 0: {} ({} lines, {} dropped over its rate limit)",
            c.relayed, c.lines, c.dropped
        );
    }
}

/// The hypervisor's own view per CPU (`summary: sched.cpuN.*`): how late timer interrupts
/// came against the deadlines they served, and how long woken vCPUs waited to run.
fn hypervisor_view(out: &mut String, summary: &std::collections::BTreeMap<String, String>) {
    let cpus = (0..).take_while(|cpu| summary.contains_key(&format!("sched.cpu{cpu}.switches")));
    let mut header = false;
    for cpu in cpus {
        if !header {
            header = true;
            let _ = writeln!(
                out,
                "  hypervisor per CPU (count/avg/p50</p99</max, µs): vCPUs taken by idle CPUs and warped vCPUs pushed to a CPU\n  \
                 running none; timer interrupt after the deadline; timer interrupt after the time it was armed for\n  \
                 (the machine beneath: under TCG, QEMU's timer delivery); wake-up to run;\n  \
                 warped timer's deadline to its vCPU's run (0 when switched in ahead of it); each stay in the hypervisor\n  \
                 (interrupts off), and what caused the longest; time spent waiting out the deadlines of warped vCPUs switched in early"
            );
        }
        let get = |key: &str| {
            summary
                .get(&format!("sched.cpu{cpu}.{key}"))
                .map_or("-", String::as_str)
        };
        let _ = writeln!(
            out,
            "    cpu{cpu:<3} switches {:>8}  stolen {}  pushed {}  warped timers {}  other timers {}  interrupts {}  wake-to-run {}  warped-to-run {}  stays {} ({})  held {} ms",
            get("switches"),
            get("migrations_out"),
            get("warped_pushes_out"),
            get("timer_late_warped_us"),
            get("timer_late_us"),
            get("timer_irq_late_us"),
            get("wake_to_run_us"),
            get("warped_to_run_us"),
            get("in_hypervisor_us"),
            get("longest_stay"),
            summary.get(&format!("sched.cpu{cpu}.held_wait_us")).and_then(|us| us.parse::<u64>().ok()).map_or("-".to_string(), |us| (us / 1000).to_string())
        );
    }
}

fn fairness(out: &mut String, f: &FairnessReport) {
    out.push_str("\nfairness (hogs compete with the hogs on their CPU)\n");
    if f.hogs.is_empty() {
        out.push_str("  no hogs\n");
        return;
    }
    out.push_str("  domain   cpu  weight   cpu time ms     share  expected     error\n");
    for h in &f.hogs {
        let _ = writeln!(
            out,
            "  {:<7} {:>4} {:>7} {:>13.1} {:>8.2}% {:>8.2}% {:>8.2}%",
            crate::parse::Dom(h.hog.domid).to_string(),
            or_dash(h.hog.cpu),
            h.hog.weight,
            h.hog.cpu_time_ns as f64 / 1e6,
            h.share * 100.0,
            h.expected * 100.0,
            h.error * 100.0
        );
    }
    let _ = writeln!(
        out,
        "  worst error: {}",
        or_dash(f.max_error.map(|e| format!("{:.2}%", e * 100.0)))
    );
}

fn creation(out: &mut String, c: &CreationReport) {
    out.push_str("\ncreation (as domain 0 saw it)\n");
    for m in &c.milestones {
        row(out, &format!("creation #{}", m.index + 1), ms(m.ns));
    }
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}x"));
    row(
        out,
        &format!("#{} / #1", c.count),
        ratio(c.ratio_last_first),
    );
    // With exactly 100 domains the line above says it already.
    if c.ratio_100th_first.is_some() && c.count != 100 {
        row(out, "#100 / #1", ratio(c.ratio_100th_first));
    }
    if let (Some(from), Some(early), Some(late)) =
        (c.late_from, c.early_median_ns, c.late_median_ns)
    {
        let label = format!("median #{}-{} / median #1-5", from + 1, from + 5);
        row(
            out,
            &label,
            format!("{} ({} / {})", ratio(c.slowdown), ms(late), ms(early)),
        );
    }
    row(
        out,
        &format!("total for {} domains", c.count),
        or_dash(c.total_ns.map(ms)),
    );
    if let Some(ns) = c.first_100_ns.filter(|_| c.count != 100) {
        row(out, "first 100 creations", ms(ns));
    }
}

fn targets(out: &mut String, a: &Analysis) {
    let enforced = if a.enforce_targets {
        "enforced: a MISS fails the run"
    } else {
        "reported: a MISS does not fail the run (`--targets enforce` to make it)"
    };
    let _ = writeln!(out, "\ntargets ({enforced})");
    let noise = match &a.report.run.host {
        Some(host) => format!("host: {}", host.noise()),
        None => "host noise unknown: a log re-read".to_string(),
    };
    for check in &a.checks {
        let beside = if check.word() == "MISS" {
            format!("  [{noise}]")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:<7} {:<58} {}{beside}",
            check.word(),
            check.goal,
            check.measured
        );
    }
}

fn problems_and_warnings(out: &mut String, r: &Report) {
    if !r.problems.is_empty() {
        let _ = writeln!(out, "\nproblems ({})", r.problems.len());
        for problem in &r.problems {
            let _ = writeln!(out, "  {problem}");
        }
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings ({})", r.warnings.len());
        for warning in r.warnings.iter().take(WARNINGS_SHOWN) {
            let _ = writeln!(out, "  {warning}");
        }
        if r.warnings.len() > WARNINGS_SHOWN {
            let _ = writeln!(
                out,
                "  ... and {} more (see report.json)",
                r.warnings.len() - WARNINGS_SHOWN
            );
        }
    }
}
