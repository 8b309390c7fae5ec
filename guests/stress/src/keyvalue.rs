//! The command-line syntax of the stress run: words separated by spaces, each
//! `key=value`, values without spaces. Both guests parse their command lines with it, and
//! domain 0 writes the workers' lines in it.
//!
//! Parsing is strict: a word without `=`, a repeated key or a value that is not a number
//! where one is expected is an error, so that a typo on a command line fails the run
//! instead of silently running something else. This module must never know what the keys
//! mean: [`crate::args`] and guest-dom0's options do.

use core::fmt;

use arrayvec::ArrayString;

/// The longest word an error quotes; longer ones are cut.
pub const QUOTED_MAX: usize = 32;

/// A word from the command line, quoted in an error (cut to [`QUOTED_MAX`] bytes).
pub type Quoted = ArrayString<QUOTED_MAX>;

/// Why a command line was refused.
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

/// `text` cut to at most [`QUOTED_MAX`] bytes (at a character boundary).
pub fn quote(text: &str) -> Quoted {
    let mut quoted = Quoted::new();
    for c in text.chars() {
        if quoted.try_push(c).is_err() {
            break;
        }
    }
    quoted
}

/// The command line as text.
pub fn text(line: &[u8]) -> Result<&str, OptionError> {
    core::str::from_utf8(line).map_err(|_| OptionError::NotText)
}

/// The `(key, value)` pairs of `line`, in order.
pub fn pairs(line: &str) -> impl Iterator<Item = Result<(&str, &str), OptionError>> {
    line.split_ascii_whitespace().map(|word| {
        word.split_once('=')
            .ok_or_else(|| OptionError::NotKeyValue(quote(word)))
    })
}

/// A set of known keys, each taking at most one value: the parser's bookkeeping.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn no_other(_: &str, _: &str) -> Result<bool, OptionError> {
        Ok(false)
    }

    #[test]
    fn words_split_into_pairs() {
        let got: Vec<_> = pairs("  a=1 b=x=y\tc= ").collect();
        assert_eq!(got, [Ok(("a", "1")), Ok(("b", "x=y")), Ok(("c", ""))]);
        assert!(pairs("").next().is_none());
        assert_eq!(
            pairs("quiet").next(),
            Some(Err(OptionError::NotKeyValue(quote("quiet"))))
        );
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
    fn malformed_lines_are_refused() {
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
                seen.push(std::string::String::from(value));
                return Ok(true);
            }
            Ok(false)
        })
        .unwrap();
        assert_eq!(seen, ["hog"]);
        assert_eq!(keys.get("n"), Some(2));
    }

    #[test]
    fn long_words_are_quoted_cut() {
        let long = "x".repeat(100);
        assert_eq!(quote(&long).len(), QUOTED_MAX);
        assert_eq!(quote("é").as_str(), "é");
    }
}
