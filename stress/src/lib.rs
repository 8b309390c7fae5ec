//! `stress`: the host side of `make stress` and `make capacity`. It runs QEMU (or reads a
//! serial log saved anywhere), reads the console records the `protocol` crate defines
//! (`stress/PROTOCOL.md`), and reports memory, latency, fairness and creation figures
//! against the run's targets, as a table, `report.json` and `latency.svg`; it summarizes
//! several runs' reports and draws a capacity page from runs at several N.
//!
//! The pipeline is [`parse`] (lines to records) → [`collect`] (records to a run) →
//! [`report`] (figures and problems) → [`targets`] (PASS or MISS), joined by [`analyse`];
//! [`table`], [`json`] and [`svg`] present the [`Analysis`]; [`summary`] and [`capacity`]
//! (with [`plot`]) read reports back; [`qemu`], [`vcpu`], [`noise`] and [`cli`] serve the
//! binary. Nothing here panics on a bad log: what cannot be read becomes a warning, what is
//! missing becomes a problem or a missing figure.

#![forbid(unsafe_code)]

pub mod capacity;
pub mod cli;
pub mod collect;
pub mod hist;
pub mod json;
pub mod noise;
pub mod parse;
pub mod plot;
pub mod qemu;
pub mod report;
pub mod summary;
pub mod svg;
pub mod table;
pub mod targets;
pub mod vcpu;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod synthetic;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use qemu::QemuOutcome;
use report::Report;
use targets::Check;

/// The report of a run and the judgement of its targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    pub report: Report,
    pub checks: Vec<Check>,
    /// True with `--targets enforce`: a missed performance target fails the run; otherwise
    /// it is shown (MISS) with the host's noise figures and does not.
    pub enforce_targets: bool,
}

impl Analysis {
    /// True when nothing failed: no problem (errors, missing results, leaks, QEMU's
    /// status) and, when enforced, no missed target.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// Why the run fails, one line each; empty when it passes.
    pub fn failures(&self) -> Vec<String> {
        let problems = self.report.problems.iter().map(ToString::to_string);
        let missed = self
            .checks
            .iter()
            .filter(|c| self.enforce_targets && c.missed())
            .map(|c| format!("target missed: {} ({})", c.goal, c.measured));
        problems.chain(missed).collect()
    }

    /// The title of the plot: what ran.
    pub fn title(&self) -> String {
        match self.report.run.config {
            Some(c) => format!(
                "stress latency: n={}, {} CPUs, {} s",
                c.n, c.cpus, c.seconds
            ),
            None => "stress latency".to_string(),
        }
    }
}

/// Analyses a serial log; `qemu` is how QEMU ended when this tool ran it.
pub fn analyse(log: &str, qemu: Option<QemuOutcome>, enforce_targets: bool) -> Analysis {
    let run = collect::collect(parse::parse_log(log));
    let report = report::build(&run, qemu);
    let checks = targets::evaluate(&report);
    Analysis {
        report,
        checks,
        enforce_targets,
    }
}

/// The files [`write_outputs`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outputs {
    pub json: PathBuf,
    pub svg: PathBuf,
}

/// Writes `report.json` and `latency.svg` into `dir`, creating it.
pub fn write_outputs(analysis: &Analysis, dir: &Path) -> io::Result<Outputs> {
    fs::create_dir_all(dir)?;
    let outputs = Outputs {
        json: dir.join("report.json"),
        svg: dir.join("latency.svg"),
    };
    fs::write(&outputs.json, json::ReportFile::new(analysis).render())?;
    fs::write(
        &outputs.svg,
        svg::latency_plot(&analysis.report.latency, &analysis.title()),
    )?;
    Ok(outputs)
}
