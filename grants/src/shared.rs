//! The shared side of a grant table: the two entry formats (8-byte version-1 entries, 512
//! to a frame; 16-byte version-2 entries, 256 to a frame, with their status bits apart in
//! status frames, 2048 to a frame), where entry `n` lives, and [`SharedMemory`], through
//! which this crate reads and writes the frames the granter shares with the hypervisor.
//!
//! The granter writes its entries whenever it likes, so every access is a single atomic
//! load, store, compare-and-swap or bit operation of the entry's natural width: the
//! hypervisor never holds a reference into guest-written memory. This module only does
//! arithmetic; it never decides whether an access is allowed.

use abi::grant_table::{GrantEntryV1, GrantEntryV2};
use mm::addr::Mfn;

/// Bytes in a frame.
pub const FRAME_BYTES: usize = 4096;
/// Status entries (`grant_status_t`, 2 bytes) in a status frame.
pub const STATUS_PER_FRAME: u32 = (FRAME_BYTES / 2) as u32;

/// A grant table's format (`GNTTABOP_set_version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 8-byte entries with the status bits in the flags (the initial version).
    V1,
    /// 16-byte entries (full-page, sub-page and transitive grants) with status frames.
    V2,
}

impl Version {
    /// The version's number in the ABI.
    pub const fn number(self) -> u32 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }

    /// The version numbered `number`, if there is one.
    pub const fn from_number(number: u32) -> Option<Version> {
        match number {
            1 => Some(Version::V1),
            2 => Some(Version::V2),
            _ => None,
        }
    }

    /// Bytes in one shared entry.
    pub const fn entry_bytes(self) -> usize {
        match self {
            Version::V1 => size_of::<GrantEntryV1>(),
            Version::V2 => size_of::<GrantEntryV2>(),
        }
    }

    /// Shared entries in one frame.
    pub const fn entries_per_frame(self) -> u32 {
        (FRAME_BYTES / self.entry_bytes()) as u32
    }
}

/// Status frames that `grant_frames` version-2 shared frames need (Xen's
/// `grant_to_status_frames`).
pub const fn status_frames_for(grant_frames: u32) -> u32 {
    (grant_frames * Version::V2.entries_per_frame()).div_ceil(STATUS_PER_FRAME)
}

/// Access to the frames a domain shares with the hypervisor. Offsets are byte offsets in
/// the frame, naturally aligned for the width; every operation is atomic with respect to
/// the guest's own accesses (the hypervisor implements it with atomics over a temporary
/// mapping; host tests over plain memory).
pub trait SharedMemory {
    fn load_u16(&self, mfn: Mfn, offset: usize) -> u16;
    fn load_u32(&self, mfn: Mfn, offset: usize) -> u32;
    fn load_u64(&self, mfn: Mfn, offset: usize) -> u64;
    fn store_u16(&self, mfn: Mfn, offset: usize, value: u16);
    fn store_u32(&self, mfn: Mfn, offset: usize, value: u32);
    fn store_u64(&self, mfn: Mfn, offset: usize, value: u64);
    /// Replaces `current` with `new` if the word holds `current`; returns what it held.
    fn compare_exchange_u32(&self, mfn: Mfn, offset: usize, current: u32, new: u32) -> u32;
    /// Sets `bits` in the 16-bit word.
    fn fetch_or_u16(&self, mfn: Mfn, offset: usize, bits: u16);
    /// Clears `bits` in the 16-bit word.
    fn fetch_clear_u16(&self, mfn: Mfn, offset: usize, bits: u16);
    /// Fills the frame with zeroes.
    fn zero(&self, mfn: Mfn);
    /// Orders the status update before the re-read of the entry (a full fence).
    fn fence(&self) {}
}

/// Where something lives: a frame and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub mfn: Mfn,
    pub offset: usize,
}

impl Location {
    /// The same frame, `bytes` further on.
    pub const fn plus(self, bytes: usize) -> Location {
        Location { mfn: self.mfn, offset: self.offset + bytes }
    }
}

/// Where shared entry `gref` of a `version` table whose shared frames are `frames` lives;
/// `None` beyond them.
pub fn entry_location(frames: &[Mfn], version: Version, gref: u32) -> Option<Location> {
    let per_frame = version.entries_per_frame();
    let frame = frames.get((gref / per_frame) as usize)?;
    Some(Location { mfn: *frame, offset: (gref % per_frame) as usize * version.entry_bytes() })
}

/// Where status entry `gref` lives among `frames` (version 2); `None` beyond them.
pub fn status_location(frames: &[Mfn], gref: u32) -> Option<Location> {
    let frame = frames.get((gref / STATUS_PER_FRAME) as usize)?;
    Some(Location { mfn: *frame, offset: (gref % STATUS_PER_FRAME) as usize * 2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_status_frames_follow_xen() {
        assert_eq!(Version::V1.entries_per_frame(), 512);
        assert_eq!(Version::V2.entries_per_frame(), 256);
        assert_eq!(status_frames_for(0), 0);
        assert_eq!(status_frames_for(1), 1);
        assert_eq!(status_frames_for(8), 1);
        assert_eq!(status_frames_for(9), 2);
        assert_eq!(status_frames_for(32), 4);
    }

    #[test]
    fn locations_stay_inside_their_frames() {
        let frames = [Mfn(10), Mfn(20)];
        assert_eq!(entry_location(&frames, Version::V1, 513), Some(Location { mfn: Mfn(20), offset: 8 }));
        assert_eq!(entry_location(&frames, Version::V2, 255), Some(Location { mfn: Mfn(10), offset: 255 * 16 }));
        assert_eq!(entry_location(&frames, Version::V2, 512), None);
        assert_eq!(entry_location(&frames, Version::V1, u32::MAX), None);
        assert_eq!(status_location(&frames, 2049), Some(Location { mfn: Mfn(20), offset: 2 }));
        for gref in [0, 1, 511, 512, 1023] {
            for version in [Version::V1, Version::V2] {
                if let Some(at) = entry_location(&frames, version, gref) {
                    assert!(at.offset + version.entry_bytes() <= FRAME_BYTES);
                }
            }
        }
    }
}
