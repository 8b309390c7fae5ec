//! Domain 0's other two plans, chosen by `plan=` on its command line: `plan=fuzz` (the
//! fuzz run of `make fuzz`) and `plan=cycles` (the containment cycles); without `plan=`
//! domain 0 runs the stress plan ([`crate::options`]).
//!
//! `plan=fuzz seconds=S seed=N fuzzers=F life_ms=L mem_kib=K pairs=P periodic=Q
//! avoid=<classes> only=<families> replay=R heartbeat_ms=H pin=0|1`: for S seconds domain 0 keeps F fuzzer
//! domains (boot module 2, two vCPUs each, [`fuzzer_seed`] of N and their index, or all R
//! with `replay=`) alive, each destroyed after L ms unless it ended first, and replaced;
//! beside P ping-pong pairs and Q periodic stress workers (boot module 1) that must run
//! through and report. `avoid=`, `only=`, `trace=` and `check=` go to every fuzzer as
//! they are.
//!
//! `plan=cycles cycles=C life_ms=L seed=N avoid=<classes> pairs=P periodic=Q
//! heartbeat_ms=H pin=0|1`: C create/destroy cycles, each a hostile domain (boot module 3: its
//! survivable suite, or one of its `attack=` modes, [`CYCLE_ATTACKS`]) or a fuzzer domain,
//! alive until it ends or L ms pass, beside the same good domains.
//!
//! `pin=1` keeps each hostile domain on the CPU it starts on (CPU 0, 1, 0, ... by index);
//! `heap=0` reports the heap and its domain records at the end instead of checking them.
//! In both, every domain 0 ever destroys must leave free memory and the hypervisor's heap
//! exactly as they were, and every other CPU must keep answering the heartbeat within H
//! ms (default 10 s: under TCG on a loaded host a vCPU thread can wait seconds for a host
//! CPU; a CPU that never answers is a hang, which the host tool sees as silence). This module only parses and derives: it must never create anything.

use arrayvec::ArrayString;
use guest_fuzz::options::{Avoid, Families};
use guest_fuzz::rng::Rng;
use protocol::keyvalue::{self, Keys, OptionError};

/// The boot modules the plans build domains from.
pub const STRESS_MODULE: u32 = 1;
pub const FUZZ_MODULE: u32 = 2;
pub const HOSTILE_MODULE: u32 = 3;

/// The most fuzzer domains alive at once.
pub const MAX_FUZZERS: u32 = 8;
/// The most good domains (pairs count twice).
pub const MAX_GOOD: u32 = 16;

/// Which plan domain 0 runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The stress plan: the whole line is [`crate::options::Options`]'.
    Stress,
    Fuzz(FuzzOptions),
    Cycles(CycleOptions),
}

/// `avoid=` and `only=` as given (checked against the fuzzer's classes and families), for
/// the fuzzers' command lines.
pub type AvoidList = ArrayString<256>;

/// Options of `plan=fuzz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuzzOptions {
    pub seconds: u64,
    pub seed: u64,
    pub fuzzers: u32,
    pub life_ms: u64,
    pub mem_kib: u32,
    pub pairs: u32,
    pub periodic: u32,
    pub avoid: AvoidList,
    /// Every fuzzer gets this seed (to replay one).
    pub replay: Option<u64>,
    pub heartbeat_ms: u64,
    /// Keep each hostile domain's vCPUs on the CPUs they start on (`pin=1`): a vCPU that
    /// moves can leave state behind on the CPU it left (issue 15, hole 14).
    pub pin: bool,
    /// Fail the run when the heap or its domain and vCPU records differ at the end
    /// (`heap=1`, the default), or only report it (`heap=0`: while hole 14's timers left on
    /// other CPUs hold records of destroyed domains). Free memory is checked either way.
    pub heap_check: bool,
}

/// Options of `plan=cycles`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleOptions {
    pub cycles: u64,
    pub life_ms: u64,
    pub seed: u64,
    pub mem_kib: u32,
    pub pairs: u32,
    pub periodic: u32,
    pub avoid: AvoidList,
    pub heartbeat_ms: u64,
    /// As [`FuzzOptions::pin`].
    pub pin: bool,
    /// As [`FuzzOptions::heap_check`].
    pub heap_check: bool,
}

/// What the hostile domains of the cycles run, in turn: the survivable suite (which ends
/// with a fault in its fault handler), each `attack=` mode, and a fuzzer domain.
pub const CYCLE_ATTACKS: &[CycleDomain] = &[
    CycleDomain::Hostile(""),
    CycleDomain::Hostile("attack=fault_in_fault_handler"),
    CycleDomain::Hostile("attack=spin_masked"),
    CycleDomain::Hostile("attack=flood_dom0"),
    CycleDomain::Hostile("attack=exhaust_ports_timers"),
    CycleDomain::Hostile("attack=console_blocked"),
    CycleDomain::Fuzzer,
];

