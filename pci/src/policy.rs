//! Domain 0's device access, the policy half: which configuration-space writes it may make
//! ([`DeviceAccess::check_write`]), what it reads while it sizes a BAR
//! ([`DeviceAccess::read_override`]), and which machine frames are device memory it may
//! map ([`IoRanges`]).
//!
//! The hypervisor enumerates the bus at boot ([`crate::scan`]), keeps the result here, and
//! consults it for every access domain 0 makes through ports 0xCF8-0xCFF (Xen's
//! `pci_cfg_ok` plays this part for a PV domain 0); the access itself, with the size and
//! offset the guest used, is the hypervisor's. What domain 0 may not do through this:
//! - move a BAR (its frames are device memory only where the hypervisor found them at
//!   boot: a BAR moved over RAM would let it map RAM through the I/O path). A write of all
//!   ones (the sizing probe every driver makes) is latched instead, and reads of that
//!   register answer what the hardware would, from the boot-time sizing, until the
//!   original value is written back (also latched: the BAR never changes);
//! - program MSI or MSI-X (a message names a vector on a CPU of the hypervisor's: the
//!   hypervisor owns the interrupt controllers), nor the expansion ROM BAR;
//! - write the identification registers, or anything of a bridge (a host bridge holds the
//!   memory controller's mapping of RAM, an ISA bridge the interrupt routing);
//! - reach a function the boot scan did not find.
//!
//! Everything else passes (the command register, device-specific registers and other
//! capabilities, such as virtio's). Bus mastering is allowed: without an IOMMU, a device
//! domain 0 drives can read and write all of memory, as in Xen without VT-d; domain 0 is
//! trusted with that, not with the hypervisor's interrupt controllers or address map.

use alloc::vec::Vec;
use core::ops::Range;

use crate::config::{Bar, Bdf, BAR0, COMMAND, EXPANSION_ROM, INTERRUPT_LINE};
use crate::scan::Function;

/// Bytes in a page.
pub const PAGE_SIZE: u64 = 4096;

/// What to do with one configuration write by domain 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigWrite {
    /// Carry it out as the guest made it.
    Pass,
    /// A BAR sizing probe (all ones) or its undo (the BAR's own value): recorded, the BAR
    /// is left alone.
    Latched,
    /// Refused: nothing is written (as Xen drops refused writes silently).
    Dropped(Refusal),
}

/// Why a write was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a function the boot scan found.
    UnknownFunction,
    /// A bridge.
    Bridge,
    /// Identification or other read-only header registers.
    ReadOnlyHeader,
    /// A BAR (or the expansion ROM BAR) written with an address.
    MovesBar,
    /// An access that is not a whole aligned BAR register.
    PartialBar,
    /// MSI or MSI-X registers.
    Msi,
    /// A size other than 1, 2 or 4, or an access crossing its dword.
    BadAccess,
}

/// The functions found at boot and domain 0's BAR sizing probes in progress.
#[derive(Debug, Default)]
pub struct DeviceAccess {
    functions: Vec<Function>,
    /// Per function (same index), the BAR registers (bit i: register i) whose sizing probe
    /// is latched.
    probing: Vec<u8>,
}

impl DeviceAccess {
    pub fn new(functions: Vec<Function>) -> DeviceAccess {
        let probing = alloc::vec![0; functions.len()];
        DeviceAccess { functions, probing }
    }

    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    fn find(&self, bdf: Bdf) -> Option<usize> {
        self.functions.iter().position(|f| f.bdf == bdf)
    }

    /// The function at `bdf`, if the scan found one.
    pub fn function(&self, bdf: Bdf) -> Option<&Function> {
        self.find(bdf).map(|i| &self.functions[i])
    }

