//! Interrupt handlers (vectors 32-255 other than the masked PIC range and spurious).
use log::warn;

/// Handles one interrupt; called with interrupts off.
pub fn handle(vector: u8) {
    warn!("unexpected interrupt vector {vector:#x}");
}
