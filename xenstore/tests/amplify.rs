//! Watch amplification (XSA-115's): one request of a domain that fires every watch it may
//! have for every node it removes must cost the server no more memory than the domain's
//! event queue holds. A counting allocator measures the heap the `rm` takes at its peak
//! (this file is its own test binary, one test, so nothing else allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use xenstore::wire::{Header, Message, MsgType};
use xenstore::Store;

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the counters only add
// and subtract the sizes it was asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn request(store: &mut Store, domid: u16, ty: MsgType, payload: &[u8]) {
    let header = Header { ty: ty as u32, req_id: 1, tx_id: 0, len: payload.len() as u32 };
    store.handle(domid, &Message { header, payload: payload.to_vec() });
}

#[test]
fn one_rm_firing_thousands_of_watch_events_costs_at_most_the_event_queue() {
    let mut store = Store::new();
    store.create_domain(1, "one").unwrap();
    // 200 nodes and 128 watches on their parent: 25,600 events from one rm.
    for i in 0..200 {
        request(&mut store, 1, MsgType::Write, format!("data/a/n{i}\0x").as_bytes());
    }
    for i in 0..128 {
        request(&mut store, 1, MsgType::Watch, format!("data\0token{i}\0").as_bytes());
    }
    let figures = store.figures(1).unwrap();
    assert_eq!(figures.watches, 128);
    // The replies and initial events so far, taken as the domain would.
    while store.pop_output(1).is_some() {}
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    request(&mut store, 1, MsgType::Rm, b"data/a\0");
    let peak = PEAK.load(Ordering::Relaxed) - before;
    println!("the rm took {peak} bytes of heap at its peak");
    let figures = store.figures(1).unwrap();
    assert!(figures.dropped_events > 20_000, "events dropped: {}", figures.dropped_events);
    // The queue (16 KiB of events, one allocation each, and its own array) and the nodes
    // removed: 27 KiB measured; before the fix every event was built first (1.9 MB here).
    assert!(peak < 64 << 10, "the rm took {peak} bytes at its peak");
    // The reply is there, after what fitted of the events.
    let (mut replies, mut event_bytes) = (0, 0);
    while let Some(msg) = store.pop_output(1) {
        match Header::parse(&msg).unwrap().ty {
            t if t == MsgType::Rm as u32 => replies += 1,
            _ => event_bytes += msg.len(),
        }
    }
    assert_eq!(replies, 1);
    assert!(event_bytes <= xenstore::store::EVENT_QUEUE_BYTES + 64, "{event_bytes} bytes of events queued");
}