/// One domain of a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CycleDomain {
    /// guest-hostile with this command line.
    Hostile(&'static str),
    /// guest-fuzz with a seed of the run's.
    Fuzzer,
}

/// Which plan `line` asks for.
pub fn plan(line: &[u8]) -> Result<Plan, OptionError> {
    let text = keyvalue::text(line)?;
    let wanted = text.split_ascii_whitespace().find_map(|word| word.strip_prefix("plan="));
    let rest = || text.split_ascii_whitespace().filter(|w| !w.starts_with("plan="));
    match wanted {
        None => Ok(Plan::Stress),
        Some("fuzz") => fuzz_options(rest()).map(Plan::Fuzz),
        Some("cycles") => cycle_options(rest()).map(Plan::Cycles),
        Some(_) => Err(OptionError::BadValue("plan")),
    }
}

/// Splits off `avoid=` and `only=`, checking their classes and families; returns what
/// the fuzzers get of them (`avoid=... only=...`).
fn parse<'a, const N: usize>(
    words: impl Iterator<Item = &'a str>,
    keys: &mut Keys<N>,
) -> Result<AvoidList, OptionError> {
    let mut avoid = None;
    let mut only = None;
    let mut debug = ArrayString::<64>::new();
    let mut line = ArrayString::<1024>::new();
    for word in words {
        // Triage options of the fuzzer itself, passed on as they are.
        if word.starts_with("trace=") || word.starts_with("check=") {
            debug.try_push_str(" ").and_then(|_| debug.try_push_str(word)).map_err(|_| OptionError::BadValue("trace"))?;
            continue;
        }
        if let Some(list) = word.strip_prefix("avoid=") {
            if avoid.is_some() {
                return Err(OptionError::Repeated("avoid"));
            }
            Avoid::parse(list, "avoid")?;
            avoid = Some(list);
        } else if let Some(list) = word.strip_prefix("only=") {
            if only.is_some() {
                return Err(OptionError::Repeated("only"));
            }
            Families::parse(list, "only")?;
            only = Some(list);
        } else {
            line.try_push_str(word).map_err(|_| OptionError::BadValue("plan"))?;
            line.try_push(' ').map_err(|_| OptionError::BadValue("plan"))?;
        }
    }
    keys.parse(&line, |_, _| Ok(false))?;
    let mut passed = AvoidList::new();
    let mut add = |text: &str| passed.try_push_str(text).map_err(|_| OptionError::BadValue("avoid"));
    if let Some(avoid) = avoid {
        add("avoid=")?;
        add(avoid)?;
    }
    if let Some(only) = only {
        if avoid.is_some() {
            add(" ")?;
        }
        add("only=")?;
        add(only)?;
    }
    add(&debug)?;
    Ok(passed)
}

fn fuzz_options<'a>(words: impl Iterator<Item = &'a str>) -> Result<FuzzOptions, OptionError> {
    let mut keys = Keys::new([
        "seconds", "seed", "fuzzers", "life_ms", "mem_kib", "pairs", "periodic", "replay", "heartbeat_ms", "pin", "heap",
    ]);
    let avoid = parse(words, &mut keys)?;
    let pairs = keys.get_in("pairs", Some(1), 0..=u64::from(MAX_GOOD / 2))? as u32;
    Ok(FuzzOptions {
        seconds: keys.get_in("seconds", Some(60), 1..=24 * 3600)?,
        seed: keys.get_in("seed", Some(1), 0..=u64::MAX)?,
        fuzzers: keys.get_in("fuzzers", Some(1), 1..=u64::from(MAX_FUZZERS))? as u32,
        life_ms: keys.get_in("life_ms", Some(4000), 100..=3_600_000)?,
        mem_kib: mem_kib(&keys)?,
        pairs,
        periodic: keys.get_in("periodic", Some(1), 0..=u64::from(MAX_GOOD - 2 * pairs))? as u32,
        avoid,
        replay: keys.get("replay"),
        heartbeat_ms: keys.get_in("heartbeat_ms", Some(10_000), 1..=600_000)?,
        pin: keys.get_in("pin", Some(0), 0..=1)? == 1,
        heap_check: keys.get_in("heap", Some(1), 0..=1)? == 1,
    })
}

fn cycle_options<'a>(words: impl Iterator<Item = &'a str>) -> Result<CycleOptions, OptionError> {
    let mut keys =
        Keys::new(["cycles", "life_ms", "seed", "mem_kib", "pairs", "periodic", "heartbeat_ms", "pin", "heap"]);
    let avoid = parse(words, &mut keys)?;
    let pairs = keys.get_in("pairs", Some(1), 0..=u64::from(MAX_GOOD / 2))? as u32;
    Ok(CycleOptions {
        cycles: keys.get_in("cycles", Some(1000), 1..=1_000_000)?,
        life_ms: keys.get_in("life_ms", Some(100), 10..=600_000)?,
        seed: keys.get_in("seed", Some(1), 0..=u64::MAX)?,
        mem_kib: mem_kib(&keys)?,
        pairs,
        periodic: keys.get_in("periodic", Some(1), 0..=u64::from(MAX_GOOD - 2 * pairs))? as u32,
        avoid,
        heartbeat_ms: keys.get_in("heartbeat_ms", Some(10_000), 1..=600_000)?,
        pin: keys.get_in("pin", Some(0), 0..=1)? == 1,
        heap_check: keys.get_in("heap", Some(1), 0..=1)? == 1,
    })
}

