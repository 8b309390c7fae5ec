//! A guest that ends as its command line says: `reason=poweroff|reboot|crash|suspend|watchdog`
//! (default poweroff) is the `sched_op shutdown` reason it gives after one line on the
//! console. The QEMU cases of a hand run's exit status (`pvh-exit-*`) boot it: each ending
//! must give its own status. It must never do anything else.

#![no_std]
#![no_main]

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::console::Bytes;
use guest_rt::hypercall::shutdown;
use guest_rt::{println, StartInfo};

guest_rt::entry!(main);

fn main(start: &'static StartInfo) -> ! {
    let line = core::str::from_utf8(start.cmd_line()).unwrap_or("");
    let reason = match line.split_ascii_whitespace().find_map(|word| word.strip_prefix("reason=")) {
        Some("reboot") => ShutdownReason::Reboot,
        Some("crash") => ShutdownReason::Crash,
        Some("suspend") => ShutdownReason::Suspend,
        Some("watchdog") => ShutdownReason::Watchdog,
        _ => ShutdownReason::Poweroff,
    };
    println!("shutdown: {:?} as asked ({})", reason, Bytes(start.cmd_line()));
    shutdown(reason)
}
