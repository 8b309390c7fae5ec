//! The hypervisor's access to a domain's shared-info page and to each vCPU's `vcpu_info`,
//! wherever the guest put it, through temporary mappings on the current CPU.
//!
//! A vCPU's `vcpu_info` is its slot in shared info until the guest moves it into a frame of
//! its own (`VCPUOP_register_vcpu_info`, once per vCPU id, for good; the frame holds a
//! writable type for as long as the domain lives, see `pv::vcpuop`). Every reader and
//! writer of a `vcpu_info` field (events, time, the page-fault address, the upcall mask)
//! goes through [`vcpu_info_at`], so all of them follow the move.
//!
//! Guests read and write these pages concurrently; fields the hypervisor changes here are
//! single bytes or words that the guest only reads, or flags with documented hand-over.

use core::sync::atomic::Ordering;

use abi::shared_info::{SharedInfo, VcpuInfo, LEGACY_MAX_VCPUS};
use hypervisor::runstate::VcpuInfoPlace;
use mm::addr::Mfn;

use crate::domain::{Domain, Vcpu};
use crate::memory::FrameMapping;

/// Size of one `vcpu_info`.
const VCPU_INFO_SIZE: usize = 64;

/// Where vCPU `id` of `domain` has its `vcpu_info`: the frame and the byte offset in it
/// (8-aligned, the 64 bytes inside the page).
pub fn vcpu_info_at(domain: &Domain, id: u32) -> (Mfn, usize) {
    let moved = domain.slot(id).and_then(|slot| VcpuInfoPlace::decode(slot.vcpu_info.load(Ordering::Acquire)));
    match moved {
        Some(place) => (Mfn(place.mfn), usize::from(place.offset)),
        None => (domain.shared_info, VCPU_INFO_SIZE * (id as usize % LEGACY_MAX_VCPUS)),
    }
}

/// Runs `f` on the `vcpu_info` of vCPU id `id` of `domain` (which need not exist yet).
pub fn with_vcpu_info_of<R>(domain: &Domain, id: u32, f: impl FnOnce(&mut VcpuInfo) -> R) -> R {
    let (mfn, offset) = vcpu_info_at(domain, id);
    let mut map = FrameMapping::new(mfn).expect("a temporary mapping slot is free");
    // `offset` is 8-aligned with the 64 bytes inside the page (checked by `VcpuInfoPlace::new`
    // before the place was published, or a slot of shared info).
    f(map.view_mut(offset))
}

/// Runs `f` on the shared-info page of `domain` (its `vcpu_info` slots are not where a
/// vCPU's `vcpu_info` is once moved: use [`with_vcpu_info`] for those).
pub fn with_shared<R>(domain: &Domain, f: impl FnOnce(&mut SharedInfo) -> R) -> R {
    let mut map = FrameMapping::new(domain.shared_info).expect("a temporary mapping slot is free");
    f(map.view_mut(0))
}

/// Runs `f` on the `vcpu_info` of `vcpu`.
pub fn with_vcpu_info<R>(vcpu: &Vcpu, f: impl FnOnce(&mut VcpuInfo) -> R) -> R {
    with_vcpu_info_of(&vcpu.domain, vcpu.id, f)
}

/// Publishes the vCPU's time record: TSC and system time now, and the TSC-to-ns scale, with
/// Xen's version protocol (odd while the record changes) so the guest reads it lock-free.
pub fn publish_time(vcpu: &Vcpu) {
    publish_time_of(&vcpu.domain, vcpu.id);
}

/// [`publish_time`] for vCPU id `id` of `domain`.
pub fn publish_time_of(domain: &Domain, id: u32) {
    let Some(scale) = crate::time::tsc_scale() else { return };
    with_vcpu_info_of(domain, id, |info| {
        let time = &mut info.time;
        time.version = time.version.wrapping_add(1) | 1;
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        time.tsc_timestamp = crate::time::rdtsc();
        time.system_time = crate::time::since_boot_ns();
        time.tsc_to_system_mul = scale.mul;
        time.tsc_shift = scale.shift;
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        time.version = time.version.wrapping_add(1);
    });
}
