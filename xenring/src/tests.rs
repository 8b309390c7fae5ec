//! Host tests: the layout, each end alone, a two-sided simulation under random schedules
//! (nothing lost, nothing duplicated, no lost wake-up under Xen's notification rules), a
//! hostile other end writing any indices, and two threads on real shared memory.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;

use crate::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Req {
    id: u64,
    value: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rsp {
    id: u64,
    value: u32,
}

impl Entry for Req {
    const SIZE: usize = 24;
    fn decode(b: &[u8]) -> Self {
        Self { id: u64::from_le_bytes(b[0..8].try_into().unwrap()), value: u32::from_le_bytes(b[8..12].try_into().unwrap()) }
    }
    fn encode(&self, out: &mut [u8]) {
        out.fill(0xaa);
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..12].copy_from_slice(&self.value.to_le_bytes());
    }
}

impl Entry for Rsp {
    const SIZE: usize = 12;
    fn decode(b: &[u8]) -> Self {
        Self { id: u64::from_le_bytes(b[0..8].try_into().unwrap()), value: u32::from_le_bytes(b[8..12].try_into().unwrap()) }
    }
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..12].copy_from_slice(&self.value.to_le_bytes());
    }
}

#[test]
fn layout_matches_xen_sizes() {
    // blkif: 112-byte requests, 32 per page (BLK_RING_SIZE), 64 in two pages.
    assert_eq!(Layout::new(4096, 112).unwrap().entries(), 32);
    assert_eq!(Layout::new(8192, 112).unwrap().entries(), 64);
    // netif tx: 12-byte request, 16-byte response union = 16 bytes: 4032/16 = 252 -> 128.
    assert_eq!(Layout::new(4096, 16).unwrap().entries(), 128);
    assert_eq!(Layout::new(4096, 256).unwrap().entries(), 8);
    assert_eq!(Layout::new(320, 256).unwrap().entries(), 1);
    assert_eq!(Layout::new(4096, 257), Err(LayoutError::EntrySize(257)));
    assert_eq!(Layout::new(64, 8), Err(LayoutError::TooSmall { bytes: 64 }));
    assert_eq!(Layout::new(4096, 0), Err(LayoutError::EntrySize(0)));
    let l = Layout::for_entries::<Req, Rsp>(1).unwrap();
    assert_eq!((l.entries(), l.entry_bytes()), (128, 24));
    assert_eq!(l.slot(0), 64);
    assert_eq!(l.slot(129), 64 + 24);
    assert!(l.bytes() <= 4096);
}

#[test]
fn init_writes_xen_header() {
    let mut page = [0xffu8; 4096];
    let mem = PlainMemory::new(&mut page);
    let l = Layout::for_entries::<Req, Rsp>(1).unwrap();
    let _f: FrontRing<_, Req, Rsp> = FrontRing::init(mem, l).unwrap();
    assert_eq!(mem.load_index(Layout::REQ_PROD), 0);
    assert_eq!(mem.load_index(Layout::REQ_EVENT), 1);
    assert_eq!(mem.load_index(Layout::RSP_PROD), 0);
    assert_eq!(mem.load_index(Layout::RSP_EVENT), 1);
    let mut pad = [0u8; 48];
    mem.read(16, &mut pad);
    assert_eq!(pad, [0; 48]);
}

#[test]
fn too_small_memory_is_refused() {
    let mut page = [0u8; 100];
    let l = Layout::new(4096, 24).unwrap();
    assert!(FrontRing::<_, Req, Rsp>::init(PlainMemory::new(&mut page), l).is_err());
    assert!(BackRing::<_, Req, Rsp>::attach(PlainMemory::new(&mut page), l).is_err());
}

