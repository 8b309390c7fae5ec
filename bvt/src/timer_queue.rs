//! A per-CPU timer queue: payloads due at deadlines (system time, ns), earliest first, with
//! cancel by handle.
//!
//! The hypervisor keeps one per CPU, owned by that CPU, for its vCPUs' one-shot timers and
//! its own; it programs the local timer for [`TimerQueue::next_deadline`] and calls
//! [`TimerQueue::expire`] from the timer interrupt. It never reads a clock or arms hardware.
//!
//! A timer lives in a slot; a handle names the slot and the timer's *generation*: the
//! sequence number of the insert that armed it, unique over the queue's whole life. So a
//! handle kept after its timer fired or was cancelled never matches a newer timer in the same
//! slot, even one in a slot that was dropped and created again. Cancelled entries are dropped
//! lazily, and the heap is rebuilt when they outnumber live ones, so a guest that re-arms its
//! timer forever cannot grow the heap.
//!
//! The queue gives memory back as it empties (see [`crate::shrink`]): a new timer takes the
//! lowest free slot, so long-lived re-armed timers drift to the front; free slots at the end
//! are dropped at once; and each table is shrunk once it is under a quarter full. Every
//! operation stays amortised O(log n). Each table starts at, and comes back to exactly,
//! [`TIMER_TABLE_FLOOR`] entries: the heap and the free list of a queue holding a few timers
//! also hold up to [`STALE_SLACK`] and more stale entries, a number that depends on the
//! history, so their floor is chosen large enough that such a queue holds at most half of it
//! (and its capacity is then the floor, whatever the history: see [`crate::shrink`]).

use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::{Ordering, Reverse};

use crate::shrink::{new_table, shrink_when_sparse, sparse_capacity, MIN_TABLE_CAPACITY};

/// Rebuild the heap (or the free list) once it holds more than this many stale entries
/// beyond the current ones.
const STALE_SLACK: usize = 16;

/// The capacity each table of a queue has from its creation and comes back to: a queue with
/// up to eight pending timers (a CPU's steady few) has at most `2 * 8 + STALE_SLACK` heap
/// entries and about as many free-list entries, half of this.
pub const TIMER_TABLE_FLOOR: usize = 4 * STALE_SLACK;
const _: () = assert!(TIMER_TABLE_FLOOR >= MIN_TABLE_CAPACITY);

/// Names one inserted timer, for [`TimerQueue::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerHandle {
    slot: usize,
    generation: u64,
}

/// A slot of the queue: a pending payload, or free.
#[derive(Debug)]
struct Slot<T> {
    /// The sequence number of the insert that last armed the slot.
    generation: u64,
    payload: Option<T>,
}

/// Whether `slot` exists and holds the pending timer of generation `generation`.
fn is_armed<T>(slots: &[Slot<T>], slot: usize, generation: u64) -> bool {
    slots.get(slot).is_some_and(|s| s.payload.is_some() && s.generation == generation)
}

/// A heap entry; stale once its slot no longer holds the timer its `seq` armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    deadline_ns: u64,
    /// Insertion order, so that equal deadlines fire first in, first out; also the
    /// generation of the timer the entry is for.
    seq: u64,
    slot: usize,
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
    /// The last slot, if any, is armed (free slots at the end are dropped at once).
    slots: Vec<Slot<T>>,
    /// Free slots, lowest first: every free slot below `slots.len()` once; indices at or
    /// beyond it are left over from dropped slots and are ignored (no slot is created while
    /// one is listed: see [`TimerQueue::take_free_slot`]).
    free: BinaryHeap<Reverse<usize>>,
    live: usize,
    /// The next insert's sequence number (and generation): `u64` never wraps in practice.
    next_seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> TimerQueue<T> {
        TimerQueue::new()
    }
}

