//! A log-linear histogram of nanosecond values: 16 buckets per power of two (each at most
//! 6.25% wide), exact below 16, covering all of `u64`, plus the sample count and the exact
//! maximum. The workers record timer lateness and round-trip times in it.
//!
//! The bucket functions are the ones in `stress/PROTOCOL.md`, which the host tool inverts:
//! [`bucket_of`] and [`bucket_low`] must never change without it.

/// Buckets needed for every `u64`: `bucket_of(u64::MAX) + 1`.
pub const BUCKETS: usize = 16 * (64 - 3);

/// The bucket holding `value`: `value` itself below 16, else `16 * (p - 3) + m` with
/// `p = floor(log2(value))` and `m` the four bits after the leading one.
pub const fn bucket_of(value: u64) -> usize {
    if value < 16 {
        return value as usize;
    }
    let p = 63 - value.leading_zeros();
    let m = (value >> (p - 4)) & 15;
    (16 * (p - 3) + m as u32) as usize
}

/// The smallest value in bucket `index` (`index < BUCKETS`).
pub const fn bucket_low(index: usize) -> u64 {
    if index < 16 {
        return index as u64;
    }
    ((16 + index % 16) as u64) << (index / 16 - 1)
}

/// Counts per bucket, the number of samples and the largest.
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
        let count = &mut self.counts[bucket_of(value)];
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

    /// The non-empty buckets as (index, count), lowest first.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .map(|(index, &count)| (index, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn the_protocols_examples_hold() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(15), 15);
        assert_eq!(bucket_of(16), 16);
        assert_eq!(bucket_of(31), 31);
        assert_eq!(bucket_of(32), 32);
        assert_eq!(bucket_of(34), 33);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn every_value_lies_within_its_bucket() {
        let mut values: Vec<u64> = (0..5000).collect();
        for shift in 4..64 {
            let power = 1u64 << shift;
            values.extend([power - 1, power, power + 1, power + power / 3]);
        }
        values.push(u64::MAX);
        for v in values {
            let i = bucket_of(v);
            assert!(bucket_low(i) <= v, "{v} below bucket {i}");
            if i + 1 < BUCKETS {
                assert!(v < bucket_low(i + 1), "{v} beyond bucket {i}");
            }
        }
    }

    #[test]
    fn buckets_are_at_most_one_sixteenth_wide() {
        for i in 16..BUCKETS - 1 {
            let (low, next) = (bucket_low(i), bucket_low(i + 1));
            assert!(next > low);
            assert!((next - low) * 16 <= low, "bucket {i}: {low}..{next}");
        }
    }

    #[test]
    fn samples_count_and_keep_the_maximum() {
        let mut hist = Histogram::new();
        assert_eq!((hist.samples(), hist.max()), (0, 0));
        assert_eq!(hist.buckets().count(), 0);
        for v in [5, 5, 1000, 40] {
            hist.record(v);
        }
        assert_eq!(hist.samples(), 4);
        assert_eq!(hist.max(), 1000);
        let buckets: Vec<_> = hist.buckets().collect();
        assert_eq!(buckets, [(5, 2), (bucket_of(40), 1), (bucket_of(1000), 1)]);
    }
}
