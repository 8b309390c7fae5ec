//! The owner's side of the inbox: [`RunQueue::drain`] applies every posted message to the
//! run queue and answers steal requests, returning what only the hypervisor can do.
//!
//! Called by the owning CPU at each scheduling decision and from its reschedule IPI. It never
//! posts to another CPU's inbox or kicks a CPU itself: those come back as [`Action`]s.

use alloc::vec::Vec;

use crate::error::BvtError;
use crate::inbox::Message;
use crate::params::CpuId;
use crate::run_queue::RunQueue;
use crate::vcpu_state::VcpuState;

/// Something the hypervisor must do after a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<V> {
    /// `vcpu` left this queue for `to` (a steal): record `to` as its CPU, post
    /// `Message::Arrive(vcpu, state)` to `to`'s inbox, then kick `to`.
    Migrate { vcpu: V, state: VcpuState, to: CpuId },
    /// `vcpu` is off this queue as a `Message::Remove` asked; the queue holds no trace of it.
    Removed(V),
    /// A message that could not be applied. `UnknownVcpu`: the vCPU moved on (re-post to its
    /// current CPU) or is gone; `AlreadyQueued`: a duplicate arrival (a hypervisor bug).
    Bounced { message: Message<V>, reason: BvtError },
}

/// What a drain did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drained<V> {
    /// For the hypervisor to carry out, in order (empty, and unallocated, most of the time).
    pub actions: Vec<Action<V>>,
    /// Call [`RunQueue::pick_next`] now: the running vCPU was removed, a runnable vCPU's
    /// parameters changed (the armed slice may be wrong), or a decision is due (see
    /// [`RunQueue::tick`]).
    pub reschedule: bool,
    /// A vCPU became runnable here (a wake or an add): after the decision, a warped one may
    /// be left waiting (see [`RunQueue::waiting_warped`]). A vCPU that arrived from another
    /// CPU does not count, so that a vCPU moved here is not moved on before it ran.
    pub woke: bool,
}

