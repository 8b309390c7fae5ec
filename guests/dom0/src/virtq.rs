//! A virtio split virtqueue (virtio 1.1, 2.6) from the driver's side, over memory the device
//! reaches by DMA, whose buffers are named by bus (machine) address: domain 0's virtio-blk
//! driver (`virtio::VirtioDisk`) puts a request's header, each piece of its data (its own
//! DMA buffers, or a frontend's pages it mapped for the device) and its status byte into
//! one descriptor chain, as many pieces as the request has.
//!
//! [`Queue`] keeps the driver's state (free descriptors, the chain of each request in
//! flight, the next available and used indices) outside the shared memory, so that
//! nothing the device writes can corrupt it: a used entry naming no request in flight is
//! [`QueueError::BadUsed`], not a free-list walk through device-written links. The three
//! areas are reached through [`RingMemory`] (the caller's mapping of its DMA pool; plain
//! bytes in the tests, where a simulated device plays the other side).
//!
//! Who calls it: `virtio::VirtioDisk` (submit, notify decision, completions). It never
//! touches the transport (the caller notifies the device) and makes no hypercall.

use core::sync::atomic::{fence, Ordering};

use xenring::RingMemory;

/// The largest queue this driver sets up.
pub const MAX_SIZE: usize = 256;
/// `VIRTQ_DESC_F_NEXT`: the chain continues in `next`.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_USED_F_NO_NOTIFY`: the device asks not to be notified of new buffers.
pub const USED_F_NO_NOTIFY: u16 = 1;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver asks for no interrupt on used buffers.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Bytes of one descriptor (`struct virtq_desc`).
pub const DESC_BYTES: usize = 16;

/// Bytes of the descriptor table of a `size`-entry queue.
pub const fn desc_bytes(size: usize) -> usize {
    DESC_BYTES * size
}

/// Bytes of the available ring (`flags`, `idx`, `ring[size]`, `used_event`).
pub const fn avail_bytes(size: usize) -> usize {
    6 + 2 * size
}

/// Bytes of the used ring (`flags`, `idx`, `ring[size]` of `{id, len}`, `avail_event`).
pub const fn used_bytes(size: usize) -> usize {
    6 + 8 * size
}

/// One buffer of a request: `len` bytes at bus address `addr`, written by the device
/// (`device_writes`) or read by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

/// Why the queue refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The size is not a power of two in `1..=MAX_SIZE`, or an area is too small.
    Layout,
    /// A chain of no buffer.
    Empty,
    /// Too few free descriptors for the chain.
    Full,
    /// The device returned an id that is not a request in flight (or a second time).
    BadUsed(u32),
}

/// The driver's side of one split virtqueue (see the module documentation).
pub struct Queue<M> {
    desc: M,
    avail: M,
    used: M,
    size: u16,
    /// Free descriptors (a stack).
    free: [u16; MAX_SIZE],
    free_len: u16,
    /// The driver's copy of each descriptor's `next` (a chain is walked on this, never on
    /// the shared table).
    next: [u16; MAX_SIZE],
    /// Descriptors in the chain whose head is the index; 0 when it heads no chain in flight.
    chain: [u16; MAX_SIZE],
    avail_idx: u16,
    /// The available ring's flags (`VIRTQ_AVAIL_F_NO_INTERRUPT` or 0).
    avail_flags: u16,
    last_used: u16,
    in_flight: u16,
}

impl<M: RingMemory> Queue<M> {
    /// A queue of `size` entries over its three areas, which the caller then gives the
    /// device (`queue_set`). The available ring starts empty (its index 0, interrupts
    /// wanted); the device starts its used index at 0 when the queue is set up.
    pub fn new(desc: M, avail: M, used: M, size: usize) -> Result<Self, QueueError> {
        if !size.is_power_of_two()
            || size > MAX_SIZE
            || desc.len() < desc_bytes(size)
            || avail.len() < avail_bytes(size)
            || used.len() < used_bytes(size)
        {
            return Err(QueueError::Layout);
        }
        avail.store_index(0, 0);
        let mut free = [0u16; MAX_SIZE];
        for (i, f) in free.iter_mut().take(size).enumerate() {
            // Handed out from the top: descriptor 0 first.
            *f = (size - 1 - i) as u16;
        }
        Ok(Self {
            desc,
            avail,
            used,
            size: size as u16,
            free,
            free_len: size as u16,
            next: [0; MAX_SIZE],
            chain: [0; MAX_SIZE],
            avail_idx: 0,
            avail_flags: 0,
            last_used: 0,
            in_flight: 0,
        })
    }