#[test]
fn round_trip_and_notify_rules() {
    let mut page = [0u8; 4096];
    let mem = PlainMemory::new(&mut page);
    let l = Layout::for_entries::<Req, Rsp>(1).unwrap();
    let mut f: FrontRing<_, Req, Rsp> = FrontRing::init(mem, l).unwrap();
    let mut b: BackRing<_, Req, Rsp> = BackRing::attach(mem, l).unwrap();
    // req_event starts at 1: the first request notifies.
    f.push_request(&Req { id: 7, value: 1 }).unwrap();
    assert!(f.publish_requests());
    // The backend has not re-armed: a second request does not notify.
    f.push_request(&Req { id: 8, value: 2 }).unwrap();
    assert!(!f.publish_requests());
    assert_eq!(b.next_request().unwrap(), Some(Req { id: 7, value: 1 }));
    assert_eq!(b.next_request().unwrap(), Some(Req { id: 8, value: 2 }));
    assert_eq!(b.next_request().unwrap(), None);
    assert!(!b.final_check_for_requests().unwrap());
    assert_eq!(mem.load_index(Layout::REQ_EVENT), 3);
    // Out of order answers; rsp_event is 1: the first publish notifies.
    b.push_response(&Rsp { id: 8, value: 20 }).unwrap();
    b.push_response(&Rsp { id: 7, value: 10 }).unwrap();
    assert_eq!(b.push_response(&Rsp { id: 0, value: 0 }), Err(PushError::NothingToAnswer));
    assert!(b.publish_responses());
    assert_eq!(f.next_response().unwrap(), Some(Rsp { id: 8, value: 20 }));
    assert_eq!(f.next_response().unwrap(), Some(Rsp { id: 7, value: 10 }));
    assert_eq!(f.next_response().unwrap(), None);
    assert!(!f.final_check_for_responses().unwrap());
    // Re-armed: the next request notifies.
    f.push_request(&Req { id: 9, value: 3 }).unwrap();
    assert!(f.publish_requests());
}

#[test]
fn a_frontend_may_ask_for_one_event_per_batch_of_responses() {
    let mut page = [0u8; 4096];
    let mem = PlainMemory::new(&mut page);
    let l = Layout::new(4096, 112).unwrap();
    let mut f: FrontRing<_, Req, Rsp> = FrontRing::init(mem, l).unwrap();
    let mut b: BackRing<_, Req, Rsp> = BackRing::attach(mem, l).unwrap();
    for i in 0..6 {
        f.push_request(&Req { id: i, value: 0 }).unwrap();
    }
    f.publish_requests();
    // A request written but not published cannot be answered: it does not count.
    f.push_request(&Req { id: 6, value: 0 }).unwrap();
    for _ in 0..6 {
        b.next_request().unwrap().unwrap();
    }
    assert!(!f.final_check_for_responses_after(4).unwrap());
    assert_eq!(mem.load_index(Layout::RSP_EVENT), 4);
    // Three answers published one by one: no event; the fourth brings it.
    for i in 0..3 {
        b.push_response(&Rsp { id: i, value: 0 }).unwrap();
        assert!(!b.publish_responses());
    }
    b.push_response(&Rsp { id: 3, value: 0 }).unwrap();
    assert!(b.publish_responses());
    for _ in 0..4 {
        f.next_response().unwrap().unwrap();
    }
    // A batch past what is in flight is cut to it (two published, unanswered): the event
    // always comes.
    assert!(!f.final_check_for_responses_after(100).unwrap());
    assert_eq!(mem.load_index(Layout::RSP_EVENT), 6);
    b.push_response(&Rsp { id: 4, value: 0 }).unwrap();
    b.push_response(&Rsp { id: 5, value: 0 }).unwrap();
    assert!(b.publish_responses());
    // Answers waiting: no event is asked for, the check says so.
    f.publish_requests();
    b.next_request().unwrap().unwrap();
    b.push_response(&Rsp { id: 6, value: 0 }).unwrap();
    b.publish_responses();
    assert!(f.final_check_for_responses_after(3).unwrap());
}

#[test]
fn front_full_after_ring_size_requests() {
    let mut page = [0u8; 4096];
    let l = Layout::new(4096, 112).unwrap();
    let mut f: FrontRing<_, Req, Rsp> = FrontRing::init(PlainMemory::new(&mut page), l).unwrap();
    for i in 0..32 {
        f.push_request(&Req { id: i, value: 0 }).unwrap();
    }
    assert_eq!(f.push_request(&Req { id: 99, value: 0 }), Err(PushError::Full));
    assert_eq!(f.free_requests(), 0);
}

