//! Secondary vCPUs: the `vcpu_guest_context` a new vCPU starts from, and `VCPUOP_initialise`
//! / `VCPUOP_up` to create and start it.
//!
//! A secondary vCPU starts in guest kernel mode at `entry(arg)` on a stack the guest gives
//! ([`VcpuStack`]), on the boot page tables (`pt_base`'s L4, which every vCPU shares), with
//! the runtime's trap table and the FPU in its initial state. It shares the
//! guest's memory with every other vCPU: the console is safe to use from any vCPU, event
//! delivery and the one-shot timer ([`crate::timer`]) are vCPU 0's only.
//!
//! Who uses it: guests that run code on several vCPUs (domain 0's race attack, the
//! multi-vCPU hog). This module must never start a vCPU whose entry can return: there is
//! nothing to return to.

use core::cell::UnsafeCell;

use abi::arch_x86::{pfn_to_cr3, VcpuGuestContext, FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, VGCF_IN_KERNEL};
use abi::hypercall::VcpuOp;
use abi::ids::VcpuId;

use crate::hypercall::{self, HypercallError, VcpuControl};
use crate::traps::{trap_table, EXCEPTION_COUNT};

/// rflags a secondary vCPU starts with: interrupts on, reserved bit 1 (its events are
/// masked by its `vcpu_info`, not by rflags; no port is bound to it unless it binds one).
const INITIAL_RFLAGS: u64 = 0x202;

/// A stack for one secondary vCPU, `N` bytes, 16-byte aligned; a `static` of the guest.
#[repr(C, align(16))]
pub struct VcpuStack<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: the stack is only ever used by the one vCPU it is given to; the runtime never
// reads or writes it.
unsafe impl<const N: usize> Sync for VcpuStack<N> {}

impl<const N: usize> VcpuStack<N> {
    /// A zeroed stack.
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; N]))
    }

    /// The address just past the stack (where it starts, growing down).
    pub fn top(&'static self) -> u64 {
        self.0.get() as u64 + N as u64
    }
}

impl<const N: usize> Default for VcpuStack<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The context vCPU `id` starts from: `entry(arg)` (rdi = `arg`) on the stack ending at
/// `stack_top`, guest kernel mode on the boot L4 machine frame `l4_mfn`, the runtime's trap
/// table.
pub fn context(entry: extern "C" fn(u64) -> !, arg: u64, stack_top: u64, l4_mfn: u64) -> VcpuGuestContext {
    let mut context = VcpuGuestContext {
        flags: VGCF_IN_KERNEL,
        kernel_ss: FLAT_KERNEL_SS64.into(),
        ..VcpuGuestContext::default()
    };
    let regs = &mut context.user_regs;
    regs.rip = entry as *const () as u64;
    // As if `call`ed: the ABI wants rsp + 8 aligned to 16 at a function's first instruction.
    regs.rsp = stack_top - 8;
    regs.rdi = arg;
    regs.cs = FLAT_KERNEL_CS64;
    regs.ss = FLAT_KERNEL_SS64;
    regs.rflags = INITIAL_RFLAGS;
    let table = trap_table(crate::traps::stubs_address());
    for entry in &table[..EXCEPTION_COUNT] {
        context.trap_ctxt[usize::from(entry.vector)] = *entry;
    }
    context.ctrlreg[3] = pfn_to_cr3(l4_mfn);
    context
}

/// `VCPUOP_initialise` of vCPU `id` from `context` (the vCPU is created down).
///
/// # Safety
/// Once brought up the vCPU runs `context` as it stands: its entry, stack and page tables
/// must be ones the program gives that vCPU alone (as [`context`] builds them for
/// [`start`]), or the context one the hypervisor refuses (a probe).
pub unsafe fn initialise(id: VcpuId, context: &VcpuGuestContext) -> Result<u64, HypercallError> {
    let mut copy = *context;
    // SAFETY: the hypervisor only reads the copy; the caller vouches for what it starts.
    unsafe { hypercall::vcpu_op_raw(VcpuOp::Initialise, id, &raw mut copy) }
}

/// `VCPUOP_up` of vCPU `id`.
pub fn up(id: VcpuId) -> Result<u64, HypercallError> {
    hypercall::vcpu_control(VcpuControl::Up, id)
}

/// `VCPUOP_is_up` of vCPU `id`: whether it runs.
pub fn is_up(id: VcpuId) -> Result<bool, HypercallError> {
    hypercall::vcpu_control(VcpuControl::IsUp, id).map(|up| up == 1)
}

/// Creates vCPU `id` running `entry(arg)` on `stack` (without the periodic timer Xen gives
/// vCPUs) and starts it.
pub fn start<const N: usize>(
    id: VcpuId,
    entry: extern "C" fn(u64) -> !,
    arg: u64,
    stack: &'static VcpuStack<N>,
) -> Result<(), StartError> {
    let pt_base = crate::start_info().pt_base;
    let l4 = crate::start_info::virt_to_mfn(pt_base).ok_or(StartError::BadPtBase(pt_base))?;
    // SAFETY: the context runs `entry` on `stack` (given to this vCPU) with our own tables.
    unsafe { initialise(id, &context(entry, arg, stack.top(), l4.0)) }.map_err(StartError::Initialise)?;
    // No 10 ms periodic timer (Xen's default), as for vCPU 0 at start.
    crate::timer::stop_periodic(id);
    up(id).map(drop).map_err(StartError::Up)
}

/// Why [`start`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    /// `start_info.pt_base` is not in the guest's P2M.
    BadPtBase(u64),
    Initialise(HypercallError),
    Up(HypercallError),
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn never(_: u64) -> ! {
        panic!("never called")
    }

    #[test]
    fn the_context_starts_the_entry_in_kernel_mode() {
        let context = context(never, 7, 0x1000, 0x42);
        assert_eq!(context.user_regs.rip, never as *const () as u64);
        assert_eq!(context.user_regs.rsp, 0x1000 - 8);
        assert_eq!(context.user_regs.rdi, 7);
        assert_eq!(context.flags, VGCF_IN_KERNEL);
        assert_eq!(context.ctrlreg[3], pfn_to_cr3(0x42));
        assert!(context.trap_ctxt[..EXCEPTION_COUNT].iter().all(|t| t.address != 0));
    }
}
