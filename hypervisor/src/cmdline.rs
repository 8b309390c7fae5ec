//! The hypervisor's command line: `key` and `key=value` words separated by spaces.
//!
//! Pure parsing, host-tested. Unknown words and bad values never stop the boot: they are
//! collected in [`Options::unknown`] / [`Options::invalid`] for the boot log to warn about.

use arrayvec::{ArrayString, ArrayVec};

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
    /// `ap_timeout_ms=N`: how long a starting CPU may take to answer (default 100 ms).
    pub ap_timeout_ms: u32,
    /// `ipi_samples=N`: cross-CPU round trips measured per CPU by the self-check.
    pub ipi_samples: u32,
    /// `heap_mib=N`: the heap's reservation in the window (default 8 MiB).
    pub heap_mib: u32,
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
            unknown: ArrayVec::new(),
            invalid: ArrayVec::new(),
        }
    }
}

fn clipped(word: &str) -> ArrayString<32> {
    let mut out = ArrayString::new();
    for c in word.chars() {
        if out.try_push(c).is_err() {
            break;
        }
    }
    out
}

fn number(value: Option<&str>) -> Option<u32> {
    value?.parse().ok()
}

impl Options {
    /// Parses a command line. Never fails; see [`Options::unknown`] and [`Options::invalid`].
    pub fn parse(line: &str) -> Options {
        let mut options = Options::default();
        for word in line.split_ascii_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            let ok = match key {
                "selftest" => value.is_none().then(|| options.selftest = true).is_some(),
                "verbose" => value.is_none().then(|| options.verbose = true).is_some(),
                "nosmp" => value.is_none().then(|| options.max_cpus = Some(1)).is_some(),
                "maxcpus" => number(value).filter(|&n| n >= 1).map(|n| options.max_cpus = Some(n)).is_some(),
                "x2apic" => match value {
                    Some("on") => Some(options.x2apic = true),
                    Some("off") => Some(options.x2apic = false),
                    _ => None,
                }
                .is_some(),
                "ap_timeout_ms" => number(value).filter(|&n| n >= 1).map(|n| options.ap_timeout_ms = n).is_some(),
                "ipi_samples" => number(value).filter(|&n| n >= 1).map(|n| options.ipi_samples = n).is_some(),
                "heap_mib" => number(value).filter(|&n| (1..=32).contains(&n)).map(|n| options.heap_mib = n).is_some(),
                _ => {
                    let _ = options.unknown.try_push(clipped(word));
                    continue;
                }
            };
            if !ok {
                let _ = options.invalid.try_push(clipped(word));
            }
        }
        options
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
        let o = Options::parse("selftest verbose maxcpus=3 x2apic=off ap_timeout_ms=50 ipi_samples=9 heap_mib=4");
        assert!(o.selftest && o.verbose && !o.x2apic);
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
        let o = Options::parse("maxcpus=0 maxcpus=x x2apic=maybe heap_mib=999 selftest=1");
        assert_eq!(o.max_cpus, None);
        assert!(o.x2apic && !o.selftest);
        assert_eq!(o.heap_mib, 8);
        assert_eq!(o.invalid.len(), 5);
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
