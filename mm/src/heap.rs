//! The hypervisor heap: a growable, shrinkable allocator over one contiguous virtual range.
//!
//! [`Heap`] manages `[base, base + max_size)`. Pages of that range are mapped on demand by a
//! [`PageBacker`] (the hypervisor, which maps fresh frames there) and given back to it by
//! [`Heap::trim`]. Small requests (up to [`MAX_SMALL_BLOCK`] bytes, size and alignment
//! rounded up to a power of two) come from per-size-class free lists refilled one page at a
//! time; larger or more aligned requests take whole pages first-fit from an address-ordered,
//! coalescing list of free page runs. When every block of a small page is free again the
//! page goes back to the page runs, except that each class keeps one empty page (so that
//! allocating and freeing across a page boundary does not take and return a page each
//! time). [`LockedHeap`] wraps it in a spin lock as the `#[global_allocator]`.
//!
//! The first page(s) of the range hold a side table with one 16-bit page state per page
//! (mapped or not, free, whole-page allocation, or small blocks of a class with how many
//! are live); free blocks and free runs hold the list links. So the heap needs no memory
//! of its own beyond the range, and the mapped pages need not be a prefix of it: growth
//! maps the unmapped pages of the lowest stretch that can hold a request.
//!
//! Giving memory back is two-step, because the old translations must leave every CPU
//! before a frame is reused, and a TLB shootdown must not happen under the heap lock (a
//! CPU spinning on that lock with interrupts off would never answer it): [`Heap::trim`]
//! hands free pages to [`PageBacker::unback`] and quarantines them, and after the caller
//! has flushed every CPU, [`Heap::reuse_unbacked`] lets growth map them again.
//!
//! It never unmaps from `alloc` or `dealloc` (only `trim` does); it never backs a page that
//! is quarantined; it must never be used from interrupt or NMI context (the lock is not
//! re-entrant); and it never touches memory outside the pages the backer has mapped.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use spin::Mutex;

use crate::addr::PAGE_SIZE;

/// Page size as a `usize`, for address arithmetic.
const PAGE: usize = PAGE_SIZE as usize;
/// Smallest block handed out; every small request is rounded up to at least this. It holds
/// the two links of a free block.
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
/// Size of one side-table entry.
const ENTRY: usize = core::mem::size_of::<u16>();

const _: () = assert!(MIN_BLOCK >= 2 * WORD, "a free block holds two links");
const _: () = assert!(
    PAGE / MIN_BLOCK <= PageState::LIVE_MASK as usize,
    "live count fits"
);
const _: () = assert!(CLASSES <= 16, "class fits in four bits");

/// Maps and unmaps the heap's pages.
pub trait PageBacker {
    /// Makes the first pages of `pages` pages starting at `vaddr` readable and writable
    /// memory that nothing else uses, and returns how many (all of them, or fewer down to
    /// 0 when it runs out). It never unmaps: pages it mapped stay the heap's, which gives
    /// them back only through [`PageBacker::unback`].
    fn back(&mut self, vaddr: usize, pages: usize) -> usize;

    /// Takes back the first pages of `pages` pages at `vaddr`, which [`PageBacker::back`]
    /// mapped and the heap no longer uses, and returns how many it took (fewer, down to 0,
    /// when it cannot hold more until the caller of [`Heap::trim`] has finished the round).
    ///
    /// The heap never touches a page it gave back and does not ask for it to be backed
    /// again before [`Heap::reuse_unbacked`], so the backer may unmap it at once; but the
    /// frame must not be reused before every CPU has dropped the old translation. Called
    /// only from [`Heap::trim`], never from `alloc` or `dealloc`.
    fn unback(&mut self, vaddr: usize, pages: usize) -> usize;
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
    /// Bytes mapped now (the side table included; pages given back are not).
    pub mapped: usize,
    /// Bytes handed out and not yet freed (block sizes, after rounding).
    pub in_use: usize,
    /// Highest `in_use` seen.
    pub peak_in_use: usize,
}

/// What one page of the range is used for: one 16-bit side-table entry.
///
/// Encoding: bits 13..=15 the state, and for [`PageState::Small`] bits 9..=12 the class and
/// bits 0..=8 the live count. All zeroes is `Unmapped`, so a zeroed table is a fresh heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PageState {
    /// Not mapped; free to back.
    Unmapped,
    /// Mapped and on a free page run.
    Free,
    /// Mapped and part of a whole-page allocation (or of the side table).
    Taken,
    /// Mapped and split into blocks of size class `class` (`MIN_BLOCK << class` bytes),
    /// `live` of them handed out.
    Small {
        /// The size class.
        class: usize,
        /// Blocks handed out and not yet freed.
        live: usize,
    },
    /// Given back to the backer; not backed again before [`Heap::reuse_unbacked`].
    Unbacked,
}

impl PageState {
    const STATE_SHIFT: u32 = 13;
    const CLASS_SHIFT: u32 = 9;
    const CLASS_MASK: u16 = 0xf;
    const LIVE_MASK: u16 = 0x1ff;

    /// The side-table entry for this state.
    fn encode(self) -> u16 {
        let state = |s: u16| s << Self::STATE_SHIFT;
        match self {
            PageState::Unmapped => state(0),
            PageState::Free => state(1),
            PageState::Taken => state(2),
            PageState::Small { class, live } => {
                debug_assert!(class < CLASSES && live <= Self::LIVE_MASK as usize);
                state(3) | ((class as u16) << Self::CLASS_SHIFT) | live as u16
            }
            PageState::Unbacked => state(4),
        }
    }

    /// The state a side-table entry holds (entries the heap did not write decode as
    /// `Taken`, which nothing ever frees or backs).
    fn decode(entry: u16) -> PageState {
        match entry >> Self::STATE_SHIFT {
            0 => PageState::Unmapped,
            1 => PageState::Free,
            3 => PageState::Small {
                class: ((entry >> Self::CLASS_SHIFT) & Self::CLASS_MASK) as usize,
                live: (entry & Self::LIVE_MASK) as usize,
            },
            4 => PageState::Unbacked,
            _ => PageState::Taken,
        }
    }

    /// Whether growth may use the page (it is free, mapped or not).
    fn is_available(self) -> bool {
        matches!(self, PageState::Unmapped | PageState::Free)
    }

