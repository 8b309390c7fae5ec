//! The hypervisor heap: a growable allocator over one contiguous virtual range.
//!
//! [`Heap`] manages `[base, base + max_size)`. Only a prefix of that range is mapped; when
//! it needs more, it asks a [`PageBacker`] (the hypervisor, which maps fresh frames there)
//! to back the pages right after the mapped end. Small requests (up to
//! [`MAX_SMALL_BLOCK`] bytes, size and alignment rounded up to a power of two) come from
//! per-size-class free lists refilled one page at a time; larger or more aligned requests
//! take whole pages first-fit from an address-ordered, coalescing list of free page runs.
//! [`LockedHeap`] wraps it in a spin lock as the `#[global_allocator]`.
//!
//! Free blocks hold the list links, so the heap needs no memory of its own. It never
//! unmaps: freed pages are reused, and pages split into small blocks stay with their size
//! class. It must never be used from interrupt or NMI context (the lock is not
//! re-entrant), and it never touches memory outside the range the backer has mapped.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use spin::Mutex;

use crate::addr::PAGE_SIZE;

/// Page size as a `usize`, for address arithmetic.
const PAGE: usize = PAGE_SIZE as usize;
/// Smallest block handed out; every small request is rounded up to at least this.
pub const MIN_BLOCK: usize = 16;
/// Largest small block; bigger requests take whole pages.
pub const MAX_SMALL_BLOCK: usize = 2048;
/// Number of small size classes: 16, 32, ..., 2048 bytes.
const CLASSES: usize = (MAX_SMALL_BLOCK.trailing_zeros() - MIN_BLOCK.trailing_zeros() + 1) as usize;
/// Growth asks the backer for at least this many pages at a time (if the range allows).
pub const GROW_MIN_PAGES: usize = 16;
/// Empty-list marker; heap addresses are never 0 (checked by [`Heap::new`]).
const EMPTY: usize = 0;
/// Size of one list-link word.
const WORD: usize = core::mem::size_of::<usize>();

/// Maps fresh memory at the end of the heap.
pub trait PageBacker {
    /// Makes `pages` pages starting at `vaddr` readable and writable memory that nothing
    /// else uses, and returns true; returns false, mapping nothing, if it cannot.
    fn back(&mut self, vaddr: usize, pages: usize) -> bool;
}

/// Why a heap could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapError {
    /// `base` is 0 or not page-aligned, or `max_size` is not a multiple of the page size.
    Unaligned {
        /// The base given.
        base: usize,
        /// The size given.
        max_size: usize,
    },
    /// `base + max_size` does not fit in a `usize`.
    AddressOverflow,
    /// [`LockedHeap::init`] was called twice.
    AlreadyInitialized,
}

/// Heap counters, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Size of the virtual range.
    pub reserved: usize,
    /// Bytes the backer has mapped so far.
    pub mapped: usize,
    /// Bytes handed out and not yet freed (block sizes, after rounding).
    pub in_use: usize,
    /// Highest `in_use` seen.
    pub peak_in_use: usize,
}

/// A heap over `[base, limit)`, mapped up to `top`.
pub struct Heap<B> {
    base: usize,
    limit: usize,
    top: usize,
    backer: B,
    /// Heads of the small free lists; block `i` is `MIN_BLOCK << i` bytes.
    classes: [usize; CLASSES],
    /// Head of the free page-run list, sorted by address.
    runs: usize,
    in_use: usize,
    peak_in_use: usize,
}

/// What a request is served from.
enum Kind {
    Small { class: usize },
    Pages { pages: usize, align: usize },
}

impl Kind {
    fn of(layout: Layout) -> Kind {
        let block = layout
            .size()
            .max(layout.align())
            .max(MIN_BLOCK)
            .next_power_of_two();
        if block <= MAX_SMALL_BLOCK {
            let class = (block.trailing_zeros() - MIN_BLOCK.trailing_zeros()) as usize;
            return Kind::Small { class };
        }
        Kind::Pages {
            pages: layout.size().div_ceil(PAGE).max(1),
            align: layout.align().max(PAGE),
        }
    }

