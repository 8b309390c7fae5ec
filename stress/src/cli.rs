//! The command line of the `stress` binary (clap, derived):
//!
//! ```text
//! stress run --qemu '<qemu command line>' [--log FILE] [--timeout SECS] [--out DIR]
//!            [--targets report|enforce] [--vcpu-threads default|idle]
//! stress report <serial.log> [--out DIR] [--targets report|enforce]
//! stress summarize <report.json>...
//! stress capacity <serial.log or report.json>... [--p99-us US] [--out FILE]
//! ```
//!
//! Called by `main`. It only turns arguments into a [`Command`]; it never touches files.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::qemu::split_command;
use crate::vcpu::VcpuThreads;

/// Where the report goes unless `--out` says otherwise: `stress/out` in this checkout.
pub const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/out");
/// QEMU's time limit unless `--timeout` says otherwise, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// The log file's name in the output directory unless `--log` says otherwise.
pub const DEFAULT_LOG_NAME: &str = "serial.log";
/// The capacity page's name in the output directory unless `--out` says otherwise.
pub const DEFAULT_CAPACITY_NAME: &str = "capacity.html";

const AFTER_HELP: &str = "\
Targets: a missed performance target (latency, fairness, creation time, memory per
domain) is printed as MISS with the host's noise figures beside it; it fails the run only
with `--targets enforce`. The default, `--targets report`, lets a noisy host pass. What
breaks a run fails it whatever the targets: a domain that failed or reported an error (an
early timer among them), a missing result, leaked memory, QEMU's failure status.

Exit status: 0 pass, 1 the run failed (or, enforced, missed a target), 2 usage or I/O error.";

/// The `stress` binary's arguments.
#[derive(Debug, PartialEq, Eq, Parser)]
#[command(
    name = "stress",
    about = "The host side of `make stress`: runs QEMU, reads the serial log, reports; summarizes runs; plans capacity",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What the binary does.
#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Runs QEMU, saves its serial log, then reports on it as `report` does.
    ///
    /// Before QEMU starts it spins a thread per host CPU for 1 s and counts the clock gaps
    /// (host stalls); it also reads the host's steal time over the run and how long the
    /// vCPU threads waited for a host CPU: the report's host noise figures.
    Run(RunArgs),
    /// Reports on a serial log saved earlier (by `run`, or captured anywhere).
    ///
    /// The table goes to stdout, `report.json` and `latency.svg` to the output directory.
    Report(ReportArgs),
    /// Prints the medians and ranges of several runs' `report.json` files.
    ///
    /// One Markdown table per configuration (N, CPUs, seconds).
    Summarize {
        /// `report.json` files (`stress/out/report.json` of each run).
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
    /// Writes the capacity page from runs at several N (logs or `report.json` files).
    ///
    /// One self-contained HTML page: latency percentiles and memory per domain against N,
    /// and the largest N that meets the p99 objective.
    Capacity(CapacityArgs),
}

/// Whether a missed performance target fails the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TargetMode {
    /// Printed as MISS with the host's noise figures; the run still passes.
    #[default]
    Report,
    /// A MISS fails the run.
    Enforce,
}

/// The target options both reporting commands take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Args)]
pub struct TargetArgs {
    /// Whether a missed performance target fails the run.
    #[arg(long, value_enum, default_value_t = TargetMode::Report)]
    pub targets: TargetMode,
    /// The same as `--targets report` (kept for older scripts).
    #[arg(long, hide = true, conflicts_with = "targets")]
    pub no_targets: bool,
}

impl TargetArgs {
    /// True when missed targets fail the run.
    pub fn enforce(self) -> bool {
        self.targets == TargetMode::Enforce && !self.no_targets
    }
}

/// `stress run`.
#[derive(Debug, PartialEq, Eq, Args)]
pub struct RunArgs {
    /// QEMU's command line, one string, split like a shell would (quotes, backslashes).
    #[arg(long, value_parser = parse_qemu)]
    pub qemu: QemuLine,
    /// Where the serial log goes (default: DIR/serial.log).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// QEMU's time limit, in whole seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// The output directory (default: stress/out).
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    #[command(flatten)]
    pub targets: TargetArgs,
    /// `idle` puts QEMU's TCG vCPU threads in the host's SCHED_IDLE class and pins vCPU k
    /// to the k-th host CPU this tool may use, so that QEMU's main loop (which delivers
    /// timer interrupts under TCG) is never kept waiting by them; QEMU must have
    /// `-name <name>,debug-threads=on`. `default` leaves them alone.
    #[arg(long, value_parser = parse_vcpu_threads, default_value = "default")]
    pub vcpu_threads: VcpuThreads,
}

impl RunArgs {
    /// The serial log's path.
    pub fn log_path(&self) -> PathBuf {
        self.log
            .clone()
            .unwrap_or_else(|| self.out.join(DEFAULT_LOG_NAME))
    }

    /// QEMU's time limit.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// `stress report`.
#[derive(Debug, PartialEq, Eq, Args)]
pub struct ReportArgs {
    /// The serial log.
    pub log: PathBuf,
    /// The output directory (default: stress/out).
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    #[command(flatten)]
    pub targets: TargetArgs,
}

/// `stress capacity`.
#[derive(Debug, PartialEq, Eq, Args)]
pub struct CapacityArgs {
    /// Serial logs and `report.json` files of runs at several N (and CPU counts); a file
    /// ending in `.json` is read as a report, anything else as a log.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The latency objective: warped (latency-sensitive) domains' p99 timer lateness at
    /// most this many µs.
    #[arg(long)]
    pub p99_us: Option<u64>,
    /// The page to write (default: stress/out/capacity.html).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl CapacityArgs {
    /// The page's path.
    pub fn out_path(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_OUT).join(DEFAULT_CAPACITY_NAME))
    }
}

