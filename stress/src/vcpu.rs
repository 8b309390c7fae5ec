//! Host scheduling of QEMU's TCG vCPU threads for `stress run --vcpu-threads idle`.
//!
//! Under TCG, QEMU delivers the guest's local APIC timer from its main-loop thread. When
//! every host core is busy running vCPU threads (CPU hogs in the guest), that thread waits
//! for the host scheduler and every guest timer interrupt comes late by the host's time
//! slice: the report would measure the host, not the hypervisor. Real hardware has no such
//! coupling, so the runner can put each TCG vCPU thread in the host's `SCHED_IDLE` class
//! (any ordinary thread, QEMU's main loop among them, preempts it at once) and pin vCPU `k`
//! to the `k`-th host CPU this process may use (so that two vCPUs never queue behind each
//! other on one core while another core is free). Both changes are made with util-linux's
//! `chrt` and `taskset`, so this tool stays free of unsafe code. The same mode also sets
//! the main thread's timer slack (`/proc/<pid>/timerslack_ns`) to 1 ns: QEMU's main loop
//! sleeps in `ppoll` until its next timer, and with Linux's default slack of 50 µs every
//! guest timer interrupt would come up to 50 µs late.
//!
//! Called by [`crate::qemu::run`] right after QEMU starts. It changes only threads of the
//! child it was given whose names say `CPU <k>/TCG` (QEMU names them so with
//! `-name <name>,debug-threads=on`); it never touches any other process.

use std::fmt;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// How long the runner waits for QEMU's vCPU threads to appear.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);
/// How often it looks for them.
const LOOK_EVERY: Duration = Duration::from_millis(20);
/// QEMU creates all vCPU threads together at machine init; once one exists, the runner
/// waits this long for the others before it lists them.
const SETTLE: Duration = Duration::from_millis(200);

/// The timer slack given to QEMU's main thread (the kernel's smallest).
const TIMER_SLACK_NS: u64 = 1;

/// What the runner does with QEMU's vCPU threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VcpuThreads {
    /// Leaves them as QEMU made them.
    #[default]
    Default,
    /// `SCHED_IDLE`, vCPU k pinned to the k-th allowed host CPU (TCG threads only).
    Idle,
}

impl VcpuThreads {
    /// Reads `--vcpu-threads`'s value.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "default" => Some(Self::Default),
            "idle" => Some(Self::Idle),
            _ => None,
        }
    }
}

/// One TCG vCPU thread of the child: its thread id and vCPU index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuThread {
    pub tid: u32,
    pub vcpu: u32,
}

/// What was done, for the report's run line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// (vCPU index, host CPU) of every thread changed.
    pub pinned: Vec<(u32, u32)>,
    /// The main thread's timer slack, when it was set.
    pub timer_slack_ns: Option<u64>,
    /// Why nothing (or not everything) was changed.
    pub problem: Option<String>,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.pinned.is_empty() {
            let why = self.problem.as_deref().unwrap_or("none found");
            parts.push(format!("vCPU threads left as they were: {why}"));
        } else {
            let pins: Vec<String> = self
                .pinned
                .iter()
                .map(|(vcpu, cpu)| format!("vCPU {vcpu} on host CPU {cpu}"))
                .collect();
            let mut text = format!("TCG vCPU threads SCHED_IDLE, {}", pins.join(", "));
            if let Some(problem) = &self.problem {
                text += &format!(" ({problem})");
            }
            parts.push(text);
        }
        if let Some(ns) = self.timer_slack_ns {
            parts.push(format!("main loop timer slack {ns} ns"));
        }
        f.write_str(&parts.join("; "))
    }
}

/// The vCPU index of a thread named `CPU <k>/TCG`.
pub fn tcg_vcpu_index(comm: &str) -> Option<u32> {
    vcpu_index(comm).filter(|_| comm.trim_end().ends_with("/TCG"))
}

/// The vCPU index of a thread named `CPU <k>/TCG` or `CPU <k>/KVM`.
pub fn vcpu_index(comm: &str) -> Option<u32> {
    let comm = comm.trim_end();
    let rest = comm
        .strip_suffix("/TCG")
        .or_else(|| comm.strip_suffix("/KVM"))?;
    rest.strip_prefix("CPU ")?.parse().ok()
}