    /// Whether the page is mapped.
    #[cfg(test)]
    fn is_mapped(self) -> bool {
        !matches!(self, PageState::Unmapped | PageState::Unbacked)
    }
}

/// A heap over `[base, limit)`: the side table in `[base, start)`, blocks in `[start, limit)`.
pub struct Heap<B> {
    base: usize,
    start: usize,
    limit: usize,
    backer: B,
    /// Side-table pages backed (and zeroed) so far.
    table_backed: usize,
    /// The whole side table is backed.
    table_mapped: bool,
    /// Heads of the small free lists (doubly linked: `[next, prev]` in each free block);
    /// block `i` is `MIN_BLOCK << i` bytes. Roughly address-ordered (see
    /// [`Heap::push_block`]), so that allocation prefers low pages.
    classes: [usize; CLASSES],
    /// Tails of the small free lists, or EMPTY.
    tails: [usize; CLASSES],
    /// The empty page each class keeps, or EMPTY.
    spare: [usize; CLASSES],
    /// Head of the free page-run list (`[end, next]` in each run's first page), sorted by
    /// address, with no two runs adjacent.
    runs: usize,
    mapped_pages: usize,
    /// Pages between these addresses may be `Unbacked` (EMPTY, EMPTY when none is).
    unbacked: (usize, usize),
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

/// Size of the blocks of class `class`.
const fn block_size(class: usize) -> usize {
    MIN_BLOCK << class
}

/// The page holding `addr`.
const fn page_of(addr: usize) -> usize {
    addr & !(PAGE - 1)
}

impl<B: PageBacker> Heap<B> {
    /// Creates an empty heap over `[base, base + max_size)`; nothing is mapped yet. The
    /// side table takes the first `2 * max_size / 4096` bytes (rounded up to pages).
    ///
    /// # Safety
    /// The range must be reserved for this heap alone for as long as the heap and any
    /// block it handed out are in use, and `backer` must keep the [`PageBacker`] contract:
    /// the heap reads and writes every page the backer reports mapped until it gives the
    /// page back.
    pub unsafe fn new(base: usize, max_size: usize, backer: B) -> Result<Heap<B>, HeapError> {
        if base == EMPTY || !base.is_multiple_of(PAGE) || !max_size.is_multiple_of(PAGE) {
            return Err(HeapError::Unaligned { base, max_size });
        }
        let limit = base
            .checked_add(max_size)
            .ok_or(HeapError::AddressOverflow)?;
        let table_bytes = (max_size / PAGE) * ENTRY;
        let start = base + table_bytes.div_ceil(PAGE) * PAGE;
        Ok(Heap {
            base,
            start,
            limit,
            backer,
            table_backed: 0,
            table_mapped: false,
            classes: [EMPTY; CLASSES],
            tails: [EMPTY; CLASSES],
            spare: [EMPTY; CLASSES],
            runs: EMPTY,
            mapped_pages: 0,
            unbacked: (EMPTY, EMPTY),
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

    /// Returns a block to the heap. Never unmaps anything (see [`Heap::trim`]).
    ///
    /// # Safety
    /// `block` must come from [`Heap::alloc`] on this heap with the same `layout`, and
    /// must not be used or freed again afterwards.
    pub unsafe fn dealloc(&mut self, block: NonNull<u8>, layout: Layout) {
        let kind = Kind::of(layout);
        let addr = block.as_ptr().expose_provenance();
        match kind {
            Kind::Small { class } => self.free_small(class, addr),
            Kind::Pages { pages, .. } => self.free_pages(addr, pages),
        }
        self.in_use -= kind.bytes();
    }

    /// Gives every free whole page back to the backer through [`PageBacker::unback`]: the
    /// free page runs and the empty page each size class keeps. Returns how many pages it
    /// gave back; fewer than are free when the backer stopped taking them (call again after
    /// finishing the round). The pages given back are quarantined until
    /// [`Heap::reuse_unbacked`], which the caller calls once no CPU can still use their old
    /// translations.
    pub fn trim(&mut self) -> usize {
        if !self.table_mapped {
            return 0;
        }
        for class in 0..CLASSES {
            let page = core::mem::replace(&mut self.spare[class], EMPTY);
            if page != EMPTY {
                self.release_small_page(class, page);
            }
        }
        let mut given = 0;
        while self.runs != EMPTY {
            let run = self.runs;
            // Read the header first: the page is gone once the backer took it.
            let (end, next) = (self.run_end(run), self.run_next(run));
            let pages = (end - run) / PAGE;
            let taken = self.backer.unback(run, pages).min(pages);
            if taken == 0 {
                break;
            }
            let taken_end = run + taken * PAGE;
            self.set_states(run, taken, PageState::Unbacked);
            self.mapped_pages -= taken;
            given += taken;
            self.unbacked = match self.unbacked {
                (EMPTY, _) => (run, taken_end),
                (low, high) => (low.min(run), high.max(taken_end)),
            };
            if taken < pages {
                self.write_run(taken_end, end, next);
                self.runs = taken_end;
                break;
            }
            self.runs = next;
        }
        given
    }

    /// Every CPU has dropped its translations of the pages [`Heap::trim`] gave back: growth
    /// may back them again.
    pub fn reuse_unbacked(&mut self) {
        let (low, high) = core::mem::replace(&mut self.unbacked, (EMPTY, EMPTY));
        for page in (low..high).step_by(PAGE) {
            if self.state(page) == PageState::Unbacked {
                self.set_state(page, PageState::Unmapped);
            }
        }
    }

    /// The heap's counters.
    pub fn stats(&self) -> HeapStats {
        HeapStats {
            reserved: self.limit - self.base,
            mapped: self.mapped_pages * PAGE,
            in_use: self.in_use,
            peak_in_use: self.peak_in_use,
        }
    }

    fn alloc_small(&mut self, class: usize) -> Option<usize> {
        if self.classes[class] == EMPTY {
            self.refill(class)?;
        }
        let block = self.classes[class];
        self.unlink_block(class, block);
        let page = page_of(block);
        let live = self.live(page, class);
        if live == 0 && self.spare[class] == page {
            self.spare[class] = EMPTY;
        }
        self.set_state(
            page,
            PageState::Small {
                class,
                live: live + 1,
            },
        );
        Some(block)
    }

    fn free_small(&mut self, class: usize, block: usize) {
        self.push_block(class, block);
        let page = page_of(block);
        let live = self.live(page, class) - 1;
        self.set_state(page, PageState::Small { class, live });
        if live == 0 {
            if self.spare[class] == EMPTY {
                self.spare[class] = page;
            } else {
                self.release_small_page(class, page);
            }
        }
    }

    /// The live count of `page`, which must hold blocks of `class`.
    fn live(&self, page: usize, class: usize) -> usize {
        match self.state(page) {
            PageState::Small { class: c, live } if c == class => live,
            other => unreachable!("page {page:#x} of class {class} is {other:?}"),
        }
    }

    /// Splits one page into blocks of `class`, lowest address handed out first.
    fn refill(&mut self, class: usize) -> Option<()> {
        let page = self.take_pages(1, PAGE)?;
        self.set_state(page, PageState::Small { class, live: 0 });
        // The list is empty: pushed in descending order, each block goes to the head, so
        // the lowest is handed out first.
        for block in (page..page + PAGE).step_by(block_size(class)).rev() {
            self.push_block(class, block);
        }
        Some(())
    }

    /// Takes an empty small page (all its blocks free) off its class and frees the page.
    fn release_small_page(&mut self, class: usize, page: usize) {
        debug_assert_eq!(self.state(page), PageState::Small { class, live: 0 });
        for block in (page..page + PAGE).step_by(block_size(class)) {
            self.unlink_block(class, block);
        }
        self.free_pages(page, 1);
    }

    /// Puts a free block on its class list: at the head if it lies no higher than the
    /// head's page, else at the tail. Allocation takes the head, so blocks on low pages are
    /// used first and high pages empty out, to be trimmed: without it, the blocks freed
    /// last (those of a structure that was large, high in the heap) are reused first, and
    /// a few long-lived small allocations made then pin high pages for good.
    fn push_block(&mut self, class: usize, block: usize) {
        let (head, tail) = (self.classes[class], self.tails[class]);
        let (next, prev) = if head == EMPTY || page_of(block) <= page_of(head) { (head, EMPTY) } else { (EMPTY, tail) };
        // SAFETY: `block` is a mapped block of at least MIN_BLOCK bytes, aligned to its
        // size, that nobody else uses any more (fresh from `refill` or freed by `dealloc`);
        // `next` and `prev`, if any, are free blocks on the same list.
        unsafe {
            store(block, next);
            store(block + WORD, prev);
            if next != EMPTY {
                store(next + WORD, block);
            }
            if prev != EMPTY {
                store(prev, block);
            }
        }
        if prev == EMPTY {
            self.classes[class] = block;
        }
        if next == EMPTY {
            self.tails[class] = block;
        }
    }

    /// Takes a free block off its class list.
    fn unlink_block(&mut self, class: usize, block: usize) {
        // SAFETY: `block` is on the free list of `class`: mapped, free, links written by
        // `push_block`; so are its neighbours.
        unsafe {
            let (next, prev) = (load(block), load(block + WORD));
            if prev == EMPTY {
                self.classes[class] = next;
            } else {
                store(prev, next);
            }
            if next == EMPTY {
                self.tails[class] = prev;
            } else {
                store(next + WORD, prev);
            }
        }
    }

    /// Takes `pages` pages aligned to `align` (a power of two, at least a page), growing
    /// the mapped part if no free run holds them.
    fn take_pages(&mut self, pages: usize, align: usize) -> Option<usize> {
        let addr = match self.take_from_runs(pages, align) {
            Some(addr) => addr,
            None => {
                self.grow(pages, align)?;
                self.take_from_runs(pages, align)?
            }
        };
        self.set_states(addr, pages, PageState::Taken);
        Some(addr)
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
                self.link_run(run, (start - run) / PAGE);
                self.link_run(start + size, (run_end - start - size) / PAGE);
                return Some(start);
            }
            (prev, run) = (run, next);
        }
        None
    }

    /// Backs the unmapped pages of the lowest stretch of available pages that holds the
    /// request, so that a free run holds it: at least [`GROW_MIN_PAGES`] at a time where
    /// the unmapped pages reach that far. Pages backed before the backer ran out stay
    /// mapped and free even when the request fails.
    fn grow(&mut self, pages: usize, align: usize) -> Option<()> {
        let size = pages.checked_mul(PAGE)?;
        if !self.table_mapped {
            let fits = align_up(self.start, align)?.checked_add(size)? <= self.limit;
            if !fits || !self.map_table() {
                return None;
            }
        }
        // Backing from where the stretch starts, not from the aligned address, keeps the
        // alignment padding mapped and free, as a mapped prefix would have it.
        let (mut page, end) = self.find_stretch(size, align)?;
        while page < end {
            if self.state(page) != PageState::Unmapped {
                page += PAGE;
                continue;
            }
            let span = page;
            while page < end && self.state(page) == PageState::Unmapped {
                page += PAGE;
            }
            let mut generous = page;
            let wanted = span.saturating_add(GROW_MIN_PAGES * PAGE).min(self.limit);
            while generous < wanted && self.state(generous) == PageState::Unmapped {
                generous += PAGE;
            }
            self.back_span(span, page, generous)?;
        }
        Some(())
    }

    /// Asks for `[from, generous)` to be backed and frees what was; `None` if that falls
    /// short of `needed`.
    fn back_span(&mut self, from: usize, needed: usize, generous: usize) -> Option<()> {
        let wanted = (generous - from) / PAGE;
        let pages = self.backer.back(from, wanted).min(wanted);
        if pages > 0 {
            self.mapped_pages += pages;
            self.free_pages(from, pages);
        }
        (from + pages * PAGE >= needed).then_some(())
    }

    /// The lowest stretch of available (free or unmapped) pages in the block area that
    /// holds `size` bytes at an `align`-aligned address: its start, and the end of the
    /// aligned block in it.
    fn find_stretch(&self, size: usize, align: usize) -> Option<(usize, usize)> {
        let mut stretch = self.start;
        let mut page = self.start;
        while page < self.limit {
            let available = self.state(page).is_available();
            page += PAGE;
            if !available {
                stretch = page;
                continue;
            }
            let end = align_up(stretch, align)?.checked_add(size)?;
            if end <= page {
                return Some((stretch, end));
            }
        }
        None
    }

    /// Backs the side table and zeroes it (every page `Unmapped`), marking its own pages
    /// taken; false if the backer runs out first (what it backed is kept for next time).
    fn map_table(&mut self) -> bool {
        let pages = (self.start - self.base) / PAGE;
        while self.table_backed < pages {
            let at = self.base + self.table_backed * PAGE;
            let wanted = pages - self.table_backed;
            let got = self.backer.back(at, wanted).min(wanted);
            if got == 0 {
                return false;
            }
            // SAFETY: the backer just mapped these pages for the heap alone.
            unsafe { ptr::with_exposed_provenance_mut::<u8>(at).write_bytes(0, got * PAGE) };
            self.table_backed += got;
            self.mapped_pages += got;
        }
        self.table_mapped = true;
        self.set_states(self.base, pages, PageState::Taken);
        true
    }

    fn state(&self, page: usize) -> PageState {
        let entry = self.base + (page - self.base) / PAGE * ENTRY;
        // SAFETY: the table is mapped (every caller runs after `map_table`) and `page` is in
        // the range, so its entry lies in the table.
        PageState::decode(unsafe { ptr::with_exposed_provenance::<u16>(entry).read() })
    }

    fn set_state(&mut self, page: usize, state: PageState) {
        let entry = self.base + (page - self.base) / PAGE * ENTRY;
        // SAFETY: as in `state`; the table is the heap's alone.
        unsafe { ptr::with_exposed_provenance_mut::<u16>(entry).write(state.encode()) }
    }

    fn set_states(&mut self, from: usize, pages: usize, state: PageState) {
        for page in (from..from + pages * PAGE).step_by(PAGE) {
            self.set_state(page, state);
        }
    }

    /// Frees `pages` mapped pages at `addr`: marks them free and adds them to the run list.
    fn free_pages(&mut self, addr: usize, pages: usize) {
        self.set_states(addr, pages, PageState::Free);
        self.link_run(addr, pages);
    }

    /// Adds `pages` free pages at `addr` to the run list, merging with neighbours.
    fn link_run(&mut self, addr: usize, pages: usize) {
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

    /// [`Heap::trim`] under the lock (0 before [`LockedHeap::init`]). The lock is released
    /// on return: flush the old translations everywhere, then call
    /// [`LockedHeap::reuse_unbacked`].
    pub fn trim(&self) -> usize {
        self.heap.lock().as_mut().map_or(0, Heap::trim)
    }

    /// Runs `f` with the heap locked, so that nothing is allocated, freed, backed or given
    /// back meanwhile (a caller moving heap pages to other frames needs that); `f` must not
    /// use the heap.
    pub fn while_locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let _heap = self.heap.lock();
        f()
    }

    /// [`Heap::reuse_unbacked`] under the lock.
    pub fn reuse_unbacked(&self) {
        if let Some(heap) = self.heap.lock().as_mut() {
            heap.reuse_unbacked();
        }
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
    use std::collections::{BTreeMap, BTreeSet};
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

    /// What the backer saw: its calls, and which pages are mapped now.
    #[derive(Default)]
    struct Record {
        backs: Vec<(usize, usize)>,
        unbacks: Vec<(usize, usize)>,
        mapped: BTreeSet<usize>,
        /// Pages unbacked in the current round (until `Fixture::finish_round`).
        pending: usize,
    }

    /// Records every call that mapped something and maps no more than its page budget
    /// (pages given back refill it). Freshly "mapped" pages are filled with junk, as real fresh frames may
    /// be, and so are pages given back, so that a heap still reading them fails. Takes at
    /// most `round` pages per trim round, like a backer with a fixed buffer of frames.
    struct Backer {
        record: Arc<StdMutex<Record>>,
        budget: usize,
        round: usize,
    }

    impl PageBacker for Backer {
        fn back(&mut self, vaddr: usize, pages: usize) -> usize {
            let pages = pages.min(self.budget);
            if pages == 0 {
                return 0;
            }
            self.budget -= pages;
            let mut record = self.record.lock().unwrap();
            record.backs.push((vaddr, pages));
            for page in (vaddr..vaddr + pages * PAGE).step_by(PAGE) {
                assert!(record.mapped.insert(page), "page {page:#x} backed twice");
            }
            let start = ptr::with_exposed_provenance_mut::<u8>(vaddr);
            // SAFETY: the tests only make heaps inside an `Arena`, so these pages exist.
            unsafe { start.write_bytes(0xa5, pages * PAGE) };
            pages
        }

        fn unback(&mut self, vaddr: usize, pages: usize) -> usize {
            let mut record = self.record.lock().unwrap();
            let taken = pages.min(self.round - record.pending);
            if taken == 0 {
                return 0;
            }
            record.pending += taken;
            record.unbacks.push((vaddr, taken));
            for page in (vaddr..vaddr + taken * PAGE).step_by(PAGE) {
                assert!(record.mapped.remove(&page), "page {page:#x} was not mapped");
            }
            self.budget += taken;
            let start = ptr::with_exposed_provenance_mut::<u8>(vaddr);
            // SAFETY: as in `back`.
            unsafe { start.write_bytes(0x5a, taken * PAGE) };
            taken
        }
    }

    struct Fixture {
        heap: Heap<Backer>,
        record: Arc<StdMutex<Record>>,
        base: usize,
        /// The first block address (after the one-page side table).
        start: usize,
        _arena: Arena,
    }

    fn fixture(size: usize, budget: usize) -> Fixture {
        fixture_with_round(size, budget, usize::MAX)
    }

    fn fixture_with_round(size: usize, budget: usize, round: usize) -> Fixture {
        let arena = Arena::new(size);
        let record = Arc::new(StdMutex::new(Record::default()));
        let backer = Backer {
            record: record.clone(),
            budget,
            round,
        };
        // SAFETY: the arena is ours alone and outlives the heap (same fixture).
        let heap = unsafe { Heap::new(arena.base(), size, backer) }.unwrap();
        assert!(
            size <= 8 * 1024 * KIB,
            "the tests assume a one-page side table"
        );
        Fixture {
            heap,
            record,
            base: arena.base(),
            start: arena.base() + PAGE,
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

        /// The backer's `back` calls.
        fn calls(&self) -> Vec<(usize, usize)> {
            self.record.lock().unwrap().backs.clone()
        }

        fn unbacks(&self) -> Vec<(usize, usize)> {
            self.record.lock().unwrap().unbacks.clone()
        }

        fn backer_mapped(&self) -> BTreeSet<usize> {
            self.record.lock().unwrap().mapped.clone()
        }

        /// What the hypervisor does after a trim: flush everywhere, free the frames, let
        /// the heap reuse the pages.
        fn finish_round(&mut self) {
            self.record.lock().unwrap().pending = 0;
            self.heap.reuse_unbacked();
        }

        /// Trims in rounds until nothing more is given back; returns the pages given back.
        fn trim_all(&mut self) -> usize {
            let mut total = 0;
            loop {
                let given = self.heap.trim();
                self.finish_round();
                if given == 0 {
                    return total;
                }
                total += given;
            }
        }

        fn state(&self, addr: usize) -> PageState {
            self.heap.state(page_of(addr))
        }

        fn runs(&self) -> Vec<(usize, usize)> {
            let mut runs = Vec::new();
            let mut run = self.heap.runs;
            while run != EMPTY {
                runs.push((run, self.heap.run_end(run)));
                run = self.heap.run_next(run);
            }
            runs
        }

        /// Checks every invariant the heap keeps between calls.
        fn check(&self) {
            let heap = &self.heap;
            let mut states = BTreeMap::new();
            for page in (heap.base..heap.limit).step_by(PAGE) {
                states.insert(page, heap.state(page));
            }
            // Mapped pages: as counted, as the backer sees them, and the table among them.
            let mapped: BTreeSet<usize> = states
                .iter()
                .filter(|(_, s)| s.is_mapped())
                .map(|(&p, _)| p)
                .collect();
            assert_eq!(mapped.len(), heap.mapped_pages, "mapped count");
            assert_eq!(mapped, self.backer_mapped(), "heap and backer disagree");
            assert_eq!(states[&heap.base], PageState::Taken, "side table");
            // Runs: sorted, apart, and exactly the free pages.
            let runs = self.runs();
            let mut free = BTreeSet::new();
            for (i, &(start, end)) in runs.iter().enumerate() {
                assert!(start < end && start >= heap.start && end <= heap.limit);
                if let Some(&(next, _)) = runs.get(i + 1) {
                    assert!(end < next, "runs {start:#x} and {next:#x} touch or overlap");
                }
                free.extend((start..end).step_by(PAGE));
            }
            let marked_free: BTreeSet<usize> = states
                .iter()
                .filter(|(_, s)| **s == PageState::Free)
                .map(|(&p, _)| p)
                .collect();
            assert_eq!(free, marked_free, "free runs and free pages disagree");
            // Small lists: links both ways, blocks on pages of their class, counts add up.
            let mut free_blocks: BTreeMap<usize, usize> = BTreeMap::new();
            for class in 0..CLASSES {
                let (mut prev, mut block) = (EMPTY, heap.classes[class]);
                while block != EMPTY {
                    // SAFETY: a block on a free list: mapped, links written by the heap.
                    let (next, back) = unsafe { (load(block), load(block + WORD)) };
                    assert_eq!(back, prev, "back link of {block:#x}");
                    assert!(
                        matches!(states[&page_of(block)], PageState::Small { class: c, .. } if c == class),
                        "free block {block:#x} on a page not of class {class}"
                    );
                    assert_eq!(block % block_size(class), 0);
                    *free_blocks.entry(page_of(block)).or_default() += 1;
                    (prev, block) = (block, next);
                }
                assert_eq!(heap.tails[class], prev, "tail of class {class}");
            }
            let mut empty_pages = BTreeSet::new();
            for (&page, &state) in &states {
                if let PageState::Small { class, live } = state {
                    let free = free_blocks.get(&page).copied().unwrap_or(0);
                    assert_eq!(free + live, PAGE / block_size(class), "page {page:#x}");
                    if live == 0 {
                        empty_pages.insert(page);
                        assert_eq!(
                            heap.spare[class], page,
                            "an empty page is its class's spare"
                        );
                    }
                }
            }
            let spares: BTreeSet<usize> =
                heap.spare.iter().copied().filter(|&p| p != EMPTY).collect();
            assert_eq!(spares, empty_pages);
        }
    }

    #[test]
    fn page_states_round_trip_through_the_side_table_encoding() {
        let mut states = vec![
            PageState::Unmapped,
            PageState::Free,
            PageState::Taken,
            PageState::Unbacked,
        ];
        for class in 0..CLASSES {
            for live in [0, 1, PAGE / block_size(class)] {
                states.push(PageState::Small { class, live });
            }
        }
        for state in states {
            assert_eq!(PageState::decode(state.encode()), state);
        }
        assert_eq!(
            PageState::Unmapped.encode(),
            0,
            "a zeroed table is all unmapped"
        );
    }

    #[test]
    fn growth_calls_the_backer_at_the_mapped_end() {
        let mut f = fixture(1024 * KIB, usize::MAX);
        assert!(
            f.calls().is_empty(),
            "nothing is mapped before the first allocation"
        );
        let small = f.alloc(24, 8).unwrap();
        assert_eq!(f.calls(), vec![(f.base, 1), (f.start, GROW_MIN_PAGES)]);
        assert_eq!(small, f.start);
        // 15 free pages remain at the end; 25 are needed, so the heap grows.
        let big = f.alloc(100 * KIB, 8).unwrap();
        assert_eq!(big, f.start + PAGE, "the tail run is extended, not skipped");
        assert_eq!(
            f.calls(),
            vec![(f.base, 1), (f.start, 16), (f.start + 64 * KIB, 16)]
        );
        assert_eq!(f.heap.stats().mapped, PAGE + 128 * KIB);
        assert_eq!(f.heap.stats().reserved, 1024 * KIB);
        f.check();
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
        assert_eq!(f.calls().len(), 2, "the side table, then one growth");
        f.check();
    }

    #[test]
    fn freed_runs_coalesce() {
        let mut f = fixture(256 * KIB, usize::MAX);
        let blocks: Vec<_> = (0..3).map(|_| f.alloc(2 * PAGE, 8).unwrap()).collect();
        assert_eq!(
            blocks,
            vec![f.start, f.start + 2 * PAGE, f.start + 4 * PAGE]
        );
        for &i in &[1, 0, 2] {
            f.free(blocks[i], 2 * PAGE, 8);
        }
        assert_eq!(
            f.alloc(16 * PAGE, 8),
            Some(f.start),
            "all 16 mapped pages form one run"
        );
        assert_eq!(f.calls().len(), 2);
        f.check();
    }

    #[test]
    fn out_of_memory_returns_none() {
        let mut f = fixture(64 * KIB, usize::MAX);
        assert_eq!(f.alloc(128 * KIB, 8), None, "bigger than the range");
        assert_eq!(
            f.alloc(64 * KIB, 8),
            None,
            "bigger than the range less the table"
        );
        assert!(f.calls().is_empty());
        assert_eq!(f.alloc(60 * KIB, 8), Some(f.start));
        assert_eq!(f.alloc(16, 8), None, "range exhausted");
        f.check();

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
    fn growth_takes_what_the_backer_can_give() {
        let mut f = fixture(1024 * KIB, 21);
        f.alloc(10 * PAGE, 8).unwrap();
        // 6 pages free at the tail, budget 4: of 16 more asked for, the 4 needed are given.
        assert!(f.alloc(10 * PAGE, 8).is_some());
        assert_eq!(
            f.calls(),
            vec![(f.base, 1), (f.start, 16), (f.start + 16 * PAGE, 4)]
        );
        let before = f.heap.stats();
        assert_eq!(f.alloc(2 * PAGE, 8), None);
        assert_eq!(
            f.heap.stats(),
            before,
            "a failed allocation changes no counter"
        );
        f.check();
    }

    #[test]
    fn a_short_grant_fails_the_request_but_its_pages_stay_usable() {
        let mut f = fixture(1024 * KIB, 1 + 6);
        // 10 pages needed, 6 given: the request fails, the 6 pages are free and mapped.
        assert_eq!(f.alloc(10 * PAGE, 8), None);
        assert_eq!(f.heap.stats().mapped, 7 * PAGE);
        assert_eq!(f.heap.stats().in_use, 0);
        assert_eq!(f.runs(), vec![(f.start, f.start + 6 * PAGE)]);
        f.check();
        assert_eq!(f.alloc(6 * PAGE, 8), Some(f.start), "they serve what fits");
        f.free(f.start, 6 * PAGE, 8);
        assert_eq!(f.trim_all(), 6, "and go back like any free page");
        f.check();

        // The side table too may come in pieces (a 12 MiB range has a two-page table).
        let arena = Arena::new(12 * 1024 * KIB);
        let record = Arc::new(StdMutex::new(Record::default()));
        let backer = Backer {
            record: record.clone(),
            budget: 1,
            round: usize::MAX,
        };
        // SAFETY: the arena is ours alone and outlives the heap.
        let mut heap = unsafe { Heap::new(arena.base(), 12 * 1024 * KIB, backer) }.unwrap();
        assert_eq!(heap.alloc(layout(8, 8)), None, "one table page of two");
        heap.backer.budget = 17;
        let block = heap.alloc(layout(8, 8)).map(addr);
        assert_eq!(block, Some(arena.base() + 2 * PAGE));
        assert_eq!(
            record.lock().unwrap().backs,
            vec![
                (arena.base(), 1),
                (arena.base() + PAGE, 1),
                (arena.base() + 2 * PAGE, 16)
            ]
        );
        drop(heap);
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
        f.check();
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
            (0, 128 + 4 * PAGE, PAGE + 64 * KIB)
        );
    }

    #[test]
    fn live_counts_follow_allocations_and_frees() {
        let mut f = fixture(256 * KIB, usize::MAX);
        let blocks: Vec<_> = (0..5).map(|_| f.alloc(64, 8).unwrap()).collect();
        let page = page_of(blocks[0]);
        assert!(blocks.iter().all(|&b| page_of(b) == page));
        let class = 2;
        assert_eq!(f.state(page), PageState::Small { class, live: 5 });
        f.free(blocks[3], 64, 8);
        f.free(blocks[0], 64, 8);
        assert_eq!(f.state(page), PageState::Small { class, live: 3 });
        f.check();
        // Fill the page and spill into a second one.
        let more: Vec<_> = (0..PAGE / 64).map(|_| f.alloc(64, 8).unwrap()).collect();
        assert_eq!(
            f.state(page),
            PageState::Small {
                class,
                live: PAGE / 64
            }
        );
        let second = page_of(*more.last().unwrap());
        assert_ne!(second, page);
        assert_eq!(f.state(second), PageState::Small { class, live: 3 });
        assert_eq!(f.state(second + PAGE), PageState::Free);
        f.check();
    }

    #[test]
    fn a_page_whose_blocks_are_all_freed_goes_back_to_the_runs() {
        let mut f = fixture(256 * KIB, usize::MAX);
        // 2048-byte blocks: two per page; four blocks fill the first two pages.
        let blocks: Vec<_> = (0..4).map(|_| f.alloc(2048, 8).unwrap()).collect();
        let (p1, p2) = (f.start, f.start + PAGE);
        assert_eq!(blocks, vec![p1, p1 + 2048, p2, p2 + 2048]);
        assert_eq!(f.runs(), vec![(f.start + 2 * PAGE, f.start + 16 * PAGE)]);
        f.free(blocks[0], 2048, 8);
        f.free(blocks[1], 2048, 8);
        assert_eq!(
            f.state(p1),
            PageState::Small { class: 7, live: 0 },
            "the first empty page is kept as the class's spare"
        );
        f.check();
        f.free(blocks[3], 2048, 8);
        f.free(blocks[2], 2048, 8);
        assert_eq!(
            f.state(p2),
            PageState::Free,
            "a second empty page is returned"
        );
        assert_eq!(f.runs(), vec![(p2, f.start + 16 * PAGE)], "and merged");
        f.check();
        assert_eq!(
            f.alloc(PAGE, 8),
            Some(p2),
            "the returned page serves page requests"
        );
        // The spare page still serves its class without taking a page.
        assert_eq!(f.alloc(2048, 8).map(page_of), Some(p1));
        f.check();
    }

    #[test]
    fn one_empty_page_per_class_absorbs_churn_at_a_page_boundary() {
        let mut f = fixture(256 * KIB, usize::MAX);
        let full: Vec<_> = (0..2).map(|_| f.alloc(2048, 8).unwrap()).collect();
        let runs = f.runs();
        for _ in 0..100 {
            let block = f.alloc(2048, 8).unwrap();
            assert_eq!(block, f.start + PAGE, "always the same spare page");
            f.free(block, 2048, 8);
            assert_eq!(f.state(block), PageState::Small { class: 7, live: 0 });
        }
        assert_eq!(f.runs().len(), 1);
        assert_eq!(
            f.runs()[0].0,
            runs[0].0 + PAGE,
            "the page stays with the class"
        );
        assert_eq!(f.calls().len(), 2, "no more growth");
        assert!(f.unbacks().is_empty());
        // Each class keeps its own.
        let small = f.alloc(16, 8).unwrap();
        f.free(small, 16, 8);
        assert_eq!(f.state(small), PageState::Small { class: 0, live: 0 });
        f.check();
        for block in full {
            f.free(block, 2048, 8);
        }
        f.check();
    }

    #[test]
    fn trim_gives_back_free_pages_and_spares_but_not_live_ones() {
        let mut f = fixture(1024 * KIB, usize::MAX);
        let small = f.alloc(40, 8).unwrap();
        let spare = f.alloc(1000, 8).unwrap();
        let big = f.alloc(5 * PAGE, 8).unwrap();
        let after = f.alloc(PAGE, 8).unwrap();
        f.free(spare, 1000, 8);
        f.free(big, 5 * PAGE, 8);
        f.check();
        assert_eq!(f.heap.stats().mapped, 17 * PAGE);
        let given = f.heap.trim();
        // Free: the 1024-byte class's spare page, the five pages of `big`, and the tail.
        assert_eq!(given, 1 + 5 + 8);
        assert_eq!(
            f.unbacks(),
            vec![(f.start + PAGE, 6), (f.start + 8 * PAGE, 8)]
        );
        assert_eq!(
            f.heap.stats().mapped,
            3 * PAGE,
            "table, small page, `after`"
        );
        assert_eq!(f.state(spare), PageState::Unbacked);
        assert!(f.runs().is_empty());
        f.check();
        // Live blocks are untouched.
        assert_eq!(f.state(small), PageState::Small { class: 2, live: 1 });
        assert_eq!(f.state(after), PageState::Taken);
        f.finish_round();
        assert_eq!(f.state(spare), PageState::Unmapped);
        assert_eq!(f.heap.trim(), 0, "nothing left to give");
        f.check();
    }

    #[test]
    fn small_blocks_come_from_low_pages_first() {
        let mut f = fixture(1024 * KIB, usize::MAX);
        // Four pages of 1024-byte blocks, all live; then everything but one block of the
        // lowest page is freed, high pages last (as a large table is torn down).
        let blocks: Vec<usize> = (0..16).map(|_| f.alloc(1024, 8).unwrap()).collect();
        let pages: BTreeSet<usize> = blocks.iter().map(|&b| page_of(b)).collect();
        assert_eq!(pages.len(), 4);
        for &block in &blocks[1..] {
            f.free(block, 1024, 8);
        }
        f.check();
        // A long-lived block allocated now goes to the lowest page, not to the page freed
        // last, so the high pages stay empty and trimming gives them back.
        let kept = f.alloc(1024, 8).unwrap();
        assert_eq!(page_of(kept), page_of(blocks[0]));
        f.heap.trim();
        f.check();
        for &block in &blocks[4..] {
            assert_eq!(f.state(block), PageState::Unbacked, "high pages given back");
        }
        f.free(kept, 1024, 8);
        f.free(blocks[0], 1024, 8);
        f.check();
    }

    #[test]
    fn pages_given_back_are_not_backed_again_before_the_round_ends() {
        let mut f = fixture(1024 * KIB, usize::MAX);
        let keep = f.alloc(PAGE, 8).unwrap();
        assert_eq!(f.heap.trim(), 15);
        // The hole after `keep` is quarantined: growth maps past it.
        let during = f.alloc(8 * PAGE, 8).unwrap();
        assert_eq!(during, f.start + 16 * PAGE);
        assert_eq!(*f.calls().last().unwrap(), (f.start + 16 * PAGE, 16));
        f.check();
        f.finish_round();
        // Now a request that the free tail (8 pages) cannot hold regrows into the hole,
        // lowest first, generously only as far as the hole reaches.
        let big = f.alloc(12 * PAGE, 8).unwrap();
        assert_eq!(big, keep + PAGE);
        assert_eq!(*f.calls().last().unwrap(), (keep + PAGE, 15));
        // SAFETY: the heap just handed out these bytes.
        unsafe { ptr::with_exposed_provenance_mut::<u8>(big).write_bytes(7, 12 * PAGE) };
        f.check();
    }

    #[test]
    fn regrowth_fills_holes_left_by_trimming() {
        let mut f = fixture(1024 * KIB, usize::MAX);
        let blocks: Vec<_> = (0..8).map(|_| f.alloc(2 * PAGE, 8).unwrap()).collect();
        for &block in blocks.iter().step_by(2) {
            f.free(block, 2 * PAGE, 8);
        }
        assert_eq!(f.trim_all(), 8, "the four freed blocks; no free tail");
        assert_eq!(f.heap.stats().mapped, (1 + 8) * PAGE);
        f.check();
        // A one-page request remaps the lowest hole, generously only up to its end.
        let one = f.alloc(100, 8).unwrap();
        assert_eq!(one, f.start);
        assert_eq!(*f.calls().last().unwrap(), (f.start, 2));
        // A three-page request fits no hole of two pages: it goes to the tail.
        let three = f.alloc(3 * PAGE, 8).unwrap();
        assert_eq!(three, f.start + 16 * PAGE);
        f.check();
        for (i, &block) in blocks.iter().enumerate().skip(1).step_by(2) {
            f.free(block, 2 * PAGE, 8);
            assert_eq!(f.state(block), PageState::Free, "block {i}");
        }
        f.free(one, 100, 8);
        f.free(three, 3 * PAGE, 8);
        f.check();
        f.trim_all();
        assert_eq!(f.heap.stats().mapped, PAGE, "only the side table is left");
        assert_eq!(f.backer_mapped(), BTreeSet::from([f.base]));
        f.check();
    }

    #[test]
    fn a_backer_that_takes_a_few_pages_at_a_time_gets_them_all_in_rounds() {
        let mut f = fixture_with_round(1024 * KIB, usize::MAX, 3);
        let block = f.alloc(40 * PAGE, 8).unwrap();
        f.free(block, 40 * PAGE, 8);
        let mut rounds = Vec::new();
        loop {
            let given = f.heap.trim();
            f.check();
            f.finish_round();
            if given == 0 {
                break;
            }
            rounds.push(given);
        }
        assert_eq!(rounds.iter().sum::<usize>(), 40);
        assert!(rounds.iter().all(|&n| n <= 3));
        assert_eq!(f.heap.stats().mapped, PAGE);
        f.check();
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
            assert!(block >= f.start && block + size <= f.base + stats.reserved);
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
        f.check();
        let mapped = f.heap.stats().mapped;
        for (block, (size, align, _)) in std::mem::take(&mut live) {
            f.free(block, size, align);
        }
        assert_eq!(f.heap.stats().in_use, 0);
        assert_eq!(f.heap.stats().mapped, mapped, "freeing never unmaps");
        assert!(f.unbacks().is_empty());
        assert!(
            f.calls()
                .windows(2)
                .all(|w| w[0].0 + w[0].1 * PAGE == w[1].0),
            "gap in growth"
        );
        f.check();
        f.trim_all();
        assert_eq!(
            f.heap.stats().mapped,
            PAGE,
            "everything but the side table is back"
        );
    }

    #[test]
    fn randomized_with_trims_returns_everything_in_the_end() {
        for seed in [
            0x2545_f491_4f6c_dd1d,
            0x9e37_79b9_7f4a_7c15,
            0x1234_5678_9abc_def1,
        ] {
            random_run_with_trims(seed);
        }
    }

    /// Random allocations, frees and trims (some rounds left open across allocations),
    /// checking contents, overlap, mapping and the heap's invariants; then frees all and
    /// trims: only the side table may stay mapped.
    fn random_run_with_trims(mut seed: u64) {
        let mut f = fixture_with_round(4 * 1024 * KIB, usize::MAX, 64);
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize
        };
        let mut live: BTreeMap<usize, (usize, usize, u8)> = BTreeMap::new();
        let mut pending_round = false;
        for step in 0..30_000 {
            match next() % 100 {
                // Trim now and then; sometimes allocate and free before the round ends.
                0 => {
                    let unbacks = f.unbacks().len();
                    f.heap.trim();
                    pending_round = true;
                    assert!(f.unbacks().len() >= unbacks);
                }
                1..=5 if pending_round => {
                    f.finish_round();
                    pending_round = false;
                }
                r if !live.is_empty() && (live.len() > 400 || r < 45) => {
                    let key = *live.keys().nth(next() % live.len()).unwrap();
                    let (size, align, fill) = live.remove(&key).unwrap();
                    let bytes =
                        ptr::slice_from_raw_parts(ptr::with_exposed_provenance::<u8>(key), size);
                    // SAFETY: the block is live, `size` bytes long, and was filled below.
                    let intact = unsafe { &*bytes }.iter().all(|&b| b == fill);
                    assert!(intact, "block {key:#x} clobbered");
                    let unbacks = f.unbacks().len();
                    f.free(key, size, align);
                    assert_eq!(f.unbacks().len(), unbacks, "dealloc never unbacks");
                }
                _ => {
                    let size = match next() % 10 {
                        0 => next() % (24 * KIB),
                        1..=3 => next() % 4200,
                        _ => next() % 300,
                    };
                    let align = 1 << (next() % if next() % 8 == 0 { 14 } else { 5 });
                    let block = f.alloc(size, align).unwrap();
                    assert_eq!(block % align, 0);
                    let mapped = f.backer_mapped();
                    let last = page_of(block + size.max(1) - 1);
                    assert!(
                        (page_of(block)..=last)
                            .step_by(PAGE)
                            .all(|p| mapped.contains(&p)),
                        "block {block:#x} on an unmapped page"
                    );
                    if let Some((&prev, &(prev_size, _, _))) = live.range(..=block).next_back() {
                        assert!(prev + prev_size.max(1) <= block, "overlaps {prev:#x}");
                    }
                    if let Some((&following, _)) = live.range(block..).next() {
                        assert!(block + size.max(1) <= following, "overlaps {following:#x}");
                    }
                    let fill = step as u8;
                    // SAFETY: the heap just handed out these `size` bytes to us.
                    unsafe {
                        ptr::with_exposed_provenance_mut::<u8>(block).write_bytes(fill, size)
                    };
                    live.insert(block, (size, align, fill));
                }
            }
            if step % 500 == 0 {
                f.check();
            }
        }
        f.check();
        for (block, (size, align, _)) in std::mem::take(&mut live) {
            f.free(block, size, align);
        }
        f.finish_round();
        f.check();
        assert_eq!(f.heap.stats().in_use, 0);
        f.trim_all();
        f.check();
        assert_eq!(
            f.heap.stats().mapped,
            PAGE,
            "everything but the side table is back"
        );
        assert_eq!(f.backer_mapped(), BTreeSet::from([f.base]));
        assert!(f.heap.classes.iter().all(|&head| head == EMPTY));
        assert!(f.unbacks().len() > 10, "the run did trim along the way");
    }

    #[test]
    fn new_rejects_bad_ranges() {
        let backer = || Backer {
            record: Arc::default(),
            budget: 0,
            round: 0,
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
        assert_eq!(GLOBAL.trim(), 0);
        let f = fixture(256 * KIB, usize::MAX);
        let Fixture {
            heap,
            _arena: arena,
            start,
            ..
        } = f;
        GLOBAL.init(heap).unwrap();
        let second = fixture(64 * KIB, 0);
        assert_eq!(GLOBAL.init(second.heap), Err(HeapError::AlreadyInitialized));
        // SAFETY: a non-zero-sized layout.
        let block = unsafe { GLOBAL.alloc(small) };
        assert_eq!(block.expose_provenance(), start);
        assert_eq!(GLOBAL.stats().unwrap().in_use, 64);
        // SAFETY: `block` came from GLOBAL with this layout.
        unsafe { GLOBAL.dealloc(block, small) };
        assert_eq!(GLOBAL.stats().unwrap().in_use, 0);
        assert_eq!(GLOBAL.trim(), 16, "the spare page and the 15 free ones");
        GLOBAL.reuse_unbacked();
        assert_eq!(GLOBAL.stats().unwrap().mapped, PAGE);
        // The static must not outlive the arena in use: leave it allocated.
        std::mem::forget(arena);
    }
}
