//! Argument structs of `vcpu_op` (vcpu.h): timers, vcpu_info placement and runstate.
//! Command numbers are in [`crate::hypercall::VcpuOp`]; the `VCPUOP_initialise` context is
//! [`crate::arch_x86::VcpuGuestContext`].
//!
//! The hypervisor reads these from guest memory; our guests build them. This module must
//! never run timers or track vCPU state.

use crate::ids::Mfn;
use crate::macros::{abi_enum, assert_layout};

/// `VCPU_SSHOTTMR_future`: fail with `ETIME` if the deadline has already passed.
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1 << 0;

/// `VCPUOP_set_singleshot_timer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuSetSingleshotTimer {
    /// Absolute system time in ns.
    pub timeout_abs_ns: u64,
    /// `VCPU_SSHOTTMR_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

assert_layout!(VcpuSetSingleshotTimer, size = 16, { timeout_abs_ns @ 0, flags @ 8 });

/// `VCPUOP_set_periodic_timer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuSetPeriodicTimer {
    pub period_ns: u64,
}

assert_layout!(VcpuSetPeriodicTimer, size = 8, { period_ns @ 0 });

/// `VCPUOP_register_vcpu_info`: move this vCPU's `vcpu_info` into a guest page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuRegisterVcpuInfo {
    /// Frame holding the new `vcpu_info`.
    pub mfn: Mfn,
    /// Byte offset in that frame; the 64 bytes must not cross the page end.
    pub offset: u32,
    pub rsvd: u32,
}

assert_layout!(VcpuRegisterVcpuInfo, size = 16, { mfn @ 0, offset @ 8, rsvd @ 12 });

abi_enum! {
    /// A vCPU's scheduling state (`RUNSTATE_*`).
    pub enum Runstate: i32 {
        /// Running on a physical CPU.
        Running = 0,
        /// Runnable, not scheduled.
        Runnable = 1,
        /// Blocked (idle).
        Blocked = 2,
        /// Neither runnable nor blocked (paused, hot-unplugged).
        Offline = 3,
    }
}

/// `XEN_RUNSTATE_UPDATE` in `state_entry_time`: the area is being updated.
pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;

/// `VCPUOP_get_runstate_info` (OUT) and the registered runstate area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuRunstateInfo {
    /// A [`Runstate`] number.
    pub state: i32,
    pub _pad: u32,
    /// System time (ns) the current state was entered.
    pub state_entry_time: u64,
    /// Time spent in each runstate, indexed by [`Runstate`], in ns.
    pub time: [u64; 4],
}

assert_layout!(VcpuRunstateInfo, size = 48, { state @ 0, state_entry_time @ 8, time @ 16 });

/// `VCPUOP_register_runstate_memory_area` and `register_vcpu_time_memory_area`: a guest
/// virtual address (or, for the `*_phys_area` ops, a guest physical one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuRegisterMemoryArea {
    pub addr: u64,
}

assert_layout!(VcpuRegisterMemoryArea, size = 8, { addr @ 0 });

/// `VCPUOP_get_physid` (OUT): x86 APIC id in bits 0-31, ACPI id in bits 32-63.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuGetPhysid {
    pub phys_id: u64,
}

assert_layout!(VcpuGetPhysid, size = 8, { phys_id @ 0 });
