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
