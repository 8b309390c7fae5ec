//! The fuzzer's command line: `seed=N [calls=N] [vcpus=1|2] [avoid=class,...]
//! [only=family,...] [trace=N] [progress_ms=N]`.
//!
//! `seed` picks the run (required: domain 0 derives one per fuzzer domain, and `make fuzz
//! SEED=` replays them); `calls` ends the domain (power-off) after that many calls in all
//! (0: never); `vcpus` is how many vCPUs fuzz (2: both, on two CPUs when there are two);
//! `avoid` leaves out classes of calls that reach a known hole ([`Class`]), so that a run
//! can go on past it; `only` limits the run to some families of calls ([`Family`]);
//! `trace` prints every call from that call number on (for triage: the last line before a
//! crash names it); `progress_ms` is the time between two progress lines; `check=1`
//! checks after every call that the program's code is unchanged (slow); `fatal=<name>`
//! makes one of the calls meant to end the domain first thing. This module
//! only parses: it must never decide what a call is.

use protocol::keyvalue::{self, Keys, OptionError};

macro_rules! name_set {
    ($(#[$meta:meta])* $set:ident of $item:ident { $($(#[$imeta:meta])* $variant:ident = $name:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum $item {
            $($(#[$imeta])* $variant,)*
        }

        impl $item {
            /// Every value, in order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// Its name on the command line.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            /// The value named `name`.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|item| item.name() == name)
            }
        }

        /// A set of them, one bit each.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $set(pub u32);

        impl $set {
            /// Every one.
            pub const fn all() -> Self {
                Self((1 << $item::ALL.len() as u32) - 1)
            }

            /// Whether `item` is in the set.
            pub const fn has(self, item: $item) -> bool {
                self.0 & (1 << item as u32) != 0
            }

            /// The set with `item` added.
            pub const fn with(self, item: $item) -> Self {
                Self(self.0 | 1 << item as u32)
            }

            /// Parses a comma-separated list of names.
            pub fn parse(list: &str, key: &'static str) -> Result<Self, OptionError> {
                let mut set = Self::default();
                for name in list.split(',').filter(|n| !n.is_empty()) {
                    let item = $item::from_name(name).ok_or(OptionError::BadValue(key))?;
                    set = set.with(item);
                }
                Ok(set)
            }
        }

        impl core::fmt::Display for $set {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let mut first = true;
                for item in $item::ALL.iter().filter(|&&item| self.has(item)) {
                    if !first {
                        f.write_str(",")?;
                    }
                    f.write_str(item.name())?;
                    first = false;
                }
                if first {
                    f.write_str("none")?;
                }
                Ok(())
            }
        }
    };
}

name_set! {
    /// Classes of calls that reach a hole known to break the hypervisor (issue 15's list),
    /// which `avoid=` leaves out.
    Avoid of Class {
        /// Pointers into the hypervisor window's aliases, `(s << 39) + 0x7F_FC00_0000` (hole 1).
        Alias = "alias",
        /// `syscall`/`sysenter` from 32-bit code (hole 2): the `sysenter` probe (the fuzzer
        /// never runs 32-bit code itself).
        Cstar = "cstar",
        /// Unmapping without a flush to every vCPU (`update_va_mapping` flags 0, hole 3):
        /// with this avoided every unmap flushes everywhere.
        Tlb = "tlb",
        /// L4 slot 511: updates of entry 511 of any frame, base pointers to tables not
        /// known to keep it (hole 4).
        Slot511 = "slot511",
        /// `iret` frames with bad CS, SS or RIP (hole 5).
        Iret = "iret",
        /// Page-table calls from the second vCPU, which can wait on the MMU lock while the
        /// first waits for a shootdown (hole 6).
        Lock = "lock",
        /// Long batches: huge counts over valid entries, nested long multicalls (hole 7).
        Long = "long",
        /// Privileged instructions from guest user mode (hole 8). The fuzzer does not enter
        /// guest user mode yet, so this leaves nothing out.
        Usercr = "usercr",
        /// The shared-info frame as a page table or descriptor frame (hole 10).
        Shinfo = "shinfo",
        /// Console writes over 256 bytes (hole 11).
        Console = "console",
        /// `vcpu_op initialise` of vCPUs beyond the fuzzer's two (hole 13).
        Vcpus = "vcpus",
        /// `sched_op poll` of port 0xFFFFFFFF (hole 14).
        Poll = "poll",
        /// Every call meant to end the domain (bad iret, garbage base pointer, shutdown...).
        Fatal = "fatal",
    }
}

name_set! {
    /// Families of calls, which `only=` selects.
    Families of Family {
        /// `mmu_update`, `mmuext_op`, `update_va_mapping`, table building and base pointers.
        Mmu = "mmu",
        /// `memory_op`: reservations, balloon in and out, every sub-op.
        Memory = "memory",
        /// `event_channel_op`, `set_timer_op`.
        Events = "events",
        /// `sched_op`: yield, block with a timer armed, poll, every sub-op.
        Sched = "sched",
        /// `xen_version`, `console_io`, `vm_assist`, `fpu_taskswitch`.
        Info = "info",
        /// `set_trap_table`, `set_callbacks`, `callback_op`, `stack_switch`.
        Traps = "traps",
        /// `set_gdt`, `update_descriptor`, `set_segment_base`.
        Segments = "segments",
        /// `vcpu_op`.
        Vcpu = "vcpu",
        /// `multicall` of calls of the other families.
        Multicall = "multicall",
        /// Unknown and unimplemented hypercall numbers, raw registers.
        Raw = "raw",
        /// Privileged instructions, `int n`, far transfers, from guest kernel mode.
        Instructions = "instructions",
        /// The `iret` hypercall.
        Iret = "iret",
    }
}