    /// What a `size`-byte read at `offset` of `bdf` returns instead of the hardware's (the
    /// bytes of a latched sizing probe), `None` to read the hardware.
    pub fn read_override(&self, bdf: Bdf, offset: u8, size: u8) -> Option<u32> {
        let index = self.find(bdf)?;
        let register = bar_register(offset)?;
        if self.probing[index] & (1 << register) == 0 {
            return None;
        }
        let (bar, half) = self.functions[index].bar_at(register)?;
        let shift = u32::from(offset & 3) * 8;
        let value = bar.probe_value(half) >> shift;
        Some(match size {
            1 => value & 0xff,
            2 => value & 0xffff,
            _ => value,
        })
    }

    /// Judges a `size`-byte write of `value` at `offset` of `bdf` (and records a BAR
    /// sizing probe or its undo).
    pub fn check_write(&mut self, bdf: Bdf, offset: u8, size: u8, value: u32) -> ConfigWrite {
        if !matches!(size, 1 | 2 | 4) || (offset & 3) + size > 4 {
            return ConfigWrite::Dropped(Refusal::BadAccess);
        }
        let Some(index) = self.find(bdf) else { return ConfigWrite::Dropped(Refusal::UnknownFunction) };
        let function = &self.functions[index];
        if function.is_bridge() {
            return ConfigWrite::Dropped(Refusal::Bridge);
        }
        let bytes = u16::from(offset)..u16::from(offset) + u16::from(size);
        let overlaps = |range: Range<u16>| bytes.start < range.end && range.start < bytes.end;
        if let Some(register) = bar_register(offset) {
            if size != 4 {
                return ConfigWrite::Dropped(Refusal::PartialBar);
            }
            let Some((bar, half)) = function.bar_at(register) else {
                // Unimplemented: reads 0 whatever is written.
                return ConfigWrite::Dropped(Refusal::MovesBar);
            };
            return if value == u32::MAX {
                self.probing[index] |= 1 << register;
                ConfigWrite::Latched
            } else if value == bar.register_value(half) {
                self.probing[index] &= !(1 << register);
                ConfigWrite::Latched
            } else {
                ConfigWrite::Dropped(Refusal::MovesBar)
            };
        }
        if overlaps(u16::from(EXPANSION_ROM)..u16::from(EXPANSION_ROM) + 4) {
            return ConfigWrite::Dropped(Refusal::MovesBar);
        }
        if function.msi_registers.iter().any(|&(at, len)| overlaps(u16::from(at)..u16::from(at) + u16::from(len))) {
            return ConfigWrite::Dropped(Refusal::Msi);
        }
        // Writable header bytes: command and status (RW1C), cache line size, latency
        // timer, interrupt line. The rest of the header is identification or read-only.
        let command = u16::from(COMMAND);
        let line = u16::from(INTERRUPT_LINE);
        let writable_header = [command..command + 4, 0x0c..0x0e, line..line + 1];
        if bytes.start < 0x40 && !writable_header.iter().any(|r| r.start <= bytes.start && bytes.end <= r.end) {
            return ConfigWrite::Dropped(Refusal::ReadOnlyHeader);
        }
        ConfigWrite::Pass
    }
}

/// The BAR register (0-5) `offset` lies in.
fn bar_register(offset: u8) -> Option<u8> {
    (BAR0..BAR0 + 24).contains(&offset).then(|| (offset - BAR0) / 4)
}

/// Machine frames of device memory: the memory BARs found at boot, page-granular, none of
/// which overlaps RAM or a device the hypervisor uses. Fixed for the run (domain 0 cannot
/// move a BAR), so a frame's being device memory never changes while a page table maps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoRanges {
    /// Frame ranges, sorted, disjoint.
    frames: Vec<Range<u64>>,
}

/// A BAR left out of [`IoRanges`], and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeftOut {
    pub bdf: Bdf,
    pub bar: Bar,
    pub why: Unmappable,
}

/// Why a memory BAR's frames are not device memory domain 0 may map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmappable {
    /// Not assigned an address (0).
    Unassigned,
    /// Smaller than a page or not page-aligned: its page would show its neighbours.
    SubPage,
    /// Ends past the address space (or past the physical address width).
    OutOfRange,
    /// Overlaps RAM, a firmware range or a device of the hypervisor's.
    Overlaps,
    /// Overlaps another function's BAR.
    Shared,
    /// A bridge's.
    Bridge,
}

