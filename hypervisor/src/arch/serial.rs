//! The serial console: a 16550 UART on COM1 (115200 8N1) plus QEMU's debugcon port 0xe9.
//!
//! Input: [`read_byte`] polls the receive buffer (`pv::console`'s input, from timer
//! interrupts, one CPU at a time).
//!
//! Used by the logger on every CPU, so writes are serialized by the logger, not here. Two
//! ways to write: [`write_bytes`] waits for the transmitter before each byte (boot, the end
//! of the run, the fatal paths), [`write_fifo`] never waits: when [`transmitter_empty`]
//! says so it fills the 16-byte transmit FIFO, and the logger's slices come back later when
//! the UART is busy (under QEMU, while the host end of the serial line does not read, the
//! transmitter stays busy for as long as that lasts). Must never allocate or take locks
//! itself: it is also the panic and exception path.

use x86_64::instructions::port::{Port, PortWriteOnly};

const COM1: u16 = 0x3f8;
const DEBUGCON: u16 = 0xe9;
/// Line status register bit: transmit holding register empty (with FIFOs on: the
/// transmit FIFO is empty).
const LSR_THRE: u8 = 1 << 5;
/// Bytes the transmit FIFO holds.
pub const FIFO_BYTES: usize = 16;

/// Programs COM1 for 115200 baud, 8 data bits, no parity, one stop bit, FIFOs on.
pub fn init() {
    let settings: [(u16, u8); 7] = [
        (1, 0x00), // IER: no interrupts
        (3, 0x80), // LCR: DLAB on
        (0, 0x01), // DLL: divisor 1 = 115200 baud
        (1, 0x00), // DLM
        (3, 0x03), // LCR: 8N1, DLAB off
        (2, 0xC7), // FCR: enable and clear FIFOs, 14-byte threshold
        (4, 0x03), // MCR: DTR, RTS
    ];
    for (offset, value) in settings {
        let mut port = PortWriteOnly::<u8>::new(COM1 + offset);
        // SAFETY: COM1's registers are standard PC I/O ports owned by the console; writing
        // them has no effect on memory safety.
        unsafe { port.write(value) };
    }
}

/// Writes bytes to COM1 (waiting for the transmitter) and to debugcon.
pub fn write_bytes(bytes: &[u8]) {
    let mut data = PortWriteOnly::<u8>::new(COM1);
    let mut status = Port::<u8>::new(COM1 + 5);
    let mut debugcon = PortWriteOnly::<u8>::new(DEBUGCON);
    for &byte in bytes {
        // The bounded loop keeps a missing UART from hanging us.
        for _ in 0..100_000 {
            // SAFETY: reading the UART line status register has no effect on memory.
            if unsafe { status.read() } & LSR_THRE != 0 {
                break;
            }
        }
        // SAFETY: writing the UART data register and the debugcon port only emits a byte.
        unsafe {
            data.write(byte);
            debugcon.write(byte);
        }
    }
}

/// Line status register bit: data ready (a received byte waits in the receive buffer).
const LSR_DR: u8 = 1 << 0;

/// The next byte received on COM1, if one waits (never blocks). A machine without a UART
/// reads 0xff from the status port, which is not taken for data: at most [`FIFO_BYTES`]
/// bytes are read per call by the caller anyway.
pub fn read_byte() -> Option<u8> {
    let mut status = Port::<u8>::new(COM1 + 5);
    let mut data = Port::<u8>::new(COM1);
    // SAFETY: reading the UART line status register has no effect on memory.
    let lsr = unsafe { status.read() };
    if lsr == 0xff || lsr & LSR_DR == 0 {
        return None;
    }
    // SAFETY: reading the receive buffer register takes the byte; no effect on memory.
    Some(unsafe { data.read() })
}

/// Whether the transmitter can take [`FIFO_BYTES`] bytes now.
pub fn transmitter_empty() -> bool {
    let mut status = Port::<u8>::new(COM1 + 5);
    // SAFETY: reading the UART line status register has no effect on memory.
    unsafe { status.read() & LSR_THRE != 0 }
}

/// Writes up to [`FIFO_BYTES`] bytes without waiting (the caller saw
/// [`transmitter_empty`]); the rest of `bytes` is ignored.
pub fn write_fifo(bytes: &[u8]) {
    let mut data = PortWriteOnly::<u8>::new(COM1);
    let mut debugcon = PortWriteOnly::<u8>::new(DEBUGCON);
    for &byte in bytes.iter().take(FIFO_BYTES) {
        // SAFETY: writing the UART data register and the debugcon port only emits a byte.
        unsafe {
            data.write(byte);
            debugcon.write(byte);
        }
    }
}

/// A `core::fmt::Write` sink for the console.
pub struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}
