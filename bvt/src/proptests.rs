//! Property test of the run queues under any BVT parameters domain 0 can send (any
//! non-zero weight, any warp, warp limit and unwarp requirement, 64-bit values included)
//! and random sequences of adds, wake-ups, blocks, migrations between two queues,
//! parameter changes, yields, ticks and decisions, over time steps from nanoseconds to
//! days.
//!
//! Properties: no arithmetic overflows or panics (the tests build with overflow checks);
//! each queue's load is the number of its runnable vCPUs; a decision runs a runnable vCPU
//! of its queue whenever there is one, and idles otherwise; a slice is never shorter than
//! the minimum charging unit; the scheduler virtual time never goes back; membership and
//! runnability follow the operations. Test-only. More cases: `PROPTEST_CASES=5000 cargo
//! test -p bvt proptests`.

use core::num::NonZeroU32;
use std::vec::Vec;

use proptest::prelude::*;

use crate::params::{BvtParams, Config, CpuId};
use crate::linear_queue::LinearRunQueue;
use crate::run_queue::RunQueue;

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` in the environment wins over the default given here.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// vCPUs 0..VCPUS exist; each is on at most one queue.
const VCPUS: u32 = 6;

/// A 64-bit knob: 0, small, an edge, or anything.
fn knob() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        3 => 1u64..50_000_000,
        1 => proptest::sample::select(vec![u64::MAX, u64::MAX / 2, 1 << 63, (1 << 63) - 1, u64::from(u32::MAX)]),
        2 => any::<u64>(),
    ]
}

fn params() -> impl Strategy<Value = BvtParams> {
    let weight = prop_oneof![3 => 1u32..1000, 1 => Just(u32::MAX), 1 => any::<u32>()]
        .prop_map(|w| NonZeroU32::new(w).unwrap_or(NonZeroU32::MIN));
    (weight, knob(), knob(), knob(), any::<bool>()).prop_map(
        |(weight, warp_vns, warp_limit_ns, unwarp_req_ns, pinned)| BvtParams {
            weight,
            warp_vns,
            warp_limit_ns,
            unwarp_req_ns,
            pinned,
        },
    )
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Add {
        q: usize,
        v: u32,
        params: BvtParams,
    },
    Wake {
        v: u32,
    },
    Block {
        v: u32,
    },
    /// Move `v` to the other queue (remove, then admit).
    Migrate {
        v: u32,
    },
    /// Take `v` off its queue for good.
    Remove {
        v: u32,
    },
    SetParams {
        v: u32,
        params: BvtParams,
    },
    Yield {
        q: usize,
    },
    Tick {
        q: usize,
    },
    Pick {
        q: usize,
    },
    Forgive {
        q: usize,
        ns: u64,
    },
    Advance {
        ns: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let v = 0..VCPUS;
    let q = 0usize..2;
    let step = prop_oneof![4 => 0u64..200_000, 2 => 0u64..50_000_000, 1 => 0u64..(1 << 46)];
    prop_oneof![
        3 => (q.clone(), v.clone(), params()).prop_map(|(q, v, params)| Op::Add { q, v, params }),
        4 => v.clone().prop_map(|v| Op::Wake { v }),
        3 => v.clone().prop_map(|v| Op::Block { v }),
        2 => v.clone().prop_map(|v| Op::Migrate { v }),
        1 => v.clone().prop_map(|v| Op::Remove { v }),
        2 => (v, params()).prop_map(|(v, params)| Op::SetParams { v, params }),
        1 => q.clone().prop_map(|q| Op::Yield { q }),
        3 => q.clone().prop_map(|q| Op::Tick { q }),
        6 => q.clone().prop_map(|q| Op::Pick { q }),
        1 => (q, 0u64..10_000_000).prop_map(|(q, ns)| Op::Forgive { q, ns }),
        6 => step.prop_map(|ns| Op::Advance { ns }),
    ]
}

/// Where each vCPU is, and whether it is runnable, as the operations say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Nowhere,
    On { q: usize, runnable: bool },
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn run_queues_hold_under_any_parameters(
        ops in proptest::collection::vec(op(), 1..150),
        start in prop_oneof![Just(0u64), 0u64..(1 << 50)],
        mcu_ns in prop_oneof![Just(crate::params::DEFAULT_MCU_NS), 1u64..1_000_000],
        allowance in knob(),
    ) {
        let config = Config { ctx_switch_allowance_ns: allowance, mcu_ns, ..Config::default() };
        let mut queues = [RunQueue::<u32>::new(CpuId(0), config), RunQueue::<u32>::new(CpuId(1), config)];
        let mut place = [Place::Nowhere; VCPUS as usize];
        let mut now = start;
        let mut svt = [0u64; 2];
        for (step, &op) in ops.iter().enumerate() {
            match op {
                Op::Add { q, v, params } => match here_after(&place, v) {
                    // The hypervisor keeps a vCPU on one queue; a second add there is refused.
                    Some((at, _)) if at == q => prop_assert!(queues[q].add(v, params, now).is_err()),
                    Some(_) => {}
                    None => {
                        queues[q].add(v, params, now).unwrap();
                        place[v as usize] = Place::On { q, runnable: true };
                    }
                },
                Op::Wake { v } => {
                    if let Some((q, _)) = here_after(&place, v) {
                        queues[q].wake(v, now).unwrap();
                        place[v as usize] = Place::On { q, runnable: true };
                    } else {
                        prop_assert!(queues[0].wake(v, now).is_err() && queues[1].wake(v, now).is_err());
                    }
                }
                Op::Block { v } => {
                    if let Some((q, _)) = here_after(&place, v) {
                        queues[q].block(v, now).unwrap();
                        place[v as usize] = Place::On { q, runnable: false };
                    }
                }
                Op::Migrate { v } => {
                    if let Some((q, runnable)) = here_after(&place, v) {
                        let state = queues[q].remove(v, now).unwrap();
                        let to = 1 - q;
                        queues[to].admit(v, state, now).unwrap();
                        place[v as usize] = Place::On { q: to, runnable };
                    }
                }
                Op::Remove { v } => {
                    if let Some((q, _)) = here_after(&place, v) {
                        queues[q].remove(v, now).unwrap();
                        place[v as usize] = Place::Nowhere;
                    }
                }
                Op::SetParams { v, params } => {
                    if let Some((q, _)) = here_after(&place, v) {
                        queues[q].set_params(v, params, now).unwrap();
                        prop_assert_eq!(queues[q].vcpu(v).map(|view| view.params), Some(params));
                    }
                }
                Op::Yield { q } => queues[q].yield_current(),
                Op::Tick { q } => {
                    queues[q].tick(now);
                }
                Op::Pick { q } => {
                    let decision = queues[q].pick_next(now);
                    let runnable: Vec<u32> = (0..VCPUS).filter(|&v| here_after(&place, v) == Some((q, true))).collect();
                    match decision.run {
                        Some(v) => prop_assert!(runnable.contains(&v), "step {}: ran {} of {:?}", step, v, runnable),
                        None => prop_assert!(runnable.is_empty(), "step {}: idle with {:?} runnable", step, runnable),
                    }
                    if let Some(slice) = decision.slice_ns {
                        prop_assert!(slice >= mcu_ns, "a slice of {} ns", slice);
                    }
                    prop_assert_eq!(queues[q].current(), decision.run);
                }
                Op::Forgive { q, ns } => queues[q].forgive_running(ns),
                Op::Advance { ns } => now += ns,
            }
            for (q, queue) in queues.iter().enumerate() {
                let runnable = (0..VCPUS).filter(|&v| here_after(&place, v) == Some((q, true))).count();
                prop_assert_eq!(queue.load() as usize, runnable, "step {}: load of queue {}", step, q);
                for v in 0..VCPUS {
                    let on = matches!(place[v as usize], Place::On { q: at, .. } if at == q);
                    prop_assert_eq!(queue.contains(v), on);
                    prop_assert_eq!(queue.is_runnable(v), here_after(&place, v) == Some((q, true)));
                }
                prop_assert!(queue.svt_vns() >= svt[q], "step {}: SVT of queue {} went back", step, q);
                svt[q] = queue.svt_vns();
            }
        }
    }
}

fn here_after(place: &[Place], v: u32) -> Option<(usize, bool)> {
    match place[v as usize] {
        Place::On { q, runnable } => Some((q, runnable)),
        Place::Nowhere => None,
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// The indexed run queue decides exactly as the linear one it replaced (issue 18): the
    /// same answers, decisions, slices, SVT, pushes and steal candidates for the same calls,
    /// and its ordered sets hold exactly its waiting vCPUs after every call.
    #[test]
    fn the_indexed_queue_decides_as_the_linear_one(
        ops in proptest::collection::vec(op(), 1..150),
        start in prop_oneof![Just(0u64), 0u64..(1 << 50)],
        mcu_ns in prop_oneof![Just(crate::params::DEFAULT_MCU_NS), 1u64..1_000_000],
        allowance in knob(),
        steal_min_wait_ns in prop_oneof![Just(0u64), 0u64..5_000_000],
    ) {
        let config = Config { ctx_switch_allowance_ns: allowance, mcu_ns, steal_min_wait_ns, ..Config::default() };
        let mut new = [RunQueue::<u32>::new(CpuId(0), config), RunQueue::<u32>::new(CpuId(1), config)];
        let mut old = [LinearRunQueue::<u32>::new(CpuId(0), config), LinearRunQueue::<u32>::new(CpuId(1), config)];
        let mut now = start;
        for (step, &op) in ops.iter().enumerate() {
            let at = |new: &[RunQueue<u32>; 2], v: u32| (0..2).find(|&q| new[q].contains(v));
            match op {
                Op::Add { q, v, params } => prop_assert_eq!(new[q].add(v, params, now), old[q].add(v, params, now)),
                Op::Wake { v } => if let Some(q) = at(&new, v) { prop_assert_eq!(new[q].wake(v, now), old[q].wake(v, now)) },
                Op::Block { v } => if let Some(q) = at(&new, v) { prop_assert_eq!(new[q].block(v, now), old[q].block(v, now)) },
                Op::Migrate { v } => if let Some(q) = at(&new, v) {
                    let (a, b) = (new[q].remove(v, now).unwrap(), old[q].remove(v, now).unwrap());
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(new[1 - q].admit(v, a, now), old[1 - q].admit(v, b, now));
                },
                Op::Remove { v } => if let Some(q) = at(&new, v) { prop_assert_eq!(new[q].remove(v, now), old[q].remove(v, now)) },
                Op::SetParams { v, params } => if let Some(q) = at(&new, v) {
                    prop_assert_eq!(new[q].set_params(v, params, now), old[q].set_params(v, params, now));
                },
                Op::Yield { q } => { new[q].yield_current(); old[q].yield_current(); }
                Op::Tick { q } => prop_assert_eq!(new[q].tick(now), old[q].tick(now), "step {}", step),
                Op::Pick { q } => prop_assert_eq!(new[q].pick_next(now), old[q].pick_next(now), "step {}", step),
                Op::Forgive { q, ns } => { new[q].forgive_running(ns); old[q].forgive_running(ns); }
                Op::Advance { ns } => now += ns,
            }
            for q in 0..2 {
                new[q].check_sets();
                prop_assert_eq!(new[q].load(), old[q].load());
                prop_assert_eq!(new[q].svt_vns(), old[q].svt_vns());
                prop_assert_eq!(new[q].current(), old[q].current());
                prop_assert_eq!(new[q].waiting_warped(), old[q].waiting_warped(), "step {}", step);
                prop_assert_eq!(new[q].steal_candidate(now), old[q].steal_candidate(now), "step {}", step);
                prop_assert_eq!(new[q].decision_due(), old[q].decision_due(), "step {}", step);
                for v in 0..VCPUS {
                    prop_assert_eq!(new[q].vcpu(v), old[q].vcpu(v));
                }
            }
        }
    }
}
