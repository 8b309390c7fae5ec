//! Node permissions (Xen's `xs_permissions`): a list whose first entry names the owner and
//! what every domain not listed may do, and whose other entries give listed domains their
//! own access. Text form on the wire: one letter (`n` none, `r` read, `w` write, `b` both)
//! and the domain id, e.g. `"w0"`.
//!
//! Who may do what (Xen's `perm_for_conn`): a privileged connection (domain 0) may do
//! everything; a node's owner may do everything to it; another domain gets its own entry's
//! access if listed, else the first entry's.

use alloc::vec::Vec;

use crate::DomId;

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermKind {
    None,
    Read,
    Write,
    Both,
}

impl PermKind {
    pub const fn reads(self) -> bool {
        matches!(self, PermKind::Read | PermKind::Both)
    }

    pub const fn writes(self) -> bool {
        matches!(self, PermKind::Write | PermKind::Both)
    }

    const fn letter(self) -> u8 {
        match self {
            PermKind::None => b'n',
            PermKind::Read => b'r',
            PermKind::Write => b'w',
            PermKind::Both => b'b',
        }
    }
}

/// One entry of a node's permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    pub domid: DomId,
    pub kind: PermKind,
}

impl Perm {
    /// Parses `"r5"`-style text; `None` for anything else (no number, a number past u16,
    /// an unknown letter).
    pub fn parse(text: &[u8]) -> Option<Perm> {
        let (&letter, digits) = text.split_first()?;
        let kind = match letter {
            b'n' => PermKind::None,
            b'r' => PermKind::Read,
            b'w' => PermKind::Write,
            b'b' => PermKind::Both,
            _ => return None,
        };
        if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let domid = digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        Some(Perm { domid: u16::try_from(domid).ok()?, kind })
    }

    /// Appends the text form and its NUL.
    pub fn write_to(self, out: &mut Vec<u8>) {
        out.push(self.kind.letter());
        out.extend_from_slice(alloc::format!("{}", self.domid).as_bytes());
        out.push(0);
    }
}

/// What `domid` may do to a node with `perms` (never empty).
pub fn access(perms: &[Perm], domid: DomId, privileged: bool) -> PermKind {
    let Some(owner) = perms.first() else { return if privileged { PermKind::Both } else { PermKind::None } };
    if privileged || owner.domid == domid {
        return PermKind::Both;
    }
    perms[1..].iter().find(|p| p.domid == domid).map_or(owner.kind, |p| p.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        let p = Perm::parse(b"r12").unwrap();
        assert_eq!(p, Perm { domid: 12, kind: PermKind::Read });
        let mut out = Vec::new();
        p.write_to(&mut out);
        assert_eq!(out, b"r12\0");
        for bad in [&b""[..], b"r", b"x1", b"r65536", b"r1a", b"r0000001"] {
            assert_eq!(Perm::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn owner_acl_and_default_as_xen() {
        let perms = [Perm { domid: 3, kind: PermKind::None }, Perm { domid: 5, kind: PermKind::Read }];
        assert_eq!(access(&perms, 3, false), PermKind::Both, "the owner");
        assert_eq!(access(&perms, 5, false), PermKind::Read, "listed");
        assert_eq!(access(&perms, 7, false), PermKind::None, "the default");
        assert_eq!(access(&perms, 7, true), PermKind::Both, "domain 0");
    }
}
