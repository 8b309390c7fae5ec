//! The console's buffer: one ring of whole lines, in the order they were written, each
//! tagged with who wrote it (the hypervisor or a domain), so that lines are printed later,
//! in bounded slices, by whoever has time (see the image's `logger`), and so that one
//! domain cannot take more than its share of the ring.
//!
//! Pure and host-tested. The image keeps one [`LogRing`] behind a lock: writers
//! [`LogRing::push`] formatted lines, the one CPU draining at a time [`LogRing::take`]s
//! their bytes for the UART. A line is pushed whole or not at all: a refusal
//! ([`Refused`]) leaves the ring as it was, and the writer decides whether to wait
//! (a guest's console write stops and continues later) or to drop and count it (the
//! hypervisor's own lines, which cannot wait). This module never allocates.

/// The owner tag of the hypervisor's own lines.
pub const HYPERVISOR: u16 = u16::MAX;
/// Owners whose queued bytes are counted (domain ids 0 to `OWNERS - 1`; the hypervisor's
/// own lines are counted apart).
pub const OWNERS: usize = 4097;
/// Bytes of the header before each line: owner and length, both u16 little-endian.
pub const HEADER: usize = 4;
/// The longest line a record holds.
pub const MAX_LINE: usize = u16::MAX as usize;

/// How much of the ring a push may fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The most bytes (headers included) the owner may have queued after the push.
    pub own: usize,
    /// The most bytes (headers included) all owners may have queued after the push.
    pub all: usize,
}

/// Why a line was not queued; the ring is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The owner has its share queued already.
    OwnerFull,
    /// The ring (or the part of it the limit allows) is full.
    Full,
    /// Longer than [`MAX_LINE`].
    TooLong,
}

/// A line part-way through [`LogRing::take`].
#[derive(Clone, Copy, Debug)]
struct Taking {
    owner: u16,
    len: usize,
    left: usize,
}

/// A ring of `N` bytes of tagged lines.
pub struct LogRing<const N: usize> {
    bytes: [u8; N],
    /// Position (counting from the start of time) of the next byte to take.
    head: u64,
    /// Position of the next byte to write.
    tail: u64,
    /// The line being taken: its owner, its length and the bytes of it still to take.
    current: Option<Taking>,
    /// Bytes (headers included) queued per domain.
    queued: [u32; OWNERS],
    /// The most bytes ever queued at once.
    high_water: usize,
}

impl<const N: usize> Default for LogRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LogRing<N> {
    pub const fn new() -> Self {
        LogRing { bytes: [0; N], head: 0, tail: 0, current: None, queued: [0; OWNERS], high_water: 0 }
    }

    /// Bytes queued (headers included).
    pub fn used(&self) -> usize {
        (self.tail - self.head) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.tail == self.head
    }

    /// Bytes (headers included) `owner` has queued; 0 for the hypervisor and unknown owners.
    pub fn queued(&self, owner: u16) -> usize {
        self.queued.get(owner as usize).map_or(0, |&q| q as usize)
    }

    /// The most bytes ever queued at once.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Queues `line` (without its newline; the ring adds none) for `owner` within `limit`.
    pub fn push(&mut self, owner: u16, limit: Limit, line: &[u8]) -> Result<(), Refused> {
        if line.len() > MAX_LINE {
            return Err(Refused::TooLong);
        }
        let size = HEADER + line.len();
        if self.used() + size > limit.all.min(N) {
            return Err(Refused::Full);
        }
        if let Some(queued) = self.queued.get_mut(owner as usize) {
            if *queued as usize + size > limit.own {
                return Err(Refused::OwnerFull);
            }
            *queued += size as u32;
        }
        let header = [owner.to_le_bytes(), (line.len() as u16).to_le_bytes()];
        self.put(header.as_flattened());
        self.put(line);
        self.high_water = self.high_water.max(self.used());
        Ok(())
    }

    fn put(&mut self, data: &[u8]) {
        for &byte in data {
            self.bytes[(self.tail % N as u64) as usize] = byte;
            self.tail += 1;
        }
    }

    fn get(&mut self) -> u8 {
        let byte = self.bytes[(self.head % N as u64) as usize];
        self.head += 1;
        byte
    }

