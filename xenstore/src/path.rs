//! Store paths: what a domain may name and how a relative name becomes absolute.
//!
//! A path without a leading `/` is relative to the domain's home, `/local/domain/<id>`
//! (Xen's implicit path); watch paths starting with `@` are the special events
//! (`@introduceDomain`, `@releaseDomain`). A valid absolute path starts with `/`, has no
//! empty component (`//`), no trailing `/` (but `/` itself), only the characters Xen allows
//! (`A-Za-z0-9-/_@`, so `.` and hence `..` never pass), and is at most
//! [`crate::wire::ABS_PATH_MAX`] bytes; an unprivileged domain's path may be at most
//! [`crate::wire::REL_PATH_MAX`] bytes beyond its home. Called by the store's dispatcher
//! on every path a request carries.

use alloc::format;
use alloc::string::String;

use crate::wire::{XsError, ABS_PATH_MAX, REL_PATH_MAX};
use crate::DomId;

/// The special watch paths.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// A domain's home.
pub fn home(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// Whether `path` is a valid absolute node path.
pub fn is_valid(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') || b.len() > ABS_PATH_MAX {
        return false;
    }
    if b.len() > 1 && b.ends_with(b"/") {
        return false;
    }
    !path.contains("//") && b.iter().all(|&c| valid_char(c))
}

/// The absolute path `raw` names for `domid` (relative paths under its home), checked;
/// `EINVAL` for anything invalid (bad bytes, too long, `..`, empty).
pub fn canonical(domid: DomId, privileged: bool, raw: &[u8]) -> Result<String, XsError> {
    let raw = core::str::from_utf8(raw).map_err(|_| XsError::Einval)?;
    if raw.is_empty() || raw.len() > ABS_PATH_MAX {
        return Err(XsError::Einval);
    }
    let path = if raw.starts_with('/') { String::from(raw) } else { format!("{}/{raw}", home(domid)) };
    if !is_valid(&path) {
        return Err(XsError::Einval);
    }
    if !privileged && path.len() > home(domid).len() + 1 + REL_PATH_MAX {
        return Err(XsError::Einval);
    }
    Ok(path)
}

/// A watch's path: a special `@` name as given, or a canonical path.
pub fn watch_path(domid: DomId, privileged: bool, raw: &[u8]) -> Result<String, XsError> {
    if raw.first() == Some(&b'@') {
        let raw = core::str::from_utf8(raw).map_err(|_| XsError::Einval)?;
        return if raw == INTRODUCE_DOMAIN || raw == RELEASE_DOMAIN { Ok(String::from(raw)) } else { Err(XsError::Einval) };
    }
    canonical(domid, privileged, raw)
}

/// The parent of an absolute path (`None` for `/`).
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    let at = path.rfind('/')?;
    Some(if at == 0 { "/" } else { &path[..at] })
}

/// Whether `path` is `ancestor` or beneath it.
pub fn is_within(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return path.starts_with('/');
    }
    path == ancestor || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// `path` as a watch registered relative to `domid`'s home reports it: without the home's
/// prefix when it lies beneath it.
pub fn relative_to_home(domid: DomId, path: &str) -> Option<&str> {
    let home = home(domid);
    path.strip_prefix(home.as_str()).and_then(|rest| rest.strip_prefix('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_go_under_the_home() {
        assert_eq!(canonical(3, false, b"data/x").unwrap(), "/local/domain/3/data/x");
        assert_eq!(canonical(3, false, b"/vm").unwrap(), "/vm");
        assert_eq!(canonical(0, true, b"/").unwrap(), "/");
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in [&b""[..], b"a//b", b"a/", b"../x", b"/a/../b", b"a b", b"a\xff", b"/a/", b"a.b"] {
            assert_eq!(canonical(1, false, bad), Err(XsError::Einval), "{bad:?}");
        }
        let long = alloc::vec![b'a'; REL_PATH_MAX + 1];
        assert_eq!(canonical(1, false, &long), Err(XsError::Einval));
        assert!(canonical(0, true, &long).is_ok(), "domain 0 has the absolute limit only");
        let huge = alloc::vec![b'a'; ABS_PATH_MAX + 1];
        assert_eq!(canonical(0, true, &huge), Err(XsError::Einval));
    }

    #[test]
    fn special_watches_are_the_two_xen_names() {
        assert_eq!(watch_path(1, false, b"@releaseDomain").unwrap(), RELEASE_DOMAIN);
        assert_eq!(watch_path(1, false, b"@other"), Err(XsError::Einval));
    }

    #[test]
    fn parents_and_subtrees() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/x", "/"));
        assert_eq!(relative_to_home(2, "/local/domain/2/data"), Some("data"));
        assert_eq!(relative_to_home(2, "/local/domain/22/data"), None);
    }
}
