//! Configuration space: a function's address ([`Bdf`]), the 0xCF8 address word
//! ([`ConfigAddress`]), the access trait ([`ConfigSpace`]), the type-0 header's registers,
//! BAR decoding and sizing ([`probe_bar`]) and the capability list ([`capabilities`]).
//!
//! Layouts are the PCI Local Bus Specification 3.0's (chapter 6) and the configuration
//! mechanism #1 of its section 3.2.2.3.2.

use alloc::vec::Vec;
use core::fmt;

/// Port of the configuration address register (mechanism #1).
pub const ADDRESS_PORT: u16 = 0xcf8;
/// First port of the configuration data register (0xCFC-0xCFF).
pub const DATA_PORT: u16 = 0xcfc;

/// Header registers (byte offsets).
pub const VENDOR_ID: u8 = 0x00;
pub const COMMAND: u8 = 0x04;
pub const STATUS: u8 = 0x06;
pub const CLASS_REVISION: u8 = 0x08;
pub const HEADER_TYPE: u8 = 0x0e;
pub const BAR0: u8 = 0x10;
pub const CAPABILITIES_POINTER: u8 = 0x34;
pub const EXPANSION_ROM: u8 = 0x30;
pub const INTERRUPT_LINE: u8 = 0x3c;
pub const INTERRUPT_PIN: u8 = 0x3d;

/// Command register bits.
pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: the function has a capability list.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// Capability ids.
pub const CAP_MSI: u8 = 0x05;
pub const CAP_VENDOR: u8 = 0x09;
pub const CAP_MSIX: u8 = 0x11;

/// Class code of bridges (host, ISA, PCI-to-PCI...).
pub const CLASS_BRIDGE: u8 = 0x06;

/// One function: bus, device (0-31), function (0-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Bdf {
    /// `None` when the device or function number is out of range.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Bdf> {
        if device < 32 && function < 8 {
            Some(Bdf { bus, device, function })
        } else {
            None
        }
    }

    /// Xen's `devfn` byte: device << 3 | function.
    pub const fn devfn(self) -> u8 {
        self.device << 3 | self.function
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// The word written to port 0xCF8: enable bit, function, dword-aligned register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAddress(pub u32);

const ENABLE: u32 = 1 << 31;

impl ConfigAddress {
    /// The address of register `offset` (rounded down to its dword) of `bdf`.
    pub const fn new(bdf: Bdf, offset: u8) -> ConfigAddress {
        ConfigAddress(
            ENABLE
                | (bdf.bus as u32) << 16
                | (bdf.device as u32) << 11
                | (bdf.function as u32) << 8
                | (offset as u32 & 0xfc),
        )
    }

    /// The function and dword register a latched address names, `None` without the
    /// enable bit (then data-port accesses go nowhere, as on hardware). Bits 24-30
    /// (reserved; extended register bits on some chipsets) must be clear: such an address
    /// names nothing here.
    pub const fn decode(self) -> Option<(Bdf, u8)> {
        if self.0 & ENABLE == 0 || self.0 & 0x7f00_0000 != 0 {
            return None;
        }
        let bdf = Bdf {
            bus: (self.0 >> 16) as u8,
            device: (self.0 >> 11) as u8 & 0x1f,
            function: (self.0 >> 8) as u8 & 0x7,
        };
        Some((bdf, self.0 as u8 & 0xfc))
    }
}

/// Access to configuration space, one aligned dword at a time.
pub trait ConfigSpace {
    /// The dword at `offset` (a multiple of 4) of `bdf`; all ones when nothing answers.
    fn read32(&mut self, bdf: Bdf, offset: u8) -> u32;
    /// Writes the dword at `offset` (a multiple of 4) of `bdf`.
    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32);

    /// The 16 bits at `offset` (2-aligned).
    fn read16(&mut self, bdf: Bdf, offset: u8) -> u16 {
        (self.read32(bdf, offset & 0xfc) >> ((offset & 2) * 8)) as u16
    }

    /// The byte at `offset`.
    fn read8(&mut self, bdf: Bdf, offset: u8) -> u8 {
        (self.read32(bdf, offset & 0xfc) >> ((offset & 3) * 8)) as u8
    }

    /// Writes the 16 bits at `offset` (2-aligned), keeping the other half of the dword.
    fn write16(&mut self, bdf: Bdf, offset: u8, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(bdf, offset & 0xfc);
        let new = old & !(0xffff << shift) | u32::from(value) << shift;
        self.write32(bdf, offset & 0xfc, new);
    }
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB.
    Memory32 { prefetchable: bool },
    /// Memory anywhere (the BAR and the next one together).
    Memory64 { prefetchable: bool },
}

/// One implemented BAR: its index (0-5), kind, base address and size in bytes (a power of
/// two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub index: u8,
    pub kind: BarKind,
    pub base: u64,
    pub size: u64,
}

impl Bar {
    /// Whether it decodes memory.
    pub const fn is_memory(&self) -> bool {
        !matches!(self.kind, BarKind::Io)
    }

