//! Domain 0's command line: `n=100 seconds=10 hogs=H latency=L pairs=P periodic=Q
//! mem_kib=512 max_kib=1024 balloon_down=16 balloon_up=8 io_kib=0`, every key optional.
//!
//! `n` stress domains run for `seconds`; `hogs`, `latency`, `pairs` (ping-pong pairs,
//! two domains each) and `periodic` say how many get those roles, the rest are `idle`.
//! Left out, `hogs` is two per CPU (weights 1 and 2 side by side), `latency` and `pairs`
//! are 4 and `periodic` is four per CPU, each cut down to what a small `n` leaves room for (see [`crate::plan`]). Every stress
//! domain starts with `mem_kib`, may grow to `max_kib`, and balloons down `balloon_down`
//! pages and back up `balloon_up`. With `io_kib` above 0 (`make stress IO=1`) every stress
//! domain gets a VBD of that many KiB, a RAM disk in domain 0's memory, and reads it. The hypervisor takes `mem_kib` on a module line for
//! itself, so on the boot module's line these options follow `--`. The grammar is the
//! `protocol` crate's (strict: a typo fails the run). This module only parses: it must
//! never decide the plan.

use protocol::keyvalue::{self, Keys, OptionError};
use protocol::worker::{MAX_BALLOON_PAGES, MAX_IO_KIB, MAX_SECONDS};

/// The most stress domains one run creates.
pub const MAX_DOMAINS: u32 = 1000;
/// The smallest reservation of a stress domain, in KiB.
pub const MIN_MEM_KIB: u64 = 64;
/// The largest reservation (or maximum) of a stress domain, in KiB (4 GiB).
pub const MAX_MEM_KIB: u64 = 4 << 20;

/// Domain 0's options, defaults filled in except the role counts that depend on the CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub n: u32,
    pub seconds: u64,
    /// `None`: two per CPU, as room allows.
    pub hogs: Option<u32>,
    /// `None`: 4, as room allows.
    pub latency: Option<u32>,
    /// `None`: 4, as room allows.
    pub pairs: Option<u32>,
    /// `None`: four per CPU, as room allows.
    pub periodic: Option<u32>,
    pub mem_kib: u32,
    pub max_kib: u32,
    pub balloon_down: u64,
    pub balloon_up: u64,
    /// Each stress domain's VBD in KiB (a multiple of 4), 0 for none.
    pub io_kib: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            n: 100,
            seconds: 10,
            hogs: None,
            latency: None,
            pairs: None,
            periodic: None,
            mem_kib: 512,
            max_kib: 1024,
            balloon_down: 16,
            balloon_up: 8,
            io_kib: 0,
        }
    }
}

impl Options {
    /// Parses domain 0's command line.
    pub fn parse(line: &[u8]) -> Result<Self, OptionError> {
        let line = keyvalue::text(line)?;
        let mut keys = Keys::new([
            "n",
            "seconds",
            "hogs",
            "latency",
            "pairs",
            "periodic",
            "mem_kib",
            "max_kib",
            "balloon_down",
            "balloon_up",
            "io_kib",
        ]);
        keys.parse(line, |_, _| Ok(false))?;
        let defaults = Self::default();
        let n = keys.get_in("n", Some(defaults.n.into()), 1..=MAX_DOMAINS.into())?;
        let count = |key| -> Result<Option<u32>, OptionError> {
            Ok(match keys.get(key) {
                Some(_) => Some(keys.get_in(key, None, 0..=n)? as u32),
                None => None,
            })
        };
        let mem_kib = keys.get_in(
            "mem_kib",
            Some(defaults.mem_kib.into()),
            MIN_MEM_KIB..=MAX_MEM_KIB,
        )?;
        if !mem_kib.is_multiple_of(4) {
            return Err(OptionError::BadValue("mem_kib"));
        }
        let max_kib = keys.get_in(
            "max_kib",
            Some(defaults.max_kib.max(mem_kib as u32).into()),
            mem_kib..=MAX_MEM_KIB,
        )?;
        let most_down = (mem_kib / 4 - 1).min(MAX_BALLOON_PAGES);
        let balloon_down = keys.get_in(
            "balloon_down",
            Some(defaults.balloon_down.min(most_down)),
            0..=most_down,
        )?;
        let io_kib = keys.get_in("io_kib", Some(0), 0..=MAX_IO_KIB)?;
        if !io_kib.is_multiple_of(4) {
            return Err(OptionError::BadValue("io_kib"));
        }
        Ok(Self {
            n: n as u32,
            io_kib,
            seconds: keys.get_in("seconds", Some(defaults.seconds), 1..=MAX_SECONDS)?,
            hogs: count("hogs")?,
            latency: count("latency")?,
            pairs: count("pairs")?,
            periodic: count("periodic")?,
            mem_kib: mem_kib as u32,
            max_kib: max_kib as u32,
            balloon_down,
            balloon_up: keys.get_in(
                "balloon_up",
                Some(defaults.balloon_up.min(balloon_down)),
                0..=balloon_down,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::keyvalue::quote;

    #[test]
    fn an_empty_line_gives_the_defaults() {
        assert_eq!(Options::parse(b""), Ok(Options::default()));
    }

    #[test]
    fn given_values_are_taken() {
        let options = Options::parse(
            b"n=10 seconds=2 hogs=0 pairs=1 periodic=3 mem_kib=256 max_kib=256 balloon_down=4 balloon_up=4",
        )
        .unwrap();
        assert_eq!(
            options,
            Options {
                n: 10,
                seconds: 2,
                hogs: Some(0),
                latency: None,
                pairs: Some(1),
                periodic: Some(3),
                mem_kib: 256,
                max_kib: 256,
                balloon_down: 4,
                balloon_up: 4,
                io_kib: 0,
            }
        );
        assert_eq!(Options::parse(b"io_kib=1024").unwrap().io_kib, 1024);
    }

    #[test]
    fn defaults_follow_the_given_reservation() {
        let options = Options::parse(b"mem_kib=2048 balloon_down=4").unwrap();
        assert_eq!(
            options.max_kib, 2048,
            "the maximum is at least the reservation"
        );
        assert_eq!(
            options.balloon_up, 4,
            "cannot regain more than was given back"
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let refused =
            |line: &[u8], key| assert_eq!(Options::parse(line), Err(OptionError::BadValue(key)));
        refused(b"n=0", "n");
        refused(b"n=1001", "n");
        refused(b"n=10 hogs=11", "hogs");
        refused(b"n=10 periodic=11", "periodic");
        refused(b"seconds=0", "seconds");
        refused(b"mem_kib=510", "mem_kib");
        refused(b"mem_kib=32", "mem_kib");
        refused(b"mem_kib=512 max_kib=256", "max_kib");
        refused(b"mem_kib=64 balloon_down=16", "balloon_down");
        refused(b"balloon_down=2 balloon_up=3", "balloon_up");
        refused(b"io_kib=6", "io_kib");
        refused(b"io_kib=1048576", "io_kib");
        assert_eq!(
            Options::parse(b"cpus=2"),
            Err(OptionError::UnknownKey(quote("cpus")))
        );
        assert_eq!(Options::parse(b"n=1 n=2"), Err(OptionError::Repeated("n")));
    }
}
