//! A simulated PCI bus for the host tests: functions with a 256-byte configuration space
//! whose BARs answer sizing probes as hardware does and whose identification registers
//! are read-only.

use std::collections::BTreeMap;

use crate::config::{Bdf, ConfigSpace, BAR0, CAPABILITIES_POINTER, STATUS, STATUS_CAPABILITIES};

#[derive(Clone)]
pub struct SimFunction {
    pub regs: [u8; 256],
    /// Per BAR register: the writable address bits (0: not implemented).
    bar_mask: [u32; 6],
}

impl SimFunction {
    pub fn new(vendor: u16, device: u16, class: u32) -> SimFunction {
        let mut regs = [0u8; 256];
        regs[0..2].copy_from_slice(&vendor.to_le_bytes());
        regs[2..4].copy_from_slice(&device.to_le_bytes());
        regs[9..12].copy_from_slice(&class.to_le_bytes()[..3]);
        regs[4] = 0x07;
        SimFunction { regs, bar_mask: [0; 6] }
    }

    fn put32(&mut self, offset: u8, value: u32) {
        let at = offset as usize;
        self.regs[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_bar32(&mut self, index: u8, base: u32, size: u32, io: bool) {
        let flags = if io { 1 } else { 0 };
        self.bar_mask[index as usize] = !(size - 1) & if io { !0x3 } else { !0xf };
        self.put32(BAR0 + 4 * index, base | flags);
    }

    pub fn set_bar64(&mut self, index: u8, base: u64, size: u64, prefetchable: bool) {
        let mask = !(size - 1);
        self.bar_mask[index as usize] = mask as u32 & !0xf;
        self.bar_mask[index as usize + 1] = (mask >> 32) as u32;
        let flags = 0x4 | if prefetchable { 0x8 } else { 0 };
        self.put32(BAR0 + 4 * index, base as u32 | flags);
        self.put32(BAR0 + 4 * (index + 1), (base >> 32) as u32);
    }

    /// Capabilities at the given offsets, in order.
    pub fn set_caps(&mut self, caps: &[(u8, u8)]) {
        let status = u16::from_le_bytes([self.regs[STATUS as usize], self.regs[STATUS as usize + 1]]) | STATUS_CAPABILITIES;
        self.regs[STATUS as usize..STATUS as usize + 2].copy_from_slice(&status.to_le_bytes());
        self.regs[CAPABILITIES_POINTER as usize] = caps.first().map_or(0, |c| c.1);
        for (i, &(id, offset)) in caps.iter().enumerate() {
            self.regs[offset as usize] = id;
            self.regs[offset as usize + 1] = caps.get(i + 1).map_or(0, |c| c.1);
        }
    }

    fn read(&self, offset: u8) -> u32 {
        let at = offset as usize;
        u32::from_le_bytes(self.regs[at..at + 4].try_into().unwrap())
    }

    fn write(&mut self, offset: u8, value: u32) {
        match offset {
            0x00 | 0x08 => {}
            0x10..=0x27 => {
                let index = ((offset - BAR0) / 4) as usize;
                let mask = self.bar_mask[index];
                let old = self.read(offset);
                self.put32(offset, old & !mask | value & mask);
            }
            0x0c => {
                // Header type (byte 2) is read-only.
                let old = self.read(offset);
                self.put32(offset, old & 0x00ff_0000 | value & !0x00ff_0000);
            }
            _ => self.put32(offset, value),
        }
    }
}

#[derive(Default)]
pub struct Bus {
    pub functions: BTreeMap<Bdf, SimFunction>,
    pub writes: Vec<(Bdf, u8, u32)>,
}

impl Bus {
    pub fn add(&mut self, bdf: Bdf, function: SimFunction) {
        self.functions.insert(bdf, function);
    }

    pub fn poke8(&mut self, bdf: Bdf, offset: u8, value: u8) {
        self.functions.get_mut(&bdf).unwrap().regs[offset as usize] = value;
    }
}

impl ConfigSpace for Bus {
    fn read32(&mut self, bdf: Bdf, offset: u8) -> u32 {
        assert_eq!(offset % 4, 0);
        self.functions.get(&bdf).map_or(u32::MAX, |f| f.read(offset))
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        assert_eq!(offset % 4, 0);
        self.writes.push((bdf, offset, value));
        if let Some(f) = self.functions.get_mut(&bdf) {
            f.write(offset, value);
        }
    }
}