    fn bytes(&self) -> usize {
        match *self {
            Kind::Small { class } => MIN_BLOCK << class,
            Kind::Pages { pages, .. } => pages * PAGE,
        }
    }
}

impl<B: PageBacker> Heap<B> {
    /// Creates an empty heap over `[base, base + max_size)`; nothing is mapped yet.
    ///
    /// # Safety
    /// The range must be reserved for this heap alone for as long as the heap and any
    /// block it handed out are in use, and `backer` must keep the [`PageBacker`] contract:
    /// the heap reads and writes every page the backer reports mapped.
    pub unsafe fn new(base: usize, max_size: usize, backer: B) -> Result<Heap<B>, HeapError> {
        if base == EMPTY || !base.is_multiple_of(PAGE) || !max_size.is_multiple_of(PAGE) {
            return Err(HeapError::Unaligned { base, max_size });
        }
        let limit = base
            .checked_add(max_size)
            .ok_or(HeapError::AddressOverflow)?;
        Ok(Heap {
            base,
            limit,
            top: base,
            backer,
            classes: [EMPTY; CLASSES],
            runs: EMPTY,
            in_use: 0,
            peak_in_use: 0,
        })
    }

    /// Allocates a block for `layout` (a zero size counts as one byte); `None` when the
    /// range is exhausted or the backer refuses to map more.
    pub fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let kind = Kind::of(layout);
        let addr = match kind {
            Kind::Small { class } => self.alloc_small(class)?,
            Kind::Pages { pages, align } => self.take_pages(pages, align)?,
        };
        self.in_use += kind.bytes();
        self.peak_in_use = self.peak_in_use.max(self.in_use);
        NonNull::new(ptr::with_exposed_provenance_mut(addr))
    }

    /// Returns a block to the heap.
    ///
    /// # Safety
    /// `block` must come from [`Heap::alloc`] on this heap with the same `layout`, and
    /// must not be used or freed again afterwards.
    pub unsafe fn dealloc(&mut self, block: NonNull<u8>, layout: Layout) {
        let kind = Kind::of(layout);
        let addr = block.as_ptr().expose_provenance();
        match kind {
            Kind::Small { class } => self.push_small(class, addr),
            Kind::Pages { pages, .. } => self.insert_run(addr, pages),
        }
        self.in_use -= kind.bytes();
    }

    /// The heap's counters.
    pub fn stats(&self) -> HeapStats {
        HeapStats {
            reserved: self.limit - self.base,
            mapped: self.top - self.base,
            in_use: self.in_use,
            peak_in_use: self.peak_in_use,
        }
    }

    fn alloc_small(&mut self, class: usize) -> Option<usize> {
        if self.classes[class] == EMPTY {
            self.refill(class)?;
        }
        let block = self.classes[class];
        // SAFETY: `block` heads a small free list, so it is a free, mapped block whose
        // first word `push_small` wrote.
        self.classes[class] = unsafe { load(block) };
        Some(block)
    }

    /// Splits one fresh page into blocks of `class`, lowest address handed out first.
    fn refill(&mut self, class: usize) -> Option<()> {
        let page = self.take_pages(1, PAGE)?;
        let size = MIN_BLOCK << class;
        for block in (page..page + PAGE).step_by(size).rev() {
            self.push_small(class, block);
        }
        Some(())
    }

    fn push_small(&mut self, class: usize, block: usize) {
        // SAFETY: `block` is a mapped block of at least MIN_BLOCK bytes, aligned to its
        // size, that nobody else uses any more (fresh from `refill` or freed by `dealloc`).
        unsafe { store(block, self.classes[class]) };
        self.classes[class] = block;
    }

    /// Takes `pages` pages aligned to `align` (a power of two, at least a page), growing
    /// the mapped part if no free run holds them.
    fn take_pages(&mut self, pages: usize, align: usize) -> Option<usize> {
        if let Some(addr) = self.take_from_runs(pages, align) {
            return Some(addr);
        }
        self.grow(pages, align)?;
        self.take_from_runs(pages, align)
    }

    /// First fit: the lowest free run that holds an aligned block, split around it.
    fn take_from_runs(&mut self, pages: usize, align: usize) -> Option<usize> {
        let size = pages.checked_mul(PAGE)?;
        let (mut prev, mut run) = (EMPTY, self.runs);
        while run != EMPTY {
            let (run_end, next) = (self.run_end(run), self.run_next(run));
            let fits = |start: &usize| start.checked_add(size).is_some_and(|end| end <= run_end);
            let start = align_up(run, align).filter(fits);
            if let Some(start) = start {
                self.link(prev, next);
                self.insert_run(run, (start - run) / PAGE);
                self.insert_run(start + size, (run_end - start - size) / PAGE);
                return Some(start);
            }
            (prev, run) = (run, next);
        }
        None
    }

    /// Maps enough pages at the end of the heap that a free run holds the request: at
    /// least [`GROW_MIN_PAGES`], or exactly what is needed if the backer refuses more.
    fn grow(&mut self, pages: usize, align: usize) -> Option<()> {
        let from = self.tail_run().unwrap_or(self.top);
        let needed = align_up(from, align)?.checked_add(pages.checked_mul(PAGE)?)?;
        if needed > self.limit {
            return None;
        }
        let generous = self
            .top
            .saturating_add(GROW_MIN_PAGES * PAGE)
            .min(self.limit)
            .max(needed);
        let top = self.top;
        let mut back_to = |end: usize| self.backer.back(top, (end - top) / PAGE);
        let new_top = if back_to(generous) {
            generous
        } else if generous > needed && back_to(needed) {
            needed
        } else {
            return None;
        };
        self.insert_run(top, (new_top - top) / PAGE);
        self.top = new_top;
        Some(())
    }

    /// Start of the free run that ends at the mapped top, if any.
    fn tail_run(&self) -> Option<usize> {
        let mut run = self.runs;
        while run != EMPTY {
            let next = self.run_next(run);
            if next == EMPTY {
                return (self.run_end(run) == self.top).then_some(run);
            }
            run = next;
        }
        None
    }

    /// Adds `pages` free pages at `addr` to the run list, merging with neighbours.
    fn insert_run(&mut self, addr: usize, pages: usize) {
        if pages == 0 {
            return;
        }
        let end = addr + pages * PAGE;
        let (mut prev, mut next) = (EMPTY, self.runs);
        while next != EMPTY && next < addr {
            (prev, next) = (next, self.run_next(next));
        }
        debug_assert!(prev == EMPTY || self.run_end(prev) <= addr, "run overlaps");
        debug_assert!(next == EMPTY || end <= next, "run overlaps");
        let (mut merged_end, mut after) = (end, next);
        if next != EMPTY && next == end {
            (merged_end, after) = (self.run_end(next), self.run_next(next));
        }
        if prev != EMPTY && self.run_end(prev) == addr {
            self.write_run(prev, merged_end, after);
        } else {
            self.write_run(addr, merged_end, after);
            self.link(prev, addr);
        }
    }

    /// Points `prev` (or the list head when `prev` is EMPTY) at `next`.
    fn link(&mut self, prev: usize, next: usize) {
        if prev == EMPTY {
            self.runs = next;
        } else {
            // SAFETY: `prev` is a run on the list: mapped, free, with a two-word header.
            unsafe { store(prev + WORD, next) };
        }
    }

    fn run_end(&self, run: usize) -> usize {
        // SAFETY: `run` is a run on the list: mapped, free, header written by `write_run`.
        unsafe { load(run) }
    }

    fn run_next(&self, run: usize) -> usize {
        // SAFETY: as in `run_end`.
        unsafe { load(run + WORD) }
    }

    fn write_run(&mut self, run: usize, end: usize, next: usize) {
        // SAFETY: `run` starts at least one free, mapped, page-aligned page owned by the
        // heap, so its first two words are ours to write.
        unsafe {
            store(run, end);
            store(run + WORD, next);
        }
    }
}

