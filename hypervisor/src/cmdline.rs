//! The hypervisor's command line: `key` and `key=value` words separated by spaces, in the
//! project's one grammar (`protocol::keyvalue`), then optionally `--` and the module line
//! of every boot module that has none of its own (as Xen passes what follows `--` on its
//! line to domain 0's kernel; QEMU's PVH `-initrd` module carries no line).
//!
//! Pure parsing, host-tested. Unknown words and bad values never stop the boot: they are
//! collected in [`Options::unknown`] / [`Options::invalid`] for the boot log to warn about.

use arrayvec::{ArrayString, ArrayVec};
use protocol::keyvalue::{self, Word};

/// Every option the hypervisor understands (the README lists the same set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `selftest`: run the boot self-checks, print the summary, power off with the result.
    pub selftest: bool,
    /// `verbose`: debug-level logging.
    pub verbose: bool,
    /// `maxcpus=N`: bring up at most N CPUs (the boot CPU included). `nosmp` means 1.
    pub max_cpus: Option<u32>,
    /// `x2apic=off`: use the xAPIC even where x2APIC is offered.
    pub x2apic: bool,
    /// `ap_timeout_ms=N`: how long to wait for the next starting CPU to answer, counted from
    /// the last one that did (default 100 ms).
    pub ap_timeout_ms: u32,
    /// `ipi_samples=N`: cross-CPU round trips measured per CPU by the self-check.
    pub ipi_samples: u32,
    /// `heap_mib=N`: the heap's reservation in the window, 2-32 MiB (default 8; the boot
    /// self-checks alone take about 1 MiB).
    pub heap_mib: u32,
    /// `timer_slop_us=N`: how late a timer of a domain that does not warp may fire, so that
    /// timers due close together share one interrupt (default 50, as Xen's `timer_slop`;
    /// 0: every timer on time).
    pub timer_slop_us: u32,
    /// `wake_boost=on|off`: a vCPU that wakes having used less than its share takes the CPU
    /// from the running one without the context switch allowance (default on; see the
    /// `bvt` crate, "Wake-up boost").
    pub wake_boost: bool,
    /// `boost_min_sleep_us=N`: the shortest sleep that earns a wake-up boost, 0-100000 us
    /// (default 1000).
    pub boost_min_sleep_us: u32,
    /// `dom0`: the first boot module is domain 0 (privileged, holds the control interface);
    /// the other modules are only started when domain 0 asks.
    pub dom0: bool,
    /// `guests=N`: domains built from each boot module whose own line has no `count=`.
    pub guests: u32,
    /// `vcpus=N`: vCPUs each domain built from a boot module whose own line has no
    /// `vcpus=` may bring up (default 1, at most 32).
    pub vcpus: u32,
    /// `xsave=off|on|opt`: how guests' FPU state is switched where the machine has XSAVE:
    /// FXSAVE only (x87 and SSE; guests get no AVX), XSAVE, or XSAVEOPT where offered
    /// (the default).
    pub fpu_save: FpuSave,
    /// `test_silent_cpu=N`: fault injection for tests: CPU N is sent INIT but never its
    /// start-up IPIs, so it stays silent and the start-up timeout path runs.
    pub test_silent_cpu: Option<u32>,
    /// `test_late_cpu=N`: fault injection for tests: CPU N is left out of bring-up like a
    /// silent one, then sent its start-up IPIs once boot is over (it must stay halted).
    pub test_late_cpu: Option<u32>,
    /// `exit=summary|guest`: what QEMU's exit status says at the end of the run.
    pub exit: ExitStatus,
    /// What follows `--`: the module line of boot modules without one (without the ASCII
    /// whitespace around it; at most 1023 bytes, the rest cut).
    pub module_line: ArrayString<1023>,
    /// Words that are not options.
    pub unknown: ArrayVec<ArrayString<32>, 8>,
    /// Options whose value did not parse.
    pub invalid: ArrayVec<ArrayString<32>, 8>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            selftest: false,
            verbose: false,
            max_cpus: None,
            x2apic: true,
            ap_timeout_ms: 100,
            ipi_samples: 200,
            heap_mib: 8,
            timer_slop_us: 50,
            wake_boost: true,
            boost_min_sleep_us: 1000,
            test_silent_cpu: None,
            test_late_cpu: None,
            fpu_save: FpuSave::Xsaveopt,
            exit: ExitStatus::Summary,
            module_line: ArrayString::new(),
            guests: 1,
            vcpus: 1,
            dom0: false,
            unknown: ArrayVec::new(),
            invalid: ArrayVec::new(),
        }
    }
}

