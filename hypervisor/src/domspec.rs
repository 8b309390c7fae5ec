//! What a boot module asks for: its command line says how to build domains from the image,
//! or, with `disk=`, that the module is a disk image for domain 0 to serve, not a kernel.
//!
//! `name=NAME count=N mem=M mem_kib=K vcpus=V expect=ENDING -- GUEST COMMAND LINE` (`mem=`
//! in MiB, as xl's `memory=`; `mem_kib=` in KiB; the later one wins): the words before `--`
//! are for the hypervisor, everything after it is passed to the guest verbatim (without
//! `--`, the whole line is for the guest except the recognised keys), in the project's one
//! grammar (`protocol::keyvalue`). `disk=xvdX[,ro|,rw]` makes the module a virtual block
//! device `xvdX` (read-only with `,ro`) of the domains of the closest image module before it:
//! it is never built as a domain, and domain 0 reads it (`abi::control`'s `ReadDisk`).
//! Pure and host-tested; bad values are reported, never fatal.

use arrayvec::{ArrayString, ArrayVec};
use protocol::keyvalue::{self, Word};

/// How a domain is expected to end (`expect=`), checked by the run's final report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Poweroff,
    Reboot,
    Crash,
    /// Killed by the hypervisor (a hostile test guest).
    Killed,
}

/// A module that is a disk (`disk=`): the `xvd` letter it appears as (0 is `xvda`) and
/// whether it is read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub index: u8,
    pub read_only: bool,
}

impl DiskSpec {
    /// `xvdX`, `xvdX,ro` or `xvdX,rw` (X in a..p: Linux's 16 minors per disk leave room for
    /// 16 disks under major 202).
    pub fn parse(value: &str) -> Option<DiskSpec> {
        let (name, mode) = value.split_once(',').unwrap_or((value, "rw"));
        let read_only = match mode {
            "ro" | "r" => true,
            "rw" | "w" => false,
            _ => return None,
        };
        let letter = name.strip_prefix("xvd")?;
        let &[c] = letter.as_bytes() else { return None };
        (b'a'..=b'p').contains(&c).then(|| DiskSpec { index: c - b'a', read_only })
    }
}

/// The build request of one boot module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: ArrayString<32>,
    pub count: u32,
    pub mem_kib: u64,
    /// The most vCPUs each domain may bring up (`vcpus=`); `None`: the hypervisor's
    /// default (its `vcpus=` option).
    pub vcpus: Option<u32>,
    pub expect: Expect,
    pub guest_cmdline: ArrayString<1023>,
    /// `Some`: the module is a disk, not a kernel image.
    pub disk: Option<DiskSpec>,
    /// Words whose value did not parse.
    pub invalid: ArrayVec<ArrayString<32>, 4>,
}

/// Default reservation of a boot domain.
pub const DEFAULT_MEM_KIB: u64 = 1024;
/// The most domains one module may ask for.
pub const MAX_COUNT: u32 = 4096;
/// The most vCPUs a domain may have (the `vcpu_info` slots of its shared info page).
pub const MAX_VCPUS: u32 = abi::control::MAX_VCPUS;
/// The largest `mem=` in MiB (16 TiB; what a machine can give is checked at build time).
pub const MAX_MEM_MIB: u64 = 1 << 24;

