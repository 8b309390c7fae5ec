//! Paravirtualized guests: everything between a guest's trap into the hypervisor and its
//! return — hypercalls, exceptions, instruction emulation, memory management, console —
//! plus building domains and ending the run.

pub mod build;
pub mod console;
pub mod control;
pub mod debugreg;
pub mod descriptors;
pub mod emulate;
pub mod events;
pub mod fpu;
pub mod grants;
pub mod hypercall;
pub mod ldt;
pub mod lifecycle;
pub mod memop;
pub mod mmu;
pub mod modules;
pub mod physdev;
pub mod pirq;
pub mod ptwr;
pub mod shared;
pub mod switch;
pub mod teardown;
pub mod traps;
pub mod vcpuop;

use crate::arch::entry::{SYSCALL32_VECTOR, SYSCALL_VECTOR};
use crate::arch::trap::TrapFrame;
use crate::sched;

/// #DB: the one exception that does not drop a held-back #DB (`debugreg::drop_deferred`).
const VECTOR_DEBUG: u64 = 1;

/// A trap that interrupted a guest (ring 3): hypercall, guest syscall (64-bit or 32-bit
/// code) or exception. Interrupts are handled by `crate::interrupts`; this only sees
/// vectors < 32 and syscalls.
pub fn guest_trap(frame: &mut TrapFrame) {
    let Some(vcpu) = sched::current() else {
        panic!("trap {:#x} from ring 3 with no vCPU on this CPU", frame.vector);
    };
    let syscall = frame.vector == SYSCALL_VECTOR || frame.vector == SYSCALL32_VECTOR;
    if frame.vector != VECTOR_DEBUG {
        debugreg::drop_deferred(vcpu, frame, syscall);
    }
    if frame.vector == SYSCALL32_VECTOR {
        traps::syscall32(vcpu, frame);
    } else if frame.vector == SYSCALL_VECTOR {
        let in_kernel = vcpu.ctx.lock().in_kernel;
        if in_kernel {
            hypercall::dispatch(vcpu, frame);
        } else {
            traps::user_syscall(vcpu, frame);
        }
    } else {
        traps::guest_exception(vcpu, frame);
    }
}