/// What QEMU's vCPU threads got from the host: CPU time, and time spent runnable but
/// waiting for a host CPU (both from `/proc/<pid>/task/<tid>/schedstat`). Much waiting
/// means the host, not the hypervisor, made the guest's timers late. QEMU's other threads
/// (the main loop, which runs the emulated APIC timers, and its workers) share the host CPUs
/// with them; their CPU time is most of what the vCPU threads wait for on a quiet host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostTimes {
    pub threads: u32,
    pub ran_ns: u64,
    pub waited_ns: u64,
    pub others_ran_ns: u64,
}

impl fmt::Display for HostTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.ran_ns + self.waited_ns;
        let share = if total == 0 {
            0.0
        } else {
            self.waited_ns as f64 * 100.0 / total as f64
        };
        write!(
            f,
            "{} vCPU threads ran {:.2} s and waited {:.3} s runnable for a host CPU ({share:.2}%); \
             QEMU's other threads (main loop, workers) ran {:.2} s",
            self.threads,
            self.ran_ns as f64 / 1e9,
            self.waited_ns as f64 / 1e9,
            self.others_ran_ns as f64 / 1e9
        )
    }
}

/// Reads a `schedstat` line: (CPU time, run-queue wait), in ns.
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut words = text.split_whitespace();
    let ran = words.next()?.parse().ok()?;
    let waited = words.next()?.parse().ok()?;
    Some((ran, waited))
}

/// The vCPU threads' [`HostTimes`] of process `pid` now (`None`: none found).
pub fn host_times(pid: u32) -> Option<HostTimes> {
    let tasks = fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")).ok()?;
    let mut times = HostTimes::default();
    for task in tasks.flatten() {
        let is_vcpu = fs::read_to_string(task.path().join("comm"))
            .ok()
            .and_then(|c| vcpu_index(&c))
            .is_some();
        let stat = fs::read_to_string(task.path().join("schedstat")).ok();
        match (is_vcpu, stat.as_deref().and_then(parse_schedstat)) {
            (true, Some((ran, waited))) => {
                times.threads += 1;
                times.ran_ns += ran;
                times.waited_ns += waited;
            }
            (false, Some((ran, _))) => times.others_ran_ns += ran,
            (_, None) => {}
        }
    }
    (times.threads > 0).then_some(times)
}

/// Parses a CPU list as `/proc/*/status` writes `Cpus_allowed_list` (`0-3,8,10-11`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
                if first > last {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// The host CPU for vCPU `vcpu`: the allowed CPUs in turn.
pub fn host_cpu_for(vcpu: u32, allowed: &[u32]) -> Option<u32> {
    (!allowed.is_empty()).then(|| allowed[vcpu as usize % allowed.len()])
}

/// The host CPUs this process may run on.
fn allowed_cpus() -> Option<Vec<u32>> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(line)
}

/// The child's TCG vCPU threads now.
fn tcg_threads(pid: u32) -> Vec<VcpuThread> {
    let Ok(tasks) = fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    let mut threads: Vec<VcpuThread> = tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(task.path().join("comm")).ok()?;
            Some(VcpuThread {
                tid,
                vcpu: tcg_vcpu_index(&comm)?,
            })
        })
        .collect();
    threads.sort_by_key(|t| t.vcpu);
    threads
}

/// Waits for the child's TCG vCPU threads (until `APPEAR_TIMEOUT`) and lists them.
fn wait_for_threads(pid: u32) -> Vec<VcpuThread> {
    let until = Instant::now() + APPEAR_TIMEOUT;
    while Instant::now() < until {
        if !tcg_threads(pid).is_empty() {
            thread::sleep(SETTLE);
            return tcg_threads(pid);
        }
        thread::sleep(LOOK_EVERY);
    }
    Vec::new()
}

