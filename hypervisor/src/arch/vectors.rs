//! Interrupt vectors the hypervisor uses (exceptions are 0-31; the legacy PIC, masked, was
//! moved to 0x20-0x2f so that a stray one cannot look like an exception). Here, at the
//! bottom, because every layer names them (the local APIC's setup, cross-CPU calls, the
//! scheduler's reschedule IPI, domain 0's device interrupts, the dispatch in `traps`).

pub const PIC_BASE: u8 = 0x20;
/// Device interrupts domain 0 binds (`pv::pirq`), one vector per line.
pub const DEVICE_BASE: u8 = 0x30;
pub const DEVICE_LAST: u8 = 0x3f;
pub const TIMER: u8 = 0xf0;
pub const CALL: u8 = 0xf1;
pub const RESCHEDULE: u8 = 0xf2;
pub const ERROR: u8 = 0xfe;
pub const SPURIOUS: u8 = 0xff;