#[test]
fn backend_refuses_producer_more_than_a_ring_ahead_or_backwards() {
    let mut page = [0u8; 4096];
    let mem = PlainMemory::new(&mut page);
    let l = Layout::new(4096, 112).unwrap();
    let mut b: BackRing<_, Req, Rsp> = BackRing::attach(mem, l).unwrap();
    mem.store_index(Layout::REQ_PROD, 33);
    assert!(matches!(b.next_request(), Err(RingError::RequestProducer { req_prod: 33, .. })));
    mem.store_index(Layout::REQ_PROD, 32);
    assert_eq!(b.poll_requests(), Ok(32));
    for _ in 0..5 {
        b.next_request().unwrap().unwrap();
    }
    // Consumed 5, answered 0: the producer may not fall back to 4.
    mem.store_index(Layout::REQ_PROD, 4);
    assert!(b.poll_requests().is_err());
    mem.store_index(Layout::REQ_PROD, u32::MAX);
    assert!(b.poll_requests().is_err());
}

#[test]
fn frontend_refuses_responses_to_requests_never_sent() {
    let mut page = [0u8; 4096];
    let mem = PlainMemory::new(&mut page);
    let l = Layout::new(4096, 112).unwrap();
    let mut f: FrontRing<_, Req, Rsp> = FrontRing::init(mem, l).unwrap();
    f.push_request(&Req { id: 1, value: 0 }).unwrap();
    f.publish_requests();
    mem.store_index(Layout::RSP_PROD, 2);
    assert!(matches!(f.next_response(), Err(RingError::ResponseProducer { .. })));
    mem.store_index(Layout::RSP_PROD, 1);
    assert!(f.next_response().unwrap().is_some());
    mem.store_index(Layout::RSP_PROD, 0);
    assert!(f.poll_responses().is_err());
}

#[test]
fn indices_wrap_around_u32() {
    // Both ends start near 2^32 (as after a long life): masking and comparisons still hold.
    let mut page = [0u8; 4096];
    let mem = PlainMemory::new(&mut page);
    let l = Layout::new(4096, 112).unwrap();
    let mut f: FrontRing<_, Req, Rsp> = FrontRing::init(mem, l).unwrap();
    let mut b: BackRing<_, Req, Rsp> = BackRing::attach(mem, l).unwrap();
    f.req_prod_pvt = u32::MAX - 3;
    f.rsp_cons = u32::MAX - 3;
    f.rsp_seen = u32::MAX - 3;
    b.req_cons = u32::MAX - 3;
    b.req_seen = u32::MAX - 3;
    b.rsp_prod_pvt = u32::MAX - 3;
    mem.store_index(Layout::REQ_PROD, u32::MAX - 3);
    mem.store_index(Layout::RSP_PROD, u32::MAX - 3);
    for round in 0..100u64 {
        for i in 0..20 {
            f.push_request(&Req { id: round * 100 + i, value: 0 }).unwrap();
        }
        f.publish_requests();
        let mut got = Vec::new();
        while let Some(r) = b.next_request().unwrap() {
            got.push(r.id);
        }
        assert_eq!(got.len(), 20);
        for id in got.iter().rev() {
            b.push_response(&Rsp { id: *id, value: 0 }).unwrap();
        }
        b.publish_responses();
        let mut n = 0;
        while let Some(r) = f.next_response().unwrap() {
            assert_eq!(r.id / 100, round);
            n += 1;
        }
        assert_eq!(n, 20);
    }
}

/// One step of the simulation.
#[derive(Clone, Debug)]
enum Step {
    /// The frontend (when awake) writes up to n requests and publishes them.
    Produce(u8),
    /// The backend (when awake) consumes up to n requests.
    Consume(u8),
    /// The backend answers the request at this position among those it holds (any order).
    Answer(u8),
    /// The backend publishes its answers.
    PublishAnswers,
    /// The frontend (when awake) consumes responses.
    Collect,
    /// The backend goes to sleep if its final check allows it.
    BackSleep,
    /// The frontend goes to sleep if its final check allows it.
    FrontSleep,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u8..40).prop_map(Step::Produce),
        (1u8..40).prop_map(Step::Consume),
        any::<u8>().prop_map(Step::Answer),
        Just(Step::PublishAnswers),
        Just(Step::Collect),
        Just(Step::BackSleep),
        Just(Step::FrontSleep),
    ]
}