impl<T> TimerQueue<T> {
    /// An empty queue, its tables allocated at [`TIMER_TABLE_FLOOR`].
    pub fn new() -> TimerQueue<T> {
        TimerQueue {
            heap: BinaryHeap::from(new_table(TIMER_TABLE_FLOOR)),
            slots: new_table(TIMER_TABLE_FLOOR),
            free: BinaryHeap::from(new_table(TIMER_TABLE_FLOOR)),
            live: 0,
            next_seq: 0,
        }
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
        let generation = self.next_seq;
        self.next_seq += 1;
        let slot = match self.take_free_slot() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot { generation, payload: None });
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Slot { generation, payload: Some(payload) };
        self.heap.push(Entry { deadline_ns, seq: generation, slot });
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
            self.heap.retain(|entry| is_armed(slots, entry.slot, entry.seq));
        }
        self.drop_stale_top();
        self.give_back();
        Some(payload)
    }

    /// Whether the timer `handle` names is still armed.
    pub fn is_pending(&self, handle: TimerHandle) -> bool {
        is_armed(&self.slots, handle.slot, handle.generation)
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

    /// The lowest free slot, if any. Finding a dropped slot's index first means every
    /// listed index is a dropped slot's: the list is cleared, and only then may slots be
    /// created again (so no index is ever listed twice, or listed while armed).
    fn take_free_slot(&mut self) -> Option<usize> {
        let Reverse(slot) = self.free.pop()?;
        if slot < self.slots.len() {
            return Some(slot);
        }
        self.free.clear();
        None
    }

    /// Frees `slot`, whose timer is pending, and returns its payload.
    fn release(&mut self, slot: usize) -> T {
        self.free.push(Reverse(slot));
        self.live -= 1;
        self.slots[slot].payload.take().expect("a pending slot holds its payload")
    }

    fn is_stale(&self, entry: &Entry) -> bool {
        !is_armed(&self.slots, entry.slot, entry.seq)
    }

    fn drop_stale_top(&mut self) {
        while self.heap.peek().is_some_and(|top| self.is_stale(top)) {
            self.heap.pop();
        }
    }

    /// Drops the free slots at the end, forgets their indices once they outnumber the free
    /// slots still there, and shrinks the tables that are under a quarter full. Amortised
    /// O(1): each slot dropped or index forgotten was created by an insert, and each shrink
    /// follows Ω(len) removals (see [`crate::shrink`]).
    fn give_back(&mut self) {
        while self.slots.last().is_some_and(|slot| slot.payload.is_none()) {
            self.slots.pop();
        }
        let free_slots = self.slots.len() - self.live;
        if self.slots.is_empty() {
            self.free.clear();
        } else if self.free.len() > 2 * free_slots + STALE_SLACK {
            let len = self.slots.len();
            self.free.retain(|&Reverse(slot)| slot < len);
        }
        shrink_when_sparse(&mut self.slots, TIMER_TABLE_FLOOR);
        if let Some(capacity) = sparse_capacity(self.heap.len(), self.heap.capacity(), TIMER_TABLE_FLOOR) {
            self.heap.shrink_to(capacity);
        }
        // The free list holds about one index per slot whenever many timers fire at once:
        // it is sized by the slots, not by how many happen to be free right now.
        let free_demand = self.slots.len().max(self.free.len());
        if let Some(capacity) = sparse_capacity(free_demand, self.free.capacity(), TIMER_TABLE_FLOOR) {
            self.free.shrink_to(capacity);
        }
    }

    fn pop_due(&mut self, now_ns: u64) -> Option<T> {
        let top = *self.heap.peek().filter(|top| top.deadline_ns <= now_ns)?;
        self.heap.pop();
        let payload = self.release(top.slot);
        self.drop_stale_top();
        self.give_back();
        Some(payload)
    }

    /// Panics unless the queue's invariants hold.
    #[cfg(test)]
    fn check(&self) {
        let armed = self.slots.iter().filter(|slot| slot.payload.is_some()).count();
        assert_eq!(armed, self.live);
        assert!(self.slots.last().is_none_or(|slot| slot.payload.is_some()), "the last slot is armed");
        let len = self.slots.len();
        let mut listed: Vec<usize> = self.free.iter().map(|&Reverse(slot)| slot).filter(|&slot| slot < len).collect();
        listed.sort_unstable();
        let free: Vec<usize> = (0..len).filter(|&i| self.slots[i].payload.is_none()).collect();
        assert_eq!(listed, free, "every free slot listed once, no armed one");
        assert!(self.heap.peek().is_none_or(|top| !self.is_stale(top)), "the top is current");
        let current = self.heap.iter().filter(|entry| !self.is_stale(entry)).count();
        assert_eq!(current, self.live, "one current entry per armed slot");
        assert!(self.slots.iter().all(|slot| slot.generation < self.next_seq));
    }

    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.heap.len()
    }

    /// Slots in use (armed or free), and the capacities of the slots, the heap and the free
    /// list.
    #[cfg(test)]
    fn footprint(&self) -> Footprint {
        Footprint {
            slots: self.slots.len(),
            slots_capacity: self.slots.capacity(),
            heap_capacity: self.heap.capacity(),
            free_capacity: self.free.capacity(),
        }
    }
}

/// What a queue holds on to, for tests.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Footprint {
    slots: usize,
    slots_capacity: usize,
    heap_capacity: usize,
    free_capacity: usize,
}

#[cfg(test)]
impl Footprint {
    /// The largest of the three capacities.
    fn max_capacity(self) -> usize {
        self.slots_capacity.max(self.heap_capacity).max(self.free_capacity)
    }