/// The fuzzer's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub seed: u64,
    /// Calls in all before the domain powers off; 0: never.
    pub calls: u64,
    pub vcpus: u32,
    pub avoid: Avoid,
    pub only: Families,
    /// Print each call from this call number on; `u64::MAX`: never.
    pub trace_from: u64,
    pub progress_ms: u64,
    /// Check after every call that the program's code is unchanged (slow; for triage).
    pub check_code: bool,
    /// Make this call meant to end the domain ([`FATAL_KINDS`]) first thing.
    pub fatal: Option<u8>,
}

/// The calls meant to end the domain, by name (`fatal=<name>` makes one at once).
pub const FATAL_KINDS: [&str; 8] = [
    "iret_rip",
    "iret_selectors",
    "shutdown",
    "baseptr",
    "cr3",
    "fault_in_handler",
    "vcpu_garbage",
    "no_stack",
];

/// The most vCPUs the fuzzer runs on.
pub const MAX_VCPUS: u32 = 2;

impl Options {
    /// Parses the fuzzer's command line.
    pub fn parse(line: &[u8]) -> Result<Self, OptionError> {
        let line = keyvalue::text(line)?;
        let mut keys = Keys::new(["seed", "calls", "vcpus", "trace", "progress_ms", "check"]);
        let mut avoid = None;
        let mut only = None;
        let mut fatal = None;
        keys.parse(line, |key, value| match key {
            "fatal" => {
                let index = FATAL_KINDS.iter().position(|&k| k == value).ok_or(OptionError::BadValue("fatal"))?;
                fatal = Some(index as u8);
                Ok(true)
            }
            "avoid" if avoid.is_none() => {
                avoid = Some(Avoid::parse(value, "avoid")?);
                Ok(true)
            }
            "only" if only.is_none() => {
                only = Some(Families::parse(value, "only")?);
                Ok(true)
            }
            "avoid" | "only" => Err(OptionError::Repeated(if key == "avoid" { "avoid" } else { "only" })),
            _ => Ok(false),
        })?;
        Ok(Self {
            seed: keys.get_in("seed", None, 0..=u64::MAX)?,
            calls: keys.get_in("calls", Some(0), 0..=u64::MAX)?,
            vcpus: keys.get_in("vcpus", Some(u64::from(MAX_VCPUS)), 1..=u64::from(MAX_VCPUS))? as u32,
            avoid: avoid.unwrap_or_default(),
            only: only.filter(|f| f.0 != 0).unwrap_or(Families::all()),
            trace_from: keys.get_in("trace", Some(u64::MAX), 0..=u64::MAX)?,
            progress_ms: keys.get_in("progress_ms", Some(2000), 100..=60_000)?,
            check_code: keys.get_in("check", Some(0), 0..=1)? == 1,
            fatal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_alone_runs_everything_on_two_vcpus() {
        let options = Options::parse(b"seed=17").unwrap();
        assert_eq!(options.seed, 17);
        assert_eq!(options.calls, 0);
        assert_eq!(options.vcpus, 2);
        assert_eq!(options.avoid, Avoid::default());
        assert_eq!(options.only, Families::all());
        assert_eq!(options.trace_from, u64::MAX);
    }

    #[test]
    fn lists_parse_and_print_back() {
        let options = Options::parse(b"seed=1 avoid=alias,iret,long only=mmu,events vcpus=1 calls=500 trace=40").unwrap();
        assert!(options.avoid.has(Class::Alias) && options.avoid.has(Class::Iret) && options.avoid.has(Class::Long));
        assert!(!options.avoid.has(Class::Tlb));
        assert!(options.only.has(Family::Mmu) && options.only.has(Family::Events));
        assert!(!options.only.has(Family::Iret));
        assert_eq!(std::format!("{}", options.avoid), "alias,iret,long");
        assert_eq!(std::format!("{}", Avoid::default()), "none");
        assert_eq!((options.vcpus, options.calls, options.trace_from), (1, 500, 40));
        for class in Class::ALL {
            assert_eq!(Class::from_name(class.name()), Some(*class));
        }
        for family in Family::ALL {
            assert_eq!(Family::from_name(family.name()), Some(*family));
        }
    }

    #[test]
    fn mistakes_are_refused() {
        assert_eq!(Options::parse(b""), Err(OptionError::Missing("seed")));
        assert_eq!(Options::parse(b"seed=1 avoid=nothing"), Err(OptionError::BadValue("avoid")));
        assert_eq!(Options::parse(b"seed=1 only=mmu only=raw"), Err(OptionError::Repeated("only")));
        assert_eq!(Options::parse(b"seed=1 vcpus=3"), Err(OptionError::BadValue("vcpus")));
        assert!(matches!(Options::parse(b"seed=1 colour=red"), Err(OptionError::UnknownKey(_))));
        assert_eq!(Options::parse(b"seed=1 fatal=nothing"), Err(OptionError::BadValue("fatal")));
        assert_eq!(Options::parse(b"seed=1 fatal=cr3").unwrap().fatal, Some(4));
    }
}
