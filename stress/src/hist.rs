//! Log-linear latency histograms as the stress guests report them: the buckets are the
//! `protocol` crate's ([`bucket_of`], [`bucket_low`], re-exported here), the one definition
//! the guests record with. This module merges the histograms of several domains and
//! computes the figures the report prints (percentiles, maximum, cumulative distribution).
//!
//! Called by the log collector (which fills histograms from `hist` records), the report
//! and the SVG plots. It never defines a bucket: the protocol does.

use std::collections::BTreeMap;

pub use protocol::histogram::{bucket_low, bucket_of, Bucket, BUCKETS};

/// A percentile the report prints, in parts per ten thousand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Percentile {
    P50,
    P99,
    P999,
}

impl Percentile {
    /// Parts per ten thousand below the percentile.
    fn per_10k(self) -> u128 {
        match self {
            Self::P50 => 5_000,
            Self::P99 => 9_900,
            Self::P999 => 9_990,
        }
    }
}

/// Counts per bucket plus the exact maximum the guests reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: BTreeMap<Bucket, u64>,
    max: Option<u64>,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `count` samples to `bucket`.
    pub fn add(&mut self, bucket: Bucket, count: u64) {
        if count > 0 {
            let slot = self.counts.entry(bucket).or_insert(0);
            *slot = slot.saturating_add(count);
        }
    }

    /// Records one exact value (used where single samples are known, e.g. tests).
    pub fn record(&mut self, value: u64) {
        self.add(bucket_of(value), 1);
        self.note_max(value);
    }

    /// Notes an exact maximum (a `result` line's `max_ns`).
    pub fn note_max(&mut self, max: u64) {
        self.max = Some(self.max.map_or(max, |m| m.max(max)));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (&bucket, &count) in &other.counts {
            self.add(bucket, count);
        }
        if let Some(max) = other.max {
            self.note_max(max);
        }
    }

    /// The number of samples.
    pub fn samples(&self) -> u64 {
        self.counts
            .values()
            .fold(0, |sum, &c| sum.saturating_add(c))
    }

    /// True without samples.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The non-empty buckets with their counts, lowest first.
    pub fn buckets(&self) -> impl Iterator<Item = (Bucket, u64)> + '_ {
        self.counts.iter().map(|(&b, &c)| (b, c))
    }

    /// The low bound of the bucket holding the percentile's rank
    /// (`ceil(samples * p)`, at least 1); none without samples.
    pub fn percentile(&self, p: Percentile) -> Option<u64> {
        let total: u128 = self.counts.values().map(|&c| u128::from(c)).sum();
        let rank = (total * p.per_10k()).div_ceil(10_000).max(1);
        let mut seen = 0u128;
        for (bucket, count) in self.buckets() {
            seen += u128::from(count);
            if seen >= rank {
                return Some(bucket_low(bucket));
            }
        }
        None
    }

    /// The exact maximum when a guest reported one, else the low bound of the highest
    /// non-empty bucket; none without samples.
    pub fn max(&self) -> Option<u64> {
        let highest = self.counts.keys().next_back().map(|&b| bucket_low(b));
        self.max.or(highest)
    }

    /// The cumulative distribution: for each non-empty bucket, the value just above it
    /// and the fraction of samples below that value.
    pub fn cdf(&self) -> Vec<(u64, f64)> {
        let total = self.samples() as f64;
        let mut seen = 0u64;
        self.buckets()
            .map(|(bucket, count)| {
                seen = seen.saturating_add(count);
                (bucket.end(), seen as f64 / total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_on_known_data() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        // Rank 500 is 500_000, rank 990 is 990_000, rank 999 is 999_000.
        assert_eq!(
            h.percentile(Percentile::P50),
            Some(bucket_low(bucket_of(500_000)))
        );
        assert_eq!(
            h.percentile(Percentile::P99),
            Some(bucket_low(bucket_of(990_000)))
        );
        assert_eq!(
            h.percentile(Percentile::P999),
            Some(bucket_low(bucket_of(999_000)))
        );
        assert_eq!(h.max(), Some(1_000_000));
        assert_eq!(h.samples(), 1000);
    }

    #[test]
    fn percentile_rank_rounds_up() {
        let mut h = Histogram::new();
        h.add(bucket_of(10), 99);
        h.add(bucket_of(20), 1);
        // p99 of 100 samples is rank 99: still the first bucket; p99.9 is rank 100.
        assert_eq!(h.percentile(Percentile::P99), Some(10));
        assert_eq!(h.percentile(Percentile::P999), Some(20));
        // Without an exact maximum, the highest bucket's low bound stands in.
        assert_eq!(h.max(), Some(20));
    }

    #[test]
    fn empty_histogram_has_no_figures() {
        let h = Histogram::new();
        assert!(h.is_empty());
        assert_eq!(h.percentile(Percentile::P50), None);
        assert_eq!(h.max(), None);
        assert!(h.cdf().is_empty());
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_larger_max() {
        let mut a = Histogram::new();
        a.record(100);
        a.record(100);
        let mut b = Histogram::new();
        b.record(100);
        b.record(5000);
        a.merge(&b);
        assert_eq!(a.samples(), 4);
        assert_eq!(
            a.buckets().collect::<Vec<_>>(),
            [(bucket_of(100), 3), (bucket_of(5000), 1)]
        );
        assert_eq!(a.max(), Some(5000));
    }

    #[test]
    fn counts_saturate_instead_of_overflowing() {
        let mut h = Histogram::new();
        h.add(bucket_of(1), u64::MAX);
        h.add(bucket_of(1), 5);
        h.add(bucket_of(2), u64::MAX);
        assert_eq!(h.samples(), u64::MAX);
        // Ranks are computed over the true total (2^65 - 2 samples).
        assert_eq!(h.percentile(Percentile::P50), Some(1));
        assert_eq!(h.percentile(Percentile::P999), Some(2));
    }

    #[test]
    fn cdf_ends_at_one() {
        let mut h = Histogram::new();
        h.add(bucket_of(100), 3);
        h.add(bucket_of(1000), 1);
        let cdf = h.cdf();
        assert_eq!(cdf.len(), 2);
        assert_eq!(cdf[0], (bucket_of(100).end(), 0.75));
        assert_eq!(cdf[1].1, 1.0);
    }
}
