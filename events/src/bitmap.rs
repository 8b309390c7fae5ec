//! The 2-level signalling path: marking a port pending in a domain's `shared_info` and
//! raising the vCPU's upcall, exactly as Xen's `evtchn_2l_set_pending` and
//! `evtchn_2l_unmask` do.
//!
//! Callers: the hypervisor on any CPU, with no lock held — `send`, VIRQ sources, IPIs and
//! the unmask hypercall. The guest mutates the same words concurrently (it clears pending
//! bits, swaps the selector to 0, sets and clears masks), so every access here is one
//! sequentially consistent atomic operation on the words [`SharedPage`] exposes; no step
//! may rely on a word keeping its value. This module must never take a lock, consult the
//! channel table, or decide whom to wake: it reports what changed in a [`Notify`].

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use abi::ids::{EvtchnPort, VcpuId};

use crate::limits::{BITS_PER_WORD, MAX_PORTS};

/// One domain's shared-info page seen as atomics. The hypervisor implements it over the
/// mapped page (`evtchn_pending` at byte 2048, `evtchn_mask` at 2560, vCPU v's
/// `vcpu_info` at 64 * v: `evtchn_upcall_pending` +0, `evtchn_upcall_mask` +1,
/// `evtchn_pending_sel` +8); tests implement it over a heap allocation.
pub trait SharedPage {
    /// Word `word` (0..64) of `evtchn_pending`.
    fn pending_word(&self, word: usize) -> &AtomicU64;
    /// Word `word` (0..64) of `evtchn_mask`.
    fn mask_word(&self, word: usize) -> &AtomicU64;
    /// `evtchn_pending_sel` of `vcpu`'s `vcpu_info`.
    fn pending_sel(&self, vcpu: VcpuId) -> &AtomicU64;
    /// `evtchn_upcall_pending` of `vcpu`'s `vcpu_info`.
    fn upcall_pending(&self, vcpu: VcpuId) -> &AtomicU8;
    /// `evtchn_upcall_mask` of `vcpu`'s `vcpu_info`.
    fn upcall_mask(&self, vcpu: VcpuId) -> &AtomicU8;
}

/// What a signalling operation changed, so the caller knows whom to wake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// The port's pending bit went from 0 to 1 (whether masked or not): vCPUs of the
    /// domain polling this port (see [`crate::poll`]) must be woken.
    pub newly_pending: bool,
    /// The vCPU's `evtchn_upcall_pending` went from 0 to 1: kick the vCPU (wake it if
    /// blocked, interrupt it if running elsewhere), as Xen's `vcpu_mark_events_pending`.
    pub upcall: bool,
    /// The vCPU's `evtchn_upcall_mask` was set when the upcall was raised: a running vCPU
    /// will not take it until it unmasks, so interrupting it is wasted work. Only
    /// meaningful when `upcall` is set.
    pub upcall_masked: bool,
}

impl Notify {
    /// Nothing changed.
    pub const NONE: Self = Self {
        newly_pending: false,
        upcall: false,
        upcall_masked: false,
    };
}

/// A port's position in the bitmaps; exists only for ports below [`MAX_PORTS`].
#[derive(Clone, Copy)]
struct PortBit {
    word: usize,
    mask: u64,
}

impl PortBit {
    fn new(port: EvtchnPort) -> Option<Self> {
        (port.0 < MAX_PORTS).then(|| Self {
            word: (port.0 / BITS_PER_WORD) as usize,
            mask: 1 << (port.0 % BITS_PER_WORD),
        })
    }

    /// Sets the bit in `word`; true when it was clear before.
    fn set(self, word: &AtomicU64) -> bool {
        word.fetch_or(self.mask, Ordering::SeqCst) & self.mask == 0
    }

    /// Clears the bit in `word`; true when it was set before.
    fn clear(self, word: &AtomicU64) -> bool {
        word.fetch_and(!self.mask, Ordering::SeqCst) & self.mask != 0
    }

    fn test(self, word: &AtomicU64) -> bool {
        word.load(Ordering::SeqCst) & self.mask != 0
    }
}