/// `mem_kib` of the fuzzer and hostile domains: a multiple of 4 KiB, 1-64 MiB.
fn mem_kib<const N: usize>(keys: &Keys<N>) -> Result<u32, OptionError> {
    let kib = keys.get_in("mem_kib", Some(2048), 1024..=65536)?;
    if !kib.is_multiple_of(4) {
        return Err(OptionError::BadValue("mem_kib"));
    }
    Ok(kib as u32)
}

/// The seed of fuzzer domain `index` of a run seeded `seed`: distinct per index, and the
/// same for the same pair, so that `make fuzz SEED=` replays a whole run.
pub fn fuzzer_seed(seed: u64, index: u64) -> u64 {
    let mut rng = Rng::new(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
    rng.next_u64() >> 1
}

/// The domain of cycle `index`.
pub fn cycle_domain(index: u64) -> CycleDomain {
    CYCLE_ATTACKS[(index % CYCLE_ATTACKS.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_plan_is_the_stress_plan() {
        assert_eq!(plan(b"n=10 seconds=2"), Ok(Plan::Stress));
        assert_eq!(plan(b""), Ok(Plan::Stress));
        assert_eq!(plan(b"plan=dance"), Err(OptionError::BadValue("plan")));
    }

    #[test]
    fn fuzz_options_parse_with_defaults() {
        let Ok(Plan::Fuzz(options)) = plan(b"plan=fuzz seconds=15 seed=7 avoid=lock,long") else {
            panic!("not a fuzz plan")
        };
        assert_eq!((options.seconds, options.seed, options.fuzzers), (15, 7, 1));
        assert_eq!(options.avoid.as_str(), "avoid=lock,long");
        let Ok(Plan::Fuzz(only)) = plan(b"plan=fuzz only=mmu,iret avoid=tlb") else { panic!() };
        assert_eq!(only.avoid.as_str(), "avoid=tlb only=mmu,iret");
        assert_eq!((options.pairs, options.periodic, options.mem_kib), (1, 1, 2048));
        assert_eq!(options.replay, None);
        let Ok(Plan::Fuzz(replay)) = plan(b"plan=fuzz replay=99 fuzzers=2") else { panic!() };
        assert_eq!((replay.replay, replay.fuzzers), (Some(99), 2));
    }

    #[test]
    fn cycle_options_parse_with_defaults() {
        let Ok(Plan::Cycles(options)) = plan(b"plan=cycles cycles=50 life_ms=20") else { panic!() };
        assert_eq!((options.cycles, options.life_ms), (50, 20));
        assert_eq!(options.avoid.as_str(), "");
    }

    #[test]
    fn mistakes_are_refused() {
        assert_eq!(plan(b"plan=fuzz avoid=nothing"), Err(OptionError::BadValue("avoid")));
        assert_eq!(plan(b"plan=fuzz fuzzers=99"), Err(OptionError::BadValue("fuzzers")));
        assert_eq!(plan(b"plan=fuzz mem_kib=1026"), Err(OptionError::BadValue("mem_kib")));
        assert_eq!(plan(b"plan=cycles avoid=lock avoid=long"), Err(OptionError::Repeated("avoid")));
        assert_eq!(plan(b"plan=fuzz only=nothing"), Err(OptionError::BadValue("only")));
        assert!(matches!(plan(b"plan=cycles n=3"), Err(OptionError::UnknownKey(_))));
        assert_eq!(plan(b"plan=fuzz pairs=2 periodic=13"), Err(OptionError::BadValue("periodic")));
    }

    #[test]
    fn fuzzer_seeds_differ_and_replay() {
        let seeds: std::vec::Vec<u64> = (0..1000).map(|i| fuzzer_seed(1, i)).collect();
        let mut sorted = seeds.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
        assert_eq!(fuzzer_seed(1, 5), seeds[5]);
        assert_ne!(fuzzer_seed(2, 5), seeds[5]);
    }

    #[test]
    fn cycles_take_every_domain_in_turn() {
        let kinds: std::vec::Vec<CycleDomain> = (0..CYCLE_ATTACKS.len() as u64).map(cycle_domain).collect();
        assert_eq!(kinds, CYCLE_ATTACKS);
        assert_eq!(cycle_domain(CYCLE_ATTACKS.len() as u64), CYCLE_ATTACKS[0]);
    }
}
