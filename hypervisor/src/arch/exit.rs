//! Stopping the machine: QEMU's isa-debug-exit device (port 0xf4) when present, then halt.
//!
//! Writing v to the port makes QEMU exit with status (v << 1) | 1, so the hypervisor's
//! outcomes map to distinct, non-zero host exit codes ([`Outcome`]; the README has the
//! table). On real hardware the write is ignored and the CPU halts with interrupts off.

use hypervisor::exitstatus::GuestEnd;
use x86_64::instructions::port::PortWriteOnly;

const DEBUG_EXIT_PORT: u16 = 0xf4;

/// What the run ended with; QEMU exit status is `(value << 1) | 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything checked out: QEMU exits with 33.
    Success,
    /// A check failed, a panic or an unexpected exception: QEMU exits with 35.
    Failure,
    /// `exit=guest`: how the guest ended (33 for a power-off, 37 and up otherwise).
    Guest(GuestEnd),
}

impl Outcome {
    /// The value written to the port.
    const fn value(self) -> u32 {
        match self {
            Self::Success => 0x10,
            Self::Failure => 0x11,
            Self::Guest(end) => end.exit_value(),
        }
    }
}

/// Ends the run on this CPU; other CPUs stop with the machine (QEMU) or keep idling (real
/// hardware, where the caller has already printed why).
pub fn exit(outcome: Outcome) -> ! {
    let mut port = PortWriteOnly::<u32>::new(DEBUG_EXIT_PORT);
    // SAFETY: the isa-debug-exit port only ends the emulator; on hardware nothing listens.
    unsafe { port.write(outcome.value()) };
    halt_forever()
}

/// Halts this CPU for good, with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
