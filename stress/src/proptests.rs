//! Property test of the report pipeline on hostile serial logs: every line of the log is
//! written by a guest (or the hypervisor on its behalf), so a hostile or broken guest
//! decides what the host tool reads.
//!
//! Starting from a realistic log of a whole run (`synthetic`), lines are cut short, glued,
//! dropped, repeated, swapped and filled with garbage, and their numbers replaced by 0,
//! huge, negative or overflowing values. Property: parsing, collecting, the report, the
//! targets, the JSON and the SVG never panic, and the run fails rather than passes when
//! the log lost the summary it is judged by. The cases it found (figures that overflowed
//! `u64` on hostile numbers) are kept as unit tests in `report`. Test-only. More cases:
//! `PROPTEST_CASES=2000 cargo test -p stress proptests`.

use proptest::prelude::*;
use proptest::sample::{select, Index};

use crate::{analyse, json, svg, synthetic};

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` in the environment wins over the default given here.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// One edit of the log.
#[derive(Clone, Debug)]
enum Edit {
    /// Replace the `nth` number of a line.
    Number {
        line: Index,
        nth: usize,
        value: String,
    },
    Cut {
        line: Index,
        at: Index,
    },
    Glue {
        line: Index,
    },
    Drop {
        line: Index,
    },
    Repeat {
        line: Index,
    },
    Swap {
        a: Index,
        b: Index,
    },
    Garbage {
        line: Index,
        text: String,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    let value = prop_oneof![
        select(vec![
            "0".to_string(),
            "-1".into(),
            "18446744073709551615".into(),
            "18446744073709551616".into(),
            "99999999999999999999999".into(),
            "4294967295".into(),
            "65535".into(),
            "65536".into(),
            "".into(),
            "x".into(),
        ]),
        any::<u64>().prop_map(|v| v.to_string()),
    ];
    prop_oneof![
        6 => (any::<Index>(), 0usize..12, value).prop_map(|(line, nth, value)| Edit::Number { line, nth, value }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(line, at)| Edit::Cut { line, at }),
        1 => any::<Index>().prop_map(|line| Edit::Glue { line }),
        1 => any::<Index>().prop_map(|line| Edit::Drop { line }),
        1 => any::<Index>().prop_map(|line| Edit::Repeat { line }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap { a, b }),
        1 => (any::<Index>(), prop_oneof![
            "\\PC{0,40}",
            "(\\(d[0-9]{1,5}\\) )?(stress|summary): [a-z_]{1,8}( [a-z_]{1,8}=[0-9a-z-]{0,22}){0,6}",
        ]).prop_map(|(line, text)| Edit::Garbage { line, text }),
    ]
}

/// Replaces the `nth` run of ASCII digits in `line` with `value` (the last one if fewer).
fn replace_number(line: &str, nth: usize, value: &str) -> String {
    let bytes = line.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((start, i));
        } else {
            i += 1;
        }
    }
    match runs.get(nth).or(runs.last()) {
        Some(&(start, end)) => format!("{}{}{}", &line[..start], value, &line[end..]),
        None => line.to_string(),
    }
}

fn apply(lines: &mut Vec<String>, edit: &Edit) {
    if lines.is_empty() {
        return;
    }
    match edit {
        Edit::Number { line, nth, value } => {
            let i = line.index(lines.len());
            lines[i] = replace_number(&lines[i], *nth, value);
        }
        Edit::Cut { line, at } => {
            let i = line.index(lines.len());
            let mut cut = at.index(lines[i].len() + 1);
            while !lines[i].is_char_boundary(cut) {
                cut -= 1;
            }
            lines[i].truncate(cut);
        }
        Edit::Glue { line } => {
            let i = line.index(lines.len());
            if i + 1 < lines.len() {
                let next = lines.remove(i + 1);
                lines[i].push_str(&next);
            }
        }
        Edit::Drop { line } => {
            lines.remove(line.index(lines.len()));
        }
        Edit::Repeat { line } => {
            let i = line.index(lines.len());
            lines.insert(i, lines[i].clone());
        }
        Edit::Swap { a, b } => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        Edit::Garbage { line, text } => {
            let i = line.index(lines.len() + 1);
            lines.insert(i, text.clone());
        }
    }
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn hostile_logs_never_crash_the_report(
        n in 12usize..24,
        edits in proptest::collection::vec(edit(), 0..25),
    ) {
        let mut lines = synthetic::log(n);
        for edit in &edits {
            apply(&mut lines, edit);
        }
        let log = lines.join("\n");
        let analysis = analyse(&log, None, true);
        let _ = json::ReportFile::new(&analysis).render();
        let _ = svg::latency_plot(&analysis.report.latency, &analysis.title());
        let _ = analysis.failures();
        // A run whose hypervisor summary is gone cannot pass.
        if !log.contains("summary: ") {
            prop_assert!(!analysis.passed(), "passed without a summary");
        }
    }
}
