//! Where the worker's lines go. With a VBD (`io_kib=` on its line, `make stress IO=1`) the
//! worker is a domain whose devices domain 0 serves, and it prints into its console ring
//! (Xen's `struct xencons_interface`, as a Linux domU's hvc console does), which domain 0
//! relays (`(d0) [dN] stress: ...` on the serial log, read by `protocol::console`);
//! otherwise through the `console_io` hypercall (`(dN) stress: ...`). [`use_ring`] chooses
//! once, at start; `say!` prints a line. A panic still prints through `console_io` (the
//! runtime's handler), so that it shows even if domain 0 stopped.
//!
//! A line goes into the ring whole, once the ring has room for it: until then the worker
//! blocks, polling the ring's port, which domain 0 notifies when it has taken bytes (it
//! never spins: a hundred workers spinning while domain 0 relays would take the CPUs that
//! domain 0 and the console's output need). It gives up on a line after [`ROOM_WAIT_NS`].

use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicBool, Ordering};

use guest_rt::abi::console::OUT_RING_SIZE;
use guest_rt::console::LineWriter;
use guest_rt::events::Events;
use guest_rt::ring::ConsoleRing;
use guest_rt::time::Clock;

/// The worker prints into its console ring.
static RING: AtomicBool = AtomicBool::new(false);
/// The longest a line waits for room in the ring.
const ROOM_WAIT_NS: u64 = 60_000_000_000;
/// How long one poll of the ring's port lasts before the ring is looked at again (domain 0
/// notifies once it has taken bytes, but the notification may be taken by the event
/// callback before the poll looks).
const POLL_NS: u64 = 10_000_000;
/// The longest line formatted whole before it goes into the ring (longer ones go in parts).
const LINE_BYTES: usize = 256;

/// Prints into the console ring from now on, if `start_info` names one and events can be
/// set up (to wait for room); returns whether.
pub fn use_ring() -> bool {
    let found = ConsoleRing::get().is_some() && Events::init().is_ok() && Clock::new().is_ok();
    RING.store(found, Ordering::Release);
    found
}

/// Prints `args` where [`use_ring`] chose.
pub fn print(args: fmt::Arguments<'_>) {
    let Some(ring) = RING.load(Ordering::Acquire).then(ConsoleRing::get).flatten() else {
        guest_rt::print!("{args}");
        return;
    };
    let mut line = Line { bytes: [0; LINE_BYTES], len: 0 };
    if line.write_fmt(args).is_ok() {
        wait_for_room(ring, line.len);
        ring.write(&line.bytes[..line.len]);
    } else {
        // Too long to go whole: in parts, each waiting for room as the ring's writer does.
        let mut writer = LineWriter::new(ring);
        let _ = fmt::write(&mut writer, args);
    }
}

/// Blocks until the ring has room for `len` bytes (or [`ROOM_WAIT_NS`] passed).
fn wait_for_room(ring: ConsoleRing, len: usize) {
    let (Some(events), Some(clock)) = (Events::registered(), Clock::mapped()) else { return };
    let give_up = clock.now_ns() + ROOM_WAIT_NS;
    while ring.unconsumed().is_some_and(|waiting| (OUT_RING_SIZE - waiting) < len as u32) {
        let now = clock.now_ns();
        if now >= give_up {
            return;
        }
        let _ = events.poll(&[ring.port()], now + POLL_NS);
    }
}

/// One line, formatted before it goes into the ring.
struct Line {
    bytes: [u8; LINE_BYTES],
    len: usize,
}

impl fmt::Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len + text.len();
        self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Prints a line where [`use_ring`] chose.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}