    /// How many BAR registers it takes (2 for a 64-bit memory BAR).
    pub const fn registers(&self) -> u8 {
        match self.kind {
            BarKind::Memory64 { .. } => 2,
            _ => 1,
        }
    }

    /// What the register at `index + half` reads while a sizing probe (all ones written)
    /// is latched there: the size mask with the type bits, as the hardware answers.
    pub const fn probe_value(&self, half: u8) -> u32 {
        let mask = !(self.size.wrapping_sub(1));
        match (self.kind, half) {
            (BarKind::Io, _) => (mask as u32 & !0x3) | 0x1,
            (BarKind::Memory32 { prefetchable }, _) => (mask as u32 & !0xf) | if prefetchable { 0x8 } else { 0 },
            (BarKind::Memory64 { prefetchable }, 0) => (mask as u32 & !0xf) | 0x4 | if prefetchable { 0x8 } else { 0 },
            (BarKind::Memory64 { .. }, _) => (mask >> 32) as u32,
        }
    }

    /// What the register at `index + half` holds when programmed with `base`.
    pub const fn register_value(&self, half: u8) -> u32 {
        match (self.kind, half) {
            (BarKind::Io, _) => self.base as u32 | 0x1,
            (BarKind::Memory32 { prefetchable }, _) => self.base as u32 | if prefetchable { 0x8 } else { 0 },
            (BarKind::Memory64 { prefetchable }, 0) => self.base as u32 | 0x4 | if prefetchable { 0x8 } else { 0 },
            (BarKind::Memory64 { .. }, _) => (self.base >> 32) as u32,
        }
    }
}

/// Why a BAR could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarError {
    /// Memory type 01b (reserved) or 11b.
    ReservedType(u8),
    /// A 64-bit BAR in the last register.
    Truncated64,
}

/// Decodes BAR `index` of `bdf`, sizing it by writing all ones (with the command
/// register's decode bits off meanwhile, restored after) and putting the original value
/// back. `Ok(None)`: not implemented (sizes to zero). Only for boot-time enumeration by
/// whoever owns the function: the BAR does not decode while it is probed.
pub fn probe_bar<C: ConfigSpace + ?Sized>(cfg: &mut C, bdf: Bdf, index: u8) -> Result<Option<Bar>, BarError> {
    let offset = BAR0 + 4 * index;
    let command = cfg.read16(bdf, COMMAND);
    let quiet = command & !(COMMAND_IO | COMMAND_MEMORY);
    if quiet != command {
        cfg.write16(bdf, COMMAND, quiet);
    }
    let result = size_bar(cfg, bdf, index, offset);
    if quiet != command {
        cfg.write16(bdf, COMMAND, command);
    }
    result
}

fn size_bar<C: ConfigSpace + ?Sized>(cfg: &mut C, bdf: Bdf, index: u8, offset: u8) -> Result<Option<Bar>, BarError> {
    let original = cfg.read32(bdf, offset);
    cfg.write32(bdf, offset, u32::MAX);
    let low = cfg.read32(bdf, offset);
    cfg.write32(bdf, offset, original);
    if original & 1 == 1 {
        let mask = low & !0x3 & 0xffff;
        if mask == 0 {
            return Ok(None);
        }
        let size = u64::from((!mask & 0xffff).wrapping_add(1));
        return Ok(Some(Bar { index, kind: BarKind::Io, base: u64::from(original & !0x3 & 0xffff), size }));
    }
    let prefetchable = original & 0x8 != 0;
    match (original >> 1) & 0x3 {
        0 => {
            let mask = low & !0xf;
            if mask == 0 {
                return Ok(None);
            }
            let size = u64::from((!mask).wrapping_add(1));
            Ok(Some(Bar { index, kind: BarKind::Memory32 { prefetchable }, base: u64::from(original & !0xf), size }))
        }
        2 => {
            if index >= 5 {
                return Err(BarError::Truncated64);
            }
            let high_offset = offset + 4;
            let original_high = cfg.read32(bdf, high_offset);
            cfg.write32(bdf, high_offset, u32::MAX);
            let high = cfg.read32(bdf, high_offset);
            cfg.write32(bdf, high_offset, original_high);
            let mask = u64::from(high) << 32 | u64::from(low & !0xf);
            if mask == 0 {
                return Ok(None);
            }
            let size = (!mask).wrapping_add(1);
            let base = u64::from(original_high) << 32 | u64::from(original & !0xf);
            Ok(Some(Bar { index, kind: BarKind::Memory64 { prefetchable }, base, size }))
        }
        other => Err(BarError::ReservedType(other as u8)),
    }
}

/// One capability: its id and offset in configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub id: u8,
    pub offset: u8,
}

/// The most capabilities followed (a list that loops is cut there: 48 is how many fit in
/// the 192 bytes after the header).
pub const MAX_CAPABILITIES: usize = 48;