    /// Entries in the queue.
    pub fn size(&self) -> usize {
        usize::from(self.size)
    }

    /// Descriptors free for new chains.
    pub fn free_descriptors(&self) -> usize {
        usize::from(self.free_len)
    }

    /// Chains the device has not returned yet.
    pub fn in_flight(&self) -> usize {
        usize::from(self.in_flight)
    }

    /// Makes `buffers` one chain (in order: what the device reads first, then what it
    /// writes, as virtio wants) and offers it to the device; returns its token (the head
    /// descriptor), which [`pop_used`](Self::pop_used) gives back when the device is done.
    /// The caller then notifies the device if [`should_notify`](Self::should_notify).
    pub fn add(&mut self, buffers: &[Buffer]) -> Result<u16, QueueError> {
        if buffers.is_empty() {
            return Err(QueueError::Empty);
        }
        if buffers.len() > usize::from(self.free_len) {
            return Err(QueueError::Full);
        }
        // Back to front, so that each descriptor knows the next one's index (no list of
        // them is built: under emulation every large copy or fill costs).
        let mut next = 0u16;
        for (i, b) in buffers.iter().enumerate().rev() {
            self.free_len -= 1;
            let id = self.free[usize::from(self.free_len)];
            let last = i + 1 == buffers.len();
            let flags = if last { 0 } else { DESC_F_NEXT } | if b.device_writes { DESC_F_WRITE } else { 0 };
            let mut d = [0u8; DESC_BYTES];
            d[0..8].copy_from_slice(&b.addr.to_le_bytes());
            d[8..12].copy_from_slice(&b.len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(if last { 0 } else { next }).to_le_bytes());
            self.desc.write(usize::from(id) * DESC_BYTES, &d);
            self.next[usize::from(id)] = if last { 0 } else { next };
            next = id;
        }
        let head = next;
        self.chain[usize::from(head)] = buffers.len() as u16;
        let slot = usize::from(self.avail_idx % self.size);
        self.avail.write(4 + 2 * slot, &head.to_le_bytes());
        // The descriptors and the ring entry before the index that publishes them.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // `flags` and `idx` in one store.
        self.avail.store_index(0, u32::from(self.avail_idx) << 16 | u32::from(self.avail_flags));
        self.in_flight += 1;
        Ok(head)
    }

    /// Whether the device wants to hear of the chains just added (it did not set
    /// `VIRTQ_USED_F_NO_NOTIFY`).
    pub fn should_notify(&self) -> bool {
        // The index store before the look at the device's flags.
        fence(Ordering::SeqCst);
        self.used.load_index(0) as u16 & USED_F_NO_NOTIFY == 0
    }