/// Rounds `addr` up to `align` (a power of two); `None` on overflow.
fn align_up(addr: usize, align: usize) -> Option<usize> {
    Some(addr.checked_add(align - 1)? & !(align - 1))
}

/// Reads the word at `addr`.
///
/// # Safety
/// `addr` must be mapped, word-aligned heap memory that holds a list link.
unsafe fn load(addr: usize) -> usize {
    // SAFETY: the caller guarantees `addr` is readable and aligned.
    unsafe { ptr::with_exposed_provenance::<usize>(addr).read() }
}

/// Writes `value` to the word at `addr`.
///
/// # Safety
/// `addr` must be mapped, word-aligned heap memory that no one else uses.
unsafe fn store(addr: usize, value: usize) {
    // SAFETY: the caller guarantees `addr` is writable, aligned and unshared.
    unsafe { ptr::with_exposed_provenance_mut::<usize>(addr).write(value) }
}

/// A [`Heap`] behind a spin lock, usable as the `#[global_allocator]`: declare it in a
/// `static` with [`LockedHeap::new`] and hand it the heap with [`LockedHeap::init`].
/// Until then every allocation fails.
pub struct LockedHeap<B> {
    heap: Mutex<Option<Heap<B>>>,
}

impl<B> LockedHeap<B> {
    /// An uninitialised heap.
    pub const fn new() -> LockedHeap<B> {
        LockedHeap {
            heap: Mutex::new(None),
        }
    }
}

