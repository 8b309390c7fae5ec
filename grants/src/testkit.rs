//! Host-test support: [`Memory`], frames in a map implementing [`SharedMemory`], with hooks
//! that play a granter racing the hypervisor.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use abi::grant_table::GTF_PERMIT_ACCESS;
use abi::ids::DomId;
use mm::addr::Mfn;

use crate::shared::{entry_location, SharedMemory, Version};

/// Frames of plain memory.
#[derive(Default)]
pub struct Memory {
    frames: RefCell<HashMap<u64, Box<[u8; 4096]>>>,
    /// When set, every compare-and-swap finds the word changed (by XOR with this) first.
    pub meddle_cas: Cell<u32>,
    /// Compare-and-swaps tried.
    pub cas_tries: Cell<u32>,
    /// When set, the first status `fetch_or` writes `(offset, value)` into frame `.0` (the
    /// granter changing its entry between the hypervisor's two reads).
    pub after_or: Cell<Option<(Mfn, usize, u32)>>,
    next: Cell<u64>,
}

impl Memory {
    /// A fresh zeroed frame.
    pub fn frame(&self) -> Mfn {
        let mfn = 0x100 + self.next.get();
        self.next.set(self.next.get() + 1);
        self.frames.borrow_mut().insert(mfn, Box::new([0; 4096]));
        Mfn(mfn)
    }

    /// A frame allocator for `grow` that counts what it hands out (`None` after `limit`).
    pub fn allocator(&self, limit: usize) -> impl FnMut() -> Option<Mfn> + '_ {
        let mut given = 0;
        move || {
            given += 1;
            (given <= limit).then(|| self.frame())
        }
    }

    fn with<R>(&self, mfn: Mfn, f: impl FnOnce(&mut [u8; 4096]) -> R) -> R {
        let mut frames = self.frames.borrow_mut();
        f(frames.get_mut(&mfn.0).unwrap_or_else(|| panic!("frame {mfn:?} was never allocated")))
    }

    fn bytes<const N: usize>(&self, mfn: Mfn, offset: usize) -> [u8; N] {
        assert_eq!(offset % N, 0, "misaligned {N}-byte access at {offset}");
        self.with(mfn, |f| f[offset..offset + N].try_into().unwrap())
    }

    fn put<const N: usize>(&self, mfn: Mfn, offset: usize, bytes: [u8; N]) {
        assert_eq!(offset % N, 0, "misaligned {N}-byte access at {offset}");
        self.with(mfn, |f| f[offset..offset + N].copy_from_slice(&bytes));
    }

    /// Writes a version-1 grant of `frame` to `domid` with `flags` into entry `gref`.
    pub fn grant_v1(&self, frames: &[Mfn], gref: u32, domid: DomId, frame: u64, flags: u16) {
        let at = entry_location(frames, Version::V1, gref).expect("entry has a frame");
        self.store_u32(at.mfn, at.offset + 4, frame as u32);
        self.store_u32(at.mfn, at.offset, u32::from(flags) | u32::from(domid.0) << 16);
    }

    /// Writes a version-2 full-page grant.
    pub fn grant_v2(&self, frames: &[Mfn], gref: u32, domid: DomId, frame: u64, flags: u16) {
        let at = entry_location(frames, Version::V2, gref).expect("entry has a frame");
        self.store_u64(at.mfn, at.offset + 8, frame);
        self.store_u32(at.mfn, at.offset, u32::from(flags) | u32::from(domid.0) << 16);
    }

    /// Writes a version-2 sub-page grant.
    pub fn grant_v2_sub_page(&self, frames: &[Mfn], gref: u32, domid: DomId, frame: u64, start: u16, length: u16) {
        let at = entry_location(frames, Version::V2, gref).expect("entry has a frame");
        self.store_u64(at.mfn, at.offset + 8, frame);
        self.store_u16(at.mfn, at.offset + 4, start);
        self.store_u16(at.mfn, at.offset + 6, length);
        let flags = GTF_PERMIT_ACCESS | abi::grant_table::GTF_SUB_PAGE;
        self.store_u32(at.mfn, at.offset, u32::from(flags) | u32::from(domid.0) << 16);
    }

    /// The flags of version-1 entry `gref`.
    pub fn flags_v1(&self, frames: &[Mfn], gref: u32) -> u16 {
        let at = entry_location(frames, Version::V1, gref).expect("entry has a frame");
        self.load_u16(at.mfn, at.offset)
    }
}

impl SharedMemory for Memory {
    fn load_u16(&self, mfn: Mfn, offset: usize) -> u16 {
        u16::from_le_bytes(self.bytes(mfn, offset))
    }

    fn load_u32(&self, mfn: Mfn, offset: usize) -> u32 {
        u32::from_le_bytes(self.bytes(mfn, offset))
    }

    fn load_u64(&self, mfn: Mfn, offset: usize) -> u64 {
        u64::from_le_bytes(self.bytes(mfn, offset))
    }

    fn store_u16(&self, mfn: Mfn, offset: usize, value: u16) {
        self.put(mfn, offset, value.to_le_bytes());
    }

    fn store_u32(&self, mfn: Mfn, offset: usize, value: u32) {
        self.put(mfn, offset, value.to_le_bytes());
    }

    fn store_u64(&self, mfn: Mfn, offset: usize, value: u64) {
        self.put(mfn, offset, value.to_le_bytes());
    }

    fn compare_exchange_u32(&self, mfn: Mfn, offset: usize, current: u32, new: u32) -> u32 {
        self.cas_tries.set(self.cas_tries.get() + 1);
        if self.meddle_cas.get() != 0 {
            let now = self.load_u32(mfn, offset) ^ self.meddle_cas.get();
            self.store_u32(mfn, offset, now);
        }
        let found = self.load_u32(mfn, offset);
        if found == current {
            self.store_u32(mfn, offset, new);
        }
        found
    }

    fn fetch_or_u16(&self, mfn: Mfn, offset: usize, bits: u16) {
        self.store_u16(mfn, offset, self.load_u16(mfn, offset) | bits);
        if let Some((frame, at, value)) = self.after_or.take() {
            self.store_u32(frame, at, value);
        }
    }

    fn fetch_clear_u16(&self, mfn: Mfn, offset: usize, bits: u16) {
        self.store_u16(mfn, offset, self.load_u16(mfn, offset) & !bits);
    }

    fn zero(&self, mfn: Mfn) {
        self.with(mfn, |f| f.fill(0));
    }
}