/// Marks `port` pending and, if it is unmasked, flags its word in `vcpu`'s selector and
/// raises the upcall (Xen's 2-level rule). A port that was already pending, or is masked,
/// changes nothing beyond its pending bit. A port beyond the 2-level range does nothing.
pub fn set_pending<P: SharedPage + ?Sized>(page: &P, port: EvtchnPort, vcpu: VcpuId) -> Notify {
    let Some(bit) = PortBit::new(port) else {
        return Notify::NONE;
    };
    if !bit.set(page.pending_word(bit.word)) {
        return Notify::NONE;
    }
    if bit.test(page.mask_word(bit.word)) {
        return Notify {
            newly_pending: true,
            ..Notify::NONE
        };
    }
    Notify {
        newly_pending: true,
        ..flag_word(page, bit.word, vcpu)
    }
}

/// `EVTCHNOP_unmask`: clears `port`'s mask and, if the mask was set and the port is
/// pending, flags its word in `vcpu`'s selector and raises the upcall (Xen's
/// `evtchn_2l_unmask`). `vcpu` is the port's notify vCPU. Never reports `newly_pending`.
pub fn unmask<P: SharedPage + ?Sized>(page: &P, port: EvtchnPort, vcpu: VcpuId) -> Notify {
    let Some(bit) = PortBit::new(port) else {
        return Notify::NONE;
    };
    if !bit.clear(page.mask_word(bit.word)) || !bit.test(page.pending_word(bit.word)) {
        return Notify::NONE;
    }
    flag_word(page, bit.word, vcpu)
}

/// Sets bit `word` of `vcpu`'s selector; if that bit is new, raises the upcall.
fn flag_word<P: SharedPage + ?Sized>(page: &P, word: usize, vcpu: VcpuId) -> Notify {
    let selector_bit = PortBit {
        word,
        mask: 1 << word,
    };
    if !selector_bit.set(page.pending_sel(vcpu)) {
        return Notify::NONE;
    }
    if page.upcall_pending(vcpu).swap(1, Ordering::SeqCst) != 0 {
        return Notify::NONE;
    }
    Notify {
        newly_pending: false,
        upcall: true,
        upcall_masked: page.upcall_mask(vcpu).load(Ordering::SeqCst) != 0,
    }
}

/// Whether `port` is pending (false beyond the 2-level range).
pub fn is_pending<P: SharedPage + ?Sized>(page: &P, port: EvtchnPort) -> bool {
    PortBit::new(port).is_some_and(|bit| bit.test(page.pending_word(bit.word)))
}

/// Whether `port` is masked (false beyond the 2-level range).
pub fn is_masked<P: SharedPage + ?Sized>(page: &P, port: EvtchnPort) -> bool {
    PortBit::new(port).is_some_and(|bit| bit.test(page.mask_word(bit.word)))
}

/// Clears `port`'s pending bit, as Xen does when a port is closed so that a later binding
/// of the same port starts clean. Returns whether it was pending.
pub fn clear_pending<P: SharedPage + ?Sized>(page: &P, port: EvtchnPort) -> bool {
    PortBit::new(port).is_some_and(|bit| bit.clear(page.pending_word(bit.word)))
}

/// Whether the event upcall is due for `vcpu`: `evtchn_upcall_pending` set and
/// `evtchn_upcall_mask` clear. Checked on every return to the guest.
pub fn upcall_due<P: SharedPage + ?Sized>(page: &P, vcpu: VcpuId) -> bool {
    page.upcall_pending(vcpu).load(Ordering::SeqCst) != 0
        && page.upcall_mask(vcpu).load(Ordering::SeqCst) == 0
}

