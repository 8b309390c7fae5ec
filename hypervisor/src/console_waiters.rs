//! The list of `console_io` writers that wait, blocked, for room in the console buffer
//! (`pv::console::wait_for_room`, woken by its `wake_waiters`): domains, oldest first, each
//! listed at most once, with the set of its vCPUs that listed themselves (a bit per vCPU
//! id). Pure data, here so that its bounds are tested on the host; `pv::console` keeps one
//! under a lock and decides whom to wake.
//!
//! Why by domain and at most once: a waiting vCPU is woken by any event, re-enters its
//! write (the continuation), finds the buffer still full and waits again. A list of one
//! entry per wait grew by one entry per event: a guest sending events to its own waiting
//! vCPU from another listed that vCPU thousands of times (`iso-console-waiters`), filling
//! the list (the fixed 4096 entries) so that every other domain's writer found no room in
//! it, and making every pass over it (on every trap exit of every CPU) as long. Listed by
//! domain, the list never holds more than one entry per domain id, so it has room for
//! every domain there can be and a pass visits each waiting domain once.
//!
//! It never decides whether a vCPU still waits (the vCPU's own flag says that) and never
//! allocates: its arrays are fixed at build time.

/// vCPU ids it can list: 0 to 31 (a `u32` of bits).
pub const MAX_VCPUS: u32 = u32::BITS;
const _: () = assert!(abi::control::MAX_VCPUS <= MAX_VCPUS);

/// Waiting domains in the order they first listed a vCPU, and each one's listed vCPUs;
/// domain ids 0 to `SLOTS - 1` (the hypervisor: every id a domain can have).
pub struct Waiters<const SLOTS: usize> {
    /// A ring of domain ids, `len` of them from `head`.
    order: [u16; SLOTS],
    /// By domain id: the vCPUs listed (bit n: vCPU n); non-zero exactly for the ids in
    /// `order`.
    vcpus: [u32; SLOTS],
    head: usize,
    len: usize,
}

impl<const SLOTS: usize> Default for Waiters<SLOTS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const SLOTS: usize> Waiters<SLOTS> {
    pub const fn new() -> Waiters<SLOTS> {
        Waiters { order: [0; SLOTS], vcpus: [0; SLOTS], head: 0, len: 0 }
    }

    /// Domains listed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lists vCPU `vcpu` of domain `domain`: the domain goes to the back unless it is listed
    /// already (then it keeps its place). False, and nothing listed, for an id out of range.
    pub fn add(&mut self, domain: u16, vcpu: u32) -> bool {
        let Some(bit) = 1u32.checked_shl(vcpu) else { return false };
        let Some(set) = self.vcpus.get_mut(domain as usize) else { return false };
        let listed = *set != 0;
        *set |= bit;
        if !listed {
            self.push(domain);
        }
        true
    }

    /// Takes the oldest domain off the list with its listed vCPUs.
    pub fn take(&mut self) -> Option<(u16, u32)> {
        if self.len == 0 {
            return None;
        }
        let domain = self.order[self.head];
        self.head = (self.head + 1) % SLOTS;
        self.len -= 1;
        let set = core::mem::take(&mut self.vcpus[domain as usize]);
        Some((domain, set))
    }

    /// Puts back a domain [`take`](Self::take) took, with the vCPUs of it that still wait
    /// (none: it is not listed), at the back, or merged into its entry if it listed itself
    /// again meanwhile.
    pub fn put_back(&mut self, domain: u16, vcpus: u32) {
        let Some(set) = self.vcpus.get_mut(domain as usize) else { return };
        if vcpus == 0 {
            return;
        }
        let listed = *set != 0;
        *set |= vcpus;
        if !listed {
            self.push(domain);
        }
    }

    /// Appends a domain that is not listed: one entry per id, so there is always room.
    fn push(&mut self, domain: u16) {
        debug_assert!(self.len < SLOTS, "one entry per domain id");
        self.order[(self.head + self.len) % SLOTS] = domain;
        self.len += 1;
    }
}

/// The vCPU ids in a set of [`Waiters::take`].
pub fn vcpu_ids(set: u32) -> impl Iterator<Item = u32> {
    (0..MAX_VCPUS).filter(move |&id| set & (1 << id) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As many ids as the hypervisor's list.
    const SLOTS: usize = 4097;

    fn boxed() -> Box<Waiters<SLOTS>> {
        Box::new(Waiters::new())
    }

    #[test]
    fn a_vcpu_that_waits_again_is_listed_once() {
        let mut w = boxed();
        for _ in 0..10_000 {
            assert!(w.add(7, 0));
        }
        assert_eq!(w.len(), 1);
        assert_eq!(w.take(), Some((7, 1)));
        assert!(w.is_empty());
    }

    #[test]
    fn domains_come_out_oldest_first_with_their_vcpus() {
        let mut w = boxed();
        w.add(3, 1);
        w.add(5, 0);
        w.add(3, 4);
        w.add(0, 31);
        assert_eq!(w.take(), Some((3, 0b10010)));
        assert_eq!(w.take(), Some((5, 1)));
        assert_eq!(w.take(), Some((0, 1 << 31)));
        assert_eq!(w.take(), None);
    }

    #[test]
    fn every_domain_there_can_be_fits_with_every_vcpu() {
        let mut w = boxed();
        for vcpu in 0..MAX_VCPUS {
            for domain in 0..SLOTS as u16 {
                assert!(w.add(domain, vcpu));
            }
        }
        assert_eq!(w.len(), SLOTS);
        for domain in 0..SLOTS as u16 {
            assert_eq!(w.take(), Some((domain, u32::MAX)));
        }
        assert!(w.is_empty());
    }

    #[test]
    fn ids_out_of_range_are_refused() {
        let mut w = boxed();
        assert!(!w.add(SLOTS as u16, 0));
        assert!(!w.add(0, MAX_VCPUS));
        assert!(w.is_empty());
    }

    #[test]
    fn put_back_goes_to_the_back_or_merges() {
        let mut w = boxed();
        w.add(1, 0);
        w.add(2, 0);
        let (domain, set) = w.take().unwrap();
        assert_eq!((domain, set), (1, 1));
        w.put_back(domain, set);
        assert_eq!(w.len(), 2);
        // Listed again meanwhile: one entry, the sets merged.
        let (domain, _) = w.take().unwrap();
        assert_eq!(domain, 2);
        w.add(2, 3);
        w.put_back(2, 1);
        assert_eq!(w.len(), 2);
        assert_eq!(w.take(), Some((1, 1)));
        assert_eq!(w.take(), Some((2, 0b1001)));
        // Nothing left to wait: not listed.
        w.put_back(4, 0);
        assert!(w.is_empty());
    }

    #[test]
    fn the_vcpu_ids_of_a_set() {
        assert_eq!(vcpu_ids(0b1000_0101).collect::<Vec<_>>(), [0, 2, 7]);
        assert_eq!(vcpu_ids(0).count(), 0);
        assert_eq!(vcpu_ids(u32::MAX).count(), 32);
    }
}