/// QEMU's command line as words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuLine(pub Vec<String>);

fn parse_qemu(line: &str) -> Result<QemuLine, String> {
    split_command(line).map(QemuLine).map_err(|e| e.to_string())
}

fn parse_vcpu_threads(word: &str) -> Result<VcpuThreads, String> {
    VcpuThreads::parse(word).ok_or_else(|| format!("`{word}`: say `default` or `idle`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Command, ErrorKind> {
        Cli::try_parse_from(std::iter::once("stress").chain(args.iter().copied()))
            .map(|cli| cli.command)
            .map_err(|e| e.kind())
    }

    #[test]
    fn report_mode_defaults_to_reporting_targets() {
        let Ok(Command::Report(args)) = parse(&["report", "serial.log"]) else {
            panic!()
        };
        assert_eq!(args.log, PathBuf::from("serial.log"));
        assert_eq!(args.out, PathBuf::from(DEFAULT_OUT));
        assert!(!args.targets.enforce());
        let Ok(Command::Report(args)) =
            parse(&["report", "x", "--out", "o", "--targets", "enforce"])
        else {
            panic!()
        };
        assert!(args.targets.enforce());
        assert_eq!(args.out, PathBuf::from("o"));
        let Ok(Command::Report(args)) = parse(&["report", "x", "--no-targets"]) else {
            panic!()
        };
        assert!(!args.targets.enforce(), "the old flag still means report");
    }

    #[test]
    fn run_mode() {
        let Ok(Command::Run(args)) = parse(&[
            "run",
            "--qemu",
            "qemu-system-x86_64 -smp 2 -append 'a b'",
            "--timeout",
            "90",
            "--vcpu-threads",
            "idle",
        ]) else {
            panic!()
        };
        assert_eq!(
            args.qemu.0,
            ["qemu-system-x86_64", "-smp", "2", "-append", "a b"]
        );
        assert_eq!(args.timeout(), Duration::from_secs(90));
        assert_eq!(args.vcpu_threads, VcpuThreads::Idle);
        assert_eq!(
            args.log_path(),
            PathBuf::from(DEFAULT_OUT).join(DEFAULT_LOG_NAME)
        );
        let Ok(Command::Run(args)) = parse(&["run", "--qemu", "q", "--log", "x.log"]) else {
            panic!()
        };
        assert_eq!(args.log_path(), PathBuf::from("x.log"));
        assert_eq!(args.vcpu_threads, VcpuThreads::Default);
        assert_eq!(args.timeout, DEFAULT_TIMEOUT_SECS);
    }

    #[test]
    fn summarize_and_capacity() {
        assert_eq!(
            parse(&["summarize", "a/report.json", "b/report.json"]),
            Ok(Command::Summarize {
                reports: vec!["a/report.json".into(), "b/report.json".into()]
            })
        );
        let Ok(Command::Capacity(args)) =
            parse(&["capacity", "a.log", "b/report.json", "--p99-us", "500"])
        else {
            panic!()
        };
        assert_eq!(args.inputs.len(), 2);
        assert_eq!(args.p99_us, Some(500));
        assert_eq!(
            args.out_path(),
            PathBuf::from(DEFAULT_OUT).join(DEFAULT_CAPACITY_NAME)
        );
    }

    #[test]
    fn usage_errors() {
        assert_eq!(
            parse(&[]),
            Err(ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand)
        );
        assert_eq!(parse(&["plot"]), Err(ErrorKind::InvalidSubcommand));
        assert_eq!(parse(&["report"]), Err(ErrorKind::MissingRequiredArgument));
        assert_eq!(
            parse(&["report", "a", "b"]),
            Err(ErrorKind::UnknownArgument)
        );
        assert_eq!(
            parse(&["report", "a", "--out"]),
            Err(ErrorKind::InvalidValue)
        );
        assert_eq!(
            parse(&["report", "a", "--fast"]),
            Err(ErrorKind::UnknownArgument)
        );
        assert_eq!(
            parse(&["report", "a", "--qemu", "q"]),
            Err(ErrorKind::UnknownArgument)
        );
        assert_eq!(
            parse(&["report", "a", "--targets", "maybe"]),
            Err(ErrorKind::InvalidValue)
        );
        assert_eq!(parse(&["run"]), Err(ErrorKind::MissingRequiredArgument));
        assert_eq!(
            parse(&["run", "--qemu", "q 'x"]),
            Err(ErrorKind::ValueValidation)
        );
        assert_eq!(
            parse(&["run", "--qemu", "q", "--timeout", "1.5"]),
            Err(ErrorKind::ValueValidation)
        );
        assert_eq!(
            parse(&["run", "--qemu", "q", "--vcpu-threads", "fast"]),
            Err(ErrorKind::ValueValidation)
        );
        assert_eq!(
            parse(&["summarize"]),
            Err(ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            parse(&["capacity", "a", "--p99-us", "x"]),
            Err(ErrorKind::ValueValidation)
        );
        assert_eq!(parse(&["--help"]), Err(ErrorKind::DisplayHelp));
        assert_eq!(parse(&["run", "-h"]), Err(ErrorKind::DisplayHelp));
    }
}