impl IoRanges {
    /// The memory BARs of `functions` (bridges' left out), each whole or not at all:
    /// refused when it overlaps any of `exclude` (byte ranges: RAM, firmware-reserved
    /// ranges, the local APIC, I/O APICs, HPET, ...), another BAR, or ends at or past
    /// `limit` (one past the highest physical address).
    pub fn from_functions(functions: &[Function], exclude: &[Range<u64>], limit: u64) -> (IoRanges, Vec<LeftOut>) {
        let mut candidates: Vec<(Bdf, Bar, Range<u64>)> = Vec::new();
        let mut left_out = Vec::new();
        for function in functions {
            for bar in function.bars.iter().filter(|bar| bar.is_memory()) {
                let refuse = |why| LeftOut { bdf: function.bdf, bar: *bar, why };
                let end = bar.base.checked_add(bar.size);
                let why = if function.is_bridge() {
                    Some(Unmappable::Bridge)
                } else if bar.base == 0 {
                    Some(Unmappable::Unassigned)
                } else if bar.size < PAGE_SIZE || bar.base % PAGE_SIZE != 0 {
                    Some(Unmappable::SubPage)
                } else if end.is_none_or(|end| end > limit) {
                    Some(Unmappable::OutOfRange)
                } else {
                    None
                };
                match (why, end) {
                    (None, Some(end)) => candidates.push((function.bdf, *bar, bar.base..end)),
                    (why, _) => left_out.push(refuse(why.unwrap_or(Unmappable::OutOfRange))),
                }
            }
        }
        let overlaps = |a: &Range<u64>, b: &Range<u64>| a.start < b.end && b.start < a.end;
        let mut frames = Vec::new();
        for (i, (bdf, bar, range)) in candidates.iter().enumerate() {
            let why = if exclude.iter().any(|x| overlaps(x, range)) {
                Some(Unmappable::Overlaps)
            } else if candidates.iter().enumerate().any(|(j, other)| j != i && overlaps(&other.2, range)) {
                Some(Unmappable::Shared)
            } else {
                None
            };
            match why {
                Some(why) => left_out.push(LeftOut { bdf: *bdf, bar: *bar, why }),
                None => frames.push(range.start / PAGE_SIZE..range.end / PAGE_SIZE),
            }
        }
        frames.sort_by_key(|r| r.start);
        (IoRanges { frames }, left_out)
    }

    /// Whether machine frame `mfn` is device memory.
    pub fn contains(&self, mfn: u64) -> bool {
        let at = self.frames.partition_point(|r| r.end <= mfn);
        self.frames.get(at).is_some_and(|r| r.contains(&mfn))
    }

    /// The frame ranges.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BarKind, ConfigSpace, STATUS};
    use crate::scan::scan;
    use crate::sim::Bus;
    use proptest::prelude::*;

    fn blk_bdf() -> Bdf {
        Bdf::new(0, 4, 0).unwrap()
    }

    fn access() -> (Bus, DeviceAccess) {
        let mut bus = crate::scan::tests::qemu_like();
        let functions = scan(&mut bus);
        (bus, DeviceAccess::new(functions))
    }

