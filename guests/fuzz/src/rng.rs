//! The fuzzer's random numbers: SplitMix64, seeded from the command line's `seed=`, so
//! that a run is replayed exactly by its seed (each vCPU draws from its own stream,
//! [`Rng::for_vcpu`]). Not cryptographic; fast, and every 64-bit output is possible.
//!
//! Used by the generators ([`crate::gen`]) and the guest's op loop. This module must never
//! read anything but its own state: no clock, no address, so that a seed means one sequence.

/// A SplitMix64 generator.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The stream of `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The stream vCPU `vcpu` of a run seeded `seed` draws from: distinct per vCPU.
    pub fn for_vcpu(seed: u64, vcpu: u32) -> Self {
        let mut mixer = Self::new(seed ^ (u64::from(vcpu) << 56 | 0x5eed));
        Self::new(mixer.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for a fuzzer, and no division.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        let span = high - low;
        if span == u64::MAX {
            return self.next_u64();
        }
        low + self.below(span + 1)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// One element of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// An index drawn by weight: `weights[i]` / sum; the last index if all are 0.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut draw = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if draw < u64::from(w) {
                return i;
            }
            draw -= u64::from(w);
        }
        weights.len().saturating_sub(1)
    }

    /// A number of `bits` random low bits.
    pub fn bits(&mut self, bits: u32) -> u64 {
        if bits >= 64 {
            self.next_u64()
        } else {
            self.next_u64() & ((1 << bits) - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_is_one_sequence() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn vcpus_get_different_streams() {
        let mut v0 = Rng::for_vcpu(7, 0);
        let mut v1 = Rng::for_vcpu(7, 1);
        assert_ne!(v0.next_u64(), v1.next_u64());
        assert_eq!(Rng::for_vcpu(7, 1).next_u64(), Rng::for_vcpu(7, 1).next_u64());
    }

    #[test]
    fn ranges_hold() {
        let mut rng = Rng::new(3);
        for _ in 0..10_000 {
            assert!(rng.below(10) < 10);
            let x = rng.between(5, 9);
            assert!((5..=9).contains(&x));
            assert!(rng.bits(12) < 4096);
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.between(4, 4), 4);
        let any = rng.between(0, u64::MAX);
        let _ = any;
    }

    #[test]
    fn weights_are_followed() {
        let mut rng = Rng::new(9);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[rng.weighted(&[1, 0, 2])] += 1;
        }
        assert_eq!(counts[1], 0, "weight 0 is never drawn");
        assert!(counts[2] > counts[0] * 3 / 2, "{counts:?}");
        assert_eq!(rng.weighted(&[0, 0]), 1);
    }
}
