//! Where the worker's lines go. With a VBD (`io_kib=` on its line, `make stress IO=1`) the
//! worker is a domain whose devices domain 0 serves, and it prints into its console ring
//! (Xen's `struct xencons_interface`, as a Linux domU's hvc console does), which domain 0
//! relays (`(d0) [dN] stress: ...` on the serial log, read by `protocol::console`);
//! otherwise through the `console_io` hypercall (`(dN) stress: ...`). [`use_ring`] chooses
//! once, at start; `say!` prints a line. A panic still prints through
//! `console_io` (the runtime's handler), so that it shows even if domain 0 stopped.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use guest_rt::console::LineWriter;
use guest_rt::ring::ConsoleRing;

/// The worker prints into its console ring.
static RING: AtomicBool = AtomicBool::new(false);

/// Prints into the console ring from now on, if `start_info` names one; returns whether.
pub fn use_ring() -> bool {
    let found = ConsoleRing::get().is_some();
    RING.store(found, Ordering::Release);
    found
}

/// Prints `args` where [`use_ring`] chose.
pub fn print(args: fmt::Arguments<'_>) {
    match RING.load(Ordering::Acquire).then(ConsoleRing::get).flatten() {
        Some(ring) => {
            // Flushed at each newline and when dropped: one ring write (and one
            // notification) per line.
            let mut writer = LineWriter::new(ring);
            let _ = fmt::write(&mut writer, args);
        }
        None => guest_rt::print!("{args}"),
    }
}

/// Prints a line where [`use_ring`] chose.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}