    #[test]
    fn sizing_probe_reads_like_hardware_and_never_moves_the_bar() {
        let (mut bus, mut access) = access();
        let bdf = blk_bdf();
        let before = bus.read32(bdf, BAR0 + 16);
        // The probe a driver makes (virtio-drivers' `bar_info`), BAR 4 (64-bit) both halves.
        for register in [4u8, 5] {
            let offset = BAR0 + 4 * register;
            let original = bus.read32(bdf, offset);
            assert_eq!(access.check_write(bdf, offset, 4, u32::MAX), ConfigWrite::Latched);
            let read = access.read_override(bdf, offset, 4).unwrap();
            // The hardware's own answer to the same probe.
            bus.write32(bdf, offset, u32::MAX);
            assert_eq!(read, bus.read32(bdf, offset));
            bus.write32(bdf, offset, original);
            assert_eq!(access.check_write(bdf, offset, 4, original), ConfigWrite::Latched);
            assert_eq!(access.read_override(bdf, offset, 4), None);
        }
        assert_eq!(bus.read32(bdf, BAR0 + 16), before);
        // A real move is dropped; so is a partial write and the ROM BAR.
        assert_eq!(access.check_write(bdf, BAR0 + 16, 4, 0x1000_0004), ConfigWrite::Dropped(Refusal::MovesBar));
        assert_eq!(access.check_write(bdf, BAR0 + 16, 2, 0xffff), ConfigWrite::Dropped(Refusal::PartialBar));
        assert_eq!(access.check_write(bdf, EXPANSION_ROM, 4, u32::MAX), ConfigWrite::Dropped(Refusal::MovesBar));
        // Unimplemented BAR 0.
        assert_eq!(access.check_write(bdf, BAR0, 4, u32::MAX), ConfigWrite::Dropped(Refusal::MovesBar));
    }

