//! The one `key=value` grammar of the project's command lines and console records: words
//! separated by ASCII whitespace, each either `key=value` (split at the first `=`, so a
//! value may itself hold `=`) or a bare word; a word `--` on its own separates a boot
//! module's keys from its guest's command line.
//!
//! Used by the hypervisor's command line (lenient: unknown words and bad values are
//! collected, never fatal), the boot modules' lines, domain 0's options and the workers'
//! command lines (strict, through [`Keys`]: a typo fails the run instead of silently
//! running something else), the console records of [`crate::record`] (lenient about
//! unknown keys, so that newer guests can add fields) and, through those, the host tool.
//! This module must never know what a key means: its callers do.

use core::fmt;

use arrayvec::ArrayString;

/// One word of a line: `key=value`, or a bare `key` (value `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Word<'a> {
    pub key: &'a str,
    pub value: Option<&'a str>,
}

impl<'a> Word<'a> {
    /// Splits one word at its first `=`.
    pub fn parse(word: &'a str) -> Self {
        match word.split_once('=') {
            Some((key, value)) => Self {
                key,
                value: Some(value),
            },
            None => Self {
                key: word,
                value: None,
            },
        }
    }

    /// `(key, value)` for a `key=value` word, none for a bare one.
    pub fn pair(self) -> Option<(&'a str, &'a str)> {
        Some((self.key, self.value?))
    }
}

impl fmt::Display for Word<'_> {
    /// The word as written: `key=value` or `key`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(value) => write!(f, "{}={value}", self.key),
            None => f.write_str(self.key),
        }
    }
}

/// The words of `line`, in order.
pub fn words(line: &str) -> impl Iterator<Item = Word<'_>> {
    line.split_ascii_whitespace().map(Word::parse)
}

/// Writes ` key=value` (a space first): how every writer in the protocol adds a field.
pub fn write_pair(f: &mut impl fmt::Write, key: &str, value: impl fmt::Display) -> fmt::Result {
    write!(f, " {key}={value}")
}

/// Splits a boot module's line at the first word that is exactly `--` (between ASCII
/// whitespace or the line's ends, like every word): the words before it are the
/// hypervisor's, the text after it is the guest's (untrimmed). Without `--`, the whole line
/// and `None`.
pub fn split_guest(line: &str) -> (&str, Option<&str>) {
    let space = |c: char| c.is_ascii_whitespace();
    let separator = line
        .match_indices("--")
        .map(|(i, _)| i)
        .filter(|&i| line[..i].ends_with(space) || i == 0)
        .find(|&i| line[i + 2..].is_empty() || line[i + 2..].starts_with(space));
    match separator {
        Some(i) => (&line[..i], Some(&line[i + 2..])),
        None => (line, None),
    }
}

/// `text` cut to at most `N` bytes, at a character boundary: how a word is kept for a
/// warning or quoted in an error.
pub fn clip<const N: usize>(text: &str) -> ArrayString<N> {
    let mut out = ArrayString::new();
    for c in text.chars() {
        if out.try_push(c).is_err() {
            break;
        }
    }
    out
}

/// The longest word an [`OptionError`] quotes; longer ones are cut.
pub const QUOTED_MAX: usize = 32;

/// A word from a command line, quoted in an error (cut to [`QUOTED_MAX`] bytes).
pub type Quoted = ArrayString<QUOTED_MAX>;

/// `text` cut to at most [`QUOTED_MAX`] bytes (at a character boundary).
pub fn quote(text: &str) -> Quoted {
    clip(text)
}

