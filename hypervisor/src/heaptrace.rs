//! The heap tracer (cargo feature `heap-trace`, off by default; `make build
//! HV_FEATURES=heap-trace`): wraps the heap as the global allocator, records every live
//! allocation with the return addresses of its call stack (frame pointers, up to
//! [`DEPTH`] frames, on this CPU's kernel stack only: others count as unknown), and on
//! [`dump`] prints the live allocations grouped by call stack (count and bytes, rounded up
//! to the heap's size classes). Domain 0's `GetPhysInfo` dumps each time it reads the heap,
//! so that `tests/heaptrace.py` can diff the dump before a fuzz run or containment cycles
//! with the one after and name, through addr2line, the call sites whose allocations
//! outlived the domains.
//!
//! Called by the allocator itself (`memory`), by `boot_main` ([`init`], once the heap is
//! up) and by `GetPhysInfo` ([`dump`]). Its own tables come from the heap at boot (about
//! 1 MiB, untraced, counted in the heap's figure) and never grow: when full it counts what
//! it drops. Like the heap it must never be entered from an interrupt that may have
//! interrupted the allocator on the same CPU. Without the feature none of this is built.
//!
//! Domain 0's heap check stays exact with it (the tables are there before and after), but
//! the end-of-run free-memory check (`summary: memory.leaked_frames`) may fail with it: its
//! tables change how much room the heap's mapped pages have spare for structures that grow
//! after boot (seen once, 7 frames, in `make fuzz SEED=3 SMP=4`; the same run passes
//! without the tracer). Use it to find heap residue, not as a test build.

use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use log::info;
use spin::Mutex;

/// Live allocations it can record (an open-addressed table keyed by address).
const LIVE: usize = 1 << 15;
/// Distinct call stacks it can record.
const SITES: usize = 1 << 12;
/// Return addresses kept per call stack.
const DEPTH: usize = 10;

/// A live allocation: its address (0 never used, 1 removed), size and call stack's index.
#[derive(Clone, Copy, Default)]
struct Live {
    ptr: usize,
    size: u32,
    site: u32,
}

/// A call stack, and what is live from it (counted afresh at each dump).
#[derive(Clone, Copy, Default)]
struct Site {
    rips: [u64; DEPTH],
    used: bool,
    count: u32,
    bytes: u64,
}

/// Both tables, in heap memory taken at [`init`].
struct Tables {
    live: &'static mut [Live],
    sites: &'static mut [Site],
    dropped: u64,
    site_full: u64,
}

static TABLES: Mutex<Option<Tables>> = Mutex::new(None);
static READY: AtomicBool = AtomicBool::new(false);

/// What `layout` takes of the heap: its size class (16 to 2048 bytes), or whole pages.
fn rounded(layout: Layout) -> u32 {
    let size = layout.size().max(layout.align());
    if size <= 2048 {
        size.next_power_of_two().max(16) as u32
    } else {
        size.div_ceil(4096) as u32 * 4096
    }
}

/// A table index for `x` (Fibonacci hashing).
fn hash(x: u64) -> usize {
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize
}

impl Tables {
    fn site(&mut self, rips: &[u64; DEPTH]) -> Option<u32> {
        let mut h = 0u64;
        for r in rips {
            h = h.rotate_left(7) ^ *r;
        }
        let mut i = hash(h) % SITES;
        for _ in 0..SITES {
            let s = &mut self.sites[i];
            if !s.used {
                s.used = true;
                s.rips = *rips;
                return Some(i as u32);
            }
            if s.rips == *rips {
                return Some(i as u32);
            }
            i = (i + 1) % SITES;
        }
        self.site_full += 1;
        None
    }

    fn insert(&mut self, ptr: usize, size: u32, site: u32) {
        let mut i = hash(ptr as u64) % LIVE;
        for _ in 0..LIVE {
            let l = &mut self.live[i];
            if l.ptr == 0 || l.ptr == 1 {
                *l = Live { ptr, size, site };
                return;
            }
            i = (i + 1) % LIVE;
        }
        self.dropped += 1;
    }

