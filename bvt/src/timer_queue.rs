//! A per-CPU timer queue: payloads due at deadlines (system time, ns), earliest first, with
//! cancel by handle.
//!
//! The hypervisor keeps one per CPU, owned by that CPU, for its vCPUs' one-shot timers and
//! its own; it programs the local timer for [`TimerQueue::next_deadline`] and calls
//! [`TimerQueue::expire`] from the timer interrupt. It never reads a clock or arms hardware.
//! A handle carries its slot's generation, so a handle kept after its timer fired or was
//! cancelled can never cancel a newer timer that reuses the slot. Cancelled entries are
//! dropped lazily, and the heap is rebuilt when they outnumber live ones, so a guest that
//! re-arms its timer forever cannot grow the heap.

use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Ordering;

/// Rebuild the heap once it holds more than this many entries beyond twice the live ones.
const STALE_SLACK: usize = 16;

/// Names one inserted timer, for [`TimerQueue::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerHandle {
    slot: usize,
    generation: u64,
}

/// A slot of the queue: a pending payload, or free.
#[derive(Debug)]
struct Slot<T> {
    /// Bumped each time the slot's timer fires or is cancelled.
    generation: u64,
    payload: Option<T>,
}

/// A heap entry; stale once its slot's generation has moved on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    deadline_ns: u64,
    /// Insertion order, so that equal deadlines fire first in, first out.
    seq: u64,
    slot: usize,
    generation: u64,
}

impl Ord for Entry {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest deadline must come first.
    fn cmp(&self, other: &Entry) -> Ordering {
        (other.deadline_ns, other.seq).cmp(&(self.deadline_ns, self.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Payloads of type `T` waiting for their deadlines.
#[derive(Debug)]
pub struct TimerQueue<T> {
    /// Entries, earliest on top; the top is never stale.
    heap: BinaryHeap<Entry>,
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
    live: usize,
    next_seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> TimerQueue<T> {
        TimerQueue::new()
    }
}

impl<T> TimerQueue<T> {
    /// An empty queue (allocates nothing until the first insert).
    pub const fn new() -> TimerQueue<T> {
        TimerQueue { heap: BinaryHeap::new(), slots: Vec::new(), free: Vec::new(), live: 0, next_seq: 0 }
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Arms a timer: `payload` is due at `deadline_ns`.
    pub fn insert(&mut self, deadline_ns: u64, payload: T) -> TimerHandle {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot { generation: 0, payload: None });
                self.slots.len() - 1
            }
        };
        self.slots[slot].payload = Some(payload);
        let generation = self.slots[slot].generation;
        self.heap.push(Entry { deadline_ns, seq: self.next_seq, slot, generation });
        self.next_seq += 1;
        self.live += 1;
        TimerHandle { slot, generation }
    }

    /// Disarms the timer `handle` names and returns its payload; `None` if it already fired
    /// or was cancelled.
    pub fn cancel(&mut self, handle: TimerHandle) -> Option<T> {
        if !self.is_pending(handle) {
            return None;
        }
        let payload = self.release(handle.slot);
        if self.heap.len() > 2 * self.live + STALE_SLACK {
            let slots = &self.slots;
            self.heap.retain(|entry| slots[entry.slot].generation == entry.generation);
        }
        self.drop_stale_top();
        Some(payload)
    }

    /// Whether the timer `handle` names is still armed.
    pub fn is_pending(&self, handle: TimerHandle) -> bool {
        self.slots.get(handle.slot).is_some_and(|slot| slot.generation == handle.generation)
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|entry| entry.deadline_ns)
    }

    /// The payloads due at `now_ns` (deadline at or before it), earliest first, each
    /// removed as the iterator yields it (dropping the iterator early leaves the rest).
    pub fn expire(&mut self, now_ns: u64) -> Expired<'_, T> {
        Expired { queue: self, now_ns }
    }

    /// Frees `slot`, whose timer is pending, and returns its payload.
    fn release(&mut self, slot: usize) -> T {
        let freed = &mut self.slots[slot];
        freed.generation += 1;
        self.free.push(slot);
        self.live -= 1;
        freed.payload.take().expect("a pending slot holds its payload")
    }

