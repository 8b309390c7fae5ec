//! Minimal I/O APIC access: version and pin count, masking every pin, and programming one
//! redirection entry (fixed delivery, physical destination).
//!
//! The hypervisor masks every I/O APIC at boot so legacy interrupts stay quiet, and may later
//! route a single pin (e.g. the serial port) to a vector. Entry encoding is pure and
//! host-tested; hardware access is the two-register window (IOREGSEL/IOWIN) at a virtual
//! address the caller maps uncached. This module never routes to an exception vector and
//! never unmasks a pin it was not asked to program.

use core::ptr;

use crate::consts::ioapic::{
    ENTRY_ACTIVE_LOW, ENTRY_DEST_SHIFT, ENTRY_LEVEL, ENTRY_MASKED, ENTRY_MAX_DEST, IOREGSEL, IOWIN,
    REDTBL_BASE, REG_VERSION,
};
use crate::consts::vectors::FIRST_INTERRUPT_VECTOR;
use crate::ApicId;

/// Why an I/O APIC request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoApicError {
    /// The pin number exceeds the highest redirection entry.
    PinOutOfRange { pin: u8, max: u8 },
    /// The vector lies in the CPU exception range 0-31.
    ReservedVector(u8),
    /// The destination does not fit the 8-bit physical destination field.
    DestinationTooWide(ApicId),
}

/// How an input pin signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Edge triggered (ISA default).
    Edge,
    /// Level triggered (PCI default).
    Level,
}

/// Which level of an input pin is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// Active high (ISA default).
    ActiveHigh,
    /// Active low (PCI default).
    ActiveLow,
}

/// One redirection entry: fixed delivery of `vector` to the CPU with APIC ID `dest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectionEntry {
    /// Interrupt vector (32-255).
    pub vector: u8,
    /// Physical destination APIC ID (0-255).
    pub dest: ApicId,
    /// Edge or level.
    pub trigger: Trigger,
    /// Active high or low.
    pub polarity: Polarity,
    /// Whether the pin stays masked.
    pub masked: bool,
}

impl RedirectionEntry {
    /// The (low, high) register images of this entry.
    pub fn encode(&self) -> Result<(u32, u32), IoApicError> {
        if self.vector < FIRST_INTERRUPT_VECTOR {
            return Err(IoApicError::ReservedVector(self.vector));
        }
        if self.dest.0 > ENTRY_MAX_DEST {
            return Err(IoApicError::DestinationTooWide(self.dest));
        }
        let mut low = u32::from(self.vector);
        if self.polarity == Polarity::ActiveLow {
            low |= ENTRY_ACTIVE_LOW;
        }
        if self.trigger == Trigger::Level {
            low |= ENTRY_LEVEL;
        }
        if self.masked {
            low |= ENTRY_MASKED;
        }
        Ok((low, self.dest.0 << ENTRY_DEST_SHIFT))
    }
}

/// The IOAPICVER register, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicVersion {
    /// Implementation version (0x11 or 0x20 on common chipsets).
    pub version: u8,
    /// Index of the highest redirection entry (pins are 0..=this).
    pub max_redirection_entry: u8,
}

impl IoApicVersion {
    /// Decodes the raw register value.
    pub const fn from_register(raw: u32) -> IoApicVersion {
        IoApicVersion {
            version: raw as u8,
            max_redirection_entry: (raw >> 16) as u8,
        }
    }

    /// Number of input pins.
    pub const fn pins(self) -> u16 {
        self.max_redirection_entry as u16 + 1
    }
}

/// One I/O APIC, reached through its register window.
#[derive(Debug)]
pub struct IoApic {
    /// Virtual address of IOREGSEL (u64, not a pointer, so `IoApic` can live in a lock).
    base: u64,
}

impl IoApic {
    /// An I/O APIC whose registers are mapped at virtual address `virt_base`.
    ///
    /// # Safety
    ///
    /// `virt_base` must map the I/O APIC's registers (at least 0x20 bytes, 16-byte aligned)
    /// uncached and writable for as long as the value exists, and no other code may use this
    /// I/O APIC meanwhile. Use at CPL 0.
    pub unsafe fn new(virt_base: u64) -> IoApic {
        IoApic { base: virt_base }
    }

    /// Reads IOAPICVER.
    pub fn version(&mut self) -> IoApicVersion {
        IoApicVersion::from_register(self.read(REG_VERSION))
    }

    /// Masks every pin (and clears its routing), returning how many pins there are.
    pub fn mask_all(&mut self) -> u16 {
        let version = self.version();
        for pin in 0..=version.max_redirection_entry {
            self.write(entry_low(pin), ENTRY_MASKED);
            self.write(entry_high(pin), 0);
        }
        version.pins()
    }