impl DomainSpec {
    /// Parses a module command line; `default_name` and `default_count` apply when the line
    /// does not say.
    pub fn parse(line: &str, default_name: &str, default_count: u32) -> DomainSpec {
        // `--` as a word of its own separates our words from the guest's.
        let (ours, guest) = keyvalue::split_guest(line);
        let mut spec = DomainSpec {
            name: keyvalue::clip(default_name),
            count: default_count,
            mem_kib: DEFAULT_MEM_KIB,
            vcpus: None,
            expect: Expect::Poweroff,
            guest_cmdline: ArrayString::new(),
            disk: None,
            invalid: ArrayVec::new(),
        };
        let mut rest = ArrayString::<1023>::new();
        for word in ours.split_ascii_whitespace() {
            let ok = match Word::parse(word).pair() {
                Some(("name", v)) if !v.is_empty() => {
                    spec.name = keyvalue::clip(v);
                    true
                }
                Some(("count", v)) => v.parse().ok().filter(|n| (1..=MAX_COUNT).contains(n)).map(|n| spec.count = n).is_some(),
                Some(("mem_kib", v)) => v.parse().ok().filter(|&k: &u64| k >= 4 && k % 4 == 0).map(|k| spec.mem_kib = k).is_some(),
                Some(("mem", v)) => v.parse().ok().filter(|m: &u64| (1..=MAX_MEM_MIB).contains(m)).map(|m| spec.mem_kib = m * 1024).is_some(),
                Some(("disk", v)) => DiskSpec::parse(v).map(|d| spec.disk = Some(d)).is_some(),
                Some(("vcpus", v)) => v.parse().ok().filter(|n| (1..=MAX_VCPUS).contains(n)).map(|n| spec.vcpus = Some(n)).is_some(),
                Some(("expect", v)) => {
                    let expect = match v {
                        "poweroff" => Some(Expect::Poweroff),
                        "reboot" => Some(Expect::Reboot),
                        "crash" => Some(Expect::Crash),
                        "killed" => Some(Expect::Killed),
                        _ => None,
                    };
                    expect.map(|e| spec.expect = e).is_some()
                }
                _ if guest.is_none() => {
                    // Without `--`, unknown words belong to the guest.
                    if !rest.is_empty() {
                        let _ = rest.try_push(' ');
                    }
                    let _ = rest.try_push_str(word);
                    true
                }
                _ => false,
            };
            if !ok {
                let _ = spec.invalid.try_push(keyvalue::clip(word));
            }
        }
        spec.guest_cmdline = match guest {
            Some(g) => keyvalue::clip(g.trim()),
            None => rest,
        };
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = DomainSpec::parse("", "hello", 1);
        assert_eq!((s.name.as_str(), s.count, s.mem_kib, s.expect), ("hello", 1, DEFAULT_MEM_KIB, Expect::Poweroff));
        assert!(s.guest_cmdline.is_empty() && s.invalid.is_empty());
    }

    #[test]
    fn keys_and_guest_line() {
        let s = DomainSpec::parse("name=evil count=3 mem_kib=512 vcpus=2 expect=killed -- attack=all verbose", "x", 1);
        assert_eq!((s.name.as_str(), s.count, s.mem_kib, s.expect), ("evil", 3, 512, Expect::Killed));
        assert_eq!(s.vcpus, Some(2));
        assert_eq!(s.guest_cmdline.as_str(), "attack=all verbose");
    }

    #[test]
    fn mem_is_in_mib_and_the_later_size_wins() {
        assert_eq!(DomainSpec::parse("mem=128", "g", 1).mem_kib, 128 * 1024);
        assert_eq!(DomainSpec::parse("mem=128 mem_kib=512", "g", 1).mem_kib, 512);
        assert_eq!(DomainSpec::parse("mem_kib=512 mem=2", "g", 1).mem_kib, 2048);
        let s = DomainSpec::parse("mem=0 mem=-1 mem=16777217 mem=1.5 --", "g", 1);
        assert_eq!((s.mem_kib, s.invalid.len()), (DEFAULT_MEM_KIB, 4));
    }

    #[test]
    fn without_separator_unknown_words_go_to_the_guest() {
        let s = DomainSpec::parse("count=2 loops=10 quiet", "g", 1);
        assert_eq!(s.count, 2);
        assert_eq!(s.guest_cmdline.as_str(), "loops=10 quiet");
    }

    #[test]
    fn bad_values_are_reported_and_ignored() {
        let s = DomainSpec::parse("count=0 count=99999 mem_kib=3 mem_kib=x expect=maybe vcpus=0 vcpus=33 --", "g", 5);
        assert_eq!((s.count, s.mem_kib, s.expect, s.vcpus), (5, DEFAULT_MEM_KIB, Expect::Poweroff, None));
        assert_eq!(s.invalid.len(), 4, "the first four bad words are kept");
        assert!(s.guest_cmdline.is_empty());
    }

    #[test]
    fn disks() {
        assert_eq!(DomainSpec::parse("disk=xvda", "d", 1).disk, Some(DiskSpec { index: 0, read_only: false }));
        assert_eq!(DomainSpec::parse("name=data disk=xvdc,ro", "d", 1).disk, Some(DiskSpec { index: 2, read_only: true }));
        assert_eq!(DomainSpec::parse("disk=xvdp,rw", "d", 1).disk, Some(DiskSpec { index: 15, read_only: false }));
        for bad in ["disk=xvdq", "disk=sda", "disk=xvda,rx", "disk=xvdaa", "disk=", "disk=xvd"] {
            let s = DomainSpec::parse(bad, "d", 1);
            assert_eq!((s.disk, s.invalid.len()), (None, 1), "{bad}");
        }
        assert_eq!(DomainSpec::parse("", "d", 1).disk, None);
    }

    #[test]
    fn words_before_separator_that_are_not_keys_are_invalid() {
        let s = DomainSpec::parse("oops -- hi", "g", 1);
        assert_eq!(s.invalid.len(), 1);
        assert_eq!(s.guest_cmdline.as_str(), "hi");
    }
}
