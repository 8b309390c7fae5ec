//! Who a console line is from: the prefixes the hypervisor and domain 0 put before a
//! guest's text on the serial console, written and read here only.
//!
//! Three forms ([`Origin`]):
//!
//! - `(dN) text`: domain N wrote `text` with the `console_io` hypercall (the hypervisor's
//!   prefix).
//! - `(dN:name) text`: domain N wrote `text` into its console ring and the hypervisor
//!   drained it (the domain's own backend, or standing in for domain 0 until domain 0
//!   binds the ring's port).
//! - `(d0) [dM] text`: domain M wrote `text` into its console ring and domain 0 relayed it
//!   (xenconsoled's part, `guest_dom0::consoled`): domain 0 prints `[dM] text`
//!   ([`RelayTag`]) with `console_io`, and the hypervisor adds its `(d0) `. Only domain 0
//!   relays: `[dM] ` after any other domain's prefix is that domain's own text.
//!
//! Also the notice a console's rate limit leaves for the lines it dropped
//! ([`Suppressed`]: `[K lines suppressed by the console rate limit]`), which the
//! hypervisor and domain 0's relay both print after a domain's prefix.
//!
//! Written by the hypervisor (`pv::console`) and domain 0's relay; read by the stress
//! tool's log parser. It never looks at what follows the prefix (that is [`crate::record`]):
//! it only says whose text it is. Lines are the hypervisor's: at most [`LINE_MAX`]
//! characters of text after its prefix.

use core::fmt;

use crate::DomId;

/// The longest line of text the hypervisor's console keeps after its `(dN) ` prefix; a
/// longer one is cut into lines of this length.
pub const LINE_MAX: usize = 160;
/// The domain that relays other domains' console rings.
pub const RELAYER: DomId = DomId(0);
/// The longest relayed tag, `[d65535] `.
pub const RELAY_TAG_MAX: usize = "[d65535] ".len();
/// The longest text domain 0 relays as one line: with its [`RelayTag`] it is one
/// hypervisor line, never cut again.
pub const RELAY_TEXT_MAX: usize = LINE_MAX - RELAY_TAG_MAX;

// A stress record relayed whole stays one line.
const _: () = assert!(crate::record::LINE_MAX <= RELAY_TEXT_MAX);
const _: () = assert!(RELAY_TAG_MAX + RELAY_TEXT_MAX <= LINE_MAX);

/// Who a console line is from (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin<'a> {
    /// `(dN) `: the domain's `console_io` write.
    Direct(DomId),
    /// `(dN:name) `: the domain's console ring, drained by the hypervisor.
    Ring { domid: DomId, name: &'a str },
    /// `(d0) [dM] `: domain M's console ring, relayed by domain 0.
    Relayed(DomId),
}

impl Origin<'_> {
    /// The domain whose text it is.
    pub fn domid(self) -> DomId {
        match self {
            Self::Direct(domid) | Self::Ring { domid, .. } | Self::Relayed(domid) => domid,
        }
    }
}

/// The prefix, without the space that separates it from the text.
impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct(domid) => write!(f, "(d{})", domid.0),
            Self::Ring { domid, name } => write!(f, "(d{}:{name})", domid.0),
            Self::Relayed(domid) => write!(f, "(d{}) {}", RELAYER.0, RelayTag(*domid)),
        }
    }
}

/// What domain 0 prints before a line it relays for domain M: `[dM]` (then a space and
/// the text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayTag(pub DomId);

impl fmt::Display for RelayTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[d{}]", self.0 .0)
    }
}

/// A prefix found in a line: where it starts, whose it is, and the text after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found<'a> {
    /// Byte offset of the prefix's `(`.
    pub at: usize,
    pub origin: Origin<'a>,
    /// The text after the prefix and its space.
    pub body: &'a str,
}

/// Reads a prefix at the start of `text`: the origin and the text after it.
pub fn parse(text: &str) -> Option<(Origin<'_>, &str)> {
    let rest = text.strip_prefix("(d")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let domid = DomId(rest[..digits].parse().ok()?);
    let rest = &rest[digits..];
    if let Some(body) = rest.strip_prefix(") ") {
        if domid == RELAYER {
            if let Some((relayed, body)) = parse_tag(body) {
                return Some((Origin::Relayed(relayed), body));
            }
        }
        return Some((Origin::Direct(domid), body));
    }
    let (name, body) = rest.strip_prefix(':')?.split_once(") ")?;
    if name.is_empty() || name.contains([')', ' ']) {
        return None;
    }
    Some((Origin::Ring { domid, name }, body))
}

/// `[dM] ` at the start of `text`: M and the text after it.
fn parse_tag(text: &str) -> Option<(DomId, &str)> {
    let rest = text.strip_prefix("[d")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let domid = DomId(rest[..digits].parse().ok()?);
    Some((domid, rest[digits..].strip_prefix("] ")?))
}

/// Every prefix in `line`, in order (a serial log may glue lines together).
pub fn find_all(line: &str) -> impl Iterator<Item = Found<'_>> {
    line.match_indices("(d").filter_map(|(at, _)| {
        let (origin, body) = parse(&line[at..])?;
        Some(Found { at, origin, body })
    })
}

