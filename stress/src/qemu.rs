//! Runs QEMU as a child process for `stress run`: its serial output (stdout) goes whole
//! to the log file and, filtered to the `stress:` and `summary:` lines, to the terminal
//! as progress; the child is killed when the timeout passes. QEMU's exit status says
//! how the run ended: `isa-debug-exit` gives 33 for success and 35 for failure.
//!
//! Called by the binary's `run` mode. It never interprets the log beyond the progress
//! filter (the report reads the log file afterwards), and it kills only its own child.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::vcpu::{self, HostTimes, Placement, VcpuThreads};

/// QEMU's exit status when the hypervisor wrote the success code to isa-debug-exit.
pub const EXIT_PASS: i32 = 33;
/// QEMU's exit status when the hypervisor wrote the failure code.
pub const EXIT_FAIL: i32 = 35;
/// How often the runner looks at the child between progress lines.
const POLL: Duration = Duration::from_millis(100);
/// How often the vCPU threads' host times are read (the last reading before QEMU exits is
/// reported).
const SAMPLE_HOST_EVERY: Duration = Duration::from_millis(250);
/// How long the log is drained after QEMU ended before giving up on the pipe.
const DRAIN: Duration = Duration::from_secs(2);

/// How QEMU ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QemuOutcome {
    Exited(i32),
    /// Killed by a signal that the runner did not send.
    Signalled,
    /// Killed by the runner after this many seconds.
    TimedOut {
        seconds: u64,
    },
}

impl QemuOutcome {
    /// True only for [`EXIT_PASS`].
    pub fn passed(self) -> bool {
        self == Self::Exited(EXIT_PASS)
    }
}

impl fmt::Display for QemuOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(EXIT_PASS) => write!(f, "exited with status {EXIT_PASS} (success)"),
            Self::Exited(EXIT_FAIL) => write!(
                f,
                "exited with status {EXIT_FAIL} (the hypervisor reported failure)"
            ),
            Self::Exited(code) => {
                write!(f, "exited with status {code} (neither success nor failure)")
            }
            Self::Signalled => f.write_str("was killed by a signal"),
            Self::TimedOut { seconds } => write!(f, "was killed after the {seconds} s timeout"),
        }
    }
}

/// What to run. The program is started directly (no shell), so that the process the
/// runner kills at the timeout is QEMU itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuRun {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Where the serial output goes.
    pub log: PathBuf,
    pub timeout: Duration,
    /// What to do with QEMU's TCG vCPU threads once they exist.
    pub vcpu_threads: VcpuThreads,
}

/// How a run ended, and where its vCPU threads ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub outcome: QemuOutcome,
    /// `None` when the vCPU threads were left alone ([`VcpuThreads::Default`]).
    pub placement: Option<Placement>,
    /// What the vCPU threads got from the host, as last seen before QEMU ended.
    pub host_times: Option<HostTimes>,
}

/// Why a command line could not be split into words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    UnclosedQuote,
    TrailingBackslash,
    Empty,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnclosedQuote => "unclosed quote in the QEMU command",
            Self::TrailingBackslash => "the QEMU command ends in a backslash",
            Self::Empty => "the QEMU command is empty",
        })
    }
}

/// Splits a command line into words as a shell would, for quotes and backslashes only:
/// `'...'` is literal, `"..."` honours `\"` and `\\`, a backslash outside quotes escapes
/// the next character. No expansion of any kind.
pub fn split_command(line: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => single_quoted(&mut chars, word.get_or_insert_with(String::new))?,
            '"' => double_quoted(&mut chars, word.get_or_insert_with(String::new))?,
            '\\' => word
                .get_or_insert_with(String::new)
                .push(chars.next().ok_or(SplitError::TrailingBackslash)?),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(words)
}

/// Reads up to the closing `'`, literally.
fn single_quoted(chars: &mut std::str::Chars<'_>, word: &mut String) -> Result<(), SplitError> {
    loop {
        match chars.next().ok_or(SplitError::UnclosedQuote)? {
            '\'' => return Ok(()),
            c => word.push(c),
        }
    }
}

/// Reads up to the closing `"`.
fn double_quoted(chars: &mut std::str::Chars<'_>, word: &mut String) -> Result<(), SplitError> {
    loop {
        match chars.next().ok_or(SplitError::UnclosedQuote)? {
            '"' => return Ok(()),
            '\\' => match chars.next().ok_or(SplitError::UnclosedQuote)? {
                c @ ('"' | '\\') => word.push(c),
                c => {
                    word.push('\\');
                    word.push(c);
                }
            },
            c => word.push(c),
        }
    }
}

/// True for the lines shown as progress.
pub fn is_progress_line(line: &str) -> bool {
    line.contains("stress: ") || line.contains("summary: ")
}

/// Runs QEMU to the end or the timeout, writing the log and the progress lines.
pub fn run(spec: &QemuRun, progress: &mut dyn Write) -> io::Result<Finished> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::other("empty QEMU command"))?;
    let log = BufWriter::new(File::create(&spec.log)?);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let (lines, received) = mpsc::channel();
    let reader = thread::spawn(move || copy_lines(stdout, log, |line| lines.send(line).is_ok()));
    // The reader keeps draining QEMU's output while the threads are looked for.
    let placement = vcpu::place(child.id(), spec.vcpu_threads);
    let mut host_times = None;
    let outcome = supervise(
        &mut child,
        spec.timeout,
        &received,
        progress,
        &mut host_times,
    )?;
    drain(&received, progress);
    if reader.is_finished() {
        reader
            .join()
            .map_err(|_| io::Error::other("log reader panicked"))??;
    }
    Ok(Finished {
        outcome,
        placement,
        host_times,
    })
}

