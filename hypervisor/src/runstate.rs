//! A vCPU's runstate (`struct vcpu_runstate_info`, vcpu.h): which of running, runnable,
//! blocked and offline it is in, since when, and the time it has spent in each, as Xen's
//! `vcpu_runstate_change` keeps them; and where a guest may place a copy of it
//! (`VCPUOP_register_vcpu_info`'s frame and offset, checked as Xen's `map_vcpu_info` does).
//!
//! Pure and host-tested. The scheduler changes a vCPU's state as it switches it in and out,
//! wakes, parks and brings it up or down; `vcpu_op` reads it (`get_runstate_info`) and the
//! hypervisor copies it into the guest's registered area at each switch. Times are system
//! time in nanoseconds; a time earlier than the last change (another CPU's clock read a
//! little behind) counts as no time, so the sum of the times never runs ahead of the clock.
//! This module must never read a clock or touch guest memory.

use abi::errno::Errno;
use abi::vcpu::{Runstate as State, VcpuRunstateInfo};

/// One vCPU's runstate accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runstate {
    state: State,
    entered_ns: u64,
    time_ns: [u64; 4],
}

impl Runstate {
    /// A vCPU in `state` since `now_ns`, with no time spent anywhere yet.
    pub const fn new(state: State, now_ns: u64) -> Runstate {
        Runstate { state, entered_ns: now_ns, time_ns: [0; 4] }
    }

    /// The current state.
    pub const fn state(&self) -> State {
        self.state
    }

    /// Moves to `to` at `now_ns`, charging the time since the last change to the state left
    /// (a change to the same state only does that).
    pub fn change(&mut self, to: State, now_ns: u64) {
        let spent = now_ns.saturating_sub(self.entered_ns);
        self.time_ns[self.state as usize] = self.time_ns[self.state as usize].saturating_add(spent);
        self.entered_ns = self.entered_ns.max(now_ns);
        self.state = to;
    }

    /// The record as of the last change: what the guest's registered area holds (Xen copies
    /// `v->runstate` as it stands).
    pub fn record(&self) -> VcpuRunstateInfo {
        VcpuRunstateInfo { state: self.state as i32, _pad: 0, state_entry_time: self.entered_ns, time: self.time_ns }
    }

    /// The record with the time in the current state up to `now_ns` added
    /// (`VCPUOP_get_runstate_info`, Xen's `vcpu_runstate_get`).
    pub fn snapshot(&self, now_ns: u64) -> VcpuRunstateInfo {
        let mut info = self.record();
        let state = self.state as usize;
        info.time[state] = info.time[state].saturating_add(now_ns.saturating_sub(self.entered_ns));
        info
    }
}

/// Where a vCPU's `vcpu_info` lives once the guest has moved it out of shared info:
/// `offset` bytes into machine frame `mfn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuInfoPlace {
    pub mfn: u64,
    pub offset: u16,
}

/// Size of `struct vcpu_info`.
const VCPU_INFO_SIZE: u32 = 64;
/// Its alignment on x86-64 (`alignof(vcpu_info_t)`: its 64-bit fields).
const VCPU_INFO_ALIGN: u32 = 8;
/// The largest machine frame number a place can name (52-bit physical addresses).
const MAX_MFN: u64 = (1 << 40) - 1;

impl VcpuInfoPlace {
    /// Checks a guest's `VCPUOP_register_vcpu_info` request as Xen's `map_vcpu_info` does:
    /// the 64 bytes must fit in the page (no page-crossing offset) and be aligned to 8.
    /// `EINVAL` otherwise (and for a frame number no machine has: the caller checks the
    /// frame is the guest's).
    pub fn new(mfn: u64, offset: u32) -> Result<VcpuInfoPlace, Errno> {
        if offset > 4096 - VCPU_INFO_SIZE || !offset.is_multiple_of(VCPU_INFO_ALIGN) || mfn > MAX_MFN {
            return Err(Errno::Einval);
        }
        Ok(VcpuInfoPlace { mfn, offset: offset as u16 })
    }

    /// The place as one non-zero word (0 stands for "in shared info"): the frame above bit
    /// 12, the offset below (its low three bits are 0, so bit 0 marks a place).
    pub const fn encode(self) -> u64 {
        (self.mfn << 12) | self.offset as u64 | 1
    }

    /// The place [`VcpuInfoPlace::encode`] made; `None` for 0.
    pub const fn decode(word: u64) -> Option<VcpuInfoPlace> {
        if word & 1 == 0 {
            return None;
        }
        Some(VcpuInfoPlace { mfn: word >> 12, offset: (word & 0xff8) as u16 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_goes_to_the_state_left_and_sums_to_the_clock() {
        let mut r = Runstate::new(State::Runnable, 100);
        r.change(State::Running, 150);
        r.change(State::Blocked, 400);
        r.change(State::Runnable, 1000);
        r.change(State::Running, 1010);
        let info = r.record();
        assert_eq!(info.state, State::Running as i32);
        assert_eq!(info.state_entry_time, 1010);
        assert_eq!(info.time, [250, 60, 600, 0]);
        assert_eq!(info.time.iter().sum::<u64>(), 1010 - 100);
        let now = r.snapshot(1500);
        assert_eq!(now.time, [740, 60, 600, 0]);
        assert_eq!(now.state_entry_time, 1010, "the snapshot leaves the entry time");
        assert_eq!(r.record().time[0], 250, "nor changes the record");
    }

    #[test]
    fn a_clock_read_behind_counts_no_time() {
        let mut r = Runstate::new(State::Offline, 1000);
        r.change(State::Runnable, 900);
        assert_eq!(r.record().time, [0; 4]);
        assert_eq!(r.record().state_entry_time, 1000);
        assert_eq!(r.snapshot(950).time, [0; 4]);
        r.change(State::Running, 1200);
        assert_eq!(r.record().time, [0, 200, 0, 0]);
    }

    #[test]
    fn a_change_to_the_same_state_only_charges_time() {
        let mut r = Runstate::new(State::Running, 0);
        r.change(State::Running, 30);
        assert_eq!((r.state(), r.record().time[0], r.record().state_entry_time), (State::Running, 30, 30));
    }

    #[test]
    fn vcpu_info_places_must_fit_the_page_aligned() {
        assert_eq!(VcpuInfoPlace::new(5, 0), Ok(VcpuInfoPlace { mfn: 5, offset: 0 }));
        assert_eq!(VcpuInfoPlace::new(5, 4032).map(|p| p.offset), Ok(4032));
        for offset in [4033, 4040, 4090, 4096, u32::MAX, 4, 12, 1] {
            assert_eq!(VcpuInfoPlace::new(5, offset), Err(Errno::Einval), "{offset}");
        }
        assert_eq!(VcpuInfoPlace::new(1 << 40, 0), Err(Errno::Einval));
    }

    #[test]
    fn places_encode_to_nonzero_words_and_back() {
        for (mfn, offset) in [(0, 0), (1, 8), (MAX_MFN, 4032), (0x1234, 64)] {
            let place = VcpuInfoPlace::new(mfn, offset).unwrap();
            assert_ne!(place.encode(), 0);
            assert_eq!(VcpuInfoPlace::decode(place.encode()), Some(place));
        }
        assert_eq!(VcpuInfoPlace::decode(0), None);
    }
}
