//! The guest's heap (cargo feature `heap`): a global allocator (the maintained
//! `linked_list_allocator`'s first-fit heap behind a spin lock) over frames of the
//! reservation the guest hands it at start ([`init`], from [`crate::frames::FreeFrames`]:
//! consecutive frames of the initial mapping, so one contiguous range).
//!
//! Who uses it: domain 0, for its store server. Allocating from an event callback is not
//! allowed (the lock is not taken with events masked: a callback that interrupted a holder
//! on the same vCPU would spin forever). Until [`init`] every allocation fails (and a
//! failed allocation is the default handler's panic). Host builds keep std's allocator.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::Heap;

use crate::frames::FreeFrames;

/// The heap behind a spin lock.
pub struct LockedHeap {
    locked: AtomicBool,
    heap: UnsafeCell<Heap>,
}

// SAFETY: `heap` is only reached with `locked` held (see `with`).
unsafe impl Sync for LockedHeap {}

impl LockedHeap {
    const fn new() -> Self {
        LockedHeap { locked: AtomicBool::new(false), heap: UnsafeCell::new(Heap::empty()) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Heap) -> R) -> R {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference to the heap.
        let result = f(unsafe { &mut *self.heap.get() });
        self.locked.store(false, Ordering::Release);
        result
    }

    /// Bytes in use and the heap's size.
    pub fn usage(&self) -> (usize, usize) {
        self.with(|h| (h.used(), h.size()))
    }
}

// SAFETY: allocations come from the heap's own bookkeeping, under the lock.
unsafe impl GlobalAlloc for LockedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|h| h.allocate_first_fit(layout).map_or(core::ptr::null_mut(), NonNull::as_ptr))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: the caller hands back a block this allocator gave with `layout`.
            self.with(|h| unsafe { h.deallocate(ptr, layout) });
        }
    }
}

/// The allocator.
#[cfg_attr(target_os = "none", global_allocator)]
pub static HEAP: LockedHeap = LockedHeap::new();

/// Gives the heap up to `pages` free frames (consecutive, mapped writable); returns its
/// size in bytes (0: no frames, or called before). Call once, before any allocation.
pub fn init(frames: &mut FreeFrames, pages: usize) -> usize {
    let Some(first) = frames.take() else { return 0 };
    let mut n = 1;
    let mut last = first.pfn.0;
    while n < pages {
        match frames.take() {
            Some(f) if f.pfn.0 == last + 1 => {
                last = f.pfn.0;
                n += 1;
            }
            _ => break,
        }
    }
    let bytes = n * 4096;
    HEAP.with(|h| {
        if h.size() > 0 {
            return 0;
        }
        // SAFETY: the frames from `first` on are consecutive free frames of the initial
        // mapping, writable, used for nothing else from now on (FreeFrames never hands
        // them out again).
        unsafe { h.init(first.va() as *mut u8, bytes) };
        bytes
    })
}
