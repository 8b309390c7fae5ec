//! Domain 0's `plan=xtf`: the options of the one domain it creates for a Xen Test Framework
//! run (`tests/xtf.py`), as xl creates an XTF test's domain from its `.cfg` with a Linux
//! domain 0 beside it: `plan=xtf mem_kib=K vcpus=V cmdline=<the rest of the line>`. The
//! test's image is boot module 1; `cmdline=` comes last and takes everything after it,
//! spaces included (a test's `cmdline=` may hold several words).
//!
//! Parsed here, on the host; the binary (`src/xtfrun.rs`) creates the domain, waits for it
//! to end and powers off. This module must never make a hypercall.

use protocol::keyvalue::{self, OptionError};

/// The XTF domain's memory when the line names none: XTF's `.cfg` files ask for 128 MiB.
pub const DEFAULT_MEM_KIB: u32 = 128 * 1024;

/// What `plan=xtf` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XtfOptions<'a> {
    /// The domain's reservation (and maximum), in KiB.
    pub mem_kib: u32,
    /// Its vCPU limit (at least 1).
    pub vcpus: u32,
    /// Its command line.
    pub cmdline: &'a str,
}

/// `Some` when `line` asks for `plan=xtf` (with its options, or why they are wrong);
/// `None` for every other plan.
pub fn requested(line: &[u8]) -> Option<Result<XtfOptions<'_>, OptionError>> {
    let text = keyvalue::text(line).ok()?;
    let (words, cmdline) = match text.find("cmdline=") {
        Some(at) if at == 0 || text.as_bytes()[at - 1] == b' ' => (&text[..at], text[at + "cmdline=".len()..].trim()),
        _ => (text, ""),
    };
    words.split_ascii_whitespace().any(|w| w == "plan=xtf").then(|| options(words, cmdline))
}

fn options<'a>(words: &str, cmdline: &'a str) -> Result<XtfOptions<'a>, OptionError> {
    let mut options = XtfOptions { mem_kib: DEFAULT_MEM_KIB, vcpus: 1, cmdline };
    for word in words.split_ascii_whitespace().filter(|&w| w != "plan=xtf") {
        let (key, value) = word.split_once('=').ok_or(OptionError::BadValue("xtf"))?;
        let number = |name| value.parse::<u32>().map_err(|_| OptionError::BadValue(name));
        match key {
            "mem_kib" => options.mem_kib = number("mem_kib")?,
            "vcpus" => options.vcpus = number("vcpus")?,
            _ => return Err(OptionError::BadValue("xtf")),
        }
    }
    if options.mem_kib < 4 || options.vcpus == 0 {
        return Err(OptionError::BadValue(if options.vcpus == 0 { "vcpus" } else { "mem_kib" }));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_plans_are_not_xtf() {
        assert_eq!(requested(b""), None);
        assert_eq!(requested(b"plan=fuzz seconds=3"), None);
        assert_eq!(requested(b"attack=huge"), None);
        assert_eq!(requested(b"n=10 cmdline=plan=xtf"), None, "inside the guest's command line");
    }

    #[test]
    fn defaults_are_xtfs() {
        let options = requested(b"plan=xtf").unwrap().unwrap();
        assert_eq!(options, XtfOptions { mem_kib: 128 * 1024, vcpus: 1, cmdline: "" });
    }

    #[test]
    fn the_command_line_takes_the_rest_of_the_line() {
        let line = b"plan=xtf mem_kib=131072 vcpus=2 cmdline=hypercall  more words ";
        let options = requested(line).unwrap().unwrap();
        assert_eq!(options, XtfOptions { mem_kib: 131072, vcpus: 2, cmdline: "hypercall  more words" });
        let options = requested(b"plan=xtf cmdline=vmassist mem_kib=7").unwrap().unwrap();
        assert_eq!(options.cmdline, "vmassist mem_kib=7", "nothing after cmdline= is an option");
        assert_eq!(options.mem_kib, DEFAULT_MEM_KIB);
    }

    #[test]
    fn bad_options_are_refused() {
        for (line, key) in [
            (&b"plan=xtf mem_kib=lots"[..], "mem_kib"),
            (b"plan=xtf mem_kib=2", "mem_kib"),
            (b"plan=xtf vcpus=0", "vcpus"),
            (b"plan=xtf colour=blue", "xtf"),
            (b"plan=xtf stray", "xtf"),
        ] {
            assert_eq!(requested(line), Some(Err(OptionError::BadValue(key))), "{line:?}");
        }
    }
}
