//! System time: nanoseconds since the hypervisor booted, read lock-free from vCPU 0's time
//! record in the shared info page (`vcpu_info[0].time`) and the TSC, by the pvclock
//! formula in [`abi::shared_info::VcpuTimeInfo`].
//!
//! The hypervisor rewrites the record at any time (it makes `version` odd while it does),
//! so a reader copies it between two reads of `version` and starts over while an update
//! was in progress or happened meanwhile ([`consistent_now`]). A [`Clock`] is the proof
//! that the shared info page is mapped; guests get one with [`Clock::new`] (which maps the
//! page) or, where no hypercall may be made, [`Clock::mapped`]. The runtime runs on vCPU 0
//! only. This module only reads: it must never write the shared page.

use core::ptr;
use core::sync::atomic::{fence, Ordering};

use abi::shared_info::{SharedInfo, TimeScale, VcpuTimeInfo};

use crate::hypercall::HypercallError;
use crate::shared_info;

/// Reads system time. Zero-sized: holding one proves the shared info page is mapped (it
/// stays mapped for the guest's lifetime).
#[derive(Clone, Copy, Debug)]
pub struct Clock(());

impl Clock {
    /// Maps the shared info page if it is not yet mapped, and returns the clock.
    pub fn new() -> Result<Self, HypercallError> {
        shared_info::map_shared_info()?;
        Ok(Self(()))
    }

    /// The clock, if the shared info page is already mapped. Makes no hypercall, so event
    /// handlers may call it.
    pub fn mapped() -> Option<Self> {
        shared_info::shared_info().map(|_| Self(()))
    }

    /// System time now, in ns since the hypervisor booted.
    pub fn now_ns(self) -> u64 {
        consistent_now(live_version, live_record, rdtsc)
    }

    /// The current TSC-to-nanoseconds factor (for timing with raw TSC readings).
    pub fn scale(self) -> TimeScale {
        consistent_record(live_version, live_record).scale()
    }
}

/// vCPU 0's time record. Only called with a [`Clock`], so the page is mapped.
fn time_record() -> *const VcpuTimeInfo {
    let page: *const SharedInfo = shared_info::shared_info()
        .expect("a Clock exists only once the shared info page is mapped")
        .as_ptr();
    // SAFETY: `page` is the mapped shared info page; only the field's address is taken.
    unsafe { ptr::addr_of!((*page).vcpu_info[0].time) }
}

/// The live record's `version`.
fn live_version() -> u32 {
    // SAFETY: the record lies in the mapped shared info page (only `Clock` methods call
    // this); the hypervisor writes it concurrently, hence a volatile read.
    unsafe { ptr::addr_of!((*time_record()).version).read_volatile() }
}

/// A copy of the live record (possibly torn: see [`consistent_record`]).
fn live_record() -> VcpuTimeInfo {
    // SAFETY: as in `live_version`; every bit pattern is a valid `VcpuTimeInfo`.
    unsafe { time_record().read_volatile() }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter, which ring 3 may read (the
    // hypervisor leaves CR4.TSD clear, as Xen does for PV guests).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A copy of the time record that no update overlapped: `version` even and unchanged
/// across the copy. `read_version` and `read_record` read the live record.
pub fn consistent_record(
    mut read_version: impl FnMut() -> u32,
    mut read_record: impl FnMut() -> VcpuTimeInfo,
) -> VcpuTimeInfo {
    loop {
        let before = read_version();
        if before & 1 == 0 {
            fence(Ordering::Acquire);
            let record = read_record();
            fence(Ordering::Acquire);
            if read_version() == before {
                return record;
            }
        }
        core::hint::spin_loop();
    }
}

/// System time from a consistent copy of the record and a TSC read with it (inside the
/// retry, as Xen's pvclock readers do, so that the TSC and the record belong together).
pub fn consistent_now(
    mut read_version: impl FnMut() -> u32,
    mut read_record: impl FnMut() -> VcpuTimeInfo,
    mut read_tsc: impl FnMut() -> u64,
) -> u64 {
    let mut tsc = 0;
    let record = consistent_record(&mut read_version, || {
        let record = read_record();
        tsc = read_tsc();
        record
    });
    record.system_time_at(tsc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// A 1 GHz record: one tick is one ns.
    fn record(version: u32, system_time: u64) -> VcpuTimeInfo {
        let scale = TimeScale::from_tsc_hz(1_000_000_000).unwrap();
        VcpuTimeInfo {
            version,
            tsc_timestamp: 1_000,
            system_time,
            tsc_to_system_mul: scale.mul,
            tsc_shift: scale.shift,
            ..VcpuTimeInfo::default()
        }
    }

    #[test]
    fn a_quiet_record_is_read_once() {
        let reads = Cell::new(0);
        let now = consistent_now(
            || 4,
            || {
                reads.set(reads.get() + 1);
                record(4, 50_000)
            },
            || 1_500,
        );
        assert_eq!(now, 50_500);
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn odd_versions_are_waited_out_without_copying() {
        // The writer is mid-update for the first two reads.
        let versions = [7, 7, 8, 8];
        let next = Cell::new(0);
        let read_version = || {
            let v = versions[next.get()];
            next.set(next.get() + 1);
            v
        };
        let copies = Cell::new(0);
        let now = consistent_now(
            read_version,
            || {
                copies.set(copies.get() + 1);
                record(8, 9_000)
            },
            || 1_000,
        );
        assert_eq!(now, 9_000);
        assert_eq!(copies.get(), 1, "no copy under an odd version");
        assert_eq!(next.get(), 4);
    }

    #[test]
    fn a_version_change_during_the_copy_is_retried() {
        // Even before, even after, but different: an update happened in between.
        let versions = [2, 4, 4, 4];
        let next = Cell::new(0);
        let got = consistent_record(
            || {
                let v = versions[next.get()];
                next.set(next.get() + 1);
                v
            },
            || record(versions[next.get().min(3)], 100 * next.get() as u64),
        );
        assert_eq!(got.version, 4);
        assert_eq!(next.get(), 4, "two attempts of two version reads each");
    }

    #[test]
    fn a_tsc_behind_the_stamp_gives_the_stamped_time() {
        assert_eq!(consistent_now(|| 0, || record(0, 777), || 10), 777);
    }

    #[test]
    fn no_clock_before_the_page_is_mapped() {
        assert!(Clock::mapped().is_none());
    }
}