/// `[K lines suppressed by the console rate limit]`: what a console's rate limit says, once
/// the domain may print again, about the K lines it dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suppressed(pub u64);

const SUPPRESSED_TAIL: &str = " lines suppressed by the console rate limit]";

impl Suppressed {
    /// Reads the notice (the text after a prefix); `None` when `text` is not one.
    pub fn parse(text: &str) -> Option<Result<Self, &str>> {
        let count = text.strip_prefix('[')?.strip_suffix(SUPPRESSED_TAIL)?;
        Some(count.parse().map(Self).map_err(|_| count))
    }
}

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}{SUPPRESSED_TAIL}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_three_forms() {
        assert_eq!(parse("(d7) stress: done ok"), Some((Origin::Direct(DomId(7)), "stress: done ok")));
        assert_eq!(
            parse("(d3:stress3) hello"),
            Some((Origin::Ring { domid: DomId(3), name: "stress3" }, "hello"))
        );
        assert_eq!(parse("(d0) [d12] stress: io domid=12"), Some((Origin::Relayed(DomId(12)), "stress: io domid=12")));
        assert_eq!(parse("(d0) dom0: hello"), Some((Origin::Direct(DomId(0)), "dom0: hello")));
    }

    #[test]
    fn only_domain_0_relays() {
        // Another domain's `[dM]` is its own text.
        assert_eq!(parse("(d5) [d7] stress: done ok"), Some((Origin::Direct(DomId(5)), "[d7] stress: done ok")));
        assert_eq!(parse("(d5:x) [d7] y"), Some((Origin::Ring { domid: DomId(5), name: "x" }, "[d7] y")));
    }

    #[test]
    fn refuses_what_is_not_a_prefix() {
        for text in ["(d)", "(d) x", "(dx) x", "(d1)x", "(d1:) x", "(d1:a b) x", "(d70000) x", "(d1:a", "d1) x"] {
            assert_eq!(parse(text), None, "{text}");
        }
        // A malformed tag after `(d0) ` leaves domain 0's own text.
        assert_eq!(parse("(d0) [d] x"), Some((Origin::Direct(DomId(0)), "[d] x")));
        assert_eq!(parse("(d0) [d3]x"), Some((Origin::Direct(DomId(0)), "[d3]x")));
    }

    #[test]
    fn finds_glued_prefixes_in_order() {
        let line = "[cpu0 1.0] (d0) [d4] stress: hist x(d2) stress: y";
        let found: Vec<_> = find_all(line).map(|f| (f.at, f.origin.domid(), f.body)).collect();
        assert_eq!(found, [(11, DomId(4), "stress: hist x(d2) stress: y"), (35, DomId(2), "stress: y")]);
    }

    #[test]
    fn suppressed_notices() {
        assert_eq!(Suppressed::parse("[12 lines suppressed by the console rate limit]"), Some(Ok(Suppressed(12))));
        assert_eq!(Suppressed::parse("[many lines suppressed by the console rate limit]"), Some(Err("many")));
        assert_eq!(Suppressed::parse("[12 lines suppressed]"), None);
        assert_eq!(Suppressed::parse("stress: done ok"), None);
    }

    #[test]
    fn relayed_lines_fit_one_hypervisor_line() {
        let tag = format!("{} ", RelayTag(DomId(u16::MAX)));
        assert_eq!(tag.len(), RELAY_TAG_MAX);
    }

    fn origin() -> impl Strategy<Value = (u8, u16, &'static str)> {
        (0u8..3, any::<u16>(), prop::sample::select(&["a", "stress7", "guest1", "xs-2_b"][..]))
    }

    proptest! {
        #[test]
        fn written_prefixes_read_back((kind, id, name) in origin(), text in "[ -~]{0,150}") {
            let domid = DomId(id);
            let origin = match kind {
                0 => Origin::Direct(domid),
                1 => Origin::Ring { domid, name },
                _ => Origin::Relayed(domid),
            };
            let line = format!("{origin} {text}");
            let (read, body) = parse(&line).expect("a prefix");
            // Domain 0's own text that happens to start with a tag reads as relayed: domain
            // 0 never prints one but through its relay.
            if !(matches!(origin, Origin::Direct(RELAYER)) && parse_tag(&text).is_some()) {
                prop_assert_eq!(read, origin);
                prop_assert_eq!(body, text.as_str());
            }
            // What domain 0 prints, once the hypervisor prefixed it.
            let relayed = format!("{} {} {text}", Origin::Direct(RELAYER), RelayTag(domid));
            prop_assert_eq!(parse(&relayed), Some((Origin::Relayed(domid), text.as_str())));
            let notice = format!("{}", Suppressed(u64::from(id)));
            prop_assert_eq!(Suppressed::parse(&notice), Some(Ok(Suppressed(u64::from(id)))));
        }

        #[test]
        fn any_text_never_panics(text in "\\PC{0,80}") {
            let _ = parse(&text);
            let _ = find_all(&text).count();
            let _ = Suppressed::parse(&text);
        }
    }
}