    fn remove(&mut self, ptr: usize) {
        let mut i = hash(ptr as u64) % LIVE;
        for _ in 0..LIVE {
            let l = &mut self.live[i];
            if l.ptr == ptr {
                l.ptr = 1; // tombstone
                return;
            }
            if l.ptr == 0 {
                return;
            }
            i = (i + 1) % LIVE;
        }
    }
}

/// The traced global allocator: the heap it wraps (`memory`'s), named by `memory` so that
/// the tracer imports nothing above it.
pub struct Traced<A: 'static>(pub &'static A);

// SAFETY: every allocation and release is the heap's own (which upholds `GlobalAlloc`'s
// contract); the tracer only records addresses and never touches the memory handed out.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Traced<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: delegated.
        let ptr = unsafe { self.0.alloc(layout) };
        if !ptr.is_null() && READY.load(Ordering::Relaxed) {
            let mut rips = [0u64; DEPTH];
            crate::arch::percpu::return_addresses(&mut rips);
            let mut t = TABLES.lock();
            if let Some(t) = t.as_mut() {
                let site = t.site(&rips).unwrap_or(u32::MAX);
                t.insert(ptr as usize, rounded(layout), site);
            }
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if READY.load(Ordering::Relaxed) {
            let mut t = TABLES.lock();
            if let Some(t) = t.as_mut() {
                t.remove(ptr as usize);
            }
        }
        // SAFETY: delegated.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

/// Sets the tables up (from the heap, untraced: the tracer is not ready yet).
pub fn init() {
    let (mut live, mut sites) = (Vec::new(), Vec::new());
    if live.try_reserve_exact(LIVE).is_err() || sites.try_reserve_exact(SITES).is_err() {
        info!("heaptrace: no room");
        return;
    }
    live.resize(LIVE, Live::default());
    sites.resize(SITES, Site::default());
    let (live, sites) = (live.leak(), sites.leak());
    *TABLES.lock() = Some(Tables { live, sites, dropped: 0, site_full: 0 });
    READY.store(true, Ordering::Release);
    info!("heaptrace: ready");
}

/// Prints the live allocations grouped by call stack, between lines `heaptrace: dump <n>
/// begin` and `heaptrace: dump <n> end` (`n` counts the dumps from 0).
pub fn dump() {
    static DUMPS: AtomicU64 = AtomicU64::new(0);
    let tag = DUMPS.fetch_add(1, Ordering::Relaxed);
    let mut t = TABLES.lock();
    let Some(t) = t.as_mut() else { return };
    for i in 0..SITES {
        let s = &mut t.sites[i];
        s.count = 0;
        s.bytes = 0;
    }
    let mut unknown = (0u32, 0u64);
    for i in 0..LIVE {
        let l = t.live[i];
        if l.ptr > 1 {
            if l.site == u32::MAX {
                unknown.0 += 1;
                unknown.1 += u64::from(l.size);
            } else {
                let s = &mut t.sites[l.site as usize];
                s.count += 1;
                s.bytes += u64::from(l.size);
            }
        }
    }
    info!("heaptrace: dump {tag} begin dropped={} site_full={} unknown={}/{}", t.dropped, t.site_full, unknown.0, unknown.1);
    for i in 0..SITES {
        let s = &t.sites[i];
        if s.count > 0 {
            info!(
                "heaptrace: {tag} n={} b={} {:x} {:x} {:x} {:x} {:x} {:x} {:x} {:x} {:x} {:x}",
                s.count, s.bytes, s.rips[0], s.rips[1], s.rips[2], s.rips[3], s.rips[4], s.rips[5], s.rips[6],
                s.rips[7], s.rips[8], s.rips[9]
            );
        }
    }
    info!("heaptrace: dump {tag} end");
}
