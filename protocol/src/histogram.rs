//! The log-linear histogram of nanosecond values both sides share: 16 buckets per power of
//! two (each at most 6.25% wide), exact below 16, covering all of `u64`. The workers record
//! timer lateness and round-trip times in a [`Histogram`] and print its non-empty buckets
//! by index (`crate::record`); the host tool reads the indices back and turns them into
//! values with [`bucket_low`].
//!
//! The bucket functions are `stress/PROTOCOL.md`'s formulas, defined here only. This module
//! must never allocate: the workers have no heap.

/// Buckets covering every `u64`: `bucket_of(u64::MAX).index() + 1`.
pub const BUCKETS: usize = 16 * (64 - 3);

/// A bucket index, always below [`BUCKETS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket(u16);

impl Bucket {
    /// The bucket with this index, if it exists.
    pub const fn new(index: u64) -> Option<Self> {
        if index < BUCKETS as u64 {
            Some(Self(index as u16))
        } else {
            None
        }
    }

    /// The bucket's index.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The bucket after this one (none after the last).
    pub const fn next(self) -> Option<Self> {
        Self::new(self.0 as u64 + 1)
    }

    /// The smallest value in the bucket.
    pub const fn low(self) -> u64 {
        bucket_low(self)
    }

    /// The first value above this bucket, saturating at `u64::MAX` for the last bucket.
    pub const fn end(self) -> u64 {
        match self.next() {
            Some(next) => bucket_low(next),
            None => u64::MAX,
        }
    }
}

/// The bucket holding `value`: `value` itself below 16, else `16 * (p - 3) + m` with
/// `p = floor(log2(value))` and `m` the four bits after the leading one.
pub const fn bucket_of(value: u64) -> Bucket {
    if value < 16 {
        return Bucket(value as u16);
    }
    let p = 63 - value.leading_zeros() as u64;
    let m = (value >> (p - 4)) & 15;
    Bucket((16 * (p - 3) + m) as u16)
}

/// The smallest value in `bucket`: the index below 16, else `(16 + i % 16) << (i / 16 - 1)`.
pub const fn bucket_low(bucket: Bucket) -> u64 {
    let i = bucket.0 as u64;
    if i < 16 {
        i
    } else {
        (16 + i % 16) << (i / 16 - 1)
    }
}

/// A worker's histogram: counts per bucket, the number of samples and the largest, in a
/// fixed array (3.9 KiB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: [u32; BUCKETS],
    samples: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// No samples.
    pub const fn new() -> Self {
        Self {
            counts: [0; BUCKETS],
            samples: 0,
            max: 0,
        }
    }

    /// Adds one sample.
    pub fn record(&mut self, value: u64) {
        let count = &mut self.counts[bucket_of(value).index()];
        *count = count.saturating_add(1);
        self.samples += 1;
        self.max = self.max.max(value);
    }

    /// Samples recorded.
    pub const fn samples(&self) -> u64 {
        self.samples
    }

    /// The largest sample (0 with none).
    pub const fn max(&self) -> u64 {
        self.max
    }

    /// The non-empty buckets with their counts, lowest first.
    pub fn buckets(&self) -> impl Iterator<Item = (Bucket, u32)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .map(|(index, &count)| (Bucket(index as u16), count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn the_protocols_examples_hold() {
        assert_eq!(bucket_of(0).index(), 0);
        assert_eq!(bucket_of(15).index(), 15);
        assert_eq!(bucket_of(16).index(), 16);
        assert_eq!(bucket_of(31).index(), 31);
        assert_eq!(bucket_of(32).index(), 32);
        assert_eq!(bucket_of(34).index(), 33);
        assert_eq!(bucket_of(u64::MAX).index(), BUCKETS - 1);
        assert_eq!(bucket_low(Bucket::new(33).unwrap()), 34);
        assert_eq!(bucket_low(Bucket::new(16 * 14 + 4).unwrap()), 20 << 13);
    }

    #[test]
    fn every_bucket_low_is_its_own_bucket_and_they_rise_by_at_most_a_sixteenth() {
        for i in 0..BUCKETS as u64 {
            let b = Bucket::new(i).unwrap();
            assert_eq!(bucket_of(b.low()), b);
            if let Some(next) = b.next() {
                assert!(b.low() < next.low());
                assert!((next.low() - b.low()) * 16 <= b.low().max(16), "bucket {i}");
            }
        }
    }

    #[test]
    fn out_of_range_indices_are_no_bucket() {
        assert!(Bucket::new(BUCKETS as u64).is_none());
        assert!(Bucket::new(u64::MAX).is_none());
        assert_eq!(Bucket::new(BUCKETS as u64 - 1).unwrap().end(), u64::MAX);
    }

    #[test]
    fn samples_count_and_keep_the_maximum() {
        let mut hist = Histogram::new();
        assert_eq!((hist.samples(), hist.max()), (0, 0));
        assert_eq!(hist.buckets().count(), 0);
        for v in [5, 5, 1000, 40] {
            hist.record(v);
        }
        assert_eq!((hist.samples(), hist.max()), (4, 1000));
        let buckets: Vec<_> = hist.buckets().collect();
        assert_eq!(
            buckets,
            [(bucket_of(5), 2), (bucket_of(40), 1), (bucket_of(1000), 1)]
        );
    }

    proptest! {
        /// Every value lies in its bucket: `low <= v < end`.
        #[test]
        fn every_value_lies_in_its_bucket(v in any::<u64>(), shift in 0u32..64) {
            for value in [v, v >> shift] {
                let b = bucket_of(value);
                prop_assert!(b.low() <= value);
                prop_assert!(b.next().is_none() || value < b.end());
            }
        }
    }
}