    fn is_stale(&self, entry: &Entry) -> bool {
        self.slots[entry.slot].generation != entry.generation
    }

    fn drop_stale_top(&mut self) {
        while self.heap.peek().is_some_and(|top| self.is_stale(top)) {
            self.heap.pop();
        }
    }

    fn pop_due(&mut self, now_ns: u64) -> Option<T> {
        let top = *self.heap.peek().filter(|top| top.deadline_ns <= now_ns)?;
        self.heap.pop();
        let payload = self.release(top.slot);
        self.drop_stale_top();
        Some(payload)
    }

    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

/// The due payloads of a [`TimerQueue`], from [`TimerQueue::expire`].
#[derive(Debug)]
pub struct Expired<'a, T> {
    queue: &'a mut TimerQueue<T>,
    now_ns: u64,
}

impl<T> Iterator for Expired<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.queue.pop_due(self.now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_expire_earliest_first_and_equal_deadlines_in_insertion_order() {
        let mut timers = TimerQueue::new();
        timers.insert(30, "c");
        timers.insert(10, "a");
        timers.insert(20, "b1");
        timers.insert(20, "b2");
        timers.insert(40, "d");
        assert_eq!(timers.next_deadline(), Some(10));
        assert_eq!(timers.expire(5).count(), 0);
        assert_eq!(timers.expire(30).collect::<Vec<_>>(), ["a", "b1", "b2", "c"]);
        assert_eq!(timers.next_deadline(), Some(40));
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn an_empty_queue_has_no_deadline() {
        let mut timers = TimerQueue::<u8>::default();
        assert!(timers.is_empty());
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.expire(u64::MAX).next(), None);
    }

    #[test]
    fn a_cancelled_timer_never_fires_and_its_payload_comes_back() {
        let mut timers = TimerQueue::new();
        let first = timers.insert(10, 1);
        timers.insert(20, 2);
        assert_eq!(timers.cancel(first), Some(1));
        assert_eq!(timers.next_deadline(), Some(20), "the cancelled top is gone");
        assert_eq!(timers.cancel(first), None, "cancelling twice");
        assert_eq!(timers.expire(100).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_fired_timer_cannot_be_cancelled() {
        let mut timers = TimerQueue::new();
        let handle = timers.insert(10, 'x');
        assert!(timers.is_pending(handle));
        assert_eq!(timers.expire(10).collect::<Vec<_>>(), ['x']);
        assert!(!timers.is_pending(handle));
        assert_eq!(timers.cancel(handle), None);
    }

    #[test]
    fn an_old_handle_cannot_cancel_the_timer_that_reuses_its_slot() {
        let mut timers = TimerQueue::new();
        let old = timers.insert(10, "old");
        timers.cancel(old);
        let new = timers.insert(50, "new");
        assert_eq!(new.slot, old.slot, "the slot is reused");
        assert_eq!(timers.cancel(old), None);
        assert!(timers.is_pending(new));
        assert_eq!(timers.expire(50).collect::<Vec<_>>(), ["new"]);
    }

    #[test]
    fn a_forged_handle_is_refused() {
        let mut timers = TimerQueue::<u8>::new();
        let forged = TimerHandle { slot: 99, generation: 0 };
        assert!(!timers.is_pending(forged));
        assert_eq!(timers.cancel(forged), None);
    }

    #[test]
    fn stopping_an_expiry_early_leaves_the_rest_due() {
        let mut timers = TimerQueue::new();
        for deadline in 1..=3 {
            timers.insert(deadline, deadline);
        }
        assert_eq!(timers.expire(3).next(), Some(1));
        assert_eq!(timers.len(), 2);
        assert_eq!(timers.expire(3).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn rearming_forever_does_not_grow_the_heap() {
        let mut timers = TimerQueue::new();
        timers.insert(1, 0u32);
        let mut handle = timers.insert(u64::MAX, 1);
        for i in 0..10_000 {
            timers.cancel(handle);
            handle = timers.insert(1_000_000 - u64::from(i % 7), i);
            assert!(timers.heap_len() <= 2 * timers.len() + STALE_SLACK + 1);
        }
        assert_eq!(timers.len(), 2);
        assert_eq!(timers.expire(u64::MAX).collect::<Vec<_>>(), [0, 9_999]);
    }
}
