//! When the per-CPU scheduler tables give memory back: the one shrink policy shared by the
//! [`RunQueue`](crate::RunQueue), the [`TimerQueue`](crate::TimerQueue) and the hypervisor's
//! own per-CPU lists of vCPUs.
//!
//! A table grows (by doubling) to the most vCPUs or timers a CPU ever held; without this it
//! would keep that capacity after the domains are gone. A table is shrunk once it is less
//! than a quarter full, to twice its length, and never below [`MIN_TABLE_CAPACITY`]. The gap
//! between the quarter and the half is the hysteresis: after a shrink the table must lose
//! half its entries again before the next one, and double before it grows, so a table that
//! hovers around one size never reallocates, and each reallocation (O(len)) is paid for by
//! the Ω(len) pushes or removals before it: amortised O(1). It never allocates or frees
//! anything itself beyond that one `shrink_to` (and the first allocation of [`new_table`]).
//!
//! A table starts at its floor ([`new_table`], [`MIN_TABLE_CAPACITY`] unless its owner needs
//! more) rather than empty, and a table holding at most half its floor is shrunk straight to
//! the floor, whatever the quarter rule says (a cost of O(floor), paid for by the Ω(floor)
//! removals since it last grew past the floor). So the capacity of a table that holds few
//! entries is its floor, whatever it held before: a CPU's tables at rest (a few vCPUs and
//! timers) take the same heap after a thousand domains came and went as before (the
//! containment cycles of issue 15 check the heap to the byte), instead of a size that
//! depends on the history (4 or 8 for a table that never held more, twice the floor within
//! the hysteresis band).

use alloc::vec::Vec;

/// The capacity below which a table is never shrunk, and which it has from its creation: a
/// CPU's few steady vCPUs and timers fit, so a queue that keeps emptying and refilling does
/// not reallocate each time.
pub const MIN_TABLE_CAPACITY: usize = 16;

/// An empty table with room for `floor` entries (its floor, allocated now): pass the same
/// `floor` to [`shrink_when_sparse`].
pub fn new_table<T>(floor: usize) -> Vec<T> {
    Vec::with_capacity(floor)
}

/// The capacity a table of `len` entries and `capacity` slots should shrink to, or `None` to
/// keep it: twice `len`, at least `min_capacity`, if that is less than `capacity` and the
/// table is less than a quarter full or holds at most half of `min_capacity` (then the new
/// capacity is exactly `min_capacity`).
pub fn sparse_capacity(len: usize, capacity: usize, min_capacity: usize) -> Option<usize> {
    let target = len.saturating_mul(2).max(min_capacity);
    (target < capacity && (len < capacity / 4 || target == min_capacity)).then_some(target)
}

/// Shrinks `vec` as [`sparse_capacity`] says (O(1) unless it shrinks; amortised O(1)).
pub fn shrink_when_sparse<T>(vec: &mut Vec<T>, min_capacity: usize) {
    if let Some(capacity) = sparse_capacity(vec.len(), vec.capacity(), min_capacity) {
        vec.shrink_to(capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_table_under_a_quarter_full_shrinks_and_to_twice_its_length() {
        assert_eq!(sparse_capacity(100, 512, 16), Some(200));
        assert_eq!(sparse_capacity(128, 512, 16), None, "exactly a quarter full");
        assert_eq!(sparse_capacity(127, 512, 16), Some(254));
        assert_eq!(sparse_capacity(0, 512, 16), Some(16), "never below the minimum");
        assert_eq!(sparse_capacity(0, 16, 16), None, "already at the minimum");
        assert_eq!(sparse_capacity(3, 20, 16), Some(16), "down to the minimum, no further");
        assert_eq!(sparse_capacity(20, 100, 16), Some(40));
        assert_eq!(sparse_capacity(0, 0, 16), None);
        assert_eq!(sparse_capacity(8, 32, 16), Some(16), "at most half the minimum: to the minimum");
        assert_eq!(sparse_capacity(8, 20, 16), Some(16));
        assert_eq!(sparse_capacity(9, 32, 16), None, "more than half the minimum: the quarter rule");
        assert_eq!(sparse_capacity(3, 8, 16), None, "never grows a table");
    }

    #[test]
    fn a_table_hovering_around_one_size_never_reallocates() {
        let mut table: Vec<u32> = Vec::new();
        table.extend(0..1000);
        let capacity = table.capacity();
        for _ in 0..10 {
            while table.len() > 300 {
                table.pop();
                shrink_when_sparse(&mut table, MIN_TABLE_CAPACITY);
            }
            table.extend(0..700);
            assert_eq!(table.capacity(), capacity);
        }
    }

    #[test]
    fn a_table_holding_few_comes_back_to_exactly_the_minimum_whatever_it_held() {
        for peak in [0usize, 3, 9, 17, 100, 5_000] {
            for rest in 0..=MIN_TABLE_CAPACITY / 2 {
                let mut table: Vec<u32> = new_table(MIN_TABLE_CAPACITY);
                table.extend((0..peak.max(rest)).map(|i| i as u32));
                while table.len() > rest {
                    table.pop();
                    shrink_when_sparse(&mut table, MIN_TABLE_CAPACITY);
                }
                // One more removal and push at rest: the state a removal leaves.
                if let Some(last) = table.pop() {
                    shrink_when_sparse(&mut table, MIN_TABLE_CAPACITY);
                    table.push(last);
                } else {
                    shrink_when_sparse(&mut table, MIN_TABLE_CAPACITY);
                }
                assert_eq!(table.capacity(), MIN_TABLE_CAPACITY, "peak {peak}, rest {rest}");
            }
        }
    }

    #[test]
    fn an_emptied_table_comes_back_to_the_minimum() {
        let mut table: Vec<u64> = (0..10_000).collect();
        let mut shrinks = 0;
        while table.pop().is_some() {
            let before = table.capacity();
            shrink_when_sparse(&mut table, MIN_TABLE_CAPACITY);
            shrinks += usize::from(table.capacity() != before);
        }
        assert!(table.capacity() <= MIN_TABLE_CAPACITY);
        assert!(shrinks <= 12, "each shrink halves at least: {shrinks}");
    }
}
