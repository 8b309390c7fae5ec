//! The hypervisor's pure logic that has no better home in a shared crate: it builds for the
//! host (unit tests) and for the machine. The image itself is `main.rs` and its modules.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod bootmodule;
pub mod budget;
pub mod cmdline;
pub mod console_line;
pub mod console_waiters;
pub mod continuation;
pub mod debugreg;
pub mod descriptor;
pub mod domspec;
pub mod exitstatus;
pub mod features;
pub mod fpu;
pub mod guest_cpuid;
pub mod guest_return;
pub mod hypercall;
pub mod insn;
pub mod logring;
pub mod memop;
pub mod runstate;
#[cfg(test)]
mod proptests;