/// How guests' x87/SSE/AVX state is saved and loaded (`xsave=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FpuSave {
    /// FXSAVE/FXRSTOR, even where XSAVE is offered.
    Fxsave,
    /// XSAVE/XRSTOR where offered.
    Xsave,
    /// XSAVEOPT/XRSTOR where offered.
    Xsaveopt,
}

/// A number in `range`, or `None`.
fn number(value: Option<&str>, range: core::ops::RangeInclusive<u32>) -> Option<u32> {
    value?.parse().ok().filter(|n| range.contains(n))
}

/// Stores `value` in `slot` when there is one; says whether it did.
fn set<T>(slot: &mut T, value: Option<T>) -> bool {
    value.map(|v| *slot = v).is_some()
}

/// What the exit status of the run reports (QEMU's isa-debug-exit; the README's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Whether the run passed: every boot domain ended as its module line expected and no
    /// memory leaked (33), or not (35). What the test harness reads.
    Summary,
    /// How the boot domains ended, the worst of them: what a guest run by hand wants to
    /// know (`make run GUEST=...`).
    Guest,
}

impl Options {
    /// Parses a command line. Never fails; see [`Options::unknown`] and [`Options::invalid`].
    pub fn parse(line: &str) -> Options {
        let mut o = Options::default();
        let (line, module_line) = keyvalue::split_guest(line);
        o.module_line = keyvalue::clip(module_line.unwrap_or("").trim_matches(|c: char| c.is_ascii_whitespace()));
        for word in line.split_ascii_whitespace() {
            let Word { key, value } = Word::parse(word);
            let applied = match (key, value) {
                ("selftest", None) => set(&mut o.selftest, Some(true)),
                ("verbose", None) => set(&mut o.verbose, Some(true)),
                ("dom0", None) => set(&mut o.dom0, Some(true)),
                ("nosmp", None) => set(&mut o.max_cpus, Some(Some(1))),
                ("x2apic", Some("on")) => set(&mut o.x2apic, Some(true)),
                ("x2apic", Some("off")) => set(&mut o.x2apic, Some(false)),
                ("wake_boost", Some("on")) => set(&mut o.wake_boost, Some(true)),
                ("wake_boost", Some("off")) => set(&mut o.wake_boost, Some(false)),
                ("exit", Some("summary")) => set(&mut o.exit, Some(ExitStatus::Summary)),
                ("exit", Some("guest")) => set(&mut o.exit, Some(ExitStatus::Guest)),
                ("maxcpus", v) => set(&mut o.max_cpus, number(v, 1..=u32::MAX).map(Some)),
                ("ap_timeout_ms", v) => set(&mut o.ap_timeout_ms, number(v, 1..=60_000)),
                ("ipi_samples", v) => set(&mut o.ipi_samples, number(v, 1..=1_000_000)),
                ("heap_mib", v) => set(&mut o.heap_mib, number(v, 2..=32)),
                ("timer_slop_us", v) => set(&mut o.timer_slop_us, number(v, 0..=1000)),
                ("boost_min_sleep_us", v) => set(&mut o.boost_min_sleep_us, number(v, 0..=100_000)),
                ("guests", v) => set(&mut o.guests, number(v, 1..=4096)),
                ("vcpus", v) => set(&mut o.vcpus, number(v, 1..=crate::domspec::MAX_VCPUS)),
                ("xsave", Some("off")) => set(&mut o.fpu_save, Some(FpuSave::Fxsave)),
                ("xsave", Some("on")) => set(&mut o.fpu_save, Some(FpuSave::Xsave)),
                ("xsave", Some("opt")) => set(&mut o.fpu_save, Some(FpuSave::Xsaveopt)),
                ("test_silent_cpu", v) => set(&mut o.test_silent_cpu, number(v, 1..=u32::MAX).map(Some)),
                ("test_late_cpu", v) => set(&mut o.test_late_cpu, number(v, 1..=u32::MAX).map(Some)),
                ("selftest" | "verbose" | "nosmp" | "x2apic" | "wake_boost" | "dom0" | "xsave" | "exit", _) => false,
                _ => {
                    let _ = o.unknown.try_push(keyvalue::clip(word));
                    continue;
                }
            };
            if !applied {
                let _ = o.invalid.try_push(keyvalue::clip(word));
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_line_gives_defaults() {
        assert_eq!(Options::parse(""), Options::default());
        assert_eq!(Options::parse("   "), Options::default());
    }

    #[test]
    fn flags_and_values() {
        let o = Options::parse("selftest verbose maxcpus=3 x2apic=off ap_timeout_ms=50 ipi_samples=9 heap_mib=4 test_silent_cpu=2 test_late_cpu=3");
        assert!(o.selftest && o.verbose && !o.x2apic);
        assert_eq!(o.test_silent_cpu, Some(2));
        assert_eq!(o.test_late_cpu, Some(3));
        assert_eq!(Options::parse("guests=7").guests, 7);
        assert!(Options::parse("dom0").dom0 && !Options::parse("").dom0);
        assert_eq!(Options::parse("guests=0").guests, 1);
        assert_eq!(Options::parse("").vcpus, 1);
        assert_eq!(Options::parse("vcpus=2").vcpus, 2);
        assert_eq!(Options::parse("vcpus=33").vcpus, 1);
        assert_eq!(o.max_cpus, Some(3));
        assert_eq!((o.ap_timeout_ms, o.ipi_samples, o.heap_mib), (50, 9, 4));
        assert!(o.unknown.is_empty() && o.invalid.is_empty());
    }

    #[test]
    fn nosmp_means_one_cpu() {
        assert_eq!(Options::parse("nosmp").max_cpus, Some(1));
    }

    #[test]
    fn bad_values_are_reported_not_applied() {
        let o = Options::parse("maxcpus=0 maxcpus=x x2apic=maybe heap_mib=999 selftest=1 test_silent_cpu=0");
        assert_eq!(o.max_cpus, None);
        assert!(o.x2apic && !o.selftest);
        assert_eq!(o.heap_mib, 8);
        assert_eq!(Options::parse("heap_mib=1").heap_mib, 8, "too small for the self-checks");
        assert_eq!(Options::parse("timer_slop_us=0").timer_slop_us, 0);
        assert!(Options::parse("").wake_boost);
        assert_eq!(Options::parse("").boost_min_sleep_us, 1000);
        assert_eq!(Options::parse("boost_min_sleep_us=0").boost_min_sleep_us, 0);
        assert_eq!(Options::parse("boost_min_sleep_us=100001").boost_min_sleep_us, 1000, "out of range: ignored");
        assert!(!Options::parse("wake_boost=off").wake_boost);
        assert!(Options::parse("wake_boost=off wake_boost=on").wake_boost);
        assert_eq!(Options::parse("wake_boost=maybe").invalid.len(), 1);
        assert_eq!(Options::parse("xsave=off").fpu_save, FpuSave::Fxsave);
        assert_eq!(Options::parse("xsave=on").fpu_save, FpuSave::Xsave);
        assert_eq!(Options::parse("").fpu_save, FpuSave::Xsaveopt);
        assert_eq!(Options::parse("xsave=maybe").invalid.len(), 1);
        assert_eq!(Options::parse("timer_slop_us=1001").timer_slop_us, 50);
        assert_eq!(o.test_silent_cpu, None, "the boot CPU cannot be silenced");
        assert_eq!(o.invalid.len(), 6);
    }

    #[test]
    fn exit_status_and_module_line() {
        assert_eq!(Options::parse("").exit, ExitStatus::Summary);
        let o = Options::parse("exit=guest guests=2 -- mem=128 vcpus=2 -- console=hvc0 --x");
        assert_eq!((o.exit, o.guests), (ExitStatus::Guest, 2));
        assert_eq!(o.module_line.as_str(), "mem=128 vcpus=2 -- console=hvc0 --x");
        assert!(o.unknown.is_empty() && o.invalid.is_empty());
        let o = Options::parse("exit=maybe --");
        assert_eq!((o.exit, o.invalid.len()), (ExitStatus::Summary, 1));
        assert!(o.module_line.is_empty());
        // `--` inside a word is not the separator.
        assert_eq!(Options::parse("a--b").unknown.len(), 1);
    }

    #[test]
    fn unknown_words_are_kept_clipped() {
        let o = Options::parse("console=com1 a_very_long_option_name_that_exceeds_thirty_two_chars");
        assert_eq!(o.unknown.len(), 2);
        assert_eq!(o.unknown[0].as_str(), "console=com1");
        assert_eq!(o.unknown[1].len(), 32);
    }

    #[test]
    fn too_many_unknown_words_do_not_panic() {
        let line = "a b c d e f g h i j k l";
        assert_eq!(Options::parse(line).unknown.len(), 8);
    }
}
