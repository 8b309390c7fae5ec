//! Property tests of the hypervisor's pure decoders, on what guests and boot loaders send:
//! hypercall registers, GDT descriptors, the hypervisor's and the boot modules' command
//! lines.
//!
//! Properties: a hypercall decodes exactly when its number is one this hypervisor
//! implements (the list is restated here from Xen's `xen.h`), its sub-op one the ABI
//! defines and its count within its limit; a decoded request round-trips through its
//! register encoding, and the register bits the C ABI ignores (the upper halves of `int`
//! sub-ops and of 32-bit counts, the upper bits of a domid) never change it; no descriptor
//! that passes the GDT check is a present system segment or gate, a conforming or L+D code
//! segment, or below DPL 3, and the check changes nothing but the DPL and accessed bits;
//! the command-line parsers never panic on any text (any Unicode included), give back
//! every value they were given, and account for every word. Test-only. More cases:
//! `PROPTEST_CASES=10000 cargo test -p hypervisor --lib proptests`.

use std::string::String;
use std::vec::Vec;

use abi::grant_table::GnttabOp;
use abi::hypercall::{CallbackOp, ConsoleIoOp, SchedOp, VcpuOp, XenVersionOp, MEMOP_CMD_MASK, MEMOP_EXTENT_SHIFT};
use proptest::prelude::*;
use proptest::sample::select;