    /// Programs pin `pin` with `entry`. The entry stays masked until its destination is in
    /// place, so the pin never fires towards a stale destination.
    pub fn set_entry(&mut self, pin: u8, entry: RedirectionEntry) -> Result<(), IoApicError> {
        let max = self.version().max_redirection_entry;
        if pin > max {
            return Err(IoApicError::PinOutOfRange { pin, max });
        }
        let (low, high) = entry.encode()?;
        self.write(entry_low(pin), low | ENTRY_MASKED);
        self.write(entry_high(pin), high);
        self.write(entry_low(pin), low);
        Ok(())
    }

    /// Masks or unmasks input `pin` (its other fields unchanged): a level-triggered device
    /// interrupt stays masked from its arrival until its handler is done with it.
    pub fn set_masked(&mut self, pin: u8, masked: bool) -> Result<(), IoApicError> {
        let max = self.version().max_redirection_entry;
        if pin > max {
            return Err(IoApicError::PinOutOfRange { pin, max });
        }
        let low = self.read(entry_low(pin));
        let low = if masked { low | ENTRY_MASKED } else { low & !ENTRY_MASKED };
        self.write(entry_low(pin), low);
        Ok(())
    }

    fn read(&mut self, index: u32) -> u32 {
        // SAFETY: `new`'s contract: the window is mapped uncached and this value has
        // exclusive use of it; `&mut self` keeps the select/read pair together.
        unsafe {
            ptr::write_volatile((self.base as usize + IOREGSEL) as *mut u32, index);
            ptr::read_volatile((self.base as usize + IOWIN) as *const u32)
        }
    }

    fn write(&mut self, index: u32, value: u32) {
        // SAFETY: as in `read`.
        unsafe {
            ptr::write_volatile((self.base as usize + IOREGSEL) as *mut u32, index);
            ptr::write_volatile((self.base as usize + IOWIN) as *mut u32, value);
        }
    }
}

/// Register index of the low half of redirection entry `pin`.
const fn entry_low(pin: u8) -> u32 {
    REDTBL_BASE + 2 * pin as u32
}

/// Register index of the high half of redirection entry `pin`.
const fn entry_high(pin: u8) -> u32 {
    entry_low(pin) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERIAL: RedirectionEntry = RedirectionEntry {
        vector: 0x24,
        dest: ApicId(0),
        trigger: Trigger::Edge,
        polarity: Polarity::ActiveHigh,
        masked: false,
    };

    #[test]
    fn encodes_an_isa_edge_entry() {
        assert_eq!(SERIAL.encode(), Ok((0x24, 0)));
    }

    #[test]
    fn encodes_a_masked_pci_level_entry_to_cpu_3() {
        let pci = RedirectionEntry {
            vector: 0x51,
            dest: ApicId(3),
            trigger: Trigger::Level,
            polarity: Polarity::ActiveLow,
            masked: true,
        };
        assert_eq!(pci.encode(), Ok((0x0001_A051, 0x0300_0000)));
    }

    #[test]
    fn refuses_exception_vectors_and_wide_destinations() {
        let low = RedirectionEntry {
            vector: 0x1F,
            ..SERIAL
        };
        assert_eq!(low.encode(), Err(IoApicError::ReservedVector(0x1F)));
        let wide = RedirectionEntry {
            dest: ApicId(256),
            ..SERIAL
        };
        assert_eq!(
            wide.encode(),
            Err(IoApicError::DestinationTooWide(ApicId(256)))
        );
        let edge = RedirectionEntry {
            dest: ApicId(255),
            ..SERIAL
        };
        assert_eq!(edge.encode(), Ok((0x24, 0xFF00_0000)));
    }

    #[test]
    fn decodes_the_version_register() {
        // QEMU's I/O APIC: version 0x20, 24 pins.
        let v = IoApicVersion::from_register(0x0017_0020);
        assert_eq!(
            v,
            IoApicVersion {
                version: 0x20,
                max_redirection_entry: 23
            }
        );
        assert_eq!(v.pins(), 24);
        assert_eq!(IoApicVersion::from_register(0xFFFF_FFFF).pins(), 256);
    }

    #[test]
    fn redirection_register_indices() {
        assert_eq!((entry_low(0), entry_high(0)), (0x10, 0x11));
        assert_eq!((entry_low(23), entry_high(23)), (0x3E, 0x3F));
        assert_eq!(entry_high(255), 0x20F, "no u8 overflow at the last pin");
    }
}
