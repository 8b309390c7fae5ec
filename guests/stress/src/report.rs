//! The histogram's report lines: `stress: hist domid=D role=R part=K buckets=i:c,i:c,...`,
//! non-empty buckets only, lowest first, cut into lines of at most [`LINE_MAX`] characters
//! (the console keeps 160) numbered by `part=` from 0. A histogram without samples gives
//! no line. This module only formats: the caller prints.

use core::fmt::Write;

use arrayvec::ArrayString;

use crate::histogram::Histogram;

/// The longest report line, in characters (without the newline).
pub const LINE_MAX: usize = 150;

/// One report line.
pub type Line = ArrayString<LINE_MAX>;

/// Formats `hist` as report lines for worker `domid` in role `role`, handing each to
/// `emit`.
pub fn hist_lines(domid: u16, role: &str, hist: &Histogram, mut emit: impl FnMut(&str)) {
    let mut part = 0;
    let mut line = Line::new();
    let mut entries = 0;
    for (index, count) in hist.buckets() {
        let mut entry = ArrayString::<24>::new();
        // 24 bytes hold "," and two u32-sized numbers with ':'.
        let _ = write!(
            entry,
            "{}{index}:{count}",
            if entries > 0 { "," } else { "" }
        );
        if entries > 0 && line.len() + entry.len() > LINE_MAX {
            emit(&line);
            part += 1;
            entries = 0;
            entry.clear();
            let _ = write!(entry, "{index}:{count}");
        }
        if entries == 0 {
            line.clear();
            // The header is at most ~60 characters: role names are short.
            let _ = write!(
                line,
                "stress: hist domid={domid} role={role} part={part} buckets="
            );
        }
        let _ = line.try_push_str(&entry);
        entries += 1;
    }
    if entries > 0 {
        emit(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::bucket_of;
    use std::string::String;
    use std::vec::Vec;

    fn lines(hist: &Histogram) -> Vec<String> {
        let mut out = Vec::new();
        hist_lines(42, "periodic", hist, |line| out.push(String::from(line)));
        out
    }

    #[test]
    fn a_small_histogram_is_one_line() {
        let mut hist = Histogram::new();
        hist.record(3);
        hist.record(3);
        hist.record(100);
        assert_eq!(
            lines(&hist),
            [std::format!(
                "stress: hist domid=42 role=periodic part=0 buckets=3:2,{}:1",
                bucket_of(100)
            )]
        );
    }

    #[test]
    fn no_samples_no_line() {
        assert!(lines(&Histogram::new()).is_empty());
    }

    #[test]
    fn long_histograms_continue_in_numbered_parts_and_lose_nothing() {
        let mut hist = Histogram::new();
        for shift in 0..64 {
            for _ in 0..=shift {
                hist.record((1u64 << shift) | 7);
            }
        }
        hist.record(u64::MAX);
        let lines = lines(&hist);
        assert!(lines.len() > 2);
        let mut recovered = Vec::new();
        for (part, line) in lines.iter().enumerate() {
            assert!(line.len() <= LINE_MAX, "{} characters", line.len());
            let prefix = std::format!("stress: hist domid=42 role=periodic part={part} buckets=");
            let rest = line.strip_prefix(&prefix).expect("header");
            for entry in rest.split(',') {
                let (index, count) = entry.split_once(':').unwrap();
                recovered.push((
                    index.parse::<usize>().unwrap(),
                    count.parse::<u32>().unwrap(),
                ));
            }
        }
        assert_eq!(recovered, hist.buckets().collect::<Vec<_>>());
    }
}
