//! The `stress` binary: `stress run --qemu '...'` runs QEMU and reports on its serial log,
//! `stress report <serial.log>` reports on a saved log, `stress summarize <report.json>...`
//! prints the medians and ranges of several runs, `stress capacity <logs or reports>...`
//! writes the capacity page (see [`stress::cli`] for the options). Exits 0 (pass), 1 (a
//! domain failed, memory leaked, QEMU failed, or, with `--targets enforce`, a target was
//! missed) or 2 (usage or I/O error).

#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use stress::capacity::{self, RunReport};
use stress::cli::{CapacityArgs, Cli, Command, RunArgs};
use stress::json::ReportFile;
use stress::noise;
use stress::qemu::{self, QemuOutcome, QemuRun};
use stress::report::HostInfo;
use stress::{analyse, summary, table, write_outputs};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match execute(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("stress: {error}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command; true when the run passed.
fn execute(command: Command) -> io::Result<bool> {
    match command {
        Command::Report(args) => report(&args.log, None, None, &args.out, args.targets.enforce()),
        Command::Run(args) => run(&args),
        Command::Summarize { reports } => {
            let reports = reports
                .into_iter()
                .map(|path| Ok((path.clone(), ReportFile::read(&path)?)))
                .collect::<io::Result<Vec<_>>>()?;
            print(&summary::summarize(&reports));
            Ok(true)
        }
        Command::Capacity(args) => capacity(&args),
    }
}

fn run(args: &RunArgs) -> io::Result<bool> {
    let log = args.log_path();
    std::fs::create_dir_all(&args.out)?;
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    eprintln!(
        "stress: running {} (log {}, timeout {} s)",
        args.qemu.0.join(" "),
        log.display(),
        args.timeout
    );
    // Before QEMU starts, so that the probe competes with nothing of the run's.
    let host_cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let stalls = noise::probe(host_cpus, noise::PROBE_LENGTH);
    let steal_before = noise::steal_now();
    let started = std::time::Instant::now();
    let finished = qemu::run(
        &QemuRun {
            argv: args.qemu.0.clone(),
            log: log.clone(),
            timeout: args.timeout(),
            vcpu_threads: args.vcpu_threads,
        },
        &mut io::stdout(),
    )?;
    eprintln!("stress: QEMU {}", finished.outcome);
    let host = HostInfo {
        placement: finished.placement.clone(),
        times: finished.host_times,
        steal_percent: steal_during(&finished, &steal_before, started.elapsed()),
        probe: Some(stalls),
    };
    eprintln!("stress: host: {host}");
    report(
        &log,
        Some(finished.outcome),
        Some(host),
        &args.out,
        args.targets.enforce(),
    )
}

/// The host's steal time over the run, in percent, on the host CPUs the vCPU threads were
/// pinned to (all of them when they were not).
fn steal_during(
    finished: &qemu::Finished,
    before: &[(u32, u64)],
    elapsed: std::time::Duration,
) -> Option<f64> {
    let pinned: Vec<u32> = finished
        .placement
        .iter()
        .flat_map(|p| p.pinned.iter().map(|&(_, cpu)| cpu))
        .collect();
    let cpus = if pinned.is_empty() {
        before.iter().map(|&(cpu, _)| cpu).collect()
    } else {
        pinned
    };
    noise::steal_percent(before, &noise::steal_now(), &cpus, elapsed)
}

fn read_log(log: &Path) -> io::Result<String> {
    let bytes = std::fs::read(log)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", log.display())))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes to stdout; a closed pipe (`stress report x | head`) must not change the verdict.
fn print(text: &str) {
    let _ = io::stdout().lock().write_all(text.as_bytes());
}

/// Reads the log, prints the table, writes the files. `host` is what the host gave the run
/// (when this tool ran QEMU).
fn report(
    log: &Path,
    qemu: Option<QemuOutcome>,
    host: Option<HostInfo>,
    out: &Path,
    enforce_targets: bool,
) -> io::Result<bool> {
    let mut analysis = analyse(&read_log(log)?, qemu, enforce_targets);
    analysis.report.run.host = host;
    let written = write_outputs(&analysis, out)?;
    print(&format!(
        "{}written: {} and {}\n",
        table::render(&analysis),
        written.json.display(),
        written.svg.display()
    ));
    Ok(analysis.passed())
}

/// Reads every input (a `.json` file as a report, anything else as a serial log) and
/// writes the capacity page. An input that cannot be read is left out with a warning: the
/// page is drawn from whatever runs there are.
fn capacity(args: &CapacityArgs) -> io::Result<bool> {
    let read = |path: &PathBuf| -> io::Result<ReportFile> {
        if path.extension().is_some_and(|e| e == "json") {
            ReportFile::read(path)
        } else {
            Ok(ReportFile::new(&analyse(&read_log(path)?, None, false)))
        }
    };
    let mut runs = Vec::new();
    for path in &args.inputs {
        match read(path) {
            Ok(report) => runs.push(RunReport {
                source: path.display().to_string(),
                report,
            }),
            Err(error) => eprintln!("stress: left out: {error}"),
        }
    }
    if runs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no run could be read",
        ));
    }
    let out: PathBuf = args.out_path();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, capacity::page(&runs, args.p99_us))?;
    for (cpus, levels) in capacity::levels(&runs) {
        println!(
            "{}",
            capacity::verdict_text(capacity::verdict(&levels, args.p99_us), args.p99_us, cpus)
        );
    }
    println!("written: {} ({} runs)", out.display(), runs.len());
    Ok(true)
}