/// The function's capability list (empty when the status register has none), followed
/// at most [`MAX_CAPABILITIES`] steps and never below offset 0x40.
pub fn capabilities<C: ConfigSpace + ?Sized>(cfg: &mut C, bdf: Bdf) -> Vec<Capability> {
    let mut found = Vec::new();
    if cfg.read16(bdf, STATUS) & STATUS_CAPABILITIES == 0 {
        return found;
    }
    let mut next = cfg.read8(bdf, CAPABILITIES_POINTER) & 0xfc;
    while next >= 0x40 && found.len() < MAX_CAPABILITIES {
        let header = cfg.read16(bdf, next);
        found.push(Capability { id: header as u8, offset: next });
        next = (header >> 8) as u8 & 0xfc;
    }
    found
}

/// Bytes a capability's registers take, for the write policy: MSI by its message-control
/// word (10 to 24 bytes), MSI-X 12, anything else just its two header bytes.
pub fn capability_len<C: ConfigSpace + ?Sized>(cfg: &mut C, bdf: Bdf, cap: Capability) -> u8 {
    match cap.id {
        CAP_MSI => {
            let control = cfg.read16(bdf, cap.offset + 2);
            let wide = control & (1 << 7) != 0;
            let masking = control & (1 << 8) != 0;
            10 + if wide { 4 } else { 0 } + if masking { 10 } else { 0 }
        }
        CAP_MSIX => 12,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Bus, SimFunction};

    #[test]
    fn address_round_trips() {
        let bdf = Bdf::new(3, 31, 7).unwrap();
        let address = ConfigAddress::new(bdf, 0x3e);
        assert_eq!(address.0, 0x8003_ff3c);
        assert_eq!(address.decode(), Some((bdf, 0x3c)));
        assert_eq!(ConfigAddress(0x0003_ff3c).decode(), None);
        assert_eq!(ConfigAddress(0x8103_ff3c).decode(), None);
        assert_eq!(Bdf::new(0, 32, 0), None);
        assert_eq!(Bdf::new(0, 1, 8), None);
        assert_eq!(bdf.devfn(), 0xff);
    }

    #[test]
    fn bars_are_sized_and_restored() {
        let bdf = Bdf::new(0, 4, 0).unwrap();
        let mut bus = Bus::default();
        let mut f = SimFunction::new(0x1af4, 0x1042, 0x01_00_00);
        f.set_bar32(0, 0xc000, 0x40, true);
        f.set_bar32(1, 0xfebd_1000, 0x1000, false);
        f.set_bar64(4, 0x8_0000_4000, 0x4000, true);
        bus.add(bdf, f);
        let command = bus.read16(bdf, COMMAND);
        assert_eq!(probe_bar(&mut bus, bdf, 0), Ok(Some(Bar { index: 0, kind: BarKind::Io, base: 0xc000, size: 0x40 })));
        let mem = Bar { index: 1, kind: BarKind::Memory32 { prefetchable: false }, base: 0xfebd_1000, size: 0x1000 };
        assert_eq!(probe_bar(&mut bus, bdf, 1), Ok(Some(mem)));
        let wide = Bar { index: 4, kind: BarKind::Memory64 { prefetchable: true }, base: 0x8_0000_4000, size: 0x4000 };
        assert_eq!(probe_bar(&mut bus, bdf, 4), Ok(Some(wide)));
        assert_eq!(probe_bar(&mut bus, bdf, 2), Ok(None));
        // Everything as it was.
        assert_eq!(bus.read16(bdf, COMMAND), command);
        assert_eq!(bus.read32(bdf, BAR0 + 16), 0x0000_400c);
        assert_eq!(bus.read32(bdf, BAR0 + 20), 0x8);
        // What a probe of each reads, as the simulated hardware answers.
        for bar in [mem, wide] {
            for half in 0..bar.registers() {
                let offset = BAR0 + 4 * (bar.index + half);
                let saved = bus.read32(bdf, offset);
                bus.write32(bdf, offset, u32::MAX);
                assert_eq!(bus.read32(bdf, offset), bar.probe_value(half));
                bus.write32(bdf, offset, saved);
                assert_eq!(saved, bar.register_value(half));
            }
        }
    }

    #[test]
    fn capability_lists_that_loop_end() {
        let bdf = Bdf::new(0, 1, 0).unwrap();
        let mut bus = Bus::default();
        let mut f = SimFunction::new(0x8086, 0x100e, 0x02_00_00);
        f.set_caps(&[(CAP_VENDOR, 0x40), (CAP_MSIX, 0x50)]);
        bus.add(bdf, f);
        assert_eq!(
            capabilities(&mut bus, bdf),
            [Capability { id: CAP_VENDOR, offset: 0x40 }, Capability { id: CAP_MSIX, offset: 0x50 }]
        );
        // Point the last one back at the first: the walk stops at the cap.
        bus.poke8(bdf, 0x51, 0x40);
        assert_eq!(capabilities(&mut bus, bdf).len(), MAX_CAPABILITIES);
        // A pointer into the header is not followed.
        bus.poke8(bdf, CAPABILITIES_POINTER, 0x10);
        assert!(capabilities(&mut bus, bdf).is_empty());
    }
}
