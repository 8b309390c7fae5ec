//! The shared info page (`struct shared_info`, xen.h and arch-x86/xen.h): per-vCPU event
//! and time state, the 2-level event-channel bitmaps, wall-clock time, and the P2M anchors.
//!
//! The hypervisor writes it (pending bits, time) and reads it (masks); guests do the
//! reverse. Also here: the pvclock formula both sides must agree on ([`VcpuTimeInfo`],
//! [`TimeScale`]). This module must never hold policy about when events are delivered.

use crate::macros::assert_layout;

/// vCPUs with a `vcpu_info` slot in the shared page (`XEN_LEGACY_MAX_VCPUS`).
pub const LEGACY_MAX_VCPUS: usize = 32;
/// 64-bit words in each event-channel bitmap (`sizeof(xen_ulong_t) * 8`).
pub const EVTCHN_WORDS: usize = 64;
/// Ports of the 2-level event-channel ABI (`EVTCHN_2L_NR_CHANNELS`): 64 words of 64 bits.
pub const EVTCHN_2L_NR_CHANNELS: u32 = 4096;

/// `XEN_PVCLOCK_TSC_STABLE_BIT` in [`VcpuTimeInfo::flags`]: the TSC is stable across vCPUs.
pub const PVCLOCK_TSC_STABLE: u8 = 1 << 0;
/// `XEN_PVCLOCK_GUEST_STOPPED` in [`VcpuTimeInfo::flags`]: the guest was paused.
pub const PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// Per-vCPU time (`struct vcpu_time_info`, xen.h, 32 bytes). The writer makes `version`
/// odd before an update and even after; a reader retries while it is odd or changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuTimeInfo {
    pub version: u32,
    pub pad0: u32,
    /// TSC at the last update.
    pub tsc_timestamp: u64,
    /// System time in ns since boot at `tsc_timestamp`.
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    /// `PVCLOCK_*` bits.
    pub flags: u8,
    pub pad1: [u8; 2],
}

assert_layout!(VcpuTimeInfo, size = 32, {
    version @ 0, tsc_timestamp @ 8, system_time @ 16, tsc_to_system_mul @ 24,
    tsc_shift @ 28, flags @ 29,
});

impl VcpuTimeInfo {
    /// Whether `version` marks an update in progress.
    pub const fn update_in_progress(&self) -> bool {
        self.version & 1 != 0
    }

    /// The system time (ns) at TSC value `tsc`, by the header's formula:
    /// `system_time + (((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul) >> 32`
    /// (a negative shift shifts right). A `tsc` before the timestamp counts as no time.
    pub const fn system_time_at(&self, tsc: u64) -> u64 {
        let delta = tsc.saturating_sub(self.tsc_timestamp);
        let scale = TimeScale {
            mul: self.tsc_to_system_mul,
            shift: self.tsc_shift,
        };
        self.system_time.wrapping_add(scale.apply(delta))
    }

    /// The conversion factors of this record.
    pub const fn scale(&self) -> TimeScale {
        TimeScale {
            mul: self.tsc_to_system_mul,
            shift: self.tsc_shift,
        }
    }
}

/// A TSC-ticks-to-nanoseconds factor in pvclock form: ns = ((ticks << shift) * mul) >> 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeScale {
    /// `tsc_to_system_mul`, a 32.32 fraction.
    pub mul: u32,
    /// `tsc_shift`; negative shifts right.
    pub shift: i8,
}

const NS_PER_SEC: u64 = 1_000_000_000;

impl TimeScale {
    /// The factor for a TSC running at `tsc_hz` ticks per second, or `None` for 0 Hz.
    /// The frequency is shifted into (10^9, 2 * 10^9] so that `mul` keeps 31 or 32
    /// significant bits.
    pub const fn from_tsc_hz(tsc_hz: u64) -> Option<Self> {
        if tsc_hz == 0 {
            return None;
        }
        let mut scaled = tsc_hz;
        let mut shift: i8 = 0;
        while scaled > 2 * NS_PER_SEC {
            scaled >>= 1;
            shift -= 1;
        }
        while scaled <= NS_PER_SEC {
            scaled <<= 1;
            shift += 1;
        }
        let mul = (NS_PER_SEC << 32) / scaled;
        Some(Self {
            mul: mul as u32,
            shift,
        })
    }