proptest! {
    /// Under any interleaving: every request is answered exactly once with its own id, and
    /// a side that slept after its final check is always woken by the other's notify
    /// (after the schedule, each side runs only when woken, and everything still drains).
    #[test]
    fn two_sided_simulation(steps in proptest::collection::vec(step(), 0..400), total in 1u64..300) {
        let mut page = vec![0u8; 4096];
        let mem = PlainMemory::new(&mut page);
        let l = Layout::new(4096, 112).unwrap();
        let mut f: FrontRing<_, Req, Rsp> = FrontRing::init(mem, l).unwrap();
        let mut b: BackRing<_, Req, Rsp> = BackRing::attach(mem, l).unwrap();
        let mut next_id = 0u64;
        let mut held: Vec<Req> = Vec::new();
        let mut answered: BTreeMap<u64, u32> = BTreeMap::new();
        let (mut front_awake, mut back_awake) = (true, true);
        let mut notifies = 0u32;
        let produce = |f: &mut FrontRing<_, Req, Rsp>, n: u8, next_id: &mut u64, back_awake: &mut bool, notifies: &mut u32| {
            for _ in 0..n {
                if *next_id >= total || f.push_request(&Req { id: *next_id, value: (*next_id as u32) ^ 0x5a5a }).is_err() {
                    break;
                }
                *next_id += 1;
            }
            if f.publish_requests() {
                *back_awake = true;
                *notifies += 1;
            }
        };
        for s in steps {
            match s {
                Step::Produce(n) if front_awake => produce(&mut f, n, &mut next_id, &mut back_awake, &mut notifies),
                Step::Consume(n) if back_awake => {
                    for _ in 0..n {
                        match b.next_request().unwrap() {
                            Some(r) => held.push(r),
                            None => break,
                        }
                    }
                }
                Step::Answer(i) if back_awake && !held.is_empty() => {
                    let r = held.swap_remove(i as usize % held.len());
                    b.push_response(&Rsp { id: r.id, value: r.value }).unwrap();
                }
                Step::PublishAnswers if back_awake && b.publish_responses() => front_awake = true,
                Step::Collect if front_awake => {
                    while let Some(r) = f.next_response().unwrap() {
                        prop_assert_eq!(r.value, (r.id as u32) ^ 0x5a5a);
                        prop_assert!(answered.insert(r.id, r.value).is_none(), "answered twice");
                    }
                }
                // A backend holding requests keeps working; before sleeping it publishes
                // its answers, as blkback does.
                Step::BackSleep if back_awake && held.is_empty() => {
                    if b.publish_responses() {
                        front_awake = true;
                    }
                    if !b.final_check_for_requests().unwrap() {
                        back_awake = false;
                    }
                }
                // A frontend with nothing left to send waits for answers.
                Step::FrontSleep if front_awake && next_id >= total && !f.final_check_for_responses().unwrap() => {
                    front_awake = false;
                }
                _ => {}
            }
        }
        // Drain: each side runs only while awake (woken by the other's notify).
        for _ in 0..10_000 {
            if !front_awake && !back_awake {
                break;
            }
            if front_awake {
                produce(&mut f, 40, &mut next_id, &mut back_awake, &mut notifies);
                while let Some(r) = f.next_response().unwrap() {
                    prop_assert!(answered.insert(r.id, r.value).is_none());
                }
                if !f.final_check_for_responses().unwrap() && next_id >= total {
                    front_awake = false;
                }
            }
            if back_awake {
                while let Some(r) = b.next_request().unwrap() {
                    held.push(r);
                }
                while let Some(r) = held.pop() {
                    b.push_response(&Rsp { id: r.id, value: r.value }).unwrap();
                }
                if b.publish_responses() {
                    front_awake = true;
                }
                if !b.final_check_for_requests().unwrap() {
                    back_awake = false;
                }
            }
        }
        prop_assert_eq!(answered.len() as u64, total, "requests lost (a missed wake-up)");
        prop_assert!(notifies >= 1);
    }

    /// Whatever the frontend writes into the header and slots, the backend never panics,
    /// never hands out more requests than a ring holds before an error, and its own
    /// responses are refused only when it has nothing to answer.
    #[test]
    fn hostile_frontend_never_breaks_backend(
        writes in proptest::collection::vec((0usize..4, any::<u32>()), 0..30),
        garbage in proptest::collection::vec(any::<u8>(), 4096),
        answers in proptest::collection::vec(any::<bool>(), 0..100),
    ) {
        let mut page = garbage;
        let mem = PlainMemory::new(&mut page);
        let l = Layout::new(4096, 112).unwrap();
        let mut b: BackRing<_, Req, Rsp> = BackRing::attach(mem, l).unwrap();
        let mut taken = 0u32;
        let mut answers = answers.into_iter();
        for (field, value) in writes {
            mem.store_index(field * 4, value);
            while let Ok(Some(_)) = b.next_request() {
                taken += 1;
                prop_assert!(b.unanswered() <= 32);
                if answers.next().unwrap_or(false) {
                    b.push_response(&Rsp { id: 0, value: 0 }).unwrap();
                    b.publish_responses();
                }
            }
            let _ = b.final_check_for_requests();
        }
        prop_assert!(b.unanswered() <= 32);
        let _ = taken;
    }

    /// Whatever the backend writes, the frontend never panics and never takes more
    /// responses than it has requests outstanding.
    #[test]
    fn hostile_backend_never_breaks_frontend(
        writes in proptest::collection::vec((0usize..4, any::<u32>()), 0..30),
        sends in proptest::collection::vec(0u8..40, 0..30),
    ) {
        let mut page = vec![0u8; 4096];
        let mem = PlainMemory::new(&mut page);
        let l = Layout::new(4096, 112).unwrap();
        let mut f: FrontRing<_, Req, Rsp> = FrontRing::init(mem, l).unwrap();
        let (mut sent, mut got) = (0u64, 0u64);
        for ((field, value), n) in writes.into_iter().zip(sends) {
            for _ in 0..n {
                if f.push_request(&Req { id: sent, value: 0 }).is_ok() {
                    sent += 1;
                }
            }
            f.publish_requests();
            mem.store_index(field * 4, value);
            while let Ok(Some(_)) = f.next_response() {
                got += 1;
                prop_assert!(got <= sent);
            }
            let _ = f.final_check_for_responses();
        }
    }
}