impl<V: Copy + Ord> RunQueue<V> {
    /// Applies every message posted so far, charging the running vCPU up to `now_ns` first
    /// (written once for every [`Queue`](crate::Queue)).
    pub fn drain(&mut self, now_ns: u64) -> Drained<V> {
        crate::queue::drain(self, now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::steal_from_nearest;
    use crate::params::{BvtParams, Config};
    use alloc::collections::BTreeSet;
    use alloc::sync::Arc;
    use std::thread;

    fn queue_with(cpu: u32, vcpus: core::ops::Range<u32>) -> RunQueue<u32> {
        let mut rq = RunQueue::new(CpuId(cpu), Config::default());
        for v in vcpus {
            rq.add(v, BvtParams::DEFAULT, 0).unwrap();
        }
        rq
    }

    #[test]
    fn an_empty_inbox_drains_to_nothing() {
        let mut rq = queue_with(0, 0..1);
        rq.pick_next(0);
        assert_eq!(rq.drain(0), Drained { actions: Vec::new(), reschedule: false, woke: false });
    }

    #[test]
    fn posted_wakes_and_adds_are_applied_and_ask_for_a_reschedule() {
        let mut rq = queue_with(0, 0..0);
        rq.inbox().post(Message::Add(1, BvtParams::DEFAULT));
        let drained = rq.drain(0);
        assert!(drained.reschedule, "an idle CPU got work");
        assert!(drained.woke, "an add makes a vCPU runnable");
        assert!(drained.actions.is_empty());
        assert_eq!(rq.pick_next(0), crate::Decision { run: Some(1), slice_ns: None });
        rq.inbox().post(Message::Add(2, BvtParams::DEFAULT));
        assert!(rq.drain(0).reschedule, "vCPU 1 ran alone without a slice and now needs one");
        assert_eq!(rq.pick_next(0).run, Some(1));
        rq.add(3, BvtParams::DEFAULT, 0).unwrap();
        rq.block(3, 0).unwrap();
        rq.inbox().post(Message::Wake(3));
        let drained = rq.drain(0);
        assert!(!drained.reschedule, "no warp: vCPU 3 is not far enough ahead");
        assert!(drained.woke);
        assert!(rq.is_runnable(3));
        rq.inbox().post(Message::SetParams(3, BvtParams::DEFAULT));
        let drained = rq.drain(0);
        assert!(drained.reschedule, "the armed slice may be wrong");
        assert!(!drained.woke, "new parameters wake no one");
    }

    #[test]
    fn messages_for_strangers_bounce_with_the_reason() {
        let mut rq = queue_with(0, 0..1);
        let state = rq.remove(0, 0).unwrap();
        rq.add(0, BvtParams::DEFAULT, 0).unwrap();
        let stray = [Message::Wake(7), Message::SetParams(7, BvtParams::DEFAULT), Message::Remove(7)];
        for message in stray {
            rq.inbox().post(message);
        }
        rq.inbox().post(Message::Arrive(0, state));
        let drained = rq.drain(0);
        let mut expected: Vec<Action<u32>> =
            stray.iter().map(|&message| Action::Bounced { message, reason: BvtError::UnknownVcpu }).collect();
        expected.push(Action::Bounced { message: Message::Arrive(0, state), reason: BvtError::AlreadyQueued });
        assert_eq!(drained.actions, expected);
        assert_eq!(rq.load(), 1);
    }

    #[test]
    fn removing_the_running_vcpu_reports_it_and_asks_for_a_reschedule() {
        let mut rq = queue_with(0, 0..2);
        rq.pick_next(0);
        rq.inbox().post(Message::Remove(1));
        assert_eq!(rq.drain(0), Drained { actions: alloc::vec![Action::Removed(1)], reschedule: false, woke: false });
        rq.inbox().post(Message::Remove(0));
        assert_eq!(rq.drain(0), Drained { actions: alloc::vec![Action::Removed(0)], reschedule: true, woke: false });
        assert_eq!(rq.pick_next(0).run, None);
    }

    #[test]
    fn a_steal_moves_exactly_one_waiting_vcpu_and_never_the_running_one() {
        let mut victim = queue_with(1, 0..3);
        let running = victim.pick_next(0).run.unwrap();
        let mut thief = queue_with(0, 0..0);
        let nearest = [victim.inbox().clone()];
        assert_eq!(steal_from_nearest(CpuId(0), nearest.iter().map(|i| &**i)), Some(CpuId(1)));
        let drained = victim.drain(MS);
        assert!(!drained.reschedule);
        let [Action::Migrate { vcpu, state, to }] = drained.actions[..] else {
            panic!("expected one migration, got {:?}", drained.actions)
        };
        assert_eq!(to, CpuId(0));
        assert_ne!(vcpu, running);
        assert_eq!(victim.load(), 2);
        assert_eq!(victim.current(), Some(running));
        assert!(!victim.contains(vcpu));
        thief.inbox().post(Message::Arrive(vcpu, state));
        let drained = thief.drain(MS);
        assert!(drained.reschedule);
        assert!(!drained.woke, "an arrival is not a wake-up: it is not moved on at once");
        assert_eq!(thief.pick_next(MS).run, Some(vcpu));
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_steal_takes_the_vcpu_dispatched_least_recently() {
        let mut victim = queue_with(1, 0..3);
        victim.pick_next(0); // runs 0
        victim.pick_next(6 * MS); // runs 1: 0 is ahead by more than 5 ms
        assert_eq!(victim.current(), Some(1));
        assert!(victim.inbox().request_steal(CpuId(0)));
        let actions = victim.drain(6 * MS).actions;
        assert!(matches!(actions[..], [Action::Migrate { vcpu: 2, .. }]), "{actions:?}");
    }

    #[test]
    fn a_steal_with_nothing_waiting_moves_nothing_and_can_be_asked_again() {
        let mut victim = queue_with(1, 0..1);
        victim.pick_next(0);
        assert!(victim.inbox().request_steal(CpuId(0)));
        assert!(!victim.inbox().request_steal(CpuId(2)), "one request at a time");
        assert!(victim.drain(0).actions.is_empty());
        assert!(victim.contains(0));
        assert!(victim.inbox().request_steal(CpuId(2)), "answered: thieves may ask again");
        victim.inbox().post(Message::Steal { thief: CpuId(1) });
        victim.add(1, BvtParams::DEFAULT, 0).unwrap();
        let actions = victim.drain(MS).actions;
        assert!(matches!(actions[..], [Action::Migrate { vcpu: 1, to: CpuId(2), .. }]), "{actions:?}");
        assert!(victim.contains(0), "a queue never steals from itself");
    }

    #[test]
    fn pinned_vcpus_are_never_stolen() {
        let mut victim = RunQueue::new(CpuId(1), Config::default());
        let pinned = BvtParams { pinned: true, ..BvtParams::DEFAULT };
        for v in 0..3 {
            victim.add(v, pinned, 0).unwrap();
        }
        victim.pick_next(0);
        assert!(victim.inbox().request_steal(CpuId(0)));
        assert!(victim.drain(10 * MS).actions.is_empty(), "two waited 10 ms but are pinned");
        victim.add(3, BvtParams::DEFAULT, 0).unwrap();
        assert!(victim.inbox().request_steal(CpuId(0)));
        let actions = victim.drain(20 * MS).actions;
        assert!(matches!(actions[..], [Action::Migrate { vcpu: 3, .. }]), "{actions:?}");
    }

    #[test]
    fn only_a_vcpu_that_waited_the_threshold_is_stolen() {
        let wait = crate::params::DEFAULT_STEAL_MIN_WAIT_NS;
        let mut victim = queue_with(1, 0..2);
        assert_eq!(victim.pick_next(0).run, Some(0));
        assert!(victim.inbox().request_steal(CpuId(0)));
        assert!(victim.drain(wait - 1).actions.is_empty(), "vCPU 1 waited just under the threshold");
        // 0 runs until vCPU 1 beats it (5 ms); 1 runs; 0 starts waiting at that moment.
        let switch = 6 * MS;
        assert_eq!(victim.pick_next(switch).run, Some(1));
        assert!(victim.inbox().request_steal(CpuId(0)));
        assert!(victim.drain(switch + wait - 1).actions.is_empty(), "vCPU 0 was descheduled just now");
        assert!(victim.inbox().request_steal(CpuId(0)));
        let actions = victim.drain(switch + wait).actions;
        assert!(matches!(actions[..], [Action::Migrate { vcpu: 0, to: CpuId(0), .. }]), "{actions:?}");
    }

    #[test]
    fn concurrent_posts_are_applied_exactly_once() {
        const THREADS: u32 = 4;
        const PER_THREAD: u32 = 2_000;
        let total = THREADS * PER_THREAD;
        let mut rq = queue_with(0, 0..total);
        for v in 0..total {
            rq.block(v, 0).unwrap();
        }
        let inbox = rq.inbox().clone();
        let posters: Vec<_> = (0..THREADS)
            .map(|t| {
                let inbox = Arc::clone(&inbox);
                thread::spawn(move || {
                    for v in t * PER_THREAD..(t + 1) * PER_THREAD {
                        inbox.post(Message::Wake(v));
                        inbox.post(Message::Remove(v));
                    }
                })
            })
            .collect();
        let mut removed = BTreeSet::new();
        let mut now = 0;
        while removed.len() < total as usize {
            now += 1;
            for action in rq.drain(now).actions {
                match action {
                    Action::Removed(v) => assert!(removed.insert(v), "vCPU {v} removed twice"),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(rq.load() <= total);
        }
        posters.into_iter().for_each(|p| p.join().unwrap());
        assert!(rq.drain(now).actions.is_empty(), "nothing duplicated after the last removal");
        assert_eq!(rq.load(), 0);
        assert_eq!(removed.len(), total as usize);
    }
}