    /// Converts a tick count to nanoseconds. The shifted count keeps only its low 64 bits,
    /// as in the header's C; a shift of 64 or more gives 0.
    pub const fn apply(self, ticks: u64) -> u64 {
        let shifted = if self.shift >= 0 {
            ticks.checked_shl(self.shift as u32)
        } else {
            ticks.checked_shr(self.shift.unsigned_abs() as u32)
        };
        match shifted {
            Some(shifted) => ((shifted as u128 * self.mul as u128) >> 32) as u64,
            None => 0,
        }
    }
}

/// Architecture part of `vcpu_info` (`struct arch_vcpu_info`, xen-x86_64.h, 16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ArchVcpuInfo {
    /// The faulting address of the last page fault reported to the guest.
    pub cr2: u64,
    pub pad: u64,
}

assert_layout!(ArchVcpuInfo, size = 16, { cr2 @ 0, pad @ 8 });

/// Per-vCPU event and time state (`struct vcpu_info`, xen.h, 64 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuInfo {
    /// Written non-zero by the hypervisor when an event is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// Non-zero: no upcall may be delivered (the guest's "interrupts off").
    pub evtchn_upcall_mask: u8,
    pub _pad0: [u8; 6],
    /// Selector: bit n set means word n of `evtchn_pending` may have pending ports.
    pub evtchn_pending_sel: u64,
    pub arch: ArchVcpuInfo,
    pub time: VcpuTimeInfo,
}

assert_layout!(VcpuInfo, size = 64, {
    evtchn_upcall_pending @ 0, evtchn_upcall_mask @ 1, evtchn_pending_sel @ 8,
    arch @ 16, time @ 32,
});

/// Architecture part of `shared_info` (`struct arch_shared_info`, arch-x86/xen.h, 48 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ArchSharedInfo {
    /// Number of valid P2M entries.
    pub max_pfn: u64,
    /// Frame of the list of frames of the list of P2M frames (0: not set up, !0: invalid).
    pub pfn_to_mfn_frame_list_list: u64,
    pub nmi_reason: u64,
    /// cr3 of the address space where `p2m_vaddr` is valid (0: the next two are unused).
    pub p2m_cr3: u64,
    /// Virtual address of the linear P2M list.
    pub p2m_vaddr: u64,
    /// Incremented by the guest around P2M mapping changes (odd: update in progress).
    pub p2m_generation: u64,
}

assert_layout!(ArchSharedInfo, size = 48, {
    max_pfn @ 0, pfn_to_mfn_frame_list_list @ 8, nmi_reason @ 16, p2m_cr3 @ 24,
    p2m_vaddr @ 32, p2m_generation @ 40,
});

/// The shared info page (`struct shared_info`, xen.h, 3136 bytes of a 4 KiB page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SharedInfo {
    pub vcpu_info: [VcpuInfo; LEGACY_MAX_VCPUS],
    /// Port n is pending when bit n % 64 of word n / 64 is set.
    pub evtchn_pending: [u64; EVTCHN_WORDS],
    /// Port n is masked when its bit is set: no upcall for it.
    pub evtchn_mask: [u64; EVTCHN_WORDS],
    /// Wall-clock version, same protocol as [`VcpuTimeInfo::version`].
    pub wc_version: u32,
    /// Wall-clock seconds since the epoch at system time 0 (low 32 bits).
    pub wc_sec: u32,
    pub wc_nsec: u32,
    /// High 32 bits of the wall-clock seconds.
    pub wc_sec_hi: u32,
    pub arch: ArchSharedInfo,
}

