//! A run queue's inbox: the only way other CPUs reach a queue they do not own. Any CPU may
//! post a [`Message`] or read the queue's published load; only the owning run queue takes
//! messages out (in [`RunQueue::drain`](crate::RunQueue::drain)).
//!
//! Posting is lock-free (crossbeam's `SegQueue`) and never loses or duplicates a message.
//! It allocates one block of slots every 31 messages, so it must not be called where the
//! allocator could be re-entered (e.g. from an interrupt that may have interrupted the
//! allocator on the same CPU). Nothing here sends an IPI: the poster kicks the owner.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crossbeam_queue::SegQueue;

use crate::params::{BvtParams, CpuId, STEAL_MIN_LOAD};
use crate::vcpu_state::VcpuState;

/// A request to a CPU's run queue from another CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<V> {
    /// Add a new vCPU, runnable (see [`RunQueue::add`](crate::RunQueue::add)).
    Add(V, BvtParams),
    /// Wake a blocked vCPU of this queue.
    Wake(V),
    /// Take in a vCPU that left another queue (see [`RunQueue::admit`](crate::RunQueue::admit)).
    Arrive(V, VcpuState),
    /// Put new BVT parameters in force for a vCPU of this queue.
    SetParams(V, BvtParams),
    /// Take a vCPU off this queue for good (its domain is going away).
    Remove(V),
    /// The idle CPU `thief` asks for one waiting vCPU; posted by [`steal_from_nearest`].
    Steal { thief: CpuId },
}

/// The shared face of one CPU's run queue.
#[derive(Debug)]
pub struct Inbox<V> {
    cpu: CpuId,
    messages: SegQueue<Message<V>>,
    /// Runnable vCPUs of the queue, the running one included (a hint: read without order).
    load: AtomicU32,
    /// A steal request is posted and not yet answered.
    steal_requested: AtomicBool,
}

impl<V> Inbox<V> {
    pub(crate) fn new(cpu: CpuId) -> Inbox<V> {
        Inbox {
            cpu,
            messages: SegQueue::new(),
            load: AtomicU32::new(0),
            steal_requested: AtomicBool::new(false),
        }
    }

    /// The CPU whose queue this is.
    pub fn cpu(&self) -> CpuId {
        self.cpu
    }

    /// Posts a message from any CPU; the owner sees it at its next `drain`. Kick the owner
    /// afterwards if it should act before its next scheduling decision.
    pub fn post(&self, message: Message<V>) {
        self.messages.push(message);
    }

    /// Whether messages wait for the owner (a hint: one may be posted right after).
    pub fn has_messages(&self) -> bool {
        !self.messages.is_empty()
    }

    /// The queue's load as last published by its owner.
    pub fn load(&self) -> u32 {
        self.load.load(Ordering::Relaxed)
    }

    /// Posts a steal request from `thief` unless one is already outstanding; returns whether
    /// this call posted it. At most one request per victim is ever outstanding.
    pub fn request_steal(&self, thief: CpuId) -> bool {
        let claimed = self.steal_requested.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire);
        if claimed.is_ok() {
            self.post(Message::Steal { thief });
        }
        claimed.is_ok()
    }

    pub(crate) fn pop(&self) -> Option<Message<V>> {
        self.messages.pop()
    }

    pub(crate) fn publish_load(&self, load: u32) {
        self.load.store(load, Ordering::Relaxed);
    }

    /// The owner has taken the outstanding steal request: thieves may ask again.
    pub(crate) fn steal_answered(&self) {
        self.steal_requested.store(false, Ordering::Release);
    }
}

/// For an idle CPU `thief`: asks the nearest CPU that has a vCPU waiting (load at least
/// [`STEAL_MIN_LOAD`]) and no steal request outstanding for one vCPU. `nearest_first` is the
/// other CPUs' inboxes in topology order (the thief's own is skipped). Returns the CPU asked,
/// which the caller should kick; `None` if no CPU has work to spare.
pub fn steal_from_nearest<'a, V: 'a>(
    thief: CpuId,
    nearest_first: impl IntoIterator<Item = &'a Inbox<V>>,
) -> Option<CpuId> {
    nearest_first
        .into_iter()
        .filter(|inbox| inbox.cpu() != thief && inbox.load() >= STEAL_MIN_LOAD)
        .find(|inbox| inbox.request_steal(thief))
        .map(Inbox::cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox(cpu: u32, load: u32) -> Inbox<u32> {
        let inbox = Inbox::new(CpuId(cpu));
        inbox.publish_load(load);
        inbox
    }

    #[test]
    fn messages_come_out_in_order() {
        let inbox = inbox(0, 0);
        inbox.post(Message::Wake(1));
        inbox.post(Message::Remove(2));
        assert!(inbox.has_messages());
        assert_eq!(inbox.pop(), Some(Message::Wake(1)));
        assert_eq!(inbox.pop(), Some(Message::Remove(2)));
        assert_eq!(inbox.pop(), None);
        assert!(!inbox.has_messages());
    }

    #[test]
    fn thieves_ask_the_nearest_cpu_with_a_waiting_vcpu() {
        let cpus = [inbox(1, 1), inbox(2, 0), inbox(3, 2), inbox(4, 9)];
        assert_eq!(steal_from_nearest(CpuId(0), &cpus), Some(CpuId(3)));
        assert_eq!(cpus[2].pop(), Some(Message::Steal { thief: CpuId(0) }));
        assert_eq!(cpus[3].pop(), None, "only one CPU is asked");
    }

    #[test]
    fn one_steal_request_per_victim_is_outstanding() {
        let cpus = [inbox(1, 3), inbox(2, 3)];
        assert_eq!(steal_from_nearest(CpuId(0), &cpus), Some(CpuId(1)));
        assert_eq!(steal_from_nearest(CpuId(5), &cpus), Some(CpuId(2)), "CPU 1 is already asked");
        assert_eq!(steal_from_nearest(CpuId(6), &cpus), None);
        cpus[0].steal_answered();
        assert_eq!(steal_from_nearest(CpuId(6), &cpus), Some(CpuId(1)));
    }

    #[test]
    fn a_thief_never_asks_itself_and_idle_cpus_have_nothing_to_give() {
        let cpus = [inbox(0, 5), inbox(1, 1), inbox(2, 0)];
        assert_eq!(steal_from_nearest(CpuId(0), &cpus), None);
        assert_eq!(cpus[0].pop(), None);
    }
}