    /// Asks the device for interrupts on used buffers, or not (a hint: it may still send
    /// some). Turning them on returns whether a chain was returned meanwhile, checked after
    /// the flag is visible, so that a caller that then blocks for the interrupt misses none.
    pub fn set_interrupts(&mut self, on: bool) -> bool {
        self.avail_flags = if on { 0 } else { AVAIL_F_NO_INTERRUPT };
        self.avail.store_index(0, u32::from(self.avail_idx) << 16 | u32::from(self.avail_flags));
        // The flag before the look at the used index (the device reads them the other way).
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Whether the device returned a chain not yet popped.
    pub fn has_used(&self) -> bool {
        (self.used.load_index(0) >> 16) as u16 != self.last_used
    }

    /// The next chain the device returned: its token and the bytes it wrote; its
    /// descriptors are free again.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, QueueError> {
        let used_idx = (self.used.load_index(0) >> 16) as u16;
        if used_idx == self.last_used {
            return Ok(None);
        }
        // The index before the entry it publishes.
        fence(Ordering::Acquire);
        let slot = usize::from(self.last_used % self.size);
        let mut e = [0u8; 8];
        self.used.read(4 + 8 * slot, &mut e);
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let head = usize::try_from(id).ok().filter(|&h| h < usize::from(self.size) && self.chain[h] != 0).ok_or(QueueError::BadUsed(id))?;
        self.last_used = self.last_used.wrapping_add(1);
        let mut at = head as u16;
        for _ in 0..self.chain[head] {
            self.free[usize::from(self.free_len)] = at;
            self.free_len += 1;
            at = self.next[usize::from(at)];
        }
        self.chain[head] = 0;
        self.in_flight -= 1;
        Ok(Some((head as u16, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenring::PlainMemory;

    /// The device's side over the same memory.
    struct Device<'a> {
        desc: PlainMemory<'a>,
        avail: PlainMemory<'a>,
        used: PlainMemory<'a>,
        size: u16,
        last_avail: u16,
        used_idx: u16,
    }

    impl Device<'_> {
        /// The next chain offered: its head and buffers.
        fn take(&mut self) -> Option<(u16, std::vec::Vec<Buffer>)> {
            let idx = (self.avail.load_index(0) >> 16) as u16;
            if idx == self.last_avail {
                return None;
            }
            let mut h = [0u8; 2];
            self.avail.read(4 + 2 * usize::from(self.last_avail % self.size), &mut h);
            self.last_avail = self.last_avail.wrapping_add(1);
            let head = u16::from_le_bytes(h);
            let mut out = std::vec::Vec::new();
            let mut at = head;
            loop {
                let mut d = [0u8; 16];
                self.desc.read(usize::from(at) * 16, &mut d);
                let flags = u16::from_le_bytes([d[12], d[13]]);
                out.push(Buffer {
                    addr: u64::from_le_bytes(d[0..8].try_into().unwrap()),
                    len: u32::from_le_bytes(d[8..12].try_into().unwrap()),
                    device_writes: flags & DESC_F_WRITE != 0,
                });
                if flags & DESC_F_NEXT == 0 {
                    break;
                }
                at = u16::from_le_bytes([d[14], d[15]]);
                assert!(out.len() <= usize::from(self.size), "a loop in the chain");
            }
            Some((head, out))
        }

        fn give_back(&mut self, id: u32, len: u32) {
            let slot = usize::from(self.used_idx % self.size);
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&id.to_le_bytes());
            e[4..].copy_from_slice(&len.to_le_bytes());
            self.used.write(4 + 8 * slot, &e);
            self.used_idx = self.used_idx.wrapping_add(1);
            let flags = self.used.load_index(0) & 0xffff;
            self.used.store_index(0, flags | u32::from(self.used_idx) << 16);
        }
    }

    fn buf(addr: u64, len: u32, device_writes: bool) -> Buffer {
        Buffer { addr, len, device_writes }
    }

    /// A queue and its device over fresh memory.
    fn with_queue(size: usize, test: impl FnOnce(&mut Queue<PlainMemory<'_>>, &mut Device<'_>)) {
        let (mut d, mut a, mut u) = (std::vec![0u8; desc_bytes(size)], std::vec![0u8; avail_bytes(size)], std::vec![0u8; used_bytes(size)]);
        let (d, a, u) = (PlainMemory::new(&mut d), PlainMemory::new(&mut a), PlainMemory::new(&mut u));
        let mut q = Queue::new(d, a, u, size).unwrap();
        let mut dev = Device { desc: d, avail: a, used: u, size: size as u16, last_avail: 0, used_idx: 0 };
        test(&mut q, &mut dev);
    }

    #[test]
    fn a_chain_reaches_the_device_as_given_and_comes_back() {
        with_queue(8, |q, dev| {
            let req = [buf(0x1000, 16, false), buf(0x20_000, 4096, true), buf(0x3_0000, 1024, true), buf(0x1800, 1, true)];
            let token = q.add(&req).unwrap();
            assert_eq!(q.free_descriptors(), 4);
            assert!(q.should_notify());
            let (head, got) = dev.take().unwrap();
            assert_eq!(head, token);
            assert_eq!(got, req);
            assert!(dev.take().is_none());
            assert_eq!(q.pop_used(), Ok(None));
            dev.give_back(u32::from(head), 5121);
            assert!(q.has_used());
            assert_eq!(q.pop_used(), Ok(Some((token, 5121))));
            assert_eq!(q.free_descriptors(), 8);
            assert_eq!(q.in_flight(), 0);
        });
    }

    #[test]
    fn chains_complete_in_any_order_and_descriptors_are_reused_for_ever() {
        with_queue(16, |q, dev| {
            for round in 0..1000u64 {
                let a = q.add(&[buf(round, 16, false), buf(0x1000, 512, true), buf(2, 1, true)]).unwrap();
                let b = q.add(&[buf(round, 16, false), buf(0x2000, 4096, true), buf(0x3000, 4096, true), buf(3, 1, true)]).unwrap();
                let (ha, ca) = dev.take().unwrap();
                let (hb, cb) = dev.take().unwrap();
                assert_eq!((ha, hb), (a, b));
                assert_eq!((ca.len(), cb.len(), ca[0].addr), (3, 4, round));
                // The device finishes the second first.
                dev.give_back(u32::from(hb), 8193);
                dev.give_back(u32::from(ha), 513);
                assert_eq!(q.pop_used(), Ok(Some((b, 8193))));
                assert_eq!(q.pop_used(), Ok(Some((a, 513))));
                assert_eq!(q.free_descriptors(), 16);
            }
        });
    }

    #[test]
    fn a_full_queue_refuses_and_an_empty_chain_is_refused() {
        with_queue(4, |q, dev| {
            assert_eq!(q.add(&[]), Err(QueueError::Empty));
            let t = q.add(&[buf(1, 1, false), buf(2, 2, true), buf(3, 3, true)]).unwrap();
            assert_eq!(q.add(&[buf(1, 1, false), buf(2, 2, true)]), Err(QueueError::Full));
            let small = q.add(&[buf(9, 9, true)]).unwrap();
            assert_eq!(q.free_descriptors(), 0);
            let (h, _) = dev.take().unwrap();
            dev.give_back(u32::from(h), 0);
            assert_eq!(q.pop_used(), Ok(Some((t, 0))));
            assert_eq!(q.free_descriptors(), 3);
            assert_eq!(q.in_flight(), 1);
            let _ = small;
        });
    }

    #[test]
    fn a_device_returning_what_is_not_in_flight_is_caught() {
        with_queue(8, |q, dev| {
            let t = q.add(&[buf(1, 1, false), buf(2, 2, true)]).unwrap();
            let (h, _) = dev.take().unwrap();
            dev.give_back(u32::from(h), 2);
            // The same id twice, then an id past the queue.
            dev.give_back(u32::from(h), 2);
            dev.give_back(999, 0);
            assert_eq!(q.pop_used(), Ok(Some((t, 2))));
            assert_eq!(q.pop_used(), Err(QueueError::BadUsed(u32::from(h))));
            // The free list is intact: every descriptor can be handed out once.
            assert_eq!(q.free_descriptors(), 8);
            let ids: std::vec::Vec<u16> = (0..8).map(|_| q.add(&[buf(0, 1, true)]).unwrap()).collect();
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 8);
        });
    }