assert_layout!(SharedInfo, size = 3136, {
    vcpu_info @ 0, evtchn_pending @ 2048, evtchn_mask @ 2560, wc_version @ 3072,
    wc_sec @ 3076, wc_nsec @ 3080, wc_sec_hi @ 3084, arch @ 3088,
});

impl Default for SharedInfo {
    /// All zero: no events pending or masked, every upcall unmasked.
    fn default() -> Self {
        Self {
            vcpu_info: [VcpuInfo::default(); LEGACY_MAX_VCPUS],
            evtchn_pending: [0; EVTCHN_WORDS],
            evtchn_mask: [0; EVTCHN_WORDS],
            wc_version: 0,
            wc_sec: 0,
            wc_nsec: 0,
            wc_sec_hi: 0,
            arch: ArchSharedInfo::default(),
        }
    }
}

impl SharedInfo {
    /// The full 64-bit wall-clock seconds.
    pub const fn wallclock_seconds(&self) -> u64 {
        (self.wc_sec_hi as u64) << 32 | self.wc_sec as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ghz_scale_is_identity() {
        let scale = TimeScale::from_tsc_hz(1_000_000_000).unwrap();
        assert_eq!(
            scale,
            TimeScale {
                mul: 1 << 31,
                shift: 1
            }
        );
        assert_eq!(scale.apply(123_456_789), 123_456_789);
    }

    #[test]
    fn scales_convert_one_second_of_ticks_to_one_second() {
        for hz in [
            1_000_000u64,
            33_333_333,
            1_000_000_001,
            2_100_000_000,
            3_600_000_000,
            5_000_000_000,
        ] {
            let scale = TimeScale::from_tsc_hz(hz).unwrap();
            let ns = scale.apply(hz);
            assert!(ns.abs_diff(NS_PER_SEC) <= 2, "{hz} Hz gave {ns} ns");
        }
    }

    #[test]
    fn fast_tsc_shifts_right() {
        let scale = TimeScale::from_tsc_hz(3_000_000_000).unwrap();
        assert_eq!(scale.shift, -1);
        assert_eq!(TimeScale::from_tsc_hz(0), None);
    }

    #[test]
    fn system_time_follows_the_header_formula() {
        let scale = TimeScale::from_tsc_hz(2_000_000_000).unwrap();
        let time = VcpuTimeInfo {
            tsc_timestamp: 1_000,
            system_time: 5_000,
            tsc_to_system_mul: scale.mul,
            tsc_shift: scale.shift,
            ..VcpuTimeInfo::default()
        };
        assert_eq!(time.system_time_at(1_000 + 2_000), 5_000 + 1_000);
        assert_eq!(
            time.system_time_at(500),
            5_000,
            "a TSC before the stamp adds nothing"
        );
        assert_eq!(time.scale(), scale);
    }

    #[test]
    fn hostile_shifts_give_zero_instead_of_panicking() {
        assert_eq!(
            TimeScale {
                mul: u32::MAX,
                shift: 100
            }
            .apply(12345),
            0
        );
        assert_eq!(
            TimeScale {
                mul: u32::MAX,
                shift: i8::MIN
            }
            .apply(12345),
            0
        );
        let high_bits_lost = TimeScale {
            mul: u32::MAX,
            shift: 63,
        }
        .apply(u64::MAX);
        assert_eq!(
            high_bits_lost,
            (1u64 << 63) - (1 << 31),
            "(2^63 * (2^32 - 1)) >> 32"
        );
    }

    #[test]
    fn version_parity_marks_updates() {
        let mut time = VcpuTimeInfo::default();
        assert!(!time.update_in_progress());
        time.version = 7;
        assert!(time.update_in_progress());
    }

    #[test]
    fn wallclock_joins_both_halves() {
        let info = SharedInfo {
            wc_sec: 0x8000_0001,
            wc_sec_hi: 2,
            ..SharedInfo::default()
        };
        assert_eq!(info.wallclock_seconds(), 0x2_8000_0001);
    }
}