    /// Every table is at exactly its floor.
    fn at_floor(self) -> bool {
        [self.slots_capacity, self.heap_capacity, self.free_capacity] == [TIMER_TABLE_FLOOR; 3]
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

    #[test]
    fn expiring_ten_thousand_timers_gives_the_memory_back() {
        let mut timers = TimerQueue::new();
        for i in 0..10_000u64 {
            timers.insert(i * 7 % 10_007, i);
        }
        assert!(timers.footprint().max_capacity() >= 10_000);
        assert_eq!(timers.expire(u64::MAX).count(), 10_000);
        let footprint = timers.footprint();
        assert_eq!(footprint.slots, 0);
        assert!(footprint.at_floor(), "{footprint:?}");
    }

    #[test]
    fn cancelling_ten_thousand_timers_gives_the_memory_back() {
        let mut timers = TimerQueue::new();
        let handles: Vec<TimerHandle> = (0..10_000u64).map(|i| timers.insert(1_000 + i, i)).collect();
        // In an order that neither follows the slots nor the deadlines.
        for k in 0..10_000 {
            let i = k * 7_919 % 10_000;
            assert_eq!(timers.cancel(handles[i]), Some(i as u64));
        }
        assert!(timers.is_empty());
        assert_eq!(timers.next_deadline(), None);
        let footprint = timers.footprint();
        assert_eq!(footprint.slots, 0);
        assert!(footprint.at_floor(), "{footprint:?}");
    }

    #[test]
    fn a_few_rearmed_timers_do_not_pin_the_memory_of_the_many_gone() {
        // A CPU that held 500 vCPUs keeps two; their timers sit in high slots at first.
        let mut timers = TimerQueue::new();
        let mut handles: Vec<TimerHandle> = (0..500u64).map(|v| timers.insert(1_000_000 + v, v)).collect();
        for v in (0..500).filter(|&v| v != 250 && v != 499) {
            assert_eq!(timers.cancel(handles[v]), Some(v as u64));
        }
        for now in 1..=3 {
            for v in [499, 250] {
                assert_eq!(timers.cancel(handles[v]), Some(v as u64));
                handles[v] = timers.insert(1_000_000 * (now + 1), v as u64);
            }
        }
        let footprint = timers.footprint();
        assert_eq!(timers.len(), 2);
        assert!(footprint.slots <= 2, "re-armed timers move to the lowest slots: {footprint:?}");
        assert!(footprint.at_floor(), "{footprint:?}");
        assert_eq!(timers.expire(u64::MAX).collect::<Vec<_>>(), [499, 250]);
    }

    #[test]
    fn a_queue_with_few_timers_comes_back_to_its_floor_whatever_it_held() {
        // A CPU's steady timers, re-armed (leaving stale entries), after peaks of any size.
        for peak in [0u64, 5, 40, 70, 300, 5_000] {
            for rest in 1..=8u64 {
                let mut timers = TimerQueue::new();
                let many: Vec<TimerHandle> = (0..peak).map(|i| timers.insert(1_000_000 + i, i)).collect();
                let mut steady: Vec<TimerHandle> = (0..rest).map(|i| timers.insert(2_000_000 + i, i)).collect();
                for handle in many {
                    timers.cancel(handle);
                }
                for round in 0..50u64 {
                    for (i, handle) in steady.iter_mut().enumerate() {
                        timers.cancel(*handle);
                        *handle = timers.insert(3_000_000 + round * 100 + i as u64, i as u64);
                    }
                    assert_eq!(timers.expire(round).count(), 0);
                }
                let footprint = timers.footprint();
                assert_eq!(timers.len(), rest as usize);
                assert!(footprint.at_floor(), "peak {peak}, rest {rest}: {footprint:?}");
            }
        }
    }

    #[test]
    fn a_queue_hovering_around_one_size_never_reallocates() {
        let mut timers = TimerQueue::new();
        let mut deadline = 0;
        let mut fill = |timers: &mut TimerQueue<u64>, count: usize| {
            for _ in 0..count {
                deadline += 1;
                timers.insert(deadline, deadline);
            }
        };
        fill(&mut timers, 100);
        let mut settled = None;
        for round in 0..50 {
            // The earliest 60 fire (the oldest), 60 new ones come: between 40 and 100 pending.
            let now = timers.next_deadline().unwrap() + 59;
            assert_eq!(timers.expire(now).count(), 60);
            fill(&mut timers, 60);
            let footprint = timers.footprint();
            if round >= 2 {
                let first = *settled.get_or_insert(footprint);
                assert_eq!(footprint.max_capacity(), first.max_capacity(), "round {round}: {footprint:?}");
                assert_eq!(
                    (footprint.slots_capacity, footprint.heap_capacity, footprint.free_capacity),
                    (first.slots_capacity, first.heap_capacity, first.free_capacity),
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn an_old_handle_never_matches_a_slot_dropped_and_created_again() {
        let mut timers = TimerQueue::new();
        let old: Vec<TimerHandle> = (0..10_000u64).map(|i| timers.insert(i, i)).collect();
        assert_eq!(timers.expire(u64::MAX).count(), 10_000);
        assert_eq!(timers.footprint().slots, 0, "every slot was dropped");
        let new: Vec<TimerHandle> = (0..10_000u64).map(|i| timers.insert(i, 10_000 + i)).collect();
        for (old, new) in old.iter().zip(&new) {
            assert_eq!(old.slot, new.slot, "created again at the same index");
            assert!(!timers.is_pending(*old));
            assert_eq!(timers.cancel(*old), None);
            assert!(timers.is_pending(*new));
        }
        assert_eq!(timers.len(), 10_000);
        assert_eq!(timers.expire(u64::MAX).collect::<Vec<_>>(), (10_000..20_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_stale_entry_of_a_dropped_slot_never_fires_its_successor() {
        let mut timers = TimerQueue::new();
        let first = timers.insert(10, "first");
        let dropped = timers.insert(100, "dropped");
        assert_eq!(timers.cancel(dropped), Some("dropped"));
        assert_eq!(timers.footprint().slots, 1, "the last slot, free, is dropped at once");
        let successor = timers.insert(200, "successor");
        assert_eq!(successor.slot, dropped.slot);
        assert_eq!(timers.expire(150).collect::<Vec<_>>(), ["first"], "the entry at 100 is stale");
        assert!(!timers.is_pending(first));
        assert!(!timers.is_pending(dropped));
        assert_eq!(timers.cancel(dropped), None);
        assert_eq!(timers.next_deadline(), Some(200));
        assert_eq!(timers.expire(u64::MAX).collect::<Vec<_>>(), ["successor"]);
    }

    #[test]
    fn random_inserts_cancels_and_expiries_agree_with_a_simple_model() {
        use std::collections::BTreeMap;
        let mut timers = TimerQueue::new();
        // (deadline, insertion number) -> (handle, payload): the order timers must fire in.
        let mut model: BTreeMap<(u64, u64), (TimerHandle, u64)> = BTreeMap::new();
        let mut gone: Vec<TimerHandle> = Vec::new();
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut now = 0;
        let (mut most, mut emptied, mut big) = (0, 0, false);
        for n in 0..60_000u64 {
            // Phases that grow to hundreds of timers and shrink back to none.
            let growing = (n / 5_000) % 2 == 0;
            match next() % 8 {
                0..=3 if growing || next() % 3 == 0 => {
                    let deadline = now + next() % 100_000;
                    let handle = timers.insert(deadline, n);
                    model.insert((deadline, n), (handle, n));
                }
                4 | 5 if !model.is_empty() => {
                    let key = *model.keys().nth((next() % model.len() as u64) as usize).unwrap();
                    let (handle, payload) = model.remove(&key).unwrap();
                    assert_eq!(timers.cancel(handle), Some(payload));
                    gone.push(handle);
                }
                6 => {
                    now += next() % if growing { 20 } else { 2_000 };
                    let due: Vec<u64> = timers.expire(now).collect();
                    let expected: Vec<u64> = model.range(..(now + 1, 0)).map(|(_, &(_, payload))| payload).collect();
                    assert_eq!(due, expected);
                    for key in model.range(..(now + 1, 0)).map(|(&key, _)| key).collect::<Vec<_>>() {
                        gone.push(model.remove(&key).unwrap().0);
                    }
                }
                _ => {
                    if let Some(&handle) = gone.get((next() % (gone.len() as u64 + 1)) as usize) {
                        assert!(!timers.is_pending(handle));
                        assert_eq!(timers.cancel(handle), None);
                    }
                }
            }
            if n % 97 == 0 {
                timers.check();
            }
            assert_eq!(timers.len(), model.len());
            assert_eq!(timers.next_deadline(), model.keys().next().map(|&(deadline, _)| deadline));
            most = most.max(model.len());
            big |= model.len() >= 100;
            if big && model.is_empty() {
                big = false;
                emptied += 1;
                let footprint = timers.footprint();
                assert!(footprint.slots == 0 && footprint.at_floor(), "{footprint:?}");
            }
        }
        assert!(most >= 500 && emptied >= 3, "the phases grow and drain: {most} {emptied}");
        for handle in gone {
            assert!(!timers.is_pending(handle));
        }
        timers.check();
    }
}
