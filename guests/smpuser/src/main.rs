//! guest-smpuser: a PV guest that checks two things a Xen PV64 kernel relies on.
//!
//! 1. SMP ([`smp`], [`shootdown`]): vCPU 1 brought up with `VCPUOP_initialise` and
//!    `VCPUOP_up`, running its own code on its own stack, and a TLB shootdown: after vCPU 0
//!    remaps a page with `update_va_mapping(UVMF_INVLPG | UVMF_ALL)`, vCPU 1 must see the
//!    new frame. Prints whether the two vCPUs ran on different physical CPUs (only then
//!    does the shootdown cross CPUs), then "smpuser: smp ok".
//! 2. Guest user mode ([`user_mode`], [`user_tables`]): a user L4, `iret` to ring-3 user
//!    code, and `int3`, a page fault (U bit set), `mov` from and to cr3 (#GP, never
//!    emulated for user mode) and `syscall` from user mode bounced to the guest kernel.
//!    Prints "smpuser: user mode ok".
//!
//! Then `main` returns and the runtime powers the domain off, which stops vCPU 1 too. Both
//! vCPUs print progress lines ("smpuser: vcpu0 ...", "smpuser: vcpu1 ..."); a failed check
//! prints "smpuser: FAILED <what>" and crashes the domain. It needs three free frames and
//! two vCPUs (`vcpus=2` on its module line, or the hypervisor's `vcpus=2` option), and
//! passes on one physical CPU as on several; it must never change a mapping the program
//! itself uses.

#![no_std]
#![no_main]

mod cpu_id;
mod failure;
mod shootdown;
mod smp;
mod user_mode;
mod user_tables;
mod wait;

use guest_rt::{println, StartInfo};

use failure::{fail, Failure};
use guest_rt::frames::FreeFrames;

guest_rt::entry!(main);

fn main(start: &'static StartInfo) {
    if let Err(failure) = run(start) {
        fail(failure);
    }
}

fn run(start: &StartInfo) -> Result<(), Failure> {
    let mut free = FreeFrames::new(start).ok_or(Failure::BadPtBase(start.pt_base))?;
    smp::check(start, &mut free)?;
    println!("smpuser: smp ok");
    user_mode::check(start, &mut free)?;
    println!("smpuser: user mode ok");
    Ok(())
}
