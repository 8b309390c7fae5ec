//! Bus enumeration: every function that answers on every bus (a brute-force scan: function
//! 0 of each device slot, the others when it is multi-function), with its identification,
//! interrupt pin and line, BARs (sized) and capabilities.
//!
//! The hypervisor runs it once at boot, before any domain exists; the BAR sizing it does
//! briefly turns each function's decoding off.

use alloc::vec::Vec;

use crate::config::{
    capabilities, capability_len, probe_bar, Bar, Bdf, Capability, ConfigSpace, CLASS_BRIDGE, CLASS_REVISION, HEADER_TYPE,
    INTERRUPT_LINE, INTERRUPT_PIN, VENDOR_ID,
};

/// One function found by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// Class, subclass and programming interface (24 bits).
    pub class: u32,
    /// Header layout (0 a device, 1 a PCI-to-PCI bridge, 2 a CardBus bridge).
    pub header_type: u8,
    /// INTA#-INTD# as 1-4, 0 for none.
    pub interrupt_pin: u8,
    /// What the firmware wrote in the interrupt line register (the ISA IRQ it routed the
    /// pin to, on a PC), 0xff for none.
    pub interrupt_line: u8,
    /// Implemented BARs (type-0 headers only).
    pub bars: Vec<Bar>,
    pub capabilities: Vec<Capability>,
    /// The registers of its MSI and MSI-X capabilities, as `(offset, len)`.
    pub msi_registers: Vec<(u8, u8)>,
}

impl Function {
    /// Whether it is a bridge of any kind (class 06h).
    pub const fn is_bridge(&self) -> bool {
        (self.class >> 16) as u8 == CLASS_BRIDGE || self.header_type != 0
    }

    /// The BAR whose registers include register `index` (0-5), and which half it is.
    pub fn bar_at(&self, index: u8) -> Option<(&Bar, u8)> {
        self.bars
            .iter()
            .find(|bar| (bar.index..bar.index + bar.registers()).contains(&index))
            .map(|bar| (bar, index - bar.index))
    }
}

/// Every function on every bus, in bus, device, function order.
pub fn scan<C: ConfigSpace + ?Sized>(cfg: &mut C) -> Vec<Function> {
    let mut found = Vec::new();
    for bus in 0..=255u8 {
        for device in 0..32 {
            let Some(first) = Bdf::new(bus, device, 0) else { continue };
            if cfg.read16(first, VENDOR_ID) == 0xffff {
                continue;
            }
            let functions = if cfg.read8(first, HEADER_TYPE) & 0x80 != 0 { 8 } else { 1 };
            for function in 0..functions {
                let Some(bdf) = Bdf::new(bus, device, function) else { continue };
                if let Some(found_one) = read_function(cfg, bdf) {
                    found.push(found_one);
                }
            }
        }
    }
    found
}

/// One function's description, `None` when nothing answers there.
pub fn read_function<C: ConfigSpace + ?Sized>(cfg: &mut C, bdf: Bdf) -> Option<Function> {
    let id = cfg.read32(bdf, VENDOR_ID);
    if id as u16 == 0xffff {
        return None;
    }
    let header_type = cfg.read8(bdf, HEADER_TYPE) & 0x7f;
    let mut bars = Vec::new();
    if header_type == 0 {
        let mut index = 0;
        while index < 6 {
            match probe_bar(cfg, bdf, index) {
                Ok(Some(bar)) => {
                    index += bar.registers();
                    bars.push(bar);
                }
                Ok(None) | Err(_) => index += 1,
            }
        }
    }
    let capabilities = capabilities(cfg, bdf);
    let msi_registers = capabilities
        .iter()
        .filter(|cap| matches!(cap.id, crate::config::CAP_MSI | crate::config::CAP_MSIX))
        .map(|&cap| (cap.offset, capability_len(cfg, bdf, cap)))
        .collect();
    Some(Function {
        bdf,
        vendor: id as u16,
        device: (id >> 16) as u16,
        class: cfg.read32(bdf, CLASS_REVISION) >> 8,
        header_type,
        interrupt_pin: cfg.read8(bdf, INTERRUPT_PIN),
        interrupt_line: cfg.read8(bdf, INTERRUPT_LINE),
        bars,
        capabilities,
        msi_registers,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{BarKind, CAP_MSIX, CAP_VENDOR};
    use crate::sim::{Bus, SimFunction};

    pub(crate) fn qemu_like() -> Bus {
        let mut bus = Bus::default();
        bus.add(Bdf::new(0, 0, 0).unwrap(), SimFunction::new(0x8086, 0x1237, 0x06_00_00));
        let mut isa = SimFunction::new(0x8086, 0x7000, 0x06_01_00);
        isa.regs[HEADER_TYPE as usize] = 0x80;
        bus.add(Bdf::new(0, 1, 0).unwrap(), isa);
        bus.add(Bdf::new(0, 1, 1).unwrap(), SimFunction::new(0x8086, 0x7010, 0x01_01_80));
        let mut blk = SimFunction::new(0x1af4, 0x1042, 0x01_00_00);
        blk.set_bar32(1, 0xfebd_1000, 0x1000, false);
        blk.set_bar64(4, 0xfe00_0000, 0x4000, true);
        blk.set_caps(&[(CAP_MSIX, 0x98), (CAP_VENDOR, 0x84)]);
        blk.regs[INTERRUPT_PIN as usize] = 1;
        blk.regs[INTERRUPT_LINE as usize] = 11;
        bus.add(Bdf::new(0, 4, 0).unwrap(), blk);
        bus
    }

    #[test]
    fn finds_every_function_and_its_bars() {
        let mut bus = qemu_like();
        let found = scan(&mut bus);
        let names: Vec<_> = found.iter().map(|f| (f.bdf.device, f.bdf.function)).collect();
        assert_eq!(names, [(0, 0), (1, 0), (1, 1), (4, 0)]);
        assert!(found[0].is_bridge() && found[1].is_bridge() && !found[2].is_bridge());
        let blk = &found[3];
        assert_eq!((blk.vendor, blk.device, blk.class), (0x1af4, 0x1042, 0x01_00_00));
        assert_eq!((blk.interrupt_pin, blk.interrupt_line), (1, 11));
        assert_eq!(blk.bars.len(), 2);
        assert_eq!(blk.bars[1].kind, BarKind::Memory64 { prefetchable: true });
        assert_eq!(blk.bar_at(5).map(|(b, half)| (b.index, half)), Some((4, 1)));
        assert_eq!(blk.bar_at(0), None);
        assert_eq!(blk.msi_registers, [(0x98, 12)]);
    }
}
