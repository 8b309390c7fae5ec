//! The command line of the `stress` binary:
//!
//! ```text
//! stress report <serial.log> [--out DIR] [--no-targets]
//! stress run --qemu '<qemu command line>' [--log FILE] [--timeout SECS] [--out DIR] [--no-targets]
//!            [--vcpu-threads default|idle]
//! ```
//!
//! Called by `main`. It only turns arguments into a [`Command`]; it never touches files.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::qemu::{split_command, SplitError};
use crate::vcpu::VcpuThreads;

/// Where the report goes unless `--out` says otherwise: `stress/out` in this checkout.
pub const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/out");
/// QEMU's time limit unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The log file's name in the output directory unless `--log` says otherwise.
pub const DEFAULT_LOG_NAME: &str = "serial.log";

pub const USAGE: &str = "usage:
  stress report <serial.log> [--out DIR] [--no-targets]
  stress run --qemu '<qemu command line>' [--log FILE] [--timeout SECS] [--out DIR] [--no-targets]
             [--vcpu-threads default|idle]

--vcpu-threads idle puts QEMU's TCG vCPU threads in the host's SCHED_IDLE class and pins
vCPU k to the k-th host CPU this tool may use, so that QEMU's main loop (which delivers
timer interrupts under TCG) is never kept waiting by them; QEMU must have
`-name <name>,debug-threads=on`. The default leaves them alone.
Before QEMU starts, run spins a thread per host CPU for 1 s and counts the clock gaps (host
stalls); it also reads the host's steal time over the run. Both go in the report's host line.
The report goes to stdout, DIR/report.json and DIR/latency.svg (DIR defaults to stress/out).
Exit status: 0 pass, 1 a domain failed, memory leaked or a target was missed
(--no-targets: targets are shown but do not fail), 2 usage or I/O error.";

/// What the binary does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Report {
        log: PathBuf,
        out: PathBuf,
        enforce_targets: bool,
    },
    Run {
        qemu: Vec<String>,
        log: PathBuf,
        timeout: Duration,
        out: PathBuf,
        enforce_targets: bool,
        vcpu_threads: VcpuThreads,
    },
}

/// A command line the binary cannot follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageError {
    NoMode,
    UnknownMode(String),
    UnknownOption(String),
    MissingValue(&'static str),
    BadTimeout(String),
    BadVcpuThreads(String),
    MissingLog,
    ExtraArgument(String),
    MissingQemu,
    Qemu(SplitError),
    NotForReport(&'static str),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMode => f.write_str("say `report` or `run`"),
            Self::UnknownMode(mode) => write!(f, "unknown mode `{mode}`"),
            Self::UnknownOption(option) => write!(f, "unknown option `{option}`"),
            Self::MissingValue(option) => write!(f, "`{option}` needs a value"),
            Self::BadTimeout(value) => {
                write!(f, "`--timeout {value}` is not a whole number of seconds")
            }
            Self::BadVcpuThreads(value) => {
                write!(f, "`--vcpu-threads {value}`: say `default` or `idle`")
            }
            Self::MissingLog => f.write_str("`report` needs the serial log's path"),
            Self::ExtraArgument(arg) => write!(f, "unexpected argument `{arg}`"),
            Self::MissingQemu => f.write_str("`run` needs `--qemu '<command line>'`"),
            Self::Qemu(error) => error.fmt(f),
            Self::NotForReport(option) => write!(f, "`{option}` is for `run` only"),
        }
    }
}

/// The options both modes share, as read.
#[derive(Default)]
struct Options {
    positional: Vec<String>,
    out: Option<PathBuf>,
    log: Option<PathBuf>,
    qemu: Option<String>,
    timeout: Option<Duration>,
    vcpu_threads: Option<VcpuThreads>,
    no_targets: bool,
    help: bool,
}

/// Parses the arguments after the program name.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let mut args = args.into_iter();
    let mode = args.next().ok_or(UsageError::NoMode)?;
    if matches!(mode.as_str(), "-h" | "--help" | "help") {
        return Ok(Command::Help);
    }
    let options = read_options(args)?;
    if options.help {
        return Ok(Command::Help);
    }
    match mode.as_str() {
        "report" => report(options),
        "run" => run(options),
        _ => Err(UsageError::UnknownMode(mode)),
    }
}

fn read_options(mut args: impl Iterator<Item = String>) -> Result<Options, UsageError> {
    let mut o = Options::default();
    while let Some(arg) = args.next() {
        let mut value = |name: &'static str| args.next().ok_or(UsageError::MissingValue(name));
        match arg.as_str() {
            "--out" => o.out = Some(value("--out")?.into()),
            "--log" => o.log = Some(value("--log")?.into()),
            "--qemu" => o.qemu = Some(value("--qemu")?),
            "--timeout" => {
                let text = value("--timeout")?;
                let seconds = text.parse().map_err(|_| UsageError::BadTimeout(text))?;
                o.timeout = Some(Duration::from_secs(seconds));
            }
            "--vcpu-threads" => {
                let text = value("--vcpu-threads")?;
                let mode = VcpuThreads::parse(&text).ok_or(UsageError::BadVcpuThreads(text))?;
                o.vcpu_threads = Some(mode);
            }
            "--no-targets" => o.no_targets = true,
            "-h" | "--help" => o.help = true,
            other if other.starts_with('-') && other.len() > 1 => {
                return Err(UsageError::UnknownOption(arg))
            }
            _ => o.positional.push(arg),
        }
    }
    Ok(o)
}