/// Why a strict command line (domain 0's, a worker's) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionError {
    /// The command line is not UTF-8.
    NotText,
    /// A word has no `=`.
    NotKeyValue(Quoted),
    /// A key no one knows.
    UnknownKey(Quoted),
    /// A key given twice.
    Repeated(&'static str),
    /// A key whose value does not parse or is out of range.
    BadValue(&'static str),
    /// A required key is missing.
    Missing(&'static str),
    /// Values that are fine alone but not together (named by one of the keys).
    Inconsistent(&'static str),
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotText => f.write_str("the command line is not UTF-8"),
            Self::NotKeyValue(word) => write!(f, "`{word}` is not key=value"),
            Self::UnknownKey(key) => write!(f, "unknown key `{key}`"),
            Self::Repeated(key) => write!(f, "`{key}` given twice"),
            Self::BadValue(key) => write!(f, "bad value for `{key}`"),
            Self::Missing(key) => write!(f, "`{key}` is missing"),
            Self::Inconsistent(key) => write!(f, "`{key}` does not fit the other values"),
        }
    }
}

/// The command line as text.
pub fn text(line: &[u8]) -> Result<&str, OptionError> {
    core::str::from_utf8(line).map_err(|_| OptionError::NotText)
}

/// The `(key, value)` pairs of a strict line, in order; a bare word is an error.
pub fn pairs(line: &str) -> impl Iterator<Item = Result<(&str, &str), OptionError>> {
    line.split_ascii_whitespace()
        .map(|word| match Word::parse(word) {
            Word {
                key,
                value: Some(value),
            } => Ok((key, value)),
            Word { value: None, .. } => Err(OptionError::NotKeyValue(quote(word))),
        })
}

/// A set of known keys of a strict line, each taking at most one number: the parser's
/// bookkeeping.
#[derive(Debug)]
pub struct Keys<const N: usize> {
    names: [&'static str; N],
    values: [Option<u64>; N],
}

impl<const N: usize> Keys<N> {
    /// No values yet for `names`.
    pub const fn new(names: [&'static str; N]) -> Self {
        Self {
            names,
            values: [None; N],
        }
    }

    /// Parses every word of `line` as `key=<number>` for one of the keys; a word whose
    /// key is not numeric goes to `other(key, value)`, which returns whether it took it.
    pub fn parse(
        &mut self,
        line: &str,
        mut other: impl FnMut(&str, &str) -> Result<bool, OptionError>,
    ) -> Result<(), OptionError> {
        for pair in pairs(line) {
            let (key, value) = pair?;
            if other(key, value)? {
                continue;
            }
            let index = self
                .names
                .iter()
                .position(|&name| name == key)
                .ok_or_else(|| OptionError::UnknownKey(quote(key)))?;
            let name = self.names[index];
            if self.values[index].is_some() {
                return Err(OptionError::Repeated(name));
            }
            let number = value.parse().map_err(|_| OptionError::BadValue(name))?;
            self.values[index] = Some(number);
        }
        Ok(())
    }

    /// The value of `name` (a key of this set), if given.
    pub fn get(&self, name: &str) -> Option<u64> {
        let index = self.names.iter().position(|&known| known == name)?;
        self.values[index]
    }

    /// The value of `name`, or `default`, checked to lie in `range`.
    pub fn get_in(
        &self,
        name: &'static str,
        default: Option<u64>,
        range: core::ops::RangeInclusive<u64>,
    ) -> Result<u64, OptionError> {
        let value = self
            .get(name)
            .or(default)
            .ok_or(OptionError::Missing(name))?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(OptionError::BadValue(name))
        }
    }
}

/// The words of one lenient line (a console record's fields), looked up by key. The first
/// of a repeated key wins; unknown keys are there for whoever asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields<'a>(pub &'a str);

impl<'a> Fields<'a> {
    /// The value of the first `key=`.
    pub fn get(self, key: &str) -> Option<&'a str> {
        words(self.0)
            .find(|w| w.key == key && w.value.is_some())?
            .value
    }

    /// True when some word is `key=...`.
    pub fn has(self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The bare words (without `=`), in order.
    pub fn bare(self) -> impl Iterator<Item = &'a str> {
        words(self.0).filter(|w| w.value.is_none()).map(|w| w.key)
    }

    /// The `key=value` words, in order.
    pub fn pairs(self) -> impl Iterator<Item = Word<'a>> {
        words(self.0).filter(|w| w.value.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn no_other(_: &str, _: &str) -> Result<bool, OptionError> {
        Ok(false)
    }

    #[test]
    fn words_split_at_the_first_equals() {
        let got: Vec<_> = words("  a=1 b=x=y\tc= flag ").collect();
        assert_eq!(
            got,
            [
                Word {
                    key: "a",
                    value: Some("1")
                },
                Word {
                    key: "b",
                    value: Some("x=y")
                },
                Word {
                    key: "c",
                    value: Some("")
                },
                Word {
                    key: "flag",
                    value: None
                },
            ]
        );
        assert_eq!(words("").count(), 0);
    }

    #[test]
    fn strict_pairs_refuse_bare_words() {
        let got: Vec<_> = pairs("a=1 b=x=y").collect();
        assert_eq!(got, [Ok(("a", "1")), Ok(("b", "x=y"))]);
        assert_eq!(
            pairs("quiet").next(),
            Some(Err(OptionError::NotKeyValue(quote("quiet"))))
        );
    }

    #[test]
    fn the_separator_is_a_word_of_its_own() {
        assert_eq!(split_guest("a=1 -- x y"), ("a=1 ", Some(" x y")));
        assert_eq!(split_guest("-- x"), ("", Some(" x")));
        assert_eq!(split_guest("a --"), ("a ", Some("")));
        assert_eq!(split_guest("a --b c"), ("a --b c", None));
        assert_eq!(split_guest("a-- b"), ("a-- b", None));
        assert_eq!(split_guest("a=-- -- b"), ("a=-- ", Some(" b")));
        // Any ASCII whitespace separates words, the separator too.
        assert_eq!(split_guest("a\t--\tb"), ("a\t", Some("\tb")));
        assert_eq!(split_guest("--\n"), ("", Some("\n")));
        // A `--` that starts a longer word is passed over for a later one.
        assert_eq!(split_guest(" --x -- y"), (" --x ", Some(" y")));
    }

    #[test]
    fn numbers_are_kept_by_key() {
        let mut keys = Keys::new(["n", "seconds"]);
        keys.parse("seconds=3 n=100", no_other).unwrap();
        assert_eq!(keys.get("n"), Some(100));
        assert_eq!(keys.get("seconds"), Some(3));
        assert_eq!(keys.get("other"), None);
        assert_eq!(keys.get_in("n", None, 1..=100), Ok(100));
        assert_eq!(
            keys.get_in("n", None, 1..=99),
            Err(OptionError::BadValue("n"))
        );
    }

    #[test]
    fn defaults_fill_in_and_missing_keys_are_named() {
        let keys = Keys::new(["n"]);
        assert_eq!(keys.get_in("n", Some(7), 0..=10), Ok(7));
        assert_eq!(
            keys.get_in("n", None, 0..=10),
            Err(OptionError::Missing("n"))
        );
    }

    #[test]
    fn malformed_strict_lines_are_refused() {
        let parse = |line: &str| Keys::new(["n"]).parse(line, no_other);
        assert_eq!(parse("n=1 n=2"), Err(OptionError::Repeated("n")));
        assert_eq!(parse("n=-1"), Err(OptionError::BadValue("n")));
        assert_eq!(parse("n="), Err(OptionError::BadValue("n")));
        assert_eq!(
            parse("n=99999999999999999999"),
            Err(OptionError::BadValue("n"))
        );
        assert_eq!(parse("m=1"), Err(OptionError::UnknownKey(quote("m"))));
        assert_eq!(parse("n"), Err(OptionError::NotKeyValue(quote("n"))));
        assert_eq!(text(b"n=\xff"), Err(OptionError::NotText));
    }

    #[test]
    fn other_keys_go_to_the_callback() {
        let mut seen = Vec::new();
        let mut keys = Keys::new(["n"]);
        keys.parse("role=hog n=2", |key, value| {
            if key == "role" {
                seen.push(String::from(value));
                return Ok(true);
            }
            Ok(false)
        })
        .unwrap();
        assert_eq!(seen, ["hog"]);
        assert_eq!(keys.get("n"), Some(2));
    }

    #[test]
    fn long_words_are_clipped_at_a_character_boundary() {
        let long = "x".repeat(100);
        assert_eq!(quote(&long).len(), QUOTED_MAX);
        assert_eq!(quote("é").as_str(), "é");
        assert_eq!(clip::<3>("aéb").as_str(), "aé");
        assert_eq!(clip::<2>("aé").as_str(), "a");
    }

    #[test]
    fn fields_find_the_first_of_a_key_and_the_bare_words() {
        let fields = Fields("a=1 ok b= a=2 extra");
        assert_eq!(fields.get("a"), Some("1"));
        assert_eq!(fields.get("b"), Some(""));
        assert_eq!(fields.get("ok"), None);
        assert!(fields.has("b") && !fields.has("c"));
        assert_eq!(fields.bare().collect::<Vec<_>>(), ["ok", "extra"]);
        assert_eq!(fields.pairs().count(), 3);
    }

    proptest! {
        /// Any key=value words written with `write_pair` read back as written, in order.
        #[test]
        fn written_pairs_read_back(
            pairs in proptest::collection::vec(("[a-z_][a-z0-9_.]{0,12}", "[!-~]{0,16}"), 0..8)
        ) {
            let mut line = String::new();
            for (key, value) in &pairs {
                write_pair(&mut line, key, value).unwrap();
            }
            let read: Vec<(String, String)> = words(&line)
                .map(|w| (w.key.to_string(), w.value.unwrap().to_string()))
                .collect();
            prop_assert_eq!(read, pairs);
        }

        /// Word display is the inverse of parsing, for any word without whitespace.
        #[test]
        fn words_display_as_read(word in "[!-~]{1,24}") {
            prop_assert_eq!(Word::parse(&word).to_string(), word);
        }

        /// Nothing panics on any text, and the split keeps every byte.
        #[test]
        fn split_guest_keeps_everything(line in "[ a-z=-]{0,40}") {
            let (ours, guest) = split_guest(&line);
            match guest {
                Some(guest) => prop_assert_eq!(std::format!("{ours}--{guest}"), line),
                None => prop_assert_eq!(ours, line.as_str()),
            }
        }
    }
}