impl<B> Default for LockedHeap<B> {
    fn default() -> LockedHeap<B> {
        LockedHeap::new()
    }
}

impl<B: PageBacker> LockedHeap<B> {
    /// Installs the heap; fails if one is installed already.
    pub fn init(&self, heap: Heap<B>) -> Result<(), HeapError> {
        let mut slot = self.heap.lock();
        if slot.is_some() {
            return Err(HeapError::AlreadyInitialized);
        }
        *slot = Some(heap);
        Ok(())
    }

    /// The heap's counters; `None` before [`LockedHeap::init`].
    pub fn stats(&self) -> Option<HeapStats> {
        self.heap.lock().as_ref().map(Heap::stats)
    }
}

// SAFETY: `Heap::alloc` returns blocks of at least `layout.size()` bytes aligned to
// `layout.align()` that overlap no other live block, and `dealloc` forwards only
// pointers this allocator returned, as the `GlobalAlloc` contract promises.
unsafe impl<B: PageBacker + Send> GlobalAlloc for LockedHeap<B> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut heap = self.heap.lock();
        heap.as_mut()
            .and_then(|h| h.alloc(layout))
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let mut heap = self.heap.lock();
        if let (Some(heap), Some(block)) = (heap.as_mut(), NonNull::new(block)) {
            // SAFETY: the `GlobalAlloc` contract: `block` came from `alloc` above with
            // this `layout`, so from this heap, and is freed once.
            unsafe { heap.dealloc(block, layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex as StdMutex};

    const KIB: usize = 1024;

    /// Host memory standing in for the heap's virtual range.
    struct Arena {
        block: NonNull<u8>,
        layout: Layout,
    }

    impl Arena {
        fn new(size: usize) -> Arena {
            let layout = Layout::from_size_align(size, PAGE).unwrap();
            // SAFETY: the layout has a non-zero size.
            let block = NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap();
            Arena { block, layout }
        }

        fn base(&self) -> usize {
            self.block.as_ptr().expose_provenance()
        }
    }

    impl Drop for Arena {
        fn drop(&mut self) {
            // SAFETY: allocated in `Arena::new` with this layout.
            unsafe { std::alloc::dealloc(self.block.as_ptr(), self.layout) }
        }
    }

    /// Records every call and refuses once its page budget is spent. Freshly "mapped"
    /// pages are filled with junk, as real fresh frames may be.
    struct Backer {
        calls: Arc<StdMutex<Vec<(usize, usize)>>>,
        budget: usize,
    }

    impl PageBacker for Backer {
        fn back(&mut self, vaddr: usize, pages: usize) -> bool {
            if pages > self.budget {
                return false;
            }
            self.budget -= pages;
            self.calls.lock().unwrap().push((vaddr, pages));
            let start = ptr::with_exposed_provenance_mut::<u8>(vaddr);
            // SAFETY: the tests only make heaps inside an `Arena`, so these pages exist.
            unsafe { start.write_bytes(0xa5, pages * PAGE) };
            true
        }
    }

    struct Fixture {
        heap: Heap<Backer>,
        calls: Arc<StdMutex<Vec<(usize, usize)>>>,
        base: usize,
        _arena: Arena,
    }

    fn fixture(size: usize, budget: usize) -> Fixture {
        let arena = Arena::new(size);
        let calls = Arc::new(StdMutex::new(Vec::new()));
        let backer = Backer {
            calls: calls.clone(),
            budget,
        };
        // SAFETY: the arena is ours alone and outlives the heap (same fixture).
        let heap = unsafe { Heap::new(arena.base(), size, backer) }.unwrap();
        Fixture {
            heap,
            calls,
            base: arena.base(),
            _arena: arena,
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    fn addr(block: NonNull<u8>) -> usize {
        block.as_ptr().expose_provenance()
    }

    impl Fixture {
        fn alloc(&mut self, size: usize, align: usize) -> Option<usize> {
            self.heap.alloc(layout(size, align)).map(addr)
        }

        fn free(&mut self, block: usize, size: usize, align: usize) {
            let block = NonNull::new(ptr::with_exposed_provenance_mut(block)).unwrap();
            // SAFETY: the tests free only blocks they allocated, once, with their layout.
            unsafe { self.heap.dealloc(block, layout(size, align)) }
        }

        fn calls(&self) -> Vec<(usize, usize)> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[test]
    fn growth_calls_the_backer_at_the_mapped_end() {
        let mut f = fixture(1024 * KIB, usize::MAX);
        assert!(
            f.calls().is_empty(),
            "nothing is mapped before the first allocation"
        );
        let small = f.alloc(24, 8).unwrap();
        assert_eq!(f.calls(), vec![(f.base, GROW_MIN_PAGES)]);
        assert_eq!(small, f.base);
        // 15 free pages remain at the end; 25 are needed, so the heap grows.
        let big = f.alloc(100 * KIB, 8).unwrap();
        assert_eq!(big, f.base + PAGE, "the tail run is extended, not skipped");
        assert_eq!(f.calls(), vec![(f.base, 16), (f.base + 64 * KIB, 16)]);
        assert_eq!(f.heap.stats().mapped, 128 * KIB);
        assert_eq!(f.heap.stats().reserved, 1024 * KIB);
    }

    #[test]
    fn blocks_are_reused_after_free() {
        let mut f = fixture(256 * KIB, usize::MAX);
        let small = f.alloc(64, 8).unwrap();
        f.free(small, 64, 8);
        assert_eq!(f.alloc(64, 8), Some(small));
        let large = f.alloc(3 * PAGE, 8).unwrap();
        f.free(large, 3 * PAGE, 8);
        assert_eq!(f.alloc(3 * PAGE, 8), Some(large));
        assert_eq!(f.calls().len(), 1);
    }

    #[test]
    fn freed_runs_coalesce() {
        let mut f = fixture(256 * KIB, usize::MAX);
        let blocks: Vec<_> = (0..3).map(|_| f.alloc(2 * PAGE, 8).unwrap()).collect();
        assert_eq!(blocks, vec![f.base, f.base + 2 * PAGE, f.base + 4 * PAGE]);
        for &i in &[1, 0, 2] {
            f.free(blocks[i], 2 * PAGE, 8);
        }
        assert_eq!(
            f.alloc(16 * PAGE, 8),
            Some(f.base),
            "all 16 mapped pages form one run"
        );
        assert_eq!(f.calls().len(), 1);
    }

    #[test]
    fn out_of_memory_returns_none() {
        let mut f = fixture(64 * KIB, usize::MAX);
        assert_eq!(f.alloc(128 * KIB, 8), None, "bigger than the range");
        assert!(f.calls().is_empty());
        assert_eq!(f.alloc(64 * KIB, 8), Some(f.base));
        assert_eq!(f.alloc(16, 8), None, "range exhausted");

        let mut refusing = fixture(64 * KIB, 0);
        assert_eq!(refusing.alloc(16, 8), None, "backer refuses");
        assert_eq!(
            refusing.heap.stats(),
            HeapStats {
                reserved: 64 * KIB,
                ..HeapStats::default()
            }
        );
    }

    #[test]
    fn growth_falls_back_to_the_exact_need() {
        let mut f = fixture(1024 * KIB, 20);
        f.alloc(10 * PAGE, 8).unwrap();
        // 6 pages free at the tail, budget 4: 16 more are refused, exactly 4 are granted.
        assert!(f.alloc(10 * PAGE, 8).is_some());
        assert_eq!(f.calls(), vec![(f.base, 16), (f.base + 16 * PAGE, 4)]);
        let before = f.heap.stats();
        assert_eq!(f.alloc(2 * PAGE, 8), None);
        assert_eq!(
            f.heap.stats(),
            before,
            "a failed allocation changes no counter"
        );
    }

    #[test]
    fn alignment_is_honoured_for_every_power_of_two() {
        let mut f = fixture(4096 * KIB, usize::MAX);
        for shift in 0..=16 {
            let align = 1 << shift;
            for size in [1, 24, 2048, 5000] {
                let block = f.alloc(size, align).unwrap();
                assert_eq!(block % align, 0, "size {size} align {align}");
            }
        }
    }

    #[test]
    fn zero_sized_requests_get_distinct_blocks() {
        let mut f = fixture(64 * KIB, usize::MAX);
        let a = f.alloc(0, 1).unwrap();
        let b = f.alloc(0, 1).unwrap();
        assert_ne!(a, b);
        assert_eq!(f.heap.stats().in_use, 2 * MIN_BLOCK);
    }

    #[test]
    fn stats_track_use_and_peak() {
        let mut f = fixture(256 * KIB, usize::MAX);
        let a = f.alloc(100, 8).unwrap();
        let b = f.alloc(3 * PAGE + 1, 8).unwrap();
        assert_eq!(f.heap.stats().in_use, 128 + 4 * PAGE);
        f.free(b, 3 * PAGE + 1, 8);
        f.free(a, 100, 8);
        let stats = f.heap.stats();
        assert_eq!(
            (stats.in_use, stats.peak_in_use, stats.mapped),
            (0, 128 + 4 * PAGE, 64 * KIB)
        );
    }

    #[test]
    fn randomized_allocations_never_overlap() {
        let mut f = fixture(8 * 1024 * KIB, usize::MAX);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize
        };
        // start -> (size, align, fill byte)
        let mut live: BTreeMap<usize, (usize, usize, u8)> = BTreeMap::new();
        for step in 0..20_000 {
            if live.len() > 300 || (!live.is_empty() && next() % 5 < 2) {
                let key = *live.keys().nth(next() % live.len()).unwrap();
                let (size, align, fill) = live.remove(&key).unwrap();
                let bytes =
                    ptr::slice_from_raw_parts(ptr::with_exposed_provenance::<u8>(key), size);
                // SAFETY: the block is live, `size` bytes long, and was filled below.
                let intact = unsafe { &*bytes }.iter().all(|&b| b == fill);
                assert!(intact, "block {key:#x} clobbered");
                f.free(key, size, align);
                continue;
            }
            let size = match next() % 10 {
                0 => next() % (40 * KIB),
                1..=3 => next() % 4200,
                _ => next() % 300,
            };
            let align = 1 << (next() % if next() % 8 == 0 { 15 } else { 5 });
            let block = f.alloc(size, align).unwrap();
            let stats = f.heap.stats();
            assert_eq!(block % align, 0);
            assert!(block >= f.base && block + size <= f.base + stats.mapped);
            if let Some((&prev, &(prev_size, _, _))) = live.range(..=block).next_back() {
                assert!(
                    prev + prev_size.max(1) <= block,
                    "overlaps block at {prev:#x}"
                );
            }
            if let Some((&following, _)) = live.range(block..).next() {
                assert!(
                    block + size.max(1) <= following,
                    "overlaps block at {following:#x}"
                );
            }
            let fill = step as u8;
            // SAFETY: the heap just handed out these `size` bytes to us.
            unsafe { ptr::with_exposed_provenance_mut::<u8>(block).write_bytes(fill, size) };
            live.insert(block, (size, align, fill));
        }
        let mapped = f.heap.stats().mapped;
        for (block, (size, align, _)) in std::mem::take(&mut live) {
            f.free(block, size, align);
        }
        assert_eq!(f.heap.stats().in_use, 0);
        assert_eq!(f.heap.stats().mapped, mapped);
        assert!(
            f.calls()
                .windows(2)
                .all(|w| w[0].0 + w[0].1 * PAGE == w[1].0),
            "gap in growth"
        );
    }

    #[test]
    fn new_rejects_bad_ranges() {
        let backer = || Backer {
            calls: Arc::default(),
            budget: 0,
        };
        let cases = [
            (
                0,
                PAGE,
                HeapError::Unaligned {
                    base: 0,
                    max_size: PAGE,
                },
            ),
            (
                PAGE + 8,
                PAGE,
                HeapError::Unaligned {
                    base: PAGE + 8,
                    max_size: PAGE,
                },
            ),
            (
                PAGE,
                PAGE + 1,
                HeapError::Unaligned {
                    base: PAGE,
                    max_size: PAGE + 1,
                },
            ),
            (usize::MAX - PAGE + 1, 2 * PAGE, HeapError::AddressOverflow),
        ];
        for (base, size, error) in cases {
            // SAFETY: construction fails before the range could be touched.
            let heap = unsafe { Heap::new(base, size, backer()) };
            assert_eq!(heap.err(), Some(error));
        }
    }

    static GLOBAL: LockedHeap<Backer> = LockedHeap::new();

    #[test]
    fn locked_heap_works_as_global_alloc() {
        let small = layout(40, 8);
        // SAFETY: a non-zero-sized layout.
        let block = unsafe { GLOBAL.alloc(small) };
        assert!(block.is_null(), "uninitialised heap fails");
        assert_eq!(GLOBAL.stats(), None);
        let f = fixture(256 * KIB, usize::MAX);
        let Fixture {
            heap,
            _arena: arena,
            ..
        } = f;
        GLOBAL.init(heap).unwrap();
        let second = fixture(64 * KIB, 0);
        assert_eq!(GLOBAL.init(second.heap), Err(HeapError::AlreadyInitialized));
        // SAFETY: a non-zero-sized layout.
        let block = unsafe { GLOBAL.alloc(small) };
        assert_eq!(block.expose_provenance(), arena.base());
        assert_eq!(GLOBAL.stats().unwrap().in_use, 64);
        // SAFETY: `block` came from GLOBAL with this layout.
        unsafe { GLOBAL.dealloc(block, small) };
        assert_eq!(GLOBAL.stats().unwrap().in_use, 0);
        // The static must not outlive the arena in use: leave it allocated.
        std::mem::forget(arena);
    }
}