/// Copies `input` to `log` line by line, handing each progress line to `show`.
fn copy_lines(
    input: impl Read,
    mut log: impl Write,
    mut show: impl FnMut(String) -> bool,
) -> io::Result<()> {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    while input.read_until(b'\n', &mut line)? > 0 {
        log.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        if is_progress_line(&text) {
            // The receiver may be gone after a timeout; the log still gets everything.
            show(text.trim_end().to_string());
        }
        line.clear();
    }
    log.flush()
}

/// Prints progress until QEMU ends or the timeout passes (then kills it); meanwhile reads
/// its vCPU threads' [`HostTimes`] every [`SAMPLE_HOST_EVERY`] into `host_times`.
fn supervise(
    child: &mut Child,
    timeout: Duration,
    lines: &Receiver<String>,
    progress: &mut dyn Write,
    host_times: &mut Option<HostTimes>,
) -> io::Result<QemuOutcome> {
    let deadline = Instant::now() + timeout;
    let mut next_sample = Instant::now();
    loop {
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_HOST_EVERY;
            // While QEMU shuts down its threads go one by one: keep the last full reading.
            if let Some(now) = vcpu::host_times(child.id()) {
                if host_times.is_none_or(|before| now.threads >= before.threads) {
                    *host_times = Some(now);
                }
            }
        }
        if let Some(status) = child.try_wait()? {
            return Ok(status
                .code()
                .map_or(QemuOutcome::Signalled, QemuOutcome::Exited));
        }
        if Instant::now() >= deadline {
            child.kill()?;
            child.wait()?;
            return Ok(QemuOutcome::TimedOut {
                seconds: timeout.as_secs(),
            });
        }
        match lines.recv_timeout(POLL) {
            Ok(line) => show(progress, &line),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
    }
}

/// Shows one progress line. The terminal going away (a closed pipe) must not stop the
/// run: the log file still gets everything.
fn show(progress: &mut dyn Write, line: &str) {
    let _ = writeln!(progress, "{line}");
}

/// Prints the progress lines still in flight once QEMU ended.
fn drain(lines: &Receiver<String>, progress: &mut dyn Write) {
    let until = Instant::now() + DRAIN;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => show(progress, &line),
            Err(_) => break,
        }
    }
    let _ = progress.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, command: &str, timeout: Duration) -> (QemuRun, PathBuf) {
        // One fixed directory per test: reruns overwrite instead of piling up.
        let dir = std::env::temp_dir().join(format!("stress-qemu-test-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("serial.log");
        (
            QemuRun {
                argv: split_command(command).unwrap(),
                log: log.clone(),
                timeout,
                vcpu_threads: VcpuThreads::Default,
            },
            log,
        )
    }

    #[test]
    fn streams_log_and_progress_and_reads_the_status() {
        let (spec, log) = spec(
            "stream",
            "sh -c 'printf \"SeaBIOS\\n[cpu0 0.1] summary: cpus.online=2\\n[cpu0 0.2] (d0) stress: done ok\\n\"; exit 33'",
            Duration::from_secs(30),
        );
        let mut progress = Vec::new();
        let outcome = run(&spec, &mut progress).unwrap().outcome;
        assert_eq!(outcome, QemuOutcome::Exited(EXIT_PASS));
        assert!(outcome.passed());
        let progress = String::from_utf8(progress).unwrap();
        assert_eq!(
            progress,
            "[cpu0 0.1] summary: cpus.online=2\n[cpu0 0.2] (d0) stress: done ok\n"
        );
        let logged = std::fs::read_to_string(log).unwrap();
        assert!(
            logged.starts_with("SeaBIOS\n") && logged.ends_with("done ok\n"),
            "{logged}"
        );
    }

    #[test]
    fn failure_status_is_not_a_pass() {
        let (spec, _) = spec("fail", "sh -c 'exit 35'", Duration::from_secs(30));
        let outcome = run(&spec, &mut Vec::new()).unwrap().outcome;
        assert_eq!(outcome, QemuOutcome::Exited(EXIT_FAIL));
        assert!(!outcome.passed());
        assert!(outcome.to_string().contains("reported failure"));
    }

    #[test]
    fn kills_the_child_after_the_timeout() {
        let (spec, _) = spec("timeout", "sleep 30", Duration::from_millis(300));
        let started = Instant::now();
        let outcome = run(&spec, &mut Vec::new()).unwrap().outcome;
        assert_eq!(outcome, QemuOutcome::TimedOut { seconds: 0 });
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_is_an_error() {
        let (spec, _) = spec(
            "missing",
            "/nonexistent/qemu-system-x86_64 -M q35",
            Duration::from_secs(5),
        );
        assert!(run(&spec, &mut Vec::new()).is_err());
    }

    #[test]
    fn splits_like_a_shell() {
        let words = split_command(r#"qemu -append 'a b' -x "c \"d\" \e" f\ g  h''"#).unwrap();
        assert_eq!(
            words,
            ["qemu", "-append", "a b", "-x", r#"c "d" \e"#, "f g", "h"]
        );
        assert_eq!(split_command("''").unwrap(), [""]);
        assert_eq!(split_command("a 'b"), Err(SplitError::UnclosedQuote));
        assert_eq!(split_command("a \"b"), Err(SplitError::UnclosedQuote));
        assert_eq!(split_command("a \\"), Err(SplitError::TrailingBackslash));
        assert_eq!(split_command("  "), Err(SplitError::Empty));
    }

    #[test]
    fn progress_filter() {
        assert!(is_progress_line(
            "[cpu1 2.0] (d5) stress: result domid=5 role=hog loops=1"
        ));
        assert!(is_progress_line("[cpu0 0.1] summary: tsc.mhz=2000"));
        assert!(!is_progress_line("[cpu0 0.1] booting"));
    }
}