    #[test]
    fn the_device_can_ask_not_to_be_notified() {
        with_queue(4, |q, dev| {
            q.add(&[buf(1, 1, true)]).unwrap();
            assert!(q.should_notify());
            dev.used.store_index(0, u32::from(USED_F_NO_NOTIFY));
            assert!(!q.should_notify());
        });
    }

    #[test]
    fn interrupts_can_be_turned_off_and_on_and_the_flag_survives_adds() {
        with_queue(4, |q, dev| {
            assert!(!q.set_interrupts(false));
            q.add(&[buf(1, 1, true)]).unwrap();
            assert_eq!(dev.avail.load_index(0), 1 << 16 | u32::from(AVAIL_F_NO_INTERRUPT));
            let (h, _) = dev.take().unwrap();
            dev.give_back(u32::from(h), 1);
            // Turned on with a used chain waiting: the caller is told not to block.
            assert!(q.set_interrupts(true));
            assert_eq!(dev.avail.load_index(0), 1 << 16);
        });
    }

    #[test]
    fn bad_layouts_are_refused() {
        let mut d = [0u8; 256];
        let mut a = [0u8; 64];
        let mut u = [0u8; 256];
        let (d, a, u) = (PlainMemory::new(&mut d), PlainMemory::new(&mut a), PlainMemory::new(&mut u));
        assert!(Queue::new(d, a, u, 12).is_err(), "not a power of two");
        assert!(Queue::new(d, a, u, 32).is_err(), "areas too small");
        assert!(Queue::new(d, a, u, 16).is_ok());
    }
}