    #[test]
    fn header_msi_and_bridges() {
        let (_, mut access) = access();
        let bdf = blk_bdf();
        assert_eq!(access.check_write(bdf, COMMAND, 2, 0x7), ConfigWrite::Pass);
        assert_eq!(access.check_write(bdf, STATUS, 2, 0xffff), ConfigWrite::Pass);
        assert_eq!(access.check_write(bdf, INTERRUPT_LINE, 1, 11), ConfigWrite::Pass);
        assert_eq!(access.check_write(bdf, 0, 4, 0), ConfigWrite::Dropped(Refusal::ReadOnlyHeader));
        assert_eq!(access.check_write(bdf, 0x3c, 4, 0), ConfigWrite::Dropped(Refusal::ReadOnlyHeader));
        // MSI-X message control at 0x98 + 2.
        assert_eq!(access.check_write(bdf, 0x9a, 2, 0x8000), ConfigWrite::Dropped(Refusal::Msi));
        assert_eq!(access.check_write(bdf, 0x98, 4, 0x8000_0000), ConfigWrite::Dropped(Refusal::Msi));
        // The vendor capability (virtio's) is the device's.
        assert_eq!(access.check_write(bdf, 0x88, 4, 1), ConfigWrite::Pass);
        assert_eq!(access.check_write(bdf, 0x87, 2, 1), ConfigWrite::Dropped(Refusal::BadAccess));
        assert_eq!(access.check_write(bdf, 0x44, 3, 1), ConfigWrite::Dropped(Refusal::BadAccess));
        // Host bridge (memory map registers) and ISA bridge (interrupt routing).
        assert_eq!(access.check_write(Bdf::new(0, 0, 0).unwrap(), 0x59, 1, 0x30), ConfigWrite::Dropped(Refusal::Bridge));
        assert_eq!(access.check_write(Bdf::new(0, 1, 0).unwrap(), 0x60, 4, 0x0b), ConfigWrite::Dropped(Refusal::Bridge));
        assert_eq!(access.check_write(Bdf::new(0, 9, 0).unwrap(), 0x4, 2, 0x7), ConfigWrite::Dropped(Refusal::UnknownFunction));
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn io_ranges_take_whole_bars_clear_of_ram_and_hypervisor_devices() {
        let (_, access) = access();
        let lapic = 0xfee0_0000..0xfee0_1000;
        let ram = 0..0x1000_0000;
        let (ranges, left) = IoRanges::from_functions(access.functions(), &[ram.clone(), lapic.clone()], 1 << 40);
        assert_eq!(ranges.ranges(), [0xfe000..0xfe004, 0xfebd1..0xfebd2]);
        assert!(left.is_empty());
        assert!(ranges.contains(0xfe003) && !ranges.contains(0xfe004) && !ranges.contains(0xfdfff));
        // A BAR the firmware put over RAM is refused whole.
        let (ranges, left) = IoRanges::from_functions(access.functions(), &[0xfe00_2000..0xfe00_3000], 1 << 40);
        assert_eq!(ranges.ranges(), [0xfebd1..0xfebd2]);
        assert_eq!(left[0].why, Unmappable::Overlaps);
        // Past the physical address width.
        let (_, left) = IoRanges::from_functions(access.functions(), &[], 0xfe00_0000);
        assert!(left.iter().all(|l| l.why == Unmappable::OutOfRange) && left.len() == 2);
    }

    #[test]
    fn sub_page_unassigned_shared_and_bridge_bars_are_left_out() {
        let bar = |index, base, size| Bar { index, kind: BarKind::Memory32 { prefetchable: false }, base, size };
        let function = |device, class, bars: Vec<Bar>| Function {
            bdf: Bdf::new(0, device, 0).unwrap(),
            vendor: 1,
            device: 2,
            class,
            header_type: 0,
            interrupt_pin: 0,
            interrupt_line: 0xff,
            bars,
            capabilities: Vec::new(),
            msi_registers: Vec::new(),
        };
        let functions = [
            function(1, 0x02_00_00, vec![bar(0, 0xfeb0_0800, 0x800), bar(1, 0, 0x1000), bar(2, 0xfea0_0000, 0x2000)]),
            function(2, 0x02_00_00, vec![bar(0, 0xfea0_1000, 0x1000)]),
            function(3, 0x06_04_00, vec![bar(0, 0xfe90_0000, 0x1000)]),
        ];
        let (ranges, left) = IoRanges::from_functions(&functions, &[], 1 << 40);
        assert!(ranges.ranges().is_empty());
        let whys: Vec<_> = left.iter().map(|l| l.why).collect();
        assert_eq!(whys, [Unmappable::SubPage, Unmappable::Unassigned, Unmappable::Bridge, Unmappable::Shared, Unmappable::Shared]);
    }

    proptest! {
        /// Whatever domain 0 writes, no BAR register, MSI register or bridge ever reaches
        /// the hardware, and a function's BARs read back as they were.
        #[test]
        fn no_write_moves_a_bar(writes in proptest::collection::vec((0u8..6, 0u8..=255, 0u8..3, any::<u32>()), 1..64)) {
            let (mut bus, mut access) = access();
            let bdfs = [Bdf::new(0, 0, 0).unwrap(), Bdf::new(0, 1, 0).unwrap(), Bdf::new(0, 1, 1).unwrap(), blk_bdf(), Bdf::new(0, 5, 0).unwrap(), Bdf::new(1, 0, 0).unwrap()];
            let bars_before: Vec<u32> = (0..6).map(|i| bus.read32(blk_bdf(), BAR0 + 4 * i)).collect();
            for (which, offset, size_log, value) in writes {
                let bdf = bdfs[which as usize];
                let size = 1u8 << size_log;
                if access.check_write(bdf, offset, size, value) == ConfigWrite::Pass {
                    prop_assert!(!(BAR0..0x28).contains(&offset) && !(0x30..0x34).contains(&offset));
                    let end = u16::from(offset) + u16::from(size);
                    prop_assert!(bdf != blk_bdf() || end <= 0x98 || offset >= 0xa4);
                    prop_assert!(bdf == Bdf::new(0, 1, 1).unwrap() || bdf == blk_bdf());
                    let dword = offset & 0xfc;
                    let shift = u32::from(offset & 3) * 8;
                    let mask = if size == 4 { u32::MAX } else { ((1u32 << (size * 8)) - 1) << shift };
                    let old = bus.read32(bdf, dword);
                    bus.write32(bdf, dword, old & !mask | (value << shift) & mask);
                }
            }
            let bars_after: Vec<u32> = (0..6).map(|i| bus.read32(blk_bdf(), BAR0 + 4 * i)).collect();
            prop_assert_eq!(bars_before, bars_after);
        }
    }
}