fn out_dir(o: &Options) -> PathBuf {
    o.out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_OUT))
}

fn report(o: Options) -> Result<Command, UsageError> {
    for (given, name) in [
        (o.qemu.is_some(), "--qemu"),
        (o.timeout.is_some(), "--timeout"),
        (o.log.is_some(), "--log"),
        (o.vcpu_threads.is_some(), "--vcpu-threads"),
    ] {
        if given {
            return Err(UsageError::NotForReport(name));
        }
    }
    let out = out_dir(&o);
    let mut positional = o.positional.into_iter();
    let log = positional.next().ok_or(UsageError::MissingLog)?.into();
    if let Some(extra) = positional.next() {
        return Err(UsageError::ExtraArgument(extra));
    }
    Ok(Command::Report {
        log,
        out,
        enforce_targets: !o.no_targets,
    })
}

fn run(o: Options) -> Result<Command, UsageError> {
    if let Some(extra) = o.positional.first() {
        return Err(UsageError::ExtraArgument(extra.clone()));
    }
    let qemu = split_command(o.qemu.as_deref().ok_or(UsageError::MissingQemu)?)
        .map_err(UsageError::Qemu)?;
    let out = out_dir(&o);
    Ok(Command::Run {
        qemu,
        log: o.log.unwrap_or_else(|| out.join(DEFAULT_LOG_NAME)),
        timeout: o.timeout.unwrap_or(DEFAULT_TIMEOUT),
        out,
        enforce_targets: !o.no_targets,
        vcpu_threads: o.vcpu_threads.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, UsageError> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn report_mode() {
        assert_eq!(
            parse(&["report", "serial.log", "--out", "o", "--no-targets"]),
            Ok(Command::Report {
                log: "serial.log".into(),
                out: "o".into(),
                enforce_targets: false
            })
        );
        assert_eq!(
            parse(&["report", "serial.log"]),
            Ok(Command::Report {
                log: "serial.log".into(),
                out: DEFAULT_OUT.into(),
                enforce_targets: true
            })
        );
    }

    #[test]
    fn run_mode() {
        assert_eq!(
            parse(&[
                "run",
                "--qemu",
                "qemu-system-x86_64 -smp 2 -append 'a b'",
                "--timeout",
                "90",
                "--vcpu-threads",
                "idle"
            ]),
            Ok(Command::Run {
                qemu: vec![
                    "qemu-system-x86_64".into(),
                    "-smp".into(),
                    "2".into(),
                    "-append".into(),
                    "a b".into()
                ],
                log: PathBuf::from(DEFAULT_OUT).join(DEFAULT_LOG_NAME),
                timeout: Duration::from_secs(90),
                out: DEFAULT_OUT.into(),
                enforce_targets: true,
                vcpu_threads: VcpuThreads::Idle,
            })
        );
        let Ok(Command::Run { log, .. }) = parse(&["run", "--qemu", "q", "--log", "x.log"]) else {
            panic!()
        };
        assert_eq!(log, PathBuf::from("x.log"));
    }

    #[test]
    fn usage_errors() {
        assert_eq!(parse(&[]), Err(UsageError::NoMode));
        assert_eq!(
            parse(&["plot"]),
            Err(UsageError::UnknownMode("plot".into()))
        );
        assert_eq!(parse(&["report"]), Err(UsageError::MissingLog));
        assert_eq!(
            parse(&["report", "a", "b"]),
            Err(UsageError::ExtraArgument("b".into()))
        );
        assert_eq!(
            parse(&["report", "a", "--out"]),
            Err(UsageError::MissingValue("--out"))
        );
        assert_eq!(
            parse(&["report", "a", "--fast"]),
            Err(UsageError::UnknownOption("--fast".into()))
        );
        assert_eq!(
            parse(&["report", "a", "--qemu", "q"]),
            Err(UsageError::NotForReport("--qemu"))
        );
        assert_eq!(parse(&["run"]), Err(UsageError::MissingQemu));
        assert_eq!(
            parse(&["run", "--qemu", "q 'x"]),
            Err(UsageError::Qemu(SplitError::UnclosedQuote))
        );
        assert_eq!(
            parse(&["run", "--qemu", "q", "--timeout", "1.5"]),
            Err(UsageError::BadTimeout("1.5".into()))
        );
        assert_eq!(
            parse(&["run", "--qemu", "q", "--vcpu-threads", "fast"]),
            Err(UsageError::BadVcpuThreads("fast".into()))
        );
        assert_eq!(
            parse(&["report", "a", "--vcpu-threads", "idle"]),
            Err(UsageError::NotForReport("--vcpu-threads"))
        );
        let Ok(Command::Run { vcpu_threads, .. }) = parse(&["run", "--qemu", "q"]) else {
            panic!()
        };
        assert_eq!(vcpu_threads, VcpuThreads::Default);
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert_eq!(parse(&["run", "-h"]), Ok(Command::Help));
    }
}
