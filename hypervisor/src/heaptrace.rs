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
#[derive(Clone, Copy)]
struct Live {
    ptr: usize,
    size: u32,
    site: u32,
}

/// A call stack, and what is live from it (counted afresh at each dump).
#[derive(Clone, Copy)]
struct Site {
    rips: [u64; DEPTH],
    used: bool,
    count: u32,
    bytes: u64,
}

/// Both tables, in heap memory taken at [`init`].
struct Tables {
    live: *mut Live,
    sites: *mut Site,
    dropped: u64,
    site_full: u64,
}

// SAFETY: the raw pointers are only used under the mutex.
unsafe impl Send for Tables {}

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

/// The return addresses of the caller's frames, walking the frame-pointer chain (the
/// machine's code keeps frame pointers) while it stays within this CPU's kernel stack.
fn stack(out: &mut [u64; DEPTH]) {
    let (mut rbp, rsp): (u64, u64);
    // SAFETY: reads two registers.
    unsafe { core::arch::asm!("mov {}, rbp", "mov {}, rsp", out(reg) rbp, out(reg) rsp, options(nomem, nostack)) };
    let top = crate::arch::percpu::stack_top_if_ready();
    let Some(top) = top else { return };
    if rsp > top || rsp < top - 64 * 1024 {
        return;
    }
    for slot in out.iter_mut() {
        if rbp < rsp || rbp + 16 > top || rbp % 8 != 0 {
            return;
        }
        // SAFETY: rbp lies within this CPU's kernel stack, which is mapped.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        *slot = ret;
        if next <= rbp {
            return;
        }
        rbp = next;
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
            // SAFETY: i < SITES.
            let s = unsafe { &mut *self.sites.add(i) };
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
            // SAFETY: i < LIVE.
            let l = unsafe { &mut *self.live.add(i) };
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
            // SAFETY: i < LIVE.
            let l = unsafe { &mut *self.live.add(i) };
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
            stack(&mut rips);
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

/// Sets the tables up (from `heap` itself, untraced).
pub fn init(heap: &impl GlobalAlloc) {
    let live = Layout::array::<Live>(LIVE).unwrap();
    let sites = Layout::array::<Site>(SITES).unwrap();
    // SAFETY: non-zero sizes; zeroed memory is a valid empty table.
    let (l, s) = unsafe { (heap.alloc(live), heap.alloc(sites)) };
    if l.is_null() || s.is_null() {
        info!("heaptrace: no room");
        return;
    }
    // SAFETY: just allocated with these sizes.
    unsafe {
        core::ptr::write_bytes(l, 0, live.size());
        core::ptr::write_bytes(s, 0, sites.size());
    }
    *TABLES.lock() = Some(Tables { live: l.cast(), sites: s.cast(), dropped: 0, site_full: 0 });
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
        // SAFETY: i < SITES.
        let s = unsafe { &mut *t.sites.add(i) };
        s.count = 0;
        s.bytes = 0;
    }
    let mut unknown = (0u32, 0u64);
    for i in 0..LIVE {
        // SAFETY: i < LIVE.
        let l = unsafe { *t.live.add(i) };
        if l.ptr > 1 {
            if l.site == u32::MAX {
                unknown.0 += 1;
                unknown.1 += u64::from(l.size);
            } else {
                // SAFETY: site < SITES.
                let s = unsafe { &mut *t.sites.add(l.site as usize) };
                s.count += 1;
                s.bytes += u64::from(l.size);
            }
        }
    }
    info!("heaptrace: dump {tag} begin dropped={} site_full={} unknown={}/{}", t.dropped, t.site_full, unknown.0, unknown.1);
    for i in 0..SITES {
        // SAFETY: i < SITES.
        let s = unsafe { &*t.sites.add(i) };
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