/// Runs a util-linux tool; `Err` says what went wrong.
fn tool(program: &str, args: &[String]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Applies `mode` to the TCG vCPU threads of process `pid`; `None` for
/// [`VcpuThreads::Default`].
pub fn place(pid: u32, mode: VcpuThreads) -> Option<Placement> {
    if mode == VcpuThreads::Default {
        return None;
    }
    let threads = wait_for_threads(pid);
    let mut placement = Placement {
        pinned: Vec::new(),
        timer_slack_ns: None,
        problem: None,
    };
    match fs::write(
        format!("/proc/{pid}/timerslack_ns"),
        TIMER_SLACK_NS.to_string(),
    ) {
        Ok(()) => placement.timer_slack_ns = Some(TIMER_SLACK_NS),
        Err(e) => placement.problem = Some(format!("timer slack not set: {e}")),
    }
    if threads.is_empty() {
        placement.problem = Some(
            "no thread named `CPU <k>/TCG` (not TCG, or QEMU lacks `-name x,debug-threads=on`)"
                .into(),
        );
        return Some(placement);
    }
    let Some(allowed) = allowed_cpus() else {
        placement.problem = Some("cannot read this process's allowed CPUs".into());
        return Some(placement);
    };
    for t in threads {
        let Some(cpu) = host_cpu_for(t.vcpu, &allowed) else {
            continue;
        };
        let tid = t.tid.to_string();
        let done = tool(
            "chrt",
            &["--idle".into(), "-p".into(), "0".into(), tid.clone()],
        )
        .and_then(|()| tool("taskset", &["-p".into(), "-c".into(), cpu.to_string(), tid]));
        match done {
            Ok(()) => placement.pinned.push((t.vcpu, cpu)),
            Err(problem) => {
                placement.problem = Some(problem);
                break;
            }
        }
    }
    Some(placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_tcg_vcpu_threads() {
        assert_eq!(tcg_vcpu_index("CPU 0/TCG\n"), Some(0));
        assert_eq!(tcg_vcpu_index("CPU 13/TCG"), Some(13));
        assert_eq!(tcg_vcpu_index("CPU 0/KVM"), None);
        assert_eq!(tcg_vcpu_index("qemu-system-x86"), None);
        assert_eq!(tcg_vcpu_index("CPU x/TCG"), None);
    }

    #[test]
    fn vcpu_threads_of_any_accelerator() {
        assert_eq!(vcpu_index("CPU 1/KVM\n"), Some(1));
        assert_eq!(vcpu_index("CPU 2/TCG"), Some(2));
        assert_eq!(vcpu_index("CPU 2/HVF"), None);
        assert_eq!(vcpu_index("worker"), None);
    }

    #[test]
    fn schedstat_and_host_times() {
        assert_eq!(
            parse_schedstat("2151034194 12000000 5000\n"),
            Some((2_151_034_194, 12_000_000))
        );
        assert_eq!(parse_schedstat("12"), None);
        let times = HostTimes {
            threads: 2,
            ran_ns: 19_000_000_000,
            waited_ns: 1_000_000_000,
            others_ran_ns: 1_500_000_000,
        };
        assert_eq!(
            times.to_string(),
            "2 vCPU threads ran 19.00 s and waited 1.000 s runnable for a host CPU (5.00%); \
             QEMU's other threads (main loop, workers) ran 1.50 s"
        );
        assert_eq!(
            host_times(std::process::id()),
            None,
            "this test process has no vCPU threads"
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(
            parse_cpu_list("0-2,8,10-11"),
            Some(vec![0, 1, 2, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    fn vcpus_take_the_allowed_cpus_in_turn() {
        let allowed = [2, 5];
        let placed: Vec<_> = (0..4).map(|v| host_cpu_for(v, &allowed)).collect();
        assert_eq!(placed, [Some(2), Some(5), Some(2), Some(5)]);
        assert_eq!(host_cpu_for(0, &[]), None);
    }

    #[test]
    fn placement_lines() {
        let done = Placement {
            pinned: vec![(0, 0), (1, 1)],
            timer_slack_ns: Some(1),
            problem: None,
        };
        assert_eq!(
            done.to_string(),
            "TCG vCPU threads SCHED_IDLE, vCPU 0 on host CPU 0, vCPU 1 on host CPU 1; main loop timer slack 1 ns"
        );
        let none = Placement {
            pinned: vec![],
            timer_slack_ns: None,
            problem: Some("no thread".into()),
        };
        assert_eq!(
            none.to_string(),
            "vCPU threads left as they were: no thread"
        );
        let kvm = Placement {
            timer_slack_ns: Some(1),
            ..none
        };
        assert_eq!(
            kvm.to_string(),
            "vCPU threads left as they were: no thread; main loop timer slack 1 ns"
        );
        assert_eq!(VcpuThreads::parse("idle"), Some(VcpuThreads::Idle));
        assert_eq!(VcpuThreads::parse("fast"), None);
    }

    #[test]
    fn default_touches_nothing() {
        assert_eq!(place(std::process::id(), VcpuThreads::Default), None);
    }
}