    /// Takes up to `out.len()` bytes of queued line text, oldest first, and returns how
    /// many. A line may be taken over several calls; its owner's share is freed once it is
    /// all taken.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let mut line = match self.current {
                Some(line) => line,
                None if self.is_empty() => break,
                None => {
                    let header = [self.get(), self.get(), self.get(), self.get()];
                    let len = u16::from_le_bytes([header[2], header[3]]) as usize;
                    Taking { owner: u16::from_le_bytes([header[0], header[1]]), len, left: len }
                }
            };
            let chunk = line.left.min(out.len() - n);
            for byte in &mut out[n..n + chunk] {
                *byte = self.get();
            }
            n += chunk;
            line.left -= chunk;
            if line.left > 0 {
                self.current = Some(line);
                continue;
            }
            self.current = None;
            if let Some(queued) = self.queued.get_mut(line.owner as usize) {
                *queued -= (HEADER + line.len) as u32;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Limit = Limit { own: usize::MAX, all: usize::MAX };

    fn drain<const N: usize>(ring: &mut LogRing<N>, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buffer = vec![0; chunk];
        loop {
            let n = ring.take(&mut buffer);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buffer[..n]);
        }
    }

    #[test]
    fn lines_come_out_in_order_without_their_headers() {
        let mut ring = LogRing::<64>::new();
        ring.push(HYPERVISOR, ALL, b"boot\n").unwrap();
        ring.push(3, ALL, b"(d3) hello\n").unwrap();
        ring.push(HYPERVISOR, ALL, b"\n").unwrap();
        assert_eq!(ring.used(), 3 * HEADER + 5 + 11 + 1);
        assert_eq!(drain(&mut ring, 3), b"boot\n(d3) hello\n\n");
        assert!(ring.is_empty());
    }

    #[test]
    fn the_ring_wraps_and_lines_may_be_taken_in_pieces() {
        let mut ring = LogRing::<16>::new();
        for round in 0..50u8 {
            let line = [b'a' + round % 26; 7];
            ring.push(1, ALL, &line).unwrap();
            let mut first = [0; 4];
            assert_eq!(ring.take(&mut first), 4);
            assert_eq!(ring.queued(1), HEADER + 7, "a line counts until it is all taken");
            assert_eq!(drain(&mut ring, 2), line[4..]);
            assert_eq!(ring.queued(1), 0);
        }
    }

    #[test]
    fn a_full_ring_refuses_whole_lines_and_stays_as_it_was() {
        let mut ring = LogRing::<32>::new();
        ring.push(2, ALL, &[b'x'; 20]).unwrap();
        assert_eq!(ring.push(2, ALL, &[b'y'; 5]), Err(Refused::Full));
        assert_eq!(ring.push(HYPERVISOR, ALL, &[b'y'; 5]), Err(Refused::Full));
        assert_eq!((ring.used(), ring.queued(2)), (24, 24));
        ring.push(HYPERVISOR, ALL, &[b'z'; 4]).unwrap();
        assert_eq!(drain(&mut ring, 64), [[b'x'; 20].as_slice(), &[b'z'; 4]].concat());
        assert_eq!(ring.high_water(), 32);
    }

    #[test]
    fn an_owner_cannot_take_more_than_its_share() {
        let mut ring = LogRing::<256>::new();
        let share = Limit { own: 40, all: 150 };
        ring.push(5, share, &[b'a'; 30]).unwrap();
        assert_eq!(ring.push(5, share, &[b'b'; 10]), Err(Refused::OwnerFull));
        // Others still have room; the hypervisor is counted apart from every domain.
        ring.push(6, share, &[b'c'; 30]).unwrap();
        ring.push(HYPERVISOR, Limit { own: 0, all: 256 }, &[b'd'; 30]).unwrap();
        // The guests' part of the ring is full before the ring is.
        ring.push(7, share, &[b'e'; 30]).unwrap();
        assert_eq!(ring.push(8, share, &[b'f'; 30]), Err(Refused::Full));
        ring.push(HYPERVISOR, ALL, &[b'g'; 30]).unwrap();
        // Once taken, the owner's share is free again.
        let mut first = [0; 30];
        assert_eq!(ring.take(&mut first), 30);
        ring.push(5, share, &[b'b'; 10]).unwrap();
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut ring = LogRing::<16>::new();
        assert_eq!(ring.push(1, ALL, &vec![0; MAX_LINE + 1]), Err(Refused::TooLong));
        assert!(ring.is_empty());
    }

    #[test]
    fn unknown_owners_are_not_counted() {
        let mut ring = LogRing::<64>::new();
        ring.push(OWNERS as u16, Limit { own: 0, all: 64 }, b"x").unwrap();
        assert_eq!(ring.queued(OWNERS as u16), 0);
        assert_eq!(drain(&mut ring, 8), b"x");
    }
}