/// Two threads on one page through [`RawMemory`]: the frontend sends 100 000 numbered
/// requests, the backend answers each (batches answered in reverse); the frontend sees
/// every answer once. Catches a barrier or an index check that only holds single-threaded.
#[test]
fn two_threads_on_shared_memory() {
    #[repr(align(4096))]
    struct Page([u8; 8192]);
    let page = Box::leak(Box::new(Page([0; 8192])));
    let base = core::ptr::NonNull::new(page.0.as_mut_ptr()).unwrap();
    // SAFETY: the leaked page is 4096-aligned, 8192 bytes, lives forever, and both threads
    // reach it only through RawMemory's atomic and volatile accesses.
    let mem = unsafe { RawMemory::new(base, 8192) };
    let l = Layout::new(8192, 112).unwrap();
    let mut f: FrontRing<_, Req, Rsp> = FrontRing::init(mem, l).unwrap();
    const N: u64 = 100_000;
    let back = std::thread::spawn(move || {
        let mut b: BackRing<_, Req, Rsp> = BackRing::attach(mem, l).unwrap();
        let mut done = 0u64;
        let mut batch = VecDeque::new();
        while done < N {
            while let Some(r) = b.next_request().unwrap() {
                assert_eq!(r.value, (r.id as u32).wrapping_mul(3));
                batch.push_back(r);
            }
            while let Some(r) = batch.pop_back() {
                b.push_response(&Rsp { id: r.id, value: r.value.wrapping_add(1) }).unwrap();
                done += 1;
            }
            b.publish_responses();
            std::hint::spin_loop();
        }
    });
    let (mut sent, mut seen) = (0u64, vec![false; N as usize]);
    let mut got = 0u64;
    while got < N {
        while sent < N && f.push_request(&Req { id: sent, value: (sent as u32).wrapping_mul(3) }).is_ok() {
            sent += 1;
        }
        f.publish_requests();
        while let Some(r) = f.next_response().unwrap() {
            assert_eq!(r.value, (r.id as u32).wrapping_mul(3).wrapping_add(1));
            assert!(!std::mem::replace(&mut seen[r.id as usize], true));
            got += 1;
        }
        std::hint::spin_loop();
    }
    back.join().unwrap();
}
