//! The `stress` binary: `stress report <serial.log>` reports on a saved serial log,
//! `stress run --qemu '...'` runs QEMU first (see [`stress::cli`] for the options).
//! Prints the table, writes `report.json` and `latency.svg`, and exits 0 (pass),
//! 1 (a domain failed, memory leaked or a target was missed) or 2 (usage or I/O error).

#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use stress::cli::{self, Command};
use stress::noise;
use stress::qemu::{self, QemuOutcome, QemuRun};
use stress::{analyse, table, write_outputs};

fn main() -> ExitCode {
    let command = match cli::parse_args(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("stress: {error}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match execute(command) {
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
        Command::Help => {
            println!("{}", cli::USAGE);
            Ok(true)
        }
        Command::Report {
            log,
            out,
            enforce_targets,
        } => report(&log, None, None, &out, enforce_targets),
        Command::Run {
            qemu,
            log,
            timeout,
            out,
            enforce_targets,
            vcpu_threads,
        } => {
            std::fs::create_dir_all(&out)?;
            if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            eprintln!(
                "stress: running {} (log {}, timeout {} s)",
                qemu.join(" "),
                log.display(),
                timeout.as_secs()
            );
            // Before QEMU starts, so that the probe competes with nothing of the run's.
            let host_cpus = std::thread::available_parallelism().map_or(1, usize::from);
            let stalls = noise::probe(host_cpus, noise::PROBE_LENGTH);
            let steal_before = noise::steal_now();
            let started = std::time::Instant::now();
            let finished = qemu::run(
                &QemuRun {
                    argv: qemu,
                    log: log.clone(),
                    timeout,
                    vcpu_threads,
                },
                &mut io::stdout(),
            )?;
            eprintln!("stress: QEMU {}", finished.outcome);
            let steal = steal_during(&finished, &steal_before, started.elapsed());
            let parts: Vec<String> = [
                finished.placement.as_ref().map(|p| p.to_string()),
                finished.host_times.map(|t| t.to_string()),
                steal.map(|share| format!("host steal during the run {share:.2}% (its CPUs' time taken by the hypervisor beneath)")),
                Some(stalls.to_string()),
            ]
            .into_iter()
            .flatten()
            .collect();
            let host = (!parts.is_empty()).then(|| parts.join("; "));
            if let Some(host) = &host {
                eprintln!("stress: host: {host}");
            }
            report(&log, Some(finished.outcome), host, &out, enforce_targets)
        }
    }
}

/// The host's steal time over the run, in percent, on the host CPUs the vCPU threads were
/// pinned to (all of them when they were not).
fn steal_during(finished: &qemu::Finished, before: &[(u32, u64)], elapsed: std::time::Duration) -> Option<f64> {
    let pinned: Vec<u32> = finished.placement.iter().flat_map(|p| p.pinned.iter().map(|&(_, cpu)| cpu)).collect();
    let cpus = if pinned.is_empty() { before.iter().map(|&(cpu, _)| cpu).collect() } else { pinned };
    noise::steal_percent(before, &noise::steal_now(), &cpus, elapsed)
}

/// Reads the log, prints the table, writes the files. `host` says how QEMU's vCPU threads
/// were scheduled on the host (when this tool changed it), what the host gave them, and how
/// noisy the host was ([`noise`]).
fn report(
    log: &Path,
    qemu: Option<QemuOutcome>,
    host: Option<String>,
    out: &Path,
    enforce_targets: bool,
) -> io::Result<bool> {
    let bytes = std::fs::read(log)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", log.display())))?;
    let mut analysis = analyse(&String::from_utf8_lossy(&bytes), qemu, enforce_targets);
    analysis.report.run.host = host;
    let written = write_outputs(&analysis, out)?;
    let text = format!(
        "{}written: {} and {}\n",
        table::render(&analysis),
        written.json.display(),
        written.svg.display()
    );
    // A closed pipe (`stress report x | head`) must not change the verdict.
    let _ = io::stdout().lock().write_all(text.as_bytes());
    Ok(analysis.passed())
}