/// A heap-allocated stand-in for a shared-info page, and the guest's side of the
/// protocol, for this crate's tests.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use crate::limits::MAX_PORTS;
    use abi::shared_info::EVTCHN_WORDS;

    /// One `vcpu_info`'s event fields.
    #[derive(Default)]
    pub struct FakeVcpu {
        pub sel: AtomicU64,
        pub upcall_pending: AtomicU8,
        pub upcall_mask: AtomicU8,
    }

    pub struct FakePage {
        pub pending: [AtomicU64; EVTCHN_WORDS],
        pub mask: [AtomicU64; EVTCHN_WORDS],
        pub vcpus: [FakeVcpu; 4],
    }

    impl FakePage {
        pub fn new() -> Box<Self> {
            Box::new(Self {
                pending: core::array::from_fn(|_| AtomicU64::new(0)),
                mask: core::array::from_fn(|_| AtomicU64::new(0)),
                vcpus: Default::default(),
            })
        }

        /// The guest masks `port` (a plain bit set in its own memory).
        pub fn mask_port(&self, port: u32) {
            assert!(port < MAX_PORTS);
            self.mask[(port / 64) as usize].fetch_or(1 << (port % 64), Ordering::SeqCst);
        }

        pub fn vcpu(&self, vcpu: u32) -> &FakeVcpu {
            &self.vcpus[vcpu as usize]
        }

        /// The guest's upcall handler: clears the upcall flag, swaps the selector to 0 and
        /// takes every unmasked pending bit of each flagged word. Returns the ports taken.
        pub fn guest_drain(&self, vcpu: u32) -> Vec<u32> {
            let info = self.vcpu(vcpu);
            info.upcall_pending.store(0, Ordering::SeqCst);
            let mut selector = info.sel.swap(0, Ordering::SeqCst);
            let mut ports = Vec::new();
            while selector != 0 {
                let word = selector.trailing_zeros() as usize;
                selector &= selector - 1;
                let mask = self.mask[word].load(Ordering::SeqCst);
                let mut taken = self.pending[word].fetch_and(mask, Ordering::SeqCst) & !mask;
                while taken != 0 {
                    ports.push(word as u32 * 64 + taken.trailing_zeros());
                    taken &= taken - 1;
                }
            }
            ports
        }
    }

    impl SharedPage for FakePage {
        fn pending_word(&self, word: usize) -> &AtomicU64 {
            &self.pending[word]
        }
        fn mask_word(&self, word: usize) -> &AtomicU64 {
            &self.mask[word]
        }
        fn pending_sel(&self, vcpu: VcpuId) -> &AtomicU64 {
            &self.vcpu(vcpu.0).sel
        }
        fn upcall_pending(&self, vcpu: VcpuId) -> &AtomicU8 {
            &self.vcpu(vcpu.0).upcall_pending
        }
        fn upcall_mask(&self, vcpu: VcpuId) -> &AtomicU8 {
            &self.vcpu(vcpu.0).upcall_mask
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakePage;
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32};
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    const V0: VcpuId = VcpuId(0);
    const V1: VcpuId = VcpuId(1);

    fn raised(masked: bool) -> Notify {
        Notify {
            newly_pending: true,
            upcall: true,
            upcall_masked: masked,
        }
    }

    #[test]
    fn first_event_sets_pending_selector_and_upcall() {
        let page = FakePage::new();
        assert_eq!(set_pending(&*page, EvtchnPort(70), V1), raised(false));
        assert_eq!(page.pending[1].load(Ordering::SeqCst), 1 << 6);
        assert_eq!(page.vcpu(1).sel.load(Ordering::SeqCst), 1 << 1);
        assert_eq!(page.vcpu(1).upcall_pending.load(Ordering::SeqCst), 1);
        assert_eq!(
            page.vcpu(0).sel.load(Ordering::SeqCst),
            0,
            "other vCPU untouched"
        );
        assert!(is_pending(&*page, EvtchnPort(70)));
        assert!(!is_pending(&*page, EvtchnPort(71)));
    }

    #[test]
    fn already_pending_port_changes_nothing() {
        let page = FakePage::new();
        set_pending(&*page, EvtchnPort(3), V0);
        page.vcpu(0).upcall_pending.store(0, Ordering::SeqCst);
        page.vcpu(0).sel.store(0, Ordering::SeqCst);
        assert_eq!(set_pending(&*page, EvtchnPort(3), V0), Notify::NONE);
        assert_eq!(page.vcpu(0).sel.load(Ordering::SeqCst), 0);
        assert_eq!(page.vcpu(0).upcall_pending.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn second_port_in_flagged_word_does_not_raise_again() {
        let page = FakePage::new();
        set_pending(&*page, EvtchnPort(1), V0);
        let second = set_pending(&*page, EvtchnPort(2), V0);
        assert_eq!(
            second,
            Notify {
                newly_pending: true,
                ..Notify::NONE
            }
        );
        assert_eq!(page.pending[0].load(Ordering::SeqCst), 0b110);
    }

    #[test]
    fn new_word_with_upcall_already_pending_sets_selector_only() {
        let page = FakePage::new();
        set_pending(&*page, EvtchnPort(1), V0);
        let other_word = set_pending(&*page, EvtchnPort(64 * 5), V0);
        assert!(other_word.newly_pending && !other_word.upcall);
        assert_eq!(page.vcpu(0).sel.load(Ordering::SeqCst), 0b10_0001);
    }

    #[test]
    fn masked_port_only_becomes_pending() {
        let page = FakePage::new();
        page.mask_port(9);
        assert!(is_masked(&*page, EvtchnPort(9)));
        let notify = set_pending(&*page, EvtchnPort(9), V0);
        assert_eq!(
            notify,
            Notify {
                newly_pending: true,
                ..Notify::NONE
            }
        );
        assert!(is_pending(&*page, EvtchnPort(9)));
        assert_eq!(page.vcpu(0).sel.load(Ordering::SeqCst), 0);
        assert_eq!(page.vcpu(0).upcall_pending.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn upcall_mask_is_reported() {
        let page = FakePage::new();
        page.vcpu(0).upcall_mask.store(1, Ordering::SeqCst);
        assert_eq!(set_pending(&*page, EvtchnPort(5), V0), raised(true));
        assert!(!upcall_due(&*page, V0), "masked upcall is not due");
        page.vcpu(0).upcall_mask.store(0, Ordering::SeqCst);
        assert!(upcall_due(&*page, V0));
    }

    #[test]
    fn unmask_delivers_a_pending_masked_port() {
        let page = FakePage::new();
        page.mask_port(130);
        set_pending(&*page, EvtchnPort(130), V1);
        let notify = unmask(&*page, EvtchnPort(130), V1);
        assert_eq!(
            notify,
            Notify {
                upcall: true,
                ..Notify::NONE
            }
        );
        assert!(!is_masked(&*page, EvtchnPort(130)));
        assert_eq!(page.vcpu(1).sel.load(Ordering::SeqCst), 1 << 2);
        assert_eq!(page.guest_drain(1), vec![130]);
    }

    #[test]
    fn unmask_of_idle_or_unmasked_port_does_nothing_more() {
        let page = FakePage::new();
        page.mask_port(4);
        assert_eq!(
            unmask(&*page, EvtchnPort(4), V0),
            Notify::NONE,
            "not pending"
        );
        assert!(!is_masked(&*page, EvtchnPort(4)));
        // Pending but never masked: Xen's unmask requires the mask bit to have been set.
        page.pending[0].fetch_or(1 << 7, Ordering::SeqCst);
        assert_eq!(unmask(&*page, EvtchnPort(7), V0), Notify::NONE);
        assert_eq!(page.vcpu(0).sel.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn clear_pending_reports_previous_state() {
        let page = FakePage::new();
        set_pending(&*page, EvtchnPort(4095), V0);
        assert!(clear_pending(&*page, EvtchnPort(4095)));
        assert!(!clear_pending(&*page, EvtchnPort(4095)));
        assert!(!is_pending(&*page, EvtchnPort(4095)));
    }

    #[test]
    fn ports_beyond_the_bitmap_are_ignored() {
        let page = FakePage::new();
        for port in [4096, 5000, u32::MAX] {
            assert_eq!(set_pending(&*page, EvtchnPort(port), V0), Notify::NONE);
            assert_eq!(unmask(&*page, EvtchnPort(port), V0), Notify::NONE);
            assert!(!is_pending(&*page, EvtchnPort(port)));
            assert!(!clear_pending(&*page, EvtchnPort(port)));
        }
        assert!(page.pending.iter().all(|w| w.load(Ordering::SeqCst) == 0));
        assert_eq!(page.vcpu(0).sel.load(Ordering::SeqCst), 0);
    }

    /// Producers mark ports pending from several threads while a guest-like consumer
    /// drains them; each producer waits until its port was seen before setting it again.
    /// The consumer sleeps unless a producer kicks it (a `Notify::upcall`), so a lost
    /// pending bit, selector bit or kick stalls a producer and fails the test.
    #[test]
    fn concurrent_producers_lose_no_event() {
        const PRODUCERS: u32 = 4;
        const PORTS_PER_PRODUCER: u32 = 24;
        const ROUNDS: u32 = 150;
        const DEADLINE: Duration = Duration::from_secs(20);

        let page: Arc<FakePage> = Arc::from(FakePage::new());
        let seen: Arc<Vec<AtomicU32>> =
            Arc::new((0..MAX_PORTS).map(|_| AtomicU32::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));

        let consumer = {
            let (page, seen, stop) = (page.clone(), seen.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    while page.vcpu(0).upcall_pending.load(Ordering::SeqCst) != 0 {
                        for port in page.guest_drain(0) {
                            seen[port as usize].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    // Only a kick wakes the consumer: a missed one stalls the producers.
                    thread::park();
                }
            })
        };

        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (page, seen, waker) = (page.clone(), seen.clone(), consumer.thread().clone());
                thread::spawn(move || {
                    // Distinct ports, spread so that producers share words.
                    let ports: Vec<u32> = (0..PORTS_PER_PRODUCER)
                        .map(|i| (p + PRODUCERS * i * 37) % MAX_PORTS)
                        .collect();
                    let start = Instant::now();
                    for round in 1..=ROUNDS {
                        for &port in &ports {
                            if set_pending(&*page, EvtchnPort(port), V0).upcall {
                                waker.unpark();
                            }
                        }
                        for &port in &ports {
                            while seen[port as usize].load(Ordering::SeqCst) < round {
                                assert!(
                                    start.elapsed() < DEADLINE,
                                    "port {port} lost in round {round}"
                                );
                                thread::yield_now();
                            }
                        }
                    }
                    ports
                })
            })
            .collect();

        let all_ports: Vec<u32> = producers
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect();
        stop.store(true, Ordering::SeqCst);
        consumer.thread().unpark();
        consumer.join().unwrap();

        assert_eq!(all_ports.len() as u32, PRODUCERS * PORTS_PER_PRODUCER);
        for port in all_ports {
            assert_eq!(
                seen[port as usize].load(Ordering::SeqCst),
                ROUNDS,
                "port {port}"
            );
        }
        assert!(page.pending.iter().all(|w| w.load(Ordering::SeqCst) == 0));
    }

    /// Masked ports raised concurrently stay pending without an upcall; one unmask each
    /// then delivers every one of them.
    #[test]
    fn concurrent_masked_events_are_delivered_by_unmask() {
        let page: Arc<FakePage> = Arc::from(FakePage::new());
        let ports: Vec<u32> = (1..200).map(|i| i * 13 % MAX_PORTS).collect();
        for &port in &ports {
            page.mask_port(port);
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (page, ports) = (page.clone(), ports.clone());
                thread::spawn(move || {
                    for &port in ports.iter().skip(t).step_by(4) {
                        assert!(!set_pending(&*page, EvtchnPort(port), V0).upcall);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(page.vcpu(0).upcall_pending.load(Ordering::SeqCst), 0);

        let mut delivered = Vec::new();
        for &port in &ports {
            unmask(&*page, EvtchnPort(port), V0);
            delivered.extend(page.guest_drain(0));
        }
        delivered.sort_unstable();
        let mut expected = ports.clone();
        expected.sort_unstable();
        assert_eq!(delivered, expected);
    }
}
