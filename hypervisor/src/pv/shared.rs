//! The hypervisor's access to a domain's shared-info page (and the vcpu_info records in
//! it), through a temporary mapping on the current CPU.
//!
//! Guests read and write this page concurrently; fields the hypervisor changes here are
//! single bytes or words that the guest only reads, or flags with documented hand-over.

use abi::shared_info::{SharedInfo, VcpuInfo};

use crate::domain::{Domain, Vcpu};
use crate::memory::FrameMapping;

/// Runs `f` on the domain's shared-info page.
pub fn with_shared<R>(domain: &Domain, f: impl FnOnce(&mut SharedInfo) -> R) -> R {
    let mut map = FrameMapping::new(domain.shared_info).expect("a temporary mapping slot is free");
    let page = map.bytes();
    // SAFETY: the page is at least as large as SharedInfo (3136 < 4096 bytes), page aligned,
    // and SharedInfo is plain integers, so any contents are a valid value.
    let shared = unsafe { &mut *(page.as_mut_ptr() as *mut SharedInfo) };
    f(shared)
}

/// Runs `f` on the vcpu_info of `vcpu`.
pub fn with_vcpu_info<R>(vcpu: &Vcpu, f: impl FnOnce(&mut VcpuInfo) -> R) -> R {
    with_shared(&vcpu.domain, |shared| f(&mut shared.vcpu_info[vcpu.id as usize % shared.vcpu_info.len()]))
}

/// Publishes the vCPU's time record: TSC and system time now, and the TSC-to-ns scale, with
/// Xen's version protocol (odd while the record changes) so the guest reads it lock-free.
pub fn publish_time(vcpu: &Vcpu) {
    let Some(scale) = crate::time::tsc_scale() else { return };
    with_vcpu_info(vcpu, |info| {
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
