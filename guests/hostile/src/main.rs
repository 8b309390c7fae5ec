//! guest-hostile: a PV guest that attacks the hypervisor the way a malicious kernel would,
//! through every interface it has, and checks that each attempt fails and the guest goes
//! on. As the last attack it faults inside its own fault handler, which must get it killed.
//!
//! Attacks, in order (see each module): hypercall arguments ([`arguments`]: pointers into
//! the hypervisor's window or non-canonical, huge counts and lengths, unknown hypercall
//! and sub-op numbers); the reservation ([`reservation`]: past the maximum, giving back
//! frames that are not free); the page tables ([`mappings`]: foreign frames, own tables
//! writable, the hypervisor's L4 and L3 slots, pins); where the hypervisor's window may
//! appear ([`window`]: aliases through own L3s, L4 slot 511); the shared-info frame as a
//! page table or descriptor frame ([`shared_info`]); direct writes to its page tables
//! that writable-page-table emulation must refuse or do exactly ([`ptwr`]); LDTs ([`segments`]: gates, frames that
//! are writable or something else, the hypervisor's range); polling the ports the hypervisor uses
//! as markers ([`polling`]); the machine-to-physical table and exchanges ([`m2p`]: foreign
//! frames named, the table's frames mapped, a write through its mapping, XSA-212's
//! exchange); giving back one frame twice;
//! switching to a foreign L4; vCPUs past its limit ([`vcpus`]); hypercalls faulting on
//! guest pointers while a second vCPU competes for the CPU ([`switches`]); Xen advisories'
//! proofs of concept as XTF makes them ([`xsa`]); then the fault in the fault handler
//! ([`last_attack`]).
//!
//! Console: "hostile: <attack>: refused (errno N)" (or "refused (D of A done)", or
//! "skipped (...)" when a frame meant as foreign is the guest's own), "... SUCCEEDED (BUG)"
//! for each attack that got through, then "hostile: all attacks refused (N made)" or
//! "hostile: K of N attacks SUCCEEDED (BUG)", then the last attack's line. The QEMU guest
//! test expects "hostile: all attacks refused" and the domain to end "killed"; a guest
//! that survives prints "hostile: survived a fault in the fault handler (BUG)" and powers
//! off. With `attack=<name>` on its command line it runs only that one attack, one that
//! ends the domain when contained ([`fatal`]): among them the attacks on the hypervisor's
//! exit path ([`exit_path`]) and entry paths ([`compat`]), which land in [`contained`], and
//! the hypercalls that ask for a great deal of work in one call ([`long_calls`]). The guest
//! must never attack in a way it could not survive if the hypervisor
//! refuses, nor end itself before the last attack.

#![no_std]
#![no_main]

mod arguments;
mod big_tree;
mod close_race;
mod compat;
mod console_waiters;
mod contained;
mod debugregs;
mod devices;
mod exit_path;
mod containment;
mod fatal;
mod last_attack;
mod long_calls;
mod m2p;
mod mappings;
mod nested_fault;
mod polling;
mod ptwr;
mod reservation;
mod segments;
mod shared_info;
mod switches;
mod targets;
mod vcpu_info;
mod vcpus;
mod verdict;
mod window;
mod xsa;

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::hypercall::shutdown;
use guest_rt::{println, StartInfo};

use targets::Targets;
use verdict::Tally;

guest_rt::entry!(main);

fn main(start: &'static StartInfo) {
    let targets = match Targets::new(start) {
        Ok(targets) => targets,
        Err(error) => {
            println!("hostile: FAILED preparing the attacks: {error}");
            shutdown(ShutdownReason::Crash);
        }
    };
    if let Some(name) = fatal::requested(guest_rt::start_info::cmd_line()) {
        fatal::run(name, &targets);
    }
    let mut tally = Tally::default();
    arguments::run(&mut tally, &targets);
    reservation::run(&mut tally, &targets);
    mappings::run(&mut tally, &targets);
    window::run(&mut tally, &targets);
    ptwr::run(&mut tally, &targets);
    shared_info::run(&mut tally, &targets);
    segments::run(&mut tally, &targets);
    polling::run(&mut tally);
    m2p::run(&mut tally, &targets);
    reservation::give_back_twice(&mut tally, &targets);
    mappings::switch_to_foreign_l4(&mut tally, &targets);
    vcpus::run(&mut tally);
    switches::run(&mut tally, &targets);
    debugregs::run(&mut tally);
    vcpu_info::run(&mut tally, &targets);
    xsa::run(&mut tally);
    devices::run(&mut tally, &targets);
    tally.summary();
    last_attack::fault_in_fault_handler(targets.hole)
}
