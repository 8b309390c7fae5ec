//! The memory a ring lives in: [`RawMemory`] for shared pages (the other end writes them
//! while we read), [`PlainMemory`] for host tests and simulations.

use core::cell::Cell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

/// Byte-addressed access to a ring's memory. Offsets are checked by the ring against its
/// [`Layout`](crate::Layout) before any access; an implementation may panic on an offset
/// past its length (a bug in this crate, never the other end's doing).
pub trait RingMemory {
    /// The bytes the memory spans.
    fn len(&self) -> usize;
    /// Whether the memory spans no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Loads the 4-byte index at `offset` (4-aligned) as one access.
    fn load_index(&self, offset: usize) -> u32;
    /// Stores the 4-byte index at `offset` (4-aligned) as one access.
    fn store_index(&self, offset: usize, value: u32);
    /// Copies `out.len()` bytes from `offset`.
    fn read(&self, offset: usize, out: &mut [u8]);
    /// Copies `bytes` to `offset`.
    fn write(&self, offset: usize, bytes: &[u8]);
}

impl<M: RingMemory + ?Sized> RingMemory for &M {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn load_index(&self, offset: usize) -> u32 {
        (**self).load_index(offset)
    }
    fn store_index(&self, offset: usize, value: u32) {
        (**self).store_index(offset, value)
    }
    fn read(&self, offset: usize, out: &mut [u8]) {
        (**self).read(offset, out)
    }
    fn write(&self, offset: usize, bytes: &[u8]) {
        (**self).write(offset, bytes)
    }
}

/// Ring memory in ordinary (unshared) bytes, for host tests: both ends of a simulated ring
/// hold a copy of the same `PlainMemory`.
#[derive(Clone, Copy)]
pub struct PlainMemory<'a> {
    bytes: &'a [Cell<u8>],
}

impl<'a> PlainMemory<'a> {
    /// Memory over `bytes`.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes: Cell::from_mut(bytes).as_slice_of_cells() }
    }
}

impl RingMemory for PlainMemory<'_> {
    fn len(&self) -> usize {
        self.bytes.len()
    }
    fn load_index(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn store_index(&self, offset: usize, value: u32) {
        self.write(offset, &value.to_le_bytes());
    }
    fn read(&self, offset: usize, out: &mut [u8]) {
        let cells = &self.bytes[offset..offset + out.len()];
        for (o, c) in out.iter_mut().zip(cells) {
            *o = c.get();
        }
    }
    fn write(&self, offset: usize, bytes: &[u8]) {
        for (b, c) in bytes.iter().zip(&self.bytes[offset..offset + bytes.len()]) {
            c.set(*b);
        }
    }
}

/// Ring memory in pages shared with another domain (or another thread): indices through
/// atomic accesses, entries through volatile copies, so that the compiler neither tears,
/// merges nor repeats an access the other end may race with.
#[derive(Clone, Copy, Debug)]
pub struct RawMemory {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: every access through a RawMemory is atomic (indices) or volatile (entries) and
// the ring protocol, not Rust's aliasing rules, decides who writes what; the creator
// promised the memory stays valid for as long as any copy is used (`RawMemory::new`).
unsafe impl Send for RawMemory {}
// SAFETY: as for Send: shared use only performs atomic and volatile accesses.
unsafe impl Sync for RawMemory {}

impl RawMemory {
    /// Memory over `len` bytes at `base`.
    ///
    /// # Safety
    /// `base` is 8-byte aligned, and `base..base + len` is mapped, readable and writable
    /// for as long as this value or a copy of it is used, and nothing accesses it except
    /// through atomic or volatile accesses (the other end of the ring, another domain, may).
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    /// The first byte.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    fn at(&self, offset: usize, bytes: usize) -> *mut u8 {
        assert!(offset <= self.len && bytes <= self.len - offset, "ring access past its memory");
        // SAFETY: offset + bytes <= len (just checked), inside the region `new` was given.
        unsafe { self.base.as_ptr().add(offset) }
    }
}

impl RingMemory for RawMemory {
    fn len(&self) -> usize {
        self.len
    }
    fn load_index(&self, offset: usize) -> u32 {
        assert!(offset.is_multiple_of(4));
        let p = self.at(offset, 4).cast::<u32>();
        // SAFETY: p is 4-aligned (base 8-aligned, offset 4-aligned), in bounds, valid for
        // the lifetime `new` promised, and only accessed atomically or volatilely.
        unsafe { AtomicU32::from_ptr(p) }.load(Ordering::Relaxed)
    }
    fn store_index(&self, offset: usize, value: u32) {
        assert!(offset.is_multiple_of(4));
        let p = self.at(offset, 4).cast::<u32>();
        // SAFETY: as in load_index.
        unsafe { AtomicU32::from_ptr(p) }.store(value, Ordering::Relaxed)
    }
    fn read(&self, offset: usize, out: &mut [u8]) {
        let p = self.at(offset, out.len());
        if (p as usize).is_multiple_of(8) && out.len().is_multiple_of(8) {
            for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
                // SAFETY: in bounds (checked by `at`), 8-aligned, valid per `new`.
                let v = unsafe { p.cast::<u64>().add(i).read_volatile() };
                chunk.copy_from_slice(&v.to_ne_bytes());
            }
        } else {
            for (i, o) in out.iter_mut().enumerate() {
                // SAFETY: in bounds (checked by `at`), valid per `new`.
                *o = unsafe { p.add(i).read_volatile() };
            }
        }
    }
    fn write(&self, offset: usize, bytes: &[u8]) {
        let p = self.at(offset, bytes.len());
        if (p as usize).is_multiple_of(8) && bytes.len().is_multiple_of(8) {
            for (i, chunk) in bytes.chunks_exact(8).enumerate() {
                let v = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
                // SAFETY: in bounds (checked by `at`), 8-aligned, valid per `new`.
                unsafe { p.cast::<u64>().add(i).write_volatile(v) };
            }
        } else {
            for (i, b) in bytes.iter().enumerate() {
                // SAFETY: in bounds (checked by `at`), valid per `new`.
                unsafe { p.add(i).write_volatile(*b) };
            }
        }
    }
}
