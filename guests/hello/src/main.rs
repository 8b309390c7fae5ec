//! The smallest useful PV guest: prints its page count and command line on the hypervisor
//! console, then returns, which powers the domain off. It exercises the whole guest path
//! (ELF notes, entry, start_info, hypercall page, console_io, sched_op shutdown) and is
//! what the hypervisor's domain tests boot first. It must never need more than the
//! runtime gives it.

#![no_std]
#![no_main]

use guest_rt::console::Bytes;
use guest_rt::{println, StartInfo};

guest_rt::entry!(main);

fn main(start: &'static StartInfo) {
    println!(
        "hello from a Rust PV guest: nr_pages={} cmdline={}",
        start.nr_pages,
        Bytes(start.cmd_line())
    );
}