use crate::cmdline::Options;
use crate::descriptor::{check, DescriptorError};
use crate::domspec::{DomainSpec, Expect, DEFAULT_MEM_KIB, MAX_COUNT};
use crate::hypercall::{decode, DecodeError, GuestVa, Request, MAX_BATCH, MAX_CONSOLE_WRITE, MAX_GDT_ENTRIES, MMU_UPDATE_PREEMPTED};

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` in the environment wins over the default given here.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

// ---- Hypercalls. ----

/// The hypercalls this hypervisor implements, by Xen's numbers (xen.h): set_trap_table 0,
/// mmu_update 1, set_gdt 2, stack_switch 3, set_callbacks 4, fpu_taskswitch 5,
/// set_debugreg 8, get_debugreg 9, update_descriptor 10, memory_op 12, multicall 13,
/// update_va_mapping 14, set_timer_op 15, xen_version 17, console_io 18, physdev_op_compat 19,
/// grant_table_op 20, vm_assist 21, iret 23, vcpu_op 24, set_segment_base 25, mmuext_op 26,
/// sched_op 29, callback_op 30, event_channel_op 32, physdev_op 33, domctl 36.
const IMPLEMENTED: [u64; 27] = [0, 1, 2, 3, 4, 5, 8, 9, 10, 12, 13, 14, 15, 17, 18, 19, 20, 21, 23, 24, 25, 26, 29, 30, 32, 33, 36];

/// The registers a guest loads for `request` (rax, then rdi, rsi, rdx, r10, r8), with
/// every bit the decoder ignores left 0.
fn encode(request: &Request) -> (u64, [u64; 5]) {
    let mut a = [0u64; 5];
    let number = match *request {
        Request::SetTrapTable { table } => {
            a[0] = table.0;
            0
        }
        Request::MmuUpdate { requests, count, done, domid, preempted } => {
            a = [requests.0, count | u64::from(preempted) << 31, done.0, domid.into(), 0];
            1
        }
        Request::SetGdt { frames, entries } => {
            a[..2].copy_from_slice(&[frames.0, entries]);
            2
        }
        Request::StackSwitch { ss, sp } => {
            a[..2].copy_from_slice(&[ss, sp]);
            3
        }
        Request::SetCallbacks { event, failsafe, syscall } => {
            a[..3].copy_from_slice(&[event, failsafe, syscall]);
            4
        }
        Request::FpuTaskswitch { set } => {
            a[0] = set.into();
            5
        }
        Request::SetDebugreg { reg, value } => {
            a[..2].copy_from_slice(&[reg.into(), value]);
            8
        }
        Request::GetDebugreg { reg } => {
            a[0] = reg.into();
            9
        }
        Request::UpdateDescriptor { maddr, descriptor } => {
            a[..2].copy_from_slice(&[maddr, descriptor]);
            10
        }
        Request::MemoryOp { cmd, start_extent, arg } => {
            a[..2].copy_from_slice(&[start_extent << MEMOP_EXTENT_SHIFT | u64::from(cmd), arg.0]);
            12
        }
        Request::Multicall { calls, count } => {
            a[..2].copy_from_slice(&[calls.0, count]);
            13
        }
        Request::UpdateVaMapping { va, pte, flags } => {
            a[..3].copy_from_slice(&[va, pte, flags]);
            14
        }
        Request::SetTimerOp { deadline_ns } => {
            a[0] = deadline_ns;
            15
        }
        Request::XenVersion { cmd, arg } => {
            a[..2].copy_from_slice(&[cmd.raw().into(), arg.0]);
            17
        }
        Request::ConsoleWrite { buffer, count } => {
            a[..3].copy_from_slice(&[ConsoleIoOp::Write.raw().into(), count, buffer.0]);
            18
        }
        Request::ConsoleRead { buffer, count } => {
            a[..3].copy_from_slice(&[ConsoleIoOp::Read.raw().into(), count, buffer.0]);
            18
        }
        Request::VmAssist { cmd, kind } => {
            a[..2].copy_from_slice(&[cmd.into(), kind.into()]);
            21
        }
        Request::Iret => 23,
        Request::VcpuOp { cmd, vcpu, arg } => {
            a[..3].copy_from_slice(&[cmd.raw().into(), vcpu.into(), arg.0]);
            24
        }
        Request::SetSegmentBase { which, base } => {
            a[..2].copy_from_slice(&[which.into(), base]);
            25
        }
        Request::MmuextOp { ops, count, done, domid, preempted } => {
            a = [ops.0, count | u64::from(preempted) << 31, done.0, domid.into(), 0];
            26
        }
        Request::SchedOp { cmd, arg } => {
            a[..2].copy_from_slice(&[cmd.raw().into(), arg.0]);
            29
        }
        Request::CallbackOp { cmd, arg } => {
            a[..2].copy_from_slice(&[cmd.raw().into(), arg.0]);
            30
        }
        Request::EventChannelOp { cmd, arg } => {
            a[..2].copy_from_slice(&[cmd.into(), arg.0]);
            32
        }
        Request::PhysdevOp { cmd, arg } => {
            a[..2].copy_from_slice(&[cmd.into(), arg.0]);
            33
        }
        Request::PhysdevOpCompat { arg } => {
            a[0] = arg.0;
            19
        }
        Request::Domctl { arg } => {
            a[0] = arg.0;
            36
        }
        Request::GrantTableOp { op, opaque, uop, count } => {
            a[..3].copy_from_slice(&[u64::from(op.raw() | opaque << 12), uop.0, count]);
            20
        }
    };
    (number, a)
}

/// For each implemented call: which argument registers hold a 32-bit count (and its
/// limit), which a C `int` sub-op, which a 16-bit domid. Every other bit is used whole.
struct Narrow {
    count: Option<(usize, u64)>,
    int32: &'static [usize],
    u16_at: Option<usize>,
}

fn narrow(number: u64, a: &[u64; 5]) -> Narrow {
    let none = Narrow { count: None, int32: &[], u16_at: None };
    match number {
        1 | 26 => Narrow { count: Some((1, MAX_BATCH)), int32: &[], u16_at: Some(3) },
        2 => Narrow { count: Some((1, MAX_GDT_ENTRIES)), ..none },
        13 => Narrow { count: Some((1, MAX_BATCH)), ..none },
        5 | 8 | 9 | 17 | 29 | 30 | 32 | 33 => Narrow { int32: &[0], ..none },
        // grant_table_op: an unsigned int command and count (the count's sign bit refused).
        20 => Narrow { count: Some((2, u64::from(i32::MAX as u32))), int32: &[0], u16_at: None },
        // console_io: a write's count is bounded; a read's is only 32-bit.
        18 if a[0] as u32 == ConsoleIoOp::Write.raw() => Narrow { count: Some((1, MAX_CONSOLE_WRITE)), int32: &[0], u16_at: None },
        18 => Narrow { count: Some((1, u64::from(u32::MAX))), int32: &[0], u16_at: None },
        21 => Narrow { int32: &[0, 1], ..none },
        24 => Narrow { int32: &[0, 1], ..none },
        25 => Narrow { int32: &[0], ..none },
        _ => none,
    }
}

/// A register value: small, an edge, or anything.
fn register() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..64,
        2 => select(vec![
            MAX_BATCH, MAX_BATCH + 1, MAX_GDT_ENTRIES, MAX_GDT_ENTRIES + 1, MAX_CONSOLE_WRITE,
            MAX_CONSOLE_WRITE + 1, u64::from(u32::MAX), 1 << 32, (1 << 32) | 4, u64::MAX,
            0xFFFF_8000_0000_0000, 0x7FFF_FFFF_FFFF,
        ]),
        3 => any::<u64>(),
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 0u64..48, 1 => any::<u64>(), 1 => (0u64..48).prop_map(|n| n | 1 << 32)]
}

// ---- Descriptors (Intel SDM vol. 3, 3.4.5). ----

const PRESENT: u64 = 1 << 47;
const DPL: u64 = 3 << 45;
const S: u64 = 1 << 44;
const CODE: u64 = 1 << 43;
const CONFORMING: u64 = 1 << 42;
const ACCESSED: u64 = 1 << 40;
const L: u64 = 1 << 53;
const D: u64 = 1 << 54;

/// A descriptor: anything, or one built from its fields (so present code and data
/// segments and system types all come up often).
fn descriptor() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (any::<u64>(), any::<bool>(), 0u64..4, any::<bool>(), 0u64..16, any::<bool>(), any::<bool>()).prop_map(
            |(base, present, dpl, s, kind, l, d)| {
                let mut raw = base & !(PRESENT | DPL | S | (0xF << 40) | L | D);
                raw |= (u64::from(present) * PRESENT) | (dpl << 45) | (u64::from(s) * S) | (kind << 40);
                raw | (u64::from(l) * L) | (u64::from(d) * D)
            }
        ),
    ]
}

// ---- Command lines. ----

/// A word of any characters but ASCII whitespace (which separates words).
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,12}(=[a-z0-9]{0,6})?",
        "\\PC{1,40}".prop_map(|w: String| w.chars().filter(|c| !c.is_ascii_whitespace()).collect::<String>()),
        select(vec!["--".into(), "-".into(), "=".into(), "==".into(), "a=b=c".into(), "é=ü".into(), "x".repeat(40)]),
    ]
    .prop_filter("a word", |w: &String| !w.is_empty())
}

/// A line of any text, or of random words.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,200}",
        ".{0,200}",
        proptest::collection::vec((word(), select(vec![" ", "  ", "\t", " -- ", "--", "\n"])), 0..16)
            .prop_map(|words| words.into_iter().map(|(w, sep)| w + sep).collect()),
    ]
}

/// `s` clipped to `max` bytes on a character boundary, as the parsers clip.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any number and registers: `ENOSYS` for calls not implemented and sub-ops not
    /// defined, `EINVAL` for counts over their limit, and otherwise a request for the call
    /// that was named.
    #[test]
    fn hypercalls_decode_only_what_is_implemented_and_bounded(n in number(), a in [register(), register(), register(), register(), register()]) {
        let result = decode(n, a);
        if !IMPLEMENTED.contains(&n) {
            prop_assert_eq!(result, Err(DecodeError::Unknown(n)));
            return Ok(());
        }
        let narrow = narrow(n, &a);
        let sub_op_defined = match n {
            17 => XenVersionOp::from_raw(a[0] as u32).is_some(),
            18 => ConsoleIoOp::from_raw(a[0] as u32).is_some(),
            24 => VcpuOp::from_raw(a[0] as u32).is_some(),
            29 => SchedOp::from_raw(a[0] as u32).is_some(),
            30 => CallbackOp::from_raw(a[0] as u32).is_some(),
            _ => true,
        };
        if n == 20 {
            // grant_table_op checks, in Xen's order: the count's sign, continuation bits on
            // a command other than cache_flush (both EINVAL), then the command (ENOSYS).
            let (cmd, opaque) = (a[0] as u32 & 0xfff, a[0] as u32 >> 12);
            let errno = result.map(drop).map_err(|e| e.errno()).err();
            let want = if a[2] as u32 > i32::MAX as u32 || (opaque != 0 && cmd != 12) {
                Some(abi::errno::Errno::Einval)
            } else if GnttabOp::from_raw(cmd).is_none() {
                Some(abi::errno::Errno::Enosys)
            } else {
                None
            };
            prop_assert_eq!(errno, want);
            return Ok(());
        }
        if !sub_op_defined {
            prop_assert!(matches!(result, Err(DecodeError::UnknownOp { op, .. }) if op == a[0]), "{:?}", result);
            prop_assert_eq!(result.unwrap_err().errno(), abi::errno::Errno::Enosys);
            return Ok(());
        }
        if let Some((at, max)) = narrow.count {
            // mmu_update's and mmuext_op's bit 31 says "a continuation", not a count.
            let continuation_bit = if matches!(n, 1 | 26) { MMU_UPDATE_PREEMPTED } else { 0 };
            let count = a[at] & 0xFFFF_FFFF & !continuation_bit;
            if count > max {
                prop_assert!(matches!(result, Err(DecodeError::TooMany { count: c, .. }) if c == count), "{:?}", result);
                prop_assert_eq!(result.unwrap_err().errno(), abi::errno::Errno::Einval);
                return Ok(());
            }
        }
        prop_assert!(result.is_ok(), "{:?}", result);
        let request = result.unwrap();
        prop_assert_eq!(encode(&request).0, n, "decoded as another call: {:?}", request);
        if let Request::MemoryOp { cmd, start_extent, .. } = request {
            prop_assert_eq!(u64::from(cmd), a[0] & MEMOP_CMD_MASK);
            prop_assert_eq!(start_extent, a[0] >> MEMOP_EXTENT_SHIFT);
        }
    }

    /// A decoded request comes back from its own encoding, and the register bits the ABI
    /// ignores do not change it.
    #[test]
    fn decoded_requests_round_trip_and_ignore_what_the_abi_ignores(
        n in select(IMPLEMENTED.to_vec()),
        a in [register(), register(), register(), register(), register()],
        noise in [any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()],
    ) {
        let Ok(request) = decode(n, a) else { return Ok(()) };
        let (number, registers) = encode(&request);
        prop_assert_eq!(number, n);
        prop_assert_eq!(decode(number, registers), Ok(request));
        // Flip only ignored bits: the upper halves of `int` sub-ops and 32-bit counts, the
        // bits above a domid.
        let narrow = narrow(n, &a);
        let mut noisy = a;
        for &at in narrow.int32 {
            noisy[at] = (noisy[at] & 0xFFFF_FFFF) | (noise[at] << 32);
        }
        if let Some((at, _)) = narrow.count {
            noisy[at] = (noisy[at] & 0xFFFF_FFFF) | (noise[at] << 32);
        }
        if let Some(at) = narrow.u16_at {
            noisy[at] = (noisy[at] & 0xFFFF) | (noise[at] << 16);
        }
        prop_assert_eq!(decode(n, noisy), Ok(request));
    }

    /// Guest arrays: an element's address is `base + index * size`, or `None` when that
    /// does not fit in 64 bits, never a wrapped address.
    #[test]
    fn guest_array_offsets_never_wrap(base in any::<u64>(), index in any::<u64>()) {
        let exact = u128::from(base) + u128::from(index) * 16;
        let offset = GuestVa(base).offset::<[u8; 16]>(index);
        match u64::try_from(exact) {
            Ok(address) => prop_assert_eq!(offset, Some(GuestVa(address))),
            Err(_) => prop_assert_eq!(offset, None),
        }
    }

    /// No descriptor that passes can give ring 0, a call gate or a system segment.
    #[test]
    fn passed_descriptors_are_never_ring0_gates_or_system_segments(raw in descriptor()) {
        let result = check(raw);
        let present = raw & PRESENT != 0;
        let code = raw & (S | CODE) == S | CODE;
        let expected_error = if !present {
            None
        } else if raw & S == 0 {
            Some(DescriptorError::System)
        } else if code && raw & CONFORMING != 0 {
            Some(DescriptorError::Conforming)
        } else if code && raw & (L | D) == L | D {
            Some(DescriptorError::LongAndDefault32)
        } else {
            None
        };
        prop_assert_eq!(result.err(), expected_error);
        let Ok(stored) = result else { return Ok(()) };
        if stored & PRESENT != 0 {
            prop_assert!(stored & S != 0, "a present system descriptor or gate: {:#x}", stored);
            prop_assert_eq!(stored & DPL, DPL, "DPL below 3: {:#x}", stored);
            prop_assert_eq!(stored & ACCESSED, ACCESSED, "the CPU would write the descriptor");
            if stored & CODE != 0 {
                prop_assert_eq!(stored & CONFORMING, 0);
                prop_assert_ne!(stored & (L | D), L | D);
            }
        } else {
            prop_assert_eq!(stored, raw, "a non-present descriptor is stored as given");
        }
        prop_assert_eq!(stored & !(DPL | ACCESSED), raw & !(DPL | ACCESSED), "bits other than DPL and accessed changed");
        prop_assert_eq!(check(stored), Ok(stored), "the check is not idempotent");
    }

    /// The hypervisor's command line: any text parses, every word is applied, invalid or
    /// unknown (up to 8 of each kept, 32 bytes each).
    #[test]
    fn any_hypervisor_command_line_parses(line in line()) {
        let options = Options::parse(&line);
        for word in options.unknown.iter().chain(&options.invalid) {
            prop_assert!(word.len() <= 32);
            prop_assert!(line.split_ascii_whitespace().any(|w| clip(w, 32) == word.as_str()), "{:?} is not a word of the line", word);
        }
    }

    /// Options given with their values come back; bad values are reported, not applied.
    #[test]
    fn hypervisor_options_round_trip(
        maxcpus in proptest::option::of(0u32..300),
        heap_mib in proptest::option::of(0u32..40),
        timer_slop_us in proptest::option::of(0u32..1200),
        guests in proptest::option::of(0u32..5000),
        flags in [any::<bool>(), any::<bool>(), any::<bool>()],
        x2apic in proptest::option::of(any::<bool>()),
    ) {
        let mut words: Vec<String> = Vec::new();
        let mut invalid = 0;
        let mut number = |key: &str, value: Option<u32>, range: core::ops::RangeInclusive<u32>| {
            if let Some(v) = value {
                words.push(format!("{key}={v}"));
                invalid += usize::from(!range.contains(&v));
            }
        };
        number("maxcpus", maxcpus, 1..=u32::MAX);
        number("heap_mib", heap_mib, 2..=32);
        number("timer_slop_us", timer_slop_us, 0..=1000);
        number("guests", guests, 1..=4096);
        for (flag, on) in ["selftest", "verbose", "dom0"].iter().zip(flags) {
            if on {
                words.push((*flag).into());
            }
        }
        if let Some(on) = x2apic {
            words.push(format!("x2apic={}", if on { "on" } else { "off" }));
        }
        let options = Options::parse(&words.join(" "));
        let default = Options::default();
        let valid = |v: Option<u32>, range: core::ops::RangeInclusive<u32>| v.filter(|v| range.contains(v));
        prop_assert_eq!(options.max_cpus, valid(maxcpus, 1..=u32::MAX));
        prop_assert_eq!(options.heap_mib, valid(heap_mib, 2..=32).unwrap_or(default.heap_mib));
        prop_assert_eq!(options.timer_slop_us, valid(timer_slop_us, 0..=1000).unwrap_or(default.timer_slop_us));
        prop_assert_eq!(options.guests, valid(guests, 1..=4096).unwrap_or(default.guests));
        prop_assert_eq!([options.selftest, options.verbose, options.dom0], flags);
        prop_assert_eq!(options.x2apic, x2apic.unwrap_or(true));
        prop_assert_eq!(options.invalid.len(), invalid);
        prop_assert!(options.unknown.is_empty());
    }

    /// A boot module's line: any text parses; the guest's part is at most 1023 bytes and
    /// made of the line's own text.
    #[test]
    fn any_module_line_parses(line in line(), count in 0u32..10) {
        let spec = DomainSpec::parse(&line, "module", count);
        prop_assert!(spec.guest_cmdline.len() <= 1023);
        prop_assert!(spec.count == count || (1..=MAX_COUNT).contains(&spec.count));
        prop_assert!(spec.mem_kib == DEFAULT_MEM_KIB || (spec.mem_kib >= 4 && spec.mem_kib.is_multiple_of(4)));
        // The guest's line is made of the line's own text.
        for word in spec.guest_cmdline.split_ascii_whitespace() {
            prop_assert!(line.contains(word), "{:?} is not in the line", word);
        }
    }

    /// `name= count= mem_kib= expect= -- guest line` comes back as given, the guest's line
    /// verbatim (trimmed, clipped to 1023 bytes), whatever it holds.
    #[test]
    fn module_lines_round_trip(
        name in "[A-Za-z0-9_.-]{1,40}",
        count in proptest::option::of(0u32..5000),
        mem_kib in proptest::option::of(prop_oneof![0u64..5000, any::<u64>()]),
        expect in proptest::option::of(select(vec!["poweroff", "reboot", "crash", "killed", "maybe"])),
        guest in line(),
    ) {
        let mut line = format!("name={name}");
        if let Some(count) = count {
            line += &format!(" count={count}");
        }
        if let Some(mem_kib) = mem_kib {
            line += &format!(" mem_kib={mem_kib}");
        }
        if let Some(expect) = expect {
            line += &format!(" expect={expect}");
        }
        line += " -- ";
        line += &guest;
        let spec = DomainSpec::parse(&line, "default", 7);
        prop_assert_eq!(spec.name.as_str(), clip(&name, 32));
        let count_ok = count.filter(|c| (1..=MAX_COUNT).contains(c));
        prop_assert_eq!(spec.count, count_ok.unwrap_or(7));
        let mem_ok = mem_kib.filter(|&k| k >= 4 && k.is_multiple_of(4));
        prop_assert_eq!(spec.mem_kib, mem_ok.unwrap_or(DEFAULT_MEM_KIB));
        let expected = match expect {
            Some("reboot") => Expect::Reboot,
            Some("crash") => Expect::Crash,
            Some("killed") => Expect::Killed,
            _ => Expect::Poweroff,
        };
        prop_assert_eq!(spec.expect, expected);
        let invalid = usize::from(count.is_some() && count_ok.is_none())
            + usize::from(mem_kib.is_some() && mem_ok.is_none())
            + usize::from(expect == Some("maybe"));
        prop_assert_eq!(spec.invalid.len(), invalid);
        prop_assert_eq!(spec.guest_cmdline.as_str(), clip(guest.trim(), 1023));
    }

    /// What follows `--` on the hypervisor's line is a module line, read exactly as a
    /// module's own (ASCII whitespace around it dropped, clipped to 1023 bytes); the words
    /// before it are the hypervisor's alone.
    #[test]
    fn the_line_after_the_separator_is_a_module_line(
        before in proptest::collection::vec(word().prop_filter("not the separator", |w| w != "--"), 0..6),
        module in line(),
    ) {
        let hypervisor = before.join(" ");
        let options = Options::parse(&format!("{hypervisor} -- {module}"));
        let trimmed = module.trim_matches(|c: char| c.is_ascii_whitespace());
        prop_assert_eq!(options.module_line.as_str(), clip(trimmed, 1023));
        prop_assert_eq!(&Options { module_line: Default::default(), ..options.clone() }, &Options::parse(&hypervisor));
        if trimmed.len() <= 1023 {
            prop_assert_eq!(DomainSpec::parse(&options.module_line, "m", 1), DomainSpec::parse(&module, "m", 1));
        }
    }

    /// `mem=` is MiB: a valid value gives `mem_kib = mem * 1024`, anything else is reported.
    #[test]
    fn module_memory_in_mib(mem in prop_oneof![0u64..5000, any::<u64>()]) {
        let spec = DomainSpec::parse(&format!("mem={mem} --"), "m", 1);
        let ok = (1..=crate::domspec::MAX_MEM_MIB).contains(&mem);
        prop_assert_eq!(spec.mem_kib, if ok { mem * 1024 } else { DEFAULT_MEM_KIB });
        prop_assert_eq!(spec.invalid.len(), usize::from(!ok));
    }
}
