//! Property tests of the guest ABI's decoders and encoders, on any value a guest or a
//! kernel image can put in a register, a note or a shared structure.
//!
//! Properties: every ABI number decodes to the variant carrying it or to nothing, and no
//! two variants share a number; an errno and the hypercall return value round-trip; ELF
//! note descs and `FEATURES` strings decode as libelf reads them (a parsed feature set
//! comes back from its own string, an unknown required name is located exactly); the
//! pvclock scale converts a second of ticks into 10^9 ns within a millionth, never
//! decreases and never panics; the unions and packed fields of `evtchn_status`,
//! `mmu_update`, `mmuext_op` and `start_info` give back what was stored. Test-only. More
//! cases: `PROPTEST_CASES=10000 cargo test -p xen-abi proptests`.

use std::format;
use std::string::String;
use std::vec::Vec;

use proptest::prelude::*;
use proptest::sample::select;

use crate::arch_x86::{cr3_to_pfn, pfn_to_cr3};
use crate::control::{ControlArgs, ControlCmd, CreateDomain, DomainInfo, MaxMem, PhysInfo, SchedParams};
use crate::elfnote::{numeric_desc, string_desc, ElfNote};
use crate::errno::Errno;
use crate::event_channel::{EvtchnState, EvtchnStatus};
use crate::features::{FeatureParseError, FeatureSet, GuestFeatures, XenFeature};
use crate::hypercall::{
    CallbackOp, CallbackType, ConsoleIoOp, EvtchnOp, Hypercall, MemoryOp, MmuUpdateCmd, MmuextCmd,
    SchedOp, SegmentBase, ShutdownReason, VcpuOp, Virq, VmAssistCmd, VmAssistType, XenVersionOp,
};
use crate::ids::{DomId, EvtchnPort, Mfn, VcpuId};
use crate::mmu::{MmuUpdate, MmuextOp};
use crate::shared_info::{TimeScale, VcpuTimeInfo};
use crate::start_info::{CmdLineError, StartInfo, MAX_GUEST_CMDLINE};
use crate::vcpu::Runstate;
use crate::version::encode_version;

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` in the environment wins over the default given here.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// `from_raw(raw)` is the variant whose number is `raw`, or `None` when there is none;
/// the numbers of `ALL` are distinct.
macro_rules! decodes_exactly {
    ($ty:ty, $raw:expr) => {{
        let raw = $raw;
        let owner = <$ty>::ALL.iter().copied().find(|v| v.raw() == raw);
        prop_assert_eq!(<$ty>::from_raw(raw), owner, "{} {:?}", stringify!($ty), raw);
        let mut numbers: Vec<_> = <$ty>::ALL.iter().map(|v| v.raw()).collect();
        numbers.sort_unstable();
        numbers.dedup();
        prop_assert_eq!(
            numbers.len(),
            <$ty>::ALL.len(),
            "{} has two variants with one number",
            stringify!($ty)
        );
    }};
}

/// A raw number: small (where the variants are), or anything.
fn raw32() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 0u32..64, 1 => any::<u32>()]
}

/// A `FEATURES` item: a known feature, optional or required; an unknown optional name; an
/// empty item.
#[derive(Clone, Debug)]
enum Item {
    Known(XenFeature, bool),
    Unknown(String),
    Empty,
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (select(XenFeature::ALL.to_vec()), any::<bool>()).prop_map(|(f, required)| Item::Known(f, required)),
        1 => "[a-z_!]{1,12}".prop_filter("not a known name", |n| XenFeature::from_name(n.trim_start_matches('!').as_bytes()).is_none()).prop_map(|n| Item::Unknown(n.trim_start_matches('!').into())),
        1 => Just(Item::Empty),
    ]
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn abi_numbers_decode_exactly(raw in raw32(), wide in any::<u64>(), small in any::<u16>(), signed in any::<i32>()) {
        decodes_exactly!(Hypercall, raw);
        decodes_exactly!(SchedOp, raw);
        decodes_exactly!(ShutdownReason, raw);
        decodes_exactly!(EvtchnOp, raw);
        decodes_exactly!(Virq, raw);
        decodes_exactly!(ConsoleIoOp, raw);
        decodes_exactly!(MemoryOp, raw);
        decodes_exactly!(CallbackOp, raw);
        decodes_exactly!(MmuextCmd, raw);
        decodes_exactly!(VcpuOp, raw);
        decodes_exactly!(XenVersionOp, raw);
        decodes_exactly!(VmAssistCmd, raw);
        decodes_exactly!(VmAssistType, raw);
        decodes_exactly!(SegmentBase, raw);
        decodes_exactly!(ElfNote, raw);
        decodes_exactly!(EvtchnState, raw);
        decodes_exactly!(ControlCmd, raw);
        decodes_exactly!(XenFeature, raw as u8);
        decodes_exactly!(CallbackType, small);
        decodes_exactly!(MmuUpdateCmd, wide & 0xF);
        decodes_exactly!(MmuUpdateCmd, wide);
        decodes_exactly!(Errno, signed % 200);
        decodes_exactly!(Errno, signed);
        decodes_exactly!(Runstate, signed % 8);
        // A hypercall number is a 32-bit value in a 64-bit register.
        let expected = u32::try_from(wide).ok().and_then(Hypercall::from_raw);
        prop_assert_eq!(Hypercall::from_number(wide), expected);
        prop_assert_eq!(Hypercall::from_number(u64::from(raw)), Hypercall::from_raw(raw));
        if let Some(call) = Hypercall::from_raw(raw) {
            prop_assert_eq!(call.number(), u64::from(raw));
        }
    }

    /// rax after a failed hypercall is `-errno`; any other value is not an errno.
    #[test]
    fn errnos_round_trip_through_return_values(ret in prop_oneof![-200i64..200, any::<i64>()]) {
        for &errno in Errno::ALL {
            prop_assert_eq!(Errno::from_return(errno.as_return()), Some(errno));
            prop_assert!(errno.as_return() < 0);
        }
        match Errno::from_return(ret) {
            Some(errno) => prop_assert_eq!(errno.as_return(), ret),
            None => prop_assert!(Errno::ALL.iter().all(|e| e.as_return() != ret)),
        }
    }

    /// A numeric note is a little-endian integer of 1, 2, 4 or 8 bytes; a string note
    /// ends at its first NUL.
    #[test]
    fn note_descs_decode_as_libelf_reads_them(desc in proptest::collection::vec(any::<u8>(), 0..20)) {
        let expected = matches!(desc.len(), 1 | 2 | 4 | 8)
            .then(|| desc.iter().rev().fold(0u64, |value, &byte| value << 8 | u64::from(byte)));
        prop_assert_eq!(numeric_desc(&desc), expected);
        let text = string_desc(&desc);
        prop_assert!(desc.starts_with(text) && !text.contains(&0));
        prop_assert!(text.len() == desc.len() || desc[text.len()] == 0);
    }

    /// Any bytes parse or are refused without panicking; what parses never requires a
    /// feature it does not support.
    #[test]
    fn any_features_note_parses_consistently(note in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "[a-z_|!]{0,60}".prop_map(String::into_bytes),
    ]) {
        match GuestFeatures::parse(&note) {
            Ok(features) => {
                prop_assert_eq!(features.required.difference(features.supported), FeatureSet::EMPTY);
                prop_assert_eq!(features.unmet(features.supported), FeatureSet::EMPTY);
            }
            Err(FeatureParseError::UnknownRequired { offset, len }) => {
                let text = note.split(|&b| b == 0).next().unwrap_or_default();
                let item = &text[offset..offset + len];
                prop_assert_eq!(item.first(), Some(&b'!'));
                prop_assert!(XenFeature::from_name(&item[1..]).is_none());
                prop_assert!(!item.contains(&b'|'));
                prop_assert!(offset == 0 || text[offset - 1] == b'|');
            }
        }
    }

    /// A `FEATURES` string made of known features (optional or required), unknown
    /// optional names and empty items parses to exactly those features; a required
    /// unknown name is refused where it stands.
    #[test]
    fn features_strings_round_trip(items in proptest::collection::vec(item(), 0..12), bad_at in any::<proptest::sample::Index>(), bad in "[a-z]{1,8}") {
        let render = |item: &Item| match item {
            Item::Known(feature, required) => format!("{}{}", if *required { "!" } else { "" }, feature.name()),
            Item::Unknown(name) => name.clone(),
            Item::Empty => String::new(),
        };
        let text = items.iter().map(render).collect::<Vec<_>>().join("|");
        let mut note = text.clone().into_bytes();
        note.push(0);
        note.extend(b"!ignored_after_nul");
        let parsed = GuestFeatures::parse(&note);
        prop_assert!(parsed.is_ok(), "{:?}: {:?}", text, parsed);
        let parsed = parsed.unwrap();
        let mut supported = FeatureSet::EMPTY;
        let mut required = FeatureSet::EMPTY;
        for item in &items {
            if let Item::Known(feature, is_required) = *item {
                supported = supported.with(feature);
                if is_required {
                    required = required.with(feature);
                }
            }
        }
        prop_assert_eq!(parsed.supported, supported);
        prop_assert_eq!(parsed.required, required);

        // The same with an unknown required name spliced in.
        prop_assume!(XenFeature::from_name(bad.as_bytes()).is_none());
        let mut rendered: Vec<String> = items.iter().map(render).collect();
        let at = bad_at.index(rendered.len() + 1);
        rendered.insert(at, format!("!{bad}"));
        let offset = rendered[..at].iter().map(|s| s.len() + 1).sum::<usize>();
        let text = rendered.join("|");
        prop_assert_eq!(
            GuestFeatures::parse(text.as_bytes()),
            Err(FeatureParseError::UnknownRequired { offset, len: bad.len() + 1 })
        );
    }

    /// The pvclock scale for any TSC frequency: one second of ticks is 10^9 ns within a
    /// millionth, the factor keeps 31-32 significant bits, and conversion never decreases.
    #[test]
    fn time_scales_convert_a_second_to_a_second(hz in prop_oneof![1u64..10_000, 1_000_000u64..10_000_000_000, any::<u64>()], ticks in any::<u64>()) {
        let scale = TimeScale::from_tsc_hz(hz).unwrap();
        prop_assert!(scale.mul >= 1 << 31, "{:?}", scale);
        let second = scale.apply(hz) as f64;
        prop_assert!((second - 1e9).abs() <= 1e3, "{} Hz: a second is {} ns ({:?})", hz, second, scale);
        // Monotonic wherever the shifted count keeps all its bits.
        let limit = if scale.shift > 0 { u64::MAX >> scale.shift } else { u64::MAX };
        let t = ticks.min(limit - 1);
        prop_assert!(scale.apply(t) <= scale.apply(t + 1));
        prop_assert_eq!(TimeScale::from_tsc_hz(0), None);
    }

    /// Any record a guest could read (or corrupt) converts without panicking; a TSC before
    /// the timestamp counts as no time.
    #[test]
    fn any_time_record_converts(mul in any::<u32>(), shift in any::<i8>(), stamp in any::<u64>(), system in any::<u64>(), tsc in any::<u64>()) {
        let record = VcpuTimeInfo { tsc_timestamp: stamp, system_time: system, tsc_to_system_mul: mul, tsc_shift: shift, ..Default::default() };
        let now = record.system_time_at(tsc);
        if tsc <= stamp {
            prop_assert_eq!(now, system);
        }
        let _ = TimeScale { mul, shift }.apply(tsc);
    }

    /// Unions and packed fields give back what was stored.
    #[test]
    fn packed_fields_round_trip(
        state in select(EvtchnState::ALL.to_vec()),
        vcpu in any::<u32>(),
        dom in any::<u16>(),
        port in any::<u32>(),
        target in any::<u64>(),
        val in any::<u64>(),
        command in select(MmuUpdateCmd::ALL.to_vec()),
        ext in select(MmuextCmd::ALL.to_vec()),
        pfn in 0u64..1 << 52,
        version in (any::<u16>(), any::<u16>()),
        console in (any::<u32>(), any::<u32>()),
    ) {
        let mut status = EvtchnStatus::default();
        status.set_state(state, VcpuId(vcpu));
        prop_assert_eq!((status.state(), status.vcpu, status.detail), (Some(state), VcpuId(vcpu), [0, 0]));
        status.set_remote(DomId(dom), EvtchnPort(port));
        prop_assert_eq!((status.remote_dom(), status.remote_port()), (DomId(dom), EvtchnPort(port)));
        status.set_irq(port);
        prop_assert_eq!((status.irq(), status.detail[1]), (port, 0));

        let update = MmuUpdate::new(command, target, val);
        prop_assert_eq!(update.command(), Some(command));
        prop_assert_eq!(update.target(), target & !7);
        prop_assert_eq!(update.val, val);

        prop_assert_eq!(MmuextOp::with_mfn(ext, Mfn(target)).mfn(), Mfn(target));
        prop_assert_eq!(MmuextOp::with_mfn(ext, Mfn(target)).command(), Some(ext));
        prop_assert_eq!(MmuextOp::with_linear_addr(ext, target).linear_addr(), target);
        let ldt = MmuextOp::set_ldt(target, port);
        prop_assert_eq!((ldt.command(), ldt.linear_addr(), ldt.nr_ents()), (Some(MmuextCmd::SetLdt), target, port));

        prop_assert_eq!(cr3_to_pfn(pfn_to_cr3(pfn)), pfn);
        let encoded = encode_version(version.0, version.1);
        prop_assert_eq!(((encoded >> 16) as u16, encoded as u16), version);

        let mut info = StartInfo::new();
        prop_assert!(info.has_valid_magic());
        info.set_dom0_console_info(console.0, console.1);
        prop_assert_eq!(info.dom0_console_info(), console);
    }

    /// A command line is stored whole and NUL-terminated, or refused leaving the previous
    /// one in place.
    #[test]
    fn command_lines_are_stored_whole_or_refused(
        first in proptest::collection::vec(1u8..=255, 0..40),
        line in prop_oneof![
            proptest::collection::vec(1u8..=255, 0..1100),
            proptest::collection::vec(any::<u8>(), 0..40),
            Just(vec![b'x'; MAX_GUEST_CMDLINE - 1]),
            Just(vec![b'x'; MAX_GUEST_CMDLINE]),
        ],
    ) {
        let mut info = StartInfo::new();
        info.set_cmd_line(&first).unwrap();
        let result = info.set_cmd_line(&line);
        match line.iter().position(|&b| b == 0) {
            Some(at) => prop_assert_eq!(result, Err(CmdLineError::ContainsNul { at })),
            None if line.len() >= MAX_GUEST_CMDLINE => prop_assert_eq!(result, Err(CmdLineError::TooLong { len: line.len() })),
            None => prop_assert_eq!(result, Ok(())),
        }
        let expected: &[u8] = if result.is_ok() { &line } else { &first };
        prop_assert_eq!(info.cmd_line(), expected);
        prop_assert!(info.has_valid_magic());
    }

    /// Domain 0's argument blocks: every field at its `#[repr(C)]` offset, little-endian,
    /// nothing else written, and decoded back to the same value.
    #[test]
    fn control_arguments_sit_at_their_struct_offsets(
        words in proptest::collection::vec(any::<u64>(), 16),
    ) {
        use core::mem::offset_of;
        let w = |i: usize| words[i];
        let h = |i: usize| words[i] as u32;
        let params = SchedParams { weight: h(0), _pad: 0, warp_ns: w(1), warp_limit_ns: w(2), unwarp_req_ns: w(3) };
        let create = CreateDomain {
            module: h(4), mem_kib: h(5), max_kib: h(6), cpu: h(7), params, cmdline: w(8), cmdline_len: w(9), flags: h(10), max_vcpus: h(11), cpu_mask: w(12),
        };
        let info = DomainInfo {
            tot_pages: w(0), max_pages: w(1), state: h(2), vcpus: h(3), cpu_time_ns: w(4), hypercalls: w(5),
            exceptions_bounced: w(6), events_sent: w(7), build_ns: w(8),
        };
        let phys = PhysInfo {
            total_kib: w(9), free_kib: w(10), heap_bytes: w(11), domains: h(12), cpus: h(13), window_used_kib: w(14),
            modules: h(15), domains_held: h(1), tsc_khz: w(0), domain_records: h(2), vcpu_records: h(3),
        };
        let max = MaxMem { max_kib: w(11) };
        prop_assert_eq!(SchedParams::decode(&params.encode()), params);
        prop_assert_eq!(CreateDomain::decode(&create.encode()), create);
        prop_assert_eq!(DomainInfo::decode(&info.encode()), info);
        prop_assert_eq!(PhysInfo::decode(&phys.encode()), phys);
        prop_assert_eq!(MaxMem::decode(&max.encode()), max);

        /// The expected block: each (offset, little-endian bytes), zero elsewhere.
        fn block(fields: &[(usize, Vec<u8>)]) -> [u8; 112] {
            let mut out = [0u8; 112];
            for (offset, bytes) in fields {
                out[*offset..offset + bytes.len()].copy_from_slice(bytes);
            }
            out
        }
        let le32 = |v: u32| v.to_le_bytes().to_vec();
        let le64 = |v: u64| v.to_le_bytes().to_vec();
        let sched_fields = |base: usize, p: &SchedParams| vec![
            (base + offset_of!(SchedParams, weight), le32(p.weight)),
            (base + offset_of!(SchedParams, warp_ns), le64(p.warp_ns)),
            (base + offset_of!(SchedParams, warp_limit_ns), le64(p.warp_limit_ns)),
            (base + offset_of!(SchedParams, unwarp_req_ns), le64(p.unwarp_req_ns)),
        ];
        prop_assert_eq!(params.encode(), block(&sched_fields(0, &params)));
        let mut fields = vec![
            (offset_of!(CreateDomain, module), le32(create.module)),
            (offset_of!(CreateDomain, mem_kib), le32(create.mem_kib)),
            (offset_of!(CreateDomain, max_kib), le32(create.max_kib)),
            (offset_of!(CreateDomain, cpu), le32(create.cpu)),
            (offset_of!(CreateDomain, cmdline), le64(create.cmdline)),
            (offset_of!(CreateDomain, cmdline_len), le64(create.cmdline_len)),
            (offset_of!(CreateDomain, flags), le32(create.flags)),
            (offset_of!(CreateDomain, max_vcpus), le32(create.max_vcpus)),
            (offset_of!(CreateDomain, cpu_mask), le64(create.cpu_mask)),
        ];
        fields.extend(sched_fields(offset_of!(CreateDomain, params), &params));
        prop_assert_eq!(create.encode(), block(&fields));
        prop_assert_eq!(max.encode(), block(&[(offset_of!(MaxMem, max_kib), le64(max.max_kib))]));
        prop_assert_eq!(info.encode(), block(&[
            (offset_of!(DomainInfo, tot_pages), le64(info.tot_pages)),
            (offset_of!(DomainInfo, max_pages), le64(info.max_pages)),
            (offset_of!(DomainInfo, state), le32(info.state)),
            (offset_of!(DomainInfo, vcpus), le32(info.vcpus)),
            (offset_of!(DomainInfo, cpu_time_ns), le64(info.cpu_time_ns)),
            (offset_of!(DomainInfo, hypercalls), le64(info.hypercalls)),
            (offset_of!(DomainInfo, exceptions_bounced), le64(info.exceptions_bounced)),
            (offset_of!(DomainInfo, events_sent), le64(info.events_sent)),
            (offset_of!(DomainInfo, build_ns), le64(info.build_ns)),
        ]));
        prop_assert_eq!(phys.encode(), block(&[
            (offset_of!(PhysInfo, total_kib), le64(phys.total_kib)),
            (offset_of!(PhysInfo, free_kib), le64(phys.free_kib)),
            (offset_of!(PhysInfo, heap_bytes), le64(phys.heap_bytes)),
            (offset_of!(PhysInfo, domains), le32(phys.domains)),
            (offset_of!(PhysInfo, cpus), le32(phys.cpus)),
            (offset_of!(PhysInfo, window_used_kib), le64(phys.window_used_kib)),
            (offset_of!(PhysInfo, modules), le32(phys.modules)),
            (offset_of!(PhysInfo, domains_held), le32(phys.domains_held)),
            (offset_of!(PhysInfo, tsc_khz), le64(phys.tsc_khz)),
            (offset_of!(PhysInfo, domain_records), le32(phys.domain_records)),
            (offset_of!(PhysInfo, vcpu_records), le32(phys.vcpu_records)),
        ]));
    }
}
